//! MQTT in and out against a real Mosquitto broker, as a gateway runs it: `eddyd run --config`
//! reads telemetry at QoS 1, aggregates per minute and publishes the results over MQTT. What the
//! broker delivers must equal `eddyd replay` over the same messages — also when eddyd is killed
//! with SIGKILL and when the broker restarts mid-stream (every message counted exactly once).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const PIPELINE: &str = r#"
CREATE SOURCE telemetry (
    device_id VARCHAR NOT NULL,
    ts        TIMESTAMP(3) NOT NULL,
    temp      DOUBLE,
    seq       BIGINT,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'mqtt', topic = 'plant/+/telemetry', qos = '1', batch_rows = '64');

CREATE SINK per_min AS
SELECT device_id, window_start, COUNT(*) AS n, SUM(seq) AS seq_sum, MAX(temp) AS max_temp
FROM TUMBLE(telemetry, ts, INTERVAL '60' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'mqtt', topic = 'stats/{device_id}', qos = '1');

CREATE SINK errs AS SELECT raw, error FROM ERRORS(telemetry)
WITH (connector = 'file', path = 'out/errors.jsonl');

CREATE SINK late AS SELECT device_id, seq FROM LATE(telemetry)
WITH (connector = 'file', path = 'out/late.jsonl');
"#;

const T0: i64 = 1_700_000_040_000; // on a minute

fn messages(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{\"device_id\":\"dev-{}\",\"ts\":{},\"temp\":{},\"seq\":{i}}}",
                i % 5,
                T0 + i as i64 * 150,
                (i * 37 % 1000) as f64 / 10.0
            )
        })
        .collect();
    // A reading far ahead closes every window of the data.
    v.push(format!("{{\"device_id\":\"zz\",\"ts\":{},\"temp\":0,\"seq\":0}}", T0 + 10_000_000));
    v
}

