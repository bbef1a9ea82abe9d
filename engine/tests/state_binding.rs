//! What a provided source learns of the durable state it reads for (`SourceReader::bind_state`),
//! and when: its identity and the epoch the state began in, before its first poll, with the
//! identity already durable then. A reader names itself after the identity (an MQTT client id,
//! under which a broker keeps a session), so a crash must never hand it another one afterwards;
//! and state begun by an older version is told so (epoch 0), so that the reader keeps the names
//! it used then.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_engine::connector::{
    decode_json, ConnectorProvider, ConnectorSpec, OpenedState, Poll, Role, RowDecoder, SinkWriter, SourceReader,
};
use eddy_engine::storage::{CheckpointStore, Cipher, RealFs};
use eddy_engine::{DurableConfig, EngineError, Mode, Pipeline, PipelineConfig, Result};

#[derive(Debug, Clone, PartialEq)]
enum Told {
    Bound {
        identity: [u8; 16],
        epoch: u32,
    },
    /// A poll, and whether a checkpoint was on disk then.
    Polled {
        checkpointed: bool,
    },
}

type Log = Arc<Mutex<Vec<Told>>>;

/// Reads one row, then waits.
struct Probe {
    log: Log,
    checkpoints: std::path::PathBuf,
    read: bool,
}

impl SourceReader for Probe {
    fn poll(&mut self, dec: &mut RowDecoder, _max_rows: usize) -> Result<Poll> {
        let checkpointed = std::fs::read_dir(&self.checkpoints)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("manifest-")))
            .unwrap_or(false);
        self.log.lock().unwrap().push(Told::Polled { checkpointed });
        if std::mem::replace(&mut self.read, true) {
            return Ok(Poll::Idle);
        }
        decode_json(dec, b"{\"v\":1,\"ts\":60000}", 0);
        Ok(Poll::Rows)
    }
    fn bounded(&self) -> bool {
        false
    }
    fn bind_state(&mut self, state: &OpenedState) {
        self.log.lock().unwrap().push(Told::Bound { identity: state.identity, epoch: state.epoch });
    }
}

struct Provider {
    log: Log,
    checkpoints: std::path::PathBuf,
}

impl ConnectorProvider for Provider {
    fn connectors(&self, role: Role) -> Vec<&'static str> {
        if role == Role::Source {
            vec!["probe"]
        } else {
            vec![]
        }
    }
    fn options(&self, _role: Role, connector: &str) -> Option<&'static [&'static str]> {
        (connector == "probe").then_some(&[])
    }
    fn validate(&self, _role: Role, _spec: &ConnectorSpec<'_>) -> Result<()> {
        Ok(())
    }
    fn open_source(&self, _spec: &ConnectorSpec<'_>) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(Probe { log: self.log.clone(), checkpoints: self.checkpoints.clone(), read: false }))
    }
    fn open_sink(&self, _spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
        Err(EngineError::State("no sinks here".into()))
    }
}

/// Keyed, so that with shards it runs sharded.
const SQL: &str = "CREATE SOURCE s (v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH (connector = 'probe');\n\
                   CREATE SINK o AS SELECT v, window_start, COUNT(*) AS n FROM TUMBLE(s, ts, INTERVAL '1' MINUTE) \
                   GROUP BY v, window_start, window_end WITH (connector = 'file', path = 'out/o.jsonl');\n";

/// Opens the pipeline on `dir`'s state, reads a row into the log and crashes; returns what the
/// source was told.
fn run_once(dir: &Path, shards: usize) -> Vec<Told> {
    let log = Log::default();
    let state = dir.join("state");
    let mut cfg = PipelineConfig::new(dir, Mode::Live);
    cfg.shards = shards;
    cfg.exactly_once = true;
    cfg.connectors = Some(Arc::new(Provider { log: log.clone(), checkpoints: state.join("checkpoints") }));
    let mut p = Pipeline::plan(SQL, &cfg).unwrap();
    let mut d = DurableConfig::new(state, Arc::new(RealFs::new()), Arc::new(Cipher::plaintext()));
    d.checkpoint_interval = Duration::from_secs(3600);
    d.wal.commit_delay = Duration::ZERO;
    p.open_durable(SQL, d).unwrap();
    p.step().unwrap();
    p.tick().unwrap();
    // Dropped without a checkpoint of its own: a crash, its row durable in the log only.
    drop(p);
    let told = log.lock().unwrap().clone();
    told
}

