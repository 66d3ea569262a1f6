//! core/v1 Events as the cluster's components record them: the Job controller
//! (`SuccessfulCreate`, `FailedCreate`, `Completed`, `BackoffLimitExceeded`, ...), the scheduler
//! (`Scheduled`, `FailedScheduling`) and the kubelet (`Pulling`, `Failed`, `BackOff`,
//! `Started`, ...). Like client-go's EventRecorder with its correlator
//! (staging/src/k8s.io/client-go/tools/record/events_cache.go), the same reason and message on
//! the same object again bumps `count` and `lastTimestamp` of one Event instead of adding
//! another. Events are written to the store and so served, listed and watched like any kind
//! (https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/).
//!
//! The correlator remembers the last 4,096 Events it wrote in an LRU cache keyed by source,
//! object, type, reason and message, as client-go's does (`maxLruCacheEntries` in
//! events_cache.go), so recording costs the same however many Events a namespace holds; an
//! Event the cache forgot, or one deleted meanwhile, is written anew (client-go creates a new
//! Event when the patch of the old one fails).
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

/// client-go's `maxLruCacheEntries`.
const CORRELATOR_ENTRIES: usize = 4096;

/// What makes two Events the same: client-go's `getEventKey` (source, involved object, type,
/// reason, message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EventKey {
    component: &'static str,
    uid: String,
    warning: bool,
    reason: String,
    message: String,
}

/// The recorders' memory of the Events they wrote: key → (namespace, name).
pub(crate) struct Correlator(lru::LruCache<EventKey, (String, String)>);

impl Default for Correlator {
    fn default() -> Self {
        Correlator(lru::LruCache::new(
            std::num::NonZeroUsize::new(CORRELATOR_ENTRIES).expect("non-zero"),
        ))
    }
}

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
        let key = EventKey {
            component,
            uid: uid.clone(),
            warning,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let known = store
            .event_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(&key)
            .cloned();
        if let Some((ns, name)) = known {
            let bumped = store.update::<Event>(&ns, &name, |e| {
                e.count = Some(e.count.unwrap_or(1) + 1);
                e.last_timestamp = Some(now.clone());
                Ok(())
            });
            if bumped.is_ok() {
                return;
            }
        }
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let name = format!("{}.{nanos:x}", meta.name.as_deref().unwrap_or(""));
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::API_VERSION.to_string()),
                kind: Some(K::KIND.to_string()),
                name: meta.name.clone(),
                namespace: Some(ns.clone()),
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
        if store.create(event).is_ok() {
            store
                .event_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .put(key, (ns, name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;
    use std::sync::Arc;

    fn job(name: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn events(store: &Store) -> Vec<(String, i32)> {
        let (events, _) = store.list::<Event>(Some("default"));
        events
            .iter()
            .map(|e| (e.reason.clone().unwrap_or_default(), e.count.unwrap_or(1)))
            .collect()
    }

    #[test]
    fn the_same_event_again_bumps_the_count_of_one_event() {
        let store = Store::new(100);
        let recorder = Recorder::default();
        for _ in 0..3 {
            recorder.record(
                &store,
                &job("a"),
                false,
                "Completed",
                "done",
                JOB_CONTROLLER,
            );
        }
        recorder.record(&store, &job("a"), true, "Failed", "boom", JOB_CONTROLLER);
        let mut seen = events(&store);
        seen.sort();
        assert_eq!(
            seen,
            [("Completed".to_string(), 3), ("Failed".to_string(), 1)]
        );
    }

    fn of(store: &Store, name: &str) -> Vec<Arc<Event>> {
        let (all, _) = store.list::<Event>(Some("default"));
        all.into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .collect()
    }

    #[test]
    fn an_event_the_correlator_forgot_is_written_anew() {
        let store = Store::new(100);
        let recorder = Recorder::default();
        recorder.record(&store, &job("first"), false, "Started", "x", KUBELET);
        // Push it out of the LRU cache with as many other Events.
        for i in 0..CORRELATOR_ENTRIES {
            recorder.record(
                &store,
                &job(&format!("j{i}")),
                false,
                "Started",
                "x",
                KUBELET,
            );
        }
        recorder.record(&store, &job("first"), false, "Started", "x", KUBELET);
        let counts: Vec<_> = of(&store, "first").iter().map(|e| e.count).collect();
        assert_eq!(counts, [Some(1), Some(1)]);
    }

    #[test]
    fn a_remembered_event_that_was_deleted_is_written_anew() {
        let store = Store::new(100);
        let recorder = Recorder::default();
        recorder.record(&store, &job("a"), false, "Started", "x", KUBELET);
        let old = of(&store, "a")[0].metadata.name.clone().unwrap();
        store
            .delete::<Event>("default", &old, 0, &[], None)
            .unwrap();
        recorder.record(&store, &job("a"), false, "Started", "x", KUBELET);
        let now = of(&store, "a");
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].metadata.name.as_deref(), Some(old.as_str()));
        assert_eq!(now[0].count, Some(1));
    }
}
