//! What `/status` and the dashboard read: a sampler thread takes one [`Sample`] a second
//! (kept for 15 minutes) from the metrics and the source's progress, and refreshes the
//! gauges that are derived rather than counted (per-partition backlog, resident memory).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::{resident_memory_bytes, Metrics, PartitionLabel, RecentError, StageLabel, STAGES};
use super::window::{Percentiles, KEEP_S};
use crate::source::{now_ms, SourceProgress};

/// Seconds of samples kept (the dashboard's 15 minutes).
const SAMPLES: usize = KEEP_S as usize;
/// Window of the per-sample latency percentiles.
const SAMPLE_PERCENTILE_WINDOW_S: u64 = 60;
/// Window of `/status`'s latency percentiles.
pub const STATUS_PERCENTILE_WINDOW_S: u64 = 300;
/// Window of `/status`'s rates.
const RATE_WINDOW_S: u64 = 60;
/// Window of the per-partition read rate behind the backlog estimate.
const BACKLOG_RATE_WINDOW: usize = 10;

/// One second of the pipeline, as the dashboard charts it.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// When (ms since epoch).
    pub t: u64,
    /// Frontier lag (seconds).
    pub lag_s: f64,
    /// Commit→searchable median over the last minute.
    pub p50_s: Option<f64>,
    /// 95th percentile.
    pub p95_s: Option<f64>,
    /// 99th percentile.
    pub p99_s: Option<f64>,
    /// Records read per second.
    pub events_per_s: f64,
    /// Changes applied per second.
    pub applied_per_s: f64,
    /// Chunks embedded per second.
    pub embedded_per_s: f64,
    /// Records behind the high watermark, per `topic/partition`.
    pub backlog: BTreeMap<String, i64>,
    /// Each stage's frontier as seconds behind now (None before it has one).
    pub stage_lag_s: BTreeMap<&'static str, Option<f64>>,
    #[serde(skip)]
    totals: (u64, u64, u64),
    #[serde(skip)]
    reads: BTreeMap<(String, i32), i64>,
}

/// One partition's backlog in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionBacklog {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records behind the high watermark.
    pub records: i64,
    /// Seconds to read them at the recent rate (None when nothing was read recently).
    pub seconds: Option<f64>,
}

/// `/status`: everything an operator checks first.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// freshet's version.
    pub version: String,
    /// Embedding model id.
    pub model_id: String,
    /// Seconds since the process started.
    pub uptime_s: f64,
    /// When this was taken (ms since epoch).
    pub now_ms: u64,
    /// Frontier lag (seconds).
    pub lag_s: f64,
    /// Whether the start is over: the collection is open, the state rebuilt from it and the
    /// dataflow reading the source. Until then nothing is read, and `pending` is true (also
    /// `/ready`: 503 until then, for a readiness probe).
    pub ready: bool,
    /// Whether work is pending (starting, or the sink frontier behind the source).
    pub pending: bool,
    /// Each stage's frontier (ms since epoch; None before it has one).
    pub frontiers_ms: BTreeMap<&'static str, Option<u64>>,
    /// Broker backlog.
    pub backlog: Backlog,
    /// Rates over the last minute.
    pub rates: Rates,
    /// Commit→searchable percentiles over the last five minutes.
    pub commit_to_searchable: Percentiles,
    /// Ingestion→searchable percentiles over the last five minutes.
    pub ingest_to_searchable: Percentiles,
    /// The embedding service.
    pub embed: EmbedStatus,
    /// Entries in the dead-letter file.
    pub dead_letters: u64,
    /// Whether the embedded engine is building an index in the background (writes go on).
    pub index_build_running: bool,
    /// Counters since start.
    pub totals: serde_json::Value,
    /// The last errors, newest first.
    pub last_errors: Vec<RecentError>,
    /// What the start found of a crash and repaired (absent after a clean stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<serde_json::Value>,
}

/// Broker backlog in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Backlog {
    /// Records behind the high watermarks, all partitions.
    pub records: i64,
    /// Per partition.
    pub partitions: Vec<PartitionBacklog>,
}

/// Rates in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    /// Seconds averaged over.
    pub window_s: u64,
    /// Records read per second.
    pub events_per_s: f64,
    /// Changes applied per second.
    pub applied_per_s: f64,
    /// Chunks embedded per second.
    pub embedded_per_s: f64,
}

/// The embedding service in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct EmbedStatus {
    /// Texts waiting for a batch.
    pub queue_depth: i64,
    /// Cache hit ratio since start (None before any lookup).
    pub cache_hit_ratio: Option<f64>,
    /// Batches sent.
    pub batches: u64,
    /// Chunks embedded.
    pub chunks_embedded: u64,
}

