//! End-to-end pipeline benchmark (harness = false). Generates the workload with freshet's
//! own corpus generator — by default 100k documents of 3–6 paragraphs, then 100k
//! one-paragraph edits, 10k metadata flips and 5k deletes — runs `freshet run --until-end`
//! in-process with the `hash` embedder into the embedded engine, and reports events/s per
//! phase, peak resident memory, and the per-document state's memory per indexed chunk
//! (measured with a counting allocator around the state alone).
//!
//! `cargo bench --profile dev --bench pipeline -- [--docs N] [--edits N] [--flips N] [--deletes N] [--workers W]
//! [--state-only] [--skip-hnsw]`

// The counting allocator below is the only unsafe code in the repository (bench only).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use freshet::config::{DataflowSpec, EmbedderKind, RuntimeConfig};
use freshet::dataflow::operators::doc_state::process_time;
use freshet::dataflow::state::DocShape;
use freshet::dataflow::Routed;
use freshet::source::decode::DecodeSpec;
use freshet::workload::{write_files, Plan};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

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
    let plan = Plan {
        docs: arg("--docs", 100_000),
        edits: arg("--edits", 100_000),
        flips: arg("--flips", 10_000),
        deletes: arg("--deletes", 5_000),
        seed: 11,
    };
    let workers = arg("--workers", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("snapshot.jsonl");
    let changes = dir.path().join("changes.jsonl");
    let t = Instant::now();
    write_files(&snap, Some(&changes), &plan).expect("workload");
    eprintln!("workload generated in {:.1}s", t.elapsed().as_secs_f64());

    let mut spec = DataflowSpec::load(std::path::Path::new("dataflows/articles.toml")).expect("dataflow");
    spec.embedder.kind = EmbedderKind::Hash;
    spec.embedder.dimension = 384;

    // 1. State memory per indexed chunk (the per-document state alone).
    let shape = DocShape::new(&spec);
    let decode = DecodeSpec {
        id_fields: spec.document.id.clone(),
        version_field: spec.document.version.clone(),
        table: None,
        max_record_bytes: 1 << 22,
        tables: Vec::new(),
    };
    let lines = std::fs::read(&snap).expect("read");
    let mut routed = Vec::new();
    for (i, l) in lines.split(|b| *b == b'\n').enumerate() {
        if !l.is_empty() {
            freshet::source::file::ingest_line(
                l,
                i as u64 + 1,
                None,
                freshet::config::SourceFormat::DebeziumJson,
                &decode,
                1,
                &mut routed,
            );
        }
    }
    let routed: Vec<Routed> = routed;
    let mut docs = BTreeMap::new();
    let mut trunc = None;
    let out = process_time(&shape, &mut docs, &mut trunc, routed);
    drop(out);
    // The state's size: what is freed when it is dropped.
    let chunks: usize = docs.values().map(|s| s.chunks.len()).sum();
    let n_docs = docs.len();
    let with_state = LIVE.load(Ordering::Relaxed);
    drop(docs);
    let state_bytes = with_state - LIVE.load(Ordering::Relaxed);
    println!(
        "state: {} documents, {} chunks, {} bytes of state = {:.1} bytes per indexed chunk",
        n_docs,
        chunks,
        state_bytes,
        state_bytes as f64 / chunks.max(1) as f64
    );
    if std::env::args().any(|a| a == "--state-only") {
        return;
    }

    // 2. End to end: `freshet run --until-end --embedder hash` as a child process, so that its
    // peak resident memory is the pipeline's own (polled from /proc while it runs). The
    // background HNSW build is measured separately below, so that it does not share the two
    // cores with the pipeline being measured.
    let data_dir = dir.path().join("data");
    let config_path = dir.path().join("bench.toml");
    std::fs::write(
        &config_path,
        format!("workers = {workers}\ndata_dir = \"{}\"\noptimize_interval_s = 1000000\n", data_dir.display()),
    )
    .expect("config");
    for (phase, input) in [("snapshot", &snap), ("changes", &changes)] {
        let t = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
            .args(["run", "--until-end", "--embedder", "hash", "--dataflow", "dataflows/articles.toml", "--config"])
            .arg(&config_path)
            .arg("--input")
            .arg(input)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn freshet");
        let status_path = format!("/proc/{}/status", child.id());
        let mut peak_kb = 0u64;
        while child.try_wait().expect("wait").is_none() {
            if let Ok(st) = std::fs::read_to_string(&status_path) {
                if let Some(kb) =
                    st.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                {
                    peak_kb = peak_kb.max(kb);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let secs = t.elapsed().as_secs_f64();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out).expect("read");
        let totals: serde_json::Value = serde_json::from_str(out.lines().last().expect("summary")).expect("json");
        let received = totals["received"].as_f64().unwrap_or(0.0);
        println!(
            "{phase}: {received} events in {secs:.1}s = {:.0} events/s ({workers} workers, whole process incl. start-up); \
             chunks embedded {}, points upserted {}, payload updates {}, deleted {}; peak RSS {} MiB",
            received / secs,
            totals["chunks_embedded"], totals["points_upserted"], totals["points_payload_updated"], totals["points_deleted"],
            peak_kb / 1024
        );
    }
    if std::env::args().any(|a| a == "--skip-hnsw") {
        return;
    }
    let config = RuntimeConfig { data_dir, ..RuntimeConfig::default() };
    let (_, sink) = freshet::runtime::open_collection(&spec, &config, &spec.sink.collection).expect("open");
    let t = Instant::now();
    sink.optimize().expect("optimize");
    println!(
        "HNSW build of the final collection ({} points, 384 dims, 2 cores): {:.1}s",
        sink.count().unwrap_or(0),
        t.elapsed().as_secs_f64(),
    );
}
