//! Logs that survive what a cluster and the service's own replicas do (issue 12): replicas
//! killed or stopped mid-capture, pods deleted while nobody captured them, API interruptions,
//! stalled streams. Every capture finishes, every finalizer goes, and every log is exact or
//! says what is missing.

mod common;

use common::service::{
    eventually, kubesim, logs, numbered_lines, pods_of, scripted, KubeSim, RunnerKind, Service,
};
use serde_json::json;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;
use vfi_orchestrator::domain::PodRecord;
use vfi_orchestrator::store::logs::{self, Append};

const WAIT: Duration = Duration::from_secs(60);
const LOG_FINALIZER: &str = "vfi-orchestrator.io/log-capture";

/// (state, lines) of every capture of these runs.
async fn captures(db: &PgPool, ids: &[String]) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT state, lines FROM pod_logs WHERE run_id::text = ANY($1) ORDER BY run_id::text",
    )
    .bind(ids)
    .fetch_all(db)
    .await
    .unwrap()
}

async fn all_capturing_with_lines(db: &PgPool, ids: &[String]) -> bool {
    let captures = captures(db, ids).await;
    captures.len() == ids.len()
        && captures
            .iter()
            .all(|(state, lines)| state == "capturing" && *lines > 0)
}

async fn all_complete(db: &PgPool, ids: &[String]) -> bool {
    let captures = captures(db, ids).await;
    captures.len() == ids.len() && captures.iter().all(|(state, _)| state == "complete")
}

/// No pod of these runs still carries the log finalizer (pods deleted by a TTL are gone).
async fn no_log_finalizers(client: &kube::Client, ids: &[String]) -> bool {
    for id in ids {
        for pod in pods_of(client, id).await {
            if pod
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == LOG_FINALIZER)
            {
                return false;
            }
        }
    }
    true
}

async fn all_pods_ended(client: &kube::Client, ids: &[String]) -> bool {
    for id in ids {
        let pods = pods_of(client, id).await;
        let ended = pods.iter().all(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        });
        if pods.is_empty() || !ended {
            return false;
        }
    }
    true
}

/// Starts a run printing `lines` numbered lines, one per `interval_ms`, and waits until its
/// capture has stored some. Returns its id, also as a list.
async fn print_and_wait_for_capture(
    service: &Service,
    lines: usize,
    interval_ms: u64,
) -> (String, Vec<String>) {
    let (lines, interval) = (lines.to_string(), interval_ms.to_string());
    let env = [
        ("KUBESIM_LOG_LINES", lines.as_str()),
        ("KUBESIM_LOG_INTERVAL_MS", &interval),
    ];
    submit_and_wait_for_capture(service, &env, json!({})).await
}

/// Starts a scripted run and waits until its capture has stored some lines.
async fn submit_and_wait_for_capture(
    service: &Service,
    env: &[(&str, &str)],
    extra: serde_json::Value,
) -> (String, Vec<String>) {
    let id = service.submit(scripted(env, extra)).await;
    let ids = vec![id.clone()];
    eventually("the capture to be under way", WAIT, || {
        all_capturing_with_lines(&service.db, &ids)
    })
    .await;
    (id, ids)
}

/// The service as a separate process (the release path: `vfi-orchestrator serve`), so it can
/// be killed with SIGKILL like a crashed replica.
struct Replica {
    child: Child,
    dir: PathBuf,
}

impl Replica {
    async fn start(db: &PgPool, sim: &KubeSim, extra: &[&str]) -> Replica {
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(db)
            .await
            .unwrap();
        let mut url = reqwest::Url::parse(
            &std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests"),
        )
        .unwrap();
        url.set_path(&name);
        let dir = std::env::temp_dir().join(format!("vfi-replica-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"))
            .args(["serve", "--listen", "127.0.0.1:0", "--auth-disabled"])
            .args(extra)
            .env("DATABASE_URL", url.as_str())
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("the binary starts");
        Replica { child, dir }
    }

