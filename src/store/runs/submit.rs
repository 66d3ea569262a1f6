//! Submission: the caps, the concurrency key's policies (under the key's advisory lock, see
//! `store::queue`), the run's number, the queued row, and the wake-up for launchers.
//!
//! A submission is one statement per task sequence (the counter, the rows and the NOTIFY
//! together), and a batch of any size is that same statement: round trips, not rows, are what
//! a submission costs (issue 15). The counter row a task's statement updates is locked until
//! commit, so the statement comes last and transactions hold it as briefly as they can; ad-hoc
//! runs, which every `POST /v1/runs` and batch makes, are numbered from a sequence and lock no
//! shared row, so concurrent submitters never queue behind each other's COMMIT.

use super::RunRow;
use super::COLUMNS;
use crate::domain::queue::{Keyed, QueuePolicy, WaitReason};
use crate::domain::{CapReached, Caps, Run, RunStatus, Submission};
use crate::store::queue::{self, KeyCounts};
use crate::store::status::{self, Also, Change, Text, Which};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgExecutor};
use std::collections::HashMap;
use uuid::Uuid;

/// The one way a run is recorded: applies the caps, numbers the run in its task's sequence (or
/// the ad-hoc one), inserts it queued and wakes the launchers at commit. Call it in a
/// transaction: the token's row (per-token cap) and the task's counter row (queue cap) stay
/// locked until commit, so concurrent submitters are counted one after the other. A refused
/// submission leaves nothing behind, so a caller may go on with its transaction.
pub async fn submit(
    conn: &mut PgConnection,
    submission: &Submission,
    caps: Caps,
) -> Result<Result<Run, CapReached>, sqlx::Error> {
    let outcome = submit_all(conn, std::slice::from_ref(submission), caps).await?;
    let run = match outcome {
        Ok(mut runs) => runs.remove(0),
        Err(refused) => return Ok(Err(refused)),
    };
    // A rerun of a webhook run builds the same commit and reports to it like the original
    // (every rerun, from the API or the Git host's Re-run button, comes through here).
    if let Some(original) = submission.origin().rerun_of {
        crate::store::outbox::copy_source(&mut *conn, original, run.id).await?;
    }
    Ok(Ok(run))
}

/// [`submit`] for many runs at once, all or none: the caps count the whole batch, and the runs
/// come back in the order given.
pub async fn submit_all(
    conn: &mut PgConnection,
    submissions: &[Submission],
    caps: Caps,
) -> Result<Result<Vec<Run>, CapReached>, sqlx::Error> {
    // The per-token cap is checked before anything is written; only the per-task queue cap,
    // counted after the insert, may have to undo one (to a savepoint, so that the caller's
    // transaction goes on; two round trips that submissions without it are spared).
    if let Err(refused) = check_tokens(&mut *conn, submissions, caps).await? {
        return Ok(Err(refused));
    }
    let keys = match check_keys(&mut *conn, submissions).await? {
        Ok(keys) => keys,
        Err(refused) => return Ok(Err(refused)),
    };
    let queue_capped =
        caps.max_queued_runs_per_task > 0 && submissions.iter().any(|s| s.origin().task.is_some());
    if !queue_capped {
        let runs = insert_all(&mut *conn, submissions).await?;
        after_insert(&mut *conn, &keys, &runs).await?;
        return Ok(Ok(runs));
    }
    let mut savepoint = conn.begin().await?;
    let runs = insert_all(&mut savepoint, submissions).await?;
    let limit = caps.max_queued_runs_per_task;
    let mut tasks: Vec<&str> = submissions
        .iter()
        .filter_map(|s| s.origin().task.as_deref())
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    for task in tasks {
        // Counted after the insert, which holds the task's counter row.
        if queued_count(&mut *savepoint, task).await? > i64::from(limit) {
            savepoint.rollback().await?;
            return Ok(Err(CapReached::QueueFull {
                task: task.to_string(),
                limit,
            }));
        }
    }
    after_insert(&mut savepoint, &keys, &runs).await?;
    savepoint.commit().await?;
    Ok(Ok(runs))
}

