//! Inventory service rules: unique names, the address/port/socket rules, external_group,
//! postgres defaults, ChangeService's optional fields, restrict-vs-cascade removal and the
//! RDS/Azure node clean-up.

#[path = "common/given.rs"]
mod given;

use given::*;
use pmmcp::commands::add_service::{AddRdsService, RdsEngine};
use pmmcp::commands::agents::AddAgent;
use pmmcp::commands::nodes::AddNode;
use pmmcp::commands::services::{AddService, ChangeService, RemoveService};
use pmmcp::commands::{Command, ErrorClass};
use pmmcp::domain::{AgentType, NodeId, NodeType, ServiceId, ServiceType};

const DB_TYPES: [ServiceType; 5] = [
    ServiceType::Mysql,
    ServiceType::Mongodb,
    ServiceType::Postgresql,
    ServiceType::Proxysql,
    ServiceType::Valkey,
];

/// A bootstrapped inventory with one generic node, `host1`.
fn with_host() -> (Given, NodeId) {
    let given = Given::bootstrapped().with(generic("host1"));
    let id = given.node_id();
    (given, id)
}

fn add(s: AddService) -> Command {
    Command::AddService(s)
}

fn conn(
    t: ServiceType,
    node: &NodeId,
    address: Option<&str>,
    port: Option<u32>,
    socket: Option<&str>,
) -> Command {
    add(AddService {
        address: address.map(str::to_owned),
        port,
        socket: socket.map(str::to_owned),
        ..service(t, "svc", node)
    })
}

fn change(id: &ServiceId) -> ChangeService {
    ChangeService {
        service_id: id.clone(),
        ..ChangeService::default()
    }
}

fn remove(id: &ServiceId, force: bool) -> Command {
    Command::RemoveService(RemoveService {
        service_id: id.clone(),
        force,
    })
}

fn mysqld_exporter(service_id: &ServiceId) -> Command {
    let mut a = AddAgent::new(AgentType::MysqldExporter);
    a.pmm_agent_id = Some("pmm-server".into());
    a.service_id = Some(service_id.clone());
    a.username = Some("pmm".into());
    Command::AddAgent(a)
}

#[test]
fn add_service_emits_service_added_with_its_fields() {
    let (given, node) = with_host();
    given
        .when(add(AddService {
            environment: "prod".into(),
            cluster: "c1".into(),
            replication_set: "rs1".into(),
            custom_labels: labels(&[("team", "db")]),
            ..service(ServiceType::Mysql, "mysql1", &node)
        }))
        .emits(|events| {
            let s = the_service(events);
            assert!(uuid::Uuid::parse_str(s.service_id.as_str()).is_ok());
            assert_eq!(s.service_type, ServiceType::Mysql);
            assert_eq!(s.service_name, "mysql1");
            assert_eq!(s.node_id, node);
            assert_eq!(s.address.as_deref(), Some("10.0.0.1"));
            assert_eq!(s.port, Some(5432));
            assert_eq!(s.socket, None);
            assert_eq!(
                (
                    s.environment.as_str(),
                    s.cluster.as_str(),
                    s.replication_set.as_str()
                ),
                ("prod", "c1", "rs1")
            );
            assert_eq!(s.custom_labels, labels(&[("team", "db")]));
            assert_eq!(s.external_group, "");
            assert_eq!(s.database_name, "");
            assert_eq!((s.created_at, s.updated_at), (now(), now()));
        });
}

#[test]
fn service_names_are_globally_unique() {
    let (given, host1) = with_host();
    let given = given
        .with(add(service(ServiceType::Mysql, "db", &host1)))
        .with(generic("host2"));
    let host2 = given.node_id();
    given
        .when(add(service(ServiceType::Postgresql, "db", &host2)))
        .rejected(
            ErrorClass::AlreadyExists,
            "Service with name \"db\" already exists.",
        );
}

#[test]
fn service_node_must_exist() {
    Given::bootstrapped()
        .when(add(service(ServiceType::Mysql, "db", &"missing".into())))
        .rejected(ErrorClass::NotFound, "Node with ID \"missing\" not found.");
}

#[test]
fn service_type_name_and_node_are_required() {
    let (given, node) = with_host();
    given
        .when(add(AddService {
            service_type: None,
            ..service(ServiceType::Mysql, "db", &node)
        }))
        .rejected(ErrorClass::InvalidArgument, "Unknown service type");
    let (given, node) = with_host();
    given
        .when(add(service(ServiceType::Mysql, "", &node)))
        .rejected(ErrorClass::InvalidArgument, "service_name");
    Given::bootstrapped()
        .when(add(service(ServiceType::Mysql, "db", &"".into())))
        .rejected(ErrorClass::InvalidArgument, "node_id");
}

