//! The fleet agent (docs/hub.md, "Fleet"): follows the desired state of this gateway's group at
//! the hub, applies each new version through the runtime's own deploy (the same validation and
//! rollback as `eddyctl deploy`), and reports what runs.
//!
//! A version is applied whole or not at all: its config fragment and every pipeline are validated
//! first (the pipelines planned with the fragment laid over the config); then the fragment is
//! kept and the config reloaded, then each pipeline deployed. Should any step fail, the pipelines
//! already changed go back to the previous version's SQL (new ones are removed) and the previous
//! fragment comes back, so the gateway keeps running the version it had. Pipelines a version
//! drops are deleted with their state kept; only pipelines the fleet deployed are touched. One
//! that cannot be deleted then (a restore holds it) stays the fleet's, listed in
//! `<state dir>/fleet/dropped`, and is deleted again at each report until it is gone.
//! The applied version is kept durably in `<state dir>/fleet/`, so a restart (or a gateway that
//! was offline during a rollout) resumes the watch from it and catches up.
//!
//! Owns its thread and those files; never starts or stops a pipeline itself (it asks the
//! supervisor over the management channel).

use eddy_engine::connector::Role;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_client::{v1, HubClient};
use prost::Message;
use tokio::sync::oneshot;

use super::HubLink;
use crate::config::FleetFragment;
use crate::connectors::backoff::Backoff;
use crate::control::{Command, CommandError, FleetView, Reply};
use crate::metrics::Registry;
use crate::runtime::write_durably;

/// How often the agent reports while nothing changes.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the agent has applied and refused, as kept on disk.
#[derive(Default)]
struct Applied {
    desired: v1::DesiredState,
    rejected_version: u64,
    /// The group the refused version was of (None in files written before it was kept).
    rejected_group: Option<String>,
    rejected_reason: String,
    /// Pipelines an applied version dropped that could not be deleted yet; still the fleet's.
    dropped: Vec<String>,
}

impl Applied {
    /// The pipelines that are the fleet's on this gateway.
    fn owned(&self) -> impl Iterator<Item = &str> {
        self.desired.pipelines.iter().map(|p| p.name.as_str()).chain(self.dropped.iter().map(String::as_str))
    }

    /// The refused version and why, when it is newer than the applied one (0 and "" if not).
    fn refused_after_applied(&self) -> (u64, &str) {
        if self.rejected_version > self.desired.version {
            (self.rejected_version, &self.rejected_reason)
        } else {
            (0, "")
        }
    }
}

