//! Issue 16's queue benchmark: runs submitted to one concurrency key with `limit: 10` and to 100
//! other keys (`limit: 1` each), served by two replicas on one database and one kubesim. Beside
//! it, in the same run, the launcher's throughput without limits (the same number of ad-hoc
//! runs, no key). Measured:
//! - admission throughput: keyed runs admitted per second (first to last admission), against
//!   the unlimited launcher's runs claimed per second (the same number of ad-hoc runs, submitted
//!   in batches of 500 so that the launcher sets the pace);
//! - the delay from a slot of the limit-10 key freeing (a run's final status committed, as its
//!   history records it) to the next run of the key admitted (p50, p99): the admission's own
//!   share, apart from how long a run takes to finish and be recorded;
//! - that no limit was exceeded, from a kubesim watch of every Job (unfinished Jobs per key
//!   after every event);
//! - p99 of `GET /v1/runs/{id}` under that load, against the same during the baseline.
//!
//! Run with `scripts/bench queues [one-key-runs] [other-runs]` (default 10000 1000, the
//! issue's scale). Each row is also printed as `ROW|what|service|baseline|ratio|goal|met`.

#[path = "common.rs"]
mod common;

use common::{percentile, Bench};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vfi_orchestrator::app::App;

const CLIENTS: usize = 16;
const OTHER_KEYS: usize = 100;
const ONE_KEY_LIMIT: usize = 10;

fn flags() -> Vec<&'static str> {
    vec![
        "--max-queued-runs-per-task",
        "0",
        "--launcher-poll-ms",
        "1000",
    ]
}

/// A second replica on the bench's database and kubesim; returns its base URL.
async fn replica(bench: &Bench, shutdown: &CancellationToken) -> String {
    let mut flags = flags();
    flags.extend(["--migrate-on-start", "false"]);
    let args = common::serve_args(&flags);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with((*bench.db.connect_options()).clone())
        .await
        .unwrap();
    let app = App::new(&args, pool, bench.sim.client()).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    tokio::spawn(app.run(shutdown.clone()));
    base
}

fn template(extra_env: Option<(&str, String)>) -> Value {
    let mut env = vec![json!({"name": "KUBESIM_DURATION_MS", "value": "10"})];
    if let Some((name, value)) = extra_env {
        env.push(json!({"name": name, "value": value}));
    }
    json!({"image": "busybox", "env": env})
}

/// The most unfinished Jobs seen at once per concurrency key (task `one`: key `one`; task
/// `many`: its env `K`), over every event of a kubesim watch.
#[derive(Clone, Default)]
struct Peaks(Arc<Mutex<HashMap<String, usize>>>);

/// When kubesim's watch first showed each Job (by name) and first showed it finished: where a
/// run's life goes between its admission and its final status recorded.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, JobTimes>>>);

#[derive(Clone, Copy, Default)]
struct JobTimes {
    created: Option<chrono::DateTime<chrono::Utc>>,
    finished: Option<chrono::DateTime<chrono::Utc>>,
}

fn key_of(job: &Job) -> Option<String> {
    let labels = job.metadata.labels.as_ref()?;
    match labels.get("vfi-orchestrator.io/task")?.as_str() {
        "one" => Some("one".into()),
        "many" => {
            let containers = &job.spec.as_ref()?.template.spec.as_ref()?.containers;
            let env = containers.first()?.env.as_ref()?;
            env.iter()
                .find(|e| e.name == "K")
                .and_then(|e| e.value.clone())
        }
        _ => None,
    }
}

fn unfinished(job: &Job) -> bool {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    !conditions
        .iter()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

async fn watch_peaks(client: kube::Client, peaks: Peaks, seen: Seen, ready: Arc<AtomicBool>) {
    let api: Api<Job> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    // name -> (key, unfinished)
    let mut live: HashMap<String, (String, bool)> = HashMap::new();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(event)) = stream.try_next().await {
        let (job, present) = match event {
            Event::InitDone => {
                ready.store(true, Ordering::SeqCst);
                continue;
            }
            Event::Init => continue,
            Event::InitApply(job) | Event::Apply(job) => (job, true),
            Event::Delete(job) => (job, false),
        };
        let Some(key) = key_of(&job) else { continue };
        let name = job.metadata.name.clone().unwrap_or_default();
        if let Some((old_key, true)) = live.remove(&name) {
            *per_key.entry(old_key).or_default() -= 1;
        }
        if present {
            let open = unfinished(&job);
            {
                let now = chrono::Utc::now();
                let mut seen = seen.0.lock().unwrap();
                let times = seen.entry(name.clone()).or_default();
                times.created.get_or_insert(now);
                if !open {
                    times.finished.get_or_insert(now);
                }
            }
            if open {
                let n = per_key.entry(key.clone()).or_default();
                *n += 1;
                let mut peaks = peaks.0.lock().unwrap();
                let peak = peaks.entry(key.clone()).or_default();
                *peak = (*peak).max(*n);
            }
            live.insert(name, (key, open));
        }
    }
}

