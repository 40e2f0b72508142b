//! vmalert rule files: one per enabled alert rule, `vmalert/<rule id>.yml`, holding one group
//! (the rule's group name and evaluation interval) with the one rule. Nothing is rendered while
//! alerting is disabled in the settings.

use super::durations::prom_duration;
use super::yaml::{field, indent, scalar};
use crate::domain::{AlertRule, State};
use std::time::Duration;

/// `(rule id, file text)` for every rule vmalert should evaluate, in rule-id order.
pub fn render(state: &State) -> Vec<(String, String)> {
    if !state.settings.effective().alerting_enabled {
        return Vec::new();
    }
    state
        .alert_rules
        .values()
        .filter(|r| r.enabled)
        .filter_map(|r| render_rule(r).map(|text| (r.rule_id.to_string(), text)))
        .collect()
}

/// One rule's file; `None` if its template cannot be filled (commands refuse such rules, so
/// this is a rule from an older release's rules, left out rather than breaking vmalert).
pub fn render_rule(r: &AlertRule) -> Option<String> {
    let expr = r.expr().ok()?;
    let labels = r.labels().ok()?;
    let annotations = r.annotations().ok()?;
    let mut out = String::from(super::scrape::HEADER);
    out.push_str("groups:\n");
    indent(&mut out, 2);
    out.push_str("- ");
    out.push_str("name: ");
    scalar(&mut out, &r.group);
    out.push('\n');
    field(
        &mut out,
        4,
        "interval",
        &prom_duration(Duration::from_secs(r.interval_secs)),
    );
    indent(&mut out, 4);
    out.push_str("rules:\n");
    indent(&mut out, 6);
    out.push_str("- alert: ");
    scalar(&mut out, &r.name);
    out.push('\n');
    field(&mut out, 8, "expr", &expr);
    field(
        &mut out,
        8,
        "for",
        &prom_duration(Duration::from_secs(r.for_secs)),
    );
    for (key, map) in [("labels", &labels), ("annotations", &annotations)] {
        indent(&mut out, 8);
        out.push_str(key);
        out.push_str(":\n");
        for (k, v) in map {
            field(&mut out, 10, k, v);
        }
    }
    Some(out)
}

/// Runs vmalert's own parser (`vmalert -dryRun -rule=FILE`) on a rule file before the command
/// that makes it is sent, as PMM does for user rule files: a template whose expression or
/// annotation templates vmalert cannot read is refused up front instead of breaking vmalert's
/// next reload. Without the binary, no check is made (and the start-up log says so).
#[derive(Clone, Debug)]
pub struct RuleChecker {
    binary: Option<std::path::PathBuf>,
}

/// At most this many checks run at once; each is a short-lived process.
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

impl RuleChecker {
    /// A checker that runs `binary`, looked up on `PATH` when it has no slash; `""` or a
    /// binary that is not there turns checking off.
    pub fn new(binary: &str) -> Self {
        let found = if binary.is_empty() {
            None
        } else if binary.contains('/') {
            Some(std::path::PathBuf::from(binary)).filter(|p| p.is_file())
        } else {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(binary))
                    .find(|p| p.is_file())
            })
        };
        Self { binary: found }
    }

    /// A checker that checks nothing.
    pub fn off() -> Self {
        Self { binary: None }
    }

    pub fn binary(&self) -> Option<&std::path::Path> {
        self.binary.as_deref()
    }

    /// `Ok` when vmalert accepts `text` as a rule file (or cannot be asked: no binary, no temp
    /// file, no answer within 3 s, all logged); else vmalert's complaint.
    pub async fn check(&self, text: &str) -> Result<(), String> {
        let Some(binary) = &self.binary else {
            return Ok(());
        };
        let _permit = CHECKS.acquire().await.map_err(|e| e.to_string())?;
        let path = std::env::temp_dir().join(format!(
            "pmm-cp-rule-check-{}.yml",
            uuid::Uuid::new_v4().simple()
        ));
        if let Err(e) = tokio::fs::write(&path, text).await {
            tracing::warn!(error = %e, "cannot write a rule to check it; not checked");
            return Ok(());
        }
        let run = tokio::process::Command::new(binary)
            .arg("-dryRun")
            .arg("-loggerLevel=ERROR")
            .arg(format!("-rule={}", path.display()))
            .kill_on_drop(true)
            .output();
        let outcome = tokio::time::timeout(Duration::from_secs(3), run).await;
        let _ = tokio::fs::remove_file(&path).await;
        match outcome {
            // A slow machine is not the rule's fault.
            Err(_) => {
                tracing::warn!("vmalert did not answer within 3 s; the rule is not checked");
                Ok(())
            }
            Ok(Err(e)) => {
                // The check is a guard, not the source of truth: a vmalert that cannot run
                // must not block every alerting command.
                tracing::warn!(error = %e, "cannot run vmalert to check a rule; not checked");
                Ok(())
            }
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(complaint(&out.stderr, &out.stdout, &path)),
        }
    }
}

/// The useful part of vmalert's output: its last log line's message, without the temp path.
fn complaint(stderr: &[u8], stdout: &[u8], path: &std::path::Path) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(stderr),
        String::from_utf8_lossy(stdout)
    );
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("vmalert refused the rule");
    // `TIME LEVEL CALLER MESSAGE`: keep the message.
    let message = line.splitn(4, '\t').nth(3).unwrap_or(line);
    let message = message.replace(&path.display().to_string(), "rule file");
    message.chars().take(500).collect()
}
