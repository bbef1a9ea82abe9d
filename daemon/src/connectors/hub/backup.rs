//! Checkpoint backups to the hub (docs/hub.md, "Checkpoint backups"). After a checkpoint the
//! pipeline's worker [`Backup::offer`]s it: the files are opened there and then (they are
//! immutable; an open file outlives the deletion of an older checkpoint), and the offer replaces
//! any older one of that pipeline still waiting, so a slow link backs up the newest checkpoint
//! rather than queueing stale ones. An uploader thread with its own current-thread tokio runtime
//! hashes the state files, uploads the blobs the hub lacks at a bounded rate, and then records
//! the checkpoint — but only once every hub sink of the pipeline has had the rows that
//! checkpoint committed stored, so a restore from it never loses rows the old device had not sent.
//!
//! Owns the uploader thread and the offers; never blocks a worker (an offer opens files and
//! takes a lock), never changes the state directory.

use eddy_engine::connector::Role;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use eddy_client::{v1, HubClient, BLOB_CHUNK_BYTES};
use eddy_engine::storage::CheckpointFiles;

use super::HubLink;
use crate::connectors::backoff::Backoff;
use crate::metrics::Registry;

/// How long an upload waits for the hub sinks to have sent what its checkpoint committed.
const GATE_WAIT: Duration = Duration::from_secs(60);

/// `[hub.backup]` checked.
#[derive(Debug, Clone, Copy)]
pub struct BackupSettings {
    /// Back up every this many checkpoints (and always the last one before a stop).
    pub every_checkpoints: u64,
    /// Upload rate bound, bytes per second.
    pub max_bytes_per_s: u64,
    /// How long a stopping daemon waits for the final backups.
    pub drain_timeout: Duration,
}

/// One checkpoint waiting to be backed up.
struct Offer {
    seq: u64,
    created_ms: i64,
    made: Instant,
    manifest: (String, File),
    state_files: Vec<(String, File)>,
    sinks: Vec<v1::SinkMark>,
    /// The identity of the state the checkpoint belongs to (empty: it holds none).
    state_id: Vec<u8>,
}

struct Shared {
    pending: Mutex<BTreeMap<String, Offer>>,
    changed: Condvar,
    /// Offers being uploaded now (so `close` waits for them too).
    busy: Mutex<usize>,
    closing: AtomicBool,
}

