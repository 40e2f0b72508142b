//! What pmm-agents' streams report: connections ordered by when their stream opened (a late
//! connection of an older stream, from another node, is not recorded), closes that apply only
//! to the stream recorded, and a disconnected pmm-agent's children left UNKNOWN.

#[path = "common/given.rs"]
mod given;

use chrono::{DateTime, Duration, Utc};
use given::*;
use pmmcp::commands::Command;
use pmmcp::commands::agent_reports::{
    AgentReport, Connection, ReportAgents, ReportItem, WebAuthHash,
};
use pmmcp::crypto::Cipher;
use pmmcp::domain::{AgentId, AgentStatus, AgentType, Sealed};
use pmmcp::events::Event;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(1_800_000_000 + secs)
}

fn stream(pmm_agent: &AgentId, session: &str, connected: bool, since: i64) -> ReportItem {
    ReportItem::Connection(Connection {
        pmm_agent_id: pmm_agent.clone(),
        session: session.to_owned(),
        connected,
        since: Some(at(since)),
        version: connected.then(|| "3.1.0".to_owned()),
    })
}

fn batch(items: Vec<ReportItem>) -> Command {
    Command::ReportAgents(ReportAgents { items })
}

/// A registered node's pmm-agent and node_exporter.
fn host() -> (Given, AgentId, AgentId) {
    let given = Given::bootstrapped().with(Command::RegisterNode(register("host1")));
    let pmm_agent = given.agent_id(AgentType::PmmAgent);
    let node_exporter = given.agent_id(AgentType::NodeExporter);
    (given, pmm_agent, node_exporter)
}

fn running(pmm_agent: &AgentId, agent: &AgentId) -> ReportItem {
    ReportItem::State(AgentReport {
        pmm_agent_id: pmm_agent.clone(),
        agent_id: agent.clone(),
        status: AgentStatus::Running,
        listen_port: Some(42000),
        process_exec_path: None,
        version: None,
    })
}

#[test]
fn a_late_connection_of_an_older_stream_is_not_recorded() {
    let (given, pmm, _) = host();
    // The agent moved from node A (stream "a", opened at 10) to node B (stream "b", at 20);
    // A's connection was delayed and arrives after B's.
    let given = given.with(batch(vec![stream(&pmm, "b", true, 20)]));
    given
        .when(batch(vec![
            stream(&pmm, "a", true, 10),
            stream(&pmm, "a", false, 10),
        ]))
        .emits_nothing();
}

#[test]
fn a_stream_newer_than_the_recorded_one_replaces_it() {
    let (given, pmm, _) = host();
    let mut given = given.with(batch(vec![stream(&pmm, "a", true, 10)]));
    given.run(batch(vec![stream(&pmm, "b", true, 20)]));
    let a = given.agent(&pmm);
    assert!(a.connected);
    assert_eq!(a.session.as_deref(), Some("b"));
    assert_eq!(a.session_since, Some(at(20)));
    // The older stream's close, arriving after, changes nothing.
    given
        .when(batch(vec![stream(&pmm, "a", false, 10)]))
        .emits_nothing();
}

#[test]
fn a_closed_streams_late_connection_is_not_recorded_after_a_newer_one_closed() {
    let (given, pmm, _) = host();
    // Stream "b" (newer) opened and closed; "a"'s connection arrives only now.
    let given = given.with(batch(vec![
        stream(&pmm, "b", true, 20),
        stream(&pmm, "b", false, 20),
    ]));
    assert!(!given.agent(&pmm).connected);
    given
        .when(batch(vec![stream(&pmm, "a", true, 10)]))
        .emits_nothing();
}

#[test]
fn a_live_stream_saying_again_that_it_is_connected_changes_nothing() {
    let (given, pmm, _) = host();
    let given = given.with(batch(vec![stream(&pmm, "a", true, 10)]));
    given
        .when(batch(vec![stream(&pmm, "a", true, 10)]))
        .emits_nothing();
}

#[test]
fn a_live_stream_records_itself_again_after_its_connection_was_lost() {
    let (given, pmm, _) = host();
    // The close of "a" was recorded by mistake (say a node replayed it); "a" is still live
    // and says so again.
    let given = given.with(batch(vec![
        stream(&pmm, "a", true, 10),
        stream(&pmm, "a", false, 10),
    ]));
    let after = given
        .when(batch(vec![stream(&pmm, "a", true, 10)]))
        .state_after();
    assert!(after.agents[&pmm].connected);
    assert_eq!(after.agents[&pmm].session.as_deref(), Some("a"));
}

