//! The launcher: claims queued runs from Postgres (`FOR UPDATE SKIP LOCKED`, so any number of
//! replicas can run it), renders each into its Job and creates it. Transient API failures go back
//! to the queue with capped exponential backoff; permanent ones fail the run with the API
//! server's message. A crash at any point leaves either a queued run or a `creating` run with a
//! lapsing lease, and the deterministic Job name turns the retry into an adoption.
//!
//! Each claimed run is launched in its own task holding one of `LAUNCH_CONCURRENCY` slots, and
//! the loop claims again as soon as a slot frees: a create the API server leaves hanging holds
//! one slot, never the others.
//!
//! Right before a Job is created the run is checked against the policy as it is now: a run that
//! was allowed when it was queued but is refused now (a narrowed allowlist, lowered limits)
//! fails with reason `PolicyRefused` and never reaches the cluster.
//!
//! Runs with a concurrency key, and every run under installation limits, are claimed only when
//! the admission pass in the claim's transaction lets them through (`store::queue`).
//!
//! A run cancelled while its create is in flight keeps its slot under this launcher's lease;
//! when the create returns, a Job it made is recorded on the cancelled run for the canceller to
//! delete (the run never becomes `pending` or `running`), and without one the slot is given
//! back (`runs::late_job`).
//!
//! Exactly once, with a deadline (`MAX_QUEUE_WAIT_SECS` after the run was submitted, or, for a
//! run a limit may hold, after it was admitted): a create
//! still unanswered at the deadline is abandoned and the run fails `LaunchTimeout` at once
//! (guarded by its `creating` status, so a cancellation or another replica's outcome wins). The
//! abandoned request may still be carried out by the API server later. It cannot make a second
//! Job (the name is deterministic) nor bring the run back (`mark_created` moves only `creating`
//! runs, and the tracker never moves a final run); the tracker deletes a Job that is still
//! active while its run is already final, so the late Job does not run on unrecorded. A run
//! cancelled meanwhile keeps its slot while the create may land: the launcher awaits the
//! abandoned create until its lease ends and records the Job that came for the canceller.

use super::Runtime;
use crate::cluster::jobs::{CreateError, Created};
use crate::cluster::render;
use crate::domain::{JobRef, Run, RunStatus, Submission};
use crate::store::notify::Signal;
use crate::store::runs::{self, StatusDetail};
use crate::telemetry;
use backon::BackoffBuilder;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 64;

/// Longest time between two looks for runs whose launcher's lease lapsed, while wake-ups for
/// new runs keep the launcher from its poll.
const LAPSED_CHECK: Duration = Duration::from_secs(1);

/// How long shutdown waits for launches in flight (an interrupted one is taken over by the next
/// launcher once its lease lapses, and adopted).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    // Woken by the process's notification hub (and by a catch-up after it reconnects).
    let mut wake = runtime.notifications.subscribe(runs::QUEUED_CHANNEL);
    let slots = Arc::new(Semaphore::new(runtime.settings.launch_concurrency));
    let mut launches = JoinSet::new();
    // Lapsed leases are looked for on start, on every poll and catch-up, and at most every
    // LAPSED_CHECK otherwise; a wake-up for a new run only claims queued runs.
    let mut lapsed_checked: Option<tokio::time::Instant> = None;
    let mut look_for_lapsed = true;
    loop {
        let lapsed =
            look_for_lapsed || lapsed_checked.is_none_or(|at| at.elapsed() >= LAPSED_CHECK);
        if lapsed {
            lapsed_checked = Some(tokio::time::Instant::now());
        }
        if let Err(error) = launch_due(&runtime, &slots, &mut launches, lapsed).await {
            tracing::warn!(error = %crate::error::chain(&error), "launcher: claiming runs failed; retrying");
            metrics::counter!("vfi_launcher_errors_total", "kind" => "database").increment(1);
        }
        look_for_lapsed = tokio::select! {
            _ = shutdown.cancelled() => break,
            signal = wake.recv() => {
                // Every run queued meanwhile is claimed by the one pass that follows.
                let drained = wake.drain();
                signal == Signal::CatchUp || drained
            }
            _ = tokio::time::sleep(runtime.settings.launcher_poll) => true,
            // A slot freed: claim again at once.
            Some(_) = launches.join_next() => false,
        };
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while launches.join_next().await.is_some() {}
    })
    .await;
}

