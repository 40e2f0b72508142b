//! pmm-agent streams (`agent.v1.AgentService/Connect`): PMM's agent protocol on any node.
//!
//! - A pmm-agent connects with its id (`pmm-agent-id`), version (`pmm-agent-version`) and the
//!   token RegisterNode issued it (`authorization: Bearer`). Unknown or removed pmm-agents and
//!   tokens of other agents are refused; one live stream per pmm-agent on a node (a second
//!   connection pings the first and takes over only if it does not answer).
//! - The server sends the desired state ([`desired::render`]) with its revision on connect and
//!   again only when a change affects that pmm-agent (its inputs are compared by identity in the
//!   persistent state, then the message by value); the agent's answer records the revision it
//!   applied.
//! - StateChanged reports and connects/disconnects become [`ReportAgents`] commands, batched
//!   and deduplicated by [`reports::Batcher`], sent to the leader from any node. An agent's
//!   streams are ordered by when they opened, so a late connect of an older stream (from
//!   another node) is not recorded; a live stream the state does not record sends its
//!   connect again at its pings.
//! - The server pings every [`PING_EVERY`], records round trip and clock drift, and closes a
//!   stream whose agent stops answering; a removed pmm-agent is disconnected at once.
//! - Each stream has a bounded outbox and reads the state through a watch (latest value only),
//!   so a slow agent holds at most a few messages and never blocks another.

pub mod desired;
pub mod reports;
mod router;
mod service;
pub mod sim;
pub mod web_auth;

use crate::commands::agent_reports::{AgentReport, Connection};
use crate::commands::dispatcher::Dispatcher;
use crate::crypto::Cipher;
use crate::domain::agent::AgentStatus;
use crate::domain::{AgentId, AgentType, Role, State};
use crate::grpc::pb::agent::v1::{
    AgentMessage, Ping, Pong, ServerMessage, StateChangedResponse, agent_message, server_message,
};
use crate::grpc::pb::google::rpc::Status as RpcStatus;
use crate::grpc::pb::inventory::v1::AgentStatus as PbStatus;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

pub use reports::Batcher;

/// How often the server pings each stream.
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// A stream whose agent has not answered for this long is closed.
pub const DEAD_AFTER: Duration = Duration::from_secs(30);
/// How long a new connection waits for the old one's Pong before taking over.
const TAKEOVER_PING: Duration = Duration::from_secs(2);
/// Messages queued to one agent at most (SetState, pings, answers).
const OUTBOX: usize = 8;
/// Why streams end when their node stops.
const SHUTTING_DOWN: &str = "the server is shutting down.";
/// Reports of one stream waiting to be recorded at most.
const MAX_OUTSTANDING: usize = 64;

/// A reported string as the log can keep it: no NUL, at most 1,024 characters.
fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != '\0').take(1024).collect()
}

/// What this node knows of one live stream (for status pages and the query API).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamInfo {
    pub pmm_agent_id: String,
    pub session: String,
    pub version: String,
    pub connected_at: chrono::DateTime<chrono::Utc>,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    /// The revision of the last desired state sent, and the last one the agent applied.
    pub desired_revision: i64,
    pub applied_revision: i64,
    /// The revision up to which this stream's desired state is known current: it compared
    /// its state at every later revision it was woken for, and the others concerned other
    /// agents.
    pub evaluated_revision: i64,
    pub round_trip_ms: Option<f64>,
    /// The agent's clock minus ours, from the last Pong (ms).
    pub clock_drift_ms: Option<f64>,
}

struct Entry {
    info: StreamInfo,
    /// Ends the stream, with the reason told to the agent.
    kick: Option<oneshot::Sender<&'static str>>,
    /// Tells the stream a revision may change its desired state ([`router`]).
    wake: Arc<Notify>,
    /// The latest revision the stream was woken for.
    wanted: i64,
    /// Asks the stream to ping its agent; answers whether it did.
    probe: mpsc::Sender<oneshot::Sender<bool>>,
}

impl Entry {
    /// The stream's info, its evaluated revision brought up to `routed` (read before the
    /// registry's lock) when it has evaluated every revision it was woken for: the revisions
    /// since concerned other agents only.
    fn info_at(&self, routed: i64) -> StreamInfo {
        let mut info = self.info.clone();
        if info.evaluated_revision >= self.wanted {
            info.evaluated_revision = info.evaluated_revision.max(routed);
        }
        info
    }
}

