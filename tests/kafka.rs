//! The Kafka source against Apache Kafka (the shared broker of `scripts/services`, see
//! `support::kafka`): the collection equals the oracle, offsets are committed only for what
//! the collection holds, restarts and replays re-embed nothing, `replay --into` builds an
//! identical collection beside the live one, and a replay from a timestamp starts where the
//! broker's offsets-for-times say.
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
    let topic = &broker.topic("articles");
    let group = &broker.group("freshet-live");
    create_topic(&broker.bootstrap, topic, 4);
    let history = random_history(11, 60, 1500, false);
    let positions = produce(&broker.bootstrap, topic, 4, &history);
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let config = kafka_config(dir.path(), "live", 2, &broker.bootstrap, group, "");
    let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);

    let first = run_until_end(&dataflow, &config, &[]);
    assert_eq!(n(&first, "received") as usize, history.len(), "{first}");
    assert_eq!(n(&first, "dead_lettered") as usize, expected.dead_lettered);
    let live = export(&dataflow, &config, true);
    assert_export_matches(&live, &expected.export);
    assert_eq!(
        committed(&broker.bootstrap, group, topic, 4),
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
        committed(&broker.bootstrap, group, topic, 4),
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

/// The exported points of each document: doc_id → [(id, payload)] (vectors left out).
fn points_by_doc(export: &str) -> std::collections::BTreeMap<String, Vec<(String, serde_json::Value)>> {
    let mut out: std::collections::BTreeMap<String, Vec<(String, serde_json::Value)>> = Default::default();
    for line in export.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let doc = v["payload"]["doc_id"].as_str().unwrap().to_owned();
        out.entry(doc).or_default().push((v["id"].as_str().unwrap().to_owned(), v["payload"].clone()));
    }
    out
}

