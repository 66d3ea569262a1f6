//! A trigger's parameter mapping (issue 18): `params: {"ref": "{{ref}}", "pr":
//! "{{pull_request.number}}"}` fills the task's parameters from the facts of the Git event (the
//! same facts the run gets as `VFI_GIT_*`). Only `{{field}}` placeholders are read; a value is
//! never evaluated as anything else.

use super::{GitEvent, Provider};
use crate::domain::validation::Errors;
use std::collections::BTreeMap;

/// The placeholders a mapping may use.
pub const FIELDS: &[&str] = &[
    "provider",
    "event",
    "repository",
    "clone_url",
    "ref",
    "sha",
    "sender",
    "delivery",
    "pull_request.number",
    "base_ref",
];

/// The pieces of a template: literal text, or a placeholder's field name.
enum Piece<'a> {
    Text(&'a str),
    Field(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{template:?} has an unclosed {{{{"))?;
        let field = after[..end].trim();
        if !FIELDS.contains(&field) {
            return Err(format!(
                "{{{{{field}}}}} is not a field of a Git event; use one of {}",
                FIELDS.join(", ")
            ));
        }
        out.push(Piece::Field(field));
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Checks a trigger's mapping (at JSON path `params`).
pub fn collect_errors(params: &BTreeMap<String, String>, errors: &mut Errors) {
    if params.len() > 100 {
        errors.add("params", "at most 100 parameters");
    }
    for (name, template) in params {
        if let Err(message) = pieces(template) {
            errors.add(format!("params.{name}"), message);
        }
        if template.len() > 1024 {
            errors.add(format!("params.{name}"), "must be at most 1024 bytes");
        }
    }
}

impl GitEvent {
    fn field(&self, field: &str, provider: Provider, delivery: &str) -> Option<String> {
        Some(match field {
            "provider" => provider.as_str().to_string(),
            "event" => self.kind.as_str().to_string(),
            "repository" => self.repository.clone(),
            "clone_url" => self.clone_url.clone(),
            "ref" => self.git_ref.clone(),
            "sha" => self.sha.clone(),
            "sender" => self.sender.clone(),
            "delivery" => delivery.to_string(),
            "pull_request.number" => self.pull_request?.to_string(),
            "base_ref" => self.base_ref.clone()?,
            _ => return None,
        })
    }

    /// The parameter values `mapping` gives for this event. A mapping naming a fact the event
    /// lacks (`{{pull_request.number}}` of a push) is left out, so the parameter's default
    /// applies (or, if it is required, the delivery is refused naming it).
    pub fn params(
        &self,
        mapping: &BTreeMap<String, String>,
        provider: Provider,
        delivery: &str,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut values = BTreeMap::new();
        'params: for (name, template) in mapping {
            let Ok(pieces) = pieces(template) else {
                continue;
            };
            let mut value = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(text) => value.push_str(text),
                    Piece::Field(field) => match self.field(field, provider, delivery) {
                        Some(fact) => value.push_str(&fact),
                        None => continue 'params,
                    },
                }
            }
            values.insert(name.clone(), serde_json::Value::String(value));
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::webhook::EventKind;

    fn event(pull_request: Option<u64>) -> GitEvent {
        GitEvent {
            kind: EventKind::Push,
            repository: "o/r".into(),
            clone_url: "https://example.com/o/r.git".into(),
            git_ref: "refs/heads/main".into(),
            sha: "abc123".into(),
            sender: "octocat".into(),
            pull_request,
            base_ref: None,
        }
    }

    #[test]
    fn a_mapping_fills_parameters_from_the_events_facts() {
        let mapping: BTreeMap<String, String> = [
            ("ref".to_string(), "{{ref}}".to_string()),
            ("sha".to_string(), "{{ sha }}".to_string()),
            ("label".to_string(), "build-{{sha}}-x".to_string()),
            ("pr".to_string(), "{{pull_request.number}}".to_string()),
        ]
        .into();
        let values = event(None).params(&mapping, Provider::Github, "d1");
        assert_eq!(values["ref"], "refs/heads/main");
        assert_eq!(values["sha"], "abc123");
        assert_eq!(values["label"], "build-abc123-x");
        assert!(!values.contains_key("pr"), "a push has no pull request");
        let values = event(Some(7)).params(&mapping, Provider::Github, "d1");
        assert_eq!(values["pr"], "7");
    }

    #[test]
    fn unknown_placeholders_are_refused_naming_the_parameter() {
        let mapping: BTreeMap<String, String> = [
            ("a".to_string(), "{{head_commit.message}}".to_string()),
            ("b".to_string(), "{{ref".to_string()),
            ("c".to_string(), "{{ref}}".to_string()),
        ]
        .into();
        let mut errors = Errors::new();
        collect_errors(&mapping, &mut errors);
        let fields: Vec<String> = errors
            .finish()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["params.a", "params.b"]);
    }
}
