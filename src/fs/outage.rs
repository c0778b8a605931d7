//! The backing store going away and coming back (a NAS share that drops, an sshfs whose
//! connection died), told apart from "no such file".
//!
//! When an operation fails with a transport error (`ENOTCONN`, `ESTALE`, `ETIMEDOUT`, …)
//! and the backing root itself no longer answers, the store is *down*: one error line is
//! logged with the backing path, and every request fails with `EIO` at once, without
//! touching the store, so that no program mistakes the outage for missing files (an sshfs
//! that vanished used to make every name `ENOENT`). At most once a second a request tries
//! to open the backing directory again by its path; if it holds this vault again (same
//! vault id), the new root replaces the old one, every cached descriptor is dropped, and
//! one line says the store is back. Files opened before the outage keep failing with `EIO`
//! until they are opened again: their descriptors belong to the store that went away.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a request may try to reach a store that is down.
const RETRY: Duration = Duration::from_secs(1);

/// Errors that may mean the store (not one file) is unreachable: the transport errors, and
/// `ESTALE` (an NFS server that lost its handles). Which it is, the root's own `fstat`
/// decides.
pub fn is_transport(errno: i32) -> bool {
    crate::error::is_transport_errno(errno) || errno == libc::ESTALE
}

#[derive(Default)]
pub struct Outage {
    down: AtomicBool,
    last_try: Mutex<Option<Instant>>,
}

impl Outage {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Mark the store down; `true` if it was up (the caller logs the change).
    pub fn went_down(&self) -> bool {
        *self.last_try.lock().unwrap() = Some(Instant::now());
        !self.down.swap(true, Ordering::AcqRel)
    }

    /// Whether a request may try to reach the store now (at most once per [`RETRY`]).
    pub fn may_retry(&self) -> bool {
        let mut last = self.last_try.lock().unwrap();
        match *last {
            Some(at) if at.elapsed() < RETRY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// Mark the store up; `true` if it was down.
    pub fn came_back(&self) -> bool {
        self.down.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_reported_once_and_retries_are_spaced() {
        let o = Outage::default();
        assert!(!o.is_down());
        assert!(o.went_down());
        assert!(!o.went_down(), "already down");
        assert!(!o.may_retry(), "just failed");
        assert!(o.came_back());
        assert!(!o.came_back());
        assert!(is_transport(libc::ENOTCONN) && !is_transport(libc::ENOENT));
    }
}
