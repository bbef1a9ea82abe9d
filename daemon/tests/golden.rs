//! Data-driven golden tests: every folder under `tests/golden/` is one case, in the format of the
//! shared conformance cases: `pipeline.sql`, its inputs, and `expected/<sink>.jsonl` (rows compared as
//! a multiset; numbers within 1e-6 relative; timestamps as instants). A case whose replay must fail has
//! `expected/error.txt`: every non-empty line must appear in eddyd's stderr exactly once (an error says
//! each thing once), and the exit is non-zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "expected" {
            continue;
        }
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn ts_ms(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    eddy_engine::time::parse_timestamp_ms(s)
}

fn same(e: &Value, a: &Value) -> bool {
    if let Some(t) = ts_ms(e) {
        return ts_ms(a) == Some(t) || a.as_i64() == Some(t);
    }
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) || (x - y).abs() < 1e-9
        }
        _ => e == a,
    }
}

fn load(path: &Path) -> Vec<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

fn compare(expected: &[BTreeMap<String, Value>], actual: &[BTreeMap<String, Value>]) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!("{} rows, expected {}", actual.len(), expected.len()));
    }
    let mut pending: Vec<&BTreeMap<String, Value>> = actual.iter().collect();
    for e in expected {
        let hit = pending
            .iter()
            .position(|a| a.len() == e.len() && e.iter().all(|(k, v)| a.get(k).is_some_and(|x| same(v, x))));
        match hit {
            Some(i) => {
                pending.remove(i);
            }
            None => return Err(format!("no row matches expected {}", serde_json::to_string(e).unwrap())),
        }
    }
    Ok(())
}

/// How a case is replayed besides its own `args.txt`.
#[derive(Clone, Copy)]
enum Run {
    Plain,
    /// Keyed state over this many shards, with small batches so that rows of one source really
    /// spread over them.
    Sharded(usize),
    /// File sources decoded on this many threads, in pieces of two lines, so that every case's
    /// input is spread over them.
    DecodeThreads(usize),
}

fn run_case(dir: &Path, run: Run) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir, work.path());
    let args_file = dir.join("args.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eddyd"));
    cmd.arg("replay").arg(work.path().join("pipeline.sql")).current_dir(work.path());
    match run {
        Run::Plain => {}
        Run::Sharded(shards) => {
            cmd.arg(format!("--shards={shards}")).arg("--batch-rows=3");
        }
        Run::DecodeThreads(threads) => {
            cmd.arg(format!("--decode-threads={threads}")).arg("--batch-rows=2");
        }
    }
    if args_file.exists() {
        for a in std::fs::read_to_string(&args_file).unwrap().split_whitespace() {
            cmd.arg(a);
        }
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = dir.join("expected");
    let error_file = expected.join("error.txt");
    if error_file.exists() {
        if out.status.success() {
            return Err("replay succeeded, expected an error".into());
        }
        if stderr.contains("panicked") {
            return Err(format!("panicked: {stderr}"));
        }
        for line in std::fs::read_to_string(&error_file).unwrap().lines().map(str::trim).filter(|l| !l.is_empty()) {
            match stderr.matches(line).count() {
                1 => {}
                0 => return Err(format!("stderr lacks {line:?}: {stderr}")),
                n => return Err(format!("stderr says {line:?} {n} times: {stderr}")),
            }
        }
        return Ok(());
    }
    if !out.status.success() {
        return Err(format!("exit {:?}: {stderr}", out.status.code()));
    }
    for e in std::fs::read_dir(&expected).unwrap() {
        let e = e.unwrap().path();
        let name = e.file_name().unwrap().to_string_lossy().to_string();
        let actual = work.path().join("out").join(&name);
        if !actual.exists() {
            return Err(format!("no out/{name}"));
        }
        compare(&load(&e), &load(&actual)).map_err(|m| format!("{name}: {m}"))?;
    }
    Ok(())
}

/// Every case folder, sorted.
fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pipeline.sql").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no golden cases under {}", cases_dir().display());
    dirs
}

/// Runs every case; returns the names of those that failed (each is printed).
fn run_all(dirs: &[PathBuf], run: Run) -> Vec<String> {
    let mut failed = vec![];
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        match run_case(d, run) {
            Ok(()) => println!("PASS {name}"),
            Err(e) => {
                println!("FAIL {name}: {e}");
                failed.push(name);
            }
        }
    }
    failed
}

#[test]
fn golden_cases() {
    let dirs = case_dirs();
    let failed = run_all(&dirs, Run::Plain);
    assert!(failed.is_empty(), "{} of {} golden cases failed: {failed:?}", failed.len(), dirs.len());
}

/// Every case again with its file sources decoded on 2 and on 3 threads: the same rows, the same
/// late rows (lateness is judged in file order) and the same errors.
#[test]
fn golden_cases_decoded_on_threads() {
    let dirs = case_dirs();
    for threads in [2, 3] {
        let failed = run_all(&dirs, Run::DecodeThreads(threads));
        assert!(
            failed.is_empty(),
            "{} of {} golden cases failed on {threads} decode threads: {failed:?}",
            failed.len(),
            dirs.len()
        );
    }
}

/// Whether `eddyd check` finds the case's pipeline keyed by source columns throughout.
fn shardable(dir: &Path) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_eddyd"))
        .arg("check")
        .arg(dir.join("pipeline.sql"))
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("  sharding: ") && !text.contains("sharding: none")
}

/// Every case again with its keyed state split over 3 shard threads: the same rows (as a
/// multiset), and the same errors. Cases that cannot be sharded run on one and must pass as well.
#[test]
fn golden_cases_sharded() {
    let dirs = case_dirs();
    let sharded: Vec<String> =
        dirs.iter().filter(|d| shardable(d)).map(|d| d.file_name().unwrap().to_string_lossy().to_string()).collect();
    let failed = run_all(&dirs, Run::Sharded(3));
    println!("sharded: {sharded:?}");
    assert!(failed.is_empty(), "{} of {} golden cases failed on 3 shards: {failed:?}", failed.len(), dirs.len());
    // Keyed windows, OVER, MATCH_RECOGNIZE and joins shard; a regression that stops sharding
    // them would make this test pass vacuously.
    for must in [
        "cascade_views",
        "over_rows_lag_lead",
        "pattern_quantifiers",
        "join_lookup_updating",
        "join_asof_strict",
        "join_window",
    ] {
        if dirs.iter().any(|d| d.ends_with(must)) {
            assert!(sharded.iter().any(|s| s == must), "{must} is not sharded (sharded: {sharded:?})");
        }
    }
    assert!(sharded.len() >= 10, "only {} cases shard: {sharded:?}", sharded.len());
    // And pipelines that cannot be split say why: a window over all devices (no key), an OVER
    // keyed by another column than the windows before it, nothing keyed at all.
    for (case, why) in [
        ("union_all", "has no key"),
        ("top_n_per_window", "keep state by different columns"),
        ("join_lookup_left_and_plain", "keeps no keyed state"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_eddyd"))
            .arg("check")
            .arg(cases_dir().join(case).join("pipeline.sql"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("sharding: none") && text.contains(why), "{case}: {text}");
    }
}
