//! Crash recovery on the Kafka source with a large initial load (issue 13): a Debezium
//! snapshot of thousands of multi-chunk documents (`op: r`, every record at the snapshot's
//! LSN, as Debezium sends them) followed by edits, metadata flips, creates and deletes;
//! `freshet run` is killed with SIGKILL many times at random moments and restarted each
//! time **without a clean open in between** (the collection is inspected on a copy of the
//! data directory, so the recovery path is the one a crash loop takes). After every kill
//! the group's committed offsets are never ahead of what the collection holds; at the end
//! the collection equals the oracle and, byte for byte, an uninterrupted run's.
//!
//! `FRESHET_CRASH_DOCS`, `FRESHET_CRASH_CHANGES`, `FRESHET_CRASH_KILLS` and
//! `FRESHET_CRASH_SEED` size the run (`scripts/crash-test` runs the long version).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::Value;
use support::kafka::*;
use support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const WORDS: &[&str] = &[
    "river", "delta", "index", "lantern", "harbor", "orbit", "garden", "engine", "signal", "copper", "meadow",
    "glacier", "ledger", "violet", "thunder", "pepper", "marble", "falcon", "cedar", "quartz", "command", "--flag",
];

fn para(rng: &mut rand_chacha::ChaCha8Rng) -> String {
    let n = rng.random_range(6..40);
    let s: Vec<&str> = (0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
    format!("{}.", s.join(" "))
}

/// A history that starts with a snapshot of `docs` documents (3–8 paragraphs each, all at
/// one LSN) and goes on with `changes` changes: one-paragraph edits, status flips (half of
/// them with the body as an unchanged-TOAST placeholder), creates, deletes (each followed
/// by a tombstone) and the odd repeated event. Returns the events and, per event, whether
/// it is a snapshot record.
fn snapshot_history(seed: u64, docs: u64, changes: usize) -> (Vec<Ev>, Vec<bool>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let snapshot_lsn = 1000;
    let mut rows: BTreeMap<u64, Option<Row>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut snap = Vec::new();
    for id in 1..=docs {
        let n = rng.random_range(3..9);
        let row = Row {
            id,
            title: format!("Page {id} {}", para(&mut rng)),
            body: (0..n).map(|_| para(&mut rng)).collect::<Vec<_>>().join("\n\n"),
            lang: "en".into(),
            status: "published".into(),
        };
        rows.insert(id, Some(row.clone()));
        out.push(Ev::Upsert { row, lsn: snapshot_lsn, toast_body: false });
        snap.push(true);
    }
    let mut lsn = 5000u64;
    let mut next_id = docs + 1;
    for _ in 0..changes {
        lsn += rng.random_range(1..4);
        let roll = rng.random_range(0..100);
        let id = if roll < 8 {
            next_id += 1;
            next_id - 1
        } else {
            rng.random_range(1..next_id)
        };
        let ev = match (roll, rows.get(&id).cloned().flatten()) {
            (_, None) => {
                let n = rng.random_range(2..7);
                let row = Row {
                    id,
                    title: format!("Page {id} {}", para(&mut rng)),
                    body: (0..n).map(|_| para(&mut rng)).collect::<Vec<_>>().join("\n\n"),
                    lang: "en".into(),
                    status: "draft".into(),
                };
                rows.insert(id, Some(row.clone()));
                Ev::Upsert { row, lsn, toast_body: false }
            }
            (8..=59, Some(mut row)) => {
                let mut ps: Vec<String> = row.body.split("\n\n").map(String::from).collect();
                let k = rng.random_range(0..ps.len());
                ps[k] = para(&mut rng);
                row.body = ps.join("\n\n");
                rows.insert(id, Some(row.clone()));
                Ev::Upsert { row, lsn, toast_body: false }
            }
            (60..=89, Some(mut row)) => {
                row.status = ["draft", "published", "archived"][rng.random_range(0..3)].into();
                let toast = rng.random_bool(0.5);
                rows.insert(id, Some(row.clone()));
                Ev::Upsert { row, lsn, toast_body: toast }
            }
            (_, Some(_)) => {
                rows.insert(id, None);
                out.push(Ev::Delete { id, lsn });
                snap.push(false);
                Ev::Tombstone
            }
        };
        out.push(ev);
        snap.push(false);
        if rng.random_range(0..100) < 3 {
            // Debezium re-sends after a connector restart: an earlier change again.
            let j = rng.random_range(docs as usize..out.len());
            out.push(out[j].clone());
            snap.push(false);
        }
    }
    (out, snap)
}

/// The record value: Debezium's rendering, with snapshot records as `op: r`.
fn value_of(ev: &Ev, snapshot: bool, last: bool) -> Option<String> {
    if matches!(ev, Ev::Tombstone) {
        return None;
    }
    let json = ev.to_json();
    if !snapshot {
        return Some(json);
    }
    let mut v: Value = serde_json::from_str(&json).unwrap();
    v["op"] = "r".into();
    v["source"]["snapshot"] = (if last { "last" } else { "true" }).into();
    Some(v.to_string())
}

/// Produce the history keyed by document (partition `id % partitions`); returns each
/// event's (partition, offset).
fn produce_history(bootstrap: &str, topic: &str, partitions: i32, events: &[Ev], snap: &[bool]) -> Vec<(i32, i64)> {
    let producer = support::kafka::ordered_producer(bootstrap);
    let last_snap = snap.iter().rposition(|s| *s);
    let mut next: BTreeMap<i32, i64> = high_watermarks(bootstrap, topic, partitions);
    let mut out = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let id = doc_of(ev);
        let partition = id.map_or(0, |i| (i % partitions as u64) as i32);
        let key = id.map(|i| format!("{{\"article_id\":{i}}}"));
        let value = value_of(ev, snap[i], Some(i) == last_snap);
        let mut rec: BaseRecord<'_, String, String> = BaseRecord::to(topic).partition(partition);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        if let Some(v) = &value {
            rec = rec.payload(v);
        }
        support::kafka::send(&producer, rec);
        let o = next.get_mut(&partition).unwrap();
        out.push((partition, *o));
        *o += 1;
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let after = high_watermarks(bootstrap, topic, partitions);
    assert_eq!(after, next, "the broker holds every produced record");
    out
}