/// A key among the submissions, with what its runs found when its lock was taken.
struct KeyAtSubmission {
    keyed: Keyed,
    counts: KeyCounts,
}

/// Locks the keys among `submissions` (until commit) and applies their policies' refusals:
/// `Forbid` while the key has `limit` unfinished runs (409), and `maxWaiting` for runs that
/// would wait (429). Nothing is written.
async fn check_keys(
    conn: &mut PgConnection,
    submissions: &[Submission],
) -> Result<Result<Vec<KeyAtSubmission>, CapReached>, sqlx::Error> {
    let mut keys: Vec<(&Keyed, i64)> = Vec::new();
    for keyed in submissions.iter().filter_map(|s| s.keyed()) {
        match keys.iter_mut().find(|(k, _)| k.key == keyed.key) {
            Some((_, n)) => *n += 1,
            None => keys.push((keyed, 1)),
        }
    }
    if keys.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.key.as_str()).collect();
    queue::lock_keys(&mut *conn, &names).await?;
    let mut checked = Vec::with_capacity(keys.len());
    for (keyed, asked) in keys {
        let counts = queue::key_counts(&mut *conn, &keyed.key).await?;
        let unfinished = counts.active + counts.waiting;
        let limit = i64::from(keyed.limit);
        match keyed.policy {
            QueuePolicy::Forbid if unfinished + asked > limit => {
                return Ok(Err(CapReached::Forbidden {
                    key: keyed.key.clone(),
                    active: unfinished,
                }));
            }
            QueuePolicy::Queue | QueuePolicy::Forbid => {
                // Runs beyond the key's free slots wait; maxWaiting caps them.
                let waiting_now = (unfinished - limit).max(0);
                let waiting_after = (unfinished + asked - limit).max(0);
                if let Some(max) = keyed.max_waiting {
                    if waiting_after > waiting_now && waiting_after > i64::from(max) {
                        return Ok(Err(CapReached::TooManyWaiting {
                            key: keyed.key.clone(),
                            depth: waiting_now,
                            max_waiting: max,
                        }));
                    }
                }
            }
            QueuePolicy::CancelInProgress | QueuePolicy::CancelPending => {}
        }
        checked.push(KeyAtSubmission {
            keyed: keyed.clone(),
            counts,
        });
    }
    Ok(Ok(checked))
}

/// After the runs are recorded: the newest run of a `CancelInProgress` key cancels the key's
/// other unfinished runs, of a `CancelPending` key its other waiting ones (reason
/// `Superseded`, `supersededBy` the newest; the canceller deletes their Jobs, whose slots stay
/// taken until then); a run that must wait says why in a `queue` event.
async fn after_insert(
    conn: &mut PgConnection,
    keys: &[KeyAtSubmission],
    runs: &[Run],
) -> Result<(), sqlx::Error> {
    for at in keys {
        let key = at.keyed.key.as_str();
        let of_key: Vec<&Run> = runs
            .iter()
            .filter(|r| r.queue_key.as_deref() == Some(key))
            .collect();
        let Some(newest) = of_key.last() else {
            continue;
        };
        let from: &[RunStatus] = match at.keyed.policy {
            QueuePolicy::CancelInProgress => &[
                RunStatus::Queued,
                RunStatus::Creating,
                RunStatus::Admitting,
                RunStatus::Pending,
                RunStatus::Running,
            ],
            QueuePolicy::CancelPending => &[RunStatus::Queued],
            QueuePolicy::Queue | QueuePolicy::Forbid => &[],
        };
        let mut active = at.counts.active;
        if !from.is_empty() {
            let message = format!("superseded by run {} (/v1/runs/{})", newest.id, newest.id);
            let change = Change {
                reason: Text::Set(Some("Superseded")),
                message: Text::Set(Some(&message)),
                also: Also::Superseded(newest.id),
                ..Change::to(RunStatus::Cancelled, from)
            };
            let which = Which::OfKey {
                key,
                except: newest.id,
            };
            let cancelled = status::write(&mut *conn, which, change).await?;
            for moved in &cancelled {
                metrics::counter!("vfi_queue_superseded_total").increment(1);
                tracing::info!(run_id = %moved.run.id, newer = %newest.id, key, "run superseded");
            }
            // Waiting runs that left the key's queue: the runs behind them moved up.
            let left: Vec<Uuid> = cancelled
                .iter()
                .filter(|m| m.previous == RunStatus::Queued)
                .map(|m| m.run.id)
                .collect();
            if !left.is_empty() {
                queue::note_left(&mut *conn, &left, queue::Left::Cancelled).await?;
            }
            // Cancelled runs keep their slot until their Jobs are deleted.
            active += cancelled
                .iter()
                .filter(|m| m.previous != RunStatus::Queued)
                .count() as i64;
            let waiting = if at.keyed.policy == QueuePolicy::CancelInProgress {
                0
            } else {
                0.max(at.counts.waiting - cancelled.len() as i64)
            };
            note_if_waiting(&mut *conn, at, newest, active, waiting).await?;
            continue;
        }
        for (i, run) in of_key.iter().enumerate() {
            note_if_waiting(&mut *conn, at, run, active, at.counts.waiting + i as i64).await?;
        }
    }
    Ok(())
}

