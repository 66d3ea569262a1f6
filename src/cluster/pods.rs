//! Pods of the service's Jobs: reading them and their logs, and releasing the log-capture
//! finalizer.

use super::jobs::Cluster;
use super::keys;
use futures::AsyncBufRead;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use uuid::Uuid;

/// How to read a pod's log. Logs are always read with timestamps, which the archive keeps and
/// readers use for `since` and strip unless asked.
#[derive(Debug, Clone, Default)]
pub struct LogRead {
    pub follow: bool,
    pub tail_lines: Option<i64>,
    /// Only lines at or after this time (the API rounds it to whole seconds).
    pub since_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The container's previous instance (the one before its last restart), which the kubelet
    /// keeps besides the current one.
    pub previous: bool,
}

/// Why a pod's log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    /// The pod no longer exists.
    #[error("the pod no longer exists")]
    Gone,
    /// The API server or kubelet refused the read with a client error (not 429): a container
    /// that has not started, no previous instance, or a log the kubelet removed. Asking again
    /// gives the same answer until the pod changes.
    #[error("the log read was refused: {0}")]
    Refused(String),
    /// Anything else (unreachable, a server error, throttled): worth retrying.
    #[error("reading the pod's log failed")]
    Failed(#[source] kube::Error),
}

/// Which instance of a pod's main container the kubelet serves as its current log, and whether
/// that instance is still waiting to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub restart_count: i32,
    pub waiting: bool,
}

/// The status of the pod's main container (none before it has one).
pub fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == super::render::CONTAINER)
}

/// The main container's current instance, as the pod reports it (none before it has a status).
pub fn main_instance(pod: &Pod) -> Option<Instance> {
    let status = main_status(pod)?;
    Some(Instance {
        restart_count: status.restart_count,
        waiting: status.state.as_ref().is_none_or(|s| s.waiting.is_some()),
    })
}

impl Cluster {
    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// A pod as it is now, or none when it is gone.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
        self.pods(namespace).get_opt(name).await
    }

    /// The pods of a run's Job.
    pub async fn run_pods(&self, namespace: &str, run_id: Uuid) -> Result<Vec<Pod>, kube::Error> {
        let params = ListParams::default().labels(&format!("{}={run_id}", keys::RUN_ID));
        Ok(self.pods(namespace).list(&params).await?.items)
    }

    /// Opens a pod's log of the `main` container.
    pub async fn pod_log(
        &self,
        namespace: &str,
        pod: &str,
        read: &LogRead,
    ) -> Result<impl AsyncBufRead + Unpin + use<>, LogOpenError> {
        let params = LogParams {
            container: Some(super::render::CONTAINER.to_string()),
            follow: read.follow,
            tail_lines: read.tail_lines,
            since_time: read
                .since_time
                .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).ok()),
            timestamps: true,
            previous: read.previous,
            ..Default::default()
        };
        match self.pods(namespace).log_stream(pod, &params).await {
            Ok(stream) => Ok(Box::pin(stream)),
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(LogOpenError::Gone),
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && status.code != 429 =>
            {
                Err(LogOpenError::Refused(status.message))
            }
            Err(error) => Err(LogOpenError::Failed(error)),
        }
    }

    /// Removes the service's log-capture finalizer from a pod, once its log is stored (or given
    /// up on). A pod already gone is fine.
    #[tracing::instrument(skip(self, pod), fields(pod = %pod.name_any()))]
    pub async fn release_pod(&self, pod: &Pod) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        super::remove_finalizer(&self.pods(&namespace), pod, keys::LOG_FINALIZER, &[]).await
    }
}
