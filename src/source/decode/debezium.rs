//! Debezium change events as Kafka Connect's `JsonConverter` writes them, with
//! (`schemas.enable=true`: `{"schema":…,"payload":…}`) or without the schema wrapper.
//!
//! - `c`, `u`, `r` → [`ChangeOp::Upsert`] of the `after` row; `d` → [`ChangeOp::Delete`],
//!   the id read from `before` (only its id columns: with `REPLICA IDENTITY DEFAULT` the
//!   other columns hold type defaults) or else from the key; `t` → [`SourceRecord::Truncate`];
//!   `m` → [`SkipKind::Message`].
//! - A null value is a tombstone, `{"ts_ms":…}` alone a heartbeat, `{"status":"BEGIN"|"END",
//!   "id":…}` transaction metadata; anything else without `op` is rejected as not Debezium.
//! - The version is [`DecodeSpec::version_field`] (default `source.lsn`), else the
//!   record's position; the commit time is `source.ts_ms`, else the envelope's `ts_ms`.
//! - Unknown envelope and `source` fields are ignored, so every Debezium version from
//!   0.10 to 3.x decodes.

use serde_json::{Map, Value};

use super::{DecodeError, DecodeErrorKind, DecodeSpec, Decoded, SkipKind};
use crate::model::{ChangeOp, DocChange, DocId, FieldValue, Row, SourceRecord, Version, TOAST_PLACEHOLDER};

/// The TOAST placeholder bytes as a `bytea` column renders them through `JsonConverter`
/// (base64, Debezium's default `binary.handling.mode=bytes`).
const TOAST_PLACEHOLDER_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";
/// The same with `binary.handling.mode=hex`.
const TOAST_PLACEHOLDER_HEX: &str = "5f5f646562657a69756d5f756e617661696c61626c655f76616c7565";
/// An `hstore` column with `hstore.handling.mode=json`.
const TOAST_PLACEHOLDER_HSTORE_JSON: &str = r#"{"__debezium_unavailable_value":"__debezium_unavailable_value"}"#;

/// Decode one Debezium JSON record. `key` and `value` are the raw record bytes (`None` for
/// a null key or value); `position` is the record's source position (file line, partition
/// offset), used as the version when the event carries none.
pub fn decode_debezium_json(
    spec: &DecodeSpec,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    position: u64,
) -> Result<Decoded, DecodeError> {
    super::check_size(spec, key, value)?;

    let value = match value {
        Some(bytes) if !bytes.trim_ascii().is_empty() => bytes,
        _ => return Ok(Decoded::Skip(SkipKind::Tombstone)),
    };
    let envelope = unwrap_schema(parse_json(value, "value")?);
    decode_envelope(spec, envelope, &|| json_key(key), position)
}

/// The record key of a JSON record, parsed (`None`: no key, an empty or a null one).
pub(super) fn json_key(key: Option<&[u8]>) -> Result<Option<Value>, DecodeError> {
    let Some(bytes) = key.filter(|b| !b.trim_ascii().is_empty()) else {
        return Ok(None);
    };
    Ok(Some(unwrap_schema(parse_json(bytes, "record key")?)).filter(|v| !v.is_null()))
}

/// Where a record's key comes from when an id column needs it: parsed (or decoded) only
/// then, as JSON.
pub(super) type KeySource<'a> = &'a dyn Fn() -> Result<Option<Value>, DecodeError>;

/// Decode one Debezium envelope, already parsed as JSON (the value of a JSON record, or an
/// Avro record mapped to the same JSON).
pub(super) fn decode_envelope(
    spec: &DecodeSpec,
    envelope: Value,
    key: KeySource<'_>,
    position: u64,
) -> Result<Decoded, DecodeError> {
    let mut envelope = match envelope {
        Value::Null => return Ok(Decoded::Skip(SkipKind::Tombstone)),
        Value::Object(map) => map,
        other => {
            return Err(DecodeError::new(
                DecodeErrorKind::NotDebezium,
                format!("the value is {}, not a Debezium envelope object", describe(&other)),
            ))
        }
    };

    let op = match envelope.get("op") {
        None => return classify_without_op(&envelope),
        Some(op) => Op::parse(op)?,
    };
    if op == Op::Message {
        return Ok(Decoded::Skip(SkipKind::Message));
    }
    if let Some(table) = &spec.table {
        if !table_matches(table, &envelope)? {
            return Ok(Decoded::Skip(SkipKind::OtherTable));
        }
    }
    let version = version(spec, &envelope, position)?;
    let commit_ts_ms = commit_ts_ms(&envelope);

    let (doc_id, op) = match op {
        Op::Message => return Ok(Decoded::Skip(SkipKind::Message)),
        Op::Truncate => return Ok(Decoded::Record(SourceRecord::Truncate { version, position, commit_ts_ms })),
        Op::Upsert(letter) => {
            let after = match envelope.remove("after") {
                Some(Value::Object(row)) => row,
                other => {
                    let found = other.as_ref().map_or_else(|| "absent".to_owned(), describe);
                    return Err(DecodeError::new(
                        DecodeErrorKind::WrongType,
                        format!(
                            "`after` is {found} in a `{letter}` event, expected an object \
                             (the new row)"
                        ),
                    ));
                }
            };
            let doc_id = doc_id(spec, Some(&after), "after", key)?;
            let row: Row = after.into_iter().map(|(column, v)| (column, field_value(v))).collect();
            (doc_id, ChangeOp::Upsert(row))
        }
        Op::Delete => {
            let before = match envelope.get("before") {
                None | Some(Value::Null) => None,
                Some(Value::Object(row)) => Some(row),
                Some(other) => {
                    return Err(DecodeError::new(
                        DecodeErrorKind::WrongType,
                        format!("`before` is {} in a `d` event, expected an object or null", describe(other)),
                    ))
                }
            };
            (doc_id(spec, before, "before", key)?, ChangeOp::Delete)
        }
    };
    Ok(Decoded::Record(SourceRecord::Doc(DocChange {
        doc_id,
        version,
        position,
        commit_ts_ms,
        op,
        source: None,
        table: 0,
    })))
}

