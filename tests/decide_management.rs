//! Management API rules: RegisterNode (and reregister), AddService per service type with its
//! derived defaults and agents, metrics modes, RDS, Azure, and RemoveService by id or name.

#[path = "common/given.rs"]
mod given;

use given::*;
use pmmcp::commands::add_service::{
    AddAzureDatabase, AddManagedService, AddNodeParams, AddRdsService, AddServiceCommon,
    AzureDatabaseType, MetricsMode, RdsEngine, ServiceKind,
};
use pmmcp::commands::nodes::AddNode;
use pmmcp::commands::register_node::RegisterNode;
use pmmcp::commands::remove_service::RemoveManagedService;
use pmmcp::commands::{Command, ErrorClass};
use pmmcp::domain::agent::{
    MongoOptions, MysqlOptions, PostgresqlOptions, QanOptions, ValkeyOptions,
};
use pmmcp::domain::{AgentId, AgentType, LogLevel, NodeId, NodeType, ServiceType};
use pmmcp::events::Event;

/// A bootstrapped inventory with a registered generic node `host1`.
fn host() -> (Given, NodeId, AgentId) {
    let given = Given::bootstrapped().with(Command::RegisterNode(register("host1")));
    let node = given.node_id();
    let pmm_agent = given.agent_id(AgentType::PmmAgent);
    (given, node, pmm_agent)
}

fn common(name: &str, node: &NodeId, pmm_agent: &AgentId) -> AddServiceCommon {
    AddServiceCommon {
        node_id: Some(node.clone()),
        service_name: name.to_owned(),
        address: Some("10.0.0.1".into()),
        port: Some(3306),
        pmm_agent_id: Some(pmm_agent.clone()),
        username: Some("pmm".into()),
        ..AddServiceCommon::default()
    }
}

fn mysql(qan_perfschema: bool, qan_slowlog: bool) -> ServiceKind {
    ServiceKind::Mysql {
        qan_perfschema,
        qan_slowlog,
        mysql: MysqlOptions::default(),
        qan: QanOptions::default(),
    }
}

fn haproxy() -> ServiceKind {
    ServiceKind::Haproxy {
        listen_port: Some(8404),
        scheme: None,
        metrics_path: None,
    }
}

fn external(runs_on: Option<&NodeId>) -> ServiceKind {
    ServiceKind::External {
        runs_on_node_id: runs_on.cloned(),
        listen_port: Some(9100),
        scheme: Some("https".into()),
        metrics_path: Some("/m".into()),
        group: String::new(),
    }
}

fn add(common: AddServiceCommon, kind: ServiceKind) -> Command {
    Command::AddManagedService(AddManagedService { common, kind })
}

/// Common params for haproxy/external: no connection, no pmm-agent.
fn scrape_common(name: &str, node: &NodeId) -> AddServiceCommon {
    AddServiceCommon {
        node_id: Some(node.clone()),
        service_name: name.to_owned(),
        ..AddServiceCommon::default()
    }
}

fn agent_types(events: &[Event]) -> Vec<AgentType> {
    agents_added(events).iter().map(|a| a.agent_type).collect()
}

fn rds() -> AddRdsService {
    AddRdsService {
        region: "us-east-1".into(),
        az: "us-east-1a".into(),
        instance_id: "mydb".into(),
        node_model: "db.t3.medium".into(),
        address: "mydb.abc.us-east-1.rds.amazonaws.com".into(),
        port: 3306,
        engine: Some(RdsEngine::Mysql),
        username: "pmm".into(),
        ..AddRdsService::default()
    }
}

fn azure() -> AddAzureDatabase {
    AddAzureDatabase {
        region: "eastus".into(),
        instance_id: "myazure".into(),
        address: "myazure.mysql.database.azure.com".into(),
        port: 3306,
        username: "pmm".into(),
        kind: Some(AzureDatabaseType::Mysql),
        azure_subscription_id: "sub".into(),
        ..AddAzureDatabase::default()
    }
}

fn remove(key: &str, service_type: Option<ServiceType>) -> Command {
    Command::RemoveManagedService(RemoveManagedService {
        service_id_or_name: key.to_owned(),
        service_type,
    })
}

// --- RegisterNode ---

#[test]
fn register_node_creates_node_pmm_agent_and_node_exporter() {
    Given::bootstrapped()
        .when(Command::RegisterNode(register("host1")))
        .emits(|e| {
            assert_eq!(types(e), ["NodeAdded", "AgentAdded", "AgentAdded"]);
            let node = the_node(e);
            assert_eq!(
                (
                    node.node_type,
                    node.node_name.as_str(),
                    node.address.as_str()
                ),
                (NodeType::Generic, "host1", "host1.example")
            );
            let pmm_agent = agent_of(e, AgentType::PmmAgent);
            assert_eq!(pmm_agent.runs_on_node_id, Some(node.node_id.clone()));
            assert!(pmm_agent.custom_labels.is_empty());
            let exporter = agent_of(e, AgentType::NodeExporter);
            assert_eq!(exporter.pmm_agent_id, Some(pmm_agent.agent_id));
            assert_eq!(exporter.node_id, Some(node.node_id));
            // auto metrics mode means push; RegisterNode leaves the log level unset
            assert!(exporter.exporter.push_metrics);
            assert_eq!(exporter.log_level, None);
        });
}

