//! The runtime config (`config/*.toml`): where a pipeline runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{read_toml, ConfigError};

/// Where and how freshet runs (`config/local.toml`). Relative paths are relative to the
/// current directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Timely worker threads in this process.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Data directory: embedded collections, tombstones, dead-letter file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Address of the HTTP endpoint serving the dashboard (`/`), `/metrics`, `/status` and
    /// `/api/series`; none disables it. Keep it on 127.0.0.1 unless `http_token` is set.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Bearer token the HTTP endpoint requires (the environment variable
    /// `FRESHET_HTTP_TOKEN` overrides it); none leaves the endpoint open.
    #[serde(default)]
    pub http_token: Option<String>,
    /// Records a source reads per partition per activation (bounds work per step).
    #[serde(default = "default_max_records_per_pass")]
    pub max_records_per_pass: usize,
    /// Source passes read but not yet acknowledged by the sink before the source pauses
    /// (backpressure; in-flight records ≤ this × `max_records_per_pass`).
    #[serde(default = "default_max_passes_in_flight")]
    pub max_passes_in_flight: usize,
    /// Records (key + value) larger than this go to the dead-letter file.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Vectors kept in the in-memory embedding cache (keyed by model and content hash).
    #[serde(default = "default_cache_entries")]
    pub embed_cache_entries: usize,
    /// The persistent embedding cache (a redb file keyed by model id and content hash;
    /// relative to `data_dir`); none keeps vectors in memory only.
    #[serde(default)]
    pub embed_cache_path: Option<PathBuf>,
    /// The embedded engine builds its HNSW index in the background once the pipeline has
    /// been idle for 2 s after writes, and at the latest every this many seconds while busy.
    #[serde(default = "default_optimize_interval_s")]
    pub optimize_interval_s: u64,
    /// The Kafka cluster, for dataflows with a `kafka` source.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// The Qdrant server, for dataflows with a `qdrant` sink.
    #[serde(default)]
    pub qdrant: Option<QdrantConfig>,
    /// The schema registry, for dataflows reading Avro (`debezium-avro`, `upsert-avro`).
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// The processes of a timely cluster (`freshet run --process I`); `--hosts FILE`
    /// overrides the addresses.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Guards on bulk deletes.
    #[serde(default)]
    pub safety: SafetyConfig,
}

/// Guards against a stale or mismatched configuration turning into a mass deletion
/// (`[safety]`). A bulk delete — `freshet reconcile`, or the removal at start-up of points
/// that cannot belong to the dataflow's documents — stops before deleting anything when it
/// would remove more points than the limit: `max_bulk_delete_ratio` of the collection,
/// but never less than `min_bulk_delete_points` nor more than `max_bulk_delete_points`.
/// `--force` (or `force_bulk_delete`) lets it proceed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Share of the collection's points (0 to 1) one bulk delete may remove without
    /// `--force`.
    #[serde(default = "default_max_bulk_delete_ratio")]
    pub max_bulk_delete_ratio: f64,
    /// Most points one bulk delete may remove without `--force`, whatever the size of the
    /// collection.
    #[serde(default = "default_max_bulk_delete_points")]
    pub max_bulk_delete_points: usize,
    /// A bulk delete of at most this many points is never stopped (a few strays in a small
    /// collection).
    #[serde(default = "default_min_bulk_delete_points")]
    pub min_bulk_delete_points: usize,
    /// Proceed with bulk deletes over the limit as if `--force` were given (every run).
    #[serde(default)]
    pub force_bulk_delete: bool,
}

fn default_max_bulk_delete_ratio() -> f64 {
    0.01
}
fn default_max_bulk_delete_points() -> usize {
    10_000
}
fn default_min_bulk_delete_points() -> usize {
    10
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            max_bulk_delete_ratio: default_max_bulk_delete_ratio(),
            max_bulk_delete_points: default_max_bulk_delete_points(),
            min_bulk_delete_points: default_min_bulk_delete_points(),
            force_bulk_delete: false,
        }
    }
}

impl SafetyConfig {
    /// The most points one bulk delete may remove from a collection of `points` without
    /// `--force`.
    ///
    /// ```
    /// let s = freshet::config::SafetyConfig::default();
    /// assert_eq!(s.bulk_delete_limit(100), 10, "a small collection: min_bulk_delete_points");
    /// assert_eq!(s.bulk_delete_limit(58_298), 582, "1%");
    /// assert_eq!(s.bulk_delete_limit(5_000_000), 10_000, "max_bulk_delete_points");
    /// ```
    pub fn bulk_delete_limit(&self, points: usize) -> usize {
        let share = (self.max_bulk_delete_ratio * points as f64).floor() as usize;
        share.max(self.min_bulk_delete_points).min(self.max_bulk_delete_points.max(self.min_bulk_delete_points))
    }
}

/// A timely cluster (`[cluster]`): every process runs `workers` worker threads; documents
/// are exchanged between all of them by `doc_id`, Kafka partitions are spread over all of
/// them, and each process writes its documents to the shared Qdrant server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port` of every process, in process order (timely's connections between them).
    pub addresses: Vec<String>,
}

