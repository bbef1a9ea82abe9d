//! The live runtime of `eddyd run`: plans and recovers every pipeline, runs each on a worker
//! thread pinned to one of the configured cores, and supervises them — systemd notifications
//! (READY after recovery, WATCHDOG while every worker is healthy, STATUS, RELOADING/READY around
//! SIGHUP, STOPPING and final checkpoints on SIGTERM), metrics, reload, and the management API's
//! requests (deploy, pause, resume, delete, checkpoint), which it takes between supervision
//! rounds. Owns threads and their lifecycle; never touches a pipeline's state from outside its
//! worker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{ConfigFile, FleetFragment, PipelineSettings};
use crate::connectors::hub::backup::{Backup, BackupSettings};
use crate::connectors::hub::fleet::FleetAgent;
use crate::connectors::hub::HubLink;
use crate::connectors::Provider;
use crate::control::{check_name, sql_sha256, Catalog, Command, CommandError, DeployOutcome, FatalSlot, PipelineView};
use crate::metrics::Registry;
use crate::start_failure::{retry_delay, StartFailure, START_FAILED};
use crate::systemd::{self, Notifier};
use eddy_engine::connector::SinkStateDir;
use eddy_engine::storage::{Cipher, Owner, RealFs, Storage};
use eddy_engine::{DurableConfig, LiveControl, Mode, Pipeline, PipelineConfig, Summary};

/// Durable state shared by all pipelines: the state dir, its storage and key.
#[derive(Clone)]
pub struct StateContext {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub cipher: Arc<Cipher>,
}

/// Loads the state key as the config says (a key file, the systemd credential, or none).
pub fn load_cipher(cfg: &ConfigFile) -> Result<Arc<Cipher>> {
    let enc = &cfg.encryption;
    if enc.enabled == Some(false) {
        if enc.key_file.is_some() {
            bail!("encryption is turned off (--no-encryption / encryption.enabled = false) and a key file is given: choose one");
        }
        return Ok(Arc::new(Cipher::plaintext()));
    }
    if let Some(k) = &enc.key_file {
        return Ok(Arc::new(crate::keys::from_key_file(k)?));
    }
    let cred = enc.key_credential.clone().unwrap_or_else(|| "eddy-state-key".into());
    match crate::keys::from_credential(&cred)? {
        Some(c) => Ok(Arc::new(c)),
        None => bail!(
            "state is encrypted at rest, and no key was given: pass --key-file FILE (make one with `eddyd keygen > FILE; chmod 600 FILE`), set encryption.key_file, provide the systemd credential '{cred}', or turn encryption off explicitly with --no-encryption"
        ),
    }
}

/// Plans one pipeline (connectors resolved, nothing opened) as the config says.
pub fn plan(
    cfg: &ConfigFile,
    name: &str,
    sql: &str,
    file_dir: PathBuf,
    state: Option<&StateContext>,
    registry: &Arc<Registry>,
    stopping: &Arc<AtomicBool>,
) -> Result<Pipeline> {
    let mut pc = PipelineConfig::new(file_dir, Mode::Live);
    let l = &cfg.limits;
    let d = eddy_engine::Limits::default();
    pc.limits.max_open_windows = l.max_open_windows.unwrap_or(d.max_open_windows).max(1);
    pc.limits.max_groups = l.max_groups.unwrap_or(d.max_groups).max(1);
    pc.limits.batch_rows = l.batch_rows.unwrap_or(d.batch_rows).clamp(1, 1 << 20);
    pc.exactly_once = state.is_some();
    pc.sink_state = state.map(|s| SinkStateDir {
        dir: s.dir.join(name).join("sinks"),
        storage: s.storage.clone(),
        cipher: s.cipher.clone(),
        owner: Owner::of(name),
    });
    pc.connectors = Some(Arc::new(Provider {
        pipeline: name.to_string(),
        mqtt: cfg.mqtt.clone(),
        kafka: cfg.kafka.clone(),
        hub: cfg.hub.clone(),
        metrics: registry.clone(),
        stopping: stopping.clone(),
        durable: state.is_some(),
    }));
    let cores = cores(cfg)?;
    pc.shards = cfg.shards.unwrap_or(cores.len()).max(1);
    pc.shard_queue = cfg.limits.shard_queue.unwrap_or(pc.shard_queue).max(1);
    pc.on_shard_thread = Some(Arc::new(move |k| pin_to(cores[k % cores.len()])));
    pc.view_bytes = cfg.api.view_bytes();
    pc.decode_threads = cfg.decode_threads.unwrap_or(1);
    let p = Pipeline::plan(sql, &pc)?;
    if let (Some(why), true) = (&p.summary().unsharded_because, pc.shards > 1) {
        tracing::info!(pipeline = name, reason = %why, "pipeline runs on one shard");
    }
    Ok(p)
}

fn durable_config(cfg: &ConfigFile, name: &str, s: &StateContext) -> DurableConfig {
    let mut d = DurableConfig::new(s.dir.join(name), s.storage.clone(), s.cipher.clone());
    // State files are bound to the pipeline's name: files of another pipeline are refused.
    d.owner = Owner::of(name);
    if let Some(ms) = cfg.checkpoint.interval_ms {
        d.checkpoint_interval = Duration::from_millis(ms.max(1));
    }
    let w = &cfg.wal;
    if let Some(v) = w.commit_delay_us {
        d.wal.commit_delay = Duration::from_micros(v);
    }
    if let Some(v) = w.commit_bytes {
        d.wal.commit_bytes = v.max(1);
    }
    if let Some(v) = w.segment_bytes {
        d.wal.segment_bytes = v.max(1 << 16);
    }
    if let Some(v) = w.max_record_bytes {
        d.wal.max_record_bytes = v.max(1 << 10);
    }
    if let Some(v) = cfg.limits.max_staged_bytes {
        d.max_staged_bytes = v.max(1);
    }
    d
}

/// The cores workers may be pinned to: the configured ones, else every core this process may use.
pub fn cores(cfg: &ConfigFile) -> Result<Vec<usize>> {
    let allowed = rustix::thread::sched_getaffinity(None).map_err(|e| anyhow!("sched_getaffinity: {e}"))?;
    let online: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU).filter(|c| allowed.is_set(*c)).collect();
    match &cfg.cores {
        None => Ok(online),
        Some(want) => {
            for c in want {
                if !online.contains(c) {
                    bail!("cores: core {c} is not available to this process (available: {online:?})");
                }
            }
            Ok(want.clone())
        }
    }
}

fn pin_to(core: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(core, error = %e, "cannot pin the worker to its core; it runs unpinned");
    }
}

struct Worker {
    file: PathBuf,
    sql: String,
    /// The settings it was started with.
    settings: PipelineSettings,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
    core: usize,
    control: Arc<LiveControl>,
    view: PipelineView,
}

/// A pipeline the operator paused: not running, its state kept, its definition remembered.
struct Paused {
    file: PathBuf,
    view: PipelineView,
}

/// A pipeline file's SQL.
fn read_pipeline(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read pipeline {}", file.display()))
}

