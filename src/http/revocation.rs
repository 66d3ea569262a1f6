//! Revoked tokens end the streams they opened (`/v1/events`, log follows). Revoking deletes the
//! token and NOTIFYs its id; the process's one notification hub (src/store/notify.rs) fans the
//! ids out to the open streams, so a stream on any replica ends within moments. On a catch-up
//! (the hub reconnected, when a notification may have been missed, or the stream lagged
//! behind), each stream checks its token in the database instead of trusting what it heard.

use crate::store;
use crate::store::notify::{Notifications, Signal};
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The open streams' view of revoked tokens. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    notifications: Notifications,
}

impl Revocations {
    pub fn new(db: PgPool, notifications: Notifications) -> Revocations {
        Revocations {
            inner: Arc::new(Inner { db, notifications }),
        }
    }

    /// Resolves once `token` is revoked; never for `None` (authentication is off). For
    /// `take_until` on a stream opened with that token.
    pub fn ended(&self, token: Option<Uuid>) -> BoxFuture<'static, ()> {
        let Some(token) = token else {
            return futures::future::pending().boxed();
        };
        let this = self.clone();
        async move { this.wait(token).await }.boxed()
    }

    async fn wait(&self, token: Uuid) {
        let mut heard = self
            .inner
            .notifications
            .subscribe(store::tokens::REVOKED_CHANNEL);
        // Revoked between the request's authentication and this subscription?
        if self.gone(token).await {
            return;
        }
        loop {
            match heard.recv().await {
                Signal::Notified(id) if id.parse::<Uuid>().ok() == Some(token) => return,
                Signal::Notified(_) => {}
                Signal::CatchUp => {
                    if self.gone(token).await {
                        return;
                    }
                }
            }
        }
    }

    /// Whether the token no longer exists (a database error keeps the stream: the next
    /// notification or recheck decides).
    async fn gone(&self, token: Uuid) -> bool {
        matches!(
            store::tokens::exists(&self.inner.db, token).await,
            Ok(false)
        )
    }
}
