//! Management AddService for every service type, plus AddRDS and AddAzureDatabase: the node
//! (existing or a new remote one), the service, its exporter and the QAN agents PMM creates,
//! all in one decision so the add is all-or-nothing.

use super::agents::{AddAgent, CreateOpts, create_agent};
use super::nodes::AddNode;
use super::services::{AddService, create_service};
use super::{Decision, Rejection, non_empty};
use crate::domain::agent::{
    AwsOptions, AzureOptions, MongoOptions, MysqlOptions, PostgresqlOptions, QanOptions,
    ValkeyOptions,
};
use crate::domain::labels::Labels;
use crate::domain::{
    AgentId, AgentType, LogLevel, NodeId, NodeType, PMM_SERVER_ID, Sealed, ServiceId, ServiceType,
};

/// How an exporter delivers metrics. Unspecified means push, except on `pmm-server`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetricsMode {
    #[default]
    Unspecified,
    Pull,
    Push,
}

impl MetricsMode {
    /// PMM's isPushMode: push or unspecified.
    pub fn is_push(self) -> bool {
        matches!(self, MetricsMode::Push | MetricsMode::Unspecified)
    }
}

/// PMM's supportedMetricsMode: push is refused on `pmm-server`, where unspecified means pull.
fn push_for(mode: MetricsMode, pmm_agent: &AgentId) -> Result<bool, Rejection> {
    if pmm_agent.is_pmm_server() {
        return match mode {
            MetricsMode::Push => Err(Rejection::failed_precondition(
                "push metrics mode is not allowed for exporters running on pmm-server",
            )),
            _ => Ok(false),
        };
    }
    Ok(mode.is_push())
}

/// AddNodeParams of a management add: a new remote node for the service.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddNodeParams {
    pub node_type: Option<NodeType>,
    pub node_name: String,
    pub machine_id: Option<String>,
    pub distro: String,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub node_model: String,
    pub region: Option<String>,
    pub az: String,
    pub custom_labels: Labels,
}

/// The fields every management add shares.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddServiceCommon {
    pub node_id: Option<NodeId>,
    pub node_name: Option<String>,
    pub add_node: Option<AddNodeParams>,
    pub service_name: String,
    pub address: Option<String>,
    pub port: Option<u32>,
    pub socket: Option<String>,
    pub pmm_agent_id: Option<AgentId>,
    pub environment: String,
    pub cluster: String,
    pub replication_set: String,
    pub custom_labels: Labels,
    pub skip_connection_check: bool,
    pub metrics_mode: MetricsMode,
    pub disable_collectors: Vec<String>,
    pub agent_password: Option<Sealed>,
    pub log_level: Option<LogLevel>,
    pub expose_exporter: bool,
    pub username: Option<String>,
    pub password: Option<Sealed>,
    pub tls: bool,
    pub tls_skip_verify: bool,
}

/// What differs per service type.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ServiceKind {
    Mysql {
        qan_perfschema: bool,
        qan_slowlog: bool,
        mysql: MysqlOptions,
        qan: QanOptions,
    },
    Mongodb {
        qan_profiler: bool,
        qan_mongolog: bool,
        mongo: MongoOptions,
        qan: QanOptions,
    },
    Postgresql {
        database_name: String,
        qan_pgstatements: bool,
        qan_pgstatmonitor: bool,
        postgresql: PostgresqlOptions,
        qan: QanOptions,
    },
    Proxysql,
    Valkey {
        valkey: ValkeyOptions,
    },
    Haproxy {
        listen_port: Option<u32>,
        scheme: Option<String>,
        metrics_path: Option<String>,
    },
    External {
        runs_on_node_id: Option<NodeId>,
        listen_port: Option<u32>,
        scheme: Option<String>,
        metrics_path: Option<String>,
        group: String,
    },
}

