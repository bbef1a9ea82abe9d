//! `eddyd state check` and `eddyd state reset`: the operator's way to see what of a state
//! directory is intact, and to discard one pipeline's state on purpose. Check reads and verifies
//! every WAL segment, checkpoint and outbox and changes nothing; reset deletes one pipeline's
//! directory only with `--yes`, only when no eddyd holds it, and says what it discards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use eddy_engine::storage::{CheckpointStore, Cipher, Owner, RealFs, Storage};

/// How `check` ended: whether every file is intact.
pub struct CheckOutcome {
    pub damaged: usize,
}

/// The pipeline directories under `dir`: `dir` itself if it is one (it has `wal/` or
/// `checkpoints/`), else its subdirectories that are.
fn pipeline_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let is_pipeline = |d: &Path| d.join("wal").is_dir() || d.join("checkpoints").is_dir();
    if is_pipeline(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("state directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_pipeline(p))
        .collect();
    out.sort();
    Ok(out)
}

/// Whether a running eddyd holds the pipeline directory's lock.
fn in_use(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join("LOCK")) else { return false };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn report_wal(storage: &dyn Storage, cipher: &Cipher, what: &str, dir: &Path, owner: Owner, damaged: &mut usize) {
    match eddy_engine::storage::inspect_wal(storage, cipher, dir, owner) {
        Ok(segs) if segs.is_empty() => println!("  {what}: empty"),
        Ok(segs) => {
            let bytes: u64 = segs.iter().map(|s| s.bytes).sum();
            let mut keys: Vec<u32> = segs.iter().map(|s| s.key_id).collect();
            keys.sort_unstable();
            keys.dedup();
            let (first, end) = (segs[0].first_lsn, segs[segs.len() - 1].end_lsn);
            println!(
                "  {what}: intact — {} segment(s), LSN {first}..{end}, {}, key id(s) {keys:?}",
                segs.len(),
                mib(bytes)
            );
            for s in segs.iter().filter(|s| s.torn_at.is_some()) {
                println!(
                    "    torn tail in {} at offset {} (an interrupted last commit, never acknowledged; cut at the next start)",
                    s.path.display(),
                    s.torn_at.unwrap_or(0)
                );
            }
        }
        Err(e) => {
            *damaged += 1;
            println!("  {what}: DAMAGED — {e}");
        }
    }
}

/// Checks every pipeline's state under `dir`, printing what is intact and what is not.
pub fn check(dir: &Path, cipher: Arc<Cipher>) -> Result<CheckOutcome> {
    let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
    let pipelines = pipeline_dirs(dir)?;
    if pipelines.is_empty() {
        bail!("{}: no pipeline state here (no wal/ or checkpoints/, nor subdirectories with them)", dir.display());
    }
    let mut damaged = 0;
    for p in &pipelines {
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        // Files are bound to the pipeline's name (its directory's), sinks' to theirs within it.
        let owner = Owner::of(&name);
        println!("pipeline {name} ({}){}", p.display(), if in_use(p) { " — in use by a running eddyd" } else { "" });
        if p.join("wal").is_dir() {
            report_wal(storage.as_ref(), &cipher, "wal", &p.join("wal"), owner, &mut damaged);
        }
        let ckdir = p.join("checkpoints");
        if ckdir.is_dir() {
            match CheckpointStore::inspect(storage.clone(), cipher.clone(), &ckdir, owner) {
                Ok(ms) if ms.is_empty() => println!("  checkpoints: none yet"),
                Ok(ms) => {
                    for m in &ms {
                        match &m.result {
                            Ok((lsn, blobs, keys)) => println!(
                                "  checkpoint {}: intact — WAL from LSN {lsn}, {blobs} blob(s), key id(s) {keys:?}",
                                m.seq
                            ),
                            Err(e) => {
                                damaged += 1;
                                println!("  checkpoint {}: DAMAGED — {e}", m.seq);
                            }
                        }
                    }
                    // Recovery takes the newest intact checkpoint (the WAL after it is kept).
                    match ms.iter().position(|m| m.result.is_ok()) {
                        Some(0) => {}
                        Some(i) => println!("    recovery falls back to checkpoint {} and replays the WAL after it", ms[i].seq),
                        None => println!("    no intact checkpoint: this pipeline cannot recover; `eddyd state reset` discards its state"),
                    }
                }
                Err(e) => {
                    damaged += 1;
                    println!("  checkpoints: DAMAGED — {e}");
                }
            }
        }
        if let Ok(sinks) = std::fs::read_dir(p.join("sinks")) {
            let mut sinks: Vec<PathBuf> =
                sinks.filter_map(|e| e.ok().map(|e| e.path())).filter(|d| d.is_dir()).collect();
            sinks.sort();
            for s in sinks {
                let sink = s.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let what = format!("sink {sink} outbox");
                report_wal(storage.as_ref(), &cipher, &what, &s, owner.child(&sink), &mut damaged);
            }
        }
    }
    println!(
        "{}",
        if damaged == 0 { "state: intact".to_string() } else { format!("state: {damaged} damaged part(s)") }
    );
    Ok(CheckOutcome { damaged })
}

/// Discards the state of pipeline `name` under `state_dir` (with `yes`); otherwise only says
/// what would be discarded.
pub fn reset(state_dir: &Path, name: &str, yes: bool) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("--pipeline '{name}': a pipeline name (its file name without .sql), not a path");
    }
    let dir = state_dir.join(name);
    if !dir.is_dir() {
        bail!("{}: no state for pipeline '{name}' here", dir.display());
    }
    // Held for the deletion: no eddyd can start on this directory meanwhile.
    let lock = std::fs::File::open(dir.join("LOCK")).ok();
    if let Some(l) = &lock {
        if rustix::fs::flock(l, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            bail!(
                "{}: a running eddyd is using this state; stop it (or remove the pipeline and reload) first",
                dir.display()
            );
        }
    }
    let mut files = vec![];
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                files.push((p, len));
            }
        }
    }
    files.sort();
    let total: u64 = files.iter().map(|f| f.1).sum();
    println!(
        "{} the state of pipeline '{name}' ({}): {} file(s), {}",
        if yes { "discarding" } else { "would discard" },
        dir.display(),
        files.len(),
        mib(total)
    );
    for (p, len) in &files {
        println!("  {} ({len} bytes)", p.strip_prefix(&dir).unwrap_or(p).display());
    }
    println!("  its windows, joins and other operator state, input not yet checkpointed, and output not yet sent from outboxes");
    if !yes {
        bail!("nothing discarded: run again with --yes to discard it (the pipeline then starts afresh)");
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    eddy_engine::storage::sync_parent(&dir).with_context(|| format!("syncing {}", state_dir.display()))?;
    drop(lock);
    println!("discarded; pipeline '{name}' starts with empty state at its next start");
    Ok(())
}
