//! Only those who hold the right token may start, see or change anything: every operation in
//! the OpenAPI document is checked, along with scopes, task limits, token management, rate
//! limits, the queue cap, the run policy, CORS and the connection limits.

mod common;

use common::{assert_problem, assert_rate_limited, calculatepi, client_for, TestApp, TestOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vfi_orchestrator::domain::Scope;
use vfi_orchestrator::http::server::ServerLimits;

/// Every operation of the served document: (method, path template, scopes its bearer
/// requirement names, or `None` when it declares none).
async fn operations(app: &TestApp) -> Vec<(Method, String, Option<Vec<String>>)> {
    let doc: Value = app
        .anonymous
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let scopes = operation["security"].as_array().and_then(|requirements| {
                requirements
                    .iter()
                    .find_map(|r| r.get("bearer"))
                    .map(|scopes| {
                        scopes
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s.as_str().unwrap().to_string())
                            .collect()
                    })
            });
            operations.push((method, path.clone(), scopes));
        }
    }
    assert!(
        operations.len() > 15,
        "the walk sees the whole API: {operations:?}"
    );
    operations
}

fn concrete(path: &str, run_id: &str) -> String {
    path.replace("{name}", "pi")
        .replace("{trigger}", "push")
        .replace("{id}", run_id)
}

