//! Connectors the engine itself provides: files (read to the end or tailed), a deterministic data
//! generator, and file and console sinks. Network connectors (MQTT, Kafka) live in the daemon and
//! plug in through a [`ConnectorProvider`], which hands the engine [`SourceReader`]s and
//! [`SinkWriter`]s; the engine itself never touches the network. Every connector validates its
//! options and names the valid ones.

pub(crate) mod datagen;
pub(crate) mod decode_pool;
pub(crate) mod file;
pub(crate) mod nexmark;
pub(crate) mod settings;
pub(crate) mod sink;
pub(crate) mod sink_rows;
pub(crate) mod table;
pub(crate) mod tap;

// The connector kit: what a network connector in the daemon needs (options, formats, the row
// decoder, positions, live taps), and the generators the benchmarks share; nothing of the planner.
pub use crate::format::csv::decode_csv_payload;
pub use crate::format::decode::{DecodeColumn, MetaValue, RowDecoder};
pub use crate::format::encode::JsonRowWriter;
pub use crate::format::json::decode_json;
pub use crate::format::Format;
pub use crate::pipeline::splits::MAX_SPLITS;
pub use crate::sql::ddl::{parse_duration_ms, Options};
pub use crate::{connector_options, option_enum};
pub use datagen::Rng;
pub use decode_pool::MAX_DECODE_THREADS;
pub use nexmark::{write_event as write_nexmark_event, NexmarkConfig, Stream as NexmarkStream};
pub use settings::{parse_option_value, sql_only, OptionValue};
pub use sink_rows::{SinkRow, SinkRows};
pub use tap::{SourceRows, TapPoint, TapReceiver, MAX_SUBSCRIBERS as MAX_TAP_SUBSCRIBERS};

pub use crate::ops::OpenedState;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::storage::crypto::Cipher;
use crate::storage::fs::Storage;

/// Lets a source's own threads (a network connection) wake the pipeline's worker when input
/// arrives, so an idle live loop waits on this instead of sleeping out a fixed interval. Waking
/// costs one atomic swap when a wake-up is already pending; it never allocates.
#[derive(Default)]
pub struct Wakeup {
    pending: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Wakeup {
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // Taking the lock orders this after a waiter's check of `pending`: it is either seen
            // there or wakes the waiter from its wait.
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cv.notify_one();
        }
    }

    /// Returns at the next wake-up (at once if one is pending) or after `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.pending.load(Ordering::Acquire) {
            let _ = self.cv.wait_timeout(g, timeout);
        }
        self.pending.store(false, Ordering::Release);
    }
}

/// What one poll of a source produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Rows (or error rows) were decoded.
    Rows,
    /// Nothing new yet (a live source).
    Idle,
    /// The source has ended; nothing more will come.
    End,
}

