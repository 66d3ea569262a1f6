//! `/v1/runs`: submitting runs, idempotency keys, history with filters and pagination.

mod common;

use common::{assert_problem, calculatepi, TestApp};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashSet;
use vfi_orchestrator::domain::{RunTemplate, Trigger};
use vfi_orchestrator::store::runs::{self, NewRun};

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_ad_hoc_run_is_queued_and_readable(db: PgPool) {
    let app = TestApp::spawn(db).await;

    let response = app
        .post_json("/v1/runs", &json!({"template": calculatepi()}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["status"], "queued");
    assert_eq!(run["trigger"], "api");
    assert_eq!(run["number"], 1);
    assert!(run.get("task").is_none(), "ad-hoc runs have no task");
    assert_eq!(
        location,
        format!("/v1/runs/{}", run["id"].as_str().unwrap())
    );

    let read: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(read, run);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn task_runs_are_numbered_and_take_overrides(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let mut template = calculatepi();
    template["env"] = json!([{"name": "DIGITS", "value": "2000"}]);
    template["labels"] = json!({"team": "render"});
    app.put_task("pi", &json!({"template": template})).await;

    let first = app.start_task_run("pi", &json!({})).await;
    let second = app
        .start_task_run(
            "pi",
            &json!({"env": [{"name": "DIGITS", "value": "10"}, {"name": "X", "value": "1"}], "labels": {"ref": "main"}}),
        )
        .await;

    assert_eq!(
        (first["number"].as_i64(), second["number"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(first["task"], "pi");
    assert_eq!(
        second["template"]["env"],
        json!([{"name": "DIGITS", "value": "10"}, {"name": "X", "value": "1"}])
    );
    assert_eq!(second["labels"], json!({"team": "render", "ref": "main"}));

    // An empty body (no Content-Type at all) is a run with no overrides.
    let bare = app
        .http
        .post(app.url("/v1/tasks/pi/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::CREATED);

    let missing = app.post_json("/v1/tasks/nope/runs", &json!({})).await;
    assert_problem(missing, StatusCode::NOT_FOUND, None).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn numbers_are_not_reused_after_a_task_is_recreated(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    app.start_task_run("pi", &json!({})).await;
    app.http
        .delete(app.url("/v1/tasks/pi"))
        .send()
        .await
        .unwrap();
    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    let run = app.start_task_run("pi", &json!({})).await;
    assert_eq!(run["number"], 2);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_same_idempotency_key_and_body_returns_the_first_run(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let body = json!({"template": calculatepi()});
    let post = |key: &'static str, body: Value| {
        let request = app
            .http
            .post(app.url("/v1/runs"))
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };

    let first = post("k1", body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    // Same key, same body with other formatting: the original answer again.
    let replay = app
        .send_raw(
            reqwest::Method::POST,
            "/v1/runs",
            "application/json",
            serde_json::to_vec_pretty(&body).unwrap(),
        )
        .await;
    assert_eq!(replay.status(), StatusCode::CREATED, "no key: a new run");
    let again = app
        .http
        .post(app.url("/v1/runs"))
        .header("Idempotency-Key", "k1")
        .header("content-type", "application/json")
        .body(serde_json::to_vec_pretty(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["location"],
        format!("/v1/runs/{}", first["id"].as_str().unwrap())
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.count("runs").await, 2);

    // Same key, different body: refused, nothing created.
    let mut other = body.clone();
    other["template"]["image"] = json!("perl:5.36");
    let refused = post("k1", other).await;
    assert_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("Idempotency-Key"),
    )
    .await;
    assert_eq!(app.count("runs").await, 2);

    let bad_key = post("has space", body.clone()).await;
    assert_problem(bad_key, StatusCode::BAD_REQUEST, Some("Idempotency-Key")).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn concurrent_requests_with_one_idempotency_key_create_one_run(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let body = json!({"template": calculatepi()});
    let responses = join_all((0..20).map(|_| {
        app.http
            .post(app.url("/v1/runs"))
            .header("Idempotency-Key", "same")
            .json(&body)
            .send()
    }))
    .await;
    let mut ids = HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let run: Value = response.json().await.unwrap();
        ids.insert(run["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("runs").await, 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_hundred_parallel_submissions_are_each_stored_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    let responses = join_all((0..100).map(|i| {
        app.http
            .post(app.url("/v1/tasks/pi/runs"))
            .json(&json!({"env": [{"name": "I", "value": i.to_string()}]}))
            .send()
    }))
    .await;
    let mut numbers = HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let run: Value = response.json().await.unwrap();
        numbers.insert(run["number"].as_i64().unwrap());
    }
    assert_eq!(numbers, (1..=100).collect::<HashSet<_>>());
    assert_eq!(app.count("runs").await, 100);
}

async fn seed_runs(db: &PgPool, task: Option<&str>, template: &RunTemplate, count: usize) {
    let mut tx = db.begin().await.unwrap();
    for _ in 0..count {
        runs::insert(
            &mut tx,
            NewRun {
                task_name: task,
                template,
                trigger: Trigger::Api,
                rerun_of: None,
                scheduled_time: None,
                token_id: None,
            },
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn paging_through_1050_runs_sees_each_once_newest_first(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let template: RunTemplate = serde_json::from_value(calculatepi()).unwrap();
    seed_runs(&db, None, &template, 1050).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?limit=100&cursor={c}"),
            None => "/v1/runs?limit=100".to_string(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        pages += 1;
        for run in page["items"].as_array().unwrap() {
            seen.push(run["number"].as_i64().unwrap());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 11);
    let expected: Vec<i64> = (1..=1050).rev().collect();
    assert_eq!(seen, expected, "every run once, newest first, no gaps");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn history_filters_by_task_status_and_labels(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let mut labelled: RunTemplate = serde_json::from_value(calculatepi()).unwrap();
    labelled.labels.insert("team".into(), "render".into());
    let plain: RunTemplate = serde_json::from_value(calculatepi()).unwrap();
    seed_runs(&db, Some("a"), &labelled, 3).await;
    seed_runs(&db, Some("b"), &plain, 2).await;
    sqlx::query("UPDATE runs SET status = 'failed' WHERE task_name = 'b' AND number = 1")
        .execute(&db)
        .await
        .unwrap();

    let count = |path: &'static str| {
        let app = &app;
        async move {
            let page: Value = app.get(path).await.json().await.unwrap();
            page["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("/v1/runs?task=a").await, 3);
    assert_eq!(count("/v1/runs?task=b&status=failed").await, 1);
    assert_eq!(count("/v1/runs?status=queued,failed").await, 5);
    assert_eq!(count("/v1/runs?labelSelector=team%3Drender").await, 3);
    assert_eq!(count("/v1/runs?labelSelector=team%3Dother").await, 0);

    assert_problem(
        app.get("/v1/runs?status=done").await,
        StatusCode::BAD_REQUEST,
        Some("status"),
    )
    .await;
    assert_problem(
        app.get("/v1/runs?cursor=garbage!").await,
        StatusCode::BAD_REQUEST,
        Some("cursor"),
    )
    .await;
    assert_problem(
        app.get("/v1/runs?limit=0").await,
        StatusCode::BAD_REQUEST,
        Some("limit"),
    )
    .await;
    assert_problem(
        app.get("/v1/runs?labelSelector=team").await,
        StatusCode::BAD_REQUEST,
        Some("labelSelector"),
    )
    .await;
    assert_problem(
        app.get("/v1/runs?stauts=failed").await,
        StatusCode::BAD_REQUEST,
        Some("stauts"),
    )
    .await;
    assert_problem(
        app.get("/v1/runs/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        Some("id"),
    )
    .await;
    assert_problem(
        app.get("/v1/runs/0190b7a0-0000-7000-8000-000000000000")
            .await,
        StatusCode::NOT_FOUND,
        None,
    )
    .await;
}
