//! The command entry point: `dispatch(command, meta) -> Result<Applied, CommandError>`.
//!
//! One writer task takes every queued command (up to a batch limit), decides each against the
//! applied state with the earlier ones of the batch folded in, and proposes the batch to Raft
//! as one entry; applying it appends all of them in one transaction (group commit), so
//! throughput grows with the number of concurrent callers.

use super::{Command, CommandError, CommandMeta, Ctx, Rejection, decide_and_evolve};
use crate::domain::State;
use crate::domain::Timestamp;
use crate::domain::ids::truncate_to_micros;
use crate::domain::settings::EnvSettings;
use crate::events::Event;
use crate::raft::Outcome;
use crate::raft::network::Peers;
use crate::raft::node::NodeConfig;
use crate::raft::proto::{ForwardRequest, ReadIndexRequest};
use crate::store::log::Positions;
use crate::store::{self, AppendItem, Batch, Recorded, StoreError};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

/// What a command that applied returns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub command_id: String,
    /// Positions of its events, `None` when it changed nothing.
    pub positions: Option<(i64, i64)>,
    /// The revision the caller can wait for to read its own write.
    pub revision: i64,
    /// True when this command id had been applied before and nothing was appended now.
    pub duplicate: bool,
}

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Most commands in one transaction.
    pub max_batch: usize,
    /// Values pinned by `PMM_*` variables on this node.
    pub env: Arc<EnvSettings>,
    /// This node's name, recorded in each event's metadata.
    pub node_name: String,
    /// How many times a batch is re-decided after a stale-base conflict.
    pub conflict_retries: u32,
    /// Most batches in Raft at once.
    pub pipeline: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            env: Arc::default(),
            node_name: "pmm-cp".to_owned(),
            conflict_retries: 3,
            pipeline: 4,
        }
    }
}

type Reply = oneshot::Sender<Vec<Result<Applied, CommandError>>>;

struct Job {
    items: Vec<(Command, CommandMeta)>,
    reply: Reply,
    /// Times this job was sent again after its batch was not appended.
    attempts: u32,
    /// Set after its batch failed for a reason other than a stale base: it goes alone in its
    /// next batch, so one bad command cannot fail its neighbours again.
    isolate: bool,
}

/// A handle to the writer. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Dispatcher {
    jobs: mpsc::Sender<Job>,
    state: watch::Receiver<State>,
    raft: openraft::Raft<crate::raft::TypeConfig>,
    id: u64,
    peers: Peers,
}

/// Most commands a peer may forward in one call.
pub const MAX_FORWARDED: usize = 10_000;
/// How long a command may look for a leader (elections, forwarding) before it fails as
/// unavailable.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a new leader waits for a quorum to confirm it before deciding.
const LEADERSHIP_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

impl Dispatcher {
    /// Starts a cluster of one with no network (storage in `pool`'s database) and the writer
    /// task over it. Every write goes through Raft: there is no other path to the log.
    pub async fn start(
        pool: PgPool,
        config: DispatcherConfig,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        Self::start_node(pool, config, NodeConfig::single()).await
    }

    /// Starts this node's Raft as `node` says, and the writer task over it. Commands sent to
    /// any node are decided by the leader: a follower forwards them.
    pub async fn start_node(
        pool: PgPool,
        config: DispatcherConfig,
        node: NodeConfig,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let node = crate::raft::node::start(pool.clone(), node, Duration::from_secs(30)).await?;
        let state = node.applied.borrow().clone();
        let (jobs_tx, jobs_rx) = mpsc::channel(4096);
        let writer = Writer {
            pool,
            config,
            state,
            raft: node.raft.clone(),
            applied: node.applied.clone(),
            id: node.config.id,
            ready_term: None,
        };
        let task = tokio::spawn(writer.run(jobs_rx));
        Ok((
            Self {
                jobs: jobs_tx,
                state: node.applied,
                raft: node.raft,
                id: node.config.id,
                peers: node.peers,
            },
            task,
        ))
    }

