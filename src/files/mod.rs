//! File projections: the files PMM's server components read, rendered from the state at a
//! revision and written atomically into this node's output directory (DESIGN decision 10).
//!
//! - [`render_all`] is a pure function of (state, options, cluster key): every node renders
//!   the same bytes for the same revision, and so does a rebuild from the log.
//! - [`write_if_changed`] writes a temp file, fsyncs it, renames it over the old one and
//!   fsyncs the directory, only when the bytes differ; a crash leaves the old file or the new
//!   one. `manifest.json` lists every file with its SHA-256 and the revision they were rendered
//!   at, so the same revision gives the same manifest on every node.
//! - [`Projector`] follows the applied state: a burst of commands is coalesced into one render,
//!   then the reload hooks of the files that changed run, with retries and backoff.
//!
//! Files (relative to the output directory): `victoriametrics-promscrape.yml` (the server's
//! scrape configuration), `vmagent/<pmm-agent id>.yml` (each pmm-agent's push configuration),
//! `vmalert/<rule id>.yml` (each enabled alert rule), `supervisord.d/<program>.ini`.

pub mod durations;
pub mod query;
pub mod scrape;
pub mod supervisord;
pub mod vmalert;
pub mod yaml;

use crate::crypto::Cipher;
use crate::domain::State;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the rendered files depend on besides the state.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// VictoriaMetrics' URL as PMM writes it (`http://127.0.0.1:9090/prometheus/`).
    pub vm_url: String,
    /// The address the server's components listen on.
    pub bind: String,
    /// Where VictoriaMetrics reads the scrape configuration (its `--promscrape.config`).
    pub scrape_config_path: String,
    /// vmalert's rule directory for the user's own rule files.
    pub rules_dir: String,
    /// Where vmalert reads the rule files pmm-cp writes (`vmalert/` of the output directory).
    pub alert_rules_dir: String,
    /// supervisord's log directory and the user programs run as.
    pub log_dir: String,
    pub supervisord_user: String,
    /// Replace exporter passwords by `[redacted]` (what the query API shows).
    pub redact_secrets: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            vm_url: "http://127.0.0.1:9090/prometheus/".to_owned(),
            bind: "127.0.0.1".to_owned(),
            scrape_config_path: "/etc/victoriametrics-promscrape.yml".to_owned(),
            rules_dir: "/srv/prometheus/rules".to_owned(),
            alert_rules_dir: "/etc/ia/rules".to_owned(),
            log_dir: "/srv/logs".to_owned(),
            supervisord_user: "pmm".to_owned(),
            redact_secrets: false,
        }
    }
}

/// Refuses a VictoriaMetrics URL that is not `http(s)://host:port/...` or that carries
/// credentials: it is written into files, program command lines and query output.
pub fn check_vm_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?}: expected http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("the VictoriaMetrics URL must not carry credentials".to_owned());
    }
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!("{url:?}: expected host:port"));
    }
    Ok(())
}

impl RenderOptions {
    /// `host:port` of the VictoriaMetrics URL.
    fn vm_host(&self) -> String {
        let rest = self
            .vm_url
            .split_once("://")
            .map_or(self.vm_url.as_str(), |(_, r)| r);
        rest.split('/')
            .next()
            .unwrap_or("127.0.0.1:9090")
            .to_owned()
    }
}

/// Which component reads a file, so the right reload runs when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reader {
    VictoriaMetrics,
    Vmagent,
    Vmalert,
    Supervisord,
}

/// One rendered file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Relative to the output directory.
    pub path: String,
    pub bytes: Vec<u8>,
    pub reader: Reader,
}

/// Every file for `state`, in a fixed order.
pub fn render_all(state: &State, cipher: &Cipher, opts: &RenderOptions) -> Vec<Rendered> {
    render_all_cached(state, cipher, opts, &mut scrape::JobCache::default())
}