/// A `queue` event for `run` when the key's slots are taken (`active` holding one, `waiting`
/// ahead of it).
async fn note_if_waiting(
    conn: &mut PgConnection,
    at: &KeyAtSubmission,
    run: &Run,
    active: i64,
    waiting: i64,
) -> Result<(), sqlx::Error> {
    let limit = i64::from(at.keyed.limit);
    if active + waiting < limit {
        return Ok(());
    }
    let message = format!(
        "waits on concurrency key {:?}: {active} of {limit} slots taken, {waiting} run(s) queued before it",
        at.keyed.key
    );
    queue::note_queued(&mut *conn, run, WaitReason::ConcurrencyLimit, &message).await
}

/// The per-token cap on unfinished runs, for every token among `submissions`. Each token's row
/// stays locked until commit, so its concurrent submissions are counted one after the other.
async fn check_tokens(
    conn: &mut PgConnection,
    submissions: &[Submission],
    caps: Caps,
) -> Result<Result<(), CapReached>, sqlx::Error> {
    let mut per_token: Vec<(Uuid, i64)> = Vec::new();
    for token in submissions.iter().filter_map(|s| s.origin().token_id) {
        match per_token.iter_mut().find(|(t, _)| *t == token) {
            Some((_, n)) => *n += 1,
            None => per_token.push((token, 1)),
        }
    }
    for (token, asked) in per_token {
        let own = crate::store::tokens::lock_for_submission(&mut *conn, token).await?;
        let limit = match own.flatten() {
            Some(own) => u32::try_from(own).unwrap_or(0),
            None => caps.max_active_runs_per_token,
        };
        if limit > 0 && active_count_of_token(&mut *conn, token).await? + asked > i64::from(limit) {
            return Ok(Err(CapReached::TooManyActiveRuns { limit }));
        }
    }
    Ok(Ok(()))
}

