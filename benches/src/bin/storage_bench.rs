//! Storage benchmarks on real files (`--dir` picks the filesystem, e.g. the gateway's flash):
//! WAL durable append throughput and commit latency against the group-commit delay, state
//! get/put, checkpoint time per MB, WAL recovery time per GB, and flash bytes written per input byte
//! for a durable pipeline. Prints a Markdown table; run: `cargo run --release -p eddy-benches --bin
//! storage_bench -- [--dir DIR] [--quick]`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use eddy_engine::storage::{CheckpointStore, Cipher, RealFs, Storage, Wal, WalConfig};
use eddy_engine::{DurableConfig, Mode, Pipeline, PipelineConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("eddy-storage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
    let cipher = Arc::new(Cipher::from_keys(&[(1, [7u8; 32])])?);
    println!("WAL I/O: {}; encryption: AES-256-GCM; dir: {}\n", storage.backend(), work.display());

    println!("| group-commit delay | records/s (512 B) | MB/s | commit p50 | commit p99 | records per fsync |");
    println!("|---|---|---|---|---|---|");
    for delay_us in [0u64, 1_000, 5_000, 20_000] {
        let dir = work.join(format!("wal-{delay_us}"));
        let mut cfg = WalConfig::new(&dir);
        cfg.commit_delay = Duration::from_micros(delay_us);
        let mut wal = Wal::open(storage.clone(), cipher.clone(), cfg)?;
        let rec = vec![0x5au8; 512];
        let run = Duration::from_millis(if quick { 300 } else { 2_000 });
        let mut pending: Vec<Instant> = Vec::new();
        let mut lat: Vec<u64> = Vec::new();
        let t0 = Instant::now();
        // Records arrive back to back; a commit covers all pending ones.
        while t0.elapsed() < run {
            wal.append(&rec)?;
            pending.push(Instant::now());
            let before = wal.durable_lsn();
            if wal.maybe_commit()? > before {
                let now = Instant::now();
                lat.extend(pending.drain(..).map(|t| (now - t).as_micros() as u64));
            }
        }
        wal.commit()?;
        let secs = t0.elapsed().as_secs_f64();
        lat.sort_unstable();
        let q = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
        let n = wal.stats.records as f64;
        println!(
            "| {} ms | {:.0} | {:.1} | {} µs | {} µs | {:.0} |",
            delay_us as f64 / 1000.0,
            n / secs,
            wal.stats.payload_bytes as f64 / secs / 1e6,
            q(0.5),
            q(0.99),
            n / wal.stats.commits.max(1) as f64
        );
        std::fs::remove_dir_all(&dir)?;
    }

    // Operator state lives in memory: keyed group lookup/insert is its get/put.
    let mut index = std::collections::HashMap::<Box<[u8]>, u32, ahash::RandomState>::default();
    let keys: Vec<Vec<u8>> = (0..1_000_000u32).map(|i| format!("device-{i:08}").into_bytes()).collect();
    let t = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        index.insert(k.as_slice().into(), i as u32);
    }
    let put = t.elapsed().as_nanos() as f64 / keys.len() as f64;
    let t = Instant::now();
    let mut hits = 0u64;
    for k in &keys {
        hits += index.get(k.as_slice()).copied().unwrap_or(0) as u64 & 1;
    }
    let get = t.elapsed().as_nanos() as f64 / keys.len() as f64;
    println!("\nstate put: {put:.0} ns, get: {get:.0} ns (1M keys; {hits} odd)");

    // Checkpoints: full, then incremental with one blob in ten changed.
    let mb = if quick { 16 } else { 64 };
    let blobs: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("node/{i}"), (0..mb * 1024 * 1024 / 10).map(|j| (j * 7 + i) as u8).collect()))
        .collect();
    let (mut store, _) = CheckpointStore::open(storage.clone(), cipher.clone(), &work.join("ckpt"))?;
    let t = Instant::now();
    let full = store.write(0, b"fp", vec![], &blobs)?;
    let full_t = t.elapsed();
    let mut changed = blobs.clone();
    changed[3].1[0] ^= 1;
    let t = Instant::now();
    let inc = store.write(1, b"fp", vec![], &changed)?;
    let inc_t = t.elapsed();
    let t = Instant::now();
    let (_, rec) = CheckpointStore::open(storage.clone(), cipher.clone(), &work.join("ckpt"))?;
    let load_t = t.elapsed();
    assert!(rec.is_some());
    println!(
        "checkpoint: full {mb} MB in {:.0} ms ({:.1} ms/MB); incremental (1 of 10 blobs changed) wrote {:.1} MB in {:.0} ms; load {:.1} ms/MB",
        full_t.as_secs_f64() * 1e3,
        full_t.as_secs_f64() * 1e3 / mb as f64,
        inc.bytes_written as f64 / 1e6,
        inc_t.as_secs_f64() * 1e3,
        load_t.as_secs_f64() * 1e3 / mb as f64
    );
    let _ = full;

    // Recovery: open (scan every frame) and replay (decrypt every record).
    let wal_mb = if quick { 64 } else { 512 };
    let dir = work.join("wal-recovery");
    let mut wal = Wal::open(storage.clone(), cipher.clone(), WalConfig::new(&dir))?;
    let rec = vec![0x33u8; 64 * 1024];
    for _ in 0..wal_mb * 16 {
        wal.append(&rec)?;
        wal.maybe_commit()?;
    }
    wal.commit()?;
    drop(wal);
    let t = Instant::now();
    let wal = Wal::open(storage.clone(), cipher.clone(), WalConfig::new(&dir))?;
    let mut bytes = 0u64;
    wal.replay(0, &mut |_, p| {
        bytes += p.len() as u64;
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "recovery: {wal_mb} MB of WAL opened and replayed in {secs:.2} s = {:.1} s/GB (page cache warm)",
        secs * 1024.0 / wal_mb as f64
    );
    std::fs::remove_dir_all(&dir)?;

    flash_per_input(&work, storage, cipher, if quick { 100_000 } else { 1_000_000 })?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// A per-minute aggregate over a file source, durable: bytes written to flash per input byte.
fn flash_per_input(work: &Path, storage: Arc<dyn Storage>, cipher: Arc<Cipher>, rows: usize) -> Result<()> {
    let dir = work.join("pipeline");
    std::fs::create_dir_all(&dir)?;
    let mut input = String::new();
    for i in 0..rows {
        input.push_str(&format!(
            "{{\"device_id\": \"dev-{:03}\", \"temp\": {}.5, \"ts\": {}}}\n",
            i % 500,
            i % 40,
            1_700_000_000_000i64 + i as i64 * 10
        ));
    }
    std::fs::write(dir.join("in.jsonl"), &input)?;
    let sql = "CREATE SOURCE r (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
        WITH (connector = 'file', path = 'in.jsonl');
      CREATE SINK m AS SELECT device_id, window_start, COUNT(*) AS n, AVG(temp) AS t FROM TUMBLE(r, ts, INTERVAL '60' SECOND)
        GROUP BY device_id, window_start, window_end WITH (connector = 'file', path = 'out.jsonl');";
    let mut cfg = PipelineConfig::new(&dir, Mode::Live);
    cfg.exactly_once = true;
    let mut p = Pipeline::plan(sql, &cfg)?;
    let mut d = DurableConfig::new(dir.join("state"), storage, cipher);
    d.checkpoint_interval = Duration::from_secs(1);
    p.open_durable(sql, d)?;
    let t = Instant::now();
    p.run_live(&AtomicBool::new(false))?;
    let secs = t.elapsed().as_secs_f64();
    let s = p.durable_stats().ok_or_else(|| anyhow::anyhow!("not durable"))?;
    let out = std::fs::metadata(dir.join("out.jsonl"))?.len();
    let written = s.wal.file_bytes + s.checkpoint_bytes + out;
    println!(
        "durable pipeline: {rows} rows ({:.1} MB JSON) in {secs:.2} s = {:.0} rows/s; flash written: WAL {:.1} MB + checkpoints {:.1} MB ({} of them) + sink {:.2} MB = {:.2} bytes per input byte",
        input.len() as f64 / 1e6,
        rows as f64 / secs,
        s.wal.file_bytes as f64 / 1e6,
        s.checkpoint_bytes as f64 / 1e6,
        s.checkpoints,
        out as f64 / 1e6,
        written as f64 / input.len() as f64
    );
    Ok(())
}