    /// Stops this node's Raft (and so the writer: later commands fail as unavailable). Waits
    /// until it has stopped, so another node may start on the same database.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.id
    }

    /// This node's Raft.
    pub fn raft(&self) -> &openraft::Raft<crate::raft::TypeConfig> {
        &self.raft
    }

    /// This node's connections to its peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Decides and appends one command.
    pub async fn dispatch(&self, cmd: Command, meta: CommandMeta) -> Result<Applied, CommandError> {
        self.dispatch_batch(vec![(cmd, meta)])
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(CommandError::Internal(
                    "the writer returned no result".to_owned(),
                ))
            })
    }

    /// Decides and appends several commands in one Raft entry (all accepted ones or none),
    /// on the leader: here, or forwarded to it. Each gets its own result; one with bad
    /// metadata is refused alone. While there is no leader, or the leader changes, the
    /// commands are sent again (with their ids, so none applies twice) for a bounded time.
    pub async fn dispatch_batch(
        &self,
        items: Vec<(Command, CommandMeta)>,
    ) -> Vec<Result<Applied, CommandError>> {
        with_valid_meta(items, |valid| self.route(valid)).await
    }

    /// Like [`Dispatcher::dispatch_batch`], but only on this node: refused as not the leader
    /// when it does not lead. Peers forward commands here.
    pub async fn dispatch_here(
        &self,
        items: Vec<(Command, CommandMeta)>,
    ) -> Vec<Result<Applied, CommandError>> {
        with_valid_meta(items, |valid| self.send_local(valid)).await
    }

    /// The leader as this node knows it: its id and address.
    fn leader(&self) -> Option<(u64, String)> {
        crate::raft::leader_of(&self.raft.metrics().borrow())
            .map(|(id, addr)| (id, addr.unwrap_or_default()))
    }

    async fn route(
        &self,
        items: Vec<(Command, CommandMeta)>,
    ) -> Vec<Result<Applied, CommandError>> {
        let deadline = tokio::time::Instant::now() + ROUTE_TIMEOUT;
        let mut results: Vec<Option<Result<Applied, CommandError>>> = vec![None; items.len()];
        let mut backoff = Duration::from_millis(20);
        loop {
            let pending: Vec<usize> = (0..items.len())
                .filter(|&i| match &results[i] {
                    None => true,
                    Some(Err(CommandError::NotLeader { .. })) => true,
                    Some(_) => false,
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            let batch: Vec<_> = pending.iter().map(|&i| items[i].clone()).collect();
            let leader = self.leader();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = async {
                match &leader {
                    Some((id, _)) if *id == self.id => self.send_local(batch).await,
                    Some((id, addr)) => self.forward(*id, addr, batch, left).await,
                    None => vec![Err(CommandError::NotLeader { leader: None }); pending.len()],
                }
            };
            // A leader cut off from its quorum never answers: the outcome is then unknown.
            let got = tokio::time::timeout(left, attempt)
                .await
                .unwrap_or_else(|_| {
                    vec![
                        Err(CommandError::Unavailable(format!(
                            "no answer within {ROUTE_TIMEOUT:?}; the command may still apply: \
                         send it again with the same command id"
                        )));
                        pending.len()
                    ]
                });
            let mut again = false;
            for (i, r) in pending.into_iter().zip(got) {
                again |= matches!(r, Err(CommandError::NotLeader { .. }));
                results[i] = Some(r);
            }
            let now = tokio::time::Instant::now();
            if !again || now >= deadline {
                break;
            }
            // Wait for a (new) leader, or a little, before sending the rest again.
            let was = leader.map(|(id, _)| id);
            let wait = backoff.min(deadline - now);
            let _ = self
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != was,
                    "a new leader",
                )
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        results
            .into_iter()
            .map(|r| match r {
                Some(Err(CommandError::NotLeader { leader })) => {
                    Err(CommandError::Unavailable(format!(
                        "no leader confirmed the command within {ROUTE_TIMEOUT:?}{}; it may \
                         still apply: send it again with the same command id",
                        leader
                            .map(|l| format!(" (last tried {l})"))
                            .unwrap_or_default()
                    )))
                }
                Some(r) => r,
                None => Err(CommandError::Internal(
                    "a command was not routed".to_owned(),
                )),
            })
            .collect()
    }

    /// Sends commands to the leader `id` at `addr`. A leader that cannot be reached counts as
    /// no leader: the caller tries again.
    async fn forward(
        &self,
        id: u64,
        addr: &str,
        items: Vec<(Command, CommandMeta)>,
        timeout: Duration,
    ) -> Vec<Result<Applied, CommandError>> {
        let n = items.len();
        let not_leader = |why: String| {
            debug!(leader = id, %addr, why, "forwarding failed");
            vec![
                Err(CommandError::NotLeader {
                    leader: Some(addr.to_owned())
                });
                n
            ]
        };
        let json = match serde_json::to_vec(&items) {
            Ok(j) => j,
            Err(e) => {
                return vec![Err(CommandError::Internal(format!("encoding commands: {e}"))); n];
            }
        };
        let mut client = match self.peers.raft_client(id, addr) {
            Ok(c) => c,
            Err(e) => return not_leader(e),
        };
        let mut req = tonic::Request::new(ForwardRequest { json });
        req.set_timeout(timeout.min(FORWARD_TIMEOUT));
        let resp = match client.forward(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let err = match s.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
                    | tonic::Code::ResourceExhausted => {
                        CommandError::Invalid(s.message().to_owned())
                    }
                    // The leader may have taken it: only the caller can send it again.
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        CommandError::Unavailable(format!(
                            "the leader {addr} did not answer in time; the command may still \
                             apply: send it again with the same command id"
                        ))
                    }
                    // Not reached, or not the leader any more: look for the leader again
                    // (the command ids make a repeat harmless).
                    _ => return not_leader(s.message().to_owned()),
                };
                return vec![Err(err); n];
            }
        };
        match serde_json::from_slice::<Vec<Result<Applied, CommandError>>>(&resp.json) {
            Ok(r) if r.len() == n => r,
            Ok(_) => not_leader("the leader returned a wrong number of results".to_owned()),
            Err(e) => not_leader(format!("undecodable results: {e}")),
        }
    }

    /// Hands commands to this node's writer.
    async fn send_local(
        &self,
        valid: Vec<(Command, CommandMeta)>,
    ) -> Vec<Result<Applied, CommandError>> {
        let n = valid.len();
        let stopped = || {
            (0..n)
                .map(|_| {
                    Err(CommandError::Unavailable(
                        "the writer has stopped".to_owned(),
                    ))
                })
                .collect::<Vec<_>>()
        };
        if n == 0 {
            return Vec::new();
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            items: valid,
            reply,
            attempts: 0,
            isolate: false,
        };
        if self.jobs.send(job).await.is_err() {
            return stopped();
        }
        let results = rx.await.unwrap_or_else(|_| stopped());
        if results.len() == n {
            results
        } else {
            vec![
                Err(CommandError::Internal(
                    "the writer returned a wrong number of results".to_owned()
                ));
                n
            ]
        }
    }

    /// The state as of a linearizable read: everything committed before this call is in it.
    /// The leader confirms it still leads; a follower asks the leader for that revision and
    /// waits until it has applied it (at most `timeout`).
    pub async fn linearizable_state(&self, timeout: Duration) -> Result<State, CommandError> {
        let unavailable = |why: String| CommandError::Unavailable(why);
        let Some((id, addr)) = self.leader() else {
            return Err(unavailable(
                "the cluster has no leader right now".to_owned(),
            ));
        };
        if id == self.id {
            tokio::time::timeout(timeout, self.raft.ensure_linearizable())
                .await
                .map_err(|_| unavailable(format!("no quorum within {timeout:?}")))?
                .map_err(|e| unavailable(e.to_string()))?;
            return Ok(self.state());
        }
        let mut client = self.peers.raft_client(id, &addr).map_err(unavailable)?;
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(timeout);
        let revision = client
            .read_index(req)
            .await
            .map_err(|s| unavailable(format!("leader {addr}: {}", s.message())))?
            .into_inner()
            .revision;
        self.wait_for(revision, timeout).await
    }

    /// The current state (an O(1) snapshot).
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// A receiver that changes whenever a batch applies.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Waits until the state reaches `revision`, at most `timeout`.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> Result<State, CommandError> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| s.revision >= revision);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Err(CommandError::Unavailable(
                "the writer has stopped".to_owned(),
            )),
            Err(_) => Err(CommandError::Unavailable(format!(
                "revision {revision} not reached within {timeout:?}"
            ))),
        }
    }
}

