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
    // A writer whose head is one event behind: the Rust-side check passes, the database's
    // check refuses it.
    let mut head = LogHead::load(&pool).await.expect("head");
    head.position -= 1;
    let stale = one_node_batch(&state, head.position, "late");
    let err = store::log::append(&pool, &mut head, &stale, &state)
        .await
        .expect_err("stale base");
    assert!(
        matches!(err, StoreError::Conflict { expected, actual } if expected == before - 1 && actual == before),
        "{err:?}"
    );
    assert_eq!(count_events(&pool).await, before);
    assert_eq!(head.position, before - 1, "the writer's head is unchanged");
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
    d.shutdown().await;
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

#[tokio::test]
async fn concurrent_adds_of_one_name_let_exactly_one_succeed() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let before = count_events(&pool).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                d.dispatch(add_node("contested"), CommandMeta::new("test"))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(
                e.class(),
                Some(pmmcp::commands::ErrorClass::AlreadyExists),
                "{e}"
            ),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(count_events(&pool).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_id_sent_concurrently_appends_once() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let before = count_events(&pool).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let d = d.clone();
            // Different bodies, one id: the first decided wins, the rest get its result.
            tokio::spawn(async move {
                d.dispatch(
                    add_node(&format!("same-id-{i}")),
                    CommandMeta::with_id("one-id", "test"),
                )
                .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task").expect("applied"));
    }
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.positions == results[0].positions));
    assert_eq!(count_events(&pool).await, before + 1);
}

#[tokio::test]
async fn rejections_and_no_ops_are_recorded_under_their_command_id() {
    use pmmcp::commands::Command;
    use pmmcp::commands::settings::ChangeSettings;
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    // A rejection is the answer for that id, even if the command sent again would succeed.
    let bad = d
        .dispatch(add_node(""), CommandMeta::with_id("rejected-once", "test"))
        .await
        .expect_err("empty name");
    let again = d
        .dispatch(
            add_node("fine"),
            CommandMeta::with_id("rejected-once", "test"),
        )
        .await
        .expect_err("recorded");
    assert_eq!(bad, again);
    // A command that changed nothing stays "changed nothing", even after the state moved on.
    let same = || {
        Command::ChangeSettings(ChangeSettings {
            enable_telemetry: Some(true),
            ..Default::default()
        })
    };
    d.dispatch(same(), CommandMeta::new("test"))
        .await
        .expect("set");
    let noop = d
        .dispatch(same(), CommandMeta::with_id("no-op", "test"))
        .await
        .expect("no-op");
    assert_eq!((noop.positions, noop.duplicate), (None, false));
    let off = Command::ChangeSettings(ChangeSettings {
        enable_telemetry: Some(false),
        ..Default::default()
    });
    d.dispatch(off, CommandMeta::new("test"))
        .await
        .expect("changed");
    let before = count_events(&pool).await;
    let repeat = d
        .dispatch(same(), CommandMeta::with_id("no-op", "test"))
        .await
        .expect("repeat");
    assert_eq!((repeat.positions, repeat.duplicate), (None, true));
    assert_eq!(
        count_events(&pool).await,
        before,
        "the repeat did not turn telemetry back on"
    );
    assert_eq!(d.state().settings.telemetry_enabled, Some(false));
    // Batches that only recorded results left the head and its hash intact.
    assert!(store::log::verify(&pool).await.expect("verify").is_ok());
}

#[tokio::test]
async fn bad_metadata_is_refused_alone() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let before = count_events(&pool).await;
    let long = "x".repeat(300);
    let results = d
        .dispatch_batch(vec![
            (add_node("good-1"), CommandMeta::new("test")),
            (add_node("bad-1"), CommandMeta::with_id("nul\0id", "test")),
            (add_node("bad-2"), CommandMeta::with_id(long, "test")),
            (add_node("bad-3"), CommandMeta::with_id("", "test")),
            (add_node("good-2"), CommandMeta::new("test")),
        ])
        .await;
    assert!(results[0].is_ok() && results[4].is_ok(), "{results:?}");
    for r in &results[1..4] {
        let e = r.as_ref().expect_err("refused");
        assert_eq!(
            e.class(),
            Some(pmmcp::commands::ErrorClass::InvalidArgument),
            "{e}"
        );
    }
    assert_eq!(count_events(&pool).await, before + 2);
}

#[tokio::test]
async fn a_batch_that_does_not_chain_on_the_stored_head_is_refused() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    let state = d.state();
    let before = count_events(&pool).await;
    let mut head = LogHead::load(&pool).await.expect("head");
    head.hash = [7; 32];
    let batch = one_node_batch(&state, head.position, "forked");
    let err = store::log::append(&pool, &mut head, &batch, &state)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("does not chain"), "{err}");
    assert_eq!(count_events(&pool).await, before);
    assert!(store::log::verify(&pool).await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_batch_the_database_refuses_at_apply_stops_the_node_with_nothing_half_written() {
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;
    // Something only the database knows is wrong with one command (here a trigger; in life a
    // constraint the domain rules missed). Under Raft, apply must not fail: if it does, the
    // node stops rather than diverge from the others.
    for sql in [
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.node_name = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON nodes FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    ] {
        sqlx::query(sql).execute(&pool).await.expect("trigger");
    }
    let before = count_events(&pool).await;
    let e = d
        .dispatch(add_node("poison"), CommandMeta::new("test"))
        .await
        .expect_err("refused");
    assert!(e.class().is_none(), "not a business rejection: {e:?}");
    let e = d
        .dispatch(add_node("fine"), CommandMeta::new("test"))
        .await
        .expect_err("the node has stopped");
    assert!(e.class().is_none(), "{e:?}");
    assert_eq!(count_events(&pool).await, before, "nothing half written");
    assert!(store::log::verify(&pool).await.expect("verify").is_ok());
}

/// A batch adding one node, decided on `state`, claiming `base` as its base position.
fn one_node_batch(state: &pmmcp::domain::State, base: i64, name: &str) -> Batch {
    let ctx = pmmcp::commands::Ctx::fixed(chrono::Utc::now(), 1);
    Batch {
        base_position: base,
        recorded_at: chrono::Utc::now(),
        decided_by: "test".to_owned(),
        items: vec![AppendItem::new(
            CommandMeta::new("test"),
            pmmcp::commands::decide(state, &add_node(name), &ctx).expect("decides"),
        )]
        .into(),
        unappended: Default::default(),
    }
}
