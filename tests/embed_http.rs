//! The HTTP embedders against `freshet embed-server` running the real all-MiniLM-L6-v2
//! model: each API (OpenAI-compatible, TEI, Ollama) returns the in-process model's vectors
//! to 1e-5; a pipeline through the server builds the same collection as one with the model
//! in-process; a server that takes fewer inputs per request (413) only makes batches
//! split; a wrong model, dimension or key stops the run at start with the server's answer.
//! Needs `scripts/setup-model`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use freshet::embed::http::{HttpApi, HttpEmbedder, HttpOptions};
use freshet::embed::local::{LocalMiniLm, MODEL_ID};
use freshet::embed::Embedder;
use support::*;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("FRESHET_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(dir.join("model.safetensors").is_file(), "no model at {}: run scripts/setup-model", dir.display());
    dir
}

/// A running `freshet embed-server`.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn embed_server(extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut child = freshet()
        .args(["embed-server", "--listen", "127.0.0.1:0", "--model-dir"])
        .arg(model_dir())
        .args(extra)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("embed-server said {line:?}"));
    Server { url: format!("http://{addr}"), child }
}

fn options(api: HttpApi, url: &str) -> HttpOptions {
    HttpOptions {
        api,
        url: url.to_string(),
        model: MODEL_ID.to_string(),
        dimension: 384,
        api_key: None,
        headers: Default::default(),
        timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        tokenizer: None,
    }
}

/// Real text of many shapes: prose, other scripts, code, a table row, a single word, and a
/// text far past the model's 256 tokens (truncated the same way on both sides).
fn texts() -> Vec<String> {
    let long =
        "The river delta shifts its channels every spring, and the harbor pilots redraw their charts. ".repeat(40);
    vec![
        "Debezium streams row-level changes from the Postgres write-ahead log into Kafka topics.".into(),
        "Die Indexaktualisierung muss nach jedem Commit innerhalb von Sekunden sichtbar sein.".into(),
        "東京の天気は晴れ、気温は二十度です。".into(),
        "fn main() { println!(\"{}\", 2 + 2); } // prints 4".into(),
        "| id | title | status |\n|----|-------|--------|\n| 7 | Harbor | published |".into(),
        "lantern".into(),
        "🚀 launch at 09:00 UTC — ✅ confirmed".into(),
        long,
    ]
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn every_http_api_returns_the_in_process_models_vectors() {
    let server = embed_server(&[], &[]);
    let local = LocalMiniLm::load(&model_dir(), 256).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = local.embed(&refs).unwrap();
    for api in [HttpApi::OpenAi, HttpApi::Tei, HttpApi::Ollama] {
        let http = HttpEmbedder::new(options(api, &server.url)).unwrap();
        let got = http.embed(&refs).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-5, "{api:?}: vectors differ by {diff}");
        // One text at a time gives the same vectors (no batch effects across the wire).
        let single = http.embed(&refs[..1]).unwrap();
        assert!(max_abs_diff(&single, &want[..1]) <= 1e-5, "{api:?}: a single text differs");
        assert_eq!(http.model_id(), MODEL_ID);
        assert_eq!(http.dimension(), 384);
    }
}

#[test]
fn server_answers_errors_as_the_apis_do() {
    let server = embed_server(&["--max-batch", "4", "--api-key-env", "EMBED_KEY"], &[("EMBED_KEY", "k-123")]);
    let keyed = |api| HttpOptions { api_key: Some("k-123".into()), ..options(api, &server.url) };
    let five = ["a", "b", "c", "d", "e"];
    for api in [HttpApi::OpenAi, HttpApi::Tei, HttpApi::Ollama] {
        // No key: 401, permanent.
        let e = HttpEmbedder::new(options(api, &server.url)).unwrap().embed(&["x"]).unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("401"), "{api:?}: {e}");
        // Too many inputs: 413, permanent (the embedding service splits the batch).
        let e = HttpEmbedder::new(keyed(api)).unwrap().embed(&five).unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("413"), "{api:?}: {e}");
        assert_eq!(HttpEmbedder::new(keyed(api)).unwrap().embed(&five[..4]).unwrap().len(), 4);
        // A wrong dimension is caught on the response.
        let e = HttpEmbedder::new(HttpOptions { dimension: 768, ..keyed(api) }).unwrap().embed(&["x"]).unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("dimension 384"), "{api:?}: {e}");
    }
    for api in [HttpApi::OpenAi, HttpApi::Ollama] {
        let e = HttpEmbedder::new(HttpOptions { model: "text-embedding-3-small".into(), ..keyed(api) })
            .unwrap()
            .embed(&["x"])
            .unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("404"), "{api:?}: {e}");
    }
    // Nobody listening: transient (retried, the lag shows it).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = HttpEmbedder::new(options(HttpApi::OpenAi, &format!("http://127.0.0.1:{port}")))
        .unwrap()
        .embed(&["x"])
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
}

