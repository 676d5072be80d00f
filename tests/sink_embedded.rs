//! Contract of the embedded sink (the Qdrant engine in-process): writes are visible and
//! durable across reopen, payload updates merge, deletes remove, vectors are found by
//! content hash, searches honour filters, wrong dimensions are permanent errors, and index
//! building in the background does not disturb concurrent writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use freshet::model::{ContentHash, Metadata};
use freshet::sink::embedded::EmbeddedSink;
use freshet::sink::{SinkOp, SinkPoint, VectorSink};
use serde_json::json;
use support::copy_dir;
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

/// Regression (issue 13): a crash in the middle of a WAL replay left a copy of the oldest
/// operations at the WAL's end, unrecorded; the next replay applied it after the newer
/// operations and put documents back to their snapshot text (their updates, already
/// committed, were never read again). A replay now records its range before it writes.
/// The crash is real: `freshet export` opening the collection aborts part-way through the
/// replay (fault injection), then the collection is opened again.
#[test]
fn an_interrupted_wal_replay_does_not_put_points_back_to_older_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = |i: usize| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("r{i}").as_bytes());
    let point = |i: usize, v: usize, status: &str| SinkPoint {
        id: id(i),
        vector: vector(v, 16),
        payload: payload(&format!("d{i}"), &ContentHash::of(&format!("{i}/{v}")), status),
    };
    let coll = freshet::sink::embedded::collection_dir(&data, "articles");
    let created_checkpoint;
    {
        let sink = EmbeddedSink::open(&data, "articles", 16).unwrap();
        created_checkpoint = std::fs::read(coll.join("freshet.wal-checkpoint")).unwrap();
        // The snapshot, then an update of every point.
        sink.apply(vec![SinkOp::Upsert((0..5).map(|i| point(i, i, "snapshot")).collect())]).unwrap();
        sink.apply(vec![SinkOp::Upsert((0..5).map(|i| point(i, i + 5, "updated")).collect())]).unwrap();
    }
    // As a kill after these writes leaves it: no clean marker, the checkpoint of creation.
    std::fs::remove_file(coll.join("freshet.clean")).unwrap();
    std::fs::write(coll.join("freshet.wal-checkpoint"), &created_checkpoint).unwrap();

    let dataflow = dir.path().join("d.toml");
    std::fs::write(
        &dataflow,
        "name = \"t\"\n[source]\nkind = \"file\"\npath = \"/dev/null\"\n[document]\nid = [\"id\"]\ntext = \"{body}\"\n\
         [embedder]\nkind = \"hash\"\ndimension = 16\n[sink]\ncollection = \"articles\"\n",
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n", data.display())).unwrap();
    // Killed after re-applying the first logged operation (the snapshot's upsert).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["export", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .env("FRESHET_FAULT_ABORT_AFTER_REPLAYED_OPS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the replay was to abort: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!coll.join("freshet.clean").exists());

    let sink = EmbeddedSink::open_existing(&data, "articles").unwrap();
    let recovery = sink.recovery();
    assert!(recovery.unclean_close);
    assert_eq!(recovery.interrupted_replays, 1, "{recovery:?}");
    let all = scroll_all(&sink, false);
    assert_eq!(all.len(), 5);
    for p in &all {
        assert_eq!(p.payload["status"], "updated", "point {} went back to an older version", p.id);
    }
}

