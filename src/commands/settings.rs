//! ChangeSettings: PMM's optional-field semantics, ranges, and the environment pins
//! (a change that contradicts a `PMM_*` variable is `FailedPrecondition`).

use super::{Decision, Rejection};
use crate::domain::limits::{MAX_TEXT_LEN, bounded};
use crate::domain::settings::{
    EnvSettings, validate_aws_partitions, validate_resolution, validate_retention, validate_ssh_key,
};
use crate::events::Event;
use std::time::Duration;

/// ChangeSettings' request. `None` keeps a value; zero durations keep it too (PMM's rule).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ChangeSettings {
    pub enable_updates: Option<bool>,
    pub enable_telemetry: Option<bool>,
    pub metrics_resolutions_hr: Option<Duration>,
    pub metrics_resolutions_mr: Option<Duration>,
    pub metrics_resolutions_lr: Option<Duration>,
    pub data_retention: Option<Duration>,
    pub ssh_key: Option<String>,
    /// Present and empty resets to the default `["aws"]`.
    pub aws_partitions: Option<Vec<String>>,
    pub enable_advisor: Option<bool>,
    pub enable_alerting: Option<bool>,
    /// Present and empty clears it.
    pub pmm_public_address: Option<String>,
    pub advisor_standard_interval: Option<Duration>,
    pub advisor_rare_interval: Option<Duration>,
    pub advisor_frequent_interval: Option<Duration>,
    pub enable_azurediscover: Option<bool>,
    pub enable_backup_management: Option<bool>,
    pub enable_access_control: Option<bool>,
    pub enable_vm_cache: Option<bool>,
    pub enable_nomad: Option<bool>,
    pub update_snooze_duration: Option<Duration>,
}

impl ChangeSettings {
    /// The change that writes every pinned environment value (applied at start-up).
    pub fn from_env(env: &EnvSettings) -> Self {
        let secs = |v: Option<u64>| v.map(Duration::from_secs);
        Self {
            enable_updates: env.updates_enabled,
            enable_telemetry: env.telemetry_enabled,
            metrics_resolutions_hr: secs(env.hr_secs),
            metrics_resolutions_mr: secs(env.mr_secs),
            metrics_resolutions_lr: secs(env.lr_secs),
            data_retention: secs(env.data_retention_secs),
            enable_alerting: env.alerting_enabled,
            pmm_public_address: env.pmm_public_address.clone(),
            enable_azurediscover: env.azure_discover_enabled,
            enable_backup_management: env.backup_management_enabled,
            enable_access_control: env.access_control_enabled,
            enable_vm_cache: env.vm_cache_enabled,
            enable_nomad: env.nomad_enabled,
            update_snooze_duration: secs(env.update_snooze_secs),
            ..Self::default()
        }
    }

    pub fn decide(&self, d: &mut Decision<'_>) -> Result<(), Rejection> {
        self.check_env(&d.ctx().env)?;
        let current = (*d.state().settings).clone();
        let mut s = current.clone();
        let nonzero = |v: Option<Duration>| v.filter(|d| !d.is_zero());
        if let Some(v) = nonzero(self.metrics_resolutions_hr) {
            s.hr_secs = Some(validate_resolution("hr", v)?);
        }
        if let Some(v) = nonzero(self.metrics_resolutions_mr) {
            s.mr_secs = Some(validate_resolution("mr", v)?);
        }
        if let Some(v) = nonzero(self.metrics_resolutions_lr) {
            s.lr_secs = Some(validate_resolution("lr", v)?);
        }
        if let Some(v) = nonzero(self.data_retention) {
            s.data_retention_secs = Some(validate_retention(v)?);
        }
        if let Some(v) = nonzero(self.advisor_standard_interval) {
            s.standard_interval_secs = Some(validate_resolution("standard_interval", v)?);
        }
        if let Some(v) = nonzero(self.advisor_rare_interval) {
            s.rare_interval_secs = Some(validate_resolution("rare_interval", v)?);
        }
        if let Some(v) = nonzero(self.advisor_frequent_interval) {
            s.frequent_interval_secs = Some(validate_resolution("frequent_interval", v)?);
        }
        if let Some(v) = nonzero(self.update_snooze_duration) {
            s.update_snooze_secs = Some(validate_resolution("update_snooze_duration", v)?);
        }
        if let Some(p) = &self.aws_partitions {
            s.aws_partitions = validate_aws_partitions(p)?;
        }
        if let Some(k) = &self.ssh_key {
            if !k.is_empty() {
                validate_ssh_key(k)?;
            }
            s.ssh_key.clone_from(k);
        }
        if let Some(a) = &self.pmm_public_address {
            bounded("pmm_public_address", a, MAX_TEXT_LEN)?;
            s.pmm_public_address.clone_from(a);
        }
        for (dst, v) in [
            (&mut s.updates_enabled, self.enable_updates),
            (&mut s.telemetry_enabled, self.enable_telemetry),
            (&mut s.advisors_enabled, self.enable_advisor),
            (&mut s.alerting_enabled, self.enable_alerting),
            (&mut s.azure_discover_enabled, self.enable_azurediscover),
            (
                &mut s.backup_management_enabled,
                self.enable_backup_management,
            ),
            (&mut s.access_control_enabled, self.enable_access_control),
            (&mut s.vm_cache_enabled, self.enable_vm_cache),
            (&mut s.nomad_enabled, self.enable_nomad),
        ] {
            if v.is_some() {
                *dst = v;
            }
        }
        if s != current {
            d.emit(Event::SettingsChanged { settings: s });
        }
        Ok(())
    }

    /// PMM refuses changes that contradict a value pinned by the environment.
    fn check_env(&self, env: &EnvSettings) -> Result<(), Rejection> {
        let flags = [
            (
                self.enable_updates,
                env.updates_enabled,
                "Updates are",
                "PMM_ENABLE_UPDATES",
            ),
            (
                self.enable_telemetry,
                env.telemetry_enabled,
                "Telemetry is",
                "PMM_ENABLE_TELEMETRY",
            ),
            (
                self.enable_alerting,
                env.alerting_enabled,
                "Alerting is",
                "PMM_ENABLE_ALERTING",
            ),
            (
                self.enable_azurediscover,
                env.azure_discover_enabled,
                "Azure discover is",
                "PMM_ENABLE_AZURE_DISCOVER",
            ),
        ];
        for (want, pinned, what, var) in flags {
            if let (Some(w), Some(p)) = (want, pinned)
                && w != p
            {
                return Err(Rejection::failed_precondition(format!(
                    "{what} configured via {var} environment variable."
                )));
            }
        }
        let durations = [
            (
                self.metrics_resolutions_hr,
                env.hr_secs,
                "hr",
                "PMM_METRICS_RESOLUTION_HR",
            ),
            (
                self.metrics_resolutions_mr,
                env.mr_secs,
                "mr",
                "PMM_METRICS_RESOLUTION_MR",
            ),
            (
                self.metrics_resolutions_lr,
                env.lr_secs,
                "lr",
                "PMM_METRICS_RESOLUTION_LR",
            ),
            (
                self.data_retention,
                env.data_retention_secs,
                "data_retention",
                "PMM_DATA_RETENTION",
            ),
        ];
        for (want, pinned, what, var) in durations {
            if let (Some(w), Some(p)) = (want, pinned)
                && !w.is_zero()
                && w != Duration::from_secs(p)
            {
                return Err(Rejection::failed_precondition(format!(
                    "{what} is configured via {var} environment variable."
                )));
            }
        }
        Ok(())
    }
}
