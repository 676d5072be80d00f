//! The malformed-record catalogue (issue 16): kinds of bad record a real topic can hold,
//! produced through Apache Kafka between the records of a valid edit history. Each one is
//! dead-lettered with its reason and its origin (`topic[partition]@offset`), the pipeline
//! keeps going (the collection equals the oracle of the valid history), and the counters
//! reconcile (every record read is applied, superseded, a no-op, skipped or dead-lettered).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use support::kafka::*;
use support::*;

/// A record's key and value (either may be null).
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One malformed record: what it is, its key and value, and the reason it must be
/// dead-lettered with.
struct Bad {
    kind: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: &'static str,
}

fn source(lsn: u64) -> Value {
    json!({"version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": 1_700_000_000_000u64 + lsn,
           "snapshot": "false", "db": "app", "schema": "public", "table": "articles", "txId": lsn, "lsn": lsn})
}

fn row(id: Value) -> Value {
    json!({"article_id": id, "title": "t", "body": "b", "lang": "en", "status": "draft", "updated_at": 1})
}

fn event(op: Value, after: Value, lsn: u64) -> Vec<u8> {
    json!({"before": null, "after": after, "source": source(lsn), "op": op, "ts_ms": 1}).to_string().into_bytes()
}

/// A delete without `before` (its id only in the record key).
fn delete() -> Vec<u8> {
    json!({"before": null, "after": null, "source": source(10), "op": "d", "ts_ms": 1}).to_string().into_bytes()
}

fn key(id: u64) -> Option<Vec<u8>> {
    Some(format!("{{\"article_id\":{id}}}").into_bytes())
}

