//! HTTP calls out of the service, to Git hosts and notification receivers: a new kind of I/O,
//! kept in one module as Kubernetes is in `cluster/`. Each Git host's commit status API is one
//! [`CommitStatusApi`] (how its request is built); sending, reading the answer and keeping
//! secrets out of what is recorded are shared. Only the reporter loop (src/runtime/reporter.rs)
//! calls this; nothing here touches the database.
//!
//! Secrets (tokens, notification secrets) travel only in request headers marked sensitive; what
//! [`send`] returns (recorded as the attempt's answer and shown by the API) is the receiver's
//! answer or the error without its URL.

mod gitea;
mod github;
pub mod github_checks;
mod gitlab;
pub mod receiver;

use crate::domain::report::ReportProvider;
use crate::domain::RunStatus;
use reqwest::header::HeaderValue;
use std::time::{Duration, Instant};

/// One commit status to set.
pub struct StatusReport<'a> {
    /// The host's API root, e.g. `https://api.github.com` (no trailing slash).
    pub api_base: &'a str,
    /// `owner/name` or GitLab's `group/project`.
    pub repository: &'a str,
    pub sha: &'a str,
    /// The ref the commit was built for (`refs/heads/main`).
    pub git_ref: &'a str,
    pub context: &'a str,
    pub status: RunStatus,
    pub description: &'a str,
    pub target_url: Option<&'a str>,
    pub token: &'a str,
}

/// A Git host's commit status API.
pub trait CommitStatusApi: Send + Sync {
    fn provider(&self) -> ReportProvider;
    /// The request that sets `report` on the host; `Err` when the report cannot become a request
    /// (an API base that is not a URL, a repository not of the host's shape): final.
    fn request(
        &self,
        client: &reqwest::Client,
        report: &StatusReport<'_>,
    ) -> Result<reqwest::RequestBuilder, String>;
}

/// The API of `provider`.
pub fn api(provider: ReportProvider) -> &'static dyn CommitStatusApi {
    match provider {
        ReportProvider::Github => &github::Github,
        ReportProvider::Gitlab => &gitlab::Gitlab,
        ReportProvider::Gitea => &gitea::Gitea,
    }
}

/// `base` with `segments` appended, each percent-encoded as one path segment (a `/` inside one
/// becomes `%2F`, as GitLab's project paths need).
/// A commit status in the shape GitHub defined and Gitea/Forgejo copied: `POST
/// {api}/repos/{owner}/{repo}/statuses/{sha}` with `state`, `description`, `context` and
/// `target_url`. The caller adds its authorization and any headers of its own.
pub(crate) fn repository_status(
    client: &reqwest::Client,
    report: &StatusReport<'_>,
    state: &str,
) -> Result<reqwest::RequestBuilder, String> {
    let (owner, name) = report
        .repository
        .split_once('/')
        .ok_or_else(|| format!("{:?} is not owner/name", report.repository))?;
    let url = endpoint(
        report.api_base,
        &["repos", owner, name, "statuses", report.sha],
    )?;
    let mut body = serde_json::json!({
        "state": state,
        "description": report.description,
        "context": report.context,
    });
    if let Some(target) = report.target_url {
        body["target_url"] = target.into();
    }
    Ok(client.post(url).json(&body))
}

pub(crate) fn endpoint(base: &str, segments: &[&str]) -> Result<url::Url, String> {
    let mut url =
        url::Url::parse(base).map_err(|e| format!("the API base URL is not a URL: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| "the API base URL cannot have a path".to_string())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A header value carrying a secret: marked sensitive, so it is never printed.
pub(crate) fn secret_header(value: String) -> Result<HeaderValue, String> {
    let mut value =
        HeaderValue::try_from(value).map_err(|_| "the token is not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}

/// The user agent of every call out (GitHub refuses requests without one).
pub const USER_AGENT: &str = concat!("vfi-orchestrator/", env!("CARGO_PKG_VERSION"));

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `None`: no answer (timeout, connection refused...).
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    /// The start of the body, or the error (without the URL).
    pub text: String,
    /// The body, when it was JSON.
    pub json: Option<serde_json::Value>,
    pub duration: Duration,
}

impl Answer {
    /// An answer that never came: the request could not be made (final) or sent.
    pub fn none(text: String) -> Answer {
        Answer {
            status: None,
            retry_after: None,
            text,
            json: None,
            duration: Duration::ZERO,
        }
    }
}

/// Most of an answer's body kept with the attempt.
const MAX_ANSWER: usize = 512;

/// Sends `request` and reads the start of the answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = match response.text().await {
                Ok(body) => body,
                Err(error) => format!("(the body could not be read: {})", error.without_url()),
            };
            Answer {
                status: Some(status),
                retry_after,
                text: shorten(&body),
                json: serde_json::from_str(&body).ok(),
                duration: started.elapsed(),
            }
        }
        Err(error) => Answer {
            status: None,
            retry_after: None,
            text: shorten(&crate::error::chain(&error.without_url())),
            json: None,
            duration: started.elapsed(),
        },
    }
}

fn shorten(text: &str) -> String {
    if text.len() <= MAX_ANSWER {
        return text.to_owned();
    }
    let mut end = MAX_ANSWER;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_encode_each_segment() {
        assert_eq!(
            endpoint(
                "https://gitlab.example/api/v4",
                &["projects", "group/sub project", "statuses", "abc"]
            )
            .unwrap()
            .as_str(),
            "https://gitlab.example/api/v4/projects/group%2Fsub%20project/statuses/abc"
        );
        assert_eq!(
            endpoint("https://api.github.com/", &["repos", "o", "r"])
                .unwrap()
                .as_str(),
            "https://api.github.com/repos/o/r"
        );
    }

    #[test]
    fn secret_headers_are_sensitive_so_never_printed() {
        let value = secret_header("Bearer t0ken".into()).unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("t0ken"));
    }
}
