//! Queues (issue 16), from the database only: the locks that serialize a key's submissions and
//! every replica's admissions, the admission pass the launcher runs inside its claim
//! transaction, and what a waiting run shows about its place.
//!
//! No counter lives in memory or in a row of its own: a key's active runs are counted from
//! `runs` each time, under a lock held until the transaction that changes them commits. So a
//! restart, a crash between admission and Job creation (the run stays `creating`, holding its
//! slot, until another launcher takes over its lapsed lease and adopts or creates the Job), or
//! several replicas never break a limit.
//!
//! Lock order, so that they never deadlock: a transaction takes a concurrency key's advisory
//! lock ([`lock_keys`]) before any row of `runs`, and keys in key order; the admission lock
//! ([`admissible`]) is never taken with a key's lock. A submission takes its keys' locks, then
//! (`CancelInProgress`, `CancelPending`) the rows of the key's runs it supersedes; so every
//! other path that may submit while it holds a run's row takes the key's lock first: the
//! record of a lost run, which resubmits it under `retry.onLost` in the same transaction
//! (`runs::observe_with` locks the run's key before its row). (A retry whose task's key
//! changed since takes the new key's lock after the lost run's row; no transaction waits on
//! that row while holding the new key's lock, since the new key's runs do not include it.)

use crate::domain::queue::{
    waiting_by_reason, Admission, KeyStanding, Occupancy, QueueState, WaitReason, WaitingGroup,
    BLOCKED_BY,
};
use crate::domain::Run;
use sqlx::{PgConnection, PgExecutor};
use std::collections::HashMap;
use uuid::Uuid;

/// The admission lock (one admission pass at a time across replicas): a 64-bit advisory key.
pub const ADMISSION_LOCK: i64 = 0x7666_695f_6164_6d69; // "vfi_admi"
/// The first half of a key's two-part advisory lock (the 64-bit and the two-part key spaces do
/// not overlap, so no key collides with the admission or pruner lock).
const KEY_LOCK_SPACE: i32 = 0x7166; // "qf"

/// SQL: the run `r` holds a slot of its key and of the installation: its Job has not finished,
/// or is a cancelled run's Job the canceller has not deleted yet, or it was cancelled while its
/// launcher's create was in flight (`creating`: the cancellation keeps the launcher's lease, see
/// `store::status::write`), so its Job may still appear: until the launcher records that Job (then
/// the clause before holds it until deleted) or says none came, or its lease lapses.
pub const HOLDS_SLOT: &str = "(r.status IN ('creating', 'admitting', 'pending', 'running')
    OR (r.status = 'cancelled' AND r.job_name IS NOT NULL AND NOT r.job_delete_requested)
    OR (r.status = 'cancelled' AND r.job_name IS NULL AND r.lease_until > now()))";

/// SQL: the run `r`'s priority with aging (`$aging` seconds a level; 0: none).
fn effective(alias: &str, aging: &str) -> String {
    format!(
        "({alias}.priority + CASE WHEN {aging} > 0
            THEN floor(extract(epoch FROM now() - {alias}.created_at) / {aging})::int ELSE 0 END)"
    )
}

/// Takes the advisory locks of `keys` (sorted and deduplicated here) until the transaction
/// ends: a key's submissions count its runs one after the other.
pub async fn lock_keys(conn: &mut PgConnection, keys: &[&str]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<&str> = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(KEY_LOCK_SPACE)
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A key's runs: how many hold a slot and how many wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub active: i64,
    pub waiting: i64,
}

pub async fn key_counts(db: impl PgExecutor<'_>, key: &str) -> Result<KeyCounts, sqlx::Error> {
    let (active, waiting): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*) FILTER (WHERE {HOLDS_SLOT}), count(*) FILTER (WHERE r.status = 'queued')
         FROM runs r WHERE r.queue_key = $1
           AND (r.status IN ('queued', 'creating', 'admitting', 'pending', 'running')
                OR (r.status = 'cancelled' AND {HOLDS_SLOT}))"
    ))
    .bind(key)
    .fetch_one(db)
    .await?;
    Ok(KeyCounts { active, waiting })
}

