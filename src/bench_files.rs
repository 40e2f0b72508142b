//! `pmm-cp bench-files`: the file projections' speed, each beside a baseline in the same run.
//!
//! 1. Render time of the server's scrape configuration for 1,000, 10,000 and 50,000 agents
//!    (every one with a port, so every one has jobs), beside serialising the same inventory as
//!    plain JSON. Medians of 5.
//! 2. From an acknowledged command to the new file on disk, through a one-node cluster with a
//!    projector following it: p50/p99 over many commands that each change the file, with an
//!    inventory of external exporters (they have ports from the start, so they have jobs).

use crate::bench::ScratchDb;
use crate::commands::add_service::{AddManagedService, AddServiceCommon, ServiceKind};
use crate::commands::dispatcher::{Dispatcher, DispatcherConfig};
use crate::commands::settings::ChangeSettings;
use crate::commands::{Command, CommandMeta};
use crate::config::BenchFilesArgs;
use crate::crypto::Cipher;
use crate::domain::agent::Agent;
use crate::domain::{AgentType, Node, NodeType, Service, ServiceType, State};
use crate::events::Event;
use crate::files::{Hooks, Projector, RenderOptions, scrape};
use crate::store;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `agents` exporters with ports, four per node (node_exporter, mysqld, postgres, mongodb),
/// each node with its pmm-agent and a service per exporter.
fn synthetic(agents: usize, cipher: &Cipher) -> State {
    let now = chrono::Utc::now();
    let mut state = State::default();
    let nodes = agents.div_ceil(4);
    for i in 0..nodes {
        let node_id = format!("node-{i:06}");
        let mut node = Node {
            node_id: node_id.as_str().into(),
            node_type: NodeType::Generic,
            node_name: format!("host-{i}"),
            machine_id: Some(format!("/machine_id/{i:032x}")),
            distro: "linux".to_owned(),
            node_model: String::new(),
            az: "a".to_owned(),
            custom_labels: Default::default(),
            address: format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
            region: Some("eu-west-1".to_owned()),
            container_id: None,
            container_name: None,
            instance_id: String::new(),
            is_pmm_server_node: false,
            created_at: now,
            updated_at: now,
        };
        node.custom_labels
            .insert("dc".to_owned(), format!("dc{}", i % 7));
        state.evolve(&Event::NodeAdded { node });
        let pa = format!("pa-{i:06}");
        let mut p = Agent::new(pa.as_str().into(), AgentType::PmmAgent, now);
        p.runs_on_node_id = Some(node_id.as_str().into());
        p.version = Some("2.44.0".to_owned());
        state.evolve(&Event::AgentAdded { agent: p });
        for (k, (st, at)) in [
            (None, AgentType::NodeExporter),
            (Some(ServiceType::Mysql), AgentType::MysqldExporter),
            (Some(ServiceType::Postgresql), AgentType::PostgresExporter),
            (Some(ServiceType::Mongodb), AgentType::MongodbExporter),
        ]
        .into_iter()
        .enumerate()
        {
            if i * 4 + k >= agents {
                break;
            }
            let mut a = Agent::new(format!("ag-{i:06}-{k}").as_str().into(), at, now);
            a.pmm_agent_id = Some(pa.as_str().into());
            a.listen_port = Some(42000 + k as u16);
            if k % 2 == 1 {
                a.agent_password = Some(cipher.seal("pw"));
            }
            match st {
                None => a.node_id = Some(node_id.as_str().into()),
                Some(st) => {
                    let sid = format!("svc-{i:06}-{k}");
                    let service = Service {
                        service_id: sid.as_str().into(),
                        service_type: st,
                        service_name: sid.clone(),
                        node_id: node_id.as_str().into(),
                        database_name: String::new(),
                        environment: "prod".to_owned(),
                        cluster: format!("c{}", i % 11),
                        replication_set: String::new(),
                        external_group: String::new(),
                        custom_labels: Default::default(),
                        address: Some("127.0.0.1".to_owned()),
                        port: Some(3306),
                        socket: None,
                        version: None,
                        created_at: now,
                        updated_at: now,
                    };
                    state.evolve(&Event::ServiceAdded { service });
                    a.service_id = Some(sid.as_str().into());
                }
            }
            state.evolve(&Event::AgentAdded { agent: a });
        }
    }
    state
}