/// The uploader: one per daemon, for all its pipelines.
pub struct Backup {
    shared: Arc<Shared>,
    settings: BackupSettings,
    registry: Arc<Registry>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Backup {
    pub fn start(link: HubLink, settings: BackupSettings, registry: Arc<Registry>) -> std::io::Result<Backup> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
            busy: Mutex::new(0),
            closing: AtomicBool::new(false),
        });
        let (sh, reg) = (shared.clone(), registry.clone());
        let thread = std::thread::Builder::new()
            .name("hub-backup".into())
            .spawn(move || upload_loop(&link, settings, &sh, &reg))?;
        Ok(Backup { shared, settings, registry, thread: Mutex::new(Some(thread)) })
    }

    pub fn every_checkpoints(&self) -> u64 {
        self.settings.every_checkpoints
    }

    /// Offers `files` of `pipeline` for backup, with where its hub sinks stand (the worker calls
    /// this right after the checkpoint, so the outboxes hold exactly what it committed) and the
    /// identity of the state it belongs to. A file already gone means a newer checkpoint
    /// replaced this one: nothing is offered.
    pub fn offer(&self, pipeline: &str, files: &CheckpointFiles, state_id: Option<[u8; 16]>) {
        let open = |p: &Path| File::open(p).map(|f| (file_name(p), f));
        let opened = open(&files.manifest)
            .and_then(|m| Ok((m, files.state_files.iter().map(|p| open(p)).collect::<std::io::Result<Vec<_>>>()?)));
        let (manifest, state_files) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(pipeline, seq = files.seq, error = %e, "checkpoint replaced before its backup began");
                return;
            }
        };
        let sinks = self
            .registry
            .connectors_of(pipeline)
            .into_iter()
            .filter(|(role, ..)| *role == Role::Sink)
            .filter_map(|(_, name, g)| {
                let stream = g.hub_stream.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
                Some(v1::SinkMark {
                    sink: name,
                    stream,
                    outbox_id: g.outbox_id.load(Ordering::Relaxed),
                    next_seq: g.outbox_next_seq.load(Ordering::Relaxed),
                    delivered_end: g.outbox_end.load(Ordering::Relaxed),
                })
            })
            .collect();
        let offer = Offer {
            seq: files.seq,
            created_ms: files.created_ms,
            made: Instant::now(),
            manifest,
            state_files,
            sinks,
            state_id: state_id.map(|id| id.to_vec()).unwrap_or_default(),
        };
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(pipeline.to_string(), offer);
        self.shared.changed.notify_all();
    }

    /// Waits (up to the drain timeout) for the offers made so far to be backed up, then stops
    /// the uploader. What is left is not lost: the previous backup stays restorable, and the
    /// next start offers its newest checkpoint again.
    pub fn close(&self) {
        let until = Instant::now() + self.settings.drain_timeout;
        loop {
            let idle = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
                && *self.shared.busy.lock().unwrap_or_else(|p| p.into_inner()) == 0;
            if idle || Instant::now() >= until {
                if !idle {
                    tracing::warn!("checkpoint backups still waiting at stop; the previous ones stay restorable");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
    }

    fn stop(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SHA-256 (hex) and length of an open file, read in chunks.
fn digest_of(f: &File) -> std::io::Result<(String, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; BLOB_CHUNK_BYTES];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        off += n as u64;
    }
    Ok((crate::control::hex(ctx.finish().as_ref()), off))
}

fn upload_loop(link: &HubLink, settings: BackupSettings, sh: &Shared, registry: &Registry) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "checkpoint backups cannot start (tokio runtime)");
            return;
        }
    };
    let mut client: Option<HubClient> = None;
    let mut turn = 0usize;
    let mut backoff = Backoff::new();
    // State files are immutable: each is hashed once.
    let mut digests: HashMap<(String, String), (String, u64)> = HashMap::new();
    let stop = || sh.closing.load(Ordering::Acquire);
    // Pipelines take turns (the one after the last served, in name order): one that keeps
    // failing never holds up the others' backups.
    let mut last = String::new();
    loop {
        let next = {
            let mut p = sh.pending.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if stop() {
                    return;
                }
                use std::ops::Bound::{Excluded, Unbounded};
                let turn = p.range::<str, _>((Excluded(last.as_str()), Unbounded)).next().map(|(k, _)| k.clone());
                if let Some(name) = turn.or_else(|| p.keys().next().cloned()) {
                    let Some(offer) = p.remove(&name) else { continue };
                    *sh.busy.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    last.clone_from(&name);
                    break (name, offer);
                }
                p = sh.changed.wait_timeout(p, Duration::from_millis(200)).unwrap_or_else(|p| p.into_inner()).0;
            }
        };
        let (pipeline, offer) = next;
        let gauges = registry.backup(&pipeline);
        gauges.lag_ms.store(offer.made.elapsed().as_millis() as u64, Ordering::Relaxed);
        let r = rt.block_on(async {
            let c = match client.take() {
                Some(c) => c,
                None => link.connect(turn).await.map_err(|e| e.to_string())?,
            };
            let r = upload(&c, &pipeline, &offer, settings, registry, &mut digests, &stop).await;
            client = Some(c);
            r
        });
        *sh.busy.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        match r {
            Ok(bytes) => {
                gauges.checkpoints.fetch_add(1, Ordering::Relaxed);
                gauges.bytes.fetch_add(bytes, Ordering::Relaxed);
                gauges.last_seq.store(offer.seq, Ordering::Relaxed);
                gauges.lag_ms.store(0, Ordering::Relaxed);
                gauges.set_error(None);
                tracing::debug!(pipeline, seq = offer.seq, bytes, "checkpoint backed up");
                backoff.reset();
            }
            Err(why) => {
                gauges.failures.fetch_add(1, Ordering::Relaxed);
                if gauges.set_error(Some(why.clone())) {
                    tracing::warn!(pipeline, seq = offer.seq, error = %why, "checkpoint backup failed; retrying");
                }
                client = None;
                turn = turn.wrapping_add(1);
                // Retried unless a newer checkpoint of the pipeline came meanwhile.
                sh.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(pipeline).or_insert(offer);
                backoff.sleep_unless(stop);
            }
        }
    }
}