/// The agent service of one node. Cheap to clone.
#[derive(Clone)]
pub struct AgentServer {
    dispatcher: Dispatcher,
    cipher: Arc<Cipher>,
    registry: Arc<Mutex<HashMap<AgentId, Entry>>>,
    batcher: Batcher,
    hasher: web_auth::Hasher,
    /// The latest revision whose streams the router has woken.
    routed: Arc<AtomicI64>,
    /// Set (under the registry's lock) when the node stops: no stream is accepted after.
    stopping: Arc<AtomicBool>,
    /// Wakes this node's background tasks when it stops (they hold its dispatcher).
    stopped: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentServer {
    /// `hash_cost`: the bcrypt cost of exporters' web-config hashes ([`web_auth`]).
    pub fn new(dispatcher: Dispatcher, cipher: Arc<Cipher>, hash_cost: u32) -> Self {
        let batcher = Batcher::start(dispatcher.clone());
        let hasher = web_auth::Hasher::new(
            dispatcher.clone(),
            cipher.clone(),
            batcher.clone(),
            hash_cost,
        );
        let server = Self {
            dispatcher: dispatcher.clone(),
            cipher,
            registry: Arc::default(),
            batcher,
            hasher,
            routed: Arc::default(),
            stopping: Arc::default(),
            stopped: Arc::default(),
        };
        // The router's first "last state" is taken now: a stream registered after this
        // evaluates a state at least this new, so no change between is missed.
        let mut states = dispatcher.subscribe();
        let last = states.borrow_and_update().clone();
        tokio::spawn(router::route(server.clone(), states, last));
        server
    }

    /// The live streams on this node, by pmm-agent id.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let routed = self.routed.load(Ordering::SeqCst);
        let mut out: Vec<StreamInfo> = lock(&self.registry)
            .values()
            .map(|e| e.info_at(routed))
            .collect();
        out.sort_by(|a, b| a.pmm_agent_id.cmp(&b.pmm_agent_id));
        out
    }

    pub fn stream(&self, id: &AgentId) -> Option<StreamInfo> {
        let routed = self.routed.load(Ordering::SeqCst);
        lock(&self.registry).get(id).map(|e| e.info_at(routed))
    }

    /// Ends every stream and refuses new ones, for a node that stops: each agent is told
    /// Unavailable and reconnects (to this node once it is back, or to another). Their
    /// disconnections are not recorded, as after a crash: the agents' next connections
    /// supersede these, and a node restarting does not turn everything UNKNOWN in between.
    pub fn stop(&self) {
        let kicks: Vec<_> = {
            let mut reg = lock(&self.registry);
            self.stopping.store(true, Ordering::SeqCst);
            reg.values_mut().filter_map(|e| e.kick.take()).collect()
        };
        self.hasher.stop();
        self.stopped.notify_waiters();
        let n = kicks.len();
        for kick in kicks {
            let _ = kick.send(SHUTTING_DOWN);
        }
        if n > 0 {
            tracing::info!(streams = n, "pmm-agent streams closed for shutdown");
        }
    }

