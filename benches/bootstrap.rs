//! Restart cost benchmark (harness = false): how long freshet takes to rebuild its
//! per-document state from a collection of N points on the embedded engine — the scroll of
//! every payload (no vectors) and the state rebuild that `run` does at start — plus the
//! time to open the collection and the peak resident memory.
//!
//! The collection is filled directly (points as freshet writes them: 5 chunks per
//! document, ~300-character chunk texts, the articles dataflow's metadata, 384-dim
//! vectors), so the benchmark measures the restart, not the embedding.
//!
//! `cargo bench --profile dev --bench bootstrap -- [--points N] [--dim D]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use freshet::config::DataflowSpec;
use freshet::dataflow::state::DocShape;
use freshet::model::{chunk_payload, collection_namespace, point_id, ContentHash, DocId, Metadata};
use freshet::runtime::bootstrap;
use freshet::runtime::store::Tombstones;
use freshet::sink::embedded::EmbeddedSink;
use freshet::sink::{SinkOp, SinkPoint, VectorSink};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: a small smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let points = arg("--points", if smoke { 2_000 } else { 1_000_000 });
    let dim = arg("--dim", 384);
    let chunks_per_doc = 5;
    let spec =
        DataflowSpec::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/articles.toml")))
            .expect("dataflow");
    let shape = DocShape::new(&spec);
    let ns = collection_namespace(&spec.sink.collection);
    let model = "sentence-transformers/all-MiniLM-L6-v2";
    let tmp = tempfile::tempdir().expect("tempdir");
    let filler = "The river delta carries sediment past the harbor lantern while the ledger of the orbit engine \
                  records each signal in copper and quartz; meadows and glaciers keep their own slow index of \
                  time, and the falcon over the cedar marks the thunder that follows the violet evening light. ";

    let t = Instant::now();
    {
        let sink = EmbeddedSink::open(tmp.path(), "bench", dim).expect("open");
        let mut batch = Vec::with_capacity(2000);
        for i in 0..points {
            let doc = DocId(format!("{}", i / chunks_per_doc));
            let idx = (i % chunks_per_doc) as u32;
            let text = format!("{i} {filler}");
            let hash = ContentHash::of(&text);
            let meta: Metadata = json!({"title": format!("Article {}", i / chunks_per_doc), "lang": "en",
                                        "status": "published", "updated_at": 1_700_000_000 + i})
            .as_object()
            .unwrap()
            .clone();
            let payload = chunk_payload(&meta, &doc, idx, &hash, 1000 + i as u64, model, &text, &[1, 2]);
            let vector: Vec<f32> = (0..dim).map(|k| ((i * 31 + k * 7) % 97) as f32 / 97.0 + 0.01).collect();
            batch.push(SinkPoint { id: point_id(&ns, &doc, idx), vector, payload });
            if batch.len() == 2000 {
                sink.apply(vec![SinkOp::Upsert(std::mem::take(&mut batch))]).expect("write");
            }
        }
        if !batch.is_empty() {
            sink.apply(vec![SinkOp::Upsert(batch)]).expect("write");
        }
        assert_eq!(sink.count().unwrap(), points);
    }
    let fill_s = t.elapsed().as_secs_f64();
    println!("filled {points} points ({dim} dims) in {fill_s:.1}s ({:.0} points/s)", points as f64 / fill_s);

    let rss_before = peak_rss_mib();
    let t = Instant::now();
    let sink = EmbeddedSink::open_existing(tmp.path(), "bench").expect("reopen");
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let boot = bootstrap::rebuild(&sink, &shape, model, &ns, &Tombstones::default(), &[], 2).expect("rebuild");
    let rebuild_s = t.elapsed().as_secs_f64();
    assert_eq!(boot.points, points);
    assert_eq!(boot.live_docs, points.div_ceil(chunks_per_doc));
    assert!(boot.orphans.is_empty());
    println!(
        "restart of {points} points / {} documents: open {open_s:.1}s, state rebuilt from the payload scroll in \
         {rebuild_s:.1}s ({:.0} points/s); peak RSS {:.0} MiB (after filling: {rss_before:.0} MiB)",
        boot.live_docs,
        points as f64 / rebuild_s,
        peak_rss_mib()
    );
}
