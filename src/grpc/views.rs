//! Read models in PMM v3's API shapes, as JSON that the generated (pbjson) types accept.
//!
//! Each entity is first laid out flat, under every field name PMM's messages use for it, and
//! then cut down to the fields of its own message with the descriptor set, so one layout serves
//! the sixteen agent messages. Responses are assembled by field *type*: a field whose type is
//! `inventory.v1.MySQLdExporter` takes the mysqld_exporter agents, whatever the field is called
//! (`mysqld_exporter`, `vm_agent` / `vmagent`, `qan_mysql_perfschema`, ...).
//!
//! Secrets never appear: not in plain text, not sealed; only `is_*_set` flags.

use super::schema::Schema;
use crate::domain::agent::{Agent, AgentStatus, LogLevel, MetricsResolutions};
use crate::domain::{
    AgentId, AgentType, Node, NodeId, NodeType, Service, ServiceType, State, Timestamp,
};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// An entity and the message that shows it.
pub struct View {
    pub message: &'static str,
    pub value: Value,
}

pub fn node_message(t: NodeType) -> &'static str {
    match t {
        NodeType::Generic => "inventory.v1.GenericNode",
        NodeType::Container => "inventory.v1.ContainerNode",
        NodeType::Remote => "inventory.v1.RemoteNode",
        NodeType::RemoteRds => "inventory.v1.RemoteRDSNode",
        NodeType::RemoteAzureDatabase => "inventory.v1.RemoteAzureDatabaseNode",
    }
}

pub fn service_message(t: ServiceType) -> &'static str {
    match t {
        ServiceType::Mysql => "inventory.v1.MySQLService",
        ServiceType::Mongodb => "inventory.v1.MongoDBService",
        ServiceType::Postgresql => "inventory.v1.PostgreSQLService",
        ServiceType::Proxysql => "inventory.v1.ProxySQLService",
        ServiceType::Haproxy => "inventory.v1.HAProxyService",
        ServiceType::External => "inventory.v1.ExternalService",
        ServiceType::Valkey => "inventory.v1.ValkeyService",
    }
}

pub fn agent_message(t: AgentType) -> &'static str {
    use AgentType::*;
    match t {
        PmmAgent => "inventory.v1.PMMAgent",
        VmAgent => "inventory.v1.VMAgent",
        NodeExporter => "inventory.v1.NodeExporter",
        MysqldExporter => "inventory.v1.MySQLdExporter",
        MongodbExporter => "inventory.v1.MongoDBExporter",
        PostgresExporter => "inventory.v1.PostgresExporter",
        ProxysqlExporter => "inventory.v1.ProxySQLExporter",
        ValkeyExporter => "inventory.v1.ValkeyExporter",
        QanMysqlPerfschemaAgent => "inventory.v1.QANMySQLPerfSchemaAgent",
        QanMysqlSlowlogAgent => "inventory.v1.QANMySQLSlowlogAgent",
        QanMongodbProfilerAgent => "inventory.v1.QANMongoDBProfilerAgent",
        QanMongodbMongologAgent => "inventory.v1.QANMongoDBMongologAgent",
        QanPostgresqlPgstatementsAgent => "inventory.v1.QANPostgreSQLPgStatementsAgent",
        QanPostgresqlPgstatmonitorAgent => "inventory.v1.QANPostgreSQLPgStatMonitorAgent",
        ExternalExporter => "inventory.v1.ExternalExporter",
        RdsExporter => "inventory.v1.RDSExporter",
        AzureDatabaseExporter => "inventory.v1.AzureDatabaseExporter",
        NomadAgent => "inventory.v1.NomadAgent",
        RtaMongodbAgent => "inventory.v1.RTAMongoDBAgent",
    }
}

/// PMM's enum names.
pub fn node_type_enum(t: NodeType) -> &'static str {
    match t {
        NodeType::Generic => "NODE_TYPE_GENERIC_NODE",
        NodeType::Container => "NODE_TYPE_CONTAINER_NODE",
        NodeType::Remote => "NODE_TYPE_REMOTE_NODE",
        NodeType::RemoteRds => "NODE_TYPE_REMOTE_RDS_NODE",
        NodeType::RemoteAzureDatabase => "NODE_TYPE_REMOTE_AZURE_DATABASE_NODE",
    }
}

