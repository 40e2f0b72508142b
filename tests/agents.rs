//! pmm-agent streams: PMM's agent protocol against fake pmm-agents (`pmmcp::agents::sim`) and a
//! raw client. Connect with the token RegisterNode issued, the initial desired state, updates
//! only when a change affects the agent, the applied revision, status reports recorded as
//! commands, duplicate connections, kick on removal, UNIMPLEMENTED answers, bad metadata and
//! bad tokens; then a thousand agents on one node.

mod support;

use pmmcp::agents::sim::{self, Behaviour, Identity, SimAgent};
use pmmcp::domain::Role;
use pmmcp::grpc::pb::agent::v1 as ag;
use pmmcp::grpc::pb::inventory::v1 as inv;
use pmmcp::grpc::pb::management::v1 as mgmt;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::cluster::TestNode;
use support::*;
use tonic::transport::Channel;
use tonic::{Code, Request};

const DEADLINE: Duration = Duration::from_secs(20);

struct Server {
    node: TestNode,
    base: String,
    channel: Channel,
    admin: String,
}

async fn server() -> Server {
    let node = TestNode::single().await;
    let addr = node.serve_public().await;
    let admin = node.token("admin", Role::Admin).await;
    Server {
        channel: Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy(),
        base: format!("http://{addr}"),
        node,
        admin,
    }
}

async fn query(s: &Server, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json")
}

/// Waits until the streams of `ids` have compared their state at the node's current revision
/// and every state they sent was answered: nothing more is on its way to them.
async fn settled(s: &Server, ids: &[&str]) {
    wait_until("the streams settled", DEADLINE, || async move {
        let now = s.node.dispatcher.state().revision;
        let v = query(s, "/v1/query/pmm-agents").await;
        ids.iter().all(|id| {
            v["pmm_agents"].as_array().into_iter().flatten().any(|p| {
                let st = &p["stream"];
                p["agent_id"] == *id
                    && st["evaluated_revision"].as_i64() >= Some(now)
                    && st["applied_revision"] == st["desired_revision"]
            })
        })
    })
    .await;
}

/// Waits until the fake agent has applied a state of at least `revision`.
async fn applied(agent: &SimAgent, revision: i64) {
    let mut rx = agent.applied.clone();
    tokio::time::timeout(DEADLINE, rx.wait_for(|r| *r >= revision))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} applied revision {revision} in time",
                agent.identity.agent_id
            )
        })
        .expect("agent running");
}

async fn ended(agent: &SimAgent) -> tonic::Status {
    let mut rx = agent.ended.clone();
    let st = tokio::time::timeout(DEADLINE, rx.wait_for(|e| e.is_some()))
        .await
        .expect("the stream ended in time")
        .expect("agent task");
    st.clone().expect("some")
}

fn mysql(pmm_agent: &str, node_id: String) -> mgmt::AddServiceRequest {
    mgmt::AddServiceRequest {
        service: Some(mgmt::add_service_request::Service::Mysql(
            mgmt::AddMySqlServiceParams {
                node_id,
                service_name: format!("mysql-of-{pmm_agent}"),
                address: "10.9.9.9".into(),
                port: 3306,
                pmm_agent_id: pmm_agent.into(),
                username: "pmm".into(),
                password: "s3cret-pw".into(),
                qan_mysql_perfschema: true,
                skip_connection_check: true,
                ..Default::default()
            },
        )),
    }
}

/// The password hash in an exporter's web-config file (PMM's one-user form).
fn web_config_hash(p: &ag::set_state_request::AgentProcess) -> &str {
    let file = &p.text_files["webConfigPlaceholder"];
    file.strip_prefix("basic_auth_users:\n    pmm: ")
        .and_then(|h| h.strip_suffix('\n'))
        .expect(file)
}

