//! The Kafka sink. The engine hands it a checkpoint's output only once that checkpoint is
//! durable, with `end`, the sink's byte count through it (the same `end` again after a crash).
//!
//! Exactly-once: each delivery is one Kafka transaction, under a `transactional.id` that follows
//! the pipeline's state (by default it is made from the state's identity), so it stays the same
//! across restarts, host names and restores. Its rows and a progress marker — the group
//! `<transactional.id>`'s offset on partition 0 of the progress topic, set to `end` — commit
//! together. At start, `init_transactions` fences any older producer with the same id and aborts a
//! transaction it left open; the marker then says which delivery last committed, and a
//! re-delivered one is skipped. So a crash anywhere leaves each checkpoint's output in Kafka
//! exactly once. After a restore from a backup the marker is set back to the backup's own
//! output before anything is delivered: what the replaced device delivered after it is computed
//! again and written again (Kafka cannot take it back), never skipped as if it were the same rows.
//!
//! At-least-once: rows are produced idempotently and flushed; a delivery counts once every
//! delivery report came back without error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::client::{self, Context};
use super::{Delivery, Partitioner, SinkSettings};
use crate::connectors::backoff::Backoff;
use crate::metrics::ConnectorGauges;
use eddy_engine::connector::{OpenedState, SinkRow, SinkRows, SinkWriter};
use eddy_engine::{EngineError, Result};

/// How long one transaction step (init, commit, abort, marker read) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// One attempt to reach the cluster at start; attempts repeat (with backoff) until one succeeds
/// or eddyd is asked to stop.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Delivery of what is queued before a commit or flush, at most.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

pub struct KafkaSink {
    s: SinkSettings,
    stopping: Arc<AtomicBool>,
    gauges: Arc<ConnectorGauges>,
    producer: Option<BaseProducer<Context>>,
    /// Reads and writes the progress marker (exactly-once).
    marker: Option<BaseConsumer<Context>>,
    /// `end` of the last delivery known to be in Kafka.
    committed_end: u64,
    /// The state this sink delivers for ([`SinkWriter::bind_state`]).
    state: Option<[u8; 16]>,
    /// The restored backup's output ended here ([`SinkWriter::restoring_a_backup`]).
    restored_end: Option<u64>,
    topic: String,
    key: String,
    /// One row's header values, end to end, and where each lies (`None`: NULL).
    header_text: String,
    header_spans: Vec<Option<(usize, usize)>>,
}

impl KafkaSink {
    pub fn new(s: SinkSettings, stopping: Arc<AtomicBool>, gauges: Arc<ConnectorGauges>) -> Self {
        KafkaSink {
            s,
            stopping,
            gauges,
            producer: None,
            marker: None,
            committed_end: 0,
            state: None,
            restored_end: None,
            topic: String::new(),
            key: String::new(),
            header_text: String::new(),
            header_spans: Vec::new(),
        }
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::options(&self.s.ctx, format!("{what}: {e}"))
    }

    fn context(&self) -> Context {
        Context { ctx: self.s.ctx.clone(), gauges: self.gauges.clone() }
    }

    /// The `transactional.id` of an exactly-once sink.
    fn transactional_id(&self) -> Result<String> {
        self.s.transactional_id.for_state(self.state.as_ref()).ok_or_else(|| {
            EngineError::Internal("an exactly-once Kafka sink started before it knew its pipeline's state".into())
        })
    }

    fn producer_config(&self) -> Result<rdkafka::ClientConfig> {
        let mut own = vec![("enable.idempotence", "true".to_string())];
        if self.s.delivery == Delivery::ExactlyOnce {
            own.push(("transactional.id", self.transactional_id()?));
            own.push(("transaction.timeout.ms", self.s.transaction_timeout.as_millis().to_string()));
        }
        // Unset: the partitioner Java clients use, so keys land where other producers put them.
        let partitioner = self.s.partitioner.unwrap_or(Partitioner::Murmur2Random);
        own.push(("partitioner", partitioner.name().into()));
        Ok(client::config(&self.s.client, &own))
    }

