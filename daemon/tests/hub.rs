//! The hub end to end with real parts: SeaweedFS as the S3 store, `eddy-hub` processes, and
//! `eddyd` gateways with `hub` sinks. What the bucket holds, read back as Parquet, must equal each
//! gateway's `eddyd replay` output exactly: across gateway SIGKILLs, a hub SIGKILLed mid-batch,
//! hubs down for a while and the store restarted. Plus the push protocol and its security.

#[path = "support/hub.rs"]
mod hub_side;
#[path = "support/kafka.rs"]
mod kafka_broker;
#[path = "support/pki.rs"]
mod pki;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimestampMillisecondType};
use eddy_client::{v1, Code, HubClient, Target, Timeouts, TlsFiles};
use hub_side::{HubProcess, S3Server};
use pki::Pki;
use support::EDDYD;

const STREAM: &str = "plant_stats";

const PIPELINE: &str = r#"
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'in.jsonl', format = 'json', batch_rows = '40', follow = 'false');

CREATE SINK plant_stats AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, AVG(temp) AS avg_temp, MAX(temp) AS max_temp
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'hub', stream = 'plant_stats', batch_rows = '50');
"#;

/// The central side: a PKI, the store and the hubs.
struct Central {
    dir: tempfile::TempDir,
    pki: Pki,
    s3: S3Server,
    hubs: Vec<HubProcess>,
}

