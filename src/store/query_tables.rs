//! The query tables (`nodes`, `services`, `agents`, `settings`): rows derived from the state,
//! written in the append transaction for the entities a batch touched, and rebuilt from the
//! log on demand. Rows come from one function per table, so incremental updates and rebuilds
//! cannot disagree.

use super::StoreError;
use super::log::catch_up;
use crate::domain::{Agent, AgentId, Node, NodeId, Service, ServiceId, State};
use crate::events::StreamKey;
use crate::events::redact::redact;
use serde_json::{Value, json};
// Table and column names below are compile-time constants of this module, never input.
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use std::collections::BTreeMap;

/// Entities a batch touched, each with whether it may already have a row (an entity whose
/// stream starts in this batch has none, so there is nothing to delete first).
#[derive(Debug, Default)]
pub struct Touched {
    nodes: BTreeMap<NodeId, bool>,
    services: BTreeMap<ServiceId, bool>,
    agents: BTreeMap<AgentId, bool>,
    settings: bool,
}

impl Touched {
    /// Records an event of `key`'s stream; `version` is its stream version.
    pub fn add(&mut self, key: &StreamKey, version: i64) {
        let existed = version > 1;
        match key {
            StreamKey::Node(id) => {
                self.nodes.entry(id.clone()).or_insert(existed);
            }
            StreamKey::Service(id) => {
                self.services.entry(id.clone()).or_insert(existed);
            }
            StreamKey::Agent(id) => {
                self.agents.entry(id.clone()).or_insert(existed);
            }
            StreamKey::Settings => self.settings = true,
            // Tokens and alerting have no query tables: they are read from the state.
            StreamKey::Token(_) | StreamKey::AlertTemplate(_) | StreamKey::AlertRule(_) => {}
        }
    }
}

fn node_row(n: &Node) -> Value {
    serde_json::to_value(n).unwrap_or_default()
}

fn service_row(s: &Service) -> Value {
    serde_json::to_value(s).unwrap_or_default()
}

fn agent_row(a: &Agent) -> Value {
    let mut details = serde_json::to_value(a).unwrap_or_default();
    // The web-config hash is the streams' business (and a password verifier).
    if let Some(d) = details.as_object_mut() {
        d.remove("web_auth");
    }
    redact(&mut details);
    json!({
        "agent_id": a.agent_id,
        "agent_type": a.agent_type,
        "runs_on_node_id": a.runs_on_node_id,
        "pmm_agent_id": a.pmm_agent_id,
        "node_id": a.node_id,
        "service_id": a.service_id,
        "custom_labels": if a.custom_labels.is_empty() { Value::Null } else { json!(a.custom_labels) },
        "disabled": a.disabled,
        "status": a.status.as_str(),
        "connected": a.connected,
        "listen_port": a.listen_port,
        "version": a.version,
        "process_exec_path": a.process_exec_path,
        "username": a.username,
        "log_level": a.log_level,
        "push_metrics": a.exporter.push_metrics,
        "details": details,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    })
}