/// The operation of a change event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `c`, `u` or `r` (the letter, for messages).
    Upsert(char),
    Delete,
    Truncate,
    Message,
}

impl Op {
    fn parse(op: &Value) -> Result<Self, DecodeError> {
        let Value::String(s) = op else {
            return Err(DecodeError::new(
                DecodeErrorKind::WrongType,
                format!("`op` is {}, expected a string", describe(op)),
            ));
        };
        match s.as_str() {
            "c" => Ok(Op::Upsert('c')),
            "u" => Ok(Op::Upsert('u')),
            "r" => Ok(Op::Upsert('r')),
            "d" => Ok(Op::Delete),
            "t" => Ok(Op::Truncate),
            "m" => Ok(Op::Message),
            _ => Err(DecodeError::new(
                DecodeErrorKind::UnknownOp,
                format!("unknown op {:?} (expected c, u, d, r, t or m)", shorten(s)),
            )),
        }
    }
}

/// Parse JSON bytes; `what` ("value", "record key") names them in errors.
pub(super) fn parse_json(bytes: &[u8], what: &str) -> Result<Value, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| match std::str::from_utf8(bytes) {
        Err(utf8) => DecodeError::new(
            DecodeErrorKind::InvalidUtf8,
            format!("the {what} is not valid UTF-8 (invalid byte at offset {})", utf8.valid_up_to()),
        ),
        Ok(_) => DecodeError::new(DecodeErrorKind::InvalidJson, format!("the {what} is not valid JSON: {e}")),
    })
}

/// `{"schema":…,"payload":P}` (JsonConverter with `schemas.enable=true`) → `P`, with
/// Kafka Connect's semantic types resolved through the schema ([`super::connect`]: the
/// same payload the Avro converter's records give); anything else unchanged.
pub(super) fn unwrap_schema(value: Value) -> Value {
    match value {
        Value::Object(mut map)
            if map.contains_key("payload") && map.keys().all(|k| k == "schema" || k == "payload") =>
        {
            let mut payload = map.remove("payload").unwrap_or(Value::Null);
            if let Some(schema) = map.get("schema") {
                super::connect::apply_json_schema(&mut payload, schema);
            }
            payload
        }
        other => other,
    }
}

/// A value without `op`: heartbeat, transaction metadata, or not Debezium at all.
fn classify_without_op(envelope: &Map<String, Value>) -> Result<Decoded, DecodeError> {
    if envelope.len() == 1 && envelope.contains_key("ts_ms") {
        return Ok(Decoded::Skip(SkipKind::Heartbeat));
    }
    let status = envelope.get("status").and_then(Value::as_str);
    if matches!(status, Some("BEGIN" | "END")) && envelope.get("id").is_some_and(Value::is_string) {
        return Ok(Decoded::Skip(SkipKind::TransactionMetadata));
    }
    let mut fields: Vec<&str> = envelope.keys().map(String::as_str).take(8).collect();
    if envelope.len() > fields.len() {
        fields.push("…");
    }
    Err(DecodeError::new(
        DecodeErrorKind::NotDebezium,
        format!(
            "no `op` field: not a Debezium change event, heartbeat or transaction record \
             (top-level fields: {})",
            if fields.is_empty() { "none".to_owned() } else { fields.join(", ") }
        ),
    ))
}

