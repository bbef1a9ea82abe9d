//! `eddy.v1.Control`: each call is authorised against the caller's role, answered from what the
//! runtime published or by a request over the bounded command channel, and (when it mutates
//! or is denied) audited before the caller hears the outcome. Owns the translation between gRPC
//! and the runtime; never blocks the runtime (a full channel is `UNAVAILABLE`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use eddy_proto::v1::control_server::{Control, ControlServer};
use eddy_proto::v1::*;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::access::{AccessPolicy, Role};
use super::audit::{AuditLog, Event};
use super::listen::{self, Peer};
use super::query::{self, QuerySettings};
use super::Shared;
use crate::control::{Command, CommandError, DeployOutcome, PipelineView};
use eddy_engine::connector::Role as ConnectorRole;
use eddy_engine::connector::SourceRows;

/// Largest SQL text accepted by Deploy and Validate.
const MAX_SQL_BYTES: usize = 1 << 20;
/// Largest request message.
const MAX_MESSAGE_BYTES: usize = 2 << 20;
/// How long a forced checkpoint may take before the call gives up waiting (it still happens).
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);
/// Entries the state dir walk for `Status` counts at most.
const MAX_WALK_ENTRIES: usize = 100_000;

pub struct ControlService {
    shared: Arc<Shared>,
    audit: Option<Arc<Mutex<AuditLog>>>,
    started: Instant,
    host: String,
    /// The state dir's size and when it was measured: walked at most every 2 s.
    state_bytes: tokio::sync::Mutex<Option<(Instant, u64)>>,
    query: QuerySettings,
    /// Held by the restore under way: one at a time (they share the staging convention).
    restores: Arc<tokio::sync::Mutex<()>>,
}

/// Who is calling, once authorised.
struct Caller {
    peer: Peer,
}

impl ControlService {
    pub fn new(shared: Shared, audit: Option<Arc<Mutex<AuditLog>>>, query: QuerySettings) -> Self {
        ControlService {
            shared: Arc::new(shared),
            audit,
            started: Instant::now(),
            host: host_name(),
            state_bytes: tokio::sync::Mutex::new(None),
            query,
            restores: Arc::default(),
        }
    }

