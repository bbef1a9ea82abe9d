//! MQTT ingest beside the broker alone: the same QoS 1 messages from the same concurrent
//! publishers, received once by `mosquitto_sub` and once by a durable, encrypted `eddyd run`
//! pipeline (an MQTT source, the WAL and checkpoints on, rows printed by a console sink). Both
//! receivers print one line per message, which the harness timestamps as it reads it, so rate
//! and latency (publish → line read) are measured the same way for both. Runs at saturation and
//! at a steady rate; prints a Markdown table.
//!
//! Then catch-up: each receiver subscribes with a persistent session and goes away, the
//! publishers queue `--backlog` messages for it at the broker, and the receiver comes back and
//! drains them (for at most 120 s), with Mosquitto's default in-flight window (20 messages per
//! client) and with 1,000.
//!
//! Needs Mosquitto's `mosquitto` and `mosquitto_sub` and `target/release/eddyd`:
//! `cargo run --release -p eddy-benches --bin mqtt_ingest -- [--messages N] [--publishers P] [--rate MSGS_PER_S] [--backlog N]`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_benches::mqtt::{broker, broker_with, now_us, publish_n, Kill};
use eddy_benches::{eddyd_bin, pct, proc_usage};
use rumqttc::QoS;

/// What one receiver did with `n` messages.
struct Received {
    latencies_us: Vec<u64>,
    /// From the first publish to the last line read.
    took: Duration,
    /// Lines that repeated a message already read.
    repeats: usize,
}

/// Publishes `n` messages to `topic` from `publishers` concurrent clients (`rate` msgs/s in all,
/// 0: as fast as they go) while reading `lines` (one per message, carrying `sent_us`), until `n`
/// lines or 60 s.
fn run(lines: impl BufRead + Send, port: u16, topic: &str, n: usize, publishers: usize, rate: u64) -> Result<Received> {
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<Received> {
        let pubs: Vec<_> =
            (0..publishers).map(|k| s.spawn(move || publish_share(port, topic, n, publishers, k, rate))).collect();
        let reader = s.spawn(move || read_until(lines, n, t0 + Duration::from_secs(120)));
        for p in pubs {
            p.join().map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
        }
        let (latencies_us, last, repeats) = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        Ok(Received { latencies_us, took: last.duration_since(t0), repeats })
    })
}

/// Publisher `k` of `publishers`: its share of messages `0..n`, at its share of `rate`.
fn publish_share(port: u16, topic: &str, n: usize, publishers: usize, k: usize, rate: u64) -> Result<()> {
    let range = (n * k / publishers)..(n * (k + 1) / publishers);
    publish_n(port, topic, QoS::AtLeastOnce, range, rate / publishers as u64)
}

/// Reads lines until `n` distinct measured messages (probes skipped; a repeat is counted apart) or
/// `deadline` (checked per line); returns their latencies, when the last one was read, and how
/// many lines repeated a message already read.
fn read_until(lines: impl BufRead, n: usize, deadline: Instant) -> (Vec<u64>, Instant, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut repeats = 0;
    let mut last = Instant::now();
    for line in lines.lines() {
        let Ok(line) = line else { break };
        let Some(seq) = field(&line, "seq") else { continue };
        if seq >= PROBE_SEQ {
            continue;
        }
        if !seen.insert(seq) {
            repeats += 1;
            continue;
        }
        if let Some(sent) = field(&line, "sent_us") {
            lat.push(now_us().saturating_sub(sent));
            last = Instant::now();
            if lat.len() >= n || last > deadline {
                break;
            }
        }
    }
    (lat, last, repeats)
}

/// Sequence numbers of probe messages, which the measurement skips.
const PROBE_SEQ: u64 = 1 << 40;

/// A number after `name` in a line of JSON (`mosquitto_sub`) or of the console sink (`name=…`).
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)? + name.len();
    let digits: String =
        line[at..].chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Reads lines of a child's stdout, the child killed when it is dropped.
