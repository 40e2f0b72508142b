//! Server settings: PMM's single settings document, its defaults, and the `PMM_*` environment
//! variables that pin values.
//!
//! Enable flags are tri-state like PMM's (`None` = use the default), so the stored document
//! holds only explicit choices. Durations are whole seconds.

use crate::commands::Rejection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_HR_SECS: u64 = 5;
pub const DEFAULT_MR_SECS: u64 = 10;
pub const DEFAULT_LR_SECS: u64 = 60;
pub const DEFAULT_DATA_RETENTION_SECS: u64 = 30 * DAY_SECS;
pub const DEFAULT_STANDARD_INTERVAL_SECS: u64 = 24 * 3600;
pub const DEFAULT_RARE_INTERVAL_SECS: u64 = 78 * 3600;
pub const DEFAULT_FREQUENT_INTERVAL_SECS: u64 = 4 * 3600;
/// PMM's default update snooze (one week).
pub const DEFAULT_UPDATE_SNOOZE_SECS: u64 = 7 * DAY_SECS;
pub const DAY_SECS: u64 = 24 * 3600;

/// AWS SDK partitions PMM accepts in `aws_partitions`.
pub const AWS_PARTITIONS: [&str; 7] = [
    "aws",
    "aws-cn",
    "aws-us-gov",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
];

/// The settings document. `None` means "PMM's default".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Random id of this PMM Server, set when the server is first bootstrapped.
    pub pmm_server_id: String,
    pub pmm_public_address: String,
    pub updates_enabled: Option<bool>,
    pub update_snooze_secs: Option<u64>,
    pub telemetry_enabled: Option<bool>,
    pub hr_secs: Option<u64>,
    pub mr_secs: Option<u64>,
    pub lr_secs: Option<u64>,
    pub data_retention_secs: Option<u64>,
    /// Sorted and deduplicated; empty means `["aws"]`.
    pub aws_partitions: Vec<String>,
    pub ssh_key: String,
    pub vm_cache_enabled: Option<bool>,
    pub advisors_enabled: Option<bool>,
    pub standard_interval_secs: Option<u64>,
    pub rare_interval_secs: Option<u64>,
    pub frequent_interval_secs: Option<u64>,
    pub nomad_enabled: Option<bool>,
    pub alerting_enabled: Option<bool>,
    pub azure_discover_enabled: Option<bool>,
    pub backup_management_enabled: Option<bool>,
    pub access_control_enabled: Option<bool>,
}

/// The settings with every default applied: what the rest of the system reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub pmm_server_id: String,
    pub pmm_public_address: String,
    pub updates_enabled: bool,
    pub update_snooze_secs: u64,
    pub telemetry_enabled: bool,
    pub hr_secs: u64,
    pub mr_secs: u64,
    pub lr_secs: u64,
    pub data_retention_secs: u64,
    pub aws_partitions: Vec<String>,
    pub ssh_key: String,
    pub vm_cache_enabled: bool,
    pub advisors_enabled: bool,
    pub standard_interval_secs: u64,
    pub rare_interval_secs: u64,
    pub frequent_interval_secs: u64,
    pub nomad_enabled: bool,
    pub alerting_enabled: bool,
    pub azure_discover_enabled: bool,
    pub backup_management_enabled: bool,
    pub access_control_enabled: bool,
}

impl Settings {
    /// The effective metrics resolutions (HR, MR, LR seconds): [`Settings::effective`]'s,
    /// without copying the rest.
    pub fn resolutions_secs(&self) -> (u64, u64, u64) {
        (
            self.hr_secs.unwrap_or(DEFAULT_HR_SECS),
            self.mr_secs.unwrap_or(DEFAULT_MR_SECS),
            self.lr_secs.unwrap_or(DEFAULT_LR_SECS),
        )
    }

    /// Applies PMM's defaults.
    pub fn effective(&self) -> Effective {
        Effective {
            pmm_server_id: self.pmm_server_id.clone(),
            pmm_public_address: self.pmm_public_address.clone(),
            updates_enabled: self.updates_enabled.unwrap_or(true),
            update_snooze_secs: self
                .update_snooze_secs
                .unwrap_or(DEFAULT_UPDATE_SNOOZE_SECS),
            telemetry_enabled: self.telemetry_enabled.unwrap_or(true),
            hr_secs: self.hr_secs.unwrap_or(DEFAULT_HR_SECS),
            mr_secs: self.mr_secs.unwrap_or(DEFAULT_MR_SECS),
            lr_secs: self.lr_secs.unwrap_or(DEFAULT_LR_SECS),
            data_retention_secs: self
                .data_retention_secs
                .unwrap_or(DEFAULT_DATA_RETENTION_SECS),
            aws_partitions: if self.aws_partitions.is_empty() {
                vec!["aws".to_owned()]
            } else {
                self.aws_partitions.clone()
            },
            ssh_key: self.ssh_key.clone(),
            vm_cache_enabled: self.vm_cache_enabled.unwrap_or(false),
            advisors_enabled: self.advisors_enabled.unwrap_or(true),
            standard_interval_secs: self
                .standard_interval_secs
                .unwrap_or(DEFAULT_STANDARD_INTERVAL_SECS),
            rare_interval_secs: self
                .rare_interval_secs
                .unwrap_or(DEFAULT_RARE_INTERVAL_SECS),
            frequent_interval_secs: self
                .frequent_interval_secs
                .unwrap_or(DEFAULT_FREQUENT_INTERVAL_SECS),
            nomad_enabled: self.nomad_enabled.unwrap_or(false),
            alerting_enabled: self.alerting_enabled.unwrap_or(true),
            azure_discover_enabled: self.azure_discover_enabled.unwrap_or(false),
            backup_management_enabled: self.backup_management_enabled.unwrap_or(true),
            access_control_enabled: self.access_control_enabled.unwrap_or(false),
        }
    }
}

