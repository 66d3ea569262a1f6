//! Issue 15's throughput rows, each service figure beside a baseline measured in the same run on
//! the same kubesim and PostgreSQL server: submission to Job creation against Jobs created
//! straight through kube-rs, `POST /v1/runs` against a single-row INSERT loop, `GET
//! /v1/runs/{id}` against `/healthz`, the filtered history's p99 at 1,000,000 runs against the
//! same at a few thousand, and an archived log served against a raw `COPY ... TO STDOUT` of its
//! chunks, decompressed. Each row is also printed as `ROW|what|service|baseline|ratio|goal|met`
//! for `scripts/bench table`.
//!
//! Run with `scripts/bench throughput [section...]`; sections: submit, accept, get, list, logs,
//! batch (all by default). The load comes from this process (reqwest, N concurrent tasks), so it
//! needs nothing installed.

#[path = "common.rs"]
mod common;

use common::{percentile, Bench};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let mut sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if sections.is_empty() {
        sections = ["submit", "accept", "get", "list", "logs", "batch"]
            .map(String::from)
            .to_vec();
    }
    for section in &sections {
        match section.as_str() {
            "submit" => submit_to_job().await,
            "accept" => accept().await,
            "get" => get_run().await,
            "list" => list_failed().await,
            "logs" => archived_log().await,
            "batch" => batch().await,
            other => panic!("unknown section {other:?}"),
        }
    }
}

/// kubesim as the rows use it: as it comes, Events included (its recorder once listed every
/// Event of the namespace per record, which a perf profile of this bench showed at a third of
/// the process's CPU; it now correlates through an LRU like client-go's).
fn sim() -> kubesim::SimConfig {
    kubesim::SimConfig::default()
}

/// One row of the table, for `scripts/bench table` (and for people).
fn row(what: &str, service: String, baseline: String, ratio: f64, goal: &str, met: bool) {
    println!(
        "ROW|{what}|{service}|{baseline}|{ratio:.2}x|{goal}|{}",
        if met { "yes" } else { "no" }
    );
}

/// What a load run measured.
struct Load {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn p99(&self) -> Duration {
        percentile(&self.latencies, 0.99)
    }
}

/// `requests` calls of `call(i)`, from `clients` concurrent tasks.
async fn load<F, Fut>(clients: usize, requests: usize, call: F) -> Load
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let next = next.clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return latencies;
                }
                let t0 = Instant::now();
                call(i).await;
                latencies.push(t0.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Load {
        requests,
        elapsed,
        latencies,
    }
}

fn template() -> Value {
    json!({"image": "busybox", "command": ["true"]})
}

