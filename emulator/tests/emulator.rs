//! End-to-end tests of the Qdrant emulator: each test starts the built binary on port 0 with
//! a fresh data directory and talks to it with qdrant-client (and, for multi-action alias
//! changes, the raw generated gRPC client), asserting on the outcomes Qdrant would produce.

#![allow(clippy::unwrap_used)]

mod harness;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::{dense, id_str, json, payload, scroll_all, status, Emulator};
use qdrant_client::qdrant::alias_operations::Action;
use qdrant_client::qdrant::collections_client::CollectionsClient;
use qdrant_client::qdrant::points_update_operation::{
    ClearPayload, DeletePayload, DeletePoints, Operation, OverwritePayload, PointStructList, SetPayload,
};
use qdrant_client::qdrant::vectors_config::Config;
use qdrant_client::qdrant::{
    AliasOperations, ChangeAliases, CollectionStatus, Condition, CountPointsBuilder, CreateAlias, CreateAliasBuilder,
    CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeleteAlias, DeletePointVectorsBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder,
    OptimizersConfigDiffBuilder, PointId, PointStruct, PointVectors, PointsIdsList, PointsSelector,
    PointsUpdateOperation, Query, QueryPointsBuilder, Range, RecommendPointsBuilder, ScrollPointsBuilder,
    SearchParamsBuilder, SearchPointsBuilder, SetPayloadPointsBuilder, UpdateBatchPointsBuilder, UpdateMode,
    UpdatePointVectorsBuilder, UpsertPointsBuilder, VectorParamsBuilder, VectorsSelector,
};
use qdrant_client::Qdrant;
use serde_json::json;
use tonic::Code;

async fn create(client: &Qdrant, name: &str, dim: u64, distance: Distance) {
    client
        .create_collection(CreateCollectionBuilder::new(name).vectors_config(VectorParamsBuilder::new(dim, distance)))
        .await
        .unwrap();
}

fn point(id: impl Into<PointId>, vector: Vec<f32>, json: serde_json::Value) -> PointStruct {
    PointStruct::new(id, vector, payload(json))
}

async fn count(client: &Qdrant, collection: &str, filter: Option<Filter>) -> u64 {
    let mut request = CountPointsBuilder::new(collection).exact(true);
    if let Some(f) = filter {
        request = request.filter(f);
    }
    client.count(request).await.unwrap().result.unwrap().count
}

async fn payloads(client: &Qdrant, collection: &str) -> BTreeMap<String, serde_json::Value> {
    scroll_all(client, collection, 100)
        .await
        .into_iter()
        .map(|p| (id_str(p.id.as_ref().unwrap()), json(p.payload)))
        .collect()
}

fn ids(ids: &[u64]) -> PointsSelector {
    PointsSelector::from(ids.iter().map(|&i| PointId::from(i)).collect::<Vec<_>>())
}

