//! The embedding service between the dataflow and an [`Embedder`]: a bounded in-memory
//! cache keyed by content hash (one model per service), one request per distinct hash in
//! flight, and batching by count, token budget and max wait. A batch is formed only once a
//! request slot is free, so under backlog every batch goes out full. The model runs on
//! tokio's blocking pool, never on a timely worker.
//!
//! Failures: transient ones are retried with exponential backoff and jitter for as long as
//! it takes (the dataflow holds its capability meanwhile, so the lag shows it), waiting at
//! least what the endpoint asked (`Retry-After`). A throttled endpoint (429) gets smaller
//! batches and fewer in flight — never below `min_texts` per batch — which grow back after
//! successes ([`Pacing`]). After repeated failures a circuit breaker holds every request
//! back for a cool-down that doubles up to 30 s ([`Breaker`]). A permanent failure of a
//! batch (413, 400, …) splits it in halves until the text that causes it is alone; that
//! text is dead-lettered and the rest proceed.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::{EmbedError, Embedder};
use crate::dataflow::Time;
use crate::model::ContentHash;
use crate::telemetry::metrics::{ErrorKindLabel, Metrics};

/// A vector shared between the cache and the writers.
pub type Vector = Arc<[f32]>;

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most texts per batch.
    pub max_texts: usize,
    /// Most tokens per batch.
    pub max_tokens: usize,
    /// Longest wait for a batch to fill.
    pub max_wait: Duration,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Texts are truncated to this many tokens by the model (caps the token count).
    pub max_tokens_per_text: usize,
    /// Entries in the in-memory cache.
    pub cache_entries: usize,
    /// Smallest batch the service shrinks to when the endpoint throttles.
    pub min_texts: usize,
}

/// Consecutive failed attempts that open the circuit breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// The breaker's first cool-down; it doubles up to [`BREAKER_MAX_COOLDOWN`].
const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(30);
/// Successful batches after which a throttled batch size and concurrency grow one step.
const PACING_RECOVERY: usize = 8;

/// Batch size and requests in flight, adapted to a throttling endpoint.
struct Pacing {
    concurrency: usize,
    max_texts: usize,
    min_texts: usize,
    texts: std::sync::atomic::AtomicUsize,
    slots: Arc<Semaphore>,
    /// Slots taken out of use while throttled.
    held: Mutex<Vec<tokio::sync::OwnedSemaphorePermit>>,
    successes: std::sync::atomic::AtomicUsize,
}

impl Pacing {
    fn new(max_texts: usize, min_texts: usize, concurrency: usize) -> Self {
        let max_texts = max_texts.max(1);
        Self {
            concurrency: concurrency.max(1),
            max_texts,
            min_texts: min_texts.clamp(1, max_texts),
            texts: std::sync::atomic::AtomicUsize::new(max_texts),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            held: Mutex::new(Vec::new()),
            successes: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn texts(&self) -> usize {
        self.texts.load(Ordering::Relaxed)
    }

    /// Halve the batch size (not below the floor) and take one slot out of use (keeping one).
    fn throttled(&self) {
        self.successes.store(0, Ordering::Relaxed);
        let _ = self.texts.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some((t / 2).max(self.min_texts)));
        let Ok(mut held) = self.held.lock() else { return };
        if held.len() + 1 < self.concurrency {
            // A slot in use now is taken out at the next throttle instead.
            if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
                held.push(p);
            }
        }
    }

    /// Every [`PACING_RECOVERY`] successes: a quarter more batch size and one slot back.
    fn succeeded(&self) {
        if self.successes.fetch_add(1, Ordering::Relaxed) + 1 < PACING_RECOVERY {
            return;
        }
        self.successes.store(0, Ordering::Relaxed);
        let step = (self.max_texts / 4).max(1);
        let _ = self.texts.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some((t + step).min(self.max_texts)));
        if let Ok(mut h) = self.held.lock() {
            h.pop();
        }
    }
}

/// Holds requests back from an endpoint that keeps failing (see module docs).
#[derive(Default)]
struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
}

impl Breaker {
    /// Wait while the breaker is open.
    async fn admit(&self) {
        loop {
            let until = self.state.lock().ok().and_then(|s| s.open_until).filter(|t| *t > Instant::now());
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => return,
            }
        }
    }

    /// A failed attempt; returns the cool-down if this opened (or re-opened) the breaker.
    fn failed(&self) -> Option<Duration> {
        let mut s = self.state.lock().ok()?;
        s.failures += 1;
        if s.failures < BREAKER_THRESHOLD {
            return None;
        }
        let now = Instant::now();
        if s.open_until.is_some_and(|t| t > now) {
            return None;
        }
        s.cooldown = if s.cooldown.is_zero() { BREAKER_COOLDOWN } else { (s.cooldown * 2).min(BREAKER_MAX_COOLDOWN) };
        s.open_until = Some(now + s.cooldown);
        Some(s.cooldown)
    }

    /// A successful attempt closes the breaker.
    fn succeeded(&self) -> bool {
        let Ok(mut s) = self.state.lock() else { return false };
        let was_open = s.failures >= BREAKER_THRESHOLD;
        *s = BreakerState::default();
        was_open
    }
}

