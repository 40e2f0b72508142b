//! `pmm-cp bench-cluster`: writes/s and p50/p99 latency of a one-node and a three-node pmm-cp
//! cluster at 1 and 64 concurrent clients, beside a three-member etcd cluster on loopback
//! measured in the same run by the same load generator: unary gRPC calls, each client sending
//! its next write when the last one is acknowledged, spread over every node or member. The
//! etcd value is the bytes of the command our clients send, so payloads are the same size.
//! Every pmm-cp node has its own database on the benchmark's PostgreSQL server; every etcd
//! member its own data directory. Medians of several runs.

use crate::bench::{Figure, ScratchDb, add_node, drive, median};
use crate::cluster::CommandClient;
use crate::commands::CommandMeta;
use crate::commands::dispatcher::{Dispatcher, DispatcherConfig};
use crate::config::BenchClusterArgs;
use crate::raft::network::endpoint;
use crate::raft::node::NodeConfig;
use crate::raft::service::Internal;
use crate::store;
use anyhow::{Context as _, bail};
use openraft::BasicNode;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// etcd's KV service (the subset in `proto/etcd/kv.proto`).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
use etcd::PutRequest;
use etcd::kv_client::KvClient;

/// One in-process pmm-cp node with its internal service on loopback.
struct Node {
    dispatcher: Dispatcher,
    writer: tokio::task::JoinHandle<()>,
    addr: String,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    db: ScratchDb,
}