    /// SIGKILL: no shutdown path runs.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs that print 300 numbered lines over about 3 s; every other one is deleted by a TTL of 0
/// as soon as the service lets go of it.
async fn submit_printers(app: &common::TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let extra = if i % 2 == 0 {
            json!({"ttlSecondsAfterFinished": 0})
        } else {
            json!({})
        };
        let template = scripted(
            &[
                ("KUBESIM_LOG_LINES", "300"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
            extra,
        );
        ids.push(
            app.submit(&template).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn captures_of_a_replica_killed_with_sigkill_complete_within_the_lease(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let lease = Duration::from_secs(5);
    let mut crashed = Replica::start(&db, &sim, &["--launch-lease-secs", "5"]).await;
    let api_only = common::TestApp::spawn(db.clone()).await;
    let ids = submit_printers(&api_only, 10).await;
    eventually("every capture to be under way", WAIT, || {
        all_capturing_with_lines(&db, &ids)
    })
    .await;

    crashed.kill_9();
    // The pods end while no replica runs; their captures stay claimed by the dead one.
    eventually("every pod to end", WAIT, || all_pods_ended(&client, &ids)).await;
    assert!(!all_complete(&db, &ids).await);

    let survivor = Service::start(db.clone(), client.clone(), &["--launch-lease-secs", "5"]).await;
    let up = Instant::now();
    let bound = lease + Duration::from_secs(5);
    assert_handed_over(&db, &client, &survivor, &ids, up, bound).await;
}

/// Within `bound` of `since`, every capture of `ids` completed and every log finalizer is gone,
/// and `reader` serves each run's 300 lines exactly.
async fn assert_handed_over(
    db: &PgPool,
    client: &kube::Client,
    reader: &Service,
    ids: &[String],
    since: Instant,
    bound: Duration,
) {
    eventually("every capture to complete", bound, || all_complete(db, ids)).await;
    eventually("every log finalizer to be removed", bound, || {
        no_log_finalizers(client, ids)
    })
    .await;
    assert!(since.elapsed() <= bound, "took {:?}", since.elapsed());
    for id in ids {
        assert_eq!(logs(reader, id, "").await, numbered_lines(300), "run {id}");
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_gracefully_stopped_replica_hands_its_captures_to_the_other_at_once(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    // The default 30-s lease: only handing the leases back makes the bound below.
    let stopping = Service::start(db.clone(), client.clone(), &[]).await;
    let api_only = common::TestApp::spawn(db.clone()).await;
    let ids = submit_printers(&api_only, 6).await;
    eventually("every capture to be under way", WAIT, || {
        all_capturing_with_lines(&db, &ids)
    })
    .await;
    let other = Service::start(db.clone(), client.clone(), &[]).await;

    stopping.stop().await;
    let stopped = Instant::now();
    let bound = Duration::from_secs(10);
    assert_handed_over(&db, &client, &other, &ids, stopped, bound).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_orphaned_archive_whose_pod_is_gone_is_served_at_once_and_finished(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let api_only = common::TestApp::spawn(db.clone()).await;
    let id: Uuid = api_only.submit(&scripted(&[], json!({}))).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // A replica archived all 1,000 lines, then died before completing; the pod was deleted
    // meanwhile (its finalizer removed by hand), and the tracker saw it go.
    let pod = "run-1-gone";
    vfi_orchestrator::store::pods::upsert(
        &db,
        id,
        &PodRecord {
            name: pod.into(),
            uid: "uid-1".into(),
            completion_index: None,
            node_name: None,
            phase: "Succeeded".into(),
            exit_code: Some(0),
            reason: Some("Completed".into()),
            message: None,
            restarts: 0,
            created_at: None,
            started_at: None,
            finished_at: None,
            deleted: true,
        },
    )
    .await
    .unwrap();
    logs::claim(&db, id, pod, "dead-replica", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let text: String = (1..=1000)
        .map(|i| format!("2026-12-03T08:00:00.{i:09}Z line {i}\n"))
        .collect();
    let mut tx = db.begin().await.unwrap();
    assert!(logs::append(
        &mut tx,
        id,
        pod,
        Append {
            first_line: 0,
            line_count: 1000,
            data: text.as_bytes(),
            cap_bytes: 16 << 20,
            owner: "dead-replica",
            lease: Duration::from_secs(1),
        },
    )
    .await
    .unwrap());
    tx.commit().await.unwrap();

    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let asked = Instant::now();
    let only = format!("?pod={pod}");
    let served = logs(&service, &id.to_string(), &only).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "served at once, not after a wait: {:?}",
        asked.elapsed()
    );
    let (lines, note) = served.split_at(numbered_lines(1000).len());
    assert!(
        lines == numbered_lines(1000),
        "every archived line: {served:.200}"
    );
    assert!(note.starts_with("[vfi-orchestrator] "), "{note:?}");

    eventually("the sweep to finish the capture", WAIT, || {
        let db = db.clone();
        async move {
            logs::get(&db, id, pod)
                .await
                .unwrap()
                .is_some_and(|l| l.state != "capturing")
        }
    })
    .await;
    let finished = logs::get(&db, id, pod).await.unwrap().unwrap();
    assert_eq!(finished.state, "incomplete");
    assert!(
        finished.detail.as_deref().unwrap().contains("1000 lines"),
        "{:?}",
        finished.detail
    );
    let served = logs(&service, &id.to_string(), &only).await;
    assert!(served.starts_with(&numbered_lines(1000)));
    assert!(served.contains("is incomplete"), "{served}");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn interruptions_further_apart_than_the_capture_timeout_lose_nothing(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let faults = sim.faults();
    let client = sim.client();
    let service = Service::start(
        db.clone(),
        client.clone(),
        &["--log-capture-timeout-secs", "2"],
    )
    .await;
    // 40 lines over 10 s.
    let (id, ids) = print_and_wait_for_capture(&service, 40, 250).await;
    // Two interruptions of 1.5 s (shorter than the timeout), 3.5 s apart (longer than it).
    for _ in 0..2 {
        cut_during_outage(&faults, Duration::from_millis(1500), || async {}).await;
        assert!(
            !no_log_finalizers(&client, &ids).await || all_pods_ended(&client, &ids).await,
            "the finalizer stays while the pod runs"
        );
        tokio::time::sleep(Duration::from_millis(2000)).await;
    }
    service.wait_for(&id, "succeeded", WAIT).await;
    eventually("the capture to complete", WAIT, || all_complete(&db, &ids)).await;
    assert_eq!(logs(&service, &id, "").await, numbered_lines(40));
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_stalled_log_stream_is_reopened_within_the_progress_timeout(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let faults = sim.faults();
    let service = Service::start(
        db.clone(),
        sim.client(),
        &["--log-stall-timeout-secs", "2", "--log-flush-ms", "100"],
    )
    .await;
    // 100 lines over 10 s.
    let (id, ids) = print_and_wait_for_capture(&service, 100, 100).await;
    faults.stall_log_streams();
    let stalled = Instant::now();
    let lines_at_stall = captures(&db, &ids).await[0].1;
    // The stall timeout, then a flush and some slack.
    let bound = Duration::from_secs(2) + Duration::from_secs(2);
    eventually("the capture to move again", bound, || {
        let db = db.clone();
        let ids = ids.clone();
        async move { captures(&db, &ids).await[0].1 > lines_at_stall + 5 }
    })
    .await;
    assert!(stalled.elapsed() >= Duration::from_secs(2) - Duration::from_millis(200));
    service.wait_for(&id, "succeeded", WAIT).await;
    eventually("the capture to complete", WAIT, || all_complete(&db, &ids)).await;
    assert_eq!(logs(&service, &id, "").await, numbered_lines(100));
}

/// Makes the API unavailable, cuts every open log stream, runs `during` (right after the cut)
/// and ends the outage after `outage`.
async fn cut_during_outage<T, F: std::future::Future<Output = T>>(
    faults: &kubesim::faults::Faults,
    outage: Duration,
    during: impl FnOnce() -> F,
) -> T {
    faults.set_outage(true);
    faults.cut_log_streams();
    let out = during().await;
    tokio::time::sleep(outage).await;
    faults.set_outage(false);
    out
}

/// A run printing `total` bytes of kubesim's numbered 64-byte lines, `chunk` bytes every 100 ms.
fn generated(total: &str, chunk: &str) -> serde_json::Value {
    scripted(
        &[
            ("KUBESIM_LOG_BYTES", total),
            ("KUBESIM_LOG_CHUNK_BYTES", chunk),
            ("KUBESIM_LOG_INTERVAL_MS", "100"),
        ],
        json!({}),
    )
}

/// Waits for the run to succeed and its capture to end, whatever its state.
async fn wait_for_capture_end(service: &Service, id: &str) {
    service.wait_for(id, "succeeded", WAIT).await;
    let ids = vec![id.to_string()];
    eventually("the capture to finish", WAIT, || {
        let db = service.db.clone();
        let ids = ids.clone();
        async move { captures(&db, &ids).await[0].0 != "capturing" }
    })
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_log_rotated_while_its_stream_was_cut_is_whole_or_marks_the_exact_gap(db: PgPool) {
    // kubesim rotates at the kubelet's 10 MiB by default.
    let sim = kubesim(RunnerKind::Scripted).await;
    let faults = sim.faults();
    let service = Service::start(
        db.clone(),
        sim.client(),
        &["--log-cap-bytes", "268435456", "--log-flush-ms", "100"],
    )
    .await;
    // 30 MiB of numbered 64-byte lines, 1 MiB every 100 ms.
    const TOTAL: u64 = 30 * 1024 * 1024;
    let id = service
        .submit(generated(&TOTAL.to_string(), "1048576"))
        .await;
    let ids = vec![id.clone()];
    eventually("the capture to be under way", WAIT, || {
        all_capturing_with_lines(&db, &ids)
    })
    .await;
    // Cut, and keep the API away for longer than it takes to write past a rotation.
    cut_during_outage(&faults, Duration::from_millis(1500), || async {}).await;
    wait_for_capture_end(&service, &id).await;

    let text = logs(&service, &id, "").await;
    let mut numbers = Vec::new();
    let mut notes = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("kubesim generated log line ") {
            Some(rest) => numbers.push(rest[..12].parse::<u64>().unwrap()),
            None => notes.push(line.to_string()),
        }
    }
    // Where lines are missing: between two archived lines, or at the end.
    let mut jumps: Vec<usize> = (1..numbers.len())
        .filter(|&i| numbers[i] != numbers[i - 1] + 1)
        .collect();
    if numbers.last() != Some(&(TOTAL / 64 - 1)) {
        jumps.push(numbers.len());
    }
    assert!(
        numbers.windows(2).all(|w| w[1] > w[0]),
        "no line repeated or out of order"
    );
    let (state, _) = captures(&db, &ids).await.remove(0);
    assert_eq!(numbers.first(), Some(&0), "{state}: {notes:?}");
    if jumps.is_empty() {
        assert_eq!(state, "complete");
        assert!(notes.is_empty(), "{notes:?}");
    } else {
        let around: Vec<(usize, u64, u64)> = jumps
            .iter()
            .map(|&j| (j, numbers[j - 1], numbers.get(j).copied().unwrap_or(0)))
            .collect();
        assert_eq!(
            state,
            "incomplete",
            "never complete with lines missing: {around:?} of {}",
            numbers.len()
        );
        assert_eq!(jumps.len(), 1, "one cut, one gap: {notes:?}");
        let note = notes.join("\n");
        assert!(
            note.contains(&format!("after line {} (", jumps[0])),
            "the gap is marked where it is, after line {}: {note}",
            jumps[0]
        );
    }
}

/// A follow stream cut while its container still prints ends like one whose container ended;
/// if the archiver's next look at the pod finds the container ended (here the API is away
/// until after that end, so the look lands after it), the cut stream's end is still not the
/// log's end: the log is read once more, and every line is archived.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_stream_cut_before_the_container_ended_is_read_again_before_the_log_is_complete(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let faults = sim.faults();
    let service = Service::start(db.clone(), sim.client(), &["--log-flush-ms", "100"]).await;
    // 100 lines over 2 s.
    let (id, ids) = print_and_wait_for_capture(&service, 100, 20).await;
    // An outage longer than the container has left to print, so it ends during the outage.
    let lines_at_cut = cut_during_outage(&faults, Duration::from_secs(3), || async {
        captures(&db, &ids).await[0].1
    })
    .await;
    wait_for_capture_end(&service, &id).await;
    assert!(lines_at_cut < 100, "cut mid-log ({lines_at_cut} lines)");
    assert_eq!(captures(&db, &ids).await[0], ("complete".to_string(), 100));
    assert_eq!(logs(&service, &id, "").await, numbered_lines(100));
}

/// Follows a run's log from before its pod starts and returns everything received.
async fn follow(service: &Service, id: &str, timeout: Duration) -> String {
    let response = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs?follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let text = tokio::time::timeout(timeout, response.text())
        .await
        .expect("the followed log ends when the run does")
        .unwrap();
    without_keepalives(&text).0
}

/// The lines of a followed log without the keep-alive notes written while it waited, and how
/// many of those there were.
fn without_keepalives(text: &str) -> (String, usize) {
    let (notes, lines): (Vec<&str>, Vec<&str>) = text
        .split_inclusive('\n')
        .partition(|line| line.starts_with("[vfi-orchestrator] waiting for "));
    (lines.concat(), notes.len())
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn following_a_pod_that_starts_after_35_seconds_gets_every_line(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_START_DELAY_MS", "35000"),
                ("KUBESIM_LOG_LINES", "5"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
            json!({}),
        ))
        .await;
    service.wait_for(&id, "pending", WAIT).await;
    // Without follow: an answer at once, saying the pod has not started.
    let asked = Instant::now();
    let now = logs(&service, &id, "").await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(now.contains("has not started"), "{now:?}");
    assert_eq!(
        follow(&service, &id, Duration::from_secs(90)).await,
        numbered_lines(5)
    );
}

/// Follows a run's log as plain text with a client that gives up after `silence` without a
/// byte, as clients and proxies do.
async fn follow_with_read_timeout(
    service: &Service,
    id: &str,
    silence: Duration,
) -> reqwest::Result<String> {
    let client = reqwest::Client::builder()
        .read_timeout(silence)
        .build()
        .unwrap();
    let url = service.url(&format!("/v1/runs/{id}/logs?follow=true"));
    client.get(url).send().await?.text().await
}

/// A pod that starts after three times a client's read timeout: with keep-alive lines every
/// second the client stays connected and gets every line, each keep-alive a note; without
/// them the same client gives up.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_plain_text_follow_of_a_pod_not_started_yet_keeps_a_client_with_a_read_timeout(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let silence = Duration::from_secs(2);
    let late = || {
        scripted(
            &[
                ("KUBESIM_START_DELAY_MS", "6000"),
                ("KUBESIM_LOG_LINES", "5"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
            json!({}),
        )
    };
    let service = Service::start(
        db.clone(),
        sim.client(),
        &["--auth-disabled", "--log-follow-keepalive-secs", "1"],
    )
    .await;
    let id = service.submit(late()).await;
    let text = follow_with_read_timeout(&service, &id, silence)
        .await
        .expect("kept alive");
    let (lines, keepalives) = without_keepalives(&text);
    assert_eq!(lines, numbered_lines(5), "{text}");
    assert!(keepalives >= 2, "{text}");
    service.stop().await;

    let quiet = Service::start(
        db,
        sim.client(),
        &["--auth-disabled", "--log-follow-keepalive-secs", "0"],
    )
    .await;
    let id = quiet.submit(late()).await;
    let cut = follow_with_read_timeout(&quiet, &id, silence).await;
    assert!(
        cut.as_ref().is_err_and(|e| e.is_timeout()),
        "without keep-alives the client gives up: {cut:?}"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn following_a_pod_unscheduled_for_10_seconds_gets_every_line(db: PgPool) {
    let sim = KubeSim::start(common::service::SimConfig {
        node_capacity: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let service = Service::start(db, sim.client(), &[]).await;
    let blocker = service
        .submit(scripted(&[("KUBESIM_DURATION_MS", "10000")], json!({})))
        .await;
    service.wait_for(&blocker, "running", WAIT).await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_LINES", "5"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
            json!({}),
        ))
        .await;
    service.wait_for(&id, "pending", WAIT).await;
    assert_eq!(
        follow(&service, &id, Duration::from_secs(60)).await,
        numbered_lines(5)
    );
}

/// (state, lines) of one pod's capture.
async fn capture_of(db: &PgPool, id: &str, pod: &str) -> (String, i64) {
    sqlx::query_as("SELECT state, lines FROM pod_logs WHERE run_id::text = $1 AND pod_name = $2")
        .bind(id)
        .bind(pod)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Deletes the run's pod (its Job makes a new one; the log finalizer keeps this one until its
/// capture has finished). Returns the pod's name.
async fn delete_pod(client: &kube::Client, id: &str) -> String {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::default_namespaced(client.clone());
    let name = pods_of(client, id).await[0].metadata.name.clone().unwrap();
    pods.delete(&name, &Default::default()).await.unwrap();
    name
}

async fn wait_gone(client: &kube::Client, name: &str) {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::default_namespaced(client.clone());
    eventually("the deleted pod to go", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt(name).await.unwrap().is_none() }
    })
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_pod_deleted_while_the_service_is_down_says_what_was_lost(db: PgPool) {
    let sim = kubesim_removing_logs_at_once().await;
    let client = sim.client();
    let service = Service::start(db.clone(), client.clone(), &[]).await;
    // 20 lines over 4 s.
    let (id, ids) = print_and_wait_for_capture(&service, 20, 200).await;
    service.stop().await;
    eventually("the pod to end", WAIT, || all_pods_ended(&client, &ids)).await;
    let pod = delete_pod(&client, &id).await;

    let service = Service::start(db.clone(), client.clone(), &[]).await;
    wait_gone(&client, &pod).await;
    let (state, lines) = capture_of(&db, &id, &pod).await;
    let text = logs(&service, &id, &format!("?pod={pod}")).await;
    assert_eq!(state, "incomplete");
    assert!(lines > 0 && lines < 20);
    assert!(text.starts_with(&numbered_lines(lines as usize)), "{text}");
    assert!(
        text.contains("[vfi-orchestrator]") && text.contains("removed its log"),
        "the log says what was lost: {text}"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_pod_deleted_while_the_service_is_up_keeps_its_whole_log(db: PgPool) {
    let sim = kubesim_removing_logs_at_once().await;
    let client = sim.client();
    let service = Service::start(db.clone(), client.clone(), &[]).await;
    // 20 lines over 4 s, deleted while it runs.
    let (id, _) = print_and_wait_for_capture(&service, 20, 200).await;
    let pod = delete_pod(&client, &id).await;
    wait_gone(&client, &pod).await;
    let (state, lines) = capture_of(&db, &id, &pod).await;
    assert_eq!(state, "complete");
    assert!(lines > 0);
    assert_eq!(
        logs(&service, &id, &format!("?pod={pod}")).await,
        numbered_lines(lines as usize)
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn every_attempt_of_an_on_failure_container_is_archived_without_a_request_loop(db: PgPool) {
    // A 3-s CrashLoopBackOff after the first failure.
    let sim = KubeSim::start(common::service::SimConfig {
        restart_backoff: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let faults = sim.faults();
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_FAIL_ATTEMPTS", "1"),
                ("KUBESIM_LOG_LINES", "10"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
            json!({"restartPolicy": "OnFailure"}),
        ))
        .await;
    service.wait_for(&id, "succeeded", WAIT).await;
    let ids = vec![id.clone()];
    eventually("the capture to complete", Duration::from_secs(15), || {
        all_complete(&db, &ids)
    })
    .await;
    let text = logs(&service, &id, "").await;
    assert_eq!(
        text,
        format!(
            "{}[vfi-orchestrator] attempt 2 of the container (restart 1) starts here\n{}",
            numbered_lines(10),
            numbered_lines(10)
        ),
        "both attempts, each shown on its own"
    );
    // Opening the stream, and reopening it with growing pauses during the back-off.
    let requests = faults.log_requests();
    assert!(requests <= 12, "{requests} log requests");

    // Each attempt on its own, from the archive, and the attempts listed with the pod.
    for attempt in [1, 2] {
        assert_eq!(
            logs(&service, &id, &format!("?attempt={attempt}")).await,
            numbered_lines(10),
            "attempt {attempt}"
        );
    }
    assert_attempts_in_order(&service, &id).await;
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    assert_eq!(
        pods[0]["attempts"],
        json!([
            {"attempt": 1, "restartCount": 0, "exitCode": 1, "state": "terminated", "archived": true},
            {"attempt": 2, "restartCount": 1, "exitCode": 0, "state": "terminated", "archived": true},
        ])
    );
    assert_attempt_refused(&service, &id).await;
}

/// Attempt 1's lines were all written before attempt 2's: each view shows its own instance.
async fn assert_attempts_in_order(service: &Service, id: &str) {
    let mut times = Vec::new();
    for attempt in [1, 2] {
        let text = logs(service, id, &format!("?attempt={attempt}&timestamps=true")).await;
        let stamps: Vec<chrono::DateTime<chrono::Utc>> = text
            .lines()
            .map(|line| line.split_once(' ').unwrap().0.parse().unwrap())
            .collect();
        assert_eq!(stamps.len(), 10, "{text}");
        times.push((stamps[0], stamps[9]));
    }
    assert!(
        times[0].1 < times[1].0,
        "attempt 1 ended before attempt 2 began: {times:?}"
    );
}

/// An OnFailure run whose attempts print 40 lines over 2 s each; the first `failing` fail.
async fn submit_failing_attempts(service: &Service, failing: &str) -> (String, Vec<String>) {
    let env = [
        ("KUBESIM_FAIL_ATTEMPTS", failing),
        ("KUBESIM_LOG_LINES", "40"),
        ("KUBESIM_LOG_INTERVAL_MS", "50"),
    ];
    submit_and_wait_for_capture(service, &env, json!({"restartPolicy": "OnFailure"})).await
}

/// A kubesim whose failed containers restart after 200 ms (doubling).
async fn kubesim_restarting_after(backoff: Duration) -> KubeSim {
    KubeSim::start(common::service::SimConfig {
        restart_backoff: backoff,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A stream cut early in an attempt, with the API away until the container has restarted:
/// the new stream serves the next attempt, so the rest of the cut one is read from the
/// kubelet's previous instance first (`previous=true`), and nothing is lost.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_rest_of_an_attempt_cut_before_its_restart_is_read_from_the_previous_instance(
    db: PgPool,
) {
    let sim = kubesim_restarting_after(Duration::from_millis(200)).await;
    let faults = sim.faults();
    let service = Service::start(db.clone(), sim.client(), &["--log-flush-ms", "100"]).await;
    let (id, ids) = submit_failing_attempts(&service, "1").await;
    // Longer than what is left of attempt 1 (< 2 s) and the back-off: the API is back once
    // attempt 2 runs (or has ended).
    let lines_at_cut = cut_during_outage(&faults, Duration::from_secs(3), || async {
        captures(&db, &ids).await[0].1
    })
    .await;
    wait_for_capture_end(&service, &id).await;
    assert!(lines_at_cut < 40, "cut mid-attempt ({lines_at_cut} lines)");
    assert_eq!(captures(&db, &ids).await[0].0, "complete");
    assert_eq!(
        logs(&service, &id, "").await,
        format!(
            "{}[vfi-orchestrator] attempt 2 of the container (restart 1) starts here\n{}",
            numbered_lines(40),
            numbered_lines(40)
        )
    );
}

/// The same cut, but the container restarts twice before the API is back: the kubelet no
/// longer has the cut attempt's log (only the one before the current), so the rest of
/// attempt 1 and all of attempt 2 are marked missing, exactly after the last archived line.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn attempts_the_kubelet_no_longer_keeps_are_marked_missing_where_they_were_cut(db: PgPool) {
    let sim = kubesim_restarting_after(Duration::from_millis(200)).await;
    let faults = sim.faults();
    let service = Service::start(db.clone(), sim.client(), &["--log-flush-ms", "100"]).await;
    let (id, ids) = submit_failing_attempts(&service, "2").await;
    // Attempt 1 ends before 2 s, attempt 2 runs from about 2.2 s to 4.2 s, attempt 3 starts
    // at about 4.6 s (back-offs of 200 and 400 ms): the API is back during attempt 3 (or
    // after it).
    cut_during_outage(&faults, Duration::from_millis(5500), || async {}).await;
    wait_for_capture_end(&service, &id).await;
    let (state, _) = captures(&db, &ids).await.remove(0);
    assert_eq!(state, "incomplete");
    let text = logs(&service, &id, "").await;
    let marker = "[vfi-orchestrator] attempt 3 of the container (restart 2) starts here\n";
    let (first, rest) = text.split_at(text.find(marker).expect(&text));
    let kept = first.lines().count();
    assert!(kept > 0 && kept < 40, "{first}");
    assert_eq!(first, numbered_lines(kept));
    let (third, note) = rest[marker.len()..].split_at(numbered_lines(40).len());
    assert_eq!(third, numbered_lines(40));
    assert!(
        note.contains(&format!("after line {kept} (")) && note.contains("attempt 2 is lost"),
        "{note}"
    );
}

/// `attempt` 0 is a bad request naming it; one beyond the pod's attempts does not exist (404,
/// like a pod that does not: the value is well formed, the attempt is not there).
async fn assert_attempt_refused(service: &Service, id: &str) {
    let get = |query: &'static str| {
        service
            .http
            .get(service.url(&format!("/v1/runs/{id}/logs{query}")))
            .send()
    };
    let bad = get("?attempt=0").await.unwrap();
    common::assert_problem(bad, reqwest::StatusCode::BAD_REQUEST, Some("attempt")).await;
    let beyond = get("?attempt=3").await.unwrap();
    let problem = common::assert_problem(beyond, reqwest::StatusCode::NOT_FOUND, None).await;
    assert_eq!(
        problem["detail"], "attempt \"3\" does not exist",
        "{problem}"
    );
}

/// The (one) capture of these runs has begun and finished.
async fn capture_finished(db: &PgPool, ids: &[String]) -> bool {
    let captures = captures(db, ids).await;
    captures
        .first()
        .is_some_and(|(state, _)| state != "capturing")
}

/// A service with one capture slot, taken by a run that lasts `blocker_ms`: other pods are
/// captured only after it ends.
async fn with_capture_slot_taken(db: &PgPool, sim: &KubeSim, blocker_ms: &str) -> Service {
    let service = Service::start(
        db.clone(),
        sim.client(),
        &["--log-capture-concurrency", "1"],
    )
    .await;
    let blocker = service
        .submit(scripted(&[("KUBESIM_DURATION_MS", blocker_ms)], json!({})))
        .await;
    let blocking = vec![blocker];
    eventually("the blocker's capture to hold the slot", WAIT, || {
        all_capturing_with_lines(db, &blocking)
    })
    .await;
    service
}

/// A container that printed a few lines at once and ended is captured seconds later (the only
/// capture slot was taken): its log is whole, so it is `complete`, not flagged as a possible
/// rotation gap. (The kubelet rotates only a file over `containerLogMaxSize`, checked every
/// `containerLogMonitorInterval` = 10 s: https://kubernetes.io/docs/concepts/cluster-administration/logging/#log-rotation.)
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_late_capture_of_a_small_container_that_printed_at_once_is_complete(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = with_capture_slot_taken(&db, &sim, "4000").await;
    let id = service
        .submit(scripted(
            &[("KUBESIM_LOG_LINES", "5"), ("KUBESIM_LOG_INTERVAL_MS", "1")],
            json!({}),
        ))
        .await;
    let ids = vec![id.clone()];
    eventually("the late capture to finish", WAIT, || {
        capture_finished(&db, &ids)
    })
    .await;
    let late: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM l.created_at - p.started_at)::float8
         FROM pod_logs l JOIN run_pods p ON p.run_id = l.run_id AND p.name = l.pod_name
         WHERE l.run_id::text = $1",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(late > 2.0, "captured late: {late} s after the start");
    assert_eq!(
        captures(&db, std::slice::from_ref(&id)).await[0].0,
        "complete"
    );
    assert_eq!(logs(&service, &id, "").await, numbered_lines(5));
}

/// A container that wrote past the rotation size (64 KiB here) over its first 3.2 s is
/// captured seconds later: the kubelet serves only the current file, whose first line is late,
/// so the log is marked incomplete with the possible gap named, never complete. (One that
/// wrote it all within about 2 s of its start cannot be told from a complete log: see
/// `check_late_start` in src/runtime/archiver.rs.)
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_late_capture_of_a_container_that_wrote_past_the_rotation_size_is_incomplete(db: PgPool) {
    let sim = KubeSim::start(common::service::SimConfig {
        log_rotate_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .await
    .unwrap();
    let service = with_capture_slot_taken(&db, &sim, "7000").await;
    // 1 MiB in 32-KiB pieces every 100 ms.
    let id = service.submit(generated("1048576", "32768")).await;
    let ids = vec![id.clone()];
    eventually("the late capture to finish", WAIT, || {
        capture_finished(&db, &ids)
    })
    .await;
    let (state, lines) = captures(&db, &ids).await.remove(0);
    assert!(
        lines < 1048576 / 64,
        "lines were rotated away ({lines} kept)"
    );
    assert_eq!(state, "incomplete");
    let text = logs(&service, &id, "").await;
    assert!(
        text.contains("may be missing") && text.contains("rotated them away"),
        "{}",
        &text[text.len().saturating_sub(600)..]
    );
}

/// While a pod runs its second attempt and nothing is archived yet (the only capture slot is
/// taken), each attempt is read from the kubelet: the current instance, and the one before it
/// with `previous=true`.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn each_attempt_of_a_live_pod_is_read_from_the_kubelet(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = with_capture_slot_taken(&db, &sim, "120000").await;
    // Each attempt prints 10 lines at once, then runs for 20 s; the first fails.
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_FAIL_ATTEMPTS", "1"),
                ("KUBESIM_LOG_LINES", "10"),
                ("KUBESIM_LOG_INTERVAL_MS", "1"),
                ("KUBESIM_DURATION_MS", "20000"),
            ],
            json!({"restartPolicy": "OnFailure"}),
        ))
        .await;
    eventually("the second attempt to run", Duration::from_secs(90), || {
        let service = &service;
        let id = &id;
        async move {
            let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
            pods[0]["attempts"][1]["state"] == "running"
        }
    })
    .await;
    let listed = service.get(&format!("/v1/runs/{id}/pods")).await[0]["attempts"].clone();
    assert_eq!(listed[0]["exitCode"], json!(null), "not archived: unknown");
    assert_eq!(listed[0]["state"], "terminated");
    for attempt in [1, 2] {
        eventually(&format!("attempt {attempt}'s lines"), WAIT, || {
            let service = &service;
            let id = &id;
            async move {
                logs(service, id, &format!("?attempt={attempt}")).await == numbered_lines(10)
            }
        })
        .await;
    }
    assert_attempts_in_order(&service, &id).await;
    assert!(
        captures(&db, std::slice::from_ref(&id)).await.is_empty(),
        "read live: nothing of this run is archived"
    );
    assert_attempt_refused(&service, &id).await;
}

/// A kubesim whose kubelet removes a deleted pod's logs at once (container garbage collection
/// without its delay).
async fn kubesim_removing_logs_at_once() -> KubeSim {
    KubeSim::start(common::service::SimConfig {
        log_removal_delay: Some(Duration::ZERO),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// kubesim's generated line `n` of `width` bytes (its KUBESIM_LOG_BYTES text).
fn generated_line(n: u64, width: usize) -> String {
    let head = format!("kubesim generated log line {n:012} ");
    format!("{head}{}\n", "x".repeat(width - head.len() - 1))
}

/// A line longer than the archiver's 64 KiB pieces is stored as several, and only the first
/// carries the kubelet's timestamp (the kubelet stamps a line once, where it begins). With
/// such a line last in the archive when the stream is cut (through kubesim's fault endpoint,
/// `cutStreams`, as a broken proxy would), the reopened stream must go on after it: every
/// byte the pod printed is archived once, with no gap recorded. (It used to be stored twice:
/// the anchor for resuming, the line's last piece, had no time.)
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_stream_cut_after_a_line_longer_than_64_kib_goes_on_after_it_byte_for_byte_once(
    db: PgPool,
) {
    const WIDTH: usize = 200_000;
    let sim = kubesim(RunnerKind::Scripted).await;
    let admin = reqwest::Client::new();
    let service = Service::start(db.clone(), sim.client(), &["--log-flush-ms", "100"]).await;
    // Three 200 000-byte lines, 1.5 s apart, then three short ones, 1.5 s apart.
    let width = WIDTH.to_string();
    let total = (3 * WIDTH).to_string();
    let env = [
        ("KUBESIM_LOG_BYTES", total.as_str()),
        ("KUBESIM_LINE_BYTES", &width),
        ("KUBESIM_LOG_CHUNK_BYTES", &width),
        ("KUBESIM_LOG_INTERVAL_MS", "1500"),
        ("KUBESIM_LOG_LINES", "3"),
    ];
    let (id, ids) = submit_and_wait_for_capture(&service, &env, json!({})).await;
    // The first long line is archived (as 4 pieces: its 64 KiB cuts): cut the stream there.
    eventually("the first long line to be archived", WAIT, || {
        let db = db.clone();
        let ids = ids.clone();
        async move { captures(&db, &ids).await[0].1 >= 4 }
    })
    .await;
    let cut = admin
        .post(format!("{}/kubesim/faults", sim.url()))
        .json(&json!({"kind": "cutStreams"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), 201);
    wait_for_capture_end(&service, &id).await;

    let expected: String = (0..3)
        .map(|n| generated_line(n, WIDTH))
        .chain((1..=3).map(|n| format!("line {n}\n")))
        .collect();
    let archived = logs(&service, &id, "").await;
    assert!(
        archived == expected,
        "the archive is what the pod printed, once: {} bytes archived, {} printed; {} copies of the first line",
        archived.len(),
        expected.len(),
        archived.matches("log line 000000000000 ").count()
    );
    assert_eq!(
        captures(&db, &ids).await[0].0,
        "complete",
        "no gap is recorded"
    );
}

/// A replica taking a capture over resumes from the archive's last piece; when that piece
/// ends a line longer than 64 KiB (stored over several chunks), its line's time is that of
/// the line's first piece, chunks back: without it the new replica's stream would be taken
/// as all new and the log stored twice.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_anchor_taken_over_after_a_long_line_has_the_time_of_its_first_piece(db: PgPool) {
    use vfi_orchestrator::domain::loglines::{lines, Anchor, MAX_LINE};
    let api_only = common::TestApp::spawn(db.clone()).await;
    let id: Uuid = api_only.submit(&scripted(&[], json!({}))).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pod = "run-1-long";
    logs::claim(&db, id, pod, "replica", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let time = "2026-12-03T08:00:02.000000002Z";
    let text = format!(
        "2026-12-03T08:00:01.000000001Z short\n{time} {}\n",
        "y".repeat(2 * MAX_LINE + 100)
    );
    let pieces: Vec<&[u8]> = lines(text.as_bytes()).collect();
    assert_eq!(
        pieces.len(),
        4,
        "a short line, then the long one in 3 pieces"
    );
    // One chunk per piece, as the archiver writes a chunk once it reaches 64 KiB.
    for (n, piece) in pieces.iter().enumerate() {
        let mut tx = db.begin().await.unwrap();
        assert!(logs::append(
            &mut tx,
            id,
            pod,
            Append {
                first_line: n as i64,
                line_count: 1,
                data: piece,
                cap_bytes: 16 << 20,
                owner: "replica",
                lease: Duration::from_secs(30),
            },
        )
        .await
        .unwrap());
        tx.commit().await.unwrap();
    }

    let anchor = logs::last_line(&db, id, pod).await.unwrap().unwrap();

    assert_eq!(
        anchor,
        Anchor {
            piece: pieces[3].to_vec(),
            time: Some(chrono::DateTime::parse_from_rfc3339(time).unwrap().to_utc()),
        }
    );
}

/// The log is read once more after its container ends (a follow stream cut just before the
/// end looks the same); when the last line is longer than 64 KiB that read must go on after
/// it too: the archive is what the pod printed, once.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_log_ending_with_a_line_longer_than_64_kib_is_archived_once(db: PgPool) {
    const WIDTH: usize = 150_000;
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let width = WIDTH.to_string();
    let total = (2 * WIDTH).to_string();
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_BYTES", total.as_str()),
                ("KUBESIM_LINE_BYTES", &width),
                ("KUBESIM_LOG_CHUNK_BYTES", &width),
                ("KUBESIM_LOG_INTERVAL_MS", "200"),
            ],
            json!({}),
        ))
        .await;
    wait_for_capture_end(&service, &id).await;

    let expected: String = (0..2).map(|n| generated_line(n, WIDTH)).collect();
    let archived = logs(&service, &id, "").await;
    assert!(
        archived == expected,
        "{} bytes archived, {} printed",
        archived.len(),
        expected.len()
    );
    assert_eq!(captures(&db, &[id]).await[0].0, "complete");
}
