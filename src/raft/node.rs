//! Starting this node's Raft: storage in its database, the gRPC network to its peers, and,
//! for a plain single server, a cluster of one.

use super::TypeConfig;
use super::log_store::PgLogStore;
use super::network::{Auth, Faults, GrpcNetwork, Peers};
use super::state_machine::PgStateMachine;
use crate::domain::State;
use crate::store::StoreError;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How one node takes part in its cluster.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's Raft id, unique in the cluster.
    pub id: u64,
    /// Where peers reach this node's internal service (`host:port`).
    pub addr: String,
    /// On first start, make this node a cluster of one. Off for a node that waits to be
    /// added to a cluster (or initialized together with others by `cluster init`).
    pub init_single: bool,
    pub heartbeat: Duration,
    /// Elections start after this much silence from the leader (randomized up to twice it).
    pub election_timeout: Duration,
    /// A snapshot is built after this many log entries; entries it covers are purged, apart
    /// from the last `keep_logs`.
    pub snapshot_every: u64,
    pub keep_logs: u64,
    /// Test switch to cut this node off from peers.
    pub faults: Faults,
    /// The internal service's credential, sent and required.
    pub auth: Auth,
}

impl NodeConfig {
    /// A cluster of one with no peers.
    pub fn single() -> Self {
        Self {
            id: 1,
            addr: String::new(),
            init_single: true,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_every: 5000,
            keep_logs: 1000,
            faults: Faults::default(),
            auth: Auth::default(),
        }
    }

    fn raft_config(&self) -> Result<Config, String> {
        let ms = |d: Duration| d.as_millis().max(1) as u64;
        Config {
            cluster_name: "pmm-cp".to_owned(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout),
            election_timeout_max: 2 * ms(self.election_timeout),
            install_snapshot_timeout: 10_000,
            // Chunks well under the gRPC message limit.
            snapshot_max_chunk_size: 1024 * 1024,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: self.keep_logs,
            max_payload_entries: 64,
            ..Config::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}

/// A running Raft node and the state its state machine has applied.
pub struct RaftNode {
    pub raft: Raft<TypeConfig>,
    pub applied: watch::Receiver<State>,
    pub peers: Peers,
    pub config: NodeConfig,
}

/// Starts node `config.id` on `pool`. With `init_single`, a node never initialized becomes a
/// cluster of one. When it is the only voter, this waits (at most `deadline`) until it leads.
pub async fn start(
    pool: PgPool,
    config: NodeConfig,
    deadline: Duration,
) -> Result<RaftNode, StoreError> {
    let internal = |e: &dyn std::fmt::Display| StoreError::Internal(format!("raft: {e}"));
    let sm = PgStateMachine::open(pool.clone()).await?;
    let applied = sm.subscribe();
    let raft_config = config.raft_config().map_err(|e| internal(&e))?;
    let peers = Peers::new(config.faults.clone(), config.auth.clone());
    let network = GrpcNetwork {
        id: config.id,
        peers: peers.clone(),
    };
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network,
        PgLogStore::new(pool),
        sm,
    )
    .await
    .map_err(|e| internal(&e))?;
    let initialized = raft.is_initialized().await.map_err(|e| internal(&e))?;
    let alone = if !initialized && config.init_single {
        let members = BTreeMap::from([(config.id, BasicNode::new(config.addr.clone()))]);
        raft.initialize(members).await.map_err(|e| internal(&e))?;
        true
    } else if initialized {
        // The stored membership reaches the metrics shortly after start.
        raft.wait(Some(deadline))
            .metrics(
                |m| m.membership_config.membership().nodes().next().is_some(),
                "the stored membership",
            )
            .await
            .map_err(|e| internal(&e))?
            .membership_config
            .membership()
            .voter_ids()
            .eq([config.id])
    } else {
        false
    };
    // A cluster of one elects itself: wait for it so that the node is ready for writes.
    if alone {
        raft.wait(Some(deadline))
            .current_leader(config.id, "this node leads its cluster of one")
            .await
            .map_err(|e| internal(&e))?;
    }
    Ok(RaftNode {
        raft,
        applied,
        peers,
        config,
    })
}