/// The config names the broker through `${EDDY_TEST_BROKER_URL}`, set for each eddyd process.
fn config(dir: &Path, metrics_port: u16, protocol: &str, pipeline: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::write(dir.join("pipelines/p.sql"), pipeline).unwrap();
    let key = Command::new(EDDYD).arg("keygen").output().unwrap();
    let key_path = dir.join("state.key");
    std::fs::write(&key_path, &key.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = format!(
        r#"
state_dir = "state"
pipelines_dir = "pipelines"
# Keyed state over 3 shard threads: every test here (kills and broker restarts included) runs sharded.
shards = 3
log_level = "info,eddyd::mqtt::source=debug"

[encryption]
key_file = "state.key"

[checkpoint]
interval_ms = 300

[mqtt]
url = "${{EDDY_TEST_BROKER_URL}}"
protocol = "{protocol}"
client_id_prefix = "gw1"

[metrics]
listen = "127.0.0.1:{metrics_port}"
"#
    );
    let path = dir.join("eddyd.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start_eddyd(dir: &Path, cfg: &Path, broker_url: &str, metrics_port: u16) -> Daemon {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("eddyd.log")).unwrap();
    let child = Command::new(EDDYD)
        .args(["run", "--config"])
        .arg(cfg)
        .current_dir(dir)
        .env("EDDY_TEST_BROKER_URL", broker_url)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let up = wait_for(
        || metric(metrics_port, "eddy_mqtt_connected{pipeline=\"p\",source=\"telemetry\"}") == Some(1.0),
        Duration::from_secs(20),
    );
    assert!(up, "eddyd did not connect: {}", std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default());
    Daemon(child)
}

/// `eddyd replay` over the same messages: (device, window_start) → result row.
fn replay(dir: &Path, msgs: &[String]) -> BTreeMap<(String, String), serde_json::Value> {
    std::fs::write(dir.join("in.jsonl"), msgs.join("\n") + "\n").unwrap();
    let out = Command::new(EDDYD)
        .args([
            "replay",
            "pipelines/p.sql",
            "--input",
            "telemetry=in.jsonl",
            "--output",
            "per_min=replay.jsonl",
            "--output",
            "errs=replay_errs.jsonl",
            "--output",
            "late=replay_late.jsonl",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(dir.join("replay.jsonl")).unwrap();
    keyed(text.lines().map(str::to_string), "replay").into_iter().filter(|((d, _), _)| d != "zz").collect()
}

/// Rows by (device, window_start); a row seen twice (redelivered after a crash) must be the same.
fn keyed(rows: impl Iterator<Item = String>, what: &str) -> BTreeMap<(String, String), serde_json::Value> {
    let mut m = BTreeMap::new();
    for r in rows {
        let v: serde_json::Value = serde_json::from_str(&r).unwrap_or_else(|e| panic!("{what}: {r}: {e}"));
        let k = (v["device_id"].as_str().unwrap().to_string(), v["window_start"].as_str().unwrap().to_string());
        if let Some(prev) = m.insert(k.clone(), v.clone()) {
            assert_eq!(prev, v, "{what}: two different results for {k:?}");
        }
    }
    m
}

fn scenario(faults: bool, protocol: &str) {
    let Some((tmp, mut broker)) = broker_in_tempdir() else { return };
    let dir = tmp.path();
    let metrics_port = free_port();
    let cfg = config(dir, metrics_port, protocol, PIPELINE);
    let url = broker.url();
    let msgs = messages(4000);
    let expected = replay(dir, &msgs);
    assert_eq!(expected.len(), 5 * 10, "the data spans 10 minutes of 5 devices");

    let received = dir.join("received.txt");
    let mut sub = if protocol == "5" {
        Subscriber::start_v5(broker.port, "stats/#", &received)
    } else {
        Subscriber::start(broker.port, "stats/#", &received)
    };
    let mut eddyd = start_eddyd(dir, &cfg, &url, metrics_port);
    let mut rng = 7u64;
    for (k, chunk) in msgs.chunks(500).enumerate() {
        let chunk = chunk.to_vec();
        let port = broker.port;
        let publisher = std::thread::spawn(move || publish_lines(port, "plant/line1/telemetry", &chunk));
        // SIGKILL while each chunk is being published (but the one before the broker restart and
        // the last, which holds only the closing reading).
        if faults && k != 4 && k < 8 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_millis(50 + (rng >> 33) % 400));
            signal(eddyd.0.id(), "KILL");
            let _ = eddyd.0.wait();
            eddyd = start_eddyd(dir, &cfg, &url, metrics_port);
        }
        publisher.join().unwrap();
        if faults && k == 4 {
            // The broker goes away mid-stream and comes back with its persisted sessions.
            broker.restart(Duration::from_millis(700));
            sub.ensure();
        }
    }
    let got = || keyed(sub.messages().into_iter().filter(|(t, _)| t != "stats/zz").map(|(_, p)| p), "published");
    let complete = wait_for(|| got().len() >= expected.len(), Duration::from_secs(90));
    let got = got();
    assert!(
        complete,
        "only {} of {} results arrived; log:\n{}",
        got.len(),
        expected.len(),
        std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default()
    );
    let counters = || {
        http_get(metrics_port, "/metrics")
            .map(|m| {
                m.1.lines().filter(|l| !l.starts_with('#') && !l.contains("bucket")).collect::<Vec<_>>().join("\n")
            })
            .unwrap_or_default()
    };
    for (k, v) in &expected {
        if got.get(k) != Some(v) {
            let _ = std::fs::remove_dir_all("/tmp/eddy-mqtt-failed");
            let _ = Command::new("cp").args(["-r"]).arg(dir).arg("/tmp/eddy-mqtt-failed").status();
        }
        assert_eq!(got.get(k), Some(v), "result for {k:?}; metrics:\n{}", counters());
    }
    assert_eq!(got.len(), expected.len(), "results for windows replay does not have");
    if protocol == "5" {
        // Every message carries its sink and sequence number; a repeat (sent again after a kill
        // or the broker restart) has the pair of its first copy, so dropping repeats by the pair
        // leaves each result exactly once: exactly-once to a consumer that does.
        let mut first: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (topic, props, payload) in sub.tagged() {
            assert!(props.contains("eddy-sink:") && props.contains("eddy-seq:"), "no sequence on {topic}: {props:?}");
            let prev = first.entry(props.clone()).or_insert_with(|| (topic.clone(), payload.clone()));
            assert_eq!(prev, &(topic, payload), "two messages with {props}");
        }
        let results = first.values().filter(|(t, _)| t != "stats/zz").count();
        assert_eq!(results, expected.len(), "results once each after dropping repeats by sequence number");
    }
    // Nothing was dropped and no message was refused as bad.
    assert_eq!(metric(metrics_port, "eddy_mqtt_dropped_total{pipeline=\"p\",sink=\"per_min\"}"), Some(0.0));
    assert_eq!(
        metric(metrics_port, "eddy_pipeline_shards{pipeline=\"p\"}"),
        Some(3.0),
        "the per-device aggregation runs on 3 shards"
    );
    // Relative sink paths resolve against the pipeline file's directory.
    assert_eq!(std::fs::read_to_string(dir.join("pipelines/out/errors.jsonl")).unwrap(), "");
    signal(eddyd.0.id(), "TERM");
    assert!(eddyd.0.wait().unwrap().success(), "eddyd did not stop cleanly on SIGTERM");
}

#[test]
fn per_minute_aggregates_over_mqtt_match_replay() {
    scenario(false, "3.1.1");
}

#[test]
fn no_message_lost_or_doubled_through_sigkill_and_broker_restart() {
    scenario(true, "3.1.1");
}

#[test]
fn mqtt5_no_message_lost_or_doubled_through_sigkill_and_broker_restart() {
    scenario(true, "5");
}

/// Lost acknowledgements, deterministically: a proxy drops eddyd's PUBACKs, so every message it
/// logged is still unacknowledged at the broker when eddyd is killed. After the restart the broker
/// delivers them all again — and once more after the connection drops before those redeliveries
/// are acknowledged. Each must be recognised as already counted, every time.
fn lost_acks_scenario(protocol: &str, qos: &str) {
    let Some((tmp, broker)) = broker_in_tempdir() else { return };
    let dir = tmp.path();
    let proxy = AckLosingProxy::start(broker.port);
    let metrics_port = free_port();
    let pipeline = PIPELINE
        .replace(
            "WITH (connector = 'mqtt', topic = 'stats/{device_id}', qos = '1')",
            "WITH (connector = 'file', path = 'out/per_min.jsonl')",
        )
        .replace("topic = 'plant/+/telemetry', qos = '1'", &format!("topic = 'plant/+/telemetry', qos = '{qos}'"));
    let publish_lines = |port: u16, topic: &str, lines: &[String]| publish_lines_at(port, topic, qos, lines);
    let cfg = config(dir, metrics_port, protocol, &pipeline);
    let msgs = messages(400);
    let expected = replay(dir, &msgs);
    let topic = "plant/line1/telemetry";
    let source = |name: &str| metric(metrics_port, &format!("{name}{{pipeline=\"p\",source=\"telemetry\"}}"));
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();

    let mut eddyd = start_eddyd(dir, &cfg, &proxy.url(), metrics_port);
    // The first message passes normally (and shows the subscription is in place).
    publish_lines(broker.port, topic, &msgs[..1]);
    assert!(wait_for(|| source("eddy_source_rows_total") == Some(1.0), Duration::from_secs(20)), "{}", log());
    proxy.lose_acks(true);
    publish_lines(broker.port, topic, &msgs[1..50]);
    assert!(wait_for(|| source("eddy_source_rows_total") == Some(50.0), Duration::from_secs(20)), "{}", log());
    // A checkpoint after them: their WAL records are durable. One skipped because nothing had
    // changed since the newest counts too: that one covers them already.
    let checkpoints = || {
        ["eddy_checkpoints_total", "eddy_checkpoints_skipped_total"]
            .iter()
            .map(|m| metric(metrics_port, &format!("{m}{{pipeline=\"p\"}}")).unwrap_or(0.0))
            .sum::<f64>()
    };
    let c0 = checkpoints();
    assert!(wait_for(|| checkpoints() > c0, Duration::from_secs(10)));
    signal(eddyd.0.id(), "KILL");
    let _ = eddyd.0.wait();

    eddyd = start_eddyd(dir, &cfg, &proxy.url(), metrics_port);
    assert!(
        wait_for(|| source("eddy_mqtt_duplicates_total") == Some(49.0), Duration::from_secs(20)),
        "redeliveries after the restart: {:?}\n{}",
        source("eddy_mqtt_duplicates_total"),
        log()
    );
    proxy.lose_acks(false);
    proxy.cut();
    assert!(
        wait_for(|| source("eddy_mqtt_duplicates_total") == Some(98.0), Duration::from_secs(20)),
        "redeliveries after the cut: {:?}\n{}",
        source("eddy_mqtt_duplicates_total"),
        log()
    );
    assert_eq!(source("eddy_mqtt_messages_total"), Some(0.0), "no redelivery may count as a new message");
    assert_eq!(source("eddy_source_rows_total"), Some(50.0));

    publish_lines(broker.port, topic, &msgs[50..]);
    let got = || {
        keyed(
            std::fs::read_to_string(dir.join("pipelines/out/per_min.jsonl"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string),
            "sink",
        )
        .into_iter()
        .filter(|((d, _), _)| d != "zz")
        .collect::<BTreeMap<_, _>>()
    };
    assert!(
        wait_for(|| got().len() >= expected.len(), Duration::from_secs(30)),
        "{} of {} results; metrics:\n{}\nlog:\n{}",
        got().len(),
        expected.len(),
        http_get(metrics_port, "/metrics").unwrap_or_default().1,
        log()
    );
    assert_eq!(got(), expected);
    assert_eq!(source("eddy_source_late_rows_total"), Some(0.0));
    signal(eddyd.0.id(), "TERM");
    assert!(eddyd.0.wait().unwrap().success());
}

#[test]
fn redeliveries_of_unacknowledged_messages_count_once() {
    lost_acks_scenario("3.1.1", "1");
}

#[test]
fn mqtt5_redeliveries_of_unacknowledged_messages_count_once() {
    lost_acks_scenario("5", "1");
}

/// QoS 2 end to end (devices publish at QoS 2, the source asks for QoS 2): eddyd killed with
/// deliveries unacknowledged must neither lose nor double them — nor hang on a handshake the
/// broker resumes after the restart.
#[test]
fn qos2_redeliveries_count_once_and_a_resumed_handshake_does_not_hang() {
    lost_acks_scenario("3.1.1", "2");
}

#[test]
fn mqtt5_qos2_redeliveries_count_once_and_a_resumed_handshake_does_not_hang() {
    lost_acks_scenario("5", "2");
}

#[test]
fn bad_payloads_land_in_errors_and_the_pipeline_runs_on() {
    let Some((tmp, mut broker)) = broker_in_tempdir() else { return };
    let dir = tmp.path();
    let metrics_port = free_port();
    let sql = format!(
        r#"
CREATE SOURCE s (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    topic     VARCHAR METADATA FROM 'topic'
) WITH (connector = 'mqtt', url = '{url}', topic = 'dev/#', qos = '1');
CREATE SINK good AS SELECT device_id, temp, topic FROM s WITH (connector = 'file', path = 'good.jsonl');
CREATE SINK bad AS SELECT raw, error FROM ERRORS(s) WITH (connector = 'file', path = 'bad.jsonl');
"#,
        url = broker.url()
    );
    std::fs::write(dir.join("p.sql"), sql).unwrap();
    let eddyd = run_pipeline(dir, metrics_port);
    assert!(wait_for(
        || metric(metrics_port, "eddy_mqtt_connected{pipeline=\"p\",source=\"s\"}") == Some(1.0),
        Duration::from_secs(20)
    ));
    broker.publish("dev/a", b"{\"device_id\":\"a\",\"temp\":1.5}");
    broker.publish("dev/b", b"this is not json");
    broker.publish("dev/c", b"{\"device_id\":\"c\",\"temp\":\"hot\"}");
    broker.publish("dev/d", &[b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']);
    let junk: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    broker.publish("dev/e", &junk);
    broker.publish("dev/f", b"[{\"device_id\":\"f1\",\"temp\":2},{\"device_id\":\"f2\",\"temp\":3}]");
    let good = || std::fs::read_to_string(dir.join("good.jsonl")).unwrap_or_default();
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    assert!(wait_for(|| good().lines().count() == 3, Duration::from_secs(20)), "good rows: {}\nlog: {}", good(), log());
    let bad = std::fs::read_to_string(dir.join("bad.jsonl")).unwrap();
    let errors: Vec<serde_json::Value> = bad.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(errors.len(), 4, "{bad}");
    assert!(errors[0]["error"].as_str().unwrap().contains("not valid JSON"));
    assert!(errors[1]["error"].as_str().unwrap().contains("temp"), "{}", errors[1]);
    assert!(errors[2]["error"].as_str().unwrap().contains("UTF-8"), "{}", errors[2]);
    let raw = errors[3]["raw"].as_str().unwrap();
    assert!(
        raw.chars().count() <= 64 * 1024 + 64,
        "error rows keep a bounded prefix of the payload, not {} chars",
        raw.chars().count()
    );
    let good = good();
    assert!(good.contains("\"topic\":\"dev/a\"") && good.contains("\"device_id\":\"f2\""), "{good}");
    // Metrics are published by the worker about twice a second.
    assert!(wait_for(
        || metric(metrics_port, "eddy_source_error_rows_total{pipeline=\"p\",source=\"s\"}") == Some(4.0),
        Duration::from_secs(5)
    ));
    assert_eq!(metric(metrics_port, "eddy_source_rows_total{pipeline=\"p\",source=\"s\"}"), Some(3.0));
    drop(eddyd);
}

/// Makes a CA, a server certificate for localhost and a client certificate with openssl.
fn make_certs(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=eddy-test-ca",
    ]) && ["server", "client"].iter().all(|who| {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={who}"),
        ]) && run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])
    })
}

