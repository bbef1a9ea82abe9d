//! The `hub` sink's sending: committed rows go into the durable outbox (the one MQTT uses), each
//! tagged with the time it was committed; a sender thread pushes them to the hub in order, in
//! batches of one UTC day, and removes what the hub says it stored. While no hub is reachable the
//! rows wait (bounded, visible as the sink's backlog) and the pipeline keeps computing.
//!
//! Exactly once: a batch is named by the outbox's id and its first sequence number, and the hub
//! stores a name once; after a crash or a lost reply the sender starts again at the oldest
//! unacknowledged row, which begins a batch the hub has either stored (it says how far that
//! batch reached) or never seen. The pipeline thread never waits on the network: only the sender
//! does, on a current-thread tokio runtime of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use eddy_client::{v1, HubClient};
use eddy_engine::connector::{SinkRows, SinkStateDir, SinkWriter};
use eddy_engine::{EngineError, Result};

use super::{rows, HubSinkSettings};
use crate::connectors::backoff::Backoff;
use crate::connectors::outbox::{random_id, spawn_sender, Outbox, SharedOutbox};
use crate::metrics::ConnectorGauges;

/// Length of the commit time each row carries in the outbox: `yyyy-mm-ddThh:mm:ss.mmmZ`.
const STAMP_LEN: usize = 24;

struct Shared {
    outbox: SharedOutbox,
    gauges: Arc<ConnectorGauges>,
}

pub struct HubSink {
    settings: HubSinkSettings,
    schema: SchemaRef,
    state: Option<SinkStateDir>,
    shared: Option<Arc<Shared>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    stopping: Arc<AtomicBool>,
    gauges: Arc<ConnectorGauges>,
    /// How long `close` waits for the outbox to drain.
    drain_timeout: Duration,
}

