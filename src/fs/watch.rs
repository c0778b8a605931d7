//! What a change the backing store reports means for the mount.
//!
//! src/backing/watch.rs hands over raw events: a watched directory and a backing name.
//! Here they become what the FUSE adapter needs in order to invalidate the kernel's caches
//! (src/fuse/watch.rs): the plaintext names in the directory the change may have altered,
//! judged by the same `names::judge` as listings (a sync client's conflict copy is shown
//! under its own name, a long name's sidecar stands for its entry), the backing inode now
//! at that name, and whether a change of contents or attributes is only this mount's own
//! last write, chmod, chown or utimes.
//!
//! That last question is answered by comparing, not by guessing: the backing entry's
//! length and times (the change time included) are those this mount's last change left
//! (`OpenFiles::left_by_us`) exactly when nobody else has changed it since. Anything else counts as someone else's,
//! so a mistake costs an invalidation, never a stale answer.

use super::names::{self, Judged};
use super::{Fs, is_root};
use crate::backing::sys::Known;
use crate::backing::watch::{Event, EventKind, Inotify, WatchId};
use crate::error::{Error, Result};
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// What one backing event changed, in the mount's terms.
#[derive(Debug, Default)]
pub struct Change {
    /// Plaintext names in the directory that may now stand for something else.
    pub names: Vec<OsString>,
    /// Backing (device, inode) of the entry at the event's name now, if there is one.
    pub now: Option<(u64, u64)>,
    /// For a change of contents or attributes: what the entry shows is exactly what this
    /// mount's own last write or attribute change left (`OpenFiles::left_by_us`).
    pub ours: bool,
    /// The entry's plaintext name cannot be read (a long name whose sidecar is gone, say):
    /// any name in the directory may be what changed.
    pub unreadable: bool,
}

impl Fs {
    /// Start watching the backing store: from now on `watch_dir` may be called. Fails with
    /// the reason (inotify unavailable, or the per-user instance limit reached).
    pub fn start_watching(&self) -> Result<()> {
        if self.watcher.get().is_none() {
            let inotify = Inotify::new()?;
            let _ = self.watcher.set(inotify);
        }
        self.open.remember_recent_writes();
        Ok(())
    }

    fn inotify(&self) -> Result<&Inotify> {
        self.watcher
            .get()
            .ok_or_else(|| Error::Invalid("the backing store is not being watched".into()))
    }

    /// Watch plaintext directory `path`'s backing directory for changes. `ENOSPC`: the
    /// kernel's per-user watch limit is reached.
    pub fn watch_dir(&self, path: &Path) -> Result<WatchId> {
        let dir = self.dir_of(path)?;
        Ok(self.inotify()?.add(&dir)?)
    }

    /// Stop watching (a directory the kernel forgot).
    pub fn unwatch(&self, watch: WatchId) {
        if let Ok(inotify) = self.inotify() {
            inotify.remove(watch);
        }
    }

    /// Wait up to `timeout` for the backing store's next events (`Inotify::wait`).
    pub fn wait_for_changes(&self, timeout: Duration, settle: Duration) -> Result<Vec<Event>> {
        Ok(self.inotify()?.wait(timeout, settle)?)
    }

    /// What `event`, reported for the backing directory of plaintext directory `dir_path`,
    /// changed.
    pub fn judge_change(&self, dir_path: &Path, event: &Event) -> Result<Change> {
        let dir = self.dir_of(dir_path)?;
        let at_root = is_root(dir_path);
        if event.is_dir {
            // Descriptors of a directory moved or removed behind our back must not be
            // reused for its old path.
            self.backing_root()?.forget(&dir.rel().join(&event.name));
        }
        let mut change = Change::default();
        match names::judge(&self.vault, &dir, &event.name, at_root) {
            Judged::Named(plain) => change.names.push(plain),
            Judged::Copy(copy) => {
                self.copy_misses.forget(dir.rel(), &copy.shown);
                change.names.push(copy.shown);
            }
            // A sidecar holds its entry's long name: the entry's name is what changed.
            Judged::Sidecar(owner) => match names::judge(&self.vault, &dir, &owner, at_root) {
                Judged::Named(plain) => change.names.push(plain),
                Judged::Copy(copy) => change.names.push(copy.shown),
                _ => {
                    change.unreadable = true;
                    return Ok(change);
                }
            },
            Judged::Damaged(_) => {
                change.unreadable = true;
                return Ok(change);
            }
            // Nothing the mount shows.
            Judged::Config | Judged::Reserved | Judged::ClientFile(_) | Judged::Foreign(_) => {
                return Ok(change);
            }
        }
        // Also for a name that went away: another entry may have taken it since.
        let st = match dir.stat(&event.name) {
            Ok(st) => st,
            // Gone again since: the names are what changed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(change),
            Err(e) => return Err(e.into()),
        };
        let id = (st.st_dev, st.st_ino);
        change.now = Some(id);
        if matches!(event.kind, EventKind::Modified | EventKind::Attrib) {
            change.ours = self.open.left_by_us(id, Known::of_stat(&st));
        }
        Ok(change)
    }
}
