//! The reporter: delivers the outbox (commit statuses to Git hosts, notifications to receivers).
//!
//! It claims ordering keys (one commit status context, or one notification) under a lease, like
//! the launcher claims runs, so replicas share the work and a reporter that dies mid-send is
//! taken over when its lease lapses. Each claim sends the key's newest message only: older
//! states written meanwhile were superseded in the database, so a host never gets an older state
//! after a newer one. Transient answers (5xx, 408, 429, timeouts, connection errors) are tried
//! again with capped exponential backoff (at least the host's `Retry-After`); other refusals
//! (401, 403, 404, 422, ...) are final and kept on the run as `report.lastError`. A run's own
//! status is never touched here.
//!
//! Woken at commit by the outbox's NOTIFY, and by a poll for due retries.

use super::Runtime;
use crate::domain::report::{self, Verdict};
use crate::domain::RunStatus;
use crate::outbound::github_checks::{CheckReport, Installations};
use crate::outbound::{self, receiver, Answer, StatusReport};
use crate::store::outbox::{self, Attempt, Claimed, Message};
use backon::BackoffBuilder;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Settings of the reporter.
#[derive(Debug, Clone)]
pub struct ReporterSettings {
    /// Deliveries in flight at once on this replica (0: this replica delivers nothing).
    pub concurrency: usize,
    /// How often due retries are looked for when nothing wakes the reporter.
    pub poll: Duration,
    /// How long one delivery may take (connect, send, answer).
    pub timeout: Duration,
    /// The first and the longest pause before a transient failure is tried again.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A message still undelivered this long after it was written is given up (final).
    pub give_up_after: Duration,
    /// The service's public URL; reports link to the run's dashboard page under it.
    pub public_base_url: Option<String>,
}

/// What deliveries share: the HTTP client and the GitHub App installation tokens.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    installations: Arc<Installations>,
}