/// Records a `queue` event for a run that must wait when it is queued (the event stream shows
/// it; its status events show when it leaves the queue).
pub async fn note_queued(
    db: impl PgExecutor<'_>,
    run: &Run,
    reason: WaitReason,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH e AS (
            INSERT INTO run_events (run_id, task_name, kind, status, reason, message)
            VALUES ($1, $2, 'queue', 'queued', $3, $4) RETURNING id
         ), r AS (UPDATE runs SET queue_reason = $3 WHERE id = $1)
         SELECT pg_notify('vfi_run_events', '') FROM e",
    )
    .bind(run.id)
    .bind(&run.task)
    .bind(reason.as_str())
    .bind(message)
    .execute(db)
    .await?;
    Ok(())
}

/// Why runs left a key's queue, in a `queue.moved` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    Admitted,
    Cancelled,
}

impl Left {
    pub fn as_str(self) -> &'static str {
        match self {
            Left::Admitted => "Admitted",
            Left::Cancelled => "Cancelled",
        }
    }
}

/// Records that the runs `ids` just left their keys' queues (call in the transaction that
/// moved them): one `queue.moved` event per key and task, with how many left and how many
/// still wait, instead of an event per waiting run whose place changed. Runs without a key are
/// counted in the installation's queue (an event without a key): pass them only when
/// installation limits hold such runs (the admission pass admits them only then).
pub async fn note_left(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    why: Left,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH l AS (
            SELECT queue_key, task_name, count(*) AS n FROM runs
            WHERE id = ANY($1) GROUP BY queue_key, task_name
         ), e AS (
            INSERT INTO queue_events (queue_key, task_name, kind, reason, left_queue, waiting)
            SELECT l.queue_key, l.task_name, 'moved', $2, l.n,
                   CASE WHEN l.queue_key IS NULL
                        THEN (SELECT count(*) FROM runs w
                              WHERE w.status = 'queued' AND w.queue_key IS NULL)
                        ELSE (SELECT count(*) FROM runs w
                              WHERE w.status = 'queued' AND w.queue_key = l.queue_key) END
            FROM l RETURNING id)
         SELECT pg_notify('vfi_run_events', '') FROM e LIMIT 1",
    )
    .bind(ids)
    .bind(why.as_str())
    .execute(db)
    .await?;
    Ok(())
}

