//! The Raft log, vote and purge point in PostgreSQL (`raft_log`, `raft_state`).
//!
//! Appends are written by one background task, in order, several appends per transaction (the
//! log's own group commit); openraft hears an entry is saved only after that transaction
//! commits. Meanwhile openraft goes on, replicating entries that are still being written: they
//! are read from an in-memory tail of the log, which also spares the replication streams a
//! database read. Truncate and purge go through the same task, so they apply in order with the
//! appends, and return once committed. The vote is written directly and committed before
//! `save_vote` returns.

use super::{TypeConfig, io};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

type SE = StorageError<u64>;

/// Entries kept in memory once written (those not yet written always are).
const TAIL: usize = 2048;
/// Most appends written in one transaction.
const APPENDS_PER_COMMIT: usize = 256;

/// Entries to write: `(index, JSON)` rows, the last index, and openraft's callback.
struct Append {
    rows: Vec<(i64, String)>,
    last: Option<u64>,
    callback: LogFlushed<TypeConfig>,
}

/// A write for the log task, done in arrival order.
enum Write {
    Append(Append),
    Truncate(u64, oneshot::Sender<Result<(), String>>),
    Purge(LogId<u64>, oneshot::Sender<Result<(), String>>),
}

/// The tail of the log in memory: every entry not yet written, and the latest written ones.
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Entries up to this index are committed to the database.
    written: Option<u64>,
}

impl Tail {
    /// Drops written entries beyond the tail's size, oldest first.
    fn trim(&mut self) {
        while self.entries.len() > TAIL {
            match self.entries.first_key_value() {
                Some((&i, _)) if Some(i) <= self.written => {
                    self.entries.pop_first();
                }
                _ => break,
            }
        }
    }
}

/// The log store of one node. Cheap to clone; clones share the tail and the writer task.
#[derive(Clone)]
pub struct PgLogStore {
    pool: PgPool,
    tail: Arc<RwLock<Tail>>,
    writes: mpsc::UnboundedSender<Write>,
}

impl Debug for PgLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLogStore").finish_non_exhaustive()
    }
}

impl PgLogStore {
    /// A log store on `pool`, with its writer task (which stops when every clone is dropped).
    pub fn new(pool: PgPool) -> Self {
        let tail: Arc<RwLock<Tail>> = Arc::default();
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_task(pool.clone(), tail.clone(), rx));
        Self { pool, tail, writes }
    }

    fn tail(&self) -> std::sync::RwLockWriteGuard<'_, Tail> {
        self.tail.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a truncate or purge to the writer task and waits until it is committed.
    async fn ordered(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Write,
    ) -> Result<(), SE> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(make(tx))
            .map_err(|_| io(StorageIOError::write_logs, "the log writer has stopped"))?;
        rx.await
            .unwrap_or_else(|_| Err("the log writer has stopped".to_owned()))
            .map_err(|e| io(StorageIOError::write_logs, e))
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

