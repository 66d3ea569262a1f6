//! `/v1/runs` and `/v1/tasks/{name}/runs`: submit runs and read the history.

use super::auth::{Authorized, ForRead, ForRun, Needs};
use super::extract::{valid_idempotency_key, ApiJson, ApiPath, ApiQuery, IdempotencyKey};
use super::idempotency::{Claimed, Idempotent};
use super::pagination;
use super::problem::Problem;
use super::tasks::parse_name;
use super::{AppState, Limits};
use crate::cluster::jobs::Cluster;
use crate::domain::attempt::PodWithAttempts;
use crate::domain::params;
use crate::domain::{
    AdHocRun, Caller, FieldError, Invalid, Origin, Run, RunOverrides, RunPolicy, RunStatus,
    RunTemplate, Submission, Trigger,
};
use crate::error::{Error, Result};
use crate::store::{self, runs::RunFilter};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Start a run of a task, optionally with extra env vars and labels.
#[utoipa::path(
    post, path = "/v1/tasks/{name}/runs", tag = "runs",
    security(("bearer" = ["run"])),
    params(
        ("name" = String, Path, description = "Task name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key and body"),
    ),
    request_body(content = Option<RunOverrides>, description = "Optional; may be empty"),
    responses(
        (status = 201, description = "Queued", body = Run, headers(("Location" = String))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task's concurrency policy is Forbid and its key is busy", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The task has too many queued runs, its concurrency key too many waiting runs (maxWaiting; the problem names the key and its depth), or the token too many unfinished runs", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn start_task_run(
    auth: Authorized<ForRun>,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(overrides): ApiJson<RunOverrides>,
) -> Result<Response> {
    let name = parse_name(name)?;
    let origin =
        Origin::api(Some(name.as_str()), auth.caller.token_id).admit(Some(&auth.caller))?;
    overrides.validate()?;
    let task = store::tasks::get(&state.db, name.as_str())
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "task",
            name: name.to_string(),
        })?;
    let submission = Submission::check(
        &state.policy,
        origin,
        task.template.with_overrides(&overrides),
        task.limits.as_ref(),
    )?
    .with_params(&task.parameters, &overrides.params)?
    .queued(
        task.concurrency.as_ref(),
        task.priority,
        overrides.priority,
        Some(auth.caller.scope),
    )?;
    let idempotent = Idempotent::new(
        key,
        &auth.caller,
        format!("POST /v1/tasks/{name}/runs"),
        &overrides,
    );
    create(
        &state.db,
        &state.cluster,
        &state.limits,
        idempotent,
        &submission,
    )
    .await
}

