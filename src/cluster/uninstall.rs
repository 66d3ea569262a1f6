//! Uninstalling without hanging: `vfi-orchestrator release-finalizers` removes the service's
//! own finalizers (Jobs' run-tracking, pods' log-capture) from this installation's objects, so
//! deleting the namespace (or the Jobs) completes while the service is not running to release
//! them itself. Only those two finalizers are touched; Kubernetes' own stay with Kubernetes.

use super::keys;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Passes over the namespaces before giving up on objects that keep failing to be released.
const MAX_PASSES: usize = 20;

/// How many objects had a finalizer removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub jobs: usize,
    pub pods: usize,
}

/// Releases, in each namespace, every finalizer of this service from the installation's Jobs
/// and pods; repeats until a pass finds none (pods a deleting Job still had are caught by the
/// next pass). Fails when the API refuses or objects still carry them after many passes.
pub async fn release_finalizers(
    client: &Client,
    installation: &str,
    namespaces: &[String],
) -> anyhow::Result<Released> {
    let selector = ListParams::default().labels(&format!("{}={installation}", keys::INSTALLATION));
    let mut released = Released::default();
    for _ in 0..MAX_PASSES {
        let mut left = 0;
        for namespace in namespaces {
            let jobs = Api::<Job>::namespaced(client.clone(), namespace);
            let (done, failed) = release_all(&jobs, &selector, keys::TRACKING_FINALIZER).await?;
            released.jobs += done;
            left += done + failed;
            let pods = Api::<Pod>::namespaced(client.clone(), namespace);
            let (done, failed) = release_all(&pods, &selector, keys::LOG_FINALIZER).await?;
            released.pods += done;
            left += done + failed;
        }
        if left == 0 {
            return Ok(released);
        }
    }
    anyhow::bail!(
        "objects of installation {installation:?} still carry the service's finalizers after {MAX_PASSES} passes"
    )
}

/// Removes `finalizer` from every listed object carrying it: (released, failed).
async fn release_all<K>(
    api: &Api<K>,
    selector: &ListParams,
    finalizer: &str,
) -> Result<(usize, usize), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let (mut done, mut failed) = (0, 0);
    for object in api.list(selector).await?.items {
        if !object.finalizers().iter().any(|f| f == finalizer) {
            continue;
        }
        match super::remove_finalizer(api, &object, finalizer, &[]).await {
            Ok(()) => done += 1,
            // Changed under us (the guard's `test` failed): the next pass sees it again.
            Err(error) => {
                tracing::warn!(object = %object.name_any(), error = %error, "finalizer not released yet");
                failed += 1;
            }
        }
    }
    Ok((done, failed))
}
