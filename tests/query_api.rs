//! The query API over HTTP: paging, sorting, filters and totals; get by id; the revision in
//! the body and the header; min_revision and linearizable reads, on one node and across a
//! three-node cluster; the event history and the chain; bad parameters.

mod support;

use pmmcp::api::{QueryApi, REVISION_HEADER, router};
use pmmcp::commands::tokens::RevokeToken;
use pmmcp::commands::{Command, CommandMeta};
use pmmcp::domain::Role;
use pmmcp::domain::token::token_hash;
use pmmcp::raft::service::Internal;
use serde_json::Value;
use support::cluster::{Opts, TestNode, three_nodes};
use support::*;

/// Serves the query API of `node` on a loopback port; returns its base URL.
async fn serve_api(node: &TestNode) -> String {
    let internal = Internal::new(node.dispatcher.clone(), node.pool.clone());
    let app = router(QueryApi {
        pool: node.pool.clone(),
        dispatcher: node.dispatcher.clone(),
        internal,
        agents: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// GET `url` with a bearer token: status, revision header and JSON body.
async fn get(token: &str, url: &str) -> (u16, Option<i64>, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let revision = resp
        .headers()
        .get(REVISION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, revision, resp.json().await.expect("JSON body"))
}

/// Adds nodes named `{prefix}{i:02}` sent by `actor`.
async fn add_nodes(node: &TestNode, prefix: &str, n: usize, actor: &str) {
    for i in 0..n {
        node.dispatcher
            .dispatch(
                add_node(&format!("{prefix}{i:02}")),
                CommandMeta::new(actor),
            )
            .await
            .expect("applied");
    }
}

async fn one_node() -> (TestNode, String, String) {
    let node = TestNode::single().await;
    let base = serve_api(&node).await;
    let admin = node.token("admin", Role::Admin).await;
    (node, base, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_sort_filter_and_count_at_the_revision_they_reflect() {
    let (node, base, admin) = one_node().await;
    add_nodes(&node, "n", 25, "t").await;
    let revision = node.dispatcher.state().revision;
    let (status, header, body) = get(
        &admin,
        &format!("{base}/v1/query/nodes?limit=10&order_by=node_name"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header, Some(revision));
    assert_eq!(body["revision"], revision);
    assert_eq!(body["total"], 26, "25 nodes and the PMM Server's");
    let names: Vec<&str> = body["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node_name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "n00", "n01", "n02", "n03", "n04", "n05", "n06", "n07", "n08", "n09"
        ]
    );
    let (_, _, page) = get(
        &admin,
        &format!("{base}/v1/query/nodes?limit=10&offset=20&order_by=-node_name"),
    )
    .await;
    assert_eq!(page["nodes"].as_array().expect("nodes").len(), 6);
    assert_eq!(page["nodes"][0]["node_name"], "n05");
    // PMM's enum spelling and the stored one filter alike.
    for t in ["NODE_TYPE_GENERIC_NODE", "generic"] {
        let (_, _, b) = get(
            &admin,
            &format!("{base}/v1/query/nodes?node_type={t}&limit=1"),
        )
        .await;
        assert_eq!(b["total"], 26);
    }
    let (_, _, b) = get(
        &admin,
        &format!("{base}/v1/query/nodes?node_type=NODE_TYPE_CONTAINER_NODE"),
    )
    .await;
    assert_eq!(b["total"], 0);
    let (_, _, agents) = get(
        &admin,
        &format!("{base}/v1/query/agents?agent_type=AGENT_TYPE_PMM_AGENT"),
    )
    .await;
    assert_eq!(agents["total"], 1, "{agents}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_by_id_finds_an_item_and_an_unknown_id_is_not_found() {
    let (node, base, admin) = one_node().await;
    let applied = node
        .dispatcher
        .dispatch(add_node("db1"), CommandMeta::new("t"))
        .await
        .expect("applied");
    let id = node
        .dispatcher
        .state()
        .nodes
        .values()
        .find(|n| n.node_name == "db1")
        .map(|n| n.node_id.to_string())
        .expect("node");
    let (status, header, body) = get(&admin, &format!("{base}/v1/query/nodes/{id}")).await;
    assert_eq!((status, header), (200, Some(applied.revision)));
    assert_eq!(body["node"]["node_name"], "db1");
    let (status, _, body) = get(&admin, &format!("{base}/v1/query/nodes/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "NotFound");
    assert_eq!(body["message"], "Node with ID \"nope\" not found.");
    // As in PMM, the pmm-agent, node or service an agent list filters on must exist.
    let (status, _, body) = get(&admin, &format!("{base}/v1/query/agents?node_id=nope")).await;
    assert_eq!(status, 404);
    assert_eq!(body["message"], "Node with ID \"nope\" not found.");
    let (status, _, body) = get(
        &admin,
        &format!("{base}/v1/query/agents?pmm_agent_id=pmm-server"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get(&admin, &format!("{base}/v1/query/settings")).await;
    assert_eq!(status, 200);
    assert!(body["settings"].is_object());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_with_a_clear_400() {
    let (node, base, admin) = one_node().await;
    for (query, says) in [
        ("nodes?limit=0", "limit"),
        ("nodes?limit=abc", "limit"),
        ("nodes?offset=-1", "offset"),
        ("nodes?order_by=password", "order_by"),
        ("nodes?color=red", "color"),
        ("nodes?service_type=mysql", "service_type"),
        ("agents?node_id=a&service_id=b", "at most one"),
        ("nodes?consistency=eventual", "consistency"),
        ("nodes?min_revision=-3", "min_revision"),
        ("events?limit=100000", "limit"),
    ] {
        let (status, _, body) = get(&admin, &format!("{base}/v1/query/{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "InvalidArgument", "{query}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(says), "{query}: {message}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_revision_waits_for_a_write_that_has_not_happened_yet() {
    let (node, base, admin) = one_node().await;
    let ahead = node.dispatcher.state().revision + 1;
    let url = format!("{base}/v1/query/nodes?node_type=generic&min_revision={ahead}");
    let t = admin.clone();
    let waiting = tokio::spawn(async move { get(&t, &url).await });
    node.dispatcher
        .dispatch(add_node("late"), CommandMeta::new("t"))
        .await
        .expect("applied");
    let (status, header, body) = waiting.await.expect("task");
    assert_eq!(status, 200);
    assert!(header.is_some_and(|r| r >= ahead));
    assert!(
        body["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["node_name"] == "late"),
        "{body}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_pages_and_filters_and_the_chain_verifies() {
    let (node, base, admin) = one_node().await;
    add_nodes(&node, "a", 3, "alice").await;
    let (status, _, first) = get(&admin, &format!("{base}/v1/query/events?limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(first["events"].as_array().expect("events").len(), 2);
    let next = first["next_after"].as_i64().expect("next_after");
    let (_, _, second) = get(
        &admin,
        &format!("{base}/v1/query/events?limit=2&after={next}"),
    )
    .await;
    assert_eq!(second["events"][0]["position"], next + 1);
    let (_, _, alice) = get(
        &admin,
        &format!("{base}/v1/query/events?actor=alice&event_type=NodeAdded"),
    )
    .await;
    let events = alice["events"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["metadata"]["actor"] == "alice"));
    let stream = events[0]["stream_id"].as_str().expect("stream");
    let (_, _, one) = get(
        &admin,
        &format!("{base}/v1/query/events?stream_id={stream}"),
    )
    .await;
    assert_eq!(one["events"].as_array().expect("events").len(), 1);
    let (_, header, head) = get(&admin, &format!("{base}/v1/query/chain")).await;
    assert_eq!(Some(head["position"].as_i64().expect("position")), header);
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/query/chain:verify"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("verify");
    let report: Value = resp.json().await.expect("report");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["head_hash"], head["hash"]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_is_read_on_another_with_min_revision_or_linearizable() {
    let nodes = three_nodes(Opts::default()).await;
    let apis = [serve_api(&nodes[1]).await, serve_api(&nodes[2]).await];
    let admin = nodes[0].token("admin", Role::Admin).await;
    let at = nodes[0].dispatcher.state().revision;
    for n in &nodes[1..] {
        n.dispatcher
            .wait_for(at, std::time::Duration::from_secs(10))
            .await
            .expect("the token reached every node");
    }
    // Read-your-writes on another node: by waiting for the write's revision, or by asking for
    // a linearizable read (the follower learns the committed revision from the leader).
    for (api, name, query) in [
        (&apis[0], "written-on-1", "min_revision"),
        (&apis[1], "written-again", "consistency=linearizable"),
    ] {
        let applied = nodes[0]
            .dispatcher
            .dispatch(add_node(name), CommandMeta::new("t"))
            .await
            .expect("applied");
        let query = match query {
            "min_revision" => format!("min_revision={}", applied.revision),
            other => other.to_owned(),
        };
        let (status, header, body) = get(&admin, &format!("{api}/v1/query/nodes?{query}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(header.is_some_and(|r| r >= applied.revision));
        let names = body["nodes"].as_array().expect("nodes");
        assert!(names.iter().any(|n| n["node_name"] == name), "{name}");
    }
    let (status, _, cluster) = get(&admin, &format!("{}/v1/query/cluster", apis[0])).await;
    assert_eq!(status, 200);
    assert_eq!(cluster["leader"], 1);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_token_of_a_role_that_may_make_it() {
    let (node, base, admin) = one_node().await;
    let viewer = node.token("ui", Role::Viewer).await;
    let auditor = node.token("audit", Role::Auditor).await;
    let nodes = format!("{base}/v1/query/nodes");
    let events = format!("{base}/v1/query/events");
    let tokens = format!("{base}/v1/query/tokens");
    // No token, an unknown one: 401 with a reason.
    let resp = reqwest::get(&nodes).await.expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.expect("body");
    assert_eq!(body["error"], "Unauthenticated");
    let (status, _, body) = get("pmmcp_not-a-token", &nodes).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("Unauthenticated"))
    );
    // Each role reaches its routes and gets 403 elsewhere.
    for (secret, url, expected) in [
        (&viewer, &nodes, 200),
        (&viewer, &events, 403),
        (&viewer, &tokens, 403),
        (&auditor, &events, 200),
        (&auditor, &nodes, 403),
        (&admin, &nodes, 200),
        (&admin, &events, 200),
        (&admin, &tokens, 200),
    ] {
        let (status, _, body) = get(secret, url).await;
        assert_eq!(status, expected, "{url}: {body}");
        if expected == 403 {
            assert_eq!(body["error"], "PermissionDenied");
        }
    }
    // The token list shows names and roles, never a hash or a secret.
    let (_, _, list) = get(&admin, &tokens).await;
    let text = list.to_string();
    assert!(!text.contains(&token_hash(&viewer)) && !text.contains(&viewer));
    assert_eq!(list["tokens"].as_array().expect("tokens").len(), 3);
    // A revoked token (by name) stops working at once.
    let revoked = node
        .dispatcher
        .dispatch(
            Command::RevokeToken(RevokeToken {
                token: "ui".to_owned(),
            }),
            CommandMeta::new("t"),
        )
        .await
        .expect("revoked");
    node.dispatcher
        .wait_for(revoked.revision, std::time::Duration::from_secs(10))
        .await
        .expect("applied");
    let (status, _, _) = get(&viewer, &nodes).await;
    assert_eq!(status, 401);
    // Only the hash is in the log.
    let (_, _, history) = get(&admin, &format!("{events}?event_type=TokenCreated")).await;
    let text = history.to_string();
    assert!(text.contains(&token_hash(&auditor)) && !text.contains(&auditor));
    node.stop().await;
}
