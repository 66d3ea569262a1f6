//! Connection hygiene (issue 13): connections that send nothing are closed after the idle
//! timeout and, however many there are, do not keep other clients from being answered.

mod common;

use common::{TestApp, TestOptions};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use vfi_orchestrator::domain::Scope;
use vfi_orchestrator::http::server::ServerLimits;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The service with this idle timeout and connection cap.
async fn spawn(db: PgPool, idle_timeout: Duration, max_connections: usize) -> TestApp {
    let server = ServerLimits {
        idle_timeout,
        max_connections,
        ..Default::default()
    };
    let options = TestOptions {
        server,
        ..Default::default()
    };
    TestApp::spawn_with(db, options).await
}

/// Reads until the server closes the connection; returns when that happened.
async fn closed(mut stream: TcpStream) -> Instant {
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => continue,
        }
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_thousand_idle_connections_neither_block_requests_nor_stay_open(db: PgPool) {
    // Both ends of 1,000 connections live in this process.
    let files = rlimit::increase_nofile_limit(4096).unwrap();
    assert!(
        files >= 2_300,
        "the open-file limit ({files}) is too low for this test"
    );
    let idle_timeout = Duration::from_secs(2);
    let app = spawn(db, idle_timeout, 10_000).await;
    let client = app.client_with_scope(Scope::Read, None).await;
    assert_eq!(app.get("/v1/runs").await.status(), StatusCode::OK);

    // Half send nothing at all, half only the HTTP/2 preface.
    let address = app.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let connected = Instant::now();
        if i % 2 == 1 {
            stream.write_all(HTTP2_PREFACE).await.unwrap();
        }
        held.push((connected, stream));
    }

    let started = Instant::now();
    let response = client.get(app.url("/v1/runs")).send().await.unwrap();
    let took = started.elapsed();
    println!("a request among 1,000 idle connections took {took:?}");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        took < Duration::from_millis(100),
        "a request among 1,000 idle connections took {took:?}"
    );

    let closings = held
        .into_iter()
        .map(|(connected, stream)| async move { (connected, closed(stream).await) });
    let closings = tokio::time::timeout(
        idle_timeout + Duration::from_secs(10),
        futures::future::join_all(closings),
    )
    .await
    .expect("every idle connection is closed soon after the idle timeout");
    for (connected, closed_at) in closings {
        assert!(
            closed_at - connected >= idle_timeout,
            "closed after {:?}, before the idle timeout",
            closed_at - connected
        );
    }
    // And the server still answers.
    let response = client.get(app.url("/v1/runs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn beyond_the_connection_cap_clients_wait_instead_of_failing(db: PgPool) {
    let idle_timeout = Duration::from_secs(1);
    let app = spawn(db, idle_timeout, 3).await;
    let client = app.client_with_scope(Scope::Read, None).await;
    let address = app.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    let started = Instant::now();
    let response = client.get(app.url("/v1/runs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // It was accepted only once an idle connection had been closed.
    assert!(
        started.elapsed() >= idle_timeout / 2,
        "{:?}",
        started.elapsed()
    );
    drop(held);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_quiet_event_stream_is_not_an_idle_connection(db: PgPool) {
    let idle_timeout = Duration::from_millis(500);
    let app = spawn(db, idle_timeout, 10_000).await;
    let response = app.get("/v1/events").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    // Several idle timeouts pass with nothing sent either way (keep-alive comments come every
    // 15 s); the stream must still deliver.
    tokio::time::sleep(idle_timeout * 4).await;
    let other = reqwest::Client::new();
    let created = other
        .put(app.url("/v1/tasks/quiet"))
        .bearer_auth(common::new_token(&app.db, Scope::Admin, None).await)
        .json(&json!({"template": common::calculatepi()}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains("task.created") {
            let chunk = stream
                .next()
                .await
                .expect("the stream is still open")
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event arrives");
}
