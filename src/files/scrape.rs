//! VictoriaMetrics scrape configuration: the server's file (internal jobs, then a job set per
//! pull exporter) and each pmm-agent's vmagent file (its push exporters), as PMM builds them
//! (`../shared/reference/pmm-outputs.md` §1 and §2).
//!
//! Pure functions of the state: agents in (type, id) order, labels and collector lists sorted,
//! RDS jobs last; the same state renders the same bytes on every node.

use super::yaml::{field, indent, list, scalar};
use super::{
    RenderOptions,
    durations::{go_duration, prom_duration, timeout},
};
use crate::crypto::Cipher;
use crate::domain::agent::Agent;
use crate::domain::{AgentId, AgentType, Node, Service, State};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The first line of the server's file.
pub const HEADER: &str = "# Managed by pmm-cp. DO NOT EDIT.\n---\n";

/// The whole document (the tests compare the emitter with the YAML library on it).
#[cfg(test)]
#[derive(Serialize)]
struct Document {
    global: Global,
    scrape_configs: Vec<Job>,
}

#[derive(Serialize, Default)]
struct Global {
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape_timeout: Option<String>,
}

/// One scrape job, fields in the order PMM's serializer prints them.
#[derive(Serialize, Clone, Debug, PartialEq)]
struct Job {
    job_name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    honor_labels: bool,
    honor_timestamps: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    params: BTreeMap<String, Vec<Cow<'static, str>>>,
    scrape_interval: String,
    scrape_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    static_configs: Vec<StaticConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_config: Option<TlsConfig>,
    follow_redirects: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream_parse: bool,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
struct StaticConfig {
    targets: Vec<String>,
    /// Shared by an agent's jobs (an agent has up to three with the same labels).
    #[serde(skip_serializing_if = "is_empty_labels")]
    labels: Arc<BTreeMap<String, String>>,
}

fn is_empty_labels(l: &Arc<BTreeMap<String, String>>) -> bool {
    l.is_empty()
}

#[derive(Serialize, Clone, Debug, PartialEq)]
struct BasicAuth {
    username: String,
    password: String,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
struct TlsConfig {
    insecure_skip_verify: bool,
}

/// The three resolutions an agent is scraped at.
#[derive(Clone, Copy)]
struct Resolutions {
    hr: Duration,
    mr: Duration,
    lr: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Res {
    Hr,
    Mr,
    Lr,
}

impl Res {
    fn suffix(self) -> &'static str {
        match self {
            Res::Hr => "hr",
            Res::Mr => "mr",
            Res::Lr => "lr",
        }
    }
    fn of(self, r: Resolutions) -> Duration {
        match self {
            Res::Hr => r.hr,
            Res::Mr => r.mr,
            Res::Lr => r.lr,
        }
    }
}

/// The only settings a vmagent file reads (the agents' desired states depend on them alone).
fn global_resolutions(state: &State) -> Resolutions {
    let (hr, mr, lr) = state.settings.resolutions_secs();
    Resolutions {
        hr: Duration::from_secs(hr),
        mr: Duration::from_secs(mr),
        lr: Duration::from_secs(lr),
    }
}

/// The server's scrape configuration.
pub fn render_server(state: &State, cipher: &Cipher, opts: &RenderOptions) -> String {
    server_config(state, cipher, opts, None)
}

/// [`render_server`], reusing the agents' jobs from `cache` where none of their inputs changed.
pub fn render_server_cached(
    state: &State,
    cipher: &Cipher,
    opts: &RenderOptions,
    cache: &mut JobCache,
) -> String {
    server_config(state, cipher, opts, Some(cache))
}

fn server_config(
    state: &State,
    cipher: &Cipher,
    opts: &RenderOptions,
    cache: Option<&mut JobCache>,
) -> String {
    let res = global_resolutions(state);
    let global = Global {
        scrape_interval: Some(prom_duration(res.lr)),
        scrape_timeout: Some(prom_duration(timeout(res.lr))),
    };
    let internal = internal_jobs(state, opts, res);
    let agents = agent_jobs(
        state,
        cipher,
        res,
        state
            .agents
            .values()
            .filter(|a| !a.exporter.push_metrics)
            .map(|a| (a, None)),
        None,
        opts.redact_secrets,
        cache,
    );
    let mut out = String::from(HEADER);
    assemble(&mut out, &global, &internal, &agents);
    out
}

/// The vmagent configuration of one pmm-agent: its push exporters, scraped on 127.0.0.1; no
/// header, no internal jobs, an empty global section.
pub fn render_push(
    state: &State,
    cipher: &Cipher,
    pmm_agent: &AgentId,
    opts: &RenderOptions,
) -> String {
    push_config(state, cipher, pmm_agent, opts, None)
}

/// [`render_push`] with a [`JobCache`].
pub fn render_push_cached(
    state: &State,
    cipher: &Cipher,
    pmm_agent: &AgentId,
    opts: &RenderOptions,
    cache: &mut JobCache,
) -> String {
    push_config(state, cipher, pmm_agent, opts, Some(cache))
}

fn push_config(
    state: &State,
    cipher: &Cipher,
    pmm_agent: &AgentId,
    opts: &RenderOptions,
    cache: Option<&mut JobCache>,
) -> String {
    // Only this pmm-agent's children are looked at: rendering every pmm-agent's file stays
    // linear in the inventory.
    let children: Vec<Arc<Agent>> = state
        .children_of(pmm_agent)
        .iter()
        .filter_map(|id| state.agents.get(id).cloned())
        .collect();
    push_doc(
        state,
        cipher,
        children.iter().map(|a| (a, None)),
        opts.redact_secrets,
        cache,
    )
}

/// [`render_push`] of children whose [`Around`] the caller already looked up (a pmm-agent's
/// stream, which compared them with its last state's): nothing is looked up again. Children
/// that do not push are left out here.
pub fn render_push_around<'a>(
    state: &State,
    cipher: &Cipher,
    children: impl Iterator<Item = (&'a Arc<Agent>, Around<'a>)>,
    opts: &RenderOptions,
) -> String {
    push_doc(
        state,
        cipher,
        children.map(|(a, around)| (a, Some(around))),
        opts.redact_secrets,
        None,
    )
}

/// An agent's service, and its node (else its service's node).
pub fn service_and_node<'a>(
    state: &'a State,
    a: &Agent,
) -> (Option<&'a Arc<Service>>, Option<&'a Arc<Node>>) {
    let service = a.service_id.as_ref().and_then(|s| state.services.get(s));
    let node = a
        .node_id
        .as_ref()
        .or(service.map(|s| &s.node_id))
        .and_then(|n| state.nodes.get(n));
    (service, node)
}

