//! The `vfi` command-line client, run as a user runs it (the built binary, `VFI_URL` and
//! `VFI_TOKEN`), against kubesim and the real service, or against a tiny fake service where the
//! test needs to control the answers (issue 19's acceptance 4 to 8, the CLI's part).

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use common::service::{eventually, jobs_of, kubesim, logs, pods_of, scripted, RunnerKind, Service};
use common::{calculatepi, new_token};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use vfi_orchestrator::domain::Scope;

const WAIT: Duration = Duration::from_secs(60);

/// `vfi` with the service's URL and token in its environment, and no config file of this
/// machine's user.
fn vfi(url: &str, token: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vfi"));
    command
        .env("VFI_URL", url)
        .env("VFI_TOKEN", token)
        .env_remove("VFI_CONTEXT")
        .env_remove("VFI_CONFIG")
        .env("XDG_CONFIG_HOME", scratch_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `vfi` to its end (within [`WAIT`]).
async fn finish(command: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("vfi ends in time")
        .expect("vfi starts")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh folder under the system's temporary folder.
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vfi-cli-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What perl prints for calculatepi on this machine (the host runner runs the same command).
fn digits_of_pi() -> Vec<u8> {
    let expected = std::process::Command::new("perl")
        .args(["-Mbignum=bpi", "-wle", "print bpi(2000)"])
        .output()
        .expect("perl runs");
    assert!(expected.status.success(), "perl computes bpi(2000)");
    assert!(expected.stdout.starts_with(b"3.14159"));
    expected.stdout
}

async fn admin_token(service: &Service) -> String {
    new_token(&service.db, Scope::Admin, None).await
}

// Acceptance 4: `run calculatepi --follow` prints pi's 2,000 digits and exits 0. The task is
// applied with `vfi tasks apply -f` from a YAML file, as a user would.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn run_calculatepi_follow_prints_the_digits_of_pi_and_exits_0(db: PgPool) {
    let expected = digits_of_pi();
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    let file = scratch_dir().join("calculatepi.yaml");
    std::fs::write(
        &file,
        "name: calculatepi\ntemplate:\n  image: perl:5.34.0\n  command: [perl, -Mbignum=bpi, -wle, print bpi(2000)]\n",
    )
    .unwrap();
    let applied = finish(
        vfi(&service.base, &token)
            .args(["tasks", "apply", "-f"])
            .arg(&file),
    )
    .await;
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(
        service.get("/v1/tasks/calculatepi").await["template"],
        calculatepi()
    );

    let output = finish(vfi(&service.base, &token).args(["run", "calculatepi", "--follow"])).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(output.stdout, expected, "stdout is the log, byte for byte");
    let runs = service.get("/v1/runs?task=calculatepi").await;
    assert_eq!(
        runs["items"].as_array().unwrap().len(),
        1,
        "one run submitted"
    );
    assert_eq!(runs["items"][0]["status"], "succeeded");
}

// Acceptance 4: a failing run exits 1, with `--wait` and with `--follow`; an ad-hoc run that
// succeeds exits 0.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_failing_run_exits_1_and_an_ad_hoc_run_that_succeeds_0(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    put_task(&service, "fails", &json!({"template": {"image": "busybox", "command": ["sh", "-c", "echo oh no; exit 3"], "backoffLimit": 0}})).await;

    let waited = finish(vfi(&service.base, &token).args(["run", "fails", "--wait"])).await;
    let followed = finish(vfi(&service.base, &token).args(["run", "fails", "--follow"])).await;
    let ad_hoc = finish(vfi(&service.base, &token).args([
        "run",
        "--image",
        "busybox",
        "--follow",
        "--",
        "sh",
        "-c",
        "echo hello",
    ]))
    .await;

    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    assert!(waited.stdout.is_empty(), "--wait prints no log");
    assert_eq!(followed.status.code(), Some(1), "{}", stderr(&followed));
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "oh no\n");
    assert!(
        stderr(&followed).contains("failed"),
        "{}",
        stderr(&followed)
    );
    assert_eq!(ad_hoc.status.code(), Some(0), "{}", stderr(&ad_hoc));
    assert_eq!(String::from_utf8_lossy(&ad_hoc.stdout), "hello\n");
}

