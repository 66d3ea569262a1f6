//! A small cache of final runs, as the JSON `GET /v1/runs/{id}` answers with (issue 15: a read
//! of a finished run, the most common one, costs no query and no serialization).
//!
//! Sound because a final run never changes: the state machine lets no status out of a final
//! one, and every other write to a run skips final runs (the tracker's observed counts, the
//! launcher's bookkeeping, waiting reasons). Only pruning removes one: this replica's pruner
//! forgets what it deletes, and an entry lives at most [`TTL`], so a run pruned by another
//! replica is answered 404 here within that time. Live runs are never cached.

use crate::domain::Run;
use bytes::Bytes;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest time an entry is served (the delay before another replica's pruning shows here).
pub const TTL: Duration = Duration::from_secs(2);
/// Entries kept (about a kilobyte each).
const CAPACITY: usize = 1024;

/// A cached final run: what the access check needs and the JSON answered.
#[derive(Debug)]
pub struct FinalRun {
    pub task: Option<String>,
    pub json: Bytes,
    at: Instant,
}

/// The process's cache. Cheap to clone.
#[derive(Clone)]
pub struct FinalRuns {
    entries: Arc<Mutex<LruCache<Uuid, Arc<FinalRun>>>>,
}

impl Default for FinalRuns {
    fn default() -> Self {
        FinalRuns {
            entries: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(CAPACITY).expect("a positive capacity"),
            ))),
        }
    }
}

impl FinalRuns {
    /// The run `id` if it is cached and fresh.
    pub fn get(&self, id: Uuid) -> Option<Arc<FinalRun>> {
        let mut entries = self.lock();
        match entries.get(&id) {
            Some(entry) if entry.at.elapsed() < TTL => Some(entry.clone()),
            Some(_) => {
                entries.pop(&id);
                None
            }
            None => None,
        }
    }

    /// Keeps `run` with its JSON if it is final and nothing in it changes any more: a live run
    /// is left out, and so is a final run whose commit status report has not reached the host
    /// yet (its `report` changes when the reporter delivers the final state).
    pub fn keep(&self, run: &Run, json: Bytes) {
        let report_settled = run
            .report
            .as_ref()
            .is_none_or(|report| report.last_delivered.as_deref() == Some(run.status.as_str()));
        if run.status.is_final() && report_settled {
            let entry = FinalRun {
                task: run.task.clone(),
                json,
                at: Instant::now(),
            };
            self.lock().put(run.id, Arc::new(entry));
        }
    }

    /// Forgets runs that were deleted.
    pub fn forget(&self, ids: &[Uuid]) {
        let mut entries = self.lock();
        for id in ids {
            entries.pop(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Arc<FinalRun>>> {
        // A panic while holding the lock leaves a consistent map (each call is one operation).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