struct Writer {
    pool: PgPool,
    config: DispatcherConfig,
    /// The applied state: everything in the log, nothing in flight.
    state: State,
    raft: openraft::Raft<crate::raft::TypeConfig>,
    /// The state machine's applied state.
    applied: watch::Receiver<State>,
    /// This node's Raft id.
    id: u64,
    /// The term in which this node, as leader, has applied every entry before its own first
    /// one: decisions are made only then.
    ready_term: Option<u64>,
}

/// Where a command's result comes from once the batch is settled.
enum Slot {
    Done(Result<Applied, CommandError>),
    /// Appended as item `n` of the batch.
    Appended(usize),
    /// A repeat, inside this batch, of the command in slot `n`.
    SameAs(usize),
}

/// A batch decided against the committed state plus the batch in flight, not yet appended.
/// It grows while the batch ahead of it is being appended.
struct Decided {
    jobs: Vec<Job>,
    slots: Vec<Slot>,
    append: Vec<AppendItem>,
    /// Commands decided without events (no-ops and rejections), recorded with the batch.
    unappended: Vec<(String, Option<Rejection>)>,
    /// The slot of each command id's first occurrence in this batch.
    first_slot: HashMap<String, usize>,
    /// The log position the decisions are based on: the append fails unless it is the head.
    base: i64,
    /// The position after this batch's events.
    end: i64,
    /// The state with this batch folded in.
    after: State,
    now: Timestamp,
    /// Holds one isolated job and takes no other.
    isolated: bool,
}

