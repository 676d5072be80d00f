//! The schema registry client of the Avro formats: writer schemas by id, from any registry
//! with the Confluent REST API (`GET {url}/schemas/ids/{id}`), cached for the life of the
//! process and on disk (`data_dir/schemas/{id}.avsc`).
//!
//! The timely workers never wait on the registry. [`SchemaRegistry::get`] answers from the
//! cache, or from the disk cache, or returns [`Lookup::Pending`] and queues the id for the
//! fetch thread; the Kafka reader then holds the record (and its partition) until the
//! schema arrives, so a registry that is down or answers 5xx delays records — the lag shows
//! it — and never skips or dead-letters one. Only an answer that will not change makes a
//! record a dead letter: the registry does not know the id (404), or what it serves is not
//! an Avro schema.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::decode::avro::AvroSchema;
use super::decode::{DecodeError, DecodeErrorKind};
use crate::config::SchemaRegistryConfig;
use crate::telemetry::metrics::Metrics;

/// What the registry client knows of one schema id.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// The writer schema.
    Known(Arc<AvroSchema>),
    /// The registry does not know the id, or its schema is not valid Avro (permanent:
    /// records naming it are dead letters `unknown_schema`).
    Unknown(String),
    /// Being fetched, or waiting to be fetched again after a failure.
    Pending,
}

impl Lookup {
    /// The schema, or the dead-letter error of an unknown id (`Pending` is an error too:
    /// callers resolve every id with [`SchemaRegistry::ready`] before decoding).
    pub fn schema(self, id: u32) -> Result<Arc<AvroSchema>, DecodeError> {
        match self {
            Lookup::Known(s) => Ok(s),
            Lookup::Unknown(why) => Err(DecodeError::new(DecodeErrorKind::UnknownSchema, why)),
            Lookup::Pending => Err(DecodeError::new(
                DecodeErrorKind::UnknownSchema,
                format!("schema id {id} was not fetched from the registry before decoding"),
            )),
        }
    }
}

/// Errors setting up the client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration cannot work (a missing environment variable, an unreadable CA file).
    #[error("schema_registry: {0}")]
    Config(String),
}

/// The client (one per process, shared by its workers).
pub struct SchemaRegistry {
    cache: Mutex<HashMap<u32, Lookup>>,
    fetch: Mutex<Sender<u32>>,
    dir: Option<PathBuf>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SchemaRegistry {
    /// A client for `config`, caching schemas under `cache_dir` (none: in memory only).
    /// Starts the fetch thread; it ends when the client is dropped.
    pub fn open(
        config: &SchemaRegistryConfig,
        cache_dir: Option<PathBuf>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Self>, RegistryError> {
        let fetcher = Fetcher::new(config)?;
        if let Some(d) = &cache_dir {
            std::fs::create_dir_all(d)
                .map_err(|e| RegistryError::Config(format!("creating the schema cache {}: {e}", d.display())))?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let registry =
            Arc::new(Self { cache: Mutex::new(HashMap::new()), fetch: Mutex::new(tx), dir: cache_dir, metrics });
        let weak = Arc::downgrade(&registry);
        let backoff_max = Duration::from_millis(config.max_backoff_ms.max(200));
        std::thread::Builder::new()
            .name("freshet-schemas".into())
            .spawn(move || fetcher.run(rx, weak, backoff_max))
            .map_err(|e| RegistryError::Config(format!("starting the schema fetch thread: {e}")))?;
        Ok(registry)
    }

    /// What is known of schema `id` now; queues a fetch the first time an id is seen.
    pub fn get(&self, id: u32) -> Lookup {
        let Ok(mut cache) = self.cache.lock() else { return Lookup::Pending };
        if let Some(l) = cache.get(&id) {
            return l.clone();
        }
        if let Some(schema) = self.read_disk(id) {
            let l = Lookup::Known(Arc::new(schema));
            cache.insert(id, l.clone());
            self.count_size(cache.len());
            return l;
        }
        cache.insert(id, Lookup::Pending);
        if let Ok(tx) = self.fetch.lock() {
            let _ = tx.send(id);
        }
        Lookup::Pending
    }

    /// Whether every id in `ids` is known or known to be unknown (a record naming them
    /// can be decoded or dead-lettered now); queues fetches for the others.
    pub fn ready(&self, ids: impl IntoIterator<Item = u32>) -> bool {
        let mut all = true;
        for id in ids {
            all &= !matches!(self.get(id), Lookup::Pending);
        }
        all
    }

    /// Schema ids held (known or unknown).
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.values().filter(|l| !matches!(l, Lookup::Pending)).count()).unwrap_or(0)
    }

    fn settle(&self, id: u32, lookup: Lookup, text: Option<&str>) {
        if let (Some(dir), Some(text)) = (&self.dir, text) {
            // Written whole then renamed: a crash leaves the old file or none, never half.
            let tmp = dir.join(format!("{id}.avsc.tmp"));
            let done = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(format!("{id}.avsc"))));
            if let Err(e) = done {
                tracing::warn!(id, error = %e, "cannot write the schema to the disk cache");
            }
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id, lookup);
            self.count_size(cache.values().filter(|l| !matches!(l, Lookup::Pending)).count());
        }
    }

    fn read_disk(&self, id: u32) -> Option<AvroSchema> {
        let path = self.dir.as_ref()?.join(format!("{id}.avsc"));
        let text = std::fs::read_to_string(&path).ok()?;
        match AvroSchema::parse(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a cached schema that does not parse");
                None
            }
        }
    }

    fn count(&self, result: &'static str) {
        if let Some(m) = &self.metrics {
            m.schema_registry_requests.get_or_create(&crate::telemetry::metrics::ResultLabel { result }).inc();
        }
    }

    fn count_size(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.schema_cache_size.set(n as i64);
        }
    }
}

