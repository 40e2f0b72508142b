//! The public API: PMM v3's gRPC services (inventory, management, server) and the same RPCs
//! over REST JSON at PMM's paths, with gRPC reflection and the standard health service.
//!
//! One implementation serves both transports: each RPC is a function in [`handlers`] from the
//! request (as its generated type serialises to JSON) to the response (as JSON its type
//! accepts). gRPC calls arrive typed; REST bodies, path and query parameters are first decoded
//! into the same generated types (pbjson: grpc-gateway's JSON), so a malformed body, an unknown
//! field or enum name, or a wrong type is refused before anything runs, identically.
//!
//! Every call but `Readiness` needs `authorization: Bearer <token>`: admins send commands,
//! viewers (and admins) read; unauthenticated is `Unauthenticated` / 401, the wrong role
//! `PermissionDenied` / 403. Commands may carry `x-pmm-command-id` so a retry applies once;
//! every answer carries `x-pmm-revision`, the revision it reflects.

pub mod alerting;
pub mod handlers;
pub mod openapi;
pub mod pb;
pub mod requests;
pub mod rest;
pub mod schema;
pub mod views;

use crate::commands::dispatcher::Dispatcher;
use crate::commands::{Command, CommandError, CommandMeta, Rejection};
use crate::crypto::Cipher;
use crate::domain::token::token_hash;
use crate::domain::{ApiToken, Role, State};
use crate::events::Event;
use crate::store::{self, ReadFilter, Secrets};
use axum::http::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

/// Header (and gRPC metadata key) with the revision an answer reflects.
pub const REVISION_HEADER: &str = "x-pmm-revision";
/// Header (and metadata key) with a client-chosen command id: a resend applies once.
pub const COMMAND_ID_HEADER: &str = "x-pmm-command-id";
/// Longest a command waits for its own write to be visible here.
const READ_OWN_WRITE: Duration = Duration::from_secs(10);

/// What every RPC shares.
#[derive(Clone)]
pub struct Api {
    pub dispatcher: Dispatcher,
    pub pool: PgPool,
    pub cipher: Arc<Cipher>,
    /// How this node renders its generated files (for the files' query routes).
    pub files: crate::files::RenderOptions,
    /// vmalert's check of alert rules before their commands are sent.
    pub rule_checker: crate::files::vmalert::RuleChecker,
    /// The pmm-agent streams served on this port (none: not served).
    pub agents: Option<crate::agents::AgentServer>,
}

/// Who calls: the token that authenticated the call, and the headers it came with.
pub struct Caller {
    pub token: Option<Arc<ApiToken>>,
    pub headers: HeaderMap,
}

/// Which tokens may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Commands: admin tokens.
    Admin,
    /// Inventory and settings reads: admins and viewers.
    Read,
    /// Any valid token.
    Any,
    /// No token needed (readiness probes).
    Open,
}

impl Access {
    pub fn roles(self) -> &'static [Role] {
        match self {
            Access::Admin => &[Role::Admin],
            Access::Read => &[Role::Admin, Role::Viewer],
            Access::Any => &[Role::Admin, Role::Viewer, Role::Auditor, Role::Agent],
            Access::Open => &[],
        }
    }
}

/// An RPC's answer: its JSON and the revision it reflects.
pub struct Reply {
    pub body: Value,
    pub revision: i64,
}

impl Reply {
    fn read(state: &State, body: Value) -> Self {
        Reply {
            body: without_nulls(body),
            revision: state.revision,
        }
    }
}

/// A command that applied: its events, and the state that includes them.
pub struct Done {
    pub events: Vec<Event>,
    pub state: State,
    pub revision: i64,
}

impl Done {
    fn reply(&self, body: Value) -> Reply {
        Reply {
            body: without_nulls(body),
            revision: self.revision,
        }
    }
}

/// Drops `null` members (absent optional ids): protobuf JSON has no null for scalars.
fn without_nulls(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

pub type Handler = for<'a> fn(
    &'a Api,
    &'a Caller,
    Value,
) -> Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send + 'a>>;

impl Api {
    pub fn new(dispatcher: Dispatcher, pool: PgPool, cipher: Arc<Cipher>) -> Self {
        Self {
            dispatcher,
            pool,
            cipher,
            files: crate::files::RenderOptions::default(),
            rule_checker: crate::files::vmalert::RuleChecker::new("vmalert"),
            agents: None,
        }
    }

    fn state(&self) -> State {
        self.dispatcher.state()
    }

