//! Wiring: open the database (private or external), load the cluster key, start the
//! dispatcher, record the PMM Server's fixtures and the environment's settings, serve the
//! debug endpoint, and shut down in order (HTTP, writer, pool, private PostgreSQL).

use crate::commands::bootstrap::BootstrapServer;
use crate::commands::dispatcher::{Dispatcher, DispatcherConfig};
use crate::commands::settings::ChangeSettings;
use crate::commands::{Command, CommandMeta};
use crate::config::{CliCommand, DbArgs, EventsArgs, ServeArgs};
use crate::crypto::Cipher;
use crate::domain::settings::EnvSettings;
use crate::embedded_pg::EmbeddedPostgres;
use crate::raft::network::{Auth, Faults};
use crate::raft::node::NodeConfig;
use crate::raft::service::Internal;
use crate::store::{self, ReadFilter, Secrets};
use anyhow::Context as _;
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The command id of the PMM Server fixtures: every start sends it, the first one records it.
pub const BOOTSTRAP_COMMAND_ID: &str = "bootstrap-pmm-server";

/// Runs one CLI command to completion.
pub async fn run(command: CliCommand) -> anyhow::Result<()> {
    match command {
        CliCommand::Serve(args) => {
            let listener = TcpListener::bind(args.debug_addr)
                .await
                .with_context(|| format!("binding the debug endpoint {}", args.debug_addr))?;
            serve(args, listener, shutdown_signal()).await
        }
        CliCommand::Verify(db) => with_database(&db, verify).await,
        CliCommand::Rebuild(db) => with_database(&db, rebuild).await,
        CliCommand::Events(args) => {
            let db = args.db.clone();
            with_database(&db, |pool| print_events(pool, args)).await
        }
        CliCommand::Bench(args) => crate::bench::run(args).await,
        CliCommand::BenchCluster(args) => crate::bench_cluster::run(args).await,
        CliCommand::BenchApi(args) => crate::bench_api::run(args).await,
        CliCommand::BenchFiles(args) => crate::bench_files::run(args).await,
        CliCommand::BenchAgents(args) => crate::bench_agents::run(args).await,
        CliCommand::SimulateAgents(args) => crate::agents::sim::run_cli(args).await,
        CliCommand::Cluster(args) => crate::cluster::run(args).await,
        CliCommand::Token(args) => crate::cluster::token(args).await,
        CliCommand::Admin(args) => crate::admin::run(args).await,
        CliCommand::Openapi => {
            print!("{}", crate::grpc::openapi::document());
            Ok(())
        }
    }
}

/// A database handle and the private server behind it, if any.
pub struct Database {
    pub pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Opens the configured database, starting the private one when no URL is given, and
    /// applies the migrations.
    pub async fn open(db: &DbArgs, connections: u32) -> anyhow::Result<Self> {
        let (url, embedded) = match &db.database_url {
            Some(url) => (url.clone(), None),
            None => {
                std::fs::create_dir_all(&db.data_dir).with_context(|| {
                    format!("creating the data directory {}", db.data_dir.display())
                })?;
                let pg = EmbeddedPostgres::start(&db.data_dir, db.pg_bin_dir.as_deref()).await?;
                (pg.database_url(), Some(pg))
            }
        };
        let pool = store::connect(&url, connections)
            .await
            .context("connecting to PostgreSQL")?;
        Ok(Self { pool, embedded })
    }

    /// Closes the pool, then stops the private server.
    pub async fn close(self) -> anyhow::Result<()> {
        // Waits for the connections in use to come back, but not for ever: a task that
        // outlived the server's drain may still hold one. A fast stop ends them anyway.
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.pool.close())
            .await
            .is_err()
        {
            warn!("database connections still in use after 10 s; closing anyway");
        }
        if let Some(pg) = self.embedded {
            pg.stop().await?;
        }
        Ok(())
    }
}

async fn with_database<F, Fut>(db: &DbArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let database = Database::open(db, 4).await?;
    let result = f(database.pool.clone()).await;
    database.close().await?;
    result
}

async fn verify(pool: PgPool) -> anyhow::Result<()> {
    let report = store::log::verify(&pool).await?;
    match &report.first_error {
        None => {
            println!(
                "ok: {} events, head hash {}",
                report.checked, report.head_hash
            );
            Ok(())
        }
        Some((position, why)) => anyhow::bail!(
            "chain broken at position {position}: {why} ({} events verified before it)",
            report.checked
        ),
    }
}