/// Reads a source's input and decodes it into rows.
pub trait SourceReader: Send {
    /// Decodes up to `max_rows` rows (and any error rows met on the way) into `dec`.
    fn poll(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<Poll>;
    /// Whether the source ends by itself (a file not followed, a datagen with a row count).
    fn bounded(&self) -> bool;
    /// Where reading stands after the last poll, to resume from after a restart (opaque bytes,
    /// kept in the WAL and in checkpoints). Empty when the source cannot resume by itself (then
    /// its input must be redelivered, as an MQTT broker does for unacknowledged messages).
    fn position(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Continues after `position` (as returned by [`SourceReader::position`]); called once before
    /// the first poll.
    fn resume(&mut self, position: &[u8], _dec: &mut RowDecoder) -> Result<()> {
        if position.is_empty() {
            Ok(())
        } else {
            Err(EngineError::State("this source cannot resume from a saved position".into()))
        }
    }
    /// The rows of the last poll were handed on. They are safe once the pipeline's WAL is durable
    /// up to `mark` (see [`SourceReader::durable`]); `None`: the pipeline keeps no durable state,
    /// so they are as safe as they will get. A source that must acknowledge its input (MQTT QoS 1/2,
    /// Kafka offsets) does so only then: nothing is acknowledged before it is durable.
    fn handed_on(&mut self, _mark: Option<u64>) {}
    /// The WAL is durable below `lsn`: input handed on with a mark `<= lsn` may be acknowledged.
    fn durable(&mut self, _lsn: u64) {}
    /// Health of the source's connection, for metrics and logs (`None`: no connection).
    fn connected(&self) -> Option<bool> {
        None
    }
    /// Whether the input can be read again from a saved position (a Kafka topic). Such a source's
    /// input is not copied to the WAL: its position is saved by checkpoints only, and after a crash
    /// it reads again from the last checkpoint's position. It must then hold back anything it
    /// acknowledges until [`SourceReader::checkpointed`].
    fn replayable(&self) -> bool {
        false
    }
    /// A checkpoint holding `position` (from [`SourceReader::position`]) is durable.
    fn checkpointed(&mut self, _position: &[u8]) {}
    /// A source read in independent splits (Kafka partitions), each in event-time order of its
    /// own: the split every row of the last poll came from. The source's watermark is then the
    /// minimum over its splits. Only a replayable source may have splits (the WAL does not record
    /// them).
    fn split(&self) -> Option<u64> {
        None
    }
    /// The splits assigned now, sorted (a split not listed no longer holds the watermark back).
    fn splits(&self) -> &[u64] {
        &[]
    }
    /// The durable state this reader reads for, before [`SourceReader::resume`] and the first
    /// poll (not called without durable state). A reader that names itself to another system
    /// after it (an MQTT client id, under which the broker keeps a session) does so here; the
    /// engine makes the identity durable before the first poll.
    fn bind_state(&mut self, _state: &OpenedState) {}
}

/// How a saved position and a newer logged one combine. Most readers log their whole position,
/// so the newer replaces the older; a reader whose positions are deltas merges them.
pub type FoldPosition = fn(acc: &mut Vec<u8>, logged: &[u8]);

/// The default [`FoldPosition`]: the newer position replaces the older.
pub fn replace_position(acc: &mut Vec<u8>, logged: &[u8]) {
    acc.clear();
    acc.extend_from_slice(logged);
}

/// Where a sink of a provided connector keeps its own durable state (an outbox), when the
/// pipeline has durable state.
#[derive(Clone)]
pub struct SinkStateDir {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub cipher: Arc<Cipher>,
    /// Whose files these are (the pipeline's; each sink's is its child): bound into every file.
    pub owner: crate::storage::header::Owner,
}

/// What a connector is opened as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Source,
    /// A lookup table (`CREATE TABLE`), read whole.
    Table,
    Sink,
}

impl Role {
    /// The DDL word (`source`, `table`, `sink`), as used in messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Table => "table",
            Role::Sink => "sink",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the engine hands a provided connector to open a source or sink.
pub struct ConnectorSpec<'a> {
    /// The source's or sink's name.
    pub name: &'a str,
    pub connector: &'a str,
    pub options: &'a Options,
    /// Source: the metadata keys its columns ask for (`METADATA FROM`), in slot order.
    pub metadata_keys: Vec<String>,
    /// Sink: the output columns.
    pub columns: Vec<String>,
    /// Sink: the Arrow schema of the rows its JSON lines carry (an upsert sink's ends with
    /// `_op`, text); `None` for sources.
    pub schema: Option<arrow::datatypes::SchemaRef>,
    /// Sink: where its outbox goes in a durable pipeline (`None` without durable state).
    pub state: Option<SinkStateDir>,
    /// Source: what to call when input arrives, to wake an idle pipeline at once.
    pub wakeup: Option<Arc<Wakeup>>,
}

/// Delivers a sink's output outside the engine. Output arrives as [`SinkRows`]: each row's payload,
/// encoded by the engine (a JSON object, upsert sinks with an `_op` member), and its values by
/// column. In a durable pipeline `deliver` is called only with output whose checkpoint is durable,
/// with `end`, the number of payload bytes (lines included) ever committed to this sink through
/// the end of `rows`: after a crash the last commit is delivered again with the same `end`, so a
/// writer that remembers the `end` it made durable can skip it (exactly-once hand-over).
pub trait SinkWriter: Send {
    /// The durable state this writer delivers for, before [`SinkWriter::start`] (not called
    /// without durable state). A writer that names itself to another system (a Kafka
    /// transactional id) takes the name from its identity, so that the name follows the state,
    /// not the host.
    fn bind_state(&mut self, _state: &OpenedState) {}
    /// The checkpoint being restored came from a backup, taken where its output through byte
    /// `end` was committed (that device may have delivered more before it was replaced). Called
    /// before [`SinkWriter::start`].
    fn restoring_a_backup(&mut self, _end: u64) {}
    /// Opens what the writer keeps (its outbox); called once, after the pipeline holds its state
    /// dir's lock and before anything is delivered.
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    /// Takes `rows`. An error stops the pipeline (fail-stop).
    fn deliver(&mut self, rows: &SinkRows<'_>, end: u64) -> Result<()>;
    /// The pipeline is stopping: flush what can be flushed within the writer's own limits.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Connectors provided from outside the engine (the daemon's MQTT, Kafka).
pub trait ConnectorProvider: Send + Sync {
    /// The connectors provided as `role` (sources and sinks; tables are the engine's own).
    fn connectors(&self, role: Role) -> Vec<&'static str>;
    /// The options a provided connector takes (besides the common ones), or `None` if unknown.
    fn options(&self, role: Role, connector: &str) -> Option<&'static [&'static str]>;
    /// Checks a source's or sink's options and metadata keys at plan time (`eddyd check`), without
    /// connecting anywhere.
    fn validate(&self, role: Role, spec: &ConnectorSpec<'_>) -> Result<()>;
    /// Makes a source's reader (it connects on its first poll, not here).
    fn open_source(&self, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SourceReader>>;
    /// How this connector's logged positions combine.
    fn fold_position(&self, _connector: &str) -> FoldPosition {
        replace_position
    }
    /// The one format a provided sink writes (its `format` option, checked by the engine).
    fn sink_format(&self, _connector: &str) -> SinkFormat {
        SinkFormat::Json
    }
    fn open_sink(&self, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>>;
}

/// Reads a little-endian u64 at `at` of a saved position.
pub(crate) fn position_u64(pos: &[u8], at: usize) -> Result<u64> {
    pos.get(at..at + 8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
        .ok_or_else(|| EngineError::State("a saved source position is cut short".into()))
}

crate::connector_options! {
    /// Options every source takes, whatever its connector (besides `connector` itself).
    pub(crate) struct SourceCommonOptions {
        format: Format = "format",
        on_error: crate::pipeline::OnError = "on_error",
        idle_timeout: std::time::Duration = "watermark.idle_timeout",
        batch_rows: usize = "batch_rows",
    }
}

crate::connector_options! {
    /// Options every sink takes (besides `connector`). `format` is text: each sink writes one
    /// format (see [`SinkFormat`]), checked against it by `check_sink_format`.
    pub(crate) struct SinkCommonOptions {
        format: String = "format",
        kind: sink::SinkMode = "type",
        primary_key: String = "primary_key",
    }
}

/// The options connector `connector` takes as a `role`: `connector`, the role's common options
/// and the connector's own, each list derived from the options struct that reads them.
pub fn valid_options(
    role: Role,
    connector: &str,
    provider: Option<&dyn ConnectorProvider>,
) -> Option<Vec<&'static str>> {
    let provided =
        |common: &'static [&'static str]| provider.and_then(|p| p.options(role, connector)).map(|own| (common, own));
    let (common, own): (&[&str], &[&str]) = match (role, connector) {
        (Role::Source, "file") => (SourceCommonOptions::KEYS, file::FileSourceOptions::KEYS),
        (Role::Source, "datagen") => (SourceCommonOptions::KEYS, datagen::DatagenOptions::KEYS),
        (Role::Source, "nexmark") => (SourceCommonOptions::KEYS, nexmark::NexmarkOptions::KEYS),
        (Role::Table, "file") => (&[], table::FileTableOptions::KEYS),
        (Role::Table, _) => return None,
        (Role::Sink, "file") => (SinkCommonOptions::KEYS, sink::FileSinkOptions::KEYS),
        (Role::Sink, "console") => (SinkCommonOptions::KEYS, &[]),
        (Role::Source, _) => provided(SourceCommonOptions::KEYS)?,
        (Role::Sink, _) => provided(SinkCommonOptions::KEYS)?,
    };
    let mut v: Vec<&str> =
        std::iter::once("connector").chain(common.iter().copied()).chain(own.iter().copied()).collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// Connectors known for each role, for messages.
pub fn known_connectors(role: Role, provider: Option<&dyn ConnectorProvider>) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = match role {
        Role::Source => vec!["file", "datagen", "nexmark"],
        Role::Table => return vec!["file"],
        Role::Sink => vec!["file", "console"],
    };
    if let Some(p) = provider {
        v.extend(p.connectors(role));
    }
    v
}

/// Checks `options` against the connector's list; returns the connector name.
pub fn check_options(
    role: Role,
    name: &str,
    options: &Options,
    provider: Option<&dyn ConnectorProvider>,
) -> Result<String> {
    let ctx = format!("{role} '{name}'");
    let known = || known_connectors(role, provider).join(", ");
    let Some(connector) = options.get("connector") else {
        return Err(EngineError::options(ctx, format!("missing option 'connector' (one of: {})", known())));
    };
    let connector = connector.to_ascii_lowercase();
    let Some(valid) = valid_options(role, &connector, provider) else {
        return Err(EngineError::options(
            ctx,
            format!("unknown connector '{connector}' (known {role} connectors: {})", known()),
        ));
    };
    for (k, _, pos) in &options.entries {
        // An entry `prefix.*` takes every option under the prefix (Kafka's `properties.*`).
        let known = valid.iter().any(|v| *v == k || v.strip_suffix('*').is_some_and(|p| k.starts_with(p)));
        if !known {
            return Err(EngineError::options(
                format!("{ctx} ({pos})"),
                format!("unknown option '{k}' for connector '{connector}'; valid options: {}", valid.join(", ")),
            ));
        }
    }
    Ok(connector)
}

/// The `format` option (`default` when absent).
pub fn format_option(ctx: &str, options: &Options, default: Format) -> Result<Format> {
    Ok(parse_option_value(ctx, "format", options.get("format").map(str::to_string))?.unwrap_or(default))
}

/// What a sink writes; each sink writes one of these, and its `format` option may only name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// One JSON object per row.
    Json,
    /// Parquet files (the hub).
    Parquet,
}

impl SinkFormat {
    /// The `format` option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            SinkFormat::Json => "json",
            SinkFormat::Parquet => "parquet",
        }
    }
}

/// Checks a sink's `format` option (`given`, absent = the default) against the one format
/// connector `connector` writes. The engine calls it once for every sink; connectors never read it.
pub(crate) fn check_sink_format(ctx: &str, given: Option<&str>, connector: &str, writes: SinkFormat) -> Result<()> {
    match given {
        Some(f) if !f.trim().eq_ignore_ascii_case(writes.name()) => Err(EngineError::options(
            ctx,
            format!("option 'format' '{f}': {connector} sinks write format '{}' (the default)", writes.name()),
        )),
        _ => Ok(()),
    }
}

impl OptionValue for Format {
    fn parse_option(text: &str) -> std::result::Result<Self, String> {
        Format::parse(text).ok_or_else(|| format!("must be one of {}, not '{text}'", Format::NAMES.join(", ")))
    }
}

/// Format `raw` decodes the whole payload into one column: the relation must have exactly one
/// column besides its METADATA ones.
pub fn check_raw_payload(ctx: &str, format: Format, payload_columns: usize) -> Result<()> {
    if format == Format::Raw && payload_columns != 1 {
        return Err(EngineError::options(
            ctx,
            "format 'raw' needs exactly one payload column (payload BYTEA or VARCHAR) besides METADATA columns",
        ));
    }
    Ok(())
}

/// Decodes one message's payload in `format` into `dec` (rows, or error rows for what does not
/// decode); returns the rows it added.
pub fn decode_payload(dec: &mut RowDecoder, format: Format, payload: &[u8], received_at: i64) -> usize {
    match format {
        Format::Json => crate::format::json::decode_json(dec, payload, received_at),
        Format::Csv => crate::format::csv::decode_csv_payload(dec, payload, received_at),
        Format::Raw => crate::format::csv::decode_raw(dec, payload, received_at) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::Wakeup;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_wakeup_ends_the_wait_and_a_pending_one_is_not_lost() {
        let w = Arc::new(Wakeup::default());
        // Pending before the wait: returns at once.
        w.wake();
        let t = Instant::now();
        w.wait(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10));
        // From another thread while waiting.
        let w2 = w.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.wake();
        });
        let t = Instant::now();
        w.wait(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10));
        h.join().unwrap();
        // Nothing pending: the timeout ends it.
        w.wait(Duration::from_millis(1));
    }
}