/// A test dataflow embedding with `kind` at `url` (or the local model when `url` is None).
fn dataflow(dir: &Path, input: &Path, kind: &str, url: Option<&str>, extra: &str) -> PathBuf {
    let path = test_dataflow(dir, input);
    let embedder = match url {
        Some(u) => format!("kind = \"{kind}\"\nurl = \"{u}\"\nmodel = \"{MODEL_ID}\"\ndimension = 384\n{extra}"),
        None => format!("kind = \"local-minilm\"\nmodel_dir = \"{}\"\n{extra}", model_dir().display()),
    };
    let text = std::fs::read_to_string(&path).unwrap().replace("kind = \"hash\"\ndimension = 16\n", &embedder);
    let out = dir.join(format!("{kind}.dataflow.toml"));
    std::fs::write(&out, text).unwrap();
    out
}

#[test]
fn a_pipeline_through_the_server_builds_the_in_process_collection() {
    // The server takes at most 8 inputs per request; the pipeline sends up to 64: every
    // batch is answered 413 and split until it fits, and nothing is lost.
    let server = embed_server(&["--max-batch", "8"], &[]);
    let history = random_history(8, 12, 120, false);
    let run = |kind: &str, url: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        write_events(&input, &history);
        let df = dataflow(dir.path(), &input, kind, url, "max_batch_texts = 64\n");
        let config = test_config(dir.path(), 2);
        let summary = run_until_end(&df, &config, &[]);
        (export(&df, &config, true), summary, dir)
    };
    let (want, local_summary, _d1) = run("local-minilm", None);
    for kind in ["openai", "tei", "ollama"] {
        let (got, summary, _d2) = run(kind, Some(&server.url));
        assert_eq!(summary["dead_lettered"], local_summary["dead_lettered"], "{kind}: {summary}");
        assert_eq!(summary["chunks_embedded"], local_summary["chunks_embedded"], "{kind}: {summary}");
        let expected: Vec<serde_json::Value> = want.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_export_matches(&got, &expected);
    }
}

#[test]
fn a_wrong_model_dimension_or_key_stops_the_run_with_the_servers_answer() {
    let server = embed_server(&["--api-key-env", "EMBED_KEY"], &[("EMBED_KEY", "k-9")]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(1, 3, 10, false));
    let config = test_config(dir.path(), 1);
    let fails = |df: &Path, envs: &[(&str, &str)], want: &str| {
        let out = freshet()
            .args(["run", "--until-end", "--dataflow"])
            .arg(df)
            .arg("--config")
            .arg(&config)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "expected {want:?} in:\n{err}");
    };
    let keyed = "api_key_env = \"MY_EMBED_KEY\"\n";
    fails(&dataflow(dir.path(), &input, "openai", Some(&server.url), ""), &[], "401");
    fails(&dataflow(dir.path(), &input, "openai", Some(&server.url), keyed), &[], "MY_EMBED_KEY");
    let wrong_dim = dataflow(dir.path(), &input, "tei", Some(&server.url), keyed).to_string_lossy().to_string();
    let text = std::fs::read_to_string(&wrong_dim).unwrap().replace("dimension = 384", "dimension = 768");
    std::fs::write(&wrong_dim, text).unwrap();
    fails(Path::new(&wrong_dim), &[("MY_EMBED_KEY", "k-9")], "dimension 384");
    let ok = dataflow(dir.path(), &input, "ollama", Some(&server.url), keyed);
    let out = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(&ok)
        .arg("--config")
        .arg(&config)
        .env("MY_EMBED_KEY", "k-9")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Through a proxy that misbehaves like real providers — a 503 storm, 429s with and