/// The registry's answer for one id.
enum Answer {
    /// The schema's text.
    Schema(String),
    /// Permanent: the id is unknown (404) or not an Avro schema.
    Unknown(String),
    /// Worth retrying: unreachable, timeout, 5xx, 401/403, 429.
    Retry(String),
}

/// The HTTP side, on the fetch thread (its own single-threaded tokio runtime).
struct Fetcher {
    urls: Vec<String>,
    client: reqwest::Client,
    auth: Option<Auth>,
}

enum Auth {
    Basic(String, Option<String>),
    Bearer(String),
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

fn env_secret(var: &str, what: &str) -> Result<String, RegistryError> {
    std::env::var(var).map_err(|_| RegistryError::Config(format!("{what}: the environment variable {var} is not set")))
}

impl Fetcher {
    fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms.max(1)))
            .user_agent(concat!("freshet/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| RegistryError::Config(format!("reading ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                RegistryError::Config(format!("ca_file {} is not a PEM certificate: {e}", ca.display()))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| RegistryError::Config(format!("building the HTTP client: {e}")))?;
        let auth = match (&config.bearer_token_env, &config.username) {
            (Some(_), Some(_)) => {
                return Err(RegistryError::Config("set `username` (basic auth) or `bearer_token_env`, not both".into()))
            }
            (Some(var), None) => Some(Auth::Bearer(env_secret(var, "bearer_token_env")?)),
            (None, Some(user)) => {
                let password = config.password_env.as_deref().map(|v| env_secret(v, "password_env")).transpose()?;
                Some(Auth::Basic(user.clone(), password))
            }
            (None, None) if config.password_env.is_some() => {
                return Err(RegistryError::Config("`password_env` needs `username`".into()))
            }
            (None, None) => None,
        };
        let urls = config.url.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Ok(Self { urls, client, auth })
    }

    /// Fetch queued ids until the client is dropped; on failure wait (doubling from 200 ms
    /// to `backoff_max`) and try the same id again, every URL in turn.
    fn run(self, rx: Receiver<u32>, registry: std::sync::Weak<SchemaRegistry>, backoff_max: Duration) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the schema fetch thread cannot start; Avro records will wait");
                return;
            }
        };
        let mut queue: VecDeque<u32> = VecDeque::new();
        let mut backoff = Duration::from_millis(200);
        let mut retry_at: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            let wait = match (queue.is_empty(), retry_at) {
                (true, _) => Duration::from_secs(1),
                (false, Some(t)) => t.saturating_duration_since(Instant::now()),
                (false, None) => Duration::ZERO,
            };
            match rx.recv_timeout(wait) {
                Ok(id) => {
                    queue.push_back(id);
                    queue.extend(rx.try_iter());
                    if retry_at.is_some_and(|t| t > Instant::now()) {
                        continue;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if registry.strong_count() == 0 {
                return;
            }
            while let Some(&id) = queue.front() {
                let answer = rt.block_on(self.fetch(id));
                let Some(reg) = registry.upgrade() else { return };
                match answer {
                    Answer::Schema(text) => match AvroSchema::parse(&text) {
                        Ok(schema) => {
                            reg.count("ok");
                            tracing::info!(id, "schema fetched from the registry");
                            reg.settle(id, Lookup::Known(Arc::new(schema)), Some(&text));
                        }
                        Err(e) => {
                            reg.count("invalid");
                            let why = format!("the registry's schema {id} is not a valid Avro schema: {e}");
                            tracing::warn!(id, error = %e, "registry schema does not parse; its records are dead letters");
                            reg.settle(id, Lookup::Unknown(why), None);
                        }
                    },
                    Answer::Unknown(why) => {
                        reg.count("not_found");
                        tracing::warn!(id, reason = %why, "schema unknown; its records are dead letters");
                        reg.settle(id, Lookup::Unknown(why), None);
                    }
                    Answer::Retry(why) => {
                        reg.count("error");
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        tracing::warn!(id, error = %why, retry_in_ms = backoff.as_millis() as u64,
                            failing_for_s = since.elapsed().as_secs(), "schema registry unavailable; Avro records wait");
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(backoff_max);
                        break;
                    }
                }
                queue.pop_front();
                backoff = Duration::from_millis(200);
                retry_at = None;
                if failing_since.take().is_some() {
                    tracing::info!("schema registry reachable again");
                }
            }
        }
    }

    async fn fetch(&self, id: u32) -> Answer {
        let mut last = String::from("no registry URL");
        for url in &self.urls {
            let mut req = self.client.get(format!("{url}/schemas/ids/{id}"));
            req = match &self.auth {
                Some(Auth::Basic(u, p)) => req.basic_auth(u, p.as_deref()),
                Some(Auth::Bearer(t)) => req.bearer_auth(t),
                None => req,
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {}", error_chain(&e));
                    continue;
                }
            };
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                let body = resp.text().await.unwrap_or_default();
                return Answer::Unknown(format!(
                    "the schema registry does not know schema id {id} ({url}: 404 {})",
                    body.chars().take(200).collect::<String>()
                ));
            }
            if !status.is_success() {
                last = format!("{url}: HTTP {status}");
                continue;
            }
            return match resp.json::<SchemaById>().await {
                Ok(s) if s.schema_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("AVRO")) => Answer::Unknown(
                    format!("schema id {id} is a {} schema, not Avro", s.schema_type.unwrap_or_default()),
                ),
                Ok(s) => Answer::Schema(s.schema),
                Err(e) => {
                    last = format!("{url}: unexpected answer: {}", error_chain(&e));
                    continue;
                }
            };
        }
        Answer::Retry(last)
    }
}

