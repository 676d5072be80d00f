//! Postgres and Debezium test support: the PostgreSQL server and the Kafka Connect worker of
//! `scripts/services` (started once per test process if they do not answer; left running) or
//! the ones `FRESHET_PG_*` / `FRESHET_PG_URL` and `FRESHET_CONNECT_URL` name; SQL through
//! `scripts/services psql`; a Debezium connector registered from `config/debezium-postgres.json`
//! (the file users post) with unique names, which knows when everything committed so far has
//! reached Kafka, and which deletes itself, its replication slot and its publication when
//! dropped. For tables of articles: the dataflow that indexes one, the oracle (the points a
//! collection must hold for the rows `SELECT` returns, and how an export differs from them)
//! and a generator of rows and paragraphs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use freshet::config::DataflowSpec;
use freshet::dataflow::chunk::Chunker;
use freshet::embed::hash::HashEmbedder;
use freshet::model::{collection_namespace, point_id, str_hash, ContentHash, DocId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn services_script() -> Command {
    Command::new(repo().join("scripts/services"))
}

/// The Postgres and Connect services, as `scripts/services env` resolves their addresses
/// (the `FRESHET_*` variables of this environment, else the local defaults).
pub struct Services {
    /// `FRESHET_*` address variables, resolved.
    pub env: BTreeMap<String, String>,
    /// Connect's REST base URL (no trailing slash).
    pub connect_url: String,
}

/// Start Postgres and Connect (and with it Kafka) through `scripts/services start` once per
/// test process; the script leaves running and external services alone.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let st = services_script()
            .args(["start", "postgres", "connect", "registry"])
            .status()
            .expect("run scripts/services");
        assert!(st.success(), "scripts/services start postgres connect registry failed (see .tools/logs/)");
        let out = services_script().arg("env").output().expect("scripts/services env");
        assert!(out.status.success(), "scripts/services env: {}", String::from_utf8_lossy(&out.stderr));
        let env: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), unquote(v)))
            .collect();
        let connect_url = env.get("FRESHET_CONNECT_URL").expect("FRESHET_CONNECT_URL").trim_end_matches('/').to_owned();
        Services { env, connect_url }
    })
}

/// Undo bash's `printf %q` for the values it prints (backslash escapes).
fn unquote(v: &str) -> String {
    assert!(!v.starts_with("$'"), "cannot read the $'…' quoting of {v} (a control character in an address?)");
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else if c != '\'' {
            out.push(c);
        }
    }
    out
}

