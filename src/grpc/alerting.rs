//! alerting.v1.AlertingService: PMM 3's template RPCs and CreateRule, plus pmm-cp's ListRules,
//! ChangeRule and DeleteRule. Requests are read into commands here; answers are the views of
//! templates and rules under the proto's field names.

use super::handlers::required;
use super::requests::P;
use super::{Api, Caller, Reply};
use crate::commands::alerting::{
    ChangeRule, CreateRule, CreateTemplate, DeleteRule, DeleteTemplate, UpdateTemplate,
};
use crate::commands::{Command, Ctx};
use crate::domain::alerting::{
    AlertRule, AlertTemplate, FilterKind, Number, ParamUnit, RuleFilter, Severity, TemplateSource,
    sample_rule,
};
use crate::domain::{RuleId, State};
use crate::events::Event;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Status;

type R = Result<Reply, Status>;

fn invalid(m: impl Into<String>) -> Status {
    Status::invalid_argument(m.into())
}

// ---- requests ----

fn severity(p: &P<'_>) -> Option<Severity> {
    let name = p.enum_name("severity")?.strip_prefix("SEVERITY_")?;
    Severity::parse(&name.to_ascii_lowercase())
}

fn secs(p: &P<'_>, k: &str) -> Result<Option<u64>, Status> {
    let d = p.duration(k).map_err(|e| invalid(e.message()))?;
    match d {
        Some(d) if d.subsec_nanos() != 0 => Err(invalid(format!("{k}: must be whole seconds"))),
        d => Ok(d.map(|d| d.as_secs())),
    }
}

/// ParamValue list -> name -> value. Only float values are supported.
fn param_values(list: Vec<P<'_>>) -> Result<BTreeMap<String, f64>, Status> {
    let mut out = BTreeMap::new();
    for v in list {
        let name = required(&v, "name")?;
        let value = match (v.enum_name("type"), v.f64("float")) {
            (_, Some(x)) if x.is_finite() => x,
            (_, Some(_)) => {
                return Err(invalid(format!(
                    "params.{name}: value must be a finite number"
                )));
            }
            (Some("PARAM_TYPE_BOOL" | "PARAM_TYPE_STRING"), None) => {
                return Err(invalid(format!(
                    "params.{name}: only float parameters are supported"
                )));
            }
            _ => return Err(invalid(format!("params.{name}: a float value is required"))),
        };
        if out.insert(name.clone(), value).is_some() {
            return Err(invalid(format!("params.{name}: given twice")));
        }
    }
    Ok(out)
}

fn filters(list: Vec<P<'_>>) -> Result<Vec<RuleFilter>, Status> {
    list.into_iter()
        .map(|f| {
            let kind = match f.enum_name("type") {
                Some("FILTER_TYPE_MATCH") => FilterKind::Match,
                Some("FILTER_TYPE_MISMATCH") => FilterKind::Mismatch,
                _ => {
                    return Err(invalid(
                        "filters: type must be FILTER_TYPE_MATCH or FILTER_TYPE_MISMATCH",
                    ));
                }
            };
            Ok(RuleFilter {
                kind,
                label: f.s("label"),
                regexp: f.s("regexp"),
            })
        })
        .collect()
}

pub(crate) fn create_rule(p: P<'_>) -> Result<Command, Status> {
    Ok(Command::CreateAlertRule(CreateRule {
        template_name: required(&p, "template_name")?,
        name: p.s("name"),
        group: p.s("group"),
        folder_uid: p.s("folder_uid"),
        params: param_values(p.objects("params"))?,
        for_secs: secs(&p, "for")?,
        severity: severity(&p),
        custom_labels: p.map("custom_labels"),
        filters: filters(p.objects("filters"))?,
        interval_secs: secs(&p, "interval")?,
        enabled: p.opt_b("enabled"),
    }))
}

pub(crate) fn change_rule(p: P<'_>) -> Result<ChangeRule, Status> {
    Ok(ChangeRule {
        rule_id: RuleId::from(required(&p, "rule_id")?),
        name: p.opt_s("name"),
        group: p.opt_s("group"),
        folder_uid: p.opt_s("folder_uid"),
        params: p
            .obj("params")
            .map(|v| param_values(v.objects("values")))
            .transpose()?,
        for_secs: secs(&p, "for")?,
        severity: severity(&p),
        custom_labels: p.string_map("custom_labels"),
        filters: p
            .obj("filters")
            .map(|v| filters(v.objects("filters")))
            .transpose()?,
        interval_secs: secs(&p, "interval")?,
        enabled: p.opt_b("enabled"),
    })
}

