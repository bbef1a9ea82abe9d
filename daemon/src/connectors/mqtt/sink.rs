//! The MQTT sink: each output row becomes one message (its payload, the row as a JSON object) on a
//! topic made from a template with the row's values (`alerts/{device_id}`). Committed output goes into the
//! [`Outbox`]; a publisher thread sends it in order and removes what the broker acknowledged, so
//! while the broker is unreachable output waits (bounded) and goes out in order when it returns.
//! After a crash, messages not yet acknowledged are sent again: delivery to the broker is
//! at-least-once, and each message repeats a row identical to the first (consumers that key by
//! the row's columns see no difference).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use super::settings::Connection;
use super::wire::{self, WireClient, WireConnection, WireEvent};
use crate::connectors::backoff::Backoff;
use crate::connectors::outbox::{spawn_sender, FullPolicy, Outbox, SharedOutbox};
use crate::connectors::template::{NameRules, Template};
use crate::metrics::ConnectorGauges;
use eddy_engine::connector::{OpenedState, SinkRows, SinkStateDir, SinkWriter};
use eddy_engine::{EngineError, Result};

/// What an MQTT topic made from a template may contain.
pub const TOPIC_RULES: NameRules = NameRules {
    forbidden_in_values: |c| matches!(c, '+' | '#' | '\0'),
    check_literal: |t| {
        if t.contains(['+', '#']) {
            Err("a topic to publish to has no wildcards".into())
        } else {
            Ok(())
        }
    },
};

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub conn: Connection,
    pub topic: Template,
    pub retain: bool,
    pub outbox_bytes: usize,
    pub policy: FullPolicy,
    /// Messages sent and not yet acknowledged, at most.
    pub inflight: usize,
}

struct Shared {
    outbox: SharedOutbox,
    /// What has been handed to rumqttc. Lock order: `outbox`, then `sending` — never the other
    /// way round. Messages are handed over with both held, so the order of `unassigned` is the
    /// order of rumqttc's request queue, whichever thread sent them.
    sending: Mutex<Sending>,
    client: WireClient,
    /// A durable outbox's messages carry `eddy-sink` = this (the client id and the outbox's
    /// identity) and their sequence number (MQTT 5); `None` for an in-memory outbox.
    sink_id: Option<String>,
    stopping: Arc<AtomicBool>,
    gauges: Arc<ConnectorGauges>,
}

#[derive(Default)]
struct Sending {
    connected: bool,
    /// After a reconnect, until the marker is out: publishes that `deliver` handed rumqttc after
    /// it dropped the old connection (and drained its queue) but before we saw the error are
    /// still queued, and go out first. Their packet ids must not be taken for ours, or a later
    /// acknowledgement would remove the wrong message from the outbox; so nothing is sent and
    /// their ids are ignored until the marker behind them is out.
    draining: bool,
    /// Sequence numbers sent, in order, waiting for rumqttc to give them a packet id...
    unassigned: std::collections::VecDeque<u64>,
    /// ...and then waiting for the broker's acknowledgement.
    by_pkid: std::collections::HashMap<u16, u64>,
    /// The next sequence number to send (`None`: the oldest in the outbox).
    next_send: Option<u64>,
}

impl Sending {
    /// A connect: nothing is sent until the marker, queued behind any strays, is out.
    fn reconnected(&mut self) {
        *self = Sending { draining: true, ..Sending::default() };
    }

    /// Sending may start (the marker is out, or none could be queued): our publishes from now on
    /// are the only ones rumqttc has, so packet ids map to them in order.
    fn ready(&mut self) {
        *self = Sending { connected: true, ..Sending::default() };
    }

    /// The connection failed; returns whether it had been up.
    fn disconnected(&mut self) -> bool {
        std::mem::replace(&mut self.connected, false)
    }

    /// We handed rumqttc message `seq`.
    fn published(&mut self, seq: u64) {
        self.unassigned.push_back(seq);
        self.next_send = Some(seq + 1);
    }

