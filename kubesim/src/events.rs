//! core/v1 Events as the cluster's components record them: the Job controller
//! (`SuccessfulCreate`, `FailedCreate`, `Completed`, `BackoffLimitExceeded`, ...), the scheduler
//! (`Scheduled`, `FailedScheduling`) and the kubelet (`Pulling`, `Failed`, `BackOff`,
//! `Started`, ...). Like client-go's EventRecorder with its correlator
//! (staging/src/k8s.io/client-go/tools/record/events_cache.go), the same reason and message on
//! the same object again bumps `count` and `lastTimestamp` of one Event instead of adding
//! another. Events are written to the store and so served, listed and watched like any kind
//! (https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/).
//!
//! Switchable: [`Recorder::disabled`] records nothing (a cluster whose components do not report).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::store::{Kind, Store};
use crate::time::now_time;

/// Who reports: the `source` the real components use (the kubelet names its node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub component: &'static str,
    pub host: Option<&'static str>,
}

pub const JOB_CONTROLLER: Source = Source {
    component: "job-controller",
    host: None,
};
pub const SCHEDULER: Source = Source {
    component: "default-scheduler",
    host: None,
};
pub const KUBELET: Source = Source {
    component: "kubelet",
    host: Some(crate::scheduling::NODE_NAME),
};

#[derive(Debug, Clone, Copy)]
pub struct Recorder {
    enabled: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { enabled: true }
    }
}

impl Recorder {
    pub fn new(enabled: bool) -> Recorder {
        Recorder { enabled }
    }

    pub fn disabled() -> Recorder {
        Recorder { enabled: false }
    }

    /// Records `reason`/`message` about `obj` (type `Normal` or `Warning`) from `source`. Never fails the caller: an Event is best effort, as in
    /// Kubernetes.
    pub fn record<K: Kind>(
        &self,
        store: &Store,
        obj: &K,
        warning: bool,
        reason: &str,
        message: &str,
        source: Source,
    ) {
        let Source { component, host } = source;
        if !self.enabled {
            return;
        }
        let meta = obj.metadata();
        let ns = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let uid = meta.uid.clone().unwrap_or_default();
        let now = now_time();
        let (existing, _) = store.list::<Event>(Some(&ns));
        let same = existing.iter().find(|e| {
            e.involved_object.uid.as_deref() == Some(uid.as_str())
                && e.reason.as_deref() == Some(reason)
                && e.message.as_deref() == Some(message)
                && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some(component)
        });
        if let Some(e) = same {
            let name = e.metadata.name.clone().unwrap_or_default();
            let _ = store.update::<Event>(&ns, &name, |e| {
                e.count = Some(e.count.unwrap_or(1) + 1);
                e.last_timestamp = Some(now.clone());
                Ok(())
            });
            return;
        }
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{nanos:x}", meta.name.as_deref().unwrap_or(""))),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::API_VERSION.to_string()),
                kind: Some(K::KIND.to_string()),
                name: meta.name.clone(),
                namespace: Some(ns),
                uid: Some(uid),
                resource_version: meta.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now.clone()),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(component.to_string()),
                host: host.map(str::to_string),
            }),
            reporting_component: Some(component.to_string()),
            reporting_instance: Some(host.unwrap_or(component).to_string()),
            ..Default::default()
        };
        let _ = store.create(event);
    }
}
