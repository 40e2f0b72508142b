//! Inventory AddAgent, ChangeAgent and RemoveAgent for every agent type, and the agent rules
//! the management flows reuse: target invariants, node-type and service-type compatibility,
//! push mode and pmm-agent versions, external exporters moving between pull and push, the
//! protected `pmm-server` pmm-agent, restrict vs cascade removal.

use super::services::port;
use super::{Decision, Rejection, non_empty};
use crate::domain::agent::{
    AwsOptions, AzureOptions, ExporterOptions, MongoOptions, MysqlOptions, PostgresqlOptions,
    QanOptions, Target, ValkeyOptions,
};
use crate::domain::labels::{self, Labels};
use crate::domain::limits::{
    MAX_SECRET_LEN, MAX_TEXT_LEN, bounded, bounded_list, bounded_opt, required,
};
use crate::domain::settings::validate_resolution;
use crate::domain::{Agent, AgentId, AgentType, LogLevel, NodeId, Sealed, ServiceId};
use crate::events::Event;
use std::time::Duration;

/// Inventory AddAgent for any type: the union of PMM's per-type add params. Fields a type does
/// not use are ignored.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AddAgent {
    pub agent_type: AgentType,
    pub pmm_agent_id: Option<AgentId>,
    /// pmm-agent and external-exporter.
    pub runs_on_node_id: Option<NodeId>,
    /// rds_exporter and azure_database_exporter.
    pub node_id: Option<NodeId>,
    pub service_id: Option<ServiceId>,
    pub custom_labels: Labels,
    pub username: Option<String>,
    pub password: Option<Sealed>,
    pub agent_password: Option<Sealed>,
    pub tls: bool,
    pub tls_skip_verify: bool,
    pub push_metrics: bool,
    pub disable_collectors: Vec<String>,
    pub expose_exporter: bool,
    pub log_level: Option<LogLevel>,
    /// external-exporter: 1..65535, required.
    pub listen_port: Option<u32>,
    pub metrics_path: Option<String>,
    pub scheme: Option<String>,
    /// Accepted for PMM compatibility; connection checks run through pmm-agents (later work).
    pub skip_connection_check: bool,
    pub qan: QanOptions,
    pub mysql: MysqlOptions,
    pub postgresql: PostgresqlOptions,
    pub mongo: MongoOptions,
    pub valkey: ValkeyOptions,
    pub aws: AwsOptions,
    pub azure: AzureOptions,
}

impl AddAgent {
    /// Empty params for `agent_type`.
    pub fn new(agent_type: AgentType) -> Self {
        Self {
            agent_type,
            pmm_agent_id: None,
            runs_on_node_id: None,
            node_id: None,
            service_id: None,
            custom_labels: Labels::new(),
            username: None,
            password: None,
            agent_password: None,
            tls: false,
            tls_skip_verify: false,
            push_metrics: false,
            disable_collectors: Vec::new(),
            expose_exporter: false,
            log_level: None,
            listen_port: None,
            metrics_path: None,
            scheme: None,
            skip_connection_check: false,
            qan: QanOptions::default(),
            mysql: MysqlOptions::default(),
            postgresql: PostgresqlOptions::default(),
            mongo: MongoOptions::default(),
            valkey: ValkeyOptions::default(),
            aws: AwsOptions::default(),
            azure: AzureOptions::default(),
        }
    }

    pub fn decide(&self, d: &mut Decision<'_>) -> Result<AgentId, Rejection> {
        if self.agent_type.is_auto_managed() {
            return Err(Rejection::invalid(format!(
                "Agents of type {} are created by the server and can't be added.",
                self.agent_type.as_str()
            )));
        }
        create_agent(d, self, CreateOpts::INVENTORY)
    }
}

