//! File projections: golden files for every agent type and the settings that change the
//! output; determinism and YAML/INI round trips over random inventories; the real tools
//! (victoria-metrics, vmagent, vmalert, promtool, supervisord's parser) accept every golden file and a large random
//! inventory's output; writes are atomic and a killed writer leaves the old or the new file.
//!
//! `PMM_UPDATE_GOLDEN=1 cargo nextest run --test files` rewrites the golden files; review the
//! diff like code. The validators come from Debian packages `victoria-metrics`, `prometheus` and
//! `supervisor`,
//! which `scripts/test` installs; without them these tests fail unless
//! `PMM_SKIP_VALIDATORS=1` says to skip them.

use pmmcp::crypto::Cipher;
use pmmcp::domain::agent::{Agent, MetricsResolutions};
use pmmcp::domain::settings::Settings;
use pmmcp::domain::{AgentType, Node, NodeType, Service, ServiceType, State, Timestamp};
use pmmcp::events::Event;
use pmmcp::files::{self, RenderOptions, Rendered};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_780_000_000, 0).expect("time")
}

fn key() -> Cipher {
    Cipher::from_key(&[7u8; 32])
}

fn node(id: &str, t: NodeType, name: &str, address: &str) -> Node {
    Node {
        node_id: id.into(),
        node_type: t,
        node_name: name.to_owned(),
        machine_id: None,
        distro: "linux".to_owned(),
        node_model: String::new(),
        az: String::new(),
        custom_labels: Default::default(),
        address: address.to_owned(),
        region: None,
        container_id: None,
        container_name: None,
        instance_id: String::new(),
        is_pmm_server_node: false,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn service(id: &str, t: ServiceType, name: &str, node: &str) -> Service {
    Service {
        service_id: id.into(),
        service_type: t,
        service_name: name.to_owned(),
        node_id: node.into(),
        database_name: String::new(),
        environment: String::new(),
        cluster: String::new(),
        replication_set: String::new(),
        external_group: String::new(),
        custom_labels: Default::default(),
        address: Some("10.0.0.10".to_owned()),
        port: Some(3306),
        socket: None,
        version: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

/// An agent under `pmm_agent` for `service` (or `node`), listening on `port`.
fn agent(
    id: &str,
    t: AgentType,
    pmm_agent: Option<&str>,
    service: Option<&str>,
    node: Option<&str>,
    port: Option<u16>,
) -> Agent {
    let mut a = Agent::new(id.into(), t, t0());
    a.pmm_agent_id = pmm_agent.map(Into::into);
    a.service_id = service.map(Into::into);
    a.node_id = node.map(Into::into);
    a.listen_port = port;
    a
}

/// An inventory with every agent type and the options that change their jobs.
fn inventory(cipher: &Cipher) -> Vec<Event> {
    let mut ev = Vec::new();
    let mut db1 = node("n-db1", NodeType::Generic, "db1", "10.0.0.10");
    db1.custom_labels.insert("dc".into(), "eu-1".into());
    db1.region = Some("eu-west".into());
    let mut mac = node("n-mac", NodeType::Generic, "mac1", "10.0.0.11");
    mac.distro = "darwin".into();
    let mut box1 = node("n-box", NodeType::Container, "box1", "10.0.0.12");
    box1.container_id = Some("c0ffee".into());
    box1.container_name = Some("mysql-box".into());
    let rds = node("n-rds", NodeType::RemoteRds, "rds-1", "rds-1.example");
    let az = node(
        "n-az",
        NodeType::RemoteAzureDatabase,
        "az-1",
        "az-1.example",
    );
    for n in [db1, mac, box1, rds, az] {
        ev.push(Event::NodeAdded { node: n });
    }
    let mut mysql = service("s-mysql", ServiceType::Mysql, "shop-db", "n-db1");
    mysql.environment = "prod".into();
    mysql.custom_labels.insert("team".into(), "shop".into());
    // A custom label overriding a standard one: custom wins.
    mysql
        .custom_labels
        .insert("cluster".into(), "from-custom".into());
    let services = [
        mysql,
        service("s-mysql2", ServiceType::Mysql, "big-db", "n-box"),
        service("s-mongo", ServiceType::Mongodb, "mongo", "n-db1"),
        service("s-pg", ServiceType::Postgresql, "pg", "n-db1"),
        service("s-proxy", ServiceType::Proxysql, "proxy", "n-db1"),
        service("s-valkey", ServiceType::Valkey, "cache", "n-db1"),
        service("s-ext", ServiceType::External, "app", "n-db1"),
        service("s-rds", ServiceType::Mysql, "rds-1", "n-rds"),
        service("s-az", ServiceType::Postgresql, "az-1", "n-az"),
    ];
    for s in services {
        ev.push(Event::ServiceAdded { service: s });
    }
    let mut agents = Vec::new();
    let mut pa = agent("pa-1", AgentType::PmmAgent, None, None, None, None);
    pa.runs_on_node_id = Some("n-db1".into());
    pa.version = Some("2.44.0".into());
    agents.push(pa);
    let mut pa2 = agent("pa-2", AgentType::PmmAgent, None, None, None, None);
    pa2.runs_on_node_id = Some("n-box".into());
    agents.push(pa2);
    let mut pa3 = agent("pa-3", AgentType::PmmAgent, None, None, None, None);
    pa3.runs_on_node_id = Some("n-mac".into());
    agents.push(pa3);
    let mut ne = agent(
        "ne-1",
        AgentType::NodeExporter,
        Some("pa-1"),
        None,
        Some("n-db1"),
        Some(42000),
    );
    ne.exporter.disabled_collectors = vec!["hwmon".into(), "buddyinfo".into()];
    agents.push(ne);
    agents.push(agent(
        "ne-mac",
        AgentType::NodeExporter,
        Some("pa-3"),
        None,
        Some("n-mac"),
        Some(42000),
    ));
    // Push mode: scraped by pa-2's vmagent, never by the server.
    let mut ne_push = agent(
        "ne-2",
        AgentType::NodeExporter,
        Some("pa-2"),
        None,
        Some("n-box"),
        Some(42000),
    );
    ne_push.exporter.push_metrics = true;
    agents.push(ne_push);
    let mut vma = agent(
        "vm-2",
        AgentType::VmAgent,
        Some("pa-2"),
        None,
        Some("n-box"),
        Some(42001),
    );
    vma.exporter.push_metrics = true;
    agents.push(vma);
    let mut my = agent(
        "my-1",
        AgentType::MysqldExporter,
        Some("pa-1"),
        Some("s-mysql"),
        None,
        Some(42002),
    );
    my.agent_password = Some(cipher.seal("exporter-secret"));
    my.custom_labels.insert("tier".into(), "gold".into());
    my.exporter.metrics_resolutions = Some(MetricsResolutions {
        hr_secs: Some(1),
        mr_secs: None,
        lr_secs: Some(300),
    });
    agents.push(my);
    let mut my2 = agent(
        "my-2",
        AgentType::MysqldExporter,
        Some("pa-2"),
        Some("s-mysql2"),
        None,
        Some(42003),
    );
    my2.mysql.tablestats_group_table_limit = 1000;
    my2.mysql.table_count = Some(5000);
    agents.push(my2);
    let mut mo = agent(
        "mo-1",
        AgentType::MongodbExporter,
        Some("pa-1"),
        Some("s-mongo"),
        None,
        Some(42004),
    );
    mo.mongo.enable_all_collectors = true;
    agents.push(mo);
    let mut mo_old = agent(
        "mo-2",
        AgentType::MongodbExporter,
        Some("pa-2"),
        Some("s-mongo"),
        None,
        Some(42005),
    );
    mo_old.mongo.enable_all_collectors = true;
    agents.push(mo_old);
    agents.push(agent(
        "pg-1",
        AgentType::PostgresExporter,
        Some("pa-1"),
        Some("s-pg"),
        None,
        Some(42006),
    ));
    agents.push(agent(
        "px-1",
        AgentType::ProxysqlExporter,
        Some("pa-1"),
        Some("s-proxy"),
        None,
        Some(42007),
    ));
    agents.push(agent(
        "vk-1",
        AgentType::ValkeyExporter,
        Some("pa-1"),
        Some("s-valkey"),
        None,
        Some(42008),
    ));
    let mut ext = agent(
        "ex-1",
        AgentType::ExternalExporter,
        None,
        Some("s-ext"),
        None,
        Some(9104),
    );
    ext.runs_on_node_id = Some("n-db1".into());
    ext.username = Some("scraper".into());
    ext.password = Some(cipher.seal("scrape-secret"));
    ext.exporter.metrics_scheme = Some("https".into());
    ext.exporter.metrics_path = Some("/stats?format=prom&x=1".into());
    ext.tls_skip_verify = true;
    agents.push(ext);
    let mut rds1 = agent(
        "rds-a",
        AgentType::RdsExporter,
        Some("pa-1"),
        None,
        Some("n-rds"),
        Some(42010),
    );
    rds1.aws.aws_access_key = Some("AK".into());
    agents.push(rds1);
    agents.push(agent(
        "rds-b",
        AgentType::RdsExporter,
        Some("pa-1"),
        None,
        Some("n-rds"),
        Some(42010),
    ));
    agents.push(agent(
        "az-1",
        AgentType::AzureDatabaseExporter,
        Some("pa-1"),
        None,
        Some("n-az"),
        Some(42011),
    ));
    // Left out: disabled, no port yet, QAN (no metrics endpoint).
    let mut off = agent(
        "off-1",
        AgentType::PostgresExporter,
        Some("pa-1"),
        Some("s-pg"),
        None,
        Some(42012),
    );
    off.disabled = true;
    agents.push(off);
    agents.push(agent(
        "noport",
        AgentType::ProxysqlExporter,
        Some("pa-1"),
        Some("s-proxy"),
        None,
        None,
    ));
    agents.push(agent(
        "qan-1",
        AgentType::QanMysqlPerfschemaAgent,
        Some("pa-1"),
        Some("s-mysql"),
        None,
        Some(42013),
    ));
    for a in agents {
        ev.push(Event::AgentAdded { agent: a });
    }
    ev
}

fn state_of(events: &[Event]) -> State {
    let mut s = State::default();
    for e in events {
        s.evolve(e);
    }
    s
}

/// A user template and rules that exercise the rule file: built-in and user templates,
/// parameters, custom labels, filters, odd names, a disabled rule, and a rule whose template
/// was deleted after (it keeps its copy).
fn alerting(state: &State) -> Vec<Event> {
    use pmmcp::commands::alerting::{CreateRule, CreateTemplate, DeleteTemplate};
    use pmmcp::commands::{Command, Ctx, decide_and_evolve};
    use pmmcp::domain::alerting::{FilterKind, RuleFilter, Severity};
    let yaml = r#"
templates:
  - name: replica_lag
    version: 1
    summary: Replica behind its source
    expr: max by (service_name) (mysql_slave_status_seconds_behind_master) > [[ .lag ]]
    params:
      - { name: lag, summary: Seconds behind, unit: s, type: float, range: [1, 86400], value: 30 }
    for: 2m
    severity: error
    labels: { team: db, lag_limit: "[[ .lag ]]" }
    annotations:
      summary: "{{ $labels.service_name }} is more than [[ .lag ]]s behind"
"#;
    let rule = |template: &str, name: &str, group: &str| CreateRule {
        template_name: template.to_owned(),
        name: name.to_owned(),
        group: group.to_owned(),
        ..CreateRule::default()
    };
    let commands = [
        Command::CreateAlertTemplate(CreateTemplate {
            yaml: yaml.to_owned(),
        }),
        Command::CreateAlertRule(rule("pmm_mysql_down", "MySQL down", "databases")),
        Command::CreateAlertRule(CreateRule {
            params: [("threshold".to_owned(), 92.5)].into(),
            for_secs: Some(600),
            interval_secs: Some(30),
            severity: Some(Severity::Critical),
            custom_labels: [("env".to_owned(), "prod: \"eu\" 100%".to_owned())].into(),
            filters: vec![
                RuleFilter {
                    kind: FilterKind::Match,
                    label: "node_name".into(),
                    regexp: r"^app-\d+$".into(),
                },
                RuleFilter {
                    kind: FilterKind::Mismatch,
                    label: "environment".into(),
                    regexp: "dev|test".into(),
                },
            ],
            ..rule(
                "pmm_node_high_cpu_load",
                "CPU busy on \"app\" nodes: 92.5%",
                "nodes",
            )
        }),
        Command::CreateAlertRule(CreateRule {
            enabled: Some(false),
            ..rule("pmm_node_low_free_disk", "Disk (off)", "nodes")
        }),
        Command::CreateAlertRule(CreateRule {
            params: [("lag".to_owned(), 300.0)].into(),
            ..rule("replica_lag", "Replica lag", "databases")
        }),
        Command::DeleteAlertTemplate(DeleteTemplate {
            name: "replica_lag".into(),
        }),
    ];
    let mut state = state.clone();
    let mut out = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let ctx = Ctx::fixed(t0(), 1000 + i as u128);
        let (events, next) = decide_and_evolve(&state, cmd, &ctx).expect("alerting command");
        state = next;
        out.extend(events);
    }
    out
}

/// The settings variants that change the output.
fn variants(cipher: &Cipher) -> Vec<(&'static str, State)> {
    let mut base = inventory(cipher);
    let rules = alerting(&state_of(&base));
    base.extend(rules);
    let mut changed = Settings {
        hr_secs: Some(10),
        mr_secs: Some(30),
        lr_secs: Some(120),
        data_retention_secs: Some(15 * 86_400),
        vm_cache_enabled: Some(true),
        nomad_enabled: Some(true),
        pmm_public_address: "https://pmm.example.com:8443".into(),
        ..Settings::default()
    };
    changed.pmm_server_id = "x".into();
    let mut with_settings = base.clone();
    with_settings.push(Event::SettingsChanged { settings: changed });
    vec![
        ("defaults", state_of(&base)),
        ("settings", state_of(&with_settings)),
    ]
}

fn golden_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/files")
        .join(variant)
}

#[test]
fn the_files_match_their_golden_copies() {
    let cipher = key();
    let update = std::env::var_os("PMM_UPDATE_GOLDEN").is_some();
    for (variant, state) in variants(&cipher) {
        let rendered = files::render_all(&state, &cipher, &RenderOptions::default());
        let dir = golden_dir(variant);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
        }
        for f in &rendered {
            let path = dir.join(&f.path);
            if update {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, &f.bytes).expect("write golden");
                continue;
            }
            let want = std::fs::read(&path).unwrap_or_else(|_| {
                panic!(
                    "{} has no golden copy (PMM_UPDATE_GOLDEN=1 makes one)",
                    path.display()
                )
            });
            assert!(
                want == f.bytes,
                "{} differs from its golden copy (PMM_UPDATE_GOLDEN=1 rewrites it; review the diff)\n{}",
                path.display(),
                String::from_utf8_lossy(&f.bytes)
            );
        }
        // No golden file without a rendered one.
        let mut golden = Vec::new();
        collect(&dir, &dir, &mut golden);
        let mut names: Vec<String> = rendered.iter().map(|f| f.path.clone()).collect();
        names.sort();
        golden.sort();
        assert_eq!(
            golden, names,
            "{variant}: the golden files are the rendered ones"
        );
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(
                p.strip_prefix(root)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

#[test]
fn the_rules_pmm_describes_show_in_the_scrape_file() {
    let cipher = key();
    let (_, state) = variants(&cipher).remove(0);
    let text = files::scrape::render_server(&state, &cipher, &RenderOptions::default());
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text.trim_start_matches(files::scrape::HEADER)).expect("YAML");
    let jobs = doc["scrape_configs"].as_sequence().expect("jobs");
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("job {name}"))
    };
    let names: Vec<&str> = jobs.iter().filter_map(|j| j["job_name"].as_str()).collect();
    // Internal jobs first, in PMM's order; RDS last.
    assert_eq!(
        &names[..6],
        [
            "victoriametrics",
            "vmalert",
            "grafana",
            "pmm-managed",
            "qan-api2",
            "clickhouse"
        ]
    );
    assert!(
        names
            .last()
            .expect("jobs")
            .starts_with("rds_exporter_10_0_0_10_42010_lr-1m0s"),
        "{names:?}"
    );
    assert_eq!(doc["global"]["scrape_interval"].as_str(), Some("1m"));
    assert_eq!(doc["global"]["scrape_timeout"].as_str(), Some("54s"));
    // Push, disabled, port-less and QAN agents have no jobs; the darwin node one HR job.
    for absent in ["ne-2", "vm-2", "off-1", "noport", "qan-1"] {
        assert!(
            !names.iter().any(|n| n.contains(absent)),
            "{absent} in {names:?}"
        );
    }
    assert!(
        names.contains(&"node_exporter_ne-mac_hr") && !names.contains(&"node_exporter_ne-mac_mr")
    );
    // Disabled collectors are gone; the password is the agent password, opened.
    let ne = job("node_exporter_ne-1_hr");
    let collect: Vec<&str> = ne["params"]["collect[]"]
        .as_sequence()
        .expect("collectors")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!collect.contains(&"buddyinfo") && collect.contains(&"cpu"));
    let my = job("mysqld_exporter_my-1_hr");
    assert_eq!(
        my["basic_auth"]["password"].as_str(),
        Some("exporter-secret")
    );
    assert_eq!(
        my["scrape_interval"].as_str(),
        Some("1s"),
        "per-agent HR override"
    );
    assert_eq!(my["scrape_timeout"].as_str(), Some("1s"));
    assert_eq!(
        job("mysqld_exporter_my-1_lr")["scrape_interval"].as_str(),
        Some("5m")
    );
    let labels = &my["static_configs"][0]["labels"];
    assert_eq!(labels["instance"].as_str(), Some("my-1"));
    assert_eq!(labels["dc"].as_str(), Some("eu-1"), "node custom label");
    assert_eq!(
        labels["cluster"].as_str(),
        Some("from-custom"),
        "custom over standard"
    );
    assert_eq!(labels["tier"].as_str(), Some("gold"));
    assert!(
        labels.get("replication_set").is_none(),
        "empty values are dropped"
    );
    // Tablestats off when the table count is over the limit.
    let my2_lr = job("mysqld_exporter_my-2_lr");
    let lr: Vec<&str> = my2_lr["params"]["collect[]"]
        .as_sequence()
        .expect("lr")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!lr.contains(&"info_schema.tablestats"));
    // An unknown pmm-agent version: one mongodb job without params.
    assert!(job("mongodb_exporter_mo-2_hr").get("params").is_none());
    assert!(
        job("mongodb_exporter_mo-1_lr")["params"]["collect[]"]
            .as_sequence()
            .is_some()
    );
    assert_eq!(
        job("postgres_exporter_pg-1_mr")["stream_parse"].as_bool(),
        Some(true)
    );
    let ext = job("external-exporter_ex-1_mr");
    assert_eq!(ext["scheme"].as_str(), Some("https"));
    assert_eq!(
        ext["metrics_path"].as_str(),
        Some("/stats?format=prom&x=1"),
        "as given"
    );
    assert_eq!(
        ext["basic_auth"]["password"].as_str(),
        Some("scrape-secret")
    );
    assert_eq!(
        ext["tls_config"]["insecure_skip_verify"].as_bool(),
        Some(true)
    );
    assert!(
        job("azure_database_exporter_az-1_mr")
            .get("basic_auth")
            .is_none()
    );
    // The push file of pa-2.
    let push =
        files::scrape::render_push(&state, &cipher, &"pa-2".into(), &RenderOptions::default());
    let pdoc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&push).expect("YAML");
    let pnames: Vec<&str> = pdoc["scrape_configs"]
        .as_sequence()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert!(
        pnames.contains(&"node_exporter_ne-2_hr") && pnames.contains(&"vmagent_vm-2_mr"),
        "{pnames:?}"
    );
    assert!(push.contains("127.0.0.1:42000"));
}

