//! Logs through replica crashes (issue 12's benchmark): N runs each printing L numbered lines
//! W bytes wide in 16-KiB pieces every 100 ms, kubesim rotating logs at R bytes, two replicas
//! of the service as separate processes. First a baseline (no kills), then the same with one
//! replica killed with SIGKILL every K seconds (and started again). Prints, for each phase:
//! the share of logs archived byte-exact (and of the others, how many say what is missing),
//! the longest time a pod held the log finalizer after its container ended, and the peak
//! resident memory of each replica process.
//!
//! `scripts/bench log_survival [runs] [lines] [rotate-bytes] [kill-every-secs] [line-bytes]`
//! (defaults: the 1000 10000 1048576 5, and 256-byte lines so that each log is
//! 2.4 MiB and really rotates twice at 1 MiB).

#[path = "common.rs"]
mod common;

use common::rss_kib;

use futures::StreamExt;
use kubesim::logs::generated_bytes_of_width;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

const FINALIZER: &str = "vfi-orchestrator.io/log-capture";

struct Replica {
    child: Child,
    port: u16,
    peak_rss_kib: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(db_url: &str, kubeconfig: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"))
        .args(["serve", "--auth-disabled", "--rate-limit-per-second", "0"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--launch-lease-secs", "5", "--log-flush-ms", "250"])
        .env("DATABASE_URL", db_url)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the service binary starts")
}

struct Figures {
    exact: usize,
    marked: usize,
    unmarked: usize,
    longest_hold: Duration,
    longest_capture: f64,
    elapsed: Duration,
    peak_rss_mib: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    admin: &PgConnectOptions,
    url: &str,
    runs: usize,
    lines: u64,
    width: u64,
    rotate: u64,
    kill_every: Option<Duration>,
) -> Figures {
    let name = format!("vfi_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut db_url = reqwest::Url::parse(url).unwrap();
    db_url.set_path(&name);
    let db = PgPool::connect_with(admin.clone().database(&name))
        .await
        .unwrap();
    let sim = kubesim::KubeSim::start(kubesim::SimConfig {
        log_rotate_bytes: Some(rotate),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("vfi-bench-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let mut replicas: Vec<Replica> = (0..2)
        .map(|_| {
            let port = free_port();
            Replica {
                child: spawn(db_url.as_str(), &kubeconfig, port),
                port,
                peak_rss_kib: 0,
            }
        })
        .collect();
    let http = reqwest::Client::new();
    let base = |r: &Replica| format!("http://127.0.0.1:{}", r.port);
    // Ready (migrated) before submitting.
    loop {
        let ok = http
            .get(format!("{}/readyz", base(&replicas[0])))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bytes = lines * width;
    let template = json!({"image": "busybox", "env": [
        {"name": "KUBESIM_LOG_BYTES", "value": bytes.to_string()},
        {"name": "KUBESIM_LINE_BYTES", "value": width.to_string()},
        {"name": "KUBESIM_LOG_CHUNK_BYTES", "value": "16384"},
        {"name": "KUBESIM_LOG_INTERVAL_MS", "value": "100"},
    ]});
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..runs {
        let response = http
            .post(format!("{}/v1/runs", base(&replicas[0])))
            .json(&json!({ "template": template }))
            .send()
            .await
            .unwrap();
        let run: serde_json::Value = response.json().await.unwrap();
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(sim.client());
    let mut ended_at: HashMap<String, Instant> = HashMap::new();
    let mut longest_hold = Duration::ZERO;
    let mut next_kill = kill_every.map(|k| Instant::now() + k);
    let mut victim = 0;
    loop {
        for r in &mut replicas {
            r.peak_rss_kib = r.peak_rss_kib.max(rss_kib(r.child.id()));
        }
        if let Some(at) = next_kill.filter(|at| Instant::now() >= *at) {
            let r = &mut replicas[victim];
            let _ = r.child.kill();
            let _ = r.child.wait();
            r.child = spawn(db_url.as_str(), &kubeconfig, r.port);
            victim = 1 - victim;
            next_kill = Some(at + kill_every.unwrap());
        }
        // The log finalizer's hold: from the container's end until the finalizer goes.
        let list = pods
            .list(&kube::api::ListParams::default().labels("vfi-orchestrator.io/installation"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for pod in &list {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ended = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            let held = pod
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FINALIZER);
            if ended {
                let since = *ended_at.entry(name).or_insert_with(Instant::now);
                if held {
                    longest_hold = longest_hold.max(since.elapsed());
                }
            }
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'lost'))
                  + (SELECT count(*) FROM pod_logs WHERE state = 'capturing')",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let held = list.iter().any(|p| {
            p.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FINALIZER)
        });
        if open == 0 && !held && started.elapsed() > Duration::from_secs(2) {
            break;
        }
        // A stuck phase still reports what it has (and says so) rather than hanging.
        let limit = std::env::var("LOG_SURVIVAL_PHASE_LIMIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1800);
        if started.elapsed() > Duration::from_secs(limit) {
            println!("phase stopped after {limit} s with {open} runs or captures still open");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    // The finalizer goes right after the capture completes: the longest time from a container's
    // end (kubelet time, whole seconds) to its capture's completion.
    let longest_capture: f64 = sqlx::query_scalar(
        "SELECT coalesce(max(extract(epoch FROM l.completed_at - p.finished_at)), 0)::float8
         FROM pod_logs l JOIN run_pods p ON p.run_id = l.run_id AND p.name = l.pod_name
         WHERE p.finished_at IS NOT NULL",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let expected = String::from_utf8(generated_bytes_of_width(0, bytes, width)).unwrap();
    let (mut exact, mut marked, mut unmarked) = (0, 0, 0);
    // Read back through the service, a few at a time (each log is megabytes).
    let url_of = |id: &String| format!("{}/v1/runs/{id}/logs", base(&replicas[0]));
    let mut answers = futures::stream::iter(ids.iter().map(|id| {
        let (http, url) = (http.clone(), url_of(id));
        async move {
            for _ in 0..20 {
                if let Ok(answer) = http.get(&url).send().await {
                    if let Ok(t) = answer.text().await {
                        return t;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            String::new()
        }
    }))
    .buffered(4);
    for id in &ids {
        let text = answers.next().await.unwrap_or_default();
        if std::env::var("BENCH_DEBUG").is_ok() && text != expected {
            let first = text.lines().next().unwrap_or_default().to_string();
            let last = text.lines().last().unwrap_or_default().to_string();
            eprintln!(
                "{id}: {} lines, first {first:?}, last {last:?}",
                text.lines().count()
            );
        }
        if text == expected {
            exact += 1;
        } else if text.contains("[vfi-orchestrator]") {
            marked += 1;
        } else {
            unmarked += 1;
        }
    }
    drop(answers);
    for r in &mut replicas {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    sim.shutdown().await;
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    Figures {
        exact,
        marked,
        unmarked,
        longest_hold,
        longest_capture,
        elapsed,
        peak_rss_mib: replicas
            .iter()
            .map(|r| r.peak_rss_kib as f64 / 1024.0)
            .collect(),
    }
}

fn report(what: &str, runs: usize, f: &Figures) {
    println!(
        "{what}: {runs} runs in {:.1} s; byte-exact {} ({:.1} %), gaps marked {}, unmarked {}; longest log-finalizer hold seen after a container ended {:.1} s, longest from a container's end to its capture's completion {:.1} s; peak RSS per replica {:?} MiB",
        f.elapsed.as_secs_f64(),
        f.exact,
        100.0 * f.exact as f64 / runs as f64,
        f.marked,
        f.unmarked,
        f.longest_hold.as_secs_f64(),
        f.longest_capture,
        f.peak_rss_mib
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>(),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let runs = arg(0, 1000) as usize;
    let lines = arg(1, 10_000);
    let rotate = arg(2, 1024 * 1024);
    let kill_every = Duration::from_secs(arg(3, 5));
    let width = arg(4, 256).max(kubesim::logs::GENERATED_LINE);
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench sets it)");
    let admin = PgConnectOptions::from_str(&url).unwrap();
    let each = lines * width;
    println!(
        "{runs} runs x {lines} lines of {width} bytes ({:.2} MiB each, so kubesim rotates each log {} times), rotation at {} KiB, two replicas",
        each as f64 / (1024.0 * 1024.0),
        (each.saturating_sub(1)) / rotate,
        rotate / 1024
    );
    let baseline = phase(&admin, &url, runs, lines, width, rotate, None).await;
    report("baseline (no kills)", runs, &baseline);
    let killed = phase(&admin, &url, runs, lines, width, rotate, Some(kill_every)).await;
    report(
        &format!("kill -9 of one replica every {} s", kill_every.as_secs()),
        runs,
        &killed,
    );
}
