//! The dataflow file (`dataflows/*.toml`): what a pipeline computes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::tables::{ChildSpec, LookupSpec, MultiTable, TableSpec};
use super::{read_toml, ConfigError};

/// A pipeline definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataflowSpec {
    /// Pipeline name (used in logs and metrics).
    pub name: String,
    /// Where change events come from.
    pub source: SourceSpec,
    /// How a source row becomes a document.
    pub document: DocumentSpec,
    /// How a document's text is cut into chunks.
    #[serde(default)]
    pub chunker: ChunkerSpec,
    /// Which model embeds the chunks.
    pub embedder: EmbedderSpec,
    /// Where the vectors go.
    pub sink: SinkSpec,
    /// The CDC tables of a document built from several tables (see `document.root`).
    #[serde(default)]
    pub tables: Vec<TableSpec>,
    /// Many-to-one lookups of a multi-table document (`{author.name}`).
    #[serde(default)]
    pub lookups: Vec<LookupSpec>,
    /// One-to-many collections of a multi-table document (`tags = [...]`).
    #[serde(default)]
    pub children: Vec<ChildSpec>,
}

/// Source of change events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `file` (JSON lines) or `kafka` (the brokers and consumer group are in the runtime
    /// config's `[kafka]` section).
    pub kind: SourceKind,
    /// For `kafka`: the topics to read (all their partitions).
    #[serde(default)]
    pub topics: Vec<String>,
    /// For `file`: path of the JSON-lines file (one record value per line).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Record format.
    #[serde(default)]
    pub format: SourceFormat,
    /// Table whose events are decoded (`schema.table` or `table`); events of other tables
    /// are counted and skipped. Omit to accept every table.
    #[serde(default)]
    pub table: Option<String>,
    /// For `file`: when set, each line is `key<separator>value` (kafka-console-consumer
    /// with `print.key=true` uses a tab).
    #[serde(default)]
    pub key_separator: Option<String>,
    /// What a `TRUNCATE` of the table (Debezium `op: "t"`) does: `apply` deletes every
    /// document older than it (the table was emptied); `dead-letter` deletes nothing and
    /// writes it to the dead-letter file with reason `truncate_refused` (where a truncate is
    /// maintenance rather than data, e.g. a table reloaded in place).
    #[serde(default)]
    pub truncate: TruncatePolicy,
}

/// What a table truncate does (`source.truncate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TruncatePolicy {
    /// Delete every document older than the truncate.
    #[default]
    Apply,
    /// Delete nothing; dead-letter the truncate (`truncate_refused`).
    DeadLetter,
}

/// Kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A JSON-lines file of events.
    File,
    /// Kafka topics (any Kafka-protocol broker).
    Kafka,
}

/// Record formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// Debezium's envelope rendered by the JsonConverter (with or without `schema`).
    #[default]
    DebeziumJson,
    /// Plain upserts: key = document id (JSON or text), value = the row as a JSON object,
    /// null value = delete. Changes are ordered by partition offset, so `document.version`
    /// is not used with this format.
    UpsertJson,
    /// Debezium's envelope rendered by an Avro converter: key and value in the Confluent
    /// wire format, their writer schemas from the `[schema_registry]`. Same meaning as
    /// `debezium-json`.
    DebeziumAvro,
    /// Plain upserts in Avro (key and value in the Confluent wire format, null value =
    /// delete); as `upsert-json` otherwise.
    UpsertAvro,
}

impl SourceFormat {
    /// Whether records are Avro in the Confluent wire format (schemas from the registry).
    pub fn is_avro(self) -> bool {
        matches!(self, SourceFormat::DebeziumAvro | SourceFormat::UpsertAvro)
    }

    /// Whether records are plain upserts (ordered by offset, no envelope).
    pub fn is_upsert(self) -> bool {
        matches!(self, SourceFormat::UpsertJson | SourceFormat::UpsertAvro)
    }

    /// The name used in the dataflow file.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::DebeziumJson => "debezium-json",
            SourceFormat::UpsertJson => "upsert-json",
            SourceFormat::DebeziumAvro => "debezium-avro",
            SourceFormat::UpsertAvro => "upsert-avro",
        }
    }
}

