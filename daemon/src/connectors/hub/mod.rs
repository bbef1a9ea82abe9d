//! The `hub` sink: a pipeline's rows go to the fleet's hub (`eddy-hub`, docs/hub.md), which stores
//! them as Parquet in object storage. Owns the sink's options and its settings from `[hub]`; the
//! sending is [`sink`]'s, the row encoding [`rows`]'.

pub mod backup;
pub mod fleet;
pub mod rows;
pub mod sink;

use std::time::Duration;

use eddy_client::{ClientError, HubClient, Target, Timeouts, TlsFiles};

use super::outbox::FullPolicy;
use super::Provider;
use eddy_engine::connector::{connector_options, sql_only, ConnectorSpec, Role, SinkWriter};
use eddy_engine::{EngineError, Result};

/// The `connector` option's value, and the prefix of this connector's metrics (`eddy_hub_*`).
pub const CONNECTOR: &str = "hub";

connector_options! {
    /// What a `hub` sink takes (besides the common options).
    pub struct HubSinkOptions {
        stream: String = "stream",
        batch_rows: usize = "batch_rows",
        batch_bytes: usize = "batch_bytes",
        outbox_bytes: usize = "outbox_bytes",
        outbox_full: FullPolicy = "outbox_full",
    }
}

#[derive(Debug, Clone)]
pub struct HubSinkSettings {
    pub ctx: String,
    /// The stream the rows are stored under at the hub.
    pub stream: String,
    pub link: HubLink,
    /// One push holds at most this many rows, and about this many bytes of rows.
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub outbox_bytes: usize,
    pub policy: FullPolicy,
}

/// How this gateway reaches the hubs: `[hub]` checked.
#[derive(Debug, Clone)]
pub struct HubLink {
    pub endpoints: Vec<String>,
    pub tls: TlsFiles,
    pub request_timeout: Duration,
}

impl HubLink {
    /// The link `[hub]` describes, or what is missing from it.
    pub fn from_config(h: &crate::config::HubSection) -> std::result::Result<HubLink, String> {
        let need = |v: &Option<std::path::PathBuf>, key: &str| {
            v.clone().ok_or_else(|| format!("hub.{key} is needed in eddyd's config (docs/hub.md)"))
        };
        if h.endpoints.is_empty() {
            return Err("hub.endpoints is needed in eddyd's config (docs/hub.md)".into());
        }
        if let Some(e) = h.endpoints.iter().find(|e| e.contains("://") || !e.contains(':')) {
            return Err(format!("hub.endpoints: '{e}' is not host:port"));
        }
        Ok(HubLink {
            endpoints: h.endpoints.clone(),
            tls: TlsFiles {
                ca: need(&h.ca_file, "ca_file")?,
                cert: need(&h.cert_file, "cert_file")?,
                key: need(&h.key_file, "key_file")?,
                server_name: h.server_name.clone(),
            },
            request_timeout: Duration::from_millis(h.request_timeout_ms.unwrap_or(30_000).max(100)),
        })
    }

    /// The endpoint for attempt `turn` (attempts go round the list).
    pub fn endpoint(&self, turn: usize) -> &str {
        &self.endpoints[turn % self.endpoints.len()]
    }

    pub async fn connect(&self, turn: usize) -> std::result::Result<HubClient, ClientError> {
        let target = Target::Tls { address: self.endpoint(turn).to_string(), files: self.tls.clone() };
        let timeouts = Timeouts { request: self.request_timeout, read_retries: 0, ..Timeouts::default() };
        HubClient::connect(&target, timeouts).await
    }
}

fn opt_err(ctx: &str, m: impl Into<String>) -> EngineError {
    EngineError::options(ctx, m)
}

pub(super) fn sink_settings(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<HubSinkSettings> {
    let ctx = format!("sink '{}'", spec.name);
    let o = HubSinkOptions::read(&ctx, sql_only(spec.options))?;
    let stream = o.stream.ok_or_else(|| {
        opt_err(&ctx, "connector 'hub' needs option 'stream' (the name its rows are stored under at the hub)")
    })?;
    if stream.is_empty()
        || stream.len() > 128
        || !stream.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        || stream == "."
        || stream == ".."
    {
        return Err(opt_err(&ctx, format!("stream '{stream}': 1-128 of A-Z a-z 0-9 _ - .")));
    }
    let link =
        HubLink::from_config(&p.hub).map_err(|m| EngineError::unconfigured(&ctx, format!("connector 'hub': {m}")))?;
    let policy = o.outbox_full.unwrap_or(FullPolicy::Block);
    Ok(HubSinkSettings {
        stream,
        link,
        batch_rows: o.batch_rows.unwrap_or(10_000).clamp(1, 1_000_000),
        batch_bytes: o.batch_bytes.unwrap_or(4 << 20).clamp(4096, 48 << 20),
        outbox_bytes: o.outbox_bytes.unwrap_or(256 << 20).max(4096),
        policy,
        ctx,
    })
}

pub(super) fn open_sink(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
    let s = sink_settings(p, spec)?;
    let schema = rows::wire_schema(spec.schema.as_ref().ok_or_else(|| EngineError::Internal("no row schema".into()))?);
    let gauges = p.metrics.connector(&p.pipeline, Role::Sink, CONNECTOR, spec.name);
    Ok(Box::new(sink::HubSink::new(s, schema, spec.state.clone(), p.stopping.clone(), gauges)))
}
