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
    /// Walk the event log's hash chain and report the first altered or missing event.
    Verify(DbArgs),
    /// Drop and recreate the query tables from the event log.
    Rebuild(DbArgs),
    /// Print events after a position as JSON lines (secrets redacted).
    Events(EventsArgs),
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
    /// Most commands appended in one transaction.
    #[arg(long, env = "PMM_CP_MAX_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch: u32,
    /// Database connections in the pool.
    #[arg(long, env = "PMM_CP_DB_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=200))]
    pub db_connections: u32,
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
