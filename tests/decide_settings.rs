//! Settings rules: defaults, tri-state flags, optional-field semantics, duration ranges,
//! AWS partitions, the SSH key, and environment pins.

#[path = "common/given.rs"]
mod given;

use given::*;
use pmmcp::commands::settings::ChangeSettings;
use pmmcp::commands::{Command, ErrorClass};
use pmmcp::domain::Settings;
use pmmcp::domain::settings::EnvSettings;
use pmmcp::events::Event;
use std::time::Duration;

fn change(c: ChangeSettings) -> Command {
    Command::ChangeSettings(c)
}

/// The settings an accepted change records.
fn the_settings(events: &[Event]) -> Settings {
    match events {
        [Event::SettingsChanged { settings }] => settings.clone(),
        other => panic!("expected one SettingsChanged, got {:?}", types(other)),
    }
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhR8U0rYZ8Pgh3ACfqS1o7yYuwVvxLtYRtD2nlm5h8k user@host";

#[test]
fn settings_defaults() {
    let e = Given::bootstrapped().state().settings.effective();
    assert!(e.updates_enabled && e.telemetry_enabled);
    assert_eq!((e.hr_secs, e.mr_secs, e.lr_secs), (5, 10, 60));
    assert_eq!(e.data_retention_secs, 30 * DAY);
    assert_eq!(e.aws_partitions, ["aws"]);
    assert_eq!(
        (
            e.standard_interval_secs,
            e.rare_interval_secs,
            e.frequent_interval_secs
        ),
        (24 * HOUR, 78 * HOUR, 4 * HOUR)
    );
    assert!(e.advisors_enabled && e.alerting_enabled && e.backup_management_enabled);
    assert!(!e.azure_discover_enabled && !e.access_control_enabled);
    assert!(!e.vm_cache_enabled && !e.nomad_enabled);
    assert_eq!(e.pmm_public_address, "");
    assert_eq!(e.ssh_key, "");
}

#[test]
fn enable_flags_are_tri_state_and_only_explicit_choices_are_stored() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            enable_updates: Some(true),
            enable_azurediscover: Some(true),
            enable_telemetry: Some(false),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(s.updates_enabled, Some(true));
            assert_eq!(s.telemetry_enabled, Some(false));
            assert_eq!(s.azure_discover_enabled, Some(true));
            assert_eq!(s.alerting_enabled, None);
            assert_eq!(s.backup_management_enabled, None);
            let eff = s.effective();
            assert!(eff.updates_enabled && !eff.telemetry_enabled && eff.azure_discover_enabled);
            assert!(eff.alerting_enabled);
        });
}

#[test]
fn absent_fields_keep_their_values() {
    let given = Given::bootstrapped().with(change(ChangeSettings {
        enable_alerting: Some(false),
        metrics_resolutions_hr: secs(2),
        pmm_public_address: Some("pmm.example.com".into()),
        ..ChangeSettings::default()
    }));
    given
        .when(change(ChangeSettings {
            enable_advisor: Some(false),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(s.advisors_enabled, Some(false));
            assert_eq!(s.alerting_enabled, Some(false));
            assert_eq!(s.hr_secs, Some(2));
            assert_eq!(s.pmm_public_address, "pmm.example.com");
            assert!(!s.pmm_server_id.is_empty());
        });
}

#[test]
fn a_change_that_changes_nothing_emits_nothing() {
    Given::bootstrapped()
        .when(change(ChangeSettings::default()))
        .emits_nothing();
    Given::bootstrapped()
        .with(change(ChangeSettings {
            enable_updates: Some(false),
            ..ChangeSettings::default()
        }))
        .when(change(ChangeSettings {
            enable_updates: Some(false),
            ..ChangeSettings::default()
        }))
        .emits_nothing();
}

#[test]
fn metrics_resolutions_must_be_at_least_1s() {
    for (name, c) in [
        (
            "hr",
            ChangeSettings {
                metrics_resolutions_hr: Some(Duration::from_millis(500)),
                ..ChangeSettings::default()
            },
        ),
        (
            "mr",
            ChangeSettings {
                metrics_resolutions_mr: Some(Duration::from_millis(999)),
                ..ChangeSettings::default()
            },
        ),
        (
            "lr",
            ChangeSettings {
                metrics_resolutions_lr: Some(Duration::from_nanos(1)),
                ..ChangeSettings::default()
            },
        ),
    ] {
        Given::bootstrapped().when(change(c)).rejected(
            ErrorClass::InvalidArgument,
            &format!("{name}: minimal resolution is 1s."),
        );
    }
}

#[test]
fn metrics_resolutions_must_be_whole_seconds() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            metrics_resolutions_mr: Some(Duration::from_millis(1500)),
            ..ChangeSettings::default()
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "mr: should be a natural number of seconds.",
        );
}

