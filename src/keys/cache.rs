//! A bounded, expiring cache of unwrapped DEKs, so that reopening or re-reading a file costs
//! no key-service call while its DEK is cached.
//!
//! Keyed by the file id and a hash of the wrapped slot: a header rewritten with a new DEK
//! misses, and a cached DEK is still checked against the header's commitment and MAC by the
//! caller. Entries are `Secret32`, wiped when evicted or expired.
//!
//! An entry unwrapped ahead of need (fs/unwrap_ahead.rs) is marked until first used, so
//! `envfs status` can say how many of those key-service calls an open then saved.

use crate::crypto::Secret32;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 50_000,
            ttl: Duration::from_secs(300),
        }
    }
}

pub struct DekCache {
    limits: CacheLimits,
    /// DEK, when cached, and whether it was unwrapped ahead and not used yet.
    entries: Mutex<HashMap<[u8; 32], (Secret32, Instant, bool)>>,
    /// Entries unwrapped ahead that an open then used.
    ahead_used: AtomicU64,
    /// Files whose DEK is being unwrapped ahead right now: an open of one waits for that
    /// call rather than making a second one for the same key.
    claimed: Mutex<HashSet<[u8; 16]>>,
    released: Condvar,
}

/// A file's DEK being unwrapped ahead (`DekCache::claim`); released when dropped.
pub struct Claim<'a> {
    cache: &'a DekCache,
    file_id: [u8; 16],
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.cache.claimed.lock().unwrap().remove(&self.file_id);
        self.cache.released.notify_all();
    }
}

fn cache_key(file_id: &[u8; 16], wrapped: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(file_id);
    h.update(wrapped);
    h.finalize().into()
}

impl DekCache {
    pub fn new(limits: CacheLimits) -> DekCache {
        DekCache {
            limits,
            entries: Mutex::new(HashMap::new()),
            ahead_used: AtomicU64::new(0),
            claimed: Mutex::new(HashSet::new()),
            released: Condvar::new(),
        }
    }

    pub fn get(&self, file_id: &[u8; 16], wrapped: &[u8]) -> Option<Secret32> {
        if self.limits.max_entries == 0 {
            return None;
        }
        let key = cache_key(file_id, wrapped);
        let mut entries = self.entries.lock().unwrap();
        match entries.get_mut(&key) {
            Some((dek, at, ahead)) if at.elapsed() < self.limits.ttl => {
                if std::mem::take(ahead) {
                    self.ahead_used.fetch_add(1, Ordering::Relaxed);
                }
                Some(dek.clone())
            }
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, file_id: &[u8; 16], wrapped: &[u8], dek: &Secret32) {
        self.put(file_id, wrapped, dek, false);
    }

    /// Cache a DEK unwrapped before anything asked for it (counted once used).
    pub fn insert_ahead(&self, file_id: &[u8; 16], wrapped: &[u8], dek: &Secret32) {
        self.put(file_id, wrapped, dek, true);
    }

    /// Whether the DEK of this slot is cached (without counting a use).
    pub fn contains(&self, file_id: &[u8; 16], wrapped: &[u8]) -> bool {
        let key = cache_key(file_id, wrapped);
        let entries = self.entries.lock().unwrap();
        entries
            .get(&key)
            .is_some_and(|(_, at, _)| at.elapsed() < self.limits.ttl)
    }

    /// Claim the unwrapping of `file_id`'s DEK ahead of need: `None` if that is under way.
    pub fn claim(&self, file_id: &[u8; 16]) -> Option<Claim<'_>> {
        // The guard must be gone before a `Claim` exists: dropping one locks the set.
        let fresh = self.claimed.lock().unwrap().insert(*file_id);
        fresh.then(|| Claim {
            cache: self,
            file_id: *file_id,
        })
    }

    /// If `file_id`'s DEK is being unwrapped ahead, wait (at most `limit`) for that to end.
    pub fn wait_unclaimed(&self, file_id: &[u8; 16], limit: Duration) {
        let claimed = self.claimed.lock().unwrap();
        let _unused = self
            .released
            .wait_timeout_while(claimed, limit, |c| c.contains(file_id))
            .unwrap();
    }

    /// How many DEKs unwrapped ahead an open has used so far.
    pub fn ahead_used(&self) -> u64 {
        self.ahead_used.load(Ordering::Relaxed)
    }

    fn put(&self, file_id: &[u8; 16], wrapped: &[u8], dek: &Secret32, ahead: bool) {
        if self.limits.max_entries == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= self.limits.max_entries {
            let ttl = self.limits.ttl;
            entries.retain(|_, (_, at, _)| at.elapsed() < ttl);
            // Still full: drop the oldest tenth rather than one entry per insert.
            if entries.len() >= self.limits.max_entries {
                let mut ages: Vec<([u8; 32], Instant)> =
                    entries.iter().map(|(k, (_, at, _))| (*k, *at)).collect();
                ages.sort_by_key(|(_, at)| *at);
                for (k, _) in ages.iter().take((self.limits.max_entries / 10).max(1)) {
                    entries.remove(k);
                }
            }
        }
        entries.insert(
            cache_key(file_id, wrapped),
            (dek.clone(), Instant::now(), ahead),
        );
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let c = DekCache::new(CacheLimits {
            max_entries: 10,
            ttl: Duration::from_millis(50),
        });
        let dek = Secret32::from_bytes([1; 32]);
        for i in 0..25u8 {
            c.insert(&[i; 16], b"w", &dek);
            assert!(c.len() <= 10);
        }
        assert_eq!(c.get(&[24; 16], b"w"), Some(dek.clone()));
        assert_eq!(c.get(&[24; 16], b"other"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&[24; 16], b"w"), None);
        let off = DekCache::new(CacheLimits {
            max_entries: 0,
            ttl: Duration::from_secs(1),
        });
        off.insert(&[0; 16], b"w", &dek);
        assert_eq!(off.get(&[0; 16], b"w"), None);
    }

    #[test]
    fn an_entry_unwrapped_ahead_counts_once_when_first_used() {
        let c = DekCache::new(CacheLimits::default());
        let dek = Secret32::from_bytes([2; 32]);
        c.insert_ahead(&[1; 16], b"w", &dek);
        c.insert(&[2; 16], b"w", &dek);
        assert!(c.contains(&[1; 16], b"w"));
        assert_eq!(c.ahead_used(), 0, "contains is not a use");
        assert_eq!(c.get(&[1; 16], b"w"), Some(dek.clone()));
        assert_eq!(c.get(&[1; 16], b"w"), Some(dek.clone()));
        assert_eq!(c.get(&[2; 16], b"w"), Some(dek));
        assert_eq!(c.ahead_used(), 1);
    }

    #[test]
    fn one_claim_per_file_and_waiters_wake_when_it_ends() {
        let c = std::sync::Arc::new(DekCache::new(CacheLimits::default()));
        let claim = c.claim(&[1; 16]).expect("free");
        assert!(c.claim(&[1; 16]).is_none(), "claimed twice");
        assert!(c.claim(&[2; 16]).is_some(), "another file is free");
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_unclaimed(&[1; 16], Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "did not wait for the claim");
        drop(claim);
        waiter.join().unwrap();
        assert!(c.claim(&[1; 16]).is_some(), "released");
    }
}
