//! The Kafka reader operator: each timely worker reads the partitions [`owner`] gives it,
//! one librdkafka partition queue each, polled without blocking, at most
//! `max_records_per_pass` records per partition per activation.
//!
//! **Reclocking.** A pass stamps everything it read with one pipeline time (ingestion
//! milliseconds, strictly increasing per worker) and records a binding: that time → the
//! next offset of each partition it advanced. Times are totally ordered; the bindings map
//! them back to per-partition offsets.
//!
//! **Acknowledgement.** Once the sink frontier (a probe after the write operator) has
//! passed a binding's time, every record up to those offsets is in the collection, so the
//! offsets are committed to the consumer group every `commit_interval_ms` and at a clean
//! stop, by a committer thread (synchronous commits, so the result is known; the worker
//! never waits). Offsets stay due until the group confirms them: a failed commit is a
//! counted warning and is sent again. Nothing else moves the group's offsets.
//!
//! **Backpressure.** While `max_passes_in_flight` passes are unacknowledged the worker
//! pauses its partitions (consumer pause/resume), so librdkafka stops fetching and memory
//! stays bounded by the prefetch limit.
//!
//! **Frontier.** The capability follows the clock even when no records arrive, so an idle
//! or caught-up topic does not hold the frontier back.
//!
//! **Avro.** A record whose schema ids the registry client has not resolved yet
//! ([`SchemaRegistry::ready`]) is held, with the rest of its partition behind it, and read
//! again at a later pass: its offset is not passed, so nothing behind it is committed and
//! the lag shows the wait. The worker never blocks on the registry.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, Stream};

use super::client::{client_config, FreshetContext};
use super::{owner, PartitionPlan};
use crate::config::{KafkaConfig, SourceFormat};
use crate::dataflow::{Routed, Time};
use crate::source::decode::avro::{schema_ids, SchemaLookup};
use crate::source::decode::DecodeSpec;
use crate::source::registry::{Lookup, SchemaRegistry};
use crate::source::{ingest, now_ms, Decoder, RawRecord, SourceProgress};

/// Options of the Kafka reader.
#[derive(Debug, Clone)]
pub struct KafkaSourceOptions {
    /// Brokers, group, client properties.
    pub kafka: KafkaConfig,
    /// Every partition to read and where (the same list on every worker and process).
    pub plan: Vec<PartitionPlan>,
    /// Record format.
    pub format: SourceFormat,
    /// Decoding rules.
    pub decode: DecodeSpec,
    /// The schema registry client (Avro formats).
    pub registry: Option<Arc<SchemaRegistry>>,
    /// Records per partition per pass.
    pub max_records_per_pass: usize,
    /// Unacknowledged passes before the partitions are paused.
    pub max_passes_in_flight: usize,
    /// Commit acknowledged offsets to the consumer group (off for replays).
    pub commit: bool,
    /// This worker's index within its process (for [`SourceProgress`]).
    pub local_index: usize,
}

/// One owned partition.
struct Owned {
    topic: String,
    partition: i32,
    /// `topic[partition]`, for the records' origin.
    name: std::sync::Arc<str>,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<FreshetContext>,
    /// Next offset to read.
    next: i64,
    /// Stop before this offset.
    end: Option<i64>,
    /// Last offset the group confirmed (or the start: nothing to commit below it).
    committed: i64,
    /// Offset whose commit the sink has allowed but that is not committed yet.
    committable: i64,
    /// Messages taken off the queue but not read yet (waiting for their schemas, or
    /// fetched before the queue was split off), oldest first: read before the queue.
    held: VecDeque<rdkafka::message::OwnedMessage>,
}

impl Owned {
    fn done(&self) -> bool {
        self.end.is_some_and(|e| self.next >= e)
    }
}