pub struct FleetAgent {
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FleetAgent {
    pub fn start(
        link: HubLink,
        group: String,
        state_dir: &Path,
        commands: SyncSender<Command>,
        registry: Arc<Registry>,
        view: Arc<FleetView>,
    ) -> std::io::Result<FleetAgent> {
        let closing = Arc::new(AtomicBool::new(false));
        let dir = state_dir.join("fleet");
        let applied = for_group(load_as_written(&dir)?, &group);
        let c = closing.clone();
        let thread = std::thread::Builder::new().name("fleet".into()).spawn(move || {
            let mut agent = Agent { link, group, dir, commands, registry, view, applied, closing: c };
            agent.run();
        })?;
        Ok(FleetAgent { closing, thread: Some(thread) })
    }

    /// Tells the agent to stop; it finishes the request it is in (the supervisor answers or
    /// refuses it) and ends.
    pub fn signal_stop(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub fn stop(&mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FleetAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the agent last applied and refused, for the API (read before the API answers, so that
/// no local deploy of a fleet pipeline slips in before the agent starts).
pub fn load_view(state_dir: &Path, group: &str, view: &FleetView) -> std::io::Result<()> {
    let written = load_as_written(&state_dir.join("fleet"))?;
    let d = &written.desired;
    view.set_owned(&d.group, d.version, written.owned());
    let a = for_group(written, group);
    view.follow(group);
    let (rejected, reason) = a.refused_after_applied();
    view.set_versions(a.desired.version, rejected, reason);
    Ok(())
}

/// What was applied and refused, as `group` follows it. A gateway moved to another group
/// follows the new group from its first version (the old group's numbers mean nothing there);
/// the old group's pipelines are kept as applied, so that the new group's first version removes
/// those it lacks.
fn for_group(mut a: Applied, group: &str) -> Applied {
    if !a.desired.group.is_empty() && a.desired.group != group {
        tracing::info!(from = %a.desired.group, to = %group, "fleet: this gateway moved to another group");
        a.desired.version = 0;
        (a.rejected_version, a.rejected_reason) = (0, String::new());
    }
    if a.rejected_group.as_deref().is_some_and(|g| g != group) {
        (a.rejected_version, a.rejected_reason) = (0, String::new());
    }
    a
}

fn load_as_written(dir: &Path) -> std::io::Result<Applied> {
    let mut a = Applied::default();
    if let Some(b) = read_optional(&dir.join("applied"))? {
        a.desired = v1::DesiredState::decode(b.as_slice())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.join("applied").display())))?
    }
    if let Some(b) = read_optional(&dir.join("rejected"))? {
        // "<version> <group>\n<reason>" (files written before the group was: no group).
        let t = String::from_utf8_lossy(&b);
        let (head, why) = t.split_once('\n').unwrap_or((&t, ""));
        let mut head = head.split_whitespace();
        a.rejected_version = head.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        a.rejected_group = head.next().map(str::to_string);
        a.rejected_reason = why.to_string();
    }
    if let Some(b) = read_optional(&dir.join("dropped"))? {
        a.dropped = String::from_utf8_lossy(&b).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    }
    Ok(a)
}

/// The file's bytes, or None when it was never written.
fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

struct Agent {
    link: HubLink,
    group: String,
    dir: PathBuf,
    commands: SyncSender<Command>,
    registry: Arc<Registry>,
    view: Arc<FleetView>,
    applied: Applied,
    closing: Arc<AtomicBool>,
}

impl Agent {
    fn run(&mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the fleet agent cannot start (tokio runtime)");
                return;
            }
        };
        let mut backoff = Backoff::new();
        let mut turn = 0usize;
        let mut failing = false;
        while !self.closing.load(Ordering::Acquire) {
            match rt.block_on(self.follow(turn)) {
                Ok(()) => return,
                Err(why) => {
                    // Once per outage: the first failure, and the first after the watch held.
                    let was_connected = self.view.info().is_some_and(|i| i.hub_connected);
                    self.view.set_hub_connected(false);
                    if was_connected || !failing {
                        tracing::warn!(group = %self.group, error = %why, "fleet: hub unreachable; retrying");
                        failing = true;
                    }
                    turn = turn.wrapping_add(1);
                }
            }
            backoff.sleep(&self.closing);
        }
    }

