//! The cluster key and the AES-256-GCM cipher that seals secrets before they become events
//! (DESIGN.md fixed decision 9). The key lives in a file in the data directory, created with
//! mode 0600 on first start, or is given by a flag; every node of a cluster must use the same key.

use crate::domain::secret::{SEALED_PREFIX, Sealed};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::Path;
use std::sync::Arc;

const NONCE_LEN: usize = 12;

/// Why a key could not be loaded or a value opened. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cluster key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster key file {path} must hold 64 hex characters (a 256-bit key)")]
    BadKey { path: String },
    #[error("a sealed value could not be opened: wrong cluster key or damaged value")]
    Open,
}

/// Seals and opens secrets with the cluster key. Cheap to clone.
#[derive(Clone)]
pub struct Cipher {
    aead: Arc<Aes256Gcm>,
    /// The internal service's credential, derived from the key (not the key itself).
    internal_auth: Arc<str>,
    /// The key agent tokens are derived with (itself derived from the cluster key).
    agent_token_key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    /// A cipher from raw key bytes.
    pub fn from_key(key: &[u8; 32]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"pmm-cp internal service v1\0");
        h.update(key);
        let mut t = Sha256::new();
        t.update(b"pmm-cp agent tokens v1\0");
        t.update(key);
        Self {
            aead: Arc::new(Aes256Gcm::new(key.into())),
            internal_auth: Arc::from(hex::encode(h.finalize())),
            agent_token_key: Arc::new(t.finalize().into()),
        }
    }

    /// A pmm-agent's token for the RegisterNode call with this command id from this actor:
    /// HMAC-SHA256 of both under a key derived from the cluster key. Every node makes the same
    /// token for the same call, so the caller's resend with the same command id answers the
    /// token that was recorded; another caller reusing the id gets a different one (which the
    /// API then does not answer).
    pub fn agent_token_secret(&self, command_id: &str, actor: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.agent_token_key[..])
            .expect("HMAC takes a key of any length");
        mac.update(b"pmm-agent token\0");
        mac.update(command_id.as_bytes());
        mac.update(b"\0");
        mac.update(actor.as_bytes());
        let bytes = mac.finalize().into_bytes();
        format!(
            "pmmcp_agent_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// What nodes of this cluster (and its CLI) present to each other's internal service: a
    /// one-way derivation of the cluster key, so it proves the key without revealing it.
    pub fn internal_auth(&self) -> &str {
        &self.internal_auth
    }

    /// A cipher with a fresh random key (tests, benchmarks).
    pub fn random() -> Self {
        Self::from_key(&rand::random())
    }

    /// Loads the key from `path`, creating it (mode 0600) with a random key if it is missing.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(hex::encode(key).as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let text = std::fs::read_to_string(path).map_err(|source| CryptoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, CryptoError> {
        let bad = || CryptoError::BadKey {
            path: path.display().to_string(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self::from_key(&key))
    }

    /// Encrypts a secret with a fresh random nonce.
    pub fn seal(&self, plain: &str) -> Sealed {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut buf = Vec::with_capacity(NONCE_LEN + ct.len());
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&ct);
        Sealed::from_sealed(format!("{SEALED_PREFIX}{}", B64.encode(buf)))
            .expect("the value carries the sealed prefix")
    }

    /// Decrypts a sealed secret. Only the projections that hand secrets to a pmm-agent call this.
    pub fn open(&self, sealed: &Sealed) -> Result<String, CryptoError> {
        let b64 = sealed
            .as_sealed_str()
            .strip_prefix(SEALED_PREFIX)
            .ok_or(CryptoError::Open)?;
        let buf = B64.decode(b64).map_err(|_| CryptoError::Open)?;
        if buf.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = buf.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plain_text() {
        let c = Cipher::random();
        let s = c.seal("hunter2");
        assert!(!s.as_sealed_str().contains("hunter2"));
        assert_eq!(c.open(&s).expect("opens"), "hunter2");
        assert_ne!(c.seal("hunter2"), s, "fresh nonce each time");
        assert!(
            Cipher::random().open(&s).is_err(),
            "another key cannot open it"
        );
    }
}
