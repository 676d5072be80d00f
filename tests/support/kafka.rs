//! Kafka test support: the Apache Kafka broker of `scripts/services` — one per machine,
//! shared by every test (started once by `scripts/test`, or here on first use), or the broker
//! at `FRESHET_KAFKA_BOOTSTRAP` — checked once per test process by [`self_check`]; topic and
//! group names unique to each [`Broker`] handle; topic creation, a producer that writes a
//! history keyed by document with a fixed partition per document, and consumer-group offset
//! queries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::Ev;

/// A handle on the shared broker. Every test takes its topic and group names from
/// [`Broker::topic`] and [`Broker::group`] (a prefix unique to this handle), so tests running
/// at the same time, and earlier runs, never share a topic or a group. Dropping the handle
/// deletes its topics and groups, unless the test is panicking (then they are kept, and
/// named, for a look with `scripts/services kafka-topics` / `kafka-consumer-groups`).
pub struct Broker {
    pub bootstrap: String,
    prefix: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared broker's address: `FRESHET_KAFKA_BOOTSTRAP`, else the local broker of
/// `scripts/services` (on 127.0.0.1:`FRESHET_KAFKA_PORT`, 19092), started if it does not
/// answer; its records checked by [`self_check`] once per process.
pub fn shared_bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            let bootstrap = match std::env::var("FRESHET_KAFKA_BOOTSTRAP") {
                Ok(b) if !b.is_empty() => b,
                _ => {
                    let port = std::env::var("FRESHET_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
                    let local = format!("127.0.0.1:{port}");
                    if std::net::TcpStream::connect(&local).is_err() {
                        let st = Command::new(repo().join("scripts/services"))
                            .args(["start", "kafka"])
                            .status()
                            .expect("run scripts/services");
                        assert!(st.success(), "scripts/services start kafka failed (see .tools/logs/kafka.log)");
                    }
                    local
                }
            };
            let topic = format!("{}-selfcheck", unique_prefix());
            let check = self_check(&bootstrap, &topic, SELF_CHECK_RECORDS);
            delete_prefixed(&bootstrap, &topic);
            if let Err(e) = check {
                panic!("the broker at {bootstrap} fails the self-check, refusing to test against it: {e}");
            }
            bootstrap
        })
        .clone()
}

/// Records per producer of the self-check [`Broker::start`] runs once per process (two
/// producers: 50,000 records).
pub const SELF_CHECK_RECORDS: usize = 25_000;

fn unique_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("t{ms}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Broker {
    /// A handle on the shared broker (see [`shared_bootstrap`]) with a fresh name prefix.
    pub fn start() -> Broker {
        Broker { bootstrap: shared_bootstrap(), prefix: unique_prefix() }
    }

    /// This handle's name for topic `name`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// This handle's name for consumer group `name`.
    pub fn group(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the topics and groups {}-* on {}", self.prefix, self.bootstrap);
        } else {
            delete_prefixed(&self.bootstrap, &self.prefix);
        }
    }
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client")
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Delete (best effort) the topics and groups whose names start with `prefix`.
fn delete_prefixed(bootstrap: &str, prefix: &str) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if let Ok(groups) = admin.inner().fetch_group_list(None, Duration::from_secs(10)) {
        let names: Vec<&str> = groups.groups().iter().map(|g| g.name()).filter(|n| n.starts_with(prefix)).collect();
        if !names.is_empty() {
            let _ = block_on(admin.delete_groups(&names, &opts));
        }
    }
    if let Ok(md) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) {
        let names: Vec<&str> = md.topics().iter().map(|t| t.name()).filter(|n| n.starts_with(prefix)).collect();
        if !names.is_empty() {
            let _ = block_on(admin.delete_topics(&names, &opts));
        }
    }
}

/// Create a topic, and wait until every partition has a leader (a broker answers
/// CreateTopics before its metadata shows the topic).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin = admin(bootstrap);
    let res = block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
    let start = Instant::now();
    loop {
        let ready = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5)).is_ok_and(|md| {
            md.topics().iter().any(|t| {
                t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
            })
        });
        if ready {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "topic {topic}: no leader for every partition after 30 s");
        std::thread::sleep(Duration::from_millis(50));
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
    produce_batched(bootstrap, topic, partitions, events, 500)
}