#[test]
fn db_services_need_exactly_one_of_address_port_or_socket() {
    for t in DB_TYPES {
        let (given, node) = with_host();
        given.when(conn(t, &node, None, None, None)).rejected(
            ErrorClass::InvalidArgument,
            "Neither socket nor address passed.",
        );
        let (given, node) = with_host();
        given
            .when(conn(t, &node, Some("10.0.0.1"), Some(3306), Some("/tmp/s")))
            .rejected(
                ErrorClass::InvalidArgument,
                "Socket and address cannot be specified together.",
            );
        let (given, node) = with_host();
        given
            .when(conn(t, &node, Some("10.0.0.1"), Some(3306), None))
            .emits(|e| {
                let s = the_service(e);
                assert_eq!(
                    (s.address.as_deref(), s.port, s.socket),
                    (Some("10.0.0.1"), Some(3306), None)
                );
            });
        let (given, node) = with_host();
        given
            .when(conn(t, &node, None, None, Some("/var/run/db.sock")))
            .emits(|e| {
                let s = the_service(e);
                assert_eq!(
                    (s.address, s.port, s.socket.as_deref()),
                    (None, None, Some("/var/run/db.sock"))
                );
            });
    }
}

#[test]
fn address_requires_a_port() {
    let (given, node) = with_host();
    given
        .when(conn(
            ServiceType::Mysql,
            &node,
            Some("10.0.0.1"),
            None,
            None,
        ))
        .rejected(
            ErrorClass::InvalidArgument,
            "Port are expected to be passed with address.",
        );
}

#[test]
fn socket_and_port_cannot_be_specified_together() {
    let (given, node) = with_host();
    given
        .when(conn(
            ServiceType::Mysql,
            &node,
            None,
            Some(3306),
            Some("/tmp/s"),
        ))
        .rejected(
            ErrorClass::InvalidArgument,
            "Socket and port cannot be specified together.",
        );
}

#[test]
fn empty_strings_and_zero_port_count_as_absent() {
    let (given, node) = with_host();
    given
        .when(conn(
            ServiceType::Mysql,
            &node,
            Some(""),
            Some(0),
            Some("/tmp/s"),
        ))
        .emits(|e| {
            let s = the_service(e);
            assert_eq!(
                (s.address, s.port, s.socket.as_deref()),
                (None, None, Some("/tmp/s"))
            );
        });
    let (given, node) = with_host();
    given
        .when(conn(ServiceType::Mysql, &node, Some(""), Some(0), Some("")))
        .rejected(
            ErrorClass::InvalidArgument,
            "Neither socket nor address passed.",
        );
}

#[test]
fn port_must_be_in_1_to_65535() {
    for bad in [65_536, 100_000, u32::MAX] {
        let (given, node) = with_host();
        given
            .when(conn(
                ServiceType::Postgresql,
                &node,
                Some("db"),
                Some(bad),
                None,
            ))
            .rejected(ErrorClass::InvalidArgument, "port");
    }
    for good in [1, 65_535] {
        let (given, node) = with_host();
        given
            .when(conn(
                ServiceType::Postgresql,
                &node,
                Some("db"),
                Some(good),
                None,
            ))
            .emits(|e| assert_eq!(the_service(e).port, Some(good as u16)));
    }
}

#[test]
fn haproxy_and_external_services_take_no_address_port_or_socket() {
    for t in [ServiceType::Haproxy, ServiceType::External] {
        for (address, port, socket) in [
            (Some("10.0.0.1"), Some(80), None),
            (None, None, Some("/tmp/s")),
            (None, Some(80), None),
        ] {
            let (given, node) = with_host();
            given
                .when(conn(t, &node, address, port, socket))
                .rejected(ErrorClass::InvalidArgument, "can't be set for");
        }
        let (given, node) = with_host();
        given
            .when(conn(t, &node, None, None, None))
            .emits_types(&["ServiceAdded"]);
    }
}

#[test]
fn external_group_required_iff_external_service() {
    let (given, node) = with_host();
    given
        .when(add(service(ServiceType::External, "ext", &node)))
        .emits(|e| assert_eq!(the_service(e).external_group, "external"));
    let (given, node) = with_host();
    given
        .when(add(AddService {
            external_group: "redis".into(),
            ..service(ServiceType::External, "ext", &node)
        }))
        .emits(|e| assert_eq!(the_service(e).external_group, "redis"));
    for t in [
        ServiceType::Haproxy,
        ServiceType::Mysql,
        ServiceType::Valkey,
    ] {
        let (given, node) = with_host();
        given
            .when(add(AddService {
                external_group: "redis".into(),
                ..service(t, "svc", &node)
            }))
            .rejected(ErrorClass::InvalidArgument, "external_group");
    }
}

