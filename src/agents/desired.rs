//! A pmm-agent's desired state (PMM's SetStateRequest): one AgentProcess per enabled exporter
//! it runs and one BuiltinAgent per enabled QAN agent, rendered from the state alone, so the
//! same state gives the same message on every node and a message compares equal exactly when
//! nothing the agent runs changed (pmm-agent restarts a process whose message differs).
//!
//! Secrets are opened with the cluster key here, and only here; each process lists them as
//! redact words so pmm-agent keeps them out of its logs.

use crate::crypto::Cipher;
use crate::domain::agent::{Agent, LogLevel};
use crate::domain::{AgentId, AgentType, Node, Service, Settings, State};
use crate::files::scrape::{Around, service_and_node, tablestats_enabled, version};
use crate::grpc::pb::agent::v1::set_state_request::{AgentProcess, BuiltinAgent};
use crate::grpc::pb::agent::v1::{SetStateRequest, TextFiles};
use crate::grpc::pb::inventory::v1::AgentType as PbAgentType;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where pmm-agent keeps its collectors' files (`paths_base` for agents before 2.23).
const LEGACY_PATHS_BASE: &str = "/usr/local/percona/pmm";

/// A rendered desired state.
pub struct Desired {
    pub state: SetStateRequest,
    /// Exporters left out because their web-config hash is not recorded yet
    /// ([`super::web_auth`]): a state without them must not be sent (pmm-agent would stop
    /// them).
    pub awaiting_hash: Vec<AgentId>,
}

/// What a pmm-agent's desired state is made of, looked up once: the settings (of which only
/// the resolutions reach it, in vmagent's file), the pmm-agent, and each child with its
/// service and node (the child's own, else its service's). A stream keeps the last one and
/// compares the next by identity (the state shares an unchanged entity between revisions), so
/// a change elsewhere costs a comparison; the render then reads these, not the state's maps.
pub struct Parts {
    pmm_agent_id: AgentId,
    settings: Arc<Settings>,
    pmm_agent: Option<Arc<Agent>>,
    children: Vec<Child>,
}

struct Child {
    agent: Arc<Agent>,
    service: Option<Arc<Service>>,
    node: Option<Arc<Node>>,
}

impl Parts {
    pub fn of(state: &State, pmm_agent: &AgentId) -> Self {
        let children = state
            .children_of(pmm_agent)
            .iter()
            .filter_map(|id| {
                let agent = state.agents.get(id)?.clone();
                let (service, node) = service_and_node(state, &agent);
                let (service, node) = (service.cloned(), node.cloned());
                Some(Child {
                    agent,
                    service,
                    node,
                })
            })
            .collect();
        Self {
            pmm_agent_id: pmm_agent.clone(),
            settings: state.settings.clone(),
            pmm_agent: state.agents.get(pmm_agent).cloned(),
            children,
        }
    }

    /// True when both render the same desired state: the same entities, or agents that differ
    /// only in what their pmm-agent reports ([`super::same_config`]), or settings with the same
    /// resolutions.
    pub fn same(&self, o: &Parts) -> bool {
        fn agent(a: &Arc<Agent>, b: &Arc<Agent>) -> bool {
            Arc::ptr_eq(a, b) || super::same_config(a, b)
        }
        fn opt<T>(
            a: &Option<Arc<T>>,
            b: &Option<Arc<T>>,
            eq: impl Fn(&Arc<T>, &Arc<T>) -> bool,
        ) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.pmm_agent_id == o.pmm_agent_id
            && (Arc::ptr_eq(&self.settings, &o.settings)
                || self.settings.resolutions_secs() == o.settings.resolutions_secs())
            && opt(&self.pmm_agent, &o.pmm_agent, agent)
            && self.children.len() == o.children.len()
            && self.children.iter().zip(&o.children).all(|(x, y)| {
                agent(&x.agent, &y.agent)
                    && opt(&x.service, &y.service, Arc::ptr_eq)
                    && opt(&x.node, &y.node, Arc::ptr_eq)
            })
    }