/// Writes appends (several per transaction), truncates and purges, in arrival order. After a
/// failure every later write fails too: openraft stops on the first storage error.
async fn write_task(pool: PgPool, tail: Arc<RwLock<Tail>>, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut failed: Option<String> = None;
    let mut pending: Option<Write> = None;
    loop {
        let first = match pending.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        match first {
            Write::Append(append) => {
                let mut batch = vec![append];
                while batch.len() < APPENDS_PER_COMMIT {
                    match rx.try_recv() {
                        Ok(Write::Append(append)) => batch.push(append),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = match &failed {
                    Some(e) => Err(e.clone()),
                    None => write_appends(&pool, &batch).await,
                };
                let last = batch.iter().filter_map(|a| a.last).max();
                if result.is_ok() {
                    let mut t = tail.write().unwrap_or_else(|p| p.into_inner());
                    t.written = t.written.max(last);
                    t.trim();
                }
                if let Err(e) = &result {
                    error!(error = %e, "writing the raft log failed");
                    failed.get_or_insert_with(|| e.clone());
                }
                for a in batch {
                    a.callback
                        .log_io_completed(result.clone().map_err(std::io::Error::other));
                }
            }
            Write::Truncate(index, done) => {
                let r = match &failed {
                    Some(e) => Err(e.clone()),
                    None => sqlx::query("DELETE FROM raft_log WHERE log_index >= $1")
                        .bind(index as i64)
                        .execute(&pool)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if r.is_ok() {
                    let mut t = tail.write().unwrap_or_else(|p| p.into_inner());
                    t.written = t.written.min(index.checked_sub(1));
                }
                let _ = done.send(r);
            }
            Write::Purge(log_id, done) => {
                let r = match &failed {
                    Some(e) => Err(e.clone()),
                    None => purge(&pool, log_id).await,
                };
                let _ = done.send(r);
            }
        }
    }
}

/// Writes the rows of several appends in one statement (so one transaction). A later row for
/// an index wins: after a truncate, an index is written again.
async fn write_appends(pool: &PgPool, batch: &[Append]) -> Result<(), String> {
    let mut rows: BTreeMap<i64, &[u8]> = BTreeMap::new();
    for a in batch {
        for (i, doc) in &a.rows {
            rows.insert(*i, doc.as_bytes());
        }
    }
    let indexes: Vec<i64> = rows.keys().copied().collect();
    let docs: Vec<&[u8]> = rows.values().copied().collect();
    sqlx::query(
        "INSERT INTO raft_log (log_index, entry) SELECT * FROM UNNEST($1::int8[], $2::bytea[]) \
         ON CONFLICT (log_index) DO UPDATE SET entry = EXCLUDED.entry",
    )
    .bind(&indexes)
    .bind(&docs)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The purge point and the deletion in one transaction: never a hole, never a purge point
/// without its deletion.
async fn purge(pool: &PgPool, log_id: LogId<u64>) -> Result<(), String> {
    let purged = serde_json::to_value(log_id).map_err(|e| e.to_string())?;
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::query("UPDATE raft_state SET last_purged = $1")
        .bind(purged)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("DELETE FROM raft_log WHERE log_index <= $1")
        .bind(log_id.index as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
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
        if start >= end {
            return Ok(Vec::new());
        }
        // From the tail when it holds the whole range (the usual case: replication).
        let (cached, from_tail) = {
            let t = self.tail.read().unwrap_or_else(|p| p.into_inner());
            let covered = t
                .entries
                .first_key_value()
                .is_some_and(|(&first, _)| first as i64 <= start);
            let entries: Vec<Entry<TypeConfig>> = t
                .entries
                .range(start.max(0) as u64..end.max(0) as u64)
                .map(|(_, e)| e.clone())
                .collect();
            (entries, covered)
        };
        if from_tail {
            return Ok(cached);
        }
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index")
                .bind(start)
                .bind(end)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| io(StorageIOError::read_logs, e))?;
        let mut entries = BTreeMap::new();
        for v in rows {
            let e: Entry<TypeConfig> =
                serde_json::from_slice(&v).map_err(|e| io(StorageIOError::read_logs, e))?;
            entries.insert(e.log_id.index, e);
        }
        // Entries still being written are only in the tail.
        for e in cached {
            entries.insert(e.log_id.index, e);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for PgLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        let last_purged: Option<LogId<u64>> = self.read_state("last_purged").await?;
        let tail_last = self.tail().entries.last_key_value().map(|(_, e)| e.log_id);
        if let Some(last) = tail_last {
            return Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: Some(last),
            });
        }
        let last: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT entry FROM raft_log ORDER BY log_index DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| io(StorageIOError::read_logs, e))?;
        let last = last
            .map(|bytes| serde_json::from_slice::<Entry<TypeConfig>>(&bytes).map(|e| e.log_id))
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
        // Encoded before the tail is locked: replication reads the tail meanwhile.
        let mut rows = Vec::new();
        let mut encoded = Vec::new();
        for e in entries {
            let doc =
                serde_json::to_string(&e).map_err(|err| io(StorageIOError::write_logs, err))?;
            rows.push((e.log_id.index as i64, doc));
            encoded.push(e);
        }
        let last = encoded.last().map(|e| e.log_id.index);
        {
            let mut t = self.tail();
            for e in encoded {
                t.entries.insert(e.log_id.index, e);
            }
        }
        // Saved when the writer task has committed it; openraft waits for the callback.
        self.writes
            .send(Write::Append(Append {
                rows,
                last,
                callback,
            }))
            .map_err(|_| io(StorageIOError::write_logs, "the log writer has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SE> {
        let _ = self.tail().entries.split_off(&log_id.index);
        self.ordered(|done| Write::Truncate(log_id.index, done))
            .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SE> {
        self.ordered(|done| Write::Purge(log_id, done)).await?;
        let mut t = self.tail();
        t.entries = t.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}
