//! freshet as a timely cluster: 2 processes × 2 workers on loopback, writing to a Qdrant
//! server (freshet's emulator of one — an embedded collection belongs to one process),
//! produce the same export as 1 process × 1 worker, and both processes do part of the work
//! (documents are exchanged between them by doc_id).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::qdrant::{qdrant_config, with_qdrant_sink, Emulator};
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_processes_of_two_workers_export_what_one_worker_does() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(2002, 120, 3000, true);
    write_events(&input, &history);
    let dataflow = with_qdrant_sink(&test_dataflow(dir.path(), &input));

    // One process, one worker.
    let single = Emulator::start();
    let one = dir.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    let summary = run_until_end(&dataflow, &qdrant_config(&one, 1, &single.url(), ""), &[]);
    let reference = export(&dataflow, &qdrant_config(&one, 1, &single.url(), ""), true);
    assert_eq!(summary["received"].as_u64().unwrap() as usize, history.len());

    // Two processes of two workers.
    let shared = Emulator::start();
    let two = dir.path().join("two");
    std::fs::create_dir_all(&two).unwrap();
    let config = qdrant_config(&two, 2, &shared.url(), "");
    let upserted = run_cluster(&two, &dataflow, &config);
    assert!(upserted.iter().all(|&u| u > 0), "both processes wrote documents: {upserted:?}");
    let clustered = export(&dataflow, &config, true);
    assert_eq!(clustered, reference, "2×2 exports what 1×1 does");
    let expected = oracle(&freshet::config::DataflowSpec::load(&dataflow).unwrap(), &history, "freshet/hash-16", 16);
    assert_export_matches(&clustered, &expected.export);
}

/// Run `freshet run --until-end` as 2 processes (of the config's workers) on loopback;
/// returns each process's points upserted.
fn run_cluster(dir: &std::path::Path, dataflow: &std::path::Path, config: &std::path::Path) -> Vec<u64> {
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            freshet()
                .args(["run", "--until-end", "--processes", "2", "--process", &i.to_string(), "--hosts"])
                .arg(&hosts)
                .arg("--dataflow")
                .arg(dataflow)
                .arg("--config")
                .arg(config)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut upserted = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        assert!(
            outs.iter().all(|o| o.status.success()),
            "process {i} failed: {}",
            outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect::<Vec<_>>().join("\n---\n")
        );
        let s: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
        upserted.push(s["points_upserted"].as_u64().unwrap());
    }
    upserted
}

/// Issue 17: a multi-table dataflow (rows exchanged by table and key, lookups and children
/// joined by differential across both processes) renders in a 2×2 cluster exactly the
/// documents 1×1 renders, which are the oracle's join of the final tables.
#[test]
fn a_multi_table_dataflow_in_two_processes_of_two_workers_exports_what_one_worker_does() {
    use support::tables::{expected_export, random_history, without_versions, write_dataflow};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let (events, db) = random_history(31, 120, 3000);
    support::tables::write_events(&input, &events);
    let dataflow = with_qdrant_sink(&write_dataflow(dir.path(), &input));

    let single = Emulator::start();
    let one = dir.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    let summary = run_until_end(&dataflow, &qdrant_config(&one, 1, &single.url(), ""), &[]);
    assert_eq!(summary["received"].as_u64().unwrap() as usize, events.len());
    let reference = without_versions(&export(&dataflow, &qdrant_config(&one, 1, &single.url(), ""), true));

    let shared = Emulator::start();
    let two = dir.path().join("two");
    std::fs::create_dir_all(&two).unwrap();
    let config = qdrant_config(&two, 2, &shared.url(), "");
    let upserted = run_cluster(&two, &dataflow, &config);
    assert!(upserted.iter().all(|&u| u > 0), "both processes wrote documents: {upserted:?}");
    let clustered = without_versions(&export(&dataflow, &config, true));
    assert_eq!(clustered, reference, "2×2 exports what 1×1 does");
    let (expected, _) = expected_export(&db, 120);
    assert!(expected.len() > 40, "the history leaves documents: {}", expected.len());
    assert_export_matches(&clustered, &expected);
}

#[test]
fn a_cluster_refuses_an_embedded_collection() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_events(&input, &random_history(1, 3, 10, false));
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 1);
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1:1\n127.0.0.1:2\n").unwrap();
    let out = freshet()
        .args(["run", "--until-end", "--processes", "2", "--process", "0", "--hosts"])
        .arg(&hosts)
        .arg("--dataflow")
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shared sink"), "{}", String::from_utf8_lossy(&out.stderr));
}