/// Starts `vfi` with `args` and returns it with the run id it reports on stderr once submitted.
async fn spawn_and_read_run_id(
    command: &mut tokio::process::Command,
) -> (tokio::process::Child, String) {
    let mut child = command.spawn().expect("vfi starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let id = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("vfi: run ") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("vfi ended without naming its run");
    })
    .await
    .expect("vfi names its run");
    // Keep draining stderr so that vfi never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, id)
}

/// Creates (or replaces) task `name` as an admin would, failing the test on a refusal.
async fn put_task(service: &Service, name: &str, spec: &Value) {
    service
        .http
        .put(service.url(&format!("/v1/tasks/{name}")))
        .json(spec)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

// Acceptance 4: a cancelled run exits 2.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_cancelled_while_followed_exits_2(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    let template = scripted(&[("KUBESIM_DURATION_MS", "600000")], json!({}));
    put_task(&service, "long", &json!({ "template": template })).await;

    let (child, id) =
        spawn_and_read_run_id(vfi(&service.base, &token).args(["run", "long", "--follow"])).await;
    service.wait_for(&id, "running", WAIT).await;
    let cancelled = service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert!(cancelled.status().is_success());
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("vfi ends once the run is cancelled")
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    assert_eq!(service.run(&id).await["status"], "cancelled");
}

// Ctrl-C during `--follow` stops following and never cancels the run.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn ctrl_c_while_following_stops_the_client_and_the_run_goes_on(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    let template = scripted(&[("KUBESIM_DURATION_MS", "8000")], json!({}));
    put_task(&service, "slow", &json!({ "template": template })).await;

    let (child, id) =
        spawn_and_read_run_id(vfi(&service.base, &token).args(["run", "slow", "--follow"])).await;
    service.wait_for(&id, "running", WAIT).await;
    // The shell's own `kill`: no procps needed.
    let interrupted = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id().unwrap())])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("vfi stops on SIGINT")
        .unwrap();

    assert_eq!(output.status.code(), Some(130), "stopped following");
    assert_eq!(
        service.run(&id).await["status"],
        "running",
        "the run goes on"
    );
    service.wait_for(&id, "succeeded", WAIT).await;
    assert!(!service
        .statuses_seen(&id)
        .await
        .contains(&"cancelled".to_string()));
}

/// A TCP proxy in front of the service that cuts each of the first `cuts` connections whose
/// request contains `needle` after `after_bytes` bytes of the answer (mid-event, wherever that
/// falls; with 0, once the service has begun to answer, none of which is passed on).
async fn cutting_proxy(
    target: String,
    needle: &'static str,
    cuts: usize,
    after_bytes: usize,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cut = Arc::new(AtomicUsize::new(0));
    let done = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = TcpStream::connect(&target).await.unwrap();
            let done = done.clone();
            tokio::spawn(async move {
                // The request first: is it an event stream?
                let mut request = vec![0u8; 64 * 1024];
                let n = client.read(&mut request).await.unwrap_or(0);
                let matches = String::from_utf8_lossy(&request[..n]).contains(needle);
                server.write_all(&request[..n]).await.unwrap();
                let cut_this = matches && done.fetch_add(1, Ordering::SeqCst) < cuts;
                if !cut_this {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let mut sent = 0;
                let mut buffer = vec![0u8; 4096];
                loop {
                    let n = server.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let n = n.min(after_bytes - sent);
                    if n > 0 && client.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                    if sent >= after_bytes {
                        break;
                    }
                }
                // Dropping both ends cuts the connection.
            });
        }
    });
    (url, cut)
}

