//! The webhook use case's pure part: what an authenticated delivery asks for, before anything is
//! looked up or recorded. The HTTP handler verifies the signature ([`super::verify`]), applies
//! the rate limit, asks [`read`], and records a run only for [`Reading::Start`].

use super::{delivery_id, event_name, parse, Filter, GitEvent, Parsed, Rerequest, WebhookTrigger};
use crate::domain::run::RunOverrides;

/// What an authenticated delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// GitHub's `ping`: answer, start nothing.
    Pong,
    /// Nothing to start, and why (an event the trigger does not handle or filters out).
    Ignored { delivery: String, reason: String },
    /// GitHub asks to run a check again: rerun the run it names (unless this delivery was
    /// received before). Only for triggers that report check runs (a GitHub App).
    Rerun {
        delivery: String,
        rerequest: Rerequest,
    },
    /// A run to start (unless this delivery was received before).
    Start {
        delivery: String,
        event: GitEvent,
        /// The event's facts, as the run's environment variables (boxed: the largest variant
        /// by far since overrides may name a Kueue queue).
        overrides: Box<RunOverrides>,
    },
}

/// Why a delivery is not what its provider sends (a 400, naming `field`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub field: &'static str,
    pub message: String,
}

/// Reads an authenticated delivery for `trigger`: its event name, its delivery id, its payload,
/// and whether the trigger's filters let it start a run. `header` looks up a request header by
/// lower-case name. `Err` only for a trigger whose stored filters no longer build (a bug).
pub fn read<'h>(
    trigger: &WebhookTrigger,
    header: impl Fn(&str) -> Option<&'h str> + Copy,
    body: &[u8],
) -> Result<Result<Reading, Unreadable>, String> {
    let Some(event_name) = event_name(trigger.provider, header) else {
        return Ok(Err(Unreadable {
            field: "headers",
            message: "the delivery names no event (e.g. X-GitHub-Event)".into(),
        }));
    };
    let delivery = delivery_id(trigger.provider, header, body);
    let event = match parse(trigger.provider, event_name, body) {
        Err(message) => {
            return Ok(Err(Unreadable {
                field: "body",
                message,
            }))
        }
        Ok(Parsed::Ping) => return Ok(Ok(Reading::Pong)),
        Ok(Parsed::Ignored(reason)) => return Ok(Ok(Reading::Ignored { delivery, reason })),
        Ok(Parsed::Rerequested(rerequest)) => {
            let checks = trigger
                .report
                .as_ref()
                .is_some_and(|report| report.app_id.is_some());
            return Ok(Ok(if checks {
                Reading::Rerun {
                    delivery,
                    rerequest,
                }
            } else {
                Reading::Ignored {
                    delivery,
                    reason: "re-run requests are handled for triggers that report check runs (a GitHub App) only".into(),
                }
            }));
        }
        Ok(Parsed::Event(event)) => event,
    };
    let filter = Filter::new(&trigger.events, &trigger.refs)?;
    if let Err(reason) = filter.check(&event) {
        return Ok(Ok(Reading::Ignored { delivery, reason }));
    }
    let overrides = Box::new(RunOverrides {
        env: event.env(trigger.provider, &delivery),
        params: event.params(&trigger.params, trigger.provider, &delivery),
        ..Default::default()
    });
    Ok(Ok(Reading::Start {
        delivery,
        event,
        overrides,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::webhook::payload::tests::push;
    use crate::domain::webhook::{EventKind, Provider};

    fn trigger(refs: &[&str]) -> WebhookTrigger {
        WebhookTrigger {
            id: uuid::Uuid::nil(),
            task: "t".into(),
            name: "n".into(),
            provider: Provider::Github,
            events: vec![EventKind::Push],
            refs: refs.iter().map(|r| r.to_string()).collect(),
            report: None,
            params: Default::default(),
            hook_path: String::new(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_delivery_is_a_pong_a_refusal_naming_the_field_an_ignored_event_or_a_run_to_start() {
        let body = push("refs/heads/main", &"a".repeat(40));
        let named =
            |event: &'static str| move |name: &str| (name == "x-github-event").then_some(event);
        assert_eq!(
            read(&trigger(&[]), named("ping"), b"{}"),
            Ok(Ok(Reading::Pong))
        );
        let unnamed = read(&trigger(&[]), |_: &str| None, &body)
            .unwrap()
            .unwrap_err();
        assert_eq!(unnamed.field, "headers");
        let garbled = read(&trigger(&[]), named("push"), b"{")
            .unwrap()
            .unwrap_err();
        assert_eq!(garbled.field, "body");
        assert!(matches!(
            read(&trigger(&["release/*"]), named("push"), &body),
            Ok(Ok(Reading::Ignored { .. }))
        ));
        let Ok(Ok(Reading::Start {
            event,
            overrides,
            delivery,
        })) = read(&trigger(&["main"]), named("push"), &body)
        else {
            panic!("a push to main starts a run")
        };
        assert_eq!(event.git_ref, "refs/heads/main");
        assert!(
            delivery.starts_with("sha256:"),
            "no delivery header: the body's hash"
        );
        assert!(overrides
            .env
            .iter()
            .any(|v| v.name == "VFI_GIT_REF" && v.value == "refs/heads/main"));
    }
}
