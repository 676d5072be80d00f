//! Freshness under load (harness = false): commit→searchable as freshet itself measures it,
//! at the reference load, on a collection large enough for index builds to matter.
//!
//! 1. Generate `--docs` articles (3–6 paragraphs, ~2 KB; 45,000 give ~200,000 points) and
//!    index them with `freshet run --until-end` (hash embedder, 384 dimensions, embedded
//!    engine).
//! 2. Start `freshet run` following an input file, and append one-paragraph edits with
//!    their commit time set to the moment they are appended (`source.ts_ms` = now):
//!    `--steady-rate` changes/s for `--steady-s`, a pause of `--pause-s` (the background
//!    optimiser starts an HNSW build when the pipeline is idle for 2 s), then
//!    `--burst-rate` changes/s for `--burst-s`, then wait until everything is searchable.
//! 3. Read freshet's own percentiles (`/status?window_s=`) for each phase, how often an
//!    index build was running, where the time of a change goes (each stage's frontier lag
//!    sampled every 250 ms, the sink write and embedding latencies from `/metrics`), and the
//!    time the burst took to drain.
//! 4. Stop with SIGTERM while an index build runs and time the exit; start again and time
//!    the recovery.
//!
//! `cargo bench --profile dev --bench freshness -- [--docs N] [--steady-rate R] [--steady-s S]
//! [--pause-s P] [--burst-rate R] [--burst-s S] [--workers W] [--idle]`; `--idle` measures the
//! same load with no index build running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn freshet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
}

/// GET `path` from freshet's HTTP endpoint.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn status(port: u16, window_s: u64) -> Option<Value> {
    serde_json::from_str(&get(port, &format!("/status?window_s={window_s}"))?).ok()
}

/// The sum and count of a histogram in `/metrics`.
fn histogram(port: u16, name: &str) -> (f64, f64) {
    let text = get(port, "/metrics").unwrap_or_default();
    let find = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix} ")))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (find("sum"), find("count"))
}

/// Samples of `/status` every 250 ms: whether a build ran, and each stage's lag.
#[derive(Default)]
struct Samples {
    n: u64,
    building: u64,
    stage_lag_ms: std::collections::BTreeMap<String, (f64, u64)>,
}