// Acceptance 5: a proxy cuts the SSE connection 3 times during `logs -f`; the output is
// byte-identical to the archived log: nothing missed, nothing repeated.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn logs_follow_across_three_cut_connections_is_byte_identical_to_the_archived_log(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let token = admin_token(&service).await;
    let (proxy, cuts) = cutting_proxy(
        service.base.trim_start_matches("http://").to_string(),
        "text/event-stream",
        3,
        3000,
    )
    .await;
    let id = service
        .submit(scripted(
            &[
                ("KUBESIM_LOG_LINES", "300"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
            json!({"ttlSecondsAfterFinished": 0}),
        ))
        .await;

    let output = finish(vfi(&proxy, &token).args(["logs", "-f", &id])).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        cuts.load(Ordering::SeqCst) >= 4,
        "3 cut connections and the one that finished"
    );
    assert_eq!(
        stderr(&output).matches("resuming").count(),
        3,
        "{}",
        stderr(&output)
    );
    service.wait_for(&id, "succeeded", WAIT).await;
    eventually("the Job and pod to be deleted", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { jobs_of(&client, &id).await.is_empty() && pods_of(&client, &id).await.is_empty() }
    })
    .await;
    let archived = logs(&service, &id, "").await;
    assert_eq!(archived, common::service::numbered_lines(300));
    assert_eq!(String::from_utf8_lossy(&output.stdout), archived);
}

// Acceptance 6: `logs --last <task>` after ttlSecondsAfterFinished deleted the Job and pods.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn logs_last_reads_the_archive_after_the_ttl_deleted_job_and_pods(db: PgPool) {
    let expected = digits_of_pi();
    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let token = admin_token(&service).await;
    let mut template = calculatepi();
    template["ttlSecondsAfterFinished"] = json!(0);
    put_task(&service, "calculatepi", &json!({ "template": template })).await;
    let started =
        finish(vfi(&service.base, &token).args(["-o", "json", "run", "calculatepi"])).await;
    assert_eq!(started.status.code(), Some(0), "{}", stderr(&started));
    let run: Value = serde_json::from_slice(&started.stdout).expect("-o json prints the run");
    let id = run["id"].as_str().unwrap().to_string();
    service.wait_for(&id, "succeeded", WAIT).await;
    eventually("the Job and pod to be deleted", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { jobs_of(&client, &id).await.is_empty() && pods_of(&client, &id).await.is_empty() }
    })
    .await;

    let output = finish(vfi(&service.base, &token).args(["logs", "--last", "calculatepi"])).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(output.stdout, expected);
}

/// What the fake service saw of each submission.
#[derive(Debug, Clone)]
struct Seen {
    idempotency_key: Option<String>,
    authorization: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The query strings of `POST /v1/runs/{id}/rerun`.
    reruns: Arc<Mutex<Vec<Option<String>>>>,
}

/// A fake `POST /v1/runs/{id}/rerun?only=failed-indexes`: 201 with the runs it started.
async fn fake_rerun(State(fake): State<Fake>, uri: axum::http::Uri) -> impl IntoResponse {
    fake.reruns
        .lock()
        .unwrap()
        .push(uri.query().map(str::to_string));
    let run = |n: u32| json!({"id": format!("0190f7d2-0000-7000-8000-00000000001{n}"), "number": n, "status": "queued"});
    (StatusCode::CREATED, Json(json!({"runs": [run(3), run(7)]})))
}

/// A fake `POST /v1/tasks/{name}/runs`: 429 with `Retry-After: 1` the first time, then 201.
async fn fake_start(
    State(fake): State<Fake>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let mut seen = fake.seen.lock().unwrap();
    seen.push(Seen {
        idempotency_key: header("idempotency-key"),
        authorization: header("authorization"),
        body: if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap()
        },
    });
    if seen.len() == 1 {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("retry-after", "1"),
                ("content-type", "application/problem+json"),
            ],
            Json(json!({"type": "about:blank", "title": "Too Many Requests", "status": 429})),
        )
            .into_response()
    } else {
        (
            StatusCode::CREATED,
            Json(json!({"id": "0190f7d2-0000-7000-8000-000000000001", "task": "build", "number": 1, "status": "queued"})),
        )
            .into_response()
    }
}

async fn fake_service() -> (String, Fake) {
    let fake = Fake::default();
    let app = axum::Router::new()
        .route("/v1/tasks/{name}/runs", axum::routing::post(fake_start))
        .route("/v1/runs/{id}/rerun", axum::routing::post(fake_rerun))
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fake)
}

