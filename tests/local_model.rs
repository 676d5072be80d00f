//! Integration tests for the `local-minilm` embedder against the real all-MiniLM-L6-v2
//! weights. Needs `scripts/setup-model` (or `FRESHET_MODEL_DIR`); fails loudly without them.
//! Throughput is measured by `benches/model.rs`, not here.

use std::path::PathBuf;
use std::sync::OnceLock;

use freshet::embed::local::LocalMiniLm;
use freshet::embed::Embedder;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("FRESHET_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model at {}: run scripts/setup-model (or set FRESHET_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// One model for all tests in this binary (loading takes a moment).
fn model() -> &'static LocalMiniLm {
    static MODEL: OnceLock<LocalMiniLm> = OnceLock::new();
    MODEL.get_or_init(|| LocalMiniLm::load(&model_dir(), 256).expect("load model"))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Deterministic filler prose of `words` words.
fn words(words: usize, seed: usize) -> String {
    const VOCAB: &[&str] = &[
        "stream",
        "table",
        "change",
        "vector",
        "index",
        "replica",
        "offset",
        "commit",
        "the",
        "a",
        "of",
        "keeps",
        "exactly",
        "fresh",
        "document",
        "chunk",
        "embedding",
        "query",
        "latency",
        "throughput",
        "partition",
        "snapshot",
        "river",
        "mountain",
        "lovely",
    ];
    (0..words).map(|i| VOCAB[(i * 7 + seed * 13 + i / 5) % VOCAB.len()]).collect::<Vec<_>>().join(" ")
}

#[test]
fn metadata() {
    let m = model();
    assert_eq!(m.model_id(), "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(m.dimension(), 384);
    assert_eq!(m.max_tokens(), 256);
    // [CLS] hello world [SEP]
    assert_eq!(m.count_tokens("Hello world"), 4);
    assert_eq!(m.embed(&[]).expect("empty batch"), Vec::<Vec<f32>>::new());
}

/// The model card's sentence-transformers quick-start similarities.
#[test]
fn reproduces_the_published_quick_start() {
    let sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."];
    let v = model().embed(&sentences).expect("embed");
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), 384);
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    for (i, j, expected) in [(0, 1, 0.6660_f32), (0, 2, 0.1046), (1, 2, 0.1411)] {
        let got = cosine(&v[i], &v[j]);
        println!("similarity {i} vs {j}: {got:.5} (published {expected})");
        assert!((got - expected).abs() < 0.0005, "similarity {i} vs {j}: got {got:.4}, expected {expected}");
    }
}

/// Padding must not leak into the vector: alone, or padded inside a batch of longer texts
/// (and spread over several sub-batches), a text embeds the same.
#[test]
fn embedding_is_batch_invariant() {
    let m = model();
    let short = "The weather is lovely today.";
    let alone = m.embed(&[short]).expect("alone").remove(0);

    let long1 = words(120, 1);
    let long2 = words(300, 2);
    let batch = m.embed(&[long1.as_str(), short, long2.as_str()]).expect("batch");
    assert!(max_abs_diff(&alone, &batch[1]) < 1e-5, "diff {}", max_abs_diff(&alone, &batch[1]));

    // Many texts: several sub-batches, results still in input order.
    let many: Vec<String> = (0..150).map(|i| words(5 + (i * 37) % 200, i)).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let together = m.embed(&refs).expect("many");
    assert_eq!(together.len(), many.len());
    for i in [0, 1, 17, 64, 99, 149] {
        let single = m.embed(&[refs[i]]).expect("single").remove(0);
        let d = max_abs_diff(&single, &together[i]);
        assert!(d < 1e-5, "text {i}: diff {d}");
    }
}

#[test]
fn long_texts_are_truncated_not_rejected() {
    let m = model();
    let text = words(2000, 3);
    let tokens = m.count_tokens(&text);
    assert!(tokens > 256, "count_tokens {tokens} should count past the truncation");
    let v = m.embed(&[text.as_str()]).expect("embed long text");
    assert_eq!(v[0].len(), 384);
    // Truncation at 256: anything past the first 256 tokens does not change the vector.
    let other_tail = format!("{} {}", words(600, 3), words(1400, 9));
    let w = m.embed(&[other_tail.as_str()]).expect("embed other tail");
    assert!(max_abs_diff(&v[0], &w[0]) < 1e-5);
}