impl Decided {
    fn new(after: State, base: i64) -> Self {
        Self {
            jobs: Vec::new(),
            slots: Vec::new(),
            append: Vec::new(),
            unappended: Vec::new(),
            first_slot: HashMap::new(),
            base,
            end: base,
            after,
            now: truncate_to_micros(chrono::Utc::now()),
            isolated: false,
        }
    }

    fn writes_nothing(&self) -> bool {
        self.append.is_empty() && self.unappended.is_empty()
    }
}

/// The result of an append task: the positions it wrote.
type Landed = Result<Vec<Positions>, StoreError>;

/// The result of a finished append task, a panic included.
fn joined(r: Result<Landed, tokio::task::JoinError>) -> Landed {
    r.unwrap_or_else(|e| Err(StoreError::Internal(format!("append task failed: {e}"))))
}

/// Waits for a batch in Raft to land. If the term it was proposed in ends first, it is given
/// up as not the leader's: openraft may never answer for it (a deposed leader's entry that a
/// snapshot replaced), and it either committed in that term or never will. Its callers send
/// their commands again, with the same ids, to the new leader, which decides only after
/// applying every entry of earlier terms, so none applies twice.
async fn settle(raft: &openraft::Raft<crate::raft::TypeConfig>, flight: &mut InFlight) -> Landed {
    let mut metrics = raft.metrics();
    let term = flight.term;
    tokio::select! {
        biased;
        landed = &mut flight.task => joined(landed),
        ended = metrics.wait_for(|m| m.current_term != term) => match ended {
            Ok(_) => Err(StoreError::NotLeader(None)),
            Err(_) => Err(StoreError::Internal("raft stopped".to_owned())),
        },
    }
}

/// An append running while the writer decides the next batch.
struct InFlight {
    task: tokio::task::JoinHandle<Landed>,
    decided: Decided,
    /// The term it was proposed in: if the term changes before it lands, it is given up.
    term: u64,
    /// Its command ids: a repeat of one waits until it lands.
    ids: HashSet<String>,
}

