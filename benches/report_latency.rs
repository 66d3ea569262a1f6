//! Issue 17's benchmark: 1,000 webhook runs (each a push of its own commit) finishing within a
//! few seconds, reported to a fake GitHub that answers every status in 50 ms. Prints the time
//! from each run's final status (its history entry) to the host's answer accepting that state
//! (p50/p99/max), checks every final state was delivered and that no commit got a `pending`
//! after its final state, and how the outbox drained. Run with
//! `scripts/bench report_latency [runs] [host-ms]`.

#[path = "common.rs"]
mod common;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use common::{percentile, Bench};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfi_orchestrator::domain::webhook::sign;

const SECRET: &str = "a-bench-secret-of-some-length";

/// (sha, state, when the host answered).
type Seen = Arc<Mutex<Vec<(String, String, DateTime<Utc>)>>>;

async fn fake_host(delay: Duration) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
        let log = log.clone();
        async move {
            tokio::time::sleep(delay).await;
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let sha = uri.path().rsplit('/').next().unwrap_or("").to_string();
            let state = body["state"].as_str().unwrap_or("").to_string();
            log.lock().unwrap().push((sha, state, Utc::now()));
            (axum::http::StatusCode::CREATED, "{}")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let host_ms: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let (host, seen) = fake_host(Duration::from_millis(host_ms)).await;
    let sim = kubesim::SimConfig {
        node_capacity: runs + 10,
        ..Default::default()
    };
    let bench = Bench::start(
        sim,
        &[
            "--launch-concurrency",
            "32",
            "--max-queued-runs-per-task",
            "0",
        ],
    )
    .await;
    let put = |path: String, body: Value| {
        let request = bench.http.put(format!("{}{path}", bench.base)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<Value>().await.unwrap()
        }
    };
    put(
        "/v1/tasks/build".into(),
        json!({"template": {"image": "x", "backoffLimit": 0,
            "env": [{"name": "KUBESIM_DURATION_MS", "value": "500"}]}}),
    )
    .await;
    let trigger = put(
        "/v1/tasks/build/triggers/github".into(),
        json!({"provider": "github", "secret": SECRET,
               "report": {"token": "bench-token", "apiBaseUrl": host}}),
    )
    .await;
    let hook = format!("{}{}", bench.base, trigger["hookPath"].as_str().unwrap());

    // One push per commit, 32 deliveries at a time.
    let started = Instant::now();
    // Not 0: the all-zero SHA is a deleted branch.
    let shas: Vec<String> = (1..=runs).map(|i| format!("{i:040x}")).collect();
    let http = bench.http.clone();
    futures::stream::iter(shas.iter().enumerate())
        .map(|(i, sha)| {
            let (http, hook) = (http.clone(), hook.clone());
            async move {
                let body = serde_json::to_vec(&json!({
                    "ref": "refs/heads/main", "after": sha,
                    "repository": {"full_name": "bench/repo",
                                   "clone_url": "https://example.com/bench/repo.git"},
                    "sender": {"login": "bench"}
                }))
                .unwrap();
                let response = http
                    .post(&hook)
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", format!("bench-{i}"))
                    .header(
                        "x-hub-signature-256",
                        format!("sha256={}", sign(SECRET, &body)),
                    )
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "{runs} webhook runs queued in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Until every commit's final state is answered and nothing is left in the outbox.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let finals = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, state, _)| state == "success")
            .count();
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_keys WHERE pending_id IS NOT NULL")
                .fetch_one(&bench.db)
                .await
                .unwrap();
        if finals >= runs && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{finals} of {runs} final states delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = started.elapsed();

    // Each run's final status, from its history.
    let finished: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT s.sha, e.at FROM run_events e JOIN run_sources s ON s.run_id = e.run_id
         WHERE e.kind = 'status' AND e.status = 'succeeded'",
    )
    .fetch_all(&bench.db)
    .await
    .unwrap();
    assert_eq!(finished.len(), runs, "every run succeeded");
    let seen = seen.lock().unwrap().clone();
    let mut by_sha: HashMap<&str, Vec<(&str, DateTime<Utc>)>> = HashMap::new();
    for (sha, state, at) in &seen {
        by_sha.entry(sha).or_default().push((state, *at));
    }
    let mut out_of_order = 0;
    let mut duplicates = 0;
    let mut latencies = Vec::with_capacity(runs);
    for (sha, final_at) in &finished {
        let states = &by_sha[sha.as_str()];
        let first_final = states.iter().position(|(s, _)| *s == "success").unwrap();
        out_of_order += states[first_final..]
            .iter()
            .filter(|(s, _)| *s == "pending")
            .count();
        duplicates += states.iter().filter(|(s, _)| *s == "success").count() - 1;
        latencies.push(
            (states[first_final].1 - *final_at)
                .to_std()
                .unwrap_or_default(),
        );
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        *latencies.last().unwrap(),
    );
    let requests = seen.len();
    println!(
        "all {runs} final states delivered; outbox drained {:.1} s after the first push; \
         {requests} status calls ({:.2} per run; the rest coalesced), {out_of_order} pending \
         after a final state, {duplicates} duplicate final states",
        drained.as_secs_f64(),
        requests as f64 / runs as f64
    );
    println!(
        "final status -> host answered: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (host answers in {host_ms} ms)",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    println!(
        "ROW|report delivery p99, {runs} webhook runs (final status to host's answer)|{:.2} s|{:.2} s (the host's own answer)|{:.0}x|< 2 s, none out of order|{}",
        p99.as_secs_f64(),
        host_ms as f64 / 1000.0,
        p99.as_secs_f64() / (host_ms as f64 / 1000.0),
        if p99 < Duration::from_secs(2) && out_of_order == 0 && duplicates == 0 { "yes" } else { "no" }
    );
    assert_eq!(out_of_order, 0, "no pending after a final state");
    bench.stop().await;
}
