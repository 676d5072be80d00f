//! Kafka → collection benchmark (harness = false). On Apache Kafka: the broker at
//! `FRESHET_KAFKA_BOOTSTRAP`, else the local one of `scripts/services` (started if it does not
//! answer). Produces freshet's generated corpus (Debezium JSON, keyed by article id, 4
//! partitions, topics and groups named for this run and deleted at the end), and times `freshet run --until-end`
//! with the `hash` embedder into the embedded engine with 1 and with 2 workers (fresh
//! collection and consumer group each). Then the burst test: peak resident memory of a run
//! that finds 1× and 10× that backlog waiting in the topic (pause/resume backpressure keeps
//! it bounded), and of a run that finds 1× and 10× edits to already-indexed articles
//! waiting (the collection keeps its size, so only the source side can grow).
//!
//! `cargo bench --profile dev --bench kafka -- [--docs N] [--edits N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

mod common;
use common::kafka::{bootstrap, create_topic, delete_topics};
use common::{arg, freshet_bin};

/// Produce the JSON lines of `file`, keyed by article id, partition = id % partitions.
fn produce_file(bootstrap: &str, topic: &str, partitions: i32, file: &Path) -> usize {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = if v["after"].is_object() { &v["after"] } else { &v["before"] };
        let id = row["article_id"].as_u64().unwrap_or(0);
        let key = format!("{{\"article_id\":{id}}}");
        let rec: BaseRecord<'_, String, str> =
            BaseRecord::to(topic).partition((id % partitions as u64) as i32).key(&key).payload(line);
        common::kafka::send(&producer, rec);
        n += 1;
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    n
}

fn write_files(dir: &Path, topic: &str, bootstrap: &str, group: &str, workers: usize) -> (PathBuf, PathBuf) {
    let dataflow = dir.join(format!("{group}.dataflow.toml"));
    let text = common::articles_on_kafka(topic);
    std::fs::write(&dataflow, text).unwrap();
    let config = dir.join(format!("{group}.toml"));
    std::fs::write(
        &config,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\n",
            dir.join(format!("data-{group}")).display()
        ),
    )
    .unwrap();
    (dataflow, config)
}

/// Run to the end; returns (seconds, peak RSS in MiB sampled every 50 ms, summary).
fn run(dataflow: &Path, config: &Path) -> (f64, f64, serde_json::Value) {
    let start = Instant::now();
    let mut child = Command::new(freshet_bin())
        .args(["run", "--until-end", "--embedder", "hash", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(kb) =
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = start.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "freshet run failed");
    let summary = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    (secs, peak_kb as f64 / 1024.0, summary)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benchmark skipped (run it with `cargo bench --profile dev`)");
        return;
    }
    let docs = arg("--docs", 20_000);
    let edits = arg("--edits", 20_000);
    let bootstrap = bootstrap();
    // Names of this run's topics and groups (the broker is shared and outlives the run).
    let prefix =
        format!("bench-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let mut topics = Vec::new();
    let dir = tempfile::tempdir().unwrap();

    // Throughput: snapshot + edits, 1 vs 2 workers.
    let events = dir.path().join("events.jsonl");
    let plan = freshet::workload::Plan { docs, edits, flips: edits / 10, deletes: edits / 20, seed: 7 };
    freshet::workload::write_files(&events, None, &plan).unwrap();
    let articles = format!("{prefix}-articles");
    topics.push(articles.clone());
    create_topic(&bootstrap, &articles, 4);
    let t = Instant::now();
    let n = produce_file(&bootstrap, &articles, 4, &events);
    eprintln!("produced {n} events in {:.1}s", t.elapsed().as_secs_f64());
    for workers in [1, 2] {
        let (dataflow, config) =
            write_files(dir.path(), &articles, &bootstrap, &format!("{prefix}-w{workers}"), workers);
        let (secs, rss, summary) = run(&dataflow, &config);
        println!(
            "kafka→collection, {workers} worker(s): {n} events in {secs:.1}s = {:.0} events/s; peak RSS {rss:.0} MiB; chunks embedded {}",
            n as f64 / secs,
            summary["chunks_embedded"]
        );
    }

    // Burst: 1× and 10× backlog waiting in the topic; peak memory of the run.
    let small = docs / 10;
    for (label, k) in [("1x", 1usize), ("10x", 10)] {
        let topic = format!("{prefix}-burst-{label}");
        topics.push(topic.clone());
        let file = dir.path().join(format!("{topic}.jsonl"));
        let plan = freshet::workload::Plan { docs: small * k, edits: small * k, flips: 0, deletes: 0, seed: 9 };
        freshet::workload::write_files(&file, None, &plan).unwrap();
        create_topic(&bootstrap, &topic, 4);
        let n = produce_file(&bootstrap, &topic, 4, &file);
        let (dataflow, config) = write_files(dir.path(), &topic, &bootstrap, &topic, 2);
        let (secs, rss, _) = run(&dataflow, &config);
        println!("burst {label}: {n} events backlogged, drained in {secs:.1}s; peak RSS {rss:.0} MiB");
    }

    // Burst of edits to indexed documents: the collection keeps its size, so the peak
    // memory difference between 1× and 10× is what the source side buffers.
    for (label, k) in [("1x", 1usize), ("10x", 10)] {
        let topic = format!("{prefix}-fixed-{label}");
        topics.push(topic.clone());
        let snapshot = dir.path().join(format!("{topic}.snapshot.jsonl"));
        let changes = dir.path().join(format!("{topic}.changes.jsonl"));
        let plan = freshet::workload::Plan { docs: small, edits: small * k, flips: 0, deletes: 0, seed: 11 };
        freshet::workload::write_files(&snapshot, Some(&changes), &plan).unwrap();
        create_topic(&bootstrap, &topic, 4);
        produce_file(&bootstrap, &topic, 4, &snapshot);
        let (dataflow, config) = write_files(dir.path(), &topic, &bootstrap, &topic, 2);
        let (_, rss_indexed, _) = run(&dataflow, &config);
        let n = produce_file(&bootstrap, &topic, 4, &changes);
        let (secs, rss, summary) = run(&dataflow, &config);
        println!(
            "edit burst {label} on {small} indexed articles: {n} edits backlogged, drained in {secs:.1}s; \
             peak RSS {rss:.0} MiB (indexing them: {rss_indexed:.0} MiB); chunks embedded {}",
            summary["chunks_embedded"]
        );
    }
    delete_topics(&bootstrap, &topics);
}