pub fn service_type_enum(t: ServiceType) -> &'static str {
    match t {
        ServiceType::Mysql => "SERVICE_TYPE_MYSQL_SERVICE",
        ServiceType::Mongodb => "SERVICE_TYPE_MONGODB_SERVICE",
        ServiceType::Postgresql => "SERVICE_TYPE_POSTGRESQL_SERVICE",
        ServiceType::Proxysql => "SERVICE_TYPE_PROXYSQL_SERVICE",
        ServiceType::Haproxy => "SERVICE_TYPE_HAPROXY_SERVICE",
        ServiceType::External => "SERVICE_TYPE_EXTERNAL_SERVICE",
        ServiceType::Valkey => "SERVICE_TYPE_VALKEY_SERVICE",
    }
}

pub fn agent_type_enum(t: AgentType) -> &'static str {
    use AgentType::*;
    match t {
        PmmAgent => "AGENT_TYPE_PMM_AGENT",
        VmAgent => "AGENT_TYPE_VM_AGENT",
        NodeExporter => "AGENT_TYPE_NODE_EXPORTER",
        MysqldExporter => "AGENT_TYPE_MYSQLD_EXPORTER",
        MongodbExporter => "AGENT_TYPE_MONGODB_EXPORTER",
        PostgresExporter => "AGENT_TYPE_POSTGRES_EXPORTER",
        ProxysqlExporter => "AGENT_TYPE_PROXYSQL_EXPORTER",
        ValkeyExporter => "AGENT_TYPE_VALKEY_EXPORTER",
        QanMysqlPerfschemaAgent => "AGENT_TYPE_QAN_MYSQL_PERFSCHEMA_AGENT",
        QanMysqlSlowlogAgent => "AGENT_TYPE_QAN_MYSQL_SLOWLOG_AGENT",
        QanMongodbProfilerAgent => "AGENT_TYPE_QAN_MONGODB_PROFILER_AGENT",
        QanMongodbMongologAgent => "AGENT_TYPE_QAN_MONGODB_MONGOLOG_AGENT",
        QanPostgresqlPgstatementsAgent => "AGENT_TYPE_QAN_POSTGRESQL_PGSTATEMENTS_AGENT",
        QanPostgresqlPgstatmonitorAgent => "AGENT_TYPE_QAN_POSTGRESQL_PGSTATMONITOR_AGENT",
        ExternalExporter => "AGENT_TYPE_EXTERNAL_EXPORTER",
        RdsExporter => "AGENT_TYPE_RDS_EXPORTER",
        AzureDatabaseExporter => "AGENT_TYPE_AZURE_DATABASE_EXPORTER",
        NomadAgent => "AGENT_TYPE_NOMAD_AGENT",
        RtaMongodbAgent => "AGENT_TYPE_RTA_MONGODB_AGENT",
    }
}

/// The request-side oneof key of each agent type (AddAgent / ChangeAgent).
pub fn agent_key(t: AgentType) -> &'static str {
    use AgentType::*;
    match t {
        PmmAgent => "pmm_agent",
        VmAgent => "vm_agent",
        NodeExporter => "node_exporter",
        MysqldExporter => "mysqld_exporter",
        MongodbExporter => "mongodb_exporter",
        PostgresExporter => "postgres_exporter",
        ProxysqlExporter => "proxysql_exporter",
        ValkeyExporter => "valkey_exporter",
        QanMysqlPerfschemaAgent => "qan_mysql_perfschema_agent",
        QanMysqlSlowlogAgent => "qan_mysql_slowlog_agent",
        QanMongodbProfilerAgent => "qan_mongodb_profiler_agent",
        QanMongodbMongologAgent => "qan_mongodb_mongolog_agent",
        QanPostgresqlPgstatementsAgent => "qan_postgresql_pgstatements_agent",
        QanPostgresqlPgstatmonitorAgent => "qan_postgresql_pgstatmonitor_agent",
        ExternalExporter => "external_exporter",
        RdsExporter => "rds_exporter",
        AzureDatabaseExporter => "azure_database_exporter",
        NomadAgent => "nomad_agent",
        RtaMongodbAgent => "rta_mongodb_agent",
    }
}

