//! Conversions between Qdrant's gRPC messages and qdrant-edge's types: point ids, payloads,
//! dense vectors (checked against the collection's dimension), payload/vector selectors, and
//! every write request (`UpsertPoints`, `SetPayloadPoints`, one `PointsUpdateOperation` of a
//! batch, ...) into the engine's `UpdateOperation`. Conversion happens before a collection is
//! locked, so a request that does not convert changes nothing.

use std::collections::HashMap;

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::points_selector::PointsSelectorOneOf;
use qdrant_client::qdrant::points_update_operation::Operation as BatchOp;
use qdrant_client::qdrant::{vector, vectors, with_payload_selector, with_vectors_selector};
use qdrant_edge::{
    DeletePayloadOp, FieldIndexOperations, JsonPath, PayloadOps, PointId, PointIdsList, PointInsertOperations,
    PointOperations, PointStructPersisted, PointVectorsPersisted, SetPayloadOp, UpdateOperation, UpdateVectorsOp,
    VectorOperations, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::json;

use crate::error::EmulatorError;
use crate::filter;

/// The engine's name of the single, unnamed dense vector of a collection.
pub const DEFAULT_VECTOR: &str = "";

/// A gRPC point id → the engine's.
pub fn point_id(id: grpc::PointId) -> Result<PointId, EmulatorError> {
    match id.point_id_options {
        Some(PointIdOptions::Num(n)) => Ok(PointId::NumId(n)),
        Some(PointIdOptions::Uuid(s)) => uuid::Uuid::parse_str(&s)
            .map(PointId::Uuid)
            .map_err(|e| EmulatorError::BadInput(format!("Unable to parse UUID: {s}: {e}"))),
        None => Err(EmulatorError::BadInput("a point id is empty".into())),
    }
}

/// An optional gRPC point id (e.g. a point of a request that has none) → the engine's.
pub fn required_point_id(id: Option<grpc::PointId>) -> Result<PointId, EmulatorError> {
    point_id(id.ok_or_else(|| EmulatorError::BadInput("a point has no id".into()))?)
}

/// gRPC point ids → the engine's.
pub fn point_ids(ids: Vec<grpc::PointId>) -> Result<Vec<PointId>, EmulatorError> {
    ids.into_iter().map(point_id).collect()
}

/// The engine's point id → gRPC.
pub fn grpc_point_id(id: PointId) -> grpc::PointId {
    let options = match id {
        PointId::NumId(n) => PointIdOptions::Num(n),
        PointId::Uuid(u) => PointIdOptions::Uuid(u.to_string()),
    };
    grpc::PointId { point_id_options: Some(options) }
}

/// A gRPC payload → the engine's (JSON).
pub fn payload(payload: HashMap<String, grpc::Value>) -> qdrant_edge::Payload {
    qdrant_edge::Payload(payload.into_iter().map(|(k, v)| (k, v.into_json())).collect())
}

/// The engine's payload → gRPC.
pub fn grpc_payload(payload: Option<qdrant_edge::Payload>) -> HashMap<String, grpc::Value> {
    payload.map(|p| p.0.into_iter().map(|(k, v)| (k, grpc::Value::from(v))).collect()).unwrap_or_default()
}

/// A payload key (a JSON path such as `a.b[0]`).
pub fn json_path(key: &str) -> Result<JsonPath, EmulatorError> {
    key.parse().map_err(|()| EmulatorError::BadInput(format!("`{key}` is not a valid payload key (JSON path)")))
}

/// Check that a dense vector has the collection's dimension.
pub fn check_dimension(v: &[f32], dimension: usize) -> Result<(), EmulatorError> {
    if v.len() == dimension {
        Ok(())
    } else {
        Err(EmulatorError::WrongDimension { expected: dimension, got: v.len() })
    }
}

/// A gRPC `Vector` (the `vector` oneof, or the deprecated `data` field) → a dense vector.
pub fn dense_vector(v: grpc::Vector) -> Result<Vec<f32>, EmulatorError> {
    #[allow(deprecated)]
    let grpc::Vector { data, indices, vectors_count, vector } = v;
    match vector {
        Some(vector::Vector::Dense(grpc::DenseVector { data })) => Ok(data),
        Some(vector::Vector::Sparse(_)) => Err(EmulatorError::NotEmulated("sparse vectors".into())),
        Some(vector::Vector::MultiDense(_)) => Err(EmulatorError::NotEmulated("multi-vectors".into())),
        Some(vector::Vector::Document(_) | vector::Vector::Image(_) | vector::Vector::Object(_)) => {
            Err(EmulatorError::NotEmulated("inference (documents, images, objects)".into()))
        }
        None if indices.is_some() => Err(EmulatorError::NotEmulated("sparse vectors".into())),
        None if vectors_count.is_some() => Err(EmulatorError::NotEmulated("multi-vectors".into())),
        None => Ok(data),
    }
}

/// The vector(s) of a point → its dense vector of the collection's dimension. A named-vector
/// map is accepted when it holds only the unnamed vector (`""`), as Qdrant does.
pub fn point_vector(v: Option<grpc::Vectors>, dimension: usize) -> Result<Vec<f32>, EmulatorError> {
    let v = match v.and_then(|v| v.vectors_options) {
        Some(vectors::VectorsOptions::Vector(v)) => dense_vector(v)?,
        Some(vectors::VectorsOptions::Vectors(grpc::NamedVectors { mut vectors })) => {
            if let Some(name) = vectors.keys().find(|name| name.as_str() != DEFAULT_VECTOR) {
                return Err(unknown_vector_name(name));
            }
            match vectors.remove(DEFAULT_VECTOR) {
                Some(v) => dense_vector(v)?,
                None => return Err(EmulatorError::BadInput("a point has no vector".into())),
            }
        }
        None => return Err(EmulatorError::BadInput("a point has no vector".into())),
    };
    check_dimension(&v, dimension)?;
    Ok(v)
}

/// The error for a vector name other than the unnamed vector.
pub fn unknown_vector_name(name: &str) -> EmulatorError {
    EmulatorError::BadInput(format!("Not existing vector name error: {name}"))
}

/// The dense vector among a point's stored vector(s).
pub fn stored_dense(v: qdrant_edge::VectorStructInternal) -> Option<Vec<f32>> {
    match v {
        qdrant_edge::VectorStructInternal::Single(d) => Some(d),
        qdrant_edge::VectorStructInternal::Named(mut m) => match m.remove(DEFAULT_VECTOR)? {
            qdrant_edge::VectorInternal::Dense(d) => Some(d),
            _ => None,
        },
        qdrant_edge::VectorStructInternal::MultiDense(_) => None,
    }
}

/// The engine's stored vector(s) → gRPC output.
pub fn grpc_vectors(v: Option<qdrant_edge::VectorStructInternal>) -> Option<grpc::VectorsOutput> {
    let dense = stored_dense(v?)?;
    #[allow(deprecated)]
    let output = grpc::VectorOutput {
        data: vec![],
        indices: None,
        vectors_count: None,
        vector: Some(grpc::vector_output::Vector::Dense(grpc::DenseVector { data: dense })),
    };
    Some(grpc::VectorsOutput { vectors_options: Some(grpc::vectors_output::VectorsOptions::Vector(output)) })
}

/// A gRPC payload selector → the engine's (`None`: the engine's default for the request).
pub fn with_payload(
    selector: Option<grpc::WithPayloadSelector>,
) -> Result<Option<WithPayloadInterface>, EmulatorError> {
    let Some(options) = selector.and_then(|s| s.selector_options) else {
        return Ok(None);
    };
    let paths = |fields: Vec<String>| fields.iter().map(|f| json_path(f)).collect::<Result<Vec<_>, _>>();
    Ok(Some(match options {
        with_payload_selector::SelectorOptions::Enable(b) => WithPayloadInterface::Bool(b),
        with_payload_selector::SelectorOptions::Include(grpc::PayloadIncludeSelector { fields }) => {
            qdrant_edge::PayloadSelectorInclude::new(paths(fields)?).into()
        }
        with_payload_selector::SelectorOptions::Exclude(grpc::PayloadExcludeSelector { fields }) => {
            qdrant_edge::PayloadSelectorExclude::new(paths(fields)?).into()
        }
    }))
}

/// A gRPC vector selector → the engine's (default: no vectors).
pub fn with_vectors(selector: Option<grpc::WithVectorsSelector>) -> Result<WithVector, EmulatorError> {
    match selector.and_then(|s| s.selector_options) {
        None => Ok(WithVector::Bool(false)),
        Some(with_vectors_selector::SelectorOptions::Enable(b)) => Ok(WithVector::Bool(b)),
        Some(with_vectors_selector::SelectorOptions::Include(grpc::VectorsSelector { names })) => {
            if let Some(name) = names.iter().find(|n| n.as_str() != DEFAULT_VECTOR) {
                return Err(unknown_vector_name(name));
            }
            Ok(WithVector::Bool(!names.is_empty()))
        }
    }
}

/// Which points a write applies to.
enum Selection {
    Ids(Vec<PointId>),
    Filter(qdrant_edge::Filter),
}

fn selection(selector: Option<grpc::PointsSelector>) -> Result<Selection, EmulatorError> {
    match selector.and_then(|s| s.points_selector_one_of) {
        Some(PointsSelectorOneOf::Points(grpc::PointsIdsList { ids })) => Ok(Selection::Ids(point_ids(ids)?)),
        Some(PointsSelectorOneOf::Filter(f)) => Ok(Selection::Filter(filter::convert(f)?)),
        None => Err(EmulatorError::BadInput("the request selects no points (neither ids nor a filter)".into())),
    }
}

fn refuse_shard_keys(selector: Option<&grpc::ShardKeySelector>) -> Result<(), EmulatorError> {
    match selector {
        Some(_) => Err(EmulatorError::NotEmulated("shard keys".into())),
        None => Ok(()),
    }
}

/// Points to upsert (with optional `update_filter` / `update_mode`) → one engine operation.
pub fn upsert(
    points: Vec<grpc::PointStruct>,
    update_filter: Option<grpc::Filter>,
    update_mode: Option<i32>,
    dimension: usize,
) -> Result<UpdateOperation, EmulatorError> {
    let list = points
        .into_iter()
        .map(|p| {
            Ok(PointStructPersisted {
                id: required_point_id(p.id)?,
                vector: VectorStructPersisted::Single(point_vector(p.vectors, dimension)?),
                payload: Some(payload(p.payload)),
            })
        })
        .collect::<Result<Vec<_>, EmulatorError>>()?;
    let points_op = PointInsertOperations::PointsList(list);
    let mode = match update_mode.map(grpc::UpdateMode::try_from) {
        None => None,
        Some(Ok(grpc::UpdateMode::Upsert)) => Some(qdrant_edge::UpdateMode::Upsert),
        Some(Ok(grpc::UpdateMode::InsertOnly)) => Some(qdrant_edge::UpdateMode::InsertOnly),
        Some(Ok(grpc::UpdateMode::UpdateOnly)) => Some(qdrant_edge::UpdateMode::UpdateOnly),
        Some(Err(e)) => return Err(EmulatorError::BadInput(format!("unknown update mode: {e}"))),
    };
    let op = match (filter::convert_opt(update_filter)?, mode) {
        (None, None) => PointOperations::UpsertPoints(points_op),
        (condition, update_mode) => PointOperations::UpsertPointsConditional(qdrant_edge::ConditionalInsertOperation {
            points_op,
            condition: condition.unwrap_or_default(),
            update_mode,
        }),
    };
    Ok(UpdateOperation::PointOperation(op))
}

/// Delete the selected points.
pub fn delete_points(selector: Option<grpc::PointsSelector>) -> Result<UpdateOperation, EmulatorError> {
    Ok(UpdateOperation::PointOperation(match selection(selector)? {
        Selection::Ids(ids) => PointOperations::DeletePoints { ids },
        Selection::Filter(f) => PointOperations::DeletePointsByFilter(f),
    }))
}

/// Set (merge) or overwrite the payload of the selected points, optionally under `key`.
pub fn set_payload(
    values: HashMap<String, grpc::Value>,
    selector: Option<grpc::PointsSelector>,
    key: Option<String>,
    overwrite: bool,
) -> Result<UpdateOperation, EmulatorError> {
    let (points, filter) = match selection(selector)? {
        Selection::Ids(ids) => (Some(ids), None),
        Selection::Filter(f) => (None, Some(f)),
    };
    let key = key.as_deref().map(json_path).transpose()?;
    let op = SetPayloadOp { payload: payload(values), points, filter, key };
    Ok(UpdateOperation::PayloadOperation(if overwrite {
        PayloadOps::OverwritePayload(op)
    } else {
        PayloadOps::SetPayload(op)
    }))
}

/// Delete payload keys of the selected points.
pub fn delete_payload(
    keys: Vec<String>,
    selector: Option<grpc::PointsSelector>,
) -> Result<UpdateOperation, EmulatorError> {
    let keys = keys.iter().map(|k| json_path(k)).collect::<Result<Vec<_>, _>>()?;
    let (points, filter) = match selection(selector)? {
        Selection::Ids(ids) => (Some(ids), None),
        Selection::Filter(f) => (None, Some(f)),
    };
    Ok(UpdateOperation::PayloadOperation(PayloadOps::DeletePayload(DeletePayloadOp { keys, points, filter })))
}

/// Remove the whole payload of the selected points.
pub fn clear_payload(selector: Option<grpc::PointsSelector>) -> Result<UpdateOperation, EmulatorError> {
    Ok(UpdateOperation::PayloadOperation(match selection(selector)? {
        Selection::Ids(points) => PayloadOps::ClearPayload { points },
        Selection::Filter(f) => PayloadOps::ClearPayloadByFilter(f),
    }))
}

/// Replace the vector of existing points.
pub fn update_vectors(
    points: Vec<grpc::PointVectors>,
    update_filter: Option<grpc::Filter>,
    dimension: usize,
) -> Result<UpdateOperation, EmulatorError> {
    let points = points
        .into_iter()
        .map(|p| {
            Ok(PointVectorsPersisted {
                id: required_point_id(p.id)?,
                vector: VectorStructPersisted::Single(point_vector(p.vectors, dimension)?),
            })
        })
        .collect::<Result<Vec<_>, EmulatorError>>()?;
    let update_filter = filter::convert_opt(update_filter)?;
    Ok(UpdateOperation::VectorOperation(VectorOperations::UpdateVectors(UpdateVectorsOp { points, update_filter })))
}

/// Delete the (unnamed) vector of the selected points.
pub fn delete_vectors(
    selector: Option<grpc::PointsSelector>,
    vectors: Option<grpc::VectorsSelector>,
) -> Result<UpdateOperation, EmulatorError> {
    let names = vectors.map(|v| v.names).unwrap_or_default();
    if let Some(name) = names.iter().find(|n| n.as_str() != DEFAULT_VECTOR) {
        return Err(unknown_vector_name(name));
    }
    Ok(UpdateOperation::VectorOperation(match selection(selector)? {
        Selection::Ids(points) => VectorOperations::DeleteVectors(PointIdsList { points }, names),
        Selection::Filter(f) => VectorOperations::DeleteVectorsByFilter(f, names),
    }))
}

/// Create a payload index on `field`, of `field_type` (gRPC `FieldType`) or of the type of
/// the given index parameters. Tuning parameters other than the ones translated here
/// (`is_tenant`, `lookup`, `range`, `is_principal`) are not emulated and are ignored.
pub fn create_field_index(
    field: &str,
    field_type: Option<i32>,
    params: Option<grpc::PayloadIndexParams>,
) -> Result<UpdateOperation, EmulatorError> {
    use grpc::payload_index_params::IndexParams;
    let from_type = match field_type.map(grpc::FieldType::try_from) {
        None => None,
        Some(Ok(t)) => Some(match t {
            grpc::FieldType::Keyword => "keyword",
            grpc::FieldType::Integer => "integer",
            grpc::FieldType::Float => "float",
            grpc::FieldType::Geo => "geo",
            grpc::FieldType::Text => "text",
            grpc::FieldType::Bool => "bool",
            grpc::FieldType::Datetime => "datetime",
            grpc::FieldType::Uuid => "uuid",
        }),
        Some(Err(e)) => return Err(EmulatorError::BadInput(format!("unknown field type: {e}"))),
    };
    let mut schema = serde_json::Map::new();
    let from_params = match params.and_then(|p| p.index_params) {
        None => None,
        Some(IndexParams::KeywordIndexParams(p)) => {
            insert_opt(&mut schema, "is_tenant", p.is_tenant);
            Some("keyword")
        }
        Some(IndexParams::IntegerIndexParams(p)) => {
            insert_opt(&mut schema, "lookup", p.lookup);
            insert_opt(&mut schema, "range", p.range);
            insert_opt(&mut schema, "is_principal", p.is_principal);
            Some("integer")
        }
        Some(IndexParams::FloatIndexParams(p)) => {
            insert_opt(&mut schema, "is_principal", p.is_principal);
            Some("float")
        }
        Some(IndexParams::DatetimeIndexParams(p)) => {
            insert_opt(&mut schema, "is_principal", p.is_principal);
            Some("datetime")
        }
        Some(IndexParams::UuidIndexParams(p)) => {
            insert_opt(&mut schema, "is_tenant", p.is_tenant);
            Some("uuid")
        }
        Some(IndexParams::GeoIndexParams(_)) => Some("geo"),
        Some(IndexParams::TextIndexParams(_)) => Some("text"),
        Some(IndexParams::BoolIndexParams(_)) => Some("bool"),
    };
    let kind = match (from_type, from_params) {
        (Some(t), Some(p)) if t != p => {
            return Err(EmulatorError::BadInput(format!(
                "the field type `{t}` does not match the index parameters for `{p}`"
            )))
        }
        (t, p) => t.or(p),
    };
    let field_schema = match kind {
        None => None,
        Some(kind) if schema.is_empty() => Some(json!(kind)),
        Some(kind) => {
            schema.insert("type".into(), json!(kind));
            Some(serde_json::Value::Object(schema))
        }
    };
    let op = json!({ "create_index": { "field_name": field, "field_schema": field_schema } });
    let op: FieldIndexOperations = serde_json::from_value(op)
        .map_err(|e| EmulatorError::BadInput(format!("the field index is not valid: {e}")))?;
    Ok(UpdateOperation::FieldIndexOperation(op))
}

fn insert_opt(obj: &mut serde_json::Map<String, serde_json::Value>, key: &str, v: Option<bool>) {
    if let Some(v) = v {
        obj.insert(key.into(), json!(v));
    }
}

/// Drop the payload index on `field`.
pub fn delete_field_index(field: &str) -> Result<UpdateOperation, EmulatorError> {
    Ok(UpdateOperation::FieldIndexOperation(FieldIndexOperations::DeleteIndex(json_path(field)?)))
}

/// One operation of an `UpdateBatch` request (the deprecated variants included).
#[allow(deprecated)]
pub fn batch_operation(op: grpc::PointsUpdateOperation, dimension: usize) -> Result<UpdateOperation, EmulatorError> {
    use grpc::points_update_operation as o;
    let op = op.operation.ok_or_else(|| EmulatorError::BadInput("an operation of the batch is empty".into()))?;
    match op {
        BatchOp::Upsert(o::PointStructList { points, shard_key_selector, update_filter, update_mode }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            upsert(points, update_filter, update_mode, dimension)
        }
        BatchOp::DeleteDeprecated(selector) => delete_points(Some(selector)),
        BatchOp::DeletePoints(o::DeletePoints { points, shard_key_selector }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            delete_points(points)
        }
        BatchOp::SetPayload(o::SetPayload { payload, points_selector, shard_key_selector, key }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            set_payload(payload, points_selector, key, false)
        }
        BatchOp::OverwritePayload(o::OverwritePayload { payload, points_selector, shard_key_selector, key }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            set_payload(payload, points_selector, key, true)
        }
        BatchOp::DeletePayload(o::DeletePayload { keys, points_selector, shard_key_selector }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            delete_payload(keys, points_selector)
        }
        BatchOp::ClearPayloadDeprecated(selector) => clear_payload(Some(selector)),
        BatchOp::ClearPayload(o::ClearPayload { points, shard_key_selector }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            clear_payload(points)
        }
        BatchOp::UpdateVectors(o::UpdateVectors { points, shard_key_selector, update_filter }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            update_vectors(points, update_filter, dimension)
        }
        BatchOp::DeleteVectors(o::DeleteVectors { points_selector, vectors, shard_key_selector }) => {
            refuse_shard_keys(shard_key_selector.as_ref())?;
            delete_vectors(points_selector, vectors)
        }
    }
}

/// Refuse a request addressed to shard keys (the emulator has one shard per collection).
pub fn no_shard_keys(selector: Option<&grpc::ShardKeySelector>) -> Result<(), EmulatorError> {
    refuse_shard_keys(selector)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use qdrant_client::qdrant::{PointStruct, Vectors};

    use super::*;

    #[test]
    fn ids_round_trip() {
        let u = uuid::Uuid::new_v4();
        assert_eq!(
            grpc_point_id(point_id(grpc::PointId::from(u.to_string())).unwrap()),
            grpc::PointId::from(u.to_string())
        );
        assert_eq!(point_id(grpc::PointId::from(7u64)).unwrap(), PointId::NumId(7));
        assert!(point_id(grpc::PointId::from("not-a-uuid".to_string())).is_err());
    }

    #[test]
    fn upsert_checks_the_dimension_of_every_point() {
        let ok = PointStruct::new(1, vec![0.0, 1.0], serde_json::Map::new());
        let bad = PointStruct::new(2, vec![0.0, 1.0, 2.0], serde_json::Map::new());
        assert!(upsert(vec![ok.clone()], None, None, 2).is_ok());
        let err = upsert(vec![ok, bad], None, None, 2).unwrap_err();
        assert_eq!(err.to_string(), "Wrong input: Vector dimension error: expected dim: 2, got 3");
    }

    #[test]
    fn named_vectors_other_than_the_unnamed_one_are_refused() {
        let named: Vectors = HashMap::from([("text".to_string(), vec![1.0f32])]).into();
        assert!(point_vector(Some(named), 1).unwrap_err().to_string().contains("Not existing vector name error: text"));
        let unnamed: Vectors = HashMap::from([(String::new(), vec![1.0f32])]).into();
        assert_eq!(point_vector(Some(unnamed), 1).unwrap(), vec![1.0]);
    }

    #[test]
    fn field_index_schema_from_type_or_params() {
        let op = create_field_index("doc_id", Some(grpc::FieldType::Keyword as i32), None).unwrap();
        assert!(format!("{op:?}").contains("Keyword"), "{op:?}");
        let params =
            grpc::PayloadIndexParams {
                index_params: Some(grpc::payload_index_params::IndexParams::IntegerIndexParams(
                    grpc::IntegerIndexParams { lookup: Some(true), range: Some(false), ..Default::default() },
                )),
            };
        let op = create_field_index("n", None, Some(params)).unwrap();
        assert!(format!("{op:?}").contains("Integer"), "{op:?}");
    }
}