const BATCH: usize = 64;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    let settings = runtime.settings.reporter.clone();
    if settings.concurrency == 0 {
        tracing::info!("reporter: off on this replica (REPORT_CONCURRENCY=0)");
        shutdown.cancelled().await;
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .user_agent(outbound::USER_AGENT)
        // A host that redirects a status call is refused, not followed with our token.
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %crate::error::chain(&error), "reporter: no HTTP client; nothing is delivered");
            shutdown.cancelled().await;
            return;
        }
    };
    let sender = Sender {
        client,
        installations: Arc::default(),
    };
    let mut wake = runtime.notifications.subscribe(outbox::CHANNEL);
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut sends = JoinSet::new();
    let mut gauges_at = tokio::time::Instant::now();
    loop {
        if let Err(error) = send_due(&runtime, &sender, &slots, &mut sends).await {
            tracing::warn!(error = %crate::error::chain(&error), "reporter: claiming failed; retrying");
        }
        if gauges_at <= tokio::time::Instant::now() {
            gauges_at = tokio::time::Instant::now() + Duration::from_secs(5);
            match outbox::depth(&runtime.db).await {
                Ok((depth, oldest)) => {
                    metrics::gauge!("vfi_outbox_depth").set(depth as f64);
                    metrics::gauge!("vfi_outbox_oldest_age_seconds").set(oldest);
                }
                Err(error) => {
                    tracing::debug!(error = %crate::error::chain(&error), "reporter: outbox depth unknown")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.recv() => {}
            _ = tokio::time::sleep(settings.poll) => {}
            Some(_) = sends.join_next() => {}
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sends.join_next().await.is_some() {}
    })
    .await;
}

/// The lease on a key: longer than a delivery may take (a GitHub App's may be two requests: an
/// installation token, then the check run), so a live reporter never loses it.
fn lease(settings: &ReporterSettings) -> Duration {
    settings.timeout * 2 + Duration::from_secs(10)
}

async fn send_due(
    runtime: &Runtime,
    sender: &Sender,
    slots: &Arc<Semaphore>,
    sends: &mut JoinSet<()>,
) -> Result<(), sqlx::Error> {
    loop {
        let free = slots.available_permits().min(BATCH);
        if free == 0 {
            return Ok(());
        }
        let settings = &runtime.settings.reporter;
        let claimed = outbox::claim(
            &runtime.db,
            &runtime.settings.instance,
            lease(settings),
            free as i64,
        )
        .await?;
        let all = claimed.len() < free;
        for claim in claimed {
            let permit = slots
                .clone()
                .try_acquire_owned()
                .expect("no more claims than free slots");
            sends.spawn(deliver(runtime.clone(), sender.clone(), claim, permit));
        }
        if all {
            return Ok(());
        }
    }
}

async fn deliver(runtime: Runtime, sender: Sender, claim: Claimed, _permit: OwnedSemaphorePermit) {
    if let Err(error) = try_deliver(&runtime, &sender, &claim).await {
        // The lease lapses and the key is taken again.
        tracing::warn!(key = %claim.key, error = %crate::error::chain(&error), "reporter: recording a delivery failed; it is tried again");
    }
}

#[tracing::instrument(skip_all, fields(key = %claim.key, message = claim.pending_id))]
async fn try_deliver(
    runtime: &Runtime,
    sender: &Sender,
    claim: &Claimed,
) -> Result<(), sqlx::Error> {
    let settings = &runtime.settings.reporter;
    let owner = runtime.settings.instance.as_str();
    let Some(message) = outbox::message(&runtime.db, claim.pending_id).await? else {
        return outbox::drop_missing(&runtime.db, &claim.key, owner, claim.pending_id).await;
    };
    if let Some(delivered) = claim.delivered_id {
        if let Some(previous) = outbox::message(&runtime.db, delivered).await? {
            if repeats(&previous, &message) {
                return outbox::skip(&runtime.db, &claim.key, owner, message.id).await;
            }
        }
    }
    let mut created = None;
    let (target, answer, mut verdict) = match check_report(settings, &message) {
        Some(Ok(report)) => {
            let (answer, unmakeable, check_run) =
                sender.installations.report(&sender.client, &report).await;
            created = check_run;
            let verdict = if unmakeable {
                Verdict::Final
            } else {
                report::verdict(
                    answer.status,
                    answer.retry_after.as_deref(),
                    chrono::Utc::now(),
                )
            };
            ("github".to_owned(), answer, verdict)
        }
        Some(Err(text)) => ("github".to_owned(), Answer::none(text), Verdict::Final),
        None => {
            let (target, request) = request(&sender.client, settings, &message);
            match request {
                Ok(request) => {
                    let answer = outbound::send(request).await;
                    let verdict = report::verdict(
                        answer.status,
                        answer.retry_after.as_deref(),
                        chrono::Utc::now(),
                    );
                    (target, answer, verdict)
                }
                Err(text) => (target, Answer::none(text), Verdict::Final),
            }
        }
    };
    let mut text = match answer.status {
        Some(status) if !(200..300).contains(&status) => {
            format!("{target} answered {status}: {}", answer.text)
        }
        _ => answer.text.clone(),
    };
    let age = (chrono::Utc::now() - message.created_at)
        .to_std()
        .unwrap_or_default();
    if matches!(verdict, Verdict::Retry(_)) && age >= settings.give_up_after {
        verdict = Verdict::Final;
        text = format!("given up after {}s: {text}", age.as_secs());
    }
    let next_at = match verdict {
        Verdict::Retry(after) => {
            let pause = backoff(settings, claim.failures + 1)
                .max(after.unwrap_or_default().min(MAX_RETRY_AFTER));
            chrono::Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default()
        }
        _ => chrono::Utc::now(),
    };
    let run_id = message.run_id.map(|id| id.to_string()).unwrap_or_default();
    match verdict {
        Verdict::Delivered => {
            tracing::debug!(%run_id, kind = %message.kind, status = %message.status, %target, "delivered")
        }
        Verdict::Retry(_) => {
            tracing::info!(%run_id, kind = %message.kind, status = %message.status, %target, answer = ?text, %next_at, "delivery failed for now; trying again")
        }
        Verdict::Final => {
            tracing::warn!(%run_id, kind = %message.kind, status = %message.status, %target, answer = ?text, "delivery refused for good")
        }
    }
    let provider = match message.provider {
        Some(provider) if message.kind == "status" => provider.as_str(),
        _ => "receiver",
    };
    metrics::counter!("vfi_outbox_deliveries_total", "provider" => provider, "kind" => message.kind.clone(), "result" => verdict.as_str()).increment(1);
    outbox::finish(
        &runtime.db,
        Attempt {
            key: &claim.key,
            owner,
            message: message.id,
            run: message.run_id,
            kind: &message.kind,
            verdict,
            next_at,
            http_status: answer.status,
            answer: &text,
            duration: answer.duration,
            check_run: created,
        },
    )
    .await
}

/// Whether `next` would tell the host nothing `previous` (delivered) did not: the same commit
/// state and text. GitLab refuses a repeated state outright (a pending commit status cannot
/// become pending again), so there the state alone decides.
fn repeats(previous: &Message, next: &Message) -> bool {
    if previous.kind != "status" || next.kind != "status" {
        return false;
    }
    let (Some(provider), Ok(before), Ok(after)) = (
        next.provider,
        previous.status.parse::<RunStatus>(),
        next.status.parse::<RunStatus>(),
    ) else {
        return false;
    };
    let same_state = if next.app_id.is_some() {
        report::check_state(before) == report::check_state(after)
    } else {
        provider.state(before) == provider.state(after)
    };
    if !same_state {
        return false;
    }
    provider == crate::domain::report::ReportProvider::Gitlab
        || report::description(
            before,
            previous.reason.as_deref(),
            previous.message.as_deref(),
        ) == report::description(after, next.reason.as_deref(), next.message.as_deref())
}

/// The run's dashboard page under the public base URL.
fn run_page(settings: &ReporterSettings, run: Option<uuid::Uuid>) -> Option<String> {
    let base = settings.public_base_url.as_deref()?;
    Some(format!("{}/#/runs/{}", base.trim_end_matches('/'), run?))
}

/// A GitHub App's check run report of `message`, if it is one (`Err`: it cannot be made).
fn check_report<'a>(
    settings: &ReporterSettings,
    message: &'a Message,
) -> Option<Result<CheckReport<'a>, String>> {
    let (Some(app_id), Some(installation_id)) = (message.app_id, message.installation_id) else {
        return None;
    };
    if message.kind != "status" {
        return None;
    }
    let Some(private_key) = message.token.as_deref() else {
        return Some(Err(
            "the trigger that reports this run was deleted, and its app's key with it".into(),
        ));
    };
    let Ok(status) = message.status.parse::<RunStatus>() else {
        return Some(Err(format!("unknown run status {:?}", message.status)));
    };
    let run_id = message.run_id?;
    Some(Ok(CheckReport {
        api_base: message.api_base.as_deref().unwrap_or_default(),
        repository: message.repository.as_deref().unwrap_or_default(),
        sha: message.sha.as_deref().unwrap_or_default(),
        context: message.context.as_deref().unwrap_or_default(),
        status,
        description: report::description(
            status,
            message.reason.as_deref(),
            message.message.as_deref(),
        ),
        target_url: message
            .target_url
            .clone()
            .or_else(|| run_page(settings, message.run_id)),
        run_id,
        app_id,
        installation_id,
        private_key,
        check_run_id: message.check_run_id,
    }))
}

