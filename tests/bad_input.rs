//! Bad input of every kind gets a clear problem+json 4xx naming the field, and leaves nothing
//! behind in the database.

mod common;

use common::{assert_problem, calculatepi, TestApp, MAX_BODY_BYTES};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.count("runs").await, 0);
    assert_eq!(app.count("tasks").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn malformed_json_is_a_400(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let response = app
        .send_raw(
            Method::POST,
            "/v1/runs",
            "application/json",
            b"{\"template\": {".to_vec(),
        )
        .await;
    let body = assert_problem(response, StatusCode::BAD_REQUEST, None).await;
    assert!(
        body["detail"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let trailing = app
        .send_raw(
            Method::POST,
            "/v1/runs",
            "application/json",
            b"{} {}".to_vec(),
        )
        .await;
    assert_problem(trailing, StatusCode::BAD_REQUEST, None).await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn unknown_fields_are_refused_by_name(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let mut template = calculatepi();
    template["privileged"] = json!(true);
    let response = app
        .post_json("/v1/runs", &json!({"template": template}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.privileged"),
    )
    .await;

    let response = app
        .post_json(
            "/v1/runs",
            &json!({"template": calculatepi(), "urgency": 1}),
        )
        .await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some("urgency")).await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn wrong_types_name_the_field(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let mut template = calculatepi();
    template["completions"] = json!("twenty");
    let response = app
        .post_json("/v1/runs", &json!({"template": template}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.completions"),
    )
    .await;

    let mut template = calculatepi();
    template["env"] = json!([{"name": "A", "value": "1"}, {"name": "B", "value": 2}]);
    let response = app
        .post_json("/v1/runs", &json!({"template": template}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.env[1].value"),
    )
    .await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn negative_parallelism_is_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let mut template = calculatepi();
    template["parallelism"] = json!(-1);
    let response = app
        .http
        .post(app.url("/v1/runs"))
        .header("Idempotency-Key", "k")
        .json(&json!({"template": template}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.parallelism"),
    )
    .await;
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("greater than or equal to 0"));
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn invalid_names_are_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let response = app
        .put_json("/v1/tasks/UPPER", &json!({"template": calculatepi()}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("name")).await;
    let long = "a".repeat(51);
    let response = app
        .post_json(&format!("/v1/tasks/{long}/runs"), &json!({}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("name")).await;
    let mut template = calculatepi();
    template["namespace"] = json!("Team_A");
    let response = app
        .post_json("/v1/runs", &json!({"template": template}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.namespace"),
    )
    .await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_5_mb_body_is_a_413(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let huge = json!({"template": {"image": "perl:5.34.0", "args": ["x".repeat(5 * 1024 * 1024)]}});
    let response = app.post_json("/v1/runs", &huge).await;
    let body = assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, None).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains(&MAX_BODY_BYTES.to_string()));
    let response = app.put_json("/v1/tasks/big", &huge).await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, None).await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_body_that_is_not_json_is_a_415(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let response = app
        .send_raw(
            Method::POST,
            "/v1/runs",
            "text/plain",
            b"image=perl".to_vec(),
        )
        .await;
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, None).await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn unknown_routes_and_methods_are_problems_too(db: PgPool) {
    let app = TestApp::spawn(db).await;
    assert_problem(app.get("/v1/nothing").await, StatusCode::NOT_FOUND, None).await;
    let response = app.http.patch(app.url("/v1/runs")).send().await.unwrap();
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, None).await;
}

/// A real API server answers 422 to these pod-template labels (they must equal the Job's own
/// name and uid: `ValidateGeneratedSelector`, kubernetes/kubernetes
/// pkg/apis/batch/validation/validation.go), so every door refuses them at submission.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn labels_the_job_controller_owns_are_refused_at_every_door(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for key in [
        "job-name",
        "controller-uid",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/controller-uid",
    ] {
        let mut template = calculatepi();
        template["labels"] = json!({ key: "x" });
        let field = format!("template.labels.{key}");
        let response = app
            .post_json("/v1/runs", &json!({"template": template}))
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(&field)).await;
        let response = app
            .put_json("/v1/tasks/pi", &json!({"template": template}))
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(&field)).await;
    }
    assert_nothing_stored(&app).await;

    app.put_task("pi", &json!({"template": calculatepi()}))
        .await;
    let response = app
        .post_json("/v1/tasks/pi/runs", &json!({"labels": {"job-name": "x"}}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("labels.job-name"),
    )
    .await;
    assert_eq!(app.count("runs").await, 0);
}

/// An Indexed Job's pods take `<job name>-<index>` as hostname, which the API server requires
/// to be a 63-character DNS label (`ValidateJob`, pkg/apis/batch/validation/validation.go).
/// Job names are shortened to fit; only a prefix that leaves no room is refused.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_indexed_run_whose_hostnames_cannot_fit_is_refused_on_completions(db: PgPool) {
    let app = TestApp::spawn_with(
        db,
        common::TestOptions {
            job_name_prefix: "a-very-long-installation-prefix-1234-".into(),
            ..Default::default()
        },
    )
    .await;
    let mut template = calculatepi();
    template["completionMode"] = json!("Indexed");
    template["completions"] = json!(100000);
    for (path, body) in [
        ("/v1/runs", json!({"template": template})),
        ("/v1/tasks/pi", json!({"template": template})),
    ] {
        let response = if path == "/v1/runs" {
            app.post_json(path, &body).await
        } else {
            app.put_json(path, &body).await
        };
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("template.completions"),
        )
        .await;
    }
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn nul_in_any_text_is_a_422_naming_the_field(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let cases = [
        (
            "/v1/runs",
            json!({"template": {"image": "x", "command": ["sh", "-c", "echo \u{0}"]}}),
            "template.command[2]",
        ),
        (
            "/v1/runs",
            json!({"template": {"image": "x", "args": ["\u{0}"]}}),
            "template.args[0]",
        ),
        (
            "/v1/runs",
            json!({"template": {"image": "x", "env": [{"name": "A", "value": "a\u{0}b"}]}}),
            "template.env[0].value",
        ),
        (
            "/v1/tokens",
            json!({"name": "ci\u{0}", "scope": "read"}),
            "name",
        ),
    ];
    for (path, body, field) in cases {
        let response = app.post_json(path, &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{problem}"
        );
    }
    let task = app
        .put_json(
            "/v1/tasks/t",
            &json!({"description": "a\u{0}", "template": calculatepi()}),
        )
        .await;
    assert_problem(task, StatusCode::UNPROCESSABLE_ENTITY, Some("description")).await;
    assert_nothing_stored(&app).await;
    assert_eq!(
        app.count("api_tokens").await,
        1,
        "only the test's admin token"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_query_parameter_given_twice_is_a_problem_naming_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let response = app.get("/v1/events?task=a&task=b").await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("task")).await;
    let response = app.get("/v1/runs?limit=5&limit=6").await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("limit")).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_path_segment_that_is_not_utf8_is_a_problem(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for path in [
        "/v1/runs/%FF",
        "/v1/tasks/%FF",
        "/v1/tasks/a/triggers/%FF",
        "/v1/tokens/%FF",
    ] {
        let method = if path.starts_with("/v1/tokens") {
            Method::DELETE
        } else {
            Method::GET
        };
        let response = app
            .http
            .request(method, app.url(path))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, Some("path")).await;
    }
    let response = app
        .anonymous
        .post(app.url("/v1/hooks/%FF"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, Some("path")).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn over_http2_an_oversized_body_is_a_413_not_a_reset_stream(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let token = common::new_token(&db, vfi_orchestrator::domain::Scope::Admin, None).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let huge = json!({"template": {"image": "perl:5.34.0", "args": ["x".repeat(5 * 1024 * 1024)]}});
    let response = h2
        .post(app.url("/v1/runs"))
        .bearer_auth(&token)
        .json(&huge)
        .send()
        .await
        .expect("an answer, not a reset stream");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, None).await;
    // Without a Content-Length the limit is only found while reading: 64 MiB in 64 KiB frames.
    let chunks = futures::stream::iter(
        (0..1024).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 * 1024]))),
    );
    let response = h2
        .post(app.url("/v1/runs"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("an answer, not a reset stream");
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, None).await;
    assert_nothing_stored(&app).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn nul_in_query_parameters_is_a_400_naming_the_parameter(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let run = app.submit(&calculatepi()).await;
    let id = run["id"].as_str().unwrap();
    // base64url of "a\0": a cursor this server never issued.
    for (path, field) in [
        ("/v1/tasks?cursor=YQA".to_string(), "cursor"),
        (format!("/v1/runs/{id}/logs?pod=a%00b"), "pod"),
        ("/v1/events?task=a%00".to_string(), "task"),
    ] {
        let response = app.get(&path).await;
        assert_problem(response, StatusCode::BAD_REQUEST, Some(field)).await;
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn curl_over_http2_gets_the_413_of_an_oversized_body(db: PgPool) {
    // curl reports a stream reset (exit 92) instead of the answer when the server leaves the
    // body it refuses unread; the server reads and discards a bounded amount instead.
    let app = TestApp::spawn(db.clone()).await;
    let token = common::new_token(&db, vfi_orchestrator::domain::Scope::Admin, None).await;
    let body = std::env::temp_dir().join(format!("vfi-big-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&body, vec![b' '; 5 * 1024 * 1024]).unwrap();
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-X", "POST"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(app.url("/v1/runs"))
        .output()
        .await
        .expect("curl runs");
    std::fs::remove_file(&body).ok();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {:?} {text}",
        output.status
    );
    assert!(text.ends_with("413 2"), "{text}");
    assert!(text.contains("problem:body-too-large"), "{text}");
    assert_nothing_stored(&app).await;
}
