//! The Kafka source and sink against a real Apache Kafka broker (KRaft, started by the test):
//! windows over 3 partitions written back to Kafka exactly once, across SIGKILLs of eddyd and a
//! broker restart; a zombie producer fenced; bad input and bad options with clear errors; an
//! outage shown on the link and cleared when the broker is back.

#[path = "support/kafka.rs"]
mod kafka_broker;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_broker::KafkaBroker;
use support::*;

const PARTITIONS: i32 = 3;
const T0: i64 = 1_700_000_000_000;

fn pipeline(bootstrap: &str, out_topic: &str) -> String {
    format!(
        r#"
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', topic = 'readings',
        'startup.mode' = 'earliest', batch_rows = '500');

CREATE SINK per_min AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, SUM(temp) AS s
FROM TUMBLE(readings, ts, INTERVAL '60' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', topic = '{out_topic}', key = 'device_id',
        headers = 'device=device_id, count=n');

CREATE SINK bad AS SELECT raw, error FROM ERRORS(readings)
WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', topic = 'bad');
"#
    )
}

/// `rows` readings from 30 devices, each device always on one partition, in event-time order
/// per partition with disorder under the watermark delay; every 997th record does not decode.
/// Ends with one far-future record per partition, so every real window closes in the live run.
fn readings(rows: usize) -> (Vec<(i32, String)>, i64) {
    let mut out = Vec::with_capacity(rows + 3);
    let mut seed = 7u64;
    for i in 0..rows {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let dev = (seed >> 33) % 30;
        let jitter = ((seed >> 20) % 3000) as i64;
        let ts = T0 + i as i64 * 20 + jitter;
        let part = (dev % PARTITIONS as u64) as i32;
        let payload = if i % 997 == 0 {
            format!("{{\"device_id\": \"d{dev}\", \"temp\": oops}}")
        } else {
            format!("{{\"device_id\":\"d{dev}\",\"temp\":{}.{},\"ts\":{ts}}}", 20 + dev, i % 10)
        };
        out.push((part, payload));
    }
    let end = T0 + rows as i64 * 20 + 3_600_000;
    for p in 0..PARTITIONS {
        out.push((p, format!("{{\"device_id\":\"flush{p}\",\"temp\":0,\"ts\":{end}}}")));
    }
    (out, end)
}

