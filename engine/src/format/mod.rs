//! Data formats: decoding payloads into Arrow rows (JSON, CSV, raw) and encoding rows as JSON.
//! Owns no I/O: callers hand in bytes and take batches.

pub mod columns;
pub mod csv;
pub mod decode;
pub mod encode;
mod float_text;
pub mod json;
mod json_flat;
pub mod nested;

/// A payload format named by `format = '...'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Raw,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["json", "csv", "raw"];

    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "raw" => Some(Format::Raw),
            _ => None,
        }
    }
}
