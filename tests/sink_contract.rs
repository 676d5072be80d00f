//! One contract for every sink: the embedded engine, a Qdrant server through the emulator
//! (freshet's test-support emulator of Qdrant's gRPC API on qdrant-edge), and a real Qdrant
//! server when `FRESHET_TEST_QDRANT_URL` is set (those cases are `#[ignore]`d by name
//! otherwise: `FRESHET_TEST_QDRANT_URL=http://host:6334 cargo test --test sink_contract --
//! --include-ignored`).
//!
//! The contract: a dataflow's collection is an alias of `<name>__<model tag>`; writes are
//! visible in order within one call (also when split into several requests); payload
//! updates merge; deletes remove; scroll visits every point in id order; vectors are found
//! by content hash for their model only; searches honour filters; a wrong dimension is a
//! permanent error that applies nothing; alias switches are atomic; a collection of another
//! model or dimension is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use freshet::config::{Distance, QdrantConfig, SinkKind, SinkSpec};
use freshet::model::{ContentHash, Metadata};
use freshet::sink::embedded::EmbeddedCatalog;
use freshet::sink::qdrant::QdrantCatalog;
use freshet::sink::{open_for_writing, Catalog, CollectionParams, SinkOp, SinkPoint, VectorSink};
use serde_json::json;
use support::qdrant::{real_qdrant_url, Emulator, ServerCleanup};
use uuid::Uuid;

const MODEL: &str = "test/model-a";

fn spec(name: &str) -> SinkSpec {
    SinkSpec {
        kind: SinkKind::Embedded,
        collection: name.into(),
        distance: Distance::Cosine,
        hnsw_m: Some(8),
        hnsw_ef_construct: Some(50),
        on_disk_vectors: false,
        on_disk_payload: false,
        filterable: [("status".to_string(), freshet::config::IndexKind::Keyword)].into_iter().collect(),
    }
}

fn payload(doc: &str, hash: &ContentHash, status: &str, model: &str) -> Metadata {
    json!({"doc_id": doc, "content_hash": hash.to_hex(), "model_id": model, "status": status,
           "nested": {"tags": ["a", "b"], "n": 3}})
    .as_object()
    .unwrap()
    .clone()
}

/// Unit length (cosine collections store vectors normalised).
fn vector(i: usize, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|k| if k == i % dim { 1.0 } else { 0.01 * k as f32 }).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

fn id(i: usize) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("p{i}").as_bytes())
}

fn scroll_all(sink: &dyn VectorSink, with_vectors: bool) -> Vec<freshet::sink::StoredPoint> {
    let mut all = Vec::new();
    sink.scroll(with_vectors, 7, &mut |p| all.extend(p)).unwrap();
    all
}

fn qdrant(url: &str, max_points_per_request: usize) -> QdrantCatalog {
    QdrantCatalog::connect(&QdrantConfig {
        url: url.into(),
        api_key_env: None,
        timeout_ms: 5_000,
        connect_timeout_ms: 1_000,
        max_points_per_request,
        max_backoff_ms: 500,
    })
    .unwrap()
}

