//! Durable state, tested as users run it: `eddyd run --state-dir` killed with SIGKILL at random
//! moments and restarted must end with sinks holding exactly what `eddyd replay` gives; nothing in
//! the state dir may show row data in plaintext; key mistakes are clear errors.

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
        let dev = if rng.below(50) == 0 { format!("{CANARY}-{}", rng.below(3)) } else { format!("dev-{}", rng.below(12)) };
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
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(dir).args(["run", "--pipeline", "p.sql", "--state-dir", state, "--checkpoint-interval-ms", "15"]);
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

#[test]
fn sigkill_at_random_moments_neither_loses_nor_doubles_rows() {
    let dir = setup(200_000);
    let root = dir.path();
    let want = expected(root);
    assert!(want.iter().all(|w| !w.is_empty()), "every sink has rows to check");
    let key = root.join("state.key");
    write_key(&key, &keygen(1));
    let mut rng = Lcg(2026);
    let (mut kills, mut rounds, mut restarts) = (0, 0, 0);
    let started = Instant::now();
    while kills < 50 {
        rounds += 1;
        let state = format!("state-{rounds}");
        let _ = std::fs::remove_dir_all(root.join("out"));
        loop {
            restarts += 1;
            assert!(restarts < 2000, "no progress after {restarts} restarts");
            let mut child = run_cmd(root, &state, Some(&key)).spawn().unwrap();
            let deadline = Instant::now() + Duration::from_millis(5 + rng.below(150));
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
    eprintln!("{kills} SIGKILLs over {rounds} rounds ({restarts} starts) in {:?}: every sink equal to replay", started.elapsed());
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
        std::thread::sleep(Duration::from_millis(40));
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
