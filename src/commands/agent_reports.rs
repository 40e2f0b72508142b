//! What pmm-agents report over their streams, as commands: connections and disconnections,
//! and the state of the agents they run (PMM's StateChangedRequest). The stream servers batch
//! and deduplicate reports; one command carries a batch from many pmm-agents.
//!
//! Reports are facts from the field, not requests: one that no longer fits the state (an agent
//! removed meanwhile, a report about another pmm-agent's agent) is skipped, never a rejection
//! of the batch. An agent is changed (one `AgentChanged`) only when something differs.

use super::{Decision, Rejection};
use crate::domain::agent::AgentStatus;
use crate::domain::agent::WebAuth;
use crate::domain::{AgentId, AgentType, Sealed};
use crate::events::Event;

/// A pmm-agent's stream opened (`connected`) or closed on `session`.
///
/// Streams of one pmm-agent are ordered by `since`, when the stream opened (its node's clock,
/// and later than any stream that node knew of): a late connection from a stream older than
/// the one recorded changes nothing, and neither does a close of a stream not recorded. A live
/// stream that finds itself not recorded says so again ([`crate::agents`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Connection {
    pub pmm_agent_id: AgentId,
    pub session: String,
    pub connected: bool,
    /// When the stream opened (absent: ordered after every earlier stream).
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// The version the pmm-agent announced (on connect).
    #[serde(default)]
    pub version: Option<String>,
}

/// One StateChangedRequest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentReport {
    /// The pmm-agent that sent it.
    pub pmm_agent_id: AgentId,
    pub agent_id: AgentId,
    pub status: AgentStatus,
    /// 0 (none) is `None`.
    pub listen_port: Option<u16>,
    pub process_exec_path: Option<String>,
    pub version: Option<String>,
}

/// An exporter's web-config hash, computed by the node that serves its pmm-agent from the
/// agent password it read in the state (sealed as stored, `None` for the agent id).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebAuthHash {
    pub agent_id: AgentId,
    pub for_password: Option<Sealed>,
    pub hash: Sealed,
    /// The recorded hash this one replaces: it did not open with that node's key.
    #[serde(default)]
    pub replaces: Option<Sealed>,
}

/// One fact of a batch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReportItem {
    Connection(Connection),
    State(AgentReport),
    WebAuth(WebAuthHash),
}

/// A batch of reports, applied in the order they arrived (a report, then a disconnect, leaves
/// the agent UNKNOWN; a disconnect, then a report, leaves what was reported).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReportAgents {
    pub items: Vec<ReportItem>,
}

impl ReportAgents {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        for item in &self.items {
            match item {
                ReportItem::Connection(c) => connection(d, c),
                ReportItem::State(r) => report(d, r),
                ReportItem::WebAuth(w) => web_auth(d, w),
            }
        }
        Ok(())
    }
}

fn changed(d: &mut Decision<'_>, id: &AgentId, f: impl FnOnce(&mut crate::domain::Agent)) {
    let Some(old) = d.state().agents.get(id).cloned() else {
        return;
    };
    let mut new = (*old).clone();
    f(&mut new);
    if new != *old {
        new.updated_at = d.now();
        d.emit(Event::AgentChanged { agent: new });
    }
}

fn connection(d: &mut Decision<'_>, c: &Connection) {
    let Some(agent) = d.state().agents.get(&c.pmm_agent_id).cloned() else {
        return;
    };
    if agent.agent_type != AgentType::PmmAgent {
        return;
    }
    if c.connected {
        // A stream older than the one recorded (its connection delayed on another node).
        if let (Some(since), Some(newest)) = (c.since, agent.session_since)
            && since < newest
        {
            return;
        }
        changed(d, &c.pmm_agent_id, |a| {
            a.connected = true;
            a.session = Some(c.session.clone());
            if c.since.is_some() {
                a.session_since = c.since;
            }
            if c.version.is_some() {
                a.version.clone_from(&c.version);
            }
        });
        return;
    }
    // A close from an older stream (a takeover, a move to another node) changes nothing.
    if agent.session.as_deref() != Some(c.session.as_str()) {
        return;
    }
    changed(d, &c.pmm_agent_id, |a| {
        a.connected = false;
        a.session = None;
    });
    // What a disconnected pmm-agent runs is not known any more.
    for child in d.state().children_of(&c.pmm_agent_id) {
        changed(d, &child, |a| a.status = AgentStatus::Unknown);
    }
}

fn report(d: &mut Decision<'_>, r: &AgentReport) {
    // A grouped RDS process (`<pmm-agent id>:rds/<AWS access key>`) speaks for its members.
    let group = format!("{}:rds/", r.pmm_agent_id);
    if let Some(key) = r.agent_id.as_str().strip_prefix(&group) {
        let members: Vec<AgentId> = d
            .state()
            .children_of(&r.pmm_agent_id)
            .into_iter()
            .filter(|id| {
                d.state().agents.get(id).is_some_and(|a| {
                    a.agent_type == AgentType::RdsExporter
                        && a.aws.aws_access_key.as_deref().unwrap_or("") == key
                })
            })
            .collect();
        for id in members {
            report(
                d,
                &AgentReport {
                    agent_id: id,
                    ..r.clone()
                },
            );
        }
        return;
    }
    let Some(agent) = d.state().agents.get(&r.agent_id) else {
        return;
    };
    if agent.pmm_agent_id.as_ref() != Some(&r.pmm_agent_id) {
        return;
    }
    changed(d, &r.agent_id, |a| {
        a.status = r.status;
        a.listen_port = r.listen_port;
        if r.process_exec_path.is_some() {
            a.process_exec_path.clone_from(&r.process_exec_path);
        }
        if r.version.is_some() {
            a.version.clone_from(&r.version);
        }
    });
}

/// Recorded while the agent password it was computed from is still the agent's, and only if
/// no hash for it is recorded (two nodes may compute one each; the first stays) or the one
/// recorded is the one it replaces.
fn web_auth(d: &mut Decision<'_>, w: &WebAuthHash) {
    let Some(agent) = d.state().agents.get(&w.agent_id) else {
        return;
    };
    if agent.agent_password != w.for_password || agent.web_auth_hash() != w.replaces.as_ref() {
        return;
    }
    changed(d, &w.agent_id, |a| {
        a.web_auth = Some(WebAuth {
            for_password: w.for_password.clone(),
            hash: w.hash.clone(),
        });
    });
}
