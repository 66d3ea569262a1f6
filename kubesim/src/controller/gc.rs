//! The garbage collector, following `metadata.ownerReferences` for every kind the store holds
//! (Jobs, Pods, core/v1 Events, Secrets, ConfigMaps, PersistentVolumeClaims, Kueue Workloads;
//! Namespaces as owners), as Kubernetes documents
//! it (https://kubernetes.io/docs/concepts/architecture/garbage-collection/,
//! https://kubernetes.io/docs/tasks/administer-cluster/use-cascading-deletion/):
//!
//! - **background** (the default): once every owner of a dependent is verified absent, the
//!   dependent is deleted (a Pod gracefully, anything else at once); a dependent with another
//!   owner still present only loses its reference to the absent one. A namespaced owner must be
//!   in the dependent's namespace, else the reference counts as absent. An owner of a kind the
//!   simulator does not serve cannot be verified, so its dependents are left alone;
//! - **foreground** (`propagationPolicy: Foreground`: the owner got the `foregroundDeletion`
//!   finalizer): the dependents are deleted, and the finalizer goes once no dependent with
//!   `blockOwnerDeletion: true` is left, so the owner goes last;
//! - **orphan** (`propagationPolicy: Orphan`, a Job's default here as in the real server: the
//!   `orphan` finalizer): the dependents lose their reference to the owner, then the finalizer
//!   goes.
//!
//! It only edits metadata and deletes; it never touches status.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event as CoreEvent, Namespace, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::kueue::Workload;
use crate::objects::{has_finalizer, pod_delete_grace};
use crate::store::{Kind, ObjKey, Store};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Calls `$f::<K>($args)` for every namespaced kind the store holds, in turn, or (with a
/// trailing `|`) or-ing their results, each of them called.
macro_rules! each_kind {
    ($f:ident($($arg:expr),*)) => {{
        $f::<Job>($($arg),*);
        $f::<Pod>($($arg),*);
        $f::<Workload>($($arg),*);
        $f::<CoreEvent>($($arg),*);
        $f::<Secret>($($arg),*);
        $f::<ConfigMap>($($arg),*);
        $f::<PersistentVolumeClaim>($($arg),*);
    }};
    ($f:ident($($arg:expr),*) | ) => {{
        $f::<Job>($($arg),*)
            | $f::<Pod>($($arg),*)
            | $f::<Workload>($($arg),*)
            | $f::<CoreEvent>($($arg),*)
            | $f::<Secret>($($arg),*)
            | $f::<ConfigMap>($($arg),*)
            | $f::<PersistentVolumeClaim>($($arg),*)
    }};
}

/// An owner reference's target, as far as the simulator can tell.
enum Owner {
    /// It exists with the referenced uid; `deleting`: it has a deletionTimestamp.
    Present { deleting: bool },
    /// No object of that kind, name (and namespace) with that uid: it is gone.
    Absent,
    /// A kind the simulator does not serve: it cannot be verified either way.
    Unknown,
}

/// The group of an `apiVersion` (`batch/v1` -> `batch`, `v1` -> the core group `""`).
fn group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// The `(group, kind)` an owner reference names, if the store holds that kind.
fn known<K: Kind>(o: &OwnerReference) -> bool {
    o.kind == K::KIND && group(&o.api_version) == K::GROUP
}

fn owner_of<K: Kind>(store: &Store, ns: &str, o: &OwnerReference) -> Option<Owner> {
    if !known::<K>(o) {
        return None;
    }
    let found = store.get::<K>(ns, &o.name);
    Some(match found {
        Some(obj) if obj.metadata().uid.as_deref() == Some(o.uid.as_str()) => Owner::Present {
            deleting: obj.metadata().deletion_timestamp.is_some(),
        },
        _ => Owner::Absent,
    })
}

/// Looks up what `o`, a reference from an object in namespace `ns`, points to.
fn owner(store: &Store, ns: &str, o: &OwnerReference) -> Owner {
    owner_of::<Job>(store, ns, o)
        .or_else(|| owner_of::<Pod>(store, ns, o))
        .or_else(|| owner_of::<Workload>(store, ns, o))
        .or_else(|| owner_of::<CoreEvent>(store, ns, o))
        .or_else(|| owner_of::<Secret>(store, ns, o))
        .or_else(|| owner_of::<ConfigMap>(store, ns, o))
        .or_else(|| owner_of::<PersistentVolumeClaim>(store, ns, o))
        // Cluster-scoped: a namespaced dependent may name one.
        .or_else(|| owner_of::<Namespace>(store, "", o))
        .unwrap_or(Owner::Unknown)
}

fn key(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// An owner being deleted with a GC finalizer: `(kind, namespace, name)`.
type Deleting = (&'static str, String, String);

fn deleting_key<K: Kind>(meta: &ObjectMeta) -> Deleting {
    let (ns, name) = key(meta);
    (K::KIND, ns, name)
}

#[derive(Default)]
pub struct Gc {
    /// Owners being deleted with a GC finalizer, to re-check when their dependents change.
    deleting: BTreeSet<Deleting>,
    /// `(namespace, uid)` of owners that may be gone, whose dependents are to be checked.
    gone: BTreeSet<(String, String)>,
}

impl Gc {
    /// An object of kind `K` was created or changed: as an owner it may be deleting with a GC
    /// finalizer; as a dependent, an owner it names may be gone (or deleting in the foreground,
    /// waiting for this dependent).
    pub fn object_changed<K: Kind>(&mut self, store: &Store, obj: &K) {
        let m = obj.metadata();
        if m.deletion_timestamp.is_some()
            && (has_finalizer(m, FOREGROUND) || has_finalizer(m, ORPHAN))
        {
            self.deleting.insert(deleting_key::<K>(m));
        }
        let ns = m.namespace.clone().unwrap_or_default();
        for o in m.owner_references.iter().flatten() {
            match owner(store, &ns, o) {
                Owner::Absent => {
                    self.gone.insert((ns.clone(), o.uid.clone()));
                }
                Owner::Present { deleting: true } => {
                    // A namespaced owner is in the dependent's namespace.
                    self.deleting
                        .insert((leak_kind(&o.kind), ns.clone(), o.name.clone()));
                }
                Owner::Present { deleting: false } => {}
                Owner::Unknown => {}
            }
        }
    }

    /// An object of kind `K` is gone: its dependents are checked, and so are the owners it
    /// named (one deleting in the foreground may have been waiting for it).
    pub fn object_deleted<K: Kind>(&mut self, obj: &K) {
        let m = obj.metadata();
        let ns = m.namespace.clone().unwrap_or_default();
        if let Some(uid) = m.uid.clone() {
            self.gone.insert((ns.clone(), uid));
        }
        for o in m.owner_references.iter().flatten() {
            self.deleting
                .insert((leak_kind(&o.kind), ns.clone(), o.name.clone()));
        }
    }

    pub fn run(&mut self, store: &Store) {
        for (_ns, uid) in std::mem::take(&mut self.gone) {
            each_kind!(collect_orphaned(store, &uid));
        }
        for (kind, ns, name) in std::mem::take(&mut self.deleting) {
            match kind {
                "Job" => finish_deleting::<Job>(store, &ns, &name),
                "Pod" => finish_deleting::<Pod>(store, &ns, &name),
                "Workload" => finish_deleting::<Workload>(store, &ns, &name),
                "Event" => finish_deleting::<CoreEvent>(store, &ns, &name),
                "Secret" => finish_deleting::<Secret>(store, &ns, &name),
                "ConfigMap" => finish_deleting::<ConfigMap>(store, &ns, &name),
                "PersistentVolumeClaim" => {
                    finish_deleting::<PersistentVolumeClaim>(store, &ns, &name)
                }
                "Namespace" => {}
                _ => {}
            }
        }
    }
}

/// The `&'static str` of a kind the store holds (others are not acted on).
fn leak_kind(kind: &str) -> &'static str {
    match kind {
        "Job" => "Job",
        "Pod" => "Pod",
        "Workload" => "Workload",
        "Event" => "Event",
        "Secret" => "Secret",
        "ConfigMap" => "ConfigMap",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "Namespace" => "Namespace",
        _ => "",
    }
}

/// Deletes a dependent whose owners are all gone, as the garbage collector does: background
/// propagation (its own dependents follow), a Pod with its grace period.
fn delete_dependent<K: Kind>(store: &Store, obj: &K, extra_finalizers: &[&str]) {
    let m = obj.metadata();
    if m.deletion_timestamp.is_some() {
        return;
    }
    let (ns, name) = key(m);
    let grace = match (obj as &dyn std::any::Any).downcast_ref::<Pod>() {
        Some(pod) => pod_delete_grace(pod, None),
        None => 0,
    };
    let _ = store.delete::<K>(&ns, &name, grace, extra_finalizers, m.uid.as_deref());
}

/// The dependents of kind `K` of the owner with `uid`, which may be gone: each one whose
/// owners are now all absent is deleted; one with another owner present (or unverifiable)
/// only loses the reference to the absent one.
fn collect_orphaned<K: Kind>(store: &Store, uid: &str) {
    for dep in store.dependents::<K>(uid) {
        let m = dep.metadata();
        let ns = m.namespace.clone().unwrap_or_default();
        let refs: Vec<&OwnerReference> = m.owner_references.iter().flatten().collect();
        let Some(this) = refs.iter().find(|o| o.uid == uid) else {
            continue;
        };
        if !matches!(owner(store, &ns, this), Owner::Absent) {
            // Still there (a stale entry of `gone`), or not verifiable.
            continue;
        }
        let others_absent = refs
            .iter()
            .filter(|o| o.uid != uid)
            .all(|o| matches!(owner(store, &ns, o), Owner::Absent));
        if others_absent {
            delete_dependent(store, dep.as_ref(), &[]);
        } else {
            strip_owner::<K>(store, m, uid);
        }
    }
}

/// Removes the reference to the owner `uid` from a dependent.
fn strip_owner<K: Kind>(store: &Store, meta: &ObjectMeta, uid: &str) {
    let (ns, name) = key(meta);
    let _ = store.update::<K>(&ns, &name, |d| {
        let m = d.metadata_mut();
        if let Some(refs) = m.owner_references.as_mut() {
            refs.retain(|o| o.uid != uid);
            if refs.is_empty() {
                m.owner_references = None;
            }
        }
        Ok(())
    });
}

/// Orphans the dependents of kind `D` of the owner `uid`.
fn orphan_dependents<D: Kind>(store: &Store, uid: &str) {
    for dep in store.dependents::<D>(uid) {
        strip_owner::<D>(store, dep.metadata(), uid);
    }
}

/// Deletes the dependents of kind `D` of an owner deleting in the foreground; a dependent with
/// dependents of its own is deleted in the foreground too. True when one of them, still there,
/// blocks the owner's deletion.
fn delete_in_foreground<D: Kind>(store: &Store, uid: &str) -> bool {
    let deps = store.dependents::<D>(uid);
    for dep in &deps {
        let has_own = dep.metadata().uid.as_deref().is_some_and(|u| {
            let u = u.to_string();
            has_dependents(store, &u)
        });
        let extra: &[&str] = if has_own { &[FOREGROUND] } else { &[] };
        delete_dependent(store, dep.as_ref(), extra);
    }
    store.dependents::<D>(uid).iter().any(|d| {
        d.metadata()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
    })
}

fn any_dependents<D: Kind>(store: &Store, uid: &str) -> bool {
    !store.dependents::<D>(uid).is_empty()
}

fn has_dependents(store: &Store, uid: &str) -> bool {
    each_kind!(any_dependents(store, uid) |)
}

/// Drives an owner of kind `K` deleting with a GC finalizer: orphans or deletes its
/// dependents, and removes the finalizer once that is done.
fn finish_deleting<K: Kind>(store: &Store, ns: &str, name: &str) {
    let Some(owner) = store.get::<K>(ns, name) else {
        return;
    };
    let m = owner.metadata();
    if m.deletion_timestamp.is_none() {
        return;
    }
    let uid = m.uid.clone().unwrap_or_default();
    if has_finalizer(m, ORPHAN) {
        each_kind!(orphan_dependents(store, &uid));
        remove_finalizer::<K>(store, ns, name, ORPHAN);
    } else if has_finalizer(m, FOREGROUND) {
        let blocked = each_kind!(delete_in_foreground(store, &uid) |);
        if !blocked {
            remove_finalizer::<K>(store, ns, name, FOREGROUND);
        }
    }
}

fn remove_finalizer<K: Kind>(store: &Store, ns: &str, name: &str, f: &str) {
    let _ = store.update::<K>(ns, name, |obj| {
        let m = obj.metadata_mut();
        if let Some(fins) = m.finalizers.as_mut() {
            fins.retain(|x| x != f);
            if fins.is_empty() {
                m.finalizers = None;
            }
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_name_their_group() {
        assert_eq!(group("batch/v1"), "batch");
        assert_eq!(group("v1"), "");
        assert_eq!(group("kueue.x-k8s.io/v1beta1"), "kueue.x-k8s.io");
    }
}
