//! `GET /v1/events`: run and task changes as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! The process's one [`EventHub`] (src/store/event_feed.rs) reads new rows once and fans them
//! out; each client here replays what it missed from the tables, then follows the broadcast.

use super::auth::{Authorized, ForRead};
use super::extract::ApiQuery;
use super::problem::Problem;
use crate::error::{Error, Result};
pub use crate::store::event_feed::EventHub;
use crate::store::event_feed::PAGE;
use crate::store::events::{self, StoredEvent};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::domain::RunStatus;

/// One change, as sent to clients. The SSE event's `id` is this `id`, and its `event` is `type`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEvent {
    /// Increases with every event; send it back as `Last-Event-ID` to resume after it.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `run.created`, `run.status`, `run.finished` (a status change to a final status),
    /// `run.waiting` (why a pending run cannot start, or Kueue's message for an `admitting` run),
    /// `run.queue` (a queued run must wait on its concurrency key: `reason` and `message` say for
    /// what), `run.pruned`, `task.created`, `task.updated`, `task.deleted`, or `queue.moved` (runs
    /// of a concurrency key left its queue, admitted, cancelled or superseded while waiting, so
    /// the runs still waiting on `key` moved up: one event per key and task each time, not one
    /// per waiting run; without `key`: runs without one left the installation's queue, under
    /// installation limits).
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
    /// The concurrency key (`queue.moved`; absent for runs without a key, which wait in the
    /// installation's queue under `MAX_ACTIVE_RUNS` / `MAX_ACTIVE_RUNS_PER_NAMESPACE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How many runs of the key (and task) left its queue (`queue.moved`; `reason` says why:
    /// `Admitted` or `Cancelled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left: Option<i32>,
    /// How many runs still wait on the key afterwards (`queue.moved`; without a key: the runs
    /// without one that wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<i64>,
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
            generation: e.generation,
            message: match (e.subject.as_str(), &e.queue_key, e.left_queue, e.waiting) {
                ("queue", Some(key), Some(left), Some(waiting)) => Some(format!(
                    "{left} run(s) of key {key} left the queue ({}); {waiting} wait",
                    e.reason.as_deref().unwrap_or("")
                )),
                ("queue", None, Some(left), Some(waiting)) => Some(format!(
                    "{left} run(s) without a concurrency key left the installation's queue ({}); {waiting} wait",
                    e.reason.as_deref().unwrap_or("")
                )),
                _ => e.message.clone(),
            },
            key: e.queue_key.clone(),
            left: e.left_queue,
            waiting: e.waiting,
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
/// `run.waiting`, `run.queue`, `run.pruned`, `task.created`, `task.updated`, `task.deleted`,
/// `queue.moved` (runs left a concurrency key's queue: one event per key, with `key`, `left`
/// and `waiting`), each with its id. Without
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
    let closed = hub.closed();
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
        let rows = match events::after(hub.db(), *last, up_to, task, PAGE).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "events: replay failed; ending the stream");
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