#[test]
fn register_node_passes_metrics_mode_and_exporter_options_to_node_exporter() {
    Given::bootstrapped()
        .when(Command::RegisterNode(RegisterNode {
            metrics_mode: MetricsMode::Pull,
            expose_exporter: true,
            disable_collectors: vec!["cpu".into()],
            ..register("host1")
        }))
        .emits(|e| {
            let exporter = agent_of(e, AgentType::NodeExporter);
            assert!(!exporter.exporter.push_metrics);
            assert!(exporter.exporter.expose_exporter);
            assert_eq!(exporter.exporter.disabled_collectors, ["cpu"]);
        });
}

#[test]
fn register_node_accepts_only_generic_or_container_nodes() {
    Given::bootstrapped()
        .when(Command::RegisterNode(RegisterNode {
            node_type: Some(NodeType::Remote),
            ..register("r1")
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "Remote nodes can't be registered",
        );
    for t in [
        None,
        Some(NodeType::RemoteRds),
        Some(NodeType::RemoteAzureDatabase),
    ] {
        Given::bootstrapped()
            .when(Command::RegisterNode(RegisterNode {
                node_type: t,
                ..register("r1")
            }))
            .rejected(ErrorClass::InvalidArgument, "Unsupported Node type");
    }
    Given::bootstrapped()
        .when(Command::RegisterNode(RegisterNode {
            node_type: Some(NodeType::Container),
            container_id: Some("abc".into()),
            ..register("c1")
        }))
        .emits(|e| assert_eq!(the_node(e).node_type, NodeType::Container));
}

#[test]
fn register_node_with_a_taken_name_without_reregister_is_already_exists() {
    let (given, _, _) = host();
    given
        .when(Command::RegisterNode(register("host1")))
        .rejected(
            ErrorClass::AlreadyExists,
            "Node with name \"host1\" already exists.",
        );
}

#[test]
fn reregister_removes_the_node_with_the_same_name_and_everything_on_it() {
    let (given, node, pmm_agent) = host();
    let node_exporter = given.agent_id(AgentType::NodeExporter);
    let given = given.with(add(common("mysql1", &node, &pmm_agent), mysql(true, false)));
    let svc = given.service_id();
    given
        .when(Command::RegisterNode(RegisterNode {
            reregister: true,
            ..register("host1")
        }))
        .emits(|e| {
            assert_eq!(
                types(e),
                [
                    "AgentRemoved",
                    "AgentRemoved",
                    "AgentRemoved",
                    "AgentRemoved",
                    "ServiceRemoved",
                    "NodeRemoved",
                    "NodeAdded",
                    "AgentAdded",
                    "AgentAdded",
                ]
            );
            let t = trail(e);
            assert_eq!(t[0], format!("AgentRemoved:{node_exporter}"));
            assert_eq!(t[3], format!("AgentRemoved:{pmm_agent}"));
            assert_eq!(t[4], format!("ServiceRemoved:{svc}"));
            assert_eq!(t[5], format!("NodeRemoved:{node}"));
            let new = the_node(e);
            assert_eq!(new.node_name, "host1");
            assert_ne!(new.node_id, node);
        });
}

#[test]
fn register_node_with_a_taken_address_and_region_without_reregister_is_already_exists() {
    let old = RegisterNode {
        region: Some("eu-west-1".into()),
        address: "10.1.1.1".into(),
        ..register("old")
    };
    Given::bootstrapped()
        .with(Command::RegisterNode(old.clone()))
        .when(Command::RegisterNode(RegisterNode {
            node_name: "new".into(),
            ..old
        }))
        .rejected(
            ErrorClass::AlreadyExists,
            "Node with instance \"10.1.1.1\" and region \"eu-west-1\" already exists.",
        );
}

#[test]
fn reregister_removes_the_node_with_the_same_address_and_region() {
    let old = RegisterNode {
        region: Some("eu-west-1".into()),
        address: "10.1.1.1".into(),
        ..register("old")
    };
    let given = Given::bootstrapped().with(Command::RegisterNode(old.clone()));
    let old_node = given.node_id();
    given
        .when(Command::RegisterNode(RegisterNode {
            node_name: "new".into(),
            reregister: true,
            ..old
        }))
        .emits(|e| {
            assert_eq!(
                types(e),
                [
                    "AgentRemoved",
                    "AgentRemoved",
                    "NodeRemoved",
                    "NodeAdded",
                    "AgentAdded",
                    "AgentAdded"
                ]
            );
            assert!(trail(e).contains(&format!("NodeRemoved:{old_node}")));
            assert_eq!(the_node(e).node_name, "new");
        });
}

#[test]
fn reregister_cannot_remove_the_pmm_server_node() {
    Given::bootstrapped()
        .when(Command::RegisterNode(RegisterNode {
            reregister: true,
            ..register("pmm-server")
        }))
        .rejected(
            ErrorClass::PermissionDenied,
            "PMM Server node can't be removed.",
        );
}

#[test]
fn region_with_an_empty_address_is_an_empty_node_instance() {
    Given::bootstrapped()
        .when(Command::RegisterNode(RegisterNode {
            address: String::new(),
            region: Some("eu-west-1".into()),
            ..register("host1")
        }))
        .rejected(ErrorClass::InvalidArgument, "Empty Node instance.");
}

// --- AddService: node selection ---

#[test]
fn add_service_needs_exactly_one_of_node_id_node_name_add_node() {
    let (given, node, pmm_agent) = host();
    let none = AddServiceCommon {
        node_id: None,
        ..common("m", &node, &pmm_agent)
    };
    given.when(add(none, mysql(false, false))).rejected(
        ErrorClass::InvalidArgument,
        "expected only one param; node id, node name or register node params",
    );
    let (given, node, pmm_agent) = host();
    let two = AddServiceCommon {
        node_name: Some("host1".into()),
        ..common("m", &node, &pmm_agent)
    };
    given
        .when(add(two, mysql(false, false)))
        .rejected(ErrorClass::InvalidArgument, "expected only one param");
}

#[test]
fn add_service_by_node_name_resolves_the_node() {
    let (given, node, pmm_agent) = host();
    let by_name = AddServiceCommon {
        node_id: None,
        node_name: Some("host1".into()),
        ..common("m", &node, &pmm_agent)
    };
    given
        .when(add(by_name, mysql(false, false)))
        .emits(|e| assert_eq!(the_service(e).node_id, node));
}

#[test]
fn add_service_missing_node_is_not_found() {
    let (given, _, pmm_agent) = host();
    given
        .when(add(
            common("m", &"nope".into(), &pmm_agent),
            mysql(false, false),
        ))
        .rejected(ErrorClass::NotFound, "Node with ID \"nope\" not found.");
    let (given, node, pmm_agent) = host();
    let by_name = AddServiceCommon {
        node_id: None,
        node_name: Some("ghost".into()),
        ..common("m", &node, &pmm_agent)
    };
    given
        .when(add(by_name, mysql(false, false)))
        .rejected(ErrorClass::NotFound, "Node with name \"ghost\" not found.");
}

#[test]
fn add_service_existing_node_must_be_generic_or_container() {
    let (given, _, pmm_agent) = host();
    let given = given.with(Command::AddNode(node(NodeType::Remote, "r1", "r1")));
    let remote = given.node_id();
    given
        .when(add(common("m", &remote, &pmm_agent), mysql(false, false)))
        .rejected(ErrorClass::InvalidArgument, "is a remote node");
    let (given, _, pmm_agent) = host();
    let given = given.with(Command::AddNode(AddNode {
        container_id: Some("c".into()),
        ..node(NodeType::Container, "c1", "10.0.0.9")
    }));
    let container = given.node_id();
    given
        .when(add(
            common("m", &container, &pmm_agent),
            mysql(false, false),
        ))
        .emits(|e| assert_eq!(the_service(e).node_id, container));
}

#[test]
fn add_node_must_be_remote_and_takes_the_service_address() {
    let with_add_node = |node_type, address: Option<&str>| {
        let (given, node, pmm_agent) = host();
        let c = AddServiceCommon {
            node_id: None,
            add_node: Some(AddNodeParams {
                node_type: Some(node_type),
                node_name: "remote-db".into(),
                region: Some("eu-west-1".into()),
                ..AddNodeParams::default()
            }),
            address: address.map(str::to_owned),
            ..common("m", &node, &pmm_agent)
        };
        given.when(add(c, mysql(false, false)))
    };
    with_add_node(NodeType::Generic, Some("10.0.0.1")).rejected(
        ErrorClass::InvalidArgument,
        "add_node structure can be used only for remote nodes",
    );
    with_add_node(NodeType::Remote, None).rejected(ErrorClass::InvalidArgument, "address");
    with_add_node(NodeType::Remote, Some("10.0.0.1")).emits(|e| {
        assert_eq!(types(e), ["NodeAdded", "ServiceAdded", "AgentAdded"]);
        let n = the_node(e);
        assert_eq!(
            (n.node_type, n.node_name.as_str(), n.address.as_str()),
            (NodeType::Remote, "remote-db", "10.0.0.1")
        );
        assert_eq!(n.region.as_deref(), Some("eu-west-1"));
        assert_eq!(the_service(e).node_id, n.node_id);
    });
}

#[test]
fn db_services_need_a_pmm_agent_id() {
    let (given, node, pmm_agent) = host();
    given
        .when(add(
            AddServiceCommon {
                pmm_agent_id: None,
                ..common("m", &node, &pmm_agent)
            },
            mysql(false, false),
        ))
        .rejected(ErrorClass::InvalidArgument, "pmm_agent_id");
}

#[test]
fn management_add_is_all_or_nothing() {
    // The node and service would be valid; the exporter's pmm-agent does not exist.
    let (given, node, _) = host();
    let c = AddServiceCommon {
        node_id: None,
        add_node: Some(AddNodeParams {
            node_type: Some(NodeType::Remote),
            node_name: "remote-db".into(),
            ..AddNodeParams::default()
        }),
        ..common("m", &node, &"ghost".into())
    };
    given
        .when(add(c, mysql(true, true)))
        .rejected(ErrorClass::NotFound, "Agent with ID \"ghost\" not found.");
    // The service would be valid; the exporter has no username.
    let (given, node, pmm_agent) = host();
    given
        .when(add(
            AddServiceCommon {
                username: None,
                ..common("m", &node, &pmm_agent)
            },
            mysql(false, false),
        ))
        .rejected(ErrorClass::InvalidArgument, "username");
}

// --- AddService: per type ---

#[test]
fn mysql_add_creates_service_exporter_and_requested_qan_agents() {
    let (given, node, pmm_agent) = host();
    given
        .when(add(common("mysql1", &node, &pmm_agent), mysql(true, true)))
        .emits(|e| {
            assert_eq!(
                types(e),
                ["ServiceAdded", "AgentAdded", "AgentAdded", "AgentAdded"]
            );
            let s = the_service(e);
            assert_eq!(s.service_type, ServiceType::Mysql);
            assert_eq!(
                agent_types(e),
                [
                    AgentType::MysqldExporter,
                    AgentType::QanMysqlPerfschemaAgent,
                    AgentType::QanMysqlSlowlogAgent
                ]
            );
            for a in agents_added(e) {
                assert_eq!(a.service_id, Some(s.service_id.clone()));
                assert_eq!(a.pmm_agent_id, Some(pmm_agent.clone()));
                assert_eq!(a.username.as_deref(), Some("pmm"));
            }
            let exporter = agent_of(e, AgentType::MysqldExporter);
            assert_eq!(exporter.log_level, Some(LogLevel::Error));
            assert!(exporter.exporter.push_metrics);
            let qan = agent_of(e, AgentType::QanMysqlSlowlogAgent);
            assert_eq!(qan.log_level, Some(LogLevel::Fatal));
        });
    let (given, node, pmm_agent) = host();
    given
        .when(add(
            common("mysql1", &node, &pmm_agent),
            mysql(false, false),
        ))
        .emits(|e| assert_eq!(agent_types(e), [AgentType::MysqldExporter]));
}

#[test]
fn mysql_tablestats_limit_defaults_0_to_1000_and_negative_to_minus_1() {
    for (given_limit, stored) in [(0, 1000), (-5, -1), (300, 300)] {
        let (given, node, pmm_agent) = host();
        let kind = ServiceKind::Mysql {
            qan_perfschema: false,
            qan_slowlog: false,
            mysql: MysqlOptions {
                tablestats_group_table_limit: given_limit,
                ..MysqlOptions::default()
            },
            qan: QanOptions::default(),
        };
        given
            .when(add(common("m", &node, &pmm_agent), kind))
            .emits(|e| {
                let a = agent_of(e, AgentType::MysqldExporter);
                assert_eq!(
                    a.mysql.tablestats_group_table_limit, stored,
                    "{given_limit}"
                );
            });
    }
}

#[test]
fn mysql_slowlog_size_defaults_0_to_1gib_and_negative_to_0() {
    for (size, stored) in [(0, 1 << 30), (-1, 0), (4096, 4096)] {
        let (given, node, pmm_agent) = host();
        let kind = ServiceKind::Mysql {
            qan_perfschema: true,
            qan_slowlog: true,
            mysql: MysqlOptions::default(),
            qan: QanOptions {
                max_query_log_size: size,
                ..QanOptions::default()
            },
        };
        given
            .when(add(common("m", &node, &pmm_agent), kind))
            .emits(|e| {
                let slowlog = agent_of(e, AgentType::QanMysqlSlowlogAgent);
                assert_eq!(slowlog.qan.max_query_log_size, stored, "{size}");
                let perfschema = agent_of(e, AgentType::QanMysqlPerfschemaAgent);
                assert_eq!(perfschema.qan.max_query_log_size, 0);
            });
    }
}

#[test]
fn mongodb_add_creates_exporter_profiler_and_mongolog_agents_without_a_username() {
    let (given, node, pmm_agent) = host();
    let kind = ServiceKind::Mongodb {
        qan_profiler: true,
        qan_mongolog: true,
        mongo: MongoOptions {
            collections_limit: 100,
            ..MongoOptions::default()
        },
        qan: QanOptions::default(),
    };
    let c = AddServiceCommon {
        username: None,
        port: Some(27017),
        ..common("mongo1", &node, &pmm_agent)
    };
    given.when(add(c, kind)).emits(|e| {
        assert_eq!(the_service(e).service_type, ServiceType::Mongodb);
        assert_eq!(
            agent_types(e),
            [
                AgentType::MongodbExporter,
                AgentType::QanMongodbProfilerAgent,
                AgentType::QanMongodbMongologAgent
            ]
        );
        let exporter = agent_of(e, AgentType::MongodbExporter);
        assert_eq!(exporter.log_level, Some(LogLevel::Fatal));
        assert_eq!(exporter.mongo.collections_limit, 100);
    });
}

#[test]
fn postgresql_add_defaults_database_to_postgres_and_creates_its_agents() {
    let kind = |database_name: &str| ServiceKind::Postgresql {
        database_name: database_name.to_owned(),
        qan_pgstatements: true,
        qan_pgstatmonitor: true,
        postgresql: PostgresqlOptions {
            max_exporter_connections: 3,
            ..PostgresqlOptions::default()
        },
        qan: QanOptions::default(),
    };
    let (given, node, pmm_agent) = host();
    given
        .when(add(common("pg1", &node, &pmm_agent), kind("")))
        .emits(|e| {
            let s = the_service(e);
            assert_eq!(
                (s.service_type, s.database_name.as_str()),
                (ServiceType::Postgresql, "postgres")
            );
            assert_eq!(
                agent_types(e),
                [
                    AgentType::PostgresExporter,
                    AgentType::QanPostgresqlPgstatementsAgent,
                    AgentType::QanPostgresqlPgstatmonitorAgent
                ]
            );
            let exporter = agent_of(e, AgentType::PostgresExporter);
            assert_eq!(exporter.postgresql.max_exporter_connections, 3);
        });
    let (given, node, pmm_agent) = host();
    given
        .when(add(common("pg1", &node, &pmm_agent), kind("app")))
        .emits(|e| assert_eq!(the_service(e).database_name, "app"));
}

#[test]
fn proxysql_add_creates_a_proxysql_exporter() {
    let (given, node, pmm_agent) = host();
    given
        .when(add(common("p1", &node, &pmm_agent), ServiceKind::Proxysql))
        .emits(|e| {
            assert_eq!(the_service(e).service_type, ServiceType::Proxysql);
            assert_eq!(agent_types(e), [AgentType::ProxysqlExporter]);
        });
}

#[test]
fn valkey_add_creates_a_valkey_exporter_and_requires_a_username() {
    let kind = || ServiceKind::Valkey {
        valkey: ValkeyOptions::default(),
    };
    let (given, node, pmm_agent) = host();
    given
        .when(add(common("v1", &node, &pmm_agent), kind()))
        .emits(|e| {
            assert_eq!(the_service(e).service_type, ServiceType::Valkey);
            assert_eq!(agent_types(e), [AgentType::ValkeyExporter]);
            assert_eq!(
                agent_of(e, AgentType::ValkeyExporter).log_level,
                Some(LogLevel::Error)
            );
        });
    let (given, node, pmm_agent) = host();
    given
        .when(add(
            AddServiceCommon {
                username: None,
                ..common("v1", &node, &pmm_agent)
            },
            kind(),
        ))
        .rejected(ErrorClass::InvalidArgument, "username");
}

#[test]
fn haproxy_add_creates_a_service_without_address_and_an_external_exporter() {
    let (given, node, pmm_agent) = host();
    given
        .when(add(scrape_common("hap", &node), haproxy()))
        .emits(|e| {
            let s = the_service(e);
            assert_eq!(s.service_type, ServiceType::Haproxy);
            assert_eq!((s.address, s.port, s.socket), (None, None, None));
            assert_eq!(s.external_group, "");
            let a = agent_of(e, AgentType::ExternalExporter);
            assert_eq!(a.service_id, Some(s.service_id));
            assert_eq!(a.listen_port, Some(8404));
            // auto mode with exactly one pmm-agent on the node: push through it
            assert_eq!((a.pmm_agent_id, a.runs_on_node_id), (Some(pmm_agent), None));
        });
    let (given, node, _) = host();
    given
        .when(add(
            scrape_common("hap", &node),
            ServiceKind::Haproxy {
                listen_port: None,
                scheme: None,
                metrics_path: None,
            },
        ))
        .rejected(ErrorClass::InvalidArgument, "listen_port");
}

#[test]
fn external_exporter_may_scrape_haproxy_only_on_the_management_path() {
    let (given, node, _) = host();
    given
        .when(add(
            AddServiceCommon {
                metrics_mode: MetricsMode::Pull,
                ..scrape_common("hap", &node)
            },
            haproxy(),
        ))
        .emits(|e| {
            let a = agent_of(e, AgentType::ExternalExporter);
            assert_eq!(
                (a.pmm_agent_id, a.runs_on_node_id),
                (None, Some(node.clone()))
            );
        });
}

#[test]
fn external_add_defaults_the_group_and_scrapes_from_runs_on_node() {
    let (given, node, _) = host();
    let given = given.with(generic("bare"));
    let bare = given.node_id();
    given
        .when(add(scrape_common("ext", &node), external(Some(&bare))))
        .emits(|e| {
            let s = the_service(e);
            assert_eq!(
                (s.service_type, s.external_group.as_str()),
                (ServiceType::External, "external")
            );
            assert_eq!(s.node_id, node);
            let a = agent_of(e, AgentType::ExternalExporter);
            // no pmm-agent on the runs-on node: auto means pull
            assert_eq!(
                (a.pmm_agent_id, a.runs_on_node_id),
                (None, Some(bare.clone()))
            );
            assert_eq!(a.exporter.metrics_scheme.as_deref(), Some("https"));
            assert_eq!(a.exporter.metrics_path.as_deref(), Some("/m"));
        });
    let (given, node, _) = host();
    let kind = ServiceKind::External {
        runs_on_node_id: Some(node.clone()),
        listen_port: Some(9100),
        scheme: None,
        metrics_path: None,
        group: "redis".into(),
    };
    given
        .when(add(scrape_common("ext", &node), kind))
        .emits(|e| assert_eq!(the_service(e).external_group, "redis"));
}

#[test]
fn external_requires_runs_on_node_id_with_node_id() {
    let (given, node, _) = host();
    given
        .when(add(scrape_common("ext", &node), external(None)))
        .rejected(
            ErrorClass::InvalidArgument,
            "runs_on_node_id and node_id should be specified together.",
        );
}

#[test]
fn external_unspecified_mode_pushes_through_the_only_pmm_agent_on_the_runs_on_node() {
    let (given, node, pmm_agent) = host();
    given
        .when(add(scrape_common("ext", &node), external(Some(&node))))
        .emits(|e| {
            let a = agent_of(e, AgentType::ExternalExporter);
            assert_eq!((a.pmm_agent_id, a.runs_on_node_id), (Some(pmm_agent), None));
            assert!(a.exporter.push_metrics);
        });
}

#[test]
fn external_unspecified_mode_on_the_pmm_server_node_is_pull() {
    let server = NodeId::from("pmm-server");
    Given::bootstrapped()
        .when(add(scrape_common("ext", &server), external(Some(&server))))
        .emits(|e| {
            let a = agent_of(e, AgentType::ExternalExporter);
            assert_eq!(
                (a.pmm_agent_id, a.runs_on_node_id),
                (None, Some(server.clone()))
            );
            assert!(!a.exporter.push_metrics);
        });
    Given::bootstrapped()
        .when(add(scrape_common("hap", &server), haproxy()))
        .emits(|e| {
            assert!(
                !agent_of(e, AgentType::ExternalExporter)
                    .exporter
                    .push_metrics
            )
        });
}

#[test]
fn external_add_node_is_the_default_runs_on_node() {
    let c = AddServiceCommon {
        add_node: Some(AddNodeParams {
            node_type: Some(NodeType::Remote),
            node_name: "remote-ext".into(),
            ..AddNodeParams::default()
        }),
        address: Some("ext.example".into()),
        service_name: "ext".into(),
        ..AddServiceCommon::default()
    };
    Given::bootstrapped()
        .when(add(c, external(None)))
        .emits(|e| {
            assert_eq!(types(e), ["NodeAdded", "ServiceAdded", "AgentAdded"]);
            let n = the_node(e);
            assert_eq!(
                (n.node_type, n.address.as_str()),
                (NodeType::Remote, "ext.example")
            );
            let s = the_service(e);
            assert_eq!((s.node_id.clone(), s.address), (n.node_id.clone(), None));
            let a = agent_of(e, AgentType::ExternalExporter);
            assert_eq!(a.runs_on_node_id, Some(n.node_id));
        });
}

// --- metrics modes ---

#[test]
fn unspecified_metrics_mode_means_push_and_pull_means_pull() {
    for (mode, push) in [
        (MetricsMode::Unspecified, true),
        (MetricsMode::Push, true),
        (MetricsMode::Pull, false),
    ] {
        let (given, node, pmm_agent) = host();
        given
            .when(add(
                AddServiceCommon {
                    metrics_mode: mode,
                    ..common("m", &node, &pmm_agent)
                },
                mysql(false, false),
            ))
            .emits(|e| {
                let a = agent_of(e, AgentType::MysqldExporter);
                assert_eq!(a.exporter.push_metrics, push, "{mode:?}");
            });
    }
}

#[test]
fn unspecified_metrics_mode_on_pmm_server_means_pull() {
    let server = NodeId::from("pmm-server");
    Given::bootstrapped()
        .when(add(
            common("m", &server, &"pmm-server".into()),
            mysql(false, false),
        ))
        .emits(|e| assert!(!agent_of(e, AgentType::MysqldExporter).exporter.push_metrics));
}

#[test]
fn explicit_push_on_pmm_server_is_failed_precondition() {
    let server = NodeId::from("pmm-server");
    Given::bootstrapped()
        .when(add(
            AddServiceCommon {
                metrics_mode: MetricsMode::Push,
                ..common("m", &server, &"pmm-server".into())
            },
            mysql(false, false),
        ))
        .rejected(
            ErrorClass::FailedPrecondition,
            "push metrics mode is not allowed for exporters running on pmm-server",
        );
}

#[test]
fn push_mode_needs_pmm_agent_2_12_or_newer() {
    let (given, node, pmm_agent) = host();
    let mut agent = given.agent(&pmm_agent);
    agent.version = Some("2.11.0".into());
    given
        .event(Event::AgentChanged { agent })
        .when(add(common("m", &node, &pmm_agent), mysql(false, false)))
        .rejected(ErrorClass::FailedPrecondition, "2.12.0 or newer needed");
}

// --- RDS ---

#[test]
fn rds_add_creates_node_rds_exporter_service_and_agents() {
    Given::bootstrapped()
        .when(Command::AddRdsService(AddRdsService {
            rds_exporter: true,
            qan: true,
            aws_access_key: Some("AKIA".into()),
            disable_basic_metrics: true,
            ..rds()
        }))
        .emits(|e| {
            assert_eq!(
                types(e),
                [
                    "NodeAdded",
                    "AgentAdded",
                    "ServiceAdded",
                    "AgentAdded",
                    "AgentAdded"
                ]
            );
            let n = the_node(e);
            assert_eq!(n.node_type, NodeType::RemoteRds);
            assert_eq!(n.node_name, "mydb");
            assert_eq!(n.address, "mydb");
            assert_eq!(n.instance_id, "mydb");
            assert_eq!(n.region.as_deref(), Some("us-east-1"));
            assert_eq!(
                (n.az.as_str(), n.node_model.as_str()),
                ("us-east-1a", "db.t3.medium")
            );
            let s = the_service(e);
            assert_eq!(s.service_type, ServiceType::Mysql);
            assert_eq!(s.service_name, "mydb");
            assert_eq!(s.node_id, n.node_id);
            assert_eq!(
                s.address.as_deref(),
                Some("mydb.abc.us-east-1.rds.amazonaws.com")
            );
            assert_eq!(s.port, Some(3306));
            assert_eq!(
                agent_types(e),
                [
                    AgentType::RdsExporter,
                    AgentType::MysqldExporter,
                    AgentType::QanMysqlPerfschemaAgent
                ]
            );
            let rds_exporter = agent_of(e, AgentType::RdsExporter);
            assert_eq!(rds_exporter.node_id, Some(n.node_id));
            assert_eq!(rds_exporter.aws.aws_access_key.as_deref(), Some("AKIA"));
            assert!(rds_exporter.aws.rds_basic_metrics_disabled);
            for a in agents_added(e) {
                assert_eq!(a.pmm_agent_id, Some("pmm-server".into()));
                assert!(!a.exporter.push_metrics);
            }
            let mysqld = agent_of(e, AgentType::MysqldExporter);
            assert_eq!(mysqld.mysql.tablestats_group_table_limit, 1000);
        });
}

#[test]
fn rds_without_rds_exporter_or_qan_creates_only_the_db_exporter() {
    Given::bootstrapped()
        .when(Command::AddRdsService(rds()))
        .emits(|e| {
            assert_eq!(types(e), ["NodeAdded", "ServiceAdded", "AgentAdded"]);
            assert_eq!(agent_types(e), [AgentType::MysqldExporter]);
        });
}

#[test]
fn rds_region_must_be_an_aws_region() {
    for bad in ["", "us-east", "mars-east-1", "us-gov-north-1", "eu-west-0"] {
        Given::bootstrapped()
            .when(Command::AddRdsService(AddRdsService {
                region: bad.into(),
                ..rds()
            }))
            .rejected(ErrorClass::InvalidArgument, "is not an AWS region");
    }
    for good in ["us-gov-west-1", "cn-northwest-1", "ap-southeast-2"] {
        Given::bootstrapped()
            .when(Command::AddRdsService(AddRdsService {
                region: good.into(),
                ..rds()
            }))
            .emits(|e| assert_eq!(the_node(e).region.as_deref(), Some(good)));
    }
}

#[test]
fn rds_requires_instance_id_address_port_and_username() {
    let cases = [
        (
            AddRdsService {
                instance_id: String::new(),
                ..rds()
            },
            "instance_id",
        ),
        (
            AddRdsService {
                address: String::new(),
                ..rds()
            },
            "address",
        ),
        (AddRdsService { port: 0, ..rds() }, "port"),
        (
            AddRdsService {
                username: String::new(),
                ..rds()
            },
            "username",
        ),
        (
            AddRdsService {
                engine: None,
                ..rds()
            },
            "Unsupported RDS engine",
        ),
    ];
    for (cmd, fragment) in cases {
        Given::bootstrapped()
            .when(Command::AddRdsService(cmd))
            .rejected(ErrorClass::InvalidArgument, fragment);
    }
}

#[test]
fn rds_metrics_mode_follows_the_pmm_server_rule() {
    Given::bootstrapped()
        .when(Command::AddRdsService(AddRdsService {
            metrics_mode: MetricsMode::Push,
            ..rds()
        }))
        .rejected(
            ErrorClass::FailedPrecondition,
            "push metrics mode is not allowed for exporters running on pmm-server",
        );
    // Another pmm-agent: auto means push.
    let (given, _, pmm_agent) = host();
    given
        .when(Command::AddRdsService(AddRdsService {
            pmm_agent_id: Some(pmm_agent.clone()),
            rds_exporter: true,
            ..rds()
        }))
        .emits(|e| {
            for a in agents_added(e) {
                assert_eq!(a.pmm_agent_id, Some(pmm_agent.clone()));
                assert!(a.exporter.push_metrics);
            }
        });
}

#[test]
fn rds_postgresql_defaults_database_and_uses_pgstatements() {
    Given::bootstrapped()
        .when(Command::AddRdsService(AddRdsService {
            engine: Some(RdsEngine::Postgresql),
            port: 5432,
            qan: true,
            auto_discovery_limit: 10,
            ..rds()
        }))
        .emits(|e| {
            let s = the_service(e);
            assert_eq!(
                (s.service_type, s.database_name.as_str()),
                (ServiceType::Postgresql, "postgres")
            );
            assert_eq!(
                agent_types(e),
                [
                    AgentType::PostgresExporter,
                    AgentType::QanPostgresqlPgstatementsAgent
                ]
            );
            let exporter = agent_of(e, AgentType::PostgresExporter);
            assert_eq!(exporter.postgresql.auto_discovery_limit, Some(10));
        });
}

#[test]
fn rds_explicit_names_are_kept() {
    Given::bootstrapped()
        .when(Command::AddRdsService(AddRdsService {
            node_name: "rds-node".into(),
            service_name: "rds-svc".into(),
            ..rds()
        }))
        .emits(|e| {
            assert_eq!(the_node(e).node_name, "rds-node");
            assert_eq!(the_service(e).service_name, "rds-svc");
        });
}

#[test]
fn rds_same_instance_and_region_twice_is_already_exists() {
    Given::bootstrapped()
        .with(Command::AddRdsService(rds()))
        .when(Command::AddRdsService(AddRdsService {
            node_name: "other".into(),
            service_name: "other".into(),
            ..rds()
        }))
        .rejected(
            ErrorClass::AlreadyExists,
            "Node with instance \"mydb\" and region \"us-east-1\" already exists.",
        );
}

// --- Azure ---

#[test]
fn azure_add_creates_node_service_exporter_and_agents() {
    Given::bootstrapped()
        .when(Command::AddAzureDatabase(AddAzureDatabase {
            azure_database_exporter: true,
            qan: true,
            ..azure()
        }))
        .emits(|e| {
            assert_eq!(
                types(e),
                [
                    "NodeAdded",
                    "ServiceAdded",
                    "AgentAdded",
                    "AgentAdded",
                    "AgentAdded"
                ]
            );
            let n = the_node(e);
            assert_eq!(n.node_type, NodeType::RemoteAzureDatabase);
            assert_eq!(
                (n.node_name.as_str(), n.address.as_str()),
                ("myazure", "myazure")
            );
            assert_eq!(n.region.as_deref(), Some("eastus"));
            let s = the_service(e);
            assert_eq!(
                (s.service_type, s.service_name.as_str()),
                (ServiceType::Mysql, "myazure")
            );
            assert_eq!(
                agent_types(e),
                [
                    AgentType::MysqldExporter,
                    AgentType::QanMysqlPerfschemaAgent,
                    AgentType::AzureDatabaseExporter
                ]
            );
            for a in agents_added(e) {
                assert_eq!(a.pmm_agent_id, Some("pmm-server".into()));
            }
            // The management path attaches the azure exporter to the service.
            let az = agent_of(e, AgentType::AzureDatabaseExporter);
            assert_eq!((az.service_id, az.node_id), (Some(s.service_id), None));
            assert_eq!(az.azure.resource_type, "mysql");
            assert_eq!(az.azure.subscription_id, "sub");
            assert_eq!(az.log_level, Some(LogLevel::Fatal));
        });
}

#[test]
fn azure_postgresql_uses_postgres_exporter_and_resource_type() {
    Given::bootstrapped()
        .when(Command::AddAzureDatabase(AddAzureDatabase {
            kind: Some(AzureDatabaseType::Postgresql),
            port: 5432,
            azure_database_exporter: true,
            ..azure()
        }))
        .emits(|e| {
            assert_eq!(the_service(e).database_name, "postgres");
            assert_eq!(
                agent_types(e),
                [
                    AgentType::PostgresExporter,
                    AgentType::AzureDatabaseExporter
                ]
            );
            assert_eq!(
                agent_of(e, AgentType::AzureDatabaseExporter)
                    .azure
                    .resource_type,
                "postgres"
            );
        });
}

#[test]
fn azure_requires_region_instance_address_port_username_and_type() {
    let cases = [
        (
            AddAzureDatabase {
                region: String::new(),
                ..azure()
            },
            "region",
        ),
        (
            AddAzureDatabase {
                instance_id: String::new(),
                ..azure()
            },
            "instance_id",
        ),
        (
            AddAzureDatabase {
                address: String::new(),
                ..azure()
            },
            "address",
        ),
        (AddAzureDatabase { port: 0, ..azure() }, "port"),
        (
            AddAzureDatabase {
                username: String::new(),
                ..azure()
            },
            "username",
        ),
        (
            AddAzureDatabase {
                kind: None,
                ..azure()
            },
            "Unsupported Azure database type",
        ),
    ];
    for (cmd, fragment) in cases {
        Given::bootstrapped()
            .when(Command::AddAzureDatabase(cmd))
            .rejected(ErrorClass::InvalidArgument, fragment);
    }
}

// --- RemoveService ---

#[test]
fn remove_service_by_id_cascades_its_agents() {
    let (given, node, pmm_agent) = host();
    let given = given.with(add(common("m", &node, &pmm_agent), mysql(true, false)));
    let svc = given.service_id();
    given.when(remove(svc.as_str(), None)).emits(|e| {
        assert_eq!(types(e), ["AgentRemoved", "AgentRemoved", "ServiceRemoved"]);
        assert_eq!(trail(e)[2], format!("ServiceRemoved:{svc}"));
    });
}

#[test]
fn remove_service_by_name() {
    let (given, node, pmm_agent) = host();
    let given = given.with(add(
        common("mysql-prod", &node, &pmm_agent),
        mysql(false, false),
    ));
    let svc = given.service_id();
    given
        .when(remove("mysql-prod", Some(ServiceType::Mysql)))
        .emits(|e| assert_eq!(trail(e)[1], format!("ServiceRemoved:{svc}")));
}

#[test]
fn remove_service_name_ending_in_a_uuid_is_treated_as_an_id() {
    let name = "svc-0b4ad1e4-bd3c-4f33-a1d9-7f6ec1d8a8c3";
    let (given, node, pmm_agent) = host();
    given
        .with(add(common(name, &node, &pmm_agent), mysql(false, false)))
        .when(remove(name, None))
        .rejected(
            ErrorClass::NotFound,
            &format!("Service with ID {name:?} not found."),
        );
}

#[test]
fn remove_service_with_the_wrong_type_is_invalid_argument() {
    let (given, node, pmm_agent) = host();
    given
        .with(add(common("m", &node, &pmm_agent), mysql(false, false)))
        .when(remove("m", Some(ServiceType::Postgresql)))
        .rejected(ErrorClass::InvalidArgument, "wrong service type");
}

#[test]
fn remove_service_requires_an_id_or_name() {
    Given::bootstrapped().when(remove("", None)).rejected(
        ErrorClass::InvalidArgument,
        "service_id or service_name expected",
    );
}

#[test]
fn remove_service_unknown_is_not_found() {
    Given::bootstrapped().when(remove("ghost", None)).rejected(
        ErrorClass::NotFound,
        "Service with name \"ghost\" not found.",
    );
    let id = "0b4ad1e4-bd3c-4f33-a1d9-7f6ec1d8a8c3";
    Given::bootstrapped().when(remove(id, None)).rejected(
        ErrorClass::NotFound,
        &format!("Service with ID {id:?} not found."),
    );
}

#[test]
fn removing_the_last_rds_service_removes_the_rds_node_and_its_exporter() {
    let given = Given::bootstrapped().with(Command::AddRdsService(AddRdsService {
        rds_exporter: true,
        qan: true,
        ..rds()
    }));
    let node = given.node_id();
    let rds_exporter = given.agent_id(AgentType::RdsExporter);
    given.when(remove("mydb", None)).emits(|e| {
        assert_eq!(
            types(e),
            [
                "AgentRemoved",
                "AgentRemoved",
                "ServiceRemoved",
                "AgentRemoved",
                "NodeRemoved"
            ]
        );
        let t = trail(e);
        assert_eq!(t[3], format!("AgentRemoved:{rds_exporter}"));
        assert_eq!(t[4], format!("NodeRemoved:{node}"));
    });
}

#[test]
fn removing_the_last_azure_service_removes_the_azure_node() {
    let given = Given::bootstrapped().with(Command::AddAzureDatabase(AddAzureDatabase {
        azure_database_exporter: true,
        ..azure()
    }));
    let node = given.node_id();
    given
        .when(remove("myazure", Some(ServiceType::Mysql)))
        .emits(|e| {
            assert_eq!(
                types(e),
                [
                    "AgentRemoved",
                    "AgentRemoved",
                    "ServiceRemoved",
                    "NodeRemoved"
                ]
            );
            assert_eq!(trail(e)[3], format!("NodeRemoved:{node}"));
        });
}
