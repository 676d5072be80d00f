//! The runtime: opens the embedder and the sink, rebuilds state from the collection, starts
//! tokio (I/O, embedding, the metrics endpoint) and the timely workers, drives them until
//! the input is done (or a stop is asked), and reports the counters.
//!
//! Timely workers never block: the writer and the embedder run on tokio, and wake the
//! dataflow's write operator with a `SyncActivator` when the sink acknowledges a time.

pub mod bootstrap;
pub mod progress;
pub mod reconcile;
pub mod reindex;
pub mod safety;
pub mod store;
pub mod table_store;
pub mod verify;
pub mod writer;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::SinkKind;
use crate::config::SourceKind;
use crate::config::{DataflowSpec, EmbedderKind, EmbedderSpec, RuntimeConfig};
use crate::dataflow::operators::doc_state::InitialState;
use crate::dataflow::pipeline::{SizeKind, SizeObserver, StageProbes};
use crate::dataflow::state::DocShape;
use crate::dataflow::tables::TableState;
use crate::dataflow::{Tally, Time};
use crate::embed::batcher::{BatchOptions, EmbedService};
use crate::embed::hash::HashEmbedder;
use crate::embed::http::{HttpApi, HttpEmbedder, HttpOptions};
use crate::embed::local::LocalMiniLm;
use crate::embed::Embedder;
use crate::model::collection_namespace;
use crate::sink::embedded::EmbeddedCatalog;
use crate::sink::qdrant::QdrantCatalog;
use crate::sink::{open_for_writing, Catalog, CollectionParams, VectorSink};
use crate::source::decode::DecodeSpec;
use crate::source::file::{file_source, FileSourceOptions};
use crate::source::kafka::reader::{kafka_source, KafkaSourceOptions};
use crate::source::kafka::{plan, KafkaSourceError, StartPosition};
use crate::source::registry::SchemaRegistry;
use crate::source::{now_ms, SourceProgress};
use crate::telemetry::live::Live;
use crate::telemetry::metrics::Metrics;
use store::{DeadLetterLog, TombstoneLog};
use writer::{RuntimeWriter, WriterShared};

/// A pipeline could not run.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The embedder could not be opened.
    #[error("embedder: {0}")]
    Embedder(#[from] crate::embed::EmbedError),
    /// The sink could not be opened or read.
    #[error("sink: {0}")]
    Sink(#[from] crate::sink::SinkError),
    /// A file under the data directory could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The source failed (the counters cover what was read before).
    #[error("source: {0}")]
    Source(String),
    /// The Kafka source could not start.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaSourceError),
    /// The configuration does not fit the pipeline.
    #[error("{0}")]
    Config(String),
    /// Timely failed to start or a worker panicked.
    #[error("dataflow: {0}")]
    Dataflow(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// Options of `freshet run` (and `freshet replay`).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The pipeline.
    pub dataflow: DataflowSpec,
    /// Where it runs.
    pub config: RuntimeConfig,
    /// Stop once the input is fully indexed (for Kafka: up to the high watermarks seen at
    /// start).
    pub until_end: bool,
    /// A replay instead of the live pipeline.
    pub replay: Option<Replay>,
    /// Set by `reindex`: the collection already opened, and a hook told the documents of
    /// every acknowledged write.
    pub mirror: Option<MirrorHooks>,
    /// This process's place in a timely cluster (none: a single process).
    pub cluster: Option<ClusterPlace>,
}

/// A process of a timely cluster.
#[derive(Debug, Clone)]
pub struct ClusterPlace {
    /// This process (0-based).
    pub process: usize,
    /// `host:port` of every process.
    pub addresses: Vec<String>,
}

/// See [`RunOptions::mirror`].
#[derive(Clone)]
pub struct MirrorHooks {
    /// The collection (its name and the open sink).
    pub sink: (String, Arc<dyn VectorSink>),
    /// Called after each write.
    pub on_written: writer::WrittenHook,
    /// Kept up to date: the source has read all there is and the sink has acknowledged it.
    pub idle: Arc<AtomicBool>,
}

impl std::fmt::Debug for MirrorHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorHooks").field("collection", &self.sink.0).finish()
    }
}

