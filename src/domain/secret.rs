//! [`Sealed`]: a secret (password, key, token) as it may appear in commands, events and state:
//! AES-256-GCM ciphertext under the cluster key, never plain text. Only
//! [`crate::crypto::Cipher::open`] turns it back into plain text, for the projections that hand
//! it to a pmm-agent.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The prefix every sealed value carries; read paths redact any string that starts with it.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// Ciphertext of a secret: `enc:v1:<base64(nonce || ciphertext || tag)>`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Sealed(String);

/// Decoding checks the prefix too: plain text can never pass for a sealed value.
impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sealed::from_sealed(s)
            .ok_or_else(|| serde::de::Error::custom("a secret must be sealed with the cluster key"))
    }
}

impl Sealed {
    /// Wraps an already sealed string; `None` if it does not carry the sealed prefix.
    pub fn from_sealed(s: String) -> Option<Self> {
        s.starts_with(SEALED_PREFIX).then_some(Self(s))
    }
    /// The sealed text (safe to store; not the secret).
    pub fn as_sealed_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(***)")
    }
}