    /// [`Parts::same`] with services and nodes compared by value (a test's reference).
    #[cfg(test)]
    pub(super) fn same_values(&self, o: &Parts) -> bool {
        self.pmm_agent_id == o.pmm_agent_id
            && self.settings.resolutions_secs() == o.settings.resolutions_secs()
            && match (&self.pmm_agent, &o.pmm_agent) {
                (Some(a), Some(b)) => super::same_config(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.children.len() == o.children.len()
            && self.children.iter().zip(&o.children).all(|(x, y)| {
                super::same_config(&x.agent, &y.agent) && x.service == y.service && x.node == y.node
            })
    }
}

/// The desired state of `pmm_agent` (without its revision). `announced` is the version the
/// agent gave when it connected, which the state may not have recorded yet.
pub fn render(
    state: &State,
    cipher: &Cipher,
    pmm_agent: &AgentId,
    announced: Option<&str>,
) -> Desired {
    render_parts(state, &Parts::of(state, pmm_agent), cipher, announced)
}

/// [`render`] from what the caller already looked up (`parts`, of `state`).
pub fn render_parts(
    state: &State,
    parts: &Parts,
    cipher: &Cipher,
    announced: Option<&str>,
) -> Desired {
    let pmm_agent = &parts.pmm_agent_id;
    let agent_version = version(announced).or_else(|| {
        parts
            .pmm_agent
            .as_ref()
            .and_then(|a| version(a.version.as_deref()))
    });
    let version = agent_version.unwrap_or((3, 0, 0));
    let mut out = SetStateRequest::default();
    let mut awaiting_hash = Vec::new();
    let mut rds: BTreeMap<String, Vec<&Child>> = BTreeMap::new();
    for child in &parts.children {
        let a = &child.agent;
        let id = &a.agent_id;
        if a.disabled {
            continue;
        }
        if a.agent_type == AgentType::RdsExporter {
            let key = a.aws.aws_access_key.clone().unwrap_or_default();
            rds.entry(key).or_default().push(child);
            continue;
        }
        let web_config = match web_config_flag(a.agent_type, version) {
            None => None,
            Some(flag) => match a.web_auth_hash().and_then(|h| cipher.open(h).ok()) {
                Some(hash) => Some((flag, hash)),
                None => {
                    awaiting_hash.push(id.clone());
                    continue;
                }
            },
        };
        let ctx = Ctx {
            a,
            service: child.service.as_deref(),
            node: child.node.as_deref(),
            cipher,
            version,
            web_config,
        };
        if a.agent_type.is_qan() {
            if let Some(b) = ctx.builtin() {
                out.builtin_agents.insert(id.to_string(), b);
            }
        } else if let Some(p) = ctx.process() {
            out.agent_processes.insert(id.to_string(), p);
        }
    }
    // RDS exporters run one process per AWS access key.
    for (key, members) in rds {
        out.agent_processes.insert(
            rds_group_key(pmm_agent, &key),
            rds_exporter(cipher, &members),
        );
    }
    // Every pmm-agent but the server's own runs a vmagent that pushes its push exporters.
    if !pmm_agent.is_pmm_server() {
        out.agent_processes
            .insert(vmagent_key(pmm_agent), vmagent(state, parts, cipher));
    }
    Desired {
        state: out,
        awaiting_hash,
    }
}

/// An exporter's basic-auth password: its agent password, else (unset, empty, or not opening
/// with this key) its id, as PMM's `GetAgentPassword`.
pub(crate) fn basic_auth_password(
    cipher: &Cipher,
    agent_id: &AgentId,
    agent_password: &Option<crate::domain::Sealed>,
) -> String {
    agent_password
        .as_ref()
        .and_then(|s| cipher.open(s).ok())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| agent_id.to_string())
}

/// The flag of an exporter that reads its basic auth from a web-config file at this
/// pmm-agent version, else `None` (`HTTP_AUTH` in its environment), as PMM decides.
fn web_config_flag(t: AgentType, version: (u32, u32, u32)) -> Option<&'static str> {
    use AgentType::*;
    match t {
        NodeExporter if version >= (3, 0, 0) => Some("--web.config.file"),
        NodeExporter | MongodbExporter if version >= (2, 28, 0) => Some("--web.config"),
        PostgresExporter if version >= (2, 30, 99) => Some("--web.config"),
        _ => None,
    }
}

/// The key of the process that runs a pmm-agent's RDS exporters of one AWS access key.
pub fn rds_group_key(pmm_agent: &AgentId, aws_access_key: &str) -> String {
    format!("{pmm_agent}:rds/{aws_access_key}")
}

/// One rds_exporter for a group: its config file lists every member's instance, sorted by
/// region then instance; a log level only when every member has the same one.
fn rds_exporter(cipher: &Cipher, members: &[&Child]) -> AgentProcess {
    use crate::files::yaml::{field, indent, scalar};
    // Each member's own node (an RDS exporter has one; a service's is not its instance).
    let mut instances: Vec<(String, String, &Agent, &Node)> = members
        .iter()
        .filter_map(|c| {
            c.agent.node_id.as_ref()?;
            let node = c.node.as_deref()?;
            Some((
                node.region.clone().unwrap_or_default(),
                node.address.clone(),
                &*c.agent,
                node,
            ))
        })
        .collect();
    instances.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
    let mut config = String::from("---\ninstances:\n");
    let mut redact = Vec::new();
    for (region, instance, a, node) in &instances {
        indent(&mut config, 0);
        config.push_str("- region: ");
        scalar(&mut config, region);
        config.push('\n');
        field(&mut config, 2, "instance", instance);
        field(
            &mut config,
            2,
            "aws_access_key",
            a.aws.aws_access_key.as_deref().unwrap_or(""),
        );
        if let Some(secret) = a
            .aws
            .aws_secret_key
            .as_ref()
            .and_then(|s| cipher.open(s).ok())
        {
            field(&mut config, 2, "aws_secret_key", &secret);
            redact.push(secret);
        }
        for (k, v) in [
            ("disable_basic_metrics", a.aws.rds_basic_metrics_disabled),
            (
                "disable_enhanced_metrics",
                a.aws.rds_enhanced_metrics_disabled,
            ),
        ] {
            indent(&mut config, 2);
            config.push_str(k);
            config.push_str(if v { ": true\n" } else { ": false\n" });
        }
        let mut labels = node.custom_labels.clone();
        labels.extend(a.custom_labels.clone());
        labels.remove("region");
        if !labels.is_empty() {
            indent(&mut config, 2);
            config.push_str("labels:\n");
            for (k, v) in &labels {
                field(&mut config, 4, k, v);
            }
        }
    }
    let mut args = vec![
        "--web.listen-address=:{{ .listen_port }}".to_owned(),
        "--config.file={{ .TextFiles.config }}".to_owned(),
    ];
    let level = members.first().and_then(|c| c.agent.log_level);
    let shared = members.iter().all(|c| c.agent.log_level == level);
    if let Some(l) = level
        .filter(|_| shared)
        .and_then(|l| serde_json::to_value(l).ok())
    {
        args.push(format!("--log.level={}", l.as_str().unwrap_or("info")));
    }
    redact.sort();
    redact.dedup();
    with_config_file(
        AgentType::RdsExporter,
        args,
        Vec::new(),
        ("config", config),
        redact,
    )
}

