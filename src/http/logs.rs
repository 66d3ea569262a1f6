//! `GET /v1/runs/{id}/logs`: a run's output as `text/plain` (chunked, streamed) or, for browsers,
//! as Server-Sent Events with `Last-Event-ID` resume.

use super::auth::{Authorized, ForRead};
use super::extract::{ApiPath, ApiQuery};
use super::problem::Problem;
use super::runs::run_for;
use super::AppState;
use crate::error::{Error, Result};
use crate::logs::{self, LogItem, LogQuery};
use crate::store;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Keep streaming new output until the run ends, then close. In plain text, while it waits
    /// for pods to start, a `[vfi-orchestrator] waiting for ...` line is written after each
    /// `LOG_FOLLOW_KEEPALIVE_SECS` (15) of silence, so read timeouts do not cut it.
    follow: Option<bool>,
    /// Only this pod.
    pod: Option<String>,
    /// Only the pod with this completion index.
    index: Option<i32>,
    /// Only the last N lines of each pod.
    tail: Option<i64>,
    /// Only lines written at or after this time (RFC 3339).
    since: Option<String>,
    /// Prefix each line with its RFC 3339 time.
    timestamps: Option<bool>,
    /// Stop after this many bytes.
    limit_bytes: Option<i64>,
    /// Only this attempt of each pod's container (1-based, by restart count: attempt N ran with
    /// restart count N - 1; `GET /v1/runs/{id}/pods` lists them), with its lines numbered from
    /// 0 within it. Without it, every attempt is shown, each after a marker line. Pods that
    /// have not reached it are left out; 422 when no pod has.
    #[param(minimum = 1)]
    attempt: Option<i32>,
}

/// A run's logs. One pod: its log as is. Several pods: each pod's block in completion-index
/// (then creation) order, under a `==> pod <name> (index <i>) <==` header. Notes of the service
/// (a truncated or missing log) are lines starting with `[vfi-orchestrator]`; so is the marker
/// line before each attempt after the first of a container restarted in place
/// (`restartPolicy: OnFailure`), unless `attempt` picks one. With
/// `Accept: text/event-stream`: one `log` event per line (data: JSON with pod, index, line,
/// time, text), ids `<pod>:<line>` for `Last-Event-ID`, and an `end` event.
#[utoipa::path(
    get, path = "/v1/runs/{id}/logs", tag = "runs",
    security(("bearer" = ["read"])),
    params(
        ("id" = Uuid, Path, description = "Run id"),
        LogParams,
        ("Last-Event-ID" = Option<String>, Header, description = "With `Accept: text/event-stream`: resume after this event id (`<pod>:<line>`)"),
    ),
    responses(
        (status = 200, description = "The log, streamed: plain text, or with `Accept: text/event-stream` Server-Sent Events (`log` events whose data is a JSON line, then an `end` event)", content(
            (String = "text/plain"),
            (String = "text/event-stream"),
        )),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run, or `attempt` is beyond every selected pod's attempts", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn run_logs(
    auth: Authorized<ForRead>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Response> {
    let run = run_for(&auth, &state.db, &id).await?;
    let id = run.id;
    if let Some(pod) = &params.pod {
        crate::domain::names::dns1123_subdomain(pod)
            .map_err(|message| Error::bad_request("pod", message))?;
    }
    if params.tail.is_some_and(|t| t < 0) {
        return Err(Error::bad_request("tail", "must be 0 or more"));
    }
    if params.limit_bytes.is_some_and(|n| n < 1) {
        return Err(Error::bad_request("limitBytes", "must be 1 or more"));
    }
    if params.attempt.is_some_and(|n| n < 1) {
        return Err(Error::bad_request("attempt", "must be 1 or more"));
    }
    if let Some(attempt) = params.attempt {
        let most = logs::pods_with_attempts(&state.db, id)
            .await?
            .iter()
            .filter(|p| params.pod.as_ref().is_none_or(|name| &p.pod.name == name))
            .filter(|p| {
                params
                    .index
                    .is_none_or(|i| p.pod.completion_index == Some(i))
            })
            .map(|p| p.attempts.len())
            .max()
            // A run without pods yet will have a first attempt.
            .unwrap_or(1);
        if attempt as usize > most {
            // Like a pod that does not exist: the sub-resource asked for is not there (yet).
            return Err(Error::NotFound {
                kind: "attempt",
                name: attempt.to_string(),
            });
        }
    }
    let since = params
        .since
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| Error::bad_request("since", format!("{s:?} is not an RFC 3339 time")))
        })
        .transpose()?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let after = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(id) if sse => Some(parse_event_id(id)?),
        _ => None,
    };
    let filtered = params.pod.is_some() || params.index.is_some();
    let several = !filtered
        && (run.template.completions.unwrap_or(1) > 1
            || store::pods::list(&state.db, id).await?.len() > 1);
    let query = LogQuery {
        follow: params.follow.unwrap_or(false),
        pod: params.pod,
        index: params.index,
        tail: params.tail,
        since,
        after,
        attempt: params.attempt,
        // Server-Sent Events have their own keep-alive comments, which show in no text.
        keepalive: state.limits.log_follow_keepalive.filter(|_| !sse),
        text_only: !sse && !params.timestamps.unwrap_or(false),
    };
    let cluster = state.cluster.clone();
    let items = logs::run_log(state.db.clone(), cluster, run, query);
    let timestamps = params.timestamps.unwrap_or(false);
    let limit = params
        .limit_bytes
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(u64::MAX);
    // A revoked token's stream ends (a follow could otherwise outlive it by hours), without
    // the `end` event that says the log is complete.
    let revoked = state.revocations.ended(auth.caller.token_id);
    if sse {
        Ok(sse_response(items, timestamps, limit)
            .take_until(revoked)
            .into_response())
    } else {
        Ok(text_response(
            items.take_until(revoked),
            several,
            timestamps,
            limit,
        ))
    }
}

