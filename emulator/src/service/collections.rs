//! The `qdrant.Collections` gRPC service: create/get/list/delete/exists of collections and
//! alias management, translated to the [`Store`]. Only collections with one unnamed dense
//! vector are emulated; everything else a `CreateCollection` can ask for that the emulator
//! cannot honour is refused with `InvalidArgument`, and cluster/shard-key methods are
//! `Unimplemented`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::alias_operations::Action;
use qdrant_client::qdrant::collections_server::Collections;
use qdrant_client::qdrant::vectors_config::Config;
use qdrant_edge::{Distance, EdgeConfig, EdgeOptimizersConfig, HnswIndexConfig, PayloadSchemaType, WalOptions};
use tonic::{Request, Response, Status};

use crate::collection::CollectionSpec;
use crate::convert::DEFAULT_VECTOR;
use crate::error::{unimplemented, EmulatorError};
use crate::store::{AliasAction, Store};

/// The Collections service over a [`Store`].
#[derive(Debug)]
pub struct CollectionsService {
    store: Arc<Store>,
}

impl CollectionsService {
    /// Serve the collections of `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

const MIB: usize = 1024 * 1024;

/// WAL segment size when the request sets none. Smaller than Qdrant's 32 MiB: the engine
/// preallocates each segment, and tests create many collections. (Bigger records still fit:
/// a segment grows for them.)
const DEFAULT_WAL_MIB: usize = 4;

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `memory` (new) overrides `on_disk` (deprecated): cold/cached data lives on disk.
fn on_disk(memory: Option<i32>, on_disk: Option<bool>) -> Option<bool> {
    match memory.map(grpc::Memory::try_from) {
        Some(Ok(grpc::Memory::Cold | grpc::Memory::Cached)) => Some(true),
        Some(Ok(grpc::Memory::Pinned)) => Some(false),
        Some(Ok(grpc::Memory::Unknown) | Err(_)) | None => on_disk,
    }
}

fn distance(d: i32) -> Result<Distance, EmulatorError> {
    match grpc::Distance::try_from(d) {
        Ok(grpc::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(grpc::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(grpc::Distance::Dot) => Ok(Distance::Dot),
        Ok(grpc::Distance::Manhattan) => Ok(Distance::Manhattan),
        Ok(grpc::Distance::UnknownDistance) | Err(_) => {
            Err(EmulatorError::BadInput(format!("Unknown distance function: {d}")))
        }
    }
}

fn grpc_distance(d: Distance) -> grpc::Distance {
    match d {
        Distance::Cosine => grpc::Distance::Cosine,
        Distance::Euclid => grpc::Distance::Euclid,
        Distance::Dot => grpc::Distance::Dot,
        Distance::Manhattan => grpc::Distance::Manhattan,
    }
}

/// `diff` applied to `base` (Qdrant's semantics: a vector's HNSW settings override the
/// collection's, which override the defaults).
#[allow(deprecated)]
fn hnsw_config(diff: grpc::HnswConfigDiff, base: HnswIndexConfig) -> HnswIndexConfig {
    let mut h = base;
    if let Some(m) = diff.m {
        h.m = to_usize(m);
    }
    if let Some(ef) = diff.ef_construct {
        h.ef_construct = to_usize(ef);
    }
    if let Some(t) = diff.full_scan_threshold {
        h.full_scan_threshold = to_usize(t);
    }
    if let Some(t) = diff.max_indexing_threads {
        h.max_indexing_threads = to_usize(t);
    }
    if let Some(m) = diff.payload_m {
        h.payload_m = Some(to_usize(m));
    }
    if let Some(on_disk) = on_disk(diff.memory, diff.on_disk) {
        h.on_disk = Some(on_disk);
    }
    h
}

#[allow(deprecated)]
fn grpc_hnsw(h: &HnswIndexConfig) -> grpc::HnswConfigDiff {
    grpc::HnswConfigDiff {
        m: Some(h.m as u64),
        ef_construct: Some(h.ef_construct as u64),
        full_scan_threshold: Some(h.full_scan_threshold as u64),
        max_indexing_threads: Some(h.max_indexing_threads as u64),
        on_disk: h.on_disk,
        payload_m: h.payload_m.map(|m| m as u64),
        inline_storage: h.inline_storage,
        memory: None,
    }
}

/// The collection a `CreateCollection` asks for, or why the emulator cannot create it.
#[allow(deprecated)]
fn collection_spec(req: &grpc::CreateCollection) -> Result<CollectionSpec, EmulatorError> {
    let params = match req.vectors_config.as_ref().and_then(|c| c.config.as_ref()) {
        Some(Config::Params(p)) => p,
        Some(Config::ParamsMap(_)) => return Err(EmulatorError::NotEmulated("named vectors".into())),
        None => return Err(EmulatorError::NotEmulated("collections without an unnamed dense vector".into())),
    };
    if req.sparse_vectors_config.as_ref().is_some_and(|s| !s.map.is_empty()) {
        return Err(EmulatorError::NotEmulated("sparse vectors".into()));
    }
    if params.multivector_config.is_some() {
        return Err(EmulatorError::NotEmulated("multi-vectors".into()));
    }
    if params.quantization_config.is_some() || req.quantization_config.is_some() {
        return Err(EmulatorError::NotEmulated("quantization".into()));
    }
    match params.datatype.map(grpc::Datatype::try_from) {
        None | Some(Ok(grpc::Datatype::Default | grpc::Datatype::Float32)) => {}
        Some(Ok(other)) => {
            return Err(EmulatorError::NotEmulated(format!("the vector datatype {}", other.as_str_name())))
        }
        Some(Err(e)) => return Err(EmulatorError::BadInput(format!("unknown vector datatype: {e}"))),
    }
    if req.sharding_method == Some(grpc::ShardingMethod::Custom as i32) {
        return Err(EmulatorError::NotEmulated("custom sharding".into()));
    }
    if params.size == 0 {
        return Err(EmulatorError::BadInput(
            "Validation error in body: [vectors_config.size: value 0 invalid, must be 1 or larger]".into(),
        ));
    }
    let optimizers = req
        .optimizers_config
        .map(|o| EdgeOptimizersConfig {
            deleted_threshold: o.deleted_threshold,
            vacuum_min_vector_number: o.vacuum_min_vector_number.map(to_usize),
            default_segment_number: o.default_segment_number.map(to_usize),
            max_segment_size: o.max_segment_size.map(to_usize),
            indexing_threshold: o.indexing_threshold.map(to_usize),
            prevent_unoptimized: o.prevent_unoptimized,
        })
        .unwrap_or_default();
    let payload_memory = req.payload.as_ref().and_then(|p| p.memory);
    let hnsw = req.hnsw_config.map(|diff| hnsw_config(diff, HnswIndexConfig::default()));
    let wal = WalOptions {
        segment_capacity: req
            .wal_config
            .and_then(|w| w.wal_capacity_mb)
            .map_or(DEFAULT_WAL_MIB, to_usize)
            .max(1)
            .saturating_mul(MIB),
        segment_queue_len: req.wal_config.and_then(|w| w.wal_segments_ahead).map_or(0, to_usize),
        ..WalOptions::default()
    };
    Ok(CollectionSpec {
        dimension: to_usize(params.size),
        distance: distance(params.distance)?,
        on_disk_vectors: on_disk(params.memory, params.on_disk),
        vector_hnsw: params.hnsw_config.map(|diff| hnsw_config(diff, hnsw.unwrap_or_default())),
        hnsw,
        // Qdrant's default: payloads on disk.
        on_disk_payload: on_disk(payload_memory, req.on_disk_payload).unwrap_or(true),
        optimizers,
        wal,
    })
}

fn grpc_schema_type(t: PayloadSchemaType) -> grpc::PayloadSchemaType {
    match t {
        PayloadSchemaType::Keyword => grpc::PayloadSchemaType::Keyword,
        PayloadSchemaType::Integer => grpc::PayloadSchemaType::Integer,
        PayloadSchemaType::Float => grpc::PayloadSchemaType::Float,
        PayloadSchemaType::Geo => grpc::PayloadSchemaType::Geo,
        PayloadSchemaType::Text => grpc::PayloadSchemaType::Text,
        PayloadSchemaType::Bool => grpc::PayloadSchemaType::Bool,
        PayloadSchemaType::Datetime => grpc::PayloadSchemaType::Datetime,
        PayloadSchemaType::Uuid => grpc::PayloadSchemaType::Uuid,
    }
}

/// `CollectionInfo` of a collection: status green, counts, and its configuration (enough for
/// a client to read back the dimension and distance of the vector).
#[allow(deprecated)]
fn collection_info(
    config: &EdgeConfig,
    info: &qdrant_edge::ShardInfo,
    points: usize,
    building: bool,
) -> grpc::CollectionInfo {
    let vector = config.vectors.get(DEFAULT_VECTOR).map(|v| grpc::VectorParams {
        size: v.size as u64,
        distance: grpc_distance(v.distance) as i32,
        hnsw_config: v.hnsw_config.as_ref().map(grpc_hnsw),
        on_disk: v.on_disk,
        ..Default::default()
    });
    let o = &config.optimizers;
    let wal = config.wal_options.clone().unwrap_or_default();
    let payload_schema = info
        .payload_schema
        .iter()
        .map(|(key, index)| {
            (
                key.to_string(),
                grpc::PayloadSchemaInfo {
                    data_type: grpc_schema_type(index.data_type) as i32,
                    params: None,
                    points: Some(index.points as u64),
                },
            )
        })
        .collect();
    grpc::CollectionInfo {
        // Yellow while the optimisers run, as on a Qdrant server.
        status: if building { grpc::CollectionStatus::Yellow } else { grpc::CollectionStatus::Green } as i32,
        optimizer_status: Some(grpc::OptimizerStatus { ok: true, error: String::new() }),
        segments_count: info.segments_count as u64,
        config: Some(grpc::CollectionConfig {
            params: Some(grpc::CollectionParams {
                shard_number: 1,
                on_disk_payload: config.on_disk_payload,
                vectors_config: vector.map(|p| grpc::VectorsConfig { config: Some(Config::Params(p)) }),
                replication_factor: Some(1),
                write_consistency_factor: Some(1),
                sharding_method: Some(grpc::ShardingMethod::Auto as i32),
                ..Default::default()
            }),
            hnsw_config: Some(grpc_hnsw(&config.hnsw_config)),
            optimizer_config: Some(grpc::OptimizersConfigDiff {
                deleted_threshold: o.deleted_threshold,
                vacuum_min_vector_number: o.vacuum_min_vector_number.map(|n| n as u64),
                default_segment_number: o.default_segment_number.map(|n| n as u64),
                max_segment_size: o.max_segment_size.map(|n| n as u64),
                indexing_threshold: o.indexing_threshold.map(|n| n as u64),
                prevent_unoptimized: o.prevent_unoptimized,
                ..Default::default()
            }),
            wal_config: Some(grpc::WalConfigDiff {
                wal_capacity_mb: Some((wal.segment_capacity / MIB) as u64),
                wal_segments_ahead: Some(wal.segment_queue_len as u64),
                wal_retain_closed: Some(wal.retain_closed.get() as u64),
            }),
            quantization_config: None,
            strict_mode_config: None,
            metadata: HashMap::new(),
        }),
        payload_schema,
        points_count: Some(points as u64),
        indexed_vectors_count: Some(info.indexed_vectors_count as u64),
        warnings: vec![],
        update_queue: None,
        created_at: None,
    }
}

fn alias_action(op: grpc::AliasOperations) -> Result<AliasAction, EmulatorError> {
    match op.action {
        Some(Action::CreateAlias(grpc::CreateAlias { collection_name, alias_name })) => {
            Ok(AliasAction::Create { collection: collection_name, alias: alias_name })
        }
        Some(Action::DeleteAlias(grpc::DeleteAlias { alias_name })) => Ok(AliasAction::Delete { alias: alias_name }),
        Some(Action::RenameAlias(grpc::RenameAlias { old_alias_name, new_alias_name })) => {
            Ok(AliasAction::Rename { old: old_alias_name, new: new_alias_name })
        }
        None => Err(EmulatorError::BadInput("an alias action is empty".into())),
    }
}

fn done(started: Instant, result: bool) -> Response<grpc::CollectionOperationResponse> {
    Response::new(grpc::CollectionOperationResponse { result, time: started.elapsed().as_secs_f64() })
}

fn alias_descriptions(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<grpc::AliasDescription> {
    pairs
        .into_iter()
        .map(|(alias_name, collection_name)| grpc::AliasDescription { alias_name, collection_name })
        .collect()
}

#[tonic::async_trait]
impl Collections for CollectionsService {
    async fn get(
        &self,
        request: Request<grpc::GetCollectionInfoRequest>,
    ) -> Result<Response<grpc::GetCollectionInfoResponse>, Status> {
        let started = Instant::now();
        let handle = self.store.resolve(&request.get_ref().collection_name).await?;
        let building = handle.building();
        let result = handle
            .read(move |c| {
                let count = c
                    .shard()
                    .count(qdrant_edge::CountRequest { filter: None, exact: true })
                    .map_err(EmulatorError::engine)?;
                Ok(collection_info(&c.config(), &c.shard().info(), count, building))
            })
            .await?;
        Ok(Response::new(grpc::GetCollectionInfoResponse {
            result: Some(result),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn list(
        &self,
        _request: Request<grpc::ListCollectionsRequest>,
    ) -> Result<Response<grpc::ListCollectionsResponse>, Status> {
        let started = Instant::now();
        let collections =
            self.store.collection_names().await.into_iter().map(|name| grpc::CollectionDescription { name }).collect();
        Ok(Response::new(grpc::ListCollectionsResponse { collections, time: started.elapsed().as_secs_f64() }))
    }

    async fn create(
        &self,
        request: Request<grpc::CreateCollection>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let spec = collection_spec(&req)?;
        self.store.create_collection(&req.collection_name, spec).await?;
        Ok(done(started, true))
    }

    async fn update(
        &self,
        _request: Request<grpc::UpdateCollection>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        Err(unimplemented("qdrant.Collections/Update"))
    }

    async fn delete(
        &self,
        request: Request<grpc::DeleteCollection>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let deleted = self.store.delete_collection(&request.get_ref().collection_name).await?;
        Ok(done(started, deleted))
    }

    async fn update_aliases(
        &self,
        request: Request<grpc::ChangeAliases>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let actions =
            request.into_inner().actions.into_iter().map(alias_action).collect::<Result<Vec<_>, EmulatorError>>()?;
        self.store.update_aliases(actions).await?;
        Ok(done(started, true))
    }

    async fn list_collection_aliases(
        &self,
        request: Request<grpc::ListCollectionAliasesRequest>,
    ) -> Result<Response<grpc::ListAliasesResponse>, Status> {
        let started = Instant::now();
        let collection = request.into_inner().collection_name;
        let aliases = self.store.aliases_of(&collection).await.into_iter().map(|a| (a, collection.clone()));
        Ok(Response::new(grpc::ListAliasesResponse {
            aliases: alias_descriptions(aliases),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn list_aliases(
        &self,
        _request: Request<grpc::ListAliasesRequest>,
    ) -> Result<Response<grpc::ListAliasesResponse>, Status> {
        let started = Instant::now();
        Ok(Response::new(grpc::ListAliasesResponse {
            aliases: alias_descriptions(self.store.aliases().await),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn collection_cluster_info(
        &self,
        _request: Request<grpc::CollectionClusterInfoRequest>,
    ) -> Result<Response<grpc::CollectionClusterInfoResponse>, Status> {
        Err(unimplemented("qdrant.Collections/CollectionClusterInfo"))
    }

    async fn collection_exists(
        &self,
        request: Request<grpc::CollectionExistsRequest>,
    ) -> Result<Response<grpc::CollectionExistsResponse>, Status> {
        let started = Instant::now();
        let exists = match self.store.resolve(&request.get_ref().collection_name).await {
            Ok(_) => true,
            Err(EmulatorError::CollectionNotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(grpc::CollectionExistsResponse {
            result: Some(grpc::CollectionExists { exists }),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn update_collection_cluster_setup(
        &self,
        _request: Request<grpc::UpdateCollectionClusterSetupRequest>,
    ) -> Result<Response<grpc::UpdateCollectionClusterSetupResponse>, Status> {
        Err(unimplemented("qdrant.Collections/UpdateCollectionClusterSetup"))
    }

    async fn create_shard_key(
        &self,
        _request: Request<grpc::CreateShardKeyRequest>,
    ) -> Result<Response<grpc::CreateShardKeyResponse>, Status> {
        Err(unimplemented("qdrant.Collections/CreateShardKey"))
    }

    async fn delete_shard_key(
        &self,
        _request: Request<grpc::DeleteShardKeyRequest>,
    ) -> Result<Response<grpc::DeleteShardKeyResponse>, Status> {
        Err(unimplemented("qdrant.Collections/DeleteShardKey"))
    }

    async fn list_shard_keys(
        &self,
        _request: Request<grpc::ListShardKeysRequest>,
    ) -> Result<Response<grpc::ListShardKeysResponse>, Status> {
        Err(unimplemented("qdrant.Collections/ListShardKeys"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use qdrant_client::qdrant::{CreateCollectionBuilder, Distance as GrpcDistance, VectorParamsBuilder};

    use super::*;

    #[test]
    fn a_single_dense_vector_is_emulated() {
        let req: grpc::CreateCollection = CreateCollectionBuilder::new("docs")
            .vectors_config(VectorParamsBuilder::new(384, GrpcDistance::Cosine).on_disk(true))
            .hnsw_config(grpc::HnswConfigDiffBuilder::default().m(32).ef_construct(200))
            .build();
        let spec = collection_spec(&req).unwrap();
        assert_eq!((spec.dimension, spec.distance), (384, Distance::Cosine));
        assert_eq!(spec.on_disk_vectors, Some(true));
        let hnsw = spec.hnsw.unwrap();
        assert_eq!((hnsw.m, hnsw.ef_construct), (32, 200));
        assert!(spec.on_disk_payload);
    }

    #[test]
    fn named_vectors_are_refused() {
        let mut map = grpc::VectorsConfigBuilder::default();
        map.add_named_vector_params("text", VectorParamsBuilder::new(4, GrpcDistance::Dot));
        let req: grpc::CreateCollection = CreateCollectionBuilder::new("docs").vectors_config(map).build();
        let err = collection_spec(&req).unwrap_err();
        assert!(err.to_string().contains("does not emulate named vectors"), "{err}");
    }
}