/// Whether pmm-agent `version` supports push mode (PMM: newer than 2.11.99; unknown or
/// unparsable versions are treated as supported).
pub(crate) fn supports_push(version: Option<&str>) -> bool {
    let Some(v) = version else { return true };
    let core = v
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or_default();
    let parts: Vec<u64> = match core.split('.').map(str::parse).collect::<Result<_, _>>() {
        Ok(p) => p,
        Err(_) => return true,
    };
    let (major, minor) = (
        parts.first().copied().unwrap_or(0),
        parts.get(1).copied().unwrap_or(0),
    );
    (major, minor) >= (2, 12)
}

fn require_pmm_agent(d: &Decision<'_>, id: &Option<AgentId>) -> Result<AgentId, Rejection> {
    let id = id
        .clone()
        .filter(|i| !i.0.is_empty())
        .ok_or_else(|| Rejection::invalid("pmm_agent_id: value must not be empty."))?;
    let agent = d
        .state()
        .agents
        .get(&id)
        .ok_or_else(|| Rejection::agent_not_found(&id))?;
    if agent.agent_type != AgentType::PmmAgent {
        return Err(Rejection::invalid(format!(
            "Agent with ID {:?} is not a pmm-agent.",
            id.0
        )));
    }
    Ok(id)
}

