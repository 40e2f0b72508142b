//! The command entry point: `dispatch(command, meta) -> Result<Applied, CommandError>`.
//!
//! One writer task owns the state and the log head. It takes every queued command (up to a
//! batch limit), decides each against the state with the earlier ones of the batch folded in,
//! and appends all of them in one transaction (group commit), so throughput grows with the
//! number of concurrent callers. Raft goes under this task later; callers do not change.

use super::{Command, CommandError, CommandMeta, Ctx, Rejection, decide_and_evolve};
use crate::domain::State;
use crate::domain::Timestamp;
use crate::domain::ids::truncate_to_micros;
use crate::domain::settings::EnvSettings;
use crate::events::Event;
use crate::store::log::Positions;
use crate::store::{self, AppendItem, Batch, LogHead, StoreError};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

/// What a command that applied returns.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            env: Arc::default(),
            node_name: "pmm-cp".to_owned(),
            conflict_retries: 3,
        }
    }
}

type Reply = oneshot::Sender<Vec<Result<Applied, CommandError>>>;

struct Job {
    items: Vec<(Command, CommandMeta)>,
    reply: Reply,
    /// Times this job was decided again after a stale base.
    attempts: u32,
}

/// A handle to the writer. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Dispatcher {
    jobs: mpsc::Sender<Job>,
    state: watch::Receiver<State>,
}

