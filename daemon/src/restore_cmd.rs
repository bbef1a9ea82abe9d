//! `eddyd restore --from-hub`: rebuilds one pipeline's state directory from a checkpoint backed
//! up at the hub — on a replacement device, or after local state was damaged and reset. Owns the
//! download and the order of the steps; the checkpoint format is the engine's, the transport
//! `eddy-client`'s.
//!
//! Everything is built in a staging directory beside the target and moved into place with one
//! rename at the end, so an interrupted restore leaves no half-made state for eddyd to start on:
//! 1. download the manifest and state files, each checked against its SHA-256;
//! 2. open them with this device's key (every blob authenticated) and write them as a checkpoint
//!    that continues from an empty WAL (`copy_rebased`) — a wrong key or damaged download stops
//!    here, before anything changes at the hub;
//! 3. for each hub sink: have the hub remove the rows the old device pushed after the checkpoint
//!    (they are computed again from it), and mark the checkpoint's own commit as delivered in
//!    the sink's new outbox (its rows are at the hub already);
//! 4. rename the staging directory to `<state dir>/<pipeline>`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use eddy_client::{v1, HubClient};
use eddy_engine::connector::SinkStateDir;
use eddy_engine::storage::checkpoint::copy_rebased;
use eddy_engine::storage::fs::{create_private_dir_all, RealFs, Storage};
use eddy_engine::storage::header::Owner;

use crate::config::ConfigFile;
use crate::connectors::hub::HubLink;
use crate::connectors::outbox::{FullPolicy, Outbox};

/// What the restore is asked for.
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
    Err(anyhow!("no hub reachable: {}", last.map(|e| e.to_string()).unwrap_or_default()))
}

/// Downloads one blob to `path`, checking its digest and length; fsyncs it.
async fn download(c: &HubClient, req: &RestoreRequest<'_>, f: &v1::StateFile, path: &Path) -> Result<()> {
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

pub fn restore(cfg: &ConfigFile, req: &RestoreRequest<'_>) -> Result<()> {
    let p = req.pipeline;
    if p.is_empty()
        || p.len() > 128
        || !p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        || p.starts_with('.')
    {
        bail!("--pipeline '{p}': a pipeline name (its file name without .sql)");
    }
    let state_dir = cfg.state_dir.clone().ok_or_else(|| anyhow!("give --state-dir (or state_dir in the config)"))?;
    let target = state_dir.join(p);
    if target.exists() {
        bail!(
            "{} exists: a restore only creates a pipeline's state. If that state is damaged or to be replaced, `eddyd state reset --state-dir {} --pipeline {p} --yes` first",
            target.display(),
            state_dir.display()
        );
    }
    let cipher = crate::runtime::load_cipher(cfg)?;
    let link = HubLink::from_config(&cfg.hub).map_err(|m| anyhow!(m))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let staging = state_dir.join(format!(".restore-{p}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let download_dir = staging.join("download");
    let built = staging.join("pipeline");
    create_private_dir_all(&download_dir).with_context(|| format!("{}", download_dir.display()))?;
    let c = rt.block_on(connect(&link))?;
    let index = rt.block_on(c.get_checkpoint(req.gateway, p, req.seq))?;
    if !valid_file_name(&index.manifest_name, "manifest-", "") {
        bail!("the backup's manifest is named '{}', not manifest-<seq>", index.manifest_name);
    }
    let mut bytes = index.manifest.len() as u64;
    for f in &index.files {
        if !valid_file_name(&f.name, "state-", ".dat") {
            bail!("the backup names a state file '{}', not state-<seq>.dat", f.name);
        }
        rt.block_on(download(&c, req, f, &download_dir.join(&f.name)))?;
        bytes += f.bytes;
    }
    let mpath = download_dir.join(&index.manifest_name);
    std::fs::write(&mpath, &index.manifest).with_context(|| format!("{}", mpath.display()))?;
    let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
    let owner = Owner::of(p);
    let copy = copy_rebased(storage.clone(), cipher.clone(), &download_dir, &built.join("checkpoints"), owner)
        .with_context(|| format!("checkpoint {} of {}/{p} cannot be opened with this key", index.seq, req.gateway))?;
    for m in &index.sinks {
        if m.sink.is_empty() || !m.sink.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("the backup names a sink '{}', which is not a sink name", m.sink);
        }
        let r = rt.block_on(c.retract_rows(req.gateway, &m.stream, m.outbox_id, m.next_seq))?;
        tracing::info!(sink = %m.sink, stream = %m.stream, deleted = r.deleted, cut = r.cut, "rows after the checkpoint retracted at the hub");
        let sink_state = SinkStateDir {
            dir: built.join("sinks").join(&m.sink),
            storage: storage.clone(),
            cipher: cipher.clone(),
            owner: owner.child(&m.sink),
        };
        let mut ob = Outbox::open(Some(&sink_state), 256 << 20, FullPolicy::Block)?;
        ob.mark_delivered(m.delivered_end)?;
        println!(
            "sink {}: rows after #{} of stream {} removed at the hub ({} objects deleted, {} cut); they are computed again",
            m.sink,
            m.next_seq.saturating_sub(1),
            m.stream,
            r.deleted,
            r.cut
        );
    }
    std::fs::rename(&built, &target).with_context(|| format!("moving the restored state to {}", target.display()))?;
    eddy_engine::storage::fs::sync_parent(&target).with_context(|| format!("{}", target.display()))?;
    std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    println!(
        "restored pipeline {p} from checkpoint {} of gateway {} (taken {}, {} bytes, {} blobs) into {}",
        copy.seq,
        req.gateway,
        eddy_engine::time::rfc3339_ms(index.created_ms),
        bytes,
        copy.blobs,
        target.display()
    );
    println!("start eddyd with the same pipeline file: it continues from there");
    Ok(())
}
