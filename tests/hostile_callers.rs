//! Holding against hostile and careless callers (issue 13). Installation limits on what one run
//! may ask for (High 1): beyond them a run is
//! refused with 422 naming the field, at every door (ad-hoc runs, task runs, tasks, reruns);
//! an admin may set other limits per task; and one token may have only so many unfinished
//! runs (429 naming the limit). And the pod sandbox as an allowlist (High 3, Medium 9):
//! annotations, tolerations and node selectors that weaken it are refused. Idempotency-Keys
//! belong to their caller, and the small API fixes.

mod common;

use common::{assert_problem, assert_rate_limited, calculatepi, client_for, TestApp, TestOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use vfi_orchestrator::domain::policy::RunLimits;
use vfi_orchestrator::domain::Scope;

fn limits() -> RunLimits {
    RunLimits {
        max_completions: Some(1000),
        max_parallelism: Some(100),
        max_pods: Some(1100),
        max_cpu: Some("16".into()),
        max_memory: Some("64Gi".into()),
        max_extended_resource: Some(8),
        max_active_deadline_seconds: Some(86400),
    }
}

async fn capped(db: PgPool, max_active_runs_per_token: u32) -> TestApp {
    let options = TestOptions {
        max_active_runs_per_token,
        ..Default::default()
    };
    TestApp::spawn_with(db, options).await
}

/// Starts the calculatepi run ad hoc with `client`'s token.
async fn submit_as(app: &TestApp, client: &reqwest::Client) -> reqwest::Response {
    client
        .post(app.url("/v1/runs"))
        .json(&json!({ "template": calculatepi() }))
        .send()
        .await
        .unwrap()
}

async fn limited(db: PgPool) -> TestApp {
    TestApp::spawn_with(
        db,
        TestOptions {
            run_limits: limits(),
            ..Default::default()
        },
    )
    .await
}

fn with(extra: Value) -> Value {
    let mut template = calculatepi();
    template
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    template
}

/// Starts `template` ad hoc with `client`'s token, expecting a 422 naming `field`.
async fn refused_ad_hoc(
    app: &TestApp,
    client: &reqwest::Client,
    template: &Value,
    field: &str,
) -> Value {
    let response = client
        .post(app.url("/v1/runs"))
        .json(&json!({ "template": template }))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await
}

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_unbounded_job_from_a_run_token_is_422_and_nothing_is_stored(db: PgPool) {
    let app = limited(db).await;
    let run = app.client_with_scope(Scope::Run, None).await;
    let template = with(json!({
        "parallelism": 300, "completions": 2147483647,
        "activeDeadlineSeconds": 999999999,
        "resources": {
            "requests": {"cpu": "64", "memory": "1Ti", "nvidia.com/gpu": "64"},
            "limits": {"nvidia.com/gpu": "64"}
        }
    }));
    let body = refused_ad_hoc(&app, &run, &template, "template.completions").await;
    let fields = fields(&body);
    for field in [
        "template.parallelism",
        "template.activeDeadlineSeconds",
        "template.resources.requests.cpu",
        "template.resources.requests.memory",
        "template.resources.requests.nvidia.com/gpu",
        "template.resources.limits.nvidia.com/gpu",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} not in {body}");
    }
    assert!(body["detail"].as_str().unwrap().contains("maxCompletions"));
    assert_eq!(app.count("runs").await, 0);

    let within = with(json!({"parallelism": 100, "completions": 1000}));
    app.submit(&within).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn tasks_beyond_the_limits_are_refused_unless_an_admin_gave_the_task_its_own(db: PgPool) {
    let app = limited(db).await;
    let big = with(json!({"completions": 5000, "parallelism": 10}));
    let response = app
        .put_json("/v1/tasks/big", &json!({ "template": big }))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.completions"),
    )
    .await;

    let bad_limits = app
        .put_json(
            "/v1/tasks/big",
            &json!({ "template": big, "limits": {"maxPods": -1} }),
        )
        .await;
    assert_problem(
        bad_limits,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("limits.maxPods"),
    )
    .await;
    assert_eq!(app.count("tasks").await, 0);
    // An array is not limits, though serde would read a struct from one (found by
    // schemathesis: `[null, null]` was stored as no limits at all).
    let listed = app
        .put_json(
            "/v1/tasks/big",
            &json!({ "template": big, "limits": [null, null] }),
        )
        .await;
    assert_problem(listed, StatusCode::UNPROCESSABLE_ENTITY, Some("limits")).await;
    assert_eq!(app.count("tasks").await, 0);

    let task = app
        .put_task(
            "big",
            &json!({ "template": big, "limits": {"maxCompletions": 5000, "maxPods": 6000} }),
        )
        .await;
    assert_eq!(task["limits"]["maxCompletions"], 5000);
    app.start_task_run("big", &json!({})).await;

    // The same template ad hoc still meets the installation's limits.
    let response = app.post_json("/v1/runs", &json!({ "template": big })).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.completions"),
    )
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_rerun_meets_today_s_limits(db: PgPool) {
    // Started while the installation had no limits...
    let unlimited = TestApp::spawn(db.clone()).await;
    let run = unlimited
        .submit(&with(json!({"completions": 5000, "parallelism": 500})))
        .await;
    // ...and re-run after they were set.
    let app = limited(db).await;
    let response = app
        .post_json(
            &format!("/v1/runs/{}/rerun", run["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.parallelism"),
    )
    .await;
    assert_eq!(app.count("runs").await, 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_token_at_its_active_run_limit_gets_429_until_one_finishes(db: PgPool) {
    let app = capped(db, 2).await;
    let run = app.client_with_scope(Scope::Run, None).await;
    let first: Value = submit_as(&app, &run).await.json().await.unwrap();
    assert_eq!(submit_as(&app, &run).await.status(), StatusCode::CREATED);
    let refused = assert_problem(
        submit_as(&app, &run).await,
        StatusCode::TOO_MANY_REQUESTS,
        Some("maxActiveRuns"),
    )
    .await;
    assert!(
        refused["detail"].as_str().unwrap().contains('2'),
        "{refused}"
    );
    assert_eq!(app.count("runs").await, 2);

    // Another token has its own count.
    let other = app.client_with_scope(Scope::Run, None).await;
    assert_eq!(submit_as(&app, &other).await.status(), StatusCode::CREATED);

    // A finished (here: cancelled) run no longer counts.
    let cancel = run
        .post(app.url(&format!(
            "/v1/runs/{}/cancel",
            first["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    assert_eq!(submit_as(&app, &run).await.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_admin_may_give_a_token_its_own_active_run_limit(db: PgPool) {
    let app = capped(db, 1).await;
    let created: Value = app
        .post_json(
            "/v1/tokens",
            &json!({"name": "ci", "scope": "run", "maxActiveRuns": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["maxActiveRuns"], 3);
    let ci = client_for(created["token"].as_str().unwrap());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = submit_as(&app, &ci).await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 429]);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn concurrent_submissions_of_one_token_cannot_pass_its_limit(db: PgPool) {
    let app = capped(db, 3).await;
    let run = app.client_with_scope(Scope::Run, None).await;
    let attempts = (0..10).map(|_| submit_as(&app, &run));
    let responses = futures::future::join_all(attempts).await;
    let created = responses
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    assert_eq!(created, 3);
    assert_eq!(app.count("runs").await, 3);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn annotations_and_scheduling_that_weaken_the_sandbox_are_422_at_every_door(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let run = app.client_with_scope(Scope::Run, None).await;
    let template = with(json!({
        "annotations": {
            "container.apparmor.security.beta.kubernetes.io/main": "unconfined",
            "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
            "k8s.v1.cni.cncf.io/networks": "host-net"
        },
        "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}
    }));
    let apparmor = "template.annotations.container.apparmor.security.beta.kubernetes.io/main";
    let body = refused_ad_hoc(&app, &run, &template, apparmor).await;
    let fields = fields(&body);
    for field in [
        "template.annotations.seccomp.security.alpha.kubernetes.io/pod",
        "template.annotations.k8s.v1.cni.cncf.io/networks",
        "template.tolerations[0].key",
        "template.nodeSelector.node-role.kubernetes.io/control-plane",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} not in {body}");
    }
    let task = app
        .put_json("/v1/tasks/t", &json!({ "template": template }))
        .await;
    assert_problem(
        task,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.tolerations[0].key"),
    )
    .await;
    assert_eq!(app.count("runs").await, 0);
    assert_eq!(app.count("tasks").await, 0);

    let ordinary = with(json!({
        "annotations": {"example.com/owner": "team-a"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"disk": "ssd"}
    }));
    app.submit(&ordinary).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_idempotency_key_belongs_to_its_caller(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let alice = app.client_with_scope(Scope::Run, None).await;
    let mallory = app.client_with_scope(Scope::Run, None).await;
    let post = |client: &reqwest::Client, template: Value| {
        client
            .post(app.url("/v1/runs"))
            .header("idempotency-key", "deploy-42")
            .json(&json!({ "template": template }))
            .send()
    };
    let first = post(&alice, calculatepi()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    // Another caller with the same key and body gets its own run, not Alice's answer...
    let other = post(&mallory, calculatepi()).await.unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
    // ...and cannot block her key with another body either.
    let different = with(json!({"args": ["x"]}));
    assert_eq!(
        post(&mallory, different).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Alice still gets her own answer replayed.
    let again = post(&alice, calculatepi()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.count("runs").await, 2);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn listing_triggers_of_a_missing_task_is_404(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let missing = app.get("/v1/tasks/nope/triggers").await;
    assert_problem(missing, StatusCode::NOT_FOUND, None).await;
    app.put_task("there", &json!({ "template": calculatepi() }))
        .await;
    let empty = app.get("/v1/tasks/there/triggers").await;
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(empty.json::<Value>().await.unwrap(), json!([]));
}

/// Collects everything the service logs, formatted as the text log format writes it.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn install() -> CapturedLogs {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .try_init()
            .expect("this test binary installs one subscriber");
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn anonymous_webhook_ids_cannot_forge_log_lines_or_send_terminal_escapes(db: PgPool) {
    let logs = CapturedLogs::install();
    let app = TestApp::spawn(db).await;
    let forged = "x%0A2026-12-03T00:00:00.000000Z  INFO forged: token created for mallory%1B[2J";
    let response = app
        .anonymous
        .post(app.url(&format!("/v1/hooks/{forged}")))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let text = logs.text();
    assert!(
        text.contains("webhook delivery refused"),
        "the refusal is logged: {text}"
    );
    assert!(
        text.lines()
            .all(|line| !line.starts_with("2026-12-03T00:00:00")),
        "a forged line: {text}"
    );
    assert!(!text.contains('\u{1b}'), "a raw terminal escape: {text:?}");
    assert!(
        text.contains(r"x\n2026-12-03"),
        "the id is logged, escaped: {text}"
    );
}

/// Reads `response`'s body until it ends, and returns it; panics if it has not ended within
/// `within`.
async fn ends_within(response: reqwest::Response, within: std::time::Duration) -> String {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    tokio::time::timeout(within, async {
        while let Some(Ok(chunk)) = body.next().await {
            text.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("the stream ended");
    String::from_utf8_lossy(&text).into_owned()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn revoking_a_token_ends_the_streams_it_opened(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let run = app.submit(&calculatepi()).await;
    let created: Value = app
        .post_json("/v1/tokens", &json!({"name": "watcher", "scope": "read"}))
        .await
        .json()
        .await
        .unwrap();
    let watcher = client_for(created["token"].as_str().unwrap());
    let events = watcher.get(app.url("/v1/events")).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    // The run is never launched here, so following its log waits for as long as it is open.
    let log_url = app.url(&format!(
        "/v1/runs/{}/logs?follow=true",
        run["id"].as_str().unwrap()
    ));
    let log = watcher.get(&log_url).send().await.unwrap();
    assert_eq!(log.status(), StatusCode::OK);
    let log_events = watcher
        .get(&log_url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(log_events.status(), StatusCode::OK);
    let other = app.client_with_scope(Scope::Read, None).await;
    let unrelated = other.get(app.url("/v1/events")).send().await.unwrap();

    let revoke = app
        .http
        .delete(app.url(&format!("/v1/tokens/{}", created["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);

    let bound = std::time::Duration::from_secs(3);
    ends_within(events, bound).await;
    ends_within(log, bound).await;
    let sse = ends_within(log_events, bound).await;
    assert!(
        !sse.contains("event: end"),
        "a revoked stream does not claim the log ended: {sse}"
    );
    // Another token's stream goes on.
    let mut body = unrelated.bytes_stream();
    use futures::StreamExt;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), body.next())
            .await
            .is_err(),
        "another token's stream stays open"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn unauthenticated_traffic_is_rate_limited_per_address(db: PgPool) {
    let app = TestApp::spawn_with(
        db,
        TestOptions {
            anonymous_rate_limit: Some((1, 3)),
            ..Default::default()
        },
    )
    .await;
    let mut statuses = Vec::new();
    for path in [
        "/openapi.json",
        "/v1/runs",
        "/openapi.json",
        "/openapi.json",
    ] {
        statuses.push(
            app.anonymous
                .get(app.url(path))
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let limited = app.anonymous.get(app.url("/v1/runs")).send().await.unwrap();
    assert_rate_limited(limited).await;
    // Guessing tokens counts too.
    let guess = client_for("vfi_not-a-token");
    let guessed = guess.get(app.url("/v1/runs")).send().await.unwrap();
    assert_eq!(guessed.status(), StatusCode::TOO_MANY_REQUESTS);

    // The probes stay reachable, and callers with a valid token are not counted here.
    let probe = app.anonymous.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    assert_eq!(app.get("/v1/runs").await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn metrics_need_a_token_that_may_see_every_task_unless_made_public(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    assert_eq!(
        app.anonymous
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let one_task = app.client_with_scope(Scope::Read, Some(&["a"])).await;
    let denied = one_task.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(denied, StatusCode::FORBIDDEN, None).await;
    let reader = app.client_with_scope(Scope::Read, None).await;
    let scraped = reader.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped.text().await.unwrap().contains("# TYPE"));

    let public = TestApp::spawn_with(
        db,
        TestOptions {
            metrics_public: true,
            ..Default::default()
        },
    )
    .await;
    let open = public
        .anonymous
        .get(public.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
}
