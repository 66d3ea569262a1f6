//! The service's resident memory (issue 15: at most +50 MB over idle with 10,000 runs active,
//! about 5 KB per active run, and flat with the size of the history). The service runs as its
//! own process (the release binary), so its RSS is its own: kubesim (in this process) holds the
//! cluster's 10,000 Jobs and pods, and would hide the service's share in a shared process.
//!
//! 1. History: the service idle on an empty database, then on one with 1,000,000 finished runs
//!    (seeded by one `INSERT ... SELECT generate_series`), each after the same warm-up (a few
//!    list and get requests).
//! 2. Active runs: the service idle, then with 10,000 long-running runs (`KUBESIM_DURATION_MS`
//!    one hour) all `running`, and the peak while they were submitted and launched.
//!
//! Prints `ROW|...` lines for `scripts/bench table`. Run with
//! `scripts/bench active_memory [active] [history]` (defaults 10000 and 1000000).

#[path = "common.rs"]
mod common;

use common::rss_kib;

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The release service binary, built by `cargo bench` with this bench.
const SERVICE: &str = env!("CARGO_BIN_EXE_vfi-orchestrator");

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A database of its own on the server of DATABASE_URL.
struct Database {
    admin: PgConnectOptions,
    name: String,
    url: String,
    pool: PgPool,
}

impl Database {
    async fn create() -> Database {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench sets it)");
        let admin = PgConnectOptions::from_str(&url).unwrap();
        let name = format!("vfi_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let options = admin.clone().database(&name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        vfi_orchestrator::store::migrate(&pool).await.unwrap();
        // The same server and user, this database.
        let without_query = url.split('?').next().unwrap_or(&url);
        let server = &without_query[..without_query.rfind('/').unwrap()];
        Database {
            url: format!("{server}/{name}"),
            admin,
            name,
            pool,
        }
    }

    async fn drop(self) {
        self.pool.close().await;
        let mut conn = self.admin.connect().await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await;
    }
}