/// The Kafka source operator (see the module docs). `sink` is the sink frontier's probe.
pub fn kafka_source<'scope>(
    scope: Scope<'scope, Time>,
    opts: KafkaSourceOptions,
    progress: Arc<SourceProgress>,
    sink: ProbeHandle<Time>,
) -> Stream<'scope, Time, Vec<Routed>> {
    let peers = scope.peers();
    let index = scope.index();
    let worker = scope.worker();
    source(scope, "KafkaSource", move |cap, info| {
        let activator = scope.activator_for(std::rc::Rc::clone(&info.address));
        let sync_activator = Arc::new(Mutex::new(worker.sync_activator_for(info.address.to_vec())));
        let local = opts.local_index;
        let mine: Vec<&PartitionPlan> =
            opts.plan.iter().enumerate().filter(|(i, _)| owner(*i, peers) == index).map(|(_, p)| p).collect();

        // Set up the consumer for the owned partitions; a failure ends the run with the error.
        let setup = || -> Result<(Arc<BaseConsumer<FreshetContext>>, Vec<Owned>), String> {
            let (mut config, redactor) =
                client_config(&opts.kafka, Some(&opts.kafka.group_id)).map_err(|e| e.to_string())?;
            // Statistics carry the brokers' high watermarks (the backlog) at no extra cost.
            config.set("statistics.interval.ms", "1000");
            let context = FreshetContext { redactor: redactor.clone(), progress: Some(Arc::clone(&progress)) };
            let consumer: BaseConsumer<FreshetContext> = config
                .create_with_context(context)
                .map_err(|e| format!("cannot create the Kafka consumer: {}", redactor.redact(&e.to_string())))?;
            let consumer = Arc::new(consumer);
            let mut tpl = TopicPartitionList::new();
            for p in &mine {
                tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.start))
                    .map_err(|e| format!("assigning {}[{}]: {e}", p.topic, p.partition))?;
            }
            consumer.assign(&tpl).map_err(|e| format!("assigning partitions: {}", redactor.redact(&e.to_string())))?;
            let mut owned = Vec::new();
            for p in &mine {
                let mut queue = consumer
                    .split_partition_queue(&p.topic, p.partition)
                    .ok_or_else(|| format!("no queue for {}[{}]", p.topic, p.partition))?;
                let wake = Arc::clone(&sync_activator);
                queue.set_nonempty_callback(move || {
                    if let Ok(a) = wake.lock() {
                        let _ = a.activate();
                    }
                });
                progress.update_partition(&p.topic, p.partition, |pp| {
                    pp.start = p.start;
                    pp.read = p.start;
                    pp.high_watermark = p.high_watermark;
                    pp.end = p.end;
                });
                owned.push(Owned {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    name: format!("{}[{}]", p.topic, p.partition).into(),
                    queue,
                    next: p.start,
                    end: p.end,
                    committed: p.start,
                    committable: p.start,
                    held: VecDeque::new(),
                });
            }
            Ok((consumer, owned))
        };
        let (mut cap, mut consumer, mut owned) = if mine.is_empty() {
            progress.finish(local);
            (None, None, Vec::new())
        } else {
            match setup() {
                Ok((c, o)) => (Some(cap), Some(c), o),
                Err(e) => {
                    tracing::error!(error = %e, "the Kafka source cannot start");
                    progress.fail(e);
                    progress.finish(local);
                    (None, None, Vec::new())
                }
            }
        };
        for o in &owned {
            tracing::info!(worker = index, topic = %o.topic, partition = o.partition, offset = o.next, "reading partition");
        }
        if let Some(c) = &consumer {
            let parts: Vec<(String, i32)> = owned.iter().map(|o| (o.topic.clone(), o.partition)).collect();
            let every = Duration::from_millis(opts.kafka.request_timeout_ms.clamp(1000, 5000));
            poll_watermarks(Arc::downgrade(c), parts, Arc::clone(&progress), every);
        }

        let mut last_time: Time = 0;
        // (time, [(owned index, next offset after the pass)]), oldest first.
        let mut bindings: VecDeque<(Time, Vec<(usize, i64)>)> = VecDeque::new();
        let mut paused = false;
        let mut last_commit = Instant::now();
        let commit_every = Duration::from_millis(opts.kafka.commit_interval_ms.max(1));
        let mut routed: Vec<Routed> = Vec::new();
        let mut last_report = Instant::now();
        let mut stop_since: Option<Instant> = None;
        let stop_commit_timeout = Duration::from_millis(opts.kafka.request_timeout_ms.max(1000));
        // The committer thread: commits in order, merging queued requests (later offsets win).
        let mut committer: Option<std::sync::mpsc::Sender<TopicPartitionList>> = consumer.as_ref().map(|c| {
            let (tx, rx) = std::sync::mpsc::channel::<TopicPartitionList>();
            let consumer = Arc::clone(c);
            let progress = Arc::clone(&progress);
            let spawned = std::thread::Builder::new().name(format!("freshet-commit-{index}")).spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut want: std::collections::BTreeMap<(String, i32), i64> = Default::default();
                    for tpl in std::iter::once(first).chain(rx.try_iter()) {
                        for e in tpl.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                let w = want.entry((e.topic().to_owned(), e.partition())).or_insert(o);
                                *w = (*w).max(o);
                            }
                        }
                    }
                    let mut tpl = TopicPartitionList::new();
                    for ((t, p), o) in &want {
                        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
                    }
                    match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => {
                            progress.commits.fetch_add(1, Ordering::Relaxed);
                            for ((t, p), o) in &want {
                                progress.update_partition(t, *p, |pp| pp.committed = pp.committed.max(*o));
                            }
                            tracing::debug!(partitions = want.len(), "offsets committed");
                        }
                        Err(e) => {
                            progress.commit_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "offset commit failed; the next commit covers it");
                        }
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the offset committer");
            }
            tx
        });

        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let Some(kc) = consumer.as_ref() else { return };
            // Serve librdkafka's callbacks (commit results, errors). Messages normally arrive
            // on the partition queues; any that reached the main queue before the split (a
            // narrow start-up window) are read before their partition's queue.
            while let Some(m) = kc.poll(Duration::ZERO) {
                match m {
                    Ok(m) => {
                        if let Some(o) = owned.iter_mut().find(|o| o.topic == m.topic() && o.partition == m.partition())
                        {
                            o.held.push_back(m.detach());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                }
            }

            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                let next: Vec<(i32, i64)> = owned.iter().map(|o| (o.partition, o.next)).collect();
                tracing::debug!(worker = index, ?next, unacknowledged_passes = bindings.len(), paused, "reader");
            }
            // Acknowledge: bindings whose time the sink frontier has passed.
            while bindings.front().is_some_and(|(t, _)| !sink.less_equal(t)) {
                if let Some((_, offsets)) = bindings.pop_front() {
                    for (i, next) in offsets {
                        if let Some(o) = owned.get_mut(i) {
                            o.committable = o.committable.max(next);
                        }
                    }
                }
            }
            let stopping = progress.stop.load(Ordering::Relaxed) || owned.iter().all(Owned::done);
            let due = last_commit.elapsed() >= commit_every;
            // What the group has confirmed (the committer thread records it), read only when
            // a commit may be sent or the stop waits for one, not on every pass.
            if opts.commit && (due || stopping) {
                let confirmed = progress.partition_snapshot();
                for o in owned.iter_mut() {
                    if let Some(p) = confirmed.get(&(o.topic.clone(), o.partition)) {
                        o.committed = o.committed.max(p.committed);
                    }
                }
            }
            let unconfirmed = owned.iter().any(|o| o.committable > o.committed);
            let final_commit = stopping && bindings.is_empty() && last_commit.elapsed() >= Duration::from_millis(100);
            if opts.commit && unconfirmed && (due || final_commit) {
                // Commit what the sink allows and the group does not confirm yet, so a
                // failed commit is sent again. The committer thread does the (blocking)
                // request; the worker never waits on the broker.
                let mut tpl = TopicPartitionList::new();
                for o in owned.iter().filter(|o| o.committable > o.committed) {
                    let _ = tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.committable));
                }
                if let Some(tx) = &committer {
                    let _ = tx.send(tpl);
                }
                last_commit = Instant::now();
            }

            if stopping {
                // Hold the capability until every pass is acknowledged and its offsets are
                // committed (or the group stays unreachable for `stop_commit_timeout`: the
                // records are then read again at the next start, which changes nothing).
                let committed_all = !opts.commit || !unconfirmed;
                let waited_enough = bindings.is_empty()
                    && *stop_since.get_or_insert_with(Instant::now) + stop_commit_timeout < Instant::now();
                if bindings.is_empty() && !committed_all && waited_enough {
                    tracing::warn!(
                        "the final offsets were not confirmed by the group; they will be read again at the next start"
                    );
                }
                if bindings.is_empty() && (committed_all || waited_enough) {
                    committer = None;
                    if owned.iter().all(Owned::done) {
                        progress.caught_up.store(true, Ordering::Relaxed);
                    }
                    progress.finish(local);
                    cap = None;
                    consumer = None;
                    owned.clear();
                } else {
                    activator.activate_after(Duration::from_millis(5));
                }
                return;
            }

            // Backpressure: pause while too many passes are unacknowledged.
            if bindings.len() >= opts.max_passes_in_flight.max(1) {
                if !paused {
                    if let Err(e) = kc.pause(&all_partitions(&owned)) {
                        tracing::warn!(error = %e, "pausing partitions failed");
                    }
                    paused = true;
                }
                activator.activate_after(Duration::from_millis(5));
                return;
            }
            if paused {
                if let Err(e) = kc.resume(&all_partitions(&owned)) {
                    tracing::warn!(error = %e, "resuming partitions failed");
                }
                paused = false;
            }

            // One pass.
            let time = now_ms().max(last_time + 1);
            c.downgrade(&time);
            last_time = time;
            let mut advanced = Vec::new();
            let mut more = false;
            let mut read = 0u64;
            let registry = opts.registry.as_deref();
            let lookup = |id: u32| registry.map_or(Lookup::Pending, |r| r.get(id)).schema(id);
            let decoder = Decoder { format: opts.format, schemas: registry.map(|_| &lookup as SchemaLookup<'_>) };
            // A record may be read once the registry client has its schemas (or knows they
            // do not exist); JSON records always can.
            let schemas_ready = |key: Option<&[u8]>, value: Option<&[u8]>| match registry {
                Some(r) if opts.format.is_avro() => r.ready(schema_ids(key, value)),
                _ => true,
            };
            for (i, o) in owned.iter_mut().enumerate() {
                if o.done() {
                    continue;
                }
                let before = o.next;
                let mut n = 0;
                let mut waiting = false;
                let mut ctx = ReadCtx { decoder, decode: &opts.decode, peers, out: &mut routed };
                let end = o.end;
                while let Some(m) = o.held.front() {
                    if !schemas_ready(m.key(), m.payload()) {
                        waiting = true;
                        break;
                    }
                    if read_one(&o.name, &mut o.next, end, m, &mut ctx) {
                        n += 1;
                    }
                    o.held.pop_front();
                }
                while !waiting && n < opts.max_records_per_pass && end.is_none_or(|e| o.next < e) {
                    let Some(result) = o.queue.poll(Duration::ZERO) else { break };
                    match result {
                        Ok(m) if !schemas_ready(m.key(), m.payload()) => {
                            o.held.push_back(m.detach());
                            waiting = true;
                        }
                        Ok(m) => {
                            if read_one(&o.name, &mut o.next, end, &m, &mut ctx) {
                                n += 1;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(topic = %o.topic, partition = o.partition, error = %e, "fetch error");
                            break;
                        }
                    }
                }
                if n == opts.max_records_per_pass {
                    more = true;
                }
                read += n as u64;
                if o.next > before {
                    advanced.push((i, o.next));
                    let next = o.next;
                    progress.update_partition(&o.topic, o.partition, |p| p.read = next);
                }
            }
            progress.records.fetch_add(read, Ordering::Relaxed);
            if !routed.is_empty() {
                output.session(&*c).give_iterator(routed.drain(..));
            }
            if !advanced.is_empty() {
                bindings.push_back((time, advanced));
            }
            // Nothing more comes at `time`: let the frontier pass it now rather than at the
            // next pass (which backpressure or the end of input may never start).
            c.downgrade(&(time + 1));
            progress.set_frontier(local, time + 1);
            if owned.iter().all(Owned::done) || more {
                activator.activate();
            } else {
                // New records wake the operator through the queues' callbacks; the tick
                // keeps the frontier following the clock and serves commits.
                activator.activate_after(Duration::from_millis(100));
            }
        }
    })
}

