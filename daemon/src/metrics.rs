//! Metrics: counters the pipelines and connectors update, rendered as Prometheus text on a local
//! address with `/healthz` (liveness: every pipeline's worker is alive and stepping) and `/readyz`
//! (every pipeline recovered and running, none held for failing to start). Owns the HTTP endpoint;
//! never touches pipeline state directly (pipelines publish snapshots of their counters).

use eddy_engine::connector::Role;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_engine::Observation;

use crate::start_failure::START_FAILED;

/// Counters of one connector's source or sink (connection state, messages, queue and outbox).
#[derive(Default)]
pub struct ConnectorGauges {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Source: messages decoded; sink: messages sent.
    pub messages: AtomicU64,
    /// Source: redelivered messages recognised as already logged.
    pub duplicates: AtomicU64,
    /// Source: messages waiting between the connection and the pipeline.
    pub queue_depth: AtomicI64,
    /// Source: payload bytes waiting between the connection and the pipeline.
    pub queue_bytes: AtomicU64,
    /// Source: connects on which the broker had lost the persistent session (expiry, restart
    /// without persistence): messages it held for eddyd are gone.
    pub sessions_lost: AtomicU64,
    /// Times a full queue (source) or outbox (sink) made the producer wait.
    pub backpressure: AtomicU64,
    /// Sink: messages dropped by `outbox_full = 'drop_oldest'`.
    pub dropped: AtomicU64,
    pub outbox_messages: AtomicU64,
    pub outbox_bytes: AtomicU64,
    /// Sink (hub): how long the oldest row in the outbox has waited, in ms.
    pub outbox_oldest_age_ms: AtomicU64,
    /// Sink: the outbox's next sequence number, the first not yet acknowledged, the largest
    /// delivered `end`, and its identity (what a checkpoint backup records of a hub sink).
    pub outbox_next_seq: AtomicU64,
    pub outbox_acked_seq: AtomicU64,
    pub outbox_end: AtomicU64,
    pub outbox_id: AtomicU64,
    /// Sink (hub): the stream it sends to; set once it started.
    pub hub_stream: Mutex<Option<String>>,
    /// The name the connector's broker or cluster knows it by (an MQTT client id, a Kafka group
    /// or transactional id); set as it connects, shown by the status.
    pub connected_as: Mutex<Option<String>>,
    /// Sink: the pipeline is waiting for room in the outbox (backpressure, not a hang).
    pub blocked: AtomicBool,
    /// A connector thread that stopped on an error (the pipeline fails on its next delivery;
    /// `/healthz` reports it at once).
    pub failed: Mutex<Option<String>>,
    /// Sink (Kafka): the first delivery that failed since the sink last checked.
    pub failed_deliveries: Mutex<Option<String>>,
}

impl ConnectorGauges {
    pub fn fail(&self, why: String) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_connected_as(&self, name: &str) {
        *self.connected_as.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
    }

    /// [`ConnectorGauges::connected_as`], empty before it is known.
    pub fn connected_as(&self) -> String {
        self.connected_as.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }
}

/// Checkpoint backups of one pipeline to the hub.
#[derive(Default)]
pub struct BackupGauges {
    pub checkpoints: AtomicU64,
    pub failures: AtomicU64,
    /// Blob bytes uploaded (blobs the hub already had are not sent).
    pub bytes: AtomicU64,
    /// The sequence number of the newest checkpoint backed up.
    pub last_seq: AtomicU64,
    /// How long the checkpoint being backed up has waited (0: none waiting).
    pub lag_ms: AtomicU64,
    error: Mutex<Option<String>>,
}

impl BackupGauges {
    /// Why the last attempt failed (`None`: it worked).
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the last failure (`None`: the last attempt worked); true when it is a new one.
    pub fn set_error(&self, e: Option<String>) -> bool {
        let mut cur = self.error.lock().unwrap_or_else(|p| p.into_inner());
        let new = e.is_some() && *cur != e;
        *cur = e;
        new
    }
}

