//! File projections on live nodes: a burst of commands is coalesced into few renders and the
//! last one matches the final state; three nodes write byte-identical files for the same
//! revision; a state rebuilt from the log renders the same bytes.

mod support;

use pmmcp::crypto::Cipher;
use pmmcp::files::{self, Hooks, Projector, RenderOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::cluster::{Opts, TestNode, converged, three_nodes};
use support::*;

fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "pmmcp-files-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

fn start_projector(node: &TestNode, dir: &Path, cipher: &Arc<Cipher>) -> Projector {
    let p = Projector::new(
        dir.to_owned(),
        RenderOptions::default(),
        Hooks::default(),
        cipher.clone(),
    );
    tokio::spawn(p.clone().run(node.dispatcher.subscribe()));
    p
}

/// Every file under `dir` (manifests included) with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_commands_is_coalesced_and_the_files_follow_the_state() {
    let node = TestNode::single().await;
    let cipher = Arc::new(Cipher::random());
    let dir = out_dir("burst");
    let projector = start_projector(&node, &dir, &cipher);
    let first = node.dispatcher.state().revision;
    wait_until("the first render", Duration::from_secs(10), || {
        let done = projector.status().revision >= first;
        async move { done }
    })
    .await;
    let renders_before = projector.status().renders;
    // 200 commands from 20 callers.
    let mut tasks = Vec::new();
    for c in 0..20 {
        let d = node.dispatcher.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                d.dispatch(
                    add_node(&format!("n{c}-{i}")),
                    pmmcp::commands::CommandMeta::new("t"),
                )
                .await
                .expect("applied");
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let settings =
        pmmcp::commands::Command::ChangeSettings(pmmcp::commands::settings::ChangeSettings {
            metrics_resolutions_hr: Some(Duration::from_secs(7)),
            ..Default::default()
        });
    let last = node
        .dispatcher
        .dispatch(settings, pmmcp::commands::CommandMeta::new("t"))
        .await
        .expect("settings")
        .revision;
    wait_until(
        "the render of the last revision",
        Duration::from_secs(10),
        || {
            let done = projector.status().revision >= last;
            async move { done }
        },
    )
    .await;
    let renders = projector.status().renders - renders_before;
    assert!(renders < 100, "201 commands caused {renders} renders");
    let text = std::fs::read_to_string(dir.join("victoriametrics-promscrape.yml")).expect("file");
    assert!(
        text.contains("scrape_interval: 7s"),
        "the new HR resolution is in the file"
    );
    let manifest: files::Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(files::MANIFEST)).expect("manifest"))
            .expect("manifest JSON");
    assert_eq!(
        manifest.files["victoriametrics-promscrape.yml"],
        files::sha256_hex(text.as_bytes())
    );
    assert_eq!(manifest.revision, last);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_write_identical_files_and_a_rebuild_renders_them_again() {
    let nodes = three_nodes(Opts::default()).await;
    let cipher = Arc::new(Cipher::random());
    let dirs: Vec<PathBuf> = (1..=3).map(|i| out_dir(&format!("node{i}"))).collect();
    let projectors: Vec<Projector> = nodes
        .iter()
        .zip(&dirs)
        .map(|(n, d)| start_projector(n, d, &cipher))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        n.dispatcher
            .dispatch(
                register_node(&format!("host{i}")),
                pmmcp::commands::CommandMeta::new("t"),
            )
            .await
            .expect("registered");
    }
    let settings =
        pmmcp::commands::Command::ChangeSettings(pmmcp::commands::settings::ChangeSettings {
            data_retention: Some(Duration::from_secs(10 * 86_400)),
            ..Default::default()
        });
    nodes[1]
        .dispatcher
        .dispatch(settings, pmmcp::commands::CommandMeta::new("t"))
        .await
        .expect("settings");
    // Alert rules, sent through a follower: every node writes the same rule files.
    for (i, template) in ["pmm_node_down", "pmm_node_high_cpu_load"]
        .iter()
        .enumerate()
    {
        let rule =
            pmmcp::commands::Command::CreateAlertRule(pmmcp::commands::alerting::CreateRule {
                template_name: (*template).to_owned(),
                name: format!("rule {i}"),
                group: "cluster".to_owned(),
                ..Default::default()
            });
        nodes[2]
            .dispatcher
            .dispatch(rule, pmmcp::commands::CommandMeta::new("t"))
            .await
            .expect("rule");
    }
    let pools: Vec<_> = nodes.iter().map(|n| &n.pool).collect();
    let (revision, _) = converged(&pools, 0).await;
    wait_until(
        "every node rendered the converged revision",
        Duration::from_secs(20),
        || {
            let done = projectors.iter().all(|p| p.status().revision >= revision);
            async move { done }
        },
    )
    .await;
    let first = snapshot(&dirs[0]);
    assert!(
        first
            .iter()
            .any(|(name, bytes)| name == "supervisord.d/victoriametrics.ini"
                && String::from_utf8_lossy(bytes).contains("--retentionPeriod=10d"))
    );
    assert_eq!(
        first
            .iter()
            .filter(|(name, _)| name.starts_with("vmalert/"))
            .count(),
        2,
        "one file per rule"
    );
    for d in &dirs[1..] {
        assert_eq!(snapshot(d), first, "byte-identical files and manifests");
    }
    // A state folded again from node 3's log renders the same bytes.
    let mut rebuilt = pmmcp::domain::State::default();
    pmmcp::store::log::catch_up(&nodes[2].pool, &mut rebuilt)
        .await
        .expect("replay");
    assert_eq!(rebuilt.revision, revision);
    let again = files::render_all(&rebuilt, &cipher, &RenderOptions::default());
    let live = files::render_all(
        &nodes[0].dispatcher.state(),
        &cipher,
        &RenderOptions::default(),
    );
    assert_eq!(again, live);
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_shows_files_now_and_at_a_past_revision_and_previews_a_command() {
    let node = TestNode::single().await;
    let base = format!("http://{}", node.serve_public().await);
    let viewer = node.token("viewer", pmmcp::domain::Role::Viewer).await;
    let admin = node.token("admin", pmmcp::domain::Role::Admin).await;
    let client = reqwest::Client::new();
    let get = |url: String, token: String| {
        let client = client.clone();
        async move {
            let resp = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let sha = resp
                .headers()
                .get("x-pmm-sha256")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, sha, resp.text().await.expect("body"))
        }
    };
    // An external exporter with a password: it has a port, so it has a job.
    let (status, body) = {
        let resp = client
            .post(format!("{base}/v1/management/services"))
            .bearer_auth(&admin)
            .body(r#"{"external": {"node_id": "pmm-server", "runs_on_node_id": "pmm-server", "service_name": "app", "listen_port": 9104, "username": "u", "password": "very-secret-pw"}}"#)
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    };
    assert_eq!(status, 200, "{body}");
    let before = node.dispatcher.state().revision;
    let settings =
        pmmcp::commands::Command::ChangeSettings(pmmcp::commands::settings::ChangeSettings {
            data_retention: Some(Duration::from_secs(5 * 86_400)),
            ..Default::default()
        });
    node.dispatcher
        .dispatch(settings, pmmcp::commands::CommandMeta::new("t"))
        .await
        .expect("settings");

    let (status, _, list) = get(format!("{base}/v1/query/files"), viewer.clone()).await;
    assert_eq!(status, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    let entry = list["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "victoriametrics-promscrape.yml")
        .expect("the scrape file")
        .clone();
    let (status, sha, scrape) = get(
        format!("{base}/v1/query/files/victoriametrics-promscrape.yml"),
        viewer.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        sha.as_deref(),
        entry["sha256"].as_str(),
        "the list and the file agree"
    );
    assert_eq!(
        sha,
        Some(files::sha256_hex(scrape.as_bytes())),
        "the hash is of the text shown"
    );
    assert!(scrape.contains("external-exporter_") && scrape.contains(files::scrape::REDACTED));
    assert!(
        !scrape.contains("very-secret-pw"),
        "no secret in query output"
    );
    // The program file now and before the settings change.
    let now = get(
        format!("{base}/v1/query/files/supervisord.d/victoriametrics.ini"),
        viewer.clone(),
    )
    .await;
    let then = get(
        format!("{base}/v1/query/files/supervisord.d/victoriametrics.ini?revision={before}"),
        viewer.clone(),
    )
    .await;
    assert!(now.2.contains("--retentionPeriod=5d"), "{}", now.2);
    assert!(then.2.contains("--retentionPeriod=30d"), "{}", then.2);
    let (status, _, _) = get(format!("{base}/v1/query/files/nope.yml"), viewer.clone()).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(
        format!("{base}/v1/query/files/supervisord.d/vmalert.ini?revision=999999"),
        viewer.clone(),
    )
    .await;
    assert_eq!(status, 400);

    // Preview: the diff of what a command would change; nothing is committed.
    let head = node.dispatcher.state().revision;
    let preview = |token: String, body: &'static str| {
        let client = client.clone();
        let url = format!("{base}/v1/query/files:preview");
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .expect("request");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    let (status, body) = preview(admin.clone(), r#"{"rpc": "server.v1.ServerService/ChangeSettings", "request": {"data_retention": "864000s", "metrics_resolutions": {"hr": "7s"}}}"#).await;
    assert_eq!(status, 200, "{body}");
    let diff: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let changed: Vec<&str> = diff["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(
        changed.contains(&"supervisord.d/victoriametrics.ini")
            && changed.contains(&"victoriametrics-promscrape.yml"),
        "{changed:?}"
    );
    assert!(
        !changed.contains(&"supervisord.d/grafana.ini"),
        "only the files it changes"
    );
    assert!(body.contains("+\\t\\t--retentionPeriod=10d"), "{body}");
    assert!(!body.contains("very-secret-pw"));
    let (status, body) = preview(admin.clone(), r#"{"rpc": "server.v1.ServerService/ChangeSettings", "request": {"data_retention": "3600s"}}"#).await;
    assert_eq!(status, 400, "a command the rules refuse: {body}");
    let (status, _) = preview(
        admin.clone(),
        r#"{"rpc": "inventory.v1.NodesService/ListNodes", "request": {}}"#,
    )
    .await;
    assert_eq!(status, 400, "not a command");
    let (status, _) = preview(
        viewer.clone(),
        r#"{"rpc": "server.v1.ServerService/ChangeSettings", "request": {}}"#,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        node.dispatcher.state().revision,
        head,
        "previews commit nothing"
    );
}