    /// Checks the bearer token in `headers` against `access`.
    pub fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<Caller, Status> {
        let token = match access {
            Access::Open => None,
            _ => Some(authenticate(&self.state(), headers, access.roles())?),
        };
        Ok(Caller {
            token,
            headers: headers.clone(),
        })
    }

    /// Sends one command (through the leader), waits until this node has applied it, and
    /// returns its events (the first result's, for a resent command id).
    pub async fn run(&self, caller: &Caller, cmd: Command) -> Result<Done, Status> {
        self.send(caller, cmd, true).await
    }

    /// [`Api::run`] for answers that show nothing of what changed: no events are read.
    pub async fn run_quiet(&self, caller: &Caller, cmd: Command) -> Result<Done, Status> {
        self.send(caller, cmd, false).await
    }

    async fn send(&self, caller: &Caller, cmd: Command, with_events: bool) -> Result<Done, Status> {
        let meta = self.meta(caller)?;
        self.send_as(meta, cmd, with_events).await
    }

    /// The command meta of a call: its actor (the token's name) and its command id (the
    /// `x-pmm-command-id` header, else a new one).
    pub fn meta(&self, caller: &Caller) -> Result<CommandMeta, Status> {
        let actor = caller
            .token
            .as_ref()
            .map(|t| format!("token:{}", t.name))
            .unwrap_or_else(|| "anonymous".to_owned());
        let meta = match caller.headers.get(COMMAND_ID_HEADER) {
            Some(v) => {
                let id = v.to_str().map_err(|_| {
                    Status::invalid_argument(format!("{COMMAND_ID_HEADER} must be visible ASCII"))
                })?;
                CommandMeta::with_id(id, actor)
            }
            None => CommandMeta::new(actor),
        };
        Ok(meta)
    }

    /// [`Api::run`] with a meta from [`Api::meta`] (a handler that needs the command id first).
    pub async fn run_as(&self, meta: CommandMeta, cmd: Command) -> Result<Done, Status> {
        self.send_as(meta, cmd, true).await
    }

    async fn send_as(
        &self,
        meta: CommandMeta,
        cmd: Command,
        with_events: bool,
    ) -> Result<Done, Status> {
        let applied = self.dispatcher.dispatch(cmd, meta).await.map_err(status)?;
        let state = match applied.positions {
            Some(_) => {
                self.dispatcher
                    .wait_for(applied.revision, READ_OWN_WRITE)
                    .await
            }
            // A command that changed nothing names no revision: read at least what the
            // leader had committed when it decided, so the answer is not older than that.
            None => self.dispatcher.linearizable_state(READ_OWN_WRITE).await,
        }
        .map_err(status)?;
        let revision = match applied.positions {
            Some(_) => applied.revision,
            None => state.revision,
        };
        let events = match applied.positions.filter(|_| with_events) {
            None => Vec::new(),
            Some((from, to)) => {
                let filter = ReadFilter {
                    after: from - 1,
                    limit: to - from + 1,
                    ..ReadFilter::default()
                };
                // Sealed secrets decode; no view ever shows them.
                store::log::read(&self.pool, &filter, Secrets::Keep)
                    .await
                    .map_err(|e| internal(&e))?
                    .iter()
                    .map(|e| e.decode())
                    .collect::<Result<_, _>>()
                    .map_err(|e| internal(&e))?
            }
        };
        Ok(Done {
            events,
            state,
            revision,
        })
    }

    /// One gRPC call: authorize, run the handler on the request's JSON, type the answer.
    async fn grpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: tonic::Request<Req>,
        access: Access,
        handler: Handler,
    ) -> Result<tonic::Response<Resp>, Status> {
        let headers = request.metadata().clone().into_headers();
        let caller = self.authorize(&headers, access)?;
        // prost keeps unknown enum numbers and any Duration; pbjson refuses to show those.
        let body = serde_json::to_value(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, handler(self, &caller, body))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the request took longer than {REQUEST_TIMEOUT:?}"
                ))
            })??;
        let typed: Resp = serde_json::from_value(reply.body).map_err(|e| internal(&e))?;
        let mut response = tonic::Response::new(typed);
        if let Ok(v) = reply.revision.to_string().parse() {
            response.metadata_mut().insert(REVISION_HEADER, v);
        }
        Ok(response)
    }
}