#[test]
fn a_disconnected_pmm_agents_children_become_unknown_and_reports_after_count() {
    let (given, pmm, node_exporter) = host();
    let given = given.with(batch(vec![
        stream(&pmm, "a", true, 10),
        running(&pmm, &node_exporter),
    ]));
    assert_eq!(given.agent(&node_exporter).status, AgentStatus::Running);
    let after = given
        .when(batch(vec![stream(&pmm, "a", false, 10)]))
        .state_after();
    assert_eq!(after.agents[&node_exporter].status, AgentStatus::Unknown);
    assert!(!after.agents[&pmm].connected);
    // A report, then a close: UNKNOWN; a close, then a report: what was reported.
    let (given, pmm, node_exporter) = host();
    let given = given.with(batch(vec![stream(&pmm, "a", true, 10)]));
    let after = given
        .when(batch(vec![
            stream(&pmm, "a", false, 10),
            stream(&pmm, "b", true, 20),
            running(&pmm, &node_exporter),
        ]))
        .state_after();
    assert_eq!(after.agents[&node_exporter].status, AgentStatus::Running);
    assert_eq!(after.agents[&pmm].session.as_deref(), Some("b"));
}

#[test]
fn reports_about_unknown_agents_or_another_pmm_agents_agent_are_skipped() {
    let (given, pmm, node_exporter) = host();
    let given = given.with(Command::RegisterNode(register("host2")));
    let other = given
        .state()
        .agents
        .values()
        .find(|a| a.agent_type == AgentType::PmmAgent && a.agent_id != pmm)
        .map(|a| a.agent_id.clone())
        .expect("host2's pmm-agent");
    given
        .when(batch(vec![
            running(&other, &node_exporter),
            running(&pmm, &AgentId::from("/agent_id/gone".to_owned())),
            stream(&AgentId::from("/agent_id/gone".to_owned()), "x", true, 5),
        ]))
        .emits_nothing();
}

fn web_auth(agent: &AgentId, for_password: Option<Sealed>, hash: &Sealed) -> ReportItem {
    ReportItem::WebAuth(WebAuthHash {
        agent_id: agent.clone(),
        for_password,
        hash: hash.clone(),
        replaces: None,
    })
}

#[test]
fn a_web_config_hash_is_recorded_once_and_only_for_the_current_password() {
    let cipher = Cipher::from_key(&[7; 32]);
    let (first, second) = (cipher.seal("$2a$10$first"), cipher.seal("$2a$10$second"));
    // A hash of a password the agent no longer has (it had none: the id) is stale.
    let (given, _, exporter) = host();
    given
        .when(batch(vec![web_auth(
            &exporter,
            Some(cipher.seal("old")),
            &first,
        )]))
        .emits_nothing();
    let (given, _, exporter) = host();
    let mut given = given.with(batch(vec![web_auth(&exporter, None, &first)]));
    assert_eq!(given.agent(&exporter).web_auth_hash(), Some(&first));
    // Another node's hash of the same password does not replace it, unless it replaces that
    // one (which did not open with that node's key).
    assert!(
        given
            .run(batch(vec![web_auth(&exporter, None, &second)]))
            .is_empty()
    );
    let replacing = |replaces: &Sealed| {
        let mut item = web_auth(&exporter, None, &second);
        if let ReportItem::WebAuth(w) = &mut item {
            w.replaces = Some(replaces.clone());
        }
        batch(vec![item])
    };
    assert!(given.run(replacing(&second)).is_empty());
    assert_eq!(given.run(replacing(&first)).len(), 1);
    assert_eq!(given.agent(&exporter).web_auth_hash(), Some(&second));
    // Once the password changes, the recorded hash is not the agent's; a hash of the new
    // password is recorded.
    let mut changed = given.agent(&exporter);
    let password = cipher.seal("new");
    changed.agent_password = Some(password.clone());
    let given = given.event(Event::AgentChanged { agent: changed });
    assert_eq!(given.agent(&exporter).web_auth_hash(), None);
    let after = given
        .when(batch(vec![web_auth(&exporter, Some(password), &first)]))
        .state_after();
    assert_eq!(after.agents[&exporter].web_auth_hash(), Some(&first));
}
