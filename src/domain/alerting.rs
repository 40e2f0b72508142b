//! Alerting: alert rule templates and the alert rules made from them.
//!
//! A template is PMM's YAML (`templates: [{name, version, summary, expr, params, for,
//! severity, labels, annotations}]`) whose `expr`, labels and annotations hold `[[ .param ]]`
//! placeholders. Built-in templates ship with the binary (`src/domain/alerting-templates.yml`); user
//! templates live in the state. A rule keeps a snapshot of the template it was made from, so
//! it renders the same after its template changes or goes, and a rebuild from the log renders
//! it identically.

use super::ids::{RuleId, Timestamp};
use super::labels::{self, Labels};
use super::limits::{MAX_NAME_LEN, MAX_TEXT_LEN, bounded, required};
use crate::commands::Rejection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Longest template YAML accepted.
pub const MAX_TEMPLATE_YAML_LEN: usize = 64 * 1024;
/// Longest expression, label or annotation value of a template.
pub const MAX_EXPR_LEN: usize = 16 * 1024;
/// Parameters per template, filters per rule.
pub const MAX_PARAMS: usize = 32;
pub const MAX_FILTERS: usize = 32;
/// A rule's evaluation interval when none is given (Grafana's group default).
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// Longest `for` or interval accepted: one week.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;

/// PMM's alert severities, most severe first (syslog's levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

impl Severity {
    pub const ALL: [Severity; 8] = [
        Severity::Emergency,
        Severity::Alert,
        Severity::Critical,
        Severity::Error,
        Severity::Warning,
        Severity::Notice,
        Severity::Info,
        Severity::Debug,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Emergency => "emergency",
            Severity::Alert => "alert",
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Info => "info",
            Severity::Debug => "debug",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A finite number (a parameter's value, default or bound). Compared by its bits so entities
/// stay `Eq`; NaN and infinities never get in.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Number(pub f64);

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Number {}

impl fmt::Display for Number {
    /// As Go's `%v` prints a float64, which is what PMM's templates produce: `85`, `0.5`,
    /// `1e+21`, `1e-05`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        let a = x.abs();
        if x == 0.0 || (1e-4..1e21).contains(&a) {
            return write!(f, "{x}");
        }
        let text = format!("{x:e}");
        let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        write!(f, "{mantissa}e{sign}{digits:0>2}")
    }
}

/// A parameter's unit, as templates spell it (`%`, `s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamUnit {
    Percentage,
    Seconds,
}

/// One template parameter. Only `float` parameters are supported (as in PMM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamDef {
    pub name: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<ParamUnit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Number>,
}

/// Where a template comes from; only API templates can be changed or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateSource {
    BuiltIn,
    UserApi,
}

/// An alert rule template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTemplate {
    pub name: String,
    pub version: u32,
    pub summary: String,
    pub expr: String,
    #[serde(default)]
    pub params: Vec<ParamDef>,
    pub for_secs: u64,
    pub severity: Severity,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    pub source: TemplateSource,
    /// The YAML it was made from (user templates; empty for built-ins).
    #[serde(default)]
    pub yaml: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

impl AlertTemplate {
    pub fn param(&self, name: &str) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// How a rule filter matches its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    Match,
    Mismatch,
}

/// Keeps (match) or drops (mismatch) the series whose `label` matches `regexp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFilter {
    pub kind: FilterKind,
    pub label: String,
    pub regexp: String,
}

