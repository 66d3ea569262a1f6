//! Queues (issue 16), as pure rules: a task's `concurrency` (limit, key template, policy,
//! maxWaiting), run priorities and who may set them, and what a waiting run shows about its
//! place. No I/O: `store::runs::submit` applies the policies and `store::queue` admits runs and
//! reads positions, both from the database only.

use super::auth::Scope;
use super::template::RunTemplate;
use super::validation::{Errors, Invalid};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The lowest and highest priority a run or task may have.
pub const MIN_PRIORITY: i32 = -1000;
pub const MAX_PRIORITY: i32 = 1000;
/// The longest rendered key.
pub const MAX_KEY_BYTES: usize = 256;

/// How many runs of one key may be active at once, and what a newer run does to older ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concurrency {
    /// At most this many runs of the key are active (have a Job that has not finished) at once.
    #[schema(minimum = 1)]
    pub limit: i64,
    /// The key, a template over the run's values: `{{task}}`, `{{env.NAME}}` (the run's
    /// environment, overrides included), `{{labels.KEY}}`; e.g. `deploy-{{env.TARGET}}`.
    /// Default: the task's name. Tasks with the same key share its limit (a named lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What a newer run of the key does (default `Queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<QueuePolicy>,
    /// More runs waiting on the key than this are refused with 429 (default: no cap besides
    /// `MAX_QUEUED_RUNS_PER_TASK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_waiting: Option<i64>,
}

/// What a newer run of a key does when the key is busy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum QueuePolicy {
    /// Wait its turn.
    #[default]
    Queue,
    /// Cancel the key's older unfinished runs (reason `Superseded`, `supersededBy` the newer
    /// run; their Jobs are deleted), like GitHub Actions' `cancel-in-progress`.
    CancelInProgress,
    /// Cancel the key's older waiting runs (reason `Superseded`); active ones finish.
    CancelPending,
    /// Refuse the newer run (409) while the key has `limit` unfinished runs.
    Forbid,
}

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Task,
    Env(String),
    Label(String),
}

