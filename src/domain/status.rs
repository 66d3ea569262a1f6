//! The run status state machine. Every allowed transition is listed in [`RunStatus::can_become`];
//! the store refuses any other, so no code path can move a run out of a final state, and the only
//! way back from `pending` or `running` is to `admitting`: Kueue suspending the Job again.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum RunStatus {
    /// Recorded, waiting for the launcher to create its Job.
    Queued,
    /// The launcher has claimed it and is creating its Job.
    Creating,
    /// The Job exists but Kueue holds it suspended until its Workload is admitted (the run names
    /// a `queueName`); also after Kueue evicts a running Job. Never timed out, never `lost` while
    /// its Job exists.
    Admitting,
    /// The Job exists; no pod of it runs yet.
    Pending,
    /// At least one pod of the Job is running.
    Running,
    /// The Job completed.
    Succeeded,
    /// The Job failed, or could not be created.
    Failed,
    /// Cancelled by a user; its Job (if any) was deleted.
    Cancelled,
    /// Its Job disappeared from the cluster before it finished.
    Lost,
}

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Queued,
        RunStatus::Creating,
        RunStatus::Admitting,
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Creating => "creating",
            RunStatus::Admitting => "admitting",
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Lost => "lost",
        }
    }

    /// A final status never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Lost
        )
    }

    /// Statuses in which the run may have a Job in the cluster.
    pub fn is_active(self) -> bool {
        !self.is_final()
    }

    /// The one table of allowed transitions.
    ///
    /// Tracking may skip observations (a watch can miss `running` entirely), so a live status may
    /// jump forward to any later live or final status, and a final status is final. `queued`
    /// cannot become `admitting`/`pending`/`running` without passing `creating`, because only the
    /// launcher creates Jobs. The one move back: `pending` or `running` to `admitting`, when
    /// Kueue suspends the Job again (eviction, preemption); the Job controller then removes its
    /// pods without counting them as failed, and the run waits for admission once more.
    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Queued, Creating | Failed | Cancelled)
                | (
                    Creating,
                    Queued | Admitting | Pending | Running | Succeeded | Failed | Cancelled | Lost
                )
                | (
                    Admitting,
                    Pending | Running | Succeeded | Failed | Cancelled | Lost
                )
                | (
                    Pending,
                    Admitting | Running | Succeeded | Failed | Cancelled | Lost
                )
                | (Running, Admitting | Succeeded | Failed | Cancelled | Lost)
        )
    }

    /// Every status a run in `self` may move to, in declaration order.
    pub fn successors(self) -> Vec<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .filter(|next| self.can_become(*next))
            .collect()
    }

    /// Every status that may move to `self`: what a writer of `self` expects to find.
    pub fn predecessors(self) -> Vec<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .filter(|from| from.can_become(self))
            .collect()
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}; expected one of {}",
                    RunStatus::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus::{self, *};

    #[test]
    fn the_transition_table_is_exactly_this() {
        let expected: [(RunStatus, &[RunStatus]); 9] = [
            (Queued, &[Creating, Failed, Cancelled]),
            (
                Creating,
                &[
                    Queued, Admitting, Pending, Running, Succeeded, Failed, Cancelled, Lost,
                ],
            ),
            (
                Admitting,
                &[Pending, Running, Succeeded, Failed, Cancelled, Lost],
            ),
            (
                Pending,
                &[Admitting, Running, Succeeded, Failed, Cancelled, Lost],
            ),
            (Running, &[Admitting, Succeeded, Failed, Cancelled, Lost]),
            (Succeeded, &[]),
            (Failed, &[]),
            (Cancelled, &[]),
            (Lost, &[]),
        ];
        for (from, to) in expected {
            assert_eq!(from.successors(), to, "successors of {from}");
        }
    }

    #[test]
    fn final_statuses_have_no_successors_and_live_ones_do() {
        for status in RunStatus::ALL {
            assert_eq!(
                status.is_final(),
                status.successors().is_empty(),
                "{status}"
            );
        }
    }

    #[test]
    fn predecessors_are_exactly_the_statuses_that_may_become_it() {
        for to in RunStatus::ALL {
            for from in RunStatus::ALL {
                assert_eq!(
                    to.predecessors().contains(&from),
                    from.successors().contains(&to),
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(Pending.predecessors(), [Creating, Admitting]);
        assert_eq!(Queued.predecessors(), [Creating]);
        assert_eq!(Admitting.predecessors(), [Creating, Pending, Running]);
    }

    #[test]
    fn no_status_becomes_itself() {
        for status in RunStatus::ALL {
            assert!(!status.can_become(status), "{status}");
        }
    }

    #[test]
    fn only_the_launcher_path_leaves_queued_for_the_cluster() {
        assert!(!Queued.can_become(Admitting));
        assert!(!Queued.can_become(Pending));
        assert!(!Queued.can_become(Running));
        assert!(!Queued.can_become(Succeeded));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        assert!("done".parse::<RunStatus>().is_err());
    }
}
