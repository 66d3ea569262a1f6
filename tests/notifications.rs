//! One notification hub per process (issue 14): a replica LISTENs on one connection for every
//! loop and stream, and after that connection drops it listens again and tells every subscriber
//! to catch up, so no loop misses work announced while it was down.

mod common;

use common::service::{kubesim, scripted, RunnerKind, Service};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use vfi_orchestrator::store::notify::{Notifications, Signal, Subscription};
use vfi_orchestrator::store::runs::QUEUED_CHANNEL;
use vfi_orchestrator::store::tokens::REVOKED_CHANNEL;

const WAIT: Duration = Duration::from_secs(20);

/// Connections of this database pinned for good: LISTEN connections and advisory-lock holders.
async fn pinned(db: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE a.query ILIKE 'LISTEN%'), \
                count(*) FILTER (WHERE a.query ILIKE 'LISTEN%' OR EXISTS ( \
                    SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory')) \
         FROM pg_stat_activity a \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

async fn next(subscription: &mut Subscription) -> Signal {
    tokio::time::timeout(WAIT, subscription.recv())
        .await
        .expect("a signal within the timeout")
}

async fn notify(db: &PgPool, channel: &str, payload: &str) {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(db)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_replica_pins_at_most_two_connections_whatever_listens(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    // Every subscriber of the hub at work: the loops (started with the service), an event
    // stream and, since the stream was opened with a token, the token revocations.
    let response = service
        .http
        .get(service.url("/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let id = service
        .submit(scripted(&[("KUBESIM_DURATION_MS", "10")], json!({})))
        .await;
    tokio::time::timeout(WAIT, async {
        let mut seen = String::new();
        while !seen.contains("event: run.created") {
            let chunk = stream.next().await.expect("stream open").unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("the stream delivers the run's creation");
    service.wait_for(&id, "succeeded", WAIT).await;

    // Measured over a while, as a replica would be sampled: no moment shows more.
    let (mut listening, mut most) = (0, 0);
    for _ in 0..20 {
        let (listen, all) = pinned(&db).await;
        listening = listening.max(listen);
        most = most.max(all);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listening, 1, "LISTEN connections of one replica");
    assert!(
        most <= 2,
        "{most} pinned connections (LISTEN and advisory locks)"
    );
    drop(stream);
    service.stop().await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn after_its_connection_drops_the_hub_listens_again_and_everyone_catches_up(db: PgPool) {
    let hub = Notifications::new(db.clone());
    let mut launcher = hub.subscribe(QUEUED_CHANNEL);
    let mut revocations = hub.subscribe(REVOKED_CHANNEL);
    // Listening: everyone first looks for what was announced before.
    assert_eq!(next(&mut launcher).await, Signal::CatchUp);
    assert_eq!(next(&mut revocations).await, Signal::CatchUp);

    // Each channel reaches its own subscribers, payload and all.
    notify(&db, QUEUED_CHANNEL, "1").await;
    notify(&db, REVOKED_CHANNEL, "token").await;
    assert_eq!(next(&mut launcher).await, Signal::Notified("1".into()));
    assert_eq!(
        next(&mut revocations).await,
        Signal::Notified("token".into())
    );

    // The LISTEN connection is killed (a failover, a proxy timeout, an administrator).
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one LISTEN connection");
    // Whatever was announced while it was down is looked for: everyone is told to catch up.
    assert_eq!(next(&mut launcher).await, Signal::CatchUp);
    assert_eq!(next(&mut revocations).await, Signal::CatchUp);

    // And it hears again.
    notify(&db, QUEUED_CHANNEL, "2").await;
    assert_eq!(next(&mut launcher).await, Signal::Notified("2".into()));
}