async fn replace_rows(
    conn: &mut PgConnection,
    table: &str,
    key: &str,
    ids: Vec<String>,
    rows: Vec<Value>,
) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE {key} = ANY($1)"
        )))
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    }
    for chunk in rows.chunks(2_000) {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)"
        )))
        .bind(Value::Array(chunk.to_vec()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The query-table rows a batch rewrites: for each table the touched ids that may have a row
/// (deleted) and the rows of all touched entities that exist after the batch (inserted); the
/// settings document when the settings changed.
#[derive(Debug, Default)]
pub struct RowChanges {
    pub node_ids: Vec<String>,
    pub node_rows: Value,
    pub service_ids: Vec<String>,
    pub service_rows: Value,
    pub agent_ids: Vec<String>,
    pub agent_rows: Value,
    pub settings: Option<Value>,
}

/// The rows of the touched entities as they are in `state`.
pub fn row_changes(state: &State, touched: &Touched) -> RowChanges {
    fn table<K: Ord, T>(
        ids: &BTreeMap<K, bool>,
        get: impl Fn(&K) -> Option<T>,
        row: impl Fn(T) -> Value,
        id: impl Fn(&K) -> String,
    ) -> (Vec<String>, Value) {
        let rows = ids.keys().filter_map(&get).map(row).collect();
        let existing = ids
            .iter()
            .filter(|(_, existed)| **existed)
            .map(|(k, _)| id(k));
        (existing.collect(), Value::Array(rows))
    }
    let (node_ids, node_rows) = table(
        &touched.nodes,
        |id| state.nodes.get(id),
        |n| node_row(n),
        |i| i.to_string(),
    );
    let (service_ids, service_rows) = table(
        &touched.services,
        |id| state.services.get(id),
        |s| service_row(s),
        |i| i.to_string(),
    );
    let (agent_ids, agent_rows) = table(
        &touched.agents,
        |id| state.agents.get(id),
        |a| agent_row(a),
        |i| i.to_string(),
    );
    RowChanges {
        node_ids,
        node_rows,
        service_ids,
        service_rows,
        agent_ids,
        agent_rows,
        settings: touched.settings.then(|| settings_doc(state)),
    }
}

fn settings_doc(state: &State) -> Value {
    serde_json::to_value(&*state.settings).unwrap_or_default()
}

async fn write_settings(conn: &mut PgConnection, state: &State) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE settings SET settings = $1")
        .bind(settings_doc(state))
        .execute(conn)
        .await?;
    Ok(())
}

/// What a rebuild did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub nodes: usize,
    pub services: usize,
    pub agents: usize,
}

/// Drops every query-table row and recreates them from the whole log, in one transaction
/// (readers see the old rows until it commits).
pub async fn rebuild(pool: &PgPool) -> Result<RebuildReport, StoreError> {
    let started = std::time::Instant::now();
    let mut state = State::default();
    let events = catch_up(pool, &mut state).await?;
    let folded = started.elapsed();
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE log_head IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    // Events appended between the read above and the lock are folded in too.
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(&mut *tx)
        .await?;
    let events = if head != state.revision {
        events + catch_up(pool, &mut state).await?
    } else {
        events
    };
    let report = write_all(&mut tx, &state).await?;
    let report = RebuildReport { events, ..report };
    tx.commit().await?;
    tracing::info!(
        events,
        read_and_fold_ms = folded.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "query tables rebuilt"
    );
    Ok(report)
}

/// Replaces every query-table row with the rows of `state`, inside the caller's transaction.
pub async fn write_all(
    conn: &mut PgConnection,
    state: &State,
) -> Result<RebuildReport, StoreError> {
    // DELETE, not TRUNCATE: TRUNCATE would lock readers out until the transaction ends.
    for table in ["nodes", "services", "agents"] {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *conn)
            .await?;
    }
    let nodes: Vec<Value> = state.nodes.values().map(|n| node_row(n)).collect();
    let services: Vec<Value> = state.services.values().map(|s| service_row(s)).collect();
    let agents: Vec<Value> = state.agents.values().map(|a| agent_row(a)).collect();
    let report = RebuildReport {
        events: 0,
        nodes: nodes.len(),
        services: services.len(),
        agents: agents.len(),
    };
    replace_rows(conn, "nodes", "node_id", vec![], nodes).await?;
    replace_rows(conn, "services", "service_id", vec![], services).await?;
    replace_rows(conn, "agents", "agent_id", vec![], agents).await?;
    write_settings(conn, state).await?;
    Ok(report)
}

/// Every query-table row as JSON, in key order: for comparing two databases or a table with
/// its rebuild.
pub async fn snapshot(pool: &PgPool) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    for (table, key) in [
        ("nodes", "node_id"),
        ("services", "service_id"),
        ("agents", "agent_id"),
        ("settings", "id"),
    ] {
        let rows: Vec<Value> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT to_jsonb(t) FROM {table} t ORDER BY {key}"
        )))
        .fetch_all(pool)
        .await?;
        out.extend(rows);
    }
    Ok(out)
}