impl ServiceKind {
    fn service_type(&self) -> ServiceType {
        match self {
            ServiceKind::Mysql { .. } => ServiceType::Mysql,
            ServiceKind::Mongodb { .. } => ServiceType::Mongodb,
            ServiceKind::Postgresql { .. } => ServiceType::Postgresql,
            ServiceKind::Proxysql => ServiceType::Proxysql,
            ServiceKind::Valkey { .. } => ServiceType::Valkey,
            ServiceKind::Haproxy { .. } => ServiceType::Haproxy,
            ServiceKind::External { .. } => ServiceType::External,
        }
    }
}

/// Management AddService (mysql, mongodb, postgresql, proxysql, valkey, haproxy, external).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AddManagedService {
    pub common: AddServiceCommon,
    pub kind: ServiceKind,
}

/// PMM's management defaults: tablestats limit 0 -> 1000, negative -> -1.
fn tablestats_limit(v: i32) -> i32 {
    match v {
        0 => 1000,
        v if v < 0 => -1,
        v => v,
    }
}

/// PMM's management defaults: slowlog rotation size 0 -> 1 GiB, negative -> 0 (no rotation).
fn slowlog_size(v: i64) -> i64 {
    match v {
        0 => 1 << 30,
        v if v < 0 => 0,
        v => v,
    }
}

