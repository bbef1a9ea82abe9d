//! Eddy's streaming SQL engine.
//!
//! A pipeline file is parsed (`sql::ddl`), each query planned by DataFusion's SQL front end
//! (`sql`) and turned into a graph of streaming operators (`ops`) that move Arrow batches and
//! watermarks. The engine does no network I/O and knows nothing of MQTT, Kafka, gRPC or systemd.
//!
//! The public API is this façade, nothing more: the [`Pipeline`] and its configuration at the
//! top; the connector kit network connectors are built on ([`connector`]); ad-hoc queries over
//! live views ([`query`]); durable storage for the tools that inspect, back up and restore state
//! ([`storage`]); and event-time helpers ([`time`]). Every other module is private, so operators,
//! planner and formats can change without touching the daemon.

pub mod connector;
mod error;
mod format;
mod ops;
mod pipeline;
mod plan;
pub mod query;
mod sql;
pub mod storage;
pub mod time;
mod types;

pub use error::{EngineError, Result};
pub use ops::Limits;
pub use pipeline::{
    DurableConfig, LiveControl, Mode, Observation, Pipeline, PipelineConfig, SourceObservation, Summary,
};
/// The Arrow type of event-time columns (milliseconds, no zone).
pub use types::TS_TYPE;
