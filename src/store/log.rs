//! The `events` table: append a batch atomically, read forward with filters, verify the chain.

use super::{StoreError, query_tables};
use crate::commands::{CommandMeta, Rejection};
use crate::domain::{State, Timestamp};
use crate::events::Event;
use crate::events::chain::{self, GENESIS, Hashed};
use crate::events::codec;
use crate::events::redact::redact;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::sync::Arc;

/// The head of the log as the single writer knows it: position, hash and each stream's
/// last version (a persistent map: the writer clones the head for every batch, in O(1)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogHead {
    pub position: i64,
    pub hash: [u8; 32],
    pub stream_versions: imbl::HashMap<String, i64>,
}

impl LogHead {
    /// Reads the head and the stream versions from the database.
    pub async fn load(pool: &PgPool) -> Result<Self, StoreError> {
        let row = sqlx::query("SELECT position, hash FROM log_head")
            .fetch_one(pool)
            .await?;
        let stream_versions = sqlx::query_as::<_, (String, i64)>(
            "SELECT stream_id, max(stream_version) FROM events GROUP BY stream_id",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        Ok(Self {
            position: row.try_get("position")?,
            hash: to_hash(row.try_get("hash")?),
            stream_versions,
        })
    }
}

fn to_hash(v: Vec<u8>) -> [u8; 32] {
    v.try_into().unwrap_or([0xff; 32])
}

/// One command's events in a batch, with the event ids the decider chose for them (so every
/// node that applies the batch stores, and hashes, the same ids).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppendItem {
    pub meta: CommandMeta,
    pub events: Vec<Event>,
    /// One per event, in order.
    pub event_ids: Vec<uuid::Uuid>,
}

impl AppendItem {
    /// The item for `events`, each given a fresh event id.
    pub fn new(meta: CommandMeta, events: Vec<Event>) -> Self {
        let event_ids = events.iter().map(|_| uuid::Uuid::new_v4()).collect();
        Self {
            meta,
            events,
            event_ids,
        }
    }
}

/// A batch of decided commands, appended in one transaction. Under Raft it is the payload of
/// one log entry: decided once by the leader, applied on every node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The position the decisions were based on; the append fails if the head moved.
    pub base_position: i64,
    pub recorded_at: Timestamp,
    /// The node that decided the batch (stored in each event's metadata).
    pub decided_by: String,
    /// Shared, so that copies of the Raft entry (replication, the in-memory log tail) do not
    /// copy the events.
    pub items: Arc<Vec<AppendItem>>,
    /// Commands decided without events, recorded so a repeat of their id gets the same answer:
    /// `None` for a command that changed nothing, else its rejection.
    pub unappended: Arc<Vec<(String, Option<Rejection>)>>,
}

/// Positions written for one item: `first..=last`.
pub type Positions = (i64, i64);

/// The recorded result of a command id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    Appended(Positions),
    /// Applied, and changed nothing.
    Unchanged,
    Rejected(Rejection),
}

/// Appends `batch` and updates the query tables from `after` (the state with the batch folded
/// in), all in one transaction. On success `head` is advanced; on any error nothing was
/// written and `head` is unchanged.
pub async fn append(
    pool: &PgPool,
    head: &mut LogHead,
    batch: &Batch,
    after: &State,
) -> Result<Vec<Positions>, StoreError> {
    append_applying(pool, head, batch, after, None).await
}

/// What a Raft state machine records with a batch, in the same transaction: the log id of the
/// entry it came from and, when it changed, the membership (both as openraft serializes them).
#[derive(Clone, Debug)]
pub struct RaftApplied {
    pub log_id: Value,
    pub membership: Option<Value>,
}

