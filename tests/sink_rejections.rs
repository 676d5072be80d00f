//! A sink that permanently rejects one document's writes (as a server rejects an invalid
//! payload): only that document goes to the dead-letter file, with the sink's reason; every
//! other document of the same batches is written, and the collection equals the oracle
//! without the rejected document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use freshet::config::{DataflowSpec, RuntimeConfig};
use freshet::model::{collection_namespace, point_id, ContentHash, DocId};
use freshet::runtime::{run, MirrorHooks, RunOptions};
use freshet::sink::{open_for_writing, CollectionParams, Hit, SinkError, SinkOp, StoredPoint, VectorSink};
use support::*;
use uuid::Uuid;

/// Rejects every operation touching `bad`'s points, like a server refusing a payload.
struct Rejecting {
    inner: Arc<dyn VectorSink>,
    bad: BTreeSet<Uuid>,
}

impl VectorSink for Rejecting {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    fn apply(&self, ops: Vec<SinkOp>) -> Result<(), SinkError> {
        let touches = ops.iter().any(|op| match op {
            SinkOp::Upsert(p) => p.iter().any(|p| self.bad.contains(&p.id)),
            SinkOp::SetPayload { ids, .. } | SinkOp::Delete(ids) => ids.iter().any(|i| self.bad.contains(i)),
        });
        if touches {
            return Err(SinkError::Permanent("Wrong input: payload field `title` is not allowed (test)".into()));
        }
        self.inner.apply(ops)
    }
    fn scroll(&self, v: bool, page: usize, visit: &mut dyn FnMut(Vec<StoredPoint>)) -> Result<(), SinkError> {
        self.inner.scroll(v, page, visit)
    }
    fn points_of_docs(&self, docs: &[String], v: bool) -> Result<Vec<StoredPoint>, SinkError> {
        self.inner.points_of_docs(docs, v)
    }
    fn vectors_by_hash(&self, m: &str, h: &[ContentHash]) -> Result<HashMap<ContentHash, Vec<f32>>, SinkError> {
        self.inner.vectors_by_hash(m, h)
    }
    fn search(&self, v: Vec<f32>, k: usize, f: &[(String, serde_json::Value)]) -> Result<Vec<Hit>, SinkError> {
        self.inner.search(v, k, f)
    }
    fn count(&self) -> Result<usize, SinkError> {
        self.inner.count()
    }
    fn optimize(&self) -> Result<(), SinkError> {
        self.inner.optimize()
    }
}

#[test]
fn a_permanently_rejected_document_is_dead_lettered_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(99, 20, 400, false);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let spec = DataflowSpec::load(&dataflow).unwrap();
    let config = RuntimeConfig { workers: 2, data_dir: dir.path().join("data"), ..RuntimeConfig::default() };
    let expected = oracle(&spec, &history, "freshet/hash-16", 16);
    let bad_doc = expected.export[0]["payload"]["doc_id"].as_str().unwrap().to_string();
    let ns = collection_namespace(&spec.sink.collection);
    let bad: BTreeSet<Uuid> = (0..200).map(|i| point_id(&ns, &DocId(bad_doc.clone()), i)).collect();

    let catalog = freshet::sink::embedded::EmbeddedCatalog::new(&config.data_dir);
    let (name, inner) =
        open_for_writing(&catalog, "articles", "freshet/hash-16", &CollectionParams::of(&spec.sink, 16)).unwrap();
    let sink: Arc<dyn VectorSink> = Arc::new(Rejecting { inner, bad });
    let opts = RunOptions {
        mirror: Some(MirrorHooks {
            sink: (name, sink),
            on_written: Arc::new(|_| {}),
            idle: Arc::new(AtomicBool::new(false)),
        }),
        ..RunOptions::live(spec.clone(), config.clone(), true)
    };
    run(opts, Arc::new(AtomicBool::new(false))).unwrap();

    let want: Vec<serde_json::Value> =
        expected.export.iter().filter(|p| p["payload"]["doc_id"] != bad_doc.as_str()).cloned().collect();
    assert!(want.len() < expected.export.len());
    let config_file = test_config(dir.path(), 2);
    assert_export_matches(&export(&dataflow, &config_file, true), &want);
    let dl = std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap();
    let rejected: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["reason"] == "sink_rejected")
        .collect();
    assert!(!rejected.is_empty(), "{dl}");
    assert!(rejected.iter().all(|e| e["doc_id"] == bad_doc.as_str() && e["stage"] == "sink"), "{dl}");
    assert!(rejected[0]["error"].as_str().unwrap().contains("not allowed"), "{dl}");
}