    fn policy(&self) -> std::sync::RwLockReadGuard<'_, AccessPolicy> {
        self.shared.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to the audit log (and the journal). A failed append stops eddyd (fail-stop) and
    /// the call reports an internal error: nothing unaudited is acknowledged.
    async fn record(&self, ev: Event) -> Result<(), Status> {
        tracing::info!(
            target: "eddy::audit",
            principal = %ev.principal,
            peer = %ev.peer,
            method = %ev.method,
            pipeline = %ev.pipeline,
            outcome = %ev.outcome,
            "api call"
        );
        let Some(log) = self.audit.clone() else { return Ok(()) };
        let r = tokio::task::spawn_blocking(move || log.lock().unwrap_or_else(|p| p.into_inner()).append(&ev)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let why = format!("the audit log cannot be written: {e:#}");
                self.shared.fatal.set(why.clone());
                Err(Status::internal(format!("{why}; eddyd is stopping")))
            }
            Err(e) => Err(Status::internal(format!("audit task: {e}"))),
        }
    }

    /// Checks the caller's role for `method` (on `pipeline`, if it is about one). Denials are
    /// audited and answered `PERMISSION_DENIED` (`UNAUTHENTICATED` for a caller without a name).
    async fn authorize<T>(&self, req: &Request<T>, method: &str, pipeline: &str, need: Role) -> Result<Caller, Status> {
        let peer = req.extensions().get::<Peer>().cloned().unwrap_or(Peer { names: vec![], address: "unknown".into() });
        let deny = |why: String| Event {
            principal: peer.principal().to_string(),
            peer: peer.address.clone(),
            method: method.to_string(),
            pipeline: pipeline.to_string(),
            outcome: format!("denied: {why}"),
        };
        if peer.names.is_empty() {
            let why = "the caller has no identity (no credentials or certificate names)".to_string();
            self.record(deny(why.clone())).await?;
            return Err(Status::unauthenticated(why));
        }
        let standing = self.policy().standing(&peer.names);
        let role = standing.role_for((!pipeline.is_empty()).then_some(pipeline));
        match role {
            Some(r) if r >= need => Ok(Caller { peer }),
            other => {
                let has = other.map_or("no role".to_string(), |r| format!("the role {}", r.name()));
                let on = if pipeline.is_empty() { String::new() } else { format!(" on pipeline {pipeline}") };
                let why = format!("{} has {has}{on}; {method} needs {}", peer.principal(), need.name());
                self.record(deny(why.clone())).await?;
                Err(Status::permission_denied(why))
            }
        }
    }

    /// Audits a mutating call's outcome, then hands it to the caller.
    async fn outcome<T>(&self, c: &Caller, method: &str, pipeline: &str, r: Result<T, Status>) -> Result<T, Status> {
        let outcome = match &r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("failed: {}", s.message()),
        };
        self.record(Event {
            principal: c.peer.principal().to_string(),
            peer: c.peer.address.clone(),
            method: method.to_string(),
            pipeline: pipeline.to_string(),
            outcome,
        })
        .await?;
        r
    }

    /// An operator's call about one pipeline that the runtime answers with success or an error:
    /// authorised, carried out, audited.
    async fn pipeline_action(
        &self,
        req: Request<PipelineRef>,
        method: &str,
        make: impl FnOnce(String, crate::control::Reply<()>) -> Command,
        done: &str,
    ) -> Result<Response<ActionReply>, Status> {
        let name = req.get_ref().name.clone();
        let c = self.authorize(&req, method, &name, Role::Operator).await?;
        let n = name.clone();
        let r = self.ask(|reply| make(n, reply)).await;
        let r = r.map(|()| ActionReply { message: format!("pipeline {name} {done}") });
        self.outcome(&c, method, &name, r).await.map(Response::new)
    }

    /// Refuses to `what` a pipeline the fleet deployed here (its group's next version would
    /// silently undo it).
    fn not_fleet_owned(&self, name: &str, what: &str) -> Result<(), Status> {
        match self.shared.fleet.owner(name) {
            None => Ok(()),
            Some(by) => Err(Status::failed_precondition(format!(
                "pipeline {name} was deployed by the {by}: {what} it through `eddyctl fleet deploy` \
                 (or take this gateway out of its group: [hub.fleet] in the config)"
            ))),
        }
    }

    /// Sends a request to the runtime and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(crate::control::Reply<T>) -> Command) -> Result<T, Status> {
        ask(&self.shared, make).await
    }

    fn statuses(&self) -> Vec<PipelineStatus> {
        let views = self.shared.catalog.snapshot();
        let mut names: Vec<String> = views.keys().cloned().collect();
        for n in self.shared.registry.pipeline_names() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names.sort();
        names.iter().map(|n| self.pipeline_status(n, views.get(n))).collect()
    }

    fn pipeline_status(&self, name: &str, view: Option<&PipelineView>) -> PipelineStatus {
        let mut st = PipelineStatus { name: name.to_string(), ..Default::default() };
        if let Some(v) = view {
            st.origin = self.shared.fleet.owner(name).unwrap_or_else(|| v.origin.clone());
            st.sql_sha256 = v.sql_sha256.clone();
            st.shards = v.shards as u32;
            st.sharding = v.sharding.clone();
        }
        let gauges = self.shared.registry.connectors_of(name);
        let gauge = |role: ConnectorRole, n: &str| {
            gauges.iter().find(|(r, gn, _)| *r == role && gn == n).map(|(_, _, g)| g.clone())
        };
        let Some((state, obs, error)) = self.shared.registry.pipeline_snapshot(name) else {
            st.state = if view.is_some_and(|v| v.paused) { "paused" } else { "starting" }.into();
            return st;
        };
        st.state = state.to_string();
        st.error = error.unwrap_or_default();
        let now = eddy_engine::time::now_ms();
        if let Some(o) = obs {
            st.state_bytes = o.state_bytes as u64;
            st.shards = o.shards as u32;
            st.sources = o
                .sources
                .iter()
                .map(|s| {
                    let g = gauge(ConnectorRole::Source, &s.name);
                    SourceStatus {
                        name: s.name.clone(),
                        rows: s.stats.accepted,
                        late: s.stats.late,
                        errors: s.stats.errors,
                        watermark_ms: s.watermark,
                        lag_ms: s.watermark.map(|w| now.saturating_sub(w).max(0)),
                        connected: s.connected,
                        queued: g
                            .as_deref()
                            .map_or(0, |g| g.queue_depth.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64),
                        connected_as: g.as_deref().map(|g| g.connected_as()).unwrap_or_default(),
                    }
                })
                .collect();
            st.sinks = o
                .sinks
                .iter()
                .map(|(n, rows, retractions)| {
                    let g = gauge(ConnectorRole::Sink, n);
                    let load = |f: fn(&crate::metrics::ConnectorGauges) -> u64| g.as_deref().map_or(0, f);
                    SinkStatus {
                        name: n.clone(),
                        rows: *rows,
                        retractions: *retractions,
                        backlog_messages: load(|g| g.outbox_messages.load(std::sync::atomic::Ordering::Relaxed)),
                        backlog_bytes: load(|g| g.outbox_bytes.load(std::sync::atomic::Ordering::Relaxed)),
                        backlog_oldest_age_ms: load(|g| {
                            g.outbox_oldest_age_ms.load(std::sync::atomic::Ordering::Relaxed)
                        }),
                        connected_as: g.as_deref().map(|g| g.connected_as()).unwrap_or_default(),
                    }
                })
                .collect();
            st.backup = self.shared.registry.backup_if_tried(name).map(|g| {
                use std::sync::atomic::Ordering::Relaxed;
                BackupStatus {
                    checkpoints: g.checkpoints.load(Relaxed),
                    last_seq: g.last_seq.load(Relaxed),
                    waiting_ms: g.lag_ms.load(Relaxed),
                    failures: g.failures.load(Relaxed),
                    last_error: g.error().unwrap_or_default(),
                }
            });
            if let Some(d) = &o.durable {
                st.checkpoints = d.checkpoints;
                st.checkpoint_age_ms = d.last_checkpoint_ms.map(|t| now.saturating_sub(t).max(0) as u64);
            }
        }
        st
    }
}

