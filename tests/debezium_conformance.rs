//! Conformance of the Debezium JSON decoder against every file of the shared sample
//! folder (`../shared/debezium-samples`, or `$FRESHET_DEBEZIUM_SAMPLES`; its README.md says
//! where each sample comes from). The samples are read in place, never copied here.
//!
//! [`SAMPLES`] is the table: each file, what it asserts, and the check. A file in the
//! folder that is not in the table (or a table entry without its file) fails
//! `every_sample_file_is_covered`, so a new sample fails until it is given a check.
//!
//! Conventions: events from single-event files are decoded at position [`POS`]; events
//! from line-based files at their 1-based event number, so a version equal to that number
//! is the position fallback (events without `source.lsn`: MySQL, abridged samples).
//! The Debezium docs snippets (`*.adoc-snippet.txt`) are not valid JSON: each is first
//! asserted to be rejected as `invalid_json` as it stands, then repaired by
//! [`repair_docs_snippet`] (drop the `...` elisions and trailing commas outside strings;
//! `{debezium-version}` sits inside a string and needs nothing) and decoded.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use freshet::model::{ChangeOp, DocChange, DocId, FieldValue, Row, SourceRecord};
use freshet::source::decode::debezium::decode_debezium_json;
use freshet::source::decode::{DecodeError, DecodeErrorKind, DecodeSpec, Decoded, SkipKind};
use serde_json::{json, Value};

/// Position given to the event of a single-event file.
const POS: u64 = 1000;

/// One sample file and its check.
struct Sample {
    file: &'static str,
    asserts: &'static str,
    check: fn(&Ctx),
}

/// The file being checked.
struct Ctx {
    dir: PathBuf,
    bytes: Vec<u8>,
}

impl Ctx {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("sample is UTF-8")
    }
}

