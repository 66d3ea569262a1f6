//! The whole service (HTTP server, launcher, trackers) against real Postgres and an in-process
//! kubesim, driven over HTTP like a user would.

use clap::Parser;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vfi_orchestrator::app::App;
pub use vfi_orchestrator::clock::ManualClock;
use vfi_orchestrator::config::{Cli, Command};
use vfi_orchestrator::domain::Scope;

pub use kubesim::{KubeSim, RunnerKind, SimConfig};

pub async fn kubesim(runner: RunnerKind) -> KubeSim {
    KubeSim::start(SimConfig {
        runner,
        ..SimConfig::default()
    })
    .await
    .expect("kubesim starts")
}

pub struct Service {
    pub base: String,
    pub http: reqwest::Client,
    pub db: PgPool,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    /// Starts the service on 127.0.0.1:0 with `extra` command-line flags.
    pub async fn start(db: PgPool, client: kube::Client, extra: &[&str]) -> Service {
        // TEST_LOG=debug (or any filter) shows the service's logs in failing tests' output.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        Service::start_with_clock(db, client, extra, None).await
    }

    /// Like [`Service::start`], with the scheduler on `clock` instead of the system clock.
    pub async fn start_with_clock(
        db: PgPool,
        client: kube::Client,
        extra: &[&str],
        clock: Option<ManualClock>,
    ) -> Service {
        Service::start_inner(db, None, client, extra, clock).await
    }

    /// Like [`Service::start`], on a pool made as `serve` makes it (`store::pool`, with its
    /// acquire timeout), for tests about the database going away.
    pub async fn start_on_pool(
        db: PgPool,
        pool: PgPool,
        client: kube::Client,
        extra: &[&str],
    ) -> Service {
        Service::start_inner(db, Some(pool), client, extra, None).await
    }

    async fn start_inner(
        db: PgPool,
        pool: Option<PgPool>,
        client: kube::Client,
        extra: &[&str],
        clock: Option<ManualClock>,
    ) -> Service {
        let mut argv = vec![
            "vfi-orchestrator",
            "serve",
            "--database-url",
            "postgres://unused",
            "--listen",
            "127.0.0.1:0",
            "--launcher-poll-ms",
            "200",
            // Tests poll the API faster than a client should; rate limits have their own tests.
            "--rate-limit-per-second",
            "0",
        ];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("valid flags").command else {
            unreachable!()
        };
        // Its own pool, as a real replica has: the loops hold some connections for LISTEN and
        // locks, and two services in one test must not starve each other of the test's pool.
        let pool = match pool {
            Some(pool) => pool,
            None => sqlx::postgres::PgPoolOptions::new()
                .max_connections(args.database.db_max_connections)
                .connect_with((*db.connect_options()).clone())
                .await
                .expect("a pool for the service"),
        };
        let mut app = App::new(&args, pool, client).await.expect("service builds");
        if let Some(clock) = clock {
            app.runtime.clock = std::sync::Arc::new(clock);
        }
        let addr = app.local_addr().unwrap();
        let http = if args.security.auth_disabled {
            reqwest::Client::new()
        } else {
            super::client_for(&super::new_token(&db, Scope::Admin, None).await)
        };
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        Service {
            base: format!("http://{addr}"),
            http,
            db,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Stops the service as SIGTERM would, and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Submits an ad-hoc run and returns its id.
    pub async fn submit(&self, template: Value) -> String {
        let response = self
            .post("/v1/runs", &json!({ "template": template }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let run: Value = response.json().await.unwrap();
        run["id"].as_str().unwrap().to_string()
    }

    pub async fn run(&self, id: &str) -> Value {
        self.get(&format!("/v1/runs/{id}")).await
    }

    /// Waits until the run has `status`, failing on timeout or when it ends in another.
    pub async fn wait_for(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.run(id).await;
            if run["status"] == status {
                return run;
            }
            let finished = matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "lost")
            );
            assert!(
                !finished,
                "run {id} ended {} instead of {status}: {run:#}",
                run["status"]
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {id} not {status} within {timeout:?}: {run:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn statuses_seen(&self, id: &str) -> Vec<String> {
        let events = self.get(&format!("/v1/runs/{id}/events")).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Jobs in the simulated cluster that belong to run `id`.
pub async fn jobs_of(client: &kube::Client, id: &str) -> Vec<Job> {
    let api: Api<Job> = Api::all(client.clone());
    api.list(&ListParams::default().labels(&format!("vfi-orchestrator.io/run-id={id}")))
        .await
        .unwrap()
        .items
}

pub async fn pods_of(client: &kube::Client, id: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::all(client.clone());
    api.list(&ListParams::default().labels(&format!("vfi-orchestrator.io/run-id={id}")))
        .await
        .unwrap()
        .items
}

/// Waits until `check` holds, polling every 25 ms, or fails after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A run template for kubesim's scripted runner: `env` sets `KUBESIM_*` behaviour, `extra`
/// adds template fields.
pub fn scripted(env: &[(&str, &str)], extra: Value) -> Value {
    let mut template = json!({
        "image": "busybox",
        "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
    });
    template
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    template
}

/// What kubesim's `KUBESIM_LOG_LINES=n` prints.
pub fn numbered_lines(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

/// `GET /v1/runs/{id}/logs{query}` as text, asserting a 200 `text/plain` answer.
pub async fn logs(service: &Service, id: &str, query: &str) -> String {
    let response = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    response.text().await.unwrap()
}
