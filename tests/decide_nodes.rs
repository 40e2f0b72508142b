//! Node rules: the pmm-server fixtures, creation (names, container ids, address+region, RDS
//! identifiers, labels) and restrict-vs-cascade removal.

#[path = "common/given.rs"]
mod given;

use given::*;
use pmmcp::commands::agents::AddAgent;
use pmmcp::commands::bootstrap::BootstrapServer;
use pmmcp::commands::nodes::{AddNode, RemoveNode};
use pmmcp::commands::{Command, Ctx, ErrorClass, decide};
use pmmcp::domain::{AgentStatus, AgentType, NodeId, NodeType, ServiceType, State};
use pmmcp::events::Event;

fn add(n: AddNode) -> Command {
    Command::AddNode(n)
}

fn remove(id: &NodeId, force: bool) -> Command {
    Command::RemoveNode(RemoveNode {
        node_id: id.clone(),
        force,
    })
}

#[test]
fn bootstrap_creates_pmm_server_node_pmm_agent_and_node_exporter() {
    Given::empty()
        .when(Command::BootstrapServer(BootstrapServer))
        .emits(|events| {
            assert_eq!(
                types(events),
                ["NodeAdded", "AgentAdded", "AgentAdded", "SettingsChanged"]
            );
            let node = the_node(events);
            assert_eq!(node.node_id.as_str(), "pmm-server");
            assert_eq!(node.node_name, "pmm-server");
            assert_eq!(node.node_type, NodeType::Generic);
            assert_eq!(node.address, "127.0.0.1");
            assert!(node.is_pmm_server_node);
            let pmm_agent = agent_of(events, AgentType::PmmAgent);
            assert_eq!(pmm_agent.agent_id.as_str(), "pmm-server");
            assert_eq!(pmm_agent.runs_on_node_id, Some(NodeId::from("pmm-server")));
            let exporter = agent_of(events, AgentType::NodeExporter);
            assert_eq!(exporter.pmm_agent_id, Some("pmm-server".into()));
            assert_eq!(exporter.node_id, Some(NodeId::from("pmm-server")));
            let Event::SettingsChanged { settings } = &events[3] else {
                unreachable!()
            };
            assert!(uuid::Uuid::parse_str(&settings.pmm_server_id).is_ok());
        });
}

#[test]
fn bootstrap_is_idempotent() {
    Given::bootstrapped()
        .when(Command::BootstrapServer(BootstrapServer))
        .emits_nothing();
}

#[test]
fn new_node_ids_are_uuid_v4_and_timestamps_come_from_the_context() {
    Given::bootstrapped().when(generic("db1")).emits(|events| {
        let node = the_node(events);
        let id = uuid::Uuid::parse_str(node.node_id.as_str()).expect("a uuid");
        assert_eq!(id.get_version_num(), 4);
        assert_eq!((node.created_at, node.updated_at), (now(), now()));
        assert!(!node.is_pmm_server_node);
    });
}

#[test]
fn decide_is_deterministic_for_the_same_context() {
    let state = State::default();
    let cmd = generic("db1");
    let ctx = Ctx::fixed(now(), 7);
    let first = decide(&state, &cmd, &ctx).expect("accepted");
    let second = decide(&state, &cmd, &ctx).expect("accepted");
    assert_eq!(first, second);
    let other = decide(&state, &cmd, &Ctx::fixed(now(), 8)).expect("accepted");
    assert_ne!(the_node(&first).node_id, the_node(&other).node_id);
}

#[test]
fn node_type_is_required() {
    Given::bootstrapped()
        .when(add(AddNode {
            node_type: None,
            ..node(NodeType::Generic, "db1", "10.0.0.1")
        }))
        .rejected(ErrorClass::InvalidArgument, "Unsupported Node type");
}

#[test]
fn node_name_is_required() {
    Given::bootstrapped()
        .when(add(node(NodeType::Generic, "", "10.0.0.1")))
        .rejected(ErrorClass::InvalidArgument, "node_name");
}

