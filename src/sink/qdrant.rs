//! The Qdrant server sink: a collection on a Qdrant server, over gRPC with the generated
//! clients of `qdrant-client` (one tonic channel; TLS for `https://`; the API key from an
//! environment variable, sent as the `api-key` header and never logged).
//!
//! Writes are `wait=true` with strong write ordering. One [`VectorSink::apply`] becomes
//! batched update requests (`UpdateBatch`: upserts, payload merges and deletes in the order
//! given), split at `max_points_per_request` and sent one after the other. Errors map to
//! [`SinkError`]: unavailable, deadline exceeded, aborted, internal and transport failures
//! are transient; resource exhausted is [`SinkError::Throttled`] with the server's
//! `retry-after`; everything else (invalid argument such as a wrong dimension, not found,
//! permission denied, …) is permanent. The runtime's writer retries transient errors while
//! it holds the capability; reads made here (scrolls, counts) retry by themselves for up to
//! the request timeout.
//!
//! The trait is synchronous (the runtime calls sinks off the timely threads, from blocking
//! tasks); each catalog owns a small tokio runtime that drives the gRPC calls.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qdrant_client::qdrant::{
    self as pb, collections_client::CollectionsClient, points_client::PointsClient, points_update_operation as op,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use uuid::Uuid;

use super::{Catalog, CollectionParams, Hit, SinkError, SinkOp, StoredPoint, VectorSink};
use crate::config::{Distance, IndexKind, QdrantConfig};
use crate::model::{keys, ContentHash, Metadata};

/// Adds the API key to every request.
#[derive(Clone)]
struct ApiKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(k) = &self.0 {
            req.metadata_mut().insert("api-key", k.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, ApiKey>;

struct Inner {
    rt: Option<tokio::runtime::Runtime>,
    channel: Channel,
    api_key: ApiKey,
    url: String,
    timeout: Duration,
    max_points_per_request: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // May be dropped inside an async context (the last handle held by a task).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    fn points(&self) -> PointsClient<Svc> {
        PointsClient::with_interceptor(self.channel.clone(), self.api_key.clone())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    fn collections(&self) -> CollectionsClient<Svc> {
        CollectionsClient::with_interceptor(self.channel.clone(), self.api_key.clone())
    }

    /// Run a call on the catalog's runtime.
    fn block<F: Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => unreachable_runtime(),
        }
    }

    /// Run a read, retrying transient failures for up to the request timeout.
    fn read<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = std::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.block(call()) {
                Ok(v) => return Ok(v),
                Err(status) => {
                    let e = error_of(what, &status);
                    if !e.is_transient() || std::time::Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "qdrant read failed; retrying");
                    std::thread::sleep(backoff.max(e.retry_after().unwrap_or_default()));
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_runtime() -> ! {
    panic!("the Qdrant catalog's runtime is gone")
}

/// A gRPC status as a [`SinkError`] (see the module docs for the classification).
pub fn error_of(what: &str, status: &tonic::Status) -> SinkError {
    use tonic::Code;
    let message = format!("{what}: {} ({:?})", status.message(), status.code());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled => SinkError::Transient(message),
        Code::ResourceExhausted => {
            let after = status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<f64>().ok())
                .map_or(Duration::from_secs(1), |s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)));
            SinkError::Throttled { message, after }
        }
        _ => SinkError::Permanent(message),
    }
}

/// The collections on a Qdrant server.
#[derive(Clone)]
pub struct QdrantCatalog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QdrantCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantCatalog").field("url", &self.inner.url).finish()
    }
}

