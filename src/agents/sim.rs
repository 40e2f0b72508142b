//! Fake pmm-agents for tests, demos and benchmarks: each connects with its id and token,
//! answers pings, applies every SetState (reporting each process RUNNING on a port of its
//! own, as pmm-agent does, and sending again after a pause a report the server answers with
//! an error), and reconnects with jittered backoff when its stream ends.
//! `pmm-cp simulate-agents` runs N of them against a server.

use crate::grpc::pb::agent::v1::agent_service_client::AgentServiceClient;
use crate::grpc::pb::agent::v1::{
    AgentMessage, Ping, Pong, SetStateRequest, SetStateResponse, StateChangedRequest,
    agent_message, server_message,
};
use crate::grpc::pb::inventory::v1::AgentStatus as PbStatus;
use crate::grpc::pb::management::v1 as mgmt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

/// One fake pmm-agent's identity.
#[derive(Clone, Debug)]
pub struct Identity {
    pub agent_id: String,
    pub token: String,
}

/// What a fake agent has seen, for tests and benchmarks to wait on.
#[derive(Debug, Default)]
pub struct Seen {
    /// SetStates applied, and connections made.
    pub states: AtomicU64,
    pub connects: AtomicU64,
}

/// A running fake agent.
pub struct SimAgent {
    pub identity: Identity,
    /// The revision of the last desired state applied (0 before the first).
    pub applied: watch::Receiver<i64>,
    /// The same, with when its state arrived here (before this agent answered or reported).
    pub applied_at: watch::Receiver<(i64, std::time::Instant)>,
    /// The last desired state applied.
    pub last_state: watch::Receiver<Option<SetStateRequest>>,
    /// How the last stream ended (`None` while connected or before the first).
    pub ended: watch::Receiver<Option<tonic::Status>>,
    pub seen: Arc<Seen>,
    pings: mpsc::Sender<oneshot::Sender<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimAgent {
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A handle that makes this agent ping the server.
    pub fn pinger(&self) -> Pinger {
        Pinger {
            tx: self.pings.clone(),
        }
    }
}

/// Makes a fake agent ping the server on its live stream.
#[derive(Clone)]
pub struct Pinger {
    tx: mpsc::Sender<oneshot::Sender<Duration>>,
}

impl Pinger {
    /// Sends a Ping and waits for the Pong: the round trip (`None` when not connected or not
    /// answered within 30 s).
    pub async fn ping(&self) -> Option<Duration> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a fake agent behaves.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub version: String,
    /// Reconnect after the stream ends (backoff 0.1 s doubling to 2 s, jittered).
    pub reconnect: bool,
    /// Report `WAITING` then `RUNNING` for every process on each SetState (flapping).
    pub flap: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            version: "3.5.0".to_owned(),
            reconnect: true,
            flap: false,
        }
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Registers `n` generic nodes named `<prefix>-<i>` with an admin token (RegisterNode over
/// gRPC), returning each pmm-agent's id and token. At most 16 calls run at once.
pub async fn register(
    channel: Channel,
    admin_token: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<Identity>> {
    let calls = (0..n).map(|i| {
        let mut client =
            mgmt::management_service_client::ManagementServiceClient::new(channel.clone());
        let token = admin_token.to_owned();
        let name = format!("{prefix}-{i}");
        async move {
            let req = mgmt::RegisterNodeRequest {
                node_type: crate::grpc::pb::inventory::v1::NodeType::GenericNode as i32,
                node_name: name.clone(),
                address: format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
                ..Default::default()
            };
            let resp = client
                .register_node(bearer(req, &token))
                .await?
                .into_inner();
            let agent_id = resp.pmm_agent.map(|a| a.agent_id).unwrap_or_default();
            anyhow::ensure!(
                !resp.token.is_empty(),
                "RegisterNode for {name} gave no token"
            );
            Ok(Identity {
                agent_id,
                token: resp.token,
            })
        }
    });
    bounded(calls, 16).await.into_iter().collect()
}

/// Starts a fake pmm-agent.
pub fn start(channel: Channel, identity: Identity, behaviour: Behaviour) -> SimAgent {
    let (applied_tx, applied) = watch::channel(0);
    let (applied_at_tx, applied_at) = watch::channel((0, std::time::Instant::now()));
    let (state_tx, last_state) = watch::channel(None);
    let (ended_tx, ended) = watch::channel(None);
    let seen = Arc::new(Seen::default());
    let (pings, pings_rx) = mpsc::channel(1);
    let task = tokio::spawn(run(
        channel,
        identity.clone(),
        behaviour,
        Outputs {
            applied: applied_tx,
            applied_at: applied_at_tx,
            last_state: state_tx,
            ended: ended_tx,
            seen: seen.clone(),
        },
        pings_rx,
    ));
    SimAgent {
        identity,
        applied,
        applied_at,
        last_state,
        ended,
        seen,
        pings,
        task,
    }
}

/// Where a fake agent publishes what it sees.
struct Outputs {
    applied: watch::Sender<i64>,
    applied_at: watch::Sender<(i64, std::time::Instant)>,
    last_state: watch::Sender<Option<SetStateRequest>>,
    ended: watch::Sender<Option<tonic::Status>>,
    seen: Arc<Seen>,
}

async fn run(
    channel: Channel,
    identity: Identity,
    behaviour: Behaviour,
    out: Outputs,
    mut pings: mpsc::Receiver<oneshot::Sender<Duration>>,
) {
    let mut delay = Duration::from_millis(100);
    // Ports stay with their process across reconnects, as pmm-agent keeps them.
    let mut ports: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        let outcome = session(
            &channel, &identity, &behaviour, &out, &mut ports, &mut pings,
        )
        .await;
        let status = match outcome {
            Ok(()) => tonic::Status::ok("stream ended"),
            Err(s) => s,
        };
        let refused = matches!(
            status.code(),
            tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
        );
        let _ = out.ended.send(Some(status));
        if !behaviour.reconnect || refused {
            return;
        }
        let jitter = rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1);
        tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Unanswered status reports kept per stream at most.
const MAX_UNANSWERED: usize = 256;
/// Pause before a report the server could not record is sent again.
const REPORT_RETRY: Duration = Duration::from_millis(200);

async fn session(
    channel: &Channel,
    identity: &Identity,
    behaviour: &Behaviour,
    out: &Outputs,
    ports: &mut BTreeMap<String, u32>,
    pings: &mut mpsc::Receiver<oneshot::Sender<Duration>>,
) -> Result<(), tonic::Status> {
    let (applied, last_state, seen) = (&out.applied, &out.last_state, &out.seen);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let mut req = bearer(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        &identity.token,
    );
    for (k, v) in [
        ("pmm-agent-id", identity.agent_id.as_str()),
        ("pmm-agent-version", behaviour.version.as_str()),
    ] {
        if let Ok(v) = v.parse() {
            req.metadata_mut().insert(k, v);
        }
    }
    let mut client = AgentServiceClient::new(channel.clone());
    let mut inbound = client.connect(req).await?.into_inner();
    seen.connects.fetch_add(1, Ordering::Relaxed);
    let _ = out.ended.send(None);
    let _ = tx
        .send(AgentMessage {
            id: 1,
            payload: Some(agent_message::Payload::Ping(Ping {})),
            status: None,
        })
        .await;
    let mut next_id = 2u32;
    let mut first_state = true;
    let mut my_pings: std::collections::HashMap<
        u32,
        (std::time::Instant, oneshot::Sender<Duration>),
    > = std::collections::HashMap::new();
    // Status reports not yet answered: one the server could not record (an error answer) is
    // sent again after a pause, as the server asks.
    let mut unanswered: BTreeMap<u32, StateChangedRequest> = BTreeMap::new();
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => match msg? {
                Some(m) => m,
                None => break,
            },
            Some(reply) = pings.recv() => {
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(2);
                my_pings.insert(id, (std::time::Instant::now(), reply));
                let _ = tx
                    .send(AgentMessage { id, payload: Some(agent_message::Payload::Ping(Ping {})), status: None })
                    .await;
                continue;
            }
        };
        use server_message::Payload as P;
        match msg.payload {
            Some(P::Pong(_)) => {
                if let Some((sent, reply)) = my_pings.remove(&msg.id) {
                    let _ = reply.send(sent.elapsed());
                }
            }
            Some(P::Ping(_)) => {
                let now = chrono::Utc::now();
                let pong = Pong {
                    current_time: Some(pbjson_types::Timestamp {
                        seconds: now.timestamp(),
                        nanos: now.timestamp_subsec_nanos() as i32,
                    }),
                };
                let _ = tx
                    .send(AgentMessage {
                        id: msg.id,
                        payload: Some(agent_message::Payload::Pong(pong)),
                        status: None,
                    })
                    .await;
            }
            Some(P::SetState(state)) => {
                let arrived = std::time::Instant::now();
                let revision = state.revision;
                let mut reports = Vec::new();
                ports.retain(|k, _| state.agent_processes.contains_key(k));
                // Like pmm-agent, only processes it (re)starts report: all of them on a new
                // stream's first state, then the new and the changed ones.
                {
                    // The previous state is read in place (a guard, not a copy), and let go
                    // before the new one is published.
                    let previous = last_state.borrow();
                    let before = if first_state { None } else { previous.as_ref() };
                    for (key, process) in &state.agent_processes {
                        let next = 42000 + ports.len() as u32;
                        let port = *ports.entry(key.clone()).or_insert(next);
                        let same = before
                            .and_then(|b| b.agent_processes.get(key))
                            .is_some_and(|p| p == process);
                        if same {
                            continue;
                        }
                        if behaviour.flap {
                            reports.push((key.clone(), PbStatus::Waiting, 0));
                        }
                        reports.push((key.clone(), PbStatus::Running, port));
                    }
                    for (key, builtin) in &state.builtin_agents {
                        let same = before
                            .and_then(|b| b.builtin_agents.get(key))
                            .is_some_and(|b| b == builtin);
                        if !same {
                            reports.push((key.clone(), PbStatus::Running, 0));
                        }
                    }
                }
                first_state = false;
                // Seen before it is answered: once the server records the answer, the state
                // is visible here.
                seen.states.fetch_add(1, Ordering::SeqCst);
                let _ = last_state.send(Some(state));
                let _ = applied.send(revision);
                let _ = out.applied_at.send((revision, arrived));
                let _ = tx
                    .send(AgentMessage {
                        id: msg.id,
                        payload: Some(agent_message::Payload::SetState(SetStateResponse {
                            applied_revision: revision,
                        })),
                        status: None,
                    })
                    .await;
                for (agent_id, status, port) in reports {
                    let report = StateChangedRequest {
                        agent_id,
                        status: status as i32,
                        listen_port: port,
                        process_exec_path: String::new(),
                        version: String::new(),
                    };
                    // Bounded: a server that never answers does not grow this.
                    if unanswered.len() >= MAX_UNANSWERED {
                        unanswered.pop_first();
                    }
                    unanswered.insert(next_id, report.clone());
                    let _ = tx
                        .send(AgentMessage {
                            id: next_id,
                            payload: Some(agent_message::Payload::StateChanged(report)),
                            status: None,
                        })
                        .await;
                    next_id = next_id.wrapping_add(1).max(2);
                }
            }
            Some(P::StateChanged(_)) => {
                unanswered.remove(&msg.id);
            }
            // An error answer to a report: sent again, under a new id, after a pause.
            None if msg.status.is_some() => {
                if let Some(report) = unanswered.remove(&msg.id) {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1).max(2);
                    unanswered.insert(id, report.clone());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(REPORT_RETRY).await;
                        let _ = tx
                            .send(AgentMessage {
                                id,
                                payload: Some(agent_message::Payload::StateChanged(report)),
                                status: None,
                            })
                            .await;
                    });
                }
            }
            // A request we do not serve: say so.
            None => {
                if msg.id != 0 {
                    let _ = tx
                        .send(AgentMessage {
                            id: msg.id,
                            payload: None,
                            status: Some(crate::grpc::pb::google::rpc::Status {
                                code: tonic::Code::Unimplemented as i32,
                                message: "not implemented by the simulator".to_owned(),
                                details: Vec::new(),
                            }),
                        })
                        .await;
                }
            }
        }
    }
    Ok(())
}