#[test]
fn tls_with_a_private_ca_and_client_certificates() {
    if !have_mosquitto() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !make_certs(dir) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "openssl could not make test certificates");
        eprintln!("openssl not usable: skipping");
        return;
    }
    let port = free_port();
    let d = dir.display();
    let conf = format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n");
    std::fs::write(dir.join("tls.conf"), conf).unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let broker = Daemon(Command::new(bin).arg("-c").arg(dir.join("tls.conf")).stderr(Stdio::null()).spawn().unwrap());
    assert!(wait_for(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), Duration::from_secs(10)));
    let sql = format!(
        "CREATE SOURCE s (device_id VARCHAR NOT NULL, temp DOUBLE) WITH (connector = 'mqtt', url = 'mqtts://localhost:{port}', topic = 'dev/#', ca_file = 'ca.pem', cert_file = 'client.pem', key_file = 'client.key');\n\
         CREATE SINK good AS SELECT device_id, temp FROM s WITH (connector = 'file', path = 'good.jsonl');\n"
    );
    std::fs::write(dir.join("p.sql"), sql).unwrap();
    let metrics_port = free_port();
    let eddyd = run_pipeline(dir, metrics_port);
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    assert!(
        wait_for(
            || metric(metrics_port, "eddy_mqtt_connected{pipeline=\"p\",source=\"s\"}") == Some(1.0),
            Duration::from_secs(20)
        ),
        "no TLS connection: {}",
        log()
    );
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "--cafile",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
            "-q",
            "1",
            "-t",
            "dev/x",
            "-m",
            "{\"device_id\":\"x\",\"temp\":4.5}",
        ])
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub over TLS failed");
    let good = || std::fs::read_to_string(dir.join("good.jsonl")).unwrap_or_default();
    assert!(wait_for(|| good().contains("\"device_id\":\"x\""), Duration::from_secs(10)), "{}", log());
    drop(eddyd);
    drop(broker);
}

