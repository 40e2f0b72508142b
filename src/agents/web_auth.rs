//! Exporter web-config hashes. Newer pmm-agents protect an exporter's /metrics with a
//! web-config file holding the bcrypt hash of its password, and PMM's hash is deterministic
//! (the salt is the end of the agent id) so the file, and the process, stay the same between
//! states. One hash costs tens of milliseconds at PMM's cost: it is computed once per agent
//! password, here, off the streams' threads, and recorded in the state as a report
//! ([`WebAuthHash`]), sealed. Every node then renders the same file from the state; a stream
//! whose exporter has no hash yet asks for one and waits (the recorded hash wakes it).

use super::reports::Batcher;
use crate::commands::agent_reports::WebAuthHash;
use crate::crypto::Cipher;
use crate::domain::{AgentId, Sealed};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, mpsc};

/// PMM's cost (Go's `bcrypt.DefaultCost`).
pub const DEFAULT_COST: u32 = 10;

/// Hashes remembered for a resend at most (then forgotten: a resend recomputes).
const REMEMBERED: usize = 100_000;

/// bcrypt of `password` with PMM's salt for `agent_id`: its last 16 bytes, or a fixed one
/// for shorter ids. The `$2a$` form, as Go's bcrypt writes it.
pub fn hash(agent_id: &str, password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    let id = agent_id.as_bytes();
    let salt: [u8; 16] = id
        .len()
        .checked_sub(16)
        .and_then(|start| id[start..].try_into().ok())
        .unwrap_or(*b"pmm-salt-magic--");
    Ok(bcrypt::hash_with_salt(password, cost, salt)?.format_for_version(bcrypt::Version::TwoA))
}

/// Which hash: the agent and the agent password as stored (`None`: its id).
type Key = (AgentId, Option<Sealed>);

#[derive(Default)]
struct Book {
    /// Queued or being computed.
    pending: HashSet<Key>,
    /// Computed and sent.
    done: HashMap<Key, Sealed>,
}

/// The hasher of one node. Cheap to clone; its threads end with the last clone.
#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Key>,
    book: Arc<Mutex<Book>>,
    batcher: Batcher,
}

impl Hasher {
    /// Starts one thread per core, at low priority, hashing at `cost`.
    pub fn start(cipher: Arc<Cipher>, batcher: Batcher, cost: u32) -> Self {
        let (tx, rx) = mpsc::channel::<Key>();
        let rx = Arc::new(Mutex::new(rx));
        let book = Arc::new(Mutex::new(Book::default()));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..threads {
            let (rx, book, cipher, batcher) =
                (rx.clone(), book.clone(), cipher.clone(), batcher.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("pmm-cp-hash-{i}"))
                .spawn(move || {
                    crate::files::lower_priority();
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = super::lock(&rx).recv();
                        let Ok(key) = job else { return };
                        work(&cipher, &batcher, &book, key, cost);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self {
            jobs: tx,
            book,
            batcher,
        }
    }

    /// Asks for the hash of `agent_id`'s exporter for the agent password `for_password` (as
    /// stored). Computed once; asked again, a computed hash is sent again (its first report
    /// may have been lost to a leader change).
    pub fn request(&self, agent_id: &AgentId, for_password: &Option<Sealed>) {
        let key = (agent_id.clone(), for_password.clone());
        let mut book = super::lock(&self.book);
        if let Some(hash) = book.done.get(&key) {
            self.batcher.web_auth(WebAuthHash {
                agent_id: key.0,
                for_password: key.1,
                hash: hash.clone(),
            });
        } else if book.pending.insert(key.clone()) {
            let _ = self.jobs.send(key);
        }
    }
}

fn work(cipher: &Cipher, batcher: &Batcher, book: &Mutex<Book>, key: Key, cost: u32) {
    let password = match &key.1 {
        None => Ok(key.0.to_string()),
        Some(sealed) => cipher.open(sealed).map_err(|e| e.to_string()),
    };
    let hashed = password.and_then(|p| hash(key.0.as_str(), &p, cost).map_err(|e| e.to_string()));
    let mut book = super::lock(book);
    book.pending.remove(&key);
    match hashed {
        Ok(h) => {
            let sealed = cipher.seal(&h);
            if book.done.len() >= REMEMBERED {
                book.done.clear();
            }
            book.done.insert(key.clone(), sealed.clone());
            batcher.web_auth(WebAuthHash {
                agent_id: key.0,
                for_password: key.1,
                hash: sealed,
            });
        }
        // The stream keeps waiting; asking again retries.
        Err(e) => {
            tracing::warn!(agent_id = %key.0, error = %e, "an exporter's web-config hash could not be computed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pmms_deterministic_bcrypt() {
        // Computed independently (Python's bcrypt, salt = the id's last 16 bytes).
        let id = "1b5e0c3a-7f2d-4e8b-9a61-3c0d2f4e5a6b";
        let h = hash(id, "s3cret", 4).unwrap();
        assert_eq!(h, EXPECTED_LONG_ID);
        assert!(bcrypt::verify("s3cret", &h).unwrap());
        assert!(!bcrypt::verify("s3cret!", &h).unwrap());
        // An id shorter than a salt uses PMM's fixed one.
        assert_eq!(hash("short", "short", 4).unwrap(), EXPECTED_SHORT_ID);
        // PMM's cost by default.
        assert!(hash(id, "x", DEFAULT_COST).unwrap().starts_with("$2a$10$"));
    }

    const EXPECTED_LONG_ID: &str = "$2a$04$WRWvJRLhKEOwXhPjLUC0WeFkw6VDdYg2wJ.U9Ay6cOl4gT4A.1z.S";
    const EXPECTED_SHORT_ID: &str = "$2a$04$aEzrJVLfZFOrZUDlYUKrJOg4rvEfKaWLhJhE6FDNwubAZcg1h68KK";
}
