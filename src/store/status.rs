//! The one writer of run status. Every status change of every run is [`write`]: it moves only
//! runs whose status is among the expected ones, all of which the state machine
//! ([`RunStatus::can_become`]) must allow to become the target, as one guarded statement
//! (`WHERE status = ANY($expected)`) on any executor (pool, connection or transaction). The
//! statement's status change records the run's history entry (the `runs_status_changed` trigger
//! writes it in the same statement, so history and row never disagree; the `runs_outbox` trigger
//! likewise writes the change's commit status report and notifications to the outbox, see
//! store/outbox.rs), and [`write`] emits the
//! status-change counter and, for a final status, the run-duration histogram itself, so no caller
//! can forget them.

use super::runs::{RunRow, COLUMNS};
use crate::domain::{JobRef, PodCounts, Run, RunStatus};
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

/// Which runs a change is for (further narrowed to the expected statuses).
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// One run.
    Run(Uuid),
    /// One run, only while the launcher `owner` holds its lease.
    Leased { id: Uuid, owner: &'a str },
    /// Up to `limit` runs without a concurrency key whose launch is due, by priority (aged one
    /// level per `aging_secs` waited; 0: no aging), then oldest first, skipping rows another
    /// launcher has locked (each run goes to one launcher).
    Due { limit: i64, aging_secs: u64 },
    /// These runs (the admission pass chose them), skipping rows locked elsewhere.
    Ids(&'a [Uuid]),
    /// Every run of concurrency key `key` but `except` (the newer run superseding them).
    OfKey { key: &'a str, except: Uuid },
    /// Runs whose last move into their current status is older than `limit`.
    StuckFor(std::time::Duration),
}

/// What becomes of a run's `status_reason` or `status_message`.
#[derive(Debug, Clone, Copy)]
pub enum Text<'a> {
    /// Left as it is.
    Keep,
    /// Replaced (`None` clears it).
    Set(Option<&'a str>),
    /// The new value when there is one, else the old.
    Prefer(Option<&'a str>),
    /// The old value when there is one, else this.
    Fill(&'a str),
    /// This, followed by `: ` and the old value when there is one.
    Prefix(&'a str),
}

/// Columns written with the status change.
#[derive(Debug, Clone, Copy)]
pub enum Also<'a> {
    Nothing,
    /// The launcher `owner` claims the run for `lease` and counts an attempt.
    Claim {
        owner: &'a str,
        lease: std::time::Duration,
    },
    /// The run's Job exists; launch bookkeeping is cleared.
    Created(&'a JobRef),
    /// The launch failed for now; try again at `not_before`.
    RetryLater {
        error: &'a str,
        not_before: DateTime<Utc>,
    },
    /// A newer run of its concurrency key replaced it.
    Superseded(Uuid),
    /// What the cluster says: pod counts, and the Job when known.
    Observed {
        counts: PodCounts,
        job: Option<&'a JobRef>,
    },
}

/// A status change.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub to: RunStatus,
    /// The statuses the run is expected to be in; each must be allowed to become `to`.
    pub from: &'a [RunStatus],
    pub reason: Text<'a>,
    pub message: Text<'a>,
    /// When it started, if known (else now, on entering `running`).
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished, if known (else now, on entering a final status).
    pub finished_at: Option<DateTime<Utc>>,
    pub also: Also<'a>,
}

impl<'a> Change<'a> {
    /// A move to `to` from any status the state machine allows, with the given reason and
    /// message, and nothing else.
    pub fn to(to: RunStatus, from: &'a [RunStatus]) -> Self {
        Change {
            to,
            from,
            reason: Text::Keep,
            message: Text::Keep,
            started_at: None,
            finished_at: None,
            also: Also::Nothing,
        }
    }
}

/// A run a change moved, with the status it left.
#[derive(Debug, Clone)]
pub struct Moved {
    pub previous: RunStatus,
    pub run: Run,
}

/// Why a status write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The state machine forbids a move the caller asked for; nothing was written.
    #[error("the state machine does not allow a run to become {to} from {from}")]
    NotAllowed { from: RunStatus, to: RunStatus },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<WriteError> for sqlx::Error {
    /// For callers whose moves are fixed in code: a forbidden one is a bug, reported as an error
    /// rather than a panic.
    fn from(error: WriteError) -> sqlx::Error {
        match error {
            WriteError::Database(e) => e,
            refused => sqlx::Error::Protocol(refused.to_string()),
        }
    }
}

#[derive(sqlx::FromRow)]
struct MovedRow {
    previous: RunStatus,
    #[sqlx(flatten)]
    run: RunRow,
}

fn push_text(query: &mut QueryBuilder<'_, Postgres>, column: &str, text: Text<'_>) {
    query.push(format_args!(", {column} = "));
    match text {
        Text::Keep => {
            query.push(format_args!("r.{column}"));
        }
        Text::Set(value) => {
            query.push_bind(value.map(str::to_owned)).push("::text");
        }
        Text::Prefer(value) => {
            query
                .push("coalesce(")
                .push_bind(value.map(str::to_owned))
                .push(format_args!("::text, r.{column})"));
        }
        Text::Fill(value) => {
            query
                .push(format_args!("coalesce(r.{column}, "))
                .push_bind(value.to_owned())
                .push("::text)");
        }
        Text::Prefix(value) => {
            query
                .push_bind(value.to_owned())
                .push(format_args!("::text || coalesce(': ' || r.{column}, '')"));
        }
    }
}

/// Makes `change` for the runs `which` selects that are in one of `change.from`; any other run
/// is left as it is (a stale writer moves nothing). Returns the runs moved.
///
/// The rows are locked `FOR NO KEY UPDATE`, the lock PostgreSQL's own `UPDATE` takes when no key
/// column changes: it serializes every writer of a run as `FOR UPDATE` did, but not the foreign
/// key checks (`FOR KEY SHARE`) of rows inserted for the run meanwhile (its pods, log captures,
/// history): under `FOR UPDATE` each such insert waited for the status transaction to end (in
/// the queue bench, 3,900 such checks waited 5.8 ms each on average).
pub async fn write(
    db: impl PgExecutor<'_>,
    which: Which<'_>,
    change: Change<'_>,
) -> Result<Vec<Moved>, WriteError> {
    if let Some(from) = change.from.iter().find(|from| !from.can_become(change.to)) {
        return Err(WriteError::NotAllowed {
            from: *from,
            to: change.to,
        });
    }
    if change.from.is_empty() {
        // No status expected: nothing to move (and `IN ()` is not SQL).
        return Ok(Vec::new());
    }
    // The expected statuses as literals (a closed set, from [`RunStatus::as_str`]), not a bound
    // array: `status = ANY($1)` leaves the planner walking the primary key through the whole
    // history to find the few queued runs (190 ms at 300,000 runs in EXPLAIN ANALYZE), while
    // `status IN ('queued')` is a range of `runs_status_id` (0.04 ms).
    let expected = change
        .from
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "WITH target AS (SELECT t.id, t.status AS previous FROM runs t WHERE t.status IN ({expected})"
    ));
    match which {
        Which::Run(id) => {
            query
                .push(" AND t.id = ")
                .push_bind(id)
                .push(" FOR NO KEY UPDATE");
        }
        Which::Leased { id, owner } => {
            query
                .push(" AND t.id = ")
                .push_bind(id)
                .push(" AND t.lease_owner = ")
                .push_bind(owner.to_owned())
                .push(" FOR NO KEY UPDATE");
        }
        Which::Due { limit, aging_secs } => {
            query
                .push(
                    " AND t.queue_key IS NULL
                     AND (t.launch_not_before IS NULL OR t.launch_not_before <= now())
                     ORDER BY t.priority + CASE WHEN ",
                )
                .push_bind(aging_secs as f64)
                .push(" > 0 THEN floor(extract(epoch FROM now() - t.created_at) / ")
                .push_bind(aging_secs.max(1) as f64)
                .push(")::int ELSE 0 END DESC, t.id LIMIT ")
                .push_bind(limit)
                .push(" FOR NO KEY UPDATE SKIP LOCKED");
        }
        Which::Ids(ids) => {
            query
                .push(" AND t.id = ANY(")
                .push_bind(ids.to_vec())
                .push(") FOR NO KEY UPDATE SKIP LOCKED");
        }
        Which::OfKey { key, except } => {
            query
                .push(" AND t.queue_key = ")
                .push_bind(key.to_owned())
                .push(" AND t.id <> ")
                .push_bind(except)
                .push(" FOR NO KEY UPDATE");
        }
        Which::StuckFor(limit) => {
            query
                .push(
                    " AND coalesce((SELECT max(e.at) FROM run_events e
                         WHERE e.run_id = t.id AND e.kind = 'status' AND e.status = t.status),
                        t.updated_at) < now() - make_interval(secs => ",
                )
                .push_bind(limit.as_secs().max(1) as f64)
                .push(") FOR NO KEY UPDATE SKIP LOCKED");
        }
    }
    query
        .push(") UPDATE runs r SET status = ")
        .push_bind(change.to.as_str())
        .push(", updated_at = now()");
    push_text(&mut query, "status_reason", change.reason);
    push_text(&mut query, "status_message", change.message);
    query
        .push(", started_at = coalesce(r.started_at, ")
        .push_bind(change.started_at)
        .push(if change.to == RunStatus::Running {
            ", now())"
        } else {
            ")"
        });
    if change.to.is_final() {
        query
            .push(", finished_at = coalesce(")
            .push_bind(change.finished_at)
            .push(", now())");
    }
    match change.also {
        Also::Claim { owner, lease } => {
            query
                .push(", lease_owner = ")
                .push_bind(owner.to_owned())
                .push(", lease_until = now() + make_interval(secs => ")
                .push_bind(lease.as_secs_f64())
                .push("), launch_attempts = r.launch_attempts + 1")
                .push(", admitted_at = coalesce(r.admitted_at, now())");
        }
        other if change.to == RunStatus::Cancelled => {
            // Cancelled (through the API, a schedule's Replace, or superseded by a newer run of
            // its key) while its launcher's create may be in flight: the launcher keeps its
            // lease, so the run keeps its slot (`queue::HOLDS_SLOT`) until the launcher records
            // the Job that came for the canceller to delete, or that none came
            // (`runs::late_job`), or the lease lapses.
            query.push(
                ", lease_owner = CASE WHEN target.previous = 'creating' THEN r.lease_owner END,
                   lease_until = CASE WHEN target.previous = 'creating' THEN r.lease_until END",
            );
            push_also(&mut query, other);
        }
        other => {
            query.push(", lease_owner = NULL, lease_until = NULL");
            push_also(&mut query, other);
        }
    }
    query
        .push(format_args!(
            " FROM target WHERE r.id = target.id AND r.status IN ({expected}) RETURNING target.previous, "
        ));
    let columns: Vec<String> = COLUMNS
        .split(",")
        .map(|c| format!("r.{}", c.trim()))
        .collect();
    query.push(columns.join(", "));
    let rows: Vec<MovedRow> = query.build_query_as().fetch_all(db).await?;
    let moved: Vec<Moved> = rows
        .into_iter()
        .map(|row| Moved {
            previous: row.previous,
            run: Run::from(row.run),
        })
        .collect();
    for moved in &moved {
        record(moved);
    }
    Ok(moved)
}

/// The columns a change writes besides its status and lease (see [`Also`]).
fn push_also<'q>(query: &mut QueryBuilder<'q, Postgres>, also: Also<'_>) {
    match also {
        Also::Created(job) => {
            query
                .push(", job_namespace = ")
                .push_bind(job.namespace.clone())
                .push(", job_name = ")
                .push_bind(job.name.clone())
                .push(", job_uid = coalesce(")
                .push_bind(job.uid.clone())
                .push(", r.job_uid), launch_error = NULL, launch_not_before = NULL");
        }
        Also::RetryLater { error, not_before } => {
            query
                .push(", launch_error = ")
                .push_bind(error.to_owned())
                .push(", launch_not_before = ")
                .push_bind(not_before);
        }
        Also::Observed { counts, job } => {
            query
                .push(", pods_active = ")
                .push_bind(counts.active)
                .push(", pods_ready = ")
                .push_bind(counts.ready)
                .push(", pods_succeeded = ")
                .push_bind(counts.succeeded)
                .push(", pods_failed = ")
                .push_bind(counts.failed);
            if let Some(job) = job {
                query
                    .push(", job_namespace = coalesce(r.job_namespace, ")
                    .push_bind(job.namespace.clone())
                    .push("), job_name = coalesce(r.job_name, ")
                    .push_bind(job.name.clone())
                    .push("), job_uid = coalesce(r.job_uid, ")
                    .push_bind(job.uid.clone())
                    .push(")");
            }
        }
        Also::Superseded(newer) => {
            query.push(", superseded_by = ").push_bind(newer);
        }
        Also::Nothing | Also::Claim { .. } => {}
    }
}

/// The metrics of one status change.
fn record(moved: &Moved) {
    let run = &moved.run;
    metrics::counter!("vfi_run_status_changes_total", "status" => run.status.as_str()).increment(1);
    if run.status.is_final() {
        crate::telemetry::run_finished(
            run.task.as_deref(),
            run.status,
            run.created_at,
            run.started_at,
            run.finished_at,
        );
    }
}
