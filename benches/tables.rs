//! Documents from several tables (harness = false), with the hash embedder into the
//! embedded engine, `freshet run` as a child process:
//!
//! 1. **Throughput**: the blog's four tables (`freshet generate --tables`: N articles, their
//!    authors, tags and ACL rows, then edits, joined-row changes and deletes) indexed with
//!    `dataflows/blog.toml` — events/s and peak RSS for the snapshot, then for a restart
//!    that re-reads the file with the changes appended (the tables are rebuilt from it).
//! 2. **Fan-out**: one author with F articles, renamed while `freshet run` follows its file:
//!    the time from the append to every article re-rendered and written (from `/metrics`),
//!    and what it embedded.
//!
//! 3. **On Kafka** (Apache Kafka of `scripts/services`, or `FRESHET_KAFKA_BOOTSTRAP`): the
//!    same rows, snapshot and changes, produced to one topic per table (4 partitions, keyed
//!    by the row key), indexed to the end; then the table state's size (bytes per stored
//!    row, `state/<collection>.tables.redb`) and a restart with nothing new: the time to load
//!    the state, render every document and find the index equal (nothing written).
//!
//! `cargo bench --profile dev --bench tables -- [--docs N] [--fanout F] [--workers W] [--skip-kafka 1] [--kafka-only 1]
//!   [--max-records-per-pass N (Kafka: per partition and pass; the runtime's default 10,000)]`

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

mod common;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Run `freshet run --until-end` (on `input` for a file source); (summary, seconds, peak RSS MiB).
fn run(dataflow: &Path, config: &Path, input: Option<&Path>) -> (serde_json::Value, f64, u64) {
    let t = Instant::now();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"));
    cmd.args(["run", "--until-end", "--embedder", "hash", "--dataflow"]).arg(dataflow).arg("--config").arg(config);
    if let Some(i) = input {
        cmd.arg("--input").arg(i);
    }
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().expect("spawn freshet");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(st) = std::fs::read_to_string(&status_path) {
            if let Some(kb) =
                st.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = t.elapsed().as_secs_f64();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out).expect("read");
    let totals: serde_json::Value = serde_json::from_str(out.lines().last().expect("summary")).expect("json");
    (totals, secs, peak_kb / 1024)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

fn metrics(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut out);
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benchmark skipped (run it with `cargo bench --profile dev`)");
        return;
    }
    let docs = arg("--docs", 20_000);
    let fanout = arg("--fanout", 10_000);
    let workers = arg("--workers", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let dataflow = Path::new("dataflows/blog.toml");

    let input = dir.path().join("blog.jsonl");
    let changes = dir.path().join("changes.jsonl");
    let plan = freshet::workload::Plan { docs, edits: docs, flips: docs, deletes: docs / 10, seed: 11 };
    freshet::workload::write_blog_files(&input, Some(&changes), &plan).expect("workload");
    if arg("--kafka-only", 0) == 0 {
        file_sections(dir.path(), dataflow, &input, &changes, docs, fanout, workers);
    } else {
        let text = std::fs::read_to_string(&changes).expect("changes");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .expect("open")
            .write_all(text.as_bytes())
            .expect("append");
    }
    // 3. On Kafka: one topic per table; the table state's size and a restart.
    if arg("--skip-kafka", 0) == 0 {
        kafka_restart(dir.path(), dataflow, &input, workers);
    }
}