impl Writer {
    /// The writer loop, pipelined: up to `pipeline` batches are in Raft at once, each decided
    /// on the state with the ones ahead of it folded in. Commands that arrive meanwhile are
    /// decided into the next batch, proposed as soon as there is room. Batches are proposed in
    /// order, so each one's base is the end of the one before. If one is not appended, every
    /// batch behind it is settled as it lands, and what did not land is decided again from the
    /// applied state.
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut flying: VecDeque<InFlight> = VecDeque::new();
        let mut next: Option<Decided> = None;
        let mut open = true;
        loop {
            while open {
                match jobs.try_recv() {
                    Ok(job) => queue.push_back(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            // Decisions are made in one term: once it is over, nothing more is decided or
            // proposed until the batches in Raft are settled (or given up), and the next
            // decision waits for the new term's leadership check.
            let current = self.term_is_current();
            if !current && flying.is_empty() {
                self.ready_term = None;
                self.resync();
                if let Some(n) = next.take() {
                    for job in n.jobs.into_iter().rev() {
                        queue.push_front(job);
                    }
                }
            }
            if current || flying.is_empty() {
                if !queue.is_empty() {
                    self.decide_into(&mut next, &mut queue, &flying).await;
                }
                match next.take() {
                    // Results that write nothing rest on the state of the batches ahead: they
                    // are sent once those have landed.
                    Some(n) if n.writes_nothing() && flying.is_empty() => self.reply(n, Vec::new()),
                    Some(n)
                        if !n.writes_nothing()
                            && flying.len() < self.config.pipeline.max(1)
                            && self.term_is_current() =>
                    {
                        flying.push_back(self.launch(n).await);
                        continue;
                    }
                    other => next = other,
                }
            }
            let Some(front) = flying.front_mut() else {
                if queue.is_empty() {
                    if !open {
                        break;
                    }
                    match jobs.recv().await {
                        Some(job) => queue.push_back(job),
                        None => open = false,
                    }
                }
                continue;
            };
            // Wait for the oldest batch to land, taking new jobs while the next has room.
            let full = next
                .as_ref()
                .is_some_and(|n| n.isolated || n.slots.len() >= self.config.max_batch);
            let landed = if open && !full {
                tokio::select! {
                    landed = settle(&self.raft, front) => Some(landed),
                    job = jobs.recv() => {
                        match job {
                            Some(job) => queue.push_back(job),
                            None => open = false,
                        }
                        None
                    }
                }
            } else {
                Some(settle(&self.raft, front).await)
            };
            let Some(landed) = landed else { continue };
            let Some(flight) = flying.pop_front() else {
                continue;
            };
            if let Err(mut retry) = self.land(flight.decided, landed).await {
                // The batches behind it were decided on its state: settle each as it lands.
                while let Some(mut behind) = flying.pop_front() {
                    let landed = settle(&self.raft, &mut behind).await;
                    if let Err(more) = self.land(behind.decided, landed).await {
                        retry.extend(more);
                    }
                }
                let void = next.take().map(|n| n.jobs).unwrap_or_default();
                for job in retry.into_iter().chain(void).rev() {
                    queue.push_front(job);
                }
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
        debug!("dispatcher stopped: every handle was dropped");
    }

    /// Decides queued jobs into `next`, up to the batch limit. A job that repeats a command id
    /// of the batch in flight waits in the queue until that batch lands (it then finds that id
    /// recorded); an isolated job goes alone.
    async fn decide_into(
        &mut self,
        next: &mut Option<Decided>,
        queue: &mut VecDeque<Job>,
        flying: &VecDeque<InFlight>,
    ) {
        if next.as_ref().is_some_and(|n| n.isolated) {
            return;
        }

        let mut count = next.as_ref().map_or(0, |n| n.slots.len());
        let mut taken = Vec::new();
        let mut kept = VecDeque::new();
        let mut isolated = false;
        while let Some(job) = queue.pop_front() {
            let repeats = job
                .items
                .iter()
                .any(|(_, m)| flying.iter().any(|f| f.ids.contains(&m.command_id)));
            let fits =
                count == 0 || (!job.isolate && count + job.items.len() <= self.config.max_batch);
            if repeats || isolated || !fits {
                kept.push_back(job);
            } else {
                count += job.items.len();
                isolated = job.isolate;
                taken.push(job);
            }
        }
        *queue = kept;
        if taken.is_empty() {
            return;
        }
        if flying.is_empty()
            && next.is_none()
            && let Err(e) = self.ensure_leading().await
        {
            for job in taken {
                let _ = job.reply.send(vec![Err(e.clone()); job.items.len()]);
            }
            return;
        }
        let ids: Vec<String> = taken
            .iter()
            .flat_map(|j| j.items.iter().map(|(_, m)| m.command_id.clone()))
            .collect();
        let known = match store::log::find_command_results(&self.pool, &ids).await {
            Ok(known) => known,
            Err(e) => {
                warn!(error = %e, "could not look up command ids");
                for job in taken {
                    let _ = job.reply.send(fail_all(job.items.len(), &e));
                }
                return;
            }
        };
        // Results recorded beyond our state: a batch was applied although its proposal reported
        // a failure. Take the applied state before answering from it.
        let ahead = known
            .values()
            .any(|r| matches!(r, Recorded::Appended((_, last)) if *last > self.state.revision));
        if ahead && flying.is_empty() && next.is_none() {
            self.resync();
        }
        let decided = next.get_or_insert_with(|| match flying.back() {
            Some(f) => Decided::new(f.decided.after.clone(), f.decided.end),
            None => Decided::new(self.state.clone(), self.state.revision),
        });
        decided.isolated = isolated;
        for job in taken {
            self.decide_job(decided, job, &known);
        }
    }

    /// Decides one caller's commands on top of `decided`, in order.
    fn decide_job(&self, decided: &mut Decided, job: Job, known: &HashMap<String, Recorded>) {
        for (cmd, meta) in &job.items {
            let id = meta.command_id.as_str();
            if let Some(recorded) = known.get(id) {
                decided.slots.push(Slot::Done(match recorded {
                    Recorded::Appended((first, last)) => Ok(Applied {
                        command_id: id.to_owned(),
                        positions: Some((*first, *last)),
                        revision: *last,
                        duplicate: true,
                    }),
                    Recorded::Unchanged => Ok(Applied {
                        command_id: id.to_owned(),
                        positions: None,
                        revision: 0,
                        duplicate: true,
                    }),
                    Recorded::Rejected(r) => Err(r.clone().into()),
                }));
                continue;
            }
            if let Some(&j) = decided.first_slot.get(id) {
                decided.slots.push(Slot::SameAs(j));
                continue;
            }
            decided
                .first_slot
                .insert(id.to_owned(), decided.slots.len());
            let ctx = Ctx {
                now: decided.now,
                seed: rand::random(),
                env: self.config.env.clone(),
            };
            // decide is pure and must not panic; if it does, that command fails alone and the
            // writer goes on.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decide_and_evolve(&decided.after, cmd, &ctx)
                    .and_then(|(events, after)| Ok((check_storable(events)?, after)))
            }));
            match outcome {
                Ok(Ok((events, _))) if events.is_empty() => {
                    decided.unappended.push((id.to_owned(), None));
                    decided.slots.push(Slot::Done(Ok(Applied {
                        command_id: id.to_owned(),
                        positions: None,
                        revision: 0,
                        duplicate: false,
                    })));
                }
                Ok(Ok((events, after))) => {
                    decided.after = after;
                    decided.end += events.len() as i64;
                    decided.slots.push(Slot::Appended(decided.append.len()));
                    decided.append.push(AppendItem::new(meta.clone(), events));
                }
                Ok(Err(rejection)) => {
                    debug!(command = cmd.name(), command_id = id, class = ?rejection.class, "command rejected");
                    decided
                        .unappended
                        .push((id.to_owned(), Some(rejection.clone())));
                    decided.slots.push(Slot::Done(Err(rejection.into())));
                }
                Err(_) => {
                    error!(
                        command = cmd.name(),
                        command_id = id,
                        "decide panicked; the command is refused"
                    );
                    decided
                        .slots
                        .push(Slot::Done(Err(CommandError::Internal(format!(
                            "{} could not be decided",
                            cmd.name()
                        )))));
                }
            }
        }
        decided.jobs.push(job);
    }

    /// Proposes a decided batch to Raft; it is appended when the entry is applied. Its base is
    /// the position its decisions were made on; if the head is not there when it is applied
    /// (a batch ahead failed, a new leader), it is refused as stale on every node and decided
    /// again.
    async fn launch(&self, mut decided: Decided) -> InFlight {
        let batch = Batch {
            base_position: decided.base,
            recorded_at: decided.now,
            decided_by: self.config.node_name.clone(),
            // Not needed after this: the results come from the slots and the positions.
            items: Arc::new(std::mem::take(&mut decided.append)),
            unappended: Arc::new(std::mem::take(&mut decided.unappended)),
        };
        // Handed to Raft here, in order; the answer is awaited in its own task.
        let proposed = self.raft.client_write_ff(batch).await;
        let task = tokio::spawn(async move {
            let rx = proposed.map_err(|e| StoreError::Internal(format!("raft: {e}")))?;
            match rx.await {
                Ok(Ok(written)) => match written.data {
                    Outcome::Appended(positions) => Ok(positions),
                    Outcome::Stale { base, head } => Err(StoreError::Conflict {
                        expected: base,
                        actual: head,
                    }),
                    Outcome::Nothing => Ok(Vec::new()),
                },
                Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                    Err(StoreError::NotLeader(f.leader_node.map(|n| n.addr)))
                }
                Ok(Err(e)) => Err(StoreError::Internal(format!("raft: {e}"))),
                Err(_) => Err(StoreError::Internal("raft stopped".to_owned())),
            }
        });
        let term = self
            .ready_term
            .unwrap_or_else(|| self.raft.metrics().borrow().current_term);
        let ids = decided
            .jobs
            .iter()
            .flat_map(|j| j.items.iter().map(|(_, m)| m.command_id.clone()))
            .collect();
        InFlight {
            task,
            decided,
            term,
            ids,
        }
    }

