//! `/v1/hooks/{id}`: receives Git hosts' webhook deliveries. The provider's signature (or token)
//! is checked before anything else, and a refusal is always the same 401 (the reason goes to the
//! log). A matching event records a run with the event's facts as environment variables, and
//! the commit it builds (reported on when the trigger has `report`); a redelivery finds the run
//! its first delivery started.

use super::extract::ApiPath;
use super::problem::Problem;
use super::AppState;
use crate::domain::params;
use crate::domain::webhook::{self, GitEvent, Reading, Unreadable, WebhookTrigger};
use crate::domain::{Invalid, Origin, Run, RunOverrides, Submission, Trigger};
use crate::error::{Error, Result};
use crate::store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// What became of a delivery, for the Git host's delivery log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A run was queued.
    Started,
    /// This delivery was received before; `run` is the run it started.
    Duplicate,
    /// The event does not start runs of this trigger; `detail` says why.
    Ignored,
    /// The answer to GitHub's `ping`.
    Pong,
}

/// The answer to a delivery.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookAnswer {
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
}

fn answer(
    status: StatusCode,
    outcome: Outcome,
    detail: impl Into<String>,
    run: Option<Run>,
) -> (StatusCode, Json<HookAnswer>) {
    (
        status,
        Json(HookAnswer {
            outcome,
            detail: detail.into(),
            run,
        }),
    )
}

/// Receive a webhook delivery from GitHub, GitLab or Gitea/Forgejo.
///
/// Authenticated by the provider's signature, not by a bearer token: GitHub's
/// `X-Hub-Signature-256`, GitLab's `X-Gitlab-Token`, Gitea's `X-Gitea-Signature`.
#[utoipa::path(
    post, path = "/v1/hooks/{id}", tag = "triggers",
    security(()),
    params(("id" = Uuid, Path, description = "The trigger's id, from its `hookPath`")),
    request_body(content = serde_json::Value, description = "The provider's payload, as sent"),
    responses(
        (status = 200, description = "Nothing started: a ping, an event the trigger ignores (see `detail`), or a redelivery (see `run`)", body = HookAnswer),
        (status = 201, description = "A run was queued", body = HookAnswer),
        (status = 400, description = "Not the payload the provider sends for this event", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong signature, or no such trigger", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The run would break this installation's policy", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task's concurrency policy is Forbid and its key is busy", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many deliveries, too many queued runs, or too many runs waiting on the concurrency key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<HookAnswer>)> {
    // Anyone can call this endpoint: every text from the request (the id, header values,
    // payload fields) is logged with `?`, escaped, so it cannot forge log lines or send
    // terminal escapes.
    let refuse = |reason: String| {
        tracing::warn!(trigger_id = ?id, ?reason, "webhook delivery refused");
        Error::WebhookRejected(reason)
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge {
                limit: state.limits.max_body_bytes,
            }
        } else {
            Error::MalformedBody {
                message: rejection.body_text(),
                field: None,
            }
        }
    })?;
    let trigger_id = Uuid::parse_str(&id).map_err(|_| refuse("not a trigger id".into()))?;
    let found = store::triggers::for_delivery(&state.db, trigger_id)
        .await?
        .ok_or_else(|| refuse("no such trigger".into()))?;
    let trigger = found.trigger;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    webhook::verify(trigger.provider, &found.secret, header, &body).map_err(refuse)?;

    // Authenticated from here on.
    if let Some(limit) = &state.auth.rate_limit {
        limit.check(trigger_id)?;
    }
    let (delivery, event, overrides) =
        match webhook::read(&trigger, header, &body).map_err(anyhow::Error::msg)? {
            Err(Unreadable { field, message }) => return Err(Error::bad_request(field, message)),
            Ok(Reading::Pong) => {
                return Ok(answer(
                    StatusCode::OK,
                    Outcome::Pong,
                    "pong: the trigger is set up",
                    None,
                ))
            }
            Ok(Reading::Rerun {
                delivery,
                rerequest,
            }) => return rerun(&state, &trigger, &delivery, &rerequest).await,
            Ok(Reading::Ignored { delivery, reason }) => {
                tracing::info!(%trigger_id, ?delivery, ?reason, "delivery ignored");
                return Ok(answer(StatusCode::OK, Outcome::Ignored, reason, None));
            }
            Ok(Reading::Start {
                delivery,
                event,
                overrides,
            }) => (delivery, event, overrides),
        };
    let run = match start_run(&state, &trigger, &delivery, &event, &overrides).await? {
        Started::New(run) => run,
        Started::Before(run) => return Ok(duplicate(run)),
    };
    tracing::info!(%trigger_id, task = %trigger.task, run_id = %run.id, number = run.number, ?delivery, git_ref = ?event.git_ref, sha = ?event.sha, "run queued by webhook");
    let detail = format!(
        "run {} of task {} queued for {} at {}",
        run.number, trigger.task, event.git_ref, event.sha
    );
    Ok(answer(
        StatusCode::CREATED,
        Outcome::Started,
        detail,
        Some(run),
    ))
}

/// What recording a delivery's run did.
enum Started {
    New(Run),
    /// The delivery was received before: the run it started (gone if pruned since).
    Before(Option<Run>),
}