/// Parses a key template; the message says what is wrong.
fn parse_key(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{{{{ at byte {start} is never closed with }}}}"))?;
        let field = after[..end].trim();
        let piece = if field == "task" {
            Piece::Task
        } else if let Some(name) = field.strip_prefix("env.") {
            super::names::env_var_name(name).map_err(|m| format!("{{{{{field}}}}}: {m}"))?;
            Piece::Env(name.to_string())
        } else if let Some(key) = field.strip_prefix("labels.") {
            super::names::qualified_name(key).map_err(|m| format!("{{{{{field}}}}}: {m}"))?;
            Piece::Label(key.to_string())
        } else {
            return Err(format!(
                "{{{{{field}}}}} is not a field a key may name: use {{{{task}}}}, {{{{env.NAME}}}} or {{{{labels.KEY}}}}"
            ));
        };
        pieces.push(piece);
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err("}} without a matching {{".into());
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

impl Concurrency {
    /// Adds what is wrong with this definition under `field` (`concurrency`).
    pub fn collect_errors(&self, field: &str, errors: &mut Errors) {
        if self.limit < 1 || self.limit > i64::from(i32::MAX) {
            errors.add(format!("{field}.limit"), "must be 1 or more");
        }
        if let Some(max) = self.max_waiting {
            if !(0..=i64::from(i32::MAX)).contains(&max) {
                errors.add(format!("{field}.maxWaiting"), "must be 0 or more");
            }
        }
        if let Some(key) = &self.key {
            match parse_key(key) {
                Err(message) => errors.add(format!("{field}.key"), message),
                Ok(pieces) if pieces.is_empty() => {
                    errors.add(format!("{field}.key"), "must not be empty")
                }
                Ok(_) if key.len() > MAX_KEY_BYTES * 4 => errors.add(
                    format!("{field}.key"),
                    format!("must be at most {} bytes", MAX_KEY_BYTES * 4),
                ),
                Ok(_) => {}
            }
        }
    }

    /// The key of a run of `task` with `template` (the run's final template): refused, naming
    /// `concurrency.key`, when it names an env var or label the run does not have or renders
    /// empty or too long. Only call on a validated definition.
    pub fn render_key(&self, task: &str, template: &RunTemplate) -> Result<String, Invalid> {
        let field = "concurrency.key";
        let Some(key) = &self.key else {
            return Ok(task.to_string());
        };
        let pieces = parse_key(key).map_err(|m| Invalid::one(field, m))?;
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => out.push_str(&text),
                Piece::Task => out.push_str(task),
                Piece::Env(name) => {
                    let var = template.env.iter().rev().find(|v| v.name == name);
                    match var {
                        Some(var) => out.push_str(&var.value),
                        None => {
                            return Err(Invalid::one(
                                field,
                                format!("the key names env {name}, which this run does not set"),
                            ))
                        }
                    }
                }
                Piece::Label(name) => match template.labels.get(&name) {
                    Some(value) => out.push_str(value),
                    None => {
                        return Err(Invalid::one(
                            field,
                            format!("the key names label {name}, which this run does not have"),
                        ))
                    }
                },
            }
        }
        if out.trim().is_empty() {
            return Err(Invalid::one(
                field,
                format!("the key {key:?} renders empty for this run"),
            ));
        }
        if out.len() > MAX_KEY_BYTES {
            return Err(Invalid::one(
                field,
                format!(
                    "the key renders to {} bytes; at most {MAX_KEY_BYTES}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }
}

/// Checks a priority's range under `field`.
pub fn collect_priority_errors(priority: Option<i32>, field: &str, errors: &mut Errors) {
    if priority.is_some_and(|p| !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p)) {
        errors.add(field, format!("must be {MIN_PRIORITY} to {MAX_PRIORITY}"));
    }
}

/// The priority a run gets: `asked` (per run) or the task's default (0 without one). A caller
/// below `admin` may ask for at most the task's default (lower its own run, never raise it
/// above others); an admin for anything in range; the service itself (schedules, webhooks)
/// uses the task's default.
pub fn priority_for(
    task_default: Option<i32>,
    asked: Option<i32>,
    scope: Option<Scope>,
) -> Result<i32, Invalid> {
    let default = task_default.unwrap_or(0);
    let Some(asked) = asked else {
        return Ok(default);
    };
    let mut errors = Errors::new();
    collect_priority_errors(Some(asked), "priority", &mut errors);
    errors.finish()?;
    let allowance = match scope {
        Some(Scope::Admin) | None => MAX_PRIORITY,
        Some(_) => default,
    };
    if asked > allowance {
        return Err(Invalid::one(
            "priority",
            format!(
                "this token may ask for a priority of at most {allowance} (the task's default); an admin token may set more"
            ),
        ));
    }
    Ok(asked)
}

/// Where a run of a keyed queue is to be recorded: its key and what the key's definition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub key: String,
    pub limit: i32,
    pub policy: QueuePolicy,
    pub max_waiting: Option<i32>,
}

impl Keyed {
    /// The keyed queue of a run of `task` with `template` under `concurrency`.
    pub fn of(
        concurrency: &Concurrency,
        task: &str,
        template: &RunTemplate,
    ) -> Result<Keyed, Invalid> {
        Ok(Keyed {
            key: concurrency.render_key(task, template)?,
            limit: i32::try_from(concurrency.limit.max(1)).unwrap_or(i32::MAX),
            policy: concurrency.policy.unwrap_or_default(),
            max_waiting: concurrency
                .max_waiting
                .map(|m| i32::try_from(m.max(0)).unwrap_or(i32::MAX)),
        })
    }
}

/// Why a queued run waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum WaitReason {
    /// Its key has `limit` active runs (`blockedBy` lists them).
    ConcurrencyLimit,
    /// Its key has a free slot, but runs ahead of it (higher priority, or older) take it first
    /// (`blockedBy` lists them).
    Priority,
    /// The namespace has `MAX_ACTIVE_RUNS_PER_NAMESPACE` active runs.
    NamespaceLimit,
    /// The installation has `MAX_ACTIVE_RUNS` active runs.
    InstallationLimit,
    /// Nothing holds it: the launcher takes it at its next pass. (Not the `admitting` status,
    /// which is a Job Kueue holds.)
    Ready,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::ConcurrencyLimit => "ConcurrencyLimit",
            WaitReason::Priority => "Priority",
            WaitReason::NamespaceLimit => "NamespaceLimit",
            WaitReason::InstallationLimit => "InstallationLimit",
            WaitReason::Ready => "Ready",
        }
    }
}