/// The contract, on collections named `<prefix>…` (so a real server can host other data).
fn contract(catalog: &dyn Catalog, prefix: &str) {
    let name = format!("{prefix}docs");
    let params = CollectionParams::of(&spec(&name), 4);

    // The name becomes an alias of a versioned collection.
    let (physical, sink) = open_for_writing(catalog, &name, MODEL, &params).unwrap();
    assert_eq!(physical, format!("{name}__test-model-a"));
    assert_eq!(catalog.resolve(&name).unwrap().as_deref(), Some(physical.as_str()));
    assert!(catalog.collections().unwrap().contains(&physical));
    assert_eq!(sink.dimension(), 4);

    // Writes in order within one call: 30 upserts, a payload merge, deletes, a re-upsert.
    let hashes: Vec<ContentHash> = (0..30).map(|i| ContentHash::of(&format!("chunk {i}"))).collect();
    let points: Vec<SinkPoint> = (0..30)
        .map(|i| SinkPoint {
            id: id(i),
            vector: vector(i, 4),
            payload: payload(&format!("d{}", i / 5), &hashes[i], "draft", MODEL),
        })
        .collect();
    let mut upd = Metadata::new();
    upd.insert("status".into(), json!("published"));
    sink.apply(vec![
        SinkOp::Upsert(points.clone()),
        SinkOp::SetPayload { ids: (0..5).map(id).collect(), payload: upd },
        SinkOp::Delete((20..30).map(id).collect()),
        SinkOp::Upsert(vec![points[25].clone()]),
    ])
    .unwrap();
    assert_eq!(sink.count().unwrap(), 21);
    let all = scroll_all(sink.as_ref(), true);
    assert_eq!(all.len(), 21);
    let ids: Vec<Uuid> = all.iter().map(|p| p.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "scroll is in id order");
    let p0 = all.iter().find(|p| p.id == id(0)).unwrap();
    assert_eq!(p0.payload["status"], "published", "payload merged");
    assert_eq!(p0.payload["doc_id"], "d0", "other keys kept");
    assert_eq!(p0.payload["nested"], json!({"tags": ["a", "b"], "n": 3}), "nested payload round-trips");
    assert!(close(p0.vector.as_deref().unwrap(), &vector(0, 4)));
    assert!(all.iter().any(|p| p.id == id(25)), "re-upserted after its delete");
    assert!(!all.iter().any(|p| p.id == id(24)));
    assert_eq!(all.iter().find(|p| p.id == id(7)).unwrap().payload["status"], "draft");

    // Vectors by content hash: present ones found, deleted ones not, other model not.
    let found = sink.vectors_by_hash(MODEL, &[hashes[3], hashes[24], hashes[25]]).unwrap();
    assert!(found.contains_key(&hashes[3]) && found.contains_key(&hashes[25]) && !found.contains_key(&hashes[24]));
    assert!(close(&found[&hashes[3]], &vector(3, 4)));
    assert!(sink.vectors_by_hash("other-model", &[hashes[3]]).unwrap().is_empty());

    // Search with a filter.
    let hits = sink.search(vector(2, 4), 3, &[("status".into(), json!("published"))]).unwrap();
    assert_eq!(hits[0].id, id(2));
    assert!(hits.len() == 3 && hits.iter().all(|h| h.payload["status"] == "published"));

    // A wrong dimension is permanent and applies nothing of its call.
    let err = sink
        .apply(vec![
            SinkOp::Delete(vec![id(1)]),
            SinkOp::Upsert(vec![SinkPoint { id: id(0), vector: vec![1.0; 3], payload: Metadata::new() }]),
        ])
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert_eq!(sink.count().unwrap(), 21, "nothing of the rejected call applied");
    // A payload update of a point that does not exist can never succeed either.
    let mut upd = Metadata::new();
    upd.insert("status".into(), json!("x"));
    let err = sink.apply(vec![SinkOp::SetPayload { ids: vec![id(999)], payload: upd }]).unwrap_err();
    assert!(!err.is_transient(), "{err}");

    // Reopening through the alias finds the same collection.
    drop(sink);
    let (again, reopened) = open_for_writing(catalog, &name, MODEL, &params).unwrap();
    assert_eq!(again, physical);
    assert_eq!(reopened.count().unwrap(), 21);
    drop(reopened);

    // Another model or dimension behind the alias is refused.
    let e = open_for_writing(catalog, &name, "test/model-b", &params).err().expect("another model is refused");
    assert!(e.to_string().contains("reindex"), "{e}");
    let e = open_for_writing(catalog, &name, MODEL, &CollectionParams::of(&spec(&name), 8)).err().expect("dimension");
    assert!(!e.is_transient(), "{e}");

    // Atomic alias switch to a second collection, then dropping the first.
    let other = format!("{name}__test-model-b");
    let second = catalog.create(&other, &CollectionParams::of(&spec(&name), 4)).unwrap();
    second
        .apply(vec![SinkOp::Upsert(vec![SinkPoint {
            id: id(100),
            vector: vector(1, 4),
            payload: payload("x", &hashes[0], "draft", "test/model-b"),
        }])])
        .unwrap();
    assert!(catalog.create(&other, &CollectionParams::of(&spec(&name), 4)).is_err(), "create refuses an existing one");
    drop(second);
    catalog.switch_alias(&name, &other).unwrap();
    assert_eq!(catalog.resolve(&name).unwrap().as_deref(), Some(other.as_str()));
    catalog.delete_collection(&physical).unwrap();
    assert!(!catalog.collections().unwrap().contains(&physical));
    assert_eq!(catalog.resolve(&name).unwrap().as_deref(), Some(other.as_str()), "the alias of the other stays");
    catalog.delete_collection(&other).unwrap();
    assert_eq!(catalog.resolve(&name).unwrap(), None, "dropping a collection drops its aliases");
}