/// Who `message` goes to (for answers and logs: no secrets), and its request.
fn request(
    client: &reqwest::Client,
    settings: &ReporterSettings,
    message: &Message,
) -> (String, Result<reqwest::RequestBuilder, String>) {
    let page = run_page(settings, message.run_id);
    if message.kind == "status" {
        let Some(provider) = message.provider else {
            return (
                "git host".into(),
                Err("the run has no report settings".into()),
            );
        };
        let target = provider.as_str().to_owned();
        let Some(token) = message.token.as_deref() else {
            return (
                target,
                Err("the trigger that reports this run was deleted, and its token with it".into()),
            );
        };
        let Ok(status) = message.status.parse::<RunStatus>() else {
            return (
                target,
                Err(format!("unknown run status {:?}", message.status)),
            );
        };
        let description = report::description(
            status,
            message.reason.as_deref(),
            message.message.as_deref(),
        );
        let target_url = message.target_url.clone().or(page);
        let report = StatusReport {
            api_base: message.api_base.as_deref().unwrap_or_default(),
            repository: message.repository.as_deref().unwrap_or_default(),
            sha: message.sha.as_deref().unwrap_or_default(),
            git_ref: message.git_ref.as_deref().unwrap_or_default(),
            context: message.context.as_deref().unwrap_or_default(),
            status,
            description: &description,
            target_url: target_url.as_deref(),
            token,
        };
        let request = outbound::api(provider).request(client, &report);
        return (target, request);
    }
    let (Some(target), Some(secret)) = (message.target.as_ref(), message.secret.as_deref()) else {
        return (
            "receiver".into(),
            Err("the notification has no receiver".into()),
        );
    };
    let delivery_id = outbox::delivery_id(message.id);
    let body = receiver::body(
        &receiver::Notification {
            delivery_id: &delivery_id,
            event: &message.status,
            task: target.task.as_deref().or(message.run_task.as_deref()),
            run_id: message.run_id,
            run_number: message.run_number,
            reason: message.reason.as_deref(),
            message: message.message.as_deref(),
            run_url: page.as_deref(),
        },
        target.format,
    );
    let request = receiver::request(
        client,
        &target.url,
        secret,
        &delivery_id,
        &message.status,
        body,
    );
    ("receiver".into(), request)
}

/// Capped exponential backoff with jitter for the `failures`-th transient failure in a row.
fn backoff(settings: &ReporterSettings, failures: i32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(settings.retry_min)
        .with_max_delay(settings.retry_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1).max(0) as usize)
        .unwrap_or(settings.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReporterSettings {
        ReporterSettings {
            concurrency: 1,
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            give_up_after: Duration::from_secs(86400),
            public_base_url: Some("https://ci.example.com/".into()),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = settings();
        assert!(backoff(&settings, 1) < Duration::from_secs(3));
        assert!(backoff(&settings, 4) >= Duration::from_secs(8));
        assert!(backoff(&settings, 60) <= Duration::from_secs(600));
    }

    #[test]
    fn reports_link_to_the_run_page_under_the_public_url() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            run_page(&settings(), Some(id)).unwrap(),
            format!("https://ci.example.com/#/runs/{id}")
        );
        let none = ReporterSettings {
            public_base_url: None,
            ..settings()
        };
        assert_eq!(run_page(&none, Some(id)), None);
    }
}