/// A SQL string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Services {
    /// Run SQL (any number of statements, each in its own transaction unless the script says
    /// `BEGIN`) with `psql`, stopping at the first error; returns what it printed (unaligned,
    /// tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let mut child = services_script()
            .args(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scripts/services psql");
        child.stdin.take().expect("stdin").write_all(sql.as_bytes()).expect("write SQL to psql");
        let out = child.wait_with_output().expect("psql");
        let excerpt: String = sql.chars().take(400).collect();
        assert!(out.status.success(), "psql failed: {}\nSQL: {excerpt}…", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    /// Every row of `table` as JSON objects (`row_to_json`: column name → value), by `id`.
    pub fn rows(&self, table: &str) -> Vec<Map<String, Value>> {
        let out = self.psql(&format!("SELECT coalesce(json_agg(t ORDER BY t.id), '[]') FROM {table} t;"));
        let rows: Vec<Value> = serde_json::from_str(out.trim()).expect("json_agg output");
        rows.into_iter().map(|r| r.as_object().cloned().expect("a row object")).collect()
    }

    /// The server's current WAL position (`pg_current_wal_lsn()` as a number).
    pub fn wal_lsn(&self) -> u64 {
        self.psql("SELECT (pg_current_wal_lsn() - '0/0')::bigint;").trim().parse().expect("an LSN")
    }

    fn connect(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.connect_url);
        block_on(async {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
            let mut req = client.request(method, &url);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap_or_else(|e| panic!("Connect at {url}: {e}"));
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// A Debezium PostgreSQL connector registered for one test: `config/debezium-postgres.json`
/// with its `${FRESHET_…}` placeholders filled from the environment (as `scripts/services
/// register-connector` fills them) and the test's overrides. Dropping it deletes the
/// connector, then its replication slot and publication.
pub struct Connector {
    svc: &'static Services,
    /// The connector's name in Connect.
    pub name: String,
    /// Its replication slot.
    pub slot: String,
    /// Its publication.
    pub publication: String,
    /// A table of its own (in `table.include.list`) that [`Connector::wait_captured`] writes to.
    marker: String,
}

impl Connector {
    /// Register `name` (also the slot and publication name: lower-case letters, digits and
    /// `_`) capturing `tables` (`schema.table`) under `topic_prefix`, with 4 partitions per
    /// topic and `overrides` on top of the file; wait until its task runs.
    pub fn register(
        svc: &'static Services,
        name: &str,
        topic_prefix: &str,
        tables: &[String],
        overrides: &[(&str, &str)],
    ) -> Self {
        Self::register_from("config/debezium-postgres.json", svc, name, topic_prefix, tables, overrides)
    }

    /// [`Connector::register`] from another connector file of `config/` (e.g. the Avro
    /// converter's, `config/debezium-postgres-avro.json`).
    pub fn register_from(
        file: &str,
        svc: &'static Services,
        name: &str,
        topic_prefix: &str,
        tables: &[String],
        overrides: &[(&str, &str)],
    ) -> Self {
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
        let marker = format!("{name}_marker");
        svc.psql(&format!(
            "CREATE TABLE {marker} (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO {marker} VALUES (1, 0);"
        ));
        let file = repo().join(file);
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("the connector file"))
            .expect("connector config JSON");
        let mut config = Map::new();
        for (k, v) in doc["config"].as_object().expect("a `config` object") {
            config.insert(k.clone(), v.as_str().map_or(v.clone(), |s| Value::String(svc.substitute(s))));
        }
        let include: Vec<String> = tables.iter().cloned().chain([format!("public.{marker}")]).collect();
        let include = include.join(",");
        let ours = [
            ("name", name),
            ("topic.prefix", topic_prefix),
            ("table.include.list", include.as_str()),
            ("slot.name", name),
            ("publication.name", name),
            ("topic.creation.default.partitions", "4"),
        ];
        for (k, v) in ours.iter().chain(overrides) {
            config.insert((*k).to_owned(), json!(v));
        }
        let connector =
            Connector { svc, name: name.to_owned(), slot: name.to_owned(), publication: name.to_owned(), marker };
        let (code, body) =
            svc.connect(reqwest::Method::PUT, &format!("/connectors/{name}/config"), Some(&Value::Object(config)));
        assert!(code == 200 || code == 201, "registering connector {name}: HTTP {code}: {body}");
        connector.wait_running();
        connector
    }

    /// Wait until the connector and its task run (after a registration, or after Connect
    /// restarted); fails if either is `FAILED`.
    pub fn wait_running(&self) {
        let start = Instant::now();
        loop {
            let (code, st) = self.svc.connect(reqwest::Method::GET, &format!("/connectors/{}/status", self.name), None);
            if code == 200 {
                let tasks = st["tasks"].as_array().cloned().unwrap_or_default();
                let states: Vec<&str> = std::iter::once(&st["connector"])
                    .chain(tasks.iter())
                    .map(|s| s["state"].as_str().unwrap_or(""))
                    .collect();
                assert!(!states.contains(&"FAILED"), "connector {} failed: {st}", self.name);
                if !tasks.is_empty() && states.iter().all(|s| *s == "RUNNING") {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "connector {} not running after 120 s: {st}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The source offset Connect has committed for this connector (Debezium's `lsn`,
    /// `txId`, and `snapshot` while the snapshot runs), if any.
    pub fn committed_offset(&self) -> Option<Map<String, Value>> {
        let (code, body) = self.svc.connect(reqwest::Method::GET, &format!("/connectors/{}/offsets", self.name), None);
        if code != 200 {
            return None;
        }
        body["offsets"].as_array()?.iter().find_map(|o| o["offset"].as_object().cloned())
    }

    /// Wait until every change committed in Postgres before this call is in Kafka: write the
    /// marker table, and wait until Connect has committed a streaming (not snapshot) offset at
    /// or past the WAL position before that write. Connect commits a source offset only once
    /// every record before it is acknowledged by the broker, so all earlier changes of every
    /// captured table are then readable. The write is repeated while the snapshot runs (a
    /// write the snapshot reads is never streamed). Returns how long it took.
    pub fn wait_captured(&self) -> Duration {
        let start = Instant::now();
        loop {
            let lsn = self.svc.wal_lsn();
            self.svc.psql(&format!("UPDATE {} SET n = n + 1 WHERE id = 1;", self.marker));
            let ping = Instant::now();
            while ping.elapsed() < Duration::from_secs(5) {
                if let Some(offset) = self.committed_offset() {
                    let streaming = !offset.contains_key("snapshot") && !offset.contains_key("last_snapshot_record");
                    let at = offset.get("lsn").and_then(Value::as_u64).unwrap_or(0);
                    if streaming && at >= lsn {
                        return start.elapsed();
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "connector {}: changes before WAL position {lsn} not in Kafka after 180 s (committed offset {:?})",
                self.name,
                self.committed_offset()
            );
        }
    }
}

impl Services {
    /// Replace `${FRESHET_…}` placeholders with the resolved addresses (and
    /// `FRESHET_DEBEZIUM_SCHEMAS`, default true), as `scripts/services register-connector` does.
    fn substitute(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').map(|e| i + e).unwrap_or_else(|| panic!("unclosed placeholder in {s}"));
            let var = &rest[i + 2..end];
            let value = match var {
                "FRESHET_DEBEZIUM_SCHEMAS" => std::env::var(var).unwrap_or_else(|_| "true".into()),
                _ => self.env.get(var).cloned().unwrap_or_else(|| panic!("{var} is not set (scripts/services env)")),
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let (code, body) = self.svc.connect(reqwest::Method::DELETE, &format!("/connectors/{}", self.name), None);
        if code != 204 && code != 404 {
            eprintln!("deleting connector {}: HTTP {code}: {body}", self.name);
        }
        // The slot can be dropped once the task has stopped streaming from it.
        let start = Instant::now();
        loop {
            let active = self.svc.psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = {} AND active;",
                lit(&self.slot)
            ));
            if active.trim() == "0" || start.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.svc.psql(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {};
             DROP PUBLICATION IF EXISTS {};
             DROP TABLE IF EXISTS {};",
            lit(&self.slot),
            self.publication,
            self.marker
        ));
    }
}

/// One record of a topic: (partition, key, value).
pub type TopicRecord = (i32, Option<String>, Option<String>);

/// Every record of `topic` (all its partitions, from the beginning to the high watermarks),
/// in partition order then offset order.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<TopicRecord> {
    read_topic_with_offsets(bootstrap, topic).into_iter().map(|(p, _, k, v)| (p, k, v)).collect()
}

/// One record of a topic with its offset: (partition, offset, key, value).
pub type OffsetRecord = (i32, i64, Option<String>, Option<String>);

/// [`read_topic`] with each record's offset.
pub fn read_topic_with_offsets(bootstrap: &str, topic: &str) -> Vec<OffsetRecord> {
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    read_topic_bytes(bootstrap, topic).into_iter().map(|(p, o, k, v)| (p, o, text(k), text(v))).collect()
}

/// A record's partition, offset, key bytes and value bytes.
pub type RawTopicRecord = (i32, i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// [`read_topic_with_offsets`] with the bytes as they are (Avro).
pub fn read_topic_bytes(bootstrap: &str, topic: &str) -> Vec<RawTopicRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low)).expect("partition");
        }
    }
    let mut by_partition: BTreeMap<i32, Vec<RawTopicRecord>> = BTreeMap::new();
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|&p| (p, false)).collect();
    while done.values().any(|d| !d) {
        assert!(start.elapsed() < Duration::from_secs(60), "reading {topic}: not at the high watermarks after 60 s");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("consume");
        by_partition.entry(m.partition()).or_default().push((
            m.partition(),
            m.offset(),
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
        ));
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), true);
        }
    }
    by_partition.into_values().flatten().collect()
}

