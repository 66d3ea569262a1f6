//! Idempotency-Key records. A key is claimed inside the transaction that does the work, so a
//! concurrent request with the same key waits on the row lock and then sees the finished answer:
//! there is never a half-done state to observe.

use sqlx::PgConnection;

pub enum Claim {
    /// The key is new: do the work, then [`complete`] in the same transaction.
    New,
    /// The same key and the same request were seen: answer this again.
    Replay {
        status: u16,
        body: serde_json::Value,
        location: Option<String>,
    },
    /// The same key came with a different request.
    Mismatch,
}

pub async fn claim(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let (hash, status, body, location): (
        Vec<u8>,
        Option<i16>,
        Option<serde_json::Value>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT request_hash, response_status, response_body, response_location
         FROM idempotency_keys
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    match (status, body) {
        (Some(status), Some(body)) => Ok(Claim::Replay {
            status: status as u16,
            body,
            location,
        }),
        // Unreachable while claim and complete share a transaction; treat as a mismatch
        // rather than doing the work twice.
        _ => Ok(Claim::Mismatch),
    }
}

pub async fn complete(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    status: u16,
    body: &serde_json::Value,
    location: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys
         SET response_status = $3, response_body = $4, response_location = $5
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(status as i16)
    .bind(body)
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}