pub async fn run(args: BenchFilesArgs) -> anyhow::Result<()> {
    let cipher = Arc::new(Cipher::random());
    let opts = RenderOptions::default();
    println!(
        "pmm-cp bench-files, date {}; medians of 5",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!(
        "{:<10} {:>14} {:>16} {:>10} {:>12} {:>22}",
        "agents", "render ms", "JSON baseline ms", "ratio", "file bytes", "after 1 change ms"
    );
    for &n in &args.agents {
        let state = synthetic(n, &cipher);
        let mut renders = Vec::new();
        let mut jsons = Vec::new();
        let mut size = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let text = scrape::render_server(&state, &cipher, &opts);
            renders.push(t.elapsed());
            size = text.len();
            let t = Instant::now();
            let json = serde_json::to_vec(&(
                state.nodes.values().collect::<Vec<_>>(),
                state.services.values().collect::<Vec<_>>(),
                state.agents.values().collect::<Vec<_>>(),
            ))?;
            jsons.push(t.elapsed());
            std::hint::black_box(json);
        }
        // What the projector does after a command: one agent changed, the others' jobs
        // reused from its cache.
        let mut cache = scrape::JobCache::default();
        let mut state = state;
        std::hint::black_box(scrape::render_server_cached(
            &state, &cipher, &opts, &mut cache,
        ));
        let mut warm = Vec::new();
        for k in 0..5 {
            let mut a = (**state.agents.values().nth(k * 7).expect("an agent")).clone();
            a.custom_labels.insert("changed".to_owned(), k.to_string());
            state.evolve(&Event::AgentChanged { agent: a });
            let t = Instant::now();
            std::hint::black_box(scrape::render_server_cached(
                &state, &cipher, &opts, &mut cache,
            ));
            warm.push(t.elapsed());
        }
        let (r, j) = (median(renders), median(jsons));
        println!(
            "{:<10} {:>14.2} {:>16.2} {:>9.2}x {:>12} {:>22.2}",
            n,
            r.as_secs_f64() * 1000.0,
            j.as_secs_f64() * 1000.0,
            r.as_secs_f64() / j.as_secs_f64(),
            size,
            median(warm).as_secs_f64() * 1000.0
        );
    }

    // Acknowledged command -> file on disk.
    let db = ScratchDb::create(&args.database_url, "files").await?;
    let pool = store::connect(&db.url, 8).await?;
    let (dispatcher, writer) = Dispatcher::start(pool.clone(), DispatcherConfig::default()).await?;
    dispatcher
        .dispatch(
            Command::BootstrapServer(Default::default()),
            CommandMeta::new("bench"),
        )
        .await?;
    let adds: Vec<_> = (0..args.exporters)
        .map(|i| {
            let cmd = Command::AddManagedService(AddManagedService {
                common: AddServiceCommon {
                    node_id: Some("pmm-server".into()),
                    service_name: format!("ext-{i}"),
                    ..AddServiceCommon::default()
                },
                kind: ServiceKind::External {
                    runs_on_node_id: Some("pmm-server".into()),
                    listen_port: Some(9100 + (i % 1000) as u32),
                    scheme: None,
                    metrics_path: None,
                    group: String::new(),
                },
            });
            (cmd, CommandMeta::new("bench"))
        })
        .collect();
    for chunk in adds.chunks(500) {
        for r in dispatcher.dispatch_batch(chunk.to_vec()).await {
            r?;
        }
    }
    let dir = std::env::temp_dir().join(format!("pmmcp-bench-files-{}", std::process::id()));
    let projector = Projector::new(dir.clone(), opts.clone(), Hooks::default(), cipher.clone());
    tokio::spawn(projector.clone().run(dispatcher.subscribe()));
    let start = dispatcher.state().revision;
    let mut written = projector.written();
    written.wait_for(|r| *r >= start).await?;
    let mut lat = Vec::new();
    for i in 0..args.commands {
        // Alternating HR resolution: every command changes the scrape file.
        let change = Command::ChangeSettings(ChangeSettings {
            metrics_resolutions_hr: Some(Duration::from_secs(if i % 2 == 0 { 6 } else { 5 })),
            ..ChangeSettings::default()
        });
        let applied = dispatcher
            .dispatch(change, CommandMeta::new("bench"))
            .await?;
        let acked = Instant::now();
        written.wait_for(|r| *r >= applied.revision).await?;
        lat.push(acked.elapsed());
    }
    lat.sort();
    println!(
        "acknowledged command -> file on disk, {} commands, {} external exporters (jobs) in the file: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (coalescing window {} ms)",
        args.commands,
        args.exporters,
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        crate::files::COALESCE.as_millis()
    );
    dispatcher.shutdown().await;
    drop(dispatcher);
    let _ = writer.await;
    pool.close().await;
    db.drop_db().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
