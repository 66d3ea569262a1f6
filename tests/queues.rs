//! Queues (issue 16): concurrency limits and keys, policies, priorities and why a run waits,
//! against kubesim and Postgres. Limits are checked the way a user would see a breach: a watch
//! on kubesim's Jobs counts the unfinished Jobs of the task after every event.

mod common;

use common::service::{eventually, jobs_of, kubesim, RunnerKind, Service};
use common::{assert_problem, client_for, new_token, TestApp};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfi_orchestrator::cluster::jobs::Cluster;
use vfi_orchestrator::cluster::{render, ClusterSettings};
use vfi_orchestrator::domain::webhook::sign;
use vfi_orchestrator::domain::Scope;
use vfi_orchestrator::store;

/// The most unfinished Jobs of a task kubesim's watch ever showed at once, and every Job seen.
struct JobWatch {
    max_unfinished: Arc<AtomicUsize>,
    seen: Arc<Mutex<HashSet<String>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl JobWatch {
    /// Watches the Jobs of `task`; returns once the first list is in.
    async fn start(client: kube::Client, task: &str) -> JobWatch {
        JobWatch::start_selected(client, &format!("vfi-orchestrator.io/task={task}")).await
    }

    /// Watches the Jobs `selector` selects; returns once the first list is in.
    async fn start_selected(client: kube::Client, selector: &str) -> JobWatch {
        JobWatch::start_on(Api::all(client), selector).await
    }

    /// Watches the Jobs of one namespace that `selector` selects.
    async fn start_in(client: kube::Client, namespace: &str, selector: &str) -> JobWatch {
        JobWatch::start_on(Api::namespaced(client, namespace), selector).await
    }

    async fn start_on(api: Api<Job>, selector: &str) -> JobWatch {
        let config = watcher::Config::default().labels(selector);
        let max_unfinished = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let ready = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn({
            let (max_unfinished, seen, ready) =
                (max_unfinished.clone(), seen.clone(), ready.clone());
            async move {
                let mut live: HashMap<String, bool> = HashMap::new();
                let mut relist: HashMap<String, bool> = HashMap::new();
                let mut stream = watcher::watcher(api, config).boxed();
                while let Ok(Some(event)) = stream.try_next().await {
                    match event {
                        Event::Init => relist.clear(),
                        Event::InitApply(job) => {
                            relist.insert(name(&job), unfinished(&job));
                        }
                        Event::InitDone => {
                            live = std::mem::take(&mut relist);
                            ready.store(true, Ordering::SeqCst);
                        }
                        Event::Apply(job) => {
                            seen.lock().unwrap().insert(name(&job));
                            live.insert(name(&job), unfinished(&job));
                        }
                        Event::Delete(job) => {
                            live.remove(&name(&job));
                        }
                    }
                    let now = live.values().filter(|u| **u).count();
                    max_unfinished.fetch_max(now, Ordering::SeqCst);
                }
            }
        });
        eventually("the Job watch to list", Duration::from_secs(10), || {
            let ready = ready.clone();
            async move { ready.load(Ordering::SeqCst) }
        })
        .await;
        JobWatch {
            max_unfinished,
            seen,
            handle,
        }
    }

    fn max(&self) -> usize {
        self.max_unfinished.load(Ordering::SeqCst)
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn name(job: &Job) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

/// A Job that has not completed or failed (one being deleted still counts: its pods may run).
fn unfinished(job: &Job) -> bool {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    !conditions
        .iter()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn template(duration_ms: u64) -> Value {
    json!({"image": "busybox", "env": [
        {"name": "KUBESIM_DURATION_MS", "value": duration_ms.to_string()}
    ]})
}

/// Reads every run of `ids` every 20 ms, handing each reading to `look`, until none is `queued`
/// (at most 60 s); then waits for all of them to succeed.
async fn follow_until_admitted(
    service: &Service,
    ids: &[String],
    mut look: impl FnMut(usize, &Value),
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut waiting = 0;
        for (i, id) in ids.iter().enumerate() {
            let run = service.run(id).await;
            if run["status"] == "queued" {
                waiting += 1;
            }
            look(i, &run);
        }
        if waiting == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "runs still waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ids {
        service
            .wait_for(id, "succeeded", Duration::from_secs(60))
            .await;
    }
}

async fn put_task(service: &Service, name: &str, spec: Value) {
    let response = service
        .http
        .put(service.url(&format!("/v1/tasks/{name}")))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

async fn start(service: &Service, task: &str, body: Value) -> Value {
    let response = service.post(&format!("/v1/tasks/{task}/runs"), &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

fn id(run: &Value) -> String {
    run["id"].as_str().unwrap().to_string()
}

/// Acceptance 1: limit 2, 10 runs at once: never more than 2 unfinished Jobs, all succeed,
/// admitted in submission order, and each waiting run's position only goes down.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn ten_runs_under_limit_two_never_have_more_than_two_jobs_and_start_in_order(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "limited",
        json!({"template": template(300), "concurrency": {"limit": 2}}),
    )
    .await;
    let watch = JobWatch::start(sim.client(), "limited").await;

    let runs: Vec<Value> =
        futures::future::join_all((0..10).map(|_| start(&service, "limited", json!({})))).await;
    let ids: Vec<String> = runs.iter().map(id).collect();

    // Follow every waiting run's place until none waits.
    let mut positions: HashMap<String, Vec<i64>> = HashMap::new();
    follow_until_admitted(&service, &ids, |i, run| {
        if run["status"] == "queued" {
            let queue = &run["queue"];
            assert_eq!(queue["key"], "limited", "{run:#}");
            positions
                .entry(ids[i].clone())
                .or_default()
                .push(queue["position"].as_i64().unwrap());
        }
    })
    .await;

    assert!(watch.max() <= 2, "{} Jobs unfinished at once", watch.max());
    assert_eq!(watch.max(), 2, "the limit was used");
    for (id, seen) in &positions {
        assert!(
            seen.windows(2).all(|w| w[1] <= w[0]),
            "run {id}'s position went up: {seen:?}"
        );
    }
    assert!(
        positions.values().any(|p| p.first() >= Some(&3)),
        "some run waited behind others: {positions:?}"
    );
    // Admitted in submission (number) order.
    let mut admitted: Vec<(i64, String)> = Vec::new();
    for id in &ids {
        let run = service.run(id).await;
        admitted.push((
            run["number"].as_i64().unwrap(),
            run["launch"]["admittedAt"].as_str().unwrap().to_string(),
        ));
    }
    admitted.sort();
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        admitted.iter().map(|(_, t)| t.parse().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "admitted out of order: {admitted:?}"
    );
}

/// Acceptance 6: maxWaiting 3: the 4th waiting run is refused with 429 naming the key and its
/// depth, and nothing is stored; waiting runs say what holds them.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_waiting_run_beyond_max_waiting_is_429_naming_the_key_and_nothing_is_stored(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "capped",
        json!({"template": template(600_000),
               "concurrency": {"limit": 1, "key": "deploy-{{env.TARGET}}", "maxWaiting": 3}}),
    )
    .await;
    let prod = json!({"env": [{"name": "TARGET", "value": "prod"}]});
    let first = id(&start(&service, "capped", prod.clone()).await);
    service
        .wait_for(&first, "running", Duration::from_secs(30))
        .await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(id(&start(&service, "capped", prod.clone()).await));
    }
    let runs_before = count(&db, "runs").await;
    let events_before = count(&db, "run_events").await;

    let refused = service.post("/v1/tasks/capped/runs", &prod).await;

    let body = assert_problem(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        Some("concurrency.maxWaiting"),
    )
    .await;
    assert_eq!(body["key"], "deploy-prod");
    assert_eq!(body["depth"], 3);
    assert_eq!(count(&db, "runs").await, runs_before, "no run stored");
    assert_eq!(
        count(&db, "run_events").await,
        events_before,
        "no event stored"
    );
    // Another key of the same task is not held by this one.
    let staging = json!({"env": [{"name": "TARGET", "value": "staging"}]});
    let other = id(&start(&service, "capped", staging).await);
    service
        .wait_for(&other, "running", Duration::from_secs(30))
        .await;
    // Why the waiting ones wait.
    for (i, id) in waiting.iter().enumerate() {
        let run = service.run(id).await;
        assert_eq!(run["status"], "queued");
        let queue = &run["queue"];
        assert_eq!(queue["key"], "deploy-prod");
        assert_eq!(queue["position"], i as i64 + 1);
        assert_eq!(queue["reason"], "ConcurrencyLimit");
        assert_eq!(queue["blockedBy"], json!([first]));
    }
    // The event stream's history says why the waiting ones were held.
    let history = service
        .get(&format!("/v1/runs/{}/events", waiting[0]))
        .await;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "queue" && e["reason"] == "ConcurrencyLimit"),
        "{history:#}"
    );
}

