//! Webhook triggers: what a trigger is (provider, secret, events, ref filters), how each Git host
//! authenticates its deliveries (checked in constant time), and how a delivery's payload becomes
//! the facts of a Git event handed to the run as environment variables. Pure: no I/O here.
//!
//! Payload values only ever become environment variable *values*; they are never put into a
//! command, an argument or a shell string.
//!
//! - [`signature`]: each host's authentication, event name and delivery id headers;
//! - [`payload`]: a delivery's payload read into a [`GitEvent`], and the run's variables;
//! - [`filter`]: whether a trigger's events and ref globs let an event start a run;
//! - [`delivery`]: the use case's pure part, what an authenticated delivery asks for.

mod delivery;
mod filter;
pub mod params;
mod payload;
mod signature;

pub use delivery::{read, Reading, Unreadable};
pub use filter::Filter;
pub use payload::{parse, GitEvent, Parsed, Rerequest};
pub use signature::{delivery_id, event_name, sign, verify};

use super::report::{ReportSettings, ReportSpec};
use super::validation::{Errors, Invalid};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// The Git host that sends a trigger's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Provider {
    /// GitHub: `X-Hub-Signature-256` is `sha256=` and the hex HMAC-SHA256 of the body.
    Github,
    /// GitLab: `X-Gitlab-Token` is the secret itself.
    Gitlab,
    /// Gitea and Forgejo: `X-Gitea-Signature` (or `X-Forgejo-Signature`) is the hex HMAC-SHA256
    /// of the body.
    Gitea,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }
}

/// The kinds of Git events a trigger can start runs on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Commits pushed to a branch.
    Push,
    /// A tag pushed.
    TagPush,
    /// A pull request (GitHub, Gitea) or merge request (GitLab) opened, updated or reopened.
    PullRequest,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::TagPush => "tag_push",
            EventKind::PullRequest => "pull_request",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        match text {
            "push" => Some(EventKind::Push),
            "tag_push" => Some(EventKind::TagPush),
            "pull_request" => Some(EventKind::PullRequest),
            _ => None,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_events() -> Vec<EventKind> {
    vec![EventKind::Push]
}

/// What a client sends to create or replace a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerSpec {
    pub provider: Provider,
    /// The secret configured on the Git host's webhook (16 to 256 characters). Write-only: it is
    /// never returned.
    #[schema(write_only, min_length = 16, max_length = 256)]
    pub secret: String,
    /// Events that start a run (default: `push`).
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
    /// Glob patterns for the ref (e.g. `main`, `release/*`, `refs/tags/v*`), matched against both
    /// the full ref and the branch or tag name; `*` does not cross `/`, a `**` component does (`hotfix/**`). For pull
    /// requests the target branch is matched. Empty: every ref.
    #[serde(default)]
    pub refs: Vec<String>,
    /// Report each run's status back to the commit it builds (see the README's state table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportSpec>,
    /// Task parameters filled from the event: `{"ref": "{{ref}}", "pr":
    /// "{{pull_request.number}}"}`. Placeholders: provider, event, repository, clone_url, ref,
    /// sha, sender, delivery, pull_request.number, base_ref. A placeholder the event lacks
    /// leaves the parameter to its default. Secret parameters cannot be set this way.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
}

pub const MIN_SECRET: usize = 16;
pub const MAX_SECRET: usize = 256;

impl TriggerSpec {
    /// Checks the spec of a trigger on `task`; returns its report settings with their defaults
    /// resolved.
    pub fn validate(&self, task: &str) -> Result<Option<ReportSettings>, Invalid> {
        let mut errors = Errors::new();
        let report = self
            .report
            .as_ref()
            .and_then(|report| report.resolve(task, self.provider, &mut errors));
        let length = self.secret.chars().count();
        if !(MIN_SECRET..=MAX_SECRET).contains(&length) {
            errors.add(
                "secret",
                format!("must be {MIN_SECRET} to {MAX_SECRET} characters (is {length})"),
            );
        }
        if self.events.is_empty() {
            errors.add("events", "must name at least one event");
        }
        if self.refs.len() > 100 {
            errors.add("refs", "must have at most 100 patterns");
        }
        for (i, pattern) in self.refs.iter().enumerate() {
            if let Err(error) = filter::glob(pattern) {
                errors.add(format!("refs[{i}]"), format!("not a glob pattern: {error}"));
            }
        }
        params::collect_errors(&self.params, &mut errors);
        errors.finish().map(|()| report)
    }
}

/// A trigger as the API shows it: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTrigger {
    /// Identifies the trigger in its hook URL.
    pub id: uuid::Uuid,
    pub task: String,
    pub name: String,
    pub provider: Provider,
    pub events: Vec<EventKind>,
    pub refs: Vec<String>,
    /// Where run statuses are reported (the token is never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportSettings>,
    /// Task parameters filled from each event (see [`TriggerSpec::params`]).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
    /// Where the Git host must send deliveries (append to the service's base URL).
    pub hook_path: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub fn hook_path(id: uuid::Uuid) -> String {
    format!("/v1/hooks/{id}")
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trigger_specs_need_a_long_secret_and_valid_globs() {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "provider": "github", "secret": "short", "refs": ["main", "[oops"]
        }))
        .unwrap();
        assert_eq!(spec.events, [EventKind::Push]);
        let fields: Vec<String> = spec
            .validate("t")
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["secret", "refs[1]"]);
    }
}
