//! The management API end to end, as an operator uses it: a real `eddyd run` with durable,
//! encrypted state, driven by the real `eddyctl` over the Unix socket and by `eddy-client` over
//! TCP with mutual TLS (certificates made here with rcgen).

#[path = "support/pki.rs"]
mod pki;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use eddy_client::{v1, Client, Code, Target, Timeouts, TlsFiles};
use pki::Pki;
use support::{wait_for, Daemon, EDDYD};

fn eddyctl_bin() -> PathBuf {
    let p = Path::new(EDDYD).with_file_name("eddyctl");
    assert!(
        p.exists(),
        "{} is not built: `cargo build --release --workspace --bin eddyctl` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A pipeline whose rows flow at once: datagen into a file sink, 1-second windows.
fn plant_sql(rate: u32, agg: &str) -> String {
    format!(
        "CREATE SOURCE readings (device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE,
            ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '0' SECOND)
         WITH (connector = 'datagen', shape = 'iot', devices = '4', rate = '{rate}', seed = '5');
         CREATE SINK per_device AS
         SELECT device_id, window_start, COUNT(*) AS n, {agg}(temp) AS t
         FROM TUMBLE(readings, ts, INTERVAL '1' SECOND) GROUP BY device_id, window_start
         WITH (connector = 'file', path = 'out.jsonl', format = 'json');\n"
    )
}

struct Gateway {
    dir: tempfile::TempDir,
    daemon: Option<Daemon>,
}

impl Gateway {
    fn new(extra_config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let key = Command::new(EDDYD).arg("keygen").output().unwrap();
        std::fs::write(dir.path().join("state.key"), key.stdout).unwrap();
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        std::fs::set_permissions(dir.path().join("state.key"), mode).unwrap();
        std::fs::write(
            dir.path().join("eddyd.toml"),
            format!(
                "state_dir = \"state\"\n[encryption]\nkey_file = \"state.key\"\n[checkpoint]\ninterval_ms = 500\n[api]\nsocket = \"ctl.sock\"\n{extra_config}"
            ),
        )
        .unwrap();
        let mut g = Gateway { dir, daemon: None };
        g.start();
        g
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Starts eddyd and waits until it has tried every pipeline (none listed as starting).
    fn start(&mut self) {
        self.start_answering();
        self.wait_started();
    }

    fn wait_started(&self) {
        let starting =
            |s: serde_json::Value| s["pipelines"].as_array().unwrap().iter().any(|p| p["state"] == "starting");
        let done = wait_for(|| !starting(self.json(&["status"])), Duration::from_secs(30));
        assert!(done, "eddyd did not recover its pipelines: {}", self.log());
    }

    /// Starts eddyd and waits only until its socket answers (pipelines may still be recovering).
    fn start_answering(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("eddyd.log")).unwrap();
        let child = Command::new(EDDYD)
            .args(["run", "--config", "eddyd.toml", "--log", "info"])
            .current_dir(self.dir.path())
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.daemon = Some(Daemon(child));
        let ok = wait_for(|| self.ctl(&["status"]).status.success(), Duration::from_secs(30));
        assert!(ok, "eddyd did not answer on its socket: {}", self.log());
    }

    /// SIGTERM and wait: final checkpoints, socket removed.
    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            support::signal(d.0.id(), "TERM");
            let st = d.0.wait().unwrap();
            assert!(st.success(), "eddyd stopped with {st}: {}", self.log());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("eddyd.log")).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(eddyctl_bin())
            .arg("--socket")
            .arg(self.path("ctl.sock"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// Runs eddyctl, expecting `code`; returns stdout.
    fn ctl_ok(&self, args: &[&str], code: i32) -> String {
        let o = self.ctl(args);
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(code), "eddyctl {args:?}: stdout {out} stderr {err}\nlog: {}", self.log());
        format!("{out}{err}")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&a, 0)).unwrap()
    }

    fn pipeline(&self, name: &str) -> serde_json::Value {
        let s = self.json(&["status"]);
        s["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or_default()
    }

    fn out_lines(&self) -> usize {
        std::fs::read_to_string(self.path("state/control/deployed/out.jsonl")).map_or(0, |s| s.lines().count())
    }
}

