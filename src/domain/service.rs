//! Services: databases and other monitored things, each on exactly one node.

use super::{Labels, NodeId, ServiceId, Timestamp};
use serde::{Deserialize, Serialize};

/// PMM's service types; serialized as PMM's model strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    Mysql,
    Mongodb,
    Postgresql,
    Proxysql,
    External,
    Haproxy,
    Valkey,
}

impl ServiceType {
    pub const ALL: [ServiceType; 7] = [
        ServiceType::Mysql,
        ServiceType::Mongodb,
        ServiceType::Postgresql,
        ServiceType::Proxysql,
        ServiceType::External,
        ServiceType::Haproxy,
        ServiceType::Valkey,
    ];

    /// PMM's model value (`services.service_type`, the `service_type` label).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Mysql => "mysql",
            ServiceType::Mongodb => "mongodb",
            ServiceType::Postgresql => "postgresql",
            ServiceType::Proxysql => "proxysql",
            ServiceType::External => "external",
            ServiceType::Haproxy => "haproxy",
            ServiceType::Valkey => "valkey",
        }
    }

    /// Database services connect by address+port or socket; haproxy and external do not.
    pub fn has_connection(self) -> bool {
        !matches!(self, ServiceType::External | ServiceType::Haproxy)
    }
}

/// A service as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub service_id: ServiceId,
    pub service_type: ServiceType,
    pub service_name: String,
    pub node_id: NodeId,
    /// "" except for postgresql (default `postgres`) and valkey.
    #[serde(default)]
    pub database_name: String,
    #[serde(default)]
    pub environment: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub replication_set: String,
    /// Non-empty if and only if the service is `external`.
    #[serde(default)]
    pub external_group: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub custom_labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Detected database version (an observation, filled by probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