impl AddManagedService {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let c = &self.common;
        let service_type = self.kind.service_type();
        let node_id = self.resolve_node(d)?;
        let mut service = AddService {
            service_type: Some(service_type),
            service_name: c.service_name.clone(),
            node_id: node_id.clone(),
            address: c.address.clone(),
            port: c.port,
            socket: c.socket.clone(),
            environment: c.environment.clone(),
            cluster: c.cluster.clone(),
            replication_set: c.replication_set.clone(),
            custom_labels: c.custom_labels.clone(),
            ..AddService::default()
        };
        match &self.kind {
            ServiceKind::Haproxy {
                listen_port,
                scheme,
                metrics_path,
            } => {
                (service.address, service.port, service.socket) = (None, None, None);
                let service_id = {
                    let id = ServiceId::from(d.new_id());
                    create_service(d, &service, id)
                }?;
                self.add_external_exporter(
                    d,
                    service_id,
                    node_id,
                    *listen_port,
                    scheme,
                    metrics_path,
                )
            }
            ServiceKind::External {
                runs_on_node_id,
                listen_port,
                scheme,
                metrics_path,
                group,
            } => {
                if c.add_node.is_none() && runs_on_node_id.as_ref().is_none_or(|r| r.0.is_empty()) {
                    return Err(Rejection::invalid(
                        "runs_on_node_id and node_id should be specified together.",
                    ));
                }
                (service.address, service.port, service.socket) = (None, None, None);
                service.external_group.clone_from(group);
                let service_id = {
                    let id = ServiceId::from(d.new_id());
                    create_service(d, &service, id)
                }?;
                let runs_on = runs_on_node_id
                    .clone()
                    .filter(|r| !r.0.is_empty())
                    .unwrap_or(node_id);
                self.add_external_exporter(
                    d,
                    service_id,
                    runs_on,
                    *listen_port,
                    scheme,
                    metrics_path,
                )
            }
            kind => {
                let pmm_agent = c
                    .pmm_agent_id
                    .clone()
                    .filter(|p| !p.0.is_empty())
                    .ok_or_else(|| Rejection::invalid("pmm_agent_id: value must not be empty."))?;
                let push = push_for(c.metrics_mode, &pmm_agent)?;
                if let ServiceKind::Postgresql { database_name, .. } = kind {
                    service.database_name.clone_from(database_name);
                }
                let service_id = {
                    let id = ServiceId::from(d.new_id());
                    create_service(d, &service, id)
                }?;
                self.add_db_agents(d, kind, service_id, pmm_agent, push)
            }
        }
    }

    /// Exactly one of node_id, node_name, add_node; existing nodes must be generic or
    /// container, new ones remote (with the service's address).
    fn resolve_node(&self, d: &mut Decision<'_>) -> Result<NodeId, Rejection> {
        let c = &self.common;
        let node_id = c.node_id.clone().filter(|n| !n.0.is_empty());
        let node_name = non_empty(&c.node_name);
        let given = [node_id.is_some(), node_name.is_some(), c.add_node.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Rejection::invalid(
                "expected only one param; node id, node name or register node params",
            ));
        }
        if let Some(add) = &c.add_node {
            if add.node_type != Some(NodeType::Remote) {
                return Err(Rejection::invalid(
                    "add_node structure can be used only for remote nodes",
                ));
            }
            let address = non_empty(&c.address).ok_or_else(|| {
                Rejection::invalid("address: required when a new node is added with add_node.")
            })?;
            let node = AddNode {
                node_type: Some(NodeType::Remote),
                node_name: add.node_name.clone(),
                address,
                machine_id: add.machine_id.clone(),
                distro: add.distro.clone(),
                node_model: add.node_model.clone(),
                region: add.region.clone(),
                az: add.az.clone(),
                custom_labels: add.custom_labels.clone(),
                container_id: add.container_id.clone(),
                container_name: add.container_name.clone(),
                instance_id: String::new(),
            };
            return node.decide(d);
        }
        let node = match (&node_id, &node_name) {
            (Some(id), _) => d
                .state()
                .nodes
                .get(id)
                .ok_or_else(|| Rejection::node_not_found(id))?,
            (_, Some(name)) => d.state().node_by_name(name).ok_or_else(|| {
                Rejection::not_found(format!("Node with name {name:?} not found."))
            })?,
            (None, None) => {
                return Err(Rejection::invalid(
                    "expected only one param; node id, node name or register node params",
                ));
            }
        };
        if !matches!(node.node_type, NodeType::Generic | NodeType::Container) {
            return Err(Rejection::invalid(format!(
                "Node with ID {:?} is a {} node; services are added to generic or container nodes, or to a new remote node with add_node.",
                node.node_id.0,
                node.node_type.as_str()
            )));
        }
        Ok(node.node_id.clone())
    }

    fn exporter(
        &self,
        agent_type: AgentType,
        service_id: &ServiceId,
        pmm_agent: &AgentId,
        push: bool,
    ) -> AddAgent {
        let c = &self.common;
        let mut a = AddAgent::new(agent_type);
        a.pmm_agent_id = Some(pmm_agent.clone());
        a.service_id = Some(service_id.clone());
        a.username = c.username.clone();
        a.password = c.password.clone();
        a.tls = c.tls;
        a.tls_skip_verify = c.tls_skip_verify;
        a.skip_connection_check = c.skip_connection_check;
        if agent_type.is_exporter() {
            a.push_metrics = push;
            a.agent_password = c.agent_password.clone();
            a.disable_collectors = c.disable_collectors.clone();
            a.expose_exporter = c.expose_exporter;
            a.log_level = c.log_level;
        }
        a
    }

    fn add_db_agents(
        &self,
        d: &mut Decision<'_>,
        kind: &ServiceKind,
        service_id: ServiceId,
        pmm_agent: AgentId,
        push: bool,
    ) -> Result<(), Rejection> {
        let mut agents = Vec::new();
        let exporter = |t| self.exporter(t, &service_id, &pmm_agent, push);
        match kind {
            ServiceKind::Mysql {
                qan_perfschema,
                qan_slowlog,
                mysql,
                qan,
            } => {
                let mysql = MysqlOptions {
                    tablestats_group_table_limit: tablestats_limit(
                        mysql.tablestats_group_table_limit,
                    ),
                    ..mysql.clone()
                };
                let qan = QanOptions {
                    max_query_log_size: slowlog_size(qan.max_query_log_size),
                    ..qan.clone()
                };
                for (wanted, t) in [
                    (true, AgentType::MysqldExporter),
                    (*qan_perfschema, AgentType::QanMysqlPerfschemaAgent),
                    (*qan_slowlog, AgentType::QanMysqlSlowlogAgent),
                ] {
                    if wanted {
                        let mut a = exporter(t);
                        a.mysql = mysql.clone();
                        a.qan = QanOptions {
                            max_query_log_size: if t == AgentType::QanMysqlSlowlogAgent {
                                qan.max_query_log_size
                            } else {
                                0
                            },
                            ..qan.clone()
                        };
                        agents.push(a);
                    }
                }
            }
            ServiceKind::Mongodb {
                qan_profiler,
                qan_mongolog,
                mongo,
                qan,
            } => {
                for (wanted, t) in [
                    (true, AgentType::MongodbExporter),
                    (*qan_profiler, AgentType::QanMongodbProfilerAgent),
                    (*qan_mongolog, AgentType::QanMongodbMongologAgent),
                ] {
                    if wanted {
                        let mut a = exporter(t);
                        a.mongo = mongo.clone();
                        a.qan = QanOptions {
                            query_examples_disabled: false,
                            max_query_log_size: 0,
                            ..qan.clone()
                        };
                        agents.push(a);
                    }
                }
            }
            ServiceKind::Postgresql {
                qan_pgstatements,
                qan_pgstatmonitor,
                postgresql,
                qan,
                ..
            } => {
                for (wanted, t) in [
                    (true, AgentType::PostgresExporter),
                    (*qan_pgstatements, AgentType::QanPostgresqlPgstatementsAgent),
                    (
                        *qan_pgstatmonitor,
                        AgentType::QanPostgresqlPgstatmonitorAgent,
                    ),
                ] {
                    if wanted {
                        let mut a = exporter(t);
                        a.postgresql = postgresql.clone();
                        a.qan = QanOptions {
                            max_query_log_size: 0,
                            ..qan.clone()
                        };
                        agents.push(a);
                    }
                }
            }
            ServiceKind::Proxysql => agents.push(exporter(AgentType::ProxysqlExporter)),
            ServiceKind::Valkey { valkey } => {
                let mut a = exporter(AgentType::ValkeyExporter);
                a.valkey = valkey.clone();
                agents.push(a);
            }
            ServiceKind::Haproxy { .. } | ServiceKind::External { .. } => {}
        }
        for a in &agents {
            create_agent(d, a, CreateOpts::INVENTORY)?;
        }
        Ok(())
    }

    /// The external exporter of an external or HAProxy service. Unspecified mode means pull
    /// unless exactly one pmm-agent runs on `runs_on` (then PMM's auto rule: push, except on
    /// `pmm-server`).
    fn add_external_exporter(
        &self,
        d: &mut Decision<'_>,
        service_id: ServiceId,
        runs_on: NodeId,
        listen_port: Option<u32>,
        scheme: &Option<String>,
        metrics_path: &Option<String>,
    ) -> Result<(), Rejection> {
        let c = &self.common;
        let push = match c.metrics_mode {
            MetricsMode::Push => true,
            MetricsMode::Pull => false,
            // Auto: pull unless exactly one pmm-agent runs there, then PMM's usual rule
            // (push, but pull on `pmm-server`).
            MetricsMode::Unspecified => match d.state().pmm_agents_on_node(&runs_on).as_slice() {
                [only] => push_for(MetricsMode::Unspecified, only)?,
                _ => false,
            },
        };
        let mut a = AddAgent::new(AgentType::ExternalExporter);
        a.runs_on_node_id = Some(runs_on);
        a.service_id = Some(service_id);
        a.username = c.username.clone();
        a.password = c.password.clone();
        a.tls_skip_verify = c.tls_skip_verify;
        a.push_metrics = push;
        a.listen_port = listen_port;
        a.scheme = scheme.clone();
        a.metrics_path = metrics_path.clone();
        a.custom_labels = Labels::new();
        let opts = CreateOpts {
            haproxy_ok: true,
            ..CreateOpts::INVENTORY
        };
        create_agent(d, &a, opts).map(drop)
    }
}