#[rustfmt::skip]
const SAMPLES: &[Sample] = &[
    Sample { file: "README.md",
        asserts: "provenance notes, not an event: as a value it is rejected as invalid_json",
        check: check_prose },
    Sample { file: "pg-envelope-fields.md",
        asserts: "field notes, not an event: as a value it is rejected as invalid_json",
        check: check_prose },
    Sample { file: "avro-confluent-wire-format.debezium-mysql-2.1.2.avsc",
        asserts: "an Avro schema (for the later Avro decoder) is JSON without `op`: not_debezium",
        check: check_avsc },
    Sample { file: "avro-confluent-wire-format.debezium-mysql-2.1.2.bin",
        asserts: "Confluent header 0x00 + schema id 6; Avro binary fed to the JSON decoder: invalid_utf8",
        check: check_avro_bin },
    Sample { file: "avro-confluent-wire-format.debezium-mysql-2.1.2.hex.txt",
        asserts: "hex of the .bin exactly; as a value: invalid_json",
        check: check_avro_hex },
    Sample { file: "avro-confluent-wire-format.debezium-mysql-2.1.2.decoded.json",
        asserts: "`decoded_value` (MySQL 2.1.2 r): id 1001, version = position (no lsn), commit 1676303732000, \
                  first_name Sally; filter inventory.customers matches; the outer {magic_byte,..} object: not_debezium",
        check: check_avro_decoded },
    Sample { file: "heartbeat.CONSTRUCTED-from-debezium-source.txt",
        asserts: "key line + value with schema + value without schema (comment lines skipped): Heartbeat, \
                  also under a table filter",
        check: check_heartbeat },
    Sample { file: "mysql-0.10-create-with-schema.serde-test.json",
        asserts: "c id 1004 Anne Kretchmar; version = position; source.ts_ms 0 -> commit = envelope ts_ms \
                  1465491411815; snapshot boolean; filter inventory.customers / customers match, orders skips",
        check: check_mysql_010_create },
    Sample { file: "mysql-0.10-create-without-schema.serde-test.json",
        asserts: "same as with schema (same event without the wrapper)",
        check: check_mysql_010_create },
    Sample { file: "mysql-0.10-update-without-schema.serde-test.json",
        asserts: "u id 1004 first_name Anne from `after` (before says Anne-Marie); version = position",
        check: check_mysql_010_update },
    Sample { file: "mysql-3.0.1-read-and-update-without-schema.engine-wasm-readme.jsonl",
        asserts: "line 1 r id 1004 Anne commit 1731327511000; line 2 u id 1001 Sarah commit 1731327659000; \
                  versions = line numbers (no lsn)",
        check: check_mysql_301 },
    Sample { file: "pg-2.1.3-snapshot-read-op-r.camel-readme.txt",
        asserts: "4 log fragments starting mid-schema: invalid_json as they stand; repaired by prefixing \
                  `{\"schema\":{\"type\":\"struct\"` -> r 1001 Sally, 1002 George, 1003 Edward, 1004 Anne, \
                  all version 33816576 (one snapshot txn), commits 1582540780807/810/812/812",
        check: check_pg_213_camel },
    Sample { file: "pg-2.1.3-snapshot-read-op-r.payloads.jsonl",
        asserts: "the same 4 snapshot rows as bare payloads, same results",
        check: check_pg_213_payloads },
    Sample { file: "pg-2.1.4-create-payload.kafka-ssl-readme.payload.json",
        asserts: "c id 1005 Bob Marley, version 34466480, commit 1733906311010, filter inventory.customers",
        check: check_pg_214_payload },
    Sample { file: "pg-2.1.4-create-payload.kafka-ssl-readme.txt",
        asserts: "README form with `\"schema\": { <omitted> }`: invalid_json as it stands; `<omitted>` removed \
                  -> same as the .payload.json",
        check: check_pg_214_readme },
    Sample { file: "pg-2.2.1-avro-decoded-by-kafka-avro-console-consumer.captured.json",
        asserts: "Avro JSON encoding ({\"long\":..} unions, `after` under a `...Value` branch) is not JsonConverter \
                  output: not_debezium naming `source.lsn`/`long`, or `after` when no version field is read",
        check: check_pg_221_avro_console },
    Sample { file: "pg-2.5.4-delete-with-schema-then-tombstone.captured.txt",
        asserts: "line 1 d (with schema, before = PK + defaults) -> Delete order_id 5, version 26846600, \
                  commit 1767859856577; line 2 `null` -> Tombstone (and a null value too)",
        check: check_pg_254_delete_tombstone },
    Sample { file: "pg-2.5.4-without-schema-r-r-d-u-c.captured.jsonl",
        asserts: "r 1 John, r 2 Jane (both version 22401960), d 1 (before = PK + \"\" defaults) version 22402288, \
                  u 2 Mary with before null version 22402608, c 3 XXX version 22403152; commits per line",
        check: check_pg_254_rrduc },
    Sample { file: "pg-2.7.1-create-and-update-payloads.captured.jsonl",
        asserts: "c 2 Paul age 25 version 23043920; u 1 Tom age 30 with before null version 23044320",
        check: check_pg_271_c_u },
    Sample { file: "pg-2.7.1-snapshot-read-key-and-value-with-schema.captured.pretty.json",
        asserts: "{key, value} both with schema: r id 1 John age 30, version 23043592, commit 1764099880079; \
                  the key alone as a value: not_debezium",
        check: check_pg_271_pretty },
    Sample { file: "pg-2.7.1-snapshot-read-key-and-value-with-schema.captured.txt",
        asserts: "key and value on one line separated by spaces (the console's TAB became spaces): same as \
                  the .pretty.json",
        check: check_pg_271_captured },
    Sample { file: "pg-3.3.0-snapshot-read-abridged.openlineage-readme.json",
        asserts: "r id 101 scooter weight 3.14, abridged source (no lsn) -> version = position, commit \
                  1678901234000; filter inventory.products",
        check: check_pg_330_abridged },
    Sample { file: "pg-docs-create-with-schema.json",
        asserts: "c id 1 Anne, version 24023128, commit 1559033904863; boolean snapshot tolerated",
        check: check_docs_create },
    Sample { file: "pg-docs-delete-replica-identity-default.adoc-snippet.txt",
        asserts: "invalid_json as it stands; repaired -> Delete id 1 (before = PK only), version 46523128, \
                  commit 1559033904863",
        check: check_docs_delete },
    Sample { file: "pg-docs-event-key-with-schema.adoc-snippet.txt",
        asserts: "invalid_json as it stands; repaired: as a value not_debezium; as the key of a delete whose \
                  before is null it gives id \"1\" (string payload)",
        check: check_docs_key },
    Sample { file: "pg-docs-message-op-m-nontransactional.adoc-snippet.txt",
        asserts: "invalid_json as it stands (also one `}` short); repaired + closing brace -> Skip(Message), \
                  also under a table filter",
        check: check_docs_message_nontx },
    Sample { file: "pg-docs-message-op-m-transactional.adoc-snippet.txt",
        asserts: "invalid_json as it stands; repaired -> Skip(Message)",
        check: check_docs_message_tx },
    Sample { file: "pg-docs-transaction-block-in-data-event.adoc-snippet.txt",
        asserts: "invalid_json as it stands (`...` source); repaired (source {}) -> c id \"2\" from `pk`, \
                  version = position, commit 1580390884335 from the string envelope ts_ms; \
                  under a table filter not_debezium (no source.table)",
        check: check_docs_transaction_block },
    Sample { file: "pg-docs-transaction-metadata-begin-end.adoc-snippet.txt",
        asserts: "two objects in one file: invalid_json as one value; each -> Skip(TransactionMetadata)",
        check: check_docs_begin_end },
    Sample { file: "pg-docs-truncate-op-t.adoc-snippet.txt",
        asserts: "invalid_json as it stands; repaired -> Truncate version 46523128, commit 1559033904863; \
                  filter public.customers keeps it, public.orders skips it",
        check: check_docs_truncate },
    Sample { file: "pg-docs-update-replica-identity-default.adoc-snippet.txt",
        asserts: "invalid_json as it stands; repaired -> u id 1 first_name \"Anne Marie\" (before = PK only), \
                  version 24023128, commit 1559033904863",
        check: check_docs_update },
    Sample { file: "pg-transaction-metadata-begin-end.risingwave-test.jsonl",
        asserts: "{\"schema\":null,\"payload\":{BEGIN}} and {..END..} -> Skip(TransactionMetadata) both",
        check: check_risingwave_tx },
];

