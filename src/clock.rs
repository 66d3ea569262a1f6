//! Time as the scheduler sees it: a [`Clock`] says what time it is and sleeps until a given
//! moment. The service uses [`SystemClock`]; tests use [`ManualClock`], which only moves when
//! told to and wakes every sleeper it passed, so hours, days and DST transitions are tested
//! without waiting. Only the scheduler takes a clock; everything else keeps real time.

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now() >= at` (at once if it already is).
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// The real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single real sleep: wall-clock jumps (NTP, a suspended VM) are noticed within this.
const MAX_REAL_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let left = (at - Utc::now()).to_std().unwrap_or_default();
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(MAX_REAL_SLEEP)).await;
            }
        })
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance) or
/// [`set`](ManualClock::set) moves it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Moves the clock forward by `by`, waking sleepers whose time came.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by);
    }

    /// Sets the clock (forward or back), waking sleepers whose time came.
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as any ManualClock clone; if all are gone, never wake.
            if now.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_their_time_comes() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        let mut sleeper = tokio::spawn(clock.sleep_until(start + Duration::minutes(10)));

        clock.advance(Duration::minutes(9));
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), &mut sleeper).await;
        assert!(early.is_err(), "still asleep at 9 minutes");

        clock.advance(Duration::minutes(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
            .await
            .expect("awake at 10 minutes")
            .unwrap();
        assert_eq!(clock.now(), start + Duration::minutes(10));
    }

    #[tokio::test]
    async fn sleeping_until_a_past_time_returns_at_once() {
        let clock = SystemClock;
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            clock.sleep_until(Utc::now() - Duration::seconds(5)),
        )
        .await
        .unwrap();
    }
}
