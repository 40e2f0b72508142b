//! Inventory AddNode and RemoveNode, and the node rules every other command reuses:
//! unique names, unique container ids, (address, region) uniqueness, the RDS
//! instance-identifier rule, the protected `pmm-server` node, restrict vs cascade removal.

use super::agents::remove_agent;
use super::services::remove_service;
use super::{Decision, Rejection, non_empty};
use crate::domain::labels::{self, Labels};
use crate::domain::limits::{MAX_NAME_LEN, MAX_TEXT_LEN, bounded, bounded_opt, required};
use crate::domain::{Node, NodeId, NodeType};
use crate::events::Event;

/// Inventory AddNode, and the node part of RegisterNode and the management add flows.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddNode {
    pub node_type: Option<NodeType>,
    pub node_name: String,
    pub address: String,
    pub machine_id: Option<String>,
    pub distro: String,
    pub node_model: String,
    pub region: Option<String>,
    pub az: String,
    pub custom_labels: Labels,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub instance_id: String,
}

impl AddNode {
    /// Creates the node; returns its id.
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<NodeId, Rejection> {
        // Every inventory Add*NodeParams requires an address (min_len 1); RegisterNode and the
        // bootstrap go through `create_node` directly and do not.
        required("address", &self.address, MAX_TEXT_LEN)?;
        let id = NodeId::from(d.new_id());
        create_node(d, self, id, false)
    }
}

/// PMM's CreateNode: validates and emits `NodeAdded` with the given id.
pub(crate) fn create_node(
    d: &mut Decision<'_>,
    p: &AddNode,
    node_id: NodeId,
    is_pmm_server_node: bool,
) -> Result<NodeId, Rejection> {
    let node_type = p
        .node_type
        .ok_or_else(|| Rejection::invalid("Unsupported Node type."))?;
    required("node_name", &p.node_name, MAX_NAME_LEN)?;
    bounded("address", &p.address, MAX_TEXT_LEN)?;
    for (field, v) in [
        ("distro", &p.distro),
        ("node_model", &p.node_model),
        ("az", &p.az),
        ("instance_id", &p.instance_id),
    ] {
        bounded(field, v, MAX_TEXT_LEN)?;
    }
    for (field, v) in [
        ("machine_id", &p.machine_id),
        ("region", &p.region),
        ("container_id", &p.container_id),
        ("container_name", &p.container_name),
    ] {
        bounded_opt(field, v.as_deref(), MAX_TEXT_LEN)?;
    }
    labels::validate(&p.custom_labels)?;
    let region = non_empty(&p.region);
    if matches!(
        node_type,
        NodeType::RemoteRds | NodeType::RemoteAzureDatabase
    ) && region.is_none()
    {
        return Err(Rejection::invalid("region: value must not be empty."));
    }
    let state = d.state();
    if state.nodes.contains_key(&node_id) {
        return Err(Rejection::already_exists(format!(
            "Node with ID {:?} already exists.",
            node_id.0
        )));
    }
    if state.node_by_name(&p.node_name).is_some() {
        return Err(Rejection::already_exists(format!(
            "Node with name {:?} already exists.",
            p.node_name
        )));
    }
    if node_type == NodeType::RemoteRds && p.address.contains('.') {
        return Err(Rejection::invalid(
            "DB instance identifier should not contain dot.",
        ));
    }
    if let Some(region) = &region {
        if p.address.is_empty() {
            return Err(Rejection::invalid("Empty Node instance."));
        }
        if state.node_by_address_region(&p.address, region).is_some() {
            return Err(Rejection::already_exists(format!(
                "Node with instance {:?} and region {:?} already exists.",
                p.address, region
            )));
        }
    }
    let container_id = non_empty(&p.container_id);
    if let Some(c) = &container_id
        && state.node_by_container_id(c).is_some()
    {
        return Err(Rejection::already_exists(format!(
            "Node with container ID {c:?} already exists."
        )));
    }
    let machine_id = p
        .machine_id
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    let now = d.now();
    let instance_id = if p.instance_id.is_empty() {
        p.address.clone()
    } else {
        p.instance_id.clone()
    };
    d.emit(Event::NodeAdded {
        node: Node {
            node_id: node_id.clone(),
            node_type,
            node_name: p.node_name.clone(),
            machine_id,
            distro: p.distro.clone(),
            node_model: p.node_model.clone(),
            az: p.az.clone(),
            custom_labels: p.custom_labels.clone(),
            address: p.address.clone(),
            region,
            container_id,
            container_name: non_empty(&p.container_name),
            instance_id,
            is_pmm_server_node,
            created_at: now,
            updated_at: now,
        },
    });
    Ok(node_id)
}

/// Inventory RemoveNode (and management UnregisterNode).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RemoveNode {
    pub node_id: NodeId,
    /// Cascade (`true`) or restrict (`false`).
    pub force: bool,
}

impl RemoveNode {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        remove_node(d, &self.node_id, self.force)
    }
}

/// PMM's RemoveNode: checks and cascades in PMM's order (agents on the node, pmm-agents and
/// pull exporters running on it, services), then removes the node.
pub(crate) fn remove_node(d: &mut Decision<'_>, id: &NodeId, force: bool) -> Result<(), Rejection> {
    if !d.state().nodes.contains_key(id) {
        return Err(Rejection::node_not_found(id));
    }
    if id.is_pmm_server() {
        return Err(Rejection::permission_denied(
            "PMM Server node can't be removed.",
        ));
    }
    let agents = d.state().agents_with_node(id);
    if !agents.is_empty() {
        if !force {
            return Err(Rejection::failed_precondition(format!(
                "Node with ID {:?} has agents.",
                id.0
            )));
        }
        for a in agents {
            if d.state().agents.contains_key(&a) {
                remove_agent(d, &a, true)?;
            }
        }
    }
    let running = d.state().agents_running_on_node(id);
    if !running.is_empty() {
        if !force {
            return Err(Rejection::failed_precondition(format!(
                "Node with ID {:?} has pmm-agent.",
                id.0
            )));
        }
        for a in running {
            if d.state().agents.contains_key(&a) {
                remove_agent(d, &a, true)?;
            }
        }
    }
    let services = d.state().services_on_node(id);
    if !services.is_empty() {
        if !force {
            return Err(Rejection::failed_precondition(format!(
                "Node with ID {:?} has services.",
                id.0
            )));
        }
        for s in services {
            remove_service(d, &s, true, false)?;
        }
    }
    d.emit(Event::NodeRemoved {
        node_id: id.clone(),
    });
    Ok(())
}