/// Claims as many due runs as there are free slots and starts launching each in its own task.
async fn launch_due(
    runtime: &Runtime,
    slots: &Arc<Semaphore>,
    launches: &mut JoinSet<()>,
    mut lapsed: bool,
) -> Result<(), sqlx::Error> {
    loop {
        let free = slots.available_permits().min(BATCH);
        if free == 0 {
            return Ok(());
        }
        let batch = runs::claim_admitted(
            &runtime.db,
            &runtime.settings.instance,
            runtime.settings.launch_lease,
            free as i64,
            &runtime.settings.admission,
            std::mem::take(&mut lapsed),
        )
        .await?;
        if batch.is_empty() {
            return Ok(());
        }
        for run in batch {
            // Only this loop takes slots, and it claimed no more runs than were free.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                return Ok(());
            };
            let runtime = runtime.clone();
            launches.spawn(async move {
                let _slot = slot;
                if let Err(error) = launch(&runtime, &run).await {
                    tracing::warn!(run_id = %run.id, error = %crate::error::chain(&error), "launcher: recording the outcome failed; the lease will lapse and another attempt follows");
                }
            });
        }
    }
}

/// When `MAX_QUEUE_WAIT_SECS` starts counting for the run: its submission, or, for a run a
/// limit may hold (a concurrency key, installation limits), its admission, since the time a
/// limit held it is not time the service could have launched it.
fn waiting_since(runtime: &Runtime, run: &Run) -> chrono::DateTime<chrono::Utc> {
    let held = run.queue_key.is_some() || runtime.settings.admission.limited();
    match run.launch.admitted_at {
        Some(admitted) if held => admitted,
        _ => run.created_at,
    }
}

/// How long the run has waited, as `MAX_QUEUE_WAIT_SECS` counts.
fn waited(runtime: &Runtime, run: &Run) -> Duration {
    (chrono::Utc::now() - waiting_since(runtime, run))
        .to_std()
        .unwrap_or_default()
}

/// When the run must have its Job by.
fn deadline(runtime: &Runtime, run: &Run) -> tokio::time::Instant {
    tokio::time::Instant::now()
        + runtime
            .settings
            .max_queue_wait
            .saturating_sub(waited(runtime, run))
}

