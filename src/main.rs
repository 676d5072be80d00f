//! The `freshet` command line: load config → telemetry → run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use freshet::config::{DataflowSpec, EmbedderKind, RuntimeConfig};
use freshet::runtime::{self, RunOptions};
use freshet::sink::VectorSink;
use freshet::source::kafka::StartPosition;
use freshet::telemetry::{self, metrics::summary_json};

/// candle allocates a fresh buffer per tensor operation; with glibc's malloc, large ones go
/// back to the kernel and come again each time (a quarter of the model's CPU time at 256
/// tokens). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "freshet", version, about = "Keeps a vector index exactly in sync with a changing source of truth")]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Pipeline definition (dataflows/*.toml).
    #[arg(long)]
    dataflow: PathBuf,
    /// Runtime config (config/*.toml).
    #[arg(long)]
    config: PathBuf,
    /// Override the data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override the embedder kind (`local-minilm`, or `hash` for tests and benchmarks).
    #[arg(long)]
    embedder: Option<EmbedderKind>,
}

/// A process of a timely cluster (`[cluster]` in the config, or these flags).
#[derive(clap::Args, Clone)]
struct ClusterArgs {
    /// Processes in the cluster (checked against the addresses).
    #[arg(long)]
    processes: Option<usize>,
    /// This process (0-based).
    #[arg(long)]
    process: Option<usize>,
    /// File with one `host:port` per process, in order (else `[cluster].addresses`).
    #[arg(long)]
    hosts: Option<PathBuf>,
}

