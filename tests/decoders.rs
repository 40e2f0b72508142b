//! Property tests over the request decoders: random query strings on every list route, random
//! JSON on every REST command route of the public API, and random bodies on the command
//! submission RPC never panic the server, never answer 500, and a rejected request changes
//! nothing (the log head stays where it was).

mod support;

use pmmcp::domain::Role;
use pmmcp::raft::network::Peers;
use pmmcp::raft::proto::ForwardRequest;
use proptest::prelude::*;
use serde_json::Value;
use support::cluster::{TestNode, head};

struct Fixture {
    rt: tokio::runtime::Runtime,
    node: TestNode,
    base: String,
    token: String,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (node, base, token) = rt.block_on(async {
        let node = TestNode::single().await;
        let token = node.token("admin", Role::Admin).await;
        let base = format!("http://{}", node.serve_public().await);
        (node, base, token)
    });
    Fixture {
        rt,
        node,
        base,
        token,
    }
}

/// Random JSON built from the API's own field names, so that many requests get past the
/// first unknown field and into the typed decoders and the rules.
fn json_value() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "generic",
        "container",
        "remote",
        "mysql",
        "postgresql",
        "mongodb",
        "external",
        "node_name",
        "node_id",
        "address",
        "port",
        "node_type",
        "custom_labels",
        "service_name",
        "pmm_agent_id",
        "username",
        "password",
        "listen_port",
        "metrics_mode",
        "values",
        "data_retention",
        "metrics_resolutions",
        "hr",
        "enable_telemetry",
        "force",
        "agent_id",
        "service_id",
        "node_exporter",
        "runs_on_node_id",
        "region",
        "instance_id",
        "engine",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-5i64..70_000).prop_map(Value::from),
        "[a-zA-Z0-9_ .:=-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("NODE_TYPE_GENERIC_NODE"),
            Just("METRICS_MODE_PUSH"),
            Just("5s"),
            Just("86400s"),
            Just("1.5s"),
            Just("x"),
            Just(""),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(proptest::sample::select(KEYS), inner, 0..5).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_query_strings_get_an_answer_never_a_500(
        route in prop_oneof![Just("nodes"), Just("services"), Just("agents"), Just("events"), Just("nodes/x")],
        query in "[a-z_=&%0-9A-Z.,:-]{0,60}",
    ) {
        thread_local!(static FIX: Fixture = fixture());
        FIX.with(|f| {
            let before = f.rt.block_on(head(&f.node.pool));
            let url = format!("{}/v1/query/{route}?{query}", f.base);
            let status = f.rt.block_on(async {
                reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(&f.token)
                    .send()
                    .await
                    .expect("an answer")
                    .status()
                    .as_u16()
            });
            prop_assert!(matches!(status, 200 | 400 | 404 | 503), "{url}: {status}");
            prop_assert_eq!(f.rt.block_on(head(&f.node.pool)), before);
            Ok(())
        })?;
    }

    #[test]
    fn random_command_bodies_are_refused_and_change_nothing(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        thread_local!(static FIX: Fixture = fixture());
        FIX.with(|f| {
            let before = f.rt.block_on(head(&f.node.pool));
            let answer = f.rt.block_on(async {
                let mut client = Peers::default()
                    .raft_client(1, &f.node.addr.to_string())
                    .expect("client");
                client.submit(ForwardRequest { json: body.clone() }).await
            });
            // Random bytes are not a list of commands (an empty list would be "[]").
            let status = answer.expect_err("refused");
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            prop_assert_eq!(f.rt.block_on(head(&f.node.pool)), before);
            Ok(())
        })?;
    }

    #[test]
    fn random_json_on_every_command_route_never_gets_a_500_and_refusals_change_nothing(
        route in proptest::sample::select(
            pmmcp::grpc::routes().iter().filter(|r| r.method != "GET").cloned().collect::<Vec<_>>()
        ),
        body in json_value(),
    ) {
        thread_local!(static FIX: Fixture = fixture());
        FIX.with(|f| {
            let before = f.rt.block_on(head(&f.node.pool));
            let path = route.path.replace("{node_id}", "n1").replace("{service_id}", "s1").replace("{agent_id}", "a1");
            let url = format!("{}{path}", f.base);
            let (status, answer) = f.rt.block_on(async {
                let resp = reqwest::Client::new()
                    .request(route.method.parse().expect("method"), &url)
                    .bearer_auth(&f.token)
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("an answer");
                (resp.status().as_u16(), resp.text().await.unwrap_or_default())
            });
            prop_assert!(status < 500, "{} {url} {body}: {status} {answer}", route.method);
            if status != 200 {
                prop_assert!(answer.contains("\"message\""), "{answer}");
                prop_assert_eq!(f.rt.block_on(head(&f.node.pool)), before);
            }
            Ok(())
        })?;
    }
}
