//! Kafka Connect's semantic types, one meaning for every format. A Debezium column's value
//! reaches freshet as its Connect schema's *physical* type (a `Decimal` is two's-complement
//! bytes, a `Json` column a string); what a user expects in the payload is the value it
//! stands for. The JSON decoder (when `JsonConverter` sends the schema) and the Avro decoder
//! (whose writer schema carries `connect.name`) both map values through [`Semantic`], so the
//! same row gives the same payload whichever converter Debezium ran:
//!
//! | Connect / Debezium type | payload |
//! |---|---|
//! | `org.apache.kafka.connect.data.Decimal` (Avro `decimal`) | exact decimal string, e.g. `"-12.50"` |
//! | `io.debezium.data.VariableScaleDecimal` | exact decimal string |
//! | `io.debezium.data.Json` | the JSON value (a string that is not JSON stays a string) |
//! | everything else | as `JsonConverter` writes it (times as numbers, bytes as base64) |
//!
//! The unchanged-TOAST placeholder survives every mapping unchanged, so it is recognised
//! the same way afterwards.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::model::TOAST_PLACEHOLDER;

/// The Connect name of a fixed-scale decimal.
pub const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
/// Debezium's decimal with a per-value scale (`decimal.handling.mode=precise` for a
/// `numeric` column without a declared scale): a struct `{scale, value}`.
pub const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";
/// Debezium's `json`/`jsonb` column: a string holding JSON.
pub const JSON: &str = "io.debezium.data.Json";

/// How a value of one schema node maps to the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Semantic {
    /// As the physical value says.
    Plain,
    /// Two's-complement big-endian unscaled bytes and a scale.
    Decimal {
        /// Digits after the decimal point.
        scale: u32,
    },
    /// A `{scale, value}` struct.
    VariableScaleDecimal,
    /// A string holding JSON.
    Json,
}

impl Semantic {
    /// The semantic of a schema node from its Connect name and parameters (`connect.name`
    /// and `connect.parameters` in Avro, `name` and `parameters` in a `JsonConverter`
    /// schema) or its Avro logical type.
    pub fn of(
        name: Option<&str>,
        parameters: Option<&Value>,
        logical_type: Option<&str>,
        scale: Option<&Value>,
    ) -> Self {
        let param_scale = parameters.and_then(|p| p.get("scale"));
        let scale_of = |v: Option<&Value>| -> Option<u32> {
            match v? {
                Value::Number(n) => n.as_u64().and_then(|s| u32::try_from(s).ok()),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
        };
        match (name, logical_type) {
            (Some(DECIMAL), _) | (_, Some("decimal")) => {
                // No scale is scale 0 (Avro's default); one that is not a u32 (negative,
                // garbage) is none the value can be written with: it keeps its bytes.
                let given = param_scale.is_some() || scale.is_some();
                let parsed = scale_of(param_scale).or_else(|| scale_of(scale));
                Semantic::Decimal { scale: parsed.unwrap_or(if given { u32::MAX } else { 0 }) }
            }
            (Some(VARIABLE_SCALE_DECIMAL), _) => Semantic::VariableScaleDecimal,
            (Some(JSON), _) => Semantic::Json,
            _ => Semantic::Plain,
        }
    }
}

/// The largest scale [`decimal_string`] writes out: PostgreSQL's largest display scale
/// (16,383 digits after the point), above every other database's.
pub const MAX_DECIMAL_SCALE: u32 = 16_383;
/// The most unscaled bytes [`decimal_string`] converts: PostgreSQL's largest `numeric`
/// (131,072 digits before the point and 16,383 after) takes about 61 KiB.
pub const MAX_DECIMAL_BYTES: usize = 64 * 1024;

/// The exact decimal string of an unscaled two's-complement big-endian integer and a scale
/// (`[0x04, 0xe2]`, scale 2 → `"12.50"`). The TOAST placeholder's bytes give the placeholder.
/// `None` beyond what any database sends ([`MAX_DECIMAL_SCALE`], [`MAX_DECIMAL_BYTES`]):
/// writing out a scale of a billion would take gigabytes, so such a value keeps its physical
/// form (the bytes in base64, or the `{scale, value}` struct), in every format alike.
pub fn decimal_string(unscaled: &[u8], scale: u32) -> Option<String> {
    if unscaled == TOAST_PLACEHOLDER.as_bytes() {
        return Some(TOAST_PLACEHOLDER.to_owned());
    }
    if scale > MAX_DECIMAL_SCALE || unscaled.len() > MAX_DECIMAL_BYTES {
        return None;
    }
    let digits = num_bigint::BigInt::from_signed_bytes_be(unscaled).to_string();
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    let scale = scale as usize;
    if scale == 0 {
        return Some(format!("{sign}{digits}"));
    }
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits.to_owned()
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    Some(format!("{sign}{int}.{frac}"))
}

/// Map a `JsonConverter` value (`schemas.enable=true`) through its Connect schema: the
/// payload of `{"schema": S, "payload": P}` with each semantic type resolved (see the
/// module docs). Values the schema does not describe are left as they are.
pub fn apply_json_schema(value: &mut Value, schema: &Value) {
    let Some(schema) = schema.as_object() else { return };
    let semantic = Semantic::of(schema.get("name").and_then(Value::as_str), schema.get("parameters"), None, None);
    match semantic {
        Semantic::Decimal { scale } => {
            if let Value::String(b64) = value {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes());
                if let Some(d) = bytes.ok().and_then(|b| decimal_string(&b, scale)) {
                    *value = Value::String(d);
                }
            }
            return;
        }
        Semantic::VariableScaleDecimal => {
            if let Some(d) = value.as_object().and_then(variable_scale) {
                *value = Value::String(d);
            }
            return;
        }
        Semantic::Json => {
            json_column(value);
            return;
        }
        Semantic::Plain => {}
    }
    match (schema.get("type").and_then(Value::as_str), value) {
        (Some("struct"), Value::Object(map)) => {
            let Some(fields) = schema.get("fields").and_then(Value::as_array) else { return };
            for field in fields {
                if let Some(v) = field.get("field").and_then(Value::as_str).and_then(|name| map.get_mut(name)) {
                    apply_json_schema(v, field);
                }
            }
        }
        (Some("array"), Value::Array(items)) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    apply_json_schema(item, item_schema);
                }
            }
        }
        (Some("map"), Value::Object(map)) => {
            if let Some(value_schema) = schema.get("values") {
                for v in map.values_mut() {
                    apply_json_schema(v, value_schema);
                }
            }
        }
        _ => {}
    }
}

