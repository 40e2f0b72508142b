//! Every RPC of the public API, once: JSON in (the request as its generated type serialises
//! it), JSON out (what the response type deserialises). The gRPC services and the REST gateway
//! both call these, so the two transports cannot drift apart.

use super::requests::{self as req, P};
use super::views::{self, View};
use super::{Api, Caller, Reply};
use crate::commands::Command;
use crate::domain::{AgentType, State};
use crate::events::Event;
use serde_json::{Value, json};
use tonic::Status;

type R = Result<Reply, Status>;

fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!("{what} with ID {id:?} not found."))
}

pub(super) fn required(p: &P<'_>, k: &str) -> Result<String, Status> {
    p.nonempty(k).ok_or_else(|| {
        Status::invalid_argument(format!(
            "invalid field {k}: value '' must not be an empty string"
        ))
    })
}

/// The entities a command created or changed, as views; entities it only names (a change that
/// changed nothing) are looked up in the state.
fn views_of(events: &[Event]) -> Vec<View> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::NodeAdded { node } => Some(views::node(node)),
            Event::ServiceAdded { service } | Event::ServiceChanged { service } => {
                Some(views::service(service))
            }
            Event::AgentAdded { agent } | Event::AgentChanged { agent } => {
                Some(views::agent(agent))
            }
            _ => None,
        })
        .collect()
}

// ---- inventory.v1.NodesService ----

pub async fn list_nodes(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let filter = p
        .enum_name("node_type")
        .and_then(views::node_type_from_enum);
    let all: Vec<View> = state
        .nodes
        .values()
        .filter(|n| filter.is_none_or(|t| n.node_type == t))
        .map(|n| views::node(n))
        .collect();
    Ok(Reply::read(
        &state,
        views::assemble("inventory.v1.ListNodesResponse", &all),
    ))
}

pub async fn get_node(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "node_id")?;
    let node = state
        .nodes
        .get(&id.as_str().into())
        .ok_or_else(|| not_found("Node", &id))?;
    Ok(Reply::read(
        &state,
        views::assemble("inventory.v1.GetNodeResponse", &[views::node(node)]),
    ))
}

pub async fn add_node(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = req::add_node(P::new(&body, &api.cipher))?;
    let done = api.run(c, cmd).await?;
    Ok(done.reply(views::assemble(
        "inventory.v1.AddNodeResponse",
        &views_of(&done.events),
    )))
}

pub async fn remove_node(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    required(&p, "node_id")?;
    let done = api.run_quiet(c, req::remove_node(p)).await?;
    Ok(done.reply(json!({})))
}

// ---- inventory.v1.ServicesService ----

pub async fn list_services(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let all = filtered_services(&state, &P::new(&body, &api.cipher))
        .into_iter()
        .map(views::service)
        .collect::<Vec<_>>();
    Ok(Reply::read(
        &state,
        views::assemble("inventory.v1.ListServicesResponse", &all),
    ))
}

/// PMM's service filters, AND-ed; an empty one does not filter.
fn filtered_services<'s>(state: &'s State, p: &P<'_>) -> Vec<&'s crate::domain::Service> {
    let node = p.nonempty("node_id");
    let kind = p
        .enum_name("service_type")
        .and_then(views::service_type_from_enum);
    let group = p.nonempty("external_group");
    let candidates: Box<dyn Iterator<Item = &'s crate::domain::Service>> = match &node {
        Some(n) => Box::new(
            state
                .services_on_node(&n.as_str().into())
                .into_iter()
                .filter_map(|id| state.services.get(&id).map(|s| &**s))
                .collect::<Vec<_>>()
                .into_iter(),
        ),
        None => Box::new(state.services.values().map(|s| &**s)),
    };
    candidates
        .filter(|s| kind.is_none_or(|k| s.service_type == k))
        .filter(|s| group.as_ref().is_none_or(|g| &s.external_group == g))
        .collect()
}

pub async fn list_active_service_types(api: &Api, _c: &Caller, _body: Value) -> R {
    let state = api.state();
    let mut types: Vec<_> = state.services.values().map(|s| s.service_type).collect();
    types.sort_by_key(|t| views::service_type_enum(*t));
    types.dedup();
    let names: Vec<&str> = types.into_iter().map(views::service_type_enum).collect();
    Ok(Reply::read(&state, json!({ "service_types": names })))
}

