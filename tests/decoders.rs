//! Property tests over the request decoders: random query strings on every list route and
//! random bodies on the command submission RPC never panic the server, never answer 500, and
//! a rejected request changes nothing (the log head stays where it was).

mod support;

use pmmcp::api::{QueryApi, router};
use pmmcp::domain::Role;
use pmmcp::raft::network::Peers;
use pmmcp::raft::proto::ForwardRequest;
use pmmcp::raft::service::Internal;
use proptest::prelude::*;
use std::sync::Arc;
use support::cluster::{Opts, TestNode, head};
use support::*;

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
        let node = TestNode::start(
            1,
            Arc::new(TestDb::new().await),
            None,
            true,
            Opts::default(),
        )
        .await;
        let token = node.token("admin", Role::Admin).await;
        let app = router(QueryApi {
            pool: node.pool.clone(),
            dispatcher: node.dispatcher.clone(),
            internal: Internal::new(node.dispatcher.clone(), node.pool.clone()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (node, base, token)
    });
    Fixture {
        rt,
        node,
        base,
        token,
    }
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
}