impl Node {
    async fn start(admin: &str, tag: &str, id: u64, init_single: bool) -> anyhow::Result<Self> {
        let db = ScratchDb::create(admin, tag).await?;
        let pool = store::connect(&db.url, 8).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let node = NodeConfig {
            id,
            addr: addr.clone(),
            init_single,
            ..NodeConfig::single()
        };
        let config = DispatcherConfig {
            node_name: format!("bench-{id}"),
            ..DispatcherConfig::default()
        };
        let (dispatcher, writer) = Dispatcher::start_node(pool.clone(), config, node).await?;
        let internal = Internal::new(dispatcher.clone(), pool);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(internal.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            dispatcher,
            writer,
            addr,
            stop,
            server,
            db,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.dispatcher.shutdown().await;
        let _ = self.stop.send(());
        let _ = self.server.await;
        drop(self.dispatcher);
        let _ = self.writer.await;
        self.db.drop_db().await
    }
}

/// Starts `n` nodes; node 1 leads, the others are added as learners and promoted.
async fn start_cluster(admin: &str, tag: &str, n: u64) -> anyhow::Result<Vec<Node>> {
    let mut nodes = vec![Node::start(admin, &format!("{tag}_1"), 1, true).await?];
    for id in 2..=n {
        nodes.push(Node::start(admin, &format!("{tag}_{id}"), id, false).await?);
    }
    let raft = nodes[0].dispatcher.raft().clone();
    for (id, node) in (2..=n).zip(&nodes[1..]) {
        raft.add_learner(id, BasicNode::new(node.addr.clone()), true)
            .await
            .context("adding a learner")?;
    }
    if n > 1 {
        raft.change_membership((1..=n).collect::<BTreeSet<u64>>(), false)
            .await
            .context("promoting the learners")?;
    }
    for node in &nodes {
        node.dispatcher
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .current_leader(1, "every node knows the leader")
            .await?;
    }
    Ok(nodes)
}

/// The command client `i` sends: its bytes are also the etcd value.
fn command(offset: usize, i: usize) -> [(crate::commands::Command, CommandMeta); 1] {
    [(add_node(offset + i), CommandMeta::new("bench"))]
}

async fn pmm_run(
    admin: &str,
    tag: &str,
    nodes: u64,
    callers: usize,
    total: usize,
) -> anyhow::Result<Figure> {
    let cluster = start_cluster(admin, tag, nodes).await?;
    let clients: Vec<CommandClient> = cluster
        .iter()
        .map(|n| CommandClient::new(&n.addr).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let clients = Arc::new(clients);
    let op = move |i: usize| {
        let mut client = clients[i % clients.len()].clone();
        async move {
            let results = client
                .submit(&command(0, i), Duration::from_secs(30))
                .await
                .map_err(|s| anyhow::anyhow!("submit: {}", s.message()))?;
            match results.as_slice() {
                [Ok(_)] => anyhow::Ok(()),
                other => bail!("command not applied: {other:?}"),
            }
        }
    };
    let fig = drive(callers, total, op).await;
    for node in cluster {
        node.stop().await?;
    }
    fig
}

/// A three-member etcd cluster on loopback, in a scratch directory.
struct Etcd {
    members: Vec<tokio::process::Child>,
    clients: Vec<String>,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Etcd {
    async fn start(bin: &Path, dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = tokio::process::Command::new(bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            members.push(child);
            clients.push(format!("127.0.0.1:{client}"));
        }
        let etcd = Self {
            members,
            clients,
            dir,
        };
        // Ready when every member takes a write.
        let deadline = Instant::now() + Duration::from_secs(60);
        for addr in &etcd.clients {
            let mut kv = KvClient::new(endpoint(addr).map_err(anyhow::Error::msg)?.connect_lazy());
            loop {
                let put = PutRequest {
                    key: b"bench/ready".to_vec(),
                    value: b"1".to_vec(),
                    ..PutRequest::default()
                };
                let mut req = tonic::Request::new(put);
                req.set_timeout(Duration::from_secs(2));
                match kv.put(req).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        bail!("etcd member {addr} not ready: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(etcd)
    }

    async fn stop(mut self) {
        for m in &mut self.members {
            let _ = m.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn etcd_run(bin: &Path, run: usize, callers: usize, total: usize) -> anyhow::Result<Figure> {
    let dir = std::env::temp_dir().join(format!(
        "pmmcp-bench-etcd-{}-{run}-{callers}",
        std::process::id()
    ));
    let etcd = Etcd::start(bin, dir).await?;
    let clients: Vec<KvClient<tonic::transport::Channel>> = etcd
        .clients
        .iter()
        .map(|a| {
            Ok(KvClient::new(
                endpoint(a).map_err(anyhow::Error::msg)?.connect_lazy(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let clients = Arc::new(clients);
    let op = move |i: usize| {
        let mut kv = clients[i % clients.len()].clone();
        async move {
            let value = serde_json::to_vec(&command(0, i))?;
            let mut req = tonic::Request::new(PutRequest {
                key: format!("bench/{i:08}").into_bytes(),
                value,
                ..PutRequest::default()
            });
            req.set_timeout(Duration::from_secs(30));
            kv.put(req)
                .await
                .map_err(|s| anyhow::anyhow!("etcd put: {}", s.message()))?;
            anyhow::Ok(())
        }
    };
    let fig = drive(callers, total, op).await;
    etcd.stop().await;
    fig
}

/// Runs the whole benchmark and prints the table.
pub async fn run(args: BenchClusterArgs) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    let payload = serde_json::to_vec(&command(0, 1))?.len();
    println!(
        "pmm-cp bench-cluster: {} writes per run, median of {runs} runs, payload {payload} bytes",
        args.commands
    );
    println!(
        "machine: {} cores, date {}; etcd: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d"),
        args.etcd_bin.display()
    );
    println!(
        "{:<40} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "workload", "clients", "writes/s", "p50 ms", "p99 ms", "vs etcd"
    );
    for &callers in &args.clients {
        let (mut etcd, mut three, mut one) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            if !args.no_etcd {
                etcd.push(etcd_run(&args.etcd_bin, run, callers, args.commands).await?);
            }
            let tag = |n: usize| format!("c{n}_{callers}_{run}");
            three.push(pmm_run(&args.database_url, &tag(3), 3, callers, args.commands).await?);
            one.push(pmm_run(&args.database_url, &tag(1), 1, callers, args.commands).await?);
        }
        let e = (!etcd.is_empty()).then(|| median(etcd));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rows = [
            ("etcd, 3 members (Put)", e),
            ("pmm-cp, 3 nodes (AddNode)", Some(median(three))),
            ("pmm-cp, 1 node (AddNode)", Some(median(one))),
        ];
        for (name, f) in rows {
            let Some(f) = f else { continue };
            let ratio = e
                .map(|e| format!("{:.2}x", f.ops_per_sec / e.ops_per_sec))
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "{:<40} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8}",
                name,
                callers,
                f.ops_per_sec,
                ms(f.p50),
                ms(f.p99),
                ratio
            );
        }
    }
    Ok(())
}
