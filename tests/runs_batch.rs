//! `POST /v1/runs/batch`: many ad-hoc runs in one request, all or none.

mod common;

use common::{assert_problem, calculatepi, TestApp, TestOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use vfi_orchestrator::domain::Scope;

fn batch_of(templates: &[Value]) -> Value {
    json!({"runs": templates.iter().map(|t| json!({"template": t})).collect::<Vec<_>>()})
}

fn with(extra: Value) -> Value {
    let mut template = calculatepi();
    template
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    template
}

fn ids(body: &Value) -> Vec<String> {
    body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_batch_queues_every_run_in_the_order_given(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let templates: Vec<Value> = (0..3)
        .map(|i| with(json!({"labels": {"item": i.to_string()}})))
        .collect();

    let response = app.post_json("/v1/runs/batch", &batch_of(&templates)).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["status"], "queued");
        assert_eq!(run["trigger"], "api");
        assert_eq!(run["number"], i as i64 + 1, "numbered in order");
        assert_eq!(run["labels"]["item"], i.to_string());
        let read: Value = app
            .get(&format!("/v1/runs/{}", run["id"].as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(&read, run);
    }
    // The ad-hoc sequence goes on after the batch.
    assert_eq!(app.submit(&calculatepi()).await["number"], 4);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_partly_invalid_batch_is_refused_whole_naming_every_bad_item(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let templates = [
        calculatepi(),
        with(json!({"image": ""})),
        calculatepi(),
        with(json!({"namespace": "kube-system"})),
    ];

    let response = app.post_json("/v1/runs/batch", &batch_of(&templates)).await;

    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("runs[1].template.image"),
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"runs[3].template.namespace"), "{body}");
    assert!(
        fields
            .iter()
            .all(|f| f.starts_with("runs[1].") || f.starts_with("runs[3].")),
        "only the bad items are named: {body}"
    );
    assert_eq!(app.count("runs").await, 0, "nothing was queued");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_empty_or_oversized_batch_is_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let empty = app.post_json("/v1/runs/batch", &json!({"runs": []})).await;
    assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY, Some("runs")).await;

    // The test app's MAX_BATCH_RUNS is 500, the default.
    let templates = vec![calculatepi(); 501];
    let oversized = app.post_json("/v1/runs/batch", &batch_of(&templates)).await;
    assert_problem(oversized, StatusCode::UNPROCESSABLE_ENTITY, Some("runs")).await;
    assert_eq!(app.count("runs").await, 0);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn run_keys_are_shared_with_single_submissions_and_replay_their_run(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let alone = app
        .http
        .post(app.url("/v1/runs"))
        .header("idempotency-key", "first")
        .json(&json!({"template": calculatepi()}))
        .send()
        .await
        .unwrap();
    assert_eq!(alone.status(), StatusCode::CREATED);
    let alone: Value = alone.json().await.unwrap();
    let batch = json!({"runs": [
        {"template": calculatepi(), "idempotencyKey": "first"},
        {"template": calculatepi(), "idempotencyKey": "second"},
        {"template": calculatepi()},
    ]});

    let body: Value = app
        .post_json("/v1/runs/batch", &batch)
        .await
        .json()
        .await
        .unwrap();

    let first = ids(&body);
    assert_eq!(first.len(), 3);
    assert_eq!(first[0], alone["id"], "the key's run is answered again");
    assert_eq!(
        app.count("runs").await,
        3,
        "the replayed run is not queued twice"
    );

    // Sent again: keyed runs replay, the unkeyed one is new.
    let again = ids(&app
        .post_json("/v1/runs/batch", &batch)
        .await
        .json()
        .await
        .unwrap());
    assert_eq!(again[..2], first[..2]);
    assert_ne!(again[2], first[2]);
    assert_eq!(app.count("runs").await, 4);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_key_used_for_another_run_or_twice_refuses_the_batch(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let keyed = json!({"runs": [{"template": calculatepi(), "idempotencyKey": "k"}]});
    assert_eq!(
        app.post_json("/v1/runs/batch", &keyed).await.status(),
        StatusCode::CREATED
    );

    let other = json!({"runs": [
        {"template": calculatepi()},
        {"template": with(json!({"labels": {"other": "yes"}})), "idempotencyKey": "k"},
    ]});
    let response = app.post_json("/v1/runs/batch", &other).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("runs[1].idempotencyKey"),
    )
    .await;

    let twice = json!({"runs": [
        {"template": calculatepi(), "idempotencyKey": "twice"},
        {"template": calculatepi(), "idempotencyKey": "twice"},
    ]});
    let response = app.post_json("/v1/runs/batch", &twice).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("runs[1].idempotencyKey"),
    )
    .await;
    assert_eq!(app.count("runs").await, 1, "nothing more was queued");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_batch_key_replays_the_whole_answer(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let batch = batch_of(&[calculatepi(), calculatepi()]);
    let send = || {
        app.http
            .post(app.url("/v1/runs/batch"))
            .header("idempotency-key", "batch-1")
            .json(&batch)
            .send()
    };

    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();

    assert_eq!(ids(&first), ids(&second));
    assert_eq!(app.count("runs").await, 2);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_batch_beyond_the_token_cap_is_refused_whole(db: PgPool) {
    let options = TestOptions {
        max_active_runs_per_token: 3,
        ..Default::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    let runner = app.client_with_scope(Scope::Run, None).await;
    let post = |batch: Value| runner.post(app.url("/v1/runs/batch")).json(&batch).send();

    let over = post(batch_of(&vec![calculatepi(); 4])).await.unwrap();
    assert_problem(over, StatusCode::TOO_MANY_REQUESTS, None).await;
    assert_eq!(
        app.count("runs").await,
        0,
        "nothing of a refused batch is queued"
    );

    let at = post(batch_of(&vec![calculatepi(); 3])).await.unwrap();
    assert_eq!(at.status(), StatusCode::CREATED);
    let more = post(batch_of(&[calculatepi()])).await.unwrap();
    assert_problem(more, StatusCode::TOO_MANY_REQUESTS, None).await;
    assert_eq!(app.count("runs").await, 3);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_batch_needs_the_run_scope(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let reader = app.client_with_scope(Scope::Read, None).await;
    let response = reader
        .post(app.url("/v1/runs/batch"))
        .json(&batch_of(&[calculatepi()]))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::FORBIDDEN, None).await;
    assert_eq!(app.count("runs").await, 0);
}

/// Ad-hoc runs are numbered from a sequence (issue 15: no shared counter row that concurrent
/// submitters queue on): batches and single runs sent at once still get distinct numbers, every
/// batch's in the order given, and none is skipped when every submission succeeds.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn concurrent_ad_hoc_submissions_get_distinct_numbers_in_order(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let batch = batch_of(&vec![calculatepi(); 5]);
    let single = calculatepi();

    let (a, b, c, d) = tokio::join!(
        app.post_json("/v1/runs/batch", &batch),
        app.post_json("/v1/runs/batch", &batch),
        app.submit(&single),
        app.submit(&single),
    );

    let mut numbers = Vec::new();
    for response in [a, b] {
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        let of_batch: Vec<i64> = body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["number"].as_i64().unwrap())
            .collect();
        assert!(
            of_batch.windows(2).all(|w| w[0] < w[1]),
            "a batch is numbered in the order given: {of_batch:?}"
        );
        numbers.extend(of_batch);
    }
    numbers.push(c["number"].as_i64().unwrap());
    numbers.push(d["number"].as_i64().unwrap());
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=12).collect::<Vec<i64>>());
}
