//! Three (and four) in-process nodes over the real gRPC transport, each on its own database:
//! replication, forwarding, linearizable reads, partitions, snapshots for a late node, and a
//! restart of the whole cluster.

mod support;

use pmmcp::commands::CommandMeta;
use pmmcp::commands::{Command, CommandError};
use pmmcp::raft::proto::{AddLearnerRequest, ChangeMembershipRequest, Member, StatusRequest};
use std::sync::Arc;
use std::time::Duration;
use support::cluster::*;
use support::*;

fn bootstrap() -> (Command, CommandMeta) {
    (
        Command::BootstrapServer(Default::default()),
        CommandMeta::with_id("bootstrap", "system"),
    )
}

/// Three voters with the PMM Server fixtures recorded through node `via`.
async fn bootstrapped(opts: Opts, via: usize) -> Vec<TestNode> {
    let nodes = three_nodes(opts).await;
    let (cmd, meta) = bootstrap();
    nodes[via]
        .dispatcher
        .dispatch(cmd, meta)
        .await
        .expect("bootstrap");
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_take_writes_on_any_node_and_agree_on_one_history() {
    let nodes = bootstrapped(Opts::default(), 2).await;

    // Writes on every node, concurrently; followers forward them to the leader.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let d = nodes[i % 3].dispatcher.clone();
        tasks.push(tokio::spawn(async move {
            d.dispatch(
                add_node(&format!("n{i}")),
                CommandMeta::with_id(format!("c{i}"), "t"),
            )
            .await
        }));
    }
    let mut last = 0;
    for t in tasks {
        let applied = t.await.expect("task").expect("applied");
        last = last.max(applied.revision);
    }
    // A linearizable read on a follower sees every acknowledged write.
    let state = nodes[1]
        .dispatcher
        .linearizable_state(Duration::from_secs(10))
        .await
        .expect("linearizable read");
    assert!(state.revision >= last);
    assert!(state.nodes.values().any(|n| n.node_name == "n59"));

    // A repeat sent to another node is the same command: nothing appended again.
    let again = nodes[2]
        .dispatcher
        .dispatch(add_node("n7"), CommandMeta::with_id("c7", "t"))
        .await
        .expect("repeat");
    assert!(again.duplicate);

    let pools: Vec<_> = nodes.iter().map(|n| &n.pool).collect();
    let (position, _) = converged(&pools, last).await;
    assert_eq!(position, last);

    // Status from a follower: the leader, three voters, each caught up.
    let mut client = nodes[1].cluster_client();
    wait_until(
        "every member to report no lag",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let s = client
                    .status(StatusRequest {})
                    .await
                    .expect("status")
                    .into_inner();
                s.members.len() == 3
                    && s.members
                        .iter()
                        .all(|m| m.voter && m.lag == Some(0) && m.error.is_empty())
            }
        },
    )
    .await;
    let s = client
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.leader, Some(1));
    assert!(s.members.iter().all(|m| m.revision == last), "{s:?}");
    let hashes: std::collections::HashSet<_> = s.members.iter().map(|m| &m.head_hash).collect();
    assert_eq!(hashes.len(), 1);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_cannot_commit_the_majority_goes_on_and_healing_leaves_one_history() {
    let nodes = bootstrapped(Opts::default(), 0).await;
    let before = converged(&[&nodes[0].pool, &nodes[1].pool, &nodes[2].pool], 1).await;
    let term = nodes[0].dispatcher.raft().metrics().borrow().current_term;

    // Node 1 (the leader) and the others cannot reach each other.
    nodes[0].faults.block(2);
    nodes[0].faults.block(3);
    nodes[1].faults.block(1);
    nodes[2].faults.block(1);
    let d1 = nodes[0].dispatcher.clone();
    let minority = tokio::spawn(async move {
        d1.dispatch(add_node("minority"), CommandMeta::with_id("minority", "t"))
            .await
    });
    // The majority elects a leader of a later term.
    let majority = [&nodes[1], &nodes[2]];
    let l = wait_for_leader(&majority, Duration::from_secs(10)).await;
    assert!(
        majority[l]
            .dispatcher
            .raft()
            .metrics()
            .borrow()
            .current_term
            > term
    );
    // All that time the old leader could not commit: its write waits, its log head stays.
    assert!(!minority.is_finished());
    assert_eq!(head(&nodes[0].pool).await, before);

    let applied = nodes[2]
        .dispatcher
        .dispatch(add_node("majority"), CommandMeta::with_id("majority", "t"))
        .await
        .expect("the majority commits");
    assert!(applied.revision > before.0);

    for n in &nodes {
        n.faults.heal();
    }
    // The old leader steps down, drops its uncommitted entry, and its caller's command goes
    // to the new leader with the same id: applied once.
    let minority = minority
        .await
        .expect("task")
        .expect("applied after healing");
    assert!(!minority.duplicate);
    let pools: Vec<_> = nodes.iter().map(|n| &n.pool).collect();
    converged(&pools, minority.revision.max(applied.revision)).await;
    for p in &pools {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT node_name FROM nodes WHERE node_name IN ('minority', 'majority') ORDER BY 1",
        )
        .fetch_all(*p)
        .await
        .expect("names");
        assert_eq!(names, ["majority", "minority"]);
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_after_the_log_was_purged_gets_a_snapshot_and_becomes_a_voter() {
    let opts = Opts {
        snapshot_every: 10,
        keep_logs: 0,
    };
    let nodes = bootstrapped(opts, 0).await;
    for i in 0..40 {
        nodes[i % 3]
            .dispatcher
            .dispatch(add_node(&format!("n{i}")), CommandMeta::new("t"))
            .await
            .expect("applied");
    }
    wait_until(
        "the leader to purge its log",
        Duration::from_secs(20),
        || {
            let purged = nodes[0].dispatcher.raft().metrics().borrow().purged;
            async move { purged.is_some_and(|p| p.index > 5) }
        },
    )
    .await;

    let n4 = TestNode::start(4, Arc::new(TestDb::new().await), None, false, opts).await;
    // Asked of a follower, carried out by the leader; returns once node 4 has caught up.
    nodes[1]
        .cluster_client()
        .add_learner(AddLearnerRequest {
            member: Some(Member {
                id: 4,
                addr: n4.addr.to_string(),
            }),
        })
        .await
        .expect("add learner");
    // It got the history by a snapshot (its log never held the purged entries).
    let installed: i64 = sqlx::query_scalar("SELECT count(*) FROM raft_snapshot")
        .fetch_one(&n4.pool)
        .await
        .expect("snapshot row");
    assert_eq!(installed, 1, "node 4 caught up by a snapshot");
    let first_entry: Option<i64> = sqlx::query_scalar("SELECT min(log_index) FROM raft_log")
        .fetch_one(&n4.pool)
        .await
        .expect("first entry");
    let purged = nodes[0]
        .dispatcher
        .raft()
        .metrics()
        .borrow()
        .purged
        .map(|p| p.index);
    assert!(
        first_entry.is_none_or(|i| Some(i as u64) > purged),
        "{first_entry:?} {purged:?}"
    );
    nodes[0]
        .cluster_client()
        .change_membership(ChangeMembershipRequest {
            voters: vec![1, 2, 3, 4],
            retain: false,
        })
        .await
        .expect("promote");
    let applied = n4
        .dispatcher
        .dispatch(add_node("from-4"), CommandMeta::new("t"))
        .await
        .expect("a write through node 4");
    let pools = [&nodes[0].pool, &nodes[1].pool, &nodes[2].pool, &n4.pool];
    converged(&pools, applied.revision).await;
    assert_eq!(count_events(&n4.pool).await, applied.revision);
    let status = n4
        .cluster_client()
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 4);
    for n in nodes.into_iter().chain([n4]) {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_all_three_and_starting_them_again_loses_and_repeats_nothing() {
    let nodes = bootstrapped(Opts::default(), 0).await;
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let id = format!("before-{i}");
        nodes[i % 3]
            .dispatcher
            .dispatch(add_node(&id), CommandMeta::with_id(&id, "t"))
            .await
            .expect("applied");
        acknowledged.push(id);
    }
    let pools: Vec<_> = nodes.iter().map(|n| &n.pool).collect();
    let (position, hash) = converged(&pools, 0).await;

    let mut stopped = Vec::new();
    for n in nodes {
        let id = n.id;
        stopped.push((id, n.stop().await));
    }
    let mut nodes = Vec::new();
    for (id, s) in stopped {
        nodes.push(TestNode::restart(id, s).await);
    }
    for n in &nodes {
        assert_eq!(head(&n.pool).await, (position, hash.clone()));
    }
    wait_for_leader(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(20)).await;
    // Every acknowledged command is known: sent again, it appends nothing.
    for (i, id) in acknowledged.iter().enumerate() {
        let again = nodes[i % 3]
            .dispatcher
            .dispatch(add_node(id), CommandMeta::with_id(id, "t"))
            .await
            .expect("repeat");
        assert!(again.duplicate, "{id} was applied again");
    }
    let applied = nodes[1]
        .dispatcher
        .dispatch(add_node("after"), CommandMeta::new("t"))
        .await
        .expect("a write after the restart");
    assert_eq!(applied.positions, Some((position + 1, position + 1)));
    let pools: Vec<_> = nodes.iter().map(|n| &n.pool).collect();
    converged(&pools, position + 1).await;
    for p in &pools {
        assert_eq!(count_events(p).await, position + 1);
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_forwarded_commands_and_routes_submitted_ones() {
    let nodes = three_nodes(Opts::default()).await;
    let results = nodes[1].dispatcher.dispatch_here(vec![bootstrap()]).await;
    assert!(
        matches!(&results[0], Err(CommandError::NotLeader { leader: Some(a) }) if *a == nodes[0].addr.to_string()),
        "{results:?}"
    );
    let mut client =
        pmmcp::cluster::CommandClient::new(&nodes[2].addr.to_string()).expect("client");
    let results = client
        .submit(&[bootstrap()], Duration::from_secs(10))
        .await
        .expect("submit");
    assert!(results[0].is_ok(), "{results:?}");
    for n in nodes {
        n.stop().await;
    }
}
