//! The internal gRPC services a node serves to its peers and to `pmm-cp cluster`: openraft's
//! RPCs, commands forwarded to the leader, linearizable read indexes, and the cluster
//! operations (init, add learner, change membership, status).

use super::TypeConfig;
use super::network::{ClusterPeer, MAX_MESSAGE, Peers, to_json};
use super::proto::cluster_server::{Cluster, ClusterServer};
use super::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use super::proto::{
    AddLearnerRequest, ChangeMembershipRequest, ForwardRequest, ForwardResponse, InitRequest,
    NodeStatus, RaftMessage, ReadIndexRequest, ReadIndexResponse, SnapshotChunk, StatusRequest,
    StatusResponse,
};
use crate::commands::dispatcher::{Dispatcher, MAX_FORWARDED};
use crate::commands::{Command, CommandMeta};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::InstallSnapshotRequest;
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::info;

/// How long a member has to answer a status question.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Metadata on a cluster operation a node forwarded to the leader.
const FORWARDED: &str = "x-pmm-cp-forwarded";
/// How long a cluster operation waits for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a membership change may take (a learner catching up included); the server's own
/// limit on a call is a little longer, so the caller hears why it did not finish.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
const CALL_TIMEOUT: Duration = Duration::from_secs(130);

/// Where a cluster operation is carried out.
enum Route<T> {
    Leader(ClusterPeer, Request<T>),
    Here(Request<T>),
}

/// Both internal services of one node.
#[derive(Clone)]
pub struct Internal {
    dispatcher: Dispatcher,
    pool: PgPool,
    peers: Peers,
}

impl Internal {
    pub fn new(dispatcher: Dispatcher, pool: PgPool) -> Self {
        let peers = dispatcher.peers().clone();
        Self {
            dispatcher,
            pool,
            peers,
        }
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        self.dispatcher.raft()
    }

    /// Serves both services on `listener` until `shutdown` resolves. Every call must carry
    /// this cluster's credential (when the node has one).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let auth = self.peers.auth.clone();
        let check = move |req: Request<()>| auth.check(&req).map(|()| req);
        let raft = RaftPeerServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let raft = InterceptedService::new(raft, check.clone());
        let cluster = InterceptedService::new(ClusterServer::new(self), check);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            // Backpressure: a bounded number of calls per connection at a time.
            .concurrency_limit_per_connection(64)
            .timeout(CALL_TIMEOUT)
            .add_service(raft)
            .add_service(cluster)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    /// This node's status; `lag` is left for the caller.
    async fn local_status(&self) -> NodeStatus {
        let m = self.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let head = sqlx::query_as::<_, (i64, Vec<u8>)>("SELECT position, hash FROM log_head")
            .fetch_one(&self.pool);
        let (revision, head_hash, error) =
            match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, head).await {
                Ok(Ok((p, h))) => (p, hex::encode(h), String::new()),
                Ok(Err(e)) => (0, String::new(), format!("reading the log head: {e}")),
                Err(_) => (
                    0,
                    String::new(),
                    "the database did not answer in time".to_owned(),
                ),
            };
        NodeStatus {
            id: m.id,
            addr: membership
                .get_node(&m.id)
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            revision,
            head_hash,
            error,
            lag: None,
            voter: membership.voter_ids().any(|v| v == m.id),
        }
    }

    /// The cluster as this node sees it: every member asked for its own status.
    pub async fn cluster_status(&self) -> StatusResponse {
        let m = self.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let me = m.id;
        let mut asks = tokio::task::JoinSet::new();
        for (&id, node) in membership.nodes() {
            let this = self.clone();
            let node = node.clone();
            let voter = voters.contains(&id);
            asks.spawn(async move {
                let mut status = if id == me {
                    this.local_status().await
                } else {
                    this.ask_status(id, &node.addr)
                        .await
                        .unwrap_or_else(|error| NodeStatus {
                            id,
                            addr: node.addr.clone(),
                            role: "Unknown".to_owned(),
                            error,
                            ..NodeStatus::default()
                        })
                };
                status.voter = voter;
                status
            });
        }
        let mut members: Vec<NodeStatus> = asks.join_all().await;
        members.sort_by_key(|s| s.id);
        if members.is_empty() {
            members.push(self.local_status().await);
        }
        let leader_last = members
            .iter()
            .find(|s| Some(s.id) == m.current_leader && s.error.is_empty())
            .and_then(|s| s.last_log_index);
        for s in &mut members {
            if let (Some(last), Some(applied)) = (leader_last, s.applied_index) {
                s.lag = Some(last.saturating_sub(applied));
            }
        }
        StatusResponse {
            leader: m.current_leader,
            term: m.current_term,
            members,
        }
    }

    async fn ask_status(&self, id: u64, addr: &str) -> Result<NodeStatus, String> {
        let mut client = self.peers.cluster_client(id, addr)?;
        let mut req = Request::new(StatusRequest {});
        req.set_timeout(MEMBER_STATUS_TIMEOUT);
        client
            .node_status(req)
            .await
            .map(Response::into_inner)
            .map_err(|s| format!("node {id} at {addr}: {}", s.message()))
    }

    /// Decides commands: on this node only (`route` false: a peer forwarded them), or routed
    /// to the leader wherever it is.
    async fn commands(
        &self,
        req: Request<ForwardRequest>,
        route: bool,
    ) -> Result<Response<ForwardResponse>, Status> {
        let items: Vec<(Command, CommandMeta)> = decode(&req.into_inner().json, "commands")?;
        if items.len() > MAX_FORWARDED {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_FORWARDED} commands in one call"
            )));
        }
        let results = if route {
            self.dispatcher.dispatch_batch(items).await
        } else {
            self.dispatcher.dispatch_here(items).await
        };
        let json = to_json(&results).map_err(Status::internal)?;
        Ok(Response::new(ForwardResponse { json }))
    }

    /// Where a membership change is carried out: by the leader (forwarded to it, once at
    /// most: two nodes that each think the other leads must not bounce it between them), or
    /// here.
    async fn route<T>(&self, req: Request<T>) -> Result<Route<T>, Status> {
        let Some(leader) = self.leader_client().await? else {
            return Ok(Route::Here(req));
        };
        if req.metadata().contains_key(FORWARDED) {
            return Err(Status::unavailable("the leader is changing; try again"));
        }
        let mut fwd = Request::new(req.into_inner());
        fwd.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        Ok(Route::Leader(leader, fwd))
    }

    /// The leader's cluster client, when another node leads. Waits a little for an election
    /// (or for a new member to hear from its leader).
    async fn leader_client(&self) -> Result<Option<ClusterPeer>, Status> {
        let _ = self
            .raft()
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        let (me, leader) = {
            let m = self.raft().metrics();
            let m = m.borrow();
            (m.id, super::leader_of(&m))
        };
        match leader {
            None => Err(Status::unavailable("the cluster has no leader right now")),
            Some((l, _)) if l == me => Ok(None),
            Some((l, addr)) => {
                let addr =
                    addr.ok_or_else(|| Status::unavailable(format!("leader {l} has no address")))?;
                let client = self
                    .peers
                    .cluster_client(l, &addr)
                    .map_err(Status::unavailable)?;
                Ok(Some(client))
            }
        }
    }
}

