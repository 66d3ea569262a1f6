//! The database going away and coming back, on a PostgreSQL of the test's own: clients get 503
//! with Retry-After (never 500) while it is down, and what the cluster did meanwhile is recorded
//! soon after it returns (the tracker looks again at every Job whose write failed).

mod common;

use common::postgres::OwnPostgres;
use common::service::{eventually, jobs_of, kubesim, RunnerKind, Service};
use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Status, Retry-After and Content-Type of one answer.
type Answer = (StatusCode, Option<String>, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_shutdown_during_submissions_answers_only_503s_never_500() {
    let (mut pg, pool) = OwnPostgres::start().await;
    let app = Arc::new(TestApp::spawn(pool).await);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let submitters: Vec<_> = (0..4)
        .map(|_| {
            let (app, answers, stop) = (app.clone(), answers.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let response = app
                        .post_json(
                            "/v1/runs",
                            &json!({"template": {"image": "busybox", "command": ["true"]}}),
                        )
                        .await;
                    let header = |name: &str| {
                        response
                            .headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    let answer = (
                        response.status(),
                        header("retry-after"),
                        header("content-type"),
                    );
                    answers.lock().unwrap().push(answer);
                }
            })
        })
        .collect();
    let count = |pred: fn(StatusCode) -> bool| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| pred(*s))
            .count()
    };
    eventually("submissions succeed", Duration::from_secs(20), || async {
        count(|s| s == StatusCode::CREATED) >= 20
    })
    .await;

    pg.stop_fast().await;
    let refused_before = count(|s| s != StatusCode::CREATED);
    eventually(
        "submissions are refused while the database is down",
        Duration::from_secs(20),
        || async { count(|s| s != StatusCode::CREATED) >= refused_before + 8 },
    )
    .await;
    pg.restart().await;
    let created_before = count(|s| s == StatusCode::CREATED);
    eventually(
        "submissions succeed again once the database is back",
        Duration::from_secs(30),
        || async { count(|s| s == StatusCode::CREATED) > created_before },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for submitter in submitters {
        submitter.await.unwrap();
    }

    let answers = answers.lock().unwrap();
    let unavailable: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!unavailable.is_empty());
    for (status, retry_after, content_type) in answers.iter() {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::SERVICE_UNAVAILABLE,
            "only 201 and 503 while the database stops and starts, got {status}"
        );
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(retry_after.as_deref(), Some("2"));
            assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_finish_while_the_database_is_down_show_their_final_status_soon_after_it_returns()
{
    let (mut pg, pool) = OwnPostgres::start().await;
    let sim = kubesim(RunnerKind::Scripted).await;
    let service_pool = vfi_orchestrator::store::pool(&pg.url(), 20).unwrap();
    let service = Service::start_on_pool(pool, service_pool, sim.client(), &[]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            service
                .submit(json!({"image": "busybox", "command": ["true"],
                    "env": [{"name": "KUBESIM_DURATION_MS", "value": "2000"}]}))
                .await,
        );
    }
    for id in &ids {
        service
            .wait_for(id, "running", Duration::from_secs(20))
            .await;
    }

    // The Jobs complete while the database is down for 8 s.
    let outage = Instant::now();
    pg.stop_fast().await;
    let client = sim.client();
    eventually("every Job completes", Duration::from_secs(20), || async {
        let mut complete = 0;
        for id in &ids {
            complete += jobs_of(&client, id)
                .await
                .iter()
                .filter(|job| {
                    job.status
                        .as_ref()
                        .and_then(|s| s.succeeded)
                        .is_some_and(|n| n == 1)
                })
                .count();
        }
        complete == ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(outage.elapsed())).await;
    pg.restart().await;
    let back = Instant::now();

    for id in &ids {
        let left = Duration::from_secs(10).saturating_sub(back.elapsed());
        service.wait_for(id, "succeeded", left).await;
    }
}
