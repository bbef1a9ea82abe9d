//! The bodies of Eddy's fuzz targets: what is decoded from bytes that may be damaged or hostile —
//! WAL segments and checkpoint files read back from flash, MQTT/file payloads (JSON, CSV),
//! pipeline SQL and on-demand queries. Each must give a value or a clear error, never a panic, and keep its invariants;
//! each returns how much it decoded, so a driver can tell that inputs reach past the first check.
//!
//! `cargo +nightly fuzz run <target>` in `fuzz/` drives them with libFuzzer; on stable,
//! `engine/tests/fuzz_targets.rs` runs them over seeds and their mutations in every test run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::datatypes::DataType;
use eddy_engine::connector::{DecodeColumn, RowDecoder};
use eddy_engine::storage::CheckpointStore;
use eddy_engine::storage::Cipher;
use eddy_engine::storage::SimFs;
use eddy_engine::storage::{Wal, WalConfig};
use eddy_engine::{Mode, Pipeline, PipelineConfig};

/// The plaintext cipher, or one with a fixed test key: the first input byte chooses.
pub fn cipher(encrypted: bool) -> Arc<Cipher> {
    static KEYED: OnceLock<Arc<Cipher>> = OnceLock::new();
    if encrypted {
        KEYED.get_or_init(|| Arc::new(Cipher::from_keys(&[(7, [0x42; 32])]).expect("a 32-byte key is valid"))).clone()
    } else {
        Arc::new(Cipher::plaintext())
    }
}

pub fn wal_config() -> WalConfig {
    let mut c = WalConfig::new("/s/wal");
    c.max_record_bytes = 1 << 16;
    c
}

/// Where a fresh WAL puts its first segment (the name a damaged segment must have to be read).
pub fn first_segment_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let fs = SimFs::new();
        let mut w = Wal::open(Arc::new(fs), cipher(false), wal_config()).expect("a WAL opens on an empty SimFs");
        w.append(b"x").expect("append");
        w.commit().expect("commit");
        w.segment_paths()[0].clone()
    })
    .clone()
}

/// A WAL segment as found on flash: replay gives records with dense LSNs, or an error. Returns
/// the records replayed.
pub fn wal_segment(data: &[u8]) -> usize {
    let Some((&first, segment)) = data.split_first() else { return 0 };
    let fs = SimFs::new();
    fs.put(&first_segment_path(), segment.to_vec());
    let Ok(wal) = Wal::open(Arc::new(fs), cipher(first & 1 == 1), wal_config()) else { return 0 };
    let mut next = 0;
    let _ = wal.replay(0, &mut |lsn, _payload| {
        assert_eq!(lsn, next, "replayed LSNs are dense from 0");
        next += 1;
        Ok(())
    });
    next as usize
}

/// A checkpoint directory holding one manifest and one state file, both from the input (split
/// by its second and third bytes): recovery finds a valid checkpoint, none, or an error. Returns
/// the blobs recovered.
pub fn checkpoint_manifest(data: &[u8]) -> usize {
    let [first, a, b, rest @ ..] = data else { return 0 };
    let split = (u16::from_le_bytes([*a, *b]) as usize).min(rest.len());
    let (manifest, state) = rest.split_at(split);
    let fs = SimFs::new();
    let dir = Path::new("/s/checkpoints");
    fs.put(&dir.join("manifest-0000000001"), manifest.to_vec());
    fs.put(&dir.join("state-0000000001.dat"), state.to_vec());
    match CheckpointStore::open(Arc::new(fs), cipher(first & 1 == 1), dir) {
        Ok((_, Some(r))) => {
            assert_eq!(r.manifest.seq, 1, "only the manifest that is there can be recovered");
            r.blobs.len()
        }
        _ => 0,
    }
}

fn telemetry_decoder() -> RowDecoder {
    let col = |n: &str, t: DataType, nullable: bool| DecodeColumn {
        name: n.into(),
        data_type: t,
        nullable,
        metadata_key: None,
    };
    let cols = vec![
        col("device_id", DataType::Utf8, false),
        col("temp", DataType::Float64, true),
        col("ts", eddy_engine::TS_TYPE, false),
        col("n", DataType::Int64, true),
        col("ok", DataType::Boolean, true),
    ];
    RowDecoder::new(cols, Some(2)).expect("the test schema is valid")
}

/// Checks that the decoded rows make a batch of exactly the accepted rows, and the error rows
/// one of their own.
fn check_batches(mut dec: RowDecoder, accepted: usize) -> usize {
    let rows = dec.finish().expect("decoded rows always make a batch").map_or(0, |b| b.num_rows());
    assert_eq!(rows, accepted, "the batch holds exactly the accepted rows");
    dec.errors.finish().expect("error rows always make a batch");
    rows
}

/// A JSON payload (object, array of objects, or anything else) as an MQTT message or a line.
pub fn json_payload(data: &[u8]) -> usize {
    let mut dec = telemetry_decoder();
    let accepted = eddy_engine::connector::decode_json(&mut dec, data, 0);
    check_batches(dec, accepted)
}

/// A CSV payload: records by position.
pub fn csv_payload(data: &[u8]) -> usize {
    let mut dec = telemetry_decoder();
    let accepted = eddy_engine::connector::decode_csv_payload(&mut dec, data, 0);
    check_batches(dec, accepted)
}

/// Pipeline SQL: planned, or refused with an error. Returns 1 when it planned.
pub fn sql_pipeline(data: &[u8]) -> usize {
    let sql = String::from_utf8_lossy(data);
    Pipeline::plan(&sql, &PipelineConfig::new("/nonexistent", Mode::Replay)).is_ok() as usize
}

/// A small view's rows: device, count, hottest (with a NULL), last seen.
fn view_rows() -> eddy_engine::query::ViewRows {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
        Field::new("hottest", DataType::Float64, true),
        Field::new("seen", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
        Arc::new(Int64Array::from(vec![3, 7, 0, 12])),
        Arc::new(Float64Array::from(vec![Some(21.5), None, Some(-3.0), Some(40.25)])),
        Arc::new(TimestampMillisecondArray::from(vec![1_700_000_000_000, 1_700_000_001_000, 0, 1_700_000_002_000])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).expect("the columns match the schema");
    eddy_engine::query::ViewRows { schema, batches: vec![batch] }
}

/// An on-demand query over the view `per_device`: answered within its bounds, or refused with an
/// error. Returns 1 when answered.
pub fn view_query(data: &[u8]) -> usize {
    use eddy_engine::query::{self, QueryLimits, ViewInput};
    let sql = String::from_utf8_lossy(data);
    let Ok(q) = eddy_engine::query::parse_query(&sql) else { return 0 };
    let limits = QueryLimits { max_rows: 3, max_bytes: 1 << 20, operators: eddy_engine::Limits::default() };
    let views = vec![ViewInput { name: "per_device".into(), rows: view_rows() }];
    match query::run(&q, views, limits) {
        Ok(a) => {
            assert!(a.batch.num_rows() <= limits.max_rows, "the row bound holds");
            1
        }
        Err(_) => 0,
    }
}
