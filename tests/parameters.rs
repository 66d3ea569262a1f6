//! Typed task parameters (issue 18): what a client relies on. Bad definitions and bad values are
//! refused naming the field, and a refusal stores nothing; defaults apply; the run records the
//! values it ran with; the values reach the container as `VFI_PARAM_<NAME>` (seen by a real
//! process under kubesim's host runner), from the API, from webhook deliveries and from the
//! schedule; secret values never reach Postgres, API answers or logs.

mod common;

use chrono::{DateTime, Utc};
use common::service::{eventually, kubesim, logs, pods_of, ManualClock, RunnerKind, Service};
use common::{assert_problem, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use vfi_orchestrator::domain::webhook::sign;

const WAIT: Duration = Duration::from_secs(60);

/// A task whose container prints its parameters' env vars (host runner: a real `sh`).
fn printing(script: &str, parameters: Value) -> Value {
    json!({
        "template": {"image": "busybox", "command": ["sh", "-c", script]},
        "parameters": parameters,
    })
}

async fn put(service: &Service, name: &str, spec: &Value) -> reqwest::Response {
    service
        .http
        .put(service.url(&format!("/v1/tasks/{name}")))
        .json(spec)
        .send()
        .await
        .unwrap()
}

async fn runs_stored(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn bad_parameter_definitions_are_422_naming_the_field_and_store_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let cases = [
        (json!([{"name": "1target"}]), "parameters[0].name"),
        (json!([{"name": "tar-get"}]), "parameters[0].name"),
        (
            json!([{"name": "target"}, {"name": "target"}]),
            "parameters[1].name",
        ),
        (
            json!([{"name": "n", "type": "integer", "default": "many"}]),
            "parameters[0].default",
        ),
        (
            json!([{"name": "t", "type": "enum", "enum": ["dev"], "default": "prod"}]),
            "parameters[0].default",
        ),
        (
            json!([{"name": "t", "type": "enum", "enum": []}]),
            "parameters[0].enum",
        ),
        (
            json!([{"name": "t", "pattern": "(unclosed"}]),
            "parameters[0].pattern",
        ),
        (
            json!([{"name": "token", "type": "secret", "default": "x"}]),
            "parameters[0].default",
        ),
    ];
    for (parameters, field) in cases {
        let spec = json!({"template": {"image": "busybox"}, "parameters": parameters});
        let response = app.put_json("/v1/tasks/t", &spec).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
    let unknown_type =
        json!({"template": {"image": "busybox"}, "parameters": [{"name": "a", "type": "float"}]});
    let response = app.put_json("/v1/tasks/t", &unknown_type).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    assert_eq!(app.count("tasks").await, 0, "nothing stored");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_enum_parameter_refuses_other_values_applies_its_default_and_reaches_the_pod(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let spec = printing(
        "echo target=$VFI_PARAM_TARGET ref=$VFI_PARAM_REF count=$VFI_PARAM_COUNT",
        json!([
            {"name": "target", "type": "enum", "enum": ["dev", "staging"], "default": "staging",
             "description": "where to deploy"},
            {"name": "ref", "required": true, "pattern": "[a-z0-9/._-]+"},
            {"name": "count", "type": "integer", "minimum": 1, "maximum": 5, "default": 2}
        ]),
    );
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );

    let start = |params: Value| {
        let service = &service;
        async move {
            service
                .post("/v1/tasks/deploy/runs", &json!({"params": params}))
                .await
        }
    };
    let refused = start(json!({"target": "prod", "ref": "main"})).await;
    let body = assert_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("params.target"),
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "params.target");
    let missing = start(json!({})).await;
    assert_problem(
        missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("params.ref"),
    )
    .await;
    for (params, field) in [
        (json!({"ref": "main", "count": 9}), "params.count"),
        (json!({"ref": "main", "count": 1.5}), "params.count"),
        (json!({"ref": "Main Branch"}), "params.ref"),
        (json!({"ref": "main", "colour": "red"}), "params.colour"),
    ] {
        let response = start(params).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
    assert_eq!(
        runs_stored(&db).await,
        0,
        "a refused request stores nothing"
    );

    let response = start(json!({"ref": "main"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let run: Value = response.json().await.unwrap();
    assert_eq!(
        run["params"],
        json!({"target": "staging", "ref": "main", "count": 2}),
        "the run records the values it runs with, defaults applied"
    );
    let id = run["id"].as_str().unwrap();
    service.wait_for(id, "succeeded", WAIT).await;
    assert_eq!(
        logs(&service, id, "").await,
        "target=staging ref=main count=2\n"
    );
    let pod = pods_of(&sim.client(), id).await.remove(0);
    let env = pod.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "VFI_PARAM_TARGET" && e.value.as_deref() == Some("staging")),
        "{env:?}"
    );
    assert_eq!(service.run(id).await["params"], run["params"]);
    let listed = service.get("/v1/runs?task=deploy").await;
    assert_eq!(listed["items"][0]["params"], run["params"]);

    // A rerun reuses the values; one given replaces its own.
    let rerun: Value = service
        .post(
            &format!("/v1/runs/{id}/rerun"),
            &json!({"params": {"target": "dev"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        rerun["params"],
        json!({"target": "dev", "ref": "main", "count": 2})
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_webhook_push_maps_ref_and_sha_into_parameters_the_pod_sees(db: PgPool) {
    const SECRET: &str = "It's a Secret to Everybody";
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let spec = printing(
        "echo ref=$VFI_PARAM_GIT_REF sha=$VFI_PARAM_SHA pr=$VFI_PARAM_PR",
        json!([
            {"name": "git_ref", "required": true},
            {"name": "sha", "required": true, "pattern": "[0-9a-f]{40}"},
            {"name": "pr", "default": "none"}
        ]),
    );
    assert_eq!(
        put(&service, "build", &spec).await.status(),
        StatusCode::CREATED
    );
    let bad = service
        .http
        .put(service.url("/v1/tasks/build/triggers/github"))
        .json(&json!({"provider": "github", "secret": SECRET,
                      "params": {"git_ref": "{{head_commit.message}}"}}))
        .send()
        .await
        .unwrap();
    assert_problem(
        bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("params.git_ref"),
    )
    .await;
    let trigger: Value = service
        .http
        .put(service.url("/v1/tasks/build/triggers/github"))
        .json(&json!({"provider": "github", "secret": SECRET, "params": {
            "git_ref": "{{ref}}", "sha": "{{sha}}", "pr": "{{pull_request.number}}"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trigger["params"]["sha"], "{{sha}}");
    let body = std::fs::read(format!(
        "{}/tests/fixtures/webhooks/github-push.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let answer: Value = reqwest::Client::new()
        .post(service.url(trigger["hookPath"].as_str().unwrap()))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-params")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", sign(SECRET, &body)),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["outcome"], "started", "{answer}");
    let id = answer["run"]["id"].as_str().unwrap();
    service.wait_for(id, "succeeded", WAIT).await;
    assert_eq!(
        logs(&service, id, "").await,
        "ref=refs/heads/main sha=0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c pr=none\n",
        "a push has no pull request number: the default applies"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_schedules_parameter_values_and_its_time_reach_its_runs(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let clock = ManualClock::new(utc("2026-01-05T10:00:30Z"));
    let service =
        Service::start_with_clock(db.clone(), sim.client(), &[], Some(clock.clone())).await;
    let mut spec = printing(
        "echo target=$VFI_PARAM_TARGET at=$VFI_SCHEDULED_TIME",
        json!([{"name": "target", "type": "enum", "enum": ["dev", "nightly"], "required": true}]),
    );
    spec["schedule"] = json!("* * * * *");
    spec["scheduleParams"] = json!({"target": "prod"});
    let refused = put(&service, "nightly", &spec).await;
    assert_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("scheduleParams.target"),
    )
    .await;
    spec["scheduleParams"] = json!({"target": "nightly"});
    assert_eq!(
        put(&service, "nightly", &spec).await.status(),
        StatusCode::CREATED
    );

    // The scheduler must have seen the task before the clock moves past 10:01 (it starts from
    // where its clock is when it first sees a task).
    eventually("the scheduler to see the task", WAIT, || {
        let db = db.clone();
        async move {
            let considered: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT considered_until FROM schedule_cursors WHERE task_name = 'nightly'",
            )
            .fetch_optional(&db)
            .await
            .unwrap();
            considered.is_some()
        }
    })
    .await;
    clock.set(utc("2026-01-05T10:01:10Z"));
    let query = "SELECT id FROM runs WHERE task_name = 'nightly' AND trigger = 'schedule'";
    eventually("the scheduled run", WAIT, || {
        let db = db.clone();
        async move {
            let found: Option<uuid::Uuid> =
                sqlx::query_scalar(query).fetch_optional(&db).await.unwrap();
            found.is_some()
        }
    })
    .await;
    let id: uuid::Uuid = sqlx::query_scalar(query).fetch_one(&db).await.unwrap();
    let id = id.to_string();
    service.wait_for(&id, "succeeded", WAIT).await;
    assert_eq!(
        logs(&service, &id, "").await,
        "target=nightly at=2026-01-05T10:01:00Z\n"
    );
    assert_eq!(
        service.run(&id).await["params"],
        json!({"target": "nightly"})
    );
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Lines of `x`s ending in the secret, at lengths chosen so that whatever the length of the
/// kubelet's timestamp (RFC 3339 with trimmed nanoseconds, 21 to 36 bytes with its space), one
/// of them has the secret straddling the 64 KiB cut of a long line.
const STRADDLING: &str = r#"sleep 1; echo "token=$VFI_PARAM_TOKEN"; for n in 65488 65491 65494 65497 65500 65503 65506 65509 65512 65515; do head -c $n /dev/zero | tr '\0' x; echo "$VFI_PARAM_TOKEN end"; done; sleep 1"#;

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_secret_parameter_never_reaches_postgres_the_api_or_the_logs_and_goes_with_its_job(
    db: PgPool,
) {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams};

    const VALUE: &str = "hunter2-xyz";
    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db.clone(), client.clone(), &[]).await;
    let spec = printing(
        STRADDLING,
        json!([{"name": "token", "type": "secret", "required": true}]),
    );
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );

    let response = service
        .post(
            "/v1/tasks/deploy/runs",
            &json!({"params": {"token": VALUE}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["params"], json!({"token": "***"}));
    let id = run["id"].as_str().unwrap().to_string();

    // The live stream, as Server-Sent Events, while the pod runs.
    service.wait_for(&id, "running", WAIT).await;
    let live = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs?follow=true")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let live = tokio::time::timeout(WAIT, live.text())
        .await
        .unwrap()
        .unwrap();
    service.wait_for(&id, "succeeded", WAIT).await;
    let head = &live[..300.min(live.len())];
    assert!(
        live.contains("token=***"),
        "the live log masks the value: {head}"
    );
    assert!(
        !live.contains("hunter2"),
        "no part of the value in the live log"
    );
    // Each of the 10 occurrences masked, also those straddling the 64 KiB cut, and each served
    // once. (In the events' JSON each line's text ends `... end"`.)
    assert_eq!(
        live.matches("*** end\"").count(),
        10,
        "every occurrence masked"
    );
    assert_eq!(live.matches(" end\"").count(), 10, "each line once");

    let archived = logs(&service, &id, "").await;
    assert!(
        archived.starts_with("token=***\n"),
        "{}",
        &archived[..40.min(archived.len())]
    );
    assert!(
        !archived.contains("hunter2"),
        "no part of the value in the archive"
    );
    assert_eq!(
        archived.matches("*** end\n").count(),
        10,
        "every occurrence masked"
    );
    assert_eq!(
        archived.matches(" end\n").count(),
        10,
        "each line archived once"
    );
    assert_eq!(
        archived.matches("token=").count(),
        1,
        "each line archived once"
    );

    assert_eq!(service.run(&id).await["params"], json!({"token": "***"}));
    let rerun = service
        .post(&format!("/v1/runs/{id}/rerun"), &json!({}))
        .await;
    assert_problem(
        rerun,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("params.token"),
    )
    .await;

    // Nothing of the value in the service's database.
    let options = db.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap()
    );
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", "--dbname", &url])
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains(&id), "the dump holds the run");
    assert!(!dump.contains(VALUE), "the dump holds no secret value");

    // The run's Secret is owned by its Job: deleting the Job deletes it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let name = format!("vfi-params-{id}");
    let secret = secrets.get(&name).await.expect("the run's Secret");
    let owners = secret.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "Job");
    let job = service.run(&id).await["job"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.delete(&job, &DeleteParams::background())
        .await
        .unwrap();
    eventually("the Secret to go with its Job", WAIT, || {
        let secrets = secrets.clone();
        let name = name.clone();
        async move { secrets.get_opt(&name).await.unwrap().is_none() }
    })
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_secret_of_a_run_cancelled_before_its_job_is_deleted(db: PgPool) {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::Api;

    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db.clone(), client.clone(), &[]).await;
    // The second run waits in `queued` behind the first on a concurrency key of one slot, so
    // it is cancelled before any Job of it exists.
    let mut spec = printing(
        "sleep 30",
        json!([{"name": "token", "type": "secret", "required": true}]),
    );
    spec["concurrency"] = json!({"key": "one", "limit": 1});
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );
    let start = || async {
        let run: Value = service
            .post(
                "/v1/tasks/deploy/runs",
                &json!({"params": {"token": "first-secret"}}),
            )
            .await
            .json()
            .await
            .unwrap();
        run["id"].as_str().unwrap().to_string()
    };
    let first = start().await;
    let second = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    assert!(secrets
        .get_opt(&format!("vfi-params-{second}"))
        .await
        .unwrap()
        .is_some());
    assert_eq!(service.run(&second).await["status"], "queued");
    let cancelled = service
        .post(&format!("/v1/runs/{second}/cancel"), &json!({}))
        .await;
    assert!(cancelled.status().is_success());
    eventually("the cancelled run's Secret to be deleted", WAIT, || {
        let secrets = secrets.clone();
        let name = format!("vfi-params-{second}");
        async move { secrets.get_opt(&name).await.unwrap().is_none() }
    })
    .await;
    assert!(
        secrets
            .get_opt(&format!("vfi-params-{first}"))
            .await
            .unwrap()
            .is_some(),
        "the running run keeps its Secret"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn after_a_restart_the_service_masks_secret_values_read_back_from_the_runs_secret(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let spec = printing(
        r#"for i in 1 2 3 4 5 6; do echo "$i $VFI_PARAM_TOKEN"; sleep 0.5; done"#,
        json!([{"name": "token", "type": "secret", "required": true}]),
    );
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );
    let run: Value = service
        .post(
            "/v1/tasks/deploy/runs",
            &json!({"params": {"token": "s3cr3t-value"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    service.wait_for(&id, "running", WAIT).await;
    service.stop().await;

    // A new process knows nothing but what Postgres and the cluster hold.
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    service.wait_for(&id, "succeeded", WAIT).await;
    let archived = logs(&service, &id, "").await;
    assert!(!archived.contains("s3cr3t"), "{archived}");
    for i in 1..=6 {
        assert!(archived.contains(&format!("{i} ***\n")), "{archived}");
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn args_name_parameters_with_kubernetes_own_expansion(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let spec = json!({
        "template": {"image": "busybox", "command": ["echo"],
                     "args": ["deploying", "$(VFI_PARAM_TARGET)", "with", "$(VFI_PARAM_TOKEN)"]},
        "parameters": [
            {"name": "target", "type": "enum", "enum": ["dev", "staging"], "default": "dev"},
            {"name": "token", "type": "secret", "required": true}
        ]
    });
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );
    let run: Value = service
        .post(
            "/v1/tasks/deploy/runs",
            &json!({"params": {"token": "tok-123456"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    service.wait_for(&id, "succeeded", WAIT).await;
    // The kubelet substitutes; the service rendered only the names.
    assert_eq!(logs(&service, &id, "").await, "deploying dev with ***\n");
    let pod = pods_of(&sim.client(), &id).await.remove(0);
    assert_eq!(
        pod.spec.unwrap().containers[0].args.clone().unwrap(),
        [
            "deploying",
            "$(VFI_PARAM_TARGET)",
            "with",
            "$(VFI_PARAM_TOKEN)"
        ]
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_secret_of_a_run_whose_job_the_api_server_refuses_is_deleted(db: PgPool) {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};

    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    // Someone else's Job already has the name the run's Job would get.
    let theirs: Job = serde_json::from_value(json!({
        "metadata": {"name": "deploy-1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "30"]}]}}}
    }))
    .unwrap();
    Api::<Job>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let service = Service::start(db, client.clone(), &[]).await;
    let spec = printing(
        "true",
        json!([{"name": "token", "type": "secret", "required": true}]),
    );
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );
    let run: Value = service
        .post(
            "/v1/tasks/deploy/runs",
            &json!({"params": {"token": "never-used"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let failed = service.wait_for(&id, "failed", WAIT).await;
    assert_eq!(failed["statusReason"], "AlreadyExists");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    assert!(
        secrets
            .get_opt(&format!("vfi-params-{id}"))
            .await
            .unwrap()
            .is_none(),
        "no Job will own it, so the launcher deleted it"
    );
}

/// A rerun never starts quietly without a secret the original had, optional ones included (the
/// value is not kept), and a partial rerun of such a run is refused: one Secret per index run
/// would be needed. Refused, both store nothing.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_rerun_needs_every_secret_value_again_even_an_optional_one(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let spec = printing(
        "true",
        json!([{"name": "target"}, {"name": "token", "type": "secret"}]),
    );
    assert_eq!(
        put(&service, "deploy", &spec).await.status(),
        StatusCode::CREATED
    );
    let response = service
        .post(
            "/v1/tasks/deploy/runs",
            &json!({"params": {"target": "a", "token": "s3cret-value"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = runs_stored(&db).await;

    let whole = service
        .post(&format!("/v1/runs/{id}/rerun"), &json!({}))
        .await;
    assert_problem(
        whole,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("params.token"),
    )
    .await;
    let partial = service
        .post(
            &format!("/v1/runs/{id}/rerun?only=failed-indexes"),
            &json!({"params": {"token": "s3cret-value"}}),
        )
        .await;
    assert_problem(partial, StatusCode::UNPROCESSABLE_ENTITY, Some("params")).await;
    assert_eq!(
        runs_stored(&db).await,
        before,
        "a refused rerun stores nothing"
    );

    let again = service
        .post(
            &format!("/v1/runs/{id}/rerun"),
            &json!({"params": {"token": "s3cret-value"}}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["params"], json!({"target": "a", "token": "***"}));
}
