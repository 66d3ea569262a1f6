//! SQL for archived pod logs: claiming a pod's capture, appending chunks (head kept, tail as a
//! rolling window under the per-pod cap), finishing, and reading chunks back.

use crate::domain::loglines::{split_timestamp, Anchor};
use chrono::{DateTime, Utc};
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use sqlx::{PgConnection, PgExecutor};
use std::io::{Read, Write};
use uuid::Uuid;

/// A pod's archive, as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PodLog {
    pub run_id: Uuid,
    pub pod_name: String,
    pub state: String,
    pub detail: Option<String>,
    pub lines: i64,
    pub bytes: i64,
    pub head_bytes: i64,
    pub tail_bytes: i64,
    pub dropped_lines: i64,
    pub dropped_bytes: i64,
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "run_id, pod_name, state, detail, lines, bytes, head_bytes, tail_bytes, \
     dropped_lines, dropped_bytes, completed_at";

/// Claims the capture of a pod's log for `owner` (new, lapsed, or already ours). `None` when
/// another process holds it, when it is already finished, or when the run does not exist.
pub async fn claim(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    owner: &str,
    lease: std::time::Duration,
) -> Result<Option<PodLog>, sqlx::Error> {
    let result = sqlx::query_as(&format!(
        "INSERT INTO pod_logs (run_id, pod_name, lease_owner, lease_until)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         ON CONFLICT (run_id, pod_name) DO UPDATE SET
             lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until
         WHERE pod_logs.state = 'capturing'
           AND (pod_logs.lease_until < now() OR pod_logs.lease_owner = EXCLUDED.lease_owner)
         RETURNING {COLUMNS}"
    ))
    .bind(run_id)
    .bind(pod_name)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => Ok(None),
        other => other,
    }
}

/// Lines to append to an archive.
pub struct Append<'a> {
    pub first_line: i64,
    pub line_count: i32,
    pub data: &'a [u8],
    /// The per-pod cap: half is kept from the start, half from the end.
    pub cap_bytes: i64,
    pub owner: &'a str,
    pub lease: std::time::Duration,
}

