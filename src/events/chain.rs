//! The hash chain (DESIGN.md fixed decision 7): `hash = SHA-256(prev_hash || canonical bytes)`
//! over each event's immutable fields. Canonical bytes are length-prefixed fields and JSON with
//! sorted keys, so they are the same after a round trip through PostgreSQL's jsonb.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The immutable fields of a stored event, as hashed.
pub struct Hashed<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_id: uuid::Uuid,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: &'a Value,
    pub metadata: &'a Value,
    pub recorded_at_micros: i64,
}

/// Computes an event's hash from the previous one.
pub fn hash(prev: &[u8; 32], e: &Hashed<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(e.position.to_be_bytes());
    put_str(&mut h, e.stream_id);
    h.update(e.stream_version.to_be_bytes());
    h.update(e.event_id.as_bytes());
    put_str(&mut h, e.event_type);
    h.update(e.schema_version.to_be_bytes());
    let mut buf = Vec::with_capacity(512);
    canonical_json(e.payload, &mut buf);
    put_bytes(&mut h, &buf);
    buf.clear();
    canonical_json(e.metadata, &mut buf);
    put_bytes(&mut h, &buf);
    h.update(e.recorded_at_micros.to_be_bytes());
    h.finalize().into()
}

fn put_str(h: &mut Sha256, s: &str) {
    put_bytes(h, s.as_bytes());
}

fn put_bytes(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_be_bytes());
    h.update(b);
}

/// Writes `v` as compact JSON with object keys sorted by their bytes, whatever map type
/// serde_json was built with.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, v).expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":"é"}],"c":null}}"#)
            .expect("valid");
        let mut out = Vec::new();
        canonical_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"a":{"c":null,"d":[1,{"y":"é","z":0}]},"b":1}"#
        );
    }
}
