//! Kafka end-to-end benchmark against a real Apache Kafka broker on loopback (started here from
//! `target/kafka-libs`, see `scripts/kafka-libs.sh`): records/s and latency p50/p99 of a
//! durable, exactly-once `eddyd run` (Kafka in → Kafka out, transactions per checkpoint) beside a
//! plain consumer reading the same topic; eddyd's CPU, peak RSS and the bytes it wrote to the
//! state dir's filesystem per input byte (its input is not copied to the WAL).
//! Needs `target/release/eddyd`; prints a Markdown table. Run:
//! `cargo run --release -p eddy-benches --bin kafka_bench -- [--records N] [--rate RECORDS_PER_S]`.

#[path = "../../../daemon/tests/support/kafka.rs"]
mod kafka_broker;
/// Loopback ports outside the ephemeral range, as the tests take them (`kafka_broker` uses it).
#[path = "../../../daemon/tests/support/ports.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use eddy_benches::{eddyd_bin, pct, proc_usage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn records(from: u64, n: u64) -> Vec<(i32, String)> {
    (from..from + n)
        .map(|i| {
            let dev = i % 300;
            let ts = 1_700_000_000_000u64 + i;
            (
                (dev % 3) as i32,
                format!(
                    "{{\"device_id\":\"dev-{dev:04}\",\"seq\":{i},\"temp\":{}.5,\"ts\":{ts},\"sent_us\":SENT}}",
                    20 + i % 9
                ),
            )
        })
        .collect()
}

/// A read_committed consumer of every partition of `topic` from the start.
fn reader(bootstrap: &str, topic: &str) -> Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{topic}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Reads until `n` records arrived (or `limit` passed): the time from `t0` to the last one, and
/// each record's latency from its `sent_us`.
fn drain(c: &BaseConsumer, n: u64, t0: Instant, limit: Duration) -> (u64, Duration, Vec<u64>) {
    let mut got = 0;
    let mut last = t0;
    let mut lat = Vec::new();
    while got < n && t0.elapsed() < limit {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got += 1;
            last = Instant::now();
            let p = m.payload().unwrap_or_default();
            if let Some(i) = p.windows(9).position(|w| w == b"\"sent_us\"") {
                let digits: String =
                    p[i + 10..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
                if let Ok(sent) = digits.parse::<u64>() {
                    lat.push(now_us().saturating_sub(sent));
                }
            }
        }
    }
    (got, last - t0, lat)
}

fn produce_paced(broker: &kafka_broker::KafkaBroker, topic: &str, recs: Vec<(i32, String)>, rate: u64) {
    let chunk = (rate / 100).max(1) as usize;
    let producer = broker.producer();
    let t0 = Instant::now();
    for (k, part) in recs.chunks(chunk).enumerate() {
        let stamped: Vec<(i32, String)> =
            part.iter().map(|(p, r)| (*p, r.replace("SENT", &now_us().to_string()))).collect();
        kafka_broker::send_all(&producer, topic, &stamped);
        let due = t0 + Duration::from_millis(10 * (k as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--records", 300_000);
    let rate = arg(&args, "--rate", 5_000);
    let work = std::env::temp_dir().join(format!("eddy-kafka-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let broker = kafka_broker::KafkaBroker::start(&work, 3);
    let bootstrap = broker.bootstrap();
    let eddyd = eddyd_bin()?;
    let backlog: Vec<(i32, String)> =
        records(0, n).into_iter().map(|(p, r)| (p, r.replace("SENT", &now_us().to_string()))).collect();
    let input_bytes: u64 = backlog.iter().map(|(_, r)| r.len() as u64).sum();
    broker.produce("in", &backlog);
    broker.ensure_topic("out");
    println!(
        "{n} JSON records (~{} bytes) on 3 partitions, then {} records at {rate}/s; one loopback Kafka 4.1 broker; {} cores\n",
        input_bytes / n.max(1),
        rate * 10,
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)
    );
    println!("| path | records/s (backlog) | latency p50 at {rate}/s | latency p99 | CPU | peak RSS | bytes written per input byte |");
    println!("|---|---|---|---|---|---|---|");

    // The broker alone: a consumer reading the same topic.
    let c = reader(&bootstrap, "in")?;
    let (got, took, _) = drain(&c, n, Instant::now(), Duration::from_secs(300));
    let alone_rate = got as f64 / took.as_secs_f64();
    let paced = records(n, rate * 10);
    let live = paced.len() as u64;
    let b = &broker;
    let lat_alone = std::thread::scope(|s| {
        let h = s.spawn(|| drain(&c, live, Instant::now(), Duration::from_secs(120)).2);
        produce_paced(b, "in", paced, rate);
        h.join().unwrap_or_default()
    });
    let mut lat_alone = lat_alone;
    println!(
        "| consumer alone (read_committed) | {alone_rate:.0} | {:.2} ms | {:.2} ms | — | — | — |",
        pct(&mut lat_alone, 0.5),
        pct(&mut lat_alone, 0.99)
    );

    // eddyd: Kafka → passthrough → Kafka, durable, exactly-once.
    let dir = work.join("eddyd");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("p.sql"),
        format!(
            "CREATE SOURCE s (device_id VARCHAR NOT NULL, seq BIGINT, temp DOUBLE, ts TIMESTAMP(3) NOT NULL, sent_us BIGINT, \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', topic = 'in', 'startup.mode' = 'earliest');\n\
             CREATE SINK k AS SELECT device_id, seq, temp, sent_us FROM s \
             WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', topic = 'out', key = 'device_id');\n"
        ),
    )?;
    let out = reader(&bootstrap, "out")?;
    let t0 = Instant::now();
    let child = Kill(
        Command::new(&eddyd)
            .args([
                "run",
                "--pipeline",
                "p.sql",
                "--state-dir",
                "state",
                "--no-encryption",
                "--checkpoint-interval-ms",
                "100",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = child.0.id();
    let total = n + live;
    let (got, took, _) = drain(&out, total, t0, Duration::from_secs(600));
    let eddyd_rate = got as f64 / took.as_secs_f64();
    let (cpu0, _, _) = proc_usage(pid);
    let paced = records(n + live, rate * 10);
    let b = &broker;
    let mut lat = std::thread::scope(|s| {
        let h = s.spawn(|| drain(&out, live, Instant::now(), Duration::from_secs(120)).2);
        produce_paced(b, "in", paced, rate);
        h.join().unwrap_or_default()
    });
    let (cpu1, rss, written) = proc_usage(pid);
    let cpu_share = (cpu1 - cpu0) / 10.0;
    let lost = if got < total { format!(" ({got} of {total} arrived)") } else { String::new() };
    println!(
        "| eddyd, durable, exactly-once (checkpoint every 100 ms){lost} | {eddyd_rate:.0} | {:.2} ms | {:.2} ms | {:.0}% of a core at {rate}/s | {rss:.0} MiB | {:.3} |",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        cpu_share * 100.0,
        written as f64 / (input_bytes as f64 * (total + live) as f64 / n as f64)
    );
    drop(child);
    drop(broker);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
