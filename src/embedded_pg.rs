//! Embedded PostgreSQL: a private cluster for the server's default mode (`serve`
//! without a database URL), run from the machine's installed PostgreSQL binaries.
//!
//! What it owns, all below the server's data directory:
//! - `<data_dir>/postgres/` — the cluster (created by `initdb` on first start),
//!   plus `pmm_embedded.conf` in it, which we rewrite on every start and include
//!   from `postgresql.conf`;
//! - `<data_dir>/postgres-run/` — the directory holding the cluster's unix socket
//!   (mode 0700, owned by the OS user the cluster runs as);
//! - `<data_dir>/postgres.log` — the server's stdout/stderr (`pg_ctl -l`).
//!
//! The invariant it protects: the cluster is reachable only by the OS user that runs
//! it (and root). In the normal case it listens on no TCP address at all, only on a
//! unix socket inside the 0700 run directory, so `trust` authentication for local
//! connections grants nothing beyond what file permissions already grant. Only when
//! the socket path would exceed the kernel's `sun_path` limit (~107 bytes) does it
//! fall back to listening on 127.0.0.1 (never another address) with a port picked
//! at start; then `pg_hba.conf` gets one managed `host all pmm 127.0.0.1/32 trust`
//! line, because the `pmm` role has no password. In that mode any local user on the
//! machine could connect as `pmm`; that is the price of a data directory whose path
//! is too long for a socket, and it is still never reachable from the network.
//!
//! PostgreSQL refuses to run as root: when our effective uid is 0, every PostgreSQL
//! program runs as the `postgres` system user (primary group only), the cluster and
//! run directories belong to that user, and every directory from `/` down to the
//! data directory must be traversable by it (we check and refuse, never chmod).
//!
//! A value of [`EmbeddedPostgres`] represents a running postmaster: [`EmbeddedPostgres::stop`]
//! stops it, and dropping the value without calling `stop` stops it synchronously,
//! so an early return or a panic does not leave a postmaster behind.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::{Gid, Pid, Uid, User};
use sqlx::Connection as _;

/// Database the server uses.
const DB_NAME: &str = "pmm";
/// Superuser role created by initdb (`-U`).
const SUPERUSER: &str = "pmm";
/// OS user PostgreSQL runs as when we are root.
const SYSTEM_USER: &str = "postgres";
const CLUSTER_SUBDIR: &str = "postgres";
const RUN_SUBDIR: &str = "postgres-run";
const LOG_FILE: &str = "postgres.log";
/// Managed settings file inside the cluster directory, rewritten on every start.
const MANAGED_CONF: &str = "pmm_embedded.conf";
/// Suffix of the one `pg_hba.conf` line we manage (TCP fallback only).
const HBA_MARKER: &str = "# managed by pmm-control-plane (embedded_pg)";
/// First port tried in socket mode; only a live postmaster using our own socket
/// directory moves us to the next one.
const SOCKET_PORT_BASE: u16 = 5432;
const SOCKET_PORT_TRIES: u16 = 100;
/// `sizeof(sockaddr_un.sun_path)` is 108 on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// `pg_ctl -t` for start and stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How much of a child's stderr (or of the server log) goes into an error.
const TAIL_CHARS: usize = 2000;

/// A running private PostgreSQL cluster; see the module documentation.
pub struct EmbeddedPostgres {
    cluster_dir: PathBuf,
    pg_ctl: PathBuf,
    run_as: Option<RunAs>,
    endpoint: Endpoint,
    /// Set once `stop` has run, so `Drop` does not stop a second time.
    stopped: bool,
}

