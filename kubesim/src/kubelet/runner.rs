//! The pluggable container runtime: what "running a container" means in the simulator. The
//! kubelet hands a [`Runner`] one container instance at a time and records the outcome; runners
//! own nothing but the process (or script) they run and the log they write.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Container;
use tokio_util::sync::CancellationToken;

use crate::logs::LogBuf;

/// Everything a runner needs to run one container instance.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub namespace: String,
    pub pod_name: String,
    pub container: Container,
    /// The container's environment with `valueFrom` resolved where the simulator can
    /// (JOB_COMPLETION_INDEX), in declaration order.
    pub env: Vec<(String, String)>,
    /// The Indexed Job completion index of the pod, if any.
    pub completion_index: Option<u32>,
    /// How many containers were started for this pod's Job (or this pod, when it has no Job)
    /// before this one: 0 for the first attempt.
    pub attempt: u32,
    /// terminationGracePeriodSeconds: how long a kill waits between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl RunSpec {
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How a container instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub exit_code: i32,
    /// The terminated reason; None means the kubelet's default (Completed for 0, else Error).
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl RunOutcome {
    pub fn exited(code: i32) -> RunOutcome {
        RunOutcome {
            exit_code: code,
            reason: None,
            message: None,
        }
    }
}

/// A container runtime. `run` resolves when the container has exited; `kill` is cancelled when
/// the pod is deleted, evicted or past its deadline, and the runner must then stop (after at
/// most `spec.grace`) and report the exit (137 for SIGKILL, 143 for SIGTERM).
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        spec: RunSpec,
        log: Arc<LogBuf>,
        kill: CancellationToken,
    ) -> BoxFuture<'static, RunOutcome>;
}
