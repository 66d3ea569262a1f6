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

/// Every `src="..."` and `href="..."` in an HTML or script text.
fn referenced_urls(text: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attribute in ["src=\"", "href=\"", "url: \"", "url:\""] {
        for (start, _) in text.match_indices(attribute) {
            let rest = &text[start + attribute.len()..];
            if let Some(end) = rest.find('"') {
                urls.push(rest[..end].to_string());
            }
        }
    }
    urls
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_docs_page_and_its_assets_come_from_the_server_itself(db: PgPool) {
    // An air-gapped cluster has no CDN: the page must load everything from this server.
    let app = TestApp::spawn(db).await;
    let page = app.anonymous.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let mut assets = referenced_urls(&html);
    assert!(
        assets.iter().any(|url| url.ends_with(".js")),
        "the page loads no script: {html}"
    );
    // The initializer script names the document the page shows.
    let initializer = app
        .anonymous
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(initializer.status(), StatusCode::OK);
    let initializer = initializer.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "the spec validator (an outside service) is off: {initializer}"
    );
    assets.extend(referenced_urls(&initializer));
    for asset in &assets {
        assert!(
            !asset.contains("://") && !asset.starts_with("//"),
            "/docs references an outside URL: {asset}"
        );
        let url = if asset.starts_with('/') {
            app.url(asset)
        } else {
            app.url(&format!("/docs/{}", asset.trim_start_matches("./")))
        };
        let response = app.anonymous.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{url}");
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_document_states_the_refusals_and_limits_the_server_enforces(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let create = &doc["paths"]["/v1/runs"]["post"];
    for status in ["400", "401", "403", "413", "415", "422", "429"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /v1/runs documents {status}"
        );
    }
    let list = &doc["paths"]["/v1/runs"]["get"];
    let limit = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 1000);
    let task = &doc["paths"]["/v1/tasks/{name}"]["get"]["parameters"][0]["schema"];
    assert_eq!(task["pattern"], "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
    let logs = &doc["paths"]["/v1/runs/{id}/logs"]["get"]["responses"]["200"]["content"];
    assert!(logs["text/event-stream"].is_object(), "{logs}");
    assert!(logs["text/plain"].is_object(), "{logs}");
    // The probes take nothing and are not rate-limited: nothing to add there.
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["400"].is_null());
}
