//! Integration tests for the embedded PostgreSQL cluster. They need PostgreSQL's
//! server binaries (Debian: `postgresql`) and, when run as root, a `postgres` user.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pmmcp::embedded_pg::EmbeddedPostgres;
use sqlx::Connection;

/// A fresh directory under the system temp dir, removed on drop. Mode 0755 so the
/// `postgres` user can traverse it when the tests run as root.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("pmmcp-epg-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

async fn query_one(url: &str, sql: &'static str) -> String {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let v: String = sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.expect("close");
    v
}

async fn exec(url: &str, sql: &'static str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
    conn.close().await.expect("close");
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

async fn start(data: &Path) -> EmbeddedPostgres {
    init_tracing();
    let t = Instant::now();
    let pg = EmbeddedPostgres::start(data, None)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    eprintln!("start took {:?}; url {}", t.elapsed(), pg.database_url());
    pg
}

async fn stop(pg: EmbeddedPostgres, pid_file: &Path) {
    pg.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    assert!(!pid_file.exists(), "postmaster.pid still there after stop");
}

/// A live process that is not a postmaster, owned by the user PostgreSQL runs as
/// (so pg_ctl, running as that user, sees its PID as alive).
fn foreign_process() -> Child {
    let mut cmd = Command::new("cat");
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    if nix::unistd::Uid::effective().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .expect("user lookup")
            .expect("postgres user");
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    cmd.spawn().expect("spawn cat")
}

#[tokio::test]
async fn start_restart_reuse_and_stale_pid_file() {
    let tmp = TempDir::new("life");
    let data = tmp.0.join("data");
    let cluster = data.join("postgres");
    let pid_file = cluster.join("postmaster.pid");

    // First start: initdb.
    let pg = start(&data).await;
    let url = pg.database_url();
    assert!(url.contains("host=/"), "expected a unix socket URL: {url}");
    assert_eq!(query_one(&url, "SELECT 1::text").await, "1");
    assert_eq!(
        query_one(&url, "SELECT current_database()::text").await,
        "pmm"
    );
    exec(
        &url,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept');",
    )
    .await;
    let pid_contents = fs::read_to_string(&pid_file).expect("postmaster.pid while running");
    let pg_version_mtime = fs::metadata(cluster.join("PG_VERSION"))
        .and_then(|m| m.modified())
        .expect("PG_VERSION");
    stop(pg, &pid_file).await;

    // Restart: no second initdb, data kept.
    let pg = start(&data).await;
    assert_eq!(
        query_one(&pg.database_url(), "SELECT v FROM t").await,
        "kept"
    );
    let mtime = fs::metadata(cluster.join("PG_VERSION"))
        .and_then(|m| m.modified())
        .expect("PG_VERSION");
    assert_eq!(mtime, pg_version_mtime, "initdb ran again");

    // A second start while the server runs adopts it rather than failing.
    let again = start(&data).await;
    assert_eq!(again.database_url(), pg.database_url());
    assert_eq!(
        query_one(&again.database_url(), "SELECT v FROM t").await,
        "kept"
    );
    stop(again, &pid_file).await;
    // The first handle's server is gone already; stopping it is not an error.
    stop(pg, &pid_file).await;

    // Crash leftover: postmaster.pid naming a dead PID (pg_ctl/postgres handle it).
    fs::write(&pid_file, &pid_contents).expect("write stale pid file");
    let pg = start(&data).await;
    assert_eq!(
        query_one(&pg.database_url(), "SELECT v FROM t").await,
        "kept"
    );
    stop(pg, &pid_file).await;

    // Crash leftover whose PID was reused by an unrelated live process.
    let mut foreign = foreign_process();
    let mut lines: Vec<String> = pid_contents.lines().map(str::to_owned).collect();
    lines[0] = foreign.id().to_string();
    fs::write(&pid_file, lines.join("\n") + "\n").expect("write stale pid file");
    let pg = start(&data).await;
    assert_eq!(
        query_one(&pg.database_url(), "SELECT v FROM t").await,
        "kept"
    );
    stop(pg, &pid_file).await;
    foreign.kill().expect("kill cat");
    foreign.wait().expect("reap cat");

    // Dropping without stop() stops the server too.
    let pg = start(&data).await;
    drop(pg);
    assert!(!pid_file.exists(), "postmaster.pid still there after drop");

    // A server that cannot start: the error carries the server log's explanation.
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(cluster.join("postgresql.conf"))
        .expect("open postgresql.conf");
    writeln!(conf, "shared_buffers = 'plenty'").expect("append");
    let err = match EmbeddedPostgres::start(&data, None).await {
        Ok(_) => panic!("started with an invalid setting"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("shared_buffers"), "{err}");
    assert!(
        !pid_file.exists(),
        "postmaster.pid left behind by a failed start"
    );
}

#[tokio::test]
async fn long_data_dir_falls_back_to_loopback_tcp() {
    let tmp = TempDir::new("long");
    // Long enough that <data>/postgres-run/.s.PGSQL.5432 exceeds 107 bytes.
    let data = tmp.0.join("d".repeat(100));
    let pid_file = data.join("postgres").join("postmaster.pid");
    let pg = start(&data).await;
    let url = pg.database_url();
    assert!(
        url.contains("@127.0.0.1:"),
        "expected a loopback TCP URL: {url}"
    );
    assert_eq!(query_one(&url, "SELECT 1::text").await, "1");
    assert_eq!(
        query_one(&url, "SELECT current_setting('listen_addresses')").await,
        "127.0.0.1"
    );
    stop(pg, &pid_file).await;
}

#[tokio::test]
async fn untraversable_parent_is_refused_when_root() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // Only root switches to the `postgres` user.
    }
    let tmp = TempDir::new("private");
    let private = tmp.0.join("private");
    fs::create_dir_all(&private).expect("create dir");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod");
    let err = match EmbeddedPostgres::start(&private.join("data"), None).await {
        Ok(_) => panic!("started below a 0700 root directory"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("{} ", private.display())), "{err}");
    assert!(err.contains("not traversable"), "{err}");
    assert!(err.contains("--database-url"), "{err}");
}

#[tokio::test]
async fn missing_binaries_give_one_clear_error() {
    let tmp = TempDir::new("nobin");
    let empty_bin = tmp.0.join("bin");
    fs::create_dir_all(&empty_bin).expect("create bin dir");
    let err = match EmbeddedPostgres::start(&tmp.0.join("data"), Some(&empty_bin)).await {
        Ok(_) => panic!("started without binaries"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("`apt-get install postgresql`"), "{err}");
    assert!(err.contains("--database-url"), "{err}");
    assert!(err.contains("PMM_DATABASE_URL"), "{err}");
    assert!(err.contains(&empty_bin.display().to_string()), "{err}");
}