/// The number of partitions of `topic`.
pub fn partitions_of(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    md.topics().first().map_or(0, |t| t.partitions().len())
}

// ---- tables of articles: the dataflow, the oracle, the workload -----------------------------
//
// Tables of `(id bigint PRIMARY KEY, title text, body text, status text, priority int,
// tags text[])` (and, once added, `category text`), indexed by [`pg_dataflow`].

/// Metadata columns carried into every point (`category` is added mid-stream by some tests).
pub const METADATA: [&str; 5] = ["title", "status", "priority", "tags", "category"];
pub const MODEL_ID: &str = "freshet/hash-16";
pub const DIMENSION: usize = 16;
pub const PLACEHOLDER: &str = "__debezium_unavailable_value";

/// The dataflow of a captured table `public.{table}` read from `topic`: `title` and `body`
/// as the text, the [`METADATA`] columns, the LSN as the version, the hash embedder (with
/// `embedder_extra` lines, e.g. a `call_log`).
pub fn pg_dataflow(dir: &Path, table: &str, topic: &str, embedder_extra: &str) -> PathBuf {
    let path = dir.join(format!("{table}.dataflow.toml"));
    let metadata = METADATA.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        &path,
        format!(
            r#"name = "{table}"
[source]
kind = "kafka"
topics = ["{topic}"]
table = "public.{table}"
[document]
id = ["id"]
version = "source.lsn"
text = "{{title}}\n\n{{body}}"
metadata = [{metadata}]
[chunker]
max_chars = 200
[embedder]
kind = "hash"
dimension = {DIMENSION}
max_wait_ms = 5
{embedder_extra}
[sink]
collection = "{table}"
"#
        ),
    )
    .unwrap();
    path
}

