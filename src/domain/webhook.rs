//! Webhook triggers: what a trigger is (provider, secret, events, ref filters), how each Git host
//! authenticates its deliveries (checked in constant time), and how a delivery's payload becomes
//! the facts of a Git event handed to the run as environment variables. Pure: no I/O here.
//!
//! Payload values only ever become environment variable *values*; they are never put into a
//! command, an argument or a shell string.

use super::template::EnvVar;
use super::validation::{Errors, Invalid};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;
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
}

pub const MIN_SECRET: usize = 16;
pub const MAX_SECRET: usize = 256;

impl TriggerSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errors = Errors::new();
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
            if let Err(error) = glob(pattern) {
                errors.add(format!("refs[{i}]"), format!("not a glob pattern: {error}"));
            }
        }
        errors.finish()
    }
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
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
    /// Where the Git host must send deliveries (append to the service's base URL).
    pub hook_path: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub fn hook_path(id: uuid::Uuid) -> String {
    format!("/v1/hooks/{id}")
}

/// Checks a delivery's authentication for `provider` with the trigger's `secret`. `header` looks
/// up a request header by lower-case name. The error is the reason, for the logs only.
pub fn verify<'h>(
    provider: Provider,
    secret: &str,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> Result<(), String> {
    match provider {
        Provider::Github => {
            let value = header("x-hub-signature-256").ok_or("no X-Hub-Signature-256 header")?;
            let hex_digest = value
                .strip_prefix("sha256=")
                .ok_or("X-Hub-Signature-256 does not start with sha256=")?;
            verify_hmac(secret, hex_digest, body)
        }
        Provider::Gitea => {
            let value = header("x-gitea-signature")
                .or_else(|| header("x-forgejo-signature"))
                .ok_or("no X-Gitea-Signature header")?;
            verify_hmac(secret, value, body)
        }
        Provider::Gitlab => {
            let value = header("x-gitlab-token").ok_or("no X-Gitlab-Token header")?;
            // Comparing digests keeps the comparison constant-time whatever the lengths.
            let given = Sha256::digest(value.as_bytes());
            let expected = Sha256::digest(secret.as_bytes());
            if bool::from(given.ct_eq(&expected)) {
                Ok(())
            } else {
                Err("X-Gitlab-Token does not match the secret".into())
            }
        }
    }
}

fn verify_hmac(secret: &str, hex_digest: &str, body: &[u8]) -> Result<(), String> {
    let digest = hex::decode(hex_digest.trim()).map_err(|_| "the signature is not hex")?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&digest)
        .map_err(|_| "the signature does not match the body and secret".to_string())
}

/// The hex HMAC-SHA256 of `body` under `secret`, as GitHub and Gitea send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The provider's event name header (e.g. `push`, `Push Hook`).
pub fn event_name<'h>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Option<&'h str> {
    match provider {
        Provider::Github => header("x-github-event"),
        Provider::Gitlab => header("x-gitlab-event"),
        Provider::Gitea => header("x-gitea-event").or_else(|| header("x-forgejo-event")),
    }
}

/// The delivery's id, which a redelivery repeats. Hosts that send none get the body's hash, so
/// the same payload delivered twice is still one delivery.
pub fn delivery_id<'h>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> String {
    let given = match provider {
        Provider::Github => header("x-github-delivery"),
        Provider::Gitlab => header("x-gitlab-event-uuid"),
        Provider::Gitea => header("x-gitea-delivery").or_else(|| header("x-forgejo-delivery")),
    };
    match given
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= 200)
    {
        Some(id) => id.to_string(),
        None => format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

/// The facts of a Git event, from a delivery's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitEvent {
    pub kind: EventKind,
    /// `owner/name` (GitHub, Gitea) or `group/project` (GitLab).
    pub repository: String,
    pub clone_url: String,
    /// The pushed ref (`refs/heads/main`, `refs/tags/v1`), or a pull request's source branch.
    pub git_ref: String,
    /// The commit to build.
    pub sha: String,
    /// Who pushed or opened the pull request.
    pub sender: String,
    /// For pull requests: the number and the target branch's ref.
    pub pull_request: Option<u64>,
    pub base_ref: Option<String>,
}

/// What a delivery's payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// GitHub's `ping`, sent when the webhook is set up.
    Ping,
    Event(GitEvent),
    /// A delivery that never starts a run, and why (unknown event, branch deletion, closed pull
    /// request...).
    Ignored(String),
}

/// Payload values longer than this are refused rather than passed on.
const MAX_VALUE: usize = 2048;
const NULL_SHA: &str = "0000000000000000000000000000000000000000";

