//! A bounded memo of name encryptions.
//!
//! The FUSE layer hands the filesystem plaintext paths, and every request turns each
//! component back into its backing name: a lookup, the create that follows it and the
//! getattr after that encrypt the same three or four names again. AES-SIV costs a CMAC key
//! setup and two passes per name; profiling `cp -r` of 10,000 files put it at ~5% of the
//! daemon's CPU. Name encryption is deterministic and context-free (the same name encrypts
//! the same way in every directory), so remembering recent results is exact.
//!
//! The memo holds plaintext names, which the inode table holds anyway; it never holds keys.
//! It is bounded by two generations of [`GENERATION`] entries: when the current one fills,
//! it becomes the previous one and the oldest is dropped, an approximation of LRU with no
//! per-entry bookkeeping. Hashing uses std's randomly keyed SipHash, so names chosen by
//! someone else cannot degrade it.

use super::names::BackingEntry;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::Mutex;

/// Entries per generation. At most twice this many are kept: about 0.8 MiB with typical
/// names, under 6 MiB if every name were 255 bytes long.
pub const GENERATION: usize = 4096;

#[derive(Default)]
pub struct NameCache {
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<OsString, BackingEntry>,
    previous: HashMap<OsString, BackingEntry>,
}

impl NameCache {
    /// The backing entry of `name`, computed by `encrypt` on a miss.
    pub fn get_or_insert(
        &self,
        name: &OsStr,
        encrypt: impl FnOnce() -> BackingEntry,
    ) -> BackingEntry {
        {
            let mut g = self.inner.lock().unwrap();
            if let Some(entry) = g.current.get(name) {
                return entry.clone();
            }
            if let Some(entry) = g.previous.remove(name) {
                g.insert(name, entry.clone());
                return entry;
            }
        }
        // Encrypt outside the lock: other workers' hits need not wait for it.
        let entry = encrypt();
        self.inner.lock().unwrap().insert(name, entry.clone());
        entry
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.inner.lock().unwrap();
        g.current.len() + g.previous.len()
    }
}

impl Generations {
    fn insert(&mut self, name: &OsStr, entry: BackingEntry) {
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(name.to_os_string(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn entry(s: &str) -> BackingEntry {
        BackingEntry::plain(s.into(), None)
    }

    #[test]
    fn encrypts_once_per_name_while_remembered() {
        let cache = NameCache::default();
        let calls = Cell::new(0);
        let enc = |s: &str| {
            calls.set(calls.get() + 1);
            entry(&format!("sealed-{s}"))
        };
        for _ in 0..3 {
            let got = cache.get_or_insert(OsStr::new("a"), || enc("a"));
            assert_eq!(got, entry("sealed-a"));
        }
        assert_eq!(calls.get(), 1);
        cache.get_or_insert(OsStr::new("b"), || enc("b"));
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn stays_bounded_and_keeps_recently_used_names() {
        let cache = NameCache::default();
        let hot = OsStr::new("hot");
        cache.get_or_insert(hot, || entry("hot-sealed"));
        for i in 0..10 * GENERATION {
            cache.get_or_insert(&OsString::from(format!("n{i}")), || entry("e"));
            // A name in use keeps being found across generation turnovers: the closure,
            // which would give a different answer, never runs for it.
            assert_eq!(
                cache.get_or_insert(hot, || entry("encrypted again")),
                entry("hot-sealed")
            );
            assert!(cache.len() <= 2 * GENERATION);
        }
        // A name not used for two generations is forgotten.
        let first = OsString::from("n0");
        assert_eq!(
            cache.get_or_insert(&first, || entry("again")),
            entry("again")
        );
    }
}