/// `freshet replay`: re-read Kafka from a position to the current end, without touching
/// the live consumer group.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Where reading starts.
    pub from: StartPosition,
    /// Build this collection instead of the dataflow's (point ids stay those of the
    /// dataflow's collection, so the two compare point by point).
    pub into: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress_bar: bool,
}

impl RunOptions {
    /// A live run.
    pub fn live(dataflow: DataflowSpec, config: RuntimeConfig, until_end: bool) -> Self {
        Self { dataflow, config, until_end, replay: None, mirror: None, cluster: None }
    }
}

/// Open the embedder a spec names.
pub fn open_embedder(spec: &EmbedderSpec) -> Result<Arc<dyn Embedder>, RuntimeError> {
    Ok(match spec.kind {
        EmbedderKind::Hash => {
            let e = HashEmbedder::new(spec.dimension).with_seed(spec.seed);
            Arc::new(match &spec.call_log {
                Some(p) => e.with_call_log(p.clone()),
                None => e,
            })
        }
        EmbedderKind::LocalMinilm => {
            let dir = spec.model_dir.clone().unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2"));
            Arc::new(LocalMiniLm::load(&dir, spec.max_tokens)?)
        }
        EmbedderKind::OpenAi | EmbedderKind::Tei | EmbedderKind::Ollama => Arc::new(open_http(spec)?),
    })
}

