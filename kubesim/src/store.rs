//! The object store: the simulator's etcd.
//!
//! Owns every object of every kind (Jobs, Pods, Namespaces, Secrets, ConfigMaps, PVCs, ...), the single monotonic resourceVersion counter shared by all
//! kinds, each kind's bounded event history (what watches replay from) and the owner index the
//! garbage collector and Job controller use. Every write goes through [`Store`] so that each
//! change gets exactly one resourceVersion and one history event.
//!
//! It must not know about HTTP, validation or controllers: callers decide *what* to write, the
//! store only makes the write atomic, versioned and observable. It never holds its lock across an
//! `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event as CoreEvent, Namespace, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::Status;
use crate::time::now_time;

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type ObjKey = (String, String);

/// What a watch event says happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One entry of a kind's history. `prev` is the object before the change, so a watch with a
/// selector can tell "stopped matching" (sent as DELETED) from "still matches".
#[derive(Debug)]
pub struct Event<K> {
    pub rv: u64,
    pub kind: EventType,
    pub obj: Arc<K>,
    pub prev: Option<Arc<K>>,
}

impl<K> Clone for Event<K> {
    fn clone(&self) -> Self {
        Event {
            rv: self.rv,
            kind: self.kind,
            obj: self.obj.clone(),
            prev: self.prev.clone(),
        }
    }
}

/// The resourceVersion asked for is older than the retained history (etcd would say compacted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub oldest_available: u64,
}

/// All objects of one kind plus that kind's event history.
pub struct Table<K> {
    objects: BTreeMap<ObjKey, Arc<K>>,
    history: VecDeque<Event<K>>,
    /// Events with `rv <= compacted_rv` have been dropped from `history`.
    compacted_rv: u64,
    /// controller owner uid -> dependents
    by_owner: HashMap<String, BTreeSet<ObjKey>>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted_rv: 0,
            by_owner: HashMap::new(),
        }
    }
}

/// A kind the store can hold: Job, Pod, Namespace, core/v1 Event, Secret, ConfigMap,
/// PersistentVolumeClaim and Kueue's Workload.
pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Clone
    + Default
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// `jobs.batch`, `pods`, `namespaces`: how the real server names the resource in messages.
    const GROUP_RESOURCE: &'static str;
    const NAMESPACED: bool;
    fn table(inner: &mut Inner) -> &mut Table<Self>;
    fn table_ref(inner: &Inner) -> &Table<Self>;
    /// Value of a field selector key, or None when the kind does not support that field.
    fn field(&self, key: &str) -> Option<String>;
}

pub struct Inner {
    rv: u64,
    history_limit: usize,
    pub jobs: Table<Job>,
    pub pods: Table<Pod>,
    pub namespaces: Table<Namespace>,
    pub events: Table<CoreEvent>,
    pub workloads: Table<crate::kueue::Workload>,
    pub secrets: Table<Secret>,
    pub config_maps: Table<ConfigMap>,
    pub pvcs: Table<PersistentVolumeClaim>,
}

impl Inner {
    pub fn current_rv(&self) -> u64 {
        self.rv
    }
}

/// The shared store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// The event recorders' correlation cache (see [`crate::events`]).
    pub(crate) event_cache: Mutex<crate::events::Correlator>,
}

fn key_of(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn controller_uid(meta: &ObjectMeta) -> Vec<String> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.clone())
        .collect()
}

