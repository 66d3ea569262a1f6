//! events.k8s.io/v1 Events: the same stored objects as core/v1 Events, served in the newer
//! shape, as the real server serves one stored Event through both APIs
//! (https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/; field
//! mapping as in kubernetes/kubernetes pkg/apis/events/v1/conversion.go: `regarding` is
//! `involvedObject`, `note` is `message`, `reportingController` is `reportingComponent`,
//! `series` carries a repeated Event's count, `deprecated*` keep the old fields). List, watch,
//! get and create; field selectors may name the new fields (`regarding.name`, ...).

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query as AxQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use serde_json::{json, Map, Value};

use super::{list, resources, wants_table, AppState, Query};

pub const API_VERSION: &str = "events.k8s.io/v1";

/// `(core/v1 field, events.k8s.io/v1 field)`.
const FIELDS: [(&str, &str); 14] = [
    ("metadata", "metadata"),
    ("eventTime", "eventTime"),
    ("involvedObject", "regarding"),
    ("related", "related"),
    ("message", "note"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn renamed(
    from: &Value,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
) -> Map<String, Value> {
    pairs
        .filter_map(|(a, b)| {
            let v = from.get(a).filter(|v| !v.is_null())?;
            Some((b.to_string(), v.clone()))
        })
        .collect()
}

/// A core/v1 Event (as JSON) in the events.k8s.io/v1 shape.
pub fn to_v1(core: &Value) -> Value {
    let mut out = renamed(core, FIELDS.into_iter());
    out.insert("apiVersion".into(), json!(API_VERSION));
    out.insert("kind".into(), json!("Event"));
    if core["count"].as_i64().unwrap_or(1) > 1 {
        out.insert(
            "series".into(),
            json!({"count": core["count"], "lastObservedTime": core["lastTimestamp"]}),
        );
    }
    Value::Object(out)
}

/// An events.k8s.io/v1 Event (as JSON) in the core/v1 shape, for creates.
pub fn from_v1(v1: &Value) -> Value {
    let mut out = renamed(v1, FIELDS.into_iter().map(|(a, b)| (b, a)));
    if let Some(count) = v1.pointer("/series/count") {
        out.insert("count".into(), count.clone());
    }
    out.entry("involvedObject").or_insert(json!({}));
    Value::Object(out)
}

/// Field selectors in the new names, translated to the stored fields.
fn translate_fields(mut q: Query) -> Query {
    if let Some(f) = q.get_mut("fieldSelector") {
        *f = f
            .split(',')
            .map(|term| {
                term.replacen("regarding.", "involvedObject.", 1).replacen(
                    "reportingController",
                    "reportingComponent",
                    1,
                )
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    q
}

async fn body_json(response: Response) -> Option<(axum::http::response::Parts, Value)> {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.ok()?;
    Some((parts, serde_json::from_slice(&bytes).ok()?))
}

fn rebuild(parts: axum::http::response::Parts, v: &Value) -> Response {
    Response::from_parts(parts, Body::from(serde_json::to_vec(v).unwrap_or_default()))
}

/// Converts a list, a single object or a watch stream answered for core/v1 Events.
async fn convert(response: Response, watch: bool) -> Response {
    if !response.status().is_success() {
        return response;
    }
    if watch {
        let (parts, body) = response.into_parts();
        let lines = body.into_data_stream().map(|chunk| {
            chunk.map(|bytes| {
                let Ok(mut ev) = serde_json::from_slice::<Value>(&bytes) else {
                    return bytes;
                };
                let kind = ev["object"]["kind"].as_str().unwrap_or("");
                if kind == "Event"
                    || kind.is_empty() && ev["object"].get("involvedObject").is_some()
                {
                    ev["object"] = to_v1(&ev["object"]);
                }
                let mut out = serde_json::to_vec(&ev).unwrap_or_default();
                out.push(b'\n');
                Bytes::from(out)
            })
        });
        return Response::from_parts(parts, Body::from_stream(lines));
    }
    let Some((parts, mut v)) = body_json(response).await else {
        return super::respond(Err(crate::error::Status::from_code(500, None)));
    };
    if v["kind"] == "EventList" {
        v["apiVersion"] = json!(API_VERSION);
        if let Some(items) = v["items"].as_array_mut() {
            for item in items.iter_mut() {
                let mut converted = to_v1(item);
                if let Some(m) = converted.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                *item = converted;
            }
        }
    } else if v["kind"] == "Event" {
        v = to_v1(&v);
    }
    rebuild(parts, &v)
}

fn passes_through(headers: &HeaderMap) -> bool {
    // Tables print the same columns for both versions; metadata is the same object.
    wants_table(headers) || super::wants_metadata(headers)
}

pub async fn list_ns(
    state: State<AppState>,
    ns: Path<String>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    let watch = super::flag(&q, "watch");
    let raw = passes_through(&headers);
    let response = list::list_ns::<Event>(state, ns, AxQuery(translate_fields(q)), headers).await;
    if raw {
        response
    } else {
        convert(response, watch).await
    }
}

pub async fn list_all(
    state: State<AppState>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    let watch = super::flag(&q, "watch");
    let raw = passes_through(&headers);
    let response = list::list_all::<Event>(state, AxQuery(translate_fields(q)), headers).await;
    if raw {
        response
    } else {
        convert(response, watch).await
    }
}

pub async fn get_one(
    state: State<AppState>,
    path: Path<(String, String)>,
    q: AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    let raw = passes_through(&headers);
    let response = resources::get_one::<Event>(state, path, q, headers).await;
    if raw {
        response
    } else {
        convert(response, false).await
    }
}

pub async fn create(
    state: State<AppState>,
    ns: Path<String>,
    q: AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let core = match serde_json::from_slice::<Value>(&body) {
        Ok(v1) => Bytes::from(serde_json::to_vec(&from_v1(&v1)).unwrap_or_default()),
        Err(_) => body,
    };
    let response = resources::create::<Event>(state, ns, q, headers, core).await;
    convert(response, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_v1_shapes_convert_both_ways() {
        let core = json!({
            "metadata": {"name": "pi.1", "namespace": "default"},
            "involvedObject": {"kind": "Job", "name": "pi"},
            "reason": "FailedCreate", "message": "Error creating: x", "type": "Warning",
            "count": 3, "lastTimestamp": "2026-01-01T00:00:00Z",
            "reportingComponent": "job-controller", "source": {"component": "job-controller"}
        });
        let v1 = to_v1(&core);
        assert_eq!(v1["regarding"]["name"], "pi");
        assert_eq!(v1["note"], "Error creating: x");
        assert_eq!(v1["reportingController"], "job-controller");
        assert_eq!(v1["series"]["count"], 3);
        assert_eq!(v1["deprecatedSource"]["component"], "job-controller");
        let back = from_v1(&v1);
        for key in [
            "involvedObject",
            "message",
            "reason",
            "type",
            "count",
            "source",
        ] {
            assert_eq!(back[key], core[key], "{key}");
        }
    }
}