/// Plans one pipeline file as `run` plans it with `cfg` (its connector defaults and limits),
/// opening nothing; refused when `cfg` keeps state and an operator's state is not checkpointed.
pub fn check_pipeline(cfg: &ConfigFile, name: &str, file: &Path, registry: &Arc<Registry>) -> Result<Pipeline> {
    let sql = read_pipeline(file)?;
    let dir = file.parent().map(PathBuf::from).filter(|d| !d.as_os_str().is_empty());
    let stopping = Arc::new(AtomicBool::new(false));
    let p = plan(cfg, name, &sql, dir.unwrap_or_else(|| PathBuf::from(".")), None, registry, &stopping)
        .with_context(|| format!("pipeline {}", file.display()))?;
    if cfg.state_dir.is_some() {
        if let Some(op) = p.not_checkpointable() {
            bail!(
                "pipeline {}: cannot run with durable state yet: the {op} operator's state is not checkpointed",
                file.display()
            );
        }
    }
    Ok(p)
}

/// The plan as `eddyd check` prints it: counts, then one line per sink and the sharding.
pub fn plan_text(s: &Summary) -> String {
    let mut t = format!(
        "{} source(s), {} table(s), {} view(s), {} sink(s)",
        s.sources.len(),
        s.tables.len(),
        s.views.len(),
        s.sinks.len()
    );
    for (name, updating) in &s.sinks {
        t.push_str(&format!("\nsink {name}: {}", if *updating { "updating (upsert)" } else { "append-only" }));
    }
    t.push_str(&format!("\nsharding: {}", sharding_text(s)));
    t
}

/// Remembers a fatal outcome (a worker failed while stopping) for `command` to stop eddyd with,
/// after the caller has been answered.
fn note_fatal<T>(fatal: &mut Option<anyhow::Error>, r: Result<T, CommandError>) -> Result<T, CommandError> {
    if let Err(CommandError::Fatal(why)) = &r {
        *fatal = Some(anyhow!("{why}"));
    }
    r
}

/// What each name in a pipeline is, for queries that name the wrong thing.
fn relations(s: &Summary) -> Vec<(String, &'static str)> {
    let named = |names: &[String], kind: &'static str| names.iter().map(|n| (n.clone(), kind)).collect::<Vec<_>>();
    let mut all = named(&s.views, "view");
    all.extend(named(&s.sources, "source"));
    all.extend(named(&s.tables, "table"));
    all.extend(s.sinks.iter().map(|(n, _)| (n.clone(), "sink")));
    all
}

fn sharding_text(s: &Summary) -> String {
    match &s.unsharded_because {
        None => s.shard_keys.join(", "),
        Some(why) => format!("none, runs on one core ({why})"),
    }
}

/// Where deployed pipelines' SQL is kept, and the markers of paused pipelines.
fn deployed_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("control").join("deployed")
}

fn paused_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("control").join("paused")
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync dir).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the config again (file, fleet fragment, flags): with the fragment kept in the state dir
/// (`None`), or with the one given.
pub type ReloadConfig = Box<dyn Fn(Option<&FleetFragment>) -> Result<ConfigFile>>;

/// How long after start, a reload or a command that plans pipelines the memory only planning
/// used is released (`crate::memory`): by then pipelines have recovered and connected.
const RELEASE_STARTUP_AFTER: Duration = Duration::from_secs(10);

pub struct Runtime {
    cfg: ConfigFile,
    /// Re-reads the config (file + fleet fragment + flags) on SIGHUP and fleet versions.
    reload_cfg: ReloadConfig,
    state: Option<StateContext>,
    registry: Arc<Registry>,
    stopping: Arc<AtomicBool>,
    cores: Vec<usize>,
    next_core: usize,
    workers: BTreeMap<String, Worker>,
    paused: BTreeMap<String, Paused>,
    /// Pipelines that did not start, held with their error and tried again (`start_failure`).
    held: BTreeMap<String, StartFailure>,
    notifier: Notifier,
    catalog: Arc<Catalog>,
    fatal: Arc<FatalSlot>,
    commands: Option<std::sync::mpsc::Receiver<Command>>,
    access: Arc<std::sync::RwLock<crate::api::access::AccessPolicy>>,
    /// Checkpoint backups to the hub (`[hub.backup]`), when enabled.
    backup: Option<Arc<Backup>>,
    /// Follows the group's desired state at the hub (`[hub.fleet]`), when configured.
    fleet: Option<FleetAgent>,
    /// Pipelines a restore holds paused (`Command::HoldForRestore`): no other command starts,
    /// replaces or removes them until it ends.
    restoring: BTreeSet<String>,
}

/// The uploader `[hub.backup]` asks for, if any (it needs a state dir and `[hub]`).
fn start_backup(cfg: &ConfigFile, registry: &Arc<Registry>) -> Result<Option<Arc<Backup>>> {
    let b = &cfg.hub.backup;
    if !b.enabled {
        return Ok(None);
    }
    if cfg.state_dir.is_none() {
        bail!("hub.backup.enabled needs a state dir (there is nothing durable to back up without one)");
    }
    let link = HubLink::from_config(&cfg.hub).map_err(|m| anyhow!("hub.backup: {m}"))?;
    let settings = BackupSettings {
        every_checkpoints: b.every_checkpoints.unwrap_or(1).max(1),
        max_bytes_per_s: b.max_bytes_per_s.unwrap_or(4 << 20).max(4096),
        drain_timeout: Duration::from_millis(b.drain_timeout_ms.unwrap_or(5000)),
    };
    let backup = Backup::start(link, settings, registry.clone()).context("starting checkpoint backups")?;
    tracing::info!(
        every = settings.every_checkpoints,
        max_bytes_per_s = settings.max_bytes_per_s,
        "checkpoint backups to the hub"
    );
    Ok(Some(Arc::new(backup)))
}

/// Offers a worker's new checkpoints for backup: every `every`-th, and the last.
struct BackupTap {
    backup: Arc<Backup>,
    pipeline: String,
    last_seq: u64,
    seen: u64,
}

impl BackupTap {
    fn after_step(&mut self, p: &Pipeline, last: bool) {
        let Some(files) = p.last_checkpoint_files() else { return };
        if files.seq == self.last_seq {
            return;
        }
        self.last_seq = files.seq;
        self.seen += 1;
        if last || self.seen.is_multiple_of(self.backup.every_checkpoints()) {
            self.backup.offer(&self.pipeline, &files, p.state_identity());
        }
    }
}

impl Runtime {
    pub fn new(cfg: ConfigFile, reload_cfg: ReloadConfig) -> Result<Runtime> {
        let state = match &cfg.state_dir {
            Some(dir) => {
                let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
                let cipher = load_cipher(&cfg)?;
                tracing::info!(wal_io = storage.backend(), encrypted = cipher.is_encrypted(), state_dir = %dir.display(), "durable state");
                Some(StateContext { dir: dir.clone(), storage, cipher })
            }
            None => {
                tracing::warn!("no state dir: pipelines run without durable state; a restart loses their windows, sinks are not exactly-once, and MQTT input is acknowledged when read");
                None
            }
        };
        Ok(Runtime {
            cores: cores(&cfg)?,
            cfg,
            reload_cfg,
            state,
            registry: Arc::new(Registry::default()),
            stopping: Arc::new(AtomicBool::new(false)),
            next_core: 0,
            workers: BTreeMap::new(),
            paused: BTreeMap::new(),
            held: BTreeMap::new(),
            notifier: Notifier::from_env(),
            catalog: Arc::default(),
            fatal: Arc::default(),
            commands: None,
            access: Arc::default(),
            backup: None,
            fleet: None,
            restoring: BTreeSet::new(),
        })
    }