/// A process whose inputs hold no template tokens (so `{{ }}`), with one text file; its args
/// are sorted here.
fn with_config_file(
    t: AgentType,
    mut args: Vec<String>,
    env: Vec<String>,
    (name, text): (&str, String),
    redact_words: Vec<String>,
) -> AgentProcess {
    args.sort();
    AgentProcess {
        r#type: pb_type(t),
        template_left_delim: "{{".to_owned(),
        template_right_delim: "}}".to_owned(),
        args,
        env,
        text_files: [(name.to_owned(), text)].into_iter().collect(),
        redact_words,
    }
}

/// The key of a pmm-agent's vmagent process.
pub fn vmagent_key(pmm_agent: &AgentId) -> String {
    format!("vmagent-{pmm_agent}")
}

/// vmagent: scrapes the push exporters (its text file is their scrape configuration) and
/// writes to the server.
fn vmagent(state: &State, parts: &Parts, cipher: &Cipher) -> AgentProcess {
    let config = crate::files::scrape::render_push_around(
        state,
        cipher,
        parts.children.iter().map(|c| {
            (
                &c.agent,
                Around {
                    service: c.service.as_deref(),
                    node: c.node.as_deref(),
                    parent: parts.pmm_agent.as_deref(),
                },
            )
        }),
        &crate::files::RenderOptions::default(),
    );
    let args = vec![
        "-envflag.enable=true".to_owned(),
        "-envflag.prefix=VMAGENT_".to_owned(),
        "-httpListenAddr=127.0.0.1:{{.listen_port}}".to_owned(),
        "-promscrape.config={{.TextFiles.vmagentscrapecfg}}".to_owned(),
        "-remoteWrite.tmpDataPath={{.tmp_dir}}/vmagent-temp-dir".to_owned(),
    ];
    let env = [
        "VMAGENT_loggerLevel=INFO",
        "VMAGENT_promscrape_maxScrapeSize=64MiB",
        "VMAGENT_remoteWrite_basicAuth_password={{.server_password}}",
        "VMAGENT_remoteWrite_basicAuth_username={{.server_username}}",
        "VMAGENT_remoteWrite_maxDiskUsagePerURL=1073741824",
        "VMAGENT_remoteWrite_tlsInsecureSkipVerify={{.server_insecure}}",
        "VMAGENT_remoteWrite_url={{.server_url}}/victoriametrics/api/v1/write",
    ];
    with_config_file(
        AgentType::VmAgent,
        args,
        env.iter().map(|s| (*s).to_owned()).collect(),
        ("vmagentscrapecfg", config),
        Vec::new(),
    )
}

/// The netstat fields node_exporter collects: PMM's list (its dashboards read them), more than
/// node_exporter's default.
const NETSTAT_FIELDS: &str = concat!(
    "^(.*_(InErrors|InErrs|InCsumErrors)",
    "|Tcp_(ActiveOpens|PassiveOpens|RetransSegs|CurrEstab|AttemptFails|OutSegs|InSegs|EstabResets|OutRsts|OutSegs)|Tcp_Rto(Algorithm|Min|Max)",
    "|Udp_(RcvbufErrors|SndbufErrors)|Udp(6?|Lite6?)_(InDatagrams|OutDatagrams|RcvbufErrors|SndbufErrors|NoPorts)",
    "|Icmp6?_(OutEchoReps|OutEchos|InEchos|InEchoReps|InAddrMaskReps|InAddrMasks|OutAddrMaskReps|OutAddrMasks|InTimestampReps|InTimestamps",
    "|OutTimestampReps|OutTimestamps|OutErrors|InDestUnreachs|OutDestUnreachs|InTimeExcds|InRedirects|OutRedirects|InMsgs|OutMsgs)",
    "|IcmpMsg_(InType3|OutType3)|Ip(6|Ext)_(InOctets|OutOctets)|Ip_Forwarding|TcpExt_(Listen.*|Syncookies.*|TCPTimeouts))$",
);

/// The vmstat fields node_exporter collects: PMM's list.
const VMSTAT_FIELDS: &str = concat!(
    "^(pg(steal_(kswapd|direct)|refill|alloc)_(movable|normal|dma3?2?)",
    "|nr_(dirty.*|slab.*|vmscan.*|isolated.*|free.*|shmem.*|i?n?active.*|anon_transparent_.*|writeback.*|unstable",
    "|unevictable|mlock|mapped|bounce|page_table_pages|kernel_stack)|drop_slab|slabs_scanned|pgd?e?activate",
    "|pgpg(in|out)|pswp(in|out)|pgm?a?j?fault)$",
);

struct Ctx<'a> {
    a: &'a Agent,
    service: Option<&'a Service>,
    /// The exporter's node (else its service's).
    node: Option<&'a crate::domain::Node>,
    cipher: &'a Cipher,
    version: (u32, u32, u32),
    /// The web-config flag and the password hash, when the exporter takes its auth that way.
    web_config: Option<(&'static str, String)>,
}

fn pb_type(t: AgentType) -> i32 {
    use AgentType::*;
    let t = match t {
        NodeExporter => PbAgentType::NodeExporter,
        MysqldExporter => PbAgentType::MysqldExporter,
        MongodbExporter => PbAgentType::MongodbExporter,
        PostgresExporter => PbAgentType::PostgresExporter,
        ProxysqlExporter => PbAgentType::ProxysqlExporter,
        ValkeyExporter => PbAgentType::ValkeyExporter,
        QanMysqlPerfschemaAgent => PbAgentType::QanMysqlPerfschemaAgent,
        QanMysqlSlowlogAgent => PbAgentType::QanMysqlSlowlogAgent,
        QanMongodbProfilerAgent => PbAgentType::QanMongodbProfilerAgent,
        QanMongodbMongologAgent => PbAgentType::QanMongodbMongologAgent,
        QanPostgresqlPgstatementsAgent => PbAgentType::QanPostgresqlPgstatementsAgent,
        QanPostgresqlPgstatmonitorAgent => PbAgentType::QanPostgresqlPgstatmonitorAgent,
        RdsExporter => PbAgentType::RdsExporter,
        AzureDatabaseExporter => PbAgentType::AzureDatabaseExporter,
        ExternalExporter => PbAgentType::ExternalExporter,
        VmAgent => PbAgentType::VmAgent,
        NomadAgent => PbAgentType::NomadAgent,
        RtaMongodbAgent => PbAgentType::Unspecified,
        PmmAgent => PbAgentType::PmmAgent,
    };
    t as i32
}

