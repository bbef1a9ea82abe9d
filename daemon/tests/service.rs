//! `eddyd run` as systemd runs it: sd_notify datagrams in order (READY, WATCHDOG, RELOADING,
//! STOPPING), SIGHUP reloads of a pipelines directory, `eddyd check --config`, and the metrics
//! endpoint's health checks. No broker needed: the pipelines read generated data.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn pipeline(window_s: u32, out: &str) -> String {
    format!(
        r#"
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'datagen', shape = 'iot', devices = '3', rate = '2000', interval = '100ms', seed = '3');

CREATE SINK counts AS
SELECT device_id, window_start, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '{window_s}' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = '{out}');
"#
    )
}

/// `eddyd run --config cfg` in `dir`, logging at info to `dir/eddyd.log` (appended).
fn start(dir: &Path, cfg: &Path) -> Daemon {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("eddyd.log")).unwrap();
    let child = Command::new(EDDYD)
        .args(["--log", "info", "run", "--config"])
        .arg(cfg)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon(child)
}

fn write_config(dir: &Path, metrics_port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let cfg = format!(
        "state_dir = \"state\"\npipelines_dir = \"pipelines\"\n[encryption]\nenabled = false\n[checkpoint]\ninterval_ms = 200\n[api]\nsocket = \"ctl.sock\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let p = dir.join("eddyd.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// Collects sd_notify datagrams until `until` holds for the list or `limit` passes.
fn notes_until(
    sock: &UnixDatagram,
    notes: &mut Vec<String>,
    until: impl Fn(&[String]) -> bool,
    limit: Duration,
) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        if until(notes) {
            return true;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            notes.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
        }
    }
    until(notes)
}

fn pos(notes: &[String], what: &str, after: usize) -> Option<usize> {
    notes.iter().skip(after).position(|n| n == what).map(|p| p + after)
}