impl ClusterArgs {
    fn place(&self, config: &RuntimeConfig) -> Result<Option<runtime::ClusterPlace>> {
        let addresses: Vec<String> = match &self.hosts {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --hosts {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
            None => config.cluster.as_ref().map(|c| c.addresses.clone()).unwrap_or_default(),
        };
        let processes = self.processes.unwrap_or(addresses.len().max(1));
        if processes <= 1 && self.process.unwrap_or(0) == 0 {
            return Ok(None);
        }
        if addresses.len() != processes {
            bail!(
                "--processes {processes} but {} addresses (give --hosts FILE or [cluster].addresses)",
                addresses.len()
            );
        }
        let Some(process) = self.process else { bail!("a cluster process needs --process I (0-based)") };
        if process >= processes {
            bail!("--process {process} is not below --processes {processes}");
        }
        Ok(Some(runtime::ClusterPlace { process, addresses }))
    }
}

/// Where a replay starts (exactly one).
#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
struct ReplayFrom {
    /// From the oldest retained records.
    #[arg(long)]
    from_beginning: bool,
    /// From these offsets: `PARTITION:OFFSET,…` (one topic) or `TOPIC:PARTITION:OFFSET,…`;
    /// partitions not named start at the beginning.
    #[arg(long)]
    from_offsets: Option<String>,
    /// From the first records at or after this time (RFC 3339, e.g. 2026-11-22T08:00:00Z),
    /// found with the broker's offsets-for-times.
    #[arg(long)]
    from_timestamp: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline.
    Run {
        #[command(flatten)]
        common: Common,
        /// Override the file source's path.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Exit once everything in the input is indexed and acknowledged; print the
        /// counters as one JSON object on the last line of stdout.
        #[arg(long)]
        until_end: bool,
        /// Override the number of worker threads (per process).
        #[arg(long)]
        workers: Option<usize>,
        /// Remove the points found at start-up not to belong to the dataflow's documents
        /// even when they are more than `[safety]` allows (by default the run refuses to
        /// start and deletes nothing).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Re-read Kafka from a position up to the current end (the high watermarks at start)
    /// into the collection, or `--into` a new one. Does not touch the live consumer
    /// group's offsets. Changes already in the collection embed and write nothing.
    Replay {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        from: ReplayFrom,
        /// Build this collection instead of the dataflow's (the live one is untouched).
        #[arg(long)]
        into: Option<String>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Override the number of worker threads.
        #[arg(long)]
        workers: Option<usize>,
        /// As `run --force`: remove points that do not belong even past the `[safety]` limit.
        #[arg(long)]
        force: bool,
    },
    /// Move the collection to another embedding model with no downtime: build
    /// `<collection>__<new model>` from the current one while the pipeline keeps running
    /// (live changes go to both), verify it, then switch the alias in one atomic step.
    /// Afterwards, put the new embedder in the dataflow file and start `run`.
    Reindex {
        /// Pipeline definition (its `[embedder]` is the current model).
        #[arg(long)]
        dataflow: PathBuf,
        /// Runtime config.
        #[arg(long)]
        config: PathBuf,
        /// Override the data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The new embedder: a kind (`local-minilm`, `hash`) replacing the dataflow's, or a
        /// TOML file with an `[embedder]` table.
        #[arg(long)]
        embedder: String,
        /// Drop the old collection after the switch (kept by default).
        #[arg(long)]
        drop_old: bool,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Vectors of the new collection embedded again and compared before the switch.
        #[arg(long, default_value_t = 64)]
        sample: usize,
    },
    /// Find and remove points that should not be in the collection (written behind
    /// freshet's back, of another model, of deleted documents, torn by a crash); prints a
    /// JSON report by reason. Run it while the pipeline is stopped. Refuses a collection of
    /// another model than the dataflow's, and stops (exit code 1, nothing deleted) when it
    /// would delete more than `[safety]` allows, unless `--force`.
    Reconcile {
        #[command(flatten)]
        common: Common,
        /// Report what a run would do; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete even more points than the `[safety]` limit allows.
        #[arg(long)]
        force: bool,
        /// Only check, changing nothing: report the documents whose points disagree with
        /// each other or with their text (the marks of a torn or partly recovered write:
        /// mixed versions, text field hashes or metadata, a text that is not its hash, a
        /// gap in the chunks). Exit code 1 when any is found.
        #[arg(long, conflicts_with_all = ["dry_run", "force"])]
        verify: bool,
    },
    /// Write every point as one JSON object per line, sorted by id.
    Export {
        #[command(flatten)]
        common: Common,
        /// Export this collection instead of the dataflow's (e.g. one built by `replay --into`).
        #[arg(long)]
        collection: Option<String>,
        /// Include vectors.
        #[arg(long)]
        with_vectors: bool,
    },
    /// Search the collection with the pipeline's embedder.
    Search {
        #[command(flatten)]
        common: Common,
        /// Query text.
        query: String,
        /// Number of hits.
        #[arg(short, default_value_t = 5)]
        k: usize,
        /// Payload filter `field=value` (repeatable; the value is JSON if it parses, else a string).
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Serve the local model over HTTP — OpenAI-compatible `POST /v1/embeddings`, TEI's
    /// `POST /embed`, Ollama's `POST /api/embed` — so that several pipelines share one model
    /// process (use the `openai`, `tei` or `ollama` embedder kinds against it). Prints
    /// `listening on ADDR` first.
    EmbedServer {
        /// Directory with model.safetensors, tokenizer.json, config.json.
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model_dir: PathBuf,
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: std::net::SocketAddr,
        /// Texts are truncated to this many tokens.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Most inputs per request (more is answered 413).
        #[arg(long, default_value_t = 256)]
        max_batch: usize,
        /// Requests the model works on at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Environment variable holding an API key clients must send as a bearer token.
        #[arg(long)]
        api_key_env: Option<String>,
    },
    /// Show a running process's status on one screen: lag, backlog, rates,
    /// commit→searchable percentiles, last errors, dead letters (from its `/status`).
    Status {
        /// Base URL of the process's HTTP endpoint (default: `metrics_addr` of `--config`,
        /// else http://127.0.0.1:9187).
        #[arg(long)]
        url: Option<String>,
        /// Runtime config to take the address and token from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Bearer token (default: `http_token` of `--config`).
        #[arg(long, env = "FRESHET_HTTP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the status document as JSON instead.
        #[arg(long)]
        json: bool,
        /// Redraw every this many seconds until interrupted.
        #[arg(long)]
        watch: Option<u64>,
    },
    /// Generate the sample corpus as Debezium events (snapshot, then edits, metadata flips
    /// and deletes) for the main job and benchmarks.
    Generate {
        /// Output file (JSON lines).
        #[arg(long)]
        out: PathBuf,
        /// Documents in the snapshot.
        #[arg(long, default_value_t = 1000)]
        docs: usize,
        /// One-paragraph edits after the snapshot.
        #[arg(long, default_value_t = 0)]
        edits: usize,
        /// Metadata-only changes after the snapshot.
        #[arg(long, default_value_t = 0)]
        flips: usize,
        /// Deletes after the snapshot.
        #[arg(long, default_value_t = 0)]
        deletes: usize,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Write the changes after the snapshot to this file instead of `--out`.
        #[arg(long)]
        changes_out: Option<PathBuf>,
        /// Generate the blog's four tables (authors, articles, tags, ACL rows) for
        /// `dataflows/blog.toml` instead of the single `articles` table.
        #[arg(long)]
        tables: bool,
    },
}

fn load(common: &Common) -> Result<(DataflowSpec, RuntimeConfig)> {
    let spec = DataflowSpec::load(&common.dataflow)?;
    let mut config = RuntimeConfig::load(&common.config)?;
    if let Some(d) = &common.data_dir {
        config.data_dir = d.clone();
    }
    Ok((runtime::with_embedder(spec, common.embedder), config))
}

fn main() -> Result<()> {
    match real_main() {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        Err(e)
            if e.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe)) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.log_json);
    match cli.command {
        Command::Run { common, input, until_end, workers, force, cluster } => {
            let (mut spec, mut config) = load(&common)?;
            if let Some(i) = input {
                spec.source.path = Some(i);
            }
            if let Some(w) = workers {
                config.workers = w.max(1);
            }
            config.safety.force_bulk_delete |= force;
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = Arc::clone(&stop);
                ctrlc_handler(move || stop.store(true, Ordering::Relaxed));
            }
            let place = cluster.place(&config)?;
            let totals =
                runtime::run(RunOptions { cluster: place, ..RunOptions::live(spec, config, until_end) }, stop)?;
            println!("{}", summary_json(&totals));
            Ok(())
        }
        Command::Replay { common, from, into, no_progress, workers, force } => {
            let (spec, mut config) = load(&common)?;
            if let Some(w) = workers {
                config.workers = w.max(1);
            }
            config.safety.force_bulk_delete |= force;
            let start = if from.from_beginning {
                StartPosition::Beginning
            } else if let Some(o) = &from.from_offsets {
                StartPosition::parse_offsets(o, &spec.topics())?
            } else if let Some(t) = &from.from_timestamp {
                let at = humantime::parse_rfc3339_weak(t).with_context(|| {
                    format!("--from-timestamp {t:?} is not an RFC 3339 time (2026-11-22T08:00:00Z)")
                })?;
                let ms = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                StartPosition::Timestamp(ms)
            } else {
                bail!("give one of --from-beginning, --from-offsets, --from-timestamp");
            };
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = Arc::clone(&stop);
                ctrlc_handler(move || stop.store(true, Ordering::Relaxed));
            }
            let replay = runtime::Replay { from: start, into, progress_bar: !no_progress };
            let opts = RunOptions {
                dataflow: spec,
                config,
                until_end: true,
                replay: Some(replay),
                mirror: None,
                cluster: None,
            };
            let totals = runtime::run(opts, stop)?;
            println!("{}", summary_json(&totals));
            Ok(())
        }
        Command::Reindex { dataflow, config, data_dir, embedder, drop_old, no_progress, sample } => {
            let (spec, config) = load(&Common { dataflow, config, data_dir, embedder: None })?;
            let new_embedder = if embedder.ends_with(".toml") {
                freshet::config::load_embedder(std::path::Path::new(&embedder))?
            } else {
                let kind: EmbedderKind = embedder.parse().map_err(|_| {
                    anyhow::anyhow!("--embedder {embedder:?}: give `local-minilm`, `hash` or a .toml file")
                })?;
                freshet::config::EmbedderSpec { kind, ..spec.embedder.clone() }
            };
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = Arc::clone(&stop);
                ctrlc_handler(move || stop.store(true, Ordering::Relaxed));
            }
            let opts = runtime::reindex::ReindexOptions {
                dataflow: spec,
                config,
                embedder: new_embedder,
                drop_old,
                progress_bar: !no_progress,
                sample,
            };
            let report = runtime::reindex::reindex(opts, stop)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Reconcile { common, verify: true, .. } => {
            let (spec, config) = load(&common)?;
            let sink = open_existing(&spec, &config)?;
            let report = runtime::verify::verify(sink.as_ref(), &spec.document.metadata)?;
            println!("{}", serde_json::to_string(&report)?);
            if report.is_clean() {
                Ok(())
            } else {
                bail!("{} documents have points that disagree (see the report)", report.disagreeing_documents)
            }
        }
        Command::Reconcile { common, dry_run, force, verify: false } => {
            let (spec, config) = load(&common)?;
            let report = runtime::reconcile::reconcile(&spec, &config, dry_run, force)?;
            println!("{}", serde_json::to_string(&report)?);
            match (&report.stopped, dry_run) {
                (Some(why), false) => bail!("{why}"),
                _ => Ok(()),
            }
        }
        Command::Export { common, collection, with_vectors } => {
            let (mut spec, config) = load(&common)?;
            if let Some(c) = collection {
                spec.sink.collection = c;
            }
            let sink = open_existing(&spec, &config)?;
            let mut points = Vec::new();
            sink.scroll(with_vectors, 1024, &mut |page| points.extend(page))?;
            points.sort_by_key(|p| p.id.to_string());
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for p in points {
                let mut o = serde_json::Map::new();
                o.insert("id".into(), p.id.to_string().into());
                o.insert("payload".into(), serde_json::Value::Object(sort_keys(p.payload)));
                if let Some(v) = p.vector {
                    o.insert("vector".into(), v.into());
                }
                serde_json::to_writer(&mut out, &o)?;
                std::io::Write::write_all(&mut out, b"\n")?;
            }
            Ok(())
        }
        Command::Search { common, query, k, filter } => {
            let (spec, config) = load(&common)?;
            let embedder = runtime::open_embedder(&spec.embedder)?;
            let sink = open_existing(&spec, &config)?;
            if sink.dimension() != embedder.dimension() {
                bail!(
                    "collection `{}` holds vectors of dimension {}, the embedder `{}` produces {}",
                    spec.sink.collection,
                    sink.dimension(),
                    embedder.model_id(),
                    embedder.dimension()
                );
            }
            let vector = embedder.embed(&[query.as_str()])?.pop().context("the embedder returned no vector")?;
            let mut conditions = Vec::new();
            for f in filter {
                let Some((key, value)) = f.split_once('=') else { bail!("--filter expects field=value, got {f:?}") };
                let value =
                    serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                conditions.push((key.to_string(), value));
            }
            for hit in sink.search(vector, k, &conditions)? {
                let text: String =
                    hit.payload.get("text").and_then(|t| t.as_str()).unwrap_or("").chars().take(160).collect();
                let line = serde_json::json!({
                    "score": hit.score,
                    "doc_id": hit.payload.get("doc_id"),
                    "chunk_index": hit.payload.get("chunk_index"),
                    "title": hit.payload.get("title"),
                    "text": text,
                });
                println!("{line}");
            }
            Ok(())
        }
        Command::EmbedServer { model_dir, listen, max_tokens, max_batch, concurrency, api_key_env } => {
            let api_key = match api_key_env {
                Some(var) => Some(
                    std::env::var(&var).with_context(|| format!("--api-key-env names `{var}`, which is not set"))?,
                ),
                None => None,
            };
            let model: std::sync::Arc<dyn freshet::embed::Embedder> =
                std::sync::Arc::new(freshet::embed::local::LocalMiniLm::load(&model_dir, max_tokens)?);
            let opts = freshet::embed::server::ServerOptions {
                max_batch: max_batch.max(1),
                concurrency: concurrency.max(1),
                api_key,
                max_body_bytes: 64 << 20,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(freshet::embed::server::serve(model, opts, listen, |bound| {
                println!("listening on {bound}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
                tracing::info!(%bound, "serving the model: /v1/embeddings, /embed, /api/embed");
            }))?;
            Ok(())
        }
        Command::Status { url, config, token, json, watch } => {
            let cfg = config.as_deref().map(RuntimeConfig::load).transpose()?;
            let url = url
                .or_else(|| cfg.as_ref().and_then(|c| c.metrics_addr).map(|a| format!("http://{a}")))
                .unwrap_or_else(|| "http://127.0.0.1:9187".into());
            let token = token.or_else(|| cfg.and_then(|c| c.http_token));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            loop {
                let status =
                    rt.block_on(telemetry::report::fetch(&url, token.as_deref())).map_err(anyhow::Error::msg)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    if watch.is_some() {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", telemetry::report::render(&status));
                }
                match watch {
                    Some(every) => std::thread::sleep(std::time::Duration::from_secs(every.max(1))),
                    None => return Ok(()),
                }
            }
        }
        Command::Generate { out, docs, edits, flips, deletes, seed, changes_out, tables } => {
            let plan = freshet::workload::Plan { docs, edits, flips, deletes, seed };
            let n = if tables {
                freshet::workload::write_blog_files(&out, changes_out.as_deref(), &plan)?
            } else {
                freshet::workload::write_files(&out, changes_out.as_deref(), &plan)?
            };
            eprintln!("wrote {n} events to {}", out.display());
            Ok(())
        }
    }
}

/// Open the pipeline's collection (through its alias) for reading.
fn open_existing(spec: &DataflowSpec, config: &RuntimeConfig) -> Result<std::sync::Arc<dyn VectorSink>> {
    Ok(runtime::open_collection(spec, config, &spec.sink.collection)?.1)
}

fn sort_keys(m: serde_json::Map<String, serde_json::Value>) -> serde_json::Map<String, serde_json::Value> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().collect()
}

/// Ask the pipeline to stop on SIGINT/SIGTERM (the source stops, in-flight work drains).
fn ctrlc_handler(f: impl Fn() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        f();
    });
}
