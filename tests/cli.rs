//! The binary end to end: `pmm-cp serve` as a process, `pmm-cp token create --json` and
//! `pmm-cp cluster status --json` against it, and the query API with the printed token.

mod support;

use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use support::*;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pmm-cp");

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Runs `pmm-cp` with `args`; returns its exit code and stdout.
async fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .await
        .expect("run pmm-cp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// GET `url` with a bearer token: the status.
async fn status_with(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Starts `pmm-cp serve` on its own database and data directory; returns them, the internal
/// and API addresses, and the process (killed when dropped), once the admin token is written.
async fn start_server() -> (
    TestDb,
    std::path::PathBuf,
    String,
    String,
    tokio::process::Child,
) {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("pmmcp-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("data dir");
    let (raft, api) = (free_addr(), free_addr());
    let server = Command::new(BIN)
        .args(["--log", "warn", "serve", "--database-url", &db.url])
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--raft-addr",
            &raft,
            "--api-addr",
            &api,
            "--debug-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    let admin_file = dir.join("admin.token");
    wait_until("the admin token file", Duration::from_secs(60), || {
        let exists = admin_file.exists();
        async move { exists }
    })
    .await;

    (db, dir, raft, api, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_by_the_cli_open_the_query_api_for_their_role() {
    let (db, dir, raft, api, mut server) = start_server().await;
    let _keep = &db;

    let key = dir.join("cluster.key");
    let key = key.to_str().expect("utf-8 path").to_owned();
    let token = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["token", "--cluster-key-file", &key, "--addr", &raft]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    // With another cluster's key the internal service refuses the CLI.
    let other = dir.join("other.key");
    pmmcp::crypto::Cipher::load_or_create(&other).expect("another key");
    let other = other.to_str().expect("utf-8 path");
    let no_key = ["token", "--cluster-key-file", other, "--addr", &raft];
    let (code, _) =
        run(&[&no_key[..], &["create", "--name", "x", "--role", "viewer"]].concat()).await;
    assert_ne!(code, 0);
    let (code, out) = run(&token(&[
        "--json", "create", "--name", "ui", "--role", "viewer",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let created: Value = serde_json::from_str(&out).expect("JSON");
    let viewer = created["token"].as_str().expect("token").to_owned();
    let client = reqwest::Client::new();
    let nodes = format!(
        "http://{api}/v1/query/nodes?min_revision={}",
        created["revision"]
    );
    let resp = client
        .get(&nodes)
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("body");
    assert!(body["total"].as_i64().is_some_and(|n| n >= 1), "{body}");
    let events = format!("http://{api}/v1/query/events");
    assert_eq!(status_with(&events, &viewer).await, 403);

    // A bad role is refused by the CLI with a failing exit code; a taken name by the server.
    let (code, _) = run(&token(&["create", "--name", "x", "--role", "root"])).await;
    assert_ne!(code, 0);
    let (code, _) = run(&token(&["create", "--name", "ui", "--role", "viewer"])).await;
    assert_ne!(code, 0);

    let (code, out) = run(&token(&["revoke", "--token", "ui"])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(status_with(&nodes, &viewer).await, 401);

    let (code, out) = run(&[
        "cluster",
        "--cluster-key-file",
        &key,
        "--addr",
        &raft,
        "--json",
        "status",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["leader"], 1);
    assert_eq!(status["members"][0]["voter"], true);

    server.kill().await.expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_registers_adds_lists_and_removes_with_json_and_exit_codes() {
    let (_db, dir, _raft, api, mut server) = start_server().await;
    let token_file = dir.join("admin.token");
    let base = format!("http://{api}");
    let admin = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "admin".into(),
            "--server".into(),
            base.clone(),
            "--token-file".into(),
            token_file.to_str().expect("utf-8").into(),
        ];
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    let json = |out: &str| -> Value { serde_json::from_str(out).expect("JSON output") };

    let (code, out) = run(&admin(&["--json", "status"])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["leader"], true);
    let (code, out) = run(&admin(&[
        "--json",
        "register",
        "--node-name",
        "web1",
        "--address",
        "10.0.0.5",
        "--custom-labels",
        "env=dev",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let registered = json(&out);
    assert_eq!(registered["generic_node"]["custom_labels"]["env"], "dev");
    let pmm_agent = registered["pmm_agent"]["agent_id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Registering the same name again: AlreadyExists is exit code 5.
    let (code, _) = run(&admin(&[
        "register",
        "--node-name",
        "web1",
        "--address",
        "10.0.0.5",
    ]))
    .await;
    assert_eq!(code, 5);

    let (code, out) = run(&admin(&[
        "--json",
        "add",
        "mysql",
        "shop-db",
        "10.0.0.5:3306",
        "--pmm-agent-id",
        &pmm_agent,
        "--node-name",
        "web1",
        "--username",
        "pmm",
        "--password",
        "pw",
        "--query-source",
        "slowlog",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let added = json(&out);
    assert_eq!(added["mysql"]["service"]["service_name"], "shop-db");
    assert!(
        added["mysql"]["qan_mysql_slowlog"]["agent_id"].is_string(),
        "{added}"
    );
    // A query source of another database type is a usage error (2) and sends nothing.
    let (code, _) = run(&admin(&[
        "add",
        "mysql",
        "x",
        "10.0.0.5:3306",
        "--pmm-agent-id",
        &pmm_agent,
        "--query-source",
        "profiler",
    ]))
    .await;
    assert_eq!(code, 2);

    let (code, out) = run(&admin(&["--json", "list"])).await;
    assert_eq!(code, 0, "{out}");
    let listed = json(&out);
    assert!(
        listed["services"]
            .as_array()
            .expect("services")
            .iter()
            .any(|s| s["service_name"] == "shop-db")
    );
    let (code, out) = run(&admin(&["list"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("shop-db") && out.contains("web1"),
        "a table for people: {out}"
    );

    let (code, out) = run(&admin(&[
        "--json",
        "settings",
        "change",
        "--data-retention",
        "10d",
        "--metrics-resolution-hr",
        "10s",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["settings"]["data_retention"], "864000s");
    let (code, _) = run(&admin(&[
        "settings",
        "change",
        "--metrics-resolution-hr",
        "500ms",
    ]))
    .await;
    assert_eq!(code, 2, "not a whole duration: refused before sending");
    let (code, _) = run(&admin(&["settings", "change", "--data-retention", "1h"])).await;
    assert_eq!(code, 3, "the server refuses it as invalid");

    let (code, _) = run(&admin(&["remove", "postgresql", "shop-db"])).await;
    assert_eq!(code, 3, "wrong service type");
    let (code, _) = run(&admin(&["remove", "mysql", "shop-db"])).await;
    assert_eq!(code, 0);
    let (code, _) = run(&admin(&["remove", "mysql", "shop-db"])).await;
    assert_eq!(code, 4, "gone");

    let (code, out) = run(&admin(&[
        "--json",
        "events",
        "--limit",
        "5",
        "--event-type",
        "ServiceAdded",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["events"][0]["event_type"], "ServiceAdded");
    let (code, _) = run(&[
        &admin(&[])[..],
        &["--token".into(), "wrong".into(), "status".into()],
    ]
    .concat())
    .await;
    assert_eq!(code, 6);
    let (code, _) = run(&[
        "admin",
        "--server",
        "http://127.0.0.1:1",
        "--token",
        "t",
        "--timeout",
        "5",
        "status",
    ])
    .await;
    assert_eq!(code, 7, "nothing listens there: unavailable");
    let (code, out) = run(&admin(&["completions", "bash"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("pmm-cp"), "a bash completion script");
    server.kill().await.expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}