impl QdrantCatalog {
    /// Connect (lazily: the first call connects) to the server `config` names. Fails if the
    /// API key's environment variable is not set.
    pub fn connect(config: &QdrantConfig) -> Result<Self, SinkError> {
        let api_key = match &config.api_key_env {
            Some(var) => {
                let Ok(v) = std::env::var(var) else {
                    return Err(SinkError::Permanent(format!(
                        "the Qdrant API key variable `{var}` (qdrant.api_key_env) is not set"
                    )));
                };
                let value = v.trim().parse().map_err(|_| {
                    SinkError::Permanent(format!("the Qdrant API key in `{var}` is not a valid header value"))
                })?;
                ApiKey(Some(value))
            }
            None => ApiKey(None),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("freshet-qdrant")
            .enable_all()
            .build()
            .map_err(|e| SinkError::Transient(format!("starting the Qdrant client runtime: {e}")))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|e| SinkError::Permanent(format!("qdrant.url {:?}: {e}", config.url)))?
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(timeout)
            .keep_alive_while_idle(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        if config.url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| SinkError::Permanent(format!("TLS for {}: {e}", config.url)))?;
        }
        let channel = {
            let _guard = rt.enter();
            endpoint.connect_lazy()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                rt: Some(rt),
                channel,
                api_key,
                url: config.url.clone(),
                timeout,
                max_points_per_request: config.max_points_per_request,
            }),
        })
    }

    /// The server's version (health check).
    pub fn version(&self) -> Result<String, SinkError> {
        let inner = &self.inner;
        let svc = qdrant_client::qdrant::qdrant_client::QdrantClient::with_interceptor(
            inner.channel.clone(),
            inner.api_key.clone(),
        );
        let reply = inner.read("health check", || {
            let mut c = svc.clone();
            async move { c.health_check(pb::HealthCheckRequest {}).await }
        })?;
        Ok(reply.into_inner().version)
    }

    /// Alias → collection.
    pub fn aliases(&self) -> Result<Vec<(String, String)>, SinkError> {
        let c = self.inner.collections();
        let r = self.inner.read("listing aliases", || {
            let mut c = c.clone();
            async move { c.list_aliases(pb::ListAliasesRequest {}).await }
        })?;
        Ok(r.into_inner().aliases.into_iter().map(|a| (a.alias_name, a.collection_name)).collect())
    }

    fn dimension_of(&self, collection: &str) -> Result<usize, SinkError> {
        let c = self.inner.collections();
        let name = collection.to_string();
        let info = self
            .inner
            .read(&format!("reading collection `{collection}`"), || {
                let mut c = c.clone();
                let name = name.clone();
                async move { c.get(pb::GetCollectionInfoRequest { collection_name: name }).await }
            })?
            .into_inner();
        let params = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        match params {
            Some(pb::vectors_config::Config::Params(p)) => Ok(p.size as usize),
            Some(pb::vectors_config::Config::ParamsMap(m)) => match m.map.get("") {
                Some(p) => Ok(p.size as usize),
                None => Err(SinkError::Permanent(format!(
                    "collection `{collection}` has only named vectors; freshet writes one unnamed dense vector"
                ))),
            },
            None => Err(SinkError::Permanent(format!("collection `{collection}` reports no vector parameters"))),
        }
    }
}

impl Catalog for QdrantCatalog {
    fn describe(&self) -> String {
        format!("Qdrant at {}", self.inner.url)
    }

    fn resolve(&self, name: &str) -> Result<Option<String>, SinkError> {
        if let Some((_, target)) = self.aliases()?.into_iter().find(|(a, _)| a == name) {
            return Ok(Some(target));
        }
        let c = self.inner.collections();
        let n = name.to_string();
        let exists = self
            .inner
            .read("checking a collection", || {
                let mut c = c.clone();
                let n = n.clone();
                async move { c.collection_exists(pb::CollectionExistsRequest { collection_name: n }).await }
            })?
            .into_inner()
            .result
            .is_some_and(|r| r.exists);
        Ok(exists.then(|| name.to_string()))
    }

    fn open(&self, collection: &str) -> Result<Arc<dyn VectorSink>, SinkError> {
        let dimension = self.dimension_of(collection)?;
        Ok(Arc::new(QdrantSink { inner: Arc::clone(&self.inner), collection: collection.to_string(), dimension }))
    }