pub async fn get_service(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "service_id")?;
    let s = state
        .services
        .get(&id.as_str().into())
        .ok_or_else(|| not_found("Service", &id))?;
    Ok(Reply::read(
        &state,
        views::assemble("inventory.v1.GetServiceResponse", &[views::service(s)]),
    ))
}

pub async fn add_service(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = req::add_service(P::new(&body, &api.cipher))?;
    let done = api.run(c, cmd).await?;
    Ok(done.reply(views::assemble(
        "inventory.v1.AddServiceResponse",
        &views_of(&done.events),
    )))
}

pub async fn change_service(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "service_id")?;
    let done = api.run(c, req::change_service(p)).await?;
    let mut shown = views_of(&done.events);
    if shown.is_empty() {
        let s = done
            .state
            .services
            .get(&id.as_str().into())
            .ok_or_else(|| not_found("Service", &id))?;
        shown.push(views::service(s));
    }
    Ok(done.reply(views::assemble(
        "inventory.v1.ChangeServiceResponse",
        &shown,
    )))
}

pub async fn remove_service(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    required(&p, "service_id")?;
    let done = api.run_quiet(c, req::remove_service(p)).await?;
    Ok(done.reply(json!({})))
}

// ---- inventory.v1.AgentsService ----

pub async fn list_agents(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let given: Vec<(&str, String)> = ["pmm_agent_id", "node_id", "service_id"]
        .into_iter()
        .filter_map(|k| p.nonempty(k).map(|v| (k, v)))
        .collect();
    if given.len() > 1 {
        return Err(Status::invalid_argument(
            "expected at most one param: pmm_agent_id, node_id or service_id",
        ));
    }
    let ids = match given.first() {
        None => state.agents.keys().cloned().collect(),
        Some(("pmm_agent_id", id)) => {
            let id = id.as_str().into();
            if state
                .agents
                .get(&id)
                .is_none_or(|a| a.agent_type != AgentType::PmmAgent)
            {
                return Err(not_found("Agent", id.as_str()));
            }
            state.children_of(&id)
        }
        Some(("node_id", id)) => {
            let id = id.as_str().into();
            if !state.nodes.contains_key(&id) {
                return Err(not_found("Node", id.as_str()));
            }
            state.agents_with_node(&id)
        }
        Some((_, id)) => {
            let id = id.as_str().into();
            if !state.services.contains_key(&id) {
                return Err(not_found("Service", id.as_str()));
            }
            state.agents_of_service(&id)
        }
    };
    let kind = p
        .enum_name("agent_type")
        .and_then(views::agent_type_from_enum);
    let mut ids: Vec<_> = ids;
    ids.sort();
    let all: Vec<View> = ids
        .iter()
        .filter_map(|id| state.agents.get(id))
        .filter(|a| kind.is_none_or(|k| a.agent_type == k))
        .map(|a| views::agent(a))
        .collect();
    Ok(Reply::read(
        &state,
        views::assemble("inventory.v1.ListAgentsResponse", &all),
    ))
}

pub async fn get_agent(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "agent_id")?;
    let a = state
        .agents
        .get(&id.as_str().into())
        .ok_or_else(|| not_found("Agent", &id))?;
    Ok(Reply::read(
        &state,
        views::assemble("inventory.v1.GetAgentResponse", &[views::agent(a)]),
    ))
}

/// Logs live on the pmm-agent; this control plane keeps none, so the list is empty.
pub async fn get_agent_logs(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "agent_id")?;
    state
        .agents
        .get(&id.as_str().into())
        .ok_or_else(|| not_found("Agent", &id))?;
    Ok(Reply::read(&state, json!({})))
}

pub async fn add_agent(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = req::add_agent(P::new(&body, &api.cipher))?;
    let done = api.run(c, cmd).await?;
    Ok(done.reply(views::assemble(
        "inventory.v1.AddAgentResponse",
        &views_of(&done.events),
    )))
}