impl Dispatcher {
    /// Loads the state from the log and starts the writer task.
    pub async fn start(
        pool: PgPool,
        config: DispatcherConfig,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let mut state = State::default();
        store::log::catch_up(&pool, &mut state).await?;
        let head = LogHead::load(&pool).await?;
        let (state_tx, state_rx) = watch::channel(state.clone());
        let (jobs_tx, jobs_rx) = mpsc::channel(4096);
        let writer = Writer {
            pool,
            config,
            state,
            head,
            published: state_tx,
        };
        let task = tokio::spawn(writer.run(jobs_rx));
        Ok((
            Self {
                jobs: jobs_tx,
                state: state_rx,
            },
            task,
        ))
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

    /// Decides and appends several commands in one transaction (all accepted ones or none).
    pub async fn dispatch_batch(
        &self,
        items: Vec<(Command, CommandMeta)>,
    ) -> Vec<Result<Applied, CommandError>> {
        let n = items.len();
        let (reply, rx) = oneshot::channel();
        let stopped = || {
            (0..n)
                .map(|_| {
                    Err(CommandError::Unavailable(
                        "the writer has stopped".to_owned(),
                    ))
                })
                .collect()
        };
        if self
            .jobs
            .send(Job {
                items,
                reply,
                attempts: 0,
            })
            .await
            .is_err()
        {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
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
    /// The committed state: everything in the log, nothing in flight.
    state: State,
    head: LogHead,
    published: watch::Sender<State>,
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
    /// The slot of each command id's first occurrence in this batch.
    first_slot: HashMap<String, usize>,
    /// The state with this batch folded in.
    after: State,
    now: Timestamp,
}

impl Decided {
    fn new(base: State) -> Self {
        Self {
            jobs: Vec::new(),
            slots: Vec::new(),
            append: Vec::new(),
            first_slot: HashMap::new(),
            after: base,
            now: truncate_to_micros(chrono::Utc::now()),
        }
    }
}

/// The result of an append task: what it wrote, and the head after it.
type Landed = (Result<Vec<Positions>, StoreError>, LogHead);

/// An append running while the writer decides the next batch.
struct InFlight {
    task: tokio::task::JoinHandle<Landed>,
    decided: Decided,
}

impl Writer {
    /// The writer loop, pipelined: while one batch is being appended, the commands that
    /// arrive are decided into the next batch, against the state with the batch in flight
    /// folded in; it is appended as soon as the one ahead commits. If that one does not
    /// commit, the next batch is decided again from the log's state.
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut in_flight: Option<InFlight> = None;
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
            if !queue.is_empty() {
                self.decide_into(&mut next, &mut queue, in_flight.as_ref())
                    .await;
            }
            if let Some(mut flight) = in_flight.take() {
                let full = next
                    .as_ref()
                    .is_some_and(|n| n.slots.len() >= self.config.max_batch);
                let landed = if open && !full {
                    tokio::select! {
                        landed = &mut flight.task => Some(landed),
                        job = jobs.recv() => {
                            match job {
                                Some(job) => queue.push_back(job),
                                None => open = false,
                            }
                            None
                        }
                    }
                } else {
                    Some((&mut flight.task).await)
                };
                let Some(landed) = landed else {
                    in_flight = Some(flight);
                    continue;
                };
                let landed = landed.unwrap_or_else(|e| {
                    (
                        Err(StoreError::Internal(format!("append task failed: {e}"))),
                        self.head.clone(),
                    )
                });
                if let Err(retry) = self.land(flight.decided, landed).await {
                    // The batch decided on top of it is void: decide both again, in order.
                    let void = next.take().map(|n| n.jobs).unwrap_or_default();
                    for job in retry.into_iter().chain(void).rev() {
                        queue.push_front(job);
                    }
                    continue;
                }
            }
            match next.take() {
                Some(n) if n.append.is_empty() => self.reply(n, Vec::new()),
                Some(n) => in_flight = Some(self.launch(n)),
                None if queue.is_empty() => {
                    if !open {
                        break;
                    }
                    match jobs.recv().await {
                        Some(job) => queue.push_back(job),
                        None => open = false,
                    }
                }
                None => {}
            }
        }
        debug!("dispatcher stopped: every handle was dropped");
    }

    /// Decides queued jobs into `next`, up to the batch limit. A job that repeats a command id
    /// of the batch in flight waits in the queue until that batch lands (it then finds the id
    /// recorded).
    async fn decide_into(
        &mut self,
        next: &mut Option<Decided>,
        queue: &mut VecDeque<Job>,
        in_flight: Option<&InFlight>,
    ) {
        let flying: HashSet<&str> = in_flight
            .map(|f| {
                f.decided
                    .jobs
                    .iter()
                    .flat_map(|j| j.items.iter().map(|(_, m)| m.command_id.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut count = next.as_ref().map_or(0, |n| n.slots.len());
        let mut taken = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(job) = queue.pop_front() {
            let repeats = job
                .items
                .iter()
                .any(|(_, m)| flying.contains(m.command_id.as_str()));
            if repeats || (count > 0 && count + job.items.len() > self.config.max_batch) {
                kept.push_back(job);
            } else {
                count += job.items.len();
                taken.push(job);
            }
        }
        *queue = kept;
        if taken.is_empty() {
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
        let decided = next.get_or_insert_with(|| {
            Decided::new(
                in_flight
                    .map(|f| f.decided.after.clone())
                    .unwrap_or_else(|| self.state.clone()),
            )
        });
        for job in taken {
            self.decide_job(decided, job, &known);
        }
    }

    /// Decides one caller's commands on top of `decided`, in order.
    fn decide_job(&self, decided: &mut Decided, job: Job, known: &HashMap<String, (i64, i64)>) {
        for (cmd, meta) in &job.items {
            let id = meta.command_id.as_str();
            if let Some(&(first, last)) = known.get(id) {
                decided.slots.push(Slot::Done(Ok(Applied {
                    command_id: id.to_owned(),
                    positions: Some((first, last)),
                    revision: last,
                    duplicate: true,
                })));
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
            match decide_and_evolve(&decided.after, cmd, &ctx)
                .and_then(|(events, after)| Ok((check_storable(events)?, after)))
            {
                Ok((events, _)) if events.is_empty() => {
                    decided.slots.push(Slot::Done(Ok(Applied {
                        command_id: id.to_owned(),
                        positions: None,
                        revision: 0,
                        duplicate: false,
                    })))
                }
                Ok((events, after)) => {
                    decided.after = after;
                    decided.slots.push(Slot::Appended(decided.append.len()));
                    decided.append.push(AppendItem {
                        meta: meta.clone(),
                        events,
                    });
                }
                Err(rejection) => {
                    debug!(command = cmd.name(), command_id = id, class = ?rejection.class, "command rejected");
                    decided.slots.push(Slot::Done(Err(rejection.into())));
                }
            }
        }
        decided.jobs.push(job);
    }

    /// Starts appending a decided batch on top of the committed head.
    fn launch(&self, decided: Decided) -> InFlight {
        let batch = Batch {
            base_position: self.head.position,
            recorded_at: decided.now,
            decided_by: self.config.node_name.clone(),
            items: decided.append.clone(),
        };
        let (pool, mut head, after) = (self.pool.clone(), self.head.clone(), decided.after.clone());
        let task = tokio::spawn(async move {
            let r = store::log::append(&pool, &mut head, &batch, &after).await;
            (r, head)
        });
        InFlight { task, decided }
    }

    /// Settles a batch whose append finished. On success the state and head move on and its
    /// callers get their results. On a stale base its jobs are returned to be decided again
    /// (a bounded number of times); on any other failure its callers get the error.
    async fn land(&mut self, decided: Decided, landed: Landed) -> Result<(), Vec<Job>> {
        let (result, head) = landed;
        match result {
            Ok(positions) => {
                self.head = head;
                let mut state = decided.after.clone();
                state.revision = self.head.position;
                self.state = state;
                self.published.send_replace(self.state.clone());
                self.reply(decided, positions);
                Ok(())
            }
            Err(e) => {
                let conflict = matches!(e, StoreError::Conflict { .. });
                warn!(error = %e, conflict, "batch not appended; re-reading the log");
                if let Err(e2) = self.resync().await {
                    warn!(error = %e2, "could not re-read the log after a failed append");
                }
                let mut retry = Vec::new();
                for mut job in decided.jobs {
                    if conflict && job.attempts < self.config.conflict_retries {
                        job.attempts += 1;
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
        let revision = self.head.position;
        let mut out: Vec<Result<Applied, CommandError>> = Vec::with_capacity(decided.slots.len());
        let ids = decided
            .jobs
            .iter()
            .flat_map(|j| j.items.iter().map(|(_, m)| &m.command_id));
        for (slot, id) in decided.slots.into_iter().zip(ids) {
            let r = match slot {
                Slot::Done(r) => r.map(|a| Applied {
                    revision: if a.duplicate { a.revision } else { revision },
                    ..a
                }),
                Slot::Appended(n) => Ok(Applied {
                    command_id: id.clone(),
                    positions: Some(positions[n]),
                    revision,
                    duplicate: false,
                }),
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

    /// Re-reads the head and folds in whatever the log holds beyond the state.
    async fn resync(&mut self) -> Result<(), StoreError> {
        self.head = LogHead::load(&self.pool).await?;
        if self.head.position < self.state.revision {
            // The log is shorter than what we applied: only a reset database can do that.
            self.state = State::default();
        }
        store::log::catch_up(&self.pool, &mut self.state).await?;
        self.published.send_replace(self.state.clone());
        Ok(())
    }
}

fn fail_all(n: usize, e: &StoreError) -> Vec<Result<Applied, CommandError>> {
    let err = match e {
        StoreError::Conflict { expected, actual } => CommandError::Conflict {
            expected: *expected,
            actual: *actual,
        },
        StoreError::Database(_) => CommandError::Unavailable(format!("database: {e}")),
        _ => CommandError::Internal(e.to_string()),
    };
    vec![Err(err); n]
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