// ---------------------------------------------------------------------------------------
// The tests

fn samples_dir() -> PathBuf {
    let dir = match std::env::var_os("FRESHET_DEBEZIUM_SAMPLES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/debezium-samples"),
    };
    assert!(
        dir.is_dir(),
        "Debezium sample folder {} not found: this test needs the shared samples \
         (set FRESHET_DEBEZIUM_SAMPLES to their folder)",
        dir.display()
    );
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[test]
fn every_sample_file_is_covered() {
    let dir = samples_dir();
    let files = files_in(&dir);
    let uncovered: Vec<&String> = files.iter().filter(|f| !SAMPLES.iter().any(|s| s.file == f.as_str())).collect();
    assert!(
        uncovered.is_empty(),
        "sample files without a check in SAMPLES (tests/debezium_conformance.rs): {uncovered:?}"
    );
    let missing: Vec<&str> = SAMPLES.iter().map(|s| s.file).filter(|f| !files.iter().any(|g| g == f)).collect();
    assert!(missing.is_empty(), "SAMPLES lists files not in {}: {missing:?}", dir.display());
    let mut names: Vec<&str> = SAMPLES.iter().map(|s| s.file).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SAMPLES.len(), "SAMPLES lists a file twice");
}

#[test]
fn every_sample_decodes_as_expected() {
    let dir = samples_dir();
    let mut failures = Vec::new();
    for sample in SAMPLES {
        let path = dir.join(sample.file);
        let Ok(bytes) = std::fs::read(&path) else {
            failures.push(format!("{}: cannot be read", sample.file));
            continue;
        };
        let ctx = Ctx { dir: dir.clone(), bytes };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (sample.check)(&ctx))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!("{} (asserts: {}): {why}", sample.file, sample.asserts));
        }
    }
    assert!(failures.is_empty(), "{} sample(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Helpers

fn spec(ids: &[&str]) -> DecodeSpec {
    DecodeSpec {
        id_fields: ids.iter().map(|s| (*s).to_owned()).collect(),
        version_field: Some("source.lsn".to_owned()),
        table: None,
        max_record_bytes: 1 << 20,
        tables: Vec::new(),
    }
}

fn spec_for_table(ids: &[&str], table: &str) -> DecodeSpec {
    DecodeSpec { table: Some(table.to_owned()), ..spec(ids) }
}

#[track_caller]
fn decode(spec: &DecodeSpec, key: Option<&str>, value: &str, position: u64) -> Decoded {
    decode_debezium_json(spec, key.map(str::as_bytes), Some(value.as_bytes()), position)
        .unwrap_or_else(|e| panic!("decode failed ({}): {e}", e.kind.as_str()))
}

#[track_caller]
fn decode_err(spec: &DecodeSpec, key: Option<&[u8]>, value: &[u8]) -> DecodeError {
    match decode_debezium_json(spec, key, Some(value), POS) {
        Err(e) => e,
        Ok(decoded) => panic!("expected an error, decoded {decoded:?}"),
    }
}

#[track_caller]
fn assert_rejected(value: &str, kind: DecodeErrorKind) -> DecodeError {
    let err = decode_err(&spec(&["id"]), None, value.as_bytes());
    assert_eq!(err.kind, kind, "error: {err}");
    err
}

#[track_caller]
fn doc(decoded: &Decoded) -> &DocChange {
    match decoded {
        Decoded::Record(SourceRecord::Doc(change)) => change,
        other => panic!("expected a document change, got {other:?}"),
    }
}

/// An upsert of `id` at `version` committed at `commit`, holding `fields`.
#[track_caller]
fn assert_upsert(decoded: &Decoded, id: &str, version: u64, commit: Option<u64>, fields: &[(&str, Value)]) {
    let change = doc(decoded);
    assert_eq!(change.doc_id, DocId(id.to_owned()));
    assert_eq!(change.version, version, "version of {id}");
    assert_eq!(change.commit_ts_ms, commit, "commit_ts_ms of {id}");
    let ChangeOp::Upsert(row) = &change.op else { panic!("expected an upsert of {id}, got {:?}", change.op) };
    assert_fields(row, fields);
}

#[track_caller]
fn assert_fields(row: &Row, fields: &[(&str, Value)]) {
    for (column, expected) in fields {
        assert_eq!(row.get(*column), Some(&FieldValue::Value(expected.clone())), "column `{column}`");
    }
}

#[track_caller]
fn assert_delete(decoded: &Decoded, id: &str, version: u64, commit: Option<u64>) {
    let change = doc(decoded);
    assert_eq!(change.doc_id, DocId(id.to_owned()));
    assert_eq!(change.op, ChangeOp::Delete);
    assert_eq!(change.version, version, "version of deleted {id}");
    assert_eq!(change.commit_ts_ms, commit, "commit_ts_ms of deleted {id}");
}

/// The lines of a line-per-event file, without blank and `#` comment lines.
fn event_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// The raw text of each JSON value in `text`, values separated by whitespace only.
fn json_values(text: &str) -> Vec<&str> {
    let mut values = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match stream.next() {
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                values.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            Some(Err(e)) => panic!("not a sequence of JSON values: {e}"),
            None => break,
        }
    }
    values
}

