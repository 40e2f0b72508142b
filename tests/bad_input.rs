//! Bad input through the one command entry point, on real PostgreSQL: each case is a clear
//! rejection of the right class, and the log, its head and the query tables are unchanged.

mod support;

use pmmcp::commands::agents::{AddAgent, ChangeAgent, RemoveAgent, ResolutionsChange};
use pmmcp::commands::nodes::{AddNode, RemoveNode};
use pmmcp::commands::services::{AddService, ChangeService, RemoveService};
use pmmcp::commands::settings::ChangeSettings;
use pmmcp::commands::{Command, CommandMeta, ErrorClass};
use pmmcp::domain::{AgentId, AgentType, NodeId, NodeType, ServiceId, ServiceType};
use pmmcp::store::{self, LogHead};
use std::time::Duration;
use support::*;

fn node(name: &str) -> AddNode {
    AddNode {
        node_type: Some(NodeType::Generic),
        node_name: name.to_owned(),
        address: "10.0.0.1".to_owned(),
        ..AddNode::default()
    }
}

fn service(name: &str, node_id: &NodeId) -> AddService {
    AddService {
        service_type: Some(ServiceType::Postgresql),
        service_name: name.to_owned(),
        node_id: node_id.clone(),
        address: Some("10.0.0.1".to_owned()),
        port: Some(5432),
        ..AddService::default()
    }
}

fn settings() -> ChangeSettings {
    ChangeSettings::default()
}

fn labels(pairs: &[(&str, &str)]) -> pmmcp::domain::labels::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Everything a rejected command must leave as it was.
#[derive(Debug, PartialEq)]
struct Observed {
    events: i64,
    head: (i64, Vec<u8>),
    tables: Vec<serde_json::Value>,
}

async fn observe(pool: &sqlx::PgPool) -> Observed {
    let head = LogHead::load(pool).await.expect("head");
    Observed {
        events: count_events(pool).await,
        head: (head.position, head.hash.to_vec()),
        tables: store::query_tables::snapshot(pool).await.expect("snapshot"),
    }
}