#[tracing::instrument(skip_all, fields(run_id = %run.id, task = run.task.as_deref(), number = run.number))]
async fn launch(runtime: &Runtime, run: &Run) -> Result<(), sqlx::Error> {
    if let Some(message) = refused_now(runtime, run).await? {
        metrics::counter!("vfi_launcher_errors_total", "kind" => "policy").increment(1);
        tracing::warn!(error = %message, "the run is no longer allowed here; no Job is created");
        return fail(runtime, run, POLICY_REFUSED, &message).await;
    }
    let settings = &runtime.cluster.settings;
    let job = render::render(settings, run);
    let job_ref = JobRef {
        namespace: render::namespace(settings, run).to_string(),
        name: render::job_name(settings, run),
        uid: None,
    };
    // This launcher's lease on the run ends about then (it was claimed just before).
    let lease_ends = tokio::time::Instant::now() + runtime.settings.launch_lease;
    let create = runtime.cluster.create_job(run.id, &job);
    tokio::pin!(create);
    let outcome = tokio::select! {
        outcome = &mut create => outcome,
        _ = tokio::time::sleep_until(deadline(runtime, run)) => {
            // The create is abandoned (see the module's exactly-once note).
            metrics::counter!("vfi_launcher_errors_total", "kind" => "timeout").increment(1);
            tracing::warn!("launch timed out while the Kubernetes API had not answered");
            let message = format!(
                "the Job could not be created within {} s; the Kubernetes API did not answer in time",
                runtime.settings.max_queue_wait.as_secs()
            );
            fail(runtime, run, "LaunchTimeout", &message).await?;
            return wait_for_late_job(runtime, run, &job_ref, create, lease_ends).await;
        }
    };
    match outcome {
        Ok(created) => {
            let (uid, adopted) = match created {
                Created::New { uid } => (uid, false),
                Created::Adopted { uid } => (uid, true),
            };
            metrics::counter!("vfi_jobs_created_total", "adopted" => adopted.to_string())
                .increment(1);
            tracing::info!(job = %job_ref.name, adopted, "job created");
            // A Job given to a Kueue queue was created suspended: Kueue holds it until its
            // Workload is admitted.
            let status = if run.template.queue_name.is_some() {
                RunStatus::Admitting
            } else {
                RunStatus::Pending
            };
            if run.params.values().any(|p| p.is_secret()) {
                // The Job owns the run's Secret from now on: garbage collection deletes it with
                // the Job. Failing here leaves it to the sweep (param_secrets).
                if let Some(uid) = &uid {
                    if let Err(error) = runtime
                        .cluster
                        .give_param_secret_to_job(run.id, &job_ref.namespace, &job_ref.name, uid)
                        .await
                    {
                        tracing::warn!(error = %crate::error::chain(&error), "could not make the Job the owner of the run's Secret; the sweep will");
                    }
                }
            }
            let job_ref = JobRef { uid, ..job_ref };
            let now = runs::mark_created_as(&runtime.db, run.id, &job_ref, status).await?;
            if now.is_some_and(|now| now.status == RunStatus::Cancelled) {
                // Cancelled while the create was in flight: the canceller deletes the Job.
                if runs::late_job(&runtime.db, run.id, Some(&job_ref)).await? {
                    tracing::info!(job = %job_ref.name, "the run was cancelled while its Job was being created; the Job is deleted");
                }
                return Ok(());
            }
            telemetry::run_launched(run.task.as_deref(), run.created_at);
        }
        Err(CreateError::Transient(message)) => {
            metrics::counter!("vfi_launcher_errors_total", "kind" => "transient").increment(1);
            if waited(runtime, run) > runtime.settings.max_queue_wait {
                tracing::warn!(error = %message, "launch timed out");
                let message = format!(
                    "the Job could not be created within {} s; last error: {message}",
                    runtime.settings.max_queue_wait.as_secs()
                );
                fail(runtime, run, "LaunchTimeout", &message).await?;
            } else {
                let delay = backoff(run.launch.attempts);
                tracing::info!(error = %message, retry_in = ?delay, "launch failed; will retry");
                metrics::counter!("vfi_launcher_retries_total").increment(1);
                let not_before =
                    chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                let queued_again = runs::retry_launch_later(
                    &runtime.db,
                    run.id,
                    &runtime.settings.instance,
                    &message,
                    not_before,
                )
                .await?;
                if !queued_again {
                    // Cancelled meanwhile, and no Job came: its slot is free.
                    runs::late_job(&runtime.db, run.id, None).await?;
                }
            }
        }
        Err(CreateError::Permanent { reason, message }) => {
            metrics::counter!("vfi_launcher_errors_total", "kind" => "permanent").increment(1);
            tracing::warn!(%reason, error = %message, "the API server refused the Job");
            fail(runtime, run, &reason, &message).await?;
            // Cancelled meanwhile, and no Job came: its slot is free.
            runs::late_job(&runtime.db, run.id, None).await?;
        }
    }
    Ok(())
}