/// [`render_all`], reusing from `cache` the jobs of agents whose inputs did not change.
pub fn render_all_cached(
    state: &State,
    cipher: &Cipher,
    opts: &RenderOptions,
    cache: &mut scrape::JobCache,
) -> Vec<Rendered> {
    cache.begin();
    let mut out = vec![Rendered {
        path: "victoriametrics-promscrape.yml".to_owned(),
        bytes: scrape::render_server_cached(state, cipher, opts, cache).into_bytes(),
        reader: Reader::VictoriaMetrics,
    }];
    for pmm_agent in scrape::push_agents(state) {
        out.push(Rendered {
            path: format!("vmagent/{}.yml", file_safe(pmm_agent.as_str())),
            bytes: scrape::render_push_cached(state, cipher, &pmm_agent, opts, cache).into_bytes(),
            reader: Reader::Vmagent,
        });
    }
    cache.finish();
    for (rule_id, text) in vmalert::render(state) {
        out.push(Rendered {
            path: format!("vmalert/{}.yml", file_safe(&rule_id)),
            bytes: text.into_bytes(),
            reader: Reader::Vmalert,
        });
    }
    for (name, text) in supervisord::render(state, opts) {
        out.push(Rendered {
            path: format!("supervisord.d/{name}"),
            bytes: text.into_bytes(),
            reader: Reader::Supervisord,
        });
    }
    out
}

/// A name that is one plain path component.
fn file_safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `relative` under `dir`, refusing anything that would leave it.
pub fn confined(dir: &Path, relative: &str) -> std::io::Result<PathBuf> {
    let rel = Path::new(relative);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || relative.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{relative:?} is not a plain path inside the output directory"),
        ));
    }
    Ok(dir.join(rel))
}

/// Writes `bytes` to `path` atomically if they differ from what is there: a temp file in the
/// same directory, fsync, rename, fsync of the directory. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    replace(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(true)
}