fn keygen(dir: &Path) -> std::path::PathBuf {
    let out = Command::new(EDDYD).args(["keygen", "--id", "1"]).output().unwrap();
    assert!(out.status.success());
    let key = dir.join("state.key");
    std::fs::write(&key, out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

/// What `eddyd replay` gives for the same records (one file, partition by partition in turn).
fn expected(dir: &Path, records: &[(i32, String)], flush_ts: i64) -> Vec<String> {
    let mut input = String::new();
    for (_, r) in records {
        input.push_str(r);
        input.push('\n');
    }
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let out = Command::new(EDDYD)
        .current_dir(dir)
        .args([
            "replay",
            "p.sql",
            "--input",
            "readings=in.jsonl",
            "--output",
            "per_min=exp.jsonl",
            "--output",
            "bad=bad.jsonl",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<String> = std::fs::read_to_string(dir.join("exp.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("flush"))
        .map(str::to_string)
        .collect();
    rows.sort();
    assert!(!rows.is_empty() && !rows.iter().any(|r| r.contains(&flush_ts.to_string())));
    rows
}

fn run(dir: &Path, key: &Path, metrics_port: u16) -> std::process::Child {
    run_under(Command::new(EDDYD), dir, key, metrics_port)
}

/// eddyd run by `cmd` (eddyd itself, or a wrapper that ends by running it).
fn run_under(mut cmd: Command, dir: &Path, key: &Path, metrics_port: u16) -> std::process::Child {
    cmd.current_dir(dir)
        .args(["run", "--pipeline", "p.sql", "--state-dir", "state", "--checkpoint-interval-ms", "200"])
        .arg("--key-file")
        .arg(key)
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("EDDY_LOG", "info,eddyd::connectors::kafka=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("eddyd.log")).unwrap())
        .spawn()
        .unwrap()
}

fn got_rows(broker: &KafkaBroker) -> Vec<String> {
    let mut rows: Vec<String> =
        broker.read_all("per_min", "read_committed").into_iter().filter(|l| !l.contains("flush")).collect();
    rows.sort();
    rows
}

#[test]
fn windows_over_three_partitions_are_written_exactly_once_across_sigkills_and_a_broker_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if std::env::var_os("EDDY_TEST_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        return windows_exactly_once(&kept);
    }
    windows_exactly_once(dir)
}

fn windows_exactly_once(dir: &Path) {
    let mut broker = KafkaBroker::start(dir, PARTITIONS as u32);
    std::fs::write(dir.join("p.sql"), pipeline(&broker.bootstrap(), "per_min")).unwrap();
    let (records, flush_ts) = readings(100_000);
    let want = expected(dir, &records, flush_ts);
    broker.ensure_topic("per_min");
    broker.ensure_topic("bad");
    // Half the input before eddyd starts, half while it runs and is killed.
    let (first, second) = records.split_at(records.len() / 2 - 3);
    broker.produce("readings", first);
    let key = keygen(dir);
    let metrics_port = free_port();
    let mut seed = 99u64;
    let mut kills = 0;
    let mut produced_second = false;
    let started = Instant::now();
    while kills < 10 {
        let mut child = run(dir, &key, metrics_port);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(700 + (seed >> 33) % 1500));
        if kills == 3 && !produced_second {
            broker.produce("readings", second);
            produced_second = true;
        }
        if kills == 5 {
            broker.restart(Duration::from_millis(500));
        }
        assert!(child.try_wait().unwrap().is_none(), "eddyd exited; see {}/eddyd.log", dir.display());
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let mut child = run(dir, &key, metrics_port);
    let done = wait_for(|| got_rows(&broker).len() >= want.len(), Duration::from_secs(120));
    // A little longer: a double would show up now.
    std::thread::sleep(Duration::from_secs(2));
    // Kafka's gauges under Kafka's names (they once came out as `eddy_mqtt_*`).
    let body = http_get(metrics_port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(body.contains("eddy_kafka_connected{pipeline=\"p\",source=\"readings\"} 1"), "{body}");
    assert!(body.contains("eddy_kafka_outbox_bytes{pipeline=\"p\",sink=\"per_min\"}"), "{body}");
    assert!(!body.contains("eddy_mqtt_") && !body.contains("eddy_kafka_sessions_lost"), "{body}");
    signal(child.id(), "TERM");
    let st = child.wait().unwrap();
    let got = got_rows(&broker);
    assert!(
        done && st.success(),
        "rows {} of {}; eddyd {st:?}; see {}/eddyd.log",
        got.len(),
        want.len(),
        dir.display()
    );
    assert_eq!(got.len(), want.len(), "row count after {kills} SIGKILLs and a broker restart");
    assert!(got == want, "rows differ from replay");
    // Keys and headers come from each row's values, also in a commit a restart delivered again
    // from the checkpoint (rows known by their payload alone).
    for r in broker.read_records("per_min", "read_committed") {
        let row: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
        let (dev, n) = (row["device_id"].as_str().unwrap(), row["n"].to_string());
        assert_eq!(r.key.as_deref(), Some(dev), "{}", r.payload);
        assert_eq!(r.headers, [("device".to_string(), Some(dev.to_string())), ("count".to_string(), Some(n))]);
    }
    let bad = broker.read_all("bad", "read_committed");
    assert_eq!(
        bad.len(),
        records.iter().filter(|(_, r)| r.contains("oops")).count(),
        "every bad record in ERRORS once"
    );
    eprintln!(
        "{kills} SIGKILLs and a broker restart in {:?}: {} windows equal to replay",
        started.elapsed(),
        got.len()
    );
}

/// A broker for the test in `dir`, with the pipeline written there and its output topics made.
fn broker_with_pipeline(dir: &Path) -> KafkaBroker {
    let broker = KafkaBroker::start(dir, PARTITIONS as u32);
    std::fs::write(dir.join("p.sql"), pipeline(&broker.bootstrap(), "per_min")).unwrap();
    broker.ensure_topic("per_min");
    broker.ensure_topic("bad");
    broker
}

/// The `transactional.id` each start of sink `sink` logged, in order.
fn transactional_ids(log: &str, sink: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Kafka transactions ready") && l.contains(&format!("sink '{sink}'")))
        .filter_map(|l| l.split("transactional_id=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The sink's transactions follow the pipeline's state, not the host. eddyd is SIGKILLed once
/// every window is in Kafka and started again under another host name (as a gateway renamed by
/// its provisioning is): it delivers its last checkpoint's output again, and the progress marker
/// under the same transactional id skips it (with an id made from the host name it came out
/// twice). A fresh state takes another id, so two states (or two gateways with one host name)
/// never fence each other.
#[test]
fn a_new_host_name_keeps_the_sinks_transactions() {
    let renamed = || {
        let mut c = Command::new("unshare");
        c.args([
            "--user",
            "--map-root-user",
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname renamed-gateway && exec \"$@\"",
            "sh",
        ]);
        c.arg(EDDYD);
        c
    };
    let probe = renamed().arg("--version").output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no unprivileged user and UTS namespaces here (unshare: {probe:?})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let broker = broker_with_pipeline(dir);
    let (records, flush_ts) = readings(6_000);
    let want = expected(dir, &records, flush_ts);
    broker.produce("readings", &records);
    let key = keygen(dir);
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    let mut child = run(dir, &key, free_port());
    assert!(wait_for(|| got_rows(&broker).len() >= want.len(), Duration::from_secs(60)), "{}", log());
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = run_under(renamed(), dir, &key, free_port());
    let skipped = |l: &str| l.matches("output already committed to Kafka before a restart; skipped").count();
    let redelivered = wait_for(|| skipped(&log()) >= 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success(), "{}", log());
    let got = got_rows(&broker);
    assert!(got == want, "{} windows in Kafka, {} expected: doubled or lost across the restart", got.len(), want.len());
    assert!(redelivered, "the restart delivered nothing again, so nothing was checked: {}", log());
    let ids = transactional_ids(&log(), "per_min");
    assert_eq!(ids.len(), 2, "{}", log());
    assert_eq!(ids[0], ids[1], "the id changed with the host name");
    // eddy.<pipeline>.<sink>.<state>: no host name in it.
    let state = ids[0].strip_prefix("eddy.p.per_min.").unwrap_or_default();
    assert!(state.len() == 16 && state.bytes().all(|b| b.is_ascii_hexdigit()), "{}", ids[0]);

    // A fresh state (the old one moved away) is another producer.
    std::fs::rename(dir.join("state"), dir.join("state.old")).unwrap();
    let mut child = run(dir, &key, free_port());
    assert!(wait_for(|| transactional_ids(&log(), "per_min").len() == 3, Duration::from_secs(60)), "{}", log());
    signal(child.id(), "TERM");
    child.wait().unwrap();
    let ids = transactional_ids(&log(), "per_min");
    assert_ne!(ids[2], ids[0], "a fresh state took the old state's transactional id");
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_eddyd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let broker = broker_with_pipeline(dir);
    let (records, _) = readings(8_000);
    broker.produce("readings", &records[..6_000]);
    let key = keygen(dir);
    let mut child = run(dir, &key, free_port());
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    assert!(wait_for(|| !got_rows(&broker).is_empty(), Duration::from_secs(60)), "no output: {}", log());
    // The zombie: a producer that takes eddyd's transactional id.
    let ids = transactional_ids(&log(), "per_min");
    assert_eq!(ids.len(), 1, "{}", log());
    let zombie: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("transactional.id", &ids[0])
        .create()
        .unwrap();
    use rdkafka::producer::Producer;
    zombie.init_transactions(Duration::from_secs(30)).unwrap();
    broker.produce("readings", &records[6_000..]);
    let exited = wait_for(|| child.try_wait().unwrap().is_some(), Duration::from_secs(60));
    assert!(exited, "a fenced eddyd must stop, not go on writing");
    assert!(!child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.join("eddyd.log")).unwrap();
    assert!(log.contains("another producer took this transactional.id"), "{log}");
}

#[test]
fn bad_options_and_an_unreachable_broker_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    // `eddyd check` of the pipeline with one option changed fails, saying `why`.
    let refused = |from: &str, to: &str, why: &str| {
        std::fs::write(dir.join("p.sql"), pipeline(&bootstrap, "per_min").replace(from, to)).unwrap();
        let out = Command::new(EDDYD).current_dir(dir).args(["check", "p.sql"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{from} -> {to}: {err}");
    };
    refused("'earliest'", "'soonest'", "option 'startup.mode' must be one of");
    refused("batch_rows", "'properties.group.id' = 'x', batch_rows", "eddyd sets 'group.id' itself");
    // A sink writes one format, checked by the engine for every connector.
    refused(
        "key = 'device_id'",
        "key = 'device_id', format = 'avro'",
        "option 'format' 'avro': kafka sinks write format 'json'",
    );
    // The broker in the config's [kafka] only: checked alone the pipeline lacks it (and says how
    // to check it with the config); with --config it takes the config's defaults, bad ones too.
    let check = |args: &[&str]| Command::new(EDDYD).current_dir(dir).args(args).output().unwrap();
    let no_broker = pipeline(&bootstrap, "per_min").replace(&format!("'bootstrap.servers' = '{bootstrap}', "), "");
    std::fs::write(dir.join("p.sql"), no_broker).unwrap();
    std::fs::write(dir.join("c.toml"), format!("[kafka]\n\"bootstrap.servers\" = \"{bootstrap}\"\n")).unwrap();
    let out = check(&["check", "p.sql"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs option 'bootstrap.servers'"), "{err}");
    assert!(err.contains("eddyd check --config FILE p.sql"), "{err}");
    let out = check(&["check", "--config", "c.toml", "p.sql"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("p.sql: OK"), "{said} {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        dir.join("c.toml"),
        format!("[kafka]\n\"bootstrap.servers\" = \"{bootstrap}\"\ndelivery = \"twice\"\n"),
    )
    .unwrap();
    let out = check(&["check", "--config", "c.toml", "p.sql"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("delivery"), "{err}");

    // No broker: eddyd keeps trying and says it is not ready.
    std::fs::write(dir.join("p.sql"), pipeline(&bootstrap, "per_min")).unwrap();
    let key = keygen(dir);
    let metrics_port = free_port();
    let mut child = run(dir, &key, metrics_port);
    let not_ready =
        wait_for(|| http_get(metrics_port, "/readyz").is_some_and(|(c, _)| c == 503), Duration::from_secs(30));
    assert!(child.try_wait().unwrap().is_none(), "eddyd must keep retrying");
    signal(child.id(), "TERM");
    let _ = child.wait();
    assert!(not_ready, "/readyz must say not ready while the broker is unreachable");
}

/// Two topics read by one source; one is deleted and later recreated with fewer partitions:
/// eddyd says so and goes on reading (the other topic, then the new one from its start), and
/// records with METADATA columns and undecodable ones reach their sinks.
#[test]
fn a_deleted_and_recreated_topic_is_reported_and_reading_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let broker = KafkaBroker::start(dir, 2);
    broker.create_topic("a", 2);
    broker.create_topic("b", 3);
    let bootstrap = broker.bootstrap();
    std::fs::write(
        dir.join("p.sql"),
        format!(
            r#"
CREATE SOURCE s (
    n     BIGINT,
    topic VARCHAR METADATA FROM 'topic',
    part  INT METADATA FROM 'partition',
    off   BIGINT METADATA FROM 'offset',
    k     VARCHAR METADATA FROM 'key'
) WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', topic = 'a,b', 'startup.mode' = 'earliest',
        'partition.discovery.interval' = '300ms');
CREATE SINK rows AS SELECT n, topic, part, off FROM s WITH (connector = 'file', path = 'rows.jsonl');
CREATE SINK bad AS SELECT raw, error FROM ERRORS(s) WITH (connector = 'file', path = 'bad.jsonl');
"#
        ),
    )
    .unwrap();
    let batch = |from: u64, parts: i32| -> Vec<(i32, String)> {
        (from..from + 100).map(|i| ((i % parts as u64) as i32, format!("{{\"n\":{i}}}"))).collect()
    };
    broker.produce("a", &batch(0, 2));
    broker.produce("b", &batch(1000, 3));
    broker.produce("b", &[(0, "not json".to_string())]);
    let key = keygen(dir);
    let mut child = run(dir, &key, free_port());
    let lines = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default().lines().count();
    assert!(wait_for(|| lines("rows.jsonl") == 200 && lines("bad.jsonl") == 1, Duration::from_secs(60)), "first rows");
    let rows = std::fs::read_to_string(dir.join("rows.jsonl")).unwrap();
    assert!(rows.contains(r#""topic":"b","part":2"#) && rows.contains(r#""off":49"#), "{rows}");
    broker.delete_topic("b");
    broker.produce("a", &batch(2000, 2));
    assert!(wait_for(|| lines("rows.jsonl") == 300, Duration::from_secs(60)), "rows of 'a' after 'b' was deleted");
    let log = || std::fs::read_to_string(dir.join("eddyd.log")).unwrap_or_default();
    assert!(wait_for(|| log().contains("partition gone"), Duration::from_secs(30)), "the deletion is logged");
    // Recreated with fewer partitions: read again from its start.
    broker.create_topic("b", 1);
    broker.produce("b", &batch(3000, 1));
    assert!(wait_for(|| lines("rows.jsonl") == 400, Duration::from_secs(60)), "rows of the recreated 'b': {}", log());
    assert!(child.try_wait().unwrap().is_none(), "eddyd goes on");
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// A broker outage while the topic is idle: the source's link shows down, and up again soon
/// after the broker is back (not only at the next partition discovery, here 2 minutes away).
#[test]
fn an_outage_shows_on_the_link_and_clears_soon_after_the_broker_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut broker = KafkaBroker::start(dir, 1);
    broker.create_topic("readings", 1);
    std::fs::write(
        dir.join("p.sql"),
        format!(
            "CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE)
             WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = 'readings',
                   'partition.discovery.interval' = '120s');
             CREATE SINK out AS SELECT device_id, temp FROM readings
             WITH (connector = 'file', path = 'out.jsonl', format = 'json');",
            broker.bootstrap()
        ),
    )
    .unwrap();
    let key = keygen(dir);
    let metrics_port = free_port();
    let mut child = run(dir, &key, metrics_port);
    let link = || metric(metrics_port, "eddy_kafka_connected{pipeline=\"p\",source=\"readings\"}");
    assert!(
        wait_for(|| link() == Some(1.0), Duration::from_secs(30)),
        "link never up; see {}/eddyd.log",
        dir.display()
    );
    broker.stop();
    assert!(wait_for(|| link() == Some(0.0), Duration::from_secs(30)), "the outage does not show");
    broker.restart(Duration::ZERO);
    let back = wait_for(|| link() == Some(1.0), Duration::from_secs(20));
    broker.produce("readings", &[(0, r#"{"device_id":"d1","temp":1.5}"#.to_string())]);
    let read = wait_for(
        || std::fs::read_to_string(dir.join("out.jsonl")).is_ok_and(|t| t.contains("d1")),
        Duration::from_secs(30),
    );
    signal(child.id(), "TERM");
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("eddyd.log")).unwrap();
    assert!(back, "the link still shows down 20 s after the broker is back: {log}");
    assert!(log.contains("Kafka brokers reachable again"), "{log}");
    assert!(read, "nothing read after the outage: {log}");
}
