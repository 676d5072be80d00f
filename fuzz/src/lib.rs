//! The fuzz harnesses: one function per target, each taking the fuzzer's bytes, feeding them
//! to a piece of freshet that reads untrusted input, and panicking when an invariant breaks
//! (a panic inside freshet is a finding too). `fuzz_targets/*.rs` hand them to libFuzzer
//! (`scripts/fuzz`); `tests/fuzz_corpus.rs` replays the saved corpus through the same
//! functions in every CI run, without libFuzzer.
//!
//! Record targets read their input as `[selector byte] key 0xFF value`: the selector says
//! whether the key and the value are present (bits 0 and 1), which version path the spec
//! uses (bits 2–3), whether a table filter is set (bit 4) and whether the size limit is
//! small (bit 5). Without a 0xFF byte the rest is the value. (0xFF never occurs in UTF-8, so
//! a JSON key and value are split unambiguously.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use freshet::config::{ChunkerSpec, DataflowSpec, RuntimeConfig, SourceFormat, TextTemplate};
use freshet::dataflow::chunk::Chunker;
use freshet::dataflow::{Ingested, Routed};
use freshet::model::{ChangeOp, ContentHash, DeadLetter, SourceRecord};
use freshet::source::decode::avro::{decode_debezium_avro, decode_upsert_avro, AvroSchema};
use freshet::source::decode::debezium::decode_debezium_json;
use freshet::source::decode::upsert::decode_upsert_json;
use freshet::source::decode::{DecodeError, DecodeErrorKind, DecodeSpec, Decoded};
use freshet::source::{ingest, Decoder, RawRecord};

/// One record as the record targets read it (see the crate docs).
#[derive(Debug)]
pub struct FuzzRecord<'a> {
    /// The decode spec the selector chose.
    pub spec: DecodeSpec,
    /// Key bytes, if present.
    pub key: Option<&'a [u8]>,
    /// Value bytes, if present.
    pub value: Option<&'a [u8]>,
    /// The selector byte.
    pub selector: u8,
}

impl<'a> FuzzRecord<'a> {
    /// Split fuzzer bytes into a record (None for empty input).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&selector, rest) = data.split_first()?;
        let (key, value) = match rest.iter().position(|&b| b == 0xFF) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&rest[..0], rest),
        };
        let mut spec = DecodeSpec::new(["id"]);
        if selector & 0b1000_0000 != 0 {
            spec.id_fields = vec!["id".into(), "tenant".into()];
        }
        spec.version_field = match (selector >> 2) & 0b11 {
            0 => Some("source.lsn".into()),
            1 => None,
            2 => Some("ts_ms".into()),
            _ => Some("source.sequence".into()),
        };
        if selector & 0b1_0000 != 0 {
            spec.table = Some("public.articles".into());
        }
        if selector & 0b10_0000 != 0 {
            spec.max_record_bytes = 256;
        }
        Some(Self {
            spec,
            key: (selector & 1 != 0).then_some(key),
            value: (selector & 2 != 0).then_some(value),
            selector,
        })
    }

    fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len)
    }
}

/// A decoder under test, given the spec, key and value.
type Decode = dyn Fn(&DecodeSpec, Option<&[u8]>, Option<&[u8]>) -> Result<Decoded, DecodeError>;

/// What the decoders promise for any bytes: no panic, the same answer twice, a size limit
/// that holds, an error with a reason and a message, a change with an id; and, for a value
/// that is JSON, the same answer for the same JSON written compactly (the decoders read
/// JSON, not bytes).
fn check_decoded(r: &FuzzRecord<'_>, decode: &Decode, envelope: bool) {
    let Some(first) = check_decoded_as(r, decode, envelope, &|v| serde_json::from_slice(v).ok()) else { return };
    // The same JSON, written compactly, decodes the same way.
    let Some(value) = r.value else { return };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(value) else { return };
    let compact = serde_json::to_vec(&json).expect("a parsed value serialises");
    let mut spec = r.spec.clone();
    spec.max_record_bytes = usize::MAX;
    let reread = decode(&spec, r.key, Some(&compact));
    assert_eq!(first, reread, "the same JSON written compactly decodes differently");
}

