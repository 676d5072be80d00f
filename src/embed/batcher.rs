//! The embedding service between the dataflow and an [`Embedder`]: a bounded in-memory
//! cache keyed by content hash (one model per service), one request per distinct hash in
//! flight, and batching by count, token budget and max wait. The model runs on tokio's
//! blocking pool, never on a timely worker. Transient failures are retried with
//! exponential backoff for as long as it takes (the dataflow holds its capability
//! meanwhile); a permanent failure is isolated to the text that causes it.

use std::collections::HashMap;
use std::num::NonZeroUsize;
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
    tx: mpsc::UnboundedSender<Job>,
    inflight: Mutex<HashMap<ContentHash, Waiters>>,
    cache: Mutex<LruCache<ContentHash, Vector>>,
    metrics: Arc<Metrics>,
    max_tokens_per_text: usize,
}

impl std::fmt::Debug for EmbedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedService").field("model", &self.embedder.model_id()).finish()
    }
}

impl EmbedService {
    /// Start the batching task on `handle`.
    pub fn start(
        embedder: Arc<dyn Embedder>,
        opts: BatchOptions,
        metrics: Arc<Metrics>,
        handle: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cap = NonZeroUsize::new(opts.cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        let svc = Arc::new(Self {
            embedder,
            tx,
            inflight: Mutex::new(HashMap::new()),
            cache: Mutex::new(LruCache::new(cap)),
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

    /// Vectors in the cache for `hashes` (counted as cache hits and misses).
    pub fn cached(&self, hashes: &[ContentHash]) -> HashMap<ContentHash, Vector> {
        let mut out = HashMap::new();
        if let Ok(mut c) = self.cache.lock() {
            for h in hashes {
                if let Some(v) = c.get(h) {
                    out.insert(*h, Arc::clone(v));
                }
            }
        }
        if !hashes.is_empty() {
            self.metrics.record_cache(out.len() as u64, (hashes.len() - out.len()) as u64);
        }
        out
    }

    /// Remember a vector known from elsewhere (e.g. the collection).
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
                    for (job, v) in jobs.iter().zip(vectors) {
                        let v: Vector = v.into();
                        self.remember(job.hash, Arc::clone(&v));
                        self.resolve(&job.hash, Ok(v));
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
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    self.metrics.retries.inc();
                    self.metrics.embed_errors.get_or_create(&ErrorKindLabel { kind: "transient" }).inc();
                    self.metrics.record_error("embed", format!("embedding failed, retrying: {e}"));
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "embedding failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn batch_loop(svc: std::sync::Weak<EmbedService>, mut rx: mpsc::UnboundedReceiver<Job>, opts: BatchOptions) {
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let deadline = Instant::now() + opts.max_wait;
        let mut tokens = first.tokens;
        let mut batch = vec![first];
        while batch.len() < opts.max_texts && tokens < opts.max_tokens {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    if tokens + j.tokens > opts.max_tokens {
                        carry = Some(j);
                        break;
                    }
                    tokens += j.tokens;
                    batch.push(j);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else { return };
        let Some(svc) = svc.upgrade() else { return };
        svc.metrics.embed_queue_depth.dec_by(batch.len() as i64);
        tracing::debug!(texts = batch.len(), tokens, "embedding batch");
        tokio::spawn(async move {
            svc.run_batch(batch).await;
            drop(permit);
        });
    }
}
