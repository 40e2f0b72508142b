//! Rejections (expected business outcomes of `decide`) and the application-level
//! [`CommandError`] that callers of `dispatch` see.

use serde::{Deserialize, Serialize};

/// PMM's error classes for rejected commands (the gRPC codes PMM answers with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
}

/// A command rejected by a rule: its class and PMM's precise message. Never contains secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Rejection {
    pub class: ErrorClass,
    message: String,
}

impl Rejection {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::AlreadyExists, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::FailedPrecondition, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::PermissionDenied, message)
    }
    /// The message, as shown to the caller.
    pub fn message(&self) -> String {
        self.message.clone()
    }

    pub fn node_not_found(id: &impl std::fmt::Display) -> Self {
        Self::not_found(format!("Node with ID {:?} not found.", id.to_string()))
    }
    pub fn service_not_found(id: &impl std::fmt::Display) -> Self {
        Self::not_found(format!("Service with ID {:?} not found.", id.to_string()))
    }
    pub fn agent_not_found(id: &impl std::fmt::Display) -> Self {
        Self::not_found(format!("Agent with ID {:?} not found.", id.to_string()))
    }
}

/// What a caller of `dispatch` gets back when a command does not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The batch was decided on a stale base; retrying the command is safe.
    #[error("concurrent write: the log head moved from {expected} to {actual}; retry")]
    Conflict { expected: i64, actual: i64 },
    /// This node cannot accept writes; `leader` names the one that can, when known.
    #[error("not the leader{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Rejection> for CommandError {
    fn from(r: Rejection) -> Self {
        match r.class {
            ErrorClass::InvalidArgument => CommandError::Invalid(r.message),
            ErrorClass::NotFound => CommandError::NotFound(r.message),
            ErrorClass::AlreadyExists => CommandError::AlreadyExists(r.message),
            ErrorClass::FailedPrecondition => CommandError::FailedPrecondition(r.message),
            ErrorClass::PermissionDenied => CommandError::PermissionDenied(r.message),
        }
    }
}

impl CommandError {
    /// True when the same command may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CommandError::Conflict { .. }
                | CommandError::NotLeader { .. }
                | CommandError::Unavailable(_)
        )
    }
    /// The rejection class, for errors that are business rejections.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            CommandError::Invalid(_) => Some(ErrorClass::InvalidArgument),
            CommandError::NotFound(_) => Some(ErrorClass::NotFound),
            CommandError::AlreadyExists(_) => Some(ErrorClass::AlreadyExists),
            CommandError::FailedPrecondition(_) => Some(ErrorClass::FailedPrecondition),
            CommandError::PermissionDenied(_) => Some(ErrorClass::PermissionDenied),
            _ => None,
        }
    }
}