fn op(operation: Operation) -> PointsUpdateOperation {
    PointsUpdateOperation { operation: Some(operation) }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_upsert_and_read_back_nested_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();

    let health = client.health_check().await.unwrap();
    assert_eq!(health.title, "qdrant - vector search engine (freshet emulator)");
    assert_eq!(health.version, "1.16.0");

    create(&client, "docs", 4, Distance::Dot).await;
    assert!(client.collection_exists("docs").await.unwrap());
    client.create_field_index(CreateFieldIndexCollectionBuilder::new("docs", "doc", FieldType::Keyword)).await.unwrap();

    let uuid = "0b6e1b4e-9c1f-4a53-8d40-4b0c8c4d9a10";
    let nested = json!({
        "doc": "a",
        "meta": { "title": "Hello", "tags": ["x", "y"], "depth": { "n": 3, "ok": true, "none": null } },
        "score": 0.25
    });
    let response = client
        .upsert_points(
            UpsertPointsBuilder::new(
                "docs",
                vec![
                    point(uuid.to_string(), vec![1.0, 2.0, 3.0, 4.0], nested.clone()),
                    point(7, vec![0.5, 0.5, 0.5, 0.5], json!({ "doc": "b" })),
                    point(8, vec![0.0, 0.0, 0.0, 1.0], json!({ "doc": "b", "n": 8 })),
                ],
            )
            .wait(true),
        )
        .await
        .unwrap();
    let result = response.result.unwrap();
    assert_eq!(result.status, qdrant_client::qdrant::UpdateStatus::Completed as i32);
    assert!(result.operation_id.is_some());

    let got = client
        .get_points(
            GetPointsBuilder::new("docs", vec![PointId::from(uuid.to_string()), PointId::from(8), PointId::from(99)])
                .with_payload(true)
                .with_vectors(true),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(got.len(), 2, "point 99 does not exist");
    let by_id: HashMap<_, _> = got.into_iter().map(|p| (id_str(p.id.as_ref().unwrap()), p)).collect();
    assert_eq!(json(by_id[uuid].payload.clone()), nested);
    assert_eq!(dense(&by_id[uuid]), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(json(by_id["8"].payload.clone()), json!({ "doc": "b", "n": 8 }));
    let bare = client.get_points(GetPointsBuilder::new("docs", vec![PointId::from(7)])).await.unwrap().result;
    assert!(bare[0].payload.is_empty() && bare[0].vectors.is_none(), "get returns neither unless asked");

    // Scroll in pages of two: ids in order (numbers before UUIDs), with a next page offset.
    let first = client.scroll(ScrollPointsBuilder::new("docs").limit(2).with_payload(true)).await.unwrap();
    assert_eq!(first.result.iter().map(|p| id_str(p.id.as_ref().unwrap())).collect::<Vec<_>>(), ["7", "8"]);
    let next = first.next_page_offset.expect("a second page");
    let second = client.scroll(ScrollPointsBuilder::new("docs").limit(2).offset(next)).await.unwrap();
    assert_eq!(second.result.len(), 1);
    assert_eq!(id_str(second.result[0].id.as_ref().unwrap()), uuid);
    assert_eq!(json(second.result[0].payload.clone()), nested, "scroll returns payloads by default");
    assert!(second.next_page_offset.is_none());

    let filtered = client
        .scroll(ScrollPointsBuilder::new("docs").filter(Filter::must([Condition::matches("doc", "b".to_string())])))
        .await
        .unwrap();
    assert_eq!(filtered.result.len(), 2);

    assert_eq!(count(&client, "docs", None).await, 3);
    assert_eq!(count(&client, "docs", Some(Filter::must([Condition::matches("doc", "b".to_string())]))).await, 2);
    let nested_filter = Filter::must([Condition::matches("meta.depth.n", 3i64)]);
    assert_eq!(count(&client, "docs", Some(nested_filter)).await, 1);

    let info = client.collection_info("docs").await.unwrap().result.unwrap();
    assert_eq!(info.points_count, Some(3));
    assert_eq!(info.status, qdrant_client::qdrant::CollectionStatus::Green as i32);
    let Some(Config::Params(params)) = info.config.unwrap().params.unwrap().vectors_config.unwrap().config else {
        panic!("expected the params of one unnamed vector");
    };
    assert_eq!((params.size, params.distance), (4, Distance::Dot as i32));
    assert!(info.payload_schema.contains_key("doc"), "the field index is reported");

    let names: Vec<_> = client.list_collections().await.unwrap().collections.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["docs"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_dimension_is_rejected_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 3, Distance::Cosine).await;

    let err = client
        .upsert_points(UpsertPointsBuilder::new(
            "docs",
            vec![point(1, vec![1.0, 0.0, 0.0], json!({})), point(2, vec![1.0, 0.0], json!({}))],
        ))
        .await
        .unwrap_err();
    let st = status(err);
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(st.message(), "Wrong input: Vector dimension error: expected dim: 3, got 2");
    assert_eq!(count(&client, "docs", None).await, 0, "the valid point of the request was not applied");

    // In a batch too: the upsert before the bad one is not applied either.
    let err = client
        .update_points_batch(UpdateBatchPointsBuilder::new(
            "docs",
            vec![
                op(Operation::Upsert(PointStructList {
                    points: vec![point(3, vec![0.0, 1.0, 0.0], json!({}))],
                    ..Default::default()
                })),
                op(Operation::Upsert(PointStructList {
                    points: vec![point(4, vec![0.0, 1.0, 0.0, 1.0], json!({}))],
                    ..Default::default()
                })),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(status(err).message(), "Wrong input: Vector dimension error: expected dim: 3, got 4");
    assert_eq!(count(&client, "docs", None).await, 0);

    let err =
        client.query(QueryPointsBuilder::new("docs").query(Query::new_nearest(vec![1.0, 0.0]))).await.unwrap_err();
    assert_eq!(status(err).code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_collections_are_not_found_and_duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();

    let expected = "Not found: Collection `nope` doesn't exist!";
    let st = status(client.collection_info("nope").await.unwrap_err());
    assert_eq!((st.code(), st.message()), (Code::NotFound, expected));
    let st = status(
        client.upsert_points(UpsertPointsBuilder::new("nope", vec![point(1, vec![1.0], json!({}))])).await.unwrap_err(),
    );
    assert_eq!((st.code(), st.message()), (Code::NotFound, expected));
    let st = status(client.scroll(ScrollPointsBuilder::new("nope")).await.unwrap_err());
    assert_eq!((st.code(), st.message()), (Code::NotFound, expected));
    assert!(!client.collection_exists("nope").await.unwrap());
    assert!(!client.delete_collection("nope").await.unwrap().result, "deleting a missing collection reports false");

    create(&client, "docs", 2, Distance::Euclid).await;
    let st = status(
        client
            .create_collection(
                CreateCollectionBuilder::new("docs").vectors_config(VectorParamsBuilder::new(2, Distance::Euclid)),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((st.code(), st.message()), (Code::AlreadyExists, "Wrong input: Collection `docs` already exists!"));

    let st = status(client.recommend(RecommendPointsBuilder::new("docs", 3).add_positive(1)).await.unwrap_err());
    assert_eq!(st.code(), Code::Unimplemented);
    assert!(st.message().contains("does not emulate"), "{}", st.message());

    assert!(client.delete_collection("docs").await.unwrap().result);
    assert!(!client.collection_exists("docs").await.unwrap());
    create(&client, "docs", 3, Distance::Dot).await;
    assert_eq!(count(&client, "docs", None).await, 0, "a re-created collection starts empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn update_batch_applies_its_operations_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 2, Distance::Dot).await;

    let response = client
        .update_points_batch(UpdateBatchPointsBuilder::new(
            "docs",
            vec![
                op(Operation::Upsert(PointStructList {
                    points: vec![
                        point(1, vec![1.0, 0.0], json!({ "stage": "new" })),
                        point(2, vec![0.0, 1.0], json!({ "stage": "new" })),
                        point(3, vec![1.0, 1.0], json!({ "stage": "new" })),
                    ],
                    ..Default::default()
                })),
                op(Operation::SetPayload(SetPayload {
                    payload: payload(json!({ "stage": "updated", "extra": { "k": 1 } })),
                    points_selector: Some(ids(&[1, 2])),
                    ..Default::default()
                })),
                op(Operation::DeletePoints(DeletePoints { points: Some(ids(&[2])), ..Default::default() })),
                op(Operation::OverwritePayload(OverwritePayload {
                    payload: payload(json!({ "only": true })),
                    points_selector: Some(ids(&[3])),
                    ..Default::default()
                })),
                op(Operation::DeletePayload(DeletePayload {
                    keys: vec!["stage".into()],
                    points_selector: Some(ids(&[1])),
                    ..Default::default()
                })),
                op(Operation::Upsert(PointStructList {
                    points: vec![point(4, vec![2.0, 2.0], json!({ "gone": "soon" }))],
                    ..Default::default()
                })),
                op(Operation::ClearPayload(ClearPayload { points: Some(ids(&[4])), ..Default::default() })),
                // Re-upsert of a deleted point, after its delete: it is back.
                op(Operation::Upsert(PointStructList {
                    points: vec![point(2, vec![0.0, 3.0], json!({ "stage": "again" }))],
                    ..Default::default()
                })),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(response.result.len(), 8, "one result per operation");
    let op_ids: Vec<_> = response.result.iter().map(|r| r.operation_id.unwrap()).collect();
    assert!(op_ids.windows(2).all(|w| w[0] < w[1]), "operation ids increase: {op_ids:?}");

    let state = payloads(&client, "docs").await;
    let expected = BTreeMap::from([
        ("1".to_string(), json!({ "extra": { "k": 1 } })),
        ("2".to_string(), json!({ "stage": "again" })),
        ("3".to_string(), json!({ "only": true })),
        ("4".to_string(), json!({})),
    ]);
    assert_eq!(state, expected);

    // Set payload by filter, and under a nested key.
    client
        .set_payload(
            SetPayloadPointsBuilder::new("docs", payload(json!({ "flag": true })))
                .points_selector(Filter::must([Condition::matches("only", true)])),
        )
        .await
        .unwrap();
    client
        .set_payload(
            SetPayloadPointsBuilder::new("docs", payload(json!({ "j": 2 })))
                .points_selector(PointsIdsList::from(vec![1u64]))
                .key("extra"),
        )
        .await
        .unwrap();
    let state = payloads(&client, "docs").await;
    assert_eq!(state["3"], json!({ "only": true, "flag": true }));
    assert_eq!(state["1"], json!({ "extra": { "k": 1, "j": 2 } }));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_by_filter_and_by_ids() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 2, Distance::Dot).await;
    let points: Vec<_> = (1..=8u64)
        .map(|i| point(i, vec![i as f32, 1.0], json!({ "kind": if i % 2 == 0 { "even" } else { "odd" }, "n": i })))
        .collect();
    client.upsert_points(UpsertPointsBuilder::new("docs", points)).await.unwrap();

    // Delete the even points with n >= 4: 4, 6, 8.
    let filter = Filter::must([
        Condition::matches("kind", "even".to_string()),
        Condition::range("n", Range { gte: Some(4.0), ..Default::default() }),
    ]);
    client.delete_points(DeletePointsBuilder::new("docs").points(filter).wait(true)).await.unwrap();
    let left: Vec<_> = payloads(&client, "docs").await.into_keys().collect();
    assert_eq!(left, ["1", "2", "3", "5", "7"]);

    // must_not + should: delete odd points other than 1 that are 3 or 7.
    let filter = Filter {
        must: vec![Condition::matches("kind", "odd".to_string())],
        must_not: vec![Condition::has_id([1u64])],
        should: vec![Condition::matches("n", 3i64), Condition::matches("n", 7i64)],
        min_should: None,
    };
    client.delete_points(DeletePointsBuilder::new("docs").points(filter)).await.unwrap();
    let left: Vec<_> = payloads(&client, "docs").await.into_keys().collect();
    assert_eq!(left, ["1", "2", "5"]);

    client.delete_points(DeletePointsBuilder::new("docs").points(PointsIdsList::from(vec![2u64, 42]))).await.unwrap();
    let left: Vec<_> = payloads(&client, "docs").await.into_keys().collect();
    assert_eq!(left, ["1", "5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_nearest_ranks_the_closest_point_first_within_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 3, Distance::Cosine).await;
    client
        .upsert_points(UpsertPointsBuilder::new(
            "docs",
            vec![
                point(1, vec![1.0, 0.0, 0.0], json!({ "kind": "a" })),
                point(2, vec![0.9, 0.1, 0.0], json!({ "kind": "b" })),
                point(3, vec![0.5, 1.0, 0.0], json!({ "kind": "b" })),
                point(4, vec![0.0, 0.0, 1.0], json!({ "kind": "a" })),
            ],
        ))
        .await
        .unwrap();
    let ids_of = |points: &[qdrant_client::qdrant::ScoredPoint]| {
        points.iter().map(|p| id_str(p.id.as_ref().unwrap())).collect::<Vec<_>>()
    };

    let all = client
        .query(QueryPointsBuilder::new("docs").query(Query::new_nearest(vec![2.0, 0.0, 0.0])).limit(4))
        .await
        .unwrap()
        .result;
    assert_eq!(ids_of(&all)[0], "1");
    assert!((all[0].score - 1.0).abs() < 1e-5, "cosine of identical directions: {}", all[0].score);

    let kind_b = Filter::must([Condition::matches("kind", "b".to_string())]);
    let only_b = client
        .query(
            QueryPointsBuilder::new("docs")
                .query(Query::new_nearest(vec![1.0, 0.0, 0.0]))
                .filter(kind_b.clone())
                .with_payload(true)
                .limit(10),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(ids_of(&only_b), ["2", "3"]);
    assert_eq!(json(only_b[0].payload.clone()), json!({ "kind": "b" }));

    let above = client
        .query(
            QueryPointsBuilder::new("docs")
                .query(Query::new_nearest(vec![1.0, 0.0, 0.0]))
                .filter(kind_b.clone())
                .score_threshold(0.5),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(ids_of(&above), ["2"]);
    assert!(above[0].payload.is_empty(), "query returns no payload unless asked");

    let second = client
        .query(QueryPointsBuilder::new("docs").query(Query::new_nearest(vec![1.0, 0.0, 0.0])).limit(1).offset(1))
        .await
        .unwrap()
        .result;
    assert_eq!(ids_of(&second), ["2"]);

    // Nearest to a stored point: the point itself is not among the results.
    let by_id = client
        .query(QueryPointsBuilder::new("docs").query(Query::new_nearest(PointId::from(1))).limit(2))
        .await
        .unwrap()
        .result;
    assert_eq!(ids_of(&by_id), ["2", "3"]);

    // The legacy search API.
    let found = client
        .search_points(SearchPointsBuilder::new("docs", vec![1.0, 0.0, 0.0], 1).filter(kind_b).with_payload(true))
        .await
        .unwrap()
        .result;
    assert_eq!(ids_of(&found), ["2"]);
}

async fn raw_aliases(emulator: &Emulator, actions: Vec<Action>) -> Result<(), tonic::Status> {
    let mut raw = CollectionsClient::connect(emulator.url()).await.unwrap();
    let actions = actions.into_iter().map(|a| AliasOperations { action: Some(a) }).collect();
    raw.update_aliases(ChangeAliases { actions, timeout: None }).await.map(|_| ())
}

fn create_alias(collection: &str, alias: &str) -> Action {
    Action::CreateAlias(CreateAlias { collection_name: collection.into(), alias_name: alias.into() })
}

fn delete_alias(alias: &str) -> Action {
    Action::DeleteAlias(DeleteAlias { alias_name: alias.into() })
}

async fn alias_map(client: &Qdrant) -> BTreeMap<String, String> {
    client.list_aliases().await.unwrap().aliases.into_iter().map(|a| (a.alias_name, a.collection_name)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn alias_switches_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs_v1", 2, Distance::Dot).await;
    create(&client, "docs_v2", 2, Distance::Dot).await;
    client.upsert_points(UpsertPointsBuilder::new("docs_v1", vec![point(1, vec![1.0, 0.0], json!({}))])).await.unwrap();
    client
        .upsert_points(UpsertPointsBuilder::new(
            "docs_v2",
            vec![point(1, vec![1.0, 0.0], json!({})), point(2, vec![0.0, 1.0], json!({}))],
        ))
        .await
        .unwrap();

    client.create_alias(CreateAliasBuilder::new("docs_v1", "live")).await.unwrap();
    assert_eq!(count(&client, "live", None).await, 1, "the alias names docs_v1");
    assert!(client.collection_exists("live").await.unwrap());

    // The switch: delete + create in one request.
    raw_aliases(&emulator, vec![delete_alias("live"), create_alias("docs_v2", "live")]).await.unwrap();
    assert_eq!(count(&client, "live", None).await, 2, "the alias names docs_v2");
    // Writes through the alias land in the collection it names.
    client.upsert_points(UpsertPointsBuilder::new("live", vec![point(3, vec![1.0, 1.0], json!({}))])).await.unwrap();
    assert_eq!(count(&client, "docs_v2", None).await, 3);
    assert_eq!(count(&client, "docs_v1", None).await, 1);

    // A failing action list changes nothing: the delete before the failing create is undone.
    let before = alias_map(&client).await;
    let st = raw_aliases(&emulator, vec![delete_alias("live"), create_alias("docs_v3", "live")]).await.unwrap_err();
    assert_eq!((st.code(), st.message()), (Code::NotFound, "Not found: Collection `docs_v3` doesn't exist!"));
    assert_eq!(alias_map(&client).await, before);
    let st = raw_aliases(&emulator, vec![create_alias("docs_v1", "old"), create_alias("docs_v1", "docs_v2")])
        .await
        .unwrap_err();
    assert_eq!((st.code(), st.message()), (Code::AlreadyExists, "Wrong input: Collection `docs_v2` already exists!"));
    assert_eq!(alias_map(&client).await, before, "the alias `old` was not created");

    // Creating an alias that exists re-points it (as Qdrant does); a collection cannot take an alias's name.
    client.create_alias(CreateAliasBuilder::new("docs_v1", "live")).await.unwrap();
    assert_eq!(alias_map(&client).await, BTreeMap::from([("live".to_string(), "docs_v1".to_string())]));
    let st = status(
        client
            .create_collection(
                CreateCollectionBuilder::new("live").vectors_config(VectorParamsBuilder::new(2, Distance::Dot)),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(st.code(), Code::InvalidArgument);
    // Deleting a missing alias is not an error in Qdrant.
    client.delete_alias("never").await.unwrap();

    let of_v1: Vec<_> =
        client.list_collection_aliases("docs_v1").await.unwrap().aliases.into_iter().map(|a| a.alias_name).collect();
    assert_eq!(of_v1, ["live"]);

    // Deleting a collection removes its aliases.
    client.delete_collection("docs_v1").await.unwrap();
    assert!(alias_map(&client).await.is_empty());
    let st = status(client.collection_info("live").await.unwrap_err());
    assert_eq!(st.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 4, Distance::Dot).await;
    client.create_alias(CreateAliasBuilder::new("docs", "live")).await.unwrap();

    // A writer upserts batches as fast as it can; the emulator is killed mid-stream.
    let acked_count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let client = emulator.client();
        let acked_count = acked_count.clone();
        tokio::spawn(async move {
            let mut acked: Vec<u64> = Vec::new();
            for batch in 0u64.. {
                let points: Vec<_> = (0..20u64)
                    .map(|i| {
                        let id = batch * 20 + i;
                        point(id, vec![id as f32, 1.0, 2.0, 3.0], json!({ "batch": batch, "deep": { "id": id } }))
                    })
                    .collect();
                match client.upsert_points(UpsertPointsBuilder::new("live", points).wait(true)).await {
                    Ok(_) => {
                        acked.push(batch);
                        acked_count.store(acked.len(), Ordering::SeqCst);
                    }
                    Err(_) => return acked,
                }
            }
            acked
        })
    };
    let wait_for = |n: usize| {
        let acked_count = acked_count.clone();
        async move {
            while acked_count.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // Deletes and payload updates (of batch 0, written once) must survive too.
    tokio::time::timeout(Duration::from_secs(60), wait_for(3)).await.unwrap();
    client.delete_points(DeletePointsBuilder::new("docs").points(PointsIdsList::from(vec![0u64, 1]))).await.unwrap();
    client
        .set_payload(
            SetPayloadPointsBuilder::new("docs", payload(json!({ "marked": true })))
                .points_selector(PointsIdsList::from(vec![2u64])),
        )
        .await
        .unwrap();
    let seen = acked_count.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), wait_for(seen + 10)).await.unwrap();
    emulator.kill_9();
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 13, "the writer got batches acknowledged: {}", acked.len());

    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    let points = scroll_all(&client, "live", 500).await;
    let stored: HashMap<String, _> = points.iter().map(|p| (id_str(p.id.as_ref().unwrap()), p)).collect();
    for &batch in &acked {
        for i in 0..20u64 {
            let id = batch * 20 + i;
            if id < 2 {
                assert!(!stored.contains_key(&id.to_string()), "deleted point {id} is back");
                continue;
            }
            let p = stored.get(&id.to_string()).unwrap_or_else(|| panic!("acknowledged point {id} is lost"));
            let mut expected = json!({ "batch": batch, "deep": { "id": id } });
            if id == 2 {
                expected["marked"] = json!(true);
            }
            assert_eq!(json(p.payload.clone()), expected);
            assert_eq!(dense(p), vec![id as f32, 1.0, 2.0, 3.0]);
        }
    }
    assert_eq!(alias_map(&client).await, BTreeMap::from([("live".to_string(), "docs".to_string())]));

    // Writes after the restart (overwriting points stored before it) survive another kill.
    client
        .upsert_points(UpsertPointsBuilder::new("docs", vec![point(5, vec![9.0, 9.0, 9.0, 9.0], json!({ "v": 2 }))]))
        .await
        .unwrap();
    client.delete_points(DeletePointsBuilder::new("docs").points(PointsIdsList::from(vec![3u64]))).await.unwrap();
    let expected_count = count(&client, "docs", None).await;
    emulator.kill_9();

    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    assert_eq!(count(&client, "docs", None).await, expected_count);
    let got = client
        .get_points(
            GetPointsBuilder::new("docs", vec![PointId::from(5), PointId::from(3)])
                .with_payload(true)
                .with_vectors(true),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(got.len(), 1, "point 3 stays deleted");
    assert_eq!(json(got[0].payload.clone()), json!({ "v": 2 }));
    assert_eq!(dense(&got[0]), vec![9.0, 9.0, 9.0, 9.0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_the_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 2, Distance::Dot).await;
    client
        .upsert_points(UpsertPointsBuilder::new("docs", vec![point(1, vec![1.0, 2.0], json!({ "a": 1 }))]))
        .await
        .unwrap();
    assert!(emulator.terminate().success());

    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    assert_eq!(payloads(&client, "docs").await, BTreeMap::from([("1".to_string(), json!({ "a": 1 }))]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start_with(
        dir.path(),
        &["--api-key-env", "FRESHET_EMULATOR_TEST_KEY"],
        &[("FRESHET_EMULATOR_TEST_KEY", "s3cret")],
    );

    let st = status(emulator.client().list_collections().await.unwrap_err());
    assert_eq!(st.code(), Code::Unauthenticated);
    let st = status(emulator.client_with_key("wrong").health_check().await.unwrap_err());
    assert_eq!(st.code(), Code::Unauthenticated);

    let client = emulator.client_with_key("s3cret");
    create(&client, "docs", 2, Distance::Dot).await;
    assert!(client.collection_exists("docs").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_collections_get_an_hnsw_index_and_stay_durable() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    client
        .create_collection(
            CreateCollectionBuilder::new("docs")
                .vectors_config(VectorParamsBuilder::new(8, Distance::Dot))
                .hnsw_config(HnswConfigDiffBuilder::default().m(8).ef_construct(32))
                .optimizers_config(OptimizersConfigDiffBuilder::default().indexing_threshold(1)),
        )
        .await
        .unwrap();
    let vector = |i: u64| (0..8).map(|d| ((i * 7 + d) % 11) as f32).collect::<Vec<f32>>();
    for batch in 0..5u64 {
        let points: Vec<_> = (0..100u64)
            .map(|i| point(batch * 100 + i, vector(batch * 100 + i), json!({ "i": batch * 100 + i })))
            .collect();
        client.upsert_points(UpsertPointsBuilder::new("docs", points)).await.unwrap();
    }
    // The index is built once the collection has been idle for ~2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = client.collection_info("docs").await.unwrap().result.unwrap();
        if info.indexed_vectors_count.unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no index was built: {info:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(count(&client, "docs", None).await, 500);
    let hits = client
        .query(
            QueryPointsBuilder::new("docs")
                .query(Query::new_nearest(vector(123)))
                .limit(1)
                .params(SearchParamsBuilder::default().exact(true)),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(hits.len(), 1);

    // Writes after the build, then kill -9: the indexed segments and the new writes survive.
    client
        .upsert_points(UpsertPointsBuilder::new("docs", vec![point(7, vec![1.0; 8], json!({ "i": "new" }))]))
        .await
        .unwrap();
    client.delete_points(DeletePointsBuilder::new("docs").points(PointsIdsList::from(vec![8u64]))).await.unwrap();
    emulator.kill_9();

    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    let state = payloads(&client, "docs").await;
    assert_eq!(state.len(), 499);
    assert_eq!(state["7"], json!({ "i": "new" }));
    assert!(!state.contains_key("8"));
    assert_eq!(state["499"], json!({ "i": 499 }));
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_upserts_follow_the_update_filter_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 2, Distance::Dot).await;
    client
        .upsert_points(UpsertPointsBuilder::new("docs", vec![point(1, vec![1.0, 0.0], json!({ "v": 1 }))]))
        .await
        .unwrap();

    // Existing points are only replaced where the filter matches; new points are inserted.
    client
        .upsert_points(
            UpsertPointsBuilder::new(
                "docs",
                vec![point(1, vec![0.0, 1.0], json!({ "v": 2 })), point(2, vec![0.0, 1.0], json!({ "v": 2 }))],
            )
            .update_filter(Filter::must([Condition::matches("v", 5i64)])),
        )
        .await
        .unwrap();
    assert_eq!(
        payloads(&client, "docs").await,
        BTreeMap::from([("1".to_string(), json!({ "v": 1 })), ("2".to_string(), json!({ "v": 2 }))])
    );

    // Insert-only never replaces an existing point.
    client
        .upsert_points(
            UpsertPointsBuilder::new(
                "docs",
                vec![point(2, vec![1.0, 1.0], json!({ "v": 3 })), point(3, vec![1.0, 1.0], json!({ "v": 3 }))],
            )
            .update_mode(UpdateMode::InsertOnly),
        )
        .await
        .unwrap();
    let state = payloads(&client, "docs").await;
    assert_eq!((state["2"].clone(), state["3"].clone()), (json!({ "v": 2 }), json!({ "v": 3 })));
}

#[tokio::test(flavor = "multi_thread")]
async fn vectors_can_be_replaced_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    create(&client, "docs", 2, Distance::Dot).await;
    client
        .upsert_points(UpsertPointsBuilder::new(
            "docs",
            vec![point(1, vec![1.0, 0.0], json!({ "a": 1 })), point(2, vec![0.0, 1.0], json!({ "a": 2 }))],
        ))
        .await
        .unwrap();

    client
        .update_vectors(UpdatePointVectorsBuilder::new(
            "docs",
            vec![PointVectors { id: Some(PointId::from(1)), vectors: Some(vec![3.0, 4.0].into()) }],
        ))
        .await
        .unwrap();
    let err = client
        .update_vectors(UpdatePointVectorsBuilder::new(
            "docs",
            vec![PointVectors { id: Some(PointId::from(1)), vectors: Some(vec![3.0].into()) }],
        ))
        .await
        .unwrap_err();
    assert_eq!(status(err).code(), Code::InvalidArgument);
    client
        .delete_vectors(
            DeletePointVectorsBuilder::new("docs")
                .points_selector(PointsIdsList::from(vec![2u64]))
                .vectors(VectorsSelector::new(vec![String::new()])),
        )
        .await
        .unwrap();

    let got = client
        .get_points(
            GetPointsBuilder::new("docs", vec![PointId::from(1), PointId::from(2)])
                .with_payload(true)
                .with_vectors(true),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(dense(&got[0]), vec![3.0, 4.0]);
    assert_eq!(json(got[0].payload.clone()), json!({ "a": 1 }), "the payload is kept");
    assert_eq!(json(got[1].payload.clone()), json!({ "a": 2 }), "a point without its vector is still there");
    let hits = client
        .query(QueryPointsBuilder::new("docs").query(Query::new_nearest(vec![0.0, 1.0])).limit(5))
        .await
        .unwrap()
        .result;
    assert_eq!(hits.iter().map(|p| id_str(p.id.as_ref().unwrap())).collect::<Vec<_>>(), ["1"], "no vector, no hit");
}

/// Issue 15 on the Qdrant server path: writes never wait for an index build. A collection
/// large enough for its HNSW build to take seconds, left idle so that the build starts
/// (status yellow); writes made meanwhile are each acknowledged within a bound while the
/// build still runs, and every one of them is there afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn writes_are_acknowledged_while_an_index_build_runs() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(dir.path());
    let client = emulator.client();
    let dim = 64u64;
    client
        .create_collection(
            CreateCollectionBuilder::new("docs")
                .vectors_config(VectorParamsBuilder::new(dim, Distance::Cosine))
                .hnsw_config(HnswConfigDiffBuilder::default().m(32).ef_construct(256))
                .optimizers_config(OptimizersConfigDiffBuilder::default().indexing_threshold(1)),
        )
        .await
        .unwrap();
    let vector = |i: u64| (0..dim).map(|d| (((i + 1) * (d + 3) * 2_654_435_761) % 1000) as f32 / 1000.0).collect();
    let loaded = 16_000u64;
    for batch in (0..loaded).step_by(2_000) {
        let points: Vec<_> = (batch..batch + 2_000).map(|i| point(i, vector(i), json!({ "i": i }))).collect();
        client.upsert_points(UpsertPointsBuilder::new("docs", points)).await.unwrap();
    }
    let is_building = || async {
        client.collection_info("docs").await.unwrap().result.unwrap().status == CollectionStatus::Yellow as i32
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !is_building().await {
        assert!(std::time::Instant::now() < deadline, "no index build started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes during the build: an update of loaded points (moved out of the segments being
    // built: copy-on-write into the proxies) and new points.
    let mut during = 0;
    let mut slowest = Duration::ZERO;
    let mut written = 0u64;
    while is_building().await && written < 100 {
        let points: Vec<_> = (0..10)
            .map(|k| {
                let id = if k % 2 == 0 { written * 10 + k } else { loaded + written * 10 + k };
                point(id, vector(id + 7), json!({ "i": id, "write": written }))
            })
            .collect();
        let t = std::time::Instant::now();
        client.upsert_points(UpsertPointsBuilder::new("docs", points).wait(true)).await.unwrap();
        slowest = slowest.max(t.elapsed());
        written += 1;
        if is_building().await {
            during += 1;
        }
    }
    assert!(during >= 5, "the build ended after {during} writes: too short to show anything (make it larger)");
    assert!(slowest < Duration::from_secs(1), "a write during the build took {slowest:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while is_building().await {
        assert!(std::time::Instant::now() < deadline, "the build did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = client.collection_info("docs").await.unwrap().result.unwrap();
    assert!(info.indexed_vectors_count.unwrap_or(0) > 0, "no index was built: {info:?}");
    // Every write made during the build is there, exactly.
    let state = payloads(&client, "docs").await;
    assert_eq!(state.len() as u64, loaded + written * 5);
    for w in 0..written {
        for k in 0..10 {
            let id = if k % 2 == 0 { w * 10 + k } else { loaded + w * 10 + k };
            assert_eq!(state[&id.to_string()], json!({ "i": id, "write": w }), "point {id}");
        }
    }
    eprintln!("{during} writes acknowledged during the build, the slowest in {slowest:?}");
}
