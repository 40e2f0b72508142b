//! Alerting commands: user alert rule templates (create, update, delete) and alert rules made
//! from any template (create, change, enable or disable, delete).
//!
//! A rule is checked whole when it is made or changed: its parameters against the template's
//! types and ranges, its labels, filters and durations, and its expression, labels and
//! annotations filled, so a rule in the state always renders.

use super::{Decision, Rejection};
use crate::domain::alerting::{
    AlertRule, DEFAULT_INTERVAL_SECS, MAX_DURATION_SECS, Number, RuleFilter, Severity,
    TemplateSource, check_range, is_reserved_template_name, parse_templates, validate_rule_fields,
};
use crate::domain::{AlertTemplate, Labels, RuleId};
use crate::events::Event;
use std::collections::BTreeMap;
use std::sync::Arc;

/// CreateTemplate: one template, in PMM's YAML.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CreateTemplate {
    pub yaml: String,
}

/// UpdateTemplate: replaces a user template; the YAML must keep its name.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UpdateTemplate {
    pub name: String,
    pub yaml: String,
}

/// DeleteTemplate: removes a user template. Rules made from it keep their own copy.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DeleteTemplate {
    pub name: String,
}

/// The one template of a user's YAML.
fn one_user_template(d: &Decision<'_>, yaml: &str) -> Result<AlertTemplate, Rejection> {
    let mut templates = parse_templates(yaml, TemplateSource::UserApi, Some(d.now()))?;
    if templates.len() != 1 {
        return Err(Rejection::invalid(format!(
            "Request should contain exactly one template, but contains {}.",
            templates.len()
        )));
    }
    let t = templates.remove(0);
    if is_reserved_template_name(&t.name) {
        return Err(Rejection::invalid(format!(
            "Template name {:?} is reserved: names starting with pmm_ or saas_ belong to built-in templates.",
            t.name
        )));
    }
    Ok(t)
}

/// A user template by name, or why it cannot be changed.
fn user_template(d: &Decision<'_>, name: &str) -> Result<Arc<AlertTemplate>, Rejection> {
    match d.state().alert_template(name) {
        Some(t) if t.source == TemplateSource::UserApi => Ok(t),
        Some(_) => Err(Rejection::failed_precondition(format!(
            "Template {name:?} is built in and cannot be changed or deleted."
        ))),
        None => Err(Rejection::not_found(format!(
            "Template {name:?} not found."
        ))),
    }
}

impl CreateTemplate {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let template = one_user_template(d, &self.yaml)?;
        if d.state().alert_templates.contains_key(&template.name) {
            return Err(Rejection::already_exists(format!(
                "Template with name {:?} already exists.",
                template.name
            )));
        }
        d.emit(Event::AlertTemplateCreated { template });
        Ok(())
    }
}

impl UpdateTemplate {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let old = user_template(d, &self.name)?;
        let mut template = one_user_template(d, &self.yaml)?;
        if template.name != self.name {
            return Err(Rejection::invalid(format!(
                "Mismatch names: the request names {:?}, the YAML {:?}.",
                self.name, template.name
            )));
        }
        template.created_at = old.created_at;
        if *old == template {
            return Ok(());
        }
        d.emit(Event::AlertTemplateUpdated { template });
        Ok(())
    }
}

impl DeleteTemplate {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        user_template(d, &self.name)?;
        d.emit(Event::AlertTemplateDeleted {
            name: self.name.clone(),
        });
        Ok(())
    }
}

/// CreateRule: a rule from a template. Absent parameters take the template's defaults;
/// absent `for` and severity take the template's; the interval defaults to one minute.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CreateRule {
    pub template_name: String,
    pub name: String,
    pub group: String,
    #[serde(default)]
    pub folder_uid: String,
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
    #[serde(default)]
    pub for_secs: Option<u64>,
    #[serde(default)]
    pub severity: Option<Severity>,
    #[serde(default)]
    pub custom_labels: Labels,
    #[serde(default)]
    pub filters: Vec<RuleFilter>,
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// Created disabled when false (default: enabled).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// ChangeRule: every field optional; `None` keeps it. Given `params` replace all of them
/// (absent ones back to the template's defaults).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ChangeRule {
    pub rule_id: RuleId,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub folder_uid: Option<String>,
    #[serde(default)]
    pub params: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    pub for_secs: Option<u64>,
    #[serde(default)]
    pub severity: Option<Severity>,
    #[serde(default)]
    pub custom_labels: Option<Labels>,
    #[serde(default)]
    pub filters: Option<Vec<RuleFilter>>,
    #[serde(default)]
    pub interval_secs: Option<u64>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// DeleteRule.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DeleteRule {
    pub rule_id: RuleId,
}