async fn post_run(http: &reqwest::Client, base: &str) {
    let response = http
        .post(format!("{base}/v1/runs"))
        .json(&json!({"template": template()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

async fn count(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Submit -> Job created, 1,000 runs from 16 clients, beside 1,000 Jobs created straight on
/// the same kubesim through kube-rs, 16 at a time.
async fn submit_to_job() {
    const RUNS: usize = 1000;
    const CLIENTS: usize = 16;
    let sim = kubesim::SimConfig {
        node_capacity: 2 * RUNS + 10,
        ..sim()
    };
    let bench = Bench::start(sim, &[]).await;

    // The baseline first, so that none of the service's work is left over while it runs.
    let jobs: Api<Job> = Api::namespaced(bench.sim.client(), "default");
    let direct = load(CLIENTS, RUNS, move |i| {
        let jobs = jobs.clone();
        async move {
            let job: Job = serde_json::from_value(json!({
                "metadata": {"name": format!("direct-{i}")},
                "spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
                }}},
            }))
            .unwrap();
            jobs.create(&PostParams::default(), &job).await.unwrap();
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let (http, base) = (bench.http.clone(), bench.base.clone());
    load(CLIENTS, RUNS, move |_| {
        let (http, base) = (http.clone(), base.clone());
        async move { post_run(&http, &base).await }
    })
    .await;
    loop {
        let launched = count(
            &bench.db,
            "SELECT count(*) FROM runs WHERE job_name IS NOT NULL",
        )
        .await;
        if launched as usize >= RUNS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {launched} of {RUNS} runs have a Job after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let service = RUNS as f64 / started.elapsed().as_secs_f64();
    let ratio = service / direct.rate();
    row(
        "Submit -> Job created, 1,000 runs, 16 clients",
        format!("{service:.0} runs/s"),
        format!(
            "{:.0} Jobs/s created straight on kubesim, 16 at a time",
            direct.rate()
        ),
        ratio,
        ">= 0.9x",
        ratio >= 0.9,
    );
    bench.stop().await;
}

/// Single-row INSERTs from `clients` connections in autocommit, as pgbench's: rows per second.
async fn insert_rate(db: &sqlx::PgPool, clients: usize, rows: usize) -> f64 {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_inserts (
            id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload jsonb)",
    )
    .execute(db)
    .await
    .unwrap();
    let db = db.clone();
    load(clients, rows, move |_| {
        let db = db.clone();
        async move {
            sqlx::query("INSERT INTO bench_inserts (payload) VALUES ($1)")
                .bind(sqlx::types::Json(template()))
                .execute(&db)
                .await
                .unwrap();
        }
    })
    .await
    .rate()
}

/// `POST /v1/runs` accepted from 4 clients, with the launcher and kubesim working, and with
/// kubesim hanging every request (the API path alone), beside single-row INSERTs.
async fn accept() {
    const CLIENTS: usize = 4;
    const RUNS: usize = 2000;
    let sim = kubesim::SimConfig {
        node_capacity: 2 * RUNS + 10,
        ..sim()
    };
    let bench = Bench::start(sim, &[]).await;
    let inserts = insert_rate(&bench.db, CLIENTS, 4 * RUNS).await;

    let post = |bench: &Bench| {
        let (http, base) = (bench.http.clone(), bench.base.clone());
        move |_| {
            let (http, base) = (http.clone(), base.clone());
            async move { post_run(&http, &base).await }
        }
    };
    let running = load(CLIENTS, RUNS, post(&bench)).await;
    let ratio = running.rate() / inserts;
    let baseline = format!("single-row INSERT, 4 clients, same server: {inserts:.0}/s");
    row(
        "`POST /v1/runs` accepted, 4 clients, launcher and kubesim running",
        format!("{:.0} runs/s", running.rate()),
        baseline.clone(),
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    );

    // Every launch slot ends up waiting on kubesim, so the launcher stops claiming.
    bench.sim.faults().hang_requests(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = load(CLIENTS, RUNS, post(&bench)).await;
    let ratio = alone.rate() / inserts;
    row(
        "same, kubesim paused (API path alone)",
        format!("{:.0} runs/s", alone.rate()),
        baseline,
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    );
    bench.sim.faults().clear();
    bench.stop().await;
}

/// `GET /v1/runs/{id}` from 4 clients beside `GET /healthz`.
async fn get_run() {
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 10_000;
    let bench = Bench::start(sim(), &[]).await;
    let id = bench.submit(template()).await;
    let get = |url: String| {
        let http = bench.http.clone();
        move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        }
    };
    // Warm both up (connections, caches), then measure.
    load(CLIENTS, 500, get(format!("{}/healthz", bench.base))).await;
    let healthz = load(CLIENTS, REQUESTS, get(format!("{}/healthz", bench.base))).await;
    let url = format!("{}/v1/runs/{id}", bench.base);
    load(CLIENTS, 500, get(url.clone())).await;
    let service = load(CLIENTS, REQUESTS, get(url)).await;
    let ratio = service.rate() / healthz.rate();
    row(
        "`GET /v1/runs/{id}`, 4 clients",
        format!("{:.0} req/s", service.rate()),
        format!("`GET /healthz` {:.0} req/s", healthz.rate()),
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    );
    bench.stop().await;
}

/// Finished runs numbered `from..=to` (every tenth failed), as the prune bench seeds them.
async fn seed_finished(db: &sqlx::PgPool, from: i64, to: i64) {
    sqlx::query(
        "INSERT INTO runs (id, task_name, number, status, trigger, template, created_at,
                           finished_at)
         SELECT (lpad(to_hex(i), 12, '0') || '70008000000000000000')::uuid, 'bench', i,
                CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'api', $3,
                now() - make_interval(mins => ($2 - i)::int),
                now() - make_interval(mins => ($2 - i)::int)
         FROM generate_series($1, $2) AS i",
    )
    .bind(from)
    .bind(to)
    .bind(sqlx::types::Json(template()))
    .execute(db)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE runs")
        .execute(db)
        .await
        .unwrap();
}

/// p99 of `GET /v1/runs?limit=50&status=failed`, one client.
async fn list_p99(bench: &Bench) -> Duration {
    let url = format!("{}/v1/runs?limit=50&status=failed", bench.base);
    let get = {
        let http = bench.http.clone();
        move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        }
    };
    load(1, 50, get.clone()).await;
    load(1, 500, get).await.p99()
}

/// The failed-runs filter's p99 at 1,000,000 runs beside the same at 5,000.
async fn list_failed() {
    const SMALL: i64 = 5_000;
    const LARGE: i64 = 1_000_000;
    let bench = Bench::start(sim(), &[]).await;
    seed_finished(&bench.db, 1, SMALL).await;
    let small = list_p99(&bench).await;
    let seeding = Instant::now();
    seed_finished(&bench.db, SMALL + 1, LARGE).await;
    println!(
        "seeded {} more runs in {:.1} s",
        LARGE - SMALL,
        seeding.elapsed().as_secs_f64()
    );
    let large = list_p99(&bench).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    row(
        "`GET /v1/runs?limit=50&status=failed`, p99",
        format!("{:.1} ms at 1,000,000 rows", ms(large)),
        format!("{:.1} ms at 5,000 rows", ms(small)),
        ratio,
        "<= 1.5x",
        ratio <= 1.5,
    );
    bench.stop().await;
}

/// Reads a binary `COPY ... TO STDOUT` of `(encoding, data)` rows and inflates each chunk:
/// the bytes of the archive as fast as the database hands them out.
async fn copy_chunks(db: &sqlx::PgPool, run_id: &str) -> usize {
    use flate2::read::DeflateDecoder;
    use std::io::Read;
    let mut conn = db.acquire().await.unwrap();
    let mut copy = conn
        .copy_out_raw(&format!(
            "COPY (SELECT encoding, data FROM log_chunks WHERE run_id = '{run_id}' ORDER BY pod_name, seq)
             TO STDOUT (FORMAT binary)"
        ))
        .await
        .unwrap();
    let mut raw = Vec::new();
    while let Some(piece) = copy.next().await {
        raw.extend_from_slice(&piece.unwrap());
    }
    // Signature (11 bytes), flags (4), header extension length (4) and extension.
    let ext = u32::from_be_bytes(raw[15..19].try_into().unwrap()) as usize;
    let mut at = 19 + ext;
    let mut total = 0;
    let mut out = Vec::new();
    loop {
        let fields = i16::from_be_bytes(raw[at..at + 2].try_into().unwrap());
        at += 2;
        if fields < 0 {
            break;
        }
        let mut field = || {
            let len = i32::from_be_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
            let value = &raw[at + 4..at + 4 + len];
            at += 4 + len;
            value
        };
        let encoding = i16::from_be_bytes(field().try_into().unwrap());
        let data = field();
        total += if encoding == 1 {
            out.clear();
            DeflateDecoder::new(data).read_to_end(&mut out).unwrap();
            out.len()
        } else {
            data.len()
        };
    }
    total
}

/// An archived log of 16 MB served whole, beside a raw COPY of its chunks, decompressed.
async fn archived_log() {
    const BYTES: u64 = 16_000_000;
    let sim = kubesim::SimConfig {
        log_rotate_bytes: None,
        ..sim()
    };
    let bench = Bench::start(sim, &[]).await;
    let template =
        json!({"image": "x", "env": [{"name": "KUBESIM_LOG_BYTES", "value": BYTES.to_string()}]});
    let id = bench.submit(template).await;
    bench.wait_archived(&id, Duration::from_secs(600)).await;
    let raw: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(raw_len), 0)::bigint FROM log_chunks WHERE run_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&bench.db)
    .await
    .unwrap();

    // One request takes a few hundredths of a second, so one timing is mostly noise: each is
    // repeated (alternating service and COPY, so both see the same load) and the medians are
    // compared. `BENCH_LOG_ROUNDS` sets how many (e.g. many more while profiling).
    let rounds: usize = std::env::var("BENCH_LOG_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(21);
    let mut served_times = Vec::with_capacity(rounds);
    let mut copied_times = Vec::with_capacity(rounds);
    let (mut served_bytes, mut copied_bytes) = (0, 0);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let response = bench
            .http
            .get(format!("{}/v1/runs/{id}/logs", bench.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut bytes = 0;
        while let Some(piece) = body.next().await {
            bytes += piece.unwrap().len();
        }
        served_times.push(t0.elapsed());
        assert!(
            served_bytes == 0 || served_bytes == bytes,
            "every round serves the same log"
        );
        served_bytes = bytes;
        let t0 = Instant::now();
        copied_bytes = copy_chunks(&bench.db, &id).await;
        copied_times.push(t0.elapsed());
    }
    served_times.sort();
    copied_times.sort();
    let served = (percentile(&served_times, 0.5), served_bytes);
    let copied = (percentile(&copied_times, 0.5), copied_bytes);
    println!(
        "archived log, {rounds} rounds: service min/median/max {:.1}/{:.1}/{:.1} ms, COPY {:.1}/{:.1}/{:.1} ms",
        served_times[0].as_secs_f64() * 1e3,
        served.0.as_secs_f64() * 1e3,
        served_times[rounds - 1].as_secs_f64() * 1e3,
        copied_times[0].as_secs_f64() * 1e3,
        copied.0.as_secs_f64() * 1e3,
        copied_times[rounds - 1].as_secs_f64() * 1e3,
    );
    assert_eq!(copied.1 as i64, raw, "COPY read the whole archive");
    // Both read the same archive; the service leaves out the timestamps the archive keeps.
    let mb = raw as f64 / 1e6;
    let service = mb / served.0.as_secs_f64();
    let baseline = mb / copied.0.as_secs_f64();
    let ratio = service / baseline;
    row(
        "Archived log served",
        format!(
            "{mb:.1} MB archive ({:.1} MB of text served) in {:.1} ms (median of {rounds}): {service:.0} MB/s",
            served.1 as f64 / 1e6,
            served.0.as_secs_f64() * 1e3
        ),
        format!(
            "`COPY ... TO STDOUT` of the chunks, decompressed, {:.1} ms (median): {baseline:.0} MB/s",
            copied.0.as_secs_f64() * 1e3
        ),
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    );
    bench.stop().await;
}

/// `POST /v1/runs/batch` of 100 runs from 4 clients, beside 100-row INSERTs from 4 clients.
/// kubesim hangs every request, as in the "API path alone" row: the launcher's work is not
/// this row's.
async fn batch() {
    const CLIENTS: usize = 4;
    const BATCHES: usize = 100;
    const SIZE: usize = 100;
    let bench = Bench::start(sim(), &[]).await;
    bench.sim.faults().hang_requests(Duration::from_secs(3600));
    sqlx::query(
        "CREATE TABLE bench_inserts (
            id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload jsonb)",
    )
    .execute(&bench.db)
    .await
    .unwrap();
    let inserts = {
        let db = bench.db.clone();
        load(CLIENTS, BATCHES, move |_| {
            let db = db.clone();
            async move {
                let mut query = sqlx::QueryBuilder::new("INSERT INTO bench_inserts (payload) ");
                query.push_values(0..SIZE, |mut row, _| {
                    row.push_bind(sqlx::types::Json(template()));
                });
                query.build().execute(&db).await.unwrap();
            }
        })
        .await
    };
    let body = json!({"runs": vec![json!({"template": template()}); SIZE]});
    let (http, url) = (bench.http.clone(), format!("{}/v1/runs/batch", bench.base));
    let batches = load(CLIENTS, BATCHES, move |_| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let response = http.post(&url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        }
    })
    .await;
    let service = (BATCHES * SIZE) as f64 / batches.elapsed.as_secs_f64();
    let baseline = (BATCHES * SIZE) as f64 / inserts.elapsed.as_secs_f64();
    let ratio = service / baseline;
    row(
        "`POST /v1/runs/batch` of 100 runs, 4 clients (API path alone)",
        format!("{service:.0} runs/s"),
        format!("100-row INSERTs, 4 clients, same server: {baseline:.0} rows/s"),
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    );
    bench.sim.faults().clear();
    bench.stop().await;
}