/// The documented repair of the docs' hand-edited examples: outside string literals, drop
/// the `...` elisions (`"schema": { ... }` becomes `"schema": {  }`) and the commas left
/// before a closing `}` or `]`. Strings (including `"{debezium-version}"`) are untouched.
fn repair_docs_snippet(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '.' if text[i..].starts_with("...") => {
                chars.next();
                chars.next();
            }
            ',' if text[i + 1..].trim_start().starts_with(['}', ']']) => {}
            _ => out.push(c),
        }
    }
    out
}

/// A docs snippet: rejected as it stands, then repaired.
#[track_caller]
fn repaired_snippet(ctx: &Ctx) -> String {
    let err = assert_rejected(ctx.text(), DecodeErrorKind::InvalidJson);
    assert!(err.message.starts_with("the value is not valid JSON"), "{err}");
    let repaired = repair_docs_snippet(ctx.text());
    serde_json::from_str::<Value>(&repaired)
        .unwrap_or_else(|e| panic!("repaired snippet is still not JSON ({e}):\n{repaired}"));
    repaired
}

// ---------------------------------------------------------------------------------------
// The checks, one per file (or family)

fn check_prose(ctx: &Ctx) {
    assert!(!ctx.text().trim().is_empty());
    assert_rejected(ctx.text(), DecodeErrorKind::InvalidJson);
}

