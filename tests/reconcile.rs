//! `freshet reconcile` on the embedded engine and on the Qdrant sink (through freshet's
//! Qdrant emulator): points written behind freshet's back are found, reported by reason
//! and removed; legitimate points are untouched (the export is byte-identical to before),
//! and the next run embeds nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use freshet::model::{collection_namespace, point_id, ContentHash, DocId, Metadata};
use freshet::sink::{SinkOp, SinkPoint};
use serde_json::{json, Value};
use support::qdrant::{qdrant_config, real_qdrant_url, with_qdrant_sink, Emulator, ServerCleanup};
use support::*;
use uuid::Uuid;

/// `freshet reconcile` with `args`: (success, the JSON report if one was printed, stderr).
fn reconcile_with(dataflow: &Path, config: &Path, args: &[&str]) -> (bool, Option<Value>, String) {
    let out = freshet()
        .args(["reconcile", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).lines().last().map(|l| serde_json::from_str(l).unwrap());
    (out.status.success(), report, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn reconcile(dataflow: &Path, config: &Path, dry_run: bool) -> Value {
    let (ok, report, stderr) = reconcile_with(dataflow, config, if dry_run { &["--dry-run"] } else { &[] });
    assert!(ok, "reconcile failed: {stderr}");
    report.expect("a report")
}

/// Points in the collection behind the dataflow's alias, and the collection's name.
fn served(dataflow: &Path, config: &Path) -> (String, usize) {
    let spec = freshet::config::DataflowSpec::load(dataflow).unwrap();
    let rc = freshet::config::RuntimeConfig::load(config).unwrap();
    let (physical, sink) = freshet::runtime::open_collection(&spec, &rc, &spec.sink.collection).unwrap();
    (physical, sink.count().unwrap())
}

fn obj(v: Value) -> Metadata {
    v.as_object().unwrap().clone()
}

fn check(dataflow: &Path, config: &Path, history: &[Ev]) {
    // A document whose last event is a delete.
    let mut last: std::collections::BTreeMap<u64, bool> = Default::default();
    for ev in history {
        match ev {
            Ev::Upsert { row, .. } => {
                last.insert(row.id, false);
            }
            Ev::Delete { id, .. } => {
                last.insert(*id, true);
            }
            _ => {}
        }
    }
    let deleted = last.iter().find(|(_, d)| **d).map(|(id, _)| id.to_string()).expect("a deleted document");
    run_until_end(dataflow, config, &[]);
    let before = export(dataflow, config, true);
    let spec = freshet::config::DataflowSpec::load(dataflow).unwrap();
    let rc = freshet::config::RuntimeConfig::load(config).unwrap();
    let ns = collection_namespace(&spec.sink.collection);
    let points: Vec<Value> = before.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let legit = &points[0];
    let legit_doc = legit["payload"]["doc_id"].as_str().unwrap().to_string();
    let chunks_of_legit = points.iter().filter(|p| p["payload"]["doc_id"] == legit["payload"]["doc_id"]).count() as u32;
    let vector: Vec<f32> = legit["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let model = legit["payload"]["model_id"].as_str().unwrap().to_string();
    let h = ContentHash::of("behind freshet's back");

    // Behind freshet's back: one point of each kind.
    let mut copy = legit["payload"].as_object().unwrap().clone();
    copy.insert("title".into(), json!("a copy under another id"));
    let gap_idx = chunks_of_legit + 1;
    let mut gap = legit["payload"].as_object().unwrap().clone();
    gap.insert("chunk_index".into(), json!(gap_idx));
    let ghost = DocId("ghost-doc".into());
    let ghost_payload = obj(json!({"doc_id": "ghost-doc", "chunk_index": 0, "content_hash": h.to_hex(),
        "source_version": 1, "model_id": "someone/else", "text": "x"}));
    let dead = DocId(deleted.clone());
    let dead_payload = obj(json!({"doc_id": deleted, "chunk_index": 0, "content_hash": h.to_hex(),
        "source_version": 1, "model_id": model, "text": "x"}));
    let foreign = vec![
        SinkPoint { id: point_id(&ns, &dead, 0), vector: vector.clone(), payload: dead_payload },
        SinkPoint {
            id: Uuid::new_v4(),
            vector: vector.clone(),
            payload: obj(json!({"title": "spam", "text": "buy now"})),
        },
        SinkPoint { id: Uuid::new_v4(), vector: vector.clone(), payload: copy },
        SinkPoint { id: point_id(&ns, &DocId(legit_doc.clone()), gap_idx), vector: vector.clone(), payload: gap },
        SinkPoint { id: point_id(&ns, &ghost, 0), vector: vector.clone(), payload: ghost_payload },
    ];
    {
        let (_, sink) = freshet::runtime::open_collection(&spec, &rc, &spec.sink.collection).unwrap();
        sink.apply(vec![SinkOp::Upsert(foreign.clone())]).unwrap();
        assert_eq!(sink.count().unwrap(), points.len() + 5);
    }

    let dry = reconcile(dataflow, config, true);
    assert_eq!(dry["removed"], 0);
    assert_eq!(
        dry["found"],
        json!({"chunk_gap": 1, "deleted_document": 1, "missing_keys": 1, "other_model": 1, "wrong_id": 1}),
        "{dry}"
    );
    assert_eq!(export(dataflow, config, false).lines().count(), points.len() + 5, "a dry run changes nothing");

    let report = reconcile(dataflow, config, false);
    assert_eq!(report["removed"], 5, "{report}");
    assert_eq!(report["points"].as_u64().unwrap() as usize, points.len() + 5);
    for p in &foreign {
        let reasons = report["examples"].as_object().unwrap();
        assert!(reasons.values().any(|ids| ids.as_array().unwrap().contains(&json!(p.id.to_string()))), "{report}");
    }
    assert_eq!(export(dataflow, config, true), before, "legitimate points untouched");
    let clean = reconcile(dataflow, config, false);
    assert_eq!(clean["found"], json!({}), "{clean}");
    let again = run_until_end(dataflow, config, &[]);
    assert_eq!(again["chunks_embedded"], 0, "{again}");
    assert_eq!(export(dataflow, config, true), before);
}

#[test]
fn reconcile_removes_points_written_behind_freshets_back_on_the_embedded_engine() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(31, 30, 600, false);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    check(&dataflow, &config, &history);
}

#[test]
fn reconcile_removes_points_written_behind_freshets_back_on_a_qdrant_server() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(32, 30, 600, false);
    write_events(&input, &history);
    let dataflow = with_qdrant_sink(&test_dataflow(dir.path(), &input));
    let config = qdrant_config(dir.path(), 2, &emulator.url(), "");
    check(&dataflow, &config, &history);
}

/// Issue 14: after `freshet reindex`, a reconcile with the dataflow file still naming the
/// previous embedder took every point for one of "another model" and deleted the whole
/// collection behind the live alias. It must refuse (dry run or not), naming both models,
/// and delete nothing; `run` with that file refuses as before; with the new embedder in the
/// dataflow there is nothing to delete.
fn reconcile_after_a_reindex(dataflow: &Path, config: &Path, dir: &Path) {
    run_until_end(dataflow, config, &[]);
    let (old_collection, points) = served(dataflow, config);
    assert!(points > 50, "{points} points");
    let out = freshet()
        .args(["reindex", "--no-progress", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .arg("--embedder")
        .arg(new_embedder_file(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "reindex failed: {}", String::from_utf8_lossy(&out.stderr));
    let (new_collection, n) = served(dataflow, config);
    assert_eq!(n, points);
    assert_ne!(new_collection, old_collection);
    assert!(new_collection.ends_with("__freshet-hash-16-seed7"), "{new_collection}");

    for args in [&["--dry-run"][..], &[], &["--force"]] {
        let (ok, report, stderr) = reconcile_with(dataflow, config, args);
        assert!(!ok, "reconcile {args:?} with the old dataflow must refuse; it printed {report:?}");
        assert!(report.is_none(), "no report: {report:?}");
        assert!(stderr.contains("freshet/hash-16-seed7") && stderr.contains("`freshet/hash-16`"), "{stderr}");
        assert!(stderr.contains("nothing was deleted") && stderr.contains("dataflow file"), "{stderr}");
        assert_eq!(served(dataflow, config), (new_collection.clone(), points), "reconcile {args:?} deleted points");
    }
    let exported = export(dataflow, config, false);
    assert_eq!(exported.lines().count(), points, "the alias serves every point");
    assert!(exported.lines().all(|l| l.contains("\"model_id\":\"freshet/hash-16-seed7\"")));

    // Regression: `run` with the old dataflow keeps refusing.
    let out = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run with the old dataflow must refuse");
    assert!(stderr.contains("another model") && stderr.contains("reindex"), "{stderr}");
    assert_eq!(served(dataflow, config), (new_collection.clone(), points));

    use_new_embedder(dataflow);
    for dry in [true, false] {
        let report = reconcile(dataflow, config, dry);
        assert_eq!(report["found"], json!({}), "{report}");
        assert_eq!((report["action"].as_str(), report["removed"].as_u64()), (Some("nothing"), Some(0)), "{report}");
        assert_eq!(report["collection"].as_str(), Some(new_collection.as_str()));
    }
    assert_eq!(served(dataflow, config), (new_collection, points));
}

#[test]
fn reconcile_with_the_dataflow_of_before_a_reindex_refuses_on_the_embedded_engine() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(33, 40, 400, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    reconcile_after_a_reindex(&dataflow, &config, dir.path());
}

#[test]
fn reconcile_with_the_dataflow_of_before_a_reindex_refuses_on_a_qdrant_server() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(34, 40, 400, false));
    let dataflow = with_qdrant_sink(&test_dataflow(dir.path(), &input));
    let config = qdrant_config(dir.path(), 2, &emulator.url(), "");
    reconcile_after_a_reindex(&dataflow, &config, dir.path());
}

#[test]
#[ignore = "needs a real Qdrant server: set FRESHET_TEST_QDRANT_URL=http://host:6334 and run with --include-ignored"]
fn reconcile_with_the_dataflow_of_before_a_reindex_refuses_on_a_real_qdrant_server() {
    let url = real_qdrant_url().expect("FRESHET_TEST_QDRANT_URL is not set");
    let name = format!("freshet_test_{}_reconcile", std::process::id());
    let cleanup = ServerCleanup::new(&url, &name);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(35, 40, 400, false));
    let dataflow = with_collection(&with_qdrant_sink(&test_dataflow(dir.path(), &input)), &name);
    let config = qdrant_config(dir.path(), 2, &url, "");
    reconcile_after_a_reindex(&dataflow, &config, dir.path());
    cleanup.clean();
    assert_eq!(cleanup.leftovers(), Vec::<String>::new());
}

/// Points without freshet's payload keys, making up 30% of the collection.
fn add_foreign_points(dataflow: &Path, config: &Path, share: f64) -> (usize, usize) {
    let spec = freshet::config::DataflowSpec::load(dataflow).unwrap();
    let rc = freshet::config::RuntimeConfig::load(config).unwrap();
    let (_, sink) = freshet::runtime::open_collection(&spec, &rc, &spec.sink.collection).unwrap();
    let points = sink.count().unwrap();
    let foreign = ((points as f64) * share / (1.0 - share)).ceil() as usize;
    let spam: Vec<SinkPoint> = (0..foreign)
        .map(|i| SinkPoint {
            id: Uuid::new_v4(),
            vector: vec![0.25; 16],
            payload: obj(json!({"title": format!("spam {i}"), "text": "buy now"})),
        })
        .collect();
    sink.apply(vec![SinkOp::Upsert(spam)]).unwrap();
    (points, foreign)
}

fn a_reconcile_facing_30_percent_foreign_points(dataflow: &Path, config: &Path) {
    run_until_end(dataflow, config, &[]);
    let before = export(dataflow, config, true);
    let (points, foreign) = add_foreign_points(dataflow, config, 0.3);
    let total = points + foreign;

    let dry = reconcile(dataflow, config, true);
    assert_eq!(dry["action"], "stop", "the dry run says a run would stop: {dry}");
    assert_eq!(dry["found"], json!({ "missing_keys": foreign }), "{dry}");
    assert_eq!(dry["removed"], 0);
    assert_eq!(served(dataflow, config).1, total);

    let (ok, report, stderr) = reconcile_with(dataflow, config, &[]);
    assert!(!ok, "stops without --force");
    let report = report.expect("the report is printed");
    assert_eq!((report["action"].as_str(), report["removed"].as_u64()), (Some("stop"), Some(0)), "{report}");
    assert_eq!(report["found"], json!({ "missing_keys": foreign }), "{report}");
    assert_eq!(report["examples"]["missing_keys"].as_array().unwrap().len(), 5, "{report}");
    assert!(report["limit"].as_u64().unwrap() < foreign as u64, "{report}");
    assert!(stderr.contains(&format!("delete {foreign} of the collection's {total} points")), "{stderr}");
    assert!(stderr.contains("missing_keys") && stderr.contains("--force"), "{stderr}");
    assert_eq!(served(dataflow, config).1, total, "nothing deleted");

    let dry = reconcile_with(dataflow, config, &["--dry-run", "--force"]).1.unwrap();
    assert_eq!((dry["action"].as_str(), dry["removed"].as_u64()), (Some("remove"), Some(0)), "{dry}");
    let (ok, report, stderr) = reconcile_with(dataflow, config, &["--force"]);
    assert!(ok, "{stderr}");
    let report = report.unwrap();
    assert_eq!(report["removed"].as_u64(), Some(foreign as u64), "{report}");
    assert_eq!(served(dataflow, config).1, points);
    assert_eq!(export(dataflow, config, true), before, "legitimate points untouched");
}

#[test]
fn a_reconcile_facing_30_percent_foreign_points_stops_without_force_on_the_embedded_engine() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(36, 40, 400, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    a_reconcile_facing_30_percent_foreign_points(&dataflow, &config);
}

#[test]
fn a_reconcile_facing_30_percent_foreign_points_stops_without_force_on_a_qdrant_server() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(37, 40, 400, false));
    let dataflow = with_qdrant_sink(&test_dataflow(dir.path(), &input));
    let config = qdrant_config(dir.path(), 2, &emulator.url(), "");
    a_reconcile_facing_30_percent_foreign_points(&dataflow, &config);
}