/// An HTTP embedder for `spec`, checked with one small request: a wrong dimension, model
/// or key fails here with the endpoint's answer; an endpoint that is down only warns (the
/// pipeline waits for it, the lag shows it).
fn open_http(spec: &EmbedderSpec) -> Result<HttpEmbedder, RuntimeError> {
    let api = match spec.kind {
        EmbedderKind::Tei => HttpApi::Tei,
        EmbedderKind::Ollama => HttpApi::Ollama,
        _ => HttpApi::OpenAi,
    };
    let api_key = match &spec.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            RuntimeError::Config(format!("`embedder.api_key_env` names `{var}`, which is not set in the environment"))
        })?),
        None => None,
    };
    let tokenizer = match &spec.tokenizer {
        Some(path) => Some(
            tokenizers::Tokenizer::from_file(path)
                .map_err(|e| RuntimeError::Config(format!("`embedder.tokenizer` {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let embedder = HttpEmbedder::new(HttpOptions {
        api,
        url: spec.url.clone().unwrap_or_default(),
        model: spec.model.clone().unwrap_or_default(),
        dimension: spec.dimension,
        api_key,
        headers: spec.headers.clone(),
        timeout: Duration::from_millis(spec.timeout_ms),
        connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
        tokenizer,
    })?;
    match embedder.embed(&["freshet: checking the endpoint"]) {
        Ok(_) => {
            tracing::info!(endpoint = %embedder.endpoint(), model = %embedder.model_id(), "embedding endpoint answers")
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(endpoint = %embedder.endpoint(), error = %e, "embedding endpoint not reachable yet; changes wait for it")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(embedder)
}

/// The store a dataflow's sink lives in: the embedded engine under the data directory, or
/// the Qdrant server of the runtime config's `[qdrant]`.
pub fn open_catalog(spec: &DataflowSpec, config: &RuntimeConfig) -> Result<Arc<dyn Catalog>, RuntimeError> {
    Ok(match spec.sink.kind {
        SinkKind::Embedded => Arc::new(EmbeddedCatalog::new(&config.data_dir)),
        SinkKind::Qdrant => {
            let Some(q) = &config.qdrant else {
                return Err(RuntimeError::Config(
                    "the dataflow's sink is `qdrant` but the runtime config has no [qdrant] section".into(),
                ));
            };
            Arc::new(QdrantCatalog::connect(q)?)
        }
    })
}

/// Open an existing collection (or the collection an alias points at) for reading.
pub fn open_collection(
    spec: &DataflowSpec,
    config: &RuntimeConfig,
    name: &str,
) -> Result<(String, Arc<dyn VectorSink>), RuntimeError> {
    let catalog = open_catalog(spec, config)?;
    match catalog.resolve(name)? {
        Some(physical) => {
            let sink = catalog.open(&physical)?;
            Ok((physical, sink))
        }
        None => Err(RuntimeError::Sink(crate::sink::SinkError::Permanent(format!(
            "no collection or alias `{name}` in the {} (run the pipeline first)",
            catalog.describe()
        )))),
    }
}

/// Apply an `--embedder` override.
pub fn with_embedder(mut spec: DataflowSpec, kind: Option<EmbedderKind>) -> DataflowSpec {
    if let Some(k) = kind {
        spec.embedder.kind = k;
    }
    spec
}

/// Run a pipeline. Returns the acknowledged counters.
pub fn run(opts: RunOptions, stop: Arc<AtomicBool>) -> Result<Tally, RuntimeError> {
    let RunOptions { dataflow: spec, mut config, until_end, replay, mirror, cluster } = opts;
    let cluster = cluster.filter(|c| c.addresses.len() > 1);
    if let Some(c) = &cluster {
        if spec.sink.kind != SinkKind::Qdrant {
            return Err(RuntimeError::Config(
                "a cluster of processes needs a shared sink: set `sink.kind = \"qdrant\"` (an embedded collection \
                 belongs to one process)"
                    .into(),
            ));
        }
        if c.process >= c.addresses.len() {
            return Err(RuntimeError::Config(format!(
                "--process {} but the cluster has {} processes (0-based)",
                c.process,
                c.addresses.len()
            )));
        }
        // Each process keeps its own state logs and dead letters, and its own metrics port.
        config.data_dir = config.data_dir.join(format!("process-{}", c.process));
        if let Some(a) = &mut config.metrics_addr {
            a.set_port(a.port().saturating_add(c.process as u16));
        }
    }
    let peers = config.workers * cluster.as_ref().map_or(1, |c| c.addresses.len());
    std::fs::create_dir_all(&config.data_dir).map_err(io(format!("creating {}", config.data_dir.display())))?;
    let started = Instant::now();
    // The collection written; point ids always use the dataflow's collection name.
    let collection = replay.as_ref().and_then(|r| r.into.clone()).unwrap_or_else(|| spec.sink.collection.clone());
    if replay.is_some() && spec.source.kind != SourceKind::Kafka {
        return Err(RuntimeError::Config("`replay` needs a kafka source".into()));
    }
    if (replay.is_some() || mirror.is_some()) && spec.document.root.is_some() {
        return Err(RuntimeError::Config(
            "`replay` and `reindex` of a multi-table dataflow are not built yet: its table state belongs to the \
             live run (run it, or start a new collection from the topics' beginning)"
                .into(),
        ));
    }
    // Where each Kafka partition starts (asked before anything else opens).
    let kafka_plan = match spec.source.kind {
        SourceKind::File => None,
        SourceKind::Kafka => {
            let Some(k) = &config.kafka else {
                return Err(RuntimeError::Config(
                    "the dataflow reads Kafka but the runtime config has no [kafka] section".into(),
                ));
            };
            let from = replay.as_ref().map_or(StartPosition::Committed, |r| r.from.clone());
            let p = plan(k, &spec.topics(), &from, until_end || replay.is_some())?;
            for pp in &p {
                tracing::info!(topic = %pp.topic, partition = pp.partition, start = pp.start, end = ?pp.end, high_watermark = pp.high_watermark, "partition planned");
            }
            Some(p)
        }
    };
    let embedder = open_embedder(&spec.embedder)?;
    let catalog = open_catalog(&spec, &config)?;
    let (physical, sink) = match &mirror {
        Some(m) => m.sink.clone(),
        None => open_for_writing(
            catalog.as_ref(),
            &collection,
            embedder.model_id(),
            &CollectionParams::of(&spec.sink, embedder.dimension()),
        )?,
    };
    tracing::info!(name = %collection, collection = %physical, store = %catalog.describe(), "writing collection");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("freshet-io")
        .build()
        .map_err(io("starting tokio"))?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_build_info(embedder.model_id());
    metrics.set_table_names(spec.tables.iter().map(|t| t.name.clone()).collect());
    let progress = Arc::new(SourceProgress::new(config.workers));
    let live = Live::new(Arc::clone(&metrics), Arc::clone(&progress), embedder.model_id());
    let _sampler = live.spawn_sampler().map_err(io("starting the metrics sampler"))?;
    if let Some(addr) = config.metrics_addr {
        match rt.block_on(crate::telemetry::http::serve(addr, Arc::clone(&live), config.http_token.clone())) {
            Ok(bound) => tracing::info!(%bound, "serving the dashboard (/), /metrics, /status and /api/series"),
            Err(e) => tracing::warn!(%addr, error = %e, "HTTP endpoint not started"),
        }
    }

    let (tombstone_log, tombstones) =
        TombstoneLog::open(&config.data_dir, &physical).map_err(io("opening the tombstone log"))?;
    let shape = DocShape::new(&spec);
    let (inflight, suspects) =
        store::InflightLog::open(&config.data_dir, &physical).map_err(io("opening the in-flight write log"))?;
    if !suspects.is_empty() {
        tracing::warn!(points = suspects.len(), "a write was torn by a crash; its points are rewritten");
    }
    let namespace = collection_namespace(&spec.sink.collection);
    let boot =
        bootstrap::rebuild(sink.as_ref(), &shape, embedder.model_id(), &namespace, &tombstones, &suspects, peers)?;
    if let Some((_, m)) = boot.other_model.first() {
        return Err(RuntimeError::Sink(crate::sink::SinkError::Permanent(format!(
            "collection `{physical}` holds {} points of model `{m}`, the pipeline embeds with `{}`; \
             run `freshet reconcile` to remove them, or `freshet reindex` to change models",
            boot.other_model.len(),
            embedder.model_id()
        ))));
    }
    tracing::info!(
        points = boot.points,
        documents = boot.live_docs,
        orphans = boot.orphans.len(),
        "state rebuilt from the collection"
    );
    report_recovery(&live, sink.recovery(), suspects.len(), &boot);
    safety::remove_orphans(sink.as_ref(), &physical, &boot, &config.safety)?;
    if !suspects.is_empty() {
        inflight.done(store::InflightLog::CARRIED).map_err(io("updating the in-flight write log"))?;
    }
    // This process's first worker (global index).
    let first_worker = cluster.as_ref().map_or(0, |c| c.process * config.workers);
    let table_states = open_table_state(&spec, &config, &physical, &boot, cluster.as_ref(), first_worker, peers)?;
    let dead_letters = Arc::new(DeadLetterLog::open(&config.data_dir).map_err(io("opening the dead-letter file"))?);
    metrics.dead_letters_before.store(dead_letters.count_existing(), Ordering::Relaxed);

    let disk_cache = match &config.embed_cache_path {
        Some(p) => {
            let path = config.data_dir.join(p);
            match crate::embed::disk_cache::DiskCache::open(&path) {
                Ok(c) => {
                    tracing::info!(path = %path.display(), vectors = c.len().unwrap_or(0), "persistent embedding cache");
                    Some(c)
                }
                // redb locks its file: another freshet process (a `replay --into` beside
                // `run`) holds it. Run without the disk cache rather than not at all.
                Err(e) => {
                    tracing::warn!(error = %e, "persistent embedding cache unavailable; running with the in-memory cache only");
                    metrics.record_error("embed", format!("persistent embedding cache unavailable: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    let embed = EmbedService::start(
        Arc::clone(&embedder),
        BatchOptions {
            max_texts: spec.embedder.max_batch_texts,
            max_tokens: spec.embedder.max_batch_tokens,
            max_wait: Duration::from_millis(spec.embedder.max_wait_ms),
            concurrency: spec.embedder.concurrency,
            max_tokens_per_text: spec.embedder.max_tokens,
            min_texts: spec.embedder.min_batch_texts.unwrap_or(spec.embedder.max_batch_texts / 4),
            cache_entries: config.embed_cache_entries,
        },
        disk_cache,
        Arc::clone(&metrics),
        rt.handle(),
    );
    let shared = Arc::new(WriterShared {
        sink: Arc::clone(&sink),
        embed,
        namespace,
        dead_letters,
        tombstones: Arc::new(tombstone_log),
        inflight: Arc::new(inflight),
        metrics: Arc::clone(&metrics),
        pipeline_depth: 4,
        max_backoff: Duration::from_millis(config.qdrant.as_ref().map_or(10_000, |q| q.max_backoff_ms)),
        on_written: mirror.as_ref().map(|m| Arc::clone(&m.on_written)),
    });

    // Background index building (HNSW), off the write path: after writes, once the pipeline
    // has been idle for a moment, or at the latest every `optimize_interval_s` while busy.
    // Busy as of the start: a build starts after 2 s without work, not at the first write
    // after a start (which would put a build under the load that follows a restart).
    let activity = Arc::new(Activity { last_busy_ms: now_ms().into(), ..Activity::default() });
    let optimizer_stop = Arc::new(AtomicBool::new(false));
    let optimizer = {
        let sink = Arc::clone(&sink);
        let stop = Arc::clone(&optimizer_stop);
        let activity = Arc::clone(&activity);
        let metrics_o = Arc::clone(&metrics);
        let every = Duration::from_secs(config.optimize_interval_s.max(1));
        std::thread::Builder::new()
            .name("freshet-optimize".into())
            .spawn(move || {
                lower_thread_priority(BUILD_NICE);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let written = points_written(&metrics_o.totals());
                    let dirty = written > activity.optimized.load(Ordering::Relaxed);
                    let idle_ms = now_ms().saturating_sub(activity.last_busy_ms.load(Ordering::Relaxed));
                    if dirty && (idle_ms >= 2_000 || last.elapsed() >= every) {
                        let upto = written;
                        let t = Instant::now();
                        metrics_o.index_build_running.set(1);
                        let built = sink.optimize();
                        metrics_o.index_build_running.set(0);
                        match built {
                            Ok(()) => {
                                activity.optimized.store(upto, Ordering::Relaxed);
                                tracing::debug!(elapsed_ms = t.elapsed().as_millis() as u64, "index optimised");
                            }
                            Err(e) => tracing::warn!(error = %e, "background optimisation failed"),
                        }
                        last = Instant::now();
                    }
                }
            })
            .map_err(io("starting the optimiser thread"))?
    };

    let source_path = spec.source.path.clone().unwrap_or_default();
    let decode = DecodeSpec {
        id_fields: spec.document.id.clone(),
        version_field: spec.document.version.clone(),
        table: spec.source.table.clone(),
        max_record_bytes: config.max_record_bytes,
        tables: spec
            .tables
            .iter()
            .map(|t| DecodeSpec {
                id_fields: t.key.clone(),
                version_field: t.version.clone(),
                table: Some(t.table.clone()),
                max_record_bytes: config.max_record_bytes,
                tables: Vec::new(),
            })
            .collect(),
    };
    let bar = match &replay {
        Some(r) if r.progress_bar => Some(progress::spawn_bar(Arc::clone(&progress))),
        _ => None,
    };
    let inits: Arc<Mutex<Vec<Option<InitialState>>>> =
        Arc::new(Mutex::new(boot.workers.into_iter().map(Some).collect()));
    let table_states: Arc<Mutex<Vec<Option<TableState>>>> =
        Arc::new(Mutex::new(table_states.map(|s| s.into_iter().map(Some).collect()).unwrap_or_default()));
    let handle = rt.handle().clone();
    let spec_w = spec.clone();
    let metrics_w = Arc::clone(&metrics);
    let progress_w = Arc::clone(&progress);
    let stop_w = Arc::clone(&stop);
    let activity_w = Arc::clone(&activity);
    let idle_w = mirror.as_ref().map(|m| Arc::clone(&m.idle));
    let file_opts = FileSourceOptions {
        path: source_path,
        key_separator: spec.source.key_separator.clone(),
        format: spec.source.format,
        decode: decode.clone(),
        max_records_per_pass: config.max_records_per_pass,
        until_end,
        max_passes_in_flight: config.max_passes_in_flight,
        whole_first_pass: spec.document.root.is_some(),
    };
    let registry = if spec.source.format.is_avro() {
        let Some(r) = &config.schema_registry else {
            return Err(RuntimeError::Config(format!(
                "format \"{}\" reads Avro whose schemas live in a schema registry, but the runtime config has no \
                 [schema_registry] section",
                spec.source.format.as_str()
            )));
        };
        let registry = SchemaRegistry::open(r, Some(config.data_dir.join("schemas")), Some(Arc::clone(&metrics)))
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        tracing::info!(urls = ?r.url, "reading Avro schemas from the registry");
        Some(registry)
    } else {
        None
    };
    let kafka_opts = match (&kafka_plan, &config.kafka) {
        (Some(plan), Some(k)) => Some(KafkaSourceOptions {
            kafka: k.clone(),
            plan: plan.clone(),
            format: spec.source.format,
            decode,
            registry,
            max_records_per_pass: config.max_records_per_pass,
            max_passes_in_flight: config.max_passes_in_flight,
            commit: replay.is_none(),
            local_index: 0,
        }),
        _ => None,
    };
    let workers_per_process = config.workers;
    let timely_config = match &cluster {
        None => timely::Config::process(config.workers),
        Some(c) => {
            tracing::info!(
                process = c.process,
                processes = c.addresses.len(),
                workers = config.workers,
                "joining the timely cluster"
            );
            timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: config.workers,
                    process: c.process,
                    addresses: c.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            }
        }
    };
    live.set_ready();
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let init = inits.lock().ok().and_then(|mut v| v.get_mut(index).and_then(Option::take)).unwrap_or_default();
        let shape = Rc::new(DocShape::new(&spec_w));
        let table_state = table_states
            .lock()
            .ok()
            .and_then(|mut v| v.get_mut(index.saturating_sub(first_worker)).and_then(Option::take));
        // Restored documents render at the start time (see `TableState::restore_version`).
        let first_version = table_state.as_ref().map_or(0, |s| s.restore_version);
        let tables =
            crate::dataflow::tables::DocModel::for_spec(&spec_w).map(|m| Rc::new(m.with_first_version(first_version)));
        let shared = Arc::clone(&shared);
        let handle = handle.clone();
        let progress = Arc::clone(&progress_w);
        let opts = file_opts.clone();
        let kafka = kafka_opts.clone().map(|k| KafkaSourceOptions { local_index: index % workers_per_process, ..k });
        let metrics_s = Arc::clone(&metrics_w);
        let sizes: SizeObserver = Arc::new(move |kind, total| {
            let gauge = match kind {
                SizeKind::Documents => &metrics_s.state_documents,
                SizeKind::Chunks => &metrics_s.state_chunks,
            };
            gauge.set(total);
        });
        let probes = StageProbes::default();
        let probe = probes.sink.clone();
        let probes_d = probes.clone();
        worker.dataflow::<Time, _, _>(move |scope| {
            let routed = match kafka {
                Some(k) => kafka_source(scope, k, progress, probes_d.sink.clone()),
                None => file_source(scope, opts, progress, probes_d.sink.clone()),
            };
            crate::dataflow::pipeline::build(
                routed,
                shape,
                tables,
                table_state,
                init,
                move |activator| RuntimeWriter::start(shared, &handle, activator),
                &probes_d,
                sizes,
            );
        });
        let mut last_lag_update = Instant::now();
        loop {
            if stop_w.load(Ordering::Relaxed) {
                progress_w.stop.store(true, Ordering::Relaxed);
            }
            worker.step_or_park(Some(Duration::from_millis(20)));
            if index % workers_per_process == 0 && last_lag_update.elapsed() >= Duration::from_millis(100) {
                last_lag_update = Instant::now();
                let pending = update_lag(&metrics_w, &progress_w, &probes);
                if pending {
                    activity_w.last_busy_ms.store(now_ms(), Ordering::Relaxed);
                }
                if let Some(idle) = &idle_w {
                    idle.store(!pending && progress_w.at_end(), Ordering::Relaxed);
                }
            }
            if probe.done() {
                break;
            }
        }
        if index % workers_per_process == 0 {
            let _ = update_lag(&metrics_w, &progress_w, &probes);
        }
    })
    .map_err(RuntimeError::Dataflow)?;
    for r in guards.join() {
        r.map_err(RuntimeError::Dataflow)?;
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "everything acknowledged");
    stop_optimizer(sink.as_ref(), optimizer, &optimizer_stop);
    if let Some(b) = bar {
        b.finish();
    }
    let totals = metrics.totals();
    tracing::info!(
        received = totals.received,
        applied = totals.applied(),
        chunks_embedded = totals.chunks_embedded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pipeline finished"
    );
    drop(rt);
    if let Some(e) = progress.error.lock().ok().and_then(|g| g.clone()) {
        return Err(RuntimeError::Source(e));
    }
    Ok(totals)
}

/// The table state of a multi-table dataflow on Kafka ([`table_store`]): each local worker's
/// restored rows and store, with the start time (the restored documents' version). None for
/// other dataflows (a file source re-reads its whole file at start).
fn open_table_state(
    spec: &DataflowSpec,
    config: &RuntimeConfig,
    collection: &str,
    boot: &bootstrap::Bootstrap,
    cluster: Option<&ClusterPlace>,
    first_worker: usize,
    peers: usize,
) -> Result<Option<Vec<TableState>>, RuntimeError> {
    if spec.document.root.is_none() || spec.source.kind != SourceKind::Kafka {
        return Ok(None);
    }
    let path = table_store::path(&config.data_dir, collection);
    if !path.exists() && boot.points > 0 {
        return Err(RuntimeError::Config(format!(
            "collection `{collection}` holds {} points but its table state {} is missing: the documents cannot be \
             rendered from the committed offsets on. Use a new collection (or delete this one) and read the \
             topics from the beginning (a new consumer group, or `kafka.start_from = \"beginning\"`)",
            boot.points,
            path.display()
        )));
    }
    let processes = cluster.map_or(1, |c| c.addresses.len());
    let started = Instant::now();
    let opened =
        table_store::TableStore::open(&config.data_dir, collection, processes, first_worker, config.workers, peers)
            .map_err(|e| RuntimeError::Config(format!("table state: {e}")))?;
    tracing::info!(
        path = %path.display(),
        rows = opened.row_count,
        bytes = opened.store.file_bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        created = opened.created,
        "table state loaded"
    );
    let store: Arc<dyn crate::dataflow::tables::RowStore> = Arc::new(opened.store);
    let restore_version = now_ms();
    let states =
        opened.rows.into_iter().map(|rows| TableState { store: Arc::clone(&store), rows, restore_version }).collect();
    Ok(Some(states))
}

/// Whether the pipeline is working, for the background optimiser.
#[derive(Debug, Default)]
struct Activity {
    /// Last time work was pending (ms since epoch).
    last_busy_ms: std::sync::atomic::AtomicU64,
    /// [`points_written`] as of the last optimisation.
    optimized: std::sync::atomic::AtomicU64,
}

/// How much lower than the rest of the process the background index build runs (its
/// thread's nice value is raised by this, and the threads it starts inherit it: an HNSW
/// build uses every core), so the pipeline's threads keep the CPU when both want it and a
/// write is not slowed by a build running beside it (issue 15).
const BUILD_NICE: i32 = 10;

/// Raise the calling thread's nice value by `by` (at most to 19), lowering its CPU
/// priority (Linux: per thread, inherited by the threads it starts). Best effort: a
/// failure only leaves the priority as it was.
#[allow(unsafe_code)] // three system calls; no safe wrapper in the dependencies
pub fn lower_thread_priority(by: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls with no pointer arguments. getpriority returns the
        // nice value itself (-20..=19; the raw syscall would return 20 - nice).
        let (tid, r) = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            (tid, libc::setpriority(libc::PRIO_PROCESS, tid, (now + by).min(19)))
        };
        if r != 0 {
            tracing::debug!(tid, by, error = %std::io::Error::last_os_error(), "could not lower the thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = by;
}

/// How long a stop waits for a running index build before leaving it (see
/// [`VectorSink::stop_during_build`]): a build of a large collection takes minutes, longer
/// than the grace period of systemd or Kubernetes.
const BUILD_WAIT_AT_STOP: Duration = Duration::from_secs(3);

/// Stop the background optimiser: wait a moment for a running build, else leave it — every
/// write is durable and the next start finishes what the build left.
fn stop_optimizer(sink: &dyn VectorSink, optimizer: std::thread::JoinHandle<()>, stop: &AtomicBool) {
    stop.store(true, Ordering::Relaxed);
    let waited = Instant::now();
    while !optimizer.is_finished() && waited.elapsed() < BUILD_WAIT_AT_STOP {
        std::thread::sleep(Duration::from_millis(20));
    }
    if optimizer.is_finished() {
        let _ = optimizer.join();
        return;
    }
    match sink.stop_during_build() {
        Ok(true) => tracing::warn!(
            "stopping during a background index build: every write is durable; the next start replays the writes \
             made during the build and builds the index again"
        ),
        Ok(false) => {
            // Between builds after all: it finishes at once.
            let _ = optimizer.join();
        }
        Err(e) => {
            tracing::error!(error = %e, "could not flush during the index build; waiting for it instead");
            let _ = optimizer.join();
        }
    }
}

/// Say what the start found of a crash — in the log and in `/status` — so that a torn or
/// partial write is visible, not only repaired.
fn report_recovery(live: &Live, sink: crate::sink::SinkRecovery, torn_points: usize, boot: &bootstrap::Bootstrap) {
    if !sink.unclean_close && torn_points == 0 && boot.mixed_documents == 0 {
        return;
    }
    let recovery = serde_json::json!({
        "unclean_close": sink.unclean_close,
        "wal_operations_replayed": sink.wal_operations_replayed,
        "interrupted_replays": sink.interrupted_replays,
        "duplicate_points_repaired": sink.duplicate_points_repaired,
        "uncovered_pages_removed": sink.uncovered_pages_removed,
        "torn_write_points": torn_points,
        "torn_documents": boot.torn_documents,
        "mixed_documents": boot.mixed_documents,
    });
    tracing::warn!(%recovery, "recovering from a crash: the documents of torn writes are applied again from the source");
    live.set_recovery(recovery);
}

/// Points written so far: what the background index build has to catch up with.
fn points_written(t: &Tally) -> u64 {
    t.points_upserted + t.points_payload_updated + t.points_deleted
}

/// Frontier lag: now − sink frontier while work is pending (the source frontier is ahead of
/// the sink frontier), 0 when caught up; and each stage's frontier. Returns whether work is
/// pending.
fn update_lag(metrics: &Metrics, progress: &SourceProgress, probes: &StageProbes) -> bool {
    use crate::telemetry::metrics::StageLabel;
    metrics.sync_received(progress.records.load(Ordering::Relaxed));
    metrics.sync_commits(progress.commits.load(Ordering::Relaxed), progress.commit_failures.load(Ordering::Relaxed));
    let first = |p: &timely::dataflow::operators::probe::Handle<Time>| p.with_frontier(|f| f.first().copied());
    let source = progress.frontier_ms();
    let (decode, state, sink) = (first(&probes.decode), first(&probes.state), first(&probes.sink));
    // The embed stage holds the times whose vectors are being resolved; with none, it is
    // as far as the state (and never behind the sink).
    let embed = match (metrics.embedding_frontier(), state) {
        (Some(e), Some(s)) => Some(e.min(s)),
        (e, s) => e.or(s),
    }
    .map(|e| sink.map_or(e, |k| e.max(k)));
    let stage = |name: &'static str, f: Option<Time>| {
        // 0 before a reader starts; u64::MAX (no frontier) once everything is read.
        if let Some(f) = f.filter(|f| *f > 0 && *f != u64::MAX) {
            metrics.stage_frontier.get_or_create(&StageLabel { stage: name }).set(f as f64 / 1000.0);
        }
    };
    stage("source", Some(source));
    stage("decode", decode);
    stage("state", state);
    stage("embed", embed);
    stage("sink", sink);
    // The source stamps its next records at or after `source - 1`: a sink frontier below
    // that means acknowledged work is outstanding.
    let (lag, pending) = match sink {
        Some(sink) if sink + 1 < source => (now_ms().saturating_sub(sink) as f64 / 1000.0, true),
        _ => (0.0, false),
    };
    metrics.frontier_lag_seconds.set(lag);
    pending
}
