//! Typed task parameters (issue 18): their definitions on a task, the values a run is started
//! with, checked at the front door, and what a run records of them.
//!
//! Pure: no I/O. A secret parameter's value is carried as a [`SecretValue`] (whose `Debug` shows
//! `***`) from the request to the Kubernetes Secret the service creates for the run; what a run
//! records ([`RunParams`]) holds only its SHA-256.

use super::validation::{Errors, Invalid};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use utoipa::ToSchema;

/// Parameter values reach the container as env vars named `VFI_PARAM_<NAME uppercased>`.
pub const ENV_PREFIX: &str = "VFI_PARAM_";
/// What API answers, events, the dashboard, logs and archives show instead of a secret value.
pub const MASK: &str = "***";
/// The most parameters a task may define.
pub const MAX_PARAMETERS: usize = 100;
/// The longest parameter name.
pub const MAX_NAME: usize = 100;
/// The longest value (bytes) of a string or secret parameter.
pub const MAX_VALUE: usize = 32 * 1024;

/// What kind of value a parameter takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text (optionally matching `pattern`).
    #[default]
    String,
    /// A whole number (optionally within `minimum`..`maximum`).
    Integer,
    /// `true` or `false`.
    Boolean,
    /// One of `enum`.
    Enum,
    /// Text that is never stored, shown or logged: it reaches the container from a Kubernetes
    /// Secret the service creates for the run.
    Secret,
}

/// One parameter of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamSpec {
    /// `[A-Za-z_][A-Za-z0-9_]*`: the container sees it as `VFI_PARAM_<NAME uppercased>`, so
    /// names must also differ when uppercased.
    pub name: String,
    /// The kind of value (default `string`).
    #[serde(rename = "type", default)]
    pub kind: ParamType,
    /// The allowed values of an `enum` parameter (at least one).
    #[serde(rename = "enum", default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// The value a run gets when it is not given one (never for a `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub default: Option<serde_json::Value>,
    /// A run must be given a value (unless there is a default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// For `string` and `secret`: a regular expression (Rust `regex` syntax) the whole value
    /// must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// For `integer`: the smallest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// For `integer`: the largest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
    /// Free text for people (the dashboard's start form shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ParamSpec {
    /// The env var the container sees the value in.
    pub fn env_name(&self) -> String {
        env_name(&self.name)
    }

    /// The value `value` stands for, in its canonical JSON form (integers as numbers, booleans
    /// as booleans). Strings that spell an integer or a boolean are accepted for those types
    /// (the CLI's `-p name=value`, webhook and schedule mappings send text).
    fn check(&self, value: &serde_json::Value) -> Result<serde_json::Value, String> {
        use serde_json::Value;
        match self.kind {
            ParamType::String | ParamType::Secret => {
                let Value::String(text) = value else {
                    return Err("must be a string".into());
                };
                if text.len() > MAX_VALUE {
                    return Err(format!("must be at most {MAX_VALUE} bytes"));
                }
                if text.contains('\0') {
                    return Err(super::validation::NUL_MESSAGE.into());
                }
                if self.kind == ParamType::Secret && text.len() < super::masking::MIN_MASKED {
                    // Shorter values are not masked in logs (they would mask ordinary text).
                    return Err(format!(
                        "a secret value must be at least {} bytes, so that logs can mask it",
                        super::masking::MIN_MASKED
                    ));
                }
                if let Some(pattern) = &self.pattern {
                    match anchored(pattern) {
                        Ok(re) if re.is_match(text) => {}
                        Ok(_) => return Err(format!("must match the pattern {pattern:?}")),
                        Err(_) => return Err("the parameter's pattern is invalid".into()),
                    }
                }
                Ok(value.clone())
            }
            ParamType::Integer => {
                let number = match value {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                }
                .ok_or("must be an integer")?;
                if let Some(min) = self.minimum.filter(|min| number < *min) {
                    return Err(format!("must be at least {min}"));
                }
                if let Some(max) = self.maximum.filter(|max| number > *max) {
                    return Err(format!("must be at most {max}"));
                }
                Ok(Value::from(number))
            }
            ParamType::Boolean => match value {
                Value::Bool(b) => Ok(Value::Bool(*b)),
                Value::String(s) if s == "true" => Ok(Value::Bool(true)),
                Value::String(s) if s == "false" => Ok(Value::Bool(false)),
                _ => Err("must be true or false".into()),
            },
            ParamType::Enum => match value {
                Value::String(s) if self.choices.contains(s) => Ok(value.clone()),
                _ => Err(format!("must be one of {}", self.choices.join(", "))),
            },
        }
    }
}

