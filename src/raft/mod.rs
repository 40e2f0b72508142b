//! Raft under the command entry point (DESIGN fixed decisions 1 to 6): the type configuration,
//! the log storage and the state machine, both in this node's PostgreSQL database.
//!
//! An entry carries a [`Batch`] decided by the leader (events, never commands). Applying it is
//! the foundation's append transaction, which also records the entry's log id; a batch whose
//! base is not the head is refused identically on every node.

// openraft's traits return its StorageError, which is large; we cannot box it.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod node;
pub mod service;
pub mod state_machine;

/// The internal gRPC protocol (`proto/pmmcp/cluster/v1/cluster.proto`).
pub mod proto {
    tonic::include_proto!("pmmcp.cluster.v1");
}

use crate::store::Batch;
use crate::store::log::Positions;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The Raft types of pmm-cp.
    pub TypeConfig:
        D = Batch,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What applying one entry did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A blank or membership entry.
    #[default]
    Nothing,
    /// The batch was appended: positions per appended command.
    Appended(Vec<Positions>),
    /// The batch was decided on a base that is not the head: nothing was written; its commands
    /// are decided again.
    Stale { base: i64, head: i64 },
}

/// openraft's storage error from one of its constructors and any displayable cause, e.g.
/// `io(StorageIOError::read_logs, e)`.
pub(crate) fn io(
    make: impl FnOnce(openraft::AnyError) -> openraft::StorageIOError<u64>,
    e: impl std::fmt::Display,
) -> openraft::StorageError<u64> {
    openraft::StorageError::from(make(openraft::AnyError::error(e.to_string())))
}

/// The leader `metrics` know of: its id and, when the membership names it, its address.
pub fn leader_of(
    metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>,
) -> Option<(u64, Option<String>)> {
    let id = metrics.current_leader?;
    let addr = metrics
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone());
    Some((id, addr))
}