/// An alert rule made from a template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRule {
    pub rule_id: RuleId,
    pub name: String,
    pub group: String,
    #[serde(default)]
    pub folder_uid: String,
    /// The template as it was when the rule was made.
    pub template: Arc<AlertTemplate>,
    /// Every template parameter's value (defaults filled in).
    pub params: BTreeMap<String, Number>,
    pub for_secs: u64,
    pub interval_secs: u64,
    pub severity: Severity,
    #[serde(default)]
    pub custom_labels: Labels,
    #[serde(default)]
    pub filters: Vec<RuleFilter>,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl AlertRule {
    /// The PromQL/MetricsQL expression: the template's with the parameters filled in, wrapped
    /// by the filters (`label_match` / `label_mismatch`, in order).
    pub fn expr(&self) -> Result<String, String> {
        let mut expr = fill(&self.template.expr, &self.params)?;
        for f in &self.filters {
            let func = match f.kind {
                FilterKind::Match => "label_match",
                FilterKind::Mismatch => "label_mismatch",
            };
            expr = format!(
                "{func}({expr}, {}, {})",
                promql_string(&f.label),
                promql_string(&f.regexp)
            );
        }
        Ok(expr)
    }

    /// Custom labels, then the template's, then the labels every rule carries. vmalert (like
    /// Prometheus) expands Go templates in label and annotation values: the template's are
    /// meant as templates, the user's own text (custom labels, the rule's name) is kept
    /// literal.
    pub fn labels(&self) -> Result<Labels, String> {
        let mut out = Labels::new();
        for (k, v) in &self.custom_labels {
            out.insert(k.clone(), literal(v));
        }
        for (k, v) in &self.template.labels {
            out.insert(k.clone(), fill(v, &self.params)?);
        }
        out.insert("percona_alerting".to_owned(), "1".to_owned());
        out.insert("severity".to_owned(), self.severity.as_str().to_owned());
        out.insert("template_name".to_owned(), self.template.name.clone());
        out.insert("rule_id".to_owned(), self.rule_id.to_string());
        Ok(out)
    }

    /// The template's annotations with the parameters filled in, plus the rule's name.
    pub fn annotations(&self) -> Result<Labels, String> {
        let mut out = Labels::new();
        for (k, v) in &self.template.annotations {
            out.insert(k.clone(), fill(v, &self.params)?);
        }
        out.insert("rule".to_owned(), literal(&self.name));
        Ok(out)
    }
}

/// `text` as a Go template that expands to itself: each `{{` becomes `{{"{{"}}`.
pub fn literal(text: &str) -> String {
    text.replace("{{", "{{\"{{\"}}")
}

/// A rule made from `template` with its defaults (or, without one, a value in its range): what
/// a template renders to, for checking it with vmalert before it is stored.
pub fn sample_rule(template: &Arc<AlertTemplate>) -> AlertRule {
    let value = |p: &ParamDef| p.default.or(p.min).or(p.max).unwrap_or(Number(1.0));
    let at = template.created_at.unwrap_or_default();
    AlertRule {
        rule_id: RuleId::from("sample"),
        name: template.name.clone(),
        group: "sample".to_owned(),
        folder_uid: String::new(),
        params: template
            .params
            .iter()
            .map(|p| (p.name.clone(), value(p)))
            .collect(),
        for_secs: template.for_secs,
        interval_secs: DEFAULT_INTERVAL_SECS,
        severity: template.severity,
        custom_labels: Labels::new(),
        filters: Vec::new(),
        enabled: true,
        created_at: at,
        updated_at: at,
        template: template.clone(),
    }
}

/// A PromQL double-quoted string literal.
fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Replaces every `[[ .name ]]` (Go template actions with PMM's delimiters; `[[-` and `-]]`
/// trim markers allowed) with the parameter's value. Anything else inside `[[ ]]`, an unknown
/// name or an unclosed action is an error, as Go's `missingkey=error` templates make it.
pub fn fill(text: &str, values: &BTreeMap<String, Number>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("]]")
            .ok_or_else(|| "unclosed template action \"[[\"".to_owned())?;
        let action = after[..end].trim();
        let action = action.strip_prefix('-').unwrap_or(action);
        let action = action.strip_suffix('-').unwrap_or(action).trim();
        let name = action
            .strip_prefix('.')
            .filter(|n| is_identifier(n))
            .ok_or_else(|| format!("unsupported template action \"[[ {action} ]]\""))?;
        let value = values
            .get(name)
            .ok_or_else(|| format!("unknown parameter \"{name}\""))?;
        out.push_str(&value.to_string());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The parameter names `text` refers to.
fn placeholders(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("]]") else {
            return Err("unclosed template action \"[[\"".to_owned());
        };
        let inner = after[..end].trim().trim_matches('-').trim();
        if let Some(n) = inner.strip_prefix('.').filter(|n| is_identifier(n)) {
            names.push(n.to_owned());
        } else {
            return Err(format!("unsupported template action \"[[ {inner} ]]\""));
        }
        rest = &after[end + 2..];
    }
    Ok(names)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Template names: letters, digits, `_`, `-` and `.` (they appear in REST paths and labels).
pub fn is_valid_template_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Parses a Prometheus-style duration (`90s`, `5m`, `1h30m`, `1d`) into whole seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let size = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(size)?)?;
    }
    Some(total)
}