pub fn node_type_from_enum(s: &str) -> Option<NodeType> {
    NodeType::ALL.into_iter().find(|t| node_type_enum(*t) == s)
}
pub fn service_type_from_enum(s: &str) -> Option<ServiceType> {
    ServiceType::ALL
        .into_iter()
        .find(|t| service_type_enum(*t) == s)
}
pub fn agent_type_from_enum(s: &str) -> Option<AgentType> {
    AgentType::ALL
        .into_iter()
        .find(|t| agent_type_enum(*t) == s)
}
pub fn agent_type_from_key(s: &str) -> Option<AgentType> {
    AgentType::ALL.into_iter().find(|t| agent_key(*t) == s)
}

pub fn log_level_enum(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Fatal => "LOG_LEVEL_FATAL",
        LogLevel::Error => "LOG_LEVEL_ERROR",
        LogLevel::Warn => "LOG_LEVEL_WARN",
        LogLevel::Info => "LOG_LEVEL_INFO",
        LogLevel::Debug => "LOG_LEVEL_DEBUG",
    }
}

fn status_enum(s: AgentStatus) -> &'static str {
    match s {
        AgentStatus::None => "AGENT_STATUS_UNSPECIFIED",
        other => other.as_str(),
    }
}

/// A duration in protobuf JSON.
pub fn secs(s: u64) -> Value {
    Value::String(format!("{s}s"))
}

