//! Logs: served live while pods run, archived in Postgres so history keeps them after the
//! cluster forgets, with nothing lost or repeated at the switch.

mod common;

use common::calculatepi;
use common::service::{
    eventually, jobs_of, kubesim, logs, numbered_lines, pods_of, scripted, KubeSim, RunnerKind,
    Service, SimConfig,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn calculatepi_logs_are_byte_for_byte_and_survive_the_job_ttl(db: PgPool) {
    let expected = std::process::Command::new("perl")
        .args(["-Mbignum=bpi", "-wle", "print bpi(2000)"])
        .output()
        .expect("perl runs");
    assert!(
        expected.status.success(),
        "perl on this machine computes bpi(2000)"
    );
    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;

    let mut template = calculatepi();
    template["ttlSecondsAfterFinished"] = json!(0);
    let id = service.submit(template).await;
    service
        .wait_for(&id, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(logs(&service, &id, "").await.as_bytes(), expected.stdout);

    // ttlSecondsAfterFinished: 0 deletes the Job and its pods once the service lets go of them.
    eventually("the Job and pod to be deleted", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { jobs_of(&client, &id).await.is_empty() && pods_of(&client, &id).await.is_empty() }
    })
    .await;
    assert_eq!(
        logs(&service, &id, "").await.as_bytes(),
        expected.stdout,
        "served from the archive"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn following_delivers_lines_as_they_appear_and_closes_when_the_run_ends(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_LINES", "30"),
                ("KUBESIM_LOG_INTERVAL_MS", "100"),
            ],
            json!({}),
        ))
        .await;

    let response = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs?follow=true")))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("the stream moves")
    {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        arrivals.push((started.elapsed(), text.matches('\n').count()));
    }
    assert_eq!(text, numbered_lines(30), "every line once, in order");
    let first = arrivals.iter().find(|(_, lines)| *lines >= 1).unwrap().0;
    let last = arrivals.last().unwrap().0;
    assert!(
        last - first > Duration::from_millis(1500),
        "lines arrived as printed, not at the end: {arrivals:?}"
    );
    assert_eq!(
        service.run(&id).await["status"],
        "succeeded",
        "the stream closed because the run ended"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn each_index_of_an_indexed_run_has_its_own_log_and_the_combined_view_attributes_lines(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[],
            json!({"completions": 20, "parallelism": 5, "completionMode": "Indexed"}),
        ))
        .await;
    service.wait_for(&id, "succeeded", WAIT).await;
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 20);

    for pod in pods {
        let index = pod["completionIndex"].as_i64().unwrap();
        let name = pod["name"].as_str().unwrap();
        let alone = logs(&service, &id, &format!("?index={index}")).await;
        assert_eq!(alone, format!("kubesim: {name} ran\n"));
    }
    let combined = logs(&service, &id, "").await;
    let mut current: Option<String> = None;
    let mut blocks = 0;
    for line in combined.lines() {
        if let Some(header) = line.strip_prefix("==> pod ") {
            current = Some(header.split(' ').next().unwrap().to_string());
            blocks += 1;
        } else {
            let pod = current
                .as_ref()
                .expect("every line comes after its pod's header");
            assert_eq!(line, format!("kubesim: {pod} ran"));
        }
    }
    assert_eq!(blocks, 20);
    assert!(combined.starts_with(&format!(
        "==> pod {} (index 0) <==\n",
        pods[0]["name"].as_str().unwrap()
    )));
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_log_over_the_cap_keeps_its_head_and_tail_with_a_marker(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &["--log-cap-bytes", "1048576"]).await;
    // 8 MB of 64-byte lines, against a 1 MiB cap.
    let id = service
        .submit(scripted(&[("KUBESIM_LOG_BYTES", "8388608")], json!({})))
        .await;
    service
        .wait_for(&id, "succeeded", Duration::from_secs(60))
        .await;
    eventually("the capture to complete", Duration::from_secs(60), || {
        let db = db.clone();
        let id = id.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM pod_logs WHERE run_id = $1::uuid")
                .bind(&id)
                .fetch_optional(&db)
                .await
                .unwrap()
                .as_deref()
                == Some("complete")
        }
    })
    .await;

    let (stored, dropped): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(c.raw_len), 0)::bigint, max(l.dropped_bytes) FROM pod_logs l
         JOIN log_chunks c USING (run_id, pod_name) WHERE l.run_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        stored > 0 && dropped > 0,
        "stored {stored}, dropped {dropped}"
    );
    // Timestamps make each stored line longer than the 64 bytes a pod printed; the cap holds
    // for what is stored, give or take one chunk.
    assert!(
        stored <= 1048576 + 70 * 1024,
        "stored {stored} bytes within the 1 MiB cap"
    );

    let text = logs(&service, &id, "").await;
    let lines: Vec<&str> = text.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.starts_with("[vfi-orchestrator]"))
        .expect("a truncation marker");
    assert!(lines[marker].contains("omitted"), "{}", lines[marker]);
    assert!(
        lines[0].contains("000000000000"),
        "the head starts with the first line: {}",
        lines[0]
    );
    let last_line = 8388608 / 64 - 1;
    assert!(
        lines.last().unwrap().contains(&format!("{last_line:012}")),
        "the tail ends with the last line: {}",
        lines.last().unwrap()
    );
    assert!(
        marker > 1000 && lines.len() - marker > 1000,
        "both head and tail are kept"
    );
}

