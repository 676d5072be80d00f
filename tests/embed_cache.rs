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
    std::fs::read_to_string(call_log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
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

/// redb locks its file: a second process with the same cache (a `replay --into` beside a
/// running pipeline) runs without the disk cache instead of failing.
#[test]
fn a_cache_held_by_another_process_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(5, 6, 40, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let cache = dir.path().join("embeddings.redb");
    let mut holder = spawn_run(&dataflow, &config(dir.path(), "a", Some(&cache)), false);
    // Wait until the first process has opened (and so locked) the cache.
    let start = std::time::Instant::now();
    while !cache.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the first run never opened its cache");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(config(dir.path(), "b", Some(&cache)))
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("persistent embedding cache unavailable"), "{err}");
}

/// Kafka: after a run, `replay --from-beginning --into` a new collection embeds nothing with
/// the persistent cache (every vector a cache hit), and builds the same collection.
#[test]
fn a_kafka_replay_into_a_new_collection_embeds_nothing_with_the_cache() {
    use support::kafka::{create_topic, kafka_config, kafka_dataflow, produce, Broker};
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = &broker.topic("articles");
    create_topic(&broker.bootstrap, topic, 2);
    let history = random_history(17, 30, 400, false);
    produce(&broker.bootstrap, topic, 2, &history);
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let cache = dir.path().join("embeddings.redb");
    let extra = format!("embed_cache_path = \"{}\"\n", cache.display());
    let config = kafka_config(dir.path(), "cached", 2, &broker.bootstrap, &broker.group("freshet-cache"), &extra);
    let first = run_until_end(&dataflow, &config, &[]);
    assert!(first["chunks_embedded"].as_u64().unwrap() > 50, "{first}");
    let replay = freshet()
        .args(["replay", "--no-progress", "--from-beginning", "--into", "articles_rebuilt", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&replay.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["received"].as_u64().unwrap() as usize, history.len(), "{summary}");
    assert_eq!(summary["chunks_embedded"], 0, "{summary}");
    assert_eq!(summary["cache_hit_ratio"].as_f64(), Some(1.0), "{summary}");
    let exported = |collection: &str| {
        let out = freshet()
            .args(["export", "--with-vectors", "--collection", collection, "--dataflow"])
            .arg(&dataflow)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(exported("articles_rebuilt"), exported("articles"));
}
