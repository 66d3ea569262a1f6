//! Another look after a failure: items (Jobs, a reconcile) whose handling failed wait here with
//! per-item capped exponential backoff, instead of waiting for an event that may never come (a
//! finished Job sends none). One entry per key: a newer failure of the same key replaces the item
//! and keeps counting attempts, and a success of the key drops it.

use backon::BackoffBuilder;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::time::{delay_queue, DelayQueue};

pub struct Requeue<T> {
    queue: DelayQueue<String>,
    entries: HashMap<String, Entry<T>>,
    min_delay: Duration,
    max_delay: Duration,
}

struct Entry<T> {
    item: T,
    /// Where it waits in the queue; `None` once handed out by [`Requeue::next`].
    key: Option<delay_queue::Key>,
    attempts: u32,
}

impl<T> Requeue<T> {
    pub fn new(min_delay: Duration, max_delay: Duration) -> Self {
        Requeue {
            queue: DelayQueue::new(),
            entries: HashMap::new(),
            min_delay,
            max_delay,
        }
    }

    /// `item` failed: look at it again after the next backoff delay of its key.
    pub fn failed(&mut self, id: String, item: T) {
        let attempts = self.entries.get(&id).map_or(0, |e| e.attempts) + 1;
        let delay = backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay);
        let key = match self.entries.get(&id).and_then(|e| e.key.as_ref()) {
            Some(key) => {
                self.queue.reset(key, delay);
                *key
            }
            None => self.queue.insert(id.clone(), delay),
        };
        self.entries.insert(
            id,
            Entry {
                item,
                key: Some(key),
                attempts,
            },
        );
    }

    /// `id` was handled: no other look is needed.
    pub fn succeeded(&mut self, id: &str) {
        if let Some(key) = self.entries.remove(id).and_then(|e| e.key) {
            self.queue.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next item whose delay is over (pending while there is none). The item stays counted
    /// until [`Requeue::succeeded`] or the next [`Requeue::failed`] of its key.
    pub async fn next(&mut self) -> (String, T)
    where
        T: Clone,
    {
        loop {
            if self.queue.is_empty() {
                std::future::pending::<()>().await;
            }
            let Some(expired) = futures::StreamExt::next(&mut self.queue).await else {
                continue;
            };
            let id = expired.into_inner();
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.key = None;
                return (id, entry.item.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_item_comes_back_after_its_delay_until_it_succeeds() {
        let mut requeue = Requeue::new(Duration::from_millis(50), Duration::from_millis(200));
        requeue.failed("a".into(), 1);
        let started = tokio::time::Instant::now();
        assert_eq!(requeue.next().await, ("a".to_string(), 1));
        assert!(started.elapsed() >= Duration::from_millis(50));

        // A newer failure of the same key replaces the item; one entry per key.
        requeue.failed("a".into(), 2);
        requeue.failed("a".into(), 3);
        assert_eq!(requeue.len(), 1);
        assert_eq!(requeue.next().await.1, 3);

        requeue.succeeded("a");
        assert!(requeue.is_empty());
        let nothing = tokio::time::timeout(Duration::from_millis(500), requeue.next()).await;
        assert!(nothing.is_err(), "a handled item does not come back");
    }
}