    /// Watches the group until closing (`Ok`) or the link fails (`Err`).
    async fn follow(&mut self, turn: usize) -> Result<(), String> {
        let c = self.link.connect(turn).await.map_err(|e| e.to_string())?;
        self.report(&c).await?;
        let after = self.applied.desired.version.max(self.applied.rejected_version);
        let mut stream = c.watch_desired(&self.group, after).await.map_err(|e| e.to_string())?;
        self.view.set_hub_connected(true);
        tracing::info!(group = %self.group, version = self.applied.desired.version, "fleet: following the group's desired state");
        let mut last_report = Instant::now();
        loop {
            if self.closing.load(Ordering::Acquire) {
                return Ok(());
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(Ok(Some(d))) => {
                    self.apply(d).await;
                    self.report(&c).await?;
                    last_report = Instant::now();
                }
                Ok(Ok(None)) => return Err("the hub ended the watch".into()),
                Ok(Err(s)) => return Err(s.message().to_string()),
                Err(_) if last_report.elapsed() >= REPORT_EVERY => {
                    if !self.applied.dropped.is_empty() {
                        self.remove_dropped(self.applied.dropped.clone(), false).await;
                    }
                    self.report(&c).await?;
                    last_report = Instant::now();
                }
                Err(_) => {}
            }
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        // The supervisor drains this channel every 50 ms; a full channel waits, never drops.
        let cmd = make(tx);
        let sender = self.commands.clone();
        tokio::task::spawn_blocking(move || sender.send(cmd))
            .await
            .map_err(|_| CommandError::Fatal("eddyd is stopping".into()))?
            .map_err(|_| CommandError::Fatal("eddyd is stopping".into()))?;
        rx.await.map_err(|_| CommandError::Fatal("eddyd is stopping".into()))?
    }

    /// Applies version `d` whole, or refuses it and keeps the current one.
    async fn apply(&mut self, d: v1::DesiredState) {
        tracing::info!(group = %self.group, version = d.version, pipelines = d.pipelines.len(), "fleet: applying a new version");
        let config = match FleetFragment::parse(&d.config) {
            Ok(c) => c,
            Err(e) => return self.reject(d.version, format!("{e:#}")),
        };
        let pipelines = d.pipelines.iter().map(|p| (p.name.clone(), p.sql.clone())).collect();
        let owned = self.applied.owned().map(str::to_string).collect();
        let c = config.clone();
        if let Err(e) = self.ask(|reply| Command::ValidateFleet { config: c, pipelines, owned, reply }).await {
            return self.reject(d.version, e.to_string());
        }
        let old = self.applied.desired.pipelines.clone();
        let old_config = self.applied.desired.config.clone();
        let config_changed = d.config != old_config;
        if config_changed {
            if let Err(e) = self.ask(|reply| Command::SetFleetConfig { config, reply }).await {
                self.restore_config(&old_config).await;
                return self.reject(d.version, format!("config fragment: {e}"));
            }
        }
        let reset_state = d.reset_state;
        let mut changed: Vec<String> = Vec::new();
        for p in &d.pipelines {
            let (name, sql) = (p.name.clone(), p.sql.clone());
            match self.ask(|reply| Command::Deploy { name, sql, reset_state, reply }).await {
                Ok(_) => changed.push(p.name.clone()),
                Err(e) => {
                    self.undo(&changed, &old, reset_state).await;
                    if config_changed {
                        self.restore_config(&old_config).await;
                    }
                    return self.reject(d.version, format!("pipeline {}: {e}", p.name));
                }
            }
        }
        let drops: Vec<String> =
            self.applied.owned().filter(|o| !d.pipelines.iter().any(|n| n.name == *o)).map(str::to_string).collect();
        // Before `applied`: a crash between the two applies this version again, which drops
        // them again; the other order could forget one that is still here.
        self.remove_dropped(drops, true).await;
        if let Err(e) = write_durably(&self.dir.join("applied"), &d.encode_to_vec()) {
            tracing::error!(error = %e, "fleet: cannot record the applied version; it is applied again after a restart");
        }
        tracing::info!(group = %self.group, version = d.version, "fleet: version applied");
        self.applied.desired = d;
        self.view.set_owned(&self.applied.desired.group, self.applied.desired.version, self.applied.owned());
        self.publish_versions();
    }

    /// Deletes `names` (state kept); those that cannot be deleted now stay the fleet's and are
    /// tried again at the next report. Warns when a version's drop fails (`first`), not on retries.
    async fn remove_dropped(&mut self, names: Vec<String>, first: bool) {
        let mut left = Vec::new();
        for name in names {
            let n = name.clone();
            match self.ask(|reply| Command::Delete { name: n, drop_state: false, reply }).await {
                Ok(()) | Err(CommandError::NotFound(_)) => {}
                Err(e) => {
                    if first {
                        tracing::warn!(pipeline = %name, error = %e, "fleet: a pipeline the new version drops cannot be deleted yet; trying again at each report");
                    }
                    left.push(name);
                }
            }
        }
        if left == self.applied.dropped {
            return;
        }
        if let Err(e) = write_durably(&self.dir.join("dropped"), left.join("\n").as_bytes()) {
            tracing::error!(error = %e, "fleet: cannot record the pipelines still to delete");
        }
        if !first {
            tracing::info!(still_to_delete = left.len(), "fleet: deleted a pipeline a version dropped");
        }
        self.applied.dropped = left;
        let d = &self.applied.desired;
        self.view.set_owned(&d.group, d.version, self.applied.owned());
    }

    /// Puts the pipelines of a half-applied version back as they were (with `reset_state` when
    /// the version had it: state the new SQL wrote cannot carry the old SQL).
    async fn undo(&self, changed: &[String], old: &[v1::PipelineFile], reset_state: bool) {
        for name in changed {
            let r = match old.iter().find(|o| &o.name == name) {
                Some(o) => {
                    let (name, sql) = (o.name.clone(), o.sql.clone());
                    self.ask(|reply| Command::Deploy { name, sql, reset_state, reply }).await.map(|_| ())
                }
                None => {
                    let name = name.clone();
                    self.ask(|reply| Command::Delete { name, drop_state: false, reply }).await
                }
            };
            if let Err(e) = r {
                tracing::error!(pipeline = %name, error = %e, "fleet: could not put a pipeline back after a failed version");
            }
        }
    }

    /// Puts the previous version's config fragment back (it was applied before, so it parses).
    async fn restore_config(&self, text: &str) {
        let r = match FleetFragment::parse(text) {
            Ok(config) => self.ask(|reply| Command::SetFleetConfig { config, reply }).await,
            Err(e) => Err(CommandError::Invalid(format!("{e:#}"))),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "fleet: could not put the previous config fragment back");
        }
    }

