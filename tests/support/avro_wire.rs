//! Avro records in the Confluent wire format, written by apache-avro (not by freshet, which
//! only reads them), with their schemas registered in a registry through the Confluent REST
//! API. Shared by `tests/avro_e2e.rs` and `benches/avro.rs` (included there by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

/// Register `schema` under `subject` (`POST {url}/subjects/{subject}/versions`); its id.
pub fn register_schema(url: &str, subject: &str, schema: &str) -> u32 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (status, text) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}/subjects/{subject}/versions"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .expect("the registry");
        (r.status(), r.text().await.unwrap_or_default())
    });
    assert!(status.is_success(), "registering {subject}: {status} {text}");
    serde_json::from_str::<Value>(&text).unwrap()["id"].as_u64().expect("an id") as u32
}

/// A JSON value as an Avro value to resolve against a schema (integers as longs).
pub fn avro_of(json: &Value) -> apache_avro::types::Value {
    use apache_avro::types::Value as A;
    match json {
        Value::Null => A::Null,
        Value::Bool(b) => A::Boolean(*b),
        Value::Number(n) => n.as_i64().map_or_else(|| A::Double(n.as_f64().unwrap()), A::Long),
        Value::String(s) => A::String(s.clone()),
        Value::Array(a) => A::Array(a.iter().map(avro_of).collect()),
        Value::Object(m) => A::Map(m.iter().map(|(k, v)| (k.clone(), avro_of(v))).collect()),
    }
}

/// `json` as one datum of `schema` in the wire format: byte 0, the id (big-endian), the datum.
pub fn wire(schema: &apache_avro::Schema, id: u32, json: &Value) -> Vec<u8> {
    let value = avro_of(json).resolve(schema).unwrap_or_else(|e| panic!("{json}: {e}"));
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema).build().unwrap();
    out.extend(writer.write_value_to_vec(value).unwrap());
    out
}