/// The golden files' options, but programs run as root and log under `dir`: supervisord's
/// parser insists that the user and the log directory exist, and `pmm` and `/srv/logs` do not
/// on a test machine.
fn tool_options(dir: &Path) -> RenderOptions {
    std::fs::create_dir_all(dir).expect("dir");
    RenderOptions {
        supervisord_user: "root".to_owned(),
        log_dir: dir.display().to_string(),
        ..RenderOptions::default()
    }
}

fn validators_wanted() -> bool {
    std::env::var_os("PMM_SKIP_VALIDATORS").is_none()
}

/// Runs a validator; its output on failure.
fn check(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {:?} ({e}); scripts/test installs it (apt-get install victoria-metrics supervisor), or set PMM_SKIP_VALIDATORS=1", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} refused it:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Feeds every file of `rendered` (written under `dir`) to the tool that reads it.
fn validate(dir: &Path, rendered: &[Rendered]) {
    files::write_all(dir, rendered, 1, &mut files::Written::default()).expect("write");
    let mut programs = Vec::new();
    let (mut rules, mut promql_rules) = (0, Vec::new());
    for f in rendered {
        let path = dir.join(&f.path);
        match f.reader {
            files::Reader::VictoriaMetrics => check(
                Command::new("victoria-metrics")
                    .arg("-dryRun")
                    .arg(format!("-promscrape.config={}", path.display())),
                &format!("victoria-metrics -dryRun {}", f.path),
            ),
            files::Reader::Vmagent => check(
                Command::new("vmagent")
                    .arg("-dryRun")
                    .arg(format!("-promscrape.config={}", path.display())),
                &format!("vmagent -dryRun {}", f.path),
            ),
            files::Reader::Vmalert => {
                // promtool knows PromQL only: MetricsQL's label_match is vmalert's alone.
                if !String::from_utf8_lossy(&f.bytes).contains("label_m") {
                    promql_rules.push(path);
                }
                rules += 1;
            }
            files::Reader::Supervisord => programs.push(path),
        }
    }
    // One run of each rule checker over every rule file.
    if rules > 0 {
        check(
            Command::new("vmalert")
                .arg("-dryRun")
                .arg(format!("-rule={}/vmalert/*.yml", dir.display())),
            &format!("vmalert -dryRun on {rules} rule files"),
        );
    }
    if !promql_rules.is_empty() {
        check(
            Command::new("promtool")
                .arg("check")
                .arg("rules")
                .args(&promql_rules),
            &format!("promtool check rules on {} rule files", promql_rules.len()),
        );
    }
    // supervisord's own parser, on a configuration that includes our program files.
    let conf = dir.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n[include]\nfiles = {d}/supervisord.d/*.ini\n",
            d = dir.display()
        ),
    )
    .expect("conf");
    let script = r#"
import sys
from supervisor.options import ServerOptions
o = ServerOptions()
o.configfile = sys.argv[1]
o.process_config(do_usage=False)
names = sorted(g.name for g in o.process_group_configs)
want = int(sys.argv[2])
assert len(names) == want, (names, want)
for g in o.process_group_configs:
    for p in g.process_configs:
        assert p.command, p.name
print(" ".join(names))
"#;
    // The Python that has supervisor: the one supervisord itself runs on (Debian's).
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    check(
        Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&conf)
            .arg(programs.len().to_string()),
        "supervisord's config parser",
    );
}

#[test]
fn the_real_tools_accept_every_golden_file() {
    if !validators_wanted() {
        return;
    }
    let cipher = key();
    for (variant, state) in variants(&cipher) {
        let dir = std::env::temp_dir().join(format!(
            "pmmcp-validate-{variant}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let rendered = files::render_all(&state, &cipher, &tool_options(&dir));
        validate(&dir, &rendered);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A random inventory of `n` nodes, each with a pmm-agent, a service and exporters.
fn random_inventory(cipher: &Cipher, seeds: &[(u8, u16, bool, bool, u8)]) -> State {
    let mut ev = Vec::new();
    for (i, (kind, port, push, disabled, labels)) in seeds.iter().enumerate() {
        let n = format!("n{i}");
        let mut nd = node(
            &n,
            NodeType::Generic,
            &format!("node-{i}"),
            &format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
        );
        for l in 0..*labels % 4 {
            nd.custom_labels.insert(
                format!("l{l}"),
                format!("v{i}-{l} with spaces: and \"quotes\""),
            );
        }
        ev.push(Event::NodeAdded { node: nd });
        let pa = format!("pa{i}");
        let mut p = agent(&pa, AgentType::PmmAgent, None, None, None, None);
        p.runs_on_node_id = Some(n.as_str().into());
        p.version = Some(format!("2.{}.0", 20 + kind % 30));
        ev.push(Event::AgentAdded { agent: p });
        let (st, at) = match kind % 5 {
            0 => (ServiceType::Mysql, AgentType::MysqldExporter),
            1 => (ServiceType::Mongodb, AgentType::MongodbExporter),
            2 => (ServiceType::Postgresql, AgentType::PostgresExporter),
            3 => (ServiceType::Proxysql, AgentType::ProxysqlExporter),
            _ => (ServiceType::Valkey, AgentType::ValkeyExporter),
        };
        let s = format!("s{i}");
        ev.push(Event::ServiceAdded {
            service: service(&s, st, &format!("svc-{i}"), &n),
        });
        let mut a = agent(
            &format!("a{i}"),
            at,
            Some(&pa),
            Some(&s),
            None,
            Some(40000 + port % 20000),
        );
        a.exporter.push_metrics = *push;
        a.disabled = *disabled;
        if kind % 3 == 0 {
            a.agent_password = Some(cipher.seal(&format!("pw-{i}")));
        }
        ev.push(Event::AgentAdded { agent: a });
        let mut ne = agent(
            &format!("ne{i}"),
            AgentType::NodeExporter,
            Some(&pa),
            None,
            Some(&n),
            Some(42000),
        );
        ne.exporter.push_metrics = *push;
        ev.push(Event::AgentAdded { agent: ne });
    }
    state_of(&ev)
}

/// `state` with a rule per seed: a random built-in template, parameters anywhere in their
/// ranges, names and labels with characters YAML and PromQL care about, filters, some
/// disabled. Made through the commands, so every rule is one the API would accept.
fn with_random_rules(state: State, seeds: &[(u8, u32, String)]) -> State {
    use pmmcp::commands::alerting::CreateRule;
    use pmmcp::commands::{Command, Ctx, decide_and_evolve};
    use pmmcp::domain::alerting::{FilterKind, RuleFilter, builtin_templates};
    let templates: Vec<_> = builtin_templates().values().cloned().collect();
    let mut state = state;
    for (i, (pick, n, text)) in seeds.iter().enumerate() {
        let t = &templates[*pick as usize % templates.len()];
        let params = t
            .params
            .iter()
            .map(|p| {
                let (lo, hi) = (p.min.map_or(0.0, |m| m.0), p.max.map_or(100.0, |m| m.0));
                (p.name.clone(), lo + (hi - lo) * f64::from(n % 1000) / 999.0)
            })
            .collect();
        let filters = (0..n % 3)
            .map(|k| RuleFilter {
                kind: if k == 0 {
                    FilterKind::Match
                } else {
                    FilterKind::Mismatch
                },
                label: format!("l{k}"),
                regexp: format!("{}.*", regex_escape(text)),
            })
            .collect();
        let cmd = Command::CreateAlertRule(CreateRule {
            template_name: t.name.clone(),
            name: format!("{text} #{i}"),
            group: format!("g{}", n % 7),
            params,
            custom_labels: [("note".to_owned(), text.clone())].into(),
            filters,
            interval_secs: Some(u64::from(1 + n % 600)),
            for_secs: Some(u64::from(n % 3600)),
            enabled: Some(n % 5 != 0),
            ..CreateRule::default()
        });
        let ctx = Ctx::fixed(t0(), 5000 + i as u128);
        state = decide_and_evolve(&state, &cmd, &ctx)
            .expect("a valid rule")
            .1;
    }
    state
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

#[test]
fn the_real_tools_accept_a_large_random_inventory() {
    if !validators_wanted() {
        return;
    }
    let cipher = key();
    let seeds: Vec<(u8, u16, bool, bool, u8)> = (0..1500u32)
        .map(|i| {
            (
                (i * 7 % 251) as u8,
                (i * 13) as u16,
                i % 4 == 0,
                i % 17 == 0,
                (i % 9) as u8,
            )
        })
        .collect();
    let odd = [
        "plain",
        "with: colon",
        "\"quoted\" 100%",
        "tab\there",
        "yes",
        "é ü",
        "{{ x }}",
    ];
    let rule_seeds: Vec<(u8, u32, String)> = (0..300u32)
        .map(|i| {
            (
                (i * 3 % 256) as u8,
                i * 7919,
                odd[i as usize % odd.len()].to_owned(),
            )
        })
        .collect();
    let state = with_random_rules(random_inventory(&cipher, &seeds), &rule_seeds);
    let dir = std::env::temp_dir().join(format!(
        "pmmcp-validate-big-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let rendered = files::render_all(&state, &cipher, &tool_options(&dir));
    assert!(rendered.len() > 300, "push files for the push pmm-agents");
    // The tools start in about 0.1 s each: check the server file, a sample of push files, all programs.
    let sample: Vec<Rendered> = rendered
        .iter()
        .enumerate()
        .filter(|(i, f)| f.reader != files::Reader::Vmagent || i % 50 == 0)
        .map(|(_, f)| f.clone())
        .collect();
    validate(&dir, &sample);
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_inventories_render_the_same_bytes_and_parse_back(
        seeds in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<bool>(), any::<bool>(), any::<u8>()), 0..40)
    ) {
        let cipher = key();
        let state = random_inventory(&cipher, &seeds);
        let a = files::render_all(&state, &cipher, &RenderOptions::default());
        // Another key can open nothing of this state's secrets, so use the same key again:
        // what must not matter is the moment, the node, or a replay of the same events.
        let b = files::render_all(&state.clone(), &cipher, &RenderOptions::default());
        prop_assert_eq!(&a, &b);
        for f in &a {
            let text = String::from_utf8(f.bytes.clone()).expect("UTF-8");
            match f.reader {
                files::Reader::Supervisord => prop_assert!(text.starts_with(files::supervisord::HEADER) && text.contains("[program:")),
                _ => {
                    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML parses back");
                    prop_assert!(doc["scrape_configs"].is_sequence());
                }
            }
        }
    }
}

#[test]
fn a_killed_writer_leaves_the_old_file_or_the_new_one() {
    // The child writes two large versions in turn until it is killed; the file is always one
    // of them, whole.
    if let Ok(path) = std::env::var("PMMCP_WRITER_CHILD") {
        let (old, new) = (vec![b'a'; 4 << 20], vec![b'b'; 4 << 20]);
        loop {
            files::write_if_changed(Path::new(&path), &new).expect("write");
            println!("wrote");
            files::write_if_changed(Path::new(&path), &old).expect("write");
            println!("wrote");
        }
    }
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("pmmcp-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("victoriametrics-promscrape.yml");
    files::write_if_changed(&path, &vec![b'a'; 4 << 20]).expect("first version");
    for round in 0..8usize {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "a_killed_writer_leaves_the_old_file_or_the_new_one",
                "--nocapture",
            ])
            .env("PMMCP_WRITER_CHILD", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child");
        // Kill it after a different number of whole writes each round: the kill lands inside
        // a later write, at whatever point it has reached.
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut seen = 0;
        while seen <= round {
            match lines.next() {
                Some(Ok(l)) if l == "wrote" => seen += 1,
                Some(Ok(_)) => {}
                _ => panic!("the writer stopped on its own"),
            }
        }
        child.kill().expect("kill");
        child.wait().expect("reaped");
        let bytes = std::fs::read(&path).expect("the file is there");
        assert_eq!(bytes.len(), 4 << 20, "round {round}: whole");
        assert!(
            bytes.iter().all(|b| *b == bytes[0]),
            "round {round}: one version, not a mix"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Rule files for random rules (any text in names and labels) render the same bytes
    /// twice and read back as the rule: alert name, expression, labels and annotations.
    #[test]
    fn random_rules_render_the_same_bytes_and_read_back_as_the_rule(
        seeds in proptest::collection::vec((any::<u8>(), any::<u32>(), "\\PC{1,24}"), 1..12)
    ) {
        let state = with_random_rules(State::default(), &seeds);
        let a = files::vmalert::render(&state);
        prop_assert_eq!(&a, &files::vmalert::render(&state.clone()));
        prop_assert_eq!(a.len(), state.alert_rules.values().filter(|r| r.enabled).count());
        for (id, text) in &a {
            let rule = &state.alert_rules[&pmmcp::domain::RuleId::from(id.as_str())];
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("YAML");
            let r = &doc["groups"][0]["rules"][0];
            prop_assert_eq!(doc["groups"][0]["name"].as_str(), Some(rule.group.as_str()));
            prop_assert_eq!(r["alert"].as_str(), Some(rule.name.as_str()));
            prop_assert_eq!(r["expr"].as_str().map(str::to_owned), rule.expr().ok());
            let labels: std::collections::BTreeMap<String, String> =
                serde_yaml_ng::from_value(r["labels"].clone()).expect("labels");
            prop_assert_eq!(Some(labels), rule.labels().ok());
            let annotations: std::collections::BTreeMap<String, String> =
                serde_yaml_ng::from_value(r["annotations"].clone()).expect("annotations");
            prop_assert_eq!(Some(annotations), rule.annotations().ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The projector keeps each agent's jobs between renders: over random changes, what it
    /// renders with its cache is what a fresh render makes.
    #[test]
    fn renders_with_the_job_cache_equal_fresh_renders(
        seeds in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<bool>(), any::<bool>(), any::<u8>()), 1..25),
        changes in proptest::collection::vec((0u8..6, any::<u16>()), 1..30),
    ) {
        let cipher = key();
        let mut state = random_inventory(&cipher, &seeds);
        let opts = RenderOptions::default();
        let mut cache = files::scrape::JobCache::default();
        prop_assert_eq!(files::render_all_cached(&state, &cipher, &opts, &mut cache), files::render_all(&state, &cipher, &opts));
        for (kind, pick) in changes {
            let agents: Vec<Agent> = state.agents.values().map(|a| (**a).clone()).collect();
            let a = &agents[pick as usize % agents.len()];
            let event = match kind {
                0 => { let mut a = a.clone(); a.disabled = !a.disabled; Event::AgentChanged { agent: a } }
                1 => { let mut a = a.clone(); a.custom_labels.insert("k".into(), format!("v{pick}")); Event::AgentChanged { agent: a } }
                2 => { let mut a = a.clone(); a.exporter.push_metrics = !a.exporter.push_metrics; Event::AgentChanged { agent: a } }
                3 => { let mut a = a.clone(); a.listen_port = Some(40000 + pick % 1000); Event::AgentChanged { agent: a } }
                4 => {
                    let services: Vec<Service> = state.services.values().map(|s| (**s).clone()).collect();
                    let mut s = services[pick as usize % services.len()].clone();
                    s.environment = format!("env{pick}");
                    Event::ServiceChanged { service: s }
                }
                _ => Event::SettingsChanged { settings: Settings { hr_secs: Some(1 + u64::from(pick % 9)), ..Settings::default() } },
            };
            state.evolve(&event);
            prop_assert_eq!(files::render_all_cached(&state, &cipher, &opts, &mut cache), files::render_all(&state, &cipher, &opts));
        }
    }
}