/// Records the reason each of `held` (queued runs and why they wait now) waits, as a `queue`
/// event of the run (`run.queue` on the event stream), for those whose reason is not the one
/// last announced: one event per run per change, in one statement, in the caller's
/// transaction. A run no longer queued is left alone, and so is one another transaction holds
/// (a supersession or cancel in progress): the admission pass runs under the admission lock and
/// must never wait on a run row, and rows are locked in id order so that this statement cannot
/// deadlock with another multi-row lock of the same runs. A skipped run is announced by the next
/// pass if it still waits for that reason.
pub async fn note_reasons(
    db: impl PgExecutor<'_>,
    held: &[(Uuid, WaitReason)],
    admission: &Admission,
) -> Result<(), sqlx::Error> {
    if held.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = held.iter().map(|(id, _)| *id).collect();
    let reasons: Vec<&str> = held.iter().map(|(_, r)| r.as_str()).collect();
    sqlx::query(
        "WITH c AS (
            SELECT * FROM unnest($1::uuid[], $2::text[]) AS c(id, reason)
         ), k AS (
            SELECT r.id FROM runs r JOIN c ON c.id = r.id
            WHERE r.status = 'queued' AND r.queue_reason IS DISTINCT FROM c.reason
            ORDER BY r.id FOR NO KEY UPDATE OF r SKIP LOCKED
         ), u AS (
            UPDATE runs r SET queue_reason = c.reason FROM c, k
            WHERE r.id = c.id AND r.id = k.id
            RETURNING r.id, r.task_name, c.reason,
                      coalesce(r.template->>'namespace', $3) AS namespace
         ), e AS (
            INSERT INTO run_events (run_id, task_name, kind, status, reason, message)
            SELECT u.id, u.task_name, 'queue', 'queued', u.reason,
                   CASE u.reason
                     WHEN 'InstallationLimit' THEN
                       'waits for a free slot of the installation (MAX_ACTIVE_RUNS ' || $4 || ' runs active)'
                     WHEN 'NamespaceLimit' THEN
                       'waits for a free slot of namespace ' || u.namespace
                       || ' (MAX_ACTIVE_RUNS_PER_NAMESPACE ' || $5 || ' runs active)'
                     ELSE 'waits: ' || u.reason END
            FROM u RETURNING id)
         SELECT pg_notify('vfi_run_events', '') FROM e LIMIT 1",
    )
    .bind(&ids)
    .bind(&reasons)
    .bind(&admission.default_namespace)
    .bind(admission.max_active.to_string())
    .bind(admission.max_active_per_namespace.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes up to `limit` `queue.moved` events from before `before` (the pruner, with the run
/// history's age limit); returns how many.
pub async fn prune_events(
    db: impl PgExecutor<'_>,
    before: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM queue_events WHERE id IN (
            SELECT id FROM queue_events WHERE at < $1 ORDER BY id LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}

/// The most waiting runs one pass looks at beyond the free slots (runs in a full namespace are
/// passed over for later ones in another).
const LOOK_AHEAD: i64 = 1000;

#[derive(sqlx::FromRow)]
struct Candidate {
    id: Uuid,
    namespace: String,
}

/// What an admission pass decided.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The runs that may start now, in admission order.
    pub ids: Vec<Uuid>,
    /// Runs their key lets through that an installation or namespace limit holds, and which
    /// (for [`note_reasons`]).
    pub held: Vec<(Uuid, WaitReason)>,
}

/// The admission pass: under the admission lock (held until `conn`'s transaction ends), the
/// ids of up to `free` due queued runs that may start now, in admission order (effective
/// priority, then submission). A run of a key is admissible when fewer than its limit of the
/// key's runs hold a slot, counting those admitted before it in the same pass; with
/// installation limits, every run also needs a free slot of its namespace and of the
/// installation (those looked at that lack one are returned as `held`, with the limit that
/// holds them). Without installation limits only keyed runs are considered (the others need
/// no admission). The caller moves the ids to `creating` in the same transaction.
pub async fn admissible(
    conn: &mut PgConnection,
    admission: &Admission,
    free: i64,
) -> Result<Admitted, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADMISSION_LOCK)
        .execute(&mut *conn)
        .await?;
    let aging = admission.aging_secs as f64;
    let eff = effective("r", "$1");
    let candidates: Vec<Candidate> = sqlx::query_as(&format!(
        "WITH active AS (
            SELECT r.queue_key, count(*) AS n FROM runs r
            WHERE r.queue_key IS NOT NULL AND {HOLDS_SLOT} GROUP BY r.queue_key
         ), waiting AS (
            SELECT r.id, r.queue_key, r.queue_limit,
                   coalesce(r.template->>'namespace', $2) AS namespace, {eff} AS eff,
                   row_number() OVER (PARTITION BY r.queue_key ORDER BY {eff} DESC, r.id) AS place
            FROM runs r
            WHERE r.status = 'queued'
              AND (r.launch_not_before IS NULL OR r.launch_not_before <= now())
              AND ($3 OR r.queue_key IS NOT NULL)
         )
         SELECT w.id, w.namespace FROM waiting w LEFT JOIN active a USING (queue_key)
         WHERE w.queue_key IS NULL OR w.place <= w.queue_limit - coalesce(a.n, 0)
         ORDER BY w.eff DESC, w.id LIMIT $4"
    ))
    .bind(aging)
    .bind(&admission.default_namespace)
    .bind(admission.limited())
    .bind(free + if admission.limited() { LOOK_AHEAD } else { 0 })
    .fetch_all(&mut *conn)
    .await?;
    if !admission.limited() {
        return Ok(Admitted {
            ids: candidates
                .into_iter()
                .map(|c| c.id)
                .take(free as usize)
                .collect(),
            held: Vec::new(),
        });
    }
    let (mut total, mut per_namespace) =
        active_by_namespace(&mut *conn, &admission.default_namespace).await?;
    let mut admitted = Admitted::default();
    for candidate in candidates {
        if admitted.ids.len() as i64 >= free {
            break;
        }
        if admission.max_active > 0 && total >= i64::from(admission.max_active) {
            admitted
                .held
                .push((candidate.id, WaitReason::InstallationLimit));
            continue;
        }
        let in_namespace = per_namespace.entry(candidate.namespace).or_insert(0);
        if admission.max_active_per_namespace > 0
            && *in_namespace >= i64::from(admission.max_active_per_namespace)
        {
            admitted
                .held
                .push((candidate.id, WaitReason::NamespaceLimit));
            continue;
        }
        *in_namespace += 1;
        total += 1;
        admitted.ids.push(candidate.id);
    }
    Ok(admitted)
}

