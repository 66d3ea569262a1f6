//! Results back where people look: what a trigger's `report` and a task's `notify` entries say,
//! how a run's status maps to each Git host's commit states, the text a report carries, and what
//! an answer from a host means for the delivery (delivered, retry later, or give up). Pure: the
//! reporter loop (src/runtime/reporter.rs) and the senders (src/outbound/) do the I/O.

use super::validation::{Errors, Invalid};
use super::RunStatus;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// A Git host's commit status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ReportProvider {
    /// GitHub commit statuses (`POST /repos/{owner}/{repo}/statuses/{sha}`), with a token.
    Github,
    /// GitLab commit status (`POST /projects/{path}/statuses/{sha}`), with a project or group
    /// token.
    Gitlab,
    /// Gitea and Forgejo commit status (`POST /repos/{owner}/{repo}/statuses/{sha}`).
    Gitea,
}

impl ReportProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportProvider::Github => "github",
            ReportProvider::Gitlab => "gitlab",
            ReportProvider::Gitea => "gitea",
        }
    }

    /// The public service's API, when the host has one; Gitea/Forgejo have none.
    pub fn default_api_base(self) -> Option<&'static str> {
        match self {
            ReportProvider::Github => Some("https://api.github.com"),
            ReportProvider::Gitlab => Some("https://gitlab.com/api/v4"),
            ReportProvider::Gitea => None,
        }
    }

    /// The commit state a run in `status` is reported as (the README's table).
    pub fn state(self, status: RunStatus) -> &'static str {
        use RunStatus::*;
        match (self, status) {
            (ReportProvider::Gitlab, Running) => "running",
            (_, Queued | Creating | Admitting | Pending | Running) => "pending",
            (ReportProvider::Gitlab, Succeeded) => "success",
            (ReportProvider::Gitlab, Failed | Lost) => "failed",
            (ReportProvider::Gitlab, Cancelled) => "canceled",
            (_, Succeeded) => "success",
            (_, Failed | Lost) => "failure",
            (_, Cancelled) => "error",
        }
    }
}

impl From<super::webhook::Provider> for ReportProvider {
    fn from(provider: super::webhook::Provider) -> Self {
        match provider {
            super::webhook::Provider::Github => ReportProvider::Github,
            super::webhook::Provider::Gitlab => ReportProvider::Gitlab,
            super::webhook::Provider::Gitea => ReportProvider::Gitea,
        }
    }
}

/// A trigger's `report` as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportSpec {
    /// The host to report to (default: the trigger's provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ReportProvider>,
    /// The status context (GitHub, Gitea) or name (GitLab); default `vfi/<task>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 255)]
    pub context: Option<String>,
    /// The link shown with the status; default the run's dashboard page under `PUBLIC_BASE_URL`
    /// (none when that is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// The host's API (GitHub Enterprise `https://host/api/v3`, self-hosted GitLab
    /// `https://host/api/v4`, Gitea/Forgejo `https://host/api/v1`); default api.github.com or
    /// gitlab.com; required for Gitea/Forgejo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    /// The token the host's API accepts (or a GitHub App below). Write-only: it is never
    /// returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(write_only, min_length = 1, max_length = 1024)]
    pub token: Option<String>,
    /// A GitHub App's id: with `installationId` and `privateKey` instead of `token`, runs are
    /// reported as check runs (Checks API) under installation tokens the service mints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub app_id: Option<u64>,
    /// The app's installation on the repository's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub installation_id: Option<u64>,
    /// The app's private key (PEM, RSA). Write-only: it is never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(write_only)]
    pub private_key: Option<String>,
}

/// A trigger's report settings as stored and shown: defaults resolved, no token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportSettings {
    pub provider: ReportProvider,
    pub context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    pub api_base_url: String,
    /// Set for a GitHub App: runs are reported as check runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_id: Option<u64>,
}

/// `Ok` when `text` is an absolute http(s) URL with a host.
pub fn http_url(text: &str) -> Result<(), String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) => Err(format!(
            "must be an http or https URL (is {}:)",
            url.scheme()
        )),
        Err(error) => Err(format!("must be an http or https URL ({error})")),
    }
}

