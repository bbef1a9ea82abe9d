//! Eddy's streaming SQL engine.
//!
//! A pipeline file is parsed ([`sql::ddl`]), each query planned by DataFusion's SQL front end
//! ([`sql`]) and turned into a graph of streaming operators ([`ops`]) that move Arrow batches and
//! watermarks. Connectors that read and write files, generate data or print to a terminal live in
//! [`connector`]. The engine does no network I/O and knows nothing of MQTT, Kafka, gRPC or systemd.

pub mod connector;
pub mod error;
pub mod format;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod query;
pub mod sql;
pub mod storage;
pub mod time;
pub mod types;

pub use error::{EngineError, Result};
