//! Names known not to stand for a sync client's copy, remembered for a short while.
//!
//! A plaintext name that carries a marker (`my-notes.txt` reads as OneDrive's `-notes`
//! copy of `my.txt`) costs a backing stat per candidate spelling each time it is resolved
//! (`NameMap::resolve`). A create asks three times in a row (the lookup, the create, the
//! getattr after it), and `untar` of hyphenated names paid five extra stats a file. Once a
//! name is found to be no copy, that answer is kept for the mount's entry timeout: a copy
//! that a sync client makes under that very name is then found by a lookup no later than
//! the kernel would notice a new entry (SEMANTICS.md §5), and at once by a listing, which
//! forgets the miss. A TTL of 0 (the default, and every command but `mount`) keeps nothing.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many misses are kept; when full, all are dropped.
const MAX: usize = 4096;

#[derive(Default)]
pub struct CopyMisses {
    ttl: Mutex<Duration>,
    seen: Mutex<HashMap<(PathBuf, OsString), Instant>>,
}

impl CopyMisses {
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap() = ttl;
        self.seen.lock().unwrap().clear();
    }

    /// Whether `name` in backing directory `dir` (relative to the root) was found to be no
    /// copy within the TTL.
    pub fn known(&self, dir: &Path, name: &OsStr) -> bool {
        let ttl = *self.ttl.lock().unwrap();
        if ttl.is_zero() {
            return false;
        }
        let key = (dir.to_path_buf(), name.to_os_string());
        let mut seen = self.seen.lock().unwrap();
        match seen.get(&key) {
            Some(at) if at.elapsed() < ttl => true,
            Some(_) => {
                seen.remove(&key);
                false
            }
            None => false,
        }
    }

    pub fn remember(&self, dir: &Path, name: &OsStr) {
        if self.ttl.lock().unwrap().is_zero() {
            return;
        }
        let mut seen = self.seen.lock().unwrap();
        if seen.len() >= MAX {
            seen.clear();
        }
        seen.insert((dir.to_path_buf(), name.to_os_string()), Instant::now());
    }

    /// A listing of `dir` shows a copy under `name`.
    pub fn forget(&self, dir: &Path, name: &OsStr) {
        self.seen
            .lock()
            .unwrap()
            .remove(&(dir.to_path_buf(), name.to_os_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_last_for_the_ttl_and_a_listing_forgets_them() {
        let m = CopyMisses::default();
        let (d, n) = (Path::new("d"), OsStr::new("a-b.txt"));
        m.remember(d, n);
        assert!(!m.known(d, n), "no TTL, nothing kept");
        m.set_ttl(Duration::from_secs(60));
        m.remember(d, n);
        assert!(m.known(d, n));
        assert!(!m.known(Path::new("other"), n));
        m.forget(d, n);
        assert!(!m.known(d, n));
        m.set_ttl(Duration::from_nanos(1));
        m.remember(d, n);
        std::thread::sleep(Duration::from_millis(1));
        assert!(!m.known(d, n), "expired");
    }
}