/// [`check_decoded`] for a format whose value `render` turns into the JSON it means.
fn check_decoded_as(
    r: &FuzzRecord<'_>,
    decode: &Decode,
    envelope: bool,
    render: &dyn Fn(&[u8]) -> Option<serde_json::Value>,
) -> Option<Result<Decoded, DecodeError>> {
    let first = decode(&r.spec, r.key, r.value);
    let again = decode(&r.spec, r.key, r.value);
    assert_eq!(first, again, "decoding is not deterministic");
    if r.size() > r.spec.max_record_bytes {
        assert!(
            matches!(&first, Err(e) if e.kind == DecodeErrorKind::TooLarge),
            "a record over max_record_bytes was not rejected as too large: {first:?}"
        );
        return None;
    }
    match &first {
        Err(e) => {
            assert!(!e.kind.as_str().is_empty() && !e.message.trim().is_empty(), "an error without a message: {e:?}");
            assert_ne!(e.kind, DecodeErrorKind::TooLarge, "too large under the limit: {e:?}");
        }
        Ok(Decoded::Record(SourceRecord::Doc(c))) => {
            // (An empty id is a valid key: Postgres allows `''` as a text primary key.)
            // Every column of the source row is kept: the row is empty only when the
            // record's row is `{}` (its id then comes from the key).
            if let ChangeOp::Upsert(row) = &c.op {
                let source = r.value.and_then(render);
                let source = source.as_ref().map(|v| match v.get("payload") {
                    Some(p) if v.as_object().is_some_and(|m| m.keys().all(|k| k == "schema" || k == "payload")) => p,
                    _ => v,
                });
                // Debezium's row is the envelope's `after`, an upsert's the value itself.
                let columns = source
                    .and_then(|v| if envelope { v.get("after") } else { Some(v) })
                    .and_then(serde_json::Value::as_object)
                    .map(serde_json::Map::len);
                assert_eq!(Some(row.len()), columns, "an upsert lost or invented columns: {c:?}");
            }
        }
        Ok(_) => {}
    }
    Some(first)
}

/// Target `debezium_json`: [`decode_debezium_json`].
pub fn debezium_json(data: &[u8]) {
    let Some(r) = FuzzRecord::parse(data) else { return };
    check_decoded(&r, &|spec, k, v| decode_debezium_json(spec, k, v, 7), true);
}

/// Target `upsert_json`: [`decode_upsert_json`].
pub fn upsert_json(data: &[u8]) {
    let Some(r) = FuzzRecord::parse(data) else { return };
    check_decoded(&r, &|spec, k, v| decode_upsert_json(spec, k, v, 7, Some(1_700_000_000_000)), false);
}

/// Target `dead_letter`: the path from a record to the reader's output
/// ([`freshet::source::ingest`]): every record yields exactly one counted item (a change, a
/// skip or a dead letter; a broadcast truncate one per worker, one of them counted), and a
/// dead letter names its stage, reason, origin and size, keeps an excerpt of the record, and
/// survives the dead-letter file's JSON-lines encoding unchanged.
pub fn dead_letter(data: &[u8]) {
    let Some(r) = FuzzRecord::parse(data) else { return };
    let format = if r.selector & 0b100_0000 != 0 { SourceFormat::UpsertJson } else { SourceFormat::DebeziumJson };
    let header_value: &[u8] = r.value.map_or(b"", |v| &v[..v.len().min(8)]);
    let headers = [("trace", Some(header_value))];
    let record = RawRecord { key: r.key, value: r.value, position: 42, timestamp_ms: Some(1), headers: &headers };
    let source: Arc<str> = Arc::from("articles[3]");
    let peers = 3;
    let mut out: Vec<Routed> = Vec::new();
    ingest(Decoder::json(format), &r.spec, record, Some(&source), peers, &mut out);
    let counted = out.iter().filter(|o| o.counted).count();
    assert_eq!(counted, 1, "a record must be counted exactly once: {out:?}");
    match out.as_slice() {
        [Routed { item: Ingested::Record(SourceRecord::Truncate { .. }), .. }, ..] => {
            assert_eq!(out.len(), peers, "a truncate goes to every worker: {out:?}");
        }
        [one] => match &one.item {
            Ingested::Dead(d) => check_dead_letter(d, &r),
            Ingested::Record(SourceRecord::Doc(c)) => {
                assert_eq!(c.source.as_deref(), Some("articles[3]"), "a change lost its origin");
            }
            Ingested::Skipped { position, kind } => {
                assert_eq!(*position, 42);
                assert!(!kind.is_empty());
            }
            Ingested::Record(t) => panic!("a truncate that is not broadcast: {t:?}"),
            Ingested::Resync { .. } => panic!("a decoder gave a resync marker"),
        },
        more => panic!("one record gave {} items: {more:?}", more.len()),
    }
}

