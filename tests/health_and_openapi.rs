//! Probes, and the checked-in OpenAPI document matching what the server serves.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn probes_answer_when_the_database_is_migrated(db: PgPool) {
    let app = TestApp::spawn(db).await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[sqlx::test(migrations = false)]
async fn readiness_fails_until_migrations_are_applied(db: PgPool) {
    let options = common::TestOptions {
        admin_token: false,
        ..Default::default()
    };
    let app = TestApp::spawn_with(db.clone(), options).await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    vfi_orchestrator::store::migrate(&db).await.unwrap();
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_checked_in_openapi_document_matches_the_served_one(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let served: Value = app.get("/openapi.json").await.json().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let checked_in: Value = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    assert!(
        served == checked_in,
        "openapi/openapi.json is out of date; regenerate it with:\n\n    cargo run -- openapi > openapi/openapi.json\n"
    );
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(app.get("/docs").await.status(), StatusCode::OK);
}
