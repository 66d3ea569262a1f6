//! Results back where people look (issue 17): commit statuses on fake GitHub, GitLab and Gitea
//! hosts and notifications to a fake receiver, all HTTP servers inside the test process, fed by
//! runs that webhook deliveries start on kubesim. Delivered through the outbox: in order, the
//! newest state last, retried when the host fails for now, never again when it refuses.

mod common;

use common::fake_host::{Answer, FakeHost, Received};
use common::service::{eventually, kubesim, RunnerKind, Service};
use common::{assert_problem, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vfi_orchestrator::domain::webhook::sign;

const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "host-token-that-is-never-shown";
const NOTIFY_SECRET: &str = "receiver-secret-0123456789";
const WAIT: Duration = Duration::from_secs(60);

const GITHUB_SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const GITHUB_PATH: &str =
    "/repos/octo-org/render-pipeline/statuses/0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A run that takes `millis` and exits with `code`.
fn template(code: i32, millis: u64) -> Value {
    json!({
        "image": "busybox", "command": ["true"], "backoffLimit": 0,
        "env": [
            {"name": "KUBESIM_DURATION_MS", "value": millis.to_string()},
            {"name": "KUBESIM_EXIT_CODE", "value": code.to_string()},
        ],
    })
}

async fn start(db: PgPool, extra: &[&str]) -> (common::service::KubeSim, Service) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let mut flags = vec![
        "--report-retry-min-ms",
        "50",
        "--report-retry-max-secs",
        "1",
        "--report-poll-ms",
        "100",
        "--public-base-url",
        "https://ci.example.com/",
    ];
    flags.extend_from_slice(extra);
    let service = Service::start(db, sim.client(), &flags).await;
    (sim, service)
}

