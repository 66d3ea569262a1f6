//! The outcome of each completion index of an Indexed run across the run and the one-index
//! reruns `rerun?only=failed-indexes` started for it (pure: the store reads the pods and runs).
//!
//! Kubernetes cannot start an Indexed Job at chosen indexes, and in this service a run is
//! exactly one Job, so a partial rerun is one linked run per index, each a NonIndexed Job of
//! completions 1 whose pod sees its original `JOB_COMPLETION_INDEX` (docs/retries.md).

use super::RunStatus;
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// What became of one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum IndexStatus {
    /// A pod of the index succeeded (in the run or in a rerun).
    Succeeded,
    /// A rerun of the index (or the run itself) has not finished yet.
    Running,
    /// Every attempt failed.
    Failed,
    /// No pod ever ran it (the Job failed or was cancelled first).
    NotRun,
}

/// One index's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexOutcome {
    pub index: i32,
    pub status: IndexStatus,
    /// The run that decided the outcome: the one that succeeded, else the newest attempt.
    pub run: Uuid,
    /// Pods that ran this index, in the run and its reruns.
    pub attempts: i32,
}

/// Every index of a run, with counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexesView {
    pub completions: i32,
    pub succeeded: i32,
    pub running: i32,
    pub failed: i32,
    pub not_run: i32,
    pub indexes: Vec<IndexOutcome>,
}

/// A pod as the index view needs it.
#[derive(Debug, Clone)]
pub struct IndexPod {
    pub run: Uuid,
    pub index: Option<i32>,
    pub phase: String,
}

/// A one-index rerun as the index view needs it.
#[derive(Debug, Clone)]
pub struct IndexRerun {
    pub run: Uuid,
    pub index: i32,
    pub status: RunStatus,
}

/// The outcome of each index `0..completions` of `original` (in `original_status`), given the
/// pods of the run and of its reruns, and the reruns oldest first.
pub fn outcomes(
    original: Uuid,
    original_status: RunStatus,
    completions: i32,
    pods: &[IndexPod],
    reruns: &[IndexRerun],
) -> IndexesView {
    let mut view = IndexesView {
        completions,
        succeeded: 0,
        running: 0,
        failed: 0,
        not_run: 0,
        indexes: Vec::new(),
    };
    // Grouped once by index (a run may have up to 100,000 completions).
    let mut pods_by_index: HashMap<i32, Vec<&IndexPod>> = HashMap::new();
    for pod in pods {
        if let Some(index) = pod.index {
            pods_by_index.entry(index).or_default().push(pod);
        }
    }
    let mut reruns_by_index: HashMap<i32, Vec<&IndexRerun>> = HashMap::new();
    for rerun in reruns {
        reruns_by_index.entry(rerun.index).or_default().push(rerun);
    }
    for index in 0..completions.max(0) {
        let of_index: &[&IndexPod] = pods_by_index.get(&index).map_or(&[], |v| v);
        let attempts = of_index.len() as i32;
        let reruns_of: &[&IndexRerun] = reruns_by_index.get(&index).map_or(&[], |v| v);
        let won = of_index
            .iter()
            .find(|p| p.phase == "Succeeded")
            .map(|p| p.run)
            .or_else(|| {
                reruns_of
                    .iter()
                    .find(|r| r.status == RunStatus::Succeeded)
                    .map(|r| r.run)
            });
        let newest = reruns_of.last().map(|r| r.run).unwrap_or(original);
        let (status, run) = if let Some(run) = won {
            (IndexStatus::Succeeded, run)
        } else if reruns_of.iter().any(|r| !r.status.is_final())
            || (reruns_of.is_empty() && !original_status.is_final())
        {
            (IndexStatus::Running, newest)
        } else if attempts > 0 || !reruns_of.is_empty() {
            (IndexStatus::Failed, newest)
        } else {
            (IndexStatus::NotRun, newest)
        };
        match status {
            IndexStatus::Succeeded => view.succeeded += 1,
            IndexStatus::Running => view.running += 1,
            IndexStatus::Failed => view.failed += 1,
            IndexStatus::NotRun => view.not_run += 1,
        }
        view.indexes.push(IndexOutcome {
            index,
            status,
            run,
            attempts,
        });
    }
    view
}

/// The template of a run that reruns `index` of an Indexed run: a NonIndexed Job of completions
/// 1 (its pod gets `JOB_COMPLETION_INDEX` and the completion-index annotation and label of
/// `index`). The per-index retry budget becomes the Job's `backoffLimit`, and a `FailIndex`
/// rule a `FailJob` one (failing the only index fails the Job).
pub fn index_template(original: &super::RunTemplate, index: i32) -> super::RunTemplate {
    let mut t = original.clone();
    t.completion_mode = None;
    t.completions = Some(1);
    t.parallelism = None;
    if let Some(per_index) = t.backoff_limit_per_index.take() {
        t.backoff_limit = Some(per_index);
        if let Some(retry) = t.retry.as_mut() {
            retry.on_failure = None;
        }
    }
    t.max_failed_indexes = None;
    if let Some(policy) = t.pod_failure_policy.as_mut() {
        for rule in &mut policy.rules {
            if rule.action == "FailIndex" {
                rule.action = "FailJob".into();
            }
        }
    }
    t.completion_index = Some(index);
    t
}

impl IndexesView {
    /// The indexes a partial rerun runs again: those that failed or never ran.
    pub fn to_rerun(&self) -> Vec<i32> {
        self.indexes
            .iter()
            .filter(|o| matches!(o.status, IndexStatus::Failed | IndexStatus::NotRun))
            .map(|o| o.index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(run: Uuid, index: i32, phase: &str) -> IndexPod {
        IndexPod {
            run,
            index: Some(index),
            phase: phase.into(),
        }
    }

    #[test]
    fn an_index_that_failed_and_succeeded_in_its_rerun_counts_as_succeeded_with_both_attempts() {
        let (original, rerun) = (Uuid::now_v7(), Uuid::now_v7());
        let pods = [
            pod(original, 0, "Succeeded"),
            pod(original, 1, "Failed"),
            pod(rerun, 1, "Succeeded"),
        ];
        let reruns = [IndexRerun {
            run: rerun,
            index: 1,
            status: RunStatus::Succeeded,
        }];
        let view = outcomes(original, RunStatus::Failed, 3, &pods, &reruns);
        assert_eq!((view.succeeded, view.failed, view.not_run), (2, 0, 1));
        assert_eq!(view.indexes[1].run, rerun);
        assert_eq!(view.indexes[1].attempts, 2);
        assert_eq!(view.to_rerun(), [2]);
    }

    #[test]
    fn an_index_whose_rerun_is_unfinished_is_running_and_not_rerun_again() {
        let (original, rerun) = (Uuid::now_v7(), Uuid::now_v7());
        let pods = [pod(original, 0, "Failed")];
        let reruns = [IndexRerun {
            run: rerun,
            index: 0,
            status: RunStatus::Pending,
        }];
        let view = outcomes(original, RunStatus::Failed, 1, &pods, &reruns);
        assert_eq!(view.indexes[0].status, IndexStatus::Running);
        assert!(view.to_rerun().is_empty());
    }
}
