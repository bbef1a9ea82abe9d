//! Checks `eddyd replay`'s join results against DataFusion running the same join as a batch query
//! over the same accepted rows (the rows each source let through its lateness rule, dumped by an
//! extra sink). An integration test of the benches crate (it needs DataFusion's batch engine), run
//! by `cargo test --workspace`; it drives the `eddyd` binary the same invocation builds.
//!
//! ASOF joins are not checked here: DataFusion has no ASOF join (the golden and property tests
//! check them against their own references).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use datafusion::prelude::{JsonReadOptions, SessionContext};
use serde_json::Value;

mod common;

struct Check {
    case: &'static str,
    sources: &'static [&'static str],
    /// DataFusion statements run first: tables, views that give the accepted rows their types.
    setup: &'static [&'static str],
    /// (sink, the batch query that must give the sink's rows).
    sinks: &'static [(&'static str, &'static str)],
}

const CHECKS: &[Check] = &[
    Check {
        case: "join_lookup_left_and_plain",
        sources: &["readings"],
        setup: &[
            "CREATE VIEW readings AS SELECT device_id, temp, CAST(ts AS TIMESTAMP) AS ts FROM readings_raw",
            // The table after its PRIMARY KEY rule (the last row per key wins: dev-1's second row).
            "CREATE VIEW devices AS SELECT * FROM devices_raw WHERE NOT (device_id = 'dev-1' AND site = 'hall-old')",
        ],
        sinks: &[
            ("enriched", "SELECT r.device_id, d.site, d.limit_temp, r.temp FROM readings AS r LEFT JOIN devices AS d ON r.device_id = d.device_id AND d.active"),
            ("over_limit", "SELECT r.device_id, d.site, r.temp, r.ts FROM readings r JOIN devices d ON r.device_id = d.device_id WHERE r.temp > d.limit_temp"),
        ],
    },
    Check {
        case: "join_interval_outer",
        sources: &["commands", "acks"],
        setup: &[
            "CREATE VIEW commands AS SELECT cmd_id, device_id, CAST(ts AS TIMESTAMP) AS ts FROM commands_raw",
            "CREATE VIEW acks AS SELECT cmd_id, status, CAST(ts AS TIMESTAMP) AS ts FROM acks_raw",
        ],
        sinks: &[
            ("acked", "SELECT c.cmd_id, a.status, c.ts AS sent_at, a.ts AS acked_at FROM commands c LEFT JOIN acks a
               ON c.cmd_id = a.cmd_id AND a.ts BETWEEN c.ts AND c.ts + INTERVAL '10' SECOND AND a.status <> 'dup'"),
            ("everything", "SELECT c.cmd_id AS c_cmd, a.cmd_id AS a_cmd, c.ts AS sent_at, a.ts AS acked_at FROM commands c FULL OUTER JOIN acks a
               ON c.cmd_id = a.cmd_id AND a.ts >= c.ts AND a.ts <= c.ts + INTERVAL '10' SECOND"),
        ],
    },
    Check {
        case: "join_window",
        sources: &["power", "temps"],
        setup: &[
            "CREATE VIEW p AS SELECT device_id, date_bin(INTERVAL '1 minute', CAST(ts AS TIMESTAMP)) AS window_start,
               date_bin(INTERVAL '1 minute', CAST(ts AS TIMESTAMP)) + INTERVAL '1 minute' AS window_end, SUM(watts) AS watts
               FROM power_raw GROUP BY 1, 2, 3",
            "CREATE VIEW t AS SELECT device_id, date_bin(INTERVAL '1 minute', CAST(ts AS TIMESTAMP)) AS window_start,
               date_bin(INTERVAL '1 minute', CAST(ts AS TIMESTAMP)) + INTERVAL '1 minute' AS window_end, MAX(temp) AS max_temp
               FROM temps_raw GROUP BY 1, 2, 3",
        ],
        sinks: &[
            ("both_sides", "SELECT p.device_id, p.window_start, p.watts, t.max_temp
               FROM p JOIN t ON p.device_id = t.device_id AND p.window_start = t.window_start AND p.window_end = t.window_end"),
            ("either_side", "SELECT p.device_id AS p_dev, t.device_id AS t_dev, COALESCE(p.window_end, t.window_end) AS window_end, p.watts, t.max_temp
               FROM p FULL JOIN t ON p.device_id = t.device_id AND p.window_start = t.window_start AND p.window_end = t.window_end"),
        ],
    },
];

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn read_rows(path: &Path) -> Result<Vec<BTreeMap<String, Value>>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(common::normalise(serde_json::from_str(l)?))).collect()
}

fn compare(what: &str, eddy: &[BTreeMap<String, Value>], batch: &[BTreeMap<String, Value>]) -> Result<()> {
    if eddy.len() != batch.len() {
        bail!("{what}: eddy gave {} rows, DataFusion {}", eddy.len(), batch.len());
    }
    let mut pending: Vec<&BTreeMap<String, Value>> = eddy.iter().collect();
    for row in batch {
        let hit = pending
            .iter()
            .position(|e| e.len() == row.len() && row.iter().all(|(k, v)| e.get(k).is_some_and(|x| same(v, x))));
        match hit {
            Some(i) => {
                pending.remove(i);
            }
            None => bail!("{what}: DataFusion row {row:?} has no match in eddy's output"),
        }
    }
    Ok(())
}

async fn check(eddyd: &Path, golden: &Path, c: &Check) -> Result<()> {
    let work = std::env::temp_dir().join(format!("eddy-join-check-{}-{}", std::process::id(), c.case));
    let _ = std::fs::remove_dir_all(&work);
    copy_dir(&golden.join(c.case), &work)?;
    let mut sql = std::fs::read_to_string(work.join("pipeline.sql"))?;
    for s in c.sources {
        sql.push_str(&format!(
            "\nCREATE SINK accepted_{s} AS SELECT * FROM {s} WITH (connector = 'file', path = 'accepted/{s}.jsonl');\n"
        ));
    }
    std::fs::write(work.join("pipeline.sql"), sql)?;
    let out = Command::new(eddyd).arg("replay").arg(work.join("pipeline.sql")).output()?;
    if !out.status.success() {
        bail!("{}: eddyd replay failed: {}", c.case, String::from_utf8_lossy(&out.stderr));
    }
    let ctx = SessionContext::new();
    for s in c.sources {
        let path = work.join("accepted").join(format!("{s}.jsonl"));
        ctx.register_json(
            format!("{s}_raw"),
            path.to_string_lossy().as_ref(),
            JsonReadOptions::default().file_extension(".jsonl"),
        )
        .await?;
    }
    if work.join("devices.jsonl").exists() {
        ctx.register_json(
            "devices_raw",
            work.join("devices.jsonl").to_string_lossy().as_ref(),
            JsonReadOptions::default().file_extension(".jsonl"),
        )
        .await?;
    }
    for stmt in c.setup {
        ctx.sql(stmt).await?.collect().await?;
    }
    for (sink, query) in c.sinks {
        let batch_rows = common::batch_rows(&ctx.sql(query).await?.collect().await?)?;
        let eddy_rows = read_rows(&work.join("out").join(format!("{sink}.jsonl")))?;
        compare(&format!("{}/{sink}", c.case), &eddy_rows, &batch_rows)?;
        println!("PASS {}/{sink}: {} rows equal DataFusion's batch join", c.case, eddy_rows.len());
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn joins_equal_datafusion_batch_joins_over_the_accepted_rows() {
    let eddyd = common::eddyd();
    assert!(eddyd.exists(), "{} not built (run the whole workspace's tests: cargo test --workspace)", eddyd.display());
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut failed = vec![];
    for c in CHECKS {
        if let Err(e) = check(&eddyd, &golden, c).await {
            eprintln!("FAIL {e:#}");
            failed.push(c.case);
        }
    }
    assert!(failed.is_empty(), "join checks failed: {failed:?}");
}
