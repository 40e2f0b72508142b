//! Inventory agent rules: target invariants, node-type and service-type compatibility, push
//! mode and pmm-agent versions, external exporters, defaults, ChangeAgent and removal.

#[path = "common/given.rs"]
mod given;

use given::*;
use pmmcp::commands::agents::{AddAgent, ChangeAgent, RemoveAgent, ResolutionsChange};
use pmmcp::commands::nodes::AddNode;
use pmmcp::commands::{Command, ErrorClass};
use pmmcp::domain::agent::MetricsResolutions;
use pmmcp::domain::{
    AgentId, AgentStatus, AgentType, LogLevel, NodeId, NodeType, ServiceId, ServiceType,
};
use pmmcp::events::Event;
use std::time::Duration;

/// A registered generic node `host1` (pmm-agent + node_exporter) with a mysql service.
struct Host {
    given: Given,
    node: NodeId,
    pmm_agent: AgentId,
    mysql: ServiceId,
}

fn host() -> Host {
    let mut given = Given::bootstrapped().with(Command::RegisterNode(register("host1")));
    let node = given.node_id();
    let pmm_agent = given.agent_id(AgentType::PmmAgent);
    given.run(Command::AddService(service(
        ServiceType::Mysql,
        "mysql1",
        &node,
    )));
    let mysql = given.service_id();
    Host {
        given,
        node,
        pmm_agent,
        mysql,
    }
}

fn for_service(t: AgentType, pmm_agent: &AgentId, service: &ServiceId) -> AddAgent {
    let mut a = AddAgent::new(t);
    a.pmm_agent_id = Some(pmm_agent.clone());
    a.service_id = Some(service.clone());
    a.username = Some("pmm".into());
    a
}

fn external(runs_on: &NodeId, service: &ServiceId, push: bool) -> AddAgent {
    let mut a = AddAgent::new(AgentType::ExternalExporter);
    a.runs_on_node_id = Some(runs_on.clone());
    a.service_id = Some(service.clone());
    a.listen_port = Some(9100);
    a.push_metrics = push;
    a
}

fn add(a: AddAgent) -> Command {
    Command::AddAgent(a)
}

fn pmm_agent_on(node: &NodeId) -> Command {
    let mut a = AddAgent::new(AgentType::PmmAgent);
    a.runs_on_node_id = Some(node.clone());
    add(a)
}

/// Records the version a pmm-agent reported (an observation).
fn with_version(given: Given, pmm_agent: &AgentId, version: &str) -> Given {
    let mut agent = given.agent(pmm_agent);
    agent.version = Some(version.to_owned());
    given.event(Event::AgentChanged { agent })
}

fn remove(id: &AgentId, force: bool) -> Command {
    Command::RemoveAgent(RemoveAgent {
        agent_id: id.clone(),
        force,
    })
}

fn change(c: ChangeAgent) -> Command {
    Command::ChangeAgent(c)
}

#[test]
fn pmm_agent_runs_on_an_existing_node() {
    let given = Given::bootstrapped().with(generic("host1"));
    let node = given.node_id();
    given.when(pmm_agent_on(&node)).emits(|e| {
        let a = the_agent(e);
        assert_eq!(a.agent_type, AgentType::PmmAgent);
        assert_eq!(a.runs_on_node_id, Some(node.clone()));
        assert_eq!(
            (a.pmm_agent_id, a.node_id, a.service_id),
            (None, None, None)
        );
        assert_eq!(a.status, AgentStatus::None);
    });
}

#[test]
fn pmm_agent_needs_runs_on_node_id_of_an_existing_node() {
    Given::bootstrapped()
        .when(add(AddAgent::new(AgentType::PmmAgent)))
        .rejected(ErrorClass::InvalidArgument, "runs_on_node_id");
    Given::bootstrapped()
        .when(pmm_agent_on(&"nope".into()))
        .rejected(ErrorClass::NotFound, "Node with ID \"nope\" not found.");
}

#[test]
fn pmm_agent_may_run_on_a_remote_node() {
    let given = Given::bootstrapped().with(Command::AddNode(node(NodeType::Remote, "r1", "r1")));
    let node = given.node_id();
    given.when(pmm_agent_on(&node)).emits_types(&["AgentAdded"]);
}