async fn send(
    client: &reqwest::Client,
    app: &TestApp,
    method: &Method,
    path: &str,
) -> reqwest::Response {
    let mut request = client.request(method.clone(), app.url(path));
    if *method == Method::POST || *method == Method::PUT {
        request = request
            .header("content-type", "application/json")
            .body("{}");
    }
    request.send().await.unwrap()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn every_operation_refuses_anonymous_callers_except_the_documented_open_ones(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    let run = app.start_task_run("pi", &json!({})).await;
    let run_id = run["id"].as_str().unwrap();

    let mut open = BTreeSet::new();
    for (method, path, scopes) in operations(&app).await {
        match scopes {
            None => {
                open.insert(path);
            }
            Some(_) => {
                let response = send(&app.anonymous, &app, &method, &concrete(&path, run_id)).await;
                assert_eq!(
                    response
                        .headers()
                        .get("www-authenticate")
                        .map(|v| v.to_str().unwrap().starts_with("Bearer")),
                    Some(true),
                    "{method} {path}"
                );
                assert_problem(response, StatusCode::UNAUTHORIZED, None).await;
            }
        }
    }
    assert_eq!(
        open.into_iter().collect::<Vec<_>>(),
        ["/healthz", "/readyz", "/v1/hooks/{id}"],
        "only probes and webhooks (which check their signature) are open"
    );
    let unsigned = app
        .anonymous
        .post(app.url(&format!("/v1/hooks/{run_id}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let bogus = client_for("vfi_not-a-real-token");
    assert_problem(
        bogus.get(app.url("/v1/runs")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        None,
    )
    .await;
    assert_eq!(app.count("runs").await, 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_read_only_token_reads_but_cannot_start_cancel_or_change_anything(db: PgPool) {
    let app = TestApp::spawn(db).await;
    // Indexed, so that every read applies to it (`/indexes` is 422 for a run that is not).
    let mut template = calculatepi();
    template["completionMode"] = json!("Indexed");
    template["completions"] = json!(1);
    app.put_task("pi", &json!({"template": template})).await;
    let run = app.start_task_run("pi", &json!({})).await;
    let run_id = run["id"].as_str().unwrap();
    let reader = app.client_with_scope(Scope::Read, None).await;
    let runner = app.client_with_scope(Scope::Run, None).await;

    for (method, path, scopes) in operations(&app).await {
        let Some(scopes) = scopes else { continue };
        let target = concrete(&path, run_id);
        let as_reader = send(&reader, &app, &method, &target).await;
        if scopes == ["read"] {
            assert_eq!(
                method,
                Method::GET,
                "{path}: reading never changes anything"
            );
            assert_eq!(as_reader.status(), StatusCode::OK, "{method} {path}");
        } else {
            assert_problem(as_reader, StatusCode::FORBIDDEN, None).await;
        }
        if scopes == ["admin"] {
            let as_runner = send(&runner, &app, &method, &target).await;
            assert_problem(as_runner, StatusCode::FORBIDDEN, None).await;
        }
    }

    let unchanged: Value = app
        .get(&format!("/v1/runs/{run_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        unchanged["status"], "queued",
        "the reader cancelled nothing"
    );
    assert_eq!(app.count("runs").await, 1, "the reader started nothing");
    assert_eq!(app.count("tasks").await, 1);
    assert_eq!(app.count("webhook_triggers").await, 0);
    assert_eq!(app.count("api_tokens").await, 3);

    let cancelled = runner
        .post(app.url(&format!("/v1/runs/{run_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cancelled.status(),
        StatusCode::OK,
        "run ⊃ read: a run token cancels"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_token_limited_to_a_task_reaches_only_that_task(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for task in ["mine", "theirs"] {
        app.put_task(task, &json!({"template": calculatepi()}))
            .await;
    }
    let theirs = app.start_task_run("theirs", &json!({})).await;
    let limited = app.client_with_scope(Scope::Run, Some(&["mine"])).await;

    let started = limited
        .post(app.url("/v1/tasks/mine/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::CREATED);
    let listed = limited
        .get(app.url("/v1/runs?task=mine"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);

    let refused = [
        limited
            .post(app.url("/v1/tasks/theirs/runs"))
            .send()
            .await
            .unwrap(),
        limited
            .get(app.url(&format!("/v1/runs/{}", theirs["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap(),
        limited.get(app.url("/v1/runs")).send().await.unwrap(),
        limited
            .post(app.url("/v1/runs"))
            .json(&json!({"template": calculatepi()}))
            .send()
            .await
            .unwrap(),
    ];
    for response in refused {
        assert_problem(response, StatusCode::FORBIDDEN, None).await;
    }
    assert_eq!(app.count("runs").await, 2);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn admins_create_tokens_that_are_shown_once_stored_hashed_and_revocable(db: PgPool) {
    let app = TestApp::spawn(db).await;

    let created = app
        .post_json("/v1/tokens", &json!({"name": "ci", "scope": "run"}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("vfi_"));
    let ci = client_for(&token);
    assert_eq!(
        ci.get(app.url("/v1/runs")).send().await.unwrap().status(),
        StatusCode::OK
    );

    let listed = app.get("/v1/tokens").await.text().await.unwrap();
    assert!(
        listed.contains("\"ci\"") && !listed.contains(&token),
        "{listed}"
    );
    let (in_clear, by_hash): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE t::text LIKE '%' || $1 || '%'),
                count(*) FILTER (WHERE token_hash = sha256(convert_to($1, 'UTF8')))
         FROM api_tokens t",
    )
    .bind(&token)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (in_clear, by_hash),
        (0, 1),
        "only the token's SHA-256 is stored"
    );

    let invalid = app
        .post_json("/v1/tokens", &json!({"name": "", "scope": "root"}))
        .await;
    assert_problem(invalid, StatusCode::UNPROCESSABLE_ENTITY, Some("scope")).await;

    let id = created["id"].as_str().unwrap();
    let revoked = app
        .http
        .delete(app.url(&format!("/v1/tokens/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = ci.get(app.url("/v1/runs")).send().await.unwrap();
    assert_problem(after, StatusCode::UNAUTHORIZED, None).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_token_command_prints_a_token_that_the_api_accepts(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let server = std::env::var("DATABASE_URL").unwrap();
    let url = format!("{}/{database}", &server[..server.rfind('/').unwrap()]);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"))
        .args([
            "token",
            "create",
            "--name",
            "dashboard",
            "--scope",
            "read",
            "--task",
            "pi",
        ])
        .env("DATABASE_URL", url)
        .output()
        .unwrap();

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    let dashboard = client_for(&token);
    assert_eq!(
        dashboard
            .get(app.url("/v1/tasks/pi"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let write = dashboard
        .post(app.url("/v1/tasks/pi/runs"))
        .send()
        .await
        .unwrap();
    assert_problem(write, StatusCode::FORBIDDEN, None).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn flooding_one_token_gets_429s_while_another_token_is_still_served(db: PgPool) {
    let options = TestOptions {
        rate_limit: Some((1, 5)),
        ..Default::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    let flooder = app.client_with_scope(Scope::Read, None).await;
    let other = app.client_with_scope(Scope::Read, None).await;

    let mut limited = None;
    for _ in 0..20 {
        let response = flooder.get(app.url("/v1/tasks")).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    let limited = limited.expect("the flood is limited");
    assert_rate_limited(limited).await;

    assert_eq!(
        other
            .get(app.url("/v1/tasks"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_task_with_too_many_queued_runs_refuses_more(db: PgPool) {
    let options = TestOptions {
        max_queued_runs_per_task: 2,
        ..Default::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    app.put_task("other", &json!({"template": calculatepi()}))
        .await;
    let first = app.start_task_run("pi", &json!({})).await;
    app.start_task_run("pi", &json!({})).await;

    let third = app.post_json("/v1/tasks/pi/runs", &json!({})).await;
    let problem = assert_problem(third, StatusCode::TOO_MANY_REQUESTS, None).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("2 queued runs"),
        "{problem}"
    );
    let rerun = app
        .post_json(
            &format!("/v1/runs/{}/rerun", first["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_problem(rerun, StatusCode::TOO_MANY_REQUESTS, None).await;
    assert_eq!(app.count("runs").await, 2);

    app.start_task_run("other", &json!({})).await;
    let cancel = app
        .post_json(
            &format!("/v1/runs/{}/cancel", first["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), StatusCode::OK);
    app.start_task_run("pi", &json!({})).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn templates_reaching_outside_their_lane_are_refused_at_submission(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let outside = [
        (json!({"namespace": "kube-system"}), "template.namespace"),
        (
            json!({"serviceAccountName": "cluster-admin"}),
            "template.serviceAccountName",
        ),
        (json!({"hostNetwork": true}), "template.hostNetwork"),
        (
            json!({"securityContext": {"privileged": true}}),
            "template.securityContext",
        ),
    ];
    for (extra, field) in outside {
        let mut template = calculatepi();
        template
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let response = app
            .post_json("/v1/runs", &json!({"template": template}))
            .await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    let mut task = calculatepi();
    task["namespace"] = json!("kube-system");
    let response = app
        .put_json("/v1/tasks/escape", &json!({"template": task}))
        .await;
    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.namespace"),
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("allowed: default, batch"),
        "{problem}"
    );
    assert_eq!(app.count("runs").await + app.count("tasks").await, 0);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn with_authentication_disabled_anonymous_callers_may_do_anything(db: PgPool) {
    let options = TestOptions {
        auth_disabled: true,
        admin_token: false,
        ..Default::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    let created = app
        .anonymous
        .post(app.url("/v1/runs"))
        .json(&json!({"template": calculatepi()}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn browsers_get_cors_answers_only_for_configured_origins(db: PgPool) {
    let options = TestOptions {
        cors_origins: vec!["https://dash.example.com"],
        ..Default::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    let preflight = |origin: &'static str| {
        app.anonymous
            .request(Method::OPTIONS, app.url("/v1/runs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://dash.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let plain = TestApp::spawn(app.db.clone()).await;
    let response = plain
        .http
        .get(plain.url("/v1/runs"))
        .header("origin", "https://dash.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "no CORS unless configured"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn huge_headers_get_431_and_slow_clients_are_cut_off(db: PgPool) {
    let options = TestOptions {
        server: ServerLimits {
            header_read_timeout: Duration::from_millis(500),
            max_header_bytes: 16 * 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    let huge = app
        .http
        .get(app.url("/healthz"))
        .header("x-padding", "a".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let mut slow = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer)).await;
    assert!(
        closed.is_ok(),
        "the server closes a connection whose headers never finish"
    );
    assert!(!String::from_utf8_lossy(&buffer).contains("200 OK"));
}
