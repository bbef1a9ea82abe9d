//! What the MQTT benchmarks share: a Mosquitto on loopback, and publishers of timestamped
//! telemetry (each payload carries `sent_us`, its publish time, for latency).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Mosquitto on a free loopback port with `dir/mosquitto.conf` (queues deep enough for a
/// benchmark's backlog, 1,000 QoS 1 messages in flight per client); returns it and its port.
pub fn broker(dir: &Path) -> Result<(Kill, u16)> {
    broker_with(dir, 1000)
}

/// [`broker`] with `max_inflight_messages` (Mosquitto's own default is 20).
pub fn broker_with(dir: &Path, max_inflight: u32) -> Result<(Kill, u16)> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages {max_inflight}\n"
        ),
    )?;
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto (apt-get install mosquitto)")?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("mosquitto did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Kill(child), port))
}

/// The payload of message `i`: a reading with its publish time.
fn payload(i: usize, sent_us: u64) -> String {
    format!("{{\"device_id\":\"dev-{}\",\"seq\":{i},\"value\":{}.5,\"sent_us\":{sent_us}}}", i % 16, i % 100)
}

/// Publishes messages `seq` (their numbers), as fast as possible (`rate` 0) or paced at `rate`
/// messages/s, and waits until the broker has acknowledged every QoS 1 message.
pub fn publish_n(port: u16, topic: &str, qos: QoS, seq: std::ops::Range<usize>, rate: u64) -> Result<()> {
    let mut o = MqttOptions::new(format!("bench-pub-{}-{}", now_us(), seq.start), "127.0.0.1", port);
    o.set_inflight(200);
    let (client, mut conn) = Client::new(o, 4096);
    let pump = std::thread::spawn(move || {
        let mut acked = 0usize;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
        acked
    });
    let t0 = Instant::now();
    for (k, i) in seq.enumerate() {
        if rate > 0 && k % 50 == 0 {
            let due = t0 + Duration::from_secs_f64(k as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        client.publish(topic, qos, false, payload(i, now_us()))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    client.disconnect()?;
    let _ = pump.join();
    Ok(())
}

/// The payload bytes `publish_n` sends for messages `0..n` (`sent_us` has 16 digits).
pub fn payload_bytes(n: usize) -> u64 {
    (0..n).map(|i| payload(i, 1u64 << 50).len() as u64).sum()
}