/// The catalogue. Ids 900_000+ are never in the valid history: nothing of a bad record may
/// reach the collection.
fn catalogue() -> Vec<Bad> {
    let good = |id: u64| event(json!("c"), row(json!(id)), 10);
    let mut deep = "[".repeat(300);
    deep.push_str(&"]".repeat(300));
    let mut truncated = good(900_003);
    truncated.truncate(truncated.len() / 2);
    let mut huge = good(900_009);
    let filler = "x".repeat(20 * 1024 * 1024);
    huge.splice(1..1, format!("\"filler\":\"{filler}\",").into_bytes());
    vec![
        Bad {
            kind: "invalid UTF-8 in the value",
            key: key(900_001),
            value: Some(b"{\"op\":\"c\",\"after\":{\"article_id\":900001,\"title\":\"\xff\xfe\"}}".to_vec()),
            reason: "invalid_utf8",
        },
        Bad {
            // A key is read when the row lacks the id (a delete without `before`: the key
            // is all there is); with the id in the row, the key is not needed nor read.
            kind: "invalid UTF-8 in the key of a delete",
            key: Some(b"{\"article_id\":\"\xc3\x28\"}".to_vec()),
            value: Some(delete()),
            reason: "invalid_utf8",
        },
        Bad { kind: "truncated JSON", key: key(900_003), value: Some(truncated), reason: "invalid_json" },
        Bad {
            kind: "trailing garbage after the JSON",
            key: key(900_004),
            value: Some([good(900_004), b" }{".to_vec()].concat()),
            reason: "invalid_json",
        },
        Bad {
            kind: "a NaN literal",
            key: key(900_005),
            value: Some(b"{\"op\":\"c\",\"after\":{\"article_id\":NaN}}".to_vec()),
            reason: "invalid_json",
        },
        Bad {
            kind: "nesting deeper than the parser allows",
            key: key(900_006),
            value: Some(deep.into_bytes()),
            reason: "invalid_json",
        },
        Bad {
            kind: "a lone surrogate escape",
            key: key(900_007),
            value: Some(br#"{"op":"c","after":{"article_id":900007,"title":"\ud800"}}"#.to_vec()),
            reason: "invalid_json",
        },
        Bad {
            kind: "a key that is not JSON, on a delete",
            key: Some(b"{\"article_id\":".to_vec()),
            value: Some(delete()),
            reason: "invalid_json",
        },
        Bad { kind: "a 20 MB value", key: key(900_009), value: Some(huge), reason: "too_large" },
        Bad { kind: "a JSON array", key: key(900_010), value: Some(b"[1,2,3]".to_vec()), reason: "not_debezium" },
        Bad { kind: "a JSON string", key: key(900_011), value: Some(b"\"hello\"".to_vec()), reason: "not_debezium" },
        Bad { kind: "a JSON number", key: key(900_012), value: Some(b"42".to_vec()), reason: "not_debezium" },
        Bad {
            kind: "the wrong envelope",
            key: key(900_013),
            value: Some(br#"{"id":900013,"text":"hi"}"#.to_vec()),
            reason: "not_debezium",
        },
        Bad {
            kind: "a schema/payload envelope whose payload is not an object",
            key: key(900_014),
            value: Some(br#"{"schema":{"type":"struct","fields":[]},"payload":"nope"}"#.to_vec()),
            reason: "not_debezium",
        },
        Bad {
            kind: "an unknown op",
            key: key(900_015),
            value: Some(event(json!("x"), row(json!(900_015)), 10)),
            reason: "unknown_op",
        },
        Bad {
            kind: "an op that is not a string",
            key: key(900_016),
            value: Some(event(json!(1), row(json!(900_016)), 10)),
            reason: "wrong_type",
        },
        Bad {
            kind: "`after` is a string",
            key: key(900_017),
            value: Some(event(json!("u"), json!("row"), 10)),
            reason: "wrong_type",
        },
        Bad {
            kind: "`after` is null in a create",
            key: key(900_018),
            value: Some(event(json!("c"), Value::Null, 10)),
            reason: "wrong_type",
        },
        Bad {
            kind: "an id that is an object",
            key: None,
            value: Some(event(json!("c"), row(json!({"n": 1})), 10)),
            reason: "wrong_type",
        },
        Bad {
            kind: "an id that is an array",
            key: None,
            value: Some(event(json!("c"), row(json!([1])), 10)),
            reason: "wrong_type",
        },
        Bad {
            // (A boolean is a valid id part: Postgres allows boolean key columns.)
            kind: "an id with a fractional part",
            key: None,
            value: Some(event(json!("c"), row(json!(2.5)), 10)),
            reason: "wrong_type",
        },
        Bad {
            kind: "a null key and no id in the row",
            key: None,
            value: Some(event(json!("c"), json!({"title": "t", "body": "b"}), 10)),
            reason: "missing_id",
        },
        Bad {
            kind: "a null id and a null key",
            key: None,
            value: Some(event(json!("c"), row(Value::Null), 10)),
            reason: "missing_id",
        },
        Bad {
            kind: "a delete with no `before` and a null key",
            key: None,
            value: Some(delete()),
            reason: "missing_id",
        },
        Bad {
            kind: "a version (source.lsn) of the wrong type",
            key: key(900_025),
            value: Some(
                json!({"before": null, "after": row(json!(900_025)), "op": "c", "ts_ms": 1,
                       "source": {"table": "articles", "schema": "public", "lsn": "abc", "ts_ms": 1}})
                .to_string()
                .into_bytes(),
            ),
            reason: "wrong_type",
        },
    ]
}

#[test]
fn every_kind_of_malformed_record_is_dead_lettered_with_its_reason_and_origin_and_the_rest_is_indexed() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = broker.topic("malformed");
    // One partition (the offsets of the bad records are known), records up to 25 MB.
    let created = block_on(admin(&broker.bootstrap).create_topics(
        &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "26214400")],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    for r in created {
        r.unwrap();
    }
    let history = random_history(16, 40, 300, false);
    let bad = catalogue();
    assert!(bad.len() >= 20, "the catalogue holds {} kinds", bad.len());

    // The valid history with a bad record after every 10th event, all in one partition.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("message.max.bytes", "26214400")
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut records: Vec<KeyValue> = Vec::new();
    let mut bad_at: BTreeMap<usize, &Bad> = BTreeMap::new();
    let mut pending = bad.iter();
    for (i, ev) in history.iter().enumerate() {
        let k = doc_of(ev).map(|id| format!("{{\"article_id\":{id}}}").into_bytes());
        let v = match ev {
            Ev::Tombstone => None,
            e => Some(e.to_json().into_bytes()),
        };
        records.push((k, v));
        if i % 10 == 9 {
            if let Some(b) = pending.next() {
                bad_at.insert(records.len(), b);
                records.push((b.key.clone(), b.value.clone()));
            }
        }
    }
    for b in pending {
        bad_at.insert(records.len(), b);
        records.push((b.key.clone(), b.value.clone()));
    }
    for (k, v) in &records {
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).partition(0);
        if let Some(k) = k {
            r = r.key(k.as_slice());
        }
        if let Some(v) = v {
            r = r.payload(v.as_slice());
        }
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(format!("{e}").contains("Queue full"), "produce: {e}");
                    r = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(high_watermarks(&broker.bootstrap, &topic, 1)[&0], records.len() as i64, "every record is in the topic");

    let dataflow = kafka_dataflow(dir.path(), &topic, None);
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    let config = kafka_config(dir.path(), "run", 2, &broker.bootstrap, &broker.group("malformed"), "");
    let summary = run_until_end(&dataflow, &config, &[]);

    // Every bad record is dead-lettered once, with its reason and origin.
    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_origin: BTreeMap<String, &Value> =
        dead.iter().map(|d| (d["origin"].as_str().unwrap_or("").to_owned(), d)).collect();
    let mut wrong = Vec::new();
    for (offset, b) in &bad_at {
        let origin = format!("{topic}[0]@{offset}");
        match by_origin.get(&origin) {
            None => wrong.push(format!("{}: not dead-lettered", b.kind)),
            Some(d) if d["reason"] != b.reason => {
                wrong.push(format!("{}: reason {} (error: {}), expected {}", b.kind, d["reason"], d["error"], b.reason))
            }
            Some(d) => {
                assert_eq!(d["stage"], "decode", "{}", b.kind);
                assert!(!d["error"].as_str().unwrap_or("").is_empty(), "{}: no error message", b.kind);
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {} kinds handled wrongly:\n{}", wrong.len(), bad.len(), wrong.join("\n"));
    // Nothing else is dead-lettered but what the valid history itself must (an
    // unchanged-TOAST body beside a changed title, which the oracle counts).
    let expected = oracle(&spec, &history, "freshet/hash-16", 16);
    let decode_stage = dead.iter().filter(|d| d["stage"] == "decode").count();
    assert_eq!(decode_stage, bad.len(), "decode dead letters: {dead:#?}");
    assert_eq!(dead.len(), bad.len() + expected.dead_lettered, "{dead:#?}");
    assert!(expected.dead_lettered > 0, "the history has records a later stage must refuse");
    for d in &dead {
        let origin = d["origin"].as_str().unwrap_or_default();
        let offset: usize =
            origin.strip_prefix(&format!("{topic}[0]@")).and_then(|o| o.parse().ok()).unwrap_or(usize::MAX);
        assert!(offset < records.len(), "a dead letter without its origin: {d}");
        assert_eq!(d["position"], offset, "{d}");
    }

    // The pipeline kept going: the collection is the valid history's, nothing of the bad.
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);

    // The counters reconcile.
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    assert_eq!(n("received"), records.len() as u64, "{summary}");
    assert_eq!(n("dead_lettered"), (bad.len() + expected.dead_lettered) as u64, "{summary}");
    assert_eq!(
        n("applied") + n("superseded") + n("noop") + n("skipped") + n("dead_lettered"),
        n("received"),
        "every record read is accounted for: {summary}"
    );
    assert_eq!(
        committed(&broker.bootstrap, &broker.group("malformed"), &topic, 1)[&0],
        records.len() as i64,
        "the offsets of the bad records are committed too"
    );
}