    // `on_disk` and `on_disk_payload` are deprecated for `memory` (Qdrant 1.17) but are
    // understood by every server version, where `memory` would be ignored by older ones.
    #[allow(deprecated)]
    fn create(&self, collection: &str, params: &CollectionParams) -> Result<Arc<dyn VectorSink>, SinkError> {
        let distance = match params.distance {
            Distance::Cosine => pb::Distance::Cosine,
            Distance::Dot => pb::Distance::Dot,
            Distance::Euclid => pb::Distance::Euclid,
        };
        let hnsw = (params.hnsw_m.is_some() || params.hnsw_ef_construct.is_some()).then(|| pb::HnswConfigDiff {
            m: params.hnsw_m,
            ef_construct: params.hnsw_ef_construct,
            ..Default::default()
        });
        let request = pb::CreateCollection {
            collection_name: collection.to_string(),
            vectors_config: Some(pb::VectorsConfig {
                config: Some(pb::vectors_config::Config::Params(pb::VectorParams {
                    size: params.dimension as u64,
                    distance: distance as i32,
                    on_disk: Some(params.on_disk_vectors),
                    ..Default::default()
                })),
            }),
            hnsw_config: hnsw,
            on_disk_payload: Some(params.on_disk_payload),
            ..Default::default()
        };
        let mut c = self.inner.collections();
        self.inner
            .block(c.create(request))
            .map_err(|s| error_of(&format!("creating collection `{collection}`"), &s))?;
        let mut p = self.inner.points();
        for (field, kind) in &params.indexes {
            let field_type = match kind {
                IndexKind::Keyword => pb::FieldType::Keyword,
                IndexKind::Integer => pb::FieldType::Integer,
                IndexKind::Float => pb::FieldType::Float,
                IndexKind::Bool => pb::FieldType::Bool,
                IndexKind::Datetime => pb::FieldType::Datetime,
            };
            let req = pb::CreateFieldIndexCollection {
                collection_name: collection.to_string(),
                wait: Some(true),
                field_name: field.clone(),
                field_type: Some(field_type as i32),
                ..Default::default()
            };
            self.inner.block(p.create_field_index(req)).map_err(|s| error_of(&format!("indexing `{field}`"), &s))?;
        }
        tracing::info!(collection, dimension = params.dimension, url = %self.inner.url, "qdrant collection created");
        self.open(collection)
    }

    fn switch_alias(&self, alias: &str, collection: &str) -> Result<(), SinkError> {
        use pb::alias_operations::Action;
        let existing = self.aliases()?.into_iter().any(|(a, _)| a == alias);
        let mut actions = Vec::new();
        if existing {
            actions.push(pb::AliasOperations {
                action: Some(Action::DeleteAlias(pb::DeleteAlias { alias_name: alias.to_string() })),
            });
        }
        actions.push(pb::AliasOperations {
            action: Some(Action::CreateAlias(pb::CreateAlias {
                collection_name: collection.to_string(),
                alias_name: alias.to_string(),
            })),
        });
        // Both actions in one request: Qdrant applies them atomically.
        let mut c = self.inner.collections();
        self.inner
            .block(c.update_aliases(pb::ChangeAliases { actions, timeout: None }))
            .map_err(|s| error_of(&format!("pointing alias `{alias}` at `{collection}`"), &s))?;
        Ok(())
    }

    fn delete_collection(&self, collection: &str) -> Result<(), SinkError> {
        let mut c = self.inner.collections();
        self.inner
            .block(c.delete(pb::DeleteCollection { collection_name: collection.to_string(), timeout: None }))
            .map_err(|s| error_of(&format!("dropping collection `{collection}`"), &s))?;
        Ok(())
    }

    fn collections(&self) -> Result<Vec<String>, SinkError> {
        let c = self.inner.collections();
        let r = self.inner.read("listing collections", || {
            let mut c = c.clone();
            async move { c.list(pb::ListCollectionsRequest {}).await }
        })?;
        let mut names: Vec<String> = r.into_inner().collections.into_iter().map(|c| c.name).collect();
        names.sort();
        Ok(names)
    }
}

/// One collection on a Qdrant server.
pub struct QdrantSink {
    inner: Arc<Inner>,
    collection: String,
    dimension: usize,
}

impl std::fmt::Debug for QdrantSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantSink").field("url", &self.inner.url).field("collection", &self.collection).finish()
    }
}

fn pid(id: Uuid) -> pb::PointId {
    pb::PointId { point_id_options: Some(pb::point_id::PointIdOptions::Uuid(id.to_string())) }
}

fn uuid_of(id: Option<pb::PointId>) -> Option<Uuid> {
    match id?.point_id_options? {
        pb::point_id::PointIdOptions::Uuid(s) => Uuid::parse_str(&s).ok(),
        pb::point_id::PointIdOptions::Num(_) => None,
    }
}

