//! Redaction for read paths: every sealed secret in a JSON document becomes a fixed marker, so
//! neither plain text nor ciphertext leaves through queries, history or logs.

use crate::domain::secret::SEALED_PREFIX;
use serde_json::Value;

/// What a redacted secret reads as.
pub const REDACTED: &str = "[redacted]";

/// Replaces every sealed string in `value` (at any depth) with [`REDACTED`].
pub fn redact(value: &mut Value) {
    match value {
        Value::String(s) if s.starts_with(SEALED_PREFIX) => *s = REDACTED.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Object(map) => map.values_mut().for_each(redact),
        _ => {}
    }
}