/// The token in `authorization: Bearer <token>`, if it is valid and of one of `roles`.
pub fn authenticate(
    state: &State,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<Arc<ApiToken>, Status> {
    let secret = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 7235).
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("a bearer token is required (authorization: Bearer ...)")
        })?;
    let token = state
        .token_by_hash(&token_hash(secret))
        .ok_or_else(|| Status::unauthenticated("the token is not valid (unknown or revoked)"))?;
    if roles.contains(&token.role) {
        Ok(token.clone())
    } else {
        Err(Status::permission_denied(format!(
            "a {} token may not call this; it needs one of: {}",
            token.role.as_str(),
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// The one mapping from command errors to gRPC codes (PMM's codes for its rule classes).
pub fn status(e: CommandError) -> Status {
    match e {
        CommandError::Invalid(m) => Status::invalid_argument(m),
        CommandError::NotFound(m) => Status::not_found(m),
        CommandError::AlreadyExists(m) => Status::already_exists(m),
        CommandError::FailedPrecondition(m) => Status::failed_precondition(m),
        CommandError::PermissionDenied(m) => Status::permission_denied(m),
        e @ CommandError::Conflict { .. } => Status::aborted(e.to_string()),
        e @ (CommandError::NotLeader { .. } | CommandError::Unavailable(_)) => {
            Status::unavailable(e.to_string())
        }
        CommandError::Internal(m) => internal(&m),
    }
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Self {
        status(r.into())
    }
}

/// An internal failure: logged here, answered without details.
fn internal(e: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "request failed");
    Status::internal("the request failed; see the server log")
}

/// The name of a gRPC code as grpc-gateway and our REST errors spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The HTTP status grpc-gateway gives a gRPC code.
pub fn http_status(code: Code) -> axum::http::StatusCode {
    use axum::http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

/// Boxes an async handler into a [`Handler`].
macro_rules! handler {
    ($f:path) => {{
        fn call<'a>(
            api: &'a Api,
            caller: &'a Caller,
            body: Value,
        ) -> Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send + 'a>> {
            Box::pin($f(api, caller, body))
        }
        call as Handler
    }};
}

/// One RPC as the REST gateway and the OpenAPI document see it.
#[derive(Clone)]
pub struct Route {
    /// `inventory.v1.NodesService/ListNodes`.
    pub rpc: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// True when the body is the request (`body: "*"`).
    pub body: bool,
    pub access: Access,
    /// Full names of the request and response messages.
    pub request: &'static str,
    pub response: &'static str,
    pub handler: Handler,
    /// Decodes JSON into the request type and back: refuses what the type refuses.
    pub normalize_request: fn(Value) -> Result<Value, String>,
    pub normalize_response: fn(Value) -> Result<Value, String>,
}

/// `server.v1.ServerService`, `change_settings` -> `server.v1.ServerService/ChangeSettings`:
/// the gRPC method's own name. Built once, with the route table.
fn method_name(service: &str, rust_name: &str) -> &'static str {
    let camel: String = rust_name
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    Box::leak(format!("{service}/{camel}").into_boxed_str())
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {})", self.rpc, self.method, self.path)
    }
}

fn normalize<T: Serialize + DeserializeOwned>(v: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Declares the services: a tonic implementation per service and the route table.
macro_rules! services {
    ($(
        $svc:ident in $pkg:ident::$ver:ident as $server_mod:ident::$trait:ident, $full:literal {
            $( $rpc:ident ( $req:ident -> $resp:ident ) $access:ident $method:ident $path:literal $body:literal => $f:path ; )*
        }
    )*) => {
        $(
            /// The gRPC service, backed by [`handlers`].
            #[derive(Clone)]
            pub struct $svc(pub Api);

            #[tonic::async_trait]
            impl pb::$pkg::$ver::$server_mod::$trait for $svc {
                $(
                    async fn $rpc(
                        &self,
                        request: tonic::Request<pb::$pkg::$ver::$req>,
                    ) -> Result<tonic::Response<pb::$pkg::$ver::$resp>, Status> {
                        self.0.grpc(request, Access::$access, handler!($f)).await
                    }
                )*
            }
        )*

        /// Every RPC with its REST mapping, in declaration order (built once).
        pub fn routes() -> &'static [Route] {
            static ROUTES: std::sync::LazyLock<Vec<Route>> = std::sync::LazyLock::new(|| vec![$($(
                Route {
                    rpc: method_name($full, stringify!($rpc)),
                    method: stringify!($method),
                    path: $path,
                    body: $body,
                    access: Access::$access,
                    request: concat!(stringify!($pkg), ".", stringify!($ver), ".", stringify!($req)),
                    response: concat!(stringify!($pkg), ".", stringify!($ver), ".", stringify!($resp)),
                    handler: handler!($f),
                    normalize_request: normalize::<pb::$pkg::$ver::$req>,
                    normalize_response: normalize::<pb::$pkg::$ver::$resp>,
                },
            )*)*]);
            &ROUTES
        }
    };
}