/// How a row becomes a document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSpec {
    /// Column(s) forming the document id (composite ids are joined with `/`). A multi-table
    /// document's id is its root row's key: leave `id` out (or repeat the root's key).
    #[serde(default)]
    pub id: Vec<String>,
    /// The table (a `[[tables]]` name) whose rows are the documents: set it to build
    /// documents from several tables (`src/config/tables.rs`). Unset: every row of the
    /// source table is a document, as `id`, `version`, `source.table` say.
    #[serde(default)]
    pub root: Option<String>,
    /// Which root rows are documents, e.g. `deleted_at is null and lang = "en"`
    /// (`src/config/predicate.rs`). A document that stops matching leaves the index; one
    /// that matches again comes back with the vectors it had. Needs `root`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Envelope path of the version (`source.lsn`); events without it use their source
    /// position. Omit to always use the source position.
    #[serde(default)]
    pub version: Option<String>,
    /// Text to embed, with `{column}` placeholders (`{{` and `}}` for literal braces).
    pub text: String,
    /// Columns copied into every point's payload.
    #[serde(default)]
    pub metadata: Vec<String>,
}

/// Chunker settings (text-splitter, markdown-aware).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerSpec {
    /// Largest chunk, in characters.
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// Characters repeated between consecutive chunks of one long paragraph.
    #[serde(default)]
    pub overlap_chars: usize,
}

fn default_max_chars() -> usize {
    1000
}

impl Default for ChunkerSpec {
    fn default() -> Self {
        Self { max_chars: default_max_chars(), overlap_chars: 0 }
    }
}

/// Embedder settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderSpec {
    /// `local-minilm` or `hash` (tests and benchmarks only).
    pub kind: EmbedderKind,
    /// For `local-minilm`: directory with model.safetensors, tokenizer.json, config.json.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// For `hash`: append a line for every embedding call to this file — the number of
    /// texts, then their content hashes (hex), space-separated (tests count embedding spend,
    /// and texts embedded twice, across crashes with it).
    #[serde(default)]
    pub call_log: Option<PathBuf>,
    /// For `hash`: vector dimension.
    #[serde(default = "default_hash_dimension")]
    pub dimension: usize,
    /// For `hash`: another seed is another "model" of the same dimension (model id
    /// `freshet/hash-<dimension>-seed<seed>`), for testing model upgrades.
    #[serde(default)]
    pub seed: u64,
    /// Texts are truncated to this many tokens by the model.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Most texts in one embedding batch.
    #[serde(default = "default_batch_texts")]
    pub max_batch_texts: usize,
    /// Smallest batch when the endpoint throttles (429): batches halve down to this, never
    /// to one text per request (default: a quarter of `max_batch_texts`).
    #[serde(default)]
    pub min_batch_texts: Option<usize>,
    /// Most tokens in one embedding batch.
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Longest a text waits for its batch to fill, in milliseconds.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Embedding batches running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// For `openai`, `tei`, `ollama`: the endpoint's base URL (`http://` or `https://`),
    /// e.g. `https://api.openai.com` or `http://127.0.0.1:8080`.
    #[serde(default)]
    pub url: Option<String>,
    /// For HTTP kinds: the model name sent in requests (openai, ollama) and the `model_id`
    /// written into payloads (all three).
    #[serde(default)]
    pub model: Option<String>,
    /// For HTTP kinds: environment variable holding the API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// For HTTP kinds: extra request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// For HTTP kinds: whole-request timeout in milliseconds.
    #[serde(default = "default_http_timeout_ms")]
    pub timeout_ms: u64,
    /// For HTTP kinds: connect timeout in milliseconds.
    #[serde(default = "default_http_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// For HTTP kinds: the model's `tokenizer.json`, for exact token counts in batching
    /// (without it: one token per 4 bytes, at least one per word).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
}

