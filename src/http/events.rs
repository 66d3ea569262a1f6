//! `GET /v1/events`: run and task changes as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! One [`EventHub`] per process LISTENs for the triggers' NOTIFY, reads the new rows once and
//! fans them out through a broadcast channel; each client replays what it missed from the
//! tables, then follows the broadcast. Notifications are only wake-ups: the hub always reads
//! every row after the last one it sent, so coalesced or lost notifications lose nothing. The
//! hub never acts on the cluster and writes nothing.

use super::auth::{Authorized, ForRead};
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::error::{Error, Result};
use crate::store::events::{self, StoredEvent};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::domain::RunStatus;

/// Rows read at once, by the hub and by a replay.
const PAGE: i64 = 500;
/// How long the hub waits for a missing id (a transaction that took an id but has not committed
/// yet) before it takes the id for a rolled-back one and moves on.
const GAP_WAIT: Duration = Duration::from_secs(2);
/// Safety-net poll, for notifications lost while the listener reconnected.
const POLL: Duration = Duration::from_secs(1);

/// The process's fan-out of events. Cheap to clone; starts listening on its first subscriber.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    sender: broadcast::Sender<Arc<StoredEvent>>,
    /// Every event up to this id has been broadcast (or predates the hub).
    high_water: AtomicI64,
    started: OnceCell<()>,
    closed: CancellationToken,
}

