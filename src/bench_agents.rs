//! `pmm-cp bench-agents`: pmm-agent streams at scale, each figure beside a baseline measured in
//! the same run. The server is a child `pmm-cp serve` process (so its memory is its own); the
//! fake agents ([`crate::agents::sim`]) run in this process, 100 per HTTP/2 connection.
//!
//! 1. Memory per idle stream: the server's RSS with N agents connected and settled, minus its
//!    RSS before, over N; beside the same with N bare gRPC streams that only stay open
//!    (`grpc.health.v1.Health/Watch`) on a fresh server process. Measured twice: when the
//!    agents first connect (their first reports also grow the inventory for good: listen
//!    ports, so scrape jobs), and on a fresh process whose inventory already knows them (the
//!    stream's own cost; the bare streams are measured on such a process too).
//! 2. Fan-out: a settings change that alters every agent's state (the high resolution): the
//!    time from the command's request to each agent's new state, p50/p99/max; beside a round of
//!    pings (every agent pings the server at once: the transport's floor for reaching all).
//! 3. Reconnect: the server is stopped and started again; the time until every agent is
//!    connected again and has applied a state, from the start of the new process and from its
//!    readiness.

use crate::agents::sim::{self, Behaviour, Identity, SimAgent};
use crate::bench::ScratchDb;
use crate::config::BenchAgentsArgs;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

