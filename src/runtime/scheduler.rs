//! The scheduler: starts the runs of scheduled tasks on time, exactly once per (task, scheduled
//! time), on any number of replicas. It sleeps on its [`Clock`](crate::clock::Clock) until the
//! next scheduled time, and wakes early when a task changes (the database NOTIFYs). What a due
//! time does is decided by the pure `domain::schedule::plan`; each decision is applied in its
//! own transaction that locks the task's cursor, so two replicas never work on one time, and
//! the fire record's primary key backs that up should anything slip.

use super::Runtime;
use crate::domain::schedule::{ConcurrencyPolicy, Decision, SkipReason};
use crate::domain::{CapReached, Origin, RunStatus, Submission, TaskSpec};
use crate::store::runs::{self, StatusDetail};
use crate::store::schedules;
use chrono::{DateTime, Duration, Utc};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// Longest sleep without a due time, as a safety net behind NOTIFY.
const IDLE: Duration = Duration::seconds(60);
/// Real-time pause after a database error.
const ERROR_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    // Woken by the process's notification hub (and by a catch-up after it reconnects).
    let mut woken = runtime
        .notifications
        .subscribe(schedules::TASK_CHANGED_CHANNEL);
    loop {
        let now = runtime.clock.now();
        let wake = match tick(&runtime, now).await {
            Ok(next) => next.map_or(now + IDLE, |next| next.min(now + IDLE)),
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "scheduler: a pass failed; retrying");
                metrics::counter!("vfi_scheduler_errors_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                }
                continue;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = woken.recv() => {}
            _ = runtime.clock.sleep_until(wake) => {}
        }
    }
}

/// Deals with every scheduled time up to `now`; returns the next scheduled time of any task.
pub async fn tick(
    runtime: &Runtime,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    schedules::forget_unscheduled(&runtime.db).await?;
    let mut next: Option<DateTime<Utc>> = None;
    for (task, spec) in schedules::scheduled_tasks(&runtime.db).await? {
        match schedule_task(runtime, &task, &spec, now).await {
            Ok(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
            Ok(None) => {}
            // One task's trouble (e.g. deleted meanwhile) must not hold up the others.
            Err(error) => {
                tracing::warn!(%task, error = %crate::error::chain(&error), "scheduler: scheduling a task failed");
                metrics::counter!("vfi_scheduler_errors_total").increment(1);
            }
        }
    }
    Ok(next)
}

#[tracing::instrument(skip_all, fields(task = %task))]
async fn schedule_task(
    runtime: &Runtime,
    task: &str,
    spec: &TaskSpec,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (Some(expression), Some(Ok(schedule))) = (&spec.schedule.schedule, spec.schedule.parsed())
    else {
        // Stored specs were validated; one that no longer parses is left alone, loudly.
        tracing::warn!("scheduler: the task's schedule does not parse; skipping it");
        return Ok(None);
    };
    let zone = schedule.zone().name();
    let after = schedules::cursor(&runtime.db, task, expression, zone, now).await?;
    let policy = spec.schedule.fire_policy();
    for decision in crate::domain::schedule::plan(&schedule, &policy, after, now) {
        apply(runtime, task, spec, &decision).await?;
    }
    schedules::advance(&runtime.db, task, now).await?;
    Ok(schedule.next_after(now))
}

/// Applies one decision in its own transaction, under the task's cursor lock.
async fn apply(
    runtime: &Runtime,
    task: &str,
    spec: &TaskSpec,
    decision: &Decision,
) -> Result<(), sqlx::Error> {
    let time = decision.time();
    let mut tx = runtime.db.begin().await?;
    if !schedules::lock_if_ahead(&mut tx, task, time).await? {
        // Another replica (or an earlier pass) dealt with it.
        return Ok(());
    }
    match decision {
        Decision::Skip {
            reason, message, ..
        } => skip(&mut tx, task, time, *reason, message).await?,
        Decision::Start { .. } => start(runtime, &mut tx, task, spec, time).await?,
    }
    schedules::advance(&mut *tx, task, time).await?;
    tx.commit().await
}

async fn skip(
    tx: &mut sqlx::PgConnection,
    task: &str,
    time: DateTime<Utc>,
    reason: SkipReason,
    message: &str,
) -> Result<(), sqlx::Error> {
    if schedules::record_skip(&mut *tx, task, time, reason, message).await? {
        metrics::counter!("vfi_schedule_skipped_total", "reason" => reason.as_str()).increment(1);
        tracing::info!(scheduled_time = %time, %reason, detail = message, "scheduled time skipped");
    }
    Ok(())
}

async fn start(
    runtime: &Runtime,
    tx: &mut sqlx::PgConnection,
    task: &str,
    spec: &TaskSpec,
    time: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // Before Replace cancels anything: a run that may not start must not stop another.
    let checked = Submission::check(
        &runtime.settings.policy,
        Origin::scheduled(task, time).by_service(),
        spec.template.clone(),
        spec.limits.as_ref(),
    )
    .and_then(|checked| checked.with_params(&spec.parameters, &spec.schedule.schedule_params))
    .and_then(|checked| checked.queued(spec.concurrency.as_ref(), spec.priority, None, None));
    let submission = match checked {
        Ok(submission) => submission,
        Err(invalid) => {
            let message =
                format!("the task's template is beyond this installation's limits: {invalid}");
            return skip(tx, task, time, SkipReason::BeyondLimits, &message).await;
        }
    };
    let policy = spec.schedule.concurrency_policy.unwrap_or_default();
    if policy != ConcurrencyPolicy::Allow {
        let active = schedules::active_runs(&mut *tx, task).await?;
        if !active.is_empty() && policy == ConcurrencyPolicy::Forbid {
            let message = format!(
                "concurrencyPolicy is Forbid and {} run(s) of the task were active (oldest {})",
                active.len(),
                active[0]
            );
            return skip(tx, task, time, SkipReason::Forbid, &message).await;
        }
        let message = format!("replaced by the run scheduled for {}", time.to_rfc3339());
        for id in active {
            // Through the one cancel path, so the canceller deletes the Job.
            let detail = StatusDetail {
                reason: Some("Replaced"),
                message: Some(&message),
            };
            if let Some(Ok(_)) = runs::cancel_with(&runtime.db, id, detail).await? {
                metrics::counter!("vfi_schedule_replaced_total").increment(1);
                tracing::info!(run_id = %id, scheduled_time = %time, "active run cancelled (Replace)");
            }
        }
    }
    // The claim and the run stand or fall together: a full queue leaves the time unclaimed.
    let mut claim = tx.begin().await?;
    if !schedules::claim_time(&mut claim, task, time).await? {
        return Ok(());
    }
    let run = match runs::submit(&mut claim, &submission, runtime.settings.caps).await? {
        Ok(run) => run,
        Err(reached) => {
            claim.rollback().await?;
            let reason = match reached {
                CapReached::Forbidden { .. } => SkipReason::Forbid,
                _ => SkipReason::QueueFull,
            };
            return skip(tx, task, time, reason, &reached.to_string()).await;
        }
    };
    schedules::attach_run(&mut claim, task, time, run.id).await?;
    claim.commit().await?;
    debug_assert_eq!(run.status, RunStatus::Queued);
    metrics::counter!("vfi_schedule_runs_started_total").increment(1);
    tracing::info!(run_id = %run.id, number = run.number, scheduled_time = %time, "scheduled run queued");
    Ok(())
}