impl EmbedderSpec {
    /// Check value ranges (the message names the key).
    pub fn check(&self) -> Result<(), String> {
        if self.max_batch_texts == 0 || self.max_batch_tokens == 0 || self.concurrency == 0 {
            return Err("`embedder.max_batch_texts`, `max_batch_tokens`, `concurrency` must be positive".into());
        }
        if self.dimension == 0 || self.dimension > 65_536 {
            return Err("`embedder.dimension` must be between 1 and 65536".into());
        }
        if self.kind.is_http() {
            let Some(url) = &self.url else {
                return Err("an HTTP embedder needs `embedder.url` (the endpoint's base URL)".into());
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("`embedder.url` must start with http:// or https://".into());
            }
            if self.model.as_deref().is_none_or(str::is_empty) {
                return Err("an HTTP embedder needs `embedder.model`: the model name requested (openai, ollama) and \
                            the `model_id` written into payloads"
                    .into());
            }
            if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
                return Err("`embedder.timeout_ms` and `connect_timeout_ms` must be positive".into());
            }
        } else if self.url.is_some() || self.api_key_env.is_some() || !self.headers.is_empty() {
            return Err(
                "`embedder.url`, `api_key_env` and `headers` are for the HTTP kinds (openai, tei, ollama)".into()
            );
        }
        Ok(())
    }
}

fn default_hash_dimension() -> usize {
    384
}
fn default_max_tokens() -> usize {
    256
}
fn default_batch_texts() -> usize {
    64
}
fn default_batch_tokens() -> usize {
    8192
}
fn default_max_wait_ms() -> u64 {
    20
}
fn default_concurrency() -> usize {
    1
}
fn default_http_timeout_ms() -> u64 {
    60_000
}
fn default_http_connect_timeout_ms() -> u64 {
    5_000
}

/// Embedder kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 on the CPU (candle).
    LocalMinilm,
    /// Deterministic pseudo-vectors from the content hash: tests and benchmarks only.
    Hash,
    /// An OpenAI-compatible endpoint (`POST /v1/embeddings`): OpenAI, vLLM, Ollama, TEI,
    /// `freshet embed-server`.
    #[serde(rename = "openai")]
    OpenAi,
    /// text-embeddings-inference's native `POST /embed`.
    Tei,
    /// Ollama's `POST /api/embed`.
    Ollama,
}

impl EmbedderKind {
    /// Whether the model is reached over HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Self::OpenAi | Self::Tei | Self::Ollama)
    }
}

impl std::str::FromStr for EmbedderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local-minilm" => Ok(Self::LocalMinilm),
            "hash" => Ok(Self::Hash),
            "openai" => Ok(Self::OpenAi),
            "tei" => Ok(Self::Tei),
            "ollama" => Ok(Self::Ollama),
            other => Err(format!("unknown embedder `{other}` (expected local-minilm, openai, tei, ollama or hash)")),
        }
    }
}

/// Sink settings: the collection freshet owns and how it is created.
///
/// `collection` is the name readers use. freshet makes it an **alias** of a versioned
/// collection `<collection>__<model tag>` (every point's payload also carries `model_id`),
/// so `freshet reindex` can build a collection for another model beside it and switch the
/// alias in one atomic step. A collection created under the bare name by an earlier
/// version keeps working as it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// `embedded` (the Qdrant engine in-process, under the data directory) or `qdrant` (a
    /// Qdrant server over gRPC; address and API key in the runtime config's `[qdrant]`).
    #[serde(default)]
    pub kind: SinkKind,
    /// Collection (alias) name, `[A-Za-z0-9_-]`.
    pub collection: String,
    /// Vector distance of a new collection.
    #[serde(default)]
    pub distance: Distance,
    /// HNSW `m` (edges per node) of a new collection; the engine's default (16) if unset.
    #[serde(default)]
    pub hnsw_m: Option<u64>,
    /// HNSW `ef_construct` of a new collection; the engine's default (100) if unset.
    #[serde(default)]
    pub hnsw_ef_construct: Option<u64>,
    /// Keep a new collection's vectors on disk (memory-mapped) instead of in RAM.
    #[serde(default)]
    pub on_disk_vectors: bool,
    /// Keep a new collection's payloads on disk instead of in RAM.
    #[serde(default)]
    pub on_disk_payload: bool,
    /// Metadata fields to index for filtering, with their type:
    /// `filterable = { lang = "keyword", year = "integer" }`. `doc_id`, `content_hash`
    /// and `model_id` are always indexed.
    #[serde(default)]
    pub filterable: std::collections::BTreeMap<String, IndexKind>,
}

/// Kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// The Qdrant engine in-process.
    #[default]
    Embedded,
    /// A Qdrant server (gRPC).
    Qdrant,
}

/// Vector distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distance {
    /// Cosine similarity (the default; sentence embedders are trained for it).
    #[default]
    Cosine,
    /// Dot product.
    Dot,
    /// Euclidean distance.
    Euclid,
}

/// Payload index types for `sink.filterable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexKind {
    /// Exact string match.
    Keyword,
    /// Integers (match and range).
    Integer,
    /// Floats (range).
    Float,
    /// Booleans.
    Bool,
    /// RFC 3339 times (range).
    Datetime,
}

/// A parsed text template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTemplate {
    /// Literal text and field references, in order.
    pub parts: Vec<TemplatePart>,
}

/// A piece of a [`TextTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Literal(String),
    /// The value of a column.
    Field(String),
}

impl TextTemplate {
    /// Parse `"{title}\n\n{body}"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            // `{a{b}` would name the field `a{b`, which `{{a{b}` cannot
                            // write back (found by fuzzing): refuse it, it is a typo.
                            Some('{') => {
                                return Err(format!(
                                    "`{{` inside the field reference `{{{name}` in text template {s:?} (a literal brace is written `{{{{`)"
                                ))
                            }
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{` in text template {s:?}")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` in text template {s:?}"));
                    }
                    if !lit.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(TemplatePart::Field(name));
                }
                '}' => return Err(format!("unmatched `}}` in text template {s:?}")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(TemplatePart::Literal(lit));
        }
        if !parts.iter().any(|p| matches!(p, TemplatePart::Field(_))) {
            return Err(format!("text template {s:?} names no column"));
        }
        Ok(Self { parts })
    }

    /// The columns the template reads, in order of first use.
    pub fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.parts {
            if let TemplatePart::Field(f) = p {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        out
    }
}

