//! Exporter web-config hashes. Newer pmm-agents protect an exporter's /metrics with a
//! web-config file holding the bcrypt hash of its password, and PMM's hash is deterministic
//! (the salt is the end of the agent id) so the file, and the process, stay the same between
//! states. One hash costs tens of milliseconds at PMM's cost: it is computed once per agent
//! password, here, off the streams' threads, and recorded in the state as a report
//! ([`WebAuthHash`]), sealed. Every node then renders the same file from the state; a stream
//! whose exporter has no hash yet asks for one and waits (the recorded hash wakes it).

use super::reports::Batcher;
use crate::commands::agent_reports::WebAuthHash;
use crate::commands::dispatcher::Dispatcher;
use crate::crypto::Cipher;
use crate::domain::{AgentId, Sealed};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// PMM's cost (Go's `bcrypt.DefaultCost`).
pub const DEFAULT_COST: u32 = 10;

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

/// Hashes remembered for a resend at most (then forgotten: a resend recomputes).
const REMEMBERED: usize = 4096;
/// Hashing threads at most; they start with the first job and end after a while idle.
const MAX_THREADS: usize = 4;
const IDLE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Book {
    /// Waiting for a thread, first come first served.
    queue: VecDeque<Key>,
    /// Queued or being computed.
    pending: HashSet<Key>,
    /// Computed and sent.
    done: HashMap<Key, WebAuthHash>,
    threads: usize,
    /// The node stops: nothing more is hashed, and idle threads end at once.
    stopped: bool,
}

struct Shared {
    dispatcher: Dispatcher,
    cipher: Arc<Cipher>,
    batcher: Batcher,
    cost: u32,
    /// Threads at most: the cores, up to [`MAX_THREADS`].
    max_threads: usize,
    /// One lock, never held while hashing: a stream asking for a hash waits for no hash.
    book: Mutex<Book>,
    queued: Condvar,
}

/// The hasher of one node. Cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    shared: Arc<Shared>,
}

impl Hasher {
    /// A hasher at `cost`; its threads start with the first job.
    pub fn new(dispatcher: Dispatcher, cipher: Arc<Cipher>, batcher: Batcher, cost: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                dispatcher,
                cipher,
                batcher,
                cost,
                max_threads: std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(MAX_THREADS),
                book: Mutex::default(),
                queued: Condvar::new(),
            }),
        }
    }

    /// Ends the threads (one hashing finishes its hash first), which hold the node's
    /// dispatcher: a stopping node waits for every holder to let go of it.
    pub fn stop(&self) {
        let sh = &self.shared;
        let mut book = super::lock(&sh.book);
        book.stopped = true;
        book.queue.clear();
        sh.queued.notify_all();
    }

    /// Asks for the hash of `agent_id`'s exporter for the agent password `for_password` (as
    /// stored). Computed once; asked again, a computed hash is sent again (its first report
    /// may have been lost to a leader change).
    pub fn request(&self, agent_id: &AgentId, for_password: &Option<Sealed>) {
        let key = (agent_id.clone(), for_password.clone());
        let sh = &self.shared;
        let mut book = super::lock(&sh.book);
        if book.stopped {
            return;
        }
        if let Some(done) = book.done.get(&key) {
            sh.batcher.web_auth(done.clone());
            return;
        }
        if !book.pending.insert(key.clone()) {
            return;
        }
        book.queue.push_back(key);
        sh.queued.notify_one();
        if book.threads < sh.max_threads {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("pmm-cp-hash".to_owned())
                .spawn(move || worker(&shared));
            match spawned {
                Ok(_) => book.threads += 1,
                Err(e) => tracing::error!(error = %e, "could not start a password hashing thread"),
            }
        }
    }
}

fn worker(sh: &Shared) {
    crate::files::lower_priority();
    loop {
        let key = {
            let book = super::lock(&sh.book);
            let (mut book, _) = sh
                .queued
                .wait_timeout_while(book, IDLE, |b| b.queue.is_empty() && !b.stopped)
                .unwrap_or_else(|p| p.into_inner());
            match book.queue.pop_front() {
                Some(key) if !book.stopped => key,
                // Idle: the queue is empty under the lock jobs are queued with, so none is
                // left without a thread (a request after this starts one).
                _ => {
                    book.threads -= 1;
                    return;
                }
            }
        };
        // Forgotten as pending however the work ends: asked again, it is queued again.
        let pending = Pending { sh, key };
        if let Some(done) = work(sh, &pending.key) {
            let mut book = super::lock(&sh.book);
            if book.done.len() >= REMEMBERED {
                book.done.clear();
            }
            book.done.insert(pending.key.clone(), done.clone());
            sh.batcher.web_auth(done);
        }
    }
}

struct Pending<'a> {
    sh: &'a Shared,
    key: Key,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        super::lock(&self.sh.book).pending.remove(&self.key);
    }
}

/// The hash to record, unless it is no longer wanted: the agent gone, its password changed,
/// or a hash recorded meanwhile (by another node). A recorded hash that does not open with
/// this node's key is replaced.
fn work(sh: &Shared, (agent_id, for_password): &Key) -> Option<WebAuthHash> {
    let state = sh.dispatcher.state();
    let agent = state.agents.get(agent_id)?;
    if agent.agent_password != *for_password {
        return None;
    }
    let replaces = match agent.web_auth_hash() {
        Some(h) if sh.cipher.open(h).is_ok() => return None,
        recorded => recorded.cloned(),
    };
    drop(state);
    let password = super::desired::basic_auth_password(&sh.cipher, agent_id, for_password);
    match hash(agent_id.as_str(), &password, sh.cost) {
        Ok(h) => Some(WebAuthHash {
            agent_id: agent_id.clone(),
            for_password: for_password.clone(),
            hash: sh.cipher.seal(&h),
            replaces,
        }),
        Err(e) => {
            tracing::warn!(agent_id = %agent_id, error = %e, "an exporter's web-config hash could not be computed");
            None
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
