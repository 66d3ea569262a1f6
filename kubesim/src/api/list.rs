//! Lists: LIST of a kind (namespaced or across namespaces) with label and field selectors,
//! `limit`/`continue` pagination, Table and PartialObjectMetadata
//! output; `watch=true` requests are handed to [`super::watch`].
//!
//! Depends on: `watch`, `kinds`, `filter`, `tables` and the request plumbing in `api`, plus
//! `store`. Nothing it depends on imports it back.

use axum::extract::{Path, Query as AxQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::json;

use super::filter::Filter;
use super::kinds::{list_item, ApiKind};
use super::tables::{self, IncludeObject};
use super::{check_accept, flag, json_response, respond, wants_table, AppState, Query};
use crate::error::Status;

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, key: &(String, String)) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: format!("{}/{}", key.0, key.1),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<(u64, (String, String)), Status> {
    let bad = || {
        Status::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let (ns, name) = t.start.split_once('/').ok_or_else(bad)?;
    Ok((t.rv, (ns.to_string(), name.to_string())))
}

async fn list_or_watch<K: ApiKind>(
    state: AppState,
    ns: Option<String>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, Status> {
    check_accept(&headers)?;
    let filter = Filter::parse::<K>(&q, ns.clone())?;
    if flag(&q, "watch") {
        return super::watch::watch::<K>(state, filter, q, headers).await;
    }
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (items, list_rv) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(tok) => {
            let (rv, after) = decode_continue(tok)?;
            if rv < state.store.compacted_rv::<K>() {
                return Err(Status::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
            }
            let (items, _) = state.store.list_after::<K>(ns.as_deref(), &after);
            (items, rv)
        }
        None => state.store.list::<K>(ns.as_deref()),
    };
    let matching: Vec<&K> = items
        .iter()
        .map(|a| a.as_ref())
        .filter(|o| filter.matches(*o))
        .collect();
    let (page, rest) = if limit > 0 && matching.len() > limit {
        (&matching[..limit], matching.len() - limit)
    } else {
        (&matching[..], 0)
    };
    let cont = (rest > 0).then(|| {
        let last = page[page.len() - 1].metadata();
        encode_continue(
            list_rv,
            &(
                last.namespace.clone().unwrap_or_default(),
                last.name.clone().unwrap_or_default(),
            ),
        )
    });
    if wants_table(&headers) {
        let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
        return Ok(json_response(
            StatusCode::OK,
            &tables::table(page, list_rv, cont, include),
        ));
    }
    let metadata_only = super::wants_metadata(&headers);
    let mut meta = json!({ "resourceVersion": list_rv.to_string() });
    if let Some(c) = cont {
        meta["continue"] = json!(c);
        if filter.labels.is_empty() && filter.fields.is_empty() {
            meta["remainingItemCount"] = json!(rest);
        }
    }
    let body = if metadata_only {
        json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "items": page.iter().map(|o| super::partial_metadata(o.metadata())).collect::<Vec<_>>(),
        })
    } else {
        json!({
            "kind": K::LIST_KIND,
            "apiVersion": K::API_VERSION,
            "metadata": meta,
            "items": page.iter().map(|o| list_item(*o)).collect::<Vec<_>>(),
        })
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn list_ns<K: ApiKind>(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    respond(list_or_watch::<K>(state, Some(ns), q, headers).await)
}

pub async fn list_all<K: ApiKind>(
    State(state): State<AppState>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    respond(list_or_watch::<K>(state, None, q, headers).await)
}

pub async fn list_cluster<K: ApiKind>(
    state: State<AppState>,
    q: AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    list_all::<K>(state, q, headers).await
}