/// Sends a request to the runtime and waits for its answer.
pub(super) async fn ask<T>(
    shared: &Shared,
    make: impl FnOnce(crate::control::Reply<T>) -> Command,
) -> Result<T, Status> {
    let (tx, rx) = oneshot::channel();
    match shared.commands.try_send(make(tx)) {
        Ok(()) => {}
        Err(std::sync::mpsc::TrySendError::Full(_)) => {
            return Err(Status::unavailable("eddyd is busy with other management requests; try again"))
        }
        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(Status::unavailable("eddyd is stopping")),
    }
    match rx.await {
        Ok(r) => r.map_err(to_status),
        Err(_) => Err(Status::unavailable("eddyd is stopping")),
    }
}

fn to_status(e: CommandError) -> Status {
    match e {
        CommandError::NotFound(m) => Status::not_found(m),
        CommandError::Invalid(m) => Status::invalid_argument(m),
        CommandError::Precondition(m) => Status::failed_precondition(m),
        e @ CommandError::Fatal(_) => Status::internal(e.to_string()),
    }
}

/// The host's name, as the status reports it (for people: nothing names itself after it).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

fn check_sql(sql: &str) -> Result<(), Status> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(Status::invalid_argument(format!(
            "the SQL is {} bytes; at most {MAX_SQL_BYTES} are accepted",
            sql.len()
        )));
    }
    Ok(())
}

/// Bytes under `dir`, counting at most [`MAX_WALK_ENTRIES`] entries.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Rows one tap event carries at most.
const TAP_EVENT_ROWS: usize = 500;
/// Chunks a tap viewer may fall behind by before it loses rows.
const TAP_QUEUE_CHUNKS: usize = 64;