fn spawn_lines(mut cmd: Command) -> Result<(Kill, BufReader<std::process::ChildStdout>)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("spawn")?;
    let out = child.stdout.take().context("no stdout")?;
    Ok((Kill(child), BufReader::new(out)))
}

/// Waits until the receiver has subscribed: probes go to `topic` until one comes out of `lines`.
fn wait_subscribed(lines: &mut impl BufRead, port: u16, topic: &str) -> Result<()> {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let prober = s.spawn(|| -> Result<()> {
            let t0 = Instant::now();
            for k in 0.. {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    bail!("the receiver never subscribed to {topic}");
                }
                let probe = PROBE_SEQ as usize + k;
                publish_n(port, topic, QoS::AtLeastOnce, probe..probe + 1, 0)?;
            }
            Ok(())
        });
        let mut line = String::new();
        while !prober.is_finished() {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                bail!("the receiver exited");
            }
            if field(&line, "seq").is_some_and(|q| q >= PROBE_SEQ) {
                break;
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().map_err(|_| anyhow::anyhow!("the prober panicked"))?
    })
}

fn row(path: &str, rate: u64, r: &mut Received, n: usize, cpu: Option<f64>) -> String {
    let got = r.latencies_us.len() as f64 / r.took.as_secs_f64();
    let lost = arrival(r.latencies_us.len(), n, r.repeats);
    let pace = if rate == 0 { "as fast as they go".to_string() } else { format!("{rate}/s") };
    let cpu = cpu.map(|c| format!("{:.0}%", c * 100.0)).unwrap_or_else(|| "—".into());
    format!(
        "| {path}{lost} | {pace} | {got:.0} | {:.2} ms | {:.2} ms | {cpu} |",
        pct(&mut r.latencies_us, 0.5),
        pct(&mut r.latencies_us, 0.99)
    )
}

/// A note when not every message arrived exactly once.
fn arrival(got: usize, n: usize, repeats: usize) -> String {
    let mut note = String::new();
    if got < n {
        note += &format!(" ({got} of {n} arrived)");
    }
    if repeats > 0 {
        note += &format!(" ({repeats} repeated)");
    }
    note
}

/// The two receivers, started by one command each (the same persistent session every time).
#[derive(Clone, Copy)]
enum Receiver {
    MosquittoSub,
    Eddyd,
}

impl Receiver {
    /// A short name for topics, client ids and directories.
    fn slug(self) -> &'static str {
        match self {
            Receiver::MosquittoSub => "sub",
            Receiver::Eddyd => "eddyd",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Receiver::MosquittoSub => "mosquitto_sub",
            Receiver::Eddyd => "eddyd, durable + encrypted",
        }
    }

    /// Starts the receiver on `prefix/#` (state, if any, in `dir`); returns it and its lines.
    fn start(self, port: u16, prefix: &str, dir: &Path, key: &Path) -> Result<(Kill, BufReader<ChildStdout>)> {
        let cmd = match self {
            Receiver::MosquittoSub => {
                let mut cmd = Command::new("mosquitto_sub");
                let id = format!("bench-{prefix}");
                cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-c", "-i", &id]);
                cmd.args(["-t", &format!("{prefix}/#")]);
                cmd
            }
            Receiver::Eddyd => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(
                    dir.join("p.sql"),
                    format!(
                        "CREATE SOURCE s (device_id VARCHAR NOT NULL, seq BIGINT, value DOUBLE, sent_us BIGINT) \
                         WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:{port}', topic = '{prefix}/#', qos = '1', \
                         client_id = 'eddy-{prefix}');\n\
                         CREATE SINK k AS SELECT device_id, seq, value, sent_us FROM s WITH (connector = 'console');\n"
                    ),
                )?;
                let mut cmd = Command::new(eddyd_bin()?);
                cmd.args(["run", "--pipeline", "p.sql", "--state-dir", "state", "--key-file"])
                    .arg(key)
                    .current_dir(dir);
                cmd
            }
        };
        spawn_lines(cmd).with_context(|| format!("starting {}", self.name()))
    }
}

