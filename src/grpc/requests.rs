//! Requests in PMM v3's API shapes (as normalised JSON: what the generated types serialise to)
//! turned into commands. Secrets are sealed here, before anything else sees them.
//!
//! proto3 JSON leaves out fields at their default value, so an absent plain field reads as its
//! default and an absent `optional` field as "keep".

use super::views::{agent_type_from_key, node_type_from_enum, service_type_from_enum};
use crate::commands::add_service::{
    AddAzureDatabase, AddManagedService, AddNodeParams, AddRdsService, AddServiceCommon,
    AzureDatabaseType, MetricsMode, RdsEngine, ServiceKind,
};
use crate::commands::agents::{AddAgent, ChangeAgent, RemoveAgent, ResolutionsChange};
use crate::commands::nodes::{AddNode, RemoveNode};
use crate::commands::register_node::RegisterNode;
use crate::commands::remove_service::RemoveManagedService;
use crate::commands::services::{AddService, ChangeService, RemoveService};
use crate::commands::settings::ChangeSettings;
use crate::commands::{Command, ErrorClass, Rejection};
use crate::crypto::Cipher;
use crate::domain::agent::{
    AwsOptions, AzureOptions, LogLevel, MongoOptions, MysqlOptions, PostgresqlOptions, QanOptions,
    ValkeyOptions,
};
use crate::domain::{AgentType, Labels, Sealed, ServiceType};
use serde_json::{Map, Value};
use std::time::Duration;

type Result<T> = std::result::Result<T, Rejection>;

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorClass::InvalidArgument, message)
}