// Acceptance 7: a service answering 429 then 201: one run submitted, both tries under the same
// Idempotency-Key (the server keeps one run per key), the second after the Retry-After. The
// body carries the `-p` parameters.
#[tokio::test]
async fn run_against_429_then_201_retries_after_retry_after_with_the_same_idempotency_key() {
    let (url, fake) = fake_service().await;

    let started = std::time::Instant::now();
    let output =
        finish(vfi(&url, "t0ken").args(["run", "build", "-p", "branch=main", "-p", "note=a=b"]))
            .await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0190f7d2-0000-7000-8000-000000000001")
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one refused try, one accepted: {seen:?}");
    let key = seen[0].idempotency_key.clone().expect("an Idempotency-Key");
    assert!(!key.is_empty());
    assert_eq!(
        seen[1].idempotency_key.as_ref(),
        Some(&key),
        "the same key on the retry"
    );
    for try_ in &seen {
        assert_eq!(
            try_.body,
            json!({"params": {"branch": "main", "note": "a=b"}})
        );
        assert_eq!(try_.authorization.as_deref(), Some("Bearer t0ken"));
    }
}

// Each invocation has its own key: two `vfi run`s are two submissions.
#[tokio::test]
async fn each_invocation_sends_its_own_idempotency_key() {
    let (url, fake) = fake_service().await;

    let first = finish(vfi(&url, "t").args(["run", "build"])).await;
    let second = finish(vfi(&url, "t").args(["run", "build"])).await;

    assert!(first.status.success() && second.status.success());
    let seen = fake.seen.lock().unwrap().clone();
    // The first try of the first invocation was the 429.
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].idempotency_key, seen[1].idempotency_key);
    assert_ne!(seen[1].idempotency_key, seen[2].idempotency_key);
    assert_eq!(seen[2].body, Value::Null, "no parameters, no body");
}

// The config file names contexts, like a kubeconfig; --context picks one.
#[tokio::test]
async fn a_config_file_context_gives_the_url_and_token() {
    let (url, fake) = fake_service().await;
    let config = scratch_dir().join("config.yaml");
    std::fs::write(
        &config,
        format!("current-context: nowhere\ncontexts:\n  - name: nowhere\n    url: http://127.0.0.1:1\n  - name: fake\n    url: {url}\n    token: from-the-file\n"),
    )
    .unwrap();

    let output = finish(
        vfi("", "")
            .env_remove("VFI_URL")
            .env_remove("VFI_TOKEN")
            .env("VFI_CONFIG", &config)
            .args(["--context", "fake", "run", "build"]),
    )
    .await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some("Bearer from-the-file")
    );
}

// Acceptance 8: unknown flags are a usage error: clap's message, exit 3, nothing sent.
#[tokio::test]
async fn unknown_flags_exit_3_with_a_usage_message() {
    let (url, fake) = fake_service().await;

    let unknown = finish(vfi(&url, "t").args(["run", "build", "--frobnicate"])).await;
    let missing = finish(vfi(&url, "t").args(["run"])).await;
    let both = finish(vfi(&url, "t").args(["run", "build", "--image", "x"])).await;

    for output in [&unknown, &missing, &both] {
        assert_eq!(output.status.code(), Some(3), "{}", stderr(output));
        assert!(stderr(output).contains("Usage:"), "{}", stderr(output));
    }
    assert!(stderr(&unknown).contains("--frobnicate"));
    assert!(fake.seen.lock().unwrap().is_empty(), "nothing sent");
}