/// Replaces `path` by `bytes` atomically (temp file, fsync, rename); the rename is durable once
/// its directory is synced ([`sync_dir`]).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, f) = stage(path, bytes)?;
    let result = f.sync_all().and_then(|()| {
        drop(f);
        std::fs::rename(&tmp, path)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to a new temp file beside `path` (not synced yet); returns its path and the
/// open file. Removed again if writing fails.
fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<(PathBuf, std::fs::File)> {
    let (dir, name) = dir_and_name(path);
    std::fs::create_dir_all(dir)?;
    // A fresh name each time, created exclusively: no two writers share it and a planted
    // file or link is not followed.
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    // Owner and group only: the scrape configuration holds exporter passwords.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)?;
    if let Err(e) = f.write_all(bytes) {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, f))
}

fn dir_and_name(path: &Path) -> (&Path, String) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

/// The suffix of a file's companion: `.NAME.swap` beside `NAME`.
const SWAP: &str = ".swap";

/// Writes `bytes` over the companion of `path`, ready to be exchanged with it: a changed file
/// then reuses its two inodes instead of allocating a new one and freeing the old (with 10,000
/// files changed at once, allocating inodes among thousands just freed costs seconds of CPU on
/// an ext4 without a journal).
fn stage_swap(path: &Path, bytes: &[u8]) -> std::io::Result<(PathBuf, std::fs::File)> {
    let (dir, name) = dir_and_name(path);
    let swap = dir.join(format!(".{name}{SWAP}"));
    let mut f = open_companion(&swap, true)?;
    // Written over, not truncated first: freeing and allocating blocks is what costs (with
    // `discard`, a truncate waits for the device); the length is set after.
    f.write_all(bytes)?;
    if f.metadata()?.len() != bytes.len() as u64 {
        f.set_len(bytes.len() as u64)?;
    }
    Ok((swap, f))
}

fn open_companion(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .mode(0o640)
        // A planted link is not followed, nor a planted pipe waited on.
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
}

/// Zeroes a companion after its exchange: the previous bytes (an old exporter password) do not
/// stay readable. Its blocks are kept for the next change.
fn forget_old_bytes(companion: &Path) {
    use std::io::Read as _;
    let _ = open_companion(companion, false).and_then(|mut f| {
        let len = f.metadata()?.len();
        // In small pieces: the central scrape file can be megabytes.
        std::io::copy(&mut std::io::repeat(0).take(len), &mut f)
    });
}

/// Puts a staged file in place: exchanged with the file (its companion), else renamed over it.
fn put_in_place(swap: bool, tmp: &Path, path: &Path) -> std::io::Result<()> {
    if swap {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(()),
            // A filesystem (or a sandbox) without the exchange, or the file gone: a plain rename.
            Err(
                nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::ENOENT
                | nix::errno::Errno::EPERM,
            ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::rename(tmp, path)
}

/// Makes every staged file's bytes durable before any is renamed: one `syncfs` of the
/// filesystem instead of an fsync per file (10,000 vmagent files change with a resolution);
/// an fsync per file where `syncfs` fails.
fn sync_staged(dir: Option<&std::fs::File>, staged: &[Staged]) -> std::io::Result<()> {
    if staged.len() > 1
        && let Some(d) = dir
        && nix::unistd::syncfs(d).is_ok()
    {
        return Ok(());
    }
    for s in staged {
        s.file.sync_all()?;
    }
    Ok(())
}

/// A file written to its temp name, waiting for its rename.
struct Staged {
    /// The temp file, or the companion when `swap`.
    tmp: PathBuf,
    swap: bool,
    file: std::fs::File,
    path: PathBuf,
    rel: String,
    hash: [u8; 32],
    len: u64,
    reader: Reader,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What the writer knows is on disk: each file's SHA-256 as it last wrote or read it, so an
/// unchanged file costs a `stat`, not a read. Empty at start: every file is read once.
#[derive(Debug, Default)]
pub struct Written {
    files: std::collections::HashMap<String, ([u8; 32], u64)>,
}

impl Written {
    /// Whether `path` holds bytes of `hash` and `len`.
    fn holds(&self, rel: &str, path: &Path, hash: &[u8; 32], len: usize) -> bool {
        match self.files.get(rel) {
            // Still there, with that size: nothing else writes this directory.
            Some((h, l)) if h == hash && *l == len as u64 => {
                std::fs::metadata(path).is_ok_and(|m| m.len() == len as u64)
            }
            Some(_) => false,
            None => std::fs::read(path).is_ok_and(|old| Sha256::digest(&old)[..] == hash[..]),
        }
    }
}

/// What `manifest.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The revision whose state rendered these files.
    pub revision: i64,
    /// Each file's SHA-256 (lowercase hex), by path.
    pub files: BTreeMap<String, String>,
}

/// The manifest's file name in the output directory.
pub const MANIFEST: &str = "manifest.json";

/// Writes the files of `rendered` that changed (with their manifests) and removes files this
/// projection wrote before that are no longer rendered (a pmm-agent's push file after its last
/// push exporter went). Returns the readers whose files changed.
///
/// Each file is replaced atomically: all changed files are written to temp names and made
/// durable together, then renamed; each directory is synced once, and the manifest is written
/// last.
pub fn write_all(
    dir: &Path,
    rendered: &[Rendered],
    revision: i64,
    written: &mut Written,
) -> std::io::Result<Vec<Reader>> {
    let mut changed = Vec::new();
    let mut dirty: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
    let mut hashes = BTreeMap::new();
    let mut staged: Vec<Staged> = Vec::new();
    // Put in place but not yet durable (their directories are synced below): only then does
    // the writer remember them.
    let mut placed: Vec<(String, [u8; 32], u64)> = Vec::new();
    // Opened before anything is written, so the one syncfs reports what fails after it.
    let dir_fd = std::fs::File::open(dir).ok();
    let outcome = (|| {
        for f in rendered {
            let path = confined(dir, &f.path)?;
            let hash: [u8; 32] = Sha256::digest(&f.bytes).into();
            hashes.insert(f.path.clone(), hex::encode(hash));
            let len = f.bytes.len() as u64;
            let known = written.files.contains_key(&f.path);
            if written.holds(&f.path, &path, &hash, f.bytes.len()) {
                if !known {
                    // Found by reading (a restart): a rename before a crash of this process
                    // may not be durable yet.
                    dirty.insert(path.parent().unwrap_or(dir).to_path_buf());
                }
                written.files.insert(f.path.clone(), (hash, len));
                continue;
            }
            // Forgotten until written: a failed write is tried again next time.
            written.files.remove(&f.path);
            let swap = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            let (tmp, file) = if swap {
                stage_swap(&path, &f.bytes)?
            } else {
                stage(&path, &f.bytes)?
            };
            staged.push(Staged {
                tmp,
                swap,
                file,
                path,
                rel: f.path.clone(),
                hash,
                len,
                reader: f.reader,
            });
        }
        sync_staged(dir_fd.as_ref(), &staged)?;
        while let Some(s) = staged.pop() {
            drop(s.file);
            if let Err(e) = put_in_place(s.swap, &s.tmp, &s.path) {
                let _ = std::fs::remove_file(&s.tmp);
                return Err(e);
            }
            if s.swap {
                forget_old_bytes(&s.tmp);
            }
            placed.push((s.rel, s.hash, s.len));
            dirty.insert(s.path.parent().unwrap_or(dir).to_path_buf());
            changed.push(s.reader);
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        for s in staged {
            let _ = std::fs::remove_file(&s.tmp);
        }
        return Err(e);
    }
    // Files no longer rendered (a pmm-agent that stopped pushing, a program that went), and
    // temp files a crash left behind.
    for (sub, ext, reader) in [
        ("vmagent", ".yml", Reader::Vmagent),
        ("vmalert", ".yml", Reader::Vmalert),
        ("supervisord.d", ".ini", Reader::Supervisord),
        ("", ".yml", Reader::VictoriaMetrics),
    ] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            // Only files (and links) are ours to sweep; a directory is left alone.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let rel_of = |name: &str| {
                if sub.is_empty() {
                    name.to_owned()
                } else {
                    format!("{sub}/{name}")
                }
            };
            let rel = rel_of(&name);
            let companion_of = name.strip_prefix('.').and_then(|n| n.strip_suffix(SWAP));
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            } else if let Some(of) = companion_of {
                if !hashes.contains_key(&rel_of(of)) {
                    let _ = std::fs::remove_file(e.path());
                }
            } else if !sub.is_empty() && name.ends_with(ext) && !hashes.contains_key(&rel) {
                std::fs::remove_file(e.path())?;
                written.files.remove(&rel);
                dirty.insert(dir.join(sub));
                changed.push(reader);
            }
        }
    }
    for d in &dirty {
        sync_dir(d)?;
    }
    for (rel, hash, len) in placed {
        written.files.insert(rel, (hash, len));
    }
    // Last, so a manifest never names bytes that are not on disk yet.
    let manifest = Manifest {
        revision,
        files: hashes,
    };
    let mut text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    text.push(b'\n');
    write_if_changed(&dir.join(MANIFEST), &text)?;
    changed.sort();
    changed.dedup();
    Ok(changed)
}

/// How a component is told to reload.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// POSTed to when the scrape configuration changes (e.g. `http://127.0.0.1:9090/prometheus/-/reload`).
    pub victoriametrics_reload_url: Option<String>,
    /// POSTed to when a vmalert rule file changes (e.g. `http://127.0.0.1:8880/-/reload`).
    pub vmalert_reload_url: Option<String>,
    /// Run with `sh -c` when a program file changes (e.g. `supervisorctl reread && supervisorctl update`).
    pub supervisord_command: Option<String>,
}