impl ReportSpec {
    /// Checks the spec (fields named under `report.`) and resolves its defaults for a trigger of
    /// `task` whose deliveries come from `trigger_provider`.
    pub fn resolve(
        &self,
        task: &str,
        trigger_provider: super::webhook::Provider,
        errors: &mut Errors,
    ) -> Option<ReportSettings> {
        let provider = self.provider.unwrap_or(trigger_provider.into());
        let before = errors.len();
        if let Some(context) = &self.context {
            if context.is_empty() || context.chars().count() > 255 {
                errors.add("report.context", "must be 1 to 255 characters");
            }
        }
        if let Some(target) = &self.target_url {
            errors.check("report.targetUrl", http_url(target));
        }
        if let Some(base) = &self.api_base_url {
            errors.check("report.apiBaseUrl", http_url(base));
        } else if provider.default_api_base().is_none() {
            errors.add(
                "report.apiBaseUrl",
                format!(
                    "is required for {} (e.g. https://gitea.example.com/api/v1)",
                    provider.as_str()
                ),
            );
        }
        let app =
            self.app_id.is_some() || self.installation_id.is_some() || self.private_key.is_some();
        match (&self.token, app) {
            (Some(_), true) => errors.add(
                "report.token",
                "give either a token or a GitHub App (appId, installationId, privateKey), not both",
            ),
            (None, false) => errors.add(
                "report.token",
                "is required (or a GitHub App: appId, installationId, privateKey)",
            ),
            (Some(token), false) => {
                let length = token.chars().count();
                if length == 0 || length > 1024 {
                    errors.add("report.token", "must be 1 to 1024 characters");
                } else if token.chars().any(|c| c.is_control()) {
                    errors.add("report.token", "must not contain control characters");
                }
            }
            (None, true) => {
                if provider != ReportProvider::Github {
                    errors.add("report.appId", "GitHub Apps report to GitHub only");
                }
                if self.app_id.is_none_or(|id| id == 0) {
                    errors.add("report.appId", "is required for a GitHub App (1 or more)");
                }
                if self.installation_id.is_none_or(|id| id == 0) {
                    errors.add(
                        "report.installationId",
                        "is required for a GitHub App (1 or more)",
                    );
                }
                match &self.private_key {
                    None => errors.add("report.privateKey", "is required for a GitHub App"),
                    Some(pem) => {
                        if let Err(error) = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
                        {
                            errors.add(
                                "report.privateKey",
                                format!("is not an RSA private key in PEM form ({error})"),
                            );
                        }
                    }
                }
            }
        }
        (errors.len() == before).then(|| ReportSettings {
            provider,
            context: self
                .context
                .clone()
                .unwrap_or_else(|| format!("vfi/{task}")),
            target_url: self.target_url.clone(),
            api_base_url: self
                .api_base_url
                .clone()
                .or_else(|| provider.default_api_base().map(str::to_owned))
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            app_id: self.app_id.filter(|_| self.token.is_none()),
            installation_id: self.installation_id.filter(|_| self.token.is_none()),
        })
    }

    /// The secret to store: the token, or the app's private key.
    pub fn secret(&self) -> Option<&str> {
        self.token.as_deref().or(self.private_key.as_deref())
    }
}

/// A check run's `status` and, once completed, `conclusion` for a run in `status` (Checks API).
pub fn check_state(status: RunStatus) -> (&'static str, Option<&'static str>) {
    use RunStatus::*;
    match status {
        Queued | Creating | Admitting | Pending => ("queued", None),
        Running => ("in_progress", None),
        Succeeded => ("completed", Some("success")),
        Failed | Lost => ("completed", Some("failure")),
        Cancelled => ("completed", Some("cancelled")),
    }
}

/// Where a run's status is reported, and how that went.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub provider: ReportProvider,
    pub context: String,
    pub repository: String,
    pub sha: String,
    /// The last run status the host accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivered: Option<String>,
    /// The host's last final refusal (401, 403, 404, 422...): retries of that state stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a `notify` entry may be sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    Failed,
    /// The first success after failures of the same task (for webhook runs: of the same ref).
    Recovered,
    Succeeded,
    Cancelled,
    Lost,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// `{"event", "deliveryId", "run": {...}}`.
    #[default]
    Json,
    /// A Slack incoming-webhook message: `{"text": "..."}`.
    Slack,
}

/// One `notify` entry of a task, as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySpec {
    /// The events that send a notification.
    pub on: Vec<NotifyEvent>,
    /// Where the POST goes (http or https).
    pub url: String,
    /// Signs each body: `X-Vfi-Signature: sha256=<hex HMAC-SHA256 of the body>` (16 to 256
    /// characters). Write-only: it is never returned.
    #[schema(write_only, min_length = 16, max_length = 256)]
    pub secret: String,
    #[serde(default)]
    pub format: NotifyFormat,
}

