//! The OpenAPI 3 document of the REST API, generated from the route table and the descriptor
//! set (so it cannot drift from what the server does), plus the query API's routes. The
//! server serves it at `/v1/openapi.json`; `docs/openapi.json` is the checked-in copy
//! (`pmm-cp openapi > docs/openapi.json`), and a test fails when the two differ.

use super::schema::{Field, Schema};
use super::{Access, routes};
use prost_types::field_descriptor_proto::Type;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// The document, as pretty JSON ending in a newline (built once).
pub fn document() -> &'static str {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(build);
    &DOCUMENT
}

fn build() -> String {
    let schema = Schema::get();
    let mut paths = Map::new();
    let mut wanted = BTreeSet::new();
    for r in routes() {
        wanted.insert(r.request.to_owned());
        wanted.insert(r.response.to_owned());
        let path_params: Vec<&str> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !r.body {
            for f in schema.fields(r.request) {
                if path_params.contains(&f.name.as_str()) || f.kind == Type::Message {
                    continue;
                }
                parameters.push(json!({"name": f.name, "in": "query", "schema": field_schema(f)}));
            }
        }
        let mut op = json!({
            "operationId": r.rpc.replace('/', "_"),
            "summary": r.rpc,
            "tags": [r.rpc.split('/').next().unwrap_or_default()],
            "responses": {
                "200": {"description": "OK", "headers": {"x-pmm-revision": {"schema": {"type": "integer"}}},
                        "content": {"application/json": {"schema": reference(r.response)}}},
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        if r.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": reference(r.request)}}});
        }
        op["security"] = if r.access == Access::Open {
            json!([])
        } else {
            json!([{"bearer": []}])
        };
        op["x-pmm-roles"] = json!(
            r.access
                .roles()
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
        );
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method.to_lowercase()] = op;
    }
    query_api_paths(&mut paths);
    // Every message reachable from the routes.
    let mut schemas = Map::new();
    let mut todo: Vec<String> = wanted.into_iter().collect();
    while let Some(name) = todo.pop() {
        if schemas.contains_key(&name) {
            continue;
        }
        let mut properties = Map::new();
        for f in schema.fields(&name) {
            if f.kind == Type::Message && !f.map && !is_well_known(&f.type_name) {
                todo.push(f.type_name.clone());
            }
            if let Some(value) = schema
                .fields(&f.type_name)
                .iter()
                .find(|v| f.map && v.name == "value")
                && value.kind == Type::Message
                && !is_well_known(&value.type_name)
            {
                todo.push(value.type_name.clone());
            }
            properties.insert(f.name.clone(), field_schema(f));
        }
        schemas.insert(name, json!({"type": "object", "properties": properties}));
    }
    schemas.insert(
        "Error".to_owned(),
        json!({"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "description": "the gRPC code's name, e.g. InvalidArgument"},
            "message": {"type": "string"},
            "code": {"type": "integer", "description": "the gRPC code's number"},
        }}),
    );
    let doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "PMM control plane API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "PMM v3's inventory, management and server APIs (also gRPC, same names), and the query API for the UI and auditors. Every call but readiness needs `Authorization: Bearer <token>`; answers carry `x-pmm-revision`. Commands may carry `x-pmm-command-id` so a resend applies once.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn reference(message: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{message}")})
}

fn is_well_known(name: &str) -> bool {
    name.starts_with("google.protobuf.")
}

