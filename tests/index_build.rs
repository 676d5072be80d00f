//! A stop during a background index build (issue 15): the HNSW build of a large collection
//! takes longer than the grace period of systemd or Kubernetes, so `freshet run` must not
//! wait for it at SIGTERM. The stop leaves every write durable; the next start recovers
//! what the build could have left behind and the collection equals an uninterrupted run's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn config(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!("workers = 2\ndata_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:{port}\"\n", dir.join("data").display()),
    )
    .unwrap();
    path
}

fn status(port: u16) -> Option<Value> {
    let (code, body) = http_get(port, "/status", None)?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

fn run_args(dataflow: &Path, config: &Path, input: &Path) -> Vec<std::ffi::OsString> {
    ["run", "--embedder", "hash", "--dataflow"]
        .iter()
        .map(Into::into)
        .chain([dataflow.as_os_str().to_owned(), "--config".into(), config.as_os_str().to_owned()])
        .chain(["--input".into(), input.as_os_str().to_owned()])
        .collect()
}

#[test]
fn sigterm_during_an_index_build_exits_within_10_s_and_the_next_start_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("articles.jsonl");
    // ~35,000 points of 384 dimensions: an HNSW build of several seconds on two cores.
    let plan = freshet::workload::Plan { docs: 7_000, edits: 500, flips: 200, deletes: 50, seed: 15 };
    freshet::workload::write_files(&input, None, &plan).unwrap();
    let dataflow = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/articles.toml"));

    // The uninterrupted reference.
    let clean_dir = dir.path().join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let clean_config = config(&clean_dir, free_port());
    let out = freshet().args(run_args(dataflow, &clean_config, &input)).arg("--until-end").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = export(dataflow, &clean_config, true);

    let port = free_port();
    let config = config(dir.path(), port);
    let log = dir.path().join("run.log");
    let mut child = freshet()
        .args(run_args(dataflow, &config, &input))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Everything indexed, then the optimiser starts its build once the pipeline is idle.
    let started = Instant::now();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&log).unwrap());
        assert!(started.elapsed() < Duration::from_secs(600), "no index build started");
        if status(port).is_some_and(|s| s["index_build_running"] == true && s["pending"] == false) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(port).unwrap()["index_build_running"], true, "the build ended too soon to test a stop in it");
    let t = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let code = child.wait().unwrap();
    let stopped = t.elapsed();
    let stderr = std::fs::read_to_string(&log).unwrap();
    eprintln!("SIGTERM during the build: exit {code} after {stopped:?}");
    assert!(code.success(), "{stderr}");
    assert!(stopped < Duration::from_secs(10), "the stop took {stopped:?}");
    assert!(stderr.contains("stopping during a background index build"), "{stderr}");

    // The next start recovers and the collection is the uninterrupted run's.
    let t = Instant::now();
    let out = freshet().args(run_args(dataflow, &config, &input)).arg("--until-end").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("next start and catch-up: {:?}", t.elapsed());
    assert!(stderr.contains("recovering from a crash"), "the stop left the build to the next start: {stderr}");
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["chunks_embedded"], 0, "nothing re-embedded: {summary}");
    assert_eq!(export(dataflow, &config, true), reference);
    let verify = freshet()
        .args(["reconcile", "--verify", "--embedder", "hash", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
