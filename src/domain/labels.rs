//! Custom labels: Prometheus-valid names that do not start with `__`, bounded values.

use super::limits::{MAX_LABEL_NAME_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, bounded};
use crate::commands::Rejection;
use std::collections::BTreeMap;

/// Custom labels of a node, service or agent. Sorted, so every rendering is deterministic.
pub type Labels = BTreeMap<String, String>;

/// PMM's rule: `^[a-zA-Z_][a-zA-Z0-9_]*$` and not starting with `__`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__")
}

/// Validates custom labels: names by PMM's rule, sizes by our limits.
pub fn validate(labels: &Labels) -> Result<(), Rejection> {
    if labels.len() > MAX_LABELS {
        return Err(Rejection::invalid(format!(
            "custom_labels: {} labels, at most {MAX_LABELS} allowed.",
            labels.len()
        )));
    }
    for (name, value) in labels {
        if name.len() > MAX_LABEL_NAME_LEN || !is_valid_label_name(name) {
            let shown: String = name.chars().take(MAX_LABEL_NAME_LEN).collect();
            return Err(Rejection::invalid(format!("Invalid label name {shown:?}.")));
        }
        bounded(&format!("custom_labels.{name}"), value, MAX_LABEL_VALUE_LEN)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_follow_prometheus_and_reject_double_underscore() {
        for ok in ["a", "_a", "A_1", "env", "_"] {
            assert!(is_valid_label_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "__x", "a.b", "é"] {
            assert!(!is_valid_label_name(bad), "{bad}");
        }
    }
}
