//! Crashes with the real stack (issue 16): PostgreSQL → Debezium (Kafka Connect) → Apache
//! Kafka → freshet. A table of articles is loaded (read by Debezium's snapshot), then a
//! writer changes it with SQL at a steady rate — paragraph edits, appended paragraphs, title
//! edits, metadata-only updates, inserts, deletes, transactions touching several rows —
//! while `freshet run` is killed with SIGKILL at random moments and restarted each time,
//! without a clean open in between. While freshet runs, the Kafka broker is restarted once
//! and Kafka Connect once (Debezium then sends again what it sent after its last committed
//! offset: duplicates).
//!
//! - After every kill, the group's committed offsets are never ahead of what the collection
//!   holds: every document is in a state at or after the one its committed records give
//!   (checked on a copy of the data directory, so the next start takes a crash's recovery
//!   path), allowing a torn write of uncommitted changes only.
//! - At the end the collection equals `SELECT` from Postgres point by point, and so does an
//!   uninterrupted run over the same topic.
//! - Embedding: no text is embedded twice except what was in flight at a kill — texts a
//!   killed run embedded whose writes did not land (the hash embedder's call log names every
//!   text embedded).
//!
//! `FRESHET_PGCRASH_ROWS` (1,500), `FRESHET_PGCRASH_CHANGES` (6,000), `FRESHET_PGCRASH_RATE`
//! (changes/s, 100), `FRESHET_PGCRASH_KILLS` (6), `FRESHET_PGCRASH_SEED` size the run;
//! `scripts/crash-test --real-stack` runs the long version (10,000 rows, 50,000 changes,
//! 20 kills). Restarting the broker and Connect needs the services `scripts/services` runs
//! here; against services that run elsewhere (or with `FRESHET_PGCRASH_RESTARTS=0`) those
//! two steps are skipped, and the test says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet::config::DataflowSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use support::kafka::{committed, high_watermarks, kafka_config, Broker};
use support::postgres::*;
use support::{copy_dir, export, run_until_end, spawn_run_logged, strip_ansi, KeepOnFailure};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const PARTITIONS: i32 = 4;
/// Records per pass and passes in flight of the killed pipeline: what can be embedded and
/// not yet written when it dies.
const RECORDS_PER_PASS: u64 = 200;
const PASSES_IN_FLIGHT: u64 = 2;

