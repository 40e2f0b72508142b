//! Alerting end to end: templates (built-in and user) and rules made from them, over gRPC and
//! REST, with PMM's error classes; each enabled rule becomes a vmalert rule file that vmalert
//! itself accepts, follows enable/disable, change and delete, and triggers vmalert's reload;
//! the query API lists templates and rules; refused calls change nothing.

mod support;

use pmmcp::crypto::Cipher;
use pmmcp::domain::Role;
use pmmcp::files::{Hooks, Projector, RenderOptions};
use pmmcp::grpc::pb::alerting::v1 as al;
use pmmcp::grpc::pb::management::v1::Severity;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::cluster::TestNode;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(15);

async fn rest(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method.parse().expect("method"), url)
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A loopback HTTP server counting POSTs to `/-/reload` (vmalert's reload endpoint).
async fn reload_counter() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/-/reload",
        axum::routing::post(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/-/reload"), count)
}

fn rule_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("vmalert"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

fn vmalert_available() -> bool {
    pmmcp::files::vmalert::RuleChecker::new("vmalert")
        .binary()
        .is_some()
}

struct Setup {
    node: TestNode,
    base: String,
    channel: Channel,
    admin: String,
    viewer: String,
    dir: PathBuf,
    projector: Projector,
    reloads: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    let node = TestNode::single().await;
    let addr = node.serve_public().await;
    let (reload_url, reloads) = reload_counter().await;
    let dir =
        std::env::temp_dir().join(format!("pmmcp-alerting-{}", uuid::Uuid::new_v4().simple()));
    let projector = Projector::new(
        dir.clone(),
        RenderOptions::default(),
        Hooks {
            vmalert_reload_url: Some(reload_url),
            ..Hooks::default()
        },
        Arc::new(Cipher::random()),
    );
    tokio::spawn(projector.clone().run(node.dispatcher.subscribe()));
    let admin = node.token("admin", Role::Admin).await;
    let viewer = node.token("viewer", Role::Viewer).await;
    Setup {
        channel: Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy(),
        base: format!("http://{addr}"),
        node,
        admin,
        viewer,
        dir,
        projector,
        reloads,
    }
}

impl Setup {
    fn client(&self) -> al::alerting_service_client::AlertingServiceClient<Channel> {
        al::alerting_service_client::AlertingServiceClient::new(self.channel.clone())
    }

    /// Waits until the files of `revision` are on disk.
    async fn files_at(&self, revision: i64) {
        let mut written = self.projector.written();
        tokio::time::timeout(DEADLINE, written.wait_for(|r| *r >= revision))
            .await
            .expect("the files were written in time")
            .expect("the projector runs");
    }

    async fn head(&self) -> (i64, Vec<u8>) {
        support::cluster::head(&self.node.pool).await
    }
}

const USER_TEMPLATE: &str = r#"---
templates:
  - name: replica_lag
    version: 1
    summary: Replica behind its source
    expr: max by (service_name) (mysql_slave_status_seconds_behind_master) > [[ .lag ]]
    params:
      - name: lag
        summary: Seconds behind
        unit: s
        type: float
        range: [1, 86400]
        value: 30
    for: 2m
    severity: error
    labels:
      team: db
    annotations:
      summary: "{{ $labels.service_name }} is more than [[ .lag ]]s behind"
"#;

fn float(name: &str, v: f64) -> al::ParamValue {
    al::ParamValue {
        name: name.into(),
        r#type: al::ParamType::Float as i32,
        value: Some(al::param_value::Value::Float(v)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_listed_created_updated_and_deleted_with_pmm_error_classes() {
    let s = setup().await;
    let url = format!("{}/v1/alerting/templates", s.base);
    let (status, list) = rest("GET", &url, &s.viewer, None).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for want in [
        "pmm_node_down",
        "pmm_mysql_down",
        "pmm_postgresql_down",
        "pmm_mongodb_down",
        "pmm_node_high_cpu_load",
        "pmm_node_low_free_memory",
        "pmm_node_low_free_disk",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let cpu = list["templates"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "pmm_node_high_cpu_load"))
        .expect("cpu template");
    assert_eq!(cpu["source"], "TEMPLATE_SOURCE_BUILT_IN");
    assert_eq!(cpu["severity"], "SEVERITY_WARNING");
    assert_eq!(cpu["params"][0]["float"]["default"], 80.0);
    assert_eq!(cpu["params"][0]["unit"], "PARAM_UNIT_PERCENTAGE");
    let total = list["total_items"].as_i64().expect("total");
    // Paging, PMM-style.
    let (_, page) = rest(
        "GET",
        &format!("{url}?page_size=3&page_index=1"),
        &s.viewer,
        None,
    )
    .await;
    assert_eq!(page["templates"].as_array().map(Vec::len), Some(3));
    assert_eq!(page["total_pages"].as_i64(), Some((total + 2) / 3));

    let before = s.head().await;
    // Refusals, each with its class, none of which changes anything.
    let refusals: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            url.clone(),
            json!({"yaml": "templates: [}"}),
            400,
            "parse",
        ),
        (
            "POST",
            url.clone(),
            json!({"yaml": USER_TEMPLATE.replace("replica_lag", "pmm_mine")}),
            400,
            "reserved",
        ),
        (
            "POST",
            url.clone(),
            json!({"yaml": USER_TEMPLATE.replace("float", "string")}),
            400,
            "not supported",
        ),
        (
            "POST",
            url.clone(),
            json!({"yaml": USER_TEMPLATE.replace("[[ .lag ]]s", "[[ .lagg ]]s")}),
            400,
            "lagg",
        ),
        (
            "POST",
            url.clone(),
            json!({"yaml": format!("{USER_TEMPLATE}{}", &USER_TEMPLATE[4..].replace("templates:\n", "").replace("replica_lag", "other"))}),
            400,
            "exactly one",
        ),
        (
            "PUT",
            format!("{url}/pmm_node_down"),
            json!({"yaml": USER_TEMPLATE}),
            400,
            "built in",
        ),
        (
            "PUT",
            format!("{url}/nope"),
            json!({"yaml": USER_TEMPLATE}),
            404,
            "not found",
        ),
        (
            "DELETE",
            format!("{url}/pmm_node_down"),
            Value::Null,
            400,
            "built in",
        ),
        (
            "DELETE",
            format!("{url}/nope"),
            Value::Null,
            404,
            "not found",
        ),
    ];
    for (method, u, body, want, text) in refusals {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = rest(method, &u, &s.admin, body).await;
        assert_eq!(status, want, "{method} {u}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(text),
            "{method} {u}: {answer} should say {text:?}"
        );
    }
    if vmalert_available() {
        // PromQL vmalert cannot parse is refused before it is stored.
        let bad = USER_TEMPLATE.replace("> [[ .lag ]]", "> > [[ .lag ]]");
        let (status, answer) = rest("POST", &url, &s.admin, Some(json!({"yaml": bad}))).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("vmalert"),
            "{answer}"
        );
        let bad = USER_TEMPLATE.replace("{{ $labels.service_name }}", "{{ $labels.service_name ");
        let (status, answer) = rest("POST", &url, &s.admin, Some(json!({"yaml": bad}))).await;
        assert_eq!(status, 400, "unclosed annotation template: {answer}");
    }
    assert_eq!(s.head().await, before, "refused calls changed nothing");

    // Create (once), update, read back.
    let (status, answer) = rest("POST", &url, &s.admin, Some(json!({"yaml": USER_TEMPLATE}))).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = rest("POST", &url, &s.admin, Some(json!({"yaml": USER_TEMPLATE}))).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("AlreadyExists")),
        "{answer}"
    );
    let (status, answer) = rest(
        "PUT",
        &format!("{url}/other_name"),
        &s.admin,
        Some(json!({"yaml": USER_TEMPLATE})),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    let updated = USER_TEMPLATE.replace("severity: error", "severity: critical");
    let (status, answer) = rest(
        "PUT",
        &format!("{url}/replica_lag"),
        &s.admin,
        Some(json!({"yaml": updated})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = s
        .client()
        .list_templates(authed(al::ListTemplatesRequest::default(), &s.viewer))
        .await
        .expect("list")
        .into_inner();
    let mine = got
        .templates
        .iter()
        .find(|t| t.name == "replica_lag")
        .expect("user template listed");
    assert_eq!(mine.source, al::TemplateSource::UserApi as i32);
    assert_eq!(mine.severity, Severity::Critical as i32);
    assert_eq!(mine.yaml, updated);
    assert!(mine.created_at.is_some());
    assert_eq!(got.total_items as i64, total + 1);
    // The query API lists them too.
    let (status, q) = rest(
        "GET",
        &format!("{}/v1/query/alerting/templates", s.base),
        &s.viewer,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        q["templates"].as_array().map(Vec::len),
        Some(total as usize + 1)
    );
    // Delete; a second delete is NotFound.
    let err = s
        .client()
        .delete_template(authed(
            al::DeleteTemplateRequest {
                name: "replica_lag".into(),
            },
            &s.viewer,
        ))
        .await
        .expect_err("viewers cannot");
    assert_eq!(err.code(), Code::PermissionDenied);
    s.client()
        .delete_template(authed(
            al::DeleteTemplateRequest {
                name: "replica_lag".into(),
            },
            &s.admin,
        ))
        .await
        .expect("deleted");
    let err = s
        .client()
        .delete_template(authed(
            al::DeleteTemplateRequest {
                name: "replica_lag".into(),
            },
            &s.admin,
        ))
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_become_vmalert_files_that_follow_every_change() {
    let s = setup().await;
    s.client()
        .create_template(authed(
            al::CreateTemplateRequest {
                yaml: USER_TEMPLATE.into(),
            },
            &s.admin,
        ))
        .await
        .expect("template");
    let cpu = al::CreateRuleRequest {
        template_name: "pmm_node_high_cpu_load".into(),
        name: "CPU busy on app nodes".into(),
        group: "nodes".into(),
        params: vec![float("threshold", 92.5)],
        r#for: Some(pbjson_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        severity: Severity::Critical as i32,
        custom_labels: [("env".to_owned(), "prod".to_owned())].into(),
        filters: vec![al::Filter {
            r#type: al::FilterType::Match as i32,
            label: "node_name".into(),
            regexp: "^app-.*".into(),
        }],
        interval: Some(pbjson_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    };
    // Refusals first: nothing changes.
    let before = s.head().await;
    let bad: Vec<(al::CreateRuleRequest, Code, &str)> = vec![
        (
            al::CreateRuleRequest {
                template_name: "nope".into(),
                ..cpu.clone()
            },
            Code::NotFound,
            "nope",
        ),
        (
            al::CreateRuleRequest {
                params: vec![float("threshold", 101.0)],
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "out of range",
        ),
        (
            al::CreateRuleRequest {
                params: vec![float("thresh", 1.0)],
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "not defined",
        ),
        (
            al::CreateRuleRequest {
                name: String::new(),
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            al::CreateRuleRequest {
                group: String::new(),
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "group",
        ),
        (
            al::CreateRuleRequest {
                filters: vec![al::Filter {
                    r#type: al::FilterType::Match as i32,
                    label: "x".into(),
                    regexp: "(".into(),
                }],
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "regexp",
        ),
        (
            al::CreateRuleRequest {
                filters: vec![al::Filter {
                    r#type: 0,
                    label: "x".into(),
                    regexp: ".*".into(),
                }],
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "FILTER_TYPE",
        ),
        (
            al::CreateRuleRequest {
                custom_labels: [("__bad".to_owned(), "x".to_owned())].into(),
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "label",
        ),
        (
            al::CreateRuleRequest {
                interval: Some(pbjson_types::Duration {
                    seconds: 0,
                    nanos: 5,
                }),
                ..cpu.clone()
            },
            Code::InvalidArgument,
            "whole seconds",
        ),
    ];
    for (req, code, text) in bad {
        let err = s
            .client()
            .create_rule(authed(req, &s.admin))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().contains(text),
            "{} should say {text:?}",
            err.message()
        );
    }
    assert_eq!(s.head().await, before, "refused rules changed nothing");

    let resp = s
        .client()
        .create_rule(authed(cpu.clone(), &s.admin))
        .await
        .expect("created");
    let at = revision_of(&resp);
    let cpu_id = resp.into_inner().rule_id;
    assert!(!cpu_id.is_empty());
    let err = s
        .client()
        .create_rule(authed(cpu.clone(), &s.admin))
        .await
        .expect_err("same name in the same group");
    assert_eq!(err.code(), Code::AlreadyExists);
    // A preview of a rule shows its file to be, and commits nothing.
    let before = s.head().await;
    let (status, preview) = rest(
        "POST",
        &format!("{}/v1/query/files:preview", s.base),
        &s.admin,
        Some(json!({
            "rpc": "alerting.v1.AlertingService/CreateRule",
            "request": {"template_name": "pmm_mysql_down", "name": "Preview", "group": "g"},
        })),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    let files = preview["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{preview}");
    assert!(
        files[0]["path"]
            .as_str()
            .unwrap_or_default()
            .starts_with("vmalert/")
    );
    assert_eq!(files[0]["change"], "added");
    assert!(
        files[0]["diff"]
            .as_str()
            .unwrap_or_default()
            .contains("+      - alert: Preview")
    );
    assert_eq!(s.head().await, before, "a preview commits nothing");
    // A rule from the user template, over REST with PMM's JSON.
    let (status, answer) = rest(
        "POST",
        &format!("{}/v1/alerting/rules", s.base),
        &s.admin,
        Some(json!({
            "template_name": "replica_lag",
            "name": "Replica lag",
            "group": "databases",
            "params": [{"name": "lag", "type": "PARAM_TYPE_FLOAT", "float": 300}],
            "for": "120s",
            "severity": "SEVERITY_ERROR",
        })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let lag_id = answer["rule_id"].as_str().expect("rule_id").to_owned();
    s.files_at(at + 1).await;
    assert_eq!(rule_files(&s.dir), {
        let mut want = vec![format!("{cpu_id}.yml"), format!("{lag_id}.yml")];
        want.sort();
        want
    });
    let text = std::fs::read_to_string(s.dir.join(format!("vmalert/{cpu_id}.yml"))).expect("file");
    assert!(text.contains("label_match("), "{text}");
    assert!(text.contains("> 92.5"), "{text}");
    assert!(
        text.contains("interval: 30s") && text.contains("for: 10m"),
        "{text}"
    );
    assert!(
        text.contains("severity: critical") && text.contains("env: prod"),
        "{text}"
    );
    if vmalert_available() {
        let out = std::process::Command::new("vmalert")
            .arg("-dryRun")
            .arg(format!("-rule={}/vmalert/*.yml", s.dir.display()))
            .output()
            .expect("vmalert runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The reload hook ran for the new files.
    let reloads = s.reloads.clone();
    wait_until("vmalert's reload", DEADLINE, || {
        let n = reloads.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;

    // Listed by the rules RPC and the query API, as vmalert evaluates them.
    let rules = s
        .client()
        .list_rules(authed(al::ListRulesRequest {}, &s.viewer))
        .await
        .expect("list")
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 2);
    let listed = rules
        .iter()
        .find(|r| r.rule_id == cpu_id)
        .expect("cpu rule");
    assert!(listed.enabled);
    assert_eq!(listed.labels["template_name"], "pmm_node_high_cpu_load");
    assert!(listed.expr.starts_with("label_match("));
    let (status, one) = rest(
        "GET",
        &format!(
            "{}/v1/query/alerting/rules/{lag_id}?min_revision={}",
            s.base,
            at + 1
        ),
        &s.viewer,
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        one["rule"]["expr"],
        "max by (service_name) (mysql_slave_status_seconds_behind_master) > 300"
    );
    assert_eq!(
        one["rule"]["annotations"]["summary"],
        "{{ $labels.service_name }} is more than 300s behind"
    );
    let (status, _) = rest(
        "GET",
        &format!("{}/v1/query/alerting/rules/nope", s.base),
        &s.viewer,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The template goes; the rule made from it stays (it keeps its copy).
    s.client()
        .delete_template(authed(
            al::DeleteTemplateRequest {
                name: "replica_lag".into(),
            },
            &s.admin,
        ))
        .await
        .expect("template deleted");

    // Disable: the file goes. Enable: it comes back. Change a parameter: it changes.
    let change = |req: al::ChangeRuleRequest| {
        let mut c = s.client();
        let token = s.admin.clone();
        async move { c.change_rule(authed(req, &token)).await }
    };
    let off = change(al::ChangeRuleRequest {
        rule_id: cpu_id.clone(),
        enabled: Some(false),
        ..Default::default()
    })
    .await
    .expect("disabled");
    s.files_at(revision_of(&off)).await;
    assert_eq!(rule_files(&s.dir), vec![format!("{lag_id}.yml")]);
    assert!(!off.into_inner().rule.expect("rule").enabled);
    let on = change(al::ChangeRuleRequest {
        rule_id: cpu_id.clone(),
        enabled: Some(true),
        params: Some(al::ParamValues {
            values: vec![float("threshold", 75.0)],
        }),
        ..Default::default()
    })
    .await
    .expect("enabled");
    s.files_at(revision_of(&on)).await;
    let text = std::fs::read_to_string(s.dir.join(format!("vmalert/{cpu_id}.yml"))).expect("file");
    assert!(text.contains("> 75,") || text.contains("> 75\""), "{text}");
    let err = change(al::ChangeRuleRequest {
        rule_id: cpu_id.clone(),
        params: Some(al::ParamValues {
            values: vec![float("threshold", -1.0)],
        }),
        ..Default::default()
    })
    .await
    .expect_err("out of range");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = change(al::ChangeRuleRequest {
        rule_id: "nope".into(),
        ..Default::default()
    })
    .await
    .expect_err("unknown rule");
    assert_eq!(err.code(), Code::NotFound);

    // Alerting off in the settings: no rule files at all; back on, they return.
    let (status, answer) = rest(
        "PUT",
        &format!("{}/v1/server/settings", s.base),
        &s.admin,
        Some(json!({"enable_alerting": false})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    s.files_at(s.node.dispatcher.state().revision).await;
    assert!(rule_files(&s.dir).is_empty());
    rest(
        "PUT",
        &format!("{}/v1/server/settings", s.base),
        &s.admin,
        Some(json!({"enable_alerting": true})),
    )
    .await;
    s.files_at(s.node.dispatcher.state().revision).await;
    assert_eq!(rule_files(&s.dir).len(), 2);

    // Delete over REST; a second delete is NotFound.
    let url = format!("{}/v1/alerting/rules/{cpu_id}", s.base);
    let (status, answer) = rest("DELETE", &url, &s.admin, None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = rest("DELETE", &url, &s.admin, None).await;
    assert_eq!(status, 404);
    s.files_at(s.node.dispatcher.state().revision).await;
    assert_eq!(rule_files(&s.dir), vec![format!("{lag_id}.yml")]);

    // Every change is an event in the log.
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE event_type LIKE 'Alert%' ORDER BY position",
    )
    .fetch_all(&s.node.pool)
    .await
    .expect("events");
    assert_eq!(
        events,
        [
            "AlertTemplateCreated",
            "AlertRuleCreated",
            "AlertRuleCreated",
            "AlertTemplateDeleted",
            "AlertRuleChanged",
            "AlertRuleChanged",
            "AlertRuleDeleted",
        ]
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}
