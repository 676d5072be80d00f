//! The Kafka source. Before the dataflow starts, [`plan`] asks the brokers (blocking, once)
//! for the topics' partitions and where each starts: the consumer group's committed offset
//! (the first record the collection does not reflect yet), or a replay position. Partitions
//! are then assigned deterministically to timely workers across all processes ([`owner`]),
//! never by the group protocol, and each worker's [`reader::kafka_source`] reads its own
//! partitions without blocking, reclocks them into the pipeline's millisecond time, and
//! commits offsets only for records the sink frontier has passed.

pub mod client;
pub mod reader;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::{KafkaConfig, StartFrom};
use client::{client_config, FreshetContext, Redactor};

/// The Kafka source could not start or read.
#[derive(Debug, Error)]
pub enum KafkaSourceError {
    /// A secret property's environment variable is not set.
    #[error("`kafka.secret_properties.\"{property}\"`: environment variable {variable} is not set")]
    MissingSecret {
        /// The librdkafka property.
        property: String,
        /// The variable.
        variable: String,
    },
    /// The client could not be created (a bad property, say).
    #[error("cannot create the Kafka client: {0}")]
    Client(String),
    /// A topic does not exist (or the broker does not answer for it).
    #[error("topic `{topic}`: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        message: String,
    },
    /// A request to the brokers failed (they are down, or refused it).
    #[error("{what}: {message}")]
    Request {
        /// What was asked.
        what: String,
        /// The broker's or client's answer (secrets scrubbed).
        message: String,
    },
    /// A replay position is malformed.
    #[error("{0}")]
    Position(String),
}

impl KafkaSourceError {
    /// Whether trying again later may help (brokers down, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(self, KafkaSourceError::Request { .. })
    }
}

/// Where reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The consumer group's committed offsets (`kafka.start_from` where there are none).
    Committed,
    /// The oldest retained records.
    Beginning,
    /// Given offsets per (topic, partition); partitions not named start at the beginning.
    Offsets(BTreeMap<(String, i32), i64>),
    /// The first records at or after this time (ms since the epoch), via the broker's
    /// offsets-for-times.
    Timestamp(i64),
}

impl StartPosition {
    /// Parse `--from-offsets` (`P:O,…` for a single topic, or `TOPIC:P:O,…`).
    pub fn parse_offsets(text: &str, topics: &[String]) -> Result<Self, KafkaSourceError> {
        let mut out = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parts: Vec<&str> = item.rsplitn(3, ':').collect();
            let bad = || {
                KafkaSourceError::Position(format!(
                    "--from-offsets: `{item}` is not PARTITION:OFFSET (or TOPIC:PARTITION:OFFSET)"
                ))
            };
            let (topic, p, o) = match parts.as_slice() {
                [o, p] if topics.len() == 1 => (topics[0].clone(), *p, *o),
                [_, _] => {
                    return Err(KafkaSourceError::Position(format!(
                        "--from-offsets: `{item}` names no topic, and the dataflow reads {} topics (use TOPIC:PARTITION:OFFSET)",
                        topics.len()
                    )))
                }
                [o, p, t] => ((*t).to_owned(), *p, *o),
                _ => return Err(bad()),
            };
            if !topics.contains(&topic) {
                return Err(KafkaSourceError::Position(format!(
                    "--from-offsets: topic `{topic}` is not a topic of the dataflow"
                )));
            }
            let p: i32 = p.parse().map_err(|_| bad())?;
            let o: i64 = o.parse().map_err(|_| bad())?;
            if p < 0 || o < 0 {
                return Err(bad());
            }
            out.insert((topic, p), o);
        }
        if out.is_empty() {
            return Err(KafkaSourceError::Position("--from-offsets: no offsets given".into()));
        }
        Ok(StartPosition::Offsets(out))
    }
}

/// One partition's reading plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// Stop before this offset (the high watermark at start), when reading to the end.
    pub end: Option<i64>,
    /// The high watermark when planned.
    pub high_watermark: i64,
}

/// The worker (global index) that owns the `i`-th partition of the plan.
pub fn owner(i: usize, peers: usize) -> usize {
    i % peers.max(1)
}

fn request(what: impl Into<String>, redactor: &Redactor) -> impl FnOnce(KafkaError) -> KafkaSourceError + '_ {
    let what = what.into();
    move |e| KafkaSourceError::Request { what, message: redactor.redact(&e.to_string()) }
}

/// How often a missing topic is reported while freshet waits for it.
const TOPIC_WAIT_REPORT: Duration = Duration::from_secs(30);

