//! The query API (REST, JSON): inventory lists and items with PMM's filters plus paging,
//! sorting and a total count, settings, cluster status, and the event history and hash chain
//! for auditors. Every answer carries the revision it reflects, in the body and in the
//! `x-pmm-revision` header; `min_revision` waits (bounded) until this node has applied it, and
//! `consistency=linearizable` first confirms the latest committed revision with the leader.
//!
//! Every call needs `Authorization: Bearer <token>`: viewers (and admins) read the inventory,
//! settings and cluster; auditors (and admins) the history and chain; admins the tokens.
//!
//! Reads come from the query tables, each in one statement that also reads the log head, so
//! rows, totals and revision come from one snapshot (and one round trip). Agent rows are the redacted `details`: no secret,
//! not even sealed, leaves through here.

use crate::commands::CommandError;
use crate::commands::dispatcher::Dispatcher;
use crate::domain::Role;
use crate::raft::service::Internal;
use crate::store::{self, ReadFilter, Secrets};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::time::Duration;

/// Longest a request waits for `min_revision` or a linearizable read.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Default and largest page.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// Name of the revision header.
pub const REVISION_HEADER: &str = "x-pmm-revision";

/// What the handlers share.
#[derive(Clone)]
pub struct QueryApi {
    pub pool: PgPool,
    pub dispatcher: Dispatcher,
    pub internal: Internal,
    /// This node's pmm-agent streams, if it serves them.
    pub agents: Option<crate::agents::AgentServer>,
}

/// One chain verify at a time: it reads the whole log.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The query API's routes, each behind the roles that may call it: inventory, settings and
/// cluster for viewers, history and chain for auditors, tokens for admins (who may call all).
pub fn router(api: QueryApi) -> Router {
    const VIEW: &[Role] = &[Role::Admin, Role::Viewer];
    const AUDIT: &[Role] = &[Role::Admin, Role::Auditor];
    const ADMIN: &[Role] = &[Role::Admin];
    let inventory = Router::new()
        .route("/v1/query/nodes", get(list_nodes))
        .route("/v1/query/nodes/{id}", get(get_node))
        .route("/v1/query/services", get(list_services))
        .route("/v1/query/services/{id}", get(get_service))
        .route("/v1/query/agents", get(list_agents))
        .route("/v1/query/agents/{id}", get(get_agent))
        .route("/v1/query/settings", get(get_settings))
        .route("/v1/query/cluster", get(cluster))
        .route("/v1/query/alerting/templates", get(list_alert_templates))
        .route("/v1/query/alerting/rules", get(list_alert_rules))
        .route("/v1/query/alerting/rules/{id}", get(get_alert_rule))
        .route("/v1/query/pmm-agents", get(list_pmm_agents))
        .route("/v1/query/pmm-agents/{id}", get(get_pmm_agent))
        .route_layer(middleware::from_fn_with_state((api.clone(), VIEW), require));
    let history = Router::new()
        .route("/v1/query/events", get(events))
        .route("/v1/query/chain", get(chain_head))
        .route("/v1/query/chain:verify", post(verify))
        .route_layer(middleware::from_fn_with_state(
            (api.clone(), AUDIT),
            require,
        ));
    let tokens = Router::new()
        .route("/v1/query/tokens", get(list_tokens))
        .route_layer(middleware::from_fn_with_state(
            (api.clone(), ADMIN),
            require,
        ));
    inventory
        .merge(history)
        .merge(tokens)
        .layer(middleware::from_fn(time_limit))
        .with_state(api)
}

/// Longest a request may take (waits included) before it is answered 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers 503 to a request still running after [`REQUEST_TIMEOUT`].
async fn time_limit(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            ApiError::unavailable(format!("the request took longer than {REQUEST_TIMEOUT:?}"))
                .into_response()
        }
    }
}