fn selector(ids: Vec<Uuid>) -> pb::PointsSelector {
    pb::PointsSelector {
        points_selector_one_of: Some(pb::points_selector::PointsSelectorOneOf::Points(pb::PointsIdsList {
            ids: ids.into_iter().map(pid).collect(),
        })),
    }
}

fn payload_of(m: Metadata) -> HashMap<String, pb::Value> {
    m.into_iter().map(|(k, v)| (k, pb::Value::from(v))).collect()
}

fn metadata_of(p: HashMap<String, pb::Value>) -> Metadata {
    let mut v: Vec<(String, serde_json::Value)> = p.into_iter().map(|(k, v)| (k, v.into_json())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().collect()
}

#[allow(deprecated)]
fn dense_of(v: Option<pb::VectorsOutput>) -> Option<Vec<f32>> {
    let vec = match v?.vectors_options? {
        pb::vectors_output::VectorsOptions::Vector(v) => v,
        pb::vectors_output::VectorsOptions::Vectors(mut named) => named.vectors.remove("")?,
    };
    match vec.vector {
        Some(pb::vector_output::Vector::Dense(d)) => Some(d.data),
        Some(_) => None,
        None => Some(vec.data),
    }
}

fn keyword_match(key: &str, m: pb::r#match::MatchValue) -> pb::Condition {
    pb::Condition {
        condition_one_of: Some(pb::condition::ConditionOneOf::Field(pb::FieldCondition {
            key: key.to_string(),
            r#match: Some(pb::Match { match_value: Some(m) }),
            ..Default::default()
        })),
    }
}

fn value_match(key: &str, v: &serde_json::Value) -> Result<pb::Condition, SinkError> {
    use pb::r#match::MatchValue;
    let m = match v {
        serde_json::Value::String(s) => MatchValue::Keyword(s.clone()),
        serde_json::Value::Bool(b) => MatchValue::Boolean(*b),
        serde_json::Value::Number(n) if n.is_i64() => MatchValue::Integer(n.as_i64().unwrap_or_default()),
        other => return Err(SinkError::Permanent(format!("cannot filter `{key}` on {other} (string, integer, bool)"))),
    };
    Ok(keyword_match(key, m))
}

/// Points in a write: what `max_points_per_request` counts.
fn weight(op: &SinkOp) -> usize {
    match op {
        SinkOp::Upsert(p) => p.len(),
        SinkOp::SetPayload { ids, .. } | SinkOp::Delete(ids) => ids.len(),
    }
}

/// Split writes into requests of at most `max` points, keeping their order.
fn split(ops: Vec<SinkOp>, max: usize) -> Vec<Vec<SinkOp>> {
    let mut requests: Vec<Vec<SinkOp>> = Vec::new();
    let mut current: Vec<SinkOp> = Vec::new();
    let mut size = 0;
    let flush = |current: &mut Vec<SinkOp>, size: &mut usize, requests: &mut Vec<Vec<SinkOp>>| {
        if !current.is_empty() {
            requests.push(std::mem::take(current));
        }
        *size = 0;
    };
    for op in ops {
        if weight(&op) == 0 {
            continue;
        }
        // Cut an oversized op into pieces of `max`.
        let pieces: Vec<SinkOp> = match op {
            SinkOp::Upsert(points) if points.len() > max => {
                let mut out = Vec::new();
                let mut it = points.into_iter().peekable();
                while it.peek().is_some() {
                    out.push(SinkOp::Upsert(it.by_ref().take(max).collect()));
                }
                out
            }
            SinkOp::SetPayload { ids, payload } if ids.len() > max => {
                ids.chunks(max).map(|c| SinkOp::SetPayload { ids: c.to_vec(), payload: payload.clone() }).collect()
            }
            SinkOp::Delete(ids) if ids.len() > max => ids.chunks(max).map(|c| SinkOp::Delete(c.to_vec())).collect(),
            other => vec![other],
        };
        for piece in pieces {
            let w = weight(&piece);
            if size + w > max {
                flush(&mut current, &mut size, &mut requests);
            }
            size += w;
            current.push(piece);
        }
    }
    flush(&mut current, &mut size, &mut requests);
    requests
}

fn operation(op: SinkOp) -> pb::PointsUpdateOperation {
    let o = match op {
        SinkOp::Upsert(points) => op::Operation::Upsert(op::PointStructList {
            points: points
                .into_iter()
                .map(|p| pb::PointStruct {
                    id: Some(pid(p.id)),
                    payload: payload_of(p.payload),
                    vectors: Some(pb::Vectors::from(p.vector)),
                })
                .collect(),
            ..Default::default()
        }),
        SinkOp::SetPayload { ids, payload } => op::Operation::SetPayload(op::SetPayload {
            payload: payload_of(payload),
            points_selector: Some(selector(ids)),
            ..Default::default()
        }),
        SinkOp::Delete(ids) => {
            op::Operation::DeletePoints(op::DeletePoints { points: Some(selector(ids)), ..Default::default() })
        }
    };
    pb::PointsUpdateOperation { operation: Some(o) }
}

impl QdrantSink {
    /// The collection's name on the server.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    fn scroll_page(
        &self,
        filter: Option<pb::Filter>,
        offset: Option<pb::PointId>,
        limit: u32,
        with_vectors: bool,
    ) -> Result<pb::ScrollResponse, SinkError> {
        let p = self.inner.points();
        let request = pb::ScrollPoints {
            collection_name: self.collection.clone(),
            filter,
            offset,
            limit: Some(limit),
            with_payload: Some(true.into()),
            with_vectors: Some(with_vectors.into()),
            ..Default::default()
        };
        Ok(self
            .inner
            .read(&format!("scrolling `{}`", self.collection), || {
                let mut p = p.clone();
                let r = request.clone();
                async move { p.scroll(r).await }
            })?
            .into_inner())
    }
}