    /// Every `every` (the first time `every` after now), records disconnected the pmm-agents
    /// recorded as connected on a stream of this node that it no longer has: streams a crash or
    /// a stop ended without recording it. Agents that came back meanwhile are recorded on their
    /// new stream, and a close of an older stream changes nothing, so a sweep never undoes a
    /// live connection. The leader also sweeps the sessions of nodes removed from the
    /// cluster. Ends when the node stops.
    pub fn sweep_stale_connections(&self, every: Duration) {
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let stopped = server.stopped.notified();
                if server.stopping.load(Ordering::SeqCst) {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stopped => return,
                }
                let n = server.sweep();
                if n > 0 {
                    tracing::info!(
                        pmm_agents = n,
                        "pmm-agents recorded as connected on streams this node no longer has: recording them disconnected"
                    );
                }
            }
        });
    }

    /// One sweep ([`Self::sweep_stale_connections`]): how many disconnections it sent.
    fn sweep(&self) -> usize {
        // The state first: a stream registered after it has a session the state does not
        // hold yet.
        let state = self.dispatcher.state();
        // An agent with a stream here is left to it (its own connect heals what is recorded,
        // see `check_recorded`), even while the state still holds an older session of it.
        let live: std::collections::HashSet<AgentId> =
            lock(&self.registry).keys().cloned().collect();
        let prefix = self.session_prefix();
        // The leader also sweeps the sessions of nodes no longer in the cluster: they will
        // not come back to sweep their own.
        let removed_node = {
            let metrics = self.dispatcher.raft().metrics();
            let m = metrics.borrow();
            let members: std::collections::HashSet<u64> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            let leader = m.current_leader == Some(m.id);
            move |session: &str| {
                leader && session_node(session).is_some_and(|n| !members.contains(&n))
            }
        };
        let mut n = 0;
        for (id, a) in state.agents.iter() {
            let Some(session) = a.session.as_deref() else {
                continue;
            };
            let stale =
                !live.contains(id) && (session.starts_with(&prefix) || removed_node(session));
            if a.connected && stale {
                self.batcher.connection(Connection {
                    pmm_agent_id: id.clone(),
                    session: session.to_owned(),
                    connected: false,
                    since: a.session_since,
                    version: None,
                });
                n += 1;
            }
        }
        n
    }

    /// Whether this node is in the cluster's membership (a voter or a learner).
    fn is_member(&self) -> bool {
        let metrics = self.dispatcher.raft().metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == m.id)
    }

    /// What this node's session ids start with: its Raft id.
    fn session_prefix(&self) -> String {
        format!("node-{}/", self.dispatcher.node_id())
    }

    /// The tonic service to mount.
    pub fn service(self) -> service::AgentGrpc {
        service::AgentGrpc(self)
    }

    /// Checks the metadata of a Connect call: who the agent is and that its token is its own.
    fn authenticate(
        &self,
        meta: &tonic::metadata::MetadataMap,
        state: &State,
    ) -> Result<Authenticated, Status> {
        let text = |k: &str| {
            meta.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .trim()
                .to_owned()
        };
        let id = text("pmm-agent-id");
        // PMM 2 agents may still send the legacy `/agent_id/` prefix.
        let id = id.strip_prefix("/agent_id/").unwrap_or(&id).to_owned();
        if id.is_empty() {
            return Err(Status::permission_denied("Empty Agent ID."));
        }
        let version = text("pmm-agent-version");
        if crate::files::scrape::version(Some(&version)).is_none() {
            return Err(Status::invalid_argument(format!(
                "pmm-agent-version: {:?} is not a version.",
                version.chars().take(64).collect::<String>()
            )));
        }
        let secret = bearer_or_basic(&text("authorization"));
        if secret.is_empty() {
            return Err(Status::unauthenticated(
                "a pmm-agent token is required (authorization: Bearer, or Basic with the token as the password).",
            ));
        }
        let hash = crate::domain::token::token_hash(&secret);
        let token = state
            .token_by_hash(&hash)
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token."))?;
        let agent_id = AgentId::from(id.as_str());
        if token.role != Role::Agent || token.agent_id.as_ref() != Some(&agent_id) {
            return Err(Status::permission_denied(
                "this token is not this pmm-agent's.",
            ));
        }
        let agent = state
            .agents
            .get(&agent_id)
            .filter(|a| a.agent_type == AgentType::PmmAgent)
            .ok_or_else(|| {
                Status::permission_denied(format!("pmm-agent with ID {id:?} not found."))
            })?;
        if agent.runs_on_node_id.is_none() {
            return Err(Status::permission_denied(
                "pmm-agent has no runs_on_node_id.",
            ));
        }
        Ok(Authenticated {
            agent_id,
            version,
            token_hash: hash,
        })
    }

    /// Makes room for a new stream of `id`: refuses it while the old stream answers a ping,
    /// else kicks the old one (only that one: a stream registered meanwhile stays).
    async fn take_over(&self, id: &AgentId) -> Result<(), Status> {
        let probed = lock(&self.registry)
            .get(id)
            .map(|e| (e.probe.clone(), e.info.session.clone()));
        let Some((probe, session)) = probed else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        let asked = async { probe.send(tx).await.is_ok() && matches!(rx.await, Ok(true)) };
        let alive = tokio::time::timeout(TAKEOVER_PING, asked)
            .await
            .unwrap_or(false);
        if alive {
            return Err(Status::already_exists(format!(
                "pmm-agent with ID {id:?} is already connected."
            )));
        }
        let old = {
            let mut reg = lock(&self.registry);
            let same = reg.get(id).is_some_and(|e| e.info.session == session);
            if same { reg.remove(id) } else { None }
        };
        if let Some(kick) = old.and_then(|mut o| o.kick.take()) {
            let _ = kick.send("another connection of this pmm-agent took over.");
        }
        Ok(())
    }
}

/// Who a Connect call authenticated as.
struct Authenticated {
    agent_id: AgentId,
    version: String,
    /// Its token's hash: the stream ends when the token is revoked.
    token_hash: String,
}

/// The token of an `authorization` value: `Bearer <token>`, or `Basic base64(user:token)`
/// (what pmm-agent sends, with the token as the password).
fn bearer_or_basic(value: &str) -> String {
    if let Some(t) = value.strip_prefix("Bearer ") {
        return t.trim().to_owned();
    }
    let Some(b) = value.strip_prefix("Basic ") else {
        return String::new();
    };
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split_once(':').map(|(_, p)| p.to_owned()))
        .unwrap_or_default()
}