/// without `Retry-After`, a response slower than the timeout, a dropped connection, a rate
/// limit, 413 above 24 inputs, and a content filter rejecting one text — the collection
/// equals the in-process model's except the rejected chunk, which is in the dead-letter
/// file with the status; while throttled, batches stay at or above `min_batch_texts`.
#[test]
fn provider_faults_lose_nothing_and_keep_batches_full() {
    use support::faults::{Fault, FaultProxy, Plan};
    let server = embed_server(&[], &[]);
    let mut history = random_history(21, 14, 140, false);
    // One document's final text holds a paragraph the provider always refuses.
    let poisoned = {
        let mut last_of: std::collections::BTreeMap<u64, usize> = Default::default();
        for (i, e) in history.iter().enumerate() {
            match e {
                Ev::Upsert { row, .. } => {
                    last_of.insert(row.id, i);
                }
                Ev::Delete { id, .. } => {
                    last_of.insert(*id, i);
                }
                _ => {}
            }
        }
        let (&doc, &i) = last_of
            .iter()
            .find(|(_, &i)| matches!(&history[i], Ev::Upsert { toast_body: false, .. }))
            .expect("a document whose last event is a full upsert");
        if let Ev::Upsert { row, .. } = &mut history[i] {
            row.body.push_str("\n\nPOISON-PILL: this paragraph is refused by the provider's content filter.");
        }
        doc
    };
    let proxy = FaultProxy::start(
        &server.url,
        Plan {
            script: vec![
                Fault::Unavailable,
                Fault::Unavailable,
                Fault::Unavailable,
                Fault::Throttle(vec![]),
                Fault::Throttle(vec![("retry-after", "1".into())]),
                Fault::Throttle(vec![("retry-after-ms", "300".into())]),
                Fault::Slow(Duration::from_secs(4)),
                Fault::Drop,
                Fault::Unavailable,
            ],
            max_inputs: Some(24),
            poison: Some("POISON-PILL".into()),
            rate_per_s: Some(4),
            rate_retry_after_ms: 250,
        },
    );
    let run = |url: Option<&str>, kind: &str| {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        write_events(&input, &history);
        let extra = "max_batch_texts = 32\nmin_batch_texts = 8\nconcurrency = 2\ntimeout_ms = 2000\n";
        let df = dataflow(dir.path(), &input, kind, url, extra);
        let config = test_config(dir.path(), 2);
        let summary = run_until_end(&df, &config, &[]);
        let dead = std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap_or_default();
        (export(&df, &config, true), summary, dead, dir)
    };
    let (want, local_summary, _, _d1) = run(None, "local-minilm");
    let (got, summary, dead, _d2) = run(Some(&proxy.url), "openai");

    // The collection: everything but the refused chunk (no stale point where it was).
    let expected: Vec<serde_json::Value> = want
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|p| !p["payload"]["text"].as_str().unwrap_or_default().contains("POISON-PILL"))
        .collect();
    assert!(want.lines().count() == expected.len() + 1, "exactly one chunk holds the poison");
    assert_export_matches(&got, &expected);
    // The dead letter names the chunk and the provider's answer.
    let letters: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let refused: Vec<&serde_json::Value> = letters.iter().filter(|d| d["reason"] == "embedding_rejected").collect();
    assert_eq!(refused.len(), 1, "{dead}");
    assert_eq!(refused[0]["doc_id"], poisoned.to_string().as_str());
    let error = refused[0]["error"].as_str().unwrap();
    assert!(error.contains("400") && error.contains("content filter"), "{error}");
    assert!(refused[0]["record_excerpt"].as_str().unwrap().contains("POISON-PILL"));
    // (Records the document stage refuses are the same in both runs.)
    assert_eq!(summary["dead_lettered"], local_summary["dead_lettered"], "{summary}");

    // Every fault was met, and throttling never shrank a batch below the floor.
    let seen = proxy.seen();
    let count = |s: u16| seen.iter().filter(|x| x.status == s).count();
    assert!(count(503) >= 4 && count(429) >= 3 && count(413) >= 1 && count(0) >= 2, "{seen:?}");
    // Throttled, the service keeps sending batches: the typical (median) request answered
    // after the first 429 carries at least `min_batch_texts` texts.
    let first_429 = seen.iter().position(|x| x.status == 429).unwrap();
    let mut sizes: Vec<usize> = seen[first_429..].iter().filter(|x| x.status == 200).map(|x| x.inputs).collect();
    sizes.sort_unstable();
    let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
    eprintln!("{} requests, {} answered 200; sizes after the first 429: {sizes:?}", seen.len(), count(200));
    assert!(median >= 8, "batches after throttling: {sizes:?}");
}
