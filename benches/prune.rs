//! Benchmark: one million finished runs pruned down to a task's history limits while the API
//! keeps answering. Prints the pruning rate and the API's latency percentiles during it, beside
//! the same clients' latency over the same rows before pruning starts (the task keeps its whole
//! history until it is given CronJob's limits), and a `ROW|...` line for `scripts/bench table`.
//!
//! Needs a PostgreSQL server it may create a database on:
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench prune`
//! (`BENCH_RUNS` changes the number of runs seeded, `BENCH_IDLE_SECS` the idle measurement).

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use vfi_orchestrator::app::App;
use vfi_orchestrator::config::{Cli, Command};
use vfi_orchestrator::domain::{RunTemplate, TaskSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser;
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let runs: i64 = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let database = format!("vfi_prune_bench_{}", std::process::id());
    let admin = PgConnectOptions::from_str(&url)?;
    let mut conn = admin.connect().await?;
    conn.execute(format!("CREATE DATABASE {database}").as_str())
        .await?;
    let options = admin.clone().database(&database);
    let db = PgPoolOptions::new()
        .max_connections(20)
        .connect_with(options)
        .await?;
    vfi_orchestrator::store::migrate(&db).await?;

    // A task without a schedule or limits keeps its whole history: nothing is pruned until it
    // is given limits below.
    let template = RunTemplate::new("busybox", vec!["true".into()]);
    let spec: TaskSpec = serde_json::from_value(json!({"template": template}))?;
    vfi_orchestrator::store::tasks::upsert(&db, "bench", &spec).await?;

    let seeding = Instant::now();
    sqlx::query(
        "INSERT INTO runs (id, task_name, number, status, trigger, template, created_at,
                           finished_at, scheduled_time)
         SELECT (lpad(to_hex(i), 12, '0') || '70008000000000000000')::uuid, 'bench', i,
                CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'schedule', $2,
                now() - make_interval(secs => ($1 - i)::int),
                now() - make_interval(secs => ($1 - i)::int),
                now() - make_interval(secs => ($1 - i)::int)
         FROM generate_series(1, $1) AS i",
    )
    .bind(runs)
    .bind(sqlx::types::Json(&template))
    .execute(&db)
    .await?;
    sqlx::query("INSERT INTO run_counters (scope, last_number) VALUES ('bench', $1)")
        .bind(runs)
        .execute(&db)
        .await?;
    sqlx::query("VACUUM ANALYZE runs").execute(&db).await?;
    println!(
        "seeded {runs} finished runs (one INSERT ... SELECT generate_series) in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let sim = kubesim::KubeSim::start(kubesim::SimConfig::default()).await?;
    let argv = [
        "vfi-orchestrator",
        "serve",
        "--database-url",
        "postgres://unused",
        "--listen",
        "127.0.0.1:0",
        "--prune-interval-ms",
        "100",
        // The load clients measure the API, not authentication.
        "--auth-disabled",
        "--rate-limit-per-second",
        "0",
    ];
    let Command::Serve(args) = Cli::try_parse_from(argv)?.command else {
        unreachable!()
    };
    let app = App::new(&args, db.clone(), sim.client()).await?;
    let base = format!("http://{}", app.local_addr()?);
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(app.run(shutdown.clone()));

    // Clients reading the task and its newest runs, as a UI would, while pruning goes on.
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = CancellationToken::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let (base, latencies, errors, load) = (
            base.clone(),
            latencies.clone(),
            errors.clone(),
            load.clone(),
        );
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let paths = ["/v1/tasks/bench", "/v1/runs?task=bench&limit=20"];
            let mut n = i;
            while !load.is_cancelled() {
                let began = Instant::now();
                let ok = http
                    .get(format!("{base}{}", paths[n % 2]))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                latencies.lock().await.push(began.elapsed());
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Idle: the same clients over the same rows, nothing pruned.
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle = std::mem::take(&mut *latencies.lock().await);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&db)
        .await?;
    assert_eq!(left, runs, "nothing is pruned before the task has limits");

    // A scheduled task keeping CronJob's defaults: 3 succeeded and 1 failed run.
    let started = Instant::now();
    let response = reqwest::Client::new()
        .put(format!("{base}/v1/tasks/bench"))
        .json(
            &json!({"template": template, "schedule": "@hourly", "successfulRunsHistoryLimit": 3}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "setting the task's limits: {}",
        response.status()
    );
    let remaining = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
            .fetch_one(&db)
            .await?;
        if left <= 4 {
            break left;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("pruning did not finish in 30 minutes ({left} left)");
        }
    };
    let took = started.elapsed();
    load.cancel();
    for client in clients {
        client.await?;
    }
    shutdown.cancel();
    service.await??;

    let mut latencies = Arc::try_unwrap(latencies).unwrap().into_inner();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let mut idle = idle;
    idle.sort();
    let idle_pct = |p: f64| idle[((idle.len() - 1) as f64 * p) as usize];
    let pruned = runs - remaining;
    println!(
        "pruned {pruned} runs in {:.1} s: {:.0} runs/s ({remaining} kept)",
        took.as_secs_f64(),
        pruned as f64 / took.as_secs_f64()
    );
    println!(
        "API during pruning: {} requests, {} errors, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "API before pruning (same clients, same {runs} rows): {} requests, p50 {:.1} ms, p99 {:.1} ms",
        idle.len(),
        ms(idle_pct(0.5)),
        ms(idle_pct(0.99)),
    );
    let ratio = ms(pct(0.99)) / ms(idle_pct(0.99));
    println!(
        "ROW|API p99 while pruning {runs} runs|{:.1} ms|{:.1} ms idle|{ratio:.2}x|<= 2x idle (the issue sets none)|{}",
        ms(pct(0.99)),
        ms(idle_pct(0.99)),
        if ratio <= 2.0 { "yes" } else { "no" }
    );
    db.close().await;
    conn.execute(format!("DROP DATABASE {database} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