// --- Template YAML -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    templates: Vec<RawTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    name: String,
    version: u32,
    summary: String,
    #[serde(default)]
    expr: String,
    #[serde(default)]
    params: Vec<RawParam>,
    #[serde(rename = "for", default)]
    for_: Option<String>,
    severity: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    // The multi-query form (Grafana steps) has no vmalert rendering.
    #[serde(default)]
    queries: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    expressions: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    condition: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    name: String,
    summary: String,
    #[serde(default)]
    unit: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    range: Option<Vec<f64>>,
    #[serde(default)]
    value: Option<f64>,
}

/// Parses a template file (`templates:` with one or more templates) and checks every rule a
/// template must follow. `source` and `created_at` are stamped on each; user templates also
/// keep the YAML.
pub fn parse_templates(
    yaml: &str,
    source: TemplateSource,
    created_at: Option<Timestamp>,
) -> Result<Vec<AlertTemplate>, Rejection> {
    bounded("yaml", yaml, MAX_TEMPLATE_YAML_LEN)?;
    let raw: RawFile = serde_yaml_ng::from_str(yaml)
        .map_err(|e| Rejection::invalid(format!("Failed to parse rule template: {e}.")))?;
    let mut out = Vec::with_capacity(raw.templates.len());
    for t in raw.templates {
        let t = template(t, source, created_at)
            .map_err(|e| Rejection::invalid(format!("Failed to parse rule template: {e}.")))?;
        if out.iter().any(|o: &AlertTemplate| o.name == t.name) {
            return Err(Rejection::invalid(format!(
                "Failed to parse rule template: template {:?} is defined twice.",
                t.name
            )));
        }
        out.push(t);
    }
    if source == TemplateSource::UserApi {
        for t in &mut out {
            t.yaml = yaml.to_owned();
        }
    }
    Ok(out)
}

fn template(
    t: RawTemplate,
    source: TemplateSource,
    created_at: Option<Timestamp>,
) -> Result<AlertTemplate, String> {
    if t.queries.is_some() || t.expressions.is_some() || t.condition.is_some() {
        return Err(format!(
            "template {:?}: multi-query templates (queries, expressions, condition) are not supported",
            t.name
        ));
    }
    if !is_valid_template_name(&t.name) {
        return Err(format!(
            "template name {:?} must be 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.'",
            t.name
        ));
    }
    let name = t.name;
    let err = |m: String| format!("template {name:?}: {m}");
    if t.version != 1 {
        return Err(err(format!("unsupported version {}", t.version)));
    }
    if t.summary.trim().is_empty() {
        return Err(err("summary must not be empty".into()));
    }
    if t.expr.trim().is_empty() {
        return Err(err("expr must not be empty".into()));
    }
    let severity = Severity::parse(&t.severity).ok_or_else(|| {
        err(format!(
            "unknown severity {:?} (one of emergency, alert, critical, error, warning, notice, info, debug)",
            t.severity
        ))
    })?;
    let for_secs = match t.for_.as_deref() {
        None | Some("") => 0,
        Some(d) => parse_duration(d)
            .filter(|s| *s <= MAX_DURATION_SECS)
            .ok_or_else(|| err(format!("invalid duration for {d:?}")))?,
    };
    if t.params.len() > MAX_PARAMS {
        return Err(err(format!("at most {MAX_PARAMS} params")));
    }
    let mut params: Vec<ParamDef> = Vec::with_capacity(t.params.len());
    for p in t.params {
        params.push(param(p).map_err(&err)?);
    }
    for (i, p) in params.iter().enumerate() {
        if params[..i].iter().any(|q| q.name == p.name) {
            return Err(err(format!("param {:?} is defined twice", p.name)));
        }
    }
    let sizes = [("summary", &t.summary), ("expr", &t.expr)];
    for (field, v) in sizes
        .into_iter()
        .chain(t.labels.values().map(|v| ("labels", v)))
    {
        if v.len() > MAX_EXPR_LEN || v.contains('\0') {
            return Err(err(format!("{field}: too long or contains NUL")));
        }
    }
    for (kind, map) in [("label", &t.labels), ("annotation", &t.annotations)] {
        for (k, v) in map {
            if !labels::is_valid_label_name(k) || v.len() > MAX_EXPR_LEN || v.contains('\0') {
                return Err(err(format!("invalid {kind} {k:?}")));
            }
        }
    }
    // Every placeholder names a parameter.
    let texts = std::iter::once(&t.expr)
        .chain(t.labels.values())
        .chain(t.annotations.values());
    for text in texts {
        for n in placeholders(text).map_err(&err)? {
            if !params.iter().any(|p| p.name == n) {
                return Err(err(format!("unknown parameter {n:?} in a placeholder")));
            }
        }
    }
    Ok(AlertTemplate {
        name,
        version: t.version,
        summary: t.summary,
        expr: t.expr,
        params,
        for_secs,
        severity,
        labels: t.labels,
        annotations: t.annotations,
        source,
        yaml: String::new(),
        created_at,
    })
}