#[test]
fn node_address_is_required_by_inventory_add_node() {
    for t in NodeType::ALL {
        Given::bootstrapped()
            .when(add(AddNode {
                region: Some("us-east-1".into()),
                ..node(t, "n1", "")
            }))
            .rejected(ErrorClass::InvalidArgument, "address");
    }
}

#[test]
fn node_names_are_globally_unique() {
    let given = Given::bootstrapped().with(add(node(NodeType::Generic, "db1", "10.0.0.1")));
    given
        .when(add(node(NodeType::Remote, "db1", "10.0.0.2")))
        .rejected(
            ErrorClass::AlreadyExists,
            "Node with name \"db1\" already exists.",
        );
}

#[test]
fn pmm_server_node_name_is_taken() {
    Given::bootstrapped()
        .when(add(node(NodeType::Generic, "pmm-server", "10.0.0.1")))
        .rejected(ErrorClass::AlreadyExists, "\"pmm-server\"");
}

#[test]
fn machine_id_is_trimmed_and_not_unique() {
    let with_machine = |name: &str| {
        add(AddNode {
            machine_id: Some(" abc123\n".into()),
            ..node(NodeType::Generic, name, "10.0.0.1")
        })
    };
    Given::bootstrapped()
        .with(with_machine("a"))
        .when(with_machine("b"))
        .emits(|events| assert_eq!(the_node(events).machine_id.as_deref(), Some("abc123")));
}

#[test]
fn container_id_is_unique_when_set() {
    let container = |name: &str, id: &str| {
        add(AddNode {
            container_id: Some(id.into()),
            container_name: Some(name.into()),
            ..node(NodeType::Container, name, "10.0.0.1")
        })
    };
    let given = Given::bootstrapped().with(container("c1", "abc"));
    given.when(container("c2", "abc")).rejected(
        ErrorClass::AlreadyExists,
        "Node with container ID \"abc\" already exists.",
    );
    // An empty container id means "unknown" and is stored as NULL, so it never collides.
    Given::bootstrapped()
        .with(container("c1", ""))
        .when(container("c2", ""))
        .emits(|events| assert_eq!(the_node(events).container_id, None));
}

#[test]
fn address_region_pair_is_unique_only_when_region_is_set() {
    let at = |name: &str, region: Option<&str>| {
        add(AddNode {
            region: region.map(str::to_owned),
            ..node(NodeType::Remote, name, "db.example")
        })
    };
    // No region (or an empty one): the same address is fine.
    Given::bootstrapped()
        .with(at("a", None))
        .with(at("b", Some("")))
        .when(at("c", None))
        .emits(|events| assert_eq!(the_node(events).region, None));
    // Same address, same region: taken.
    Given::bootstrapped()
        .with(at("a", Some("eu-west-1")))
        .when(at("b", Some("eu-west-1")))
        .rejected(
            ErrorClass::AlreadyExists,
            "Node with instance \"db.example\" and region \"eu-west-1\" already exists.",
        );
    // Same address, another region: fine.
    Given::bootstrapped()
        .with(at("a", Some("eu-west-1")))
        .when(at("b", Some("eu-west-2")))
        .emits_types(&["NodeAdded"]);
}

#[test]
fn rds_instance_identifier_rule() {
    let rds = |address: &str| {
        add(AddNode {
            region: Some("us-east-1".into()),
            ..node(NodeType::RemoteRds, "rds1", address)
        })
    };
    Given::bootstrapped()
        .when(rds("mydb.abc.us-east-1.rds.amazonaws.com"))
        .rejected(
            ErrorClass::InvalidArgument,
            "DB instance identifier should not contain dot.",
        );
    Given::bootstrapped()
        .when(rds("mydb"))
        .emits(|events| assert_eq!(the_node(events).address, "mydb"));
    // Other node types may use dotted addresses.
    Given::bootstrapped()
        .when(add(node(NodeType::Remote, "r1", "db.example.com")))
        .emits_types(&["NodeAdded"]);
}