#[test]
fn a_changed_topic_takes_effect_on_a_resumed_session() {
    let Some((tmp, mut broker)) = broker_in_tempdir() else { return };
    let dir = tmp.path();
    let metrics_port = free_port();
    let sql = |topic: &str| {
        format!(
            "CREATE SOURCE s (device_id VARCHAR NOT NULL) WITH (connector = 'mqtt', url = '{}', topic = '{topic}', client_id = 'same-id');\n\
             CREATE SINK good AS SELECT device_id FROM s WITH (connector = 'file', path = 'good.jsonl');\n",
            broker.url()
        )
    };
    let connected = || {
        wait_for(
            || metric(metrics_port, "eddy_mqtt_connected{pipeline=\"p\",source=\"s\"}") == Some(1.0),
            Duration::from_secs(20),
        )
    };
    std::fs::write(dir.join("p.sql"), sql("a/#")).unwrap();
    let mut first = run_pipeline(dir, metrics_port);
    assert!(connected());
    signal(first.0.id(), "TERM");
    assert!(first.0.wait().unwrap().success());
    std::fs::write(dir.join("p.sql"), sql("b/#")).unwrap();
    let _second = run_pipeline(dir, metrics_port);
    assert!(connected());
    std::thread::sleep(Duration::from_millis(300));
    broker.publish("b/1", b"{\"device_id\":\"from-b\"}");
    let good = || std::fs::read_to_string(dir.join("good.jsonl")).unwrap_or_default();
    assert!(
        wait_for(|| good().contains("from-b"), Duration::from_secs(10)),
        "the new topic was not subscribed: {}",
        std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default()
    );
}