/// The push document of the children that push their metrics.
fn push_doc<'a>(
    state: &State,
    cipher: &Cipher,
    children: impl Iterator<Item = (&'a Arc<Agent>, Option<Around<'a>>)>,
    redact: bool,
    cache: Option<&mut JobCache>,
) -> String {
    let agents = agent_jobs(
        state,
        cipher,
        global_resolutions(state),
        children.filter(|(a, _)| a.exporter.push_metrics),
        Some("127.0.0.1"),
        redact,
        cache,
    );
    let mut out = String::new();
    assemble(&mut out, &Global::default(), &[], &agents);
    out
}

/// What an agent's jobs read besides the agent: its service, its node (else its service's)
/// and its pmm-agent.
#[derive(Clone, Copy, Default)]
pub struct Around<'a> {
    pub service: Option<&'a Service>,
    pub node: Option<&'a Node>,
    pub parent: Option<&'a Agent>,
}

impl<'a> Around<'a> {
    fn of(state: &'a State, a: &Agent) -> Self {
        let (service, node) = service_and_node(state, a);
        let parent = a.pmm_agent_id.as_ref().and_then(|p| state.agents.get(p));
        Self {
            service: service.map(|s| &**s),
            node: node.map(|n| &**n),
            parent: parent.map(|p| &**p),
        }
    }
}

/// The document: the global section, then the internal jobs, the agents' chunks and the RDS
/// jobs.
fn assemble(out: &mut String, global: &Global, internal: &[Job], agents: &AgentJobs) {
    let size: usize = agents.chunks.iter().map(|c| c.len()).sum();
    out.reserve(size + 1024 * (internal.len() + agents.rds.len() + 1));
    write_global(out, global);
    if internal.is_empty() && agents.chunks.is_empty() && agents.rds.is_empty() {
        out.push_str("scrape_configs: []\n");
        return;
    }
    out.push_str("scrape_configs:\n");
    for j in internal {
        write_job(out, j);
    }
    for c in &agents.chunks {
        out.push_str(c);
    }
    for j in &agents.rds {
        write_job(out, j);
    }
}