    fn reject(&mut self, version: u64, why: String) {
        tracing::warn!(group = %self.group, version, reason = %why, "fleet: version refused; the current one keeps running");
        self.applied.rejected_version = version;
        self.applied.rejected_reason = why;
        self.applied.rejected_group = Some(self.group.clone());
        self.publish_versions();
        let text = format!("{version} {}\n{}", self.group, self.applied.rejected_reason);
        if let Err(e) = write_durably(&self.dir.join("rejected"), text.as_bytes()) {
            tracing::error!(error = %e, "fleet: cannot record the refused version");
        }
    }

    fn publish_versions(&self) {
        let (rejected, reason) = self.applied.refused_after_applied();
        self.view.set_versions(self.applied.desired.version, rejected, reason);
    }

    /// What runs here, as the hub keeps it for `eddyctl fleet status`.
    fn actual(&self) -> v1::ActualState {
        let mut pipelines = Vec::new();
        let (mut backlog_bytes, mut oldest) = (0u64, 0u64);
        for name in self.registry.pipeline_names() {
            for (role, _, g) in self.registry.connectors_of(&name) {
                if role == Role::Sink {
                    backlog_bytes += g.outbox_bytes.load(Ordering::Relaxed);
                    oldest = oldest.max(g.outbox_oldest_age_ms.load(Ordering::Relaxed));
                }
            }
            if let Some((state, _, error)) = self.registry.pipeline_snapshot(&name) {
                pipelines.push(v1::PipelineActual { name, state: state.to_string(), error: error.unwrap_or_default() });
            }
        }
        let (rejected_version, reason) = self.applied.refused_after_applied();
        v1::ActualState {
            gateway: String::new(),
            group: self.group.clone(),
            applied_version: self.applied.desired.version,
            rejected_version,
            rejected_reason: reason.to_string(),
            pipelines,
            reported_ms: 0,
            backlog_bytes,
            backlog_oldest_age_ms: oldest,
        }
    }