/// The Qdrant server a `qdrant` sink writes to (`[qdrant]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QdrantConfig {
    /// gRPC address, e.g. `http://127.0.0.1:6334`; `https://` uses TLS (system roots).
    pub url: String,
    /// Environment variable holding the API key (sent as the `api-key` header); the key
    /// never appears in logs or error messages.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_qdrant_timeout_ms")]
    pub timeout_ms: u64,
    /// Timeout of connecting, in milliseconds.
    #[serde(default = "default_qdrant_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Points (upserted, updated or deleted) per update request; a larger write is sent
    /// as several requests, in order.
    #[serde(default = "default_qdrant_points_per_request")]
    pub max_points_per_request: usize,
    /// Longest wait between retries of a transient error, in milliseconds (the wait
    /// doubles from 100 ms, with jitter; a server's retry-after is honoured).
    #[serde(default = "default_qdrant_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_qdrant_timeout_ms() -> u64 {
    30_000
}
fn default_qdrant_connect_timeout_ms() -> u64 {
    5_000
}
fn default_qdrant_points_per_request() -> usize {
    512
}
fn default_qdrant_max_backoff_ms() -> u64 {
    10_000
}

/// The schema registry Avro records name their writer schemas in (`[schema_registry]`):
/// any registry with the Confluent REST API — Confluent Schema Registry, Karapace and
/// Redpanda at their base URL (`http://host:8081`), Apicurio at its compatibility path
/// (`http://host:8080/apis/ccompat/v7`). Schemas are fetched by id (`GET
/// /schemas/ids/{id}`) on first sight and kept for the life of the process and on disk
/// (`data_dir/schemas/`), so a restart decodes the records it has seen schemas for even
/// while the registry is down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, or several (a list) tried in turn; `https://` uses TLS.
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// User for HTTP basic authentication (Confluent Cloud: the API key).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the basic-auth password (Confluent Cloud: the API
    /// secret); never logged.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Environment variable holding a bearer token (sent as `Authorization: Bearer`);
    /// never logged.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// PEM file of the CA that signed the registry's certificate (added to the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
    /// Timeout of connecting, in milliseconds.
    #[serde(default = "default_registry_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait between retries while the registry cannot be reached or answers 5xx,
    /// in milliseconds (the wait doubles from 200 ms). Records needing a schema it has not
    /// served yet wait meanwhile; nothing is skipped or dead-lettered.
    #[serde(default = "default_registry_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_registry_timeout_ms() -> u64 {
    10_000
}
fn default_registry_connect_timeout_ms() -> u64 {
    5_000
}
fn default_registry_max_backoff_ms() -> u64 {
    10_000
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let urls = match OneOrMany::deserialize(d)? {
        OneOrMany::One(u) => vec![u],
        OneOrMany::Many(v) => v,
    };
    if urls.is_empty() || urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
        return Err(serde::de::Error::custom("`schema_registry.url` must be one or more http:// or https:// URLs"));
    }
    Ok(urls)
}

/// Where the Kafka topics live and how freshet records its progress (`[kafka]`).
///
/// Partitions are assigned to timely workers by freshet itself (not by group rebalancing);
/// the consumer group only holds the committed offsets: for each partition, the offset of
/// the first record the collection does not yet reflect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` list of brokers (librdkafka's `bootstrap.servers`).
    pub bootstrap_servers: String,
    /// Consumer group whose committed offsets record what the collection holds.
    pub group_id: String,
    /// Where partitions without a committed offset start: `earliest` or `latest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Any other librdkafka property (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, `fetch.max.bytes`, …). Properties freshet owns
    /// (`bootstrap.servers`, `group.id`, `enable.auto.commit`, `enable.auto.offset.store`)
    /// are rejected here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables: property →
    /// variable name (`"sasl.password" = "KAFKA_PASSWORD"`). Their values never appear in
    /// logs or error messages.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, String>,
    /// How often offsets the sink has passed are committed, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Bound on the records librdkafka prefetches per worker, in KiB (its
    /// `queued.max.messages.kbytes`): with paused partitions, the memory a burst can take.
    #[serde(default = "default_prefetch_kbytes")]
    pub max_prefetch_kbytes: u64,
    /// Timeout of the metadata and offset requests made at start, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartFrom {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced after the start.
    Latest,
}

