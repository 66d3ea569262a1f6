//! Deletes: DELETE of one object or of a collection (DeleteOptions: propagation policy,
//! grace period, preconditions, dry run, as each kind's [`ApiKind::delete_plan`] carries them
//! out) and the namespace registry's DELETE, which only marks a namespace `Terminating`.
//!
//! Depends on: `kinds`, `filter` and the request plumbing in `api`, plus `store` and `rbac`.
//! Nothing it depends on imports it back.

use axum::body::Bytes;
use axum::extract::{Path, Query as AxQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};

use super::filter::Filter;
use super::kinds::{list_item, to_json, ApiKind, DeleteOpts};
use super::{json_response, respond, AppState, Query};
use crate::error::Status;
use crate::store::Kind;

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
