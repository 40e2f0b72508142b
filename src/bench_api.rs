//! `pmm-cp bench-api`: throughput and latency of the query API on one node, measured by `wrk`
//! (Debian package wrk) with a viewer token (checked on every call) beside the same server's
//! health endpoint as the baseline, in one run:
//! get-by-id and a list page (100 items from the middle, with the total) over 1,000 and
//! 10,000 services.

use crate::api::QueryApi;
use crate::bench::ScratchDb;
use crate::commands::dispatcher::{Dispatcher, DispatcherConfig};
use crate::commands::nodes::AddNode;
use crate::commands::services::AddService;
use crate::commands::{Command, CommandMeta};
use crate::config::BenchApiArgs;
use crate::domain::{NodeType, ServiceType};
use crate::raft::service::Internal;
use crate::store;
use anyhow::{Context as _, bail};
use std::time::Duration;

/// What wrk measured for one URL.
struct WrkFigure {
    requests_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Parses wrk's `--latency` report.
fn parse_wrk(out: &str) -> Option<WrkFigure> {
    let duration = |s: &str| -> Option<Duration> {
        let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
        let v: f64 = num.parse().ok()?;
        let secs = match unit {
            "us" => v / 1e6,
            "ms" => v / 1e3,
            "s" => v,
            "m" => v * 60.0,
            _ => return None,
        };
        Some(Duration::from_secs_f64(secs))
    };
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["50%", v] => p50 = duration(v),
            ["99%", v] => p99 = duration(v),
            _ => {}
        }
    }
    Some(WrkFigure {
        requests_per_sec: rps?,
        p50: p50?,
        p99: p99?,
    })
}

async fn wrk(args: &BenchApiArgs, url: &str, token: &str) -> anyhow::Result<WrkFigure> {
    let out = tokio::process::Command::new(&args.wrk_bin)
        .args(["-t2", &format!("-c{}", args.connections)])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("-d{}s", args.seconds))
        .args(["--latency", url])
        .output()
        .await
        .with_context(|| format!("running {} (apt-get install wrk)", args.wrk_bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") {
        bail!("wrk on {url} failed or got errors:\n{text}");
    }
    parse_wrk(&text).with_context(|| format!("unreadable wrk report:\n{text}"))
}

/// Fills a fresh node with `n` MySQL services on one host.
async fn fill(dispatcher: &Dispatcher, n: usize) -> anyhow::Result<String> {
    let host = Command::AddNode(AddNode {
        node_type: Some(NodeType::Generic),
        node_name: "bench-host".to_owned(),
        address: "10.0.0.1".to_owned(),
        ..AddNode::default()
    });
    dispatcher
        .dispatch(host, CommandMeta::new("bench"))
        .await
        .context("adding the host")?;
    let node_id = dispatcher
        .state()
        .node_by_name("bench-host")
        .map(|n| n.node_id.clone())
        .context("the host is in the state")?;
    let indexes: Vec<usize> = (0..n).collect();
    for chunk in indexes.chunks(500) {
        let items = chunk
            .iter()
            .map(|i| {
                let svc = AddService {
                    service_type: Some(ServiceType::Mysql),
                    service_name: format!("bench-mysql-{i:06}"),
                    node_id: node_id.clone(),
                    address: Some(format!("10.1.{}.{}", i / 250, i % 250 + 1)),
                    port: Some(3306),
                    environment: "bench".to_owned(),
                    ..AddService::default()
                };
                (Command::AddService(svc), CommandMeta::new("bench"))
            })
            .collect();
        for r in dispatcher.dispatch_batch(items).await {
            r.context("adding a service")?;
        }
    }
    dispatcher
        .state()
        .services
        .keys()
        .nth(n / 2)
        .map(|id| id.to_string())
        .context("a service id")
}

/// Runs the benchmark and prints the table.
pub async fn run(args: BenchApiArgs) -> anyhow::Result<()> {
    println!(
        "pmm-cp bench-api: wrk -t2 -c{} -d{}s per row, one node, date {}",
        args.connections,
        args.seconds,
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!(
        "{:<48} {:>10} {:>9} {:>9} {:>9}",
        "workload", "req/s", "p50 ms", "p99 ms", "ratio"
    );
    for &n in &args.services {
        let db = ScratchDb::create(&args.database_url, &format!("api{n}")).await?;
        let pool = store::connect(&db.url, 8).await?;
        let (dispatcher, writer) =
            Dispatcher::start(pool.clone(), DispatcherConfig::default()).await?;
        let id = fill(&dispatcher, n).await?;
        let token = crate::domain::token::new_token_secret();
        let viewer = Command::CreateToken(crate::commands::tokens::CreateToken {
            agent_id: None,
            name: "bench".to_owned(),
            role: crate::domain::Role::Viewer,
            hash: crate::domain::token::token_hash(&token),
        });
        dispatcher
            .dispatch(viewer, CommandMeta::new("bench"))
            .await
            .context("creating the benchmark's token")?;
        let internal = Internal::new(dispatcher.clone(), pool.clone());
        let public = crate::grpc::Api::new(
            dispatcher.clone(),
            pool.clone(),
            std::sync::Arc::new(crate::crypto::Cipher::random()),
        );
        let query = QueryApi {
            pool: pool.clone(),
            dispatcher: dispatcher.clone(),
            internal,
            agents: None,
        };
        let app =
            crate::grpc::router(public, query)?.merge(crate::app::debug_router(dispatcher.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        let rows = [
            (
                "health endpoint (baseline)".to_owned(),
                format!("{base}/debug/health"),
            ),
            (
                format!("get service by id ({n} services)"),
                format!("{base}/v1/query/services/{id}"),
            ),
            (
                format!("get service by id, PMM REST ({n} services)"),
                format!("{base}/v1/inventory/services/{id}"),
            ),
            (
                format!("list page of 100, with total ({n} services)"),
                format!("{base}/v1/query/services?limit=100&offset={}", n / 2),
            ),
        ];
        let mut baseline = None;
        for (name, url) in rows {
            let f = wrk(&args, &url, &token).await?;
            let base_rps = *baseline.get_or_insert(f.requests_per_sec);
            println!(
                "{:<48} {:>10.0} {:>9.2} {:>9.2} {:>8.2}x",
                name,
                f.requests_per_sec,
                f.p50.as_secs_f64() * 1000.0,
                f.p99.as_secs_f64() * 1000.0,
                f.requests_per_sec / base_rps
            );
        }
        let _ = stop.send(());
        let _ = server.await;
        dispatcher.shutdown().await;
        drop(dispatcher);
        let _ = writer.await;
        pool.close().await;
        db.drop_db().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let out = "  Latency Distribution\n     50%  1.23ms\n     75%    2ms\n     99%  850.00us\nRequests/sec:  12345.67\n";
        let f = parse_wrk(out).expect("parsed");
        assert_eq!(f.requests_per_sec, 12345.67);
        assert_eq!(f.p50, Duration::from_micros(1230));
        assert_eq!(f.p99, Duration::from_micros(850));
    }
}