/// The env var name of parameter `name`.
pub fn env_name(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase())
}

/// `pattern` as a whole-value match.
fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

fn valid_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a valid parameter name: it becomes the env var {ENV_PREFIX}<NAME>, so it must match [A-Za-z_][A-Za-z0-9_]*"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!("must be at most {MAX_NAME} characters"));
    }
    Ok(())
}

/// Checks a task's parameter definitions (at JSON path `at`, e.g. `parameters`).
pub fn collect_definition_errors(specs: &[ParamSpec], at: &str, errors: &mut Errors) {
    if specs.len() > MAX_PARAMETERS {
        errors.add(at, format!("at most {MAX_PARAMETERS} parameters"));
    }
    let mut seen = HashSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let field = |name: &str| format!("{at}[{i}].{name}");
        if let Err(message) = valid_name(&spec.name) {
            errors.add(field("name"), message);
        } else if !seen.insert(spec.name.to_ascii_uppercase()) {
            errors.add(
                field("name"),
                format!(
                    "duplicate parameter {:?} (names must differ when uppercased: both would be {})",
                    spec.name,
                    spec.env_name()
                ),
            );
        }
        let mut sound = true;
        match spec.kind {
            ParamType::Enum if spec.choices.is_empty() => {
                errors.add(field("enum"), "an enum parameter needs at least one value");
                sound = false;
            }
            ParamType::Enum => {
                let mut values = HashSet::new();
                for (j, choice) in spec.choices.iter().enumerate() {
                    if !values.insert(choice) {
                        errors.add(format!("{at}[{i}].enum[{j}]"), "duplicate value");
                    }
                }
            }
            _ if !spec.choices.is_empty() => {
                errors.add(field("enum"), "only for parameters of type enum");
                sound = false;
            }
            _ => {}
        }
        if let Some(pattern) = &spec.pattern {
            if !matches!(spec.kind, ParamType::String | ParamType::Secret) {
                errors.add(
                    field("pattern"),
                    "only for parameters of type string or secret",
                );
                sound = false;
            } else if let Err(error) = anchored(pattern) {
                errors.add(
                    field("pattern"),
                    format!("not a valid regular expression: {error}"),
                );
                sound = false;
            }
        }
        if spec.kind != ParamType::Integer {
            for (name, set) in [("minimum", spec.minimum), ("maximum", spec.maximum)] {
                if set.is_some() {
                    errors.add(field(name), "only for parameters of type integer");
                    sound = false;
                }
            }
        } else if let (Some(min), Some(max)) = (spec.minimum, spec.maximum) {
            if min > max {
                errors.add(field("maximum"), "must not be less than minimum");
                sound = false;
            }
        }
        if let Some(description) = &spec.description {
            if description.len() > 4096 {
                errors.add(field("description"), "must be at most 4096 bytes");
            }
        }
        if let Some(default) = &spec.default {
            if spec.kind == ParamType::Secret {
                errors.add(
                    field("default"),
                    "a secret parameter cannot have a default (it would be stored with the task)",
                );
            } else if sound {
                if let Err(message) = spec.check(default) {
                    errors.add(field("default"), message);
                }
            }
        }
    }
}

/// A secret parameter's value. Its `Debug` shows `***`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    /// The value itself: only for the run's Kubernetes Secret and for masking.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the value: all that Postgres keeps of it.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// What a run records of one parameter: its value, or for a secret only a SHA-256 of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedParam {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl RecordedParam {
    pub fn is_secret(&self) -> bool {
        self.sha256.is_some()
    }

    /// The text the container's env var gets (secrets: none, they come from the Secret).
    pub fn env_value(&self) -> Option<String> {
        self.value.as_ref().map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// The parameter values a run was started with, by name, as stored.
pub type RunParams = BTreeMap<String, RecordedParam>;

/// How API answers show a run's parameters: values by name, secrets as `***`.
pub fn serialize_shown<S: Serializer>(
    params: &RunParams,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(params.len()))?;
    for (name, param) in params {
        match &param.value {
            Some(value) if !param.is_secret() => map.serialize_entry(name, value)?,
            _ => map.serialize_entry(name, MASK)?,
        }
    }
    map.end()
}

/// A run's parameters after the front door: what to record, and the secret values to put into
/// the run's Secret (never recorded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub recorded: RunParams,
    pub secrets: BTreeMap<String, SecretValue>,
}

