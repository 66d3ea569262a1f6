//! Webhook triggers: real-shaped deliveries from GitHub, GitLab and Gitea, signed with the
//! trigger's secret, start runs carrying the event's ref and SHA; anything unsigned, tampered or
//! replayed starts nothing.

mod common;

use common::{assert_problem, calculatepi, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use vfi_orchestrator::domain::webhook::sign;

const SECRET: &str = "It's a Secret to Everybody";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Defines task `render` and a trigger on it; returns the trigger's hook path.
async fn trigger(app: &TestApp, provider: &str, events: Value, refs: Value) -> String {
    app.put_task("render", &json!({"template": calculatepi()}))
        .await;
    let response = app
        .put_json(
            &format!("/v1/tasks/render/triggers/{provider}"),
            &json!({"provider": provider, "secret": SECRET, "events": events, "refs": refs}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let trigger: Value = response.json().await.unwrap();
    trigger["hookPath"].as_str().unwrap().to_string()
}

async fn deliver(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .anonymous
        .post(app.url(path))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(body).send().await.unwrap()
}

fn github(event: &str, delivery: &str, secret: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("x-github-event", event.to_string()),
        ("x-github-delivery", delivery.to_string()),
        (
            "x-hub-signature-256",
            format!("sha256={}", sign(secret, body)),
        ),
    ]
}

fn env_of(run: &Value) -> std::collections::HashMap<String, String> {
    run["template"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_signed_github_push_starts_a_run_with_the_ref_and_sha_in_its_environment(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push"]), json!(["main"])).await;
    let body = fixture("github-push.json");

    let response = deliver(&app, &hook, &github("push", "d-1", SECRET, &body), body).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["outcome"], "started");
    let run = &answer["run"];
    assert_eq!(run["trigger"], "webhook");
    assert_eq!(run["task"], "render");
    let env = env_of(run);
    assert_eq!(env["VFI_GIT_REF"], "refs/heads/main");
    assert_eq!(
        env["VFI_GIT_SHA"],
        "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    );
    assert_eq!(env["VFI_GIT_REPOSITORY"], "octo-org/render-pipeline");
    assert_eq!(
        env["VFI_GIT_CLONE_URL"],
        "https://github.com/octo-org/render-pipeline.git"
    );
    assert_eq!(env["VFI_GIT_EVENT"], "push");
    assert_eq!(env["VFI_GIT_SENDER"], "octocat");
    assert_eq!(env["VFI_GIT_DELIVERY"], "d-1");
    assert_eq!(
        run["template"]["command"],
        calculatepi()["command"],
        "payload values never reach the command"
    );
    let stored: Value = app
        .get(&format!("/v1/runs/{}", run["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&stored, run);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn gitlab_and_gitea_pushes_start_runs_with_their_ref_and_sha(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let gitlab = trigger(&app, "gitlab", json!(["push"]), json!(["release/*"])).await;
    let body = fixture("gitlab-push.json");
    let headers = [
        ("x-gitlab-event", "Push Hook".to_string()),
        (
            "x-gitlab-event-uuid",
            "4f8c2d2e-0000-4000-8000-000000000001".to_string(),
        ),
        ("x-gitlab-token", SECRET.to_string()),
    ];
    let response = deliver(&app, &gitlab, &headers, body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let env = env_of(&answer["run"]);
    assert_eq!(env["VFI_GIT_REF"], "refs/heads/release/2.1");
    assert_eq!(
        env["VFI_GIT_SHA"],
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
    assert_eq!(env["VFI_GIT_REPOSITORY"], "mike/diaspora");
    assert_eq!(env["VFI_GIT_SENDER"], "jsmith");
    assert_eq!(env["VFI_GIT_PROVIDER"], "gitlab");

    let gitea = app
        .put_json(
            "/v1/tasks/render/triggers/gitea",
            &json!({"provider": "gitea", "secret": SECRET}),
        )
        .await;
    let gitea: Value = gitea.json().await.unwrap();
    let body = fixture("gitea-push.json");
    let headers = [
        ("x-gitea-event", "push".to_string()),
        (
            "x-gitea-delivery",
            "9e3d1b52-0000-4000-8000-000000000002".to_string(),
        ),
        ("x-gitea-signature", sign(SECRET, &body)),
    ];
    let response = deliver(&app, gitea["hookPath"].as_str().unwrap(), &headers, body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let env = env_of(&answer["run"]);
    assert_eq!(env["VFI_GIT_REF"], "refs/heads/develop");
    assert_eq!(
        env["VFI_GIT_SHA"],
        "bffeb74224043ba2feb48d137756c8a9331c449a"
    );
    assert_eq!(
        env["VFI_GIT_CLONE_URL"],
        "http://localhost:3000/gitea/webhooks.git"
    );
    assert_eq!(app.count("runs").await, 2);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn tampered_wrongly_signed_or_unsigned_deliveries_are_401_and_start_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push"]), json!([])).await;
    let body = fixture("github-push.json");
    let mut tampered = body.clone();
    let at = tampered.windows(4).position(|w| w == b"main").unwrap();
    tampered[at..at + 4].copy_from_slice(b"prod");

    let attempts = [
        (
            "tampered body",
            github("push", "d-1", SECRET, &body),
            tampered,
        ),
        (
            "wrong secret",
            github("push", "d-2", "not the trigger's secret", &body),
            body.clone(),
        ),
        (
            "missing signature",
            vec![
                ("x-github-event", "push".into()),
                ("x-github-delivery", "d-3".into()),
            ],
            body.clone(),
        ),
        (
            "malformed signature",
            vec![
                ("x-github-event", "push".into()),
                ("x-hub-signature-256", "sha256=zz".into()),
            ],
            body.clone(),
        ),
    ];
    let mut answers = Vec::new();
    for (what, headers, payload) in attempts {
        let response = deliver(&app, &hook, &headers, payload).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        answers.push(assert_problem(response, StatusCode::UNAUTHORIZED, None).await);
    }
    let gitlab = app
        .put_json(
            "/v1/tasks/render/triggers/gl",
            &json!({"provider": "gitlab", "secret": SECRET}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let wrong_token = [
        ("x-gitlab-event", "Push Hook".to_string()),
        ("x-gitlab-token", "It's a Secret to Everybody!".to_string()),
    ];
    let response = deliver(
        &app,
        gitlab["hookPath"].as_str().unwrap(),
        &wrong_token,
        fixture("gitlab-push.json"),
    )
    .await;
    answers.push(assert_problem(response, StatusCode::UNAUTHORIZED, None).await);
    let unknown = "/v1/hooks/00000000-0000-4000-8000-000000000000";
    let response = deliver(
        &app,
        unknown,
        &github("push", "d-4", SECRET, &body),
        body.clone(),
    )
    .await;
    answers.push(assert_problem(response, StatusCode::UNAUTHORIZED, None).await);

    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "every refusal is the same fixed answer: {answers:#?}"
    );
    assert_eq!(app.count("runs").await, 0);
    assert_eq!(app.count("webhook_deliveries").await, 0);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_replayed_delivery_returns_the_run_it_started_and_starts_no_other(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push"]), json!([])).await;
    let body = fixture("github-push.json");
    let headers = github(
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        SECRET,
        &body,
    );

    let first = deliver(&app, &hook, &headers, body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let (a, b) = tokio::join!(
        deliver(&app, &hook, &headers, body.clone()),
        deliver(&app, &hook, &headers, body.clone())
    );
    for replay in [a, b] {
        assert_eq!(replay.status(), StatusCode::OK);
        let replay: Value = replay.json().await.unwrap();
        assert_eq!(replay["outcome"], "duplicate");
        assert_eq!(replay["run"]["id"], first["run"]["id"]);
    }
    assert_eq!(app.count("runs").await, 1);

    let other = github("push", "another-delivery", SECRET, &body);
    assert_eq!(
        deliver(&app, &hook, &other, body).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.count("runs").await, 2);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn concurrent_first_deliveries_of_the_same_event_start_one_run(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push"]), json!([])).await;
    let body = fixture("github-push.json");
    let headers = github("push", "same-delivery", SECRET, &body);

    let answers =
        futures::future::join_all((0..4).map(|_| deliver(&app, &hook, &headers, body.clone())))
            .await;

    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.status()).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(app.count("runs").await, 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn pings_are_answered_and_unmatched_events_say_why_nothing_ran(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push"]), json!(["release/*"])).await;

    let ping = fixture("github-ping.json");
    let response = deliver(&app, &hook, &github("ping", "p-1", SECRET, &ping), ping).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "pong");

    let push = fixture("github-push.json");
    let response = deliver(
        &app,
        &hook,
        &github("push", "p-2", SECRET, &push),
        push.clone(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["outcome"], "ignored");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("refs/heads/main matches none"),
        "{answer}"
    );

    let response = deliver(
        &app,
        &hook,
        &github("issues", "p-3", SECRET, b"{}"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["outcome"],
        "ignored"
    );
    assert_eq!(app.count("runs").await, 0);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn trigger_secrets_are_never_returned_and_hook_urls_survive_replaces(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push", "tag_push"]), json!(["main"])).await;

    let replaced = app
        .put_json(
            "/v1/tasks/render/triggers/github",
            &json!({"provider": "github", "secret": "a-brand-new-secret-value", "refs": ["*"]}),
        )
        .await;
    assert_eq!(replaced.status(), StatusCode::OK);
    let replaced = replaced.text().await.unwrap();
    let read = app
        .get("/v1/tasks/render/triggers/github")
        .await
        .text()
        .await
        .unwrap();
    let listed = app
        .get("/v1/tasks/render/triggers")
        .await
        .text()
        .await
        .unwrap();
    for text in [&replaced, &read, &listed] {
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains(&hook), "the hook path stays the same: {text}");
    }

    let bad = app
        .put_json(
            "/v1/tasks/render/triggers/bad",
            &json!({"provider": "github", "secret": "short", "refs": ["[unclosed"]}),
        )
        .await;
    let problem = assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, Some("secret")).await;
    assert!(
        problem["errors"].to_string().contains("refs[0]"),
        "{problem}"
    );
    let no_task = app
        .put_json(
            "/v1/tasks/nope/triggers/x",
            &json!({"provider": "gitea", "secret": SECRET}),
        )
        .await;
    assert_problem(no_task, StatusCode::NOT_FOUND, None).await;

    let deleted = app
        .http
        .delete(app.url("/v1/tasks/render/triggers/github"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let body = fixture("github-push.json");
    let response = deliver(
        &app,
        &hook,
        &github("push", "x", "a-brand-new-secret-value", &body),
        body,
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a deleted trigger's URL is dead"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_delivery_for_a_task_beyond_today_s_limits_is_422_and_starts_nothing(db: PgPool) {
    // The task and its trigger were saved while the installation had no limits...
    let before = TestApp::spawn(db.clone()).await;
    let hook = trigger(&before, "github", json!(["push"]), json!([])).await;
    let mut big = calculatepi();
    big["completions"] = json!(5000);
    before.put_task("render", &json!({ "template": big })).await;
    // ...and the delivery arrives after they were set.
    let limits = vfi_orchestrator::domain::policy::RunLimits {
        max_completions: Some(1000),
        ..Default::default()
    };
    let app = TestApp::spawn_with(
        db,
        common::TestOptions {
            run_limits: limits,
            ..Default::default()
        },
    )
    .await;
    let body = fixture("github-push.json");
    let response = deliver(&app, &hook, &github("push", "d-9", SECRET, &body), body).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.completions"),
    )
    .await;
    assert_eq!(app.count("runs").await, 0);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_nul_in_a_delivered_ref_is_422_naming_the_env_value(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let hook = trigger(&app, "github", json!(["push"]), json!([])).await;
    let body = String::from_utf8(fixture("github-push.json"))
        .unwrap()
        .replace("\"refs/heads/main\"", "\"refs/heads/ma\\u0000in\"")
        .into_bytes();
    let response = deliver(&app, &hook, &github("push", "d-0", SECRET, &body), body).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, None).await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert!(
        fields
            .iter()
            .all(|f| f.starts_with("template.env[") && f.ends_with("].value"))
            && !fields.is_empty(),
        "{problem}"
    );
    assert_eq!(app.count("runs").await, 0);
}
