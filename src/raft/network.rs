//! The network between nodes: openraft's RPCs over the internal gRPC service, and the clients
//! other parts of the node use to reach a peer (commands forwarded to the leader, cluster
//! operations, linearizable reads).
//!
//! Every call has a deadline; a peer that does not answer in time is unreachable and openraft
//! backs off. An AppendEntries message too large for one gRPC message asks openraft for fewer
//! entries instead of failing. Snapshots travel in chunks, each its own call.

use super::TypeConfig;
use super::proto::cluster_client::ClusterClient;
use super::proto::raft_peer_client::RaftPeerClient;
use super::proto::{RaftMessage, SnapshotChunk};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message between nodes, either way. AppendEntries larger than this is split.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Peers this node must not talk to: a switch for tests that cut the network (a partition is
/// each side blocking the other). Empty in production.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<RwLock<HashSet<u64>>>);

impl Faults {
    /// Drops every call from this node to `peer` until [`Faults::heal`].
    pub fn block(&self, peer: u64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }
    /// Lets every call through again.
    pub fn heal(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
    pub fn is_blocked(&self, peer: u64) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }
}

/// The metadata key of the internal service's credential.
pub const AUTH_HEADER: &str = "x-pmm-cp-cluster-auth";

/// The internal service's credential (`Cipher::internal_auth`): added to every call a node or
/// the CLI makes, and required by every node's internal service. `None` only for nodes without
/// a cluster key (tests, benchmarks), which neither send nor require one.
#[derive(Clone, Debug, Default)]
pub struct Auth(Option<Arc<str>>);

impl Auth {
    pub fn new(secret: &str) -> Self {
        Self(Some(Arc::from(secret)))
    }

    /// Refuses a call that does not carry this credential (the server side).
    pub fn check(&self, req: &tonic::Request<()>) -> Result<(), tonic::Status> {
        let Some(expected) = &self.0 else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Compared in constant time: the credential is a secret.
        let same = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(tonic::Status::unauthenticated(
                "this cluster's credential is required (the same cluster key on every node and \
                 for pmm-cp cluster/token: --cluster-key-file)",
            ))
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.0 {
            let value = tonic::metadata::MetadataValue::try_from(&**secret)
                .map_err(|_| tonic::Status::internal("the cluster credential is not ASCII"))?;
            req.metadata_mut().insert(AUTH_HEADER, value);
        }
        Ok(req)
    }
}

/// A client of a peer's Raft service, carrying the credential.
pub type PeerClient = RaftPeerClient<InterceptedService<Channel, Auth>>;
/// A client of a peer's cluster service, carrying the credential.
pub type ClusterPeer = ClusterClient<InterceptedService<Channel, Auth>>;

/// Connections to peers, one lazily connected HTTP/2 channel per address, shared by openraft's
/// replication streams and the node's own calls.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    pub faults: Faults,
    pub auth: Auth,
}

impl Peers {
    pub fn new(faults: Faults, auth: Auth) -> Self {
        Self {
            channels: Arc::default(),
            faults,
            auth,
        }
    }

    /// A channel to `addr` (`host:port`), or why there cannot be one.
    pub fn channel(&self, peer: u64, addr: &str) -> Result<Channel, String> {
        if self.faults.is_blocked(peer) {
            return Err(format!("node {peer} is cut off from this node"));
        }
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = endpoint(addr)?.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The Raft peer client for node `peer` at `addr`.
    pub fn raft_client(&self, peer: u64, addr: &str) -> Result<PeerClient, String> {
        Ok(
            RaftPeerClient::with_interceptor(self.channel(peer, addr)?, self.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    /// The cluster-service client for node `peer` at `addr`.
    pub fn cluster_client(&self, peer: u64, addr: &str) -> Result<ClusterPeer, String> {
        Ok(ClusterClient::with_interceptor(
            self.channel(peer, addr)?,
            self.auth.clone(),
        ))
    }
}

/// The endpoint for a peer's internal address.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| format!("bad node address {addr:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// openraft's network factory over [`Peers`].
#[derive(Clone, Debug, Default)]
pub struct GrpcNetwork {
    /// This node's id.
    pub id: u64,
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            id: self.id,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct Peer {
    id: u64,
    target: u64,
    addr: String,
    peers: Peers,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

fn unreachable<E: std::error::Error>(why: impl std::fmt::Display) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(why.to_string())))
}

fn network<E: std::error::Error>(why: impl std::fmt::Display) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&AnyError::error(why.to_string())))
}

/// JSON of a Raft message.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("encoding a raft message: {e}"))
}

impl Peer {
    fn client<E: std::error::Error>(&self) -> Result<PeerClient, RPCError<u64, BasicNode, E>> {
        self.peers
            .raft_client(self.target, &self.addr)
            .map_err(unreachable)
    }

    /// Turns a transport failure into what openraft should do about it.
    fn status<E: std::error::Error>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        s: tonic::Status,
    ) -> RPCError<u64, BasicNode, E> {
        match s.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            tonic::Code::Unavailable | tonic::Code::Unknown => unreachable(s.message()),
            _ => network(format!("{}: {}", s.code(), s.message())),
        }
    }

    /// Decodes a peer's answer: openraft's `Result` of the call.
    fn answer<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        json: &[u8],
    ) -> RpcResult<T, E> {
        let r: Result<T, RaftError<u64, E>> = serde_json::from_slice(json)
            .map_err(|e| network(format!("undecodable answer from node {}: {e}", self.target)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let entries = rpc.entries.len() as u64;
        let json = to_json(&rpc).map_err(network)?;
        // Leave room for the envelope; ask for half as many entries until it fits.
        if json.len() > MAX_MESSAGE - 1024 && entries > 1 {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        let mut req = tonic::Request::new(RaftMessage { json });
        req.set_timeout(option.hard_ttl());
        let resp = self
            .client()?
            .append_entries(req)
            .await
            .map_err(|s| self.status(RPCTypes::AppendEntries, &option, s))?;
        self.answer(&resp.into_inner().json)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let chunk = SnapshotChunk {
            vote_json: to_json(&rpc.vote).map_err(network)?,
            meta_json: to_json(&rpc.meta).map_err(network)?,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let mut req = tonic::Request::new(chunk);
        req.set_timeout(option.hard_ttl());
        let resp = self
            .client()?
            .install_snapshot(req)
            .await
            .map_err(|s| self.status(RPCTypes::InstallSnapshot, &option, s))?;
        self.answer(&resp.into_inner().json)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let mut req = tonic::Request::new(RaftMessage {
            json: to_json(&rpc).map_err(network)?,
        });
        req.set_timeout(option.hard_ttl());
        let resp = self
            .client()?
            .vote(req)
            .await
            .map_err(|s| self.status(RPCTypes::Vote, &option, s))?;
        self.answer(&resp.into_inner().json)
    }
}
