//! Commands: what callers ask for, and `decide`, the pure function that turns a command and the
//! current [`State`] into events or a [`Rejection`].
//!
//! One file per command family, each holding its command types, its rules and their tests:
//! - `nodes.rs`: inventory AddNode / RemoveNode (restrict vs cascade)
//! - `services.rs`: inventory AddService / ChangeService / RemoveService
//! - `agents.rs`: inventory AddAgent / ChangeAgent / RemoveAgent, every agent type
//! - `register_node.rs`: management RegisterNode (node + pmm-agent + node_exporter)
//! - `add_service.rs`: management AddService for every service type, RDS and Azure
//! - `remove_service.rs`: management RemoveService by id or name
//! - `settings.rs`: ChangeSettings, with PMM's ranges and environment pins
//! - `alerting.rs`: alert rule templates and the alert rules made from them
//! - `agent_reports.rs`: what pmm-agents report over their streams (connections, states)
//! - `bootstrap.rs`: the PMM Server's own node, pmm-agent and node_exporter
//! - `dispatcher.rs`: the single entry point, `dispatch`, with group commit
//!
//! `decide` does no I/O and reads no clock or randomness: new ids and the time come from
//! [`Ctx`], chosen by the dispatcher (the leader) before it decides.

pub mod add_service;
pub mod agent_reports;
pub mod agents;
pub mod alerting;
pub mod bootstrap;
pub mod dispatcher;
pub mod error;
pub mod nodes;
pub mod register_node;
pub mod remove_service;
pub mod services;
pub mod settings;
pub mod tokens;

pub use error::{CommandError, ErrorClass, Rejection};

use crate::domain::settings::EnvSettings;
use crate::domain::{State, Timestamp};
use crate::events::Event;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Every command the control plane accepts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Command {
    AddNode(nodes::AddNode),
    RemoveNode(nodes::RemoveNode),
    AddService(services::AddService),
    ChangeService(services::ChangeService),
    RemoveService(services::RemoveService),
    AddAgent(agents::AddAgent),
    ChangeAgent(agents::ChangeAgent),
    RemoveAgent(agents::RemoveAgent),
    RegisterNode(register_node::RegisterNode),
    AddManagedService(add_service::AddManagedService),
    AddRdsService(add_service::AddRdsService),
    AddAzureDatabase(add_service::AddAzureDatabase),
    RemoveManagedService(remove_service::RemoveManagedService),
    ChangeSettings(settings::ChangeSettings),
    BootstrapServer(bootstrap::BootstrapServer),
    CreateToken(tokens::CreateToken),
    RevokeToken(tokens::RevokeToken),
    CreateAlertTemplate(alerting::CreateTemplate),
    UpdateAlertTemplate(alerting::UpdateTemplate),
    DeleteAlertTemplate(alerting::DeleteTemplate),
    CreateAlertRule(alerting::CreateRule),
    ChangeAlertRule(alerting::ChangeRule),
    DeleteAlertRule(alerting::DeleteRule),
    ReportAgents(agent_reports::ReportAgents),
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::AddNode(_) => "AddNode",
            Command::RemoveNode(_) => "RemoveNode",
            Command::AddService(_) => "AddService",
            Command::ChangeService(_) => "ChangeService",
            Command::RemoveService(_) => "RemoveService",
            Command::AddAgent(_) => "AddAgent",
            Command::ChangeAgent(_) => "ChangeAgent",
            Command::RemoveAgent(_) => "RemoveAgent",
            Command::RegisterNode(_) => "RegisterNode",
            Command::AddManagedService(_) => "AddManagedService",
            Command::AddRdsService(_) => "AddRdsService",
            Command::AddAzureDatabase(_) => "AddAzureDatabase",
            Command::RemoveManagedService(_) => "RemoveManagedService",
            Command::ChangeSettings(_) => "ChangeSettings",
            Command::BootstrapServer(_) => "BootstrapServer",
            Command::CreateToken(_) => "CreateToken",
            Command::RevokeToken(_) => "RevokeToken",
            Command::CreateAlertTemplate(_) => "CreateAlertTemplate",
            Command::UpdateAlertTemplate(_) => "UpdateAlertTemplate",
            Command::DeleteAlertTemplate(_) => "DeleteAlertTemplate",
            Command::CreateAlertRule(_) => "CreateAlertRule",
            Command::ChangeAlertRule(_) => "ChangeAlertRule",
            Command::DeleteAlertRule(_) => "DeleteAlertRule",
            Command::ReportAgents(_) => "ReportAgents",
        }
    }
}

