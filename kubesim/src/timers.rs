//! The control loop's timers: what the simulated controllers and the kubelet want done at a
//! given time (start delays, deadlines, Job re-syncs, TTLs, log removal, restart back-offs).
//! Depends only on `store` (object keys); both `controller` and `kubelet` schedule here and
//! the loop in `controller` pops them, so neither imports the other for it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::ObjKey;

/// Something the loop must do at a given time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Start delay of a bound pod elapsed.
    StartPod(ObjKey, String),
    /// Pod activeDeadlineSeconds elapsed.
    PodDeadline(ObjKey, String),
    /// Re-sync a Job (its activeDeadlineSeconds or TTL may have passed).
    SyncJob(ObjKey),
    /// Container garbage collection of a deleted pod (by uid): its logs go.
    RemoveLogs(String),
    /// A failed container's restart back-off elapsed.
    RestartContainer(ObjKey, String),
}

/// A min-heap of timers. A Job re-sync is kept only once per Job (the earliest): the sync it
/// triggers schedules the next one, so later duplicates would be redundant.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    seq: u64,
    job_syncs: HashMap<ObjKey, Instant>,
}

impl Timers {
    pub fn add(&mut self, after: Duration, t: Timer) {
        // Deadlines come from user input (activeDeadlineSeconds is an int64): clamp them so
        // Instant arithmetic cannot overflow and take the loop down.
        let after = after.min(Duration::from_secs(10 * 365 * 24 * 3600));
        self.at(Instant::now() + after, t);
    }

    pub fn at(&mut self, when: Instant, t: Timer) {
        if let Timer::SyncJob(key) = &t {
            match self.job_syncs.get(key) {
                Some(&pending) if pending <= when => return,
                _ => {
                    self.job_syncs.insert(key.clone(), when);
                }
            }
        }
        self.seq += 1;
        self.heap.push(Reverse((when, self.seq, t)));
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next_deadline()? <= now {
            let t = self.heap.pop().map(|Reverse((when, _, t))| (when, t));
            if let Some((when, Timer::SyncJob(key))) = &t {
                if self.job_syncs.get(key) == Some(when) {
                    self.job_syncs.remove(key);
                }
            }
            t.map(|(_, t)| t)
        } else {
            None
        }
    }
}