/// Big writes are split into requests yet keep their order.
fn large_writes_keep_order(catalog: &dyn Catalog, prefix: &str) {
    let name = format!("{prefix}big");
    let (physical, sink) = open_for_writing(catalog, &name, MODEL, &CollectionParams::of(&spec(&name), 4)).unwrap();
    let h = ContentHash::of("x");
    let points: Vec<SinkPoint> = (0..1000)
        .map(|i| SinkPoint { id: id(i), vector: vector(i, 4), payload: payload("d", &h, "draft", MODEL) })
        .collect();
    let mut upd = Metadata::new();
    upd.insert("status".into(), json!("final"));
    sink.apply(vec![
        SinkOp::Upsert(points),
        SinkOp::Delete((0..500).map(id).collect()),
        SinkOp::SetPayload { ids: (500..1000).map(id).collect(), payload: upd },
    ])
    .unwrap();
    let all = scroll_all(sink.as_ref(), false);
    assert_eq!(all.len(), 500);
    assert!(all.iter().all(|p| p.payload["status"] == "final"));
    drop(sink);
    catalog.delete_collection(&physical).unwrap();
}

#[test]
fn embedded_engine_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = EmbeddedCatalog::new(dir.path());
    contract(&catalog, "");
    large_writes_keep_order(&catalog, "");
}

#[test]
fn qdrant_sink_on_the_emulator_keeps_the_contract() {
    let emulator = Emulator::start();
    let catalog = qdrant(&emulator.url(), 64);
    assert!(catalog.version().unwrap().starts_with('1'));
    contract(&catalog, "");
    large_writes_keep_order(&catalog, "");
}

#[test]
#[ignore = "needs a real Qdrant server: set FRESHET_TEST_QDRANT_URL=http://host:6334 and run with --include-ignored"]
fn qdrant_sink_on_a_real_server_keeps_the_contract() {
    let url = real_qdrant_url().expect("FRESHET_TEST_QDRANT_URL is not set");
    let catalog = qdrant(&url, 64);
    let prefix = format!("freshet_test_{}_", std::process::id());
    let _cleanup = ServerCleanup::new(&url, &prefix);
    contract(&catalog, &prefix);
    large_writes_keep_order(&catalog, &prefix);
}

/// The emulator keeps every acknowledged write across `kill -9`, and the sink rides out
/// the outage: reads retry while it is down, and fail as transient past the timeout.
#[test]
fn qdrant_sink_survives_an_emulator_kill() {
    let mut emulator = Emulator::start();
    let catalog = qdrant(&emulator.url(), 64);
    let params = CollectionParams::of(&spec("k"), 4);
    let (_, sink) = open_for_writing(&catalog, "k", MODEL, &params).unwrap();
    let h = ContentHash::of("x");
    for batch in 0..10 {
        let points = (0..50)
            .map(|k| SinkPoint { id: id(batch * 50 + k), vector: vector(k, 4), payload: payload("d", &h, "s", MODEL) })
            .collect();
        sink.apply(vec![SinkOp::Upsert(points)]).unwrap();
    }
    emulator.kill();
    let down = sink.apply(vec![SinkOp::Delete(vec![id(0)])]).unwrap_err();
    assert!(down.is_transient(), "a stopped server is a transient error: {down}");
    emulator.restart();
    assert_eq!(sink.count().unwrap(), 500, "every acknowledged point survived kill -9");
    sink.apply(vec![SinkOp::Delete(vec![id(0)])]).unwrap();
    assert_eq!(sink.count().unwrap(), 499);
}

/// With an API key configured, requests without it are refused and the key is never in
/// an error message.
#[test]
fn qdrant_api_key_comes_from_the_environment() {
    let var = "FRESHET_TEST_QDRANT_KEY";
    let secret = "s3cret-contract-key";
    std::env::set_var(var, secret);
    let emulator = Emulator::start_with_api_key(var);
    let mut cfg = QdrantConfig {
        url: emulator.url(),
        api_key_env: None,
        timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        max_points_per_request: 64,
        max_backoff_ms: 500,
    };
    let without = QdrantCatalog::connect(&cfg).unwrap();
    let e = without.collections().unwrap_err();
    assert!(!e.is_transient() && !e.to_string().contains(secret), "{e}");
    cfg.api_key_env = Some(var.into());
    let with = QdrantCatalog::connect(&cfg).unwrap();
    assert!(with.collections().unwrap().is_empty());
    cfg.api_key_env = Some("FRESHET_TEST_QDRANT_KEY_UNSET".into());
    let e = QdrantCatalog::connect(&cfg).unwrap_err();
    assert!(e.to_string().contains("FRESHET_TEST_QDRANT_KEY_UNSET"), "{e}");
}
