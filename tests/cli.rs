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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_by_the_cli_open_the_query_api_for_their_role() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("pmmcp-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("data dir");
    let (raft, api) = (free_addr(), free_addr());
    let mut server = Command::new(BIN)
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
