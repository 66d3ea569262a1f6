//! The attempts of a pod's container: each instance of a container restarted in place
//! (`restartPolicy: OnFailure`) is an attempt, numbered from 1 by restart count (attempt N is
//! the instance with restart count N - 1), with its own log. Pure.

use super::PodRecord;
use serde::Serialize;
use utoipa::ToSchema;

/// One attempt of a pod's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1-based; `GET /v1/runs/{id}/logs?attempt=N` shows only its log.
    pub attempt: i32,
    /// The container's restart count while this attempt ran (`attempt - 1`).
    pub restart_count: i32,
    /// How it ended, when it has and that is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub state: AttemptState,
    /// The service has archived (or is archiving) this attempt's log.
    pub archived: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptState {
    /// Not started yet (the pod is pending).
    Waiting,
    /// The pod's current attempt while the pod runs (also while its container waits to be
    /// restarted: the pod record keeps no container state).
    Running,
    Terminated,
}

/// A pod with its container's attempts.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodWithAttempts {
    #[serde(flatten)]
    pub pod: PodRecord,
    pub attempts: Vec<Attempt>,
}

/// What the archive knows of one attempt: its number and, once it ended, its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archived {
    pub attempt: i32,
    pub exit_code: Option<i32>,
}

/// The attempts of `pod`: one per restart it reports and one more (the current), plus any the
/// archive holds beyond that (a pod record seen before its last restart).
pub fn attempts(pod: &PodRecord, archived: &[Archived]) -> Vec<Attempt> {
    let last = archived
        .iter()
        .map(|a| a.attempt)
        .max()
        .unwrap_or(1)
        .max(pod.restarts + 1);
    let ended = pod.deleted || matches!(pod.phase.as_str(), "Succeeded" | "Failed");
    (1..=last)
        .map(|attempt| {
            let known = archived.iter().find(|a| a.attempt == attempt);
            let current = attempt == last;
            let state = if !current || ended {
                AttemptState::Terminated
            } else if pod.phase == "Pending" {
                AttemptState::Waiting
            } else {
                AttemptState::Running
            };
            let exit_code = known.and_then(|a| a.exit_code).or_else(|| {
                (current && state == AttemptState::Terminated)
                    .then_some(pod.exit_code)
                    .flatten()
            });
            Attempt {
                attempt,
                restart_count: attempt - 1,
                exit_code,
                state,
                archived: known.is_some(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, restarts: i32, exit_code: Option<i32>, reason: Option<&str>) -> PodRecord {
        PodRecord {
            name: "p".into(),
            uid: "u".into(),
            completion_index: None,
            node_name: None,
            phase: phase.into(),
            exit_code,
            reason: reason.map(Into::into),
            message: None,
            restarts,
            created_at: None,
            started_at: None,
            finished_at: None,
            deleted: false,
        }
    }

    #[test]
    fn a_container_that_failed_once_then_succeeded_has_two_terminated_attempts() {
        let archived = [
            Archived {
                attempt: 1,
                exit_code: Some(1),
            },
            Archived {
                attempt: 2,
                exit_code: None,
            },
        ];
        let list = attempts(&pod("Succeeded", 1, Some(0), None), &archived);
        let summary: Vec<_> = list
            .iter()
            .map(|a| (a.attempt, a.restart_count, a.exit_code, a.state, a.archived))
            .collect();
        assert_eq!(
            summary,
            [
                (1, 0, Some(1), AttemptState::Terminated, true),
                (2, 1, Some(0), AttemptState::Terminated, true),
            ]
        );
    }

    #[test]
    fn a_running_pod_restarted_once_has_a_terminated_and_a_running_attempt() {
        let list = attempts(&pod("Running", 1, None, Some("CrashLoopBackOff")), &[]);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].state, AttemptState::Terminated);
        assert_eq!(list[0].exit_code, None, "not archived: unknown");
        assert_eq!(list[1].state, AttemptState::Running);
        assert!(!list[1].archived);
    }

    #[test]
    fn a_pending_pod_has_one_waiting_attempt() {
        let list = attempts(&pod("Pending", 0, None, None), &[]);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, AttemptState::Waiting);
    }
}
