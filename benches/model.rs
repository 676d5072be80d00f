//! Local model benchmark (harness = false): texts/s and tokens/s of all-MiniLM-L6-v2 alone
//! at ~64, ~128 and ~256 tokens per text (batches of 32); the same model behind
//! `freshet embed-server` (in-process, over loopback HTTP) through the `openai` embedder at
//! batches of 8, 32 and 64 (requests/s, texts/s); then inside the pipeline (`freshet run
//! --until-end` on a generated corpus, counting the chunks embedded over the run's wall
//! time), with the model in-process and through the server (requests/s, mean batch size),
//! and the model alone on exactly the chunk texts the pipeline embedded (the fair reference
//! for the pipeline's share of the model's throughput).
//!
//! `cargo bench --profile dev --bench model -- [--texts N] [--docs N]`

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use freshet::config::{DataflowSpec, EmbedderKind, RuntimeConfig};
use freshet::embed::http::{HttpApi, HttpEmbedder, HttpOptions};
use freshet::embed::local::LocalMiniLm;
use freshet::embed::server::ServerOptions;
use freshet::embed::Embedder;
use freshet::runtime::{run, RunOptions};
use freshet::workload::{write_files, Plan};

/// The same allocator as the `freshet` binary (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: build-check only.
        eprintln!("benchmark skipped (run it with `cargo bench --profile dev`)");
        return;
    }
    let dir = std::path::Path::new("models/all-MiniLM-L6-v2");
    let model = LocalMiniLm::load(dir, 256).expect("run scripts/setup-model first");
    let n = arg("--texts", 256);
    let words = ["river", "delta", "index", "lantern", "harbor", "orbit", "garden", "engine", "signal", "copper"];
    for target in [64usize, 128, 256] {
        let texts: Vec<String> = (0..n)
            .map(|i| {
                let mut t = String::new();
                let mut k = i;
                while model.count_tokens(&t) < target {
                    t.push_str(words[k % words.len()]);
                    t.push(' ');
                    k = k.wrapping_mul(31).wrapping_add(7);
                }
                t
            })
            .collect();
        let tokens: usize = texts.iter().map(|t| model.count_tokens(t).min(256)).sum();
        let start = Instant::now();
        for chunk in texts.chunks(32) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            model.embed(&refs).expect("embed");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "model alone, ~{target} tokens: {:.1} texts/s, {:.0} tokens/s ({n} texts, batch 32)",
            n as f64 / secs,
            tokens as f64 / secs
        );
    }

    // The same model behind `freshet embed-server`, through the `openai` embedder.
    let served: Arc<dyn Embedder> = Arc::new(LocalMiniLm::load(dir, 256).expect("model"));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let opts = ServerOptions { max_batch: 256, concurrency: 1, api_key: None, max_body_bytes: 64 << 20 };
        let _ = rt.block_on(freshet::embed::server::serve(served, opts, "127.0.0.1:0".parse().expect("addr"), |a| {
            let _ = addr_tx.send(a);
        }));
    });
    let url = format!("http://{}", addr_rx.recv().expect("server address"));
    let http = HttpEmbedder::new(HttpOptions {
        api: HttpApi::OpenAi,
        url: url.clone(),
        model: freshet::embed::local::MODEL_ID.into(),
        dimension: 384,
        api_key: None,
        headers: Default::default(),
        timeout: std::time::Duration::from_secs(120),
        connect_timeout: std::time::Duration::from_secs(5),
        tokenizer: None,
    })
    .expect("http embedder");
    let texts: Vec<String> = (0..n)
        .map(|i| {
            let mut t = String::new();
            let mut k = i;
            while model.count_tokens(&t) < 64 {
                t.push_str(words[k % words.len()]);
                t.push(' ');
                k = k.wrapping_mul(31).wrapping_add(7);
            }
            t
        })
        .collect();
    for batch in [8usize, 32, 64] {
        let start = Instant::now();
        let mut requests = 0;
        for chunk in texts.chunks(batch) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            http.embed(&refs).expect("embed over HTTP");
            requests += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "embed-server over HTTP, ~64 tokens, batch {batch}: {:.1} requests/s, {:.1} texts/s ({n} texts)",
            requests as f64 / secs,
            n as f64 / secs
        );
    }

    let docs = arg("--docs", 150);
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("snapshot.jsonl");
    write_files(
        &input,
        Some(&tmp.path().join("changes.jsonl")),
        &Plan { docs, edits: 0, flips: 0, deletes: 0, seed: 3 },
    )
    .expect("workload");
    let mut spec = DataflowSpec::load(std::path::Path::new("dataflows/articles.toml")).expect("dataflow");
    spec.embedder.kind = EmbedderKind::LocalMinilm;
    spec.source.path = Some(input);
    // Through the embed server first (its own data directory), then in-process.
    let mut over_http = spec.clone();
    over_http.embedder.kind = EmbedderKind::OpenAi;
    over_http.embedder.url = Some(url);
    over_http.embedder.model = Some(freshet::embed::local::MODEL_ID.into());
    over_http.embedder.dimension = 384;
    let http_config = RuntimeConfig { workers: 1, data_dir: tmp.path().join("data-http"), ..RuntimeConfig::default() };
    let start = Instant::now();
    let t = run(RunOptions::live(over_http, http_config, true), Arc::new(AtomicBool::new(false))).expect("run");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "inside the pipeline through embed-server: {} chunks in {:.1}s = {:.1} texts/s; {} requests = {:.2} requests/s, {:.1} texts per request",
        t.chunks_embedded,
        secs,
        t.chunks_embedded as f64 / secs,
        t.embed_batches,
        t.embed_batches as f64 / secs,
        t.chunks_embedded as f64 / t.embed_batches.max(1) as f64
    );

    let config = RuntimeConfig { workers: 1, data_dir: tmp.path().join("data"), ..RuntimeConfig::default() };
    let start = Instant::now();
    let totals =
        run(RunOptions::live(spec.clone(), config.clone(), true), Arc::new(AtomicBool::new(false))).expect("run");
    let secs = start.elapsed().as_secs_f64();
    // Tokens the model saw: every indexed chunk (all were embedded once), truncated at 256.
    let (_, sink) = freshet::runtime::open_collection(&spec, &config, &spec.sink.collection).expect("open");
    let mut tokens = 0usize;
    let mut chunk_texts: Vec<String> = Vec::new();
    sink.scroll(false, 1024, &mut |page| {
        for p in page {
            let text = p.payload.get("text").and_then(|t| t.as_str()).unwrap_or("");
            tokens += model.count_tokens(text).min(256);
            chunk_texts.push(text.to_owned());
        }
    })
    .expect("scroll");
    let pipeline_rate = totals.chunks_embedded as f64 / secs;
    println!(
        "inside the pipeline: {} chunks ({} tokens, {:.0} per chunk) in {:.1}s = {:.1} texts/s, {:.0} tokens/s ({} batches, {} documents, whole run incl. start-up)",
        totals.chunks_embedded, tokens, tokens as f64 / totals.chunks_embedded.max(1) as f64, secs,
        pipeline_rate, tokens as f64 / secs, totals.embed_batches, docs
    );
    // The fair reference: the model alone on exactly these chunk texts, in batches of the
    // pipeline's size (64), in the order the collection returns them.
    let start = Instant::now();
    for batch in chunk_texts.chunks(64) {
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        model.embed(&refs).expect("embed");
    }
    let alone = chunk_texts.len() as f64 / start.elapsed().as_secs_f64();
    println!(
        "model alone on the same {} chunk texts, batches of 64: {alone:.1} texts/s; the pipeline reaches {:.0}% of it",
        chunk_texts.len(),
        100.0 * pipeline_rate / alone
    );
}