/// [`produce`] with up to `batch` records per batch.
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
        send(&producer, rec);
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

/// Send `rec`, waiting while the producer's queue is full (any other error fails the test).
pub fn send<K, P>(producer: &ThreadedProducer<DefaultProducerContext>, mut rec: BaseRecord<'_, K, P>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((e, r)) => {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "produce: {e}"
                );
                rec = r;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// A batched producer, idempotent so that each partition keeps the order records are sent in.
pub fn ordered_producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// One record to produce: (topic, partition, key, value — None: a tombstone).
pub type Record = (String, i32, String, Option<String>);

/// Produce `records` in order (batched; every delivery must succeed: the producer is
/// flushed and each partition's high watermark checked against what was sent).
pub fn produce_records(bootstrap: &str, records: &[Record]) {
    let producer = ordered_producer(bootstrap);
    let mut sent: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut base: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (topic, partition, key, value) in records {
        base.entry((topic.clone(), *partition)).or_insert_with(|| {
            let c = consumer(bootstrap, "freshet-test-probe");
            c.fetch_watermarks(topic, *partition, Duration::from_secs(10)).expect("watermarks").1
        });
        let mut rec: BaseRecord<'_, String, String> = BaseRecord::to(topic).partition(*partition).key(key);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        send(&producer, rec);
        *sent.entry((topic.clone(), *partition)).or_default() += 1;
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let c = consumer(bootstrap, "freshet-test-probe");
    for ((topic, p), n) in &sent {
        let hw = c.fetch_watermarks(topic, *p, Duration::from_secs(10)).expect("watermarks").1;
        assert_eq!(hw, base[&(topic.clone(), *p)] + n, "{topic}[{p}]: not every record produced is in the topic");
    }
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The events of `topic` as the broker holds them, partition by partition in offset order,
/// mapped back to `history` by key and value (a record that is not one of them fails).
/// Under injected produce errors the topic, not the order the events were sent in, is what
/// the source says: the oracle reads this.
pub fn read_back(bootstrap: &str, topic: &str, history: &[Ev]) -> Vec<Ev> {
    let by_record: std::collections::HashMap<(Option<u64>, Option<String>), &Ev> =
        history.iter().map(|e| ((doc_of(e), (!matches!(e, Ev::Tombstone)).then(|| e.to_json())), e)).collect();
    super::postgres::read_topic_with_offsets(bootstrap, topic)
        .into_iter()
        .map(|(partition, offset, key, value)| {
            let id = key
                .and_then(|k| serde_json::from_str::<serde_json::Value>(&k).ok())
                .and_then(|k| k["article_id"].as_u64());
            let ev = by_record.get(&(id, value.clone())).unwrap_or_else(|| {
                panic!("{topic}[{partition}]@{offset}: a record that was never produced: {value:?}")
            });
            (*ev).clone()
        })
        .collect()
}

/// High watermark per partition.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(bootstrap, "freshet-test-probe");
    (0..partitions).map(|p| (p, c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)).collect()
}

/// The group's committed offset per partition (-1: none). Retried for a minute: right after
/// a broker restart the group coordinator is still loading (`NotCoordinator`).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let started = std::time::Instant::now();
    let got = loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(got) => break got,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("committed offsets of {group}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    };
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

/// Counts one producer's delivery reports.
#[derive(Default)]
struct Deliveries {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => self.failed.lock().unwrap().push(e.to_string()),
        }
    }
}

/// The value of record `j` of producer `p` in [`self_check`]: its identity and a filler of
/// varying length, so a record cut short or swapped for another is seen.
fn check_value(p: usize, j: usize) -> String {
    format!("{p}:{j}:{}", "freshet-selfcheck-".repeat(1 + j % 23))
}