/// Lets a request through when it carries a bearer token of one of `roles`: 401 without a
/// valid token, 403 with a token of another role.
async fn require(
    State((api, roles)): State<(QueryApi, &'static [Role])>,
    req: Request,
    next: Next,
) -> Response {
    match authorize(&api.dispatcher.state(), req.headers(), roles) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Checks the bearer token in `headers` against the tokens in `state` (the same check as the
/// public API's).
pub fn authorize(
    state: &crate::domain::State,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<(), ApiError> {
    crate::grpc::authenticate(state, headers, roles)
        .map(drop)
        .map_err(ApiError::from)
}

/// An error answer: `{error, message}` with the matching HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "InvalidArgument",
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "NotFound",
            message: message.into(),
        }
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "Unavailable",
            message: message.into(),
        }
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "query failed");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "Internal",
            message: "the query failed; see the server log".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.error, "message": self.message }));
        let mut resp = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        Self {
            status: crate::grpc::http_status(s.code()),
            error: crate::grpc::code_name(s.code()),
            message: s.message().to_owned(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(r.body_text())
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

/// An answer at a revision: the body gets `revision`, the response the header.
fn at_revision(revision: i64, mut body: Value) -> Response {
    if let Some(map) = body.as_object_mut() {
        map.insert("revision".to_owned(), json!(revision));
    }
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
        resp.headers_mut().insert(REVISION_HEADER, v);
    }
    resp
}

/// The consistency a read asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Consistency {
    min_revision: Option<i64>,
    consistency: Option<String>,
}

impl QueryApi {
    /// Waits, as the request asks, until this node's state is recent enough.
    async fn ready(&self, c: &Consistency) -> Result<(), ApiError> {
        match c.consistency.as_deref() {
            None | Some("") | Some("local") => {}
            Some("linearizable") => {
                self.dispatcher.linearizable_state(WAIT_LIMIT).await?;
            }
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "consistency: {other:?} is not one of local, linearizable"
                )));
            }
        }
        if let Some(r) = c.min_revision {
            if r < 0 {
                return Err(ApiError::invalid("min_revision: must not be negative"));
            }
            self.dispatcher.wait_for(r, WAIT_LIMIT).await?;
        }
        Ok(())
    }
}

/// Paging and sorting of a list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<i64>,
    offset: Option<i64>,
    /// A column, `-column` for descending.
    order_by: Option<String>,
    min_revision: Option<i64>,
    consistency: Option<String>,
    // Filters (each list takes its own; others are refused).
    node_type: Option<String>,
    node_id: Option<String>,
    service_type: Option<String>,
    external_group: Option<String>,
    pmm_agent_id: Option<String>,
    service_id: Option<String>,
    agent_type: Option<String>,
}

impl ListParams {
    fn consistency(&self) -> Consistency {
        Consistency {
            min_revision: self.min_revision,
            consistency: self.consistency.clone(),
        }
    }
}

/// One list: its table, the JSON of a row, the id column, sortable columns and filters.
struct ListSpec {
    table: &'static str,
    row: &'static str,
    id: &'static str,
    sortable: &'static [&'static str],
    key: &'static str,
}

const NODES: ListSpec = ListSpec {
    table: "nodes",
    row: "to_jsonb(t)",
    id: "node_id",
    sortable: &[
        "node_id",
        "node_name",
        "node_type",
        "address",
        "created_at",
        "updated_at",
    ],
    key: "nodes",
};
const SERVICES: ListSpec = ListSpec {
    table: "services",
    row: "to_jsonb(t)",
    id: "service_id",
    sortable: &[
        "service_id",
        "service_name",
        "service_type",
        "node_id",
        "created_at",
        "updated_at",
    ],
    key: "services",
};
const AGENTS: ListSpec = ListSpec {
    table: "agents",
    row: "t.details || jsonb_build_object('status', t.status, 'connected', t.connected, \
          'listen_port', t.listen_port, 'version', t.version)",
    id: "agent_id",
    sortable: &["agent_id", "agent_type", "created_at", "updated_at"],
    key: "agents",
};

/// `(SQL expression over the row `t`, value)` equality filters.
type Filters = Vec<(&'static str, String)>;

fn refuse_other_filters(p: &ListParams, allowed: &[&str]) -> Result<(), ApiError> {
    let given = [
        ("node_type", p.node_type.is_some()),
        ("node_id", p.node_id.is_some()),
        ("service_type", p.service_type.is_some()),
        ("external_group", p.external_group.is_some()),
        ("pmm_agent_id", p.pmm_agent_id.is_some()),
        ("service_id", p.service_id.is_some()),
        ("agent_type", p.agent_type.is_some()),
    ];
    match given.iter().find(|(n, set)| *set && !allowed.contains(n)) {
        Some((n, _)) => Err(ApiError::invalid(format!("{n}: not a filter of this list"))),
        None => Ok(()),
    }
}

/// Keeps a filter when it is set and not empty (PMM: empty means no filter).
fn push_filter(filters: &mut Filters, expr: &'static str, value: &Option<String>) {
    if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
        filters.push((expr, v.clone()));
    }
}

