//! PostgreSQL: the event log (append with a base-position check, hash chain, reads, verify),
//! command results, and the query tables kept in the same transaction as the events.
//!
//! Invariant: positions are dense (1..N, no gaps), assigned only by the transaction holding the
//! `log_head` row lock, and an append writes all of a batch or none of it.

pub mod log;
pub mod query_tables;

pub use log::{
    AppendItem, Batch, LogHead, ReadFilter, Recorded, Secrets, StoredEvent, VerifyReport,
};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch was decided on a base that is no longer the head; nothing was written.
    #[error("stale base position {expected}: the log head is {actual}")]
    Conflict { expected: i64, actual: i64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Codec(#[from] crate::events::codec::CodecError),
    /// This node no longer leads; the leader's address when known. Whether the proposal
    /// commits is decided by the new leader.
    #[error("not the leader")]
    NotLeader(Option<String>),
    /// A bug or a panic in the storage path; the batch was not appended.
    #[error("internal: {0}")]
    Internal(String),
}

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool on `url` and applies the migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let opts = PgConnectOptions::from_str(url)?.application_name("pmm-cp");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
