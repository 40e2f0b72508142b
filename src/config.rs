//! Configuration, read in one place: command-line flags with environment fallbacks, validated
//! once. The README's configuration table lists every flag and variable here.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// PMM's control plane: inventory and settings as an event-sourced, Raft-replicated log.
#[derive(Debug, Parser)]
#[command(name = "pmm-cp", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `pmmcp=debug`.
    #[arg(long, global = true, env = "PMM_CP_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the server (the default PostgreSQL is a private one in the data directory).
    Serve(ServeArgs),
    /// A pmm-admin-like client of the API: register, add, list, remove, settings, status,
    /// history, completions.
    Admin(crate::admin::AdminArgs),
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Walk the event log's hash chain and report the first altered or missing event.
    Verify(DbArgs),
    /// Drop and recreate the query tables from the event log.
    Rebuild(DbArgs),
    /// Print events after a position as JSON lines (secrets redacted).
    Events(EventsArgs),
    /// Cluster operations: status, init, add a learner, change the voters.
    Cluster(ClusterCliArgs),
    /// API tokens: create (the secret is printed once) and revoke.
    Token(TokenCliArgs),
    /// Measure writes through a one-node and a three-node cluster beside a three-member etcd
    /// cluster, at 1 and 64 concurrent clients.
    BenchCluster(BenchClusterArgs),
    /// Measure the query API with wrk, beside the health endpoint.
    BenchApi(BenchApiArgs),
    /// Measure rendering the scrape configuration beside plain JSON, and the time from an
    /// acknowledged command to the file on disk.
    BenchFiles(BenchFilesArgs),
    /// Measure pmm-agent streams: server memory per idle stream, fan-out of one change to
    /// every agent, and reconnection after a restart, each beside a baseline.
    BenchAgents(BenchAgentsArgs),
    /// Run fake pmm-agents against a server (tests, demos): register N nodes, connect, apply
    /// states, report statuses, reconnect.
    SimulateAgents(SimulateAgentsArgs),
    /// Measure dispatch throughput and latency, and rebuild speed, beside a raw PostgreSQL
    /// baseline on the same server.
    Bench(BenchArgs),
}

/// Where the database is: an external server, or the private one in the data directory.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Data directory: the private PostgreSQL cluster, the cluster key.
    #[arg(long, env = "PMM_CP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Use this PostgreSQL server instead of the private one.
    #[arg(long, env = "PMM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where initdb, pg_ctl and postgres are (default: the newest under /usr/lib/postgresql).
    #[arg(long, env = "PMM_CP_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The cluster key file (64 hex characters); created in the data directory if not given.
    #[arg(long, env = "PMM_CP_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// This node's name, recorded in the metadata of the events it decides.
    #[arg(long, env = "PMM_CP_NODE_NAME", default_value = "pmm-cp-1")]
    pub node_name: String,
    /// Debug and health HTTP endpoint (PMM's debug port).
    #[arg(long, env = "PMM_CP_DEBUG_ADDR", default_value = "127.0.0.1:7773")]
    pub debug_addr: SocketAddr,
    /// The query API (REST, bearer tokens): inventory, settings, cluster status, event
    /// history.
    #[arg(long, env = "PMM_CP_API_ADDR", default_value = "127.0.0.1:7772")]
    pub api_addr: SocketAddr,
    /// Most commands appended in one transaction.
    #[arg(long, env = "PMM_CP_MAX_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch: u32,
    /// Database connections in the pool.
    #[arg(long, env = "PMM_CP_DB_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=200))]
    pub db_connections: u32,
    /// bcrypt cost of the exporters' web-config password hashes (PMM's is 10; each step
    /// doubles the work). Each hash is computed once per exporter and password, at low
    /// priority, and kept: a new cost applies to hashes computed after. A lower cost makes
    /// adding thousands of exporters cheaper and the hashes weaker.
    #[arg(long, env = "PMM_CP_EXPORTER_AUTH_COST", default_value_t = crate::agents::web_auth::DEFAULT_COST, value_parser = clap::value_parser!(u32).range(4..=14))]
    pub exporter_auth_cost: u32,
    /// Seconds between sweeps of pmm-agents recorded as connected through this node on a
    /// stream it no longer has (after a crash or a stop): they are recorded disconnected.
    /// The first sweep comes this long after the start, so agents have time to reconnect.
    #[arg(long, env = "PMM_CP_AGENT_SWEEP_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub agent_sweep_secs: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub files: FilesArgs,
}