impl EventHub {
    pub fn new(db: PgPool) -> EventHub {
        EventHub {
            inner: Arc::new(Inner {
                db,
                sender: broadcast::channel(1024).0,
                high_water: AtomicI64::new(0),
                started: OnceCell::new(),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Ends every stream (at shutdown, so that open streams do not hold the server up).
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<StoredEvent>>, sqlx::Error> {
        let inner = &self.inner;
        inner
            .started
            .get_or_try_init(|| async {
                let last = events::last_id(&inner.db).await?;
                inner.high_water.store(last, Ordering::SeqCst);
                tokio::spawn(pump(inner.clone()));
                Ok::<_, sqlx::Error>(())
            })
            .await?;
        Ok(inner.sender.subscribe())
    }

    fn high_water(&self) -> i64 {
        self.inner.high_water.load(Ordering::SeqCst)
    }
}

/// The hub's loop: on every notification (or poll), broadcasts the rows after the high-water
/// mark, in id order, holding back behind a missing id for up to [`GAP_WAIT`].
async fn pump(inner: Arc<Inner>) {
    let mut listener = match PgListener::connect_with(&inner.db).await {
        Ok(mut listener) => match listener.listen(events::CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(error = %error, "events: cannot LISTEN; polling instead");
                None
            }
        },
        Err(error) => {
            tracing::warn!(error = %error, "events: cannot LISTEN; polling instead");
            None
        }
    };
    let mut gap: Option<(i64, Instant)> = None;
    loop {
        // A closed pool (the process is stopping) ends the hub; otherwise the failing LISTEN
        // would wake it at once, again and again.
        if inner.db.is_closed() {
            return;
        }
        let waiting = match broadcast_new(&inner, &mut gap).await {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(error = %error, "events: reading new events failed; retrying");
                false
            }
        };
        let poll = if waiting {
            Duration::from_millis(50)
        } else {
            POLL
        };
        tokio::select! {
            _ = inner.closed.cancelled() => return,
            _ = notified(&mut listener) => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn notified(listener: &mut Option<PgListener>) {
    match listener.as_mut() {
        // An error means the connection dropped; sqlx reconnects on the next call, and the poll
        // covers what was announced meanwhile.
        Some(listener) => {
            let _ = listener.try_recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Broadcasts what can be; returns true while held back behind a missing id.
async fn broadcast_new(
    inner: &Inner,
    gap: &mut Option<(i64, Instant)>,
) -> Result<bool, sqlx::Error> {
    loop {
        let high_water = inner.high_water.load(Ordering::SeqCst);
        let rows = events::after(&inner.db, high_water, i64::MAX, None, PAGE).await?;
        let full = rows.len() as i64 == PAGE;
        for row in rows {
            let expected = inner.high_water.load(Ordering::SeqCst) + 1;
            if row.id != expected {
                let (at, since) = *gap.get_or_insert((expected, Instant::now()));
                if at != expected {
                    *gap = Some((expected, Instant::now()));
                    return Ok(true);
                }
                if since.elapsed() < GAP_WAIT {
                    return Ok(true);
                }
                tracing::debug!(
                    missing_from = expected,
                    up_to = row.id - 1,
                    "events: skipping ids that never committed"
                );
            }
            *gap = None;
            // Raised before sending: a client that subscribes in between replays this row from
            // the table and drops the broadcast copy as already sent.
            inner.high_water.store(row.id, Ordering::SeqCst);
            let _ = inner.sender.send(Arc::new(row));
        }
        if !full {
            return Ok(false);
        }
    }
}

/// One change, as sent to clients. The SSE event's `id` is this `id`, and its `event` is `type`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEvent {
    /// Increases with every event; send it back as `Last-Event-ID` to resume after it.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `run.created`, `run.status`, `run.finished` (a status change to a final status),
    /// `run.waiting` (why a pending run cannot start), `run.pruned`, `task.created`, `task.updated` or `task.deleted`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// The task of the run (absent for ad-hoc runs), or the changed task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The task's generation (task events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl From<&StoredEvent> for ChangeEvent {
    fn from(e: &StoredEvent) -> ChangeEvent {
        let kind = match (e.subject.as_str(), e.kind.as_str(), e.status) {
            ("run", "status", Some(status)) if status.is_final() => "run.finished".to_string(),
            (subject, kind, _) => format!("{subject}.{kind}"),
        };
        ChangeEvent {
            id: e.id,
            at: e.at,
            kind,
            run_id: e.run_id,
            task: e.task_name.clone(),
            previous: e.previous,
            status: e.status,
            reason: e.reason.clone(),
            message: e.message.clone(),
            generation: e.generation,
        }
    }
}

fn sse(event: &StoredEvent) -> Event {
    let change = ChangeEvent::from(event);
    Event::default()
        .id(change.id.to_string())
        .event(change.kind.clone())
        .json_data(&change)
        .unwrap_or_default()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this task (its runs and its definition).
    pub task: Option<String>,
}

/// Run and task changes as Server-Sent Events: `run.created`, `run.status`, `run.finished`,
/// `run.waiting`, `run.pruned`, `task.created`, `task.updated`, `task.deleted`, each with its id. Without
/// `Last-Event-ID` the stream starts with the next change; with it, the changes after that id
/// are replayed first, then the stream goes on live, without gaps or duplicates. A comment is
/// sent every 15 s to keep proxies from closing an idle stream.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    security(("bearer" = ["read"])),
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "An endless stream of events", body = ChangeEvent, content_type = "text/event-stream"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    auth: Authorized<ForRead>,
    State(hub): State<EventHub>,
    State(revocations): State<super::Revocations>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    if let Some(task) = &query.task {
        crate::domain::TaskName::parse(task.clone())
            .map_err(|message| Error::bad_request("task", message))?;
    }
    // A token limited to some tasks sees only a task it may read, named in `?task=`.
    auth.task(query.task.as_deref())?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    Error::bad_request(
                        "Last-Event-ID",
                        "must be an event id (a non-negative integer)",
                    )
                })?,
        ),
    };
    // Subscribe before reading the high-water mark: whatever is broadcast after this point is
    // in the receiver, and whatever was broadcast before is in the tables.
    let receiver = hub.subscribe().await?;
    let last = resume.unwrap_or_else(|| hub.high_water());
    let (sender, stream) = mpsc::channel(64);
    tokio::spawn(follow(hub, query.task, last, receiver, sender));
    // A revoked token's stream ends; `follow` then sees its client gone.
    let stream = ReceiverStream::new(stream).take_until(revocations.ended(auth.caller.token_id));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

type Client = mpsc::Sender<Result<Event, Infallible>>;

/// Feeds one client until it goes away or the hub closes.
async fn follow(
    hub: EventHub,
    task: Option<String>,
    mut last: i64,
    mut receiver: broadcast::Receiver<Arc<StoredEvent>>,
    client: Client,
) {
    let closed = hub.inner.closed.clone();
    let wanted = |event: &StoredEvent| task.is_none() || event.task_name == task;
    if !replay(&hub, task.as_deref(), &mut last, &client).await {
        return;
    }
    loop {
        let received = tokio::select! {
            _ = closed.cancelled() => return,
            _ = client.closed() => return,
            received = receiver.recv() => received,
        };
        match received {
            Ok(event) => {
                if event.id <= last {
                    continue;
                }
                last = event.id;
                if wanted(&event) && client.send(Ok(sse(&event))).await.is_err() {
                    return;
                }
            }
            // Too slow for the broadcast: catch up from the tables.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !replay(&hub, task.as_deref(), &mut last, &client).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends the stored events after `last` up to the hub's high-water mark; false when the client
/// is gone or the database failed (the client reconnects with its Last-Event-ID).
async fn replay(hub: &EventHub, task: Option<&str>, last: &mut i64, client: &Client) -> bool {
    let up_to = hub.high_water();
    loop {
        let rows = match events::after(&hub.inner.db, *last, up_to, task, PAGE).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(error = %error, "events: replay failed; ending the stream");
                return false;
            }
        };
        let Some(newest) = rows.last().map(|e| e.id) else {
            // Skipped ids (other tasks' events, rolled-back ids) count as sent too.
            *last = (*last).max(up_to);
            return true;
        };
        for event in &rows {
            if client.send(Ok(sse(event))).await.is_err() {
                return false;
            }
        }
        *last = newest;
    }
}
