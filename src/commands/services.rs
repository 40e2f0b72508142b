//! Inventory AddService, ChangeService and RemoveService, and the service rules the management
//! flows reuse: unique names, the address/port/socket rules, the external_group rule, the
//! postgres database default, restrict vs cascade removal and the RDS/Azure node clean-up.

use super::agents::remove_agent;
use super::nodes::remove_node;
use super::{Decision, Rejection, non_empty};
use crate::domain::labels::{self, Labels};
use crate::domain::limits::{MAX_NAME_LEN, MAX_TEXT_LEN, bounded, bounded_opt, required};
use crate::domain::{NodeId, NodeType, Service, ServiceId, ServiceType};
use crate::events::Event;

/// Inventory AddService, and the service part of the management add flows.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddService {
    pub service_type: Option<ServiceType>,
    pub service_name: String,
    pub node_id: NodeId,
    pub address: Option<String>,
    /// Kept wide so an out-of-range port is a clear rejection, not a decode error.
    pub port: Option<u32>,
    pub socket: Option<String>,
    pub environment: String,
    pub cluster: String,
    pub replication_set: String,
    pub custom_labels: Labels,
    /// postgresql (default `postgres`) and valkey only.
    pub database_name: String,
    /// external only; empty means `external`.
    pub external_group: String,
}

impl AddService {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<ServiceId, Rejection> {
        let id = ServiceId::from(d.new_id());
        create_service(d, self, id)
    }
}

/// Validates a port: absent or 0 means "not set", otherwise 1..65535.
pub(crate) fn port(p: Option<u32>) -> Result<Option<u16>, Rejection> {
    match p {
        None | Some(0) => Ok(None),
        Some(p) => u16::try_from(p)
            .map(Some)
            .map_err(|_| Rejection::invalid(format!("port: {p} is out of range 1..65535."))),
    }
}

/// PMM's validateDBConnectionOptions, in PMM's order.
fn validate_connection(
    address: &Option<String>,
    port: Option<u16>,
    socket: &Option<String>,
) -> Result<(), Rejection> {
    match (address, socket) {
        (None, None) => return Err(Rejection::invalid("Neither socket nor address passed.")),
        (Some(_), Some(_)) => {
            return Err(Rejection::invalid(
                "Socket and address cannot be specified together.",
            ));
        }
        (Some(_), None) if port.is_none() => {
            return Err(Rejection::invalid(
                "Port are expected to be passed with address.",
            ));
        }
        _ => {}
    }
    if socket.is_some() && port.is_some() {
        return Err(Rejection::invalid(
            "Socket and port cannot be specified together.",
        ));
    }
    Ok(())
}

/// PMM's AddNewService: validates and emits `ServiceAdded`.
pub(crate) fn create_service(
    d: &mut Decision<'_>,
    p: &AddService,
    id: ServiceId,
) -> Result<ServiceId, Rejection> {
    let service_type = p
        .service_type
        .ok_or_else(|| Rejection::invalid("Unknown service type."))?;
    required("service_name", &p.service_name, MAX_NAME_LEN)?;
    required("node_id", &p.node_id.0, MAX_TEXT_LEN)?;
    for (field, v) in [
        ("environment", &p.environment),
        ("cluster", &p.cluster),
        ("replication_set", &p.replication_set),
        ("database_name", &p.database_name),
        ("external_group", &p.external_group),
    ] {
        bounded(field, v, MAX_TEXT_LEN)?;
    }
    bounded_opt("address", p.address.as_deref(), 255)?;
    bounded_opt("socket", p.socket.as_deref(), MAX_TEXT_LEN)?;
    labels::validate(&p.custom_labels)?;
    let (address, socket, port) = (non_empty(&p.address), non_empty(&p.socket), port(p.port)?);
    let mut external_group = p.external_group.clone();
    match service_type {
        ServiceType::External | ServiceType::Haproxy => {
            if address.is_some() || socket.is_some() || port.is_some() {
                return Err(Rejection::invalid(format!(
                    "address, port and socket can't be set for {} services.",
                    service_type.as_str()
                )));
            }
            if service_type == ServiceType::External && external_group.is_empty() {
                external_group = "external".to_owned();
            }
        }
        _ => validate_connection(&address, port, &socket)?,
    }
    if service_type != ServiceType::External && !external_group.is_empty() {
        return Err(Rejection::invalid(format!(
            "external_group: can't be set for {} services.",
            service_type.as_str()
        )));
    }
    if d.state().services.contains_key(&id) {
        return Err(Rejection::already_exists(format!(
            "Service with ID {:?} already exists.",
            id.0
        )));
    }
    if d.state().service_by_name(&p.service_name).is_some() {
        return Err(Rejection::already_exists(format!(
            "Service with name {:?} already exists.",
            p.service_name
        )));
    }
    if !d.state().nodes.contains_key(&p.node_id) {
        return Err(Rejection::node_not_found(&p.node_id));
    }
    let database_name = match service_type {
        ServiceType::Postgresql if p.database_name.is_empty() => "postgres".to_owned(),
        ServiceType::Postgresql | ServiceType::Valkey => p.database_name.clone(),
        _ => String::new(),
    };
    let now = d.now();
    d.emit(Event::ServiceAdded {
        service: Service {
            service_id: id.clone(),
            service_type,
            service_name: p.service_name.clone(),
            node_id: p.node_id.clone(),
            database_name,
            environment: p.environment.clone(),
            cluster: p.cluster.clone(),
            replication_set: p.replication_set.clone(),
            external_group,
            custom_labels: p.custom_labels.clone(),
            address,
            port,
            socket,
            version: None,
            created_at: now,
            updated_at: now,
        },
    });
    Ok(id)
}

