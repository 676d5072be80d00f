//! The `qdrant.Points` gRPC service: writes (upsert, delete, payload and vector updates,
//! field indexes, update batches) and reads (get, scroll, count, query nearest, legacy
//! search) on one collection each, by collection name or alias. Requests are converted (and
//! vectors checked against the collection's dimension) before the collection is locked, so
//! an invalid request applies nothing; writes are applied in order, flushed, and answered
//! with `UpdateResult { status: Completed }` (`wait` is ignored: it is always honoured).

use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::points_server::Points;
use qdrant_client::qdrant::query::Variant as QueryVariant;
use qdrant_client::qdrant::vector_input::Variant as InputVariant;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    NamedQuery, PointId, QueryEnum, ScoringQuery, UpdateOperation, VectorInternal, WithPayloadInterface, WithVector,
};
use tonic::{Request, Response, Status};

use crate::collection::Collection;
use crate::convert::{self, DEFAULT_VECTOR};
use crate::error::{unimplemented, EmulatorError};
use crate::filter;
use crate::store::Store;

/// Qdrant's default number of results of `query`.
const DEFAULT_QUERY_LIMIT: usize = 10;

/// The Points service over a [`Store`].
#[derive(Debug)]
pub struct PointsService {
    store: Arc<Store>,
}