async fn count(db: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(db)
        .await
        .unwrap()
}

/// Acceptance 7: bad queue input is 422 naming the field, and a refused request changes nothing.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn bad_concurrency_and_priority_input_is_422_naming_the_field(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let base = |concurrency: Value| json!({"template": {"image": "x"}, "concurrency": concurrency});
    for (concurrency, field) in [
        (
            json!({"limit": 1, "policy": "Sometimes"}),
            "concurrency.policy",
        ),
        (json!({"limit": -1}), "concurrency.limit"),
        (json!({"limit": 0}), "concurrency.limit"),
        (
            json!({"limit": 1, "maxWaiting": -1}),
            "concurrency.maxWaiting",
        ),
        (json!({"limit": 1, "key": "{{branch}}"}), "concurrency.key"),
        (json!({"limit": 1, "key": "{{env.REF"}), "concurrency.key"),
        (json!({"limit": 1, "key": ""}), "concurrency.key"),
    ] {
        let response = app
            .put_json("/v1/tasks/q", &base(concurrency.clone()))
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
    let response = app
        .put_json(
            "/v1/tasks/q",
            &json!({"template": {"image": "x"}, "priority": 5000}),
        )
        .await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some("priority")).await;
    assert_eq!(app.count("tasks").await, 0, "no task stored");

    // A key that renders empty, or names an env var the run lacks, is refused at submission.
    app.put_task(
        "q",
        &json!({"template": {"image": "x", "env": [{"name": "REF", "value": ""}]},
                "concurrency": {"limit": 1, "key": "{{env.REF}}"}}),
    )
    .await;
    let response = app.post_json("/v1/tasks/q/runs", &json!({})).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("concurrency.key"),
    )
    .await;
    app.put_task(
        "q",
        &json!({"template": {"image": "x"}, "concurrency": {"limit": 1, "key": "{{env.TARGET}}"}}),
    )
    .await;
    let response = app.post_json("/v1/tasks/q/runs", &json!({})).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("concurrency.key"),
    )
    .await;

    // A run token may not raise a run's priority above the task's default; an admin may.
    let runner = client_for(&new_token(&db, Scope::Run, None).await);
    let response = runner
        .post(app.url("/v1/tasks/q/runs"))
        .json(&json!({"env": [{"name": "TARGET", "value": "a"}], "priority": 5}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some("priority")).await;
    let response = runner
        .post(app.url("/v1/tasks/q/runs"))
        .json(&json!({"env": [{"name": "TARGET", "value": "a"}], "priority": 2000}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some("priority")).await;
    let response = runner
        .post(app.url("/v1/runs"))
        .json(&json!({"template": {"image": "x"}, "priority": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some("priority")).await;
    assert_eq!(app.count("runs").await, 0, "no run stored");
    let adhoc = app
        .post_json(
            "/v1/runs",
            &json!({"template": {"image": "x"}, "priority": 7}),
        )
        .await;
    assert_eq!(adhoc.status(), StatusCode::CREATED);
    assert_eq!(adhoc.json::<Value>().await.unwrap()["priority"], 7);
    let run = app
        .start_task_run(
            "q",
            &json!({"env": [{"name": "TARGET", "value": "a"}], "priority": 5}),
        )
        .await;
    assert_eq!(run["priority"], 5);
    assert_eq!(run["queueKey"], "a");
}

/// Acceptance 4: limit 1, five priority-0 runs waiting; a priority-10 run submitted last
/// starts next.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_higher_priority_run_submitted_last_starts_next(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "ranked",
        json!({"template": template(600_000), "concurrency": {"limit": 1}}),
    )
    .await;
    let holder = id(&start(&service, "ranked", json!({})).await);
    service
        .wait_for(&holder, "running", Duration::from_secs(30))
        .await;
    let mut low = Vec::new();
    for _ in 0..5 {
        low.push(id(&start(&service, "ranked", json!({})).await));
    }
    let high = id(&start(&service, "ranked", json!({"priority": 10})).await);
    let queue = service.run(&high).await["queue"].clone();
    assert_eq!(queue["position"], 1, "{queue}");
    assert_eq!(service.run(&low[0]).await["queue"]["position"], 2);

    let response = service
        .post(&format!("/v1/runs/{holder}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    service
        .wait_for(&high, "running", Duration::from_secs(30))
        .await;
    for id in &low {
        assert_eq!(service.run(id).await["status"], "queued", "{id} started");
    }
}

const SECRET: &str = "queue-test-secret";

/// Acceptance 2: key `{{env.VFI_GIT_REF}}`, CancelInProgress: three signed pushes to one branch
/// within a second and one to another: the two older ones on the first branch end
/// cancelled/Superseded with their Jobs deleted; the newest on each branch succeeds.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn pushes_to_one_branch_supersede_each_other_and_the_newest_per_branch_succeeds(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "deploy",
        json!({"template": template(3000),
               "concurrency": {"limit": 1, "key": "{{env.VFI_GIT_REF}}", "policy": "CancelInProgress"}}),
    )
    .await;
    let response = service
        .http
        .put(service.url("/v1/tasks/deploy/triggers/github"))
        .json(&json!({"provider": "github", "secret": SECRET, "events": ["push"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let hook = response.json::<Value>().await.unwrap()["hookPath"]
        .as_str()
        .unwrap()
        .to_string();
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/tests/fixtures/webhooks/github-push.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let push = |git_ref: &str, delivery: &str| {
        let mut body = fixture.clone();
        body["ref"] = git_ref.into();
        let body = serde_json::to_vec(&body).unwrap();
        let request = reqwest::Client::new()
            .post(service.url(&hook))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header(
                "x-hub-signature-256",
                format!("sha256={}", sign(SECRET, &body)),
            )
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            id(&response.json::<Value>().await.unwrap()["run"])
        }
    };

    let started = std::time::Instant::now();
    let mut main = Vec::new();
    for i in 0..3 {
        main.push(push("refs/heads/main", &format!("main-{i}")).await);
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let other = push("refs/heads/feature", "feature-0").await;

    service
        .wait_for(&main[2], "succeeded", Duration::from_secs(60))
        .await;
    service
        .wait_for(&other, "succeeded", Duration::from_secs(60))
        .await;
    for (older, newer) in [(&main[0], &main[1]), (&main[1], &main[2])] {
        let run = service.run(older).await;
        assert_eq!(run["status"], "cancelled", "{run:#}");
        assert_eq!(run["statusReason"], "Superseded");
        assert_eq!(&run["supersededBy"], newer.as_str());
        assert!(run["statusMessage"]
            .as_str()
            .unwrap()
            .contains(newer.as_str()));
    }
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE status_reason = 'Superseded'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(cancelled, 2);
    eventually(
        "the superseded runs' Jobs to be deleted",
        Duration::from_secs(30),
        || {
            let client = sim.client();
            let ids = [main[0].clone(), main[1].clone()];
            async move {
                for id in ids {
                    if !jobs_of(&client, &id).await.is_empty() {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
}

/// Acceptance 3: 2 runs admitted and 8 waiting under limit 2 when the replica dies (kill -9:
/// one run's Job created and recorded, the other's created but not recorded, both leases
/// left to lapse); two new replicas take over: the limit holds at every instant of kubesim's
/// watch, no run is lost and no Job is made twice.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_replica_killed_mid_queue_leaves_two_replicas_that_keep_the_limit(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let api_only = TestApp::spawn(db.clone()).await;
    api_only
        .put_task(
            "crashy",
            &json!({"template": template(500), "concurrency": {"limit": 2}}),
        )
        .await;
    let watch = JobWatch::start(sim.client(), "crashy").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(id(&api_only.start_task_run("crashy", &json!({})).await));
    }

    // The replica that dies: admits what the limit lets through, creates both Jobs, records
    // one, and is killed.
    let admission = vfi_orchestrator::domain::queue::Admission {
        default_namespace: "default".into(),
        aging_secs: 60,
        ..Default::default()
    };
    let lease = Duration::from_secs(1);
    let claimed = store::runs::claim_admitted(&db, "killed", lease, 16, &admission, true)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "the limit let two through");
    let again = store::runs::claim_admitted(&db, "killed", lease, 16, &admission, true)
        .await
        .unwrap();
    assert!(again.is_empty(), "and no more while they hold their slots");
    let cluster = Cluster::new(
        sim.client(),
        ClusterSettings {
            installation: "default".into(),
            namespaces: vec!["default".into()],
            job_name_prefix: String::new(),
            run_as_non_root: false,
        },
    );
    for run in &claimed {
        cluster
            .create_job(run.id, &render::render(&cluster.settings, run))
            .await
            .unwrap();
    }
    let job = vfi_orchestrator::domain::JobRef {
        namespace: "default".into(),
        name: render::job_name(&cluster.settings, &claimed[0]),
        uid: None,
    };
    store::runs::mark_created(&db, claimed[0].id, &job)
        .await
        .unwrap();

    // Two replicas start.
    let flags = ["--launch-lease-secs", "1"];
    let a = Service::start(db.clone(), sim.client(), &flags).await;
    let b = Service::start(db.clone(), sim.client(), &flags).await;
    for (i, id) in ids.iter().enumerate() {
        let service = if i % 2 == 0 { &a } else { &b };
        service
            .wait_for(id, "succeeded", Duration::from_secs(90))
            .await;
    }

    assert!(watch.max() <= 2, "{} Jobs unfinished at once", watch.max());
    assert_eq!(watch.seen.lock().unwrap().len(), 10, "one Job per run");
    for id in &ids {
        assert_eq!(jobs_of(&sim.client(), id).await.len(), 1, "run {id}");
    }
}

/// Installation limits: with `MAX_ACTIVE_RUNS` 2, runs without a key wait for a slot too, say
/// so, and never have more than 2 Jobs unfinished.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_installation_limit_holds_runs_without_a_key_and_says_why(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &["--max-active-runs", "2"]).await;
    let watch =
        JobWatch::start_selected(sim.client(), "vfi-orchestrator.io/installation=default").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(service.submit(template(400)).await);
    }
    let mut reasons = HashSet::new();
    follow_until_admitted(&service, &ids, |_, run| {
        if run["status"] == "queued" {
            reasons.insert(run["queue"]["reason"].as_str().unwrap().to_string());
        }
    })
    .await;
    assert!(watch.max() <= 2, "{} Jobs unfinished at once", watch.max());
    assert!(reasons.contains("InstallationLimit"), "{reasons:?}");
}

/// Namespace limits: with `MAX_ACTIVE_RUNS_PER_NAMESPACE` 1, each namespace has at most one
/// unfinished Job, a full namespace does not hold runs of another (they pass it), and a waiting
/// run says `NamespaceLimit`.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_namespace_limit_holds_each_namespace_apart_and_says_why(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(
        db.clone(),
        sim.client(),
        &[
            "--max-active-runs-per-namespace",
            "1",
            "--namespaces",
            "default,kube-public",
        ],
    )
    .await;
    let selector = "vfi-orchestrator.io/installation=default";
    let in_default = JobWatch::start_in(sim.client(), "default", selector).await;
    let in_public = JobWatch::start_in(sim.client(), "kube-public", selector).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut spec = template(400);
        if i % 2 == 1 {
            spec["namespace"] = "kube-public".into();
        }
        ids.push(service.submit(spec).await);
    }
    let mut reasons = HashSet::new();
    let mut both_running = false;
    // The namespaces with an active run in one round of readings.
    let mut active = HashSet::new();
    let last = ids.len() - 1;
    follow_until_admitted(&service, &ids, |i, run| {
        if i == 0 {
            active.clear();
        }
        match run["status"].as_str().unwrap() {
            "queued" => {
                reasons.insert(run["queue"]["reason"].as_str().unwrap().to_string());
            }
            "creating" | "pending" | "running" => {
                active.insert(i % 2);
            }
            _ => {}
        }
        if i == last {
            both_running |= active.len() == 2;
        }
    })
    .await;
    assert!(
        in_default.max() <= 1,
        "{} Jobs unfinished in default",
        in_default.max()
    );
    assert!(
        in_public.max() <= 1,
        "{} Jobs unfinished in kube-public",
        in_public.max()
    );
    assert_eq!(in_default.seen.lock().unwrap().len(), 3);
    assert_eq!(in_public.seen.lock().unwrap().len(), 3);
    assert!(both_running, "one namespace's limit held the other's runs");
    assert!(reasons.contains("NamespaceLimit"), "{reasons:?}");
}

/// A service replica as its own OS process (the binary cargo built for these tests), killed
/// with SIGKILL when dropped so that a failing test leaves no process behind.
struct Process {
    child: std::process::Child,
    base: String,
}

impl Process {
    /// Starts `vfi-orchestrator serve` on a free port against `database_url` and the cluster
    /// of `kubeconfig`, and waits until it is ready.
    async fn start(
        database_url: &str,
        kubeconfig: &std::path::Path,
        log: &std::path::Path,
    ) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"))
            .args(["serve", "--auth-disabled", "--rate-limit-per-second", "0"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--launcher-poll-ms", "200", "--launch-lease-secs", "1"])
            .env("DATABASE_URL", database_url)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the service binary starts");
        let process = Process {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/readyz", process.base);
        eventually(
            "the service process to be ready",
            Duration::from_secs(60),
            || {
                let request = http.get(&ready).send();
                async move { request.await.is_ok_and(|r| r.status().is_success()) }
            },
        )
        .await;
        process
    }

    /// kill -9: the process gets no chance to finish anything.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "the process was killed: {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many runs are in each status.
async fn by_status(db: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status::text, count(*) FROM runs GROUP BY 1")
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Acceptance 3 with real processes: the service runs as its own OS process with 2 runs of a
/// `limit: 2` task running and 8 waiting when it is killed with SIGKILL; two replica processes
/// then start on the same database and kubesim. A kubesim watch of the task's Jobs never sees
/// more than 2 unfinished at any instant, all 10 runs succeed (none lost), and kubesim holds
/// exactly one Job per run (none duplicated).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_service_process_killed_with_sigkill_mid_queue_leaves_two_replica_processes_that_keep_the_limit(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let dir = std::env::temp_dir().join(format!("vfi-queue-crash-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let log = dir.join("service.log");
    let mut database_url = reqwest::Url::parse(
        &std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server"),
    )
    .unwrap();
    database_url.set_path(db.connect_options().get_database().unwrap());
    let database_url = database_url.to_string();

    let mut doomed = Process::start(&database_url, &kubeconfig, &log).await;
    let http = reqwest::Client::new();
    let response = http
        .put(format!("{}/v1/tasks/crashy", doomed.base))
        .json(&json!({"template": template(1500), "concurrency": {"limit": 2}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let watch = JobWatch::start(sim.client(), "crashy").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let response = http
            .post(format!("{}/v1/tasks/crashy/runs", doomed.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.push(id(&response.json::<Value>().await.unwrap()));
    }
    // 2 running and 8 waiting: then kill -9.
    eventually(
        "2 runs running and 8 waiting",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move {
                let counts = by_status(&db).await;
                counts.get("running") == Some(&2) && counts.get("queued") == Some(&8)
            }
        },
    )
    .await;
    doomed.kill();
    let at_kill = by_status(&db).await;

    let replicas = [
        Process::start(&database_url, &kubeconfig, &log).await,
        Process::start(&database_url, &kubeconfig, &log).await,
    ];
    eventually("all 10 runs to end", Duration::from_secs(120), || {
        let db = db.clone();
        async move {
            let counts = by_status(&db).await;
            counts.keys().all(|status| {
                matches!(
                    status.as_str(),
                    "succeeded" | "failed" | "cancelled" | "lost"
                )
            })
        }
    })
    .await;
    // Both replicas were alive to the end (neither crashed and left the work to the other).
    for replica in &replicas {
        let health = http.get(format!("{}/readyz", replica.base)).send().await;
        assert!(health.is_ok_and(|r| r.status().is_success()));
    }

    let counts = by_status(&db).await;
    assert_eq!(
        counts,
        HashMap::from([("succeeded".to_string(), 10)]),
        "0 runs lost (at the kill: {at_kill:?}); log in {}",
        log.display()
    );
    assert!(watch.max() <= 2, "{} Jobs unfinished at once", watch.max());
    assert_eq!(watch.max(), 2, "the limit was used");
    assert_eq!(watch.seen.lock().unwrap().len(), 10, "one Job per run");
    for id in &ids {
        assert_eq!(jobs_of(&sim.client(), id).await.len(), 1, "run {id}'s Jobs");
    }
    drop(replicas);
    let _ = std::fs::remove_dir_all(dir);
}

/// A `/v1/events` stream, read event by event (the `data` of each).
struct EventStream {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl EventStream {
    async fn open(service: &Service, query: &str) -> EventStream {
        let response = service
            .http
            .get(service.url(&format!("/v1/events{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        EventStream {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event's data, failing after 30 s.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let data: String = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim)
                        .collect();
                    if !data.is_empty() {
                        return serde_json::from_str(&data).unwrap();
                    }
                    continue;
                }
                let chunk = self.stream.next().await.expect("stream open").unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within 30 s")
    }
}

/// The queued runs of `task` as `GET /v1/runs` lists them: id to (position, reason).
async fn listed_waiting(service: &Service, task: &str) -> HashMap<String, (i64, String)> {
    let page = service
        .get(&format!("/v1/runs?task={task}&status=queued"))
        .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            let queue = &run["queue"];
            assert_eq!(
                queue["key"], task,
                "a listed waiting run says its key: {run:#}"
            );
            (
                id(run),
                (
                    queue["position"].as_i64().unwrap(),
                    queue["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Starts a run of `task` that runs for ten minutes and waits until it runs: it holds one of the
/// key's slots for the rest of the test.
async fn start_holder(service: &Service, task: &str) -> String {
    let holder = id(&start(
        service,
        task,
        json!({"env": [{"name": "KUBESIM_DURATION_MS", "value": "600000"}]}),
    )
    .await);
    service
        .wait_for(&holder, "running", Duration::from_secs(30))
        .await;
    holder
}

/// Why-waiting in the list and the event stream: `GET /v1/runs` shows each waiting run's
/// `queue` as `GET /v1/runs/{id}` does; every change of a key's queue (a waiting run cancelled,
/// a run admitted) is one `queue.moved` event for the key, not one per waiting run, with how
/// many still wait; and across those events every waiting run's position only goes down.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn waiting_runs_show_their_place_in_the_list_and_each_queue_change_is_one_event_per_key(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "listed",
        json!({"template": template(300), "concurrency": {"limit": 1}}),
    )
    .await;
    let holder = start_holder(&service, "listed").await;
    let mut events = EventStream::open(&service, "?task=listed").await;
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(id(&start(&service, "listed", json!({})).await));
    }

    // The list says what each run's own page says.
    let listed = listed_waiting(&service, "listed").await;
    assert_eq!(listed.len(), 5);
    for (i, id) in waiting.iter().enumerate() {
        assert_eq!(listed[id], (i as i64 + 1, "ConcurrencyLimit".to_string()));
        let own = service.run(id).await["queue"].clone();
        assert_eq!(own["position"], i as i64 + 1);
        assert_eq!(own["blockedBy"], json!([holder]));
    }

    // A waiting run cancelled, then the holder: the rest are admitted one by one.
    let response = service
        .post(&format!("/v1/runs/{}/cancel", waiting[4]), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = service
        .post(&format!("/v1/runs/{holder}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let mut moves = Vec::new();
    let mut positions: HashMap<String, Vec<i64>> = HashMap::new();
    let mut finished = 0;
    while finished < 6 {
        let event = events.next().await;
        assert_eq!(event["task"], "listed", "{event}");
        match event["type"].as_str().unwrap() {
            "run.finished" => finished += 1,
            "queue.moved" => {
                assert_eq!(event["key"], "listed", "{event}");
                moves.push((
                    event["reason"].as_str().unwrap().to_string(),
                    event["left"].as_i64().unwrap(),
                    event["waiting"].as_i64().unwrap(),
                ));
                for (id, (position, _)) in listed_waiting(&service, "listed").await {
                    positions.entry(id).or_default().push(position);
                }
            }
            _ => {}
        }
    }
    let expected: Vec<(String, i64, i64)> = [
        ("Cancelled", 4),
        ("Admitted", 3),
        ("Admitted", 2),
        ("Admitted", 1),
        ("Admitted", 0),
    ]
    .into_iter()
    .map(|(reason, waiting)| (reason.to_string(), 1, waiting))
    .collect();
    assert_eq!(moves, expected, "one event per change of the key's queue");
    for (id, seen) in &positions {
        assert!(
            seen.windows(2).all(|w| w[1] <= w[0]),
            "run {id}'s position went up: {seen:?}"
        );
    }
    assert!(positions
        .values()
        .any(|p| p.len() >= 2 && p[0] > *p.last().unwrap()));
    for id in &waiting[..4] {
        assert_eq!(service.run(id).await["status"], "succeeded");
    }
}

/// The cancel-while-creating window: a run cancelled while its Job create hangs in the API
/// server (kubesim's `hang` fault: the create is carried out when the hang ends, as a frozen
/// API server's writes can land late) ends `cancelled` and never `pending` or `running`; the
/// Job that lands late is deleted; and until then the cancelled run keeps its key's slot, so
/// the run waiting behind it is not admitted while the create is in flight.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_cancelled_while_its_job_create_hangs_ends_cancelled_and_its_late_job_is_deleted(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "hung",
        json!({"template": template(300), "concurrency": {"limit": 1}}),
    )
    .await;
    let mut hang = kubesim::faults::Fault::new(kubesim::faults::FaultKind::Hang);
    hang.count = Some(1);
    hang.seconds = Some(3.0);
    hang.verb = Some("POST".into());
    hang.path = Some("/apis/batch/v1/namespaces/default/jobs".into());
    sim.faults().add(hang).unwrap();
    let cancelled = id(&start(&service, "hung", json!({})).await);
    service
        .wait_for(&cancelled, "creating", Duration::from_secs(10))
        .await;
    let behind = id(&start(&service, "hung", json!({})).await);

    let response = service
        .post(&format!("/v1/runs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // While the create hangs, the cancelled run holds the slot: the next one waits for it.
    let mut readings = 0;
    while !sim.faults().list().is_empty() {
        let run = service.run(&behind).await;
        assert_eq!(run["status"], "queued", "admitted during the hang: {run:#}");
        assert_eq!(run["queue"]["reason"], "ConcurrencyLimit", "{run:#}");
        assert_eq!(run["queue"]["blockedBy"], json!([cancelled]), "{run:#}");
        readings += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(readings > 0, "the hang was observed");

    // The hang ends, the create lands: its Job is deleted and the next run goes ahead.
    service
        .wait_for(&behind, "succeeded", Duration::from_secs(30))
        .await;
    let client = sim.client();
    eventually(
        "the late Job of the cancelled run to be deleted",
        Duration::from_secs(10),
        || {
            let (client, cancelled) = (client.clone(), cancelled.clone());
            async move {
                jobs_of(&client, &cancelled)
                    .await
                    .iter()
                    .all(|job| job.metadata.deletion_timestamp.is_some())
            }
        },
    )
    .await;
    let run = service.run(&cancelled).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    let seen = service.statuses_seen(&cancelled).await;
    assert!(
        !seen.iter().any(|s| s == "pending" || s == "running"),
        "the cancelled run never started: {seen:?}"
    );
    // The late Job was made (the create was carried out), and only once.
    let made: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE id = $1::uuid AND job_name IS NOT NULL",
    )
    .bind(&cancelled)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(made, 1, "the late Job is recorded on the cancelled run");
}

/// The value of the `/metrics` sample `series` (name and labels as printed), if present.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Metrics: `vfi_queue_waiting_runs` counts waiting runs per key and the reason that holds them
/// (a key's limit, the installation's limit for runs without a key), and
/// `vfi_queue_admission_seconds` is a histogram of submission to admission.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn metrics_count_waiting_runs_per_key_and_reason_and_time_each_admission(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &["--max-active-runs", "1"]).await;
    put_task(
        &service,
        "metered",
        json!({"template": template(200), "concurrency": {"limit": 1}}),
    )
    .await;
    let holder = start_holder(&service, "metered").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(id(&start(&service, "metered", json!({})).await));
    }
    ids.push(service.submit(template(200)).await);

    let scrape = service
        .http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let waiting = |key: &str, reason: &str| {
        sample(
            &scrape,
            &format!("vfi_queue_waiting_runs{{key=\"{key}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        waiting("metered", "ConcurrencyLimit"),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(waiting("metered", "Ready"), Some(0.0), "{scrape}");
    assert_eq!(waiting("", "InstallationLimit"), Some(1.0), "{scrape}");

    let response = service
        .post(&format!("/v1/runs/{holder}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    for id in &ids {
        service
            .wait_for(id, "succeeded", Duration::from_secs(60))
            .await;
    }
    let scrape = service
        .http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.contains("# TYPE vfi_queue_admission_seconds histogram"),
        "{scrape}"
    );
    let admitted = sample(&scrape, "vfi_queue_admission_seconds_count").unwrap();
    assert!(admitted >= 4.0, "{admitted} admissions timed");
    assert_eq!(
        sample(&scrape, "vfi_queue_admission_seconds_bucket{le=\"+Inf\"}"),
        Some(admitted)
    );
    assert_eq!(
        sample(
            &scrape,
            "vfi_queue_waiting_runs{key=\"metered\",reason=\"ConcurrencyLimit\"}"
        ),
        None,
        "no run waits on the key any more: {scrape}"
    );
}

/// `queue.moved` events are pruned with the run history's age limit (`RUN_MAX_AGE_HOURS`): older
/// ones go, newer ones stay.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn queue_events_older_than_the_history_age_limit_are_pruned(db: PgPool) {
    for age_hours in [48, 1] {
        sqlx::query(
            "INSERT INTO queue_events (at, queue_key, task_name, kind, reason, left_queue, waiting)
             VALUES (now() - make_interval(hours => $1), 'k', 't', 'moved', 'Admitted', 1, 0)",
        )
        .bind(age_hours)
        .execute(&db)
        .await
        .unwrap();
    }
    let before = chrono::Utc::now() - chrono::Duration::hours(24);
    let deleted = store::queue::prune_events(&db, before, 500).await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(count(&db, "queue_events").await, 1, "the newer one stays");
}

/// Lock order (`store::queue`'s header): a lost run's retry (`retry.onLost`, written in the
/// transaction that records the loss) and a `CancelInProgress` submission of the same key race
/// many times. The submission takes the key's lock, then the key's run rows (to supersede
/// them); the loss took the run's row, then (for the retry's submission) the key's lock, so the
/// two could wait on each other until PostgreSQL aborted one with 40P01 (deadlock_detected).
/// Every path now takes the key's lock first: no call fails, and every lost run is accounted
/// for (superseded before the loss was recorded, or lost with exactly one retry).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_lost_runs_retry_and_a_cancel_in_progress_submission_of_its_key_never_deadlock(
    db: PgPool,
) {
    use vfi_orchestrator::domain::{
        Caps, Origin, PodCounts, RunPolicy, RunStatus, RunTemplate, Submission, TaskSpec,
    };
    use vfi_orchestrator::store::runs::{observe_with, Observation};
    let policy = RunPolicy {
        namespaces: vec!["default".into()],
        service_accounts: vec!["default".into()],
        job_name_prefix: String::new(),
        limits: Default::default(),
        sandbox: Default::default(),
    };
    let mut spec = template(1000);
    spec["retry"] = json!({"onLost": 1});
    let template: RunTemplate = serde_json::from_value(spec.clone()).unwrap();
    let task_spec: TaskSpec = serde_json::from_value(json!({
        "template": spec,
        "concurrency": {"limit": 1, "policy": "CancelInProgress"},
    }))
    .unwrap();
    let submit = |task: String| {
        let (db, policy, template, concurrency) = (
            db.clone(),
            policy.clone(),
            template.clone(),
            task_spec.concurrency.clone(),
        );
        async move {
            let submission = Submission::check(
                &policy,
                Origin::api(Some(&task), None).by_service(),
                template,
                None,
            )
            .unwrap()
            .queued(concurrency.as_ref(), None, None, None)
            .unwrap();
            let mut tx = db.begin().await?;
            let run = store::runs::submit(&mut tx, &submission, Caps::default())
                .await?
                .unwrap();
            tx.commit().await?;
            Ok::<_, sqlx::Error>(run)
        }
    };
    for round in 0..40 {
        let task = format!("locked-{round}");
        store::tasks::upsert(&db, &task, &task_spec).await.unwrap();
        let first = submit(task.clone()).await.unwrap();
        sqlx::query("UPDATE runs SET status = 'running', started_at = now() WHERE id = $1")
            .bind(first.id)
            .execute(&db)
            .await
            .unwrap();
        let seen = Observation {
            status: RunStatus::Lost,
            reason: Some("JobMissing"),
            message: Some("the Job was no longer in the cluster"),
            counts: PodCounts::default(),
            started_at: None,
            finished_at: None,
            job: None,
        };
        let (lost, newer) = tokio::join!(
            observe_with(&db, first.id, &seen, Some(&policy)),
            submit(task.clone())
        );
        let lost = lost.unwrap_or_else(|e| panic!("round {round}: recording the loss: {e}"));
        let newer = newer.unwrap_or_else(|e| panic!("round {round}: the submission: {e}"));
        let (status, reason): (String, Option<String>) =
            sqlx::query_as("SELECT status, status_reason FROM runs WHERE id = $1")
                .bind(first.id)
                .fetch_one(&db)
                .await
                .unwrap();
        let retries: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM runs WHERE rerun_of = $1")
                .bind(first.id)
                .fetch_all(&db)
                .await
                .unwrap();
        match status.as_str() {
            "cancelled" => {
                assert_eq!(reason.as_deref(), Some("Superseded"), "round {round}");
                assert!(
                    retries.is_empty(),
                    "round {round}: a superseded run is not retried"
                );
            }
            "lost" => {
                assert_eq!(retries.len(), 1, "round {round}: one retry per loss");
                assert_eq!(lost.unwrap().retry, Some(retries[0]), "round {round}");
            }
            other => panic!("round {round}: the first run ended {other}"),
        }
        let newer_status: String = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(newer.id)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(
            newer_status, "queued",
            "round {round}: the newest run of the key waits"
        );
    }
}

/// The cancel-while-creating window under `CancelInProgress`: a run superseded by a newer run
/// of its key while its Job create hangs in the API server (kubesim's `hang` fault: the create
/// is carried out when the hang ends) keeps its slot under its launcher's lease, as a run
/// cancelled through the API does, so the newer run is not admitted while the old Job may
/// still appear (limit 1 would hold two Jobs); the late Job is recorded on the superseded run
/// and deleted, never left running; and then the newer run goes ahead.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_superseded_while_its_job_create_hangs_keeps_its_slot_and_its_late_job_is_deleted(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "hung-superseded",
        json!({"template": template(300),
               "concurrency": {"limit": 1, "policy": "CancelInProgress"}}),
    )
    .await;
    let mut hang = kubesim::faults::Fault::new(kubesim::faults::FaultKind::Hang);
    hang.count = Some(1);
    hang.seconds = Some(3.0);
    hang.verb = Some("POST".into());
    hang.path = Some("/apis/batch/v1/namespaces/default/jobs".into());
    sim.faults().add(hang).unwrap();
    let superseded = id(&start(&service, "hung-superseded", json!({})).await);
    service
        .wait_for(&superseded, "creating", Duration::from_secs(10))
        .await;

    let newer = id(&start(&service, "hung-superseded", json!({})).await);
    let old = service.run(&superseded).await;
    assert_eq!(old["status"], "cancelled", "{old:#}");
    assert_eq!(old["statusReason"], "Superseded", "{old:#}");

    // While the create hangs, the superseded run holds the slot: the newer one waits for it.
    let mut readings = 0;
    while !sim.faults().list().is_empty() {
        let run = service.run(&newer).await;
        assert_eq!(run["status"], "queued", "admitted during the hang: {run:#}");
        assert_eq!(run["queue"]["blockedBy"], json!([superseded]), "{run:#}");
        readings += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(readings > 0, "the hang was observed");

    service
        .wait_for(&newer, "succeeded", Duration::from_secs(30))
        .await;
    let client = sim.client();
    eventually(
        "the late Job of the superseded run to be deleted",
        Duration::from_secs(10),
        || {
            let (client, superseded) = (client.clone(), superseded.clone());
            async move {
                let jobs = jobs_of(&client, &superseded).await;
                jobs.iter()
                    .all(|job| job.metadata.deletion_timestamp.is_some())
            }
        },
    )
    .await;
    let seen = service.statuses_seen(&superseded).await;
    assert!(
        !seen.iter().any(|s| s == "pending" || s == "running"),
        "the superseded run never started: {seen:?}"
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE id = $1::uuid AND job_name IS NOT NULL",
    )
    .bind(&superseded)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        recorded, 1,
        "the late Job is recorded on the superseded run"
    );
}

/// A launch that times out (`MAX_QUEUE_WAIT_SECS`) on a hung create whose run was cancelled
/// meanwhile: the `LaunchTimeout` is refused (the cancellation wins), but the abandoned create
/// can still be carried out by the API server (kubesim's `hang` fault carries it out when the
/// hang ends). The Job that lands late is recorded on the cancelled run and deleted (no orphan
/// Job), and the run keeps its key's slot while it may land, so the next run of the key waits.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_cancelled_run_whose_launch_timed_out_still_records_and_deletes_its_late_job(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &["--max-queue-wait-secs", "2"]).await;
    put_task(
        &service,
        "timed-out",
        json!({"template": template(300), "concurrency": {"limit": 1}}),
    )
    .await;
    let mut hang = kubesim::faults::Fault::new(kubesim::faults::FaultKind::Hang);
    hang.count = Some(1);
    hang.seconds = Some(5.0);
    hang.verb = Some("POST".into());
    hang.path = Some("/apis/batch/v1/namespaces/default/jobs".into());
    sim.faults().add(hang).unwrap();
    let cancelled = id(&start(&service, "timed-out", json!({})).await);
    service
        .wait_for(&cancelled, "creating", Duration::from_secs(10))
        .await;
    let response = service
        .post(&format!("/v1/runs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let behind = id(&start(&service, "timed-out", json!({})).await);

    // Past the launch deadline (2 s) and until the hang ends (5 s): the cancelled run holds
    // the slot, since its create may still land.
    let mut readings = 0;
    while !sim.faults().list().is_empty() {
        let run = service.run(&behind).await;
        assert_eq!(run["status"], "queued", "admitted during the hang: {run:#}");
        assert_eq!(run["queue"]["blockedBy"], json!([cancelled]), "{run:#}");
        readings += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(readings > 0, "the hang was observed");

    let client = sim.client();
    eventually(
        "the late Job of the cancelled run to be recorded",
        Duration::from_secs(10),
        || {
            let (db, cancelled) = (db.clone(), cancelled.clone());
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM runs WHERE id = $1::uuid AND job_name IS NOT NULL",
                )
                .bind(&cancelled)
                .fetch_one(&db)
                .await
                .unwrap()
                    == 1
            }
        },
    )
    .await;
    service
        .wait_for(&behind, "succeeded", Duration::from_secs(30))
        .await;
    eventually(
        "the late Job of the cancelled run to be deleted",
        Duration::from_secs(10),
        || {
            let (client, cancelled) = (client.clone(), cancelled.clone());
            async move {
                let jobs = jobs_of(&client, &cancelled).await;
                jobs.iter().all(|j| j.metadata.deletion_timestamp.is_some())
            }
        },
    )
    .await;
    let run = service.run(&cancelled).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    let seen = service.statuses_seen(&cancelled).await;
    assert!(
        !seen
            .iter()
            .any(|s| s == "pending" || s == "running" || s == "failed"),
        "the cancelled run never started nor failed: {seen:?}"
    );
}

/// Issue 16, `/v1/events` carries queue changes: a run superseded while it waits
/// (`CancelPending`) leaves its key's queue, so the run that superseded it moves up behind the
/// holder; each superseding submission is one `queue.moved` event for the key (`Cancelled`,
/// one run left, one still waits), in the submission's own transaction.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn waiting_runs_superseded_by_cancel_pending_send_one_queue_moved_event_per_submission(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    put_task(
        &service,
        "replaced",
        json!({"template": template(300),
               "concurrency": {"limit": 1, "policy": "CancelPending"}}),
    )
    .await;
    let _holder = start_holder(&service, "replaced").await;
    let mut events = EventStream::open(&service, "?task=replaced").await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(id(&start(&service, "replaced", json!({})).await));
    }
    let mut moves = Vec::new();
    while moves.len() < 2 {
        let event = events.next().await;
        if event["type"] == "queue.moved" {
            moves.push((
                event["key"].clone(),
                event["reason"].clone(),
                event["left"].clone(),
                event["waiting"].clone(),
            ));
        }
    }
    let expected = (json!("replaced"), json!("Cancelled"), json!(1), json!(1));
    assert_eq!(moves, vec![expected.clone(), expected]);
    for superseded in &waiting[..2] {
        let run = service.run(superseded).await;
        assert_eq!(run["status"], "cancelled", "{run:#}");
        assert_eq!(run["statusReason"], "Superseded", "{run:#}");
    }
    assert_eq!(service.run(&waiting[2]).await["queue"]["position"], 1);
}

/// Issue 16, `/v1/events` carries queue changes for runs held only by an installation limit:
/// runs without a key waiting under `MAX_ACTIVE_RUNS` move up when one ahead of them is
/// admitted, and each admission pass is one `queue.moved` event without a key (`Admitted`,
/// with how many still wait).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn runs_held_by_the_installation_limit_send_queue_moved_when_they_move_up(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &["--max-active-runs", "1"]).await;
    let holder = service.submit(template(600_000)).await;
    service
        .wait_for(&holder, "running", Duration::from_secs(30))
        .await;
    let mut events = EventStream::open(&service, "").await;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(service.submit(template(200)).await);
    }
    for id in &waiting {
        assert_eq!(
            service.run(id).await["queue"]["reason"],
            "InstallationLimit"
        );
    }
    let response = service
        .post(&format!("/v1/runs/{holder}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut moves = Vec::new();
    while moves.len() < 2 {
        let event = events.next().await;
        if event["type"] == "queue.moved" {
            assert!(event.get("key").is_none(), "{event}");
            moves.push((
                event["reason"].clone(),
                event["left"].clone(),
                event["waiting"].clone(),
            ));
        }
    }
    assert_eq!(
        moves,
        vec![
            (json!("Admitted"), json!(1), json!(1)),
            (json!("Admitted"), json!(1), json!(0)),
        ]
    );
    for id in &waiting {
        service
            .wait_for(id, "succeeded", Duration::from_secs(30))
            .await;
    }
}

/// Issue 16, `/v1/events` carries queue changes: a waiting run whose reason changes without a
/// change of position says so once. With `MAX_ACTIVE_RUNS` 1, run A of key K waits behind K's
/// holder (`ConcurrencyLimit`, announced when queued); when the holder is cancelled, an older
/// run of another key takes the installation's one slot, so A, still first on K, now waits for
/// the installation (`InstallationLimit`): one `run.queue` event for A with the new reason,
/// and no repeat on later admission passes.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_waiting_run_whose_reason_changes_in_place_gets_one_run_queue_event(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &["--max-active-runs", "1"]).await;
    for task in ["k-task", "l-task"] {
        put_task(
            &service,
            task,
            json!({"template": template(600_000), "concurrency": {"limit": 1}}),
        )
        .await;
    }
    let holder = start_holder(&service, "k-task").await;
    let mut events = EventStream::open(&service, "?task=k-task").await;
    let older = id(&start(&service, "l-task", json!({})).await);
    let a = id(&start(&service, "k-task", json!({})).await);
    assert_eq!(service.run(&a).await["queue"]["reason"], "ConcurrencyLimit");

    let response = service
        .post(&format!("/v1/runs/{holder}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    service
        .wait_for(&older, "running", Duration::from_secs(30))
        .await;
    let mut reasons = Vec::new();
    while reasons.last().map(String::as_str) != Some("InstallationLimit") {
        let event = events.next().await;
        if event["type"] == "run.queue" && event["runId"] == json!(a) {
            reasons.push(event["reason"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(reasons, ["ConcurrencyLimit", "InstallationLimit"]);
    let run = service.run(&a).await;
    assert_eq!(run["queue"]["reason"], "InstallationLimit", "{run:#}");
    assert_eq!(run["queue"]["position"], 1, "{run:#}");
    // Later passes (the launcher polls) see the same reason: no second event.
    let announced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM run_events
         WHERE run_id = $1::uuid AND kind = 'queue' AND reason = 'InstallationLimit'",
    )
    .bind(&a)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(announced, 1);
}