/// The service as a child process.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    async fn start(db: &Database, kubeconfig: &std::path::Path) -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // BENCH_SERVICE_ARGS: more flags for the service (to see what memory follows).
        let extra = std::env::var("BENCH_SERVICE_ARGS").unwrap_or_default();
        // BENCH_SERVICE_WRAPPER: a program to run the service under (e.g. `heaptrack`; the
        // RSS figures are then the wrapper's, only its profile counts).
        let mut command = match std::env::var("BENCH_SERVICE_WRAPPER") {
            Ok(wrapper) if !wrapper.is_empty() => {
                let mut command = Command::new(wrapper);
                command.arg(SERVICE);
                command
            }
            _ => Command::new(SERVICE),
        };
        let child = command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                // The probes measure the service, not authentication.
                "--auth-disabled",
                "--rate-limit-per-second",
                "0",
                "--launch-concurrency",
                "32",
            ])
            .args(extra.split_whitespace())
            .env("DATABASE_URL", &db.url)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the service binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Service { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// What a dashboard does: list pages and read runs, so the measured memory includes the
    /// request path's buffers, then a pause for the loops' first passes.
    async fn warm_up(&self, http: &reqwest::Client) {
        for _ in 0..20 {
            let page: Value = http
                .get(format!("{}/v1/runs?limit=50", self.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(id) = page["items"][0]["id"].as_str() {
                http.get(format!("{}/v1/runs/{id}", self.base))
                    .send()
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    fn stop(mut self) {
        // SIGTERM: a graceful stop hands back the log-capture leases. Under a wrapper, the
        // service is the wrapper's child, and is the one to stop.
        let pid = self.pid();
        let mut pids = vec![pid.to_string()];
        if std::env::var("BENCH_SERVICE_WRAPPER").is_ok_and(|w| !w.is_empty()) {
            pids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
        }
        let _ = Command::new("kill").args(&pids).status();
        let _ = self.child.wait();
    }
}

fn row(what: &str, service: &str, baseline: &str, ratio: &str, goal: &str, met: bool) {
    println!(
        "ROW|{what}|{service}|{baseline}|{ratio}|{goal}|{}",
        if met { "yes" } else { "no" }
    );
}

async fn history(kubeconfig: &std::path::Path, runs: i64, http: &reqwest::Client) {
    let db = Database::create().await;
    let service = Service::start(&db, kubeconfig).await;
    service.warm_up(http).await;
    let without = service.rss();
    service.stop();

    let seeding = Instant::now();
    sqlx::query(
        "INSERT INTO runs (id, number, status, trigger, template, created_at, finished_at)
         SELECT (lpad(to_hex(i), 12, '0') || '70008000000000000000')::uuid, i,
                CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'api',
                '{\"image\": \"busybox\", \"command\": [\"true\"]}'::jsonb,
                now() - make_interval(secs => ($1 - i)::int),
                now() - make_interval(secs => ($1 - i)::int)
         FROM generate_series(1, $1) AS i",
    )
    .bind(runs)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE runs")
        .execute(&db.pool)
        .await
        .unwrap();
    println!(
        "seeded {runs} finished runs in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let service = Service::start(&db, kubeconfig).await;
    service.warm_up(http).await;
    let with = service.rss();
    service.stop();
    db.drop().await;

    println!(
        "history: service RSS {:.1} MiB on an empty database, {:.1} MiB with {runs} finished runs",
        mib(without),
        mib(with)
    );
    let delta = mib(with) - mib(without);
    row(
        &format!("Resident memory with {runs} finished runs in Postgres"),
        &format!("{:.1} MB", mib(with)),
        &format!("{:.1} MB without history", mib(without)),
        &format!("{:+.1} MB", delta),
        "flat (within 5 MB)",
        delta.abs() <= 5.0,
    );
}

async fn active_runs(
    sim: &kubesim::KubeSim,
    kubeconfig: &std::path::Path,
    active: usize,
    http: &reqwest::Client,
) {
    let db = Database::create().await;
    let service = Service::start(&db, kubeconfig).await;
    service.warm_up(http).await;
    let idle = service.rss();

    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let (peak, pid) = (peak.clone(), service.pid());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let clients = 16;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, base) = (http.clone(), service.base.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (client..active).step_by(clients) {
                let template = json!({"image": "x",
                    "env": [{"name": "KUBESIM_DURATION_MS", "value": "3600000"}]});
                let response = http
                    .post(format!("{base}/v1/runs"))
                    .json(&json!({"template": template}))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'running'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if running as usize == active {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {running} of {active} runs running after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{active} runs submitted and running in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    service.warm_up(http).await;
    let with = service.rss();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "active runs: service RSS {:.1} MiB idle, {:.1} MiB with {active} runs running (peak {:.1} MiB while they started)",
        mib(idle),
        mib(with),
        mib(peak)
    );
    let delta = mib(with) - mib(idle);
    row(
        &format!("Resident memory with {active} runs active"),
        &format!(
            "{:+.1} MB over idle ({:.1} -> {:.1} MB)",
            delta,
            mib(idle),
            mib(with)
        ),
        &format!("idle {:.1} MB", mib(idle)),
        "",
        "<= +50 MB",
        delta <= 50.0,
    );
    let per_run = (with.saturating_sub(idle)) as f64 * 1024.0 / 1000.0 / active as f64;
    row(
        "Resident memory per active run",
        &format!("{per_run:.1} KB"),
        "",
        "",
        "<= ~5 KB",
        per_run <= 5.0,
    );
    service.stop();
    // The runs' Jobs stay in kubesim; the next phase (if any) uses a new database, whose
    // service leaves them alone (they are not its runs), and the simulator goes with this process.
    let _ = sim;
    db.drop().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let active: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let runs: i64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let sim = kubesim::KubeSim::start(kubesim::SimConfig {
        node_capacity: active + 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let kubeconfig =
        std::env::temp_dir().join(format!("active_memory_{}.kubeconfig", std::process::id()));
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let http = reqwest::Client::new();
    if runs > 0 {
        history(&kubeconfig, runs, &http).await;
    }
    if active > 0 {
        active_runs(&sim, &kubeconfig, active, &http).await;
    }
    let _ = std::fs::remove_file(&kubeconfig);
    sim.shutdown().await;
}