impl PointsService {
    /// Serve the points of the collections of `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Resolve `collection`, convert the request with the collection's dimension, apply it.
    async fn apply<F>(&self, collection: &str, make: F) -> Result<Vec<u64>, EmulatorError>
    where
        F: FnOnce(usize) -> Result<Vec<UpdateOperation>, EmulatorError> + Send,
    {
        let handle = self.store.resolve(collection).await?;
        let ops = make(handle.dimension())?;
        handle.write(move |c| c.apply(ops)).await
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn completed(operation_id: Option<u64>) -> grpc::UpdateResult {
    grpc::UpdateResult { operation_id, status: grpc::UpdateStatus::Completed as i32 }
}

fn operation_response(started: Instant, ids: &[u64]) -> Response<grpc::PointsOperationResponse> {
    Response::new(grpc::PointsOperationResponse {
        result: Some(completed(ids.last().copied())),
        time: started.elapsed().as_secs_f64(),
        usage: None,
    })
}

fn retrieved_point(r: qdrant_edge::Record) -> grpc::RetrievedPoint {
    grpc::RetrievedPoint {
        id: Some(convert::grpc_point_id(r.id)),
        payload: convert::grpc_payload(r.payload),
        vectors: convert::grpc_vectors(r.vector),
        shard_key: None,
        order_value: None,
    }
}

fn scored_point(p: qdrant_edge::ScoredPoint) -> grpc::ScoredPoint {
    grpc::ScoredPoint {
        id: Some(convert::grpc_point_id(p.id)),
        payload: convert::grpc_payload(p.payload),
        score: p.score,
        version: p.version,
        vectors: convert::grpc_vectors(p.vector),
        shard_key: None,
        order_value: None,
    }
}

fn search_params(params: Option<grpc::SearchParams>) -> Option<qdrant_edge::SearchParams> {
    params.map(|p| qdrant_edge::SearchParams {
        hnsw_ef: p.hnsw_ef.map(to_usize),
        exact: p.exact.unwrap_or(false),
        indexed_only: p.indexed_only.unwrap_or(false),
        ..Default::default()
    })
}

fn check_vector_name(name: Option<&str>) -> Result<(), EmulatorError> {
    match name {
        Some(name) if name != DEFAULT_VECTOR => Err(convert::unknown_vector_name(name)),
        _ => Ok(()),
    }
}

/// What a `query` looks for the neighbours of.
enum Target {
    Vector(Vec<f32>),
    /// A stored point (its vector; the point itself is excluded from the results, as in Qdrant).
    Point(PointId),
}

fn query_variant_name(v: &QueryVariant) -> &'static str {
    match v {
        QueryVariant::Nearest(_) => "nearest",
        QueryVariant::Recommend(_) => "recommend",
        QueryVariant::Discover(_) => "discover",
        QueryVariant::Context(_) => "context",
        QueryVariant::OrderBy(_) => "order_by",
        QueryVariant::Fusion(_) => "fusion",
        QueryVariant::Sample(_) => "sample",
        QueryVariant::Formula(_) => "formula",
        QueryVariant::NearestWithMmr(_) => "nearest with MMR",
        QueryVariant::Rrf(_) => "rrf",
        QueryVariant::RelevanceFeedback(_) => "relevance feedback",
        QueryVariant::Text(_) => "text",
    }
}

/// The target of a `query`, and the filter to use with it.
fn query_target(
    query: Option<grpc::Query>,
    filter: Option<grpc::Filter>,
    dimension: usize,
) -> Result<(Option<Target>, Option<grpc::Filter>), EmulatorError> {
    let input = match query.and_then(|q| q.variant) {
        None => return Ok((None, filter)),
        Some(QueryVariant::Nearest(input)) => input,
        Some(other) => return Err(EmulatorError::NotEmulated(format!("the `{}` query", query_variant_name(&other)))),
    };
    match input.variant {
        Some(InputVariant::Dense(grpc::DenseVector { data })) => {
            convert::check_dimension(&data, dimension)?;
            Ok((Some(Target::Vector(data)), filter))
        }
        Some(InputVariant::Id(id)) => {
            let target = convert::point_id(id.clone())?;
            let filter = grpc::Filter {
                must: filter.map(grpc::Condition::from).into_iter().collect(),
                must_not: vec![grpc::Condition::has_id([id])],
                ..Default::default()
            };
            Ok((Some(Target::Point(target)), Some(filter)))
        }
        Some(InputVariant::Sparse(_)) => Err(EmulatorError::NotEmulated("sparse vectors".into())),
        Some(InputVariant::MultiDense(_)) => Err(EmulatorError::NotEmulated("multi-vectors".into())),
        Some(InputVariant::Document(_) | InputVariant::Image(_) | InputVariant::Object(_)) => {
            Err(EmulatorError::NotEmulated("inference (documents, images, objects)".into()))
        }
        None => Err(EmulatorError::BadInput("the nearest query has no vector".into())),
    }
}

/// The stored vector of point `id`.
fn vector_of(c: &Collection, id: PointId) -> Result<Vec<f32>, EmulatorError> {
    let records = c
        .shard()
        .retrieve(&[id], Some(WithPayloadInterface::Bool(false)), Some(WithVector::Bool(true)))
        .map_err(EmulatorError::engine)?;
    records
        .into_iter()
        .next()
        .and_then(|r| r.vector)
        .and_then(convert::stored_dense)
        .ok_or_else(|| EmulatorError::NotFound(format!("No point with id {id} found")))
}

fn nearest(v: Vec<f32>) -> QueryEnum {
    QueryEnum::Nearest(NamedQuery { query: VectorInternal::Dense(v), using: None })
}

#[tonic::async_trait]
impl Points for PointsService {
    async fn upsert(
        &self,
        request: Request<grpc::UpsertPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::UpsertPoints { collection_name, points, shard_key_selector, update_filter, update_mode, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = self
            .apply(&collection_name, |dim| Ok(vec![convert::upsert(points, update_filter, update_mode, dim)?]))
            .await?;
        Ok(operation_response(started, &ids))
    }

    async fn delete(
        &self,
        request: Request<grpc::DeletePoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::DeletePoints { collection_name, points, shard_key_selector, .. } = request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = self.apply(&collection_name, |_| Ok(vec![convert::delete_points(points)?])).await?;
        Ok(operation_response(started, &ids))
    }

    async fn get(&self, request: Request<grpc::GetPoints>) -> Result<Response<grpc::GetResponse>, Status> {
        let started = Instant::now();
        let grpc::GetPoints { collection_name, ids, with_payload, with_vectors, shard_key_selector, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = convert::point_ids(ids)?;
        // Qdrant's retrieve returns no payload unless asked (qdrant-edge's would).
        let with_payload = convert::with_payload(with_payload)?.unwrap_or(WithPayloadInterface::Bool(false));
        let with_vector = convert::with_vectors(with_vectors)?;
        let handle = self.store.resolve(&collection_name).await?;
        let records = handle
            .read(move |c| {
                c.shard().retrieve(&ids, Some(with_payload), Some(with_vector)).map_err(EmulatorError::engine)
            })
            .await?;
        Ok(Response::new(grpc::GetResponse {
            result: records.into_iter().map(retrieved_point).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn update_vectors(
        &self,
        request: Request<grpc::UpdatePointVectors>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::UpdatePointVectors { collection_name, points, shard_key_selector, update_filter, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids =
            self.apply(&collection_name, |dim| Ok(vec![convert::update_vectors(points, update_filter, dim)?])).await?;
        Ok(operation_response(started, &ids))
    }

    async fn delete_vectors(
        &self,
        request: Request<grpc::DeletePointVectors>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::DeletePointVectors { collection_name, points_selector, vectors, shard_key_selector, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids =
            self.apply(&collection_name, |_| Ok(vec![convert::delete_vectors(points_selector, vectors)?])).await?;
        Ok(operation_response(started, &ids))
    }

    async fn set_payload(
        &self,
        request: Request<grpc::SetPayloadPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::SetPayloadPoints { collection_name, payload, points_selector, shard_key_selector, key, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = self
            .apply(&collection_name, |_| Ok(vec![convert::set_payload(payload, points_selector, key, false)?]))
            .await?;
        Ok(operation_response(started, &ids))
    }

    async fn overwrite_payload(
        &self,
        request: Request<grpc::SetPayloadPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::SetPayloadPoints { collection_name, payload, points_selector, shard_key_selector, key, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = self
            .apply(&collection_name, |_| Ok(vec![convert::set_payload(payload, points_selector, key, true)?]))
            .await?;
        Ok(operation_response(started, &ids))
    }

    async fn delete_payload(
        &self,
        request: Request<grpc::DeletePayloadPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::DeletePayloadPoints { collection_name, keys, points_selector, shard_key_selector, .. } =
            request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = self.apply(&collection_name, |_| Ok(vec![convert::delete_payload(keys, points_selector)?])).await?;
        Ok(operation_response(started, &ids))
    }

    async fn clear_payload(
        &self,
        request: Request<grpc::ClearPayloadPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::ClearPayloadPoints { collection_name, points, shard_key_selector, .. } = request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let ids = self.apply(&collection_name, |_| Ok(vec![convert::clear_payload(points)?])).await?;
        Ok(operation_response(started, &ids))
    }

    async fn create_field_index(
        &self,
        request: Request<grpc::CreateFieldIndexCollection>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::CreateFieldIndexCollection { collection_name, field_name, field_type, field_index_params, .. } =
            request.into_inner();
        let ids = self
            .apply(&collection_name, |_| {
                Ok(vec![convert::create_field_index(&field_name, field_type, field_index_params)?])
            })
            .await?;
        Ok(operation_response(started, &ids))
    }

    async fn delete_field_index(
        &self,
        request: Request<grpc::DeleteFieldIndexCollection>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let grpc::DeleteFieldIndexCollection { collection_name, field_name, .. } = request.into_inner();
        let ids = self.apply(&collection_name, |_| Ok(vec![convert::delete_field_index(&field_name)?])).await?;
        Ok(operation_response(started, &ids))
    }

    async fn create_vector_name(
        &self,
        _request: Request<grpc::CreateVectorNameRequest>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        Err(unimplemented("qdrant.Points/CreateVectorName"))
    }

    async fn delete_vector_name(
        &self,
        _request: Request<grpc::DeleteVectorNameRequest>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        Err(unimplemented("qdrant.Points/DeleteVectorName"))
    }

    async fn search(&self, request: Request<grpc::SearchPoints>) -> Result<Response<grpc::SearchResponse>, Status> {
        let started = Instant::now();
        let grpc::SearchPoints {
            collection_name,
            vector,
            filter,
            limit,
            with_payload,
            params,
            score_threshold,
            offset,
            vector_name,
            with_vectors,
            shard_key_selector,
            sparse_indices,
            ..
        } = request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        if sparse_indices.is_some() {
            return Err(EmulatorError::NotEmulated("sparse vectors".into()).into());
        }
        check_vector_name(vector_name.as_deref())?;
        let handle = self.store.resolve(&collection_name).await?;
        convert::check_dimension(&vector, handle.dimension())?;
        let search = qdrant_edge::SearchRequest {
            query: nearest(vector),
            filter: filter::convert_opt(filter)?,
            params: search_params(params),
            limit: to_usize(limit),
            offset: offset.map_or(0, to_usize),
            with_payload: convert::with_payload(with_payload)?,
            with_vector: Some(convert::with_vectors(with_vectors)?),
            score_threshold,
        };
        let points = handle.read(move |c| c.shard().search(search).map_err(EmulatorError::engine)).await?;
        Ok(Response::new(grpc::SearchResponse {
            result: points.into_iter().map(scored_point).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn search_batch(
        &self,
        _request: Request<grpc::SearchBatchPoints>,
    ) -> Result<Response<grpc::SearchBatchResponse>, Status> {
        Err(unimplemented("qdrant.Points/SearchBatch"))
    }

    async fn search_groups(
        &self,
        _request: Request<grpc::SearchPointGroups>,
    ) -> Result<Response<grpc::SearchGroupsResponse>, Status> {
        Err(unimplemented("qdrant.Points/SearchGroups"))
    }

    async fn scroll(&self, request: Request<grpc::ScrollPoints>) -> Result<Response<grpc::ScrollResponse>, Status> {
        let started = Instant::now();
        let grpc::ScrollPoints {
            collection_name,
            filter,
            offset,
            limit,
            with_payload,
            with_vectors,
            shard_key_selector,
            order_by,
            ..
        } = request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        if order_by.is_some() {
            return Err(EmulatorError::NotEmulated("`order_by` in scroll".into()).into());
        }
        let scroll = qdrant_edge::ScrollRequest {
            offset: offset.map(convert::point_id).transpose()?,
            limit: limit.map(|l| l as usize),
            filter: filter::convert_opt(filter)?,
            with_payload: convert::with_payload(with_payload)?,
            with_vector: convert::with_vectors(with_vectors)?,
            order_by: None,
        };
        let handle = self.store.resolve(&collection_name).await?;
        let (records, next) = handle.read(move |c| c.shard().scroll(scroll).map_err(EmulatorError::engine)).await?;
        Ok(Response::new(grpc::ScrollResponse {
            next_page_offset: next.map(convert::grpc_point_id),
            result: records.into_iter().map(retrieved_point).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn recommend(
        &self,
        _request: Request<grpc::RecommendPoints>,
    ) -> Result<Response<grpc::RecommendResponse>, Status> {
        Err(unimplemented("qdrant.Points/Recommend"))
    }

    async fn recommend_batch(
        &self,
        _request: Request<grpc::RecommendBatchPoints>,
    ) -> Result<Response<grpc::RecommendBatchResponse>, Status> {
        Err(unimplemented("qdrant.Points/RecommendBatch"))
    }

    async fn recommend_groups(
        &self,
        _request: Request<grpc::RecommendPointGroups>,
    ) -> Result<Response<grpc::RecommendGroupsResponse>, Status> {
        Err(unimplemented("qdrant.Points/RecommendGroups"))
    }

    async fn discover(
        &self,
        _request: Request<grpc::DiscoverPoints>,
    ) -> Result<Response<grpc::DiscoverResponse>, Status> {
        Err(unimplemented("qdrant.Points/Discover"))
    }

    async fn discover_batch(
        &self,
        _request: Request<grpc::DiscoverBatchPoints>,
    ) -> Result<Response<grpc::DiscoverBatchResponse>, Status> {
        Err(unimplemented("qdrant.Points/DiscoverBatch"))
    }

    async fn count(&self, request: Request<grpc::CountPoints>) -> Result<Response<grpc::CountResponse>, Status> {
        let started = Instant::now();
        let grpc::CountPoints { collection_name, filter, exact, shard_key_selector, .. } = request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        let count = qdrant_edge::CountRequest { filter: filter::convert_opt(filter)?, exact: exact.unwrap_or(true) };
        let handle = self.store.resolve(&collection_name).await?;
        let count = handle.read(move |c| c.shard().count(count).map_err(EmulatorError::engine)).await?;
        Ok(Response::new(grpc::CountResponse {
            result: Some(grpc::CountResult { count: count as u64 }),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn update_batch(
        &self,
        request: Request<grpc::UpdateBatchPoints>,
    ) -> Result<Response<grpc::UpdateBatchResponse>, Status> {
        let started = Instant::now();
        let grpc::UpdateBatchPoints { collection_name, operations, .. } = request.into_inner();
        let ids = self
            .apply(&collection_name, |dim| {
                operations.into_iter().map(|op| convert::batch_operation(op, dim)).collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(Response::new(grpc::UpdateBatchResponse {
            result: ids.into_iter().map(|id| completed(Some(id))).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn query(&self, request: Request<grpc::QueryPoints>) -> Result<Response<grpc::QueryResponse>, Status> {
        let started = Instant::now();
        let grpc::QueryPoints {
            collection_name,
            prefetch,
            query,
            using,
            filter,
            params,
            score_threshold,
            limit,
            offset,
            with_vectors,
            with_payload,
            shard_key_selector,
            lookup_from,
            ..
        } = request.into_inner();
        convert::no_shard_keys(shard_key_selector.as_ref())?;
        if !prefetch.is_empty() {
            return Err(EmulatorError::NotEmulated("`prefetch` in query".into()).into());
        }
        if lookup_from.is_some() {
            return Err(EmulatorError::NotEmulated("`lookup_from` in query".into()).into());
        }
        check_vector_name(using.as_deref())?;
        let handle = self.store.resolve(&collection_name).await?;
        let (target, filter) = query_target(query, filter, handle.dimension())?;
        let filter = filter::convert_opt(filter)?;
        let with_payload = convert::with_payload(with_payload)?.unwrap_or(WithPayloadInterface::Bool(false));
        let with_vector = convert::with_vectors(with_vectors)?;
        let params = search_params(params);
        let points = handle
            .read(move |c| {
                let query = match target {
                    None => None,
                    Some(Target::Vector(v)) => Some(v),
                    Some(Target::Point(id)) => Some(vector_of(c, id)?),
                };
                let (limit, offset) = (limit.map_or(DEFAULT_QUERY_LIMIT, to_usize), offset.map_or(0, to_usize));
                let request = qdrant_edge::QueryRequest {
                    prefetches: vec![],
                    query: query.map(|v| ScoringQuery::Vector(nearest(v))),
                    filter,
                    score_threshold: score_threshold.map(OrderedFloat),
                    limit,
                    offset,
                    params,
                    with_vector,
                    with_payload,
                };
                // qdrant-edge 0.7.1 answers with the first `offset + limit` points and leaves
                // cutting off the offset to its caller (Qdrant does it at collection level).
                let mut points = c.shard().query(request).map_err(EmulatorError::engine)?;
                points.drain(..offset.min(points.len()));
                points.truncate(limit);
                Ok(points)
            })
            .await?;
        Ok(Response::new(grpc::QueryResponse {
            result: points.into_iter().map(scored_point).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn query_batch(
        &self,
        _request: Request<grpc::QueryBatchPoints>,
    ) -> Result<Response<grpc::QueryBatchResponse>, Status> {
        Err(unimplemented("qdrant.Points/QueryBatch"))
    }

    async fn query_groups(
        &self,
        _request: Request<grpc::QueryPointGroups>,
    ) -> Result<Response<grpc::QueryGroupsResponse>, Status> {
        Err(unimplemented("qdrant.Points/QueryGroups"))
    }

    async fn facet(&self, _request: Request<grpc::FacetCounts>) -> Result<Response<grpc::FacetResponse>, Status> {
        Err(unimplemented("qdrant.Points/Facet"))
    }

    async fn search_matrix_pairs(
        &self,
        _request: Request<grpc::SearchMatrixPoints>,
    ) -> Result<Response<grpc::SearchMatrixPairsResponse>, Status> {
        Err(unimplemented("qdrant.Points/SearchMatrixPairs"))
    }

    async fn search_matrix_offsets(
        &self,
        _request: Request<grpc::SearchMatrixPoints>,
    ) -> Result<Response<grpc::SearchMatrixOffsetsResponse>, Status> {
        Err(unimplemented("qdrant.Points/SearchMatrixOffsets"))
    }
}
