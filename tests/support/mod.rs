//! Test support: a fresh PostgreSQL database per test on the server named by
//! `PMM_TEST_DATABASE_URL` (default: the local server on 127.0.0.1:5432), dropped at the end,
//! and small command builders.
#![allow(dead_code)]

pub mod cluster;

use pmmcp::commands::dispatcher::{Dispatcher, DispatcherConfig};
use pmmcp::commands::nodes::AddNode;
use pmmcp::commands::register_node::RegisterNode;
use pmmcp::commands::{Command, CommandMeta};
use pmmcp::domain::NodeType;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::time::{Duration, Instant};

pub fn admin_url() -> String {
    std::env::var("PMM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test; dropped (with its connections) when the value is.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("pmmcp_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url())
            .await
            .expect("the test PostgreSQL server is reachable (run scripts/test)");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin_url();
        let url = match base.rsplit_once('/') {
            Some((head, tail)) if !head.ends_with('/') => {
                let query = tail
                    .split_once('?')
                    .map(|(_, q)| format!("?{q}"))
                    .unwrap_or_default();
                format!("{head}/{name}{query}")
            }
            _ => format!("{base}/{name}"),
        };
        Self { name, url }
    }

    /// A migrated pool on this database.
    pub async fn pool(&self) -> PgPool {
        pmmcp::store::connect(&self.url, 8)
            .await
            .expect("connect and migrate")
    }

    /// A pool and a started dispatcher with the PMM Server fixtures recorded.
    pub async fn dispatcher(&self) -> (PgPool, Dispatcher) {
        let pool = self.pool().await;
        let (d, _task) = Dispatcher::start(pool.clone(), DispatcherConfig::default())
            .await
            .expect("dispatcher starts");
        d.dispatch(
            Command::BootstrapServer(Default::default()),
            CommandMeta::with_id("bootstrap", "system"),
        )
        .await
        .expect("bootstrap");
        (pool, d)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a thread with its own runtime works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            })
        })
        .join();
    }
}

/// Polls `cond` until it holds or `deadline` passes (never a fixed sleep: the interval only
/// paces the polling).
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn add_node(name: &str) -> Command {
    Command::AddNode(AddNode {
        node_type: Some(NodeType::Generic),
        node_name: name.to_owned(),
        address: format!("{name}.example"),
        ..AddNode::default()
    })
}

pub fn register_node(name: &str) -> Command {
    Command::RegisterNode(RegisterNode {
        node_type: Some(NodeType::Generic),
        node_name: name.to_owned(),
        address: format!("{name}.example"),
        ..RegisterNode::default()
    })
}

pub async fn count_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A gRPC request with a bearer token.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

/// The `x-pmm-revision` of an answer.
pub fn revision_of<T>(r: &tonic::Response<T>) -> i64 {
    r.metadata()
        .get("x-pmm-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-pmm-revision")
}