/// Reads a delivery. An error means the payload is not what the provider sends for this event.
pub fn parse(provider: Provider, event: &str, body: &[u8]) -> Result<Parsed, String> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let get = |pointer: &str| -> Result<String, String> {
        let value = match payload.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(format!("the payload has no {pointer}")),
        };
        if value.len() > MAX_VALUE {
            return Err(format!("{pointer} is longer than {MAX_VALUE} bytes"));
        }
        Ok(value)
    };
    let number = |pointer: &str| payload.pointer(pointer).and_then(Value::as_u64);
    let action = payload
        .pointer(match provider {
            Provider::Gitlab => "/object_attributes/action",
            _ => "/action",
        })
        .and_then(Value::as_str)
        .unwrap_or("");

    let kind = match (provider, event) {
        (Provider::Github, "ping") => return Ok(Parsed::Ping),
        (Provider::Github | Provider::Gitea, "push") | (Provider::Gitlab, "Push Hook") => {
            EventKind::Push
        }
        (Provider::Gitlab, "Tag Push Hook") => EventKind::TagPush,
        (Provider::Github | Provider::Gitea, "pull_request")
        | (Provider::Gitlab, "Merge Request Hook") => EventKind::PullRequest,
        (_, other) => {
            return Ok(Parsed::Ignored(format!(
                "{other:?} events are not handled; push, tag push and pull/merge request events are"
            )))
        }
    };

    if kind == EventKind::PullRequest {
        let wanted = match provider {
            Provider::Github => ["opened", "synchronize", "reopened"],
            Provider::Gitea => ["opened", "synchronized", "reopened"],
            Provider::Gitlab => ["open", "update", "reopen"],
        };
        if !wanted.contains(&action) {
            return Ok(Parsed::Ignored(format!(
                "pull request action {action:?} does not start runs; {} do",
                wanted.join(", ")
            )));
        }
        let event = match provider {
            Provider::Github | Provider::Gitea => GitEvent {
                kind,
                repository: get("/repository/full_name")?,
                clone_url: get("/repository/clone_url")?,
                git_ref: format!("refs/heads/{}", get("/pull_request/head/ref")?),
                sha: get("/pull_request/head/sha")?,
                sender: get("/sender/login")?,
                pull_request: number("/number").or_else(|| number("/pull_request/number")),
                base_ref: Some(format!("refs/heads/{}", get("/pull_request/base/ref")?)),
            },
            Provider::Gitlab => GitEvent {
                kind,
                repository: get("/project/path_with_namespace")?,
                clone_url: get("/project/git_http_url")?,
                git_ref: format!("refs/heads/{}", get("/object_attributes/source_branch")?),
                sha: get("/object_attributes/last_commit/id")?,
                sender: get("/user/username")?,
                pull_request: number("/object_attributes/iid"),
                base_ref: Some(format!(
                    "refs/heads/{}",
                    get("/object_attributes/target_branch")?
                )),
            },
        };
        return Ok(Parsed::Event(event));
    }

    let git_ref = get("/ref")?;
    let sha = match provider {
        Provider::Gitlab => get("/checkout_sha").or_else(|_| get("/after"))?,
        _ => get("/after")?,
    };
    if sha == NULL_SHA {
        return Ok(Parsed::Ignored(format!("{git_ref} was deleted")));
    }
    let kind = if git_ref.starts_with("refs/tags/") {
        EventKind::TagPush
    } else {
        kind
    };
    let (repository, clone_url, sender) = match provider {
        Provider::Gitlab => (
            get("/project/path_with_namespace")?,
            get("/project/git_http_url")?,
            get("/user_username")?,
        ),
        Provider::Github | Provider::Gitea => (
            get("/repository/full_name")?,
            get("/repository/clone_url")?,
            get("/sender/login").or_else(|_| get("/pusher/name"))?,
        ),
    };
    Ok(Parsed::Event(GitEvent {
        kind,
        repository,
        clone_url,
        git_ref,
        sha,
        sender,
        pull_request: None,
        base_ref: None,
    }))
}

/// A trigger's filters, ready to match events.
pub struct Filter {
    events: Vec<EventKind>,
    patterns: Vec<String>,
    refs: GlobSet,
}

impl Filter {
    /// Builds the filter of a stored (so already validated) trigger.
    pub fn new(events: &[EventKind], patterns: &[String]) -> Result<Filter, String> {
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            set.add(glob(pattern).map_err(|e| e.to_string())?);
        }
        Ok(Filter {
            events: events.to_vec(),
            patterns: patterns.to_vec(),
            refs: set.build().map_err(|e| e.to_string())?,
        })
    }

    /// `Err` says why the event starts no run.
    pub fn check(&self, event: &GitEvent) -> Result<(), String> {
        if !self.events.contains(&event.kind) {
            let events: Vec<&str> = self.events.iter().map(|e| e.as_str()).collect();
            return Err(format!(
                "{} events are not among this trigger's events ({})",
                event.kind,
                events.join(", ")
            ));
        }
        if self.patterns.is_empty() {
            return Ok(());
        }
        let matched = event.base_ref.as_deref().unwrap_or(&event.git_ref);
        let short = matched
            .strip_prefix("refs/heads/")
            .or_else(|| matched.strip_prefix("refs/tags/"))
            .unwrap_or(matched);
        if self.refs.is_match(matched) || self.refs.is_match(short) {
            Ok(())
        } else {
            Err(format!(
                "{matched} matches none of this trigger's ref filters ({})",
                self.patterns.join(", ")
            ))
        }
    }
}

