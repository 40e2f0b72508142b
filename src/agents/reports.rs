//! The batcher: reports from every stream of this node become few [`ReportAgents`] commands.
//! It takes what arrived, waits [`WINDOW`] for more, keeps only the last state report per agent
//! (connections all, in order), and sends one command (to the leader, from any node). A failed send is retried with backoff; every report's sender learns whether it was
//! recorded.

use crate::commands::agent_reports::{AgentReport, Connection, ReportAgents};
use crate::commands::dispatcher::Dispatcher;
use crate::commands::{Command, CommandMeta};
use crate::domain::AgentId;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the batcher waits for more reports after the first.
pub const WINDOW: Duration = Duration::from_millis(20);
/// Reports in one command at most.
const MAX_BATCH: usize = 5_000;

enum Item {
    Connection(Connection),
    Report(AgentReport, oneshot::Sender<bool>),
}

/// Hands reports to the batcher task. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Item>,
}

impl Batcher {
    /// Starts the batcher task.
    pub fn start(dispatcher: Dispatcher) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(dispatcher, rx));
        Self { tx }
    }

    pub fn connection(&self, c: Connection) {
        let _ = self.tx.send(Item::Connection(c));
    }

    /// Queues a report; the receiver says whether it was recorded.
    pub fn report(&self, r: AgentReport) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Item::Report(r, tx));
        rx
    }
}

async fn run(dispatcher: Dispatcher, mut rx: mpsc::UnboundedReceiver<Item>) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + WINDOW;
        while items.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let mut connections: Vec<Connection> = Vec::new();
        let mut reports: Vec<AgentReport> = Vec::new();
        let mut by_agent: HashMap<AgentId, usize> = HashMap::new();
        let mut waiters = Vec::new();
        for item in items {
            match item {
                // Connections are kept whole and in order: a connect and a disconnect of
                // sessions are each a fact the state needs (they are few).
                Item::Connection(c) => connections.push(c),
                Item::Report(r, done) => {
                    waiters.push(done);
                    match by_agent.get(&r.agent_id) {
                        Some(&i) => reports[i] = r,
                        None => {
                            by_agent.insert(r.agent_id.clone(), reports.len());
                            reports.push(r);
                        }
                    }
                }
            }
        }
        let cmd = Command::ReportAgents(ReportAgents {
            connections,
            reports,
        });
        let recorded = send(&dispatcher, cmd).await;
        for w in waiters {
            let _ = w.send(recorded);
        }
    }
}

/// Sends with one command id (a resend applies once), retrying transient failures for up
/// to about half a minute.
async fn send(dispatcher: &Dispatcher, cmd: Command) -> bool {
    let meta = CommandMeta::new("pmm-agent streams");
    let mut delay = Duration::from_millis(50);
    for _ in 0..12 {
        match dispatcher.dispatch(cmd.clone(), meta.clone()).await {
            Ok(_) => return true,
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "pmm-agent reports were refused");
                return false;
            }
        }
    }
    tracing::warn!("pmm-agent reports could not be recorded; the agents will report again");
    false
}
