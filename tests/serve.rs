//! `serve` end to end: with no database configured it runs a private PostgreSQL in the data
//! directory (migrations, cluster key, PMM Server fixtures) and stops it on shutdown; a second
//! start reuses it without recording anything twice; with a database URL it uses that server.

mod support;

use pmmcp::config::{ClusterArgs, DbArgs, ServeArgs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pmmcp-serve-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Traversable by the `postgres` user when the tests run as root.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(data_dir: &Path, database_url: Option<String>) -> ServeArgs {
    ServeArgs {
        db: DbArgs {
            data_dir: data_dir.to_owned(),
            database_url,
            pg_bin_dir: std::env::var_os("PMM_CP_PG_BIN_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        },
        cluster_key_file: None,
        node_name: "test-node".to_owned(),
        debug_addr: "127.0.0.1:0".parse().expect("addr"),
        api_addr: "127.0.0.1:0".parse().expect("addr"),
        max_batch: 512,
        db_connections: 4,
        exporter_auth_cost: 4,
        agent_sweep_secs: 60,
        cluster: ClusterArgs {
            raft_addr: "127.0.0.1:0".parse().expect("addr"),
            ..ClusterArgs::default()
        },
        files: Default::default(),
    }
}

/// A running server: its debug address and the way to stop it.
struct Running {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(args: ServeArgs) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pmmcp::app::serve(args, listener, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

impl Running {
    /// Waits for the health endpoint and returns its JSON.
    async fn health(&self) -> serde_json::Value {
        let addr = self.addr;
        wait_until("the debug health endpoint", Duration::from_secs(90), || {
            assert!(!self.task.is_finished(), "serve stopped early");
            async move { get(addr, "/debug/health").await.is_some() }
        })
        .await;
        let body = get(addr, "/debug/health").await.expect("health answers");
        serde_json::from_str(&body).expect("health is JSON")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("serve task")
            .expect("serve stops cleanly");
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_a_private_postgres_in_the_data_directory_and_stops_it() {
    let dir = TempDir::new("embedded");
    let server = start(args(&dir.0, None)).await;
    let health = server.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["nodes"], 1, "the pmm-server node is recorded");
    let revision = health["revision"].as_i64().expect("revision");
    assert!(revision > 0);
    let pid_file = dir.0.join("postgres").join("postmaster.pid");
    assert!(
        pid_file.exists(),
        "the private cluster runs in the data directory"
    );
    let key = dir.0.join("cluster.key");
    assert_eq!(
        std::fs::metadata(&key)
            .expect("cluster key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let key_bytes = std::fs::read(&key).expect("key");
    server.stop().await;
    assert!(
        !pid_file.exists(),
        "the private cluster is stopped on shutdown"
    );

    // Started again: the same cluster, key and log; the fixtures are not recorded twice.
    let server = start(args(&dir.0, None)).await;
    let again = server.health().await;
    assert_eq!(again["revision"].as_i64(), Some(revision));
    assert_eq!(std::fs::read(&key).expect("key"), key_bytes);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_database_url_uses_that_server() {
    let dir = TempDir::new("external");
    let db = TestDb::new().await;
    let server = start(args(&dir.0, Some(db.url.clone()))).await;
    let health = server.health().await;
    // The generated files land in <data-dir>/files, with their manifests.
    let scrape = dir.0.join("files/victoriametrics-promscrape.yml");
    wait_until(
        "the scrape configuration is written",
        Duration::from_secs(30),
        || {
            let exists = scrape.with_file_name("manifest.json").exists();
            async move { exists }
        },
    )
    .await;
    let text = std::fs::read_to_string(&scrape).expect("scrape file");
    assert!(text.starts_with("# Managed by pmm-cp."));
    assert!(
        dir.0
            .join("files/supervisord.d/victoriametrics.ini")
            .exists()
    );
    let status = get(server.addr, "/debug/files")
        .await
        .expect("files status");
    assert!(status.contains("\"renders\""), "{status}");
    server.stop().await;
    assert!(
        !dir.0.join("postgres").exists(),
        "no private cluster is created"
    );
    let pool = db.pool().await;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        Some(recorded),
        health["revision"].as_i64(),
        "the events are in the given database"
    );
    assert!(
        pmmcp::store::log::verify(&pool)
            .await
            .expect("verify")
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_writes_an_admin_token_and_a_restart_keeps_it() {
    let dir = TempDir::new("token");
    let db = TestDb::new().await;
    let server = start(args(&dir.0, Some(db.url.clone()))).await;
    server.health().await;
    server.stop().await;
    let path = dir.0.join("admin.token");
    let secret = std::fs::read_to_string(&path).expect("admin.token");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("pmmcp_"), "{secret}");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pool = db.pool().await;
    let hashes = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT payload->'token'->>'hash' FROM events WHERE event_type = 'TokenCreated'",
        )
        .fetch_all(&pool)
        .await
        .expect("tokens")
    };
    assert_eq!(hashes().await, [pmmcp::domain::token::token_hash(&secret)]);

    let server = start(args(&dir.0, Some(db.url.clone()))).await;
    server.health().await;
    server.stop().await;
    assert_eq!(hashes().await.len(), 1, "a restart creates no second token");
    let again = std::fs::read_to_string(&path).expect("admin.token");
    assert_eq!(again.trim(), secret);
}

/// A loopback port nobody listens on now (the server binds it next; a restart keeps it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A query API document (GET with a bearer token), if it answers 200.
async fn query(api: std::net::SocketAddr, path: &str, token: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(api).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // A chunked body: the JSON is between the first chunk size and the final zero chunk.
    let json = match head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        true => body.split_once("\r\n")?.1.rsplit_once("\r\n0\r\n")?.0,
        false => body,
    };
    serde_json::from_str(json.trim()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_agent_streams_and_the_agents_come_back_after_a_restart() {
    use pmmcp::agents::sim;
    let dir = TempDir::new("agents-stop");
    let db = TestDb::new().await;
    let mut a = args(&dir.0, Some(db.url.clone()));
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    a.api_addr = api;
    let server = start(a.clone()).await;
    server.health().await;
    let token_file = dir.0.join("admin.token");
    wait_until("the admin token", Duration::from_secs(30), || {
        let exists = token_file.exists();
        async move { exists }
    })
    .await;
    let admin = std::fs::read_to_string(&token_file).expect("admin.token");
    let channel = tonic::transport::Channel::from_shared(format!("http://{api}"))
        .expect("url")
        .connect_lazy();
    let ids = sim::register(channel.clone(), admin.trim(), "stop", 2)
        .await
        .expect("register");
    // One agent keeps the status its stream ended with; the other reconnects.
    let once = sim::start(
        channel.clone(),
        ids[0].clone(),
        sim::Behaviour {
            reconnect: false,
            ..sim::Behaviour::default()
        },
    );
    let agent = sim::start(channel, ids[1].clone(), sim::Behaviour::default());
    for a in [&once, &agent] {
        let mut applied = a.applied.clone();
        tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|r| *r > 0))
            .await
            .expect("the first state in time")
            .expect("the agent runs");
    }

    // Without closing the streams, the API's graceful shutdown would wait for them forever.
    let _ = server.stop.send(());
    // Well within the 12 s drain (and the 30 s an idle hashing thread would hold on): the
    // streams are closed, not waited for.
    tokio::time::timeout(Duration::from_secs(8), server.task)
        .await
        .expect("serve stops in time with agents connected")
        .expect("serve task")
        .expect("serve stops cleanly");
    let mut ended = once.ended.clone();
    let status = tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|s| s.is_some()))
        .await
        .expect("the stream ended")
        .expect("the agent runs")
        .clone()
        .expect("a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "the server is shutting down.");

    // The agent reconnects to the restarted server and applies its state again. The one that
    // does not come back is still recorded connected (a stop records nothing, as a crash)
    // until the restarted node's first sweep of the streams it no longer has.
    let connects = agent
        .seen
        .connects
        .load(std::sync::atomic::Ordering::SeqCst);
    a.agent_sweep_secs = 1;
    let server = start(a).await;
    server.health().await;
    wait_until("the agent reconnects", Duration::from_secs(60), || {
        let now = agent
            .seen
            .connects
            .load(std::sync::atomic::Ordering::SeqCst);
        async move { now > connects }
    })
    .await;
    let admin = admin.trim();
    // A pmm-agent as the query API shows it, once `ok` holds of it.
    let shown = |id: String, what: &'static str, ok: fn(&serde_json::Value) -> bool| async move {
        wait_until(what, Duration::from_secs(60), || {
            let id = id.clone();
            async move {
                let doc = query(api, &format!("/v1/query/pmm-agents/{id}"), admin).await;
                doc.is_some_and(|d| ok(&d["pmm_agent"]))
            }
        })
        .await;
    };
    shown(
        ids[0].agent_id.clone(),
        "the agent that did not come back is swept",
        |a| {
            a["connected"] == false
                && a["agents"].as_array().is_some_and(|c| {
                    !c.is_empty() && c.iter().all(|c| c["status"] == "AGENT_STATUS_UNKNOWN")
                })
        },
    )
    .await;
    // The agent that came back is recorded on its new stream (a sweep before it came back
    // may have recorded it disconnected for a moment).
    shown(
        ids[1].agent_id.clone(),
        "the agent that came back is recorded connected here",
        |a| {
            a["connected"] == true
                && a["stream"]["session"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("node-1/"))
        },
    )
    .await;
    agent.stop();
    server.stop().await;
}
