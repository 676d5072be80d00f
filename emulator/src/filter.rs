//! Qdrant's gRPC `Filter` → qdrant-edge's `Filter`. The gRPC filter is rewritten into the
//! JSON shape of Qdrant's REST API and deserialised by the engine's own serde code, so the
//! engine decides what each condition means. Conditions the emulator does not translate
//! (slice, datetime ranges, prefix/substring matches) are refused with `InvalidArgument`.

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::condition::ConditionOneOf;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::r#match::MatchValue;
use serde_json::{json, Map, Value};

use crate::error::EmulatorError;

/// Translate a gRPC filter into the engine's filter.
pub fn convert(filter: grpc::Filter) -> Result<qdrant_edge::Filter, EmulatorError> {
    let json = filter_json(filter)?;
    serde_json::from_value(json).map_err(|e| EmulatorError::BadInput(format!("the filter is not valid: {e}")))
}

/// Translate an optional gRPC filter.
pub fn convert_opt(filter: Option<grpc::Filter>) -> Result<Option<qdrant_edge::Filter>, EmulatorError> {
    filter.map(convert).transpose()
}

fn filter_json(filter: grpc::Filter) -> Result<Value, EmulatorError> {
    let grpc::Filter { should, must, must_not, min_should } = filter;
    let mut obj = Map::new();
    for (clause, conditions) in [("should", should), ("must", must), ("must_not", must_not)] {
        if !conditions.is_empty() {
            obj.insert(clause.into(), conditions_json(conditions)?);
        }
    }
    if let Some(grpc::MinShould { conditions, min_count }) = min_should {
        obj.insert("min_should".into(), json!({ "conditions": conditions_json(conditions)?, "min_count": min_count }));
    }
    Ok(Value::Object(obj))
}

fn conditions_json(conditions: Vec<grpc::Condition>) -> Result<Value, EmulatorError> {
    conditions.into_iter().map(condition_json).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

fn condition_json(condition: grpc::Condition) -> Result<Value, EmulatorError> {
    match condition.condition_one_of {
        None => Err(EmulatorError::BadInput("a filter condition is empty".into())),
        Some(ConditionOneOf::Field(field)) => field_json(field),
        Some(ConditionOneOf::IsEmpty(grpc::IsEmptyCondition { key })) => Ok(json!({ "is_empty": { "key": key } })),
        Some(ConditionOneOf::IsNull(grpc::IsNullCondition { key })) => Ok(json!({ "is_null": { "key": key } })),
        Some(ConditionOneOf::HasId(grpc::HasIdCondition { has_id })) => {
            let ids = has_id.into_iter().map(id_json).collect::<Result<Vec<_>, _>>()?;
            Ok(json!({ "has_id": ids }))
        }
        Some(ConditionOneOf::Filter(filter)) => filter_json(filter),
        Some(ConditionOneOf::Nested(grpc::NestedCondition { key, filter })) => {
            let filter = filter
                .ok_or_else(|| EmulatorError::BadInput(format!("the nested condition on `{key}` has no filter")))?;
            Ok(json!({ "nested": { "key": key, "filter": filter_json(filter)? } }))
        }
        Some(ConditionOneOf::HasVector(grpc::HasVectorCondition { has_vector })) => {
            Ok(json!({ "has_vector": has_vector }))
        }
        Some(ConditionOneOf::Slice(_)) => Err(EmulatorError::NotEmulated("the `slice` filter condition".into())),
    }
}

fn id_json(id: grpc::PointId) -> Result<Value, EmulatorError> {
    match id.point_id_options {
        Some(PointIdOptions::Num(n)) => Ok(json!(n)),
        Some(PointIdOptions::Uuid(s)) => {
            let uuid = uuid::Uuid::parse_str(&s)
                .map_err(|e| EmulatorError::BadInput(format!("Unable to parse UUID: {s}: {e}")))?;
            Ok(json!(uuid.to_string()))
        }
        None => Err(EmulatorError::BadInput("a point id is empty".into())),
    }
}

fn field_json(field: grpc::FieldCondition) -> Result<Value, EmulatorError> {
    let grpc::FieldCondition {
        key,
        r#match,
        range,
        geo_bounding_box,
        geo_radius,
        values_count,
        geo_polygon,
        datetime_range,
        is_empty,
        is_null,
    } = field;
    if datetime_range.is_some() {
        return Err(EmulatorError::NotEmulated("the `datetime_range` filter condition".into()));
    }
    let mut obj = Map::new();
    if let Some(m) = r#match {
        obj.insert("match".into(), match_json(m)?);
    }
    if let Some(grpc::Range { lt, gt, gte, lte }) = range {
        obj.insert("range".into(), bounds_json([("lt", lt), ("gt", gt), ("gte", gte), ("lte", lte)]));
    }
    if let Some(grpc::ValuesCount { lt, gt, gte, lte }) = values_count {
        obj.insert("values_count".into(), bounds_json([("lt", lt), ("gt", gt), ("gte", gte), ("lte", lte)]));
    }
    if let Some(grpc::GeoBoundingBox { top_left, bottom_right }) = geo_bounding_box {
        let (Some(top_left), Some(bottom_right)) = (top_left, bottom_right) else {
            return Err(EmulatorError::BadInput(format!("the geo bounding box on `{key}` lacks a corner")));
        };
        obj.insert(
            "geo_bounding_box".into(),
            json!({ "top_left": geo_point(top_left), "bottom_right": geo_point(bottom_right) }),
        );
    }
    if let Some(grpc::GeoRadius { center, radius }) = geo_radius {
        let center =
            center.ok_or_else(|| EmulatorError::BadInput(format!("the geo radius on `{key}` has no center")))?;
        obj.insert("geo_radius".into(), json!({ "center": geo_point(center), "radius": radius }));
    }
    if let Some(grpc::GeoPolygon { exterior, interiors }) = geo_polygon {
        let exterior =
            exterior.ok_or_else(|| EmulatorError::BadInput(format!("the geo polygon on `{key}` has no exterior")))?;
        let interiors: Vec<Value> = interiors.into_iter().map(line_string).collect();
        obj.insert("geo_polygon".into(), json!({ "exterior": line_string(exterior), "interiors": interiors }));
    }
    if let Some(is_empty) = is_empty {
        obj.insert("is_empty".into(), json!(is_empty));
    }
    if let Some(is_null) = is_null {
        obj.insert("is_null".into(), json!(is_null));
    }
    if obj.is_empty() {
        return Err(EmulatorError::BadInput(format!("the field condition on `{key}` has no condition")));
    }
    obj.insert("key".into(), json!(key));
    Ok(Value::Object(obj))
}

