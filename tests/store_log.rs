//! The event log on real PostgreSQL: dense positions under concurrency, the stale-base check,
//! idempotent command ids, tamper detection by verify, and read filters.

mod support;

use pmmcp::commands::{CommandError, CommandMeta};
use pmmcp::domain::State;
use pmmcp::store::{self, AppendItem, Batch, LogHead, ReadFilter, Secrets, StoreError};
use support::{TestDb, add_node, count_events, register_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_dispatchers_leave_dense_positions_and_a_verified_chain() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let before = count_events(&pool).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..(1000 / 16 + usize::from(t < 1000 % 16)) {
                let r = d
                    .dispatch(add_node(&format!("n-{t}-{i}")), CommandMeta::new("test"))
                    .await;
                out.push(r.expect("applied"));
            }
            out
        }));
    }
    let mut applied = Vec::new();
    for t in tasks {
        applied.extend(t.await.expect("task"));
    }
    assert_eq!(applied.len(), 1000);
    let (n, min, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), min(position), max(position) FROM events")
            .fetch_one(&pool)
            .await
            .expect("q");
    assert_eq!(
        (n, min, max),
        (before + 1000, 1, before + 1000),
        "positions 1..N with no gap"
    );
    let mut positions: Vec<i64> = applied
        .iter()
        .map(|a| a.positions.expect("one event").0)
        .collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 1000, "every command got its own position");
    let report = store::log::verify(&pool).await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, before + 1000);
    let head = LogHead::load(&pool).await.expect("head");
    assert_eq!(hex::encode(head.hash), report.head_hash);
    assert_eq!(d.state().revision, before + 1000);
}

#[tokio::test]
async fn stale_base_appends_nothing() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let before = count_events(&pool).await;
    let state = d.state();
    let mut head = LogHead::load(&pool).await.expect("head");
    let stale = Batch {
        base_position: head.position - 1,
        recorded_at: chrono::Utc::now(),
        decided_by: "test".to_owned(),
        items: vec![AppendItem {
            meta: CommandMeta::new("test"),
            events: pmmcp::commands::decide(
                &state,
                &add_node("late"),
                &pmmcp::commands::Ctx::fixed(chrono::Utc::now(), 1),
            )
            .expect("decides"),
        }],
    };
    let err = store::log::append(&pool, &mut head, &stale, &state)
        .await
        .expect_err("stale base");
    assert!(
        matches!(err, StoreError::Conflict { expected, actual } if expected == before - 1 && actual == before),
        "{err:?}"
    );
    assert_eq!(count_events(&pool).await, before);
    assert_eq!(head.position, before, "the writer's head is unchanged");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM nodes WHERE node_name = 'late'")
        .fetch_one(&pool)
        .await
        .expect("q");
    assert_eq!(rows, 0, "no query-table row either");
    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM command_results")
        .fetch_one(&pool)
        .await
        .expect("q");
    assert_eq!(results, 1, "only the bootstrap's result");
}

#[tokio::test]
async fn repeating_a_command_id_returns_the_first_result_and_appends_nothing() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let meta = CommandMeta::with_id("client-42", "test");
    let first = d
        .dispatch(register_node("n1"), meta.clone())
        .await
        .expect("first");
    assert!(!first.duplicate);
    let count = count_events(&pool).await;
    let again = d
        .dispatch(register_node("n1"), meta.clone())
        .await
        .expect("repeat succeeds, not AlreadyExists");
    assert!(again.duplicate);
    assert_eq!(again.positions, first.positions);
    // Even with a different body: the id identifies the command.
    let other = d
        .dispatch(add_node("other"), meta.clone())
        .await
        .expect("repeat");
    assert_eq!(other.positions, first.positions);
    assert_eq!(count_events(&pool).await, count);
    // Repeats inside one batch get the first one's result.
    let meta2 = CommandMeta::with_id("client-43", "test");
    let results = d
        .dispatch_batch(vec![
            (add_node("twice"), meta2.clone()),
            (add_node("twice"), meta2.clone()),
        ])
        .await;
    let (a, b) = (
        results[0].clone().expect("a"),
        results[1].clone().expect("b"),
    );
    assert_eq!(a.positions, b.positions);
    assert!(b.duplicate && !a.duplicate);
    assert_eq!(count_events(&pool).await, count + 1);
    // And after a restart of the writer.
    drop(d);
    let (d2, _t) = pmmcp::commands::dispatcher::Dispatcher::start(pool.clone(), Default::default())
        .await
        .expect("restart");
    let again = d2
        .dispatch(register_node("n1"), meta)
        .await
        .expect("repeat after restart");
    assert_eq!(again.positions, first.positions);
    assert_eq!(count_events(&pool).await, count + 1);
}