fn check_dead_letter(d: &DeadLetter, r: &FuzzRecord<'_>) {
    assert_eq!(d.stage, "decode");
    assert!(!d.reason.is_empty() && !d.error.trim().is_empty(), "a dead letter without a reason: {d:?}");
    assert_eq!(d.origin.as_deref(), Some("articles[3]@42"), "a dead letter without its origin");
    assert_eq!(d.record_bytes, Some(r.size()), "a dead letter with the wrong size");
    let excerpt = d.record_excerpt.as_deref().expect("a dead letter keeps an excerpt of the record");
    if let Some(v) = r.value.filter(|v| v.len() <= 1024 && std::str::from_utf8(v).is_ok()) {
        assert!(excerpt.ends_with(std::str::from_utf8(v).unwrap_or_default()), "the excerpt lost the value");
    }
    let line = serde_json::to_string(d).expect("a dead letter serialises");
    assert!(!line.contains('\n'), "a dead-letter line would break the JSON-lines file");
    let back: DeadLetter = serde_json::from_str(&line).expect("a dead-letter line parses back");
    assert_eq!(&back, d, "a dead letter changed on its way through the file");
}

/// Target `chunker`: [`Chunker`] on any text, with limits from the first two bytes. The
/// chunks are not empty and trimmed, within `max_chars` (counted in grapheme clusters only
/// where one cluster alone is longer), in the text's order and, without overlap, together
/// hold exactly the text's non-whitespace characters; chunking and hashing are stable.
pub fn chunker(data: &[u8]) {
    let [a, b, rest @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let max_chars = 16 + usize::from(*a) * 4;
    let overlap_chars = if b & 1 == 0 { 0 } else { usize::from(*b) % (max_chars / 2) };
    let chunker = Chunker::new(&ChunkerSpec { max_chars, overlap_chars });
    let chunks = chunker.chunk_and_hash(text);
    assert_eq!(chunks, chunker.chunk_and_hash(text), "chunking is not deterministic");
    let solid = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let text_solid = solid(text);
    let mut joined = String::new();
    for (hash, chunk) in &chunks {
        assert!(!chunk.is_empty(), "an empty chunk");
        assert_eq!(chunk.trim(), chunk, "an untrimmed chunk {chunk:?}");
        assert_eq!(*hash, ContentHash::of(chunk), "a chunk's hash is not the hash of its text");
        let len = chunk.chars().count();
        assert!(
            len <= max_chars || longest_grapheme(chunk) > max_chars / 2,
            "a chunk of {len} characters, over max_chars = {max_chars}: {chunk:?}"
        );
        let s = solid(chunk);
        assert!(text_solid.contains(&s), "a chunk that is not from the text: {chunk:?}");
        joined.push_str(&s);
    }
    if overlap_chars == 0 {
        assert_eq!(joined, text_solid, "without overlap the chunks must hold exactly the text");
    } else {
        assert!(joined.len() >= text_solid.len(), "the chunks lost text");
    }
}

/// The longest run of characters that a splitter may not cut: a base character and the
/// combining marks or joiners that follow it (an approximation of a grapheme cluster).
fn longest_grapheme(s: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in s.chars() {
        let joins = matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE00..=0xFE0F | 0xFE20..=0xFE2F | 0x200D | 0xE0100..=0xE01EF)
            || (c as u32) >= 0x1F3FB && (c as u32) <= 0x1F3FF;
        run = if joins { run + 1 } else { 1 };
        longest = longest.max(run);
    }
    longest
}

/// Target `config`: the dataflow file, the runtime config and the text template, from any
/// text. Parsing and validation never panic; a template that parses renders back to text
/// that parses to the same template; a dataflow file that validates has a template naming
/// a column.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    if let Ok(spec) = toml::from_str::<DataflowSpec>(text) {
        if let Ok(valid) = spec.validate(path) {
            assert!(!valid.template().fields().is_empty(), "a valid dataflow whose template names no column");
        }
    }
    if let Ok(cfg) = toml::from_str::<RuntimeConfig>(text) {
        let _ = cfg.validate(path);
    }
    if let Ok(template) = TextTemplate::parse(text) {
        let rendered = render(&template);
        assert_eq!(TextTemplate::parse(&rendered).as_ref(), Ok(&template), "template {text:?} → {rendered:?}");
    }
}