/// After a launch timed out: a run cancelled meanwhile (so the `LaunchTimeout` was refused)
/// holds its slot under this launcher's lease while its create may still be carried out. The
/// create is awaited until the lease ends, and what came of it is recorded (`runs::late_job`):
/// a Job, for the canceller to delete, or none, giving the slot back. A create still unanswered
/// then is given up: the lease lapses, and a Job that lands later still belongs to a final run,
/// which the tracker deletes on sight.
async fn wait_for_late_job(
    runtime: &Runtime,
    run: &Run,
    job_ref: &JobRef,
    create: std::pin::Pin<&mut impl std::future::Future<Output = Result<Created, CreateError>>>,
    lease_ends: tokio::time::Instant,
) -> Result<(), sqlx::Error> {
    let now = runs::get(&runtime.db, run.id).await?;
    if !now.is_some_and(|now| now.status == RunStatus::Cancelled && now.job.is_none()) {
        return Ok(());
    }
    let job = match tokio::time::timeout_at(lease_ends, create).await {
        Ok(Ok(Created::New { uid } | Created::Adopted { uid })) => Some(JobRef {
            uid,
            ..job_ref.clone()
        }),
        Ok(Err(_)) => None,
        Err(_) => return Ok(()),
    };
    if runs::late_job(&runtime.db, run.id, job.as_ref()).await? && job.is_some() {
        tracing::info!(job = %job_ref.name, "the run was cancelled while its Job was being created; the Job that came after the launch timed out is deleted");
    }
    Ok(())
}

/// The reason a run fails with when today's policy refuses what was allowed when it was queued.
pub const POLICY_REFUSED: &str = "PolicyRefused";

/// Checks the run against the policy as it is now (allowlists and limits may have been narrowed
/// since it was queued, and its task's limits changed): why it may not start, if it may not.
async fn refused_now(runtime: &Runtime, run: &Run) -> Result<Option<String>, sqlx::Error> {
    let task_limits = match run.task.as_deref() {
        Some(task) => crate::store::tasks::get(&runtime.db, task)
            .await?
            .and_then(|t| t.limits),
        None => None,
    };
    // The front door's own check, with today's policy and the task's limits as they are now.
    let checked = Submission::allowed(
        &runtime.settings.policy,
        &run.template,
        task_limits.as_ref(),
    );
    Ok(checked.err().map(|invalid| {
        format!("the run is no longer allowed by this installation's policy, so no Job was created: {invalid}")
    }))
}

async fn fail(
    runtime: &Runtime,
    run: &Run,
    reason: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    let detail = StatusDetail {
        reason: Some(reason),
        message: Some(message),
    };
    // No Job will own the run's Secret: delete it now (the sweep does if this fails).
    if run.params.values().any(|p| p.is_secret()) {
        let namespace = render::namespace(&runtime.cluster.settings, run);
        if let Err(error) = runtime.cluster.delete_param_secret(run.id, namespace).await {
            tracing::warn!(error = %crate::error::chain(&error), "could not delete the Secret of a run that failed to launch; the sweep will");
        }
    }
    match runs::transition(
        &runtime.db,
        run.id,
        RunStatus::Creating,
        RunStatus::Failed,
        detail,
    )
    .await
    {
        // The store's status writer records the change's metrics.
        Ok(_) => Ok(()),
        Err(runs::TransitionOutcome::Database(e)) => Err(e),
        // Cancelled meanwhile: its status stays.
        Err(runs::TransitionOutcome::Refused(_)) => Ok(()),
    }
}

/// Capped exponential backoff with jitter for the `attempts`-th failed launch.
pub fn backoff(attempts: i32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts.saturating_sub(1).max(0) as usize)
        .unwrap_or(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_secs(2));
        assert!(backoff(4) >= Duration::from_secs(4));
        assert!(backoff(50) <= Duration::from_secs(120), "{:?}", backoff(50));
    }
}