// ---- the oracle ----------------------------------------------------------------------------

/// The points a collection of `rows` must hold, by point id: each row's `title` and `body`
/// rendered as the dataflow's template says, chunked by freshet's chunker; the payload the
/// row's columns and the chunk (`source_version`, the LSN of the row's last write, is not in
/// the table: [`differences`] checks it apart).
pub fn expected_points(spec: &DataflowSpec, rows: &[Map<String, Value>]) -> BTreeMap<String, (Value, Vec<f32>)> {
    let chunker = Chunker::new(&spec.chunker);
    let ns = collection_namespace(&spec.sink.collection);
    let embedder = HashEmbedder::new(DIMENSION);
    let mut points = BTreeMap::new();
    for row in rows {
        let id = row["id"].as_i64().expect("bigint id");
        let title = row["title"].as_str().expect("title");
        let body = row["body"].as_str().expect("body");
        let doc_id = DocId(id.to_string());
        for (i, chunk) in chunker.chunks(&format!("{title}\n\n{body}")).iter().enumerate() {
            let hash = ContentHash::of(chunk);
            let mut p = Map::new();
            // A NULL column (or one not added yet) is no payload key: the collection keeps
            // no null payload values.
            for m in METADATA {
                if let Some(v) = row.get(m).filter(|v| !v.is_null()) {
                    p.insert(m.into(), v.clone());
                }
            }
            p.insert("doc_id".into(), json!(doc_id.0));
            p.insert("chunk_index".into(), json!(i));
            p.insert("content_hash".into(), json!(hash.to_hex()));
            p.insert("model_id".into(), json!(MODEL_ID));
            p.insert("text".into(), json!(chunk));
            p.insert(
                "text_field_hashes".into(),
                json!([format!("{:016x}", str_hash(title)), format!("{:016x}", str_hash(body))]),
            );
            let pid = point_id(&ns, &doc_id, i as u32).to_string();
            points.insert(pid, (Value::Object(p), embedder.vector_for(&hash)));
        }
    }
    points
}