/// [`append`], also recording `raft` (when given) in the same transaction.
pub async fn append_applying(
    pool: &PgPool,
    head: &mut LogHead,
    batch: &Batch,
    after: &State,
    raft: Option<&RaftApplied>,
) -> Result<Vec<Positions>, StoreError> {
    if batch.base_position != head.position {
        return Err(StoreError::Conflict {
            expected: batch.base_position,
            actual: head.position,
        });
    }
    let mut prev = head.hash;
    let n: usize = batch.items.iter().map(|i| i.events.len()).sum();
    let mut cols = Columns::with_capacity(n);
    let mut versions: HashMap<String, i64> = HashMap::new();
    let mut touched = query_tables::Touched::default();
    let mut positions = Vec::with_capacity(batch.items.len());
    let mut position = batch.base_position;
    let recorded_at_micros = batch.recorded_at.timestamp_micros();
    for item in batch.items.iter() {
        if item.event_ids.len() != item.events.len() {
            return Err(StoreError::Internal(format!(
                "command {} has {} events and {} event ids",
                item.meta.command_id,
                item.events.len(),
                item.event_ids.len()
            )));
        }
        let metadata = metadata(&item.meta, &batch.decided_by);
        let first = position + 1;
        for (event, &event_id) in item.events.iter().zip(&item.event_ids) {
            position += 1;
            let key = event.stream();
            let stream_id = key.stream_id();
            let version = versions
                .get(&stream_id)
                .or_else(|| head.stream_versions.get(&stream_id))
                .copied()
                .unwrap_or(0)
                + 1;
            versions.insert(stream_id.clone(), version);
            touched.add(&key, version);
            let (event_type, schema_version, payload) = codec::encode(event)?;
            let hash = chain::hash(
                &prev,
                &Hashed {
                    position,
                    stream_id: &stream_id,
                    stream_version: version,
                    event_id,
                    event_type,
                    schema_version,
                    payload: &payload,
                    metadata: &metadata,
                    recorded_at_micros,
                },
            );
            cols.push(
                position,
                stream_id,
                version,
                event_id,
                event_type,
                schema_version,
                &payload,
                &metadata,
                prev,
                hash,
            );
            prev = hash;
        }
        positions.push((first, position));
    }
    let mut results = ResultColumns::default();
    for (item, (first, last)) in batch.items.iter().zip(&positions) {
        results.push(&item.meta.command_id, Some((*first, *last)), None);
    }
    for (id, rejection) in batch.unappended.iter() {
        results.push(id, None, rejection.as_ref());
    }
    let rows = query_tables::row_changes(after, &touched);
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
         $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)",
    )
    .bind(batch.base_position)
    .bind(position)
    .bind(prev.as_slice())
    .bind(cols.position)
    .bind(cols.stream_id)
    .bind(cols.stream_version)
    .bind(cols.event_id)
    .bind(cols.event_type)
    .bind(cols.schema_version)
    .bind(cols.payload)
    .bind(cols.metadata)
    .bind(batch.recorded_at)
    .bind(cols.prev_hash)
    .bind(cols.hash)
    .bind(results.ids)
    .bind(results.firsts)
    .bind(results.lasts)
    .bind(results.rejections)
    .bind(rows.node_ids)
    .bind(rows.node_rows)
    .bind(rows.service_ids)
    .bind(rows.service_rows)
    .bind(rows.agent_ids)
    .bind(rows.agent_rows)
    .bind(rows.settings)
    .bind(raft.map(|r| r.log_id.clone()))
    .bind(raft.and_then(|r| r.membership.clone()))
    .fetch_one(pool)
    .await?;
    match found {
        Some(actual) if actual == batch.base_position => {}
        Some(actual) => {
            return Err(StoreError::Conflict {
                expected: batch.base_position,
                actual,
            });
        }
        None => {
            return Err(StoreError::Internal(
                "the log_head row is missing".to_owned(),
            ));
        }
    }
    head.position = position;
    head.hash = prev;
    head.stream_versions.extend(versions);
    Ok(positions)
}

/// Column arrays for the command results of one batch.
#[derive(Default)]
struct ResultColumns {
    ids: Vec<String>,
    firsts: Vec<Option<i64>>,
    lasts: Vec<Option<i64>>,
    rejections: Vec<Option<String>>,
}

impl ResultColumns {
    fn push(&mut self, id: &str, positions: Option<Positions>, rejection: Option<&Rejection>) {
        self.ids.push(id.to_owned());
        self.firsts.push(positions.map(|p| p.0));
        self.lasts.push(positions.map(|p| p.1));
        self.rejections
            .push(rejection.map(|r| serde_json::to_string(r).unwrap_or_default()));
    }
}

fn metadata(meta: &CommandMeta, decided_by: &str) -> Value {
    let mut v = serde_json::to_value(meta).unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.insert(
            "decided_by".to_owned(),
            Value::String(decided_by.to_owned()),
        );
    }
    v
}