async fn sse_events(
    service: &Service,
    id: &str,
    last_event_id: Option<&str>,
) -> Vec<(Option<String>, String, Value)> {
    let mut request = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs")))
        .header("accept", "text/event-stream");
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    let text = request.send().await.unwrap().text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim_start().to_string())
                })
            };
            let data = field("data").unwrap_or_default();
            (
                field("id"),
                field("event").unwrap_or_default(),
                serde_json::from_str(&data).unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn server_sent_events_resume_exactly_after_the_last_event_id(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_LINES", "10"),
                ("KUBESIM_LOG_INTERVAL_MS", "1"),
            ],
            json!({}),
        ))
        .await;
    service.wait_for(&id, "succeeded", WAIT).await;

    let all = sse_events(&service, &id, None).await;
    let lines: Vec<&(Option<String>, String, Value)> =
        all.iter().filter(|e| e.1 == "log").collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(all.last().unwrap().1, "end");
    // With data: an EventSource (the HTML standard) drops an event whose data is empty.
    assert_eq!(all.last().unwrap().2, json!({}));
    let fourth = lines[3].0.clone().expect("log events carry ids");

    let resumed = sse_events(&service, &id, Some(&fourth)).await;
    let texts: Vec<&str> = resumed
        .iter()
        .filter(|e| e.1 == "log")
        .map(|e| e.2["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["line 5", "line 6", "line 7", "line 8", "line 9", "line 10"]
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_cancelled_runs_log_is_kept_whole_and_its_pods_go_afterwards(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    // 20 lines at once, then the pod keeps running.
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_LINES", "20"),
                ("KUBESIM_LOG_INTERVAL_MS", "1"),
                ("KUBESIM_DURATION_MS", "600000"),
            ],
            json!({}),
        ))
        .await;
    service.wait_for(&id, "running", WAIT).await;
    eventually("the 20 lines to be readable live", WAIT, || {
        let service = &service;
        let id = id.clone();
        async move { logs(service, &id, "").await == numbered_lines(20) }
    })
    .await;

    let cancelled = service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    eventually("the pods to be gone", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { pods_of(&client, &id).await.is_empty() && jobs_of(&client, &id).await.is_empty() }
    })
    .await;
    assert_eq!(
        logs(&service, &id, "").await,
        numbered_lines(20),
        "the archive kept every line"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_log_that_could_not_be_captured_is_reported_not_shown_empty(db: PgPool) {
    // Containers take an hour to start: the pod never runs, and is deleted by the cancellation.
    let sim = KubeSim::start(SimConfig {
        start_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let id = service.submit(scripted(&[], json!({}))).await;
    eventually("the pod to exist", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { !pods_of(&client, &id).await.is_empty() }
    })
    .await;
    service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    eventually("the pod to be gone", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { pods_of(&client, &id).await.is_empty() }
    })
    .await;
    let text = logs(&service, &id, "").await;
    assert!(
        text.starts_with("[vfi-orchestrator] no log was captured"),
        "{text:?}"
    );
    assert!(text.contains("before its container started"), "{text:?}");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn log_options_tail_since_timestamps_limit_and_bad_values(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_LINES", "10"),
                ("KUBESIM_LOG_INTERVAL_MS", "1"),
            ],
            json!({}),
        ))
        .await;
    service.wait_for(&id, "succeeded", WAIT).await;

    assert_eq!(
        logs(&service, &id, "?tail=3").await,
        "line 8\nline 9\nline 10\n"
    );
    assert_eq!(logs(&service, &id, "?limitBytes=10").await, "line 1\nlin");
    let stamped = logs(&service, &id, "?timestamps=true&tail=1").await;
    let (time, text) = stamped.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{stamped}"
    );
    assert_eq!(text, "line 10\n");
    assert_eq!(logs(&service, &id, "?since=2999-01-01T00:00:00Z").await, "");
    assert_eq!(
        logs(&service, &id, "?since=2000-01-01T00:00:00Z").await,
        numbered_lines(10)
    );

    for (query, field) in [
        ("?tail=-1", "tail"),
        ("?since=yesterday", "since"),
        ("?limitBytes=0", "limitBytes"),
        ("?lines=3", "lines"),
    ] {
        let response = service
            .http
            .get(service.url(&format!("/v1/runs/{id}/logs{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn archives_past_their_own_age_limit_are_deleted_while_the_run_stays(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let api_only = common::TestApp::spawn(db.clone()).await;
    let old = api_only.submit(&scripted(&[], json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let recent = api_only.submit(&scripted(&[], json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (id, age) in [(&old, "2 hours"), (&recent, "10 minutes")] {
        sqlx::query(&format!(
            "INSERT INTO pod_logs (run_id, pod_name, state, completed_at)
             VALUES ($1::uuid, 'p', 'complete', now() - interval '{age}')"
        ))
        .bind(id)
        .execute(&db)
        .await
        .unwrap();
    }

    let _service = Service::start(db.clone(), sim.client(), &["--log-max-age-hours", "1"]).await;
    eventually("the old archive to expire", WAIT, || {
        let db = db.clone();
        async move {
            let left: Vec<String> =
                sqlx::query_scalar("SELECT run_id::text FROM pod_logs WHERE pod_name = 'p'")
                    .fetch_all(&db)
                    .await
                    .unwrap();
            left.len() == 1
        }
    })
    .await;
    let left: String = sqlx::query_scalar("SELECT run_id::text FROM pod_logs WHERE pod_name = 'p'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, recent, "the recent archive stays");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 2, "runs outlive their expired logs");
}
