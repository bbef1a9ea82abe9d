//! End-to-end: 1-minute tumbling statistics per device over a JSON-lines file, by `eddyd replay`'s
//! engine and by DataFusion as a plain batch GROUP BY. One mode per process, so peak RSS is each
//! one's own.
//!
//!   replay_vs_batch gen FILE ROWS DEVICES
//!   replay_vs_batch eddy FILE
//!   replay_vs_batch datafusion FILE [PARTITIONS]

use std::time::Instant;

use anyhow::{bail, Context, Result};

const EDDY_SQL: &str = "
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'file', path = '{FILE}', format = 'json');
CREATE SINK per_minute AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, AVG(temp) AS avg_temp, MIN(temp) AS min_temp,
       MAX(temp) AS max_temp, SUM(temp) AS sum_temp
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = '{OUT}', format = 'json');
";

const BATCH_SQL: &str = "
SELECT device_id, date_bin(INTERVAL '1 minute', ts) AS window_start, COUNT(*) AS n, AVG(temp) AS avg_temp,
       MIN(temp) AS min_temp, MAX(temp) AS max_temp, SUM(temp) AS sum_temp
FROM readings GROUP BY device_id, date_bin(INTERVAL '1 minute', ts)";

fn count_lines(path: &str) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| path.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

fn report(mode: &str, rows: u64, groups: u64, secs: f64) {
    println!(
        "{mode}: {rows} rows in {secs:.3} s = {:.0} rows/s; {groups} result rows; peak RSS {:.1} MiB",
        rows as f64 / secs,
        eddy_benches::peak_rss_mib()
    );
}

fn run_eddy(file: &str, shards: usize) -> Result<()> {
    use eddy_engine::{Mode, Pipeline, PipelineConfig};
    let rows = count_lines(file)?;
    let out = std::env::temp_dir().join(format!("eddy-bench-{}.jsonl", std::process::id()));
    let sql = EDDY_SQL.replace("{FILE}", file).replace("{OUT}", &out.to_string_lossy());
    let t = Instant::now();
    let mut cfg = PipelineConfig::new(".", Mode::Replay);
    cfg.shards = shards;
    let mut p = Pipeline::plan(&sql, &cfg)?;
    p.run_to_end()?;
    let secs = t.elapsed().as_secs_f64();
    let groups = count_lines(&out.to_string_lossy())?;
    let _ = std::fs::remove_file(&out);
    report(&format!("eddy replay ({} shard(s))", p.summary().shards), rows, groups, secs);
    Ok(())
}

fn run_datafusion(file: &str, partitions: usize) -> Result<()> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::prelude::*;
    let rows = count_lines(file)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(partitions).enable_all().build()?;
    rt.block_on(async {
        let t = Instant::now();
        let config = SessionConfig::new().with_target_partitions(partitions);
        let ctx = SessionContext::new_with_config(config);
        let schema = Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("site", DataType::Utf8, true),
            Field::new("temp", DataType::Float64, true),
            Field::new("humidity", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]);
        let options = JsonReadOptions::default().schema(&schema).file_extension(".jsonl");
        ctx.register_json("readings", file, options).await?;
        let batches = ctx.sql(BATCH_SQL).await?.collect().await?;
        let secs = t.elapsed().as_secs_f64();
        let groups: usize = batches.iter().map(|b| b.num_rows()).sum();
        report(&format!("datafusion batch ({partitions} partitions)"), rows, groups as u64, secs);
        Ok::<_, anyhow::Error>(())
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 5 => {
            eddy_benches::write_readings(std::path::Path::new(&args[2]), args[3].parse()?, args[4].parse()?)?;
            Ok(())
        }
        Some("eddy") if args.len() >= 3 => run_eddy(&args[2], args.get(3).map(|p| p.parse()).transpose()?.unwrap_or(1)),
        Some("datafusion") if args.len() >= 3 => {
            run_datafusion(&args[2], args.get(3).map(|p| p.parse()).transpose()?.unwrap_or(1))
        }
        _ => bail!("usage: replay_vs_batch gen FILE ROWS DEVICES | eddy FILE [SHARDS] | datafusion FILE [PARTITIONS]"),
    }
}
