//! Checks the Nexmark queries of `benches/nexmark/queries/` as `eddyd replay` runs them on its own
//! `nexmark` source, against DataFusion batch queries over the same events written to files by
//! the generator (`write_event`, what `nexmark_gen` writes). Nexmark's events come in event-time
//! order, so no row is late and a batch query is an exact reference for each streaming one. An
//! updating result is compared by its last row per key.
//!
//! q11's sessions are numbered with window functions; q12 (processing time) has no Eddy query.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use datafusion::prelude::{JsonReadOptions, SessionContext};
use eddy_engine::connector::NexmarkConfig;
use serde_json::Value;

mod common;

/// 150,000 events: 15 s of event time, a few 10-second windows.
const EVENTS: u64 = 150_000;

const SETUP: &[&str] = &[
    "CREATE VIEW person AS SELECT id, name, email_address, credit_card, city, state,
       CAST(date_time AS TIMESTAMP(3)) AS date_time, extra FROM person_raw",
    "CREATE VIEW auction AS SELECT id, item_name, description, initial_bid, reserve,
       CAST(date_time AS TIMESTAMP(3)) AS date_time, CAST(expires AS TIMESTAMP(3)) AS expires, seller, category, extra
       FROM auction_raw",
    "CREATE VIEW bid AS SELECT auction, bidder, price, channel, url, CAST(date_time AS TIMESTAMP(3)) AS date_time, extra
       FROM bid_raw",
    // Every HOP(2 s, 10 s) window of each bid: the one starting at its 2-second step and the four before.
    "CREATE VIEW bid_hop AS SELECT b.auction, date_bin(INTERVAL '2 seconds', b.date_time) - k.back AS ws
       FROM bid b CROSS JOIN (VALUES (INTERVAL '0 seconds'), (INTERVAL '2 seconds'), (INTERVAL '4 seconds'),
         (INTERVAL '6 seconds'), (INTERVAL '8 seconds')) AS k(back)",
    "CREATE VIEW auction_bids AS SELECT auction, ws, COUNT(*) AS num FROM bid_hop GROUP BY auction, ws",
    "CREATE VIEW max_price AS SELECT date_bin(INTERVAL '10 seconds', date_time) + INTERVAL '10 seconds' AS we,
       MAX(price) AS maxprice FROM bid GROUP BY 1",
    // Sessions per bidder: a row starts a new one unless it comes within 10 s of the previous one.
    "CREATE VIEW bid_session AS SELECT bidder, date_time, SUM(fresh) OVER (PARTITION BY bidder ORDER BY date_time
       ROWS UNBOUNDED PRECEDING) AS session FROM (SELECT bidder, date_time, CASE WHEN LAG(date_time) OVER
       (PARTITION BY bidder ORDER BY date_time) > date_time - INTERVAL '10 seconds' THEN 0 ELSE 1 END AS fresh FROM bid)",
];

