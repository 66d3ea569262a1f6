//! Revoked tokens end the streams they opened (`/v1/events`, log follows). Revoking deletes the
//! token and NOTIFYs its id; one listener per process fans the ids out to the open streams, so
//! a stream on any replica ends within moments. After the listener reconnects (when a
//! notification may have been missed) and when a stream lags behind, each stream checks its
//! token in the database instead of trusting what it heard.

use crate::store;
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, OnceCell};
use uuid::Uuid;

/// Sent when every stream should check its token itself (the listener reconnected).
const RECHECK: Uuid = Uuid::nil();

/// The process's fan-out of revoked token ids. Cheap to clone; listens from its first stream.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    sender: broadcast::Sender<Uuid>,
    started: OnceCell<()>,
}

impl Revocations {
    pub fn new(db: PgPool) -> Revocations {
        Revocations {
            inner: Arc::new(Inner {
                db,
                sender: broadcast::channel(256).0,
                started: OnceCell::new(),
            }),
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
        let inner = &self.inner;
        inner
            .started
            .get_or_init(|| async {
                tokio::spawn(listen(inner.db.clone(), inner.sender.clone()));
            })
            .await;
        let mut receiver = inner.sender.subscribe();
        // Revoked between the request's authentication and this subscription?
        if self.gone(token).await {
            return;
        }
        loop {
            match receiver.recv().await {
                Ok(id) if id == token => return,
                Ok(RECHECK) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if self.gone(token).await {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return futures::future::pending().await
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

/// The listener: forwards every revoked id; after a reconnect, asks every stream to recheck.
async fn listen(db: PgPool, sender: broadcast::Sender<Uuid>) {
    let mut listener: Option<PgListener> = None;
    loop {
        if db.is_closed() {
            return;
        }
        let Some(active) = listener.as_mut() else {
            match PgListener::connect_with(&db).await {
                Ok(mut new) => match new.listen(store::tokens::REVOKED_CHANNEL).await {
                    Ok(()) => {
                        listener = Some(new);
                        let _ = sender.send(RECHECK);
                    }
                    Err(error) => pause(&error).await,
                },
                Err(error) => pause(&error).await,
            }
            continue;
        };
        match active.try_recv().await {
            Ok(Some(notification)) => {
                if let Ok(id) = notification.payload().parse::<Uuid>() {
                    let _ = sender.send(id);
                }
            }
            // The connection dropped, and what was announced meanwhile is lost: listen
            // afresh, then every stream checks its token (after LISTEN, so nothing slips
            // between the check and the listening).
            Ok(None) => listener = None,
            Err(error) => {
                listener = None;
                pause(&error).await;
            }
        }
    }
}

async fn pause(error: &sqlx::Error) {
    tracing::warn!(error = %error, "revocations: cannot LISTEN; retrying");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
