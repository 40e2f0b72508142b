//! BootstrapServer: the PMM Server's own node (`pmm-server`), its pmm-agent (`pmm-server`)
//! and node_exporter, and the server id in the settings. Idempotent: it records nothing when
//! they exist, so every start may send it.

use super::agents::{AddAgent, CreateOpts, create_agent};
use super::nodes::{AddNode, create_node};
use super::{Decision, Rejection};
use crate::domain::{Agent, AgentId, AgentType, NodeId, NodeType, PMM_SERVER_ID};
use crate::events::Event;

/// The command each start sends; the first one records the fixtures.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BootstrapServer;

impl BootstrapServer {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let node_id = NodeId::from(PMM_SERVER_ID);
        if d.state().nodes.contains_key(&node_id) {
            return Ok(());
        }
        let node = AddNode {
            node_type: Some(NodeType::Generic),
            node_name: PMM_SERVER_ID.to_owned(),
            address: "127.0.0.1".to_owned(),
            ..AddNode::default()
        };
        create_node(d, &node, node_id.clone(), true)?;
        let pmm_agent_id = AgentId::from(PMM_SERVER_ID);
        let mut pmm_agent = Agent::new(pmm_agent_id.clone(), AgentType::PmmAgent, d.now());
        pmm_agent.runs_on_node_id = Some(node_id);
        d.emit(Event::AgentAdded { agent: pmm_agent });
        let mut exporter = AddAgent::new(AgentType::NodeExporter);
        exporter.pmm_agent_id = Some(pmm_agent_id);
        create_agent(d, &exporter, CreateOpts::INVENTORY)?;
        if d.state().settings.pmm_server_id.is_empty() {
            let mut settings = (*d.state().settings).clone();
            settings.pmm_server_id = d.new_id().to_string();
            d.emit(Event::SettingsChanged { settings });
        }
        Ok(())
    }
}