/// Streams a sink's tap to one viewer until its row or time budget is spent or it goes away.
async fn pump_tap(
    tap: eddy_engine::connector::TapReceiver,
    tx: tokio::sync::mpsc::Sender<Result<TapEvent, Status>>,
    max_rows: usize,
    max_time: Duration,
) {
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut pending: Vec<String> = Vec::new();
    let mut sink_gone = false;
    while sent < max_rows && t0.elapsed() < max_time && !tx.is_closed() && !sink_gone {
        let mut got = false;
        loop {
            let chunk = match tap.rx.try_recv() {
                Ok(c) => c,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                // The pipeline stopped (paused, replaced, deleted): the tap ends.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    sink_gone = true;
                    break;
                }
            };
            got = true;
            for line in chunk.json_lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if sent + pending.len() < max_rows {
                    pending.push(String::from_utf8_lossy(line).into_owned());
                }
            }
            if pending.len() >= TAP_EVENT_ROWS || sent + pending.len() >= max_rows {
                break;
            }
        }
        if !pending.is_empty() {
            sent += pending.len();
            let ev = TapEvent {
                rows: std::mem::take(&mut pending),
                dropped_rows: tap.dropped_rows.load(std::sync::atomic::Ordering::Relaxed),
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        if !got {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The last word on losses, if any came after the last rows.
    let dropped = tap.dropped_rows.load(std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
        let _ = tx.send(Ok(TapEvent { rows: Vec::new(), dropped_rows: dropped })).await;
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    type TapStream = tokio_stream::wrappers::ReceiverStream<Result<TapEvent, Status>>;

    async fn tap(&self, req: Request<TapRequest>) -> Result<Response<Self::TapStream>, Status> {
        let name = req.get_ref().pipeline.clone();
        self.authorize(&req, "Tap", &name, Role::Viewer).await?;
        let TapRequest { sink, max_rows, max_seconds, source, source_rows, .. } = req.into_inner();
        let views = self.shared.catalog.snapshot();
        let Some(v) = views.get(&name) else { return Err(Status::not_found(format!("no pipeline named {name}"))) };
        if v.paused {
            return Err(Status::failed_precondition(format!("pipeline {name} is paused")));
        }
        if v.starting {
            return Err(Status::unavailable(format!("pipeline {name} is still starting; ask again in a moment")));
        }
        let (what, point) = if source.is_empty() {
            let Some((_, point)) = v.taps.iter().find(|(s, _)| *s == sink) else {
                let known: Vec<&str> = v.taps.iter().map(|(s, _)| s.as_str()).collect();
                let msg = format!("pipeline {name} has no sink '{sink}' (sinks: {})", known.join(", "));
                return Err(Status::not_found(msg));
            };
            (format!("sink {sink}"), point.clone())
        } else {
            let rows = match source_rows.as_str() {
                "" | "accepted" => SourceRows::Accepted,
                "late" => SourceRows::Late,
                "errors" => SourceRows::Errors,
                other => {
                    let msg = format!("source_rows '{other}': accepted, late or errors");
                    return Err(Status::invalid_argument(msg));
                }
            };
            let Some((_, _, point)) = v.source_taps.iter().find(|(s, k, _)| *s == source && *k == rows) else {
                let mut known: Vec<&str> = v.source_taps.iter().map(|(s, _, _)| s.as_str()).collect();
                known.dedup();
                let msg = format!("pipeline {name} has no source '{source}' (sources: {})", known.join(", "));
                return Err(Status::not_found(msg));
            };
            (format!("source {source}"), point.clone())
        };
        let tap = point.subscribe(TAP_QUEUE_CHUNKS).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{what} already has {} viewers",
                eddy_engine::connector::MAX_TAP_SUBSCRIBERS
            ))
        })?;
        let max_rows = match max_rows {
            0 => 100,
            n => n.min(1_000_000),
        } as usize;
        let max_time = Duration::from_secs(match max_seconds {
            0 => 60,
            n => n.min(86_400),
        } as u64);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(pump_tap(tap, tx, max_rows, max_time));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.authorize(&req, "Status", "", Role::Viewer).await?;
        let (state_dir, key_ids, bytes) = match &self.shared.state {
            Some(s) => {
                let mut cached = self.state_bytes.lock().await;
                let bytes = match *cached {
                    Some((at, b)) if at.elapsed() < Duration::from_secs(2) => b,
                    _ => {
                        let dir = s.dir.clone();
                        let b = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await.unwrap_or(0);
                        *cached = Some((Instant::now(), b));
                        b
                    }
                };
                (s.dir.display().to_string(), s.cipher.key_ids(), bytes)
            }
            None => (String::new(), Vec::new(), 0),
        };
        Ok(Response::new(StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            host: self.host.clone(),
            state_dir,
            state_dir_bytes: bytes,
            key_ids,
            ready: self.shared.registry.is_ready(),
            pipelines: self.statuses(),
            fleet: self.shared.fleet.info().map(|f| FleetLink {
                group: f.group,
                applied_version: f.applied_version,
                rejected_version: f.rejected_version,
                rejected_reason: f.rejected_reason,
                hub_connected: f.hub_connected,
            }),
        }))
    }

    async fn list_pipelines(&self, req: Request<ListPipelinesRequest>) -> Result<Response<ListPipelinesReply>, Status> {
        self.authorize(&req, "ListPipelines", "", Role::Viewer).await?;
        Ok(Response::new(ListPipelinesReply { pipelines: self.statuses() }))
    }

    async fn get_pipeline(&self, req: Request<PipelineRef>) -> Result<Response<PipelineDetail>, Status> {
        let name = req.get_ref().name.clone();
        self.authorize(&req, "GetPipeline", &name, Role::Viewer).await?;
        let views = self.shared.catalog.snapshot();
        let Some(v) = views.get(&name) else { return Err(Status::not_found(format!("no pipeline named {name}"))) };
        Ok(Response::new(PipelineDetail {
            status: Some(self.pipeline_status(&name, Some(v))),
            sql: v.sql.to_string(),
            plan: v.plan.clone(),
        }))
    }

    async fn validate(&self, req: Request<ValidateRequest>) -> Result<Response<ValidateReply>, Status> {
        let name = if req.get_ref().name.is_empty() { "pipeline".to_string() } else { req.get_ref().name.clone() };
        self.authorize(&req, "Validate", &name, Role::Viewer).await?;
        let sql = req.into_inner().sql;
        check_sql(&sql)?;
        let r = self.ask(|reply| Command::Validate { name, sql, reply }).await;
        Ok(Response::new(match r {
            Ok(v) => ValidateReply { ok: true, error: String::new(), plan: v.plan },
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                ValidateReply { ok: false, error: s.message().to_string(), plan: String::new() }
            }
            Err(s) => return Err(s),
        }))
    }

    async fn deploy(&self, req: Request<DeployRequest>) -> Result<Response<DeployReply>, Status> {
        let name = req.get_ref().name.clone();
        let c = self.authorize(&req, "Deploy", &name, Role::Operator).await?;
        let DeployRequest { sql, reset_state, .. } = req.into_inner();
        let r = match check_sql(&sql).and_then(|()| self.not_fleet_owned(&name, "deploy")) {
            Err(s) => Err(s),
            Ok(()) => {
                let n = name.clone();
                self.ask(|reply| Command::Deploy { name: n, sql, reset_state, reply }).await
            }
        };
        let r = r.map(|o| match o {
            DeployOutcome::Created => DeployReply {
                outcome: "created".into(),
                state_kept: false,
                message: format!("pipeline {name} created and running"),
            },
            DeployOutcome::Replaced { state_kept } => DeployReply {
                outcome: "replaced".into(),
                state_kept,
                message: format!(
                    "pipeline {name} replaced and running{}",
                    if state_kept { " on its state" } else { " on fresh state" }
                ),
            },
            DeployOutcome::Unchanged => DeployReply {
                outcome: "unchanged".into(),
                state_kept: true,
                message: format!("pipeline {name} already runs this SQL"),
            },
        });
        self.outcome(&c, "Deploy", &name, r).await.map(Response::new)
    }

    async fn pause(&self, req: Request<PipelineRef>) -> Result<Response<ActionReply>, Status> {
        let make = |name, reply| Command::Pause { name, reply };
        self.pipeline_action(req, "Pause", make, "paused after a final checkpoint").await
    }

    async fn resume(&self, req: Request<PipelineRef>) -> Result<Response<ActionReply>, Status> {
        let make = |name, reply| Command::Resume { name, reply };
        self.pipeline_action(req, "Resume", make, "running from its checkpoint").await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<ActionReply>, Status> {
        let name = req.get_ref().name.clone();
        let drop_state = req.get_ref().drop_state;
        let c = self.authorize(&req, "Delete", &name, Role::Admin).await?;
        let n = name.clone();
        let r = match self.not_fleet_owned(&name, "delete") {
            Err(s) => Err(s),
            Ok(()) => self.ask(|reply| Command::Delete { name: n, drop_state, reply }).await,
        };
        let r = r.map(|()| ActionReply {
            message: format!(
                "pipeline {name} deleted; its state was {}",
                if drop_state { "dropped" } else { "kept (a later deploy of this name continues from it)" }
            ),
        });
        self.outcome(&c, "Delete", &name, r).await.map(Response::new)
    }

    async fn checkpoint(&self, req: Request<PipelineRef>) -> Result<Response<ActionReply>, Status> {
        let name = req.get_ref().name.clone();
        let c = self.authorize(&req, "Checkpoint", &name, Role::Operator).await?;
        let n = name.clone();
        let r = match self.ask(|reply| Command::Checkpoint { name: n, reply }).await {
            Err(s) => Err(s),
            Ok(ctl) => {
                let ticket = ctl.request_checkpoint();
                let t0 = Instant::now();
                loop {
                    if ctl.checkpoint_done() >= ticket {
                        break Ok(ActionReply {
                            message: format!("checkpoint of {name} durable after {} ms", t0.elapsed().as_millis()),
                        });
                    }
                    if let Some((state, _, err)) = self.shared.registry.pipeline_snapshot(&name) {
                        if state != "running" {
                            break Err(Status::aborted(format!(
                                "pipeline {name} is {state}{} before its checkpoint",
                                err.map(|e| format!(" ({e})")).unwrap_or_default()
                            )));
                        }
                    }
                    if t0.elapsed() > CHECKPOINT_WAIT {
                        break Err(Status::deadline_exceeded(format!(
                            "pipeline {name} has not finished the checkpoint in {} s; it will take it when it can",
                            CHECKPOINT_WAIT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        self.outcome(&c, "Checkpoint", &name, r).await.map(Response::new)
    }

    async fn reload(&self, req: Request<ReloadRequest>) -> Result<Response<ReloadReply>, Status> {
        let c = self.authorize(&req, "Reload", "", Role::Operator).await?;
        let r = self.ask(|reply| Command::Reload { reply }).await.map(|problems| ReloadReply { problems });
        self.outcome(&c, "Reload", "", r).await.map(Response::new)
    }

    async fn get_config(&self, req: Request<GetConfigRequest>) -> Result<Response<ConfigReply>, Status> {
        self.authorize(&req, "GetConfig", "", Role::Viewer).await?;
        let toml = self.ask(|reply| Command::Config { reply }).await?;
        Ok(Response::new(ConfigReply { toml }))
    }

    async fn read_audit(&self, req: Request<ReadAuditRequest>) -> Result<Response<ReadAuditReply>, Status> {
        self.authorize(&req, "ReadAudit", "", Role::Admin).await?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n.min(10_000),
        } as usize;
        let Some(log) = self.audit.clone() else {
            return Err(Status::failed_precondition(
                "eddyd runs without a state dir: the audit trail is in the journal only",
            ));
        };
        let v = tokio::task::spawn_blocking(move || log.lock().unwrap_or_else(|p| p.into_inner()).read_all())
            .await
            .map_err(|e| Status::internal(format!("audit task: {e}")))?
            .map_err(|e| Status::internal(format!("reading the audit log: {e:#}")))?;
        let total = v.entries.len() as u64;
        let skip = v.entries.len().saturating_sub(limit);
        Ok(Response::new(ReadAuditReply {
            entries: v
                .entries
                .into_iter()
                .skip(skip)
                .map(|e| AuditEntry {
                    seq: e.seq,
                    time_ms: e.time_ms,
                    principal: e.principal,
                    peer: e.peer,
                    method: e.method,
                    pipeline: e.pipeline,
                    outcome: e.outcome,
                })
                .collect(),
            total,
            chain_ok: v.problems.is_empty(),
            chain_error: v.problems.join("; "),
        }))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryReply>, Status> {
        let t0 = Instant::now();
        let QueryRequest { sql, pipeline, format, max_rows } = req.get_ref().clone();
        check_sql(&sql)?;
        let format = query::Format::parse(&format)?;
        let parsed = eddy_engine::query::parse_query(&sql).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reads = eddy_engine::query::relations(&parsed);
        if reads.is_empty() {
            return Err(Status::invalid_argument("the query reads no view: SELECT ... FROM <materialized view>"));
        }
        let pipelines = self.shared.catalog.snapshot();
        let name = query::pipeline_of(&pipeline, &reads, &pipelines).map_err(|s| {
            // Before READY the pipelines are still recovering: the view may be on its way.
            let ready = self.shared.registry.ready.load(std::sync::atomic::Ordering::Acquire);
            match s.code() {
                tonic::Code::NotFound if !ready => {
                    Status::unavailable("eddyd is still recovering its pipelines; ask again in a moment")
                }
                _ => s,
            }
        })?;
        self.authorize(&req, "Query", &name, Role::Viewer).await?;
        let Some(v) = pipelines.get(&name) else { return Err(Status::not_found(format!("no pipeline named {name}"))) };
        let inputs = query::inputs(&name, v, &reads)?;
        let answer = query::answer(sql, inputs, self.query.limits(max_rows)).await?;
        Ok(Response::new(query::reply(name, &answer, format, self.query.max_bytes, t0)?))
    }

    async fn restore(&self, req: Request<RestoreRequest>) -> Result<Response<RestoreReply>, Status> {
        let r = req.get_ref().clone();
        let c = self.authorize(&req, "Restore", &r.pipeline, Role::Admin).await?;
        let out = match self.restores.clone().try_lock_owned() {
            // Its own task: a caller that gives up waiting does not cut a restore short (a
            // pipeline held for it would stay held).
            Ok(one) => {
                let (shared, r) = (self.shared.clone(), r.clone());
                let task = tokio::spawn(async move {
                    let out = super::restore::from_hub(&shared, &r).await;
                    drop(one);
                    out
                });
                task.await.unwrap_or_else(|e| Err(Status::internal(format!("the restore did not finish: {e}"))))
            }
            Err(_) => Err(Status::failed_precondition("another restore is under way; try again when it is done")),
        };
        self.outcome(&c, "Restore", &r.pipeline, out).await.map(Response::new)
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIReply>, Status> {
        let c = self.authorize(&req, "WhoAmI", "", Role::Viewer).await;
        let peer = match c {
            Ok(c) => c.peer,
            // A caller with roles on some pipelines only still learns who it is.
            Err(s) if s.code() == tonic::Code::PermissionDenied => req.extensions().get::<Peer>().cloned().ok_or(s)?,
            Err(s) => return Err(s),
        };
        let (role, pipelines) =
            self.policy().standing(&peer.names).best().ok_or_else(|| Status::permission_denied("no role"))?;
        Ok(Response::new(WhoAmIReply {
            principal: peer.principal().to_string(),
            peer: peer.address.clone(),
            role: role.name().to_string(),
            pipelines,
        }))
    }
}

/// Serves until `shutdown` fires.
pub async fn serve(
    svc: ControlService,
    unix: Option<std::os::unix::net::UnixListener>,
    tcp: Option<(std::net::TcpListener, Option<Arc<tokio_rustls::rustls::ServerConfig>>)>,
    max_connections: usize,
    shutdown: oneshot::Receiver<()>,
) -> Result<()> {
    let unix = unix.map(tokio::net::UnixListener::from_std).transpose()?;
    let tcp = match tcp {
        Some((l, tls)) => Some((tokio::net::TcpListener::from_std(l)?, tls)),
        None => None,
    };
    let (denied_tx, mut denied_rx) = tokio::sync::mpsc::channel::<Event>(64);
    let incoming = listen::incoming(unix, tcp, max_connections, denied_tx);
    let svc = Arc::new(svc);
    // Failed handshakes are audited here, one at a time (a flood of them is bounded by the
    // channel: extra ones are counted in the journal only).
    let auditor = svc.clone();
    tokio::spawn(async move {
        while let Some(ev) = denied_rx.recv().await {
            let _ = auditor.record(ev).await;
        }
    });
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ControlServer<ControlService>>().await;
    // Only what eddyd serves: eddy.v1 also holds the hub's service.
    let reflection_of = || {
        [
            "eddy.v1.Control",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, name| b.with_service_name(name))
        .register_encoded_file_descriptor_set(eddy_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_of().build_v1()?;
    let reflection_alpha = reflection_of().build_v1alpha()?;
    let control = ControlServer::from_arc(svc).max_decoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(control)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(incoming), async {
            let _ = shutdown.await;
        })
        .await?;
    Ok(())
}
