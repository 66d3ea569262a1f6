//! SQL for runs. Every status change here goes through [`status::write`], the one guarded writer:
//! it only makes the moves [`RunStatus::can_become`] allows, from the statuses it expects to find.

//!
//! - [`reads`]: lookups for the API and the loops;
//! - [`submit`]: recording a submission (caps, concurrency key policies, number, queued row);
//! - [`launch`]: the launch queue (admission and claim, Job created, retry later, overdue
//!   `pending`);
//! - [`transitions`]: status changes observed in the cluster, and guarded moves;
//! - [`cancel`]: cancellation and the Jobs it leaves to delete;
//! - [`finals`]: a cache of final runs for reads by id.

mod cancel;
mod finals;
mod launch;
mod reads;
mod retry;
mod submit;
mod transitions;

pub use cancel::{cancel, cancel_with, job_deleted, jobs_to_delete, late_job, CANCELLED_CHANNEL};
pub use finals::{FinalRun, FinalRuns};
pub use launch::{
    claim_admitted, claim_launchable, fail_overdue_pending, mark_created, mark_created_as,
    retry_launch_later,
};
pub use reads::{get, history, list, live_with_jobs, RunEvent, RunFilter};
pub use retry::{
    count_disruption, index_outcomes, index_outcomes_locked, resubmit_lost, IndexOutcome,
    IndexesView,
};
pub use submit::{submit, submit_all, QUEUED_CHANNEL};
pub use transitions::{
    advance, note_waiting, note_waiting_for_job, observe, observe_with, transition, Observation,
    Observed, StatusDetail, TransitionError, TransitionOutcome, Waiting,
};

use crate::domain::params::RunParams;
use crate::domain::{JobRef, LaunchInfo, PodCounts, Run, RunStatus, RunTemplate, Trigger};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;
use uuid::Uuid;

pub(super) const COLUMNS: &str =
    "id, task_name, number, status, status_reason, status_message, trigger, \
     rerun_of, template, labels, created_at, updated_at, started_at, finished_at, \
     job_namespace, job_name, job_uid, launch_attempts, launch_error, launch_not_before, \
     pods_active, pods_ready, pods_succeeded, pods_failed, scheduled_time, \
     priority, queue_key, queue_limit, admitted_at, superseded_by, params, retry_reason";

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    id: Uuid,
    task_name: Option<String>,
    number: i64,
    status: RunStatus,
    status_reason: Option<String>,
    status_message: Option<String>,
    trigger: Trigger,
    rerun_of: Option<Uuid>,
    template: Json<RunTemplate>,
    labels: Json<BTreeMap<String, String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    job_namespace: Option<String>,
    job_name: Option<String>,
    job_uid: Option<String>,
    launch_attempts: i32,
    launch_error: Option<String>,
    launch_not_before: Option<DateTime<Utc>>,
    pods_active: i32,
    pods_ready: i32,
    pods_succeeded: i32,
    pods_failed: i32,
    scheduled_time: Option<DateTime<Utc>>,
    priority: i32,
    queue_key: Option<String>,
    queue_limit: Option<i32>,
    admitted_at: Option<DateTime<Utc>>,
    superseded_by: Option<Uuid>,
    params: Json<RunParams>,
    retry_reason: Option<String>,
}

impl From<RunRow> for Run {
    fn from(row: RunRow) -> Run {
        Run {
            id: row.id,
            number: row.number,
            task: row.task_name,
            status: row.status,
            status_reason: row.status_reason,
            status_message: row.status_message,
            trigger: row.trigger,
            rerun_of: row.rerun_of,
            template: row.template.0,
            labels: row.labels.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            launch: LaunchInfo {
                attempts: row.launch_attempts,
                last_error: row.launch_error,
                next_attempt_at: row
                    .launch_not_before
                    .filter(|_| row.status == RunStatus::Queued),
                admitted_at: row.admitted_at,
            },
            job: match (row.job_namespace, row.job_name) {
                (Some(namespace), Some(name)) => Some(JobRef {
                    namespace,
                    name,
                    uid: row.job_uid,
                }),
                _ => None,
            },
            pods: PodCounts {
                active: row.pods_active,
                ready: row.pods_ready,
                succeeded: row.pods_succeeded,
                failed: row.pods_failed,
            },
            scheduled_time: row.scheduled_time,
            report: None,
            priority: row.priority,
            queue_key: row.queue_key,
            queue_limit: row.queue_limit,
            queue: None,
            superseded_by: row.superseded_by,
            params: row.params.0,
            retry_reason: row.retry_reason,
        }
    }
}
