//! Documents from several tables (issue 17): random multi-table histories fed to a
//! following `freshet run` bit by bit and compared, point by point, with an oracle that
//! joins the tables' final rows independently; and what a change to each kind of table
//! costs (embeddings, payload updates, deletes).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::tables::{expected_export, random_history, without_versions, write_dataflow, Db, RowEv, TABLES};
use support::{assert_export_matches, export, get_metrics, metric, metric_sum, spawn_run};

/// A `freshet run` following its input file, with its metrics on a port of its own; killed
/// if the test fails before it is stopped.
struct Follow {
    child: Option<std::process::Child>,
    port: u16,
    input: PathBuf,
    dataflow: PathBuf,
    config: PathBuf,
    written: usize,
}

impl Follow {
    fn start(dir: &Path, workers: usize, first: &[RowEv]) -> Self {
        let input = dir.join("events.jsonl");
        std::fs::write(&input, "").expect("create input");
        let dataflow = write_dataflow(dir, &input);
        let text = std::fs::read_to_string(&dataflow).expect("dataflow");
        let text = text.replacen(
            "max_wait_ms = 5",
            &format!("max_wait_ms = 5\ncall_log = \"{}\"", dir.join("calls.log").display()),
            1,
        );
        std::fs::write(&dataflow, text).expect("write dataflow");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let config = dir.join("multi.config.toml");
        std::fs::write(
            &config,
            format!(
                "workers = {workers}\ndata_dir = \"{}\"\nmax_records_per_pass = 50\nmetrics_addr = \"127.0.0.1:{port}\"\n",
                dir.join("data").display()
            ),
        )
        .expect("write config");
        let mut f = Self { child: None, port, input, dataflow, config, written: 0 };
        f.append(first);
        f.child = Some(spawn_run(&f.dataflow, &f.config, false));
        f
    }