/// How an export (`freshet export --with-vectors`) differs from the expected points: points
/// missing or extra, payloads or vectors that differ, a document whose chunks disagree on
/// `source_version`.
pub fn differences(export: &str, expected: &BTreeMap<String, (Value, Vec<f32>)>) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut seen = BTreeSet::new();
    let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in export.lines() {
        let got: Value = serde_json::from_str(line).expect("export line");
        let id = got["id"].as_str().expect("point id").to_owned();
        let mut payload = got["payload"].as_object().cloned().expect("payload");
        let doc = payload.get("doc_id").cloned().unwrap_or(Value::Null);
        match payload.remove("source_version").and_then(|v| v.as_u64()) {
            Some(v) if v > 0 => {
                versions.entry(doc.to_string()).or_default().insert(v);
            }
            other => diffs.push(format!("point {id} (doc {doc}): source_version {other:?}")),
        }
        let Some((want, vector)) = expected.get(&id) else {
            diffs.push(format!(
                "extra point {id}: doc {doc} chunk {:?} {:?}",
                payload.get("chunk_index"),
                payload.get("text")
            ));
            continue;
        };
        seen.insert(id.clone());
        if Value::Object(payload.clone()) != *want {
            let want = want.as_object().unwrap();
            let keys: BTreeSet<&String> = payload.keys().chain(want.keys()).collect();
            let differ: Vec<String> = keys
                .into_iter()
                .filter(|k| payload.get(*k) != want.get(*k))
                .map(|k| format!("{k}: got {:?}, want {:?}", payload.get(k), want.get(k)))
                .collect();
            diffs.push(format!("point {id} (doc {doc} chunk {}): {}", want["chunk_index"], differ.join("; ")));
        }
        let got_vec: Vec<f64> =
            got["vector"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
        if got_vec.len() != vector.len() || got_vec.iter().zip(vector).any(|(a, b)| (a - f64::from(*b)).abs() > 1e-5) {
            diffs.push(format!("point {id} (doc {doc}): vector differs"));
        }
    }
    for (id, (want, _)) in expected {
        if !seen.contains(id) {
            diffs.push(format!("missing point {id}: doc {} chunk {}", want["doc_id"], want["chunk_index"]));
        }
    }
    for (doc, v) in versions {
        if v.len() > 1 {
            diffs.push(format!("doc {doc}: chunks at source versions {v:?}"));
        }
    }
    diffs
}

// ---- the workload --------------------------------------------------------------------------

pub const WORDS: &[&str] = &[
    "river", "delta", "index", "lantern", "harbor", "orbit", "garden", "engine", "signal", "copper", "meadow",
    "glacier", "ledger", "violet", "thunder", "pepper", "marble", "falcon", "cedar", "quartz", "naïve", "café",
    "Zürich", "O'Brien", "über", "ñandú",
];

pub fn paragraph(rng: &mut ChaCha8Rng, numbered: bool) -> String {
    let n = rng.random_range(8..45);
    let words: Vec<String> = (0..n)
        .map(|_| {
            let w = WORDS[rng.random_range(0..WORDS.len())];
            if numbered {
                format!("{w}{}", rng.random_range(0..10_000))
            } else {
                w.to_owned()
            }
        })
        .collect();
    format!("{}.", words.join(" "))
}

/// A body of 2 to 7 paragraphs (several chunks).
pub fn body(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(2..8);
    (0..n).map(|_| paragraph(rng, false)).collect::<Vec<_>>().join("\n\n")
}

/// A body Postgres TOASTs out of line: more than 8 KB of little-compressible text.
pub fn large_body(rng: &mut ChaCha8Rng) -> String {
    let mut b = String::new();
    while b.len() < 12_000 {
        if !b.is_empty() {
            b.push_str("\n\n");
        }
        b.push_str(&paragraph(rng, true));
    }
    b
}

pub fn title(rng: &mut ChaCha8Rng, id: u64) -> String {
    format!("Article {id}: {}", paragraph(rng, false).split(' ').take(4).collect::<Vec<_>>().join(" "))
}

pub fn tags(rng: &mut ChaCha8Rng) -> String {
    let all = ["rust", "kafka", "postgres", "search", "cdc"];
    let picked: Vec<String> = all.iter().filter(|_| rng.random_bool(0.4)).map(|t| lit(t)).collect();
    format!("ARRAY[{}]::text[]", picked.join(","))
}

pub fn status(rng: &mut ChaCha8Rng) -> &'static str {
    ["draft", "published", "archived"][rng.random_range(0..3)]
}

