//! The hub at fleet scale: `--gateways` simulated gateways (each its own certificate and
//! connection) push batches of aggregate rows to one `eddy-hub` in front of a SeaweedFS S3 store,
//! side by side with the same writers putting objects of the same size straight into the store.
//! Reports sustained rows/s, objects/s, push latency and the hub's CPU and peak RSS.
//!
//! `bash scripts/object-store.sh && cargo build --release --workspace --bin eddy-hub --bin hub_load
//! && target/release/hub_load [--gateways 100] [--batches 20] [--rows 500]`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use eddy_benches::{pct, proc_usage};
use eddy_client::{v1, HubClient, Target, Timeouts, TlsFiles};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Loopback ports outside the ephemeral range (SeaweedFS opens many connections before it binds).
#[path = "../../../daemon/tests/support/ports.rs"]
mod ports;
use ports::free_port;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One batch of per-site aggregate rows, as a gateway's hub sink sends it.
fn batch_ipc(rows: usize) -> Result<Vec<u8>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("site", DataType::Utf8, true),
        Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("n", DataType::Int64, true),
        Field::new("avg_temp", DataType::Float64, true),
        Field::new("max_temp", DataType::Float64, true),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("site-{:03}", i % 200)))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..rows).map(|i| 1_764_547_200_000 + i as i64 * 60_000),
            )),
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| 600 + (i % 17) as i64))),
            Arc::new(Float64Array::from_iter_values((0..rows).map(|i| 20.0 + (i % 100) as f64 / 10.0))),
            Arc::new(Float64Array::from_iter_values((0..rows).map(|i| 30.0 + (i % 50) as f64 / 10.0))),
        ],
    )?;
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
    w.write(&b)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new("openssl").current_dir(dir).args(args).stderr(Stdio::null()).status()?;
    if !st.success() {
        bail!("openssl {args:?} failed");
    }
    Ok(())
}

/// A CA, the hub's certificate and one per gateway (CN gw-<i>).
fn make_pki(dir: &Path, gateways: usize) -> Result<()> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-days", "2", "-subj", "/CN=bench CA", "-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca)?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")?;
    let names: Vec<String> =
        std::iter::once("hub".to_string()).chain((0..gateways).map(|i| format!("gw-{i}"))).collect();
    for n in &names {
        let (key, csr, pem, subj) = (format!("{n}.key"), format!("{n}.csr"), format!("{n}.pem"), format!("/CN={n}"));
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
                .into_iter()
                .chain(["-extfile", "san.ext", "-out", &pem])
                .collect::<Vec<_>>(),
        )?;
    }
    Ok(())
}

fn start_store(dir: &Path, weed: &Path) -> Result<(Proc, u16)> {
    std::fs::write(
        dir.join("s3.json"),
        r#"{"identities":[{"name":"b","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List"]}]}"#,
    )?;
    std::fs::create_dir_all(dir.join("s3data"))?;
    let s3 = free_port();
    let port = |flag: &str| format!("-{flag}={}", free_port());
    let child = Command::new(weed)
        .current_dir(dir)
        .args(["server", "-dir=s3data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", "-s3.port.iceberg=0"])
        .args(["-s3.port.lance=0", "-s3.config=s3.json", "-volume.max=16", "-master.volumeSizeLimitMB=256"])
        .args(["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"].map(port))
        .args(["filer.port.grpc", "s3.port.grpc"].map(port))
        .arg(format!("-s3.port={s3}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("weed.log"))?)
        .spawn()
        .context("start weed (run scripts/object-store.sh)")?;
    Ok((Proc(child), s3))
}

fn store(s3: u16) -> Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name("eddy")
            .with_endpoint(format!("http://127.0.0.1:{s3}"))
            .with_region("us-east-1")
            .with_access_key_id("bench")
            .with_secret_access_key("bench-secret")
            .with_allow_http(true)
            .build()?,
    ))
}

/// Latencies in µs of every operation, and the wall time of the whole phase.
type Phase = (Vec<u64>, Duration);

/// `gateways` tasks each doing `batches` operations in sequence.
async fn run_phase<F, Fut>(gateways: usize, batches: u64, op: F) -> Result<Phase>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for g in 0..gateways {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for b in 0..batches {
                let t = Instant::now();
                op(g, b).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, t0.elapsed()))
}

