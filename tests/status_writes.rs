//! The one guarded status writer: every store function that changes a run's status moves only
//! runs in a status the state machine allows to make that move, so a stale or replayed writer
//! changes nothing (no column, no history entry), and every change counts itself in the metrics.

use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;
use vfi_orchestrator::domain::{JobRef, PodCounts, RunStatus};
use vfi_orchestrator::store::runs::{
    self, Observation, StatusDetail, TransitionError, TransitionOutcome,
};
use vfi_orchestrator::store::status::{self, Change, Which, WriteError};

const OWNER: &str = "launcher-a";

fn job() -> JobRef {
    JobRef {
        namespace: "default".into(),
        name: "run-job".into(),
        uid: Some("uid-1".into()),
    }
}

/// A run in `status`, written directly (as a replica that moved it there would have left it):
/// leased by [`OWNER`] when `creating` (a lease that lapsed long ago, so a claim could take it
/// over were its status wrong), with a Job from `pending` on, last changed an hour ago.
async fn run_in(db: &PgPool, status: RunStatus) -> Uuid {
    let id = Uuid::now_v7();
    let has_job = !matches!(status, RunStatus::Queued | RunStatus::Creating);
    sqlx::query(
        "INSERT INTO runs (id, number, status, trigger, template, created_at, updated_at,
            lease_owner, lease_until, job_namespace, job_name, job_uid, finished_at)
         VALUES ($1, (SELECT coalesce(max(number), 0) + 1 FROM runs), $2, 'api', $3,
            now() - interval '1 hour', now() - interval '1 hour',
            CASE WHEN $2 = 'creating' THEN $4 END,
            CASE WHEN $2 = 'creating' THEN now() - interval '1 hour' END,
            CASE WHEN $5 THEN 'default' END, CASE WHEN $5 THEN 'run-job' END,
            CASE WHEN $5 THEN 'uid-1' END,
            CASE WHEN $6 THEN now() - interval '1 hour' END)",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(json!({"image": "busybox", "command": ["true"]}))
    .bind(OWNER)
    .bind(has_job)
    .bind(status.is_final())
    .execute(db)
    .await
    .unwrap();
    id
}

/// The whole row and its history, to compare before and after.
async fn snapshot(db: &PgPool, id: Uuid) -> (String, i64) {
    sqlx::query_as(
        "SELECT (SELECT row_to_json(r)::text FROM runs r WHERE r.id = $1),
                (SELECT count(*) FROM run_events WHERE run_id = $1)",
    )
    .bind(id)
    .fetch_one(db)
    .await
    .unwrap()
}

