//! Criterion micro-benchmarks of the engine's hot paths: JSON decoding into columns, and a
//! 1-minute tumbling aggregation over decoded batches.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use eddy_engine::connector::decode_json;
use eddy_engine::connector::{DecodeColumn, RowDecoder};
use eddy_engine::{Mode, Pipeline, PipelineConfig};

fn decoder() -> RowDecoder {
    let col = |n: &str, t, nullable| DecodeColumn { name: n.into(), data_type: t, nullable, metadata_key: None };
    use datafusion::arrow::datatypes::DataType;
    use eddy_engine::TS_TYPE;
    RowDecoder::new(
        vec![
            col("device_id", DataType::Utf8, false),
            col("site", DataType::Utf8, true),
            col("temp", DataType::Float64, true),
            col("humidity", DataType::Float64, true),
            col("ts", TS_TYPE, false),
        ],
        Some(4),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("eddy-criterion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("readings.jsonl");
    eddy_benches::write_readings(&file, 100_000, 100).unwrap();
    let data = std::fs::read(&file).unwrap();
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("json_100k_rows", |b| {
        let mut d = decoder();
        b.iter(|| {
            for (i, l) in lines.iter().enumerate() {
                decode_json(&mut d, l, 0);
                if i % 8192 == 8191 {
                    d.finish().unwrap();
                }
            }
            d.finish().unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.sample_size(10);
    let sql = format!(
        "CREATE SOURCE r (device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE, ts TIMESTAMP(3) NOT NULL,
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (connector = 'file', path = '{}');
         CREATE SINK s AS SELECT device_id, window_start, COUNT(*) AS n, AVG(temp) AS a, MAX(temp) AS m
             FROM TUMBLE(r, ts, INTERVAL '1' MINUTE) GROUP BY device_id, window_start, window_end
             WITH (connector = 'file', path = '{}');",
        file.display(),
        dir.join("out.jsonl").display()
    );
    g.bench_function("tumble_1m_100k_rows", |b| {
        b.iter(|| {
            let mut p = Pipeline::plan(&sql, &PipelineConfig::new(&dir, Mode::Replay)).unwrap();
            p.run_to_end().unwrap();
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
