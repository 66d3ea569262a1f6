//! Per-kind API behaviour: the [`ApiKind`] trait and its implementations for Jobs, Pods,
//! Namespaces and core/v1 Events (decoding, defaulting and validation on create and update,
//! admission, how a delete is carried out), DeleteOptions, and the object's JSON as the server
//! returns it.
//!
//! Depends on: `tables`, `protobuf` and the request plumbing in `api`, plus `validation`,
//! `objects`, `store` and the GC finalizer names; never on the handlers (`resources`, `list`,
//! `watch`, `delete`).

use axum::body::Bytes;
use axum::http::HeaderMap;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use serde_json::Value;

use super::tables::Tabled;
use super::{content_type, decode_json, AppState, Query};
use crate::controller::gc::{FOREGROUND, ORPHAN};
use crate::error::{Cause, Status};
use crate::objects::pod_delete_grace;
use crate::store::Kind;
use crate::validation;

/// How a delete request is carried out for a kind.
pub struct DeletePlan {
    pub grace: i64,
    pub finalizers: Vec<&'static str>,
    pub warning: Option<&'static str>,
}

impl DeletePlan {
    /// Deleted at once: no grace period, no finalizers.
    const IMMEDIATE: DeletePlan = DeletePlan {
        grace: 0,
        finalizers: Vec::new(),
        warning: None,
    };
}

/// Per-kind API behaviour.
pub trait ApiKind: Tabled {
    const LIST_KIND: &'static str;
    /// Defaulting and validation before the first write; `uid` is the uid it will get.
    fn prepare_create(obj: &mut Self, uid: &str) -> Result<(), Status>;
    /// Checks and adjusts an update of `old` into `new` (status stays the controller's).
    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status>;
    fn decode_create(headers: &HeaderMap, body: &Bytes) -> Result<Self, Status> {
        decode_json(headers, body, Self::KIND)
    }
    fn delete_plan(obj: &Self, opts: &DeleteOpts) -> DeletePlan;
    /// Mutating admission (webhooks) on create, after defaulting and validation: only Kueue's
    /// job webhook here, when the Kueue switch is on.
    fn mutate(_obj: &mut Self, _state: &AppState) {}
    /// Admission plugins, after validation (only pods have any here).
    fn admit(_obj: &Self, _state: &AppState) -> Result<(), Status> {
        Ok(())
    }
    /// Whole-object responses for immediate deletes (pods return the object, others a Status).
    const RETURN_DELETED_OBJECT: bool = false;
}

/// DeleteOptions from the query string and/or the body.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub grace: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOpts {
    pub(super) fn parse(q: &Query, body: &Bytes) -> Result<DeleteOpts, Status> {
        let mut o = DeleteOpts {
            propagation: q.get("propagationPolicy").cloned(),
            grace: q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
            dry_run: q.contains_key("dryRun"),
            ..Default::default()
        };
        if let Some(orphan) = q.get("orphanDependents") {
            o.propagation = Some(
                if orphan == "true" {
                    "Orphan"
                } else {
                    "Background"
                }
                .into(),
            );
        }
        if !body.is_empty() {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| Status::bad_request(format!("decoding DeleteOptions: {e}")))?;
            if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                o.propagation = Some(p.into());
            }
            if let Some(od) = v.get("orphanDependents").and_then(Value::as_bool) {
                o.propagation = Some(if od { "Orphan" } else { "Background" }.into());
            }
            if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                o.grace = Some(g);
            }
            if let Some(uid) = v.pointer("/preconditions/uid").and_then(Value::as_str) {
                o.precondition_uid = Some(uid.into());
            }
            if let Some(rv) = v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
            {
                o.precondition_rv = Some(rv.into());
            }
            if v.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                o.dry_run = true;
            }
        }
        if let Some(p) = &o.propagation {
            if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
                return Err(Status::invalid(
                    "DeleteOptions",
                    "",
                    "",
                    vec![Cause::not_supported(
                        "propagationPolicy",
                        p,
                        &["Foreground", "Background", "Orphan", "nil"],
                    )],
                ));
            }
        }
        Ok(o)
    }
}

pub(super) fn gc_finalizers(opts: &DeleteOpts, default: &str) -> Vec<&'static str> {
    match opts.propagation.as_deref().unwrap_or(default) {
        "Foreground" => vec![FOREGROUND],
        "Orphan" => vec![ORPHAN],
        _ => vec![],
    }
}

/// A create body in protobuf (what `kubectl create` sends) or in JSON.
pub(super) fn protobuf_or_json<K: ApiKind>(
    headers: &HeaderMap,
    body: &Bytes,
    protobuf: fn(&[u8]) -> Result<K, Status>,
) -> Result<K, Status> {
    if content_type(headers).starts_with("application/vnd.kubernetes.protobuf") {
        return protobuf(body);
    }
    decode_json(headers, body, K::KIND)
}

impl ApiKind for Job {
    const LIST_KIND: &'static str = "JobList";

