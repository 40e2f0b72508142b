//! Agents: pmm-agents, exporters and query-analytics collectors, with PMM's option groups.
//!
//! One struct for every type, as PMM stores them; which fields a type uses is decided by the
//! commands that create and change agents. Secrets are [`Sealed`].

use super::{AgentId, Labels, NodeId, NodeType, Sealed, ServiceId, ServiceType, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// PMM's agent types; serialized as PMM's model strings (note the mix of `_` and `-`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AgentType {
    #[serde(rename = "pmm-agent")]
    PmmAgent,
    #[serde(rename = "vmagent")]
    VmAgent,
    #[serde(rename = "node_exporter")]
    NodeExporter,
    #[serde(rename = "mysqld_exporter")]
    MysqldExporter,
    #[serde(rename = "mongodb_exporter")]
    MongodbExporter,
    #[serde(rename = "postgres_exporter")]
    PostgresExporter,
    #[serde(rename = "proxysql_exporter")]
    ProxysqlExporter,
    #[serde(rename = "valkey_exporter")]
    ValkeyExporter,
    #[serde(rename = "qan-mysql-perfschema-agent")]
    QanMysqlPerfschemaAgent,
    #[serde(rename = "qan-mysql-slowlog-agent")]
    QanMysqlSlowlogAgent,
    #[serde(rename = "qan-mongodb-profiler-agent")]
    QanMongodbProfilerAgent,
    #[serde(rename = "qan-mongodb-mongolog-agent")]
    QanMongodbMongologAgent,
    #[serde(rename = "qan-postgresql-pgstatements-agent")]
    QanPostgresqlPgstatementsAgent,
    #[serde(rename = "qan-postgresql-pgstatmonitor-agent")]
    QanPostgresqlPgstatmonitorAgent,
    #[serde(rename = "external-exporter")]
    ExternalExporter,
    #[serde(rename = "rds_exporter")]
    RdsExporter,
    #[serde(rename = "azure_database_exporter")]
    AzureDatabaseExporter,
    #[serde(rename = "nomad-agent")]
    NomadAgent,
    #[serde(rename = "rta-mongodb-agent")]
    RtaMongodbAgent,
}

/// How an agent attaches to the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `runs_on_node_id` (pmm-agent only).
    RunsOnNode,
    /// `node_id`, the pmm-agent's own node (node_exporter, vmagent, nomad-agent).
    PmmAgentNode,
    /// `node_id` given explicitly (rds and azure exporters; management AddAzureDatabase gives
    /// the azure exporter a `service_id` instead).
    Node,
    /// `service_id`.
    Service,
}

impl AgentType {
    pub const ALL: [AgentType; 19] = [
        AgentType::PmmAgent,
        AgentType::VmAgent,
        AgentType::NodeExporter,
        AgentType::MysqldExporter,
        AgentType::MongodbExporter,
        AgentType::PostgresExporter,
        AgentType::ProxysqlExporter,
        AgentType::ValkeyExporter,
        AgentType::QanMysqlPerfschemaAgent,
        AgentType::QanMysqlSlowlogAgent,
        AgentType::QanMongodbProfilerAgent,
        AgentType::QanMongodbMongologAgent,
        AgentType::QanPostgresqlPgstatementsAgent,
        AgentType::QanPostgresqlPgstatmonitorAgent,
        AgentType::ExternalExporter,
        AgentType::RdsExporter,
        AgentType::AzureDatabaseExporter,
        AgentType::NomadAgent,
        AgentType::RtaMongodbAgent,
    ];

