//! Encoding events to `(event_type, schema_version, payload)` and back, with upcasting of old
//! schema versions. Every type is at version 1 so far.

use super::Event;
use serde_json::Value;

/// The schema version written for new events of every type.
pub const CURRENT_SCHEMA_VERSION: i32 = 1;

/// Why stored event data could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("event type {event_type:?} schema version {version} is not known to this binary")]
    UnknownVersion { event_type: String, version: i32 },
    #[error("event type {event_type:?} could not be decoded: {source}")]
    Decode {
        event_type: String,
        source: serde_json::Error,
    },
    #[error("event could not be encoded: {0}")]
    Encode(serde_json::Error),
}

/// Encodes an event into its stored parts.
pub fn encode(event: &Event) -> Result<(&'static str, i32, Value), CodecError> {
    let tagged = serde_json::to_value(event).map_err(CodecError::Encode)?;
    let payload = match tagged {
        Value::Object(mut m) => m.remove("data").unwrap_or(Value::Null),
        other => other,
    };
    Ok((event.event_type(), CURRENT_SCHEMA_VERSION, payload))
}

/// Decodes stored parts into an event, upcasting older schema versions.
pub fn decode(event_type: &str, version: i32, payload: Value) -> Result<Event, CodecError> {
    if version != CURRENT_SCHEMA_VERSION {
        return Err(CodecError::UnknownVersion {
            event_type: event_type.to_owned(),
            version,
        });
    }
    let tagged = serde_json::json!({ "type": event_type, "data": payload });
    serde_json::from_value(tagged).map_err(|source| CodecError::Decode {
        event_type: event_type.to_owned(),
        source,
    })
}

/// [`decode`] from the payload's JSON text, without building a `Value` first (the replay path).
pub fn decode_json(event_type: &str, version: i32, payload: &str) -> Result<Event, CodecError> {
    if version != CURRENT_SCHEMA_VERSION {
        return Err(CodecError::UnknownVersion {
            event_type: event_type.to_owned(),
            version,
        });
    }
    // The tag comes first, so serde reads the payload straight into its variant.
    let tag = serde_json::to_string(event_type).map_err(CodecError::Encode)?;
    let tagged = format!("{{\"type\":{tag},\"data\":{payload}}}");
    serde_json::from_str(&tagged).map_err(|source| CodecError::Decode {
        event_type: event_type.to_owned(),
        source,
    })
}
