//! Avro vs JSON (harness = false): freshet's generated corpus (Debezium change events of
//! articles: a snapshot, one-paragraph edits, metadata flips, deletes) once as the
//! JsonConverter writes it (the bare envelope) and once as Avro in the Confluent wire
//! format (written by apache-avro with the envelope's schema, registered in the schema
//! registry of `scripts/services`, or the one `FRESHET_REGISTRY_URL` names).
//!
//! 1. **Decoding**: every record through [`freshet::source::ingest`] in this process, one
//!    core, records/s per format.
//! 2. **Kafka → collection**: each format in a topic of 4 partitions (the broker of
//!    `scripts/services` or `FRESHET_KAFKA_BOOTSTRAP`), `freshet run --until-end` with the
//!    `hash` embedder into the embedded engine with 1 worker, events/s.
//!
//! `cargo bench --profile dev --bench avro -- [--docs N] [--edits N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet::config::SourceFormat;
use freshet::source::decode::avro::AvroSchema;
use freshet::source::decode::{DecodeError, DecodeSpec};
use freshet::source::{ingest, Decoder, RawRecord};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;

mod common;
use common::kafka::{bootstrap, create_topic, delete_topics};
use common::{arg, freshet_bin, repo};
#[path = "../tests/support/avro_wire.rs"]
mod avro_wire;
use avro_wire::{register_schema, wire};

const KEY_SCHEMA: &str = r#"{"type":"record","name":"Key","namespace":"bench.public.articles","fields":[{"name":"article_id","type":"long"}],"connect.name":"bench.public.articles.Key"}"#;
const ENVELOPE_SCHEMA: &str = r#"{"type":"record","name":"Envelope","namespace":"bench.public.articles","fields":[
  {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
    {"name":"article_id","type":"long"},{"name":"title","type":"string"},{"name":"body","type":"string"},
    {"name":"lang","type":"string"},{"name":"status","type":"string"},
    {"name":"updated_at","type":{"type":"long","connect.version":1,"connect.name":"io.debezium.time.MicroTimestamp"}}],
    "connect.name":"bench.public.articles.Value"}],"default":null},
  {"name":"after","type":["null","Value"],"default":null},
  {"name":"source","type":{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[
    {"name":"version","type":"string"},{"name":"connector","type":"string"},{"name":"name","type":"string"},
    {"name":"ts_ms","type":"long"},
    {"name":"snapshot","type":[{"type":"string","connect.version":1,"connect.parameters":{"allowed":"true,last,false,incremental"},"connect.default":"false","connect.name":"io.debezium.data.Enum"},"null"],"default":"false"},
    {"name":"db","type":"string"},{"name":"sequence","type":["null","string"],"default":null},
    {"name":"schema","type":"string"},{"name":"table","type":"string"},
    {"name":"txId","type":["null","long"],"default":null},{"name":"lsn","type":["null","long"],"default":null},
    {"name":"xmin","type":["null","long"],"default":null}],
    "connect.name":"io.debezium.connector.postgresql.Source"}},
  {"name":"op","type":"string"},
  {"name":"ts_ms","type":["null","long"],"default":null},
  {"name":"transaction","type":["null",{"type":"record","name":"block","namespace":"event","fields":[
    {"name":"id","type":"string"},{"name":"total_order","type":"long"},{"name":"data_collection_order","type":"long"}],
    "connect.version":1,"connect.name":"event.block"}],"default":null}],
  "connect.version":2,"connect.name":"bench.public.articles.Envelope"}"#;

/// The registry's Confluent-compatible URL: `FRESHET_REGISTRY_URL`, else the local one of
/// `scripts/services` (started if it does not answer).
fn registry() -> String {
    if let Ok(url) = std::env::var("FRESHET_REGISTRY_URL") {
        return url.trim_end_matches('/').to_owned();
    }
    let st = Command::new(repo().join("scripts/services")).args(["start", "registry"]).status().unwrap();
    assert!(st.success(), "scripts/services start registry failed");
    "http://127.0.0.1:18081/apis/ccompat/v7".into()
}

/// One record in both formats: (partition key id, JSON key, JSON value, Avro key, Avro value).
struct Both {
    id: u64,
    json_key: Vec<u8>,
    /// None: a tombstone.
    json_value: Option<Vec<u8>>,
    avro_key: Vec<u8>,
    avro_value: Option<Vec<u8>>,
}

fn produce(bootstrap: &str, topic: &str, records: &[Both], avro: bool) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    for r in records {
        let (k, v) = if avro { (&r.avro_key, &r.avro_value) } else { (&r.json_key, &r.json_value) };
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).partition((r.id % 4) as i32).key(&k[..]);
        if let Some(v) = v {
            rec = rec.payload(&v[..]);
        }
        common::kafka::send(&producer, rec);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