/// The live view of one process (see module docs).
pub struct Live {
    metrics: Arc<Metrics>,
    progress: Arc<SourceProgress>,
    model_id: String,
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
    commit_failures_seen: AtomicU64,
    source_error_seen: AtomicBool,
    recovery: Mutex<Option<serde_json::Value>>,
    /// Whether the start is over (collection open, state rebuilt, the dataflow reading).
    ready: AtomicBool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("model_id", &self.model_id).finish_non_exhaustive()
    }
}

/// The sampler thread; stops when dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Live {
    /// A live view of `metrics` and `progress`.
    pub fn new(metrics: Arc<Metrics>, progress: Arc<SourceProgress>, model_id: &str) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            progress,
            model_id: model_id.to_owned(),
            started: Instant::now(),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            commit_failures_seen: AtomicU64::new(0),
            source_error_seen: AtomicBool::new(false),
            recovery: Mutex::new(None),
            ready: AtomicBool::new(false),
        })
    }

    /// The start is over: the dataflow reads the source from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether the start is over (see [`Status::ready`]).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Record what the start found of a crash (shown in `/status`).
    pub fn set_recovery(&self, recovery: serde_json::Value) {
        if let Ok(mut r) = self.recovery.lock() {
            *r = Some(recovery);
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Take a sample every second (on the second) until the returned [`Sampler`] is dropped.
    pub fn spawn_sampler(self: &Arc<Self>) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_t = Arc::clone(&stop);
        let live = Arc::clone(self);
        let thread = std::thread::Builder::new().name("freshet-sampler".into()).spawn(move || {
            live.sample();
            let mut next = now_ms() / 1000 * 1000 + 1000;
            while !stop_t.load(Ordering::Relaxed) {
                let now = now_ms();
                if now >= next {
                    live.sample();
                    next = now / 1000 * 1000 + 1000;
                } else {
                    std::thread::sleep(Duration::from_millis((next - now).min(100)));
                }
            }
        })?;
        Ok(Sampler { stop, thread: Some(thread) })
    }

    /// Take one sample now (and refresh the derived gauges).
    pub fn sample(&self) {
        let now = now_ms();
        let m = &self.metrics;
        self.note_source_errors();
        if let Some(rss) = resident_memory_bytes() {
            m.resident_memory_bytes.set(rss as i64);
        }
        let t = m.totals();
        let totals = (t.received, t.applied(), t.chunks_embedded);
        let parts = self.progress.partition_snapshot();
        let reads: BTreeMap<(String, i32), i64> = parts.iter().map(|(k, p)| (k.clone(), p.read)).collect();
        let Ok(mut samples) = self.samples.lock() else { return };
        let rate = |prev: Option<&Sample>, f: fn(&(u64, u64, u64)) -> u64| -> f64 {
            match prev {
                Some(p) if now > p.t => f(&totals).saturating_sub(f(&p.totals)) as f64 * 1000.0 / (now - p.t) as f64,
                _ => 0.0,
            }
        };
        let prev = samples.back();
        let (events_per_s, applied_per_s, embedded_per_s) =
            (rate(prev, |x| x.0), rate(prev, |x| x.1), rate(prev, |x| x.2));
        // Per-partition read rate over the last samples, for the backlog estimate.
        let older = samples.iter().rev().nth(BACKLOG_RATE_WINDOW - 1).or(samples.front());
        let mut backlog = BTreeMap::new();
        for ((topic, partition), p) in &parts {
            let label = PartitionLabel { topic: topic.clone(), partition: *partition };
            let records = if p.high_watermark >= 0 { (p.high_watermark - p.read).max(0) } else { 0 };
            m.backlog_records.get_or_create(&label).set(records);
            let per_s = older.and_then(|o| {
                let before = *o.reads.get(&(topic.clone(), *partition))?;
                (now > o.t).then(|| (p.read - before).max(0) as f64 * 1000.0 / (now - o.t) as f64)
            });
            // Nothing read lately with records waiting: no estimate (the series is absent).
            let estimate = match per_s {
                _ if records == 0 => Some(0.0),
                Some(r) if r > 0.0 => Some(records as f64 / r),
                _ => None,
            };
            match estimate {
                Some(s) => {
                    m.backlog_seconds.get_or_create(&label).set(s);
                }
                None => {
                    m.backlog_seconds.remove(&label);
                }
            }
            backlog.insert(format!("{topic}/{partition}"), records);
        }
        let p = m.commit_percentiles(SAMPLE_PERCENTILE_WINDOW_S);
        let stage_lag_s = self
            .frontiers()
            .into_iter()
            .map(|(stage, f)| (stage, f.map(|f| now.saturating_sub(f) as f64 / 1000.0)))
            .collect();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample {
            t: now,
            lag_s: m.frontier_lag_seconds.get(),
            p50_s: p.p50_s,
            p95_s: p.p95_s,
            p99_s: p.p99_s,
            events_per_s,
            applied_per_s,
            embedded_per_s,
            backlog,
            stage_lag_s,
            totals,
            reads,
        });
    }

    /// Put failed offset commits and a failed reader among the last errors (once each).
    fn note_source_errors(&self) {
        let failed = self.progress.commit_failures.load(Ordering::Relaxed);
        let seen = self.commit_failures_seen.swap(failed, Ordering::Relaxed);
        if failed > seen {
            self.metrics.record_error(
                "commit",
                format!("{} Kafka offset commit(s) failed (retried with the next commit)", failed - seen),
            );
        }
        if let Some(e) = self.progress.error.lock().ok().and_then(|g| g.clone()) {
            if !self.source_error_seen.swap(true, Ordering::Relaxed) {
                self.metrics.record_error("source", e);
            }
        }
    }

    /// Each stage's frontier (None before it has one).
    fn frontiers(&self) -> BTreeMap<&'static str, Option<u64>> {
        STAGES
            .iter()
            .map(|s| {
                let v = self.metrics.stage_frontier.get_or_create(&StageLabel { stage: s }).get();
                (*s, (v > 0.0).then(|| (v * 1000.0).round() as u64))
            })
            .collect()
    }

    /// Samples taken after `since` (ms since epoch), oldest first.
    pub fn samples_since(&self, since: u64) -> Vec<Sample> {
        self.samples.lock().map(|s| s.iter().filter(|x| x.t > since).cloned().collect()).unwrap_or_default()
    }

    /// The status now.
    pub fn status(&self) -> Status {
        self.status_over(STATUS_PERCENTILE_WINDOW_S)
    }

    /// [`Live::status`] with the latency percentiles over the last `window_s` seconds
    /// (at most the histogram window's [`super::window::KEEP_S`]).
    pub fn status_over(&self, window_s: u64) -> Status {
        let window_s = window_s.clamp(1, super::window::KEEP_S);
        let m = &self.metrics;
        let now = now_ms();
        let (rates, partitions) = {
            let samples = self.samples.lock().ok();
            let newest = samples.as_ref().and_then(|s| s.back().cloned());
            let oldest = samples.as_ref().and_then(|s| {
                s.iter()
                    .rev()
                    .find(|x| newest.as_ref().is_some_and(|n| n.t.saturating_sub(x.t) >= RATE_WINDOW_S * 1000))
                    .or(s.front())
                    .cloned()
            });
            let rate = |f: fn(&(u64, u64, u64)) -> u64| match (&oldest, &newest) {
                (Some(o), Some(n)) if n.t > o.t => {
                    f(&n.totals).saturating_sub(f(&o.totals)) as f64 * 1000.0 / (n.t - o.t) as f64
                }
                _ => 0.0,
            };
            let rates = Rates {
                window_s: RATE_WINDOW_S,
                events_per_s: rate(|x| x.0),
                applied_per_s: rate(|x| x.1),
                embedded_per_s: rate(|x| x.2),
            };
            let partitions: Vec<PartitionBacklog> = self
                .progress
                .partition_snapshot()
                .into_iter()
                .map(|((topic, partition), p)| {
                    let label = PartitionLabel { topic: topic.clone(), partition };
                    let seconds = m.backlog_seconds.get(&label).map(|g| g.get());
                    PartitionBacklog {
                        topic,
                        partition,
                        records: if p.high_watermark >= 0 { (p.high_watermark - p.read).max(0) } else { 0 },
                        seconds,
                    }
                })
                .collect();
            (rates, partitions)
        };
        let t = m.totals();
        let lookups = m.embed_cache_hits.get() + m.embed_cache_misses.get();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            model_id: self.model_id.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            now_ms: now,
            lag_s: m.frontier_lag_seconds.get(),
            ready: self.is_ready(),
            pending: !self.is_ready() || m.frontier_lag_seconds.get() > 0.0,
            frontiers_ms: self.frontiers(),
            backlog: Backlog { records: partitions.iter().map(|p| p.records).sum(), partitions },
            rates,
            commit_to_searchable: m.commit_percentiles(window_s),
            ingest_to_searchable: m.ingest_percentiles(window_s),
            embed: EmbedStatus {
                queue_depth: m.embed_queue_depth.get(),
                cache_hit_ratio: (lookups > 0).then(|| m.embed_cache_hit_ratio.get()),
                batches: t.embed_batches,
                chunks_embedded: t.chunks_embedded,
            },
            dead_letters: m.dead_letters_in_file(),
            index_build_running: m.index_build_running.get() > 0,
            totals: super::metrics::summary_json(&t),
            last_errors: m.recent_errors(),
            recovery: self.recovery.lock().ok().and_then(|r| r.clone()),
        }
    }
}