/// Runs futures with at most `limit` at once, returning their outputs in order.
async fn bounded<F, T>(futures: impl IntoIterator<Item = F>, limit: usize) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let handles: Vec<_> = futures
        .into_iter()
        .map(|f| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                f.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    out
}

/// `pmm-cp simulate-agents`: registers `count` nodes, runs a fake pmm-agent for each, and
/// prints a line of counts every 5 s until interrupted (or `--seconds`).
pub async fn run_cli(args: crate::config::SimulateAgentsArgs) -> anyhow::Result<()> {
    let token = match args.token.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)?.trim().to_owned(),
        None => args.token.clone(),
    };
    let channels: Vec<Channel> = (0..args.count.div_ceil(100).max(1))
        .map(|_| Ok(Channel::from_shared(args.api.clone())?.connect_lazy()))
        .collect::<anyhow::Result<_>>()?;
    let ids = register(channels[0].clone(), &token, &args.prefix, args.count).await?;
    println!("registered {} nodes", ids.len());
    let behaviour = Behaviour {
        flap: args.flap,
        ..Behaviour::default()
    };
    let agents: Vec<SimAgent> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| start(channels[i / 100].clone(), id, behaviour.clone()))
        .collect();
    let until = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let connected = agents
            .iter()
            .filter(|a| a.ended.borrow().is_none() && *a.applied.borrow() > 0)
            .count();
        let states: u64 = agents
            .iter()
            .map(|a| a.seen.states.load(Ordering::Relaxed))
            .sum();
        let connects: u64 = agents
            .iter()
            .map(|a| a.seen.connects.load(Ordering::Relaxed))
            .sum();
        println!(
            "agents {} connected-with-state {connected} states {states} connects {connects}",
            agents.len()
        );
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            break;
        }
    }
    Ok(())
}