/// An error with its causes (reqwest's own message says only "error sending request").
/// Credentials travel in headers, never in the URL, so none can appear here.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&err.to_string());
        next = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SCHEMA: &str = r#"{"type":"record","name":"Key","fields":[{"name":"id","type":"long"}]}"#;

    /// A registry answering like Confluent's: id 1 known, id 2 unknown (404), id 3 a 503
    /// for its first two requests, id 4 a PROTOBUF schema. Returns its URL and how many
    /// requests it served.
    fn fake_registry() -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ccompat", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        std::thread::spawn(move || {
            let mut id3 = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let schema = serde_json::json!({ "schema": SCHEMA }).to_string();
                let (status, body) = if line.contains("/ccompat/schemas/ids/1 ") {
                    ("200 OK", schema)
                } else if line.contains("/ccompat/schemas/ids/3 ") {
                    id3 += 1;
                    if id3 <= 2 {
                        ("503 Service Unavailable", "{}".into())
                    } else {
                        ("200 OK", schema)
                    }
                } else if line.contains("/ccompat/schemas/ids/4 ") {
                    (
                        "200 OK",
                        serde_json::json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}).to_string(),
                    )
                } else {
                    ("404 Not Found", r#"{"error_code":40403,"message":"Schema not found"}"#.into())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, served)
    }

    fn config(url: &str) -> SchemaRegistryConfig {
        let toml = format!("url = \"{url}\"\nmax_backoff_ms = 200\ntimeout_ms = 2000");
        toml::from_str(&toml).unwrap()
    }

    fn settle(r: &SchemaRegistry, id: u32) -> Lookup {
        let start = Instant::now();
        loop {
            match r.get(id) {
                Lookup::Pending if start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn fetches_caches_retries_and_remembers_on_disk() {
        let (url, served) = fake_registry();
        let dir = tempfile::tempdir().unwrap();
        let r = SchemaRegistry::open(&config(&url), Some(dir.path().to_path_buf()), None).unwrap();
        assert!(matches!(r.get(1), Lookup::Pending), "the first sight queues a fetch");
        assert!(matches!(settle(&r, 1), Lookup::Known(_)));
        let before = served.load(Ordering::SeqCst);
        assert!(r.ready([1]));
        assert_eq!(served.load(Ordering::SeqCst), before, "a known id is not fetched again");
        match settle(&r, 2) {
            Lookup::Unknown(why) => assert!(why.contains("schema id 2") && why.contains("404"), "{why}"),
            other => panic!("404 must be permanent: {other:?}"),
        }
        assert!(matches!(r.get(2).schema(2), Err(e) if e.kind == DecodeErrorKind::UnknownSchema));
        // 503 twice: retried until it answers.
        assert!(matches!(settle(&r, 3), Lookup::Known(_)), "a 5xx is retried");
        match settle(&r, 4) {
            Lookup::Unknown(why) => assert!(why.contains("PROTOBUF"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.cached(), 4);
        assert!(dir.path().join("1.avsc").exists() && dir.path().join("3.avsc").exists());
        assert!(!dir.path().join("2.avsc").exists(), "unknown ids are not cached on disk");

        // A new client with no registry at all: ids 1 and 3 come from the disk, 2 waits.
        let r2 =
            SchemaRegistry::open(&config("http://127.0.0.1:9/none"), Some(dir.path().to_path_buf()), None).unwrap();
        assert!(matches!(r2.get(1), Lookup::Known(_)) && matches!(r2.get(3), Lookup::Known(_)));
        assert!(!r2.ready([1, 2]), "an id neither cached nor reachable waits");
        std::thread::sleep(Duration::from_millis(600));
        assert!(matches!(r2.get(2), Lookup::Pending), "an unreachable registry never makes a dead letter");
    }

    #[test]
    fn configuration_errors_are_clear() {
        let mut c = config("http://127.0.0.1:9");
        c.password_env = Some("FRESHET_TEST_UNSET_VARIABLE".into());
        c.username = Some("u".into());
        let e = SchemaRegistry::open(&c, None, None).unwrap_err().to_string();
        assert!(e.contains("FRESHET_TEST_UNSET_VARIABLE"), "{e}");
        c.username = None;
        c.password_env = None;
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let e = SchemaRegistry::open(&c, None, None).unwrap_err().to_string();
        assert!(e.contains("ca_file"), "{e}");
        let bad: Result<SchemaRegistryConfig, _> = toml::from_str("url = []");
        assert!(bad.is_err());
        let two: SchemaRegistryConfig = toml::from_str("url = [\"http://a:8081\", \"https://b:8081/\"]").unwrap();
        assert_eq!(two.url.len(), 2);
    }
}