#[test]
fn non_pmm_agents_need_an_existing_pmm_agent() {
    let h = host();
    let mut a = for_service(AgentType::MysqldExporter, &h.pmm_agent, &h.mysql);
    a.pmm_agent_id = None;
    h.given
        .when(add(a))
        .rejected(ErrorClass::InvalidArgument, "pmm_agent_id");
    let h = host();
    h.given
        .when(add(for_service(
            AgentType::MysqldExporter,
            &"ghost".into(),
            &h.mysql,
        )))
        .rejected(ErrorClass::NotFound, "Agent with ID \"ghost\" not found.");
}

#[test]
fn pmm_agent_id_must_reference_a_pmm_agent() {
    let h = host();
    let node_exporter = h.given.agent_id(AgentType::NodeExporter);
    h.given
        .when(add(for_service(
            AgentType::MysqldExporter,
            &node_exporter,
            &h.mysql,
        )))
        .rejected(ErrorClass::InvalidArgument, "is not a pmm-agent");
}

#[test]
fn node_exporter_takes_the_node_of_its_pmm_agent() {
    let h = host();
    let mut a = AddAgent::new(AgentType::NodeExporter);
    a.pmm_agent_id = Some(h.pmm_agent.clone());
    h.given.when(add(a)).emits(|e| {
        let a = the_agent(e);
        assert_eq!(a.node_id, Some(h.node.clone()));
        assert_eq!(a.pmm_agent_id, Some(h.pmm_agent.clone()));
        assert_eq!((a.runs_on_node_id, a.service_id), (None, None));
    });
}

#[test]
fn every_agent_has_exactly_one_of_runs_on_node_id_or_pmm_agent_id_and_one_target() {
    let mut given = Given::bootstrapped().with(Command::RegisterNode(register("host1")));
    let node = given.node_id();
    let pmm_agent = given.agent_id(AgentType::PmmAgent);
    given.run(Command::AddService(service(
        ServiceType::Postgresql,
        "pg",
        &node,
    )));
    let pg = given.service_id();
    given.run(add(for_service(
        AgentType::PostgresExporter,
        &pmm_agent,
        &pg,
    )));
    given.run(add(for_service(
        AgentType::QanPostgresqlPgstatementsAgent,
        &pmm_agent,
        &pg,
    )));
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &node,
    )));
    let ext = given.service_id();
    given.run(add(external(&node, &ext, false)));
    for a in given.state().agents.values() {
        assert!(
            a.runs_on_node_id.is_some() != a.pmm_agent_id.is_some(),
            "{a:?}"
        );
        if a.agent_type == AgentType::PmmAgent {
            assert!(a.node_id.is_none() && a.service_id.is_none(), "{a:?}");
        } else {
            assert!(a.node_id.is_some() != a.service_id.is_some(), "{a:?}");
        }
    }
}

#[test]
fn remote_nodes_accept_only_their_own_exporter_type() {
    // node_exporter on a pmm-agent that runs on a remote node
    let given = Given::bootstrapped().with(Command::AddNode(node(NodeType::Remote, "r1", "r1")));
    let remote = given.node_id();
    let given = given.with(pmm_agent_on(&remote));
    let mut a = AddAgent::new(AgentType::NodeExporter);
    a.pmm_agent_id = Some(given.agent_id(AgentType::PmmAgent));
    given.when(add(a)).rejected(
        ErrorClass::FailedPrecondition,
        "invalid combination of node type remote and agent type node_exporter",
    );

    let rds_node = |t: NodeType| {
        Command::AddNode(AddNode {
            region: Some("us-east-1".into()),
            ..node(t, "n1", "mydb")
        })
    };
    let node_agent = |t: AgentType, node: NodeId| {
        let mut a = AddAgent::new(t);
        a.pmm_agent_id = Some("pmm-server".into());
        a.node_id = Some(node);
        a.azure.resource_type = "mysql".into();
        add(a)
    };
    for (node_type, ok, bad) in [
        (
            NodeType::RemoteRds,
            AgentType::RdsExporter,
            AgentType::AzureDatabaseExporter,
        ),
        (
            NodeType::RemoteAzureDatabase,
            AgentType::AzureDatabaseExporter,
            AgentType::RdsExporter,
        ),
    ] {
        let given = Given::bootstrapped().with(rds_node(node_type));
        let id = given.node_id();
        given.when(node_agent(bad, id)).rejected(
            ErrorClass::FailedPrecondition,
            &format!(
                "invalid combination of node type {} and agent type {}",
                node_type.as_str(),
                bad.as_str()
            ),
        );
        let given = Given::bootstrapped().with(rds_node(node_type));
        let id = given.node_id();
        given.when(node_agent(ok, id.clone())).emits(|e| {
            assert_eq!(the_agent(e).node_id, Some(id));
        });
    }
}