impl HubSink {
    pub fn new(
        settings: HubSinkSettings,
        schema: SchemaRef,
        state: Option<SinkStateDir>,
        stopping: Arc<AtomicBool>,
        gauges: Arc<ConnectorGauges>,
    ) -> Self {
        HubSink {
            settings,
            schema,
            state,
            shared: None,
            thread: None,
            stopping,
            gauges,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl SinkWriter for HubSink {
    fn start(&mut self) -> Result<()> {
        if self.shared.is_some() {
            return Ok(());
        }
        let mut outbox = Outbox::open(self.state.as_ref(), self.settings.outbox_bytes, self.settings.policy)?;
        if !outbox.queue.is_empty() {
            tracing::info!(sink = %self.settings.ctx, rows = outbox.queue.len(), "hub outbox recovered; sending it first");
        }
        if outbox.id == 0 {
            if self.state.is_some() {
                return Err(EngineError::Internal("a durable outbox without an identity".into()));
            }
            // In memory, the outbox numbers its rows from 0 at every start: a fresh identity per
            // start keeps them from being taken for the batches of an earlier run.
            outbox.id = random_id()?;
        }
        outbox.publish_gauges(&self.gauges);
        *self.gauges.hub_stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.settings.stream.clone());
        let shared = Arc::new(Shared { outbox: SharedOutbox::new(outbox), gauges: self.gauges.clone() });
        let (s, schema, sh, stopping) =
            (self.settings.clone(), self.schema.clone(), shared.clone(), self.stopping.clone());
        let wake = shared.clone();
        self.thread = Some(spawn_sender(
            format!("hub-out {}", s.stream),
            s.ctx.clone(),
            self.gauges.clone(),
            move || wake.outbox.changed.notify_all(),
            move || send_loop(&s, &schema, &sh, &stopping),
        )?);
        self.shared = Some(shared);
        Ok(())
    }

    /// Rows wait in the outbox as their JSON payloads, stamped with the time they arrived; the
    /// sender types them into Arrow by the stream's schema when it uploads.
    fn deliver(&mut self, rows: &SinkRows<'_>, end: u64) -> Result<()> {
        let shared = self.shared.as_ref().ok_or_else(|| EngineError::Internal("hub sink not started".into()))?.clone();
        let stamp = eddy_engine::time::rfc3339_ms(eddy_engine::time::now_ms());
        debug_assert_eq!(stamp.len(), STAMP_LEN);
        let msgs: Vec<(String, Vec<u8>)> = rows
            .lines()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| (stamp.clone(), l.to_vec()))
            .collect();
        let ctx = &self.settings.ctx;
        let sender_alive = || match shared.gauges.failure() {
            Some(why) => Err(EngineError::State(format!("{ctx}: the hub sender stopped: {why}"))),
            None => Ok(()),
        };
        drop(shared.outbox.admit(ctx, end, msgs, &self.stopping, &shared.gauges, sender_alive)?);
        Ok(())
    }

    /// Waits (up to `drain_timeout`) for the outbox to empty while pushes go through, then
    /// stops the sender. What is left stays in a durable outbox for the next start. With the
    /// hub out of reach (the last push failed) it does not wait: a stop or restart of eddyd
    /// should not take the drain timeout longer for nothing (as the MQTT sink's `close`).
    fn close(&mut self) -> Result<()> {
        let Some(shared) = self.shared.take() else { return Ok(()) };
        let until = Instant::now() + self.drain_timeout;
        let g = &shared.gauges;
        let link_up = || g.connected.load(Ordering::Relaxed) || g.connect_errors.load(Ordering::Relaxed) == 0;
        let left = shared.outbox.drain(until, || g.failure().is_none() && link_up())?;
        if left > 0 {
            tracing::warn!(sink = %self.settings.ctx, rows = left, durable = self.state.is_some(), "hub outbox not empty at stop");
        }
        shared.outbox.stop_sender(self.thread.take(), "hub sender")
    }
}

impl Drop for HubSink {
    fn drop(&mut self) {
        if let Some(sh) = &self.shared {
            let _ = sh.outbox.stop_sender(self.thread.take(), "hub sender");
        }
    }
}

/// One batch taken from the front of the outbox: consecutive rows committed on one UTC day.
struct Batch {
    first: u64,
    last: u64,
    date: String,
    payloads: Vec<Vec<u8>>,
}

/// The oldest rows, up to the batch bounds, all of the first row's day (so a batch sent again
/// lands under the same day's key).
fn next_batch(ob: &Outbox, s: &HubSinkSettings) -> Option<Batch> {
    let first = ob.queue.front()?;
    let date = first.topic.get(..10)?.to_string();
    let mut b = Batch { first: first.seq, last: first.seq, date, payloads: Vec::new() };
    let mut bytes = 0;
    for m in &ob.queue {
        if !b.payloads.is_empty()
            && (b.payloads.len() >= s.batch_rows
                || bytes + m.payload.len() > s.batch_bytes
                || !m.topic.starts_with(&b.date))
        {
            break;
        }
        bytes += m.payload.len();
        b.last = m.seq;
        b.payloads.push(m.payload.clone());
    }
    Some(b)
}

/// The age of the oldest row waiting, in ms (its commit time is in its topic).
fn oldest_age_ms(ob: &Outbox) -> u64 {
    ob.queue
        .front()
        .and_then(|m| eddy_engine::time::parse_timestamp_ms(&m.topic))
        .map_or(0, |t| eddy_engine::time::now_ms().saturating_sub(t).max(0) as u64)
}

/// Pushes the outbox in order until closing; fails only on what retrying cannot fix (the outbox's
/// own storage, or rows that do not match their schema).
fn send_loop(s: &HubSinkSettings, schema: &SchemaRef, sh: &Shared, stopping: &AtomicBool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EngineError::io("<tokio runtime>", e))?;
    let stop = || sh.outbox.closing() || stopping.load(Ordering::Acquire);
    let mut backoff = Backoff::new();
    let mut client: Option<HubClient> = None;
    let mut endpoint = 0usize;
    let mut ipc = Vec::new();
    let mut last_sync = Instant::now();
    let mut failing_since: Option<Instant> = None;
    loop {
        let batch = {
            let mut ob = sh.outbox.lock()?;
            sh.gauges.outbox_oldest_age_ms.store(oldest_age_ms(&ob), Ordering::Relaxed);
            if sh.outbox.closing() {
                return ob.sync_acks();
            }
            match next_batch(&ob, s) {
                Some(b) => b,
                None => {
                    ob.sync_acks()?;
                    drop(sh.outbox.wait(ob, Duration::from_millis(200))?);
                    continue;
                }
            }
        };
        let rows =
            rows::encode(schema, batch.payloads.iter().map(Vec::as_slice), s.batch_rows, &mut ipc).map_err(|e| {
                EngineError::State(format!(
                    "{}: rows {}..={} do not match the sink's schema: {e}",
                    s.ctx, batch.first, batch.last
                ))
            })?;
        debug_assert_eq!(rows as u64, batch.last - batch.first + 1);
        let outbox_id = sh.outbox.lock()?.id;
        let req = v1::PushRowsRequest {
            stream: s.stream.clone(),
            outbox_id,
            first_seq: batch.first,
            last_seq: batch.last,
            date: batch.date.clone(),
            arrow_ipc: std::mem::take(&mut ipc),
        };
        let result = rt.block_on(async {
            let c = match client.take() {
                Some(c) => c,
                None => s.link.connect(endpoint).await?,
            };
            let r = c.push_rows(req).await;
            client = Some(c);
            r
        });
        match result {
            Ok(reply) if reply.stored_through >= batch.first => {
                if reply.stored_through < batch.last {
                    tracing::info!(sink = %s.ctx, first = batch.first, through = reply.stored_through, "the hub had stored a shorter batch; sending the rest");
                }
                let through = reply.stored_through.min(batch.last);
                let mut ob = sh.outbox.lock()?;
                ob.acked_through(through + 1);
                ob.publish_gauges(&sh.gauges);
                sh.gauges.messages.fetch_add(through - batch.first + 1, Ordering::Relaxed);
                if last_sync.elapsed() >= Duration::from_millis(200) || ob.queue.is_empty() {
                    ob.sync_acks()?;
                    last_sync = Instant::now();
                }
                sh.outbox.changed.notify_all();
                if !sh.gauges.connected.swap(true, Ordering::Relaxed) {
                    sh.gauges.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(sink = %s.ctx, hub = %s.link.endpoint(endpoint), "pushing to the hub");
                }
                failing_since = None;
                backoff.reset();
            }
            other => {
                let why = match other {
                    Ok(r) => format!(
                        "the hub replied stored_through {} for a batch starting at {}",
                        r.stored_through, batch.first
                    ),
                    Err(e) => e.to_string(),
                };
                let was_connected = sh.gauges.connected.swap(false, Ordering::Relaxed);
                sh.gauges.connect_errors.fetch_add(1, Ordering::Relaxed);
                if was_connected || failing_since.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(sink = %s.ctx, error = %why, backlog_rows = batch.last - batch.first + 1, "cannot push to the hub; rows wait in the outbox");
                    failing_since = Some(Instant::now());
                }
                // Another hub next time (a hub that failed may be down).
                client = None;
                endpoint = endpoint.wrapping_add(1);
                backoff.sleep_unless(stop);
                if stopping.load(Ordering::Acquire) && !sh.outbox.closing() {
                    // Shutting down: `close` decides how long to wait.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}