/// A resolution or interval: at least 1s and a whole number of seconds (PMM's messages).
pub fn validate_resolution(name: &str, d: std::time::Duration) -> Result<u64, Rejection> {
    if d < std::time::Duration::from_secs(1) {
        return Err(Rejection::invalid(format!(
            "{name}: minimal resolution is 1s."
        )));
    }
    if d.subsec_nanos() != 0 {
        return Err(Rejection::invalid(format!(
            "{name}: should be a natural number of seconds."
        )));
    }
    Ok(d.as_secs())
}

/// Data retention: at least 24h and a whole number of days (PMM's messages).
pub fn validate_retention(d: std::time::Duration) -> Result<u64, Rejection> {
    if d < std::time::Duration::from_secs(DAY_SECS) {
        return Err(Rejection::invalid(
            "data_retention: minimal resolution is 24h.",
        ));
    }
    if d.subsec_nanos() != 0 || !d.as_secs().is_multiple_of(DAY_SECS) {
        return Err(Rejection::invalid(
            "data_retention: should be a natural number of days.",
        ));
    }
    Ok(d.as_secs())
}

/// AWS partitions: bounded in number, each known; the result is deduplicated and sorted.
pub fn validate_aws_partitions(values: &[String]) -> Result<Vec<String>, Rejection> {
    if values.len() > AWS_PARTITIONS.len() {
        return Err(Rejection::invalid("aws_partitions: list is too long."));
    }
    for v in values {
        if !AWS_PARTITIONS.contains(&v.as_str()) {
            let shown: String = v.chars().take(64).collect();
            return Err(Rejection::invalid(format!(
                "aws_partitions: partition {shown:?} is invalid."
            )));
        }
    }
    let mut out = values.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// An OpenSSH authorized_keys line: `[options] type base64 [comment]`, where the base64 blob
/// starts with the length-prefixed key type. Lines of several keys are rejected.
pub fn validate_ssh_key(key: &str) -> Result<(), Rejection> {
    use base64::Engine as _;
    let bad = || Rejection::invalid("Invalid SSH key.");
    let line = key.trim();
    if line.is_empty() || line.len() > 16 * 1024 || line.contains('\n') {
        return Err(bad());
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let known =
        |t: &str| t.starts_with("ssh-") || t.starts_with("ecdsa-sha2-") || t.starts_with("sk-");
    let pos = fields.iter().position(|f| known(f)).ok_or_else(bad)?;
    let (kind, blob) = (fields[pos], fields.get(pos + 1).ok_or_else(bad)?);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| bad())?;
    let len = raw
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match len {
        Some(n) if raw.get(4..4 + n) == Some(kind.as_bytes()) && raw.len() > 4 + n => Ok(()),
        _ => Err(bad()),
    }
}

/// Values pinned by `PMM_*` environment variables. A ChangeSettings that contradicts one is
/// `FailedPrecondition`; the values themselves are written to the settings at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvSettings {
    pub updates_enabled: Option<bool>,
    pub telemetry_enabled: Option<bool>,
    pub hr_secs: Option<u64>,
    pub mr_secs: Option<u64>,
    pub lr_secs: Option<u64>,
    pub data_retention_secs: Option<u64>,
    pub vm_cache_enabled: Option<bool>,
    pub alerting_enabled: Option<bool>,
    pub azure_discover_enabled: Option<bool>,
    pub backup_management_enabled: Option<bool>,
    pub nomad_enabled: Option<bool>,
    pub access_control_enabled: Option<bool>,
    pub pmm_public_address: Option<String>,
    pub update_snooze_secs: Option<u64>,
}

/// Why the environment could not be read; a start-up error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct EnvError {
    pub name: String,
    pub reason: String,
}

