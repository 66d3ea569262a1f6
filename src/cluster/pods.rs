//! Pods of the service's Jobs: reading them and their logs, and releasing the log-capture
//! finalizer.

use super::jobs::Cluster;
use super::keys;
use futures::AsyncBufRead;
use k8s_openapi::api::core::v1::Pod;
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
    ) -> Result<impl AsyncBufRead + Unpin + use<>, kube::Error> {
        let params = LogParams {
            container: Some(super::render::CONTAINER.to_string()),
            follow: read.follow,
            tail_lines: read.tail_lines,
            since_time: read
                .since_time
                .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).ok()),
            timestamps: true,
            ..Default::default()
        };
        let stream = self.pods(namespace).log_stream(pod, &params).await?;
        Ok(Box::pin(stream))
    }

    /// Removes the service's log-capture finalizer from a pod, once its log is stored (or given
    /// up on). A pod already gone is fine.
    #[tracing::instrument(skip(self, pod), fields(pod = %pod.name_any()))]
    pub async fn release_pod(&self, pod: &Pod) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        super::remove_finalizer(&self.pods(&namespace), pod, keys::LOG_FINALIZER, &[]).await
    }
}