#[test]
fn kill_9_and_service_restarts_with_the_real_stack_end_equal_to_select() {
    let rows = env_or("FRESHET_PGCRASH_ROWS", 1_500);
    let changes = env_or("FRESHET_PGCRASH_CHANGES", 6_000) as usize;
    let rate = env_or("FRESHET_PGCRASH_RATE", 100) as f64;
    let kills = env_or("FRESHET_PGCRASH_KILLS", 6);
    let seed = env_or("FRESHET_PGCRASH_SEED", 16);
    assert!(kills >= 3, "at least 3 kills (the restarts happen in two of the rounds)");
    let t0 = Instant::now();
    let broker = Broker::start();
    let svc = services();
    let restarts = env_or("FRESHET_PGCRASH_RESTARTS", 1) == 1;
    let dir = tempfile::tempdir().unwrap();
    let _keep = KeepOnFailure(dir.path(), seed);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let table = format!("pgcrash_{}_{}", std::process::id(), ms % 1_000_000_000);
    let prefix = broker.topic("pg");
    let topic = format!("{prefix}.public.{table}");

    // The initial load, read by Debezium's snapshot.
    let mut w = Workload::new(&table, seed);
    svc.psql(&w.create_and_load(rows));
    let connector = Connector::register(svc, &table, &prefix, &[format!("public.{table}")], &[]);
    // The services are restarted only once the snapshot is in Kafka. A broker restart during
    // Debezium's initial snapshot makes Connect stop the task (a rebalance) and drop the
    // snapshot's records in flight; the task then snapshots again, later, and rows deleted
    // in between never get a delete event (see the README: a re-snapshot).
    let snapshot = connector.wait_captured();
    eprintln!(
        "{rows} rows loaded, connector running, snapshot in Kafka after {:.1} s ({snapshot:.1?} waiting for it)",
        t0.elapsed().as_secs_f64()
    );

    // The writer: `changes` changes at `rate` per second, in its own thread.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = Arc::clone(&written);
        std::thread::spawn(move || w.run(svc, changes, rate, &written))
    };

    let (crash_dir, clean_dir) = (dir.path().join("crash"), dir.path().join("clean"));
    let (crash_calls, clean_calls) = (crash_dir.join("embed-calls.log"), clean_dir.join("embed-calls.log"));
    let extra = format!("max_records_per_pass = {RECORDS_PER_PASS}\nmax_passes_in_flight = {PASSES_IN_FLIGHT}");
    let (dataflow, config) = pipeline(&crash_dir, &table, &topic, &crash_calls, &broker, "crash", &extra);
    let spec = DataflowSpec::load(&dataflow).unwrap();
    let group = broker.group("crash");

    // The kills. Even rounds die during the recovery (a WAL replay or state rebuild cut
    // short), odd ones at a random moment of the work after it; the writer's duration is
    // spread over the odd rounds. The broker restarts in one odd round, Connect in another.
    let writing = Duration::from_secs_f64(changes as f64 / rate);
    let odd_span = writing.mul_f64(4.0 / kills as f64).max(Duration::from_millis(500));
    // Both restarts while the writer runs: the first odd round, and the one after it.
    let (broker_round, connect_round) = (1, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut recovery_time = Duration::from_secs(2);
    let mut runs: Vec<(usize, usize)> = Vec::new(); // call-log lines of each killed run
    let mut committed_at_kill: Vec<BTreeMap<i32, i64>> = Vec::new();
    let mut restarted = Vec::new();
    for round in 0..kills {
        let log = crash_dir.join(format!("run-{round}.log"));
        let calls_before = lines(&crash_calls);
        let mut child = spawn_run_logged(&dataflow, &config, &log);
        let started = Instant::now();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rng.random_range(50..recovery_time.as_millis().max(60) as u64)));
        } else {
            while !std::fs::read_to_string(&log).unwrap_or_default().contains("state rebuilt from the collection") {
                assert!(child.try_wait().unwrap().is_none(), "freshet run exited: {}", read(&log));
                assert!(started.elapsed() < Duration::from_secs(600), "no recovery within 10 minutes");
                std::thread::sleep(Duration::from_millis(20));
            }
            recovery_time = started.elapsed();
            // The run makes progress before it dies: the kill comes at a random moment
            // after its first commit (or once it has caught up). A recovery replays every
            // write since the last clean close, so later restarts take longer.
            let sum = |c: &BTreeMap<i32, i64>| c.values().map(|o| (*o).max(0)).sum::<i64>();
            let before = sum(&committed(&broker.bootstrap, &group, &topic, PARTITIONS));
            loop {
                let now = committed(&broker.bootstrap, &group, &topic, PARTITIONS);
                if sum(&now) > before || now == high_watermarks(&broker.bootstrap, &topic, PARTITIONS) {
                    break;
                }
                assert!(child.try_wait().unwrap().is_none(), "freshet run exited: {}", read(&log));
                assert!(started.elapsed() < Duration::from_secs(900), "no commit within 15 minutes of a start");
                std::thread::sleep(Duration::from_millis(100));
            }
            let until = Instant::now() + Duration::from_millis(rng.random_range(0..odd_span.as_millis() as u64));
            if restarts && (round == broker_round || round == connect_round) {
                let service = if round == broker_round { "kafka" } else { "connect" };
                std::thread::sleep(Duration::from_millis(rng.random_range(200..2_000)));
                let writing = written.load(Ordering::Relaxed) < changes;
                match restart(service) {
                    Some(took) => {
                        eprintln!("round {round}: restarted {service} while freshet ran ({took:.1?})");
                        restarted.push((service, writing));
                    }
                    None => eprintln!("round {round}: {service} runs elsewhere; not restarted"),
                }
                connector.wait_running();
                assert!(child.try_wait().unwrap().is_none(), "freshet run exited: {}", read(&log));
            }
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        runs.push((calls_before, lines(&crash_calls)));
        if let Some(line) = read(&log).lines().find(|l| l.contains("recovering from a crash")) {
            let plain = strip_ansi(line);
            eprintln!("round {round}: {}", plain.split_once("freshet::runtime:").map_or(plain.as_str(), |(_, r)| r));
        }
        // Committed offsets never ahead of the collection.
        let committed = committed(&broker.bootstrap, &group, &topic, PARTITIONS);
        committed_at_kill.push(committed.clone());
        let history = DocHistory::read(&broker.bootstrap, &topic, &spec);
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&crash_dir.join("data"), &copy.path().join("data"));
        let copy_config = kafka_config(copy.path(), "copy", 1, &broker.bootstrap, "unused", "");
        // Nothing to inspect before the collection exists behind its alias.
        let got = if copy.path().join("data/aliases.json").exists() {
            points_by_doc(&export(&dataflow, &copy_config, false))
        } else {
            BTreeMap::new()
        };
        let behind = history.behind(&committed, &got);
        eprintln!(
            "kill {round} after {:.1?}: {} of {changes} changes written; committed {committed:?}; {} documents behind",
            started.elapsed(),
            written.load(Ordering::Relaxed),
            behind.len()
        );
        assert!(
            behind.is_empty(),
            "after kill {round}: {} documents are in no state at or after their committed records, e.g. {:?}",
            behind.len(),
            &behind[..behind.len().min(5)]
        );
    }
    writer.join().expect("the writer");
    let captured = connector.wait_captured();
    eprintln!("all {changes} changes written and captured ({captured:.1?} after the writer ended)");

    // The end: the killed pipeline run to the end, and an uninterrupted one over the topic.
    let last = run_until_end(&dataflow, &config, &[]);
    eprintln!("final run: {last}");
    let select = svc.rows(&table);
    let expected = expected_points(&spec, &select);
    let diffs = differences(&export(&dataflow, &config, true), &expected);
    assert!(
        diffs.is_empty(),
        "after {kills} kills the collection differs from SELECT in {} ways; first:\n{}",
        diffs.len(),
        diffs.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(
        committed(&broker.bootstrap, &group, &topic, PARTITIONS),
        high_watermarks(&broker.bootstrap, &topic, PARTITIONS),
        "every record committed"
    );
    let (clean_dataflow, clean_config) = pipeline(&clean_dir, &table, &topic, &clean_calls, &broker, "clean", "");
    let clean = run_until_end(&clean_dataflow, &clean_config, &[]);
    let diffs = differences(&export(&clean_dataflow, &clean_config, true), &expected);
    assert!(diffs.is_empty(), "the uninterrupted run differs from SELECT: {:?}", &diffs[..diffs.len().min(8)]);

    // Embedding spend: a text embedded again after a kill was in flight when it fell.
    let calls = read(&crash_calls);
    let calls: Vec<&str> = calls.lines().collect();
    let mut first_run: BTreeMap<&str, usize> = BTreeMap::new();
    let mut again_after: BTreeMap<usize, u64> = BTreeMap::new();
    let mut embedded = 0u64;
    for (i, line) in calls.iter().enumerate() {
        let run = runs.iter().position(|(a, b)| (*a..*b).contains(&i)).unwrap_or(runs.len());
        for hash in line.split(' ').skip(1) {
            embedded += 1;
            match first_run.get(hash) {
                None => {
                    first_run.insert(hash, run);
                }
                Some(&r) => *again_after.entry(r).or_default() += 1,
            }
        }
    }
    let history = DocHistory::read(&broker.bootstrap, &topic, &spec);
    // What a killed run can have embedded and not written: the chunks of the records after
    // the committed offsets at its kill, at most `PASSES_IN_FLIGHT` passes of
    // `RECORDS_PER_PASS` records per partition.
    let in_flight_bounds: Vec<u64> = committed_at_kill.iter().map(|c| history.chunks_in_flight(c)).collect();
    let again: u64 = again_after.values().sum();
    eprintln!(
        "embedded: {embedded} texts over {} killed runs and the final one ({again} again after a kill: {again_after:?}); \
         the uninterrupted run {}; {} rows, {} points; restarted {restarted:?} ((service, while writing)); \
         {} records sent twice by Debezium; whole test {:.1} s",
        runs.len(),
        clean["chunks_embedded"],
        select.len(),
        expected.len(),
        history.duplicates,
        t0.elapsed().as_secs_f64()
    );
    for (run, n) in &again_after {
        let bound = in_flight_bounds.get(*run).copied().unwrap_or(0);
        assert!(
            *n <= bound,
            "{n} texts first embedded by killed run {run} were embedded again: more than the records in flight at \
             its kill hold ({bound} chunks after the committed offsets {:?})",
            committed_at_kill.get(*run)
        );
    }
    if restarts && std::env::var_os("FRESHET_KAFKA_BOOTSTRAP").is_none() {
        let services: Vec<&str> = restarted.iter().map(|(s, _)| *s).collect();
        assert_eq!(services, ["kafka", "connect"], "the local broker and Connect were restarted");
    }
    if restarted.contains(&("connect", true)) {
        assert!(history.duplicates > 0, "Connect killed while changes were written, and no record sent twice");
    }
    drop(connector);
    svc.psql(&format!("DROP TABLE {table};"));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines(path: &Path) -> usize {
    read(path).lines().count()
}

/// A pipeline over `topic` in `dir` (its own data directory and consumer group, the hash
/// embedder logging its calls to `calls`); returns (dataflow, config).
fn pipeline(
    dir: &Path,
    table: &str,
    topic: &str,
    calls: &Path,
    broker: &Broker,
    name: &str,
    extra: &str,
) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let dataflow = pg_dataflow(dir, table, topic, &format!("call_log = \"{}\"", calls.display()));
    let config = kafka_config(dir, name, 2, &broker.bootstrap, &broker.group(name), extra);
    (dataflow, config)
}

