//! The Kafka connector (librdkafka through rdkafka): a source that reads partitions it assigns
//! itself from the checkpoint, and a sink that writes one transaction per checkpoint. Owns the
//! Kafka options and the client setup they turn into; the network work is in [`source`] and
//! [`sink`]. librdkafka is the one C library eddyd links next to ring/rustls: no Rust client
//! implements Kafka transactions, and it is built from the crate's bundled sources (no system
//! library), with TLS/SASL only under the `kafka-tls` feature.

pub mod client;
pub mod position;
pub mod sink;
pub mod source;

use std::time::Duration;

use super::template::{NameRules, Template};
use super::Provider;
use crate::config::KafkaDefaults;
use crate::secret::Secret;
use eddy_engine::connector::{
    self, connector_options, option_enum, ConnectorSpec, Format, Role, SinkWriter, SourceReader,
};
use eddy_engine::{EngineError, Result};

/// The `connector` option's value, and the prefix of this connector's metrics (`eddy_kafka_*`).
pub const CONNECTOR: &str = "kafka";

connector_options! {
    /// The brokers, for every Kafka source and sink.
    struct ClientOptions {
        bootstrap_servers: String = "bootstrap.servers",
    }
}

/// Every Kafka source and sink also takes librdkafka properties, passed through.
const PROPERTIES: &[&str] = &["properties.*"];

connector_options! {
    /// Which topics a source reads: from the SQL only, never a `[kafka]` default.
    struct SourceTopicOptions {
        topic: String = "topic",
        topic_pattern: String = "topic-pattern",
    }
}

connector_options! {
    /// What a Kafka source takes besides its brokers and topics.
    struct SourceOptions {
        group_id: String = "group.id",
        startup_mode: StartupMode = "startup.mode",
        startup_timestamp: i64 = "startup.timestamp",
        isolation_level: IsolationLevel = "isolation.level",
        discovery_interval: Duration = "partition.discovery.interval",
        max_partitions: usize = "max_partitions",
    }
}

connector_options! {
    /// Where a sink writes: from the SQL only, never a `[kafka]` default.
    struct SinkTopicOptions {
        topic: String = "topic",
    }
}

connector_options! {
    /// What a Kafka sink takes besides its brokers and topic.
    struct SinkOptions {
        delivery: Delivery = "delivery",
        key: String = "key",
        headers: String = "headers",
        partitioner: Partitioner = "partitioner",
        transactional_id: String = "transactional.id",
        transaction_timeout: Duration = "transaction.timeout",
        progress_topic: String = "progress.topic",
    }
}

/// The options a Kafka source or sink takes (besides the engine's common ones).
pub fn options(role: Role) -> Option<&'static [&'static str]> {
    static LISTS: super::OptionLists = super::OptionLists::new();
    LISTS.get(
        role,
        &[ClientOptions::KEYS, PROPERTIES, SourceTopicOptions::KEYS, SourceOptions::KEYS],
        &[ClientOptions::KEYS, PROPERTIES, SinkTopicOptions::KEYS, SinkOptions::KEYS],
    )
}

/// Options `[kafka]` in the config may give defaults for: all but the topics.
pub fn default_options() -> Vec<&'static str> {
    let lists = [ClientOptions::KEYS, PROPERTIES, SourceOptions::KEYS, SinkOptions::KEYS];
    let mut v: Vec<_> = lists.concat();
    v.sort();
    v
}

/// Checks the `[kafka]` defaults at config load (after `${ENV}` expansion): every key is an
/// option a default may be given for, and every value parses as that option does in SQL.
pub fn check_defaults(d: &KafkaDefaults) -> Result<()> {
    const CTX: &str = "[kafka]";
    if let Some(k) = d.0.keys().find(|k| !is_default_option(k)) {
        return Err(opt_err(
            CTX,
            format!("unknown option '{k}' (valid: {}, and properties.* for librdkafka)", default_options().join(", ")),
        ));
    }
    let value = |k: &str| Ok(d.get(k));
    ClientOptions::read(CTX, value)?;
    SourceOptions::read(CTX, value)?;
    SinkOptions::read(CTX, value)?;
    Ok(())
}

pub fn is_default_option(key: &str) -> bool {
    key.starts_with("properties.") || default_options().contains(&key)
}

fn opt_err(ctx: &str, msg: impl Into<String>) -> EngineError {
    EngineError::options(ctx, msg)
}