fn sampler(port: u16, stop: Arc<AtomicBool>, out: Arc<Mutex<Samples>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(s) = status(port, 60) {
                let now = s["now_ms"].as_u64().unwrap_or(0) as f64;
                let mut o = out.lock().unwrap();
                o.n += 1;
                if s["index_build_running"].as_bool() == Some(true) {
                    o.building += 1;
                }
                if let Some(f) = s["frontiers_ms"].as_object() {
                    for (stage, v) in f {
                        if let Some(t) = v.as_f64() {
                            let e = o.stage_lag_ms.entry(stage.clone()).or_default();
                            e.0 += (now - t).max(0.0);
                            e.1 += 1;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

/// Append `changes` at `rate` per second for `secs`, each with its commit time set to now.
fn append(file: &Path, changes: &mut impl Iterator<Item = String>, rate: usize, secs: usize) -> usize {
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    let start = Instant::now();
    let total = rate * secs;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Some(line) = changes.next() else { return i };
        let mut v: Value = serde_json::from_str(&line).unwrap();
        let t = now_ms();
        v["source"]["ts_ms"] = t.into();
        v["ts_ms"] = t.into();
        writeln!(f, "{v}").unwrap();
        f.flush().unwrap();
    }
    total
}

fn wait_until_caught_up(port: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    // The frontier must have moved past the last append and stayed caught up briefly.
    std::thread::sleep(Duration::from_millis(100));
    while start.elapsed() < limit {
        if let Some(s) = status(port, 60) {
            if s["pending"].as_bool() == Some(false) && s["lag_s"].as_f64() == Some(0.0) {
                return start.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not caught up within {limit:?}");
}

fn pct(p: &Value, k: &str) -> String {
    p[k].as_f64().map_or("-".into(), |v| format!("{:.0} ms", v * 1000.0))
}

/// `freshet run --until-end` over `input` (hash embedder), its log at `info`.
fn run_until_end(dataflow: &Path, config: &Path, input: &Path) -> std::process::Output {
    freshet()
        .args(["run", "--embedder", "hash", "--until-end", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(input)
        .env("RUST_LOG", "info,qdrant_edge=error")
        .output()
        .unwrap_or_else(|e| panic!("freshet run: {e}"))
}

fn spawn_follow(dataflow: &Path, config: &Path, input: &Path, log: &Path) -> Child {
    freshet()
        .args(["run", "--embedder", "hash", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(input)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let docs = arg("--docs", if smoke { 300 } else { 45_000 });
    let steady_rate = arg("--steady-rate", 20);
    let steady_s = arg("--steady-s", if smoke { 2 } else { 120 });
    // `--idle`: no index build during the load (the collection's first build is waited
    // for, and the pause between the phases is too short to start another).
    let idle = std::env::args().any(|a| a == "--idle");
    let pause_s = if idle { 0 } else { arg("--pause-s", if smoke { 1 } else { 3 }) };
    let burst_rate = arg("--burst-rate", if smoke { 50 } else { 200 });
    let burst_s = arg("--burst-s", if smoke { 2 } else { 120 });
    let workers = arg("--workers", 2);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let edits = steady_rate * steady_s + burst_rate * burst_s + 10;
    let snapshot = dir.join("snapshot.jsonl");
    let changes_file = dir.join("changes.jsonl");
    let plan = freshet::workload::Plan { docs, edits, flips: 0, deletes: 0, seed: 15 };
    freshet::workload::write_files(&snapshot, Some(&changes_file), &plan).unwrap();
    let dataflow = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/articles.toml"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:{port}\"\noptimize_interval_s = 600\n",
            dir.join("data").display()
        ),
    )
    .unwrap();

    // 1. The collection.
    let t = Instant::now();
    let out = run_until_end(&dataflow, &config, &snapshot);
    assert!(out.status.success(), "indexing the snapshot failed");
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("{}")).unwrap();
    let points = summary["points_upserted"].as_u64().unwrap_or(0);
    println!("indexed {docs} articles, {points} points, in {:.1?}", t.elapsed());

    // 2. The load.
    let live = dir.join("live.jsonl");
    std::fs::write(&live, "").unwrap();
    let log = dir.join("run.log");
    let mut child = spawn_follow(&dataflow, &config, &live, &log);
    let started = Instant::now();
    while status(port, 60).is_none() {
        assert!(started.elapsed() < Duration::from_secs(600), "freshet did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until_caught_up(port, Duration::from_secs(600));
    let restart_s = started.elapsed().as_secs_f64();
    let mut changes_iter_skip = 0;
    if idle {
        // The collection's build first (one change makes it due, 2 s without work start
        // it), so that none runs during the load: the next one would need another 2 s
        // without work, which the load never leaves.
        let t = Instant::now();
        let first = std::io::BufReader::new(std::fs::File::open(&changes_file).unwrap())
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("\"op\":\"u\""))
            .unwrap();
        append(&live, &mut std::iter::once(first), 1, 1);
        changes_iter_skip = 1;
        while status(port, 60).is_none_or(|s| s["index_build_running"].as_bool() != Some(true)) {
            assert!(t.elapsed() < Duration::from_secs(60), "no index build started");
            std::thread::sleep(Duration::from_millis(100));
        }
        while status(port, 60).is_some_and(|s| s["index_build_running"].as_bool() == Some(true)) {
            assert!(t.elapsed() < Duration::from_secs(3600), "the index build did not end within an hour");
            std::thread::sleep(Duration::from_millis(500));
        }
        println!("idle: waited {:.0} s for the index build of the collection to end", t.elapsed().as_secs_f64());
    }
    let changes: Vec<String> = std::io::BufReader::new(std::fs::File::open(&changes_file).unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("\"op\":\"u\""))
        .collect();
    let mut changes = changes.into_iter();
    for _ in 0..changes_iter_skip {
        changes.next();
    }

    let phase = |name: &str, rate: usize, secs: usize, changes: &mut std::vec::IntoIter<String>| {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let s = sampler(port, Arc::clone(&stop), Arc::clone(&samples));
        let (sink_sum0, sink_n0) = histogram(port, "freshet_sink_write_latency_seconds");
        let t = Instant::now();
        let n = append(&live, changes, rate, secs);
        let appended = t.elapsed();
        let drain = wait_until_caught_up(port, Duration::from_secs(1800));
        let window = (appended + drain).as_secs() + 1;
        stop.store(true, Ordering::Relaxed);
        s.join().unwrap();
        let st = status(port, window).unwrap();
        let (sink_sum1, sink_n1) = histogram(port, "freshet_sink_write_latency_seconds");
        let samples = samples.lock().unwrap();
        let p = &st["commit_to_searchable"];
        let stages: Vec<String> = samples
            .stage_lag_ms
            .iter()
            .map(|(k, (sum, n))| format!("{k} {:.0} ms", sum / (*n).max(1) as f64))
            .collect();
        println!(
            "| {name} | {rate}/s × {secs} s | {n} | {} | {} | {} | {} | {:.0}% | {:.1} s | {:.0} ms |",
            pct(p, "p50_s"),
            pct(p, "p95_s"),
            pct(p, "p99_s"),
            p["count"],
            100.0 * samples.building as f64 / samples.n.max(1) as f64,
            drain.as_secs_f64(),
            1000.0 * (sink_sum1 - sink_sum0) / (sink_n1 - sink_n0).max(1.0),
        );
        println!("|   stage lag (mean of 250 ms samples): {} |", stages.join(", "));
        let i = &st["ingest_to_searchable"];
        println!(
            "|   read by freshet → searchable: p50 {}, p95 {}, p99 {} |",
            pct(i, "p50_s"),
            pct(i, "p95_s"),
            pct(i, "p99_s")
        );
    };
    println!("restart over the collection: {restart_s:.1} s");
    println!(
        "| phase | load | changes | p50 | p95 | p99 | observed | index build running | drain after the last append | mean sink write |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    phase("steady", steady_rate, steady_s, &mut changes);
    std::thread::sleep(Duration::from_secs(pause_s as u64));
    phase("burst", burst_rate, burst_s, &mut changes);

    // 4. A stop during an index build, then the next start.
    let waited = Instant::now();
    let mut building = false;
    while waited.elapsed() < Duration::from_secs(if smoke { 5 } else { 120 }) {
        if status(port, 60).is_some_and(|s| s["index_build_running"].as_bool() == Some(true)) {
            building = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let code = child.wait().unwrap();
    let stop_s = t.elapsed().as_secs_f64();
    println!(
        "SIGTERM {} an index build: exited ({code}) in {stop_s:.2} s",
        if building { "during" } else { "(no build was running) outside" }
    );
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let t = Instant::now();
    let out = run_until_end(&dataflow, &config, &empty);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let recovery = stderr.lines().find(|l| l.contains("recovering from a crash")).unwrap_or("clean start");
    println!("next start: {:.1} s, exit {}; {recovery}", t.elapsed().as_secs_f64(), out.status);
    // The followed run's log, for a look at where the time went (`RUST_LOG=…,freshet::sink=debug`
    // logs each slow write with its lock wait, engine and WAL-sync time, and the builds).
    let kept = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/freshness-run.log"));
    if std::fs::copy(&log, &kept).is_ok() {
        println!("freshet's log: {}", kept.display());
    }
}
