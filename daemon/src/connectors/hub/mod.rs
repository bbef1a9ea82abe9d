//! The `hub` sink: a pipeline's rows go to the fleet's hub (`eddy-hub`, docs/hub.md), which stores
//! them as Parquet in object storage. Owns the sink's options and its settings from `[hub]`; the
//! sending is [`sink`]'s, the row encoding [`rows`]'.

pub mod rows;
pub mod sink;

use std::path::PathBuf;
use std::time::Duration;

use super::outbox::FullPolicy;
use super::{num, Provider};
use eddy_engine::connector::{ConnectorSpec, SinkWriter};
use eddy_engine::{EngineError, Result};

/// The options a `hub` sink takes (besides the common ones).
pub const SINK_OPTIONS: &[&str] = &["stream", "batch_rows", "batch_bytes", "outbox_bytes", "outbox_full"];

#[derive(Debug, Clone)]
pub struct HubSinkSettings {
    pub ctx: String,
    /// The stream the rows are stored under at the hub.
    pub stream: String,
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub server_name: Option<String>,
    pub request_timeout: Duration,
    /// One push holds at most this many rows, and about this many bytes of rows.
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub outbox_bytes: usize,
    pub policy: FullPolicy,
}

fn opt_err(ctx: &str, m: impl Into<String>) -> EngineError {
    EngineError::options(ctx, m)
}

pub(super) fn sink_settings(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<HubSinkSettings> {
    let ctx = format!("sink '{}'", spec.name);
    let stream = spec.options.get("stream").ok_or_else(|| {
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
    if let Some(f) = spec.options.get("format") {
        if !f.eq_ignore_ascii_case("parquet") {
            return Err(opt_err(&ctx, "the hub stores rows as Parquet (format = 'parquet', the default)"));
        }
    }
    let h = &p.hub;
    let need = |v: &Option<PathBuf>, key: &str| {
        v.clone()
            .ok_or_else(|| opt_err(&ctx, format!("connector 'hub' needs hub.{key} in eddyd's config (docs/hub.md)")))
    };
    if h.endpoints.is_empty() {
        return Err(opt_err(&ctx, "connector 'hub' needs hub.endpoints in eddyd's config (docs/hub.md)"));
    }
    for e in &h.endpoints {
        if e.contains("://") || !e.contains(':') {
            return Err(opt_err(&ctx, format!("hub.endpoints: '{e}' is not host:port")));
        }
    }
    let policy = match spec.options.get("outbox_full").map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("block") => FullPolicy::Block,
        Some("drop_oldest") => FullPolicy::DropOldest,
        Some(o) => return Err(opt_err(&ctx, format!("outbox_full '{o}': valid values are block, drop_oldest"))),
    };
    Ok(HubSinkSettings {
        stream: stream.to_string(),
        endpoints: h.endpoints.clone(),
        ca_file: need(&h.ca_file, "ca_file")?,
        cert_file: need(&h.cert_file, "cert_file")?,
        key_file: need(&h.key_file, "key_file")?,
        server_name: h.server_name.clone(),
        request_timeout: Duration::from_millis(h.request_timeout_ms.unwrap_or(30_000).max(100)),
        batch_rows: num(&ctx, spec, "batch_rows", 10_000)?.clamp(1, 1_000_000),
        batch_bytes: num(&ctx, spec, "batch_bytes", 4 << 20)?.clamp(4096, 48 << 20),
        outbox_bytes: num(&ctx, spec, "outbox_bytes", 256 << 20)?.max(4096),
        policy,
        ctx,
    })
}

pub(super) fn open_sink(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
    let s = sink_settings(p, spec)?;
    let schema = rows::wire_schema(spec.schema.as_ref().ok_or_else(|| EngineError::Internal("no row schema".into()))?);
    let gauges = p.metrics.connector(&p.pipeline, "sink", spec.name);
    Ok(Box::new(sink::HubSink::new(s, schema, spec.state.clone(), p.stopping.clone(), gauges)))
}