/// Column arrays for one multi-row INSERT.
struct Columns {
    position: Vec<i64>,
    stream_id: Vec<String>,
    stream_version: Vec<i64>,
    event_id: Vec<uuid::Uuid>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    payload: Vec<String>,
    metadata: Vec<String>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            position: Vec::with_capacity(n),
            stream_id: Vec::with_capacity(n),
            stream_version: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        position: i64,
        stream_id: String,
        stream_version: i64,
        event_id: uuid::Uuid,
        event_type: &str,
        schema_version: i32,
        payload: &Value,
        metadata: &Value,
        prev_hash: [u8; 32],
        hash: [u8; 32],
    ) {
        self.position.push(position);
        self.stream_id.push(stream_id);
        self.stream_version.push(stream_version);
        self.event_id.push(event_id);
        self.event_type.push(event_type.to_owned());
        self.schema_version.push(schema_version);
        self.payload.push(payload.to_string());
        self.metadata.push(metadata.to_string());
        self.prev_hash.push(prev_hash.to_vec());
        self.hash.push(hash.to_vec());
    }
}

/// Results already recorded for these command ids.
pub async fn find_command_results(
    pool: &PgPool,
    ids: &[String],
) -> Result<HashMap<String, Recorded>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query_as::<_, (String, Option<i64>, Option<i64>, Option<Value>)>(
        "SELECT command_id, first_position, last_position, rejection FROM command_results \
         WHERE command_id = ANY($1)",
    )
    // Planned for each call: a generic plan cached while the table was small keeps scanning
    // it whole as it grows (seen in the benchmark: throughput fell with the log's length).
    .persistent(false)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, first, last, rejection)| {
            let recorded = match (first, last, rejection) {
                (Some(f), Some(l), _) => Recorded::Appended((f, l)),
                (_, _, Some(r)) => {
                    Recorded::Rejected(serde_json::from_value(r).map_err(|e| {
                        StoreError::Internal(format!("stored rejection of {id}: {e}"))
                    })?)
                }
                _ => Recorded::Unchanged,
            };
            Ok((id, recorded))
        })
        .collect()
}

/// Whether a read path may see secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Every sealed value is replaced by a marker (every read path but one).
    Redact,
    /// Sealed values are kept, for the projections that hand secrets to a pmm-agent and for
    /// replay into the in-memory state.
    Keep,
}

/// Which events to read.
#[derive(Clone, Debug, Default)]
pub struct ReadFilter {
    /// Read events with a position greater than this.
    pub after: i64,
    /// Page size (at most 10,000).
    pub limit: i64,
    pub stream_id: Option<String>,
    /// Empty means every type.
    pub event_types: Vec<String>,
    /// Only events of commands sent by this actor.
    pub actor: Option<String>,
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: Timestamp,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl StoredEvent {
    /// Decodes the payload (upcasting old versions).
    pub fn decode(&self) -> Result<Event, StoreError> {
        Ok(codec::decode(
            &self.event_type,
            self.schema_version,
            self.payload.clone(),
        )?)
    }
}

impl StoredEvent {
    /// The event as shown to people and auditors (CLI, query API): the hash in hex, the
    /// previous hash left out (it is the previous event's hash).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "position": self.position,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "payload": self.payload,
            "metadata": self.metadata,
            "recorded_at": self.recorded_at,
            "hash": hex::encode(&self.hash),
        })
    }
}

/// Reads a page of events in position order.
pub async fn read(
    pool: &PgPool,
    filter: &ReadFilter,
    secrets: Secrets,
) -> Result<Vec<StoredEvent>, StoreError> {
    let limit = filter.limit.clamp(1, 10_000);
    let rows = sqlx::query(
        "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at, prev_hash, hash FROM events \
         WHERE position > $1 AND ($2::text IS NULL OR stream_id = $2) \
         AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
         AND ($5::text IS NULL OR metadata->>'actor' = $5) \
         ORDER BY position LIMIT $4",
    )
    // Planned per call with its own filters, so a stream filter uses the stream index.
    .persistent(false)
    .bind(filter.after)
    .bind(&filter.stream_id)
    .bind(&filter.event_types)
    .bind(limit)
    .bind(&filter.actor)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let mut e = StoredEvent {
                position: r.try_get("position")?,
                stream_id: r.try_get("stream_id")?,
                stream_version: r.try_get("stream_version")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                schema_version: r.try_get("schema_version")?,
                payload: r.try_get("payload")?,
                metadata: r.try_get("metadata")?,
                recorded_at: r.try_get("recorded_at")?,
                prev_hash: r.try_get("prev_hash")?,
                hash: r.try_get("hash")?,
            };
            if secrets == Secrets::Redact {
                redact(&mut e.payload);
            }
            Ok(e)
        })
        .collect()
}

