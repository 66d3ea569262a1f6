//! The one door to the service's HTTP API: base URL, token, timeouts, retries with back-off
//! (connection errors, 5xx, 429 after its `Retry-After`), one `Idempotency-Key` per invocation
//! (so a POST retried after a dropped connection is recorded once), and problem+json answers
//! turned into readable errors. It knows the API's paths and JSON, nothing of the server's code.

use backon::{ExponentialBuilder, Retryable};
use reqwest::{header, Method, StatusCode};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Streams send a keep-alive comment every 15 s; a minute of silence is a dead connection.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum ApiError {
    /// No answer: refused, reset, timed out.
    Transport { url: String, source: reqwest::Error },
    /// An answer other than 2xx.
    Status {
        what: String,
        status: StatusCode,
        retry_after: Option<Duration>,
        problem: Value,
    },
}

impl ApiError {
    fn retryable(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Transport { url, source } => {
                // reqwest's own message repeats the URL; its causes say what happened.
                write!(f, "cannot reach the service at {url}")?;
                let mut cause = std::error::Error::source(source);
                if cause.is_none() {
                    write!(f, ": {source}")?;
                }
                while let Some(c) = cause {
                    write!(f, ": {c}")?;
                    cause = c.source();
                }
                Ok(())
            }
            ApiError::Status {
                what,
                status,
                problem,
                ..
            } => {
                write!(f, "{what}: {status}")?;
                if let Some(title) = problem["title"].as_str() {
                    write!(f, " {title}")?;
                }
                if let Some(detail) = problem["detail"].as_str() {
                    write!(f, ": {detail}")?;
                }
                for error in problem["errors"].as_array().into_iter().flatten() {
                    write!(
                        f,
                        "\n  {}: {}",
                        error["field"].as_str().unwrap_or("?"),
                        error["message"].as_str().unwrap_or("")
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ApiError {}

pub struct Api {
    base: url::Url,
    token: Option<String>,
    http: reqwest::Client,
    stream: reqwest::Client,
    retries: usize,
    /// One per invocation, sent with every creating POST and reused on its retries.
    idempotency_key: String,
}

impl Api {
    pub fn new(
        target: crate::config::Target,
        timeout: Duration,
        retries: usize,
    ) -> anyhow::Result<Api> {
        let agent = concat!("vfi/", env!("CARGO_PKG_VERSION"));
        let connect = Duration::from_secs(10).min(timeout);
        Ok(Api {
            base: target.url,
            token: target.token,
            http: reqwest::Client::builder()
                .user_agent(agent)
                .connect_timeout(connect)
                .timeout(timeout)
                .build()?,
            stream: reqwest::Client::builder()
                .user_agent(agent)
                .connect_timeout(connect)
                .read_timeout(STREAM_READ_TIMEOUT)
                .build()?,
            retries,
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
    }

    pub fn url(&self, path: &str) -> url::Url {
        self.base
            .join(path.trim_start_matches('/'))
            .expect("API paths are relative URLs")
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.retries)
            .with_jitter()
    }

    /// One request, retried; the answer's JSON (`null` for an empty body).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        idempotent_post: bool,
    ) -> Result<Value, ApiError> {
        let url = self.url(path);
        let attempt = || async {
            let mut request = self.http.request(method.clone(), url.clone()).query(query);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if idempotent_post {
                request = request.header("Idempotency-Key", &self.idempotency_key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let transport = |source| ApiError::Transport {
                url: self.base.to_string(),
                source,
            };
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = response.bytes().await.map_err(transport)?;
            let json = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
            };
            if status.is_success() {
                Ok(json)
            } else {
                Err(ApiError::Status {
                    what: format!("{method} {}", url.path()),
                    status,
                    retry_after,
                    problem: json,
                })
            }
        };
        attempt
            .retry(self.backoff())
            .when(ApiError::retryable)
            // A 429 (or 503) says when to come back: wait that long instead, within the same
            // number of retries.
            .adjust(|error, delay| match error {
                ApiError::Status {
                    retry_after: Some(after),
                    ..
                } => delay.map(|_| *after),
                _ => delay,
            })
            .notify(|error, delay| {
                eprintln!("vfi: retrying in {delay:.1?}: {}", first_line(error));
            })
            .await
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.call(Method::GET, path, query, None, false).await
    }

    /// A POST that creates something: sent with this invocation's Idempotency-Key.
    pub async fn create(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        self.call(Method::POST, path, query, body, true).await
    }

    pub async fn post(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::POST, path, &[], None, false).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, &[], Some(body), false).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::DELETE, path, &[], None, false).await
    }

    /// Opens a Server-Sent Events stream, once (the caller resumes with `last_event_id`).
    pub async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ApiError> {
        let url = self.url(path);
        let mut request = self
            .stream
            .get(url.clone())
            .query(query)
            .header(header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.map_err(|source| ApiError::Transport {
            url: self.base.to_string(),
            source,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let problem = response.json().await.unwrap_or(Value::Null);
        Err(ApiError::Status {
            what: format!("GET {}", url.path()),
            status,
            retry_after: None,
            problem,
        })
    }

    /// Whether a failure to open a stream is worth another try.
    pub fn stream_retryable(error: &ApiError) -> bool {
        error.retryable()
    }
}

fn first_line(error: &ApiError) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}
