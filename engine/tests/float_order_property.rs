//! Property: sums and averages of DOUBLE values do not depend on batch boundaries or decode
//! threads ("batches are an implementation detail", spec §3). Floating-point addition is not
//! associative, so an engine that sums a batch's rows as one block and then adds blocks gives
//! results that move with the batch size; every aggregate store must add rows one by one in
//! arrival order. Checked for TUMBLE, SESSION (whose sessions merge), a non-windowed GROUP BY and
//! `EMIT ON UPDATE`, the last two through the final row per key of an upsert sink.

use std::collections::BTreeMap;

use eddy_engine::{Mode, Pipeline, PipelineConfig};
use proptest::prelude::*;

mod common;

#[derive(Debug, Clone)]
struct Row {
    dev: u8,
    ts: i64,
    v: f64,
}

/// Values over many magnitudes, so that the order of additions shows in the low bits.
fn rows_strategy() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec((0u8..3, 0i64..2_500, any::<i32>(), 0i32..18), 2..250).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (dev, jitter, mantissa, exp))| Row {
                dev,
                ts: i as i64 * 600 - jitter,
                v: f64::from(mantissa) * 10f64.powi(exp - 9),
            })
            .collect()
    })
}

/// Replays `rows` in pieces of `batch` lines on `threads` decode threads; the output files' lines.
fn run(rows: &[Row], batch: usize, threads: usize) -> BTreeMap<&'static str, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    common::write_readings(dir.path(), rows.iter().map(|r| (r.dev, format!("{:?}", r.v), r.ts)));
    let sql = format!(
        "CREATE SOURCE r (device_id VARCHAR NOT NULL, v DOUBLE, ts TIMESTAMP(3) NOT NULL,
             WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
         WITH (connector = 'file', path = 'in.jsonl', batch_rows = '{batch}');
         CREATE SINK t AS SELECT device_id, window_start, SUM(v) AS s, AVG(v) AS a
             FROM TUMBLE(r, ts, INTERVAL '10' SECOND) GROUP BY device_id, window_start, window_end
             WITH (connector = 'file', path = 'out/t.jsonl');
         CREATE SINK s AS SELECT device_id, window_start, window_end, SUM(v) AS s, AVG(v) AS a
             FROM SESSION(r, ts, INTERVAL '2' SECOND) GROUP BY device_id, window_start, window_end
             WITH (connector = 'file', path = 'out/s.jsonl');
         CREATE SINK g AS SELECT device_id, SUM(v) AS s, AVG(v) AS a FROM r GROUP BY device_id
             WITH (connector = 'file', path = 'out/g.jsonl', type = 'upsert');
         CREATE SINK u AS SELECT device_id, window_start, SUM(v) AS s FROM TUMBLE(r, ts, INTERVAL '10' SECOND)
             GROUP BY device_id, window_start, window_end EMIT ON UPDATE
             WITH (connector = 'file', path = 'out/u.jsonl', type = 'upsert');"
    );
    let mut cfg = PipelineConfig::new(dir.path(), Mode::Replay);
    cfg.decode_threads = threads;
    let mut p = Pipeline::plan(&sql, &cfg).unwrap();
    p.run_to_end().unwrap();
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.path().join("out").join(name)).unwrap().lines().map(str::to_string).collect()
    };
    let mut out = BTreeMap::new();
    for (name, file) in [("t", "t.jsonl"), ("s", "s.jsonl")] {
        let mut l = lines(file);
        l.sort();
        out.insert(name, l);
    }
    for (name, file, key) in
        [("g", "g.jsonl", &["device_id"][..]), ("u", "u.jsonl", &["device_id", "window_start"][..])]
    {
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for line in lines(file) {
            let o: serde_json::Value = serde_json::from_str(&line).unwrap();
            let k = key.iter().map(|c| o[*c].to_string()).collect::<Vec<_>>().join("|");
            last.insert(k, line);
        }
        out.insert(name, last.into_values().collect());
    }
    out
}

/// Sums of each 10-second window per device, added in arrival order (no late rows: the input's
/// disorder stays inside the watermark's delay).
fn tumble_sums(rows: &[Row]) -> BTreeMap<(u8, i64), f64> {
    let mut sums = BTreeMap::new();
    for r in rows {
        *sums.entry((r.dev, r.ts.div_euclid(10_000) * 10_000)).or_insert(0.0) += r.v;
    }
    sums
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn float_aggregates_do_not_depend_on_batches(rows in rows_strategy(), batch in 2usize..40, threads in 1usize..4) {
        let one_by_one = run(&rows, 1, 1);
        let batched = run(&rows, batch, threads);
        for (name, lines) in &one_by_one {
            prop_assert_eq!(lines, &batched[name], "sink {} with batch_rows {}", name, batch);
        }
        let got: BTreeMap<(u8, i64), f64> = one_by_one["t"]
            .iter()
            .map(|l| {
                let o: serde_json::Value = serde_json::from_str(l).unwrap();
                let dev = o["device_id"].as_str().unwrap()[4..].parse().unwrap();
                let start = eddy_engine::time::parse_timestamp_ms(o["window_start"].as_str().unwrap()).unwrap();
                (dev, start - common::T0_MS)
            })
            .zip(one_by_one["t"].iter().map(|l| l.split("\"s\":").nth(1).unwrap().split(',').next().unwrap().parse::<f64>().unwrap()))
            .collect();
        prop_assert_eq!(got, tumble_sums(&rows));
    }
}
