//! Starting this node's Raft: storage in its database, and (for now) a cluster of one.

use super::TypeConfig;
use super::log_store::PgLogStore;
use super::network::NoPeers;
use super::state_machine::PgStateMachine;
use crate::domain::State;
use crate::store::StoreError;
use openraft::{BasicNode, Config, Raft};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A running Raft node and the state its state machine has applied.
pub struct RaftNode {
    pub raft: Raft<TypeConfig>,
    pub applied: watch::Receiver<State>,
}

/// Starts node `id` on `pool` as a cluster of one, initializing the cluster on first start, and
/// waits (at most `deadline`) until it leads.
pub async fn start_single(
    pool: PgPool,
    id: u64,
    deadline: Duration,
) -> Result<RaftNode, StoreError> {
    let internal = |e: &dyn std::fmt::Display| StoreError::Internal(format!("raft: {e}"));
    let sm = PgStateMachine::open(pool.clone()).await?;
    let applied = sm.subscribe();
    let config = Config {
        cluster_name: "pmm-cp".to_owned(),
        ..Config::default()
    }
    .validate()
    .map_err(|e| internal(&e))?;
    let raft = Raft::new(id, Arc::new(config), NoPeers, PgLogStore::new(pool), sm)
        .await
        .map_err(|e| internal(&e))?;
    if !raft.is_initialized().await.map_err(|e| internal(&e))? {
        let members = BTreeMap::from([(id, BasicNode::default())]);
        raft.initialize(members).await.map_err(|e| internal(&e))?;
    }
    raft.wait(Some(deadline))
        .current_leader(id, "this node leads its cluster of one")
        .await
        .map_err(|e| internal(&e))?;
    Ok(RaftNode { raft, applied })
}