/// What a pipeline's worker last reported.
pub struct PipelineStatus {
    pub observation: Option<Observation>,
    pub heartbeat: Instant,
    pub state: &'static str,
    pub error: Option<String>,
}

/// The connectors whose gauges are rendered, in this order; each has its own metric names
/// (`eddy_mqtt_connected`, `eddy_kafka_connected`, …).
pub const CONNECTORS: [&str; 3] = ["mqtt", "kafka", "hub"];

/// One connector's gauges and what it is: its pipeline, role (source or sink), connector
/// (one of [`CONNECTORS`]) and name.
struct ConnectorEntry {
    pipeline: String,
    role: Role,
    connector: &'static str,
    name: String,
    gauges: Arc<ConnectorGauges>,
}

/// A connector metric: name after `eddy_<connector>_`, type, help, the one connector it applies
/// to (all when `None`), and its value.
type ConnectorMetric = (&'static str, &'static str, &'static str, Option<&'static str>, fn(&ConnectorGauges) -> f64);

fn ld(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

const CONNECTOR_METRICS: &[ConnectorMetric] = &[
    ("connected", "gauge", "1 while the connection to the broker (or hub) is up.", None, |g| {
        g.connected.load(Ordering::Relaxed) as u8 as f64
    }),
    ("connects_total", "counter", "Successful connects.", None, |g| ld(&g.connects)),
    ("connect_errors_total", "counter", "Failed connects and lost connections.", None, |g| ld(&g.connect_errors)),
    ("messages_total", "counter", "Messages (records, batches) decoded by a source or sent by a sink.", None, |g| {
        ld(&g.messages)
    }),
    (
        "duplicates_total",
        "counter",
        "Redelivered messages already in the WAL, acknowledged and skipped.",
        Some("mqtt"),
        |g| ld(&g.duplicates),
    ),
    ("queue_depth", "gauge", "Messages received and waiting for the pipeline.", None, |g| {
        g.queue_depth.load(Ordering::Relaxed).max(0) as f64
    }),
    ("queue_bytes", "gauge", "Payload bytes received and waiting for the pipeline.", None, |g| ld(&g.queue_bytes)),
    (
        "sessions_lost_total",
        "counter",
        "Reconnects on which the broker no longer had the persistent session (what it held is lost).",
        Some("mqtt"),
        |g| ld(&g.sessions_lost),
    ),
    ("backpressure_total", "counter", "Times a full queue or outbox made the producer wait (overload).", None, |g| {
        ld(&g.backpressure)
    }),
    (
        "dropped_total",
        "counter",
        "Messages dropped by a configured policy (outbox_full = 'drop_oldest'); 0 otherwise.",
        None,
        |g| ld(&g.dropped),
    ),
    ("outbox_messages", "gauge", "Messages (rows, for the hub) waiting to be acknowledged.", None, |g| {
        ld(&g.outbox_messages)
    }),
    ("outbox_bytes", "gauge", "Bytes waiting in the outbox.", None, |g| ld(&g.outbox_bytes)),
    ("outbox_oldest_age_seconds", "gauge", "How long the oldest row in the outbox has waited.", Some("hub"), |g| {
        g.outbox_oldest_age_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }),
];

#[derive(Default)]
pub struct Registry {
    connectors: Mutex<Vec<ConnectorEntry>>,
    pipelines: Mutex<BTreeMap<String, PipelineStatus>>,
    backups: Mutex<BTreeMap<String, Arc<BackupGauges>>>,
    pub ready: AtomicBool,
}

/// A worker that has not stepped for this long is unhealthy (it also stops the watchdog).
pub const STALL: Duration = Duration::from_secs(10);

impl Registry {
    /// The gauges of `pipeline`'s source or sink (`role`) `name`, through `connector` (one of
    /// [`CONNECTORS`]); kept across reloads: counters only grow.
    pub fn connector(&self, pipeline: &str, role: Role, connector: &'static str, name: &str) -> Arc<ConnectorGauges> {
        // Ours to keep in step: a connector missing from CONNECTORS would never be rendered.
        assert!(CONNECTORS.contains(&connector) && role != Role::Table, "{role} via {connector}");
        let mut c = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        let same = |e: &&ConnectorEntry| e.pipeline == pipeline && e.role == role && e.name == name;
        if let Some(e) = c.iter().find(same).filter(|e| e.connector == connector) {
            return e.gauges.clone();
        }
        // A reload that moved the source or sink to another connector starts its counters anew.
        c.retain(|e| !(e.pipeline == pipeline && e.role == role && e.name == name));
        let gauges = Arc::new(ConnectorGauges::default());
        c.push(ConnectorEntry {
            pipeline: pipeline.to_string(),
            role,
            connector,
            name: name.to_string(),
            gauges: gauges.clone(),
        });
        gauges
    }

    /// The backup gauges of one pipeline, if a backup of it was tried.
    pub fn backup_if_tried(&self, pipeline: &str) -> Option<Arc<BackupGauges>> {
        self.backups.lock().unwrap_or_else(|p| p.into_inner()).get(pipeline).cloned()
    }

    /// The backup gauges of one pipeline.
    pub fn backup(&self, pipeline: &str) -> Arc<BackupGauges> {
        self.backups.lock().unwrap_or_else(|p| p.into_inner()).entry(pipeline.to_string()).or_default().clone()
    }

    pub fn set_pipeline(
        &self,
        name: &str,
        state: &'static str,
        observation: Option<Observation>,
        error: Option<String>,
    ) {
        let mut p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        let e = p.entry(name.to_string()).or_insert(PipelineStatus {
            observation: None,
            heartbeat: Instant::now(),
            state,
            error: None,
        });
        e.heartbeat = Instant::now();
        e.state = state;
        if observation.is_some() {
            e.observation = observation;
        }
        if error.is_some() {
            e.error = error;
        }
    }

    /// A pipeline's state, last observation and error, as its worker last reported them.
    pub fn pipeline_snapshot(&self, name: &str) -> Option<(&'static str, Option<Observation>, Option<String>)> {
        let p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        p.get(name).map(|s| (s.state, s.observation.clone(), s.error.clone()))
    }

    pub fn pipeline_names(&self) -> Vec<String> {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// The connectors of one pipeline: (role, name, gauges).
    pub fn connectors_of(&self, pipeline: &str) -> Vec<(Role, String, Arc<ConnectorGauges>)> {
        let c = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().filter(|e| e.pipeline == pipeline).map(|e| (e.role, e.name.clone(), e.gauges.clone())).collect()
    }

    pub fn remove_pipeline(&self, name: &str) {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Forgets the connectors of a pipeline that no longer runs (deleted, removed from the
    /// files, or held after it did not start): their series leave `/metrics` and their
    /// connection state no longer counts for `/healthz`.
    pub fn remove_connectors(&self, pipeline: &str) {
        self.connectors.lock().unwrap_or_else(|p| p.into_inner()).retain(|e| e.pipeline != pipeline);
    }

    /// Whether every running pipeline's worker reported within [`STALL`] (and none failed).
    pub fn healthy(&self) -> Result<(), String> {
        let p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        for (name, s) in p.iter() {
            if s.state == "failed" {
                return Err(format!("pipeline {name} failed: {}", s.error.as_deref().unwrap_or("")));
            }
            if s.state == "running" && s.heartbeat.elapsed() > STALL && !self.waiting_on_output(name) {
                return Err(format!("pipeline {name} has not stepped for {} s", s.heartbeat.elapsed().as_secs()));
            }
        }
        for e in self.connectors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(why) = e.gauges.failure() {
                let (pipeline, role, name) = (&e.pipeline, e.role, &e.name);
                return Err(format!("pipeline {pipeline}: the {role} {name}'s connection thread stopped: {why}"));
            }
        }
        Ok(())
    }

    /// Whether a sink of `pipeline` holds it back, waiting for room in its outbox.
    fn waiting_on_output(&self, pipeline: &str) -> bool {
        self.connectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|e| e.pipeline == pipeline && e.gauges.blocked.load(Ordering::Relaxed))
    }

    /// One line of STATUS= text for systemd.
    pub fn status_line(&self) -> String {
        let p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        let running = p.values().filter(|s| s.state == "running").count();
        let rows: u64 = p
            .values()
            .filter_map(|s| s.observation.as_ref())
            .flat_map(|o| o.sources.iter().map(|s| s.stats.accepted))
            .sum();
        let disconnected = self
            .connectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| !e.gauges.connected.load(Ordering::Relaxed))
            .count();
        let held = p.values().filter(|s| s.state == START_FAILED).count();
        let held = if held > 0 { format!(", {held} did not start") } else { String::new() };
        format!("{running}/{} pipelines running{held}, {rows} rows in, {disconnected} connections down", p.len())
    }

    /// Whether no pipeline is held for having failed to start.
    pub fn all_started(&self) -> bool {
        !self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).values().any(|s| s.state == START_FAILED)
    }

    /// Readiness, as `/readyz` and the API's status report it: start-up is over, every worker is
    /// alive and stepping, and no pipeline is held for having failed to start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.healthy().is_ok() && self.all_started()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let now = eddy_engine::time::now_ms();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let p = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        family(&mut o, "eddy_pipeline_up", "gauge", "1 while the pipeline runs, 0 when stopped or failed.");
        for (name, s) in p.iter() {
            let _ = writeln!(
                o,
                "eddy_pipeline_up{{pipeline=\"{name}\",state=\"{}\"}} {}",
                s.state,
                (s.state == "running") as u8
            );
        }
        let obs: Vec<(&String, &Observation)> =
            p.iter().filter_map(|(n, s)| s.observation.as_ref().map(|o| (n, o))).collect();
        let src = |o: &mut String,
                   metric: &str,
                   kind: &str,
                   help: &str,
                   f: &dyn Fn(&eddy_engine::SourceObservation) -> Option<f64>| {
            let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (pn, ob) in &obs {
                for s in &ob.sources {
                    if let Some(v) = f(s) {
                        let _ = writeln!(o, "{metric}{{pipeline=\"{pn}\",source=\"{}\"}} {v}", s.name);
                    }
                }
            }
        };
        src(&mut o, "eddy_source_rows_total", "counter", "Rows accepted by a source.", &|s| {
            Some(s.stats.accepted as f64)
        });
        src(&mut o, "eddy_source_late_rows_total", "counter", "Rows behind the watermark (to LATE()).", &|s| {
            Some(s.stats.late as f64)
        });
        src(
            &mut o,
            "eddy_source_error_rows_total",
            "counter",
            "Inputs that could not be decoded (to ERRORS()).",
            &|s| Some(s.stats.errors as f64),
        );
        src(&mut o, "eddy_source_watermark_lag_seconds", "gauge", "Wall clock minus the source's watermark.", &|s| {
            s.watermark.map(|w| (now - w) as f64 / 1000.0)
        });
        family(&mut o, "eddy_sink_rows_total", "counter", "Rows (and upserts) a sink wrote.");
        for (pn, ob) in &obs {
            for (sn, rows, _) in &ob.sinks {
                let _ = writeln!(o, "eddy_sink_rows_total{{pipeline=\"{pn}\",sink=\"{sn}\"}} {rows}");
            }
        }
        family(&mut o, "eddy_sink_deletes_total", "counter", "Retractions an upsert sink wrote.");
        for (pn, ob) in &obs {
            for (sn, _, d) in &ob.sinks {
                let _ = writeln!(o, "eddy_sink_deletes_total{{pipeline=\"{pn}\",sink=\"{sn}\"}} {d}");
            }
        }
        family(&mut o, "eddy_pipeline_state_bytes", "gauge", "Bytes of operator state held in memory.");
        for (pn, ob) in &obs {
            let _ = writeln!(o, "eddy_pipeline_state_bytes{{pipeline=\"{pn}\"}} {}", ob.state_bytes);
        }
        family(&mut o, "eddy_pipeline_shards", "gauge", "Shard threads holding the pipeline's keyed state.");
        for (pn, ob) in &obs {
            let _ = writeln!(o, "eddy_pipeline_shards{{pipeline=\"{pn}\"}} {}", ob.shards);
        }
        family(
            &mut o,
            "eddy_pipeline_shard_backlog",
            "gauge",
            "Steps sent to the shards and not done yet; at limits.shard_queue the sources wait.",
        );
        for (pn, ob) in &obs {
            let _ = writeln!(o, "eddy_pipeline_shard_backlog{{pipeline=\"{pn}\"}} {}", ob.shard_backlog);
        }
        family(&mut o, "eddy_checkpoints_total", "counter", "Checkpoints written.");
        for (pn, ob) in &obs {
            if let Some(d) = &ob.durable {
                let _ = writeln!(o, "eddy_checkpoints_total{{pipeline=\"{pn}\"}} {}", d.checkpoints);
            }
        }
        family(
            &mut o,
            "eddy_checkpoints_skipped_total",
            "counter",
            "Periodic checkpoints not written: nothing had changed since the newest.",
        );
        for (pn, ob) in &obs {
            if let Some(d) = &ob.durable {
                let _ = writeln!(o, "eddy_checkpoints_skipped_total{{pipeline=\"{pn}\"}} {}", d.checkpoints_skipped);
            }
        }
        family(&mut o, "eddy_wal_bytes_total", "counter", "Payload bytes appended to the WAL.");
        for (pn, ob) in &obs {
            if let Some(d) = &ob.durable {
                let _ = writeln!(o, "eddy_wal_bytes_total{{pipeline=\"{pn}\"}} {}", d.wal.payload_bytes);
            }
        }
        family(&mut o, "eddy_wal_fsync_seconds", "histogram", "WAL group-commit (write + fdatasync) latency.");
        for (pn, ob) in &obs {
            if let Some(d) = &ob.durable {
                let mut cum = 0u64;
                for (i, n) in d.wal.commit_micros.iter().enumerate() {
                    cum += n;
                    // Bucket i holds latencies below 2^i µs.
                    let le = (1u64 << i) as f64 / 1e6;
                    let _ = writeln!(o, "eddy_wal_fsync_seconds_bucket{{pipeline=\"{pn}\",le=\"{le}\"}} {cum}");
                }
                let _ = writeln!(o, "eddy_wal_fsync_seconds_bucket{{pipeline=\"{pn}\",le=\"+Inf\"}} {cum}");
                let _ = writeln!(o, "eddy_wal_fsync_seconds_count{{pipeline=\"{pn}\"}} {}", d.wal.commits);
            }
        }
        drop(p);
        let c = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        for connector in CONNECTORS {
            if !c.iter().any(|e| e.connector == connector) {
                continue;
            }
            for (suffix, kind, help, only, value) in CONNECTOR_METRICS {
                if only.is_some_and(|k| k != connector) {
                    continue;
                }
                let metric = format!("eddy_{connector}_{suffix}");
                family(&mut o, &metric, kind, help);
                for e in c.iter().filter(|e| e.connector == connector) {
                    let (pn, role, n) = (&e.pipeline, e.role, &e.name);
                    let _ = writeln!(o, "{metric}{{pipeline=\"{pn}\",{role}=\"{n}\"}} {}", value(&e.gauges));
                }
            }
        }
        drop(c);
        let b = self.backups.lock().unwrap_or_else(|p| p.into_inner());
        let backup = |o: &mut String, metric: &str, kind: &str, help: &str, f: &dyn Fn(&BackupGauges) -> f64| {
            let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (pn, g) in b.iter() {
                let _ = writeln!(o, "{metric}{{pipeline=\"{pn}\"}} {}", f(g));
            }
        };
        backup(&mut o, "eddy_backup_checkpoints_total", "counter", "Checkpoints backed up to the hub.", &|g| {
            ld(&g.checkpoints)
        });
        backup(&mut o, "eddy_backup_failures_total", "counter", "Failed backup attempts (retried).", &|g| {
            ld(&g.failures)
        });
        backup(&mut o, "eddy_backup_bytes_total", "counter", "State bytes uploaded to the hub.", &|g| ld(&g.bytes));
        backup(&mut o, "eddy_backup_last_seq", "gauge", "The newest checkpoint backed up.", &|g| ld(&g.last_seq));
        backup(
            &mut o,
            "eddy_backup_lag_seconds",
            "gauge",
            "How long the checkpoint being backed up has waited (0 when none waits).",
            &|g| ld(&g.lag_ms) / 1000.0,
        );
        o
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (one short request at a time; requests
/// are read with a timeout and a size bound).
pub fn serve(addr: &str, registry: Arc<Registry>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Err(e) = handle(stream, &registry) {
                tracing::debug!(error = %e, "metrics request");
            }
        }
    })?;
    Ok(local)
}

