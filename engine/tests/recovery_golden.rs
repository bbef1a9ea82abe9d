//! Recovery is invisible, for every operator: each golden case (tests/golden) runs live with
//! durable state, is "crashed" after a number of steps (the pipeline dropped with no final
//! checkpoint: what was not committed is lost, as in a SIGKILL), then recovered and run to its end.
//! Its sinks must then hold exactly what the same run without a crash gives. Small batches make
//! many steps, with checkpoints and WAL records between them, so the crash lands before, between
//! and after checkpoints of partly filled windows, join buffers, OVER frames and patterns.
//! Equal means equal to the bit: floating-point aggregates included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use eddy_engine::storage::Cipher;
use eddy_engine::storage::RealFs;
use eddy_engine::{DurableConfig, Mode, Pipeline, PipelineConfig};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        // Cases with `args.txt` replace inputs on the replay command line; error cases never run.
        .filter(|p| {
            p.join("pipeline.sql").exists() && !p.join("args.txt").exists() && !p.join("expected/error.txt").exists()
        })
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
            let mut lines: Vec<String> =
                std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_string).collect();
            lines.sort();
            m.insert(e.file_name().to_string_lossy().to_string(), lines);
        }
    }
    m
}

/// Shard threads, and decode threads for file sources.
#[derive(Clone, Copy)]
struct Threads {
    shards: usize,
    decode: usize,
}

const ONE: Threads = Threads { shards: 1, decode: 1 };