    /// PMM's model value (`agents.agent_type`, the `agent_type` label).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentType::PmmAgent => "pmm-agent",
            AgentType::VmAgent => "vmagent",
            AgentType::NodeExporter => "node_exporter",
            AgentType::MysqldExporter => "mysqld_exporter",
            AgentType::MongodbExporter => "mongodb_exporter",
            AgentType::PostgresExporter => "postgres_exporter",
            AgentType::ProxysqlExporter => "proxysql_exporter",
            AgentType::ValkeyExporter => "valkey_exporter",
            AgentType::QanMysqlPerfschemaAgent => "qan-mysql-perfschema-agent",
            AgentType::QanMysqlSlowlogAgent => "qan-mysql-slowlog-agent",
            AgentType::QanMongodbProfilerAgent => "qan-mongodb-profiler-agent",
            AgentType::QanMongodbMongologAgent => "qan-mongodb-mongolog-agent",
            AgentType::QanPostgresqlPgstatementsAgent => "qan-postgresql-pgstatements-agent",
            AgentType::QanPostgresqlPgstatmonitorAgent => "qan-postgresql-pgstatmonitor-agent",
            AgentType::ExternalExporter => "external-exporter",
            AgentType::RdsExporter => "rds_exporter",
            AgentType::AzureDatabaseExporter => "azure_database_exporter",
            AgentType::NomadAgent => "nomad-agent",
            AgentType::RtaMongodbAgent => "rta-mongodb-agent",
        }
    }

    /// Where an agent of this type attaches.
    pub fn target(self) -> Target {
        use AgentType::*;
        match self {
            PmmAgent => Target::RunsOnNode,
            NodeExporter | VmAgent | NomadAgent => Target::PmmAgentNode,
            RdsExporter | AzureDatabaseExporter => Target::Node,
            MysqldExporter
            | MongodbExporter
            | PostgresExporter
            | ProxysqlExporter
            | ValkeyExporter
            | QanMysqlPerfschemaAgent
            | QanMysqlSlowlogAgent
            | QanMongodbProfilerAgent
            | QanMongodbMongologAgent
            | QanPostgresqlPgstatementsAgent
            | QanPostgresqlPgstatmonitorAgent
            | ExternalExporter
            | RtaMongodbAgent => Target::Service,
        }
    }

    /// Types created by the server itself when a pmm-agent connects, never by a user command.
    pub fn is_auto_managed(self) -> bool {
        matches!(
            self,
            AgentType::VmAgent | AgentType::NomadAgent | AgentType::RtaMongodbAgent
        )
    }

    /// Exporters produce scrape targets (and have listen ports, collectors, push mode).
    pub fn is_exporter(self) -> bool {
        use AgentType::*;
        matches!(
            self,
            NodeExporter
                | MysqldExporter
                | MongodbExporter
                | PostgresExporter
                | ProxysqlExporter
                | ValkeyExporter
                | ExternalExporter
                | RdsExporter
                | AzureDatabaseExporter
        )
    }

    /// Query-analytics agents (built into pmm-agent).
    pub fn is_qan(self) -> bool {
        use AgentType::*;
        matches!(
            self,
            QanMysqlPerfschemaAgent
                | QanMysqlSlowlogAgent
                | QanMongodbProfilerAgent
                | QanMongodbMongologAgent
                | QanPostgresqlPgstatementsAgent
                | QanPostgresqlPgstatmonitorAgent
        )
    }

    /// PMM's node-type compatibility table for agents given a `node_id`.
    pub fn allowed_on_node(self, node_type: NodeType) -> bool {
        match node_type {
            NodeType::Generic | NodeType::Container => true,
            NodeType::Remote => self == AgentType::ExternalExporter,
            NodeType::RemoteRds => self == AgentType::RdsExporter,
            NodeType::RemoteAzureDatabase => self == AgentType::AzureDatabaseExporter,
        }
    }

    /// PMM's service-type compatibility table. `haproxy_ok` is true on the management path,
    /// where an external exporter may scrape an HAProxy service.
    pub fn allowed_for_service(self, service_type: ServiceType, haproxy_ok: bool) -> bool {
        use AgentType::*;
        use ServiceType as S;
        match self {
            MysqldExporter | QanMysqlPerfschemaAgent | QanMysqlSlowlogAgent => {
                service_type == S::Mysql
            }
            MongodbExporter
            | QanMongodbProfilerAgent
            | QanMongodbMongologAgent
            | RtaMongodbAgent => service_type == S::Mongodb,
            PostgresExporter | QanPostgresqlPgstatementsAgent | QanPostgresqlPgstatmonitorAgent => {
                service_type == S::Postgresql
            }
            ProxysqlExporter => service_type == S::Proxysql,
            ValkeyExporter => service_type == S::Valkey,
            ExternalExporter => {
                service_type == S::External || (haproxy_ok && service_type == S::Haproxy)
            }
            RdsExporter | AzureDatabaseExporter => {
                matches!(service_type, S::Mysql | S::Postgresql)
            }
            PmmAgent | VmAgent | NodeExporter | NomadAgent => false,
        }
    }

    /// PMM's default log level when an add request leaves it unspecified.
    pub fn default_log_level(self) -> Option<LogLevel> {
        use AgentType::*;
        match self {
            NodeExporter | MysqldExporter | PostgresExporter | ValkeyExporter => {
                Some(LogLevel::Error)
            }
            MongodbExporter | AzureDatabaseExporter => Some(LogLevel::Fatal),
            t if t.is_qan() => Some(LogLevel::Fatal),
            _ => None,
        }
    }
}

