//! The daemon's network connectors (MQTT, Kafka, the fleet's hub), handed to the engine through one
//! [`ConnectorProvider`]. What every connector shares lives here: the reconnect [`backoff`], the
//! durable [`outbox`] and the sink name [`template`]s. Each connector owns its protocol; none
//! reaches into another's module, and none parses options the engine's kit already parses
//! (formats, numbers, durations).

pub mod backoff;
pub mod hub;
pub mod kafka;
pub mod mqtt;
pub mod outbox;
pub mod template;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::{HubSection, KafkaDefaults, MqttDefaults};
use crate::metrics::Registry;
use eddy_engine::connector::{
    self, ConnectorProvider, ConnectorSpec, FoldPosition, Role, SinkFormat, SinkWriter, SourceReader,
};
use eddy_engine::{EngineError, Result};

/// How many characters [`state_tag`] makes.
pub const STATE_TAG_LEN: usize = 16;

/// What names a connector gives itself after the durable state it serves (a Kafka
/// transactional id, an MQTT client id) end with: the state's identity, 16 hex digits of it.
pub fn state_tag(identity: &[u8; 16]) -> String {
    identity[..STATE_TAG_LEN / 2].iter().map(|b| format!("{b:02x}")).collect()
}

/// The daemon's provided connectors, for one pipeline.
pub struct Provider {
    pub pipeline: String,
    pub mqtt: MqttDefaults,
    pub kafka: KafkaDefaults,
    pub hub: HubSection,
    pub metrics: Arc<Registry>,
    /// Set when eddyd is shutting down (a blocked sink then stops waiting).
    pub stopping: Arc<AtomicBool>,
    /// Whether the pipeline runs with durable state (exactly-once input).
    pub durable: bool,
}

impl Provider {
    /// A provider that only checks options (replay and `eddyd check` of a single file).
    pub fn offline(pipeline: &str) -> Provider {
        Provider {
            pipeline: pipeline.to_string(),
            mqtt: Default::default(),
            kafka: Default::default(),
            hub: Default::default(),
            metrics: Default::default(),
            stopping: Default::default(),
            durable: false,
        }
    }
}

/// Installs rustls' ring provider once (rumqttc is built without a default one).
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A connector's option lists for sources and sinks, each joined once from its options structs'
/// `KEYS`.
pub(crate) struct OptionLists {
    source: std::sync::OnceLock<Vec<&'static str>>,
    sink: std::sync::OnceLock<Vec<&'static str>>,
}

impl OptionLists {
    pub(crate) const fn new() -> Self {
        OptionLists { source: std::sync::OnceLock::new(), sink: std::sync::OnceLock::new() }
    }

    pub(crate) fn get(
        &'static self,
        role: Role,
        source: &[&'static [&'static str]],
        sink: &[&'static [&'static str]],
    ) -> Option<&'static [&'static str]> {
        match role {
            Role::Source => Some(self.source.get_or_init(|| source.concat()).as_slice()),
            Role::Sink => Some(self.sink.get_or_init(|| sink.concat()).as_slice()),
            Role::Table => None,
        }
    }
}

const SOURCES: &[&str] = &[mqtt::CONNECTOR, kafka::CONNECTOR];
const SINKS: &[&str] = &[mqtt::CONNECTOR, kafka::CONNECTOR, hub::CONNECTOR];

impl ConnectorProvider for Provider {
    fn connectors(&self, role: Role) -> Vec<&'static str> {
        match role {
            Role::Source => SOURCES.to_vec(),
            Role::Sink => SINKS.to_vec(),
            Role::Table => Vec::new(),
        }
    }

    fn options(&self, role: Role, connector: &str) -> Option<&'static [&'static str]> {
        match connector {
            "mqtt" => mqtt::options(role),
            "kafka" => kafka::options(role),
            "hub" if role == Role::Sink => Some(hub::HubSinkOptions::KEYS),
            _ => None,
        }
    }

    fn validate(&self, role: Role, spec: &ConnectorSpec<'_>) -> Result<()> {
        match (spec.connector, role) {
            ("mqtt", Role::Source) => mqtt::source_settings(self, spec).map(|_| ()),
            ("mqtt", Role::Sink) => mqtt::sink_settings(self, spec).map(|_| ()),
            ("kafka", Role::Source) => kafka::source_settings(self, spec).map(|_| ()),
            ("kafka", Role::Sink) => kafka::sink_settings(self, spec).map(|_| ()),
            ("hub", Role::Sink) => hub::sink_settings(self, spec).map(|_| ()),
            (c, role) => Err(EngineError::Internal(format!("no provided {c} {role}s"))),
        }
    }

    fn open_source(&self, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SourceReader>> {
        match spec.connector {
            "kafka" => kafka::open_source(self, spec),
            _ => mqtt::open_source(self, spec),
        }
    }

    fn fold_position(&self, connector: &str) -> FoldPosition {
        match connector {
            "mqtt" => mqtt::source::fold_position,
            _ => connector::replace_position,
        }
    }

    fn sink_format(&self, connector: &str) -> SinkFormat {
        match connector {
            "hub" => SinkFormat::Parquet,
            _ => SinkFormat::Json,
        }
    }

    fn open_sink(&self, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
        match spec.connector {
            "kafka" => kafka::open_sink(self, spec),
            "hub" => hub::open_sink(self, spec),
            _ => mqtt::open_sink(self, spec),
        }
    }
}