// Acceptance 8: a VFI_URL that does not answer (refused, or silent): a clear message, exit 3.
#[tokio::test]
async fn a_vfi_url_that_does_not_answer_exits_3_with_a_clear_message() {
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // Accepts connections (the kernel does) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());

    let output =
        finish(vfi(&format!("http://{refused}"), "t").args(["--retries", "1", "ls"])).await;
    let quiet =
        finish(vfi(&silent_url, "t").args(["--retries", "0", "--timeout", "1", "get", "x"])).await;
    let no_url = finish(vfi("", "").env_remove("VFI_URL").arg("ls")).await;

    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains(&format!(
            "vfi: error: cannot reach the service at http://{refused}/"
        )) && stderr(&output).contains("Connection refused"),
        "{}",
        stderr(&output)
    );
    assert_eq!(quiet.status.code(), Some(3));
    assert!(
        stderr(&quiet).contains("cannot reach the service") && stderr(&quiet).contains("timed out"),
        "{}",
        stderr(&quiet)
    );
    assert_eq!(no_url.status.code(), Some(3));
    assert!(
        stderr(&no_url).contains("no service URL: set VFI_URL"),
        "{}",
        stderr(&no_url)
    );
    drop(silent);
}

// `ls`, `get` and `cancel` as people and scripts read them; `completion` prints a script.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn ls_get_and_cancel_show_runs_as_tables_and_json(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    let id = service
        .submit(scripted(&[("KUBESIM_DURATION_MS", "600000")], json!({})))
        .await;
    service.wait_for(&id, "running", WAIT).await;

    let table = finish(vfi(&service.base, &token).args(["ls", "--status", "running"])).await;
    let listed =
        finish(vfi(&service.base, &token).args(["-o", "json", "ls", "--limit", "5"])).await;
    let got = finish(vfi(&service.base, &token).args(["get", &id])).await;
    let got_json = finish(vfi(&service.base, &token).args(["-o", "json", "get", &id])).await;
    let cancelled = finish(vfi(&service.base, &token).args(["cancel", &id])).await;
    let again = finish(vfi(&service.base, &token).args(["cancel", &id])).await;
    let completion = finish(vfi("", "").args(["completion", "bash"])).await;

    assert!(table.status.success(), "{}", stderr(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("STATUS") && table.contains(&id) && table.contains("running"),
        "{table}"
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let got = String::from_utf8_lossy(&got.stdout);
    assert!(got.contains("running") && got.contains("1 active"), "{got}");
    let got_json: Value = serde_json::from_slice(&got_json.stdout).unwrap();
    assert_eq!(got_json["id"], id.as_str());
    assert_eq!(got_json["status"], "running");
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert_eq!(
        again.status.code(),
        Some(3),
        "a finished run cannot be cancelled: an API error"
    );
    assert!(stderr(&again).contains("409"), "{}", stderr(&again));
    assert!(completion.status.success());
    assert!(String::from_utf8_lossy(&completion.stdout).contains("complete -F _vfi"));
}

// `logs` prints what `GET /v1/runs/{id}/logs` serves as text, pod headers included, for one
// index, with timestamps, and only the failed pods with `--failed`.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn logs_match_the_plain_text_log_by_index_with_timestamps_and_failed_pods_only(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    let indexed = service
        .submit(scripted(
            &[("KUBESIM_LOG_LINES", "3"), ("KUBESIM_LOG_INTERVAL_MS", "1")],
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
        ))
        .await;
    // The first container fails, the second (a new pod) succeeds.
    let retried = service
        .submit(scripted(
            &[("KUBESIM_FAIL_ATTEMPTS", "1")],
            json!({"backoffLimit": 1}),
        ))
        .await;
    service.wait_for(&indexed, "succeeded", WAIT).await;
    service.wait_for(&retried, "succeeded", WAIT).await;

    let all = finish(vfi(&service.base, &token).args(["logs", &indexed])).await;
    let one = finish(vfi(&service.base, &token).args(["logs", &indexed, "--index", "2"])).await;
    let stamped =
        finish(vfi(&service.base, &token).args(["logs", &indexed, "--index", "1", "--timestamps"]))
            .await;
    let failed = finish(vfi(&service.base, &token).args(["logs", &retried, "--failed"])).await;
    let both = finish(vfi(&service.base, &token).args(["logs", &retried])).await;

    assert!(all.status.success(), "{}", stderr(&all));
    let text = logs(&service, &indexed, "").await;
    assert!(
        text.contains("==> pod ") && text.contains("(index 2) <=="),
        "{text}"
    );
    assert_eq!(String::from_utf8_lossy(&all.stdout), text);
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        logs(&service, &indexed, "?index=2").await
    );
    assert_eq!(
        String::from_utf8_lossy(&stamped.stdout),
        logs(&service, &indexed, "?index=1&timestamps=true").await
    );
    let pods = service.get(&format!("/v1/runs/{retried}/pods")).await;
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let failed_pod = pods.iter().find(|p| p["phase"] == "Failed").unwrap()["name"]
        .as_str()
        .unwrap();
    let expected = logs(&service, &retried, &format!("?pod={failed_pod}")).await;
    assert_eq!(
        String::from_utf8_lossy(&failed.stdout),
        expected,
        "{}",
        stderr(&failed)
    );
    let text = logs(&service, &retried, "").await;
    assert!(
        text.starts_with("==> pod "),
        "two pods, two headers: {text}"
    );
    assert_eq!(String::from_utf8_lossy(&both.stdout), text);
}