#[test]
fn generic_and_container_nodes_accept_any_node_level_agent() {
    for t in [NodeType::Generic, NodeType::Container] {
        let given = Given::bootstrapped().with(Command::AddNode(node(t, "n1", "10.0.0.1")));
        let id = given.node_id();
        let mut a = AddAgent::new(AgentType::RdsExporter);
        a.pmm_agent_id = Some("pmm-server".into());
        a.node_id = Some(id);
        given.when(add(a)).emits_types(&["AgentAdded"]);
    }
}

#[test]
fn agent_service_type_compatibility_table() {
    use AgentType as A;
    use ServiceType as S;
    let table = [
        (A::MysqldExporter, S::Mysql),
        (A::QanMysqlPerfschemaAgent, S::Mysql),
        (A::QanMysqlSlowlogAgent, S::Mysql),
        (A::MongodbExporter, S::Mongodb),
        (A::QanMongodbProfilerAgent, S::Mongodb),
        (A::QanMongodbMongologAgent, S::Mongodb),
        (A::PostgresExporter, S::Postgresql),
        (A::QanPostgresqlPgstatementsAgent, S::Postgresql),
        (A::QanPostgresqlPgstatmonitorAgent, S::Postgresql),
        (A::ProxysqlExporter, S::Proxysql),
        (A::ValkeyExporter, S::Valkey),
        // The inventory path does not let an external exporter scrape HAProxy.
        (A::ExternalExporter, S::External),
    ];
    let mut given = Given::bootstrapped().with(generic("host1"));
    let node = given.node_id();
    let mut services = Vec::new();
    for st in ServiceType::ALL {
        given.run(Command::AddService(service(st, st.as_str(), &node)));
        services.push((st, given.service_id()));
    }
    let base = given.state().clone();
    for (agent_type, allowed) in table {
        for (st, sid) in &services {
            let mut a = for_service(agent_type, &"pmm-server".into(), sid);
            if agent_type == A::ExternalExporter {
                a = external(&node, sid, false);
            }
            let result =
                pmmcp::commands::decide(&base, &add(a), &pmmcp::commands::Ctx::fixed(now(), 99));
            if *st == allowed {
                let events = result.unwrap_or_else(|r| {
                    panic!(
                        "{} on {}: {}",
                        agent_type.as_str(),
                        st.as_str(),
                        r.message()
                    )
                });
                assert_eq!(the_agent(&events).service_id.as_ref(), Some(sid));
            } else {
                let r = result.expect_err(&format!("{} on {}", agent_type.as_str(), st.as_str()));
                assert_eq!(r.class, ErrorClass::FailedPrecondition);
                assert_eq!(
                    r.message(),
                    format!(
                        "invalid combination of service type {} and agent type {}",
                        st.as_str(),
                        agent_type.as_str()
                    )
                );
            }
        }
    }
}

#[test]
fn service_agents_need_an_existing_service() {
    let h = host();
    h.given
        .when(add(for_service(
            AgentType::MysqldExporter,
            &h.pmm_agent,
            &"nope".into(),
        )))
        .rejected(ErrorClass::NotFound, "Service with ID \"nope\" not found.");
    let h = host();
    let mut a = for_service(AgentType::MysqldExporter, &h.pmm_agent, &h.mysql);
    a.service_id = None;
    h.given
        .when(add(a))
        .rejected(ErrorClass::InvalidArgument, "service_id");
}

#[test]
fn sql_agents_need_a_username_mongodb_agents_do_not() {
    let h = host();
    let mut a = for_service(AgentType::MysqldExporter, &h.pmm_agent, &h.mysql);
    a.username = None;
    h.given
        .when(add(a))
        .rejected(ErrorClass::InvalidArgument, "username");
    let mut given = Given::bootstrapped().with(generic("h"));
    let node = given.node_id();
    given.run(Command::AddService(service(
        ServiceType::Mongodb,
        "mongo",
        &node,
    )));
    let mut a = for_service(
        AgentType::MongodbExporter,
        &"pmm-server".into(),
        &given.service_id(),
    );
    a.username = None;
    given
        .when(add(a))
        .emits(|e| assert_eq!(the_agent(e).username, None));
}

