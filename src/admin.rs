//! `pmm-cp admin`: a pmm-admin-like client of the public gRPC API (and of the query API for
//! the event history). Tables for people, `--json` for scripts, a spinner while it waits, and
//! exit codes a script can test:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | any other failure |
//! | 2 | bad usage (flags) |
//! | 3 | the server refused the request as invalid (InvalidArgument, FailedPrecondition) |
//! | 4 | not found |
//! | 5 | already exists |
//! | 6 | not authenticated or not allowed |
//! | 7 | the server is unavailable or did not answer in time |

use crate::grpc::pb::inventory::v1 as inv;
use crate::grpc::pb::management::v1 as mgmt;
use crate::grpc::pb::server::v1 as srv;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The server's API address (gRPC and REST share it).
    #[arg(
        long,
        env = "PMM_CP_SERVER",
        default_value = "http://127.0.0.1:7772",
        global = true
    )]
    pub server: String,
    /// The API token (default: read from --token-file).
    #[arg(long, env = "PMM_CP_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token (the first start writes `<data-dir>/admin.token`).
    #[arg(
        long,
        env = "PMM_CP_TOKEN_FILE",
        default_value = "./data/admin.token",
        global = true
    )]
    pub token_file: PathBuf,
    /// Print JSON (the API's own shape) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout: u64,
    #[command(subcommand)]
    pub op: AdminOp,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminOp {
    /// Server version, readiness and whether this node leads.
    Status,
    /// Register a node (with its pmm-agent and node_exporter), as `pmm-admin config` does.
    Register(RegisterArgs),
    /// Add a service with its exporter and query-analytics agents.
    Add {
        #[command(subcommand)]
        kind: AddKind,
    },
    /// List nodes, services and agents.
    List {
        /// Only this node's services and agents.
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Remove a service (by name or id) with all its agents.
    Remove {
        /// Its type, checked against the service found.
        #[arg(value_enum)]
        service_type: ServiceKindArg,
        /// The service's name or id.
        service: String,
    },
    /// Unregister a node; `--force` also removes everything on it.
    Unregister {
        node_id: String,
        #[arg(long)]
        force: bool,
    },
    /// Show or change the server settings.
    Settings {
        #[command(subcommand)]
        op: SettingsOp,
    },
    /// The event history (needs an auditor or admin token).
    Events {
        /// Events after this position.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only this stream, e.g. `node-<id>` or `settings`.
        #[arg(long)]
        stream: Option<String>,
        /// Only these event types (comma-separated).
        #[arg(long)]
        event_type: Option<String>,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceKindArg {
    Mysql,
    Mongodb,
    Postgresql,
    Proxysql,
    Haproxy,
    External,
    Valkey,
}

impl ServiceKindArg {
    fn enum_name(self) -> &'static str {
        match self {
            ServiceKindArg::Mysql => "SERVICE_TYPE_MYSQL_SERVICE",
            ServiceKindArg::Mongodb => "SERVICE_TYPE_MONGODB_SERVICE",
            ServiceKindArg::Postgresql => "SERVICE_TYPE_POSTGRESQL_SERVICE",
            ServiceKindArg::Proxysql => "SERVICE_TYPE_PROXYSQL_SERVICE",
            ServiceKindArg::Haproxy => "SERVICE_TYPE_HAPROXY_SERVICE",
            ServiceKindArg::External => "SERVICE_TYPE_EXTERNAL_SERVICE",
            ServiceKindArg::Valkey => "SERVICE_TYPE_VALKEY_SERVICE",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MetricsModeArg {
    Auto,
    Push,
    Pull,
}

impl MetricsModeArg {
    fn enum_name(self) -> &'static str {
        match self {
            MetricsModeArg::Auto => "METRICS_MODE_UNSPECIFIED",
            MetricsModeArg::Push => "METRICS_MODE_PUSH",
            MetricsModeArg::Pull => "METRICS_MODE_PULL",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RegisterArgs {
    /// The node's name.
    #[arg(long)]
    pub node_name: String,
    #[arg(long)]
    pub address: String,
    /// generic or container.
    #[arg(long, default_value = "generic", value_parser = ["generic", "container"])]
    pub node_type: String,
    #[arg(long)]
    pub machine_id: Option<String>,
    #[arg(long)]
    pub distro: Option<String>,
    #[arg(long)]
    pub container_id: Option<String>,
    #[arg(long)]
    pub container_name: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub az: Option<String>,
    /// `key=value`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub custom_labels: Vec<String>,
    /// Replace a node of the same name.
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub metrics_mode: MetricsModeArg,
    #[arg(long, value_delimiter = ',')]
    pub disable_collectors: Vec<String>,
}

/// What every database service takes.
#[derive(Debug, Clone, Args)]
pub struct DbServiceArgs {
    /// The service's name.
    pub name: String,
    /// `host:port` of the database.
    pub address: Option<String>,
    /// A unix socket instead of host:port.
    #[arg(long)]
    pub socket: Option<String>,
    /// The pmm-agent that runs its exporter.
    #[arg(long)]
    pub pmm_agent_id: String,
    #[command(flatten)]
    pub placement: Placement,
    #[arg(long)]
    pub username: Option<String>,
    /// The database password (better from PMM_CP_SERVICE_PASSWORD: arguments show in `ps`).
    #[arg(long, env = "PMM_CP_SERVICE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    #[arg(long)]
    pub skip_connection_check: bool,
    #[arg(long)]
    pub tls: bool,
    #[arg(long)]
    pub tls_skip_verify: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub metrics_mode: MetricsModeArg,
    #[arg(long, value_delimiter = ',')]
    pub disable_collectors: Vec<String>,
    /// Query analytics source: mysql perfschema|slowlog, postgresql pgstatements|pgstatmonitor,
    /// mongodb profiler|mongolog, or none.
    #[arg(long, default_value = "none")]
    pub query_source: String,
    /// PostgreSQL: the database to connect to.
    #[arg(long)]
    pub database: Option<String>,
}

/// Where a service runs and how it is labelled.
#[derive(Debug, Clone, Args)]
pub struct Placement {
    /// The node it runs on (id); or --node-name.
    #[arg(long)]
    pub node_id: Option<String>,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long)]
    pub environment: Option<String>,
    #[arg(long)]
    pub cluster: Option<String>,
    #[arg(long)]
    pub replication_set: Option<String>,
    /// `key=value`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub custom_labels: Vec<String>,
}

impl Placement {
    /// The request fields it sets.
    fn fields(&self) -> anyhow::Result<Map<String, Value>> {
        let v = json!({
            "node_id": self.node_id,
            "node_name": self.node_name,
            "environment": self.environment,
            "cluster": self.cluster,
            "replication_set": self.replication_set,
            "custom_labels": labels(&self.custom_labels)?,
        });
        Ok(v.as_object().cloned().unwrap_or_default())
    }
}

#[derive(Debug, Clone, Args)]
pub struct ScrapedServiceArgs {
    pub name: String,
    #[command(flatten)]
    pub placement: Placement,
    /// Where its metrics are served.
    #[arg(long)]
    pub listen_port: u32,
    #[arg(long)]
    pub metrics_path: Option<String>,
    #[arg(long)]
    pub scheme: Option<String>,
    /// External: the node its exporter runs on.
    #[arg(long)]
    pub runs_on_node_id: Option<String>,
    /// External: the group (default "external").
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CloudArgs {
    /// The instance id (also the default node and service name).
    #[arg(long)]
    pub instance_id: String,
    #[arg(long)]
    pub region: String,
    #[arg(long)]
    pub address: String,
    #[arg(long)]
    pub port: u32,
    /// mysql or postgresql.
    #[arg(long, value_parser = ["mysql", "postgresql"])]
    pub engine: String,
    #[arg(long)]
    pub username: String,
    #[arg(long, env = "PMM_CP_SERVICE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Also add query analytics.
    #[arg(long)]
    pub qan: bool,
    #[arg(long)]
    pub skip_connection_check: bool,
    /// RDS: also add the rds_exporter, with these AWS keys.
    #[arg(long)]
    pub rds_exporter: bool,
    #[arg(long)]
    pub aws_access_key: Option<String>,
    #[arg(long, env = "PMM_CP_AWS_SECRET_KEY", hide_env_values = true)]
    pub aws_secret_key: Option<String>,
    /// Azure: credentials and resource group (all needed for Azure).
    #[arg(long)]
    pub azure_client_id: Option<String>,
    #[arg(long, env = "PMM_CP_AZURE_CLIENT_SECRET", hide_env_values = true)]
    pub azure_client_secret: Option<String>,
    #[arg(long)]
    pub azure_tenant_id: Option<String>,
    #[arg(long)]
    pub azure_subscription_id: Option<String>,
    #[arg(long)]
    pub azure_resource_group: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AddKind {
    Mysql(DbServiceArgs),
    Postgresql(DbServiceArgs),
    Mongodb(DbServiceArgs),
    Proxysql(DbServiceArgs),
    Valkey(DbServiceArgs),
    Haproxy(ScrapedServiceArgs),
    External(ScrapedServiceArgs),
    /// An Amazon RDS instance (node, service, exporters).
    Rds(CloudArgs),
    /// An Azure database (node, service, exporters).
    Azure(CloudArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum SettingsOp {
    Show,
    /// Change settings; only the flags given change.
    Change {
        /// e.g. 30d, 720h.
        #[arg(long)]
        data_retention: Option<String>,
        /// High/medium/low resolution, e.g. 5s.
        #[arg(long)]
        metrics_resolution_hr: Option<String>,
        #[arg(long)]
        metrics_resolution_mr: Option<String>,
        #[arg(long)]
        metrics_resolution_lr: Option<String>,
        #[arg(long)]
        enable_telemetry: Option<bool>,
        #[arg(long)]
        enable_updates: Option<bool>,
        #[arg(long)]
        enable_alerting: Option<bool>,
        #[arg(long)]
        enable_advisor: Option<bool>,
        #[arg(long)]
        pmm_public_address: Option<String>,
    },
}

/// A failure with the exit code scripts see.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: u8,
    message: String,
}

impl AdminError {
    fn usage(message: impl Into<String>) -> anyhow::Error {
        AdminError {
            code: 2,
            message: message.into(),
        }
        .into()
    }
}

fn from_status(s: Status) -> anyhow::Error {
    let code = match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 3,
        Code::NotFound => 4,
        Code::AlreadyExists => 5,
        Code::Unauthenticated | Code::PermissionDenied => 6,
        Code::Unavailable | Code::DeadlineExceeded => 7,
        _ => 1,
    };
    AdminError {
        code,
        message: format!("{}: {}", crate::grpc::code_name(s.code()), s.message()),
    }
    .into()
}

/// The exit code for an error from [`run`].
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<AdminError>().map_or(1, |a| a.code)
}

struct Client {
    channel: Channel,
    token: String,
    args: AdminArgs,
}

impl Client {
    fn request<T>(&self, msg: T) -> Result<Request<T>, anyhow::Error> {
        let mut r = Request::new(msg);
        r.set_timeout(Duration::from_secs(self.args.timeout));
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| AdminError::usage("the token has characters a header cannot carry"))?,
        );
        Ok(r)
    }
}

/// Builds a request type from its JSON (grpc-gateway's shape, as the REST API takes it).
fn typed<T: DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).map_err(|e| AdminError::usage(format!("invalid request: {e}")))
}

fn labels(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| AdminError::usage(format!("{p:?}: expected key=value")))?;
            Ok((k.to_owned(), Value::String(v.to_owned())))
        })
        .collect()
}