/// An option from the SQL, else from `[kafka]`; `${ENV}` expanded.
fn get(p: &Provider, ctx: &str, spec: &ConnectorSpec<'_>, key: &str) -> Result<Option<String>> {
    let v = spec.options.get(key).map(str::to_string).or_else(|| p.kafka.get(key));
    v.map(|v| crate::config::expand_env(&v).map_err(|e| opt_err(ctx, format!("option '{key}': {e}")))).transpose()
}

/// What a Kafka client is given: the brokers and librdkafka properties (values kept secret).
#[derive(Clone)]
pub struct ClientProps {
    pub bootstrap: String,
    pub properties: Vec<(String, Secret)>,
}

impl std::fmt::Debug for ClientProps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.properties.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ClientProps").field("bootstrap", &self.bootstrap).field("properties", &keys).finish()
    }
}

/// Properties eddyd sets itself: a `properties.*` option may not change them.
const OWN_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "transaction.timeout.ms",
];

fn client_props(p: &Provider, ctx: &str, spec: &ConnectorSpec<'_>) -> Result<ClientProps> {
    let o = ClientOptions::read(ctx, |k| get(p, ctx, spec, k))?;
    let bootstrap = o.bootstrap_servers.ok_or_else(|| {
        EngineError::unconfigured(
            ctx,
            "connector 'kafka' needs option 'bootstrap.servers' (host:port[,host:port], or under [kafka])",
        )
    })?;
    let mut properties: Vec<(String, Secret)> = Vec::new();
    let from_sql = spec.options.entries.iter().map(|(k, v, _)| (k.clone(), v.to_string()));
    let from_config = p.kafka.properties().map(|(k, v)| (format!("properties.{k}"), v));
    for (k, v) in from_sql.chain(from_config) {
        let Some(prop) = k.strip_prefix("properties.") else { continue };
        if properties.iter().any(|(p, _)| p == prop) {
            continue; // the SQL's value came first and wins
        }
        if OWN_PROPERTIES.contains(&prop) {
            return Err(opt_err(
                ctx,
                format!("option '{k}': eddyd sets '{prop}' itself (use the connector's own option instead)"),
            ));
        }
        let v = crate::config::expand_env(&v).map_err(|e| opt_err(ctx, format!("option '{k}': {e}")))?;
        properties.push((prop.to_string(), Secret::new(v)));
    }
    Ok(ClientProps { bootstrap, properties })
}

/// Which topics a source reads.
#[derive(Debug, Clone)]
pub enum Topics {
    List(Vec<String>),
    Pattern(regex::Regex),
}

impl Topics {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Topics::List(l) => l.iter().any(|t| t == topic),
            Topics::Pattern(r) => r.is_match(topic),
        }
    }
}

option_enum! {
    /// The `startup.mode` option (Flink's names, with their `-offset` spellings).
    pub enum StartupMode {
        GroupOffsets = "group-offsets",
        Earliest = "earliest" | "earliest-offset",
        Latest = "latest" | "latest-offset",
        Timestamp = "timestamp",
    }
}

option_enum! {
    /// The `isolation.level` option: whether a source sees records of aborted transactions.
    pub enum IsolationLevel {
        ReadCommitted = "read_committed",
        ReadUncommitted = "read_uncommitted",
    }
}

/// Where a source starts when its checkpoint has no position for a partition it finds at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    Earliest,
    Latest,
    /// The group's committed offsets; earliest for a partition without one.
    GroupOffsets,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub ctx: String,
    pub client: ClientProps,
    pub topics: Topics,
    pub group_id: String,
    pub startup: Startup,
    pub read_committed: bool,
    pub format: Format,
    pub discovery_interval: Duration,
    pub max_partitions: usize,
}

/// Metadata a Kafka source provides (`METADATA FROM`).
pub const METADATA_KEYS: &[&str] = &["topic", "partition", "offset", "timestamp", "key", "headers"];

/// Kafka topic names: `[a-zA-Z0-9._-]`, at most 249 characters.
fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_topic(t: &str) -> std::result::Result<(), String> {
    if t.is_empty() || t.len() > 249 || !t.chars().all(is_topic_char) || t == "." || t == ".." {
        return Err(format!("'{t}' is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"));
    }
    Ok(())
}

/// What a Kafka topic made from a template may contain.
pub const TOPIC_RULES: NameRules = NameRules {
    forbidden_in_values: |c| !is_topic_char(c),
    check_literal: |t| {
        if t.chars().all(is_topic_char) {
            Ok(())
        } else {
            Err("Kafka topic names are made of a-z A-Z 0-9 . _ -".into())
        }
    },
};

