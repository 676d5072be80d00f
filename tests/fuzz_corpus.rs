//! Replays the fuzz corpus (`fuzz/corpus/<target>/`, grown by `scripts/fuzz`) and the real
//! Debezium samples of `../shared/debezium-samples` through the fuzz harnesses, without
//! libFuzzer: every input that once reached new code, and every crash found and fixed
//! (saved there as a regression), must pass the invariants of `fuzz/src/lib.rs` in each CI
//! run.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod harness;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    assert!(files.len() >= 20, "fuzz/corpus/{target} holds {} inputs; run scripts/fuzz {target}", files.len());
    for f in &files {
        let data = std::fs::read(f).expect("corpus file");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("fuzz input {} breaks an invariant (reproduce: scripts/fuzz, or this test)", f.display());
        }
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn debezium_json_corpus() {
    replay("debezium_json", harness::debezium_json);
}

#[test]
fn upsert_json_corpus() {
    replay("upsert_json", harness::upsert_json);
}

#[test]
fn dead_letter_corpus() {
    replay("dead_letter", harness::dead_letter);
}

#[test]
fn chunker_corpus() {
    replay("chunker", harness::chunker);
}

#[test]
fn avro_corpus() {
    replay("avro", harness::avro);
}

#[test]
fn config_corpus() {
    replay("config", harness::config);
}

/// The real captured events, each line and each whole file, as value alone and with the
/// key split off, through the decoder and dead-letter harnesses.
#[test]
fn debezium_samples_pass_the_harnesses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/debezium-samples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: {} is not here", dir.display());
        return;
    };
    let mut n = 0;
    for e in entries {
        let raw = std::fs::read(e.expect("sample").path()).expect("sample file");
        let mut inputs = vec![raw.clone()];
        inputs.extend(raw.split(|&b| b == b'\n').map(<[u8]>::to_vec));
        for input in inputs {
            for selector in [0x02u8, 0x03, 0x06, 0x12, 0x42, 0x82] {
                let mut data = vec![selector];
                data.extend_from_slice(&input);
                harness::debezium_json(&data);
                harness::upsert_json(&data);
                harness::dead_letter(&data);
                harness::avro(&data);
                n += 1;
            }
        }
    }
    assert!(n > 100, "only {n} sample inputs");
}

/// The Avro target's hand-encoded seeds are real records of its schemas: a create, an
/// update (body a TOAST placeholder), a delete and a truncate decode to changes, the
/// unknown id to `unknown_schema`; the captured real record decodes with its schema.
#[test]
fn avro_seeds_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/avro");
    let decoded = |name: &str| {
        let data = std::fs::read(dir.join(name)).expect("seed");
        harness::avro_record(&data).expect("a record")
    };
    for name in ["seed-create-03", "seed-update-03", "seed-delete-03", "seed-create-13", "seed-upsert-row"] {
        let d = decoded(name);
        assert!(matches!(d, Ok(freshet::source::decode::Decoded::Record(_))), "{name}: {d:?}");
    }
    assert!(matches!(decoded("seed-truncate-03"), Ok(freshet::source::decode::Decoded::Record(_))));
    let unknown = decoded("seed-unknown-id").unwrap_err();
    assert_eq!(unknown.kind, freshet::source::decode::DecodeErrorKind::UnknownSchema);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/debezium-samples/avro-confluent-wire-format.debezium-mysql-2.1.2.bin");
    if let Ok(raw) = std::fs::read(&sample) {
        let mut data = vec![0x02u8];
        data.extend_from_slice(&raw);
        let d = harness::avro_record(&data).expect("a record");
        assert!(matches!(d, Ok(freshet::source::decode::Decoded::Record(_))), "the captured record: {d:?}");
    }
}
