//! Property: whatever the disorder and the batch boundaries, windowed results equal a simple
//! reference computed row by row from the spec (lateness rule, window assignment, aggregation).

use std::collections::BTreeMap;

use eddy_engine::{Mode, Pipeline, PipelineConfig};
use proptest::prelude::*;

mod common;

#[derive(Debug, Clone)]
struct Row {
    dev: u8,
    ts: i64,
    v: i64,
}

fn rows_strategy() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec((0u8..3, 0i64..4_000, 0i64..100, prop::bool::weighted(0.05)), 1..300).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (dev, jitter, v, very_late))| {
                let base = i as i64 * 700 - jitter;
                Row { dev, ts: if very_late { base - 45_000 } else { base }, v }
            })
            .collect()
    })
}

type Key = (u8, i64, i64);

/// Accepted and late rows by the spec's rule.
fn accept(rows: &[Row], delay: i64) -> (Vec<Row>, Vec<Row>) {
    let mut max: Option<i64> = None;
    let (mut ok, mut late) = (vec![], vec![]);
    for r in rows {
        match max {
            Some(m) if r.ts < m - delay => late.push(r.clone()),
            _ => {
                max = Some(max.map_or(r.ts, |m| m.max(r.ts)));
                ok.push(r.clone());
            }
        }
    }
    (ok, late)
}

fn windows(rows: &[Row], size: i64, slide: i64) -> BTreeMap<Key, (i64, i64, i64, i64)> {
    let mut out: BTreeMap<Key, (i64, i64, i64, i64)> = BTreeMap::new();
    for r in rows {
        let mut s = (r.ts - size).div_euclid(slide) * slide;
        while s <= r.ts {
            if r.ts < s + size {
                let e = out.entry((r.dev, s, s + size)).or_insert((0, 0, i64::MAX, i64::MIN));
                e.0 += 1;
                e.1 += r.v;
                e.2 = e.2.min(r.v);
                e.3 = e.3.max(r.v);
            }
            s += slide;
        }
    }
    out
}

fn sessions(rows: &[Row], gap: i64) -> BTreeMap<Key, i64> {
    let mut by_dev: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
    for r in rows {
        by_dev.entry(r.dev).or_default().push(r.ts);
    }
    let mut out = BTreeMap::new();
    for (dev, mut ts) in by_dev {
        ts.sort();
        let (mut start, mut last, mut n) = (ts[0], ts[0], 0);
        for t in ts {
            if t >= last + gap {
                out.insert((dev, start, last + gap), n);
                start = t;
                n = 0;
            }
            last = t;
            n += 1;
        }
        out.insert((dev, start, last + gap), n);
    }
    out
}

fn read(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ms(v: &serde_json::Value) -> i64 {
    eddy_engine::time::parse_timestamp_ms(v.as_str().unwrap()).unwrap()
}

fn dev(v: &serde_json::Value) -> u8 {
    v.as_str().unwrap()[4..].parse().unwrap()
}

/// Replays `rows` in pieces of `batch` lines, decoded on `decode_threads` threads.
fn run(rows: &[Row], delay_s: i64, batch: usize, decode_threads: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_readings(dir.path(), rows.iter().map(|r| (r.dev, r.v.to_string(), r.ts)));
    let sql = format!(
        "CREATE SOURCE r (device_id VARCHAR NOT NULL, v BIGINT, ts TIMESTAMP(3) NOT NULL,
             WATERMARK FOR ts AS ts - INTERVAL '{delay_s}' SECOND)
         WITH (connector = 'file', path = 'in.jsonl', batch_rows = '{batch}');
         CREATE SINK t AS SELECT device_id, window_start, window_end, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi
             FROM TUMBLE(r, ts, INTERVAL '10' SECOND) GROUP BY device_id, window_start, window_end
             WITH (connector = 'file', path = 'out/t.jsonl');
         CREATE SINK h AS SELECT device_id, window_start, window_end, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi
             FROM HOP(r, ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND) GROUP BY device_id, window_start, window_end
             WITH (connector = 'file', path = 'out/h.jsonl');
         CREATE SINK s AS SELECT device_id, window_start, window_end, COUNT(*) AS n
             FROM SESSION(r, ts, INTERVAL '3' SECOND) GROUP BY device_id, window_start, window_end
             WITH (connector = 'file', path = 'out/s.jsonl');
         CREATE SINK l AS SELECT device_id, v, ts FROM LATE(r) WITH (connector = 'file', path = 'out/l.jsonl');"
    );
    let mut cfg = PipelineConfig::new(dir.path(), Mode::Replay);
    cfg.decode_threads = decode_threads;
    let mut p = Pipeline::plan(&sql, &cfg).unwrap();
    p.run_to_end().unwrap();
    dir
}

fn windowed(path: &std::path::Path) -> BTreeMap<Key, (i64, i64, i64, i64)> {
    read(path)
        .iter()
        .map(|o| {
            let k =
                (dev(&o["device_id"]), ms(&o["window_start"]) - common::T0_MS, ms(&o["window_end"]) - common::T0_MS);
            (
                k,
                (
                    o["n"].as_i64().unwrap(),
                    o["s"].as_i64().unwrap(),
                    o["lo"].as_i64().unwrap(),
                    o["hi"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn windows_match_a_row_by_row_reference(rows in rows_strategy(), delay_s in 0i64..6, batch in 1usize..64, threads in 1usize..4) {
        let dir = run(&rows, delay_s, batch, threads);
        let (ok, late) = accept(&rows, delay_s * 1000);
        prop_assert_eq!(windowed(&dir.path().join("out/t.jsonl")), windows(&ok, 10_000, 10_000));
        prop_assert_eq!(windowed(&dir.path().join("out/h.jsonl")), windows(&ok, 15_000, 5_000));
        let got_s: BTreeMap<Key, i64> = read(&dir.path().join("out/s.jsonl")).iter().map(|o| {
            ((dev(&o["device_id"]), ms(&o["window_start"]) - common::T0_MS, ms(&o["window_end"]) - common::T0_MS), o["n"].as_i64().unwrap())
        }).collect();
        prop_assert_eq!(got_s, sessions(&ok, 3_000));
        let mut got_l: Vec<(u8, i64, i64)> = read(&dir.path().join("out/l.jsonl")).iter()
            .map(|o| (dev(&o["device_id"]), o["v"].as_i64().unwrap(), ms(&o["ts"]) - common::T0_MS)).collect();
        let mut want_l: Vec<(u8, i64, i64)> = late.iter().map(|r| (r.dev, r.v, r.ts)).collect();
        got_l.sort();
        want_l.sort();
        prop_assert_eq!(got_l, want_l);
    }
}
