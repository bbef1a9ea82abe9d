//! What keeping materialized views for on-demand queries costs a pipeline, and how long a query
//! takes: the same pipeline (three views over 1,000 devices — counts per device, 10-second
//! windows, a filter — and a sink) replayed over generated readings with views not kept
//! (`view_bytes = 0`) and kept (4 MiB each), alternating, then queries over the kept views.
//!
//!   view_query_cost [ROWS] [RUNS]

use std::time::Instant;

use anyhow::{Context, Result};
use eddy_engine::query::parse_query;
use eddy_engine::query::{self, QueryLimits, ViewInput};
use eddy_engine::Limits;
use eddy_engine::{Mode, Pipeline, PipelineConfig};

const SQL: &str = "
CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
WITH (connector = 'datagen', shape = 'iot', seed = '1', rows = '{ROWS}', devices = '1000', interval = '1ms');
CREATE MATERIALIZED VIEW per_device AS
  SELECT device_id, COUNT(*) AS n, AVG(temp) AS avg_temp, MAX(temp) AS max_temp FROM readings GROUP BY device_id;
CREATE MATERIALIZED VIEW per_10s AS
  SELECT device_id, window_end, AVG(temp) AS avg_temp FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
  GROUP BY device_id, window_start, window_end;
CREATE MATERIALIZED VIEW hot AS SELECT device_id, temp, ts FROM readings WHERE temp > 30;
CREATE SINK s AS SELECT * FROM per_10s WITH (connector = 'file', path = '/dev/null', format = 'json');
";

const QUERIES: [&str; 3] = [
    "SELECT device_id, n, avg_temp FROM per_device ORDER BY avg_temp DESC LIMIT 10",
    "SELECT COUNT(*) AS devices, AVG(avg_temp) AS mean FROM per_10s",
    "SELECT device_id, MAX(temp) AS hottest FROM hot GROUP BY device_id ORDER BY hottest DESC LIMIT 5",
];

fn run(rows: u64, view_bytes: usize) -> Result<(f64, Pipeline)> {
    let mut cfg = PipelineConfig::new(".", Mode::Replay);
    cfg.view_bytes = view_bytes;
    let mut p = Pipeline::plan(&SQL.replace("{ROWS}", &rows.to_string()), &cfg)?;
    let t0 = Instant::now();
    p.run_to_end()?;
    Ok((t0.elapsed().as_secs_f64(), p))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows: u64 = args.get(1).map(|s| s.parse()).transpose().context("ROWS")?.unwrap_or(2_000_000);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose().context("RUNS")?.unwrap_or(3);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut kept = None;
    for _ in 0..runs {
        off.push(run(rows, 0)?.0);
        let (s, p) = run(rows, 4 << 20)?;
        on.push(s);
        kept = Some(p);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let (a, b) = (best(&off), best(&on));
    println!("{rows} rows, best of {runs}:");
    println!("  views not kept: {:.3} s ({:.0} rows/s)", a, rows as f64 / a);
    println!("  views kept:     {:.3} s ({:.0} rows/s), {:+.1}%", b, rows as f64 / b, (b / a - 1.0) * 100.0);
    let Some(p) = kept else { return Ok(()) };
    for v in p.views() {
        println!("  view {}: {} bytes kept", v.name(), v.bytes());
    }
    for q in QUERIES {
        let parsed = parse_query(q)?;
        let reads = query::relations(&parsed);
        let mut times = Vec::new();
        let mut answer_rows = 0;
        for _ in 0..20 {
            let t0 = Instant::now();
            let views = p
                .views()
                .iter()
                .filter(|v| reads.iter().any(|r| r == v.name()))
                .map(|v| Ok(ViewInput { name: v.name().to_string(), rows: v.rows()? }))
                .collect::<Result<Vec<_>>>()?;
            let limits = QueryLimits { max_rows: 10_000, max_bytes: 16 << 20, operators: Limits::default() };
            answer_rows = query::run(&parsed, views, limits)?.batch.num_rows();
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  query ({answer_rows} rows) median {:.2} ms, max {:.2} ms: {q}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    Ok(())
}