fn report(what: &str, (mut lat, wall): Phase, rows: u64, bytes: usize) {
    let n = lat.len() as f64;
    let s = wall.as_secs_f64();
    println!(
        "{what:<34} {:>10.0} rows/s {:>8.0} objects/s {:>7.1} MB/s   p50 {:>6.1} ms  p99 {:>6.1} ms",
        n * rows as f64 / s,
        n / s,
        n * bytes as f64 / s / 1e6,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let gateways = arg("--gateways", 100) as usize;
    let batches = arg("--batches", 20);
    let rows = arg("--rows", 500);
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("no binary dir")?.to_path_buf();
    let weed: PathBuf = bin_dir.join("../pyenv/bin/weed");
    let dir = std::env::temp_dir().join(format!("eddy-hub-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("certificates for {gateways} gateways...");
    make_pki(&dir, gateways)?;
    let (_store_proc, s3) = start_store(&dir, &weed)?;
    let st = store(s3)?;
    let probe = object_store::path::Path::from("probe");
    let t0 = Instant::now();
    while st.put(&probe, PutPayload::from_static(b"x")).await.is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the store did not come up; see {}", dir.join("weed.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hub_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("hub.toml"),
        format!(
            "listen = '{hub_addr}'\n[tls]\ncert = 'hub.pem'\nkey = 'hub.key'\nclient_ca = 'ca.pem'\n[store]\nurl = 's3://eddy'\nendpoint = 'http://127.0.0.1:{s3}'\nregion = 'us-east-1'\nallow_http = true\n"
        ),
    )?;
    let mut hub = Proc(
        Command::new(bin_dir.join("eddy-hub"))
            .arg("--config")
            .arg(dir.join("hub.toml"))
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
            .env("EDDY_HUB_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("start eddy-hub (cargo build --release --workspace --bin eddy-hub)")?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hub.0.stdout.take().context("stdout")?), &mut line)?;
    let hub_pid = hub.0.id();

    let ipc = Arc::new(batch_ipc(rows as usize)?);
    let bytes = ipc.len();
    println!("{gateways} gateways x {batches} batches of {rows} rows ({bytes} bytes of Arrow IPC each), one hub, SeaweedFS 4.48 on loopback, {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));

    // The store alone: the same writers PUT objects of the same size straight into the bucket.
    let direct = {
        let (st, ipc) = (st.clone(), ipc.clone());
        run_phase(gateways, batches, move |g, b| {
            let (st, ipc) = (st.clone(), ipc.clone());
            async move {
                let path = object_store::path::Path::from(format!("direct/gw-{g}/{b:020}"));
                st.put(&path, PutPayload::from(ipc.as_ref().clone())).await?;
                Ok(())
            }
        })
        .await?
    };

    // Through eddy-hub: each gateway its own mutual-TLS connection.
    let mut clients = Vec::new();
    for g in 0..gateways {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("gw-{g}.pem")),
            key: dir.join(format!("gw-{g}.key")),
            server_name: Some("localhost".into()),
        };
        let target = Target::Tls { address: hub_addr.clone(), files };
        clients.push(HubClient::connect(&target, Timeouts::default()).await?);
    }
    let clients = Arc::new(clients);
    let (cpu0, _, _) = proc_usage(hub_pid);
    let through_hub = {
        let ipc = ipc.clone();
        run_phase(gateways, batches, move |g, b| {
            let (clients, ipc) = (clients.clone(), ipc.clone());
            async move {
                let req = v1::PushRowsRequest {
                    stream: "plant_stats".into(),
                    outbox_id: g as u64 + 1,
                    first_seq: b * rows,
                    last_seq: (b + 1) * rows - 1,
                    date: "2026-12-01".into(),
                    arrow_ipc: ipc.as_ref().clone(),
                };
                let r = clients[g].push_rows(req).await?;
                if r.already_stored {
                    bail!("batch {b} of gw-{g} was already stored");
                }
                Ok(())
            }
        })
        .await?
    };
    let (cpu1, rss, _) = proc_usage(hub_pid);
    let wall = through_hub.1.as_secs_f64();
    report("S3 store alone (PUT, no hub)", direct, rows, bytes);
    report("through eddy-hub (mTLS, Parquet)", through_hub, rows, bytes);
    println!(
        "eddy-hub: {:.1} CPU s over {:.1} s ({:.0}% of one core), peak RSS {:.0} MiB",
        cpu1 - cpu0,
        wall,
        (cpu1 - cpu0) / wall * 100.0,
        rss
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