    /// Settles a batch whose append finished. On success the state and head move on and its
    /// callers get their results. Otherwise the applied state is taken again, and the jobs to send again are
    /// returned (see the rules inside).
    async fn land(&mut self, decided: Decided, landed: Landed) -> Result<(), Vec<Job>> {
        match landed {
            Ok(positions) => {
                // The entry is applied when client_write returns: take the applied state.
                self.state = self.applied.borrow().clone();
                self.reply(decided, positions);
                Ok(())
            }
            Err(e) => {
                if let StoreError::NotLeader(_) = e {
                    // Lost the leadership: the callers send their commands to the new leader
                    // (with the same ids; one that did commit is found there).
                    self.ready_term = None;
                    self.resync();
                    for job in decided.jobs {
                        let _ = job.reply.send(fail_all(job.items.len(), &e));
                    }
                    return Err(Vec::new());
                }
                let conflict = matches!(e, StoreError::Conflict { .. });
                let transient = match &e {
                    StoreError::Database(db) => is_transient(db),
                    _ => false,
                };
                warn!(error = %e, conflict, transient, "batch not appended; taking the applied state");
                self.resync();
                let shared = decided.jobs.len() > 1;
                let mut retry = Vec::new();
                for mut job in decided.jobs {
                    // A stale base is decided again. A failure of the data (not the
                    // connection) is retried with each job alone, once; a job that failed alone
                    // fails. The database being unreachable fails at once: callers retry with
                    // the same command id and get the recorded result if it did commit.
                    let again = if conflict {
                        job.attempts < self.config.conflict_retries
                    } else {
                        !transient && shared && !job.isolate
                    };
                    if again {
                        job.attempts += 1;
                        job.isolate |= !conflict;
                        retry.push(job);
                    } else {
                        let _ = job.reply.send(fail_all(job.items.len(), &e));
                    }
                }
                Err(retry)
            }
        }
    }

