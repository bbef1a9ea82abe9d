//! Checkpoint backups in the bucket (layout: [`crate::layout`]). Blobs are a gateway's state
//! files, named by their SHA-256 and checked against it before they are kept; an index records a
//! checkpoint once every blob it names is stored. Retention keeps the newest `keep` indexes per
//! pipeline (and the last one before another state's: [`retained`]) and deletes blobs none
//! of them names — only blobs older than `blob_grace`, so the blobs of a checkpoint still being
//! uploaded (not yet named by any index) survive.
//!
//! Owns those keys; never decides who may read them (the service does) and never sees the
//! gateways' state key: blobs and manifests are stored as they arrive, encrypted.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use eddy_proto::v1::{CheckpointIndex, CheckpointSummary};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use prost::Message;

use crate::layout;
use crate::store::Bucket;

/// Why a request on the bucket (backups, fleet state) failed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The request itself is wrong (retrying will not help).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The store failed or could not be reached.
    #[error("object store: {0}")]
    Unavailable(String),
}

fn unavailable(e: impl std::fmt::Display) -> BucketError {
    BucketError::Unavailable(e.to_string())
}

/// Blobs up to this size are stored with one PUT; larger ones as a multipart upload.
const SINGLE_PUT_BYTES: u64 = 8 << 20;
/// Parts of a multipart upload (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 8 << 20;

/// Longest state identity a checkpoint may carry (gateways send 16 bytes).
const MAX_STATE_ID_BYTES: usize = 64;

/// Retention of backups, per gateway and pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: usize,
    pub blob_grace: Duration,
}

/// Whether checkpoint `next`, arriving after `newest`, is of another state: one started afresh (a
/// replacement device) or restored to an earlier checkpoint. Both carry a state identity and the
/// identities differ, or its number is no higher, or its hub sinks' outboxes (each a random
/// identity made with the state) are others. The last two alone tell most cases apart for
/// gateways that send no state identity.
fn is_another_state(newest: &CheckpointIndex, next: &CheckpointIndex) -> bool {
    let outboxes = |i: &CheckpointIndex| {
        let mut v: Vec<u64> = i.sinks.iter().map(|s| s.outbox_id).collect();
        v.sort_unstable();
        v
    };
    let identities_differ =
        !newest.state_id.is_empty() && !next.state_id.is_empty() && newest.state_id != next.state_id;
    identities_differ || next.seq <= newest.seq || outboxes(next) != outboxes(newest)
}

