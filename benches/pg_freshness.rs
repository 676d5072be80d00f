//! Commit→searchable on the real stack (harness = false; issue 16): PostgreSQL → Debezium
//! (Kafka Connect) → Apache Kafka → `freshet run`, at the reference load, as a user sees it.
//!
//! 1. A table of `--rows` articles (~2 KB each: a title and five paragraphs) is loaded,
//!    captured by Debezium's snapshot (connector registered from `config/debezium-postgres.json`,
//!    4 partitions) and indexed by `freshet run` following the topic (2 workers, the embedded
//!    engine, `--embedder hash` (384 dimensions) or `local` (all-MiniLM-L6-v2 on the CPU)).
//! 2. A writer holds one `psql` session and updates one paragraph of a random article per
//!    change, each change its own transaction, `--steady-rate` changes/s for `--steady-s`, then
//!    `--burst-rate` changes/s for `--burst-s`.
//! 3. Per phase: freshet's own commit→searchable percentiles (from Debezium's `source.ts_ms`,
//!    the Postgres commit time, to the sink's acknowledgement; `/status?window_s=`), the part
//!    of it before freshet (from `source.ts_ms` to the record's Kafka timestamp, read back by
//!    a consumer of the topic: Debezium, Connect and the broker), freshet's part (read by
//!    freshet → searchable), and how long the pipeline took to drain after the last change.
//!
//! `cargo bench --profile dev --bench pg_freshness -- [--rows N] [--steady-rate R]
//! [--steady-s S] [--burst-rate R] [--burst-s S] [--embedder hash|local] [--workers W]
//! [--debezium-poll-ms MS]` (the connector's `poll.interval.ms`: 50 in
//! `config/debezium-postgres.json`, Debezium's own default 500).
//! Services: `scripts/services` (started if they do not answer) or the `FRESHET_*` addresses.
//! Without `--bench` (as `cargo test --all-targets` runs it) a smoke-sized run checks that
//! it works.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use support::kafka::{committed, high_watermarks, Broker};
use support::postgres::{lit, services, Connector};

const PARTITIONS: i32 = 4;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn arg_str(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn status(port: u16, window_s: u64) -> Option<Value> {
    let (code, body) = support::http_get(port, &format!("/status?window_s={window_s}"), None)?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

const WORDS: &[&str] = &[
    "river",
    "delta",
    "index",
    "lantern",
    "harbor",
    "orbit",
    "garden",
    "engine",
    "signal",
    "copper",
    "meadow",
    "glacier",
    "ledger",
    "violet",
    "thunder",
    "pepper",
    "marble",
    "falcon",
    "cedar",
    "quartz",
    "postgres",
    "kafka",
    "vector",
    "search",
    "freshness",
    "replica",
];

/// A paragraph of about 400 characters.
fn paragraph(rng: &mut ChaCha8Rng) -> String {
    let mut p = String::new();
    while p.len() < 400 {
        if !p.is_empty() {
            p.push(' ');
        }
        p.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    p.push('.');
    p
}

/// The writer's model of the table: each article's paragraphs.
struct Articles {
    table: String,
    rng: ChaCha8Rng,
    bodies: Vec<Vec<String>>,
}

impl Articles {
    fn create_and_load(table: &str, rows: usize) -> (Self, String) {
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let mut sql = format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL, \
             status text NOT NULL);\nBEGIN;\n"
        );
        let mut bodies = Vec::with_capacity(rows);
        for id in 0..rows {
            let paras: Vec<String> = (0..5).map(|_| paragraph(&mut rng)).collect();
            sql.push_str(&format!(
                "INSERT INTO {table} VALUES ({id}, {}, {}, 'published');\n",
                lit(&format!("Article {id}")),
                lit(&paras.join("\n\n"))
            ));
            bodies.push(paras);
        }
        sql.push_str("COMMIT;\n");
        (Self { table: table.into(), rng, bodies }, sql)
    }

    /// One paragraph of a random article rewritten.
    fn edit(&mut self) -> String {
        let id = self.rng.random_range(0..self.bodies.len());
        let k = self.rng.random_range(0..5);
        self.bodies[id][k] = paragraph(&mut self.rng);
        format!("UPDATE {} SET body = {} WHERE id = {id};\n", self.table, lit(&self.bodies[id].join("\n\n")))
    }
}

/// `source.ts_ms` → Kafka timestamp of every change record (not the snapshot's) read back.
#[derive(Default)]
struct Arrivals {
    /// (commit ms, ms from commit to Kafka).
    records: Vec<(u64, i64)>,
}

fn follow_topic(
    bootstrap: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Arrivals>>,
) -> std::thread::JoinHandle<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-arrivals"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (p, high) in high_watermarks(bootstrap, topic, PARTITIONS) {
        tpl.add_partition_offset(topic, p, Offset::Offset(high)).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let (Some(payload), Some(ts)) = (m.payload(), m.timestamp().to_millis()) else { continue };
            let Ok(v) = serde_json::from_slice::<Value>(payload) else { continue };
            let p = v.get("payload").filter(|p| p.is_object()).unwrap_or(&v);
            if p["op"] != "u" {
                continue;
            }
            if let Some(commit) = p["source"]["ts_ms"].as_u64() {
                out.lock().unwrap().records.push((commit, ts - commit as i64));
            }
        }
    })
}