#[test]
fn metrics_resolutions_are_stored_in_whole_seconds() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            metrics_resolutions_hr: secs(1),
            metrics_resolutions_mr: secs(15),
            metrics_resolutions_lr: secs(300),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(
                (s.hr_secs, s.mr_secs, s.lr_secs),
                (Some(1), Some(15), Some(300))
            );
        });
}

#[test]
fn zero_durations_mean_unchanged() {
    let given = Given::bootstrapped().with(change(ChangeSettings {
        metrics_resolutions_hr: secs(2),
        data_retention: secs(10 * DAY),
        advisor_rare_interval: secs(HOUR),
        ..ChangeSettings::default()
    }));
    given
        .when(change(ChangeSettings {
            metrics_resolutions_hr: secs(0),
            data_retention: secs(0),
            advisor_rare_interval: secs(0),
            ..ChangeSettings::default()
        }))
        .emits_nothing();
}

#[test]
fn advisor_intervals_follow_the_resolution_rule_under_their_names() {
    for (name, c) in [
        (
            "standard_interval",
            ChangeSettings {
                advisor_standard_interval: Some(Duration::from_millis(100)),
                ..ChangeSettings::default()
            },
        ),
        (
            "rare_interval",
            ChangeSettings {
                advisor_rare_interval: Some(Duration::from_millis(100)),
                ..ChangeSettings::default()
            },
        ),
        (
            "frequent_interval",
            ChangeSettings {
                advisor_frequent_interval: Some(Duration::from_millis(100)),
                ..ChangeSettings::default()
            },
        ),
    ] {
        Given::bootstrapped().when(change(c)).rejected(
            ErrorClass::InvalidArgument,
            &format!("{name}: minimal resolution is 1s."),
        );
    }
    Given::bootstrapped()
        .when(change(ChangeSettings {
            advisor_frequent_interval: Some(Duration::from_millis(2500)),
            ..ChangeSettings::default()
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "frequent_interval: should be a natural number of seconds.",
        );
    Given::bootstrapped()
        .when(change(ChangeSettings {
            advisor_standard_interval: secs(12 * HOUR),
            advisor_rare_interval: secs(100 * HOUR),
            advisor_frequent_interval: secs(HOUR),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(
                (
                    s.standard_interval_secs,
                    s.rare_interval_secs,
                    s.frequent_interval_secs
                ),
                (Some(12 * HOUR), Some(100 * HOUR), Some(HOUR))
            );
        });
}

#[test]
fn data_retention_must_be_at_least_24h() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            data_retention: secs(23 * HOUR),
            ..ChangeSettings::default()
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "data_retention: minimal resolution is 24h.",
        );
}

#[test]
fn data_retention_must_be_whole_days() {
    for bad in [
        Duration::from_secs(36 * HOUR),
        Duration::from_secs(DAY) + Duration::from_millis(1),
    ] {
        Given::bootstrapped()
            .when(change(ChangeSettings {
                data_retention: Some(bad),
                ..ChangeSettings::default()
            }))
            .rejected(
                ErrorClass::InvalidArgument,
                "data_retention: should be a natural number of days.",
            );
    }
    Given::bootstrapped()
        .when(change(ChangeSettings {
            data_retention: secs(2 * DAY),
            ..ChangeSettings::default()
        }))
        .emits(|e| assert_eq!(the_settings(e).data_retention_secs, Some(2 * DAY)));
}

#[test]
fn aws_partitions_are_deduplicated_and_sorted() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            aws_partitions: Some(vec![
                "aws-us-gov".into(),
                "aws".into(),
                "aws-cn".into(),
                "aws".into(),
            ]),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            assert_eq!(
                the_settings(e).aws_partitions,
                ["aws", "aws-cn", "aws-us-gov"]
            )
        });
}