impl DataflowSpec {
    /// Read and validate a dataflow file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let spec: Self = read_toml(path)?;
        spec.validate(path)
    }

    /// Check consistency.
    pub fn validate(self, path: &Path) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        if self.document.root.is_some() {
            self.multi_table_checked().map_err(bad)?;
        } else if self.document.filter.is_some() || !self.tables.is_empty() {
            return Err(bad(
                "`document.filter`, [[tables]], [[lookups]] and [[children]] need `document.root` (the table whose rows are the documents)"
                    .into(),
            ));
        } else if self.document.id.is_empty() {
            return Err(bad("`document.id` must name at least one column".into()));
        }
        TextTemplate::parse(&self.document.text).map_err(|m| bad(format!("`document.text`: {m}")))?;
        if self.chunker.max_chars < 16 {
            return Err(bad("`chunker.max_chars` must be at least 16".into()));
        }
        if self.chunker.overlap_chars >= self.chunker.max_chars {
            return Err(bad("`chunker.overlap_chars` must be below `chunker.max_chars`".into()));
        }
        if self.sink.collection.is_empty()
            || !self.sink.collection.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad("`sink.collection` must be non-empty [A-Za-z0-9_-]".into()));
        }
        if self.sink.collection.contains("__") {
            return Err(bad(
                "`sink.collection` must not contain `__` (freshet names its versioned collections `<name>__<model>`)"
                    .into(),
            ));
        }
        if self.sink.hnsw_m == Some(0) || self.sink.hnsw_ef_construct.is_some_and(|e| e < 4) {
            return Err(bad("`sink.hnsw_m` must be positive and `sink.hnsw_ef_construct` at least 4".into()));
        }
        for key in self.sink.filterable.keys() {
            if !self.document.metadata.contains(key) {
                return Err(bad(format!("`sink.filterable.{key}` is not one of `document.metadata`")));
            }
        }
        self.embedder.check().map_err(bad)?;
        if self.source.kind == SourceKind::File && self.source.path.is_none() {
            return Err(bad("`source.path` is required for a file source".into()));
        }
        if self.source.kind == SourceKind::Kafka {
            if self.topics().is_empty() {
                return Err(bad(
                    "`source.topics` (or `[[tables]] topics`) must name at least one topic for a kafka source".into(),
                ));
            }
            if self.source.path.is_some() || self.source.key_separator.is_some() {
                return Err(bad("`source.path` and `source.key_separator` are for file sources only".into()));
            }
        }
        if self.source.format.is_upsert() && self.document.version.is_some() {
            return Err(bad(format!(
                "`document.version` cannot be used with format \"{}\": its deletes carry no row, so changes are \
                 ordered by partition offset (remove `document.version`)",
                self.source.format.as_str()
            )));
        }
        if self.source.format.is_avro() && self.source.kind != SourceKind::Kafka {
            return Err(bad(format!(
                "format \"{}\" reads Avro records in the schema registry's wire format from Kafka: use a kafka \
                 source (a file source holds JSON lines)",
                self.source.format.as_str()
            )));
        }
        Ok(self)
    }

    /// A small valid spec (hash embedder, `title`/`body` text, `lang`/`status` metadata)
    /// for examples and tests.
    pub fn example_for_tests() -> Self {
        let text = r#"
            name = "example"
            [source]
            kind = "file"
            path = "events.jsonl"
            [document]
            id = ["article_id"]
            version = "source.lsn"
            text = "{title}\n\n{body}"
            metadata = ["lang", "status"]
            [chunker]
            max_chars = 200
            [embedder]
            kind = "hash"
            dimension = 8
            [sink]
            collection = "example"
        "#;
        // The literal above is valid; a failure here is a bug in this function.
        toml::from_str(text).unwrap_or_else(|e| panic!("example spec: {e}"))
    }

    /// A small valid multi-table spec for examples and tests: `articles` (root) with their
    /// `author` (lookup in `authors`) and `tags` (children in `article_tags`), published
    /// ones only.
    pub fn multi_table_example_for_tests() -> Self {
        let text = r#"
            name = "example"
            [source]
            kind = "file"
            path = "events.jsonl"
            [document]
            root = "articles"
            text = "{title}\n\nby {author.name}\n\n{body}\n\nTags: {tags}"
            metadata = ["status", "author.name", "tags"]
            filter = 'status = "published"'
            [[tables]]
            name = "articles"
            table = "public.articles"
            key = ["article_id"]
            version = "source.lsn"
            columns = ["title", "body", "status", "author_id"]
            [[tables]]
            name = "authors"
            table = "public.authors"
            key = ["author_id"]
            version = "source.lsn"
            columns = ["name"]
            [[tables]]
            name = "article_tags"
            table = "public.article_tags"
            key = ["id"]
            version = "source.lsn"
            columns = ["article_id", "tag"]
            [[lookups]]
            name = "author"
            table = "authors"
            on = "author_id"
            [[children]]
            name = "tags"
            table = "article_tags"
            parent = "article_id"
            value = "tag"
            [chunker]
            max_chars = 200
            [embedder]
            kind = "hash"
            dimension = 8
            [sink]
            collection = "example"
        "#;
        let spec: Self = toml::from_str(text).unwrap_or_else(|e| panic!("multi-table example spec: {e}"));
        spec.validate(Path::new("multi_table_example")).unwrap_or_else(|e| panic!("multi-table example spec: {e}"))
    }

    /// The topics a Kafka source reads: `source.topics`, then each table's `topics`, once each.
    pub fn topics(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.source.topics.iter().chain(self.tables.iter().flat_map(|t| t.topics.iter())) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// The multi-table model when `document.root` is set (validated at load).
    pub fn multi_table(&self) -> Option<MultiTable> {
        self.multi_table_checked().ok()
    }

    fn multi_table_checked(&self) -> Result<MultiTable, String> {
        let root = self.document.root.as_deref().ok_or("no `document.root`")?;
        let mut used = TextTemplate::parse(&self.document.text)?.fields();
        used.extend(self.document.metadata.iter().cloned());
        let m = MultiTable::check(
            &self.tables,
            &self.lookups,
            &self.children,
            root,
            self.document.filter.as_deref(),
            &used,
        )?;
        let root_key = &m.tables[m.root].key;
        if !self.document.id.is_empty() && &self.document.id != root_key {
            return Err(format!(
                "`document.id` {:?} is not the root table's key {root_key:?} (leave it out)",
                self.document.id
            ));
        }
        if self.document.version.is_some() || self.source.table.is_some() {
            return Err("with `document.root`, each [[tables]] entry has its own `table` and `version`: remove `document.version` and `source.table`".into());
        }
        if self.source.kind == SourceKind::File && m.tables.iter().any(|t| !t.topics.is_empty()) {
            return Err(
                "`[[tables]] topics` is for a kafka source (a file source's tables are told apart by `table`)".into()
            );
        }
        if self.source.format.is_upsert() {
            return Err("a multi-table dataflow reads Debezium events (`format = \"debezium-json\"` or \"debezium-avro\"): the table of a record comes from its envelope".into());
        }
        Ok(m)
    }

    /// The parsed text template (validated at load).
    pub fn template(&self) -> TextTemplate {
        TextTemplate::parse(&self.document.text).unwrap_or(TextTemplate { parts: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    #[test]
    fn template_parses_fields_and_literals() {
        let t = TextTemplate::parse("{title}\n\n{body} {{x}}").expect("parse");
        assert_eq!(t.fields(), vec!["title".to_string(), "body".to_string()]);
        assert_eq!(t.parts.last(), Some(&TemplatePart::Literal(" {x}".into())));
        assert!(TextTemplate::parse("{title").is_err());
        assert!(TextTemplate::parse("no fields").is_err());
    }

    /// Found by fuzzing (`fuzz/corpus/config`): `{a{b}` parsed as the field `a{b`, which
    /// no template text writes back.
    #[test]
    fn a_brace_inside_a_field_reference_is_refused() {
        let err = TextTemplate::parse("{title{body}").expect_err("a `{` inside a field reference");
        assert!(err.contains("inside the field reference `{title`"), "{err}");
        assert!(TextTemplate::parse("{\n\n{{x{body}").is_err());
        assert_eq!(TextTemplate::parse("{{{body}}}").expect("escaped braces").fields(), vec!["body".to_string()]);
    }

    #[test]
    fn qdrant_dataflow_loads_and_sink_settings_are_checked() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/articles-qdrant.toml");
        let spec = DataflowSpec::load(&path).expect("articles-qdrant.toml");
        assert_eq!(spec.sink.kind, SinkKind::Qdrant);
        assert_eq!(spec.sink.filterable.get("lang"), Some(&IndexKind::Keyword));
        let text = std::fs::read_to_string(&path).expect("read");
        for (from, to, named) in [
            ("filterable = { lang", "filterable = { body", "sink.filterable.body"),
            ("collection = \"articles\"", "collection = \"a__b\"", "__"),
            ("hnsw_m = 16", "hnsw_m = 0", "hnsw_m"),
        ] {
            let spec: DataflowSpec = parse_toml(&path, &text.replace(from, to)).expect("parses");
            let err = spec.validate(&path).expect_err(named);
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn kafka_dataflow_loads_and_upsert_refuses_a_version() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/articles-kafka.toml");
        let spec = DataflowSpec::load(&path).expect("articles-kafka.toml");
        assert_eq!(spec.source.kind, SourceKind::Kafka);
        assert_eq!(spec.source.topics, vec!["app.public.articles".to_string()]);
        let text = std::fs::read_to_string(&path).expect("read");
        let upsert = text.replace("format = \"debezium-json\"", "format = \"upsert-json\"");
        let spec: DataflowSpec = parse_toml(&path, &upsert).expect("parses");
        let err = spec.validate(&path).expect_err("version with upsert-json");
        assert!(err.to_string().contains("document.version"), "{err}");
        let no_topics = text.replace("topics = [\"app.public.articles\"]", "");
        let spec: DataflowSpec = parse_toml(&path, &no_topics).expect("parses");
        assert!(spec.validate(&path).is_err());
        // Avro: from Kafka only; upsert-avro refuses a version like upsert-json.
        let avro = text.replace("format = \"debezium-json\"", "format = \"debezium-avro\"");
        let spec: DataflowSpec = parse_toml(&path, &avro).expect("parses");
        assert_eq!(spec.clone().validate(&path).expect("debezium-avro").source.format, SourceFormat::DebeziumAvro);
        let upsert_avro = text.replace("format = \"debezium-json\"", "format = \"upsert-avro\"");
        let err =
            parse_toml::<DataflowSpec>(&path, &upsert_avro).expect("parses").validate(&path).expect_err("version");
        assert!(err.to_string().contains("upsert-avro"), "{err}");
        let file_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/articles.toml");
        let file_text = std::fs::read_to_string(&file_path)
            .expect("read")
            .replace("format = \"debezium-json\"", "format = \"debezium-avro\"");
        let err =
            parse_toml::<DataflowSpec>(&file_path, &file_text).expect("parses").validate(&file_path).expect_err("file");
        assert!(err.to_string().contains("kafka source"), "{err}");
    }

    #[test]
    fn articles_dataflow_loads_and_unknown_keys_are_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/articles.toml");
        let spec = DataflowSpec::load(&path).expect("articles.toml");
        assert_eq!(spec.document.id, vec!["article_id".to_string()]);
        let text = std::fs::read_to_string(&path).expect("read");
        let broken = text.replace("[chunker]", "[chunker]\nmax_charz = 3");
        let err = parse_toml::<DataflowSpec>(&path, &broken).expect_err("unknown key");
        assert!(err.to_string().contains("max_charz"), "{err}");
    }

    #[test]
    fn the_multi_table_dataflow_loads_and_bad_declarations_are_refused_by_name() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/blog.toml");
        let spec = DataflowSpec::load(&path).expect("blog.toml");
        let m = spec.multi_table().expect("a multi-table dataflow");
        assert_eq!((m.root, m.tables.len(), m.lookups.len(), m.children.len()), (0, 4, 1, 2));
        assert!(m.filter.is_some());
        let text = std::fs::read_to_string(&path).expect("read");
        for (from, to, says) in [
            ("deleted_at is null and", "deleted_at is nul and", "`null` after `deleted_at is`"),
            ("deleted_at is null and", "removed_at is null and", "`removed_at`, which is not a field"),
            ("by {author.name}", "by {author.email}", "`author.email`, which is not a field"),
            ("root = \"articles\"", "root = \"posts\"", "`posts`, which is not one of [[tables]]"),
            ("on = \"author_id\"", "on = \"writer_id\"", "`on = \"writer_id\"` is not a column"),
            ("value = \"tag\"", "value = \"label\"", "`value = \"label\"` is not a column"),
            ("table = \"public.articles\"", "table = \"public.articles\"\ntopics = [\"t\"]", "is for a kafka source"),
        ] {
            let broken = text.replacen(from, to, 1);
            assert_ne!(broken, text, "{from}");
            let spec: DataflowSpec = parse_toml(&path, &broken).expect("parses");
            let err = spec.validate(&path).expect_err(says).to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
        // On Kafka, the topics are the tables' (one topic per table, Debezium's layout).
        let mut on_kafka = text.replacen("kind = \"file\"", "kind = \"kafka\"", 1);
        for t in ["articles", "authors", "article_tags", "article_acl"] {
            let from = format!("table = \"public.{t}\"");
            on_kafka = on_kafka.replacen(&from, &format!("{from}\ntopics = [\"app.public.{t}\"]"), 1);
        }
        on_kafka = on_kafka.replacen("path = \"", "# path = \"", 1);
        let spec: DataflowSpec = parse_toml(&path, &on_kafka).expect("parses");
        let spec = spec.validate(&path).expect("a multi-table dataflow on kafka");
        assert_eq!(spec.topics().len(), 4);
        assert!(spec.topics().contains(&"app.public.article_acl".to_string()));
        let no_root = text.replacen("root = \"articles\"", "", 1);
        let spec: DataflowSpec = parse_toml(&path, &no_root).expect("parses");
        assert!(spec.validate(&path).expect_err("tables without a root").to_string().contains("need `document.root`"));
    }
}
