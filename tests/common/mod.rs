//! Test harness: the real router on 127.0.0.1:0 against a fresh PostgreSQL database per test,
//! driven over HTTP through typed helpers. `app.http` sends an admin token with every request;
//! `app.anonymous` sends none, and `app.client_for(token)` sends another.
#![allow(dead_code)]

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use vfi_orchestrator::cluster::jobs::Cluster;
use vfi_orchestrator::cluster::ClusterSettings;
use vfi_orchestrator::domain::{RunPolicy, Scope};
use vfi_orchestrator::http::server::ServerLimits;
use vfi_orchestrator::http::tokens::{create_token, TokenRequest};
use vfi_orchestrator::http::{
    self, AppState, AuthSettings, EventHub, Limits, RateLimit, Revocations,
};

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct TestApp {
    pub base: String,
    /// Sends the admin token.
    pub http: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    pub db: PgPool,
}

/// Settings a test may change; the defaults keep limits out of the way of tests not about them.
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub auth_disabled: bool,
    /// (requests per second, burst) per token; `None`: unlimited.
    pub rate_limit: Option<(u32, u32)>,
    pub max_queued_runs_per_task: u32,
    pub cors_origins: Vec<&'static str>,
    pub server: ServerLimits,
    /// Create the admin token `http` sends (needs the migrations applied).
    pub admin_token: bool,
    /// `JOB_NAME_PREFIX`.
    pub job_name_prefix: String,
    /// The installation's run size limits (none by default).
    pub run_limits: vfi_orchestrator::domain::policy::RunLimits,
    /// Unfinished runs per token (0: no cap).
    pub max_active_runs_per_token: u32,
    /// (requests per second, burst) per client address without a valid token; `None`: unlimited.
    pub anonymous_rate_limit: Option<(u32, u32)>,
    /// `/metrics` without a token.
    pub metrics_public: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            auth_disabled: false,
            rate_limit: None,
            max_queued_runs_per_task: 0,
            cors_origins: Vec::new(),
            server: ServerLimits::default(),
            admin_token: true,
            job_name_prefix: String::new(),
            run_limits: Default::default(),
            max_active_runs_per_token: 0,
            anonymous_rate_limit: None,
            metrics_public: false,
        }
    }
}

impl TestApp {
    pub async fn spawn(db: PgPool) -> TestApp {
        TestApp::spawn_with(db, TestOptions::default()).await
    }

    pub async fn spawn_with(db: PgPool, options: TestOptions) -> TestApp {
        let notifications = vfi_orchestrator::store::notify::Notifications::new(db.clone());
        let state = AppState {
            db: db.clone(),
            limits: Arc::new(Limits {
                max_body_bytes: MAX_BODY_BYTES,
                request_timeout: Duration::from_secs(30),
                max_queued_runs_per_task: options.max_queued_runs_per_task,
                max_active_runs_per_token: options.max_active_runs_per_token,
                log_follow_keepalive: Some(Duration::from_secs(15)),
                max_batch_runs: 500,
                max_rerun_indexes: 100,
                admission: vfi_orchestrator::domain::queue::Admission {
                    default_namespace: "default".into(),
                    aging_secs: 60,
                    ..Default::default()
                },
            }),
            policy: Arc::new(RunPolicy {
                namespaces: vec!["default".into(), "batch".into()],
                service_accounts: vec!["default".into()],
                job_name_prefix: options.job_name_prefix.clone(),
                limits: options.run_limits.clone(),
                sandbox: Default::default(),
            }),
            // These tests never reach a cluster: an address nothing listens on.
            cluster: Cluster::new(
                kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                    .unwrap(),
                ClusterSettings {
                    installation: "default".into(),
                    namespaces: vec!["default".into()],
                    job_name_prefix: options.job_name_prefix.clone(),
                    run_as_non_root: false,
                },
            ),
            auth: Arc::new(AuthSettings {
                enabled: !options.auth_disabled,
                rate_limit: options
                    .rate_limit
                    .and_then(|(rate, burst)| RateLimit::new(rate, burst)),
                anonymous_rate_limit: options
                    .anonymous_rate_limit
                    .and_then(|(rate, burst)| RateLimit::new(rate, burst)),
                metrics_public: options.metrics_public,
                cors_origins: options
                    .cors_origins
                    .iter()
                    .map(|o| o.parse().unwrap())
                    .collect(),
            }),
            events: EventHub::new(db.clone(), notifications.clone()),
            revocations: Revocations::new(db.clone(), notifications),
            final_runs: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = options.server;
        tokio::spawn(async move {
            http::server::serve(
                listener,
                http::router(state),
                server,
                std::future::pending(),
            )
            .await;
        });
        let http = if options.admin_token {
            client_for(&new_token(&db, Scope::Admin, None).await)
        } else {
            reqwest::Client::new()
        };
        TestApp {
            base: format!("http://{addr}"),
            http,
            anonymous: reqwest::Client::new(),
            db,
        }
    }

    /// A client that sends a new token with `scope`, limited to `tasks` when given.
    pub async fn client_with_scope(&self, scope: Scope, tasks: Option<&[&str]>) -> reqwest::Client {
        client_for(&new_token(&self.db, scope, tasks).await)
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

/// Creates a token straight in the database, as `vfi-orchestrator token create` does.
pub async fn new_token(db: &PgPool, scope: Scope, tasks: Option<&[&str]>) -> String {
    let request = TokenRequest {
        name: format!("test-{scope}"),
        scope,
        tasks: tasks.map(|t| t.iter().map(|s| s.to_string()).collect()),
        max_active_runs: None,
    };
    create_token(db, &request).await.unwrap().token
}

/// A client that sends `token` as its bearer token on every request.
pub fn client_for(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The calculatepi Job from the Kubernetes documentation.
pub fn calculatepi() -> Value {
    json!({
        "image": "perl:5.34.0",
        "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]
    })
}

/// Asserts a 429 problem whose `Retry-After` asks for a second or two.
pub async fn assert_rate_limited(limited: Response) {
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_problem(limited, StatusCode::TOO_MANY_REQUESTS, None).await;
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

pub mod fake_host;
pub mod postgres;
pub mod service;

/// Records a queued run through the store's one front door, as another replica would (to seed
/// history, or for a run queued under an older policy): checked against a policy that allows
/// the template's namespace, with no caps.
pub async fn queue_run(
    conn: &mut sqlx::PgConnection,
    task: Option<&str>,
    template: &vfi_orchestrator::domain::RunTemplate,
) -> vfi_orchestrator::domain::Run {
    use vfi_orchestrator::domain::{Caps, Origin, Submission};
    let policy = RunPolicy {
        namespaces: vec![template
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())],
        service_accounts: vec!["default".into()],
        job_name_prefix: String::new(),
        limits: Default::default(),
        sandbox: Default::default(),
    };
    let submission = Submission::check(
        &policy,
        Origin::api(task, None).by_service(),
        template.clone(),
        None,
    )
    .unwrap();
    vfi_orchestrator::store::runs::submit(conn, &submission, Caps::default())
        .await
        .unwrap()
        .unwrap()
}