fn decode<T: DeserializeOwned>(json: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(json).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

fn reply(json: Result<Vec<u8>, String>) -> Result<Response<RaftMessage>, Status> {
    json.map(|json| Response::new(RaftMessage { json }))
        .map_err(Status::internal)
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Status::failed_precondition(format!(
                "not the leader{}",
                f.leader_node
                    .map(|n| format!("; the leader is {}", n.addr))
                    .unwrap_or_default()
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        RaftError::Fatal(f) => Status::unavailable(format!("raft stopped: {f}")),
    }
}

#[tonic::async_trait]
impl RaftPeer for Internal {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(&req.into_inner().json, "append entries")?;
        reply(to_json(&self.raft().append_entries(rpc).await))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(&req.into_inner().json, "vote")?;
        reply(to_json(&self.raft().vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        req: Request<SnapshotChunk>,
    ) -> Result<Response<RaftMessage>, Status> {
        let chunk = req.into_inner();
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: decode(&chunk.vote_json, "snapshot vote")?,
            meta: decode(&chunk.meta_json, "snapshot meta")?,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        };
        reply(to_json(&self.raft().install_snapshot(rpc).await))
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        self.commands(req, false).await
    }

    async fn submit(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        self.commands(req, true).await
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        // After this the leader has applied everything committed before the call.
        self.raft()
            .ensure_linearizable()
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(ReadIndexResponse {
            revision: self.dispatcher.state().revision,
        }))
    }
}

#[tonic::async_trait]
impl Cluster for Internal {
    async fn init(&self, req: Request<InitRequest>) -> Result<Response<StatusResponse>, Status> {
        let members: BTreeMap<u64, BasicNode> = req
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.id, BasicNode::new(m.addr)))
            .collect();
        if members.is_empty() {
            return Err(Status::invalid_argument("name at least one member"));
        }
        info!(?members, "initializing the cluster");
        self.raft()
            .initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.raft()
            .wait(Some(MEMBERSHIP_TIMEOUT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(self.cluster_status().await))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let req = match self.route(req).await? {
            Route::Leader(mut leader, fwd) => return leader.add_learner(fwd).await,
            Route::Here(req) => req,
        };
        let member = req
            .into_inner()
            .member
            .ok_or_else(|| Status::invalid_argument("member: required"))?;
        if member.addr.is_empty() {
            return Err(Status::invalid_argument("member.addr: required"));
        }
        info!(id = member.id, addr = %member.addr, "adding a learner");
        let id = member.id;
        let added = self
            .raft()
            .add_learner(id, BasicNode::new(member.addr), false)
            .await
            .map_err(write_error)?;
        // Caught up: the learner holds everything up to its own membership entry (openraft's
        // blocking mode only waits until it is within `replication_lag_threshold`).
        let upto = added.log_id.index;
        self.raft()
            .wait(Some(MEMBERSHIP_TIMEOUT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= upto)
                },
                "the learner to catch up",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(format!("node {id} did not catch up: {e}")))?;
        Ok(Response::new(self.cluster_status().await))
    }

    async fn change_membership(
        &self,
        req: Request<ChangeMembershipRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let req = match self.route(req).await? {
            Route::Leader(mut leader, fwd) => return leader.change_membership(fwd).await,
            Route::Here(req) => req,
        };
        let req = req.into_inner();
        let voters: BTreeSet<u64> = req.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("voters: name at least one"));
        }
        info!(?voters, retain = req.retain, "changing the voters");
        self.raft()
            .change_membership(voters, req.retain)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.cluster_status().await))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.cluster_status().await))
    }

    async fn node_status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(self.local_status().await))
    }
}