#[test]
fn unknown_aws_partition_is_invalid() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            aws_partitions: Some(vec!["aws".into(), "aws-moon".into()]),
            ..ChangeSettings::default()
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "aws_partitions: partition \"aws-moon\" is invalid.",
        );
}

#[test]
fn aws_partitions_list_may_not_exceed_the_known_partitions() {
    Given::bootstrapped()
        .when(change(ChangeSettings {
            aws_partitions: Some(vec!["aws".into(); 8]),
            ..ChangeSettings::default()
        }))
        .rejected(
            ErrorClass::InvalidArgument,
            "aws_partitions: list is too long.",
        );
}

#[test]
fn empty_aws_partitions_reset_to_the_default() {
    Given::bootstrapped()
        .with(change(ChangeSettings {
            aws_partitions: Some(vec!["aws-cn".into()]),
            ..ChangeSettings::default()
        }))
        .when(change(ChangeSettings {
            aws_partitions: Some(vec![]),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert!(s.aws_partitions.is_empty());
            assert_eq!(s.effective().aws_partitions, ["aws"]);
        });
}

#[test]
fn pmm_public_address_present_and_empty_clears_it() {
    Given::bootstrapped()
        .with(change(ChangeSettings {
            pmm_public_address: Some("pmm.example.com".into()),
            ..ChangeSettings::default()
        }))
        .when(change(ChangeSettings {
            pmm_public_address: Some(String::new()),
            ..ChangeSettings::default()
        }))
        .emits(|e| assert_eq!(the_settings(e).pmm_public_address, ""));
}

#[test]
fn ssh_key_must_be_an_authorized_keys_line() {
    for bad in ["hello", "ssh-rsa notbase64!", "ssh-ed25519"] {
        Given::bootstrapped()
            .when(change(ChangeSettings {
                ssh_key: Some(bad.into()),
                ..ChangeSettings::default()
            }))
            .rejected(ErrorClass::InvalidArgument, "Invalid SSH key.");
    }
    Given::bootstrapped()
        .when(change(ChangeSettings {
            ssh_key: Some(SSH_KEY.into()),
            ..ChangeSettings::default()
        }))
        .emits(|e| assert_eq!(the_settings(e).ssh_key, SSH_KEY));
}

#[test]
fn env_pinned_flags_reject_contradicting_changes_failed_precondition() {
    let env = EnvSettings {
        updates_enabled: Some(false),
        telemetry_enabled: Some(false),
        alerting_enabled: Some(true),
        azure_discover_enabled: Some(false),
        ..EnvSettings::default()
    };
    let cases = [
        (
            ChangeSettings {
                enable_updates: Some(true),
                ..ChangeSettings::default()
            },
            "PMM_ENABLE_UPDATES",
        ),
        (
            ChangeSettings {
                enable_telemetry: Some(true),
                ..ChangeSettings::default()
            },
            "PMM_ENABLE_TELEMETRY",
        ),
        (
            ChangeSettings {
                enable_alerting: Some(false),
                ..ChangeSettings::default()
            },
            "PMM_ENABLE_ALERTING",
        ),
        (
            ChangeSettings {
                enable_azurediscover: Some(true),
                ..ChangeSettings::default()
            },
            "PMM_ENABLE_AZURE_DISCOVER",
        ),
    ];
    for (c, var) in cases {
        Given::bootstrapped()
            .env(env.clone())
            .when(change(c))
            .rejected(
                ErrorClass::FailedPrecondition,
                &format!("configured via {var} environment variable."),
            );
    }
}

#[test]
fn env_pinned_flags_accept_the_pinned_value() {
    Given::bootstrapped()
        .env(EnvSettings {
            updates_enabled: Some(false),
            ..EnvSettings::default()
        })
        .when(change(ChangeSettings {
            enable_updates: Some(false),
            enable_telemetry: Some(false),
            ..ChangeSettings::default()
        }))
        .emits(|e| assert_eq!(the_settings(e).updates_enabled, Some(false)));
}

#[test]
fn env_pinned_durations_allow_only_zero_or_the_pinned_value() {
    let env = EnvSettings {
        hr_secs: Some(2),
        mr_secs: Some(20),
        lr_secs: Some(120),
        data_retention_secs: Some(7 * DAY),
        ..EnvSettings::default()
    };
    let cases = [
        (
            ChangeSettings {
                metrics_resolutions_hr: secs(3),
                ..ChangeSettings::default()
            },
            "PMM_METRICS_RESOLUTION_HR",
        ),
        (
            ChangeSettings {
                metrics_resolutions_mr: secs(30),
                ..ChangeSettings::default()
            },
            "PMM_METRICS_RESOLUTION_MR",
        ),
        (
            ChangeSettings {
                metrics_resolutions_lr: secs(60),
                ..ChangeSettings::default()
            },
            "PMM_METRICS_RESOLUTION_LR",
        ),
        (
            ChangeSettings {
                data_retention: secs(8 * DAY),
                ..ChangeSettings::default()
            },
            "PMM_DATA_RETENTION",
        ),
    ];
    for (c, var) in cases {
        Given::bootstrapped()
            .env(env.clone())
            .when(change(c))
            .rejected(ErrorClass::FailedPrecondition, var);
    }
    Given::bootstrapped()
        .env(env)
        .when(change(ChangeSettings {
            metrics_resolutions_hr: secs(2),
            metrics_resolutions_mr: secs(0),
            data_retention: secs(7 * DAY),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(
                (s.hr_secs, s.mr_secs, s.data_retention_secs),
                (Some(2), None, Some(7 * DAY))
            );
        });
}

#[test]
fn env_does_not_pin_other_settings() {
    Given::bootstrapped()
        .env(EnvSettings {
            backup_management_enabled: Some(false),
            access_control_enabled: Some(false),
            ..EnvSettings::default()
        })
        .when(change(ChangeSettings {
            enable_backup_management: Some(true),
            enable_access_control: Some(true),
            ..ChangeSettings::default()
        }))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(s.backup_management_enabled, Some(true));
            assert_eq!(s.access_control_enabled, Some(true));
        });
}

