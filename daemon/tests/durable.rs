//! Durable state, tested as users run it: `eddyd run --state-dir` killed with SIGKILL at random
//! moments and restarted must end with sinks holding exactly what `eddyd replay` gives; nothing in
//! the state dir may show row data in plaintext; key mistakes are clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EDDYD: &str = env!("CARGO_BIN_EXE_eddyd");
const CANARY: &str = "CANARY-5d1e77ab";

const PIPELINE: &str = r#"
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'in.jsonl', format = 'json', batch_rows = '40', follow = 'false');

CREATE SINK per_min AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, AVG(temp) AS avg_temp, MAX(temp) AS max_temp
FROM TUMBLE(readings, ts, INTERVAL '60' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_min.jsonl');

CREATE SINK sessions AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, SUM(temp) AS s
FROM SESSION(readings, ts, INTERVAL '20' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/sessions.jsonl');

CREATE SINK totals AS
SELECT device_id, COUNT(*) AS n, SUM(temp) AS s FROM readings GROUP BY device_id
WITH (connector = 'file', path = 'out/totals.jsonl', type = 'upsert');

CREATE SINK raw AS SELECT device_id, temp, ts FROM readings WHERE temp > 38
WITH (connector = 'file', path = 'out/raw.jsonl');

CREATE SINK bad AS SELECT raw, error FROM ERRORS(readings)
WITH (connector = 'file', path = 'out/bad.jsonl');
"#;

const SINKS: &[&str] = &["per_min", "sessions", "totals", "raw", "bad"];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Telemetry with disorder, late rows, bad lines and canary device names.
fn write_input(dir: &Path, rows: usize) {
    let mut rng = Lcg(11);
    let mut s = String::new();
    let t0: i64 = 1_700_000_000_000;
    for i in 0..rows {
        let mut ts = t0 + i as i64 * 200 - rng.below(4000) as i64;
        if rng.below(100) == 0 {
            ts -= 60_000;
        }
        if rng.below(200) == 0 {
            s.push_str("{\"device_id\": \"x\", \"temp\": \"hot\"\n");
            continue;
        }
        let dev =
            if rng.below(50) == 0 { format!("{CANARY}-{}", rng.below(3)) } else { format!("dev-{}", rng.below(12)) };
        let temp = 10.0 + rng.below(3000) as f64 / 100.0;
        s.push_str(&format!("{{\"device_id\": \"{dev}\", \"temp\": {temp}, \"ts\": {ts}}}\n"));
    }
    std::fs::write(dir.join("in.jsonl"), s).unwrap();
}

fn setup(rows: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.sql"), PIPELINE).unwrap();
    write_input(dir.path(), rows);
    dir
}

fn write_key(path: &Path, line: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{line}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn keygen(id: u32) -> String {
    let out = Command::new(EDDYD).args(["keygen", "--id", &id.to_string()]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect();
    v.sort();
    v
}

fn expected(dir: &Path) -> Vec<Vec<String>> {
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(dir).args(["replay", "p.sql"]);
    for s in SINKS {
        cmd.arg("--output").arg(format!("{s}=exp/{s}.jsonl"));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    SINKS.iter().map(|s| sorted_lines(&dir.join(format!("exp/{s}.jsonl")))).collect()
}

fn run_cmd(dir: &Path, state: &str, key: Option<&Path>) -> Command {
    run_cmd_with(dir, state, key, &[])
}

fn run_cmd_with(dir: &Path, state: &str, key: Option<&Path>, extra: &[&str]) -> Command {
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(dir)
        .args(["run", "--pipeline", "p.sql", "--state-dir", state, "--checkpoint-interval-ms", "15"])
        .args(extra);
    match key {
        Some(k) => cmd.arg("--key-file").arg(k),
        None => cmd.arg("--no-encryption"),
    };
    cmd.env("EDDY_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// (path, length, modification time) of every file under `dir`, sorted.
fn file_stamps(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = files_under(dir)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.len(), m.modified().ok()?))
        })
        .collect();
    v.sort();
    v
}

/// Waits (up to 30 s) until nothing under `dir` changes for `quiet`; whether it did.
fn settles(dir: &Path, quiet: Duration) -> bool {
    let t0 = Instant::now();
    let mut last = file_stamps(dir);
    while t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(quiet);
        let now = file_stamps(dir);
        if now == last {
            return true;
        }
        last = now;
    }
    false
}

/// An idle pipeline rewrote its checkpoint every interval, because the watermarks of its
/// `ERRORS()` stream follow the wall clock: a gateway waiting for input wore its flash (about
/// 130 MB a day). Idle, nothing under the state dir changes now; input after the idle spell is
/// checkpointed as before, and a SIGKILL then recovers to exactly what replay gives.
#[test]
fn an_idle_pipeline_writes_nothing_to_its_state_dir() {
    let dir = setup(3000);
    let root = dir.path();
    let want = expected(root);
    let all = std::fs::read_to_string(root.join("in.jsonl")).unwrap();
    // Cut where no 40-row batch ends (after the 1987th decodable row): the rows read after the
    // idle spell are batched differently from replay, and the results must still be equal to the
    // bit (SESSION sums over DOUBLE included).
    let cut = all.match_indices('\n').filter(|(at, _)| all[..*at].ends_with('}')).nth(1986).unwrap().0 + 1;
    let (first, rest) = all.split_at(cut);
    std::fs::write(root.join("in.jsonl"), first).unwrap();
    std::fs::write(root.join("p.sql"), PIPELINE.replace("follow = 'false'", "follow = 'true'")).unwrap();
    let key = root.join("state.key");
    write_key(&key, &keygen(1));
    let mut child = run_cmd(root, "state", Some(&key)).spawn().unwrap();
    let state = root.join("state");
    assert!(wait_until(|| state.join("p/checkpoints").exists()), "no checkpoint");
    // 15 ms checkpoints: a second without a change is about 65 intervals skipped.
    assert!(settles(&state, Duration::from_secs(1)), "the idle pipeline kept writing its state dir");
    let idle = file_stamps(&state);
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(root.join("in.jsonl")).unwrap().write_all(rest.as_bytes()).unwrap();
    assert!(wait_until(|| file_stamps(&state) != idle), "new input was not checkpointed");
    assert!(settles(&state, Duration::from_secs(1)), "the pipeline kept writing after the new input");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(root.join("p.sql"), PIPELINE).unwrap();
    let out = run_cmd(root, "state", Some(&key)).output().unwrap();
    assert!(out.status.success(), "restart: {}", String::from_utf8_lossy(&out.stderr));
    for (i, s) in SINKS.iter().enumerate() {
        let got = root.join(format!("out/{s}.jsonl"));
        if *s == "totals" {
            // An upsert sink writes each batch's changes, so only its final rows per key compare.
            assert_eq!(last_per_device(&got), last_per_device(&root.join("exp/totals.jsonl")), "sink totals");
        } else {
            assert!(sorted_lines(&got) == want[i], "sink {s}: rows differ from replay");
        }
    }
}

/// What an upsert file sink holds: its last line per `device_id`.
fn last_per_device(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let row = |l: &str| (serde_json::from_str::<serde_json::Value>(l).unwrap()["device_id"].to_string(), l.to_string());
    text.lines().map(row).collect()
}

/// `ms` milliseconds, scaled for the machine the test runs on: under qemu-user
/// (`EDDY_TEST_EMULATED`, set by scripts/cross.sh test) eddyd starts about ten times slower, and a
/// kill timed for native speed would land before it had written anything.
fn scaled_ms(ms: u64) -> Duration {
    let factor = if std::env::var_os("EDDY_TEST_EMULATED").is_some() { 10 } else { 1 };
    Duration::from_millis(ms * factor)
}

fn wait_until(mut ok: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sigkill_at_random_moments_neither_loses_nor_doubles_rows() {
    sigkill_rounds(200_000, 50, &[]);
}

/// The same with a record limit far below one poll's batch: every batch is logged as a group of
/// parts, and a kill between them must neither lose nor double a row.
#[test]
fn sigkill_with_batches_split_over_several_records() {
    sigkill_rounds(40_000, 12, &["--wal-max-record-bytes", "1500"]);
}

fn sigkill_rounds(rows: usize, min_kills: usize, extra: &[&str]) {
    let dir = setup(rows);
    let root = dir.path();
    let want = expected(root);
    assert!(want.iter().all(|w| !w.is_empty()), "every sink has rows to check");
    let key = root.join("state.key");
    write_key(&key, &keygen(1));
    let mut rng = Lcg(2026);
    let (mut kills, mut rounds, mut restarts) = (0, 0, 0);
    let started = Instant::now();
    while kills < min_kills {
        rounds += 1;
        let state = format!("state-{rounds}");
        let _ = std::fs::remove_dir_all(root.join("out"));
        loop {
            restarts += 1;
            assert!(restarts < 2000, "no progress after {restarts} restarts");
            let mut child = run_cmd_with(root, &state, Some(&key), extra).spawn().unwrap();
            let deadline = Instant::now() + scaled_ms(5 + rng.below(150));
            let mut exited = None;
            while Instant::now() < deadline {
                if let Some(st) = child.try_wait().unwrap() {
                    exited = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            match exited {
                Some(st) => {
                    let mut err = String::new();
                    use std::io::Read;
                    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                    assert!(st.success(), "eddyd run failed after {kills} kills: {err}");
                    break;
                }
                None => {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills += 1;
                }
            }
        }
        for (i, s) in SINKS.iter().enumerate() {
            let got = sorted_lines(&root.join(format!("out/{s}.jsonl")));
            assert_eq!(got.len(), want[i].len(), "sink {s}: row count after round {rounds} ({kills} kills so far)");
            assert!(got == want[i], "sink {s}: rows differ from replay after round {rounds}");
        }
    }
    eprintln!(
        "{kills} SIGKILLs over {rounds} rounds ({restarts} starts) in {:?}: every sink equal to replay",
        started.elapsed()
    );
}

#[test]
fn row_data_never_appears_in_plaintext_under_the_state_dir() {
    let dir = setup(5_000);
    let root = dir.path();
    let key = root.join("k");
    write_key(&key, &keygen(1));
    // Stop mid-way (SIGKILL), so open windows, WAL records and staged output are all on disk.
    let scan = |state: &str| -> usize {
        files_under(&root.join(state))
            .iter()
            .filter(|p| std::fs::read(p).unwrap().windows(CANARY.len()).any(|w| w == CANARY.as_bytes()))
            .count()
    };
    for (state, key) in [("enc", Some(key.as_path())), ("plain", None)] {
        let out = run_cmd(root, state, key).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut child = run_cmd(root, &format!("{state}-killed"), key).spawn().unwrap();
        std::thread::sleep(scaled_ms(40));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(scan("enc") + scan("enc-killed"), 0, "a canary value is readable in an encrypted state dir");
    // The same scan finds the canary when encryption is off: the check can fail.
    assert!(scan("plain") + scan("plain-killed") > 0, "the plaintext run should show the canary");
}

#[test]
fn key_mistakes_are_clear_errors() {
    let dir = setup(2_000);
    let root = dir.path();
    let good = root.join("good.key");
    write_key(&good, &keygen(1));
    let out = run_cmd(root, "st", Some(&good)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let stderr = |mut cmd: Command| {
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // Another key with the same id.
    let other = root.join("other.key");
    write_key(&other, &keygen(1));
    let e = stderr(run_cmd(root, "st", Some(&other)));
    assert!(e.contains("wrong key"), "{e}");
    // No key at all, encryption not turned off.
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(root).args(["run", "--pipeline", "p.sql", "--state-dir", "st"]).env_remove("CREDENTIALS_DIRECTORY");
    let e = stderr(cmd);
    assert!(e.contains("no key was given") && e.contains("--no-encryption"), "{e}");
    // Encrypted state read without a key.
    let e = stderr(run_cmd(root, "st", None));
    assert!(e.contains("no key is configured"), "{e}");
    // A key file others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = stderr(run_cmd(root, "st", Some(&good)));
    assert!(e.contains("chmod 600"), "{e}");
    // Rotation: a new key appended; old state stays readable, new files use key 2.
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rotated = format!("{}\n{}", std::fs::read_to_string(&good).unwrap().trim(), keygen(2));
    write_key(&good, &rotated);
    let out = run_cmd(root, "st", Some(&good)).output().unwrap();
    assert!(out.status.success(), "after rotation: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_changed_pipeline_is_not_fed_old_state() {
    let dir = setup(2_000);
    let root = dir.path();
    let out = run_cmd(root, "st", None).output().unwrap();
    assert!(out.status.success());
    std::fs::write(root.join("p.sql"), PIPELINE.replace("INTERVAL '60' SECOND", "INTERVAL '30' SECOND")).unwrap();
    let out = run_cmd(root, "st", None).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different version of this pipeline"));
}

fn stderr_of(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "expected a failure: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Key id 0 marks plaintext in the file formats: it was accepted as a key and then wrote the WAL
/// unencrypted while the log said encryption was on.
#[test]
fn key_id_zero_is_refused() {
    let dir = setup(500);
    let root = dir.path();
    let out = Command::new(EDDYD).args(["keygen", "--id", "0"]).output().unwrap();
    assert!(!out.status.success());
    let key = root.join("zero.key");
    write_key(&key, &keygen(1).replacen("1:", "0:", 1));
    let e = stderr_of(run_cmd(root, "st", Some(&key)));
    assert!(e.contains("key id 0"), "{e}");
    assert!(!root.join("st").join("p").join("wal").exists(), "nothing may be written with key id 0");
}

/// Outside systemd (no UMask=), a state dir must still be private: 0700 directories, 0600 files.
#[test]
fn state_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = setup(3_000);
    let root = dir.path();
    let key = root.join("k");
    write_key(&key, &keygen(1));
    // A pipeline with an MQTT-less outbox is not needed: WAL, checkpoints, LOCK and the dirs.
    let out = Command::new("sh")
        .current_dir(root)
        .arg("-c")
        .arg(format!(
            "umask 022 && exec {EDDYD} run --pipeline p.sql --state-dir st --key-file k --checkpoint-interval-ms 15"
        ))
        .env("EDDY_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = 0;
    let mut stack = vec![root.join("st")];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "only {seen} files checked");
}

/// An emptied wal/ restarted LSNs at 0 below the checkpoint's, and a later recovery from that
/// checkpoint skipped every new record. It is refused, naming both, and the way out.
#[test]
fn a_log_that_does_not_reach_the_checkpoint_is_refused() {
    let dir = setup(3_000);
    let root = dir.path();
    let out = run_cmd(root, "st", None).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wal = root.join("st/p/wal");
    std::fs::remove_dir_all(&wal).unwrap();
    std::fs::create_dir(&wal).unwrap();
    let e = stderr_of(run_cmd(root, "st", None));
    assert!(e.contains("records are missing") && e.contains("checkpoint"), "{e}");
    assert!(e.contains("eddyd state check") && e.contains("eddyd state reset"), "{e}");
}

/// The operator's way out: `state check` says what is intact (exit 0) or names the damage
/// (exit 1); `state reset` says what it discards and needs --yes; then the pipeline starts afresh.
#[test]
fn state_check_and_reset_as_an_operator_uses_them() {
    let dir = setup(20_000);
    let root = dir.path();
    let key = root.join("k");
    write_key(&key, &keygen(1));
    let out = run_cmd(root, "st", Some(&key)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let check =
        || Command::new(EDDYD).current_dir(root).args(["state", "check", "st", "--key-file", "k"]).output().unwrap();
    let ok = check();
    let text = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{text}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(
        text.contains("pipeline p")
            && text.contains("wal: intact")
            && text.contains("checkpoint")
            && text.contains("state: intact"),
        "{text}"
    );
    assert!(text.contains("key id(s) [1]"), "{text}");
    // Damage the newest state file in its middle: check names it and exits 1.
    let mut states: Vec<PathBuf> = files_under(&root.join("st/p/checkpoints"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".dat"))
        .collect();
    states.sort();
    let victim = states.last().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let bad = check();
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DAMAGED") && text.contains(&victim.file_name().unwrap().to_string_lossy().to_string()),
        "{text}"
    );
    // Damage the WAL too: eddyd run refuses and names the way out.
    let seg = files_under(&root.join("st/p/wal")).into_iter().next().unwrap();
    let mut w = std::fs::read(&seg).unwrap();
    w[10] ^= 0xff; // inside the segment header
    std::fs::write(&seg, &w).unwrap();
    let e = stderr_of(run_cmd(root, "st", Some(&key)));
    assert!(e.contains("eddyd state check") && e.contains("eddyd state reset"), "{e}");
    // Reset: without --yes nothing goes; with it the pipeline's state is gone and it starts afresh.
    let e = stderr_of({
        let mut c = Command::new(EDDYD);
        c.current_dir(root).args(["state", "reset", "--state-dir", "st", "--pipeline", "p"]);
        c
    });
    assert!(e.contains("--yes"), "{e}");
    assert!(root.join("st/p/wal").exists());
    let out = Command::new(EDDYD)
        .current_dir(root)
        .args(["state", "reset", "--state-dir", "st", "--pipeline", "p", "--yes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("discarding") && text.contains("wal/"), "{text}");
    assert!(!root.join("st/p").exists());
    let _ = std::fs::remove_dir_all(root.join("out"));
    let out = run_cmd(root, "st", Some(&key)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = expected(root);
    for (i, s) in SINKS.iter().enumerate() {
        assert_eq!(sorted_lines(&root.join(format!("out/{s}.jsonl"))), want[i], "sink {s} after a reset");
    }
}

/// Two pipelines with the same SQL text have equal fingerprints; their state files used to be
/// accepted by each other. Files are bound to the pipeline's name: swapped state is refused.
#[test]
fn state_swapped_between_pipelines_with_the_same_sql_is_refused() {
    let dir = setup(3_000);
    let root = dir.path();
    let key = root.join("k");
    write_key(&key, &keygen(1));
    std::fs::write(root.join("q.sql"), PIPELINE.replace("out/", "out-q/")).unwrap();
    for p in ["p.sql", "q.sql"] {
        let out = Command::new(EDDYD)
            .current_dir(root)
            .args(["run", "--pipeline", p, "--state-dir", "st", "--key-file", "k", "--checkpoint-interval-ms", "15"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(root.join("st/p"), root.join("st/tmp")).unwrap();
    std::fs::rename(root.join("st/q"), root.join("st/p")).unwrap();
    let e = stderr_of(run_cmd(root, "st", Some(&key)));
    assert!(e.contains("belongs to another pipeline"), "{e}");
}

/// A sink file that lost committed output while eddyd was stopped used to be zero-filled back to
/// its committed length. It is refused, naming the file and both lengths.
#[test]
fn a_sink_file_shorter_than_its_committed_output_is_refused() {
    // Long enough for several checkpoints: the last one's staged output is rolled forward at
    // restore, what came before it must be in the file.
    let dir = setup(40_000);
    let root = dir.path();
    let out = run_cmd(root, "st", None).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sink = root.join("out/raw.jsonl");
    assert!(std::fs::metadata(&sink).unwrap().len() > 0, "the sink got no committed output to test with");
    std::fs::write(&sink, b"").unwrap();
    let e = stderr_of(run_cmd(root, "st", None));
    assert!(e.contains("raw.jsonl") && e.contains("holds 0 bytes") && e.contains("were published"), "{e}");
}

/// A clean session makes the broker forget what it holds for eddyd at every reconnect: with
/// durable state (exactly-once input) that is refused when the pipeline is planned.
#[test]
fn clean_session_with_durable_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("m.sql"),
        "CREATE SOURCE s (v VARCHAR) WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', topic = 't', clean_session = 'true');\n\
         CREATE SINK o AS SELECT v FROM s WITH (connector = 'file', path = 'o.jsonl');\n",
    )
    .unwrap();
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(root).args(["run", "--pipeline", "m.sql", "--state-dir", "st", "--no-encryption"]);
    let e = stderr_of(cmd);
    assert!(e.contains("clean_session") && e.contains("durable state"), "{e}");
}
