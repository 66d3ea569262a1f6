//! A delivery's payload read into the facts of a Git event, and the environment variables a run
//! gets from them. Payload values only ever become environment variable *values*.

use super::{EventKind, Provider};
use crate::domain::template::EnvVar;
use serde_json::Value;

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
    /// GitHub's "Re-run" of a check run (`check_run`) or of every check of a commit
    /// (`check_suite`), action `rerequested`: rerun the run it names.
    Rerequested(Rerequest),
}

/// What a GitHub re-request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerequest {
    pub repository: String,
    pub sha: String,
    /// A check run's `external_id`: the id of the run that created it.
    pub external_id: Option<String>,
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
        (Provider::Github, "check_run" | "check_suite") => {
            if action != "rerequested" {
                return Ok(Parsed::Ignored(format!(
                    "{event} action {action:?} does not start runs; rerequested does"
                )));
            }
            let sha = get(&format!("/{event}/head_sha"))?;
            let external_id = (event == "check_run")
                .then(|| get("/check_run/external_id").ok())
                .flatten()
                .filter(|id| !id.is_empty());
            return Ok(Parsed::Rerequested(Rerequest {
                repository: get("/repository/full_name")?,
                sha,
                external_id,
            }));
        }
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
            .map(|(name, value)| EnvVar::literal(name, value))
            .collect()
    }
}
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::webhook::Filter;
    use serde_json::json;

    pub(in crate::domain::webhook) fn push(git_ref: &str, after: &str) -> Vec<u8> {
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
}
