//! Entity identifiers. PMM v3 uses bare UUID strings, except the PMM Server's own node and
//! pmm-agent, whose ids are the fixed string `pmm-server`.

use serde::{Deserialize, Serialize};
use std::fmt;
// Ids are keys of every persistent map in the state; copy-on-write copies keys, so they must
// be cheap to clone.
use std::sync::Arc;

/// The id of the PMM Server's own node and of its own pmm-agent.
pub const PMM_SERVER_ID: &str = "pmm-server";

/// Event and entity timestamps: UTC, truncated to microseconds so they survive PostgreSQL.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Truncates a timestamp to the microsecond precision PostgreSQL stores.
pub fn truncate_to_micros(t: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// True for the PMM Server's own fixed id.
            pub fn is_pmm_server(&self) -> bool {
                &*self.0 == PMM_SERVER_ID
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
        impl From<uuid::Uuid> for $name {
            fn from(u: uuid::Uuid) -> Self {
                Self(Arc::from(u.to_string()))
            }
        }
    };
}

id_type!(
    /// A node id (`nodes.node_id`).
    NodeId
);
id_type!(
    /// A service id (`services.service_id`).
    ServiceId
);
id_type!(
    /// An agent id (`agents.agent_id`).
    AgentId
);
id_type!(
    /// An API token's id (not its secret).
    TokenId
);
id_type!(
    /// An alert rule's id.
    RuleId
);

/// Management RemoveService treats its argument as an id when it *ends* with a UUID
/// (PMM's regex is anchored only at the end), otherwise as a service name.
pub fn looks_like_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 36 {
        return false;
    }
    let tail = &b[b.len() - 36..];
    tail.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_like_id_is_anchored_only_at_the_end() {
        assert!(looks_like_id("0b4ad1e4-bd3c-4f33-a1d9-7f6ec1d8a8c3"));
        assert!(looks_like_id("name-0b4ad1e4-bd3c-4f33-a1d9-7f6ec1d8a8c3"));
        assert!(!looks_like_id("0B4AD1E4-BD3C-4F33-A1D9-7F6EC1D8A8C3"));
        assert!(!looks_like_id("mysql-1"));
    }
}
