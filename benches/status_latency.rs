//! How fast a pod's end reaches API clients: with 1,000 runs active, a pod is ended in kubesim
//! (evicted) and the run is read through the API until it shows `failed`. Prints p50/p90/p99/max
//! of that delay over the probes. Run with `scripts/bench status_latency [active] [probes]`.

#[path = "common.rs"]
mod common;

use common::{percentile, Bench};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let active: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let probes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let sim = kubesim::SimConfig {
        node_capacity: active + 10,
        ..Default::default()
    };
    let bench = Bench::start(sim, &["--launch-concurrency", "32"]).await;

    // `active` long-running runs; eviction fails a pod, and with backoffLimit 0 its run.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(active);
    for _ in 0..active {
        let template = json!({"image": "x", "backoffLimit": 0,
            "env": [{"name": "KUBESIM_DURATION_MS", "value": "3600000"}]});
        let run: Value = bench
            .http
            .post(format!("{}/v1/runs", bench.base))
            .json(&json!({"template": template}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'running'")
            .fetch_one(&bench.db)
            .await
            .unwrap();
        if running as usize == active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{active} runs submitted and running in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let pods: Api<Pod> = Api::namespaced(bench.sim.client(), "default");
    let faults = bench.sim.faults();
    let mut samples = Vec::with_capacity(probes);
    for id in ids.iter().take(probes) {
        let pod = pods
            .list(&ListParams::default().labels(&format!("vfi-orchestrator.io/run-id={id}")))
            .await
            .unwrap()
            .items
            .remove(0);
        let url = format!("{}/v1/runs/{id}", bench.base);
        let t0 = Instant::now();
        faults.evict_pod("default", pod.metadata.name.as_deref().unwrap());
        loop {
            let run: Value = bench
                .http
                .get(&url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if run["status"] == "failed" {
                samples.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "run {id} never failed: {run}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "status latency, pod ended -> run readable as failed, {} probes with {active} runs active: \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
    bench.stop().await;
}