/// A `{scale, value}` struct (the value in base64, as `JsonConverter` writes it and as the
/// Avro decoder maps bytes) → the decimal.
pub(super) fn variable_scale(map: &Map<String, Value>) -> Option<String> {
    let scale = u32::try_from(map.get("scale")?.as_u64()?).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(map.get("value")?.as_str()?).ok()?;
    decimal_string(&bytes, scale)
}

/// A JSON column: its string parsed, when it is JSON (the TOAST placeholder is not).
pub(super) fn json_column(value: &mut Value) {
    if let Value::String(text) = value {
        if let Ok(parsed) = serde_json::from_str::<Value>(text) {
            *value = parsed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_are_exact_strings() {
        let d = |b: &[u8], scale| decimal_string(b, scale).expect("a decimal");
        assert_eq!(d(&[0x04, 0xe2], 2), "12.50");
        assert_eq!(d(&[0xfb, 0x1e], 2), "-12.50");
        assert_eq!(d(&[0x05], 3), "0.005");
        assert_eq!(d(&[0xfb], 3), "-0.005");
        assert_eq!(d(&[0x00], 0), "0");
        assert_eq!(d(&[], 2), "0.00");
        assert_eq!(d(&[0x7b], 0), "123");
        // 2^80, more than any machine integer.
        let mut big = vec![0x01];
        big.extend([0u8; 10]);
        assert_eq!(d(&big, 4), "120892581961462917470.6176");
        assert_eq!(d(TOAST_PLACEHOLDER.as_bytes(), 2), TOAST_PLACEHOLDER);
        // Beyond any database: the physical form stays (a scale of 939,524,091 made a fuzz
        // input take gigabytes and seconds).
        assert_eq!(decimal_string(&[0x30, 0x39], MAX_DECIMAL_SCALE).map(|s| s.len()), Some(16_385));
        assert_eq!(decimal_string(&[0x30, 0x39], MAX_DECIMAL_SCALE + 1), None);
        assert_eq!(decimal_string(&[0x30, 0x39], 939_524_091), None);
        assert_eq!(decimal_string(&vec![0x11; MAX_DECIMAL_BYTES + 1], 2), None);
        assert!(decimal_string(&vec![0x11; MAX_DECIMAL_BYTES], 2).is_some_and(|s| s.len() > 150_000));
        let mut vsd = json!({"scale": 939_524_091, "value": "MDk="});
        let schema = json!({"type": "struct", "name": VARIABLE_SCALE_DECIMAL,
            "fields": [{"field": "scale", "type": "int32"}, {"field": "value", "type": "bytes"}]});
        apply_json_schema(&mut vsd, &schema);
        assert_eq!(vsd, json!({"scale": 939_524_091, "value": "MDk="}));
        for scale in [json!("4000000000"), json!("-3"), json!("5000000000"), json!("two"), json!(-3)] {
            let mut fixed = json!("MDk=");
            apply_json_schema(&mut fixed, &json!({"type": "bytes", "name": DECIMAL, "parameters": {"scale": scale}}));
            assert_eq!(fixed, json!("MDk="), "scale {scale}: left as its bytes, not read as another number");
        }
        let mut no_scale = json!("MDk=");
        apply_json_schema(&mut no_scale, &json!({"type": "bytes", "name": DECIMAL}));
        assert_eq!(no_scale, json!("12345"), "no scale is scale 0");
    }

    #[test]
    fn json_schema_maps_semantic_types_and_leaves_the_rest() {
        let schema = json!({"type": "struct", "fields": [
            {"field": "price", "type": "bytes", "name": DECIMAL, "parameters": {"scale": "2"}},
            {"field": "ratio", "type": "struct", "name": VARIABLE_SCALE_DECIMAL,
             "fields": [{"field": "scale", "type": "int32"}, {"field": "value", "type": "bytes"}]},
            {"field": "attrs", "type": "string", "name": JSON},
            {"field": "bad_json", "type": "string", "name": JSON},
            {"field": "raw", "type": "bytes"},
            {"field": "prices", "type": "array", "items": {"type": "bytes", "name": DECIMAL, "parameters": {"scale": "1"}}},
            {"field": "ts", "type": "int64", "name": "io.debezium.time.MicroTimestamp"}
        ]});
        let mut row = json!({
            "price": "BOI=", "ratio": {"scale": 3, "value": "+w=="}, "attrs": "{\"a\": [1, 2]}",
            "bad_json": TOAST_PLACEHOLDER, "raw": "BOI=", "prices": ["Bw==", null], "ts": 1_700_000_000_000_001_i64
        });
        apply_json_schema(&mut row, &schema);
        assert_eq!(
            row,
            json!({"price": "12.50", "ratio": "-0.005", "attrs": {"a": [1, 2]}, "bad_json": TOAST_PLACEHOLDER,
                   "raw": "BOI=", "prices": ["0.7", null], "ts": 1_700_000_000_000_001_i64})
        );
    }
}