/// Who sent a command and how to recognise a repeat of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMeta {
    /// Client-supplied or generated; a repeat returns the first result and appends nothing.
    pub command_id: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
}

impl CommandMeta {
    /// Meta with a generated command id.
    pub fn new(actor: impl Into<String>) -> Self {
        Self::with_id(uuid::Uuid::new_v4().to_string(), actor)
    }
    /// Meta with a client-supplied command id.
    pub fn with_id(command_id: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            command_id: command_id.into(),
            actor: actor.into(),
            correlation_id: None,
            causation_id: None,
        }
    }
}

/// Inputs `decide` may not produce itself: the time, a seed for new ids, and the settings
/// pinned by environment variables on the deciding node.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub now: Timestamp,
    pub seed: [u8; 16],
    pub env: Arc<EnvSettings>,
}

impl Ctx {
    /// A context with a fixed time and seed (tests and replays).
    pub fn fixed(now: Timestamp, seed: u128) -> Self {
        Self {
            now,
            seed: seed.to_be_bytes(),
            env: Arc::default(),
        }
    }
}

/// A decision in progress: a private copy of the state that every emitted event is folded
/// into, so cascades and multi-entity commands see their own earlier effects.
pub struct Decision<'a> {
    state: State,
    events: Vec<Event>,
    ctx: &'a Ctx,
    ids_issued: u32,
}

impl<'a> Decision<'a> {
    pub fn new(state: &State, ctx: &'a Ctx) -> Self {
        Self {
            state: state.clone(),
            events: Vec::new(),
            ctx,
            ids_issued: 0,
        }
    }
    /// The state with every event emitted so far.
    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn ctx(&self) -> &Ctx {
        self.ctx
    }
    pub fn now(&self) -> Timestamp {
        self.ctx.now
    }
    /// Records an event and folds it into the working state.
    pub fn emit(&mut self, event: Event) {
        self.state.evolve(&event);
        self.events.push(event);
    }
    /// A new UUID v4, derived from the context's seed: same context, same ids.
    pub fn new_id(&mut self) -> uuid::Uuid {
        let mut h = Sha256::new();
        h.update(self.ctx.seed);
        h.update(self.ids_issued.to_be_bytes());
        self.ids_issued += 1;
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Decides one command against `state`: the events it causes, or why it is rejected.
pub fn decide(state: &State, cmd: &Command, ctx: &Ctx) -> Result<Vec<Event>, Rejection> {
    decide_and_evolve(state, cmd, ctx).map(|(events, _)| events)
}

/// [`decide`], also returning `state` with the events folded in (the writer's next base),
/// so the batch does not fold them a second time.
pub fn decide_and_evolve(
    state: &State,
    cmd: &Command,
    ctx: &Ctx,
) -> Result<(Vec<Event>, State), Rejection> {
    let mut d = Decision::new(state, ctx);
    match cmd {
        Command::AddNode(c) => c.decide(&mut d).map(drop),
        Command::RemoveNode(c) => c.decide(&mut d),
        Command::AddService(c) => c.decide(&mut d).map(drop),
        Command::ChangeService(c) => c.decide(&mut d),
        Command::RemoveService(c) => c.decide(&mut d),
        Command::AddAgent(c) => c.decide(&mut d).map(drop),
        Command::ChangeAgent(c) => c.decide(&mut d),
        Command::RemoveAgent(c) => c.decide(&mut d),
        Command::RegisterNode(c) => c.decide(&mut d),
        Command::AddManagedService(c) => c.decide(&mut d),
        Command::AddRdsService(c) => c.decide(&mut d),
        Command::AddAzureDatabase(c) => c.decide(&mut d),
        Command::RemoveManagedService(c) => c.decide(&mut d),
        Command::ChangeSettings(c) => c.decide(&mut d),
        Command::BootstrapServer(c) => c.decide(&mut d),
        Command::CreateToken(c) => c.decide(&mut d).map(drop),
        Command::RevokeToken(c) => c.decide(&mut d),
        Command::CreateAlertTemplate(c) => c.decide(&mut d),
        Command::UpdateAlertTemplate(c) => c.decide(&mut d),
        Command::DeleteAlertTemplate(c) => c.decide(&mut d),
        Command::CreateAlertRule(c) => c.decide(&mut d).map(drop),
        Command::ChangeAlertRule(c) => c.decide(&mut d),
        Command::DeleteAlertRule(c) => c.decide(&mut d),
        Command::ReportAgents(c) => c.decide(&mut d),
    }?;
    Ok((d.events, d.state))
}

/// Turns empty strings into `None`: PMM's management layer treats "" as absent.
pub(crate) fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.is_empty()).cloned()
}
