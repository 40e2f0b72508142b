//! A writer process killed with SIGKILL in the middle of a batch leaves all of the batch or
//! none of it: no partial batch, no gap, a chain that verifies, and command ids that were not
//! recorded can be sent again.
//!
//! The writer is this test binary run again as a child (the ignored test `crash_child`), so the
//! kill hits a real process holding a real PostgreSQL transaction.

mod support;

use pmmcp::commands::dispatcher::{Dispatcher, DispatcherConfig};
use pmmcp::commands::settings::ChangeSettings;
use pmmcp::commands::{Command, CommandMeta};
use pmmcp::store::{self, LogHead};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::process::{Child, Stdio};
use std::time::Duration;
use support::*;

const BATCH: usize = 20;
const DEADLINE: Duration = Duration::from_secs(60);

fn batch(b: usize) -> Vec<(Command, CommandMeta)> {
    let mut items: Vec<_> = (0..BATCH)
        .map(|i| {
            (
                add_node(&format!("crash-{b}-{i}")),
                CommandMeta::with_id(format!("c-{b}-{i}"), "crash"),
            )
        })
        .collect();
    // The last command of every batch touches the settings row, so a test holding that row
    // stops the writer after it has inserted the batch's events. (A value unique to the batch,
    // so the command always changes something and is recorded.)
    let settings = ChangeSettings {
        pmm_public_address: Some(format!("pmm-{b}.example")),
        ..ChangeSettings::default()
    };
    items.push((
        Command::ChangeSettings(settings),
        CommandMeta::with_id(format!("c-{b}-s"), "crash"),
    ));
    items
}

/// The child: appends batches until it is killed (bounded, in case it is not).
#[tokio::test]
#[ignore = "the writer process of the crash tests; run by them"]
async fn crash_child() {
    let url = std::env::var("CRASH_DB_URL").expect("CRASH_DB_URL");
    let first: usize = std::env::var("CRASH_FIRST_BATCH")
        .expect("CRASH_FIRST_BATCH")
        .parse()
        .expect("number");
    let pool = store::connect(&url, 4).await.expect("connect");
    let (d, _task) = Dispatcher::start(pool, DispatcherConfig::default())
        .await
        .expect("dispatcher");
    for b in first..first + 10_000 {
        for r in d.dispatch_batch(batch(b)).await {
            r.expect("applied");
        }
    }
}

fn spawn_child(url: &str, first_batch: usize) -> Child {
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
        .env("CRASH_DB_URL", url)
        .env("CRASH_FIRST_BATCH", first_batch.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer")
}

/// SIGKILL, then wait until PostgreSQL has finished with the dead writer's session (a COMMIT
/// it sent just before dying may still complete; after this nothing more can change).
async fn kill(mut child: Child, pool: &PgPool) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    kill_done(pool).await;
}

async fn kill_done(pool: &PgPool) {
    wait_until("the killed writer's session to end", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')",
        )
        .fetch_one(pool)
        .await
        .expect("activity");
        n == 0
    })
    .await;
}

/// Every batch is in the log whole or not at all, and the log, its head and the command
/// results agree.
async fn assert_whole_batches(pool: &PgPool) {
    let report = store::log::verify(pool).await.expect("verify");
    assert!(report.is_ok(), "chain: {:?}", report.first_error);
    let partial: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split_part(command_id, '-', 2) AS b, count(*) FROM command_results \
         WHERE command_id LIKE 'c-%' GROUP BY 1 HAVING count(*) <> $1",
    )
    .bind((BATCH + 1) as i64)
    .fetch_all(pool)
    .await
    .expect("batches");
    assert!(partial.is_empty(), "partial batches: {partial:?}");
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e WHERE e.metadata->>'command_id' LIKE 'c-%' AND NOT EXISTS \
         (SELECT 1 FROM command_results r WHERE r.command_id = e.metadata->>'command_id')",
    )
    .fetch_one(pool)
    .await
    .expect("orphans");
    assert_eq!(orphans, 0, "events without a recorded command");
    // The query tables match a rebuild from the log.
    let before = store::query_tables::snapshot(pool).await.expect("snapshot");
    store::query_tables::rebuild(pool).await.expect("rebuild");
    assert_eq!(
        store::query_tables::snapshot(pool).await.expect("snapshot"),
        before
    );
}

async fn prepared() -> (TestDb, PgPool) {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    d.shutdown().await;
    (db, pool)
}

