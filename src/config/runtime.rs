//! The runtime config (`config/*.toml`): where a pipeline runs.

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
    /// Address of the HTTP endpoint serving `/metrics`; none disables it.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
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
    /// The embedded engine builds its HNSW index in the background once the pipeline has
    /// been idle for 2 s after writes, and at the latest every this many seconds while busy.
    #[serde(default = "default_optimize_interval_s")]
    pub optimize_interval_s: u64,
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
            max_records_per_pass: default_max_records_per_pass(),
            max_passes_in_flight: default_max_passes_in_flight(),
            max_record_bytes: default_max_record_bytes(),
            embed_cache_entries: default_cache_entries(),
            optimize_interval_s: default_optimize_interval_s(),
        }
    }
}

impl RuntimeConfig {
    /// Read and validate a runtime config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = read_toml(path)?;
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
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    #[test]
    fn unknown_key_is_named() {
        let err =
            parse_toml::<RuntimeConfig>(Path::new("x.toml"), "workers = 2\nworkerz = 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("workerz"), "{err}");
    }
}