#[test]
fn default_log_levels_per_agent_type() {
    let mut given = Given::bootstrapped().with(generic("h"));
    let node = given.node_id();
    let mut ids = Vec::new();
    for st in [
        ServiceType::Mysql,
        ServiceType::Mongodb,
        ServiceType::Postgresql,
        ServiceType::Valkey,
        ServiceType::Proxysql,
    ] {
        given.run(Command::AddService(service(st, st.as_str(), &node)));
        ids.push(given.service_id());
    }
    let pmm = AgentId::from("pmm-server");
    use AgentType as A;
    for (t, sid, level) in [
        (A::MysqldExporter, &ids[0], Some(LogLevel::Error)),
        (A::QanMysqlSlowlogAgent, &ids[0], Some(LogLevel::Fatal)),
        (A::MongodbExporter, &ids[1], Some(LogLevel::Fatal)),
        (A::QanMongodbProfilerAgent, &ids[1], Some(LogLevel::Fatal)),
        (A::PostgresExporter, &ids[2], Some(LogLevel::Error)),
        (
            A::QanPostgresqlPgstatmonitorAgent,
            &ids[2],
            Some(LogLevel::Fatal),
        ),
        (A::ValkeyExporter, &ids[3], Some(LogLevel::Error)),
        (A::ProxysqlExporter, &ids[4], None),
    ] {
        let events = given.run(add(for_service(t, &pmm, sid)));
        assert_eq!(the_agent(&events).log_level, level, "{}", t.as_str());
    }
    // node_exporter (inventory): error; an explicit level wins.
    let mut a = AddAgent::new(A::NodeExporter);
    a.pmm_agent_id = Some(pmm.clone());
    assert_eq!(
        the_agent(&given.run(add(a.clone()))).log_level,
        Some(LogLevel::Error)
    );
    a.log_level = Some(LogLevel::Debug);
    assert_eq!(
        the_agent(&given.run(add(a))).log_level,
        Some(LogLevel::Debug)
    );
}

#[test]
fn new_agents_start_unknown_except_pmm_agent_and_external_exporter() {
    let h = host();
    let mut given = h.given;
    let exporter = given.run(add(for_service(
        AgentType::MysqldExporter,
        &h.pmm_agent,
        &h.mysql,
    )));
    assert_eq!(the_agent(&exporter).status, AgentStatus::Unknown);
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &h.node,
    )));
    let ext = given.service_id();
    let ext = given.run(add(external(&h.node, &ext, false)));
    assert_eq!(the_agent(&ext).status, AgentStatus::None);
}

#[test]
fn external_exporter_listen_port_must_be_in_1_to_65535() {
    for bad in [None, Some(0), Some(65_536)] {
        let h = host();
        let mut given = h.given;
        given.run(Command::AddService(service(
            ServiceType::External,
            "ext",
            &h.node,
        )));
        let mut a = external(&h.node, &given.service_id(), false);
        a.listen_port = bad;
        given
            .when(add(a))
            .rejected(ErrorClass::InvalidArgument, "listen_port");
    }
}

#[test]
fn external_exporter_defaults_scheme_http_and_metrics_path_metrics() {
    let h = host();
    let mut given = h.given;
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &h.node,
    )));
    let ext = given.service_id();
    given.run(add(external(&h.node, &ext, false)));
    let a = given.agent(&given.agent_id(AgentType::ExternalExporter));
    assert_eq!(a.listen_port, Some(9100));
    assert_eq!(a.exporter.metrics_scheme.as_deref(), Some("http"));
    assert_eq!(a.exporter.metrics_path.as_deref(), Some("/metrics"));
    let mut bad = external(&h.node, &ext, false);
    bad.scheme = Some("ftp".into());
    given
        .when(add(bad))
        .rejected(ErrorClass::InvalidArgument, "scheme");
}

#[test]
fn external_exporter_pull_mode_runs_on_the_node() {
    let h = host();
    let mut given = h.given;
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &h.node,
    )));
    let ext = given.service_id();
    given.when(add(external(&h.node, &ext, false))).emits(|e| {
        let a = the_agent(e);
        assert_eq!(a.runs_on_node_id, Some(h.node.clone()));
        assert_eq!(a.pmm_agent_id, None);
        assert!(!a.exporter.push_metrics);
    });
}