/// Appends a chunk and renews the lease, in one transaction. Returns false when the lease was
/// lost (another process took over), in which case nothing was written.
pub async fn append(
    conn: &mut PgConnection,
    run_id: Uuid,
    pod_name: &str,
    chunk: Append<'_>,
) -> Result<bool, sqlx::Error> {
    let half = chunk.cap_bytes / 2;
    let len = chunk.data.len() as i64;
    let renewed: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE pod_logs SET lease_until = now() + make_interval(secs => $4),
             lines = lines + $5, bytes = bytes + $6
         WHERE run_id = $1 AND pod_name = $2 AND lease_owner = $3 AND state = 'capturing'
         RETURNING head_bytes, tail_bytes",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(chunk.owner)
    .bind(chunk.lease.as_secs_f64())
    .bind(chunk.line_count as i64)
    .bind(len)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((head_bytes, _)) = renewed else {
        return Ok(false);
    };
    let part = if head_bytes + len <= half || head_bytes == 0 {
        "head"
    } else {
        "tail"
    };
    let (encoding, stored) = encode(chunk.data);
    sqlx::query(
        "INSERT INTO log_chunks (run_id, pod_name, seq, part, first_line, line_count, raw_len, encoding, data)
         VALUES ($1, $2, (SELECT coalesce(max(seq) + 1, 0) FROM log_chunks WHERE run_id = $1 AND pod_name = $2),
                 $3, $4, $5, $6, $7, $8)",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(part)
    .bind(chunk.first_line)
    .bind(chunk.line_count)
    .bind(len as i32)
    .bind(encoding)
    .bind(stored)
    .execute(&mut *conn)
    .await?;
    if part == "head" {
        sqlx::query(
            "UPDATE pod_logs SET head_bytes = head_bytes + $3 WHERE run_id = $1 AND pod_name = $2",
        )
        .bind(run_id)
        .bind(pod_name)
        .bind(len)
        .execute(&mut *conn)
        .await?;
        return Ok(true);
    }
    // The tail is a rolling window: drop its oldest chunks while it is over its half of the cap
    // (always keeping the newest chunk).
    sqlx::query(
        "WITH tail AS (
             SELECT seq, raw_len, line_count,
                    sum(raw_len) OVER (ORDER BY seq DESC) AS newer_and_self
             FROM log_chunks WHERE run_id = $1 AND pod_name = $2 AND part = 'tail'),
         dropped AS (
             DELETE FROM log_chunks c USING tail
             WHERE c.run_id = $1 AND c.pod_name = $2 AND c.seq = tail.seq
               AND tail.newer_and_self > $3 AND tail.newer_and_self > tail.raw_len
             RETURNING c.raw_len, c.line_count)
         UPDATE pod_logs SET
             tail_bytes = tail_bytes + $4 - coalesce((SELECT sum(raw_len) FROM dropped), 0),
             dropped_bytes = dropped_bytes + coalesce((SELECT sum(raw_len) FROM dropped), 0),
             dropped_lines = dropped_lines + coalesce((SELECT sum(line_count) FROM dropped), 0)
         WHERE run_id = $1 AND pod_name = $2",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(half)
    .bind(len)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Renews a capture's lease while its pod prints nothing. False when the lease was lost.
pub async fn renew(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    owner: &str,
    lease: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE pod_logs SET lease_until = now() + make_interval(secs => $4)
         WHERE run_id = $1 AND pod_name = $2 AND lease_owner = $3 AND state = 'capturing'",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Records lines that were lost (e.g. rotated away by the kubelet while no stream was open):
/// kept in `detail`, and the capture can then only finish as `incomplete`. False when the
/// lease was lost.
pub async fn record_gap(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    owner: &str,
    gap: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE pod_logs SET detail = nullif(concat_ws('; ', detail, $4::text), '')
         WHERE run_id = $1 AND pod_name = $2 AND lease_owner = $3 AND state = 'capturing'",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(owner)
    .bind(gap)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// A capture left `capturing` with its lease lapsed: its replica died, shut down or lost the
/// database. What the archiver's sweep takes over.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Lapsed {
    pub run_id: Uuid,
    pub pod_name: String,
    /// The namespace of the run's Job (where its pods are).
    pub namespace: Option<String>,
    pub lines: i64,
}

pub async fn lapsed(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Lapsed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT l.run_id, l.pod_name, r.job_namespace AS namespace, l.lines
         FROM pod_logs l JOIN runs r ON r.id = l.run_id
         WHERE l.state = 'capturing' AND (l.lease_until IS NULL OR l.lease_until < now())
         ORDER BY l.lease_until NULLS FIRST LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Hands back every lease `owner` holds (a graceful shutdown), so another replica's sweep takes
/// the captures over at once instead of after the lease.
pub async fn hand_back(db: impl PgExecutor<'_>, owner: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE pod_logs SET lease_until = now() - interval '1 second'
         WHERE lease_owner = $1 AND state = 'capturing'",
    )
    .bind(owner)
    .execute(db)
    .await?
    .rows_affected())
}

/// The last archived piece, with the time of the line it belongs to (the resume anchor, see
/// [`Anchor`]): a piece after the first of a line longer than 64 KiB carries no timestamp, so
/// the chunks before it are read back to its line's first piece.
pub async fn last_line(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
) -> Result<Option<Anchor>, sqlx::Error> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, (i16, Vec<u8>)>(
        "SELECT encoding, data FROM log_chunks WHERE run_id = $1 AND pod_name = $2
         ORDER BY seq DESC",
    )
    .bind(run_id)
    .bind(pod_name)
    .fetch(db);
    // The anchor, and the earliest piece of its line found so far.
    let mut found: Option<(Vec<u8>, Vec<u8>)> = None;
    while let Some((encoding, data)) = rows.try_next().await? {
        let data = decode(encoding, data, None).map_err(|e| sqlx::Error::Decode(e.into()))?;
        let pieces: Vec<&[u8]> = crate::domain::loglines::lines(&data).collect();
        for piece in pieces.into_iter().rev() {
            match &mut found {
                None => found = Some((piece.to_vec(), piece.to_vec())),
                Some((anchor, start)) if piece.ends_with(b"\n") => {
                    let time = split_timestamp(start).0;
                    return Ok(Some(Anchor {
                        piece: std::mem::take(anchor),
                        time,
                    }));
                }
                Some((_, start)) => *start = piece.to_vec(),
            }
        }
    }
    Ok(found.map(|(piece, start)| Anchor {
        time: split_timestamp(&start).0,
        piece,
    }))
}

/// Ends a capture: `complete`, `incomplete` or `missing`, with the reason when not complete. A
/// capture with recorded gaps ends `incomplete` even when asked `complete`.
pub async fn finish(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    state: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO pod_logs (run_id, pod_name, state, detail, completed_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (run_id, pod_name) DO UPDATE SET
             state = CASE WHEN $3 = 'complete' AND pod_logs.detail IS NOT NULL
                          THEN 'incomplete' ELSE $3 END,
             detail = nullif(concat_ws('; ', pod_logs.detail, $4::text), ''),
             completed_at = now(), lease_owner = NULL, lease_until = NULL
         WHERE pod_logs.state = 'capturing'",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(state)
    .bind(detail)
    .execute(db)
    .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => Ok(()),
        other => other.map(|_| ()),
    }
}

pub async fn get(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
) -> Result<Option<PodLog>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM pod_logs WHERE run_id = $1 AND pod_name = $2"
    ))
    .bind(run_id)
    .bind(pod_name)
    .fetch_optional(db)
    .await
}