// `get` of a waiting run shows its place in the queue and why; `rerun` links a new run;
// `tokens` creates, lists and revokes.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn get_shows_queue_position_rerun_links_and_tokens_are_managed(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    let template = scripted(&[("KUBESIM_DURATION_MS", "600000")], json!({}));
    put_task(
        &service,
        "one-at-a-time",
        &json!({ "template": template, "concurrency": {"limit": 1} }),
    )
    .await;
    let first =
        finish(vfi(&service.base, &token).args(["-o", "json", "run", "one-at-a-time"])).await;
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let first = first["id"].as_str().unwrap().to_string();
    service.wait_for(&first, "running", WAIT).await;
    let second =
        finish(vfi(&service.base, &token).args(["-o", "json", "run", "one-at-a-time"])).await;
    let second: Value = serde_json::from_slice(&second.stdout).unwrap();
    let second = second["id"].as_str().unwrap().to_string();

    let got = finish(vfi(&service.base, &token).args(["get", &second])).await;
    let rerun = finish(vfi(&service.base, &token).args(["-o", "json", "rerun", &first])).await;
    let created = finish(
        vfi(&service.base, &token).args(["tokens", "create", "--name", "ci", "--scope", "run"]),
    )
    .await;
    let listed = finish(vfi(&service.base, &token).args(["-o", "json", "tokens", "ls"])).await;

    let got = String::from_utf8_lossy(&got.stdout);
    assert!(got.contains("queued"), "{got}");
    assert!(
        got.contains("position 1 on key one-at-a-time (ConcurrencyLimit)"),
        "{got}"
    );
    assert!(got.contains(&first), "blocked by the running run: {got}");
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let rerun: Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(rerun["rerunOf"], first.as_str());
    assert!(created.status.success(), "{}", stderr(&created));
    let new_token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(
        !new_token.is_empty() && !new_token.contains(' '),
        "the token alone: {new_token}"
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ci = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .expect("listed");
    assert_eq!(ci["scope"], "run");
    let revoked =
        finish(vfi(&service.base, &token).args(["tokens", "revoke", ci["id"].as_str().unwrap()]))
            .await;
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let refused = finish(vfi(&service.base, &new_token).args(["ls"])).await;
    assert_eq!(refused.status.code(), Some(3));
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
}

// A submission whose answer is lost (the connection drops after the service recorded the run)
// is retried under the same Idempotency-Key: the service answers the first run again, and
// exactly one run exists.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_whose_answer_was_lost_is_retried_and_recorded_once(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    put_task(
        &service,
        "once",
        &json!({ "template": scripted(&[], json!({})) }),
    )
    .await;
    let (proxy, cuts) = cutting_proxy(
        service.base.trim_start_matches("http://").to_string(),
        "POST /v1/tasks/once/runs",
        1,
        0,
    )
    .await;

    let output = finish(vfi(&proxy, &token).args(["-o", "json", "run", "once"])).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        cuts.load(Ordering::SeqCst),
        2,
        "the lost answer and the retry"
    );
    assert!(stderr(&output).contains("retrying"), "{}", stderr(&output));
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    let runs = service.get("/v1/runs?task=once").await;
    let runs = runs["items"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "one run recorded: {runs:?}");
    assert_eq!(
        runs[0]["id"], run["id"],
        "the retry was answered with the first run"
    );
}