/// A raw Connect call with the given metadata; the first answer (or the refusal).
async fn raw_connect(
    s: &Server,
    meta: &[(&'static str, &str)],
    first: Vec<ag::AgentMessage>,
) -> Result<tonic::Streaming<ag::ServerMessage>, tonic::Status> {
    let mut req = Request::new(tokio_stream::iter(first));
    for (k, v) in meta {
        req.metadata_mut().insert(*k, v.parse().expect("ascii"));
    }
    let mut client = ag::agent_service_client::AgentServiceClient::new(s.channel.clone());
    client.connect(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_connects_sends_state_records_reports_and_kicks() {
    let s = server().await;
    let ids = sim::register(s.channel.clone(), &s.admin, "host", 2)
        .await
        .expect("registered");
    let (me, other) = (ids[0].clone(), ids[1].clone());
    assert!(me.token.starts_with("pmmcp_agent_"));

    // Bad metadata and tokens are refused with PMM's codes; nothing is recorded.
    let bearer = format!("Bearer {}", me.token);
    let other_bearer = format!("Bearer {}", other.token);
    let admin_bearer = format!("Bearer {}", s.admin);
    let cases: Vec<(Vec<(&str, &str)>, Code)> = vec![
        (
            vec![("pmm-agent-version", "3.0.0"), ("authorization", &bearer)],
            Code::PermissionDenied,
        ),
        (
            vec![
                ("pmm-agent-id", &me.agent_id),
                ("pmm-agent-version", "three"),
                ("authorization", &bearer),
            ],
            Code::InvalidArgument,
        ),
        (
            vec![
                ("pmm-agent-id", &me.agent_id),
                ("pmm-agent-version", "3.0.0"),
            ],
            Code::Unauthenticated,
        ),
        (
            vec![
                ("pmm-agent-id", &me.agent_id),
                ("pmm-agent-version", "3.0.0"),
                ("authorization", "Bearer nope"),
            ],
            Code::Unauthenticated,
        ),
        (
            vec![
                ("pmm-agent-id", &me.agent_id),
                ("pmm-agent-version", "3.0.0"),
                ("authorization", &other_bearer),
            ],
            Code::PermissionDenied,
        ),
        (
            vec![
                ("pmm-agent-id", &me.agent_id),
                ("pmm-agent-version", "3.0.0"),
                ("authorization", &admin_bearer),
            ],
            Code::PermissionDenied,
        ),
    ];
    for (meta, code) in cases {
        let err = raw_connect(&s, &meta, vec![]).await.expect_err("refused");
        assert_eq!(err.code(), code, "{meta:?}: {}", err.message());
    }

    // A MySQL service with its exporter and QAN agent under my pmm-agent.
    let mut management =
        mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone());
    let added = management
        .add_service(authed(
            mysql(&me.agent_id, state_node_of(&s, &me)),
            &s.admin,
        ))
        .await
        .expect("mysql added")
        .into_inner();
    let Some(mgmt::add_service_response::Service::Mysql(added)) = added.service else {
        panic!("mysql");
    };
    let exporter_id = added.mysqld_exporter.expect("exporter").agent_id;
    let qan_id = added.qan_mysql_perfschema.expect("qan").agent_id;

    // Connect: the whole desired state arrives with its revision.
    // Read before connecting: the state sent on connect is at least this new (a revision
    // read later may be a report that changes no one's state).
    let now = s.node.dispatcher.state().revision;
    let agent = sim::start(s.channel.clone(), me.clone(), Behaviour::default());
    applied(&agent, now).await;
    let state = agent.last_state.borrow().clone().expect("a state");
    assert!(state.revision >= now);
    let exporter = &state.agent_processes[&exporter_id];
    assert_eq!(exporter.r#type, inv::AgentType::MysqldExporter as i32);
    // Push mode by default: the exporter listens on loopback for the agent's vmagent.
    assert!(
        exporter
            .args
            .iter()
            .any(|a| a == "--web.listen-address=127.0.0.1:{{ .listen_port }}"),
        "{:?}",
        exporter.args
    );
    let mut sorted = exporter.args.clone();
    sorted.sort();
    assert_eq!(exporter.args, sorted, "args are sorted");
    assert!(
        exporter
            .env
            .iter()
            .any(|e| e == "DATA_SOURCE_NAME=pmm:s3cret-pw@tcp(10.9.9.9:3306)/?timeout=1s"),
        "{:?}",
        exporter.env
    );
    assert!(exporter.redact_words.contains(&"s3cret-pw".to_owned()));
    let (node_exporter_id, node_exporter) = state
        .agent_processes
        .iter()
        .find(|(_, p)| p.r#type == inv::AgentType::NodeExporter as i32)
        .expect("node_exporter");
    // A 3.x pmm-agent protects node_exporter with a web-config file: the bcrypt hash of its
    // password (the agent id, none being set) with PMM's salt, flag appended after the sort.
    assert_eq!(
        node_exporter.args.last().map(String::as_str),
        Some("--web.config.file={{ .TextFiles.webConfigPlaceholder }}")
    );
    let hash = web_config_hash(node_exporter);
    assert_eq!(
        hash,
        pmmcp::agents::web_auth::hash(node_exporter_id, node_exporter_id, 4).unwrap()
    );
    assert!(bcrypt::verify(node_exporter_id, hash).unwrap());
    assert!(
        !node_exporter
            .env
            .iter()
            .any(|e| e.starts_with("HTTP_AUTH="))
    );
    // PMM's collector set on Linux, with its netstat and vmstat field lists.
    for arg in [
        "--collector.netstat",
        "--no-collector.zfs",
        "--web.disable-exporter-metrics",
    ] {
        assert!(node_exporter.args.iter().any(|a| a == arg), "{arg}");
    }
    for (prefix, part) in [
        (
            "--collector.netstat.fields=^(",
            "|TcpExt_(Listen.*|Syncookies.*|TCPTimeouts))$",
        ),
        (
            "--collector.vmstat.fields=^(",
            "|pgpg(in|out)|pswp(in|out)|pgm?a?j?fault)$",
        ),
    ] {
        assert!(
            node_exporter
                .args
                .iter()
                .any(|a| a.starts_with(prefix) && a.ends_with(part)),
            "{prefix}"
        );
    }
    assert!(
        state
            .agent_processes
            .values()
            .any(|p| p.r#type == inv::AgentType::VmAgent as i32)
    );
    let qan = &state.builtin_agents[&qan_id];
    assert!(
        qan.dsn.contains("clientFoundRows=true&parseTime=true"),
        "{}",
        qan.dsn
    );

    // Reports are recorded: connected, every process RUNNING on its port, the applied revision.
    let path = format!("/v1/query/pmm-agents/{}", me.agent_id);
    wait_until("reports recorded", DEADLINE, || {
        let s = &s;
        let path = path.clone();
        async move {
            let v = query(s, &path).await;
            let p = &v["pmm_agent"];
            p["connected"] == true
                && p["agents"].as_array().is_some_and(|a| {
                    a.iter()
                        .filter(|c| c["agent_type"] != "qan-mysql-perfschema-agent")
                        .all(|c| {
                            c["status"] == "AGENT_STATUS_RUNNING"
                                && c["listen_port"].as_u64().is_some_and(|p| p >= 42000)
                        })
                })
                && p["stream"]["applied_revision"].as_i64() >= Some(now)
        }
    })
    .await;
    let v = query(&s, &path).await;
    assert_eq!(v["pmm_agent"]["version"], "3.5.0");
    assert!(v["pmm_agent"]["stream"]["desired_revision"].as_i64() >= Some(now));

    // A change elsewhere (the other node's agent) sends me nothing; a change to my exporter
    // sends me a new state without it.
    settled(&s, &[&me.agent_id]).await;
    let states_before = agent.seen.states.load(Ordering::SeqCst);
    let before_peer = s.node.dispatcher.state().revision;
    let peer = sim::start(s.channel.clone(), other.clone(), Behaviour::default());
    applied(&peer, before_peer).await;
    settled(&s, &[&other.agent_id]).await;
    let mut agents = inv::agents_service_client::AgentsServiceClient::new(s.channel.clone());
    let resp = agents
        .change_agent(authed(
            inv::ChangeAgentRequest {
                agent_id: exporter_id.clone(),
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
        .expect("disabled");
    let disabled_at: i64 = revision_of(&resp);
    applied(&agent, disabled_at).await;
    settled(&s, &[&me.agent_id, &other.agent_id]).await;
    let state = agent.last_state.borrow().clone().expect("state");
    assert!(
        !state.agent_processes.contains_key(&exporter_id),
        "a disabled exporter is not run"
    );
    assert_eq!(
        agent.seen.states.load(Ordering::SeqCst),
        states_before + 1,
        "one new state: the peer's connection and reports did not reach me"
    );

    // A second connection while the first answers pings is refused.
    let twin = sim::start(
        s.channel.clone(),
        me.clone(),
        Behaviour {
            reconnect: false,
            ..Behaviour::default()
        },
    );
    assert_eq!(ended(&twin).await.code(), Code::AlreadyExists);

    // A payload the server does not serve is answered UNIMPLEMENTED with its id; so is an
    // empty one. Job messages (id 0) get no answer.
    peer.stop();
    let peer_bearer = format!("Bearer {}", other.token);
    wait_until("the peer's old stream is gone", DEADLINE, || {
        let s = &s;
        let id = other.agent_id.clone();
        async move {
            query(s, &format!("/v1/query/pmm-agents/{id}")).await["pmm_agent"]["stream"].is_null()
        }
    })
    .await;
    let mut raw = raw_connect(
        &s,
        &[
            ("pmm-agent-id", &other.agent_id),
            ("pmm-agent-version", "3.0.0"),
            ("authorization", &peer_bearer),
        ],
        vec![
            ag::AgentMessage {
                id: 0,
                payload: None,
                status: None,
            },
            ag::AgentMessage {
                id: 77,
                payload: None,
                status: None,
            },
        ],
    )
    .await
    .expect("raw connect");
    let mut unimplemented = None;
    while let Some(m) = raw.message().await.expect("message") {
        if m.id == 77 {
            unimplemented = Some(m);
            break;
        }
        assert_ne!(m.id, 0, "job messages are not answered");
    }
    let m = unimplemented.expect("an answer to 77");
    assert_eq!(m.status.expect("status").code, Code::Unimplemented as i32);
    drop(raw);

    // Disconnect: the pmm-agent is recorded disconnected, what it runs UNKNOWN.
    agent.stop();
    wait_until("the disconnect recorded", DEADLINE, || {
        let s = &s;
        let path = path.clone();
        async move {
            let v = query(s, &path).await;
            v["pmm_agent"]["connected"] == false
                && v["pmm_agent"]["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|c| c["status"] == "AGENT_STATUS_UNKNOWN"))
        }
    })
    .await;

    // Reconnect, then removal kicks the stream at once.
    let before = s.node.dispatcher.state().revision;
    let agent = sim::start(
        s.channel.clone(),
        me.clone(),
        Behaviour {
            reconnect: false,
            ..Behaviour::default()
        },
    );
    applied(&agent, before).await;
    management
        .unregister_node(authed(
            mgmt::UnregisterNodeRequest {
                node_id: state_node_of(&s, &me),
                force: true,
            },
            &s.admin,
        ))
        .await
        .expect("unregistered");
    let st = ended(&agent).await;
    assert_eq!(st.code(), Code::Aborted, "{st:?}");
    let err = raw_connect(
        &s,
        &[
            ("pmm-agent-id", &me.agent_id),
            ("pmm-agent-version", "3.0.0"),
            ("authorization", &bearer),
        ],
        vec![],
    )
    .await
    .expect_err("a removed pmm-agent is refused");
    assert_eq!(err.code(), Code::PermissionDenied);
}

fn state_node_of(s: &Server, id: &Identity) -> String {
    let state = s.node.dispatcher.state();
    state.agents[&pmmcp::domain::AgentId::from(id.agent_id.as_str())]
        .runs_on_node_id
        .clone()
        .expect("node")
        .to_string()
}

/// An exporter with an agent password gets a web config whose hash is of that password, once
/// this node has hashed and recorded it; the state waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_password_reaches_the_exporters_web_config() {
    let s = server().await;
    let ids = sim::register(s.channel.clone(), &s.admin, "pg", 1)
        .await
        .expect("registered");
    let me = &ids[0];
    let mut management =
        mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone());
    let added = management
        .add_service(authed(
            mgmt::AddServiceRequest {
                service: Some(mgmt::add_service_request::Service::Postgresql(
                    mgmt::AddPostgreSqlServiceParams {
                        node_id: state_node_of(&s, me),
                        service_name: "pg-1".into(),
                        address: "10.9.9.8".into(),
                        port: 5432,
                        pmm_agent_id: me.agent_id.clone(),
                        username: "pmm".into(),
                        password: "db-pw".into(),
                        agent_password: "exporter-pw".into(),
                        skip_connection_check: true,
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect("postgres added")
        .into_inner();
    let Some(mgmt::add_service_response::Service::Postgresql(added)) = added.service else {
        panic!("postgresql");
    };
    let exporter_id = added.postgres_exporter.expect("exporter").agent_id;
    let service_id = added.service.expect("service").service_id;

    let now = s.node.dispatcher.state().revision;
    let agent = sim::start(s.channel.clone(), me.clone(), Behaviour::default());
    applied(&agent, now).await;
    let state = agent.last_state.borrow().clone().expect("a state");
    let exporter = &state.agent_processes[&exporter_id];
    assert_eq!(
        exporter.args.last().map(String::as_str),
        Some("--web.config={{ .TextFiles.webConfigPlaceholder }}")
    );
    let hash = web_config_hash(exporter);
    assert!(bcrypt::verify("exporter-pw", hash).unwrap());
    assert!(!bcrypt::verify(&exporter_id, hash).unwrap());
    assert!(!exporter.env.iter().any(|e| e.starts_with("HTTP_AUTH=")));
    // Recorded with the exporter, sealed; the query API leaves it out.
    let recorded = s.node.dispatcher.state().agents[&exporter_id.as_str().into()].clone();
    assert!(recorded.web_auth_hash().is_some());
    let v = query(&s, &format!("/v1/query/agents?service_id={service_id}")).await;
    let text = v.to_string();
    assert!(!text.contains("web_auth") && !text.contains(hash), "{text}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_register_node_answers_the_same_token() {
    let s = server().await;
    let mut management =
        mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone());
    let req = || {
        let mut r = authed(
            mgmt::RegisterNodeRequest {
                node_type: inv::NodeType::GenericNode as i32,
                node_name: "resent".into(),
                address: "10.1.1.1".into(),
                ..Default::default()
            },
            &s.admin,
        );
        r.metadata_mut().insert(
            "x-pmm-command-id",
            "register-resent-1".parse().expect("ascii"),
        );
        r
    };
    let first = management
        .register_node(req())
        .await
        .expect("first")
        .into_inner();
    let again = management
        .register_node(req())
        .await
        .expect("resend")
        .into_inner();
    assert!(!first.token.is_empty());
    assert_eq!(first.token, again.token);
    let id = Identity {
        agent_id: first.pmm_agent.expect("pmm-agent").agent_id,
        token: first.token,
    };
    let agent = sim::start(s.channel.clone(), id, Behaviour::default());
    applied(&agent, 1).await;
}

/// A thousand fake pmm-agents on one node, pushing their metrics: each gets its state; one
/// settings change that alters resolutions reaches every agent; a change to one agent's
/// inventory reaches that agent only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_get_their_states_and_only_affecting_changes() {
    const N: usize = 1000;
    let s = server().await;
    let management =
        mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone());
    // Push mode: each node_exporter is scraped by its pmm-agent's vmagent, so resolutions
    // reach every agent's state.
    let ids: Vec<Identity> = {
        let mut out = Vec::with_capacity(N);
        for chunk in 0..N / 100 {
            let calls = (0..100).map(|i| {
                let mut m = management.clone();
                let admin = s.admin.clone();
                let n = chunk * 100 + i;
                async move {
                    let r = m
                        .register_node(authed(
                            mgmt::RegisterNodeRequest {
                                node_type: inv::NodeType::GenericNode as i32,
                                node_name: format!("push-{n}"),
                                address: format!("10.2.{}.{}", n / 256, n % 256),
                                metrics_mode: mgmt::MetricsMode::Push as i32,
                                ..Default::default()
                            },
                            &admin,
                        ))
                        .await
                        .expect("registered")
                        .into_inner();
                    Identity {
                        agent_id: r.pmm_agent.expect("pmm-agent").agent_id,
                        token: r.token,
                    }
                }
            });
            for id in futures_join(calls).await {
                out.push(id);
            }
        }
        out
    };
    // Real pmm-agents each have their own connection; HTTP/2 caps the streams of one
    // connection (200 here), so the fakes share one connection per 100.
    let channels: Vec<Channel> = (0..N.div_ceil(100))
        .map(|_| {
            Channel::from_shared(s.base.clone())
                .expect("uri")
                .connect_lazy()
        })
        .collect();
    let agents: Vec<SimAgent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| sim::start(channels[i / 100].clone(), id.clone(), Behaviour::default()))
        .collect();
    // Everyone has a state whose vmagent file scrapes its node_exporter on the reported port.
    wait_until(
        "every agent's vmagent scrapes its exporter",
        Duration::from_secs(120),
        || {
            let done = agents.iter().all(|a| {
                a.last_state.borrow().as_ref().is_some_and(|st| {
                    st.agent_processes.values().any(|p| {
                        p.r#type == inv::AgentType::VmAgent as i32
                            && p.text_files
                                .get("vmagentscrapecfg")
                                .is_some_and(|t| t.contains("127.0.0.1:4200"))
                    })
                })
            });
            async move { done }
        },
    )
    .await;
    let counts: Vec<u64> = agents
        .iter()
        .map(|a| a.seen.states.load(Ordering::SeqCst))
        .collect();

    // One settings change (the high resolution): every agent gets a new state.
    let mut server_svc =
        pmmcp::grpc::pb::server::v1::server_service_client::ServerServiceClient::new(
            s.channel.clone(),
        );
    let resp = server_svc
        .change_settings(authed(
            pmmcp::grpc::pb::server::v1::ChangeSettingsRequest {
                metrics_resolutions: Some(pmmcp::grpc::pb::server::v1::MetricsResolutions {
                    hr: Some(pbjson_types::Duration {
                        seconds: 7,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &s.admin,
        ))
        .await
        .expect("settings");
    let at: i64 = revision_of(&resp);
    for a in &agents {
        applied(a, at).await;
        let st = a.last_state.borrow().clone().expect("state");
        let vmagent = st
            .agent_processes
            .values()
            .find(|p| p.r#type == inv::AgentType::VmAgent as i32)
            .expect("vmagent");
        assert!(vmagent.text_files["vmagentscrapecfg"].contains("scrape_interval: 7s"));
    }
    let after_settings: Vec<u64> = agents
        .iter()
        .map(|a| a.seen.states.load(Ordering::SeqCst))
        .collect();
    for (b, a) in counts.iter().zip(&after_settings) {
        assert_eq!(*a, b + 1, "exactly one new state per agent");
    }

    // One agent's inventory change reaches that agent only.
    let target = &agents[N / 2];
    let node_exporter = target
        .last_state
        .borrow()
        .as_ref()
        .and_then(|st| {
            st.agent_processes
                .iter()
                .find(|(_, p)| p.r#type == inv::AgentType::NodeExporter as i32)
                .map(|(k, _)| k.clone())
        })
        .expect("node_exporter");
    let mut inventory = inv::agents_service_client::AgentsServiceClient::new(s.channel.clone());
    let resp = inventory
        .change_agent(authed(
            inv::ChangeAgentRequest {
                agent_id: node_exporter,
                agent: Some(inv::change_agent_request::Agent::NodeExporter(
                    inv::ChangeNodeExporterParams {
                        custom_labels: Some(pmmcp::grpc::pb::common::StringMap {
                            values: [("rack".to_owned(), "r7".to_owned())].into(),
                        }),
                        ..Default::default()
                    },
                )),
            },
            &s.admin,
        ))
        .await
        .expect("changed");
    let at: i64 = revision_of(&resp);
    applied(target, at).await;
    // The barrier: every stream has compared its state at the change's revision, and every
    // state it sent has been answered (the fake agents count a state before answering it).
    wait_until(
        "every stream evaluated the change and was answered",
        DEADLINE,
        || {
            let s = &s;
            async move {
                let v = query(s, "/v1/query/pmm-agents").await;
                v["pmm_agents"].as_array().is_some_and(|all| {
                    all.iter().filter(|p| !p["stream"].is_null()).count() == N
                        && all.iter().filter(|p| !p["stream"].is_null()).all(|p| {
                            let st = &p["stream"];
                            st["evaluated_revision"].as_i64() >= Some(at)
                                && st["applied_revision"] == st["desired_revision"]
                        })
                })
            }
        },
    )
    .await;
    let final_counts: Vec<u64> = agents
        .iter()
        .map(|a| a.seen.states.load(Ordering::SeqCst))
        .collect();
    let changed: Vec<usize> = final_counts
        .iter()
        .zip(&after_settings)
        .enumerate()
        .filter(|(_, (f, a))| f != a)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        changed,
        vec![N / 2],
        "only the changed agent got a new state"
    );
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Agents on a follower of a three-node cluster; the leader is stopped: the agents stay, a
/// change made after the failover reaches all of them, and the statuses they reported before
/// and after are in every surviving node's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_a_follower_survive_the_leaders_failover() {
    const N: usize = 20;
    let mut nodes = support::cluster::three_nodes(support::cluster::Opts::default()).await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let leader = support::cluster::wait_for_leader(&refs, DEADLINE).await;
    let follower = (leader + 1) % 3;
    let witness = (leader + 2) % 3;
    let addr = nodes[follower].serve_public().await;
    let admin = nodes[follower].token("admin", Role::Admin).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let ids = sim::register(channel.clone(), &admin, "ha", N)
        .await
        .expect("registered");
    let agents: Vec<SimAgent> = ids
        .iter()
        .map(|id| sim::start(channel.clone(), id.clone(), Behaviour::default()))
        .collect();
    // Every agent's exporters RUNNING with a port, on the witness node (through the log).
    let running = |node: &TestNode| {
        let st = node.dispatcher.state();
        ids.iter().all(|id| {
            let children = st.children_of(&pmmcp::domain::AgentId::from(id.agent_id.as_str()));
            !children.is_empty()
                && children.iter().all(|c| {
                    st.agents.get(c).is_some_and(|a| {
                        a.status == pmmcp::domain::AgentStatus::Running && a.listen_port.is_some()
                    })
                })
        })
    };
    wait_until("statuses recorded before the failover", DEADLINE, || {
        let ok = running(&nodes[witness]);
        async move { ok }
    })
    .await;

    // Stop the leader; a new one is elected among the other two.
    let old_leader = nodes.remove(leader);
    old_leader.stop().await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    support::cluster::wait_for_leader(&refs, Duration::from_secs(30)).await;
    // Indexes among the two survivors.
    let (follower, witness) = (
        follower - usize::from(follower > leader),
        witness - usize::from(witness > leader),
    );

    // A change after the failover (through the follower) reaches every agent.
    let mut server_svc =
        pmmcp::grpc::pb::server::v1::server_service_client::ServerServiceClient::new(
            channel.clone(),
        );
    let resp = server_svc
        .change_settings(authed(
            pmmcp::grpc::pb::server::v1::ChangeSettingsRequest {
                metrics_resolutions: Some(pmmcp::grpc::pb::server::v1::MetricsResolutions {
                    hr: Some(pbjson_types::Duration {
                        seconds: 9,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("settings after the failover");
    let at = revision_of(&resp);
    for a in &agents {
        applied(a, at).await;
    }
    // A report after the failover is recorded too: one agent's exporter flaps.
    let target = &agents[0];
    let exporter = target
        .last_state
        .borrow()
        .as_ref()
        .and_then(|st| {
            st.agent_processes
                .iter()
                .find(|(_, p)| p.r#type == inv::AgentType::NodeExporter as i32)
                .map(|(k, _)| k.clone())
        })
        .expect("node_exporter");
    let mut inventory = inv::agents_service_client::AgentsServiceClient::new(channel.clone());
    for enable in [false, true] {
        inventory
            .change_agent(authed(
                inv::ChangeAgentRequest {
                    agent_id: exporter.clone(),
                    agent: Some(inv::change_agent_request::Agent::NodeExporter(
                        inv::ChangeNodeExporterParams {
                            enable: Some(enable),
                            ..Default::default()
                        },
                    )),
                },
                &admin,
            ))
            .await
            .expect("toggled");
    }
    // Statuses from before the failover and after it are in both surviving nodes' states.
    for i in [follower, witness] {
        let node = &nodes[i];
        wait_until("statuses after the failover", DEADLINE, || {
            let ok = running(node);
            async move { ok }
        })
        .await;
    }
    let st = nodes[witness].dispatcher.state();
    for id in &ids {
        assert!(st.agents[&pmmcp::domain::AgentId::from(id.agent_id.as_str())].connected);
    }
}

/// Agents connected through a follower that is stopped and removed from the cluster: the
/// leader's sweep records them disconnected (the removed node will not sweep its own), and
/// their exporters UNKNOWN; agents connected through the other follower stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_sweeps_the_agents_of_a_removed_node() {
    let mut nodes = support::cluster::three_nodes(support::cluster::Opts::default()).await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let leader = support::cluster::wait_for_leader(&refs, DEADLINE).await;
    let follower = (leader + 1) % 3;
    let witness = (leader + 2) % 3;
    let connect = |i: usize| {
        let node = &nodes[i];
        async move {
            let addr = node.serve_public().await;
            let admin = node.token(&format!("admin-{i}"), Role::Admin).await;
            let channel = Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect_lazy();
            let ids = sim::register(channel.clone(), &admin, &format!("n{i}"), 2)
                .await
                .expect("registered");
            let behaviour = Behaviour {
                reconnect: false,
                ..Behaviour::default()
            };
            let agents: Vec<SimAgent> = ids
                .iter()
                .map(|id| sim::start(channel.clone(), id.clone(), behaviour.clone()))
                .collect();
            (ids, agents)
        }
    };
    let (on_follower, follower_agents) = connect(follower).await;
    let (on_witness, _witness_agents) = connect(witness).await;
    let connected = |node: &TestNode, ids: &[Identity]| {
        let st = node.dispatcher.state();
        ids.iter().all(|id| {
            st.agents
                .get(&pmmcp::domain::AgentId::from(id.agent_id.as_str()))
                .is_some_and(|a| a.connected)
        })
    };
    wait_until("every agent recorded connected", DEADLINE, || {
        let ok = connected(&nodes[leader], &on_follower) && connected(&nodes[leader], &on_witness);
        async move { ok }
    })
    .await;
    // The leader sweeps often. This AgentServer has no streams: it would also sweep agents
    // connected through another AgentServer of the leader, so none are.
    let cipher = std::sync::Arc::new(pmmcp::crypto::Cipher::from_key(&[7; 32]));
    let sweeper =
        pmmcp::agents::AgentServer::new(nodes[leader].dispatcher.clone(), cipher.clone(), 4);
    sweeper.sweep_stale_connections(Duration::from_millis(100));

    // The follower stops and leaves the cluster. Its agents stay connected to what is left of
    // it in this process (its streams, which a crash would end without recording anything):
    // only a sweep can record them disconnected.
    let removed = nodes.remove(follower);
    let removed_id = removed.id;
    removed.stop().await;
    let leader = leader - usize::from(leader > follower);
    let voters: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    assert!(!voters.contains(&removed_id));
    nodes[leader]
        .cluster_client()
        .change_membership(pmmcp::raft::proto::ChangeMembershipRequest {
            voters,
            retain: false,
        })
        .await
        .expect("the stopped node removed");
    wait_until("the removed node's agents are swept", DEADLINE, || {
        let st = nodes[leader].dispatcher.state();
        let ok = on_follower.iter().all(|id| {
            let pmm_agent = pmmcp::domain::AgentId::from(id.agent_id.as_str());
            !st.agents[&pmm_agent].connected
                && st
                    .children_of(&pmm_agent)
                    .iter()
                    .all(|c| st.agents[c].status == pmmcp::domain::AgentStatus::Unknown)
        });
        async move { ok }
    })
    .await;
    assert!(
        connected(&nodes[leader], &on_witness),
        "agents on a member node are not swept"
    );
    drop(follower_agents);
    sweeper.stop();
}

/// pmm-agent's own form of the token (Basic, the token as the password) works; revoking the
/// token ends the live stream at once and refuses the next; another caller reusing a
/// RegisterNode command id gets no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_revocation_and_command_id_reuse() {
    use base64::Engine as _;
    let s = server().await;
    let ids = sim::register(s.channel.clone(), &s.admin, "rev", 1)
        .await
        .expect("registered");
    let me = &ids[0];
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("service_token:{}", me.token))
    );
    // A request stream kept open (a closed one is a disconnect).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ag::AgentMessage {
        id: 1,
        payload: Some(ag::agent_message::Payload::Ping(ag::Ping {})),
        status: None,
    })
    .await
    .expect("queued");
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    for (k, v) in [
        ("pmm-agent-id", me.agent_id.as_str()),
        ("pmm-agent-version", "3.0.0"),
        ("authorization", basic.as_str()),
    ] {
        req.metadata_mut().insert(k, v.parse().expect("ascii"));
    }
    let mut raw = ag::agent_service_client::AgentServiceClient::new(s.channel.clone())
        .connect(req)
        .await
        .expect("basic auth accepted")
        .into_inner();
    // The first messages: the Pong and the desired state, in some order.
    let mut got_state = false;
    for _ in 0..2 {
        let m = raw.message().await.expect("message").expect("a message");
        got_state |= matches!(m.payload, Some(ag::server_message::Payload::SetState(_)));
    }
    assert!(got_state, "the desired state arrived");
    // Revoke the token: the stream ends, the next connect is refused.
    s.node
        .dispatcher
        .dispatch(
            pmmcp::commands::Command::RevokeToken(pmmcp::commands::tokens::RevokeToken {
                token: format!("pmm-agent/{}", me.agent_id),
            }),
            pmmcp::commands::CommandMeta::new("test"),
        )
        .await
        .expect("revoked");
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match raw.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(st) => return Some(st),
            }
        }
    })
    .await
    .expect("the stream ended in time");
    assert_eq!(end.map(|st| st.code()), Some(Code::Aborted));
    drop(tx);
    let err = raw_connect(
        &s,
        &[
            ("pmm-agent-id", &me.agent_id),
            ("pmm-agent-version", "3.0.0"),
            ("authorization", &basic),
        ],
        vec![],
    )
    .await
    .expect_err("a revoked token is refused");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Another admin reusing a RegisterNode command id gets no token.
    let other_admin = s.node.token("admin2", Role::Admin).await;
    let mut management =
        mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone());
    let req = |token: &str| {
        let mut r = authed(
            mgmt::RegisterNodeRequest {
                node_type: inv::NodeType::GenericNode as i32,
                node_name: "reused".into(),
                address: "10.1.1.2".into(),
                ..Default::default()
            },
            token,
        );
        r.metadata_mut().insert(
            "x-pmm-command-id",
            "register-reused-1".parse().expect("ascii"),
        );
        r
    };
    let first = management
        .register_node(req(&s.admin))
        .await
        .expect("first")
        .into_inner();
    assert!(!first.token.is_empty());
    let reused = management
        .register_node(req(&other_admin))
        .await
        .expect("answered")
        .into_inner();
    assert!(reused.token.is_empty(), "no token for another caller");
    assert!(!reused.warning.is_empty());
}

/// RDS exporters of one pmm-agent run as one process per AWS key, whose report reaches every
/// member; Azure exporters get their config file. Secrets go only into the state and its
/// redact words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_groups_and_azure_exporters_are_rendered() {
    let s = server().await;
    let ids = sim::register(s.channel.clone(), &s.admin, "cloud", 1)
        .await
        .expect("registered");
    let me = &ids[0];
    let mut management =
        mgmt::management_service_client::ManagementServiceClient::new(s.channel.clone());
    for (instance, region, key) in [
        ("db-b", "us-east-1", "AKIA1"),
        ("db-a", "us-east-1", "AKIA1"),
        ("db-c", "eu-west-1", "AKIA2"),
    ] {
        management
            .add_service(authed(
                mgmt::AddServiceRequest {
                    service: Some(mgmt::add_service_request::Service::Rds(
                        mgmt::AddRdsServiceParams {
                            region: region.into(),
                            instance_id: instance.into(),
                            address: format!("{instance}.example"),
                            port: 3306,
                            engine: mgmt::DiscoverRdsEngine::Mysql as i32,
                            pmm_agent_id: me.agent_id.clone(),
                            username: "u".into(),
                            password: "p".into(),
                            aws_access_key: key.into(),
                            aws_secret_key: format!("secret-of-{key}"),
                            rds_exporter: true,
                            skip_connection_check: true,
                            ..Default::default()
                        },
                    )),
                },
                &s.admin,
            ))
            .await
            .expect("rds added");
    }
    let before = s.node.dispatcher.state().revision;
    let agent = sim::start(s.channel.clone(), me.clone(), Behaviour::default());
    applied(&agent, before).await;
    let state = agent.last_state.borrow().clone().expect("state");
    let group = |key: &str| format!("{}:rds/{key}", me.agent_id);
    let p1 = &state.agent_processes[&group("AKIA1")];
    assert_eq!(p1.r#type, inv::AgentType::RdsExporter as i32);
    let config = &p1.text_files["config"];
    let (a, b) = (config.find("instance: db-a"), config.find("instance: db-b"));
    assert!(a.is_some() && a < b, "instances sorted: {config}");
    assert!(
        config.contains("aws_secret_key: secret-of-AKIA1"),
        "{config}"
    );
    assert_eq!(p1.redact_words, vec!["secret-of-AKIA1".to_owned()]);
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(config).expect("YAML");
    assert_eq!(parsed["instances"].as_sequence().map(Vec::len), Some(2));
    assert_eq!(
        parsed["instances"][0]["disable_basic_metrics"],
        serde_yaml_ng::Value::Bool(false)
    );
    assert!(state.agent_processes.contains_key(&group("AKIA2")));
    // The group's RUNNING report reaches both members.
    wait_until("both members of the group RUNNING", DEADLINE, || {
        let st = s.node.dispatcher.state();
        let running = st
            .children_of(&pmmcp::domain::AgentId::from(me.agent_id.as_str()))
            .iter()
            .filter_map(|id| st.agents.get(id))
            .filter(|a| a.agent_type == pmmcp::domain::AgentType::RdsExporter)
            .filter(|a| a.status == pmmcp::domain::AgentStatus::Running && a.listen_port.is_some())
            .count();
        async move { running == 3 }
    })
    .await;

    // Azure runs on the server's own pmm-agent.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/management/services/azure", s.base))
        .bearer_auth(&s.admin)
        .body(
            r#"{"region": "eastus", "instance_id": "az-1", "address": "az-1.example", "port": 5432,
            "username": "u", "azure_client_id": "c", "azure_client_secret": "az-secret",
            "azure_tenant_id": "t", "azure_subscription_id": "sub", "azure_resource_group": "rg",
            "type": "DISCOVER_AZURE_DATABASE_TYPE_POSTGRESQL", "azure_database_exporter": true}"#,
        )
        .send()
        .await
        .expect("azure");
    assert!(resp.status().is_success());
    let secret = pmmcp::domain::token::new_token_secret();
    s.node
        .dispatcher
        .dispatch(
            pmmcp::commands::Command::CreateToken(pmmcp::commands::tokens::CreateToken {
                agent_id: Some(pmmcp::domain::AgentId::from("pmm-server")),
                name: "pmm-agent/pmm-server".into(),
                role: Role::Agent,
                hash: pmmcp::domain::token::token_hash(&secret),
            }),
            pmmcp::commands::CommandMeta::new("test"),
        )
        .await
        .expect("server token");
    let before = s.node.dispatcher.state().revision;
    let server_agent = sim::start(
        s.channel.clone(),
        Identity {
            agent_id: "pmm-server".into(),
            token: secret,
        },
        Behaviour::default(),
    );
    applied(&server_agent, before).await;
    let state = server_agent.last_state.borrow().clone().expect("state");
    let azure = state
        .agent_processes
        .values()
        .find(|p| p.r#type == inv::AgentType::AzureDatabaseExporter as i32)
        .expect("azure exporter");
    let config = &azure.text_files["config"];
    assert!(
        config.contains("Microsoft.DBforPostgreSQL/flexibleServers"),
        "{config}"
    );
    assert!(config.contains("client_secret: az-secret"), "{config}");
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(config).expect("YAML");
    assert_eq!(
        parsed["resource_groups"][0]["resource_group"].as_str(),
        Some("rg")
    );
    assert_eq!(
        parsed["resource_groups"][0]["metrics"]
            .as_sequence()
            .map(Vec::len),
        Some(7)
    );
    assert_eq!(azure.redact_words, vec!["az-secret".to_owned()]);
    assert!(
        !state
            .agent_processes
            .keys()
            .any(|k| k.starts_with("vmagent-")),
        "the server's own pmm-agent runs no vmagent"
    );
}

/// A late connection of an older stream changes nothing; a live stream whose connection the
/// state lost (here to a dead stream whose node's clock is ahead, sent by hand) records itself
/// again at its pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_records_its_connection_again_and_stale_ones_are_ignored() {
    use pmmcp::commands::agent_reports::{Connection, ReportAgents, ReportItem};
    use pmmcp::commands::{Command, CommandMeta};
    let s = server().await;
    let ids = sim::register(s.channel.clone(), &s.admin, "heal", 1)
        .await
        .expect("registered");
    let me = &ids[0];
    let id = pmmcp::domain::AgentId::from(me.agent_id.as_str());
    let agent = sim::start(s.channel.clone(), me.clone(), Behaviour::default());
    let recorded = || {
        let st = s.node.dispatcher.state();
        st.agents
            .get(&id)
            .filter(|a| a.connected)
            .and_then(|a| Some((a.session.clone()?, a.session_since?)))
    };
    wait_until("the connection recorded", DEADLINE, || async {
        recorded().is_some()
    })
    .await;
    let (session, since) = recorded().expect("recorded");
    let report = |item: Connection| async {
        s.node
            .dispatcher
            .dispatch(
                Command::ReportAgents(ReportAgents {
                    items: vec![ReportItem::Connection(item)],
                }),
                CommandMeta::new("test"),
            )
            .await
            .expect("recorded")
    };
    // An older stream's connection, arriving late: nothing changes.
    report(Connection {
        pmm_agent_id: id.clone(),
        session: "an-older-stream".into(),
        connected: true,
        since: Some(since - chrono::Duration::seconds(5)),
        version: None,
    })
    .await;
    assert_eq!(recorded(), Some((session.clone(), since)));
    // A dead stream from a node whose clock runs a minute ahead, connected and closed: the
    // agent shows disconnected, with a newest stream "later" than the live one. The live
    // stream claims the connection again at its pings, as later than that.
    let ahead = since + chrono::Duration::seconds(60);
    for connected in [true, false] {
        report(Connection {
            pmm_agent_id: id.clone(),
            session: "a-dead-stream".into(),
            connected,
            since: Some(ahead),
            version: None,
        })
        .await;
    }
    assert_eq!(recorded(), None);
    let pings = pmmcp::agents::PING_EVERY * 3 + DEADLINE;
    wait_until("the live stream recorded itself again", pings, || async {
        recorded().is_some()
    })
    .await;
    let (again, again_since) = recorded().expect("recorded");
    assert_eq!(again, session);
    assert!(again_since > ahead, "{again_since} after {ahead}");
    agent.stop();
}
