//! Shared pieces of Eddy's benchmarks: a deterministic telemetry file, peak-RSS reading, and what
//! another process used (CPU, memory, bytes written).

use std::io::Write;

pub mod mqtt;

use eddy_engine::connector::Rng;

/// Writes `rows` JSON lines of plant telemetry (`devices` devices, one reading per device per
/// second, up to 2 s of disorder) to `path`.
pub fn write_readings(path: &std::path::Path, rows: u64, devices: u32) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut rng = Rng::new(42);
    let start = 1_772_352_000_000i64;
    let step = (1000 / devices.max(1) as i64).max(1);
    for i in 0..rows {
        let dev = i % devices as u64;
        let ts = start + i as i64 * step - rng.below(2000) as i64;
        let temp = 15.0 + rng.f64() * 20.0;
        let hum = 30.0 + rng.f64() * 50.0;
        writeln!(
            w,
            "{{\"device_id\":\"dev-{dev:04}\",\"site\":\"site-{}\",\"temp\":{temp:.2},\"humidity\":{hum:.1},\"ts\":\"{}\"}}",
            dev % 7,
            eddy_engine::time::rfc3339_ms(ts)
        )?;
    }
    w.flush()
}

/// Peak resident set size of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// What process `pid` used so far, from /proc: CPU seconds (user + system), peak RSS in MiB and
/// bytes it wrote to storage.
pub fn proc_usage(pid: u32) -> (f64, f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let written =
        io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (ticks / 100.0, rss_kb / 1024.0, written)
}

/// The `eddyd` built beside the running benchmark binary (`target/release/eddyd`).
pub fn eddyd_bin() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().map(|d| d.join("eddyd")).unwrap_or_default();
    if !p.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found: build it with `cargo build --release -p eddyd`", p.display()),
        ));
    }
    Ok(p)
}

/// The `q` quantile of latencies in µs, in ms (NaN for none).
pub fn pct(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

/// Writes Nexmark events `0..cfg.events` into `dir` as `person.jsonl`, `auction.jsonl` and
/// `bid.jsonl` (the very events of the engine's `nexmark` source), plus q13's `side_input.jsonl`
/// with 10,000 keys. Returns how many events each stream got.
pub fn write_nexmark_files(
    dir: &std::path::Path,
    cfg: &eddy_engine::connector::NexmarkConfig,
) -> std::io::Result<[u64; 3]> {
    use eddy_engine::connector::{write_nexmark_event, NexmarkStream};
    std::fs::create_dir_all(dir)?;
    let open = |s: NexmarkStream| -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        let f = std::fs::File::create(dir.join(format!("{}.jsonl", s.name())))?;
        Ok(std::io::BufWriter::with_capacity(1 << 20, f))
    };
    let mut out = [open(NexmarkStream::Person)?, open(NexmarkStream::Auction)?, open(NexmarkStream::Bid)?];
    let mut counts = [0u64; 3];
    let mut line = Vec::with_capacity(1024);
    for n in 0..cfg.events.unwrap_or(0) {
        line.clear();
        let s = write_nexmark_event(cfg, cfg.start_ms, n, &mut line);
        line.push(b'\n');
        out[s as usize].write_all(&line)?;
        counts[s as usize] += 1;
    }
    for o in &mut out {
        o.flush()?;
    }
    write_nexmark_side_input(&dir.join("side_input.jsonl"), 10_000)?;
    Ok(counts)
}

/// Nexmark q13's side input: `keys` rows of `{"key": k, "value": "value-k"}`, the bounded table
/// the bids are joined with (`auction % keys`).
pub fn write_nexmark_side_input(path: &std::path::Path, keys: u64) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for k in 0..keys {
        writeln!(w, "{{\"key\": {k}, \"value\": \"value-{k}\"}}")?;
    }
    w.flush()
}