    /// Sends every caller of a settled batch its results.
    fn reply(&self, decided: Decided, positions: Vec<Positions>) {
        let revision = self.state.revision;
        let mut out: Vec<Result<Applied, CommandError>> = Vec::with_capacity(decided.slots.len());
        let ids = decided
            .jobs
            .iter()
            .flat_map(|j| j.items.iter().map(|(_, m)| &m.command_id));
        for (slot, id) in decided.slots.into_iter().zip(ids) {
            let r = match slot {
                Slot::Done(r) => r.map(|a| Applied {
                    revision: if a.positions.is_some() {
                        a.revision
                    } else {
                        revision
                    },
                    ..a
                }),
                Slot::Appended(n) => match positions.get(n) {
                    Some(&p) => Ok(Applied {
                        command_id: id.clone(),
                        positions: Some(p),
                        revision,
                        duplicate: false,
                    }),
                    None => Err(CommandError::Internal(
                        "the applied batch reported too few positions".to_owned(),
                    )),
                },
                Slot::SameAs(j) => out[j].clone().map(|a| Applied {
                    duplicate: true,
                    ..a
                }),
            };
            out.push(r);
        }
        let mut results = out.into_iter();
        for job in decided.jobs {
            let mine: Vec<_> = results.by_ref().take(job.items.len()).collect();
            // A caller that went away does not need its result.
            let _ = job.reply.send(mine);
        }
    }

    /// Checks that this node leads. In a term it has not decided in yet, it first waits until
    /// it has applied every entry committed before its leadership (the blank entry of its
    /// term), so that no decision rests on a state older than the log.
    async fn ensure_leading(&mut self) -> Result<(), CommandError> {
        let (term, leader, addr) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let leader = crate::raft::leader_of(&m);
            (
                m.current_term,
                leader.as_ref().map(|(id, _)| *id),
                leader.and_then(|(_, addr)| addr),
            )
        };
        if leader != Some(self.id) {
            self.ready_term = None;
            return Err(CommandError::NotLeader { leader: addr });
        }
        if self.ready_term == Some(term) {
            return Ok(());
        }
        let confirmed =
            tokio::time::timeout(LEADERSHIP_CHECK_TIMEOUT, self.raft.ensure_linearizable()).await;
        let Ok(confirmed) = confirmed else {
            // No quorum answers: this leader may be cut off; let the caller look again.
            return Err(CommandError::NotLeader { leader: None });
        };
        match confirmed {
            Ok(_) => {
                self.resync();
                self.ready_term = Some(term);
                Ok(())
            }
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(f),
            )) => Err(CommandError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            }),
            Err(e) => Err(CommandError::Unavailable(format!("raft: {e}"))),
        }
    }

    /// True while this node leads in the term its decisions are made in (or has made none).
    fn term_is_current(&self) -> bool {
        let Some(term) = self.ready_term else {
            return true;
        };
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_term == term && m.current_leader == Some(self.id)
    }

    /// Takes the state machine's applied state again (after a failed proposal).
    fn resync(&mut self) {
        self.state = self.applied.borrow().clone();
    }
}