#[test]
fn env_values_are_lower_cased_and_written_to_the_settings_at_start_up() {
    let vars = [
        ("PMM_ENABLE_UPDATES", "FALSE"),
        ("PMM_METRICS_RESOLUTION", "2S"),
        ("PMM_DATA_RETENTION", "168H"),
        ("PMM_PUBLIC_ADDRESS", "PMM.Example.COM"),
    ];
    let (env, warnings) =
        EnvSettings::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned()))).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(env.updates_enabled, Some(false));
    assert_eq!(env.hr_secs, Some(2));
    assert_eq!(env.data_retention_secs, Some(7 * DAY));
    assert_eq!(env.pmm_public_address.as_deref(), Some("pmm.example.com"));
    Given::bootstrapped()
        .env(env.clone())
        .when(change(ChangeSettings::from_env(&env)))
        .emits(|e| {
            let s = the_settings(e);
            assert_eq!(s.updates_enabled, Some(false));
            assert_eq!(s.hr_secs, Some(2));
            assert_eq!(s.data_retention_secs, Some(7 * DAY));
            assert_eq!(s.pmm_public_address, "pmm.example.com");
        });
}

#[test]
fn bad_env_values_are_start_up_errors() {
    for (k, v) in [
        ("PMM_ENABLE_TELEMETRY", "yes"),
        ("PMM_METRICS_RESOLUTION_MR", "500ms"),
        ("PMM_DATA_RETENTION", "36h"),
    ] {
        let r = EnvSettings::from_vars([(k.to_owned(), v.to_owned())]);
        assert!(r.is_err(), "{k}={v}");
    }
}