/// Uploads one checkpoint; returns the blob bytes sent.
async fn upload(
    c: &HubClient,
    pipeline: &str,
    offer: &Offer,
    settings: BackupSettings,
    registry: &Registry,
    digests: &mut HashMap<(String, String), (String, u64)>,
    stop: &impl Fn() -> bool,
) -> Result<u64, String> {
    let mut files = Vec::with_capacity(offer.state_files.len());
    for (name, f) in &offer.state_files {
        let key = (pipeline.to_string(), name.clone());
        let (sha256, bytes) = match digests.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = digest_of(f).map_err(|e| format!("reading {name}: {e}"))?;
                digests.insert(key, d.clone());
                d
            }
        };
        files.push(v1::StateFile { name: name.clone(), sha256, bytes });
    }
    // Only this checkpoint's files stay cached: older ones are gone from the state dir.
    digests.retain(|(p, n), _| p != pipeline || offer.state_files.iter().any(|(name, _)| name == n));
    let missing =
        c.missing_blobs(pipeline, files.iter().map(|f| f.sha256.clone()).collect()).await.map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    for (sf, (_, f)) in files.iter().zip(&offer.state_files) {
        if !missing.contains(&sf.sha256) {
            continue;
        }
        let f = f.try_clone().map_err(|e| format!("{}: {e}", sf.name))?;
        c.put_blob(blob_chunks(pipeline.to_string(), sf.clone(), f, settings.max_bytes_per_s))
            .await
            .map_err(|e| format!("uploading {}: {e}", sf.name))?;
        sent += sf.bytes;
    }
    let manifest = {
        let (_, f) = &offer.manifest;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, 0).map_err(|e| format!("reading {}: {e}", offer.manifest.0))?;
        b
    };
    // The rows this checkpoint committed must be stored at the hub before it may be restored
    // from (docs/hub.md): wait for each hub sink to get that far — for a while; a sink that does
    // not (its pipeline stopped, its hub refuses it) fails this attempt, which is retried.
    let gate_until = Instant::now() + GATE_WAIT;
    for m in &offer.sinks {
        let g = registry.connectors_of(pipeline).into_iter().find(|(role, n, _)| *role == Role::Sink && *n == m.sink);
        while let Some((_, _, g)) = &g {
            if g.outbox_acked_seq.load(Ordering::Relaxed) >= m.next_seq
                || g.outbox_id.load(Ordering::Relaxed) != m.outbox_id
            {
                break;
            }
            if stop() {
                return Err(format!("stopping before sink {} had sent the checkpoint's rows", m.sink));
            }
            if Instant::now() >= gate_until {
                return Err(format!("sink {} has not sent the checkpoint's rows within {GATE_WAIT:?}", m.sink));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let index = v1::CheckpointIndex {
        gateway: String::new(),
        pipeline: pipeline.to_string(),
        seq: offer.seq,
        created_ms: offer.created_ms,
        stored_ms: 0,
        manifest_name: offer.manifest.0.clone(),
        manifest,
        files,
        sinks: offer.sinks.clone(),
        state_id: offer.state_id.clone(),
    };
    c.put_checkpoint(index).await.map_err(|e| e.to_string())?;
    Ok(sent)
}

/// A state file as PutBlob chunks, read as they are sent, paced to `max_bytes_per_s`.
fn blob_chunks(
    pipeline: String,
    sf: v1::StateFile,
    f: File,
    max_bytes_per_s: u64,
) -> impl tokio_stream::Stream<Item = v1::BlobChunk> + Send + 'static {
    let t0 = Instant::now();
    let f = Arc::new(f);
    futures::stream::unfold((0u64, true), move |(off, first)| {
        let (f, sf, pipeline) = (f.clone(), sf.clone(), pipeline.clone());
        async move {
            if off >= sf.bytes && !first {
                return None;
            }
            // Pacing: the bytes sent so far may not run ahead of the rate.
            let due = Duration::from_secs_f64(off as f64 / max_bytes_per_s.max(1) as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let n = (sf.bytes - off).min(BLOB_CHUNK_BYTES as u64) as usize;
            let mut data = vec![0u8; n];
            // A short read ends the stream early: the hub then refuses the blob (length check).
            let got = f.read_at(&mut data, off).ok()?;
            if got == 0 && !first {
                return None;
            }
            data.truncate(got);
            let chunk = if first {
                v1::BlobChunk { pipeline, sha256: sf.sha256, total_bytes: sf.bytes, data }
            } else {
                v1::BlobChunk { data, ..Default::default() }
            };
            Some((chunk, (off + got as u64, false)))
        }
    })
}
