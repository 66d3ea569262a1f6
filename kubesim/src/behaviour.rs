//! The switchable behaviours of the simulated cluster that go beyond the happy path, shared by
//! the API server (admission of pod creates) and the control loop (Job controller, scheduler,
//! kubelet). Each default is what a fresh Kubernetes cluster does.

use std::time::Duration;

use crate::admission::Admission;
use crate::events::Recorder;
use crate::scheduling::Node;

/// The container env var that makes the kubelet fail to pull the container's image, whatever the
/// image is (`KUBESIM_IMAGE_PULL=fail`), like the other `KUBESIM_*` scripts.
pub const IMAGE_PULL_ENV: &str = "KUBESIM_IMAGE_PULL";

#[derive(Debug, Clone)]
pub struct Behaviour {
    pub events: Recorder,
    pub admission: Admission,
    /// The cluster's nodes, tried in order (default: one, `kubesim-node-1`).
    pub nodes: Vec<Node>,
    pub image_pull: ImagePull,
    /// How long the kubelet waits before it retries a container whose config could not be
    /// built (`CreateContainerConfigError`: a missing Secret, ConfigMap or key): the pod
    /// worker's back-off, `backOffPeriod` = 10 s in pkg/kubelet/pod_workers.go.
    pub config_retry: Duration,
    /// Kueue's part; set from [`crate::SimConfig::kueue`] when the simulator starts.
    pub kueue: Option<crate::kueue::KueueConfig>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            events: Recorder::default(),
            admission: Admission::default(),
            nodes: vec![Node::default()],
            image_pull: ImagePull::default(),
            config_retry: Duration::from_secs(10),
            kueue: None,
        }
    }
}

/// Which images cannot be pulled, and the kubelet's image pull back-off
/// (https://kubernetes.io/docs/concepts/containers/images/#imagepullbackoff: starts at 10 s,
/// doubles, caps at 300 s).
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePull {
    /// Patterns of images that do not exist: an exact image, or one with a leading and/or
    /// trailing `*` (`*:doesnotexist`, `invalid.example/*`).
    pub failing: Vec<String>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ImagePull {
    fn default() -> Self {
        ImagePull {
            // `.example` and `.invalid` names never resolve (RFC 2606), and no registry has
            // this tag: pulling them fails on a real cluster too.
            failing: vec![
                "*:doesnotexist".into(),
                "invalid.example/*".into(),
                "*.invalid/*".into(),
            ],
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(rest), _) if rest.ends_with('*') => s.contains(&rest[..rest.len() - 1]),
        (Some(suffix), _) => s.ends_with(suffix),
        (None, Some(prefix)) => s.starts_with(prefix),
        (None, None) => s == pattern,
    }
}

impl ImagePull {
    /// True when pulling `image` fails (by pattern or by the container's env var).
    pub fn fails(&self, image: &str, env: &[(String, String)]) -> bool {
        env.iter().any(|(k, v)| k == IMAGE_PULL_ENV && v == "fail")
            || self.failing.iter().any(|p| glob(p, image))
    }

    /// The back-off before the `n`th retry (n >= 1).
    pub fn backoff(&self, n: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_fail_by_pattern_or_env() {
        let p = ImagePull::default();
        assert!(p.fails("perl:doesnotexist", &[]));
        assert!(p.fails("invalid.example/team/app:1", &[]));
        assert!(!p.fails("perl:5.34.0", &[]));
        assert!(p.fails(
            "perl:5.34.0",
            &[(IMAGE_PULL_ENV.to_string(), "fail".to_string())]
        ));
        assert_eq!(p.backoff(1), Duration::from_secs(10));
        assert_eq!(p.backoff(3), Duration::from_secs(40));
        assert_eq!(p.backoff(30), Duration::from_secs(300));
    }
}
