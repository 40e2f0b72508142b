//! The generated files in the query API:
//!
//! - `GET /v1/query/files`: every file as this node renders it now, with its SHA-256 and size,
//!   at the revision they reflect;
//! - `GET /v1/query/files/{path}?revision=R`: one file as it was at revision R (default: now);
//! - `POST /v1/query/files:preview`: for a command not sent, `{"rpc": "<package.Service/Method>",
//!   "request": {...}}` in the public API's JSON, the unified diff of every file it would change.
//!   Nothing is committed.
//!
//! The text shown has exporter passwords replaced by `[redacted]`, as every query output hides
//! secrets, and the hashes are of that text: a hash of the real bytes would let a reader test
//! password guesses offline. The real hashes are in the node's `manifest.json`.

use super::{RenderOptions, Rendered, render_all, sha256_hex};
use crate::commands::{Command, Ctx};
use crate::crypto::Cipher;
use crate::domain::State;
use crate::grpc::alerting as al;
use crate::grpc::requests::{self as req, P};
use crate::grpc::{Access, Api};
use crate::store::{self, ReadFilter, Secrets};
use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tonic::Status;

/// One replay of the log at a time: a past revision folds the history up to it.
static REPLAYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The routes; `api` supplies the state, the log and the key.
pub fn router(api: Api, options: RenderOptions) -> Router {
    let (a1, o1) = (api.clone(), options.clone());
    let (a2, o2) = (api.clone(), options.clone());
    let (a3, o3) = (api, options);
    Router::new()
        .route(
            "/v1/query/files",
            get(move |headers: HeaderMap| {
                let (api, opts) = (a1.clone(), o1.clone());
                async move {
                    list(&api, &opts, &headers)
                        .await
                        .unwrap_or_else(|s| err(&s))
                }
            }),
        )
        .route(
            "/v1/query/files/{*path}",
            get(
                move |headers: HeaderMap,
                      Path(path): Path<String>,
                      Query(q): Query<RevisionParam>| {
                    let (api, opts) = (a2.clone(), o2.clone());
                    async move {
                        one(&api, &opts, &headers, &path, q.revision)
                            .await
                            .unwrap_or_else(|s| err(&s))
                    }
                },
            ),
        )
        .route(
            "/v1/query/files:preview",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (api, opts) = (a3.clone(), o3.clone());
                async move {
                    preview(&api, &opts, &headers, &body)
                        .await
                        .unwrap_or_else(|s| err(&s))
                }
            }),
        )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionParam {
    revision: Option<i64>,
}

fn err(s: &Status) -> Response {
    crate::grpc::rest::error_response(s)
}

/// Every file as shown (secrets redacted), rendered off the async runtime.
async fn shown(
    state: State,
    cipher: std::sync::Arc<Cipher>,
    opts: &RenderOptions,
) -> Result<Vec<Rendered>, Status> {
    let opts = RenderOptions {
        redact_secrets: true,
        ..opts.clone()
    };
    tokio::task::spawn_blocking(move || render_all(&state, &cipher, &opts))
        .await
        .map_err(|_| Status::internal("the render failed"))
}

fn with_revision(revision: i64, body: Value) -> Response {
    let mut resp = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
        resp.headers_mut().insert(crate::grpc::REVISION_HEADER, v);
    }
    resp
}

async fn list(api: &Api, opts: &RenderOptions, headers: &HeaderMap) -> Result<Response, Status> {
    api.authorize(headers, Access::Read)?;
    let state = api.dispatcher.state();
    let revision = state.revision;
    let files: Vec<Value> = shown(state, api.cipher.clone(), opts)
        .await?
        .iter()
        .map(|f| json!({ "path": f.path, "sha256": sha256_hex(&f.bytes), "size": f.bytes.len() }))
        .collect();
    Ok(with_revision(
        revision,
        json!({ "revision": revision, "files": files }),
    ))
}

async fn one(
    api: &Api,
    opts: &RenderOptions,
    headers: &HeaderMap,
    path: &str,
    revision: Option<i64>,
) -> Result<Response, Status> {
    api.authorize(headers, Access::Read)?;
    let state = match revision {
        None => api.dispatcher.state(),
        Some(r) => state_at(api, r).await?,
    };
    let revision = state.revision;
    let file = shown(state, api.cipher.clone(), opts)
        .await?
        .into_iter()
        .find(|f| f.path == path)
        .ok_or_else(|| Status::not_found(format!("no file {path:?} at revision {revision}")))?;
    let sha = sha256_hex(&file.bytes);
    let mut resp = (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        file.bytes,
    )
        .into_response();
    for (k, v) in [
        (crate::grpc::REVISION_HEADER, revision.to_string()),
        ("x-pmm-sha256", sha),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

/// The state after exactly the events up to `revision`, folded again from the log.
async fn state_at(api: &Api, revision: i64) -> Result<State, Status> {
    let head = api.dispatcher.state().revision;
    if revision < 0 || revision > head {
        return Err(Status::out_of_range(format!(
            "revision {revision} is not in the log here (0 to {head})"
        )));
    }
    let _one = REPLAYING
        .acquire()
        .await
        .map_err(|_| Status::unavailable("shutting down"))?;
    let mut state = State::default();
    while state.revision < revision {
        let page = store::log::read(
            &api.pool,
            &ReadFilter {
                after: state.revision,
                limit: (revision - state.revision).min(10_000),
                ..ReadFilter::default()
            },
            Secrets::Keep,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "replaying the log");
            Status::internal("reading the log failed; see the server log")
        })?;
        if page.is_empty() {
            break;
        }
        for e in page {
            let event = e
                .decode()
                .map_err(|_| Status::internal("an event does not decode; see verify"))?;
            state.evolve(&event);
            state.revision = e.position;
        }
    }
    Ok(state)
}

