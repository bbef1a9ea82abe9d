//! Retention of stored rows: deletes the batches of `streams/<stream>/gateway=<g>/date=<d>/`
//! partitions whose date is more than `[rows] keep_days` days before today (UTC; a batch's date
//! is the day its rows were committed on the gateway, so partitions are whole days).
//!
//! Only Eddy's `.parquet` batches are deleted; anything else a reader left in a partition stays.
//! Deleting is idempotent, so every hub of a fleet may sweep the same bucket. A batch of an
//! expired date that arrives late (a gateway offline for longer than the retention) is still
//! stored and acknowledged, and goes at the next sweep: rows are never refused for their age.
//!
//! Owns deciding which partitions are past retention; never touches checkpoints or fleet state,
//! and never a partition of today or the `keep_days` days before it.

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use crate::checkpoints::BucketError;
use crate::layout;
use crate::store::Bucket;

/// What a sweep deleted (or, dry, would delete).
#[derive(Debug, Default)]
pub struct Expired {
    /// The expired partitions' prefixes, in key order.
    pub partitions: Vec<String>,
    pub batches: u64,
    pub bytes: u64,
}

/// The oldest date kept when `today` is `today` and `keep_days` days before it are kept too:
/// partitions dated before it are expired.
pub fn first_kept_date(today: chrono::NaiveDate, keep_days: u32) -> String {
    let first = today - chrono::Days::new(u64::from(keep_days));
    first.format("%Y-%m-%d").to_string()
}

fn unavailable(e: impl std::fmt::Display) -> BucketError {
    BucketError::Unavailable(e.to_string())
}

impl Bucket {
    /// The sub-prefixes one level below `dir` (a LIST with a delimiter).
    async fn children(&self, dir: &ObjectPath) -> Result<Vec<ObjectPath>, BucketError> {
        let listed = self.store.list_with_delimiter(Some(dir)).await.map_err(unavailable)?;
        Ok(listed.common_prefixes)
    }

    /// Deletes (unless `dry_run`) the batches of every `date=` partition dated before
    /// `first_kept` (`yyyy-mm-dd`). Walks streams and gateways by prefix, so partitions still
    /// kept are never listed object by object.
    pub async fn expire_rows(&self, first_kept: &str, dry_run: bool) -> Result<Expired, BucketError> {
        debug_assert!(layout::valid_date(first_kept));
        let mut out = Expired::default();
        let root = ObjectPath::from(format!("{}streams", self.prefix));
        for stream in self.children(&root).await? {
            for gateway in self.children(&stream).await? {
                for partition in self.children(&gateway).await? {
                    let date = partition.filename().and_then(|s| s.strip_prefix("date="));
                    // Dates compare as strings: `yyyy-mm-dd` sorts by time.
                    if !date.is_some_and(|d| layout::valid_date(d) && d < first_kept) {
                        continue;
                    }
                    self.expire_partition(&partition, dry_run, &mut out).await?;
                    out.partitions.push(format!("{partition}/"));
                }
            }
        }
        Ok(out)
    }