/// Session semantics over a real broker: a retained message counts once — a reconnect to the
/// same session no longer subscribes again (which made the broker resend it, counted twice) —
/// and a broker that lost the persistent session is counted and logged as a warning.
#[test]
fn retained_messages_count_once_and_a_lost_session_is_reported() {
    let Some((tmp, mut broker)) = broker_in_tempdir() else { return };
    let dir = tmp.path();
    let metrics_port = free_port();
    let pipeline = PIPELINE.replace(
        "WITH (connector = 'mqtt', topic = 'stats/{device_id}', qos = '1')",
        "WITH (connector = 'file', path = 'out/per_min.jsonl')",
    );
    let cfg = config(dir, metrics_port, "3.1.1", &pipeline);
    let source = |name: &str| metric(metrics_port, &format!("{name}{{pipeline=\"p\",source=\"telemetry\"}}"));
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    let msgs = messages(1);
    broker.publish_retained("plant/line1/telemetry", &msgs[0]);
    let eddyd = start_eddyd(dir, &cfg, &broker.url(), metrics_port);
    assert!(wait_for(|| source("eddy_source_rows_total") == Some(1.0), Duration::from_secs(20)), "{}", log());
    // The broker restarts with the session kept: eddyd reconnects to it, and the retained
    // message must not come (and count) again.
    broker.restart(Duration::from_millis(200));
    assert!(
        wait_for(|| source("eddy_mqtt_connects_total").is_some_and(|n| n >= 2.0), Duration::from_secs(30)),
        "{}",
        log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(source("eddy_source_rows_total"), Some(1.0), "the retained message was counted again: {}", log());
    assert_eq!(source("eddy_mqtt_sessions_lost_total"), Some(0.0));
    // Now the broker forgets everything: the lost session is counted and said loudly.
    broker.restart_forgetting();
    assert!(wait_for(|| source("eddy_mqtt_sessions_lost_total") == Some(1.0), Duration::from_secs(30)), "{}", log());
    assert!(log().contains("lost the persistent session"), "{}", log());
    drop(eddyd);
}

/// A backlog queued at the broker while eddyd was away drains whole, each message once, through
/// a hand-over queue far smaller than the backlog (the broker floods a returning session).
/// Acknowledgements that outran the client's request queue used to be dropped; at bench scale
/// (`benches/src/bin/mqtt_ingest.rs`, 100k messages, 20 in flight) that stalled the session.
#[test]
fn a_backlog_larger_than_the_queues_drains_whole_and_once() {
    let Some((tmp, mut broker)) = broker_in_tempdir() else { return };
    let dir = tmp.path();
    let metrics_port = free_port();
    let pipeline = format!(
        "CREATE SOURCE telemetry (device_id VARCHAR NOT NULL, seq BIGINT NOT NULL) \
         WITH (connector = 'mqtt', url = '{}', topic = 'backlog/#', queue_messages = '16', client_id = 'backlog');\n\
         CREATE SINK out AS SELECT device_id, seq FROM telemetry WITH (connector = 'file', path = 'out.jsonl');\n",
        broker.url()
    );
    std::fs::write(dir.join("p.sql"), pipeline).unwrap();
    let mut first = run_pipeline(dir, metrics_port);
    let out = || std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    // Subscribed (the session will queue for it) once a probe comes through.
    let subscribed = wait_for(
        || {
            broker.publish("backlog/probe", b"{\"device_id\":\"probe\",\"seq\":-1}");
            std::thread::sleep(Duration::from_millis(200));
            out().contains("probe")
        },
        Duration::from_secs(20),
    );
    assert!(
        subscribed,
        "eddyd never subscribed: {}",
        std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default()
    );
    signal(first.0.id(), "TERM");
    assert!(first.0.wait().unwrap().success());
    let n = 20_000;
    let lines: Vec<String> = (0..n).map(|k| format!("{{\"device_id\":\"d{}\",\"seq\":{k}}}", k % 7)).collect();
    publish_lines(broker.port, "backlog/gw", &lines);
    let _second = run_pipeline(dir, metrics_port);
    let seqs = || -> Vec<i64> {
        out()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_i64())
            .filter(|&s| s >= 0)
            .collect()
    };
    let drained = wait_for(|| seqs().len() >= n, Duration::from_secs(60));
    let got = seqs();
    let distinct: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    assert!(
        drained && got.len() == n && distinct.len() == n,
        "{} rows, {} distinct, of {n}: {}",
        got.len(),
        distinct.len(),
        std::fs::read_to_string(dir.join("eddyd.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Gateways that run a fleet's pipeline from one config on one broker: each has a session of its
/// own (its default client id ends with its state's identity), so each counts every message, and
/// a gateway killed and started again takes its session back, with what was queued for it
/// meanwhile. Before, every gateway connected as `gw1-p-telemetry`: the broker dropped one
/// connection for the other, and each message went to whichever held the session then.
#[test]
fn gateways_with_one_config_on_one_broker_each_keep_a_session_of_their_own() {
    let Some((tmp, broker)) = broker_in_tempdir() else { return };
    let pipeline = "CREATE SOURCE telemetry (device_id VARCHAR NOT NULL, seq BIGINT NOT NULL) \
                    WITH (connector = 'mqtt', topic = 'plant/+/telemetry', qos = '1');\n\
                    CREATE SINK raw AS SELECT device_id, seq FROM telemetry WITH (connector = 'file', path = 'out/raw.jsonl');\n";
    let gateways: Vec<(std::path::PathBuf, u16)> = ["a", "b"]
        .iter()
        .map(|name| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            config(&dir, port, "3.1.1", pipeline);
            (dir, port)
        })
        .collect();
    let start =
        |(dir, port): &(std::path::PathBuf, u16)| start_eddyd(dir, &dir.join("eddyd.toml"), &broker.url(), *port);
    let mut a = start(&gateways[0]);
    let _b = start(&gateways[1]);
    let every_seq = |dir: &Path| -> Vec<i64> {
        let mut v: Vec<i64> = std::fs::read_to_string(dir.join("pipelines/out/raw.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_i64())
            .collect();
        v.sort_unstable();
        v
    };
    // Without the probes (seq -1).
    let seqs = |dir: &Path| -> Vec<i64> { every_seq(dir).into_iter().filter(|&s| s >= 0).collect() };
    let lines = |from: i64, to: i64| -> Vec<String> {
        (from..to).map(|k| format!("{{\"device_id\":\"d{}\",\"seq\":{k}}}", k % 3)).collect()
    };
    let each_has = |to: i64| {
        let want: Vec<i64> = (0..to).collect();
        let ok = wait_for(|| gateways.iter().all(|(d, _)| seqs(d) == want), Duration::from_secs(30));
        assert!(
            ok,
            "each gateway should hold 0..{to} once; a: {} rows, b: {} rows; client ids: {:?}",
            seqs(&gateways[0].0).len(),
            seqs(&gateways[1].0).len(),
            broker.connected_client_ids()
        );
    };
    // Both have subscribed (their sessions queue what comes) once a probe reaches each.
    let probed = wait_for(
        || {
            publish_lines(broker.port, "plant/probe/telemetry", &["{\"device_id\":\"probe\",\"seq\":-1}".into()]);
            std::thread::sleep(Duration::from_millis(300));
            gateways.iter().all(|(d, _)| every_seq(d).contains(&-1))
        },
        Duration::from_secs(30),
    );
    assert!(probed, "a gateway never subscribed; client ids: {:?}", broker.connected_client_ids());
    publish_lines(broker.port, "plant/l1/telemetry", &lines(0, 200));
    each_has(200);

    signal(a.0.id(), "KILL");
    a.0.wait().unwrap();
    publish_lines(broker.port, "plant/l2/telemetry", &lines(200, 300));
    let _a = start(&gateways[0]);
    each_has(300);

    let ids: Vec<String> =
        broker.connected_client_ids().into_iter().filter(|id| id.starts_with("gw1-p-telemetry")).collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 2, "one id per gateway, the same after a restart: {ids:?}");
    for id in distinct {
        let tag = id.strip_prefix("gw1-p-telemetry-").unwrap_or_default();
        assert!(tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
}