/// Runs holding a slot: in all, and per namespace.
async fn active_by_namespace(
    db: impl PgExecutor<'_>,
    default_namespace: &str,
) -> Result<(i64, HashMap<String, i64>), sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT coalesce(r.template->>'namespace', $1), count(*) FROM runs r
         WHERE {HOLDS_SLOT} GROUP BY 1"
    ))
    .bind(default_namespace)
    .fetch_all(db)
    .await?;
    let total = rows.iter().map(|(_, n)| n).sum();
    Ok((total, rows.into_iter().collect()))
}

#[derive(sqlx::FromRow)]
struct Standing {
    id: Uuid,
    place: i64,
    active: i64,
    holders: Vec<Uuid>,
    head: Vec<Uuid>,
}

/// Why the queued `run` waits and where it stands; `None` for a run that waits for nothing (no
/// key, no installation limits). See [`states`].
pub async fn state(
    conn: &mut PgConnection,
    run: &Run,
    admission: &Admission,
) -> Result<Option<QueueState>, sqlx::Error> {
    Ok(states(conn, std::slice::from_ref(run), admission)
        .await?
        .remove(&run.id))
}

/// Why each queued run of `runs` (a page of a list) waits and where it stands, in at most two
/// statements whatever the page's size: one ranks the waiting runs of the page's keys (each
/// key's place, its runs holding a slot and its first waiting runs), one counts the
/// installation's active runs per namespace (only with installation limits). Runs that wait
/// for nothing (no key, no installation limits) and runs not `queued` are left out.
pub async fn states(
    conn: &mut PgConnection,
    runs: &[Run],
    admission: &Admission,
) -> Result<HashMap<Uuid, QueueState>, sqlx::Error> {
    let waiting: Vec<&Run> = runs
        .iter()
        .filter(|r| r.status == crate::domain::RunStatus::Queued)
        .filter(|r| r.queue_key.is_some() || admission.limited())
        .collect();
    if waiting.is_empty() {
        return Ok(HashMap::new());
    }
    let keyed: Vec<Uuid> = waiting
        .iter()
        .filter(|r| r.queue_key.is_some())
        .map(|r| r.id)
        .collect();
    let mut standings: HashMap<Uuid, Standing> = HashMap::new();
    if !keyed.is_empty() {
        let eff = effective("r", "$2");
        let rows: Vec<Standing> = sqlx::query_as(&format!(
            "WITH keys AS (
                SELECT DISTINCT queue_key FROM runs
                WHERE id = ANY($1) AND status = 'queued' AND queue_key IS NOT NULL
             ), ranked AS (
                SELECT r.id, r.queue_key,
                       row_number() OVER (PARTITION BY r.queue_key ORDER BY {eff} DESC, r.id) AS place
                FROM runs r WHERE r.status = 'queued' AND r.queue_key IN (SELECT queue_key FROM keys)
             ), active AS (
                SELECT r.queue_key, count(*) AS n, (array_agg(r.id ORDER BY r.id))[1:$3] AS ids
                FROM runs r WHERE r.queue_key IN (SELECT queue_key FROM keys) AND {HOLDS_SLOT}
                GROUP BY r.queue_key
             ), head AS (
                SELECT queue_key, array_agg(id ORDER BY place) AS ids FROM ranked
                WHERE place <= $3 GROUP BY queue_key
             )
             SELECT ranked.id, ranked.place, coalesce(active.n, 0) AS active,
                    coalesce(active.ids, '{{}}') AS holders, coalesce(head.ids, '{{}}') AS head
             FROM ranked LEFT JOIN active USING (queue_key) LEFT JOIN head USING (queue_key)
             WHERE ranked.id = ANY($1)"
        ))
        .bind(&keyed)
        .bind(admission.aging_secs as f64)
        .bind(BLOCKED_BY as i32)
        .fetch_all(&mut *conn)
        .await?;
        standings = rows.into_iter().map(|s| (s.id, s)).collect();
    }
    let occupancy = if admission.limited() {
        Some(active_by_namespace(&mut *conn, &admission.default_namespace).await?)
    } else {
        None
    };
    let mut out = HashMap::new();
    for run in waiting {
        let key = match (&run.queue_key, standings.get(&run.id)) {
            (Some(key), Some(s)) => Some(KeyStanding {
                key,
                position: s.place,
                limit: i64::from(run.queue_limit.unwrap_or(1)),
                active: s.active,
                holders: &s.holders,
                head: &s.head,
            }),
            // Admitted (or cancelled) since it was read: shown as next, with nothing holding it.
            (Some(key), None) => Some(KeyStanding {
                key,
                position: 1,
                limit: 1,
                active: 0,
                holders: &[],
                head: &[],
            }),
            (None, _) => None,
        };
        let occupancy = occupancy.as_ref().map(|(total, per_namespace)| {
            let namespace = run
                .template
                .namespace
                .as_deref()
                .unwrap_or(&admission.default_namespace);
            Occupancy {
                total: *total,
                in_namespace: per_namespace.get(namespace).copied().unwrap_or(0),
            }
        });
        out.insert(run.id, QueueState::decide(key, occupancy, admission));
    }
    Ok(out)
}

