//! Test support: random edit histories of the `articles` table rendered as Debezium JSON,
//! an independent oracle that replays the same history into a plain map, and helpers to
//! run the `freshet` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod avro_wire;
pub mod faults;
pub mod kafka;
pub mod postgres;
pub mod qdrant;
pub mod tables;

use freshet::config::DataflowSpec;
use freshet::dataflow::chunk::Chunker;
use freshet::embed::hash::HashEmbedder;
use freshet::model::{collection_namespace, point_id, str_hash, ContentHash, DocId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

pub const TOAST: &str = "__debezium_unavailable_value";

/// One row of `articles`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: u64,
    pub title: String,
    pub body: String,
    pub lang: String,
    pub status: String,
}

/// One event of a history, as the oracle sees it.
#[derive(Clone, Debug)]
pub enum Ev {
    Upsert { row: Row, lsn: u64, toast_body: bool },
    Delete { id: u64, lsn: u64 },
    Truncate { lsn: u64 },
    Tombstone,
}

impl Ev {
    pub fn to_json(&self) -> String {
        match self {
            Ev::Upsert { row, lsn, toast_body } => {
                let body = if *toast_body { TOAST.to_string() } else { row.body.clone() };
                json!({"before": null, "after": {"article_id": row.id, "title": row.title, "body": body,
                        "lang": row.lang, "status": row.status, "updated_at": lsn},
                       "source": {"version": "2.7.1.Final", "connector": "postgresql", "name": "t", "ts_ms": 1_700_000_000_000u64 + lsn,
                                  "snapshot": "false", "db": "app", "schema": "public", "table": "articles", "txId": lsn, "lsn": lsn},
                       "op": "u", "ts_ms": 1_700_000_000_100u64 + lsn}).to_string()
            }
            Ev::Delete { id, lsn } => json!({"before": {"article_id": id, "title": "", "body": "", "lang": "", "status": "", "updated_at": 0},
                       "after": null,
                       "source": {"version": "2.7.1.Final", "connector": "postgresql", "name": "t", "ts_ms": 1_700_000_000_000u64 + lsn,
                                  "snapshot": "false", "db": "app", "schema": "public", "table": "articles", "txId": lsn, "lsn": lsn},
                       "op": "d", "ts_ms": 1_700_000_000_100u64 + lsn}).to_string(),
            Ev::Truncate { lsn } => json!({"source": {"version": "2.7.1.Final", "connector": "postgresql", "name": "t",
                       "ts_ms": 1_700_000_000_000u64 + lsn, "snapshot": "false", "db": "app", "schema": "public", "table": "articles", "txId": lsn, "lsn": lsn},
                       "op": "t", "ts_ms": 1_700_000_000_100u64 + lsn}).to_string(),
            Ev::Tombstone => "null".to_string(),
        }
    }
}

const WORDS: &[&str] = &[
    "river", "delta", "index", "lantern", "harbor", "orbit", "garden", "engine", "signal", "copper", "meadow",
    "glacier", "ledger", "violet", "thunder", "pepper", "marble", "falcon", "cedar", "quartz",
];

