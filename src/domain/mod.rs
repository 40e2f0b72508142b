//! PMM's inventory and settings as plain data: ids, nodes, services, agents, settings, labels,
//! and the in-memory [`State`] that every event folds into.
//!
//! Nothing here does I/O. Validation helpers live next to the types they validate and return
//! [`crate::commands::Rejection`]s, so every rule has one home.

pub mod agent;
pub mod alerting;
pub mod ids;
pub mod labels;
pub mod limits;
pub mod node;
pub mod secret;
pub mod service;
pub mod settings;
pub mod state;
pub mod token;

pub use agent::{Agent, AgentStatus, AgentType, LogLevel, MetricsResolutions};
pub use alerting::{AlertRule, AlertTemplate};
pub use ids::{AgentId, NodeId, PMM_SERVER_ID, RuleId, ServiceId, Timestamp, TokenId};
pub use labels::Labels;
pub use node::{Node, NodeType};
pub use secret::Sealed;
pub use service::{Service, ServiceType};
pub use settings::Settings;
pub use state::State;
pub use token::{ApiToken, Role};
