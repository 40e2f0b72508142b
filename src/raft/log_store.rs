//! The Raft log, vote and committed id in PostgreSQL (`raft_log`, `raft_state`). Every write is
//! committed before openraft hears it is saved; `append` reports the flush only after COMMIT.

use super::{TypeConfig, io};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

type SE = StorageError<u64>;

/// The log store of one node. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct PgLogStore {
    pool: PgPool,
}

impl PgLogStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn read_state<T: DeserializeOwned>(&self, column: &'static str) -> Result<Option<T>, SE> {
        let v: Option<Value> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT {column} FROM raft_state")))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| io(StorageIOError::read, e))?;
        v.map(serde_json::from_value)
            .transpose()
            .map_err(|e| io(StorageIOError::read, e))
    }

    async fn write_state<T: Serialize>(&self, column: &'static str, value: &T) -> Result<(), SE> {
        let v = serde_json::to_value(value).map_err(|e| io(StorageIOError::write, e))?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE raft_state SET {column} = $1"
        )))
        .bind(v)
        .execute(&self.pool)
        .await
        .map_err(|e| io(StorageIOError::write, e))?;
        Ok(())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s as i64,
        Bound::Excluded(s) => *s as i64 + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => (*e as i64).saturating_add(1),
        Bound::Excluded(e) => *e as i64,
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for PgLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        let (start, end) = bounds(&range);
        let rows: Vec<Value> =
            sqlx::query_scalar("SELECT entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index")
                .bind(start)
                .bind(end)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| io(StorageIOError::read_logs, e))?;
        rows.into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| io(StorageIOError::read_logs, e)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for PgLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        let last_purged: Option<LogId<u64>> = self.read_state("last_purged").await?;
        let last: Option<Value> = sqlx::query_scalar(
            "SELECT entry->'log_id' FROM raft_log ORDER BY log_index DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| io(StorageIOError::read_logs, e))?;
        let last = last
            .map(serde_json::from_value::<LogId<u64>>)
            .transpose()
            .map_err(|e| io(StorageIOError::read_logs, e))?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SE> {
        self.write_state("vote", vote)
            .await
            .map_err(|e| io(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SE> {
        self.read_state("vote")
            .await
            .map_err(|e| io(StorageIOError::read_vote, e))
    }

    // The committed id is not stored: openraft treats it as optional, and a restarted leader
    // commits (and so re-applies) everything before its first entry anyway. Storing it would
    // cost one more durable write per batch.

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut indexes = Vec::new();
        let mut docs = Vec::new();
        for e in entries {
            indexes.push(e.log_id.index as i64);
            docs.push(serde_json::to_value(&e).map_err(|err| io(StorageIOError::write_logs, err))?);
        }
        // One statement, so one transaction: committed (and so durable) when it returns.
        let written = sqlx::query(
            "INSERT INTO raft_log (log_index, entry) SELECT * FROM UNNEST($1::int8[], $2::jsonb[]) \
             ON CONFLICT (log_index) DO UPDATE SET entry = EXCLUDED.entry",
        )
        .bind(&indexes)
        .bind(&docs)
        .execute(&self.pool)
        .await;
        match written {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io(StorageIOError::write_logs, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SE> {
        sqlx::query("DELETE FROM raft_log WHERE log_index >= $1")
            .bind(log_id.index as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| io(StorageIOError::write_logs, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SE> {
        let write = |e: &dyn std::fmt::Display| io(StorageIOError::write_logs, e);
        let purged = serde_json::to_value(log_id).map_err(|e| write(&e))?;
        // The purge point and the deletion in one transaction: never a hole, never a purge
        // point without its deletion.
        let mut tx = self.pool.begin().await.map_err(|e| write(&e))?;
        sqlx::query("UPDATE raft_state SET last_purged = $1")
            .bind(purged)
            .execute(&mut *tx)
            .await
            .map_err(|e| write(&e))?;
        sqlx::query("DELETE FROM raft_log WHERE log_index <= $1")
            .bind(log_id.index as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| write(&e))?;
        tx.commit().await.map_err(|e| write(&e))?;
        Ok(())
    }
}