/// Why a waiting (`queued`) run waits and where it stands, on `GET /v1/runs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueState {
    /// The run's concurrency key (absent for a run only installation limits hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// 1 for the next run of the key to be admitted.
    pub position: i64,
    pub reason: WaitReason,
    /// The runs it waits for: the key's active runs (`ConcurrencyLimit`), or those ahead of it
    /// (`Priority`); at most 100.
    pub blocked_by: Vec<uuid::Uuid>,
}

/// Where a waiting run stands on its key, as the database counts it, for [`QueueState::decide`].
#[derive(Debug, Clone, Copy)]
pub struct KeyStanding<'a> {
    pub key: &'a str,
    /// 1 for the next run of the key to be admitted.
    pub position: i64,
    /// The limit the run was submitted under.
    pub limit: i64,
    /// The key's runs that hold a slot.
    pub active: i64,
    /// Those runs, by id (at most [`BLOCKED_BY`]).
    pub holders: &'a [uuid::Uuid],
    /// The key's first waiting runs in admission order (at most [`BLOCKED_BY`]).
    pub head: &'a [uuid::Uuid],
}

/// At most this many ids in `blockedBy`.
pub const BLOCKED_BY: usize = 100;

/// How full the installation is for a waiting run: active runs in all and in its namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Occupancy {
    pub total: i64,
    pub in_namespace: i64,
}

impl QueueState {
    /// Why a waiting run waits: its key first (its slots taken, or runs ahead of it taking the
    /// free ones), then the installation's limits (`occupancy`, when they are on).
    pub fn decide(
        key: Option<KeyStanding<'_>>,
        occupancy: Option<Occupancy>,
        admission: &Admission,
    ) -> QueueState {
        let mut state = QueueState {
            key: key.map(|k| k.key.to_string()),
            position: key.map_or(1, |k| k.position),
            reason: WaitReason::Ready,
            blocked_by: Vec::new(),
        };
        if let Some(k) = key {
            if k.active >= k.limit {
                state.reason = WaitReason::ConcurrencyLimit;
                state.blocked_by = k.holders.iter().take(BLOCKED_BY).copied().collect();
            } else if k.position > k.limit - k.active {
                state.reason = WaitReason::Priority;
                let ahead = usize::try_from(k.position - 1).unwrap_or(0).min(BLOCKED_BY);
                state.blocked_by = k.head.iter().take(ahead).copied().collect();
            }
        }
        if let (WaitReason::Ready, Some(o)) = (state.reason, occupancy) {
            if admission.max_active > 0 && o.total >= i64::from(admission.max_active) {
                state.reason = WaitReason::InstallationLimit;
            } else if admission.max_active_per_namespace > 0
                && o.in_namespace >= i64::from(admission.max_active_per_namespace)
            {
                state.reason = WaitReason::NamespaceLimit;
            }
        }
        state
    }
}

/// Queued runs of one key (`None`: runs without a key) in one namespace, for the
/// `vfi_queue_waiting_runs` gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingGroup {
    pub key: Option<String>,
    pub namespace: String,
    pub waiting: i64,
    /// The key's runs holding a slot (all namespaces) and its limit.
    pub active: i64,
    pub limit: i64,
}