pub async fn change_agent(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "agent_id")?;
    let done = api.run(c, req::change_agent(p)?).await?;
    let mut shown = views_of(&done.events);
    if shown.is_empty() {
        let a = done
            .state
            .agents
            .get(&id.as_str().into())
            .ok_or_else(|| not_found("Agent", &id))?;
        shown.push(views::agent(a));
    }
    Ok(done.reply(views::assemble("inventory.v1.ChangeAgentResponse", &shown)))
}

pub async fn remove_agent(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    required(&p, "agent_id")?;
    let done = api.run_quiet(c, req::remove_agent(p)).await?;
    Ok(done.reply(json!({})))
}

// ---- management.v1.ManagementService ----

pub async fn register_node(api: &Api, c: &Caller, body: Value) -> R {
    let meta = api.meta(c)?;
    // The pmm-agent's token: made here, answered once, recorded only as its hash.
    let token = api.cipher.agent_token_secret(&meta.command_id, &meta.actor);
    let hash = crate::domain::token::token_hash(&token);
    let mut cmd = req::register_node(P::new(&body, &api.cipher));
    if let Command::RegisterNode(r) = &mut cmd {
        r.agent_token_hash = Some(hash.clone());
    }
    let done = api.run_as(meta, cmd).await?;
    let mut out = views::assemble(
        "management.v1.RegisterNodeResponse",
        &views_of(&done.events),
    );
    // Answered only if it is the token recorded (a resend of this caller's own call); a
    // command id reused by someone else gets none.
    let recorded = done
        .events
        .iter()
        .any(|e| matches!(e, Event::TokenCreated { token } if token.hash == hash));
    if recorded {
        out["token"] = json!(token);
    } else {
        out["warning"] = json!("no pmm-agent token: this command id was used by another call");
    }
    Ok(done.reply(out))
}

pub async fn unregister_node(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    required(&p, "node_id")?;
    let done = api.run_quiet(c, req::unregister_node(p)).await?;
    Ok(done.reply(json!({})))
}

pub async fn management_list_nodes(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let filter = p
        .enum_name("node_type")
        .and_then(views::node_type_from_enum);
    let nodes: Vec<Value> = state
        .nodes
        .values()
        .filter(|n| filter.is_none_or(|t| n.node_type == t))
        .map(|n| views::universal_node(&state, n))
        .collect();
    Ok(Reply::read(&state, json!({ "nodes": nodes })))
}

pub async fn management_get_node(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let id = required(&p, "node_id")?;
    let n = state
        .nodes
        .get(&id.as_str().into())
        .ok_or_else(|| not_found("Node", &id))?;
    Ok(Reply::read(
        &state,
        json!({ "node": views::universal_node(&state, n) }),
    ))
}

pub async fn management_add_service(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = req::add_managed_service(P::new(&body, &api.cipher))?;
    let key = body
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default();
    let done = api.run(c, cmd).await?;
    let result_type = super::schema::Schema::get()
        .fields("management.v1.AddServiceResponse")
        .iter()
        .find(|f| f.name == key)
        .map(|f| f.type_name.clone())
        .unwrap_or_default();
    let result = views::assemble(&result_type, &views_of(&done.events));
    Ok(done.reply(json!({ key: result })))
}

pub async fn management_add_azure_database(api: &Api, c: &Caller, body: Value) -> R {
    let done = api
        .run(c, req::add_azure_database(P::new(&body, &api.cipher)))
        .await?;
    Ok(done.reply(json!({})))
}

pub async fn management_list_services(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let by_node = views::node_level_agents(&state);
    let services: Vec<Value> = filtered_services(&state, &P::new(&body, &api.cipher))
        .into_iter()
        .map(|s| views::universal_service(&state, s, &by_node))
        .collect();
    Ok(Reply::read(&state, json!({ "services": services })))
}

pub async fn management_remove_service(api: &Api, c: &Caller, body: Value) -> R {
    let p = P::new(&body, &api.cipher);
    if p.nonempty("service_id").is_none() {
        return Err(Status::invalid_argument(
            "service_id or service_name expected",
        ));
    }
    let done = api.run_quiet(c, req::remove_managed_service(p)).await?;
    Ok(done.reply(json!({})))
}

