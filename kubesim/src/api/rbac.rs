//! RBAC mode over HTTP: the middleware that authenticates and authorizes every request (401 for
//! an unknown token, 403 Forbidden with the real message), `SelfSubjectAccessReview`
//! (authorization.k8s.io/v1, answered by the same authorizer), and the
//! rbac.authorization.k8s.io/v1 objects (create, get, list, replace, delete; no watch). The
//! policy itself is [`crate::rbac`]. Without RBAC mode every request is allowed, as with
//! `--authorization-mode=AlwaysAllow`, and reviews answer `allowed: true`.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::{decode_json, json_response, AppState};
use crate::error::Status;
use crate::rbac::{Attributes, Policy, UserInfo};
use crate::time::now_time;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Authenticates the bearer token and authorizes the request's attributes; the caller's
/// identity goes into the request's extensions for the review handlers.
pub async fn authorize_layer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(rbac) = state.rbac.clone() else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let user = match rbac.authenticate(header) {
        Ok(user) => user,
        Err(_) => return Status::new(401, "Unauthorized", "Unauthorized").into_response(),
    };
    let attrs =
        Attributes::from_request(req.method().as_str(), req.uri().path(), req.uri().query());
    if !rbac.allows(&user, &attrs) {
        tracing::debug!(user = %user.name, ?attrs, "forbidden");
        return attrs.forbidden(&user).into_response();
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews
pub async fn self_subject_access_review(
    State(state): State<AppState>,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut review: Value = match decode_json(&headers, &body, "SelfSubjectAccessReview") {
        Ok(v) => v,
        Err(s) => return s.into_response(),
    };
    let spec = review.get("spec").cloned().unwrap_or(Value::Null);
    let s = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let attrs = if spec.get("resourceAttributes").is_some() {
        Attributes {
            verb: s("/resourceAttributes/verb"),
            resource_request: true,
            path: String::new(),
            api_group: s("/resourceAttributes/group"),
            namespace: s("/resourceAttributes/namespace"),
            resource: s("/resourceAttributes/resource"),
            subresource: s("/resourceAttributes/subresource"),
            name: s("/resourceAttributes/name"),
        }
    } else if spec.get("nonResourceAttributes").is_some() {
        Attributes {
            verb: s("/nonResourceAttributes/verb"),
            path: s("/nonResourceAttributes/path"),
            ..Default::default()
        }
    } else {
        return Status::invalid(
            "SelfSubjectAccessReview",
            "authorization.k8s.io",
            "",
            vec![crate::error::Cause::required("spec.resourceAttributes")],
        )
        .into_response();
    };
    let allowed = match (&state.rbac, user) {
        (Some(rbac), Some(Extension(user))) => rbac.allows(&user, &attrs),
        (Some(_), None) => false,
        (None, _) => true,
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    review["metadata"] = json!({"creationTimestamp": null});
    review["status"] = json!({ "allowed": allowed });
    json_response(StatusCode::CREATED, &review)
}

/// The four RBAC kinds by plural.
fn kind_of(plural: &str) -> Option<(&'static str, bool)> {
    match plural {
        "roles" => Some(("Role", true)),
        "rolebindings" => Some(("RoleBinding", true)),
        "clusterroles" => Some(("ClusterRole", false)),
        "clusterrolebindings" => Some(("ClusterRoleBinding", false)),
        _ => None,
    }
}

fn not_found() -> Status {
    Status::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn to_value<T: serde::Serialize>(kind: &str, obj: &T) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(format!("{GROUP}/v1"));
    v
}

/// Every object of `plural` in `ns` (all when None), as JSON.
fn list_of(p: &Policy, plural: &str, ns: Option<&str>) -> Vec<Value> {
    let in_ns = |o: &str| ns.is_none_or(|n| n == o);
    match plural {
        "roles" => p
            .roles
            .iter()
            .filter(|((n, _), _)| in_ns(n))
            .map(|(_, o)| to_value("Role", o))
            .collect(),
        "rolebindings" => p
            .role_bindings
            .iter()
            .filter(|((n, _), _)| in_ns(n))
            .map(|(_, o)| to_value("RoleBinding", o))
            .collect(),
        "clusterroles" => p
            .cluster_roles
            .values()
            .map(|o| to_value("ClusterRole", o))
            .collect(),
        _ => p
            .cluster_role_bindings
            .values()
            .map(|o| to_value("ClusterRoleBinding", o))
            .collect(),
    }
}

fn find(p: &Policy, plural: &str, ns: &str, name: &str) -> Option<Value> {
    list_of(p, plural, (!ns.is_empty()).then_some(ns))
        .into_iter()
        .find(|v| v.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
}

fn remove(p: &mut Policy, plural: &str, ns: &str, name: &str) {
    let key = (ns.to_string(), name.to_string());
    match plural {
        "roles" => {
            p.roles.remove(&key);
        }
        "rolebindings" => {
            p.role_bindings.remove(&key);
        }
        "clusterroles" => {
            p.cluster_roles.remove(name);
        }
        _ => {
            p.cluster_role_bindings.remove(name);
        }
    }
}

fn policy_of(state: &AppState) -> Result<&crate::rbac::Rbac, Status> {
    state.rbac.as_deref().ok_or_else(|| {
        Status::new(
            404,
            "NotFound",
            "kubesim serves rbac.authorization.k8s.io only in RBAC mode",
        )
    })
}

fn write(
    state: &AppState,
    plural: &str,
    ns: &str,
    name: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Status> {
    let (kind, namespaced) = kind_of(plural).ok_or_else(not_found)?;
    if namespaced == ns.is_empty() {
        return Err(not_found());
    }
    let rbac = policy_of(state)?;
    let mut doc: Value = decode_json(headers, body, kind)?;
    let obj_name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if obj_name.is_empty() {
        return Err(Status::invalid(
            kind,
            GROUP,
            "",
            vec![crate::error::Cause::required("metadata.name")],
        ));
    }
    if name.is_some_and(|n| n != obj_name) {
        return Err(Status::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let gr = format!("{plural}.{GROUP}");
    let mut policy = rbac.policy.write().unwrap_or_else(|e| e.into_inner());
    let existing = find(&policy, plural, ns, &obj_name);
    match (name, &existing) {
        (None, Some(_)) => return Err(Status::already_exists(&gr, &obj_name)),
        (Some(_), None) => return Err(Status::not_found(&gr, &obj_name)),
        _ => {}
    }
    doc["kind"] = json!(kind);
    doc["apiVersion"] = json!(format!("{GROUP}/v1"));
    let meta = &mut doc["metadata"];
    if namespaced {
        meta["namespace"] = json!(ns);
    }
    meta["uid"] = existing
        .as_ref()
        .and_then(|e| e.pointer("/metadata/uid").cloned())
        .unwrap_or_else(|| json!(uuid::Uuid::new_v4().to_string()));
    meta["creationTimestamp"] = existing
        .as_ref()
        .and_then(|e| e.pointer("/metadata/creationTimestamp").cloned())
        .unwrap_or_else(|| json!(now_time()));
    meta["resourceVersion"] = json!(state.store.current_rv().to_string());
    policy.insert(doc).map_err(|e| {
        Status::bad_request(format!("{kind} in version \"v1\" cannot be handled: {e}"))
    })?;
    let out = find(&policy, plural, ns, &obj_name).unwrap_or(Value::Null);
    let code = if name.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(code, &out))
}

fn read(state: &AppState, plural: &str, ns: &str, name: Option<&str>) -> Result<Response, Status> {
    let (kind, namespaced) = kind_of(plural).ok_or_else(not_found)?;
    let rbac = policy_of(state)?;
    let policy = rbac.policy.read().unwrap_or_else(|e| e.into_inner());
    match name {
        Some(name) => {
            if namespaced == ns.is_empty() {
                return Err(not_found());
            }
            let obj = find(&policy, plural, ns, name)
                .ok_or_else(|| Status::not_found(&format!("{plural}.{GROUP}"), name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        None => {
            let mut items = list_of(&policy, plural, (!ns.is_empty()).then_some(ns));
            for item in &mut items {
                if let Some(m) = item.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{kind}List"),
                    "apiVersion": format!("{GROUP}/v1"),
                    "metadata": {"resourceVersion": state.store.current_rv().to_string()},
                    "items": items,
                }),
            ))
        }
    }
}

fn delete(state: &AppState, plural: &str, ns: &str, name: &str) -> Result<Response, Status> {
    let (_, namespaced) = kind_of(plural).ok_or_else(not_found)?;
    if namespaced == ns.is_empty() {
        return Err(not_found());
    }
    let rbac = policy_of(state)?;
    let mut policy = rbac.policy.write().unwrap_or_else(|e| e.into_inner());
    if find(&policy, plural, ns, name).is_none() {
        return Err(Status::not_found(&format!("{plural}.{GROUP}"), name));
    }
    remove(&mut policy, plural, ns, name);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": GROUP, "kind": plural},
        }),
    ))
}

fn respond(r: Result<Response, Status>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

pub async fn ns_collection_get(
    State(s): State<AppState>,
    Path((ns, plural)): Path<(String, String)>,
) -> Response {
    respond(read(&s, &plural, &ns, None))
}

pub async fn ns_collection_post(
    State(s): State<AppState>,
    Path((ns, plural)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(write(&s, &plural, &ns, None, &headers, &body))
}

pub async fn ns_item_get(
    State(s): State<AppState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    respond(read(&s, &plural, &ns, Some(&name)))
}

pub async fn ns_item_put(
    State(s): State<AppState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(write(&s, &plural, &ns, Some(&name), &headers, &body))
}

pub async fn ns_item_delete(
    State(s): State<AppState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    respond(delete(&s, &plural, &ns, &name))
}

pub async fn collection_get(State(s): State<AppState>, Path(plural): Path<String>) -> Response {
    respond(read(&s, &plural, "", None))
}

pub async fn collection_post(
    State(s): State<AppState>,
    Path(plural): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(write(&s, &plural, "", None, &headers, &body))
}

pub async fn item_get(
    State(s): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
) -> Response {
    respond(read(&s, &plural, "", Some(&name)))
}

pub async fn item_put(
    State(s): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(write(&s, &plural, "", Some(&name), &headers, &body))
}

pub async fn item_delete(
    State(s): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
) -> Response {
    respond(delete(&s, &plural, "", &name))
}