pub(super) fn source_settings(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<SourceSettings> {
    let ctx = format!("source '{}'", spec.name);
    let client = client_props(p, &ctx, spec)?;
    let t = SourceTopicOptions::read(&ctx, connector::sql_only(spec.options))?;
    let o = SourceOptions::read(&ctx, |k| get(p, &ctx, spec, k))?;
    let topics = match (t.topic, t.topic_pattern) {
        (Some(_), Some(_)) => return Err(opt_err(&ctx, "give either 'topic' or 'topic-pattern', not both")),
        (None, None) => {
            return Err(opt_err(&ctx, "connector 'kafka' needs option 'topic' (comma-separated) or 'topic-pattern'"))
        }
        (Some(list), None) => {
            let l: Vec<String> = list.split(',').map(|t| t.trim().to_string()).collect();
            for t in &l {
                check_topic(t).map_err(|m| opt_err(&ctx, m))?;
            }
            Topics::List(l)
        }
        (None, Some(pat)) => Topics::Pattern(
            regex::Regex::new(&format!("^(?:{pat})$"))
                .map_err(|e| opt_err(&ctx, format!("option 'topic-pattern': {e}")))?,
        ),
    };
    let group_id = o.group_id.unwrap_or_else(|| format!("eddy-{}-{}", p.pipeline, spec.name));
    let startup = match o.startup_mode.unwrap_or(StartupMode::GroupOffsets) {
        StartupMode::GroupOffsets => Startup::GroupOffsets,
        StartupMode::Earliest => Startup::Earliest,
        StartupMode::Latest => Startup::Latest,
        StartupMode::Timestamp => Startup::Timestamp(o.startup_timestamp.ok_or_else(|| {
            opt_err(&ctx, "startup.mode = 'timestamp' needs 'startup.timestamp' (milliseconds since the epoch)")
        })?),
    };
    if !matches!(startup, Startup::Timestamp(_)) && spec.options.get("startup.timestamp").is_some() {
        return Err(opt_err(&ctx, "option 'startup.timestamp' needs startup.mode = 'timestamp'"));
    }
    let read_committed = o.isolation_level.unwrap_or(IsolationLevel::ReadCommitted) == IsolationLevel::ReadCommitted;
    let format = connector::format_option(&ctx, spec.options, Format::Json)?;
    for k in &spec.metadata_keys {
        if !METADATA_KEYS.contains(&k.as_str()) {
            return Err(opt_err(
                &ctx,
                format!("METADATA FROM '{k}': a Kafka source provides {}", METADATA_KEYS.join(", ")),
            ));
        }
    }
    connector::check_raw_payload(&ctx, format, spec.columns.len() - spec.metadata_keys.len())?;
    Ok(SourceSettings {
        client,
        topics,
        group_id,
        startup,
        read_committed,
        format,
        discovery_interval: o.discovery_interval.unwrap_or(Duration::from_secs(30)).max(Duration::from_millis(100)),
        max_partitions: o.max_partitions.unwrap_or(4096).clamp(1, connector::MAX_SPLITS),
        ctx,
    })
}

option_enum! {
    /// How a sink hands its output to Kafka (`delivery`).
    pub enum Delivery {
        /// One transaction per checkpoint; a re-delivered checkpoint is recognised and skipped.
        ExactlyOnce = "exactly-once" | "exactly_once",
        /// Idempotent produce, flushed per delivery; after a crash the last checkpoint's output
        /// may be written again.
        AtLeastOnce = "at-least-once" | "at_least_once",
    }
}

option_enum! {
    /// The `partitioner` option: librdkafka's partitioners, by librdkafka's names.
    pub enum Partitioner {
        Murmur2Random = "murmur2_random",
        Murmur2 = "murmur2",
        ConsistentRandom = "consistent_random",
        Consistent = "consistent",
        Random = "random",
        Fnv1a = "fnv1a",
        Fnv1aRandom = "fnv1a_random",
    }
}

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub ctx: String,
    pub client: ClientProps,
    pub topic: Template,
    pub delivery: Delivery,
    /// (column name, column), in the order of the `key` option.
    pub key: Vec<(String, usize)>,
    /// (header name, column)
    pub headers: Vec<(String, usize)>,
    pub partitioner: Option<Partitioner>,
    pub transactional_id: TransactionalId,
    pub transaction_timeout: Duration,
    /// The topic whose partition 0 holds the exactly-once progress marker.
    pub progress_topic: Option<String>,
}

/// The exactly-once sink's `transactional.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionalId {
    /// The `transactional.id` option.
    Given(String),
    /// The default: `<base>.<state>`, the state's identity in hex (16 digits), so that the id
    /// follows the pipeline's state: the same across restarts, a new host name and a restore from
    /// a backup (which fences the replaced device), another for every other state — gateways
    /// that share a host name or a fleet's pipeline never fence each other.
    PerState { base: String },
}

