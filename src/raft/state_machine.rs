//! The Raft state machine: applying an entry is the foundation's append transaction, which also
//! records the entry's log id (and membership) in `raft_state`. A batch whose base is not the
//! head is refused the same way on every node, and its log id is still recorded as applied.
//!
//! A snapshot is the whole history: every event, every command result and the head. Installing
//! one replaces them and the query rows (folded from those events) in one transaction, then
//! checks the hash chain of what was stored.

use super::{Outcome, TypeConfig, io};
use crate::domain::State;
use crate::store::log::{self as store_log, RaftApplied};
use crate::store::{LogHead, StoreError, query_tables};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use std::io::Cursor;
use tokio::sync::watch;

type SE = StorageError<u64>;
type Membership = StoredMembership<u64, BasicNode>;

/// The state machine of one node: the domain state and log head it has applied.
pub struct PgStateMachine {
    pool: PgPool,
    /// Applies commit without waiting for their WAL flush (`synchronous_commit = off`): the
    /// entries are already durable in the Raft log, and an apply lost in a crash is applied
    /// again from it (its log id commits with it, so never twice). The next synchronous
    /// commit on this server, such as the next log append, flushes it anyway. Snapshot
    /// installs stay synchronous: they replace log entries that are purged.
    apply_pool: PgPool,
    state: State,
    head: LogHead,
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    published: watch::Sender<State>,
}

impl PgStateMachine {
    /// Loads what this node has applied.
    pub async fn open(pool: PgPool) -> Result<Self, StoreError> {
        let mut state = State::default();
        store_log::catch_up(&pool, &mut state).await?;
        let head = LogHead::load(&pool).await?;
        let (last_applied, membership): (Option<Value>, Option<Value>) =
            sqlx::query_as("SELECT last_applied, membership FROM raft_state")
                .fetch_one(&pool)
                .await?;
        let bad = |e: serde_json::Error| StoreError::Internal(format!("raft_state: {e}"));
        let last_applied: Option<LogId<u64>> = last_applied
            .map(serde_json::from_value)
            .transpose()
            .map_err(bad)?;
        let membership: Option<Membership> = membership
            .map(serde_json::from_value)
            .transpose()
            .map_err(bad)?;
        let (published, _) = watch::channel(state.clone());
        let apply_options = (*pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off")]);
        let apply_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_lazy_with(apply_options);
        Ok(Self {
            pool,
            apply_pool,
            state,
            head,
            last_applied,
            membership: membership.unwrap_or_default(),
            published,
        })
    }

    /// Follows the applied state (the revision readers wait on).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.published.subscribe()
    }

    async fn record_applied(
        &self,
        log_id: &LogId<u64>,
        membership: Option<&Membership>,
    ) -> Result<(), SE> {
        let applied =
            serde_json::to_value(log_id).map_err(|e| io(StorageIOError::write_state_machine, e))?;
        let membership = membership
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| io(StorageIOError::write_state_machine, e))?;
        sqlx::query(
            "UPDATE raft_state SET last_applied = $1, membership = coalesce($2, membership)",
        )
        .bind(applied)
        .bind(membership)
        .execute(&self.apply_pool)
        .await
        .map_err(|e| io(StorageIOError::write_state_machine, e))?;
        Ok(())
    }

    async fn apply_one(&mut self, entry: Entry<TypeConfig>) -> Result<Outcome, SE> {
        let log_id = entry.log_id;
        let outcome = match entry.payload {
            EntryPayload::Blank => {
                self.record_applied(&log_id, None).await?;
                Outcome::Nothing
            }
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(log_id), m);
                self.record_applied(&log_id, Some(&self.membership)).await?;
                Outcome::Nothing
            }
            EntryPayload::Normal(batch) if batch.base_position != self.head.position => {
                self.record_applied(&log_id, None).await?;
                Outcome::Stale {
                    base: batch.base_position,
                    head: self.head.position,
                }
            }
            EntryPayload::Normal(batch) => {
                let mut after = self.state.clone();
                batch
                    .items
                    .iter()
                    .flat_map(|i| &i.events)
                    .for_each(|e| after.evolve(e));
                let raft = RaftApplied {
                    log_id: serde_json::to_value(log_id)
                        .map_err(|e| io(StorageIOError::write_state_machine, e))?,
                    membership: None,
                };
                let mut head = self.head.clone();
                match store_log::append_applying(
                    &self.apply_pool,
                    &mut head,
                    &batch,
                    &after,
                    Some(&raft),
                )
                .await
                {
                    Ok(positions) => {
                        after.revision = head.position;
                        self.head = head;
                        self.state = after;
                        self.published.send_replace(self.state.clone());
                        Outcome::Appended(positions)
                    }
                    // A command id recorded since the batch was decided (by a leader of an
                    // earlier term, as a no-op or a rejection, which do not move the head):
                    // refused as stale, the same way on every node, and decided again.
                    Err(e) if repeats_a_command_id(&e) => {
                        self.record_applied(&log_id, None).await?;
                        Outcome::Stale {
                            base: batch.base_position,
                            head: self.head.position,
                        }
                    }
                    Err(e) => return Err(io(StorageIOError::write_state_machine, e)),
                }
            }
        };
        self.last_applied = Some(log_id);
        Ok(outcome)
    }
}

