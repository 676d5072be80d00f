//! Guards on freshet's bulk deletes outside `reconcile` (issue 14): the removal at start-up
//! of points that cannot belong to the dataflow's documents stops before deleting when
//! they are more than `[safety]` allows — the shape of a stale or mismatched configuration
//! (a dataflow naming another pipeline's collection, as `replay --into` an existing
//! collection would) — and proceeds with `--force`; a table TRUNCATE can be refused
//! (`source.truncate = "dead-letter"`) and then deletes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use freshet::sink::{Catalog, SinkOp, SinkPoint};
use serde_json::Value;
use support::*;
use uuid::Uuid;

fn run(dataflow: &Path, config: &Path, extra: &[&str]) -> (bool, String) {
    let out = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn count(dataflow: &Path, config: &Path) -> usize {
    let spec = freshet::config::DataflowSpec::load(dataflow).unwrap();
    let rc = freshet::config::RuntimeConfig::load(config).unwrap();
    freshet::runtime::open_collection(&spec, &rc, &spec.sink.collection).unwrap().1.count().unwrap()
}

#[test]
fn start_up_refuses_to_delete_30_percent_of_the_collection_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(61, 40, 400, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    run_until_end(&dataflow, &config, &[]);
    let before = export(&dataflow, &config, true);
    let points: Vec<Value> = before.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Copies of real points under ids freshet would not give them: 30% of the collection.
    let copies: Vec<SinkPoint> = points
        .iter()
        .take(points.len() * 3 / 7 + 1)
        .map(|p| SinkPoint {
            id: Uuid::new_v4(),
            vector: p["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            payload: p["payload"].as_object().unwrap().clone(),
        })
        .collect();
    let n = copies.len();
    {
        let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
        let rc = freshet::config::RuntimeConfig::load(&config).unwrap();
        let (_, sink) = freshet::runtime::open_collection(&spec, &rc, "articles").unwrap();
        sink.apply(vec![SinkOp::Upsert(copies)]).unwrap();
    }
    let total = points.len() + n;

    let (ok, stderr) = run(&dataflow, &config, &[]);
    assert!(!ok, "the run must refuse to start");
    assert!(stderr.contains(&format!("would delete {n} of the collection's {total} points")), "{stderr}");
    assert!(stderr.contains(&format!("wrong_id: {n}")) && stderr.contains("--force"), "{stderr}");
    assert_eq!(count(&dataflow, &config), total, "nothing deleted");

    let (ok, stderr) = run(&dataflow, &config, &["--force"]);
    assert!(ok, "{stderr}");
    assert_eq!(count(&dataflow, &config), points.len());
    assert_eq!(export(&dataflow, &config, true), before);
}

/// A dataflow whose `sink.collection` names another pipeline's collection (a renamed
/// collection, an alias moved by hand, `replay --into` an existing collection): none of
/// its points has the id this dataflow would give it. Start-up used to delete them all.
#[test]
fn a_dataflow_pointed_at_another_pipelines_collection_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(62, 40, 400, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    run_until_end(&dataflow, &config, &[]);
    let before = export(&dataflow, &config, true);
    let catalog = freshet::sink::embedded::EmbeddedCatalog::new(&dir.path().join("data"));
    catalog.switch_alias("blog", "articles__freshet-hash-16").unwrap();
    let other = with_collection(
        &write_dataflow(&dir.path().join("blog.toml"), "kind = \"file\"\npath = \"/dev/null\"", ""),
        "blog",
    );

    let (ok, stderr) = run(&other, &config, &[]);
    assert!(!ok, "the run must refuse to start");
    let n = before.lines().count();
    assert!(stderr.contains(&format!("would delete {n} of the collection's {n} points")), "{stderr}");
    assert!(stderr.contains(&format!("wrong_id: {n}")), "{stderr}");
    assert_eq!(export(&dataflow, &config, true), before, "the other pipeline's collection is whole");
}

/// `source.truncate = "dead-letter"`: a TRUNCATE deletes nothing and is dead-lettered
/// (`truncate_refused`); with the default (`apply`) the same history empties the
/// collection, as the source table is empty.
#[test]
fn a_refused_truncate_deletes_nothing_and_is_dead_lettered() {
    let history = random_history(63, 30, 300, false);
    let last_lsn = history
        .iter()
        .filter_map(|e| match e {
            Ev::Upsert { lsn, .. } | Ev::Delete { lsn, .. } | Ev::Truncate { lsn } => Some(*lsn),
            Ev::Tombstone => None,
        })
        .max()
        .unwrap();
    let mut with_truncate = history.clone();
    with_truncate.push(Ev::Truncate { lsn: last_lsn + 10 });
    for refuse in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        write_events(&input, &with_truncate);
        let dataflow = test_dataflow(dir.path(), &input);
        if refuse {
            let text = std::fs::read_to_string(&dataflow)
                .unwrap()
                .replace("table = \"public.articles\"\n", "table = \"public.articles\"\ntruncate = \"dead-letter\"\n");
            std::fs::write(&dataflow, text).unwrap();
        }
        let config = test_config(dir.path(), 2);
        let summary = run_until_end(&dataflow, &config, &[]);
        let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
        if refuse {
            let expected = oracle(&spec, &history, "freshet/hash-16", 16);
            assert!(!expected.export.is_empty());
            assert_export_matches(&export(&dataflow, &config, true), &expected.export);
            assert_eq!(summary["dead_lettered"].as_u64().unwrap() as usize, expected.dead_lettered + 1, "{summary}");
            let dead = std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap();
            assert_eq!(dead.lines().filter(|l| l.contains("\"truncate_refused\"")).count(), 1, "{dead}");
        } else {
            assert_eq!(export(&dataflow, &config, false), "", "an applied truncate empties the collection");
        }
    }
}

/// A tombstone log that does not belong to the collection (another pipeline's data
/// directory, versions of another scale) says every indexed document was deleted after its
/// points were written. Start-up used to delete them all as `deleted_document`.
#[test]
fn a_stale_tombstone_log_deletes_nothing_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(64, 40, 400, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    run_until_end(&dataflow, &config, &[]);
    let before = export(&dataflow, &config, true);
    let docs: std::collections::BTreeSet<String> = before
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["payload"]["doc_id"].as_str().unwrap().to_string())
        .collect();
    let log = dir.path().join("data/state/articles__freshet-hash-16.tombstones.jsonl");
    let stale: String = docs.iter().map(|d| format!("{{\"doc_id\":\"{d}\",\"version\":1000000000000}}\n")).collect();
    std::fs::write(&log, stale).unwrap();

    let (ok, stderr) = run(&dataflow, &config, &[]);
    assert!(!ok, "the run must refuse to start");
    let n = before.lines().count();
    assert!(stderr.contains(&format!("deleted_document: {n}")), "{stderr}");
    assert_eq!(export(&dataflow, &config, true), before, "nothing deleted");
}