/// What a stream's outbox holds: boxed, so the queue's slots stay small.
pub(crate) enum Outgoing {
    Message(Box<ServerMessage>),
    End(Box<Status>),
}

impl AgentServer {
    /// `Connect`: authenticates, takes over a dead stream of the same agent, registers the new
    /// one and starts its task.
    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<mpsc::Receiver<Outgoing>>, Status> {
        let state = self.dispatcher.state();
        let Authenticated {
            agent_id: id,
            version,
            token_hash,
        } = self.authenticate(request.metadata(), &state)?;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Status::unavailable(SHUTTING_DOWN));
        }
        self.take_over(&id).await?;
        let session = format!("{}{}", self.session_prefix(), uuid::Uuid::new_v4());
        let node_id = state
            .agents
            .get(&id)
            .and_then(|a| a.runs_on_node_id.clone())
            .unwrap_or_default();
        let node_name = state
            .nodes
            .get(&node_id)
            .map(|n| n.node_name.clone())
            .unwrap_or_default();
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let (kick_tx, kick_rx) = oneshot::channel();
        let wake = Arc::new(Notify::new());
        let (probe_tx, probe_rx) = mpsc::channel(1);
        let now = chrono::Utc::now();
        let info = StreamInfo {
            pmm_agent_id: id.to_string(),
            session: session.clone(),
            version: version.clone(),
            connected_at: now,
            last_seen: now,
            desired_revision: 0,
            applied_revision: 0,
            evaluated_revision: 0,
            round_trip_ms: None,
            clock_drift_ms: None,
        };
        {
            let mut reg = lock(&self.registry);
            if self.stopping.load(Ordering::SeqCst) {
                return Err(Status::unavailable(SHUTTING_DOWN));
            }
            // A racing connection got in first: it wins.
            if reg.contains_key(&id) {
                return Err(Status::already_exists(format!(
                    "pmm-agent with ID {id:?} is already connected."
                )));
            }
            reg.insert(
                id.clone(),
                Entry {
                    info,
                    kick: Some(kick_tx),
                    wake: wake.clone(),
                    // Not current before its first evaluation (which reads a state at least
                    // this new).
                    wanted: state.revision.max(1),
                    probe: probe_tx,
                },
            );
        }
        // Later than any stream of this agent this node knows of, even with a clock behind
        // the node that recorded it.
        let since = state
            .agents
            .get(&id)
            .and_then(|a| a.session_since)
            .map_or(now, |t| now.max(t + chrono::Duration::microseconds(1)));
        let stream = Stream_ {
            server: self.clone(),
            id: id.clone(),
            session,
            since,
            recorded: Recorded::Sent,
            version,
            token_hash,
            outstanding: Arc::default(),
            inbound: request.into_inner(),
            out: out_tx,
            next_id: 1,
            pending_pings: HashMap::new(),
            pending_states: HashMap::new(),
            probes: Vec::new(),
            last_heard: Instant::now(),
            last_sent: None,
            inputs: None,
            awaiting: Vec::new(),
        };
        self.batcher.connection(stream.connection(true));
        tokio::spawn(stream.run(kick_rx, probe_rx, wake));
        let mut resp = Response::new(out_rx);
        let md = resp.metadata_mut();
        for (k, v) in [
            ("pmm-agent-node-id", node_id.to_string()),
            ("pmm-node-name", node_name),
            ("pmm-server-version", env!("CARGO_PKG_VERSION").to_owned()),
        ] {
            if let Ok(v) = v.parse() {
                md.insert(k, v);
            }
        }
        Ok(resp)
    }
}

/// One live stream.
struct Stream_ {
    server: AgentServer,
    id: AgentId,
    session: String,
    /// When this stream opened: it orders this agent's streams across nodes.
    since: chrono::DateTime<chrono::Utc>,
    /// Whether the state records this stream as the agent's connection.
    recorded: Recorded,
    /// The version the agent announced (the state may not have recorded it yet).
    version: String,
    token_hash: String,
    /// Reports sent to the batcher and not yet answered.
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
    inbound: Streaming<AgentMessage>,
    out: mpsc::Sender<Outgoing>,
    next_id: u32,
    /// Our pings awaiting a Pong: request id -> when sent.
    pending_pings: HashMap<u32, (Instant, chrono::DateTime<chrono::Utc>)>,
    /// Our SetStates awaiting an answer: request id -> revision.
    pending_states: HashMap<u32, i64>,
    /// Takeover probes waiting for the next Pong.
    probes: Vec<oneshot::Sender<bool>>,
    last_heard: Instant,
    /// SHA-256 of the last desired state sent (without its revision).
    last_sent: Option<[u8; 32]>,
    /// What the last desired state was rendered from.
    inputs: Option<desired::Parts>,
    /// Exporters whose web-config hash the state waits for, in the order asked.
    awaiting: Vec<AgentId>,
}