// `rerun --failed-indexes` asks for `?only=failed-indexes` and lists the runs it started.
#[tokio::test]
async fn rerun_failed_indexes_asks_for_them_and_lists_the_runs() {
    let (url, fake) = fake_service().await;

    let output = finish(vfi(&url, "t").args(["rerun", "some-run", "--failed-indexes"])).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        *fake.reruns.lock().unwrap(),
        [Some("only=failed-indexes".to_string())]
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("0190f7d2-0000-7000-8000-000000000013")
            && table.contains("0190f7d2-0000-7000-8000-000000000017"),
        "{table}"
    );
}

// `-p name=value` end to end: the real service checks the parameters against the task's
// definitions (an enum and an integer), the pod gets them as `VFI_PARAM_*`, and a value the
// task refuses is the API's 422, printed with the field at fault, exit 3, no run submitted.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn run_with_parameters_follows_the_pod_that_got_them_and_a_refused_value_exits_3(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    put_task(
        &service,
        "deploy",
        &json!({
            "template": {"image": "busybox", "command": ["sh", "-c", "echo $VFI_PARAM_TARGET"]},
            "parameters": [
                {"name": "target", "type": "enum", "enum": ["dev", "staging"], "required": true},
                {"name": "n", "type": "integer", "minimum": 1, "maximum": 5, "default": 1}
            ]
        }),
    )
    .await;

    let followed = finish(vfi(&service.base, &token).args([
        "run",
        "deploy",
        "-p",
        "target=staging",
        "-p",
        "n=3",
        "--follow",
    ]))
    .await;
    let refused =
        finish(vfi(&service.base, &token).args(["run", "deploy", "-p", "target=prod", "--follow"]))
            .await;

    assert_eq!(followed.status.code(), Some(0), "{}", stderr(&followed));
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "staging\n");
    let runs = service.get("/v1/runs?task=deploy").await;
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the accepted run is stored: {runs}");
    let run = service.run(items[0]["id"].as_str().unwrap()).await;
    assert_eq!(run["params"], json!({"target": "staging", "n": 3}));
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("params.target"),
        "{}",
        stderr(&refused)
    );
    assert!(refused.stdout.is_empty());
}

/// `vfi rerun -p` gives parameter values again: a run with a secret parameter cannot be rerun
/// without it (exit 3 naming `params.token`), and is with it (exit 0, the value masked).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn rerun_gives_secret_values_again_with_p(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let token = admin_token(&service).await;
    put_task(
        &service,
        "deploy",
        &json!({
            "template": {"image": "busybox", "command": ["true"]},
            "parameters": [{"name": "token", "type": "secret", "required": true}]
        }),
    )
    .await;
    let started = finish(vfi(&service.base, &token).args([
        "run",
        "deploy",
        "-p",
        "token=s3cret-value",
        "--wait",
        "-o",
        "json",
    ]))
    .await;
    assert_eq!(started.status.code(), Some(0), "{}", stderr(&started));
    let runs = service.get("/v1/runs?task=deploy").await;
    let id = runs["items"][0]["id"].as_str().unwrap().to_string();

    let without = finish(vfi(&service.base, &token).args(["rerun", &id])).await;
    assert_eq!(without.status.code(), Some(3), "{}", stderr(&without));
    assert!(
        stderr(&without).contains("params.token"),
        "{}",
        stderr(&without)
    );
    let with = finish(vfi(&service.base, &token).args([
        "rerun",
        &id,
        "-p",
        "token=s3cret-value",
        "-o",
        "json",
    ]))
    .await;
    assert_eq!(with.status.code(), Some(0), "{}", stderr(&with));
    let runs = service.get("/v1/runs?task=deploy").await;
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one rerun stored: {runs}");
    assert_eq!(items[0]["params"], json!({"token": "***"}));
}