fn check_avsc(ctx: &Ctx) {
    let err = assert_rejected(ctx.text(), DecodeErrorKind::NotDebezium);
    assert!(err.message.contains("no `op` field"), "{err}");
    assert!(err.message.contains("type, name, namespace, fields"), "{err}");
}

fn check_avro_bin(ctx: &Ctx) {
    assert_eq!(ctx.bytes.len(), 160);
    assert_eq!(ctx.bytes[..5], [0, 0, 0, 0, 6], "Confluent magic byte + schema id 6");
    let err = decode_err(&spec(&["id"]), None, &ctx.bytes);
    assert_eq!(err.kind, DecodeErrorKind::InvalidUtf8, "{err}");
}

fn check_avro_hex(ctx: &Ctx) {
    let bin = std::fs::read(ctx.dir.join("avro-confluent-wire-format.debezium-mysql-2.1.2.bin"))
        .expect("the .bin next to the .hex.txt");
    assert_eq!(hex::decode(ctx.text().trim()).expect("hex"), bin);
    assert_rejected(ctx.text(), DecodeErrorKind::InvalidJson);
}

fn check_avro_decoded(ctx: &Ctx) {
    let file: Value = serde_json::from_str(ctx.text()).expect("JSON");
    assert_eq!((file["magic_byte"].as_u64(), file["schema_id"].as_u64()), (Some(0), Some(6)));
    assert_rejected(ctx.text(), DecodeErrorKind::NotDebezium);
    let envelope = file["decoded_value"].to_string();
    let expected =
        [("first_name", json!("Sally")), ("last_name", json!("Thomas")), ("email", json!("sally.thomas@acme.com"))];
    for spec in [spec(&["id"]), spec_for_table(&["id"], "inventory.customers")] {
        let decoded = decode(&spec, None, &envelope, POS);
        assert_upsert(&decoded, "1001", POS, Some(1676303732000), &expected);
    }
}

fn check_heartbeat(ctx: &Ctx) {
    let lines = event_lines(ctx.text());
    let [key, with_schema, without_schema] = lines[..] else {
        panic!("expected key, value with schema, value without schema; got {} lines", lines.len())
    };
    for spec in [spec(&["id"]), spec_for_table(&["id"], "public.customers")] {
        for value in [with_schema, without_schema] {
            assert_eq!(decode(&spec, Some(key), value, POS), Decoded::Skip(SkipKind::Heartbeat));
            assert_eq!(decode(&spec, None, value, POS), Decoded::Skip(SkipKind::Heartbeat));
        }
    }
}

fn check_mysql_010_create(ctx: &Ctx) {
    let expected = [
        ("id", json!(1004)),
        ("first_name", json!("Anne")),
        ("last_name", json!("Kretchmar")),
        ("email", json!("annek@noanswer.org")),
    ];
    for spec in [spec(&["id"]), spec_for_table(&["id"], "inventory.customers"), spec_for_table(&["id"], "customers")] {
        let decoded = decode(&spec, None, ctx.text(), POS);
        // source.ts_ms is 0 in these fixtures: the envelope's ts_ms stands in.
        assert_upsert(&decoded, "1004", POS, Some(1465491411815), &expected);
    }
    let other = spec_for_table(&["id"], "orders");
    assert_eq!(decode(&other, None, ctx.text(), POS), Decoded::Skip(SkipKind::OtherTable));
}

