//! Size limits on user-supplied strings. PMM relies on PostgreSQL column types for most of
//! these; we check them in `decide` so an oversized value is a clear `InvalidArgument` and
//! never reaches the log.

use crate::commands::Rejection;

/// Names of nodes, services and the like.
pub const MAX_NAME_LEN: usize = 255;
/// Ordinary text fields: addresses, usernames, paths, model strings.
pub const MAX_TEXT_LEN: usize = 1024;
/// Label names.
pub const MAX_LABEL_NAME_LEN: usize = 128;
/// Label values.
pub const MAX_LABEL_VALUE_LEN: usize = 4096;
/// Labels per entity.
pub const MAX_LABELS: usize = 100;
/// Secrets and TLS material (certificates and keys can be long).
pub const MAX_SECRET_LEN: usize = 64 * 1024;
/// List fields such as disabled collectors.
pub const MAX_LIST_LEN: usize = 256;

/// Checks a required text field: non-empty, bounded, no NUL (PostgreSQL cannot store it).
pub fn required(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(format!(
            "{field}: value must not be empty."
        )));
    }
    bounded(field, value, max)
}

/// Checks an optional text field: bounded, no NUL.
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(Rejection::invalid(format!(
            "{field}: value is {} bytes long, at most {max} allowed.",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(Rejection::invalid(format!(
            "{field}: value must not contain NUL bytes."
        )));
    }
    Ok(())
}

/// Checks an optional value with [`bounded`].
pub fn bounded_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), Rejection> {
    value.map_or(Ok(()), |v| bounded(field, v, max))
}

/// Checks a list of short strings.
pub fn bounded_list(field: &str, values: &[String]) -> Result<(), Rejection> {
    if values.len() > MAX_LIST_LEN {
        return Err(Rejection::invalid(format!(
            "{field}: {} entries, at most {MAX_LIST_LEN} allowed.",
            values.len()
        )));
    }
    values
        .iter()
        .try_for_each(|v| bounded(field, v, MAX_TEXT_LEN))
}