/// A `notify` entry as the API shows it: without its secret, and a Slack URL redacted.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotifyView {
    pub on: Vec<NotifyEvent>,
    /// Where the POST goes; for `format: slack`, only its scheme and host followed by `/***`
    /// (a Slack incoming-webhook URL is its own credential). A `PUT` may send the redacted
    /// value back unchanged to keep the stored URL, when only one stored Slack URL has that
    /// host (else it is refused: give the URLs whole).
    pub url: String,
    pub format: NotifyFormat,
}

impl From<&NotifySpec> for NotifyView {
    fn from(spec: &NotifySpec) -> Self {
        NotifyView {
            on: spec.on.clone(),
            url: shown_url(&spec.url, spec.format),
            format: spec.format,
        }
    }
}

/// What stands for the hidden part of a redacted URL.
pub const REDACTED: &str = "***";

/// A receiver URL as the API shows it: whole for `json` receivers (their bodies are signed
/// with the entry's secret, so the URL grants nothing), and for `slack`, whose incoming-webhook
/// URL is the credential itself, only `scheme://host[:port]/***` (no user, path or query).
pub fn shown_url(url: &str, format: NotifyFormat) -> String {
    match format {
        NotifyFormat::Json => url.to_string(),
        NotifyFormat::Slack => match url::Url::parse(url) {
            Ok(parsed) => {
                let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
                format!(
                    "{}://{}{port}/{REDACTED}",
                    parsed.scheme(),
                    parsed.host_str().unwrap_or_default()
                )
            }
            Err(_) => REDACTED.to_string(),
        },
    }
}

/// A `PUT` of a task that sends back a redacted URL as the API showed it keeps the stored
/// URL: each entry of `entries` whose `url` is exactly the redaction of ONE stored Slack
/// entry's URL gets that URL. A redaction shows only scheme and host, so two stored URLs on one
/// host (two channels' webhooks on hooks.slack.com) look the same: which one a redacted value
/// meant cannot be known (after an entry was removed or the list reordered, taking the one at
/// the same index would send one channel's events to another), so such a value, like one that
/// matches nothing, stays as given and [`check_notify`] refuses it: the caller gives the URLs.
pub fn keep_redacted_urls(entries: &mut [NotifySpec], stored: &[NotifySpec]) {
    for entry in entries.iter_mut() {
        if entry.format != NotifyFormat::Slack || !entry.url.ends_with(REDACTED) {
            continue;
        }
        let matches = |s: &&NotifySpec| {
            s.format == NotifyFormat::Slack && shown_url(&s.url, s.format) == entry.url
        };
        let mut found = stored.iter().filter(|s| matches(s));
        if let (Some(only), None) = (found.next(), found.next()) {
            entry.url = only.url.clone();
        }
    }
}

pub const MAX_NOTIFY: usize = 10;

/// Checks a task's `notify` list.
pub fn check_notify(entries: &[NotifySpec], errors: &mut Errors) {
    if entries.len() > MAX_NOTIFY {
        errors.add("notify", format!("must have at most {MAX_NOTIFY} entries"));
    }
    for (i, entry) in entries.iter().enumerate() {
        if entry.on.is_empty() {
            errors.add(format!("notify[{i}].on"), "must name at least one event");
        }
        errors.check(format!("notify[{i}].url"), http_url(&entry.url));
        if entry.format == NotifyFormat::Slack && entry.url == shown_url(&entry.url, entry.format) {
            errors.add(
                format!("notify[{i}].url"),
                "is a redacted URL that matches no stored entry of this task, or several (Slack URLs on the same host look alike redacted); give the whole URL",
            );
        }
        let length = entry.secret.chars().count();
        if !(super::webhook::MIN_SECRET..=super::webhook::MAX_SECRET).contains(&length) {
            errors.add(
                format!("notify[{i}].secret"),
                format!(
                    "must be {} to {} characters (is {length})",
                    super::webhook::MIN_SECRET,
                    super::webhook::MAX_SECRET
                ),
            );
        }
    }
}

/// Checks a trigger's report (or none) and resolves it.
pub fn check_report(
    report: Option<&ReportSpec>,
    task: &str,
    provider: super::webhook::Provider,
) -> Result<Option<ReportSettings>, Invalid> {
    let Some(report) = report else {
        return Ok(None);
    };
    let mut errors = Errors::new();
    let settings = report.resolve(task, provider, &mut errors);
    errors.finish().map(|()| settings)
}

