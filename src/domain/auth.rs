//! API tokens and what they allow: scopes (cumulative: admin ⊃ run ⊃ read), optional limits to
//! some tasks, and the token format. Pure: checking a caller against an operation's needs is
//! decided here; finding the token in the database is the store's job.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use utoipa::ToSchema;

/// What a token may do. Each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Scope {
    /// Read tasks, runs, their history and pods.
    Read,
    /// Also start, cancel and re-run runs.
    Run,
    /// Also define tasks and their triggers, and manage tokens.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Run => "run",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "read" => Ok(Scope::Read),
            "run" => Ok(Scope::Run),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "{other:?} is not a scope; expected read, run or admin"
            )),
        }
    }
}

/// Who is calling: the token's grant, or everything when authentication is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id; `None` when authentication is disabled.
    pub token_id: Option<uuid::Uuid>,
    pub scope: Scope,
    /// The tasks the caller is limited to; `None` means every task.
    pub tasks: Option<Vec<String>>,
}

/// Why a caller may not do something (a 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Caller {
    /// The caller when authentication is turned off: may do anything.
    pub fn unauthenticated() -> Caller {
        Caller {
            token_id: None,
            scope: Scope::Admin,
            tasks: None,
        }
    }

    /// Allows operations that concern no task in particular (listing everything, ad-hoc runs,
    /// tokens): the scope must suffice and the token must not be limited to some tasks.
    pub fn require(&self, needed: Scope) -> Result<(), Denied> {
        self.require_scope(needed)?;
        if self.tasks.is_some() {
            return Err(Denied(format!(
                "this token is limited to some tasks; this operation needs a token for every task with the {needed} scope"
            )));
        }
        Ok(())
    }

    /// Allows an operation on one task (`None`: an ad-hoc run, which no limited token reaches).
    pub fn require_task(&self, needed: Scope, task: Option<&str>) -> Result<(), Denied> {
        self.require_scope(needed)?;
        match (&self.tasks, task) {
            (None, _) => Ok(()),
            (Some(allowed), Some(task)) if allowed.iter().any(|t| t == task) => Ok(()),
            (Some(_), Some(task)) => Err(Denied(format!(
                "this token is not allowed to access task {task:?}"
            ))),
            (Some(_), None) => Err(Denied(
                "this token is limited to some tasks and cannot access ad-hoc runs".into(),
            )),
        }
    }

    fn require_scope(&self, needed: Scope) -> Result<(), Denied> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(Denied(format!(
                "this operation needs the {needed} scope; the token has {}",
                self.scope
            )))
        }
    }
}

/// Every token starts with this, so a leaked one is easy to recognise (e.g. by secret scanners).
pub const TOKEN_PREFIX: &str = "vfi_";

/// A new random token (256 bits of entropy) and the hash to store for it.
pub fn new_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash_token(&token);
    (token, hash)
}

/// What is stored for a token. A plain SHA-256 suffices: the token is random and long, so there
/// is nothing to brute-force, and a lookup by hash reveals nothing about other tokens.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scope: Scope, tasks: Option<&[&str]>) -> Caller {
        Caller {
            token_id: Some(uuid::Uuid::nil()),
            scope,
            tasks: tasks.map(|t| t.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn scopes_are_cumulative() {
        let admin = caller(Scope::Admin, None);
        let run = caller(Scope::Run, None);
        let read = caller(Scope::Read, None);
        for needed in [Scope::Read, Scope::Run, Scope::Admin] {
            assert!(admin.require(needed).is_ok());
        }
        assert!(run.require(Scope::Read).is_ok() && run.require(Scope::Run).is_ok());
        assert!(run.require(Scope::Admin).is_err());
        assert!(read.require(Scope::Read).is_ok());
        assert!(read.require(Scope::Run).is_err());
    }

    #[test]
    fn task_limited_tokens_reach_only_their_tasks() {
        let limited = caller(Scope::Run, Some(&["render"]));
        assert!(limited.require_task(Scope::Run, Some("render")).is_ok());
        assert!(limited.require_task(Scope::Run, Some("other")).is_err());
        assert!(limited.require_task(Scope::Read, None).is_err());
        assert!(limited.require(Scope::Read).is_err());
        assert!(limited.require_task(Scope::Admin, Some("render")).is_err());
    }

    #[test]
    fn tokens_are_random_and_stored_only_as_their_hash() {
        let (a, hash_a) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_a);
        assert!(!hash_a
            .windows(4)
            .any(|w| a.as_bytes().windows(4).any(|x| x == w)));
    }
}
