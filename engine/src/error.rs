//! The engine's error type. Every error says where it comes from: a SQL error names the statement,
//! line and column; an option error lists the valid options; an I/O error names the file.

use std::path::PathBuf;

use datafusion_common::DataFusionError;

/// Position of a problem in a pipeline file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlPos {
    pub statement: usize,
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for SqlPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "statement {} (line {}, column {})", self.statement, self.line, self.column)
    }
}

/// Each message carries its cause's text and no variant links that cause as `source()`: a chain
/// printed whole (`{:#}` at the binary's edge) would otherwise repeat it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SQL text is wrong: syntax, unknown names, unsupported constructs.
    #[error("{pos}: {message}")]
    Sql { pos: SqlPos, message: String },
    /// A connector or format option is wrong.
    #[error("{context}: {message}")]
    Options { context: String, message: String },
    /// A connector needs a setting that neither the SQL nor the defaults the application gave
    /// it hold (a broker's address, say): the application may say where such defaults live.
    #[error("{context}: {message}")]
    Unconfigured { context: String, message: String },
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// A source with `on_error = 'fail'` met a row it could not decode.
    #[error("source '{source_name}': bad row under on_error = 'fail': {message} (row: {raw})")]
    BadRow { source_name: String, message: String, raw: String },
    /// A reference table's file could not be loaded.
    #[error("table '{name}' ({path}): {message}")]
    Table { name: String, path: String, message: String },
    /// A configured limit was reached; the pipeline stops rather than dropping data.
    #[error("limit reached: {0}")]
    Limit(String),
    /// Evaluating a query failed on its input (e.g. an integer division by zero): `at` names the
    /// statement and operator.
    #[error("{at}: {message}")]
    Eval { at: String, message: String },
    /// An invariant of the engine broke: a bug, reported instead of a panic.
    #[error("internal error: {0}")]
    Internal(String),
    /// The WAL, a checkpoint or the key: storage failed or found damage.
    #[error("state: {0}")]
    Storage(crate::storage::StorageError),
    /// State written by another plan, or an operator whose state cannot be checkpointed.
    #[error("{0}")]
    State(String),
    /// The checkpoint was written by a different query (not just other connector options).
    #[error("{dir}: the state was written by a different version of this pipeline; to start over, move the state directory away")]
    PlanChanged { dir: String },
    #[error("{dir}: the state was written by {written} shard(s) and this run has {now}; keyed state is not moved between shards, so run with shards = {written}, or move the state directory away to start over")]
    ShardCount { dir: String, written: usize, now: usize },
    #[error("{0}")]
    DataFusion(DataFusionError),
    #[error("{0}")]
    Arrow(arrow::error::ArrowError),
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        EngineError::Io { path: path.into(), error }
    }
    pub fn options(context: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Options { context: context.into(), message: message.into() }
    }
    pub fn unconfigured(context: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Unconfigured { context: context.into(), message: message.into() }
    }
}

impl From<crate::storage::StorageError> for EngineError {
    fn from(e: crate::storage::StorageError) -> Self {
        EngineError::Storage(e)
    }
}

impl From<DataFusionError> for EngineError {
    fn from(e: DataFusionError) -> Self {
        EngineError::DataFusion(e)
    }
}

impl From<arrow::error::ArrowError> for EngineError {
    fn from(e: arrow::error::ArrowError) -> Self {
        EngineError::Arrow(e)
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
