//! Shared helpers for the daemon's integration tests: a real Mosquitto broker on a free loopback
//! port, `eddyd` processes that are killed when dropped, and polling with a deadline.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EDDYD: &str = env!("CARGO_BIN_EXE_eddyd");

/// Polls `ok` until it holds or `limit` passes.
pub fn wait_for(mut ok: impl FnMut() -> bool, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

#[path = "ports.rs"]
mod ports;
pub use ports::free_port;

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
}

/// The broker binary: on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH).
fn mosquitto_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("mosquitto"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// Whether Mosquitto is installed; CI installs it, so there its absence is a failure.
pub fn have_mosquitto() -> bool {
    let found = mosquitto_bin().exists()
        && Command::new("mosquitto_pub").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "mosquitto is not installed (CI installs it in .ci/run)");
        eprintln!("mosquitto is not installed: skipping (apt-get install mosquitto mosquitto-clients)");
    }
    found
}

/// A temporary directory with a Mosquitto broker running in it; `None` (the test is skipped)
/// where Mosquitto is not installed.
pub fn broker_in_tempdir() -> Option<(tempfile::TempDir, Broker)> {
    if !have_mosquitto() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    Some((tmp, broker))
}

/// A Mosquitto broker with persistence in its own directory.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let port = free_port();
        let dir = dir.join("broker");
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            // `user root`: as root, Mosquitto would otherwise switch to its own user, which cannot
            // write the persistence file into this private directory (and would lose sessions).
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 100\nautosave_interval 1\n",
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker { port, dir, child: None };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_for(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), Duration::from_secs(10)),
            "mosquitto did not start"
        );
    }

    /// A graceful stop (SIGTERM: Mosquitto saves its sessions and queues) and a start on the same port.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// A stop, the loss of everything the broker kept (its persistence file), and a start: as
    /// after a broker whose disk was replaced, or one that never persisted.
    pub fn restart_forgetting(&mut self) {
        self.stop();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "db") {
                std::fs::remove_file(p).unwrap();
            }
        }
        self.spawn();
    }

    /// Publishes one retained message at QoS 1.
    pub fn publish_retained(&self, topic: &str, payload: &str) {
        let ok = Command::new("mosquitto_pub")
            .args(["-p", &self.port.to_string(), "-q", "1", "-r", "-t", topic, "-m", payload])
            .status()
            .unwrap();
        assert!(ok.success(), "mosquitto_pub -r failed");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The client ids the broker saw connect, in order (from its log).
    pub fn connected_client_ids(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split_once("New client connected from ")?.1.split_once(" as ")?.1.split(' ').next())
            .map(str::to_string)
            .collect()
    }

    /// Publishes one message (any bytes) at QoS 1. A refused connection while the broker runs is
    /// retried a few times (the sandbox's loopback has refused one under load); a broker that
    /// exited fails at once, with its log.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) {
        let f = self.dir.join("payload.bin");
        std::fs::write(&f, payload).unwrap();
        for attempt in 0..5 {
            let ok = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1", "-t", topic, "-f"])
                .arg(&f)
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            let exited = self.child.as_mut().map(|c| c.try_wait().unwrap());
            if attempt == 4 || !matches!(exited, Some(None)) {
                panic!(
                    "mosquitto_pub failed (broker exit status: {exited:?}); broker log:\n{}",
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes `lines` (one message each) at QoS 1 with mosquitto_pub, which waits for every
/// acknowledgement before it exits.
pub fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    publish_lines_at(port, topic, "1", lines)
}

/// [`publish_lines`] at QoS `qos`.
pub fn publish_lines_at(port: u16, topic: &str, qos: &str, lines: &[String]) {
    let mut c = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-q", qos, "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = c.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(c.wait().unwrap().success(), "mosquitto_pub failed");
}

/// Runs `eddyd run --pipeline p.sql` in `dir` (no state dir) with metrics on `metrics_port`,
/// logging to `dir/eddyd.log`.
pub fn run_pipeline(dir: &Path, metrics_port: u16) -> Daemon {
    let log = std::fs::File::create(dir.join("eddyd.log")).unwrap();
    let child = Command::new(EDDYD)
        .args(["run", "--pipeline", "p.sql", "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .current_dir(dir)
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Daemon(child)
}

/// A persistent-session subscriber (mosquitto_sub) writing `topic payload` lines to a file; it is
/// started again if it exits (a broker restart).
pub struct Subscriber {
    port: u16,
    filter: String,
    out: PathBuf,
    child: Option<Child>,
    /// MQTT 5, printing each message's user properties too.
    v5: bool,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str, out: &Path) -> Subscriber {
        let mut s = Subscriber { port, filter: filter.into(), out: out.to_path_buf(), child: None, v5: false };
        s.ensure();
        s
    }

    /// An MQTT 5 subscriber, for [`Subscriber::tagged`].
    pub fn start_v5(port: u16, filter: &str, out: &Path) -> Subscriber {
        let mut s = Subscriber { port, filter: filter.into(), out: out.to_path_buf(), child: None, v5: true };
        s.ensure();
        s
    }

    /// (topic, user properties as `key:value` words, payload) received so far (MQTT 5 only).
    pub fn tagged(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (head, payload) = l.split_once('|')?;
                let (topic, props) = head.split_once(' ')?;
                Some((topic.to_string(), props.to_string(), payload.to_string()))
            })
            .collect()
    }

    pub fn ensure(&mut self) {
        if let Some(c) = &mut self.child {
            if c.try_wait().unwrap().is_none() {
                return;
            }
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.out).unwrap();
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-p", &self.port.to_string(), "-q", "1", "-c", "-i", "eddy-test-sub", "-t", &self.filter]);
        if self.v5 {
            // A persistent MQTT 5 session needs an expiry to outlive the connection.
            cmd.args(["-V", "mqttv5", "-x", "3600", "-F", "%t %P|%p"]);
        } else {
            cmd.arg("-v");
        }
        self.child = Some(cmd.stdout(out).stderr(Stdio::null()).spawn().expect("mosquitto_sub"));
        std::thread::sleep(Duration::from_millis(300));
    }

    /// (topic, payload) lines received so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        if self.v5 {
            return self.tagged().into_iter().map(|(t, _, p)| (t, p)).collect();
        }
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(t, p)| (t.to_string(), p.to_string())))
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An `eddyd` process, killed when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GETs `path` from eddyd's metrics endpoint.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let code = body.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The value of one metric line (`name{labels}`) from /metrics.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// A TCP proxy in front of the broker that can lose the acknowledgements of deliveries on the way
/// (as a flaky uplink would) — the client's PUBACKs (QoS 1) and the broker's PUBRELs (the second
/// half of a QoS 2 handshake) — and cut its connections; everything else passes through.
pub struct AckLosingProxy {
    pub port: u16,
    lose_acks: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl AckLosingProxy {
    pub fn start(broker_port: u16) -> AckLosingProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let lose_acks = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (lose, all) = (lose_acks.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                all.lock().unwrap().extend([client.try_clone().unwrap(), broker.try_clone().unwrap()]);
                let (mut c_in, mut b_out, lose_out) =
                    (client.try_clone().unwrap(), broker.try_clone().unwrap(), lose.clone());
                std::thread::spawn(move || {
                    forward_packets(&mut c_in, &mut b_out, PUBACK, &lose_out);
                    let _ = c_in.shutdown(Shutdown::Both);
                    let _ = b_out.shutdown(Shutdown::Both);
                });
                let (mut b_in, mut c_out, lose) = (broker, client, lose.clone());
                std::thread::spawn(move || {
                    forward_packets(&mut b_in, &mut c_out, PUBREL, &lose);
                    let _ = b_in.shutdown(Shutdown::Both);
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        AckLosingProxy { port, lose_acks, conns }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// From now on, PUBACKs from clients and PUBRELs from the broker are (not) passed on.
    pub fn lose_acks(&self, on: bool) {
        self.lose_acks.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection made so far (both sides), as a network failure would.
    pub fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

const PUBACK: u8 = 4;
const PUBREL: u8 = 6;

/// Copies MQTT packets from `from` to `to`, leaving out those of type `lose` while `lose_acks` is set.
fn forward_packets(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    lose: u8,
    lose_acks: &std::sync::atomic::AtomicBool,
) {
    use std::io::Read;
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 16 * 1024]);
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = mqtt_packet_len(&buf) {
            let lost = buf[0] >> 4 == lose && lose_acks.load(std::sync::atomic::Ordering::SeqCst);
            if !lost && to.write_all(&buf[..len]).is_err() {
                return;
            }
            buf.drain(..len);
        }
    }
}

/// The length of the complete MQTT packet at the start of `b`, if it is all there.
fn mqtt_packet_len(b: &[u8]) -> Option<usize> {
    let (mut len, mut mult) = (0usize, 1usize);
    for i in 1..5 {
        let byte = *b.get(i)?;
        len += (byte & 0x7f) as usize * mult;
        if byte & 0x80 == 0 {
            return (b.len() >= 1 + i + len).then_some(1 + i + len);
        }
        mult *= 128;
    }
    None
}
