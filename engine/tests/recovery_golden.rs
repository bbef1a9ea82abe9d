//! Recovery is invisible, for every operator: each golden case (tests/golden) runs live with
//! durable state, is "crashed" after a number of steps (the pipeline dropped with no final
//! checkpoint: what was not committed is lost, as in a SIGKILL), then recovered and run to its end.
//! Its sinks must then hold exactly what the same run without a crash gives. Small batches make
//! many steps, with checkpoints and WAL records between them, so the crash lands before, between
//! and after checkpoints of partly filled windows, join buffers, OVER frames and patterns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use eddy_engine::pipeline::{DurableConfig, Mode, Pipeline, PipelineConfig};
use eddy_engine::storage::crypto::Cipher;
use eddy_engine::storage::fs::RealFs;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        // Cases with `args.txt` replace inputs on the replay command line; error cases never run.
        .filter(|p| p.join("pipeline.sql").exists() && !p.join("args.txt").exists() && !p.join("expected/error.txt").exists())
        // Processing-time windows follow the wall clock, so no two runs agree (docs/checkpoint.md).
        .filter(|p| !p.ends_with("processing_time"))
        .collect();
    v.sort();
    v
}

fn copy_inputs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every sink file under `out/`, its lines sorted (sinks are compared as multisets).
fn outputs(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("out")) {
        for e in rd {
            let e = e.unwrap();
            let mut lines: Vec<String> = std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_string).collect();
            lines.sort();
            m.insert(e.file_name().to_string_lossy().to_string(), lines);
        }
    }
    m
}

/// Equal sinks, row for row, but for the last bits of floating-point values: VAR/STDDEV state
/// merged into a fresh accumulator on recovery (Welford's combination) can differ there.
fn same_outputs(a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, rows)| {
            let Some(other) = b.get(k) else { return false };
            let mut left: Vec<serde_json::Value> = other.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
            rows.len() == other.len()
                && rows.iter().all(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    match left.iter().position(|o| close(&v, o)) {
                        Some(i) => {
                            left.swap_remove(i);
                            true
                        }
                        None => false,
                    }
                })
        })
}

fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w))),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| close(v, w)),
        _ => a == b,
    }
}

fn open(sql: &str, dir: &Path) -> Result<Pipeline, String> {
    let mut cfg = PipelineConfig::new(dir, Mode::Live);
    cfg.exactly_once = true;
    cfg.limits.batch_rows = 3;
    cfg.idle_sleep = Duration::from_millis(1);
    let mut p = Pipeline::plan(sql, &cfg).map_err(|e| e.to_string())?;
    let mut d = DurableConfig::new(dir.join("state"), Arc::new(RealFs::new()), Arc::new(Cipher::plaintext()));
    // Checkpoints come from the test; every tick commits the WAL.
    d.checkpoint_interval = Duration::from_secs(3600);
    d.wal.commit_delay = Duration::ZERO;
    d.wal.commit_bytes = 1;
    p.open_durable(sql, d).map_err(|e| e.to_string())?;
    Ok(p)
}

/// Runs `case` in a fresh `dir`: first for `crash_after` steps (a checkpoint after every third),
/// then recovered and to the end. Returns the sinks' rows.
fn run(case: &Path, dir: &Path, crash_after: Option<usize>) -> Result<BTreeMap<String, Vec<String>>, String> {
    let _ = std::fs::remove_dir_all(dir);
    copy_inputs(case, dir);
    let sql = std::fs::read_to_string(dir.join("pipeline.sql")).unwrap();
    if let Some(steps) = crash_after {
        let mut p = open(&sql, dir)?;
        for i in 1..=steps {
            if p.all_ended() {
                break;
            }
            p.step().map_err(|e| e.to_string())?;
            p.tick().map_err(|e| e.to_string())?;
            if i % 3 == 0 {
                p.checkpoint().map_err(|e| e.to_string())?;
            }
        }
        drop(p);
    }
    let mut p = open(&sql, dir)?;
    p.run_live(&AtomicBool::new(false)).map_err(|e| e.to_string())?;
    drop(p);
    Ok(outputs(dir))
}

#[test]
fn a_crash_at_any_step_changes_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let dir = tmp.path().join(&name);
        let reference = match run(&case, &dir, None) {
            Ok(r) => r,
            Err(e) if e.contains("cannot run with durable state yet") => {
                println!("SKIP {name}: {e}");
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert!(reference.values().any(|v| !v.is_empty()), "{name}: no output at all");
        for crash_after in [1, 2, 3, 4, 5, 7, 9, 12, 16, 24, 40] {
            match run(&case, &dir, Some(crash_after)) {
                Ok(got) if same_outputs(&reference, &got) => {}
                Ok(got) => {
                    let diff: Vec<String> = reference
                        .iter()
                        .filter(|(k, v)| got.get(*k) != Some(v))
                        .map(|(k, v)| {
                            let g = got.get(k).cloned().unwrap_or_default();
                            let only = |a: &[String], b: &[String]| a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>();
                            format!("{k}: missing {:?}\n  extra {:?}", only(v, &g), only(&g, v))
                        })
                        .collect();
                    failures.push(format!("{name}, crash after {crash_after} steps:\n  {}", diff.join("\n  ")));
                    break;
                }
                Err(e) => {
                    failures.push(format!("{name}, crash after {crash_after} steps: {e}"));
                    break;
                }
            }
        }
        checked += 1;
        if !failures.last().is_some_and(|f| f.starts_with(&format!("{name},"))) {
            println!("PASS {name}");
        }
    }
    assert!(failures.is_empty(), "{} case(s) recover differently:\n{}", failures.len(), failures.join("\n"));
    assert!(checked >= 15, "only {checked} cases could be checked");
}