#[test]
fn deploy_replace_refuse_pause_delete_over_the_socket() {
    let mut g = Gateway::new("");
    std::fs::write(g.path("plant.sql"), plant_sql(400, "AVG")).unwrap();
    let out = g.ctl_ok(&["check", "plant.sql"], 0);
    assert!(out.contains("OK") && out.contains("sharding"), "{out}");

    // Deploy: rows flow.
    let out = g.ctl_ok(&["deploy", "plant.sql"], 0);
    assert!(out.contains("created"), "{out}");
    assert!(wait_for(|| g.out_lines() > 8, Duration::from_secs(20)), "no output rows: {}", g.log());
    let p = g.pipeline("plant");
    assert_eq!(p["state"], "running");
    assert_eq!(p["origin"], "deployed");
    let sha1 = p["sql_sha256"].as_str().unwrap().to_string();
    // A live tail of the sink: JSON rows as they are produced.
    let out = g.ctl_ok(&["tail", "plant", "per_device", "--rows", "6", "--seconds", "30"], 0);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6, "{out}");
    assert!(rows.iter().all(|r| r["device_id"].is_string() && r["n"].as_u64() > Some(0)), "{out}");
    g.ctl_ok(&["tail", "plant", "nope"], 5);
    // A source's accepted rows.
    let out = g.ctl_ok(&["tail", "plant", "readings", "--source", "--rows", "3"], 0);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r["temp"].is_number() && r["ts"].is_string()), "{out}");
    // A source's undecodable rows: `--errors` alone names a source.
    let noisy =
        plant_sql(400, "AVG").replace("seed = '5'", "seed = '5', error_ratio = '0.2'").replace("out.jsonl", "n.jsonl");
    std::fs::write(g.path("noisy.sql"), noisy).unwrap();
    g.ctl_ok(&["deploy", "noisy.sql"], 0);
    let out = g.ctl_ok(&["tail", "noisy", "readings", "--errors", "--rows", "2", "--seconds", "30"], 0);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|r| r["error"].is_string() && r["raw"].is_string()), "{out}");
    g.ctl_ok(&["delete", "noisy", "--drop-state"], 0);
    // A reader that went away (`eddyctl show plant | head -1`) ends eddyctl quietly, by SIGPIPE
    // as any Unix tool, never a panic.
    let mut child = Command::new(eddyctl_bin())
        .arg("--socket")
        .arg(g.path("ctl.sock"))
        .args(["show", "plant"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(o.status.signal() == Some(13) && err.is_empty(), "{:?}: {err}", o.status);

    // Replace with other connector options: the plan allows keeping the state.
    std::fs::write(g.path("plant.sql"), plant_sql(600, "AVG")).unwrap();
    let r = g.json(&["deploy", "plant.sql"]);
    assert_eq!(r["outcome"], "replaced");
    assert_eq!(r["state_kept"], true);
    let sha2 = g.pipeline("plant")["sql_sha256"].as_str().unwrap().to_string();
    assert_ne!(sha1, sha2);

    // A bad deploy (a syntax error) is refused; the running version runs on.
    std::fs::write(g.path("bad.sql"), "CREATE SINK oops AS SELEC 1").unwrap();
    let out = g.ctl_ok(&["deploy", "bad.sql", "--name", "plant"], 6);
    assert!(out.to_lowercase().contains("sql") || out.contains("line"), "{out}");
    let out = g.ctl_ok(&["check", "bad.sql"], 6);
    assert!(out.contains("bad.sql"), "{out}");
    // A changed query cannot continue from the old state: refused unless asked to reset.
    std::fs::write(g.path("plant.sql"), plant_sql(600, "MAX")).unwrap();
    let out = g.ctl_ok(&["deploy", "plant.sql"], 6);
    assert!(out.contains("previous version runs on") && out.contains("--reset-state"), "{out}");
    let p = g.pipeline("plant");
    assert_eq!((p["state"].as_str(), p["sql_sha256"].as_str()), (Some("running"), Some(sha2.as_str())));
    let before = g.out_lines();
    assert!(wait_for(|| g.out_lines() > before + 4, Duration::from_secs(20)), "the old version stopped");

    // Checkpoint on demand, pause (survives a restart), resume.
    let out = g.ctl_ok(&["checkpoint", "plant"], 0);
    assert!(out.contains("durable"), "{out}");
    g.ctl_ok(&["pause", "plant"], 0);
    assert_eq!(g.pipeline("plant")["state"], "paused");
    let paused_at = g.out_lines();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(g.out_lines(), paused_at, "a paused pipeline wrote output");
    g.stop();
    g.start();
    assert_eq!(g.pipeline("plant")["state"], "paused", "paused is kept across restarts");
    // A deploy of the SQL it has changes nothing (before, it was refused for being paused, and
    // so was a fleet version that changed only other pipelines); other SQL is refused.
    std::fs::write(g.path("same.sql"), plant_sql(600, "AVG")).unwrap();
    let out = g.ctl_ok(&["deploy", "same.sql", "--name", "plant"], 0);
    assert!(out.contains("already runs this SQL"), "{out}");
    assert_eq!(g.pipeline("plant")["state"], "paused");
    let out = g.ctl_ok(&["deploy", "plant.sql"], 6);
    assert!(out.contains("is paused; resume or delete it first"), "{out}");
    g.ctl_ok(&["resume", "plant"], 0);
    assert!(wait_for(|| g.out_lines() > paused_at + 4, Duration::from_secs(20)), "no rows after resume");

    // Not found, a file pipeline's delete, a delete that does not say what to do with state.
    g.ctl_ok(&["pause", "nope"], 5);
    let out = g.ctl_ok(&["delete", "plant"], 2);
    assert!(out.contains("--keep-state|--drop-state"), "{out}");
    // Delete, dropping the state.
    g.ctl_ok(&["delete", "plant", "--drop-state"], 0);
    assert!(!g.path("state/plant").exists(), "the state was not dropped");
    assert!(!g.path("state/control/deployed/plant.sql").exists());
    assert_eq!(g.json(&["pipelines"])["pipelines"].as_array().map_or(0, |a| a.len()), 0);

    // Every mutating call is in the audit log, and the chain verifies.
    let a = g.json(&["audit", "--limit", "100"]);
    assert_eq!(a["chain_ok"], true, "{a}");
    let methods: Vec<&str> = a["entries"].as_array().unwrap().iter().map(|e| e["method"].as_str().unwrap()).collect();
    for m in ["Deploy", "Checkpoint", "Pause", "Resume", "Delete"] {
        assert!(methods.contains(&m), "{m} not audited: {methods:?}");
    }
    assert!(a["entries"].as_array().unwrap().iter().any(|e| e["outcome"].as_str().unwrap().starts_with("failed:")));
    g.stop();
}

/// A deployed pipeline that no longer starts (here: the config now asks for another shard count
/// than its state was written with) is held, and the gateway stays reachable, so it is repaired
/// remotely: a deploy with --reset-state replaces it.
#[test]
fn a_deployed_pipeline_that_does_not_start_is_held_and_repaired_by_a_deploy() {
    let mut g = Gateway::new("");
    std::fs::write(g.path("plant.sql"), plant_sql(400, "AVG")).unwrap();
    g.ctl_ok(&["deploy", "plant.sql"], 0);
    assert!(wait_for(|| g.out_lines() > 4, Duration::from_secs(20)), "no output rows: {}", g.log());
    let written = g.pipeline("plant")["shards"].as_u64().unwrap();
    g.stop();
    let cfg = std::fs::read_to_string(g.path("eddyd.toml")).unwrap();
    std::fs::write(g.path("eddyd.toml"), format!("shards = {}\n{cfg}", written % 2 + 1)).unwrap();
    // While eddyd recovers, its status already lists the pipeline (before, it was absent until
    // every pipeline had been tried).
    g.start_answering();
    let p = g.pipeline("plant");
    assert!(p["state"] == "starting" || p["state"] == "start-failed", "{p}");
    assert_eq!(p["origin"], "deployed", "{p}");
    g.wait_started();
    let p = g.pipeline("plant");
    assert_eq!(p["state"], "start-failed", "{p}");
    let status = g.json(&["status"]);
    assert_eq!(status["ready"], false, "ready with a pipeline held (/readyz says not): {status}");
    assert!(g.ctl_ok(&["status"], 0).contains("not ready (1 pipeline(s) did not start)"));
    assert!(p["error"].as_str().unwrap().contains("shard(s)"), "{p}");
    let out = g.ctl_ok(&["resume", "plant"], 6);
    assert!(out.contains("stays held"), "{out}");

    let before = g.out_lines();
    let out = g.ctl_ok(&["deploy", "plant.sql", "--reset-state"], 0);
    assert!(out.contains("created"), "{out}");
    assert!(wait_for(|| g.out_lines() > before + 4, Duration::from_secs(20)), "no rows after the deploy");
    let p = g.pipeline("plant");
    assert!(p["state"] == "running" && p["error"] == "", "{p}");
    assert_eq!(g.json(&["status"])["ready"], true);
    g.stop();
}

#[test]
fn a_source_without_event_time_yet_shows_no_watermark_and_no_lag() {
    let g = Gateway::new("");
    let input = g.path("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let sql = format!(
        "CREATE SOURCE r (id VARCHAR NOT NULL, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
         WITH (connector = 'file', path = '{}', format = 'json', follow = 'true');
         CREATE SINK s AS SELECT id, ts FROM r WITH (connector = 'file', path = 'out.jsonl', format = 'json');\n",
        input.display()
    );
    std::fs::write(g.path("idle.sql"), sql).unwrap();
    g.ctl_ok(&["deploy", "idle.sql"], 0);
    let source = |g: &Gateway| g.json(&["show", "idle"])["status"]["sources"][0].clone();
    let r = source(&g);
    assert!(r["watermark_ms"].is_null() && r["lag_ms"].is_null(), "no row yet, yet a watermark: {r}");
    let table = g.ctl_ok(&["status"], 0);
    let row = table.lines().find(|l| l.starts_with("idle")).unwrap_or_default().to_string();
    assert!(row.split_whitespace().any(|c| c == "-") && !row.contains(" d "), "{table}");

    std::fs::write(&input, "{\"id\": \"a\", \"ts\": \"2026-03-01T08:00:10.000Z\"}\n").unwrap();
    assert!(wait_for(|| source(&g)["watermark_ms"].is_i64(), Duration::from_secs(20)), "no watermark: {}", g.log());
    let r = source(&g);
    assert_eq!(r["watermark_ms"], 1_772_352_009_000i64, "{r}");
    assert!(r["lag_ms"].as_i64() > Some(0), "{r}");
}

/// The status names what each connector is known by at its broker, to find its session there:
/// MQTT client ids, which by default end with the pipeline's state identity (the same for its
/// source and sink, and after a restart).
#[test]
fn the_status_names_what_each_connector_is_known_by_at_its_broker() {
    // No broker listens on port 1: the connectors keep trying, named all the same.
    let mut g = Gateway::new("[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nclient_id_prefix = \"gw\"\n");
    std::fs::write(
        g.path("uplink.sql"),
        "CREATE SOURCE readings (device_id VARCHAR NOT NULL) WITH (connector = 'mqtt', topic = 'plant/#');
         CREATE SINK alerts AS SELECT device_id FROM readings WITH (connector = 'mqtt', topic = 'alerts/{device_id}');\n",
    )
    .unwrap();
    g.ctl_ok(&["deploy", "uplink.sql"], 0);
    let names = |g: &Gateway| {
        let st = g.json(&["show", "uplink"])["status"].clone();
        let name = |v: &serde_json::Value| v["connected_as"].as_str().unwrap_or_default().to_string();
        (name(&st["sources"][0]), name(&st["sinks"][0]))
    };
    let named = wait_for(
        || {
            let (source, sink) = names(&g);
            !source.is_empty() && !sink.is_empty()
        },
        Duration::from_secs(20),
    );
    assert!(named, "{:?}: {}", names(&g), g.log());
    let (source, sink) = names(&g);
    let tag = source.strip_prefix("gw-uplink-readings-").unwrap_or_default().to_string();
    assert!(tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{source}");
    assert_eq!(sink, format!("gw-uplink-alerts-{tag}"));
    let table = g.ctl_ok(&["show", "uplink"], 0);
    assert!(table.contains("CONNECTED AS") && table.contains(&source) && table.contains(&sink), "{table}");

    g.stop();
    g.start();
    assert!(wait_for(|| names(&g) == (source.clone(), sink.clone()), Duration::from_secs(20)), "{:?}", names(&g));
}

/// A deleted pipeline's connectors leave `/metrics` with it: before, their series stayed until
/// eddyd restarted (an MQTT source's `connected 0` kept alerting for a pipeline long gone).
#[test]
fn a_deleted_pipeline_leaves_no_connector_series() {
    let port = support::free_port();
    let g = Gateway::new(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    // No broker listens on port 1: the source keeps trying, its gauges registered.
    std::fs::write(
        g.path("uplink.sql"),
        "CREATE SOURCE readings (device_id VARCHAR NOT NULL, ts TIMESTAMP(3) NOT NULL,
            WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
         WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', topic = 'plant/#');
         CREATE SINK s AS SELECT * FROM readings WITH (connector = 'file', path = 'out.jsonl', format = 'json');\n",
    )
    .unwrap();
    g.ctl_ok(&["deploy", "uplink.sql"], 0);
    let series = || {
        support::http_get(port, "/metrics")
            .map(|(_, body)| body.lines().filter(|l| l.contains("pipeline=\"uplink\"")).count())
            .unwrap_or(0)
    };
    let connected = "eddy_mqtt_connected{pipeline=\"uplink\",source=\"readings\"}";
    assert!(
        wait_for(|| support::metric(port, connected) == Some(0.0), Duration::from_secs(20)),
        "no connector gauge: {:?}",
        support::http_get(port, "/metrics")
    );
    g.ctl_ok(&["delete", "uplink", "--drop-state"], 0);
    assert_eq!(series(), 0, "{:?}", support::http_get(port, "/metrics"));
}

#[test]
fn a_tampered_audit_log_is_detected_by_eddyctl_audit() {
    let mut g = Gateway::new("");
    std::fs::write(g.path("plant.sql"), plant_sql(100, "AVG")).unwrap();
    g.ctl_ok(&["deploy", "plant.sql"], 0);
    for _ in 0..3 {
        g.ctl_ok(&["checkpoint", "plant"], 0);
    }
    let out = g.ctl_ok(&["audit"], 0);
    assert!(out.contains("chain verified over all 4 entries"), "{out}");
    g.stop();
    // Cut the second entry out of the file (frames: u32 length, u32 CRC, body).
    let path = g.path("state/audit/audit.log");
    let bytes = std::fs::read(&path).unwrap();
    let frame_end = |at: usize| at + 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (second, third) = (frame_end(0), frame_end(frame_end(0)));
    let mut cut = bytes[..second].to_vec();
    cut.extend_from_slice(&bytes[third..]);
    std::fs::write(&path, cut).unwrap();
    g.start();
    let out = g.ctl_ok(&["audit"], 1);
    assert!(out.contains("CHAIN BROKEN") && out.contains("missing"), "{out}");
    g.stop();
}

async fn tls_client(addr: &str, ca: &Path, cert: &Path, key: &Path) -> Result<Client, eddy_client::ClientError> {
    let files = TlsFiles {
        ca: ca.to_path_buf(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        server_name: Some("localhost".into()),
    };
    let t = Timeouts { read_retries: 0, ..Timeouts::default() };
    Client::connect(&Target::Tls { address: addr.to_string(), files }, t).await
}

/// The call's status code, whether the failure came at connect time or on the call.
async fn status_code(addr: &str, ca: &Path, cert: &Path, key: &Path) -> Code {
    match tls_client(addr, ca, cert, key).await {
        Err(e) => e.code(),
        Ok(c) => match c.status(v1::StatusRequest {}).await {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        },
    }
}

#[test]
fn mutual_tls_roles_and_denials_are_enforced_and_audited() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path(), "gw");
    let rogue = Pki::new(certs.path(), "rogue");
    let (server_cert, server_key) = pki.issue("gateway", &["localhost", "127.0.0.1"], false);
    let (viewer_c, viewer_k) = pki.issue("dashboard", &["dashboard.ops.example"], false);
    let (op_c, op_k) = pki.issue("ops-laptop", &["ops-laptop.ops.example"], false);
    let (old_c, old_k) = pki.issue("old-laptop", &["ops-laptop.ops.example"], true);
    let (rogue_c, rogue_k) = rogue.issue("intruder", &["ops-laptop.ops.example"], false);
    let ca = certs.path().join("gw-ca.pem");
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let g = Gateway::new(&format!(
        "listen = \"{addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n\
         [[access.grant]]\nprincipals = [\"cert:dashboard.ops.example\"]\nrole = \"viewer\"\n\
         [[access.grant]]\nprincipals = [\"cert:ops-laptop.ops.example\"]\nrole = \"operator\"\npipelines = [\"line-*\"]\n",
        server_cert.display(),
        server_key.display(),
        ca.display()
    ));
    std::fs::write(g.path("line-1.sql"), plant_sql(100, "AVG")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The viewer reads; it may not deploy.
        let viewer = tls_client(&addr, &ca, &viewer_c, &viewer_k).await.unwrap();
        let who = viewer.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
        assert_eq!((who.principal.as_str(), who.role.as_str()), ("cert:dashboard.ops.example", "viewer"));
        assert!(viewer.status(v1::StatusRequest {}).await.unwrap().ready);
        let sql = std::fs::read_to_string(g.path("line-1.sql")).unwrap();
        let e = viewer
            .deploy(v1::DeployRequest { name: "line-1".into(), sql: sql.clone(), reset_state: false })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        // The operator deploys within its scope only.
        let op = tls_client(&addr, &ca, &op_c, &op_k).await.unwrap();
        let e = op
            .deploy(v1::DeployRequest { name: "boiler".into(), sql: sql.clone(), reset_state: false })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        let r = op.deploy(v1::DeployRequest { name: "line-1".into(), sql, reset_state: false }).await.unwrap();
        assert_eq!(r.outcome, "created");
        // ...and may not delete (admin).
        let e = op.delete(v1::DeleteRequest { name: "line-1".into(), drop_state: true }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        // An unknown CA, an expired certificate: the handshake fails, nothing is served.
        assert_eq!(status_code(&addr, &ca, &rogue_c, &rogue_k).await, Code::Unavailable);
        assert_eq!(status_code(&addr, &ca, &old_c, &old_k).await, Code::Unavailable);
        // No client certificate at all.
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()))
            .domain_name("localhost");
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
        let r = match ch.connect().await {
            Err(_) => Code::Unavailable,
            Ok(ch) => match v1::control_client::ControlClient::new(ch).status(v1::StatusRequest {}).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            },
        };
        // A raw tonic client sees the refusal as a transport error, with a code that depends on
        // when the connection closed (eddy-client says Unavailable whenever).
        assert!(matches!(r, Code::Unavailable | Code::Unknown | Code::Cancelled), "{r:?}");
    });
    // Nothing changed beyond the one allowed deploy; every denial is audited.
    let p = g.json(&["pipelines"]);
    let names: Vec<&str> = p["pipelines"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["line-1"]);
    // A refused handshake is audited by its own task after the connection closes (the client
    // does not wait for it), so the entries may lag the clients' errors: read until they are in.
    let denied_in = |entries: &[serde_json::Value], method: &str, principal: &str| {
        entries
            .iter()
            .filter(|e| {
                e["method"] == method
                    && e["principal"].as_str().unwrap().contains(principal)
                    && e["outcome"].as_str().unwrap().starts_with("denied")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let a = loop {
        let a = g.json(&["audit", "--limit", "100"]);
        let n = denied_in(a["entries"].as_array().unwrap(), "tls-handshake", "unknown");
        if n >= 3 || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(a["chain_ok"], true);
    let entries = a["entries"].as_array().unwrap();
    let denied = |method: &str, principal: &str| denied_in(entries, method, principal);
    assert_eq!(denied("Deploy", "dashboard"), 1, "{entries:?}");
    assert_eq!(denied("Deploy", "ops-laptop"), 1, "{entries:?}");
    assert_eq!(denied("Delete", "ops-laptop"), 1, "{entries:?}");
    assert!(denied("tls-handshake", "unknown") >= 3, "{entries:?}");

    // A reload applies changed grants to the next call.
    let cfg = std::fs::read_to_string(g.path("eddyd.toml")).unwrap().replace(
        "principals = [\"cert:dashboard.ops.example\"]\nrole = \"viewer\"",
        "principals = [\"cert:dashboard.ops.example\"]\nrole = \"admin\"",
    );
    std::fs::write(g.path("eddyd.toml"), cfg).unwrap();
    g.ctl_ok(&["reload"], 0);
    rt.block_on(async {
        let dash = tls_client(&addr, &ca, &viewer_c, &viewer_k).await.unwrap();
        assert_eq!(dash.who_am_i(v1::WhoAmIRequest {}).await.unwrap().role, "admin");
        dash.delete(v1::DeleteRequest { name: "line-1".into(), drop_state: true }).await.unwrap();
    });
}

#[test]
fn tcp_without_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.sql"), plant_sql(10, "AVG")).unwrap();
    std::fs::write(
        dir.path().join("eddyd.toml"),
        "pipelines = [\"p.sql\"]\n[api]\nsocket = \"ctl.sock\"\nlisten = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let out = Command::new(EDDYD).args(["run", "--config", "eddyd.toml"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mutual TLS"), "{err}");
    // `eddyd check --config` says so without starting.
    let out = Command::new(EDDYD).args(["check", "--config", "eddyd.toml"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("mutual TLS"));
    // Plaintext is allowed only on loopback, and only when said so.
    std::fs::write(
        dir.path().join("eddyd.toml"),
        "pipelines = [\"p.sql\"]\n[api]\nsocket = \"ctl.sock\"\nlisten = \"0.0.0.0:0\"\nallow_plaintext_loopback = true\n",
    )
    .unwrap();
    let out = Command::new(EDDYD).args(["run", "--config", "eddyd.toml"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

/// A pipeline with an updating view (counts per device), a windowed view (per second) and an
/// append-only view (hot readings), fed by datagen.
fn views_sql(view: &str) -> String {
    format!(
        "CREATE SOURCE readings (device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE,
            ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '0' SECOND)
         WITH (connector = 'datagen', shape = 'iot', devices = '4', rate = '200', seed = '5');
         CREATE MATERIALIZED VIEW {view} AS
           SELECT device_id, COUNT(*) AS n, MAX(temp) AS hottest FROM readings GROUP BY device_id;
         CREATE MATERIALIZED VIEW per_second AS
           SELECT device_id, window_end, AVG(temp) AS t
           FROM TUMBLE(readings, ts, INTERVAL '1' SECOND) GROUP BY device_id, window_start, window_end;
         CREATE MATERIALIZED VIEW hot AS SELECT device_id, temp FROM readings WHERE temp > 0;
         CREATE SINK s AS SELECT * FROM per_second WITH (connector = 'file', path = 'out.jsonl', format = 'json');\n"
    )
}

/// Each device's count, as `eddyctl query -o json` answers.
fn counts(g: &Gateway) -> Vec<(String, i64)> {
    let r = g.json(&["query", "SELECT device_id, n FROM per_device ORDER BY device_id"]);
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["device_id"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap()))
        .collect()
}

#[test]
fn views_answer_queries_over_the_socket_and_keep_their_rows_across_a_restart() {
    let mut g = Gateway::new("");
    std::fs::write(g.path("plant.sql"), views_sql("per_device")).unwrap();
    g.ctl_ok(&["deploy", "plant.sql"], 0);
    assert!(wait_for(|| counts(&g).len() == 4, Duration::from_secs(20)), "no view rows: {}", g.log());

    // The table: columns in the query's order, a count line.
    let out = g.ctl_ok(&["query", "SELECT device_id, n FROM per_device WHERE n > 0 ORDER BY n DESC LIMIT 2"], 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("device_id") && lines[0].contains('n'), "{out}");
    assert!(lines.len() == 4 && lines[3].starts_with("(2 rows,"), "{out}");

    // The windowed view shows one window: the newest closed one, one row per device at most.
    let r = g.json(&["query", "SELECT device_id, window_end, t FROM per_second"]);
    let rows = r["rows"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() <= 4, "{r}");
    assert!(rows.iter().all(|x| x["window_end"] == rows[0]["window_end"]), "{r}");
    assert_eq!(r["columns"][1]["name"], "window_end");

    // An aggregate over a view, the pipeline found by the view's name.
    let r = g.json(&["query", "SELECT COUNT(*) AS devices, SUM(n) AS readings FROM per_device"]);
    assert_eq!(r["rows"][0]["devices"], 4, "{r}");
    assert_eq!(r["pipeline"], "plant");
    // Over no rows, an aggregate is still one row.
    let r = g.json(&["query", "SELECT COUNT(*) AS c, MAX(temp) AS t FROM hot WHERE temp > 1000"]);
    assert_eq!(r["rows"].as_array().map(|a| a.len()), Some(1), "{r}");
    assert_eq!(r["rows"][0]["c"], 0, "{r}");

    // Arrow IPC, to a file.
    let hot = || g.json(&["query", "SELECT COUNT(*) AS c FROM hot"])["rows"][0]["c"].as_i64().unwrap_or(0);
    assert!(wait_for(|| hot() >= 50, Duration::from_secs(20)), "hot rows: {}", hot());
    g.ctl_ok(&["query", "SELECT * FROM hot", "--rows", "50", "--arrow", "hot.arrows"], 0);
    let f = std::fs::File::open(g.path("hot.arrows")).unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(f, None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 50);

    // What users get wrong gets a clear refusal and its exit code.
    let out = g.ctl_ok(&["query", "SELECT * FROM readings", "-p", "plant"], 6);
    assert!(out.contains("'readings' is a source of pipeline plant; queries read materialized views"), "{out}");
    let out = g.ctl_ok(&["query", "SELECT * FROM nothing_here"], 5);
    assert!(out.contains("no pipeline has a materialized view named nothing_here"), "{out}");
    let out = g.ctl_ok(&["query", "SELECT device_id FROM per_device ORDER BY n"], 6);
    assert!(out.contains("order by a selected column"), "{out}");

    // Two pipelines with a view of one name: the query must say which.
    std::fs::write(g.path("line2.sql"), views_sql("per_device").replace("out.jsonl", "out2.jsonl")).unwrap();
    g.ctl_ok(&["deploy", "line2.sql"], 0);
    let out = g.ctl_ok(&["query", "SELECT * FROM per_device"], 6);
    assert!(out.contains("line2, plant") && out.contains("--pipeline"), "{out}");
    g.ctl_ok(&["query", "SELECT * FROM per_device", "--pipeline", "line2"], 0);
    g.ctl_ok(&["delete", "line2", "--drop-state"], 0);

    // A restart: the view answers from its checkpoint at once, its counts never going back.
    let before = counts(&g);
    g.stop();
    g.start();
    // The API answers while deployed pipelines recover; the view answers once its pipeline runs.
    let answers = || g.ctl(&["query", "SELECT COUNT(*) FROM per_device"]).status.success();
    assert!(wait_for(answers, Duration::from_secs(20)), "{}", g.log());
    let after = counts(&g);
    assert_eq!(after.len(), 4, "the view lost its rows over the restart: {after:?}");
    for ((d0, n0), (d1, n1)) in before.iter().zip(&after) {
        assert!(d0 == d1 && n1 >= n0, "{before:?} then {after:?}");
    }

    // Paused: refused, with the reason.
    g.ctl_ok(&["pause", "plant"], 0);
    let out = g.ctl_ok(&["query", "SELECT * FROM per_device", "-p", "plant"], 6);
    assert!(out.contains("paused"), "{out}");
    g.stop();
    // Nothing on the socket: exit 3, and what to check.
    let out = g.ctl_ok(&["status"], 3);
    assert!(out.contains("cannot reach unix:") && out.contains("is eddyd running"), "{out}");
}