#[test]
fn external_exporter_push_mode_needs_exactly_one_pmm_agent_on_the_node() {
    // none
    let mut given = Given::bootstrapped().with(generic("bare"));
    let bare = given.node_id();
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &bare,
    )));
    let ext = given.service_id();
    given.when(add(external(&bare, &ext, true))).rejected(
        ErrorClass::NotFound,
        &format!("cannot find any pmm-agent by NodeID {:?}", bare.as_str()),
    );
    // exactly one: the exporter moves to that pmm-agent
    let h = host();
    let mut given = h.given;
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &h.node,
    )));
    let ext = given.service_id();
    let events = given.run(add(external(&h.node, &ext, true)));
    let a = the_agent(&events);
    assert_eq!(a.pmm_agent_id, Some(h.pmm_agent.clone()));
    assert_eq!(a.runs_on_node_id, None);
    assert!(a.exporter.push_metrics);
    // two
    given
        .with(pmm_agent_on(&h.node))
        .when(add(external(&h.node, &ext, true)))
        .rejected(ErrorClass::FailedPrecondition, "found 2 pmm-agents");
}

#[test]
fn push_mode_needs_pmm_agent_2_12_or_newer() {
    let push_exporter = |h: &Host| {
        let mut a = for_service(AgentType::MysqldExporter, &h.pmm_agent, &h.mysql);
        a.push_metrics = true;
        add(a)
    };
    let h = host();
    let cmd = push_exporter(&h);
    with_version(h.given, &h.pmm_agent, "2.11.1")
        .when(cmd)
        .rejected(
            ErrorClass::FailedPrecondition,
            "doesn't support push metrics mode",
        );
    for ok in ["2.12.0", "3.0.0"] {
        let h = host();
        let cmd = push_exporter(&h);
        with_version(h.given, &h.pmm_agent, ok)
            .when(cmd)
            .emits(|e| assert!(the_agent(e).exporter.push_metrics));
    }
    // An unknown version counts as supported.
    let h = host();
    let cmd = push_exporter(&h);
    h.given.when(cmd).emits_types(&["AgentAdded"]);
    // Pull mode has no version requirement.
    let h = host();
    let cmd = add(for_service(
        AgentType::MysqldExporter,
        &h.pmm_agent,
        &h.mysql,
    ));
    with_version(h.given, &h.pmm_agent, "2.0.0")
        .when(cmd)
        .emits_types(&["AgentAdded"]);
}

#[test]
fn vmagent_nomad_and_rta_agents_are_created_by_the_server_only() {
    for t in [
        AgentType::VmAgent,
        AgentType::NomadAgent,
        AgentType::RtaMongodbAgent,
    ] {
        let mut a = AddAgent::new(t);
        a.pmm_agent_id = Some("pmm-server".into());
        Given::bootstrapped()
            .when(add(a))
            .rejected(ErrorClass::InvalidArgument, "created by the server");
    }
}

#[test]
fn azure_exporter_resource_type_must_be_mysql_maria_or_postgres() {
    let azure_node = || {
        Command::AddNode(AddNode {
            region: Some("eastus".into()),
            ..node(NodeType::RemoteAzureDatabase, "az1", "mydb")
        })
    };
    for (rt, ok) in [
        ("mysql", true),
        ("maria", true),
        ("postgres", true),
        ("oracle", false),
        ("", false),
    ] {
        let given = Given::bootstrapped().with(azure_node());
        let mut a = AddAgent::new(AgentType::AzureDatabaseExporter);
        a.pmm_agent_id = Some("pmm-server".into());
        a.node_id = Some(given.node_id());
        a.azure.resource_type = rt.into();
        let then = given.when(add(a));
        if ok {
            then.emits(|e| assert_eq!(the_agent(e).azure.resource_type, rt));
        } else {
            then.rejected(ErrorClass::InvalidArgument, "azure_database_resource_type");
        }
    }
}

#[test]
fn qan_max_query_length_must_be_minus_1_0_or_positive() {
    let h = host();
    let mut a = for_service(AgentType::QanMysqlPerfschemaAgent, &h.pmm_agent, &h.mysql);
    a.qan.max_query_length = -2;
    h.given
        .when(add(a))
        .rejected(ErrorClass::InvalidArgument, "max_query_length");
}

