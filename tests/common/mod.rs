//! Test harness: the real router on 127.0.0.1:0 against a fresh PostgreSQL database per test,
//! driven over HTTP through typed helpers.
#![allow(dead_code)]

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use vfi_orchestrator::domain::RunPolicy;
use vfi_orchestrator::http::{self, AppState, EventHub, Limits};

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub db: PgPool,
}

impl TestApp {
    pub async fn spawn(db: PgPool) -> TestApp {
        let state = AppState {
            db: db.clone(),
            limits: Arc::new(Limits {
                max_body_bytes: MAX_BODY_BYTES,
                request_timeout: Duration::from_secs(30),
            }),
            policy: Arc::new(RunPolicy {
                namespaces: vec!["default".into(), "batch".into()],
                service_accounts: vec!["default".into()],
            }),
            events: EventHub::new(db.clone()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, http::router(state)).await.unwrap();
        });
        TestApp {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Response {
        self.http
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends raw bytes as the body, with the given content type.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response {
        self.http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_task(&self, name: &str, spec: &Value) -> Value {
        let response = self.put_json(&format!("/v1/tasks/{name}"), spec).await;
        assert!(
            response.status().is_success(),
            "PUT task {name}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Starts an ad-hoc run and returns it.
    pub async fn submit(&self, template: &Value) -> Value {
        let response = self
            .post_json("/v1/runs", &json!({ "template": template }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn start_task_run(&self, task: &str, overrides: &Value) -> Value {
        let response = self
            .post_json(&format!("/v1/tasks/{task}/runs"), overrides)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

/// The calculatepi Job from the Kubernetes documentation.
pub fn calculatepi() -> Value {
    json!({
        "image": "perl:5.34.0",
        "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]
    })
}

/// Asserts a problem+json answer with `status` whose errors name `field`; returns the body.
pub async fn assert_problem(response: Response, status: StatusCode, field: Option<&str>) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problems are application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    if let Some(field) = field {
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .map(|errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            fields.contains(&field),
            "expected field {field:?} in {body}"
        );
    }
    body
}

pub mod service;