/// Which of a pipeline's index keys (sorted, oldest first) retention keeps: the newest `keep`
/// (at least one) and the `pinned` one: the newest before a checkpoint of another state arrived
/// ([`is_another_state`]). So a replacement that backs up its fresh state before it restores
/// never pushes the old device's last backup out, and a restore to an earlier point can be
/// undone. One index is pinned at a time: at most `keep + 1` are kept.
pub(crate) fn retained(keys: &[String], keep: usize, pinned: Option<&str>) -> Vec<usize> {
    let cut = keys.len().saturating_sub(keep.max(1));
    let pin = pinned.and_then(|p| keys[..cut].iter().position(|k| k == p));
    pin.into_iter().chain(cut..keys.len()).collect()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Bucket {
    /// Which of `sha256s` are not stored for this pipeline.
    pub async fn missing_blobs(&self, dir: &str, sha256s: &[String]) -> Result<Vec<String>, BucketError> {
        let mut missing = Vec::new();
        for sha in sha256s {
            if !layout::valid_sha256(sha) {
                return Err(BucketError::Invalid(format!("'{sha}' is not a SHA-256 in lowercase hex")));
            }
            match self.store.head(&ObjectPath::from(layout::blob_key(dir, sha))).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => missing.push(sha.clone()),
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(missing)
    }

    /// Stores a blob from its chunks once its length and digest check out; a blob that does not
    /// is never visible under its key. Returns false when it was there already.
    pub async fn put_blob<S>(
        &self,
        dir: &str,
        sha256: &str,
        total_bytes: u64,
        max_bytes: u64,
        mut chunks: S,
    ) -> Result<bool, BucketError>
    where
        S: Stream<Item = Result<Bytes, BucketError>> + Unpin,
    {
        if !layout::valid_sha256(sha256) {
            return Err(BucketError::Invalid(format!("'{sha256}' is not a SHA-256 in lowercase hex")));
        }
        if total_bytes > max_bytes {
            return Err(BucketError::Invalid(format!(
                "a blob of {total_bytes} bytes is over limits.max_blob_bytes ({max_bytes})"
            )));
        }
        let path = ObjectPath::from(layout::blob_key(dir, sha256));
        match self.store.head(&path).await {
            Ok(m) if m.size == total_bytes => return Ok(false),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut seen = 0u64;
        let check = |seen: u64, digest: ring::digest::Context| -> Result<(), BucketError> {
            let got = hex(digest.finish().as_ref());
            if seen != total_bytes || got != sha256 {
                return Err(BucketError::Invalid(format!(
                    "the blob's bytes do not match: {seen} bytes with SHA-256 {got}, announced {total_bytes} bytes with {sha256}"
                )));
            }
            Ok(())
        };
        let grew = |c: &Bytes, seen: &mut u64| -> Result<(), BucketError> {
            *seen += c.len() as u64;
            if *seen > total_bytes {
                return Err(BucketError::Invalid(format!("the blob runs past its announced {total_bytes} bytes")));
            }
            Ok(())
        };
        if total_bytes <= SINGLE_PUT_BYTES {
            let mut buf = Vec::with_capacity(total_bytes as usize);
            while let Some(c) = chunks.try_next().await? {
                grew(&c, &mut seen)?;
                digest.update(&c);
                buf.extend_from_slice(&c);
            }
            check(seen, digest)?;
            self.store.put(&path, PutPayload::from(buf)).await.map_err(unavailable)?;
            return Ok(true);
        }
        let upload = self.store.put_multipart(&path).await.map_err(unavailable)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let r: Result<(), BucketError> = async {
            while let Some(c) = chunks.try_next().await? {
                grew(&c, &mut seen)?;
                digest.update(&c);
                w.wait_for_capacity(2).await.map_err(unavailable)?;
                w.write(&c);
            }
            Ok(())
        }
        .await;
        match r.and_then(|()| check(seen, digest)) {
            Ok(()) => {
                w.finish().await.map_err(unavailable)?;
                Ok(true)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Records a checkpoint whose blobs are all stored, then applies retention. Returns how many
    /// checkpoints the pipeline keeps.
    pub async fn put_checkpoint(
        &self,
        dir: &str,
        mut index: CheckpointIndex,
        retention: Retention,
    ) -> Result<u32, BucketError> {
        if index.state_id.len() > MAX_STATE_ID_BYTES {
            return Err(BucketError::Invalid(format!(
                "a state identity of {} bytes (at most {MAX_STATE_ID_BYTES})",
                index.state_id.len()
            )));
        }
        for f in &index.files {
            if !layout::valid_sha256(&f.sha256) || !layout::valid_name(&f.name, 64) {
                return Err(BucketError::Invalid(format!("state file '{}' ({}) is misnamed", f.name, f.sha256)));
            }
            match self.store.head(&ObjectPath::from(layout::blob_key(dir, &f.sha256))).await {
                Ok(m) if m.size == f.bytes => {}
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                    return Err(BucketError::Invalid(format!(
                        "state file {} ({}) is not stored: upload its blob first",
                        f.name, f.sha256
                    )))
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let mut keys = self.index_keys(dir).await?;
        // The same checkpoint sent again (a lost reply): recorded once.
        let newest = match keys.last() {
            Some(k) => Some(self.read_index(k).await?),
            None => None,
        };
        if newest.as_ref().is_some_and(|n| n.seq == index.seq && n.created_ms == index.created_ms) {
            let pin = self.pinned(dir).await?;
            return self.apply_retention(dir, &keys, pin.as_deref(), retention).await;
        }
        let pin = match (&newest, keys.last()) {
            (Some(n), Some(k)) if is_another_state(n, &index) => {
                // Pinned before the new index is written, so no retention runs without the pin.
                let pin = ObjectPath::from(layout::checkpoint_pin_key(dir));
                self.store.put(&pin, PutPayload::from(k.clone().into_bytes())).await.map_err(unavailable)?;
                Some(k.clone())
            }
            _ => self.pinned(dir).await?,
        };
        // Index keys sort by this, oldest first, and retention keeps the last ones: never before
        // the newest, even if the hub's clock went back.
        index.stored_ms = now_ms().max(newest.as_ref().map_or(0, |n| n.stored_ms + 1));
        let key = layout::checkpoint_index_key(dir, index.stored_ms, index.seq);
        self.store
            .put(&ObjectPath::from(key.as_str()), PutPayload::from(index.encode_to_vec()))
            .await
            .map_err(unavailable)?;
        keys.push(key);
        self.apply_retention(dir, &keys, pin.as_deref(), retention).await
    }

    /// The pinned index key, if any.
    async fn pinned(&self, dir: &str) -> Result<Option<String>, BucketError> {
        match self.store.get(&ObjectPath::from(layout::checkpoint_pin_key(dir))).await {
            Ok(r) => {
                let body = r.bytes().await.map_err(unavailable)?;
                Ok(Some(String::from_utf8_lossy(&body).into_owned()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn index_keys(&self, dir: &str) -> Result<Vec<String>, BucketError> {
        let prefix = ObjectPath::from(format!("{dir}index"));
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(unavailable)?;
        let mut keys: Vec<String> =
            metas.into_iter().map(|m| m.location.to_string()).filter(|k| k.ends_with(".ckpt")).collect();
        keys.sort();
        Ok(keys)
    }

    async fn read_index(&self, key: &str) -> Result<CheckpointIndex, BucketError> {
        let body =
            self.store.get(&ObjectPath::from(key)).await.map_err(unavailable)?.bytes().await.map_err(unavailable)?;
        CheckpointIndex::decode(body).map_err(|e| BucketError::Unavailable(format!("{key} is damaged: {e}")))
    }

    /// Deletes the indexes (`keys`, sorted, every one of the pipeline's) [`retained`] does not
    /// keep, then blobs no kept index names (older than the grace period). Indexes go first, so
    /// no kept index ever names a deleted blob.
    async fn apply_retention(
        &self,
        dir: &str,
        keys: &[String],
        pinned: Option<&str>,
        retention: Retention,
    ) -> Result<u32, BucketError> {
        let kept = retained(keys, retention.keep, pinned);
        let mut named = HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            if !kept.contains(&i) {
                self.store.delete(&ObjectPath::from(k.as_str())).await.map_err(unavailable)?;
            }
        }
        for &i in &kept {
            named.extend(self.read_index(&keys[i]).await?.files.into_iter().map(|f| f.sha256));
        }
        let grace = cutoff_ms(retention.blob_grace);
        let blobs: Vec<_> =
            self.store.list(Some(&ObjectPath::from(format!("{dir}blobs")))).try_collect().await.map_err(unavailable)?;
        for m in blobs {
            let key = m.location.to_string();
            let sha = key.rsplit('/').next().unwrap_or_default();
            let old = m.last_modified.timestamp_millis() < grace;
            if old && !named.contains(sha) {
                self.store.delete(&m.location).await.map_err(unavailable)?;
            }
        }
        Ok(kept.len() as u32)
    }

    /// The kept checkpoints of a gateway (one pipeline, or all), oldest first.
    pub async fn list_checkpoints(
        &self,
        gateway: &str,
        pipeline: Option<&str>,
    ) -> Result<Vec<CheckpointSummary>, BucketError> {
        let prefix = match pipeline {
            Some(p) => layout::checkpoint_dir(&self.prefix, gateway, p),
            None => layout::checkpoint_gateway_dir(&self.prefix, gateway),
        };
        let metas: Vec<_> =
            self.store.list(Some(&ObjectPath::from(prefix))).try_collect().await.map_err(unavailable)?;
        let mut out = Vec::new();
        for m in metas.iter().filter(|m| m.location.as_ref().ends_with(".ckpt")) {
            let i = self.read_index(m.location.as_ref()).await?;
            let bytes = i.manifest.len() as u64 + i.files.iter().map(|f| f.bytes).sum::<u64>();
            out.push(CheckpointSummary {
                gateway: gateway.to_string(),
                pipeline: i.pipeline,
                seq: i.seq,
                created_ms: i.created_ms,
                stored_ms: i.stored_ms,
                bytes,
                state_id: i.state_id,
            });
        }
        out.sort_by(|a, b| (&a.pipeline, a.stored_ms, a.seq).cmp(&(&b.pipeline, b.stored_ms, b.seq)));
        Ok(out)
    }

    /// One kept checkpoint: `seq`, or the newest when `seq` is 0.
    pub async fn get_checkpoint(&self, dir: &str, seq: u64) -> Result<CheckpointIndex, BucketError> {
        let keys = self.index_keys(dir).await?;
        if seq == 0 {
            return match keys.last() {
                Some(k) => self.read_index(k).await,
                None => Err(BucketError::NotFound(format!("no checkpoint is kept under {dir}"))),
            };
        }
        let numbered = format!("-{seq:020}.ckpt");
        // Numbers repeat across states; a number the pinned index holds means that one (the
        // state before another's, which is only ever reached by its number).
        let pin = self.pinned(dir).await?.filter(|p| p.ends_with(&numbered) && keys.contains(p));
        match pin.or_else(|| keys.iter().rev().find(|k| k.ends_with(&numbered)).cloned()) {
            Some(k) => self.read_index(&k).await,
            None => Err(BucketError::NotFound(format!("checkpoint {seq} is not kept under {dir}"))),
        }
    }

    /// A blob's bytes, as a stream of chunks.
    pub async fn get_blob(
        &self,
        dir: &str,
        sha256: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, BucketError>> + use<>, BucketError> {
        if !layout::valid_sha256(sha256) {
            return Err(BucketError::Invalid(format!("'{sha256}' is not a SHA-256 in lowercase hex")));
        }
        let r = match self.store.get(&ObjectPath::from(layout::blob_key(dir, sha256))).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BucketError::NotFound(format!("blob {sha256} is not stored under {dir}")))
            }
            Err(e) => return Err(unavailable(e)),
        };
        Ok(r.into_stream().map(|c| c.map_err(unavailable)))
    }

    /// Removes the rows of `stream` from `gateway`'s outbox `outbox` numbered `from_seq` on:
    /// batches that start there or later are deleted, one that straddles it is cut. Returns
    /// (deleted, cut).
    pub async fn retract_rows(
        &self,
        stream: &str,
        gateway: &str,
        outbox: u64,
        from_seq: u64,
    ) -> Result<(u32, u32), BucketError> {
        let prefix = format!("{}streams/{stream}/gateway={gateway}/", self.prefix);
        let metas: Vec<_> =
            self.store.list(Some(&ObjectPath::from(prefix))).try_collect().await.map_err(unavailable)?;
        let tag = format!("/{outbox:016x}-");
        let (mut deleted, mut cut) = (0, 0);
        for m in metas {
            let key = m.location.to_string();
            let Some(first) = key
                .rsplit_once(tag.as_str())
                .and_then(|(_, rest)| rest.strip_suffix(".parquet"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if first >= from_seq {
                self.store.delete(&m.location).await.map_err(unavailable)?;
                deleted += 1;
                continue;
            }
            let body = self.store.get(&m.location).await.map_err(unavailable)?.bytes().await.map_err(unavailable)?;
            let last = crate::parquet_batch::stored_last_seq(body.clone())
                .ok_or_else(|| BucketError::Invalid(format!("{key} is not an Eddy batch")))?;
            if last >= from_seq {
                let kept = crate::parquet_batch::cut(body, from_seq - first)
                    .map_err(|e| BucketError::Invalid(format!("{key}: {e}")))?;
                self.store.put(&m.location, PutPayload::from(kept)).await.map_err(unavailable)?;
                cut += 1;
            }
        }
        Ok((deleted, cut))
    }
}

/// `now - grace` in ms since the epoch.
fn cutoff_ms(grace: Duration) -> i64 {
    now_ms() - grace.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use eddy_proto::v1::StateFile;

    fn bucket(dir: &std::path::Path) -> Bucket {
        let cfg: StoreConfig = toml::from_str(&format!("url = 'file://{}'", dir.display())).unwrap();
        Bucket::open(&cfg).unwrap()
    }

    fn sha(b: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    fn chunks(b: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, BucketError>> + Unpin {
        let parts: Vec<Result<Bytes, BucketError>> = b.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(parts)
    }

    fn index(seq: u64, files: &[(&str, &[u8])]) -> CheckpointIndex {
        CheckpointIndex {
            pipeline: "p".into(),
            seq,
            created_ms: seq as i64,
            manifest_name: format!("manifest-{seq:010}"),
            manifest: vec![seq as u8; 10],
            files: files
                .iter()
                .map(|(n, b)| StateFile { name: n.to_string(), sha256: sha(b), bytes: b.len() as u64 })
                .collect(),
            ..Default::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn blobs_are_kept_only_when_their_bytes_match_and_large_ones_stream_in_parts() {
        let d = tempfile::tempdir().unwrap();
        let b = bucket(d.path());
        let dir = layout::checkpoint_dir("", "gw", "p");
        let rt = rt();
        let small = vec![7u8; 1000];
        assert!(rt.block_on(b.put_blob(&dir, &sha(&small), 1000, 1 << 30, chunks(&small, 300))).unwrap());
        assert!(!rt.block_on(b.put_blob(&dir, &sha(&small), 1000, 1 << 30, chunks(&small, 300))).unwrap());
        // Bytes that do not match their digest or length are refused and never visible.
        let other = vec![8u8; 1000];
        for (s, len) in [(sha(&other), 1000), (sha(&small), 999)] {
            let e = rt.block_on(b.put_blob(&dir, &s, len, 1 << 30, chunks(&small, 300))).unwrap_err();
            assert!(matches!(e, BucketError::Invalid(_)), "{e}");
        }
        let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
        let e = rt.block_on(b.put_blob(&dir, &sha(&other), big.len() as u64, 1 << 30, chunks(&big, 1 << 20)));
        assert!(matches!(e, Err(BucketError::Invalid(_))));
        assert_eq!(rt.block_on(b.missing_blobs(&dir, &[sha(&small), sha(&big), sha(&other)])).unwrap().len(), 2);
        assert!(rt.block_on(b.put_blob(&dir, &sha(&big), big.len() as u64, 1 << 30, chunks(&big, 1 << 20))).unwrap());
        let mut got = Vec::new();
        let mut s = rt.block_on(b.get_blob(&dir, &sha(&big))).unwrap();
        while let Some(c) = rt.block_on(s.try_next()).unwrap() {
            got.extend_from_slice(&c);
        }
        assert!(got == big);
        let e = rt.block_on(b.put_blob(&dir, &sha(&big), big.len() as u64, 1 << 20, chunks(&big, 1 << 20)));
        assert!(matches!(e, Err(BucketError::Invalid(m)) if m.contains("max_blob_bytes")));
    }

    #[test]
    fn a_fresh_or_restored_state_is_another_state() {
        use eddy_proto::v1::SinkMark;
        let with = |seq: u64, outbox_ids: &[u64]| CheckpointIndex {
            seq,
            sinks: outbox_ids.iter().map(|&outbox_id| SinkMark { outbox_id, ..Default::default() }).collect(),
            ..Default::default()
        };
        assert!(!is_another_state(&with(5, &[]), &with(6, &[])));
        assert!(is_another_state(&with(5, &[]), &with(5, &[])), "the same number again");
        assert!(is_another_state(&with(50, &[]), &with(3, &[])), "numbered from 1 again");
        assert!(!is_another_state(&with(5, &[7, 9]), &with(6, &[9, 7])));
        // A fresh state whose first backup waited until its numbers passed the old ones'.
        assert!(is_another_state(&with(52, &[7, 9]), &with(60, &[8, 9])));
        // The same, without hub sinks: told apart by the state identity alone.
        let of = |seq: u64, id: &[u8]| CheckpointIndex { state_id: id.to_vec(), ..with(seq, &[]) };
        assert!(is_another_state(&of(52, b"old"), &of(60, b"new")));
        assert!(!is_another_state(&of(52, b"old"), &of(60, b"old")));
        // A gateway that sends none (older, or before its first checkpoint with one).
        assert!(!is_another_state(&of(52, b""), &of(60, b"new")));
        assert!(!is_another_state(&of(52, b"old"), &of(60, b"")));
    }

    /// A replacement device whose fresh state (no hub sinks) made its first backup only after
    /// its numbers had passed the old device's: its state identity still marks it as another
    /// state, so the old device's last backup stays, pinned.
    #[test]
    fn a_fresh_state_past_the_old_numbers_is_told_apart_by_its_identity() {
        let d = tempfile::tempdir().unwrap();
        let b = bucket(d.path());
        let dir = layout::checkpoint_dir("", "gw", "p");
        let rt = rt();
        let keep = Retention { keep: 1, blob_grace: Duration::ZERO };
        let (old, new): (&[u8], &[u8]) = (b"old device", b"replacement");
        let of = |seq: u64, blob: &[u8], id: &[u8]| CheckpointIndex {
            state_id: id.to_vec(),
            ..index(seq, &[("state-0000000001.dat", blob)])
        };
        let upload = |s: &[u8]| rt.block_on(b.put_blob(&dir, &sha(s), s.len() as u64, 1 << 20, chunks(s, 4))).unwrap();
        upload(old);
        rt.block_on(b.put_checkpoint(&dir, of(3, old, b"old-state-id"), keep)).unwrap();
        for seq in [10, 11] {
            std::thread::sleep(Duration::from_millis(2));
            upload(new);
            rt.block_on(b.put_checkpoint(&dir, of(seq, new, b"new-state-id"), keep)).unwrap();
        }
        let list = rt.block_on(b.list_checkpoints("gw", Some("p"))).unwrap();
        let kept: Vec<(u64, &[u8])> = list.iter().map(|c| (c.seq, c.state_id.as_slice())).collect();
        assert_eq!(kept, [(3, &b"old-state-id"[..]), (11, &b"new-state-id"[..])]);
        assert!(rt.block_on(b.missing_blobs(&dir, &[sha(old)])).unwrap().is_empty());
        assert_eq!(rt.block_on(b.get_checkpoint(&dir, 3)).unwrap().state_id, b"old-state-id");
    }

    #[test]
    fn retention_keeps_the_newest_and_the_pinned_one() {
        let keys: Vec<String> = (1..=5).map(|i| format!("index/{i}.ckpt")).collect();
        let kept = |keep: usize, pin: Option<&str>| -> Vec<usize> { retained(&keys, keep, pin) };
        assert_eq!(retained(&[], 3, None), Vec::<usize>::new());
        assert_eq!(kept(3, None), [2, 3, 4]);
        assert_eq!(kept(0, None), [4], "at least one is kept");
        assert_eq!(kept(2, Some("index/1.ckpt")), [0, 3, 4]);
        // Pinned and among the newest anyway, or gone already: nothing more is kept.
        assert_eq!(kept(2, Some("index/4.ckpt")), [3, 4]);
        assert_eq!(kept(2, Some("index/0.ckpt")), [3, 4]);
    }

    #[test]
    fn a_checkpoint_stored_after_the_hubs_clock_went_back_is_still_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let b = bucket(d.path());
        let dir = layout::checkpoint_dir("", "gw", "p");
        let rt = rt();
        // Checkpoint 1 was stored while the clock ran an hour ahead.
        let ahead_ms = now_ms() + 3_600_000;
        let one = CheckpointIndex { stored_ms: ahead_ms, ..index(1, &[]) };
        let key = ObjectPath::from(layout::checkpoint_index_key(&dir, ahead_ms, 1));
        rt.block_on(b.store.put(&key, PutPayload::from(one.encode_to_vec()))).unwrap();
        let keep = Retention { keep: 1, blob_grace: Duration::ZERO };
        rt.block_on(b.put_checkpoint(&dir, index(2, &[]), keep)).unwrap();
        let list = rt.block_on(b.list_checkpoints("gw", Some("p"))).unwrap();
        assert_eq!(list.iter().map(|c| (c.seq, c.stored_ms)).collect::<Vec<_>>(), [(2, ahead_ms + 1)]);
    }

    #[test]
    fn checkpoints_need_their_blobs_and_retention_keeps_the_newest_with_what_they_name() {
        let d = tempfile::tempdir().unwrap();
        let b = bucket(d.path());
        let dir = layout::checkpoint_dir("", "gw", "p");
        let rt = rt();
        let keep = Retention { keep: 2, blob_grace: Duration::ZERO };
        let (s1, s2, s3): (&[u8], &[u8], &[u8]) = (b"one", b"two", b"three");
        let e = rt.block_on(b.put_checkpoint(&dir, index(1, &[("state-0000000001.dat", s1)]), keep)).unwrap_err();
        assert!(e.to_string().contains("upload its blob first"), "{e}");
        // With no grace period, a blob counts only once a checkpoint names it: upload each
        // checkpoint's blob just before it.
        let upload = |s: &[u8]| rt.block_on(b.put_blob(&dir, &sha(s), s.len() as u64, 1 << 20, chunks(s, 2))).unwrap();
        upload(s1);
        rt.block_on(b.put_checkpoint(&dir, index(1, &[("state-0000000001.dat", s1)]), keep)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        upload(s2);
        let two = index(2, &[("state-0000000001.dat", s1), ("state-0000000002.dat", s2)]);
        rt.block_on(b.put_checkpoint(&dir, two.clone(), keep)).unwrap();
        // Sent again after a lost reply: recorded once.
        assert_eq!(rt.block_on(b.put_checkpoint(&dir, two, keep)).unwrap(), 2);
        std::thread::sleep(Duration::from_millis(2));
        upload(s3);
        let kept = rt.block_on(b.put_checkpoint(&dir, index(3, &[("state-0000000003.dat", s3)]), keep)).unwrap();
        assert_eq!(kept, 2);
        let list = rt.block_on(b.list_checkpoints("gw", Some("p"))).unwrap();
        assert_eq!(list.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(rt.block_on(b.get_checkpoint(&dir, 0)).unwrap().seq, 3);
        assert_eq!(rt.block_on(b.get_checkpoint(&dir, 2)).unwrap().files.len(), 2);
        assert!(matches!(rt.block_on(b.get_checkpoint(&dir, 1)), Err(BucketError::NotFound(_))));
        // Every blob a kept checkpoint names is still there; none other is.
        assert!(rt.block_on(b.missing_blobs(&dir, &[sha(s1), sha(s2), sha(s3)])).unwrap().is_empty());
        rt.block_on(b.put_checkpoint(&dir, index(4, &[("state-0000000003.dat", s3)]), keep)).unwrap();
        assert_eq!(rt.block_on(b.missing_blobs(&dir, &[sha(s1), sha(s2), sha(s3)])).unwrap(), [sha(s1), sha(s2)]);
        // Within the grace period an unnamed blob stays (its checkpoint may still be uploading).
        let graceful = Retention { keep: 1, blob_grace: Duration::from_secs(3600) };
        rt.block_on(b.put_blob(&dir, &sha(s1), 3, 1 << 20, chunks(s1, 3))).unwrap();
        rt.block_on(b.put_checkpoint(&dir, index(5, &[("state-0000000003.dat", s3)]), graceful)).unwrap();
        assert!(rt.block_on(b.missing_blobs(&dir, &[sha(s1)])).unwrap().is_empty());
        // A replacement device's fresh state (checkpoints 1, 2, 3, then up to and past the old
        // numbers) does not push out the old device's last backup, nor the blobs it names.
        let fresh: Vec<Vec<u8>> = (0..5).map(|i| format!("fresh-{i}").into_bytes()).collect();
        let blobs: Vec<String> = fresh.iter().map(|f| sha(f)).collect();
        let seqs = |b: &Bucket| -> Vec<u64> {
            rt.block_on(b.list_checkpoints("gw", Some("p"))).unwrap().iter().map(|c| c.seq).collect()
        };
        for (seq, f) in [1, 2, 3, 5].into_iter().zip(&fresh) {
            std::thread::sleep(Duration::from_millis(2));
            upload(f);
            let i = CheckpointIndex { created_ms: 10 * seq as i64, ..index(seq, &[("state.dat", f)]) };
            rt.block_on(b.put_checkpoint(&dir, i, keep)).unwrap();
        }
        assert_eq!(seqs(&b), [5, 3, 5]);
        assert!(rt.block_on(b.missing_blobs(&dir, &[sha(s3), blobs[2].clone(), blobs[3].clone()])).unwrap().is_empty());
        assert_eq!(rt.block_on(b.missing_blobs(&dir, &blobs[..2])).unwrap(), &blobs[..2]);
        // 5 means the pinned one (the old device's); the newest is the fresh state's 5.
        assert_eq!(rt.block_on(b.get_checkpoint(&dir, 5)).unwrap().files[0].sha256, sha(s3));
        assert_eq!(rt.block_on(b.get_checkpoint(&dir, 0)).unwrap().created_ms, 50);
        std::thread::sleep(Duration::from_millis(2));
        upload(&fresh[4]);
        rt.block_on(b.put_checkpoint(&dir, index(6, &[("state.dat", &fresh[4])]), keep)).unwrap();
        assert_eq!(seqs(&b), [5, 5, 6]);
        // Restored from 5, the state goes back: 6 is pinned instead and 5 may go.
        std::thread::sleep(Duration::from_millis(2));
        let restored = CheckpointIndex { created_ms: 60, ..index(6, &[("state.dat", &fresh[4])]) };
        rt.block_on(b.put_checkpoint(&dir, restored, keep)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        rt.block_on(b.put_checkpoint(&dir, index(7, &[("state.dat", &fresh[4])]), keep)).unwrap();
        assert_eq!(seqs(&b), [6, 6, 7]);
    }
}