struct Job {
    hash: ContentHash,
    text: String,
    tokens: usize,
    /// The dataflow time that asked for it (the batch's span reports the range).
    time: Time,
}

type Waiters = Vec<oneshot::Sender<Result<Vector, String>>>;

/// The embedding service (see module docs).
pub struct EmbedService {
    embedder: Arc<dyn Embedder>,
    pacing: Pacing,
    breaker: Breaker,
    tx: mpsc::UnboundedSender<Job>,
    inflight: Mutex<HashMap<ContentHash, Waiters>>,
    cache: Mutex<LruCache<ContentHash, Vector>>,
    /// The persistent cache behind the in-memory one, if configured.
    disk: Option<super::disk_cache::DiskCache>,
    metrics: Arc<Metrics>,
    max_tokens_per_text: usize,
}

impl std::fmt::Debug for EmbedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedService").field("model", &self.embedder.model_id()).finish()
    }
}

impl EmbedService {
    /// Start the batching task on `handle`; `disk` is the persistent cache, if any.
    pub fn start(
        embedder: Arc<dyn Embedder>,
        opts: BatchOptions,
        disk: Option<super::disk_cache::DiskCache>,
        metrics: Arc<Metrics>,
        handle: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cap = NonZeroUsize::new(opts.cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        let svc = Arc::new(Self {
            embedder,
            pacing: Pacing::new(opts.max_texts, opts.min_texts, opts.concurrency),
            breaker: Breaker::default(),
            tx,
            inflight: Mutex::new(HashMap::new()),
            cache: Mutex::new(LruCache::new(cap)),
            disk,
            metrics,
            max_tokens_per_text: opts.max_tokens_per_text.max(1),
        });
        handle.spawn(batch_loop(Arc::downgrade(&svc), rx, opts));
        svc
    }

    /// The model id of the embedder.
    pub fn model_id(&self) -> &str {
        self.embedder.model_id()
    }

    /// The embedder's dimension.
    pub fn dimension(&self) -> usize {
        self.embedder.dimension()
    }

    /// Whether a persistent cache sits behind the in-memory one (lookups then read a file).
    pub fn has_disk_cache(&self) -> bool {
        self.disk.is_some()
    }

    /// Vectors in the caches (memory, then disk) for `hashes`, counted as cache hits and
    /// misses. Blocking (the disk cache reads its file).
    pub fn cached(&self, hashes: &[ContentHash]) -> HashMap<ContentHash, Vector> {
        let mut out = HashMap::new();
        if let Ok(mut c) = self.cache.lock() {
            for h in hashes {
                if let Some(v) = c.get(h) {
                    out.insert(*h, Arc::clone(v));
                }
            }
        }
        if let Some(disk) = &self.disk {
            let missing: Vec<ContentHash> = hashes.iter().filter(|h| !out.contains_key(h)).copied().collect();
            if !missing.is_empty() {
                match disk.get_many(self.embedder.model_id(), &missing) {
                    Ok(found) => {
                        let dim = self.embedder.dimension();
                        if let Ok(mut c) = self.cache.lock() {
                            for (h, v) in found.into_iter().filter(|(_, v)| v.len() == dim) {
                                let v: Vector = v.into();
                                c.put(h, Arc::clone(&v));
                                out.insert(h, v);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the embedding cache failed; embedding instead"),
                }
            }
        }
        if !hashes.is_empty() {
            self.metrics.record_cache(out.len() as u64, (hashes.len() - out.len()) as u64);
        }
        out
    }

    /// Remember vectors known from elsewhere (e.g. the collection), in memory and on disk.
    pub fn remember_all(&self, vectors: &[(ContentHash, Vector)]) {
        if let Ok(mut c) = self.cache.lock() {
            for (h, v) in vectors {
                c.put(*h, Arc::clone(v));
            }
        }
        self.persist(vectors);
    }

    /// Write vectors to the disk cache, if there is one.
    fn persist(&self, vectors: &[(ContentHash, Vector)]) {
        let Some(disk) = &self.disk else { return };
        let refs: Vec<(ContentHash, &[f32])> = vectors.iter().map(|(h, v)| (*h, &v[..])).collect();
        if let Err(e) = disk.put_many(self.embedder.model_id(), &refs) {
            tracing::warn!(error = %e, "writing the embedding cache failed");
        }
    }

    /// Remember a vector in memory.
    pub fn remember(&self, hash: ContentHash, v: Vector) {
        if let Ok(mut c) = self.cache.lock() {
            c.put(hash, v);
        }
    }

    /// Embed `items` (distinct hashes) for dataflow time `time`, joining requests already in
    /// flight. Each hash maps to its vector or to the reason it can never be embedded.
    pub async fn embed(
        &self,
        time: Time,
        items: Vec<(ContentHash, String)>,
    ) -> HashMap<ContentHash, Result<Vector, String>> {
        let mut receivers = Vec::with_capacity(items.len());
        let mut ready = HashMap::new();
        for (hash, text) in items {
            let (tx, rx) = oneshot::channel();
            // Check the cache under the in-flight lock: a batch caches its vectors before it
            // releases its waiters, so a hash is either cached, in flight, or new here —
            // never embedded twice.
            let first = match self.inflight.lock() {
                Ok(mut g) => {
                    if let Some(v) = self.cache.lock().ok().and_then(|mut c| c.get(&hash).cloned()) {
                        ready.insert(hash, Ok(v));
                        continue;
                    }
                    let w = g.entry(hash).or_default();
                    w.push(tx);
                    w.len() == 1
                }
                Err(_) => false,
            };
            if first {
                let tokens = self.embedder.count_tokens(&text).min(self.max_tokens_per_text);
                self.metrics.embed_queue_depth.inc();
                if self.tx.send(Job { hash, text, tokens, time }).is_err() {
                    self.metrics.embed_queue_depth.dec();
                    self.resolve(&hash, Err("embedding service stopped".into()));
                }
            }
            receivers.push((hash, rx));
        }
        let mut out = ready;
        for (hash, rx) in receivers {
            let r = rx.await.unwrap_or_else(|_| Err("embedding service stopped".into()));
            out.insert(hash, r);
        }
        out
    }

    fn resolve(&self, hash: &ContentHash, r: Result<Vector, String>) {
        let waiters = self.inflight.lock().ok().and_then(|mut g| g.remove(hash)).unwrap_or_default();
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }

    async fn run_batch(self: Arc<Self>, jobs: Vec<Job>) {
        let mut stack = vec![jobs];
        while let Some(jobs) = stack.pop() {
            let tokens: usize = jobs.iter().map(|j| j.tokens).sum();
            let time_from = jobs.iter().map(|j| j.time).min().unwrap_or_default();
            let time_to = jobs.iter().map(|j| j.time).max().unwrap_or_default();
            let span = tracing::debug_span!("embed_batch", texts = jobs.len(), tokens, time_from, time_to);
            let started = std::time::Instant::now();
            let res = self.embed_with_retry(&jobs).instrument(span).await;
            self.metrics.embed_latency.observe(started.elapsed().as_secs_f64());
            match res {
                Ok(vectors) => {
                    self.metrics.record_embed_batch(jobs.len() as u64);
                    self.metrics.embed_batch_texts.observe(jobs.len() as f64);
                    self.metrics.embed_batch_tokens.observe(tokens as f64);
                    let vectors: Vec<(ContentHash, Vector)> =
                        jobs.iter().zip(vectors).map(|(job, v)| (job.hash, v.into())).collect();
                    if self.disk.is_some() {
                        let this = Arc::clone(&self);
                        let copy = vectors.clone();
                        let _ = tokio::task::spawn_blocking(move || this.persist(&copy)).await;
                    }
                    for (hash, v) in vectors {
                        self.remember(hash, Arc::clone(&v));
                        self.resolve(&hash, Ok(v));
                    }
                }
                Err(e) if jobs.len() > 1 => {
                    tracing::warn!(error = %e, texts = jobs.len(), "embedding batch rejected; splitting to isolate the cause");
                    let mut jobs = jobs;
                    let right = jobs.split_off(jobs.len() / 2);
                    stack.push(right);
                    stack.push(jobs);
                }
                Err(e) => {
                    self.metrics.embed_errors.get_or_create(&ErrorKindLabel { kind: "permanent" }).inc();
                    self.metrics.record_error("embed", format!("a text can never be embedded: {e}"));
                    for job in &jobs {
                        self.resolve(&job.hash, Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// Embed one batch, retrying transient failures; returns a permanent error.
    async fn embed_with_retry(&self, jobs: &[Job]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            self.breaker.admit().await;
            let embedder = Arc::clone(&self.embedder);
            let texts: Vec<String> = jobs.iter().map(|j| j.text.clone()).collect();
            let res = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                embedder.embed(&refs)
            })
            .await
            .unwrap_or_else(|e| Err(EmbedError::Transient(format!("embedding task failed: {e}"))));
            let res = res.and_then(|v| {
                let dim = self.embedder.dimension();
                if v.len() != jobs.len() {
                    Err(EmbedError::Transient(format!(
                        "embedder returned {} vectors for {} texts",
                        v.len(),
                        jobs.len()
                    )))
                } else if let Some(bad) = v.iter().find(|x| x.len() != dim) {
                    Err(EmbedError::Permanent(format!(
                        "embedder returned a vector of dimension {} (expected {dim})",
                        bad.len()
                    )))
                } else {
                    Ok(v)
                }
            });
            match res {
                Ok(v) => {
                    if self.breaker.succeeded() {
                        tracing::info!("embedding endpoint answers again; circuit breaker closed");
                        self.metrics.embed_breaker_open.set(0);
                    }
                    self.pacing.succeeded();
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    self.metrics.retries.inc();
                    let throttled = matches!(e, EmbedError::Throttled { .. });
                    let kind = if throttled { "throttled" } else { "transient" };
                    self.metrics.embed_errors.get_or_create(&ErrorKindLabel { kind }).inc();
                    if throttled {
                        self.pacing.throttled();
                    } else if let Some(cooldown) = self.breaker.failed() {
                        self.metrics.embed_breaker_open.set(1);
                        self.metrics.record_error(
                            "embed",
                            format!(
                                "circuit breaker open for {} ms after repeated failures: {e}",
                                cooldown.as_millis()
                            ),
                        );
                        tracing::warn!(cooldown_ms = cooldown.as_millis() as u64, error = %e, "embedding endpoint keeps failing; holding requests back");
                    }
                    self.metrics.record_error("embed", format!("embedding failed, retrying: {e}"));
                    let wait = backoff.mul_f64(rand::random_range(0.5..1.0)).max(e.retry_after().unwrap_or_default());
                    tracing::warn!(error = %e, texts = jobs.len(), next_batch_texts = self.pacing.texts(), retry_in_ms = wait.as_millis() as u64, "embedding failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn batch_loop(svc: std::sync::Weak<EmbedService>, mut rx: mpsc::UnboundedReceiver<Job>, opts: BatchOptions) {
    let mut carry: Option<Job> = None;
    loop {
        // Take a request slot first: while every slot is busy, texts queue up and the next
        // batch leaves full.
        let Some(slots) = svc.upgrade().map(|s| Arc::clone(&s.pacing.slots)) else { return };
        let Ok(permit) = slots.acquire_owned().await else { return };
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let Some(max_texts) = svc.upgrade().map(|s| s.pacing.texts()) else { return };
        let deadline = Instant::now() + opts.max_wait;
        let mut tokens = first.tokens;
        let mut batch = vec![first];
        while batch.len() < max_texts && tokens < opts.max_tokens {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                }
            };
            let Some(j) = next else { break };
            if tokens + j.tokens > opts.max_tokens {
                carry = Some(j);
                break;
            }
            tokens += j.tokens;
            batch.push(j);
        }
        let Some(svc) = svc.upgrade() else { return };
        svc.metrics.embed_queue_depth.dec_by(batch.len() as i64);
        tracing::debug!(texts = batch.len(), tokens, "embedding batch");
        tokio::spawn(async move {
            svc.run_batch(batch).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_halves_batches_down_to_the_floor_and_successes_grow_them_back() {
        let p = Pacing::new(64, 16, 4);
        p.throttled();
        assert_eq!(p.texts(), 32);
        for _ in 0..10 {
            p.throttled();
        }
        assert_eq!(p.texts(), 16, "never below min_texts");
        assert_eq!(p.slots.available_permits(), 1, "one request slot is always kept");
        for _ in 0..(PACING_RECOVERY * 8) {
            p.succeeded();
        }
        assert_eq!(p.texts(), 64);
        assert_eq!(p.slots.available_permits(), 4);
    }

    #[tokio::test]
    async fn the_breaker_opens_after_repeated_failures_and_closes_on_success() {
        let b = Breaker::default();
        for _ in 1..BREAKER_THRESHOLD {
            assert_eq!(b.failed(), None);
        }
        assert_eq!(b.failed(), Some(BREAKER_COOLDOWN));
        let t = Instant::now();
        b.admit().await;
        assert!(t.elapsed() >= BREAKER_COOLDOWN, "requests wait out the cool-down");
        assert_eq!(b.failed(), Some(BREAKER_COOLDOWN * 2), "a failure after it re-opens for longer");
        assert!(b.succeeded());
        let t = Instant::now();
        b.admit().await;
        assert!(t.elapsed() < Duration::from_millis(1));
    }
}
