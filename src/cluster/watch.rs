//! Watching this installation's Jobs, pods and the Job controller's `FailedCreate` Events:
//! kube-runtime watchers that re-list after a lost connection or a 410 Gone, restarted with a
//! short backoff. What the stream says is left to the caller (the tracker).

use super::jobs::Cluster;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::time::Duration;

/// A watch that failed; the stream goes on after a backoff.
pub use kube::runtime::watcher::Error as WatchError;
/// What a watch reports: `Init`, one `InitApply` per listed object and `InitDone` for each
/// (re-)list, then `Apply` / `Delete` per change.
pub use kube::runtime::watcher::Event;

/// A watch's events, `'static` so a loop can own it.
pub type Watch<K> = BoxStream<'static, Result<Event<K>, WatchError>>;

/// Backoff between watch restarts: exponential with jitter, capped at 5 s (kube-runtime's default
/// goes to 30 s plus jitter, which after an API outage delays every status by up to a minute),
/// and reset by the first successful event.
struct WatchBackoff {
    builder: ExponentialBuilder,
    current: backon::ExponentialBackoff,
}

impl WatchBackoff {
    fn new() -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        WatchBackoff {
            current: builder.build(),
            builder,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

impl Cluster {
    /// This installation's objects, each watch asking the API server to end it after
    /// `timeout_secs` (the watcher then resumes from its last resourceVersion).
    fn installation_watch(&self, timeout_secs: u32) -> watcher::Config {
        watcher::Config::default()
            .labels(&self.settings.selector())
            .timeout(timeout_secs)
    }

    /// Watches this installation's Jobs in `namespace`.
    pub fn watch_jobs(&self, namespace: &str, timeout_secs: u32) -> Watch<Job> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        watcher::watcher(api, self.installation_watch(timeout_secs))
            .backoff(WatchBackoff::new())
            .boxed()
    }

    /// Watches this installation's pods in `namespace`.
    pub fn watch_pods(&self, namespace: &str, timeout_secs: u32) -> Watch<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        watcher::watcher(api, self.installation_watch(timeout_secs))
            .backoff(WatchBackoff::new())
            .boxed()
    }

    /// Follows the Job controller's `FailedCreate` Events in `namespace` (pods refused by
    /// admission, quota, ...): every Event as it is added or updated.
    pub fn watch_failed_creates(
        &self,
        namespace: &str,
    ) -> BoxStream<'static, Result<k8s_openapi::api::core::v1::Event, WatchError>> {
        let config =
            watcher::Config::default().fields("involvedObject.kind=Job,reason=FailedCreate");
        watcher::watcher(self.events(namespace), config)
            .backoff(WatchBackoff::new())
            .applied_objects()
            .boxed()
    }
}