/// Folds every event after `state.revision` into `state`, page by page; the next page is
/// read while the current one is folded.
pub async fn catch_up(pool: &PgPool, state: &mut State) -> Result<u64, StoreError> {
    const PAGE: i64 = 10_000;
    async fn page(pool: PgPool, after: i64) -> Result<Vec<(i64, String, i32, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT position, event_type, schema_version, payload::text FROM events \
             WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(&pool)
        .await?)
    }
    let mut n = 0;
    let mut current = page(pool.clone(), state.revision).await?;
    while let Some(&(last, ..)) = current.last() {
        let next = tokio::spawn(page(pool.clone(), last));
        for (position, event_type, version, payload) in &current {
            state.apply_at(
                *position,
                &codec::decode_json(event_type, *version, payload)?,
            );
            n += 1;
        }
        current = next
            .await
            .map_err(|e| StoreError::Internal(format!("reading the log: {e}")))??;
    }
    Ok(n)
}

/// The result of walking the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub checked: i64,
    /// Hash of the last event checked (hex).
    pub head_hash: String,
    /// The first problem found: its position and what is wrong.
    pub first_error: Option<(i64, String)>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_error.is_none()
    }
}

/// Walks the whole chain: dense positions, each `prev_hash` the previous `hash`, each hash
/// recomputed from the stored fields, stream versions dense, and the head row matching.
pub async fn verify(pool: &PgPool) -> Result<VerifyReport, StoreError> {
    // The head first: events appended while the walk runs are past it and not judged.
    let row = sqlx::query("SELECT position, hash FROM log_head")
        .fetch_one(pool)
        .await?;
    let (head_position, head_hash): (i64, Vec<u8>) =
        (row.try_get("position")?, row.try_get("hash")?);
    let mut prev = GENESIS;
    let mut expected = 1i64;
    let mut stream_versions: HashMap<String, i64> = HashMap::new();
    let mut report = VerifyReport {
        checked: 0,
        head_hash: hex::encode(GENESIS),
        first_error: None,
    };
    'walk: loop {
        let page = read(
            pool,
            &ReadFilter {
                after: expected - 1,
                limit: 5_000,
                ..Default::default()
            },
            Secrets::Keep,
        )
        .await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if e.position > head_position {
                // Appended while we walked, or written past the head by something else.
                let now: i64 = sqlx::query_scalar("SELECT position FROM log_head")
                    .fetch_one(pool)
                    .await?;
                if now < e.position {
                    report.first_error = Some((
                        e.position,
                        format!("event beyond the log head (position {now})"),
                    ));
                    return Ok(report);
                }
                break 'walk;
            }
            let fail = |why: String| Some((e.position, why));
            let last = stream_versions.entry(e.stream_id.clone()).or_insert(0);
            let recomputed = chain::hash(
                &prev,
                &Hashed {
                    position: e.position,
                    stream_id: &e.stream_id,
                    stream_version: e.stream_version,
                    event_id: e.event_id,
                    event_type: &e.event_type,
                    schema_version: e.schema_version,
                    payload: &e.payload,
                    metadata: &e.metadata,
                    recorded_at_micros: e.recorded_at.timestamp_micros(),
                },
            );
            report.first_error = if e.position != expected {
                fail(format!("expected position {expected}: the log has a gap"))
            } else if e.prev_hash != prev {
                fail("prev_hash does not match the previous event's hash".to_owned())
            } else if e.hash != recomputed {
                fail("hash does not match the stored fields: the row was altered".to_owned())
            } else if e.stream_version != *last + 1 {
                fail(format!(
                    "stream {} version {} follows {}",
                    e.stream_id, e.stream_version, last
                ))
            } else {
                None
            };
            if report.first_error.is_some() {
                return Ok(report);
            }
            *last = e.stream_version;
            prev = recomputed;
            expected += 1;
            report.checked += 1;
            report.head_hash = hex::encode(prev);
        }
    }
    if head_position != expected - 1 || head_hash != prev {
        report.first_error = Some((
            head_position,
            format!(
                "log head says position {head_position} with its hash, the chain ends at {}",
                expected - 1
            ),
        ));
    }
    Ok(report)
}
