//! In-process cluster nodes for tests: each with its own database, its internal gRPC service
//! on a loopback port, and a fault switch that cuts it off from chosen peers.
#![allow(dead_code)]

use super::{TestDb, wait_until};
use pmmcp::commands::dispatcher::{Dispatcher, DispatcherConfig};
use pmmcp::raft::network::{Faults, endpoint};
use pmmcp::raft::node::NodeConfig;
use pmmcp::raft::proto::cluster_client::ClusterClient;
use pmmcp::raft::service::Internal;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Raft settings of test nodes.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub snapshot_every: u64,
    pub keep_logs: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            snapshot_every: 5000,
            keep_logs: 1000,
        }
    }
}

pub struct TestNode {
    pub id: u64,
    pub addr: SocketAddr,
    pub db: Arc<TestDb>,
    pub pool: PgPool,
    pub dispatcher: Dispatcher,
    pub faults: Faults,
    opts: Opts,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestNode {
    /// Starts node `id` on `db`, at `addr` (a free loopback port when `None`). `init_single`:
    /// a new node becomes a cluster of one; otherwise it waits to be added.
    pub async fn start(
        id: u64,
        db: Arc<TestDb>,
        addr: Option<SocketAddr>,
        init_single: bool,
        opts: Opts,
    ) -> Self {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind the internal address");
        let addr = listener.local_addr().expect("addr");
        let pool = db.pool().await;
        let faults = Faults::default();
        let node = NodeConfig {
            id,
            addr: addr.to_string(),
            init_single,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(700),
            snapshot_every: opts.snapshot_every,
            keep_logs: opts.keep_logs,
            faults: faults.clone(),
            auth: Default::default(),
        };
        let config = DispatcherConfig {
            node_name: format!("node-{id}"),
            ..DispatcherConfig::default()
        };
        let (dispatcher, _writer) = Dispatcher::start_node(pool.clone(), config, node)
            .await
            .expect("node starts");
        let internal = Internal::new(dispatcher.clone(), pool.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(internal.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            id,
            addr,
            db,
            pool,
            dispatcher,
            faults,
            opts,
            stop: Some(stop),
            server,
        }
    }

    /// A one-node cluster on a new database with the PMM Server's own entities recorded.
    pub async fn single() -> Self {
        let node = Self::start(
            1,
            Arc::new(TestDb::new().await),
            None,
            true,
            Opts::default(),
        )
        .await;
        node.dispatcher
            .dispatch(
                pmmcp::commands::Command::BootstrapServer(Default::default()),
                pmmcp::commands::CommandMeta::with_id("bootstrap", "system"),
            )
            .await
            .expect("bootstrap");
        node
    }

    /// Stops the node (Raft, its service, its pool) and returns what a restart needs.
    pub async fn stop(mut self) -> (Arc<TestDb>, SocketAddr, Opts) {
        self.dispatcher.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
        self.pool.close().await;
        (self.db.clone(), self.addr, self.opts)
    }

    /// Starts a stopped node again on its database and address.
    pub async fn restart(id: u64, stopped: (Arc<TestDb>, SocketAddr, Opts)) -> Self {
        let (db, addr, opts) = stopped;
        Self::start(id, db, Some(addr), false, opts).await
    }

    pub fn cluster_client(&self) -> ClusterClient<Channel> {
        ClusterClient::new(
            endpoint(&self.addr.to_string())
                .expect("endpoint")
                .connect_lazy(),
        )
    }

    /// Records a token of `role` named `name` through this node and waits until this node has
    /// applied it; returns the token's secret.
    pub async fn token(&self, name: &str, role: pmmcp::domain::Role) -> String {
        use pmmcp::domain::token::{new_token_secret, token_hash};
        let secret = new_token_secret();
        let create = pmmcp::commands::tokens::CreateToken {
            agent_id: None,
            name: name.to_owned(),
            role,
            hash: token_hash(&secret),
        };
        let applied = self
            .dispatcher
            .dispatch(
                pmmcp::commands::Command::CreateToken(create),
                pmmcp::commands::CommandMeta::new("t"),
            )
            .await
            .expect("token recorded");
        self.dispatcher
            .wait_for(applied.revision, Duration::from_secs(10))
            .await
            .expect("applied here");
        secret
    }

    /// Serves this node's public API (gRPC, REST and the query API, on one loopback port);
    /// returns its address.
    pub async fn serve_public(&self) -> SocketAddr {
        // One key for every node, as a cluster has: a secret sealed on one opens on all.
        let cipher = Arc::new(pmmcp::crypto::Cipher::from_key(&[7; 32]));
        // The lowest bcrypt cost: tests hash every exporter's password.
        let agents = pmmcp::agents::AgentServer::new(self.dispatcher.clone(), cipher.clone(), 4);
        let mut api = pmmcp::grpc::Api::new(self.dispatcher.clone(), self.pool.clone(), cipher);
        api.agents = Some(agents.clone());
        let query = pmmcp::api::QueryApi {
            pool: self.pool.clone(),
            dispatcher: self.dispatcher.clone(),
            internal: Internal::new(self.dispatcher.clone(), self.pool.clone()),
            agents: Some(agents),
        };
        let app = pmmcp::grpc::router(api, query).expect("the public router builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.dispatcher.raft().metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }
}

/// Starts node 1 as a cluster of one, nodes 2 and 3 waiting, and makes all three voters
/// through the cluster service (node 1 adds the learners, node 2 is asked to change the
/// membership and forwards it to the leader).
pub async fn three_nodes(opts: Opts) -> Vec<TestNode> {
    let n1 = TestNode::start(1, Arc::new(TestDb::new().await), None, true, opts).await;
    let n2 = TestNode::start(2, Arc::new(TestDb::new().await), None, false, opts).await;
    let n3 = TestNode::start(3, Arc::new(TestDb::new().await), None, false, opts).await;
    let mut c1 = n1.cluster_client();
    for n in [&n2, &n3] {
        c1.add_learner(pmmcp::raft::proto::AddLearnerRequest {
            member: Some(pmmcp::raft::proto::Member {
                id: n.id,
                addr: n.addr.to_string(),
            }),
        })
        .await
        .expect("add learner");
    }
    let status = n2
        .cluster_client()
        .change_membership(pmmcp::raft::proto::ChangeMembershipRequest {
            voters: vec![1, 2, 3],
            retain: false,
        })
        .await
        .expect("change membership")
        .into_inner();
    assert_eq!(status.leader, Some(1));
    assert!(status.members.iter().all(|m| m.voter), "{status:?}");
    vec![n1, n2, n3]
}

/// The log head of a node's database.
pub async fn head(pool: &PgPool) -> (i64, Vec<u8>) {
    sqlx::query_as("SELECT position, hash FROM log_head")
        .fetch_one(pool)
        .await
        .expect("log head")
}

/// Every query row, as text, in a stable order: equal on nodes that applied the same log.
pub async fn query_rows(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in ["nodes", "services", "agents", "settings"] {
        let sql = format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1");
        let mut part: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .expect("query rows");
        rows.append(&mut part);
    }
    rows
}

/// Waits until every given pool has the same log head, at least `at_least`, and then checks
/// that their query rows are identical and their chains verify.
pub async fn converged(pools: &[&PgPool], at_least: i64) -> (i64, Vec<u8>) {
    wait_until(
        "every node to reach one head",
        Duration::from_secs(30),
        || async {
            let mut heads = Vec::new();
            for p in pools {
                heads.push(head(p).await);
            }
            heads[0].0 >= at_least && heads.iter().all(|h| *h == heads[0])
        },
    )
    .await;
    let first = query_rows(pools[0]).await;
    for p in &pools[1..] {
        assert_eq!(
            query_rows(p).await,
            first,
            "query rows differ between nodes"
        );
    }
    for p in pools {
        let report = pmmcp::store::log::verify(p).await.expect("verify");
        assert!(report.is_ok(), "{:?}", report.first_error);
    }
    head(pools[0]).await
}

/// Waits until one of `nodes` leads, in a term all of them agree on, and returns its index.
pub async fn wait_for_leader(nodes: &[&TestNode], deadline: Duration) -> usize {
    let mut found = 0;
    wait_until("a leader", deadline, || {
        let leaders: Vec<Option<u64>> = nodes.iter().map(|n| n.leader()).collect();
        let leading = nodes.iter().position(|n| n.is_leader());
        if let Some(i) = leading {
            found = i;
        }
        let agreed = leading.is_some() && leaders.iter().all(|l| *l == Some(nodes[found].id));
        async move { agreed }
    })
    .await;
    found
}
