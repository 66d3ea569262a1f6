//! meta.k8s.io/v1 Table output (what `kubectl get` asks for): the columns and cell values the
//! real server's printers produce for Jobs, Pods and Namespaces, and the PartialObjectMetadata /
//! full object attached to each row depending on `includeObject`.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use serde_json::{json, Value};

use crate::objects::job_condition;
use crate::store::Kind;
use crate::time::{human_duration, unix_now};

/// A kind with server-side printing.
pub trait Tabled: Kind {
    fn columns() -> Value;
    fn cells(&self) -> Vec<Value>;
}

pub(super) fn col(name: &str, ty: &str, format: &str, desc: &str, priority: i32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority})
}

pub(super) fn age(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match &meta.creation_timestamp {
        Some(t) => human_duration(unix_now() - t.0.as_second()),
        None => "<unknown>".into(),
    }
}

impl Tabled for Job {
    fn columns() -> Value {
        json!([
            col("Name", "string", "name", "Name must be unique within a namespace.", 0),
            col("Status", "string", "", "Status of the job.", 0),
            col("Completions", "string", "", "The desired number of successfully finished pods the job should be run with.", 0),
            col("Duration", "string", "", "Time required to complete the job.", 0),
            col("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
            col("Containers", "string", "", "Names of each container in the template.", 1),
            col("Images", "string", "", "Images referenced by each container in the template.", 1),
            col("Selector", "string", "", "A label query over pods that should match the pod count.", 1),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let succeeded = st.succeeded.unwrap_or(0);
        let completions = match (spec.completions, spec.parallelism.unwrap_or(0)) {
            (Some(c), _) => format!("{succeeded}/{c}"),
            (None, p) if p > 1 => format!("{succeeded}/1 of {p}"),
            (None, _) => format!("{succeeded}/1"),
        };
        let duration = match (&st.start_time, &st.completion_time) {
            (None, _) => String::new(),
            (Some(s), None) => human_duration(unix_now() - s.0.as_second()),
            (Some(s), Some(c)) => human_duration(c.0.as_second() - s.0.as_second()),
        };
        let status = if job_condition(self, "Complete") {
            "Complete"
        } else if job_condition(self, "Failed") {
            "Failed"
        } else if self.metadata.deletion_timestamp.is_some() {
            "Terminating"
        } else if job_condition(self, "Suspended") {
            "Suspended"
        } else if job_condition(self, "FailureTarget") {
            "FailureTarget"
        } else if job_condition(self, "SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        let containers = spec
            .template
            .spec
            .clone()
            .map(|s| s.containers)
            .unwrap_or_default();
        let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
        let images: Vec<String> = containers
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect();
        let selector = spec
            .selector
            .and_then(|s| s.match_labels)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        vec![
            json!(self.metadata.name),
            json!(status),
            json!(completions),
            json!(duration),
            json!(age(&self.metadata)),
            json!(names.join(",")),
            json!(images.join(",")),
            json!(selector),
        ]
    }
}

/// kubectl's pod STATUS column (printPod in the real server).
pub fn pod_status_reason(pod: &Pod) -> String {
    let st = pod.status.clone().unwrap_or_default();
    let mut reason = st.phase.clone().unwrap_or_else(|| "Pending".into());
    if let Some(r) = st.reason.as_ref().filter(|r| !r.is_empty()) {
        reason = r.clone();
    }
    let mut has_running = false;
    for cs in st.container_statuses.iter().flatten().rev() {
        let state = cs.state.clone().unwrap_or_default();
        if let Some(w) = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty())
        {
            reason = w;
        } else if let Some(t) = state.terminated.as_ref() {
            reason = match t.reason.clone().filter(|r| !r.is_empty()) {
                Some(r) => r,
                None if t.signal.unwrap_or(0) != 0 => format!("Signal:{}", t.signal.unwrap_or(0)),
                None => format!("ExitCode:{}", t.exit_code),
            };
        } else if state.running.is_some() && cs.ready {
            has_running = true;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    let terminal = matches!(st.phase.as_deref(), Some("Succeeded") | Some("Failed"));
    if pod.metadata.deletion_timestamp.is_some() && !terminal {
        reason = "Terminating".into();
    }
    reason
}

impl Tabled for Pod {
    fn columns() -> Value {
        json!([
            col("Name", "string", "name", "Name must be unique within a namespace.", 0),
            col("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            col("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            col("Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
            col("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
            col("IP", "string", "", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
            col("Node", "string", "", "NodeName is a request to schedule this pod onto a specific node.", 1),
            col("Nominated Node", "string", "", "nominatedNodeName is set when this pod preempts other pods on the node.", 1),
            col("Readiness Gates", "string", "", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        let total = self.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
        let ready = st
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .count();
        let restarts: i32 = st
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        let last_restart = st
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| {
                c.last_state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .clone()
            })
            .map(|t| t.0.as_second())
            .max();
        let restarts = match last_restart {
            Some(t) if restarts > 0 => {
                format!("{restarts} ({} ago)", human_duration(unix_now() - t))
            }
            _ => restarts.to_string(),
        };
        let node = self
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "<none>".into());
        vec![
            json!(self.metadata.name),
            json!(format!("{ready}/{total}")),
            json!(pod_status_reason(self)),
            json!(restarts),
            json!(age(&self.metadata)),
            json!(st.pod_ip.clone().unwrap_or_else(|| "<none>".into())),
            json!(node),
            json!("<none>"),
            json!("<none>"),
        ]
    }
}

impl Tabled for Namespace {
    fn columns() -> Value {
        json!([
            col("Name", "string", "name", "Name must be unique within a namespace.", 0),
            col("Status", "string", "", "The status of the namespace", 0),
            col("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Active".into());
        vec![
            json!(self.metadata.name),
            json!(phase),
            json!(age(&self.metadata)),
        ]
    }
}

/// The Workload CRD's additionalPrinterColumns, as Kueue's troubleshooting guide shows them
/// (`NAME QUEUE RESERVED IN ADMITTED AGE`).
impl Tabled for crate::kueue::Workload {
    fn columns() -> Value {
        json!([
            col(
                "Name",
                "string",
                "name",
                "Name must be unique within a namespace.",
                0
            ),
            col(
                "Queue",
                "string",
                "",
                "Name of the queue this workload was submitted to",
                0
            ),
            col(
                "Reserved in",
                "string",
                "",
                "Name of the ClusterQueue where the workload is reserving quota",
                0
            ),
            col("Admitted", "string", "", "Admission status", 0),
            col("Age", "date", "", "Time this workload was created", 0),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let admitted = self
            .condition("Admitted")
            .and_then(|c| c.get("status"))
            .cloned()
            .unwrap_or(Value::Null);
        vec![
            json!(self.metadata.name),
            self.spec.get("queueName").cloned().unwrap_or(Value::Null),
            self.status
                .as_ref()
                .and_then(|s| s.pointer("/admission/clusterQueue"))
                .cloned()
                .unwrap_or(Value::Null),
            admitted,
            json!(age(&self.metadata)),
        ]
    }
}

/// `eventColumnDefinitions` / `printEvent` in kubernetes/kubernetes
/// pkg/printers/internalversion/printers.go (what `kubectl get events` shows).
impl Tabled for Event {
    fn columns() -> Value {
        json!([
            col("Last Seen", "string", "", "The time at which the most recent occurrence of this event was recorded.", 0),
            col("Type", "string", "", "Type of this event (Normal, Warning), new types could be added in the future", 0),
            col("Reason", "string", "", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.", 0),
            col("Object", "string", "", "The object that this event is about.", 0),
            col("Subobject", "string", "", "The part of the object this event is about.", 1),
            col("Source", "string", "", "The component reporting this event.", 1),
            col("Message", "string", "", "A human-readable description of the status of this operation.", 0),
            col("First Seen", "string", "", "The time at which the event was first recorded.", 1),
            col("Count", "string", "", "The number of times this event has occurred.", 1),
            col("Name", "string", "name", "Name must be unique within a namespace.", 1),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let since = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| match t {
            Some(t) => human_duration(unix_now() - t.0.as_second()),
            None => "<unknown>".into(),
        };
        let count = self.count.unwrap_or(1);
        let last_seen = if count > 1 {
            format!(
                "{} (x{count} over {})",
                since(&self.last_timestamp),
                since(&self.first_timestamp)
            )
        } else {
            since(&self.last_timestamp)
        };
        let o = &self.involved_object;
        let source = self.source.clone().unwrap_or_default();
        let source = match (source.component, source.host) {
            (Some(c), Some(h)) => format!("{c}, {h}"),
            (Some(c), None) => c,
            _ => String::new(),
        };
        vec![
            json!(last_seen),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.reason.clone().unwrap_or_default()),
            json!(format!(
                "{}/{}",
                o.kind.clone().unwrap_or_default().to_lowercase(),
                o.name.clone().unwrap_or_default()
            )),
            json!(o.field_path.clone().unwrap_or_default()),
            json!(source),
            json!(self.message.clone().unwrap_or_default()),
            json!(since(&self.first_timestamp)),
            json!(count.to_string()),
            json!(self.metadata.name),
        ]
    }
}

/// What each row carries, from the `includeObject` query parameter (default Metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

pub fn row<K: Tabled>(obj: &K, include: IncludeObject) -> Value {
    let mut r = json!({ "cells": obj.cells() });
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.metadata(),
            });
        }
        IncludeObject::Object => {
            r["object"] = serde_json::to_value(obj).unwrap_or_default();
        }
    }
    r
}

pub fn table<K: Tabled>(
    objs: &[&K],
    rv: u64,
    cont: Option<String>,
    include: IncludeObject,
) -> Value {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": K::columns(),
        "rows": objs.iter().map(|o| row(*o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(v: Value) -> Job {
        serde_json::from_value(v).unwrap()
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn job_status_and_completions_columns_follow_kubectl() {
        let cond = |t: &str| json!({"status": {"conditions": [{"type": t, "status": "True"}]}, "spec": {"completions": 2, "template": {}}});
        assert_eq!(job(cond("Complete")).cells()[1], "Complete");
        assert_eq!(job(cond("Failed")).cells()[1], "Failed");
        assert_eq!(job(cond("Suspended")).cells()[1], "Suspended");
        assert_eq!(job(cond("FailureTarget")).cells()[1], "FailureTarget");
        let mut deleting = cond("Suspended");
        deleting["metadata"] = json!({"deletionTimestamp": "2025-01-01T00:00:00Z"});
        assert_eq!(job(deleting).cells()[1], "Terminating");
        assert_eq!(job(json!({"spec": {"template": {}}})).cells()[1], "Running");
        assert_eq!(
            job(json!({"spec": {"completions": 2, "template": {}}, "status": {"succeeded": 1}}))
                .cells()[2],
            "1/2"
        );
        assert_eq!(
            job(json!({"spec": {"parallelism": 3, "template": {}}})).cells()[2],
            "0/1 of 3"
        );
        assert_eq!(
            job(json!({"spec": {"parallelism": 1, "template": {}}})).cells()[2],
            "0/1"
        );
    }

    #[test]
    fn pod_status_column_follows_kubectl() {
        let with = |phase: &str, state: Value| {
            pod(
                json!({"spec": {"containers": [{"name": "c"}]}, "status": {"phase": phase,
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}}),
            )
        };
        assert_eq!(
            pod_status_reason(&pod(json!({"status": {"phase": "Pending"}}))),
            "Pending"
        );
        assert_eq!(
            pod_status_reason(&with(
                "Pending",
                json!({"waiting": {"reason": "ContainerCreating"}})
            )),
            "ContainerCreating"
        );
        assert_eq!(
            pod_status_reason(&with(
                "Succeeded",
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
            )),
            "Completed"
        );
        assert_eq!(
            pod_status_reason(&with(
                "Failed",
                json!({"terminated": {"exitCode": 1, "reason": "Error"}})
            )),
            "Error"
        );
        assert_eq!(
            pod_status_reason(&with(
                "Failed",
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
            )),
            "OOMKilled"
        );
        let mut running = with("Running", json!({"running": {}}));
        assert_eq!(pod_status_reason(&running), "Running");
        running.metadata.deletion_timestamp = Some(crate::time::now_time());
        assert_eq!(pod_status_reason(&running), "Terminating");
        let evicted = pod(json!({"status": {"phase": "Failed", "reason": "Evicted"}}));
        assert_eq!(pod_status_reason(&evicted), "Evicted");
    }
}
