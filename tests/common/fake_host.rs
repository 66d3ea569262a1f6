//! A fake Git host or notification receiver: an axum server on 127.0.0.1:0 inside the test
//! process that records every request (at receipt) and answers as its behaviour says.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: Value,
    /// What it was answered.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How the host answers the `n`-th request (from 0): a status, a pause before the answer, a
/// `Retry-After` header if any, and a JSON body.
pub type Behaviour = Arc<dyn Fn(usize, &Received) -> Answer + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            delay: Duration::ZERO,
            retry_after: None,
            body: serde_json::json!({"answer": "fake"}),
        }
    }
}

#[derive(Clone)]
pub struct FakeHost {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeHost {
    /// A host that answers 201 to everything.
    pub async fn start() -> FakeHost {
        FakeHost::with(Arc::new(|_, _| Answer::status(201))).await
    }

    pub async fn with(behaviour: Behaviour) -> FakeHost {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                let behaviour = behaviour.clone();
                async move {
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let (n, answer) = {
                        let mut log = log.lock().unwrap();
                        let n = log.len();
                        let mut received = Received {
                            method,
                            path: uri.path().to_string(),
                            headers,
                            body,
                            json,
                            answered: 0,
                        };
                        let answer = behaviour(n, &received);
                        received.answered = answer.status;
                        log.push(received);
                        (n, answer)
                    };
                    let _ = n;
                    tokio::time::sleep(answer.delay).await;
                    let status = StatusCode::from_u16(answer.status).unwrap();
                    let mut response = (status, axum::Json(answer.body)).into_response();
                    if let Some(after) = answer.retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", after.parse().unwrap());
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeHost { url, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The `state` of every request to `path`, in the order received.
    pub fn states(&self, path: &str) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.json["state"].as_str().unwrap_or("").to_string())
            .collect()
    }
}
