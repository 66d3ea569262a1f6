//! Watch streams: newline-delimited WatchEvent JSON over a chunked response. Replays the
//! kind's history after `resourceVersion` (or synthesizes ADDED events for the current state),
//! applies selectors with the real server's transition rules (an object that stops matching is
//! sent as DELETED, one that starts matching as ADDED), emits BOOKMARKs, supports
//! `sendInitialEvents`, honours `timeoutSeconds`, and answers a resourceVersion older than the
//! retained history with an ERROR event carrying a 410 Expired Status, as the real server does.
//!
//! Depends on: `kinds`, `filter`, `tables` and the request plumbing in `api`, plus `store`'s
//! history; never on `resources`, which hands it watch requests.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::filter::Filter;
use super::kinds::{to_json, ApiKind};
use super::tables::{self, IncludeObject};
use super::{flag, wants_table, AppState, Query};
use crate::error::Status;
use crate::store::{Event, EventType};

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

struct Encoder {
    table: Option<IncludeObject>,
    metadata_only: bool,
}

impl Encoder {
    fn object<K: ApiKind>(&self, obj: &K) -> Value {
        match self.table {
            Some(include) => tables::table(&[obj], rv_of(obj), None, include),
            None if self.metadata_only => super::partial_metadata(obj.metadata()),
            None => to_json(obj),
        }
    }
    fn event<K: ApiKind>(&self, ty: &str, obj: &K) -> Bytes {
        line(&json!({ "type": ty, "object": self.object(obj) }))
    }
}

fn rv_of<K: ApiKind>(obj: &K) -> u64 {
    obj.metadata()
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn bookmark<K: ApiKind>(rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": { "kind": K::KIND, "apiVersion": K::API_VERSION, "metadata": meta }
    }))
}

fn expired_event(asked: u64, oldest: u64) -> Bytes {
    let s = Status::expired(format!("too old resource version: {asked} ({oldest})"));
    line(&json!({ "type": "ERROR", "object": s.to_json() }))
}

/// What a history event looks like to a watcher with this filter, if anything.
fn translate<K: ApiKind>(ev: &Event<K>, f: &Filter) -> Option<&'static str> {
    let now = f.matches(ev.obj.as_ref());
    let before = ev.prev.as_ref().is_some_and(|p| f.matches(p.as_ref()));
    match ev.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => (now || before).then_some("DELETED"),
        EventType::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }
}

pub async fn watch<K: ApiKind>(
    state: AppState,
    filter: Filter,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, Status> {
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = flag(&q, "sendInitialEvents");
    let bookmarks = flag(&q, "allowWatchBookmarks");
    if send_initial
        && (q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") || !bookmarks)
    {
        return Err(Status::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![crate::error::Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is NotOlderThan and allowWatchBookmarks is true",
            )],
        ));
    }
    let start: Option<u64> = match rv_param.as_str() {
        "" | "0" => None,
        s => Some(
            s.parse()
                .map_err(|_| Status::bad_request(format!("invalid resource version {s:?}")))?,
        ),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let enc = Encoder {
        table: wants_table(&headers)
            .then(|| IncludeObject::parse(q.get("includeObject").map(String::as_str))),
        metadata_only: super::wants_metadata(&headers),
    };
    // The request's path, for faults narrowed to some resources.
    let path = {
        let mut p = if K::GROUP.is_empty() {
            format!("/api/{}", K::VERSION)
        } else {
            format!("/apis/{}", K::API_VERSION)
        };
        if let Some(ns) = &filter.namespace {
            p.push_str(&format!("/namespaces/{ns}"));
        }
        format!("{p}/{}", K::URL_PATH_SEGMENT)
    };
    let gone = state.faults.take_watch_gone(&path);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let faults = state.faults.clone();
    tokio::spawn(async move {
        let store = state.store.clone();
        let mut changes = store.subscribe();
        let mut dropper = state.faults.state.drop_watches.subscribe();
        dropper.borrow_and_update();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(state.bookmark_interval);
        tick.tick().await;
        if gone {
            let oldest = store.compacted_rv::<K>().max(1);
            let _ = tx.send(expired_event(start.unwrap_or(0), oldest)).await;
            return;
        }
        // Initial state.
        let mut cursor = match start {
            Some(rv) if !send_initial => rv,
            _ => {
                let (items, rv) = store.list::<K>(filter.namespace.as_deref());
                for o in items.iter().filter(|o| filter.matches(o.as_ref())) {
                    if tx.send(enc.event("ADDED", o.as_ref())).await.is_err() {
                        return;
                    }
                }
                if send_initial && tx.send(bookmark::<K>(rv, true)).await.is_err() {
                    return;
                }
                rv
            }
        };
        loop {
            changes.borrow_and_update();
            match store.events_since::<K>(cursor) {
                Err(e) => {
                    let _ = tx.send(expired_event(cursor, e.oldest_available)).await;
                    return;
                }
                Ok((evs, now)) => {
                    for ev in &evs {
                        if let Some(ty) = translate(ev, &filter) {
                            if tx.send(enc.event(ty, ev.obj.as_ref())).await.is_err() {
                                return;
                            }
                        }
                    }
                    cursor = cursor.max(now);
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark::<K>(cursor, false)).await.is_err() {
                        return;
                    }
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => futures::future::pending().await } } => return,
                _ = dropper.changed() => return,
                _ = state.shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = faults.guard_stream(rx);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}
