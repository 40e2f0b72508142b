//! openraft's own storage test suite against the PostgreSQL log store and state machine, each
//! case on a fresh database.

mod support;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use pmmcp::raft::TypeConfig;
use pmmcp::raft::log_store::PgLogStore;
use pmmcp::raft::state_machine::PgStateMachine;
use support::{TestDb, count_events};

struct PgStores;

impl StoreBuilder<TypeConfig, PgLogStore, PgStateMachine, TestDb> for PgStores {
    async fn build(&self) -> Result<(TestDb, PgLogStore, PgStateMachine), StorageError<u64>> {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let sm = PgStateMachine::open(pool.clone())
            .await
            .expect("state machine opens");
        // The database guard goes to the suite, which drops it (and the database) after the case.
        Ok((db, PgLogStore::new(pool), sm))
    }
}

// A plain test: the suite makes a runtime per case.
#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(PgStores).expect("every case of the suite passes");
}

/// An entry carrying the given batch at `index` (term 1, leader 1).
fn normal(index: u64, batch: pmmcp::store::Batch) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(batch),
    }
}

#[tokio::test]
async fn applying_a_batch_appends_it_and_a_stale_one_is_refused_but_recorded() {
    use openraft::storage::RaftStateMachine;
    use pmmcp::commands::{Command, CommandMeta, Ctx, decide};
    use pmmcp::domain::State;
    use pmmcp::raft::Outcome;
    use pmmcp::store::{AppendItem, Batch};

    let db = TestDb::new().await;
    let pool = db.pool().await;
    let mut sm = PgStateMachine::open(pool.clone()).await.expect("open");
    let events = decide(
        &State::default(),
        &Command::BootstrapServer(Default::default()),
        &Ctx::fixed(chrono::Utc::now(), 7),
    )
    .expect("decides");
    let n = events.len() as i64;
    let batch = Batch {
        base_position: 0,
        recorded_at: pmmcp::domain::ids::truncate_to_micros(chrono::Utc::now()),
        decided_by: "node-1".to_owned(),
        items: vec![AppendItem::new(
            CommandMeta::with_id("boot", "system"),
            events,
        )]
        .into(),
        unappended: Default::default(),
    };
    // Applied: appended, with the entry's log id recorded in the same transaction.
    let out = sm.apply([normal(1, batch.clone())]).await.expect("apply");
    // Another node applying the same entry writes the same chain: event ids, times and hashes
    // all come from the entry.
    let replica = TestDb::new().await;
    let replica_pool = replica.pool().await;
    let mut replica_sm = PgStateMachine::open(replica_pool.clone())
        .await
        .expect("open");
    replica_sm
        .apply([normal(1, batch.clone())])
        .await
        .expect("apply");
    assert_eq!(
        pmmcp::store::LogHead::load(&replica_pool)
            .await
            .expect("head")
            .hash,
        pmmcp::store::LogHead::load(&pool).await.expect("head").hash,
        "replicas hold the same history"
    );
    assert_eq!(out, vec![Outcome::Appended(vec![(1, n)])]);
    // The same batch again (a deposed leader's late proposal): its base is stale; nothing is
    // written, and the entry still counts as applied.
    let out = sm.apply([normal(2, batch)]).await.expect("apply");
    assert_eq!(out, vec![Outcome::Stale { base: 0, head: n }]);
    assert_eq!(count_events(&pool).await, n);
    let (applied, _) = sm.applied_state().await.expect("state");
    assert_eq!(applied.map(|l| l.index), Some(2));
    // A restarted state machine resumes from what was committed.
    let mut reopened = PgStateMachine::open(pool.clone()).await.expect("reopen");
    assert_eq!(
        reopened
            .applied_state()
            .await
            .expect("state")
            .0
            .map(|l| l.index),
        Some(2)
    );
    assert!(
        pmmcp::store::log::verify(&pool)
            .await
            .expect("verify")
            .is_ok()
    );
    // A snapshot of it installs on another node's empty database with the same history.
    let mut builder = sm.get_snapshot_builder().await;
    let snap = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .expect("snapshot");
    let other = TestDb::new().await;
    let other_pool = other.pool().await;
    let mut other_sm = PgStateMachine::open(other_pool.clone())
        .await
        .expect("open");
    other_sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(
        other_sm
            .applied_state()
            .await
            .expect("state")
            .0
            .map(|l| l.index),
        Some(2)
    );
    assert_eq!(
        pmmcp::store::LogHead::load(&other_pool)
            .await
            .expect("head")
            .hash,
        pmmcp::store::LogHead::load(&pool).await.expect("head").hash
    );
    assert_eq!(
        pmmcp::store::query_tables::snapshot(&other_pool)
            .await
            .expect("rows"),
        pmmcp::store::query_tables::snapshot(&pool)
            .await
            .expect("rows")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_one_commits_applies_and_resumes_after_a_restart() {
    use pmmcp::commands::{Command, CommandMeta, Ctx, decide};
    use pmmcp::domain::State;
    use pmmcp::raft::Outcome;
    use pmmcp::raft::node::{NodeConfig, start};
    use pmmcp::store::{AppendItem, Batch};
    use std::time::Duration;

    let db = TestDb::new().await;
    let pool = db.pool().await;
    let node = start(pool.clone(), NodeConfig::single(), Duration::from_secs(30))
        .await
        .expect("leads");
    let events = decide(
        &State::default(),
        &Command::BootstrapServer(Default::default()),
        &Ctx::fixed(chrono::Utc::now(), 3),
    )
    .expect("decides");
    let n = events.len() as i64;
    let batch = |base: i64, events| Batch {
        base_position: base,
        recorded_at: pmmcp::domain::ids::truncate_to_micros(chrono::Utc::now()),
        decided_by: "node-1".to_owned(),
        items: vec![AppendItem::new(CommandMeta::new("test"), events)].into(),
        unappended: Default::default(),
    };
    let written = node
        .raft
        .client_write(batch(0, events.clone()))
        .await
        .expect("committed");
    assert_eq!(written.data, Outcome::Appended(vec![(1, n)]));
    assert_eq!(node.applied.borrow().revision, n);
    // A batch on a stale base is refused as a result, not an error.
    let stale = node
        .raft
        .client_write(batch(0, events))
        .await
        .expect("committed");
    assert_eq!(stale.data, Outcome::Stale { base: 0, head: n });
    node.raft.shutdown().await.expect("shutdown");
    drop(node);

    // Restarted: the same cluster, the same state, nothing applied twice.
    let node = start(pool.clone(), NodeConfig::single(), Duration::from_secs(30))
        .await
        .expect("leads again");
    assert_eq!(node.applied.borrow().revision, n);
    assert_eq!(count_events(&pool).await, n);
    assert!(
        pmmcp::store::log::verify(&pool)
            .await
            .expect("verify")
            .is_ok()
    );
    node.raft.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_batch_repeating_a_recorded_command_id_is_refused_as_stale_and_the_node_goes_on() {
    use openraft::storage::RaftStateMachine;
    use pmmcp::commands::{Command, CommandMeta, Ctx, decide};
    use pmmcp::domain::State;
    use pmmcp::raft::Outcome;
    use pmmcp::store::{AppendItem, Batch};

    let db = TestDb::new().await;
    let pool = db.pool().await;
    let mut sm = PgStateMachine::open(pool.clone()).await.expect("open");
    let now = pmmcp::domain::ids::truncate_to_micros(chrono::Utc::now());
    // A deposed leader's entry recorded command "c1" as a no-op: the head did not move.
    let noop = Batch {
        base_position: 0,
        recorded_at: now,
        decided_by: "node-1".to_owned(),
        items: Default::default(),
        unappended: vec![("c1".to_owned(), None)].into(),
    };
    let out = sm.apply([normal(1, noop)]).await.expect("apply");
    assert_eq!(out, [Outcome::Appended(vec![])]);
    // The next leader decided "c1" before applying that entry: same base, events this time.
    let events = decide(
        &State::default(),
        &Command::BootstrapServer(Default::default()),
        &Ctx::fixed(chrono::Utc::now(), 9),
    )
    .expect("decides");
    let repeat = Batch {
        base_position: 0,
        recorded_at: now,
        decided_by: "node-2".to_owned(),
        items: vec![AppendItem::new(CommandMeta::with_id("c1", "t"), events)].into(),
        unappended: Default::default(),
    };
    let out = sm
        .apply([normal(2, repeat)])
        .await
        .expect("refused, not failed");
    assert_eq!(out, [Outcome::Stale { base: 0, head: 0 }]);
    assert_eq!(count_events(&pool).await, 0);
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied.map(|l| l.index), Some(2));
}