/// Why the embedded cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error(
        "no PostgreSQL server binaries (initdb and pg_ctl) found (looked in: {searched}); \
         install them (Debian/Ubuntu: `apt-get install postgresql`), or use an existing \
         server instead by passing --database-url or setting PMM_DATABASE_URL"
    )]
    BinariesNotFound { searched: String },

    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no `{SYSTEM_USER}` \
         system user to run it as; install the Debian package `postgresql` (it creates that \
         user), run this server as an unprivileged user, or pass --database-url / set \
         PMM_DATABASE_URL to use an existing server"
    )]
    NoPostgresUser,

    #[error(
        "directory {dir} (mode {mode:04o}, owner uid {owner}) is not traversable by the \
         `{SYSTEM_USER}` system user, which the embedded PostgreSQL runs as and which must \
         reach the data directory {data_dir}; choose a data directory elsewhere (e.g. under \
         /var/lib), grant that directory search permission yourself if that is acceptable, \
         or pass --database-url / set PMM_DATABASE_URL to use an existing server"
    )]
    NotTraversable {
        dir: PathBuf,
        mode: u32,
        owner: u32,
        data_dir: PathBuf,
    },

    #[error(
        "the cluster in {cluster_dir} was created by PostgreSQL {cluster_version}, but the \
         binaries in {bin_dir} are PostgreSQL {binary_version}; install the matching server \
         (Debian: `postgresql-{cluster_version}`) or upgrade the cluster with pg_upgrade"
    )]
    VersionMismatch {
        cluster_dir: PathBuf,
        cluster_version: String,
        bin_dir: PathBuf,
        binary_version: String,
    },

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },

    #[error(
        "PostgreSQL in {cluster_dir} did not start ({status}): {output}; server log {} says: {log_tail}",
        log.display()
    )]
    Start {
        cluster_dir: PathBuf,
        status: String,
        output: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("unusable server state file {}: {reason}", path.display())]
    PidFile { path: PathBuf, reason: String },

    #[error("connecting to the embedded PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("creating database `{DB_NAME}` in the embedded PostgreSQL: {0}")]
    CreateDatabase(#[source] sqlx::Error),

    #[error("PostgreSQL in {} did not stop: {detail}", cluster_dir.display())]
    Stop {
        cluster_dir: PathBuf,
        detail: String,
    },

    #[error("internal task failed: {0}")]
    Task(String),
}

type Result<T, E = EmbeddedPgError> = std::result::Result<T, E>;

/// The unprivileged identity PostgreSQL programs run as when we are root.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// Where clients reach the cluster.
#[derive(Clone, Debug)]
enum Endpoint {
    /// Unix socket directory (UTF-8, absolute) and port.
    Socket { dir: String, port: u16 },
    /// TCP host (an IP literal) and port.
    Tcp { host: String, port: u16 },
}

impl Endpoint {
    fn url(&self, database: &str) -> String {
        match self {
            Endpoint::Socket { dir, port } => format!(
                "postgres://{SUPERUSER}@localhost/{database}?host={}&port={port}&sslmode=disable",
                percent_encode(dir)
            ),
            Endpoint::Tcp { host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("postgres://{SUPERUSER}@{host}:{port}/{database}?sslmode=disable")
            }
        }
    }
}

/// Everything decided before any PostgreSQL program runs.
struct Plan {
    cluster_dir: PathBuf,
    run_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    initialized: bool,
}

impl EmbeddedPostgres {
    /// Starts (initdb on first start) a private cluster in `<data_dir>/postgres`, and makes sure a database named `pmm` exists.
    /// `bin_dir`: where initdb/pg_ctl/postgres live; None = discover.
    pub async fn start(data_dir: &Path, bin_dir: Option<&Path>) -> Result<Self, EmbeddedPgError> {
        let started_at = Instant::now();
        let data_dir = data_dir.to_path_buf();
        let bin_dir = bin_dir.map(Path::to_path_buf);
        let plan = blocking(move || prepare(&data_dir, bin_dir.as_deref())).await?;
        let pg_ctl = plan.bin_dir.join("pg_ctl");

        let mut reused = false;
        if plan.initialized {
            reused = already_running(&plan).await?;
        } else {
            initdb(&plan).await?;
        }
        if !reused {
            let (cluster_dir, run_dir, run_as) =
                (plan.cluster_dir.clone(), plan.run_dir.clone(), plan.run_as);
            blocking(move || configure(&cluster_dir, &run_dir, run_as)).await?;
            pg_ctl_start(&plan).await?;
        }

        // From here on the value owns a running postmaster: an error below drops it,
        // and Drop stops the server again.
        let cluster_dir = plan.cluster_dir.clone();
        let endpoint = blocking(move || endpoint_from_pid_file(&cluster_dir)).await?;
        let this = EmbeddedPostgres {
            cluster_dir: plan.cluster_dir,
            pg_ctl,
            run_as: plan.run_as,
            endpoint,
            stopped: false,
        };
        this.ensure_database().await?;
        tracing::info!(
            cluster_dir = %this.cluster_dir.display(),
            bin_dir = %plan.bin_dir.display(),
            initdb = !plan.initialized,
            reused_running_server = reused,
            url = %this.database_url(),
            elapsed_ms = started_at.elapsed().as_millis() as u64,
            "embedded PostgreSQL started"
        );
        Ok(this)
    }