/// Records the run a matching delivery starts, through the front door, once per delivery: a
/// redelivery (even a concurrent one) finds the run its first delivery started.
async fn start_run(
    state: &AppState,
    trigger: &WebhookTrigger,
    delivery: &str,
    event: &GitEvent,
    overrides: &RunOverrides,
) -> Result<Started> {
    let trigger_id = trigger.id;
    if let Some(run) = delivered(state, trigger_id, delivery).await? {
        return Ok(Started::Before(run));
    }
    let task = store::tasks::get(&state.db, &trigger.task)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "task",
            name: trigger.task.clone(),
        })?;
    let origin = Origin {
        task: Some(trigger.task.clone()),
        trigger: Trigger::Webhook,
        rerun_of: None,
        scheduled_time: None,
        token_id: None,
    }
    .by_service();
    let submission = Submission::check(
        &state.policy,
        origin,
        task.template.with_overrides(overrides),
        task.limits.as_ref(),
    )?
    .with_params(&task.parameters, &overrides.params)?
    .queued(task.concurrency.as_ref(), task.priority, None, None)?;
    refuse_secrets(&submission)?;

    let mut tx = state.db.begin().await?;
    let run = store::runs::submit(&mut tx, &submission, state.limits.caps()).await??;
    if let Some(first) =
        store::triggers::claim_delivery(&mut tx, trigger_id, delivery, run.id).await?
    {
        // A concurrent redelivery won; this transaction's run is rolled back.
        drop(tx);
        return Ok(Started::Before(store::runs::get(&state.db, first).await?));
    }
    // The commit it builds, and (with `report`) its first state in the outbox, with the run.
    store::outbox::record_source(
        &mut tx,
        run.id,
        trigger_id,
        &trigger.task,
        event,
        trigger.report.as_ref(),
    )
    .await?;
    tx.commit().await?;
    Ok(Started::New(run))
}

/// GitHub's "Re-run" of a check: a rerun (`rerunOf`) of the run the check belongs to, through
/// the front door as any rerun, once per delivery, reporting to the same commit (a new check
/// run).
async fn rerun(
    state: &AppState,
    trigger: &WebhookTrigger,
    delivery: &str,
    rerequest: &webhook::Rerequest,
) -> Result<(StatusCode, Json<HookAnswer>)> {
    if let Some(run) = delivered(state, trigger.id, delivery).await? {
        return Ok(duplicate(run));
    }
    let external = rerequest
        .external_id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok());
    let original = match store::outbox::rerequested_run(
        &state.db,
        trigger.id,
        external,
        &rerequest.repository,
        &rerequest.sha,
    )
    .await?
    {
        Some(id) => store::runs::get(&state.db, id).await?,
        None => None,
    };
    let Some(original) = original else {
        let reason = "no run of this trigger built that commit (or it was pruned)";
        tracing::info!(trigger_id = %trigger.id, ?delivery, sha = ?rerequest.sha, reason, "re-run request ignored");
        return Ok(answer(StatusCode::OK, Outcome::Ignored, reason, None));
    };
    // Today's limits and parameters, as for any rerun.
    let task = match original.task.as_deref() {
        Some(task) => store::tasks::get(&state.db, task).await?,
        None => None,
    };
    let task_limits = task.as_ref().and_then(|t| t.limits.clone());
    let task_params = task.map(|t| t.parameters).unwrap_or_default();
    let origin = Origin {
        task: original.task.clone(),
        trigger: Trigger::Rerun,
        rerun_of: Some(original.id),
        scheduled_time: None,
        token_id: None,
    }
    .by_service();
    // The original's parameter values again (as any rerun; secret ones cannot be given here).
    let values = params::rerun_values(&original.params, &Default::default());
    let submission = Submission::check(
        &state.policy,
        origin,
        original.template.clone(),
        task_limits.as_ref(),
    )?
    .with_params(&task_params, &values)?;
    refuse_secrets(&submission)?;
    let mut tx = state.db.begin().await?;
    let run = store::runs::submit(&mut tx, &submission, state.limits.caps()).await??;
    if let Some(first) =
        store::triggers::claim_delivery(&mut tx, trigger.id, delivery, run.id).await?
    {
        drop(tx);
        return Ok(duplicate(store::runs::get(&state.db, first).await?));
    }
    // The submission gave the rerun its original's source: it reports as a new check run.
    tx.commit().await?;
    tracing::info!(trigger_id = %trigger.id, run_id = %run.id, rerun_of = %original.id, ?delivery, "run queued by a re-run request");
    let detail = format!("run {} reruns run {}", run.number, original.number);
    Ok(answer(
        StatusCode::CREATED,
        Outcome::Started,
        detail,
        Some(run),
    ))
}

/// A webhook cannot give a secret parameter: its values come from the payload, which is no
/// secret, and the service creates a run's Secret only for values sent to the API.
fn refuse_secrets(submission: &Submission) -> Result<()> {
    match submission.secrets().keys().next() {
        Some(name) => Err(Invalid::one(
            format!("params.{name}"),
            "a secret parameter cannot be set by a webhook trigger",
        )
        .into()),
        None => Ok(()),
    }
}

async fn delivered(state: &AppState, trigger: Uuid, delivery: &str) -> Result<Option<Option<Run>>> {
    match store::triggers::delivered_run(&state.db, trigger, delivery).await? {
        Some(run) => Ok(Some(store::runs::get(&state.db, run).await?)),
        None => Ok(None),
    }
}

fn duplicate(run: Option<Run>) -> (StatusCode, Json<HookAnswer>) {
    answer(
        StatusCode::OK,
        Outcome::Duplicate,
        "this delivery was received before; it started the run shown, and nothing else",
        run,
    )
}