fn parse_event_id(id: &str) -> Result<(String, i64)> {
    id.rsplit_once(':')
        .and_then(|(pod, line)| Some((pod.to_string(), line.parse().ok()?)))
        .ok_or_else(|| {
            Error::bad_request(
                "Last-Event-ID",
                format!("{id:?} is not an id this server sent"),
            )
        })
}

/// Most lines sent in one body frame.
const LINES_PER_FRAME: usize = 1024;

fn note_line(text: &str) -> Bytes {
    Bytes::from(format!("[vfi-orchestrator] {text}\n"))
}

fn text_response(
    items: impl futures::Stream<Item = Result<LogItem, logs::LogError>> + Send + 'static,
    several: bool,
    timestamps: bool,
    limit: u64,
) -> Response {
    let mut pods_seen = 0usize;
    let chunks = items.map(move |item| match item {
        Ok(LogItem::Pod(pod)) => {
            pods_seen += 1;
            if several || pods_seen > 1 {
                let index = pod
                    .completion_index
                    .map(|i| format!(" (index {i})"))
                    .unwrap_or_default();
                Bytes::from(format!("==> pod {}{index} <==\n", pod.name))
            } else {
                Bytes::new()
            }
        }
        Ok(LogItem::Line { time, text, .. }) => match (timestamps, time) {
            (true, Some(time)) => {
                let mut line = time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .into_bytes();
                line.push(b' ');
                line.extend_from_slice(&text);
                Bytes::from(line)
            }
            _ => text,
        },
        Ok(LogItem::Lines { text, .. }) => text,
        Ok(LogItem::Note { text, .. }) => note_line(&text),
        Err(error) => {
            tracing::warn!(error = %error, "reading a log failed mid-stream");
            note_line("reading the log failed; retry the request")
        }
    });
    let body = chunks
        .scan(0u64, move |sent, bytes| {
            if *sent >= limit {
                return futures::future::ready(None);
            }
            let room = (limit - *sent).min(bytes.len() as u64) as usize;
            *sent += room as u64;
            futures::future::ready(Some(bytes.slice(..room)))
        })
        // Lines already at hand go out as one body frame, not one frame (and one chunk of the
        // chunked encoding) each: an archived log is served about as fast as it is read
        // (issue 15). A following reader gets each line as soon as it comes, as before.
        .ready_chunks(LINES_PER_FRAME)
        .flat_map(|pieces| futures::stream::iter(frames(pieces)))
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Pieces at hand as body frames: runs of small pieces (lines) joined into one frame, a piece
/// of [`BIG_PIECE`] or more (an archived chunk's text) sent as it is, without copying it again.
fn frames(pieces: Vec<Bytes>) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut small: Vec<Bytes> = Vec::new();
    for piece in pieces {
        if piece.len() >= BIG_PIECE {
            if !small.is_empty() {
                frames.push(Bytes::from(std::mem::take(&mut small).concat()));
            }
            frames.push(piece);
        } else if !piece.is_empty() {
            small.push(piece);
        }
    }
    if !small.is_empty() {
        frames.push(Bytes::from(small.concat()));
    }
    frames
}