/// One container instance (attempt) of an archived pod log: where its lines start in the
/// pod's archive and how it ended, when known.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArchivedAttempt {
    pub pod_name: String,
    /// 1-based: the instance with restart count `attempt - 1`.
    pub attempt: i32,
    pub first_line: i64,
    pub exit_code: Option<i32>,
}

/// Records that attempt `attempt` of a pod's container starts at line `first_line` of its
/// archive (kept as first recorded: a capture taken over goes on with the same attempt).
pub async fn begin_attempt(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    attempt: i32,
    first_line: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pod_log_attempts (run_id, pod_name, attempt, first_line)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(attempt)
    .bind(first_line)
    .execute(db)
    .await
    .map(|_| ())
}

/// Records how attempt `attempt` of a pod's container ended.
pub async fn end_attempt(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    attempt: i32,
    exit_code: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pod_log_attempts SET exit_code = $4
         WHERE run_id = $1 AND pod_name = $2 AND attempt = $3",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(attempt)
    .bind(exit_code)
    .execute(db)
    .await
    .map(|_| ())
}

/// The archived attempts of a run's pods (of one pod, when given), in pod then attempt order.
pub async fn attempts(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: Option<&str>,
) -> Result<Vec<ArchivedAttempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pod_name, attempt, first_line, exit_code FROM pod_log_attempts
         WHERE run_id = $1 AND ($2::text IS NULL OR pod_name = $2)
         ORDER BY pod_name, attempt",
    )
    .bind(run_id)
    .bind(pod_name)
    .fetch_all(db)
    .await
}

/// A stored chunk, decoded.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub seq: i32,
    pub part: String,
    pub first_line: i64,
    pub line_count: i32,
    pub data: Vec<u8>,
}

/// Up to `limit` chunks with `seq >= from_seq`, in order.
pub async fn chunks(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod_name: &str,
    from_seq: i32,
    limit: i64,
) -> Result<Vec<Chunk>, sqlx::Error> {
    let rows: Vec<StoredChunk> = sqlx::query_as(
        "SELECT seq, part, first_line, line_count, raw_len, encoding, data FROM log_chunks
         WHERE run_id = $1 AND pod_name = $2 AND seq >= $3 ORDER BY seq LIMIT $4",
    )
    .bind(run_id)
    .bind(pod_name)
    .bind(from_seq)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Chunk {
                seq: row.seq,
                part: row.part,
                first_line: row.first_line,
                line_count: row.line_count,
                data: decode(row.encoding, row.data, usize::try_from(row.raw_len).ok())
                    .map_err(|e| sqlx::Error::Decode(e.into()))?,
            })
        })
        .collect()
}

/// A chunk's row as stored (its data possibly deflated).
#[derive(sqlx::FromRow)]
struct StoredChunk {
    seq: i32,
    part: String,
    first_line: i64,
    line_count: i32,
    raw_len: i32,
    encoding: i16,
    data: Vec<u8>,
}

/// Deletes archives of pods whose capture ended before `before` (the log age limit).
pub async fn delete_completed_before(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM pod_logs WHERE (run_id, pod_name) IN (
             SELECT run_id, pod_name FROM pod_logs
             WHERE completed_at < $1 ORDER BY completed_at LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deflates a chunk when that saves at least a tenth.
fn encode(data: &[u8]) -> (i16, Vec<u8>) {
    let mut encoder = DeflateEncoder::new(Vec::with_capacity(data.len() / 2), Compression::fast());
    if encoder.write_all(data).is_ok() {
        if let Ok(compressed) = encoder.finish() {
            if compressed.len() * 10 < data.len() * 9 {
                return (1, compressed);
            }
        }
    }
    (0, data.to_vec())
}

/// `raw_len`: the stored length before deflating, when known (the buffer is then allocated once
/// instead of grown while inflating).
fn decode(encoding: i16, data: Vec<u8>, raw_len: Option<usize>) -> std::io::Result<Vec<u8>> {
    match encoding {
        0 => Ok(data),
        1 => {
            // Bounded: a chunk is at most about two 64-KiB pieces, whatever a row claims.
            let mut out = Vec::with_capacity(raw_len.unwrap_or(data.len() * 3).min(1 << 20));
            DeflateDecoder::new(&data[..]).read_to_end(&mut out)?;
            Ok(out)
        }
        other => Err(std::io::Error::other(format!(
            "unknown log chunk encoding {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_compressed_or_not() {
        let text = b"the same line again\n".repeat(100);
        let (encoding, stored) = encode(&text);
        assert_eq!(encoding, 1);
        assert!(stored.len() < text.len() / 5);
        assert_eq!(decode(encoding, stored.clone(), None).unwrap(), text);
        assert_eq!(decode(encoding, stored, Some(text.len())).unwrap(), text);

        let random: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (encoding, stored) = encode(&random);
        assert_eq!(encoding, 0, "incompressible data is stored as is");
        assert_eq!(
            decode(encoding, stored, Some(random.len())).unwrap(),
            random
        );
    }
}