#[tokio::test]
async fn every_bad_input_is_a_clear_rejection_that_changes_nothing() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    d.dispatch(Command::AddNode(node("db-host")), CommandMeta::new("test"))
        .await
        .expect("node");
    let node_id = d
        .state()
        .node_by_name("db-host")
        .expect("node")
        .node_id
        .clone();
    d.dispatch(
        Command::AddService(service("pg-1", &node_id)),
        CommandMeta::new("test"),
    )
    .await
    .expect("service");
    let service_id = d
        .state()
        .service_by_name("pg-1")
        .expect("service")
        .service_id
        .clone();
    let external = AddService {
        service_type: Some(ServiceType::External),
        address: None,
        port: None,
        ..service("ext-1", &node_id)
    };
    d.dispatch(Command::AddService(external), CommandMeta::new("test"))
        .await
        .expect("external service");
    let external_id = d
        .state()
        .service_by_name("ext-1")
        .expect("service")
        .service_id
        .clone();
    let pmm_agent = {
        let mut a = AddAgent::new(AgentType::PmmAgent);
        a.runs_on_node_id = Some(node_id.clone());
        d.dispatch(Command::AddAgent(a), CommandMeta::new("test"))
            .await
            .expect("pmm-agent");
        d.state().pmm_agents_on_node(&node_id)[0].clone()
    };

    let long = "n".repeat(256);
    let mib = "v".repeat(1 << 20);
    let missing_node = NodeId::from("8c0f3b52-7d77-4f9e-a1a1-0d1c7a1b2c3d");
    let missing_service = ServiceId::from("8c0f3b52-7d77-4f9e-a1a1-0d1c7a1b2c3e");
    let missing_agent = AgentId::from("8c0f3b52-7d77-4f9e-a1a1-0d1c7a1b2c3f");

    let mut cases: Vec<(&str, Command, ErrorClass, &str)> = vec![
        (
            "empty node name",
            Command::AddNode(node("")),
            ErrorClass::InvalidArgument,
            "node_name",
        ),
        (
            "oversized node name",
            Command::AddNode(node(&long)),
            ErrorClass::InvalidArgument,
            "node_name",
        ),
        (
            "NUL in a node name",
            Command::AddNode(node("a\0b")),
            ErrorClass::InvalidArgument,
            "node_name",
        ),
        (
            "unknown node type",
            Command::AddNode(AddNode {
                node_type: None,
                ..node("x")
            }),
            ErrorClass::InvalidArgument,
            "Node type",
        ),
        (
            "empty service name",
            Command::AddService(service("", &node_id)),
            ErrorClass::InvalidArgument,
            "service_name",
        ),
        (
            "oversized service name",
            Command::AddService(service(&long, &node_id)),
            ErrorClass::InvalidArgument,
            "service_name",
        ),
        (
            "unknown service type",
            Command::AddService(AddService {
                service_type: None,
                ..service("x", &node_id)
            }),
            ErrorClass::InvalidArgument,
            "service type",
        ),
        (
            "port above 65535",
            Command::AddService(AddService {
                port: Some(70_000),
                ..service("x", &node_id)
            }),
            ErrorClass::InvalidArgument,
            "port",
        ),
        (
            "agent type that does not fit the service",
            Command::AddAgent({
                let mut a = AddAgent::new(AgentType::MysqldExporter);
                a.pmm_agent_id = Some(pmm_agent.clone());
                a.service_id = Some(service_id.clone());
                a
            }),
            ErrorClass::FailedPrecondition,
            "invalid combination of service type postgresql and agent type mysqld_exporter",
        ),
        (
            "external exporter port out of range",
            Command::AddAgent({
                let mut a = AddAgent::new(AgentType::ExternalExporter);
                a.runs_on_node_id = Some(node_id.clone());
                a.service_id = Some(external_id.clone());
                a.listen_port = Some(0);
                a
            }),
            ErrorClass::InvalidArgument,
            "",
        ),
        (
            "resolution not a whole second",
            Command::ChangeSettings(ChangeSettings {
                metrics_resolutions_hr: Some(Duration::from_millis(1500)),
                ..settings()
            }),
            ErrorClass::InvalidArgument,
            "",
        ),
        (
            "resolution below one second",
            Command::ChangeSettings(ChangeSettings {
                metrics_resolutions_mr: Some(Duration::from_millis(500)),
                ..settings()
            }),
            ErrorClass::InvalidArgument,
            "",
        ),
        (
            "retention not whole days",
            Command::ChangeSettings(ChangeSettings {
                data_retention: Some(Duration::from_secs(36 * 3600)),
                ..settings()
            }),
            ErrorClass::InvalidArgument,
            "",
        ),
        (
            "label name starting with __",
            Command::AddNode(AddNode {
                custom_labels: labels(&[("__x", "1")]),
                ..node("x")
            }),
            ErrorClass::InvalidArgument,
            "label",
        ),
        (
            "label name starting with a digit",
            Command::AddNode(AddNode {
                custom_labels: labels(&[("1abc", "1")]),
                ..node("x")
            }),
            ErrorClass::InvalidArgument,
            "label",
        ),
        (
            "label name with a dash",
            Command::ChangeService(ChangeService {
                service_id: service_id.clone(),
                environment: None,
                cluster: None,
                replication_set: None,
                external_group: None,
                custom_labels: Some(labels(&[("a-b", "1")])),
            }),
            ErrorClass::InvalidArgument,
            "label",
        ),
        (
            "a 1 MiB label value",
            Command::AddNode(AddNode {
                custom_labels: labels(&[("big", &mib)]),
                ..node("x")
            }),
            ErrorClass::InvalidArgument,
            "custom_labels.big",
        ),
        (
            "service on a node that does not exist",
            Command::AddService(service("x", &missing_node)),
            ErrorClass::NotFound,
            "",
        ),
        (
            "removing a node that does not exist",
            Command::RemoveNode(RemoveNode {
                node_id: missing_node.clone(),
                force: true,
            }),
            ErrorClass::NotFound,
            "",
        ),
        (
            "removing a service that does not exist",
            Command::RemoveService(RemoveService {
                service_id: missing_service.clone(),
                force: false,
            }),
            ErrorClass::NotFound,
            "",
        ),
        (
            "removing an agent that does not exist",
            Command::RemoveAgent(RemoveAgent {
                agent_id: missing_agent.clone(),
                force: false,
            }),
            ErrorClass::NotFound,
            "",
        ),
        (
            "exporter under a pmm-agent that does not exist",
            Command::AddAgent({
                let mut a = AddAgent::new(AgentType::PostgresExporter);
                a.pmm_agent_id = Some(missing_agent.clone());
                a.service_id = Some(service_id.clone());
                a
            }),
            ErrorClass::NotFound,
            "",
        ),
        (
            "a duplicate node name",
            Command::AddNode(node("db-host")),
            ErrorClass::AlreadyExists,
            "db-host",
        ),
    ];
    // The agent-resolution case needs an exporter on the service; add it now that the other
    // cases are built from the same state.
    let mut exporter = AddAgent::new(AgentType::PostgresExporter);
    exporter.pmm_agent_id = Some(pmm_agent.clone());
    exporter.service_id = Some(service_id.clone());
    exporter.username = Some("pmm".to_owned());
    d.dispatch(Command::AddAgent(exporter), CommandMeta::new("test"))
        .await
        .expect("exporter");
    let exporter_id = d.state().agents_of_service(&service_id)[0].clone();
    let mut change = ChangeAgent::new(exporter_id, AgentType::PostgresExporter);
    change.metrics_resolutions = Some(ResolutionsChange {
        hr: Some(Duration::from_millis(2500)),
        ..Default::default()
    });
    cases.push((
        "exporter resolution not a whole second",
        Command::ChangeAgent(change),
        ErrorClass::InvalidArgument,
        "",
    ));

    let before = observe(&pool).await;
    let mut wrong = Vec::new();
    for (what, cmd, class, fragment) in cases {
        let Err(err) = d.dispatch(cmd, CommandMeta::new("test")).await else {
            wrong.push(format!("{what}: accepted"));
            continue;
        };
        let message = err.to_string();
        if err.class() != Some(class) || !message.contains(fragment) || message.len() > 600 {
            wrong.push(format!(
                "{what}: got {:?} {message:?}, want {class:?} mentioning {fragment:?}",
                err.class()
            ));
        }
        assert_eq!(observe(&pool).await, before, "{what}: nothing changed");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(store::log::verify(&pool).await.expect("verify").is_ok());
}

#[test]
fn unknown_type_names_do_not_decode() {
    for bad in ["\"bogus\"", "\"\"", "\"MYSQL\"", "42"] {
        assert!(
            serde_json::from_str::<AgentType>(bad).is_err(),
            "agent type {bad}"
        );
        assert!(
            serde_json::from_str::<ServiceType>(bad).is_err(),
            "service type {bad}"
        );
        assert!(
            serde_json::from_str::<NodeType>(bad).is_err(),
            "node type {bad}"
        );
    }
}
