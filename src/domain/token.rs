//! API tokens: who may call which API. A token is a secret handed to its holder once; the log
//! and the state keep only its SHA-256 hash, so neither can be used to call the API.

use super::ids::{AgentId, Timestamp, TokenId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Commands, and every query.
    Admin,
    /// Inventory, settings and cluster queries.
    Viewer,
    /// The event history and the hash chain.
    Auditor,
    /// A pmm-agent's own stream.
    Agent,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Viewer, Role::Auditor, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A token as recorded: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub token_id: TokenId,
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: String,
    pub created_at: Timestamp,
    /// For a pmm-agent's token (role `agent`): the pmm-agent it belongs to; it authenticates
    /// that agent's stream and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

/// The hash a token is known by: lowercase hex SHA-256 of the secret.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret: `pmmcp_` and 32 random bytes, base64url.
pub fn new_token_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "pmmcp_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
