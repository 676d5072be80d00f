//! Writes torn by a crash, made on purpose (fault injection in the embedded sink) rather than
//! by a kill at a random moment: each test tears one write the way a kill did in a long
//! crash run, restarts, and checks that the collection ends equal to the oracle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

fn row(body: &str, status: &str) -> Row {
    Row { id: 1, title: "Page one".into(), body: body.into(), lang: "en".into(), status: status.into() }
}

fn paragraph(word: &str, n: usize) -> String {
    format!("{}.", vec![word; n].join(" "))
}

/// Regression (issue 13, seed 101 of `scripts/crash-test`): an edit that shrank a page (a
/// long paragraph made short, so its last chunks go) and a status flip with the body as
/// Debezium's unchanged-TOAST placeholder were written together; the write was torn after
/// its upserts and payload updates and before its deletes, leaving the last two chunks of
/// the old text beside the new ones. On restart the document was rebuilt just below the
/// write's version, so the edit read again was superseded and the status flip (no text to
/// chunk) kept the stale chunks for good. The document must go back to the version of its
/// oldest points, so that every change of the torn write applies again.
#[test]
fn a_write_torn_before_its_deletes_leaves_no_stale_chunk_when_the_last_change_is_a_toast_update() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 1);
    let long = [
        paragraph("river", 12),
        paragraph("delta", 90),
        paragraph("lantern", 12),
        paragraph("harbor", 12),
        paragraph("orbit", 12),
    ];
    let mut short = long.clone();
    short[1] = paragraph("glacier", 3);
    let snapshot = vec![Ev::Upsert { row: row(&long.join("\n\n"), "published"), lsn: 1000, toast_body: false }];
    write_events(&input, &snapshot);
    run_until_end(&dataflow, &config, &[]);
    let before = export(&dataflow, &config, false).lines().count();

    let mut history = snapshot.clone();
    history.push(Ev::Upsert { row: row(&short.join("\n\n"), "published"), lsn: 9050, toast_body: false });
    history.push(Ev::Upsert { row: row(&short.join("\n\n"), "draft"), lsn: 11718, toast_body: true });
    write_events(&input, &history);
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    let expected = oracle(&spec, &history, "freshet/hash-16", 16);
    assert!(expected.export.len() + 2 <= before, "the edit drops chunks: {before} → {}", expected.export.len());

    let torn = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .env("FRESHET_FAULT_ABORT_BEFORE", "delete")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&torn.stderr);
    assert!(
        !torn.status.success() && stderr.contains("aborting before this operation"),
        "the write was torn: {stderr}"
    );

    let summary = run_until_end(&dataflow, &config, &[]);
    eprintln!("after the torn write: {summary}");
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

/// Run `first` to the end, then `rest` after it with the first write that reaches `fault`'s
/// operation torn (the process aborts there), then once more to the end: the collection
/// must equal the oracle of the whole history.
fn torn_then_recovered(first: &[Ev], rest: &[Ev], fault: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 1);
    write_events(&input, first);
    run_until_end(&dataflow, &config, &[]);
    let history: Vec<Ev> = first.iter().chain(rest).cloned().collect();
    write_events(&input, &history);
    let torn = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .env("FRESHET_FAULT_ABORT_BEFORE", fault)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&torn.stderr);
    assert!(!torn.status.success() && stderr.contains("aborting before this operation"), "not torn: {stderr}");
    let summary = run_until_end(&dataflow, &config, &[]);
    eprintln!("{fault}: after the torn write: {summary}");
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    let expected = oracle(&spec, &history, "freshet/hash-16", 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

/// A status flip with an unchanged-TOAST body, then an edit of the text, read in one pass
/// (as documents 10705 and 15429 of seed 101's second failure were), the write torn before
/// its payload updates or its deletes; the edit grows the text or shrinks it.
#[test]
fn a_toast_update_then_an_edit_written_together_and_torn_end_as_the_source_says() {
    let text = |paras: &[(&str, usize)]| paras.iter().map(|(w, n)| paragraph(w, *n)).collect::<Vec<_>>().join("\n\n");
    let a = text(&[("river", 12), ("delta", 90), ("lantern", 12), ("harbor", 12)]);
    for (b, what) in [
        (text(&[("river", 12), ("delta", 90), ("glacier", 12), ("harbor", 12), ("orbit", 30)]), "grows"),
        (text(&[("river", 12), ("quartz", 3), ("lantern", 12), ("harbor", 12)]), "shrinks"),
    ] {
        for fault in ["set_payload", "delete"] {
            if what == "grows" && fault == "delete" {
                continue; // nothing to delete
            }
            eprintln!("the edit {what}, torn before {fault}");
            let first = [Ev::Upsert { row: row(&a, "published"), lsn: 1000, toast_body: false }];
            let rest = [
                Ev::Upsert { row: row(&a, "archived"), lsn: 9198, toast_body: true },
                Ev::Upsert { row: row(&b, "archived"), lsn: 12349, toast_body: false },
            ];
            torn_then_recovered(&first, &rest, fault);
        }
    }
}