fn run(dir: &Path, topic: &str, bootstrap: &str, format: &str, registry: &str) -> (f64, Value) {
    let text =
        common::articles_on_kafka(topic).replace("format = \"debezium-json\"", &format!("format = \"{format}\""));
    assert!(text.contains(format), "dataflows/articles.toml changed: update the bench");
    let dataflow = dir.join(format!("{format}.dataflow.toml"));
    std::fs::write(&dataflow, text).unwrap();
    let config = dir.join(format!("{format}.toml"));
    std::fs::write(
        &config,
        format!(
            "workers = 1\ndata_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{topic}\"\n\
             [schema_registry]\nurl = \"{registry}\"\n",
            dir.join(format!("data-{format}")).display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(freshet_bin())
        .args(["run", "--until-end", "--embedder", "hash", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "freshet run failed");
    (secs, serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benchmark skipped (run it with `cargo bench --profile dev`)");
        return;
    }
    let docs = arg("--docs", 20_000);
    let edits = arg("--edits", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let plan = freshet::workload::Plan { docs, edits, flips: edits / 10, deletes: edits / 20, seed: 7 };
    freshet::workload::write_files(&events, None, &plan).unwrap();
    let registry = registry();
    let prefix = format!(
        "bench-avro-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    let key_id = register_schema(&registry, &format!("{prefix}-key"), KEY_SCHEMA);
    let value_id = register_schema(&registry, &format!("{prefix}-value"), ENVELOPE_SCHEMA);
    let key_schema = apache_avro::Schema::parse_str(KEY_SCHEMA).unwrap();
    let envelope = apache_avro::Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let records: Vec<Both> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let row = if v["after"].is_object() { &v["after"] } else { &v["before"] };
            let id = row["article_id"].as_u64().unwrap_or(0);
            let key = serde_json::json!({ "article_id": id });
            Both {
                id,
                json_key: key.to_string().into_bytes(),
                json_value: (!v.is_null()).then(|| line.as_bytes().to_vec()),
                avro_key: wire(&key_schema, key_id, &key),
                avro_value: (!v.is_null()).then(|| wire(&envelope, value_id, &v)),
            }
        })
        .collect();
    let len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
    let bytes = |avro: bool| -> usize {
        records
            .iter()
            .map(|r| if avro { r.avro_key.len() + len(&r.avro_value) } else { r.json_key.len() + len(&r.json_value) })
            .sum()
    };
    println!(
        "{} records: JSON {:.1} MB, Avro {:.1} MB",
        records.len(),
        bytes(false) as f64 / 1e6,
        bytes(true) as f64 / 1e6
    );

    // 1. Decoding alone (the schemas as the registry client holds them).
    let schemas = [(key_id, KEY_SCHEMA), (value_id, ENVELOPE_SCHEMA)]
        .map(|(id, text)| (id, Arc::new(AvroSchema::parse(text).unwrap())));
    let lookup = |id: u32| -> Result<Arc<AvroSchema>, DecodeError> {
        Ok(Arc::clone(&schemas.iter().find(|(i, _)| *i == id).expect("a registered id").1))
    };
    let mut spec = DecodeSpec::new(["article_id"]);
    spec.version_field = Some("source.lsn".into());
    spec.table = Some("public.articles".into());
    for (format, avro) in [(SourceFormat::DebeziumJson, false), (SourceFormat::DebeziumAvro, true)] {
        let decoder = Decoder { format, schemas: avro.then_some(&lookup as _) };
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            let mut out = Vec::with_capacity(records.len());
            for (i, r) in records.iter().enumerate() {
                let (key, value) = if avro { (&r.avro_key, &r.avro_value) } else { (&r.json_key, &r.json_value) };
                let raw = RawRecord {
                    key: Some(key),
                    value: value.as_deref(),
                    position: i as u64,
                    timestamp_ms: None,
                    headers: &[],
                };
                ingest(decoder, &spec, raw, None, 1, &mut out);
            }
            best = best.min(start.elapsed().as_secs_f64());
            let dead = out.iter().filter(|o| matches!(o.item, freshet::dataflow::Ingested::Dead(_))).count();
            assert_eq!(dead, 0, "{format:?}: dead letters");
        }
        println!("decode {}: {:.0} records/s (best of 3)", format.as_str(), records.len() as f64 / best);
    }

    // 2. Kafka → collection.
    let bootstrap = bootstrap();
    let mut topics = Vec::new();
    for (format, avro) in [("debezium-json", false), ("debezium-avro", true)] {
        let topic = format!("{prefix}-{format}");
        topics.push(topic.clone());
        create_topic(&bootstrap, &topic, 4);
        produce(&bootstrap, &topic, &records, avro);
        let (secs, summary) = run(dir.path(), &topic, &bootstrap, format, &registry);
        println!(
            "kafka→collection {format}, 1 worker: {} events in {secs:.1}s = {:.0} events/s; chunks embedded {}",
            records.len(),
            records.len() as f64 / secs,
            summary["chunks_embedded"]
        );
    }
    delete_topics(&bootstrap, &topics);
}