fn para(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(4..30);
    let mut s: Vec<&str> = (0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
    if let Some(f) = s.first_mut() {
        *f = WORDS[rng.random_range(0..WORDS.len())];
    }
    format!("{}.", s.join(" "))
}

/// A random history: creates, one-paragraph edits, metadata flips (some with the body as a
/// TOAST placeholder), title edits with a TOAST body (dead-lettered by design), deletes,
/// re-creates, duplicated and out-of-order events, tombstones, the odd truncate.
pub fn random_history(seed: u64, n_docs: u64, n_events: usize, truncates: bool) -> Vec<Ev> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut lsn = 1000u64;
    let mut rows: BTreeMap<u64, Option<Row>> = BTreeMap::new();
    let mut out: Vec<Ev> = Vec::new();
    for _ in 0..n_events {
        lsn += rng.random_range(1..5);
        let id = rng.random_range(1..=n_docs);
        let cur = rows.get(&id).cloned().flatten();
        let roll = rng.random_range(0..100);
        let ev = match (roll, cur) {
            (0..=1, _) if truncates => {
                rows.values_mut().for_each(|r| *r = None);
                Ev::Truncate { lsn }
            }
            (_, None) => {
                let n = rng.random_range(1..6);
                let body = (0..n).map(|_| para(&mut rng)).collect::<Vec<_>>().join("\n\n");
                let row = Row {
                    id,
                    title: format!("Title {id} {}", para(&mut rng)),
                    body,
                    lang: "en".into(),
                    status: "draft".into(),
                };
                rows.insert(id, Some(row.clone()));
                Ev::Upsert { row, lsn, toast_body: false }
            }
            (2..=35, Some(mut row)) => {
                let mut ps: Vec<String> = row.body.split("\n\n").map(String::from).collect();
                let k = rng.random_range(0..ps.len());
                match rng.random_range(0..6) {
                    0 => ps.insert(k, para(&mut rng)),
                    1 if ps.len() > 1 => {
                        ps.remove(k);
                    }
                    _ => ps[k] = para(&mut rng),
                }
                row.body = ps.join("\n\n");
                rows.insert(id, Some(row.clone()));
                Ev::Upsert { row, lsn, toast_body: false }
            }
            (36..=60, Some(mut row)) => {
                row.status = ["draft", "published", "archived"][rng.random_range(0..3)].into();
                if rng.random_bool(0.3) {
                    row.lang = ["en", "de", "fr"][rng.random_range(0..3)].into();
                }
                let toast = rng.random_bool(0.5);
                rows.insert(id, Some(row.clone()));
                Ev::Upsert { row, lsn, toast_body: toast }
            }
            (61..=64, Some(mut row)) => {
                // A title edit while the body is a TOAST placeholder: freshet cannot
                // re-chunk without the body and dead-letters it (documented limitation).
                row.title = format!("Retitled {id} {}", para(&mut rng));
                Ev::Upsert { row, lsn, toast_body: true }
            }
            (65..=72, Some(row)) => {
                // Same content again (no-op).
                Ev::Upsert { row, lsn, toast_body: false }
            }
            (73..=84, Some(_)) => {
                rows.insert(id, None);
                let d = Ev::Delete { id, lsn };
                out.push(d);
                Ev::Tombstone
            }
            (_, Some(row)) => Ev::Upsert { row, lsn, toast_body: false },
        };
        out.push(ev);
        // Duplicates and out-of-order replays of earlier events.
        if rng.random_range(0..100) < 8 && out.len() > 3 {
            let j = rng.random_range(0..out.len() - 1);
            let e = out[j].clone();
            out.push(e);
        }
    }
    out
}

/// The independent oracle's view of one document.
#[derive(Clone, Debug)]
struct ODoc {
    version: u64,
    row: Option<Row>,
    payload_version: u64,
    /// The title and body of the change that last altered content or metadata (a no-op
    /// that reshapes the body without changing a chunk writes nothing, so its text field
    /// hashes are not in the payloads).
    fields: Option<(String, String)>,
}

/// Expected export lines (sorted by id) and the hashes of all applied versions.
pub struct Expected {
    pub export: Vec<Value>,
    pub final_hashes: BTreeSet<ContentHash>,
    pub applied_hashes: BTreeSet<ContentHash>,
    pub dead_lettered: usize,
}