    /// Every pipeline to run: the config's files, then the deployed ones (a name defined both
    /// ways is refused: which one runs would be a guess).
    fn pipelines(&self, cfg: &ConfigFile) -> Result<BTreeMap<String, (PathBuf, String)>> {
        let mut out: BTreeMap<String, (PathBuf, String)> =
            cfg.pipeline_files()?.into_iter().map(|(n, f)| (n, (f.clone(), format!("file {}", f.display())))).collect();
        if let Some(s) = &self.state {
            let dir = deployed_dir(&s.dir);
            let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(anyhow!("{}: {e}", dir.display())),
            };
            found.sort();
            for f in found {
                let name = crate::config::pipeline_name(&f);
                if let Some((other, _)) = out.get(&name) {
                    bail!(
                        "pipeline {name} is defined by {} and was also deployed ({}); remove one",
                        other.display(),
                        f.display()
                    );
                }
                out.insert(name, (f, "deployed".to_string()));
            }
        }
        Ok(out)
    }

    /// Names of pipelines the operator paused (kept across restarts with a state dir).
    fn paused_names(&self) -> BTreeSet<String> {
        let Some(s) = &self.state else { return self.paused.keys().cloned().collect() };
        std::fs::read_dir(paused_dir(&s.dir))
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    /// Publishes the pipelines for the API's readers.
    fn publish(&self) {
        self.publish_with_pending(&BTreeMap::new());
    }

    /// Publishes the pipelines, listing `pending` ones (at start-up: not yet recovered) too, so
    /// that a status asked while eddyd recovers shows them as starting rather than not at all.
    fn publish_with_pending(&self, pending: &BTreeMap<String, PipelineView>) {
        let mut views: BTreeMap<String, PipelineView> = pending.clone();
        views.extend(self.workers.iter().map(|(n, w)| (n.clone(), w.view.clone())));
        for (n, h) in &self.held {
            let sql = h.sql.clone().unwrap_or_default();
            let view = PipelineView {
                origin: h.origin.clone(),
                sql_sha256: sql_sha256(&sql),
                sql: Arc::from(sql),
                ..PipelineView::default()
            };
            views.insert(n.clone(), view);
        }
        for (n, p) in &self.paused {
            views.insert(
                n.clone(),
                PipelineView {
                    paused: true,
                    taps: Vec::new(),
                    source_taps: Vec::new(),
                    views: Vec::new(),
                    ..p.view.clone()
                },
            );
        }
        self.catalog.publish(views);
    }

    /// Plans and recovers one pipeline, then starts its worker.
    fn start(&mut self, name: &str, file: &Path, sql: String, origin: &str) -> Result<()> {
        let dir = file
            .parent()
            .map(PathBuf::from)
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut p = plan(&self.cfg, name, &sql, dir.clone(), self.state.as_ref(), &self.registry, &self.stopping)
            .with_context(|| format!("pipeline {}", file.display()))?;
        if let Some(s) = &self.state {
            match p.open_durable(&sql, durable_config(&self.cfg, name, s)) {
                // Shards not configured: keep the count the state was written with.
                Err(eddy_engine::EngineError::ShardCount { written, .. }) if self.cfg.shards.is_none() => {
                    tracing::info!(
                        pipeline = name,
                        shards = written,
                        "keeping the shard count the state was written with"
                    );
                    let cfg = ConfigFile { shards: Some(written), ..self.cfg.clone() };
                    p = plan(&cfg, name, &sql, dir, self.state.as_ref(), &self.registry, &self.stopping)
                        .with_context(|| format!("pipeline {}", file.display()))?;
                    p.open_durable(&sql, durable_config(&self.cfg, name, s))
                        .with_context(|| format!("pipeline {}", file.display()))?;
                }
                Err(e @ eddy_engine::EngineError::Storage(_)) => {
                    // Damage or a key problem: say how to see what is intact, and the way out.
                    return Err(anyhow::Error::new(e).context(format!(
                        "pipeline {} (see `eddyd state check {}`; `eddyd state reset --state-dir {} --pipeline {name}` discards its state)",
                        file.display(),
                        s.dir.join(name).display(),
                        s.dir.display()
                    )));
                }
                r => r.with_context(|| format!("pipeline {}", file.display()))?,
            }
        }
        let core = self.cores[self.next_core % self.cores.len()];
        self.next_core += 1;
        let s = p.summary();
        let view = PipelineView {
            origin: origin.to_string(),
            sql: Arc::from(sql.as_str()),
            sql_sha256: sql_sha256(&sql),
            plan: plan_text(s),
            shards: s.shards,
            sharding: sharding_text(s),
            paused: false,
            starting: false,
            taps: p.taps(),
            source_taps: p.source_taps(),
            views: p.views(),
            relations: relations(s),
        };
        let control = p.control();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, reg, n) = (stop.clone(), self.registry.clone(), name.to_string());
        reg.set_pipeline(&n, "running", Some(p.observe()), None);
        let mut tap =
            self.backup.clone().map(|backup| BackupTap { backup, pipeline: name.to_string(), last_seq: 0, seen: 0 });
        let handle = std::thread::Builder::new().name(format!("pipeline {name}")).spawn(move || {
            pin_to(core);
            let r = p.run_live_observed(&st, Duration::from_millis(500), &mut |p| {
                if let Some(t) = tap.as_mut() {
                    t.after_step(p, false);
                }
                reg.set_pipeline(&n, "running", Some(p.observe()), None)
            });
            if let (Ok(()), Some(t)) = (&r, tap.as_mut()) {
                t.after_step(&p, true);
            }
            match &r {
                Ok(()) => reg.set_pipeline(&n, "ended", Some(p.observe()), None),
                Err(e) => reg.set_pipeline(&n, "failed", None, Some(e.to_string())),
            }
            r.map_err(anyhow::Error::from)
        })?;
        tracing::info!(pipeline = name, core, "pipeline started");
        self.paused.remove(name);
        self.workers.insert(
            name.to_string(),
            Worker {
                file: file.to_path_buf(),
                sql,
                settings: self.cfg.pipeline_settings(),
                stop,
                handle: Some(handle),
                core,
                control,
                view,
            },
        );
        self.publish();
        Ok(())
    }

    /// Stops one worker (it takes its final checkpoint) and waits for it.
    fn stop_worker(&mut self, name: &str) -> Result<()> {
        let Some(mut w) = self.workers.remove(name) else { return Ok(()) };
        w.stop.store(true, Ordering::SeqCst);
        let r = match w.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("the worker thread panicked")),
            None => Ok(()),
        };
        tracing::info!(pipeline = name, core = w.core, "pipeline stopped");
        self.publish();
        r.with_context(|| format!("pipeline {name}"))
    }

    /// Starts the API and everything, reports READY, then supervises until SIGTERM or a failure.
    pub fn run(mut self) -> Result<()> {
        let files = self.pipelines(&self.cfg)?;
        let api_on = self.cfg.api.enabled != Some(false);
        if files.is_empty() && !api_on {
            bail!("no pipelines: give --pipeline FILE, or pipelines_dir / pipelines in the config");
        }
        if let Some(addr) = &self.cfg.metrics.listen {
            let local =
                crate::metrics::serve(addr, self.registry.clone()).with_context(|| format!("metrics.listen {addr}"))?;
            tracing::info!(address = %local, "metrics on /metrics, /healthz, /readyz");
        }
        self.backup = start_backup(&self.cfg, &self.registry)?;
        // Listed from the first answer of the API on, as starting until each is recovered.
        let mut pending: BTreeMap<String, PipelineView> = files
            .iter()
            .map(|(name, (_, origin))| {
                (name.clone(), PipelineView { origin: origin.clone(), starting: true, ..PipelineView::default() })
            })
            .collect();
        self.publish_with_pending(&pending);
        let fleet_group = self.cfg.hub.fleet.group.clone();
        let fleet_view = Arc::new(crate::control::FleetView::default());
        if let (Some(group), Some(state)) = (&fleet_group, &self.state) {
            crate::connectors::hub::fleet::load_view(&state.dir, group, &fleet_view)
                .context("reading what the fleet agent applied")?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(self.cfg.api.max_pending_commands.unwrap_or(16).max(1));
        if api_on || fleet_group.is_some() {
            self.commands = Some(rx);
        }
        let api = if api_on {
            let tx = tx.clone();
            crate::api::start(
                &self.cfg,
                crate::api::Shared {
                    policy: self.access.clone(),
                    registry: self.registry.clone(),
                    catalog: self.catalog.clone(),
                    fleet: fleet_view.clone(),
                    fatal: self.fatal.clone(),
                    commands: tx,
                    state: self.state.clone(),
                    hub: HubLink::from_config(&self.cfg.hub),
                },
            )?
        } else {
            None
        };
        let paused = self.paused_names();
        for (name, (file, origin)) in &files {
            // Published before `name` is removed: it stays listed (starting) while it recovers.
            self.publish_with_pending(&pending);
            pending.remove(name);
            if paused.contains(name) {
                let sql = read_pipeline(file)?;
                self.keep_paused(name, file, &sql, origin);
                continue;
            }
            if !self.cfg.required_pipelines.contains(file) {
                self.start_or_hold(name, file, origin, read_pipeline(file));
                continue;
            }
            // Named on the command line: it runs or eddyd does not (the ones already started
            // stop cleanly; the first error is the one to report).
            let started = read_pipeline(file).and_then(|sql| self.start(name, file, sql, origin));
            if let Err(e) = started {
                let _ = self.shutdown();
                return Err(e);
            }
        }
        // A pipeline that does not start is held while anything else runs or could repair it
        // (the API, the fleet agent); with nothing of the kind, there is nothing to run: exit.
        let reachable = api.is_some() || fleet_group.is_some();
        if self.workers.is_empty() && self.paused.is_empty() && !reachable {
            if let Some(e) = self.held_error() {
                return Err(e);
            }
        }
        self.publish();
        if let Some(group) = fleet_group {
            let state = self
                .state
                .as_ref()
                .ok_or_else(|| anyhow!("hub.fleet needs a state dir: deployed pipelines are kept there"))?;
            let link = HubLink::from_config(&self.cfg.hub).map_err(|m| anyhow!("hub.fleet: {m}"))?;
            let agent = FleetAgent::start(link, group, &state.dir, tx.clone(), self.registry.clone(), fleet_view)
                .context("starting the fleet agent")?;
            self.fleet = Some(agent);
        }
        drop(tx);
        self.registry.ready.store(true, Ordering::Release);
        self.notifier.notify("READY=1");
        self.notifier.status(&self.registry.status_line());
        tracing::info!(pipelines = files.len(), "eddyd ready");
        // Start-up's memory goes back once pipelines have had time to recover; again after
        // anything that plans pipelines (a reload, a deploy).
        let mut release_at = Some(Instant::now() + RELEASE_STARTUP_AFTER);
        let watchdog = systemd::watchdog_interval();
        let mut last_watchdog = Instant::now() - Duration::from_secs(3600);
        let mut last_status = Instant::now();
        let mut failure: Option<anyhow::Error> = None;
        loop {
            if systemd::stop_requested() {
                break;
            }
            if let Some(why) = self.fatal.take() {
                failure = Some(anyhow!(why));
                break;
            }
            if release_at.is_some_and(|t| Instant::now() >= t) {
                release_at = None;
                let r = crate::memory::release_startup_memory();
                tracing::debug!(
                    binary_bytes = r.binary_bytes,
                    heap_trimmed = r.heap_trimmed,
                    "start-up memory released"
                );
            }
            if systemd::take_reload() {
                release_at = Some(Instant::now() + RELEASE_STARTUP_AFTER);
                if let Err(e) = self.reload() {
                    // A worker that stopped with an error (its final checkpoint's fsync, say) is
                    // not restarted: fail-stop, as for a worker failing on its own.
                    tracing::error!(error = %format!("{e:#}"), "reload stopped a pipeline that had failed; stopping eddyd");
                    failure = Some(e);
                    break;
                }
            }
            // A worker that ended by itself: its sources ended (fine) or it failed (fail-stop:
            // eddyd stops the others cleanly and exits non-zero, so systemd restarts it and
            // recovery takes over).
            let finished: Vec<String> = self
                .workers
                .iter()
                .filter(|(_, w)| w.handle.as_ref().is_some_and(|h| h.is_finished()))
                .map(|(n, _)| n.clone())
                .collect();
            let any_ended = !finished.is_empty();
            for name in finished {
                match self.stop_worker(&name) {
                    Ok(()) => {
                        tracing::info!(pipeline = %name, "pipeline ended: its sources ended; final checkpoint taken")
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %name, error = %format!("{e:#}"), "pipeline failed");
                        failure = Some(e);
                    }
                }
            }
            // Every pipeline has ended by itself (bounded inputs): nothing is left to run (a held
            // one, which never ran, makes that an error).
            if failure.is_none() && any_ended && self.workers.is_empty() {
                failure = self.held_error();
            }
            if failure.is_some() || (any_ended && self.workers.is_empty()) {
                break;
            }
            self.retry_held();
            if let Some(every) = watchdog {
                if last_watchdog.elapsed() >= every / 2 {
                    match self.registry.healthy() {
                        Ok(()) => {
                            self.notifier.notify("WATCHDOG=1");
                            last_watchdog = Instant::now();
                        }
                        Err(why) => tracing::error!(reason = %why, "unhealthy: not feeding the watchdog"),
                    }
                }
            }
            if last_status.elapsed() >= Duration::from_secs(5) {
                self.notifier.status(&self.registry.status_line());
                last_status = Instant::now();
            }
            // Wait for the next API request, or 50 ms: the supervision round's pace.
            let next = self.commands.as_ref().map(|rx| rx.recv_timeout(Duration::from_millis(50)));
            match next {
                None => std::thread::sleep(Duration::from_millis(50)),
                Some(Ok(cmd)) => {
                    if cmd.plans_pipelines() {
                        release_at = Some(Instant::now() + RELEASE_STARTUP_AFTER);
                    }
                    if let Err(e) = self.command(cmd) {
                        failure = Some(e);
                        break;
                    }
                }
                Some(Err(_)) => {}
            }
        }
        self.notifier.notify("STOPPING=1");
        self.notifier.status("stopping: final checkpoints");
        if let Some(f) = &self.fleet {
            f.signal_stop();
        }
        // Requests that arrive from now on are refused (the API stops with this runtime).
        if let Some(rx) = self.commands.take() {
            while let Ok(cmd) = rx.try_recv() {
                cmd.refuse("eddyd is stopping");
            }
        }
        let stopped = self.shutdown();
        if let Some(mut f) = self.fleet.take() {
            f.stop();
        }
        if let Some(b) = self.backup.take() {
            b.close();
        }
        match failure {
            Some(e) => Err(e),
            None => stopped,
        }
    }

    /// Starts a pipeline from its file's `sql` as read; one that does not start (or whose file
    /// could not be read) is held with its error, to be tried again after [`retry_delay`].
    /// Whether it started.
    fn start_or_hold(&mut self, name: &str, file: &Path, origin: &str, sql: Result<String>) -> bool {
        if self.held.contains_key(name) {
            // The held entry's error must not outlive it: the worker reports afresh.
            self.registry.remove_pipeline(name);
        }
        let started = match sql {
            Ok(sql) => self.start(name, file, sql.clone(), origin).map_err(|e| (Some(sql), e)),
            Err(e) => Err((None, e)),
        };
        match started {
            Ok(()) => {
                if let Some(h) = self.held.remove(name) {
                    tracing::info!(pipeline = name, attempts = h.attempts + 1, "held pipeline started");
                }
                true
            }
            Err((sql, e)) => {
                self.hold(name, file, origin, sql, &e);
                false
            }
        }
    }

    /// Holds a pipeline that did not start (or keeps holding it, one attempt more).
    fn hold(&mut self, name: &str, file: &Path, origin: &str, sql: Option<String>, e: &anyhow::Error) {
        let attempts = self.held.get(name).map_or(0, |h| h.attempts) + 1;
        let error = format!("{e:#}");
        let retry_in = retry_delay(attempts);
        tracing::error!(
            pipeline = name,
            error = %error,
            attempts,
            retry_in_s = retry_in.as_secs(),
            "pipeline did not start; held, to be tried again"
        );
        self.registry.remove_pipeline(name);
        // What its failed plan registered; the next attempt registers them again.
        self.registry.remove_connectors(name);
        self.registry.set_pipeline(name, START_FAILED, None, Some(error.clone()));
        let (file, origin) = (file.to_path_buf(), origin.to_string());
        let retry_at = Instant::now() + retry_in;
        self.held.insert(name.to_string(), StartFailure { file, origin, sql, error, attempts, retry_at });
    }

    /// Stops holding `name` (deleted, removed from the files, paused, replaced).
    fn unhold(&mut self, name: &str) {
        if self.held.remove(name).is_some() {
            self.registry.remove_pipeline(name);
        }
    }

    /// Tries again the held pipelines whose delay has passed.
    fn retry_held(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, PathBuf, String)> = self
            .held
            .iter()
            .filter(|(n, h)| h.retry_at <= now && !self.restoring.contains(*n))
            .map(|(n, h)| (n.clone(), h.file.clone(), h.origin.clone()))
            .collect();
        for (name, file, origin) in due {
            if self.start_or_hold(&name, &file, &origin, read_pipeline(&file)) {
                self.publish();
            }
        }
    }

    /// The held pipelines' errors as one (`None` when none is held).
    fn held_error(&self) -> Option<anyhow::Error> {
        let all: Vec<&str> = self.held.values().map(|h| h.error.as_str()).collect();
        (!all.is_empty()).then(|| anyhow!(all.join("; ")))
    }

    /// Remembers a pipeline that stays paused (marked so at start).
    fn keep_paused(&mut self, name: &str, file: &Path, sql: &str, origin: &str) {
        self.unhold(name);
        let view = PipelineView {
            origin: origin.to_string(),
            sql: Arc::from(sql),
            sql_sha256: sql_sha256(sql),
            paused: true,
            ..PipelineView::default()
        };
        self.paused.insert(name.to_string(), Paused { file: file.to_path_buf(), view });
        self.registry.set_pipeline(name, "paused", None, None);
        tracing::info!(pipeline = name, "pipeline paused (by the operator); not started");
        self.publish();
    }

    /// Carries out one API request. An error is fail-stop (a worker failed while stopping):
    /// the request is answered first.
    fn command(&mut self, cmd: Command) -> Result<()> {
        let mut fatal = None;
        let mut check = |r| note_fatal(&mut fatal, r);
        match cmd {
            Command::Validate { name, sql, reply } => {
                let _ = reply.send(self.validate(&name, &sql));
            }
            Command::Deploy { name, sql, reset_state, reply } => {
                let _ = reply.send(note_fatal(&mut fatal, self.deploy(&name, sql, reset_state)));
            }
            Command::Pause { name, reply } => {
                let _ = reply.send(check(self.pause(&name)));
            }
            Command::Resume { name, reply } => {
                let _ = reply.send(check(self.resume(&name)));
            }
            Command::Delete { name, drop_state, reply } => {
                let _ = reply.send(check(self.delete(&name, drop_state)));
            }
            Command::Checkpoint { name, reply } => {
                let r = match self.workers.get(&name) {
                    Some(_) if self.state.is_none() => Err(CommandError::Precondition(
                        "eddyd runs without a state dir: there is nothing to checkpoint".into(),
                    )),
                    Some(w) => Ok(w.control.clone()),
                    None if self.paused.contains_key(&name) => Err(CommandError::Precondition(format!(
                        "pipeline {name} is paused; its last checkpoint stands"
                    ))),
                    None => Err(CommandError::NotFound(format!("no pipeline named {name}"))),
                };
                let _ = reply.send(r);
            }
            Command::Reload { reply } => {
                let r = self.reload();
                let _ = reply.send(match &r {
                    Ok(problems) => Ok(problems.clone()),
                    Err(e) => Err(CommandError::Fatal(format!("{e:#}"))),
                });
                r?;
            }
            Command::Config { reply } => {
                let _ = reply.send(
                    toml::to_string(&self.cfg)
                        .map_err(|e| CommandError::Precondition(format!("rendering the config: {e}"))),
                );
            }
            Command::ValidateFleet { config, pipelines, owned, reply } => {
                let _ = reply.send(self.validate_fleet(&config, &pipelines, &owned));
            }
            Command::HoldForRestore { name, reply } => {
                let _ = reply.send(note_fatal(&mut fatal, self.hold_for_restore(&name)));
            }
            Command::EndRestore { name, staging, reply } => {
                let _ = reply.send(note_fatal(&mut fatal, self.end_restore(&name, staging)));
            }
            Command::SetFleetConfig { config, reply } => match self.keep_fleet_config(&config) {
                Err(e) => {
                    let _ = reply.send(note_fatal(&mut fatal, Err(e)));
                }
                Ok(()) => {
                    let r = self.reload();
                    let _ = reply.send(match &r {
                        Ok(problems) if problems.is_empty() => Ok(()),
                        Ok(problems) => Err(CommandError::Precondition(problems.join("; "))),
                        Err(e) => Err(CommandError::Fatal(format!("{e:#}"))),
                    });
                    r?;
                }
            },
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn validate(&self, name: &str, sql: &str) -> Result<crate::control::Validation, CommandError> {
        self.validate_with(&self.cfg, name, sql)
    }

    /// Lays `fragment` over the config and plans each pipeline with the result; changes nothing.
    /// A pipeline of the gateway's own (from its config, or deployed by hand: not in `owned`)
    /// is never replaced by the fleet's of the same name.
    fn validate_fleet(
        &self,
        fragment: &FleetFragment,
        pipelines: &[(String, String)],
        owned: &[String],
    ) -> Result<(), CommandError> {
        for (name, _) in pipelines {
            let here =
                self.workers.contains_key(name) || self.paused.contains_key(name) || self.held.contains_key(name);
            if here && !owned.contains(name) {
                return Err(CommandError::Precondition(format!(
                    "pipeline {name}: this gateway has a pipeline of that name of its own (from its config or \
                     deployed by hand), which the fleet does not replace: delete it there, or name the fleet's otherwise"
                )));
            }
        }
        let cfg = self.config_with(fragment)?;
        for (name, sql) in pipelines {
            self.validate_with(&cfg, name, sql).map_err(|e| CommandError::Invalid(format!("pipeline {name}: {e}")))?;
        }
        Ok(())
    }

    /// The config as a reload with `fragment` kept would read it.
    fn config_with(&self, fragment: &FleetFragment) -> Result<ConfigFile, CommandError> {
        (self.reload_cfg)(Some(fragment)).map_err(|e| {
            CommandError::Invalid(format!("the config fragment does not fit this gateway's config: {e:#}"))
        })
    }

    /// Writes the fleet's fragment where the config is read from (removes it when empty), after
    /// checking that it fits the config.
    fn keep_fleet_config(&self, fragment: &FleetFragment) -> Result<(), CommandError> {
        let Some(state) = &self.state else {
            return Err(CommandError::Precondition("a fleet config fragment needs a state dir".into()));
        };
        self.config_with(fragment)?;
        let path = FleetFragment::path(&state.dir);
        let r =
            if fragment.is_empty() { remove_durably(&path) } else { write_durably(&path, fragment.text().as_bytes()) };
        r.map_err(|e| CommandError::Fatal(format!("keeping {}: {e}", path.display())))
    }

    fn validate_with(
        &self,
        cfg: &ConfigFile,
        name: &str,
        sql: &str,
    ) -> Result<crate::control::Validation, CommandError> {
        check_name(name)?;
        let dir = self.state.as_ref().map_or_else(|| PathBuf::from("."), |s| deployed_dir(&s.dir));
        let p = plan(cfg, name, sql, dir, None, &Arc::default(), &Arc::default())
            .map_err(|e| CommandError::Invalid(format!("{e:#}")))?;
        if self.state.is_some() {
            if let Some(op) = p.not_checkpointable() {
                return Err(CommandError::Invalid(format!(
                    "cannot run with durable state yet: the {op} operator's state is not checkpointed"
                )));
            }
        }
        Ok(crate::control::Validation { plan: plan_text(p.summary()) })
    }

    /// A stop that failed is fail-stop: its final checkpoint may not be durable.
    fn stop_or_fatal(&mut self, name: &str) -> Result<(), CommandError> {
        self.stop_worker(name).map_err(|e| CommandError::Fatal(format!("{e:#}")))
    }

    /// Creates or replaces a deployed pipeline. The new SQL is planned first; a replacement
    /// stops the old version (final checkpoint), starts the new one on the same state (or on
    /// none, with `reset_state`), and only then makes the new SQL the one kept. If the new one
    /// does not start, the old one is started again on its state and the reply says why.
    fn deploy(&mut self, name: &str, sql: String, reset_state: bool) -> Result<DeployOutcome, CommandError> {
        check_name(name)?;
        self.not_restoring(name)?;
        let Some(state) = self.state.clone() else {
            return Err(CommandError::Precondition(
                "deploying needs a state dir (state_dir in the config): deployed pipelines are kept there".into(),
            ));
        };
        let files = self.cfg.pipeline_files().map_err(|e| CommandError::Precondition(format!("{e:#}")))?;
        if let Some(f) = files.get(name) {
            return Err(CommandError::Precondition(format!(
                "pipeline {name} is defined by the file {}; change that file and reload instead",
                f.display()
            )));
        }
        self.validate(name, &sql)?;
        let file = deployed_dir(&state.dir).join(format!("{name}.sql"));
        if let Some(p) = self.paused.get(name) {
            // The same SQL again (a fleet version that changes other pipelines): nothing to do.
            if *p.view.sql == *sql && !reset_state {
                return Ok(DeployOutcome::Unchanged);
            }
            return Err(CommandError::Precondition(format!("pipeline {name} is paused; resume or delete it first")));
        }
        let old = self.workers.get(name).map(|w| (w.file.clone(), w.sql.clone()));
        if let Some((_, old_sql)) = &old {
            if *old_sql == sql && !reset_state {
                return Ok(DeployOutcome::Unchanged);
            }
            self.stop_or_fatal(name)?;
        }
        // A held version is replaced as if it were absent, and held again if the new one fails.
        let was_held = self.held.remove(name);
        if was_held.is_some() {
            self.registry.remove_pipeline(name);
        }
        let state_dir = state.dir.join(name);
        let aside = state.dir.join(format!(".{name}.replaced"));
        let fail = |e: std::io::Error, what: &str| CommandError::Fatal(format!("{what}: {e}"));
        if reset_state && state_dir.exists() {
            // Kept aside until the new version runs: the old one may have to start again.
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(&state_dir, &aside).map_err(|e| fail(e, "moving the old state aside"))?;
        }
        match self.start(name, &file, sql.clone(), "deployed") {
            Ok(()) => {
                if let Err(e) = write_durably(&file, sql.as_bytes()) {
                    return Err(fail(e, &format!("saving {}", file.display())));
                }
                if reset_state {
                    let _ = std::fs::remove_dir_all(&aside);
                }
                tracing::info!(pipeline = name, replaced = old.is_some(), reset_state, "pipeline deployed");
                Ok(match old {
                    None => DeployOutcome::Created,
                    Some(_) => DeployOutcome::Replaced { state_kept: !reset_state },
                })
            }
            Err(e) => {
                self.registry.remove_pipeline(name);
                let mut why = format!("{e:#}");
                let plan_changed = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<eddy_engine::EngineError>(),
                        Some(eddy_engine::EngineError::PlanChanged { .. })
                    )
                });
                if plan_changed {
                    why.push_str(
                        " (deploy with reset_state / `eddyctl deploy --reset-state` to drop it and start over)",
                    );
                }
                if reset_state && aside.exists() {
                    let _ = std::fs::remove_dir_all(&state_dir);
                    std::fs::rename(&aside, &state_dir).map_err(|e| fail(e, "putting the old state back"))?;
                }
                if let Some(h) = was_held {
                    self.registry.set_pipeline(name, START_FAILED, None, Some(h.error.clone()));
                    self.held.insert(name.to_string(), h);
                }
                match old {
                    None => Err(CommandError::Invalid(format!("pipeline {name} did not start: {why}"))),
                    Some((old_file, old_sql)) => match self.start(name, &old_file, old_sql, "deployed") {
                        Ok(()) => Err(CommandError::Precondition(format!(
                            "the new version of {name} did not start: {why}; the previous version runs on"
                        ))),
                        Err(e2) => Err(CommandError::Precondition(format!(
                            "the new version of {name} did not start: {why}; the previous version did not start again either: {e2:#}"
                        ))),
                    },
                }
            }
        }
    }

    fn pause(&mut self, name: &str) -> Result<(), CommandError> {
        self.not_restoring(name)?;
        if self.paused.contains_key(name) {
            return Ok(());
        }
        let Some(w) = self.workers.get(name) else {
            return Err(CommandError::NotFound(format!("no running pipeline named {name}")));
        };
        let (file, view) = (w.file.clone(), w.view.clone());
        if let Some(s) = &self.state {
            write_durably(&paused_dir(&s.dir).join(name), b"")
                .map_err(|e| CommandError::Fatal(format!("marking {name} paused: {e}")))?;
        }
        self.stop_or_fatal(name)?;
        self.paused.insert(name.to_string(), Paused { file, view });
        self.registry.set_pipeline(name, "paused", None, None);
        self.publish();
        tracing::info!(pipeline = name, "pipeline paused");
        Ok(())
    }

    fn resume(&mut self, name: &str) -> Result<(), CommandError> {
        self.not_restoring(name)?;
        if self.workers.contains_key(name) {
            return Ok(());
        }
        if let Some(h) = self.held.get(name) {
            // Resuming a held pipeline tries it now.
            let (file, origin) = (h.file.clone(), h.origin.clone());
            if self.start_or_hold(name, &file, &origin, read_pipeline(&file)) {
                self.publish();
                return Ok(());
            }
            let error = self.held.get(name).map(|h| h.error.clone()).unwrap_or_default();
            return Err(CommandError::Precondition(format!("pipeline {name} did not start: {error}; it stays held")));
        }
        let Some(p) = self.paused.get(name) else {
            return Err(CommandError::NotFound(format!("no paused pipeline named {name}")));
        };
        let (file, origin) = (p.file.clone(), p.view.origin.clone());
        let sql = std::fs::read_to_string(&file)
            .map_err(|e| CommandError::Precondition(format!("cannot read {}: {e}", file.display())))?;
        self.start(name, &file, sql, &origin).map_err(|e| {
            CommandError::Precondition(format!("pipeline {name} did not start: {e:#}; it stays paused"))
        })?;
        if let Some(s) = &self.state {
            remove_durably(&paused_dir(&s.dir).join(name))
                .map_err(|e| CommandError::Fatal(format!("unmarking {name} paused: {e}")))?;
        }
        tracing::info!(pipeline = name, "pipeline resumed");
        Ok(())
    }

    fn delete(&mut self, name: &str, drop_state: bool) -> Result<(), CommandError> {
        check_name(name)?;
        self.not_restoring(name)?;
        let Some(state) = self.state.clone() else {
            return Err(CommandError::Precondition("without a state dir no pipeline is deployed".into()));
        };
        let file = deployed_dir(&state.dir).join(format!("{name}.sql"));
        if !self.workers.contains_key(name) && !self.paused.contains_key(name) && !self.held.contains_key(name) {
            return Err(CommandError::NotFound(format!("no pipeline named {name}")));
        }
        if !file.exists() {
            return Err(CommandError::Precondition(format!(
                "pipeline {name} is defined by a file in the config, not deployed: remove the file and reload"
            )));
        }
        self.stop_or_fatal(name)?;
        self.paused.remove(name);
        self.unhold(name);
        self.registry.remove_pipeline(name);
        self.registry.remove_connectors(name);
        let io = |e: std::io::Error, what: String| CommandError::Fatal(format!("{what}: {e}"));
        remove_durably(&file).map_err(|e| io(e, format!("removing {}", file.display())))?;
        remove_durably(&paused_dir(&state.dir).join(name)).map_err(|e| io(e, "removing the paused mark".into()))?;
        if drop_state {
            let dir = state.dir.join(name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| io(e, format!("removing {}", dir.display())))?;
            }
        }
        self.publish();
        tracing::info!(pipeline = name, drop_state, "pipeline deleted");
        Ok(())
    }

    fn not_restoring(&self, name: &str) -> Result<(), CommandError> {
        if self.restoring.contains(name) {
            return Err(CommandError::Precondition(format!(
                "pipeline {name} is being restored from the hub; try again when that is done"
            )));
        }
        Ok(())
    }

    /// Begins a restore (`Command::HoldForRestore`): pauses `name` (a pipeline that failed to
    /// start is marked paused too) and plans its SQL for the fingerprint the backup must carry.
    fn hold_for_restore(&mut self, name: &str) -> Result<Vec<u8>, CommandError> {
        check_name(name)?;
        let Some(state) = self.state.clone() else {
            return Err(CommandError::Precondition(
                "eddyd runs without a state dir: there is no state to restore".into(),
            ));
        };
        self.not_restoring(name)?;
        if self.workers.contains_key(name) {
            self.pause(name)?;
        } else if !self.paused.contains_key(name) {
            let files = self.pipelines(&self.cfg).map_err(|e| CommandError::Precondition(format!("{e:#}")))?;
            let Some((file, origin)) = files.get(name) else {
                return Err(CommandError::NotFound(format!(
                    "no pipeline named {name}: deploy its SQL first (a backup holds state, not SQL)"
                )));
            };
            let sql = std::fs::read_to_string(file)
                .map_err(|e| CommandError::Precondition(format!("cannot read {}: {e}", file.display())))?;
            write_durably(&paused_dir(&state.dir).join(name), b"")
                .map_err(|e| CommandError::Fatal(format!("marking {name} paused: {e}")))?;
            self.keep_paused(name, file, &sql, origin);
        }
        let Some(p) = self.paused.get(name) else {
            return Err(CommandError::Precondition(format!("pipeline {name} did not pause")));
        };
        // The file as it is now (a reload while paused changes it; resume reads it so too).
        let sql = std::fs::read_to_string(&p.file)
            .map_err(|e| CommandError::Precondition(format!("cannot read {}: {e}", p.file.display())))?;
        let dir =
            p.file.parent().map(PathBuf::from).filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
        let planned = plan(&self.cfg, name, &sql, dir, None, &Arc::default(), &Arc::default())
            .map_err(|e| CommandError::Invalid(format!("pipeline {name} no longer plans: {e:#}")))?;
        self.restoring.insert(name.to_string());
        tracing::info!(pipeline = name, "restore from the hub begun: pipeline paused");
        Ok(planned.state_fingerprint(&sql))
    }

    /// Ends a restore (`Command::EndRestore`). The replaced state is deleted, not kept: the
    /// rows it pushed after the backup are gone from the hub, so it must never run again.
    fn end_restore(&mut self, name: &str, staging: Option<PathBuf>) -> Result<String, CommandError> {
        if !self.restoring.remove(name) {
            return Err(CommandError::Precondition(format!("no restore of {name} is under way")));
        }
        let (Some(staging), Some(state)) = (staging, self.state.clone()) else {
            tracing::info!(pipeline = name, "restore from the hub abandoned: pipeline stays paused");
            return Ok(format!("pipeline {name} stays paused on its own state"));
        };
        let target = state.dir.join(name);
        let failed = |e: String| {
            CommandError::Precondition(format!(
                "{e}; pipeline {name} stays paused: run the restore again (do not resume it on its old state)"
            ))
        };
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| failed(format!("removing {}: {e}", target.display())))?;
        }
        crate::restore_cmd::install(&staging, &target).map_err(|e| failed(format!("{e:#}")))?;
        if !self.paused.contains_key(name) {
            return Ok(format!(
                "the restored state is in {}, but pipeline {name} is no longer defined: nothing runs it",
                target.display()
            ));
        }
        self.resume(name)?;
        tracing::info!(pipeline = name, "restore from the hub done: pipeline runs from the restored checkpoint");
        Ok(format!("pipeline {name} runs from the restored checkpoint"))
    }

    /// Stops every worker (each takes its final checkpoint); the first error is returned.
    fn shutdown(&mut self) -> Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        for w in self.workers.values() {
            w.stop.store(true, Ordering::SeqCst);
        }
        let names: Vec<String> = self.workers.keys().cloned().collect();
        let mut first = Ok(());
        for n in names {
            if let Err(e) = self.stop_worker(&n) {
                tracing::error!(pipeline = %n, error = %format!("{e:#}"), "pipeline stopped with an error");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// SIGHUP: re-reads the config and the pipeline files. Unchanged pipelines keep running;
    /// removed ones stop; new ones start; changed ones stop (final checkpoint) and start again from
    /// it. A changed pipeline whose state does not fit the new plan (or that does not plan) is
    /// reported and its previous version is started again, so a bad edit never stops a gateway.
    /// Paused pipelines stay paused. A worker that stops with an error (a failed write or fsync
    /// in its final checkpoint, or a failure of its own) is never started again: the error is
    /// returned and eddyd stops (fail-stop; systemd restarts it and recovery starts from what is
    /// durable). Returns the problems met.
    fn reload(&mut self) -> Result<Vec<String>> {
        self.notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        tracing::info!("reloading");
        let mut problems = Vec::new();
        let loaded = (self.reload_cfg)(None).and_then(|c| self.pipelines(&c).map(|f| (c, f)));
        match loaded {
            Err(e) => problems.push(format!("config: {e:#} (nothing changed)")),
            Ok((cfg, files)) => {
                self.cfg = cfg;
                // New grants apply to the next call (listeners and TLS files: at restart).
                match crate::api::access_policy(&self.cfg) {
                    Ok(p) => *self.access.write().unwrap_or_else(|p| p.into_inner()) = p,
                    Err(e) => problems.push(format!("access: {e:#} (the previous grants stay)")),
                }
                let running: Vec<String> = self.workers.keys().chain(self.paused.keys()).cloned().collect();
                for name in running.iter().filter(|n| !files.contains_key(*n)) {
                    self.stop_worker(name)?;
                    self.paused.remove(name);
                    self.registry.remove_pipeline(name);
                    self.registry.remove_connectors(name);
                    tracing::info!(pipeline = %name, "pipeline removed");
                }
                let held: Vec<String> = self.held.keys().filter(|n| !files.contains_key(*n)).cloned().collect();
                for name in held {
                    self.unhold(&name);
                    tracing::info!(pipeline = %name, "held pipeline removed");
                }
                for (name, (file, origin)) in &files {
                    let sql = match std::fs::read_to_string(file) {
                        Ok(s) => s,
                        Err(e) => {
                            problems.push(format!("{name}: cannot read {}: {e}", file.display()));
                            continue;
                        }
                    };
                    if let Some(p) = self.paused.get_mut(name) {
                        // Takes effect on resume.
                        p.file = file.clone();
                        continue;
                    }
                    let settings = self.cfg.pipeline_settings();
                    let old = self.workers.get(name).map(|w| (w.file.clone(), w.sql.clone(), w.settings == settings));
                    match old {
                        Some((f, s, true)) if s == sql && &f == file => continue,
                        Some((old_file, old_sql, _)) => {
                            self.stop_worker(name).context("stopping the old version")?;
                            if let Err(e) = self.start(name, file, sql.clone(), origin) {
                                problems.push(format!(
                                    "{name}: the new version was not started: {e:#}; the previous version runs on"
                                ));
                                if let Err(e2) = self.start(name, &old_file, old_sql, origin) {
                                    problems.push(format!(
                                        "{name}: the previous version did not start again either: {e2:#}"
                                    ));
                                    // Held on the file as it is now, which a retry reads.
                                    self.hold(name, file, origin, Some(sql), &e);
                                }
                            } else {
                                tracing::info!(pipeline = %name, "pipeline changed: restarted from its checkpoint");
                            }
                        }
                        None => {
                            // A reload is a new first attempt for a held pipeline.
                            if let Some(h) = self.held.get_mut(name) {
                                h.attempts = 0;
                            }
                            if !self.start_or_hold(name, file, origin, Ok(sql)) {
                                let error = self.held.get(name).map(|h| h.error.clone()).unwrap_or_default();
                                problems.push(format!("{name}: {error} (held; tried again later)"));
                            }
                        }
                    }
                }
            }
        }
        self.publish();
        for p in &problems {
            tracing::error!(problem = %p, "reload");
        }
        self.notifier.notify("READY=1");
        let status = self.registry.status_line();
        self.notifier.status(&if problems.is_empty() {
            format!("reloaded; {status}")
        } else {
            format!("reload had {} problem(s): {}; {status}", problems.len(), problems.join("; "))
        });
        Ok(problems)
    }
}

fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// `eddyd check --config`: everything `run` would check before starting, without starting.
pub fn check(cfg: &ConfigFile) -> Result<Vec<String>> {
    let mut report = Vec::new();
    let files = cfg.pipeline_files()?;
    if files.is_empty() && cfg.api.enabled == Some(false) {
        bail!("no pipelines: set pipelines_dir or pipelines (or leave the management API on to deploy them)");
    }
    cores(cfg)?;
    if cfg.state_dir.is_some() {
        let c = load_cipher(cfg)?;
        report.push(format!(
            "state: {} ({})",
            cfg.state_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
            if c.is_encrypted() { "encrypted" } else { "NOT encrypted" }
        ));
    }
    if let Some(addr) = &cfg.metrics.listen {
        addr.parse::<std::net::SocketAddr>().map_err(|e| anyhow!("metrics.listen '{addr}': {e}"))?;
    }
    report.push(crate::api::check(cfg)?);
    let registry = Arc::new(Registry::default());
    for (name, file) in &files {
        let p = check_pipeline(cfg, name, file, &registry)?;
        let s = p.summary();
        report.push(format!(
            "pipeline {name} ({}): {} source(s), {} sink(s)",
            file.display(),
            s.sources.len(),
            s.sinks.len()
        ));
    }
    Ok(report)
}
