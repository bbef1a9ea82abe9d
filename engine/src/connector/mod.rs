//! Connectors the engine itself provides: files (read to the end or tailed), a deterministic data
//! generator, and file and console sinks. Network connectors (MQTT, Kafka) live in the daemon and
//! plug in through [`SourceReader`]. Every connector validates its options and names the valid ones.

pub mod datagen;
pub mod file;
pub mod sink;
pub mod table;

use crate::error::{EngineError, Result};
use crate::format::decode::RowDecoder;
use crate::sql::ddl::Options;

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

/// Options every source accepts, whatever its connector.
pub const SOURCE_COMMON: &[&str] = &["connector", "format", "on_error", "watermark.idle_timeout", "batch_rows"];
/// Options every sink accepts.
pub const SINK_COMMON: &[&str] = &["connector", "format", "type", "primary_key"];

/// The options connector `connector` takes as a `what` (source, table or sink).
pub fn valid_options(what: &str, connector: &str) -> Option<Vec<&'static str>> {
    let (common, own): (&[&str], &[&str]) = match (what, connector) {
        ("source", "file") => (SOURCE_COMMON, file::SOURCE_OPTIONS),
        ("source", "datagen") => (SOURCE_COMMON, datagen::OPTIONS),
        ("table", "file") => (&["connector", "format"], &["path", "reload_interval", "max_line_bytes"]),
        ("sink", "file") => (SINK_COMMON, &["path"]),
        ("sink", "console") => (SINK_COMMON, &[]),
        _ => return None,
    };
    let mut v: Vec<&str> = common.iter().chain(own).copied().collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// Connectors known for each kind, for messages.
pub fn known_connectors(what: &str) -> &'static [&'static str] {
    match what {
        "source" => &["file", "datagen"],
        "table" => &["file"],
        _ => &["file", "console"],
    }
}

/// Checks `options` against the connector's list; returns the connector name.
pub fn check_options(what: &str, name: &str, options: &Options) -> Result<String> {
    let ctx = format!("{what} '{name}'");
    let Some(connector) = options.get("connector") else {
        return Err(EngineError::options(ctx, format!("missing option 'connector' (one of: {})", known_connectors(what).join(", "))));
    };
    let connector = connector.to_ascii_lowercase();
    let Some(valid) = valid_options(what, &connector) else {
        return Err(EngineError::options(
            ctx,
            format!("unknown connector '{connector}' (known {what} connectors: {})", known_connectors(what).join(", ")),
        ));
    };
    for (k, _, pos) in &options.entries {
        if !valid.contains(&k.as_str()) {
            return Err(EngineError::options(
                format!("{ctx} ({pos})"),
                format!("unknown option '{k}' for connector '{connector}'; valid options: {}", valid.join(", ")),
            ));
        }
    }
    Ok(connector)
}

/// A boolean option: 'true' / 'false'.
pub fn bool_option(ctx: &str, options: &Options, key: &str, default: bool) -> Result<bool> {
    match options.get(key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(EngineError::options(ctx, format!("option '{key}' must be 'true' or 'false', not '{v}'"))),
    }
}

/// A number option.
pub fn num_option<T: std::str::FromStr>(ctx: &str, options: &Options, key: &str) -> Result<Option<T>> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|_| EngineError::options(ctx, format!("option '{key}' must be a number, not '{v}'"))),
    }
}

/// A duration option: '10s', '500 ms', '1 minute'.
pub fn duration_option(ctx: &str, options: &Options, key: &str) -> Result<Option<i64>> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => crate::sql::ddl::parse_duration_ms(v)
            .map(Some)
            .map_err(|e| EngineError::options(ctx, format!("option '{key}': {e}"))),
    }
}