pub(crate) fn create_template_cmd(p: P<'_>) -> Result<Command, Status> {
    Ok(Command::CreateAlertTemplate(CreateTemplate {
        yaml: required(&p, "yaml")?,
    }))
}

pub(crate) fn update_template_cmd(p: P<'_>) -> Result<Command, Status> {
    Ok(Command::UpdateAlertTemplate(UpdateTemplate {
        name: required(&p, "name")?,
        yaml: required(&p, "yaml")?,
    }))
}

pub(crate) fn delete_template_cmd(p: P<'_>) -> Result<Command, Status> {
    Ok(Command::DeleteAlertTemplate(DeleteTemplate {
        name: required(&p, "name")?,
    }))
}

pub(crate) fn delete_rule_cmd(p: P<'_>) -> Result<Command, Status> {
    Ok(Command::DeleteAlertRule(DeleteRule {
        rule_id: RuleId::from(required(&p, "rule_id")?),
    }))
}

// ---- views ----

fn duration(secs: u64) -> String {
    format!("{secs}s")
}

fn severity_name(s: Severity) -> String {
    format!("SEVERITY_{}", s.as_str().to_ascii_uppercase())
}

fn float(n: Option<Number>) -> Value {
    n.map_or(Value::Null, |n| json!(n.0))
}

/// A template as `alerting.v1.Template`.
pub fn template_view(t: &AlertTemplate) -> Value {
    let params: Vec<Value> = t
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "summary": p.summary,
                "unit": match p.unit {
                    None => "PARAM_UNIT_UNSPECIFIED",
                    Some(ParamUnit::Percentage) => "PARAM_UNIT_PERCENTAGE",
                    Some(ParamUnit::Seconds) => "PARAM_UNIT_SECONDS",
                },
                "type": "PARAM_TYPE_FLOAT",
                "float": { "default": float(p.default), "min": float(p.min), "max": float(p.max) },
            })
        })
        .collect();
    json!({
        "name": t.name,
        "summary": t.summary,
        "expr": t.expr,
        "params": params,
        "for": duration(t.for_secs),
        "severity": severity_name(t.severity),
        "labels": t.labels,
        "annotations": t.annotations,
        "source": match t.source {
            TemplateSource::BuiltIn => "TEMPLATE_SOURCE_BUILT_IN",
            TemplateSource::UserApi => "TEMPLATE_SOURCE_USER_API",
        },
        "created_at": t.created_at,
        "yaml": t.yaml,
    })
}

