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
use support::qdrant::{qdrant_config, with_qdrant_sink, Emulator};
use support::*;
use uuid::Uuid;

fn reconcile(dataflow: &Path, config: &Path, dry_run: bool) -> Value {
    let mut cmd = freshet();
    cmd.args(["reconcile", "--dataflow"]).arg(dataflow).arg("--config").arg(config);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "reconcile failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
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