/// Waiting runs per key (`""`: runs without one, counted only with installation limits) and
/// reason, for the `vfi_queue_waiting_runs` gauge: see
/// [`waiting_by_reason`](crate::domain::queue::waiting_by_reason).
pub async fn waiting_by_key(
    conn: &mut PgConnection,
    admission: &Admission,
) -> Result<Vec<(String, &'static str, i64)>, sqlx::Error> {
    let rows: Vec<(Option<String>, String, i64, i64, i32)> = sqlx::query_as(&format!(
        "SELECT w.queue_key, w.namespace, w.n, coalesce(a.n, 0), coalesce(w.lim, 0) FROM
            (SELECT queue_key, coalesce(template->>'namespace', $1) AS namespace, count(*) AS n,
                    min(queue_limit) AS lim
             FROM runs WHERE status = 'queued' AND ($2 OR queue_key IS NOT NULL)
             GROUP BY 1, 2) w
         LEFT JOIN (SELECT r.queue_key, count(*) AS n FROM runs r
                    WHERE r.queue_key IS NOT NULL AND {HOLDS_SLOT} GROUP BY r.queue_key) a
         USING (queue_key) ORDER BY 1, 2"
    ))
    .bind(&admission.default_namespace)
    .bind(admission.limited())
    .fetch_all(&mut *conn)
    .await?;
    let groups: Vec<WaitingGroup> = rows
        .into_iter()
        .map(|(key, namespace, waiting, active, limit)| WaitingGroup {
            key,
            namespace,
            waiting,
            active,
            limit: i64::from(limit),
        })
        .collect();
    let occupancy = if admission.limited() {
        Some(active_by_namespace(&mut *conn, &admission.default_namespace).await?)
    } else {
        None
    };
    Ok(waiting_by_reason(
        &groups,
        occupancy.as_ref().map(|(total, per)| (*total, per)),
        admission,
    ))
}