impl GitEvent {
    /// The environment variables a run started by this event gets (documented in
    /// docs/security.md).
    pub fn env(&self, provider: Provider, delivery: &str) -> Vec<EnvVar> {
        let mut vars = vec![
            ("VFI_GIT_PROVIDER", provider.as_str().to_string()),
            ("VFI_GIT_EVENT", self.kind.as_str().to_string()),
            ("VFI_GIT_REPOSITORY", self.repository.clone()),
            ("VFI_GIT_CLONE_URL", self.clone_url.clone()),
            ("VFI_GIT_REF", self.git_ref.clone()),
            ("VFI_GIT_SHA", self.sha.clone()),
            ("VFI_GIT_SENDER", self.sender.clone()),
            ("VFI_GIT_DELIVERY", delivery.to_string()),
        ];
        if let Some(number) = self.pull_request {
            vars.push(("VFI_GIT_PULL_REQUEST", number.to_string()));
        }
        if let Some(base) = &self.base_ref {
            vars.push(("VFI_GIT_BASE_REF", base.clone()));
        }
        vars.into_iter()
            .map(|(name, value)| EnvVar {
                name: name.into(),
                value,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(provider: Provider, secret: &str, h: &HashMap<String, String>, body: &[u8]) -> bool {
        verify(
            provider,
            secret,
            |name| h.get(name).map(String::as_str),
            body,
        )
        .is_ok()
    }

    #[test]
    fn github_signatures_match_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let body = b"Hello, World!";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign("It's a Secret to Everybody", body),
            signature.trim_start_matches("sha256=")
        );
        let h = headers(&[("x-hub-signature-256", signature)]);
        assert!(check(
            Provider::Github,
            "It's a Secret to Everybody",
            &h,
            body
        ));
        assert!(!check(
            Provider::Github,
            "It's a Secret to Everybody",
            &h,
            b"Hello, World?"
        ));
        assert!(!check(
            Provider::Github,
            "another secret entirely",
            &h,
            body
        ));
        assert!(!check(
            Provider::Github,
            "It's a Secret to Everybody",
            &headers(&[]),
            body
        ));
        let unprefixed = headers(&[("x-hub-signature-256", &signature[7..])]);
        assert!(!check(
            Provider::Github,
            "It's a Secret to Everybody",
            &unprefixed,
            body
        ));
    }

    #[test]
    fn gitea_signatures_are_bare_hex_and_gitlab_tokens_are_the_secret() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let secret = "0123456789abcdef";
        let good = headers(&[("x-gitea-signature", &sign(secret, body))]);
        assert!(check(Provider::Gitea, secret, &good, body));
        let forgejo = headers(&[("x-forgejo-signature", &sign(secret, body))]);
        assert!(check(Provider::Gitea, secret, &forgejo, body));
        assert!(!check(
            Provider::Gitea,
            secret,
            &headers(&[("x-gitea-signature", "zz")]),
            body
        ));

        assert!(check(
            Provider::Gitlab,
            secret,
            &headers(&[("x-gitlab-token", secret)]),
            body
        ));
        assert!(!check(
            Provider::Gitlab,
            secret,
            &headers(&[("x-gitlab-token", "0123456789abcdeF")]),
            body
        ));
        assert!(!check(
            Provider::Gitlab,
            secret,
            &headers(&[("x-gitlab-token", "")]),
            body
        ));
        assert!(!check(Provider::Gitlab, secret, &headers(&[]), body));
    }

