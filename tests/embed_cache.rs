//! The persistent embedding cache (`embed_cache_path`): vectors keyed by (model id, content
//! hash) outlive the collection, so rebuilding a collection from scratch — a new data
//! directory, a replay into a new collection — embeds nothing already embedded, with the
//! hit ratio in the summary. Without the cache the same rebuild embeds everything again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::*;

fn config(dir: &Path, data: &str, cache: Option<&Path>) -> std::path::PathBuf {
    let path = dir.join(format!("{data}.toml"));
    let cache = cache.map(|c| format!("embed_cache_path = \"{}\"\n", c.display())).unwrap_or_default();
    std::fs::write(&path, format!("workers = 2\ndata_dir = \"{}\"\n{cache}", dir.join(data).display())).unwrap();
    path
}

fn texts_embedded(call_log: &Path) -> u64 {
    std::fs::read_to_string(call_log).unwrap_or_default().lines().map(|l| l.trim().parse::<u64>().unwrap()).sum()
}

#[test]
fn a_rebuild_from_scratch_embeds_nothing_with_the_persistent_cache() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(99, 25, 300, true);
    write_events(&input, &history);
    let call_log = dir.path().join("calls.log");
    let dataflow = write_dataflow(
        &dir.path().join("cache.dataflow.toml"),
        &format!("kind = \"file\"\npath = \"{}\"", input.display()),
        &format!("call_log = \"{}\"", call_log.display()),
    );
    let cache = dir.path().join("shared/embeddings.redb");

    let first = run_until_end(&dataflow, &config(dir.path(), "a", Some(&cache)), &[]);
    let embedded = first["chunks_embedded"].as_u64().unwrap();
    assert!(embedded > 50, "{first}");
    assert_eq!(texts_embedded(&call_log), embedded);
    let live = export(&dataflow, &config(dir.path(), "a", Some(&cache)), true);

    // Restart: nothing new.
    let again = run_until_end(&dataflow, &config(dir.path(), "a", Some(&cache)), &[]);
    assert_eq!(again["chunks_embedded"], 0, "{again}");

    // A new collection (fresh data directory) from the same history: every vector comes
    // from the cache, and the collection is the same.
    let rebuilt = run_until_end(&dataflow, &config(dir.path(), "b", Some(&cache)), &[]);
    assert_eq!(rebuilt["chunks_embedded"], 0, "{rebuilt}");
    assert!(rebuilt["cache_hits"].as_u64().unwrap() > 0, "{rebuilt}");
    assert_eq!(rebuilt["cache_hit_ratio"].as_f64(), Some(1.0), "{rebuilt}");
    assert_eq!(export(&dataflow, &config(dir.path(), "b", Some(&cache)), true), live);
    assert_eq!(texts_embedded(&call_log), embedded, "the embedder saw no text twice");
    eprintln!(
        "first run embedded {embedded}; rebuild: {} cache hits, ratio {}",
        rebuilt["cache_hits"], rebuilt["cache_hit_ratio"]
    );

    // The control: without the cache the same rebuild pays again.
    let uncached = run_until_end(&dataflow, &config(dir.path(), "c", None), &[]);
    assert_eq!(uncached["chunks_embedded"].as_u64().unwrap(), embedded, "{uncached}");
    assert_eq!(export(&dataflow, &config(dir.path(), "c", None), true), live);
}