fn open(sql: &str, dir: &Path, threads: Threads) -> Result<Pipeline, String> {
    let mut cfg = PipelineConfig::new(dir, Mode::Live);
    cfg.shards = threads.shards;
    cfg.decode_threads = threads.decode;
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
fn run(
    case: &Path,
    dir: &Path,
    crash_after: Option<usize>,
    threads: Threads,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let _ = std::fs::remove_dir_all(dir);
    copy_inputs(case, dir);
    let sql = std::fs::read_to_string(dir.join("pipeline.sql")).unwrap();
    if let Some(steps) = crash_after {
        let mut p = open(&sql, dir, threads)?;
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
    let mut p = open(&sql, dir, threads)?;
    p.run_live(&AtomicBool::new(false)).map_err(|e| e.to_string())?;
    drop(p);
    Ok(outputs(dir))
}

#[test]
fn a_crash_at_any_step_changes_no_output() {
    crash_at_any_step(ONE);
}

/// The same with keyed state over 3 shard threads, against the uninterrupted unsharded run: the
/// shards' checkpoints and the WAL replay routed to them give the same rows.
#[test]
fn a_crash_at_any_step_changes_no_output_on_three_shards() {
    crash_at_any_step(Threads { shards: 3, decode: 1 });
}

/// The same with file sources decoded on 3 threads: the read position saved with each batch is
/// where that batch's lines end, however many lines the pool has read ahead.
#[test]
fn a_crash_at_any_step_changes_no_output_decoded_on_three_threads() {
    crash_at_any_step(Threads { shards: 1, decode: 3 });
}

fn crash_at_any_step(threads: Threads) {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let dir = tmp.path().join(&name);
        let reference = match run(&case, &dir, None, ONE) {
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
            match run(&case, &dir, Some(crash_after), threads) {
                Ok(got) if got == reference => {}
                Ok(got) => {
                    let diff: Vec<String> = reference
                        .iter()
                        .filter(|(k, v)| got.get(*k) != Some(v))
                        .map(|(k, v)| {
                            let g = got.get(k).cloned().unwrap_or_default();
                            let only = |a: &[String], b: &[String]| {
                                a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>()
                            };
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

/// Aggregates whose state is more than a few numbers — a t-digest, a HyperLogLog sketch, the
/// first and last values, Welford's variance — over groups large enough that the digest
/// compresses, recover to exactly the uninterrupted results.
#[test]
fn sketches_and_ordered_aggregates_recover_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    std::fs::create_dir_all(&case).unwrap();
    let mut lines = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2400u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // Up to two seconds of disorder; four devices; temperatures with three decimals.
        let ms = 1_772_352_000_000 + i * 100 - (x >> 33) % 2000;
        let temp = ((x >> 20) % 40_000) as f64 / 1000.0 - 5.0;
        lines.push_str(&format!("{{\"device_id\": \"dev-{}\", \"temp\": {temp}, \"ts\": {ms}}}\n", (x >> 40) % 4));
    }
    std::fs::write(case.join("readings.jsonl"), lines).unwrap();
    std::fs::write(
        case.join("pipeline.sql"),
        "CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
             WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
         WITH (connector = 'file', path = 'readings.jsonl', format = 'json');
         CREATE SINK stats AS
         SELECT device_id, window_start, APPROX_PERCENTILE_CONT(temp, 0.9) AS p90,
                APPROX_PERCENTILE_CONT(temp, 0.5) AS p50, APPROX_DISTINCT(CAST(temp * 1000 AS BIGINT)) AS distinct_temps,
                FIRST_VALUE(temp) AS first_temp, LAST_VALUE(temp) AS last_temp,
                STDDEV_SAMP(temp) AS sd, VAR_POP(temp) AS var, AVG(temp) AS mean
         FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
         GROUP BY device_id, window_start, window_end
         WITH (connector = 'file', path = 'out/stats.jsonl', format = 'json');",
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let reference = run(&case, &dir, None, ONE).unwrap();
    assert!(reference["stats.jsonl"].len() >= 12, "{reference:?}");
    for (k, crash_after) in [5, 60, 150, 300, 500, 700].into_iter().enumerate() {
        // Every other run decodes on two threads.
        let threads = Threads { shards: 1, decode: 1 + k % 2 };
        let got = run(&case, &dir, Some(crash_after), threads).unwrap();
        assert_eq!(got, reference, "crash after {crash_after} steps on {} decode thread(s)", threads.decode);
    }
}

/// Keyed state is not moved between shards: state written by 3 shards is refused by a run on 2
/// (with both counts, so the daemon can keep the written count), and opened again by a run on 3.
#[test]
fn state_is_reopened_only_with_the_shard_count_that_wrote_it() {
    let tmp = tempfile::tempdir().unwrap();
    let case = cases().into_iter().find(|c| c.ends_with("cascade_views")).unwrap();
    let dir = tmp.path().join("run");
    copy_inputs(&case, &dir);
    let sql = std::fs::read_to_string(dir.join("pipeline.sql")).unwrap();
    let mut p = open(&sql, &dir, Threads { shards: 3, decode: 1 }).unwrap();
    assert_eq!(p.summary().shards, 3);
    for _ in 0..6 {
        p.step().unwrap();
    }
    p.checkpoint().unwrap();
    drop(p);
    let mut cfg = PipelineConfig::new(&dir, Mode::Live);
    cfg.shards = 2;
    let mut p = Pipeline::plan(&sql, &cfg).unwrap();
    let d = DurableConfig::new(dir.join("state"), Arc::new(RealFs::new()), Arc::new(Cipher::plaintext()));
    match p.open_durable(&sql, d) {
        Err(eddy_engine::EngineError::ShardCount { written: 3, now: 2, .. }) => {}
        other => panic!("expected a shard count error, got {:?}", other.err()),
    }
    drop(p);
    let mut p = open(&sql, &dir, Threads { shards: 3, decode: 1 }).unwrap();
    p.run_live(&AtomicBool::new(false)).unwrap();
    drop(p);
    let got = outputs(&dir);
    assert_eq!(got, run(&case, &tmp.path().join("reference"), None, ONE).unwrap());
}

/// A state has one identity for its life: none until its first checkpoint holds it, then the
/// same after every restart and in a restored copy of a checkpoint (which continues the state);
/// a fresh state has another. The hub tells a replacement device's fresh state from the old
/// device's by it (docs/hub.md).
#[test]
fn a_state_keeps_its_identity_and_a_fresh_one_has_another() {
    use eddy_engine::storage::{copy_rebased, Owner};
    let tmp = tempfile::tempdir().unwrap();
    let case = cases().into_iter().find(|c| c.ends_with("cascade_views")).unwrap();
    let dir = tmp.path().join("run");
    copy_inputs(&case, &dir);
    let sql = std::fs::read_to_string(dir.join("pipeline.sql")).unwrap();
    let mut p = open(&sql, &dir, ONE).unwrap();
    assert_eq!(p.state_identity(), None, "no checkpoint holds it yet");
    p.step().unwrap();
    p.checkpoint().unwrap();
    let id = p.state_identity().expect("the first checkpoint holds it");
    p.step().unwrap();
    p.checkpoint().unwrap();
    assert_eq!(p.state_identity(), Some(id));
    let files = p.last_checkpoint_files().unwrap();
    drop(p);
    let p = open(&sql, &dir, ONE).unwrap();
    assert_eq!(p.state_identity(), Some(id), "recovered");
    drop(p);

    // A checkpoint copied away and restored under another directory continues the state.
    let download = tmp.path().join("download");
    std::fs::create_dir_all(&download).unwrap();
    for f in files.state_files.iter().chain([&files.manifest]) {
        std::fs::copy(f, download.join(f.file_name().unwrap())).unwrap();
    }
    let restored = tmp.path().join("restored");
    copy_inputs(&case, &restored);
    let storage = Arc::new(RealFs::new());
    let cipher = Arc::new(Cipher::plaintext());
    copy_rebased(storage, cipher, &download, &restored.join("state").join("checkpoints"), Owner::default()).unwrap();
    let p = open(&sql, &restored, ONE).unwrap();
    assert_eq!(p.state_identity(), Some(id), "restored");
    drop(p);

    // The same pipeline on fresh state is another state.
    let fresh = tmp.path().join("fresh");
    copy_inputs(&case, &fresh);
    let mut p = open(&sql, &fresh, ONE).unwrap();
    p.step().unwrap();
    p.checkpoint().unwrap();
    let other = p.state_identity().unwrap();
    assert_ne!(other, id);
}

/// A checkpoint restored from a backup (another device's, or this one's from earlier): the file
/// each sink finds here is not known to hold what the backup published, so it is kept under
/// another name and a new file continues the output exactly from the checkpoint. Before, a
/// shorter file refused to start and a longer one was cut at the backup's length and written on.
#[test]
fn a_restored_checkpoint_keeps_the_sink_files_it_finds_and_starts_new_ones() {
    use eddy_engine::storage::{copy_rebased, Owner};
    let tmp = tempfile::tempdir().unwrap();
    let case = cases().into_iter().find(|c| c.ends_with("cascade_views")).unwrap();
    let reference = run(&case, &tmp.path().join("reference"), None, ONE).unwrap();
    let dir = tmp.path().join("run");
    copy_inputs(&case, &dir);
    let sql = std::fs::read_to_string(dir.join("pipeline.sql")).unwrap();
    let mut p = open(&sql, &dir, ONE).unwrap();
    for _ in 0..4 {
        p.step().unwrap();
        p.tick().unwrap();
    }
    p.checkpoint().unwrap();
    let published = outputs(&dir);
    let files = p.last_checkpoint_files().unwrap();
    drop(p);
    assert!(published.values().any(|rows| !rows.is_empty()), "the backup published nothing: {published:?}");

    // The replacement: its own files at the sinks' paths, longer than what the backup published.
    let restored = tmp.path().join("restored");
    copy_inputs(&case, &restored);
    std::fs::create_dir_all(restored.join("out")).unwrap();
    let foreign = "{\"not\":\"this state's output\"}\n".repeat(500);
    for name in reference.keys() {
        std::fs::write(restored.join("out").join(name), &foreign).unwrap();
    }
    let download = tmp.path().join("download");
    std::fs::create_dir_all(&download).unwrap();
    for f in files.state_files.iter().chain([&files.manifest]) {
        std::fs::copy(f, download.join(f.file_name().unwrap())).unwrap();
    }
    let (storage, cipher) = (Arc::new(RealFs::new()), Arc::new(Cipher::plaintext()));
    copy_rebased(storage, cipher, &download, &restored.join("state").join("checkpoints"), Owner::default()).unwrap();
    let mut p = open(&sql, &restored, ONE).unwrap();
    p.run_live(&AtomicBool::new(false)).unwrap();
    drop(p);
    // Opened again from its own checkpoint: nothing more is set aside.
    drop(open(&sql, &restored, ONE).unwrap());

    let mut aside = 0;
    for e in std::fs::read_dir(restored.join("out")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if let Some((sink_file, _)) = name.split_once(".before-restore-") {
            assert!(reference.contains_key(sink_file), "{name}");
            assert_eq!(std::fs::read_to_string(e.path()).unwrap(), foreign, "{name} kept as it was");
            aside += 1;
            continue;
        }
        let new: Vec<String> = std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_string).collect();
        let mut all: Vec<String> = published.get(&name).cloned().unwrap_or_default();
        all.extend(new);
        all.sort();
        assert_eq!(Some(&all), reference.get(&name), "{name}: the backup's output and the new file's make the whole");
    }
    assert_eq!(aside, reference.len(), "each sink's file set aside once");
}
