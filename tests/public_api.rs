//! The public API (PMM v3's inventory, management and server services) over gRPC and over
//! REST: every route's auth, success and error classes; PMM's documented JSON bodies; bad
//! input that changes nothing; reflection and health; read-your-writes across a cluster.

mod support;

use pmmcp::domain::Role;
use pmmcp::grpc::pb::inventory::v1 as inv;
use pmmcp::grpc::pb::management::v1 as mgmt;
use pmmcp::grpc::pb::server::v1 as srv;
use serde_json::{Value, json};
use support::cluster::{Opts, TestNode, three_nodes};
use support::*;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Server {
    node: TestNode,
    base: String,
    channel: Channel,
    admin: String,
    viewer: String,
}

async fn server() -> Server {
    connect(TestNode::single().await).await
}

async fn connect(node: TestNode) -> Server {
    let addr = node.serve_public().await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let admin = node.token("admin", Role::Admin).await;
    let viewer = node.token("viewer", Role::Viewer).await;
    Server {
        node,
        base: format!("http://{addr}"),
        channel,
        admin,
        viewer,
    }
}

/// A REST call: status and JSON body.
async fn rest(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut r = client.request(method.parse().expect("method"), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn nodes(s: &Server) -> inv::nodes_service_client::NodesServiceClient<Channel> {
    inv::nodes_service_client::NodesServiceClient::new(s.channel.clone())
}
fn services(s: &Server) -> inv::services_service_client::ServicesServiceClient<Channel> {
    inv::services_service_client::ServicesServiceClient::new(s.channel.clone())
}
fn agents(s: &Server) -> inv::agents_service_client::AgentsServiceClient<Channel> {
    inv::agents_service_client::AgentsServiceClient::new(s.channel.clone())
}
fn management(s: &Server) -> mgmt::management_service_client::ManagementServiceClient<Channel> {
    mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone())
}
fn server_svc(s: &Server) -> srv::server_service_client::ServerServiceClient<Channel> {
    srv::server_service_client::ServerServiceClient::new(s.channel.clone())
}

async fn head(s: &Server) -> (i64, Vec<u8>) {
    support::cluster::head(&s.node.pool).await
}

/// A path of `route` with its parameters filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "00000000-0000-4000-8000-000000000000"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_and_commands_need_an_admin() {
    let s = server().await;
    let auditor = s.node.token("auditor", Role::Auditor).await;
    let before = head(&s).await;
    for route in pmmcp::grpc::routes() {
        let url = format!("{}{}", s.base, concrete(route.path));
        let body = route.body.then_some("{}");
        let (status, answer) = rest(route.method, &url, None, body).await;
        if route.access == pmmcp::grpc::Access::Open {
            assert_ne!(status, 401, "{} is open", route.rpc);
            continue;
        }
        assert_eq!(status, 401, "{} without a token: {answer}", route.rpc);
        assert_eq!(answer["error"], "Unauthenticated", "{}", route.rpc);
        let (status, _) = rest(route.method, &url, Some("not-a-token"), body).await;
        assert_eq!(status, 401, "{} with an unknown token", route.rpc);
        let wrong = match route.access {
            pmmcp::grpc::Access::Admin => Some(&s.viewer),
            pmmcp::grpc::Access::Read => Some(&auditor),
            _ => None,
        };
        if let Some(token) = wrong {
            let (status, answer) = rest(route.method, &url, Some(token), body).await;
            assert_eq!(status, 403, "{} with the wrong role: {answer}", route.rpc);
            assert_eq!(answer["error"], "PermissionDenied");
        }
    }
    // The same over gRPC, for one command and one read.
    let err = nodes(&s)
        .add_node(Request::new(inv::AddNodeRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = nodes(&s)
        .add_node(authed(inv::AddNodeRequest::default(), &s.viewer))
        .await
        .expect_err("viewer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = nodes(&s)
        .list_nodes(authed(inv::ListNodesRequest::default(), &auditor))
        .await
        .expect_err("auditor");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(head(&s).await, before, "refused calls changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_over_grpc_adds_reads_changes_and_removes_with_pmm_error_codes() {
    let s = server().await;
    let add = inv::AddNodeRequest {
        node: Some(inv::add_node_request::Node::Generic(
            inv::AddGenericNodeParams {
                node_name: "db1".into(),
                address: "10.0.0.1".into(),
                custom_labels: [("dc".to_owned(), "eu".to_owned())].into(),
                ..Default::default()
            },
        )),
    };
    let resp = nodes(&s)
        .add_node(authed(add.clone(), &s.admin))
        .await
        .expect("added");
    assert!(resp.metadata().get("x-pmm-revision").is_some());
    let Some(inv::add_node_response::Node::Generic(node)) = resp.into_inner().node else {
        panic!("a generic node");
    };
    assert_eq!(node.node_name, "db1");
    assert_eq!(node.custom_labels["dc"], "eu");
    let err = nodes(&s)
        .add_node(authed(add, &s.admin))
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = nodes(&s)
        .add_node(authed(inv::AddNodeRequest::default(), &s.admin))
        .await
        .expect_err("no type");
    assert_eq!(err.code(), Code::InvalidArgument);

    let got = nodes(&s)
        .get_node(authed(
            inv::GetNodeRequest {
                node_id: node.node_id.clone(),
            },
            &s.viewer,
        ))
        .await
        .expect("get")
        .into_inner();
    assert!(matches!(got.node, Some(inv::get_node_response::Node::Generic(ref n)) if n == &node));
    let err = nodes(&s)
        .get_node(authed(
            inv::GetNodeRequest {
                node_id: "nope".into(),
            },
            &s.viewer,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let list = nodes(&s)
        .list_nodes(authed(
            inv::ListNodesRequest {
                node_type: inv::NodeType::GenericNode as i32,
            },
            &s.viewer,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.generic.len(), 2, "db1 and the PMM Server's own node");
    assert!(list.container.is_empty());

    // A service and its agents.
    let svc = services(&s)
        .add_service(authed(
            inv::AddServiceRequest {
                service: Some(inv::add_service_request::Service::Mysql(
                    inv::AddMySqlServiceParams {
                        service_name: "mysql1".into(),
                        node_id: node.node_id.clone(),
                        address: "10.0.0.1".into(),
                        port: 3306,
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect("service added")
        .into_inner();
    let Some(inv::add_service_response::Service::Mysql(mysql)) = svc.service else {
        panic!("a mysql service");
    };
    assert_eq!(mysql.port, 3306);
    let types = services(&s)
        .list_active_service_types(authed(inv::ListActiveServiceTypesRequest {}, &s.viewer))
        .await
        .expect("types")
        .into_inner();
    assert_eq!(
        types.service_types,
        vec![inv::ServiceType::MysqlService as i32]
    );
    let changed = services(&s)
        .change_service(authed(
            inv::ChangeServiceRequest {
                service_id: mysql.service_id.clone(),
                environment: Some("prod".into()),
                ..Default::default()
            },
            &s.admin,
        ))
        .await
        .expect("changed")
        .into_inner();
    let Some(inv::change_service_response::Service::Mysql(m)) = changed.service else {
        panic!("mysql");
    };
    assert_eq!(m.environment, "prod");

    let pmm_agent = agents(&s)
        .add_agent(authed(
            inv::AddAgentRequest {
                agent: Some(inv::add_agent_request::Agent::PmmAgent(
                    inv::AddPmmAgentParams {
                        runs_on_node_id: node.node_id.clone(),
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect("pmm-agent")
        .into_inner();
    let Some(inv::add_agent_response::Agent::PmmAgent(pa)) = pmm_agent.agent else {
        panic!("a pmm-agent");
    };
    let exporter = agents(&s)
        .add_agent(authed(
            inv::AddAgentRequest {
                agent: Some(inv::add_agent_request::Agent::MysqldExporter(
                    inv::AddMySqLdExporterParams {
                        pmm_agent_id: pa.agent_id.clone(),
                        service_id: mysql.service_id.clone(),
                        username: "root".into(),
                        password: "s3cret-pw".into(),
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect("exporter")
        .into_inner();
    let Some(inv::add_agent_response::Agent::MysqldExporter(ex)) = exporter.agent else {
        panic!("a mysqld_exporter");
    };
    assert_eq!(ex.username, "root");
    assert!(
        !format!("{ex:?}").contains("s3cret-pw"),
        "no password in answers"
    );
    let changed = agents(&s)
        .change_agent(authed(
            inv::ChangeAgentRequest {
                agent_id: ex.agent_id.clone(),
                agent: Some(inv::change_agent_request::Agent::MysqldExporter(
                    inv::ChangeMySqLdExporterParams {
                        enable: Some(false),
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect("changed")
        .into_inner();
    let Some(inv::change_agent_response::Agent::MysqldExporter(ex2)) = changed.agent else {
        panic!("mysqld_exporter");
    };
    assert!(ex2.disabled);
    let by_service = agents(&s)
        .list_agents(authed(
            inv::ListAgentsRequest {
                service_id: mysql.service_id.clone(),
                ..Default::default()
            },
            &s.viewer,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(by_service.mysqld_exporter.len(), 1);
    let err = agents(&s)
        .list_agents(authed(
            inv::ListAgentsRequest {
                service_id: mysql.service_id.clone(),
                node_id: node.node_id.clone(),
                ..Default::default()
            },
            &s.viewer,
        ))
        .await
        .expect_err("two filters");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = agents(&s)
        .list_agents(authed(
            inv::ListAgentsRequest {
                pmm_agent_id: "missing".into(),
                ..Default::default()
            },
            &s.viewer,
        ))
        .await
        .expect_err("unknown pmm-agent");
    assert_eq!(err.code(), Code::NotFound);
    agents(&s)
        .get_agent_logs(authed(
            inv::GetAgentLogsRequest {
                agent_id: ex.agent_id.clone(),
                limit: 10,
            },
            &s.viewer,
        ))
        .await
        .expect("logs");
    let got = agents(&s)
        .get_agent(authed(
            inv::GetAgentRequest {
                agent_id: ex.agent_id.clone(),
            },
            &s.viewer,
        ))
        .await
        .expect("get")
        .into_inner();
    assert!(matches!(
        got.agent,
        Some(inv::get_agent_response::Agent::MysqldExporter(_))
    ));

    // Removal: restricted while something depends on it, cascading with force.
    let err = services(&s)
        .remove_service(authed(
            inv::RemoveServiceRequest {
                service_id: mysql.service_id.clone(),
                force: false,
            },
            &s.admin,
        ))
        .await
        .expect_err("has agents");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = nodes(&s)
        .remove_node(authed(
            inv::RemoveNodeRequest {
                node_id: node.node_id.clone(),
                force: false,
            },
            &s.admin,
        ))
        .await
        .expect_err("has a service");
    assert_eq!(err.code(), Code::FailedPrecondition);
    agents(&s)
        .remove_agent(authed(
            inv::RemoveAgentRequest {
                agent_id: ex.agent_id.clone(),
                force: false,
            },
            &s.admin,
        ))
        .await
        .expect("agent removed");
    nodes(&s)
        .remove_node(authed(
            inv::RemoveNodeRequest {
                node_id: node.node_id.clone(),
                force: true,
            },
            &s.admin,
        ))
        .await
        .expect("node removed with force");
    let err = services(&s)
        .get_service(authed(
            inv::GetServiceRequest {
                service_id: mysql.service_id,
            },
            &s.viewer,
        ))
        .await
        .expect_err("gone with its node");
    assert_eq!(err.code(), Code::NotFound);
}

/// pmm-admin's bodies as PMM documents them.
const REGISTER_BODY: &str = r#"{
  "node_type": "NODE_TYPE_GENERIC_NODE",
  "node_name": "db-host-1",
  "address": "192.168.1.10",
  "machine_id": "/machine_id/9812826a1c45454a98ba45c56cc4f5b0",
  "distro": "linux",
  "custom_labels": {"env": "prod"},
  "metrics_mode": "METRICS_MODE_UNSPECIFIED",
  "disable_collectors": ["hwmon"],
  "reregister": false
}"#;

fn add_mysql_body(pmm_agent_id: &str) -> String {
    format!(
        r#"{{"mysql": {{
          "node_name": "db-host-1",
          "service_name": "db-host-1-mysql",
          "address": "127.0.0.1",
          "port": 3306,
          "pmm_agent_id": "{pmm_agent_id}",
          "username": "pmm",
          "password": "pass-not-echoed",
          "qan_mysql_perfschema": true,
          "skip_connection_check": true,
          "disable_query_examples": true,
          "max_slowlog_file_size": "0",
          "tablestats_group_table_limit": 0,
          "metrics_mode": "METRICS_MODE_PULL",
          "custom_labels": {{"team": "db"}},
          "log_level": "LOG_LEVEL_WARN"
        }}}}"#
    )
}

/// The inventory without ids and times, for comparing two servers.
fn shape(s: &pmmcp::domain::State) -> Vec<String> {
    let mut out = Vec::new();
    for n in s.nodes.values() {
        out.push(format!(
            "node {} {:?} {:?} {:?}",
            n.node_name, n.node_type, n.custom_labels, n.machine_id
        ));
    }
    for sv in s.services.values() {
        out.push(format!(
            "service {} {:?} {:?} {:?}",
            sv.service_name, sv.service_type, sv.port, sv.custom_labels
        ));
    }
    for a in s.agents.values() {
        out.push(format!(
            "agent {:?} {:?} {:?} {:?} {:?} push={} {:?} pw={}",
            a.agent_type,
            a.username,
            a.log_level,
            a.qan,
            a.mysql.tablestats_group_table_limit,
            a.exporter.push_metrics,
            a.exporter.disabled_collectors,
            a.password.is_some()
        ));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmm_documented_rest_bodies_have_the_same_effect_as_the_grpc_calls() {
    let (a, b) = tokio::join!(server(), server());
    // Over REST, as pmm-admin sends it.
    let (status, reg) = rest(
        "POST",
        &format!("{}/v1/management/nodes", a.base),
        Some(&a.admin),
        Some(REGISTER_BODY),
    )
    .await;
    assert_eq!(status, 200, "{reg}");
    let pa = reg["pmm_agent"]["agent_id"]
        .as_str()
        .expect("pmm-agent id")
        .to_owned();
    assert_eq!(reg["generic_node"]["node_name"], "db-host-1");
    let (status, added) = rest(
        "POST",
        &format!("{}/v1/management/services", a.base),
        Some(&a.admin),
        Some(&add_mysql_body(&pa)),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["mysql"]["service"]["service_name"], "db-host-1-mysql");
    assert!(added["mysql"]["mysqld_exporter"]["agent_id"].is_string());
    assert!(added["mysql"]["qan_mysql_perfschema"]["agent_id"].is_string());
    assert!(!added.to_string().contains("pass-not-echoed"));

    // Over gRPC, the same request typed.
    let reg = management(&b)
        .register_node(authed(
            mgmt::RegisterNodeRequest {
                node_type: inv::NodeType::GenericNode as i32,
                node_name: "db-host-1".into(),
                address: "192.168.1.10".into(),
                machine_id: "/machine_id/9812826a1c45454a98ba45c56cc4f5b0".into(),
                distro: "linux".into(),
                custom_labels: [("env".to_owned(), "prod".to_owned())].into(),
                metrics_mode: mgmt::MetricsMode::Unspecified as i32,
                disable_collectors: vec!["hwmon".into()],
                ..Default::default()
            },
            &b.admin,
        ))
        .await
        .expect("registered")
        .into_inner();
    let pb_pa = reg.pmm_agent.expect("pmm-agent").agent_id;
    let added = management(&b)
        .add_service(authed(
            mgmt::AddServiceRequest {
                service: Some(mgmt::add_service_request::Service::Mysql(
                    mgmt::AddMySqlServiceParams {
                        node_name: "db-host-1".into(),
                        service_name: "db-host-1-mysql".into(),
                        address: "127.0.0.1".into(),
                        port: 3306,
                        pmm_agent_id: pb_pa,
                        username: "pmm".into(),
                        password: "pass-not-echoed".into(),
                        qan_mysql_perfschema: true,
                        skip_connection_check: true,
                        disable_query_examples: true,
                        metrics_mode: mgmt::MetricsMode::Pull as i32,
                        custom_labels: [("team".to_owned(), "db".to_owned())].into(),
                        log_level: inv::LogLevel::Warn as i32,
                        ..Default::default()
                    },
                )),
            },
            &b.admin,
        ))
        .await
        .expect("added")
        .into_inner();
    let Some(mgmt::add_service_response::Service::Mysql(result)) = added.service else {
        panic!("a mysql result");
    };
    assert!(result.mysqld_exporter.is_some() && result.qan_mysql_perfschema.is_some());
    assert_eq!(
        shape(&a.node.dispatcher.state()),
        shape(&b.node.dispatcher.state())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_views_removal_by_name_and_unregister() {
    let s = server().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let (_, reg) = rest(
        "POST",
        &url("/v1/management/nodes"),
        Some(&s.admin),
        Some(REGISTER_BODY),
    )
    .await;
    let pa = reg["pmm_agent"]["agent_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let node_id = reg["generic_node"]["node_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) = rest(
        "POST",
        &url("/v1/management/services"),
        Some(&s.admin),
        Some(&add_mysql_body(&pa)),
    )
    .await;
    assert_eq!(status, 200);

    let (status, list) = rest(
        "GET",
        &url("/v1/management/services?service_type=SERVICE_TYPE_MYSQL_SERVICE"),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let svc = &list["services"][0];
    assert_eq!(svc["node_name"], "db-host-1");
    let agent_types: Vec<&str> = svc["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["agent_type"].as_str())
        .collect();
    assert!(
        agent_types.contains(&"mysqld_exporter") && agent_types.contains(&"pmm-agent"),
        "{agent_types:?}"
    );
    assert!(
        svc["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .any(|a| a["is_password_set"] == true)
    );
    assert!(!list.to_string().contains("pass-not-echoed"));

    let (status, n) = rest(
        "GET",
        &url(&format!("/v1/management/nodes/{node_id}")),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 200, "{n}");
    assert_eq!(n["node"]["services"][0]["service_name"], "db-host-1-mysql");
    let (status, all) = rest(
        "GET",
        &url("/v1/management/nodes?node_type=NODE_TYPE_GENERIC_NODE"),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(all["nodes"].as_array().expect("nodes").len(), 2);
    let (status, ags) = rest(
        "GET",
        &url(&format!("/v1/management/agents?node_id={node_id}")),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 200, "{ags}");
    assert!(ags["agents"].as_array().expect("agents").len() >= 2);
    let (status, e) = rest("GET", &url("/v1/management/agents"), Some(&s.viewer), None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("InvalidArgument"))
    );

    // Removal by name; the wrong type is refused first.
    let (status, e) = rest(
        "DELETE",
        &url("/v1/management/services/db-host-1-mysql?service_type=SERVICE_TYPE_MONGODB_SERVICE"),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("InvalidArgument")),
        "{e}"
    );
    let (status, e) = rest(
        "DELETE",
        &url("/v1/management/services/db-host-1-mysql?service_type=SERVICE_TYPE_MYSQL_SERVICE"),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, e) = rest(
        "DELETE",
        &url("/v1/management/services/db-host-1-mysql"),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("NotFound")),
        "{e}"
    );
    // Unregister: its own pmm-agent needs force.
    let (status, e) = rest(
        "DELETE",
        &url(&format!("/v1/management/nodes/{node_id}")),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("FailedPrecondition")),
        "{e}"
    );
    let (status, e) = rest(
        "DELETE",
        &url(&format!("/v1/management/nodes/{node_id}?force=true")),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, _) = rest(
        "GET",
        &url(&format!("/v1/management/nodes/{node_id}")),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // RDS and Azure go through the same commands as in the domain tests.
    let rds = r#"{"rds": {"region": "us-east-1", "instance_id": "rds-1", "address": "rds-1.example", "port": 3306,
        "engine": "DISCOVER_RDS_ENGINE_MYSQL", "username": "u", "password": "p", "rds_exporter": true,
        "aws_access_key": "AK", "aws_secret_key": "SK-not-echoed", "qan_mysql_perfschema": true}}"#;
    let (status, r) = rest(
        "POST",
        &url("/v1/management/services"),
        Some(&s.admin),
        Some(rds),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rds"]["node"]["instance_id"], "rds-1");
    assert!(r["rds"]["rds_exporter"]["agent_id"].is_string());
    assert!(!r.to_string().contains("SK-not-echoed"));
    let (status, r) = rest(
        "POST",
        &url("/v1/management/services"),
        Some(&s.admin),
        Some(&rds.replace("us-east-1", "mars-1")),
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("InvalidArgument")),
        "{r}"
    );
    let azure = r#"{"region": "eastus", "instance_id": "az-1", "address": "az-1.example", "port": 5432, "username": "u",
        "azure_client_id": "c", "azure_client_secret": "s", "azure_tenant_id": "t", "azure_subscription_id": "sub",
        "azure_resource_group": "rg", "type": "DISCOVER_AZURE_DATABASE_TYPE_POSTGRESQL", "azure_database_exporter": true}"#;
    let (status, r) = rest(
        "POST",
        &url("/v1/management/services/azure"),
        Some(&s.admin),
        Some(azure),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(
        s.node
            .dispatcher
            .state()
            .nodes
            .values()
            .any(|n| n.node_name == "az-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_settings_version_and_readiness() {
    let s = server().await;
    let auditor = s.node.token("auditor", Role::Auditor).await;
    let url = |p: &str| format!("{}{p}", s.base);
    let (status, _) = rest("GET", &url("/v1/server/readyz"), None, None).await;
    assert_eq!(status, 200, "readiness needs no token");
    let (status, v) = rest("GET", &url("/v1/server/version"), Some(&auditor), None).await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (status, _) = rest(
        "GET",
        &url("/v1/server/leaderHealthCheck"),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 200, "a single node leads");
    let (status, ro) = rest(
        "GET",
        &url("/v1/server/settings/readonly"),
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(ro["settings"].get("ssh_key").is_none());
    let (status, full) = rest("GET", &url("/v1/server/settings"), Some(&s.viewer), None).await;
    assert_eq!(status, 200);
    assert_eq!(full["settings"]["metrics_resolutions"]["hr"], "5s");
    assert_eq!(full["settings"]["data_retention"], "2592000s");

    let (status, changed) = rest("PUT", &url("/v1/server/settings"), Some(&s.admin), Some(r#"{"metrics_resolutions": {"hr": "10s"}, "data_retention": "172800s", "enable_telemetry": false, "aws_partitions": {"values": ["aws-cn", "aws"]}}"#)).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["settings"]["metrics_resolutions"]["hr"], "10s");
    assert_eq!(changed["settings"]["data_retention"], "172800s");
    assert_eq!(
        changed["settings"]["aws_partitions"],
        json!(["aws", "aws-cn"])
    );
    let before = head(&s).await;
    for (body, want) in [
        (
            r#"{"metrics_resolutions": {"hr": "1.5s"}}"#,
            "natural number of seconds",
        ),
        (r#"{"data_retention": "3600s"}"#, "24h"),
        (r#"{"aws_partitions": {"values": ["aws-mars"]}}"#, "invalid"),
    ] {
        let (status, e) = rest(
            "PUT",
            &url("/v1/server/settings"),
            Some(&s.admin),
            Some(body),
        )
        .await;
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("InvalidArgument")),
            "{body}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains(want),
            "{body}: {e}"
        );
    }
    // The same rule over gRPC.
    let err = server_svc(&s)
        .change_settings(authed(
            srv::ChangeSettingsRequest {
                data_retention: Some(pbjson_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &s.admin,
        ))
        .await
        .expect_err("too short");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(head(&s).await, before);
    let got = server_svc(&s)
        .get_settings(authed(srv::GetSettingsRequest {}, &s.viewer))
        .await
        .expect("settings")
        .into_inner();
    assert!(!got.settings.expect("settings").telemetry_enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_clear_4xx_and_change_nothing() {
    let s = server().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let before = head(&s).await;
    let cases: Vec<(&str, &str, String)> = vec![
        ("POST", "/v1/inventory/nodes", "{not json".into()),
        ("POST", "/v1/inventory/nodes", "[1, 2]".into()),
        (
            "POST",
            "/v1/inventory/nodes",
            r#"{"generic": {"node_name": "x", "address": "y", "colour": "red"}}"#.into(),
        ),
        (
            "POST",
            "/v1/inventory/nodes",
            r#"{"generic": {"node_name": 5, "address": "y"}}"#.into(),
        ),
        (
            "POST",
            "/v1/management/nodes",
            r#"{"node_type": "NODE_TYPE_SPACESHIP", "node_name": "x"}"#.into(),
        ),
        (
            "POST",
            "/v1/management/nodes",
            r#"{"node_name": "x", "custom_labels": ["a"]}"#.into(),
        ),
        (
            "PUT",
            "/v1/server/settings",
            r#"{"data_retention": "forever"}"#.into(),
        ),
        (
            "POST",
            "/v1/inventory/agents",
            r#"{"mysqld_exporter": {"listen_port": -1}}"#.into(),
        ),
        (
            "POST",
            "/v1/inventory/nodes",
            format!(
                r#"{{"generic": {{"node_name": "{}"}}}}"#,
                "x".repeat(2 << 20)
            ),
        ),
    ];
    for (method, path, body) in &cases {
        let (status, e) = rest(method, &url(path), Some(&s.admin), Some(body)).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path} {:.80}: {status} {e}",
            body
        );
        if status != 413 {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        }
    }
    let (status, e) = rest(
        "GET",
        &url("/v1/inventory/nodes?node_type=NODE_TYPE_NOPE"),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("InvalidArgument"))
    );
    let (status, _) = rest(
        "DELETE",
        &url("/v1/inventory/nodes/x?force=maybe"),
        Some(&s.admin),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = rest(
        "GET",
        &url("/v1/inventory/nodes?colour=red"),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 400);
    // Over gRPC: a message over the 1 MiB limit is refused before it is decoded.
    let err = nodes(&s)
        .add_node(authed(
            inv::AddNodeRequest {
                node: Some(inv::add_node_request::Node::Generic(
                    inv::AddGenericNodeParams {
                        node_name: "x".repeat(2 << 20),
                        address: "a".into(),
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect_err("too large");
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert_eq!(head(&s).await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_command_id_applies_once_and_answers_the_same() {
    let s = server().await;
    let send = || async {
        let mut r = authed(
            inv::AddNodeRequest {
                node: Some(inv::add_node_request::Node::Generic(
                    inv::AddGenericNodeParams {
                        node_name: "once".into(),
                        address: "a".into(),
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        );
        r.metadata_mut()
            .insert("x-pmm-command-id", "cmd-42".parse().expect("ascii"));
        nodes(&s).add_node(r).await.expect("applied").into_inner()
    };
    let first = send().await;
    let (revision, _) = head(&s).await;
    let second = send().await;
    assert_eq!(first, second);
    assert_eq!(
        head(&s).await.0,
        revision,
        "nothing appended the second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_answer_without_proto_files() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let s = server().await;
    let mut health = HealthClient::new(s.channel.clone());
    let mut status = None;
    wait_until(
        "the services report SERVING",
        std::time::Duration::from_secs(10),
        || {
            let mut h = health.clone();
            async move {
                h.check(HealthCheckRequest {
                    service: "inventory.v1.NodesService".into(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
            }
        },
    )
    .await;
    if let Ok(r) = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        status = Some(r.into_inner().status);
    }
    assert_eq!(status, Some(ServingStatus::Serving as i32));

    let mut reflection = ServerReflectionClient::new(s.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "inventory.v1.NodesService",
        "inventory.v1.ServicesService",
        "inventory.v1.AgentsService",
        "management.v1.ManagementService",
        "server.v1.ServerService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_one_node_is_read_on_another_with_min_revision() {
    let nodes3 = three_nodes(Opts::default()).await;
    let mut it = nodes3.into_iter();
    let (n1, n2, n3) = (
        it.next().expect("1"),
        it.next().expect("2"),
        it.next().expect("3"),
    );
    let writer = connect(n2).await;
    let reader_addr = n3.serve_public().await;
    let viewer3 = n3.token("viewer3", Role::Viewer).await;
    let resp = nodes(&writer)
        .add_node(authed(
            inv::AddNodeRequest {
                node: Some(inv::add_node_request::Node::Container(
                    inv::AddContainerNodeParams {
                        node_name: "c1".into(),
                        address: "10.1.1.1".into(),
                        container_id: "abc".into(),
                        ..Default::default()
                    },
                )),
            },
            &writer.admin,
        ))
        .await
        .expect("written through node 2");
    let id = match resp.get_ref().node.as_ref() {
        Some(inv::add_node_response::Node::Container(c)) => c.node_id.clone(),
        other => panic!("a container node: {other:?}"),
    };
    let revision: i64 = resp
        .metadata()
        .get("x-pmm-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("revision");
    let (status, body) = rest(
        "GET",
        &format!("http://{reader_addr}/v1/query/nodes/{id}?min_revision={revision}"),
        Some(&viewer3),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"]["node_name"], "c1", "{body}");
    assert!(body["revision"].as_i64().expect("revision") >= revision);
    // A command that changes nothing, sent through a follower, still answers at a revision
    // that includes everything before it.
    let resp = server_svc(&writer)
        .change_settings(authed(srv::ChangeSettingsRequest::default(), &writer.admin))
        .await
        .expect("a no-op");
    let noop_revision: i64 = resp
        .metadata()
        .get("x-pmm-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("revision");
    assert!(noop_revision >= revision, "{noop_revision} < {revision}");
    drop(n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_matches_the_checked_in_copy() {
    let s = server().await;
    let served = reqwest::get(format!("{}/v1/openapi.json", s.base))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(served, pmmcp::grpc::openapi::document());
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json");
    assert!(
        checked_in == served,
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served).expect("JSON");
    for route in pmmcp::grpc::routes() {
        assert!(
            doc["paths"][route.path][route.method.to_lowercase()].is_object(),
            "{} {} documented",
            route.method,
            route.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_over_rest_route_by_route() {
    let s = server().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let call = |method: &'static str, path: String, body: Option<String>| {
        let (u, token) = (url(&path), s.admin.clone());
        async move {
            let (status, v) = rest(method, &u, Some(&token), body.as_deref()).await;
            assert_eq!(status, 200, "{method} {path}: {v}");
            v
        }
    };
    let node = call(
        "POST",
        "/v1/inventory/nodes".into(),
        Some(
            r#"{"container": {"node_name": "c1", "address": "10.0.0.2", "container_id": "abc"}}"#
                .into(),
        ),
    )
    .await;
    let node_id = node["container"]["node_id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Enums in query parameters by name or by number (as grpc-gateway takes them).
    let by_name = call(
        "GET",
        "/v1/inventory/nodes?node_type=NODE_TYPE_CONTAINER_NODE".into(),
        None,
    )
    .await;
    let by_number = call("GET", "/v1/inventory/nodes?node_type=2".into(), None).await;
    assert_eq!(by_name, by_number);
    assert_eq!(by_name["container"][0]["node_name"], "c1");
    call("GET", format!("/v1/inventory/nodes/{node_id}"), None).await;

    let svc = call("POST", "/v1/inventory/services".into(), Some(format!(r#"{{"postgresql": {{"service_name": "pg", "node_id": "{node_id}", "address": "10.0.0.2", "port": 5432}}}}"#))).await;
    let service_id = svc["postgresql"]["service_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let changed = call(
        "PUT",
        format!("/v1/inventory/services/{service_id}"),
        Some(r#"{"cluster": "c", "custom_labels": {"values": {"a": "b"}}}"#.into()),
    )
    .await;
    assert_eq!(changed["postgresql"]["custom_labels"]["a"], "b");
    let types = call(
        "POST",
        "/v1/inventory/services:getTypes".into(),
        Some("{}".into()),
    )
    .await;
    assert_eq!(
        types["service_types"],
        json!(["SERVICE_TYPE_POSTGRESQL_SERVICE"])
    );
    let list = call(
        "GET",
        format!(
            "/v1/inventory/services?node_id={node_id}&service_type=SERVICE_TYPE_POSTGRESQL_SERVICE"
        ),
        None,
    )
    .await;
    assert_eq!(list["postgresql"][0]["cluster"], "c");
    call("GET", format!("/v1/inventory/services/{service_id}"), None).await;

    let pa = call(
        "POST",
        "/v1/inventory/agents".into(),
        Some(format!(
            r#"{{"pmm_agent": {{"runs_on_node_id": "{node_id}"}}}}"#
        )),
    )
    .await;
    let pa_id = pa["pmm_agent"]["agent_id"].as_str().expect("id").to_owned();
    let ex = call("POST", "/v1/inventory/agents".into(), Some(format!(r#"{{"postgres_exporter": {{"pmm_agent_id": "{pa_id}", "service_id": "{service_id}", "username": "u", "password": "p", "push_metrics": true}}}}"#))).await;
    let ex_id = ex["postgres_exporter"]["agent_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(ex["postgres_exporter"]["push_metrics_enabled"], true);
    let changed = call(
        "PUT",
        format!("/v1/inventory/agents/{ex_id}"),
        Some(
            r#"{"postgres_exporter": {"enable": false, "metrics_resolutions": {"hr": "10s"}}}"#
                .into(),
        ),
    )
    .await;
    assert_eq!(changed["postgres_exporter"]["disabled"], true);
    assert_eq!(
        changed["postgres_exporter"]["metrics_resolutions"]["hr"],
        "10s"
    );
    call("GET", format!("/v1/inventory/agents/{ex_id}"), None).await;
    call(
        "GET",
        format!("/v1/inventory/agents/{ex_id}/logs?limit=5"),
        None,
    )
    .await;
    let of_service = call(
        "GET",
        format!("/v1/inventory/agents?service_id={service_id}"),
        None,
    )
    .await;
    assert_eq!(
        of_service["postgres_exporter"].as_array().map(Vec::len),
        Some(1)
    );
    let of_pmm_agent = call(
        "GET",
        format!(
            "/v1/inventory/agents?pmm_agent_id={pa_id}&agent_type=AGENT_TYPE_POSTGRES_EXPORTER"
        ),
        None,
    )
    .await;
    assert_eq!(
        of_pmm_agent["postgres_exporter"].as_array().map(Vec::len),
        Some(1)
    );
    call("DELETE", format!("/v1/inventory/agents/{ex_id}"), None).await;
    call(
        "DELETE",
        format!("/v1/inventory/services/{service_id}"),
        None,
    )
    .await;
    call(
        "DELETE",
        format!("/v1/inventory/nodes/{node_id}?force=true"),
        None,
    )
    .await;
    let (status, _) = rest(
        "GET",
        &url(&format!("/v1/inventory/nodes/{node_id}")),
        Some(&s.viewer),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_requests_get_clear_errors_and_no_secret_is_echoed() {
    let s = server().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let before = head(&s).await;
    // gRPC: an enum number PMM does not have, a Duration with mixed signs.
    let err = nodes(&s)
        .list_nodes(authed(inv::ListNodesRequest { node_type: 42 }, &s.viewer))
        .await
        .expect_err("no such node type");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = server_svc(&s)
        .change_settings(authed(
            srv::ChangeSettingsRequest {
                data_retention: Some(pbjson_types::Duration {
                    seconds: 86_400,
                    nanos: -1,
                }),
                ..Default::default()
            },
            &s.admin,
        ))
        .await
        .expect_err("mixed signs");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A secret sent with the wrong type is not quoted back.
    let (status, e) = rest(
        "POST",
        &url("/v1/management/services"),
        Some(&s.admin),
        Some(r#"{"mysql": {"service_name": "m", "password": 987654321}}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!e.to_string().contains("987654321"), "{e}");
    // Unknown routes and methods, oversize bodies: JSON errors with the right status.
    let (status, e) = rest("GET", &url("/v1/inventory/nowhere"), Some(&s.viewer), None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("NotFound")),
        "{e}"
    );
    let (status, e) = rest(
        "PATCH",
        &url("/v1/inventory/nodes"),
        Some(&s.admin),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 405, "{e}");
    assert!(e["message"].is_string(), "{e}");
    let big = format!(
        r#"{{"generic": {{"node_name": "{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let (status, e) = rest(
        "POST",
        &url("/v1/inventory/nodes"),
        Some(&s.admin),
        Some(&big),
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (413, Some("ResourceExhausted")),
        "{e}"
    );
    // A command id a header cannot carry as text is refused, not replaced.
    let resp = reqwest::Client::new()
        .post(url("/v1/inventory/nodes"))
        .bearer_auth(&s.admin)
        .header(
            "x-pmm-command-id",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").expect("opaque bytes"),
        )
        .body(r#"{"generic": {"node_name": "n", "address": "a"}}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(head(&s).await, before, "nothing changed");
}