use alerting as al;
use handlers as h;

services! {
    NodesService in inventory::v1 as nodes_service_server::NodesService, "inventory.v1.NodesService" {
        list_nodes(ListNodesRequest -> ListNodesResponse) Read GET "/v1/inventory/nodes" false => h::list_nodes;
        get_node(GetNodeRequest -> GetNodeResponse) Read GET "/v1/inventory/nodes/{node_id}" false => h::get_node;
        add_node(AddNodeRequest -> AddNodeResponse) Admin POST "/v1/inventory/nodes" true => h::add_node;
        remove_node(RemoveNodeRequest -> RemoveNodeResponse) Admin DELETE "/v1/inventory/nodes/{node_id}" false => h::remove_node;
    }
    ServicesService in inventory::v1 as services_service_server::ServicesService, "inventory.v1.ServicesService" {
        list_services(ListServicesRequest -> ListServicesResponse) Read GET "/v1/inventory/services" false => h::list_services;
        list_active_service_types(ListActiveServiceTypesRequest -> ListActiveServiceTypesResponse) Read POST "/v1/inventory/services:getTypes" true => h::list_active_service_types;
        get_service(GetServiceRequest -> GetServiceResponse) Read GET "/v1/inventory/services/{service_id}" false => h::get_service;
        add_service(AddServiceRequest -> AddServiceResponse) Admin POST "/v1/inventory/services" true => h::add_service;
        remove_service(RemoveServiceRequest -> RemoveServiceResponse) Admin DELETE "/v1/inventory/services/{service_id}" false => h::remove_service;
        change_service(ChangeServiceRequest -> ChangeServiceResponse) Admin PUT "/v1/inventory/services/{service_id}" true => h::change_service;
    }
    AgentsService in inventory::v1 as agents_service_server::AgentsService, "inventory.v1.AgentsService" {
        list_agents(ListAgentsRequest -> ListAgentsResponse) Read GET "/v1/inventory/agents" false => h::list_agents;
        get_agent(GetAgentRequest -> GetAgentResponse) Read GET "/v1/inventory/agents/{agent_id}" false => h::get_agent;
        get_agent_logs(GetAgentLogsRequest -> GetAgentLogsResponse) Read GET "/v1/inventory/agents/{agent_id}/logs" false => h::get_agent_logs;
        add_agent(AddAgentRequest -> AddAgentResponse) Admin POST "/v1/inventory/agents" true => h::add_agent;
        change_agent(ChangeAgentRequest -> ChangeAgentResponse) Admin PUT "/v1/inventory/agents/{agent_id}" true => h::change_agent;
        remove_agent(RemoveAgentRequest -> RemoveAgentResponse) Admin DELETE "/v1/inventory/agents/{agent_id}" false => h::remove_agent;
    }
    ManagementService in management::v1 as management_service_server::ManagementService, "management.v1.ManagementService" {
        list_agents(ListAgentsRequest -> ListAgentsResponse) Read GET "/v1/management/agents" false => h::management_list_agents;
        register_node(RegisterNodeRequest -> RegisterNodeResponse) Admin POST "/v1/management/nodes" true => h::register_node;
        unregister_node(UnregisterNodeRequest -> UnregisterNodeResponse) Admin DELETE "/v1/management/nodes/{node_id}" false => h::unregister_node;
        list_nodes(ListNodesRequest -> ListNodesResponse) Read GET "/v1/management/nodes" false => h::management_list_nodes;
        get_node(GetNodeRequest -> GetNodeResponse) Read GET "/v1/management/nodes/{node_id}" false => h::management_get_node;
        add_service(AddServiceRequest -> AddServiceResponse) Admin POST "/v1/management/services" true => h::management_add_service;
        list_services(ListServicesRequest -> ListServicesResponse) Read GET "/v1/management/services" false => h::management_list_services;
        add_azure_database(AddAzureDatabaseRequest -> AddAzureDatabaseResponse) Admin POST "/v1/management/services/azure" true => h::management_add_azure_database;
        remove_service(RemoveServiceRequest -> RemoveServiceResponse) Admin DELETE "/v1/management/services/{service_id}" false => h::management_remove_service;
    }
    AlertingService in alerting::v1 as alerting_service_server::AlertingService, "alerting.v1.AlertingService" {
        list_templates(ListTemplatesRequest -> ListTemplatesResponse) Read GET "/v1/alerting/templates" false => al::list_templates;
        create_template(CreateTemplateRequest -> CreateTemplateResponse) Admin POST "/v1/alerting/templates" true => al::create_template;
        update_template(UpdateTemplateRequest -> UpdateTemplateResponse) Admin PUT "/v1/alerting/templates/{name}" true => al::update_template;
        delete_template(DeleteTemplateRequest -> DeleteTemplateResponse) Admin DELETE "/v1/alerting/templates/{name}" false => al::delete_template;
        create_rule(CreateRuleRequest -> CreateRuleResponse) Admin POST "/v1/alerting/rules" true => al::create_rule_rpc;
        list_rules(ListRulesRequest -> ListRulesResponse) Read GET "/v1/alerting/rules" false => al::list_rules;
        change_rule(ChangeRuleRequest -> ChangeRuleResponse) Admin PUT "/v1/alerting/rules/{rule_id}" true => al::change_rule_rpc;
        delete_rule(DeleteRuleRequest -> DeleteRuleResponse) Admin DELETE "/v1/alerting/rules/{rule_id}" false => al::delete_rule;
    }
    ServerService in server::v1 as server_service_server::ServerService, "server.v1.ServerService" {
        version(VersionRequest -> VersionResponse) Any GET "/v1/server/version" false => h::version;
        readiness(ReadinessRequest -> ReadinessResponse) Open GET "/v1/server/readyz" false => h::readiness;
        leader_health_check(LeaderHealthCheckRequest -> LeaderHealthCheckResponse) Any GET "/v1/server/leaderHealthCheck" false => h::leader_health_check;
        get_settings(GetSettingsRequest -> GetSettingsResponse) Read GET "/v1/server/settings" false => h::get_settings;
        get_read_only_settings(GetReadOnlySettingsRequest -> GetReadOnlySettingsResponse) Any GET "/v1/server/settings/readonly" false => h::get_read_only_settings;
        change_settings(ChangeSettingsRequest -> ChangeSettingsResponse) Admin PUT "/v1/server/settings" true => h::change_settings;
    }
}

