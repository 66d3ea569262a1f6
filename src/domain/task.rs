//! Tasks: named, reusable run definitions (like a Jenkins job or a Kubernetes CronJob).

use super::names;
use super::template::RunTemplate;
use super::validation::{Errors, Invalid};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// A task's name: a DNS-1123 label of at most 50 characters, so that `<name>-<run number>`
/// still fits the 63 characters a Job name may have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskName(String);

pub const MAX_TASK_NAME: usize = 50;

impl TaskName {
    pub fn parse(value: impl Into<String>) -> Result<TaskName, String> {
        let value = value.into();
        names::dns1123_label(&value)?;
        if value.len() > MAX_TASK_NAME {
            return Err(format!(
                "must be no more than {MAX_TASK_NAME} characters (is {}), so run Job names fit Kubernetes' 63",
                value.len()
            ));
        }
        Ok(TaskName(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        TaskName::parse(value)
    }
}

impl From<TaskName> for String {
    fn from(name: TaskName) -> String {
        name.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client sends to create or replace a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Job template every run of the task starts from.
    pub template: RunTemplate,
}

impl TaskSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errors = Errors::new();
        if let Some(description) = &self.description {
            if description.len() > 4096 {
                errors.add("description", "must be at most 4096 bytes");
            }
        }
        self.template.collect_errors("template", &mut errors);
        errors.finish()
    }
}

/// A stored task, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub template: RunTemplate,
    /// Increases each time the definition changes.
    pub generation: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_leave_room_for_the_run_number() {
        assert!(TaskName::parse("nightly-render").is_ok());
        assert!(TaskName::parse("a".repeat(50)).is_ok());
        assert!(TaskName::parse("a".repeat(51)).is_err());
        assert!(TaskName::parse("Nightly").is_err());
    }
}
