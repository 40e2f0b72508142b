//! API tokens: CreateToken records a token's hash (the secret never reaches a command: the
//! caller makes it, keeps it, and sends its SHA-256) and RevokeToken ends it.

use super::{Decision, Rejection};
use crate::domain::limits::{MAX_NAME_LEN, required};
use crate::domain::{AgentId, AgentType, ApiToken, Role, TokenId};
use crate::events::Event;

/// Records a new token.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CreateToken {
    /// Unique among live tokens.
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the secret (see `domain::token::token_hash`).
    pub hash: String,
    /// Binds an `agent` token to this pmm-agent (which must exist).
    #[serde(default)]
    pub agent_id: Option<AgentId>,
}

impl CreateToken {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<TokenId, Rejection> {
        required("name", &self.name, MAX_NAME_LEN)?;
        let is_hash = self.hash.len() == 64
            && self
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hash {
            return Err(Rejection::invalid(
                "hash: expected the lowercase hex SHA-256 of the token.",
            ));
        }
        if let Some(id) = &self.agent_id {
            let is_pmm_agent = d
                .state()
                .agents
                .get(id)
                .is_some_and(|a| a.agent_type == AgentType::PmmAgent);
            if !is_pmm_agent || self.role != Role::Agent {
                return Err(Rejection::invalid(format!(
                    "agent_id: {id:?} is not a pmm-agent, or the token's role is not agent."
                )));
            }
        }
        if d.state().token_by_name(&self.name).is_some() {
            return Err(Rejection::already_exists(format!(
                "Token with name {:?} already exists.",
                self.name
            )));
        }
        // A revoked token's secret may have leaked: its hash is never accepted again.
        if d.state().token_hash_known(&self.hash) {
            return Err(Rejection::already_exists(
                "This token is already recorded or was revoked; make a new one.",
            ));
        }
        let token_id = TokenId::from(d.new_id());
        d.emit(Event::TokenCreated {
            token: ApiToken {
                token_id: token_id.clone(),
                name: self.name.clone(),
                role: self.role,
                hash: self.hash.clone(),
                created_at: d.now(),
                agent_id: self.agent_id.clone(),
            },
        });
        Ok(token_id)
    }
}

/// Ends a token: calls with it are refused from the next revision on.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RevokeToken {
    /// The token's id or its name.
    pub token: String,
}

impl RevokeToken {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let by_id = TokenId::from(self.token.as_str());
        let token_id = if d.state().tokens.contains_key(&by_id) {
            by_id
        } else {
            d.state()
                .token_by_name(&self.token)
                .map(|t| t.token_id.clone())
                .ok_or_else(|| Rejection::not_found(format!("Token {:?} not found.", self.token)))?
        };
        d.emit(Event::TokenRevoked { token_id });
        Ok(())
    }
}