/// Records queued runs, numbered in their task's sequence (or the ad-hoc one): one statement
/// per sequence, which also wakes the launchers at commit. Returns them in the order given.
async fn insert_all(
    conn: &mut PgConnection,
    submissions: &[Submission],
) -> Result<Vec<Run>, sqlx::Error> {
    let mut scopes: Vec<Option<&str>> = Vec::new();
    for submission in submissions {
        let task = submission.origin().task.as_deref();
        if !scopes.contains(&task) {
            scopes.push(task);
        }
    }
    // A run's id (UUIDv7) is its place in every queue (`ORDER BY id`), so it is taken as late as
    // possible, here, to follow the order in which the runs are numbered. A run with secret
    // parameters keeps the id chosen at the front door: its Secret is already named after it.
    let ids: Vec<Uuid> = submissions
        .iter()
        .map(|s| {
            if s.secrets().is_empty() {
                Uuid::now_v7()
            } else {
                s.id()
            }
        })
        .collect();
    let mut runs: HashMap<Uuid, Run> = HashMap::with_capacity(submissions.len());
    for scope in scopes {
        let (ids, group): (Vec<Uuid>, Vec<&Submission>) = ids
            .iter()
            .zip(submissions)
            .filter(|(_, s)| s.origin().task.as_deref() == scope)
            .unzip();
        let origins = group.iter().map(|s| s.origin());
        // A task's runs are numbered by its counter row, locked until commit (the per-task
        // queue cap counts under that lock); ad-hoc runs by a sequence, which never waits (see
        // migrations/20261205002000_adhoc_run_numbers.sql), its values for this statement
        // given to the runs in order (consecutive unless another submission took some
        // meanwhile).
        let (numbers, number) = match scope {
            Some(_) => (
                "numbers AS (
                    INSERT INTO run_counters (scope, last_number) VALUES ($1, $2)
                    ON CONFLICT (scope) DO UPDATE SET last_number = run_counters.last_number + $2
                    RETURNING last_number - $2 AS before
                 )",
                "numbers.before + i.n",
            ),
            None => (
                "numbers AS (
                    SELECT array_agg(v ORDER BY v) AS taken, $1::text AS scope FROM (
                        SELECT nextval('adhoc_run_numbers') AS v FROM generate_series(1, $2)) s
                 )",
                "numbers.taken[i.n]",
            ),
        };
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "WITH {numbers}, wake AS (SELECT pg_notify($3, ''))
             INSERT INTO runs (id, task_name, number, status, trigger, rerun_of, template,
                labels, scheduled_time, token_id, priority, queue_key, queue_limit, params)
             SELECT i.id, $4, {number}, 'queued', i.trigger, i.rerun_of, i.template,
                i.labels, i.scheduled_time, i.token_id, i.priority, i.queue_key, i.queue_limit,
                i.params
             FROM numbers, wake,
                unnest($5::uuid[], $6::text[], $7::uuid[], $8::jsonb[], $9::jsonb[],
                       $10::timestamptz[], $11::uuid[], $12::int[], $13::text[], $14::int[],
                       $15::jsonb[])
                WITH ORDINALITY AS i(id, trigger, rerun_of, template, labels, scheduled_time,
                                     token_id, priority, queue_key, queue_limit, params, n)
             RETURNING {COLUMNS}"
        ))
        .bind(scope.unwrap_or(""))
        .bind(group.len() as i64)
        // Wakes launchers on every replica at commit.
        .bind(QUEUED_CHANNEL)
        .bind(scope)
        .bind(&ids)
        .bind(origins.clone().map(|o| o.trigger).collect::<Vec<_>>())
        .bind(origins.clone().map(|o| o.rerun_of).collect::<Vec<_>>())
        .bind(group.iter().map(|s| Json(s.template())).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|s| Json(&s.template().labels))
                .collect::<Vec<_>>(),
        )
        .bind(
            origins
                .clone()
                .map(|o| o.scheduled_time)
                .collect::<Vec<_>>(),
        )
        .bind(origins.map(|o| o.token_id).collect::<Vec<_>>())
        .bind(group.iter().map(|s| s.priority()).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|s| s.keyed().map(|k| k.key.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            group
                .iter()
                .map(|s| s.keyed().map(|k| k.limit))
                .collect::<Vec<_>>(),
        )
        // Secret parameters are recorded as their SHA-256 only (see domain::params).
        .bind(group.iter().map(|s| Json(s.params())).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        runs.extend(rows.into_iter().map(|row| {
            let run = Run::from(row);
            (run.id, run)
        }));
    }
    ids.iter()
        .map(|id| runs.remove(id).ok_or(sqlx::Error::RowNotFound))
        .collect()
}

/// The Postgres NOTIFY channel that says "a run was queued".
pub const QUEUED_CHANNEL: &str = "vfi_run_queued";

/// How many runs of `task` wait in `queued` (for the per-task cap).
async fn queued_count(db: impl PgExecutor<'_>, task: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE task_name = $1 AND status = 'queued'")
        .bind(task)
        .fetch_one(db)
        .await
}

/// How many runs `token` started that have not finished yet.
async fn active_count_of_token(db: impl PgExecutor<'_>, token: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE token_id = $1
            AND status IN ('queued', 'creating', 'admitting', 'pending', 'running')",
    )
    .bind(token)
    .fetch_one(db)
    .await
}