/// The first delimiter pair whose tokens appear in none of `inputs` (PMM's choice order).
fn delimiters(inputs: &[&str]) -> (&'static str, &'static str) {
    const PAIRS: [(&str, &str); 5] = [
        ("{{", "}}"),
        ("[[", "]]"),
        ("((", "))"),
        ("<<", ">>"),
        ("<%", "%>"),
    ];
    PAIRS
        .into_iter()
        .find(|(l, r)| !inputs.iter().any(|i| i.contains(l) || i.contains(r)))
        .unwrap_or(PAIRS[0])
}

impl Ctx<'_> {
    fn open(&self, s: &Option<crate::domain::Sealed>) -> Option<String> {
        s.as_ref().and_then(|s| self.cipher.open(s).ok())
    }

    fn at_least(&self, v: (u32, u32, u32)) -> bool {
        self.version >= v
    }

    fn password(&self) -> Option<String> {
        self.open(&self.a.password)
    }

    fn http_password(&self) -> String {
        basic_auth_password(self.cipher, &self.a.agent_id, &self.a.agent_password)
    }

    fn host_port(&self) -> (String, u16) {
        let s = self.service;
        (
            s.and_then(|s| s.address.clone()).unwrap_or_default(),
            s.and_then(|s| s.port).unwrap_or(0),
        )
    }

    fn redact_words(&self) -> Vec<String> {
        let mut w: Vec<String> = [
            self.password(),
            self.open(&self.a.agent_password),
            self.open(&self.a.mysql.tls_key),
            self.open(&self.a.postgresql.ssl_key),
            self.open(&self.a.mongo.tls_certificate_key),
            self.open(&self.a.mongo.tls_certificate_key_file_password),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
        // DSNs carry passwords percent-encoded: those forms are redacted too.
        let encoded: Vec<String> = w
            .iter()
            .map(|s| enc(s))
            .filter(|e| !w.contains(e))
            .collect();
        w.extend(encoded);
        w.sort();
        w.dedup();
        w
    }

    fn delims(&self) -> (&'static str, &'static str) {
        let (host, _) = self.host_port();
        let pw = self.password().unwrap_or_default();
        let user = self.a.username.clone().unwrap_or_default();
        let path = self.a.exporter.metrics_path.clone().unwrap_or_default();
        delimiters(&[&host, &user, &pw, &path])
    }

    fn listen_address(&self) -> &'static str {
        if !self.a.exporter.expose_exporter && self.a.exporter.push_metrics {
            "127.0.0.1"
        } else {
            "0.0.0.0"
        }
    }

    fn paths_base(&self, (l, r): (&str, &str)) -> String {
        if self.at_least((2, 22, 99)) {
            format!("{l} .paths_base {r}")
        } else {
            LEGACY_PATHS_BASE.to_owned()
        }
    }

    /// Log level flag (pmm-agent ≥ 2.27.99; node, mysqld and postgres have no `fatal`).
    fn log_level(&self, args: &mut Vec<String>) {
        let Some(level) = self.a.log_level else {
            return;
        };
        if !self.at_least((2, 27, 99)) {
            return;
        }
        let no_fatal = matches!(
            self.a.agent_type,
            AgentType::NodeExporter | AgentType::MysqldExporter | AgentType::PostgresExporter
        );
        let text = match level {
            LogLevel::Fatal if no_fatal => "error".to_owned(),
            l => serde_json::to_value(l)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        };
        args.push(format!("--log.level={text}"));
    }

    /// Removes disabled collectors (`<prefix><name>` before any `=`) and sorts.
    fn finish_args(&self, mut args: Vec<String>, prefix: &str) -> Vec<String> {
        let off: Vec<String> = self
            .a
            .exporter
            .disabled_collectors
            .iter()
            .map(|c| format!("{prefix}{c}"))
            .collect();
        args.retain(|arg| {
            !off.iter()
                .any(|o| arg.split('=').next() == Some(o.as_str()))
        });
        if let Some(path) = &self.a.exporter.metrics_path {
            args.push(format!("--web.telemetry-path={path}"));
        }
        args.sort();
        args
    }

    fn process(&self) -> Option<AgentProcess> {
        use AgentType::*;
        let delims = self.delims();
        let (l, r) = delims;
        let listen = format!(
            "--web.listen-address={}:{l} .listen_port {r}",
            self.listen_address()
        );
        let mut env = Vec::new();
        if self.web_config.is_none() {
            env.push(format!("HTTP_AUTH=pmm:{}", self.http_password()));
        }
        let mut text_files = BTreeMap::new();
        let (args, prefix) = match self.a.agent_type {
            NodeExporter => (self.node_exporter(listen, delims), "--collector."),
            MysqldExporter => {
                let mut args = self.mysqld_exporter(listen, delims);
                for (key, flag, value) in [
                    ("tlsCa", "--mysql.ssl-ca-file", self.a.mysql.tls_ca.clone()),
                    (
                        "tlsCert",
                        "--mysql.ssl-cert-file",
                        self.a.mysql.tls_cert.clone(),
                    ),
                    (
                        "tlsKey",
                        "--mysql.ssl-key-file",
                        self.open(&self.a.mysql.tls_key),
                    ),
                ] {
                    if let Some(v) = value.filter(|v| !v.is_empty()) {
                        args.push(format!("{flag}={l} .TextFiles.{key} {r}"));
                        text_files.insert(key.to_owned(), v);
                    }
                }
                if self.a.tls_skip_verify {
                    args.push("--mysql.ssl-skip-verify".to_owned());
                }
                env.push(format!(
                    "DATA_SOURCE_NAME={}",
                    self.mysql_dsn(false, &text_files)
                ));
                (args, "--collect.")
            }
            PostgresExporter => {
                env.push(format!("DATA_SOURCE_NAME={}", self.postgres_dsn(1)));
                (self.postgres_exporter(listen, delims), "--collect.")
            }
            MongodbExporter => {
                env.push(format!("MONGODB_URI={}", self.mongodb_dsn()));
                (self.mongodb_exporter(listen), "--collector.")
            }
            ProxysqlExporter => {
                env.push(format!(
                    "DATA_SOURCE_NAME={}",
                    self.mysql_dsn(false, &text_files)
                ));
                (self.proxysql_exporter(delims), "-collect.")
            }
            ValkeyExporter => {
                let (host, port) = self.host_port();
                env.push(format!("REDIS_ADDR={host}:{port}"));
                if let Some(u) = &self.a.username {
                    env.push(format!("REDIS_USER={u}"));
                }
                if let Some(p) = self.password() {
                    env.push(format!("REDIS_PASSWORD={p}"));
                }
                (vec![listen], "--")
            }
            AzureDatabaseExporter => return Some(self.azure_exporter()),
            // RDS exporters are grouped per AWS key (rds_exporter); nomad is not rendered yet;
            // external exporters run elsewhere.
            _ => return None,
        };
        let mut args = args;
        self.log_level(&mut args);
        let mut args = self.finish_args(args, prefix);
        // After the sort, as PMM appends it.
        if let Some((flag, hash)) = &self.web_config {
            args.push(format!("{flag}={l} .TextFiles.webConfigPlaceholder {r}"));
            text_files.insert(
                "webConfigPlaceholder".to_owned(),
                format!("basic_auth_users:\n    pmm: {hash}\n"),
            );
        }
        env.sort();
        Some(AgentProcess {
            r#type: pb_type(self.a.agent_type),
            template_left_delim: l.to_owned(),
            template_right_delim: r.to_owned(),
            args,
            env,
            text_files: text_files.into_iter().collect(),
            redact_words: self.redact_words(),
        })
    }

    /// azure_database_exporter: its config file names the subscription, credentials and the
    /// resource group and types to read.
    fn azure_exporter(&self) -> AgentProcess {
        use crate::files::yaml::field;
        let z = &self.a.azure;
        let secret = self.open(&z.client_secret).unwrap_or_default();
        let types: &[&str] = if z.resource_type.contains("postgres") {
            &[
                "Microsoft.DBforPostgreSQL/servers",
                "Microsoft.DBforPostgreSQL/flexibleServers",
                "Microsoft.DBforPostgreSQL/serversv2",
            ]
        } else {
            &[
                "Microsoft.DBforMySQL/servers",
                "Microsoft.DBforMySQL/felexibleServers",
                "Microsoft.DBforMariaDB/servers",
            ]
        };
        let mut c = String::from("---\n");
        field(
            &mut c,
            0,
            "active_directory_authority_url",
            "https://login.microsoftonline.com/",
        );
        field(
            &mut c,
            0,
            "resource_manager_url",
            "https://management.azure.com/",
        );
        c.push_str("credentials:\n");
        for (k, v) in [
            ("client_id", z.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("tenant_id", z.tenant_id.as_str()),
            ("subscription_id", z.subscription_id.as_str()),
        ] {
            field(&mut c, 2, k, v);
        }
        c.push_str("targets: []\nresource_groups:\n  - resource_group: ");
        crate::files::yaml::scalar(&mut c, &z.resource_group);
        c.push_str("\n    aggregations:\n      - Average\n    resource_types:\n");
        for t in types {
            c.push_str("      - ");
            c.push_str(t);
            c.push('\n');
        }
        c.push_str("    metrics:\n");
        for m in [
            "cpu_percent",
            "memory_percent",
            "storage_percent",
            "storage_used",
            "storage_limit",
            "network_bytes_egress",
            "network_bytes_ingress",
        ] {
            c.push_str("      - ");
            c.push_str(m);
            c.push('\n');
        }
        let mut args = vec![
            "--config.file={{ .TextFiles.config }}".to_owned(),
            "--web.listen-address=:{{ .listen_port }}".to_owned(),
        ];
        self.log_level(&mut args);
        let redact = if secret.is_empty() {
            Vec::new()
        } else {
            vec![secret]
        };
        with_config_file(
            AgentType::AzureDatabaseExporter,
            args,
            Vec::new(),
            ("config", c),
            redact,
        )
    }

    fn node_exporter(&self, listen: String, delims: (&str, &str)) -> Vec<String> {
        let base = self.paths_base(delims);
        let mut args = vec![
            format!(
                "--collector.textfile.directory.lr={base}/collectors/textfile-collector/low-resolution"
            ),
            format!(
                "--collector.textfile.directory.mr={base}/collectors/textfile-collector/medium-resolution"
            ),
            format!(
                "--collector.textfile.directory.hr={base}/collectors/textfile-collector/high-resolution"
            ),
            "--web.disable-exporter-metrics".to_owned(),
            listen,
        ];
        // Many collectors are Linux-only: left at their defaults on macOS.
        if self.node.is_some_and(|n| n.distro == "darwin") {
            return args;
        }
        const ON: [&str; 23] = [
            "bonding",
            "entropy",
            "uname",
            "textfile.lr",
            "textfile.mr",
            "hwmon",
            "buddyinfo",
            "cpu",
            "diskstats",
            "filefd",
            "filesystem",
            "loadavg",
            "meminfo",
            "meminfo_numa",
            "netdev",
            "netstat",
            "processes",
            "stat",
            "time",
            "vmstat",
            "textfile.hr",
            "standard.go",
            "standard.process",
        ];
        const OFF: [&str; 26] = [
            "arp",
            "bcache",
            "conntrack",
            "drbd",
            "edac",
            "infiniband",
            "interrupts",
            "ipvs",
            "ksmd",
            "logind",
            "mdadm",
            "mountstats",
            "netclass",
            "nfs",
            "nfsd",
            "ntp",
            "qdisc",
            "runit",
            "sockstat",
            "supervisord",
            "systemd",
            "tcpstat",
            "timex",
            "wifi",
            "xfs",
            "zfs",
        ];
        args.extend(ON.iter().map(|c| format!("--collector.{c}")));
        args.extend(OFF.iter().map(|c| format!("--no-collector.{c}")));
        args.push(format!("--collector.netstat.fields={NETSTAT_FIELDS}"));
        args.push(format!("--collector.vmstat.fields={VMSTAT_FIELDS}"));
        args
    }

    fn mysqld_exporter(&self, listen: String, delims: (&str, &str)) -> Vec<String> {
        let base = self.paths_base(delims);
        let mut collectors = vec![
            "binlog_size",
            "engine_tokudb_status",
            "global_variables",
            "heartbeat",
            "info_schema.clientstats",
            "info_schema.userstats",
            "perf_schema.eventsstatements",
            "custom_query.lr",
            "engine_innodb_status",
            "info_schema.innodb_cmp",
            "info_schema.innodb_cmpmem",
            "info_schema.processlist",
            "info_schema.query_response_time",
            "perf_schema.eventswaits",
            "perf_schema.file_events",
            "slave_status",
            "custom_query.mr",
            "global_status",
            "info_schema.innodb_metrics",
            "custom_query.hr",
            "standard.go",
            "standard.process",
        ];
        if self.at_least((2, 36, 0)) {
            collectors.push("plugins");
        }
        if tablestats_enabled(self.a) {
            collectors.extend([
                "info_schema.innodb_tablespaces",
                "auto_increment.columns",
                "info_schema.tables",
                "info_schema.tablestats",
                "perf_schema.indexiowaits",
                "perf_schema.tableiowaits",
                "perf_schema.file_instances",
                "perf_schema.tablelocks",
            ]);
        }
        let mut args: Vec<String> = collectors
            .iter()
            .map(|c| format!("--collect.{c}"))
            .collect();
        for (res, dir) in [("lr", "low"), ("mr", "medium"), ("hr", "high")] {
            args.push(format!(
                "--collect.custom_query.{res}.directory={base}/collectors/custom-queries/mysql/{dir}-resolution"
            ));
        }
        args.extend([
            "--exporter.max-idle-conns=3".to_owned(),
            "--exporter.max-open-conns=3".to_owned(),
            "--exporter.conn-max-lifetime=55s".to_owned(),
            "--exporter.global-conn-pool".to_owned(),
            listen,
        ]);
        args
    }

    fn postgres_exporter(&self, listen: String, delims: (&str, &str)) -> Vec<String> {
        let base = self.paths_base(delims);
        let mut args = vec![listen];
        for (res, dir) in [("lr", "low"), ("mr", "medium"), ("hr", "high")] {
            args.push(format!("--collect.custom_query.{res}"));
            args.push(format!(
                "--collect.custom_query.{res}.directory={base}/collectors/custom-queries/postgresql/{dir}-resolution"
            ));
        }
        let pg = &self.a.postgresql;
        let discover = match pg.auto_discovery_limit {
            None => true,
            Some(0) => pg.database_count.is_none_or(|c| c <= 50),
            Some(l) if l < 0 => false,
            Some(l) => pg.database_count.is_none_or(|c| c <= l),
        };
        if discover {
            args.push("--auto-discover-databases".to_owned());
            args.push("--exclude-databases=template0,template1,cloudsqladmin,pmm-managed-dev,azure_maintenance,rdsadmin".to_owned());
        }
        if pg.max_exporter_connections != 0 && self.at_least((2, 41, 2)) {
            args.push(format!("--max-connections={}", pg.max_exporter_connections));
        }
        args
    }

    fn mongodb_exporter(&self, listen: String) -> Vec<String> {
        let mut args = vec![
            "--mongodb.global-conn-pool".to_owned(),
            "--compatible-mode".to_owned(),
            "--discovering-mode".to_owned(),
            listen,
        ];
        if self.at_least((2, 26, 0)) {
            args.push("--collector.diagnosticdata".to_owned());
            args.push("--collector.replicasetstatus".to_owned());
            let m = &self.a.mongo;
            if m.enable_all_collectors {
                for c in ["collstats", "dbstats", "indexstats", "topmetrics"] {
                    args.push(format!("--collector.{c}"));
                }
                if self.at_least((2, 41, 1)) {
                    args.push("--collector.shards".to_owned());
                }
                if self.at_least((2, 42, 0)) {
                    args.push("--collector.currentopmetrics".to_owned());
                }
            }
            if self.at_least((2, 43, 0)) {
                args.push("--collector.fcv".to_owned());
                args.push("--collector.pbm".to_owned());
            }
            if !m.stats_collections.is_empty() {
                let colls = m.stats_collections.join(",");
                args.push(format!("--mongodb.collstats-colls={colls}"));
                args.push(format!("--mongodb.indexstats-colls={colls}"));
            }
            let limit = if m.collections_limit == -1 {
                200
            } else {
                m.collections_limit
            };
            args.push(format!("--collector.collstats-limit={limit}"));
        }
        args
    }

    fn proxysql_exporter(&self, (l, r): (&str, &str)) -> Vec<String> {
        let mut args: Vec<String> = [
            "-collect.mysql_connection_list",
            "-collect.mysql_connection_pool",
            "-collect.mysql_status",
            "-collect.stats_memory_metrics",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(format!(
            "-web.listen-address={}:{l} .listen_port {r}",
            self.listen_address()
        ));
        if self.at_least((2, 18, 99)) {
            args.push("-collect.stats_command_counter".to_owned());
        }
        if self.at_least((2, 20, 99)) {
            args.push("-collect.runtime_mysql_servers".to_owned());
        }
        args
    }

    /// go-sql-driver's DSN: `user:pass@tcp(host:port)/?timeout=1s` (QAN adds its flags).
    fn mysql_dsn(&self, qan: bool, text_files: &BTreeMap<String, String>) -> String {
        let (host, port) = self.host_port();
        let user = self.a.username.clone().unwrap_or_default();
        let auth = match self.password() {
            Some(p) => format!("{user}:{p}@"),
            None if user.is_empty() => String::new(),
            None => format!("{user}@"),
        };
        let socket = self
            .service
            .and_then(|s| s.socket.clone())
            .filter(|s| !s.is_empty());
        let addr = match socket {
            Some(s) => format!("unix({s})"),
            None => format!("tcp({host}:{port})"),
        };
        let mut params = Vec::new();
        if qan {
            params.push("clientFoundRows=true".to_owned());
            params.push("parseTime=true".to_owned());
        }
        if self.a.tls {
            let mode = if !text_files.is_empty() {
                "custom"
            } else if self.a.tls_skip_verify {
                "skip-verify"
            } else {
                "true"
            };
            params.push(format!("tls={mode}"));
        }
        params.push("timeout=1s".to_owned());
        format!("{auth}{addr}/?{}", params.join("&"))
    }

    /// `postgres://user:pass@host:port/db?connect_timeout=N&sslmode=...`.
    fn postgres_dsn(&self, timeout_secs: u32) -> String {
        let (host, port) = self.host_port();
        let user = enc(&self.a.username.clone().unwrap_or_default());
        let auth = match self.password() {
            Some(p) => format!("{user}:{}@", enc(&p)),
            None => format!("{user}@"),
        };
        let db = self
            .service
            .map(|s| s.database_name.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "postgres".to_owned());
        let sslmode = match (self.a.tls, self.a.tls_skip_verify) {
            (false, _) => "disable",
            (true, true) => "require",
            (true, false) => "verify-ca",
        };
        format!(
            "postgres://{auth}{host}:{port}/{}?connect_timeout={timeout_secs}&sslmode={sslmode}",
            enc(&db)
        )
    }

    /// `mongodb://user:pass@host:port/?connectTimeoutMS=1000&directConnection=true&...`.
    fn mongodb_dsn(&self) -> String {
        let (host, port) = self.host_port();
        let auth = match (&self.a.username, self.password()) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(&p)),
            (Some(u), None) => format!("{}@", enc(u)),
            _ => String::new(),
        };
        let mut params = vec![
            "connectTimeoutMS=1000".to_owned(),
            "directConnection=true".to_owned(),
            "serverSelectionTimeoutMS=1000".to_owned(),
        ];
        if self.a.tls {
            params.push("ssl=true".to_owned());
            if self.a.tls_skip_verify {
                params.push("tlsInsecure=true".to_owned());
            }
        }
        let m = &self.a.mongo;
        if !m.authentication_mechanism.is_empty() {
            params.push(format!(
                "authMechanism={}",
                enc(&m.authentication_mechanism)
            ));
        }
        if !m.authentication_database.is_empty() {
            params.push(format!("authSource={}", enc(&m.authentication_database)));
        }
        format!("mongodb://{auth}{host}:{port}/?{}", params.join("&"))
    }

    fn builtin(&self) -> Option<BuiltinAgent> {
        use AgentType::*;
        let t = self.a.agent_type;
        let (l, r) = self.delims();
        let dsn = match t {
            QanMysqlPerfschemaAgent | QanMysqlSlowlogAgent => {
                self.mysql_dsn(true, &BTreeMap::new())
            }
            QanMongodbProfilerAgent | QanMongodbMongologAgent => self.mongodb_dsn(),
            QanPostgresqlPgstatementsAgent => self.postgres_dsn(5),
            QanPostgresqlPgstatmonitorAgent => self.postgres_dsn(1),
            _ => return None,
        };
        let q = &self.a.qan;
        Some(BuiltinAgent {
            r#type: pb_type(t),
            dsn,
            max_query_length: q.max_query_length,
            disable_comments_parsing: q.comments_parsing_disabled,
            disable_query_examples: q.query_examples_disabled,
            max_query_log_size: if t == QanMysqlSlowlogAgent {
                q.max_query_log_size
            } else {
                0
            },
            text_files: Some(TextFiles {
                files: Default::default(),
                template_left_delim: l.to_owned(),
                template_right_delim: r.to_owned(),
            }),
            tls: self.a.tls,
            tls_skip_verify: self.a.tls_skip_verify,
        })
    }
}