/// Issue 15: a write issued while an index build runs is acknowledged while the build is
/// still running — it does not wait for it (it used to hold the write lock throughout: a
/// burst of changes waited 110 s for the HNSW build of a 212k-point collection). The
/// collection is then exactly what the writes say, once built and after a reopen.
#[test]
fn a_write_during_an_index_build_is_acknowledged_before_the_build_ends() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 384;
    let sink = Arc::new(EmbeddedSink::open(dir.path(), "c", dim).unwrap());
    let id = |i: usize| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("b{i}").as_bytes());
    let noisy =
        |i: usize| -> Vec<f32> { (0..dim).map(|k| (((i * 7919 + k * 104_729) % 1000) as f32) / 1000.0).collect() };
    let n = 30_000;
    for batch in 0..(n / 2000) {
        let points = (batch * 2000..(batch + 1) * 2000)
            .map(|i| SinkPoint {
                id: id(i),
                vector: noisy(i),
                payload: payload(&format!("d{i}"), &ContentHash::of(&i.to_string()), "draft"),
            })
            .collect();
        sink.apply(vec![SinkOp::Upsert(points)]).unwrap();
    }
    let build = {
        let sink = Arc::clone(&sink);
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            sink.optimize().unwrap();
            t.elapsed()
        })
    };
    while !sink.build_running() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Let the build get going (proxies in place, HNSW under way).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut during = 0;
    let mut slowest = std::time::Duration::ZERO;
    let mut status = Metadata::new();
    status.insert("status".into(), json!("published"));
    while sink.build_running() && during < 200 {
        let i = during;
        let t = std::time::Instant::now();
        sink.apply(vec![
            SinkOp::Upsert(vec![SinkPoint {
                id: id(n + i),
                vector: noisy(n + i),
                payload: payload(&format!("d{}", n + i), &ContentHash::of(&(n + i).to_string()), "new"),
            }]),
            SinkOp::SetPayload { ids: vec![id(i)], payload: status.clone() },
            SinkOp::Delete(vec![id(n / 2 + i)]),
        ])
        .unwrap();
        slowest = slowest.max(t.elapsed());
        during += 1;
    }
    let took = build.join().unwrap();
    eprintln!("build took {took:?}; {during} writes during it, the slowest acknowledged in {slowest:?}");
    assert!(during >= 3, "the build ({took:?}) ended before the writes could overlap it");
    assert!(
        slowest < took / 2 && slowest < std::time::Duration::from_secs(2),
        "a write waited {slowest:?} during a build of {took:?}"
    );
    let check = |sink: &EmbeddedSink| {
        assert_eq!(sink.count().unwrap(), n, "every point once: {during} added, {during} deleted");
        let all = scroll_all(sink, false);
        assert_eq!(all.len(), n);
        let by_id: std::collections::HashMap<Uuid, &Metadata> = all.iter().map(|p| (p.id, &p.payload)).collect();
        for i in 0..during {
            assert_eq!(by_id[&id(i)]["status"], "published");
            assert_eq!(by_id[&id(n + i)]["status"], "new");
            assert!(!by_id.contains_key(&id(n / 2 + i)));
        }
    };
    check(&sink);
    let sink = Arc::try_unwrap(sink).unwrap();
    drop(sink);
    check(&EmbeddedSink::open_existing(dir.path(), "c").unwrap());
}

/// Regression (issue 13, seed 102 of `scripts/crash-test`): qdrant-edge's payload storage
/// creates a page file before it extends the bitmask covering it; a kill in between left a
/// page no bitmask covered, and the collection could not be opened any more ("Inconsistent
/// number of gridstore pages"). Such a page (created, never written) is removed at open, said
/// in the recovery report, and every point is still there.
#[test]
fn a_storage_page_created_just_before_a_kill_does_not_stop_the_collection_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let points: Vec<SinkPoint> = (0..50)
        .map(|i| {
            let h = ContentHash::of(&format!("text {i}"));
            SinkPoint { id: Uuid::from_u128(i as u128 + 1), vector: vector(i, 4), payload: payload("d", &h, "draft") }
        })
        .collect();
    {
        let sink = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
        sink.apply(vec![SinkOp::Upsert(points.clone())]).unwrap();
    }
    // What the kill left: one segment's payload storage with a page beyond its bitmask (a
    // fresh page file is all zeroes), and no clean-close marker.
    let collection = std::fs::read_dir(dir.path().join("collections"))
        .map(|mut d| d.next().unwrap().unwrap().path())
        .unwrap_or_else(|_| dir.path().join("c"));
    let storage = walk(&collection)
        .into_iter()
        .find(|p| p.ends_with("payload_storage") && p.join("page_0.dat").exists())
        .expect("a segment's payload storage");
    let pages = std::fs::read_dir(&storage)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("page_"))
        .count();
    let extra = std::fs::File::create(storage.join(format!("page_{pages}.dat"))).unwrap();
    extra.set_len(32 * 1024 * 1024).unwrap();
    let _ = std::fs::remove_file(collection.join("freshet.clean"));
    let sink = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
    assert_eq!(sink.recovery().uncovered_pages_removed, 1, "{:?}", sink.recovery());
    assert!(!storage.join(format!("page_{pages}.dat")).exists());
    let mut got: Vec<Uuid> = scroll_all(&sink, false).into_iter().map(|p| p.id).collect();
    got.sort();
    assert_eq!(got, points.iter().map(|p| p.id).collect::<Vec<_>>());
}

/// Every directory below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}
