//! End-to-end tests of `freshet run` on a file of Debezium events with the embedded Qdrant
//! engine and the `hash` embedder: the exported collection must equal an independent
//! oracle point by point, embed only new content, survive restarts, and dead-letter bad
//! input with reconciling counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;

use proptest::prelude::*;
use support::*;

fn counters_reconcile(s: &serde_json::Value) {
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("summary lacks {k}: {s}"));
    assert_eq!(
        n("received"),
        n("applied") + n("superseded") + n("noop") + n("dead_lettered"),
        "counters do not reconcile: {s}"
    );
}

fn spec_of(dataflow: &std::path::Path) -> freshet::config::DataflowSpec {
    freshet::config::DataflowSpec::load(dataflow).expect("dataflow")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random histories → export equals the oracle; with one record per timestamp the
    /// chunks embedded are exactly the distinct new content hashes.
    #[test]
    fn random_histories_match_the_oracle(seed in any::<u64>(), docs in 2u64..25, events in 10usize..250) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        let history = random_history(seed, docs, events, seed % 3 == 0);
        write_events(&input, &history);
        let dataflow = test_dataflow(dir.path(), &input);
        let config = dir.path().join("one-per-pass.toml");
        std::fs::write(&config, format!("workers = 2\ndata_dir = \"{}\"\nmax_records_per_pass = 1\n", dir.path().join("data").display())).unwrap();
        let summary = run_until_end(&dataflow, &config, &[]);
        counters_reconcile(&summary);
        let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);
        assert_export_matches(&export(&dataflow, &config, true), &expected.export);
        prop_assert_eq!(summary["dead_lettered"].as_u64().unwrap() as usize, expected.dead_lettered);
        prop_assert_eq!(summary["chunks_embedded"].as_u64().unwrap() as usize, expected.applied_hashes.len(),
            "chunks embedded must equal the distinct new content hashes");
    }
}

#[test]
fn same_export_with_1_2_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(42, 120, 3000, true);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);
    let mut exports = Vec::new();
    for workers in [1, 2, 4] {
        let wdir = dir.path().join(format!("w{workers}"));
        std::fs::create_dir_all(&wdir).unwrap();
        let config = test_config(&wdir, workers);
        let summary = run_until_end(&dataflow, &config, &[]);
        counters_reconcile(&summary);
        let embedded = summary["chunks_embedded"].as_u64().unwrap() as usize;
        assert!(
            embedded >= expected.final_hashes.len() && embedded <= expected.applied_hashes.len(),
            "{workers} workers embedded {embedded}, expected between {} and {}",
            expected.final_hashes.len(),
            expected.applied_hashes.len()
        );
        let e = export(&dataflow, &config, true);
        assert_export_matches(&e, &expected.export);
        exports.push(e);
    }
    assert_eq!(exports[0], exports[1]);
    assert_eq!(exports[0], exports[2]);
}

#[test]
fn restart_embeds_nothing_and_export_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(7, 60, 1500, false);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    let first = run_until_end(&dataflow, &config, &[]);
    assert!(first["chunks_embedded"].as_u64().unwrap() > 0);
    let e1 = export(&dataflow, &config, true);
    let second = run_until_end(&dataflow, &config, &[]);
    counters_reconcile(&second);
    assert_eq!(second["chunks_embedded"], 0, "second run embedded: {second}");
    assert_eq!(second["applied"], 0, "second run applied changes: {second}");
    let e2 = export(&dataflow, &config, true);
    assert!(e1 == e2, "export changed after a restart");
    // And with another worker count, state is re-partitioned correctly.
    let config4 = test_config(dir.path(), 4);
    let third = run_until_end(&dataflow, &config4, &[]);
    assert_eq!(third["chunks_embedded"], 0, "{third}");
    assert!(e1 == export(&dataflow, &config4, true));
}