    async fn report(&self, c: &HubClient) -> Result<(), String> {
        c.report_actual(self.actual()).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::DeployOutcome;
    use eddy_client::TlsFiles;
    use std::sync::Mutex;

    /// Answers the agent's commands as the supervisor would, refusing deletes of `busy` (as a
    /// restore in progress does); records the deletes asked.
    fn supervisor(busy: Arc<Mutex<Vec<String>>>, deleted: Arc<Mutex<Vec<String>>>) -> SyncSender<Command> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Command>(4);
        std::thread::spawn(move || {
            for cmd in rx {
                match cmd {
                    Command::ValidateFleet { reply, .. } | Command::SetFleetConfig { reply, .. } => {
                        let _ = reply.send(Ok(()));
                    }
                    Command::Deploy { reply, .. } => {
                        let _ = reply.send(Ok(DeployOutcome::Created));
                    }
                    Command::Delete { name, reply, .. } => {
                        let r = if busy.lock().unwrap().contains(&name) {
                            Err(CommandError::Precondition(format!("pipeline {name} is being restored")))
                        } else {
                            deleted.lock().unwrap().push(name);
                            Ok(())
                        };
                        let _ = reply.send(r);
                    }
                    other => other.refuse("not in this test"),
                }
            }
        });
        tx
    }

    fn version(v: u64, names: &[&str]) -> v1::DesiredState {
        let pipelines =
            names.iter().map(|n| v1::PipelineFile { name: n.to_string(), sql: format!("-- {n} v{v}") }).collect();
        v1::DesiredState { group: "plant-a".into(), version: v, pipelines, ..Default::default() }
    }

    #[test]
    fn a_dropped_pipeline_that_cannot_be_deleted_stays_the_fleets_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (busy, deleted) = (Arc::new(Mutex::new(vec!["b".to_string()])), Arc::new(Mutex::new(Vec::new())));
        let view = Arc::new(FleetView::default());
        let none = PathBuf::from("/nonexistent");
        let link = HubLink {
            endpoints: vec!["127.0.0.1:1".into()],
            tls: TlsFiles { ca: none.clone(), cert: none.clone(), key: none, server_name: None },
            request_timeout: Duration::from_secs(1),
        };
        let mut agent = Agent {
            link,
            group: "plant-a".into(),
            dir: dir.path().join("fleet"),
            commands: supervisor(busy.clone(), deleted.clone()),
            registry: Arc::new(Registry::default()),
            view: view.clone(),
            applied: Applied::default(),
            closing: Arc::new(AtomicBool::new(false)),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(agent.apply(version(1, &["a", "b"])));
        rt.block_on(agent.apply(version(2, &["a"])));
        // Applied, but b is still here and still the fleet's: a local deploy stays refused,
        // and a restart keeps it so.
        assert_eq!(agent.applied.desired.version, 2);
        assert!(view.owner("b").is_some());
        let reloaded = Arc::new(FleetView::default());
        load_view(dir.path(), "plant-a", &reloaded).unwrap();
        assert!(reloaded.owner("b").is_some() && reloaded.owner("a").is_some());
        assert!(deleted.lock().unwrap().is_empty());

        // The restore ends; the next retry deletes it and it is no longer the fleet's.
        busy.lock().unwrap().clear();
        rt.block_on(agent.remove_dropped(agent.applied.dropped.clone(), false));
        assert_eq!(*deleted.lock().unwrap(), ["b"]);
        assert!(view.owner("b").is_none() && view.owner("a").is_some());
        let reloaded = Arc::new(FleetView::default());
        load_view(dir.path(), "plant-a", &reloaded).unwrap();
        assert!(reloaded.owner("b").is_none());

        // A later version that drops a pipeline it can delete leaves nothing behind.
        rt.block_on(agent.apply(version(3, &[])));
        assert_eq!(*deleted.lock().unwrap(), ["b", "a"]);
        assert!(agent.applied.dropped.is_empty() && view.owner("a").is_none());
    }
}
