//! Generic REST handlers for one object of a stored kind: get, create (and server-side apply
//! of a missing object), replace and patch, with the per-kind rules (defaulting, validation,
//! admission) supplied by the [`ApiKind`] trait, and the refusal of status subresource writes.
//! Lists and watches are in [`super::list`], deletes in [`super::delete`]. Writes go to the
//! store; nothing here runs controllers.
//!
//! Depends on: `kinds` (per-kind rules), `tables` and the request plumbing in `api`, plus
//! `store`, `patch` and `validation`. Nothing it depends on imports it back.

use axum::body::Bytes;
use axum::extract::{Path, Query as AxQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;

use super::kinds::{to_json, ApiKind};
use super::tables::{self, IncludeObject};
use super::{
    check_accept, content_type, decode_json, json_response, respond, wants_table, AppState, Query,
};
use crate::error::{Cause, Status};
use crate::patch::{self, PatchKind};
use crate::store::Store;
use crate::validation;

/// The namespace must exist and, as the NamespaceLifecycle admission plugin enforces, not be
/// terminating.
fn namespace_exists(store: &Store, ns: &str) -> Result<(), Status> {
    match store.get::<Namespace>("", ns) {
        Some(n) if n.metadata.deletion_timestamp.is_some() => Err(Status::new(
            403,
            "Forbidden",
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Some(_) => Ok(()),
        None => Err(Status::not_found("namespaces", ns)),
    }
}

fn single<K: ApiKind>(obj: &K, headers: &HeaderMap, q: &Query, code: StatusCode) -> Response {
    if wants_table(headers) {
        let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
        let rv = obj
            .metadata()
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        return json_response(code, &tables::table(&[obj], rv, None, include));
    }
    if super::wants_metadata(headers) {
        return json_response(code, &super::partial_metadata(obj.metadata()));
    }
    json_response(code, &to_json(obj))
}

async fn get_impl<K: ApiKind>(
    state: AppState,
    ns: &str,
    name: &str,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, Status> {
    check_accept(&headers)?;
    let obj = state
        .store
        .get::<K>(ns, name)
        .ok_or_else(|| Status::not_found(K::GROUP_RESOURCE, name))?;
    Ok(single(obj.as_ref(), &headers, &q, StatusCode::OK))
}

pub async fn get_one<K: ApiKind>(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    respond(get_impl::<K>(state, &ns, &name, q, headers).await)
}

pub async fn get_cluster<K: ApiKind>(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
) -> Response {
    respond(get_impl::<K>(state, "", &name, q, headers).await)
}

async fn create_impl<K: ApiKind>(
    state: AppState,
    ns: Option<String>,
    q: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Status> {
    let mut obj = K::decode_create(&headers, &body)?;
    if let Some(ns) = &ns {
        match obj.metadata().namespace.as_deref() {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
    }
    {
        let m = obj.metadata_mut();
        m.namespace = ns.clone();
        m.uid = None;
        m.resource_version = None;
        m.creation_timestamp = None;
        m.deletion_timestamp = None;
        m.deletion_grace_period_seconds = None;
        m.generation = None;
        m.managed_fields = None;
        validation::apply_generate_name(m);
    }
    let uid = uuid::Uuid::new_v4().to_string();
    K::prepare_create(&mut obj, &uid)?;
    if let Some(ns) = &ns {
        namespace_exists(&state.store, ns)?;
    }
    K::mutate(&mut obj, &state);
    K::admit(&obj, &state)?;
    obj.metadata_mut().uid = Some(uid);
    if q.contains_key("dryRun") {
        return Ok(json_response(StatusCode::CREATED, &to_json(&obj)));
    }
    let created = state.store.create(obj)?;
    Ok(json_response(
        StatusCode::CREATED,
        &to_json(created.as_ref()),
    ))
}

pub async fn create<K: ApiKind>(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(create_impl::<K>(state, Some(ns), q, headers, body).await)
}

pub async fn create_cluster<K: ApiKind>(
    State(state): State<AppState>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(create_impl::<K>(state, None, q, headers, body).await)
}

/// Applies an update (PUT body or patched object) through the kind's rules and the store.
fn write_update<K: ApiKind>(
    store: &Store,
    ns: &str,
    name: &str,
    expected_rv: Option<String>,
    make: impl FnOnce(&K) -> Result<K, Status>,
) -> Result<std::sync::Arc<K>, Status> {
    store.update_full::<K>(ns, name, |cur| {
        if let Some(rv) = expected_rv.as_deref().filter(|r| !r.is_empty()) {
            if cur.metadata().resource_version.as_deref() != Some(rv) {
                return Err(Status::conflict(K::GROUP_RESOURCE, name));
            }
        }
        let mut new = make(cur)?;
        if new.metadata().name.as_deref().is_some_and(|n| n != name) {
            return Err(Status::bad_request("the name of the object does not match the name on the URL"));
        }
        K::prepare_update(cur, &mut new)?;
        let (om, nm) = (cur.metadata(), new.metadata_mut());
        if om.deletion_timestamp.is_some() {
            let added: Vec<&String> = nm
                .finalizers
                .iter()
                .flatten()
                .filter(|f| !om.finalizers.iter().flatten().any(|o| o == *f))
                .collect();
            if !added.is_empty() {
                return Err(Status::invalid(
                    K::KIND,
                    K::GROUP,
                    name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        &format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
                    )],
                ));
            }
        }
        nm.generation = nm.generation.or(om.generation);
        nm.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
        nm.managed_fields = None;
        if nm.finalizers.as_ref().is_some_and(|f| f.is_empty()) {
            nm.finalizers = None;
        }
        *cur = new;
        Ok(())
    })
    .map(|(obj, _removed)| obj)
}

/// The written object; when the write removed the last finalizer of a deleting object it is
/// gone from the store, and the real server still answers with that final state.
fn written<K: ApiKind>(obj: std::sync::Arc<K>, q: &Query, headers: &HeaderMap) -> Response {
    single(obj.as_ref(), headers, q, StatusCode::OK)
}

async fn replace_impl<K: ApiKind>(
    state: AppState,
    ns: &str,
    name: &str,
    q: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Status> {
    let new: K = decode_json(&headers, &body, K::KIND)?;
    let rv = new.metadata().resource_version.clone();
    let r = write_update::<K>(&state.store, ns, name, rv, |_| Ok(new))?;
    Ok(written(r, &q, &headers))
}

pub async fn replace_one<K: ApiKind>(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(replace_impl::<K>(state, &ns, &name, q, headers, body).await)
}

pub async fn replace_cluster<K: ApiKind>(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(replace_impl::<K>(state, "", &name, q, headers, body).await)
}

async fn patch_impl<K: ApiKind>(
    state: AppState,
    ns: &str,
    name: &str,
    q: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Status> {
    let ct = content_type(&headers);
    let kind =
        PatchKind::from_content_type(&ct).ok_or_else(|| Status::unsupported_media_type(&ct))?;
    let p: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        // kube-rs sends apply patches as JSON (valid YAML); real YAML is not parsed here.
        Err(_) if kind == PatchKind::Apply => return Err(Status::unsupported_media_type(&ct)),
        Err(e) => return Err(Status::bad_request(format!("error decoding patch: {e}"))),
    };
    if kind == PatchKind::Apply {
        if q.get("fieldManager").is_none_or(|f| f.is_empty()) {
            return Err(Status::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            ));
        }
        if state.store.get::<K>(ns, name).is_none() {
            // Server-side apply of a missing object creates it.
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            let scope = K::NAMESPACED.then(|| ns.to_string());
            return create_impl::<K>(state, scope, q, h, body).await;
        }
    }
    let expected_rv = p
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let r = write_update::<K>(&state.store, ns, name, expected_rv, |cur| {
        let patched = patch::apply(kind, &to_json(cur), &p)?;
        serde_json::from_value::<K>(patched).map_err(|e| {
            Status::bad_request(format!("patched object is not a valid {}: {e}", K::KIND))
        })
    })?;
    Ok(written(r, &q, &headers))
}

pub async fn patch_one<K: ApiKind>(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(patch_impl::<K>(state, &ns, &name, q, headers, body).await)
}

pub async fn patch_cluster<K: ApiKind>(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AxQuery(q): AxQuery<Query>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(patch_impl::<K>(state, "", &name, q, headers, body).await)
}

/// Status is written only by the simulated controllers.
pub async fn status_write_refused() -> Response {
    Status::method_not_allowed(
        "kubesim: the status subresource is written only by the simulated controllers",
    )
    .into_response()
}