    /// Exactly-once start: fences older producers, aborts what they left open, reads the marker.
    /// Retries while the cluster is unreachable (until eddyd stops).
    fn init_transactions(&mut self) -> Result<()> {
        let transactional_id = self.transactional_id()?;
        self.gauges.set_connected_as(&transactional_id);
        let mut backoff = Backoff::new();
        loop {
            let producer: BaseProducer<Context> =
                self.producer_config()?.create_with_context(self.context()).map_err(|e| self.err("Kafka client", e))?;
            match producer.init_transactions(ATTEMPT_TIMEOUT) {
                Ok(()) => {
                    self.producer = Some(producer);
                    break;
                }
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTransactionTimeout) => {
                    return Err(self.err(
                        "transaction.timeout",
                        format!(
                            "{} ms is over the broker's transaction.max.timeout.ms; lower it (or raise the broker's)",
                            self.s.transaction_timeout.as_millis()
                        ),
                    ));
                }
                Err(e) => {
                    if self.stop_requested() {
                        return Err(self.err("Kafka transactions not initialised before eddyd stopped", e));
                    }
                    tracing::warn!(sink = %self.s.ctx, error = %e, "Kafka transactions not initialised; retrying");
                    backoff.sleep_unless(|| self.stop_requested());
                }
            }
        }
        let marker: BaseConsumer<Context> = client::config(
            &self.s.client,
            &[("group.id", transactional_id.clone()), ("enable.auto.commit", "false".into())],
        )
        .create_with_context(self.context())
        .map_err(|e| self.err("Kafka client", e))?;
        let topic = self.progress_topic()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let mut backoff = Backoff::new();
        let got = loop {
            match marker.committed_offsets(tpl.clone(), ATTEMPT_TIMEOUT) {
                Ok(got) => break got,
                Err(e) if !self.stop_requested() => {
                    tracing::warn!(sink = %self.s.ctx, error = %e, "Kafka sink progress not read; retrying");
                    backoff.sleep_unless(|| self.stop_requested());
                }
                Err(e) => return Err(self.err("Kafka sink progress not read before eddyd stopped", e)),
            }
        };
        let marker_end = match got.find_partition(&topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n >= 0 => n as u64,
            _ => 0,
        };
        self.marker = Some(marker);
        self.committed_end = resume_end(marker_end, self.restored_end);
        if marker_end > self.committed_end {
            tracing::warn!(
                sink = %self.s.ctx,
                transactional_id = %transactional_id,
                backup_end = self.committed_end,
                delivered_end = marker_end,
                "restored from a backup: the replaced device had committed {} more bytes of output to Kafka after it; \
                 that output is computed again and written again (Kafka cannot take it back), so its rows may appear twice",
                marker_end - self.committed_end
            );
            // The marker is set back before anything is delivered: a crash after this state's
            // next checkpoint must not find the replaced device's count and skip this state's
            // own output as if it were already written.
            self.transaction(None, self.committed_end)?;
        }
        tracing::info!(sink = %self.s.ctx, transactional_id = %transactional_id, committed_end = self.committed_end, "Kafka transactions ready");
        Ok(())
    }

    /// eddyd is stopping (its runtime says so, or a signal came while the pipeline was still
    /// being started, before the runtime could pass it on).
    fn stop_requested(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || crate::systemd::stop_requested()
    }

    fn progress_topic(&self) -> Result<String> {
        self.s
            .progress_topic
            .clone()
            .ok_or_else(|| EngineError::Internal("exactly-once sink without a progress topic".into()))
    }

    /// Queues every row; waits for room when librdkafka's queue is full.
    fn produce(&mut self, rows: &SinkRows<'_>) -> Result<()> {
        let constant = self.s.topic.constant();
        let Some(producer) = self.producer.as_ref() else {
            return Err(EngineError::Internal("Kafka sink not started".into()));
        };
        for row in rows.iter() {
            let row = row?;
            match &constant {
                Some(t) => {
                    self.topic.clear();
                    self.topic.push_str(t);
                }
                None => self.s.topic.render_into(&row, &mut self.topic),
            }
            key_of(&row, &self.s.key, &mut self.key);
            self.header_text.clear();
            self.header_spans.clear();
            for (_, col) in &self.s.headers {
                let start = self.header_text.len();
                let some = row.write_text(*col, &mut self.header_text);
                self.header_spans.push(some.then_some((start, self.header_text.len())));
            }
            let mut headers = OwnedHeaders::new_with_capacity(self.s.headers.len());
            for ((name, _), span) in self.s.headers.iter().zip(&self.header_spans) {
                let value = span.map(|(a, b)| &self.header_text[a..b]);
                headers = headers.insert(Header { key: name, value });
            }
            let mut record = BaseRecord::to(&self.topic).payload(row.payload()).headers(headers);
            if !self.s.key.is_empty() {
                record = record.key(self.key.as_str());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        self.gauges.backpressure.fetch_add(1, Ordering::Relaxed);
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => return Err(self.err("Kafka produce", e)),
                }
            }
            producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    fn take_failed_delivery(&self) -> Option<String> {
        self.gauges.failed_deliveries.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn deliver_transaction(&mut self, rows: &SinkRows<'_>, end: u64) -> Result<()> {
        let t0 = std::time::Instant::now();
        self.transaction(Some(rows), end)?;
        self.committed_end = end;
        tracing::debug!(sink = %self.s.ctx, end, bytes = rows.lines().len(), millis = t0.elapsed().as_millis() as u64, "Kafka transaction committed");
        Ok(())
    }

    /// One transaction: `rows` (none: the marker alone), then the progress marker set to `end`;
    /// aborted if any step fails.
    fn transaction(&mut self, rows: Option<&SinkRows<'_>>, end: u64) -> Result<()> {
        let producer = self.producer.as_ref().ok_or_else(|| EngineError::Internal("Kafka sink not started".into()))?;
        producer.begin_transaction().map_err(|e| self.err("Kafka begin transaction", e))?;
        let produced = match rows {
            Some(rows) => self.produce(rows),
            None => Ok(()),
        };
        if let Err(e) = produced.and_then(|()| self.commit_transaction(end)) {
            if let Some(p) = self.producer.as_ref() {
                if let Err(abort) = p.abort_transaction(STEP_TIMEOUT) {
                    tracing::warn!(sink = %self.s.ctx, error = %abort, "Kafka transaction not aborted (the broker aborts it at its timeout or our restart)");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    fn commit_transaction(&self, end: u64) -> Result<()> {
        let (Some(producer), Some(marker)) = (self.producer.as_ref(), self.marker.as_ref()) else {
            return Err(EngineError::Internal("Kafka sink not started".into()));
        };
        let mut tpl = TopicPartitionList::new();
        let end_offset = i64::try_from(end).map_err(|_| EngineError::Internal("sink byte count over i64".into()))?;
        tpl.add_partition_offset(&self.progress_topic()?, 0, Offset::Offset(end_offset))
            .map_err(|e| self.err("Kafka progress marker", e))?;
        let group = marker
            .group_metadata()
            .ok_or_else(|| EngineError::Internal("the progress consumer has no group metadata".into()))?;
        producer
            .send_offsets_to_transaction(&tpl, &group, STEP_TIMEOUT)
            .map_err(|e| self.err("Kafka progress marker", fenced_hint(e)))?;
        // Commit flushes first and fails if any record of the transaction failed.
        producer.commit_transaction(FLUSH_TIMEOUT).map_err(|e| self.err("Kafka commit", fenced_hint(e)))?;
        if let Some(f) = self.take_failed_delivery() {
            return Err(self.err("Kafka delivery failed inside a committed transaction", f));
        }
        Ok(())
    }

    fn deliver_at_least_once(&mut self, rows: &SinkRows<'_>) -> Result<()> {
        self.produce(rows)?;
        let producer = self.producer.as_ref().ok_or_else(|| EngineError::Internal("Kafka sink not started".into()))?;
        producer.flush(FLUSH_TIMEOUT).map_err(|e| self.err("Kafka flush", e))?;
        if let Some(f) = self.take_failed_delivery() {
            return Err(self.err("Kafka delivery failed", f));
        }
        Ok(())
    }
}

/// Says what a fenced producer means for the user.
fn fenced_hint(e: KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::ProducerFenced) | Some(RDKafkaErrorCode::Fenced) => {
            format!("{e}: another producer took this transactional.id (is this pipeline running in a second eddyd?)")
        }
        _ => e.to_string(),
    }
}

/// A record's key: one key column's value as text, or a JSON object of several (values as
/// strings, members in name order).
fn key_of(row: &SinkRow<'_>, cols: &[(String, usize)], out: &mut String) {
    out.clear();
    match cols {
        [] => {}
        [(_, one)] => {
            row.write_text(*one, out);
        }
        many => {
            let mut m = serde_json::Map::new();
            for (name, col) in many {
                let mut v = String::new();
                let value = match row.write_text(*col, &mut v) {
                    true => serde_json::Value::String(v),
                    false => serde_json::Value::Null,
                };
                m.insert(name.clone(), value);
            }
            out.push_str(&serde_json::Value::Object(m).to_string());
        }
    }
}

/// Where deliveries count from: the progress marker's `end`, except after a restore from a
/// backup, where it counts no further than the backup's own output. The restored checkpoint's
/// output is then skipped exactly when the replaced device committed it (that output is the
/// stored bytes, the same either way); output after it is computed again and may differ in order
/// or in rows from what that device wrote, so skipping it by its byte count could drop rows.
fn resume_end(marker_end: u64, restored_end: Option<u64>) -> u64 {
    match restored_end {
        Some(backup_end) => marker_end.min(backup_end),
        None => marker_end,
    }
}

impl SinkWriter for KafkaSink {
    fn bind_state(&mut self, state: &OpenedState) {
        self.state = Some(state.identity);
    }

    fn restoring_a_backup(&mut self, end: u64) {
        self.restored_end = Some(end);
    }

    fn start(&mut self) -> Result<()> {
        if self.producer.is_some() {
            return Ok(());
        }
        match self.s.delivery {
            Delivery::ExactlyOnce => self.init_transactions(),
            Delivery::AtLeastOnce => {
                let p: BaseProducer<Context> = self
                    .producer_config()?
                    .create_with_context(self.context())
                    .map_err(|e| self.err("Kafka client", e))?;
                self.producer = Some(p);
                Ok(())
            }
        }
    }

    fn deliver(&mut self, rows: &SinkRows<'_>, end: u64) -> Result<()> {
        self.start()?;
        if rows.is_empty() {
            return Ok(()); // no empty transactions
        }
        match self.s.delivery {
            Delivery::ExactlyOnce if end <= self.committed_end => {
                tracing::info!(sink = %self.s.ctx, end, committed_end = self.committed_end, "output already committed to Kafka before a restart; skipped");
                Ok(())
            }
            Delivery::ExactlyOnce => self.deliver_transaction(rows, end),
            Delivery::AtLeastOnce => self.deliver_at_least_once(rows),
        }
    }

    fn close(&mut self) -> Result<()> {
        if let (Some(p), Delivery::AtLeastOnce) = (self.producer.as_ref(), self.s.delivery) {
            p.flush(FLUSH_TIMEOUT).map_err(|e| self.err("Kafka flush", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::kafka::{ClientProps, TransactionalId, TOPIC_RULES};
    use crate::connectors::template::Template;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::Message;

    fn settings(bootstrap: &str) -> SinkSettings {
        SinkSettings {
            ctx: "sink 'k'".into(),
            client: ClientProps { bootstrap: bootstrap.into(), properties: vec![] },
            topic: Template::parse("out", &[], TOPIC_RULES).unwrap(),
            delivery: Delivery::ExactlyOnce,
            key: vec![],
            headers: vec![],
            partitioner: None,
            transactional_id: TransactionalId::Given("eddy.test.p.k".into()),
            transaction_timeout: Duration::from_secs(10),
            progress_topic: Some("out".into()),
        }
    }

    fn sink(bootstrap: &str) -> KafkaSink {
        let mut s = KafkaSink::new(settings(bootstrap), Arc::new(AtomicBool::new(false)), Default::default());
        s.start().unwrap();
        s
    }

    /// Every committed record of `out`, in order.
    fn committed(bootstrap: &str) -> Vec<String> {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "reader")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("out", 0, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        out
    }

    /// A delivery while the cluster fails requests: either librdkafka's retries carry the commit
    /// through, or the delivery fails, nothing of it is visible to `read_committed`, and the
    /// restart (which the engine follows with the same delivery) writes it once. (The mock
    /// cluster does not keep transactional offsets, so the progress marker that skips an already
    /// committed redelivery is proven against the real broker in `daemon/tests/kafka.rs`.)
    fn survives(fail: impl FnOnce(&MockCluster<'static, rdkafka::producer::DefaultProducerContext>)) {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("out", 1, 1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        let mut first = sink(&bootstrap);
        first.deliver(&SinkRows::from_lines(b"{\"n\":1}\n{\"n\":2}\n"), 16).unwrap();
        fail(&mock);
        match first.deliver(&SinkRows::from_lines(b"{\"n\":3}\n"), 24) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(committed(&bootstrap), [r#"{"n":1}"#, r#"{"n":2}"#], "a failed delivery left rows: {e}");
                drop(first);
                let mut again = sink(&bootstrap);
                again.deliver(&SinkRows::from_lines(b"{\"n\":3}\n"), 24).unwrap();
            }
        }
        assert_eq!(committed(&bootstrap), [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
    }

    #[test]
    fn coordinator_unavailable_during_a_commit_neither_loses_nor_doubles() {
        survives(|m| {
            m.request_errors(RDKafkaApiKey::EndTxn, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 3])
        });
    }

    #[test]
    fn a_produce_that_fails_aborts_the_transaction_and_the_restart_writes_it_once() {
        survives(|m| m.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD; 1]));
    }

    #[test]
    fn request_timeouts_on_the_progress_marker_neither_lose_nor_double() {
        survives(|m| {
            m.request_errors(RDKafkaApiKey::TxnOffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 2])
        });
    }

    #[test]
    fn the_default_transactional_id_follows_the_state() {
        let id = TransactionalId::PerState { base: "eddy.p.k".into() };
        let a = [0xab; 16];
        let mut b = a;
        b[0] = 0x01;
        assert_eq!(id.for_state(Some(&a)).unwrap(), "eddy.p.k.abababababababab");
        assert_ne!(id.for_state(Some(&a)), id.for_state(Some(&b)));
        assert_eq!(id.for_state(None), None, "no id before the state is known");
        let given = TransactionalId::Given("mine".into());
        assert_eq!(given.for_state(Some(&a)).unwrap(), "mine");
        // An exactly-once sink that was never bound refuses to start rather than guess an id.
        let mut s = settings("127.0.0.1:1");
        s.transactional_id = id;
        let mut sink = KafkaSink::new(s, Arc::new(AtomicBool::new(false)), Default::default());
        assert!(matches!(sink.start(), Err(EngineError::Internal(_))));
    }

    #[test]
    fn after_a_restore_the_marker_counts_no_further_than_the_backup() {
        // No restore: the marker as it is.
        assert_eq!(resume_end(700, None), 700);
        // The replaced device committed past the backup: the backup's own output is skipped,
        // what follows is written again.
        assert_eq!(resume_end(700, Some(400)), 400);
        // It died before committing the backup's output: that output is delivered.
        assert_eq!(resume_end(300, Some(400)), 300);
        assert_eq!(resume_end(0, Some(400)), 0);
    }

    #[test]
    fn keys_are_one_value_or_an_object() {
        let rows = SinkRows::from_lines(b"{\"a\":\"x\",\"b\":2,\"c\":null}\n");
        let row = rows.iter().next().unwrap().unwrap();
        let mut k = String::new();
        key_of(&row, &[("a".into(), 0)], &mut k);
        assert_eq!(k, "x");
        key_of(&row, &[("c".into(), 2), ("a".into(), 0), ("b".into(), 1)], &mut k);
        assert_eq!(k, r#"{"a":"x","b":"2","c":null}"#);
        key_of(&row, &[], &mut k);
        assert_eq!(k, "");
    }
}