fn bounds_json<T: Into<Value>>(bounds: [(&str, Option<T>); 4]) -> Value {
    Value::Object(bounds.into_iter().filter_map(|(name, v)| Some((name.to_string(), v?.into()))).collect())
}

fn geo_point(p: grpc::GeoPoint) -> Value {
    json!({ "lon": p.lon, "lat": p.lat })
}

fn line_string(l: grpc::GeoLineString) -> Value {
    json!({ "points": l.points.into_iter().map(geo_point).collect::<Vec<_>>() })
}

fn match_json(m: grpc::Match) -> Result<Value, EmulatorError> {
    match m.match_value {
        None => Err(EmulatorError::BadInput("a match condition is empty".into())),
        Some(MatchValue::Keyword(s)) => Ok(json!({ "value": s })),
        Some(MatchValue::Integer(i)) => Ok(json!({ "value": i })),
        Some(MatchValue::Boolean(b)) => Ok(json!({ "value": b })),
        Some(MatchValue::Text(s)) => Ok(json!({ "text": s })),
        Some(MatchValue::TextAny(s)) => Ok(json!({ "text_any": s })),
        Some(MatchValue::Phrase(s)) => Ok(json!({ "phrase": s })),
        Some(MatchValue::Keywords(grpc::RepeatedStrings { strings })) => Ok(json!({ "any": strings })),
        Some(MatchValue::Integers(grpc::RepeatedIntegers { integers })) => Ok(json!({ "any": integers })),
        Some(MatchValue::ExceptKeywords(grpc::RepeatedStrings { strings })) => Ok(json!({ "except": strings })),
        Some(MatchValue::ExceptIntegers(grpc::RepeatedIntegers { integers })) => Ok(json!({ "except": integers })),
        Some(MatchValue::Prefix(_)) => Err(EmulatorError::NotEmulated("the `prefix` match".into())),
        Some(MatchValue::Substring(_)) => Err(EmulatorError::NotEmulated("the `substring` match".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use qdrant_client::qdrant::{Condition, Filter, Range};

    use super::*;

    #[test]
    fn translates_the_supported_conditions() {
        let filter = Filter {
            must: vec![
                Condition::matches("kind", "doc".to_string()),
                Condition::matches("n", 3i64),
                Condition::matches("flag", true),
                Condition::matches("tags", vec!["a".to_string(), "b".to_string()]),
                Condition::range("score", Range { gte: Some(0.5), ..Default::default() }),
                Condition::is_empty("gone"),
                Condition::is_null("nothing"),
                Condition::has_id([1u64]),
            ],
            must_not: vec![Condition::matches("n", vec![7i64, 8])],
            should: vec![Condition::from(Filter::must([Condition::matches("kind", "note".to_string())]))],
            min_should: None,
        };
        let json = filter_json(filter.clone()).unwrap();
        assert_eq!(json["must"][0], json!({ "key": "kind", "match": { "value": "doc" } }));
        assert_eq!(json["must"][3], json!({ "key": "tags", "match": { "any": ["a", "b"] } }));
        assert_eq!(json["must"][4], json!({ "key": "score", "range": { "gte": 0.5 } }));
        assert_eq!(json["must"][7], json!({ "has_id": [1] }));
        assert_eq!(json["should"][0], json!({ "must": [{ "key": "kind", "match": { "value": "note" } }] }));
        convert(filter).unwrap();
    }

    #[test]
    fn refuses_what_is_not_emulated() {
        let filter = Filter::must([Condition::slice(2, 0)]);
        let err = convert(filter).unwrap_err();
        assert!(err.to_string().contains("does not emulate the `slice` filter condition"), "{err}");
    }
}