const COUNTS: &str = "COUNT(*) AS total_bids,
    COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,
    COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
    COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
    COUNT(DISTINCT bidder) AS total_bidders,
    COUNT(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
    COUNT(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
    COUNT(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
    COUNT(DISTINCT auction) AS total_auctions,
    COUNT(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
    COUNT(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
    COUNT(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions";

/// (query, the batch query that must give its rows).
fn checks() -> Vec<(&'static str, String)> {
    let day = "to_char(date_time, '%Y-%m-%d')";
    vec![
        ("q0", "SELECT auction, bidder, price, date_time, extra FROM bid".into()),
        ("q1", "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid".into()),
        ("q2", "SELECT auction, price FROM bid WHERE auction % 123 = 0".into()),
        (
            "q5",
            "SELECT a.auction, a.num FROM auction_bids a
             JOIN (SELECT ws, MAX(num) AS maxn FROM auction_bids GROUP BY ws) m ON a.ws = m.ws
             WHERE a.num >= m.maxn"
                .into(),
        ),
        (
            "q7",
            "SELECT b.auction, b.price, b.bidder, b.date_time, b.extra FROM bid b JOIN max_price m
             ON b.price = m.maxprice AND b.date_time BETWEEN m.we - INTERVAL '10 seconds' AND m.we"
                .into(),
        ),
        (
            "q8",
            "SELECT p.id, p.name, p.ws AS starttime FROM
               (SELECT DISTINCT id, name, date_bin(INTERVAL '10 seconds', date_time) AS ws FROM person) p
             JOIN (SELECT DISTINCT seller, date_bin(INTERVAL '10 seconds', date_time) AS ws FROM auction) a
             ON p.id = a.seller AND p.ws = a.ws"
                .into(),
        ),
        (
            "q10",
            "SELECT auction, bidder, price, date_time, extra, to_char(date_time, '%Y-%m-%d') AS dt,
             to_char(date_time, '%H:%M') AS hm FROM bid"
                .into(),
        ),
        (
            "q11",
            "SELECT bidder, COUNT(*) AS bid_count, MIN(date_time) AS starttime,
             MAX(date_time) + INTERVAL '10 seconds' AS endtime FROM bid_session GROUP BY bidder, session"
                .into(),
        ),
        (
            "q13",
            "SELECT b.auction, b.bidder, b.price, b.date_time, s.value FROM bid b
             JOIN side_input_raw s ON b.auction % 10000 = s.key"
                .into(),
        ),
        (
            "q14",
            "SELECT auction, bidder, 0.908 * price AS price,
             CASE WHEN date_part('hour', date_time) BETWEEN 8 AND 18 THEN 'dayTime'
               WHEN date_part('hour', date_time) <= 6 OR date_part('hour', date_time) >= 20 THEN 'nightTime'
               ELSE 'otherTime' END AS bid_time_type, date_time, extra,
             character_length(extra) - character_length(replace(extra, 'c', '')) AS c_counts
             FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000"
                .into(),
        ),
        ("q15", format!("SELECT {day} AS day, {COUNTS} FROM bid GROUP BY {day}")),
        (
            "q16",
            format!(
                "SELECT channel, {day} AS day, MAX(to_char(date_time, '%H:%M')) AS minute, {COUNTS}
                 FROM bid GROUP BY channel, {day}"
            ),
        ),
        (
            "q17",
            format!(
                "SELECT auction, {day} AS day, COUNT(*) AS total_bids,
                 COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,
                 COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
                 COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
                 MIN(price) AS min_price, MAX(price) AS max_price, AVG(price) AS avg_price, SUM(price) AS sum_price
                 FROM bid GROUP BY auction, {day}"
            ),
        ),
        (
            "q21",
            "SELECT auction, bidder, price, channel,
             CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1' WHEN 'facebook' THEN '2'
               WHEN 'baidu' THEN '3' ELSE split_part(url, 'channel_id=', 2) END AS channel_id
             FROM bid WHERE split_part(url, 'channel_id=', 2) <> ''
               OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')"
                .into(),
        ),
        (
            "q22",
            "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, split_part(url, '/', 5) AS dir2,
             split_part(url, '/', 6) AS dir3 FROM bid"
                .into(),
        ),
    ]
}

/// Rows as sorted text: whole numbers exact, others to 9 significant digits (a DOUBLE sum
/// depends on the order it adds in; one side may spell 908 as 908.0).
fn canonical(rows: Vec<BTreeMap<String, Value>>) -> Vec<String> {
    let mut out: Vec<String> = rows
        .into_iter()
        .map(|r| {
            let r: BTreeMap<String, Value> = r
                .into_iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => (k, Value::from(x as i64)),
                    Some(x) => (k, Value::from(format!("{x:.9e}"))),
                    None => (k, v),
                })
                .collect();
            serde_json::to_string(&r).unwrap_or_default()
        })
        .collect();
    out.sort();
    out
}

fn eddy_rows(path: &Path, key: Option<&[String]>) -> Result<Vec<BTreeMap<String, Value>>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut rows = vec![];
    let mut last: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)?;
        let delete = v["_op"] == "delete";
        let row = common::normalise(v);
        match key {
            None => rows.push(row),
            Some(k) => {
                let id = serde_json::to_string(&k.iter().map(|c| row.get(c).cloned()).collect::<Vec<_>>())?;
                if delete {
                    last.remove(&id);
                } else {
                    last.insert(id, row);
                }
            }
        }
    }
    Ok(if key.is_some() { last.into_values().collect() } else { rows })
}

async fn check(eddyd: &Path, work: &Path, ctx: &SessionContext, query: &str, batch: &str) -> Result<usize> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("nexmark/queries").join(format!("{query}.sql"));
    let sql = std::fs::read_to_string(&file)?.replace("events = '1000000'", &format!("events = '{EVENTS}'"));
    let sql_path = work.join(format!("{query}.sql"));
    std::fs::write(&sql_path, &sql)?;
    let out_path = work.join(format!("{query}.out.jsonl"));
    let out = Command::new(eddyd)
        .arg("replay")
        .arg(&sql_path)
        .arg("--output")
        .arg(format!("{query}={}", out_path.display()))
        .output()?;
    if !out.status.success() {
        bail!("{query}: eddyd replay failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key: Option<Vec<String>> = sql
        .split("primary_key = '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .map(|k| k.split(',').map(|c| c.trim().to_string()).collect());
    let eddy = canonical(eddy_rows(&out_path, key.as_deref())?);
    let reference = canonical(common::batch_rows(&ctx.sql(batch).await?.collect().await?)?);
    if eddy != reference {
        let only_eddy: Vec<_> = eddy.iter().filter(|r| !reference.contains(r)).take(2).collect();
        let only_batch: Vec<_> = reference.iter().filter(|r| !eddy.contains(r)).take(2).collect();
        bail!(
            "{query}: eddy gave {} rows, DataFusion {}; eddy only: {only_eddy:?}; DataFusion only: {only_batch:?}",
            eddy.len(),
            reference.len()
        );
    }
    Ok(eddy.len())
}

#[tokio::test]
async fn nexmark_queries_equal_datafusion_batch_queries_over_the_same_events() {
    let eddyd = common::eddyd();
    assert!(eddyd.exists(), "{} not built (run the whole workspace's tests: cargo test --workspace)", eddyd.display());
    let work = tempfile_dir();
    let cfg = NexmarkConfig { events: Some(EVENTS), ..NexmarkConfig::default() };
    eddy_benches::write_nexmark_files(&work, &cfg).unwrap();
    let ctx = SessionContext::new();
    for s in ["person", "auction", "bid", "side_input"] {
        let path = work.join(format!("{s}.jsonl"));
        ctx.register_json(
            format!("{s}_raw"),
            path.to_string_lossy().as_ref(),
            JsonReadOptions::default().file_extension(".jsonl"),
        )
        .await
        .unwrap();
    }
    for stmt in SETUP {
        ctx.sql(stmt).await.unwrap().collect().await.unwrap();
    }
    let mut failed = vec![];
    let mut covered = vec![];
    for (query, batch) in checks() {
        covered.push(query);
        match check(&eddyd, &work, &ctx, query, &batch).await {
            Ok(n) => println!("PASS {query}: {n} rows equal DataFusion's batch query"),
            Err(e) => {
                eprintln!("FAIL {e:#}");
                failed.push(query);
            }
        }
    }
    // Every query file has a check.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nexmark/queries");
    for f in std::fs::read_dir(dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().trim_end_matches(".sql").to_string();
        assert!(covered.contains(&name.as_str()), "no check for nexmark query {name}");
    }
    let _ = std::fs::remove_dir_all(&work);
    assert!(failed.is_empty(), "nexmark checks failed: {failed:?}");
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("eddy-nexmark-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