#[tokio::test]
async fn a_row_edited_in_the_table_is_found_by_verify() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    for i in 0..5 {
        d.dispatch(register_node(&format!("n{i}")), CommandMeta::new("test"))
            .await
            .expect("applied");
    }
    assert!(store::log::verify(&pool).await.expect("verify").is_ok());
    sqlx::query("UPDATE events SET payload = payload || '{\"tampered\": true}' WHERE position = 7")
        .execute(&pool)
        .await
        .expect("tamper");
    let report = store::log::verify(&pool).await.expect("verify");
    let (pos, why) = report.first_error.expect("tampering is found");
    assert_eq!(pos, 7);
    assert!(why.contains("altered"), "{why}");
    assert_eq!(report.checked, 6);
}

#[tokio::test]
async fn verify_finds_a_deleted_row_and_an_edited_metadata() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    for i in 0..3 {
        d.dispatch(register_node(&format!("n{i}")), CommandMeta::new("test"))
            .await
            .expect("applied");
    }
    sqlx::query("UPDATE events SET metadata = jsonb_set(metadata, '{actor}', '\"someone-else\"') WHERE position = 5")
        .execute(&pool)
        .await
        .expect("tamper");
    assert_eq!(
        store::log::verify(&pool)
            .await
            .expect("verify")
            .first_error
            .map(|e| e.0),
        Some(5)
    );
    sqlx::query("DELETE FROM events WHERE position = 3")
        .execute(&pool)
        .await
        .expect("delete");
    let report = store::log::verify(&pool).await.expect("verify");
    let (pos, why) = report.first_error.expect("gap found");
    assert_eq!(pos, 4);
    assert!(why.contains("gap"), "{why}");
}

#[tokio::test]
async fn reading_forward_pages_and_filters_by_stream_and_type() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    for i in 0..10 {
        d.dispatch(register_node(&format!("n{i}")), CommandMeta::new("test"))
            .await
            .expect("applied");
    }
    let total = count_events(&pool).await;
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store::log::read(
            &pool,
            &ReadFilter {
                after,
                limit: 7,
                ..Default::default()
            },
            Secrets::Redact,
        )
        .await
        .expect("read");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().expect("non-empty").position;
        seen.extend(page.into_iter().map(|e| e.position));
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    let nodes = store::log::read(
        &pool,
        &ReadFilter {
            limit: 100,
            event_types: vec!["NodeAdded".into()],
            ..Default::default()
        },
        Secrets::Redact,
    )
    .await
    .expect("read");
    assert_eq!(nodes.len(), 11, "pmm-server and ten registered nodes");
    assert!(nodes.iter().all(|e| e.event_type == "NodeAdded"));
    let stream = nodes[3].stream_id.clone();
    let one = store::log::read(
        &pool,
        &ReadFilter {
            limit: 100,
            stream_id: Some(stream.clone()),
            ..Default::default()
        },
        Secrets::Redact,
    )
    .await
    .expect("read");
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0].stream_id.as_str(), one[0].stream_version),
        (stream.as_str(), 1)
    );
}

#[tokio::test]
async fn state_replayed_from_the_log_equals_the_writers_state() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    for i in 0..20 {
        d.dispatch(register_node(&format!("n{i}")), CommandMeta::new("test"))
            .await
            .expect("applied");
    }
    let mut replayed = State::default();
    store::log::catch_up(&pool, &mut replayed)
        .await
        .expect("replay");
    assert_eq!(replayed, d.state());
}

#[tokio::test]
async fn rejected_commands_append_nothing_and_fail_alone_in_their_batch() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let before = count_events(&pool).await;
    let results = d
        .dispatch_batch(vec![
            (add_node("a"), CommandMeta::new("t")),
            (add_node("a"), CommandMeta::new("t")),
            (add_node("b"), CommandMeta::new("t")),
        ])
        .await;
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(
        matches!(&results[1], Err(CommandError::AlreadyExists(m)) if m == "Node with name \"a\" already exists."),
        "{:?}",
        results[1]
    );
    assert_eq!(count_events(&pool).await, before + 2);
}