impl TransactionalId {
    /// The id for the state `identity` (`None`: not bound to a state).
    pub fn for_state(&self, identity: Option<&[u8; 16]>) -> Option<String> {
        match (self, identity) {
            (TransactionalId::Given(id), _) => Some(id.clone()),
            (TransactionalId::PerState { base }, Some(identity)) => {
                Some(format!("{base}.{}", crate::connectors::state_tag(identity)))
            }
            (TransactionalId::PerState { .. }, None) => None,
        }
    }
}

/// `name=column` items (or `column`, named after itself), each with the column's position.
fn columns_option(ctx: &str, v: &str, columns: &[String], key: &str) -> Result<Vec<(String, usize)>> {
    v.split(',')
        .map(|item| {
            let item = item.trim();
            let (name, col) = item.split_once('=').map(|(n, c)| (n.trim(), c.trim())).unwrap_or((item, item));
            let at = columns.iter().position(|c| c == col).ok_or_else(|| {
                opt_err(ctx, format!("option '{key}': '{col}' is not an output column ({})", columns.join(", ")))
            })?;
            Ok((name.to_string(), at))
        })
        .collect()
}

pub(super) fn sink_settings(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<SinkSettings> {
    let ctx = format!("sink '{}'", spec.name);
    let client = client_props(p, &ctx, spec)?;
    let o = SinkOptions::read(&ctx, |k| get(p, &ctx, spec, k))?;
    let topic = SinkTopicOptions::read(&ctx, connector::sql_only(spec.options))?.topic.ok_or_else(|| {
        opt_err(&ctx, "connector 'kafka' needs option 'topic' (a name or a template such as 'alerts.{site}')")
    })?;
    let topic = Template::parse(&topic, &spec.columns, TOPIC_RULES).map_err(|m| opt_err(&ctx, m))?;
    let delivery = match o.delivery {
        Some(d) => d,
        None if p.durable => Delivery::ExactlyOnce,
        None => Delivery::AtLeastOnce,
    };
    let key = match &o.key {
        None => vec![],
        Some(v) => {
            let cols = columns_option(&ctx, v, &spec.columns, "key")?;
            cols.into_iter().map(|(_, at)| (spec.columns[at].clone(), at)).collect()
        }
    };
    let headers = match &o.headers {
        None => vec![],
        Some(v) => columns_option(&ctx, v, &spec.columns, "headers")?,
    };
    let partitioner = o.partitioner;
    let transactional_id = match o.transactional_id {
        Some(id) => TransactionalId::Given(id),
        None => TransactionalId::PerState { base: format!("eddy.{}.{}", p.pipeline, spec.name) },
    };
    let transaction_timeout = o.transaction_timeout.unwrap_or(Duration::from_secs(60));
    let progress_topic = match (o.progress_topic, topic.constant()) {
        (Some(t), _) => {
            check_topic(&t).map_err(|m| opt_err(&ctx, m))?;
            Some(t)
        }
        (None, constant) => constant,
    };
    if delivery == Delivery::ExactlyOnce && progress_topic.is_none() {
        return Err(opt_err(
            &ctx,
            "exactly-once delivery to a topic template needs 'progress.topic': an existing topic under whose \
             partition 0 the sink's group records which checkpoint it committed",
        ));
    }
    Ok(SinkSettings {
        client,
        topic,
        delivery,
        key,
        headers,
        partitioner,
        transactional_id,
        transaction_timeout,
        progress_topic,
        ctx,
    })
}

pub(super) fn open_source(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SourceReader>> {
    let s = source_settings(p, spec)?;
    let gauges = p.metrics.connector(&p.pipeline, Role::Source, CONNECTOR, spec.name);
    Ok(Box::new(source::KafkaSource::new(s, spec.metadata_keys.clone(), gauges, spec.wakeup.clone(), p.durable)))
}

pub(super) fn open_sink(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
    let s = sink_settings(p, spec)?;
    if s.delivery == Delivery::ExactlyOnce && !p.durable {
        return Err(opt_err(
            &s.ctx,
            "delivery = 'exactly-once' needs durable state (a state_dir in the config): without it a restart \
             cannot tell what was written; use delivery = 'at-least-once'",
        ));
    }
    let gauges = p.metrics.connector(&p.pipeline, Role::Sink, CONNECTOR, spec.name);
    Ok(Box::new(sink::KafkaSink::new(s, p.stopping.clone(), gauges)))
}