/// Checks the values `given` against the task's `specs` and applies defaults. Refused: each
/// parameter at fault named `params.<name>` (wrong type, not in the enum, pattern or range
/// missed, required but missing, no such parameter).
pub fn resolve(
    specs: &[ParamSpec],
    given: &BTreeMap<String, serde_json::Value>,
) -> Result<Resolved, Invalid> {
    let mut errors = Errors::new();
    for name in given.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            errors.add(
                format!("params.{name}"),
                if known.is_empty() {
                    "no such parameter: the task has no parameters".to_string()
                } else {
                    format!("no such parameter; the task has {}", known.join(", "))
                },
            );
        }
    }
    let mut resolved = Resolved::default();
    for spec in specs {
        let field = format!("params.{}", spec.name);
        let Some(value) = given.get(&spec.name).or(spec.default.as_ref()) else {
            if spec.required {
                errors.add(field, "required: the task has no default for it");
            }
            continue;
        };
        match spec.check(value) {
            Err(message) => errors.add(field, message),
            Ok(serde_json::Value::String(secret)) if spec.kind == ParamType::Secret => {
                let secret = SecretValue::new(secret);
                resolved.recorded.insert(
                    spec.name.clone(),
                    RecordedParam {
                        value: None,
                        sha256: Some(secret.sha256()),
                    },
                );
                resolved.secrets.insert(spec.name.clone(), secret);
            }
            Ok(value) => {
                resolved.recorded.insert(
                    spec.name.clone(),
                    RecordedParam {
                        value: Some(value),
                        sha256: None,
                    },
                );
            }
        }
    }
    errors.finish()?;
    Ok(resolved)
}