#[test]
fn rds_and_azure_nodes_require_a_region() {
    for t in [NodeType::RemoteRds, NodeType::RemoteAzureDatabase] {
        for region in [None, Some(String::new())] {
            Given::bootstrapped()
                .when(add(AddNode {
                    region: region.clone(),
                    ..node(t, "n1", "mydb")
                }))
                .rejected(ErrorClass::InvalidArgument, "region");
        }
    }
}

#[test]
fn instance_id_defaults_to_the_address() {
    Given::bootstrapped()
        .when(add(AddNode {
            region: Some("us-east-1".into()),
            ..node(NodeType::RemoteRds, "rds1", "mydb")
        }))
        .emits(|events| assert_eq!(the_node(events).instance_id, "mydb"));
    Given::bootstrapped()
        .when(add(AddNode {
            region: Some("us-east-1".into()),
            instance_id: "db-XYZ".into(),
            ..node(NodeType::RemoteRds, "rds1", "mydb")
        }))
        .emits(|events| assert_eq!(the_node(events).instance_id, "db-XYZ"));
}

#[test]
fn label_names_must_be_prometheus_valid_and_not_start_with_double_underscore() {
    for bad in ["__meta", "__", "1abc", "a-b", "a.b", "é", ""] {
        Given::bootstrapped()
            .when(add(AddNode {
                custom_labels: labels(&[(bad, "v")]),
                ..node(NodeType::Generic, "n1", "10.0.0.1")
            }))
            .rejected(
                ErrorClass::InvalidArgument,
                &format!("Invalid label name {bad:?}."),
            );
    }
    let good = labels(&[("_x", "1"), ("A_1", "2"), ("env", "prod")]);
    Given::bootstrapped()
        .when(add(AddNode {
            custom_labels: good.clone(),
            ..node(NodeType::Generic, "n1", "10.0.0.1")
        }))
        .emits(|events| assert_eq!(the_node(events).custom_labels, good));
}

#[test]
fn node_fields_are_stored_as_given() {
    Given::bootstrapped()
        .when(add(AddNode {
            distro: "debian".into(),
            node_model: "db.t3.medium".into(),
            az: "us-east-1a".into(),
            region: Some("us-east-1".into()),
            ..node(NodeType::Generic, "n1", "10.0.0.1")
        }))
        .emits(|events| {
            let n = the_node(events);
            assert_eq!(n.node_type, NodeType::Generic);
            assert_eq!(n.node_name, "n1");
            assert_eq!(n.address, "10.0.0.1");
            assert_eq!(n.distro, "debian");
            assert_eq!(n.node_model, "db.t3.medium");
            assert_eq!(n.az, "us-east-1a");
            assert_eq!(n.region.as_deref(), Some("us-east-1"));
        });
}

#[test]
fn removing_a_missing_node_is_not_found() {
    Given::bootstrapped()
        .when(remove(&NodeId::from("nope"), true))
        .rejected(ErrorClass::NotFound, "Node with ID \"nope\" not found.");
}

#[test]
fn pmm_server_node_cannot_be_removed_permission_denied() {
    for force in [false, true] {
        Given::bootstrapped()
            .when(remove(&NodeId::from("pmm-server"), force))
            .rejected(
                ErrorClass::PermissionDenied,
                "PMM Server node can't be removed.",
            );
    }
}

#[test]
fn removing_an_empty_node_emits_node_removed() {
    let given = Given::bootstrapped().with(generic("db1"));
    let id = given.node_id();
    given
        .when(remove(&id, false))
        .emits(|events| assert_eq!(trail(events), [format!("NodeRemoved:{id}")]));
}

#[test]
fn removing_a_node_with_agents_without_force_is_failed_precondition() {
    // A registered node has a node_exporter (node_id = the node) and a pmm-agent.
    let given = Given::bootstrapped().with(Command::RegisterNode(register("host1")));
    let id = given.node_id();
    given.when(remove(&id, false)).rejected(
        ErrorClass::FailedPrecondition,
        &format!("Node with ID {:?} has agents.", id.as_str()),
    );
}

