//! Restoring a pipeline's state from a checkpoint backed up at the hub — on a replacement
//! device, or after local state was damaged: `eddyd restore --from-hub` (eddyd stopped, no state
//! yet) and the management API's `Restore` (eddyd running; `eddyctl restore`). Owns the
//! download and the order of the steps; the checkpoint format is the engine's, the transport
//! `eddy-client`'s, and stopping and starting the pipeline the runtime's.
//!
//! Everything is built in a staging directory beside the target and moved into place with one
//! rename at the end, so an interrupted restore leaves no half-made state for eddyd to start on:
//! 1. [`fetch`]: download the manifest and state files, each checked against its SHA-256;
//! 2. [`Fetched::rebuild`]: open them with this device's key (every blob authenticated) and
//!    write them as a checkpoint that continues from an empty WAL (`copy_rebased`) — a wrong key
//!    or damaged download stops here, before anything changes at the hub;
//! 3. [`Staged::retract`]: for each hub sink, have the hub remove the rows the old device pushed
//!    after the checkpoint (they are computed again from it) and every row pushed from a state
//!    being replaced that is not the backup's (another outbox), and mark the checkpoint's own
//!    commit as delivered in the sink's new outbox (its rows are at the hub already);
//! 4. [`Staged::install`]: rename the staging directory to `<state dir>/<pipeline>`.
//!
//! From step 3 on the hub no longer holds what a replaced state pushed after the checkpoint, so
//! that state must never run again: the caller installs the staged one (or, if step 3 failed,
//! runs the restore again).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use eddy_client::{v1, HubClient};
use eddy_engine::connector::SinkStateDir;
use eddy_engine::storage::{copy_rebased, create_private_dir_all, Cipher, Owner, RealFs, RebasedCopy, Storage};

use crate::config::ConfigFile;
use crate::connectors::hub::HubLink;
use crate::connectors::outbox::{FullPolicy, Outbox};

/// What the restore is asked for.
#[derive(Clone, Copy)]
pub struct RestoreRequest<'a> {
    pub gateway: &'a str,
    pub pipeline: &'a str,
    /// 0: the newest kept checkpoint.
    pub seq: u64,
}

fn valid_file_name(name: &str, prefix: &str, suffix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(suffix))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

async fn connect(link: &HubLink) -> Result<HubClient> {
    let mut last = None;
    for turn in 0..link.endpoints.len() {
        match link.connect(turn).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(anyhow::Error::new(e).context("no hub reachable")),
        None => Err(anyhow!("no hub reachable: hub.endpoints is empty")),
    }
}

