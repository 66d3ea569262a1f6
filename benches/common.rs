//! Shared set-up for the benchmarks: a fresh database on the server of DATABASE_URL, kubesim,
//! and the whole service on a random port.
#![allow(dead_code)]

use clap::Parser;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use tokio_util::sync::CancellationToken;
use vfi_orchestrator::app::App;
use vfi_orchestrator::config::{Cli, Command};

pub struct Bench {
    pub db: PgPool,
    pub base: String,
    pub http: reqwest::Client,
    pub sim: kubesim::KubeSim,
    pub shutdown: CancellationToken,
    admin: PgConnectOptions,
    name: String,
}

impl Bench {
    pub async fn start(sim: kubesim::SimConfig, flags: &[&str]) -> Bench {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench sets it)");
        let admin = PgConnectOptions::from_str(&url).unwrap();
        let name = format!("vfi_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(40)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap();
        let sim = kubesim::KubeSim::start(sim).await.unwrap();
        let args = serve_args(flags);
        let app = App::new(&args, db.clone(), sim.client()).await.unwrap();
        let base = format!("http://{}", app.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run(shutdown.clone()));
        Bench {
            db,
            base,
            http: reqwest::Client::new(),
            sim,
            shutdown,
            admin,
            name,
        }
    }

    /// Starts an ad-hoc run of `template` through the API; returns its id.
    pub async fn submit(&self, template: serde_json::Value) -> String {
        let run: serde_json::Value = self
            .http
            .post(format!("{}/v1/runs", self.base))
            .json(&serde_json::json!({ "template": template }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        run["id"].as_str().unwrap().to_string()
    }

    /// Waits (up to `within`) until the log of the run `id`'s pod is archived completely.
    pub async fn wait_archived(&self, id: &str, within: std::time::Duration) {
        let started = std::time::Instant::now();
        loop {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM pod_logs WHERE run_id = $1::uuid")
                    .bind(id)
                    .fetch_optional(&self.db)
                    .await
                    .unwrap();
            if state.as_deref() == Some("complete") {
                return;
            }
            assert!(started.elapsed() < within, "capture did not finish");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.db.close().await;
        self.sim.shutdown().await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut conn = self.admin.connect().await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await;
    }
}

/// The value below which `q` of the sorted samples fall.
/// The service's `serve` settings for a bench: on a free port, authentication and rate limits
/// off (the probes measure the service, not them), then `flags`. The database and cluster are
/// handed to `App::new` apart.
pub fn serve_args(flags: &[&str]) -> vfi_orchestrator::config::ServeArgs {
    let mut argv = vec![
        "vfi-orchestrator",
        "serve",
        "--database-url",
        "postgres://unused",
        "--listen",
        "127.0.0.1:0",
        "--auth-disabled",
        "--rate-limit-per-second",
        "0",
    ];
    argv.extend_from_slice(flags);
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    args
}

pub fn percentile(sorted: &[std::time::Duration], q: f64) -> std::time::Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Resident memory of process `pid`, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