/// Reads one JSON object of a request.
#[derive(Clone, Copy)]
pub struct P<'a> {
    obj: &'a Map<String, Value>,
    cipher: &'a Cipher,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> P<'a> {
    pub fn new(value: &'a Value, cipher: &'a Cipher) -> Self {
        Self {
            obj: value.as_object().unwrap_or(&EMPTY),
            cipher,
        }
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    pub fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }
    pub fn s(&self, k: &str) -> String {
        self.opt_s(k).unwrap_or_default()
    }
    /// An `optional string`: present (even empty) or not.
    pub fn opt_s(&self, k: &str) -> Option<String> {
        self.get(k).and_then(Value::as_str).map(str::to_owned)
    }
    /// A plain string where "" means "not given".
    pub fn nonempty(&self, k: &str) -> Option<String> {
        self.opt_s(k).filter(|s| !s.is_empty())
    }
    pub fn b(&self, k: &str) -> bool {
        self.opt_b(k).unwrap_or(false)
    }
    pub fn opt_b(&self, k: &str) -> Option<bool> {
        self.get(k).and_then(Value::as_bool)
    }
    /// An integer; 64-bit ones arrive as strings in protobuf JSON.
    pub fn opt_i64(&self, k: &str) -> Option<i64> {
        match self.get(k)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn i64(&self, k: &str) -> i64 {
        self.opt_i64(k).unwrap_or(0)
    }
    pub fn i32(&self, k: &str) -> i32 {
        self.opt_i32(k).unwrap_or(0)
    }
    pub fn opt_i32(&self, k: &str) -> Option<i32> {
        self.opt_i64(k).and_then(|v| i32::try_from(v).ok())
    }
    pub fn u32(&self, k: &str) -> u32 {
        self.opt_u32(k).unwrap_or(0)
    }
    pub fn opt_u32(&self, k: &str) -> Option<u32> {
        self.opt_i64(k).and_then(|v| u32::try_from(v).ok())
    }
    pub fn strings(&self, k: &str) -> Vec<String> {
        self.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn map(&self, k: &str) -> Labels {
        self.get(k)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// `common.StringMap`: absent = keep, present = replace (empty = clear).
    pub fn string_map(&self, k: &str) -> Option<Labels> {
        self.obj(k).map(|m| m.map("values"))
    }
    /// `common.StringArray`.
    pub fn string_array(&self, k: &str) -> Option<Vec<String>> {
        self.obj(k).map(|m| m.strings("values"))
    }
    /// A repeated message field: its objects (anything else in the list is skipped; the
    /// typed decoding before this refuses it).
    pub fn objects(&self, k: &str) -> Vec<P<'a>> {
        self.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_object)
                    .map(|obj| P {
                        obj,
                        cipher: self.cipher,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    /// A double: a JSON number, or protobuf JSON's "NaN" / "Infinity" spellings.
    pub fn f64(&self, k: &str) -> Option<f64> {
        match self.get(k)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn obj(&self, k: &str) -> Option<P<'a>> {
        self.get(k).and_then(Value::as_object).map(|obj| P {
            obj,
            cipher: self.cipher,
        })
    }
    /// A secret given in plain text, sealed at once; "" means none.
    pub fn secret(&self, k: &str) -> Option<Sealed> {
        self.nonempty(k).map(|s| self.cipher.seal(&s))
    }
    /// An `optional` secret: present (even "") or not. "" clears it.
    pub fn opt_secret(&self, k: &str) -> Option<Option<Sealed>> {
        self.opt_s(k)
            .map(|s| (!s.is_empty()).then(|| self.cipher.seal(&s)))
    }
    pub fn enum_name(&self, k: &str) -> Option<&'a str> {
        self.get(k).and_then(Value::as_str)
    }
    /// A `google.protobuf.Duration` ("5s", "1.5s"); zero or absent is `None`.
    pub fn duration(&self, k: &str) -> Result<Option<Duration>> {
        let Some(text) = self.opt_s(k) else {
            return Ok(None);
        };
        let d = parse_duration(&text)
            .ok_or_else(|| invalid(format!("{k}: invalid duration {text:?}")))?;
        Ok((!d.is_zero()).then_some(d))
    }
    /// The only key of a oneof object: `{"mysql": {...}}` -> ("mysql", params).
    pub fn oneof(&self, keys: &[&str]) -> Option<(&'a str, P<'a>)> {
        self.obj.iter().find_map(|(k, v)| {
            let obj = v.as_object()?;
            keys.contains(&k.as_str()).then_some((
                k.as_str(),
                P {
                    obj,
                    cipher: self.cipher,
                },
            ))
        })
    }
}

/// Parses protobuf JSON's duration: decimal seconds with an `s` suffix.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let num = text.strip_suffix('s')?;
    if num.starts_with('-') {
        return None;
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let secs: u64 = whole.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

fn log_level(p: &P<'_>, k: &str) -> Option<LogLevel> {
    match p.enum_name(k)? {
        "LOG_LEVEL_FATAL" => Some(LogLevel::Fatal),
        "LOG_LEVEL_ERROR" => Some(LogLevel::Error),
        "LOG_LEVEL_WARN" => Some(LogLevel::Warn),
        "LOG_LEVEL_INFO" => Some(LogLevel::Info),
        "LOG_LEVEL_DEBUG" => Some(LogLevel::Debug),
        _ => None,
    }
}

fn metrics_mode(p: &P<'_>) -> MetricsMode {
    match p.enum_name("metrics_mode") {
        Some("METRICS_MODE_PULL") => MetricsMode::Pull,
        Some("METRICS_MODE_PUSH") => MetricsMode::Push,
        _ => MetricsMode::Unspecified,
    }
}

// ---- inventory ----

const NODE_KEYS: [&str; 5] = [
    "generic",
    "container",
    "remote",
    "remote_rds",
    "remote_azure",
];

pub fn add_node(p: P<'_>) -> Result<Command> {
    let (key, n) = p.oneof(&NODE_KEYS).ok_or_else(|| {
        invalid("one of generic, container, remote, remote_rds, remote_azure is required")
    })?;
    let node_type = match key {
        "generic" => "NODE_TYPE_GENERIC_NODE",
        "container" => "NODE_TYPE_CONTAINER_NODE",
        "remote" => "NODE_TYPE_REMOTE_NODE",
        "remote_rds" => "NODE_TYPE_REMOTE_RDS_NODE",
        _ => "NODE_TYPE_REMOTE_AZURE_DATABASE_NODE",
    };
    Ok(Command::AddNode(AddNode {
        node_type: node_type_from_enum(node_type),
        node_name: n.s("node_name"),
        address: n.s("address"),
        machine_id: n.nonempty("machine_id"),
        distro: n.s("distro"),
        node_model: n.s("node_model"),
        region: n.nonempty("region"),
        az: n.s("az"),
        custom_labels: n.map("custom_labels"),
        container_id: n.nonempty("container_id"),
        container_name: n.nonempty("container_name"),
        instance_id: n.s("instance_id"),
    }))
}

pub fn remove_node(p: P<'_>) -> Command {
    Command::RemoveNode(RemoveNode {
        node_id: p.s("node_id").into(),
        force: p.b("force"),
    })
}

const SERVICE_KEYS: [&str; 7] = [
    "mysql",
    "mongodb",
    "postgresql",
    "proxysql",
    "haproxy",
    "external",
    "valkey",
];

fn service_type_of_key(key: &str) -> ServiceType {
    match key {
        "mysql" => ServiceType::Mysql,
        "mongodb" => ServiceType::Mongodb,
        "postgresql" => ServiceType::Postgresql,
        "proxysql" => ServiceType::Proxysql,
        "haproxy" => ServiceType::Haproxy,
        "external" => ServiceType::External,
        _ => ServiceType::Valkey,
    }
}

pub fn add_service(p: P<'_>) -> Result<Command> {
    let (key, s) = p.oneof(&SERVICE_KEYS).ok_or_else(|| {
        invalid(
            "one of mysql, mongodb, postgresql, proxysql, haproxy, external, valkey is required",
        )
    })?;
    Ok(Command::AddService(AddService {
        service_type: Some(service_type_of_key(key)),
        service_name: s.s("service_name"),
        node_id: s.s("node_id").into(),
        address: s.nonempty("address"),
        port: s.opt_u32("port").filter(|p| *p != 0),
        socket: s.nonempty("socket"),
        environment: s.s("environment"),
        cluster: s.s("cluster"),
        replication_set: s.s("replication_set"),
        custom_labels: s.map("custom_labels"),
        external_group: s.s("group"),
        ..AddService::default()
    }))
}

pub fn change_service(p: P<'_>) -> Command {
    Command::ChangeService(ChangeService {
        service_id: p.s("service_id").into(),
        environment: p.opt_s("environment"),
        cluster: p.opt_s("cluster"),
        replication_set: p.opt_s("replication_set"),
        external_group: p.opt_s("external_group"),
        custom_labels: p.string_map("custom_labels"),
    })
}

pub fn remove_service(p: P<'_>) -> Command {
    Command::RemoveService(RemoveService {
        service_id: p.s("service_id").into(),
        force: p.b("force"),
    })
}

/// The agent-type-specific option blocks, read from PMM's flat field names.
fn agent_options(
    t: AgentType,
    a: &P<'_>,
) -> (
    QanOptions,
    MysqlOptions,
    PostgresqlOptions,
    MongoOptions,
    ValkeyOptions,
) {
    let qan = QanOptions {
        max_query_length: a.i32("max_query_length"),
        max_query_log_size: a.i64("max_slowlog_file_size"),
        query_examples_disabled: a.b("disable_query_examples"),
        comments_parsing_disabled: a.b("disable_comments_parsing"),
    };
    let mysql = MysqlOptions {
        tls_ca: a.nonempty("tls_ca"),
        tls_cert: a.nonempty("tls_cert"),
        tls_key: a.secret("tls_key"),
        tablestats_group_table_limit: a.i32("tablestats_group_table_limit"),
        extra_dsn_params: a.map("extra_dsn_params"),
        ..MysqlOptions::default()
    };
    let postgresql = PostgresqlOptions {
        ssl_ca: a.nonempty("tls_ca"),
        ssl_cert: a.nonempty("tls_cert"),
        ssl_key: a.secret("tls_key"),
        auto_discovery_limit: a.opt_i32("auto_discovery_limit"),
        max_exporter_connections: a.i32("max_exporter_connections"),
        ..PostgresqlOptions::default()
    };
    let mongo = MongoOptions {
        tls_certificate_key: a.secret("tls_certificate_key"),
        tls_certificate_key_file_password: a.secret("tls_certificate_key_file_password"),
        tls_ca: a.nonempty("tls_ca"),
        authentication_mechanism: a.s("authentication_mechanism"),
        authentication_database: a.s("authentication_database"),
        stats_collections: a.strings("stats_collections"),
        collections_limit: a.i32("collections_limit"),
        enable_all_collectors: a.b("enable_all_collectors"),
    };
    let valkey = ValkeyOptions {
        ssl_ca: a.nonempty("tls_ca"),
        ssl_cert: a.nonempty("tls_cert"),
        ssl_key: a.secret("tls_key"),
    };
    // Each type keeps only its own block, as PMM stores them.
    use AgentType::*;
    match t {
        MysqldExporter | QanMysqlPerfschemaAgent | QanMysqlSlowlogAgent => (
            qan,
            mysql,
            PostgresqlOptions::default(),
            MongoOptions::default(),
            ValkeyOptions::default(),
        ),
        PostgresExporter | QanPostgresqlPgstatementsAgent | QanPostgresqlPgstatmonitorAgent => (
            qan,
            MysqlOptions::default(),
            postgresql,
            MongoOptions::default(),
            ValkeyOptions::default(),
        ),
        MongodbExporter | QanMongodbProfilerAgent | QanMongodbMongologAgent | RtaMongodbAgent => (
            qan,
            MysqlOptions::default(),
            PostgresqlOptions::default(),
            mongo,
            ValkeyOptions::default(),
        ),
        ValkeyExporter => (
            qan,
            MysqlOptions::default(),
            PostgresqlOptions::default(),
            MongoOptions::default(),
            valkey,
        ),
        _ => (
            qan,
            MysqlOptions::default(),
            PostgresqlOptions::default(),
            MongoOptions::default(),
            ValkeyOptions::default(),
        ),
    }
}

const AGENT_KEYS: [&str; 17] = [
    "pmm_agent",
    "node_exporter",
    "mysqld_exporter",
    "mongodb_exporter",
    "postgres_exporter",
    "proxysql_exporter",
    "external_exporter",
    "rds_exporter",
    "azure_database_exporter",
    "qan_mysql_perfschema_agent",
    "qan_mysql_slowlog_agent",
    "qan_mongodb_profiler_agent",
    "qan_mongodb_mongolog_agent",
    "qan_postgresql_pgstatements_agent",
    "qan_postgresql_pgstatmonitor_agent",
    "valkey_exporter",
    "rta_mongodb_agent",
];

pub fn add_agent(p: P<'_>) -> Result<Command> {
    let (key, a) = p.oneof(&AGENT_KEYS).ok_or_else(|| {
        invalid("an agent type (pmm_agent, node_exporter, mysqld_exporter, ...) is required")
    })?;
    let agent_type = agent_type_from_key(key).ok_or_else(|| invalid("unknown agent type"))?;
    let (qan, mysql, postgresql, mongo, valkey) = agent_options(agent_type, &a);
    Ok(Command::AddAgent(AddAgent {
        agent_type,
        pmm_agent_id: a.nonempty("pmm_agent_id").map(Into::into),
        runs_on_node_id: a.nonempty("runs_on_node_id").map(Into::into),
        node_id: a.nonempty("node_id").map(Into::into),
        service_id: a.nonempty("service_id").map(Into::into),
        custom_labels: a.map("custom_labels"),
        username: a.nonempty("username"),
        password: a.secret("password"),
        agent_password: a.secret("agent_password"),
        tls: a.b("tls"),
        tls_skip_verify: a.b("tls_skip_verify"),
        push_metrics: a.b("push_metrics"),
        disable_collectors: a.strings("disable_collectors"),
        expose_exporter: a.b("expose_exporter"),
        log_level: log_level(&a, "log_level"),
        listen_port: a.opt_u32("listen_port"),
        metrics_path: a.nonempty("metrics_path"),
        scheme: a.nonempty("scheme"),
        skip_connection_check: a.b("skip_connection_check"),
        qan,
        mysql,
        postgresql,
        mongo,
        valkey,
        aws: AwsOptions {
            aws_access_key: a.nonempty("aws_access_key"),
            aws_secret_key: a.secret("aws_secret_key"),
            rds_basic_metrics_disabled: a.b("disable_basic_metrics"),
            rds_enhanced_metrics_disabled: a.b("disable_enhanced_metrics"),
        },
        azure: AzureOptions {
            subscription_id: a.s("azure_subscription_id"),
            client_id: a.s("azure_client_id"),
            client_secret: a.secret("azure_client_secret"),
            tenant_id: a.s("azure_tenant_id"),
            resource_group: a.s("azure_resource_group"),
            resource_type: a.s("azure_database_resource_type"),
        },
    }))
}

/// ChangeAgent's oneof: AddAgent's, without pmm-agent (it has no change) and with
/// nomad-agent (it cannot be added).
static CHANGE_AGENT_KEYS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    AGENT_KEYS
        .iter()
        .copied()
        .filter(|k| *k != "pmm_agent")
        .chain(["nomad_agent"])
        .collect()
});

pub fn change_agent(p: P<'_>) -> Result<Command> {
    let (key, a) = p.oneof(&CHANGE_AGENT_KEYS).ok_or_else(|| {
        invalid("an agent type (node_exporter, mysqld_exporter, ...) is required")
    })?;
    let agent_type = agent_type_from_key(key).ok_or_else(|| invalid("unknown agent type"))?;
    let metrics_resolutions = match a.obj("metrics_resolutions") {
        Some(r) => Some(ResolutionsChange {
            hr: r.duration("hr")?,
            mr: r.duration("mr")?,
            lr: r.duration("lr")?,
        }),
        None => None,
    };
    let secret = |k: &str| a.opt_secret(k).flatten();
    Ok(Command::ChangeAgent(ChangeAgent {
        agent_id: p.s("agent_id").into(),
        agent_type,
        enable: a.opt_b("enable"),
        custom_labels: a.string_map("custom_labels"),
        enable_push_metrics: a.opt_b("enable_push_metrics"),
        metrics_resolutions,
        username: a.opt_s("username"),
        password: secret("password"),
        agent_password: secret("agent_password"),
        tls: a.opt_b("tls"),
        tls_skip_verify: a.opt_b("tls_skip_verify"),
        log_level: log_level(&a, "log_level"),
        expose_exporter: a.opt_b("expose_exporter"),
        disable_collectors: a
            .has("disable_collectors")
            .then(|| a.strings("disable_collectors")),
        listen_port: a.opt_u32("listen_port"),
        metrics_path: a.opt_s("metrics_path"),
        scheme: a.opt_s("scheme"),
        max_query_length: a.opt_i32("max_query_length"),
        disable_query_examples: a.opt_b("disable_query_examples"),
        disable_comments_parsing: a.opt_b("disable_comments_parsing"),
        max_slowlog_file_size: a.opt_i64("max_slowlog_file_size"),
        tablestats_group_table_limit: a.opt_i32("tablestats_group_table_limit"),
        aws_access_key: a.opt_s("aws_access_key"),
        aws_secret_key: secret("aws_secret_key"),
        azure_client_secret: secret("azure_client_secret"),
    }))
}

pub fn remove_agent(p: P<'_>) -> Command {
    Command::RemoveAgent(RemoveAgent {
        agent_id: p.s("agent_id").into(),
        force: p.b("force"),
    })
}

// ---- management ----

pub fn register_node(p: P<'_>) -> Command {
    Command::RegisterNode(RegisterNode {
        node_type: p.enum_name("node_type").and_then(node_type_from_enum),
        node_name: p.s("node_name"),
        address: p.s("address"),
        machine_id: p.nonempty("machine_id"),
        distro: p.s("distro"),
        container_id: p.nonempty("container_id"),
        container_name: p.nonempty("container_name"),
        node_model: p.s("node_model"),
        region: p.nonempty("region"),
        az: p.s("az"),
        custom_labels: p.map("custom_labels"),
        reregister: p.b("reregister"),
        metrics_mode: metrics_mode(&p),
        disable_collectors: p.strings("disable_collectors"),
        agent_password: p.secret("agent_password"),
        expose_exporter: p.b("expose_exporter"),
        instance_id: p.s("instance_id"),
        agent_token_hash: None,
    })
}

pub fn unregister_node(p: P<'_>) -> Command {
    remove_node(p)
}

fn add_node_params(p: P<'_>) -> AddNodeParams {
    AddNodeParams {
        node_type: p.enum_name("node_type").and_then(node_type_from_enum),
        node_name: p.s("node_name"),
        machine_id: p.nonempty("machine_id"),
        distro: p.s("distro"),
        container_id: p.nonempty("container_id"),
        container_name: p.nonempty("container_name"),
        node_model: p.s("node_model"),
        region: p.nonempty("region"),
        az: p.s("az"),
        custom_labels: p.map("custom_labels"),
    }
}

const MANAGED_KEYS: [&str; 8] = [
    "mysql",
    "mongodb",
    "postgresql",
    "proxysql",
    "haproxy",
    "external",
    "rds",
    "valkey",
];

pub fn add_managed_service(p: P<'_>) -> Result<Command> {
    let (key, s) = p.oneof(&MANAGED_KEYS).ok_or_else(|| {
        invalid("one of mysql, mongodb, postgresql, proxysql, haproxy, external, rds, valkey is required")
    })?;
    if key == "rds" {
        return add_rds(s);
    }
    let service_type = service_type_of_key(key);
    let agent_type = match service_type {
        ServiceType::Mysql => AgentType::MysqldExporter,
        ServiceType::Mongodb => AgentType::MongodbExporter,
        ServiceType::Postgresql => AgentType::PostgresExporter,
        ServiceType::Valkey => AgentType::ValkeyExporter,
        _ => AgentType::ProxysqlExporter,
    };
    let (mut qan, mysql, postgresql, mongo, valkey) = agent_options(agent_type, &s);
    qan.max_query_log_size = s.i64("max_slowlog_file_size");
    let common = AddServiceCommon {
        node_id: s.nonempty("node_id").map(Into::into),
        node_name: s.nonempty("node_name"),
        add_node: s.obj("add_node").map(add_node_params),
        service_name: s.s("service_name"),
        address: s.nonempty("address"),
        port: s.opt_u32("port").filter(|p| *p != 0),
        socket: s.nonempty("socket"),
        pmm_agent_id: s.nonempty("pmm_agent_id").map(Into::into),
        environment: s.s("environment"),
        cluster: s.s("cluster"),
        replication_set: s.s("replication_set"),
        custom_labels: s.map("custom_labels"),
        skip_connection_check: s.b("skip_connection_check"),
        metrics_mode: metrics_mode(&s),
        disable_collectors: s.strings("disable_collectors"),
        agent_password: s.secret("agent_password"),
        log_level: log_level(&s, "log_level"),
        expose_exporter: s.b("expose_exporter"),
        username: s.nonempty("username"),
        password: s.secret("password"),
        tls: s.b("tls"),
        tls_skip_verify: s.b("tls_skip_verify"),
    };
    let kind = match service_type {
        ServiceType::Mysql => ServiceKind::Mysql {
            qan_perfschema: s.b("qan_mysql_perfschema"),
            qan_slowlog: s.b("qan_mysql_slowlog"),
            mysql,
            qan,
        },
        ServiceType::Mongodb => ServiceKind::Mongodb {
            qan_profiler: s.b("qan_mongodb_profiler"),
            qan_mongolog: s.b("qan_mongodb_mongolog"),
            mongo,
            qan,
        },
        ServiceType::Postgresql => ServiceKind::Postgresql {
            database_name: s.s("database"),
            qan_pgstatements: s.b("qan_postgresql_pgstatements_agent"),
            qan_pgstatmonitor: s.b("qan_postgresql_pgstatmonitor_agent"),
            postgresql,
            qan,
        },
        ServiceType::Proxysql => ServiceKind::Proxysql,
        ServiceType::Valkey => ServiceKind::Valkey { valkey },
        ServiceType::Haproxy => ServiceKind::Haproxy {
            listen_port: s.opt_u32("listen_port"),
            scheme: s.nonempty("scheme"),
            metrics_path: s.nonempty("metrics_path"),
        },
        ServiceType::External => ServiceKind::External {
            runs_on_node_id: s.nonempty("runs_on_node_id").map(Into::into),
            listen_port: s.opt_u32("listen_port"),
            scheme: s.nonempty("scheme"),
            metrics_path: s.nonempty("metrics_path"),
            group: s.s("group"),
        },
    };
    Ok(Command::AddManagedService(AddManagedService {
        common,
        kind,
    }))
}

fn add_rds(s: P<'_>) -> Result<Command> {
    let engine = match s.enum_name("engine") {
        Some("DISCOVER_RDS_ENGINE_MYSQL") => Some(RdsEngine::Mysql),
        Some("DISCOVER_RDS_ENGINE_POSTGRESQL") => Some(RdsEngine::Postgresql),
        _ => None,
    };
    Ok(Command::AddRdsService(AddRdsService {
        region: s.s("region"),
        az: s.s("az"),
        instance_id: s.s("instance_id"),
        node_model: s.s("node_model"),
        address: s.s("address"),
        port: s.u32("port"),
        engine,
        pmm_agent_id: s.nonempty("pmm_agent_id").map(Into::into),
        node_name: s.s("node_name"),
        service_name: s.s("service_name"),
        environment: s.s("environment"),
        cluster: s.s("cluster"),
        replication_set: s.s("replication_set"),
        custom_labels: s.map("custom_labels"),
        username: s.s("username"),
        password: s.secret("password"),
        aws_access_key: s.nonempty("aws_access_key"),
        aws_secret_key: s.secret("aws_secret_key"),
        rds_exporter: s.b("rds_exporter"),
        // PMM takes the flag of the engine asked for.
        qan: match engine {
            Some(RdsEngine::Mysql) => s.b("qan_mysql_perfschema"),
            Some(RdsEngine::Postgresql) => s.b("qan_postgresql_pgstatements"),
            None => false,
        },
        skip_connection_check: s.b("skip_connection_check"),
        tls: s.b("tls"),
        tls_skip_verify: s.b("tls_skip_verify"),
        disable_query_examples: s.b("disable_query_examples"),
        tablestats_group_table_limit: s.i32("tablestats_group_table_limit"),
        disable_basic_metrics: s.b("disable_basic_metrics"),
        disable_enhanced_metrics: s.b("disable_enhanced_metrics"),
        metrics_mode: metrics_mode(&s),
        agent_password: s.secret("agent_password"),
        database: s.s("database"),
        max_postgresql_exporter_connections: s.i32("max_postgresql_exporter_connections"),
        auto_discovery_limit: s.i32("auto_discovery_limit"),
        disable_comments_parsing: s.b("disable_comments_parsing"),
        max_query_length: s.i32("max_query_length"),
    }))
}

pub fn add_azure_database(s: P<'_>) -> Command {
    let kind = match s.enum_name("type") {
        Some("DISCOVER_AZURE_DATABASE_TYPE_MYSQL") => Some(AzureDatabaseType::Mysql),
        Some("DISCOVER_AZURE_DATABASE_TYPE_POSTGRESQL") => Some(AzureDatabaseType::Postgresql),
        _ => None,
    };
    Command::AddAzureDatabase(AddAzureDatabase {
        region: s.s("region"),
        az: s.s("az"),
        instance_id: s.s("instance_id"),
        node_model: s.s("node_model"),
        address: s.s("address"),
        port: s.u32("port"),
        node_name: s.s("node_name"),
        service_name: s.s("service_name"),
        environment: s.s("environment"),
        custom_labels: s.map("custom_labels"),
        username: s.s("username"),
        password: s.secret("password"),
        azure_client_id: s.s("azure_client_id"),
        azure_client_secret: s.secret("azure_client_secret"),
        azure_tenant_id: s.s("azure_tenant_id"),
        azure_subscription_id: s.s("azure_subscription_id"),
        azure_resource_group: s.s("azure_resource_group"),
        azure_database_exporter: s.b("azure_database_exporter"),
        qan: s.b("qan"),
        kind,
        skip_connection_check: s.b("skip_connection_check"),
        tls: s.b("tls"),
        tls_skip_verify: s.b("tls_skip_verify"),
        disable_query_examples: s.b("disable_query_examples"),
        tablestats_group_table_limit: s.i32("tablestats_group_table_limit"),
        ..AddAzureDatabase::default()
    })
}

pub fn remove_managed_service(p: P<'_>) -> Command {
    Command::RemoveManagedService(RemoveManagedService {
        service_id_or_name: p.s("service_id"),
        service_type: p.enum_name("service_type").and_then(service_type_from_enum),
    })
}

// ---- server ----

pub fn change_settings(p: P<'_>) -> Result<Command> {
    if p.opt_b("enable_internal_pg_qan") == Some(true) {
        return Err(invalid(
            "enable_internal_pg_qan: this server has no internal PostgreSQL query analytics",
        ));
    }
    let res = p.obj("metrics_resolutions");
    let adv = p.obj("advisor_run_intervals");
    let dur = |o: Option<P<'_>>, k: &str| o.map(|o| o.duration(k)).transpose().map(Option::flatten);
    Ok(Command::ChangeSettings(ChangeSettings {
        enable_updates: p.opt_b("enable_updates"),
        enable_telemetry: p.opt_b("enable_telemetry"),
        metrics_resolutions_hr: dur(res, "hr")?,
        metrics_resolutions_mr: dur(res, "mr")?,
        metrics_resolutions_lr: dur(res, "lr")?,
        data_retention: p.duration("data_retention")?,
        ssh_key: p.opt_s("ssh_key"),
        aws_partitions: p.string_array("aws_partitions"),
        enable_advisor: p.opt_b("enable_advisor"),
        enable_alerting: p.opt_b("enable_alerting"),
        pmm_public_address: p.opt_s("pmm_public_address"),
        advisor_standard_interval: dur(adv, "standard_interval")?,
        advisor_rare_interval: dur(adv, "rare_interval")?,
        advisor_frequent_interval: dur(adv, "frequent_interval")?,
        enable_azurediscover: p.opt_b("enable_azurediscover"),
        enable_backup_management: p.opt_b("enable_backup_management"),
        enable_access_control: p.opt_b("enable_access_control"),
        ..ChangeSettings::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_protobuf_json_writes_them() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_duration("0.000000001s"),
            Some(Duration::from_nanos(1))
        );
        for bad in ["5", "-1s", "1.0000000001s", "s", "1.x s", "abc"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