/// Inventory ChangeService: only the standard labels and custom labels change. Absent fields
/// keep their value; present ones (even empty) replace it; `custom_labels` replaces the map.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ChangeService {
    pub service_id: ServiceId,
    pub environment: Option<String>,
    pub cluster: Option<String>,
    pub replication_set: Option<String>,
    pub external_group: Option<String>,
    pub custom_labels: Option<Labels>,
}

impl ChangeService {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let current = d
            .state()
            .services
            .get(&self.service_id)
            .ok_or_else(|| Rejection::service_not_found(&self.service_id))?;
        let mut s = (**current).clone();
        for (field, v) in [
            ("environment", &self.environment),
            ("cluster", &self.cluster),
            ("replication_set", &self.replication_set),
            ("external_group", &self.external_group),
        ] {
            bounded_opt(field, v.as_deref(), MAX_TEXT_LEN)?;
        }
        if let Some(l) = &self.custom_labels {
            labels::validate(l)?;
            s.custom_labels = l.clone();
        }
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v)
            }
        };
        set(&mut s.environment, &self.environment);
        set(&mut s.cluster, &self.cluster);
        set(&mut s.replication_set, &self.replication_set);
        set(&mut s.external_group, &self.external_group);
        if (s.service_type == ServiceType::External) == s.external_group.is_empty() {
            return Err(Rejection::invalid(
                if s.service_type == ServiceType::External {
                    "external_group: must not be empty for external services.".to_owned()
                } else {
                    format!(
                        "external_group: can't be set for {} services.",
                        s.service_type.as_str()
                    )
                },
            ));
        }
        if s == **current {
            return Ok(());
        }
        s.updated_at = d.now();
        d.emit(Event::ServiceChanged { service: s });
        Ok(())
    }
}

/// Inventory RemoveService.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RemoveService {
    pub service_id: ServiceId,
    pub force: bool,
}

impl RemoveService {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        // PMM's inventory API cleans up RDS/Azure nodes only on a forced removal.
        remove_service(d, &self.service_id, self.force, self.force)
    }
}

/// PMM's RemoveService: restrict fails if the service has agents; cascade removes them first.
/// With `remote_cleanup`, a remote_rds / remote_azure_database node left with no service is
/// removed with its agents (PMM removes such nodes with their last service).
pub(crate) fn remove_service(
    d: &mut Decision<'_>,
    id: &ServiceId,
    force: bool,
    remote_cleanup: bool,
) -> Result<(), Rejection> {
    let service = d
        .state()
        .services
        .get(id)
        .cloned()
        .ok_or_else(|| Rejection::service_not_found(id))?;
    let agents = d.state().agents_of_service(id);
    if !agents.is_empty() {
        if !force {
            return Err(Rejection::failed_precondition(format!(
                "Service with ID {:?} has agents.",
                id.0
            )));
        }
        for a in agents {
            if d.state().agents.contains_key(&a) {
                remove_agent(d, &a, true)?;
            }
        }
    }
    d.emit(Event::ServiceRemoved {
        service_id: id.clone(),
    });
    let node = d.state().nodes.get(&service.node_id).cloned();
    if let Some(node) = node.filter(|_| remote_cleanup) {
        let remote_db = matches!(
            node.node_type,
            NodeType::RemoteRds | NodeType::RemoteAzureDatabase
        );
        if remote_db && d.state().services_on_node(&node.node_id).is_empty() {
            remove_node(d, &node.node_id, true)?;
        }
    }
    Ok(())
}