/// Runs `f` on the commands whose metadata is valid and puts the others' errors in place.
async fn with_valid_meta<F, Fut>(
    items: Vec<(Command, CommandMeta)>,
    f: F,
) -> Vec<Result<Applied, CommandError>>
where
    F: FnOnce(Vec<(Command, CommandMeta)>) -> Fut,
    Fut: std::future::Future<Output = Vec<Result<Applied, CommandError>>>,
{
    let mut out: Vec<Option<Result<Applied, CommandError>>> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    for (cmd, meta) in items {
        match check_meta(&meta) {
            Ok(()) => {
                out.push(None);
                valid.push((cmd, meta));
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    let results = if valid.is_empty() {
        Vec::new()
    } else {
        f(valid).await
    };
    let mut results = results.into_iter();
    out.into_iter()
        .map(|r| {
            r.or_else(|| results.next()).unwrap_or_else(|| {
                Err(CommandError::Internal(
                    "the writer returned too few results".to_owned(),
                ))
            })
        })
        .collect()
}

/// Refuses metadata PostgreSQL could not store or index: command ids are idempotency keys,
/// bounded like names.
fn check_meta(meta: &CommandMeta) -> Result<(), CommandError> {
    let fields = [
        ("command_id", Some(&meta.command_id)),
        ("actor", Some(&meta.actor)),
        ("correlation_id", meta.correlation_id.as_ref()),
        ("causation_id", meta.causation_id.as_ref()),
    ];
    for (name, value) in fields {
        let Some(value) = value else { continue };
        if (name == "command_id" || name == "actor") && value.is_empty() {
            return Err(CommandError::Invalid(format!(
                "{name}: value must not be empty."
            )));
        }
        if value.len() > MAX_META_LEN {
            return Err(CommandError::Invalid(format!(
                "{name}: at most {MAX_META_LEN} bytes allowed."
            )));
        }
        if value.contains('\0') {
            return Err(CommandError::Invalid(format!(
                "{name}: must not contain NUL bytes."
            )));
        }
    }
    Ok(())
}

/// Longest command id, actor, correlation or causation id.
pub const MAX_META_LEN: usize = 255;

fn fail_all(n: usize, e: &StoreError) -> Vec<Result<Applied, CommandError>> {
    let err = match e {
        StoreError::Conflict { expected, actual } => CommandError::Conflict {
            expected: *expected,
            actual: *actual,
        },
        StoreError::NotLeader(leader) => CommandError::NotLeader {
            leader: leader.clone(),
        },
        StoreError::Database(db) if is_transient(db) => {
            CommandError::Unavailable(format!("database: {e}"))
        }
        _ => CommandError::Internal(e.to_string()),
    };
    vec![Err(err); n]
}

/// Errors worth retrying: the connection, the pool, or the server's state, not the data.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| c.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// PostgreSQL can store neither NUL in text nor `\u0000` in jsonb: reject such input here, as
/// bad input, rather than fail the whole batch in the database.
fn check_storable(events: Vec<Event>) -> Result<Vec<Event>, Rejection> {
    // serde_json writes NUL as the escape `\u0000`, and a literal backslash as `\\`: an
    // escape preceded by an even number of backslashes is a real NUL.
    fn has_nul(json: &str) -> bool {
        json.match_indices("\\u0000")
            .any(|(i, _)| json[..i].bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 0)
    }
    for e in &events {
        if serde_json::to_string(e)
            .map(|j| has_nul(&j))
            .unwrap_or(true)
        {
            return Err(Rejection::invalid(
                "text fields must not contain NUL bytes.",
            ));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Node, NodeId, NodeType};

    fn node_named(name: &str) -> Vec<Event> {
        let node = Node {
            node_id: NodeId::from("n1"),
            node_type: NodeType::Generic,
            node_name: name.to_owned(),
            machine_id: None,
            distro: String::new(),
            node_model: String::new(),
            az: String::new(),
            custom_labels: Default::default(),
            address: "a".to_owned(),
            region: None,
            container_id: None,
            container_name: None,
            instance_id: String::new(),
            is_pmm_server_node: false,
            created_at: Default::default(),
            updated_at: Default::default(),
        };
        vec![Event::NodeAdded { node }]
    }

    #[test]
    fn nul_bytes_are_refused_but_their_escaped_spelling_is_text() {
        assert!(check_storable(node_named("a\0b")).is_err());
        assert!(check_storable(node_named("\\\0")).is_err());
        assert!(check_storable(node_named("a\\u0000b")).is_ok());
        assert!(check_storable(node_named("\\\\u0000")).is_ok());
        assert!(check_storable(node_named("plain")).is_ok());
    }
}
