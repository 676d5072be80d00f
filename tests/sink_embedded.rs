//! Contract of the embedded sink (the Qdrant engine in-process): writes are visible and
//! durable across reopen, payload updates merge, deletes remove, vectors are found by
//! content hash, searches honour filters, wrong dimensions are permanent errors, and index
//! building in the background does not disturb concurrent writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use freshet::model::{ContentHash, Metadata};
use freshet::sink::embedded::EmbeddedSink;
use freshet::sink::{SinkOp, SinkPoint, VectorSink};
use serde_json::json;
use uuid::Uuid;

fn payload(doc: &str, hash: &ContentHash, status: &str) -> Metadata {
    json!({"doc_id": doc, "content_hash": hash.to_hex(), "model_id": "m", "status": status})
        .as_object()
        .unwrap()
        .clone()
}

fn vector(i: usize, dim: usize) -> Vec<f32> {
    (0..dim).map(|k| if k == i % dim { 1.0 } else { 0.01 * k as f32 }).collect()
}

fn scroll_all(sink: &dyn VectorSink, with_vectors: bool) -> Vec<freshet::sink::StoredPoint> {
    let mut all = Vec::new();
    sink.scroll(with_vectors, 7, &mut |p| all.extend(p)).unwrap();
    all
}

#[test]
fn writes_payload_merges_deletes_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let sink = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
    let hashes: Vec<ContentHash> = (0..20).map(|i| ContentHash::of(&format!("chunk {i}"))).collect();
    let ids: Vec<Uuid> = (0..20).map(|i| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("p{i}").as_bytes())).collect();
    let points = (0..20)
        .map(|i| SinkPoint {
            id: ids[i],
            vector: vector(i, 4),
            payload: payload(&format!("d{}", i / 5), &hashes[i], "draft"),
        })
        .collect();
    sink.apply(vec![SinkOp::Upsert(points)]).unwrap();
    assert_eq!(sink.count().unwrap(), 20);

    // Merge: `status` changes, other keys stay.
    let mut upd = Metadata::new();
    upd.insert("status".into(), json!("published"));
    sink.apply(vec![SinkOp::SetPayload { ids: ids[0..5].to_vec(), payload: upd }, SinkOp::Delete(ids[15..].to_vec())])
        .unwrap();
    let all = scroll_all(&sink, true);
    assert_eq!(all.len(), 15);
    let mut sorted = all.iter().map(|p| p.id).collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(sorted, all.iter().map(|p| p.id).collect::<Vec<_>>(), "scroll is in id order");
    let p0 = all.iter().find(|p| p.id == ids[0]).unwrap();
    assert_eq!(p0.payload["status"], "published");
    assert_eq!(p0.payload["doc_id"], "d0");
    assert_eq!(p0.vector.as_deref().unwrap().len(), 4);
    assert!(!all.iter().any(|p| p.id == ids[16]));

    // Vectors by content hash: present ones found, deleted ones not, other model not.
    let found = sink.vectors_by_hash("m", &[hashes[3], hashes[17]]).unwrap();
    assert!(found.contains_key(&hashes[3]) && !found.contains_key(&hashes[17]));
    assert!(sink.vectors_by_hash("other-model", &[hashes[3]]).unwrap().is_empty());

    // Search with a filter.
    let hits = sink.search(vector(2, 4), 3, &[("status".into(), json!("published"))]).unwrap();
    assert_eq!(hits[0].id, ids[2]);
    assert!(hits.iter().all(|h| h.payload["status"] == "published"));

    // Wrong dimension is permanent.
    let err = sink
        .apply(vec![SinkOp::Upsert(vec![SinkPoint { id: ids[0], vector: vec![1.0; 3], payload: Metadata::new() }])])
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    drop(sink);

    let reopened = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
    assert_eq!(reopened.count().unwrap(), 15);
    let busy = EmbeddedSink::open(dir.path(), "c", 4).unwrap_err();
    assert!(busy.to_string().contains("another freshet process"), "{busy}");
    drop(reopened);
    assert!(EmbeddedSink::open(dir.path(), "c", 8).is_err_and(|e| !e.is_transient()));
}

