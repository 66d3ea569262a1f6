//! The namespace controller: empties a Terminating namespace and removes it once nothing is
//! left, as kube-controller-manager's namespace deleter does
//! (`pkg/controller/namespace/deletion/namespaced_resources_deleter.go`, conditions from
//! `status_condition_utils.go`;
//! <https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/#deleting-a-namespace>,
//! <https://kubernetes.io/docs/tasks/administer-cluster/namespaces/#deleting-a-namespace>).
//!
//! Every Job (background propagation, as the deleter's deletecollection), Pod (graceful),
//! Secret, ConfigMap and PersistentVolumeClaim of the namespace is deleted; objects held by finalizers stay until their finalizers are
//! removed, and the namespace reports them in its `NamespaceContentRemaining` and
//! `NamespaceFinalizersRemaining` conditions. When the namespace is empty the `kubernetes`
//! finalizer leaves `spec.finalizers` and the namespace is gone.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, NamespaceCondition, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::objects::pod_delete_grace;
use crate::store::{Kind, Store};
use crate::time::now_time;

/// The finalizer the namespace controller owns in `spec.finalizers`.
pub const KUBERNETES_FINALIZER: &str = "kubernetes";

/// What is still in a namespace: count per resource and per finalizer.
#[derive(Default)]
struct Remaining {
    by_resource: BTreeMap<&'static str, usize>,
    by_finalizer: BTreeMap<String, usize>,
}

impl Remaining {
    fn add(&mut self, resource: &'static str, meta: &ObjectMeta) {
        *self.by_resource.entry(resource).or_default() += 1;
        for f in meta.finalizers.iter().flatten() {
            *self.by_finalizer.entry(f.clone()).or_default() += 1;
        }
    }

    fn conditions(&self, old: &[NamespaceCondition]) -> Vec<NamespaceCondition> {
        let condition = |ty: &str, reason: &str, message: String| {
            let same = old
                .iter()
                .find(|c| c.type_ == ty && c.message.as_deref() == Some(message.as_str()));
            NamespaceCondition {
                type_: ty.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: same
                    .and_then(|c| c.last_transition_time.clone())
                    .or_else(|| Some(now_time())),
            }
        };
        let resources: Vec<String> = self
            .by_resource
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        let finalizers: Vec<String> = self
            .by_finalizer
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        let mut out = vec![condition(
            "NamespaceContentRemaining",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", resources.join(", ")),
        )];
        if !finalizers.is_empty() {
            out.push(condition(
                "NamespaceFinalizersRemaining",
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    finalizers.join(", ")
                ),
            ));
        }
        out
    }
}

/// Deletes every object of kind `K` in the namespace at once (background propagation).
fn delete_all<K: Kind>(store: &Store, ns: &str) {
    for obj in store.list::<K>(Some(ns)).0 {
        let m = obj.metadata();
        if m.deletion_timestamp.is_none() {
            let _ = store.delete::<K>(ns, m.name.as_deref().unwrap_or(""), 0, &[], None);
        }
    }
}

fn count<K: Kind>(store: &Store, ns: &str, remaining: &mut Remaining) {
    for obj in store.list::<K>(Some(ns)).0 {
        remaining.add(K::GROUP_RESOURCE, obj.metadata());
    }
}

/// Deletes the content of every Terminating namespace and removes the empty ones.
pub fn sync(store: &Store) {
    let (namespaces, _) = store.list::<Namespace>(None);
    for ns in namespaces
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_some())
    {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let (jobs, _) = store.list::<Job>(Some(&name));
        for job in jobs
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
        {
            let job_name = job.metadata.name.as_deref().unwrap_or("");
            let _ = store.delete::<Job>(&name, job_name, 0, &[], None);
        }
        let (pods, _) = store.list::<Pod>(Some(&name));
        for pod in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let pod_name = pod.metadata.name.as_deref().unwrap_or("");
            let _ = store.delete::<Pod>(&name, pod_name, pod_delete_grace(pod, None), &[], None);
        }
        delete_all::<Secret>(store, &name);
        delete_all::<ConfigMap>(store, &name);
        delete_all::<PersistentVolumeClaim>(store, &name);
        let mut remaining = Remaining::default();
        for job in store.list::<Job>(Some(&name)).0 {
            remaining.add("jobs.batch", &job.metadata);
        }
        count::<Secret>(store, &name, &mut remaining);
        count::<ConfigMap>(store, &name, &mut remaining);
        count::<PersistentVolumeClaim>(store, &name, &mut remaining);
        for pod in store.list::<Pod>(Some(&name)).0 {
            remaining.add("pods", &pod.metadata);
        }
        let _ = store.update::<Namespace>("", &name, |ns| {
            if remaining.by_resource.is_empty() {
                // Empty: the controller's finalizer goes, and with it the namespace.
                if let Some(spec) = ns.spec.as_mut() {
                    if let Some(f) = spec.finalizers.as_mut() {
                        f.retain(|f| f != KUBERNETES_FINALIZER);
                    }
                }
            } else {
                let status = ns.status.get_or_insert_with(Default::default);
                let old = status.conditions.clone().unwrap_or_default();
                status.conditions = Some(remaining.conditions(&old));
            }
            Ok(())
        });
    }
}
