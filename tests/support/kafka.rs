//! Kafka test support: a real tansu broker started from `scripts/kafka-broker`'s binary
//! on a free port (killed on drop), topic creation, a producer that writes a history keyed
//! by document with a fixed partition per document, and consumer-group offset queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::Ev;

/// A tansu broker process on loopback.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Broker {
    /// Install (if needed) and start tansu on a free port, memory storage.
    pub fn start() -> Broker {
        Self::start_with("install", "tansu", "memory://tansu/".into(), None)
    }

    /// tansu with its SQLite storage in `dir` (built by `scripts/kafka-broker install-sql`):
    /// unlike the memory storage it answers ListOffsets by timestamp.
    pub fn start_sql(dir: &std::path::Path) -> Broker {
        // A path relative to the broker's working directory (`sqlite:///abs` is not a file).
        Self::start_with("install-sql", "tansu-sql", "sqlite://tansu.db".into(), Some(dir))
    }

    fn start_with(install: &str, name: &str, storage: String, cwd: Option<&std::path::Path>) -> Broker {
        let bin = repo().join(".tools/bin").join(name);
        if !bin.exists() {
            let st = Command::new(repo().join("scripts/kafka-broker")).arg(install).status().expect("kafka-broker");
            assert!(st.success(), "scripts/kafka-broker {install} failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&bin);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let child = cmd.spawn().expect("start tansu");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, bootstrap: format!("127.0.0.1:{port}") }
    }
}

/// Create a topic.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// The document a history event belongs to (None: tombstones and truncates).
pub fn doc_of(ev: &Ev) -> Option<u64> {
    match ev {
        Ev::Upsert { row, .. } => Some(row.id),
        Ev::Delete { id, .. } => Some(*id),
        _ => None,
    }
}

/// Produce `events` to `topic`: key `{"article_id":id}`, partition `id % partitions`
/// (so each document's events keep their order), others to partition 0. Returns the
/// (partition, offset) of every event, in order.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, events: &[Ev]) -> Vec<(i32, i64)> {
    // tansu's memory storage reports a high watermark of (last batch's base offset + 1):
    // one record per batch keeps its watermarks right.
    produce_batched(bootstrap, topic, partitions, events, 1)
}

/// [`produce`] with up to `batch` records per batch (librdkafka's mock cluster fetches one
/// batch per partition per request, so it wants real batches).
pub fn produce_batched(bootstrap: &str, topic: &str, partitions: i32, events: &[Ev], batch: usize) -> Vec<(i32, i64)> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", if batch > 1 { "5" } else { "0" })
        .set("batch.num.messages", batch.to_string())
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer");
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let base = high_watermarks(bootstrap, topic, partitions);
    let mut out = Vec::new();
    for ev in events {
        let id = doc_of(ev);
        let partition = id.map_or(0, |i| (i % partitions as u64) as i32);
        let key = id.map(|i| format!("{{\"article_id\":{i}}}"));
        let value = match ev {
            Ev::Tombstone => None,
            e => Some(e.to_json()),
        };
        let mut rec: BaseRecord<'_, String, String> = BaseRecord::to(topic).partition(partition);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        if let Some(v) = &value {
            rec = rec.payload(v);
        }
        let mut rec = rec;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce: {e}"
                    );
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let o = next.entry(partition).or_insert(base[&partition]);
        out.push((partition, *o));
        *o += 1;
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let after = high_watermarks(bootstrap, topic, partitions);
    for (p, o) in &next {
        assert_eq!(after[p], *o, "partition {p}: produced offsets are not contiguous");
    }
    out
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// High watermark per partition.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(bootstrap, "freshet-test-probe");
    (0..partitions).map(|p| (p, c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)).collect()
}

/// The group's committed offset per partition (-1: none).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    (0..partitions)
        .map(|p| {
            let o = match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            (p, o)
        })
        .collect()
}

/// A Kafka dataflow for tests (hash embedder, small chunks), like `test_dataflow`.
pub fn kafka_dataflow(dir: &Path, topic: &str, call_log: Option<&Path>) -> PathBuf {
    let log = call_log.map(|p| format!("call_log = \"{}\"", p.display())).unwrap_or_default();
    super::write_dataflow(&dir.join("kafka.dataflow.toml"), &format!("kind = \"kafka\"\ntopics = [\"{topic}\"]"), &log)
}

/// A runtime config reading from `bootstrap` as `group`.
pub fn kafka_config(dir: &Path, name: &str, workers: usize, bootstrap: &str, group: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\n{}{extra}\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\ncommit_interval_ms = 100\n",
            dir.join("data").display(),
            if extra.contains("max_records_per_pass") { "" } else { "max_records_per_pass = 50\n" },
        ),
    )
    .expect("write config");
    path
}
