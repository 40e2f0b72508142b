//! Events: the immutable facts the log holds, their stable names and schema versions, the
//! envelope they are stored in, and the hash chain over them.
//!
//! Only additive changes: a new fact is a new variant, a breaking change a new schema version
//! with an upcaster in [`codec`]. Variants are never renamed or reused. Each event carries every
//! fact its projections need (whole entities on add and change), so projections compute nothing.

pub mod chain;
pub mod codec;
pub mod redact;

use crate::domain::{
    Agent, AgentId, AlertRule, AlertTemplate, ApiToken, Node, NodeId, RuleId, Service, ServiceId,
    Settings, TokenId,
};
use serde::{Deserialize, Serialize};

/// Every event type. Serialized with an explicit tag (the stored `event_type`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    NodeAdded { node: Node },
    NodeRemoved { node_id: NodeId },
    ServiceAdded { service: Service },
    ServiceChanged { service: Service },
    ServiceRemoved { service_id: ServiceId },
    AgentAdded { agent: Agent },
    AgentChanged { agent: Agent },
    AgentRemoved { agent_id: AgentId },
    SettingsChanged { settings: Settings },
    TokenCreated { token: ApiToken },
    TokenRevoked { token_id: TokenId },
    AlertTemplateCreated { template: AlertTemplate },
    AlertTemplateUpdated { template: AlertTemplate },
    AlertTemplateDeleted { name: String },
    AlertRuleCreated { rule: AlertRule },
    AlertRuleChanged { rule: AlertRule },
    AlertRuleDeleted { rule_id: RuleId },
}

/// The stream an event belongs to: one per entity, so an entity's history is one read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamKey {
    Node(NodeId),
    Service(ServiceId),
    Agent(AgentId),
    Settings,
    Token(TokenId),
    AlertTemplate(String),
    AlertRule(RuleId),
}

impl StreamKey {
    /// The stored `stream_id`: `node-<id>`, `service-<id>`, `agent-<id>`, `settings` or
    /// `token-<id>`.
    pub fn stream_id(&self) -> String {
        match self {
            StreamKey::Node(id) => format!("node-{id}"),
            StreamKey::Service(id) => format!("service-{id}"),
            StreamKey::Agent(id) => format!("agent-{id}"),
            StreamKey::Settings => "settings".to_owned(),
            StreamKey::Token(id) => format!("token-{id}"),
            StreamKey::AlertTemplate(name) => format!("alert-template-{name}"),
            StreamKey::AlertRule(id) => format!("alert-rule-{id}"),
        }
    }
}

impl Event {
    /// The stable type name stored in `events.event_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::NodeAdded { .. } => "NodeAdded",
            Event::NodeRemoved { .. } => "NodeRemoved",
            Event::ServiceAdded { .. } => "ServiceAdded",
            Event::ServiceChanged { .. } => "ServiceChanged",
            Event::ServiceRemoved { .. } => "ServiceRemoved",
            Event::AgentAdded { .. } => "AgentAdded",
            Event::AgentChanged { .. } => "AgentChanged",
            Event::AgentRemoved { .. } => "AgentRemoved",
            Event::SettingsChanged { .. } => "SettingsChanged",
            Event::TokenCreated { .. } => "TokenCreated",
            Event::TokenRevoked { .. } => "TokenRevoked",
            Event::AlertTemplateCreated { .. } => "AlertTemplateCreated",
            Event::AlertTemplateUpdated { .. } => "AlertTemplateUpdated",
            Event::AlertTemplateDeleted { .. } => "AlertTemplateDeleted",
            Event::AlertRuleCreated { .. } => "AlertRuleCreated",
            Event::AlertRuleChanged { .. } => "AlertRuleChanged",
            Event::AlertRuleDeleted { .. } => "AlertRuleDeleted",
        }
    }

    /// The entity (and stream) this event is about.
    pub fn stream(&self) -> StreamKey {
        match self {
            Event::NodeAdded { node } => StreamKey::Node(node.node_id.clone()),
            Event::NodeRemoved { node_id } => StreamKey::Node(node_id.clone()),
            Event::ServiceAdded { service } | Event::ServiceChanged { service } => {
                StreamKey::Service(service.service_id.clone())
            }
            Event::ServiceRemoved { service_id } => StreamKey::Service(service_id.clone()),
            Event::AgentAdded { agent } | Event::AgentChanged { agent } => {
                StreamKey::Agent(agent.agent_id.clone())
            }
            Event::AgentRemoved { agent_id } => StreamKey::Agent(agent_id.clone()),
            Event::SettingsChanged { .. } => StreamKey::Settings,
            Event::TokenCreated { token } => StreamKey::Token(token.token_id.clone()),
            Event::TokenRevoked { token_id } => StreamKey::Token(token_id.clone()),
            Event::AlertTemplateCreated { template } | Event::AlertTemplateUpdated { template } => {
                StreamKey::AlertTemplate(template.name.clone())
            }
            Event::AlertTemplateDeleted { name } => StreamKey::AlertTemplate(name.clone()),
            Event::AlertRuleCreated { rule } | Event::AlertRuleChanged { rule } => {
                StreamKey::AlertRule(rule.rule_id.clone())
            }
            Event::AlertRuleDeleted { rule_id } => StreamKey::AlertRule(rule_id.clone()),
        }
    }
}
