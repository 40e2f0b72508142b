//! Management RegisterNode: what `pmm-agent setup` calls. Creates a generic or container node,
//! its pmm-agent and its node_exporter in one decision; with `reregister`, first removes
//! (cascade) the node with the same name and the node with the same (address, region).

use super::add_service::MetricsMode;
use super::agents::{AddAgent, CreateOpts, create_agent};
use super::nodes::{AddNode, create_node, remove_node};
use super::tokens::CreateToken;
use super::{Decision, Rejection, non_empty};
use crate::domain::labels::Labels;
use crate::domain::{AgentId, AgentType, NodeId, NodeType, Role, Sealed};

/// RegisterNode's request.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RegisterNode {
    pub node_type: Option<NodeType>,
    pub node_name: String,
    pub address: String,
    pub machine_id: Option<String>,
    pub distro: String,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub node_model: String,
    pub region: Option<String>,
    pub az: String,
    pub custom_labels: Labels,
    pub reregister: bool,
    pub metrics_mode: MetricsMode,
    pub disable_collectors: Vec<String>,
    pub agent_password: Option<Sealed>,
    pub expose_exporter: bool,
    pub instance_id: String,
    /// The SHA-256 (lowercase hex) of the pmm-agent's token, made by the API edge and answered
    /// to the caller once; recorded as a token of role `agent` bound to the new pmm-agent.
    #[serde(default)]
    pub agent_token_hash: Option<String>,
}

impl RegisterNode {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        match self.node_type {
            Some(NodeType::Generic | NodeType::Container) => {}
            Some(NodeType::Remote) => {
                return Err(Rejection::invalid(
                    "Remote nodes can't be registered: add them with AddNode.",
                ));
            }
            _ => return Err(Rejection::invalid("Unsupported Node type.")),
        }
        if let Some(existing) = d
            .state()
            .node_by_name(&self.node_name)
            .map(|n| n.node_id.clone())
        {
            if !self.reregister {
                return Err(Rejection::already_exists(format!(
                    "Node with name {:?} already exists.",
                    self.node_name
                )));
            }
            remove_node(d, &existing, true)?;
        }
        if let Some(region) = non_empty(&self.region) {
            let existing = d
                .state()
                .node_by_address_region(&self.address, &region)
                .map(|n| n.node_id.clone());
            if let Some(existing) = existing {
                if !self.reregister {
                    return Err(Rejection::already_exists(format!(
                        "Node with instance {:?} and region {:?} already exists.",
                        self.address, region
                    )));
                }
                remove_node(d, &existing, true)?;
            }
        }
        let node = AddNode {
            node_type: self.node_type,
            node_name: self.node_name.clone(),
            address: self.address.clone(),
            machine_id: self.machine_id.clone(),
            distro: self.distro.clone(),
            node_model: self.node_model.clone(),
            region: self.region.clone(),
            az: self.az.clone(),
            custom_labels: self.custom_labels.clone(),
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            instance_id: self.instance_id.clone(),
        };
        let node_id = NodeId::from(d.new_id());
        create_node(d, &node, node_id.clone(), false)?;
        let mut pmm_agent = AddAgent::new(AgentType::PmmAgent);
        pmm_agent.runs_on_node_id = Some(node_id);
        let pmm_agent_id = create_agent(d, &pmm_agent, CreateOpts::INVENTORY)?;
        let mut exporter = AddAgent::new(AgentType::NodeExporter);
        exporter.pmm_agent_id = Some(pmm_agent_id.clone());
        exporter.push_metrics = self.metrics_mode.is_push();
        exporter.expose_exporter = self.expose_exporter;
        exporter.disable_collectors = self.disable_collectors.clone();
        exporter.agent_password = self.agent_password.clone();
        // RegisterNode leaves node_exporter's log level unset (NULL) in PMM.
        let opts = CreateOpts {
            default_log_level: false,
            ..CreateOpts::INVENTORY
        };
        create_agent(d, &exporter, opts)?;
        if let Some(hash) = &self.agent_token_hash {
            issue_agent_token(d, &pmm_agent_id, hash)?;
        }
        Ok(())
    }
}

/// Records a pmm-agent's token (its hash) bound to that pmm-agent.
fn issue_agent_token(d: &mut Decision<'_>, agent: &AgentId, hash: &str) -> Result<(), Rejection> {
    CreateToken {
        name: format!("pmm-agent/{agent}"),
        role: Role::Agent,
        hash: hash.to_owned(),
        agent_id: Some(agent.clone()),
    }
    .decide(d)
    .map(drop)
}