fn check_mysql_010_update(ctx: &Ctx) {
    let decoded = decode(&spec(&["id"]), None, ctx.text(), POS);
    assert_upsert(&decoded, "1004", POS, Some(1465491411815), &[("first_name", json!("Anne"))]);
}

fn check_mysql_301(ctx: &Ctx) {
    let lines = event_lines(ctx.text());
    assert_eq!(lines.len(), 2);
    let s = spec_for_table(&["id"], "inventory.customers");
    let read = decode(&s, None, lines[0], 1);
    assert_upsert(&read, "1004", 1, Some(1731327511000), &[("first_name", json!("Anne"))]);
    let update = decode(&s, None, lines[1], 2);
    assert_upsert(
        &update,
        "1001",
        2,
        Some(1731327659000),
        &[("first_name", json!("Sarah")), ("email", json!("sally.thomas@acme.com"))],
    );
}

/// The four PG 2.1.3 snapshot rows, as values (bare or wrapped).
#[track_caller]
fn check_pg_213_rows(values: &[String]) {
    let expected = [
        ("1001", "Sally", 1582540780807),
        ("1002", "George", 1582540780810),
        ("1003", "Edward", 1582540780812),
        ("1004", "Anne", 1582540780812),
    ];
    assert_eq!(values.len(), expected.len());
    let s = spec_for_table(&["id"], "inventory.customers");
    for (n, (value, (id, first_name, commit))) in values.iter().zip(expected).enumerate() {
        let decoded = decode(&s, None, value, n as u64 + 1);
        // One snapshot transaction: every row has the same lsn.
        assert_upsert(&decoded, id, 33816576, Some(commit), &[("first_name", json!(first_name))]);
    }
}

fn check_pg_213_camel(ctx: &Ctx) {
    let fragments = event_lines(ctx.text());
    for fragment in &fragments {
        assert!(fragment.starts_with(",\"optional\":false,\"name\":\"dbserver1.inventory.customers.Envelope\"}"));
        assert_rejected(fragment, DecodeErrorKind::InvalidJson);
    }
    // The logger cut off the schema head; restoring an (empty) head makes each line a
    // complete {"schema":…,"payload":…} value again.
    let repaired: Vec<String> = fragments.iter().map(|f| format!("{{\"schema\":{{\"type\":\"struct\"{f}")).collect();
    check_pg_213_rows(&repaired);
}

fn check_pg_213_payloads(ctx: &Ctx) {
    let lines: Vec<String> = event_lines(ctx.text()).into_iter().map(str::to_owned).collect();
    check_pg_213_rows(&lines);
}

#[track_caller]
fn check_pg_214_value(value: &str) {
    let decoded = decode(&spec_for_table(&["id"], "inventory.customers"), None, value, POS);
    assert_upsert(
        &decoded,
        "1005",
        34466480,
        Some(1733906311010),
        &[("first_name", json!("Bob")), ("last_name", json!("Marley"))],
    );
}

fn check_pg_214_payload(ctx: &Ctx) {
    check_pg_214_value(ctx.text());
}

fn check_pg_214_readme(ctx: &Ctx) {
    assert_rejected(ctx.text(), DecodeErrorKind::InvalidJson);
    let repaired = ctx.text().replace("<omitted>", "");
    check_pg_214_value(&repaired);
}

fn check_pg_221_avro_console(ctx: &Ctx) {
    let err = assert_rejected(ctx.text(), DecodeErrorKind::NotDebezium);
    assert!(err.message.starts_with("`source.lsn` is wrapped in an Avro union branch `long`"), "{err}");
    let no_version = DecodeSpec { version_field: None, ..spec(&["id"]) };
    let err = decode_err(&no_version, None, ctx.text().as_bytes());
    assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
    assert!(
        err.message.starts_with("`after` is wrapped in an Avro union branch `pgsource..public.movies.Value`"),
        "{err}"
    );
}