/// The projector's state, for status pages.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    /// The revision of the last render written.
    pub revision: i64,
    /// Renders written since start, and how many commands' revisions they covered.
    pub renders: u64,
    /// Per reader: the last reload's outcome.
    pub reloads: BTreeMap<String, String>,
    /// The last write error, if the last render failed.
    pub error: Option<String>,
}

/// Follows the applied state and keeps the output directory in step with it.
#[derive(Clone)]
pub struct Projector {
    pub dir: PathBuf,
    pub options: RenderOptions,
    pub hooks: Hooks,
    cipher: Arc<Cipher>,
    status: Arc<Mutex<Status>>,
    cache: Arc<Mutex<scrape::JobCache>>,
    on_disk: Arc<Mutex<Written>>,
    /// The revision of the last render written.
    written: Arc<tokio::sync::watch::Sender<i64>>,
}

/// A render for the projector's thread, and where its outcome goes.
type Job = (
    State,
    tokio::sync::oneshot::Sender<std::io::Result<Vec<Reader>>>,
);

/// Lowers the calling thread's CPU priority (nice 10); best effort. Background work (file
/// projection, password hashing) then yields to the streams and the API.
pub(crate) fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; on Linux, PRIO_PROCESS with a
    // thread id sets that thread's nice value (and no other's).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as _, 10) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
    }
}

