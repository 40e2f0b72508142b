//! Three `pmm-cp serve` processes on loopback, each on its own database, formed into a cluster
//! with the `pmm-cp cluster` CLI. Under a steady write load from clients that talk to any
//! node, the leader is killed with SIGKILL: a new leader takes writes within 5 s, the killed
//! node catches up after a restart, and no acknowledged command is lost or applied twice.

mod support;

use pmmcp::cluster::CommandClient;
use pmmcp::commands::CommandMeta;
use pmmcp::crypto::Cipher;
use pmmcp::raft::network::{Auth, ClusterPeer, Faults, Peers};
use pmmcp::raft::proto::StatusRequest;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::converged;
use support::*;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_pmm-cp");

/// One server process and what it needs to start again.
struct Proc {
    id: u64,
    addr: String,
    url: String,
    dir: PathBuf,
    join: bool,
    /// The cluster key file every node shares.
    key: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(["--log", "info", "serve", "--database-url", &self.url])
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--cluster-key-file")
            .arg(&self.key)
            .args(["--node-id", &self.id.to_string(), "--raft-addr", &self.addr])
            .args([
                "--debug-addr",
                "127.0.0.1:0",
                "--api-addr",
                "127.0.0.1:0",
                "--node-name",
                &format!("node-{}", self.id),
            ])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "700"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if self.join {
            cmd.arg("--join");
        }
        self.child = Some(cmd.spawn().expect("start pmm-cp serve"));
    }

    /// SIGKILL: no shutdown path runs.
    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.expect("kill -9");
        }
    }

    fn cluster(&self) -> ClusterPeer {
        Peers::new(Faults::default(), auth(&self.key))
            .cluster_client(self.id, &self.addr)
            .expect("client")
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The cluster's credential, from its key file.
fn auth(key: &std::path::Path) -> Auth {
    Auth::new(Cipher::load(key).expect("cluster key").internal_auth())
}

async fn cli(key: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["--log", "warn", "cluster", "--cluster-key-file"])
        .arg(key)
        .args(args)
        .output()
        .await
        .expect("run pmm-cp cluster");
    assert!(
        out.status.success(),
        "pmm-cp cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn answers(p: &Proc) -> bool {
    let mut c = p.cluster();
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    c.node_status(req).await.is_ok()
}

/// An acknowledged command: its id, and when it was sent and acknowledged.
struct Ack {
    id: String,
    sent: Instant,
    acked: Instant,
}

/// Sends `count` commands one after another, each to the next node in turn; a command that
/// fails for any reason goes again, with the same id, to the next node (at most 30 s).
async fn client(
    task: usize,
    count: usize,
    addrs: Vec<String>,
    key: PathBuf,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let mut clients: Vec<CommandClient> = addrs
        .iter()
        .map(|a| CommandClient::with_auth(a, auth(&key)).expect("client"))
        .collect();
    let mut next = task;
    for j in 0..count {
        let id = format!("w{task}-{j}");
        let item = [(add_node(&id), CommandMeta::with_id(&id, "load"))];
        let started = Instant::now();
        loop {
            let sent = Instant::now();
            let n = clients.len();
            let r = clients[next % n]
                .submit(&item, Duration::from_secs(5))
                .await;
            match r.as_deref() {
                Ok([Ok(_)]) => {
                    acks.lock().unwrap().push(Ack {
                        id: id.clone(),
                        sent,
                        acked: Instant::now(),
                    });
                    break;
                }
                other => {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "{id} not acknowledged within 30 s: {other:?}"
                    );
                    next += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_command() {
    let root = std::env::temp_dir().join(format!("pmmcp-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).expect("root dir");
    let key = root.join("cluster.key");
    Cipher::load_or_create(&key).expect("cluster key");
    let mut dbs = Vec::new();
    let mut procs = Vec::new();
    for id in 1..=3u64 {
        let db = TestDb::new().await;
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("data dir");
        procs.push(Proc {
            id,
            addr: free_addr(),
            url: db.url.clone(),
            dir,
            join: id != 1,
            key: key.clone(),
            child: None,
        });
        dbs.push(db);
    }
    for p in &mut procs {
        p.spawn();
    }
    for p in &procs {
        wait_until(
            "the node's internal service",
            Duration::from_secs(60),
            || answers(p),
        )
        .await;
    }
    // Formed with the CLI: two learners added through node 1, promoted through node 2.
    for p in &procs[1..] {
        cli(
            &key,
            &[
                "--addr",
                &procs[0].addr,
                "add-learner",
                "--id",
                &p.id.to_string(),
                "--addr",
                &p.addr,
            ],
        )
        .await;
    }
    let out = cli(
        &key,
        &[
            "--addr",
            &procs[1].addr,
            "--json",
            "change-membership",
            "--voters",
            "1,2,3",
        ],
    )
    .await;
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(status["leader"], 1);
    let voters = status["members"].as_array().expect("members");
    assert_eq!(voters.len(), 3);
    assert!(voters.iter().all(|m| m["voter"] == true), "{status}");

    // Steady load from four clients that talk to every node.
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let per_client = 150;
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let c = client(t, per_client, addrs.clone(), key.clone(), acks.clone());
            tokio::spawn(c)
        })
        .collect();
    wait_until("100 acknowledged commands", Duration::from_secs(60), || {
        let n = acks.lock().unwrap().len();
        async move { n >= 100 }
    })
    .await;

    let leader = status_of(&procs[1]).await["leader"]
        .as_u64()
        .expect("a leader");
    let victim = procs
        .iter()
        .position(|p| p.id == leader)
        .expect("leader process");
    procs[victim].kill().await;
    let killed = Instant::now();
    // A command sent after the kill is acknowledged (by a new leader) within 5 s.
    wait_until(
        "a write acknowledged after the kill",
        Duration::from_secs(10),
        || {
            let first = first_ack_after(&acks, killed);
            async move { first.is_some() }
        },
    )
    .await;
    let first = first_ack_after(&acks, killed).expect("an acknowledgement");
    let failover = first - killed;
    eprintln!("failover: first write acknowledged {failover:?} after the kill");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    let survivor = &procs[(victim + 1) % 3];
    let now = status_of(survivor).await;
    assert_ne!(now["leader"].as_u64(), Some(leader), "{now}");

    // The killed node comes back and catches up while the load goes on.
    procs[victim].spawn();
    for c in clients {
        c.await.expect("client task");
    }
    let mut pools: Vec<PgPool> = Vec::new();
    for db in &dbs {
        pools.push(db.pool().await);
    }
    let refs: Vec<&PgPool> = pools.iter().collect();
    let acked: Vec<String> = acks.lock().unwrap().iter().map(|a| a.id.clone()).collect();
    assert_eq!(acked.len(), 4 * per_client);
    let (position, _) = converged(&refs, 0).await;
    for p in &pools {
        // Every acknowledged command is in the log, once.
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM command_results WHERE command_id = ANY($1) AND first_position IS NOT NULL",
        )
        .bind(&acked)
        .fetch_one(p)
        .await
        .expect("results");
        assert_eq!(found as usize, acked.len());
        let repeated: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT metadata->>'command_id' FROM events \
             WHERE event_type = 'NodeAdded' GROUP BY 1 HAVING count(*) > 1) d",
        )
        .fetch_one(p)
        .await
        .expect("repeats");
        assert_eq!(repeated, 0, "a command was applied twice");
        assert_eq!(count_events(p).await, position);
    }
    for p in &mut procs {
        p.kill().await;
    }
    for p in pools {
        p.close().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// When the first command sent after `t` was acknowledged.
fn first_ack_after(acks: &Mutex<Vec<Ack>>, t: Instant) -> Option<Instant> {
    acks.lock()
        .unwrap()
        .iter()
        .filter(|a| a.sent > t)
        .map(|a| a.acked)
        .min()
}

async fn status_of(p: &Proc) -> serde_json::Value {
    let out = cli(&p.key, &["--addr", &p.addr, "--json", "status"]).await;
    serde_json::from_str(&out).expect("status JSON")
}