#[test]
fn malformed_input_is_dead_lettered_with_reasons_and_counters_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let good = |id: u64, lsn: u64| Ev::Upsert {
        row: Row {
            id,
            title: format!("Doc {id}"),
            body: "A body.\n\nAnother paragraph.".into(),
            lang: "en".into(),
            status: "draft".into(),
        },
        lsn,
        toast_body: false,
    };
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(f, "{}", good(1, 10).to_json()).unwrap();
    writeln!(f, "{{\"op\": \"c\", \"after\": {{\"article_id\": 2,").unwrap(); // unparsable
    let missing_id = good(3, 12).to_json().replace("\"article_id\":3,", "");
    writeln!(f, "{missing_id}").unwrap();
    let id_object = good(4, 13).to_json().replace("\"article_id\":4", "\"article_id\":{\"x\":1}");
    writeln!(f, "{id_object}").unwrap();
    let title_object = good(5, 14).to_json().replace("\"title\":\"Doc 5\"", "\"title\":{\"nested\":true}");
    writeln!(f, "{title_object}").unwrap();
    let mut bad_utf8 = good(6, 15).to_json().into_bytes();
    let pos = bad_utf8.windows(5).position(|w| w == b"Doc 6").unwrap();
    bad_utf8[pos + 1] = 0xff;
    f.write_all(&bad_utf8).unwrap();
    writeln!(f).unwrap();
    let huge = good(7, 16).to_json().replace("A body.", &"x".repeat(10 * 1024 * 1024));
    writeln!(f, "{huge}").unwrap();
    writeln!(f, "{}", good(8, 17).to_json()).unwrap();
    drop(f);
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    let summary = run_until_end(&dataflow, &config, &[]);
    counters_reconcile(&summary);
    assert_eq!(summary["received"], 8, "{summary}");
    assert_eq!(summary["applied"], 2, "{summary}");
    assert_eq!(summary["dead_lettered"], 6, "{summary}");
    let dl = std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = dl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reasons: std::collections::BTreeSet<&str> = entries.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    for r in ["invalid_json", "missing_id", "wrong_type", "invalid_utf8", "too_large"] {
        assert!(reasons.contains(r), "no dead letter with reason {r}: {reasons:?}");
    }
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| !e["error"].as_str().unwrap().is_empty()));
    let huge_entry = entries.iter().find(|e| e["reason"] == "too_large").unwrap();
    assert!(huge_entry["record_bytes"].as_u64().unwrap() > 10_000_000);
    assert!(huge_entry["record_excerpt"].as_str().unwrap().len() <= 1024);
    let exported = export(&dataflow, &config, false);
    let docs: std::collections::BTreeSet<String> = exported
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["doc_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(docs, ["1", "8"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn a_missing_input_file_fails_the_run_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("does-not-exist.jsonl");
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 1);
    let err = run_expecting_failure(&dataflow, &config);
    assert!(err.contains("does-not-exist.jsonl"), "{err}");
}

#[test]
fn unknown_config_keys_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let dataflow = test_dataflow(dir.path(), &input);
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "workers = 1\nwokers = 2\n").unwrap();
    let err = run_expecting_failure(&dataflow, &config);
    assert!(err.contains("wokers"), "{err}");
}

/// Run `freshet run --until-end`, assert it fails, return its stderr.
fn run_expecting_failure(dataflow: &std::path::Path, config: &std::path::Path) -> String {
    let out = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the run should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Regression: a followed file's line that the writer wrote in two parts (a JSON value and
/// its newline are separate writes for `writeln!`) was read as two records — two dead
/// letters, the change lost — when the reader polled between the writes. The start of a
/// line is kept until its end arrives.
#[test]
fn a_followed_line_written_in_two_parts_is_read_once_whole() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 1);
    let child = spawn_run(&dataflow, &config, true);
    // Until the collection exists, the reader is not reading yet.
    let started = std::time::Instant::now();
    while std::fs::read_dir(dir.path().join("data/collections")).map_or(true, |mut d| d.next().is_none()) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "freshet did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let row = Row {
        id: 7,
        title: "Split".into(),
        body: "A line in two writes.".into(),
        lang: "en".into(),
        status: "draft".into(),
    };
    let line = Ev::Upsert { row, lsn: 10, toast_body: false }.to_json();
    let (a, b) = line.split_at(line.len() / 2);
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    f.write_all(a.as_bytes()).unwrap();
    // Many polls (every 20 ms) see the half line.
    std::thread::sleep(std::time::Duration::from_millis(400));
    f.write_all(format!("{b}\n").as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a summary")).unwrap();
    assert_eq!((summary["received"].as_u64(), summary["applied"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert_eq!(summary["dead_lettered"], 0, "{summary}");
}