/// Where and how the generated files (scrape configuration, vmagent configurations, vmalert
/// rules, supervisord programs) are written.
#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// This node's output directory (default `<data-dir>/files`); every file stays inside it.
    #[arg(long, env = "PMM_CP_FILES_DIR")]
    pub files_dir: Option<PathBuf>,
    /// The scrape configuration's path as VictoriaMetrics sees it (its `--promscrape.config`
    /// in the supervisord program).
    #[arg(
        long,
        env = "PMM_CP_SCRAPE_CONFIG_PATH",
        default_value = "/etc/victoriametrics-promscrape.yml"
    )]
    pub scrape_config_path: String,
    /// VictoriaMetrics' URL, as the programs and the scrape configuration name it.
    #[arg(
        long,
        env = "PMM_CP_VM_URL",
        default_value = "http://127.0.0.1:9090/prometheus/"
    )]
    pub vm_url: String,
    /// The directory vmalert reads pmm-cp's alert rule files from (`<files-dir>/vmalert` as
    /// vmalert sees it; a `--rule=DIR/*.yml` flag of the vmalert program).
    #[arg(long, env = "PMM_CP_ALERT_RULES_DIR", default_value = "/etc/ia/rules")]
    pub alert_rules_dir: String,
    /// vmalert, run with `-dryRun` on every alert rule (and template) before its command is
    /// sent; `""` turns the check off. Looked up on `PATH` unless it has a slash.
    #[arg(long, env = "PMM_CP_VMALERT_BINARY", default_value = "vmalert")]
    pub vmalert_binary: String,
    /// POSTed to after an alert rule file changes, e.g. `http://127.0.0.1:8880/-/reload`
    /// (none: no reload).
    #[arg(long, env = "PMM_CP_VMALERT_RELOAD_URL")]
    pub vmalert_reload_url: Option<String>,
    /// POSTed to after the scrape configuration changes, e.g.
    /// `http://127.0.0.1:9090/prometheus/-/reload` (none: no reload).
    #[arg(long, env = "PMM_CP_VM_RELOAD_URL")]
    pub vm_reload_url: Option<String>,
    /// Run with `sh -c` after a program file changes, e.g.
    /// `supervisorctl reread && supervisorctl update` (none: no reload).
    #[arg(long, env = "PMM_CP_SUPERVISORD_RELOAD_COMMAND")]
    pub supervisord_reload_command: Option<String>,
}

impl Default for FilesArgs {
    fn default() -> Self {
        Self {
            files_dir: None,
            scrape_config_path: "/etc/victoriametrics-promscrape.yml".to_owned(),
            vm_url: "http://127.0.0.1:9090/prometheus/".to_owned(),
            vm_reload_url: None,
            alert_rules_dir: "/etc/ia/rules".to_owned(),
            vmalert_binary: "vmalert".to_owned(),
            vmalert_reload_url: None,
            supervisord_reload_command: None,
        }
    }
}

/// How this node takes part in a Raft cluster.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This node's Raft id, unique in its cluster.
    #[arg(long, env = "PMM_CP_NODE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// Where the internal service (Raft between nodes, forwarded commands, cluster operations)
    /// listens. Port 0 picks a free port.
    #[arg(long, env = "PMM_CP_RAFT_ADDR", default_value = "127.0.0.1:7774")]
    pub raft_addr: SocketAddr,
    /// The address peers use to reach this node's internal service (default: the bound
    /// `--raft-addr`).
    #[arg(long, env = "PMM_CP_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Wait to be added to a cluster (`pmm-cp cluster add-learner` on its leader, or
    /// `cluster init` naming it) instead of starting a cluster of one on first start.
    #[arg(long, env = "PMM_CP_JOIN")]
    pub join: bool,
    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, env = "PMM_CP_HEARTBEAT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub heartbeat_ms: u64,
    /// Silence from the leader after which a follower starts an election (randomized up to
    /// twice this), in milliseconds; several heartbeats.
    #[arg(long, env = "PMM_CP_ELECTION_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many Raft log entries, and purge the entries it covers.
    #[arg(long, env = "PMM_CP_SNAPSHOT_EVERY", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Raft log entries kept behind the last snapshot, for followers that lag a little.
    #[arg(long, env = "PMM_CP_KEEP_LOGS", default_value_t = 1000)]
    pub keep_logs: u64,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        Self {
            node_id: 1,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 7774)),
            advertise_addr: None,
            join: false,
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            snapshot_every: 5000,
            keep_logs: 1000,
        }
    }
}

/// How the CLI reaches a node's internal service.
#[derive(Debug, Clone, Args)]
pub struct InternalArgs {
    /// A node's internal address (`--raft-addr` of `serve`).
    #[arg(long, env = "PMM_CP_CLUSTER_ADDR", default_value = "127.0.0.1:7774")]
    pub addr: String,
    /// The cluster key file (the nodes' own), which proves the CLI may use the internal
    /// service.
    #[arg(
        long,
        env = "PMM_CP_CLUSTER_KEY_FILE",
        default_value = "./data/cluster.key"
    )]
    pub cluster_key_file: PathBuf,
}

