//! The live commands as a user runs them: `eddyd run` tailing a growing file, `eddyd demo` printing
//! window results, both stopped with a signal.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(mut ok: impl FnMut() -> bool, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills the child if the test fails before stopping it, so no eddyd outlives its test.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `eddyd run --pipeline FILE`, stopped by the test (or by the guard if it fails first).
fn run_pipeline(sql: &std::path::Path) -> Reaper {
    Reaper(
        Command::new(env!("CARGO_BIN_EXE_eddyd"))
            .args(["run", "--pipeline"])
            .arg(sql)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn run_tails_a_growing_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"device_id\":\"a\",\"temp\":30.5,\"ts\":\"2026-03-01T08:00:00Z\"}\n").unwrap();
    std::fs::write(
        dir.path().join("p.sql"),
        "CREATE SOURCE r (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
         WITH (connector = 'file', path = 'in.jsonl', follow = 'true');
         CREATE SINK hot AS SELECT device_id, temp FROM r WHERE temp > 25
         WITH (connector = 'file', path = 'out/hot.jsonl');
         CREATE SINK counts AS SELECT window_start, COUNT(*) AS n FROM TUMBLE(r, ts, INTERVAL '10' SECOND)
         GROUP BY window_start, window_end WITH (connector = 'file', path = 'out/counts.jsonl');",
    )
    .unwrap();
    let mut child = run_pipeline(&dir.path().join("p.sql"));
    let hot = dir.path().join("out/hot.jsonl");
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0);
    assert!(wait_for(|| lines(&hot) == 1, Duration::from_secs(10)), "first row not written");
    // The file grows, a line at a time and with a partial last line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    writeln!(f, "{{\"device_id\":\"b\",\"temp\":20.0,\"ts\":\"2026-03-01T08:00:05Z\"}}").unwrap();
    write!(f, "{{\"device_id\":\"c\",\"temp\":27.0,").unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&hot), 1, "a partial line must wait for its newline");
    writeln!(f, "\"ts\":\"2026-03-01T08:00:12Z\"}}").unwrap();
    f.flush().unwrap();
    assert!(wait_for(|| lines(&hot) == 2, Duration::from_secs(10)), "appended row not written");
    // The first 10-second window closes once event time passes 08:00:11.
    let counts = dir.path().join("out/counts.jsonl");
    assert!(wait_for(|| lines(&counts) == 1, Duration::from_secs(10)), "window did not close");
    assert!(std::fs::read_to_string(&counts).unwrap().contains("\"n\":2"));
    signal(child.0.id(), "-TERM");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "eddyd run exited with {status}");
}

#[test]
fn demo_prints_live_window_results_until_interrupted() {
    let mut child = Reaper(
        Command::new(env!("CARGO_BIN_EXE_eddyd"))
            .arg("demo")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let mut windows = 0;
    while t.elapsed() < Duration::from_secs(30) && windows < 6 {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.starts_with("per_device |") {
                assert!(line.contains("window_start=") && line.contains("avg_temp="), "{line}");
                windows += 1;
            }
        }
    }
    assert!(windows >= 6, "saw {windows} window rows");
    signal(child.0.id(), "-INT");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "eddyd demo exited with {status}");
}

#[test]
fn run_sees_a_reference_table_change_without_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let table = dir.path().join("devices.csv");
    std::fs::write(&input, "{\"device_id\":\"a\",\"ts\":\"2026-03-01T08:00:00Z\"}\n").unwrap();
    std::fs::write(&table, "device_id,site\na,hall-1\n").unwrap();
    std::fs::write(
        dir.path().join("p.sql"),
        "CREATE SOURCE r (device_id VARCHAR NOT NULL, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts)
         WITH (connector = 'file', path = 'in.jsonl', follow = 'true');
         CREATE TABLE devices (device_id VARCHAR PRIMARY KEY, site VARCHAR)
         WITH (connector = 'file', path = 'devices.csv', format = 'csv', reload_interval = '100ms');
         CREATE SINK sited AS SELECT r.device_id, d.site FROM r
         LEFT JOIN devices FOR SYSTEM_TIME AS OF r.ts AS d ON r.device_id = d.device_id
         WITH (connector = 'file', path = 'out/sited.jsonl');",
    )
    .unwrap();
    let mut child = run_pipeline(&dir.path().join("p.sql"));
    let out = dir.path().join("out/sited.jsonl");
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(wait_for(|| text().contains("hall-1"), Duration::from_secs(10)), "first row not enriched: {}", text());
    // The file is replaced (as an operator's deploy would: write, then rename over it).
    std::fs::write(dir.path().join("devices.tmp"), "device_id,site\na,hall-2\nb,hall-3\n").unwrap();
    std::fs::rename(dir.path().join("devices.tmp"), &table).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    writeln!(f, "{{\"device_id\":\"a\",\"ts\":\"2026-03-01T08:00:01Z\"}}").unwrap();
    writeln!(f, "{{\"device_id\":\"b\",\"ts\":\"2026-03-01T08:00:02Z\"}}").unwrap();
    writeln!(f, "{{\"device_id\":\"z\",\"ts\":\"2026-03-01T08:00:03Z\"}}").unwrap();
    f.flush().unwrap();
    assert!(wait_for(|| text().lines().count() == 4, Duration::from_secs(10)), "rows not written: {}", text());
    let lines: Vec<String> = text().lines().map(String::from).collect();
    assert!(lines[1].contains("\"a\"") && lines[1].contains("hall-2"), "{lines:?}");
    assert!(lines[2].contains("\"b\"") && lines[2].contains("hall-3"), "{lines:?}");
    assert!(lines[3].contains("\"z\"") && lines[3].contains("\"site\":null"), "{lines:?}");
    signal(child.0.id(), "-TERM");
    assert!(child.0.wait().unwrap().success());
}
