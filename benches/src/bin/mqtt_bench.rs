//! MQTT end-to-end benchmark against a real Mosquitto on loopback: messages/s and latency p50/p99
//! from publish to the result arriving at a subscriber, through `eddyd run` (a passthrough
//! pipeline, MQTT in → MQTT out) at QoS 0 and 1, with and without durable state, beside Mosquitto's
//! own publish → subscribe rate on the same machine; eddyd's RSS and CPU per 10k msgs/s.
//! Needs `mosquitto` installed and `target/release/eddyd` built. Prints a Markdown table; run:
//! `cargo run --release -p eddy-benches --bin mqtt_bench -- [--messages N] [--rate MSGS_PER_S]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use eddy_benches::mqtt::{broker, now_us, payload_bytes, publish_n, Kill};
use eddy_benches::{eddyd_bin, pct, proc_usage};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Subscribes to `filter`, then runs `publish`; collects (receive time, payload) until `n` messages
/// arrived or 60 s passed. Returns the latencies in µs and the time from first publish to last receive.
fn measure(
    port: u16,
    filter: &str,
    qos: QoS,
    n: usize,
    publish: impl FnOnce() -> Result<()> + Send,
) -> Result<(Vec<u64>, Duration)> {
    let mut o = MqttOptions::new(format!("bench-sub-{}", now_us()), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 1024);
    client.subscribe(filter, qos)?;
    // Wait for the SUBACK so nothing is published before the subscription exists.
    loop {
        match conn.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            _ => bail!("no SUBACK"),
        }
    }
    let t0 = Instant::now();
    let publisher = std::thread::scope(|s| -> Result<(Vec<u64>, Instant)> {
        let h = s.spawn(publish);
        let mut lat = Vec::with_capacity(n);
        let mut last = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(60);
        while lat.len() < n && Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = conn.recv_timeout(Duration::from_millis(200)) {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if let Some(sent) = v["sent_us"].as_u64() {
                    lat.push(now_us().saturating_sub(sent));
                    last = Instant::now();
                }
            }
        }
        h.join().map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        Ok((lat, last))
    })?;
    let (lat, last) = publisher;
    Ok((lat, last.duration_since(t0)))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // 0: saturation (throughput); otherwise a steady rate (latency under a normal load).
    let rate: u64 =
        args.iter().position(|a| a == "--rate").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(0);
    let work = std::env::temp_dir().join(format!("eddy-mqtt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (_broker, port) = broker(&work)?;
    let eddyd = eddyd_bin()?;
    let pace = if rate == 0 { "as fast as the publisher goes".to_string() } else { format!("at {rate} msgs/s") };
    println!(
        "{n} messages of ~80 bytes, published {pace}; loopback Mosquitto; {} cores\n",
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)
    );
    println!("| path | QoS | msgs/s | latency p50 | latency p99 | eddyd CPU per 10k msgs/s | eddyd peak RSS | bytes written per input byte |");
    println!("|---|---|---|---|---|---|---|---|");
    for (qos, q) in [(QoS::AtMostOnce, 0), (QoS::AtLeastOnce, 1)] {
        let (mut lat, took) = measure(port, "base/#", qos, n, move || publish_n(port, "base/x", qos, 0..n, rate))?;
        let got = lat.len() as f64 / took.as_secs_f64();
        println!(
            "| Mosquitto alone (pub → sub) | {q} | {got:.0} | {:.2} ms | {:.2} ms | — | — | — |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
        for durable in [false, true] {
            if durable && q == 0 {
                continue;
            }
            let dir = work.join(format!("eddyd-q{q}-{durable}"));
            std::fs::create_dir_all(&dir)?;
            let topic_in = format!("in{q}{durable}");
            let sql = format!(
                "CREATE SOURCE s (device_id VARCHAR NOT NULL, seq BIGINT, value DOUBLE, sent_us BIGINT) \
                 WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:{port}', topic = '{topic_in}/#', qos = '{q}', queue_messages = '4096');\n\
                 CREATE SINK k AS SELECT device_id, seq, value, sent_us FROM s \
                 WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:{port}', topic = 'out{q}{durable}/{{device_id}}', qos = '{q}', inflight = '1000');\n"
            );
            std::fs::write(dir.join("p.sql"), sql)?;
            let mut cmd = Command::new(&eddyd);
            cmd.args(["run", "--pipeline", "p.sql"]).current_dir(&dir).stdout(Stdio::null()).stderr(Stdio::null());
            if durable {
                cmd.args(["--state-dir", "state", "--no-encryption", "--checkpoint-interval-ms", "50"]);
            }
            let child = Kill(cmd.spawn()?);
            std::thread::sleep(Duration::from_millis(1500));
            let pid = child.0.id();
            let (cpu0, _, written0) = proc_usage(pid);
            let topic = format!("{topic_in}/gw");
            let (mut lat, took) =
                measure(port, &format!("out{q}{durable}/#"), qos, n, move || publish_n(port, &topic, qos, 0..n, rate))?;
            let (cpu1, rss, written1) = proc_usage(pid);
            let written = (written1 - written0) as f64 / payload_bytes(n) as f64;
            let got = lat.len() as f64 / took.as_secs_f64();
            let cpu_per_10k = (cpu1 - cpu0) / took.as_secs_f64() / (got / 10_000.0);
            let path = if durable {
                "eddyd, durable (WAL + checkpoint every 50 ms, exactly-once sink)"
            } else {
                "eddyd, no state dir"
            };
            let lost = if lat.len() < n { format!(" ({} of {n} arrived)", lat.len()) } else { String::new() };
            println!(
                "| {path}{lost} | {q} | {got:.0} | {:.2} ms | {:.2} ms | {:.0}% of a core | {rss:.0} MiB | {written:.2} |",
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99),
                cpu_per_10k * 100.0
            );
            drop(child);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
