//! The MQTT connector (rumqttc, MQTT 3.1.1 and 5): its options, sources and sinks, opened for the
//! engine by the daemon's [`Provider`]. Owns the MQTT network side; the engine only sees rows and
//! JSON lines.

pub mod settings;
pub mod sink;
pub mod source;
pub mod wire;

use super::outbox::FullPolicy;
use super::template::Template;
use super::Provider;
use crate::config::MqttDefaults;
use eddy_engine::connector::{self, connector_options, ConnectorSpec, Format, Role, SinkWriter, SourceReader};
use eddy_engine::Result;
use settings::{opt_err, Connection, ConnectionOptions};

/// The `connector` option's value, and the prefix of this connector's metrics (`eddy_mqtt_*`).
pub const CONNECTOR: &str = "mqtt";

connector_options! {
    /// What an MQTT source takes besides its connection.
    struct SourceOptions {
        topic: String = "topic",
        clean_session: bool = "clean_session",
        queue_messages: usize = "queue_messages",
        queue_bytes: usize = "queue_bytes",
    }
}

connector_options! {
    /// What an MQTT sink takes besides its connection.
    struct SinkOptions {
        topic: String = "topic",
        retain: bool = "retain",
        outbox_bytes: usize = "outbox_bytes",
        outbox_full: FullPolicy = "outbox_full",
        inflight: usize = "inflight",
    }
}

/// Checks the `[mqtt]` defaults at config load (after `${ENV}` expansion): every value parses
/// as the same option does in SQL, with the same message.
pub fn check_defaults(d: &MqttDefaults) -> Result<()> {
    const CTX: &str = "[mqtt]";
    let value = |k: &str| Ok(d.get(k));
    ConnectionOptions::read(CTX, value)?;
    SourceOptions::read(CTX, value)?;
    SinkOptions::read(CTX, value)?;
    Ok(())
}

/// The options an MQTT source or sink takes (besides the common ones).
pub fn options(role: Role) -> Option<&'static [&'static str]> {
    static LISTS: super::OptionLists = super::OptionLists::new();
    LISTS.get(role, &[ConnectionOptions::KEYS, SourceOptions::KEYS], &[ConnectionOptions::KEYS, SinkOptions::KEYS])
}

pub(super) fn source_settings(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<source::SourceSettings> {
    let ctx = format!("source '{}'", spec.name);
    let conn = Connection::resolve(Role::Source, &p.pipeline, spec.name, spec.options, &p.mqtt)?;
    let o = SourceOptions::read(&ctx, |k| settings::get(&ctx, spec.options, &p.mqtt, k))?;
    let topics: Vec<String> = o
        .topic
        .ok_or_else(|| {
            opt_err(&ctx, "connector 'mqtt' needs option 'topic' (filters, comma-separated; + and # allowed)")
        })?
        .split(',')
        .map(|t| t.trim().to_string())
        .collect();
    for t in &topics {
        let bad_hash = t.find('#').is_some_and(|i| i + 1 != t.len() || (i > 0 && !t[..i].ends_with('/')));
        let bad_plus = t.split('/').any(|l| l.contains('+') && l != "+");
        if t.is_empty() || bad_hash || bad_plus {
            return Err(opt_err(
                &ctx,
                format!("topic filter '{t}' is not valid ('+' stands for one whole level, '#' only last)"),
            ));
        }
    }
    let format = connector::format_option(&ctx, spec.options, Format::Json)?;
    for k in &spec.metadata_keys {
        if !source::METADATA_KEYS.contains(&k.as_str()) {
            return Err(opt_err(
                &ctx,
                format!("METADATA FROM '{k}': an MQTT source provides {}", source::METADATA_KEYS.join(", ")),
            ));
        }
    }
    connector::check_raw_payload(&ctx, format, spec.columns.len() - spec.metadata_keys.len())?;
    let queue_messages = o.queue_messages.or(p.mqtt.queue_messages).unwrap_or(1024).clamp(1, 1 << 20);
    let queue_bytes = o.queue_bytes.or(p.mqtt.queue_bytes).unwrap_or(64 << 20).max(1 << 16);
    let clean_session = o.clean_session.unwrap_or(false);
    if clean_session && p.durable && conn.qos != rumqttc::QoS::AtMostOnce {
        // A clean session makes the broker forget what it holds for us at every reconnect:
        // what was published while eddyd was away is lost, so exactly-once input cannot hold.
        return Err(opt_err(
            &ctx,
            "clean_session = 'true' with durable state would lose messages published while eddyd is disconnected \
             (the broker keeps nothing for a clean session); remove it for exactly-once input, or use qos = '0' \
             to say loss is acceptable",
        ));
    }
    Ok(source::SourceSettings { clean_session, conn, topics, format, queue_messages, queue_bytes })
}

pub(super) fn sink_settings(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<sink::SinkSettings> {
    let ctx = format!("sink '{}'", spec.name);
    let conn = Connection::resolve(Role::Sink, &p.pipeline, spec.name, spec.options, &p.mqtt)?;
    let o = SinkOptions::read(&ctx, |k| settings::get(&ctx, spec.options, &p.mqtt, k))?;
    let topic = o.topic.ok_or_else(|| {
        opt_err(&ctx, "connector 'mqtt' needs option 'topic' (a template such as 'alerts/{device_id}')")
    })?;
    let topic = Template::parse(&topic, &spec.columns, sink::TOPIC_RULES).map_err(|m| opt_err(&ctx, m))?;
    let policy = o.outbox_full.unwrap_or(FullPolicy::Block);
    Ok(sink::SinkSettings {
        conn,
        topic,
        retain: o.retain.unwrap_or(false),
        outbox_bytes: o.outbox_bytes.or(p.mqtt.outbox_bytes).unwrap_or(64 << 20).max(4096),
        policy,
        inflight: o.inflight.unwrap_or(64).clamp(1, 65535),
    })
}

/// Opens an MQTT source's reader (it connects on its first poll).
pub(super) fn open_source(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SourceReader>> {
    let s = source_settings(p, spec)?;
    let gauges = p.metrics.connector(&p.pipeline, Role::Source, CONNECTOR, spec.name);
    Ok(Box::new(source::MqttSource::new(s, spec.metadata_keys.clone(), gauges, spec.wakeup.clone())))
}

pub(super) fn open_sink(p: &Provider, spec: &ConnectorSpec<'_>) -> Result<Box<dyn SinkWriter>> {
    let s = sink_settings(p, spec)?;
    let gauges = p.metrics.connector(&p.pipeline, Role::Sink, CONNECTOR, spec.name);
    Ok(Box::new(sink::MqttSink::new(s, spec.state.clone(), p.stopping.clone(), gauges)))
}