/// Restart a service of `scripts/services` while freshet runs: the broker cleanly (stop,
/// start), Kafka Connect with SIGKILL (so that Debezium sends again what it sent after its
/// last committed offset). `None` when the service does not run here (an external service,
/// or one another checkout's script started).
fn restart(service: &str) -> Option<Duration> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/services");
    let started = Instant::now();
    if service == "connect" {
        let pid = std::fs::read_to_string(root.join(".tools/run/connect.pid")).ok()?;
        let st = Command::new("kill").args(["-KILL", pid.trim()]).status().expect("kill");
        if !st.success() {
            return None;
        }
        while Command::new(&script).args(["running", service]).output().expect("scripts/services").status.success() {
            assert!(started.elapsed() < Duration::from_secs(30), "Connect still answers after SIGKILL");
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        let st = Command::new(&script).args(["stop", service]).status().expect("scripts/services stop");
        assert!(st.success(), "scripts/services stop {service}");
        let still = Command::new(&script).args(["running", service]).output().expect("scripts/services running");
        if still.status.success() {
            return None;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let st = Command::new(&script).args(["start", service]).status().expect("scripts/services start");
    assert!(st.success(), "scripts/services start {service}");
    Some(started.elapsed())
}

// ---- the oracle of every moment ---------------------------------------------------------------

/// A document's points without their `source_version`: point id → payload.
type DocPoints = BTreeMap<String, Value>;

fn points_by_doc(export: &str) -> BTreeMap<String, DocPoints> {
    let mut out: BTreeMap<String, DocPoints> = BTreeMap::new();
    for line in export.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let mut payload = v["payload"].as_object().cloned().unwrap();
        payload.remove("source_version");
        let doc = payload["doc_id"].as_str().unwrap().to_owned();
        out.entry(doc).or_default().insert(v["id"].as_str().unwrap().to_owned(), Value::Object(payload));
    }
    out
}

/// What the topic holds, per document: its records (partition, offset) and its points after
/// each prefix of them. A record applies when its LSN is above the document's (Debezium sends
/// records again after a Connect restart; freshet ignores an older version).
struct DocHistory {
    /// doc id → (partition, offsets of its records in order, states: points after 0, 1, … records).
    docs: BTreeMap<String, (i32, Vec<i64>, Vec<DocPoints>)>,
    /// Records of a (document, LSN, op) sent before.
    duplicates: usize,
}

impl DocHistory {
    fn read(bootstrap: &str, topic: &str, spec: &DataflowSpec) -> Self {
        let mut docs: BTreeMap<String, (i32, Vec<i64>, Vec<DocPoints>)> = BTreeMap::new();
        let mut lsn: BTreeMap<String, u64> = BTreeMap::new();
        let mut sent: BTreeSet<(String, u64, String)> = BTreeSet::new();
        let mut duplicates = 0;
        for (partition, offset, key, value) in read_topic_with_offsets(bootstrap, topic) {
            let Some(value) = value else { continue }; // a tombstone
            let v: Value = serde_json::from_str(&value).expect("a Debezium JSON value");
            let p = v.get("payload").filter(|p| p.is_object()).unwrap_or(&v);
            let row = |side: &str| p[side].as_object().cloned();
            let id = key
                .and_then(|k| serde_json::from_str::<Value>(&k).ok())
                .and_then(|k| k["id"].as_i64())
                .or_else(|| row("after").or_else(|| row("before")).and_then(|r| r["id"].as_i64()))
                .expect("a record with an id")
                .to_string();
            let at = p["source"]["lsn"].as_u64().expect("source.lsn");
            if !sent.insert((id.clone(), at, p["op"].to_string())) {
                duplicates += 1;
            }
            let entry = docs.entry(id.clone()).or_insert_with(|| (partition, Vec::new(), vec![DocPoints::new()]));
            assert_eq!(entry.0, partition, "doc {id} in one partition");
            entry.1.push(offset);
            let before = entry.2.last().cloned().unwrap();
            let newer = lsn.get(&id).is_none_or(|l| at > *l);
            let state = if !newer {
                before
            } else {
                lsn.insert(id.clone(), at);
                match p["op"].as_str() {
                    Some("d") => DocPoints::new(),
                    Some("c" | "r" | "u") => doc_points(spec, row("after").expect("an after image")),
                    other => panic!("unexpected op {other:?} in {value}"),
                }
            };
            entry.2.push(state);
        }
        Self { docs, duplicates }
    }

    /// The chunks of the records a run can have embedded and not written when it dies with
    /// the group's offsets at `committed`: per partition, from the committed offset on, the
    /// records acknowledged since the last commit (commits go out every 100 ms: at most as
    /// many passes as can be in flight, allowed for) and the `PASSES_IN_FLIGHT` passes of
    /// `RECORDS_PER_PASS` records in flight — each counted with its document's chunks after it.
    fn chunks_in_flight(&self, committed: &BTreeMap<i32, i64>) -> u64 {
        let window = 2 * (PASSES_IN_FLIGHT * RECORDS_PER_PASS) as i64;
        let mut n = 0;
        for (partition, offsets, states) in self.docs.values() {
            let from = committed.get(partition).copied().unwrap_or(-1).max(0);
            for (j, o) in offsets.iter().enumerate() {
                if *o >= from && *o < from + window {
                    n += states[j + 1].len() as u64;
                }
            }
        }
        n
    }

    /// Documents in no state at or after their committed records (a torn write allowed for
    /// uncommitted changes: every point all later states agree on is there, and every point
    /// there is one of theirs): (doc, committed records, records).
    fn behind(&self, committed: &BTreeMap<i32, i64>, got: &BTreeMap<String, DocPoints>) -> Vec<(String, usize, usize)> {
        let empty = DocPoints::new();
        let mut out = Vec::new();
        let docs: BTreeSet<&String> = self.docs.keys().chain(got.keys()).collect();
        for doc in docs {
            let have = got.get(doc).unwrap_or(&empty);
            let Some((partition, offsets, states)) = self.docs.get(doc) else {
                out.push((doc.clone(), 0, 0));
                continue;
            };
            let c = committed.get(partition).copied().unwrap_or(-1);
            let done = offsets.iter().take_while(|o| **o < c).count();
            let later = &states[done..];
            if later.iter().any(|s| s == have) {
                continue;
            }
            let in_all = |pid: &String, payload: &Value| later.iter().all(|s| s.get(pid) == Some(payload));
            let required_present = later[0].iter().filter(|(i, p)| in_all(i, p)).all(|(i, p)| have.get(i) == Some(p));
            let all_known = have.iter().all(|(i, p)| later.iter().any(|s| s.get(i) == Some(p)));
            if !(required_present && all_known) {
                out.push((doc.clone(), done, offsets.len()));
            }
        }
        out
    }
}

/// The points of one row, without vectors or `source_version`.
fn doc_points(spec: &DataflowSpec, row: Map<String, Value>) -> DocPoints {
    expected_points(spec, &[row]).into_iter().map(|(id, (payload, _))| (id, payload)).collect()
}

// ---- the workload ------------------------------------------------------------------------------

/// The writer's model of the table (only to choose changes; the oracle is `SELECT`).
struct Workload {
    table: String,
    rng: ChaCha8Rng,
    /// id → its body's paragraphs.
    docs: BTreeMap<u64, Vec<String>>,
    live: Vec<u64>,
    next_id: u64,
    min_live: usize,
}

impl Workload {
    fn new(table: &str, seed: u64) -> Self {
        Self {
            table: table.to_owned(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            docs: BTreeMap::new(),
            live: Vec::new(),
            next_id: 1,
            min_live: 0,
        }
    }

    fn create_and_load(&mut self, rows: u64) -> String {
        let t = &self.table;
        let mut sql = format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL, \
             status text NOT NULL, priority int NOT NULL, tags text[] NOT NULL);\n\
             ALTER TABLE {t} REPLICA IDENTITY FULL;\nBEGIN;\n"
        );
        for _ in 0..rows {
            sql.push_str(&self.insert());
        }
        sql.push_str("COMMIT;\n");
        self.min_live = rows as usize / 2;
        sql
    }

    fn insert(&mut self) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let n = self.rng.random_range(2..8);
        let paras: Vec<String> = (0..n).map(|_| paragraph(&mut self.rng, false)).collect();
        let sql = insert(&self.table, id, &paras.join("\n\n"), None, &mut self.rng);
        self.docs.insert(id, paras);
        self.live.push(id);
        sql
    }

    fn set_body(&self, id: u64) -> String {
        format!("UPDATE {} SET body = {} WHERE id = {id};\n", self.table, lit(&self.docs[&id].join("\n\n")))
    }

    /// One change of one row (one statement).
    fn change(&mut self) -> String {
        let t = self.table.clone();
        let id = self.live[self.rng.random_range(0..self.live.len())];
        let roll = self.rng.random_range(0..100);
        match roll {
            0..45 => {
                let paras = self.docs.get_mut(&id).unwrap();
                let k = self.rng.random_range(0..paras.len());
                paras[k] = paragraph(&mut self.rng, false);
                self.set_body(id)
            }
            45..55 => {
                let paras = self.docs.get_mut(&id).unwrap();
                if paras.len() < 9 {
                    paras.push(paragraph(&mut self.rng, false));
                } else {
                    paras.truncate(3);
                }
                self.set_body(id)
            }
            55..60 => format!("UPDATE {t} SET title = {} WHERE id = {id};\n", lit(&title(&mut self.rng, id))),
            60..68 => format!("UPDATE {t} SET status = {} WHERE id = {id};\n", lit(status(&mut self.rng))),
            68..74 => format!("UPDATE {t} SET priority = priority + 1 WHERE id = {id};\n"),
            74..78 => format!("UPDATE {t} SET tags = {} WHERE id = {id};\n", tags(&mut self.rng)),
            78..90 => self.insert(),
            _ if self.live.len() > self.min_live => {
                self.live.retain(|l| *l != id);
                self.docs.remove(&id);
                format!("DELETE FROM {t} WHERE id = {id};\n")
            }
            _ => format!("UPDATE {t} SET status = 'kept' WHERE id = {id};\n"),
        }
    }

    /// Write `changes` changes at `rate` per second: mostly one per transaction, one in ten a
    /// transaction of 3 to 8 changes; `written` follows the count.
    fn run(mut self, svc: &Services, changes: usize, rate: f64, written: &AtomicUsize) {
        let start = Instant::now();
        let mut done = 0;
        while done < changes {
            let due = ((start.elapsed().as_secs_f64() * rate) as usize).clamp(done + 1, changes);
            let mut sql = String::new();
            while done < due {
                if self.rng.random_range(0..10) == 0 {
                    let n = self.rng.random_range(3..9).min(changes - done);
                    sql.push_str("BEGIN;\n");
                    for _ in 0..n {
                        sql.push_str(&self.change());
                    }
                    sql.push_str("COMMIT;\n");
                    done += n;
                } else {
                    sql.push_str(&self.change());
                    done += 1;
                }
            }
            svc.psql(&sql);
            written.store(done, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