/// What an agent's jobs are made of: the entities they read and the global values. Entities
/// are compared by identity: the state shares an unchanged entity between revisions, and the
/// entry holds them, so an address cannot be reused while it is cached.
#[derive(Clone)]
struct Inputs {
    agent: Arc<Agent>,
    service: Option<Arc<Service>>,
    node: Option<Arc<Node>>,
    parent: Option<Arc<Agent>>,
    host_node: Option<Arc<Node>>,
    resolutions: (Duration, Duration, Duration),
    host_override: Option<String>,
    redact: bool,
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Inputs {
    fn of(
        state: &State,
        a: &Arc<Agent>,
        global: Resolutions,
        host_override: Option<&str>,
        redact: bool,
    ) -> Self {
        let (service, node) = service_and_node(state, a);
        let (service, node) = (service.cloned(), node.cloned());
        let parent = a
            .pmm_agent_id
            .as_ref()
            .and_then(|p| state.agents.get(p))
            .cloned();
        let host_node = match &parent {
            Some(p) => p.runs_on_node_id.as_ref(),
            None => a.runs_on_node_id.as_ref(),
        }
        .and_then(|n| state.nodes.get(n))
        .cloned();
        Self {
            agent: a.clone(),
            service,
            node,
            parent,
            host_node,
            resolutions: (global.hr, global.mr, global.lr),
            host_override: host_override.map(str::to_owned),
            redact,
        }
    }

    fn around(&self) -> Around<'_> {
        Around {
            service: self.service.as_deref(),
            node: self.node.as_deref(),
            parent: self.parent.as_deref(),
        }
    }

    fn same_as(&self, o: &Inputs) -> bool {
        Arc::ptr_eq(&self.agent, &o.agent)
            && same(&self.service, &o.service)
            && same(&self.node, &o.node)
            && same(&self.parent, &o.parent)
            && same(&self.host_node, &o.host_node)
            && self.resolutions == o.resolutions
            && self.host_override == o.host_override
            && self.redact == o.redact
    }
}

/// Each agent's rendered jobs, kept while none of their inputs changed: after a command only
/// the agents it touched are rendered again. A cached chunk is the same text a fresh render
/// makes (tests/files.rs compares them over random changes).
#[derive(Default)]
pub struct JobCache {
    entries: std::collections::HashMap<AgentId, (Inputs, Arc<str>, u64)>,
    generation: u64,
}

impl JobCache {
    /// Starts a render of every file: entries not used by it are dropped by [`JobCache::finish`].
    pub fn begin(&mut self) {
        self.generation += 1;
    }