/// True when an append failed only because one of its command ids is already recorded
/// (nothing of it was written: the append is one statement).
fn repeats_a_command_id(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some("command_results_pkey")
        }
        _ => false,
    }
}

/// The bytes of a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotDoc {
    /// `events` rows as JSON, in position order.
    events: Vec<Value>,
    command_results: Vec<Value>,
    head_position: i64,
    head_hash: Vec<u8>,
}

/// Builds snapshots from a consistent read of the database.
pub struct PgSnapshotBuilder {
    pool: PgPool,
}

impl RaftSnapshotBuilder<TypeConfig> for PgSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let read = |e: sqlx::Error| io(StorageIOError::read_state_machine, e);
        // Apply goes on while we read: one REPEATABLE READ transaction sees one moment.
        let mut tx = self.pool.begin().await.map_err(read)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(read)?;
        let (last_applied, membership): (Option<Value>, Option<Value>) =
            sqlx::query_as("SELECT last_applied, membership FROM raft_state")
                .fetch_one(&mut *tx)
                .await
                .map_err(read)?;
        let events: Vec<Value> =
            sqlx::query_scalar("SELECT to_jsonb(e) FROM events e ORDER BY position")
                .fetch_all(&mut *tx)
                .await
                .map_err(read)?;
        let command_results: Vec<Value> =
            sqlx::query_scalar("SELECT to_jsonb(c) FROM command_results c ORDER BY command_id")
                .fetch_all(&mut *tx)
                .await
                .map_err(read)?;
        let (head_position, head_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT position, hash FROM log_head")
                .fetch_one(&mut *tx)
                .await
                .map_err(read)?;
        tx.commit().await.map_err(read)?;
        let decode = |e: serde_json::Error| io(StorageIOError::read_state_machine, e);
        let last_log_id: Option<LogId<u64>> = last_applied
            .map(serde_json::from_value)
            .transpose()
            .map_err(decode)?;
        let last_membership: Membership = membership
            .map(serde_json::from_value)
            .transpose()
            .map_err(decode)?
            .unwrap_or_default();
        let doc = SnapshotDoc {
            events,
            command_results,
            head_position,
            head_hash,
        };
        let data = serde_json::to_vec(&doc).map_err(decode)?;
        let meta = SnapshotMeta {
            snapshot_id: format!(
                "{}-{}-{head_position}",
                last_log_id.map(|l| l.leader_id.term).unwrap_or_default(),
                last_log_id.map(|l| l.index).unwrap_or_default()
            ),
            last_log_id,
            last_membership,
        };
        save_snapshot(&self.pool, &meta, &data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Stores a snapshot unless a newer one is stored: a build that started before an install
/// finished must not replace the installed (newer) snapshot.
async fn save_snapshot(
    pool: &PgPool,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
) -> Result<(), SE> {
    let write = |e: &dyn std::fmt::Display| io(|a| StorageIOError::write_snapshot(None, a), e);
    let meta = serde_json::to_value(meta).map_err(|e| write(&e))?;
    sqlx::query(
        "INSERT INTO raft_snapshot (id, meta, data) VALUES (TRUE, $1, $2) \
         ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, data = EXCLUDED.data \
         WHERE coalesce((raft_snapshot.meta #>> '{last_log_id,index}')::bigint, -1) \
            <= coalesce((EXCLUDED.meta #>> '{last_log_id,index}')::bigint, -1)",
    )
    .bind(meta)
    .bind(data)
    .execute(pool)
    .await
    .map_err(|e| write(&e))?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for PgStateMachine {
    type SnapshotBuilder = PgSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), SE> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            out.push(self.apply_one(entry).await?);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PgSnapshotBuilder {
            pool: self.pool.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SE> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SE> {
        let fail = |e: &dyn std::fmt::Display| io(|a| StorageIOError::write_snapshot(None, a), e);
        let data = snapshot.into_inner();
        let doc: SnapshotDoc = serde_json::from_slice(&data).map_err(|e| fail(&e))?;
        let applied = serde_json::to_value(meta.last_log_id).map_err(|e| fail(&e))?;
        let membership = serde_json::to_value(&meta.last_membership).map_err(|e| fail(&e))?;
        // The history, folded, gives the query rows: both go in with the events.
        let mut state = State::default();
        for row in &doc.events {
            let field = |k: &str| row.get(k).cloned().unwrap_or(Value::Null);
            let (Some(position), Some(event_type), Some(version)) = (
                field("position").as_i64(),
                field("event_type").as_str().map(str::to_owned),
                field("schema_version").as_i64(),
            ) else {
                return Err(fail(
                    &"a snapshot event lacks its position, type or version",
                ));
            };
            let event = crate::events::codec::decode(&event_type, version as i32, field("payload"))
                .map_err(|e| fail(&e))?;
            state.apply_at(position, &event);
        }
        let mut tx = self.pool.begin().await.map_err(|e| fail(&e))?;
        for sql in ["DELETE FROM events", "DELETE FROM command_results"] {
            sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| fail(&e))?;
        }
        sqlx::query("INSERT INTO events SELECT * FROM jsonb_populate_recordset(NULL::events, $1)")
            .bind(Value::Array(doc.events))
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(&e))?;
        sqlx::query("INSERT INTO command_results SELECT * FROM jsonb_populate_recordset(NULL::command_results, $1)")
            .bind(Value::Array(doc.command_results))
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(&e))?;
        sqlx::query("UPDATE log_head SET position = $1, hash = $2")
            .bind(doc.head_position)
            .bind(&doc.head_hash)
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(&e))?;
        sqlx::query("UPDATE raft_state SET last_applied = $1, membership = $2")
            .bind(applied)
            .bind(membership)
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(&e))?;
        query_tables::write_all(&mut tx, &state)
            .await
            .map_err(|e| fail(&e))?;
        tx.commit().await.map_err(|e| fail(&e))?;
        // The chain is checked on what was stored; a history that fails it stops this node
        // (a StorageError is fatal to openraft) before anything is built on it.
        let report = store_log::verify(&self.pool).await.map_err(|e| fail(&e))?;
        if let Some((position, why)) = report.first_error {
            return Err(fail(&format!(
                "the installed snapshot fails verification at {position}: {why}"
            )));
        }
        save_snapshot(&self.pool, meta, &data).await?;
        self.head = LogHead::load(&self.pool).await.map_err(|e| fail(&e))?;
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.published.send_replace(self.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        let read = |e: &dyn std::fmt::Display| io(|a| StorageIOError::read_snapshot(None, a), e);
        let row: Option<(Value, Vec<u8>)> = sqlx::query_as("SELECT meta, data FROM raft_snapshot")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| read(&e))?;
        let Some((meta, data)) = row else {
            return Ok(None);
        };
        let meta = serde_json::from_value(meta).map_err(|e| read(&e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