fn handle(mut s: TcpStream, registry: &Registry) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].contains(&b'\n') {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let (code, body, ctype) = match path {
        "/metrics" => ("200 OK", registry.render(), "text/plain; version=0.0.4"),
        "/healthz" => match registry.healthy() {
            Ok(()) => ("200 OK", "ok\n".to_string(), "text/plain"),
            Err(e) => ("503 Service Unavailable", format!("{e}\n"), "text/plain"),
        },
        "/readyz" if registry.is_ready() => ("200 OK", "ready\n".into(), "text/plain"),
        "/readyz" => ("503 Service Unavailable", "not ready\n".into(), "text/plain"),
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".into(), "text/plain"),
    };
    write!(
        s,
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connector thread that stopped on an error (an MQTT publisher whose outbox fsync failed)
    /// used to leave /healthz OK until the pipeline next delivered output.
    #[test]
    fn a_failed_connector_thread_makes_health_fail_at_once() {
        let r = Registry::default();
        let g = r.connector("p", Role::Sink, "mqtt", "alerts");
        assert!(r.healthy().is_ok());
        g.fail("outbox: fsync failed".into());
        let e = r.healthy().unwrap_err();
        assert!(e.contains("pipeline p") && e.contains("sink alerts") && e.contains("fsync failed"), "{e}");
    }

    /// Every connector's gauges used to be rendered as `eddy_mqtt_*`, Kafka's and the hub's too.
    #[test]
    fn each_connector_has_its_own_metric_names_and_families_appear_once() {
        let r = Registry::default();
        r.connector("p", Role::Source, "mqtt", "m").messages.store(3, Ordering::Relaxed);
        r.connector("p", Role::Source, "kafka", "k").messages.store(5, Ordering::Relaxed);
        r.connector("p", Role::Sink, "kafka", "out").connected.store(true, Ordering::Relaxed);
        r.connector("p", Role::Sink, "hub", "h").outbox_oldest_age_ms.store(1500, Ordering::Relaxed);
        let text = r.render();
        for line in [
            "eddy_mqtt_messages_total{pipeline=\"p\",source=\"m\"} 3",
            "eddy_kafka_messages_total{pipeline=\"p\",source=\"k\"} 5",
            "eddy_kafka_connected{pipeline=\"p\",sink=\"out\"} 1",
            "eddy_hub_outbox_oldest_age_seconds{pipeline=\"p\",sink=\"h\"} 1.5",
            "eddy_mqtt_duplicates_total{pipeline=\"p\",source=\"m\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        for absent in ["source=\"k\"", "sink=\"h\"", "sink=\"out\""] {
            assert!(!text.lines().any(|l| l.starts_with("eddy_mqtt_") && l.contains(absent)), "{text}");
        }
        assert!(!text.contains("eddy_kafka_duplicates_total") && !text.contains("eddy_mqtt_outbox_oldest"));
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a metric family declared twice");
        // A reload that moves a source to another connector starts it anew under the new names.
        r.connector("p", Role::Source, "kafka", "m");
        let text = r.render();
        assert!(
            !text.contains("eddy_mqtt_") && text.contains("eddy_kafka_messages_total{pipeline=\"p\",source=\"m\"} 0")
        );
    }
}