#[test]
fn removing_a_node_with_a_pmm_agent_without_force_is_failed_precondition() {
    let given = Given::bootstrapped().with(generic("host1"));
    let id = given.node_id();
    let mut pmm_agent = AddAgent::new(AgentType::PmmAgent);
    pmm_agent.runs_on_node_id = Some(id.clone());
    given
        .with(Command::AddAgent(pmm_agent))
        .when(remove(&id, false))
        .rejected(
            ErrorClass::FailedPrecondition,
            &format!("Node with ID {:?} has pmm-agent.", id.as_str()),
        );
}

#[test]
fn removing_a_node_with_services_without_force_is_failed_precondition() {
    let given = Given::bootstrapped().with(generic("host1"));
    let id = given.node_id();
    given
        .with(Command::AddService(service(
            ServiceType::Mysql,
            "mysql1",
            &id,
        )))
        .when(remove(&id, false))
        .rejected(
            ErrorClass::FailedPrecondition,
            &format!("Node with ID {:?} has services.", id.as_str()),
        );
}

#[test]
fn force_removal_removes_agents_then_pmm_agents_then_services_then_node() {
    let mut given = Given::bootstrapped().with(Command::RegisterNode(register("host1")));
    let node = given.node_id();
    let pmm_agent = given.agent_id(AgentType::PmmAgent);
    let node_exporter = given.agent_id(AgentType::NodeExporter);
    given.run(Command::AddService(service(
        ServiceType::Mysql,
        "mysql1",
        &node,
    )));
    let svc = given.service_id();
    let mut exporter = AddAgent::new(AgentType::MysqldExporter);
    exporter.pmm_agent_id = Some(pmm_agent.clone());
    exporter.service_id = Some(svc.clone());
    exporter.username = Some("pmm".into());
    given.run(Command::AddAgent(exporter));
    let mysqld = given.agent_id(AgentType::MysqldExporter);
    given.when(remove(&node, true)).emits(|events| {
        assert_eq!(
            trail(events),
            [
                format!("AgentRemoved:{node_exporter}"),
                format!("AgentRemoved:{mysqld}"),
                format!("AgentRemoved:{pmm_agent}"),
                format!("ServiceRemoved:{svc}"),
                format!("NodeRemoved:{node}"),
            ]
        )
    });
}

#[test]
fn force_removal_removes_pull_external_exporters_running_on_the_node() {
    let mut given = Given::bootstrapped().with(generic("scraper"));
    let scraper = given.node_id();
    given.run(generic("target"));
    let target = given.node_id();
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext1",
        &target,
    )));
    let mut exporter = AddAgent::new(AgentType::ExternalExporter);
    exporter.runs_on_node_id = Some(scraper.clone());
    exporter.service_id = Some(given.service_id());
    exporter.listen_port = Some(9100);
    given.run(Command::AddAgent(exporter));
    let ext = given.agent_id(AgentType::ExternalExporter);
    given.when(remove(&scraper, true)).emits(|events| {
        assert_eq!(
            trail(events),
            [
                format!("AgentRemoved:{ext}"),
                format!("NodeRemoved:{scraper}")
            ]
        )
    });
}

#[test]
fn a_removed_nodes_name_container_id_and_address_region_can_be_reused() {
    let n = || {
        add(AddNode {
            container_id: Some("abc".into()),
            region: Some("eu-west-1".into()),
            ..node(NodeType::Container, "c1", "10.0.0.1")
        })
    };
    let given = Given::bootstrapped().with(n());
    let id = given.node_id();
    given
        .with(remove(&id, false))
        .when(n())
        .emits_types(&["NodeAdded"]);
}

#[test]
fn pmm_server_fixtures_start_with_unknown_exporter_status() {
    let given = Given::bootstrapped();
    let exporter = given.agent(&given.agent_id(AgentType::NodeExporter));
    assert_eq!(exporter.status, AgentStatus::Unknown);
    let pmm_agent = given.agent(&"pmm-server".into());
    assert_eq!(pmm_agent.status, AgentStatus::None);
    // and the inventory holds nothing else
    assert_eq!(given.state().nodes.len(), 1);
    assert_eq!(given.state().agents.len(), 2);
}