/// RDS database engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RdsEngine {
    Mysql,
    Postgresql,
}

/// PMM's AWS region pattern for RDS.
pub fn is_aws_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let digit = |s: &str| s.len() == 1 && matches!(s.as_bytes()[0], b'1'..=b'9');
    match parts.as_slice() {
        ["us", "gov", dir, n] => matches!(*dir, "east" | "west") && digit(n),
        ["cn", dir, n] => matches!(*dir, "north" | "northwest") && digit(n),
        [area, dir, n] => {
            matches!(*area, "us" | "eu" | "ap" | "sa" | "ca" | "me" | "af" | "il")
                && matches!(
                    *dir,
                    "north"
                        | "south"
                        | "east"
                        | "west"
                        | "central"
                        | "northeast"
                        | "northwest"
                        | "southeast"
                        | "southwest"
                )
                && digit(n)
        }
        _ => false,
    }
}

/// Management AddRDS: a remote_rds node, an optional rds_exporter, the service, its exporter
/// and an optional QAN agent, run by `pmm-server`'s pmm-agent unless another is named.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddRdsService {
    pub region: String,
    pub az: String,
    pub instance_id: String,
    pub node_model: String,
    pub address: String,
    pub port: u32,
    pub engine: Option<RdsEngine>,
    pub pmm_agent_id: Option<AgentId>,
    pub node_name: String,
    pub service_name: String,
    pub environment: String,
    pub cluster: String,
    pub replication_set: String,
    pub custom_labels: Labels,
    pub username: String,
    pub password: Option<Sealed>,
    pub aws_access_key: Option<String>,
    pub aws_secret_key: Option<Sealed>,
    pub rds_exporter: bool,
    pub qan: bool,
    pub skip_connection_check: bool,
    pub tls: bool,
    pub tls_skip_verify: bool,
    pub disable_query_examples: bool,
    pub tablestats_group_table_limit: i32,
    pub disable_basic_metrics: bool,
    pub disable_enhanced_metrics: bool,
    pub metrics_mode: MetricsMode,
    pub agent_password: Option<Sealed>,
    pub database: String,
    pub max_postgresql_exporter_connections: i32,
    pub auto_discovery_limit: i32,
    pub disable_comments_parsing: bool,
    pub max_query_length: i32,
}

