//! Everything that talks to Kubernetes: rendering a run into a Job (pure), creating, getting,
//! listing, watching and deleting Jobs, reading pods and their logs, the tracking and
//! log-capture finalizers, and reading what Jobs and Pods report (pure). The rest of the service
//! uses [`jobs::Cluster`]'s operations and never a Kubernetes client. It talks to the cluster only
//! through kube-rs, exactly as against any real API server.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::time::Duration;

pub mod jobs;
pub mod kueue;
pub mod observe;
pub mod params;
pub mod permissions;
pub mod pods;
pub mod render;
mod render_env;
pub mod render_failure;
mod render_volumes;
pub mod uninstall;
pub mod watch;

/// Label and annotation keys the service puts on its Jobs and pods.
pub mod keys {
    /// Which installation of the service owns the Job (several may share a cluster).
    pub const INSTALLATION: &str = "vfi-orchestrator.io/installation";
    /// The run the Job belongs to.
    pub const RUN_ID: &str = "vfi-orchestrator.io/run-id";
    /// The task of the run, when it has one.
    pub const TASK: &str = "vfi-orchestrator.io/task";
    /// The run's number (annotation).
    pub const RUN_NUMBER: &str = "vfi-orchestrator.io/run-number";
    /// Holds a Job in the API until the service has recorded its final state, so a TTL or a
    /// deletion cannot make a run's outcome disappear between two watch events.
    pub const TRACKING_FINALIZER: &str = "vfi-orchestrator.io/run-tracking";
    /// Holds a run's pods until their logs are archived, so a TTL, a cancellation or garbage
    /// collection cannot delete a pod before its log is safe.
    pub const LOG_FINALIZER: &str = "vfi-orchestrator.io/log-capture";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "vfi-orchestrator";
}

/// Where and as whom this installation runs Jobs.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This installation's name; only Jobs labelled with it are touched.
    pub installation: String,
    /// Namespaces runs may use; the first is the default.
    pub namespaces: Vec<String>,
    /// Prepended to every Job name (for installations sharing a namespace).
    pub job_name_prefix: String,
    /// Pods must run as a non-root user (`runAsNonRoot`).
    pub run_as_non_root: bool,
}

impl ClusterSettings {
    pub fn default_namespace(&self) -> &str {
        self.namespaces
            .first()
            .map(String::as_str)
            .unwrap_or("default")
    }

    /// The label selector matching this installation's Jobs and pods.
    pub fn selector(&self) -> String {
        format!("{}={}", keys::INSTALLATION, self.installation)
    }
}

/// `client` with a deadline on every call's answer: a hung API server fails the call (a transient
/// error the caller retries) instead of holding it, and the slot it occupies, forever. The
/// deadline covers the wait for the response's headers; a watch or log stream that has started
/// is not cut by it (kube-runtime's watcher restarts a watch silent for longer than its
/// `timeoutSeconds` + 5 s). kube-client's own `read_timeout` would cut quiet streams too, which is
/// why it stays off.
pub fn with_timeout(client: kube::Client, timeout: Duration) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::ServiceBuilder::new()
        .timeout(timeout)
        .service_fn(move |request| {
            let client = client.clone();
            async move { client.send(request).await }
        });
    kube::Client::new(service, namespace)
}

/// Removes `finalizer` from `object` with a JSON patch whose `test` op guards the index, so the
/// other finalizers are kept and a concurrent change makes the patch fail rather than remove the
/// wrong entry. When the guard fails, the object is read again: a finalizer someone else (another
/// replica) already removed is fine, and is logged at debug only; one that moved is removed at
/// its new place. An object without the finalizer, or already gone, is fine. `also` are JSON
/// patch operations applied in the same write.
pub(crate) async fn remove_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
    also: &[serde_json::Value],
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    const ATTEMPTS: usize = 3;
    let name = object.name_any();
    let mut finalizers = object.finalizers().to_vec();
    for attempt in 1..=ATTEMPTS {
        let Some(index) = finalizers.iter().position(|f| f == finalizer) else {
            return Ok(());
        };
        let mut ops = vec![
            serde_json::json!({"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer}),
            serde_json::json!({"op": "remove", "path": format!("/metadata/finalizers/{index}")}),
        ];
        ops.extend_from_slice(also);
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .expect("a well-formed JSON patch");
        match api
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            // The `test` failed (422) or the write conflicted (409): the finalizers changed
            // under us, most often because another replica released the same one first.
            Err(kube::Error::Api(status))
                if (status.code == 422 || status.code == 409) && attempt < ATTEMPTS =>
            {
                tracing::debug!(%name, %finalizer, code = status.code, "finalizers changed meanwhile; reading the object again");
                match api.get_opt(&name).await? {
                    Some(fresh) => finalizers = fresh.finalizers().to_vec(),
                    None => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