pub fn oracle(spec: &DataflowSpec, events: &[Ev], model_id: &str, dim: usize) -> Expected {
    let chunker = Chunker::new(&spec.chunker);
    let chunks_of = |r: &Row| chunker.chunks(&format!("{}\n\n{}", r.title, r.body));
    let mut docs: BTreeMap<u64, ODoc> = BTreeMap::new();
    let mut truncated_at = 0u64;
    let mut applied_hashes = BTreeSet::new();
    let mut dead = 0;
    for ev in events {
        match ev {
            Ev::Tombstone => {}
            Ev::Truncate { lsn } => {
                if *lsn <= truncated_at {
                    continue;
                }
                truncated_at = *lsn;
                for d in docs.values_mut() {
                    if d.version < *lsn {
                        *d = ODoc { version: *lsn, row: None, payload_version: *lsn, fields: None };
                    }
                }
            }
            Ev::Delete { id, lsn } => {
                if *lsn <= truncated_at || docs.get(id).is_some_and(|d| d.version >= *lsn) {
                    continue;
                }
                docs.insert(*id, ODoc { version: *lsn, row: None, payload_version: *lsn, fields: None });
            }
            Ev::Upsert { row, lsn, toast_body } => {
                if *lsn <= truncated_at || docs.get(&row.id).is_some_and(|d| d.version >= *lsn) {
                    continue;
                }
                let prev = docs.get(&row.id).and_then(|d| d.row.clone());
                let mut new = row.clone();
                if *toast_body {
                    match &prev {
                        Some(p) if p.title == row.title => new.body = p.body.clone(),
                        _ => {
                            dead += 1;
                            continue;
                        }
                    }
                }
                let changed = match &prev {
                    None => true,
                    Some(p) => {
                        chunks_of(p) != chunks_of(&new)
                            || (&p.lang, &p.status, &p.title) != (&new.lang, &new.status, &new.title)
                    }
                };
                let payload_version = if changed { *lsn } else { docs[&row.id].payload_version };
                // An unchanged-TOAST body keeps the hash freshet has for it: the one of the
                // last change it wrote.
                let last = docs.get(&row.id).and_then(|d| d.fields.clone());
                let body = match (&last, *toast_body) {
                    (Some((_, b)), true) => b.clone(),
                    _ => new.body.clone(),
                };
                let fields = if changed { Some((new.title.clone(), body)) } else { last };
                if prev.as_ref().is_none_or(|p| chunks_of(p) != chunks_of(&new)) {
                    for c in chunks_of(&new) {
                        applied_hashes.insert(ContentHash::of(&c));
                    }
                }
                docs.insert(row.id, ODoc { version: *lsn, row: Some(new), payload_version, fields });
            }
        }
    }
    let ns = collection_namespace(&spec.sink.collection);
    // `freshet/hash-<dim>-seed<n>` is the hash embedder with another seed.
    let seed = model_id.rsplit_once("-seed").and_then(|(_, s)| s.parse().ok()).unwrap_or(0);
    let emb = HashEmbedder::new(dim).with_seed(seed);
    let mut export = Vec::new();
    let mut final_hashes = BTreeSet::new();
    for (id, d) in &docs {
        let Some(r) = &d.row else { continue };
        let doc_id = DocId(id.to_string());
        let (title, body) = d.fields.as_ref().expect("a live document has its last change's fields");
        let fh = [str_hash(title), str_hash(body)];
        for (i, c) in chunks_of(r).iter().enumerate() {
            let h = ContentHash::of(c);
            final_hashes.insert(h);
            let mut p = Map::new();
            p.insert("chunk_index".into(), json!(i));
            p.insert("content_hash".into(), json!(h.to_hex()));
            p.insert("doc_id".into(), json!(id.to_string()));
            p.insert("lang".into(), json!(r.lang));
            p.insert("model_id".into(), json!(model_id));
            p.insert("source_version".into(), json!(d.payload_version));
            p.insert("status".into(), json!(r.status));
            p.insert("text".into(), json!(c));
            p.insert("text_field_hashes".into(), json!(fh.iter().map(|x| format!("{x:016x}")).collect::<Vec<_>>()));
            p.insert("title".into(), json!(r.title));
            let pid = point_id(&ns, &doc_id, i as u32);
            export.push(json!({"id": pid.to_string(), "payload": Value::Object(p), "vector": emb.vector_for(&h)}));
        }
    }
    export.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Expected { export, final_hashes, applied_hashes, dead_lettered: dead }
}