    async fn expire_partition(&self, dir: &ObjectPath, dry_run: bool, out: &mut Expired) -> Result<(), BucketError> {
        let mut objects = self.store.list(Some(dir));
        while let Some(m) = objects.try_next().await.map_err(unavailable)? {
            if !m.location.as_ref().ends_with(".parquet") {
                continue;
            }
            if !dry_run {
                match self.store.delete(&m.location).await {
                    // Another hub's sweep got there first.
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            out.batches += 1;
            out.bytes += m.size;
        }
        Ok(())
    }
}

/// Sweeps every `every` while the hub serves, the first time at once. A failed sweep (the store
/// unreachable) is logged and tried again at the next period.
pub async fn sweep_forever(bucket: std::sync::Arc<Bucket>, keep_days: u32, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let first_kept = first_kept_date(chrono::Utc::now().date_naive(), keep_days);
        match bucket.expire_rows(&first_kept, false).await {
            Ok(e) if e.partitions.is_empty() => tracing::debug!(%first_kept, "no row partition past retention"),
            Ok(e) => tracing::info!(
                %first_kept,
                partitions = e.partitions.len(),
                batches = e.batches,
                bytes = e.bytes,
                "expired row partitions"
            ),
            Err(e) => tracing::warn!(error = %e, "row retention sweep failed; next period tries again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    fn bucket(dir: &std::path::Path, prefix: &str) -> Bucket {
        let cfg: StoreConfig =
            toml::from_str(&format!("url = 'file://{}'\nprefix = '{prefix}'", dir.display())).unwrap();
        Bucket::open(&cfg).unwrap()
    }

    fn put(b: &Bucket, rt: &tokio::runtime::Runtime, key: &str) {
        let path = ObjectPath::from(format!("{}{key}", b.prefix));
        rt.block_on(b.store.put(&path, object_store::PutPayload::from_static(b"12345"))).unwrap();
    }

    fn keys(b: &Bucket, rt: &tokio::runtime::Runtime) -> Vec<String> {
        let mut k: Vec<String> = rt
            .block_on(b.store.list(None).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        k.sort();
        k
    }

    #[test]
    fn the_first_kept_date_counts_back_whole_days_across_months_and_years() {
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(first_kept_date(d("2026-12-02"), 0), "2026-12-02");
        assert_eq!(first_kept_date(d("2026-12-02"), 30), "2026-11-02");
        assert_eq!(first_kept_date(d("2026-01-05"), 10), "2025-12-26");
        assert_eq!(first_kept_date(d("2028-03-01"), 1), "2028-02-29");
    }

    #[test]
    fn only_batches_of_partitions_before_the_first_kept_date_go() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let b = bucket(d.path(), "fleet-a");
        let other_fleet = bucket(d.path(), "fleet-b");
        for key in [
            "streams/s1/gateway=gw-1/date=2026-10-31/0000000000000001-00000000000000000000.parquet",
            "streams/s1/gateway=gw-1/date=2026-10-31/0000000000000001-00000000000000000010.parquet",
            "streams/s1/gateway=gw-1/date=2026-10-31/_SUCCESS",
            "streams/s1/gateway=gw-1/date=2026-11-01/0000000000000001-00000000000000000020.parquet",
            "streams/s1/gateway=gw-2/date=2026-09-30/0000000000000002-00000000000000000000.parquet",
            "streams/s2/gateway=gw-1/date=2026-11-02/0000000000000003-00000000000000000000.parquet",
            "streams/s2/gateway=gw-1/notadate/0000000000000003-00000000000000000000.parquet",
            "checkpoints/gateway=gw-1/pipeline=p/index/00000000000000000001-00000000000000000001.ckpt",
        ] {
            put(&b, &rt, key);
        }
        put(&other_fleet, &rt, "streams/s1/gateway=gw-1/date=2020-01-01/0000000000000001-00000000000000000000.parquet");
        let before = keys(&b, &rt);

        let dry = rt.block_on(b.expire_rows("2026-11-01", true)).unwrap();
        assert_eq!(
            dry.partitions,
            ["fleet-a/streams/s1/gateway=gw-1/date=2026-10-31/", "fleet-a/streams/s1/gateway=gw-2/date=2026-09-30/"]
        );
        assert_eq!((dry.batches, dry.bytes), (3, 15));
        assert_eq!(keys(&b, &rt), before, "a dry run deletes nothing");

        let done = rt.block_on(b.expire_rows("2026-11-01", false)).unwrap();
        assert_eq!((done.partitions, done.batches), (dry.partitions, 3));
        let left = keys(&b, &rt);
        assert_eq!(left.len(), before.len() - 3, "{left:?}");
        assert!(left.iter().all(|k| !k.ends_with(".parquet") || !k.contains("date=2026-10-31")));
        assert!(left.iter().any(|k| k.ends_with("date=2026-10-31/_SUCCESS")), "foreign objects stay");
        assert!(left.iter().any(|k| k.contains("date=2026-11-01/")), "the first kept date stays");
        assert!(left.iter().any(|k| k.contains("fleet-b/")), "another prefix's rows stay");
        assert!(left.iter().any(|k| k.ends_with(".ckpt")), "checkpoints are not rows");
        // Sweeping again (or another hub sweeping at once) finds nothing more to do.
        assert_eq!(rt.block_on(b.expire_rows("2026-11-01", false)).unwrap().batches, 0);
    }
}