struct Server {
    child: tokio::process::Child,
    base: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `pmm-cp serve` on fixed ports (a restart keeps them) and waits for readiness.
/// The bcrypt cost of the server under test.
const BENCH_HASH_COST: u32 = 4;

/// The median time of one web-config hash at `cost`, over a few.
fn hash_time(cost: u32) -> Duration {
    let mut times: Vec<Duration> = (0..5)
        .map(|i| {
            let t = Instant::now();
            let _ = crate::agents::web_auth::hash(&format!("bench-agent-id-{i:020}"), "pw", cost);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

async fn start_server(
    db: &str,
    dir: &Path,
    ports: (u16, u16, u16),
) -> anyhow::Result<(Server, Duration)> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("the pmm-cp binary")?;
    let child = tokio::process::Command::new(exe)
        .arg("serve")
        .args(["--database-url", db])
        .arg("--data-dir")
        .arg(dir)
        .args(["--api-addr", &format!("127.0.0.1:{}", ports.0)])
        .args(["--debug-addr", &format!("127.0.0.1:{}", ports.1)])
        .args(["--raft-addr", &format!("127.0.0.1:{}", ports.2)])
        .args(["--vmalert-binary", ""])
        // The lowest bcrypt cost: at PMM's, the 10,000 node_exporters' web-config hashes take
        // minutes of CPU before their first states (once; the figures below come after).
        // Their cost is printed on its own.
        .args(["--exporter-auth-cost", &BENCH_HASH_COST.to_string()])
        .env("PMM_CP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting pmm-cp serve")?;
    let base = format!("http://127.0.0.1:{}", ports.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    if !answers_ok(&format!("{base}/v1/server/readyz"), None, deadline).await {
        bail!("pmm-cp serve did not become ready");
    }
    Ok((Server { child, base }, started.elapsed()))
}

/// Polls `url` (with a bearer token) until it answers 2xx; false at the deadline.
async fn answers_ok(url: &str, token: Option<&str>, deadline: Instant) -> bool {
    let client = reqwest::Client::new();
    loop {
        let mut req = client.get(url).timeout(Duration::from_secs(2));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if req.send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Server {
    fn rss_bytes(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        (0..n.div_ceil(100))
            .map(|_| Ok(Channel::from_shared(self.base.clone())?.connect_lazy()))
            .collect()
    }
}

/// Waits (bounded) until the server's RSS stops growing: two readings 500 ms apart within 1%.
async fn settled_rss(s: &Server) -> u64 {
    let mut last = s.rss_bytes();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = s.rss_bytes();
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn all_applied(agents: &[SimAgent], at_least: i64, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    for a in agents {
        let mut rx = a.applied.clone();
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, rx.wait_for(|r| *r >= at_least))
            .await
            .with_context(|| {
                format!(
                    "agent {} did not apply revision {at_least} in time",
                    a.identity.agent_id
                )
            })??;
    }
    Ok(())
}

pub async fn run(args: BenchAgentsArgs) -> anyhow::Result<()> {
    let n = args.agents;
    let db = ScratchDb::create(&args.database_url, "agents").await?;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("pmmcp-bench-agents-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ports = (free_port()?, free_port()?, free_port()?);
    let outcome = measure(&args, n, &db.url, &dir, ports).await;
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await?;
    outcome
}

/// The server's settled RSS before and after `ids` connect and apply their state.
struct Connected {
    before: u64,
    after: u64,
    per_stream: f64,
    agents: Vec<SimAgent>,
    channels: Vec<Channel>,
}

async fn connected_rss(server: &Server, ids: &[Identity], n: usize) -> anyhow::Result<Connected> {
    let before = settled_rss(server).await;
    let channels = server.channels(n)?;
    let agents: Vec<SimAgent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| sim::start(channels[i / 100].clone(), id.clone(), Behaviour::default()))
        .collect();
    all_applied(&agents, 1, Duration::from_secs(300)).await?;
    let after = settled_rss(server).await;
    Ok(Connected {
        before,
        after,
        per_stream: after.saturating_sub(before) as f64 / n as f64,
        agents,
        channels,
    })
}

async fn measure(
    args: &BenchAgentsArgs,
    n: usize,
    db: &str,
    dir: &Path,
    ports: (u16, u16, u16),
) -> anyhow::Result<()> {
    // Register the agents (RegisterNode answers each pmm-agent's token).
    let (server, _) = start_server(db, dir, ports).await?;
    // The admin token is written just after the API starts answering.
    let token_file = dir.join("admin.token");
    let until = Instant::now() + Duration::from_secs(30);
    while !token_file.exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = std::fs::read_to_string(&token_file).context("the admin token")?;
    let admin = admin.trim().to_owned();
    // The secret is written before its token is recorded: wait until it is accepted.
    let settings = format!("{}/v1/server/settings", server.base);
    if !answers_ok(&settings, Some(&admin), until).await {
        bail!("the admin token was not accepted in time");
    }
    let t = Instant::now();
    let ids: Vec<Identity> =
        sim::register(server.channels(1)?.remove(0), &admin, "bench", n).await?;
    println!("registered {n} nodes in {:.1} s", t.elapsed().as_secs_f64());
    server.stop().await;

    // 1a. The agents' first connection (a fresh process; the inventory grows with their reports).
    let (server, _) = start_server(db, dir, ports).await?;
    let first = connected_rss(&server, &ids, n).await?;
    for a in &first.agents {
        a.stop();
    }
    server.stop().await;

    // 1b. Baseline memory: bare idle gRPC streams on a fresh process.
    let (server, _) = start_server(db, dir, ports).await?;
    let before = settled_rss(&server).await;
    let mut watches = Vec::with_capacity(n);
    for ch in server.channels(n)? {
        for _ in 0..100 {
            if watches.len() == n {
                break;
            }
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            watches.push(tokio::spawn(async move {
                let mut stream = health
                    .watch(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?
                    .into_inner();
                // The first status arrives at once; then the stream stays open, idle.
                stream.message().await?;
                std::future::pending::<()>().await;
                Ok::<(), tonic::Status>(())
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_watches = settled_rss(&server).await;
    for w in &watches {
        w.abort();
    }
    let baseline_per_stream = with_watches.saturating_sub(before) as f64 / n as f64;
    server.stop().await;

    // 1c. The agents' streams on a fresh process that knows them.
    let (server, _) = start_server(db, dir, ports).await?;
    let known = connected_rss(&server, &ids, n).await?;
    let (agents, channels) = (known.agents, known.channels);

    // 2a. Baseline: every agent pings at once.
    let mut rtts = Vec::with_capacity(n);
    for _round in 0..args.rounds {
        let mut set = tokio::task::JoinSet::new();
        for a in &agents {
            let pinger = a.pinger();
            set.spawn(async move { pinger.ping().await });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Some(d)) = r {
                rtts.push(d);
            }
        }
    }
    rtts.sort();

    // 2b. Fan-out of one settings change to every agent.
    let mut fanout = Vec::with_capacity(n * args.rounds);
    let mut acks = Vec::with_capacity(args.rounds);
    let mut settings = crate::grpc::pb::server::v1::server_service_client::ServerServiceClient::new(
        channels[0].clone(),
    );
    for round in 0..args.rounds {
        let hr = 5 + (round as i64 % 2) * 2 + 1;
        let mut req = tonic::Request::new(crate::grpc::pb::server::v1::ChangeSettingsRequest {
            metrics_resolutions: Some(crate::grpc::pb::server::v1::MetricsResolutions {
                hr: Some(pbjson_types::Duration {
                    seconds: hr,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {admin}").parse()?);
        // Measured from the request, not its answer: the answer waits for a worker thread
        // that the fan-out itself keeps busy, and agents may apply the state before it.
        let sent = Instant::now();
        let resp = settings.change_settings(req).await?;
        acks.push(sent.elapsed());
        let at: i64 = resp
            .metadata()
            .get("x-pmm-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("x-pmm-revision")?;
        let mut set = tokio::task::JoinSet::new();
        for a in &agents {
            let mut rx = a.applied_at.clone();
            set.spawn(async move {
                // When the state reached the agent (not when this task got to run).
                match tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| r.0 >= at))
                    .await
                {
                    Ok(Ok(r)) => r.1,
                    _ => Instant::now(),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(t) = r {
                fanout.push(t.saturating_duration_since(sent));
            }
        }
    }
    fanout.sort();
    acks.sort();

    // 3. Restart: every agent reconnects and applies a state again.
    let connects_before: Vec<u64> = agents
        .iter()
        .map(|a| a.seen.connects.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    server.stop().await;
    let restart = Instant::now();
    let (server, ready_after) = start_server(db, dir, ports).await?;
    let ready_at = Instant::now();
    let until = Instant::now() + Duration::from_secs(300);
    for (a, c) in agents.iter().zip(&connects_before) {
        while a.seen.connects.load(std::sync::atomic::Ordering::SeqCst) <= *c {
            if Instant::now() > until {
                bail!("agent {} did not reconnect", a.identity.agent_id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let reconnected = Instant::now();
    for a in &agents {
        a.stop();
    }
    server.stop().await;

    let mb = |b: f64| b / 1024.0;
    println!(
        "pmm-cp bench-agents, date {} UTC; {n} fake pmm-agents (100 per HTTP/2 connection), server in its own process",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "memory per idle stream: {:.1} KB (server RSS {:.0} -> {:.0} MB); baseline, bare idle gRPC stream: {:.1} KB ({:.0} -> {:.0} MB)",
        mb(known.per_stream),
        mib(known.before),
        mib(known.after),
        mb(baseline_per_stream),
        mib(before),
        mib(with_watches)
    );
    println!(
        "  at the agents' first connection, with the inventory's growth: {:.1} KB per stream ({:.0} -> {:.0} MB)",
        mb(first.per_stream),
        mib(first.before),
        mib(first.after)
    );
    println!(
        "fan-out of one settings change to {n} agents ({} rounds): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; baseline, all agents ping at once: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        args.rounds,
        pct(&fanout, 0.5),
        pct(&fanout, 0.99),
        pct(&fanout, 1.0),
        pct(&rtts, 0.5),
        pct(&rtts, 0.99),
        pct(&rtts, 1.0)
    );
    println!(
        "  fan-out times run from the request to the state's arrival at the agent (p10 {:.0}, p25 {:.0}, p75 {:.0}, p90 {:.0} ms); the request's answer came after p50 {:.0} ms, max {:.0} ms",
        pct(&fanout, 0.1),
        pct(&fanout, 0.25),
        pct(&fanout, 0.75),
        pct(&fanout, 0.9),
        pct(&acks, 0.5),
        pct(&acks, 1.0)
    );
    println!(
        "reconnect after a restart: all {n} agents connected {:.1} s after the new process started ({:.1} s after it was ready; startup {:.1} s)",
        reconnected.duration_since(restart).as_secs_f64(),
        reconnected.duration_since(ready_at).as_secs_f64(),
        ready_after.as_secs_f64()
    );
    let (pmm, ours) = (
        hash_time(crate::agents::web_auth::DEFAULT_COST),
        hash_time(BENCH_HASH_COST),
    );
    println!(
        "web-config hash (once per exporter and password, on {} threads): {:.1} ms at PMM's cost {}, so {:.0} CPU-s for {n} exporters; {:.2} ms at cost {BENCH_HASH_COST}, the server's here",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        pmm.as_secs_f64() * 1e3,
        crate::agents::web_auth::DEFAULT_COST,
        pmm.as_secs_f64() * n as f64,
        ours.as_secs_f64() * 1e3,
    );
    Ok(())
}