    fn append(&mut self, evs: &[RowEv]) {
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.input).expect("open input");
        let text: String = evs.iter().map(|e| e.to_json() + "\n").collect();
        file.write_all(text.as_bytes()).expect("append");
        self.written += evs.len();
    }

    /// Wait until every record written is acknowledged; the metrics text then.
    fn caught_up(&self) -> String {
        let start = Instant::now();
        loop {
            let m = get_metrics(self.port).unwrap_or_default();
            let got = metric(&m, "freshet_events_received_total").unwrap_or(0.0) as usize;
            let acked = metric_sum(&m, "freshet_events_total{") as usize;
            if got == self.written && acked == self.written {
                return m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "not caught up: received {got} of {}, acknowledged {acked}",
                self.written
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` the run and start it again on the same data directory.
    fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
        self.child = Some(spawn_run(&self.dataflow, &self.config, false));
    }

    fn stop(mut self) -> String {
        let child = self.child.take().expect("running");
        let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()));
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "freshet did not stop cleanly");
        without_versions(&export(&self.dataflow, &self.config, true))
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counters read from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Cost {
    embedded: u64,
    upserted: u64,
    payload_updated: u64,
    deleted: u64,
}

fn cost(m: &str) -> Cost {
    let n = |name: &str| metric(m, name).unwrap_or(0.0) as u64;
    Cost {
        embedded: n("freshet_chunks_embedded_total"),
        upserted: n("freshet_points_written_total{op=\"upsert\"}"),
        payload_updated: n("freshet_points_written_total{op=\"set_payload\"}"),
        deleted: n("freshet_points_written_total{op=\"delete\"}"),
    }
}

fn since(a: Cost, b: Cost) -> Cost {
    Cost {
        embedded: b.embedded - a.embedded,
        upserted: b.upserted - a.upserted,
        payload_updated: b.payload_updated - a.payload_updated,
        deleted: b.deleted - a.deleted,
    }
}

/// Property: for random histories over four tables (a lookup, two child collections, a
/// filter; rows in any order across tables, duplicates, stale re-sends, TOAST
/// placeholders, foreign keys that move, parents deleted under live children), appended
/// bit by bit to a followed file, the collection equals the oracle's join of the final
/// tables, with 1, 2 and 4 workers; every distinct chunk text is embedded exactly once (the
/// hash embedder's call log); and the counters reconcile, per table too.
#[test]
fn random_multi_table_histories_end_as_the_oracle_joins_them() {
    for (seed, workers) in [(1u64, 1usize), (2, 2), (3, 4)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (events, db) = random_history(seed, 60, 1500);
        let (first, rest) = events.split_at(150);
        let mut run = Follow::start(dir.path(), workers, first);
        run.caught_up();
        for part in rest.chunks(37) {
            run.append(part);
            std::thread::sleep(Duration::from_millis(15));
        }
        let m = run.caught_up();
        // Every distinct chunk text embedded once (the hash embedder's call log lists the
        // content hashes it was given), the collection's among them.
        let log = std::fs::read_to_string(dir.path().join("calls.log")).unwrap_or_default();
        let embedded: Vec<&str> = log.lines().flat_map(|l| l.split(' ').skip(1)).collect();
        let distinct: std::collections::BTreeSet<&str> = embedded.iter().copied().collect();
        assert_eq!(embedded.len(), distinct.len(), "seed {seed}: a chunk text was embedded twice");
        assert_eq!(metric(&m, "freshet_chunks_embedded_total").unwrap_or(0.0) as usize, embedded.len());
        let by_table = assert_tables_reconcile(&m);
        for t in TABLES {
            assert!(by_table.get(t).is_some_and(|n| *n > 0), "seed {seed}: table {t} counted: {by_table:?}");
        }
        let superseded = metric(&m, "freshet_events_total{outcome=\"superseded\"}").unwrap_or(0.0);
        let dead = metric(&m, "freshet_events_total{outcome=\"dead_lettered\"}").unwrap_or(0.0);
        assert!(superseded > 0.0, "seed {seed}: the history re-sends stale rows");
        assert_eq!(dead, 0.0, "seed {seed}: nothing is dead-lettered");
        let (expected, hashes) = expected_export(&db, 120);
        assert!(expected.len() > 50, "the history leaves documents: {}", expected.len());
        let missing: Vec<_> = hashes.iter().map(|h| h.to_hex()).filter(|h| !distinct.contains(h.as_str())).collect();
        assert!(missing.is_empty(), "seed {seed}: chunks of the collection never embedded: {missing:?}");
        assert_export_matches(&run.stop(), &expected);
    }
}

/// The per-table counters reconcile: for each table, received is applied plus noop plus
/// superseded plus dead_lettered, and the tables' received add up to the records received.
/// Returns the received count by table.
fn assert_tables_reconcile(m: &str) -> std::collections::BTreeMap<String, u64> {
    let mut by: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for line in m.lines().filter(|l| l.starts_with("freshet_table_events_total{")) {
        let (labels, value) = line.rsplit_once(' ').expect("a sample");
        let label = |name: &str| {
            let from = labels.find(&format!("{name}=\"")).expect("the label") + name.len() + 2;
            labels[from..].split('"').next().expect("a value").to_string()
        };
        by.insert((label("table"), label("outcome")), value.parse::<f64>().expect("a number") as u64);
    }
    let tables: std::collections::BTreeSet<String> = by.keys().map(|(t, _)| t.clone()).collect();
    let mut received = std::collections::BTreeMap::new();
    for t in &tables {
        let n = |o: &str| by.get(&(t.clone(), o.to_string())).copied().unwrap_or(0);
        assert_eq!(
            n("received"),
            n("applied") + n("noop") + n("superseded") + n("dead_lettered"),
            "table {t}: the counters do not reconcile: {by:?}"
        );
        received.insert(t.clone(), n("received"));
    }
    let total = metric(m, "freshet_events_received_total").unwrap_or(0.0) as u64;
    assert_eq!(received.values().sum::<u64>(), total, "the tables' received counts add up to the records received");
    received
}

/// A hand-written history and its tables, for the cost scenarios.
struct Story {
    db: Db,
    lsn: u64,
}

impl Story {
    fn new() -> Self {
        Self { db: TABLES.iter().map(|t| (*t, Default::default())).collect(), lsn: 5000 }
    }

    fn ev(&mut self, table: &'static str, key: u64, row: Option<Value>) -> RowEv {
        self.lsn += 1;
        let row: Option<Map<String, Value>> = row.map(|r| r.as_object().expect("an object").clone());
        let t = self.db.get_mut(table).expect("table");
        match &row {
            Some(r) => {
                t.insert(key, r.clone());
            }
            None => {
                t.remove(&key);
            }
        }
        RowEv { table, key, lsn: self.lsn, row, toast: vec![] }
    }

    fn article(&mut self, id: u64, author: u64, deleted_at: Value) -> RowEv {
        let body = format!(
            "The first paragraph of article {id} talks about rivers and deltas.\n\n\
             A second paragraph, about harbors and engines, long enough for its own chunk.\n\n\
             A third one on ledgers, lanterns and copper {id}."
        );
        self.ev(
            "articles",
            id,
            Some(json!({"title": format!("Article {id}"), "body": body, "status": "published", "author_id": author, "deleted_at": deleted_at})),
        )
    }
}

/// What a change to each kind of table costs: an author rename re-embeds only the chunks
/// whose text holds the name; an ACL row removed from a document of K chunks is K payload
/// updates and no embedding; a soft delete removes the points and its undo brings them
/// back, neither embedding anything; a change to a column no document uses writes nothing.
#[test]
fn a_change_to_a_joined_row_costs_only_what_it_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Story::new();
    let mut first = vec![s.ev("authors", 1, Some(json!({"name": "Ada Lovelace"})))];
    first.push(s.ev("authors", 2, Some(json!({"name": "Alan Turing"}))));
    for id in 1..=12 {
        let a = s.article(id, if id <= 8 { 1 } else { 2 }, Value::Null);
        first.push(a);
    }
    for (k, g) in [(1, "staff"), (2, "eng"), (3, "sales")] {
        first.push(s.ev("article_acl", k, Some(json!({"article_id": 1, "group_name": g}))));
    }
    first.push(s.ev("article_tags", 1, Some(json!({"article_id": 1, "tag": "rust"}))));
    let mut run = Follow::start(dir.path(), 2, &first);
    let c0 = cost(&run.caught_up());
    let (expected, _) = expected_export(&s.db, 120);
    let chunks_of =
        |e: &[Value], id: u64| e.iter().filter(|p| p["payload"]["doc_id"] == json!(id.to_string())).count() as u64;
    let k = chunks_of(&expected, 1);
    assert!(k >= 3, "article 1 has several chunks ({k})");
    let (_, distinct) = expected_export(&s.db, 120);
    assert_eq!(c0.embedded, distinct.len() as u64, "the first load embeds every distinct chunk once");

    // An ACL row removed: K payload updates, nothing embedded.
    let e = s.ev("article_acl", 2, None);
    run.append(&[e]);
    let c1 = cost(&run.caught_up());
    assert_eq!(since(c0, c1), Cost { payload_updated: k, ..Cost::default() }, "ACL change on a document of {k} chunks");

    // An author rename: the chunks holding the name are embedded again, the others updated.
    let before: std::collections::BTreeSet<String> =
        expected_export(&s.db, 120).0.iter().map(|p| p["payload"]["content_hash"].to_string()).collect();
    let e = s.ev("authors", 1, Some(json!({"name": "Ada King"})));
    run.append(&[e]);
    let c2 = cost(&run.caught_up());
    let after = expected_export(&s.db, 120).0;
    let with_name: Vec<&Value> =
        after.iter().filter(|p| p["payload"]["text"].as_str().is_some_and(|t| t.contains("Ada King"))).collect();
    let new_hashes: std::collections::BTreeSet<String> =
        after.iter().map(|p| p["payload"]["content_hash"].to_string()).filter(|h| !before.contains(h)).collect();
    assert_eq!(with_name.len(), 8, "one chunk of each of the author's 8 articles holds the name");
    // The 8 chunks are the same text ("by Ada King"): one embedding, eight points.
    assert_eq!(new_hashes.len(), 1);
    let moved: u64 = (1..=8).map(|id| chunks_of(&after, id)).sum();
    assert_eq!(
        since(c1, c2),
        Cost { embedded: new_hashes.len() as u64, upserted: 8, payload_updated: moved - 8, deleted: 0 },
        "an author rename touching 8 articles"
    );

    // A soft delete and its undo: points out, then back with the vectors they had.
    let n3 = chunks_of(&after, 3);
    let e = s.article(3, 1, json!(1_700_000_000));
    run.append(&[e]);
    let c3 = cost(&run.caught_up());
    assert_eq!(since(c2, c3), Cost { deleted: n3, ..Cost::default() }, "a soft delete");
    let e = s.article(3, 1, Value::Null);
    run.append(&[e]);
    let c4 = cost(&run.caught_up());
    assert_eq!(since(c3, c4), Cost { upserted: n3, ..Cost::default() }, "its undo embeds nothing");

    // A column no document uses (an author row's own key rewritten the same; an ACL row of a
    // document that is not there): nothing written.
    let e1 = s.ev("authors", 2, Some(json!({"name": "Alan Turing"})));
    let e2 = s.ev("article_acl", 9, Some(json!({"article_id": 99, "group_name": "eng"})));
    run.append(&[e1, e2]);
    let c5 = cost(&run.caught_up());
    assert_eq!(since(c4, c5), Cost::default(), "changes no document sees write nothing");

    assert_export_matches(&run.stop(), &expected_export(&s.db, 120).0);
}

/// A restart reads the file from its start and rebuilds the tables in one pass before any
/// document is rendered: every document renders as the collection holds it, so nothing is
/// embedded or written again, and the export is byte for byte the same.
#[test]
fn a_restart_rebuilds_the_tables_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    let (events, db) = random_history(11, 80, 2000);
    support::tables::write_events(&input, &events);
    let dataflow = write_dataflow(dir.path(), &input);
    let config = support::test_config(dir.path(), 2);
    let first = support::run_until_end(&dataflow, &config, &[]);
    assert!(first["chunks_embedded"].as_u64().unwrap_or(0) > 0, "{first}");
    let exported = export(&dataflow, &config, true);
    assert_export_matches(&without_versions(&exported), &expected_export(&db, 120).0);
    // A looked-up field filters by its dotted name (a nested object in the payload).
    let docs = support::tables::documents(&db);
    let author = docs.values().next().and_then(|d| d.meta["author"]["name"].as_str()).expect("an author").to_string();
    let want: std::collections::BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| d.meta["author"]["name"] == author.as_str())
        .map(|(id, _)| id.to_string())
        .collect();
    let out = support::freshet()
        .args(["search", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .args(["rivers", "-k", "10000", "--filter", &format!("author.name={}", json!(author))])
        .output()
        .expect("freshet search");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a hit")["doc_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, want, "a search filtered by author.name = {author:?} finds that author's documents");
    let second = support::run_until_end(&dataflow, &config, &[]);
    for k in ["chunks_embedded", "points_upserted", "points_payload_updated", "points_deleted"] {
        assert_eq!(second[k].as_u64(), Some(0), "{k} after a restart: {second}");
    }
    assert_eq!(export(&dataflow, &config, true), exported, "the restart changed the collection");
}

/// `kill -9` at 5 random moments while a multi-table history is appended: each restart
/// reads the file from its start, rebuilds the tables and renders the documents against
/// what the collection holds; the final collection equals the oracle's join.
#[test]
fn kill_9_at_random_moments_ends_as_the_oracle_joins_them() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let dir = tempfile::tempdir().expect("tempdir");
    let (events, db) = random_history(17, 200, 6000);
    let (first, rest) = events.split_at(3000);
    let mut run = Follow::start(dir.path(), 2, first);
    let kills: std::collections::BTreeSet<usize> = (0..5).map(|_| rng.random_range(0..rest.len() / 50)).collect();
    for (i, part) in rest.chunks(50).enumerate() {
        run.append(part);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        if kills.contains(&i) {
            run.kill_and_restart();
        }
    }
    // The last run read the file from its start: it has caught up when it acknowledged
    // every line.
    run.caught_up();
    let (expected, _) = expected_export(&db, 120);
    assert_export_matches(&run.stop(), &expected);
}

/// Kafka (issue 17): one topic per table, 4 partitions each, Debezium's records (keyed by the
/// row key, a tombstone after each delete); `freshet run` (2 workers) killed with SIGKILL at
/// 5 random moments while the history is produced. After each kill, the table state on
/// disk holds every row at least at the version of its last event below the committed
/// offsets (the offsets are never ahead of the durable state, which is never behind the
/// collection); each restart resumes from the committed offsets (it receives exactly the
/// records after them: no topic is read from its beginning); the final collection equals
/// the oracle's join of the final tables; a clean restart then writes nothing.
#[test]
fn kafka_one_topic_per_table_survives_kill_9_and_resumes_from_committed_offsets() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use support::kafka::{committed, create_topic, kafka_config, produce_records, Broker};
    const PARTITIONS: i32 = 4;
    let broker = Broker::start();
    let topic = |t: &str| broker.topic(t);
    for t in TABLES {
        create_topic(&broker.bootstrap, &topic(t), PARTITIONS);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
    let dir = tempfile::tempdir().expect("tempdir");
    let (events, db) = random_history(29, 150, 4000);
    let dataflow = support::tables::write_kafka_dataflow(dir.path(), &topic);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let group = broker.group("multi");
    let config = kafka_config(
        dir.path(),
        "multi-kafka",
        2,
        &broker.bootstrap,
        &group,
        &format!("metrics_addr = \"127.0.0.1:{port}\"\n"),
    );
    // Every record produced, with its offset: (topic, partition, offset) → (table, key, lsn).
    let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    type Produced = (String, i32, i64, Option<(&'static str, u64, u64)>);
    let mut produced: Vec<Produced> = Vec::new();
    let mut produce = |evs: &[RowEv], produced: &mut Vec<_>| {
        let mut records = Vec::new();
        for e in evs {
            for r in e.records(&topic, PARTITIONS) {
                let o = offsets.entry((r.0.clone(), r.1)).or_insert(0);
                produced.push((r.0.clone(), r.1, *o, r.3.is_some().then_some((e.table, e.key, e.lsn))));
                *o += 1;
                records.push(r);
            }
        }
        produce_records(&broker.bootstrap, &records);
    };
    // Wait until this run has received `want` records and acknowledged all of them.
    let caught_up = |want: usize| {
        let start = Instant::now();
        loop {
            let m = get_metrics(port).unwrap_or_default();
            let got = metric(&m, "freshet_events_received_total").unwrap_or(0.0) as usize;
            let acked = metric_sum(&m, "freshet_events_total{") as usize;
            if got == want && acked == want {
                return m;
            }
            assert!(got <= want, "the run received {got} records, {want} were after the committed offsets");
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "not caught up: received {got} of {want}, acknowledged {acked}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut n_log = 0;
    let mut spawn = || {
        n_log += 1;
        support::spawn_run_logged(&dataflow, &config, &dir.path().join(format!("run-{n_log}.log")))
    };
    let (first, rest) = events.split_at(1500);
    produce(first, &mut produced);
    // Killed when dropped: a failing assertion leaves no run behind.
    struct Run(std::process::Child);
    impl Drop for Run {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Run(spawn());
    caught_up(produced.len());
    let chunks: Vec<&[RowEv]> = rest.chunks(100).collect();
    let kills: std::collections::BTreeSet<usize> = (0..5).map(|_| rng.random_range(0..chunks.len())).collect();
    let mut resumed_at = 0usize;
    let mut resumed_from: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (i, part) in chunks.iter().enumerate() {
        produce(part, &mut produced);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        if !kills.contains(&i) {
            continue;
        }
        child.0.kill().expect("kill -9");
        child.0.wait().expect("wait");
        // The durable table state against the committed offsets.
        let committed: BTreeMap<(String, i32), i64> = TABLES
            .iter()
            .flat_map(|t| {
                committed(&broker.bootstrap, &group, &topic(t), PARTITIONS).into_iter().map(|(p, o)| ((topic(t), p), o))
            })
            .collect();
        let store = std::fs::read_dir(dir.path().join("data/state"))
            .expect("state dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tables.redb"))
            .expect("a table state file");
        let collection =
            store.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".tables.redb")).unwrap_or_default();
        let opened = freshet::runtime::table_store::TableStore::open(&dir.path().join("data"), collection, 1, 0, 1, 1)
            .expect("open the table state");
        let stored: BTreeMap<(u16, String), u64> =
            opened.rows.into_iter().flatten().map(|(t, k, r)| ((t, k), r.version)).collect();
        drop(opened.store);
        let mut behind = Vec::new();
        let mut below = 0usize;
        for (t, p, o, row) in &produced {
            if *o >= committed.get(&(t.clone(), *p)).copied().unwrap_or(-1).max(0) {
                continue;
            }
            below += 1;
            if let Some((table, key, lsn)) = row {
                let ti = TABLES.iter().position(|x| x == table).expect("a table") as u16;
                if stored.get(&(ti, key.to_string())).is_none_or(|v| v < lsn) {
                    behind.push(format!("{table}:{key}@{lsn}"));
                }
            }
        }
        assert!(
            behind.is_empty(),
            "kill {i}: {} row events below the committed offsets but not in the table state, e.g. {:?}",
            behind.len(),
            &behind[..behind.len().min(20)]
        );
        assert!(below > 0, "kill {i}: offsets were committed before the kill");
        // The restart receives exactly the records after the committed offsets.
        resumed_at = below;
        resumed_from = committed;
        child = Run(spawn());
        caught_up(produced.len() - resumed_at);
    }
    let m = caught_up(produced.len() - resumed_at);
    // The last run's tombstones are the records no table claims.
    let by_table = assert_tables_reconcile(&m);
    let tombstones = produced
        .iter()
        .filter(|(t, p, o, row)| row.is_none() && *o >= resumed_from.get(&(t.clone(), *p)).copied().unwrap_or(0).max(0))
        .count() as u64;
    assert_eq!(by_table.get("(none)").copied().unwrap_or(0), tombstones, "tombstones counted apart: {by_table:?}");
    let status = std::process::Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()));
    assert!(child.0.wait().expect("wait").success(), "freshet did not stop cleanly");
    let exported = export(&dataflow, &config, true);
    let (expected, _) = expected_export(&db, 120);
    assert!(expected.len() > 50, "the history leaves documents: {}", expected.len());
    assert_export_matches(&without_versions(&exported), &expected);
    // A clean restart: every document rendered from the stored tables, nothing written.
    let again = support::run_until_end(&dataflow, &config, &[]);
    for k in ["chunks_embedded", "points_upserted", "points_payload_updated", "points_deleted"] {
        assert_eq!(again[k].as_u64(), Some(0), "{k} after a clean restart: {again}");
    }
    assert_eq!(export(&dataflow, &config, true), exported, "the clean restart changed the collection");
}