/// Largest gRPC message or REST body accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Longest a call may run.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything public on one port: the gRPC services (HTTP/2) and their REST gateway, plus
/// the query API.
pub fn router(api: Api, query: crate::api::QueryApi) -> anyhow::Result<axum::Router> {
    let files = crate::files::query::router(api.clone(), api.files.clone());
    Ok(grpc_routes(api.clone())?
        .into_axum_router()
        .merge(rest::router(api))
        .merge(files)
        .merge(crate::api::router(query))
        .fallback(rest::not_found)
        .method_not_allowed_fallback(rest::method_not_allowed))
}

/// The gRPC server's routes: the five services, reflection and health.
pub fn grpc_routes(api: Api) -> anyhow::Result<tonic::service::Routes> {
    use pb::alerting::v1::alerting_service_server::AlertingServiceServer;
    use pb::inventory::v1::{
        agents_service_server::AgentsServiceServer, nodes_service_server::NodesServiceServer,
        services_service_server::ServicesServiceServer,
    };
    use pb::management::v1::management_service_server::ManagementServiceServer;
    use pb::server::v1::server_service_server::ServerServiceServer;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::PUBLIC_DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::PUBLIC_DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let limit = |_: ()| MAX_REQUEST_BYTES;
    let mut routes = tonic::service::Routes::default();
    macro_rules! add {
        ($server:ident, $svc:ident, $name:literal) => {{
            routes = routes
                .add_service($server::new($svc(api.clone())).max_decoding_message_size(limit(())));
            let reporter = health_reporter.clone();
            tokio::spawn(async move {
                reporter
                    .set_service_status($name, tonic_health::ServingStatus::Serving)
                    .await
            });
        }};
    }
    add!(
        NodesServiceServer,
        NodesService,
        "inventory.v1.NodesService"
    );
    add!(
        ServicesServiceServer,
        ServicesService,
        "inventory.v1.ServicesService"
    );
    add!(
        AgentsServiceServer,
        AgentsService,
        "inventory.v1.AgentsService"
    );
    add!(
        ManagementServiceServer,
        ManagementService,
        "management.v1.ManagementService"
    );
    add!(
        AlertingServiceServer,
        AlertingService,
        "alerting.v1.AlertingService"
    );
    add!(
        ServerServiceServer,
        ServerService,
        "server.v1.ServerService"
    );
    if let Some(agents) = api.agents.clone() {
        routes = routes.add_service(agents.service());
    }
    Ok(routes
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(health))
}