/// Start an ad-hoc run from an inline template, like `kubectl create job`.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    security(("bearer" = ["run"])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key and body")),
    request_body = AdHocRun,
    responses(
        (status = 201, description = "Queued", body = Run, headers(("Location" = String))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The token has too many unfinished runs", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_run(
    auth: Authorized<ForRun>,
    State(db): State<PgPool>,
    State(limits): State<Arc<Limits>>,
    State(policy): State<Arc<RunPolicy>>,
    State(cluster): State<Cluster>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(request): ApiJson<AdHocRun>,
) -> Result<Response> {
    let origin = Origin::api(None, auth.caller.token_id).admit(Some(&auth.caller))?;
    let idempotent = Idempotent::new(key, &auth.caller, "POST /v1/runs".into(), &request);
    let submission = Submission::check(&policy, origin, request.template, None)?.queued(
        None,
        None,
        request.priority,
        Some(auth.caller.scope),
    )?;
    create(&db, &cluster, &limits, idempotent, &submission).await
}

async fn create(
    db: &PgPool,
    cluster: &Cluster,
    limits: &Limits,
    idempotent: Option<Idempotent>,
    submission: &Submission,
) -> Result<Response> {
    // Secret parameter values live only in the run's Secret, created before the run is
    // recorded (so that no replica's launcher can find the run without it) and deleted again
    // when the run is not recorded after all; a crash in between leaves a Secret without a run,
    // which the sweep deletes (runtime::pruner).
    let secret_namespace = (!submission.secrets().is_empty()).then(|| {
        submission
            .template()
            .namespace
            .clone()
            .unwrap_or_else(|| cluster.settings.default_namespace().to_string())
    });
    if let Some(namespace) = &secret_namespace {
        cluster
            .create_param_secret(
                submission.id(),
                submission.origin().task.as_deref(),
                namespace,
                submission.secrets(),
            )
            .await
            .map_err(|error| {
                Error::Internal(anyhow::Error::new(error).context("creating the run's Secret"))
            })?;
    }
    let recorded = record(db, limits, idempotent, submission).await;
    if let Some(namespace) = &secret_namespace {
        if !matches!(&recorded, Ok((_, true))) {
            if let Err(error) = cluster
                .delete_param_secret(submission.id(), namespace)
                .await
            {
                tracing::warn!(run_id = %submission.id(), error = %error, "could not delete the Secret of a run that was not recorded; the sweep will");
            }
        }
    }
    recorded.map(|(response, _)| response)
}

/// Records the run (or replays the first answer of its Idempotency-Key): the answer, and
/// whether this submission's run was recorded.
async fn record(
    db: &PgPool,
    limits: &Limits,
    idempotent: Option<Idempotent>,
    submission: &Submission,
) -> Result<(Response, bool)> {
    let mut tx = db.begin().await?;
    if let Some(idempotent) = &idempotent {
        if let Some(replay) = idempotent.claim(&mut tx).await? {
            return Ok((replay, false));
        }
    }
    let run = store::runs::submit(&mut tx, submission, limits.caps()).await??;
    let location = format!("/v1/runs/{}", run.id);
    if let Some(idempotent) = &idempotent {
        idempotent
            .record(&mut tx, StatusCode::CREATED, &run, Some(&location))
            .await?;
    }
    tx.commit().await?;
    tracing::info!(run_id = %run.id, task = run.task.as_deref(), number = run.number, trigger = ?run.trigger, "run queued");
    Ok((
        (
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(run),
        )
            .into_response(),
        true,
    ))
}

/// A batch of ad-hoc runs for `POST /v1/runs/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunBatch {
    /// The runs, in order: at least one, at most `MAX_BATCH_RUNS` (500 by default, the most
    /// this document states).
    #[schema(min_items = 1, max_items = 500)]
    pub runs: Vec<BatchRun>,
}

/// One run of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRun {
    pub template: RunTemplate,
    /// This run's own key: the same as sending it alone to `POST /v1/runs` with this
    /// `Idempotency-Key` (the two share their keys), so a run already recorded under the key is
    /// answered again instead of being queued twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The runs a batch queued (or, for keys seen before, had queued), in the order asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunBatchCreated {
    #[schema(value_type = Vec<Run>)]
    pub runs: Vec<serde_json::Value>,
}