pub fn write_events(path: &Path, events: &[Ev]) {
    let text: String = events.iter().map(|e| e.to_json() + "\n").collect();
    std::fs::write(path, text).expect("write events");
}

/// A dataflow file for tests (hash embedder, small chunks so documents have several).
pub fn test_dataflow(dir: &Path, input: &Path) -> PathBuf {
    write_dataflow(&dir.join("test.dataflow.toml"), &format!("kind = \"file\"\npath = \"{}\"", input.display()), "")
}

/// Write the test dataflow with the given `[source]` lines and extra `[embedder]` lines.
pub fn write_dataflow(path: &Path, source: &str, embedder_extra: &str) -> PathBuf {
    let text = format!(
        r#"name = "test"
[source]
{source}
table = "public.articles"
[document]
id = ["article_id"]
version = "source.lsn"
text = "{{title}}\n\n{{body}}"
metadata = ["title", "lang", "status"]
[chunker]
max_chars = 120
[embedder]
kind = "hash"
dimension = 16
max_wait_ms = 5
{embedder_extra}
[sink]
collection = "articles"
"#
    );
    std::fs::write(path, text).expect("write dataflow");
    path.to_path_buf()
}

/// Give a dataflow's sink another collection (alias) name.
pub fn with_collection(dataflow: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(dataflow)
        .expect("dataflow")
        .replace("collection = \"articles\"", &format!("collection = \"{name}\""));
    std::fs::write(dataflow, text).expect("write dataflow");
    dataflow.to_path_buf()
}

/// The hash embedder with seed 7 (model `freshet/hash-16-seed7`, "a new model" of the
/// test dataflow's dimension) as an `[embedder]` file for `freshet reindex --embedder`.
pub fn new_embedder_file(dir: &Path) -> PathBuf {
    let p = dir.join("new-embedder.toml");
    std::fs::write(&p, "[embedder]\nkind = \"hash\"\ndimension = 16\nseed = 7\nmax_wait_ms = 5\n").expect("write");
    p
}

/// Switch the test dataflow file to the new embedder (what the operator does after reindex).
pub fn use_new_embedder(dataflow: &Path) {
    let text =
        std::fs::read_to_string(dataflow).expect("dataflow").replace("dimension = 16\n", "dimension = 16\nseed = 7\n");
    std::fs::write(dataflow, text).expect("write dataflow");
}

pub fn test_config(dir: &Path, workers: usize) -> PathBuf {
    let path = dir.join(format!("test.config.{workers}.toml"));
    std::fs::write(
        &path,
        format!("workers = {workers}\ndata_dir = \"{}\"\nmax_records_per_pass = 50\n", dir.join("data").display()),
    )
    .expect("write config");
    path
}

/// The `freshet` binary under test: this build's, or `FRESHET_TEST_BIN` (another build of
/// it, e.g. a release binary, or one from before a fix to show that a test catches the bug).
pub fn freshet() -> Command {
    Command::new(std::env::var_os("FRESHET_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_freshet").into()))
}

