//! `/metrics` and `/v1/events` against the whole service (real Postgres, kubesim in-process).

mod common;

use common::service::{eventually, kubesim, RunnerKind, Service};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn quick(name: &str) -> Value {
    json!({
        "description": format!("{name}, scripted"),
        "template": {
            "image": "busybox",
            "command": ["true"],
            "env": [{"name": "KUBESIM_DURATION_MS", "value": "10"}],
        }
    })
}

async fn put_task(service: &Service, name: &str) {
    let response = service
        .http
        .put(service.url(&format!("/v1/tasks/{name}")))
        .json(&quick(name))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn start(service: &Service, task: &str) -> String {
    let response = service
        .post(&format!("/v1/tasks/{task}/runs"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let run: Value = response.json().await.unwrap();
    run["id"].as_str().unwrap().to_string()
}

// ---- /metrics ----------------------------------------------------------------------------------

/// A scrape: series (`name` plus sorted labels) to value.
type Scrape = HashMap<Series, f64>;
/// A metric's name and labels.
type Series = (String, BTreeMap<String, String>);

async fn scrape(service: &Service) -> Scrape {
    let response = service
        .http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}")))
        .collect()
}

/// Parses `name{k="v",...} value` (label values may hold braces, commas and escaped quotes).
fn parse_sample(line: &str) -> Option<(Series, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(((series.to_string(), BTreeMap::new()), value));
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        (chars.next()? == '"').then_some(())?;
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(((name.to_string(), labels), value))
}

fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    scrape.get(&key).copied().unwrap_or(0.0)
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn metrics_scraped_before_and_after_fifty_runs_show_the_counts_moving(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    put_task(&service, "metered").await;
    let before = scrape(&service).await;

    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(start(&service, "metered").await);
    }
    eventually("50 runs succeeded", Duration::from_secs(60), || async {
        let page = service
            .get("/v1/runs?task=metered&status=succeeded&limit=100")
            .await;
        page["items"].as_array().unwrap().len() == 50
    })
    .await;
    service.get(&format!("/v1/runs/{}", ids[0])).await;
    let after = scrape(&service).await;

    let runs = |scrape: &Scrape, status| {
        sample(
            scrape,
            "vfi_runs",
            &[("task", "metered"), ("status", status)],
        )
    };
    assert_eq!(runs(&before, "succeeded"), 0.0);
    assert_eq!(runs(&after, "succeeded"), 50.0);
    assert_eq!(runs(&after, "queued"), 0.0);
    assert!(
        after.contains_key(&(
            "vfi_runs".to_string(),
            [("task", "metered"), ("status", "running")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        )),
        "every status of a task is reported, zeros included"
    );
    let finished = |scrape: &Scrape| {
        sample(
            scrape,
            "vfi_run_duration_seconds_count",
            &[("task", "metered"), ("status", "succeeded")],
        )
    };
    assert_eq!(finished(&after) - finished(&before), 50.0);
    let waited = |scrape: &Scrape| {
        sample(
            scrape,
            "vfi_run_queue_wait_seconds_count",
            &[("task", "metered")],
        )
    };
    assert_eq!(waited(&after) - waited(&before), 50.0);
    let started = |scrape: &Scrape| {
        sample(
            scrape,
            "vfi_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/tasks/{name}/runs"),
                ("status", "201"),
            ],
        )
    };
    assert!(started(&after) - started(&before) >= 50.0);
    let latency = sample(
        &after,
        "vfi_http_request_duration_seconds_count",
        &[
            ("method", "GET"),
            ("route", "/v1/runs/{id}"),
            ("status", "200"),
        ],
    );
    assert!(latency >= 1.0, "latency is recorded by matched route");
    assert!(
        !after
            .keys()
            .any(|(_, labels)| labels.get("route").is_some_and(|r| r.contains(&ids[0]))),
        "raw paths never become route labels"
    );
    let created =
        |scrape: &Scrape| sample(scrape, "vfi_jobs_created_total", &[("adopted", "false")]);
    assert!(created(&after) - created(&before) >= 50.0);
}