impl QdrantSink {
    /// Visit the points matching `filter` (all when none) in id order, `page` at a time.
    fn scroll_all(
        &self,
        filter: Option<pb::Filter>,
        with_vectors: bool,
        page: usize,
        visit: &mut dyn FnMut(Vec<StoredPoint>),
    ) -> Result<(), SinkError> {
        let mut offset = None;
        loop {
            let r = self.scroll_page(filter.clone(), offset, page.clamp(1, u32::MAX as usize) as u32, with_vectors)?;
            visit(
                r.result
                    .into_iter()
                    .filter_map(|p| {
                        Some(StoredPoint {
                            id: uuid_of(p.id)?,
                            payload: metadata_of(p.payload),
                            vector: if with_vectors { dense_of(p.vectors) } else { None },
                        })
                    })
                    .collect(),
            );
            match r.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(()),
            }
        }
    }
}

impl VectorSink for QdrantSink {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn apply(&self, ops: Vec<SinkOp>) -> Result<(), SinkError> {
        for op in &ops {
            if let SinkOp::Upsert(points) = op {
                if let Some(p) = points.iter().find(|p| p.vector.len() != self.dimension) {
                    return Err(SinkError::Permanent(format!(
                        "vector of dimension {} for collection `{}` of dimension {}",
                        p.vector.len(),
                        self.collection,
                        self.dimension
                    )));
                }
            }
        }
        for request in split(ops, self.inner.max_points_per_request) {
            let req = pb::UpdateBatchPoints {
                collection_name: self.collection.clone(),
                wait: Some(true),
                operations: request.into_iter().map(operation).collect(),
                ordering: Some(pb::WriteOrdering { r#type: pb::WriteOrderingType::Strong as i32 }),
                ..Default::default()
            };
            let mut p = self.inner.points();
            self.inner
                .block(p.update_batch(req))
                .map_err(|s| error_of(&format!("writing `{}`", self.collection), &s))?;
        }
        Ok(())
    }

    fn scroll(
        &self,
        with_vectors: bool,
        page: usize,
        visit: &mut dyn FnMut(Vec<StoredPoint>),
    ) -> Result<(), SinkError> {
        self.scroll_all(None, with_vectors, page, visit)
    }

    fn points_of_docs(&self, docs: &[String], with_vectors: bool) -> Result<Vec<StoredPoint>, SinkError> {
        let mut out = Vec::new();
        for group in docs.chunks(256) {
            let filter = pb::Filter {
                must: vec![keyword_match(
                    keys::DOC_ID,
                    pb::r#match::MatchValue::Keywords(pb::RepeatedStrings { strings: group.to_vec() }),
                )],
                ..Default::default()
            };
            self.scroll_all(Some(filter), with_vectors, 1024, &mut |page| out.extend(page))?;
        }
        Ok(out)
    }

    fn vectors_by_hash(
        &self,
        model_id: &str,
        hashes: &[ContentHash],
    ) -> Result<HashMap<ContentHash, Vec<f32>>, SinkError> {
        let mut out = HashMap::new();
        if hashes.is_empty() {
            return Ok(out);
        }
        use pb::r#match::MatchValue;
        let filter = pb::Filter {
            must: vec![
                keyword_match(
                    keys::CONTENT_HASH,
                    MatchValue::Keywords(pb::RepeatedStrings {
                        strings: hashes.iter().map(ContentHash::to_hex).collect(),
                    }),
                ),
                keyword_match(keys::MODEL_ID, MatchValue::Keyword(model_id.to_string())),
            ],
            ..Default::default()
        };
        let limit = (hashes.len() * 4).min(u32::MAX as usize) as u32;
        let r = self.scroll_page(Some(filter), None, limit, true)?;
        for p in r.result {
            let Some(h) =
                p.payload.get(keys::CONTENT_HASH).and_then(|v| v.as_str()).and_then(|s| ContentHash::from_hex(s))
            else {
                continue;
            };
            if let Some(v) = dense_of(p.vectors) {
                if v.len() == self.dimension {
                    out.entry(h).or_insert(v);
                }
            }
        }
        Ok(out)
    }

    fn search(
        &self,
        vector: Vec<f32>,
        k: usize,
        filter: &[(String, serde_json::Value)],
    ) -> Result<Vec<Hit>, SinkError> {
        let filter = if filter.is_empty() {
            None
        } else {
            Some(pb::Filter {
                must: filter.iter().map(|(k, v)| value_match(k, v)).collect::<Result<_, _>>()?,
                ..Default::default()
            })
        };
        let request = pb::QueryPoints {
            collection_name: self.collection.clone(),
            query: Some(pb::Query::from(vector)),
            filter,
            limit: Some(k as u64),
            with_payload: Some(true.into()),
            ..Default::default()
        };
        let p = self.inner.points();
        let r = self.inner.read(&format!("searching `{}`", self.collection), || {
            let mut p = p.clone();
            let r = request.clone();
            async move { p.query(r).await }
        })?;
        Ok(r.into_inner()
            .result
            .into_iter()
            .filter_map(|p| Some(Hit { id: uuid_of(p.id)?, score: p.score, payload: metadata_of(p.payload) }))
            .collect())
    }

    fn count(&self) -> Result<usize, SinkError> {
        let p = self.inner.points();
        let request =
            pb::CountPoints { collection_name: self.collection.clone(), exact: Some(true), ..Default::default() };
        let r = self.inner.read(&format!("counting `{}`", self.collection), || {
            let mut p = p.clone();
            let r = request.clone();
            async move { p.count(r).await }
        })?;
        Ok(r.into_inner().result.map_or(0, |c| c.count as usize))
    }

    /// The server builds its indexes itself.
    fn optimize(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sink::SinkPoint;

    fn up(n: usize) -> SinkOp {
        SinkOp::Upsert(
            (0..n)
                .map(|i| SinkPoint { id: Uuid::from_u128(i as u128), vector: vec![0.0], payload: Metadata::new() })
                .collect(),
        )
    }

    #[test]
    fn split_keeps_order_and_bounds_requests() {
        let ops = vec![up(5), SinkOp::Delete(vec![Uuid::nil(); 3]), up(0), up(2)];
        let reqs = split(ops, 4);
        let sizes: Vec<Vec<usize>> = reqs.iter().map(|r| r.iter().map(weight).collect()).collect();
        assert_eq!(sizes, vec![vec![4], vec![1, 3], vec![2]]);
    }

    #[test]
    fn status_codes_map_to_transient_throttled_or_permanent() {
        assert!(error_of("w", &tonic::Status::unavailable("down")).is_transient());
        let mut s = tonic::Status::resource_exhausted("slow down");
        s.metadata_mut().insert("retry-after", "3".parse().unwrap());
        assert_eq!(error_of("w", &s).retry_after(), Some(Duration::from_secs(3)));
        let e = error_of("w", &tonic::Status::invalid_argument("Wrong input: Vector dimension error"));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("Vector dimension"), "{e}");
    }
}