/// The owned partitions as a list for pause/resume.
fn all_partitions(owned: &[Owned]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for o in owned {
        tpl.add_partition(&o.topic, o.partition);
    }
    tpl
}

/// Where [`read_one`] puts what it decodes.
struct ReadCtx<'a> {
    decoder: Decoder<'a>,
    decode: &'a DecodeSpec,
    peers: usize,
    out: &'a mut Vec<Routed>,
}

/// Decode one message of partition `name` (`topic[partition]`), skipping offsets before
/// `next` or at/after `end`, and advance `next`. Returns whether it was read.
fn read_one<M: Message>(
    name: &std::sync::Arc<str>,
    next: &mut i64,
    end: Option<i64>,
    m: &M,
    ctx: &mut ReadCtx<'_>,
) -> bool {
    let offset = m.offset();
    if offset < *next || end.is_some_and(|e| offset >= e) {
        return false;
    }
    let headers: Vec<(&str, Option<&[u8]>)> = match m.headers() {
        Some(h) => (0..h.count()).filter_map(|i| h.try_get(i)).map(|h| (h.key, h.value)).collect(),
        None => Vec::new(),
    };
    let record = RawRecord {
        key: m.key(),
        value: m.payload(),
        position: offset.max(0) as u64,
        timestamp_ms: m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()),
        headers: &headers,
    };
    ingest(ctx.decoder, ctx.decode, record, Some(name), ctx.peers, ctx.out);
    *next = offset + 1;
    true
}