/// Catch-up from a backlog: the receiver's persistent session is made, the receiver goes away,
/// `n` messages are queued for it, and it comes back. Returns its rate over the drain and a note
/// on what did not arrive exactly once.
fn catch_up(
    receiver: Receiver,
    work: &Path,
    key: &Path,
    n: usize,
    publishers: usize,
    max_inflight: u32,
) -> Result<(f64, String)> {
    let dir = work.join(format!("backlog-{}-{max_inflight}", receiver.slug()));
    std::fs::create_dir_all(&dir)?;
    let (_broker, port) = broker_with(&dir, max_inflight)?;
    let topic = "backlog/gw";
    {
        let (child, mut lines) = receiver.start(port, "backlog", &dir, key)?;
        wait_subscribed(&mut lines, port, topic)?;
        drop(child);
    }
    std::thread::scope(|s| -> Result<()> {
        let pubs: Vec<_> =
            (0..publishers).map(|k| s.spawn(move || publish_share(port, topic, n, publishers, k, 0))).collect();
        for p in pubs {
            p.join().map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
        }
        Ok(())
    })?;
    let t0 = Instant::now();
    let (_child, lines) = receiver.start(port, "backlog", &dir, key)?;
    let (lat, last, repeats) = read_until(lines, n, t0 + Duration::from_secs(120));
    Ok((lat.len() as f64 / last.duration_since(t0).as_secs_f64(), arrival(lat.len(), n, repeats)))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--messages", 200_000);
    let publishers: usize = arg(&args, "--publishers", 5).max(1);
    let steady: u64 = arg(&args, "--rate", 5_000);
    let backlog: usize = arg(&args, "--backlog", 200_000);
    let work = std::env::temp_dir().join(format!("eddy-mqtt-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (_broker, port) = broker(&work)?;
    let eddyd = eddyd_bin()?;
    let key = work.join("state.key");
    let keygen = Command::new(&eddyd).arg("keygen").output()?;
    std::fs::write(&key, &keygen.stdout)?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    println!(
        "{n} QoS 1 messages of ~80 bytes from {publishers} publishers; loopback Mosquitto; {} cores\n",
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)
    );
    println!("| receiver | publish rate | msgs/s received | latency p50 | latency p99 | receiver CPU (of a core) |");
    println!("|---|---|---|---|---|---|");
    for (round, rate) in [0u64, steady].into_iter().enumerate() {
        let count = if rate == 0 { n } else { n.min(rate as usize * 10) };
        for receiver in [Receiver::MosquittoSub, Receiver::Eddyd] {
            let prefix = format!("live{round}{}", receiver.slug());
            let (child, mut lines) = receiver.start(port, &prefix, &work.join(&prefix), &key)?;
            let topic = format!("{prefix}/gw");
            wait_subscribed(&mut lines, port, &topic)?;
            let (cpu0, _, _) = proc_usage(child.0.id());
            let mut r = run(&mut lines, port, &topic, count, publishers, rate)?;
            let (cpu1, rss, _) = proc_usage(child.0.id());
            let cpu = (cpu1 - cpu0) / r.took.as_secs_f64();
            let name = match receiver {
                Receiver::Eddyd => format!("{} ({rss:.0} MiB peak RSS)", receiver.name()),
                Receiver::MosquittoSub => receiver.name().to_string(),
            };
            println!("{}", row(&name, rate, &mut r, count, Some(cpu)));
        }
    }
    println!("\nCatch-up: {backlog} messages queued at the broker for each receiver's persistent session, drained for at most 120 s\n");
    println!("| receiver | broker max_inflight_messages | msgs/s drained |");
    println!("|---|---|---|");
    for max_inflight in [20, 1000] {
        for receiver in [Receiver::MosquittoSub, Receiver::Eddyd] {
            let (rate, note) = catch_up(receiver, &work, &key, backlog, publishers, max_inflight)?;
            println!("| {}{note} | {max_inflight} | {rate:.0} |", receiver.name());
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