/// Accepts PMM's enum spelling (`NODE_TYPE_GENERIC_NODE`, `SERVICE_TYPE_MYSQL_SERVICE`,
/// `AGENT_TYPE_MYSQLD_EXPORTER`) or the stored one (`generic`, `mysql`, `mysqld_exporter`).
fn enum_filter(value: &Option<String>, prefix: &str, suffix: &str) -> Option<String> {
    let v = value.as_ref()?.trim();
    if v.is_empty() || v.ends_with("_UNSPECIFIED") {
        return None;
    }
    let v = v.strip_prefix(prefix).unwrap_or(v);
    let v = v.strip_suffix(suffix).unwrap_or(v);
    Some(v.to_ascii_lowercase())
}

async fn list(
    api: &QueryApi,
    spec: &ListSpec,
    p: &ListParams,
    filters: Filters,
    exists: impl FnOnce(&crate::domain::State) -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let limit = page_limit(p.limit)?;
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::invalid("offset: must not be negative"));
    }
    let (column, desc) = match p.order_by.as_deref().filter(|o| !o.is_empty()) {
        None => (spec.id, false),
        Some(o) => {
            let (c, desc) = o.strip_prefix('-').map_or((o, false), |c| (c, true));
            let c = spec.sortable.iter().find(|s| **s == c).ok_or_else(|| {
                ApiError::invalid(format!(
                    "order_by: {c:?} is not one of {}",
                    spec.sortable.join(", ")
                ))
            })?;
            (*c, desc)
        }
    };
    // Waits only for a request that is otherwise valid.
    api.ready(&p.consistency()).await?;
    exists(&api.dispatcher.state())?;
    // One statement, so one snapshot: the rows, the total and the revision agree, in one
    // round trip.
    let order = format!(
        "t.{column} {dir}, t.{id} {dir}",
        dir = if desc { "DESC" } else { "ASC" },
        id = spec.id
    );
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT (SELECT position FROM log_head), (SELECT count(*) FROM ");
    let push_filters = |qb: &mut QueryBuilder<Postgres>| {
        for (expr, value) in &filters {
            qb.push(format!(" AND {expr} = "));
            qb.push_bind(value.clone());
        }
    };
    qb.push(format!("{} t WHERE TRUE", spec.table));
    push_filters(&mut qb);
    // The page's ids first (an index scan when sorted by an indexed column), then the JSON of
    // those rows only, in the page's order.
    qb.push(format!(
        "), coalesce((SELECT jsonb_agg({row} ORDER BY page.n) FROM unnest(ARRAY(\
         SELECT t.{id} FROM {table} t WHERE TRUE",
        row = spec.row,
        id = spec.id,
        table = spec.table
    ));
    push_filters(&mut qb);
    qb.push(format!(" ORDER BY {order} LIMIT "));
    qb.push_bind(limit);
    qb.push(" OFFSET ");
    qb.push_bind(offset);
    qb.push(format!(
        ")) WITH ORDINALITY AS page(pid, n) JOIN {table} t ON t.{id} = page.pid), '[]'::jsonb)::text",
        table = spec.table,
        id = spec.id
    ));
    // The page arrives as JSON text and goes out as is: no parse and re-encode here.
    let (revision, total, items): (i64, i64, String) = qb
        .build_query_as()
        .fetch_one(&api.pool)
        .await
        .map_err(ApiError::internal)?;
    let body = format!(
        r#"{{"total":{total},"limit":{limit},"offset":{offset},"{key}":{items},"revision":{revision}}}"#,
        key = spec.key
    );
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
        resp.headers_mut().insert(REVISION_HEADER, v);
    }
    Ok(resp)
}