/// GETs random runs of `ids` from `clients` tasks until `stop`; the latencies, sorted.
async fn get_load(
    http: reqwest::Client,
    bases: Vec<String>,
    ids: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (http, base, ids, stop) = (
            http.clone(),
            bases[c % bases.len()].clone(),
            ids.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                let id = {
                    let ids = ids.lock().unwrap();
                    if ids.is_empty() {
                        None
                    } else {
                        Some(ids[(i * 7919) % ids.len()].clone())
                    }
                };
                i += 1;
                let Some(id) = id else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let t0 = Instant::now();
                let response = http
                    .get(format!("{base}/v1/runs/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                let _ = response.bytes().await;
                latencies.push(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    all
}

/// Submits `count` runs, `body(i)` each, from CLIENTS tasks spread over the replicas.
async fn submit(
    http: &reqwest::Client,
    bases: &[String],
    path: &str,
    count: usize,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
    ids: Arc<Mutex<Vec<String>>>,
) {
    let body = Arc::new(body);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, url, body, next, ids) = (
            http.clone(),
            format!("{}{path}", bases[c % bases.len()]),
            body.clone(),
            next.clone(),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let response = http.post(&url).json(&body(i)).send().await.unwrap();
                assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
                let run: Value = response.json().await.unwrap();
                ids.lock()
                    .unwrap()
                    .push(run["id"].as_str().unwrap().to_string());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn scalar<T>(db: &sqlx::PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Waits until `sql` (a count) reaches `target`, up to `limit`.
async fn wait_count(db: &sqlx::PgPool, sql: &str, target: i64, limit: Duration) {
    let started = Instant::now();
    loop {
        let n: i64 = scalar(db, sql).await;
        if n >= target {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "only {n} of {target} after {limit:?}: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs that reached their final status per second, from the first admission to the last final
/// status recorded, of the runs `filter` selects: what the machine runs end to end.
async fn completion_rate(db: &sqlx::PgPool, filter: &str) -> f64 {
    let (n, span): (i64, f64) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(extract(epoch FROM max(finished_at) - min(admitted_at))::float8, 0)
         FROM runs WHERE {filter}"
    ))
    .fetch_one(db)
    .await
    .unwrap();
    n as f64 / span.max(0.001)
}

/// Mean and p50 of `values` (ms), for the life-of-a-run line.
fn mean_p50(mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    format!("mean {mean:.0} ms, p50 {:.0} ms", values[values.len() / 2])
}

/// Runs admitted per second from the first admission to the last, of the runs `filter` selects.
async fn admission_rate(db: &sqlx::PgPool, filter: &str) -> (i64, f64) {
    let (n, span): (i64, f64) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(extract(epoch FROM max(admitted_at) - min(admitted_at))::float8, 0)
         FROM runs WHERE {filter}"
    ))
    .fetch_one(db)
    .await
    .unwrap();
    (n, (n - 1).max(0) as f64 / span.max(0.001))
}

fn row(what: &str, service: String, baseline: String, ratio: f64, goal: &str, met: bool) {
    println!(
        "ROW|{what}|{service}|{baseline}|{ratio:.2}x|{goal}|{}",
        if met { "yes" } else { "no" }
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("numbers: one-key-runs other-runs"))
        .collect();
    let one_key = args.first().copied().unwrap_or(10_000);
    let other = args.get(1).copied().unwrap_or(1_000);
    let total = one_key + other;
    let sim = kubesim::SimConfig {
        node_capacity: 2 * total + 10,
        ..kubesim::SimConfig::default()
    };
    let bench = Bench::start(sim, &flags()).await;
    let second = CancellationToken::new();
    let bases = vec![bench.base.clone(), replica(&bench, &second).await];
    let http = reqwest::Client::new();
    let started = Instant::now();

    // Baseline: the launcher without limits, the same number of runs, no key.
    let ids = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let gets = tokio::spawn(get_load(
        http.clone(),
        bases.clone(),
        ids.clone(),
        stop.clone(),
    ));
    // In batches, so that the launcher, not the submission, sets the pace.
    for (i, chunk) in (0..total).collect::<Vec<_>>().chunks(500).enumerate() {
        let runs: Vec<Value> = chunk
            .iter()
            .map(|_| json!({"template": template(None)}))
            .collect();
        let response = http
            .post(format!("{}/v1/runs/batch", bases[i % bases.len()]))
            .json(&json!({ "runs": runs }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.lock().unwrap().extend(
            body["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
    }
    wait_count(
        &bench.db,
        "SELECT count(*) FROM runs WHERE status = 'succeeded'",
        total as i64,
        Duration::from_secs(1800),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let baseline_gets = gets.await.unwrap();
    let (_, baseline_rate) = admission_rate(&bench.db, "queue_key IS NULL").await;
    let baseline_done = completion_rate(&bench.db, "queue_key IS NULL").await;
    eprintln!(
        "baseline: {total} runs without a key, launcher {baseline_rate:.0} runs/s, {baseline_done:.0} runs/s completed ({:.0} s so far)",
        started.elapsed().as_secs_f64()
    );

    // The queues.
    for (task, concurrency) in [
        ("one", json!({"limit": ONE_KEY_LIMIT})),
        ("many", json!({"limit": 1, "key": "{{env.K}}"})),
    ] {
        let response = http
            .put(format!("{}/v1/tasks/{task}", bases[0]))
            .json(&json!({"template": template(None), "concurrency": concurrency}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    let peaks = Peaks::default();
    let seen = Seen::default();
    let ready = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(watch_peaks(
        bench.sim.client(),
        peaks.clone(),
        seen.clone(),
        ready.clone(),
    ));
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let gets = tokio::spawn(get_load(
        http.clone(),
        bases.clone(),
        ids.clone(),
        stop.clone(),
    ));
    let phase = Instant::now();
    let many = submit(
        &http,
        &bases,
        "/v1/tasks/many/runs",
        other,
        |i| json!({"env": [{"name": "K", "value": format!("k{}", i % OTHER_KEYS)}]}),
        ids.clone(),
    );
    let one = submit(
        &http,
        &bases,
        "/v1/tasks/one/runs",
        one_key,
        |_| json!({}),
        ids.clone(),
    );
    tokio::join!(many, one);
    eprintln!(
        "queued {total} keyed runs in {:.1} s",
        phase.elapsed().as_secs_f64()
    );
    wait_count(
        &bench.db,
        "SELECT count(*) FROM runs WHERE status = 'succeeded' AND queue_key IS NOT NULL",
        total as i64,
        Duration::from_secs(3600),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let queue_gets = gets.await.unwrap();
    // The last outcomes reach kubesim's watch a moment later than the database.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.abort();

    let (_, keyed_rate) = admission_rate(&bench.db, "queue_key IS NOT NULL").await;
    let (_, one_rate) = admission_rate(&bench.db, "queue_key = 'one'").await;
    let keyed_done = completion_rate(&bench.db, "queue_key IS NOT NULL").await;
    let (slot_p50, slot_p99): (f64, f64) = sqlx::query_as(&format!(
        "WITH f AS (SELECT e.at AS finished_at, row_number() OVER (ORDER BY e.at) AS n
                    FROM runs r JOIN run_events e ON e.run_id = r.id
                    WHERE r.queue_key = 'one' AND e.kind = 'status'
                      AND e.status IN ('succeeded', 'failed', 'cancelled', 'lost')),
              a AS (SELECT admitted_at, row_number() OVER (ORDER BY admitted_at) AS n
                    FROM runs WHERE queue_key = 'one')
         SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
         FROM (SELECT extract(epoch FROM a.admitted_at - f.finished_at)::float8 * 1000 AS d
               FROM a JOIN f ON a.n = f.n + {ONE_KEY_LIMIT}) x"
    ))
    .fetch_one(&bench.db)
    .await
    .unwrap();
    // Where a run of the limit-10 key spends its slot: mean ms from admission to each status.
    let phases: Vec<(String, f64)> = sqlx::query_as(
        "SELECT e.status, avg(extract(epoch FROM e.at - r.admitted_at) * 1000)::float8
         FROM runs r JOIN run_events e ON e.run_id = r.id
         WHERE r.queue_key = 'one' AND e.kind = 'status' AND e.status <> 'creating'
         GROUP BY e.status ORDER BY 2",
    )
    .fetch_all(&bench.db)
    .await
    .unwrap();
    eprintln!("a slot of key one, mean ms from admission: {phases:?}");
    // Whether the queue held runs at all: with submissions slower than admissions the key's
    // queue runs dry and the admission rate measures the submission.
    let (waited, dry): (f64, i64) = sqlx::query_as(
        "SELECT coalesce(avg(extract(epoch FROM admitted_at - created_at) * 1000), 0)::float8,
                count(*) FILTER (WHERE admitted_at - created_at < interval '50 ms')
         FROM runs WHERE queue_key = 'one'",
    )
    .fetch_one(&bench.db)
    .await
    .unwrap();
    eprintln!("runs of key one waited {waited:.0} ms on average from submission to admission; {dry} of {one_key} were admitted within 50 ms of their submission (the queue ran dry)");
    // The same slots against kubesim's watch: admission -> Job shown -> Job shown finished ->
    // the run's final status committed (its history entry).
    let lives: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT r.job_name, r.admitted_at, max(e.at)
             FROM runs r JOIN run_events e ON e.run_id = r.id
             WHERE r.queue_key = 'one' AND e.kind = 'status'
               AND e.status IN ('succeeded', 'failed', 'cancelled', 'lost')
             GROUP BY r.id",
    )
    .fetch_all(&bench.db)
    .await
    .unwrap();
    let (mut to_job, mut job_ran, mut to_record) = (Vec::new(), Vec::new(), Vec::new());
    {
        let seen = seen.0.lock().unwrap();
        let ms = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        for (job, admitted, recorded) in &lives {
            let Some(times) = seen.get(job) else { continue };
            if let (Some(created), Some(finished)) = (times.created, times.finished) {
                to_job.push(ms(*admitted, created));
                job_ran.push(ms(created, finished));
                to_record.push(ms(finished, *recorded));
            }
        }
    }
    eprintln!(
        "a slot of key one ({} runs) in kubesim's watch: admission -> Job shown {}; Job shown -> shown finished {}; shown finished -> final status committed {}",
        to_job.len(),
        mean_p50(to_job),
        mean_p50(job_ran),
        mean_p50(to_record)
    );
    let peaks = peaks.0.lock().unwrap().clone();
    let one_peak = peaks.get("one").copied().unwrap_or(0);
    let other_peak = peaks
        .iter()
        .filter(|(k, _)| k.as_str() != "one")
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    let keys_seen = peaks.len();
    eprintln!(
        "keyed: {keyed_rate:.0} runs/s admitted (key one alone {one_rate:.0}/s); slot freed -> next admitted p50 {slot_p50:.1} ms, p99 {slot_p99:.1} ms; peaks: one {one_peak}, others max {other_peak} over {} keys; {:.0} s in all",
        keys_seen.saturating_sub(1),
        started.elapsed().as_secs_f64()
    );

    let scale = format!("{one_key} runs on 1 key (limit {ONE_KEY_LIMIT}) + {other} on {OTHER_KEYS} keys (limit 1), 2 replicas");
    let ratio = keyed_rate / baseline_rate;
    row(
        &format!("Keyed admission, {scale}"),
        format!("{keyed_rate:.0} runs/s admitted (limit-10 key alone {one_rate:.0}/s; slot freed -> next admitted p50 {slot_p50:.0} ms, p99 {slot_p99:.0} ms)"),
        format!("launcher without limits, same run: {baseline_rate:.0} runs/s"),
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    );
    // Beside the row: what the machine completes end to end. A keyed run holds its slot
    // until its final status is recorded, so keyed admission can go no faster than runs finish;
    // the unlimited runs, measured to their final status in the same run, are that capacity.
    let ratio = keyed_done / baseline_done;
    row(
        &format!("Keyed runs completed (admission to final status), {scale}"),
        format!("{keyed_done:.0} runs/s"),
        format!("the same number of runs without a key, to their final status, same run: {baseline_done:.0} runs/s"),
        ratio,
        "(context for the row above)",
        true,
    );
    let held = one_peak <= ONE_KEY_LIMIT && other_peak <= 1;
    row(
        "Limits in kubesim's watch (unfinished Jobs per key, after every event)",
        format!("at most {one_peak} on the limit-10 key, {other_peak} on any limit-1 key ({} keys seen)", keys_seen.saturating_sub(1)),
        "limits 10 and 1".into(),
        one_peak as f64 / ONE_KEY_LIMIT as f64,
        "never exceeded",
        held,
    );
    let (service_p99, baseline_p99) = (
        percentile(&queue_gets, 0.99),
        percentile(&baseline_gets, 0.99),
    );
    let ratio = service_p99.as_secs_f64() / baseline_p99.as_secs_f64();
    row(
        "`GET /v1/runs/{id}` p99 while the queues drain, 4 clients",
        format!(
            "{:.1} ms ({} requests)",
            service_p99.as_secs_f64() * 1000.0,
            queue_gets.len()
        ),
        format!(
            "{:.1} ms while the same number of runs without a key launch ({} requests)",
            baseline_p99.as_secs_f64() * 1000.0,
            baseline_gets.len()
        ),
        ratio,
        "(no goal)",
        true,
    );
    assert!(held, "a concurrency limit was exceeded: {peaks:?}");
    second.cancel();
    bench.stop().await;
}