type Points = Vec<(String, Value)>;

fn points_by_doc(export: &str) -> BTreeMap<String, Points> {
    let mut out: BTreeMap<String, Points> = BTreeMap::new();
    for line in export.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let doc = v["payload"]["doc_id"].as_str().unwrap().to_owned();
        out.entry(doc).or_default().push((v["id"].as_str().unwrap().to_owned(), v["payload"].clone()));
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.cmp(&b.0));
    }
    out
}

/// Regression (issue 13): 1,408 of 22,026 documents kept their snapshot text after 20
/// kills of a run over a large snapshot.
#[test]
fn kill_9_during_a_large_snapshot_loses_no_update() {
    let docs = env_or("FRESHET_CRASH_DOCS", 20_000);
    let changes = env_or("FRESHET_CRASH_CHANGES", 5_000) as usize;
    let kills = env_or("FRESHET_CRASH_KILLS", 8);
    let seed = env_or("FRESHET_CRASH_SEED", 13);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let _keep = KeepOnFailure(dir.path(), seed);
    let topic = &broker.topic("pages");
    let (clean_group, group) = (broker.group("crash-clean"), broker.group("crash"));
    let partitions = 4;
    create_topic(&broker.bootstrap, topic, partitions);
    let (history, snap) = snapshot_history(seed, docs, changes);
    let t = Instant::now();
    let positions = produce_history(&broker.bootstrap, topic, partitions, &history, &snap);
    eprintln!("produced {} records in {:.1?}", history.len(), t.elapsed());
    let extra = "max_passes_in_flight = 4\nmax_records_per_pass = 2000";

    // The uninterrupted run, in a directory of its own.
    let clean_dir = dir.path().join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    let clean_config = kafka_config(&clean_dir, "clean", 2, &broker.bootstrap, &clean_group, extra);
    let t = Instant::now();
    let summary = run_until_end(&dataflow, &clean_config, &[]);
    let clean_time = t.elapsed();
    let clean_export = export(&dataflow, &clean_config, true);
    eprintln!("clean run: {clean_time:.1?}, {} points; {summary}", clean_export.lines().count());
    let expected = oracle(&spec, &history, "freshet/hash-16", 16);
    assert_export_matches(&clean_export, &expected.export);

    // Each document's events with their offsets, and the points of its state after each
    // prefix of them (a document lives in one partition).
    let mut by_doc: BTreeMap<u64, Vec<(i64, Ev)>> = BTreeMap::new();
    for (ev, (_, offset)) in history.iter().zip(&positions) {
        if let Some(id) = doc_of(ev) {
            by_doc.entry(id).or_default().push((*offset, ev.clone()));
        }
    }
    let states: BTreeMap<u64, Vec<Points>> = by_doc
        .iter()
        .map(|(id, events)| {
            let s = (0..=events.len())
                .map(|j| {
                    let prefix: Vec<Ev> = events[..j].iter().map(|(_, e)| e.clone()).collect();
                    let mut p: Points = oracle(&spec, &prefix, "freshet/hash-16", 16)
                        .export
                        .into_iter()
                        .map(|v| (v["id"].as_str().unwrap().to_owned(), v["payload"].clone()))
                        .collect();
                    p.sort_by(|a, b| a.0.cmp(&b.0));
                    p
                })
                .collect();
            (*id, s)
        })
        .collect();

    let config = kafka_config(dir.path(), "crash", 2, &broker.bootstrap, &group, extra);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let window = clean_time.mul_f64(0.5).max(Duration::from_millis(600));
    let total: i64 = high_watermarks(&broker.bootstrap, topic, partitions).values().sum();
    let mut interrupted = 0;
    // A restart after a crash replays the engine's WAL and rebuilds the state before it
    // reads: half of the kills land in that recovery (a replay cut short), half at a random
    // moment of the pipeline's work after it (so the run makes progress between crashes).
    let mut recovery_time = Duration::from_secs(2);
    for round in 0..kills {
        let log = dir.path().join(format!("run-{round}.log"));
        let mut child = spawn_run_logged(&dataflow, &config, &log);
        let started = Instant::now();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rng.random_range(50..recovery_time.as_millis().max(60) as u64)));
        } else {
            while !std::fs::read_to_string(&log).unwrap_or_default().contains("state rebuilt from the collection") {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "freshet run exited: {}",
                    std::fs::read_to_string(&log).unwrap()
                );
                assert!(started.elapsed() < Duration::from_secs(600), "no recovery within 10 minutes");
                std::thread::sleep(Duration::from_millis(20));
            }
            recovery_time = started.elapsed();
            // A random moment of the work — but no later than when this round's share of
            // the history is committed, so that the kills are spread over the whole history
            // and never fall on a caught-up pipeline.
            let budget = total * 9 * (round as i64 + 1) / (10 * kills as i64);
            let until = Instant::now() + Duration::from_millis(rng.random_range(0..window.as_millis() as u64));
            while Instant::now() < until {
                let done: i64 =
                    committed(&broker.bootstrap, &group, topic, partitions).values().map(|o| o.max(&0)).sum();
                if done >= budget {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let recovery = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = recovery.lines().find(|l| l.contains("recovering from a crash")) {
            let plain: String = strip_ansi(line);
            eprintln!("run {round}: {}", plain.split_once("freshet::runtime:").map_or(plain.as_str(), |(_, r)| r));
        }
        let committed = committed(&broker.bootstrap, &group, topic, partitions);
        if committed != high_watermarks(&broker.bootstrap, topic, partitions) {
            interrupted += 1;
        }
        // Inspect a copy: opening the collection itself would recover it cleanly, and the
        // next start must take the path a crash loop takes.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&dir.path().join("data"), &copy.path().join("data"));
        let copy_config = kafka_config(copy.path(), "copy", 1, &broker.bootstrap, "unused", "");
        // Nothing to inspect before the collection exists behind its alias (a kill at the
        // first start can fall between creating the collection and naming it).
        let Some(got) = copy
            .path()
            .join("data/aliases.json")
            .exists()
            .then(|| points_by_doc(&export(&dataflow, &copy_config, false)))
        else {
            continue;
        };
        let mut behind = Vec::new();
        for (id, events) in &by_doc {
            let c = committed[&((*id % partitions as u64) as i32)];
            let done = events.iter().take_while(|(o, _)| *o < c).count();
            let have = got.get(&id.to_string()).cloned().unwrap_or_default();
            let doc_states = &states[id];
            if (done..=events.len()).any(|j| doc_states[j] == have) {
                continue;
            }
            // A write torn by the kill is allowed for uncommitted changes only: every
            // point the committed and all later states agree on is there, and every point
            // present is one of those states' points.
            let later = &doc_states[done..];
            let in_all = |pid: &str| later.iter().all(|s| s.iter().any(|(i, _)| i == pid));
            let required_present =
                later[0].iter().filter(|(i, _)| in_all(i)).all(|(r, _)| have.iter().any(|(i, _)| i == r));
            let all_known = have.iter().all(|p| later.iter().any(|s| s.contains(p)));
            if !(required_present && all_known) {
                behind.push((*id, done, events.len()));
            }
        }
        eprintln!("kill {round}: committed {committed:?}; {} documents behind the committed offsets", behind.len());
        assert!(
            behind.is_empty(),
            "after kill {round}: {} documents are in no state at or after their committed offset, e.g. {:?}",
            behind.len(),
            &behind[..behind.len().min(5)]
        );
    }
    assert!(interrupted * 2 >= kills, "only {interrupted} of {kills} kills hit a run with work to do");
    let last = run_until_end(&dataflow, &config, &[]);
    eprintln!("final run: {last}");
    let final_export = export(&dataflow, &config, true);
    let got = points_by_doc(&final_export);
    let want = points_by_doc(&clean_export);
    let stale: Vec<&String> = want.keys().filter(|d| got.get(*d) != want.get(*d)).collect();
    assert!(
        stale.is_empty(),
        "{} of {} documents differ from the uninterrupted run after {kills} kills, e.g. {:?}",
        stale.len(),
        want.len(),
        &stale[..stale.len().min(5)]
    );
    assert_export_matches(&final_export, &expected.export);
    assert_eq!(final_export, clean_export, "byte for byte the uninterrupted run's export");
    // `reconcile --verify` agrees: every document's points are consistent.
    let verify = freshet()
        .args(["reconcile", "--verify", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(verify.status.success(), "reconcile --verify: {}", String::from_utf8_lossy(&verify.stdout));
    assert_eq!(
        committed(&broker.bootstrap, &group, topic, partitions),
        high_watermarks(&broker.bootstrap, topic, partitions)
    );
}