/// The partitions of `topic`, sorted. A topic that does not exist yet is waited for when
/// following (Debezium creates a table's topic with its first record, and a stack starts
/// its services in any order), with a warning every 30 s; reading to the end, it is an
/// error (there is no end to read to).
fn partitions_of(
    consumer: &BaseConsumer<FreshetContext>,
    topic: &str,
    timeout: Duration,
    to_end: bool,
    redactor: &Redactor,
) -> Result<Vec<i32>, KafkaSourceError> {
    use rdkafka::types::RDKafkaErrorCode;
    let waiting = std::time::Instant::now();
    let mut reported: Option<std::time::Instant> = None;
    loop {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(request(format!("metadata of topic `{topic}`"), redactor))?;
        let missing = match md.topics().iter().find(|t| t.name() == topic) {
            None => "not in the metadata".to_owned(),
            Some(t) => match t.error().map(RDKafkaErrorCode::from) {
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::LeaderNotAvailable) => {
                    format!("{}", RDKafkaErrorCode::UnknownTopicOrPartition)
                }
                Some(code) => {
                    return Err(KafkaSourceError::Topic { topic: topic.to_owned(), message: code.to_string() })
                }
                None if t.partitions().is_empty() => "has no partitions".to_owned(),
                None => {
                    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    partitions.sort_unstable();
                    if reported.is_some() {
                        tracing::info!(topic, waited_s = waiting.elapsed().as_secs(), "the topic exists now");
                    }
                    return Ok(partitions);
                }
            },
        };
        if to_end {
            return Err(KafkaSourceError::Topic {
                topic: topic.to_owned(),
                message: format!("{missing} (does the topic exist?)"),
            });
        }
        if reported.is_none_or(|r| r.elapsed() >= TOPIC_WAIT_REPORT) {
            tracing::warn!(
                topic,
                waited_s = waiting.elapsed().as_secs(),
                reason = %missing,
                "waiting for the topic to exist (Debezium creates a table's topic with its first record); \
                 freshet starts reading when it does"
            );
            reported = Some(std::time::Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Ask the brokers for the topics' partitions and where each starts (blocking; before the
/// dataflow runs). `to_end`: stop each partition at its current high watermark.
pub fn plan(
    cfg: &KafkaConfig,
    topics: &[String],
    start: &StartPosition,
    to_end: bool,
) -> Result<Vec<PartitionPlan>, KafkaSourceError> {
    let (config, redactor) = client_config(cfg, Some(&cfg.group_id))?;
    let context = FreshetContext { redactor: redactor.clone(), progress: None };
    let consumer: BaseConsumer<FreshetContext> =
        config.create_with_context(context).map_err(|e| KafkaSourceError::Client(redactor.redact(&e.to_string())))?;
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    let mut plans = Vec::new();
    for topic in topics {
        let partitions = partitions_of(&consumer, topic, timeout, to_end, &redactor)?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(topic, p);
        }
        let committed = match start {
            StartPosition::Committed => Some(
                consumer
                    .committed_offsets(tpl.clone(), timeout)
                    .map_err(request(format!("committed offsets of group `{}`", cfg.group_id), &redactor))?,
            ),
            _ => None,
        };
        let by_time = match start {
            StartPosition::Timestamp(ts) => {
                let mut q = TopicPartitionList::new();
                for &p in &partitions {
                    q.add_partition_offset(topic, p, Offset::Offset(*ts))
                        .map_err(request("offsets for times", &redactor))?;
                }
                Some(consumer.offsets_for_times(q, timeout).map_err(request("offsets for times", &redactor))?)
            }
            _ => None,
        };
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(request(format!("watermarks of {topic}[{p}]"), &redactor))?;
            let default_start = match cfg.start_from {
                StartFrom::Earliest => low,
                StartFrom::Latest => high,
            };
            let offset_of = |list: &TopicPartitionList| {
                list.find_partition(topic, p).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
            };
            let begin = match start {
                StartPosition::Committed => committed.as_ref().and_then(offset_of).unwrap_or(default_start),
                StartPosition::Beginning => low,
                StartPosition::Offsets(map) => map.get(&(topic.clone(), p)).copied().unwrap_or(low),
                // No record at or after the time: nothing to replay in this partition.
                StartPosition::Timestamp(_) => by_time.as_ref().and_then(offset_of).unwrap_or(high),
            };
            plans.push(PartitionPlan {
                topic: topic.clone(),
                partition: p,
                start: begin.clamp(low, high.max(low)),
                end: to_end.then_some(high),
                high_watermark: high,
            });
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_for_one_and_many_topics() {
        let one = vec!["t".to_owned()];
        let StartPosition::Offsets(m) = StartPosition::parse_offsets("0:5, 3:10", &one).expect("parse") else {
            panic!("offsets")
        };
        assert_eq!(m.get(&("t".to_owned(), 0)), Some(&5));
        assert_eq!(m.get(&("t".to_owned(), 3)), Some(&10));
        let two = vec!["a".to_owned(), "b".to_owned()];
        assert!(StartPosition::parse_offsets("0:5", &two).is_err());
        assert!(StartPosition::parse_offsets("b:1:7", &two).is_ok());
        assert!(StartPosition::parse_offsets("c:1:7", &two).is_err());
        assert!(StartPosition::parse_offsets("x:y", &one).is_err());
        assert!(StartPosition::parse_offsets("0:-1", &one).is_err());
    }

    #[test]
    fn partitions_spread_over_all_workers() {
        let owners: Vec<usize> = (0..8).map(|i| owner(i, 4)).collect();
        assert_eq!(owners, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }
}