#[test]
fn postgresql_database_defaults_to_postgres() {
    let (given, node) = with_host();
    given
        .when(add(service(ServiceType::Postgresql, "pg", &node)))
        .emits(|e| assert_eq!(the_service(e).database_name, "postgres"));
    let (given, node) = with_host();
    given
        .when(add(AddService {
            database_name: "app".into(),
            ..service(ServiceType::Postgresql, "pg", &node)
        }))
        .emits(|e| assert_eq!(the_service(e).database_name, "app"));
    // Other types (valkey aside) store no database name.
    let (given, node) = with_host();
    given
        .when(add(AddService {
            database_name: "app".into(),
            ..service(ServiceType::Mysql, "my", &node)
        }))
        .emits(|e| assert_eq!(the_service(e).database_name, ""));
}

#[test]
fn service_label_names_are_validated() {
    let (given, node) = with_host();
    given
        .when(add(AddService {
            custom_labels: labels(&[("__name__", "x")]),
            ..service(ServiceType::Mysql, "my", &node)
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "Invalid label name \"__name__\".",
        );
}

#[test]
fn a_removed_service_name_can_be_reused() {
    let (given, node) = with_host();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let id = given.service_id();
    given
        .with(remove(&id, false))
        .when(add(service(ServiceType::Mysql, "db", &node)))
        .emits_types(&["ServiceAdded"]);
}

#[test]
fn change_service_absent_fields_keep_and_present_fields_replace() {
    let (given, node) = with_host();
    let given = given.with(add(AddService {
        environment: "prod".into(),
        cluster: "c1".into(),
        replication_set: "rs1".into(),
        ..service(ServiceType::Mysql, "db", &node)
    }));
    let id = given.service_id();
    given
        .when(Command::ChangeService(ChangeService {
            environment: Some(String::new()),
            cluster: Some("c2".into()),
            ..change(&id)
        }))
        .emits(|e| {
            assert_eq!(types(e), ["ServiceChanged"]);
            let s = the_service(e);
            assert_eq!(s.environment, "");
            assert_eq!(s.cluster, "c2");
            assert_eq!(s.replication_set, "rs1");
            assert_eq!(s.service_name, "db");
            assert_eq!(s.address.as_deref(), Some("10.0.0.1"));
        });
}

#[test]
fn change_service_custom_labels_replace_the_map_and_empty_clears() {
    let (given, node) = with_host();
    let given = given.with(add(AddService {
        custom_labels: labels(&[("a", "1"), ("b", "2")]),
        ..service(ServiceType::Mysql, "db", &node)
    }));
    let id = given.service_id();
    let replaced = given.with(Command::ChangeService(ChangeService {
        custom_labels: Some(labels(&[("c", "3")])),
        ..change(&id)
    }));
    assert_eq!(
        replaced.state().services[&id].custom_labels,
        labels(&[("c", "3")])
    );
    replaced
        .when(Command::ChangeService(ChangeService {
            custom_labels: Some(labels(&[])),
            ..change(&id)
        }))
        .emits(|e| assert!(the_service(e).custom_labels.is_empty()));
}

#[test]
fn change_service_validates_label_names() {
    let (given, node) = with_host();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let id = given.service_id();
    given
        .when(Command::ChangeService(ChangeService {
            custom_labels: Some(labels(&[("a-b", "1")])),
            ..change(&id)
        }))
        .rejected(ErrorClass::InvalidArgument, "Invalid label name \"a-b\".");
}

#[test]
fn change_service_keeps_the_external_group_rule() {
    let (given, node) = with_host();
    let given = given
        .with(add(service(ServiceType::External, "ext", &node)))
        .with(add(service(ServiceType::Mysql, "db", &node)));
    let db = given.service_id();
    let ext = given
        .state()
        .service_by_name("ext")
        .expect("ext")
        .service_id
        .clone();
    let group = |id: &ServiceId, g: &str| {
        Command::ChangeService(ChangeService {
            external_group: Some(g.to_owned()),
            ..change(id)
        })
    };
    // An external service may move to another group, but not to none.
    let given = given.with(group(&ext, "other"));
    assert_eq!(given.state().services[&ext].external_group, "other");
    // (an empty group on a mysql service is what it already has)
    let given = given.with(group(&db, ""));
    given.when(group(&ext, "")).rejected(
        ErrorClass::InvalidArgument,
        "external_group: must not be empty for external services.",
    );
    // Other services may not join a group.
    let (given, node) = with_host();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let db = given.service_id();
    given.when(group(&db, "g")).rejected(
        ErrorClass::InvalidArgument,
        "external_group: can't be set for mysql services.",
    );
}

#[test]
fn change_service_that_changes_nothing_emits_nothing() {
    let (given, node) = with_host();
    let given = given.with(add(AddService {
        environment: "prod".into(),
        ..service(ServiceType::Mysql, "db", &node)
    }));
    let id = given.service_id();
    given
        .when(Command::ChangeService(ChangeService {
            environment: Some("prod".into()),
            ..change(&id)
        }))
        .emits_nothing();
}

#[test]
fn change_service_on_a_missing_service_is_not_found() {
    Given::bootstrapped()
        .when(Command::ChangeService(change(&"nope".into())))
        .rejected(ErrorClass::NotFound, "Service with ID \"nope\" not found.");
}

#[test]
fn removing_a_missing_service_is_not_found() {
    Given::bootstrapped()
        .when(remove(&"nope".into(), true))
        .rejected(ErrorClass::NotFound, "Service with ID \"nope\" not found.");
}

#[test]
fn removing_a_service_with_agents_without_force_is_failed_precondition() {
    let (given, node) = with_host();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let id = given.service_id();
    given
        .with(mysqld_exporter(&id))
        .when(remove(&id, false))
        .rejected(
            ErrorClass::FailedPrecondition,
            &format!("Service with ID {:?} has agents.", id.as_str()),
        );
}

#[test]
fn force_removing_a_service_removes_its_agents_first() {
    let (given, node) = with_host();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let id = given.service_id();
    let given = given.with(mysqld_exporter(&id));
    let exporter = given.agent_id(AgentType::MysqldExporter);
    given.when(remove(&id, true)).emits(|e| {
        assert_eq!(
            trail(e),
            [
                format!("AgentRemoved:{exporter}"),
                format!("ServiceRemoved:{id}")
            ]
        )
    });
}

#[test]
fn removing_a_service_keeps_its_generic_node() {
    let (given, node) = with_host();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let id = given.service_id();
    given
        .when(remove(&id, true))
        .emits(|e| assert_eq!(trail(e), [format!("ServiceRemoved:{id}")]));
}

fn rds() -> Command {
    Command::AddRdsService(AddRdsService {
        region: "us-east-1".into(),
        instance_id: "mydb".into(),
        address: "mydb.abc.us-east-1.rds.amazonaws.com".into(),
        port: 3306,
        engine: Some(RdsEngine::Mysql),
        username: "pmm".into(),
        rds_exporter: true,
        ..AddRdsService::default()
    })
}

#[test]
fn forced_removal_of_the_last_rds_service_removes_the_rds_node_and_its_agents() {
    let given = Given::bootstrapped().with(rds());
    let node = given.node_id();
    let svc = given.service_id();
    let rds_exporter = given.agent_id(AgentType::RdsExporter);
    let mysqld = given.agent_id(AgentType::MysqldExporter);
    given.when(remove(&svc, true)).emits(|e| {
        assert_eq!(
            trail(e),
            [
                format!("AgentRemoved:{mysqld}"),
                format!("ServiceRemoved:{svc}"),
                format!("AgentRemoved:{rds_exporter}"),
                format!("NodeRemoved:{node}"),
            ]
        )
    });
}

#[test]
fn restrict_removal_of_an_rds_service_keeps_the_rds_node() {
    let given = Given::bootstrapped().with(Command::AddNode(AddNode {
        region: Some("us-east-1".into()),
        ..node(NodeType::RemoteRds, "rds1", "mydb")
    }));
    let node = given.node_id();
    let given = given.with(add(service(ServiceType::Mysql, "db", &node)));
    let svc = given.service_id();
    given
        .when(remove(&svc, false))
        .emits(|e| assert_eq!(trail(e), [format!("ServiceRemoved:{svc}")]));
}

#[test]
fn rds_node_with_other_services_is_kept() {
    let given = Given::bootstrapped().with(Command::AddNode(AddNode {
        region: Some("us-east-1".into()),
        ..node(NodeType::RemoteRds, "rds1", "mydb")
    }));
    let node = given.node_id();
    let given = given
        .with(add(service(ServiceType::Mysql, "db1", &node)))
        .with(add(service(ServiceType::Postgresql, "db2", &node)));
    let svc = given.service_id();
    given
        .when(remove(&svc, true))
        .emits(|e| assert_eq!(trail(e), [format!("ServiceRemoved:{svc}")]));
}