/// Sections 1 and 2 (see the module docs); appends `changes` to `input`.
fn file_sections(
    dir: &Path,
    dataflow: &Path,
    input: &Path,
    changes: &Path,
    docs: usize,
    fanout: usize,
    workers: usize,
) {
    // 1. Throughput.
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!("workers = {workers}\ndata_dir = \"{}\"\noptimize_interval_s = 1000000\n", dir.join("data").display()),
    )
    .expect("config");
    let (t, secs, rss) = run(dataflow, &config, Some(input));
    let received = t["received"].as_f64().unwrap_or(0.0);
    println!(
        "snapshot: {received} row events ({docs} articles + authors, tags, ACL rows) in {secs:.1}s = {:.0} events/s \
         ({workers} workers, whole process); chunks embedded {}, points {}; peak RSS {rss} MiB",
        received / secs,
        t["chunks_embedded"],
        t["points_upserted"]
    );
    let text = std::fs::read_to_string(changes).expect("changes");
    std::fs::OpenOptions::new().append(true).open(input).expect("open").write_all(text.as_bytes()).expect("append");
    let (t, secs, rss) = run(dataflow, &config, Some(input));
    let received = t["received"].as_f64().unwrap_or(0.0);
    println!(
        "restart + changes: {received} row events re-read ({} of them new) in {secs:.1}s = {:.0} events/s; \
         chunks embedded {}, upserted {}, payload updates {}, deleted {}; peak RSS {rss} MiB",
        text.lines().count(),
        received / secs,
        t["chunks_embedded"],
        t["points_upserted"],
        t["points_payload_updated"],
        t["points_deleted"]
    );

    // 2. Fan-out: one author, `fanout` articles, renamed while the run follows the file.
    let fdir = dir.join("fanout");
    std::fs::create_dir_all(&fdir).expect("dir");
    let finput = fdir.join("events.jsonl");
    let src = |table: &str, lsn: u64| {
        serde_json::json!({"version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": 1_767_225_600_000u64,
            "snapshot": "false", "db": "app", "schema": "public", "table": table, "txId": lsn, "lsn": lsn})
    };
    let mut lines = String::new();
    lines += &serde_json::json!({"before": null, "after": {"author_id": 1, "name": "Ada Lovelace"}, "source": src("authors", 10), "op": "r"}).to_string();
    lines.push('\n');
    for id in 1..=fanout as u64 {
        let body =
            format!("Paragraph one of article {id}, about rivers.\n\nParagraph two of article {id}, about harbors.");
        let row = serde_json::json!({"article_id": id, "title": format!("Article {id}"), "body": body,
            "status": "published", "author_id": 1, "deleted_at": null});
        lines += &serde_json::json!({"before": null, "after": row, "source": src("articles", 100 + id), "op": "r"})
            .to_string();
        lines.push('\n');
    }
    std::fs::write(&finput, lines).expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let fconfig = fdir.join("bench.toml");
    std::fs::write(
        &fconfig,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\noptimize_interval_s = 1000000\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            fdir.join("data").display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["run", "--embedder", "hash", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(&fconfig)
        .arg("--input")
        .arg(&finput)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn freshet");
    let acked = |m: &str| -> f64 {
        ["content", "metadata", "delete", "noop", "superseded", "dead_lettered"]
            .iter()
            .map(|o| metric(m, &format!("freshet_events_total{{outcome=\"{o}\"}}")))
            .sum()
    };
    let wait = |n: f64| loop {
        let m = metrics(port);
        if acked(&m) >= n && metric(&m, "freshet_frontier_lag_seconds") == 0.0 {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let m0 = wait(fanout as f64 + 1.0);
    let rename = serde_json::json!({"before": null, "after": {"author_id": 1, "name": "Ada King"}, "source": src("authors", 1_000_000), "op": "u"});
    let t = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&finput)
        .expect("open")
        .write_all(format!("{rename}\n").as_bytes())
        .expect("append");
    let m1 = wait(fanout as f64 + 2.0);
    let secs = t.elapsed().as_secs_f64();
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    println!(
        "fan-out: one author renamed under {fanout} articles: all re-rendered and written in {secs:.2}s \
         (append → acknowledged, 20 ms polling); chunks embedded {}, points upserted {}, payload updates {}",
        d("freshet_chunks_embedded_total"),
        d("freshet_points_written_total{op=\"upsert\"}"),
        d("freshet_points_written_total{op=\"set_payload\"}"),
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Section 3 (see the module docs). `events` holds the snapshot and the changes.
fn kafka_restart(dir: &Path, dataflow: &Path, events: &Path, workers: usize) {
    let bootstrap = common::kafka::bootstrap();
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    let prefix = format!("bench-tables-{ms}");
    let tables = [("articles", "article_id"), ("authors", "author_id"), ("article_tags", "id"), ("article_acl", "id")];
    let topic = |t: &str| format!("{prefix}.public.{t}");
    for (t, _) in tables {
        common::kafka::create_topic(&bootstrap, &topic(t), 4);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer");
    let text = std::fs::read_to_string(events).expect("events");
    let mut produced = 0usize;
    // A `null` line is the tombstone of the delete before it: same topic and key, no value.
    let mut last: Option<(String, String)> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let (name, key, payload) = if v.is_null() {
            let (name, key) = last.clone().expect("a tombstone follows a delete");
            (name, key, None)
        } else {
            let table = v["source"]["table"].as_str().expect("source.table").to_string();
            let column = tables.iter().find(|(t, _)| *t == table).map(|(_, k)| *k).expect("a blog table");
            let row = if v["after"].is_object() { &v["after"] } else { &v["before"] };
            (topic(&table), serde_json::json!({ column: row[column] }).to_string(), Some(line))
        };
        let mut rec: BaseRecord<'_, String, str> = BaseRecord::to(&name).key(&key);
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        common::kafka::send(&producer, rec);
        last = Some((name, key));
        produced += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let mut flow = std::fs::read_to_string(dataflow).expect("dataflow");
    flow = flow.replacen("kind = \"file\"", "kind = \"kafka\"", 1);
    flow = flow.lines().filter(|l| !l.starts_with("path = ")).collect::<Vec<_>>().join("\n");
    for (t, _) in tables {
        let from = format!("table = \"public.{t}\"");
        flow = flow.replacen(&from, &format!("{from}\ntopics = [\"{}\"]", topic(t)), 1);
    }
    let kdir = dir.join("kafka");
    std::fs::create_dir_all(&kdir).expect("dir");
    let kflow = kdir.join("blog-kafka.toml");
    std::fs::write(&kflow, flow).expect("dataflow");
    let config = kdir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\noptimize_interval_s = 1000000\nmax_records_per_pass = {}\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{prefix}\"\n",
            kdir.join("data").display(),
            arg("--max-records-per-pass", 10_000)
        ),
    )
    .expect("config");
    let (t, secs, rss) = run(&kflow, &config, None);
    println!(
        "kafka: {} records ({produced} produced, 4 topics × 4 partitions) indexed in {secs:.1}s = {:.0} records/s; \
         points upserted {}; peak RSS {rss} MiB",
        t["received"],
        t["received"].as_f64().unwrap_or(0.0) / secs,
        t["points_upserted"]
    );
    let state = std::fs::read_dir(kdir.join("data/state"))
        .expect("state")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tables.redb"))
        .expect("the table state");
    let bytes = std::fs::metadata(&state).expect("size").len();
    let points = {
        use freshet::sink::Catalog;
        let catalog = freshet::sink::embedded::EmbeddedCatalog::new(&kdir.join("data"));
        let name =
            state.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".tables.redb")).unwrap_or("");
        catalog.open(name).and_then(|c| c.count()).expect("count the collection")
    };
    println!("kafka: the collection holds {points} points");
    let collection =
        state.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".tables.redb")).unwrap_or("");
    let opened = freshet::runtime::table_store::TableStore::open(&kdir.join("data"), collection, 1, 0, 1, 1)
        .expect("open the table state");
    let rows = opened.row_count;
    let compacted = opened.store.file_bytes();
    // What the rows hold: key (table + row key) and value (version, cells with lengths).
    let data: usize = opened
        .rows
        .iter()
        .flatten()
        .map(|(_, k, r)| 2 + k.len() + 9 + r.cells.as_ref().map_or(0, |c| c.iter().map(|x| 4 + x.len()).sum()))
        .sum();
    drop(opened);
    let mib = |b: f64| b / 1048576.0;
    println!(
        "kafka: table state {rows} rows (tombstones included): {:.1} MiB as the run left it = {:.0} bytes/row, \
         {:.1} MiB compacted (as each start does) = {:.0} bytes/row; the rows' own bytes {:.0}/row",
        mib(bytes as f64),
        bytes as f64 / rows.max(1) as f64,
        mib(compacted as f64),
        compacted as f64 / rows.max(1) as f64,
        data as f64 / rows.max(1) as f64
    );
    let (t, secs, rss) = run(&kflow, &config, None);
    println!(
        "kafka: restart with nothing new: {secs:.1}s to load {rows} rows, render every document and find the \
         {points} points equal (whole process, start to exit); received {}, chunks embedded {}, points written {}; peak RSS {rss} MiB",
        t["received"],
        t["chunks_embedded"],
        t["points_upserted"].as_u64().unwrap_or(0)
            + t["points_payload_updated"].as_u64().unwrap_or(0)
            + t["points_deleted"].as_u64().unwrap_or(0)
    );
    common::kafka::delete_topics(&bootstrap, &tables.iter().map(|(t, _)| topic(t)).collect::<Vec<_>>());
}