/// Every template parameter's value: the given ones (checked) and the defaults of the rest.
fn param_values(
    t: &AlertTemplate,
    given: &BTreeMap<String, f64>,
) -> Result<BTreeMap<String, Number>, Rejection> {
    if let Some(unknown) = given.keys().find(|k| t.param(k).is_none()) {
        return Err(Rejection::invalid(format!(
            "Parameter {unknown:?} is not defined in template {:?}.",
            t.name
        )));
    }
    let mut out = BTreeMap::new();
    for p in &t.params {
        let value = match given.get(&p.name) {
            Some(v) => {
                check_range(p, *v).map_err(|e| Rejection::invalid(format!("{e}.")))?;
                Number(*v)
            }
            None => p.default.ok_or_else(|| {
                Rejection::invalid(format!(
                    "Parameter {:?} of template {:?} has no default value, so the rule must set it.",
                    p.name, t.name
                ))
            })?,
        };
        out.insert(p.name.clone(), value);
    }
    Ok(out)
}

fn check_duration(field: &str, secs: u64, min: u64) -> Result<(), Rejection> {
    if secs < min || secs > MAX_DURATION_SECS {
        return Err(Rejection::invalid(format!(
            "{field}: must be between {min}s and {MAX_DURATION_SECS}s, got {secs}s."
        )));
    }
    Ok(())
}

/// Checks a rule whole: fields, durations, unique name in its group, and that it renders.
fn check_rule(d: &Decision<'_>, rule: &AlertRule) -> Result<(), Rejection> {
    validate_rule_fields(
        &rule.name,
        &rule.group,
        &rule.folder_uid,
        &rule.custom_labels,
        &rule.filters,
    )?;
    check_duration("for", rule.for_secs, 0)?;
    check_duration("interval", rule.interval_secs, 1)?;
    let taken = d
        .state()
        .alert_rules
        .values()
        .any(|r| r.rule_id != rule.rule_id && r.group == rule.group && r.name == rule.name);
    if taken {
        return Err(Rejection::already_exists(format!(
            "Rule with name {:?} already exists in group {:?}.",
            rule.name, rule.group
        )));
    }
    let rendered = rule
        .expr()
        .and_then(|_| rule.labels())
        .and_then(|_| rule.annotations());
    rendered.map(drop).map_err(|e| {
        Rejection::invalid(format!(
            "Template {:?} cannot be filled: {e}.",
            rule.template.name
        ))
    })
}

impl CreateRule {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<RuleId, Rejection> {
        let template = d
            .state()
            .alert_template(&self.template_name)
            .ok_or_else(|| {
                Rejection::not_found(format!("Unknown template {:?}.", self.template_name))
            })?;
        let params = param_values(&template, &self.params)?;
        let rule_id = RuleId::from(d.new_id());
        let rule = AlertRule {
            rule_id: rule_id.clone(),
            name: self.name.clone(),
            group: self.group.clone(),
            folder_uid: self.folder_uid.clone(),
            params,
            for_secs: self.for_secs.unwrap_or(template.for_secs),
            interval_secs: self.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS),
            severity: self.severity.unwrap_or(template.severity),
            custom_labels: self.custom_labels.clone(),
            filters: self.filters.clone(),
            enabled: self.enabled.unwrap_or(true),
            created_at: d.now(),
            updated_at: d.now(),
            template,
        };
        check_rule(d, &rule)?;
        d.emit(Event::AlertRuleCreated { rule });
        Ok(rule_id)
    }
}

fn rule(d: &Decision<'_>, id: &RuleId) -> Result<Arc<AlertRule>, Rejection> {
    d.state()
        .alert_rules
        .get(id)
        .cloned()
        .ok_or_else(|| Rejection::not_found(format!("Rule with ID {id:?} not found.")))
}

impl ChangeRule {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        let old = rule(d, &self.rule_id)?;
        let mut new = (*old).clone();
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        set(&mut new.name, &self.name);
        set(&mut new.group, &self.group);
        set(&mut new.folder_uid, &self.folder_uid);
        if let Some(p) = &self.params {
            new.params = param_values(&new.template, p)?;
        }
        new.for_secs = self.for_secs.unwrap_or(new.for_secs);
        new.interval_secs = self.interval_secs.unwrap_or(new.interval_secs);
        new.severity = self.severity.unwrap_or(new.severity);
        if let Some(l) = &self.custom_labels {
            new.custom_labels.clone_from(l);
        }
        if let Some(f) = &self.filters {
            new.filters.clone_from(f);
        }
        new.enabled = self.enabled.unwrap_or(new.enabled);
        if new == *old {
            return Ok(());
        }
        check_rule(d, &new)?;
        new.updated_at = d.now();
        d.emit(Event::AlertRuleChanged { rule: new });
        Ok(())
    }
}

impl DeleteRule {
    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        rule(d, &self.rule_id)?;
        d.emit(Event::AlertRuleDeleted {
            rule_id: self.rule_id.clone(),
        });
        Ok(())
    }
}
