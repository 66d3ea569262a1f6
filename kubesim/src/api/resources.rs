//! Generic REST handlers for the stored kinds: list (with pagination and selectors), watch
//! (delegated to [`super::watch`]), get, create, update, patch and delete, with the per-kind
//! rules (defaulting/validation, Job delete propagation, pod graceful deletion) supplied by the
//! [`ApiKind`] trait. Writes go to the store; nothing here runs controllers.
//!
//! Depends on: `kinds` (per-kind rules), `filter`, `watch`, `tables` and the request plumbing in
//! `api`, plus `store` and `patch`. Nothing it depends on imports it back.

use axum::body::Bytes;
use axum::extract::{Path, Query as AxQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};

use super::filter::Filter;
use super::kinds::{list_item, to_json, ApiKind, DeleteOpts};
use super::tables::{self, IncludeObject};
use super::{
    check_accept, content_type, decode_json, flag, json_response, wants_table, AppState, Query,
};
use crate::error::{Cause, Status};
use crate::patch::{self, PatchKind};
use crate::store::{Kind, Store};
use crate::validation;

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

pub fn respond(r: Result<Response, Status>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
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

fn success_status<K: Kind>(name: &str) -> Value {
    let (kind, group) = match K::GROUP_RESOURCE.split_once('.') {
        Some((r, g)) => (r, g),
        None => (K::GROUP_RESOURCE, ""),
    };
    let mut details = json!({ "name": name, "kind": kind });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
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

async fn delete_impl<K: ApiKind>(
    state: AppState,
    ns: &str,
    name: &str,
    q: Query,
    body: Bytes,
) -> Result<Response, Status> {
    let opts = DeleteOpts::parse(&q, &body)?;
    let cur = state
        .store
        .get::<K>(ns, name)
        .ok_or_else(|| Status::not_found(K::GROUP_RESOURCE, name))?;
    if let Some(rv) = &opts.precondition_rv {
        if cur.metadata().resource_version.as_deref() != Some(rv.as_str()) {
            return Err(Status::conflict(K::GROUP_RESOURCE, name));
        }
    }
    let plan = K::delete_plan(cur.as_ref(), &opts);
    let mut resp = if opts.dry_run {
        json_response(StatusCode::OK, &to_json(cur.as_ref()))
    } else {
        let r = state.store.delete::<K>(
            ns,
            name,
            plan.grace,
            &plan.finalizers,
            opts.precondition_uid.as_deref(),
        )?;
        match r {
            Some(obj) => json_response(StatusCode::OK, &to_json(obj.as_ref())),
            None if K::RETURN_DELETED_OBJECT => {
                json_response(StatusCode::OK, &to_json(cur.as_ref()))
            }
            None => {
                let mut s = success_status::<K>(name);
                s["details"]["uid"] = json!(cur.metadata().uid);
                json_response(StatusCode::OK, &s)
            }
        }
    };
    if let Some(w) = plan.warning {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{w}\"")) {
            resp.headers_mut().insert("warning", v);
        }
    }
    Ok(resp)
}

pub async fn delete_one<K: ApiKind>(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    AxQuery(q): AxQuery<Query>,
    body: Bytes,
) -> Response {
    respond(delete_impl::<K>(state, &ns, &name, q, body).await)
}

async fn delete_collection_impl<K: ApiKind>(
    state: AppState,
    ns: String,
    q: Query,
    body: Bytes,
) -> Result<Response, Status> {
    let filter = Filter::parse::<K>(&q, Some(ns.clone()))?;
    let opts = DeleteOpts::parse(&q, &body)?;
    let (items, _) = state.store.list::<K>(Some(&ns));
    let mut out = Vec::new();
    for obj in items.iter().filter(|o| filter.matches(o.as_ref())) {
        let name = obj.metadata().name.clone().unwrap_or_default();
        let plan = K::delete_plan(obj.as_ref(), &opts);
        if opts.dry_run {
            out.push(list_item(obj.as_ref()));
            continue;
        }
        match state
            .store
            .delete::<K>(&ns, &name, plan.grace, &plan.finalizers, None)
        {
            Ok(Some(o)) => out.push(list_item(o.as_ref())),
            Ok(None) => out.push(list_item(obj.as_ref())),
            Err(_) => {}
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": K::LIST_KIND,
            "apiVersion": K::API_VERSION,
            "metadata": {"resourceVersion": state.store.current_rv().to_string()},
            "items": out,
        }),
    ))
}

/// DELETE on a collection (with selectors), as `kubectl delete jobs -l ...` and kube-rs
/// `delete_collection` use.
pub async fn delete_collection<K: ApiKind>(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    AxQuery(q): AxQuery<Query>,
    body: Bytes,
) -> Response {
    respond(delete_collection_impl::<K>(state, ns, q, body).await)
}

/// Namespaces Kubernetes refuses to delete (the NamespaceLifecycle admission plugin).
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// DELETE of a namespace, as the namespace registry: with `spec.finalizers` it only becomes
/// `Terminating` (deletionTimestamp, `status.phase`), and the namespace controller
/// ([`crate::controller::namespace`]) empties and removes it.
pub async fn delete_namespace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AxQuery(q): AxQuery<Query>,
    body: Bytes,
) -> Response {
    respond(delete_namespace_impl(&state, &name, &q, &body))
}

fn delete_namespace_impl(
    state: &AppState,
    name: &str,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Status> {
    let opts = DeleteOpts::parse(q, body)?;
    if IMMORTAL_NAMESPACES.contains(&name) {
        let mut s = Status::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        );
        s.details = Some(json!({"name": name, "kind": "namespaces"}));
        return Err(s);
    }
    let cur = state
        .store
        .get::<Namespace>("", name)
        .ok_or_else(|| Status::not_found("namespaces", name))?;
    if opts.dry_run {
        return Ok(json_response(StatusCode::OK, &to_json(cur.as_ref())));
    }
    if let Some(rbac) = &state.rbac {
        // Roles and RoleBindings carry no finalizers: the namespace controller deletes them
        // with the rest of the content, at once.
        rbac.forget_namespace(name);
    }
    let updated = state.store.update::<Namespace>("", name, |ns| {
        if ns.metadata.deletion_timestamp.is_none() {
            ns.metadata.deletion_timestamp = Some(crate::time::now_time());
            ns.metadata.deletion_grace_period_seconds = Some(0);
        }
        ns.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
        Ok(())
    })?;
    Ok(match updated {
        Some(ns) => json_response(StatusCode::OK, &to_json(ns.as_ref())),
        None => {
            let mut s = success_status::<Namespace>(name);
            s["details"]["uid"] = json!(cur.metadata.uid);
            json_response(StatusCode::OK, &s)
        }
    })
}

/// Status is written only by the simulated controllers.
pub async fn status_write_refused() -> Response {
    Status::method_not_allowed(
        "kubesim: the status subresource is written only by the simulated controllers",
    )
    .into_response()
}