impl EnvSettings {
    /// Parses PMM's settings variables from `vars` (values lower-cased first, like PMM).
    /// Unknown `PMM_*` variables are returned as warnings, not errors.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Vec<String>), EnvError> {
        let mut s = Self::default();
        let mut warnings = Vec::new();
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for (name, raw) in &vars {
            let value = raw.to_lowercase();
            let err = |reason: String| EnvError {
                name: name.clone(),
                reason,
            };
            let boolean =
                || parse_go_bool(&value).ok_or_else(|| err(format!("invalid boolean {raw:?}")));
            let res = |field: &str| -> Result<u64, EnvError> {
                let d = parse_go_duration(&value)
                    .ok_or_else(|| err(format!("invalid duration {raw:?}")))?;
                validate_resolution(field, d).map_err(|r| err(r.message()))
            };
            match name.as_str() {
                "PMM_ENABLE_UPDATES" => s.updates_enabled = Some(boolean()?),
                "PMM_ENABLE_TELEMETRY" => s.telemetry_enabled = Some(boolean()?),
                "PMM_METRICS_RESOLUTION" | "PMM_METRICS_RESOLUTION_HR" => {
                    s.hr_secs = Some(res("hr")?)
                }
                "PMM_METRICS_RESOLUTION_MR" => s.mr_secs = Some(res("mr")?),
                "PMM_METRICS_RESOLUTION_LR" => s.lr_secs = Some(res("lr")?),
                "PMM_DATA_RETENTION" => {
                    let d = parse_go_duration(&value)
                        .ok_or_else(|| err(format!("invalid duration {raw:?}")))?;
                    s.data_retention_secs =
                        Some(validate_retention(d).map_err(|r| err(r.message()))?);
                }
                "PMM_UPDATE_SNOOZE_DURATION" => {
                    let d = parse_go_duration(&value)
                        .ok_or_else(|| err(format!("invalid duration {raw:?}")))?;
                    s.update_snooze_secs = Some(d.as_secs());
                }
                "PMM_ENABLE_VM_CACHE" => s.vm_cache_enabled = Some(boolean()?),
                "PMM_ENABLE_ALERTING" => s.alerting_enabled = Some(boolean()?),
                "PMM_ENABLE_AZURE_DISCOVER" => s.azure_discover_enabled = Some(boolean()?),
                "PMM_ENABLE_BACKUP_MANAGEMENT" => s.backup_management_enabled = Some(boolean()?),
                "PMM_ENABLE_NOMAD" => s.nomad_enabled = Some(boolean()?),
                "PMM_ENABLE_ACCESS_CONTROL" => s.access_control_enabled = Some(boolean()?),
                "PMM_PUBLIC_ADDRESS" => s.pmm_public_address = Some(value),
                n if n.starts_with("PMM_TEST_") => warnings.push(format!("{n} is for tests only")),
                n if n.starts_with("PERCONA_") => warnings.push(format!("{n} is not supported")),
                n if n.starts_with("PMM_") && !is_ignored_pmm_var(n) => {
                    warnings.push(format!("unknown environment variable {n}"))
                }
                _ => {}
            }
        }
        Ok((s, warnings))
    }

    /// True when no variable pins anything.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Variables PMM reads elsewhere, or our own server's configuration (`PMM_CP_*`, see config.rs).
fn is_ignored_pmm_var(name: &str) -> bool {
    const EXACT: [&str; 7] = [
        "PMM_DEBUG",
        "PMM_TRACE",
        "PMM_VM_URL",
        "PMM_INSTALL_METHOD",
        "PMM_DISTRIBUTION_METHOD",
        "PMM_DISABLE_BUILTIN_CLICKHOUSE",
        "PMM_DATABASE_URL",
    ];
    const PREFIXES: [&str; 4] = ["PMM_CLICKHOUSE_", "PMM_WATCHTOWER_", "PMM_DEV_", "PMM_CP_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Go's `strconv.ParseBool` on an already lower-cased value.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` (units ns, us, µs, ms, s, m, h; fractions allowed; no negatives).
pub fn parse_go_duration(v: &str) -> Option<std::time::Duration> {
    if v == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = v.strip_prefix('+').unwrap_or(v);
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(std::time::Duration::from_nanos(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_go_duration("720h"),
            Some(Duration::from_secs(720 * 3600))
        );
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "5", "s", "5x", "-5s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn env_values_are_lowercased_and_validated() {
        let vars = [
            ("PMM_ENABLE_UPDATES", "TRUE"),
            ("PMM_METRICS_RESOLUTION_MR", "15S"),
        ];
        let (s, w) = EnvSettings::from_vars(vars.map(|(a, b)| (a.into(), b.into()))).expect("ok");
        assert_eq!(s.updates_enabled, Some(true));
        assert_eq!(s.mr_secs, Some(15));
        assert!(w.is_empty());
        let bad = EnvSettings::from_vars([("PMM_DATA_RETENTION".into(), "36h".into())]);
        assert!(bad.is_err());
        let bad = EnvSettings::from_vars([("PMM_ENABLE_TELEMETRY".into(), "yes".into())]);
        assert!(bad.is_err());
    }

    #[test]
    fn ssh_keys_must_parse_as_authorized_keys_lines() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhR8U0rYZ8Pgh3ACfqS1o7yYuwVvxLtYRtD2nlm5h8k user@host";
        assert!(validate_ssh_key(good).is_ok());
        assert!(validate_ssh_key("ssh-rsa notbase64!").is_err());
        assert!(validate_ssh_key("hello").is_err());
        assert!(
            validate_ssh_key(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIEhR8U0rYZ8Pgh3ACfqS1o7yYuwVvxLtYRtD2nlm5h8k"
            )
            .is_err()
        );
    }
}
