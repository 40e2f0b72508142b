//! Management RemoveService: by id or by name, optionally checking the type; always cascades,
//! and removes a remote_rds / remote_azure_database node with its last service.

use super::services::remove_service;
use super::{Decision, Rejection};
use crate::domain::ids::looks_like_id;
use crate::domain::{ServiceId, ServiceType};

/// Management RemoveService's request: `service_id` holds an id or a name (PMM treats it as an
/// id when it ends with a UUID).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RemoveManagedService {
    pub service_id_or_name: String,
    pub service_type: Option<ServiceType>,
}

impl RemoveManagedService {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let key = &self.service_id_or_name;
        if key.is_empty() {
            return Err(Rejection::invalid("service_id or service_name expected"));
        }
        let service = if looks_like_id(key) {
            d.state()
                .services
                .get(&ServiceId::from(key.as_str()))
                .ok_or_else(|| Rejection::service_not_found(key))?
        } else {
            d.state().service_by_name(key).ok_or_else(|| {
                Rejection::not_found(format!("Service with name {key:?} not found."))
            })?
        };
        if self.service_type.is_some_and(|t| t != service.service_type) {
            return Err(Rejection::invalid("wrong service type"));
        }
        let id = service.service_id.clone();
        remove_service(d, &id, true, true)
    }
}
