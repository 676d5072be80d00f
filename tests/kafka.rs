//! The Kafka source against a real Kafka-protocol broker (tansu, started from the binary
//! `scripts/kafka-broker` installs): the collection equals the oracle, offsets are
//! committed only for what the collection holds, restarts and replays re-embed nothing,
//! and `replay --into` builds an identical collection beside the live one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::kafka::*;
use support::*;

fn spec_of(dataflow: &std::path::Path) -> freshet::config::DataflowSpec {
    freshet::config::DataflowSpec::load(dataflow).expect("dataflow")
}

fn n(s: &serde_json::Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or_else(|| panic!("summary lacks {k}: {s}"))
}

/// 4 partitions, 2 workers: export equals the oracle; the group's offsets end at the
/// high watermarks; a second run reads nothing new and embeds nothing; a replay from the
/// beginning into the live collection embeds and changes nothing; `replay --into` a new
/// collection equals the live one; a replay from offsets reads only what follows them.
#[test]
fn kafka_to_collection_matches_the_oracle_and_restarts_and_replays_embed_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = "articles";
    create_topic(&broker.bootstrap, topic, 4);
    let history = random_history(11, 60, 1500, false);
    let positions = produce(&broker.bootstrap, topic, 4, &history);
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let config = kafka_config(dir.path(), "live", 2, &broker.bootstrap, "freshet-live", "");
    let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);

    let first = run_until_end(&dataflow, &config, &[]);
    assert_eq!(n(&first, "received") as usize, history.len(), "{first}");
    assert_eq!(n(&first, "dead_lettered") as usize, expected.dead_lettered);
    let live = export(&dataflow, &config, true);
    assert_export_matches(&live, &expected.export);
    assert_eq!(
        committed(&broker.bootstrap, "freshet-live", topic, 4),
        high_watermarks(&broker.bootstrap, topic, 4),
        "after a clean end the group's offsets are the high watermarks"
    );

    // Restart: nothing new to read.
    let second = run_until_end(&dataflow, &config, &[]);
    assert_eq!(n(&second, "received"), 0, "{second}");
    assert_eq!(n(&second, "chunks_embedded"), 0);

    // Replay everything into the live collection: every change is a duplicate.
    let replay = replay_cmd(&dataflow, &config, &["--from-beginning"]);
    assert_eq!(n(&replay, "received") as usize, history.len(), "{replay}");
    assert_eq!(n(&replay, "chunks_embedded"), 0, "{replay}");
    assert_eq!(n(&replay, "applied"), 0, "{replay}");
    assert_eq!(export(&dataflow, &config, true), live, "a replay changes nothing");
    assert_eq!(
        committed(&broker.bootstrap, "freshet-live", topic, 4),
        high_watermarks(&broker.bootstrap, topic, 4),
        "a replay leaves the live group alone"
    );

    // Replay from offsets: only the records at or after them.
    let from: Vec<(i32, i64)> = (0..4).map(|p| (p, 10 + p as i64)).collect();
    let arg = from.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",");
    let partial = replay_cmd(&dataflow, &config, &["--from-offsets", &arg]);
    let after_offsets = positions.iter().filter(|(p, o)| *o >= 10 + *p as i64).count();
    assert_eq!(n(&partial, "received") as usize, after_offsets, "{partial}");
    assert_eq!(n(&partial, "chunks_embedded"), 0);

    // Replay into a new collection: built from scratch, equal to the live one.
    let into = replay_cmd(&dataflow, &config, &["--from-beginning", "--into", "articles_rebuilt"]);
    assert_eq!(n(&into, "received") as usize, history.len());
    let embedded = n(&into, "chunks_embedded") as usize;
    assert!(embedded > 0 && embedded <= expected.applied_hashes.len(), "{into}");
    assert_eq!(export_collection(&dataflow, &config, "articles_rebuilt"), live);
    assert_eq!(export(&dataflow, &config, true), live, "the live collection is untouched");
}

fn replay_cmd(dataflow: &std::path::Path, config: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = freshet()
        .args(["replay", "--no-progress", "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("spawn freshet replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "freshet replay failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().expect("summary")).expect("summary JSON")
}

fn export_collection(dataflow: &std::path::Path, config: &std::path::Path, collection: &str) -> String {
    let out = freshet()
        .args(["export", "--with-vectors", "--collection", collection, "--dataflow"])
        .arg(dataflow)
        .arg("--config")
        .arg(config)
        .output()
        .expect("export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