/// True when the object has been asked to go away and nothing holds it any more.
fn ready_to_remove(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
        && meta.finalizers.as_ref().is_none_or(|f| f.is_empty())
        && meta.deletion_grace_period_seconds.unwrap_or(0) == 0
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        let (changed, _) = watch::channel(0);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                history_limit: history_limit.max(1),
                jobs: Table::default(),
                pods: Table::default(),
                namespaces: Table::default(),
                events: Table::default(),
                workloads: Table::default(),
                secrets: Table::default(),
                config_maps: Table::default(),
                pvcs: Table::default(),
            }),
            changed,
            event_cache: Mutex::new(crate::events::Correlator::default()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever any object of any kind changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }

    pub fn get<K: Kind>(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let inner = self.lock();
        K::table_ref(&inner)
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects in `ns` (all namespaces when None), in key order, with the list resourceVersion.
    pub fn list<K: Kind>(&self, ns: Option<&str>) -> (Vec<Arc<K>>, u64) {
        let inner = self.lock();
        let t = K::table_ref(&inner);
        let items = match ns {
            Some(ns) => t
                .objects
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => t.objects.values().cloned().collect(),
        };
        (items, inner.rv)
    }

    /// Objects after `after` (exclusive) in key order: the continuation of a paginated list.
    pub fn list_after<K: Kind>(&self, ns: Option<&str>, after: &ObjKey) -> (Vec<Arc<K>>, u64) {
        use std::ops::Bound;
        let inner = self.lock();
        let t = K::table_ref(&inner);
        let items = t
            .objects
            .range((Bound::Excluded(after.clone()), Bound::Unbounded))
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Dependents of the owner with this uid.
    pub fn dependents<K: Kind>(&self, owner_uid: &str) -> Vec<Arc<K>> {
        let inner = self.lock();
        let t = K::table_ref(&inner);
        t.by_owner
            .get(owner_uid)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| t.objects.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn compacted_rv<K: Kind>(&self) -> u64 {
        K::table_ref(&self.lock()).compacted_rv
    }

    /// History events after `rv` plus the store's current resourceVersion (every event of this
    /// kind up to it is included), or [`Expired`] when some of them were already dropped.
    pub fn events_since<K: Kind>(&self, rv: u64) -> Result<(Vec<Event<K>>, u64), Expired> {
        let inner = self.lock();
        let t = K::table_ref(&inner);
        if rv < t.compacted_rv {
            return Err(Expired {
                oldest_available: t.compacted_rv,
            });
        }
        // history is sorted by rv: binary search for the first event after rv.
        let start = t.history.partition_point(|e| e.rv <= rv);
        Ok((t.history.range(start..).cloned().collect(), inner.rv))
    }

    /// Inserts a new object, stamping uid, resourceVersion and creationTimestamp.
    pub fn create<K: Kind>(&self, mut obj: K) -> Result<Arc<K>, Status> {
        let mut inner = self.lock();
        let key = key_of(obj.metadata());
        if K::table_ref(&inner).objects.contains_key(&key) {
            return Err(Status::already_exists(K::GROUP_RESOURCE, &key.1));
        }
        inner.rv += 1;
        let rv = inner.rv;
        let meta = obj.metadata_mut();
        if meta.uid.is_none() {
            meta.uid = Some(uuid::Uuid::new_v4().to_string());
        }
        meta.resource_version = Some(rv.to_string());
        meta.creation_timestamp = Some(now_time());
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        let obj = Arc::new(obj);
        let limit = inner.history_limit;
        let t = K::table(&mut inner);
        for uid in controller_uid(obj.metadata()) {
            t.by_owner.entry(uid).or_default().insert(key.clone());
        }
        t.objects.insert(key, obj.clone());
        push_event(t, limit, rv, EventType::Added, obj.clone(), None);
        drop(inner);
        self.notify(rv);
        Ok(obj)
    }

    /// Read-modify-write of one object under the lock. `f` may refuse with a Status. When the
    /// result has a deletionTimestamp, no finalizers and no grace left, the object is removed and
    /// a DELETED event is recorded instead of MODIFIED (this is how finalizer removal completes a
    /// deletion). Returns the stored object, or None when the write removed it. No event is
    /// recorded when `f` leaves the object unchanged.
    pub fn update<K: Kind>(
        &self,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut K) -> Result<(), Status>,
    ) -> Result<Option<Arc<K>>, Status> {
        self.update_full(ns, name, f)
            .map(|(obj, removed)| (!removed).then_some(obj))
    }

    /// Like [`Store::update`], but returns the final object even when the write removed it
    /// (the API answers a write that completes a deletion with the object), plus whether it was
    /// removed.
    pub fn update_full<K: Kind>(
        &self,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut K) -> Result<(), Status>,
    ) -> Result<(Arc<K>, bool), Status> {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(old) = K::table_ref(&inner).objects.get(&key).cloned() else {
            return Err(Status::not_found(K::GROUP_RESOURCE, name));
        };
        let mut new = (*old).clone();
        f(&mut new)?;
        // Identity fields are the store's, never the caller's.
        {
            let (om, nm) = (old.metadata(), new.metadata_mut());
            nm.uid = om.uid.clone();
            nm.creation_timestamp = om.creation_timestamp.clone();
            nm.name = om.name.clone();
            nm.namespace = om.namespace.clone();
            nm.resource_version = om.resource_version.clone();
            if om.deletion_timestamp.is_some() {
                nm.deletion_timestamp = om.deletion_timestamp.clone();
                if nm.deletion_grace_period_seconds.is_none() {
                    nm.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
                }
            }
        }
        let remove = ready_to_remove(new.metadata()) && !held_by_spec_finalizers(&new);
        if !remove && same_json(&*old, &new) {
            return Ok((old, false));
        }
        inner.rv += 1;
        let rv = inner.rv;
        new.metadata_mut().resource_version = Some(rv.to_string());
        let new = Arc::new(new);
        let limit = inner.history_limit;
        let t = K::table(&mut inner);
        for uid in controller_uid(old.metadata()) {
            if let Some(set) = t.by_owner.get_mut(&uid) {
                set.remove(&key);
                if set.is_empty() {
                    t.by_owner.remove(&uid);
                }
            }
        }
        let result = if remove {
            t.objects.remove(&key);
            push_event(t, limit, rv, EventType::Deleted, new.clone(), Some(old));
            (new, true)
        } else {
            for uid in controller_uid(new.metadata()) {
                t.by_owner.entry(uid).or_default().insert(key.clone());
            }
            t.objects.insert(key, new.clone());
            push_event(t, limit, rv, EventType::Modified, new.clone(), Some(old));
            (new, false)
        };
        drop(inner);
        self.notify(rv);
        Ok(result)
    }

    /// Starts or completes a deletion. With `grace_seconds == 0` and no finalizers the object is
    /// removed at once; otherwise it gets a deletionTimestamp (now + grace) and stays until its
    /// finalizers are gone and whoever owns the grace period (the kubelet) finishes it with
    /// grace 0. `extra_finalizers` (orphan, foregroundDeletion) are added in the same write.
    pub fn delete<K: Kind>(
        &self,
        ns: &str,
        name: &str,
        grace_seconds: i64,
        extra_finalizers: &[&str],
        precondition_uid: Option<&str>,
    ) -> Result<Option<Arc<K>>, Status> {
        self.update::<K>(ns, name, |obj| {
            let meta = obj.metadata_mut();
            if let Some(uid) = precondition_uid {
                if meta.uid.as_deref() != Some(uid) {
                    return Err(Status::conflict_precondition_uid(
                        K::GROUP_RESOURCE,
                        name,
                        uid,
                        meta.uid.as_deref().unwrap_or(""),
                    ));
                }
            }
            let fins = meta.finalizers.get_or_insert_with(Vec::new);
            for f in extra_finalizers {
                if !fins.iter().any(|x| x == f) {
                    fins.push((*f).to_string());
                }
            }
            if fins.is_empty() {
                meta.finalizers = None;
            }
            match (&meta.deletion_timestamp, meta.deletion_grace_period_seconds) {
                // Already deleting: a shorter grace period may shorten it, never lengthen.
                (Some(_), Some(g)) if grace_seconds < g => {
                    meta.deletion_grace_period_seconds = Some(grace_seconds);
                }
                (Some(_), _) => {}
                (None, _) => {
                    let now = now_time();
                    let ts = k8s_openapi::jiff::Timestamp::from_second(
                        now.0.as_second() + grace_seconds,
                    )
                    .unwrap_or(now.0);
                    meta.deletion_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts));
                    meta.deletion_grace_period_seconds = Some(grace_seconds);
                }
            }
            Ok(())
        })
    }
}