fn check_pg_254_delete_tombstone(ctx: &Ctx) {
    let lines = event_lines(ctx.text());
    assert_eq!(lines.len(), 2);
    let s = spec_for_table(&["order_id"], "public.orders");
    assert_delete(&decode(&s, None, lines[0], 1), "5", 26846600, Some(1767859856577));
    assert_eq!(lines[1], "null");
    assert_eq!(decode(&s, None, lines[1], 2), Decoded::Skip(SkipKind::Tombstone));
    let key = br#"{"order_id":5}"#;
    assert_eq!(decode_debezium_json(&s, Some(key), None, 2), Ok(Decoded::Skip(SkipKind::Tombstone)));
}

fn check_pg_254_rrduc(ctx: &Ctx) {
    let lines = event_lines(ctx.text());
    assert_eq!(lines.len(), 5);
    let s = spec_for_table(&["id"], "customers");
    let d = |n: usize| decode(&s, None, lines[n], n as u64 + 1);
    assert_upsert(&d(0), "1", 22401960, Some(1720271497008), &[("first_name", json!("John"))]);
    assert_upsert(&d(1), "2", 22401960, Some(1720271497008), &[("first_name", json!("Jane"))]);
    // before = {"id":1,"first_name":"",…}: only the id is read.
    assert_delete(&d(2), "1", 22402288, Some(1720271727393));
    assert_upsert(&d(3), "2", 22402608, Some(1720271832655), &[("first_name", json!("Mary"))]);
    assert_upsert(&d(4), "3", 22403152, Some(1720271920769), &[("first_name", json!("XXX"))]);
}

fn check_pg_271_c_u(ctx: &Ctx) {
    let lines = event_lines(ctx.text());
    assert_eq!(lines.len(), 2);
    let s = spec_for_table(&["id"], "public.persons");
    let create = decode(&s, None, lines[0], 1);
    assert_upsert(&create, "2", 23043920, Some(1764100127886), &[("name", json!("Paul")), ("age", json!(25))]);
    let update = decode(&s, None, lines[1], 2);
    assert_upsert(&update, "1", 23044320, Some(1764100127887), &[("name", json!("Tom")), ("age", json!(30))]);
}

#[track_caller]
fn check_pg_271_key_value(key: &str, value: &str) {
    let s = spec_for_table(&["id"], "persons");
    let decoded = decode(&s, Some(key), value, POS);
    assert_upsert(&decoded, "1", 23043592, Some(1764099880079), &[("name", json!("John")), ("age", json!(30))]);
    let err = assert_rejected(key, DecodeErrorKind::NotDebezium);
    assert!(err.message.contains("top-level fields: id"), "{err}");
}

fn check_pg_271_pretty(ctx: &Ctx) {
    let file: Value = serde_json::from_str(ctx.text()).expect("JSON");
    check_pg_271_key_value(&file["key"].to_string(), &file["value"].to_string());
}

fn check_pg_271_captured(ctx: &Ctx) {
    let values = json_values(ctx.text());
    let [key, value] = values[..] else { panic!("expected key and value, got {}", values.len()) };
    check_pg_271_key_value(key, value);
}

#[allow(clippy::approx_constant)] // the product weight 3.14 in the sample, not π
fn check_pg_330_abridged(ctx: &Ctx) {
    let decoded = decode(&spec_for_table(&["id"], "inventory.products"), None, ctx.text(), POS);
    assert_upsert(&decoded, "101", POS, Some(1678901234000), &[("name", json!("scooter")), ("weight", json!(3.14))]);
}

fn check_docs_create(ctx: &Ctx) {
    let decoded = decode(&spec_for_table(&["id"], "public.customers"), None, ctx.text(), POS);
    assert_upsert(
        &decoded,
        "1",
        24023128,
        Some(1559033904863),
        &[("first_name", json!("Anne")), ("email", json!("annek@noanswer.org"))],
    );
}

fn check_docs_delete(ctx: &Ctx) {
    let value = repaired_snippet(ctx);
    let decoded = decode(&spec_for_table(&["id"], "public.customers"), None, &value, POS);
    assert_delete(&decoded, "1", 46523128, Some(1559033904863));
}