/// `kill -9` at 5 random moments of a 20k-event run, restarting each time: after every
/// kill the committed offsets never run ahead of the collection (each document is in a
/// state the oracle reaches at or after its partition's committed offset); the final
/// collection equals the oracle; the chunks embedded over all runs exceed the distinct
/// content hashes by no more than what was in flight at the kills.
#[test]
fn kill_9_at_random_moments_loses_nothing_and_commits_only_what_is_indexed() {
    use rand::{Rng, SeedableRng};
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = &broker.topic("articles");
    let partitions = 4;
    create_topic(&broker.bootstrap, topic, partitions);
    let history = random_history(2024, 300, 20_000, false);
    let positions = produce(&broker.bootstrap, topic, partitions, &history);
    let call_log = dir.path().join("embed-calls.log");
    let dataflow = kafka_dataflow(dir.path(), topic, Some(&call_log));
    let config = kafka_config(
        dir.path(),
        "kill",
        2,
        &broker.bootstrap,
        &broker.group("freshet-kill"),
        "max_passes_in_flight = 4\nmax_records_per_pass = 200",
    );
    let spec = spec_of(&dataflow);
    let expected = oracle(&spec, &history, "freshet/hash-16", 16);

    // Each document's events with their offsets (a document lives in one partition).
    let mut by_doc: std::collections::BTreeMap<u64, Vec<(i64, Ev)>> = Default::default();
    for (ev, (_, offset)) in history.iter().zip(&positions) {
        if let Some(id) = doc_of(ev) {
            by_doc.entry(id).or_default().push((*offset, ev.clone()));
        }
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut kills = 0;
    let mut interrupted = 0;
    for round in 0..5 {
        let mut child = spawn_run(&dataflow, &config, false);
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(600..2000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        let committed = committed(&broker.bootstrap, &broker.group("freshet-kill"), topic, partitions);
        if committed != high_watermarks(&broker.bootstrap, topic, partitions) {
            interrupted += 1;
        }
        let got = points_by_doc(&export(&dataflow, &config, false));
        for (id, events) in &by_doc {
            let c = committed[&((*id % partitions as u64) as i32)];
            let done = events.iter().take_while(|(o, _)| *o < c).count();
            let mut have = got.get(&id.to_string()).cloned().unwrap_or_default();
            have.sort_by(|a, b| a.0.cmp(&b.0));
            let state = |j: usize| -> Vec<(String, serde_json::Value)> {
                let prefix: Vec<Ev> = events[..j].iter().map(|(_, e)| e.clone()).collect();
                oracle(&spec, &prefix, "freshet/hash-16", 16)
                    .export
                    .into_iter()
                    .map(|v| (v["id"].as_str().unwrap().to_owned(), v["payload"].clone()))
                    .collect()
            };
            // Usually the document is exactly in a state at or after the committed offset.
            let mut ok = (done..=events.len()).any(|j| state(j) == have);
            if !ok {
                // A write torn by the kill (some of one change's points written, not all)
                // is allowed for uncommitted changes only: every point the committed and
                // all later states agree on is there, and every point present is one of
                // those states' points.
                let states: Vec<Vec<(String, serde_json::Value)>> = (done..=events.len()).map(state).collect();
                let in_all = |id: &str| states.iter().all(|s| s.iter().any(|(i, _)| i == id));
                let required: std::collections::BTreeSet<&str> =
                    states[0].iter().map(|(i, _)| i.as_str()).filter(|i| in_all(i)).collect();
                ok = required.iter().all(|r| have.iter().any(|(i, _)| i == r))
                    && have.iter().all(|p| states.iter().any(|s| s.contains(p)));
            }
            if !ok {
                let brief = |s: &[(String, serde_json::Value)]| -> Vec<String> {
                    s.iter()
                        .map(|(i, p)| {
                            format!(
                                "{}:c{}:v{}:{}",
                                &i[..8],
                                p["chunk_index"],
                                p["source_version"],
                                p["content_hash"].as_str().map_or("-", |h| &h[..8])
                            )
                        })
                        .collect()
                };
                eprintln!("document {id}: have {:?}", brief(&have));
                for j in done.saturating_sub(2)..=(done + 2).min(events.len()) {
                    eprintln!(
                        "  state after {j} events (offset {:?}): {:?}",
                        events.get(j).map(|e| e.0),
                        brief(&state(j))
                    );
                }
                // The states of the versions present, key by key where they differ.
                let versions: std::collections::BTreeSet<String> =
                    have.iter().map(|(_, p)| p["source_version"].to_string()).collect();
                for j in done..=events.len() {
                    let s = state(j);
                    if s.iter().any(|(_, p)| versions.contains(&p["source_version"].to_string())) {
                        eprintln!("  state after {j} events: {:?}", brief(&s));
                        for ((hi, hp), (si, sp)) in have.iter().zip(&s) {
                            for (k, v) in sp.as_object().unwrap() {
                                if hp.get(k) != Some(v) {
                                    eprintln!("    {hi} vs {si}: {k}: have {:?} state {v}", hp.get(k));
                                }
                            }
                        }
                        break;
                    }
                }
                eprintln!("  events {:?}", &events[done.saturating_sub(1)..(done + 6).min(events.len())]);
            }
            if !ok && std::env::var_os("FRESHET_KEEP_FAILED").is_some() {
                eprintln!("kept {}", dir.path().display());
                let dump: Vec<serde_json::Value> =
                    (done..=events.len()).map(|j| serde_json::json!({"j": j, "state": state(j)})).collect();
                std::fs::write(dir.path().join("have.json"), serde_json::to_string_pretty(&have).unwrap()).unwrap();
                std::fs::write(dir.path().join("states.json"), serde_json::to_string_pretty(&dump).unwrap()).unwrap();
                std::mem::forget(dir);
                panic!("document {id} (kept)");
            }
            assert!(
                ok,
                "after kill {round}: document {id} is in no state at or after committed offset {c} \
                 ({done} of its {} events committed)",
                events.len()
            );
        }
    }

    assert!(interrupted >= 3, "only {interrupted} of the kills hit a run with work to do");
    let last = run_until_end(&dataflow, &config, &[]);
    let final_export = export(&dataflow, &config, true);
    // Diagnose a point whose vector is not its payload's: whose content is the vector of?
    let emb = freshet::embed::hash::HashEmbedder::new(16);
    for line in final_export.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let h = freshet::model::ContentHash::from_hex(p["payload"]["content_hash"].as_str().unwrap()).unwrap();
        let v: Vec<f32> = p["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        if !close(&v, &emb.vector_for(&h)) {
            let of = expected.applied_hashes.iter().find(|c| close(&v, &emb.vector_for(c)));
            eprintln!(
                "MISMATCH point {} doc {} chunk {} payload hash {:?} version {}: vector is that of {:?}",
                p["id"], p["payload"]["doc_id"], p["payload"]["chunk_index"], h, p["payload"]["source_version"], of
            );
        }
    }
    assert_export_matches(&final_export, &expected.export);
    assert_eq!(
        committed(&broker.bootstrap, &broker.group("freshet-kill"), topic, partitions),
        high_watermarks(&broker.bootstrap, topic, partitions)
    );
    let embedded: usize = std::fs::read_to_string(&call_log)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    let distinct = expected.applied_hashes.len();
    // In flight at a kill: at most max_passes_in_flight passes × 200 records per partition
    // × 2 partitions per worker × 2 workers, each record with at most a few new chunks;
    // the embedding batches in flight are a subset of those records' chunks.
    let in_flight_bound = kills * 4 * 200 * 2 * 2 * 3;
    eprintln!(
        "kill test: {kills} kills, {embedded} chunks embedded over all runs, {distinct} distinct content hashes, \
         excess {}; last run {last}",
        embedded.saturating_sub(distinct)
    );
    assert!(embedded >= distinct.min(1));
    assert!(
        embedded <= distinct + in_flight_bound,
        "{embedded} chunks embedded for {distinct} distinct content hashes: more than the work in flight at {kills} kills"
    );
}

/// Regression: a no-op change with a newer version (a TOAST placeholder body under an
/// unchanged title) writes nothing to the index, so the payloads keep the older version.
/// Once its offset is committed it is not read again, so after a restart an out-of-order
/// event older than the no-op but newer than the payloads must still be superseded: the
/// version seen is remembered beside the collection.
#[test]
fn restart_after_a_committed_noop_keeps_older_events_superseded() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = &broker.topic("articles");
    create_topic(&broker.bootstrap, topic, 1);
    let row =
        |body: &str| Row { id: 1, title: "Title".into(), body: body.into(), lang: "en".into(), status: "draft".into() };
    let first = vec![
        Ev::Upsert { row: row("first body."), lsn: 10, toast_body: false },
        Ev::Upsert { row: row("ignored"), lsn: 30, toast_body: true },
    ];
    produce(&broker.bootstrap, topic, 1, &first);
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let config = kafka_config(dir.path(), "noop", 1, &broker.bootstrap, &broker.group("freshet-noop"), "");
    run_until_end(&dataflow, &config, &[]);
    let late = vec![Ev::Upsert { row: row("a stale second body."), lsn: 20, toast_body: false }];
    produce(&broker.bootstrap, topic, 1, &late);
    let second = run_until_end(&dataflow, &config, &[]);
    assert_eq!(n(&second, "received"), 1, "{second}");
    assert_eq!(n(&second, "superseded"), 1, "{second}");
    let all: Vec<Ev> = first.into_iter().chain(late).collect();
    let expected = oracle(&spec_of(&dataflow), &all, "freshet/hash-16", 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

/// A topic that does not exist yet (Debezium creates a table's topic with its first record;
/// a stack starts in any order): `freshet run` waits for it, saying so, and indexes it once it
/// appears; `--until-end` fails at once.
#[test]
fn a_missing_topic_is_waited_for_when_following_and_an_error_to_the_end() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = &broker.topic("later");
    let group = &broker.group("freshet-later");
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let config = kafka_config(dir.path(), "later", 2, &broker.bootstrap, group, "");
    let out = freshet()
        .args(["run", "--until-end", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--until-end on a missing topic: {stderr}");
    assert!(stderr.contains(topic.as_str()) && stderr.contains("does the topic exist?"), "{stderr}");

    let log = dir.path().join("run.log");
    let mut child = spawn_run_logged(&dataflow, &config, &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = std::time::Instant::now();
    while !read().contains("waiting for the topic to exist") {
        assert!(child.try_wait().unwrap().is_none(), "freshet run exited: {}", read());
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "no word of the missing topic: {}", read());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "freshet run gave up on the missing topic: {}", read());
    create_topic(&broker.bootstrap, topic, 2);
    let history = random_history(21, 20, 200, false);
    produce(&broker.bootstrap, topic, 2, &history);
    let end = high_watermarks(&broker.bootstrap, topic, 2);
    while committed(&broker.bootstrap, group, topic, 2) != end {
        assert!(child.try_wait().unwrap().is_none(), "freshet run exited: {}", read());
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "not indexed after 120 s: {}", read());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success(), "{}", read());
    assert!(read().contains("the topic exists now"), "{}", read());
    let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

/// `replay --from-timestamp` starts every partition at its first record at or after the time
/// (the broker's offsets-for-times): a replay from between two halves of a history reads
/// exactly the second half and, into the live collection, embeds and changes nothing; a time
/// before everything reads everything; a time after everything reads nothing.
#[test]
fn replay_from_a_timestamp_reads_the_records_at_or_after_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = &broker.topic("articles");
    let group = &broker.group("freshet-ts");
    create_topic(&broker.bootstrap, topic, 3);
    let history = random_history(31, 40, 600, false);
    let (early, late) = history.split_at(350);
    let before_all = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    produce(&broker.bootstrap, topic, 3, early);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = std::time::SystemTime::now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    produce(&broker.bootstrap, topic, 3, late);
    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let config = kafka_config(dir.path(), "ts", 2, &broker.bootstrap, group, "");
    let expected = oracle(&spec_of(&dataflow), &history, "freshet/hash-16", 16);
    let first = run_until_end(&dataflow, &config, &[]);
    assert_eq!(n(&first, "received") as usize, history.len(), "{first}");
    let live = export(&dataflow, &config, true);
    assert_export_matches(&live, &expected.export);

    let at = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let replay = replay_cmd(&dataflow, &config, &["--from-timestamp", &at(between)]);
    assert_eq!(n(&replay, "received") as usize, late.len(), "{replay}");
    assert_eq!(n(&replay, "chunks_embedded"), 0, "{replay}");
    assert_eq!(n(&replay, "applied"), 0, "{replay}");
    assert_eq!(export(&dataflow, &config, true), live, "a replay changes nothing");

    let all = replay_cmd(&dataflow, &config, &["--from-timestamp", &at(before_all)]);
    assert_eq!(n(&all, "received") as usize, history.len(), "{all}");
    // After everything the broker answers -1, "no such record", which freshet reads as the end.
    let after_all = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    let none = replay_cmd(&dataflow, &config, &["--from-timestamp", &at(after_all)]);
    assert_eq!(n(&none, "received"), 0, "{none}");
    assert_eq!(
        committed(&broker.bootstrap, group, topic, 3),
        high_watermarks(&broker.bootstrap, topic, 3),
        "replays leave the live group alone"
    );
}
