//! The command entry point: `dispatch(command, meta) -> Result<Applied, CommandError>`.
//!
//! One writer task owns the state and the log head. It takes every queued command (up to a
//! batch limit), decides each against the state with the earlier ones of the batch folded in,
//! and appends all of them in one transaction (group commit), so throughput grows with the
//! number of concurrent callers. Raft goes under this task later; callers do not change.

use super::{Command, CommandError, CommandMeta, Ctx, Rejection, decide};
use crate::domain::State;
use crate::domain::ids::truncate_to_micros;
use crate::domain::settings::EnvSettings;
use crate::events::Event;
use crate::store::{self, AppendItem, Batch, LogHead, StoreError};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
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
        if self.jobs.send(Job { items, reply }).await.is_err() {
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

impl Writer {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            let mut count = batch[0].items.len();
            while count < self.config.max_batch {
                match jobs.try_recv() {
                    Ok(job) => {
                        count += job.items.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.process(batch).await;
        }
        debug!("dispatcher stopped: every handle was dropped");
    }

    async fn process(&mut self, jobs: Vec<Job>) {
        let (commands, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.items, j.reply)).unzip();
        let flat: Vec<(Command, CommandMeta)> = commands.iter().flatten().cloned().collect();
        let mut results = self.settle(&flat).await.into_iter();
        for (items, reply) in commands.iter().zip(replies) {
            let mine: Vec<_> = results.by_ref().take(items.len()).collect();
            // A caller that went away does not need its result.
            let _ = reply.send(mine);
        }
    }

    /// Decides and appends, re-deciding after a stale-base conflict a bounded number of times.
    async fn settle(
        &mut self,
        items: &[(Command, CommandMeta)],
    ) -> Vec<Result<Applied, CommandError>> {
        let mut attempt = 0;
        loop {
            match self.try_batch(items).await {
                Err(StoreError::Conflict { expected, actual })
                    if attempt < self.config.conflict_retries =>
                {
                    attempt += 1;
                    warn!(
                        expected,
                        actual,
                        attempt,
                        "log head moved under the writer; catching up and re-deciding"
                    );
                    if let Err(e) = self.resync().await {
                        return fail_all(items.len(), &e);
                    }
                }
                Err(e) => {
                    warn!(error = %e, commands = items.len(), "batch not appended");
                    if let Err(e) = self.resync().await {
                        warn!(error = %e, "could not re-read the log after a failed append");
                    }
                    return fail_all(items.len(), &e);
                }
                Ok(results) => return results,
            }
        }
    }

    async fn try_batch(
        &mut self,
        items: &[(Command, CommandMeta)],
    ) -> Result<Vec<Result<Applied, CommandError>>, StoreError> {
        let ids: Vec<String> = items.iter().map(|(_, m)| m.command_id.clone()).collect();
        let known = store::log::find_command_results(&self.pool, &ids).await?;
        let mut working = self.state.clone();
        let now = truncate_to_micros(chrono::Utc::now());
        let mut slots = Vec::with_capacity(items.len());
        let mut first_slot: HashMap<&str, usize> = HashMap::new();
        let mut append = Vec::new();
        for (i, (cmd, meta)) in items.iter().enumerate() {
            let id = meta.command_id.as_str();
            if let Some(&(first, last)) = known.get(id) {
                let applied = Applied {
                    command_id: id.to_owned(),
                    positions: Some((first, last)),
                    revision: self.head.position,
                    duplicate: true,
                };
                slots.push(Slot::Done(Ok(applied)));
                continue;
            }
            if let Some(&j) = first_slot.get(id) {
                slots.push(Slot::SameAs(j));
                continue;
            }
            first_slot.insert(id, i);
            let ctx = Ctx {
                now,
                seed: rand::random(),
                env: self.config.env.clone(),
            };
            match decide(&working, cmd, &ctx).and_then(check_storable) {
                Ok(events) if events.is_empty() => {
                    slots.push(Slot::Done(Ok(Applied {
                        command_id: id.to_owned(),
                        positions: None,
                        revision: self.head.position,
                        duplicate: false,
                    })));
                }
                Ok(events) => {
                    events.iter().for_each(|e| working.evolve(e));
                    slots.push(Slot::Appended(append.len()));
                    append.push(AppendItem {
                        meta: meta.clone(),
                        events,
                    });
                }
                Err(rejection) => {
                    debug!(command = cmd.name(), command_id = id, class = ?rejection.class, "command rejected");
                    slots.push(Slot::Done(Err(rejection.into())));
                }
            }
        }
        let mut positions = Vec::new();
        if !append.is_empty() {
            let batch = Batch {
                base_position: self.head.position,
                recorded_at: now,
                decided_by: self.config.node_name.clone(),
                items: append,
            };
            positions = store::log::append(&self.pool, &mut self.head, &batch, &working).await?;
            working.revision = self.head.position;
            self.state = working;
            self.published.send_replace(self.state.clone());
        }
        let revision = self.head.position;
        let mut out: Vec<Result<Applied, CommandError>> = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            let r = match slot {
                Slot::Done(r) => r.map(|a| Applied {
                    revision: a
                        .revision
                        .max(if a.duplicate { a.revision } else { revision }),
                    ..a
                }),
                Slot::Appended(n) => Ok(Applied {
                    command_id: items[i].1.command_id.clone(),
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
        Ok(out)
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
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    for e in &events {
        if serde_json::to_value(e).map(|v| has_nul(&v)).unwrap_or(true) {
            return Err(Rejection::invalid(
                "text fields must not contain NUL bytes.",
            ));
        }
    }
    Ok(events)
}