fn check_docs_key(ctx: &Ctx) {
    let key = repaired_snippet(ctx);
    let err = assert_rejected(&key, DecodeErrorKind::NotDebezium);
    assert!(err.message.contains("no `op` field"), "{err}");
    // A delete whose `before` is null (REPLICA IDENTITY NOTHING) takes its id from the key.
    let delete =
        r#"{"before":null,"after":null,"source":{"schema":"public","table":"customers","lsn":7,"ts_ms":5},"op":"d"}"#;
    let decoded = decode(&spec(&["id"]), Some(&key), delete, POS);
    assert_delete(&decoded, "1", 7, Some(5));
}

fn check_docs_message_nontx(ctx: &Ctx) {
    let mut value = repaired_snippet_unbalanced(ctx);
    // The docs example never closes `message`: close the outer object.
    value.push('}');
    for spec in [spec(&["id"]), spec_for_table(&["id"], "public.customers")] {
        assert_eq!(decode(&spec, None, &value, POS), Decoded::Skip(SkipKind::Message));
    }
}

/// Like [`repaired_snippet`] for the one example that is also a brace short.
#[track_caller]
fn repaired_snippet_unbalanced(ctx: &Ctx) -> String {
    assert_rejected(ctx.text(), DecodeErrorKind::InvalidJson);
    let repaired = repair_docs_snippet(ctx.text());
    let err = assert_rejected(&repaired, DecodeErrorKind::InvalidJson);
    assert!(err.message.contains("EOF while parsing an object"), "{err}");
    repaired
}

fn check_docs_message_tx(ctx: &Ctx) {
    let value = repaired_snippet(ctx);
    for spec in [spec(&["id"]), spec_for_table(&["id"], "public.customers")] {
        assert_eq!(decode(&spec, None, &value, POS), Decoded::Skip(SkipKind::Message));
    }
}

fn check_docs_transaction_block(ctx: &Ctx) {
    let value = repaired_snippet(ctx);
    let decoded = decode(&spec(&["pk"]), None, &value, POS);
    assert_upsert(&decoded, "2", POS, Some(1580390884335), &[("aa", json!("1"))]);
    let filtered = spec_for_table(&["pk"], "public.a");
    let err = decode_err(&filtered, None, value.as_bytes());
    assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
    assert!(err.message.contains("no string `source.table`"), "{err}");
}

fn check_docs_begin_end(ctx: &Ctx) {
    assert_rejected(ctx.text(), DecodeErrorKind::InvalidJson);
    let values = json_values(ctx.text());
    assert_eq!(values.len(), 2);
    for value in values {
        assert_eq!(decode(&spec(&["id"]), None, value, POS), Decoded::Skip(SkipKind::TransactionMetadata));
    }
}

fn check_docs_truncate(ctx: &Ctx) {
    let value = repaired_snippet(ctx);
    let truncate =
        Decoded::Record(SourceRecord::Truncate { version: 46523128, position: POS, commit_ts_ms: Some(1559033904863) });
    for spec in [spec(&["id"]), spec_for_table(&["id"], "public.customers")] {
        assert_eq!(decode(&spec, None, &value, POS), truncate);
    }
    let other = spec_for_table(&["id"], "public.orders");
    assert_eq!(decode(&other, None, &value, POS), Decoded::Skip(SkipKind::OtherTable));
}

fn check_docs_update(ctx: &Ctx) {
    let value = repaired_snippet(ctx);
    let decoded = decode(&spec_for_table(&["id"], "customers"), None, &value, POS);
    assert_upsert(
        &decoded,
        "1",
        24023128,
        Some(1559033904863),
        &[("first_name", json!("Anne Marie")), ("last_name", json!("Kretchmar"))],
    );
}

fn check_risingwave_tx(ctx: &Ctx) {
    let lines = event_lines(ctx.text());
    assert_eq!(lines.len(), 2);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(decode(&spec(&["id"]), None, line, n as u64 + 1), Decoded::Skip(SkipKind::TransactionMetadata));
    }
}
