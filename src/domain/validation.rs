//! The vocabulary of refusals: a list of field-level problems, each naming the JSON path of the
//! field at fault, so a client can point at the exact input to fix.

use serde::Serialize;

/// Why text with a NUL character is refused: PostgreSQL cannot store it in text or jsonb.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (\\u0000)";

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `template.env[2].name`.
    pub field: String,
    /// What is wrong with it, in words a user can act on.
    pub message: String,
}

/// A request that was refused because of one or more invalid fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
}

/// Collects field errors while walking a structure, tracking the path prefix.
#[derive(Debug, Default)]
pub struct Errors {
    errors: Vec<FieldError>,
}

impl Errors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records `result`'s message against `field` when it is an error.
    pub fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(field, message);
        }
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.errors))
        }
    }
}
