//! A real Apache Kafka broker for tests and the Kafka benchmark: one KRaft node on loopback,
//! started from the jars `scripts/kafka-libs.sh` fetches, with a fresh log dir; killed when
//! dropped. Plus a producer and a read_committed reader for the records of a test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

// The Kafka benchmark, which also compiles this file, names `ports.rs` its `support`.
use crate::support::free_port;

fn wait_for(mut ok: impl FnMut() -> bool, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn libs() -> PathBuf {
    let dir = std::env::var_os("EDDY_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kafka-libs"));
    assert!(
        dir.join(".complete").exists(),
        "the Kafka broker's jars are not in {} (run scripts/kafka-libs.sh)",
        dir.display()
    );
    dir
}

pub struct KafkaBroker {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Formats a store under `dir` and starts the broker; topics are created on first use with
    /// `partitions` partitions.
    pub fn start(dir: &Path, partitions: u32) -> KafkaBroker {
        let port = free_port();
        let controller = free_port();
        let data = dir.join("kafka-data");
        let props = format!(
            "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\ncontroller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\nlog.dirs={}\n\
             num.partitions={partitions}\noffsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=1\ngroup.initial.rebalance.delay.ms=0\n\
             transaction.max.timeout.ms=120000\n",
            data.display()
        );
        let conf = dir.join("server.properties");
        std::fs::write(&conf, props).unwrap();
        let cp = format!("{}/*", libs().display());
        let out = Command::new("java")
            .args(["-cp", &cp, "kafka.tools.StorageTool", "format", "-t", "eddy-test-cluster-0001", "-c"])
            .arg(&conf)
            .output()
            .expect("java (17+) runs the Kafka broker");
        assert!(out.status.success(), "kafka storage format: {}", String::from_utf8_lossy(&out.stderr));
        let mut b = KafkaBroker { dir: dir.to_path_buf(), port, child: None };
        b.launch();
        b
    }

    fn launch(&mut self) {
        let cp = format!("{}/*", libs().display());
        let log = std::fs::File::create(self.dir.join("kafka.log")).unwrap();
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-cp", &cp, "kafka.Kafka"])
            .arg(self.dir.join("server.properties"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        let up = wait_for(
            || {
                let c: BaseConsumer =
                    ClientConfig::new().set("bootstrap.servers", format!("127.0.0.1:{port}")).create().unwrap();
                c.fetch_metadata(None, Duration::from_secs(2)).is_ok()
            },
            Duration::from_secs(90),
        );
        assert!(up, "the Kafka broker did not come up (see {}/kafka.log)", self.dir.display());
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGKILL: a crash), waits `down`, and starts it again on the same store.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs Kafka's own topic tool (`kafka-topics.sh`) against this broker.
    pub fn topic_command(&self, args: &[&str]) {
        let cp = format!("{}/*", libs().display());
        let out = Command::new("java")
            .args(["-cp", &cp, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", &self.bootstrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kafka-topics {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.topic_command(&["--create", "--topic", topic, "--partitions", &partitions.to_string()]);
    }

    /// Deletes `topic` and waits until the metadata no longer lists it.
    pub fn delete_topic(&self, topic: &str) {
        self.topic_command(&["--delete", "--topic", topic]);
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create().unwrap();
        let gone = wait_for(
            || {
                c.fetch_metadata(None, Duration::from_secs(5))
                    .map(|m| !m.topics().iter().any(|t| t.name() == topic))
                    .unwrap_or(false)
            },
            Duration::from_secs(30),
        );
        assert!(gone, "topic {topic} still listed after its deletion");
    }

    /// An idempotent producer to this broker.
    pub fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Writes `records` (partition, payload) to `topic`, creating it on first use.
    pub fn produce(&self, topic: &str, records: &[(i32, String)]) {
        send_all(&self.producer(), topic, records);
    }

    /// Creates `topic` (by producing nothing but metadata) so that it exists before eddyd reads.
    pub fn ensure_topic(&self, topic: &str) {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("allow.auto.create.topics", "true")
            .create()
            .unwrap();
        let ok = wait_for(
            || {
                c.fetch_metadata(Some(topic), Duration::from_secs(5))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                    })
                    .unwrap_or(false)
            },
            Duration::from_secs(30),
        );
        assert!(ok, "topic {topic} not created");
    }

    /// The transactional ids the broker knows (`kafka-transactions.sh list`).
    pub fn transactional_ids(&self) -> Vec<String> {
        let cp = format!("{}/*", libs().display());
        let out = Command::new("java")
            .args(["-cp", &cp, "org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server"])
            .arg(self.bootstrap())
            .arg("list")
            .output()
            .unwrap();
        assert!(out.status.success(), "kafka transactions list: {}", String::from_utf8_lossy(&out.stderr));
        // A header line, then one line per id: `TransactionalId Coordinator ProducerId State`.
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
    }

    /// Every record of `topic` visible under `isolation`, as payload strings, read to the end.
    pub fn read_all(&self, topic: &str, isolation: &str) -> Vec<String> {
        self.read_records(topic, isolation).into_iter().map(|r| r.payload).collect()
    }

    /// Every record of `topic` visible under `isolation`, with its key and headers, read to the end.
    pub fn read_records(&self, topic: &str, isolation: &str) -> Vec<Record> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "eddy-test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
                let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
                ends.push((p.id(), high));
            }
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut pos: std::collections::HashMap<i32, i64> = ends.iter().map(|(p, _)| (*p, 0)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while ends.iter().any(|(p, high)| pos[p] < *high) && Instant::now() < deadline {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    pos.insert(m.partition(), m.offset() + 1);
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    let headers = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(text))).collect())
                        .unwrap_or_default();
                    out.push(Record {
                        key: m.key().map(text),
                        payload: text(m.payload().unwrap_or_default()),
                        headers,
                    });
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {
                    // Control records (transaction markers) and aborted records move the
                    // position without a message: ask where the consumer stands.
                    if let Ok(list) = c.position() {
                        for e in list.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                let cur = pos.entry(e.partition()).or_insert(0);
                                *cur = (*cur).max(o);
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// One record read back.
pub struct Record {
    pub key: Option<String>,
    pub payload: String,
    pub headers: Vec<(String, Option<String>)>,
}

/// Sends `records` (partition, payload) with `p` and waits until every one is acknowledged.
pub fn send_all(p: &BaseProducer, topic: &str, records: &[(i32, String)]) {
    for (part, payload) in records {
        let mut rec = BaseRecord::<(), str>::to(topic).partition(*part).payload(payload.as_str());
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(20));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
