//! Idempotency-Key handling for POSTs that create something: the same key with the same request
//! replays the first answer; with a different request it is refused.

use crate::domain::Caller;
use crate::error::{Error, Result};
use crate::store::idempotency::{self, Claim};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// What [`Idempotent::claim_answer`] found.
pub enum Claimed {
    /// The key is new: do the work, then record it.
    New,
    /// The same key and request were answered with this body.
    Replay(serde_json::Value),
    /// The same key came with a different request.
    Mismatch,
}

pub struct Idempotent {
    scope: String,
    key: String,
    hash: Vec<u8>,
}

impl Idempotent {
    /// `operation` names the operation (method and concrete path); `request` is the parsed
    /// request, hashed in its canonical form so whitespace and key order don't matter. Keys
    /// belong to the caller (its token; everyone shares one space only when authentication is
    /// off), so nobody can have another caller's answer replayed, or block its key.
    pub fn new(
        key: Option<String>,
        caller: &Caller,
        operation: String,
        request: &impl Serialize,
    ) -> Option<Self> {
        let key = key?;
        let canonical = serde_json::to_vec(request).expect("requests serialize");
        let owner = caller
            .token_id
            .map_or_else(|| "anonymous".to_string(), |id| format!("token:{id}"));
        Some(Idempotent {
            scope: format!("{owner} {operation}"),
            key,
            hash: Sha256::digest(canonical).to_vec(),
        })
    }

    /// Claims the key in `conn`'s transaction; `Some` is the earlier answer to send again.
    pub async fn claim(&self, conn: &mut PgConnection) -> Result<Option<Response>> {
        match idempotency::claim(conn, &self.scope, &self.key, &self.hash).await? {
            Claim::New => Ok(None),
            Claim::Mismatch => Err(Error::IdempotencyMismatch),
            Claim::Replay {
                status,
                body,
                location,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let mut response = (status, axum::Json(body)).into_response();
                let headers = response.headers_mut();
                headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
                if let Some(value) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    headers.insert(header::LOCATION, value);
                }
                Ok(Some(response))
            }
        }
    }

    /// [`Idempotent::claim`] for one part of a larger answer (a run of a batch): the earlier
    /// answer's body, to be sent again within the new answer.
    pub async fn claim_answer(&self, conn: &mut PgConnection) -> Result<Claimed> {
        Ok(
            match idempotency::claim(conn, &self.scope, &self.key, &self.hash).await? {
                Claim::New => Claimed::New,
                Claim::Mismatch => Claimed::Mismatch,
                Claim::Replay { body, .. } => Claimed::Replay(body),
            },
        )
    }

    /// Records the answer, in the same transaction as the work.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        status: StatusCode,
        body: &impl Serialize,
        location: Option<&str>,
    ) -> Result<()> {
        let body = serde_json::to_value(body).map_err(anyhow::Error::from)?;
        idempotency::complete(
            conn,
            &self.scope,
            &self.key,
            status.as_u16(),
            &body,
            location,
        )
        .await?;
        Ok(())
    }
}
