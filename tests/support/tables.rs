//! Multi-table histories for the tests of documents built from several tables: `articles`
//! (the root: title, body, status, author_id, deleted_at), `authors` (looked up by
//! `author_id`), `article_tags` and `article_acl` (children by `article_id`), rendered as
//! Debezium JSON; and an oracle that joins the tables' final rows independently of freshet.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use freshet::dataflow::chunk::Chunker;
use freshet::embed::hash::HashEmbedder;
use freshet::model::{collection_namespace, point_id, str_hash, ContentHash, DocId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::TOAST;

/// The tables, in the dataflow's `[[tables]]` order.
pub const TABLES: [&str; 4] = ["articles", "authors", "article_tags", "article_acl"];

/// The dataflow of these tests (hash embedder, small chunks).
pub fn write_dataflow(dir: &Path, input: &Path) -> PathBuf {
    let path = dir.join("multi.dataflow.toml");
    let text = format!(
        r#"name = "multi"
[source]
kind = "file"
path = "{}"

[document]
root = "articles"
text = "{{title}}\n\nby {{author.name}}\n\n{{body}}\n\nTags: {{tags}}"
metadata = ["title", "status", "author.name", "tags", "allowed_groups"]
filter = 'deleted_at is null and status in ("published", "internal")'

[[tables]]
name = "articles"
table = "public.articles"
key = ["article_id"]
version = "source.lsn"
columns = ["title", "body", "status", "author_id", "deleted_at"]

[[tables]]
name = "authors"
table = "public.authors"
key = ["author_id"]
version = "source.lsn"
columns = ["name"]

[[tables]]
name = "article_tags"
table = "public.article_tags"
key = ["id"]
version = "source.lsn"
columns = ["article_id", "tag"]

[[tables]]
name = "article_acl"
table = "public.article_acl"
key = ["id"]
version = "source.lsn"
columns = ["article_id", "group_name"]

[[lookups]]
name = "author"
table = "authors"
on = "author_id"

[[children]]
name = "tags"
table = "article_tags"
parent = "article_id"
value = "tag"
order_by = "tag"

[[children]]
name = "allowed_groups"
table = "article_acl"
parent = "article_id"
value = "group_name"

[chunker]
max_chars = 120

[embedder]
kind = "hash"
dimension = 16
max_wait_ms = 5

[sink]
collection = "articles"
"#,
        input.display()
    );
    std::fs::write(&path, text).expect("write dataflow");
    path
}

/// The dataflow of these tests on Kafka: one topic per table (`topic(table)`).
pub fn write_kafka_dataflow(dir: &Path, topic: &dyn Fn(&str) -> String) -> PathBuf {
    let path = write_dataflow(dir, Path::new("unused"));
    let mut text = std::fs::read_to_string(&path).expect("read dataflow");
    text = text.replacen("kind = \"file\"\npath = \"unused\"", "kind = \"kafka\"", 1);
    for t in TABLES {
        let from = format!("table = \"public.{t}\"");
        text = text.replacen(&from, &format!("{from}\ntopics = [\"{}\"]", topic(t)), 1);
    }
    let path = dir.join("multi-kafka.dataflow.toml");
    std::fs::write(&path, text).expect("write dataflow");
    path
}

/// One row event.
#[derive(Clone, Debug)]
pub struct RowEv {
    pub table: &'static str,
    pub key: u64,
    pub lsn: u64,
    /// The row after (None: deleted).
    pub row: Option<Map<String, Value>>,
    /// Columns sent as Debezium's unchanged-TOAST placeholder.
    pub toast: Vec<&'static str>,
}

/// A table's key column.
pub fn key_column(table: &str) -> &'static str {
    match table {
        "articles" => "article_id",
        "authors" => "author_id",
        _ => "id",
    }
}

impl RowEv {
    /// The event as Debezium's Kafka records: on its table's topic, keyed by the row key,
    /// in partition `key % partitions` (a row's events keep their order); a delete is
    /// followed by its tombstone.
    pub fn records(&self, topic: &dyn Fn(&str) -> String, partitions: i32) -> Vec<super::kafka::Record> {
        let key = json!({key_column(self.table): self.key}).to_string();
        let partition = (self.key % partitions as u64) as i32;
        let mut out = vec![(topic(self.table), partition, key.clone(), Some(self.to_json()))];
        if self.row.is_none() {
            out.push((topic(self.table), partition, key, None));
        }
        out
    }