// ---- /v1/events ----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: i64,
    kind: String,
    data: Value,
}

/// A `/v1/events` stream, read event by event.
struct Events {
    stream: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl Events {
    async fn open(service: &Service, query: &str, last_event_id: Option<i64>) -> Events {
        let mut request = service.http.get(service.url(&format!("/v1/events{query}")));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            stream: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), failing after `WAIT`.
    async fn next(&mut self) -> Sse {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let (mut id, mut kind, mut data) = (None, None, String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().parse().unwrap());
                        } else if let Some(v) = line.strip_prefix("event:") {
                            kind = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if let (Some(id), Some(kind)) = (id, kind) {
                        return Sse {
                            id,
                            kind,
                            data: serde_json::from_str(&data).unwrap(),
                        };
                    }
                    continue;
                }
                let chunk = self.stream.next().await.expect("stream open").unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within the timeout")
    }

    /// Events until (and including) the first for which `last` holds.
    async fn until(&mut self, last: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = last(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn events_deliver_a_runs_changes_in_order_and_only_for_the_task_asked(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let mut alpha = Events::open(&service, "?task=alpha", None).await;

    put_task(&service, "beta").await;
    put_task(&service, "alpha").await;
    let other = start(&service, "beta").await;
    let id = start(&service, "alpha").await;
    let seen = alpha
        .until(|e| e.kind == "run.finished" && e.data["runId"] == id.as_str())
        .await;

    assert_eq!(seen[0].kind, "task.created");
    assert_eq!(seen[0].data["task"], "alpha");
    let kinds: Vec<(&str, &str)> = seen[1..]
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.data["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("run.created", "queued"),
            ("run.status", "creating"),
            ("run.status", "pending"),
            ("run.status", "running"),
            ("run.finished", "succeeded"),
        ]
    );
    assert!(seen.iter().all(|e| e.data["task"] == "alpha"));
    assert!(seen.iter().all(|e| e.data["runId"] != other.as_str()));
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(
        seen.iter().all(|e| e.data["id"] == e.id),
        "the SSE id is the event's id"
    );
    service.wait_for(&other, "succeeded", WAIT).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn last_event_id_resume_replays_exactly_what_came_after_then_goes_on_live(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    put_task(&service, "resumed").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(start(&service, "resumed").await);
    }
    for id in &ids {
        service.wait_for(id, "succeeded", WAIT).await;
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM run_events) + (SELECT count(*) FROM task_events)",
    )
    .fetch_one(&service.db)
    .await
    .unwrap();

    let mut everything = Events::open(&service, "", Some(0)).await;
    let mut all = Vec::new();
    for _ in 0..stored {
        all.push(everything.next().await);
    }
    assert_eq!(all[0].kind, "task.created");
    assert_eq!(
        all.len(),
        1 + 3 * 5,
        "a task and three runs of five changes each"
    );
    let middle = all[all.len() / 2].id;
    let mut resumed = Events::open(&service, "", Some(middle)).await;
    let mut replayed = Vec::new();
    for _ in all.iter().filter(|e| e.id > middle) {
        replayed.push(resumed.next().await);
    }
    let live = start(&service, "resumed").await;
    let next = resumed.next().await;

    let expected: Vec<Sse> = all.into_iter().filter(|e| e.id > middle).collect();
    assert_eq!(replayed, expected);
    assert_eq!(next.kind, "run.created", "then live, with nothing repeated");
    assert_eq!(next.data["runId"], live.as_str());
    assert!(next.id > expected.last().unwrap().id);
    drop((everything, resumed));
    service.stop().await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_malformed_last_event_id_is_a_400_problem(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let response = service
        .http
        .get(service.url("/v1/events"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    common::assert_problem(response, StatusCode::BAD_REQUEST, Some("Last-Event-ID")).await;
}
