//! Management API under load: a pipeline's throughput with no API clients, then with `--clients`
//! concurrent clients (each its own connection) calling `Status` in a loop while `--tappers` of
//! them tail a sink, then with none again; the API's latency under that load.
//!
//! `cargo build --release --workspace && target/release/api_load [--seconds 20] [--clients 50]
//! [--tappers 10]`. On a machine with 2+ cores the pipeline is pinned to the last core (`cores`),
//! as on a gateway; eddyd keeps its API thread off it, and the clients run on the other cores.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_benches::{eddyd_bin, pct, proc_usage};
use eddy_client::{v1, Client, Target, Timeouts};

const SQL: &str = "CREATE SOURCE readings (device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE,
    ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'datagen', shape = 'iot', devices = '100', seed = '11');
CREATE SINK per_device AS
  SELECT device_id, window_start, COUNT(*) AS n, AVG(temp) AS avg_temp, MAX(temp) AS max_temp
  FROM TUMBLE(readings, ts, INTERVAL '10' SECOND) GROUP BY device_id, window_start
  WITH (connector = 'file', path = 'per_device.jsonl');
CREATE SINK hot AS SELECT device_id, temp, ts FROM readings WHERE temp > 31.5
  WITH (connector = 'file', path = 'hot.jsonl');
";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn rows_in(c: &Client) -> Result<u64> {
    let s = c.status(v1::StatusRequest {}).await?;
    let p = s.pipelines.iter().find(|p| p.name == "load").context("pipeline 'load' is gone")?;
    if p.state != "running" {
        bail!("pipeline is {}: {}", p.state, p.error);
    }
    Ok(p.sources.iter().map(|s| s.rows).sum())
}

/// Rows per second over `secs`, measured by two Status calls.
async fn rate(c: &Client, secs: u64) -> Result<f64> {
    let (r0, t0) = (rows_in(c).await?, Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (r1, t1) = (rows_in(c).await?, Instant::now());
    Ok((r1 - r0) as f64 / (t1 - t0).as_secs_f64())
}

fn main() -> Result<()> {
    let secs = arg("--seconds", 20);
    let clients = arg("--clients", 50) as usize;
    let tappers = (arg("--tappers", 10) as usize).min(clients);
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    let work = std::env::temp_dir().join(format!("eddy-api-load-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let eddyd = eddyd_bin()?;
    let key = std::process::Command::new(&eddyd).arg("keygen").output()?.stdout;
    std::fs::write(work.join("state.key"), key)?;
    std::process::Command::new("chmod").args(["600"]).arg(work.join("state.key")).status()?;
    let pin = if cores > 1 { format!("cores = [{}]\n", cores - 1) } else { String::new() };
    std::fs::write(
        work.join("eddyd.toml"),
        format!("state_dir = \"state\"\nshards = 1\n{pin}[encryption]\nkey_file = \"state.key\"\n[api]\nsocket = \"ctl.sock\"\n"),
    )?;
    let mut child = std::process::Command::new(&eddyd)
        .args(["run", "--config", "eddyd.toml"])
        .current_dir(&work)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.join("eddyd.log"))?)
        .spawn()?;
    let pid = child.id();
    if cores > 1 {
        // The clients run off the pipeline's core too (the runtime's threads inherit this).
        std::process::Command::new("taskset")
            .args(["-p", "-c", &format!("0-{}", cores - 2), &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status()?;
    }
    let target = Target::Unix(work.join("ctl.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(async {
        let t0 = Instant::now();
        let c = loop {
            match Client::connect(&target, Timeouts::default()).await {
                Ok(c) => break c,
                Err(_) if t0.elapsed() < Duration::from_secs(30) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e.into()),
            }
        };
        c.deploy(v1::DeployRequest { name: "load".into(), sql: SQL.into(), reset_state: false }).await?;
        tokio::time::sleep(Duration::from_secs(5)).await; // warm-up
        let base_before = rate(&c, secs).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
        let (tapped, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        let load_start = Instant::now();
        for i in 0..clients {
            let (target, stop, lat) = (target.clone(), stop.clone(), latencies.clone());
            let (tapped, dropped) = (tapped.clone(), dropped.clone());
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(&target, Timeouts::default()).await?;
                if i < tappers {
                    let req = v1::TapRequest {
                        pipeline: "load".into(),
                        sink: "hot".into(),
                        max_rows: 1_000_000,
                        max_seconds: secs as u32 + 5,
                        ..Default::default()
                    };
                    let mut s = c.tap(req).await?;
                    while !stop.load(Ordering::Relaxed) {
                        match c.next_tap_event(&mut s).await? {
                            Some(ev) => {
                                tapped.fetch_add(ev.rows.len() as u64, Ordering::Relaxed);
                                dropped.fetch_max(ev.dropped_rows, Ordering::Relaxed);
                            }
                            None => break,
                        }
                    }
                } else {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        c.status(v1::StatusRequest {}).await?;
                        lat.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed().as_micros() as u64);
                    }
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = proc_usage(pid).0;
        let loaded = rate(&c, secs).await?;
        let cpu_loaded = proc_usage(pid).0 - cpu0;
        stop.store(true, Ordering::Relaxed);
        let load_secs = load_start.elapsed().as_secs_f64();
        for t in tasks {
            t.await??;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let base_after = rate(&c, secs).await?;
        let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
        let calls = lat.len();
        let base = (base_before + base_after) / 2.0;
        println!(
            "{clients} clients ({} calling Status in a loop, {tappers} tailing the `hot` sink), {secs} s per phase, {cores} cores{}\n",
            clients - tappers,
            if cores > 1 { format!(", pipeline pinned to core {}", cores - 1) } else { String::new() }
        );
        println!("| phase | pipeline rows/s | vs no clients | Status calls/s | Status p50 | Status p99 | tapped rows | rows lost by slow viewers | eddyd CPU s |");
        println!("|---|---|---|---|---|---|---|---|---|");
        println!("| no clients (before) | {base_before:.0} | — | — | — | — | — | — | — |");
        println!(
            "| {clients} clients | {loaded:.0} | {:+.1}% | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {cpu_loaded:.1} |",
            (loaded / base - 1.0) * 100.0,
            calls as f64 / load_secs,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            tapped.load(Ordering::Relaxed),
            dropped.load(Ordering::Relaxed)
        );
        println!("| no clients (after) | {base_after:.0} | — | — | — | — | — | — | — |");
        Ok::<_, anyhow::Error>(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&work);
    r
}