async fn get_one(
    api: &QueryApi,
    spec: &ListSpec,
    id: &str,
    c: &Consistency,
    what: &str,
) -> Result<Response, ApiError> {
    api.ready(c).await?;
    // One statement: the row and the revision from one snapshot.
    let sql = format!(
        "SELECT (SELECT position FROM log_head), (SELECT {} FROM {} t WHERE t.{} = $1)",
        spec.row, spec.table, spec.id
    );
    let (revision, row): (i64, Option<Value>) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(&api.pool)
        .await
        .map_err(ApiError::internal)?;
    match row {
        Some(item) => Ok(at_revision(revision, json!({ what: item }))),
        None => Err(ApiError::not_found(format!(
            "{} with ID {id:?} not found.",
            capitalized(what)
        ))),
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The page size asked for, or the default.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid(format!(
            "limit: between 1 and {MAX_LIMIT}"
        )))
    }
}

type Params<T> = Result<Query<T>, QueryRejection>;

async fn list_nodes(
    State(api): State<QueryApi>,
    q: Params<ListParams>,
) -> Result<Response, ApiError> {
    let Query(p) = q?;
    refuse_other_filters(&p, &["node_type"])?;
    let mut f = Filters::new();
    push_filter(
        &mut f,
        "t.node_type",
        &enum_filter(&p.node_type, "NODE_TYPE_", "_NODE"),
    );
    list(&api, &NODES, &p, f, |_| Ok(())).await
}

async fn list_services(
    State(api): State<QueryApi>,
    q: Params<ListParams>,
) -> Result<Response, ApiError> {
    let Query(p) = q?;
    refuse_other_filters(&p, &["node_id", "service_type", "external_group"])?;
    let mut f = Filters::new();
    push_filter(&mut f, "t.node_id", &p.node_id);
    let service_type = enum_filter(&p.service_type, "SERVICE_TYPE_", "_SERVICE");
    push_filter(&mut f, "t.service_type", &service_type);
    push_filter(&mut f, "t.external_group", &p.external_group);
    list(&api, &SERVICES, &p, f, |_| Ok(())).await
}