async fn put(service: &Service, path: &str, body: &Value) -> reqwest::Response {
    service
        .http
        .put(service.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Task `task` running `template`, with a `provider` trigger reporting through `report`;
/// returns the hook path.
async fn reported_task(
    service: &Service,
    task: &str,
    template: Value,
    provider: &str,
    report: Value,
) -> String {
    let response = put(
        service,
        &format!("/v1/tasks/{task}"),
        &json!({"template": template}),
    )
    .await;
    assert!(response.status().is_success());
    let response = put(
        service,
        &format!("/v1/tasks/{task}/triggers/{provider}"),
        &json!({"provider": provider, "secret": SECRET, "report": report}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let trigger: Value = response.json().await.unwrap();
    assert!(
        !trigger.to_string().contains(TOKEN),
        "the token is never shown: {trigger}"
    );
    trigger["hookPath"].as_str().unwrap().to_string()
}

/// Delivers the provider's push fixture, signed, to `hook`; returns the run it started.
async fn push(service: &Service, hook: &str, provider: &str) -> String {
    let (body, headers): (Vec<u8>, Vec<(&str, String)>) = match provider {
        "github" => {
            let body = fixture("github-push.json");
            let signature = format!("sha256={}", sign(SECRET, &body));
            (
                body,
                vec![
                    ("x-github-event", "push".into()),
                    ("x-github-delivery", "d-1".into()),
                    ("x-hub-signature-256", signature),
                ],
            )
        }
        "gitlab" => (
            fixture("gitlab-push.json"),
            vec![
                ("x-gitlab-event", "Push Hook".into()),
                (
                    "x-gitlab-event-uuid",
                    "4f8c2d2e-0000-4000-8000-000000000001".into(),
                ),
                ("x-gitlab-token", SECRET.into()),
            ],
        ),
        _ => {
            let body = fixture("gitea-push.json");
            let signature = sign(SECRET, &body);
            (
                body,
                vec![
                    ("x-gitea-event", "push".into()),
                    (
                        "x-gitea-delivery",
                        "9e3d1b52-0000-4000-8000-000000000002".into(),
                    ),
                    ("x-gitea-signature", signature),
                ],
            )
        }
    };
    let mut request = reqwest::Client::new()
        .post(service.url(hook))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    answer["run"]["id"].as_str().unwrap().to_string()
}

/// The `state` of every request to `path` for `context`, in the order received.
fn states(host: &FakeHost, path: &str, context_field: &str, context: &str) -> Vec<String> {
    host.received()
        .iter()
        .filter(|r| r.path == path && r.json[context_field] == context)
        .map(|r| r.json["state"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits until nothing is left to deliver (every message delivered, superseded or refused).
async fn drained(db: &PgPool) {
    eventually("the outbox to drain", WAIT, || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_keys WHERE pending_id IS NOT NULL")
                .fetch_one(db)
                .await
                .unwrap();
        left == 0
    })
    .await;
}

async fn wait_final_state(host: &FakeHost, path: &str, field: &str, context: &str, last: &str) {
    eventually(&format!("{context}: {last}"), WAIT, || async {
        states(host, path, field, context)
            .last()
            .map(String::as_str)
            == Some(last)
    })
    .await;
}

/// Every state before the last is one of `live`, and the first is `pending`.
fn assert_ordered(seen: &[String], live: &[&str], last: &str) {
    assert_eq!(
        seen.first().map(String::as_str),
        Some("pending"),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some(last), "{seen:?}");
    for state in &seen[..seen.len() - 1] {
        assert!(
            live.contains(&state.as_str()),
            "{state} before {last}: {seen:?}"
        );
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_signed_github_push_reports_pending_then_success_failure_or_error_on_the_commit(
    db: PgPool,
) {
    let host = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let report = json!({"token": TOKEN, "apiBaseUrl": host.url});
    let ok = reported_task(&service, "ok", template(0, 500), "github", report.clone()).await;
    let bad = reported_task(&service, "bad", template(1, 500), "github", report.clone()).await;
    let slow = reported_task(&service, "slow", template(0, 600_000), "github", report).await;

    let ok_run = push(&service, &ok, "github").await;
    let bad_run = push(&service, &bad, "github").await;
    let slow_run = push(&service, &slow, "github").await;
    service.wait_for(&ok_run, "succeeded", WAIT).await;
    service.wait_for(&bad_run, "failed", WAIT).await;
    service.wait_for(&slow_run, "running", WAIT).await;
    let cancel = service
        .post(&format!("/v1/runs/{slow_run}/cancel"), &json!({}))
        .await;
    assert!(cancel.status().is_success());

    wait_final_state(&host, GITHUB_PATH, "context", "vfi/ok", "success").await;
    wait_final_state(&host, GITHUB_PATH, "context", "vfi/bad", "failure").await;
    wait_final_state(&host, GITHUB_PATH, "context", "vfi/slow", "error").await;
    drained(&db).await;
    assert_ordered(
        &states(&host, GITHUB_PATH, "context", "vfi/ok"),
        &["pending"],
        "success",
    );
    assert_ordered(
        &states(&host, GITHUB_PATH, "context", "vfi/bad"),
        &["pending"],
        "failure",
    );
    assert_ordered(
        &states(&host, GITHUB_PATH, "context", "vfi/slow"),
        &["pending"],
        "error",
    );

    let last_ok = host
        .received()
        .into_iter()
        .filter(|r| r.json["context"] == "vfi/ok")
        .last()
        .unwrap();
    assert_eq!(last_ok.method, "POST");
    assert_eq!(
        last_ok.json["target_url"],
        format!("https://ci.example.com/#/runs/{ok_run}")
    );
    assert_eq!(last_ok.header("authorization"), format!("Bearer {TOKEN}"));
    assert_eq!(last_ok.header("accept"), "application/vnd.github+json");
    assert!(last_ok
        .header("user-agent")
        .starts_with("vfi-orchestrator/"));

    let run = service.run(&ok_run).await;
    assert_eq!(run["report"]["provider"], "github");
    assert_eq!(run["report"]["context"], "vfi/ok");
    assert_eq!(run["report"]["sha"], GITHUB_SHA);
    assert_eq!(run["report"]["lastDelivered"], "succeeded");
    assert!(run["report"]["lastError"].is_null(), "{run}");
    let deliveries = service.get(&format!("/v1/runs/{ok_run}/deliveries")).await;
    assert!(!deliveries.to_string().contains(TOKEN));
    let final_one = deliveries
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "succeeded")
        .unwrap();
    assert_eq!(final_one["state"], "delivered");
    assert_eq!(final_one["target"], "github");
    assert_eq!(final_one["attempts"][0]["httpStatus"], 201);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn gitlab_gets_pending_then_running_while_the_pod_runs_then_failed_or_canceled(db: PgPool) {
    let host = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let report = json!({"token": TOKEN, "apiBaseUrl": format!("{}/api/v4", host.url)});
    let bad = reported_task(&service, "bad", template(1, 2000), "gitlab", report.clone()).await;
    let slow = reported_task(&service, "slow", template(0, 600_000), "gitlab", report).await;
    let path = "/api/v4/projects/mike%2Fdiaspora/statuses/da1560886d4f094c3e6c9ef40349f7d38b5d27d7";

    let bad_run = push(&service, &bad, "gitlab").await;
    let slow_run = push(&service, &slow, "gitlab").await;
    service.wait_for(&slow_run, "running", WAIT).await;
    wait_final_state(&host, path, "name", "vfi/slow", "running").await;
    let cancel = service
        .post(&format!("/v1/runs/{slow_run}/cancel"), &json!({}))
        .await;
    assert!(cancel.status().is_success());
    service.wait_for(&bad_run, "failed", WAIT).await;

    wait_final_state(&host, path, "name", "vfi/bad", "failed").await;
    wait_final_state(&host, path, "name", "vfi/slow", "canceled").await;
    drained(&db).await;
    let bad_states = states(&host, path, "name", "vfi/bad");
    assert_ordered(&bad_states, &["pending", "running"], "failed");
    assert!(bad_states.contains(&"running".into()), "{bad_states:?}");
    let slow_states = states(&host, path, "name", "vfi/slow");
    assert_eq!(
        slow_states,
        ["pending", "running", "canceled"],
        "GitLab never gets the same state twice (it refuses that)"
    );
    let last = host.received().pop().unwrap();
    assert_eq!(last.header("private-token"), TOKEN);
    assert_eq!(last.json["ref"], "release/2.1");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn gitea_gets_pending_then_success_with_its_token(db: PgPool) {
    let host = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let report = json!({"token": TOKEN, "apiBaseUrl": format!("{}/api/v1", host.url),
                        "context": "ci/render", "targetUrl": "https://example.com/build"});
    let hook = reported_task(&service, "render", template(0, 500), "gitea", report).await;
    let path = "/api/v1/repos/gitea/webhooks/statuses/bffeb74224043ba2feb48d137756c8a9331c449a";

    let run = push(&service, &hook, "gitea").await;
    service.wait_for(&run, "succeeded", WAIT).await;
    wait_final_state(&host, path, "context", "ci/render", "success").await;
    drained(&db).await;

    assert_ordered(
        &states(&host, path, "context", "ci/render"),
        &["pending"],
        "success",
    );
    let last = host.received().pop().unwrap();
    assert_eq!(last.header("authorization"), format!("token {TOKEN}"));
    assert_eq!(last.json["target_url"], "https://example.com/build");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_host_failing_twice_with_502_gets_the_final_state_on_the_third_attempt_once(db: PgPool) {
    let failures = Arc::new(AtomicUsize::new(0));
    let count = failures.clone();
    let host = FakeHost::with(Arc::new(move |_, r: &Received| {
        if r.json["state"] == "success" && count.fetch_add(1, Ordering::SeqCst) < 2 {
            Answer::status(502)
        } else {
            Answer::status(201)
        }
    }))
    .await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let hook = reported_task(
        &service,
        "render",
        template(0, 200),
        "github",
        json!({"token": TOKEN, "apiBaseUrl": host.url}),
    )
    .await;

    let run = push(&service, &hook, "github").await;
    service.wait_for(&run, "succeeded", WAIT).await;
    wait_final_state(&host, GITHUB_PATH, "context", "vfi/render", "success").await;
    eventually("the third attempt", WAIT, || async {
        host.received()
            .iter()
            .any(|r| r.json["state"] == "success" && r.answered == 201)
    })
    .await;
    drained(&db).await;

    let answers: Vec<u16> = host
        .received()
        .iter()
        .filter(|r| r.json["state"] == "success")
        .map(|r| r.answered)
        .collect();
    assert_eq!(
        answers,
        [502, 502, 201],
        "delivered on the third attempt, no duplicate"
    );
    let deliveries = service.get(&format!("/v1/runs/{run}/deliveries")).await;
    let final_one = deliveries
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "succeeded")
        .unwrap();
    let results: Vec<&str> = final_one["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["retry", "retry", "delivered"]);
    assert_eq!(final_one["attempts"][0]["httpStatus"], 502);
    assert_eq!(final_one["state"], "delivered");
    assert!(service.run(&run).await["report"]["lastError"].is_null());
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_host_slow_to_answer_pending_gets_success_last_and_no_pending_after_it(db: PgPool) {
    let host = FakeHost::with(Arc::new(|_, r: &Received| {
        if r.json["state"] == "pending" {
            Answer {
                delay: Duration::from_secs(2),
                ..Answer::status(201)
            }
        } else {
            Answer::status(201)
        }
    }))
    .await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let hook = reported_task(
        &service,
        "render",
        template(0, 50),
        "github",
        json!({"token": TOKEN, "apiBaseUrl": host.url}),
    )
    .await;

    let run = push(&service, &hook, "github").await;
    service.wait_for(&run, "succeeded", WAIT).await;
    wait_final_state(&host, GITHUB_PATH, "context", "vfi/render", "success").await;
    drained(&db).await;

    let seen = states(&host, GITHUB_PATH, "context", "vfi/render");
    let first_success = seen.iter().position(|s| s == "success").unwrap();
    assert_eq!(
        first_success,
        seen.len() - 1,
        "nothing after success: {seen:?}"
    );
    assert_eq!(seen.iter().filter(|s| *s == "success").count(), 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_final_state_undelivered_when_the_service_died_is_delivered_once_after_restart(
    db: PgPool,
) {
    let host = FakeHost::start().await;
    let sim = kubesim(RunnerKind::Scripted).await;
    // This replica records everything and delivers nothing, as if killed before each delivery.
    let first = Service::start(db.clone(), sim.client(), &["--report-concurrency", "0"]).await;
    let hook = reported_task(
        &first,
        "render",
        template(0, 200),
        "github",
        json!({"token": TOKEN, "apiBaseUrl": host.url}),
    )
    .await;
    let run = push(&first, &hook, "github").await;
    first.wait_for(&run, "succeeded", WAIT).await;
    first.stop().await;
    // And a reporter that claimed the key and died mid-send: its lease has not lapsed yet.
    let claimed = sqlx::query(
        "UPDATE outbox_keys SET lease_owner = 'killed-replica',
            lease_until = now() + interval '2 seconds' WHERE pending_id IS NOT NULL",
    )
    .execute(&db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(claimed, 1, "one commit status waits to be delivered");
    assert!(host.received().is_empty());

    let second = Service::start(db.clone(), sim.client(), &["--report-poll-ms", "100"]).await;
    wait_final_state(&host, GITHUB_PATH, "context", "vfi/render", "success").await;
    drained(&db).await;

    assert_eq!(
        states(&host, GITHUB_PATH, "context", "vfi/render"),
        ["success"],
        "the final state once; the older ones were superseded before they were sent"
    );
    second.stop().await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_host_answering_403_shows_on_the_run_and_is_not_retried(db: PgPool) {
    let host = FakeHost::with(Arc::new(|_, _: &Received| Answer::status(403))).await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let hook = reported_task(
        &service,
        "render",
        template(0, 300),
        "github",
        json!({"token": TOKEN, "apiBaseUrl": host.url}),
    )
    .await;

    let run = push(&service, &hook, "github").await;
    service.wait_for(&run, "succeeded", WAIT).await;
    eventually("the final state refused", WAIT, || async {
        host.received().iter().any(|r| r.json["state"] == "success")
    })
    .await;
    drained(&db).await;

    let shown = service.run(&run).await;
    assert_eq!(
        shown["status"], "succeeded",
        "the run's own status is untouched"
    );
    let error = shown["report"]["lastError"].as_str().unwrap();
    assert!(error.contains("403"), "{error}");
    assert!(!error.contains(TOKEN));
    let deliveries = service.get(&format!("/v1/runs/{run}/deliveries")).await;
    let deliveries = deliveries.as_array().unwrap();
    let attempted: Vec<&Value> = deliveries
        .iter()
        .filter(|d| !d["attempts"].as_array().unwrap().is_empty())
        .collect();
    for delivery in &attempted {
        assert_eq!(delivery["state"], "failed");
        assert_eq!(
            delivery["attempts"].as_array().unwrap().len(),
            1,
            "{delivery}"
        );
        assert_eq!(delivery["attempts"][0]["result"], "failed");
    }
    assert_eq!(
        host.received().len(),
        attempted.len(),
        "one request per state, no retries"
    );
}

/// Defines `task` with `notify` and returns nothing; runs start through the API.
async fn notified_task(service: &Service, task: &str, template: Value, notify: Value) {
    let response = put(
        service,
        &format!("/v1/tasks/{task}"),
        &json!({"template": template, "notify": notify}),
    )
    .await;
    assert!(response.status().is_success(), "{}", response.status());
    let shown: Value = response.json().await.unwrap();
    assert!(!shown.to_string().contains(NOTIFY_SECRET), "{shown}");
    assert_eq!(shown["notify"][0]["format"], "json");
}

async fn start_task_run(service: &Service, task: &str, code: i32) -> String {
    let response = service
        .post(
            &format!("/v1/tasks/{task}/runs"),
            &json!({"env": [{"name": "KUBESIM_EXIT_CODE", "value": code.to_string()}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let run: Value = response.json().await.unwrap();
    run["id"].as_str().unwrap().to_string()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_failed_run_notifies_once_signed_and_a_failing_receiver_gets_its_fourth_attempt(
    db: PgPool,
) {
    let receiver = FakeHost::start().await;
    let flaky = FakeHost::with(Arc::new(|n, _: &Received| {
        Answer::status(if n < 3 { 500 } else { 200 })
    }))
    .await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let entry = |url: String| json!([{"on": ["failed"], "url": url, "secret": NOTIFY_SECRET}]);
    notified_task(
        &service,
        "nightly",
        template(1, 100),
        entry(format!("{}/hook", receiver.url)),
    )
    .await;
    notified_task(
        &service,
        "weekly",
        template(1, 100),
        entry(format!("{}/hook", flaky.url)),
    )
    .await;

    let nightly = start_task_run(&service, "nightly", 1).await;
    let weekly = start_task_run(&service, "weekly", 1).await;
    service.wait_for(&nightly, "failed", WAIT).await;
    service.wait_for(&weekly, "failed", WAIT).await;
    eventually("the fourth attempt", WAIT, || async {
        flaky.received().len() == 4
    })
    .await;
    drained(&db).await;

    let posts = receiver.received();
    assert_eq!(posts.len(), 1, "exactly one notification");
    let post = &posts[0];
    assert_eq!(post.path, "/hook");
    assert_eq!(
        post.header("x-vfi-signature"),
        format!("sha256={}", sign(NOTIFY_SECRET, &post.body)),
        "the HMAC of the body verifies"
    );
    assert_eq!(post.json["event"], "failed");
    assert_eq!(post.json["task"], "nightly");
    assert_eq!(post.json["run"]["id"], nightly);
    assert_eq!(post.json["deliveryId"], post.header("x-vfi-delivery"));

    let attempts = flaky.received();
    let ids: Vec<&str> = attempts
        .iter()
        .map(|r| r.header("x-vfi-delivery"))
        .collect();
    assert!(
        ids.iter().all(|id| !id.is_empty() && *id == ids[0]),
        "a stable id: {ids:?}"
    );
    let deliveries = service.get(&format!("/v1/runs/{weekly}/deliveries")).await;
    let notification = &deliveries.as_array().unwrap()[0];
    assert_eq!(notification["kind"], "notification");
    assert_eq!(notification["id"], ids[0]);
    assert_eq!(notification["state"], "delivered");
    let results: Vec<&str> = notification["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["retry", "retry", "retry", "delivered"]);
    assert!(!deliveries.to_string().contains(NOTIFY_SECRET));
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn failed_then_recovered_is_sent_once_each_for_fail_success_success(db: PgPool) {
    let receiver = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &[]).await;
    notified_task(
        &service,
        "nightly",
        template(0, 100),
        json!([{"on": ["failed", "recovered"], "url": receiver.url, "secret": NOTIFY_SECRET}]),
    )
    .await;

    for (code, outcome) in [(1, "failed"), (0, "succeeded"), (0, "succeeded")] {
        let run = start_task_run(&service, "nightly", code).await;
        service.wait_for(&run, outcome, WAIT).await;
    }
    drained(&db).await;

    let events: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["failed", "recovered"]);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn bad_report_and_notify_settings_are_422_naming_the_field_and_change_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.put_task("render", &json!({"template": {"image": "busybox"}}))
        .await;
    let trigger = |report: Value| json!({"provider": "github", "secret": SECRET, "report": report});
    for (report, field) in [
        (
            json!({"token": "t", "targetUrl": "ftp://example.com/x"}),
            "report.targetUrl",
        ),
        (
            json!({"token": "t", "apiBaseUrl": "javascript:alert(1)"}),
            "report.apiBaseUrl",
        ),
        (
            json!({"token": "t", "provider": "bitbucket"}),
            "report.provider",
        ),
        (json!({"token": ""}), "report.token"),
    ] {
        let response = app
            .put_json("/v1/tasks/render/triggers/gh", &trigger(report))
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
    let gitea = json!({"provider": "gitea", "secret": SECRET, "report": {"token": "t"}});
    let response = app.put_json("/v1/tasks/render/triggers/gt", &gitea).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("report.apiBaseUrl"),
    )
    .await;
    let listed: Value = app
        .get("/v1/tasks/render/triggers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]), "a refused trigger is not saved");

    let task = |notify: Value| json!({"template": {"image": "busybox"}, "notify": notify});
    for (notify, field) in [
        (
            json!([{"on": ["failed"], "url": "file:///etc/passwd", "secret": NOTIFY_SECRET}]),
            "notify[0].url",
        ),
        (
            json!([{"on": ["exploded"], "url": "https://x.example", "secret": NOTIFY_SECRET}]),
            "notify[0].on[0]",
        ),
        (
            json!([{"on": ["failed"], "url": "https://x.example", "secret": "short"}]),
            "notify[0].secret",
        ),
        (
            json!([{"on": ["failed"], "url": "https://x.example", "secret": NOTIFY_SECRET, "format": "xml"}]),
            "notify[0].format",
        ),
    ] {
        let response = app.put_json("/v1/tasks/render", &task(notify)).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
    let shown: Value = app.get("/v1/tasks/render").await.json().await.unwrap();
    assert!(shown.get("notify").is_none(), "{shown}");
}

/// A signed GitHub delivery of `event` with `body`.
async fn deliver_github(
    service: &Service,
    hook: &str,
    event: &str,
    delivery: &str,
    body: &Value,
) -> reqwest::Response {
    let body = serde_json::to_vec(body).unwrap();
    reqwest::Client::new()
        .post(service.url(hook))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            format!("sha256={}", sign(SECRET, &body)),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_github_app_creates_one_check_run_updates_it_and_a_rerequest_reruns_the_run(db: PgPool) {
    let creates = Arc::new(AtomicUsize::new(0));
    let counter = creates.clone();
    let host = FakeHost::with(Arc::new(move |_, r: &Received| {
        if r.path == "/app/installations/42/access_tokens" {
            Answer {
                body: json!({"token": "ghs_installation", "expires_at": "2099-01-01T00:00:00Z"}),
                ..Answer::status(201)
            }
        } else if r.method == "POST" && r.path.ends_with("/check-runs") {
            let id = 4242 + 101 * counter.fetch_add(1, Ordering::SeqCst);
            Answer {
                body: json!({"id": id}),
                ..Answer::status(201)
            }
        } else {
            Answer::status(200)
        }
    }))
    .await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let pem = String::from_utf8(fixture("../github-app-key.pem")).unwrap();
    let hook = reported_task(
        &service,
        "render",
        template(0, 300),
        "github",
        json!({"appId": 7, "installationId": 42, "privateKey": pem, "apiBaseUrl": host.url}),
    )
    .await;
    let shown = service.get("/v1/tasks/render/triggers/github").await;
    assert!(!shown.to_string().contains("PRIVATE KEY"), "{shown}");
    assert_eq!(shown["report"]["appId"], 7);

    let run = push(&service, &hook, "github").await;
    service.wait_for(&run, "succeeded", WAIT).await;
    let runs_path = "/repos/octo-org/render-pipeline/check-runs";
    let completed = |host: &FakeHost, id: u64| {
        host.received().iter().any(|r| {
            r.path == format!("{runs_path}/{id}")
                && r.json["status"] == "completed"
                && r.json["conclusion"] == "success"
        })
    };
    eventually("the check run completed", WAIT, || async {
        completed(&host, 4242)
    })
    .await;
    drained(&db).await;

    let received = host.received();
    let mints: Vec<&Received> = received
        .iter()
        .filter(|r| r.path.ends_with("/access_tokens"))
        .collect();
    assert_eq!(mints.len(), 1, "the installation token is cached");
    let jwt = mints[0]
        .header("authorization")
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");
    let checks: Vec<&Received> = received
        .iter()
        .filter(|r| r.path.starts_with(runs_path))
        .collect();
    assert_eq!(
        checks[0].method, "POST",
        "the first report creates the check run"
    );
    assert_eq!(checks[0].json["head_sha"], GITHUB_SHA);
    assert_eq!(checks[0].json["name"], "vfi/render");
    assert_eq!(checks[0].json["external_id"], run);
    for update in &checks[1..] {
        assert_eq!(update.method, "PATCH");
        assert_eq!(
            update.path,
            format!("{runs_path}/4242"),
            "later ones update it"
        );
    }
    assert!(checks
        .iter()
        .all(|r| r.header("authorization") == "Bearer ghs_installation"));

    let rerequest = json!({
        "action": "rerequested",
        "check_run": {"id": 4242, "external_id": run, "head_sha": GITHUB_SHA},
        "repository": {"full_name": "octo-org/render-pipeline"},
        "sender": {"login": "octocat"},
    });
    let response = deliver_github(&service, &hook, "check_run", "d-rerun", &rerequest).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let rerun = answer["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(answer["run"]["rerunOf"], run);
    assert_eq!(answer["run"]["trigger"], "rerun");
    let again = deliver_github(&service, &hook, "check_run", "d-rerun", &rerequest).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "a redelivery starts nothing"
    );

    service.wait_for(&rerun, "succeeded", WAIT).await;
    eventually("the rerun's own check run completed", WAIT, || async {
        completed(&host, 4343)
    })
    .await;
    let second_create = host
        .received()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == runs_path)
        .nth(1)
        .unwrap();
    assert_eq!(second_create.json["external_id"], rerun);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_waiting_reason_shows_while_pending_and_the_failure_reason_at_the_end(db: PgPool) {
    let host = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &["--max-pending-secs", "2"]).await;
    let gpu = json!({"image": "busybox", "command": ["true"], "backoffLimit": 0,
        "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}});
    let hook = reported_task(
        &service,
        "render",
        gpu,
        "github",
        json!({"token": TOKEN, "apiBaseUrl": host.url}),
    )
    .await;

    let run = push(&service, &hook, "github").await;
    service.wait_for(&run, "failed", WAIT).await;
    wait_final_state(&host, GITHUB_PATH, "context", "vfi/render", "failure").await;
    drained(&db).await;

    let received = host.received();
    let descriptions: Vec<(&str, &str)> = received
        .iter()
        .map(|r| {
            (
                r.json["state"].as_str().unwrap(),
                r.json["description"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        descriptions
            .iter()
            .any(|(state, text)| *state == "pending" && text.contains("Unschedulable")),
        "the scheduler's reason while it waits: {descriptions:?}"
    );
    let (_, last) = descriptions.last().unwrap();
    assert!(last.starts_with("Failed: "), "{last}");
    assert!(last.chars().count() <= 140, "{last}");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_rerun_of_a_webhook_run_through_the_api_reports_on_the_same_commit(db: PgPool) {
    let host = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let hook = reported_task(
        &service,
        "render",
        template(0, 200),
        "github",
        json!({"token": TOKEN, "apiBaseUrl": host.url}),
    )
    .await;
    let run = push(&service, &hook, "github").await;
    service.wait_for(&run, "succeeded", WAIT).await;

    let response = service
        .post(&format!("/v1/runs/{run}/rerun"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let rerun: Value = response.json().await.unwrap();
    let rerun = rerun["id"].as_str().unwrap().to_string();
    service.wait_for(&rerun, "succeeded", WAIT).await;
    let page = format!("https://ci.example.com/#/runs/{rerun}");
    eventually("the rerun's final state on the commit", WAIT, || async {
        host.received()
            .iter()
            .any(|r| r.json["state"] == "success" && r.json["target_url"] == page.as_str())
    })
    .await;
    assert_eq!(service.run(&rerun).await["report"]["sha"], GITHUB_SHA);
}

/// Issue 17: a Slack incoming-webhook URL is its own credential, so the API never shows it
/// whole: `GET /v1/tasks/{name}` (and the list) and a run's deliveries show only
/// `scheme://host/***`, while a JSON receiver's URL (whose bodies are signed) is shown whole.
/// The notification still goes to the whole URL; a `PUT` that sends the redacted value back
/// unchanged keeps the stored URL; a redacted value that matches nothing stored is 422 naming
/// the field, and changes nothing.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_slack_webhook_url_is_never_shown_and_a_put_of_the_redacted_value_keeps_it(db: PgPool) {
    let receiver = FakeHost::start().await;
    let (_sim, service) = start(db.clone(), &[]).await;
    let slack_url = format!("{}/services/T000/B000/slack-credential-part", receiver.url);
    let json_url = format!("{}/json-hook", receiver.url);
    let notify = json!([
        {"on": ["failed"], "url": slack_url, "secret": NOTIFY_SECRET, "format": "slack"},
        {"on": ["succeeded"], "url": json_url, "secret": NOTIFY_SECRET},
    ]);
    let response = put(
        &service,
        "/v1/tasks/chat",
        &json!({"template": template(1, 100), "notify": notify}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let redacted = format!("{}/***", receiver.url);
    for shown in [
        created,
        service.get("/v1/tasks/chat").await,
        service.get("/v1/tasks").await,
    ] {
        assert!(
            !shown.to_string().contains("slack-credential-part"),
            "{shown}"
        );
        assert!(shown.to_string().contains(&redacted), "{shown}");
        assert!(shown.to_string().contains(&json_url), "{shown}");
    }

    // GET, add the write-only secrets, PUT back: the stored URL stays whole.
    let mut spec = service.get("/v1/tasks/chat").await;
    for entry in spec["notify"].as_array_mut().unwrap() {
        entry["secret"] = json!(NOTIFY_SECRET);
    }
    let round_trip = json!({"template": spec["template"], "notify": spec["notify"],
                            "description": "edited"});
    let response = put(&service, "/v1/tasks/chat", &round_trip).await;
    assert_eq!(response.status(), StatusCode::OK);
    let stored: String =
        sqlx::query_scalar("SELECT spec -> 'notify' -> 0 ->> 'url' FROM tasks WHERE name = 'chat'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(stored, slack_url);

    // A redacted value that matches no stored entry is refused, naming the field.
    let mut unknown = round_trip.clone();
    unknown["notify"][0]["url"] = json!("https://hooks.slack.example/***");
    let response = put(&service, "/v1/tasks/chat", &unknown).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("notify[0].url"),
    )
    .await;
    let stored: String =
        sqlx::query_scalar("SELECT spec -> 'notify' -> 0 ->> 'url' FROM tasks WHERE name = 'chat'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(stored, slack_url, "a refused PUT changes nothing");

    // The notification goes to the whole URL; its delivery shows it redacted.
    let run = start_task_run(&service, "chat", 1).await;
    service.wait_for(&run, "failed", WAIT).await;
    eventually("the Slack notification", WAIT, || async {
        !receiver.received().is_empty()
    })
    .await;
    assert_eq!(
        receiver.received()[0].path,
        "/services/T000/B000/slack-credential-part"
    );
    let deliveries = service.get(&format!("/v1/runs/{run}/deliveries")).await;
    assert!(
        !deliveries.to_string().contains("slack-credential-part"),
        "{deliveries}"
    );
    assert_eq!(deliveries[0]["target"], redacted, "{deliveries}");
}

/// Issue 17: `outbox_keys` rows go with the messages they order. A key with a message due, or
/// with a message still in the outbox, stays; once its run (and with it its messages) is pruned,
/// the pruner's cleanup deletes the key. A message written for an idle key while the cleanup
/// runs keeps its key (`outbox_put` locks or creates the key's row in one statement).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn outbox_keys_are_deleted_once_their_messages_are_pruned_and_never_under_a_new_message(
    db: PgPool,
) {
    use vfi_orchestrator::store::outbox::prune_keys;
    let template = serde_json::from_value(json!({"image": "busybox"})).unwrap();
    let mut conn = db.acquire().await.unwrap();
    let run = common::queue_run(&mut conn, None, &template).await;
    drop(conn);
    let put_message = |key: &'static str| {
        sqlx::query(
            "SELECT outbox_put($1, $2, 'notification', 'failed', NULL, NULL,
                               '{\"url\": \"http://x.example\", \"format\": \"json\"}', 's')",
        )
        .bind(key)
        .bind(run.id)
    };
    put_message("notify:a").execute(&db).await.unwrap();
    let keys = |db: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_keys")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert_eq!(prune_keys(&db, 100).await.unwrap(), 0, "a message is due");

    // Delivered: nothing due, but the message is still in the outbox.
    sqlx::query(
        "UPDATE outbox_keys SET delivered_id = pending_id, pending_id = NULL WHERE key = 'notify:a'",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET state = 'delivered' WHERE key = 'notify:a'")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        prune_keys(&db, 100).await.unwrap(),
        0,
        "its message is kept"
    );

    // The run is pruned, its messages with it: the key goes too.
    sqlx::query("DELETE FROM runs WHERE id = $1")
        .bind(run.id)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(prune_keys(&db, 100).await.unwrap(), 1);
    assert_eq!(keys(db.clone()).await, 0);

    // An idle key (nothing due, no message left) that gets a new message while the cleanup
    // runs keeps it: the cleanup skips the row the writer holds.
    let mut conn = db.acquire().await.unwrap();
    let run = common::queue_run(&mut conn, None, &template).await;
    drop(conn);
    let put_message = |key: &'static str| {
        sqlx::query(
            "SELECT outbox_put($1, $2, 'notification', 'failed', NULL, NULL,
                               '{\"url\": \"http://x.example\", \"format\": \"json\"}', 's')",
        )
        .bind(key)
        .bind(run.id)
    };
    sqlx::query("INSERT INTO outbox_keys (key, delivered_id) VALUES ('notify:b', 1)")
        .execute(&db)
        .await
        .unwrap();
    let mut writer = db.begin().await.unwrap();
    put_message("notify:b").execute(&mut *writer).await.unwrap();
    assert_eq!(
        prune_keys(&db, 100).await.unwrap(),
        0,
        "the writer holds it"
    );
    writer.commit().await.unwrap();
    let pending: Option<i64> =
        sqlx::query_scalar("SELECT pending_id FROM outbox_keys WHERE key = 'notify:b'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(pending.is_some(), "the new message is due on its key");
    assert_eq!(prune_keys(&db, 100).await.unwrap(), 0);
}
