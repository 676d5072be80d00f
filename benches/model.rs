//! Local model benchmark (harness = false): texts/s and tokens/s of all-MiniLM-L6-v2 alone
//! at ~64, ~128 and ~256 tokens per text (batches of 32), then inside the pipeline
//! (`freshet run --until-end` with `local-minilm` on a generated corpus, counting the chunks
//! embedded over the run's wall time).
//!
//! `cargo bench --profile dev --bench model -- [--texts N] [--docs N]`

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use freshet::config::{DataflowSpec, EmbedderKind, RuntimeConfig};
use freshet::embed::local::LocalMiniLm;
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
    let config = RuntimeConfig { workers: 1, data_dir: tmp.path().join("data"), ..RuntimeConfig::default() };
    let start = Instant::now();
    let totals =
        run(RunOptions::live(spec.clone(), config.clone(), true), Arc::new(AtomicBool::new(false))).expect("run");
    let secs = start.elapsed().as_secs_f64();
    // Tokens the model saw: every indexed chunk (all were embedded once), truncated at 256.
    let (_, sink) = freshet::runtime::open_collection(&spec, &config, &spec.sink.collection).expect("open");
    let mut tokens = 0usize;
    sink.scroll(false, 1024, &mut |page| {
        for p in page {
            tokens += model.count_tokens(p.payload.get("text").and_then(|t| t.as_str()).unwrap_or("")).min(256);
        }
    })
    .expect("scroll");
    println!(
        "inside the pipeline: {} chunks ({} tokens, {:.0} per chunk) in {:.1}s = {:.1} texts/s, {:.0} tokens/s ({} batches, {} documents, whole run incl. start-up)",
        totals.chunks_embedded, tokens, tokens as f64 / totals.chunks_embedded.max(1) as f64, secs,
        totals.chunks_embedded as f64 / secs, tokens as f64 / secs, totals.embed_batches, docs
    );
}