/// A Namespace is also held by `spec.finalizers` (the namespace controller's `kubernetes`
/// finalizer) until its content is gone, as the namespace registry does.
fn held_by_spec_finalizers<K: Serialize>(obj: &K) -> bool {
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| {
            v.pointer("/spec/finalizers")
                .and_then(|f| f.as_array())
                .map(|f| !f.is_empty())
        })
        .unwrap_or(false)
}

fn same_json<K: Serialize>(a: &K, b: &K) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn push_event<K>(
    t: &mut Table<K>,
    limit: usize,
    rv: u64,
    kind: EventType,
    obj: Arc<K>,
    prev: Option<Arc<K>>,
) {
    t.history.push_back(Event {
        rv,
        kind,
        obj,
        prev,
    });
    while t.history.len() > limit {
        if let Some(e) = t.history.pop_front() {
            t.compacted_rv = e.rv;
        }
    }
}

macro_rules! impl_kind {
    ($ty:ty, $field:ident, $gr:expr, $namespaced:expr, $fieldfn:expr) => {
        impl Kind for $ty {
            const GROUP_RESOURCE: &'static str = $gr;
            const NAMESPACED: bool = $namespaced;
            fn table(inner: &mut Inner) -> &mut Table<Self> {
                &mut inner.$field
            }
            fn table_ref(inner: &Inner) -> &Table<Self> {
                &inner.$field
            }
            fn field(&self, key: &str) -> Option<String> {
                let f: fn(&Self, &str) -> Option<String> = $fieldfn;
                match key {
                    "metadata.name" => Some(self.metadata().name.clone().unwrap_or_default()),
                    "metadata.namespace" => {
                        Some(self.metadata().namespace.clone().unwrap_or_default())
                    }
                    other => f(self, other),
                }
            }
        }
    };
}