impl Central {
    fn start(hubs: usize) -> Central {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "fleet");
        pki.issue("hub", &["localhost", "127.0.0.1"], false);
        let s3 = S3Server::start(&dir.path().join("s3"));
        let hubs = (0..hubs).map(|i| HubProcess::start(dir.path(), &format!("hub{i}"), &s3, dir.path())).collect();
        Central { dir, pki, s3, hubs }
    }

    /// A gateway's directory: its input (from `seed`), pipeline, config and certificate.
    fn gateway(&self, name: &str, seed: u64, rows: usize) -> PathBuf {
        let gw = self.dir.path().join(name);
        std::fs::create_dir_all(&gw).unwrap();
        write_input(&gw, seed, rows);
        std::fs::write(gw.join("p.sql"), PIPELINE).unwrap();
        let (cert, key) = self.pki.issue(name, &[], false);
        // Each gateway tries the hubs in its own order, so every hub takes pushes.
        let mut endpoints: Vec<String> = self.hubs.iter().map(|h| format!("'{}'", h.addr)).collect();
        let turn = seed as usize % endpoints.len().max(1);
        endpoints.rotate_left(turn);
        std::fs::write(
            gw.join("eddyd.toml"),
            format!(
                "[api]\nsocket = '{}'\n[hub]\nendpoints = [{}]\nca_file = '{}'\ncert_file = '{}'\nkey_file = '{}'\nserver_name = 'localhost'\nrequest_timeout_ms = 5000\n",
                gw.join("control.sock").display(),
                endpoints.join(", "),
                self.dir.path().join("fleet-ca.pem").display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let keyline = Command::new(EDDYD).args(["keygen", "--id", "1"]).output().unwrap();
        std::fs::write(gw.join("state.key"), &keyline.stdout).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(gw.join("state.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        gw
    }

    /// Per gateway, what DuckDB reads from the stream's objects (copied out of the bucket as they
    /// are, keys as paths, read with Hive partitioning): rows, distinct (device, window) keys,
    /// and the sum of `n`.
    fn duckdb_counts(&self) -> BTreeMap<String, (u64, u64, u64)> {
        let out = tempfile::tempdir().unwrap();
        for (key, bytes) in self.s3.objects() {
            if key.starts_with(&format!("streams/{STREAM}/")) {
                let p = out.path().join(&key);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, bytes).unwrap();
            }
        }
        let query = format!(
            "SELECT gateway, count(*), count(DISTINCT (device_id, window_start)), sum(n) \
             FROM read_parquet('{}/streams/{STREAM}/*/*/*.parquet', hive_partitioning = true) \
             GROUP BY gateway ORDER BY gateway",
            out.path().display()
        );
        let script = format!(
            "import duckdb\nfor g, rows, keys, n in duckdb.sql({query:?}).fetchall():\n    print(g, rows, keys, n)\n"
        );
        let r = Command::new(hub_side::python()).args(["-c", &script]).output().unwrap();
        assert!(r.status.success(), "duckdb: {}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap()))
            })
            .collect()
    }

    /// The rows the bucket holds for `gateway`, each as a canonical line, sorted; and the keys.
    fn stored(&self, gateway: &str) -> (Vec<String>, Vec<String>) {
        let mut rows = Vec::new();
        let mut keys = Vec::new();
        let prefix = format!("streams/{STREAM}/gateway={gateway}/");
        for (key, bytes) in self.s3.objects() {
            if !key.starts_with(&prefix) {
                continue;
            }
            keys.push(key);
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
            for b in reader {
                let b = b.unwrap();
                let mut cols: Vec<usize> = (0..b.num_columns()).collect();
                cols.sort_by_key(|&c| b.schema().field(c).name().clone());
                for r in 0..b.num_rows() {
                    let vals: Vec<String> = cols.iter().map(|&c| parquet_value(b.column(c), r)).collect();
                    rows.push(vals.join("|"));
                }
            }
        }
        rows.sort();
        (rows, keys)
    }
}

fn canon_number(f: f64) -> String {
    format!("{f:.6}")
}

fn parquet_value(col: &dyn Array, r: usize) -> String {
    if col.is_null(r) {
        return "null".into();
    }
    match col.data_type() {
        DataType::Timestamp(..) => col.as_primitive::<TimestampMillisecondType>().value(r).to_string(),
        DataType::Utf8 => col.as_string::<i32>().value(r).to_string(),
        _ => {
            let s = arrow::util::display::array_value_to_string(col, r).unwrap();
            s.parse::<f64>().map(canon_number).unwrap_or(s)
        }
    }
}

fn json_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Number(n) => canon_number(n.as_f64().unwrap()),
        serde_json::Value::String(s) if s.len() >= 19 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' => {
            eddy_engine::time::parse_timestamp_ms(s).map_or(s.clone(), |ms| ms.to_string())
        }
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What `eddyd replay` gives for the gateway's input, as canonical lines, sorted.
fn expected(gw: &Path) -> Vec<String> {
    let out = Command::new(EDDYD)
        .current_dir(gw)
        .args(["replay", "p.sql", "--output", "plant_stats=expected.jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<String> =
        std::fs::read_to_string(gw.join("expected.jsonl")).unwrap().lines().map(row_text).collect();
    rows.sort();
    assert!(!rows.is_empty());
    rows
}

/// A JSON row as the values of its members in name order, `|`-joined (how rows are compared).
fn row_text(line: &str) -> String {
    let m: BTreeMap<String, serde_json::Value> = serde_json::from_str(line).unwrap();
    m.values().map(json_value).collect::<Vec<_>>().join("|")
}

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn write_input(dir: &Path, seed: u64, rows: usize) {
    let mut rng = Lcg(seed);
    let t0: i64 = 1_700_000_000_000;
    let mut s = String::new();
    for i in 0..rows {
        let ts = t0 + i as i64 * 100 - rng.below(3000) as i64;
        let temp = 10.0 + rng.below(3000) as f64 / 100.0;
        s.push_str(&format!("{{\"device_id\": \"dev-{}\", \"temp\": {temp}, \"ts\": {ts}}}\n", rng.below(8)));
    }
    std::fs::write(dir.join("in.jsonl"), s).unwrap();
}

fn run_cmd(gw: &Path) -> Command {
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(gw)
        .args(["run", "--config", "eddyd.toml", "--pipeline", "p.sql", "--state-dir", "state"])
        .args(["--key-file", "state.key", "--checkpoint-interval-ms", "20"])
        .env("EDDY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the gateway to the end of its input (its outbox drained), asserting success.
fn run_to_end(gw: &Path) {
    let out = run_cmd(gw).output().unwrap();
    assert!(out.status.success(), "eddyd run: {}", String::from_utf8_lossy(&out.stderr));
}

fn assert_exactly_once(c: &Central, name: &str, gw: &Path) {
    let want = expected(gw);
    let (got, keys) = c.stored(name);
    assert!(!keys.is_empty(), "{name}: nothing stored");
    for k in &keys {
        let rest = k.strip_prefix(&format!("streams/{STREAM}/gateway={name}/date=")).unwrap();
        assert!(rest.len() > 11 && rest.as_bytes()[10] == b'/' && rest.ends_with(".parquet"), "{k}");
    }
    assert_eq!(got.len(), want.len(), "{name}: {} rows stored, replay gives {}", got.len(), want.len());
    assert!(got == want, "{name}: the stored rows differ from replay");
}

#[test]
fn three_gateways_through_two_hubs_store_every_row_once() {
    let c = Central::start(2);
    let gws: Vec<(String, PathBuf)> =
        (1..=3).map(|i| (format!("gw-{i}"), c.gateway(&format!("gw-{i}"), i, 2000 + 500 * i as usize))).collect();
    let runs: Vec<_> = gws.iter().map(|(_, gw)| run_cmd(gw).spawn().unwrap()).collect();
    for r in runs {
        let out = r.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "eddyd run: {err}");
        eprint!("{err}");
    }
    for (name, gw) in &gws {
        assert_exactly_once(&c, name, gw);
    }
    // An analyst's view: DuckDB over the objects, partitions as columns. Every (device, window)
    // once, and the counts add up to what replay gives.
    let read = c.duckdb_counts();
    assert_eq!(read.len(), 3, "{read:?}");
    for (name, gw) in &gws {
        let want = expected(gw).len() as u64;
        let replay: u64 = std::fs::read_to_string(gw.join("expected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
            .sum();
        assert_eq!(read[name], (want, want, replay), "{name}: DuckDB reads (rows, keys, sum n)");
    }
    // A second run from the same state adds nothing (its input is consumed, its outbox empty).
    run_to_end(&gws[0].1);
    assert_exactly_once(&c, &gws[0].0, &gws[0].1);
    // What an operator sees: `eddy-hub ls` counts the rows from the objects' footers.
    let ls = c.hub_cli(1, &["ls", "--stream", STREAM, "--gateway", "gw-2"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "eddy-hub ls: {}", String::from_utf8_lossy(&ls.stderr));
    let want = format!(" batches, {} rows, ", expected(&gws[1].1).len());
    assert!(text.lines().last().is_some_and(|l| l.contains(&want)), "{text}");
    assert!(text.contains("gateway=gw-2/") && !text.contains("gateway=gw-1/"), "{text}");
}

#[test]
fn gateway_kills_hub_kills_outages_and_a_store_restart_lose_and_double_nothing() {
    let mut c = Central::start(2);
    let gw = c.gateway("gw-faults", 7, 200_000);
    let mut rng = Lcg(99);
    let (mut kills, mut starts) = (0, 0);
    let t0 = Instant::now();
    // Gateway SIGKILLs at random moments; between them, the central side fails in turn.
    while kills < 12 {
        starts += 1;
        assert!(starts < 400, "no progress after {starts} starts");
        match kills {
            3 => c.hubs[0].kill(), // one hub gone: the gateway fails over to the other
            5 => {
                // The link cut: no hub at all; rows wait in the outbox.
                c.hubs[1].kill();
            }
            8 => {
                c.hubs[0].restart();
                c.hubs[1].restart();
            }
            10 => c.s3.restart(),
            _ => {}
        }
        let mut child = run_cmd(&gw).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_millis(10 + rng.below(90));
        let mut exited = false;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                assert!(st.success(), "eddyd run failed after {kills} kills: {err}");
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if exited {
            break; // the input ran out (the assertion below asks for enough kills first)
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    for h in &mut c.hubs {
        if !h.running() {
            h.restart();
        }
    }
    // Hubs up: the last run drains the outbox and finishes the input.
    run_to_end(&gw);
    assert_exactly_once(&c, "gw-faults", &gw);
    eprintln!("{kills} gateway SIGKILLs over {starts} starts in {:?}: every row stored once", t0.elapsed());
    assert!(kills >= 10, "only {kills} kills before the input ran out: make the input longer");
}

/// Without a state dir the outbox is in memory and numbers its rows from 0 at every start: each
/// run must still be stored whole, not taken for the batches of the run before.
#[test]
fn a_gateway_without_state_has_its_rows_stored_at_every_run() {
    let c = Central::start(1);
    let gw = c.gateway("gw-mem", 3, 3000);
    let run = || {
        let out = Command::new(EDDYD)
            .current_dir(&gw)
            .args(["run", "--config", "eddyd.toml", "--pipeline", "p.sql"])
            .env("EDDY_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "eddyd run: {}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    run();
    let want = expected(&gw);
    let (got, _) = c.stored("gw-mem");
    let twice: Vec<String> = {
        let mut v: Vec<String> = want.iter().chain(want.iter()).cloned().collect();
        v.sort();
        v
    };
    assert_eq!(got.len(), twice.len(), "two runs without state store their rows twice");
    assert!(got == twice);
    // A hub sink writes Parquet and says so when asked for another format.
    std::fs::write(gw.join("bad.sql"), PIPELINE.replace("batch_rows = '50'", "batch_rows = '50', format = 'json'"))
        .unwrap();
    let out = Command::new(EDDYD).current_dir(&gw).args(["check", "bad.sql"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("option 'format' 'json': hub sinks write format 'parquet'"), "{err}");
}

fn hub_client(
    rt: &tokio::runtime::Runtime,
    c: &Central,
    name: &str,
    ca_dir: &Path,
) -> Result<HubClient, eddy_client::ClientError> {
    let (cert, key) = (c.dir.path().join(format!("{name}.pem")), c.dir.path().join(format!("{name}.key")));
    let target = Target::Tls {
        address: c.hubs[0].addr.clone(),
        files: TlsFiles { ca: ca_dir.join("fleet-ca.pem"), cert, key, server_name: Some("localhost".into()) },
    };
    rt.block_on(HubClient::connect(&target, Timeouts::default()))
}

/// `n` rows as an Arrow IPC stream.
fn ipc_rows(n: usize) -> Vec<u8> {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
    let b = RecordBatch::try_new(schema.clone(), vec![std::sync::Arc::new(Int64Array::from_iter_values(0..n as i64))])
        .unwrap();
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

fn push(first: u64, last: u64) -> v1::PushRowsRequest {
    v1::PushRowsRequest {
        stream: "probe".into(),
        outbox_id: 0xfeed,
        first_seq: first,
        last_seq: last,
        date: "2026-12-01".into(),
        arrow_ipc: ipc_rows((last - first + 1) as usize),
    }
}

/// The store must refuse a second create-only PUT of a key: two hubs racing on one batch rely on it.
#[test]
fn the_store_honours_create_only_puts() {
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path());
    let store = s3.store();
    let rt = hub_side::runtime();
    let path = object_store::path::Path::from("probe/once");
    let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
    rt.block_on(store.put_opts(&path, PutPayload::from_static(b"first"), create())).unwrap();
    let second = rt.block_on(store.put_opts(&path, PutPayload::from_static(b"second"), create()));
    assert!(matches!(second, Err(object_store::Error::AlreadyExists { .. })), "{second:?}");
    let body = rt.block_on(async { store.get(&path).await.unwrap().bytes().await.unwrap() });
    assert_eq!(&body[..], b"first");
}

#[test]
fn a_batch_sent_again_however_cut_is_stored_once_and_strangers_are_refused() {
    let c = Central::start(1);
    c.pki.issue("gw-a", &[], false);
    let rt = hub_side::runtime();
    let client = hub_client(&rt, &c, "gw-a", c.dir.path()).unwrap();
    let first = rt.block_on(client.push_rows(push(0, 9))).unwrap();
    assert_eq!((first.stored_through, first.already_stored), (9, false));
    assert_eq!(
        first.object,
        "streams/probe/gateway=gw-a/date=2026-12-01/000000000000feed-00000000000000000000.parquet"
    );
    // A gateway that crashed before it saw the reply sends a longer batch from the same row.
    let again = rt.block_on(client.push_rows(push(0, 14))).unwrap();
    assert_eq!((again.stored_through, again.already_stored), (9, true));
    let rest = rt.block_on(client.push_rows(push(10, 14))).unwrap();
    assert_eq!((rest.stored_through, rest.already_stored), (14, false));
    let shorter = rt.block_on(client.push_rows(push(10, 12))).unwrap();
    assert_eq!((shorter.stored_through, shorter.already_stored), (14, true));
    let (rows, keys) = c.stored_stream("probe", "gw-a");
    assert_eq!((rows, keys.len()), (15, 2), "{keys:?}");

    // Retracting rows from 12 on (a restore from an older checkpoint) cuts the batch 10..=14 to
    // 10..=11; from 10 on deletes it; then the rows are pushed again and stored.
    let cut = rt.block_on(client.retract_rows("gw-a", "probe", 0xfeed, 12)).unwrap();
    assert_eq!((cut.deleted, cut.cut), (0, 1));
    assert_eq!(c.stored_stream("probe", "gw-a").0, 12);
    let again = rt.block_on(client.push_rows(push(10, 14))).unwrap();
    assert_eq!((again.stored_through, again.already_stored), (11, true), "the cut batch says where it ends now");
    let gone = rt.block_on(client.retract_rows("gw-a", "probe", 0xfeed, 10)).unwrap();
    assert_eq!((gone.deleted, gone.cut), (1, 0));
    let back = rt.block_on(client.push_rows(push(10, 14))).unwrap();
    assert_eq!((back.stored_through, back.already_stored), (14, false));
    let (rows, keys) = c.stored_stream("probe", "gw-a");
    assert_eq!((rows, keys.len()), (15, 2), "{keys:?}");

    // A batch whose rows do not match its sequence numbers, a bad date, a bad stream name.
    let mut bad = push(20, 29);
    bad.arrow_ipc = ipc_rows(3);
    let e = rt.block_on(client.push_rows(bad)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let mut bad = push(20, 29);
    bad.date = "yesterday".into();
    assert_eq!(rt.block_on(client.push_rows(bad)).unwrap_err().code(), Code::InvalidArgument);
    let mut bad = push(20, 29);
    bad.stream = "../gateway=gw-b".into();
    assert_eq!(rt.block_on(client.push_rows(bad)).unwrap_err().code(), Code::InvalidArgument);

    // A certificate from another CA is refused at the handshake; nothing is stored.
    let stranger_dir = c.dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = Pki::new(&stranger_dir, "fleet");
    stranger.issue("gw-a", &[], false);
    let target = Target::Tls {
        address: c.hubs[0].addr.clone(),
        files: TlsFiles {
            ca: c.dir.path().join("fleet-ca.pem"),
            cert: stranger_dir.join("gw-a.pem"),
            key: stranger_dir.join("gw-a.key"),
            server_name: Some("localhost".into()),
        },
    };
    let refused = rt.block_on(async {
        let cl = HubClient::connect(&target, Timeouts::default()).await?;
        cl.push_rows(push(100, 109)).await
    });
    assert!(refused.is_err(), "a stranger's push was accepted");
    // A gateway certificate whose CN is not a gateway id is refused.
    c.pki.issue("not a gateway", &[], false);
    let odd = hub_client(&rt, &c, "not a gateway", c.dir.path()).unwrap();
    assert_eq!(rt.block_on(odd.push_rows(push(0, 9))).unwrap_err().code(), Code::PermissionDenied);
    let (rows, keys) = c.stored_stream("probe", "gw-a");
    assert_eq!((rows, keys.len()), (15, 2));
    assert_eq!(c.s3.objects().len(), 2, "only gw-a's two objects are in the bucket");
}

/// Rows past `[rows] keep_days` go by their `date=` partition: `eddy-hub expire --dry-run` lists
/// them, `eddy-hub expire` deletes them, a serving hub sweeps them at start; today's rows stay, and
/// a late batch of an expired date is still acknowledged.
#[test]
fn row_partitions_past_retention_are_deleted_and_todays_stay() {
    let mut c = Central::start(1);
    c.pki.issue("gw-a", &[], false);
    let rt = hub_side::runtime();
    let client = hub_client(&rt, &c, "gw-a", c.dir.path()).unwrap();
    let today = String::from_utf8(Command::new("date").args(["-u", "+%F"]).output().unwrap().stdout).unwrap();
    let dated =
        |first: u64, last: u64, date: &str| v1::PushRowsRequest { date: date.trim().into(), ..push(first, last) };
    rt.block_on(client.push_rows(dated(0, 9, "2020-01-01"))).unwrap();
    rt.block_on(client.push_rows(dated(10, 19, "2020-01-02"))).unwrap();
    rt.block_on(client.push_rows(dated(20, 29, &today))).unwrap();
    assert_eq!(c.stored_stream("probe", "gw-a").1.len(), 3);

    let off = c.hub_cli(0, &["expire"]);
    assert!(!off.status.success() && String::from_utf8_lossy(&off.stderr).contains("kept forever"));
    let dry = c.hub_cli(0, &["expire", "--keep-days", "30", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(text.contains("gateway=gw-a/date=2020-01-01/") && text.contains("would delete 2 batches"), "{text}");
    assert_eq!(c.stored_stream("probe", "gw-a").1.len(), 3, "a dry run deletes nothing");
    let done = c.hub_cli(0, &["expire", "--keep-days", "30"]);
    assert!(String::from_utf8_lossy(&done.stdout).contains("deleted 2 batches"), "{done:?}");
    let (rows, keys) = c.stored_stream("probe", "gw-a");
    assert_eq!(rows, 10);
    assert!(keys.len() == 1 && keys[0].contains(today.trim()), "{keys:?}");

    // A gateway that was offline for long sends an old batch: stored and acknowledged; the hub,
    // configured to keep 30 days, sweeps it at its next start.
    let late = rt.block_on(client.push_rows(dated(30, 39, "2020-01-03"))).unwrap();
    assert_eq!((late.stored_through, late.already_stored), (39, false));
    assert_eq!(c.stored_stream("probe", "gw-a").1.len(), 2);
    let mut cfg = std::fs::read_to_string(&c.hubs[0].config).unwrap();
    cfg.push_str("[rows]\nkeep_days = 30\n");
    std::fs::write(&c.hubs[0].config, cfg).unwrap();
    c.hubs[0].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.stored_stream("probe", "gw-a").1.len() != 1 {
        assert!(Instant::now() < deadline, "the serving hub did not sweep the expired partition");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.stored_stream("probe", "gw-a").0, 10);
}

impl Central {
    /// Runs `eddy-hub` with hub `i`'s config and `args` (a one-off command, not the server).
    fn hub_cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(hub_side::hub_binary())
            .arg("--config")
            .arg(&self.hubs[i].config)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", hub_side::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", hub_side::SECRET_KEY)
            .output()
            .unwrap()
    }

    /// Rows and keys of `stream` from `gateway`.
    fn stored_stream(&self, stream: &str, gateway: &str) -> (usize, Vec<String>) {
        let prefix = format!("streams/{stream}/gateway={gateway}/");
        let mut rows = 0;
        let mut keys = Vec::new();
        for (k, b) in self.s3.objects() {
            if k.starts_with(&prefix) {
                let r =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(b).unwrap().build().unwrap();
                rows += r.map(|b| b.unwrap().num_rows()).sum::<usize>();
                keys.push(k);
            }
        }
        (rows, keys)
    }
}

/// The keys of the kept checkpoint indexes of `gateway`'s pipeline `p` (a LIST only: polled).
fn checkpoint_indexes(c: &Central, gateway: &str) -> Vec<String> {
    c.s3.keys(&format!("checkpoints/gateway={gateway}/pipeline=p/index/"))
}

/// The state identity of each of pipeline p's kept backups, oldest first, as the gateway sees them.
fn backup_states(c: &Central, gateway: &str) -> Vec<Vec<u8>> {
    let rt = hub_side::runtime();
    let client = hub_client(&rt, c, gateway, c.dir.path()).unwrap();
    rt.block_on(client.list_checkpoints(gateway, "p")).unwrap().into_iter().map(|s| s.state_id).collect()
}

/// Runs gateway `name` with a backup every third checkpoint and SIGKILLs it once `backups`
/// backups are kept, mid-input, with rows pushed past the last. On a machine fast enough to
/// finish the input first, the run's last backups stand instead: results must be exact either way.
fn run_until_backed_up(c: &Central, name: &str, gw: &Path, backups: usize) {
    let mut toml = std::fs::read_to_string(gw.join("eddyd.toml")).unwrap();
    // Every third checkpoint: the hub sink pushes rows of the checkpoints between backups.
    toml.push_str("[hub.backup]\nenabled = true\nevery_checkpoints = 3\nmax_bytes_per_s = 100000000\n");
    std::fs::write(gw.join("eddyd.toml"), toml).unwrap();
    let mut child = run_cmd(gw).spawn().unwrap();
    let t0 = Instant::now();
    let mut ended = false;
    while checkpoint_indexes(c, name).len() < backups || t0.elapsed() < Duration::from_millis(300) {
        if child.try_wait().unwrap().is_some() {
            ended = true;
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no backups at the hub");
        std::thread::sleep(Duration::from_millis(5));
    }
    if !ended {
        child.kill().unwrap();
    }
    let st = child.wait().unwrap();
    eprintln!(
        "the gateway {}",
        if ended { format!("finished its input first ({st})") } else { "was SIGKILLed mid-input".into() }
    );
    if ended {
        // Its final backup may still be on its way when it exits: wait for one.
        while checkpoint_indexes(c, name).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(120), "no backups at the hub");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A gateway backs up its checkpoints to the hub and dies (SIGKILL) mid-input with rows pushed
/// past its last backup; its state dir is lost. `eddyd restore --from-hub` on a fresh state dir
/// and a new run finish the input: the bucket holds exactly the rows of one uninterrupted run.
/// Another gateway cannot read those backups.
#[test]
fn a_gateway_restored_from_its_hub_backup_continues_exactly_once() {
    let c = Central::start(1);
    let gw = c.gateway("gw-r", 11, 400_000);
    run_until_backed_up(&c, "gw-r", &gw, 1);
    let (pushed, _) = c.stored("gw-r");
    assert!(!pushed.is_empty(), "nothing was pushed before the kill");
    let old_state = backup_states(&c, "gw-r").pop().unwrap();
    assert_eq!(old_state.len(), 16, "backups carry the state's identity");
    std::fs::remove_dir_all(gw.join("state")).unwrap();

    // Another gateway of the fleet may not read them.
    c.pki.issue("gw-x", &[], false);
    let rt = hub_side::runtime();
    let other = hub_client(&rt, &c, "gw-x", c.dir.path()).unwrap();
    let e = rt.block_on(other.get_checkpoint("gw-r", "p", 0)).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = rt.block_on(other.retract_rows("gw-r", STREAM, 1, 0)).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let mine = rt.block_on(other.list_checkpoints("gw-x", "")).unwrap();
    assert!(mine.is_empty());

    let restore = || {
        Command::new(EDDYD)
            .current_dir(&gw)
            .args(["restore", "--from-hub", "--gateway", "gw-r", "--pipeline", "p", "--config", "eddyd.toml"])
            .args(["--state-dir", "state", "--key-file", "state.key"])
            .output()
            .unwrap()
    };
    let first = restore();
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "restore: {}{said}", String::from_utf8_lossy(&first.stderr));
    assert!(said.contains("restored pipeline p from checkpoint"), "{said}");
    eprint!("{said}");
    // Not over existing state.
    let again = restore();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("state reset"));

    run_to_end(&gw);
    assert_exactly_once(&c, "gw-r", &gw);
    // What an operator sees of the backups.
    let ls = Command::new(hub_side::hub_binary())
        .args(["--config"])
        .arg(&c.hubs[0].config)
        .args(["checkpoints", "--gateway", "gw-r"])
        .env("AWS_ACCESS_KEY_ID", hub_side::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", hub_side::SECRET_KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success() && text.contains(" checkpoints"), "{text}");
    // Three, and (once the restored state has backed up three times) the old state's last one,
    // pinned when the restored state's first arrived.
    let kept = checkpoint_indexes(&c, "gw-r").len();
    assert!(kept <= 4, "retention keeps three and the pinned one, not {kept}");
    // The restored state continues the old one: the same identity in its backups.
    let states = backup_states(&c, "gw-r");
    assert!(states.iter().all(|s| *s == old_state), "a restored state changed its identity");
}

/// A gateway that writes its windows to Kafka (exactly once) backs up to the hub and dies
/// (SIGKILL) mid-input; its state dir is lost, and the replacement restores the oldest backup
/// kept and finishes the input. Its Kafka sink continues the old device's transactions (the id
/// comes with the state: one id in all at the broker, so the old producer is fenced), no window
/// is lost or made up, and the windows the old device had committed after that backup come
/// again, which the new one says in its log (Kafka cannot take them back).
#[test]
fn a_restored_gateway_continues_its_kafka_sinks_transactions() {
    let c = Central::start(1);
    let broker = kafka_broker::KafkaBroker::start(c.dir.path(), 1);
    broker.ensure_topic(STREAM);
    let gw = c.gateway("gw-k", 13, 200_000);
    let to_kafka =
        format!("WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = '{STREAM}')", broker.bootstrap());
    let sql = PIPELINE.replace("WITH (connector = 'hub', stream = 'plant_stats', batch_rows = '50')", &to_kafka);
    assert_ne!(sql, PIPELINE);
    std::fs::write(gw.join("p.sql"), sql).unwrap();
    let want = expected(&gw);
    run_until_backed_up(&c, "gw-k", &gw, 2);
    let before = broker.read_all(STREAM, "read_committed").len();
    std::fs::remove_dir_all(gw.join("state")).unwrap();
    let rt = hub_side::runtime();
    let client = hub_client(&rt, &c, "gw-k", c.dir.path()).unwrap();
    let kept: Vec<u64> = rt.block_on(client.list_checkpoints("gw-k", "p")).unwrap().iter().map(|s| s.seq).collect();
    let oldest = kept.iter().min().unwrap().to_string();
    let restore = Command::new(EDDYD)
        .current_dir(&gw)
        .args(["restore", "--from-hub", "--gateway", "gw-k", "--pipeline", "p", "--config", "eddyd.toml"])
        .args(["--state-dir", "state", "--key-file", "state.key", "--seq", &oldest])
        .output()
        .unwrap();
    assert!(restore.status.success(), "restore: {}", String::from_utf8_lossy(&restore.stderr));
    let out = run_cmd(&gw).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "eddyd run: {log}");

    let mut got: Vec<String> = broker.read_all(STREAM, "read_committed").iter().map(|l| row_text(l)).collect();
    got.sort();
    let mut distinct = got.clone();
    distinct.dedup();
    assert!(distinct == want, "{} distinct windows in Kafka, replay gives {}", distinct.len(), want.len());
    let twice = got.len() - want.len();
    eprintln!(
        "{before} windows were in Kafka before the restore of checkpoint {oldest} of {kept:?}; {twice} written twice"
    );
    let warned = log.contains("the replaced device had committed");
    // With a later backup kept, the old device delivered output of checkpoints after this one.
    assert!(kept.len() < 2 || (twice > 0 && warned), "{twice} windows twice, warned: {warned}: {log}");
    assert!(twice == 0 || warned, "{twice} windows twice, unannounced: {log}");
    let ids = broker.transactional_ids();
    assert_eq!(ids.iter().filter(|i| i.starts_with("eddy.p.plant_stats.")).count(), 1, "{ids:?}");
}

/// A gateway reading MQTT backs up to the hub and dies (SIGKILL) with its state dir. While no
/// device is connected, the broker queues what the plant publishes for the gateway's persistent
/// session. The replacement restores the backup and resumes that session, since the default
/// client id comes with the state: everything published after the death arrives, each once.
#[test]
fn a_restored_gateway_resumes_its_mqtt_session() {
    let Some((_broker_dir, broker)) = support::broker_in_tempdir() else { return };
    let c = Central::start(1);
    let gw = c.gateway("gw-m", 14, 0);
    std::fs::write(
        gw.join("p.sql"),
        format!(
            "CREATE SOURCE readings (device_id VARCHAR NOT NULL, seq BIGINT NOT NULL) \
             WITH (connector = 'mqtt', url = '{}', topic = 'plant/#', qos = '1');\n\
             CREATE SINK raw AS SELECT device_id, seq FROM readings WITH (connector = 'file', path = 'raw.jsonl');\n",
            broker.url()
        ),
    )
    .unwrap();
    let mut toml = std::fs::read_to_string(gw.join("eddyd.toml")).unwrap();
    toml.push_str("[hub.backup]\nenabled = true\nevery_checkpoints = 1\nmax_bytes_per_s = 100000000\n");
    std::fs::write(gw.join("eddyd.toml"), toml).unwrap();
    let seqs = || -> Vec<i64> {
        std::fs::read_to_string(gw.join("raw.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_i64())
            .collect()
    };
    let lines = |from: i64, to: i64| -> Vec<String> {
        (from..to).map(|k| format!("{{\"device_id\":\"d{}\",\"seq\":{k}}}", k % 3)).collect()
    };
    let mut first = run_cmd(&gw).spawn().unwrap();
    // Subscribed (its session queues from now on) once a probe comes through.
    let probed = support::wait_for(
        || {
            support::publish_lines(broker.port, "plant/probe", &lines(-1, 0));
            std::thread::sleep(Duration::from_millis(200));
            seqs().contains(&-1)
        },
        Duration::from_secs(30),
    );
    assert!(probed, "the gateway never subscribed");
    support::publish_lines(broker.port, "plant/l1", &lines(0, 100));
    let backed_up =
        support::wait_for(|| seqs().len() > 100 && !checkpoint_indexes(&c, "gw-m").is_empty(), Duration::from_secs(60));
    assert!(backed_up, "{} rows, {} backups", seqs().len(), checkpoint_indexes(&c, "gw-m").len());
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::remove_dir_all(gw.join("state")).unwrap();
    support::publish_lines(broker.port, "plant/l2", &lines(1000, 1200));

    let restore = Command::new(EDDYD)
        .current_dir(&gw)
        .args(["restore", "--from-hub", "--gateway", "gw-m", "--pipeline", "p", "--config", "eddyd.toml"])
        .args(["--state-dir", "state", "--key-file", "state.key"])
        .output()
        .unwrap();
    assert!(restore.status.success(), "restore: {}", String::from_utf8_lossy(&restore.stderr));
    let mut second = run_cmd(&gw).spawn().unwrap();
    let after_death = || seqs().into_iter().filter(|s| *s >= 1000).collect::<Vec<i64>>();
    let arrived = support::wait_for(|| after_death().len() >= 200, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    second.kill().unwrap();
    second.wait().unwrap();
    let mut got = after_death();
    got.sort_unstable();
    let ids: Vec<String> =
        broker.connected_client_ids().into_iter().filter(|id| id.starts_with("eddy-p-readings")).collect();
    assert!(
        arrived && got == (1000..1200).collect::<Vec<i64>>(),
        "rows of the 200 messages published after the death: {} (each once: {}); client ids {ids:?}",
        got.len(),
        got.windows(2).all(|w| w[0] < w[1])
    );
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 1, "one session for both devices: {ids:?}");
}

/// Waits (up to 120 s) until `gateway` has `rows` rows in the bucket.
fn await_stored_rows(c: &Central, gateway: &str, rows: usize, what: &str) {
    let t0 = Instant::now();
    loop {
        let n = c.stored(gateway).0.len();
        if n == rows {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{what}: {n} rows stored after 120 s, not {rows}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A replacement device for gw-e (same identity and key, no state) runs the pipeline from the
/// start, on top of the rows the old device pushed, and backs up its own fresh state: retention
/// still keeps the old device's last backup. `eddyctl restore` of it by its number on the running
/// eddyd first refuses a backup taken with other SQL (the pipeline keeps its state, paused), then,
/// with the SQL fixed, retracts the rows the replacement pushed and those the old device pushed
/// after its backup, installs the backup and runs on from it: the bucket holds exactly one run's
/// rows.
#[test]
fn eddyctl_restores_a_running_gateways_pipeline_from_its_hub_backup_exactly_once() {
    let mut c = Central::start(1);
    let gw = c.gateway("gw-e", 12, 200_000);
    run_until_backed_up(&c, "gw-e", &gw, 1);
    let want = expected(&gw);
    let before = c.stored("gw-e").0.len();
    assert!(before > 0, "nothing was pushed before the kill");
    let old_key = checkpoint_indexes(&c, "gw-e").pop().unwrap();
    let old_last: u64 = old_key.trim_end_matches(".ckpt").rsplit('-').next().unwrap().parse().unwrap();
    // The hub keeps one backup per pipeline from now on: any backup of the replacement's
    // would push the old device's out, but for the pin on the last one before another state's.
    let hub_toml = std::fs::read_to_string(&c.hubs[0].config).unwrap();
    std::fs::write(&c.hubs[0].config, format!("{hub_toml}[backup]\nkeep = 1\n")).unwrap();
    c.hubs[0].restart();

    std::fs::remove_dir_all(gw.join("state")).unwrap();
    let pipes = gw.join("pipes");
    std::fs::create_dir_all(&pipes).unwrap();
    let input = format!("path = '{}'", gw.join("in.jsonl").display());
    let right = PIPELINE.replace("path = 'in.jsonl'", &input);
    // Other SQL, the same columns: its state is not the backup's.
    let wrong = right.replace("MAX(temp) AS max_temp", "MIN(temp) AS max_temp");
    std::fs::write(pipes.join("p.sql"), &wrong).unwrap();
    // A pipeline that never ends keeps eddyd running after p's input ends.
    std::fs::write(gw.join("idle.jsonl"), "").unwrap();
    std::fs::write(
        pipes.join("idle.sql"),
        format!(
            "CREATE SOURCE idle (x BIGINT) WITH (connector = 'file', path = '{}', format = 'json', follow = 'true');\n\
             CREATE SINK idle_out AS SELECT x FROM idle WITH (connector = 'file', path = '{}', format = 'json');\n",
            gw.join("idle.jsonl").display(),
            gw.join("idle.out").display()
        ),
    )
    .unwrap();
    // With [hub.backup] (every third checkpoint, as the old device): the replacement's own
    // backups become the hub's newest.
    let toml = std::fs::read_to_string(gw.join("eddyd.toml")).unwrap();
    std::fs::write(gw.join("eddyd.toml"), format!("pipelines_dir = '{}'\n{toml}", pipes.display())).unwrap();
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(&gw)
        .args(["run", "--config", "eddyd.toml", "--state-dir", "state", "--key-file", "state.key"])
        .args(["--checkpoint-interval-ms", "20"])
        .env("EDDY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _eddyd = Killed(cmd.spawn().unwrap());
    await_stored_rows(&c, "gw-e", before + want.len(), "the replacement's first run");
    // The fresh state (numbered from 1 again) has backed up, and the old device's last backup
    // is still kept.
    let t0 = Instant::now();
    while checkpoint_indexes(&c, "gw-e").iter().all(|k| *k == old_key) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the replacement made no backup");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept = checkpoint_indexes(&c, "gw-e");
    assert!(kept.contains(&old_key), "the old device's last backup went: {kept:?}");
    // The replacement's fresh state is another state: the hub sees another identity.
    let states = backup_states(&c, "gw-e");
    assert!(states.len() == 2 && states[0] != states[1] && states.iter().all(|s| s.len() == 16), "{states:?}");

    let eddyctl = |args: &[&str]| {
        Command::new(hub_side::eddyctl_binary())
            .arg("--socket")
            .arg(gw.join("control.sock"))
            .args(args)
            .output()
            .unwrap()
    };
    let old_seq = old_last.to_string();
    let restore_old = ["restore", "p", "--gateway", "gw-e", "--checkpoint", &old_seq];
    let refused = eddyctl(&restore_old);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("other SQL"), "{said}");
    assert!(said.contains("stays paused on its own state"), "{said}");
    let shown = eddyctl(&["--output", "json", "show", "p"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("\"state\": \"paused\""),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    assert_eq!(c.stored("gw-e").0.len(), before + want.len(), "a refused restore changed the hub");

    std::fs::write(pipes.join("p.sql"), &right).unwrap();
    let done = eddyctl(&restore_old);
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "eddyctl restore: {}{said}", String::from_utf8_lossy(&done.stderr));
    eprint!("{said}");
    // `eddyctl show` says what the hub holds of this pipeline's backups.
    let shown = eddyctl(&["show", "p"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("backup: checkpoint ") && text.contains(" at the hub ("),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(said.contains("restored pipeline p from checkpoint"), "{said}");
    assert!(said.contains("rows the replaced state pushed"), "{said}");
    assert!(said.contains("runs from the restored checkpoint"), "{said}");
    await_stored_rows(&c, "gw-e", want.len(), "after the restore");
    std::thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&c, "gw-e", &gw);
    let audit = eddyctl(&["audit"]);
    assert!(String::from_utf8_lossy(&audit.stdout).contains("Restore"), "the restores are audited");
}

/// A pipeline of the fleet tests: generated readings, per-device counts to a file. `tag` makes
/// versions differ; `bad` breaks the SQL.
fn fleet_pipeline(tag: &str, bad: bool) -> v1::PipelineFile {
    let select =
        if bad { "SELECT device_id, COUNT(*) AS n FROM no_such_table" } else { "SELECT device_id, COUNT(*) AS n" };
    let from = if bad { "" } else { " FROM TUMBLE(r, ts, INTERVAL '1' SECOND)" };
    v1::PipelineFile {
        name: "stats".into(),
        sql: format!(
            "-- {tag}\nCREATE SOURCE r (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'datagen', shape = 'iot', devices = '3', rate = '50');\n\
             CREATE SINK counts AS {select}{from}{} WITH (connector = 'file', path = 'counts.jsonl');\n",
            if bad { "" } else { " GROUP BY device_id, window_start, window_end" }
        ),
    }
}

/// A version's config fragment is laid over the gateway's config file: one that sets what only
/// the gateway may set, or that does not fit its config, is refused while the old version runs
/// on; a good one reaches the config the pipelines run with and survives a restart; a version
/// without one takes it away.
#[test]
fn a_fleet_config_fragment_reaches_the_gateway_and_a_bad_one_is_refused() {
    let c = Central::start(1);
    c.pki.issue("ops", &[], false);
    let rt = hub_side::runtime();
    let ops = hub_client(&rt, &c, "ops", c.dir.path()).unwrap();
    let (gw, mut cmd) = fleet_gateway(&c, "gw-1", "plant-a");
    let log = gw.join("eddyd.log");
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    cmd.env("EDDY_LOG", "info").stderr(log_file);
    let restarts = || std::fs::read_to_string(&log).unwrap().matches("pipeline changed: restarted").count();
    let mut g = Killed(cmd.spawn().unwrap());
    let eddyctl = |what: &str| {
        Command::new(hub_side::eddyctl_binary()).arg("--socket").arg(gw.join("control.sock")).arg(what).output()
    };
    let config_of = || {
        let out = eddyctl("config").unwrap();
        assert!(out.status.success(), "eddyctl config: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let put = |config: &str| {
        rt.block_on(ops.put_desired("plant-a", vec![fleet_pipeline("v1", false)], config, "", false)).unwrap()
    };
    let kept = gw.join("state/fleet/config.toml");

    let good = "[checkpoint]\ninterval_ms = 321\n[mqtt]\nclient_id_prefix = 'fleet-'\n";
    let v1 = put(good);
    await_report(&rt, &ops, "gw-1", "running v1", |a| a.applied_version == v1.version && runs(a, &["stats"]));
    let text = config_of();
    assert!(text.contains("interval_ms = 321") && text.contains("client_id_prefix = \"fleet-\""), "{text}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), good);

    // What stays the gateway's own, and what does not fit its config, is refused.
    let v2 = put("[api]\nsocket = '/tmp/elsewhere.sock'\n");
    let a = await_report(&rt, &ops, "gw-1", "refusing v2", |a| a.rejected_version == v2.version);
    assert!(a.rejected_reason.contains("[api] cannot be set by the fleet"), "{}", a.rejected_reason);
    assert!(a.applied_version == v1.version && runs(&a, &["stats"]), "{a:?}");
    let v3 = put("[checkpoint]\ninterval_msec = 5\n");
    let a = await_report(&rt, &ops, "gw-1", "refusing v3", |a| a.rejected_version == v3.version);
    assert!(a.rejected_reason.contains("interval_msec"), "{}", a.rejected_reason);
    assert!(a.applied_version == v1.version && runs(&a, &["stats"]), "{a:?}");
    assert!(config_of().contains("interval_ms = 321"));

    // A restart reads the kept fragment with the config file.
    let _ = g.0.kill();
    let _ = g.0.wait();
    g = Killed(cmd.spawn().unwrap());
    let t0 = Instant::now();
    while !gw.join("control.sock").exists() || eddyctl("status").map_or(true, |o| !o.status.success()) {
        assert!(t0.elapsed() < Duration::from_secs(30), "gw-1 did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(config_of().contains("interval_ms = 321"));

    // A version without a fragment takes it away: the pipeline, whose SQL is the same, restarts
    // with the file's settings.
    assert_eq!(restarts(), 0, "nothing restarted a pipeline so far");
    let v4 = put("");
    await_report(&rt, &ops, "gw-1", "running v4", |a| a.applied_version == v4.version && runs(a, &["stats"]));
    let text = config_of();
    assert!(!text.contains("interval_ms = 321") && !text.contains("client_id_prefix"), "{text}");
    assert!(!kept.exists());
    assert_eq!(restarts(), 1, "the pipeline restarts once with its new settings");
    drop(g);
}

/// A gateway of `group`: no pipeline of its own, a state dir, the fleet agent on.
fn fleet_gateway(c: &Central, name: &str, group: &str) -> (PathBuf, Command) {
    let gw = c.gateway(name, 1, 10);
    let mut toml = std::fs::read_to_string(gw.join("eddyd.toml")).unwrap();
    toml.push_str(&format!("[hub.fleet]\ngroup = '{group}'\n"));
    std::fs::write(gw.join("eddyd.toml"), toml).unwrap();
    let mut cmd = Command::new(EDDYD);
    cmd.current_dir(&gw)
        .args(["run", "--config", "eddyd.toml", "--state-dir", "state", "--key-file", "state.key"])
        .env("EDDY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    (gw, cmd)
}

/// Waits until `gateway`'s report satisfies `ok`; returns it.
fn await_report(
    rt: &tokio::runtime::Runtime,
    ops: &HubClient,
    gateway: &str,
    what: &str,
    ok: impl Fn(&v1::ActualState) -> bool,
) -> v1::ActualState {
    let t0 = Instant::now();
    loop {
        let r = rt.block_on(ops.fleet_status("")).unwrap();
        if let Some(a) = r.gateways.iter().find(|a| a.gateway == gateway && ok(a)) {
            return a.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{gateway}: not {what} after 60 s: {:?}", r.gateways);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runs(a: &v1::ActualState, names: &[&str]) -> bool {
    let mut got: Vec<&str> = a.pipelines.iter().filter(|p| p.state == "running").map(|p| p.name.as_str()).collect();
    got.sort_unstable();
    got == names
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rollout to a group reaches every member and only them; a version with a bad pipeline is
/// refused on the gateways (reported, the old version keeps running); a gateway that was off
/// during the rollout catches up when it starts; a rollback is a new version everyone applies;
/// a restart keeps what was applied. Only operators may deploy or read the fleet.
#[test]
fn a_fleet_rollout_reaches_its_group_refuses_bad_sql_and_catches_up_a_gateway_that_was_off() {
    let c = Central::start(1);
    c.pki.issue("ops", &[], false);
    let rt = hub_side::runtime();
    let ops = hub_client(&rt, &c, "ops", c.dir.path()).unwrap();
    let (gw1_dir, mut cmd1) = fleet_gateway(&c, "gw-1", "plant-a");
    let (_gw2, mut cmd2) = fleet_gateway(&c, "gw-2", "plant-a");
    let (_gw3, mut cmd3) = fleet_gateway(&c, "gw-3", "plant-b");
    let mut g1 = Killed(cmd1.spawn().unwrap());
    let _g3 = Killed(cmd3.spawn().unwrap());

    // A gateway may not deploy.
    let gw = hub_client(&rt, &c, "gw-3", c.dir.path()).unwrap();
    let e = rt.block_on(gw.put_desired("plant-a", vec![fleet_pipeline("x", false)], "", "", false)).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert_eq!(rt.block_on(gw.fleet_status("")).unwrap_err().code(), Code::PermissionDenied);

    let v1 = rt.block_on(ops.put_desired("plant-a", vec![fleet_pipeline("v1", false)], "", "first", false)).unwrap();
    assert_eq!(v1.version, 1);
    await_report(&rt, &ops, "gw-1", "running v1", |a| a.applied_version == 1 && runs(a, &["stats"]));
    let other = await_report(&rt, &ops, "gw-3", "reporting", |_| true);
    assert_eq!((other.applied_version, other.pipelines.len()), (0, 0), "another group's gateway got it");

    // A bad pipeline: refused, reported, the old version keeps running.
    let v2 = rt.block_on(ops.put_desired("plant-a", vec![fleet_pipeline("v2", true)], "", "broken", false)).unwrap();
    let a = await_report(&rt, &ops, "gw-1", "refusing v2", |a| a.rejected_version == v2.version);
    assert_eq!(a.applied_version, 1);
    assert!(a.rejected_reason.contains("no_such_table"), "{}", a.rejected_reason);
    assert!(runs(&a, &["stats"]), "{a:?}");

    // A changed query cannot continue from the running state: refused unless the version says
    // to start afresh; then applied, with a second pipeline.
    let mut alerts = fleet_pipeline("v3", false);
    alerts.name = "alerts".into();
    let both = vec![fleet_pipeline("v3", false), alerts];
    let v3 = rt.block_on(ops.put_desired("plant-a", both.clone(), "", "", false)).unwrap();
    let a = await_report(&rt, &ops, "gw-1", "refusing v3", |a| a.rejected_version == v3.version);
    assert!(a.rejected_reason.contains("different version") && runs(&a, &["stats"]), "{a:?}");
    let v3 = rt.block_on(ops.put_desired("plant-a", both, "", "", true)).unwrap();
    await_report(&rt, &ops, "gw-1", "running v3", |a| a.applied_version == v3.version && runs(a, &["alerts", "stats"]));

    // gw-2 was off during all this: it starts, and goes straight to the newest version.
    let _g2 = Killed(cmd2.spawn().unwrap());
    let a = await_report(&rt, &ops, "gw-2", "caught up", |a| a.applied_version == v3.version);
    assert!(runs(&a, &["alerts", "stats"]) && a.rejected_version == 0, "{a:?}");

    // Back to version 1: a new version; `alerts` goes away on both.
    let v5 = rt.block_on(ops.rollback_desired("plant-a", 1, true)).unwrap();
    assert_eq!((v5.version, v5.rolled_back_to), (5, 1));
    for g in ["gw-1", "gw-2"] {
        await_report(&rt, &ops, g, "back on v1's pipelines", |a| a.applied_version == 5 && runs(a, &["stats"]));
    }

    // A restart keeps the applied version and its pipelines (deployed under the state dir).
    let _ = g1.0.kill();
    let _ = g1.0.wait();
    let before = rt.block_on(ops.fleet_status("plant-a")).unwrap();
    let seen = before.gateways.iter().find(|a| a.gateway == "gw-1").unwrap().reported_ms;
    g1 = Killed(cmd1.spawn().unwrap());
    await_report(&rt, &ops, "gw-1", "back after a restart", |a| {
        a.reported_ms > seen && a.applied_version == 5 && runs(a, &["stats"])
    });

    // What an operator sees.
    let eddyctl = |args: &[&str]| {
        let out = Command::new(hub_side::eddyctl_binary())
            .args(["--hub", &c.hubs[0].addr, "--server-name", "localhost"])
            .arg("--ca")
            .arg(c.dir.path().join("fleet-ca.pem"))
            .arg("--cert")
            .arg(c.dir.path().join("ops.pem"))
            .arg("--key")
            .arg(c.dir.path().join("ops.key"))
            .current_dir(c.dir.path())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, text, err) = eddyctl(&["fleet", "status", "--group", "plant-a"]);
    assert_eq!(code, Some(0), "eddyctl fleet status: {err}");
    assert!(text.contains("gw-1") && text.contains("gw-2") && !text.contains("gw-3"), "{text}");
    assert!(text.contains("newest version 5"), "{text}");

    // The group's history: each version, who made it, what it changed against the one before.
    let (code, text, err) = eddyctl(&["fleet", "history", "--group", "plant-a"]);
    assert_eq!(code, Some(0), "eddyctl fleet history: {err}");
    let row = |v: &str| text.lines().find(|l| l.starts_with(&format!("{v} "))).unwrap_or_default().to_string();
    assert!(row("1").contains("first version") && row("1").contains("first"), "{text}");
    assert!(row("2").contains("changes stats") && row("2").contains("broken"), "{text}");
    assert!(row("3").contains("adds alerts; changes stats"), "{text}");
    assert!(row("4").contains("no change"), "{text}");
    assert!(row("5").contains("removes alerts") && row("5").contains("rollback to version 1"), "{text}");
    assert!(row("1").contains(" ops "), "the operator who made it: {text}");
    // A version whole, and one pipeline's SQL as a file to deploy again.
    let (code, text, _) = eddyctl(&["fleet", "show", "--group", "plant-a", "--version", "1", "--pipeline", "stats"]);
    assert_eq!((code, text.as_str()), (Some(0), fleet_pipeline("v1", false).sql.as_str()));
    let (code, text, _) = eddyctl(&["fleet", "show", "--group", "plant-a", "--version", "3"]);
    assert!(code == Some(0) && text.contains("-- pipeline alerts") && text.contains("-- pipeline stats"), "{text}");
    let (code, _, err) = eddyctl(&["fleet", "show", "--group", "plant-a", "--pipeline", "alerts"]);
    assert!(code == Some(5) && err.contains("has no pipeline alerts (it has: stats)"), "{err}");
    // A deploy says what it changes.
    std::fs::write(c.dir.path().join("stats.sql"), fleet_pipeline("v1", false).sql).unwrap();
    std::fs::write(c.dir.path().join("extra.sql"), fleet_pipeline("v6", false).sql.replace("counts", "extra")).unwrap();
    let (code, text, err) = eddyctl(&["fleet", "deploy", "stats.sql", "extra.sql", "--group", "plant-a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("version 6 (stats, extra)") && text.contains("against version 5: adds extra"), "{text}");
    // Only operators read a group's versions.
    assert_eq!(rt.block_on(gw.list_desired("plant-a", 0, 0)).unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(rt.block_on(gw.get_desired("plant-a", 1)).unwrap_err().code(), Code::PermissionDenied);
    let page = rt.block_on(ops.list_desired("plant-a", 3, 1)).unwrap();
    assert_eq!((page.versions.len(), page.versions[0].version, page.more), (1, 2, true));
    await_report(&rt, &ops, "gw-1", "running v6", |a| a.applied_version == 6 && runs(a, &["extra", "stats"]));

    // On the gateway, the fleet's pipelines are the fleet's: a local deploy or delete would be
    // undone by the next version without a word, so it is refused and says where to go.
    let local = |args: &[&str]| {
        let out = Command::new(hub_side::eddyctl_binary())
            .arg("--socket")
            .arg(gw1_dir.join("control.sock"))
            .args(args)
            .current_dir(c.dir.path())
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = local(&["deploy", "stats.sql"]);
    assert!(
        code == Some(6) && text.contains("deployed by the fleet plant-a v6") && text.contains("fleet deploy"),
        "{text}"
    );
    let (code, text) = local(&["delete", "extra", "--keep-state"]);
    assert!(code == Some(6) && text.contains("deployed by the fleet plant-a v6"), "{text}");
    let (_, text) = local(&["status"]);
    assert!(text.lines().any(|l| l.starts_with("stats") && l.contains("fleet plant-a v6")), "{text}");
    assert!(text.contains("fleet: group plant-a, version 6 applied; hub connected"), "{text}");
    // Pipelines of its own are its own.
    std::fs::write(c.dir.path().join("mine.sql"), fleet_pipeline("mine", false).sql.replace("counts", "mine")).unwrap();
    let (code, text) = local(&["deploy", "mine.sql"]);
    assert_eq!(code, Some(0), "{text}");
    // And the fleet does not take them over: a version with a pipeline of that name is refused
    // there (before, it replaced the gateway's own without a word), applied elsewhere.
    let v6 = rt.block_on(ops.get_desired("plant-a", 6)).unwrap();
    let mut v7 = v6.pipelines.clone();
    v7.push(v1::PipelineFile { name: "mine".into(), sql: v6.pipelines[1].sql.replace("extra", "fleet_mine") });
    let v7 = rt.block_on(ops.put_desired("plant-a", v7, "", "", false)).unwrap();
    let a = await_report(&rt, &ops, "gw-1", "refusing v7", |a| a.rejected_version == v7.version);
    assert!(a.rejected_reason.contains("pipeline mine: this gateway has a pipeline of that name of its own"), "{a:?}");
    assert!(a.applied_version == 6 && runs(&a, &["extra", "mine", "stats"]), "{a:?}");
    let (_, text) = local(&["status"]);
    assert!(text.contains("version 6 applied, version 7 refused: pipeline mine: this gateway has"), "{text}");
    await_report(&rt, &ops, "gw-2", "running v7", |a| a.applied_version == 7 && runs(a, &["extra", "mine", "stats"]));

    // Moved to another group, a gateway follows that group from its first version (before, it
    // waited for a version above the old group's number) and drops the old group's pipelines.
    let mut other = fleet_pipeline("b1", false);
    other.name = "other".into();
    let b1 = rt.block_on(ops.put_desired("plant-b", vec![other], "", "", false)).unwrap();
    assert_eq!(b1.version, 1);
    let _ = g1.0.kill();
    let _ = g1.0.wait();
    let toml = std::fs::read_to_string(gw1_dir.join("eddyd.toml")).unwrap().replace("'plant-a'", "'plant-b'");
    std::fs::write(gw1_dir.join("eddyd.toml"), toml).unwrap();
    g1 = Killed(cmd1.spawn().unwrap());
    let a = await_report(&rt, &ops, "gw-1", "on plant-b", |a| a.group == "plant-b" && a.applied_version == 1);
    assert!(runs(&a, &["mine", "other"]), "{a:?}");
    drop(g1);
}