/// Whether the event's `source` names `filter` ("table", "schema.table", or for MySQL,
/// which has no schema, "db.table").
fn table_matches(filter: &str, envelope: &Map<String, Value>) -> Result<bool, DecodeError> {
    let source = envelope.get("source").and_then(Value::as_object);
    let table = source.and_then(|s| s.get("table")).and_then(Value::as_str);
    let Some(table) = table else {
        return Err(DecodeError::new(
            DecodeErrorKind::NotDebezium,
            format!("table filter `{filter}` is set but the event has no string `source.table`"),
        ));
    };
    if filter == table {
        return Ok(true);
    }
    let namespace = source
        .and_then(|s| s.get("schema"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| source.and_then(|s| s.get("db")).and_then(Value::as_str));
    Ok(namespace.is_some_and(|ns| filter.strip_prefix(ns).and_then(|rest| rest.strip_prefix('.')) == Some(table)))
}

/// Follow a dotted path (`source.lsn`) through nested objects.
pub(super) fn lookup<'a>(envelope: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut current = envelope.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// An unsigned integer from a JSON number or a numeric string.
pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The version: `spec.version_field` when present and not null, else `position`.
fn version(spec: &DecodeSpec, envelope: &Map<String, Value>, position: u64) -> Result<Version, DecodeError> {
    let Some(path) = &spec.version_field else {
        return Ok(position);
    };
    match lookup(envelope, path) {
        None | Some(Value::Null) => Ok(position),
        Some(value) => as_u64(value).ok_or_else(|| {
            if let Some(branch) = avro_union_branch(value) {
                return avro_json_error(&format!("`{path}`"), branch);
            }
            DecodeError::new(
                DecodeErrorKind::WrongType,
                format!("version field `{path}` is {}, expected an unsigned integer", describe(value)),
            )
        }),
    }
}

/// The source commit time: `source.ts_ms`, else the envelope's `ts_ms`. Zero (old MySQL
/// snapshot events) and non-numeric values count as unknown: the commit time only feeds
/// the latency histogram and never rejects a change.
fn commit_ts_ms(envelope: &Map<String, Value>) -> Option<u64> {
    let valid = |v: &Value| as_u64(v).filter(|&ts| ts > 0);
    lookup(envelope, "source.ts_ms").and_then(valid).or_else(|| envelope.get("ts_ms").and_then(valid))
}

/// One column value: Debezium's unchanged-TOAST placeholder becomes
/// [`FieldValue::Unchanged`].
fn field_value(value: Value) -> FieldValue {
    if is_toast_placeholder(&value) {
        FieldValue::Unchanged
    } else {
        FieldValue::Value(value)
    }
}

/// The unchanged-TOAST placeholder in the shapes Debezium's PostgreSQL connector gives it
/// (`UnchangedToastedPlaceholder`, default `unavailable.value.placeholder`) as
/// `JsonConverter` renders them: text/json/xml (the string), `bytea` (base64 or hex of its
/// bytes), text and bytea arrays (a one-element list), int/bigint arrays (its bytes as
/// numbers), `hstore` (a map from it to itself, or that map as a JSON string).
fn is_toast_placeholder(value: &Value) -> bool {
    match value {
        Value::String(s) => {
            s == TOAST_PLACEHOLDER
                || s == TOAST_PLACEHOLDER_BASE64
                || s == TOAST_PLACEHOLDER_HEX
                || s == TOAST_PLACEHOLDER_HSTORE_JSON
        }
        Value::Array(items) => match items.as_slice() {
            [Value::String(s)] => s == TOAST_PLACEHOLDER || s == TOAST_PLACEHOLDER_BASE64,
            _ => {
                items.len() == TOAST_PLACEHOLDER.len()
                    && items
                        .iter()
                        .zip(TOAST_PLACEHOLDER.bytes())
                        .all(|(item, byte)| item.as_u64() == Some(u64::from(byte)))
            }
        },
        Value::Object(map) => {
            map.len() == 1 && map.get(TOAST_PLACEHOLDER).and_then(Value::as_str) == Some(TOAST_PLACEHOLDER)
        }
        _ => false,
    }
}

/// The record key's id columns, parsed only when the row lacks one.
enum Key {
    /// No key, a null key, or `{"schema":…,"payload":null}`.
    Absent,
    /// A struct key (the usual JsonConverter key: the primary key columns).
    Struct(Map<String, Value>),
    /// A primitive key (e.g. after an `ExtractField$Key` transform): the id itself when
    /// there is a single id field. (An array key is never an id.)
    Other(Value),
}

impl Key {
    fn parse(key: KeySource<'_>) -> Result<Self, DecodeError> {
        Ok(match key()? {
            None | Some(Value::Null) => Key::Absent,
            Some(Value::Object(map)) => Key::Struct(map),
            Some(other) => Key::Other(other),
        })
    }

    /// The key's value for id `field` (`single`: the only id field), if present and not null.
    fn get(&self, field: &str, single: bool) -> Option<&Value> {
        match self {
            Key::Struct(map) => map.get(field).filter(|v| !v.is_null()),
            Key::Other(v) if single && !v.is_array() => Some(v),
            _ => None,
        }
    }
}

/// The document id from the `row_name` row's id columns, each falling back to the key.
pub(super) fn doc_id(
    spec: &DecodeSpec,
    row: Option<&Map<String, Value>>,
    row_name: &str,
    key: KeySource<'_>,
) -> Result<DocId, DecodeError> {
    if spec.id_fields.is_empty() {
        return Err(DecodeError::new(DecodeErrorKind::MissingId, "no id fields are configured"));
    }
    let from_row = |field: &str| row.and_then(|r| r.get(field)).filter(|v| !v.is_null() && !is_toast_placeholder(v));
    let needs_key = spec.id_fields.iter().any(|f| from_row(f).is_none());
    let key = if needs_key { Key::parse(key)? } else { Key::Absent };
    let single = spec.id_fields.len() == 1;

    let mut id = String::new();
    for (i, field) in spec.id_fields.iter().enumerate() {
        let (value, place) = match from_row(field) {
            Some(v) => (v, format!("`{row_name}`")),
            None => match key.get(field, single) {
                Some(v) => (v, "the record key".to_owned()),
                None => return Err(missing_id(field, row, row_name, &key)),
            },
        };
        if i > 0 {
            id.push('/');
        }
        render_id_part(&mut id, value, field, &place)?;
    }
    Ok(DocId(id))
}

fn missing_id(field: &str, row: Option<&Map<String, Value>>, row_name: &str, key: &Key) -> DecodeError {
    if let Some(branch) = row.and_then(avro_row_branch) {
        return avro_json_error(&format!("`{row_name}`"), branch);
    }
    let (row_part, row_lacks) = match row.map(|r| r.get(field)) {
        None => (format!("`{row_name}` is null"), false),
        Some(None) => (format!("not in `{row_name}`"), true),
        Some(Some(Value::Null)) => (format!("null in `{row_name}`"), false),
        Some(Some(_)) => (format!("the unchanged-TOAST placeholder in `{row_name}`"), false),
    };
    let key_part = match key {
        Key::Absent => "the record has no key".to_owned(),
        Key::Struct(map) if map.get(field).is_some_and(Value::is_null) => "null in the record key".to_owned(),
        Key::Struct(_) if row_lacks => {
            return DecodeError::new(
                DecodeErrorKind::MissingId,
                format!("missing id field `{field}` in `{row_name}` and in the record key"),
            );
        }
        Key::Struct(_) => "not in the record key".to_owned(),
        Key::Other(v) => format!("the record key is {}, not an object", describe(v)),
    };
    DecodeError::new(DecodeErrorKind::MissingId, format!("missing id field `{field}`: {row_part}; {key_part}"))
}

/// Append one id column: strings as-is, integers in decimal, booleans as true/false.
fn render_id_part(out: &mut String, value: &Value, field: &str, place: &str) -> Result<(), DecodeError> {
    use std::fmt::Write as _;
    let wrong = |what: String| {
        DecodeError::new(
            DecodeErrorKind::WrongType,
            format!("id field `{field}` in {place} is {what}, expected a string, integer or boolean"),
        )
    };
    match value {
        Value::String(s) => out.push_str(s),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                match n.as_f64() {
                    // An integral float (e.g. `5.0`) within the exactly representable range.
                    Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                        let _ = write!(out, "{}", f as i64);
                    }
                    _ => return Err(wrong(format!("the number {n}, which has a fractional part"))),
                }
            }
        }
        Value::Object(_) | Value::Array(_) | Value::Null => {
            if let Some(branch) = avro_union_branch(value) {
                return Err(avro_json_error(&format!("id field `{field}`"), branch));
            }
            return Err(wrong(describe(value)));
        }
    }
    Ok(())
}