fn seen(status: RunStatus) -> Observation<'static> {
    Observation {
        status,
        reason: Some("Seen"),
        message: Some("what the cluster said"),
        counts: PodCounts {
            active: 1,
            ready: 1,
            succeeded: 0,
            failed: 0,
        },
        started_at: None,
        finished_at: None,
        job: None,
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn no_write_path_moves_a_finished_run(db: PgPool) {
    for status in [
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Lost,
    ] {
        let id = run_in(&db, status).await;
        let before = snapshot(&db, id).await;

        let claimed = runs::claim_launchable(&db, OWNER, Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert!(claimed.is_empty(), "{status}: claimed {claimed:?}");
        let created = runs::mark_created(&db, id, &job()).await.unwrap().unwrap();
        assert_eq!(created.status, status, "mark_created");
        assert!(
            !runs::retry_launch_later(&db, id, OWNER, "boom", chrono::Utc::now())
                .await
                .unwrap(),
            "{status}: retry_launch_later"
        );
        for to in [RunStatus::Pending, RunStatus::Running, RunStatus::Failed] {
            let observed = runs::observe(&db, id, &seen(to)).await.unwrap().unwrap();
            assert_eq!((observed.previous, observed.current), (status, status));
            assert_eq!(runs::advance(&db, id, to).await.unwrap(), None, "{status}");
        }
        assert_eq!(
            runs::cancel(&db, id).await.unwrap().unwrap().err(),
            Some(status)
        );
        // A stale writer that still believes the run is running.
        let stale = runs::transition(
            &db,
            id,
            RunStatus::Running,
            RunStatus::Succeeded,
            StatusDetail::default(),
        )
        .await;
        assert!(
            matches!(
                stale,
                Err(TransitionOutcome::Refused(TransitionError::Stale))
            ),
            "{status}: {stale:?}"
        );
        // A writer that asks the state machine for a move out of a final status.
        let illegal =
            runs::transition(&db, id, status, RunStatus::Running, StatusDetail::default()).await;
        assert!(
            matches!(
                illegal,
                Err(TransitionOutcome::Refused(
                    TransitionError::NotAllowed { .. }
                ))
            ),
            "{status}: {illegal:?}"
        );
        let overdue = runs::fail_overdue_pending(&db, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(overdue.is_empty(), "{status}: {overdue:?}");

        assert_eq!(snapshot(&db, id).await, before, "{status} changed");
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn mark_created_on_a_cancelled_run_changes_nothing(db: PgPool) {
    // Cancelled while the launcher was creating its Job: the tracker deletes the Job when it sees
    // it; the launcher's late record must not revive or alter the run.
    let id = run_in(&db, RunStatus::Creating).await;
    runs::cancel(&db, id).await.unwrap().unwrap().unwrap();
    let before = snapshot(&db, id).await;
    let run = runs::mark_created(&db, id, &job()).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.job, None);
    assert_eq!(snapshot(&db, id).await, before);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn stale_writers_do_not_move_live_runs(db: PgPool) {
    // mark_created on a run no launcher holds.
    let queued = run_in(&db, RunStatus::Queued).await;
    let before = snapshot(&db, queued).await;
    let run = runs::mark_created(&db, queued, &job())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    // A pod seen running cannot move a run that has no Job yet.
    assert_eq!(
        runs::advance(&db, queued, RunStatus::Running)
            .await
            .unwrap(),
        None
    );
    assert_eq!(snapshot(&db, queued).await, before, "queued run changed");

    // Another launcher's retry of a run it no longer holds.
    let creating = run_in(&db, RunStatus::Creating).await;
    let before = snapshot(&db, creating).await;
    assert!(
        !runs::retry_launch_later(&db, creating, "launcher-b", "boom", chrono::Utc::now())
            .await
            .unwrap()
    );
    assert_eq!(
        snapshot(&db, creating).await,
        before,
        "creating run changed"
    );

    // A replayed `pending` observation never moves a running run back; the pending limit and
    // the launcher's claim leave it alone.
    let running = run_in(&db, RunStatus::Running).await;
    let (_, events) = snapshot(&db, running).await;
    let observed = runs::observe(&db, running, &seen(RunStatus::Pending))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(observed.current, RunStatus::Running);
    assert!(runs::fail_overdue_pending(&db, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    let claimed = runs::claim_launchable(&db, OWNER, Duration::from_secs(60), 10)
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = claimed.iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![queued, creating],
        "the queued run and the lapsed creating one are claimed; the running one is not"
    );
    let run = runs::get(&db, running).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(snapshot(&db, running).await.1, events, "history changed");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_writer_refuses_expected_statuses_the_state_machine_forbids(db: PgPool) {
    let id = run_in(&db, RunStatus::Succeeded).await;
    let before = snapshot(&db, id).await;
    let change = Change::to(
        RunStatus::Running,
        &[RunStatus::Pending, RunStatus::Succeeded],
    );
    let refused = status::write(&db, Which::Run(id), change).await;
    assert!(
        matches!(
            refused,
            Err(WriteError::NotAllowed {
                from: RunStatus::Succeeded,
                to: RunStatus::Running
            })
        ),
        "{refused:?}"
    );
    assert_eq!(snapshot(&db, id).await, before);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn each_change_records_its_history_entry_and_metrics(db: PgPool) {
    let metrics = vfi_orchestrator::telemetry::metrics();
    let id = run_in(&db, RunStatus::Queued).await;
    let claimed = runs::claim_launchable(&db, OWNER, Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    runs::mark_created(&db, id, &job()).await.unwrap();
    // The schedule's Replace policy cancels through the same writer.
    let detail = StatusDetail {
        reason: Some("Replaced"),
        message: Some("replaced by a newer run"),
    };
    let cancelled = runs::cancel_with(&db, id, detail)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());

    let history: Vec<(Option<String>, String)> = runs::history(&db, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.previous.map(|p| p.to_string()), e.status.to_string()))
        .collect();
    let expected: Vec<(Option<String>, String)> = [
        (None, "queued"),
        (Some("queued"), "creating"),
        (Some("creating"), "pending"),
        (Some("pending"), "cancelled"),
    ]
    .into_iter()
    .map(|(p, s)| (p.map(str::to_owned), s.to_owned()))
    .collect();
    assert_eq!(history, expected);

    let rendered = metrics.render();
    let line = |name: &str, status: &str| {
        rendered
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("status=\"{status}\"")))
            .map(str::to_owned)
    };
    let duration = line("vfi_run_duration_seconds_count", "cancelled");
    assert!(
        duration.as_deref().is_some_and(|l| l.ends_with(" 1")),
        "{rendered}"
    );
    let changes = line("vfi_run_status_changes_total", "cancelled");
    assert!(
        changes.as_deref().is_some_and(|l| l.ends_with(" 1")),
        "{rendered}"
    );
}

/// A status change locks its run `FOR NO KEY UPDATE`, as PostgreSQL's own `UPDATE` does: other
/// writers of the run wait for it, but a row inserted for the run meanwhile (a pod's record, a
/// log capture) only needs the run to exist (its foreign key check takes `FOR KEY SHARE`) and
/// does not wait for the status transaction to end. Under `FOR UPDATE` the tracker's and the
/// launcher's status transactions held up every pod and log capture of the run they wrote.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_pods_record_is_not_held_up_by_a_status_change_of_its_run_in_progress(db: PgPool) {
    let id = run_in(&db, RunStatus::Pending).await;
    let mut tx = db.begin().await.unwrap();
    let moved = status::write(
        &mut *tx,
        Which::Run(id),
        Change::to(RunStatus::Running, &[RunStatus::Pending]),
    )
    .await
    .unwrap();
    assert_eq!(moved.len(), 1);

    // While that transaction is open, another connection records a pod of the run.
    let pod = vfi_orchestrator::domain::PodRecord {
        name: "run-job-abcde".into(),
        uid: "pod-uid".into(),
        completion_index: None,
        node_name: None,
        phase: "Running".into(),
        exit_code: None,
        reason: None,
        message: None,
        restarts: 0,
        created_at: None,
        started_at: None,
        finished_at: None,
        deleted: false,
    };
    let recorded = tokio::time::timeout(
        Duration::from_secs(10),
        vfi_orchestrator::store::pods::upsert(&db, id, &pod),
    )
    .await;
    assert!(
        matches!(recorded, Ok(Ok(()))),
        "the pod's record waited for the status transaction: {recorded:?}"
    );
    tx.commit().await.unwrap();
    let pods = vfi_orchestrator::store::pods::list(&db, id).await.unwrap();
    assert_eq!(pods, vec![pod]);
    let run = runs::get(&db, id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
}
