//! The process's one notification hub: a single `PgListener` LISTENs on every channel the
//! service uses and fans each notification out to the subscribers of its channel (the launcher,
//! the canceller, the scheduler, the event feed, the token revocations), so a replica pins one
//! connection for notifications, not one per loop.
//!
//! Notifications are only wake-ups. While the connection is down whatever was announced is lost,
//! so after every successful LISTEN (the first one and each one after a dropped connection) every
//! subscriber receives [`Signal::CatchUp`] and looks for work itself; a subscriber too slow for
//! the fan-out gets a catch-up too. Subscribers keep their own poll as a safety net while the
//! database is unreachable.

use super::{events, outbox, runs, schedules, tokens};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Every channel the hub LISTENs on.
pub const CHANNELS: [&str; 6] = [
    runs::QUEUED_CHANNEL,
    outbox::CHANNEL,
    runs::CANCELLED_CHANNEL,
    schedules::TASK_CHANGED_CHANNEL,
    events::CHANNEL,
    tokens::REVOKED_CHANNEL,
];

/// Pause before connecting again after the database refused.
const RETRY: Duration = Duration::from_secs(1);
/// Signals buffered per channel before a slow subscriber is told to catch up instead.
const CAPACITY: usize = 256;

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A NOTIFY on the channel, with its payload.
    Notified(String),
    /// Notifications may have been missed (the listener (re)connected, or the subscriber fell
    /// behind): look for work without relying on them.
    CatchUp,
}

/// The hub. Cheap to clone; create one per process and share it. It connects on the first
/// subscription and reconnects by itself.
#[derive(Clone)]
pub struct Notifications {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    channels: HashMap<&'static str, broadcast::Sender<Signal>>,
    started: AtomicBool,
}

/// One subscriber's view of one channel.
pub struct Subscription {
    receiver: broadcast::Receiver<Signal>,
}

impl Notifications {
    pub fn new(db: PgPool) -> Notifications {
        let channels = CHANNELS
            .iter()
            .map(|channel| (*channel, broadcast::channel(CAPACITY).0))
            .collect();
        Notifications {
            inner: Arc::new(Inner {
                db,
                channels,
                started: AtomicBool::new(false),
            }),
        }
    }

    /// Subscribes to one of [`CHANNELS`] (starting the hub if this is its first subscriber).
    ///
    /// # Panics
    /// On a channel not in [`CHANNELS`] (a programming error).
    pub fn subscribe(&self, channel: &str) -> Subscription {
        let sender = self
            .inner
            .channels
            .get(channel)
            .unwrap_or_else(|| panic!("the notification hub does not LISTEN on {channel}"));
        let receiver = sender.subscribe();
        if !self.inner.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(self.inner.clone()));
        }
        Subscription { receiver }
    }
}

impl Subscription {
    /// The next signal. Cancel-safe (for `select!`).
    pub async fn recv(&mut self) -> Signal {
        match self.receiver.recv().await {
            Ok(signal) => signal,
            Err(broadcast::error::RecvError::Lagged(_)) => Signal::CatchUp,
            // The hub lives as long as its senders, which this subscription's hub holds.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// Takes every signal already waiting, for a subscriber that acts on all of them at once
    /// (a launcher that claims whatever is queued needs one wake-up, not one per run queued
    /// meanwhile). True when one of them was a [`Signal::CatchUp`].
    pub fn drain(&mut self) -> bool {
        let mut catch_up = false;
        loop {
            match self.receiver.try_recv() {
                Ok(Signal::CatchUp) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    catch_up = true
                }
                Ok(Signal::Notified(_)) => {}
                Err(_) => return catch_up,
            }
        }
    }
}

impl Inner {
    fn catch_up(&self) {
        for sender in self.channels.values() {
            let _ = sender.send(Signal::CatchUp);
        }
    }
}

/// The hub's loop: one connection, every channel; a catch-up after every LISTEN.
async fn listen(inner: Arc<Inner>) {
    let mut listener: Option<PgListener> = None;
    loop {
        // A closed pool (the process is stopping) ends the hub.
        if inner.db.is_closed() {
            return;
        }
        let Some(active) = listener.as_mut() else {
            match connect(&inner.db).await {
                Ok(new) => {
                    listener = Some(new);
                    // Listening now: whatever was announced before is looked for by everyone.
                    inner.catch_up();
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error::chain(&error), "notifications: cannot LISTEN; retrying (loops poll meanwhile)");
                    tokio::time::sleep(RETRY).await;
                }
            }
            continue;
        };
        match active.try_recv().await {
            Ok(Some(notification)) => {
                if let Some(sender) = inner.channels.get(notification.channel()) {
                    let _ = sender.send(Signal::Notified(notification.payload().to_string()));
                }
            }
            // The connection dropped and sqlx has already connected and LISTENed again; what
            // was announced in between is lost.
            Ok(None) => {
                tracing::info!("notifications: the LISTEN connection dropped and was re-established; catching up");
                inner.catch_up();
            }
            Err(error) => {
                listener = None;
                if !inner.db.is_closed() {
                    tracing::warn!(error = %crate::error::chain(&error), "notifications: the LISTEN connection failed; reconnecting");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

async fn connect(db: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen_all(CHANNELS).await?;
    Ok(listener)
}
