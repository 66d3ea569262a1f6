//! The garbage collector: deletes pods whose owning Job is gone (background propagation),
//! drives foreground deletion (the owner keeps its `foregroundDeletion` finalizer until its
//! blocking dependents are gone) and orphaning (owner references stripped, then the `orphan`
//! finalizer removed). It only edits metadata; it never touches status.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use crate::objects::{has_finalizer, pod_delete_grace};
use crate::store::{ObjKey, Store};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Default)]
pub struct Gc {
    /// Jobs being deleted with a GC finalizer, to re-check when their dependents change.
    deleting: BTreeSet<ObjKey>,
    /// uids of owners that are gone whose dependents must be deleted.
    gone: BTreeSet<(String, String)>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn delete_dependent(store: &Store, pod: &Pod) {
    if pod.metadata.deletion_timestamp.is_some() {
        return;
    }
    let (ns, name) = key(&pod.metadata);
    let grace = pod_delete_grace(pod, None);
    let _ = store.delete::<Pod>(&ns, &name, grace, &[], pod.metadata.uid.as_deref());
}

impl Gc {
    pub fn job_changed(&mut self, job: &Job) {
        let m = &job.metadata;
        if m.deletion_timestamp.is_some()
            && (has_finalizer(m, FOREGROUND) || has_finalizer(m, ORPHAN))
        {
            self.deleting.insert(key(m));
        }
    }

    pub fn job_deleted(&mut self, _store: &Store, job: &Job) {
        let (ns, _) = key(&job.metadata);
        if let Some(uid) = job.metadata.uid.clone() {
            self.gone.insert((ns, uid));
        }
    }

    /// A pod exists: if its owner Job does not, it is garbage.
    pub fn pod_seen(&mut self, store: &Store, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for o in pod.metadata.owner_references.iter().flatten() {
            if o.kind != "Job" {
                continue;
            }
            let owner = store.get::<Job>(&ns, &o.name);
            let alive = owner
                .as_ref()
                .is_some_and(|j| j.metadata.uid.as_deref() == Some(o.uid.as_str()));
            if !alive {
                self.gone.insert((ns.clone(), o.uid.clone()));
            } else if let Some(j) = owner {
                self.job_changed(&j);
            }
        }
    }

    pub fn pod_deleted(&mut self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for o in pod.metadata.owner_references.iter().flatten() {
            if o.kind == "Job" {
                self.deleting.insert((ns.clone(), o.name.clone()));
            }
        }
    }

    pub fn run(&mut self, store: &Store) {
        for (_ns, uid) in std::mem::take(&mut self.gone) {
            for pod in store.dependents::<Pod>(&uid) {
                delete_dependent(store, &pod);
            }
        }
        for (ns, name) in std::mem::take(&mut self.deleting) {
            let Some(job) = store.get::<Job>(&ns, &name) else {
                continue;
            };
            if job.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let uid = job.metadata.uid.clone().unwrap_or_default();
            if has_finalizer(&job.metadata, ORPHAN) {
                for pod in store.dependents::<Pod>(&uid) {
                    let (pns, pname) = key(&pod.metadata);
                    let _ = store.update::<Pod>(&pns, &pname, |p| {
                        if let Some(refs) = p.metadata.owner_references.as_mut() {
                            refs.retain(|o| o.uid != uid);
                            if refs.is_empty() {
                                p.metadata.owner_references = None;
                            }
                        }
                        Ok(())
                    });
                }
                remove_finalizer(store, &ns, &name, ORPHAN);
            } else if has_finalizer(&job.metadata, FOREGROUND) {
                let deps = store.dependents::<Pod>(&uid);
                for pod in &deps {
                    delete_dependent(store, pod);
                }
                let blocking = deps.iter().any(|p| {
                    p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
                });
                if !blocking {
                    remove_finalizer(store, &ns, &name, FOREGROUND);
                }
            }
        }
    }
}

fn remove_finalizer(store: &Store, ns: &str, name: &str, f: &str) {
    let _ = store.update::<Job>(ns, name, |j| {
        if let Some(fins) = j.metadata.finalizers.as_mut() {
            fins.retain(|x| x != f);
            if fins.is_empty() {
                j.metadata.finalizers = None;
            }
        }
        Ok(())
    });
}