fn time(t: &Timestamp) -> Value {
    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn resolutions(r: &Option<MetricsResolutions>) -> Value {
    let r = r.unwrap_or_default();
    let mut m = Map::new();
    for (k, v) in [("hr", r.hr_secs), ("mr", r.mr_secs), ("lr", r.lr_secs)] {
        if let Some(v) = v {
            m.insert(k.to_owned(), secs(v));
        }
    }
    Value::Object(m)
}

fn cut(message: &'static str, value: Value) -> View {
    View {
        message,
        value: Schema::get().only_fields(message, value),
    }
}

pub fn node(n: &Node) -> View {
    cut(
        node_message(n.node_type),
        json!({
            "node_id": n.node_id,
            "node_name": n.node_name,
            "address": n.address,
            "machine_id": n.machine_id.clone().unwrap_or_default(),
            "distro": n.distro,
            "node_model": n.node_model,
            "region": n.region.clone().unwrap_or_default(),
            "az": n.az,
            "custom_labels": n.custom_labels,
            "container_id": n.container_id.clone().unwrap_or_default(),
            "container_name": n.container_name.clone().unwrap_or_default(),
            "instance_id": n.instance_id,
            "is_pmm_server_node": n.is_pmm_server_node,
        }),
    )
}

pub fn service(s: &Service) -> View {
    cut(
        service_message(s.service_type),
        json!({
            "service_id": s.service_id,
            "service_name": s.service_name,
            "node_id": s.node_id,
            "database_name": s.database_name,
            "address": s.address.clone().unwrap_or_default(),
            "port": s.port.unwrap_or_default(),
            "socket": s.socket.clone().unwrap_or_default(),
            "environment": s.environment,
            "cluster": s.cluster,
            "replication_set": s.replication_set,
            "custom_labels": s.custom_labels,
            "version": s.version.clone().unwrap_or_default(),
            "group": s.external_group,
        }),
    )
}

/// Every field any agent message may show, under PMM's names.
fn agent_flat(a: &Agent) -> Value {
    let (tls_ca, tls_cert) = match a.agent_type {
        AgentType::PostgresExporter
        | AgentType::QanPostgresqlPgstatementsAgent
        | AgentType::QanPostgresqlPgstatmonitorAgent => {
            (a.postgresql.ssl_ca.clone(), a.postgresql.ssl_cert.clone())
        }
        AgentType::ValkeyExporter => (a.valkey.ssl_ca.clone(), a.valkey.ssl_cert.clone()),
        AgentType::MongodbExporter
        | AgentType::QanMongodbProfilerAgent
        | AgentType::QanMongodbMongologAgent
        | AgentType::RtaMongodbAgent => (a.mongo.tls_ca.clone(), None),
        _ => (a.mysql.tls_ca.clone(), a.mysql.tls_cert.clone()),
    };
    json!({
        "agent_id": a.agent_id,
        "pmm_agent_id": a.pmm_agent_id,
        "runs_on_node_id": a.runs_on_node_id,
        "node_id": a.node_id,
        "service_id": a.service_id,
        "disabled": a.disabled,
        "connected": a.connected,
        "custom_labels": a.custom_labels,
        "status": status_enum(a.status),
        "listen_port": a.listen_port.unwrap_or_default(),
        "process_exec_path": a.process_exec_path.clone().unwrap_or_default(),
        "version": a.version.clone().unwrap_or_default(),
        "log_level": a.log_level.map(log_level_enum).unwrap_or("LOG_LEVEL_UNSPECIFIED"),
        "username": a.username.clone().unwrap_or_default(),
        "tls": a.tls,
        "tls_skip_verify": a.tls_skip_verify,
        "tls_ca": tls_ca.unwrap_or_default(),
        "tls_cert": tls_cert.unwrap_or_default(),
        "push_metrics_enabled": a.exporter.push_metrics,
        "disabled_collectors": a.exporter.disabled_collectors,
        "expose_exporter": a.exporter.expose_exporter,
        "metrics_resolutions": resolutions(&a.exporter.metrics_resolutions),
        "metrics_path": a.exporter.metrics_path.clone().unwrap_or_default(),
        "scheme": a.exporter.metrics_scheme.clone().unwrap_or_default(),
        "max_query_length": a.qan.max_query_length,
        "max_slowlog_file_size": a.qan.max_query_log_size,
        "query_examples_disabled": a.qan.query_examples_disabled,
        "disable_comments_parsing": a.qan.comments_parsing_disabled,
        "tablestats_group_table_limit": a.mysql.tablestats_group_table_limit,
        // PMM: table stats are off when the limit is set and the server has more tables.
        "tablestats_group_disabled": a.mysql.tablestats_group_table_limit < 0
            || (a.mysql.tablestats_group_table_limit != 0
                && a.mysql.table_count.is_some_and(|c| c > a.mysql.tablestats_group_table_limit)),
        "table_count": a.mysql.table_count.unwrap_or_default(),
        "extra_dsn_params": a.mysql.extra_dsn_params,
        "aws_access_key": a.aws.aws_access_key.clone().unwrap_or_default(),
        "basic_metrics_disabled": a.aws.rds_basic_metrics_disabled,
        "enhanced_metrics_disabled": a.aws.rds_enhanced_metrics_disabled,
        "azure_database_subscription_id": a.azure.subscription_id,
        "azure_database_resource_type": a.azure.resource_type,
        "stats_collections": a.mongo.stats_collections,
        "collections_limit": a.mongo.collections_limit,
        "enable_all_collectors": a.mongo.enable_all_collectors,
        "auto_discovery_limit": a.postgresql.auto_discovery_limit.unwrap_or_default(),
        "max_exporter_connections": a.postgresql.max_exporter_connections,
    })
}

pub fn agent(a: &Agent) -> View {
    cut(agent_message(a.agent_type), agent_flat(a))
}

/// Fills `message` from `views`: each field whose type is a view's message takes it (every
/// matching view for a repeated field, the first for a single one).
pub fn assemble(message: &str, views: &[View]) -> Value {
    let mut out = Map::new();
    for f in Schema::get().fields(message) {
        let mut matching = views.iter().filter(|v| v.message == f.type_name);
        if f.repeated {
            let all: Vec<Value> = matching.map(|v| v.value.clone()).collect();
            if !all.is_empty() {
                out.insert(f.name.clone(), Value::Array(all));
            }
        } else if let Some(v) = matching.next() {
            // A oneof takes one member only.
            if f.oneof.is_some()
                && Schema::get()
                    .fields(message)
                    .iter()
                    .any(|g| g.oneof == f.oneof && out.contains_key(&g.name))
            {
                continue;
            }
            out.insert(f.name.clone(), v.value.clone());
        }
    }
    Value::Object(out)
}

// ---- management's universal views ----

pub fn universal_node(state: &State, n: &Node) -> Value {
    // Through the indexes: a list of every node stays linear in the inventory.
    let mut ids = state.agents_with_node(&n.node_id);
    ids.extend(state.agents_running_on_node(&n.node_id));
    ids.sort();
    ids.dedup();
    let agents: Vec<&Agent> = ids
        .iter()
        .filter_map(|id| state.agents.get(id))
        .map(|a| &**a)
        .collect();
    let services: Vec<Value> = state
        .services_on_node(&n.node_id)
        .iter()
        .filter_map(|id| state.services.get(id))
        .map(|s| {
            json!({
                "service_id": s.service_id,
                "service_type": s.service_type.as_str(),
                "service_name": s.service_name,
            })
        })
        .collect();
    json!({
        "node_id": n.node_id,
        "node_type": n.node_type.as_str(),
        "node_name": n.node_name,
        "machine_id": n.machine_id.clone().unwrap_or_default(),
        "distro": n.distro,
        "node_model": n.node_model,
        "container_id": n.container_id.clone().unwrap_or_default(),
        "container_name": n.container_name.clone().unwrap_or_default(),
        "address": n.address,
        "region": n.region.clone().unwrap_or_default(),
        "az": n.az,
        "custom_labels": n.custom_labels,
        "created_at": time(&n.created_at),
        "updated_at": time(&n.updated_at),
        "status": "STATUS_UNKNOWN",
        "agents": agents.iter().map(|a| json!({
            "agent_id": a.agent_id,
            "agent_type": a.agent_type.as_str(),
            "status": status_enum(a.status),
            "is_connected": a.connected,
        })).collect::<Vec<_>>(),
        "services": services,
        "instance_id": n.instance_id,
        "is_pmm_server_node": n.is_pmm_server_node,
    })
}

pub fn universal_agent(a: &Agent) -> Value {
    json!({
        "agent_id": a.agent_id,
        "is_agent_password_set": a.agent_password.is_some(),
        "agent_type": a.agent_type.as_str(),
        "aws_access_key": a.aws.aws_access_key.clone().unwrap_or_default(),
        "is_aws_secret_key_set": a.aws.aws_secret_key.is_some(),
        "azure_options": {
            "client_id": a.azure.client_id,
            "is_client_secret_set": a.azure.client_secret.is_some(),
            "resource_group": a.azure.resource_group,
            "subscription_id": a.azure.subscription_id,
            "tenant_id": a.azure.tenant_id,
        },
        "created_at": time(&a.created_at),
        "custom_labels": a.custom_labels,
        "disabled": a.disabled,
        "disabled_collectors": a.exporter.disabled_collectors,
        "listen_port": a.listen_port.unwrap_or_default(),
        "log_level": a.log_level.map(log_level_enum).unwrap_or("LOG_LEVEL_UNSPECIFIED"),
        "max_query_length": a.qan.max_query_length,
        "max_query_log_size": a.qan.max_query_log_size,
        "metrics_path": a.exporter.metrics_path.clone().unwrap_or_default(),
        "metrics_scheme": a.exporter.metrics_scheme.clone().unwrap_or_default(),
        "mongo_db_options": {
            "is_tls_certificate_key_set": a.mongo.tls_certificate_key.is_some(),
            "is_tls_certificate_key_file_password_set": a.mongo.tls_certificate_key_file_password.is_some(),
            "authentication_mechanism": a.mongo.authentication_mechanism,
            "authentication_database": a.mongo.authentication_database,
            "stats_collections": a.mongo.stats_collections,
            "collections_limit": a.mongo.collections_limit,
            "enable_all_collectors": a.mongo.enable_all_collectors,
        },
        "mysql_options": {
            "is_tls_key_set": a.mysql.tls_key.is_some(),
            "extra_dsn_params": a.mysql.extra_dsn_params,
        },
        "node_id": a.node_id,
        "is_password_set": a.password.is_some(),
        "pmm_agent_id": a.pmm_agent_id,
        "postgresql_options": {
            "is_ssl_key_set": a.postgresql.ssl_key.is_some(),
            "auto_discovery_limit": a.postgresql.auto_discovery_limit.unwrap_or_default(),
            "max_exporter_connections": a.postgresql.max_exporter_connections,
        },
        "process_exec_path": a.process_exec_path.clone().unwrap_or_default(),
        "push_metrics": a.exporter.push_metrics,
        "query_examples_disabled": a.qan.query_examples_disabled,
        "comments_parsing_disabled": a.qan.comments_parsing_disabled,
        "rds_basic_metrics_disabled": a.aws.rds_basic_metrics_disabled,
        "rds_enhanced_metrics_disabled": a.aws.rds_enhanced_metrics_disabled,
        "runs_on_node_id": a.runs_on_node_id,
        "service_id": a.service_id,
        "status": status_enum(a.status),
        "table_count": a.mysql.table_count.unwrap_or_default(),
        "table_count_tablestats_group_limit": a.mysql.tablestats_group_table_limit,
        "tls": a.tls,
        "tls_skip_verify": a.tls_skip_verify,
        "username": a.username.clone().unwrap_or_default(),
        "updated_at": time(&a.updated_at),
        "version": a.version.clone().unwrap_or_default(),
        "is_connected": a.connected,
        "expose_exporter": a.exporter.expose_exporter,
    })
}

/// pmm-agents (by `runs_on_node_id`) and vmagents (by `node_id`) per node: one pass over the
/// agents, so listing every service stays linear however many agents share a node.
pub fn node_level_agents(state: &State) -> HashMap<NodeId, Vec<AgentId>> {
    let mut by_node: HashMap<NodeId, Vec<AgentId>> = HashMap::new();
    for a in state.agents.values() {
        let node = match a.agent_type {
            AgentType::PmmAgent => a.runs_on_node_id.as_ref(),
            AgentType::VmAgent => a.node_id.as_ref(),
            _ => None,
        };
        if let Some(n) = node {
            by_node
                .entry(n.clone())
                .or_default()
                .push(a.agent_id.clone());
        }
    }
    by_node
}

/// PMM's service view: the service's agents, plus the pmm-agents and vmagents of its node
/// (`node_agents` from [`node_level_agents`]).
pub fn universal_service(
    state: &State,
    s: &Service,
    node_agents: &HashMap<NodeId, Vec<AgentId>>,
) -> Value {
    let mut ids = state.agents_of_service(&s.service_id);
    ids.extend(node_agents.get(&s.node_id).into_iter().flatten().cloned());
    ids.sort();
    ids.dedup();
    let agents: Vec<&Agent> = ids
        .iter()
        .filter_map(|id| state.agents.get(id))
        .map(|a| &**a)
        .collect();
    json!({
        "service_id": s.service_id,
        "service_type": s.service_type.as_str(),
        "service_name": s.service_name,
        "database_name": s.database_name,
        "node_id": s.node_id,
        "node_name": state.nodes.get(&s.node_id).map(|n| n.node_name.clone()).unwrap_or_default(),
        "environment": s.environment,
        "cluster": s.cluster,
        "replication_set": s.replication_set,
        "custom_labels": s.custom_labels,
        "external_group": s.external_group,
        "address": s.address.clone().unwrap_or_default(),
        "port": s.port.unwrap_or_default(),
        "socket": s.socket.clone().unwrap_or_default(),
        "created_at": time(&s.created_at),
        "updated_at": time(&s.updated_at),
        "agents": agents.into_iter().map(universal_agent).collect::<Vec<_>>(),
        "status": "STATUS_UNKNOWN",
        "version": s.version.clone().unwrap_or_default(),
    })
}
