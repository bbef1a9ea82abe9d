//! Property: whatever the disorder of two inputs and the batch boundaries, interval joins, ASOF joins
//! and a MATCH_RECOGNIZE query give what a nested-loop reference over the accepted rows gives.

use eddy_engine::{Mode, Pipeline, PipelineConfig};
use proptest::prelude::*;

const T0: i64 = 1_772_352_000_000;

#[derive(Debug, Clone)]
struct Row {
    dev: u8,
    ts: i64,
    v: i64,
}

fn rows_strategy(step: i64) -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec((0u8..3, 0i64..3_000, 0i64..20), 1..160).prop_map(move |raw| {
        raw.into_iter().enumerate().map(|(i, (dev, jitter, v))| Row { dev, ts: i as i64 * step - jitter, v }).collect()
    })
}

fn accept(rows: &[Row], delay: i64) -> Vec<Row> {
    let mut max: Option<i64> = None;
    let mut ok = vec![];
    for r in rows {
        if max.is_some_and(|m| r.ts < m - delay) {
            continue;
        }
        max = Some(max.map_or(r.ts, |m| m.max(r.ts)));
        ok.push(r.clone());
    }
    ok
}

fn write(dir: &std::path::Path, name: &str, rows: &[Row]) {
    let text: String = rows
        .iter()
        .map(|r| {
            format!("{{\"dev\":{},\"v\":{},\"ts\":\"{}\"}}\n", r.dev, r.v, eddy_engine::time::rfc3339_ms(T0 + r.ts))
        })
        .collect();
    std::fs::write(dir.join(name), text).unwrap();
}

fn read(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ms(v: &serde_json::Value) -> Option<i64> {
    v.as_str().map(|s| eddy_engine::time::parse_timestamp_ms(s).unwrap() - T0)
}

type Out = Vec<(i64, i64, Option<i64>, Option<i64>)>;

fn run(a: &[Row], b: &[Row], batch_a: usize, batch_b: usize) -> (Out, Out, Vec<(i64, i64, i64)>) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.jsonl", a);
    write(dir.path(), "b.jsonl", b);
    let src = |n: &str, batch: usize| {
        format!(
            "CREATE SOURCE {n} (dev BIGINT NOT NULL, v BIGINT, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
             WITH (connector = 'file', path = '{n}.jsonl', batch_rows = '{batch}');"
        )
    };
    let sql = format!(
        "{}{}
         CREATE SINK i AS SELECT a.dev, a.ts AS a_ts, a.v AS a_v, b.ts AS b_ts, b.v AS b_v FROM a LEFT JOIN b
           ON a.dev = b.dev AND b.ts BETWEEN a.ts - INTERVAL '2' SECOND AND a.ts + INTERVAL '1' SECOND
           WITH (connector = 'file', path = 'out/i.jsonl');
         CREATE SINK s AS SELECT a.dev, a.ts AS a_ts, a.v AS a_v, b.ts AS b_ts, b.v AS b_v FROM a ASOF JOIN b
           ON a.dev = b.dev AND a.ts >= b.ts WITH (connector = 'file', path = 'out/s.jsonl');
         CREATE SINK p AS SELECT * FROM a MATCH_RECOGNIZE (PARTITION BY dev ORDER BY ts
           MEASURES FIRST(UP.ts) AS first_ts, COUNT(UP.*) AS ups PATTERN (UP+ DOWN)
           DEFINE UP AS UP.v > PREV(UP.v), DOWN AS DOWN.v < PREV(DOWN.v)) WITH (connector = 'file', path = 'out/p.jsonl');",
        src("a", batch_a),
        src("b", batch_b)
    );
    let mut p = Pipeline::plan(&sql, &PipelineConfig::new(dir.path(), Mode::Replay)).unwrap();
    p.run_to_end().unwrap();
    let pairs = |f: &str| -> Out {
        let mut v: Out = read(&dir.path().join(f))
            .iter()
            .map(|o| (ms(&o["a_ts"]).unwrap(), o["a_v"].as_i64().unwrap(), ms(&o["b_ts"]), o["b_v"].as_i64()))
            .collect();
        v.sort();
        v
    };
    let mut m: Vec<(i64, i64, i64)> = read(&dir.path().join("out/p.jsonl"))
        .iter()
        .map(|o| (o["dev"].as_i64().unwrap(), ms(&o["first_ts"]).unwrap(), o["ups"].as_i64().unwrap()))
        .collect();
    m.sort();
    (pairs("out/i.jsonl"), pairs("out/s.jsonl"), m)
}

fn reference(a: &[Row], b: &[Row]) -> (Out, Out, Vec<(i64, i64, i64)>) {
    let (mut inter, mut asof) = (vec![], vec![]);
    for x in a {
        let hits: Vec<&Row> =
            b.iter().filter(|y| y.dev == x.dev && x.ts - 2000 <= y.ts && y.ts <= x.ts + 1000).collect();
        if hits.is_empty() {
            inter.push((x.ts, x.v, None, None));
        }
        inter.extend(hits.iter().map(|y| (x.ts, x.v, Some(y.ts), Some(y.v))));
        // Latest at or before; among equal times the last to arrive.
        let best = b.iter().filter(|y| y.dev == x.dev && y.ts <= x.ts).fold(None::<&Row>, |best, y| match best {
            Some(bb) if bb.ts > y.ts => Some(bb),
            _ => Some(y),
        });
        if let Some(y) = best {
            asof.push((x.ts, x.v, Some(y.ts), Some(y.v)));
        }
    }
    inter.sort();
    asof.sort();
    // UP+ DOWN, greedy, skip past last row: a run of rises then a fall.
    let mut matches = vec![];
    for dev in 0..3u8 {
        let mut rows: Vec<&Row> = a.iter().filter(|r| r.dev == dev).collect();
        rows.sort_by_key(|r| r.ts);
        let up = |i: usize| i > 0 && rows[i].v > rows[i - 1].v;
        let down = |i: usize| i > 0 && rows[i].v < rows[i - 1].v;
        let mut s = 0;
        while s < rows.len() {
            let mut k = s;
            while k < rows.len() && up(k) {
                k += 1;
            }
            if k > s && k < rows.len() && down(k) {
                matches.push((dev as i64, rows[s].ts, (k - s) as i64));
                s = k + 1;
            } else {
                s += 1;
            }
        }
    }
    matches.sort();
    (inter, asof, matches)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn joins_and_patterns_match_a_nested_loop_reference(
        a in rows_strategy(900), b in rows_strategy(1100), batch_a in 1usize..40, batch_b in 1usize..40
    ) {
        let (ok_a, ok_b) = (accept(&a, 2000), accept(&b, 2000));
        let got = run(&a, &b, batch_a, batch_b);
        let want = reference(&ok_a, &ok_b);
        prop_assert_eq!(got.0, want.0, "interval LEFT JOIN");
        prop_assert_eq!(got.1, want.1, "ASOF JOIN");
        prop_assert_eq!(got.2, want.2, "MATCH_RECOGNIZE");
    }
}