    fn push(git_ref: &str, after: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "ref": git_ref, "after": after,
            "repository": {"full_name": "o/r", "clone_url": "https://example.com/o/r.git"},
            "sender": {"login": "octocat"}
        }))
        .unwrap()
    }

    #[test]
    fn pushes_become_events_and_tags_are_tag_pushes() {
        let sha = "a".repeat(40);
        let Parsed::Event(event) =
            parse(Provider::Github, "push", &push("refs/heads/main", &sha)).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(
            (event.git_ref.as_str(), event.sha.as_str()),
            ("refs/heads/main", sha.as_str())
        );
        let Parsed::Event(tag) =
            parse(Provider::Gitea, "push", &push("refs/tags/v1", &sha)).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(tag.kind, EventKind::TagPush);
        assert!(matches!(
            parse(Provider::Github, "push", &push("refs/heads/gone", NULL_SHA)).unwrap(),
            Parsed::Ignored(_)
        ));
        assert!(matches!(
            parse(Provider::Github, "issues", b"{}").unwrap(),
            Parsed::Ignored(_)
        ));
        assert_eq!(
            parse(Provider::Github, "ping", b"{}").unwrap(),
            Parsed::Ping
        );
        assert!(parse(Provider::Github, "push", b"{}").is_err());
        assert!(parse(Provider::Github, "push", b"not json").is_err());
    }

    #[test]
    fn pull_requests_run_when_opened_or_updated_and_match_their_target_branch() {
        let github = |action: &str| {
            serde_json::to_vec(&json!({
                "action": action, "number": 42,
                "pull_request": {"head": {"ref": "feature/x", "sha": "c".repeat(40)}, "base": {"ref": "main"}},
                "repository": {"full_name": "o/r", "clone_url": "https://example.com/o/r.git"},
                "sender": {"login": "octocat"}
            }))
            .unwrap()
        };
        let Parsed::Event(event) =
            parse(Provider::Github, "pull_request", &github("opened")).unwrap()
        else {
            panic!("an opened pull request is an event")
        };
        assert_eq!(event.kind, EventKind::PullRequest);
        assert_eq!(event.git_ref, "refs/heads/feature/x");
        assert_eq!(event.base_ref.as_deref(), Some("refs/heads/main"));
        let env = event.env(Provider::Github, "d");
        assert!(env
            .iter()
            .any(|v| v.name == "VFI_GIT_PULL_REQUEST" && v.value == "42"));
        let filter = Filter::new(&[EventKind::PullRequest], &["main".into()]).unwrap();
        assert!(filter.check(&event).is_ok(), "the target branch is matched");
        assert!(matches!(
            parse(Provider::Github, "pull_request", &github("closed")).unwrap(),
            Parsed::Ignored(_)
        ));

        let gitlab = serde_json::to_vec(&json!({
            "object_kind": "merge_request", "user": {"username": "jsmith"},
            "project": {"path_with_namespace": "g/p", "git_http_url": "https://example.com/g/p.git"},
            "object_attributes": {"iid": 7, "action": "update", "source_branch": "fix", "target_branch": "main",
                                  "last_commit": {"id": "d".repeat(40)}}
        }))
        .unwrap();
        let Parsed::Event(mr) = parse(Provider::Gitlab, "Merge Request Hook", &gitlab).unwrap()
        else {
            panic!("an updated merge request is an event")
        };
        assert_eq!((mr.sha.len(), mr.pull_request), (40, Some(7)));
        assert_eq!(mr.sender, "jsmith");
    }

    #[test]
    fn filters_match_event_kinds_and_ref_globs() {
        let sha = "b".repeat(40);
        let event =
            |git_ref: &str| match parse(Provider::Github, "push", &push(git_ref, &sha)).unwrap() {
                Parsed::Event(e) => e,
                other => panic!("{other:?}"),
            };
        let filter = Filter::new(
            &[EventKind::Push],
            &[
                "main".into(),
                "release/*".into(),
                "refs/heads/hotfix/**".into(),
            ],
        )
        .unwrap();
        assert!(filter.check(&event("refs/heads/main")).is_ok());
        assert!(filter.check(&event("refs/heads/release/1.0")).is_ok());
        assert!(filter.check(&event("refs/heads/hotfix/x/y")).is_ok());
        assert!(
            filter.check(&event("refs/heads/release/1.0/rc")).is_err(),
            "* does not cross /"
        );
        assert!(filter
            .check(&event("refs/heads/dev"))
            .unwrap_err()
            .contains("matches none"));
        assert!(filter
            .check(&event("refs/tags/main"))
            .unwrap_err()
            .contains("tag_push"));
        assert!(Filter::new(&[EventKind::Push], &[])
            .unwrap()
            .check(&event("refs/heads/x"))
            .is_ok());
    }

    #[test]
    fn trigger_specs_need_a_long_secret_and_valid_globs() {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "provider": "github", "secret": "short", "refs": ["main", "[oops"]
        }))
        .unwrap();
        assert_eq!(spec.events, [EventKind::Push]);
        let fields: Vec<String> = spec
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["secret", "refs[1]"]);
    }

    #[test]
    fn delivery_ids_come_from_the_header_or_the_body() {
        let h = headers(&[("x-github-delivery", "abc")]);
        assert_eq!(
            delivery_id(Provider::Github, |n| h.get(n).map(String::as_str), b"x"),
            "abc"
        );
        let none = headers(&[]);
        let a = delivery_id(Provider::Gitlab, |n| none.get(n).map(String::as_str), b"x");
        let b = delivery_id(Provider::Gitlab, |n| none.get(n).map(String::as_str), b"y");
        assert!(a.starts_with("sha256:") && a != b);
    }
}
