//! The service against a misbehaving Kubernetes API, with faults injected from outside the
//! process through kubesim's admin endpoint (`/kubesim/faults`), as an external harness would.

mod common;

use common::service::{eventually, jobs_of, kubesim, RunnerKind, Service};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

fn quick(duration_ms: u32) -> Value {
    json!({"image": "busybox", "command": ["true"],
        "env": [{"name": "KUBESIM_DURATION_MS", "value": duration_ms.to_string()}]})
}

/// kubesim's fault-injection admin endpoint, reached over HTTP.
fn faults_url(sim: &kubesim::KubeSim) -> String {
    format!("{}/kubesim/faults", sim.url())
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_hung_create_holds_one_slot_and_its_run_fails_launch_timeout_during_the_hang(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let (admin, faults) = (reqwest::Client::new(), faults_url(&sim));
    let service = Service::start(db, sim.client(), &["--max-queue-wait-secs", "3"]).await;
    // The next Job create is accepted and left unanswered for 20 s.
    let hang = json!({"kind": "hang", "seconds": 20, "count": 1, "verb": "POST",
        "path": "/apis/batch/v1/namespaces/default/jobs"});
    let injected = admin.post(&faults).json(&hang).send().await.unwrap();
    assert_eq!(injected.status(), 201);
    let hung = service.submit(quick(60_000)).await;
    service
        .wait_for(&hung, "creating", Duration::from_secs(10))
        .await;
    let hang_started = Instant::now();

    let mut others = Vec::new();
    for _ in 0..10 {
        others.push(service.submit(quick(20)).await);
    }
    for id in &others {
        service
            .wait_for(id, "succeeded", Duration::from_secs(10))
            .await;
    }
    let failed = service
        .wait_for(&hung, "failed", Duration::from_secs(10))
        .await;
    assert_eq!(failed["statusReason"], "LaunchTimeout", "{failed:#}");
    let in_force: Value = admin
        .get(&faults)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        hang_started.elapsed() < Duration::from_secs(20) && in_force["faults"][0]["kind"] == "hang",
        "the run failed during the hang, not after it"
    );

    // The hang ends: the abandoned create may now be carried out by the API server. It must
    // neither bring the run back nor leave a Job running for it.
    admin.delete(&faults).send().await.unwrap();
    let client = sim.client();
    eventually(
        "no live Job for the timed-out run",
        Duration::from_secs(10),
        || async {
            jobs_of(&client, &hung)
                .await
                .iter()
                .all(|job| job.metadata.deletion_timestamp.is_some())
        },
    )
    .await;
    let run = service.run(&hung).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["statusReason"], "LaunchTimeout");
    for id in &others {
        assert_eq!(
            jobs_of(&client, id).await.len(),
            1,
            "exactly one Job per run"
        );
    }
}
