//! A followed input: `freshet run` without `--until-end` keeps following the file, serves
//! Prometheus metrics while running, reports a frontier lag of about 0 once idle, indexes
//! lines appended later, and stops cleanly on SIGTERM with the summary on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn followed_input_serves_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(3, 30, 200, false);
    write_events(&input, &history[..100]);
    let dataflow = test_dataflow(dir.path(), &input);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 2\ndata_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = spawn_run(&dataflow, &config, true);

    let wait_for = |pred: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        loop {
            if let Some(m) = get_metrics(port) {
                if pred(&m) {
                    return m;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "metrics never satisfied the condition");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let m = wait_for(&|m| metric(m, "freshet_events_received_total") == Some(100.0));
    assert!(m.contains("HTTP/1.1 200") || m.contains("HTTP/1.0 200"), "{m}");
    // Idle: the sink frontier follows the source, lag reads about 0.
    std::thread::sleep(Duration::from_millis(1500));
    let m = get_metrics(port).unwrap();
    let lag = metric(&m, "freshet_frontier_lag_seconds").unwrap();
    assert!(lag < 1.0, "lag while idle: {lag}");

    // Lines appended later are picked up.
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    for e in &history[100..] {
        writeln!(f, "{}", e.to_json()).unwrap();
    }
    drop(f);
    wait_for(&|m| metric(m, "freshet_events_received_total") == Some(history.len() as f64));
    // The differential count of the state's size equals what the index must hold.
    let expected = oracle(&freshet::config::DataflowSpec::load(&dataflow).unwrap(), &history, "freshet/hash-16", 16);
    let docs: std::collections::BTreeSet<&str> =
        expected.export.iter().map(|p| p["payload"]["doc_id"].as_str().unwrap()).collect();
    wait_for(&|m| {
        metric(m, "freshet_state_chunks") == Some(expected.export.len() as f64)
            && metric(m, "freshet_state_documents") == Some(docs.len() as f64)
    });

    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "freshet exited with {:?}", out.status);
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["received"].as_u64().unwrap() as usize, history.len());

    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}