/// Waiting runs per key (`""` for runs without one) and reason: those beyond the free slots of
/// their key wait for its `ConcurrencyLimit`; of the others, those in a full installation or
/// namespace wait for `InstallationLimit` or `NamespaceLimit` (with `occupancy`: active runs in
/// all and per namespace, when installation limits are on), the rest are `Ready`. A key's free
/// slots go to its groups in order. Every key has its `Ready` and `ConcurrencyLimit` rows,
/// zeros included, so its series do not vanish.
pub fn waiting_by_reason(
    groups: &[WaitingGroup],
    occupancy: Option<(i64, &std::collections::HashMap<String, i64>)>,
    admission: &Admission,
) -> Vec<(String, &'static str, i64)> {
    use std::collections::{BTreeMap, HashMap};
    let mut out: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    let mut free: HashMap<&str, i64> = HashMap::new();
    for group in groups {
        let key = group.key.clone().unwrap_or_default();
        let ready = match &group.key {
            Some(k) => {
                let left = free
                    .entry(k)
                    .or_insert_with(|| (group.limit - group.active).max(0));
                let ready = group.waiting.min(*left);
                *left -= ready;
                *out.entry((key.clone(), WaitReason::ConcurrencyLimit.as_str()))
                    .or_default() += group.waiting - ready;
                out.entry((key.clone(), WaitReason::Ready.as_str()))
                    .or_default();
                ready
            }
            None => group.waiting,
        };
        let reason = match occupancy {
            Some((total, _))
                if admission.max_active > 0 && total >= i64::from(admission.max_active) =>
            {
                WaitReason::InstallationLimit
            }
            Some((_, per_namespace))
                if admission.max_active_per_namespace > 0
                    && per_namespace.get(&group.namespace).copied().unwrap_or(0)
                        >= i64::from(admission.max_active_per_namespace) =>
            {
                WaitReason::NamespaceLimit
            }
            _ => WaitReason::Ready,
        };
        *out.entry((key, reason.as_str())).or_default() += ready;
    }
    out.into_iter().map(|((k, r), n)| (k, r, n)).collect()
}

/// The installation's limits on active runs (0: none), and the aging step of priorities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    /// `MAX_ACTIVE_RUNS`: active runs of the whole installation.
    pub max_active: u32,
    /// `MAX_ACTIVE_RUNS_PER_NAMESPACE`.
    pub max_active_per_namespace: u32,
    /// The namespace of a run whose template names none.
    pub default_namespace: String,
    /// `PRIORITY_AGING_SECS`: a waiting run gains one priority level per this many seconds
    /// waited (0: no aging).
    pub aging_secs: u64,
}

impl Admission {
    pub fn limited(&self) -> bool {
        self.max_active > 0 || self.max_active_per_namespace > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::tests::template;

    fn concurrency(key: &str) -> Concurrency {
        Concurrency {
            limit: 1,
            key: Some(key.into()),
            policy: None,
            max_waiting: None,
        }
    }

    #[test]
    fn a_key_renders_env_labels_and_the_task() {
        let t = template(serde_json::json!({
            "env": [{"name": "TARGET", "value": "prod"}], "labels": {"team": "a"}
        }));
        let key = concurrency("deploy-{{env.TARGET}}-{{ labels.team }}-{{task}}")
            .render_key("ship", &t)
            .unwrap();
        assert_eq!(key, "deploy-prod-a-ship");
        let default = Concurrency {
            key: None,
            ..concurrency("")
        };
        assert_eq!(default.render_key("ship", &t).unwrap(), "ship");
    }

    #[test]
    fn unknown_fields_unclosed_braces_and_empty_renders_are_refused_naming_the_key() {
        let mut errors = Errors::new();
        concurrency("{{branch}}").collect_errors("concurrency", &mut errors);
        concurrency("{{env.X").collect_errors("concurrency", &mut errors);
        let invalid = errors.finish().unwrap_err();
        assert!(invalid.0.iter().all(|e| e.field == "concurrency.key"));
        assert_eq!(invalid.0.len(), 2);

        let t = template(serde_json::json!({"env": [{"name": "REF", "value": " "}]}));
        let refused = concurrency("{{env.REF}}").render_key("t", &t).unwrap_err();
        assert_eq!(refused.0[0].field, "concurrency.key");
        let missing = concurrency("{{env.NOPE}}").render_key("t", &t).unwrap_err();
        assert!(missing.0[0].message.contains("NOPE"));
    }

    #[test]
    fn negative_limits_and_waiting_caps_are_refused_naming_the_field() {
        let mut errors = Errors::new();
        Concurrency {
            limit: -1,
            key: None,
            policy: None,
            max_waiting: Some(-2),
        }
        .collect_errors("concurrency", &mut errors);
        let fields: Vec<String> = errors
            .finish()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["concurrency.limit", "concurrency.maxWaiting"]);
    }

