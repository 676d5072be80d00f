//! Configuration. Two kinds (see DESIGN.md): a *dataflow* file (`dataflows/*.toml`) says
//! what a pipeline computes; a *runtime config* (`config/*.toml`) says where it runs.
//! The serde structs below are the reference documentation of every key; unknown keys are
//! errors naming the key. `validate()` turns the raw structs into checked ones.

mod dataflow;
pub mod predicate;
mod runtime;
pub mod tables;

pub use dataflow::{
    ChunkerSpec, DataflowSpec, Distance, DocumentSpec, EmbedderKind, EmbedderSpec, IndexKind, SinkKind, SinkSpec,
    SourceFormat, SourceKind, SourceSpec, TemplatePart, TextTemplate, TruncatePolicy,
};
pub use runtime::{
    ClusterConfig, KafkaConfig, QdrantConfig, RuntimeConfig, SafetyConfig, SchemaRegistryConfig, StartFrom,
    OWNED_KAFKA_PROPERTIES,
};

use std::path::{Path, PathBuf};

use thiserror::Error;

/// A configuration file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/mistyped keys (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// The values are inconsistent.
    #[error("{path}: invalid configuration: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_toml(path, &text)
}

pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// A file holding one `[embedder]` table (the new embedder of `freshet reindex`).
pub fn load_embedder(path: &Path) -> Result<EmbedderSpec, ConfigError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        embedder: EmbedderSpec,
    }
    let f: File = read_toml(path)?;
    let e = f.embedder;
    e.check().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
    Ok(e)
}