    /// Drops the entries the render since [`JobCache::begin`] did not use.
    pub fn finish(&mut self) {
        let g = self.generation;
        self.entries.retain(|_, e| e.2 == g);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The agents' part of a document.
struct AgentJobs {
    /// Per agent, in (type, id) order: its jobs as YAML items.
    chunks: Vec<Arc<str>>,
    /// The grouped RDS jobs, after all others.
    rds: Vec<Job>,
}

/// The pmm-agents with at least one push exporter that has a port: each gets a vmagent file.
pub fn push_agents(state: &State) -> Vec<AgentId> {
    let mut ids: Vec<AgentId> = state
        .agents
        .values()
        .filter(|a| a.exporter.push_metrics && !a.disabled && a.listen_port.is_some())
        .filter_map(|a| a.pmm_agent_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The document as block-style YAML.
///
/// Written directly rather than through a YAML library: the shape is fixed (maps of strings,
/// booleans and string lists), and serde_yaml_ng took about 20 times as long as the rest of the
/// render (0.86 s for 10,000 agents). Strings are plain when they cannot be read as anything
/// else and JSON-quoted otherwise (a JSON string is a valid YAML double-quoted scalar). The
/// tests parse every output back with serde_yaml_ng and compare it with the document.
#[cfg(test)]
fn to_yaml(doc: &Document) -> String {
    let mut out = String::with_capacity(256 + doc.scrape_configs.len() * 900);
    write_global(&mut out, &doc.global);
    if doc.scrape_configs.is_empty() {
        out.push_str("scrape_configs: []\n");
        return out;
    }
    out.push_str("scrape_configs:\n");
    for j in &doc.scrape_configs {
        write_job(&mut out, j);
    }
    out
}

fn write_global(out: &mut String, global: &Global) {
    out.push_str("global:");
    match (&global.scrape_interval, &global.scrape_timeout) {
        (None, None) => out.push_str(" {}\n"),
        (interval, timeout) => {
            out.push('\n');
            for (k, v) in [("scrape_interval", interval), ("scrape_timeout", timeout)] {
                if let Some(v) = v {
                    field(out, 2, k, v);
                }
            }
        }
    }
}

/// One job, as an item of `scrape_configs`.
fn write_job(out: &mut String, j: &Job) {
    out.push_str("- job_name: ");
    scalar(out, &j.job_name);
    out.push('\n');
    if j.honor_labels {
        out.push_str("  honor_labels: true\n");
    }
    out.push_str(if j.honor_timestamps {
        "  honor_timestamps: true\n"
    } else {
        "  honor_timestamps: false\n"
    });
    if !j.params.is_empty() {
        out.push_str("  params:\n");
        for (k, values) in &j.params {
            indent(out, 4);
            scalar(out, k);
            out.push_str(":\n");
            list(out, 4, values);
        }
    }
    field(out, 2, "scrape_interval", &j.scrape_interval);
    field(out, 2, "scrape_timeout", &j.scrape_timeout);
    if let Some(p) = &j.metrics_path {
        field(out, 2, "metrics_path", p);
    }
    if let Some(s) = &j.scheme {
        field(out, 2, "scheme", s);
    }
    out.push_str("  static_configs:\n");
    for sc in &j.static_configs {
        out.push_str("  - targets:\n");
        list(out, 4, &sc.targets);
        if !sc.labels.is_empty() {
            out.push_str("    labels:\n");
            for (k, v) in sc.labels.iter() {
                field(out, 6, k, v);
            }
        }
    }
    if let Some(a) = &j.basic_auth {
        out.push_str("  basic_auth:\n");
        field(out, 4, "username", &a.username);
        field(out, 4, "password", &a.password);
    }
    if let Some(t) = &j.tls_config {
        out.push_str("  tls_config:\n");
        out.push_str(if t.insecure_skip_verify {
            "    insecure_skip_verify: true\n"
        } else {
            "    insecure_skip_verify: false\n"
        });
    }
    out.push_str(if j.follow_redirects {
        "  follow_redirects: true\n"
    } else {
        "  follow_redirects: false\n"
    });
    if j.stream_parse {
        out.push_str("  stream_parse: true\n");
    }
}

/// A job with one target and no auth or params: the internal jobs and the RDS ones.
fn plain_job(
    job_name: String,
    interval: Duration,
    target: &str,
    path: &str,
    labels: Arc<BTreeMap<String, String>>,
) -> Job {
    Job {
        job_name,
        honor_labels: false,
        honor_timestamps: false,
        params: BTreeMap::new(),
        scrape_interval: prom_duration(interval),
        scrape_timeout: prom_duration(timeout(interval)),
        metrics_path: Some(path.to_owned()),
        scheme: None,
        static_configs: vec![StaticConfig {
            targets: vec![target.to_owned()],
            labels,
        }],
        basic_auth: None,
        tls_config: None,
        follow_redirects: false,
        stream_parse: false,
    }
}

fn internal_jobs(state: &State, opts: &RenderOptions, res: Resolutions) -> Vec<Job> {
    let pmm = Arc::new(BTreeMap::from([(
        "instance".to_owned(),
        "pmm-server".to_owned(),
    )]));
    let job = |name: &str, interval: Duration, target: &str, path: &str| {
        plain_job(name.to_owned(), interval, target, path, pmm.clone())
    };
    let mut jobs = vec![
        job(
            "victoriametrics",
            res.hr,
            &opts.vm_host(),
            "/prometheus/metrics",
        ),
        job("vmalert", res.hr, "127.0.0.1:8880", "/metrics"),
        job("grafana", res.mr, "127.0.0.1:3000", "/graph/metrics"),
        job("pmm-managed", res.mr, "127.0.0.1:7773", "/debug/metrics"),
        job("qan-api2", res.mr, "127.0.0.1:9933", "/debug/metrics"),
        job("clickhouse", res.mr, "127.0.0.1:9363", "/metrics"),
    ];
    if state.settings.effective().nomad_enabled {
        let mut nomad = job("nomad", res.mr, "127.0.0.1:4646", "/v1/metrics");
        nomad.params = BTreeMap::from([("format".to_owned(), vec![Cow::Borrowed("prometheus")])]);
        nomad.scheme = Some("https".to_owned());
        nomad.tls_config = Some(TlsConfig {
            insecure_skip_verify: true,
        });
        jobs.push(nomad);
    }
    jobs
}

/// A parsed `major.minor.patch` version, for PMM's feature gates.
pub(crate) fn version(v: Option<&str>) -> Option<(u32, u32, u32)> {
    let v = v?.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The jobs of the `candidates` that are enabled and have a port, in (type, id) order, RDS
/// exporters last. A candidate's [`Around`] is looked up here unless it comes with it.
fn agent_jobs<'a>(
    state: &State,
    cipher: &Cipher,
    global: Resolutions,
    candidates: impl Iterator<Item = (&'a Arc<Agent>, Option<Around<'a>>)>,
    host_override: Option<&str>,
    redact: bool,
    mut cache: Option<&mut JobCache>,
) -> AgentJobs {
    let mut agents: Vec<(&Arc<Agent>, Option<Around<'a>>)> = candidates
        .filter(|(a, _)| !a.disabled && a.listen_port.is_some())
        .collect();
    agents.sort_by(|(a, _), (b, _)| {
        (a.agent_type.as_str(), &a.agent_id).cmp(&(b.agent_type.as_str(), &b.agent_id))
    });
    let mut chunks = Vec::new();
    let mut rds_targets = std::collections::BTreeSet::new();
    for (a, around) in agents {
        let Some(port) = a.listen_port else { continue };
        if a.agent_type == AgentType::RdsExporter {
            match host_override
                .map(str::to_owned)
                .or_else(|| scrape_host(state, a))
            {
                Some(host) => {
                    rds_targets.insert(join_host_port(&host, port));
                }
                None => {
                    tracing::warn!(agent_id = %a.agent_id, "no address to scrape this agent at; left out")
                }
            }
            continue;
        }
        // Without a cache (a stream's one-off render) nothing is looked up for it.
        let Some(cache) = cache.as_deref_mut() else {
            let around = around.unwrap_or_else(|| Around::of(state, a));
            let text = render_agent(state, cipher, a, around, global, host_override, redact);
            if !text.is_empty() {
                chunks.push(text.into());
            }
            continue;
        };
        let generation = cache.generation;
        let inputs = Inputs::of(state, a, global, host_override, redact);
        if let Some(entry) = cache.entries.get_mut(&a.agent_id)
            && entry.0.same_as(&inputs)
        {
            entry.2 = generation;
            if !entry.1.is_empty() {
                chunks.push(entry.1.clone());
            }
            continue;
        }
        let text: Arc<str> = render_agent(
            state,
            cipher,
            a,
            inputs.around(),
            global,
            host_override,
            redact,
        )
        .into();
        if !text.is_empty() {
            chunks.push(text.clone());
        }
        cache
            .entries
            .insert(a.agent_id.clone(), (inputs, text, generation));
    }
    // One rds_exporter serves many RDS nodes: jobs per distinct target, after all others.
    let mut rds = Vec::new();
    for target in rds_targets {
        let mapped = target.replace(['.', ':', '/'], "_");
        for (res, path, interval) in [("mr", "/enhanced", global.mr), ("lr", "/basic", global.lr)] {
            let mut job = plain_job(
                format!("rds_exporter_{mapped}_{res}-{}", go_duration(interval)),
                interval,
                &target,
                path,
                Arc::default(),
            );
            job.honor_labels = true;
            rds.push(job);
        }
    }
    AgentJobs { chunks, rds }
}

/// One agent's jobs as YAML items ("" when it has none).
fn render_agent(
    state: &State,
    cipher: &Cipher,
    a: &Agent,
    around: Around<'_>,
    global: Resolutions,
    host_override: Option<&str>,
    redact: bool,
) -> String {
    let Some(port) = a.listen_port else {
        return String::new();
    };
    let Some(host) = host_override
        .map(str::to_owned)
        .or_else(|| scrape_host(state, a))
    else {
        tracing::warn!(agent_id = %a.agent_id, "no address to scrape this agent at; left out");
        return String::new();
    };
    let target = join_host_port(&host, port);
    let res = agent_resolutions(a, global);
    let Some(base) = base_job(cipher, a, around, &target, redact) else {
        return String::new();
    };
    let mut out = String::new();
    for mut j in jobs_for(cipher, a, around, base, res) {
        if redact && let Some(auth) = &mut j.basic_auth {
            auth.password = REDACTED.to_owned();
        }
        write_job(&mut out, &j);
    }
    out
}

/// Where an agent is scraped: its pmm-agent's node, or (an external exporter without one)
/// the node it runs on.
fn scrape_host(state: &State, a: &Agent) -> Option<String> {
    let node = match &a.pmm_agent_id {
        Some(pa) => state
            .agents
            .get(pa)
            .and_then(|p| p.runs_on_node_id.as_ref())
            .and_then(|n| state.nodes.get(n)),
        None => a.runs_on_node_id.as_ref().and_then(|n| state.nodes.get(n)),
    }?;
    (!node.address.is_empty()).then(|| node.address.clone())
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn agent_resolutions(a: &Agent, global: Resolutions) -> Resolutions {
    let o = a.exporter.metrics_resolutions.unwrap_or_default();
    let pick = |v: Option<u64>, g: Duration| v.filter(|s| *s > 0).map_or(g, Duration::from_secs);
    Resolutions {
        hr: pick(o.hr_secs, global.hr),
        mr: pick(o.mr_secs, global.mr),
        lr: pick(o.lr_secs, global.lr),
    }
}

/// Standard labels, then custom ones on top, then empty values dropped.
fn layer(
    out: &mut BTreeMap<String, String>,
    standard: &[(&str, &str)],
    custom: &BTreeMap<String, String>,
) {
    let mut set: BTreeMap<String, String> = standard
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    set.extend(custom.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.extend(set.into_iter().filter(|(_, v)| !v.is_empty()));
}

fn node_labels(out: &mut BTreeMap<String, String>, n: &Node) {
    layer(
        out,
        &[
            ("node_id", n.node_id.as_str()),
            ("node_name", &n.node_name),
            ("node_type", n.node_type.as_str()),
            ("machine_id", n.machine_id.as_deref().unwrap_or("")),
            ("container_id", n.container_id.as_deref().unwrap_or("")),
            ("container_name", n.container_name.as_deref().unwrap_or("")),
            ("node_model", &n.node_model),
            ("region", n.region.as_deref().unwrap_or("")),
            ("az", &n.az),
        ],
        &n.custom_labels,
    );
}

fn service_labels(out: &mut BTreeMap<String, String>, s: &Service) {
    layer(
        out,
        &[
            ("service_id", s.service_id.as_str()),
            ("service_name", &s.service_name),
            ("service_type", s.service_type.as_str()),
            ("environment", &s.environment),
            ("cluster", &s.cluster),
            ("replication_set", &s.replication_set),
            ("external_group", &s.external_group),
        ],
        &s.custom_labels,
    );
}

/// The job every exporter's jobs start from: target, labels, auth.
/// What the query API shows instead of a password.
pub const REDACTED: &str = "[redacted]";

fn base_job(
    cipher: &Cipher,
    a: &Agent,
    Around { service, node, .. }: Around<'_>,
    target: &str,
    redact: bool,
) -> Option<Job> {
    let mut labels = BTreeMap::new();
    if let Some(n) = node {
        node_labels(&mut labels, n);
    }
    if let Some(s) = service {
        service_labels(&mut labels, s);
    }
    layer(
        &mut labels,
        &[
            ("agent_id", a.agent_id.as_str()),
            ("agent_type", a.agent_type.as_str()),
        ],
        &a.custom_labels,
    );
    labels.insert("instance".to_owned(), a.agent_id.to_string());
    let password = match &a.agent_password {
        Some(_) if redact => REDACTED.to_owned(),
        Some(sealed) => match cipher.open(sealed) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => a.agent_id.to_string(),
            Err(_) => {
                tracing::warn!(agent_id = %a.agent_id, "the agent password does not open with this cluster key; agent left out");
                return None;
            }
        },
        None => a.agent_id.to_string(),
    };
    Some(Job {
        job_name: String::new(),
        honor_labels: false,
        honor_timestamps: false,
        params: BTreeMap::new(),
        scrape_interval: String::new(),
        scrape_timeout: String::new(),
        metrics_path: Some("/metrics".to_owned()),
        scheme: None,
        static_configs: vec![StaticConfig {
            targets: vec![target.to_owned()],
            labels: Arc::new(labels),
        }],
        basic_auth: Some(BasicAuth {
            username: "pmm".to_owned(),
            password,
        }),
        tls_config: None,
        follow_redirects: false,
        stream_parse: false,
    })
}

fn job_name(a: &Agent, res: Res) -> String {
    format!(
        "{}_{}_{}",
        a.agent_type.as_str(),
        a.agent_id.as_str().replace(['/', ':', '.'], "_"),
        res.suffix()
    )
}

/// `base` at one resolution with a collector list (no `params` when the filtered list is empty).
fn at(a: &Agent, base: &Job, res: Res, r: Resolutions, collectors: &[&'static str]) -> Job {
    let mut j = base.clone();
    j.job_name = job_name(a, res);
    let interval = res.of(r);
    j.scrape_interval = prom_duration(interval);
    j.scrape_timeout = prom_duration(timeout(interval));
    let mut list: Vec<Cow<'static, str>> = collectors
        .iter()
        .filter(|c| !a.exporter.disabled_collectors.iter().any(|d| d == *c))
        .map(|c| Cow::Borrowed(*c))
        .collect();
    list.sort();
    list.dedup();
    if !list.is_empty() {
        j.params.insert("collect[]".to_owned(), list);
    }
    j
}

/// PMM: table stats are collected when the limit is 0, or positive and not exceeded.
pub(crate) fn tablestats_enabled(a: &Agent) -> bool {
    let limit = a.mysql.tablestats_group_table_limit;
    match limit {
        0 => true,
        l if l < 0 => false,
        l => a.mysql.table_count.is_none_or(|c| c <= l),
    }
}

fn jobs_for(cipher: &Cipher, a: &Agent, around: Around<'_>, base: Job, r: Resolutions) -> Vec<Job> {
    use AgentType::*;
    match a.agent_type {
        NodeExporter => {
            const CORE: [&str; 7] = [
                "cpu",
                "diskstats",
                "filesystem",
                "loadavg",
                "meminfo",
                "netdev",
                "time",
            ];
            // Its own node (not a service's).
            let darwin = a.node_id.is_some() && around.node.is_some_and(|n| n.distro == "darwin");
            if darwin {
                return vec![at(a, &base, Res::Hr, r, &CORE)];
            }
            let mut hr = vec![
                "buddyinfo",
                "filefd",
                "meminfo_numa",
                "netstat",
                "processes",
                "standard.go",
                "standard.process",
                "stat",
                "textfile.hr",
                "vmstat",
            ];
            hr.extend(CORE);
            vec![
                at(a, &base, Res::Hr, r, &hr),
                at(a, &base, Res::Mr, r, &["hwmon", "textfile.mr"]),
                at(
                    a,
                    &base,
                    Res::Lr,
                    r,
                    &["bonding", "entropy", "os", "textfile.lr", "uname"],
                ),
            ]
        }
        MysqldExporter => {
            let mut mr = vec![
                "engine_innodb_status",
                "info_schema.innodb_cmp",
                "info_schema.innodb_cmpmem",
                "info_schema.processlist",
                "info_schema.query_response_time",
                "perf_schema.eventswaits",
                "perf_schema.file_events",
                "slave_status",
                "custom_query.mr",
            ];
            let mut lr = vec![
                "binlog_size",
                "engine_tokudb_status",
                "global_variables",
                "heartbeat",
                "info_schema.clientstats",
                "info_schema.userstats",
                "perf_schema.eventsstatements",
                "perf_schema.file_instances",
                "custom_query.lr",
                "plugins",
            ];
            if tablestats_enabled(a) {
                mr.push("perf_schema.tablelocks");
                lr.extend([
                    "auto_increment.columns",
                    "info_schema.tables",
                    "info_schema.tablestats",
                    "info_schema.innodb_tablespaces",
                    "perf_schema.indexiowaits",
                    "perf_schema.tableiowaits",
                ]);
            }
            vec![
                at(
                    a,
                    &base,
                    Res::Hr,
                    r,
                    &[
                        "global_status",
                        "info_schema.innodb_metrics",
                        "custom_query.hr",
                        "standard.go",
                        "standard.process",
                    ],
                ),
                at(a, &base, Res::Mr, r, &mr),
                at(a, &base, Res::Lr, r, &lr),
            ]
        }
        MongodbExporter => {
            let v = around.parent.and_then(|p| version(p.version.as_deref()));
            match v {
                Some(v) if v >= (2, 26, 0) => {
                    let mut lr: Vec<&str> = Vec::new();
                    if v >= (2, 43, 0) {
                        lr.push("fcv");
                    }
                    if v >= (2, 43, 2) {
                        lr.push("pbm");
                    }
                    if a.mongo.enable_all_collectors {
                        lr.extend(["dbstats", "indexstats", "collstats"]);
                        if v >= (2, 41, 1) {
                            lr.push("shards");
                        }
                        if v >= (2, 42, 0) {
                            lr.push("currentopmetrics");
                        }
                    }
                    vec![
                        at(
                            a,
                            &base,
                            Res::Hr,
                            r,
                            &["diagnosticdata", "replicasetstatus", "topmetrics"],
                        ),
                        at(a, &base, Res::Lr, r, &lr),
                    ]
                }
                // Unknown or older pmm-agent: one job, the exporter's defaults.
                _ => vec![at(a, &base, Res::Hr, r, &[])],
            }
        }
        PostgresExporter => {
            let mut jobs = vec![
                at(
                    a,
                    &base,
                    Res::Hr,
                    r,
                    &[
                        "exporter",
                        "custom_query.hr",
                        "standard.go",
                        "standard.process",
                        "postgres",
                    ],
                ),
                at(a, &base, Res::Mr, r, &["custom_query.mr"]),
                at(a, &base, Res::Lr, r, &["custom_query.lr"]),
            ];
            for j in &mut jobs {
                j.stream_parse = true;
            }
            jobs
        }
        // One job at HR with the exporter's defaults (valkey: our choice, PMM's shape is unsure).
        ProxysqlExporter | ValkeyExporter => vec![at(a, &base, Res::Hr, r, &[])],
        ExternalExporter => {
            let mut j = at(a, &base, Res::Mr, r, &[]);
            // As given, query string included (VictoriaMetrics takes one in metrics_path).
            j.metrics_path = Some(
                a.exporter
                    .metrics_path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/metrics".to_owned()),
            );
            j.scheme = Some(
                a.exporter
                    .metrics_scheme
                    .clone()
                    .unwrap_or_else(|| "http".to_owned()),
            );
            j.basic_auth = match a.username.as_ref().filter(|u| !u.is_empty()) {
                None => None,
                Some(u) => Some(BasicAuth {
                    username: u.clone(),
                    password: match &a.password {
                        None => String::new(),
                        Some(p) => match cipher.open(p) {
                            Ok(p) => p,
                            Err(_) => {
                                tracing::warn!(agent_id = %a.agent_id, "the password does not open with this cluster key; agent left out");
                                return Vec::new();
                            }
                        },
                    },
                }),
            };
            if a.tls_skip_verify {
                j.tls_config = Some(TlsConfig {
                    insecure_skip_verify: true,
                });
            }
            vec![j]
        }
        AzureDatabaseExporter => {
            let mut j = at(a, &base, Res::Mr, r, &[]);
            j.basic_auth = None;
            vec![j]
        }
        VmAgent => {
            let mut j = at(a, &base, Res::Mr, r, &[]);
            j.metrics_path = None;
            j.basic_auth = None;
            vec![j]
        }
        // No metrics endpoint (QAN, RTA), the parent itself, or not scraped (nomad: unsure in PMM).
        PmmAgent
        | QanMysqlPerfschemaAgent
        | QanMysqlSlowlogAgent
        | QanMongodbProfilerAgent
        | QanMongodbMongologAgent
        | QanPostgresqlPgstatementsAgent
        | QanPostgresqlPgstatmonitorAgent
        | RtaMongodbAgent
        | NomadAgent
        | RdsExporter => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_for_the_feature_gates() {
        assert_eq!(version(Some("2.43.2")), Some((2, 43, 2)));
        assert_eq!(version(Some("v3.1.0-rc1")), Some((3, 1, 0)));
        assert_eq!(version(Some("2")), Some((2, 0, 0)));
        assert_eq!(version(Some("x")), None);
        assert_eq!(version(None), None);
    }

    #[test]
    fn the_document_reads_back_as_itself() {
        let job = Job {
            job_name: "j".to_owned(),
            honor_labels: true,
            honor_timestamps: false,
            params: BTreeMap::from([(
                "collect[]".to_owned(),
                vec![Cow::Borrowed("a.b"), Cow::Borrowed("yes")],
            )]),
            scrape_interval: "5s".to_owned(),
            scrape_timeout: "4500ms".to_owned(),
            metrics_path: Some("/metrics".to_owned()),
            scheme: Some("https".to_owned()),
            static_configs: vec![StaticConfig {
                targets: vec!["[::1]:42000".to_owned()],
                labels: Arc::new(BTreeMap::from([
                    ("weird".to_owned(), "a: b # c \"d\" \\ \n é".to_owned()),
                    ("env".to_owned(), "%{HOME} %(x)s 100%".to_owned()),
                    (
                        "controls".to_owned(),
                        "\u{7f}\u{85}\u{9f}\u{2028}x\u{2029}\u{fffe}\u{ffff}\u{1}\r\t".to_owned(),
                    ),
                    ("breaks".to_owned(), "a\u{85}---\u{2028}...".to_owned()),
                    ("empty".to_owned(), String::new()),
                    ("num".to_owned(), "0123".to_owned()),
                ])),
            }],
            basic_auth: Some(BasicAuth {
                username: "pmm".to_owned(),
                password: "p@ss: 'x'".to_owned(),
            }),
            tls_config: Some(TlsConfig {
                insecure_skip_verify: true,
            }),
            follow_redirects: false,
            stream_parse: true,
        };
        for doc in [
            Document {
                global: Global {
                    scrape_interval: Some("1m".into()),
                    scrape_timeout: Some("54s".into()),
                },
                scrape_configs: vec![job.clone(), job],
            },
            Document {
                global: Global::default(),
                scrape_configs: Vec::new(),
            },
        ] {
            let text = to_yaml(&doc);
            assert!(
                !text.contains('%'),
                "no raw % for the environment expansion: {text}"
            );
            let ours: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("parses");
            let want: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&doc).expect("lib"))
                    .expect("lib parses");
            assert_eq!(ours, want, "{text}");
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("10.0.0.1", 42000), "10.0.0.1:42000");
        assert_eq!(join_host_port("::1", 42000), "[::1]:42000");
    }
}
