//! The batcher: reports from every stream of this node become few [`ReportAgents`] commands.
//! It takes what arrived, waits [`WINDOW`] for more, keeps only the last state report per agent
//! (connections all, in order), and sends one command (to the leader, from any node). A failed
//! send is retried with backoff; every report's sender learns whether it was recorded, and may
//! send it again. Connections and disconnections have no sender to retry them: those of a batch
//! that could not be recorded (no leader for half a minute, say) are carried into the next
//! batch, compacted to what decides each pmm-agent's final connection state, until recorded.

use crate::commands::agent_reports::{AgentReport, Connection, ReportAgents, ReportItem};
use crate::commands::dispatcher::Dispatcher;
use crate::commands::{Command, CommandMeta};
use crate::domain::AgentId;
use std::collections::HashSet;
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

/// Pause before a batch of only carried-over connections is sent again.
const CARRY_RETRY: Duration = Duration::from_secs(5);

async fn run(dispatcher: Dispatcher, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut carried: Vec<Connection> = Vec::new();
    loop {
        let first = if carried.is_empty() {
            rx.recv().await
        } else {
            tokio::time::timeout(CARRY_RETRY, rx.recv())
                .await
                .unwrap_or(None)
        };
        let mut items: Vec<Item> = carried.drain(..).map(Item::Connection).collect();
        match first {
            Some(item) => items.push(item),
            None if items.is_empty() => return,
            None => {}
        }
        let deadline = tokio::time::Instant::now() + WINDOW;
        while items.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        // In arrival order; of the state reports about one agent (from one pmm-agent) only
        // the last is kept, at its own place.
        let mut waiters = Vec::new();
        let mut ordered: Vec<ReportItem> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Connection(c) => ordered.push(ReportItem::Connection(c)),
                Item::Report(r, done) => {
                    waiters.push(done);
                    ordered.push(ReportItem::State(r));
                }
            }
        }
        let mut seen: HashSet<(AgentId, AgentId)> = HashSet::new();
        let mut keep = vec![true; ordered.len()];
        for (i, item) in ordered.iter().enumerate().rev() {
            if let ReportItem::State(r) = item {
                keep[i] = seen.insert((r.pmm_agent_id.clone(), r.agent_id.clone()));
            }
        }
        let mut k = keep.into_iter();
        ordered.retain(|_| k.next().unwrap_or(true));
        let batch = ReportAgents { items: ordered };
        let outcome = send(&dispatcher, &Command::ReportAgents(batch.clone())).await;
        if outcome == Sent::Unavailable {
            carried = compact(batch.items.into_iter().filter_map(|i| match i {
                ReportItem::Connection(c) => Some(c),
                ReportItem::State(_) => None,
            }));
        }
        for w in waiters {
            let _ = w.send(outcome == Sent::Recorded);
        }
    }
}

/// Of each pmm-agent's connection changes, in order, what decides its final state: the last
/// change, and when that is a disconnection, the connection of the same session just before
/// it (a disconnection is applied only to the session it ends).
fn compact(changes: impl DoubleEndedIterator<Item = Connection>) -> Vec<Connection> {
    let mut kept: Vec<Connection> = Vec::new();
    // pmm-agent -> the session whose connection may still be kept (after its disconnection).
    let mut wanted: std::collections::HashMap<AgentId, Option<String>> = Default::default();
    for c in changes.rev() {
        match wanted.get(&c.pmm_agent_id) {
            None => {
                let next = (!c.connected).then(|| c.session.clone());
                wanted.insert(c.pmm_agent_id.clone(), next);
                kept.push(c);
            }
            Some(Some(session)) if c.connected && *session == c.session => {
                wanted.insert(c.pmm_agent_id.clone(), None);
                kept.push(c);
            }
            Some(_) => {}
        }
    }
    kept.reverse();
    kept
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Recorded,
    Refused,
    Unavailable,
}

/// Sends with one command id (a resend applies once), retrying transient failures for up
/// to about half a minute.
async fn send(dispatcher: &Dispatcher, cmd: &Command) -> Sent {
    let meta = CommandMeta::new("pmm-agent streams");
    let mut delay = Duration::from_millis(50);
    for _ in 0..12 {
        match dispatcher.dispatch(cmd.clone(), meta.clone()).await {
            Ok(_) => return Sent::Recorded,
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "pmm-agent reports were refused");
                return Sent::Refused;
            }
        }
    }
    tracing::warn!(
        "pmm-agent reports could not be recorded; the agents will report again, and \
         connection changes are kept for the next batch"
    );
    Sent::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(agent: &str, session: &str, connected: bool) -> Connection {
        Connection {
            pmm_agent_id: AgentId::from(agent.to_owned()),
            session: session.to_owned(),
            connected,
            version: None,
        }
    }

    #[test]
    fn compaction_keeps_what_decides_each_final_connection_state() {
        let changes = vec![
            c("a", "1", true),
            c("b", "1", false),
            c("a", "1", false),
            c("c", "1", true),
            c("a", "2", true),
            c("c", "1", false),
            c("c", "2", true),
            c("a", "2", false),
            c("b", "2", true),
        ];
        let kept = compact(changes.into_iter());
        assert_eq!(
            kept,
            vec![
                c("a", "2", true),
                c("c", "2", true),
                c("a", "2", false),
                c("b", "2", true),
            ]
        );
        // A lone disconnection (its connection was recorded earlier) is kept.
        assert_eq!(
            compact(vec![c("a", "1", false)].into_iter()),
            vec![c("a", "1", false)]
        );
        // A disconnection of another session does not keep an older connection.
        assert_eq!(
            compact(vec![c("a", "1", true), c("a", "2", false)].into_iter()),
            vec![c("a", "2", false)]
        );
    }
}
