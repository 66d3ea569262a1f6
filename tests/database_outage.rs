//! The database going away and coming back, on a PostgreSQL of the test's own: clients get 503
//! with Retry-After (never 500) while it is down.

mod common;

use common::postgres::OwnPostgres;
use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    common::service::eventually("submissions succeed", Duration::from_secs(20), || async {
        count(|s| s == StatusCode::CREATED) >= 20
    })
    .await;

    pg.stop_fast().await;
    let refused_before = count(|s| s != StatusCode::CREATED);
    common::service::eventually(
        "submissions are refused while the database is down",
        Duration::from_secs(20),
        || async { count(|s| s != StatusCode::CREATED) >= refused_before + 8 },
    )
    .await;
    pg.restart().await;
    let created_before = count(|s| s == StatusCode::CREATED);
    common::service::eventually(
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