    /// rumqttc sent a publish with `pkid`. Returns the message it completes at once (QoS 0); a
    /// stray (while draining) maps to nothing.
    fn sent(&mut self, pkid: u16, qos0: bool) -> Option<u64> {
        if self.draining {
            return None;
        }
        let seq = self.unassigned.pop_front()?;
        if qos0 {
            return Some(seq);
        }
        self.by_pkid.insert(pkid, seq);
        None
    }

    /// The broker acknowledged `pkid`: the message it was ours for, if any.
    fn acked(&mut self, pkid: u16) -> Option<u64> {
        self.by_pkid.remove(&pkid)
    }
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Outbox>> {
        self.outbox.lock()
    }

    fn lock_sending(&self) -> Result<MutexGuard<'_, Sending>> {
        self.sending.lock().map_err(|_| EngineError::Internal("the MQTT send state lock is poisoned".into()))
    }

    /// Hands rumqttc the outbox's next messages, up to `inflight` unacknowledged. Called by the
    /// publisher and, so that new output goes out at once, by `deliver`. `ob` is held throughout.
    fn send_ready(&self, ob: &Outbox, s: &SinkSettings) -> Result<()> {
        let mut snd = self.lock_sending()?;
        if !snd.connected {
            return Ok(());
        }
        let inflight = snd.unassigned.len() + snd.by_pkid.len();
        let start = snd.next_send.unwrap_or_else(|| ob.queue.front().map(|m| m.seq).unwrap_or(0));
        let mut sent = 0;
        // Sequence numbers in the outbox are contiguous: the next to send is found by index.
        let from = ob.queue.front().map(|f| start.saturating_sub(f.seq) as usize).unwrap_or(0);
        for m in ob.queue.range(from.min(ob.queue.len())..).take(s.inflight.saturating_sub(inflight)) {
            let seq = self.sink_id.as_deref().map(|id| (id, m.seq));
            match self.client.publish(&m.topic, s.conn.qos, s.retain, m.payload.clone(), seq) {
                Ok(()) => {
                    snd.published(m.seq);
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        self.gauges.messages.fetch_add(sent, Ordering::Relaxed);
        Ok(())
    }
}

pub struct MqttSink {
    settings: SinkSettings,
    state: Option<SinkStateDir>,
    shared: Option<Arc<Shared>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    stopping: Arc<AtomicBool>,
    gauges: Arc<ConnectorGauges>,
    /// How long `close` waits for the outbox to drain.
    drain_timeout: Duration,
}

impl MqttSink {
    pub fn new(
        settings: SinkSettings,
        state: Option<SinkStateDir>,
        stopping: Arc<AtomicBool>,
        gauges: Arc<ConnectorGauges>,
    ) -> Self {
        MqttSink {
            settings,
            state,
            shared: None,
            thread: None,
            stopping,
            gauges,
            drain_timeout: Duration::from_secs(5),
        }
    }

    fn shared(&self) -> Result<&Arc<Shared>> {
        self.shared.as_ref().ok_or_else(|| EngineError::Internal("MQTT sink not started".into()))
    }

    /// Each row's topic and payload.
    fn split(&self, rows: &SinkRows<'_>) -> Result<Vec<(String, Vec<u8>)>> {
        let mut msgs = Vec::new();
        let constant = self.settings.topic.constant();
        for row in rows.iter() {
            let row = row?;
            let topic = match &constant {
                Some(t) => t.clone(),
                None => {
                    let mut t = String::new();
                    self.settings.topic.render_into(&row, &mut t);
                    t
                }
            };
            msgs.push((topic, row.payload().to_vec()));
        }
        Ok(msgs)
    }
}

impl SinkWriter for MqttSink {
    fn bind_state(&mut self, state: &OpenedState) {
        self.settings.conn.bind_state(state);
    }

    fn start(&mut self) -> Result<()> {
        if self.shared.is_some() {
            return Ok(());
        }
        let outbox = Outbox::open(self.state.as_ref(), self.settings.outbox_bytes, self.settings.policy)?;
        if !outbox.queue.is_empty() {
            tracing::info!(sink = %self.settings.conn.ctx, messages = outbox.queue.len(), "MQTT outbox recovered; sending it first");
        }
        // A clean session: after a reconnect the outbox itself sends what was not acknowledged.
        let (client, connection) = wire::open(&self.settings.conn, false, false, self.settings.inflight * 2 + 16)?;
        tracing::info!(sink = %self.settings.conn.ctx, client_id = %self.settings.conn.client_id, "MQTT connecting");
        self.gauges.set_connected_as(&self.settings.conn.client_id);
        let sink_id = self.state.is_some().then(|| format!("{}#{:016x}", self.settings.conn.client_id, outbox.id));
        let shared = Arc::new(Shared {
            outbox: SharedOutbox::new(outbox),
            sending: Mutex::default(),
            client,
            // Sequence numbers outlive a crash only in a durable outbox; only then are they sent.
            sink_id,
            stopping: self.stopping.clone(),
            gauges: self.gauges.clone(),
        });
        let s = self.settings.clone();
        let sh = shared.clone();
        let wake = shared.clone();
        self.thread = Some(spawn_sender(
            format!("mqtt-out {}", s.conn.client_id),
            s.conn.ctx.clone(),
            self.gauges.clone(),
            move || wake.outbox.changed.notify_all(),
            move || publish_loop(connection, &s, &sh),
        )?);
        self.shared = Some(shared);
        Ok(())
    }

    fn deliver(&mut self, rows: &SinkRows<'_>, end: u64) -> Result<()> {
        let msgs = self.split(rows)?;
        let shared = self.shared()?.clone();
        let publisher_alive = || match shared.gauges.failure() {
            Some(why) => {
                Err(EngineError::State(format!("{}: the MQTT publisher stopped: {why}", self.settings.conn.ctx)))
            }
            None => Ok(()),
        };
        let ctx = &self.settings.conn.ctx;
        let ob = shared.outbox.admit(ctx, end, msgs, &shared.stopping, &shared.gauges, publisher_alive)?;
        // Sent from here rather than by the publisher's next turn: it may be waiting on the
        // broker, and new output should not wait with it.
        shared.send_ready(&ob, &self.settings)
    }

    /// Waits (up to `drain_timeout`) for the outbox to empty, then stops the publisher. What is
    /// left stays in a durable outbox for the next start.
    fn close(&mut self) -> Result<()> {
        let Some(shared) = self.shared.take() else { return Ok(()) };
        let until = Instant::now() + self.drain_timeout;
        let left = shared.outbox.drain(until, || shared.gauges.connected.load(Ordering::Relaxed))?;
        if left > 0 {
            tracing::warn!(sink = %self.settings.conn.ctx, messages = left, durable = self.state.is_some(), "MQTT outbox not empty at stop");
        }
        shared.outbox.stop_sender(self.thread.take(), "MQTT publisher")
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(sh) = &self.shared {
            let _ = sh.outbox.stop_sender(self.thread.take(), "MQTT publisher");
        }
    }
}

/// Sends the outbox in order and removes what the broker acknowledged. After a reconnect it starts
/// again from the oldest unacknowledged message.
fn publish_loop(mut connection: WireConnection, s: &SinkSettings, sh: &Shared) -> Result<()> {
    let ctx = &s.conn.ctx;
    let mut backoff = Backoff::new();
    let mut acked: std::collections::BTreeSet<u64> = Default::default();
    let mut last_sync = Instant::now();
    loop {
        if sh.outbox.closing() {
            let mut ob = sh.lock()?;
            ob.sync_acks()?;
            sh.client.disconnect();
            return Ok(());
        }
        {
            let ob = sh.lock()?;
            sh.send_ready(&ob, s)?;
        }
        let mut acked_any = false;
        // New deliveries are sent by `deliver` itself; this wait only paces acknowledgements
        // and the check for `closing`.
        match connection.recv(Duration::from_millis(50)) {
            None | Some(WireEvent::Other) | Some(WireEvent::Message(_)) | Some(WireEvent::SubscribeRefused) => {}
            Some(WireEvent::Connected { .. }) => {
                {
                    // Held while the marker is queued, so no `deliver` can slip a publish in front.
                    let mut snd = sh.lock_sending()?;
                    snd.reconnected();
                    if let Err(e) = sh.client.marker() {
                        tracing::warn!(sink = %ctx, error = %e, "cannot queue the reconnect marker; sending without it");
                        snd.ready();
                    }
                }
                backoff.reset();
                acked.clear();
                sh.gauges.connected.store(true, Ordering::Relaxed);
                sh.gauges.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sink = %ctx, "MQTT connected");
            }
            Some(WireEvent::Marker) => {
                let mut snd = sh.lock_sending()?;
                if snd.draining {
                    // Every stray publish is out; from here packet ids map to our requests again.
                    snd.ready();
                }
            }
            Some(WireEvent::Sent(pkid)) => {
                // A stray from before the reconnect maps to nothing: it is sent again in order,
                // and its acknowledgement is ignored.
                if let Some(seq) = sh.lock_sending()?.sent(pkid, s.conn.qos == QoS::AtMostOnce) {
                    acked.insert(seq);
                    acked_any = true;
                }
            }
            Some(WireEvent::Acked(pkid)) => {
                if let Some(seq) = sh.lock_sending()?.acked(pkid) {
                    acked.insert(seq);
                    acked_any = true;
                }
            }
            Some(WireEvent::Error(e)) => {
                let was_connected = sh.lock_sending()?.disconnected();
                if was_connected {
                    tracing::warn!(sink = %ctx, error = %e, "MQTT connection lost; output waits in the outbox");
                }
                sh.gauges.connected.store(false, Ordering::Relaxed);
                sh.gauges.connect_errors.fetch_add(1, Ordering::Relaxed);
                backoff.sleep_unless(|| sh.outbox.closing());
            }
        }
        if acked_any {
            let mut ob = sh.lock()?;
            // The contiguous acknowledged prefix leaves the outbox.
            let mut through = ob.queue.front().map(|m| m.seq).unwrap_or(0);
            while acked.remove(&through) {
                through += 1;
            }
            ob.acked_through(through);
            acked.retain(|q| *q >= through);
            ob.publish_gauges(&sh.gauges);
            if last_sync.elapsed() >= Duration::from_millis(200) || ob.queue.is_empty() {
                ob.sync_acks()?;
                last_sync = Instant::now();
            }
            sh.outbox.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reconnect race: `deliver` hands rumqttc message 7 after rumqttc dropped the old
    /// connection (and drained its queue) but before the publisher saw the error. After the
    /// reconnect that stray goes out first. Its packet id must not be taken for the first message
    /// we send again (5), or its acknowledgement would remove 5 from the outbox unsent.
    #[test]
    fn a_stray_publish_after_a_reconnect_takes_no_message_s_packet_id() {
        let mut snd = Sending::default();
        snd.ready();
        for seq in 5..8 {
            snd.published(seq);
        }
        assert!(snd.disconnected());
        // Reconnect: rumqttc sends the stray (7) with packet id 1 before the marker.
        snd.reconnected();
        assert!(!snd.connected, "nothing is sent while strays may be queued");
        assert_eq!(snd.sent(1, false), None);
        snd.ready(); // the marker is out
                     // We send again from the oldest unacknowledged: 5, 6, 7 get packet ids 2, 3, 4.
        for seq in 5..8 {
            snd.published(seq);
        }
        for pkid in 2..5 {
            assert_eq!(snd.sent(pkid, false), None);
        }
        // The stray's acknowledgement removes nothing; ours map to the right messages.
        assert_eq!(snd.acked(1), None);
        assert_eq!(snd.acked(2), Some(5));
        assert_eq!(snd.acked(4), Some(7));
        assert_eq!(snd.acked(3), Some(6));
    }
}
