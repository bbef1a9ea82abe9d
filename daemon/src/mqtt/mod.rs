//! The MQTT connector (rumqttc, MQTT 3.1.1 and 5): sources and sinks the engine gets through
//! [`ConnectorProvider`]. Owns the network side; the engine only sees rows and JSON lines.

pub mod outbox;
pub mod settings;
pub mod sink;
pub mod source;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::MqttDefaults;
use crate::metrics::Registry;
use eddy_engine::connector::{self, ConnectorProvider, ConnectorSpec, FoldPosition, SinkWriter, SourceReader};
use eddy_engine::format::Format;
use eddy_engine::{EngineError, Result};
use outbox::FullPolicy;
use settings::{opt_err, Connection, CONNECTION_OPTIONS};

const SOURCE_ONLY: &[&str] = &["clean_session", "queue_messages", "queue_bytes"];
const SINK_ONLY: &[&str] = &["retain", "outbox_bytes", "outbox_full", "inflight"];

/// The daemon's provided connectors, for one pipeline.
pub struct Provider {
    pub pipeline: String,
    pub defaults: MqttDefaults,
    pub metrics: Arc<Registry>,
    /// Set when eddyd is shutting down (a blocked sink then stops waiting).
    pub stopping: Arc<AtomicBool>,
    /// Whether the pipeline runs with durable state (exactly-once input).
    pub durable: bool,
}

/// Installs rustls' ring provider once (rumqttc is built without a default one).
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reconnect delays: 100 ms doubling to 30 s, reset by a successful connect.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
    /// Sleeps the current delay in short steps, returning early once `stop` is set.
    pub(crate) fn sleep(&mut self, stop: &AtomicBool) {
        let until = std::time::Instant::now() + self.0;
        while std::time::Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
    }
}

fn num(ctx: &str, spec: &ConnectorSpec<'_>, key: &str, default: usize) -> Result<usize> {
    Ok(connector::num_option::<usize>(ctx, spec.options, key)?.unwrap_or(default))
}

impl Provider {
    fn source_settings(&self, spec: &ConnectorSpec<'_>) -> Result<source::SourceSettings> {
        let ctx = format!("source '{}'", spec.name);
        let conn = Connection::resolve("source", &self.pipeline, spec.name, spec.options, &self.defaults)?;
        let topics: Vec<String> = settings::get(&ctx, spec.options, &MqttDefaults::default(), "topic")?
            .ok_or_else(|| {
                opt_err(&ctx, "connector 'mqtt' needs option 'topic' (filters, comma-separated; + and # allowed)")
            })?
            .split(',')
            .map(|t| t.trim().to_string())
            .collect();
        for t in &topics {
            let bad_hash = t.find('#').is_some_and(|i| i + 1 != t.len() || (i > 0 && !t[..i].ends_with('/')));
            let bad_plus = t.split('/').any(|l| l.contains('+') && l != "+");
            if t.is_empty() || bad_hash || bad_plus {
                return Err(opt_err(
                    &ctx,
                    format!("topic filter '{t}' is not valid ('+' stands for one whole level, '#' only last)"),
                ));
            }
        }
        let format = match spec.options.get("format") {
            None => Format::Json,
            Some(f) => Format::parse(f).ok_or_else(|| {
                opt_err(&ctx, format!("unknown format '{f}' (valid formats: {})", Format::NAMES.join(", ")))
            })?,
        };
        for k in &spec.metadata_keys {
            if !source::METADATA_KEYS.contains(&k.as_str()) {
                return Err(opt_err(
                    &ctx,
                    format!("METADATA FROM '{k}': an MQTT source provides {}", source::METADATA_KEYS.join(", ")),
                ));
            }
        }
        if format == Format::Raw && spec.columns.len() != spec.metadata_keys.len() + 1 {
            return Err(opt_err(
                &ctx,
                "format 'raw' needs exactly one payload column (payload BYTEA or VARCHAR) besides METADATA columns",
            ));
        }
        let queue_messages =
            num(&ctx, spec, "queue_messages", self.defaults.queue_messages.unwrap_or(1024))?.clamp(1, 1 << 20);
        let queue_bytes = num(&ctx, spec, "queue_bytes", self.defaults.queue_bytes.unwrap_or(64 << 20))?.max(1 << 16);
        let clean_session = connector::bool_option(&ctx, spec.options, "clean_session", false)?;
        if clean_session && self.durable && conn.qos != rumqttc::QoS::AtMostOnce {
            // A clean session makes the broker forget what it holds for us at every reconnect:
            // what was published while eddyd was away is lost, so exactly-once input cannot hold.
            return Err(opt_err(
                &ctx,
                "clean_session = 'true' with durable state would lose messages published while eddyd is disconnected \
                 (the broker keeps nothing for a clean session); remove it for exactly-once input, or use qos = '0' \
                 to say loss is acceptable",
            ));
        }
        Ok(source::SourceSettings { clean_session, conn, topics, format, queue_messages, queue_bytes })
    }