    pub fn to_json(&self) -> String {
        let source = json!({"version": "3.6.1.Final", "connector": "postgresql", "name": "app",
            "ts_ms": 1_700_000_000_000u64 + self.lsn, "snapshot": "false", "db": "app", "schema": "public",
            "table": self.table, "txId": self.lsn, "lsn": self.lsn});
        let kc = key_column(self.table);
        match &self.row {
            Some(r) => {
                let mut after = r.clone();
                after.insert(kc.into(), json!(self.key));
                for c in &self.toast {
                    after.insert((*c).into(), json!(TOAST));
                }
                json!({"before": null, "after": after, "source": source, "op": "u", "ts_ms": 1_700_000_000_100u64 + self.lsn})
            }
            None => json!({"before": {kc: self.key}, "after": null, "source": source, "op": "d",
                           "ts_ms": 1_700_000_000_100u64 + self.lsn}),
        }
        .to_string()
    }
}

/// The tables' contents: table → key → row.
pub type Db = BTreeMap<&'static str, BTreeMap<u64, Map<String, Value>>>;

const WORDS: &[&str] = &[
    "river", "delta", "index", "lantern", "harbor", "orbit", "garden", "engine", "signal", "copper", "meadow",
    "glacier", "ledger", "violet", "thunder", "pepper", "marble", "falcon", "cedar", "quartz",
];
const NAMES: &[&str] = &["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov"];
const TAGS: &[&str] = &["rust", "cdc", "search", "kafka", "postgres", "vectors"];
const GROUPS: &[&str] = &["staff", "eng", "sales", "public"];
const STATUSES: &[&str] = &["published", "internal", "draft"];