fn scalar(f: &Field) -> Value {
    match f.kind {
        Type::Bool => json!({"type": "boolean"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Uint32 | Type::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
            json!({"type": "string", "format": "int64"})
        }
        Type::Double | Type::Float => json!({"type": "number"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Enum => {
            json!({"type": "string", "enum": Schema::get().enums.get(&f.type_name).cloned().unwrap_or_default()})
        }
        Type::Message => match f.type_name.as_str() {
            "google.protobuf.Duration" => json!({"type": "string", "example": "5s"}),
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            name if is_well_known(name) => json!({}),
            name => reference(name),
        },
        _ => json!({"type": "string"}),
    }
}

fn field_schema(f: &Field) -> Value {
    if f.map {
        let value = Schema::get()
            .fields(&f.type_name)
            .iter()
            .find(|v| v.name == "value")
            .map(scalar)
            .unwrap_or_else(|| json!({"type": "string"}));
        return json!({"type": "object", "additionalProperties": value});
    }
    if f.repeated {
        json!({"type": "array", "items": scalar(f)})
    } else {
        scalar(f)
    }
}

/// Removes the list parameters (paging, sorting, consistency) of an operation that has none.
fn strip_paging(entry: &mut Value, method: &str) {
    if let Some(p) = entry[method]["parameters"].as_array_mut() {
        p.retain(|p| {
            !matches!(
                p["name"].as_str(),
                Some("limit" | "offset" | "order_by" | "min_revision" | "consistency")
            )
        });
    }
}

/// The query API (crate::api): described by hand, since its answers are not protobuf messages.
fn query_api_paths(paths: &mut Map<String, Value>) {
    let consistency = [
        json!({"name": "min_revision", "in": "query", "schema": {"type": "integer"}, "description": "wait (at most 10 s) until this node has applied this revision"}),
        json!({"name": "consistency", "in": "query", "schema": {"type": "string", "enum": ["linearizable"]}}),
    ];
    let paging = [
        json!({"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}}),
        json!({"name": "offset", "in": "query", "schema": {"type": "integer"}}),
        json!({"name": "order_by", "in": "query", "schema": {"type": "string"}, "description": "a column, `-column` for descending"}),
    ];
    let list = |name: &str, filters: &[&str], roles: &[&str]| {
        let mut params: Vec<Value> = filters
            .iter()
            .map(|f| json!({"name": f, "in": "query", "schema": {"type": "string"}}))
            .collect();
        params.extend(paging.iter().cloned());
        params.extend(consistency.iter().cloned());
        json!({"get": {
            "operationId": format!("query_{}", name.replace(['/', ':', '{', '}'], "_")),
            "summary": format!("query API: {name}"),
            "tags": ["query"],
            "parameters": params,
            "security": [{"bearer": []}],
            "x-pmm-roles": roles,
            "responses": {
                "200": {"description": "rows, total and revision", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        }})
    };
    const VIEW: &[&str] = &["admin", "viewer"];
    const AUDIT: &[&str] = &["admin", "auditor"];
    paths.insert(
        "/v1/query/nodes".into(),
        list("nodes", &["node_type"], VIEW),
    );
    paths.insert(
        "/v1/query/services".into(),
        list(
            "services",
            &["node_id", "service_type", "external_group"],
            VIEW,
        ),
    );
    paths.insert(
        "/v1/query/agents".into(),
        list(
            "agents",
            &["pmm_agent_id", "node_id", "service_id", "agent_type"],
            VIEW,
        ),
    );
    for item in ["nodes", "services", "agents"] {
        let mut entry = list(&format!("{item}/{{id}}"), &[], VIEW);
        if let Some(p) = entry["get"]["parameters"].as_array_mut() {
            p.insert(
                0,
                json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
        paths.insert(format!("/v1/query/{item}/{{id}}"), entry);
    }
    paths.insert("/v1/query/settings".into(), list("settings", &[], VIEW));
    paths.insert("/v1/query/cluster".into(), list("cluster", &[], VIEW));
    paths.insert(
        "/v1/query/events".into(),
        list(
            "events",
            &["after", "stream_id", "event_type", "actor"],
            AUDIT,
        ),
    );
    paths.insert("/v1/query/chain".into(), list("chain", &[], AUDIT));
    let mut verify = list("chain:verify", &[], AUDIT);
    verify["post"] = verify["get"].take();
    if let Some(o) = verify.as_object_mut() {
        o.remove("get");
    }
    paths.insert("/v1/query/chain:verify".into(), verify);
    paths.insert("/v1/query/tokens".into(), list("tokens", &[], &["admin"]));
    // Alerting lists are whole (no paging) but take the consistency parameters.
    let unpaged = |name: &str| {
        let mut entry = list(name, &[], VIEW);
        if let Some(p) = entry["get"]["parameters"].as_array_mut() {
            p.retain(|p| !matches!(p["name"].as_str(), Some("limit" | "offset" | "order_by")));
        }
        entry
    };
    for item in ["alerting/templates", "alerting/rules", "pmm-agents"] {
        paths.insert(format!("/v1/query/{item}"), unpaged(item));
    }
    let mut pmm_agent = unpaged("pmm-agents/{id}");
    if let Some(p) = pmm_agent["get"]["parameters"].as_array_mut() {
        p.insert(
            0,
            json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
    }
    paths.insert("/v1/query/pmm-agents/{id}".into(), pmm_agent);
    let mut rule = unpaged("alerting/rules/{id}");
    if let Some(p) = rule["get"]["parameters"].as_array_mut() {
        p.insert(
            0,
            json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
    }
    paths.insert("/v1/query/alerting/rules/{id}".into(), rule);
    // The generated files (crate::files::query).
    let mut files = list("files", &[], VIEW);
    strip_paging(&mut files, "get");
    paths.insert("/v1/query/files".into(), files);
    let mut one = list("files/{path}", &["revision"], VIEW);
    strip_paging(&mut one, "get");
    if let Some(p) = one["get"]["parameters"].as_array_mut() {
        p.insert(
            0,
            json!({"name": "path", "in": "path", "required": true, "schema": {"type": "string"}, "description": "e.g. supervisord.d/victoriametrics.ini"}),
        );
    }
    one["get"]["responses"]["200"] = json!({"description": "the file, exporter passwords redacted; x-pmm-sha256 is the real file's hash", "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert("/v1/query/files/{path}".into(), one);
    let mut preview = list("files:preview", &[], &["admin"]);
    strip_paging(&mut preview, "get");
    preview["post"] = preview["get"].take();
    if let Some(o) = preview.as_object_mut() {
        o.remove("get");
    }
    preview["post"]["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object", "required": ["rpc"],
        "properties": {"rpc": {"type": "string", "example": "server.v1.ServerService/ChangeSettings"}, "request": {"type": "object"}},
    }}}});
    paths.insert("/v1/query/files:preview".into(), preview);
}