/// PMM's agent status as reported by pmm-agents (stored as the enum name).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentStatus {
    /// pmm-agent and external-exporter rows keep an empty status in PMM.
    #[default]
    #[serde(rename = "")]
    None,
    #[serde(rename = "AGENT_STATUS_STARTING")]
    Starting,
    #[serde(rename = "AGENT_STATUS_RUNNING")]
    Running,
    #[serde(rename = "AGENT_STATUS_WAITING")]
    Waiting,
    #[serde(rename = "AGENT_STATUS_STOPPING")]
    Stopping,
    #[serde(rename = "AGENT_STATUS_DONE")]
    Done,
    #[serde(rename = "AGENT_STATUS_UNKNOWN")]
    Unknown,
    #[serde(rename = "AGENT_STATUS_INITIALIZATION_ERROR")]
    InitializationError,
}

impl AgentStatus {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::None => "",
            AgentStatus::Starting => "AGENT_STATUS_STARTING",
            AgentStatus::Running => "AGENT_STATUS_RUNNING",
            AgentStatus::Waiting => "AGENT_STATUS_WAITING",
            AgentStatus::Stopping => "AGENT_STATUS_STOPPING",
            AgentStatus::Done => "AGENT_STATUS_DONE",
            AgentStatus::Unknown => "AGENT_STATUS_UNKNOWN",
            AgentStatus::InitializationError => "AGENT_STATUS_INITIALIZATION_ERROR",
        }
    }
}

/// Exporter log level, stored lower-case like PMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Fatal,
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Fatal => "fatal",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// Per-agent scrape resolution overrides, in whole seconds; `None` means the global setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsResolutions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_secs: Option<u64>,
}

impl MetricsResolutions {
    pub fn is_empty(&self) -> bool {
        self.hr_secs.is_none() && self.mr_secs.is_none() && self.lr_secs.is_none()
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// An exporter's web-config password hash (bcrypt, sealed: it is a password verifier) and the
/// agent password it was computed from (`None`: the agent id, PMM's fallback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebAuth {
    pub for_password: Option<Sealed>,
    pub hash: Sealed,
}

/// `exporter_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExporterOptions {
    #[serde(skip_serializing_if = "is_default")]
    pub expose_exporter: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub push_metrics: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disabled_collectors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_resolutions: Option<MetricsResolutions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_scheme: Option<String>,
}

/// `qan_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QanOptions {
    #[serde(skip_serializing_if = "is_default")]
    pub max_query_length: i32,
    #[serde(skip_serializing_if = "is_default")]
    pub max_query_log_size: i64,
    #[serde(skip_serializing_if = "is_default")]
    pub query_examples_disabled: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub comments_parsing_disabled: bool,
}

/// `aws_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AwsOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_secret_key: Option<Sealed>,
    #[serde(skip_serializing_if = "is_default")]
    pub rds_basic_metrics_disabled: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub rds_enhanced_metrics_disabled: bool,
}