    #[test]
    fn a_waiting_run_is_held_by_its_keys_slots_then_by_runs_ahead_then_by_installation_limits() {
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
        let limits = Admission {
            max_active: 3,
            max_active_per_namespace: 1,
            ..Admission::default()
        };
        let standing = |position, active| KeyStanding {
            key: "k",
            position,
            limit: 2,
            active,
            holders: &ids[..2],
            head: &ids[2..],
        };
        let full = QueueState::decide(Some(standing(1, 2)), None, &limits);
        assert_eq!(full.reason, WaitReason::ConcurrencyLimit);
        assert_eq!(full.blocked_by, ids[..2]);
        // One slot free: the first waiting run takes it, the second waits behind it.
        let ready = QueueState::decide(Some(standing(1, 1)), None, &limits);
        assert_eq!((ready.reason, ready.position), (WaitReason::Ready, 1));
        let behind = QueueState::decide(Some(standing(2, 1)), None, &limits);
        assert_eq!(behind.reason, WaitReason::Priority);
        assert_eq!(behind.blocked_by, ids[2..3]);
        // Free on its key, held by the installation's limits.
        let busy = Occupancy {
            total: 3,
            in_namespace: 0,
        };
        let held = QueueState::decide(Some(standing(1, 0)), Some(busy), &limits);
        assert_eq!(held.reason, WaitReason::InstallationLimit);
        let crowded = Occupancy {
            total: 1,
            in_namespace: 1,
        };
        let unkeyed = QueueState::decide(None, Some(crowded), &limits);
        assert_eq!(
            (unkeyed.key, unkeyed.position, unkeyed.reason),
            (None, 1, WaitReason::NamespaceLimit)
        );
    }

    #[test]
    fn waiting_runs_are_counted_by_the_reason_that_holds_them() {
        let group = |key: Option<&str>, namespace: &str, waiting, active, limit| WaitingGroup {
            key: key.map(String::from),
            namespace: namespace.into(),
            waiting,
            active,
            limit,
        };
        let groups = [
            // Key a: 1 of 3 slots taken; 5 wait, over two namespaces.
            group(Some("a"), "default", 1, 1, 3),
            group(Some("a"), "batch", 4, 1, 3),
            group(None, "default", 2, 0, 0),
        ];
        let none = Admission::default();
        let counts = waiting_by_reason(&groups, None, &none);
        assert_eq!(
            counts,
            [
                ("".into(), "Ready", 2),
                ("a".into(), "ConcurrencyLimit", 3),
                ("a".into(), "Ready", 2),
            ]
        );
        // The namespace `default` is full: its share of the ready runs waits for it.
        let limits = Admission {
            max_active_per_namespace: 1,
            ..Admission::default()
        };
        let per_namespace = std::collections::HashMap::from([("default".to_string(), 1)]);
        let counts = waiting_by_reason(&groups, Some((1, &per_namespace)), &limits);
        assert_eq!(
            counts,
            [
                ("".into(), "NamespaceLimit", 2),
                ("a".into(), "ConcurrencyLimit", 3),
                ("a".into(), "NamespaceLimit", 1),
                ("a".into(), "Ready", 1),
            ]
        );
    }

    #[test]
    fn only_admins_may_raise_a_runs_priority_above_the_tasks_default() {
        assert_eq!(priority_for(Some(5), None, Some(Scope::Run)).unwrap(), 5);
        assert_eq!(
            priority_for(Some(5), Some(-3), Some(Scope::Run)).unwrap(),
            -3
        );
        let refused = priority_for(Some(5), Some(6), Some(Scope::Run)).unwrap_err();
        assert_eq!(refused.0[0].field, "priority");
        assert_eq!(
            priority_for(None, Some(10), Some(Scope::Admin)).unwrap(),
            10
        );
        assert!(priority_for(None, Some(5000), Some(Scope::Admin)).is_err());
    }
}
