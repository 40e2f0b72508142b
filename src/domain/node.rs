//! Nodes: hosts, containers and remote endpoints that services run on.

use super::{Labels, NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// PMM's node types; serialized as PMM's model strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    Generic,
    Container,
    Remote,
    RemoteRds,
    RemoteAzureDatabase,
}

impl NodeType {
    pub const ALL: [NodeType; 5] = [
        NodeType::Generic,
        NodeType::Container,
        NodeType::Remote,
        NodeType::RemoteRds,
        NodeType::RemoteAzureDatabase,
    ];

    /// PMM's model value (`nodes.node_type`, the `node_type` label).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Generic => "generic",
            NodeType::Container => "container",
            NodeType::Remote => "remote",
            NodeType::RemoteRds => "remote_rds",
            NodeType::RemoteAzureDatabase => "remote_azure_database",
        }
    }

    /// Remote nodes never run a pmm-agent's children on themselves.
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            NodeType::Remote | NodeType::RemoteRds | NodeType::RemoteAzureDatabase
        )
    }
}

/// A node as stored: every field PMM keeps, with `None` where PMM stores NULL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub node_id: NodeId,
    pub node_type: NodeType,
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub distro: String,
    #[serde(default)]
    pub node_model: String,
    #[serde(default)]
    pub az: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub custom_labels: Labels,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// AWS instance id for RDS nodes; PMM defaults it to the address.
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub is_pmm_server_node: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
