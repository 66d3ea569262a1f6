//! `/v1/tasks`: what a client relies on when defining tasks.

mod common;

use common::{assert_problem, calculatepi, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn put_creates_then_replaces_like_kubectl_apply(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let spec = json!({"description": "pi", "template": calculatepi()});

    let created = app.put_json("/v1/tasks/pi", &spec).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["name"], "pi");
    assert_eq!(created["generation"], 1);

    let same = app.put_json("/v1/tasks/pi", &spec).await;
    assert_eq!(same.status(), StatusCode::OK);
    let same: Value = same.json().await.unwrap();
    assert_eq!(same["generation"], 1, "an identical apply changes nothing");
    assert_eq!(same["updatedAt"], created["updatedAt"]);

    let mut changed_spec = spec.clone();
    changed_spec["template"]["parallelism"] = json!(1);
    let changed: Value = app
        .put_json("/v1/tasks/pi", &changed_spec)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["generation"], 2);
    assert_eq!(changed["template"]["parallelism"], 1);
    assert_eq!(app.count("tasks").await, 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn tasks_can_be_read_listed_in_pages_and_deleted(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for name in ["c", "a", "b"] {
        app.put_task(name, &json!({"template": calculatepi()}))
            .await;
    }

    let task: Value = app.get("/v1/tasks/b").await.json().await.unwrap();
    assert_eq!(task["template"]["image"], "perl:5.34.0");

    let first: Value = app.get("/v1/tasks?limit=2").await.json().await.unwrap();
    let names: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let cursor = first["nextCursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!("/v1/tasks?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"][0]["name"], "c");
    assert!(
        second.get("nextCursor").is_none(),
        "last page has no cursor"
    );

    let deleted = app
        .http
        .delete(app.url("/v1/tasks/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/v1/tasks/b").await, StatusCode::NOT_FOUND, None).await;
    let again = app
        .http
        .delete(app.url("/v1/tasks/b"))
        .send()
        .await
        .unwrap();
    assert_problem(again, StatusCode::NOT_FOUND, None).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn invalid_task_definitions_are_refused_and_change_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.put_task("keep", &json!({"template": calculatepi()}))
        .await;

    let bad_name = app
        .put_json("/v1/tasks/Bad_Name", &json!({"template": calculatepi()}))
        .await;
    assert_problem(bad_name, StatusCode::BAD_REQUEST, Some("name")).await;

    let mut negative = json!({"template": calculatepi()});
    negative["template"]["parallelism"] = json!(-1);
    let refused = app.put_json("/v1/tasks/keep", &negative).await;
    assert_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.parallelism"),
    )
    .await;

    let unknown = app
        .put_json(
            "/v1/tasks/other",
            &json!({"template": calculatepi(), "schedul": "* * * * *"}),
        )
        .await;
    assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, Some("schedul")).await;

    let missing = app.put_json("/v1/tasks/other", &json!({})).await;
    assert_problem(missing, StatusCode::UNPROCESSABLE_ENTITY, None).await;

    let task: Value = app.get("/v1/tasks/keep").await.json().await.unwrap();
    assert_eq!(
        task["generation"], 1,
        "the refused replace left the task as it was"
    );
    assert_eq!(app.count("tasks").await, 1);
}