    fn sink_settings(&self, spec: &ConnectorSpec<'_>) -> Result<sink::SinkSettings> {
        let ctx = format!("sink '{}'", spec.name);
        let conn = Connection::resolve("sink", &self.pipeline, spec.name, spec.options, &self.defaults)?;
        let topic = spec.options.get("topic").ok_or_else(|| {
            opt_err(&ctx, "connector 'mqtt' needs option 'topic' (a template such as 'alerts/{device_id}')")
        })?;
        let topic = sink::TopicTemplate::parse(topic, &spec.columns).map_err(|m| opt_err(&ctx, m))?;
        if let Some(f) = spec.options.get("format") {
            if !f.eq_ignore_ascii_case("json") {
                return Err(opt_err(&ctx, "MQTT sinks publish format 'json' (one object per row)"));
            }
        }
        let policy = match settings::get(&ctx, spec.options, &self.defaults, "outbox_full")?
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("block") => FullPolicy::Block,
            Some("drop_oldest") => FullPolicy::DropOldest,
            Some(o) => return Err(opt_err(&ctx, format!("outbox_full '{o}': valid values are block, drop_oldest"))),
        };
        Ok(sink::SinkSettings {
            conn,
            topic,
            retain: connector::bool_option(&ctx, spec.options, "retain", false)?,
            outbox_bytes: num(&ctx, spec, "outbox_bytes", self.defaults.outbox_bytes.unwrap_or(64 << 20))?.max(4096),
            policy,
            inflight: num(&ctx, spec, "inflight", 64)?.clamp(1, 65535),
        })
    }
}

impl ConnectorProvider for Provider {
    fn connectors(&self, _what: &str) -> Vec<&'static str> {
        vec!["mqtt"]
    }

    fn options(&self, what: &str, connector: &str) -> Option<&'static [&'static str]> {
        static SOURCE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        static SINK: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        if connector != "mqtt" {
            return None;
        }
        let join = |own: &[&'static str]| CONNECTION_OPTIONS.iter().chain(own).copied().collect::<Vec<_>>();
        match what {
            "source" => Some(SOURCE.get_or_init(|| join(SOURCE_ONLY)).as_slice()),
            "sink" => Some(SINK.get_or_init(|| join(SINK_ONLY)).as_slice()),
            _ => None,
        }
    }

    fn validate(&self, what: &str, spec: &ConnectorSpec<'_>) -> Result<()> {
        match what {
            "source" => self.source_settings(spec).map(|_| ()),
            "sink" => self.sink_settings(spec).map(|_| ()),
            _ => Err(EngineError::Internal(format!("no provided {what}s"))),
        }
    }

    fn open_source(&self, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SourceReader>> {
        let s = self.source_settings(spec)?;
        let gauges = self.metrics.connector(&self.pipeline, "source", spec.name);
        Ok(Box::new(source::MqttSource::new(s, spec.metadata_keys.clone(), gauges, spec.wakeup.clone())))
    }

    fn fold_position(&self, _connector: &str) -> FoldPosition {
        source::fold_position
    }

    fn open_sink(&self, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
        let s = self.sink_settings(spec)?;
        let gauges = self.metrics.connector(&self.pipeline, "sink", spec.name);
        Ok(Box::new(sink::MqttSink::new(s, spec.state.clone(), self.stopping.clone(), gauges)))
    }
}