impl AddRdsService {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        if !is_aws_region(&self.region) {
            let shown: String = self.region.chars().take(64).collect();
            return Err(Rejection::invalid(format!(
                "region: {shown:?} is not an AWS region."
            )));
        }
        for (field, v) in [
            ("instance_id", &self.instance_id),
            ("address", &self.address),
            ("username", &self.username),
        ] {
            if v.is_empty() {
                return Err(Rejection::invalid(format!(
                    "{field}: value must not be empty."
                )));
            }
        }
        if self.port == 0 {
            return Err(Rejection::invalid("port: must be greater than 0."));
        }
        let engine = self
            .engine
            .ok_or_else(|| Rejection::invalid("Unsupported RDS engine."))?;
        let pmm_agent = self
            .pmm_agent_id
            .clone()
            .filter(|p| !p.0.is_empty())
            .unwrap_or_else(|| AgentId::from(PMM_SERVER_ID));
        let push = push_for(self.metrics_mode, &pmm_agent)?;
        let or_instance = |s: &String| {
            if s.is_empty() {
                self.instance_id.clone()
            } else {
                s.clone()
            }
        };
        let node = AddNode {
            node_type: Some(NodeType::RemoteRds),
            node_name: or_instance(&self.node_name),
            address: self.instance_id.clone(),
            node_model: self.node_model.clone(),
            region: Some(self.region.clone()),
            az: self.az.clone(),
            instance_id: self.instance_id.clone(),
            ..AddNode::default()
        };
        let node_id = node.decide(d)?;
        if self.rds_exporter {
            let mut a = AddAgent::new(AgentType::RdsExporter);
            a.pmm_agent_id = Some(pmm_agent.clone());
            a.node_id = Some(node_id.clone());
            a.push_metrics = push;
            a.aws = AwsOptions {
                aws_access_key: non_empty(&self.aws_access_key),
                aws_secret_key: self.aws_secret_key.clone(),
                rds_basic_metrics_disabled: self.disable_basic_metrics,
                rds_enhanced_metrics_disabled: self.disable_enhanced_metrics,
            };
            create_agent(d, &a, CreateOpts::INVENTORY)?;
        }
        let (service_type, exporter_type, qan_type) = match engine {
            RdsEngine::Mysql => (
                ServiceType::Mysql,
                AgentType::MysqldExporter,
                AgentType::QanMysqlPerfschemaAgent,
            ),
            RdsEngine::Postgresql => (
                ServiceType::Postgresql,
                AgentType::PostgresExporter,
                AgentType::QanPostgresqlPgstatementsAgent,
            ),
        };
        let service = AddService {
            service_type: Some(service_type),
            service_name: or_instance(&self.service_name),
            node_id,
            address: Some(self.address.clone()),
            port: Some(self.port),
            environment: self.environment.clone(),
            cluster: self.cluster.clone(),
            replication_set: self.replication_set.clone(),
            custom_labels: self.custom_labels.clone(),
            database_name: self.database.clone(),
            ..AddService::default()
        };
        let service_id = {
            let id = ServiceId::from(d.new_id());
            create_service(d, &service, id)
        }?;
        for (wanted, t) in [(true, exporter_type), (self.qan, qan_type)] {
            if !wanted {
                continue;
            }
            let mut a = AddAgent::new(t);
            a.pmm_agent_id = Some(pmm_agent.clone());
            a.service_id = Some(service_id.clone());
            a.username = Some(self.username.clone());
            a.password = self.password.clone();
            a.tls = self.tls;
            a.tls_skip_verify = self.tls_skip_verify;
            a.skip_connection_check = self.skip_connection_check;
            if t.is_exporter() {
                a.push_metrics = push;
                a.agent_password = self.agent_password.clone();
            } else {
                a.qan = QanOptions {
                    max_query_length: self.max_query_length,
                    query_examples_disabled: self.disable_query_examples,
                    comments_parsing_disabled: self.disable_comments_parsing,
                    max_query_log_size: 0,
                };
            }
            a.mysql.tablestats_group_table_limit =
                tablestats_limit(self.tablestats_group_table_limit);
            if engine == RdsEngine::Postgresql {
                a.mysql = MysqlOptions::default();
                a.postgresql.max_exporter_connections = self.max_postgresql_exporter_connections;
                a.postgresql.auto_discovery_limit = Some(self.auto_discovery_limit);
            }
            create_agent(d, &a, CreateOpts::INVENTORY)?;
        }
        Ok(())
    }
}