/// librdkafka properties freshet sets itself.
pub const OWNED_KAFKA_PROPERTIES: [&str; 5] =
    ["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "enable.partition.eof"];

fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_prefetch_kbytes() -> u64 {
    16 * 1024
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

fn default_workers() -> usize {
    1
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_records_per_pass() -> usize {
    10_000
}
fn default_max_passes_in_flight() -> usize {
    4
}
fn default_max_record_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_cache_entries() -> usize {
    20_000
}
fn default_optimize_interval_s() -> u64 {
    600
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            data_dir: default_data_dir(),
            metrics_addr: None,
            http_token: None,
            max_records_per_pass: default_max_records_per_pass(),
            max_passes_in_flight: default_max_passes_in_flight(),
            max_record_bytes: default_max_record_bytes(),
            embed_cache_entries: default_cache_entries(),
            embed_cache_path: None,
            optimize_interval_s: default_optimize_interval_s(),
            kafka: None,
            qdrant: None,
            schema_registry: None,
            cluster: None,
            safety: SafetyConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// Read and validate a runtime config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self = read_toml(path)?;
        if let Ok(t) = std::env::var("FRESHET_HTTP_TOKEN") {
            cfg.http_token = Some(t);
        }
        cfg.validate(path)
    }

    /// Check value ranges.
    pub fn validate(self, path: &Path) -> Result<Self, ConfigError> {
        let bad = |message: &str| ConfigError::Invalid { path: path.to_path_buf(), message: message.to_string() };
        if self.workers == 0 || self.workers > 256 {
            return Err(bad("`workers` must be between 1 and 256"));
        }
        if self.max_records_per_pass == 0 {
            return Err(bad("`max_records_per_pass` must be at least 1"));
        }
        if self.max_record_bytes < 1024 {
            return Err(bad("`max_record_bytes` must be at least 1024"));
        }
        if self.http_token.as_deref().is_some_and(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c == '&'))
        {
            return Err(bad("`http_token` must be non-empty, without spaces or `&`"));
        }
        let s = &self.safety;
        if !(0.0..=1.0).contains(&s.max_bulk_delete_ratio) {
            return Err(bad("`safety.max_bulk_delete_ratio` must be between 0 and 1 (a share of the collection)"));
        }
        if s.min_bulk_delete_points > s.max_bulk_delete_points {
            return Err(bad("`safety.min_bulk_delete_points` must not exceed `safety.max_bulk_delete_points`"));
        }
        if let Some(q) = &self.qdrant {
            if !(q.url.starts_with("http://") || q.url.starts_with("https://")) {
                return Err(bad("`qdrant.url` must start with http:// or https:// (the gRPC port, 6334 by default)"));
            }
            if q.max_points_per_request == 0 || q.timeout_ms == 0 {
                return Err(bad("`qdrant.max_points_per_request` and `qdrant.timeout_ms` must be positive"));
            }
        }
        if let Some(k) = &self.kafka {
            if k.bootstrap_servers.trim().is_empty() || k.group_id.trim().is_empty() {
                return Err(bad("`kafka.bootstrap_servers` and `kafka.group_id` must not be empty"));
            }
            for key in k.properties.keys().chain(k.secret_properties.keys()) {
                if OWNED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        message: format!(
                            "`kafka.properties.\"{key}\"` is set by freshet itself (use `kafka.bootstrap_servers` / \
                             `kafka.group_id`; offsets are committed only after the sink has acknowledged)"
                        ),
                    });
                }
            }
            if k.max_prefetch_kbytes == 0 {
                return Err(bad("`kafka.max_prefetch_kbytes` must be positive"));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    #[test]
    fn shipped_configs_load_and_owned_kafka_properties_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["local.toml", "kafka.toml", "qdrant.toml", "cluster.toml"] {
            RuntimeConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let text = "[kafka]\nbootstrap_servers = \"b:9092\"\ngroup_id = \"g\"\n[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n";
        let cfg: RuntimeConfig = parse_toml(Path::new("x.toml"), text).expect("parses");
        let err = cfg.validate(Path::new("x.toml")).expect_err("owned property");
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn safety_defaults_and_ranges() {
        let cfg: RuntimeConfig = parse_toml(Path::new("x.toml"), "").expect("parses");
        assert_eq!(cfg.safety, SafetyConfig::default());
        let text = "[safety]\nmax_bulk_delete_ratio = 0.1\nmax_bulk_delete_points = 50\nmin_bulk_delete_points = 0\n";
        let cfg: RuntimeConfig = parse_toml(Path::new("x.toml"), text).expect("parses");
        let cfg = cfg.validate(Path::new("x.toml")).expect("valid");
        assert_eq!((cfg.safety.bulk_delete_limit(100), cfg.safety.bulk_delete_limit(10_000)), (10, 50));
        for bad in [
            "[safety]\nmax_bulk_delete_ratio = 1.5\n",
            "[safety]\nmin_bulk_delete_points = 20\nmax_bulk_delete_points = 10\n",
        ] {
            let cfg: RuntimeConfig = parse_toml(Path::new("x.toml"), bad).expect("parses");
            let err = cfg.validate(Path::new("x.toml")).expect_err(bad);
            assert!(err.to_string().contains("safety."), "{err}");
        }
        let err = parse_toml::<RuntimeConfig>(Path::new("x.toml"), "[safety]\nmax_delete = 3\n").expect_err("unknown");
        assert!(err.to_string().contains("max_delete"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            parse_toml::<RuntimeConfig>(Path::new("x.toml"), "workers = 2\nworkerz = 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("workerz"), "{err}");
    }
}
