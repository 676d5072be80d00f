//! `freshet reindex`: a model upgrade with no downtime. On a Qdrant server (freshet's
//! emulator), a reader searching through the alias during the whole reindex never gets an
//! error, an empty result for a document that exists, or a mix of models; the new
//! collection equals the oracle for the new model, also for changes that arrived during
//! the reindex. On the embedded engine the old collection can be dropped after the switch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qdrant_client::qdrant::{Condition, Filter, QueryPointsBuilder};
use serde_json::Value;
use support::qdrant::{qdrant_config, with_qdrant_sink, Emulator};
use support::*;

const NEW: &str = "freshet/hash-16-seed7";

fn spec_of(dataflow: &Path) -> freshet::config::DataflowSpec {
    freshet::config::DataflowSpec::load(dataflow).unwrap()
}

fn reindex(dataflow: &Path, config: &Path, embedder: &Path, extra: &[&str]) -> Value {
    let out = freshet()
        .args(["reindex", "--no-progress", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .arg("--embedder")
        .arg(embedder)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "reindex failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

/// Documents alive at the end of `events` and untouched by `later`.
fn stable_docs(events: &[Ev], later: &[Ev]) -> Vec<u64> {
    let mut alive = BTreeSet::new();
    for e in events {
        match e {
            Ev::Upsert { row, .. } => {
                alive.insert(row.id);
            }
            Ev::Delete { id, .. } => {
                alive.remove(id);
            }
            Ev::Truncate { .. } => alive.clear(),
            Ev::Tombstone => {}
        }
    }
    for e in later {
        match e {
            Ev::Upsert { row, .. } => {
                alive.remove(&row.id);
            }
            Ev::Delete { id, .. } => {
                alive.remove(id);
            }
            _ => {}
        }
    }
    alive.into_iter().collect()
}

#[test]
fn readers_see_one_whole_model_at_every_moment_of_a_reindex() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(404, 300, 2500, false);
    let (first, second) = history.split_at(2300);
    write_events(&input, first);
    let dataflow = with_qdrant_sink(&test_dataflow(dir.path(), &input));
    let config = qdrant_config(dir.path(), 2, &emulator.url(), "");
    run_until_end(&dataflow, &config, &[]);
    let docs = stable_docs(first, second);
    assert!(docs.len() >= 10, "{} stable documents", docs.len());

    // A reader searching through the alias, as an application would.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, url) = (Arc::clone(&stop), emulator.url());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let client = qdrant_client::Qdrant::from_url(&url).skip_compatibility_check().build().unwrap();
                let (mut queries, mut seen_new, mut old_after_new) = (0usize, 0usize, 0usize);
                let mut problems = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let doc = docs[i % docs.len()].to_string();
                    i += 1;
                    let q = QueryPointsBuilder::new("articles")
                        .query(vec![0.25f32; 16])
                        .filter(Filter::must([Condition::matches("doc_id", doc.clone())]))
                        .limit(3)
                        .with_payload(true);
                    queries += 1;
                    match client.query(q).await {
                        Err(e) => problems.push(format!("error: {e}")),
                        Ok(r) if r.result.is_empty() => problems.push(format!("no result for present document {doc}")),
                        Ok(r) => {
                            let models: BTreeSet<String> = r
                                .result
                                .iter()
                                .map(|p| {
                                    p.payload
                                        .get("model_id")
                                        .and_then(|v| v.as_str())
                                        .map(|s| s.to_string())
                                        .unwrap_or_default()
                                })
                                .collect();
                            if models.len() != 1 {
                                problems.push(format!("mixed models in one result: {models:?}"));
                            }
                            if models.contains(NEW) {
                                seen_new += 1;
                            } else if seen_new > 0 {
                                old_after_new += 1;
                            }
                        }
                    }
                }
                (queries, seen_new, old_after_new, problems)
            })
        })
    };

    // Changes keep arriving while the reindex runs.
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    for ev in second {
        use std::io::Write;
        writeln!(f, "{}", ev.to_json()).unwrap();
    }
    drop(f);
    let report = reindex(&dataflow, &config, &new_embedder_file(dir.path()), &[]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (queries, seen_new, old_after_new, problems) = reader.join().unwrap();
    assert!(
        problems.is_empty(),
        "{} problems in {queries} queries, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(seen_new > 0 && queries > seen_new, "the reader saw the old model, then the new ({seen_new} of {queries})");
    assert_eq!(old_after_new, 0, "after the switch the old model never comes back");
    assert_eq!(report["switched"], true, "{report}");
    assert_eq!(report["new_collection"], "articles__freshet-hash-16-seed7");
    assert!(report["verified_vectors"].as_u64().unwrap() > 0, "{report}");
    assert!(report["chunks_embedded"].as_u64().unwrap() > 0, "{report}");

    // The old pipeline's embedder is refused now; with the new one, the pipeline resumes.
    let out = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reindex"), "{}", String::from_utf8_lossy(&out.stderr));
    use_new_embedder(&dataflow);
    run_until_end(&dataflow, &config, &[]);
    let expected = oracle(&spec_of(&dataflow), &history, NEW, 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

#[test]
fn embedded_reindex_switches_and_drops_the_old_collection() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(405, 40, 1200, true);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    run_until_end(&dataflow, &config, &[]);
    let report = reindex(&dataflow, &config, &new_embedder_file(dir.path()), &["--drop-old", "--sample", "10000"]);
    assert_eq!(report["old_dropped"], true, "{report}");
    assert_eq!(report["verified_vectors"], report["points"], "every vector checked: {report}");
    let collections: Vec<String> = std::fs::read_dir(dir.path().join("data/collections"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(collections, vec!["articles__freshet-hash-16-seed7".to_string()]);
    use_new_embedder(&dataflow);
    let again = run_until_end(&dataflow, &config, &[]);
    assert_eq!(again["chunks_embedded"], 0, "the reindexed collection is complete: {again}");
    let expected = oracle(&spec_of(&dataflow), &history, NEW, 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

/// The same model with other collection settings: a new generation of the collection,
/// every vector copied, nothing embedded but the verification sample.
#[test]
fn reindex_with_the_same_model_copies_every_vector() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(406, 30, 600, false);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    run_until_end(&dataflow, &config, &[]);
    let text = std::fs::read_to_string(&dataflow).unwrap().replace("[sink]\n", "[sink]\nhnsw_m = 8\n");
    std::fs::write(&dataflow, text).unwrap();
    let out = freshet()
        .args(["reindex", "--no-progress", "--sample", "5", "--embedder", "hash", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(report["new_collection"], "articles__freshet-hash-16--2", "{report}");
    assert_eq!(report["chunks_embedded"], 0, "{report}");
    assert_eq!(report["vectors_reused"], report["points"], "{report}");
    let again = run_until_end(&dataflow, &config, &[]);
    assert_eq!(again["chunks_embedded"], 0, "{again}");
    let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}