/// Azure database kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AzureDatabaseType {
    Mysql,
    Postgresql,
}

/// Management AddAzureDatabase: a remote_azure_database node, the service, its exporter, an
/// optional azure_database_exporter and QAN agent, run by `pmm-server`'s pmm-agent.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddAzureDatabase {
    pub region: String,
    pub az: String,
    pub instance_id: String,
    pub node_model: String,
    pub address: String,
    pub port: u32,
    pub pmm_agent_id: Option<AgentId>,
    pub node_name: String,
    pub service_name: String,
    pub environment: String,
    pub custom_labels: Labels,
    pub username: String,
    pub password: Option<Sealed>,
    pub azure_client_id: String,
    pub azure_client_secret: Option<Sealed>,
    pub azure_tenant_id: String,
    pub azure_subscription_id: String,
    pub azure_resource_group: String,
    pub azure_database_exporter: bool,
    pub qan: bool,
    pub kind: Option<AzureDatabaseType>,
    pub skip_connection_check: bool,
    pub tls: bool,
    pub tls_skip_verify: bool,
    pub disable_query_examples: bool,
    pub tablestats_group_table_limit: i32,
}

impl AddAzureDatabase {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        for (field, v) in [
            ("region", &self.region),
            ("instance_id", &self.instance_id),
            ("address", &self.address),
            ("username", &self.username),
        ] {
            if v.is_empty() {
                return Err(Rejection::invalid(format!(
                    "{field}: value must not be empty."
                )));
            }
        }
        if self.port == 0 {
            return Err(Rejection::invalid("port: must be greater than 0."));
        }
        let kind = self
            .kind
            .ok_or_else(|| Rejection::invalid("Unsupported Azure database type."))?;
        let pmm_agent = self
            .pmm_agent_id
            .clone()
            .filter(|p| !p.0.is_empty())
            .unwrap_or_else(|| AgentId::from(PMM_SERVER_ID));
        let or_instance = |s: &String| {
            if s.is_empty() {
                self.instance_id.clone()
            } else {
                s.clone()
            }
        };
        let node = AddNode {
            node_type: Some(NodeType::RemoteAzureDatabase),
            node_name: or_instance(&self.node_name),
            address: self.instance_id.clone(),
            node_model: self.node_model.clone(),
            region: Some(self.region.clone()),
            az: self.az.clone(),
            ..AddNode::default()
        };
        let node_id = node.decide(d)?;
        let (service_type, exporter_type, qan_type, resource_type) = match kind {
            AzureDatabaseType::Mysql => (
                ServiceType::Mysql,
                AgentType::MysqldExporter,
                AgentType::QanMysqlPerfschemaAgent,
                "mysql",
            ),
            AzureDatabaseType::Postgresql => (
                ServiceType::Postgresql,
                AgentType::PostgresExporter,
                AgentType::QanPostgresqlPgstatementsAgent,
                "postgres",
            ),
        };
        let service = AddService {
            service_type: Some(service_type),
            service_name: or_instance(&self.service_name),
            node_id,
            address: Some(self.address.clone()),
            port: Some(self.port),
            environment: self.environment.clone(),
            custom_labels: self.custom_labels.clone(),
            ..AddService::default()
        };
        let service_id = {
            let id = ServiceId::from(d.new_id());
            create_service(d, &service, id)
        }?;
        for (wanted, t) in [(true, exporter_type), (self.qan, qan_type)] {
            if !wanted {
                continue;
            }
            let mut a = AddAgent::new(t);
            a.pmm_agent_id = Some(pmm_agent.clone());
            a.service_id = Some(service_id.clone());
            a.username = Some(self.username.clone());
            a.password = self.password.clone();
            a.tls = self.tls;
            a.tls_skip_verify = self.tls_skip_verify;
            a.qan.query_examples_disabled = self.disable_query_examples && t.is_qan();
            if service_type == ServiceType::Mysql {
                a.mysql.tablestats_group_table_limit =
                    tablestats_limit(self.tablestats_group_table_limit);
            }
            create_agent(d, &a, CreateOpts::INVENTORY)?;
        }
        if self.azure_database_exporter {
            // The management path attaches the azure exporter to the service (the inventory
            // path attaches it to the remote_azure_database node).
            let mut a = AddAgent::new(AgentType::AzureDatabaseExporter);
            a.pmm_agent_id = Some(pmm_agent);
            a.service_id = Some(service_id);
            a.azure = AzureOptions {
                subscription_id: self.azure_subscription_id.clone(),
                client_id: self.azure_client_id.clone(),
                client_secret: self.azure_client_secret.clone(),
                tenant_id: self.azure_tenant_id.clone(),
                resource_group: self.azure_resource_group.clone(),
                resource_type: resource_type.to_owned(),
            };
            create_agent(d, &a, CreateOpts::INVENTORY)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_aws_region;

    #[test]
    fn aws_regions_follow_pmm_pattern() {
        for ok in [
            "us-east-1",
            "eu-central-1",
            "ap-southeast-2",
            "us-gov-west-1",
            "cn-northwest-1",
            "il-central-1",
        ] {
            assert!(is_aws_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us-east",
            "us-east-0",
            "xx-east-1",
            "us-middle-1",
            "us-gov-north-1",
            "us-east-12",
        ] {
            assert!(!is_aws_region(bad), "{bad}");
        }
    }
}
