//! A bounded, expiring cache of unwrapped DEKs, so that reopening or re-reading a file costs
//! no key-service call while its DEK is cached.
//!
//! Keyed by the file id and a hash of the wrapped slot: a header rewritten with a new DEK
//! misses, and a cached DEK is still checked against the header's commitment and MAC by the
//! caller. Entries are `Secret32`, wiped when evicted or expired.

use crate::crypto::Secret32;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
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
    entries: Mutex<HashMap<[u8; 32], (Secret32, Instant)>>,
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
        }
    }

    pub fn get(&self, file_id: &[u8; 16], wrapped: &[u8]) -> Option<Secret32> {
        if self.limits.max_entries == 0 {
            return None;
        }
        let key = cache_key(file_id, wrapped);
        let mut entries = self.entries.lock().unwrap();
        match entries.get(&key) {
            Some((dek, at)) if at.elapsed() < self.limits.ttl => Some(dek.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, file_id: &[u8; 16], wrapped: &[u8], dek: &Secret32) {
        if self.limits.max_entries == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= self.limits.max_entries {
            let ttl = self.limits.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            // Still full: drop the oldest tenth rather than one entry per insert.
            if entries.len() >= self.limits.max_entries {
                let mut ages: Vec<([u8; 32], Instant)> =
                    entries.iter().map(|(k, (_, at))| (*k, *at)).collect();
                ages.sort_by_key(|(_, at)| *at);
                for (k, _) in ages.iter().take((self.limits.max_entries / 10).max(1)) {
                    entries.remove(k);
                }
            }
        }
        entries.insert(cache_key(file_id, wrapped), (dek.clone(), Instant::now()));
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
}
