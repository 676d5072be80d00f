//! Kafka helpers shared by the benchmarks: the broker (`FRESHET_KAFKA_BOOTSTRAP`, else the
//! local Apache Kafka of `scripts/services`, started if it does not answer), topic creation
//! and deletion.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The broker: `FRESHET_KAFKA_BOOTSTRAP`, else the local Apache Kafka of `scripts/services`.
pub fn bootstrap() -> String {
    if let Ok(b) = std::env::var("FRESHET_KAFKA_BOOTSTRAP") {
        if !b.is_empty() {
            return b;
        }
    }
    let local = format!("127.0.0.1:{}", std::env::var("FRESHET_KAFKA_PORT").unwrap_or_else(|_| "19092".into()));
    if std::net::TcpStream::connect(&local).is_err() {
        let st = Command::new(repo().join("scripts/services")).args(["start", "kafka"]).status().unwrap();
        assert!(st.success(), "scripts/services start kafka failed");
    }
    local
}

pub fn delete_topics(bootstrap: &str, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = rt.block_on(admin.delete_topics(&names, &AdminOptions::new()));
}

pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap()
    {
        r.unwrap();
    }
}

/// Send `rec`, waiting while the producer's queue is full.
pub fn send<K, P>(producer: &ThreadedProducer<DefaultProducerContext>, mut rec: BaseRecord<'_, K, P>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((e, r)) => {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "produce: {e}"
                );
                rec = r;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