impl_kind!(Job, jobs, "jobs.batch", true, |j: &Job, k| match k {
    "status.successful" => Some(
        j.status
            .as_ref()
            .and_then(|s| s.succeeded)
            .unwrap_or(0)
            .to_string()
    ),
    _ => None,
});
impl_kind!(Pod, pods, "pods", true, |p: &Pod, k| match k {
    "status.phase" => Some(
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    ),
    "spec.nodeName" => Some(
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    ),
    "spec.restartPolicy" => Some(
        p.spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_default()
    ),
    "spec.schedulerName" => Some(
        p.spec
            .as_ref()
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_default()
    ),
    "spec.serviceAccountName" => Some(
        p.spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()
    ),
    "status.podIP" => Some(
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    ),
    "status.nominatedNodeName" => Some(String::new()),
    _ => None,
});
impl_kind!(
    Namespace,
    namespaces,
    "namespaces",
    false,
    |n: &Namespace, k| match k {
        "status.phase" => Some(
            n.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default()
        ),
        _ => None,
    }
);

// The field selectors the real server registers for core/v1 Events (pkg/registry/core/event/
// strategy.go `ToSelectableFields`): kubectl describe uses involvedObject.{kind,name,namespace,uid}.
impl_kind!(CoreEvent, events, "events", true, |e: &CoreEvent, k| {
    let o = &e.involved_object;
    let source = e.source.as_ref();
    Some(
        match k {
            "involvedObject.kind" => o.kind.clone(),
            "involvedObject.namespace" => o.namespace.clone(),
            "involvedObject.name" => o.name.clone(),
            "involvedObject.uid" => o.uid.clone(),
            "involvedObject.apiVersion" => o.api_version.clone(),
            "involvedObject.resourceVersion" => o.resource_version.clone(),
            "involvedObject.fieldPath" => o.field_path.clone(),
            "reason" => e.reason.clone(),
            "reportingComponent" => e.reporting_component.clone(),
            "source" => source.and_then(|s| s.component.clone()),
            "type" => e.type_.clone(),
            _ => return None,
        }
        .unwrap_or_default(),
    )
});

// Kueue's Workloads (only written when the Kueue switch is on); no field selectors beyond
// metadata, as for a CRD.
impl_kind!(
    crate::kueue::Workload,
    workloads,
    "workloads.kueue.x-k8s.io",
    true,
    |_: &crate::kueue::Workload, _| None
);

// `pkg/registry/core/secret/strategy.go` `SelectableFields`: `type` besides metadata.
impl_kind!(Secret, secrets, "secrets", true, |s: &Secret, k| match k {
    "type" => Some(s.type_.clone().unwrap_or_default()),
    _ => None,
});
impl_kind!(
    ConfigMap,
    config_maps,
    "configmaps",
    true,
    |_: &ConfigMap, _| None
);
impl_kind!(
    PersistentVolumeClaim,
    pvcs,
    "persistentvolumeclaims",
    true,
    |_: &PersistentVolumeClaim, _| None
);

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn every_write_gets_a_new_resource_version_from_one_counter() {
        let s = Store::new(100);
        let a = s.create(job("a")).unwrap();
        let b = s.create(job("b")).unwrap();
        let rv = |j: &Job| {
            j.metadata
                .resource_version
                .clone()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert!(rv(&b) > rv(&a));
        let a2 = s
            .update::<Job>("default", "a", |j| {
                j.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert!(rv(&a2) > rv(&b));
    }

    #[test]
    fn history_beyond_the_limit_is_expired() {
        let s = Store::new(2);
        for n in ["a", "b", "c"] {
            s.create(job(n)).unwrap();
        }
        assert!(s.events_since::<Job>(1).is_err());
        assert_eq!(
            s.events_since::<Job>(s.compacted_rv::<Job>())
                .unwrap()
                .0
                .len(),
            2
        );
    }

    #[test]
    fn delete_with_finalizer_only_marks_and_removal_of_finalizer_completes_it() {
        let s = Store::new(100);
        let mut j = job("a");
        j.metadata.finalizers = Some(vec!["x/y".into()]);
        s.create(j).unwrap();
        let marked = s
            .delete::<Job>("default", "a", 0, &[], None)
            .unwrap()
            .unwrap();
        assert!(marked.metadata.deletion_timestamp.is_some());
        let gone = s
            .update::<Job>("default", "a", |j| {
                j.metadata.finalizers = None;
                Ok(())
            })
            .unwrap();
        assert!(gone.is_none());
        assert!(s.get::<Job>("default", "a").is_none());
    }
}