fn check_push(
    d: &Decision<'_>,
    pmm_agent: &AgentId,
    agent_type: AgentType,
) -> Result<(), Rejection> {
    let version = d
        .state()
        .agents
        .get(pmm_agent)
        .and_then(|a| a.version.clone());
    if agent_type != AgentType::VmAgent && !supports_push(version.as_deref()) {
        return Err(Rejection::failed_precondition(format!(
            "pmm-agent with ID {:?} doesn't support push metrics mode (version {}, 2.12.0 or newer needed).",
            pmm_agent.0,
            version.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The single pmm-agent on a node, as push-mode external exporters need.
fn only_pmm_agent_on(d: &Decision<'_>, node: &NodeId) -> Result<AgentId, Rejection> {
    let mut found = d.state().pmm_agents_on_node(node);
    match found.len() {
        0 => Err(Rejection::not_found(format!(
            "cannot find any pmm-agent by NodeID {:?}.",
            node.0
        ))),
        1 => Ok(found.remove(0)),
        n => Err(Rejection::failed_precondition(format!(
            "found {n} pmm-agents on Node with ID {:?}, expected one.",
            node.0
        ))),
    }
}

fn validate_common(p: &AddAgent) -> Result<(), Rejection> {
    labels::validate(&p.custom_labels)?;
    bounded_opt("username", p.username.as_deref(), MAX_TEXT_LEN)?;
    bounded_list("disable_collectors", &p.disable_collectors)?;
    bounded_opt("metrics_path", p.metrics_path.as_deref(), MAX_TEXT_LEN)?;
    for (field, v) in [
        ("tls_ca", &p.mysql.tls_ca),
        ("tls_cert", &p.mysql.tls_cert),
        ("ssl_ca", &p.postgresql.ssl_ca),
        ("ssl_cert", &p.postgresql.ssl_cert),
        ("tls_ca", &p.mongo.tls_ca),
        ("ssl_ca", &p.valkey.ssl_ca),
        ("ssl_cert", &p.valkey.ssl_cert),
        ("aws_access_key", &p.aws.aws_access_key),
    ] {
        bounded_opt(field, v.as_deref(), MAX_SECRET_LEN)?;
    }
    for (field, v) in [
        (
            "authentication_mechanism",
            &p.mongo.authentication_mechanism,
        ),
        ("authentication_database", &p.mongo.authentication_database),
        ("azure_subscription_id", &p.azure.subscription_id),
        ("azure_client_id", &p.azure.client_id),
        ("azure_tenant_id", &p.azure.tenant_id),
        ("azure_resource_group", &p.azure.resource_group),
    ] {
        bounded(field, v, MAX_TEXT_LEN)?;
    }
    bounded_list("stats_collections", &p.mongo.stats_collections)?;
    for (k, v) in &p.mysql.extra_dsn_params {
        bounded("extra_dsn_params", k, MAX_TEXT_LEN)?;
        bounded("extra_dsn_params", v, MAX_TEXT_LEN)?;
    }
    if p.qan.max_query_length < -1 {
        return Err(Rejection::invalid(
            "max_query_length: must be -1 (no limit), 0 (default) or positive.",
        ));
    }
    if let Some(s) = &p.scheme
        && !matches!(s.as_str(), "" | "http" | "https")
    {
        return Err(Rejection::invalid(format!(
            "scheme: {:?} is not http or https.",
            truncate(s)
        )));
    }
    Ok(())
}

/// An external exporter's listen port: required, 1..65535 (named as the field it is).
fn listen_port(p: Option<u32>) -> Result<u16, Rejection> {
    port(p)
        .ok()
        .flatten()
        .ok_or_else(|| Rejection::invalid("listen_port: must be in range 1..65535."))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn needs_username(t: AgentType) -> bool {
    use AgentType::*;
    matches!(
        t,
        MysqldExporter
            | PostgresExporter
            | ProxysqlExporter
            | ValkeyExporter
            | QanMysqlPerfschemaAgent
            | QanMysqlSlowlogAgent
            | QanPostgresqlPgstatementsAgent
            | QanPostgresqlPgstatmonitorAgent
    )
}

/// How a command creates an agent, beyond its parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CreateOpts {
    /// An external exporter may scrape an HAProxy service (management path).
    pub haproxy_ok: bool,
    /// Apply PMM's per-type default log level when none is given (RegisterNode does not).
    pub default_log_level: bool,
}

impl CreateOpts {
    pub const INVENTORY: Self = Self {
        haproxy_ok: false,
        default_log_level: true,
    };
}

/// PMM's CreateAgent: validates the target and the type's parameters, emits `AgentAdded`.
pub(crate) fn create_agent(
    d: &mut Decision<'_>,
    p: &AddAgent,
    opts: CreateOpts,
) -> Result<AgentId, Rejection> {
    let haproxy_ok = opts.haproxy_ok;
    let t = p.agent_type;
    validate_common(p)?;
    let id = AgentId::from(d.new_id());
    let mut a = Agent::new(id.clone(), t, d.now());
    a.custom_labels = p.custom_labels.clone();
    match t.target() {
        Target::RunsOnNode => {
            let node = p
                .runs_on_node_id
                .clone()
                .filter(|n| !n.0.is_empty())
                .ok_or_else(|| Rejection::invalid("runs_on_node_id: value must not be empty."))?;
            if !d.state().nodes.contains_key(&node) {
                return Err(Rejection::node_not_found(&node));
            }
            a.runs_on_node_id = Some(node);
        }
        Target::PmmAgentNode => {
            let pmm_agent = require_pmm_agent(d, &p.pmm_agent_id)?;
            let node = d
                .state()
                .agents
                .get(&pmm_agent)
                .and_then(|a| a.runs_on_node_id.clone())
                .ok_or_else(|| {
                    Rejection::failed_precondition(format!(
                        "pmm-agent with ID {:?} runs on no node.",
                        pmm_agent.0
                    ))
                })?;
            check_node_compat(d, &node, t)?;
            a.pmm_agent_id = Some(pmm_agent);
            a.node_id = Some(node);
        }
        Target::Node => {
            let pmm_agent = require_pmm_agent(d, &p.pmm_agent_id)?;
            a.pmm_agent_id = Some(pmm_agent);
            let node = p.node_id.clone().filter(|n| !n.0.is_empty());
            let service = p.service_id.clone().filter(|s| !s.0.is_empty());
            match (node, service) {
                // Management AddAzureDatabase attaches the exporter to the service.
                (None, Some(service_id)) if t == AgentType::AzureDatabaseExporter => {
                    check_service_compat(d, &service_id, t, haproxy_ok)?;
                    a.service_id = Some(service_id);
                }
                (node, _) => {
                    let node = node
                        .ok_or_else(|| Rejection::invalid("node_id: value must not be empty."))?;
                    check_node_compat(d, &node, t)?;
                    a.node_id = Some(node);
                }
            }
        }
        Target::Service => {
            let service_id = p
                .service_id
                .clone()
                .filter(|s| !s.0.is_empty())
                .ok_or_else(|| Rejection::invalid("service_id: value must not be empty."))?;
            if t == AgentType::ExternalExporter {
                let node = p
                    .runs_on_node_id
                    .clone()
                    .filter(|n| !n.0.is_empty())
                    .ok_or_else(|| {
                        Rejection::invalid("runs_on_node_id: value must not be empty.")
                    })?;
                if !d.state().nodes.contains_key(&node) {
                    return Err(Rejection::node_not_found(&node));
                }
                if p.push_metrics {
                    a.pmm_agent_id = Some(only_pmm_agent_on(d, &node)?);
                } else {
                    a.runs_on_node_id = Some(node);
                }
            } else {
                a.pmm_agent_id = Some(require_pmm_agent(d, &p.pmm_agent_id)?);
            }
            check_service_compat(d, &service_id, t, haproxy_ok)?;
            a.service_id = Some(service_id);
        }
    }
    if needs_username(t) {
        required(
            "username",
            p.username.as_deref().unwrap_or_default(),
            MAX_TEXT_LEN,
        )?;
    }
    if t == AgentType::PmmAgent {
        d.emit(Event::AgentAdded { agent: a });
        return Ok(id);
    }
    a.log_level = p
        .log_level
        .or(t.default_log_level().filter(|_| opts.default_log_level));
    a.username = non_empty(&p.username);
    a.password = p.password.clone();
    a.tls = p.tls;
    a.tls_skip_verify = p.tls_skip_verify;
    if t.is_exporter() {
        if p.push_metrics
            && let Some(pmm_agent) = a.pmm_agent_id.clone()
        {
            check_push(d, &pmm_agent, t)?;
        }
        a.agent_password = p.agent_password.clone();
        a.exporter = ExporterOptions {
            expose_exporter: p.expose_exporter,
            push_metrics: p.push_metrics,
            disabled_collectors: p.disable_collectors.clone(),
            ..ExporterOptions::default()
        };
    }
    if t.is_qan() {
        a.qan = p.qan.clone();
    }
    use AgentType::*;
    match t {
        ExternalExporter => {
            a.listen_port = Some(listen_port(p.listen_port)?);
            a.exporter.metrics_path =
                Some(non_empty(&p.metrics_path).unwrap_or_else(|| "/metrics".to_owned()));
            a.exporter.metrics_scheme =
                Some(non_empty(&p.scheme).unwrap_or_else(|| "http".to_owned()));
        }
        MysqldExporter | QanMysqlPerfschemaAgent | QanMysqlSlowlogAgent => {
            a.mysql = MysqlOptions {
                table_count: None,
                ..p.mysql.clone()
            };
        }
        PostgresExporter | QanPostgresqlPgstatementsAgent | QanPostgresqlPgstatmonitorAgent => {
            a.postgresql = PostgresqlOptions {
                database_count: None,
                pgsm_version: None,
                ..p.postgresql.clone()
            };
        }
        MongodbExporter | QanMongodbProfilerAgent | QanMongodbMongologAgent | RtaMongodbAgent => {
            a.mongo = p.mongo.clone();
        }
        ValkeyExporter => a.valkey = p.valkey.clone(),
        RdsExporter => a.aws = p.aws.clone(),
        AzureDatabaseExporter => {
            if !matches!(
                p.azure.resource_type.as_str(),
                "mysql" | "maria" | "postgres"
            ) {
                return Err(Rejection::invalid(
                    "azure_database_resource_type: must be one of mysql, maria, postgres.",
                ));
            }
            a.azure = p.azure.clone();
        }
        PmmAgent | VmAgent | NodeExporter | ProxysqlExporter | NomadAgent => {}
    }
    d.emit(Event::AgentAdded { agent: a });
    Ok(id)
}

fn check_service_compat(
    d: &Decision<'_>,
    service_id: &ServiceId,
    t: AgentType,
    haproxy_ok: bool,
) -> Result<(), Rejection> {
    let service = d
        .state()
        .services
        .get(service_id)
        .ok_or_else(|| Rejection::service_not_found(service_id))?;
    if !t.allowed_for_service(service.service_type, haproxy_ok) {
        return Err(Rejection::failed_precondition(format!(
            "invalid combination of service type {} and agent type {}",
            service.service_type.as_str(),
            t.as_str()
        )));
    }
    Ok(())
}

fn check_node_compat(d: &Decision<'_>, node: &NodeId, t: AgentType) -> Result<(), Rejection> {
    let n = d
        .state()
        .nodes
        .get(node)
        .ok_or_else(|| Rejection::node_not_found(node))?;
    if !t.allowed_on_node(n.node_type) {
        return Err(Rejection::failed_precondition(format!(
            "invalid combination of node type {} and agent type {}",
            n.node_type.as_str(),
            t.as_str()
        )));
    }
    Ok(())
}

/// New resolutions for ChangeAgent: each present value is validated; zero resets it.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ResolutionsChange {
    pub hr: Option<Duration>,
    pub mr: Option<Duration>,
    pub lr: Option<Duration>,
}

/// Inventory ChangeAgent. `agent_type` is the oneof key of the request and must match the
/// agent's type. Absent fields keep their value.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ChangeAgent {
    pub agent_id: AgentId,
    pub agent_type: AgentType,
    pub enable: Option<bool>,
    pub custom_labels: Option<Labels>,
    pub enable_push_metrics: Option<bool>,
    pub metrics_resolutions: Option<ResolutionsChange>,
    pub username: Option<String>,
    pub password: Option<Sealed>,
    pub agent_password: Option<Sealed>,
    pub tls: Option<bool>,
    pub tls_skip_verify: Option<bool>,
    pub log_level: Option<LogLevel>,
    pub expose_exporter: Option<bool>,
    pub disable_collectors: Option<Vec<String>>,
    pub listen_port: Option<u32>,
    pub metrics_path: Option<String>,
    pub scheme: Option<String>,
    pub max_query_length: Option<i32>,
    pub disable_query_examples: Option<bool>,
    pub disable_comments_parsing: Option<bool>,
    pub max_slowlog_file_size: Option<i64>,
    pub tablestats_group_table_limit: Option<i32>,
    pub aws_access_key: Option<String>,
    pub aws_secret_key: Option<Sealed>,
    pub azure_client_secret: Option<Sealed>,
}

impl ChangeAgent {
    /// A change that changes nothing yet.
    pub fn new(agent_id: AgentId, agent_type: AgentType) -> Self {
        Self {
            agent_id,
            agent_type,
            enable: None,
            custom_labels: None,
            enable_push_metrics: None,
            metrics_resolutions: None,
            username: None,
            password: None,
            agent_password: None,
            tls: None,
            tls_skip_verify: None,
            log_level: None,
            expose_exporter: None,
            disable_collectors: None,
            listen_port: None,
            metrics_path: None,
            scheme: None,
            max_query_length: None,
            disable_query_examples: None,
            disable_comments_parsing: None,
            max_slowlog_file_size: None,
            tablestats_group_table_limit: None,
            aws_access_key: None,
            aws_secret_key: None,
            azure_client_secret: None,
        }
    }

    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let current = d
            .state()
            .agents
            .get(&self.agent_id)
            .cloned()
            .ok_or_else(|| Rejection::agent_not_found(&self.agent_id))?;
        if current.agent_type != self.agent_type {
            return Err(Rejection::failed_precondition(format!(
                "Agent with ID {:?} is a {}, not a {}.",
                self.agent_id.0,
                current.agent_type.as_str(),
                self.agent_type.as_str()
            )));
        }
        if current.agent_type == AgentType::PmmAgent {
            return Err(Rejection::invalid("pmm-agent can't be changed."));
        }
        let mut a = (*current).clone();
        if let Some(enable) = self.enable {
            a.disabled = !enable;
        }
        if let Some(l) = &self.custom_labels {
            labels::validate(l)?;
            a.custom_labels = l.clone();
        }
        if a.agent_type == AgentType::NomadAgent {
            return finish(d, &current, a);
        }
        if let Some(r) = &self.metrics_resolutions {
            let mut m = a.exporter.metrics_resolutions.unwrap_or_default();
            for (name, v, dst) in [
                ("hr", r.hr, &mut m.hr_secs),
                ("mr", r.mr, &mut m.mr_secs),
                ("lr", r.lr, &mut m.lr_secs),
            ] {
                match v {
                    None => {}
                    Some(Duration::ZERO) => *dst = None,
                    Some(v) => *dst = Some(validate_resolution(name, v)?),
                }
            }
            a.exporter.metrics_resolutions = (!m.is_empty()).then_some(m);
        }
        if let Some(push) = self.enable_push_metrics {
            self.change_push(d, &mut a, push)?;
        }
        if let Some(u) = &self.username {
            bounded("username", u, MAX_TEXT_LEN)?;
            a.username = non_empty(&Some(u.clone()));
        }
        if let Some(p) = &self.password {
            a.password = Some(p.clone());
        }
        if let Some(p) = &self.agent_password {
            a.agent_password = Some(p.clone());
        }
        set(&mut a.tls, self.tls);
        set(&mut a.tls_skip_verify, self.tls_skip_verify);
        if let Some(l) = self.log_level {
            a.log_level = Some(l);
        }
        set(&mut a.exporter.expose_exporter, self.expose_exporter);
        if let Some(c) = &self.disable_collectors {
            bounded_list("disable_collectors", c)?;
            a.exporter.disabled_collectors.clone_from(c);
        }
        if a.agent_type == AgentType::ExternalExporter {
            if self.listen_port.is_some() {
                a.listen_port = Some(listen_port(self.listen_port)?);
            }
            if let Some(p) = &self.metrics_path {
                bounded("metrics_path", p, MAX_TEXT_LEN)?;
                a.exporter.metrics_path = Some(if p.is_empty() {
                    "/metrics".to_owned()
                } else {
                    p.clone()
                });
            }
            if let Some(s) = &self.scheme {
                if !matches!(s.as_str(), "" | "http" | "https") {
                    return Err(Rejection::invalid(format!(
                        "scheme: {:?} is not http or https.",
                        truncate(s)
                    )));
                }
                a.exporter.metrics_scheme = Some(if s.is_empty() {
                    "http".to_owned()
                } else {
                    s.clone()
                });
            }
        }
        if a.agent_type.is_qan() {
            if let Some(m) = self.max_query_length {
                if m < -1 {
                    return Err(Rejection::invalid(
                        "max_query_length: must be -1 (no limit), 0 (default) or positive.",
                    ));
                }
                a.qan.max_query_length = m;
            }
            set(
                &mut a.qan.query_examples_disabled,
                self.disable_query_examples,
            );
            set(
                &mut a.qan.comments_parsing_disabled,
                self.disable_comments_parsing,
            );
            if let Some(s) = self.max_slowlog_file_size {
                a.qan.max_query_log_size = s.max(0);
            }
        }
        if let Some(l) = self.tablestats_group_table_limit {
            a.mysql.tablestats_group_table_limit = l;
        }
        if a.agent_type == AgentType::RdsExporter {
            if let Some(k) = &self.aws_access_key {
                bounded("aws_access_key", k, MAX_TEXT_LEN)?;
                a.aws.aws_access_key = non_empty(&Some(k.clone()));
            }
            if let Some(k) = &self.aws_secret_key {
                a.aws.aws_secret_key = Some(k.clone());
            }
        }
        if let (AgentType::AzureDatabaseExporter, Some(s)) =
            (a.agent_type, &self.azure_client_secret)
        {
            a.azure.client_secret = Some(s.clone());
        }
        finish(d, &current, a)
    }

    fn change_push(&self, d: &Decision<'_>, a: &mut Agent, push: bool) -> Result<(), Rejection> {
        if !a.agent_type.is_exporter() {
            return Err(Rejection::invalid(format!(
                "{} has no push metrics mode.",
                a.agent_type.as_str()
            )));
        }
        if a.agent_type == AgentType::ExternalExporter && push != a.exporter.push_metrics {
            if push {
                let node = a.runs_on_node_id.clone().ok_or_else(|| {
                    Rejection::failed_precondition("external exporter runs on no node.")
                })?;
                let pmm_agent = only_pmm_agent_on(d, &node)?;
                check_push(d, &pmm_agent, a.agent_type)?;
                a.pmm_agent_id = Some(pmm_agent);
                a.runs_on_node_id = None;
            } else {
                let pmm_agent = a.pmm_agent_id.clone().ok_or_else(|| {
                    Rejection::failed_precondition("external exporter has no pmm-agent.")
                })?;
                let node = d
                    .state()
                    .agents
                    .get(&pmm_agent)
                    .and_then(|p| p.runs_on_node_id.clone())
                    .ok_or_else(|| {
                        Rejection::failed_precondition(format!(
                            "pmm-agent with ID {:?} runs on no node.",
                            pmm_agent.0
                        ))
                    })?;
                a.runs_on_node_id = Some(node);
                a.pmm_agent_id = None;
            }
        } else if push && let Some(pmm_agent) = a.pmm_agent_id.clone() {
            check_push(d, &pmm_agent, a.agent_type)?;
        }
        a.exporter.push_metrics = push;
        Ok(())
    }
}

fn set<T: Copy>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

fn finish(d: &mut Decision<'_>, current: &Agent, mut a: Agent) -> Result<(), Rejection> {
    if a == *current {
        return Ok(());
    }
    a.updated_at = d.now();
    d.emit(Event::AgentChanged { agent: a });
    Ok(())
}

/// Inventory RemoveAgent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RemoveAgent {
    pub agent_id: AgentId,
    pub force: bool,
}

impl RemoveAgent {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        remove_agent(d, &self.agent_id, self.force)
    }
}

