//! librdkafka clients as eddyd configures them: the properties it sets itself, the user's
//! `properties.*`, and a context that sends librdkafka's logs and errors to `tracing` and keeps
//! the connection state in the connector's gauges. Owns client creation only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};

use super::ClientProps;
use crate::metrics::ConnectorGauges;

/// Callbacks of one client: logs and errors, connection state, failed deliveries.
pub struct Context {
    pub ctx: String,
    pub gauges: Arc<ConnectorGauges>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(connector = %self.ctx, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(connector = %self.ctx, facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(connector = %self.ctx, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(connector = %self.ctx, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.gauges.connected.store(false, Ordering::Release);
        }
        self.gauges.connect_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(connector = %self.ctx, error = %error, "Kafka: {reason}");
    }
}

impl ConsumerContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    /// A failed delivery is counted here and fails the transaction (or flush) it belongs to:
    /// the sink checks before it calls output committed.
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.gauges.messages.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.gauges.connect_errors.fetch_add(1, Ordering::Relaxed);
                let mut f = self.gauges.failed_deliveries.lock().unwrap_or_else(|p| p.into_inner());
                if f.is_none() {
                    *f = Some(e.to_string());
                }
            }
        }
    }
}

/// A client config: eddyd's own settings first, then the user's `properties.*` (which may not
/// repeat eddyd's own; the options check refuses that).
pub fn config(props: &ClientProps, own: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &props.bootstrap);
    c.set("client.software.name", "eddyd");
    c.set("client.software.version", env!("CARGO_PKG_VERSION"));
    for (k, v) in own {
        c.set(*k, v);
    }
    for (k, v) in &props.properties {
        c.set(k, v.expose());
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}