/// The values a rerun starts with: the original's non-secret values, under `given`. Secret
/// values are gone (only their hashes were kept), so a rerun must be given them again.
pub fn rerun_values(
    original: &RunParams,
    given: &BTreeMap<String, serde_json::Value>,
) -> BTreeMap<String, serde_json::Value> {
    let mut values: BTreeMap<String, serde_json::Value> = original
        .iter()
        .filter(|(_, p)| !p.is_secret())
        .filter_map(|(name, p)| Some((name.clone(), p.value.clone()?)))
        .collect();
    values.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs(value: serde_json::Value) -> Vec<ParamSpec> {
        serde_json::from_value(value).expect("parameter definitions parse")
    }

    fn definition_fields(value: serde_json::Value) -> Vec<String> {
        let mut errors = Errors::new();
        collect_definition_errors(&specs(value), "parameters", &mut errors);
        errors
            .finish()
            .err()
            .map(|e| e.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    }

    fn given(value: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(value).unwrap()
    }

    fn refused(specs: &[ParamSpec], value: serde_json::Value) -> Vec<String> {
        resolve(specs, &given(value))
            .unwrap_err()
            .0
            .into_iter()
            .map(|f| f.field)
            .collect()
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_field() {
        assert_eq!(
            definition_fields(json!([{"name": "ok"}, {"name": "1abc"}, {"name": "a-b"}])),
            ["parameters[1].name", "parameters[2].name"]
        );
        assert_eq!(
            definition_fields(json!([{"name": "target"}, {"name": "TARGET"}])),
            ["parameters[1].name"],
            "names that collide once uppercased are duplicates"
        );
        assert_eq!(
            definition_fields(json!([{"name": "n", "type": "integer", "default": "x"}])),
            ["parameters[0].default"]
        );
        assert_eq!(
            definition_fields(
                json!([{"name": "n", "type": "integer", "default": 12, "maximum": 10}])
            ),
            ["parameters[0].default"]
        );
        assert_eq!(
            definition_fields(
                json!([{"name": "t", "type": "enum", "enum": ["a"], "default": "b"}])
            ),
            ["parameters[0].default"]
        );
        assert_eq!(
            definition_fields(json!([{"name": "t", "type": "enum"}])),
            ["parameters[0].enum"]
        );
        assert_eq!(
            definition_fields(json!([{"name": "t", "pattern": "(unclosed"}])),
            ["parameters[0].pattern"]
        );
        assert_eq!(
            definition_fields(json!([{"name": "t", "pattern": "[a-z]+", "default": "A1"}])),
            ["parameters[0].default"]
        );
        assert_eq!(
            definition_fields(json!([{"name": "token", "type": "secret", "default": "x"}])),
            ["parameters[0].default"]
        );
        assert_eq!(
            definition_fields(
                json!([{"name": "n", "type": "integer", "minimum": 5, "maximum": 1}])
            ),
            ["parameters[0].maximum"]
        );
        assert_eq!(
            definition_fields(json!([{"name": "b", "type": "boolean", "enum": ["x"]}])),
            ["parameters[0].enum"]
        );
        assert!(definition_fields(json!([
            {"name": "target", "type": "enum", "enum": ["dev", "staging"], "default": "dev"},
            {"name": "count", "type": "integer", "minimum": 1, "maximum": 9, "default": 3},
            {"name": "dry_run", "type": "boolean", "default": false},
            {"name": "token", "type": "secret", "required": true, "pattern": "[a-z0-9-]+"}
        ]))
        .is_empty());
    }

    #[test]
    fn unknown_definition_fields_and_types_are_refused() {
        assert!(
            serde_json::from_value::<ParamSpec>(json!({"name": "a", "type": "float"})).is_err()
        );
        assert!(serde_json::from_value::<ParamSpec>(json!({"name": "a", "choices": []})).is_err());
    }

    #[test]
    fn values_are_checked_against_type_enum_pattern_and_range() {
        let s = specs(json!([
            {"name": "target", "type": "enum", "enum": ["dev", "staging"]},
            {"name": "count", "type": "integer", "minimum": 1, "maximum": 9},
            {"name": "flag", "type": "boolean"},
            {"name": "branch", "pattern": "[a-z]+"}
        ]));
        assert_eq!(refused(&s, json!({"target": "prod"})), ["params.target"]);
        assert_eq!(refused(&s, json!({"count": 10})), ["params.count"]);
        assert_eq!(refused(&s, json!({"count": 1.5})), ["params.count"]);
        assert_eq!(refused(&s, json!({"count": "x"})), ["params.count"]);
        assert_eq!(refused(&s, json!({"flag": 1})), ["params.flag"]);
        assert_eq!(refused(&s, json!({"branch": "main1"})), ["params.branch"]);
        assert_eq!(refused(&s, json!({"branch": 3})), ["params.branch"]);
        assert_eq!(refused(&s, json!({"nope": "x"})), ["params.nope"]);
        let ok = resolve(
            &s,
            &given(json!({"target": "staging", "count": "4", "flag": "true", "branch": "main"})),
        )
        .unwrap();
        assert_eq!(
            ok.recorded["count"].value,
            Some(json!(4)),
            "text read as an integer"
        );
        assert_eq!(ok.recorded["flag"].env_value().as_deref(), Some("true"));
        assert_eq!(
            ok.recorded["target"].env_value().as_deref(),
            Some("staging")
        );
    }

    #[test]
    fn defaults_are_applied_and_missing_required_values_are_refused() {
        let s = specs(json!([
            {"name": "target", "type": "enum", "enum": ["dev", "staging"], "default": "staging"},
            {"name": "ref", "required": true},
            {"name": "note"}
        ]));
        assert_eq!(refused(&s, json!({})), ["params.ref"]);
        let ok = resolve(&s, &given(json!({"ref": "main"}))).unwrap();
        assert_eq!(ok.recorded["target"].value, Some(json!("staging")));
        assert!(!ok.recorded.contains_key("note"), "unset without a default");
    }

    #[test]
    fn secret_values_are_recorded_only_as_a_hash_and_shown_masked() {
        let s = specs(json!([{"name": "token", "type": "secret", "required": true}]));
        let ok = resolve(&s, &given(json!({"token": "hunter2-xyz"}))).unwrap();
        let recorded = serde_json::to_string(&ok.recorded).unwrap();
        assert!(!recorded.contains("hunter2-xyz"), "{recorded}");
        assert_eq!(
            ok.recorded["token"].sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"hunter2-xyz")).as_str())
        );
        assert_eq!(ok.secrets["token"].expose(), "hunter2-xyz");
        assert_eq!(format!("{ok:?}").matches("hunter2").count(), 0);
        let mut out = serde_json::Serializer::new(Vec::new());
        serialize_shown(&ok.recorded, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.into_inner()).unwrap(),
            r#"{"token":"***"}"#
        );
        let short = resolve(&s, &given(json!({"token": "ab"}))).unwrap_err();
        assert_eq!(
            short.0[0].field, "params.token",
            "too short to be masked in logs"
        );
    }

    #[test]
    fn a_rerun_reuses_plain_values_but_not_secret_ones() {
        let s = specs(json!([
            {"name": "target"}, {"name": "token", "type": "secret", "required": true}
        ]));
        let first = resolve(&s, &given(json!({"target": "a", "token": "t0ken"}))).unwrap();
        let again = rerun_values(&first.recorded, &BTreeMap::new());
        assert_eq!(again, given(json!({"target": "a"})));
        assert_eq!(refused(&s, json!(again)), ["params.token"]);
    }
}