fn para(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(4..24);
    let s: Vec<&str> = (0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
    format!("{}.", s.join(" "))
}

/// A random history over the four tables, in the order the source delivers it, and the
/// tables' final contents. Creates, edits of one paragraph, status flips (the body as a
/// TOAST placeholder), soft deletes and their undo, author renames, foreign keys that move
/// (an article to another author, a tag to another article), hard deletes of any row (of
/// parents with live children too), rows arriving before the rows they name, duplicates,
/// and stale versions of a row re-sent after newer ones.
pub fn random_history(seed: u64, n_articles: u64, n_events: usize) -> (Vec<RowEv>, Db) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut db: Db = TABLES.iter().map(|t| (*t, BTreeMap::new())).collect();
    let mut evs: Vec<RowEv> = Vec::new();
    let mut lsn = 1000u64;
    let n_authors = (n_articles / 4).max(2);
    let mut next_child = 1u64;
    for _ in 0..n_events {
        lsn += rng.random_range(1..5);
        let pick = rng.random_range(0..100);
        let (table, key, toast, row): (&'static str, u64, Vec<&'static str>, Option<Map<String, Value>>) = if pick < 40
        {
            let id = rng.random_range(1..=n_articles);
            let prev = db["articles"].get(&id).cloned();
            match prev {
                Some(_) if rng.random_bool(0.05) => ("articles", id, vec![], None),
                Some(mut r) => {
                    let mut toast = vec![];
                    match rng.random_range(0..6) {
                        0 => {
                            // Edit one paragraph of the body.
                            let mut ps: Vec<String> =
                                r["body"].as_str().unwrap_or("").split("\n\n").map(String::from).collect();
                            let i = rng.random_range(0..ps.len());
                            ps[i] = para(&mut rng);
                            r.insert("body".into(), json!(ps.join("\n\n")));
                        }
                        1 => {
                            r.insert("status".into(), json!(STATUSES[rng.random_range(0..STATUSES.len())]));
                            toast.push("body");
                        }
                        2 => {
                            let soft = if r["deleted_at"].is_null() { json!(lsn) } else { Value::Null };
                            r.insert("deleted_at".into(), soft);
                            toast.push("body");
                        }
                        3 => {
                            r.insert("author_id".into(), json!(rng.random_range(1..=n_authors)));
                        }
                        4 => {
                            r.insert(
                                "title".into(),
                                json!(format!("{} {}", WORDS[rng.random_range(0..WORDS.len())], id)),
                            );
                        }
                        _ => {
                            // An update that changes nothing freshet uses.
                            toast.push("body");
                        }
                    }
                    ("articles", id, toast, Some(r))
                }
                None => {
                    let body = (0..rng.random_range(1..5)).map(|_| para(&mut rng)).collect::<Vec<_>>().join("\n\n");
                    let mut r = Map::new();
                    r.insert("title".into(), json!(format!("Article {id}")));
                    r.insert("body".into(), json!(body));
                    r.insert("status".into(), json!(STATUSES[rng.random_range(0..STATUSES.len())]));
                    // Sometimes an author that does not exist (yet).
                    r.insert("author_id".into(), json!(rng.random_range(1..=n_authors + 1)));
                    r.insert("deleted_at".into(), Value::Null);
                    ("articles", id, vec![], Some(r))
                }
            }
        } else if pick < 55 {
            let id = rng.random_range(1..=n_authors + 1);
            if db["authors"].contains_key(&id) && rng.random_bool(0.1) {
                ("authors", id, vec![], None)
            } else {
                let mut r = Map::new();
                r.insert("name".into(), json!(format!("{} {}", NAMES[rng.random_range(0..NAMES.len())], id)));
                ("authors", id, vec![], Some(r))
            }
        } else {
            let table = if pick < 80 { "article_tags" } else { "article_acl" };
            let live: Vec<u64> = db[table].keys().copied().collect();
            if !live.is_empty() && rng.random_bool(0.35) {
                let id = live[rng.random_range(0..live.len())];
                if rng.random_bool(0.5) {
                    (table, id, vec![], None)
                } else {
                    // Move it to another article (a foreign key that moves).
                    let mut r = db[table][&id].clone();
                    r.insert("article_id".into(), json!(rng.random_range(1..=n_articles)));
                    (table, id, vec![], Some(r))
                }
            } else {
                let id = next_child;
                next_child += 1;
                let mut r = Map::new();
                r.insert("article_id".into(), json!(rng.random_range(1..=n_articles)));
                if table == "article_tags" {
                    r.insert("tag".into(), json!(TAGS[rng.random_range(0..TAGS.len())]));
                } else {
                    r.insert("group_name".into(), json!(GROUPS[rng.random_range(0..GROUPS.len())]));
                }
                (table, id, vec![], Some(r))
            }
        };
        let t = db.get_mut(table).expect("table");
        match &row {
            Some(r) => {
                t.insert(key, r.clone());
            }
            None => {
                t.remove(&key);
            }
        }
        evs.push(RowEv { table, key, lsn, row, toast });
    }
    // Delivery order: each event delayed by up to 40 places, never before an earlier
    // event of its own row (one row's events share a partition); then duplicates and
    // stale re-sends.
    let mut last: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    let mut keyed: Vec<(usize, usize, RowEv)> = Vec::new();
    for (i, e) in evs.into_iter().enumerate() {
        let at = (i + rng.random_range(0..40)).max(last.get(&(e.table, e.key)).copied().unwrap_or(0));
        last.insert((e.table, e.key), at);
        keyed.push((at, i, e));
    }
    keyed.sort_by_key(|(at, i, _)| (*at, *i));
    let mut out: Vec<RowEv> = Vec::new();
    for (_, _, e) in keyed {
        out.push(e.clone());
        if rng.random_bool(0.03) {
            out.push(e);
        } else if rng.random_bool(0.03) && out.len() > 10 {
            // A stale version of some row, re-sent late.
            let old = out[rng.random_range(0..out.len() - 5)].clone();
            out.push(old);
        }
    }
    (out, db)
}

pub fn write_events(path: &Path, events: &[RowEv]) {
    let text: String = events.iter().map(|e| e.to_json() + "\n").collect();
    std::fs::write(path, text).expect("write events");
}