    fn prepare_create(obj: &mut Self, uid: &str) -> Result<(), Status> {
        validation::default_job(obj, uid);
        validation::validate_job(obj)
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        new.status = old.status.clone();
        // Fields the server owns or defaults: keep them when a client omits them.
        let (os, ns) = (
            old.spec.clone().unwrap_or_default(),
            new.spec.get_or_insert_with(Default::default),
        );
        if ns.selector.is_none() {
            ns.selector = os.selector.clone();
        }
        if ns.completion_mode.is_none() {
            ns.completion_mode = os.completion_mode.clone();
        }
        if ns.backoff_limit.is_none() {
            ns.backoff_limit = os.backoff_limit;
        }
        if ns.suspend.is_none() {
            ns.suspend = Some(false);
        }
        if ns.pod_replacement_policy.is_none() {
            ns.pod_replacement_policy = os.pod_replacement_policy.clone();
        }
        if let Some(ps) = ns.template.spec.as_mut() {
            validation::default_pod_spec(ps);
        }
        validation::validate_job_update(old, new)?;
        if serde_json::to_value(&old.spec).ok() != serde_json::to_value(&new.spec).ok() {
            new.metadata.generation = Some(old.metadata.generation.unwrap_or(1) + 1);
        } else {
            new.metadata.generation = old.metadata.generation;
        }
        Ok(())
    }

    fn decode_create(headers: &HeaderMap, body: &Bytes) -> Result<Self, Status> {
        protobuf_or_json(headers, body, super::protobuf::decode_job)
    }

    fn mutate(obj: &mut Self, state: &AppState) {
        if state.behaviour.kueue.is_some() {
            crate::kueue::default_job(obj);
        }
    }

    fn delete_plan(_obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        DeletePlan {
            grace: 0,
            finalizers: gc_finalizers(opts, "Orphan"),
            warning: opts.propagation.is_none().then_some(
                "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning",
            ),
        }
    }
}

impl ApiKind for Pod {
    const LIST_KIND: &'static str = "PodList";
    const RETURN_DELETED_OBJECT: bool = true;

    fn decode_create(headers: &HeaderMap, body: &Bytes) -> Result<Self, Status> {
        protobuf_or_json(headers, body, super::protobuf::decode_pod)
    }

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        validation::default_pod(obj);
        validation::validate_pod(obj)
    }

    fn admit(obj: &Self, state: &AppState) -> Result<(), Status> {
        state.behaviour.admission.admit_in(&state.store, obj)
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        new.status = old.status.clone();
        // Pod spec is immutable apart from a few fields the simulator does not model.
        if let Some(ps) = new.spec.as_mut() {
            validation::default_pod_spec(ps);
        }
        if serde_json::to_value(&old.spec).ok() != serde_json::to_value(&new.spec).ok() {
            return Err(Status::invalid(
                "Pod",
                "",
                old.metadata.name.as_deref().unwrap_or(""),
                vec![Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")],
            ));
        }
        Ok(())
    }

    fn delete_plan(obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        DeletePlan {
            grace: pod_delete_grace(obj, opts.grace),
            finalizers: gc_finalizers(opts, "Background")
                .into_iter()
                .filter(|f| *f != FOREGROUND)
                .collect(),
            warning: None,
        }
    }
}

impl ApiKind for Namespace {
    const LIST_KIND: &'static str = "NamespaceList";

    fn decode_create(headers: &HeaderMap, body: &Bytes) -> Result<Self, Status> {
        protobuf_or_json(headers, body, super::protobuf::decode_namespace)
    }

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        validation::default_namespace(obj);
        validation::validate_namespace(obj)
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        new.status = old.status.clone();
        new.spec = old.spec.clone();
        Ok(())
    }

    fn delete_plan(_obj: &Self, _opts: &DeleteOpts) -> DeletePlan {
        DeletePlan::IMMEDIATE
    }
}

/// core/v1 Events: written by clients (and by the simulated components); the real server checks
/// that the Event's namespace is its involved object's (pkg/apis/core/validation/events.go).
impl ApiKind for Event {
    const LIST_KIND: &'static str = "EventList";

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let involved = obj.involved_object.namespace.clone().unwrap_or_default();
        if !involved.is_empty() && involved != ns {
            return Err(Status::invalid(
                "Event",
                "",
                obj.metadata.name.as_deref().unwrap_or(""),
                vec![Cause::invalid(
                    "involvedObject.namespace",
                    &format!("\"{involved}\""),
                    "does not match event.namespace",
                )],
            ));
        }
        Ok(())
    }

    fn prepare_update(_old: &Self, _new: &mut Self) -> Result<(), Status> {
        Ok(())
    }

    fn delete_plan(_obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        DeletePlan {
            grace: 0,
            finalizers: gc_finalizers(opts, "Background"),
            warning: None,
        }
    }
}

/// Kueue's Workload CRD: the status subresource is Kueue's (kept on main-resource writes), and
/// the CRD's schema requires `spec.podSets`.
impl ApiKind for crate::kueue::Workload {
    const LIST_KIND: &'static str = "WorkloadList";

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        obj.status = None;
        if obj
            .spec
            .get("podSets")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(Status::invalid(
                "Workload",
                crate::kueue::GROUP,
                obj.metadata.name.as_deref().unwrap_or(""),
                vec![Cause::required("spec.podSets")],
            ));
        }
        Ok(())
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        new.status = old.status.clone();
        Ok(())
    }

    /// A custom resource's default propagation is Background; Foreground and Orphan are
    /// honoured by the garbage collector as for any kind.
    fn delete_plan(_obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        DeletePlan {
            grace: 0,
            finalizers: gc_finalizers(opts, "Background"),
            warning: None,
        }
    }
}

/// The object as JSON, as the server returns it.
pub fn to_json<K: Kind>(obj: &K) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// List items omit kind/apiVersion, like the real server's typed lists.
pub(super) fn list_item<K: Kind>(obj: &K) -> Value {
    let mut v = to_json(obj);
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}
