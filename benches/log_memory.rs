//! Memory while a pod prints 200 MB: the service (with kubesim in the same process, which
//! generates the log on the fly and stores none of it) archives it under the default 16 MiB cap,
//! then streams the archived log to a client. Prints the process's resident memory before, its
//! peak during capture and during streaming, and the archive's size. Run with
//! `scripts/bench log_memory [megabytes]`.

#[path = "common.rs"]
mod common;

use common::Bench;
use futures::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let megabytes: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let bytes = megabytes * 1_000_000;
    // Without rotation: the pod's whole output must reach the service for this measurement
    // (a kubelet rotating at 10 MiB would leave a late reader only the current file).
    let sim = kubesim::SimConfig {
        log_rotate_bytes: None,
        ..Default::default()
    };
    let bench = Bench::start(sim, &[]).await;
    let baseline = common::rss_kib(std::process::id());

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(common::rss_kib(std::process::id()), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let started = Instant::now();
    let template =
        json!({"image": "x", "env": [{"name": "KUBESIM_LOG_BYTES", "value": bytes.to_string()}]});
    let id = bench.submit(template).await;
    bench.wait_archived(&id, Duration::from_secs(900)).await;
    let capture = started.elapsed();
    let capture_peak = peak.swap(common::rss_kib(std::process::id()), Ordering::Relaxed);
    let (stored, dropped): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(length(c.data)), 0)::bigint, max(l.dropped_bytes) FROM pod_logs l
         JOIN log_chunks c USING (run_id, pod_name) WHERE l.run_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&bench.db)
    .await
    .unwrap();

    let streamed_started = Instant::now();
    let response = bench
        .http
        .get(format!("{}/v1/runs/{id}/logs", bench.base))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut served = 0u64;
    while let Some(chunk) = body.next().await {
        served += chunk.unwrap().len() as u64;
    }
    let streaming = streamed_started.elapsed();
    let stream_peak = peak.load(Ordering::Relaxed);
    sampler.abort();

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "a pod printing {megabytes} MB: archived in {:.1} s; stored {:.1} MiB (deflated) with {:.1} MB dropped between head and tail; \
         served {:.1} MB from the archive in {:.2} s",
        capture.as_secs_f64(),
        stored as f64 / 1048576.0,
        dropped as f64 / 1e6,
        served as f64 / 1e6,
        streaming.as_secs_f64(),
    );
    println!(
        "resident memory (service + kubesim in one process): {:.0} MiB before, peak {:.0} MiB while capturing, peak {:.0} MiB while streaming",
        mib(baseline), mib(capture_peak), mib(stream_peak),
    );
    bench.stop().await;
}