async fn rebuild(pool: PgPool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let r = store::query_tables::rebuild(&pool).await?;
    println!(
        "rebuilt from {} events in {:.2?}: {} nodes, {} services, {} agents",
        r.events,
        started.elapsed(),
        r.nodes,
        r.services,
        r.agents
    );
    Ok(())
}

async fn print_events(pool: PgPool, args: EventsArgs) -> anyhow::Result<()> {
    let filter = ReadFilter {
        after: args.after,
        limit: args.limit,
        stream_id: args.stream,
        event_types: args.event_types,
        actor: None,
    };
    for e in store::log::read(&pool, &filter, Secrets::Redact).await? {
        println!("{}", e.to_json());
    }
    Ok(())
}

/// How long a stopping node waits for requests in flight.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(12);

/// The task's outcome if it ends within `limit`; else it is aborted.
async fn finish<T>(
    mut task: tokio::task::JoinHandle<T>,
    limit: std::time::Duration,
) -> Option<Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout(limit, &mut task).await {
        Ok(r) => Some(r),
        Err(_) => {
            task.abort();
            None
        }
    }
}

/// Logs how a server task ended when its node stopped.
fn drained<E: std::fmt::Display>(
    what: &str,
    outcome: Option<Result<Result<(), E>, tokio::task::JoinError>>,
) {
    match outcome {
        Some(Ok(Err(e))) => warn!(error = %e, "{what}"),
        Some(Err(e)) => warn!(error = %e, "{what} task"),
        Some(Ok(Ok(()))) => {}
        None => warn!(
            "{what}: connections still open {} s after the stop were left running",
            DRAIN.as_secs()
        ),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs the server until `shutdown` resolves. The debug endpoint listens on `listener`
/// (tests pass a port-0 listener).
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (env, warnings) =
        EnvSettings::from_vars(std::env::vars()).context("reading PMM_* settings variables")?;
    for w in warnings {
        warn!(warning = %w, "environment");
    }
    std::fs::create_dir_all(&args.db.data_dir)
        .with_context(|| format!("creating the data directory {}", args.db.data_dir.display()))?;
    let key_path = args
        .cluster_key_file
        .clone()
        .unwrap_or_else(|| args.db.data_dir.join("cluster.key"));
    // The key is loaded (or created) at start so a bad key file fails fast; the API edge
    // seals secrets with it before they reach a command.
    let cipher = match &args.cluster_key_file {
        Some(p) => Cipher::load(p)?,
        None => Cipher::load_or_create(&key_path)?,
    };
    let database = Database::open(&args.db, args.db_connections).await?;
    let config = DispatcherConfig {
        max_batch: args.max_batch as usize,
        env: Arc::new(env.clone()),
        node_name: args.node_name.clone(),
        ..DispatcherConfig::default()
    };
    let c = &args.cluster;
    let raft_listener = TcpListener::bind(c.raft_addr)
        .await
        .with_context(|| format!("binding the internal address {}", c.raft_addr))?;
    let raft_addr = raft_listener.local_addr()?;
    let node = NodeConfig {
        id: c.node_id,
        addr: c
            .advertise_addr
            .clone()
            .unwrap_or_else(|| raft_addr.to_string()),
        init_single: !c.join,
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        election_timeout: Duration::from_millis(c.election_timeout_ms),
        snapshot_every: c.snapshot_every,
        keep_logs: c.keep_logs,
        faults: Faults::default(),
        // Nodes prove to each other (and the CLI to them) that they hold the cluster key.
        auth: Auth::new(cipher.internal_auth()),
    };
    let (dispatcher, writer) = Dispatcher::start_node(database.pool.clone(), config, node).await?;
    // One shutdown signal for both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let internal = Internal::new(dispatcher.clone(), database.pool.clone());
    let api_listener = TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the query API address {}", args.api_addr))?;
    let api_addr = api_listener.local_addr()?;
    // pmm-agent streams, on the public port.
    let agents = crate::agents::AgentServer::new(
        dispatcher.clone(),
        Arc::new(cipher.clone()),
        args.exporter_auth_cost,
    );
    agents.sweep_stale_connections(std::time::Duration::from_secs(args.agent_sweep_secs));
    // Agent streams never end by themselves: the API's graceful shutdown waits for them.
    {
        let (agents, mut stop) = (agents.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if stop.wait_for(|s| *s).await.is_ok() {
                agents.stop();
            }
        });
    }
    let query = crate::api::QueryApi {
        pool: database.pool.clone(),
        dispatcher: dispatcher.clone(),
        internal: internal.clone(),
        agents: Some(agents.clone()),
    };
    // One port for everything public: gRPC (HTTP/2) and REST (HTTP/1.1 or 2).
    crate::files::check_vm_url(&args.files.vm_url).map_err(|e| anyhow::anyhow!("--vm-url: {e}"))?;
    let render_options = crate::files::RenderOptions {
        vm_url: args.files.vm_url.clone(),
        scrape_config_path: args.files.scrape_config_path.clone(),
        alert_rules_dir: args.files.alert_rules_dir.clone(),
        ..crate::files::RenderOptions::default()
    };
    let mut public = crate::grpc::Api::new(
        dispatcher.clone(),
        database.pool.clone(),
        Arc::new(cipher.clone()),
    );
    public.files = render_options.clone();
    public.agents = Some(agents);
    public.rule_checker = crate::files::vmalert::RuleChecker::new(&args.files.vmalert_binary);
    match public.rule_checker.binary() {
        Some(b) => info!(vmalert = %b.display(), "alert rules are checked with vmalert -dryRun"),
        None => {
            warn!(binary = %args.files.vmalert_binary, "vmalert not found: alert rules are not checked before they are stored")
        }
    }
    let router = crate::grpc::router(public, query)?;
    let api_task = tokio::spawn(
        axum::serve(api_listener, router)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let internal_task = tokio::spawn(internal.serve(raft_listener, stopped(stop_rx.clone())));
    let startup = startup_commands(dispatcher.clone(), env);
    if c.join {
        // The cluster may not exist yet: record them once it has a leader.
        let (d, data_dir) = (dispatcher.clone(), args.db.data_dir.clone());
        tokio::spawn(async move {
            match startup.await {
                Ok(()) => ensure_admin_token(&d, &data_dir).await,
                Err(e) => warn!(error = %format!("{e:#}"), "startup commands"),
            }
        });
    } else {
        startup.await?;
        ensure_admin_token(&dispatcher, &args.db.data_dir).await;
    }
    let revision = dispatcher.state().revision;
    let addr = listener.local_addr()?;
    info!(%addr, %raft_addr, node_id = c.node_id, revision, key = %key_path.display(), data_dir = %args.db.data_dir.display(), "pmm-cp ready");
    println!(
        "pmm-cp ready: API (gRPC and REST) http://{api_addr}, query API http://{api_addr}/v1/query, debug http://{addr}/debug/health, internal {raft_addr}, node {}, revision {revision}",
        c.node_id
    );
    let files_dir = args
        .files
        .files_dir
        .clone()
        .unwrap_or_else(|| args.db.data_dir.join("files"));
    let projector = crate::files::Projector::new(
        files_dir,
        render_options,
        crate::files::Hooks {
            victoriametrics_reload_url: args.files.vm_reload_url.clone(),
            vmalert_reload_url: args.files.vmalert_reload_url.clone(),
            supervisord_command: args.files.supervisord_reload_command.clone(),
        },
        Arc::new(cipher.clone()),
    );
    info!(dir = %projector.dir.display(), "writing the generated files");
    tokio::spawn(projector.clone().run(dispatcher.subscribe()));
    let router = crate::app::debug_router(dispatcher.clone()).route(
        "/debug/files",
        axum::routing::get(move || {
            let status = projector.status();
            async move { axum::Json(status) }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped(stop_rx))
        .await
        .context("debug endpoint")?;
    info!("shutting down");
    // Requests in flight get a bounded time to finish (a query waiting for a revision waits
    // at most 10 s); whatever is left after is dropped. One deadline for all the waits.
    let deadline = tokio::time::Instant::now() + DRAIN;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    drained("API", finish(api_task, left()).await);
    drained("internal service", finish(internal_task, left()).await);
    dispatcher.shutdown().await;
    drop(dispatcher);
    // The writer ends once every handle of the dispatcher is gone; a connection task that
    // outlived the drain may still hold one (axum runs each connection on its own task).
    match tokio::time::timeout(left(), writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the dispatcher task ended abnormally"),
        Err(_) => warn!("the dispatcher was still in use at the end of the drain; stopping anyway"),
    }
    database.close().await?;
    info!("stopped");
    Ok(())
}

/// The command id of the first admin token: the first node to record it wins.
const ADMIN_TOKEN_COMMAND_ID: &str = "bootstrap-admin-token";

/// On a cluster with no admin token, creates one and writes its secret to
/// `<data-dir>/admin.token` (mode 0600, replaced atomically). The secret is written before the
/// token is recorded, so a crash in between leaves no recorded token whose secret is lost. A
/// failure is logged, not fatal: the server runs, and `pmm-cp token create` still works.
async fn ensure_admin_token(dispatcher: &Dispatcher, data_dir: &std::path::Path) {
    if let Err(e) = try_admin_token(dispatcher, data_dir).await {
        warn!(error = %format!("{e:#}"), "no admin token was created");
    }
}

async fn try_admin_token(
    dispatcher: &Dispatcher,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use crate::commands::CommandError;
    use crate::domain::Role;
    use crate::domain::token::{new_token_secret, token_hash};
    // Checked on the latest committed state, not this node's possibly lagging one.
    let state = dispatcher
        .linearizable_state(Duration::from_secs(30))
        .await
        .context("reading the committed state")?;
    if state.tokens.values().any(|t| t.role == Role::Admin) {
        return Ok(());
    }
    let path = data_dir.join("admin.token");
    let secret = new_token_secret();
    write_secret_file(&path, &secret)?;
    let name = if state.token_by_name("admin").is_none() {
        "admin".to_owned()
    } else {
        format!("admin-{}", state.revision)
    };
    let create = Command::CreateToken(crate::commands::tokens::CreateToken {
        agent_id: None,
        name,
        role: Role::Admin,
        hash: token_hash(&secret),
    });
    // Nodes starting at the same revision send the same id: one token is recorded. After every
    // admin token was revoked, a restart makes a new one (a later revision, a new id).
    let id = format!("{ADMIN_TOKEN_COMMAND_ID}-{}", state.revision);
    match dispatcher
        .dispatch(create, CommandMeta::with_id(id, "system"))
        .await
    {
        Ok(applied) if !applied.duplicate => {
            info!(path = %path.display(), "admin token created");
            println!("admin token written to {}", path.display());
            Ok(())
        }
        // Another node recorded an admin token first: this secret is not it.
        Ok(_) | Err(CommandError::AlreadyExists(_)) => {
            let _ = std::fs::remove_file(&path);
            info!("an admin token was created by another node");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e).context("recording the first admin token")
        }
    }
}

/// Writes `secret` to `path` with mode 0600: a new temporary file, synced, renamed over the
/// old one, and the directory synced, so the file is never readable by others nor torn.
fn write_secret_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Records the PMM Server's fixtures (once per cluster: a fixed command id) and the
/// settings pinned by this node's `PMM_*` variables.
async fn startup_commands(dispatcher: Dispatcher, env: EnvSettings) -> anyhow::Result<()> {
    let boot = CommandMeta::with_id(BOOTSTRAP_COMMAND_ID, "system");
    dispatcher
        .dispatch(Command::BootstrapServer(BootstrapServer), boot)
        .await
        .context("recording the PMM Server node")?;
    if !env.is_empty() {
        let change = Command::ChangeSettings(ChangeSettings::from_env(&env));
        dispatcher
            .dispatch(change, CommandMeta::new("env"))
            .await
            .context("applying PMM_* settings variables")?;
    }
    Ok(())
}

/// `GET /debug/health`: the applied revision and the size of the inventory.
pub fn debug_router(dispatcher: Dispatcher) -> axum::Router {
    use axum::{Json, routing::get};
    axum::Router::new().route(
        "/debug/health",
        get(move || {
            let state = dispatcher.state();
            async move {
                Json(serde_json::json!({
                    "status": "ok",
                    "revision": state.revision,
                    "nodes": state.nodes.len(),
                    "services": state.services.len(),
                    "agents": state.agents.len(),
                }))
            }
        }),
    )
}