/// Start many ad-hoc runs at once, all or none: a batch with any item at fault is refused whole
/// (422, naming each field at fault as `runs[3].template.image`), and so is a batch the caps
/// cannot take whole (429). One transaction, one statement for the runs.
#[utoipa::path(
    post, path = "/v1/runs/batch", tag = "runs",
    security(("bearer" = ["run"])),
    params(("Idempotency-Key" = Option<String>, Header, description = "For the whole batch: replays the first answer for the same key and body")),
    request_body = RunBatch,
    responses(
        (status = 201, description = "Every run queued", body = RunBatchCreated),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Some runs are invalid, or too many or none were sent; nothing was queued", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The token would have too many unfinished runs; nothing was queued", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_runs(
    auth: Authorized<ForRun>,
    State(db): State<PgPool>,
    State(limits): State<Arc<Limits>>,
    State(policy): State<Arc<RunPolicy>>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(batch): ApiJson<RunBatch>,
) -> Result<Response> {
    auth.task(None)?;
    let idempotent = Idempotent::new(key, &auth.caller, "POST /v1/runs/batch".into(), &batch);
    let checked = check_batch(&policy, &limits, &auth.caller, &batch)?;

    let mut tx = db.begin().await?;
    if let Some(idempotent) = &idempotent {
        if let Some(replay) = idempotent.claim(&mut tx).await? {
            return Ok(replay);
        }
    }
    // Runs whose own key was seen before are answered with the run recorded then.
    let mut answers: Vec<Option<serde_json::Value>> = vec![None; checked.len()];
    let mut fresh = Vec::with_capacity(checked.len());
    for (i, (submission, key)) in checked.iter().enumerate() {
        if let Some(key) = key {
            match key.claim_answer(&mut tx).await? {
                Claimed::New => {}
                Claimed::Replay(run) => {
                    answers[i] = Some(run);
                    continue;
                }
                Claimed::Mismatch => {
                    return Err(Error::Invalid(Invalid::one(
                        format!("runs[{i}].idempotencyKey"),
                        "this key was already used for a different run",
                    )))
                }
            }
        }
        fresh.push((i, submission.clone()));
    }
    let submissions: Vec<Submission> = fresh.iter().map(|(_, s)| s.clone()).collect();
    let runs = store::runs::submit_all(&mut tx, &submissions, limits.caps()).await??;
    for ((i, _), run) in fresh.iter().zip(&runs) {
        if let Some(key) = &checked[*i].1 {
            let location = format!("/v1/runs/{}", run.id);
            key.record(&mut tx, StatusCode::CREATED, run, Some(&location))
                .await?;
        }
        answers[*i] = Some(serde_json::to_value(run).map_err(anyhow::Error::from)?);
    }
    let body = RunBatchCreated {
        runs: answers.into_iter().flatten().collect(),
    };
    if let Some(idempotent) = &idempotent {
        idempotent
            .record(&mut tx, StatusCode::CREATED, &body, None)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(
        runs = runs.len(),
        replayed = body.runs.len() - runs.len(),
        "batch of runs queued"
    );
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Every run of the batch through the front door ([`Submission::check`]), each with its key;
/// refused: every field at fault of every run, named by its place in the batch.
fn check_batch(
    policy: &RunPolicy,
    limits: &Limits,
    caller: &Caller,
    batch: &RunBatch,
) -> Result<Vec<(Submission, Option<Idempotent>)>> {
    if batch.runs.is_empty() || batch.runs.len() > limits.max_batch_runs {
        return Err(Error::Invalid(Invalid::one(
            "runs",
            format!(
                "a batch has 1 to {} runs; this one has {}",
                limits.max_batch_runs,
                batch.runs.len()
            ),
        )));
    }
    let mut errors = Vec::new();
    let mut checked = Vec::with_capacity(batch.runs.len());
    for (i, run) in batch.runs.iter().enumerate() {
        if let Some(key) = &run.idempotency_key {
            let field = format!("runs[{i}].idempotencyKey");
            if !valid_idempotency_key(key) {
                errors.push(FieldError {
                    field,
                    message: "must be 1 to 255 visible ASCII characters".into(),
                });
            } else if let Some(first) = batch.runs[..i]
                .iter()
                .position(|r| r.idempotency_key.as_ref() == Some(key))
            {
                errors.push(FieldError {
                    field,
                    message: format!("the same key as runs[{first}]"),
                });
            }
        }
        let origin = Origin::api(None, caller.token_id).admit(Some(caller))?;
        match Submission::check(policy, origin, run.template.clone(), None) {
            Ok(submission) => {
                // Shares POST /v1/runs's keys: the same run sent alone with the same key.
                let alone = AdHocRun {
                    template: run.template.clone(),
                    priority: None,
                };
                let key = Idempotent::new(
                    run.idempotency_key.clone(),
                    caller,
                    "POST /v1/runs".into(),
                    &alone,
                );
                checked.push((submission, key));
            }
            Err(invalid) => errors.extend(invalid.0.into_iter().map(|e| FieldError {
                field: format!("runs[{i}].{}", e.field),
                ..e
            })),
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(Error::Invalid(Invalid(errors)))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RunListQuery {
    /// Only runs of this task.
    task: Option<String>,
    /// Only runs in these statuses (comma-separated, e.g. `failed,lost`).
    status: Option<String>,
    /// Only runs with all these labels: `key=value[,key=value...]`.
    label_selector: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    pub items: Vec<Run>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Run history, newest first, with filters and keyset pagination. A waiting run carries
/// `queue` (why it waits and its place) as on `GET /v1/runs/{id}`, read for the whole page at
/// once.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    security(("bearer" = ["read"])),
    params(RunListQuery),
    responses(
        (status = 200, body = RunPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_runs(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    State(limits): State<Arc<Limits>>,
    ApiQuery(query): ApiQuery<RunListQuery>,
) -> Result<Json<RunPage>> {
    match &query.task {
        Some(task) => auth.task(Some(task))?,
        None => auth.all_tasks()?,
    }
    let limit = pagination::limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(pagination::decode_run_cursor)
        .transpose()?;
    let filter = RunFilter {
        task: query.task.map(parse_task_filter).transpose()?,
        statuses: query
            .status
            .as_deref()
            .map(parse_statuses)
            .transpose()?
            .unwrap_or_default(),
        labels: query
            .label_selector
            .as_deref()
            .map(parse_label_selector)
            .transpose()?
            .unwrap_or_default(),
    };
    let fetched = store::runs::list(&db, &filter, before, limit + 1).await?;
    let (mut items, next_cursor) =
        pagination::page(fetched, limit, |r| pagination::encode_run_cursor(r.id));
    if items.iter().any(|r| r.status == RunStatus::Queued) {
        let mut conn = db.acquire().await?;
        let mut states = store::queue::states(&mut conn, &items, &limits.admission).await?;
        for run in &mut items {
            run.queue = states.remove(&run.id);
        }
    }
    Ok(Json(RunPage { items, next_cursor }))
}

fn parse_task_filter(task: String) -> Result<String> {
    crate::domain::TaskName::parse(task)
        .map(String::from)
        .map_err(|message| Error::bad_request("task", message))
}

fn parse_statuses(text: &str) -> Result<Vec<RunStatus>> {
    text.split(',')
        .map(|s| s.trim().parse::<RunStatus>())
        .collect::<Result<_, _>>()
        .map_err(|message| Error::bad_request("status", message))
}

fn parse_label_selector(text: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for term in text.split(',').filter(|t| !t.trim().is_empty()) {
        let (key, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| {
                Error::bad_request(
                    "labelSelector",
                    format!("{term:?} is not key=value; only equality terms are supported"),
                )
            })?;
        let (key, value) = (key.trim(), value.trim());
        crate::domain::names::qualified_name(key)
            .and_then(|()| crate::domain::names::label_value(value))
            .map_err(|message| Error::bad_request("labelSelector", message))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

pub(super) fn parse_run_id(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id)
        .map_err(|_| Error::bad_request("id", format!("{id:?} is not a run id (a UUID)")))
}

/// Read a run.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    security(("bearer" = ["read"])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, body = Run),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_run(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    State(limits): State<Arc<Limits>>,
    State(finals): State<store::runs::FinalRuns>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response> {
    // A final run never changes (its report may, so an entry is kept for seconds): it is
    // answered from the cache when it is there.
    if let Some(run) = finals.get(parse_run_id(&id)?) {
        auth.task(run.task.as_deref())?;
        return Ok(json_body(run.json.clone()));
    }
    let mut run = run_for(&auth, &db, &id).await?;
    run.report = store::outbox::run_report(&db, run.id).await?;
    if run.status == RunStatus::Queued {
        let mut conn = db.acquire().await?;
        run.queue = store::queue::state(&mut conn, &run, &limits.admission).await?;
    }
    let json = Bytes::from(serde_json::to_vec(&run).map_err(anyhow::Error::from)?);
    finals.keep(&run, json.clone());
    Ok(json_body(json))
}

/// A JSON body already serialized, as `Json` would answer it.
fn json_body(json: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

/// The run `id` names, if the caller may see it: 400 for a malformed id, 404 for no such run,
/// 403 for a run of a task the caller's token does not reach. Every `/v1/runs/{id}/...` handler
/// starts with it.
pub(super) async fn run_for<N: Needs>(auth: &Authorized<N>, db: &PgPool, id: &str) -> Result<Run> {
    let id = parse_run_id(id)?;
    let run = store::runs::get(db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    auth.task(run.task.as_deref())?;
    Ok(run)
}

fn not_found(id: Uuid) -> Error {
    Error::NotFound {
        kind: "run",
        name: id.to_string(),
    }
}

/// Cancel a run. A queued run never reaches the cluster; an active run's Job is deleted with
/// background propagation (its pods are removed by the garbage collector).
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "runs",
    security(("bearer" = ["run"])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "Cancelled", body = Run),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run already finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_run(
    auth: Authorized<ForRun>,
    State(db): State<PgPool>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Run>> {
    let run = run_for(&auth, &db, &id).await?;
    let id = run.id;
    match store::runs::cancel(&db, id).await? {
        None => Err(not_found(id)),
        Some(Ok(run)) => {
            tracing::info!(run_id = %id, "run cancelled");
            Ok(Json(run))
        }
        Some(Err(status)) => Err(Error::RunIsFinal { status }),
    }
}

/// What a rerun may add (an empty body is fine).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RerunRequest {
    /// Parameter values replacing the original run's. The original's secret values were never
    /// kept, so a rerun of a run with secret parameters must give them again (422 naming
    /// `params.<name>` otherwise).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// Run again: a new run with the same template and task (and parameter values, but for secret
/// ones, which must be given again), linked to the original.
/// `?only=` of a rerun.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RerunQuery {
    /// `failed-indexes`: for an Indexed run, one linked run per index that failed or never
    /// ran (each a Job of completions 1 whose pod sees its original `JOB_COMPLETION_INDEX`), at
    /// most `MAX_RERUN_INDEXES`; answered with `{"runs": [...]}`.
    only: Option<String>,
}

/// What a rerun queued: the run, or with `only=failed-indexes` one run per index.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RerunCreated {
    // The one-run answer's schema; `create` writes that answer.
    #[allow(dead_code)]
    Run(Box<Run>),
    Indexes(RerunIndexes),
}

/// The one-index runs of a partial rerun, in index order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerunIndexes {
    #[schema(value_type = Vec<Run>)]
    pub runs: Vec<serde_json::Value>,
}

/// Run again: a new run with the same template and task, linked to the original; with
/// `only=failed-indexes`, only the failed indexes of an Indexed run (docs/retries.md).
#[utoipa::path(
    post, path = "/v1/runs/{id}/rerun", tag = "runs",
    security(("bearer" = ["run"])),
    params(
        ("id" = Uuid, Path, description = "Run id"),
        RerunQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key"),
    ),
    request_body(content = Option<RerunRequest>, description = "Optional; may be empty"),
    responses(
        (status = 201, description = "Queued: the run, or with only=failed-indexes `{\"runs\": [...]}`", body = RerunCreated, headers(("Location" = String, description = "The run, when one run was queued"))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "only=failed-indexes: no index failed (or the run has not finished)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The run is beyond this installation's limits; only=failed-indexes of a run that is not Indexed, or with more failed indexes than MAX_RERUN_INDEXES", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The task has too many queued runs, or the token too many unfinished runs", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(clippy::too_many_arguments)]
pub async fn rerun(
    auth: Authorized<ForRun>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RerunQuery>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(request): ApiJson<RerunRequest>,
) -> Result<Response> {
    let original = run_for(&auth, &state.db, &id).await?;
    let id = original.id;
    let only_failed = match query.only.as_deref() {
        None => false,
        Some("failed-indexes") => true,
        Some(other) => {
            return Err(Error::Invalid(Invalid::one(
                "only",
                format!("must be failed-indexes (is {other:?})"),
            )))
        }
    };
    // Today's limits and queue, not those of the original's day (and its task's, if it still
    // exists).
    let task = match original.task.as_deref() {
        Some(task) => store::tasks::get(&state.db, task).await?,
        None => None,
    };
    let task_limits = task.as_ref().and_then(|t| t.limits.clone());
    let origin = Origin {
        task: original.task.clone(),
        trigger: Trigger::Rerun,
        rerun_of: Some(original.id),
        scheduled_time: None,
        token_id: auth.caller.token_id,
    }
    .admit(Some(&auth.caller))?;
    // The original's values again (secret ones must be given anew: only their hashes were
    // kept), checked against the task's parameters as they are today.
    let values = params::rerun_values(&original.params, &request.params);
    let specs = task
        .as_ref()
        .map(|t| t.parameters.as_slice())
        .unwrap_or_default();
    let queued = |template: RunTemplate| -> Result<Submission> {
        Ok(Submission::check(
            &state.policy,
            origin.clone(),
            template,
            task_limits.as_ref(),
        )?
        .with_params(specs, &values)?
        .queued(
            task.as_ref().and_then(|t| t.concurrency.as_ref()),
            task.as_ref().and_then(|t| t.priority),
            None,
            Some(auth.caller.scope),
        )?)
    };
    if only_failed {
        let what = format!("POST /v1/runs/{id}/rerun?only=failed-indexes");
        let idempotent = Idempotent::new(key, &auth.caller, what, &request);
        return rerun_failed_indexes(&state.db, &state.limits, idempotent, &original, queued).await;
    }
    let submission = queued(original.template)?;
    let idempotent = Idempotent::new(
        key,
        &auth.caller,
        format!("POST /v1/runs/{id}/rerun"),
        &request,
    );
    create(
        &state.db,
        &state.cluster,
        &state.limits,
        idempotent,
        &submission,
    )
    .await
}

/// `rerun?only=failed-indexes`: under the original's row lock (so two at once cannot rerun an
/// index twice), the indexes that failed or never ran, one run each, all or none.
async fn rerun_failed_indexes(
    db: &PgPool,
    limits: &Limits,
    idempotent: Option<Idempotent>,
    original: &Run,
    queued: impl Fn(RunTemplate) -> Result<Submission>,
) -> Result<Response> {
    if original.template.completion_mode != Some(crate::domain::template::CompletionMode::Indexed) {
        return Err(Error::Invalid(Invalid::one(
            "only",
            "failed-indexes needs an Indexed run (completionMode Indexed); rerun it whole instead",
        )));
    }
    let mut tx = db.begin().await?;
    if let Some(idempotent) = &idempotent {
        if let Some(replay) = idempotent.claim(&mut tx).await? {
            return Ok(replay);
        }
    }
    let view = store::runs::index_outcomes_locked(&mut tx, original).await?;
    let indexes = view.to_rerun();
    if indexes.is_empty() {
        return Err(Error::NothingToRerun {
            message: format!(
                "no index of run {} failed: {} of {} succeeded, {} still running",
                original.id, view.succeeded, view.completions, view.running
            ),
        });
    }
    if indexes.len() > limits.max_rerun_indexes {
        return Err(Error::Invalid(Invalid::one(
            "only",
            format!(
                "{} indexes failed, more than MAX_RERUN_INDEXES ({}) runs at once; rerun the whole run instead",
                indexes.len(),
                limits.max_rerun_indexes
            ),
        )));
    }
    let submissions = indexes
        .iter()
        .map(|&i| {
            queued(crate::domain::indexes::index_template(
                &original.template,
                i,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // One Secret per run would be needed, and only the whole rerun creates one (POST
    // /v1/runs/{id}/rerun with the values): refused rather than launched without its values.
    if submissions.iter().any(|s| !s.secrets().is_empty()) {
        return Err(Error::Invalid(Invalid::one(
            "params",
            "a run with secret parameters cannot rerun only its failed indexes; rerun it whole, giving the secret values again",
        )));
    }
    let runs = store::runs::submit_all(&mut tx, &submissions, limits.caps()).await??;
    // Like any rerun (`store::runs::submit`), each reports to its original's commit.
    for run in &runs {
        store::outbox::copy_source(&mut tx, original.id, run.id).await?;
    }
    let body = RerunCreated::Indexes(RerunIndexes {
        runs: runs
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::from)?,
    });
    if let Some(idempotent) = &idempotent {
        idempotent
            .record(&mut tx, StatusCode::CREATED, &body, None)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(run_id = %original.id, ?indexes, "failed indexes rerun");
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Each completion index of an Indexed run: its outcome across the run and its one-index
/// reruns (`rerun?only=failed-indexes`), with counts.
#[utoipa::path(
    get, path = "/v1/runs/{id}/indexes", tag = "runs",
    security(("bearer" = ["read"])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, body = crate::domain::indexes::IndexesView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The run is not Indexed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn indexes(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<crate::domain::indexes::IndexesView>> {
    let run = run_for(&auth, &db, &id).await?;
    if run.template.completion_mode != Some(crate::domain::template::CompletionMode::Indexed) {
        return Err(Error::Invalid(Invalid::one(
            "id",
            "the run is not Indexed (completionMode Indexed): it has no completion indexes",
        )));
    }
    let mut conn = db.acquire().await?;
    Ok(Json(store::runs::index_outcomes(&mut conn, &run).await?))
}

/// The run's pods, in completion-index order, then creation order, each with its container's
/// attempts (more than one when it was restarted in place, `restartPolicy: OnFailure`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/pods", tag = "runs",
    security(("bearer" = ["read"])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, body = Vec<PodWithAttempts>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_pods(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<PodWithAttempts>>> {
    let run = run_for(&auth, &db, &id).await?;
    Ok(Json(crate::logs::pods_with_attempts(&db, run.id).await?))
}

/// The run's history: its creation and every status change, oldest first.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs",
    security(("bearer" = ["read"])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, body = Vec<store::runs::RunEvent>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<store::runs::RunEvent>>> {
    let run = run_for(&auth, &db, &id).await?;
    let id = run.id;
    Ok(Json(store::runs::history(&db, id).await?))
}

/// A run's commit status reports and notifications, oldest first, each with every attempt to
/// deliver it and the answer (never a token or secret).
#[utoipa::path(
    get, path = "/v1/runs/{id}/deliveries", tag = "runs",
    security(("bearer" = ["read"])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, body = Vec<store::outbox::Delivery>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deliveries(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<store::outbox::Delivery>>> {
    let run = run_for(&auth, &db, &id).await?;
    Ok(Json(store::outbox::deliveries(&db, run.id).await?))
}