/// A rule as `alerting.v1.Rule`, with what vmalert evaluates.
pub fn rule_view(r: &AlertRule) -> Value {
    let params: Vec<Value> = r
        .params
        .iter()
        .map(|(k, v)| json!({ "name": k, "type": "PARAM_TYPE_FLOAT", "float": v.0 }))
        .collect();
    let filters: Vec<Value> = r
        .filters
        .iter()
        .map(|f| {
            json!({
                "type": match f.kind {
                    FilterKind::Match => "FILTER_TYPE_MATCH",
                    FilterKind::Mismatch => "FILTER_TYPE_MISMATCH",
                },
                "label": f.label,
                "regexp": f.regexp,
            })
        })
        .collect();
    json!({
        "rule_id": r.rule_id,
        "name": r.name,
        "group": r.group,
        "folder_uid": r.folder_uid,
        "template_name": r.template.name,
        "params": params,
        "for": duration(r.for_secs),
        "interval": duration(r.interval_secs),
        "severity": severity_name(r.severity),
        "custom_labels": r.custom_labels,
        "filters": filters,
        "enabled": r.enabled,
        "expr": r.expr().unwrap_or_default(),
        "labels": r.labels().unwrap_or_default(),
        "annotations": r.annotations().unwrap_or_default(),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

/// Every template, built-in and user, by name.
pub fn all_templates(state: &State) -> Vec<Arc<AlertTemplate>> {
    let mut all: BTreeMap<&str, &Arc<AlertTemplate>> = crate::domain::alerting::builtin_templates()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    all.extend(state.alert_templates.iter().map(|(k, v)| (k.as_str(), v)));
    all.into_values().cloned().collect()
}

// ---- the vmalert check ----

/// Asks vmalert to read the rule files `cmd` would make (for a template: a rule from its
/// defaults). Decided here on this node's state only to find those files; the leader decides
/// for real, and a command this state refuses is left for it to refuse.
async fn check_with_vmalert(api: &Api, cmd: &Command) -> Result<(), Status> {
    if api.rule_checker.binary().is_none() {
        return Ok(());
    }
    let ctx = Ctx::fixed(chrono::Utc::now(), 0);
    let Ok(events) = crate::commands::decide(&api.state(), cmd, &ctx) else {
        return Ok(());
    };
    for e in &events {
        let text = match e {
            Event::AlertRuleCreated { rule } | Event::AlertRuleChanged { rule } => {
                crate::files::vmalert::render_rule(rule)
            }
            Event::AlertTemplateCreated { template } | Event::AlertTemplateUpdated { template } => {
                crate::files::vmalert::render_rule(&sample_rule(&Arc::new(template.clone())))
            }
            _ => None,
        };
        if let Some(text) = text {
            api.rule_checker
                .check(&text)
                .await
                .map_err(|m| invalid(format!("vmalert cannot use this rule: {m}")))?;
        }
    }
    Ok(())
}

// ---- handlers ----

pub async fn list_templates(api: &Api, _c: &Caller, body: Value) -> R {
    let state = api.state();
    let p = P::new(&body, &api.cipher);
    let all = all_templates(&state);
    let total = all.len();
    let (page, size) = match p.opt_i32("page_size") {
        None => (all.as_slice(), total.max(1)),
        Some(size) if size >= 1 => {
            let index = p.opt_i32("page_index").unwrap_or(0);
            if index < 0 {
                return Err(invalid("page_index: must not be negative"));
            }
            let (size, index) = (size as usize, index as usize);
            let start = size.saturating_mul(index).min(total);
            (&all[start..(start + size).min(total)], size)
        }
        Some(_) => return Err(invalid("page_size: must be at least 1")),
    };
    let templates: Vec<Value> = page.iter().map(|t| template_view(t)).collect();
    Ok(Reply::read(
        &state,
        json!({
            "total_items": total,
            "total_pages": total.div_ceil(size),
            "templates": templates,
        }),
    ))
}

pub async fn create_template(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = create_template_cmd(P::new(&body, &api.cipher))?;
    check_with_vmalert(api, &cmd).await?;
    Ok(api.run_quiet(c, cmd).await?.reply(json!({})))
}

pub async fn update_template(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = update_template_cmd(P::new(&body, &api.cipher))?;
    check_with_vmalert(api, &cmd).await?;
    Ok(api.run_quiet(c, cmd).await?.reply(json!({})))
}

pub async fn delete_template(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = delete_template_cmd(P::new(&body, &api.cipher))?;
    Ok(api.run_quiet(c, cmd).await?.reply(json!({})))
}

pub async fn create_rule_rpc(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = create_rule(P::new(&body, &api.cipher))?;
    check_with_vmalert(api, &cmd).await?;
    let done = api.run(c, cmd).await?;
    let rule_id = done.events.iter().find_map(|e| match e {
        Event::AlertRuleCreated { rule } => Some(rule.rule_id.to_string()),
        _ => None,
    });
    Ok(done.reply(json!({ "rule_id": rule_id })))
}

pub async fn list_rules(api: &Api, _c: &Caller, _body: Value) -> R {
    let state = api.state();
    let rules: Vec<Value> = state.alert_rules.values().map(|r| rule_view(r)).collect();
    Ok(Reply::read(&state, json!({ "rules": rules })))
}

pub async fn change_rule_rpc(api: &Api, c: &Caller, body: Value) -> R {
    let change = change_rule(P::new(&body, &api.cipher))?;
    let rule_id = change.rule_id.clone();
    let cmd = Command::ChangeAlertRule(change);
    check_with_vmalert(api, &cmd).await?;
    let done = api.run_quiet(c, cmd).await?;
    let rule = done
        .state
        .alert_rules
        .get(&rule_id)
        .map(|r| rule_view(r))
        .unwrap_or_else(|| Value::Object(Map::new()));
    Ok(done.reply(json!({ "rule": rule })))
}

pub async fn delete_rule(api: &Api, c: &Caller, body: Value) -> R {
    let cmd = delete_rule_cmd(P::new(&body, &api.cipher))?;
    Ok(api.run_quiet(c, cmd).await?.reply(json!({})))
}