#[test]
fn background_optimisation_does_not_disturb_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(EmbeddedSink::open(dir.path(), "c", 8).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opt = {
        let (sink, stop) = (Arc::clone(&sink), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sink.optimize().unwrap();
                runs += 1;
            }
            runs
        })
    };
    let n = 6000;
    for batch in 0..(n / 200) {
        let points = (0..200)
            .map(|k| {
                let i = batch * 200 + k;
                SinkPoint {
                    id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("q{i}").as_bytes()),
                    vector: vector(i, 8),
                    payload: payload(&format!("d{i}"), &ContentHash::of(&i.to_string()), "draft"),
                }
            })
            .collect();
        sink.apply(vec![SinkOp::Upsert(points)]).unwrap();
        if batch % 5 == 4 {
            let ids = (0..50)
                .map(|k| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("q{}", batch * 200 + k).as_bytes()))
                .collect();
            sink.apply(vec![SinkOp::Delete(ids)]).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(opt.join().unwrap() > 0);
    sink.optimize().unwrap();
    let deleted = (n / 200 / 5) * 50;
    assert_eq!(sink.count().unwrap(), n - deleted);
    assert_eq!(scroll_all(sink.as_ref(), false).len(), n - deleted);
    let hits = sink.search(vector(5, 8), 1, &[]).unwrap();
    assert_eq!(hits.len(), 1);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What a kill in the middle of an index build leaves: a segment on disk twice (qdrant-edge
/// 0.7.1 does not deduplicate at open). After an unclean close the collection is repaired
/// at open: every point once, with its payload and vector.
#[test]
fn points_stored_twice_are_repaired_after_an_unclean_close() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<Uuid> = (0..20).map(|i| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("t{i}").as_bytes())).collect();
    {
        let sink = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
        let points = (0..20)
            .map(|i| SinkPoint {
                id: ids[i],
                vector: vector(i, 4),
                payload: payload(&format!("d{i}"), &ContentHash::of(&i.to_string()), "draft"),
            })
            .collect();
        sink.apply(vec![SinkOp::Upsert(points)]).unwrap();
    }
    let coll = freshet::sink::embedded::collection_dir(dir.path(), "c");
    std::fs::remove_file(coll.join("freshet.clean")).expect("a clean close leaves its marker");
    let segments = coll.join("segments");
    let mut copied = 0;
    for entry in std::fs::read_dir(&segments).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            copy_dir(&p, &segments.join(Uuid::new_v4().to_string()));
            copied += 1;
        }
    }
    assert!(copied > 0);
    let sink = EmbeddedSink::open_existing(dir.path(), "c").unwrap();
    assert_eq!(sink.count().unwrap(), 20, "every point once");
    let all = scroll_all(&sink, true);
    assert_eq!(all.len(), 20);
    for (i, id) in ids.iter().enumerate() {
        let p = all.iter().find(|p| p.id == *id).unwrap();
        assert_eq!(p.payload["doc_id"], format!("d{i}"));
        let v = p.vector.clone().unwrap();
        let norm = vector(i, 4).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(v.iter().zip(vector(i, 4)).all(|(a, b)| (a - b / norm).abs() < 1e-5), "vector of point {i}");
    }
}

/// What a kill in the middle of a flush can leave: segments behind the engine's WAL
/// (here, literally the segments of an earlier moment beside the WAL of a later one).
/// qdrant-edge 0.7.1 does not replay its WAL; the embedded sink does, after an unclean
/// close, from its last checkpoint: the collection is the one the writes describe.
#[test]
fn segments_behind_the_wal_are_brought_up_to_date_after_an_unclean_close() {
    let live = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let id = |i: usize| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("w{i}").as_bytes());
    let point = |i: usize, v: usize, status: &str| SinkPoint {
        id: id(i),
        vector: vector(v, 4),
        payload: payload(&format!("d{i}"), &ContentHash::of(&format!("{i}/{v}")), status),
    };
    {
        let sink = EmbeddedSink::open(live.path(), "c", 4).unwrap();
        sink.apply(vec![SinkOp::Upsert((0..10).map(|i| point(i, i, "draft")).collect())]).unwrap();
    }
    let coll = |d: &std::path::Path| freshet::sink::embedded::collection_dir(d, "c");
    // The moment before: a cleanly closed collection, checkpoint included.
    copy_dir(&coll(live.path()), &coll(crashed.path()));
    std::fs::remove_file(coll(crashed.path()).join("freshet.clean")).unwrap();
    let sink = EmbeddedSink::open(live.path(), "c", 4).unwrap();
    let mut status = Metadata::new();
    status.insert("status".into(), json!("published"));
    sink.apply(vec![
        SinkOp::Upsert(vec![point(0, 7, "draft"), point(10, 10, "draft")]),
        SinkOp::SetPayload { ids: vec![id(1), id(2)], payload: status },
        SinkOp::Delete(vec![id(3), id(4)]),
    ])
    .unwrap();
    // New content over the old point's id, then deleted, then written again.
    sink.apply(vec![SinkOp::Upsert(vec![point(5, 2, "draft")])]).unwrap();
    sink.apply(vec![SinkOp::Delete(vec![id(5)])]).unwrap();
    sink.apply(vec![SinkOp::Upsert(vec![point(5, 3, "archived")])]).unwrap();
    // The later WAL beside the earlier segments, as a crash would leave them.
    let wal = coll(crashed.path()).join("wal");
    std::fs::remove_dir_all(&wal).unwrap();
    copy_dir(&coll(live.path()).join("wal"), &wal);
    let expected = scroll_all(&sink, true);
    assert_eq!(expected.len(), 9);

    let recovered = EmbeddedSink::open_existing(crashed.path(), "c").unwrap();
    let got = scroll_all(&recovered, true);
    assert_eq!(got.len(), expected.len(), "points after replay");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.id, e.id);
        assert_eq!(g.payload, e.payload, "payload of {}", g.id);
        assert_eq!(g.vector, e.vector, "vector of {}", g.id);
    }
    assert_eq!(recovered.count().unwrap(), 9, "every point once");
    drop(recovered);
    // Closed cleanly after the replay: the next open replays nothing and sees the same.
    let again = EmbeddedSink::open_existing(crashed.path(), "c").unwrap();
    let got: Vec<_> = scroll_all(&again, false).into_iter().map(|p| (p.id, p.payload)).collect();
    let exp: Vec<_> = expected.into_iter().map(|p| (p.id, p.payload)).collect();
    assert_eq!(got, exp);
}