fn param(p: RawParam) -> Result<ParamDef, String> {
    if !is_identifier(&p.name) {
        return Err(format!("invalid param name {:?}", p.name));
    }
    if p.summary.trim().is_empty() || p.summary.len() > MAX_TEXT_LEN {
        return Err(format!(
            "param {:?}: summary must be 1 to {MAX_TEXT_LEN} bytes",
            p.name
        ));
    }
    let unit = match p.unit.as_deref() {
        None | Some("") => None,
        Some("%") => Some(ParamUnit::Percentage),
        Some("s") => Some(ParamUnit::Seconds),
        Some(u) => return Err(format!("param {:?}: unknown unit {u:?} (% or s)", p.name)),
    };
    match p.kind.as_str() {
        "float" => {}
        "bool" | "string" => {
            return Err(format!(
                "param {:?}: type {} is not supported",
                p.name, p.kind
            ));
        }
        other => return Err(format!("param {:?}: unknown type {other:?}", p.name)),
    }
    let finite = |x: f64| {
        x.is_finite()
            .then_some(Number(x))
            .ok_or_else(|| format!("param {:?}: numbers must be finite", p.name))
    };
    let (min, max) = match p.range.as_deref() {
        None => (None, None),
        Some([lo, hi]) if lo <= hi => (Some(finite(*lo)?), Some(finite(*hi)?)),
        Some(_) => {
            return Err(format!(
                "param {:?}: range must be [min, max] with min <= max",
                p.name
            ));
        }
    };
    let default = p.value.map(finite).transpose()?;
    let def = ParamDef {
        name: p.name,
        summary: p.summary,
        unit,
        default,
        min,
        max,
    };
    if let Some(v) = default {
        check_range(&def, v.0)?;
    }
    Ok(def)
}

/// Checks a value against a parameter's range.
pub fn check_range(p: &ParamDef, v: f64) -> Result<(), String> {
    if !v.is_finite() {
        return Err(format!(
            "parameter {:?}: value must be a finite number",
            p.name
        ));
    }
    if p.min.is_some_and(|m| v < m.0) || p.max.is_some_and(|m| v > m.0) {
        let (lo, hi) = (
            p.min.map_or(f64::MIN, |m| m.0),
            p.max.map_or(f64::MAX, |m| m.0),
        );
        return Err(format!(
            "parameter {:?}: value {} is out of range [{}, {}]",
            p.name,
            Number(v),
            Number(lo),
            Number(hi)
        ));
    }
    Ok(())
}

/// The built-in templates, parsed once from the embedded file.
pub fn builtin_templates() -> &'static BTreeMap<String, Arc<AlertTemplate>> {
    static BUILTIN: OnceLock<BTreeMap<String, Arc<AlertTemplate>>> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        const YAML: &str = include_str!("alerting-templates.yml");
        // A broken embedded file fails the unit test below; at run time it yields no
        // built-ins rather than a panic.
        parse_templates(YAML, TemplateSource::BuiltIn, None)
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.name.clone(), Arc::new(t)))
            .collect()
    })
}

/// Template names users may not take: built-ins' and Percona Platform's prefixes.
pub fn is_reserved_template_name(name: &str) -> bool {
    name.starts_with("pmm_") || name.starts_with("saas_")
}