/// The branch name when a row is an Avro JSON-encoded record union
/// (`{"server.public.t.Value": {…}}`).
fn avro_row_branch(row: &Map<String, Value>) -> Option<&str> {
    let (branch, inner) = row.iter().next()?;
    (row.len() == 1 && branch.contains('.') && inner.is_object()).then_some(branch.as_str())
}

/// The branch name when `value` looks like an Avro JSON-encoded union
/// (`{"long": 5}`, `{"string": "x"}`, `{"ns.Value": {…}}`).
fn avro_union_branch(value: &Value) -> Option<&str> {
    const PRIMITIVES: [&str; 7] = ["boolean", "int", "long", "float", "double", "bytes", "string"];
    let map = value.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let (branch, _) = map.iter().next()?;
    (PRIMITIVES.contains(&branch.as_str()) || branch.contains('.')).then_some(branch.as_str())
}

fn avro_json_error(what: &str, branch: &str) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::NotDebezium,
        format!(
            "{what} is wrapped in an Avro union branch `{branch}`: this is Avro's JSON encoding \
             (e.g. kafka-avro-console-consumer output), not Debezium JsonConverter output; \
             use the Avro decoder"
        ),
    )
}

/// A short human description of a JSON value for error messages.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", shorten(s)),
        Value::Array(items) => format!("an array ({} items)", items.len()),
        Value::Object(map) => format!("an object ({} fields)", map.len()),
    }
}

