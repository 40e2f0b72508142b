//! The batcher: reports from every stream of this node become few [`ReportAgents`] commands.
//! It takes what arrived, waits [`WINDOW`] for more, keeps only the last state report per agent
//! (connections all, in order), and sends one command (to the leader, from any node). A failed
//! send is retried with backoff; every report's sender learns whether it was recorded, and may
//! send it again. Connections and disconnections have no sender to retry them: those of a batch
//! that could not be recorded (no leader for half a minute, say) are carried into the next
//! batch, in order, until recorded; a live stream whose connection is still not recorded
//! after two pings sends it again, and the copies in one batch are kept once.

use crate::commands::agent_reports::{
    AgentReport, Connection, ReportAgents, ReportItem, WebAuthHash,
};
use crate::commands::dispatcher::Dispatcher;
use crate::commands::{Command, CommandMeta};
use crate::domain::{AgentId, Sealed};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the batcher waits for more reports after the first.
pub const WINDOW: Duration = Duration::from_millis(20);
/// Reports in one command at most.
const MAX_BATCH: usize = 5_000;

enum Item {
    Connection(Connection),
    Report(AgentReport, oneshot::Sender<bool>),
    WebAuth(WebAuthHash),
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

    /// Queues a web-config hash. Not retried here: a stream that still finds no hash asks
    /// the hasher again at its next evaluation, which sends the one it remembers.
    pub fn web_auth(&self, w: WebAuthHash) {
        let _ = self.tx.send(Item::WebAuth(w));
    }

    /// Queues a report; the receiver says whether it was recorded.
    pub fn report(&self, r: AgentReport) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Item::Report(r, tx));
        rx
    }
}

/// Connection changes carried over at most (the oldest go first): one batch's worth.
const MAX_CARRIED: usize = MAX_BATCH;
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
        // Web-config hashes go in a command of their own, once each: a leader that does not
        // know them yet (a rolling upgrade) refuses only them.
        let mut hashes: HashMap<(AgentId, Option<Sealed>), WebAuthHash> = HashMap::new();
        for item in items {
            match item {
                Item::Connection(c) => ordered.push(ReportItem::Connection(c)),
                Item::Report(r, done) => {
                    waiters.push(done);
                    ordered.push(ReportItem::State(r));
                }
                Item::WebAuth(w) => {
                    hashes.insert((w.agent_id.clone(), w.for_password.clone()), w);
                }
            }
        }
        if !hashes.is_empty() {
            let mut hashes: Vec<WebAuthHash> = hashes.into_values().collect();
            hashes.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
            let items = hashes.into_iter().map(ReportItem::WebAuth).collect();
            send(&dispatcher, &Command::ReportAgents(ReportAgents { items })).await;
        }
        if ordered.is_empty() {
            continue;
        }
        let mut seen: HashSet<(AgentId, AgentId)> = HashSet::new();
        let mut keep = vec![true; ordered.len()];
        for (i, item) in ordered.iter().enumerate().rev() {
            if let ReportItem::State(r) = item {
                keep[i] = seen.insert((r.pmm_agent_id.clone(), r.agent_id.clone()));
            }
        }
        // A connection said again (a live stream not yet recorded) is kept once, at its
        // first place: a stream says it only before its own close.
        let mut said: HashSet<(&AgentId, &str)> = HashSet::new();
        for (i, item) in ordered.iter().enumerate() {
            if let ReportItem::Connection(c) = item
                && c.connected
            {
                keep[i] = said.insert((&c.pmm_agent_id, c.session.as_str()));
            }
        }
        let mut k = keep.into_iter();
        ordered.retain(|_| k.next().unwrap_or(true));
        let batch = ReportAgents { items: ordered };
        let outcome = send(&dispatcher, &Command::ReportAgents(batch.clone())).await;
        if outcome == Sent::Unavailable {
            // All of them, in order: a disconnection applies only to the session it ends,
            // so no shorter list is sure to end in the same state. Bounded: the newest stay.
            carried = batch
                .items
                .into_iter()
                .filter_map(|i| match i {
                    ReportItem::Connection(c) => Some(c),
                    ReportItem::State(_) | ReportItem::WebAuth(_) => None,
                })
                .collect();
            if carried.len() > MAX_CARRIED {
                let dropped = carried.len() - MAX_CARRIED;
                tracing::warn!(
                    dropped,
                    "oldest unrecorded pmm-agent connection changes dropped"
                );
                carried.drain(..dropped);
            }
        }
        for w in waiters {
            let _ = w.send(outcome == Sent::Recorded);
        }
    }
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