/// Start `freshet run` (following its input) in the background; stdout is piped when
/// `capture_stdout` (for the summary printed at SIGTERM); stderr is discarded, or appended
/// to `$FRESHET_TEST_LOG_DIR/freshet-<pid of the test>.log` when that variable is set.
pub fn spawn_run(dataflow: &Path, config: &Path, capture_stdout: bool) -> std::process::Child {
    let stdout = if capture_stdout { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    let stderr = match std::env::var_os("FRESHET_TEST_LOG_DIR") {
        Some(dir) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join(format!("freshet-{}.log", std::process::id())))
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null()),
        None => std::process::Stdio::null(),
    };
    freshet()
        .args(["run", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn freshet run")
}

/// Start `freshet run` (following its input) with its log, at `info` (qdrant-edge's at
/// `error`), written to `log`.
pub fn spawn_run_logged(dataflow: &Path, config: &Path, log: &Path) -> std::process::Child {
    freshet()
        .args(["run", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,qdrant_edge=error")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the log file"))
        .spawn()
        .expect("spawn freshet run")
}

/// Run `freshet run --until-end` and return the summary JSON (last stdout line).
pub fn run_until_end(dataflow: &Path, config: &Path, extra: &[&str]) -> Value {
    let out = freshet()
        .args(["run", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .arg("--until-end")
        .args(extra)
        .output()
        .expect("spawn freshet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "freshet run failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("summary is JSON")
}

pub fn export(dataflow: &Path, config: &Path, with_vectors: bool) -> String {
    let mut cmd = freshet();
    cmd.args(["export", "--dataflow"]).arg(dataflow).arg("--config").arg(config);
    if with_vectors {
        cmd.arg("--with-vectors");
    }
    let out = cmd.output().expect("spawn freshet export");
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8")
}

/// Compare an export with the oracle point by point (vectors to 1e-5).
pub fn assert_export_matches(export: &str, expected: &[Value]) {
    let got: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).expect("export line")).collect();
    let got_ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap_or("")).collect();
    let exp_ids: Vec<&str> = expected.iter().map(|v| v["id"].as_str().unwrap_or("")).collect();
    if got_ids != exp_ids {
        let g: BTreeSet<_> = got_ids.iter().collect();
        let e: BTreeSet<_> = exp_ids.iter().collect();
        let extra: Vec<_> = g.difference(&e).take(3).collect();
        let missing: Vec<_> = e.difference(&g).take(3).collect();
        let show = |id: &&&str, set: &[Value]| set.iter().find(|v| v["id"].as_str() == Some(**id)).cloned();
        panic!(
            "point ids differ: {} exported, {} expected; extra {:?} e.g. {:?}; missing {:?} e.g. {:?}",
            got.len(),
            expected.len(),
            extra,
            extra.first().and_then(|i| show(i, &got)),
            missing,
            missing.first().and_then(|i| show(i, expected))
        );
    }
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g["payload"], e["payload"], "payload of point {}", e["id"]);
        let gv: Vec<f64> =
            g["vector"].as_array().expect("vector").iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
        let ev: Vec<f64> =
            e["vector"].as_array().expect("vector").iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
        assert_eq!(gv.len(), ev.len());
        for (a, b) in gv.iter().zip(&ev) {
            assert!((a - b).abs() < 1e-5, "vector of point {} differs", e["id"]);
        }
    }
}

/// `GET /metrics` on loopback.
pub fn get_metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A sample's value from Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// `GET path` on loopback with an optional bearer token: (status code, body).
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// The value of every sample of `name` (any labels) summed.
pub fn metric_sum(text: &str, name_with_brace: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_with_brace))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// A log line without its terminal colours.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "freshet.lock" {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// On a failure, keeps the test's directory (data, logs of every run) for a post-mortem
/// when `FRESHET_KEEP_FAILED` names where (`scripts/crash-test` sets it).
pub struct KeepOnFailure<'a>(pub &'a Path, pub u64);

impl Drop for KeepOnFailure<'_> {
    fn drop(&mut self) {
        if let (true, Some(to)) = (std::thread::panicking(), std::env::var_os("FRESHET_KEEP_FAILED")) {
            // A directory of its own even when an earlier failure of the seed was kept.
            let mut to = Path::new(&to).join(format!("seed-{}", self.1));
            for n in 2.. {
                if !to.exists() {
                    break;
                }
                to = to.with_file_name(format!("seed-{}-{n}", self.1));
            }
            copy_dir(self.0, &to);
            eprintln!("kept the failed run's directory in {}", to.display());
        }
    }
}