/// Whether the state records a live stream as its agent's connection, as seen at its pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recorded {
    /// Its connection was sent and may still be on its way.
    Sent,
    /// Not recorded at the last ping: sent again if still not at the next.
    Missing,
    Yes,
}

enum End {
    Closed,
    Kicked(&'static str),
    Dead,
}

impl Stream_ {
    async fn run(
        mut self,
        mut kick: oneshot::Receiver<&'static str>,
        mut probes: mpsc::Receiver<oneshot::Sender<bool>>,
        wake: Arc<Notify>,
    ) {
        let mut ticker = tokio::time::interval(PING_EVERY);
        ticker.tick().await;
        // Every idle stream keeps this task's future, so the rare, large steps (a render and
        // send, a message's handling, a ping) are boxed: their state exists only while they run.
        // On connect, after every change that may affect us (the router wakes us), and at each
        // ping as a safety net (an unchanged state costs a comparison); not after the agent's
        // own messages, which change nothing we send.
        let mut due = true;
        let mut tick = false;
        let end = loop {
            if std::mem::take(&mut due)
                && let Err(end) = Box::pin(self.evaluate(std::mem::take(&mut tick))).await
            {
                break end;
            }
            tokio::select! {
                msg = self.inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Err(end) = Box::pin(self.handle(m)).await {
                            break end;
                        }
                    }
                    Ok(None) | Err(_) => break End::Closed,
                },
                // The stream was registered before its first evaluation: no wake is missed.
                () = wake.notified() => due = true,
                _ = ticker.tick() => {
                    if self.last_heard.elapsed() > DEAD_AFTER {
                        break End::Dead;
                    }
                    self.check_recorded();
                    if Box::pin(self.ping()).await.is_err() {
                        break End::Closed;
                    }
                    due = true;
                    tick = true;
                }
                Some(probe) = probes.recv() => {
                    self.probes.push(probe);
                    if Box::pin(self.ping()).await.is_err() {
                        break End::Closed;
                    }
                }
                why = &mut kick => break End::Kicked(why.unwrap_or("Kicked.")),
            }
        };
        for p in self.probes.drain(..) {
            let _ = p.send(false);
        }
        let record = !matches!(end, End::Kicked(SHUTTING_DOWN));
        match end {
            End::Kicked(SHUTTING_DOWN) => {
                let _ = self
                    .out
                    .try_send(Outgoing::End(Box::new(Status::unavailable(SHUTTING_DOWN))));
            }
            End::Kicked(why) => {
                let _ = self
                    .out
                    .try_send(Outgoing::End(Box::new(Status::aborted(why))));
            }
            End::Dead => {
                tracing::info!(pmm_agent = %self.id, "pmm-agent stopped answering; stream closed")
            }
            End::Closed => {}
        }
        // Only the current stream of this id reports the disconnect (a takeover already
        // replaced the entry).
        let current = {
            let mut reg = lock(&self.server.registry);
            let mine = reg
                .get(&self.id)
                .is_some_and(|e| e.info.session == self.session);
            if mine {
                reg.remove(&self.id);
            }
            mine
        };
        if current && record {
            self.server.batcher.connection(self.connection(false));
        }
    }

    fn connection(&self, connected: bool) -> Connection {
        Connection {
            pmm_agent_id: self.id.clone(),
            session: self.session.clone(),
            connected,
            since: Some(self.since),
            version: connected.then(|| self.version.clone()),
        }
    }

    /// At each ping: a live stream the state does not record as its agent's connection (its
    /// connection dropped with batches no leader took, undone by a stray close, or ordered
    /// before a dead stream's by clocks that disagree) sends it again, once two pings in a row
    /// found it missing and the agent answered the last one. An agent holds one connection, so
    /// the stream it answers on is its newest: the connect is sent as later than the one
    /// recorded. A stream whose agent went quiet does not claim it (it is about to close).
    fn check_recorded(&mut self) {
        let state = self.server.dispatcher.state();
        let agent = state.agents.get(&self.id);
        let recorded = agent
            .is_some_and(|a| a.connected && a.session.as_deref() == Some(self.session.as_str()));
        let answering = self.last_heard.elapsed() < PING_EVERY + PING_EVERY / 2;
        self.recorded = match self.recorded {
            _ if recorded => Recorded::Yes,
            Recorded::Sent | Recorded::Yes => Recorded::Missing,
            Recorded::Missing if !answering => Recorded::Missing,
            // A node removed from the cluster (still running) would fight the leader's sweep
            // of its sessions.
            Recorded::Missing if !self.server.is_member() => Recorded::Missing,
            Recorded::Missing => {
                if let Some(newest) = agent.and_then(|a| a.session_since) {
                    self.since = self.since.max(newest + chrono::Duration::microseconds(1));
                }
                tracing::info!(pmm_agent = %self.id, "pmm-agent's connection not recorded; sending it again");
                self.server.batcher.connection(self.connection(true));
                Recorded::Sent
            }
        };
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    async fn send(&self, msg: ServerMessage) -> Result<(), End> {
        let msg = match self.out.try_send(Outgoing::Message(Box::new(msg))) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::Closed),
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        // A full outbox: wait, but not past the node's stop (the kick is not watched here).
        let stopped = self.server.stopped.notified();
        if self.server.stopping.load(Ordering::SeqCst) {
            return Err(End::Kicked(SHUTTING_DOWN));
        }
        // An agent that reads nothing for this long is as good as gone; waiting longer would
        // also keep kicks and pings from this stream.
        tokio::select! {
            sent = tokio::time::timeout(DEAD_AFTER, self.out.send(msg)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Closed),
                Err(_) => Err(End::Dead),
            },
            () = stopped => Err(End::Kicked(SHUTTING_DOWN)),
        }
    }

    fn update_info(&self, f: impl FnOnce(&mut StreamInfo)) {
        let mut reg = lock(&self.server.registry);
        if let Some(e) = reg
            .get_mut(&self.id)
            .filter(|e| e.info.session == self.session)
        {
            f(&mut e.info);
        }
    }

    async fn ping(&mut self) -> Result<(), End> {
        let id = self.next_id();
        self.pending_pings
            .insert(id, (Instant::now(), chrono::Utc::now()));
        // Unanswered pings of a silent agent are forgotten after a while.
        if self.pending_pings.len() > 8 {
            let oldest = self.pending_pings.keys().min().copied();
            if let Some(o) = oldest {
                self.pending_pings.remove(&o);
            }
        }
        self.send(ServerMessage {
            id,
            payload: Some(server_message::Payload::Ping(Ping {})),
            status: None,
        })
        .await
    }

    /// Checks the latest state: the agent and its token still there, and its desired state
    /// sent. The snapshot is dropped before the stream waits again: an idle stream holding an
    /// old revision would keep that revision's copied paths of the state alive. At a ping
    /// `tick`, awaited hashes are asked for again.
    async fn evaluate(&mut self, tick: bool) -> Result<(), End> {
        let state = self.server.dispatcher.state();
        if !state.agents.contains_key(&self.id) {
            return Err(End::Kicked("pmm-agent removed."));
        }
        if state.token_by_hash(&self.token_hash).is_none() {
            return Err(End::Kicked("token revoked."));
        }
        if self.maybe_send_state(&state, tick).await? {
            self.update_info(|i| i.evaluated_revision = state.revision);
        }
        Ok(())
    }

    /// Sends the desired state if what it is made of changed and the message differs. False
    /// while it is held back for web-config hashes ([`web_auth`]).
    async fn maybe_send_state(&mut self, state: &State, tick: bool) -> Result<bool, End> {
        // Until every awaited hash is recorded (or its exporter gone, or disabled) there is
        // nothing to render. Checked from the front, in the order the hasher works: each wake
        // (a hash recorded) costs about one look-up, not the whole list.
        let resolved = self
            .awaiting
            .iter()
            .position(|id| {
                state
                    .agents
                    .get(id)
                    .is_some_and(|a| !a.disabled && a.web_auth_hash().is_none())
            })
            .unwrap_or(self.awaiting.len());
        self.awaiting.drain(..resolved);
        if !self.awaiting.is_empty() {
            if tick {
                self.request_hashes(state);
            }
            return Ok(false);
        }
        let parts = desired::Parts::of(state, &self.id);
        let same = self.inputs.as_ref().is_some_and(|p| p.same(&parts));
        // Kept either way: the next comparison then finds the same entities by identity.
        let parts = &*self.inputs.insert(parts);
        if self.last_sent.is_some() && same {
            return Ok(true);
        }
        let desired::Desired {
            state: mut desired,
            awaiting_hash,
        } = desired::render_parts(state, parts, &self.server.cipher, Some(&self.version));
        if !awaiting_hash.is_empty() {
            // Sent once every hash is recorded (each recorded hash wakes us); rendered again
            // then, from scratch.
            self.awaiting = awaiting_hash;
            self.request_hashes(state);
            self.inputs = None;
            return Ok(false);
        }
        // The message encodes the same bytes for the same content (sorted maps), so its hash
        // stands in for the last message sent.
        let hash: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(prost::Message::encode_to_vec(&desired)).into()
        };
        if self.last_sent == Some(hash) {
            return Ok(true);
        }
        desired.revision = state.revision;
        let id = self.next_id();
        self.pending_states.insert(id, state.revision);
        // States an agent never answered are forgotten after a while.
        if self.pending_states.len() > 8 {
            let oldest = self.pending_states.keys().min().copied();
            if let Some(o) = oldest {
                self.pending_states.remove(&o);
            }
        }
        self.last_sent = Some(hash);
        self.update_info(|i| i.desired_revision = state.revision);
        self.send(ServerMessage {
            id,
            payload: Some(server_message::Payload::SetState(desired)),
            status: None,
        })
        .await?;
        Ok(true)
    }

    /// Asks this node's hasher for the hashes the state waits for, of the agent passwords
    /// stored now.
    fn request_hashes(&self, state: &State) {
        for id in &self.awaiting {
            if let Some(a) = state.agents.get(id) {
                self.server.hasher.request(id, &a.agent_password);
            }
        }
    }

    async fn handle(&mut self, m: AgentMessage) -> Result<(), End> {
        self.last_heard = Instant::now();
        let now = chrono::Utc::now();
        use agent_message::Payload as P;
        match m.payload {
            Some(P::Ping(_)) => {
                self.update_info(|i| i.last_seen = now);
                let t = now;
                self.send(ServerMessage {
                    id: m.id,
                    payload: Some(server_message::Payload::Pong(Pong {
                        current_time: Some(pbjson_types::Timestamp {
                            seconds: t.timestamp(),
                            nanos: t.timestamp_subsec_nanos() as i32,
                        }),
                    })),
                    status: None,
                })
                .await
            }
            Some(P::Pong(p)) => {
                for probe in self.probes.drain(..) {
                    let _ = probe.send(true);
                }
                if let Some((sent, sent_at)) = self.pending_pings.remove(&m.id) {
                    let rtt = sent.elapsed();
                    let drift = p.current_time.map(|t| {
                        let agent_ms = t.seconds as f64 * 1000.0 + f64::from(t.nanos) / 1e6;
                        let sent_ms = sent_at.timestamp_millis() as f64;
                        agent_ms - sent_ms - rtt.as_secs_f64() * 500.0
                    });
                    self.update_info(|i| {
                        i.last_seen = now;
                        i.round_trip_ms = Some(rtt.as_secs_f64() * 1000.0);
                        i.clock_drift_ms = drift;
                    });
                }
                Ok(())
            }
            Some(P::StateChanged(s)) => {
                self.update_info(|i| i.last_seen = now);
                let status = match PbStatus::try_from(s.status).unwrap_or(PbStatus::Unspecified) {
                    PbStatus::Starting => AgentStatus::Starting,
                    PbStatus::Running => AgentStatus::Running,
                    PbStatus::Waiting => AgentStatus::Waiting,
                    PbStatus::Stopping => AgentStatus::Stopping,
                    PbStatus::Done => AgentStatus::Done,
                    PbStatus::InitializationError => AgentStatus::InitializationError,
                    PbStatus::Unknown | PbStatus::Unspecified => AgentStatus::Unknown,
                };
                // At most MAX_OUTSTANDING reports of one stream wait to be recorded; beyond
                // that the agent is asked to send again later.
                use std::sync::atomic::Ordering::SeqCst;
                if self.outstanding.fetch_add(1, SeqCst) >= MAX_OUTSTANDING {
                    self.outstanding.fetch_sub(1, SeqCst);
                    return self
                        .send(ServerMessage {
                            id: m.id,
                            payload: None,
                            status: Some(RpcStatus {
                                code: tonic::Code::Unavailable as i32,
                                message: "too many reports waiting; send it again.".to_owned(),
                                details: Vec::new(),
                            }),
                        })
                        .await;
                }
                let done = self.server.batcher.report(AgentReport {
                    pmm_agent_id: self.id.clone(),
                    agent_id: AgentId::from(clean(&s.agent_id).as_str()),
                    status,
                    listen_port: u16::try_from(s.listen_port).ok().filter(|p| *p != 0),
                    process_exec_path: Some(clean(&s.process_exec_path)).filter(|p| !p.is_empty()),
                    version: Some(clean(&s.version)).filter(|v| !v.is_empty()),
                });
                // Answered once recorded; the stream goes on meanwhile.
                let out = self.out.clone();
                let outstanding = self.outstanding.clone();
                let id = m.id;
                tokio::spawn(async move {
                    let recorded = done.await.unwrap_or(false);
                    outstanding.fetch_sub(1, SeqCst);
                    let msg = ServerMessage {
                        id,
                        payload: recorded.then_some(server_message::Payload::StateChanged(
                            StateChangedResponse {},
                        )),
                        status: (!recorded).then(|| RpcStatus {
                            code: tonic::Code::Unavailable as i32,
                            message: "the report was not recorded; send it again.".to_owned(),
                            details: Vec::new(),
                        }),
                    };
                    // Bounded like the stream's own sends: an agent that reads nothing does not
                    // keep this task (and the outbox) alive.
                    let _ = tokio::time::timeout(
                        DEAD_AFTER,
                        out.send(Outgoing::Message(Box::new(msg))),
                    )
                    .await;
                });
                Ok(())
            }
            Some(P::SetState(r)) => {
                if let Some(rev) = self.pending_states.remove(&m.id) {
                    let applied = if r.applied_revision > 0 {
                        r.applied_revision
                    } else {
                        rev
                    };
                    self.update_info(|i| {
                        i.applied_revision = i.applied_revision.max(applied);
                        i.last_seen = now;
                    });
                }
                Ok(())
            }
            None => {
                // An answer with an error to one of our requests: note it, never answer it.
                if let Some(st) = m.status {
                    self.pending_states.remove(&m.id);
                    self.pending_pings.remove(&m.id);
                    tracing::debug!(pmm_agent = %self.id, code = st.code, "pmm-agent answered with an error");
                    return Ok(());
                }
                // Job messages (id 0) expect no answer.
                if m.id == 0 {
                    return Ok(());
                }
                self.send(ServerMessage {
                    id: m.id,
                    payload: None,
                    status: Some(RpcStatus {
                        code: tonic::Code::Unimplemented as i32,
                        message: "this payload is not served by pmm-cp.".to_owned(),
                        details: Vec::new(),
                    }),
                })
                .await
            }
        }
    }
}