/// Downloads one blob to `path`, checking its digest and length; fsyncs it.
async fn download(c: &HubClient, req: RestoreRequest<'_>, f: &v1::StateFile, path: &Path) -> Result<()> {
    let mut out = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let n = c
        .get_blob(req.gateway, req.pipeline, &f.sha256, &mut |chunk| {
            ctx.update(chunk);
            out.write_all(chunk)
        })
        .await?;
    let got = crate::control::hex(ctx.finish().as_ref());
    if n != f.bytes || got != f.sha256 {
        bail!(
            "{}: downloaded {n} bytes with SHA-256 {got}; the backup says {} bytes with {}",
            f.name,
            f.bytes,
            f.sha256
        );
    }
    out.sync_all().with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// Refuses what is not a pipeline name (it becomes a directory name).
pub fn check_pipeline_name(p: &str) -> Result<()> {
    if p.is_empty()
        || p.len() > 128
        || !p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        || p.starts_with('.')
    {
        bail!("pipeline '{p}': a pipeline name (its file name without .sql)");
    }
    Ok(())
}

/// A backup downloaded into the staging directory (steps 1); nothing changed anywhere else.
pub struct Fetched {
    client: HubClient,
    index: v1::CheckpointIndex,
    bytes: u64,
    gateway: String,
    pipeline: String,
    /// `<state dir>/.restore-<pipeline>`: `download/` holds the backup, `pipeline/` the result.
    staging: PathBuf,
}

/// A backup rebuilt as this device's state in the staging directory (steps 1 and 2).
pub struct Staged {
    fetched: Fetched,
    pub copy: RebasedCopy,
}

/// Where a restore of `pipeline` builds its state (removed when it ends, emptied when one starts).
pub fn staging_dir(state_dir: &Path, pipeline: &str) -> PathBuf {
    state_dir.join(format!(".restore-{pipeline}"))
}

/// Step 1: downloads the checkpoint `req` names into a fresh `<state_dir>/.restore-<pipeline>`.
pub async fn fetch(link: &HubLink, state_dir: &Path, req: RestoreRequest<'_>) -> Result<Fetched> {
    let p = req.pipeline;
    check_pipeline_name(p)?;
    let staging = staging_dir(state_dir, p);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let download_dir = staging.join("download");
    create_private_dir_all(&download_dir).with_context(|| format!("{}", download_dir.display()))?;
    let client = connect(link).await?;
    let index = client.get_checkpoint(req.gateway, p, req.seq).await?;
    if !valid_file_name(&index.manifest_name, "manifest-", "") {
        bail!("the backup's manifest is named '{}', not manifest-<seq>", index.manifest_name);
    }
    let mut bytes = index.manifest.len() as u64;
    for f in &index.files {
        if !valid_file_name(&f.name, "state-", ".dat") {
            bail!("the backup names a state file '{}', not state-<seq>.dat", f.name);
        }
        download(&client, req, f, &download_dir.join(&f.name)).await?;
        bytes += f.bytes;
    }
    for m in &index.sinks {
        if m.sink.is_empty() || !m.sink.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("the backup names a sink '{}', which is not a sink name", m.sink);
        }
    }
    let mpath = download_dir.join(&index.manifest_name);
    std::fs::write(&mpath, &index.manifest).with_context(|| format!("{}", mpath.display()))?;
    Ok(Fetched { client, index, bytes, gateway: req.gateway.into(), pipeline: p.into(), staging })
}

impl Fetched {
    /// Step 2: opens the download with this device's key and writes it as a checkpoint that
    /// continues from an empty WAL. Blocking file work.
    pub fn rebuild(self, cipher: Arc<Cipher>) -> Result<Staged> {
        let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
        let copy = copy_rebased(
            storage,
            cipher,
            &self.staging.join("download"),
            &built_dir(&self.staging).join("checkpoints"),
            Owner::of(&self.pipeline),
        )
        .with_context(|| {
            format!(
                "checkpoint {} of {}/{} cannot be opened with this key",
                self.index.seq, self.gateway, self.pipeline
            )
        })?;
        Ok(Staged { fetched: self, copy })
    }
}

impl Staged {
    /// The rebuilt state directory (moved into place by `install`).
    fn built(&self) -> PathBuf {
        built_dir(&self.fetched.staging)
    }

    /// Bytes downloaded.
    pub fn bytes(&self) -> u64 {
        self.fetched.bytes
    }