#[test]
fn removing_a_missing_agent_is_not_found() {
    Given::bootstrapped()
        .when(remove(&"nope".into(), true))
        .rejected(ErrorClass::NotFound, "Agent with ID \"nope\" not found.");
}

#[test]
fn pmm_server_pmm_agent_cannot_be_removed_permission_denied() {
    for force in [false, true] {
        Given::bootstrapped()
            .when(remove(&"pmm-server".into(), force))
            .rejected(
                ErrorClass::PermissionDenied,
                "pmm-agent on PMM Server can't be removed.",
            );
    }
}

#[test]
fn removing_a_pmm_agent_with_agents_without_force_is_failed_precondition() {
    let h = host();
    h.given.when(remove(&h.pmm_agent, false)).rejected(
        ErrorClass::FailedPrecondition,
        &format!("pmm-agent with ID {} has agents.", h.pmm_agent),
    );
}

#[test]
fn force_removing_a_pmm_agent_removes_its_agents_first() {
    let h = host();
    let node_exporter = h.given.agent_id(AgentType::NodeExporter);
    h.given.when(remove(&h.pmm_agent, true)).emits(|e| {
        assert_eq!(
            trail(e),
            [
                format!("AgentRemoved:{node_exporter}"),
                format!("AgentRemoved:{}", h.pmm_agent),
            ]
        )
    });
}

#[test]
fn removing_an_agent_without_children_emits_agent_removed() {
    let h = host();
    let node_exporter = h.given.agent_id(AgentType::NodeExporter);
    h.given
        .when(remove(&node_exporter, false))
        .emits(|e| assert_eq!(trail(e), [format!("AgentRemoved:{node_exporter}")]));
}

#[test]
fn change_agent_type_must_match_the_agent() {
    let h = host();
    let node_exporter = h.given.agent_id(AgentType::NodeExporter);
    h.given
        .when(change(ChangeAgent::new(
            node_exporter,
            AgentType::MysqldExporter,
        )))
        .rejected(
            ErrorClass::FailedPrecondition,
            "is a node_exporter, not a mysqld_exporter",
        );
}

#[test]
fn pmm_agent_cannot_be_changed() {
    let h = host();
    h.given
        .when(change(ChangeAgent {
            enable: Some(false),
            ..ChangeAgent::new(h.pmm_agent.clone(), AgentType::PmmAgent)
        }))
        .rejected(ErrorClass::InvalidArgument, "pmm-agent can't be changed.");
}

#[test]
fn change_agent_on_a_missing_agent_is_not_found() {
    Given::bootstrapped()
        .when(change(ChangeAgent::new(
            "nope".into(),
            AgentType::NodeExporter,
        )))
        .rejected(ErrorClass::NotFound, "Agent with ID \"nope\" not found.");
}

#[test]
fn change_agent_enable_false_disables_and_absent_fields_keep() {
    let h = host();
    let id = h.given.agent_id(AgentType::NodeExporter);
    let before = h.given.agent(&id);
    h.given
        .when(change(ChangeAgent {
            enable: Some(false),
            ..ChangeAgent::new(id, AgentType::NodeExporter)
        }))
        .emits(|e| {
            assert_eq!(types(e), ["AgentChanged"]);
            let a = the_agent(e);
            assert!(a.disabled);
            assert_eq!(a.exporter, before.exporter);
            assert_eq!(a.log_level, before.log_level);
            assert_eq!(a.updated_at, now());
        });
}

#[test]
fn change_agent_custom_labels_replace_and_empty_clears() {
    let h = host();
    let id = h.given.agent_id(AgentType::NodeExporter);
    let given = h.given.with(change(ChangeAgent {
        custom_labels: Some(labels(&[("a", "1")])),
        ..ChangeAgent::new(id.clone(), AgentType::NodeExporter)
    }));
    assert_eq!(given.agent(&id).custom_labels, labels(&[("a", "1")]));
    let given = given.with(change(ChangeAgent {
        custom_labels: Some(labels(&[])),
        ..ChangeAgent::new(id.clone(), AgentType::NodeExporter)
    }));
    assert!(given.agent(&id).custom_labels.is_empty());
    given
        .when(change(ChangeAgent {
            custom_labels: Some(labels(&[("__x", "1")])),
            ..ChangeAgent::new(id, AgentType::NodeExporter)
        }))
        .rejected(ErrorClass::InvalidArgument, "Invalid label name \"__x\".");
}