/// `pmm-cp cluster ...`: operations on a running cluster, through any node's internal
/// service.
#[derive(Debug, Clone, Args)]
pub struct ClusterCliArgs {
    #[command(flatten)]
    pub node: InternalArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub op: ClusterOp,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterOp {
    /// Leader, term, and every member with its role, applied index, revision, hash head and lag.
    Status,
    /// Make the named nodes (`ID=HOST:PORT`, repeatable) the voters of a new cluster; every
    /// one was started with `--join`.
    Init {
        #[arg(long = "member", value_parser = parse_member, required = true)]
        members: Vec<(u64, String)>,
    },
    /// Add a node as a learner; returns when it has caught up.
    AddLearner {
        #[arg(long)]
        id: u64,
        /// Its internal address.
        #[arg(long)]
        addr: String,
    },
    /// Set the voters (comma-separated ids): promotes learners, removes voters not named.
    ChangeMembership {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        /// Keep removed voters as learners.
        #[arg(long)]
        retain: bool,
    },
}

fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let id = id
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: node id: {e}"))?;
    if addr.is_empty() {
        return Err(format!("{s:?}: the address is empty"));
    }
    Ok((id, addr.to_owned()))
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Print events with a position greater than this.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// Only this stream (`node-<id>`, `service-<id>`, `agent-<id>`, `settings`).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only these event types (repeatable).
    #[arg(long = "type")]
    pub event_types: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// An existing PostgreSQL server; the benchmark creates and drops its own databases there.
    #[arg(
        long,
        env = "PMM_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Commands (and baseline rows) per measured run.
    #[arg(long, default_value_t = 4000)]
    pub commands: usize,
    /// Events in the log for the rebuild measurement.
    #[arg(long, default_value_t = 60_000)]
    pub rebuild_events: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BenchClusterArgs {
    /// An existing PostgreSQL server; every node gets its own scratch database there.
    #[arg(
        long,
        env = "PMM_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// The etcd server binary (Debian package etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Writes per measured run.
    #[arg(long, default_value_t = 3000)]
    pub commands: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip etcd (its column is then empty); for profiling pmm-cp alone.
    #[arg(long)]
    pub no_etcd: bool,
    /// Concurrent clients of each measurement (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    pub clients: Vec<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchAgentsArgs {
    /// An existing PostgreSQL server; the benchmark creates and drops its database there.
    #[arg(
        long,
        env = "PMM_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Fake pmm-agents.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Rounds of the fan-out and ping measurements.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateAgentsArgs {
    /// The server's public API.
    #[arg(long, default_value = "http://127.0.0.1:7772")]
    pub api: String,
    /// An admin token (to register the nodes), or `@FILE` to read it from a file.
    #[arg(long, env = "PMM_CP_TOKEN")]
    pub token: String,
    /// Fake pmm-agents (and nodes registered for them).
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Node names are `<prefix>-<i>`.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Report every process WAITING, then RUNNING, on each new state.
    #[arg(long)]
    pub flap: bool,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub seconds: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchFilesArgs {
    /// An existing PostgreSQL server; the benchmark creates and drops its database there.
    #[arg(
        long,
        env = "PMM_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Inventory sizes for the render measurement (agents, comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10_000, 50_000])]
    pub agents: Vec<usize>,
    /// External exporters in the inventory of the latency measurement.
    #[arg(long, default_value_t = 1000)]
    pub exporters: usize,
    /// Commands in the latency measurement.
    #[arg(long, default_value_t = 300)]
    pub commands: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BenchApiArgs {
    /// An existing PostgreSQL server; the benchmark creates and drops its databases there.
    #[arg(
        long,
        env = "PMM_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// The wrk binary (Debian package wrk).
    #[arg(long, default_value = "/usr/bin/wrk")]
    pub wrk_bin: PathBuf,
    /// Inventory sizes to measure (comma-separated numbers of services).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10_000])]
    pub services: Vec<usize>,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

/// `pmm-cp token ...`, sent through any node's internal service.
#[derive(Debug, Clone, Args)]
pub struct TokenCliArgs {
    #[command(flatten)]
    pub node: InternalArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub op: TokenOp,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenOp {
    /// Create a token; its secret is printed once and stored nowhere.
    Create {
        #[arg(long)]
        name: String,
        /// admin, viewer, auditor or agent.
        #[arg(long, value_parser = ["admin", "viewer", "auditor", "agent"])]
        role: String,
    },
    /// Revoke a token by id or name.
    Revoke {
        #[arg(long)]
        token: String,
    },
}