    /// A sqlx-compatible URL for database `pmm` on this cluster:
    /// `postgres://pmm@localhost/pmm?host=<socket dir>&port=<port>&sslmode=disable`
    /// (the `host` parameter, a directory, overrides `localhost`: a unix socket), or
    /// `postgres://pmm@127.0.0.1:<port>/pmm?sslmode=disable` in the TCP fallback.
    pub fn database_url(&self) -> String {
        self.endpoint.url(DB_NAME)
    }

    /// Stops the cluster cleanly (pg_ctl stop -m fast), waiting for it.
    pub async fn stop(mut self) -> Result<(), EmbeddedPgError> {
        let started_at = Instant::now();
        let fast = self.pg_ctl_stop("fast").await;
        // Whatever happens next, Drop must not try again (it would block for up to
        // another minute on a server that already refused to stop).
        self.stopped = true;
        let fast = fast?;
        if fast.status.success() || !self.pid_file().exists() {
            tracing::info!(
                cluster_dir = %self.cluster_dir.display(),
                elapsed_ms = started_at.elapsed().as_millis() as u64,
                "embedded PostgreSQL stopped"
            );
            return Ok(());
        }
        let fast_detail = output_tail(&fast);
        tracing::warn!(
            cluster_dir = %self.cluster_dir.display(),
            detail = %fast_detail,
            "embedded PostgreSQL did not stop in fast mode; stopping it in immediate mode"
        );
        let immediate = self.pg_ctl_stop("immediate").await?;
        if immediate.status.success() || !self.pid_file().exists() {
            tracing::info!(
                cluster_dir = %self.cluster_dir.display(),
                elapsed_ms = started_at.elapsed().as_millis() as u64,
                "embedded PostgreSQL stopped (immediate mode; it will run crash recovery on next start)"
            );
            return Ok(());
        }
        Err(EmbeddedPgError::Stop {
            cluster_dir: self.cluster_dir.clone(),
            detail: format!(
                "fast: {fast_detail}; immediate ({}): {}",
                immediate.status,
                output_tail(&immediate)
            ),
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.cluster_dir.join("postmaster.pid")
    }

    async fn pg_ctl_stop(&self, mode: &str) -> Result<Output> {
        let mut cmd = tokio_command(&self.pg_ctl, self.run_as);
        cmd.args(["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", mode, "-D"])
            .arg(&self.cluster_dir);
        run(cmd, &self.pg_ctl).await
    }

    /// Creates database `pmm` unless it exists, connected to database `postgres`.
    async fn ensure_database(&self) -> Result<()> {
        let url = self.endpoint.url("postgres");
        let mut conn =
            sqlx::PgConnection::connect(&url)
                .await
                .map_err(|source| EmbeddedPgError::Connect {
                    url: url.clone(),
                    source,
                })?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1")
                .bind(DB_NAME)
                .fetch_optional(&mut conn)
                .await
                .map_err(EmbeddedPgError::CreateDatabase)?;
        if exists.is_none() {
            // CREATE DATABASE cannot take a parameter; this is DB_NAME, a plain identifier.
            match sqlx::raw_sql("CREATE DATABASE pmm")
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::info!(database = DB_NAME, "created database"),
                // Someone else created it between our check and our CREATE.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(EmbeddedPgError::CreateDatabase(e)),
            }
        }
        // Closing cleanly only spares the server a log line; a failure changes nothing.
        let _ = conn.close().await;
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let mut cmd = std_command(&self.pg_ctl, self.run_as);
        cmd.args(["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "fast", "-D"])
            .arg(&self.cluster_dir);
        match cmd.output() {
            Ok(out) if out.status.success() => tracing::info!(
                cluster_dir = %self.cluster_dir.display(),
                "embedded PostgreSQL stopped (on drop)"
            ),
            Ok(out) => tracing::warn!(
                cluster_dir = %self.cluster_dir.display(),
                status = %out.status,
                output = %output_tail(&out),
                "stopping embedded PostgreSQL on drop failed"
            ),
            Err(e) => tracing::warn!(
                cluster_dir = %self.cluster_dir.display(),
                error = %e,
                "could not run pg_ctl to stop embedded PostgreSQL on drop"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Preparation (blocking; runs on the blocking pool)
// ---------------------------------------------------------------------------

fn prepare(data_dir: &Path, bin_dir: Option<&Path>) -> Result<Plan> {
    let run_as = if Uid::effective().is_root() {
        let user = User::from_name(SYSTEM_USER)
            .map_err(|e| EmbeddedPgError::Io {
                action: "looking up system user",
                path: PathBuf::from(SYSTEM_USER),
                source: io::Error::from(e),
            })?
            .ok_or(EmbeddedPgError::NoPostgresUser)?;
        Some(RunAs {
            uid: user.uid,
            gid: user.gid,
        })
    } else {
        None
    };

    fs::create_dir_all(data_dir).map_err(io_err("creating data directory", data_dir))?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(io_err("resolving data directory", data_dir))?;
    if let Some(user) = run_as {
        check_traversable(&data_dir, user)?;
    }

    let cluster_dir = data_dir.join(CLUSTER_SUBDIR);
    let run_dir = data_dir.join(RUN_SUBDIR);
    let log_file = data_dir.join(LOG_FILE);

    ensure_private_dir(&cluster_dir, run_as, true)?;
    ensure_private_dir(&run_dir, run_as, false)?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(io_err("creating server log", &log_file))?;
    if let Some(user) = run_as {
        chown(&log_file, user)?;
    }

    let version_file = cluster_dir.join("PG_VERSION");
    let cluster_version = match fs::read_to_string(&version_file) {
        Ok(v) => Some(v.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading", &version_file)(e)),
    };

    let bin_dir = match bin_dir {
        Some(dir) if has_tools(dir) => dir.to_path_buf(),
        Some(dir) => {
            return Err(EmbeddedPgError::BinariesNotFound {
                searched: dir.display().to_string(),
            });
        }
        None => discover_bin_dir(cluster_version.as_deref())?,
    };
    if let Some(cluster_version) = &cluster_version
        && let Some(binary_version) = binaries_major_version(&bin_dir, run_as)
        && &binary_version != cluster_version
    {
        return Err(EmbeddedPgError::VersionMismatch {
            cluster_dir,
            cluster_version: cluster_version.clone(),
            bin_dir,
            binary_version,
        });
    }

    Ok(Plan {
        cluster_dir,
        run_dir,
        log_file,
        bin_dir,
        run_as,
        initialized: cluster_version.is_some(),
    })
}

/// Every directory from `/` down to `data_dir` (inclusive) must grant search
/// permission to `user` (by its primary group only: that is all it runs with).
fn check_traversable(data_dir: &Path, user: RunAs) -> Result<()> {
    let mut dirs: Vec<&Path> = data_dir.ancestors().collect();
    dirs.reverse();
    for dir in dirs {
        let md = fs::metadata(dir).map_err(io_err("inspecting", dir))?;
        let mode = md.mode();
        let searchable = if md.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if md.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            return Err(EmbeddedPgError::NotTraversable {
                dir: dir.to_path_buf(),
                mode: mode & 0o7777,
                owner: md.uid(),
                data_dir: data_dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Creates `dir` with mode 0700 if missing; when running as root, makes it belong to
/// the PostgreSQL user (the whole tree if `recursive` and it belongs to someone else).
fn ensure_private_dir(dir: &Path, run_as: Option<RunAs>, recursive: bool) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating directory", dir)(e)),
    }
    let md = fs::metadata(dir).map_err(io_err("inspecting", dir))?;
    if !md.is_dir() {
        return Err(io_err("using", dir)(io::Error::other("not a directory")));
    }
    if let Some(user) = run_as
        && (md.uid() != user.uid.as_raw() || md.gid() != user.gid.as_raw())
    {
        if recursive {
            chown_recursive(dir, user)?;
        } else {
            chown(dir, user)?;
        }
    }
    if md.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting permissions of", dir))?;
    }
    Ok(())
}

fn chown(path: &Path, user: RunAs) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(io_err("changing owner of", path))
}

fn chown_recursive(path: &Path, user: RunAs) -> Result<()> {
    chown(path, user)?;
    let md = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    if md.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("listing", path))? {
            let entry = entry.map_err(io_err("listing", path))?;
            chown_recursive(&entry.path(), user)?;
        }
    }
    Ok(())
}

fn has_tools(dir: &Path) -> bool {
    ["initdb", "pg_ctl"].iter().all(|tool| {
        fs::metadata(dir.join(tool))
            .map(|md| md.is_file() && md.mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Highest (or, for an existing cluster, the matching) version under
/// /usr/lib/postgresql/*/bin; else `pg_config --bindir`; else initdb on PATH.
fn discover_bin_dir(cluster_version: Option<&str>) -> Result<PathBuf> {
    let mut searched = vec!["/usr/lib/postgresql/*/bin".to_owned()];
    let mut found: Vec<(Vec<u32>, String, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(key) = numeric_version(name) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if has_tools(&bin) {
                found.push((key, name.to_owned(), bin));
            }
        }
    }
    if let Some(wanted) = cluster_version
        && let Some((_, _, bin)) = found.iter().find(|(_, name, _)| name == wanted)
    {
        return Ok(bin.clone());
    }
    if let Some((_, _, bin)) = found.into_iter().max_by(|a, b| a.0.cmp(&b.0)) {
        return Ok(bin);
    }

    searched.push("`pg_config --bindir`".to_owned());
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
    }

    searched.push("PATH".to_owned());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.is_absolute() && has_tools(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(EmbeddedPgError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

/// "15" -> [15], "9.6" -> [9, 6]; None for anything that is not a version.
fn numeric_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|part| part.parse().ok()).collect()
}

/// Major version of the binaries in `bin_dir` as PG_VERSION spells it ("15", "9.6"),
/// from `pg_ctl --version`; None if it cannot be determined (then PostgreSQL itself
/// will complain about an incompatible cluster).
fn binaries_major_version(bin_dir: &Path, run_as: Option<RunAs>) -> Option<String> {
    let out = std_command(&bin_dir.join("pg_ctl"), run_as)
        .arg("--version")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // "pg_ctl (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)", "... 17devel", "... 9.6.24"
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split(") ").nth(1)?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = version.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    if major >= 10 {
        Some(major.to_string())
    } else {
        Some(format!("{major}.{}", parts.next()?))
    }
}

/// Writes the managed settings (listen only where we decide), includes them from
/// postgresql.conf, and keeps pg_hba.conf's managed line in step with the mode.
fn configure(cluster_dir: &Path, run_dir: &Path, run_as: Option<RunAs>) -> Result<()> {
    let endpoint = choose_endpoint(run_dir)?;
    let (listen, socket_dir, port) = match &endpoint {
        Endpoint::Socket { dir, port } => ("", dir.as_str(), *port),
        Endpoint::Tcp { host, port } => (host.as_str(), "", *port),
    };
    let conf = format!(
        "# Written by pmm-control-plane on every start of its embedded PostgreSQL; edits are lost.\n\
         listen_addresses = {}\n\
         unix_socket_directories = {}\n\
         port = {port}\n",
        conf_quote(listen),
        conf_quote(socket_dir),
    );
    let conf_path = cluster_dir.join(MANAGED_CONF);
    fs::write(&conf_path, conf).map_err(io_err("writing", &conf_path))?;
    if let Some(user) = run_as {
        chown(&conf_path, user)?;
    }

    let main_conf = cluster_dir.join("postgresql.conf");
    let include_line = format!("include '{MANAGED_CONF}'");
    let text = fs::read_to_string(&main_conf).map_err(io_err("reading", &main_conf))?;
    if !text.lines().any(|l| l.trim() == include_line) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&main_conf)
            .map_err(io_err("opening", &main_conf))?;
        let sep = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        write!(
            f,
            "{sep}\n# Added by pmm-control-plane: settings it manages.\n{include_line}\n"
        )
        .map_err(io_err("writing", &main_conf))?;
    }

    // The first matching pg_hba line wins, so the managed line goes on top.
    let hba = cluster_dir.join("pg_hba.conf");
    let text = fs::read_to_string(&hba).map_err(io_err("reading", &hba))?;
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.ends_with(HBA_MARKER)).collect();
    let managed = format!("host all {SUPERUSER} 127.0.0.1/32 trust {HBA_MARKER}");
    if matches!(endpoint, Endpoint::Tcp { .. }) {
        lines.insert(0, &managed);
    }
    let mut new_text = lines.join("\n");
    new_text.push('\n');
    if new_text != text {
        fs::write(&hba, new_text).map_err(io_err("writing", &hba))?;
    }

    tracing::info!(
        cluster_dir = %cluster_dir.display(),
        listen = ?endpoint,
        "embedded PostgreSQL configured"
    );
    Ok(())
}

/// Socket mode on the first port not held by a live postmaster in our run directory,
/// unless the socket path would be too long (or not UTF-8, which a URL cannot carry):
/// then 127.0.0.1 with a port the kernel reports free right now.
fn choose_endpoint(run_dir: &Path) -> Result<Endpoint> {
    if let Some(dir) = run_dir.to_str() {
        for port in SOCKET_PORT_BASE..SOCKET_PORT_BASE + SOCKET_PORT_TRIES {
            let socket = format!("{dir}/.s.PGSQL.{port}");
            if socket.len() > MAX_SOCKET_PATH {
                break;
            }
            if !socket_in_use(run_dir, port) {
                return Ok(Endpoint::Socket {
                    dir: dir.to_owned(),
                    port,
                });
            }
        }
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(io_err("finding a free port on", Path::new("127.0.0.1")))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free port on", Path::new("127.0.0.1")))?
        .port();
    Ok(Endpoint::Tcp {
        host: "127.0.0.1".to_owned(),
        port,
    })
}

/// True if `.s.PGSQL.<port>.lock` in `run_dir` names a live postgres process. Our own
/// cluster is known not to be running when this is asked, so such a process is some
/// other cluster; a lock naming anything else is stale and is removed with its socket.
fn socket_in_use(run_dir: &Path, port: u16) -> bool {
    let lock = run_dir.join(format!(".s.PGSQL.{port}.lock"));
    let Ok(text) = fs::read_to_string(&lock) else {
        return false;
    };
    if let Some(pid) = first_line_pid(&text)
        && process_alive(pid)
        && process_is_postgres(pid)
    {
        return true;
    }
    let _ = fs::remove_file(&lock);
    let _ = fs::remove_file(run_dir.join(format!(".s.PGSQL.{port}")));
    false
}

fn first_line_pid(text: &str) -> Option<i32> {
    text.lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
}

/// Exists and is not a zombie (an exited postmaster stays a zombie until init reaps
/// it, which some container inits do lazily; `kill(pid, 0)` still succeeds then).
fn process_alive(pid: i32) -> bool {
    if matches!(signal::kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)) {
        return false;
    }
    // /proc/<pid>/stat: "<pid> (<comm>) <state> ..."; comm may contain ") ".
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// By the process name; assumes yes if it cannot be read (the safe answer here).
fn process_is_postgres(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
        Err(_) => true,
    }
}

/// A postgresql.conf string literal.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encodes a URL query value, leaving unreserved characters and '/'.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads where the running postmaster listens from its `postmaster.pid`
/// (line 4: port, 5: first socket directory, 6: first listen address).
fn endpoint_from_pid_file(cluster_dir: &Path) -> Result<Endpoint> {
    let path = cluster_dir.join("postmaster.pid");
    let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    let bad = |reason: &str| EmbeddedPgError::PidFile {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let port: u16 = lines
        .get(3)
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("no port on line 4"))?;
    let socket_dir = lines.get(4).copied().unwrap_or("");
    let listen = lines.get(5).copied().unwrap_or("");
    if !socket_dir.is_empty() {
        Ok(Endpoint::Socket {
            dir: socket_dir.to_owned(),
            port,
        })
    } else if !listen.is_empty() {
        let host = match listen {
            "*" | "0.0.0.0" => "127.0.0.1",
            "::" => "::1",
            other => other,
        };
        Ok(Endpoint::Tcp {
            host: host.to_owned(),
            port,
        })
    } else {
        Err(bad("the server listens on neither a unix socket nor TCP"))
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL programs
// ---------------------------------------------------------------------------

/// Whether a postmaster for this cluster is already running (e.g. left over by a
/// crash of ours), which we then adopt. pg_ctl's answer relies on the PID in
/// postmaster.pid being alive; after a reboot that PID may belong to an unrelated
/// process, so we also check that the process's working directory is the cluster
/// (a postmaster always chdirs there), and remove a pid file that names a stranger.
async fn already_running(plan: &Plan) -> Result<bool> {
    let pg_ctl = plan.bin_dir.join("pg_ctl");
    let mut cmd = tokio_command(&pg_ctl, plan.run_as);
    cmd.args(["status", "-D"]).arg(&plan.cluster_dir);
    let out = run(cmd, &pg_ctl).await?;
    match out.status.code() {
        Some(0) => {}
        // 3: not running (also for a pid file naming a dead process).
        Some(3) => return Ok(false),
        _ => {
            return Err(EmbeddedPgError::Command {
                what: format!("pg_ctl status -D {}", plan.cluster_dir.display()),
                status: out.status.to_string(),
                output: output_tail(&out),
            });
        }
    }
    let pid_path = plan.cluster_dir.join("postmaster.pid");
    let cluster_dir = plan.cluster_dir.clone();
    blocking(move || {
        let pid = match fs::read_to_string(&pid_path) {
            Ok(text) => first_line_pid(&text),
            // Gone since pg_ctl looked: it stopped meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("reading", &pid_path)(e)),
        };
        let Some(pid) = pid else {
            return Err(EmbeddedPgError::PidFile {
                path: pid_path,
                reason: "no PID on line 1".to_owned(),
            });
        };
        match postmaster_of(pid, &cluster_dir) {
            Some(true) | None => Ok(true),
            Some(false) => {
                tracing::info!(
                    pid_file = %pid_path.display(),
                    pid,
                    "removing stale postmaster.pid: that PID now belongs to another process"
                );
                match fs::remove_file(&pid_path) {
                    Ok(()) => Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io_err("removing stale", &pid_path)(e)),
                }
            }
        }
    })
    .await
}

/// Some(true): `pid` is a process whose working directory is `cluster_dir`; Some(false):
/// it is not (or is gone); None: cannot tell (no procfs or no permission to look).
fn postmaster_of(pid: i32, cluster_dir: &Path) -> Option<bool> {
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => Some(cwd == cluster_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if Path::new("/proc/self").exists() {
                Some(false)
            } else {
                None
            }
        }
        // Without ptrace rights we cannot read cwd; the name is the best we have.
        Err(_) => match fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(comm) if !matches!(comm.trim(), "postgres" | "postmaster") => Some(false),
            _ => None,
        },
    }
}

async fn initdb(plan: &Plan) -> Result<()> {
    let started_at = Instant::now();
    let program = plan.bin_dir.join("initdb");
    let attempt = |locale: &'static str| {
        let mut cmd = tokio_command(&program, plan.run_as);
        cmd.arg("-D").arg(&plan.cluster_dir).args([
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            locale,
        ]);
        run(cmd, &program)
    };
    let mut out = attempt("--locale=C.UTF-8").await?;
    let mut locale = "C.UTF-8";
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("locale") {
        // initdb removed what it had created, so the directory is empty again.
        out = attempt("--no-locale").await?;
        locale = "C";
    }
    if !out.status.success() {
        return Err(EmbeddedPgError::Command {
            what: format!("initdb -D {}", plan.cluster_dir.display()),
            status: out.status.to_string(),
            output: output_tail(&out),
        });
    }
    tracing::info!(
        cluster_dir = %plan.cluster_dir.display(),
        locale,
        elapsed_ms = started_at.elapsed().as_millis() as u64,
        "embedded PostgreSQL cluster initialized"
    );
    Ok(())
}

async fn pg_ctl_start(plan: &Plan) -> Result<()> {
    let pg_ctl = plan.bin_dir.join("pg_ctl");
    let log_len = fs::metadata(&plan.log_file).map(|m| m.len()).unwrap_or(0);
    // Settings come from the managed conf file rather than `-o`: pg_ctl hands `-o`
    // to /bin/sh, and our paths would need shell quoting there.
    let mut cmd = tokio_command(&pg_ctl, plan.run_as);
    cmd.args(["start", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
        .arg(&plan.cluster_dir)
        .arg("-l")
        .arg(&plan.log_file);
    let out = run(cmd, &pg_ctl).await?;
    if out.status.success() {
        return Ok(());
    }
    let log = plan.log_file.clone();
    let log_tail = blocking(move || Ok(read_tail_since(&log, log_len))).await?;
    Err(EmbeddedPgError::Start {
        cluster_dir: plan.cluster_dir.clone(),
        status: out.status.to_string(),
        output: output_tail(&out),
        log: plan.log_file.clone(),
        log_tail,
    })
}

/// The end of what was appended to `path` after it was `since` bytes long.
fn read_tail_since(path: &Path, since: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        let start = since.max(len.saturating_sub(4 * TAIL_CHARS as u64));
        f.seek(SeekFrom::Start(start.min(len)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(tail(&buf))
    };
    read().unwrap_or_else(|e| format!("(could not read it: {e})"))
}

fn std_command(program: &Path, run_as: Option<RunAs>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    // Our working directory may not be accessible to the PostgreSQL user.
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(user) = run_as {
        // With a uid set, std also clears the supplementary groups before exec.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    cmd
}

fn tokio_command(program: &Path, run_as: Option<RunAs>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(std_command(program, run_as));
    cmd.kill_on_drop(true);
    cmd
}

async fn run(mut cmd: tokio::process::Command, program: &Path) -> Result<Output> {
    cmd.output().await.map_err(|source| EmbeddedPgError::Spawn {
        program: program.to_path_buf(),
        source,
    })
}

/// stderr's tail, or stdout's if stderr is empty.
fn output_tail(out: &Output) -> String {
    let text = if out.stderr.iter().all(u8::is_ascii_whitespace) {
        &out.stdout
    } else {
        &out.stderr
    };
    let t = tail(text);
    if t.is_empty() {
        "(no output)".to_owned()
    } else {
        t
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(TAIL_CHARS);
    if skip == 0 {
        text.to_owned()
    } else {
        format!("…{}", text.chars().skip(skip).collect::<String>())
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedPgError {
    let path = path.to_path_buf();
    move |source| EmbeddedPgError::Io {
        action,
        path,
        source,
    }
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EmbeddedPgError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(numeric_version("15"), Some(vec![15]));
        assert_eq!(numeric_version("9.6"), Some(vec![9, 6]));
        assert_eq!(numeric_version("15-beta"), None);
        assert!(numeric_version("9.6") < numeric_version("10"));
    }

    #[test]
    fn urls() {
        let s = Endpoint::Socket {
            dir: "/tmp/a b+c".to_owned(),
            port: 5432,
        };
        assert_eq!(
            s.url("pmm"),
            "postgres://pmm@localhost/pmm?host=/tmp/a%20b%2Bc&port=5432&sslmode=disable"
        );
        let t = Endpoint::Tcp {
            host: "127.0.0.1".to_owned(),
            port: 40000,
        };
        assert_eq!(
            t.url("postgres"),
            "postgres://pmm@127.0.0.1:40000/postgres?sslmode=disable"
        );
    }

    /// `postgres://pmm@/pmm?host=...` (libpq's form) is rejected by the `url` crate
    /// ("empty host"), hence `localhost` in the authority, overridden by `host=`.
    #[test]
    fn sqlx_reads_socket_url() {
        let s = Endpoint::Socket {
            dir: "/tmp/a b+c".to_owned(),
            port: 5433,
        };
        let o: sqlx::postgres::PgConnectOptions = s.url("pmm").parse().expect("valid URL");
        assert_eq!(
            o.get_socket(),
            Some(Path::new("/tmp/a b+c").to_path_buf()).as_ref()
        );
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_database(), Some("pmm"));
        assert_eq!(o.get_username(), "pmm");
    }

    #[test]
    fn liveness() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        // Not yet reaped: a zombie, or (if not yet exited) alive; after wait: gone.
        child.wait().expect("wait");
        assert!(!process_alive(pid));
    }

    #[test]
    fn conf_quoting() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote(""), "''");
        assert_eq!(conf_quote(r"a\b"), r"'a\\b'");
    }
}
