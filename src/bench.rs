//! `pmm-cp bench`: dispatch throughput and latency at 1 and 64 concurrent callers of
//! single-event commands, and query-table rebuild speed, each beside a raw PostgreSQL baseline
//! measured in the same run on the same server: plain INSERTs of rows of the same size, one
//! per transaction, from the same number of connections. Medians of several runs.

use crate::commands::dispatcher::{Dispatcher, DispatcherConfig};
use crate::commands::nodes::AddNode;
use crate::commands::{Command, CommandMeta};
use crate::config::BenchArgs;
use crate::domain::NodeType;
use crate::store;
use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One measured run: operations per second and latency percentiles.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

pub(crate) fn figure(total: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Figure {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Figure {
        ops_per_sec: total as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

pub(crate) fn median(mut figs: Vec<Figure>) -> Figure {
    figs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let mid = figs[figs.len() / 2];
    let mut p50: Vec<Duration> = figs.iter().map(|f| f.p50).collect();
    let mut p99: Vec<Duration> = figs.iter().map(|f| f.p99).collect();
    p50.sort();
    p99.sort();
    Figure {
        ops_per_sec: mid.ops_per_sec,
        p50: p50[p50.len() / 2],
        p99: p99[p99.len() / 2],
    }
}

/// A scratch database on the benchmark server, dropped at the end.
pub(crate) struct ScratchDb {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl ScratchDb {
    pub(crate) async fn create(admin: &str, tag: &str) -> anyhow::Result<Self> {
        let name = format!("pmmcp_bench_{}_{}", std::process::id(), tag);
        let mut conn = PgConnection::connect(admin)
            .await
            .context("connecting to the benchmark server")?;
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .execute(&mut conn)
            .await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let url = PgConnectOptions::from_str(admin)?.database(&name);
        let url = format!(
            "postgres://{}@{}:{}/{}",
            url.get_username(),
            url.get_host(),
            url.get_port(),
            name
        );
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }

    pub(crate) async fn drop_db(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.admin).await?;
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

pub(crate) fn add_node(i: usize) -> Command {
    Command::AddNode(AddNode {
        node_type: Some(NodeType::Generic),
        node_name: format!("bench-node-{i:08}"),
        address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        distro: "linux".to_owned(),
        ..AddNode::default()
    })
}

/// A payload of the size of one NodeAdded event, for the baseline rows.
fn sample_payload() -> serde_json::Value {
    let node = crate::domain::Node {
        node_id: uuid::Uuid::new_v4().into(),
        node_type: NodeType::Generic,
        node_name: "bench-node-00000001".to_owned(),
        machine_id: None,
        distro: "linux".to_owned(),
        node_model: String::new(),
        az: String::new(),
        custom_labels: Default::default(),
        address: "10.0.0.1".to_owned(),
        region: None,
        container_id: None,
        container_name: None,
        instance_id: "10.0.0.1".to_owned(),
        is_pmm_server_node: false,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    serde_json::json!({ "node": node })
}

async fn baseline(url: &str, callers: usize, total: usize) -> anyhow::Result<Figure> {
    let pool = PgPoolOptions::new()
        .max_connections(callers as u32)
        .connect(url)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS raw_rows")
        .execute(&pool)
        .await?;
    sqlx::query(
        "CREATE TABLE raw_rows (id BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL, event_id UUID NOT NULL UNIQUE, \
         event_type TEXT NOT NULL, payload JSONB NOT NULL, metadata JSONB NOT NULL, recorded_at TIMESTAMPTZ NOT NULL, hash BYTEA NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let payload = Arc::new(sample_payload().to_string());
    let metadata = Arc::new(serde_json::json!({"actor": "bench", "command_id": uuid::Uuid::new_v4(), "decided_by": "pmm-cp-1"}).to_string());
    let op = {
        let pool = pool.clone();
        move |_| {
            let (pool, payload, metadata) = (pool.clone(), payload.clone(), metadata.clone());
            async move {
                sqlx::query(
                    "INSERT INTO raw_rows (stream_id, event_id, event_type, payload, metadata, recorded_at, hash) \
                     VALUES ($1, $2, 'NodeAdded', $3::jsonb, $4::jsonb, now(), $5)",
                )
                .bind(format!("node-{}", uuid::Uuid::new_v4()))
                .bind(uuid::Uuid::new_v4())
                .bind(payload.as_str())
                .bind(metadata.as_str())
                .bind([7u8; 32].as_slice())
                .execute(&pool)
                .await?;
                anyhow::Ok(())
            }
        }
    };
    let fig = drive(callers, total, op).await?;
    pool.close().await;
    Ok(fig)
}

/// Runs `total` operations from `callers` concurrent tasks (each takes the next index until
/// none is left) and measures throughput and per-operation latency.
pub(crate) async fn drive<F, Fut>(callers: usize, total: usize, op: F) -> anyhow::Result<Figure>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(figure(total, started.elapsed(), latencies))
}

async fn dispatch_run(url: &str, callers: usize, total: usize) -> anyhow::Result<Figure> {
    let pool = store::connect(url, 4).await?;
    let (dispatcher, writer) = Dispatcher::start(pool.clone(), DispatcherConfig::default()).await?;
    let offset = dispatcher.state().nodes.len() * 1000 + 1_000_000;
    let op = {
        let dispatcher = dispatcher.clone();
        move |i| {
            let dispatcher = dispatcher.clone();
            async move {
                dispatcher
                    .dispatch(add_node(offset + i), CommandMeta::new("bench"))
                    .await?;
                anyhow::Ok(())
            }
        }
    };
    let fig = drive(callers, total, op).await?;
    drop(dispatcher);
    writer.await?;
    pool.close().await;
    Ok(fig)
}

/// Fills a log with `events` single-event commands, in batches (fast set-up).
async fn fill(pool: &PgPool, events: usize) -> anyhow::Result<()> {
    let (dispatcher, writer) = Dispatcher::start(pool.clone(), DispatcherConfig::default()).await?;
    for chunk in (0..events).collect::<Vec<_>>().chunks(500) {
        let items = chunk
            .iter()
            .map(|i| (add_node(*i), CommandMeta::new("bench")))
            .collect();
        for r in dispatcher.dispatch_batch(items).await {
            r?;
        }
    }
    drop(dispatcher);
    writer.await?;
    Ok(())
}

/// Runs the whole benchmark and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    let server_version: String = {
        let mut c = PgConnection::connect(&args.database_url)
            .await
            .context("connecting to the benchmark server")?;
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut c)
            .await?
    };
    println!(
        "pmm-cp bench: {} commands per run, median of {runs} runs",
        args.commands
    );
    println!(
        "machine: {} cores, PostgreSQL {server_version}, date {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!(
        "{:<44} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "workload", "callers", "ops/s", "p50 ms", "p99 ms", "ratio"
    );
    for callers in [1usize, 64] {
        let mut base = Vec::new();
        let mut ours = Vec::new();
        for run in 0..runs {
            let db = ScratchDb::create(&args.database_url, &format!("b{callers}_{run}")).await?;
            base.push(baseline(&db.url, callers, args.commands).await?);
            db.drop_db().await?;
            let db = ScratchDb::create(&args.database_url, &format!("d{callers}_{run}")).await?;
            ours.push(dispatch_run(&db.url, callers, args.commands).await?);
            db.drop_db().await?;
        }
        let (b, o) = (median(base), median(ours));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<44} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8}",
            "raw INSERT, one row per transaction",
            callers,
            b.ops_per_sec,
            ms(b.p50),
            ms(b.p99),
            "1.00x"
        );
        println!(
            "{:<44} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>7.2}x",
            "dispatch AddNode (1 event, group commit)",
            callers,
            o.ops_per_sec,
            ms(o.p50),
            ms(o.p99),
            o.ops_per_sec / b.ops_per_sec
        );
    }
    let db = ScratchDb::create(&args.database_url, "rebuild").await?;
    let pool = store::connect(&db.url, 4).await?;
    fill(&pool, args.rebuild_events).await?;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let r = store::query_tables::rebuild(&pool).await?;
        rates.push(r.events as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let verify_started = Instant::now();
    let report = store::log::verify(&pool).await?;
    let verify_rate = report.checked as f64 / verify_started.elapsed().as_secs_f64();
    pool.close().await;
    db.drop_db().await?;
    println!(
        "rebuild of query tables from {} events: {:.0} events/s (median)",
        args.rebuild_events,
        rates[rates.len() / 2]
    );
    println!("verify of the hash chain: {verify_rate:.0} events/s");
    Ok(())
}