/// How long the projector waits after a change for more changes to arrive.
pub const COALESCE: Duration = Duration::from_millis(20);

impl Projector {
    pub fn new(dir: PathBuf, options: RenderOptions, hooks: Hooks, cipher: Arc<Cipher>) -> Self {
        Self {
            dir,
            options,
            hooks,
            cipher,
            status: Arc::default(),
            cache: Arc::default(),
            on_disk: Arc::default(),
            written: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Changes to the revision whose files are on disk: wait on it instead of polling.
    pub fn written(&self) -> tokio::sync::watch::Receiver<i64> {
        self.written.subscribe()
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Renders `state` and writes what changed; returns the readers to reload.
    pub fn project(&self, state: &State) -> std::io::Result<Vec<Reader>> {
        let rendered = match self.cache.lock() {
            Ok(mut cache) => render_all_cached(state, &self.cipher, &self.options, &mut cache),
            Err(_) => render_all(state, &self.cipher, &self.options),
        };
        let changed = match self.on_disk.lock() {
            Ok(mut on_disk) => write_all(&self.dir, &rendered, state.revision, &mut on_disk),
            Err(_) => write_all(
                &self.dir,
                &rendered,
                state.revision,
                &mut Written::default(),
            ),
        };
        if let Ok(mut s) = self.status.lock() {
            match &changed {
                Ok(_) => {
                    s.revision = state.revision;
                    s.renders += 1;
                    s.error = None;
                    self.written.send_replace(state.revision);
                }
                Err(e) => s.error = Some(e.to_string()),
            }
        }
        changed
    }

    /// Runs until `states` closes: after each change, waits [`COALESCE`] for more, renders the
    /// newest state, writes what changed and runs the reload hooks. A failed write is retried
    /// with the next change or after a second.
    pub async fn run(self, mut states: tokio::sync::watch::Receiver<State>) {
        let worker = self.worker();
        let mut last_ok: Option<i64> = None;
        // Readers owed a reload: kept until their reload succeeds. At start every reader is
        // owed one (the files may have changed while this node was down).
        let mut pending: std::collections::BTreeSet<Reader> = [
            Reader::VictoriaMetrics,
            Reader::Vmalert,
            Reader::Supervisord,
        ]
        .into();
        loop {
            let state = states.borrow_and_update().clone();
            if last_ok != Some(state.revision) {
                match self.project_on(worker.as_ref(), state.clone()).await {
                    Ok(Ok(changed)) => {
                        last_ok = Some(state.revision);
                        pending.extend(changed);
                    }
                    Ok(Err(e)) => {
                        // Some files may be new on disk already: reload them all once the
                        // write goes through.
                        pending.extend([
                            Reader::VictoriaMetrics,
                            Reader::Vmalert,
                            Reader::Supervisord,
                        ]);
                        tracing::warn!(error = %e, dir = %self.dir.display(), "writing the generated files failed; retrying");
                    }
                    Err(e) => tracing::warn!(error = %e, "the render task failed"),
                }
            }
            if last_ok == Some(state.revision) {
                let owed: Vec<Reader> = pending.iter().copied().collect();
                for reader in owed {
                    if self.reload(reader).await {
                        pending.remove(&reader);
                    }
                }
            }
            let wait = if last_ok == Some(state.revision) && pending.is_empty() {
                Duration::MAX
            } else {
                Duration::from_secs(1)
            };
            match tokio::time::timeout(wait, states.changed()).await {
                Ok(Ok(())) => tokio::time::sleep(COALESCE).await,
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    }

    /// The thread that renders and writes, at a lower CPU priority than the rest of the
    /// server: a change that alters every pmm-agent's state is rendered both here and by every
    /// stream, and the streams' copies reach the agents. `None` if it cannot be started (the
    /// blocking pool does the work then).
    fn worker(&self) -> Option<std::sync::mpsc::Sender<Job>> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let this = self.clone();
        let started = std::thread::Builder::new()
            .name("pmm-cp-files".to_owned())
            .spawn(move || {
                lower_priority();
                while let Ok((state, reply)) = rx.recv() {
                    let _ = reply.send(this.project(&state));
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the file projection; using the blocking pool");
                None
            }
        }
    }

    async fn project_on(
        &self,
        worker: Option<&std::sync::mpsc::Sender<Job>>,
        state: State,
    ) -> Result<std::io::Result<Vec<Reader>>, String> {
        if let Some(worker) = worker {
            let (tx, rx) = tokio::sync::oneshot::channel();
            worker
                .send((state, tx))
                .map_err(|_| "the file projection thread stopped".to_owned())?;
            return rx
                .await
                .map_err(|_| "the file projection thread stopped".to_owned());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.project(&state))
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs the hook of `reader`, retrying with backoff (0.2 s, 0.4 s, ... at most 5 tries);
    /// true when it is done (or there is nothing to run).
    async fn reload(&self, reader: Reader) -> bool {
        let outcome = match reader {
            Reader::VictoriaMetrics => match &self.hooks.victoriametrics_reload_url {
                None => return true,
                Some(url) => retry(|| post(url)).await,
            },
            Reader::Vmalert => match &self.hooks.vmalert_reload_url {
                None => return true,
                Some(url) => retry(|| post(url)).await,
            },
            Reader::Supervisord => match &self.hooks.supervisord_command {
                None => return true,
                Some(cmd) => retry(|| run_command(cmd)).await,
            },
            // vmagent files go to pmm-agents (their streams), not to a local process.
            Reader::Vmagent => return true,
        };
        let done = outcome.is_ok();
        let text = match &outcome {
            Ok(()) => "ok".to_owned(),
            Err(e) => {
                tracing::warn!(reader = ?reader, error = %e, "reload failed");
                format!("failed: {e}")
            }
        };
        if let Ok(mut s) = self.status.lock() {
            s.reloads.insert(format!("{reader:?}"), text);
        }
        done
    }
}

async fn retry<F, Fut>(mut f: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for _ in 0..5 {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    Err(last)
}

async fn post(url: &str) -> Result<(), String> {
    let resp = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        // Without the URL: it may carry credentials.
        .map_err(|e| e.without_url().to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the reload URL answered {}", resp.status()))
    }
}

async fn run_command(cmd: &str) -> Result<(), String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{cmd:?} took over 30 s"))?
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_url_has_a_port_and_no_credentials() {
        assert!(check_vm_url("http://127.0.0.1:9090/prometheus/").is_ok());
        assert!(check_vm_url("https://vm.example:8428/").is_ok());
        for bad in [
            "http://u:p@vm:9090/",
            "http://vm/",
            "ftp://vm:1/",
            "vm:9090",
        ] {
            assert!(check_vm_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_stay_inside_the_output_directory() {
        let dir = Path::new("/out");
        assert!(confined(dir, "vmagent/a.yml").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(confined(dir, bad).is_err(), "{bad}");
        }
        assert_eq!(file_safe("../../etc"), "______etc");
        assert_eq!(file_safe("pmm-server"), "pmm-server");
    }

    #[test]
    fn a_file_is_written_only_when_its_bytes_change() {
        let dir =
            std::env::temp_dir().join(format!("pmmcp-files-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("a.yml");
        assert!(write_if_changed(&path, b"one").expect("write"));
        assert!(!write_if_changed(&path, b"one").expect("same"));
        assert!(write_if_changed(&path, b"two").expect("changed"));
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_writer_remembers_what_it_wrote_and_notices_a_file_gone() {
        let dir =
            std::env::temp_dir().join(format!("pmmcp-files-{}", uuid::Uuid::new_v4().simple()));
        let file = |path: &str, bytes: &str, reader| Rendered {
            path: path.to_owned(),
            bytes: bytes.as_bytes().to_vec(),
            reader,
        };
        let one = vec![
            file(
                "victoriametrics-promscrape.yml",
                "a: 1\n",
                Reader::VictoriaMetrics,
            ),
            file("vmagent/p1.yml", "b: 1\n", Reader::Vmagent),
        ];
        // Files already on disk (a restart): read once, not written again.
        write_all(&dir, &one, 1, &mut Written::default()).expect("write");
        let mut written = Written::default();
        assert_eq!(
            write_all(&dir, &one, 2, &mut written).expect("same"),
            vec![]
        );
        assert_eq!(written.files.len(), 2);
        // A file removed behind the writer's back is written again.
        std::fs::remove_file(dir.join("vmagent/p1.yml")).expect("rm");
        assert_eq!(
            write_all(&dir, &one, 3, &mut written).expect("again"),
            vec![Reader::Vmagent]
        );
        // A changed file is exchanged with its companion.
        let changed = vec![
            one[0].clone(),
            file("vmagent/p1.yml", "b: 2\n", Reader::Vmagent),
        ];
        assert_eq!(
            write_all(&dir, &changed, 4, &mut written).expect("changed"),
            vec![Reader::Vmagent]
        );
        assert_eq!(
            std::fs::read(dir.join("vmagent/p1.yml")).expect("read"),
            b"b: 2\n"
        );
        let companion = dir.join("vmagent/.p1.yml.swap");
        // Zeroed after the exchange: the old bytes do not stay readable.
        let zeroed = |len: usize| vec![0u8; len];
        assert_eq!(std::fs::read(&companion).expect("companion"), zeroed(5));
        // Longer, then shorter bytes through the same two inodes: nothing of the old is left.
        let mut before = "b: 2\n".len();
        // (The third writes into a companion longer than its bytes.)
        for (rev, bytes) in [(5, "b: 3333333333\n"), (6, "b: 4\n"), (7, "b: 5\n")] {
            let next = vec![
                one[0].clone(),
                file("vmagent/p1.yml", bytes, Reader::Vmagent),
            ];
            assert_eq!(
                write_all(&dir, &next, rev, &mut written).expect("again"),
                vec![Reader::Vmagent]
            );
            assert_eq!(
                std::fs::read(dir.join("vmagent/p1.yml")).expect("read"),
                bytes.as_bytes()
            );
            assert_eq!(
                std::fs::read(&companion).expect("companion"),
                zeroed(before)
            );
            before = bytes.len();
        }
        // A changed file is written; one no longer rendered is removed, with its companion.
        let two = vec![file(
            "victoriametrics-promscrape.yml",
            "a: 2\n",
            Reader::VictoriaMetrics,
        )];
        assert_eq!(
            write_all(&dir, &two, 8, &mut written).expect("changed"),
            vec![Reader::VictoriaMetrics, Reader::Vmagent]
        );
        assert!(!dir.join("vmagent/p1.yml").exists());
        assert!(!companion.exists());
        assert_eq!(
            std::fs::read(dir.join("victoriametrics-promscrape.yml")).expect("read"),
            b"a: 2\n"
        );
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).expect("manifest"))
                .expect("json");
        assert_eq!(manifest.revision, 8);
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            vec!["victoriametrics-promscrape.yml"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
