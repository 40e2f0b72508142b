//! supervisord program files for the server's components
//! (`../shared/reference/pmm-outputs.md` §5): command lines from the settings (retention, the
//! scrape configuration's path, VictoriaMetrics' cache flag) and the render options.

use super::RenderOptions;
use crate::domain::State;

/// The first line of every program file.
pub const HEADER: &str = "; Managed by pmm-cp. DO NOT EDIT.\n";

/// One `[program:x]` section.
struct Program<'a> {
    name: &'a str,
    priority: u32,
    command: Vec<String>,
    environment: Vec<(String, String)>,
    directory: Option<&'a str>,
    autostart: bool,
    autorestart: bool,
    startretries: u32,
    stopsignal: &'a str,
    stopwaitsecs: u32,
    log_maxbytes: &'a str,
    log_backups: u32,
}

impl Program<'_> {
    fn render(&self, opts: &RenderOptions) -> String {
        let mut out = format!(
            "{HEADER}\n[program:{}]\npriority = {}\ncommand =\n",
            self.name, self.priority
        );
        let (first, rest) = self
            .command
            .split_first()
            .map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
        out.push_str(&format!("\t{first}\n"));
        for arg in rest {
            out.push_str(&format!("\t\t{arg}\n"));
        }
        if let Some(dir) = self.directory {
            out.push_str(&format!("directory = {dir}\n"));
        }
        if !self.environment.is_empty() {
            let env: Vec<String> = self
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={}", quote(v)))
                .collect();
            out.push_str(&format!("environment =\n\t{}\n", env.join(",\n\t")));
        }
        out.push_str(&format!(
            "user = {user}\nautorestart = {autorestart}\nautostart = {autostart}\nstartretries = {retries}\n\
             startsecs = 1\nstopsignal = {signal}\nstopwaitsecs = {wait}\n\
             stdout_logfile = {logs}/{name}.log\nstdout_logfile_maxbytes = {maxbytes}\n\
             stdout_logfile_backups = {backups}\nredirect_stderr = true\n",
            user = opts.supervisord_user,
            autostart = self.autostart,
            autorestart = self.autorestart,
            retries = self.startretries,
            signal = self.stopsignal,
            wait = self.stopwaitsecs,
            logs = opts.log_dir,
            name = self.name,
            maxbytes = self.log_maxbytes,
            backups = self.log_backups,
        ));
        out
    }
}