fn render(t: &TextTemplate) -> String {
    use freshet::config::TemplatePart;
    let mut out = String::new();
    for p in &t.parts {
        match p {
            TemplatePart::Literal(l) => out.push_str(&l.replace('{', "{{").replace('}', "}}")),
            TemplatePart::Field(f) => {
                out.push('{');
                out.push_str(f);
                out.push('}');
            }
        }
    }
    out
}

// ---- Avro -----------------------------------------------------------------------------------

/// Writer schemas of the `avro` target by registry id: 1 a key, 2 a Debezium envelope whose
/// row has a column of each semantic type, 3 that row alone (upserts), and the real
/// Debezium schema of the captured sample in `../shared/debezium-samples` under its id (6)
/// when the samples are there. Other ids are unknown.
fn avro_schemas() -> &'static HashMap<u32, Arc<AvroSchema>> {
    static SCHEMAS: OnceLock<HashMap<u32, Arc<AvroSchema>>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let row = r#"{"type":"record","name":"Value","namespace":"fz","fields":[
          {"name":"id","type":"long"},{"name":"tenant","type":["null","string"],"default":null},
          {"name":"title","type":"string"},{"name":"body","type":["null","string"],"default":null},
          {"name":"price","type":["null",{"type":"bytes","scale":2,"precision":10,"connect.version":1,
            "connect.parameters":{"scale":"2","connect.decimal.precision":"10"},
            "connect.name":"org.apache.kafka.connect.data.Decimal","logicalType":"decimal"}],"default":null},
          {"name":"score","type":["null",{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data",
            "fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}],
            "connect.name":"io.debezium.data.VariableScaleDecimal"}],"default":null},
          {"name":"doc","type":["null",{"type":"string","connect.name":"io.debezium.data.Json"}],"default":null},
          {"name":"at","type":{"type":"long","connect.name":"io.debezium.time.MicroTimestamp"}},
          {"name":"day","type":{"type":"int","connect.name":"io.debezium.time.Date"}},
          {"name":"mood","type":{"type":"string","connect.name":"io.debezium.data.Enum"}},
          {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
          {"name":"tags","type":{"type":"array","items":"string"}},
          {"name":"attrs","type":{"type":"map","values":["null","double"]}},
          {"name":"blob","type":"bytes"},{"name":"fx","type":{"type":"fixed","name":"Fx","size":2}},
          {"name":"ok","type":"boolean"},{"name":"f","type":"float"}],
          "connect.name":"fz.Value"}"#;
        let envelope = format!(
            r#"{{"type":"record","name":"Envelope","namespace":"fz","fields":[
              {{"name":"before","type":["null",{row}],"default":null}},
              {{"name":"after","type":["null","fz.Value"],"default":null}},
              {{"name":"source","type":{{"type":"record","name":"Source","fields":[
                {{"name":"ts_ms","type":"long"}},{{"name":"table","type":"string"}},
                {{"name":"schema","type":"string"}},{{"name":"lsn","type":["null","long"],"default":null}},
                {{"name":"sequence","type":["null","string"],"default":null}}]}}}},
              {{"name":"op","type":"string"}},{{"name":"ts_ms","type":["null","long"],"default":null}}]}}"#
        );
        let key = r#"{"type":"record","name":"Key","namespace":"fz","fields":[{"name":"id","type":"long"},
          {"name":"tenant","type":["null","string"],"default":null}]}"#;
        let mut m = HashMap::new();
        for (id, text) in [(1, key.to_owned()), (2, envelope), (3, row.to_owned())] {
            m.insert(id, Arc::new(AvroSchema::parse(&text).unwrap_or_else(|e| panic!("schema {id}: {e}"))));
        }
        // From fuzz/ (libFuzzer) or the repository (tests/fuzz_corpus.rs).
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let samples = std::env::var_os("FRESHET_DEBEZIUM_SAMPLES")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain([here.join("../shared/debezium-samples"), here.join("../../shared/debezium-samples")]);
        let avsc = "avro-confluent-wire-format.debezium-mysql-2.1.2.avsc";
        if let Some(text) = samples.into_iter().find_map(|d| std::fs::read_to_string(d.join(avsc)).ok()) {
            if let Ok(schema) = AvroSchema::parse(&text) {
                m.insert(6, Arc::new(schema));
            }
        }
        m
    })
}

fn avro_lookup(id: u32) -> Result<Arc<AvroSchema>, DecodeError> {
    avro_schemas()
        .get(&id)
        .cloned()
        .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownSchema, format!("schema id {id} is unknown")))
}