/// One expected document: its metadata and text fields.
pub struct ODoc {
    pub fields: Vec<(&'static str, String)>,
    pub meta: Map<String, Value>,
}

/// The documents the tables hold: join, filter and render, independently of freshet.
pub fn documents(db: &Db) -> BTreeMap<u64, ODoc> {
    let mut out = BTreeMap::new();
    for (id, a) in &db["articles"] {
        let Some(author) = a["author_id"].as_u64().and_then(|aid| db["authors"].get(&aid)) else { continue };
        let status = a["status"].as_str().unwrap_or("");
        if !a["deleted_at"].is_null() || !["published", "internal"].contains(&status) {
            continue;
        }
        let children = |table: &str, col: &str, by_value: bool| -> Vec<String> {
            // By value (when ordered by it), then by the child row's key as text.
            let mut v: Vec<(String, String)> = db[table]
                .iter()
                .filter(|(_, r)| r["article_id"].as_u64() == Some(*id))
                .map(|(k, r)| (r[col].as_str().unwrap_or("").to_string(), k.to_string()))
                .collect();
            if by_value {
                v.sort();
            } else {
                v.sort_by(|a, b| a.1.cmp(&b.1));
            }
            v.into_iter().map(|(s, _)| s).collect()
        };
        let tags = children("article_tags", "tag", true);
        let groups = children("article_acl", "group_name", false);
        let name = author["name"].as_str().unwrap_or("").to_string();
        let title = a["title"].as_str().unwrap_or("").to_string();
        let mut meta = Map::new();
        meta.insert("title".into(), json!(title));
        meta.insert("status".into(), json!(status));
        // A dotted metadata name is a nested object in the payload (Qdrant's path syntax).
        meta.insert("author".into(), json!({"name": name}));
        meta.insert("tags".into(), json!(tags));
        meta.insert("allowed_groups".into(), json!(groups));
        let fields = vec![
            ("title", title),
            ("author.name", name),
            ("body", a["body"].as_str().unwrap_or("").to_string()),
            ("tags", tags.join(", ")),
        ];
        out.insert(*id, ODoc { fields, meta });
    }
    out
}

/// The text of a document.
pub fn text(d: &ODoc) -> String {
    let f = |n: &str| d.fields.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()).unwrap_or_default();
    format!("{}\n\nby {}\n\n{}\n\nTags: {}", f("title"), f("author.name"), f("body"), f("tags"))
}

/// The export the tables should produce (payloads without `source_version`, which is the
/// time a document was last written), sorted by point id; and every chunk's hash.
pub fn expected_export(db: &Db, max_chars: usize) -> (Vec<Value>, BTreeSet<ContentHash>) {
    let chunker = Chunker::new(&freshet::config::ChunkerSpec { max_chars, overlap_chars: 0 });
    let ns = collection_namespace("articles");
    let emb = HashEmbedder::new(16);
    let mut export = Vec::new();
    let mut hashes = BTreeSet::new();
    for (id, d) in documents(db) {
        let doc_id = DocId(id.to_string());
        let fh: Vec<String> = d.fields.iter().map(|(_, v)| format!("{:016x}", str_hash(v))).collect();
        for (i, c) in chunker.chunks(&text(&d)).iter().enumerate() {
            let h = ContentHash::of(c);
            hashes.insert(h);
            let mut p = d.meta.clone();
            p.insert("chunk_index".into(), json!(i));
            p.insert("content_hash".into(), json!(h.to_hex()));
            p.insert("doc_id".into(), json!(id.to_string()));
            p.insert("model_id".into(), json!("freshet/hash-16"));
            p.insert("text".into(), json!(c));
            p.insert("text_field_hashes".into(), json!(fh));
            let pid = point_id(&ns, &doc_id, i as u32);
            export.push(json!({"id": pid.to_string(), "payload": Value::Object(p), "vector": emb.vector_for(&h)}));
        }
    }
    export.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    (export, hashes)
}

/// An export with `source_version` taken out of each payload, for [`super::assert_export_matches`].
pub fn without_versions(export: &str) -> String {
    export
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("export line");
            if let Some(p) = v["payload"].as_object_mut() {
                p.remove("source_version");
            }
            v.to_string() + "\n"
        })
        .collect()
}