fn percentile(sorted: &[i64], q: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    format!("{} ms", sorted[i])
}

fn pct(p: &Value, k: &str) -> String {
    p[k].as_f64().map_or("-".into(), |v| format!("{:.0} ms", v * 1000.0))
}

/// Until everything written so far is in Kafka and indexed (the group's offsets at the
/// high watermarks, freshet caught up); returns how long that took.
fn wait_drained(connector: &Connector, port: u16, bootstrap: &str, topic: &str, group: &str) -> Duration {
    let start = Instant::now();
    connector.wait_captured();
    loop {
        let caught_up =
            status(port, 60).is_some_and(|s| s["pending"].as_bool() == Some(false) && s["lag_s"].as_f64() == Some(0.0));
        if caught_up && committed(bootstrap, group, topic, PARTITIONS) == high_watermarks(bootstrap, topic, PARTITIONS)
        {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(3600), "not drained within an hour");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_dataflow(dir: &Path, table: &str, topic: &str, embedder: &str) -> PathBuf {
    let embedder = match embedder {
        "hash" => "kind = \"hash\"\ndimension = 384\nmax_wait_ms = 5".to_owned(),
        "local" => format!(
            "kind = \"local-minilm\"\nmodel_dir = \"{}/models/all-MiniLM-L6-v2\"\nmax_tokens = 256\n\
             max_batch_texts = 64\nmax_wait_ms = 5",
            env!("CARGO_MANIFEST_DIR")
        ),
        other => panic!("--embedder {other}: hash or local"),
    };
    let path = dir.join("dataflow.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{table}\"\n[source]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ntable = \"public.{table}\"\n\
             [document]\nid = [\"id\"]\nversion = \"source.lsn\"\ntext = \"{{title}}\\n\\n{{body}}\"\n\
             metadata = [\"title\", \"status\"]\n[chunker]\nmax_chars = 1000\n[embedder]\n{embedder}\n\
             [sink]\ncollection = \"{table}\"\n"
        ),
    )
    .unwrap();
    path
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rows = arg("--rows", if smoke { 200 } else { 2_000 });
    let steady_rate = arg("--steady-rate", 20);
    let steady_s = arg("--steady-s", if smoke { 3 } else { 300 });
    let burst_rate = arg("--burst-rate", if smoke { 50 } else { 200 });
    let burst_s = arg("--burst-s", if smoke { 3 } else { 120 });
    let workers = arg("--workers", 2);
    let embedder = arg_str("--embedder", "hash");
    // Debezium's `poll.interval.ms` on the connector, when given (else the config file's 50;
    // Debezium's own default is 500).
    let poll_ms = arg_str("--debezium-poll-ms", "");
    if embedder == "local" {
        let st = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-model")).status().unwrap();
        assert!(st.success(), "scripts/setup-model");
    }
    let t0 = Instant::now();
    let broker = Broker::start();
    let svc = services();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let table = format!("bench_{}_{}", std::process::id(), now_ms() % 1_000_000_000);
    let prefix = broker.topic("pg");
    let topic = format!("{prefix}.public.{table}");
    let (mut articles, load) = Articles::create_and_load(&table, rows);
    svc.psql(&load);
    let overrides: Vec<(&str, &str)> =
        if poll_ms.is_empty() { Vec::new() } else { vec![("poll.interval.ms", poll_ms.as_str())] };
    let connector = Connector::register(svc, &table, &prefix, &[format!("public.{table}")], &overrides);
    connector.wait_captured();
    println!("{rows} articles loaded and captured by Debezium's snapshot in {:.1?}", t0.elapsed());

    let dataflow = write_dataflow(dir, &table, &topic, &embedder);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let group = broker.group("bench");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:{port}\"\n[kafka]\n\
             bootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n",
            dir.join("data").display(),
            broker.bootstrap
        ),
    )
    .unwrap();
    let log_path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/pg-freshness-run.log"));
    let mut child = support::freshet()
        .args(["run", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info,qdrant_edge=error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let snapshot_drain = wait_drained(&connector, port, &broker.bootstrap, &topic, &group);
    println!(
        "snapshot indexed by freshet ({embedder} embedder, {workers} workers) in {snapshot_drain:.1?}; Debezium \
         poll.interval.ms {}; freshet's log: {}",
        if poll_ms.is_empty() { "50 (config/debezium-postgres.json)" } else { poll_ms.as_str() },
        log_path.display()
    );
    // The snapshot's records stay out of the first phase's percentile window.
    std::thread::sleep(Duration::from_secs(3));

    let stop = Arc::new(AtomicBool::new(false));
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let follower = follow_topic(&broker.bootstrap, &topic, Arc::clone(&stop), Arc::clone(&arrivals));
    let mut psql = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
        .args(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut sql_in = psql.stdin.take().unwrap();

    println!();
    println!("| phase | load | changes | commit→searchable p50 | p95 | p99 | commit→Kafka p50 / p95 / p99 | read by freshet→searchable p50 / p95 / p99 | drain after the last change |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut phase = |name: &str, rate: usize, secs: usize| {
        let started_ms = now_ms();
        let t = Instant::now();
        let total = rate * secs;
        for i in 0..total {
            let due = t + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            sql_in.write_all(articles.edit().as_bytes()).unwrap();
            sql_in.flush().unwrap();
        }
        let written = t.elapsed();
        let drain = wait_drained(&connector, port, &broker.bootstrap, &topic, &group);
        let window = (written + drain).as_secs() + 1;
        let st = status(port, window).expect("/status");
        let mut kafka: Vec<i64> =
            arrivals.lock().unwrap().records.iter().filter(|(c, _)| *c >= started_ms).map(|(_, d)| *d).collect();
        kafka.sort_unstable();
        let (c, i) = (&st["commit_to_searchable"], &st["ingest_to_searchable"]);
        println!(
            "| {name} | {rate}/s × {secs} s | {total} (observed {}) | {} | {} | {} | {} / {} / {} | {} / {} / {} | {:.1} s |",
            c["count"],
            pct(c, "p50_s"),
            pct(c, "p95_s"),
            pct(c, "p99_s"),
            percentile(&kafka, 0.5),
            percentile(&kafka, 0.95),
            percentile(&kafka, 0.99),
            pct(i, "p50_s"),
            pct(i, "p95_s"),
            pct(i, "p99_s"),
            drain.as_secs_f64()
        );
        // The next phase's window must not see this one's changes.
        std::thread::sleep(Duration::from_secs(2));
    };
    phase("steady", steady_rate, steady_s);
    phase("burst", burst_rate, burst_s);
    drop(sql_in);
    psql.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    follower.join().unwrap();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
    println!("\nwhole run {:.0} s", t0.elapsed().as_secs_f64());
    drop(connector);
    svc.psql(&format!("DROP TABLE {table};"));
}