fn bound(told: &[Told]) -> ([u8; 16], u32) {
    match told {
        [Told::Bound { identity, epoch }, Told::Polled { checkpointed: true }] => (*identity, *epoch),
        other => panic!("the source was not bound, then polled with its identity durable: {other:?}"),
    }
}

/// Writes `dir`'s newest checkpoint again as a version before epochs wrote it: without the
/// `epoch` blob.
fn as_written_before_epochs(dir: &Path) {
    let ckpts = dir.join("state/checkpoints");
    let (mut store, rec) =
        CheckpointStore::open(Arc::new(RealFs::new()), Arc::new(Cipher::plaintext()), &ckpts).unwrap();
    let rec = rec.unwrap();
    let held = rec.blobs.len();
    let blobs: Vec<(String, Vec<u8>)> = rec.blobs.into_iter().filter(|(name, _)| name.as_str() != "epoch").collect();
    assert_eq!(blobs.len() + 1, held, "the checkpoint held an epoch");
    store.write(rec.manifest.wal_lsn, &rec.manifest.fingerprint, rec.manifest.sources, &blobs).unwrap();
}

/// A new state is checkpointed before its first poll, so the identity its source named itself
/// after survives a crash right after: the next start binds the same one. Sharded too (a
/// checkpoint of a sharded pipeline holds its shards' state, which the restart checks).
#[test]
fn a_new_states_identity_is_durable_before_its_source_reads() {
    for shards in [1, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let (first, epoch) = bound(&run_once(tmp.path(), shards));
        assert_eq!(epoch, 1, "a state begun now is in the current epoch");
        assert_eq!(bound(&run_once(tmp.path(), shards)), (first, 1), "the same state after a crash");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(bound(&run_once(other.path(), shards)).0, first, "another state");
    }
}

/// State begun by a version that kept no epoch is told epoch 0 for its whole life, so its
/// connectors keep the names they had: a checkpoint without the `epoch` blob, and a log with
/// records but no checkpoint (a crash of that version before its first checkpoint).
#[test]
fn state_begun_before_epochs_is_epoch_zero_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (identity, _) = bound(&run_once(dir, 1));
    as_written_before_epochs(dir);
    assert_eq!(bound(&run_once(dir, 1)), (identity, 0));
    assert_eq!(bound(&run_once(dir, 1)), (identity, 0), "and in every later checkpoint");

    // A log with records and no checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    bound(&run_once(dir, 1));
    std::fs::remove_dir_all(dir.join("state/checkpoints")).unwrap();
    assert_eq!(bound(&run_once(dir, 1)).1, 0);
}

/// A restored copy of a checkpoint (a replacement device restored from a backup) continues the
/// state: its source is told the same identity and epoch, and so names itself as the replaced
/// device did (an MQTT source resumes that device's session). An epoch-0 state stays epoch 0.
#[test]
fn a_restored_copy_binds_the_same_identity_and_epoch() {
    use eddy_engine::storage::{copy_rebased, Owner};
    let restore = |from: &Path| {
        let to = tempfile::tempdir().unwrap();
        let fs = Arc::new(RealFs::new());
        let (from, into) = (from.join("state/checkpoints"), to.path().join("state/checkpoints"));
        copy_rebased(fs, Arc::new(Cipher::plaintext()), &from, &into, Owner::default()).unwrap();
        to
    };
    let tmp = tempfile::tempdir().unwrap();
    let (identity, epoch) = bound(&run_once(tmp.path(), 1));
    let restored = restore(tmp.path());
    assert_eq!(bound(&run_once(restored.path(), 1)), (identity, epoch));

    as_written_before_epochs(tmp.path());
    let restored = restore(tmp.path());
    assert_eq!(bound(&run_once(restored.path(), 1)), (identity, 0));
}
