//! The REST gateway: every RPC of [`super::routes`] at PMM v3's path and method, in
//! grpc-gateway's JSON. Path parameters, then query parameters (typed by the request message's
//! descriptor) or the body, make up the request, which is decoded into the generated type
//! before anything runs: unknown fields, unknown enum names, wrong types and malformed JSON are
//! 400s, and change nothing.

use super::schema::Schema;
use super::{Api, MAX_REQUEST_BYTES, REQUEST_TIMEOUT, REVISION_HEADER, Route};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use prost_types::field_descriptor_proto::Type;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use tonic::{Code, Status};

/// The REST routes of the public API.
pub fn router(api: Api) -> Router {
    let mut router = Router::new();
    for route in super::routes().iter().cloned() {
        let filter = match route.method {
            "GET" => MethodFilter::GET,
            "POST" => MethodFilter::POST,
            "PUT" => MethodFilter::PUT,
            "PATCH" => MethodFilter::PATCH,
            _ => MethodFilter::DELETE,
        };
        let path = route.path;
        let api = api.clone();
        router = router.route(
            path,
            on(
                filter,
                move |params: Option<Path<BTreeMap<String, String>>>,
                      RawQuery(query): RawQuery,
                      headers: HeaderMap,
                      body: Result<Bytes, BytesRejection>| {
                    let api = api.clone();
                    let route = route.clone();
                    async move {
                        let body = match body {
                            Ok(b) => b,
                            Err(r) => return body_refused(&r),
                        };
                        let params = params.map(|Path(p)| p).unwrap_or_default();
                        call(&api, &route, params, query, headers, body).await
                    }
                },
            ),
        );
    }
    router
        .route("/v1/openapi.json", axum::routing::get(openapi))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(middleware::from_fn(time_limit))
}

/// A body that could not be read: too large (413) or cut short.
fn body_refused(r: &BytesRejection) -> Response {
    let too_large = r.status() == StatusCode::PAYLOAD_TOO_LARGE;
    let status = if too_large {
        Status::resource_exhausted(format!("the body is over {MAX_REQUEST_BYTES} bytes"))
    } else {
        Status::invalid_argument(format!("the body could not be read: {}", r.body_text()))
    };
    let mut resp = error_response(&status);
    if too_large {
        *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    }
    resp
}

/// What no route matches: gRPC's Unimplemented for gRPC calls, a JSON 404 for the rest.
pub async fn not_found(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return Status::unimplemented(format!("{} is not served here", req.uri().path()))
            .into_http::<axum::body::Body>();
    }
    error_response(&Status::not_found(format!(
        "no route {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// A known path with a method it does not take.
pub async fn method_not_allowed(req: Request) -> Response {
    let mut resp = error_response(&Status::unimplemented(format!(
        "{} does not take {}",
        req.uri().path(),
        req.method()
    )));
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document().to_owned(),
    )
        .into_response()
}

async fn time_limit(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error_response(&Status::deadline_exceeded(format!(
            "the request took longer than {REQUEST_TIMEOUT:?}"
        ))),
    }
}

async fn call(
    api: &Api,
    route: &Route,
    params: BTreeMap<String, String>,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match api.authorize(&headers, route.access) {
        Ok(c) => c,
        Err(s) => return error_response(&s),
    };
    let request = match request_json(route, params, query.as_deref(), &body).and_then(|v| {
        (route.normalize_request)(v).map_err(|e| format!("invalid request: {}", without_values(&e)))
    }) {
        Ok(v) => v,
        Err(message) => return error_response(&Status::invalid_argument(message)),
    };
    let reply = match (route.handler)(api, &caller, request).await {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match (route.normalize_response)(reply.body) {
        Ok(body) => {
            let mut resp = axum::Json(body).into_response();
            if let Ok(v) = HeaderValue::from_str(&reply.revision.to_string()) {
                resp.headers_mut().insert(REVISION_HEADER, v);
            }
            resp
        }
        Err(e) => error_response(&super::internal(&e)),
    }
}

/// The request as JSON: the body (for `body: "*"` routes) or the typed query parameters,
/// with the path parameters on top.
fn request_json(
    route: &Route,
    params: BTreeMap<String, String>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Value, String> {
    let mut obj = Map::new();
    if route.body {
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => obj = m,
                Ok(_) => return Err("the body must be a JSON object".to_owned()),
                Err(e) => return Err(format!("the body is not valid JSON: {e}")),
            }
        }
    } else if let Some(q) = query {
        let fields = Schema::get().fields(route.request);
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode_component(k)?;
            let v = decode_component(v)?;
            let field = fields.iter().find(|f| f.name == k);
            let typed = match field.map(|f| f.kind) {
                Some(Type::Bool) => match v.as_str() {
                    "true" | "1" => Value::Bool(true),
                    "false" | "0" | "" => Value::Bool(false),
                    _ => return Err(format!("{k}: {v:?} is not a boolean")),
                },
                Some(
                    Type::Int32 | Type::Uint32 | Type::Sint32 | Type::Fixed32 | Type::Sfixed32,
                ) => {
                    json!(
                        v.parse::<i64>()
                            .map_err(|_| format!("{k}: {v:?} is not an integer"))?
                    )
                }
                // Enums by name or, as grpc-gateway also takes them, by number.
                Some(Type::Enum) => v.parse::<i64>().map_or(Value::String(v), |n| json!(n)),
                _ => Value::String(v),
            };
            if field.is_some_and(|f| f.repeated) {
                if let Value::Array(a) = obj.entry(k).or_insert_with(|| Value::Array(Vec::new())) {
                    a.push(typed);
                }
            } else if obj.insert(k.clone(), typed).is_some() {
                return Err(format!("{k}: given more than once"));
            }
        }
    }
    for (k, v) in params {
        obj.insert(k, Value::String(v));
    }
    Ok(Value::Object(obj))
}

/// serde quotes a wrong-typed value in its message (``invalid type: integer `123` ``); the
/// value may be a secret sent in the wrong field, so the quoted value is left out.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        let (at, len) = i;
        out.push_str(&rest[..at + len]);
        let after = &rest[at + len..];
        // `kind `value`, expected ...`: keep the kind, drop the quoted value.
        match (after.find('`'), after.find(", expected")) {
            (Some(open), Some(exp)) if open < exp => {
                out.push_str(after[..open].trim_end());
                rest = &after[exp..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn decode_component(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// The one mapping from a gRPC status to a REST answer: grpc-gateway's HTTP status, and
/// `{error, message, code}` (`code` is the gRPC code, as grpc-gateway sends it).
pub fn error_response(s: &Status) -> Response {
    let status = super::http_status(s.code());
    let body = json!({
        "error": super::code_name(s.code()),
        "message": s.message(),
        "code": s.code() as i32,
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if s.code() == Code::Unauthenticated {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