/// supervisord's value quoting for `environment`: quoted, with `"` and `\` escaped, and `%`
/// doubled (supervisord expands `%(name)s`).
fn quote(v: &str) -> String {
    format!(
        "\"{}\"",
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}

/// Every program file: (file name, bytes), in a fixed order.
pub fn render(state: &State, opts: &RenderOptions) -> Vec<(String, String)> {
    let e = state.settings.effective();
    let days = e.data_retention_secs / 86_400;
    let bind = &opts.bind;
    let vm_url = &opts.vm_url;
    let standard = |name, priority, command: Vec<String>| Program {
        name,
        priority,
        command,
        environment: Vec::new(),
        directory: None,
        autostart: true,
        autorestart: true,
        startretries: 10,
        stopsignal: "INT",
        stopwaitsecs: 300,
        log_maxbytes: "10MB",
        log_backups: 3,
    };
    let mut programs = vec![
        standard(
            "victoriametrics",
            7,
            vec![
                "/usr/sbin/victoriametrics".to_owned(),
                format!("--promscrape.config={}", opts.scrape_config_path),
                format!("--retentionPeriod={days}d"),
                "--storageDataPath=/srv/victoriametrics/data".to_owned(),
                format!("--httpListenAddr={bind}:9090"),
                format!("--search.disableCache={}", !e.vm_cache_enabled),
                "--search.maxQueryLen=1MB".to_owned(),
                "--search.latencyOffset=5s".to_owned(),
                "--search.maxUniqueTimeseries=100000000".to_owned(),
                "--search.maxSamplesPerQuery=1500000000".to_owned(),
                "--search.maxQueueDuration=30s".to_owned(),
                "--search.logSlowQueryDuration=30s".to_owned(),
                "--search.maxQueryDuration=90s".to_owned(),
                "--promscrape.streamParse=true".to_owned(),
                "--http.pathPrefix=/prometheus".to_owned(),
                "--envflag.enable".to_owned(),
                "--envflag.prefix=VM_".to_owned(),
            ],
        ),
        standard(
            "vmalert",
            7,
            vec![
                "/usr/sbin/vmalert".to_owned(),
                format!("--external.url={vm_url}"),
                format!("--datasource.url={vm_url}"),
                format!("--remoteRead.url={vm_url}"),
                "--remoteRead.ignoreRestoreErrors=false".to_owned(),
                format!("--remoteWrite.url={vm_url}"),
                format!("--rule={}/*.yml", opts.rules_dir),
                format!("--rule={}/*.yml", opts.alert_rules_dir),
                format!("--httpListenAddr={bind}:8880"),
            ],
        ),
        standard(
            "vmproxy",
            9,
            vec![
                "/usr/sbin/vmproxy".to_owned(),
                format!("--target-url={vm_url}"),
                "--listen-port=8430".to_owned(),
                format!("--listen-address={bind}"),
                "--header-name=X-Proxy-Filter".to_owned(),
            ],
        ),
        Program {
            environment: vec![
                (
                    "PMM_CLICKHOUSE_ADDR".to_owned(),
                    "127.0.0.1:9000".to_owned(),
                ),
                ("PMM_CLICKHOUSE_DATABASE".to_owned(), "pmm".to_owned()),
                ("PMM_CLICKHOUSE_USER".to_owned(), "default".to_owned()),
                // PMM's built-in ClickHouse default, not a stored secret.
                (
                    "PMM_CLICKHOUSE_PASSWORD".to_owned(),
                    "clickhouse".to_owned(),
                ),
            ],
            startretries: 1000,
            stopsignal: "TERM",
            stopwaitsecs: 10,
            ..standard(
                "qan-api2",
                13,
                vec![
                    "/usr/sbin/percona-qan-api2".to_owned(),
                    format!("--data-retention={days}"),
                ],
            )
        },
    ];
    let mut grafana = vec![
        "/usr/sbin/grafana".to_owned(),
        "server".to_owned(),
        "--homepath=/usr/share/grafana".to_owned(),
        "--config=/etc/grafana/grafana.ini".to_owned(),
    ];
    if let Some(host) = public_host(&e.pmm_public_address) {
        grafana.push(format!(
            "cfg:default.server.domain=\"{}\"",
            domain_of(&host)
        ));
    }
    programs.push(Program {
        directory: Some("/usr/share/grafana"),
        stopsignal: "TERM",
        log_maxbytes: "50MB",
        log_backups: 2,
        ..standard("grafana", 3, grafana)
    });
    if let Some(host) = public_host(&e.pmm_public_address) {
        programs.push(Program {
            autostart: e.nomad_enabled,
            autorestart: e.nomad_enabled,
            ..standard(
                "nomad-server",
                5,
                vec![
                    "/usr/local/percona/pmm/tools/nomad".to_owned(),
                    "agent".to_owned(),
                    "-config".to_owned(),
                    format!("/srv/nomad/nomad-server-{host}.hcl"),
                ],
            )
        });
    }
    programs
        .into_iter()
        .map(|p| (format!("{}.ini", p.name), p.render(opts)))
        .collect()
}

/// The host (with its port, as PMM's `URL.Host`) of `pmm_public_address` (`https://`
/// assumed when it has no scheme).
fn public_host(address: &str) -> Option<String> {
    let a = address.trim();
    if a.is_empty() {
        return None;
    }
    let rest = a.split_once("://").map_or(a, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    // Only characters a host, address and port may hold: the value lands in a command line
    // and a file name.
    let clean = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    (clean && !host.is_empty()).then(|| host.to_owned())
}

/// A host without its port (Grafana's domain).
fn domain_of(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_host_is_taken_from_the_address_and_must_be_a_host() {
        assert_eq!(
            public_host("pmm.example.com"),
            Some("pmm.example.com".into())
        );
        assert_eq!(
            public_host("https://pmm.example.com:8443/x"),
            Some("pmm.example.com:8443".into())
        );
        assert_eq!(public_host("[::1]:443"), Some("[::1]:443".into()));
        assert_eq!(public_host("user@host"), None);
        assert_eq!(domain_of("pmm.example.com:8443"), "pmm.example.com");
        assert_eq!(domain_of("[::1]:443"), "[::1]");
        assert_eq!(domain_of("pmm"), "pmm");
        assert_eq!(public_host(""), None);
        assert_eq!(public_host("evil\nhost"), None);
        assert_eq!(public_host("a b"), None);
    }
}
