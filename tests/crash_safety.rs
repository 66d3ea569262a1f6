//! Crash safety and faults: the service stopped mid-launch, two replicas on one database, and
//! watch faults and an API outage during 100 active runs. Every run gets exactly one Job and
//! ends in its true final state.

mod common;

use common::service::{eventually, jobs_of, kubesim, RunnerKind, Service};
use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use kube::api::ListParams;
use kube::Api;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use vfi_orchestrator::cluster::jobs::Cluster;
use vfi_orchestrator::cluster::{render, ClusterSettings};
use vfi_orchestrator::store;

fn quick(extra: Value) -> Value {
    let mut template = json!({"image": "busybox", "command": ["true"],
        "env": [{"name": "KUBESIM_DURATION_MS", "value": "20"}]});
    template
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    template
}

async fn count_runs(db: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = $1")
        .bind(status)
        .fetch_one(db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_recorded_before_a_crash_is_launched_once_after_restart(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    // The service "crashed" right after the insert: only the API ran.
    let api_only = common::TestApp::spawn(db.clone()).await;
    let id = api_only.submit(&quick(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let service = Service::start(db, sim.client(), &[]).await;
    service
        .wait_for(&id, "succeeded", Duration::from_secs(30))
        .await;
    assert_eq!(jobs_of(&sim.client(), &id).await.len(), 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_launcher_that_died_after_claiming_is_taken_over_when_its_lease_lapses(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let api_only = common::TestApp::spawn(db.clone()).await;
    let id = api_only.submit(&quick(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A launcher claimed it, then died before creating the Job.
    let claimed = store::runs::claim_launchable(&db, "dead-launcher", Duration::from_secs(1), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let service = Service::start(db, sim.client(), &["--launch-lease-secs", "1"]).await;
    service
        .wait_for(&id, "succeeded", Duration::from_secs(30))
        .await;
    assert_eq!(jobs_of(&sim.client(), &id).await.len(), 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_launcher_that_died_right_after_creating_the_job_leads_to_exactly_one_job(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let api_only = common::TestApp::spawn(db.clone()).await;
    let id = api_only.submit(&quick(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A launcher claimed it and created the Job, then died before recording that.
    let claimed = store::runs::claim_launchable(&db, "dead-launcher", Duration::from_secs(1), 10)
        .await
        .unwrap();
    let cluster = Cluster::new(
        sim.client(),
        ClusterSettings {
            installation: "default".into(),
            namespaces: vec!["default".into()],
            job_name_prefix: String::new(),
            run_as_non_root: false,
        },
    );
    let run = &claimed[0];
    cluster
        .create_job(run.id, &render::render(&cluster.settings, run))
        .await
        .expect("the dead launcher's create went through");

    let service = Service::start(db, sim.client(), &["--launch-lease-secs", "1"]).await;
    service
        .wait_for(&id, "succeeded", Duration::from_secs(30))
        .await;
    assert_eq!(
        jobs_of(&sim.client(), &id).await.len(),
        1,
        "adopted, not created twice"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn two_replicas_on_one_database_create_each_job_once(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let a = Service::start(db.clone(), sim.client(), &[]).await;
    let b = Service::start(db.clone(), sim.client(), &[]).await;

    let ids: Vec<String> = join_all((0..200).map(|i| {
        let service = if i % 2 == 0 { &a } else { &b };
        service.submit(quick(json!({})))
    }))
    .await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 200);

    eventually("200 runs to succeed", Duration::from_secs(120), || {
        let db = db.clone();
        async move { count_runs(&db, "succeeded").await == 200 }
    })
    .await;
    let jobs: Api<Job> = Api::all(sim.client());
    let jobs = jobs
        .list(&ListParams::default().labels("vfi-orchestrator.io/installation=default"))
        .await
        .unwrap()
        .items;
    let owners: HashSet<String> = jobs
        .iter()
        .map(|j| j.metadata.labels.as_ref().unwrap()["vfi-orchestrator.io/run-id"].clone())
        .collect();
    assert_eq!(jobs.len(), 200, "one Job per run");
    assert_eq!(owners, ids.into_iter().collect::<HashSet<_>>());
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn watch_faults_and_an_api_outage_do_not_lose_any_final_state(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let faults = sim.faults();
    let service = Service::start(db.clone(), sim.client(), &[]).await;

    // 100 runs of 3 kinds: succeeding, failing, and succeeding with their Job deleted by a TTL
    // of 0 (the tracking finalizer must hold it until the outcome is stored).
    let mut expected = Vec::new();
    for i in 0..100 {
        // Long enough to be running when the faults start; they finish during the outage.
        let slow = json!({"name": "KUBESIM_DURATION_MS", "value": "15000"});
        let (template, status) = match i % 3 {
            0 => (json!({"image": "x", "env": [slow]}), "succeeded"),
            1 => (
                json!({"image": "x", "backoffLimit": 0,
                       "env": [slow, {"name": "KUBESIM_EXIT_CODE", "value": "1"}]}),
                "failed",
            ),
            _ => (
                json!({"image": "x", "ttlSecondsAfterFinished": 0, "env": [slow]}),
                "succeeded",
            ),
        };
        expected.push((service.submit(template).await, status));
    }
    eventually(
        "all 100 Jobs to be created",
        Duration::from_secs(60),
        || {
            let db = db.clone();
            async move { count_runs(&db, "queued").await + count_runs(&db, "creating").await == 0 }
        },
    )
    .await;

    faults.drop_watches();
    faults.next_watches_gone(2);
    faults.fail_requests(10, 500, None);
    // 30 s of API outage, during which every run finishes in the cluster.
    faults.set_outage(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    faults.set_outage(false);

    for (id, status) in &expected {
        service.wait_for(id, status, Duration::from_secs(60)).await;
    }
    // Every Job was released by the service: the TTL ones are gone, none is stuck.
    eventually(
        "TTL-deleted Jobs to be gone",
        Duration::from_secs(30),
        || {
            let client = sim.client();
            let ttl_ids: Vec<String> = expected
                .iter()
                .skip(2)
                .step_by(3)
                .map(|(id, _)| id.clone())
                .collect();
            async move {
                for id in ttl_ids {
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