/// `INSERT` of one row (with `category` when given).
pub fn insert(table: &str, id: u64, body: &str, category: Option<&str>, rng: &mut ChaCha8Rng) -> String {
    let (cols, cat) = match category {
        Some(c) => (", category", format!(", {}", lit(c))),
        None => ("", String::new()),
    };
    format!(
        "INSERT INTO {table} (id, title, body, status, priority, tags{cols}) VALUES ({id}, {}, {}, {}, {}, {}{cat});\n",
        lit(&title(rng, id)),
        lit(body),
        lit(status(rng)),
        rng.random_range(0..5),
        tags(rng)
    )
}

// ---- the articles workload of the end-to-end tests --------------------------------------------------------------------------

/// Create `name` and load 310 articles (10 of them with a body large enough to be TOASTed)
/// in one transaction; `full`: `REPLICA IDENTITY FULL`.
pub fn create_and_load(name: &str, full: bool, rng: &mut ChaCha8Rng) -> String {
    let mut sql = format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL, \
         status text NOT NULL, priority int NOT NULL, tags text[] NOT NULL);\n"
    );
    if full {
        sql.push_str(&format!("ALTER TABLE {name} REPLICA IDENTITY FULL;\n"));
    }
    sql.push_str("BEGIN;\n");
    for id in 1..=300 {
        let b = body(rng);
        sql.push_str(&insert(name, id, &b, None, rng));
    }
    for id in 301..=310 {
        let b = large_body(rng);
        sql.push_str(&insert(name, id, &b, None, rng));
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// Replace the first paragraph of `id`'s body.
pub fn edit_first_paragraph(table: &str, id: u64, rng: &mut ChaCha8Rng) -> String {
    format!(
        "UPDATE {table} SET body = {} || substr(body, strpos(body, E'\\n\\n')) WHERE id = {id};\n",
        lit(&paragraph(rng, false))
    )
}

/// Append a paragraph to the bodies of the rows `filter` selects.
pub fn append_paragraph(table: &str, filter: &str, rng: &mut ChaCha8Rng) -> String {
    format!("UPDATE {table} SET body = body || E'\\n\\n' || {} WHERE {filter};\n", lit(&paragraph(rng, false)))
}

/// Streaming changes of every kind but a schema change and a truncate: inserts, text edits,
/// metadata-only edits (of TOASTed rows too), deletes, one transaction touching many rows, a
/// delete and re-insert, an update that changes nothing.
pub fn round_one(t: &str, rng: &mut ChaCha8Rng) -> String {
    let mut sql = String::new();
    // Inserts, one transaction each.
    for id in 311..=360 {
        let b = body(rng);
        sql.push_str(&insert(t, id, &b, None, rng));
    }
    // Text edits: a paragraph replaced, one appended, the whole body rewritten, the title.
    for id in 1..=20 {
        sql.push_str(&edit_first_paragraph(t, id, rng));
    }
    for id in 21..=30 {
        sql.push_str(&append_paragraph(t, &format!("id = {id}"), rng));
    }
    for id in 31..=40 {
        sql.push_str(&format!("UPDATE {t} SET body = {} WHERE id = {id};\n", lit(&body(rng))));
    }
    sql.push_str(&format!("UPDATE {t} SET title = title || ' (revised)' WHERE id IN (121, 122);\n"));
    // Metadata only.
    sql.push_str(&format!(
        "UPDATE {t} SET status = 'published', priority = priority + 1 WHERE id BETWEEN 41 AND 60;\n"
    ));
    sql.push_str(&format!("UPDATE {t} SET tags = array_append(tags, 'edited') WHERE id BETWEEN 55 AND 80;\n"));
    // Metadata only, the large body TOASTed and unchanged.
    sql.push_str(&format!("UPDATE {t} SET status = 'featured' WHERE id BETWEEN 301 AND 305;\n"));
    sql.push_str(&format!("UPDATE {t} SET priority = 7, tags = ARRAY['long'] WHERE id = 306;\n"));
    // Deletes.
    sql.push_str(&format!("DELETE FROM {t} WHERE id BETWEEN 81 AND 100;\n"));
    sql.push_str(&format!("DELETE FROM {t} WHERE id IN (350, 351, 352, 309);\n"));
    // One transaction touching many rows (and one row twice, one row born and gone in it).
    sql.push_str("BEGIN;\n");
    sql.push_str(&format!("UPDATE {t} SET priority = priority + 10 WHERE id % 7 = 0;\n"));
    sql.push_str(&append_paragraph(t, "id % 11 = 0 AND id < 300", rng));
    sql.push_str(&format!("DELETE FROM {t} WHERE id % 13 = 0 AND id < 200;\n"));
    for id in 361..=380 {
        let b = body(rng);
        sql.push_str(&insert(t, id, &b, None, rng));
    }
    sql.push_str(&format!("UPDATE {t} SET status = 'a' WHERE id = 5;\n"));
    sql.push_str(&format!("UPDATE {t} SET status = 'b', body = {} WHERE id = 5;\n", lit(&body(rng))));
    let b = body(rng);
    sql.push_str(&insert(t, 999, &b, None, rng));
    sql.push_str(&format!("DELETE FROM {t} WHERE id = 999;\n"));
    sql.push_str("COMMIT;\n");
    // A row deleted and created again with other content.
    sql.push_str(&format!("DELETE FROM {t} WHERE id = 110;\n"));
    let b = body(rng);
    sql.push_str(&insert(t, 110, &b, None, rng));
    // An update that changes nothing.
    sql.push_str(&format!("UPDATE {t} SET status = status WHERE id = 120;\n"));
    sql
}

/// A truncate and reload (when `truncate`), `ADD COLUMN category` and writes that use it, the
/// TOASTed body unchanged again (row 303's title edit is unresolvable with DEFAULT), more edits.
pub fn round_two(t: &str, truncate: bool, rng: &mut ChaCha8Rng) -> String {
    let mut sql = String::new();
    if truncate {
        // Emptied and reloaded in one transaction (ids reused with other content).
        sql.push_str(&format!("BEGIN;\nTRUNCATE {t};\n"));
        for id in 1..=150 {
            let b = body(rng);
            sql.push_str(&insert(t, id, &b, None, rng));
        }
        for id in 301..=310 {
            let b = large_body(rng);
            sql.push_str(&insert(t, id, &b, None, rng));
        }
        sql.push_str("COMMIT;\n");
    }
    // A new column mid-stream, then writes that use it.
    sql.push_str(&format!("ALTER TABLE {t} ADD COLUMN category text;\n"));
    sql.push_str(&format!("UPDATE {t} SET category = 'news' WHERE id % 5 = 0;\n"));
    for id in 400..=420 {
        let b = body(rng);
        sql.push_str(&insert(t, id, &b, Some(if id % 2 == 0 { "howto" } else { "opinion" }), rng));
    }
    // The TOASTed body unchanged again: metadata (and the new column) only.
    sql.push_str(&format!("UPDATE {t} SET status = 'archived', category = 'longread' WHERE id IN (301, 302);\n"));
    // The title edited while the TOASTed body is unchanged: with DEFAULT, Debezium sends the
    // body as a placeholder and freshet cannot re-chunk (dead-lettered); with FULL it is whole.
    // The body's next edit sends the whole row again.
    sql.push_str(&format!("UPDATE {t} SET title = 'Retitled: ' || title WHERE id = 303;\n"));
    sql.push_str(&format!("UPDATE {t} SET body = body || E'\\n\\nA correction.' WHERE id = 303;\n"));
    sql.push_str(&format!("DELETE FROM {t} WHERE id = 304;\n"));
    sql.push_str(&format!("UPDATE {t} SET status = 'final' WHERE id = 310;\n"));
    // More of everything.
    for id in 2..=12 {
        sql.push_str(&edit_first_paragraph(t, id, rng));
    }
    sql.push_str(&format!("DELETE FROM {t} WHERE id BETWEEN 13 AND 20;\n"));
    sql.push_str(&format!("UPDATE {t} SET priority = priority + 100, category = NULL WHERE id BETWEEN 25 AND 45;\n"));
    sql
}