#[test]
fn change_agent_metrics_resolutions_override_and_all_zero_clears() {
    let h = host();
    let id = h.given.agent_id(AgentType::NodeExporter);
    let res = |hr, mr, lr| {
        change(ChangeAgent {
            metrics_resolutions: Some(ResolutionsChange { hr, mr, lr }),
            ..ChangeAgent::new(id.clone(), AgentType::NodeExporter)
        })
    };
    let secs = |s| Some(Duration::from_secs(s));
    let given = h.given.with(res(secs(2), None, secs(120)));
    assert_eq!(
        given.agent(&id).exporter.metrics_resolutions,
        Some(MetricsResolutions {
            hr_secs: Some(2),
            mr_secs: None,
            lr_secs: Some(120)
        })
    );
    given
        .when(res(secs(0), None, secs(0)))
        .emits(|e| assert_eq!(the_agent(e).exporter.metrics_resolutions, None));
    let h = host();
    h.given
        .when(change(ChangeAgent {
            metrics_resolutions: Some(ResolutionsChange {
                hr: Some(Duration::from_millis(1500)),
                ..ResolutionsChange::default()
            }),
            ..ChangeAgent::new(id.clone(), AgentType::NodeExporter)
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "hr: should be a natural number of seconds.",
        );
}

#[test]
fn change_agent_push_moves_an_external_exporter_between_runs_on_and_pmm_agent() {
    let h = host();
    let mut given = h.given;
    given.run(Command::AddService(service(
        ServiceType::External,
        "ext",
        &h.node,
    )));
    let ext = given.service_id();
    given.run(add(external(&h.node, &ext, false)));
    let id = given.agent_id(AgentType::ExternalExporter);
    let push = |on| {
        change(ChangeAgent {
            enable_push_metrics: Some(on),
            ..ChangeAgent::new(id.clone(), AgentType::ExternalExporter)
        })
    };
    let given = given.with(push(true));
    let a = given.agent(&id);
    assert_eq!(
        (
            a.pmm_agent_id.clone(),
            a.runs_on_node_id.clone(),
            a.exporter.push_metrics
        ),
        (Some(h.pmm_agent.clone()), None, true)
    );
    given.when(push(false)).emits(|e| {
        let a = the_agent(e);
        assert_eq!(
            (a.pmm_agent_id, a.runs_on_node_id, a.exporter.push_metrics),
            (None, Some(h.node.clone()), false)
        );
    });
}

#[test]
fn change_agent_push_checks_the_pmm_agent_version() {
    let h = host();
    let id = h.given.agent_id(AgentType::NodeExporter);
    // RegisterNode created the node_exporter in push mode; switch it to pull first.
    let given = h.given.with(change(ChangeAgent {
        enable_push_metrics: Some(false),
        ..ChangeAgent::new(id.clone(), AgentType::NodeExporter)
    }));
    with_version(given, &h.pmm_agent, "2.9.0")
        .when(change(ChangeAgent {
            enable_push_metrics: Some(true),
            ..ChangeAgent::new(id, AgentType::NodeExporter)
        }))
        .rejected(
            ErrorClass::FailedPrecondition,
            "doesn't support push metrics mode",
        );
}

#[test]
fn change_agent_push_on_a_qan_agent_is_invalid() {
    let h = host();
    let mut given = h.given;
    given.run(add(for_service(
        AgentType::QanMysqlPerfschemaAgent,
        &h.pmm_agent,
        &h.mysql,
    )));
    let id = given.agent_id(AgentType::QanMysqlPerfschemaAgent);
    given
        .when(change(ChangeAgent {
            enable_push_metrics: Some(true),
            ..ChangeAgent::new(id, AgentType::QanMysqlPerfschemaAgent)
        }))
        .rejected(ErrorClass::InvalidArgument, "has no push metrics mode");
}

#[test]
fn change_agent_that_changes_nothing_emits_nothing() {
    let h = host();
    let id = h.given.agent_id(AgentType::NodeExporter);
    h.given
        .when(change(ChangeAgent {
            enable: Some(true),
            ..ChangeAgent::new(id, AgentType::NodeExporter)
        }))
        .emits_nothing();
}