/// Checks a rule's own fields (not its template's).
pub fn validate_rule_fields(
    name: &str,
    group: &str,
    folder_uid: &str,
    custom_labels: &Labels,
    filters: &[RuleFilter],
) -> Result<(), Rejection> {
    required("name", name, MAX_NAME_LEN)?;
    required("group", group, MAX_NAME_LEN)?;
    bounded("folder_uid", folder_uid, MAX_NAME_LEN)?;
    labels::validate(custom_labels)?;
    if filters.len() > MAX_FILTERS {
        return Err(Rejection::invalid(format!(
            "filters: {} filters, at most {MAX_FILTERS} allowed.",
            filters.len()
        )));
    }
    for f in filters {
        if !labels::is_valid_label_name(&f.label) {
            return Err(Rejection::invalid(format!(
                "filters: invalid label name {:?}.",
                f.label.chars().take(64).collect::<String>()
            )));
        }
        bounded("filters.regexp", &f.regexp, MAX_TEXT_LEN)?;
        if let Err(e) = regex::Regex::new(&f.regexp) {
            return Err(Rejection::invalid(format!(
                "filters: invalid regexp {:?}: {}.",
                f.regexp,
                e.to_string().lines().last().unwrap_or("syntax error")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_templates_parse_and_cover_the_required_set() {
        const YAML: &str = include_str!("alerting-templates.yml");
        let parsed = parse_templates(YAML, TemplateSource::BuiltIn, None).expect("built-ins");
        let names: Vec<&str> = parsed.iter().map(|t| t.name.as_str()).collect();
        for required in [
            "pmm_node_down",
            "pmm_mysql_down",
            "pmm_postgresql_down",
            "pmm_mongodb_down",
            "pmm_node_high_cpu_load",
            "pmm_node_low_free_memory",
            "pmm_node_low_free_disk",
        ] {
            assert!(names.contains(&required), "{required} missing");
        }
        assert_eq!(builtin_templates().len(), parsed.len());
        for t in &parsed {
            assert!(is_reserved_template_name(&t.name), "{}", t.name);
            let defaults = t
                .params
                .iter()
                .map(|p| (p.name.clone(), p.default.expect("built-ins have defaults")))
                .collect();
            fill(&t.expr, &defaults).expect("fills with its defaults");
        }
    }

    #[test]
    fn fill_replaces_placeholders_and_refuses_everything_else() {
        let v: BTreeMap<String, Number> = [("threshold".to_owned(), Number(85.0))].into();
        assert_eq!(fill("x > [[ .threshold ]]", &v).unwrap(), "x > 85");
        assert_eq!(fill("x > [[- .threshold -]]%", &v).unwrap(), "x > 85%");
        assert_eq!(fill("{{ $labels.a }}", &v).unwrap(), "{{ $labels.a }}");
        assert!(
            fill("[[ .nope ]]", &v)
                .unwrap_err()
                .contains("unknown parameter")
        );
        assert!(
            fill("[[ printf \"%s\" 1 ]]", &v)
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(
            fill("x [[ .threshold", &v)
                .unwrap_err()
                .contains("unclosed")
        );
    }

    #[test]
    fn literal_text_survives_go_templates() {
        assert_eq!(literal("plain"), "plain");
        assert_eq!(literal("a {{ b }} c"), "a {{\"{{\"}} b }} c");
    }

    #[test]
    fn numbers_print_as_go_prints_float64() {
        for (x, s) in [
            (85.0, "85"),
            (0.5, "0.5"),
            (-3.25, "-3.25"),
            (0.0, "0"),
            (1e21, "1e+21"),
            (1e-5, "1e-05"),
            (123456.0, "123456"),
        ] {
            assert_eq!(Number(x).to_string(), s, "{x}");
        }
    }

    #[test]
    fn durations_parse_prometheus_style() {
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("1d"), Some(86_400));
        for bad in ["", "5", "m", "5x", "-5s", "1.5m", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let one = |body: &str| {
            parse_templates(
                &format!("templates:\n  - {body}"),
                TemplateSource::UserApi,
                None,
            )
            .map(drop)
            .map_err(|e| e.message())
        };
        let base =
            "name: t\n    version: 1\n    summary: s\n    severity: warning\n    expr: up == 0";
        assert_eq!(one(base), Ok(()));
        assert!(
            one(&base.replace("warning", "loud"))
                .unwrap_err()
                .contains("severity")
        );
        assert!(
            one(&base.replace("version: 1", "version: 2"))
                .unwrap_err()
                .contains("version")
        );
        assert!(
            one(&base.replace("up == 0", "up > [[ .x ]]"))
                .unwrap_err()
                .contains("\"x\"")
        );
        assert!(
            one(&format!("{base}\n    extra: 1"))
                .unwrap_err()
                .contains("extra")
        );
        assert!(
            one(&base.replace("name: t", "name: \"a b\""))
                .unwrap_err()
                .contains("name")
        );
        let with_param = format!(
            "{}\n    params:\n      - {{name: x, summary: s, type: float, range: [0, 10], value: 11}}",
            base.replace("up == 0", "up > [[ .x ]]")
        );
        assert!(one(&with_param).unwrap_err().contains("out of range"));
        assert!(
            one(&with_param.replace("float", "bool"))
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            one(&format!("{base}\n    for: 5 minutes"))
                .unwrap_err()
                .contains("duration")
        );
        assert!(
            one(&format!("{base}\n    queries: []"))
                .unwrap_err()
                .contains("multi-query")
        );
    }
}