pub async fn management_list_agents(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let ids = match (p.nonempty("service_id"), p.nonempty("node_id")) {
        (Some(s), None) => {
            let id = s.as_str().into();
            if !state.services.contains_key(&id) {
                return Err(not_found("Service", &s));
            }
            state.agents_of_service(&id)
        }
        (None, Some(n)) => {
            let id = n.as_str().into();
            if !state.nodes.contains_key(&id) {
                return Err(not_found("Node", &n));
            }
            let mut ids = state.agents_with_node(&id);
            ids.extend(state.agents_running_on_node(&id));
            ids.sort();
            ids.dedup();
            ids
        }
        _ => {
            return Err(Status::invalid_argument(
                "expected exactly one of service_id or node_id",
            ));
        }
    };
    let agents: Vec<Value> = ids
        .iter()
        .filter_map(|id| state.agents.get(id))
        .map(|a| views::universal_agent(a))
        .collect();
    Ok(Reply::read(&state, json!({ "agents": agents })))
}

// ---- server.v1.ServerService ----

pub async fn version(api: &Api, _c: &Caller, _body: Value) -> R {
    let v = env!("CARGO_PKG_VERSION");
    let info = json!({ "version": v, "full_version": format!("pmm-cp {v}") });
    Ok(Reply::read(
        &api.state(),
        json!({
            "version": v,
            "server": info,
            "managed": info,
            "distribution_method": "DISTRIBUTION_METHOD_UNSPECIFIED",
        }),
    ))
}

/// Ready when this node knows a cluster leader (so it can take commands).
pub async fn readiness(api: &Api, _c: &Caller, _body: Value) -> R {
    if crate::raft::leader_of(&api.dispatcher.raft().metrics().borrow()).is_none() {
        return Err(Status::unavailable("no cluster leader is known yet"));
    }
    Ok(Reply::read(&api.state(), json!({})))
}

pub async fn leader_health_check(api: &Api, _c: &Caller, _body: Value) -> R {
    let m = api.dispatcher.raft().metrics().borrow().clone();
    if m.current_leader != Some(m.id) {
        return Err(Status::failed_precondition("this node is not the leader"));
    }
    Ok(Reply::read(&api.state(), json!({})))
}

fn settings_view(state: &State) -> Value {
    let e = state.settings.effective();
    json!({
        "updates_enabled": e.updates_enabled,
        "telemetry_enabled": e.telemetry_enabled,
        "metrics_resolutions": {
            "hr": views::secs(e.hr_secs), "mr": views::secs(e.mr_secs), "lr": views::secs(e.lr_secs),
        },
        "data_retention": views::secs(e.data_retention_secs),
        "ssh_key": e.ssh_key,
        "aws_partitions": e.aws_partitions,
        "advisor_enabled": e.advisors_enabled,
        "alerting_enabled": e.alerting_enabled,
        "pmm_public_address": e.pmm_public_address,
        "advisor_run_intervals": {
            "standard_interval": views::secs(e.standard_interval_secs),
            "rare_interval": views::secs(e.rare_interval_secs),
            "frequent_interval": views::secs(e.frequent_interval_secs),
        },
        "backup_management_enabled": e.backup_management_enabled,
        "azurediscover_enabled": e.azure_discover_enabled,
        "enable_access_control": e.access_control_enabled,
    })
}

pub async fn get_settings(api: &Api, _c: &Caller, _body: Value) -> R {
    let state = api.state();
    Ok(Reply::read(
        &state,
        json!({ "settings": settings_view(&state) }),
    ))
}

pub async fn get_read_only_settings(api: &Api, _c: &Caller, _body: Value) -> R {
    let state = api.state();
    let s = super::schema::Schema::get()
        .only_fields("server.v1.ReadOnlySettings", settings_view(&state));
    Ok(Reply::read(&state, json!({ "settings": s })))
}

pub async fn change_settings(api: &Api, c: &Caller, body: Value) -> R {
    let cmd: Command = req::change_settings(P::new(&body, &api.cipher))?;
    let done = api.run(c, cmd).await?;
    let settings = settings_view(&done.state);
    Ok(done.reply(json!({ "settings": settings })))
}
