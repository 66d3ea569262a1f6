//! The plain read of an archived log (no timestamps, no `since`) goes out a stored chunk at a
//! time with only each line's timestamp found and dropped (issue 15); every other read goes
//! line by line. These tests hold the plain read to the line path's bytes on content built to
//! trip a shortcut.

mod common;

use common::service::{eventually, kubesim, RunnerKind, Service};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The body of `GET /v1/runs/{id}/logs{query}`, as bytes (a log need not be UTF-8).
async fn log_bytes(service: &Service, id: &str, query: &str) -> Vec<u8> {
    let response = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    response.bytes().await.unwrap().to_vec()
}

/// What the pod prints: lines whose text starts with a time (the kubelet's prefix goes, the
/// text's own stays), first words that only look like times, CRLF, bytes that are not UTF-8,
/// enough lines for several stored chunks, a line of 200,000 bytes of two-byte characters
/// (kubesim, like the kubelet, writes it as 16 KiB entries with a timestamp each, and the
/// archive stores it in 64 KiB pieces, cut inside characters and across chunk bounds), and no
/// final newline.
const SCRIPT: &str = r#"
$| = 1;
print "2026-12-03T08:00:00.5Z a time as text\n";
print "2026-02-29T08:00:01Z not a date\n";
print "2016-12-31T23:59:60Z leap second\n";
print "crlf\r\n";
print "\xff\xfe not utf-8\n";
print "\n";
printf "line %05d %s\n", $_, "y" x 90 for 1 .. 3000;
print "x", "\xc3\xa9" x 100000, "\n";
print "2026-12-03T08:00:02Z after the long line\n";
print "no final newline";
"#;

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_plain_archived_read_is_byte_for_byte_what_the_line_path_serves(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let id = service
        .submit(json!({"image": "perl", "command": ["perl", "-e", SCRIPT]}))
        .await;
    service.wait_for(&id, "succeeded", WAIT).await;
    eventually("the capture to complete", WAIT, || {
        let db = db.clone();
        let id = id.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM pod_logs WHERE run_id = $1::uuid")
                .bind(&id)
                .fetch_optional(&db)
                .await
                .unwrap()
                .as_deref()
                == Some("complete")
        }
    })
    .await;
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM log_chunks WHERE run_id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(chunks >= 5, "the log spans several chunks: {chunks}");

    let plain = log_bytes(&service, &id, "").await;
    // `since` before every line takes the line path and keeps every line.
    let all = "since=1970-01-01T00:00:00Z";
    assert_eq!(plain, log_bytes(&service, &id, &format!("?{all}")).await);
    let head: &[u8] = b"2026-12-03T08:00:00.5Z a time as text\n\
        2026-02-29T08:00:01Z not a date\n\
        2016-12-31T23:59:60Z leap second\n\
        crlf\r\n\
        \xff\xfe not utf-8\n\
        \n\
        line 00001 ";
    assert!(
        plain.starts_with(head),
        "{:?}",
        String::from_utf8_lossy(&plain[..200])
    );
    assert!(plain.ends_with(b"\n2026-12-03T08:00:02Z after the long line\nno final newline"));
    assert!(plain.len() > 500_000, "{}", plain.len());

    for tail in [1, 2, 3, 5, 3004, 100_000] {
        assert_eq!(
            log_bytes(&service, &id, &format!("?tail={tail}")).await,
            log_bytes(&service, &id, &format!("?tail={tail}&{all}")).await,
            "tail={tail}"
        );
    }
    for limit in [1, 40, 65_536, 300_000, 10_000_000] {
        let limited = log_bytes(&service, &id, &format!("?limitBytes={limit}")).await;
        assert_eq!(
            limited,
            log_bytes(&service, &id, &format!("?limitBytes={limit}&{all}")).await
        );
        assert_eq!(
            limited,
            plain[..plain.len().min(limit)],
            "limitBytes={limit}"
        );
    }
}