/// The broker self-check: two producers at once (idempotent, acks=all, batched with
/// `linger.ms`) each write `per_producer` keyed records into `topic` (created here, 4
/// partitions); every record must be acknowledged, and reading the topic back from the
/// beginning must give every record exactly once with its key and value, each producer's
/// records to a partition in the order they were sent, and high watermarks adding up to the
/// count. Returns a one-line account, or what is wrong.
pub fn self_check(bootstrap: &str, topic: &str, per_producer: usize) -> Result<String, String> {
    const PARTITIONS: i32 = 4;
    create_topic(bootstrap, topic, PARTITIONS);
    let start = Instant::now();
    let produced: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|p| {
                s.spawn(move || -> Result<usize, String> {
                    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
                        .set("bootstrap.servers", bootstrap)
                        .set("enable.idempotence", "true")
                        .set("acks", "all")
                        .set("linger.ms", "5")
                        .set("batch.num.messages", "1000")
                        .set("queue.buffering.max.messages", (per_producer + 1000).to_string())
                        .create_with_context(Deliveries::default())
                        .map_err(|e| format!("producer {p}: {e}"))?;
                    for j in 0..per_producer {
                        let key = format!("p{p}-k{}", j % 1000);
                        let value = check_value(p, j);
                        let mut rec: BaseRecord<'_, String, String, ()> =
                            BaseRecord::to(topic).key(&key).payload(&value);
                        loop {
                            match producer.send(rec) {
                                Ok(()) => break,
                                Err((
                                    rdkafka::error::KafkaError::MessageProduction(
                                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                                    ),
                                    r,
                                )) => {
                                    rec = r;
                                    std::thread::sleep(Duration::from_millis(2));
                                }
                                Err((e, _)) => return Err(format!("producer {p}: send {j}: {e}")),
                            }
                        }
                    }
                    producer.flush(Duration::from_secs(60)).map_err(|e| format!("producer {p}: flush: {e}"))?;
                    let ctx = producer.context();
                    let failed = ctx.failed.lock().unwrap();
                    if !failed.is_empty() {
                        return Err(format!("producer {p}: {} deliveries failed, first: {}", failed.len(), failed[0]));
                    }
                    Ok(ctx.ok.load(Ordering::Relaxed))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, r) in produced.iter().enumerate() {
        match r {
            Ok(n) if *n == per_producer => {}
            Ok(n) => return Err(format!("producer {p}: {n} of {per_producer} records acknowledged")),
            Err(e) => return Err(e.clone()),
        }
    }
    let produce_secs = start.elapsed().as_secs_f64();

    let total = 2 * per_producer;
    let hw: i64 = high_watermarks(bootstrap, topic, PARTITIONS).values().sum();
    if hw != total as i64 {
        return Err(format!("{total} records acknowledged, high watermarks add up to {hw}"));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let mut seen: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut last: BTreeMap<(i32, usize), usize> = BTreeMap::new();
    let mut read = 0usize;
    let mut progress = Instant::now();
    while read < total {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if progress.elapsed() > Duration::from_secs(20) {
                    return Err(format!("read {read} of {total} records, then nothing for 20 s"));
                }
            }
            Some(Err(e)) => return Err(format!("consume: {e}")),
            Some(Ok(m)) => {
                read += 1;
                progress = Instant::now();
                let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                let mut parts = value.splitn(3, ':');
                let (p, j) =
                    match (parts.next().and_then(|x| x.parse().ok()), parts.next().and_then(|x| x.parse().ok())) {
                        (Some(p), Some(j)) if p < 2 && j < per_producer => (p, j),
                        _ => {
                            return Err(format!(
                                "partition {} offset {}: unknown value {value:?}",
                                m.partition(),
                                m.offset()
                            ))
                        }
                    };
                if value != check_value(p, j) || key != format!("p{p}-k{}", j % 1000) {
                    return Err(format!("record {p}:{j} came back as key {key:?} value {value:?}"));
                }
                if !seen.insert((p, j)) {
                    return Err(format!(
                        "record {p}:{j} read twice (offset {} of partition {})",
                        m.offset(),
                        m.partition()
                    ));
                }
                if let Some(prev) = last.insert((m.partition(), p), j) {
                    if prev > j {
                        return Err(format!(
                            "partition {}: producer {p}'s record {j} after its record {prev}",
                            m.partition()
                        ));
                    }
                }
            }
        }
    }
    Ok(format!(
        "{total} records from 2 producers: produced and acknowledged in {produce_secs:.1} s, all read back \
         exactly once, in order, intact ({:.1} s in all)",
        start.elapsed().as_secs_f64()
    ))
}