/// Drops `null` members, so absent options stay absent.
fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .collect(),
        ),
        other => other,
    }
}

/// "30d" / "720h" / "5s" / "1m" -> protobuf JSON seconds ("2592000s").
fn duration(text: &str) -> anyhow::Result<String> {
    let bad = || {
        AdminError::usage(format!(
            "{text:?}: expected a duration like 5s, 10m, 720h or 30d"
        ))
    };
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
    Ok(format!("{secs}s"))
}

async fn spin<F: std::future::Future>(json: bool, what: &str, f: F) -> F::Output {
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(what.to_owned());
        b.enable_steady_tick(Duration::from_millis(100));
        b
    };
    let out = f.await;
    bar.finish_and_clear();
    out
}

/// Runs one `pmm-cp admin` command.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminOp::Completions { shell } = &args.op {
        let mut cmd = <crate::config::Cli as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut cmd, "pmm-cp", &mut std::io::stdout());
        return Ok(());
    }
    let token = match &args.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(&args.token_file)
            .with_context(|| {
                format!(
                    "reading the token from {} (or give --token / PMM_CP_TOKEN)",
                    args.token_file.display()
                )
            })
            .map_err(|e| AdminError::usage(format!("{e:#}")))?
            .trim()
            .to_owned(),
    };
    let channel = Channel::from_shared(args.server.clone())
        .map_err(|e| AdminError::usage(format!("--server {}: {e}", args.server)))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let c = Client {
        channel,
        token,
        args: args.clone(),
    };
    let json_out = args.json;
    let out: Value = match &args.op {
        AdminOp::Completions { .. } => unreachable!("handled above"),
        AdminOp::Status => spin(json_out, "asking the server", status(&c)).await?,
        AdminOp::Register(r) => spin(json_out, "registering", register(&c, r)).await?,
        AdminOp::Add { kind } => spin(json_out, "adding", add(&c, kind)).await?,
        AdminOp::List { node_id } => spin(json_out, "listing", list(&c, node_id.clone())).await?,
        AdminOp::Remove {
            service_type,
            service,
        } => {
            let req: mgmt::RemoveServiceRequest = typed(json!({
                "service_id": service, "service_type": service_type.enum_name(),
            }))?;
            let mut m =
                mgmt::management_service_client::ManagementServiceClient::new(c.channel.clone());
            spin(json_out, "removing", m.remove_service(c.request(req)?))
                .await
                .map_err(from_status)?;
            json!({ "removed": service })
        }
        AdminOp::Unregister { node_id, force } => {
            let mut m =
                mgmt::management_service_client::ManagementServiceClient::new(c.channel.clone());
            let req = mgmt::UnregisterNodeRequest {
                node_id: node_id.clone(),
                force: *force,
            };
            let r = spin(
                json_out,
                "unregistering",
                m.unregister_node(c.request(req)?),
            )
            .await
            .map_err(from_status)?;
            to_json(&r.into_inner())
        }
        AdminOp::Settings { op } => spin(json_out, "settings", settings(&c, op)).await?,
        AdminOp::Events {
            after,
            limit,
            stream,
            event_type,
        } => {
            spin(
                json_out,
                "reading the history",
                events(&c, *after, *limit, stream, event_type),
            )
            .await?
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_human(&args.op, &out);
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn status(c: &Client) -> anyhow::Result<Value> {
    let mut s = srv::server_service_client::ServerServiceClient::new(c.channel.clone());
    let version = s
        .version(c.request(srv::VersionRequest::default())?)
        .await
        .map_err(from_status)?;
    let revision = version
        .metadata()
        .get(crate::grpc::REVISION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let ready = s
        .readiness(c.request(srv::ReadinessRequest {})?)
        .await
        .is_ok();
    let leader = s
        .leader_health_check(c.request(srv::LeaderHealthCheckRequest {})?)
        .await
        .is_ok();
    Ok(json!({
        "server": c.args.server,
        "version": version.into_inner().version,
        "ready": ready,
        "leader": leader,
        "revision": revision,
    }))
}

async fn register(c: &Client, r: &RegisterArgs) -> anyhow::Result<Value> {
    let node_type = if r.node_type == "container" {
        "NODE_TYPE_CONTAINER_NODE"
    } else {
        "NODE_TYPE_GENERIC_NODE"
    };
    let req: mgmt::RegisterNodeRequest = typed(compact(json!({
        "node_type": node_type,
        "node_name": r.node_name,
        "address": r.address,
        "machine_id": r.machine_id,
        "distro": r.distro,
        "container_id": r.container_id,
        "container_name": r.container_name,
        "region": r.region,
        "az": r.az,
        "custom_labels": labels(&r.custom_labels)?,
        "reregister": r.force,
        "metrics_mode": r.metrics_mode.enum_name(),
        "disable_collectors": r.disable_collectors,
    })))?;
    let mut m = mgmt::management_service_client::ManagementServiceClient::new(c.channel.clone());
    let resp = m
        .register_node(c.request(req)?)
        .await
        .map_err(from_status)?;
    Ok(to_json(&resp.into_inner()))
}

fn query_source_flags(kind: &str, source: &str) -> anyhow::Result<Map<String, Value>> {
    let key = match (kind, source) {
        (_, "none") => return Ok(Map::new()),
        ("mysql", "perfschema") => "qan_mysql_perfschema",
        ("mysql", "slowlog") => "qan_mysql_slowlog",
        ("postgresql", "pgstatements") => "qan_postgresql_pgstatements_agent",
        ("postgresql", "pgstatmonitor") => "qan_postgresql_pgstatmonitor_agent",
        ("mongodb", "profiler") => "qan_mongodb_profiler",
        ("mongodb", "mongolog") => "qan_mongodb_mongolog",
        _ => {
            return Err(AdminError::usage(format!(
                "--query-source {source:?} does not apply to {kind}"
            )));
        }
    };
    Ok([(key.to_owned(), Value::Bool(true))].into_iter().collect())
}

async fn add(c: &Client, kind: &AddKind) -> anyhow::Result<Value> {
    let (key, params) = match kind {
        AddKind::Mysql(a) => ("mysql", db_params("mysql", a)?),
        AddKind::Postgresql(a) => ("postgresql", db_params("postgresql", a)?),
        AddKind::Mongodb(a) => ("mongodb", db_params("mongodb", a)?),
        AddKind::Proxysql(a) => ("proxysql", db_params("proxysql", a)?),
        AddKind::Valkey(a) => ("valkey", db_params("valkey", a)?),
        AddKind::Haproxy(a) => ("haproxy", scraped_params(a)?),
        AddKind::External(a) => ("external", scraped_params(a)?),
        AddKind::Rds(a) => ("rds", rds_params(a)),
        AddKind::Azure(a) => {
            let req: mgmt::AddAzureDatabaseRequest = typed(azure_params(a))?;
            let mut m =
                mgmt::management_service_client::ManagementServiceClient::new(c.channel.clone());
            m.add_azure_database(c.request(req)?)
                .await
                .map_err(from_status)?;
            return Ok(json!({ "azure": { "instance_id": a.instance_id } }));
        }
    };
    let req: mgmt::AddServiceRequest = typed(json!({ key: compact(params) }))?;
    let mut m = mgmt::management_service_client::ManagementServiceClient::new(c.channel.clone());
    let resp = m.add_service(c.request(req)?).await.map_err(from_status)?;
    Ok(to_json(&resp.into_inner()))
}

fn db_params(kind: &str, a: &DbServiceArgs) -> anyhow::Result<Value> {
    let (address, port) = match &a.address {
        Some(hp) => {
            let (h, p) = hp
                .rsplit_once(':')
                .ok_or_else(|| AdminError::usage(format!("{hp:?}: expected host:port")))?;
            let port: u32 = p
                .parse()
                .map_err(|_| AdminError::usage(format!("{hp:?}: the port is not a number")))?;
            (Some(h.to_owned()), Some(port))
        }
        None => (None, None),
    };
    let mut v = json!({
        "service_name": a.name,
        "address": address,
        "port": port,
        "socket": a.socket,
        "pmm_agent_id": a.pmm_agent_id,
        "username": a.username,
        "password": a.password,
        "skip_connection_check": a.skip_connection_check,
        "tls": a.tls,
        "tls_skip_verify": a.tls_skip_verify,
        "metrics_mode": a.metrics_mode.enum_name(),
        "disable_collectors": a.disable_collectors,
    });
    if kind == "postgresql" {
        v["database"] = json!(a.database);
    }
    if let Some(m) = v.as_object_mut() {
        m.extend(a.placement.fields()?);
        m.extend(query_source_flags(kind, &a.query_source)?);
    }
    Ok(v)
}

fn scraped_params(a: &ScrapedServiceArgs) -> anyhow::Result<Value> {
    let mut v = json!({
        "service_name": a.name,
        "listen_port": a.listen_port,
        "metrics_path": a.metrics_path,
        "scheme": a.scheme,
        "runs_on_node_id": a.runs_on_node_id,
        "group": a.group,
    });
    if let Some(m) = v.as_object_mut() {
        m.extend(a.placement.fields()?);
    }
    Ok(v)
}

fn rds_params(a: &CloudArgs) -> Value {
    let mysql = a.engine == "mysql";
    json!({
        "region": a.region,
        "instance_id": a.instance_id,
        "address": a.address,
        "port": a.port,
        "engine": if mysql { "DISCOVER_RDS_ENGINE_MYSQL" } else { "DISCOVER_RDS_ENGINE_POSTGRESQL" },
        "username": a.username,
        "password": a.password,
        "rds_exporter": a.rds_exporter,
        "aws_access_key": a.aws_access_key,
        "aws_secret_key": a.aws_secret_key,
        "qan_mysql_perfschema": mysql && a.qan,
        "qan_postgresql_pgstatements": !mysql && a.qan,
        "skip_connection_check": a.skip_connection_check,
    })
}

fn azure_params(a: &CloudArgs) -> Value {
    compact(json!({
        "region": a.region,
        "instance_id": a.instance_id,
        "address": a.address,
        "port": a.port,
        "type": if a.engine == "mysql" { "DISCOVER_AZURE_DATABASE_TYPE_MYSQL" } else { "DISCOVER_AZURE_DATABASE_TYPE_POSTGRESQL" },
        "username": a.username,
        "password": a.password,
        "azure_client_id": a.azure_client_id,
        "azure_client_secret": a.azure_client_secret,
        "azure_tenant_id": a.azure_tenant_id,
        "azure_subscription_id": a.azure_subscription_id,
        "azure_resource_group": a.azure_resource_group,
        "azure_database_exporter": true,
        "qan": a.qan,
        "skip_connection_check": a.skip_connection_check,
    }))
}

async fn list(c: &Client, node_id: Option<String>) -> anyhow::Result<Value> {
    let mut m = mgmt::management_service_client::ManagementServiceClient::new(c.channel.clone());
    let services = m
        .list_services(c.request(mgmt::ListServicesRequest {
            node_id: node_id.clone().unwrap_or_default(),
            ..Default::default()
        })?)
        .await
        .map_err(from_status)?
        .into_inner();
    let nodes = m
        .list_nodes(c.request(mgmt::ListNodesRequest::default())?)
        .await
        .map_err(from_status)?
        .into_inner();
    // Every agent, or (with --node-id) the node's as management sees them: those on it and
    // those running there.
    let agents = match &node_id {
        None => {
            let mut a = inv::agents_service_client::AgentsServiceClient::new(c.channel.clone());
            let all = a
                .list_agents(c.request(inv::ListAgentsRequest::default())?)
                .await
                .map_err(from_status)?
                .into_inner();
            to_json(&all)
        }
        Some(id) => {
            let on_node = m
                .list_agents(c.request(mgmt::ListAgentsRequest {
                    node_id: id.clone(),
                    ..Default::default()
                })?)
                .await
                .map_err(from_status)?
                .into_inner();
            let mut groups = Map::new();
            for a in to_json(&on_node)["agents"].as_array().into_iter().flatten() {
                let kind = a["agent_type"]
                    .as_str()
                    .unwrap_or("agent")
                    .replace('-', "_");
                if let Value::Array(list) = groups.entry(kind).or_insert_with(|| json!([])) {
                    list.push(a.clone());
                }
            }
            Value::Object(groups)
        }
    };
    let nodes: Vec<Value> = to_json(&nodes)["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| node_id.as_ref().is_none_or(|id| n["node_id"] == json!(id)))
        .collect();
    Ok(json!({
        "nodes": nodes,
        "services": to_json(&services)["services"],
        "agents": agents,
    }))
}

async fn settings(c: &Client, op: &SettingsOp) -> anyhow::Result<Value> {
    let mut s = srv::server_service_client::ServerServiceClient::new(c.channel.clone());
    match op {
        SettingsOp::Show => {
            let r = s
                .get_settings(c.request(srv::GetSettingsRequest {})?)
                .await
                .map_err(from_status)?;
            Ok(to_json(&r.into_inner()))
        }
        SettingsOp::Change {
            data_retention,
            metrics_resolution_hr,
            metrics_resolution_mr,
            metrics_resolution_lr,
            enable_telemetry,
            enable_updates,
            enable_alerting,
            enable_advisor,
            pmm_public_address,
        } => {
            let d = |v: &Option<String>| v.as_deref().map(duration).transpose();
            let req: srv::ChangeSettingsRequest = typed(compact(json!({
                "data_retention": d(data_retention)?,
                "metrics_resolutions": {
                    "hr": d(metrics_resolution_hr)?,
                    "mr": d(metrics_resolution_mr)?,
                    "lr": d(metrics_resolution_lr)?,
                },
                "enable_telemetry": enable_telemetry,
                "enable_updates": enable_updates,
                "enable_alerting": enable_alerting,
                "enable_advisor": enable_advisor,
                "pmm_public_address": pmm_public_address,
            })))?;
            let r = s
                .change_settings(c.request(req)?)
                .await
                .map_err(from_status)?;
            Ok(to_json(&r.into_inner()))
        }
    }
}

async fn events(
    c: &Client,
    after: i64,
    limit: i64,
    stream: &Option<String>,
    event_type: &Option<String>,
) -> anyhow::Result<Value> {
    let base = c.args.server.trim_end_matches('/');
    let mut query = vec![("after", after.to_string()), ("limit", limit.to_string())];
    if let Some(s) = stream {
        query.push(("stream_id", s.clone()));
    }
    if let Some(t) = event_type {
        query.push(("event_type", t.clone()));
    }
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/query/events"))
        .query(&query)
        .bearer_auth(&c.token)
        .timeout(Duration::from_secs(c.args.timeout))
        .send()
        .await
        .map_err(|e| {
            anyhow::Error::from(AdminError {
                code: 7,
                message: format!("the server did not answer: {e}"),
            })
        })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let code = body["code"]
            .as_i64()
            .map(|c| Code::from(c as i32))
            .unwrap_or(match status.as_u16() {
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                400 => Code::InvalidArgument,
                _ => Code::Unavailable,
            });
        let message = body["message"].as_str().unwrap_or("no message").to_owned();
        return Err(from_status(Status::new(code, message)));
    }
    Ok(body)
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_human(op: &AdminOp, out: &Value) {
    match op {
        AdminOp::Status => println!(
            "{}",
            table(
                &["server", "version", "ready", "leader", "revision"],
                vec![vec![
                    s(&out["server"]),
                    s(&out["version"]),
                    s(&out["ready"]),
                    s(&out["leader"]),
                    s(&out["revision"])
                ]],
            )
        ),
        AdminOp::List { .. } => {
            let nodes = out["nodes"].as_array().cloned().unwrap_or_default();
            println!(
                "Nodes\n{}",
                table(
                    &["node id", "name", "type", "address"],
                    nodes
                        .iter()
                        .map(|n| vec![
                            s(&n["node_id"]),
                            s(&n["node_name"]),
                            s(&n["node_type"]),
                            s(&n["address"])
                        ])
                        .collect(),
                )
            );
            let services = out["services"].as_array().cloned().unwrap_or_default();
            println!(
                "Services\n{}",
                table(
                    &["service id", "name", "type", "node", "address", "agents"],
                    services
                        .iter()
                        .map(|v| {
                            let agents = v["agents"].as_array().map_or(0, Vec::len);
                            let addr = match (&v["address"], &v["port"]) {
                                (Value::String(a), Value::Number(p)) => format!("{a}:{p}"),
                                (a, _) => s(a),
                            };
                            vec![
                                s(&v["service_id"]),
                                s(&v["service_name"]),
                                s(&v["service_type"]),
                                s(&v["node_name"]),
                                addr,
                                agents.to_string(),
                            ]
                        })
                        .collect(),
                )
            );
            let mut rows = Vec::new();
            if let Some(groups) = out["agents"].as_object() {
                for (kind, list) in groups {
                    for a in list.as_array().into_iter().flatten() {
                        let on = [&a["service_id"], &a["node_id"], &a["runs_on_node_id"]]
                            .into_iter()
                            .map(s)
                            .find(|x| !x.is_empty())
                            .unwrap_or_default();
                        rows.push(vec![
                            s(&a["agent_id"]),
                            kind.clone(),
                            s(&a["status"]),
                            on,
                            s(&a["disabled"]),
                        ]);
                    }
                }
            }
            rows.sort();
            println!(
                "Agents\n{}",
                table(&["agent id", "type", "status", "for", "disabled"], rows)
            );
        }
        AdminOp::Register(_) => {
            let node = if out["generic_node"].is_object() {
                &out["generic_node"]
            } else {
                &out["container_node"]
            };
            println!(
                "Registered node {} ({}).",
                s(&node["node_name"]),
                s(&node["node_id"])
            );
            println!("pmm-agent id: {}", s(&out["pmm_agent"]["agent_id"]));
            // Shown once: pmm-agent connects with it (`Authorization: Bearer`).
            println!("pmm-agent token: {}", s(&out["token"]));
            if let Some(w) = out["warning"].as_str().filter(|w| !w.is_empty()) {
                println!("warning: {w}");
            }
        }
        AdminOp::Add { .. } => {
            let mut rows = Vec::new();
            if let Some((kind, result)) = out.as_object().and_then(|o| o.iter().next()) {
                for (part, v) in result.as_object().into_iter().flatten() {
                    let key = match part.as_str() {
                        "service" | "mysql" | "postgresql" => "service_id",
                        "node" => "node_id",
                        _ => "agent_id",
                    };
                    let id = s(&v[key]);
                    rows.push(vec![format!("{kind} {part}"), id]);
                }
            }
            println!("{}", table(&["added", "id"], rows));
        }
        AdminOp::Remove { service, .. } => println!("Removed {service}."),
        AdminOp::Unregister { node_id, .. } => println!("Unregistered {node_id}."),
        AdminOp::Settings { .. } => {
            let st = &out["settings"];
            let rows = st
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), s(v)])
                .collect();
            println!("{}", table(&["setting", "value"], rows));
        }
        AdminOp::Events { .. } => {
            let rows = out["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    vec![
                        s(&e["position"]),
                        s(&e["event_type"]),
                        s(&e["stream_id"]),
                        s(&e["metadata"]["actor"]),
                        s(&e["recorded_at"]),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(
                    &["position", "event", "stream", "actor", "recorded at"],
                    rows
                )
            );
            if let Some(n) = out["next_after"].as_i64() {
                println!("next page: --after {n}");
            }
        }
        AdminOp::Completions { .. } => {}
    }
}
