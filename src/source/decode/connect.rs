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
                Semantic::Decimal { scale: scale_of(param_scale).or_else(|| scale_of(scale)).unwrap_or(0) }
            }
            (Some(VARIABLE_SCALE_DECIMAL), _) => Semantic::VariableScaleDecimal,
            (Some(JSON), _) => Semantic::Json,
            _ => Semantic::Plain,
        }
    }
}

/// The exact decimal string of an unscaled two's-complement big-endian integer and a scale
/// (`[0x04, 0xe2]`, scale 2 → `"12.50"`). The TOAST placeholder's bytes give the placeholder.
pub fn decimal_string(unscaled: &[u8], scale: u32) -> String {
    if unscaled == TOAST_PLACEHOLDER.as_bytes() {
        return TOAST_PLACEHOLDER.to_owned();
    }
    let digits = num_bigint::BigInt::from_signed_bytes_be(unscaled).to_string();
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    let scale = scale as usize;
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits.to_owned()
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
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
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
                    *value = Value::String(decimal_string(&bytes, scale));
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
    Some(decimal_string(&bytes, scale))
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
        assert_eq!(decimal_string(&[0x04, 0xe2], 2), "12.50");
        assert_eq!(decimal_string(&[0xfb, 0x1e], 2), "-12.50");
        assert_eq!(decimal_string(&[0x05], 3), "0.005");
        assert_eq!(decimal_string(&[0xfb], 3), "-0.005");
        assert_eq!(decimal_string(&[0x00], 0), "0");
        assert_eq!(decimal_string(&[], 2), "0.00");
        assert_eq!(decimal_string(&[0x7b], 0), "123");
        // 2^80, more than any machine integer.
        let mut big = vec![0x01];
        big.extend([0u8; 10]);
        assert_eq!(decimal_string(&big, 4), "120892581961462917470.6176");
        assert_eq!(decimal_string(TOAST_PLACEHOLDER.as_bytes(), 2), TOAST_PLACEHOLDER);
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
