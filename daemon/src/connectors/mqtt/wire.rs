//! One face for MQTT 3.1.1 and MQTT 5: rumqttc has a client per protocol version; the source and
//! the sink see only [`WireClient`], [`WireConnection`] and [`WireEvent`]. Owns the translation
//! between the two protocol modules; no policy (acks, ordering) lives here.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::QoS;

use super::settings::Connection;
use eddy_engine::Result;

/// A received message, with what it takes to acknowledge it.
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    ack: Ack,
}

#[cfg(test)]
impl Message {
    /// A QoS 1 message as a 3.1.1 broker delivers it.
    pub fn for_test(topic: &str, payload: &[u8], pkid: u16, dup: bool) -> Message {
        let mut p = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        p.pkid = pkid;
        p.dup = dup;
        Message {
            topic: topic.into(),
            payload: p.payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup,
            pkid,
            ack: Ack::V4(p),
        }
    }
}

enum Ack {
    V4(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

/// What a connection reports, protocol aside.
#[allow(clippy::large_enum_variant)] // nearly every event is a message; boxing would allocate per message
pub enum WireEvent {
    Connected {
        session_present: bool,
    },
    SubscribeRefused,
    Message(Message),
    /// An outgoing publish got its packet id (in the order the publishes were requested).
    Sent(u16),
    /// The broker acknowledged an outgoing publish (PUBACK, or PUBCOMP at QoS 2).
    Acked(u16),
    /// A [`WireClient::marker`] request went out: every request made before it has too.
    Marker,
    Other,
    Error(String),
}

#[derive(Clone)]
pub enum WireClient {
    V4(rumqttc::Client),
    V5(v5::Client),
}

#[allow(clippy::large_enum_variant)] // one per connection, made once and never moved in a loop
pub enum WireConnection {
    V4(rumqttc::Connection),
    V5(v5::Connection),
}

fn v5_qos(q: QoS) -> v5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn v4_qos(q: v5::mqttbytes::QoS) -> QoS {
    match q {
        v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Opens a client for `conn` (it connects when its connection is first polled). `persistent`: the
/// broker keeps the session (3.1.1: clean session off; 5: clean start off and a session that does
/// not expire). `manual_acks`: incoming QoS 1/2 messages are acknowledged by [`WireClient::ack`].
pub fn open(
    conn: &Connection,
    persistent: bool,
    manual_acks: bool,
    capacity: usize,
) -> Result<(WireClient, WireConnection)> {
    if conn.mqtt5 {
        let mut o = v5::MqttOptions::new(conn.client_id.clone(), conn.host.clone(), conn.port);
        o.set_keep_alive(conn.keep_alive);
        o.set_clean_start(!persistent);
        if persistent {
            o.set_session_expiry_interval(Some(u32::MAX));
        }
        let max = (conn.max_message_bytes + 64 * 1024) as u32;
        o.set_max_packet_size(Some(max));
        o.set_manual_acks(manual_acks);
        if let Some(u) = &conn.username {
            o.set_credentials(u.clone(), conn.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default());
        }
        if let Some(t) = conn.transport()? {
            o.set_transport(t);
        }
        let (c, k) = v5::Client::new(o, capacity);
        Ok((WireClient::V5(c), WireConnection::V5(k)))
    } else {
        let mut o = rumqttc::MqttOptions::new(conn.client_id.clone(), conn.host.clone(), conn.port);
        o.set_keep_alive(conn.keep_alive);
        o.set_clean_session(!persistent);
        o.set_max_packet_size(conn.max_message_bytes + 64 * 1024, conn.max_message_bytes + 64 * 1024);
        o.set_request_channel_capacity(capacity);
        o.set_manual_acks(manual_acks);
        if let Some(u) = &conn.username {
            o.set_credentials(u.clone(), conn.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default());
        }
        if let Some(t) = conn.transport()? {
            o.set_transport(t);
        }
        let (c, k) = rumqttc::Client::new(o, capacity);
        Ok((WireClient::V4(c), WireConnection::V4(k)))
    }
}

impl WireClient {
    pub fn subscribe(&self, topic: &str, qos: QoS) -> std::result::Result<(), String> {
        match self {
            WireClient::V4(c) => c.try_subscribe(topic, qos).map_err(|e| e.to_string()),
            WireClient::V5(c) => {
                // Retained messages only for a subscription the session did not have yet.
                let mut f = v5::mqttbytes::v5::Filter::new(topic, v5_qos(qos));
                f.retain_forward_rule = v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                c.try_subscribe_many(vec![f]).map_err(|e| e.to_string())
            }
        }
    }

    /// Acknowledges `m` (never blocks; the request queue is sized for every message in flight).
    pub fn ack(&self, m: &Message) -> std::result::Result<(), String> {
        match (self, &m.ack) {
            (WireClient::V4(c), Ack::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (WireClient::V5(c), Ack::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("a message acknowledged on a client of the other protocol version".into()),
        }
    }

    /// Publishes `payload`. With `seq` (a durable outbox's sink id and sequence number) an MQTT 5
    /// message carries them as the user properties `eddy-sink` and `eddy-seq`: a message sent
    /// again after a reconnect or a crash has the same pair, so a consumer can drop repeats.
    pub fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        seq: Option<(&str, u64)>,
    ) -> std::result::Result<(), String> {
        match self {
            WireClient::V4(c) => c.try_publish(topic, qos, retain, payload).map_err(|e| e.to_string()),
            WireClient::V5(c) => match seq {
                None => c.try_publish(topic, v5_qos(qos), retain, payload).map_err(|e| e.to_string()),
                Some((sink, n)) => {
                    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                        user_properties: vec![("eddy-sink".into(), sink.into()), ("eddy-seq".into(), n.to_string())],
                        ..Default::default()
                    };
                    c.try_publish_with_properties(topic, v5_qos(qos), retain, payload, props).map_err(|e| e.to_string())
                }
            },
        }
    }

    /// Queues a marker behind every request made so far (an UNSUBSCRIBE of a topic nothing
    /// subscribes to; harmless to the broker): its [`WireEvent::Marker`] tells when they are out.
    pub fn marker(&self) -> std::result::Result<(), String> {
        const TOPIC: &str = "eddy/marker/unused";
        match self {
            WireClient::V4(c) => c.try_unsubscribe(TOPIC).map_err(|e| e.to_string()),
            WireClient::V5(c) => c.try_unsubscribe(TOPIC).map_err(|e| e.to_string()),
        }
    }

    pub fn disconnect(&self) {
        let _ = match self {
            WireClient::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            WireClient::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl WireConnection {
    /// The next event, or `None` after `timeout` without one.
    pub fn recv(&mut self, timeout: Duration) -> Option<WireEvent> {
        match self {
            WireConnection::V4(c) => {
                use rumqttc::{Event, Outgoing, Packet};
                Some(match c.recv_timeout(timeout).ok()? {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        WireEvent::Connected { session_present: a.session_present }
                    }
                    Ok(Event::Incoming(Packet::SubAck(s)))
                        if s.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
                    {
                        WireEvent::SubscribeRefused
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => WireEvent::Message(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        qos: p.qos,
                        retain: p.retain,
                        dup: p.dup,
                        pkid: p.pkid,
                        ack: Ack::V4(p),
                    }),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => WireEvent::Sent(pkid),
                    Ok(Event::Outgoing(Outgoing::Unsubscribe(_))) => WireEvent::Marker,
                    Ok(Event::Incoming(Packet::PubAck(a))) => WireEvent::Acked(a.pkid),
                    Ok(Event::Incoming(Packet::PubComp(a))) => WireEvent::Acked(a.pkid),
                    Ok(_) => WireEvent::Other,
                    Err(e) => WireEvent::Error(e.to_string()),
                })
            }
            WireConnection::V5(c) => {
                use v5::mqttbytes::v5::Packet;
                use v5::Event;
                Some(match c.recv_timeout(timeout).ok()? {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        WireEvent::Connected { session_present: a.session_present }
                    }
                    Ok(Event::Incoming(Packet::SubAck(s)))
                        if s.return_codes
                            .iter()
                            .any(|c| !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))) =>
                    {
                        WireEvent::SubscribeRefused
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => WireEvent::Message(Message {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.clone(),
                        qos: v4_qos(p.qos),
                        retain: p.retain,
                        dup: p.dup,
                        pkid: p.pkid,
                        ack: Ack::V5(p),
                    }),
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => WireEvent::Sent(pkid),
                    Ok(Event::Outgoing(rumqttc::Outgoing::Unsubscribe(_))) => WireEvent::Marker,
                    Ok(Event::Incoming(Packet::PubAck(a))) => WireEvent::Acked(a.pkid),
                    Ok(Event::Incoming(Packet::PubComp(a))) => WireEvent::Acked(a.pkid),
                    Ok(_) => WireEvent::Other,
                    Err(e) => WireEvent::Error(e.to_string()),
                })
            }
        }
    }
}
