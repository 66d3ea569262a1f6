//! Mounting a pod's configMap and secret volumes before its containers are created: the
//! kubelet's volume manager (`WaitForAttachAndMount` in pkg/kubelet/kubelet.go `SyncPod`, before
//! the runtime pulls images) sets each volume up, and the configMap and secret plugins
//! (`SetUpAt` in kubernetes/kubernetes pkg/volume/configmap/configmap.go and
//! pkg/volume/secret/secret.go, `MakePayload` for `items`) fail when the object, or a key that
//! `items` names, is missing and the volume is not `optional`
//! (https://kubernetes.io/docs/concepts/storage/volumes/#configmap,
//! https://kubernetes.io/docs/concepts/configuration/secret/#restriction-secret-must-exist).
//! The pod then stays `ContainerCreating` with a Warning `FailedMount` Event
//! (`MountVolume.SetUp failed for volume "v" : configmap "x" not found`), and the pod worker
//! tries again after its back-off, so the pod starts once the object exists. Other volume
//! kinds mount at once (nothing is mounted anywhere). Reads the store, never writes it.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};

use super::status::first_container;
use super::Kubelet;
use crate::events::KUBELET;
use crate::store::ObjKey;
use crate::timers::{Timer, Timers};

/// Why `volume` cannot be set up in namespace `ns` now, if it cannot.
fn set_up_error(
    kubelet: &Kubelet,
    ns: &str,
    volume: &k8s_openapi::api::core::v1::Volume,
) -> Option<String> {
    if let Some(c) = &volume.config_map {
        if c.optional == Some(true) {
            return None;
        }
        let Some(map) = kubelet.store.get::<ConfigMap>(ns, &c.name) else {
            return Some(format!("configmap {:?} not found", c.name));
        };
        let has = |key: &str| {
            map.data.as_ref().is_some_and(|d| d.contains_key(key))
                || map
                    .binary_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(key))
        };
        for item in c.items.iter().flatten() {
            if !has(&item.key) {
                return Some(format!(
                    "configmap references non-existent config key: {}",
                    item.key
                ));
            }
        }
    }
    if let Some(s) = &volume.secret {
        if s.optional == Some(true) {
            return None;
        }
        let name = s.secret_name.clone().unwrap_or_default();
        let Some(secret) = kubelet.store.get::<Secret>(ns, &name) else {
            return Some(format!("secret {name:?} not found"));
        };
        let has = |key: &str| {
            secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(key))
        };
        for item in s.items.iter().flatten() {
            if !has(&item.key) {
                return Some(format!("references non-existent secret key: {}", item.key));
            }
        }
    }
    None
}

impl Kubelet {
    /// Before the first container is created: a configMap or secret volume that cannot be set
    /// up records `FailedMount` and retries after `behaviour.config_retry` (the pod worker's
    /// back-off); the container stays waiting in `ContainerCreating` as binding wrote it.
    /// Volumes stay mounted across container restarts, so only a never-started container is
    /// held here.
    pub(super) fn mount_failed(
        &mut self,
        key: &ObjKey,
        uid: &str,
        pod: &Pod,
        timers: &mut Timers,
    ) -> bool {
        let creating = first_container(pod).is_some_and(|c| {
            c.restart_count == 0
                && c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    == Some("ContainerCreating")
        });
        if !creating {
            return false;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let failed = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find_map(|v| set_up_error(self, &ns, v).map(|e| (v.name.clone(), e)));
        let Some((volume, error)) = failed else {
            return false;
        };
        self.record(
            pod,
            true,
            "FailedMount",
            &format!("MountVolume.SetUp failed for volume {volume:?} : {error}"),
            KUBELET,
        );
        self.starting.insert(uid.to_string());
        timers.add(
            self.behaviour.config_retry,
            Timer::StartPod(key.clone(), uid.to_string()),
        );
        true
    }
}