async fn list_agents(
    State(api): State<QueryApi>,
    q: Params<ListParams>,
) -> Result<Response, ApiError> {
    let Query(p) = q?;
    refuse_other_filters(&p, &["pmm_agent_id", "node_id", "service_id", "agent_type"])?;
    let owners = [&p.pmm_agent_id, &p.node_id, &p.service_id]
        .iter()
        .filter(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
        .count();
    if owners > 1 {
        return Err(ApiError::invalid(
            "expected at most one param: pmm_agent_id, node_id or service_id",
        ));
    }
    let mut f = Filters::new();
    push_filter(&mut f, "t.pmm_agent_id", &p.pmm_agent_id);
    push_filter(&mut f, "t.node_id", &p.node_id);
    push_filter(&mut f, "t.service_id", &p.service_id);
    // Stored types mix `-` and `_` (`pmm-agent`, `node_exporter`); PMM's enum names use `_`.
    let agent_type = enum_filter(&p.agent_type, "AGENT_TYPE_", "").map(|t| match t.as_str() {
        "vm_agent" => "vmagent".to_owned(),
        _ => t.replace('-', "_"),
    });
    push_filter(&mut f, "replace(t.agent_type, '-', '_')", &agent_type);
    // PMM: the pmm-agent, node or service filtered on must exist.
    let exists = |state: &crate::domain::State| {
        let missing = if let Some(id) = p.pmm_agent_id.as_deref().filter(|v| !v.is_empty()) {
            (!state.agents.contains_key(&crate::domain::AgentId::from(id)))
                .then(|| format!("Agent with ID {id:?} not found."))
        } else if let Some(id) = p.node_id.as_deref().filter(|v| !v.is_empty()) {
            (!state.nodes.contains_key(&crate::domain::NodeId::from(id)))
                .then(|| format!("Node with ID {id:?} not found."))
        } else if let Some(id) = p.service_id.as_deref().filter(|v| !v.is_empty()) {
            (!state
                .services
                .contains_key(&crate::domain::ServiceId::from(id)))
            .then(|| format!("Service with ID {id:?} not found."))
        } else {
            None
        };
        missing.map_or(Ok(()), |m| Err(ApiError::not_found(m)))
    };
    list(&api, &AGENTS, &p, f, exists).await
}

async fn get_node(
    State(api): State<QueryApi>,
    Path(id): Path<String>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let Query(c) = q?;
    get_one(&api, &NODES, &id, &c, "node").await
}

async fn get_service(
    State(api): State<QueryApi>,
    Path(id): Path<String>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let Query(c) = q?;
    get_one(&api, &SERVICES, &id, &c, "service").await
}

async fn get_agent(
    State(api): State<QueryApi>,
    Path(id): Path<String>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let Query(c) = q?;
    get_one(&api, &AGENTS, &id, &c, "agent").await
}

async fn get_settings(
    State(api): State<QueryApi>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let Query(c) = q?;
    api.ready(&c).await?;
    let (revision, settings): (i64, Value) =
        sqlx::query_as("SELECT (SELECT position FROM log_head), settings FROM settings")
            .fetch_one(&api.pool)
            .await
            .map_err(ApiError::internal)?;
    Ok(at_revision(revision, json!({ "settings": settings })))
}

async fn cluster(State(api): State<QueryApi>) -> Result<Response, ApiError> {
    let status = api.internal.cluster_status().await;
    let revision = api.dispatcher.state().revision;
    Ok(at_revision(revision, crate::cluster::status_json(&status)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    after: Option<i64>,
    limit: Option<i64>,
    stream_id: Option<String>,
    /// Comma-separated event types.
    event_type: Option<String>,
    actor: Option<String>,
    min_revision: Option<i64>,
    consistency: Option<String>,
}

async fn events(State(api): State<QueryApi>, q: Params<EventParams>) -> Result<Response, ApiError> {
    let Query(p) = q?;
    let limit = page_limit(p.limit)?;
    let after = p.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid("after: must not be negative"));
    }
    api.ready(&Consistency {
        min_revision: p.min_revision,
        consistency: p.consistency.clone(),
    })
    .await?;
    let filter = ReadFilter {
        after,
        limit,
        stream_id: p.stream_id.filter(|s| !s.is_empty()),
        event_types: p
            .event_type
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        actor: p.actor.filter(|a| !a.is_empty()),
    };
    let events = store::log::read(&api.pool, &filter, Secrets::Redact)
        .await
        .map_err(ApiError::internal)?;
    let next_after = events.last().map(|e| e.position);
    // The page may hold events applied after the state was published: the answer reflects at
    // least its last one.
    let revision = api
        .dispatcher
        .state()
        .revision
        .max(next_after.unwrap_or_default());
    let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(at_revision(
        revision,
        json!({ "events": events, "next_after": next_after }),
    ))
}

impl QueryApi {
    /// This node's state once it is as recent as the request's consistency parameters ask.
    async fn state_as_asked(
        &self,
        q: Params<Consistency>,
    ) -> Result<crate::domain::State, ApiError> {
        let Query(c) = q?;
        self.ready(&c).await?;
        Ok(self.dispatcher.state())
    }
}

/// Built-in and user alert rule templates, by name (from the state: templates are few).
async fn list_alert_templates(
    State(api): State<QueryApi>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let state = api.state_as_asked(q).await?;
    let templates: Vec<Value> = crate::grpc::alerting::all_templates(&state)
        .iter()
        .map(|t| crate::grpc::alerting::template_view(t))
        .collect();
    Ok(at_revision(
        state.revision,
        json!({ "templates": templates }),
    ))
}

/// Alert rules by id, with the expression, labels and annotations vmalert evaluates.
async fn list_alert_rules(
    State(api): State<QueryApi>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let state = api.state_as_asked(q).await?;
    let rules: Vec<Value> = state
        .alert_rules
        .values()
        .map(|r| crate::grpc::alerting::rule_view(r))
        .collect();
    Ok(at_revision(state.revision, json!({ "rules": rules })))
}

async fn get_alert_rule(
    State(api): State<QueryApi>,
    Path(id): Path<String>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let state = api.state_as_asked(q).await?;
    let rule = state
        .alert_rules
        .get(&crate::domain::RuleId::from(id.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("rule {id:?} not found")))?;
    Ok(at_revision(
        state.revision,
        json!({ "rule": crate::grpc::alerting::rule_view(rule) }),
    ))
}

/// A pmm-agent as the query API shows it: whether it is connected (the cluster's view),
/// its stream on this node if any (last seen, desired and applied revision, round trip, clock
/// drift), and the status and listen port of every agent it runs.
fn pmm_agent_view(api: &QueryApi, state: &crate::domain::State, a: &crate::domain::Agent) -> Value {
    let children: Vec<Value> = state
        .children_of(&a.agent_id)
        .iter()
        .filter_map(|id| state.agents.get(id))
        .map(|c| {
            json!({
                "agent_id": c.agent_id,
                "agent_type": c.agent_type,
                "disabled": c.disabled,
                "status": c.status.as_str(),
                "listen_port": c.listen_port,
            })
        })
        .collect();
    let stream = api.agents.as_ref().and_then(|s| s.stream(&a.agent_id));
    json!({
        "agent_id": a.agent_id,
        "runs_on_node_id": a.runs_on_node_id,
        "connected": a.connected,
        "version": a.version,
        "stream": stream,
        "agents": children,
    })
}

async fn list_pmm_agents(
    State(api): State<QueryApi>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let state = api.state_as_asked(q).await?;
    let list: Vec<Value> = state
        .agents
        .values()
        .filter(|a| a.agent_type == crate::domain::AgentType::PmmAgent)
        .map(|a| pmm_agent_view(&api, &state, a))
        .collect();
    Ok(at_revision(state.revision, json!({ "pmm_agents": list })))
}

async fn get_pmm_agent(
    State(api): State<QueryApi>,
    Path(id): Path<String>,
    q: Params<Consistency>,
) -> Result<Response, ApiError> {
    let state = api.state_as_asked(q).await?;
    let a = state
        .agents
        .get(&crate::domain::AgentId::from(id.as_str()))
        .filter(|a| a.agent_type == crate::domain::AgentType::PmmAgent)
        .ok_or_else(|| ApiError::not_found(format!("pmm-agent {id:?} not found")))?;
    let view = pmm_agent_view(&api, &state, a);
    Ok(at_revision(state.revision, json!({ "pmm_agent": view })))
}

async fn list_tokens(State(api): State<QueryApi>) -> Result<Response, ApiError> {
    let state = api.dispatcher.state();
    let tokens: Vec<Value> = state
        .tokens
        .values()
        .map(|t| {
            json!({
                "token_id": t.token_id,
                "name": t.name,
                "role": t.role,
                "created_at": t.created_at,
            })
        })
        .collect();
    Ok(at_revision(state.revision, json!({ "tokens": tokens })))
}

async fn chain_head(State(api): State<QueryApi>) -> Result<Response, ApiError> {
    let (position, hash): (i64, Vec<u8>) = sqlx::query_as("SELECT position, hash FROM log_head")
        .fetch_one(&api.pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(at_revision(
        position,
        json!({ "position": position, "hash": hex::encode(hash) }),
    ))
}

async fn verify(State(api): State<QueryApi>) -> Result<Response, ApiError> {
    let _turn = VERIFYING
        .try_acquire()
        .map_err(|_| ApiError::unavailable("a verify is already running; try again later"))?;
    let report = store::log::verify(&api.pool)
        .await
        .map_err(ApiError::internal)?;
    let first_error = report
        .first_error
        .as_ref()
        .map(|(position, why)| json!({ "position": position, "problem": why }));
    Ok(at_revision(
        report.checked,
        json!({
            "ok": report.first_error.is_none(),
            "checked": report.checked,
            "head_hash": report.head_hash,
            "first_error": first_error,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_filters_take_pmm_and_stored_spellings() {
        let f = |v: &str, p, s| enum_filter(&Some(v.to_owned()), p, s);
        assert_eq!(
            f("NODE_TYPE_GENERIC_NODE", "NODE_TYPE_", "_NODE").as_deref(),
            Some("generic")
        );
        assert_eq!(
            f("generic", "NODE_TYPE_", "_NODE").as_deref(),
            Some("generic")
        );
        assert_eq!(f("NODE_TYPE_UNSPECIFIED", "NODE_TYPE_", "_NODE"), None);
        assert_eq!(
            f("SERVICE_TYPE_MYSQL_SERVICE", "SERVICE_TYPE_", "_SERVICE").as_deref(),
            Some("mysql")
        );
        assert_eq!(
            f("AGENT_TYPE_MYSQLD_EXPORTER", "AGENT_TYPE_", "").as_deref(),
            Some("mysqld_exporter")
        );
    }
}