/// Holds the settings row, starts a writer and waits until its first batch has inserted its
/// events and is waiting for that row. Returns the writer, the held row and the backend pid.
async fn writer_stopped_inside_its_batch(
    db: &TestDb,
    pool: &PgPool,
    first: usize,
) -> (Child, PgConnection, i32) {
    let mut blocker = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut blocker)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM settings FOR UPDATE")
        .execute(&mut blocker)
        .await
        .expect("lock");
    let child = spawn_child(&db.url, first);
    let stopped = "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' \
         AND l.relation = 'events'::regclass AND l.mode = 'RowExclusiveLock' AND l.granted";
    wait_until(
        "the writer to insert its batch and wait on the settings row",
        DEADLINE,
        || async {
            let found: Option<i32> = sqlx::query_scalar(stopped)
                .fetch_optional(pool)
                .await
                .expect("locks");
            found.is_some()
        },
    )
    .await;
    // It stays stopped until the row is released, so this is the same backend.
    let pid: i32 = sqlx::query_scalar(stopped)
        .fetch_one(pool)
        .await
        .expect("pid");
    (child, blocker, pid)
}

async fn release(mut blocker: PgConnection) {
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("release");
}

#[tokio::test]
async fn a_writer_killed_inside_its_batch_leaves_all_of_it_or_none_and_raft_applies_it_once() {
    let (db, pool) = prepared().await;
    let events_before = count_events(&pool).await;
    let head_before = LogHead::load(&pool).await.expect("head");
    let whole = BATCH as i64 + 1;

    // 1. The writer dies, and its database session with it, while applying a committed Raft
    //    entry whose events are inserted but not committed: none of the batch is in the log.
    let (mut child, blocker, pid) = writer_stopped_inside_its_batch(&db, &pool, 0).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .expect("terminate");
    assert!(terminated);
    release(blocker).await;
    kill_done(&pool).await;
    assert_eq!(
        count_events(&pool).await,
        events_before,
        "none of the batch"
    );
    let head = LogHead::load(&pool).await.expect("head");
    assert_eq!(
        (head.position, head.hash),
        (head_before.position, head_before.hash)
    );
    assert_whole_batches(&pool).await;
    // The entry is in the Raft log, committed: the restarted node applies it, exactly once.
    let (d, _task) = Dispatcher::start(pool.clone(), DispatcherConfig::default())
        .await
        .expect("restart");
    d.wait_for(events_before + whole, DEADLINE)
        .await
        .expect("re-applied");
    for r in d.dispatch_batch(batch(0)).await {
        assert!(
            r.expect("applied").duplicate,
            "batch 0 was applied from the Raft log"
        );
    }
    assert_eq!(count_events(&pool).await, events_before + whole);
    d.shutdown().await;

    // 2. The writer dies after PostgreSQL has the whole apply statement: the batch is one
    //    statement, so PostgreSQL completes it without the writer: all of the batch. (With
    //    client_connection_check_interval set, PostgreSQL would notice the dead client and
    //    abort instead: none of it. Pinned off here so the outcome is deterministic.)
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE {} SET client_connection_check_interval = 0",
        db.name
    )))
    .execute(&pool)
    .await
    .expect("pin the setting");
    let (mut child, blocker, _) = writer_stopped_inside_its_batch(&db, &pool, 1).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    release(blocker).await;
    kill_done(&pool).await;
    assert_eq!(
        count_events(&pool).await,
        events_before + 2 * whole,
        "all of the batch"
    );
    assert_whole_batches(&pool).await;
    // Its log id was recorded with it, so the restarted node does not apply it again.
    let (d, _task) = Dispatcher::start(pool.clone(), DispatcherConfig::default())
        .await
        .expect("restart");
    for r in d.dispatch_batch(batch(1)).await {
        assert!(r.expect("applied").duplicate, "batch 1 was recorded whole");
    }
    assert_eq!(
        count_events(&pool).await,
        events_before + 2 * whole,
        "applied exactly once"
    );
    assert_whole_batches(&pool).await;
    d.shutdown().await;
}

#[tokio::test]
async fn writers_killed_at_arbitrary_moments_leave_whole_batches() {
    let (db, pool) = prepared().await;
    let mut first = 0;
    for round in 1..=3i64 {
        let child = spawn_child(&db.url, first);
        // Let some batches commit, then kill wherever the writer happens to be.
        let target = round * 5 * (BATCH as i64 + 1);
        wait_until("some batches to commit", DEADLINE, || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM command_results WHERE command_id LIKE 'c-%'",
            )
            .fetch_one(&pool)
            .await
            .expect("count");
            n >= target
        })
        .await;
        kill(child, &pool).await;
        assert_whole_batches(&pool).await;
        first += 100_000;
        // The next writer starts on what this one left (committed Raft entries included).
    }
    // A later writer goes on from the same head.
    let (d, _task) = Dispatcher::start(pool.clone(), DispatcherConfig::default())
        .await
        .expect("restart");
    d.dispatch(add_node("after-the-crashes"), CommandMeta::new("test"))
        .await
        .expect("applied");
    assert_whole_batches(&pool).await;
}