/// PMM's RemoveAgent: the `pmm-server` pmm-agent is protected; a pmm-agent with children
/// fails on restrict and removes them first on cascade.
pub(crate) fn remove_agent(
    d: &mut Decision<'_>,
    id: &AgentId,
    force: bool,
) -> Result<(), Rejection> {
    if !d.state().agents.contains_key(id) {
        return Err(Rejection::agent_not_found(id));
    }
    if id.is_pmm_server() {
        return Err(Rejection::permission_denied(
            "pmm-agent on PMM Server can't be removed.",
        ));
    }
    let children = d.state().children_of(id);
    if !children.is_empty() {
        if !force {
            return Err(Rejection::failed_precondition(format!(
                "pmm-agent with ID {} has agents.",
                id.0
            )));
        }
        for c in children {
            remove_agent(d, &c, false)?;
        }
    }
    d.emit(Event::AgentRemoved {
        agent_id: id.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::supports_push;

    #[test]
    fn push_needs_pmm_agent_2_12_or_unknown_version() {
        assert!(supports_push(None));
        assert!(supports_push(Some("2.12.0")));
        assert!(supports_push(Some("3.1.0-rc1")));
        assert!(supports_push(Some("garbage")));
        assert!(!supports_push(Some("2.11.99")));
        assert!(!supports_push(Some("1.17.0")));
    }
}