/// The Raft id of the node whose stream a session id names (`node-<id>/<uuid>`).
fn session_node(session: &str) -> Option<u64> {
    session
        .strip_prefix("node-")?
        .split_once('/')?
        .0
        .parse()
        .ok()
}

/// True when two versions of an agent differ only in what its pmm-agent reports about it
/// (status, exec path, connection and its stream's time), which no desired state reads: a status report then costs a
/// comparison, not a render of the whole state (the server's pmm-agent may run thousands).
fn same_config(a: &crate::domain::Agent, b: &crate::domain::Agent) -> bool {
    if a.agent_id != b.agent_id {
        return false;
    }
    let mut b = b.clone();
    b.status = a.status;
    b.process_exec_path.clone_from(&a.process_exec_path);
    b.connected = a.connected;
    b.session.clone_from(&a.session);
    b.session_since = a.session_since;
    b.updated_at = a.updated_at;
    *a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Agent;

    #[test]
    fn reported_status_is_not_configuration_but_a_port_is() {
        let a = Agent::new(
            AgentId::from("a"),
            AgentType::NodeExporter,
            chrono::Utc::now(),
        );
        let mut b = a.clone();
        b.status = AgentStatus::Running;
        b.process_exec_path = Some("/usr/local/bin/node_exporter".into());
        b.updated_at = a.updated_at + chrono::Duration::seconds(5);
        b.connected = true;
        b.session = Some("s".into());
        b.session_since = Some(b.updated_at);
        assert!(same_config(&a, &b));
        // The port reaches vmagent's scrape file.
        b.listen_port = Some(42000);
        assert!(!same_config(&a, &b));
        let mut c = a.clone();
        c.disabled = true;
        assert!(!same_config(&a, &c));
    }

    #[test]
    fn the_token_comes_from_bearer_or_basic() {
        assert_eq!(bearer_or_basic("Bearer abc"), "abc");
        // base64("service_token:abc")
        assert_eq!(bearer_or_basic("Basic c2VydmljZV90b2tlbjphYmM="), "abc");
        assert_eq!(bearer_or_basic("Basic !!"), "");
        assert_eq!(bearer_or_basic("Digest x"), "");
    }
}