/// A piece this long is a frame of its own (see [`frames`]).
const BIG_PIECE: usize = 16 * 1024;

fn sse_response(
    items: impl futures::Stream<Item = Result<LogItem, logs::LogError>> + Send + 'static,
    timestamps: bool,
    limit: u64,
) -> SseEvents<impl futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send> {
    let mut index: Option<i32> = None;
    let events = items
        .scan(0u64, move |sent, item| {
            if *sent >= limit {
                return futures::future::ready(None);
            }
            let event = match item {
                Ok(LogItem::Pod(pod)) => {
                    index = pod.completion_index;
                    None
                }
                Ok(LogItem::Line {
                    pod,
                    number,
                    time,
                    text,
                }) => {
                    *sent += text.len() as u64;
                    let text = String::from_utf8_lossy(&text);
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let data = serde_json::json!({
                        "pod": pod,
                        "index": index,
                        "line": number,
                        "time": time.filter(|_| timestamps),
                        "text": text,
                    });
                    let event = Event::default().event("log").data(data.to_string());
                    Some(match number {
                        Some(n) => event.id(format!("{pod}:{n}")),
                        None => event,
                    })
                }
                // Only text-only readers get blocks, and event streams are not text-only; if
                // one came, its lines go out without numbers rather than not at all.
                Ok(LogItem::Lines { pod, text }) => {
                    *sent += text.len() as u64;
                    let text = String::from_utf8_lossy(&text);
                    let data = serde_json::json!({"pod": pod, "index": index, "text": text});
                    Some(Event::default().event("log").data(data.to_string()))
                }
                Ok(LogItem::Note { pod, text }) => Some(
                    Event::default()
                        .event("note")
                        .data(serde_json::json!({"pod": pod, "text": text}).to_string()),
                ),
                Err(error) => {
                    tracing::warn!(error = %error, "reading a log failed mid-stream");
                    Some(
                        Event::default()
                            .event("error")
                            .data("reading the log failed"),
                    )
                }
            };
            futures::future::ready(Some(event))
        })
        .filter_map(|event| futures::future::ready(event.map(Ok)))
        // With data: the HTML standard's EventSource (and every client that follows it) drops
        // an event whose data buffer is empty, so an `end` without data never reached them.
        .chain(futures::stream::once(async {
            Ok(Event::default().event("end").data("{}"))
        }));
    SseEvents(events)
}

/// The SSE events of a log, before they become a response.
struct SseEvents<S>(S);

impl<S> SseEvents<S>
where
    S: futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static,
{
    /// Ends the stream, without its `end` event, when `stop` resolves.
    fn take_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send> {
        Sse::new(self.0.take_until(stop)).keep_alive(KeepAlive::default())
    }
}
