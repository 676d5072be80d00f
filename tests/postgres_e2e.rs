//! The database is the oracle: real SQL against PostgreSQL, captured by the Debezium 3.6.1
//! connector of Kafka Connect (registered from `config/debezium-postgres.json`) into Kafka
//! topics of 4 partitions, indexed by `freshet run --until-end` with 1 and with 2 workers; the
//! collection must equal, point by point, what `SELECT` returns from Postgres: every live
//! row's current text chunked by freshet's chunker, each chunk a point with the row's columns
//! as metadata and the hash embedder's vector, nothing for a deleted or truncated row.
//!
//! Two tables, one with `REPLICA IDENTITY DEFAULT` (Debezium sends an unchanged TOASTed
//! `body` as `__debezium_unavailable_value`), captured with the JsonConverter's schemas, and
//! one with `FULL` (the before image fills it in), captured without them; an initial load read by the snapshot, then inserts, edits of the text, of metadata
//! only, of metadata of rows whose large body is TOASTed, deletes, a transaction touching
//! many rows, a delete and re-insert, a row created and deleted in one transaction, an update
//! that changes nothing; then a `TRUNCATE` (and reload, in one transaction),
//! `ALTER TABLE … ADD COLUMN` and writes that use the new column. Each round is checked
//! (and before the second round is indexed, the check must fail: it can).
//!
//! Services: `scripts/services` (Kafka, PostgreSQL, Kafka Connect; started if they do not
//! answer, left running) or the ones `FRESHET_KAFKA_BOOTSTRAP`, `FRESHET_PG_URL` /
//! `FRESHET_PG_HOST`…, `FRESHET_CONNECT_URL` name. Every name (tables, connector, slot,
//! publication, topics, groups) is unique to the run; the connector, its slot and its
//! publication are removed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use freshet::config::DataflowSpec;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use support::kafka::{kafka_config, Broker};
use support::postgres::*;
use support::{export, run_until_end};

/// One captured table and the pipelines indexing it.
struct Table {
    name: String,
    /// `REPLICA IDENTITY FULL` (else DEFAULT).
    full: bool,
    /// The connector's `topic.prefix`; the table's topic is `<prefix>.public.<name>`.
    prefix: String,
    topic: String,
    dataflow: PathBuf,
    spec: DataflowSpec,
    /// (workers, runtime config) of each pipeline, each with its own data directory and
    /// consumer group.
    runs: Vec<(usize, PathBuf)>,
}