/// The description a commit status carries: the failure or waiting reason when there is one.
/// At most 140 characters (GitHub's limit; the others take more).
pub fn description(status: RunStatus, reason: Option<&str>, message: Option<&str>) -> String {
    let base = match status {
        RunStatus::Queued | RunStatus::Creating => "Queued",
        RunStatus::Admitting => "Waiting for Kueue admission",
        RunStatus::Pending => "Waiting to start",
        RunStatus::Running => "Running",
        RunStatus::Succeeded => "Succeeded",
        RunStatus::Failed => "Failed",
        RunStatus::Cancelled => "Cancelled",
        RunStatus::Lost => "Lost: its Job vanished",
    };
    let detail = match (reason, message) {
        (Some(reason), Some(message)) => Some(format!("{reason}: {message}")),
        (Some(text), None) | (None, Some(text)) => Some(text.to_owned()),
        (None, None) => None,
    };
    let text = match detail {
        Some(detail) if status != RunStatus::Succeeded => format!("{base}: {detail}"),
        _ => base.to_owned(),
    };
    truncate(&text, 140)
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// What became of one attempt to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Transient: try again, not before the host's `Retry-After` when it gave one.
    Retry(Option<Duration>),
    /// The host refused for good (401, 403, 404, 422, any other 4xx): retries stop.
    Final,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Retry(_) => "retry",
            Verdict::Final => "failed",
        }
    }
}

/// Reads a host's answer: 2xx delivered; 5xx, 408 and 429 transient (honouring `Retry-After` in
/// seconds or as an HTTP date, given `now`); every other answer final. `None` (no answer: a
/// timeout or a connection error) is transient.
pub fn verdict(
    status: Option<u16>,
    retry_after: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Verdict {
    let Some(status) = status else {
        return Verdict::Retry(None);
    };
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => {
            Verdict::Retry(retry_after.and_then(|v| parse_retry_after(v, now)))
        }
        _ => Verdict::Final,
    }
}

fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::webhook::Provider;
    use RunStatus::*;

    fn slack(url: &str) -> NotifySpec {
        NotifySpec {
            on: vec![NotifyEvent::Failed],
            url: url.to_string(),
            secret: "0123456789abcdef".into(),
            format: NotifyFormat::Slack,
        }
    }

    #[test]
    fn a_slack_url_is_shown_as_its_scheme_and_host_only_and_a_json_url_whole() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX";
        assert_eq!(
            shown_url(url, NotifyFormat::Slack),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            shown_url("http://user:pw@127.0.0.1:8080/a?b=c", NotifyFormat::Slack),
            "http://127.0.0.1:8080/***"
        );
        assert_eq!(shown_url(url, NotifyFormat::Json), url);
        assert_eq!(shown_url("not a url", NotifyFormat::Slack), "***");
    }

    #[test]
    fn a_redacted_url_sent_back_keeps_the_stored_one_and_an_unknown_one_is_refused() {
        let stored = vec![
            slack("https://hooks.slack.com/services/T/B/one"),
            slack("https://other.example/services/T/B/two"),
        ];
        let mut sent = vec![
            slack("https://other.example/***"),
            slack("https://hooks.slack.com/***"),
            slack("https://unknown.example/***"),
            slack("https://hooks.slack.com/services/T/B/new"),
        ];
        keep_redacted_urls(&mut sent, &stored);
        assert_eq!(sent[0].url, stored[1].url);
        assert_eq!(sent[1].url, stored[0].url);
        assert_eq!(sent[2].url, "https://unknown.example/***");
        assert_eq!(sent[3].url, "https://hooks.slack.com/services/T/B/new");
        let mut errors = Errors::new();
        check_notify(&sent, &mut errors);
        let refused: Vec<String> = errors
            .finish()
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.field.clone())
            .collect();
        assert_eq!(refused, ["notify[2].url"]);
    }

    #[test]
    fn a_redacted_url_that_could_be_either_of_two_stored_ones_is_refused_not_guessed() {
        // Two channels' webhooks on one host; the caller removed the first and sent the
        // second back redacted: restoring by index would route #general's events to #alerts.
        let stored = vec![
            slack("https://hooks.slack.com/services/T/B/alerts"),
            slack("https://hooks.slack.com/services/T/B/general"),
        ];
        let mut sent = vec![slack("https://hooks.slack.com/***")];
        keep_redacted_urls(&mut sent, &stored);
        assert_eq!(sent[0].url, "https://hooks.slack.com/***");
        let mut errors = Errors::new();
        check_notify(&sent, &mut errors);
        let refused: Vec<String> = errors
            .finish()
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.field.clone())
            .collect();
        assert_eq!(refused, ["notify[0].url"]);
    }

    #[test]
    fn states_map_as_the_readme_table_says() {
        let github = ReportProvider::Github;
        let gitlab = ReportProvider::Gitlab;
        let gitea = ReportProvider::Gitea;
        for live in [Queued, Creating, Pending, Running] {
            assert_eq!(github.state(live), "pending");
            assert_eq!(gitea.state(live), "pending");
        }
        assert_eq!(gitlab.state(Pending), "pending");
        assert_eq!(gitlab.state(Running), "running");
        assert_eq!(
            [Succeeded, Failed, Lost, Cancelled].map(|s| github.state(s)),
            ["success", "failure", "failure", "error"]
        );
        assert_eq!(
            [Succeeded, Failed, Lost, Cancelled].map(|s| gitea.state(s)),
            ["success", "failure", "failure", "error"]
        );
        assert_eq!(
            [Succeeded, Failed, Lost, Cancelled].map(|s| gitlab.state(s)),
            ["success", "failed", "failed", "canceled"]
        );
    }

    #[test]
    fn answers_are_delivered_retried_or_final() {
        let now = chrono::Utc::now();
        assert_eq!(verdict(Some(201), None, now), Verdict::Delivered);
        assert_eq!(verdict(Some(502), None, now), Verdict::Retry(None));
        assert_eq!(verdict(None, None, now), Verdict::Retry(None));
        assert_eq!(
            verdict(Some(429), Some("7"), now),
            Verdict::Retry(Some(Duration::from_secs(7)))
        );
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        let Verdict::Retry(Some(wait)) = verdict(Some(503), Some(&later), now) else {
            panic!("a date is honoured")
        };
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30));
        for status in [400, 401, 403, 404, 422] {
            assert_eq!(verdict(Some(status), None, now), Verdict::Final, "{status}");
        }
    }

    #[test]
    fn reports_resolve_their_defaults_and_name_bad_fields() {
        let spec: ReportSpec = serde_json::from_value(serde_json::json!({"token": "t"})).unwrap();
        let settings = check_report(Some(&spec), "render", Provider::Github)
            .unwrap()
            .unwrap();
        assert_eq!(settings.context, "vfi/render");
        assert_eq!(settings.api_base_url, "https://api.github.com");
        assert_eq!(settings.provider, ReportProvider::Github);

        let fields = |value: serde_json::Value, provider| -> Vec<String> {
            let spec: ReportSpec = serde_json::from_value(value).unwrap();
            check_report(Some(&spec), "t", provider)
                .unwrap_err()
                .0
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(
                serde_json::json!({"token": "t", "targetUrl": "ftp://x/y", "apiBaseUrl": "javascript:alert(1)"}),
                Provider::Github
            ),
            ["report.targetUrl", "report.apiBaseUrl"]
        );
        assert_eq!(
            fields(serde_json::json!({"token": "t"}), Provider::Gitea),
            ["report.apiBaseUrl"]
        );
        assert!(serde_json::from_value::<ReportSpec>(
            serde_json::json!({"token": "t", "provider": "bitbucket"})
        )
        .is_err());
    }

    #[test]
    fn notify_entries_need_events_an_http_url_and_a_long_secret() {
        let entries: Vec<NotifySpec> = serde_json::from_value(serde_json::json!([
            {"on": [], "url": "file:///etc/passwd", "secret": "short"},
            {"on": ["failed", "recovered"], "url": "https://hooks.example.com/x", "secret": "0123456789abcdef"}
        ]))
        .unwrap();
        let mut errors = Errors::new();
        check_notify(&entries, &mut errors);
        let fields: Vec<String> = errors
            .finish()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["notify[0].on", "notify[0].url", "notify[0].secret"]
        );
        assert_eq!(entries[1].format, NotifyFormat::Json);
    }

    #[test]
    fn descriptions_carry_the_reason_and_fit_github() {
        assert_eq!(description(Succeeded, None, None), "Succeeded");
        assert_eq!(
            description(Pending, Some("ImagePullBackOff"), Some("no such image")),
            "Waiting to start: ImagePullBackOff: no such image"
        );
        let long = "x".repeat(500);
        assert_eq!(description(Failed, Some(&long), None).chars().count(), 140);
    }
}