/// `azure_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AzureOptions {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subscription_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Sealed>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_group: String,
    /// `mysql`, `maria` or `postgres`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_type: String,
}

/// `mongo_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MongoOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_certificate_key: Option<Sealed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_certificate_key_file_password: Option<Sealed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub authentication_mechanism: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub authentication_database: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stats_collections: Vec<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub collections_limit: i32,
    #[serde(skip_serializing_if = "is_default")]
    pub enable_all_collectors: bool,
}

/// `mysql_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MysqlOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<Sealed>,
    /// Last seen table count (an observation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_count: Option<i32>,
    #[serde(skip_serializing_if = "is_default")]
    pub tablestats_group_table_limit: i32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_dsn_params: BTreeMap<String, String>,
}

/// `postgresql_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresqlOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key: Option<Sealed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_discovery_limit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgsm_version: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub max_exporter_connections: i32,
}

/// `valkey_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValkeyOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key: Option<Sealed>,
}

/// An agent as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: AgentId,
    pub agent_type: AgentType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on_node_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmm_agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<ServiceId>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub custom_labels: Labels,
    #[serde(default, skip_serializing_if = "is_default")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub status: AgentStatus,
    /// Live connection state of a pmm-agent (an observation).
    #[serde(default, skip_serializing_if = "is_default")]
    pub connected: bool,
    /// The stream a connected pmm-agent is on (a server-chosen id): a disconnect from an
    /// older stream, arriving late from another node, does not undo a newer connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the newest stream recorded for this pmm-agent opened (kept after it closes): a
    /// connection from an older stream, arriving late from another node, is not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_since: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_exec_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sealed>,
    /// Basic-auth password of the exporter's /metrics; PMM falls back to the agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_password: Option<Sealed>,
    /// The bcrypt hash of the exporter's basic-auth password for its web config, computed off
    /// the write path by the node serving its pmm-agent ([`crate::agents`]); used only while
    /// `for_password` is still the agent password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_auth: Option<WebAuth>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls_skip_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub exporter: ExporterOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub qan: QanOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub aws: AwsOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub azure: AzureOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub mongo: MongoOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub mysql: MysqlOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub postgresql: PostgresqlOptions,
    #[serde(default, skip_serializing_if = "is_default")]
    pub valkey: ValkeyOptions,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Agent {
    /// The recorded web-config hash, if it is for the current agent password.
    pub fn web_auth_hash(&self) -> Option<&Sealed> {
        self.web_auth
            .as_ref()
            .filter(|w| w.for_password == self.agent_password)
            .map(|w| &w.hash)
    }

    /// A new agent of `agent_type` with PMM's insert defaults (status UNKNOWN except for
    /// pmm-agent and external-exporter) and every option empty.
    pub fn new(agent_id: AgentId, agent_type: AgentType, now: Timestamp) -> Self {
        let status = match agent_type {
            AgentType::PmmAgent | AgentType::ExternalExporter => AgentStatus::None,
            _ => AgentStatus::Unknown,
        };
        Self {
            agent_id,
            agent_type,
            runs_on_node_id: None,
            pmm_agent_id: None,
            node_id: None,
            service_id: None,
            custom_labels: Labels::new(),
            disabled: false,
            status,
            connected: false,
            session: None,
            session_since: None,
            listen_port: None,
            version: None,
            process_exec_path: None,
            username: None,
            password: None,
            agent_password: None,
            web_auth: None,
            tls: false,
            tls_skip_verify: false,
            log_level: None,
            exporter: ExporterOptions::default(),
            qan: QanOptions::default(),
            aws: AwsOptions::default(),
            azure: AzureOptions::default(),
            mongo: MongoOptions::default(),
            mysql: MysqlOptions::default(),
            postgresql: PostgresqlOptions::default(),
            valkey: ValkeyOptions::default(),
            created_at: now,
            updated_at: now,
        }
    }
}
