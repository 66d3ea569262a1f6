//! The process's fan-out of stored run and task events, for `GET /v1/events`.
//!
//! On every notification of the event channel (from the process's one
//! [`Notifications`](super::notify::Notifications) hub), or a catch-up, or a poll, the feed reads
//! the new rows once and broadcasts them; each client replays what it missed from the tables and
//! then follows the broadcast. Notifications are only wake-ups: the feed always reads every row
//! after the last one it sent, so coalesced or lost notifications lose nothing. The feed never
//! acts on the cluster and writes nothing.

use super::events::{self, StoredEvent};
use super::notify::{Notifications, Subscription};
use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, OnceCell};
use tokio_util::sync::CancellationToken;

/// Rows read at once, by the feed and by a client's replay.
pub const PAGE: i64 = 500;
/// How long the feed waits for a missing id (a transaction that took an id but has not committed
/// yet) before it takes the id for a rolled-back one and moves on.
const GAP_WAIT: Duration = Duration::from_secs(2);
/// Safety-net poll, for while the notification hub is reconnecting.
const POLL: Duration = Duration::from_secs(1);

/// The process's fan-out of events. Cheap to clone; starts reading on its first subscriber.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    notifications: Notifications,
    sender: broadcast::Sender<Arc<StoredEvent>>,
    /// Every event up to this id has been broadcast (or predates the feed).
    high_water: AtomicI64,
    started: OnceCell<()>,
    closed: CancellationToken,
}

impl EventHub {
    pub fn new(db: PgPool, notifications: Notifications) -> EventHub {
        EventHub {
            inner: Arc::new(Inner {
                db,
                notifications,
                sender: broadcast::channel(1024).0,
                high_water: AtomicI64::new(0),
                started: OnceCell::new(),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Ends every stream (at shutdown, so that open streams do not hold the server up).
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Cancelled when the feed is closed.
    pub fn closed(&self) -> CancellationToken {
        self.inner.closed.clone()
    }

    /// The pool the feed reads from (for a client's replay).
    pub fn db(&self) -> &PgPool {
        &self.inner.db
    }

    /// Receives every event broadcast from now on. Subscribe before reading
    /// [`high_water`](Self::high_water): what is broadcast after that is in the receiver, and
    /// what was broadcast before is in the tables.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<StoredEvent>>, sqlx::Error> {
        let inner = &self.inner;
        inner
            .started
            .get_or_try_init(|| async {
                // Subscribed before the high-water mark is read, so nothing falls in between.
                let wake = inner.notifications.subscribe(events::CHANNEL);
                let last = events::last_id(&inner.db).await?;
                inner.high_water.store(last, Ordering::SeqCst);
                tokio::spawn(pump(inner.clone(), wake));
                Ok::<_, sqlx::Error>(())
            })
            .await?;
        Ok(inner.sender.subscribe())
    }

    /// Every event up to this id has been broadcast.
    pub fn high_water(&self) -> i64 {
        self.inner.high_water.load(Ordering::SeqCst)
    }
}

/// The feed's loop: on every notification (or catch-up, or poll), broadcasts the rows after the
/// high-water mark, in id order, holding back behind a missing id for up to [`GAP_WAIT`].
async fn pump(inner: Arc<Inner>, mut wake: Subscription) {
    let mut gap: Option<(i64, Instant)> = None;
    loop {
        // A closed pool (the process is stopping) ends the feed.
        if inner.db.is_closed() {
            return;
        }
        let waiting = match broadcast_new(&inner, &mut gap).await {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "events: reading new events failed; retrying");
                false
            }
        };
        let poll = if waiting {
            Duration::from_millis(50)
        } else {
            POLL
        };
        tokio::select! {
            _ = inner.closed.cancelled() => return,
            _ = wake.recv() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Broadcasts what can be; returns true while held back behind a missing id.
async fn broadcast_new(
    inner: &Inner,
    gap: &mut Option<(i64, Instant)>,
) -> Result<bool, sqlx::Error> {
    loop {
        let high_water = inner.high_water.load(Ordering::SeqCst);
        let rows = events::after(&inner.db, high_water, i64::MAX, None, PAGE).await?;
        let full = rows.len() as i64 == PAGE;
        for row in rows {
            let expected = inner.high_water.load(Ordering::SeqCst) + 1;
            if row.id != expected {
                let (at, since) = *gap.get_or_insert((expected, Instant::now()));
                if at != expected {
                    *gap = Some((expected, Instant::now()));
                    return Ok(true);
                }
                if since.elapsed() < GAP_WAIT {
                    return Ok(true);
                }
                tracing::debug!(
                    missing_from = expected,
                    up_to = row.id - 1,
                    "events: skipping ids that never committed"
                );
            }
            *gap = None;
            // Raised before sending: a client that subscribes in between replays this row from
            // the table and drops the broadcast copy as already sent.
            inner.high_water.store(row.id, Ordering::SeqCst);
            let _ = inner.sender.send(Arc::new(row));
        }
        if !full {
            return Ok(false);
        }
    }
}