    /// Step 3: retracts at the hub what the restored state computes again, and what `replaced`
    /// (the state this one replaces, if any) pushed from an outbox of its own; marks the
    /// checkpoint's commit delivered in each hub sink's new outbox. Idempotent: a failed step 3
    /// is repaired by running the restore again. Returns what was done, one line each.
    pub async fn retract(&self, cipher: &Arc<Cipher>, replaced: Option<&Path>) -> Result<Vec<String>> {
        let f = &self.fetched;
        let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
        let owner = Owner::of(&f.pipeline);
        let sink_dir = |root: &Path, sink: &str| SinkStateDir {
            dir: root.join("sinks").join(sink),
            storage: storage.clone(),
            cipher: cipher.clone(),
            owner: owner.child(sink),
        };
        let mut steps = Vec::new();
        for m in &f.index.sinks {
            let r = f.client.retract_rows(&f.gateway, &m.stream, m.outbox_id, m.next_seq).await?;
            tracing::info!(sink = %m.sink, stream = %m.stream, deleted = r.deleted, cut = r.cut, "rows after the checkpoint retracted at the hub");
            steps.push(format!(
                "sink {}: rows after #{} of stream {} removed at the hub ({} objects deleted, {} cut); they are computed again",
                m.sink,
                m.next_seq.saturating_sub(1),
                m.stream,
                r.deleted,
                r.cut
            ));
            if let Some(old) = replaced.map(|root| sink_dir(root, &m.sink)).filter(|s| s.dir.exists()) {
                let id = Outbox::open(Some(&old), usize::MAX, FullPolicy::Block)
                    .with_context(|| format!("reading the outbox of sink {} in the state being replaced", m.sink))?
                    .id;
                if id != m.outbox_id {
                    let r = f.client.retract_rows(&f.gateway, &m.stream, id, 0).await?;
                    steps.push(format!(
                        "sink {}: rows the replaced state pushed to stream {} removed at the hub ({} objects deleted)",
                        m.sink, m.stream, r.deleted
                    ));
                }
            }
            let mut ob = Outbox::open(Some(&sink_dir(&self.built(), &m.sink)), 256 << 20, FullPolicy::Block)?;
            ob.mark_delivered(m.delivered_end)?;
        }
        Ok(steps)
    }

    /// The staging directory, for [`install`].
    pub fn staging_dir(&self) -> &Path {
        &self.fetched.staging
    }

    /// What the restore says of itself when done.
    pub fn summary(&self) -> String {
        let f = &self.fetched;
        format!(
            "restored pipeline {} from checkpoint {} of gateway {} (taken {}, {} bytes, {} blobs)",
            f.pipeline,
            self.copy.seq,
            f.gateway,
            eddy_engine::time::rfc3339_ms(f.index.created_ms),
            f.bytes,
            self.copy.blobs
        )
    }
}

fn built_dir(staging: &Path) -> PathBuf {
    staging.join("pipeline")
}

/// Step 4: moves the state rebuilt in `staging` to `target` (which must not exist) and removes
/// the staging directory.
pub fn install(staging: &Path, target: &Path) -> Result<()> {
    std::fs::rename(built_dir(staging), target)
        .with_context(|| format!("moving the restored state to {}", target.display()))?;
    eddy_engine::storage::sync_parent(target).with_context(|| format!("{}", target.display()))?;
    std::fs::remove_dir_all(staging).with_context(|| format!("removing {}", staging.display()))
}

/// `eddyd restore --from-hub`: eddyd is stopped and the pipeline has no state yet.
pub fn restore(cfg: &ConfigFile, req: &RestoreRequest<'_>) -> Result<()> {
    let p = req.pipeline;
    check_pipeline_name(p).context("--pipeline")?;
    let state_dir = cfg.state_dir.clone().ok_or_else(|| anyhow!("give --state-dir (or state_dir in the config)"))?;
    let target = state_dir.join(p);
    if target.exists() {
        bail!(
            "{} exists: a restore only creates a pipeline's state. If that state is damaged or to be replaced, `eddyd state reset --state-dir {} --pipeline {p} --yes` first (or, with eddyd running, `eddyctl restore`)",
            target.display(),
            state_dir.display()
        );
    }
    let cipher = crate::runtime::load_cipher(cfg)?;
    let link = HubLink::from_config(&cfg.hub).map_err(|m| anyhow!(m))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let staged = rt.block_on(fetch(&link, &state_dir, *req))?.rebuild(cipher.clone())?;
    for line in rt.block_on(staged.retract(&cipher, None))? {
        println!("{line}");
    }
    let said = staged.summary();
    install(staged.staging_dir(), &target)?;
    println!("{said} into {}", target.display());
    println!("start eddyd with the same pipeline file: it continues from there");
    Ok(())
}