#[test]
fn the_collection_equals_select_from_postgres_with_1_and_2_workers() {
    let t0 = Instant::now();
    let broker = Broker::start();
    let svc = services();
    eprintln!("services ready in {:.1} s", t0.elapsed().as_secs_f64());
    // The pipelines' files, kept for a look when `FRESHET_E2E_KEEP` is set.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let _tmp = if std::env::var_os("FRESHET_E2E_KEEP").is_some() {
        eprintln!("FRESHET_E2E_KEEP: keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let base = format!("e2e_{}_{}", std::process::id(), ms % 1_000_000_000);
    // One `topic.prefix` per connector: Debezium names its metrics after it, and a second
    // connector with the same prefix waits a minute for the first one's name to be free.
    let topic_prefix = |kind: &str| broker.topic(&format!("pg_{kind}"));
    let tables: Vec<Table> = [("dflt", false), ("full", true)]
        .into_iter()
        .map(|(kind, full)| {
            let name = format!("{base}_{kind}");
            let prefix = topic_prefix(kind);
            let topic = format!("{prefix}.public.{name}");
            let dataflow = pg_dataflow(&root, &name, &topic, "");
            let spec = DataflowSpec::load(&dataflow).expect("dataflow");
            let runs = [1, 2]
                .into_iter()
                .map(|workers| {
                    let run_dir = root.join(format!("{kind}-{workers}w"));
                    std::fs::create_dir_all(&run_dir).unwrap();
                    let group = broker.group(&format!("{kind}-{workers}w"));
                    (workers, kafka_config(&run_dir, "config", workers, &broker.bootstrap, &group, ""))
                })
                .collect();
            Table { name, full, prefix, topic, dataflow, spec, runs }
        })
        .collect();

    // The initial load, read by Debezium's snapshot.
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for t in &tables {
        svc.psql(&create_and_load(&t.name, t.full, &mut rng.clone()));
    }
    rng = ChaCha8Rng::seed_from_u64(17);
    let t1 = Instant::now();
    // One connector per table: the DEFAULT table's with the JsonConverter's schemas
    // (`{"schema":…,"payload":…}`), the FULL table's without (the bare envelope).
    let connectors: Vec<Connector> = tables
        .iter()
        .map(|t| {
            let schemas = if t.full { "false" } else { "true" };
            let table = [format!("public.{}", t.name)];
            Connector::register(svc, &t.name, &t.prefix, &table, &[("value.converter.schemas.enable", schemas)])
        })
        .collect();
    let wait_captured = || connectors.iter().map(Connector::wait_captured).max().unwrap_or_default();

    // Round 1: streaming changes of every kind but the schema change and the truncate.
    for t in &tables {
        svc.psql(&round_one(&t.name, &mut rng.clone()));
    }
    let waited = wait_captured();
    eprintln!(
        "snapshot and round 1 captured in {:.1} s (registration {:.1} s)",
        t1.elapsed().as_secs_f64(),
        (t1.elapsed() - waited).as_secs_f64()
    );
    for t in &tables {
        assert_eq!(partitions_of(&broker.bootstrap, &t.topic), 4, "{}", t.topic);
        check_round(svc, t, &[0, 0], "round 1");
    }

    // Round 2: truncate and reload (DEFAULT table), a new column, TOAST again.
    rng = ChaCha8Rng::seed_from_u64(18);
    for t in &tables {
        svc.psql(&round_two(&t.name, !t.full, &mut rng.clone()));
    }
    wait_captured();
    // The check can fail: the collection as round 1 left it is not what Postgres holds now.
    for t in &tables {
        let (_, config) = &t.runs[0];
        let stale = differences(&export(&t.dataflow, config, true), &expected_points(&t.spec, &svc.rows(&t.name)));
        assert!(!stale.is_empty(), "{}: the round-1 collection already equals the round-2 table", t.name);
    }
    for t in &tables {
        // DEFAULT: the title edit of a row whose TOASTed body was unchanged is dead-lettered
        // (freshet keeps hashes, not text); the next write of that row repairs it.
        let dead = if t.full { 0 } else { 1 };
        check_round(svc, t, &[dead, dead], "round 2");
        if !t.full {
            for (_, config) in &t.runs {
                let data = config.parent().unwrap().join("data/dead-letter.jsonl");
                let entries: Vec<Value> = std::fs::read_to_string(&data)
                    .expect("dead-letter file")
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert_eq!(entries.len(), 1, "{entries:?}");
                assert_eq!(entries[0]["reason"], "toast_unresolvable", "{entries:?}");
                assert_eq!(entries[0]["doc_id"], "303", "{entries:?}");
            }
        }
    }

    // What Debezium sent: the shapes this test is about were really exercised.
    let records = |t: &Table| read_topic(&broker.bootstrap, &t.topic);
    let (dflt, full) = (records(&tables[0]), records(&tables[1]));
    let with = |recs: &[TopicRecord], s: &str| {
        recs.iter().filter(|(_, _, v)| v.as_deref().is_some_and(|v| v.contains(s))).count()
    };
    assert!(with(&dflt, PLACEHOLDER) >= 5, "the DEFAULT table's unchanged TOASTed bodies came as placeholders");
    assert_eq!(with(&full, PLACEHOLDER), 0, "FULL: Debezium fills unchanged TOASTed values from the before image");
    assert_eq!(with(&dflt, "\"op\":\"t\""), 1, "one TRUNCATE event");
    for recs in [&dflt, &full] {
        let used: BTreeSet<i32> = recs.iter().map(|(p, _, _)| *p).collect();
        assert!(used.len() >= 3, "records spread over the 4 partitions: {used:?}");
    }
    let enveloped = |recs: &[TopicRecord]| with(recs, "\"schema\":{");
    assert_eq!(
        enveloped(&dflt),
        dflt.iter().filter(|(_, _, v)| v.is_some()).count(),
        "DEFAULT: every value with its schema"
    );
    assert_eq!(enveloped(&full), 0, "FULL: values without the schema envelope");
    drop(connectors);
    for t in &tables {
        svc.psql(&format!("DROP TABLE {};", t.name));
    }
    eprintln!("whole test {:.1} s", t0.elapsed().as_secs_f64());
}

/// Run every pipeline of `t` to the end of its topic and compare its collection with the
/// table; `dead[i]` is the dead-letter count expected of run `i`.
fn check_round(svc: &Services, t: &Table, dead: &[u64], round: &str) {
    let rows = svc.rows(&t.name);
    let expected = expected_points(&t.spec, &rows);
    assert!(
        rows.len() > 100 && expected.len() > 2 * rows.len(),
        "{}: {} rows, {} chunks",
        t.name,
        rows.len(),
        expected.len()
    );
    for ((workers, config), dead) in t.runs.iter().zip(dead) {
        let start = Instant::now();
        let summary = run_until_end(&t.dataflow, config, &[]);
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(summary["dead_lettered"].as_u64(), Some(*dead), "{} {round}, {workers} workers: {summary}", t.name);
        let diffs = differences(&export(&t.dataflow, config, true), &expected);
        assert!(
            diffs.is_empty(),
            "{} {round}, {workers} workers: the collection differs from SELECT in {} ways; first:\n{}",
            t.name,
            diffs.len(),
            diffs.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
        );
        eprintln!(
            "{} {round}, {workers} worker(s): {} rows = {} points, run {secs:.1} s ({summary})",
            t.name,
            rows.len(),
            expected.len()
        );
    }
}