/// `s`, cut to 40 characters for error messages.
fn shorten(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &s[..end]).into(),
        None => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ids: &[&str]) -> DecodeSpec {
        DecodeSpec::new(ids.iter().copied())
    }

    fn decode(spec: &DecodeSpec, key: Option<&str>, value: &str, position: u64) -> Decoded {
        decode_debezium_json(spec, key.map(str::as_bytes), Some(value.as_bytes()), position).unwrap()
    }

    fn decode_err(spec: &DecodeSpec, key: Option<&str>, value: &str) -> DecodeError {
        decode_debezium_json(spec, key.map(str::as_bytes), Some(value.as_bytes()), 1).unwrap_err()
    }

    fn doc(decoded: Decoded) -> DocChange {
        match decoded {
            Decoded::Record(SourceRecord::Doc(change)) => change,
            other => panic!("expected a doc change, got {other:?}"),
        }
    }

    fn upsert_row(change: &DocChange) -> &Row {
        match &change.op {
            ChangeOp::Upsert(row) => row,
            ChangeOp::Delete => panic!("expected an upsert, got a delete"),
        }
    }

    fn pg_event(op: &str, before: Value, after: Value) -> String {
        json!({
            "before": before,
            "after": after,
            "source": {"version": "2.7.1.Final", "connector": "postgresql", "name": "pg",
                       "ts_ms": 1_700_000_000_123u64, "snapshot": "false", "db": "db",
                       "schema": "public", "table": "articles", "txId": 7, "lsn": 4242},
            "transaction": null,
            "op": op,
            "ts_ms": 1_700_000_000_999u64,
            "ts_us": 1_700_000_000_999_000u64
        })
        .to_string()
    }

    #[test]
    fn create_update_read_become_upserts_of_after() {
        for op in ["c", "u", "r"] {
            let value = pg_event(op, Value::Null, json!({"id": 5, "title": "Hello", "n": 1.5}));
            let change = doc(decode(&spec(&["id"]), None, &value, 9));
            assert_eq!(change.doc_id, DocId("5".into()));
            assert_eq!(change.version, 4242);
            assert_eq!(change.position, 9);
            assert_eq!(change.commit_ts_ms, Some(1_700_000_000_123));
            let row = upsert_row(&change);
            assert_eq!(row.len(), 3);
            assert_eq!(row["title"], FieldValue::Value(json!("Hello")));
            assert_eq!(row["n"], FieldValue::Value(json!(1.5)));
        }
    }

    /// Found by fuzzing (`fuzz/corpus/debezium_json`): serde_json's default float parser
    /// may be one unit in the last place off, so a double column's payload did not equal
    /// the row (and the same JSON written again decoded differently).
    #[test]
    fn float_columns_are_parsed_exactly() {
        for text in [
            "2222222222222222222222222222222222222222222222",
            "0.1000000000000000055511151231257827",
            "1.7976931348623157e308",
            "4.9406564584124654e-324",
            "2.2250738585072011e-308",
        ] {
            let value = format!(r#"{{"op":"c","after":{{"id":1,"x":{text}}},"source":{{"lsn":1}}}}"#);
            let change = doc(decode(&spec(&["id"]), None, &value, 1));
            let row = upsert_row(&change);
            let FieldValue::Value(v) = &row["x"] else { panic!("{row:?}") };
            assert_eq!(v.as_f64(), text.parse::<f64>().ok(), "{text}");
        }
    }

    #[test]
    fn schema_wrapper_and_null_schema_are_unwrapped() {
        let bare = pg_event("c", Value::Null, json!({"id": 1, "title": "x"}));
        let payload: Value = serde_json::from_str(&bare).unwrap();
        let with_schema = json!({"schema": {"type": "struct"}, "payload": payload}).to_string();
        let null_schema = json!({"schema": null, "payload": payload}).to_string();
        let expected = decode(&spec(&["id"]), None, &bare, 3);
        assert_eq!(decode(&spec(&["id"]), None, &with_schema, 3), expected);
        assert_eq!(decode(&spec(&["id"]), None, &null_schema, 3), expected);
    }

    #[test]
    fn tombstones() {
        let s = spec(&["id"]);
        let tomb = Ok(Decoded::Skip(SkipKind::Tombstone));
        assert_eq!(decode_debezium_json(&s, Some(b"{\"id\":1}"), None, 1), tomb);
        assert_eq!(decode_debezium_json(&s, Some(b"{\"id\":1}"), Some(b""), 1), tomb);
        assert_eq!(decode_debezium_json(&s, None, Some(b"null"), 1), tomb);
        assert_eq!(decode_debezium_json(&s, None, Some(b" null\n"), 1), tomb);
        assert_eq!(decode_debezium_json(&s, None, Some(br#"{"schema":null,"payload":null}"#), 1), tomb);
    }

    #[test]
    fn delete_takes_only_the_id_from_before() {
        // REPLICA IDENTITY DEFAULT: before = PK + type defaults for NOT NULL columns.
        let value = pg_event("d", json!({"id": 5, "title": "", "n": 0}), Value::Null);
        let change = doc(decode(&spec(&["id"]), None, &value, 2));
        assert_eq!(change.doc_id, DocId("5".into()));
        assert_eq!(change.op, ChangeOp::Delete);
        assert_eq!(change.version, 4242);
    }

    #[test]
    fn delete_falls_back_to_the_key() {
        let value = pg_event("d", Value::Null, Value::Null);
        let key = r#"{"schema":{"type":"struct"},"payload":{"id":77}}"#;
        let change = doc(decode(&spec(&["id"]), Some(key), &value, 2));
        assert_eq!(change.doc_id, DocId("77".into()));
        assert_eq!(change.op, ChangeOp::Delete);
        // Nothing anywhere: a specific MissingId.
        let err = decode_err(&spec(&["id"]), None, &value);
        assert_eq!(err.kind, DecodeErrorKind::MissingId);
        assert_eq!(err.to_string(), "missing id field `id`: `before` is null; the record has no key");
    }

    #[test]
    fn truncate_carries_version_and_commit_time() {
        let value = json!({"source": {"ts_ms": 1559033904863u64, "schema": "public",
                                      "table": "articles", "lsn": 46523128},
                           "op": "t", "ts_ms": 1559033904961u64})
        .to_string();
        assert_eq!(
            decode(&spec(&["id"]), None, &value, 12),
            Decoded::Record(SourceRecord::Truncate {
                version: 46523128,
                position: 12,
                commit_ts_ms: Some(1559033904863)
            })
        );
    }

    #[test]
    fn message_heartbeat_and_transaction_metadata_are_skipped() {
        let s = spec(&["id"]);
        let message =
            r#"{"source":{"schema":"","table":"","lsn":1},"op":"m","message":{"prefix":"p","content":"Ymfy"}}"#;
        assert_eq!(decode(&s, None, message, 1), Decoded::Skip(SkipKind::Message));
        let heartbeat = r#"{"schema":{"type":"struct","name":"io.debezium.connector.common.Heartbeat"},"payload":{"ts_ms":1767859856843}}"#;
        assert_eq!(decode(&s, Some(r#"{"serverName":"kb"}"#), heartbeat, 1), Decoded::Skip(SkipKind::Heartbeat));
        assert_eq!(decode(&s, None, r#"{"ts_ms":1}"#, 1), Decoded::Skip(SkipKind::Heartbeat));
        for tx in [
            r#"{"status":"BEGIN","id":"571:53195829","ts_ms":1,"event_count":null,"data_collections":null}"#,
            r#"{"schema":null,"payload":{"status":"END","id":"571:53195832","event_count":2,"data_collections":[],"ts_ms":1}}"#,
        ] {
            assert_eq!(decode(&s, None, tx, 1), Decoded::Skip(SkipKind::TransactionMetadata));
        }
    }

    #[test]
    fn values_without_op_are_not_debezium() {
        // A plain row that happens to have `id` and `status` is not transaction metadata.
        let err = decode_err(&spec(&["id"]), None, r#"{"id":"o-1","status":"PENDING"}"#);
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
        let err = decode_err(&spec(&["id"]), None, r#"{"ts_ms":1,"id":2}"#);
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
        let err = decode_err(&spec(&["id"]), None, r#"{"id":1,"title":"plain row"}"#);
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
        assert!(err.message.contains("no `op` field"), "{err}");
        assert!(err.message.contains("id, title"), "{err}");
        let err = decode_err(&spec(&["id"]), None, "[1,2]");
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
        assert!(err.message.contains("an array (2 items)"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_op() {
        let err = decode_err(&spec(&["id"]), None, &pg_event("x", Value::Null, json!({"id": 1})));
        assert_eq!(err.kind, DecodeErrorKind::UnknownOp);
        assert_eq!(err.to_string(), "unknown op \"x\" (expected c, u, d, r, t or m)");
        let err = decode_err(&spec(&["id"]), None, r#"{"op":1,"after":{"id":1}}"#);
        assert_eq!(err.kind, DecodeErrorKind::WrongType);
        assert_eq!(err.kind.as_str(), "wrong_type");
    }

    #[test]
    fn update_with_before_null_is_normal() {
        let value = pg_event("u", Value::Null, json!({"id": "a-1", "title": "t"}));
        let change = doc(decode(&spec(&["id"]), None, &value, 1));
        assert_eq!(change.doc_id, DocId("a-1".into()));
    }

    #[test]
    fn toast_placeholder_becomes_unchanged() {
        let value = pg_event(
            "u",
            Value::Null,
            json!({
                "id": 1,
                "body": TOAST_PLACEHOLDER,
                "tags": [TOAST_PLACEHOLDER],
                "blob": TOAST_PLACEHOLDER_BASE64,
                "ints": TOAST_PLACEHOLDER.bytes().collect::<Vec<u8>>(),
                "kv": {TOAST_PLACEHOLDER: TOAST_PLACEHOLDER},
                "title": "still here",
                "near_miss": "__debezium_unavailable_value ",
                "list": ["a", TOAST_PLACEHOLDER],
            }),
        );
        let change = doc(decode(&spec(&["id"]), None, &value, 1));
        let row = upsert_row(&change);
        for column in ["body", "tags", "blob", "ints", "kv"] {
            assert_eq!(row[column], FieldValue::Unchanged, "{column}");
        }
        assert_eq!(row["title"], FieldValue::Value(json!("still here")));
        assert!(matches!(row["near_miss"], FieldValue::Value(_)));
        assert!(matches!(row["list"], FieldValue::Value(_)));
    }

    #[test]
    fn composite_id_joined_with_slash_in_order() {
        let value = pg_event("c", Value::Null, json!({"tenant": "acme", "id": 42, "active": true, "lang": "en"}));
        let change = doc(decode(&spec(&["tenant", "id", "active"]), None, &value, 1));
        assert_eq!(change.doc_id, DocId("acme/42/true".into()));
        // Part of the id from the key when the row lacks it.
        let value = pg_event("c", Value::Null, json!({"id": 42}));
        let change = doc(decode(&spec(&["tenant", "id"]), Some(r#"{"tenant":"acme","id":1}"#), &value, 1));
        assert_eq!(change.doc_id, DocId("acme/42".into()));
    }

    #[test]
    fn id_from_key_when_row_lacks_it() {
        let value = pg_event("c", Value::Null, json!({"title": "t"}));
        let key = r#"{"schema":{"type":"struct"},"payload":{"article_id":-3}}"#;
        let change = doc(decode(&spec(&["article_id"]), Some(key), &value, 1));
        assert_eq!(change.doc_id, DocId("-3".into()));
        // A primitive key is the id itself when there is one id field.
        let change = doc(decode(&spec(&["article_id"]), Some("\"k-9\""), &value, 1));
        assert_eq!(change.doc_id, DocId("k-9".into()));
    }

    #[test]
    fn missing_id_names_the_field() {
        let value = pg_event("c", Value::Null, json!({"title": "t"}));
        let err = decode_err(&spec(&["article_id"]), Some(r#"{"id":1}"#), &value);
        assert_eq!(err.kind, DecodeErrorKind::MissingId);
        assert_eq!(err.to_string(), "missing id field `article_id` in `after` and in the record key");
        let value = pg_event("c", Value::Null, json!({"article_id": null}));
        let err = decode_err(&spec(&["article_id"]), None, &value);
        assert_eq!(err.kind, DecodeErrorKind::MissingId);
        assert_eq!(err.to_string(), "missing id field `article_id`: null in `after`; the record has no key");
        assert_eq!(decode_err(&spec(&[]), None, &value).kind, DecodeErrorKind::MissingId);
    }

    #[test]
    fn id_of_wrong_type() {
        for (id, found) in [
            (json!({"a": 1}), "an object (1 fields)"),
            (json!([1]), "an array (1 items)"),
            (json!(1.5), "the number 1.5, which has a fractional part"),
        ] {
            let value = pg_event("c", Value::Null, json!({ "id": id }));
            let err = decode_err(&spec(&["id"]), None, &value);
            assert_eq!(err.kind, DecodeErrorKind::WrongType, "{err}");
            assert_eq!(
                err.to_string(),
                format!("id field `id` in `after` is {found}, expected a string, integer or boolean")
            );
        }
        // An integral float is an integer.
        let value = pg_event("c", Value::Null, json!({"id": 7.0}));
        assert_eq!(doc(decode(&spec(&["id"]), None, &value, 1)).doc_id, DocId("7".into()));
    }

    #[test]
    fn after_must_be_an_object() {
        for after in [Value::Null, json!("row"), json!([1])] {
            let err = decode_err(&spec(&["id"]), None, &pg_event("c", Value::Null, after));
            assert_eq!(err.kind, DecodeErrorKind::WrongType);
            assert!(err.message.starts_with("`after` is "), "{err}");
            assert!(err.message.contains("in a `c` event"), "{err}");
        }
        let err = decode_err(&spec(&["id"]), None, r#"{"op":"r","source":{}}"#);
        assert_eq!(err.to_string(), "`after` is absent in a `r` event, expected an object (the new row)");
    }

    #[test]
    fn version_from_field_string_or_position() {
        let mut value: Value = serde_json::from_str(&pg_event("c", Value::Null, json!({"id": 1}))).unwrap();
        value["source"]["lsn"] = json!("123456");
        let change = doc(decode(&spec(&["id"]), None, &value.to_string(), 5));
        assert_eq!(change.version, 123456);

        // Absent (MySQL) and null both fall back to the position.
        for lsn in [None, Some(Value::Null)] {
            let mut v = value.clone();
            match lsn {
                Some(l) => v["source"]["lsn"] = l,
                None => {
                    v["source"].as_object_mut().unwrap().remove("lsn");
                }
            }
            assert_eq!(doc(decode(&spec(&["id"]), None, &v.to_string(), 5)).version, 5);
        }
        // No version field configured: always the position.
        let mut s = spec(&["id"]);
        s.version_field = None;
        assert_eq!(doc(decode(&s, None, &value.to_string(), 8)).version, 8);
        // Another path.
        s.version_field = Some("source.txId".into());
        assert_eq!(doc(decode(&s, None, &value.to_string(), 8)).version, 7);
    }

    #[test]
    fn version_of_wrong_type() {
        for (lsn, found) in [
            (json!("0/16B3748"), "the string \"0/16B3748\""),
            (json!(-1), "the number -1"),
            (json!(true), "a boolean (true)"),
        ] {
            let mut value: Value = serde_json::from_str(&pg_event("c", Value::Null, json!({"id": 1}))).unwrap();
            value["source"]["lsn"] = lsn;
            let err = decode_err(&spec(&["id"]), None, &value.to_string());
            assert_eq!(err.kind, DecodeErrorKind::WrongType);
            assert_eq!(err.to_string(), format!("version field `source.lsn` is {found}, expected an unsigned integer"));
        }
    }

    #[test]
    fn commit_time_from_source_then_envelope() {
        let mut value: Value = serde_json::from_str(&pg_event("c", Value::Null, json!({"id": 1}))).unwrap();
        assert_eq!(doc(decode(&spec(&["id"]), None, &value.to_string(), 1)).commit_ts_ms, Some(1_700_000_000_123));
        value["source"]["ts_ms"] = json!(0);
        assert_eq!(doc(decode(&spec(&["id"]), None, &value.to_string(), 1)).commit_ts_ms, Some(1_700_000_000_999));
        value.as_object_mut().unwrap().remove("ts_ms");
        assert_eq!(doc(decode(&spec(&["id"]), None, &value.to_string(), 1)).commit_ts_ms, None);
    }

    #[test]
    fn table_filter() {
        let value = pg_event("c", Value::Null, json!({"id": 1}));
        for table in ["articles", "public.articles"] {
            let mut s = spec(&["id"]);
            s.table = Some(table.into());
            assert!(matches!(decode(&s, None, &value, 1), Decoded::Record(_)), "{table}");
        }
        for table in ["other", "private.articles", "public.art", "public"] {
            let mut s = spec(&["id"]);
            s.table = Some(table.into());
            assert_eq!(decode(&s, None, &value, 1), Decoded::Skip(SkipKind::OtherTable), "{table}");
        }
        // Truncates of other tables too.
        let mut s = spec(&["id"]);
        s.table = Some("other".into());
        let truncate = r#"{"source":{"schema":"public","table":"articles","lsn":1},"op":"t"}"#;
        assert_eq!(decode(&s, None, truncate, 1), Decoded::Skip(SkipKind::OtherTable));
        // MySQL: no schema, the database qualifies the table.
        s.table = Some("inventory.customers".into());
        let mysql = r#"{"after":{"id":1},"source":{"db":"inventory","table":"customers","pos":1},"op":"c"}"#;
        assert!(matches!(decode(&s, None, mysql, 1), Decoded::Record(_)));
        // No source.table to compare with: rejected, not silently skipped.
        let err = decode_err(&s, None, r#"{"after":{"id":1},"source":{},"op":"c"}"#);
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
    }

    #[test]
    fn unknown_fields_and_boolean_snapshot_are_tolerated() {
        let value = json!({
            "before": null, "after": {"id": 1}, "op": "r",
            "source": {"snapshot": true, "origin": "o", "origin_lsn": 5, "sequence": "[null,\"1\"]",
                       "ts_ms": 10, "ts_us": 10_000, "ts_ns": 10_000_000, "lsn": 3, "table": "t"},
            "transaction": {"id": "1:3", "total_order": 1, "data_collection_order": 1},
            "ts_ms": 11, "ts_us": 11_000, "ts_ns": 11_000_000, "future_field": [1, 2]
        });
        let change = doc(decode(&spec(&["id"]), None, &value.to_string(), 1));
        assert_eq!((change.version, change.commit_ts_ms), (3, Some(10)));
    }

    #[test]
    fn invalid_bytes() {
        let s = spec(&["id"]);
        let err = decode_debezium_json(&s, None, Some(b"{\"op\":\"c\xff\"}"), 1).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::InvalidUtf8);
        assert_eq!(err.to_string(), "the value is not valid UTF-8 (invalid byte at offset 8)");
        let err = decode_debezium_json(&s, None, Some(b"{\"op\":"), 1).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::InvalidJson);
        assert!(err.message.starts_with("the value is not valid JSON: "), "{err}");
        // A bad key only matters when the id must come from it.
        let value = pg_event("d", Value::Null, Value::Null);
        let err = decode_err(&s, Some("{oops"), &value);
        assert_eq!(err.kind, DecodeErrorKind::InvalidJson);
        assert!(err.message.starts_with("the record key is not valid JSON"), "{err}");
        let value = pg_event("c", Value::Null, json!({"id": 1}));
        assert!(matches!(decode(&s, Some("{oops"), &value, 1), Decoded::Record(_)));
    }

    #[test]
    fn too_large_is_checked_before_parsing() {
        let mut s = spec(&["id"]);
        s.max_record_bytes = 10;
        let err = decode_debezium_json(&s, Some(b"12345"), Some(b"not json!"), 1).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::TooLarge);
        assert_eq!(err.to_string(), "record is 14 bytes (key 5 + value 9), more than max_record_bytes = 10");
        assert_eq!(err.kind.as_str(), "too_large");
        assert!(!err.is_transient());
        // Exactly at the limit passes the size check.
        let err = decode_debezium_json(&s, Some(b"1"), Some(b"not json!"), 1).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::InvalidJson);
    }

    #[test]
    fn avro_json_encoding_is_named() {
        let value = r#"{"before":null,"after":{"srv.public.movies.Value":{"id":1}},"source":{"table":"movies","lsn":5},"op":"r"}"#;
        let err = decode_err(&spec(&["id"]), None, value);
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
        assert!(
            err.message.starts_with("`after` is wrapped in an Avro union branch `srv.public.movies.Value`"),
            "{err}"
        );
        let value = r#"{"before":null,"after":{"id":1},"source":{"table":"movies","lsn":{"long":5}},"op":"r"}"#;
        let err = decode_err(&spec(&["id"]), None, value);
        assert_eq!(err.kind, DecodeErrorKind::NotDebezium);
        assert!(err.message.starts_with("`source.lsn` is wrapped in an Avro union branch `long`"), "{err}");
    }

    #[test]
    fn error_kind_names() {
        use DecodeErrorKind::*;
        let names: Vec<&str> = [InvalidUtf8, InvalidJson, TooLarge, MissingId, WrongType, UnknownOp, NotDebezium]
            .iter()
            .map(DecodeErrorKind::as_str)
            .collect();
        assert_eq!(
            names,
            ["invalid_utf8", "invalid_json", "too_large", "missing_id", "wrong_type", "unknown_op", "not_debezium"]
        );
    }
}
