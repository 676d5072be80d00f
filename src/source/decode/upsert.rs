//! The plain upsert format, for producers that are not Debezium: the record key names the
//! document, the value is the row as a JSON object, and a null (or empty) value deletes the
//! document (Kafka's compaction convention).
//!
//! - The id columns are read from the row, else from the key: a JSON object key (its
//!   columns), a JSON scalar key, or a key that is not JSON at all (its UTF-8 text) when
//!   there is a single id column. A delete takes its id from the key alone.
//! - The version is the record's position (the partition offset): the later record of a
//!   key wins, as in Kafka's log compaction. A delete carries no row to read a version
//!   from, so [`DecodeSpec::version_field`] is not used by this format (the dataflow file
//!   rejects `document.version` with it).
//! - The commit time is the record's timestamp (Kafka's `CreateTime`), when known.
//! - `{"schema":…,"payload":…}` (JsonConverter with schemas) is unwrapped like Debezium's.

use serde_json::Value;

use super::debezium::{describe, doc_id, json_key, parse_json, unwrap_schema, KeySource};
use super::{DecodeError, DecodeErrorKind, DecodeSpec, Decoded};
use crate::model::{ChangeOp, DocChange, FieldValue, Row, SourceRecord};

/// Decode one plain upsert record (see the module docs). `timestamp_ms` is the record's
/// timestamp, used as its commit time.
pub fn decode_upsert_json(
    spec: &DecodeSpec,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    position: u64,
    timestamp_ms: Option<u64>,
) -> Result<Decoded, DecodeError> {
    super::check_size(spec, key, value)?;
    // A key that is not JSON is its own text (a plain string key such as `article-7`).
    let key_source = || match key {
        Some(k) if !k.trim_ascii().is_empty() && serde_json::from_slice::<Value>(k).is_err() => {
            match std::str::from_utf8(k) {
                Ok(text) => Ok(Some(Value::String(text.to_owned()))),
                Err(e) => Err(DecodeError::new(
                    DecodeErrorKind::InvalidUtf8,
                    format!("the record key is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
                )),
            }
        }
        _ => json_key(key),
    };
    let row = match value.filter(|v| !v.trim_ascii().is_empty()) {
        None => Value::Null,
        Some(bytes) => unwrap_schema(parse_json(bytes, "value")?),
    };
    decode_upsert_value(spec, row, &key_source, position, timestamp_ms)
}

/// Decode one upsert record whose value is already JSON (`Null`: a delete).
pub(super) fn decode_upsert_value(
    spec: &DecodeSpec,
    value: Value,
    key: KeySource<'_>,
    position: u64,
    timestamp_ms: Option<u64>,
) -> Result<Decoded, DecodeError> {
    let commit_ts_ms = timestamp_ms.filter(|&t| t > 0);
    let row = match value {
        Value::Null => None,
        Value::Object(row) => Some(row),
        other => {
            return Err(DecodeError::new(
                DecodeErrorKind::WrongType,
                format!("the value is {}, expected an object (the row) or null (a delete)", describe(&other)),
            ))
        }
    };
    let Some(row) = row else {
        let doc_id = doc_id(spec, None, "value", key)?;
        return Ok(Decoded::Record(SourceRecord::Doc(DocChange {
            doc_id,
            version: position,
            position,
            commit_ts_ms,
            op: ChangeOp::Delete,
            source: None,
            table: 0,
        })));
    };
    let doc_id = doc_id(spec, Some(&row), "value", key)?;
    let version = position;
    let row: Row = row.into_iter().map(|(column, v)| (column, FieldValue::Value(v))).collect();
    Ok(Decoded::Record(SourceRecord::Doc(DocChange {
        doc_id,
        version,
        position,
        commit_ts_ms,
        op: ChangeOp::Upsert(row),
        source: None,
        table: 0,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DocId;

    fn spec(_: Option<&str>) -> DecodeSpec {
        DecodeSpec { version_field: None, ..DecodeSpec::new(["id"]) }
    }

    fn change(d: Decoded) -> DocChange {
        match d {
            Decoded::Record(SourceRecord::Doc(c)) => c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn row_with_id() {
        let c = change(
            decode_upsert_json(&spec(None), None, Some(br#"{"id": 7, "title": "t", "rev": 12}"#), 3, Some(99))
                .expect("decodes"),
        );
        assert_eq!(c.doc_id, DocId("7".into()));
        assert_eq!(c.version, 3, "the offset orders the changes");
        assert_eq!(c.commit_ts_ms, Some(99));
        let ChangeOp::Upsert(row) = c.op else { panic!("upsert") };
        assert_eq!(row.get("title"), Some(&FieldValue::Value(Value::String("t".into()))));
    }

    #[test]
    fn id_from_plain_string_key_and_position_as_version() {
        let c = change(
            decode_upsert_json(&spec(None), Some(b"article-7"), Some(br#"{"title": "t"}"#), 41, None).expect("decodes"),
        );
        assert_eq!(c.doc_id, DocId("article-7".into()));
        assert_eq!(c.version, 41);
    }

    #[test]
    fn null_value_deletes_the_key() {
        for value in [None, Some(&b""[..]), Some(&b"null"[..])] {
            let c = change(decode_upsert_json(&spec(None), Some(br#"{"id": "a"}"#), value, 5, None).expect("decodes"));
            assert_eq!(c.doc_id, DocId("a".into()));
            assert_eq!(c.op, ChangeOp::Delete);
            assert_eq!(c.version, 5);
        }
    }

    #[test]
    fn errors_are_named() {
        let e = decode_upsert_json(&spec(None), None, Some(b"[1,2]"), 1, None).expect_err("array");
        assert_eq!(e.kind, DecodeErrorKind::WrongType);
        let e = decode_upsert_json(&spec(None), None, Some(br#"{"title": "x"}"#), 1, None).expect_err("no id");
        assert_eq!(e.kind, DecodeErrorKind::MissingId);
        let e = decode_upsert_json(&spec(None), None, None, 1, None).expect_err("delete without key");
        assert_eq!(e.kind, DecodeErrorKind::MissingId);
        let e = decode_upsert_json(&spec(None), Some(b"k"), Some(b"{oops"), 1, None).expect_err("bad json");
        assert_eq!(e.kind, DecodeErrorKind::InvalidJson);
    }
}