#[test]
fn notify_socket_sees_ready_watchdog_reloading_and_stopping_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let metrics_port = free_port();
    let cfg = write_config(dir, metrics_port);
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a.jsonl")).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let log = std::fs::File::create(dir.join("eddyd.log")).unwrap();
    let mut child = Command::new(EDDYD)
        .args(["--log", "info", "run", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut notes = Vec::new();
    let ok = notes_until(
        &sock,
        &mut notes,
        |n| pos(n, "READY=1", 0).is_some_and(|r| pos(n, "WATCHDOG=1", r).is_some()),
        Duration::from_secs(20),
    );
    assert!(ok, "no READY=1 then WATCHDOG=1: {notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("STATUS=") && n.contains("pipelines running")), "{notes:?}");
    assert_eq!(http_get(metrics_port, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(metrics_port, "/healthz").map(|r| r.0), Some(200));
    let metrics = http_get(metrics_port, "/metrics").unwrap().1;
    assert!(metrics.contains("eddy_source_rows_total{pipeline=\"a\",source=\"readings\"}"), "{metrics}");

    signal(child.id(), "HUP");
    let after = notes.len();
    let ok = notes_until(
        &sock,
        &mut notes,
        |n| pos(n, "RELOADING=1", after).is_some_and(|r| pos(n, "READY=1", r).is_some()),
        Duration::from_secs(20),
    );
    assert!(ok, "no RELOADING=1 then READY=1 after SIGHUP: {notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("MONOTONIC_USEC=")), "{notes:?}");

    signal(child.id(), "TERM");
    let after = notes.len();
    let ok = notes_until(&sock, &mut notes, |n| pos(n, "STOPPING=1", after).is_some(), Duration::from_secs(20));
    assert!(ok, "no STOPPING=1 after SIGTERM: {notes:?}");
    assert!(child.wait().unwrap().success());
    // In order: READY, WATCHDOG, ..., STOPPING last of the three.
    let ready = pos(&notes, "READY=1", 0).unwrap();
    let dog = pos(&notes, "WATCHDOG=1", ready).unwrap();
    let stop = pos(&notes, "STOPPING=1", dog).unwrap();
    assert!(ready < dog && dog < stop);
}

fn log_has(dir: &Path, what: &str) -> bool {
    std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default().contains(what)
}

fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sighup_keeps_unchanged_restarts_changed_and_refuses_incompatible_pipelines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let metrics_port = free_port();
    let cfg = write_config(dir, metrics_port);
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a.jsonl")).unwrap();
    std::fs::write(dir.join("pipelines/keep.sql"), pipeline(1, "out/keep.jsonl")).unwrap();
    let mut d = start(dir, &cfg);
    assert!(wait_for(|| rows(&dir.join("pipelines/out/a.jsonl")).len() >= 6, Duration::from_secs(20)), "no output");

    // A sink option changes (state-compatible): it restarts from its checkpoint; `keep` goes on.
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a2.jsonl")).unwrap();
    std::fs::write(dir.join("pipelines/b.sql"), pipeline(2, "out/b.jsonl")).unwrap();
    signal(d.0.id(), "HUP");
    assert!(wait_for(|| log_has(dir, "restarted from its checkpoint"), Duration::from_secs(20)));
    assert!(wait_for(
        || rows(&dir.join("pipelines/out/a2.jsonl")).len() >= 3 && rows(&dir.join("pipelines/out/b.jsonl")).len() >= 3,
        Duration::from_secs(20)
    ));
    // The restarted pipeline continued its windows: none of a2's windows repeats one of a's.
    let before: std::collections::HashSet<String> = rows(&dir.join("pipelines/out/a.jsonl"))
        .iter()
        .map(|r| format!("{}{}", r["device_id"], r["window_start"]))
        .collect();
    let after = rows(&dir.join("pipelines/out/a2.jsonl"));
    assert!(
        after.iter().all(|r| !before.contains(&format!("{}{}", r["device_id"], r["window_start"]))),
        "windows repeated after the restart"
    );
    assert!(!log_has(dir, "pipeline stopped pipeline=\"keep\""), "an unchanged pipeline was restarted");

    // The query changes (its state does not fit): reported, the previous version runs on.
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(5, "out/a3.jsonl")).unwrap();
    signal(d.0.id(), "HUP");
    assert!(
        wait_for(|| log_has(dir, "the previous version runs on"), Duration::from_secs(20)),
        "{}",
        std::fs::read_to_string(dir.join("eddyd.log")).unwrap()
    );
    let n = rows(&dir.join("pipelines/out/a2.jsonl")).len();
    assert!(
        wait_for(|| rows(&dir.join("pipelines/out/a2.jsonl")).len() > n, Duration::from_secs(20)),
        "the previous version does not run"
    );
    assert_eq!(http_get(metrics_port, "/healthz").map(|r| r.0), Some(200));
    signal(d.0.id(), "TERM");
    assert!(d.0.wait().unwrap().success());
}

#[test]
fn check_config_validates_everything_without_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = write_config(dir, free_port());
    std::fs::write(
        dir.join("pipelines/m.sql"),
        "CREATE SOURCE s (a INT) WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', topic = 'x/#');\nCREATE SINK k AS SELECT a FROM s WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', topic = 'y/{a}');\n",
    )
    .unwrap();
    let check =
        |cfg: &Path| Command::new(EDDYD).args(["check", "--config"]).arg(cfg).current_dir(dir).output().unwrap();
    let out = check(&cfg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipeline m"));
    assert!(!dir.join("state").exists(), "check must not create state");
    // Each mistake is named.
    for (sql, want) in [
        ("CREATE SOURCE s (a INT) WITH (connector = 'mqtt', topic = 'x/#');", "needs option 'url'"),
        ("CREATE SOURCE s (a INT) WITH (connector = 'mqtt', url = 'mqtt://h', topic = 'x/#/y');", "topic filter 'x/#/y'"),
        ("CREATE SOURCE s (a INT) WITH (connector = 'mqtt', url = 'mqtt://h', topic = 't', qos = '3');", "'qos' must be one of 0, 1, 2, not '3'"),
        ("CREATE SOURCE s (a INT, t VARCHAR METADATA FROM 'nope') WITH (connector = 'mqtt', url = 'mqtt://h', topic = 't');", "METADATA FROM 'nope'"),
        ("CREATE SOURCE s (a INT) WITH (connector = 'mqtt', url = 'mqtt://h', topic = 't', password = '${EDDY_TEST_UNSET_PW}');", "EDDY_TEST_UNSET_PW"),
        ("CREATE SOURCE s (a INT) WITH (connector = 'mqtt', url = 'mqtt://h', topic = 't');\nCREATE SINK k AS SELECT a FROM s WITH (connector = 'mqtt', url = 'mqtt://h', topic = 'y/{b}');", "'{b}' is not an output column"),
    ] {
        std::fs::write(dir.join("pipelines/m.sql"), sql).unwrap();
        let out = check(&cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{sql}\n→ {err}");
    }
    std::fs::write(dir.join("bad.toml"), "state_dir = 'x'\n[mqtt]\nurl = 1\n").unwrap();
    let out = check(&dir.join("bad.toml"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("url"));
}

/// Keyed state stays with the shard count that wrote it: a restart without `shards` in the config
/// keeps it; an explicit different count is refused, naming both: the pipeline is held (shown,
/// not ready) while eddyd runs on, and runs again once the config is put right and reloaded.
#[test]
fn durable_state_keeps_the_shard_count_it_was_written_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let metrics_port = free_port();
    let cfg = write_config(dir, metrics_port);
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a.jsonl")).unwrap();
    let start = |shards: Option<usize>| {
        let text = match shards {
            Some(n) => format!("shards = {n}\n{base}"),
            None => base.clone(),
        };
        std::fs::write(&cfg, text).unwrap();
        start(dir, &cfg)
    };
    let shards_metric = || metric(metrics_port, "eddy_pipeline_shards{pipeline=\"a\"}");
    let out = dir.join("pipelines/out/a.jsonl");

    let mut d = start(Some(3));
    assert!(
        wait_for(|| shards_metric() == Some(3.0) && rows(&out).len() >= 3, Duration::from_secs(20)),
        "{}",
        std::fs::read_to_string(dir.join("eddyd.log")).unwrap()
    );
    signal(d.0.id(), "TERM");
    assert!(d.0.wait().unwrap().success());

    let n = rows(&out).len();
    let mut d = start(None);
    assert!(
        wait_for(|| shards_metric() == Some(3.0) && rows(&out).len() > n, Duration::from_secs(20)),
        "{}",
        std::fs::read_to_string(dir.join("eddyd.log")).unwrap()
    );
    signal(d.0.id(), "TERM");
    assert!(d.0.wait().unwrap().success());

    let n = rows(&out).len();
    let mut d = start(Some(2));
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap();
    let up = |state: &str| metric(metrics_port, &format!("eddy_pipeline_up{{pipeline=\"a\",state=\"{state}\"}}"));
    assert!(wait_for(|| up("start-failed") == Some(0.0), Duration::from_secs(20)), "{}", log());
    assert!(log_has(dir, "written by 3 shard(s) and this run has 2"), "{}", log());
    assert!(d.0.try_wait().unwrap().is_none(), "eddyd stopped over one pipeline: {}", log());
    assert_eq!(http_get(metrics_port, "/healthz").map(|r| r.0), Some(200), "alive, so the watchdog is fed");
    assert_eq!(http_get(metrics_port, "/readyz").map(|r| r.0), Some(503), "not ready while a pipeline is held");
    // The API answers, and says which pipeline is held and why.
    let o = Command::new(Path::new(EDDYD).with_file_name("eddyctl"))
        .args(["--socket", "ctl.sock", "-o", "json", "status"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &status["pipelines"][0];
    assert_eq!(a["state"], "start-failed", "{status}");
    assert!(a["error"].as_str().unwrap_or_default().contains("this run has 2"), "{status}");
    assert_eq!(rows(&out).len(), n, "a held pipeline wrote output");
    // Put right and reloaded: it runs on its three shards again.
    std::fs::write(&cfg, &base).unwrap();
    signal(d.0.id(), "HUP");
    assert!(wait_for(|| shards_metric() == Some(3.0) && rows(&out).len() > n, Duration::from_secs(20)), "{}", log());
    assert!(wait_for(|| http_get(metrics_port, "/readyz").map(|r| r.0) == Some(200), Duration::from_secs(10)));
    signal(d.0.id(), "TERM");
    assert!(d.0.wait().unwrap().success());
    // Windows went on across the restarts without repeating one.
    let mut seen = std::collections::HashSet::new();
    for r in rows(&out) {
        assert!(seen.insert(format!("{}{}", r["device_id"], r["window_start"])), "window repeated: {r}");
    }
}

/// A reload that stops a pipeline whose final checkpoint fails (here: its checkpoint directory
/// was replaced by a file, so the write fails) is fail-stop: eddyd exits non-zero rather than
/// starting the pipeline again over state it could not make durable.
#[test]
fn a_reload_that_stops_a_failing_pipeline_stops_eddyd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let metrics_port = free_port();
    let cfg = write_config(dir, metrics_port);
    // No periodic checkpoint: the first one after start is the final one the reload takes.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("interval_ms = 200", "interval_ms = 3600000");
    std::fs::write(&cfg, text).unwrap();
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a.jsonl")).unwrap();
    let mut d = start(dir, &cfg);
    assert!(wait_for(|| log_has(dir, "eddyd ready"), Duration::from_secs(20)));
    let ck = dir.join("state/a/checkpoints");
    std::fs::rename(&ck, dir.join("state/a/checkpoints-away")).unwrap();
    std::fs::write(&ck, b"not a directory").unwrap();
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a2.jsonl")).unwrap();
    signal(d.0.id(), "HUP");
    let exited = wait_for(|| d.0.try_wait().unwrap().is_some(), Duration::from_secs(20));
    let text = std::fs::read_to_string(dir.join("eddyd.log")).unwrap();
    assert!(exited, "eddyd went on after a failed final checkpoint: {text}");
    assert!(!d.0.wait().unwrap().success(), "{text}");
    assert!(text.contains("reload stopped a pipeline that had failed"), "{text}");
}

/// One pipeline file that does not start never stops a gateway: the others run, the bad one is
/// held with its error and tried again (reading its file again), so once the file is put right it
/// runs without a reload. With nothing else to run and no API to repair it through, eddyd exits
/// with the error instead.
#[test]
fn a_pipeline_that_does_not_start_is_held_while_the_others_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let metrics_port = free_port();
    let cfg = write_config(dir, metrics_port);
    std::fs::write(dir.join("pipelines/a.sql"), pipeline(1, "out/a.jsonl")).unwrap();
    std::fs::write(dir.join("pipelines/b.sql"), "CREATE SINK oops AS SELEC 1;").unwrap();
    let mut d = start(dir, &cfg);
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    let (out_a, out_b) = (dir.join("pipelines/out/a.jsonl"), dir.join("pipelines/out/b.jsonl"));
    assert!(wait_for(|| rows(&out_a).len() >= 2, Duration::from_secs(20)), "a does not run: {}", log());
    let b_up = |state: &str| metric(metrics_port, &format!("eddy_pipeline_up{{pipeline=\"b\",state=\"{state}\"}}"));
    assert_eq!(b_up("start-failed"), Some(0.0), "{}", log());
    let show_b = || {
        let o = Command::new(Path::new(EDDYD).with_file_name("eddyctl"))
            .args(["--socket", "ctl.sock", "-o", "json", "show", "b"])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"].clone()
    };
    let b = show_b();
    assert!(b["state"] == "start-failed" && b["error"].as_str().unwrap().contains("a SINK needs WITH"), "{b}");
    assert!(log_has(dir, "pipeline did not start") && log_has(dir, "a SINK needs WITH"), "{}", log());
    assert_eq!(http_get(metrics_port, "/readyz").map(|r| r.0), Some(503));

    // Put right: the next retry (10 s after the first attempt) starts it.
    std::fs::write(dir.join("pipelines/b.sql"), pipeline(1, "out/b.jsonl")).unwrap();
    assert!(wait_for(|| rows(&out_b).len() >= 2, Duration::from_secs(40)), "b was not retried: {}", log());
    assert_eq!(b_up("running"), Some(1.0));
    let b = show_b();
    assert!(b["state"] == "running" && b["error"] == "", "the held error outlived it: {b}");
    assert!(log_has(dir, "held pipeline started"), "{}", log());
    assert_eq!(http_get(metrics_port, "/readyz").map(|r| r.0), Some(200));
    signal(d.0.id(), "TERM");
    assert!(d.0.wait().unwrap().success());

    // Nothing else to run and no API: the error, and a non-zero exit.
    std::fs::remove_file(dir.join("pipelines/a.sql")).unwrap();
    std::fs::write(dir.join("pipelines/b.sql"), "CREATE SINK oops AS SELEC 1;").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace("socket = \"ctl.sock\"", "enabled = false");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(EDDYD).args(["run", "--config"]).arg(&cfg).current_dir(dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("eddyd: pipeline") && err.contains("a SINK needs WITH"), "{err}");
}