fn avro_decode(upsert: bool, spec: &DecodeSpec, k: Option<&[u8]>, v: Option<&[u8]>) -> Result<Decoded, DecodeError> {
    if upsert {
        decode_upsert_avro(spec, &avro_lookup, k, v, 7, Some(1_700_000_000_000))
    } else {
        decode_debezium_avro(spec, &avro_lookup, k, v, 7)
    }
}

/// What the `avro` target decodes `data` to (None: a schema-mode input or empty).
pub fn avro_record(data: &[u8]) -> Option<Result<Decoded, DecodeError>> {
    let r = FuzzRecord::parse(data).filter(|r| r.selector & 0b11 != 0)?;
    Some(avro_decode(r.selector & 0b100_0000 != 0, &r.spec, r.key, r.value))
}

/// Target `avro`: the Avro decoders ([`decode_debezium_avro`], [`decode_upsert_avro`] with
/// selector bit 6) and the schema parser. With the selector's key and value bits both
/// clear, the rest is `schema text 0xFF datum`: any text a registry might serve parses to a
/// schema or an error, and a schema decodes any datum to a value or `invalid_avro`. Else
/// the record goes through [`check_decoded`]'s promises, and, **one meaning for both
/// formats**: when its parts decode with their schemas, the record decodes exactly as the
/// JSON they render to does through the JSON decoders.
pub fn avro(data: &[u8]) {
    let Some(r) = FuzzRecord::parse(data) else { return };
    if r.selector & 0b11 == 0 {
        let rest = &data[1..];
        let (text, datum) = match rest.iter().position(|&b| b == 0xFF) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[..0]),
        };
        let Ok(text) = std::str::from_utf8(text) else { return };
        if let Ok(schema) = AvroSchema::parse(text) {
            let first = schema.decode(datum, "value");
            if let Err(e) = &first {
                assert_eq!(e.kind, DecodeErrorKind::InvalidAvro, "{e:?}");
            }
            assert_eq!(first, schema.decode(datum, "value"), "decoding is not deterministic");
        }
        return;
    }
    let upsert = r.selector & 0b100_0000 != 0;
    let decode = move |spec: &DecodeSpec, k: Option<&[u8]>, v: Option<&[u8]>| avro_decode(upsert, spec, k, v);
    // A part as the JSON it means (None: not in the wire format, or not decodable).
    let render = |v: &[u8]| {
        let (id, datum) = freshet::source::decode::avro::wire_header(v, "value").ok()?;
        avro_lookup(id).ok()?.decode(datum, "value").ok()
    };
    check_decoded_as(&r, &decode, !upsert, &render);
    let mut spec = r.spec.clone();
    spec.max_record_bytes = usize::MAX;
    let got = decode(&spec, r.key, r.value);
    // The parts as JSON: a part that does not decode makes the comparison moot.
    let as_json = |part: Option<&[u8]>| -> Option<Option<serde_json::Value>> {
        match part.filter(|b| !b.is_empty()) {
            None => Some(None),
            Some(b) => render(b).map(Some),
        }
    };
    let (Some(key), Some(value)) = (as_json(r.key), as_json(r.value)) else { return };
    // A null datum means no key / a delete in both formats but reads differently; a record
    // whose fields are only `schema` and `payload` reads as the JsonConverter's wrapper in
    // JSON (Avro has no wrapper): no comparison for those.
    let wrapper = value
        .as_ref()
        .and_then(serde_json::Value::as_object)
        .is_some_and(|m| m.contains_key("payload") && m.keys().all(|k| k == "schema" || k == "payload"));
    if wrapper
        || value.as_ref().is_some_and(serde_json::Value::is_null)
        || key.as_ref().is_some_and(serde_json::Value::is_null)
    {
        return;
    }
    let bytes = |v: Option<serde_json::Value>| v.map(|v| serde_json::to_vec(&v).expect("JSON"));
    let (key, value) = (bytes(key), bytes(value));
    let json = if upsert {
        decode_upsert_json(&spec, key.as_deref(), value.as_deref(), 7, Some(1_700_000_000_000))
    } else {
        decode_debezium_json(&spec, key.as_deref(), value.as_deref(), 7)
    };
    match (&got, &json) {
        (Ok(a), Ok(j)) => assert_eq!(a, j, "the Avro record means something else than its JSON"),
        (Err(a), Err(j)) => assert_eq!(a.kind, j.kind, "Avro {a:?} but JSON {j:?}"),
        _ => panic!("Avro {got:?} but JSON {json:?}"),
    }
}