/// Percent-encoding for URL user info, paths and query values (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::agent::WebAuth;

    #[test]
    fn delimiters_avoid_what_the_inputs_contain() {
        assert_eq!(delimiters(&["plain"]), ("{{", "}}"));
        assert_eq!(delimiters(&["pa{{ss"]), ("[[", "]]"));
        assert_eq!(delimiters(&["a}}", "b[["]), ("((", "))"));
    }

    /// node_exporter gets PMM's collector set, with its netstat and vmstat field lists, except
    /// on macOS, where the collectors keep their defaults.
    #[test]
    fn node_exporter_tunes_collectors_except_on_macos() {
        use crate::agents::router::tests::{node, t0};
        use crate::events::Event;
        let t0 = t0();
        let cipher = Cipher::from_key(&[7; 32]);
        let mut st = State::default();
        for (i, distro) in [(0, "linux"), (1, "darwin")] {
            let mut n = node(i, 0);
            n.distro = distro.to_owned();
            st.evolve(&Event::NodeAdded { node: n });
            let mut pmm_agent = Agent::new(format!("p{i}").into(), AgentType::PmmAgent, t0);
            pmm_agent.runs_on_node_id = Some(format!("n{i}").into());
            st.evolve(&Event::AgentAdded { agent: pmm_agent });
            let mut exporter = Agent::new(format!("e{i}").into(), AgentType::NodeExporter, t0);
            exporter.pmm_agent_id = Some(format!("p{i}").into());
            exporter.node_id = Some(format!("n{i}").into());
            exporter.web_auth = Some(WebAuth {
                for_password: None,
                hash: cipher.seal("$2a$10$h"),
            });
            st.evolve(&Event::AgentAdded { agent: exporter });
        }
        let args = |p: &str| {
            render(&st, &cipher, &AgentId::from(p), Some("3.1.0"))
                .state
                .agent_processes[&format!("e{}", &p[1..])]
                .args
                .clone()
        };
        let linux = args("p0");
        assert!(linux.iter().any(|a| a == "--no-collector.wifi"));
        assert!(linux.iter().any(|a| a == "--collector.vmstat"));
        assert!(
            linux
                .iter()
                .any(|a| a == &format!("--collector.netstat.fields={NETSTAT_FIELDS}"))
        );
        assert!(
            linux
                .iter()
                .any(|a| a == &format!("--collector.vmstat.fields={VMSTAT_FIELDS}"))
        );
        let mac = args("p1");
        assert!(
            !mac.iter().any(|a| a.contains("collector.vmstat")),
            "{mac:?}"
        );
        assert!(
            !mac.iter().any(|a| a.starts_with("--no-collector.")),
            "{mac:?}"
        );
        assert!(mac.iter().any(|a| a == "--web.disable-exporter-metrics"));
    }

    #[test]
    fn urls_encode_what_is_not_unreserved() {
        assert_eq!(enc("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
        assert_eq!(enc("plain-1.2_~"), "plain-1.2_~");
    }

    /// node_exporter, mongodb_exporter and postgres_exporter of newer pmm-agents read their
    /// basic auth from a web-config file holding the recorded hash; without a hash for the
    /// current password the exporter waits; older agents and mysqld_exporter get HTTP_AUTH.
    #[test]
    fn newer_agents_get_a_web_config_once_its_hash_is_recorded() {
        use crate::agents::router::tests::{node, t0};
        use crate::events::Event;
        let cipher = Cipher::from_key(&[7; 32]);
        let mut st = State::default();
        st.evolve(&Event::NodeAdded { node: node(0, 0) });
        let mut pmm_agent = Agent::new("p".into(), AgentType::PmmAgent, t0());
        pmm_agent.runs_on_node_id = Some("n0".into());
        st.evolve(&Event::AgentAdded { agent: pmm_agent });
        let mut exporter = Agent::new("e".into(), AgentType::NodeExporter, t0());
        exporter.pmm_agent_id = Some("p".into());
        exporter.node_id = Some("n0".into());
        st.evolve(&Event::AgentAdded {
            agent: exporter.clone(),
        });
        let at = |st: &State, v: &str| render(st, &cipher, &AgentId::from("p"), Some(v));

        let waiting = at(&st, "3.0.0");
        assert_eq!(waiting.awaiting_hash, vec![AgentId::from("e")]);
        assert!(!waiting.state.agent_processes.contains_key("e"));
        let legacy = at(&st, "2.27.0");
        assert!(legacy.awaiting_hash.is_empty());
        assert_eq!(
            legacy.state.agent_processes["e"].env,
            vec!["HTTP_AUTH=pmm:e"]
        );

        exporter.web_auth = Some(WebAuth {
            for_password: None,
            hash: cipher.seal("$2a$10$abc"),
        });
        st.evolve(&Event::AgentChanged {
            agent: exporter.clone(),
        });
        for (v, flag) in [("3.0.0", "--web.config.file"), ("2.28.0", "--web.config")] {
            let r = at(&st, v);
            assert!(r.awaiting_hash.is_empty());
            let p = &r.state.agent_processes["e"];
            assert_eq!(
                p.args.last(),
                Some(&format!("{flag}={{{{ .TextFiles.webConfigPlaceholder }}}}"))
            );
            assert_eq!(
                p.text_files["webConfigPlaceholder"],
                "basic_auth_users:\n    pmm: $2a$10$abc\n"
            );
            assert!(p.env.is_empty(), "{:?}", p.env);
        }

        // A hash of an earlier password is not used.
        exporter.agent_password = Some(cipher.seal("new"));
        st.evolve(&Event::AgentChanged { agent: exporter });
        assert_eq!(at(&st, "3.0.0").awaiting_hash, vec![AgentId::from("e")]);

        assert_eq!(
            web_config_flag(AgentType::PostgresExporter, (2, 30, 0)),
            None
        );
        assert_eq!(
            web_config_flag(AgentType::PostgresExporter, (2, 30, 99)),
            Some("--web.config")
        );
        assert_eq!(web_config_flag(AgentType::MysqldExporter, (3, 5, 0)), None);
    }
}