/// Ask the brokers for the owned partitions' high watermarks every `every` (one
/// ListOffsets request per partition), on a thread of its own until the consumer is gone or
/// the source stops. The statistics also carry them, but only for partitions being fetched:
/// with a full fetch queue (a backlog, exactly when it matters) they go stale.
fn poll_watermarks(
    consumer: std::sync::Weak<BaseConsumer<FreshetContext>>,
    parts: Vec<(String, i32)>,
    progress: Arc<SourceProgress>,
    every: Duration,
) {
    if parts.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new().name("freshet-watermarks".into()).spawn(move || loop {
        let started = Instant::now();
        for (topic, partition) in &parts {
            if progress.stop.load(Ordering::Relaxed) {
                return;
            }
            let Some(c) = consumer.upgrade() else { return };
            match c.fetch_watermarks(topic, *partition, every) {
                Ok((_, high)) => progress.update_partition(topic, *partition, |pp| {
                    pp.high_watermark = pp.high_watermark.max(high);
                }),
                Err(e) => tracing::debug!(topic = %topic, partition, error = %e, "high watermark query failed"),
            }
        }
        while started.elapsed() < every {
            if progress.stop.load(Ordering::Relaxed) || consumer.strong_count() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the high-watermark poller; the backlog comes from statistics only");
    }
}