/// The command a preview names, decoded as the public API decodes it.
fn command_of(rpc: &str, request: &Value, cipher: &Cipher) -> Result<Command, Status> {
    let p = P::new(request, cipher);
    let cmd = match rpc {
        "inventory.v1.NodesService/AddNode" => req::add_node(p)?,
        "inventory.v1.NodesService/RemoveNode" => req::remove_node(p),
        "inventory.v1.ServicesService/AddService" => req::add_service(p)?,
        "inventory.v1.ServicesService/ChangeService" => req::change_service(p),
        "inventory.v1.ServicesService/RemoveService" => req::remove_service(p),
        "inventory.v1.AgentsService/AddAgent" => req::add_agent(p)?,
        "inventory.v1.AgentsService/ChangeAgent" => req::change_agent(p)?,
        "inventory.v1.AgentsService/RemoveAgent" => req::remove_agent(p),
        "management.v1.ManagementService/RegisterNode" => req::register_node(p),
        "management.v1.ManagementService/UnregisterNode" => req::unregister_node(p),
        "management.v1.ManagementService/AddService" => req::add_managed_service(p)?,
        "management.v1.ManagementService/AddAzureDatabase" => req::add_azure_database(p),
        "management.v1.ManagementService/RemoveService" => req::remove_managed_service(p),
        "server.v1.ServerService/ChangeSettings" => req::change_settings(p)?,
        "alerting.v1.AlertingService/CreateTemplate" => al::create_template_cmd(p)?,
        "alerting.v1.AlertingService/UpdateTemplate" => al::update_template_cmd(p)?,
        "alerting.v1.AlertingService/DeleteTemplate" => al::delete_template_cmd(p)?,
        "alerting.v1.AlertingService/CreateRule" => al::create_rule(p)?,
        "alerting.v1.AlertingService/ChangeRule" => Command::ChangeAlertRule(al::change_rule(p)?),
        "alerting.v1.AlertingService/DeleteRule" => al::delete_rule_cmd(p)?,
        other => {
            return Err(Status::invalid_argument(format!(
                "{other:?} is not a command of the public API"
            )));
        }
    };
    Ok(cmd)
}

async fn preview(
    api: &Api,
    opts: &RenderOptions,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Status> {
    api.authorize(headers, Access::Admin)?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Preview {
        rpc: String,
        #[serde(default)]
        request: Value,
    }
    let p: Preview = serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("expected {{\"rpc\", \"request\"}}: {e}")))?;
    // The request must be what the API would accept: decode it through its generated type.
    let route = crate::grpc::routes()
        .iter()
        .find(|r| r.rpc == p.rpc && r.access == Access::Admin)
        .ok_or_else(|| {
            Status::invalid_argument(format!("{:?} is not a command of the public API", p.rpc))
        })?;
    let request = (route.normalize_request)(p.request)
        .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
    let cmd = command_of(&p.rpc, &request, &api.cipher)?;
    let state = api.dispatcher.state();
    // Decided as the leader would, on this node's state, with a throwaway seed and no pins.
    let ctx = Ctx {
        now: chrono::Utc::now(),
        seed: rand::random(),
        env: Default::default(),
    };
    // A refusal gets the public API's one mapping of rule classes to codes.
    let (_, after) =
        crate::commands::decide_and_evolve(&state, &cmd, &ctx).map_err(Status::from)?;
    let revision = state.revision;
    let before_shown = shown(state, api.cipher.clone(), opts).await?;
    let after_shown = shown(after, api.cipher.clone(), opts).await?;
    let mut changes = Vec::new();
    let mut paths: Vec<&str> = before_shown
        .iter()
        .chain(&after_shown)
        .map(|f| f.path.as_str())
        .collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let text = |files: &[Rendered]| {
            files
                .iter()
                .find(|f| f.path == path)
                .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
        };
        let (old, new) = (text(&before_shown), text(&after_shown));
        if old == new {
            continue;
        }
        let (o, n) = (
            old.clone().unwrap_or_default(),
            new.clone().unwrap_or_default(),
        );
        let diff = similar::TextDiff::from_lines(&o, &n)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string();
        let change = match (&old, &new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        changes.push(json!({ "path": path, "change": change, "diff": diff }));
    }
    Ok(with_revision(
        revision,
        json!({ "revision": revision, "files": changes }),
    ))
}
