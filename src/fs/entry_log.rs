//! What listings leave out or add, said once per entry per mount. A backing entry that is
//! not an envfs name is hidden, but a user who finds a file missing must be able to learn
//! where it went: each one is logged once with its backing path (never a plaintext name)
//! and counted for `envfs status`. Sync clients' conflict copies are shown, and logged
//! once too, so the daemon's log says when two hosts' edits met. Bounded: past
//! [`EntryLog::MAX`] remembered entries, one line says that further ones go unlogged.

use crate::format::sync_names::{Client, CopyKind};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default)]
pub struct EntryLog {
    foreign: Mutex<Seen>,
    copies: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    paths: HashSet<PathBuf>,
    full: bool,
}

impl Seen {
    /// Whether `path` is new (and so to be logged); `false` once the set is full.
    fn first(&mut self, path: &Path, what: &str) -> bool {
        if self.paths.contains(path) {
            return false;
        }
        if self.paths.len() >= EntryLog::MAX {
            if !self.full {
                self.full = true;
                tracing::warn!(
                    "more than {} {what}: further ones are not logged",
                    EntryLog::MAX
                );
            }
            return false;
        }
        self.paths.insert(path.to_path_buf())
    }
}

/// How many entries of each kind a mount has met (`envfs status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// Backing entries hidden because they are not envfs names (sync clients' own files
    /// and envfs' own files are not counted).
    pub foreign_hidden: usize,
    /// Sync clients' copies (conflicts, kept versions) shown in listings.
    pub copies_shown: usize,
}

impl EntryLog {
    pub const MAX: usize = 100_000;

    /// A backing entry at `backing_path` left out of a listing: not written by envfs.
    pub fn foreign(&self, backing_path: &Path, why: &str) {
        if self.first_hidden(backing_path) {
            tracing::warn!(
                backing_path = %backing_path.display(),
                "hidden from the mount: not written by envfs ({why}); `envfs fsck` lists such entries"
            );
        }
    }

    /// A sync client's copy shown in a listing; `original` is the backing path of the entry
    /// it is a copy of.
    pub fn copy_shown(&self, backing_path: &Path, original: &Path, client: Client, kind: CopyKind) {
        if self
            .copies
            .lock()
            .unwrap()
            .first(backing_path, "conflict copies")
        {
            let what = match kind {
                CopyKind::Conflict => "conflict copy",
                CopyKind::Version => "kept version",
            };
            // A warning, not information: two hosts' edits met, and one of them waits
            // for a person to decide.
            tracing::warn!(
                backing_path = %backing_path.display(),
                original = %original.display(),
                "{} {what} shown; `envfs conflicts` lists and resolves them",
                client.label()
            );
        }
    }

    /// A copy whose shown name is taken by another entry of its directory: left out of the
    /// listing (`envfs conflicts` and fsck still list it).
    pub fn copy_shadowed(&self, backing_path: &Path) {
        if self.first_hidden(backing_path) {
            tracing::warn!(
                backing_path = %backing_path.display(),
                "conflict copy hidden: another entry has the name it would be shown under; \
                 `envfs conflicts` lists it"
            );
        }
    }

    /// Whether the hidden entry at `backing_path` is met for the first time.
    fn first_hidden(&self, backing_path: &Path) -> bool {
        self.foreign
            .lock()
            .unwrap()
            .first(backing_path, "hidden entries")
    }

    pub fn counts(&self) -> EntryCounts {
        EntryCounts {
            foreign_hidden: self.foreign.lock().unwrap().paths.len(),
            copies_shown: self.copies.lock().unwrap().paths.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_is_counted_once() {
        let log = EntryLog::default();
        for _ in 0..3 {
            log.foreign(Path::new("/b/x"), "test");
            log.copy_shown(
                Path::new("/b/y (1)"),
                Path::new("/b/y"),
                Client::Numbered,
                CopyKind::Conflict,
            );
        }
        log.foreign(Path::new("/b/z"), "test");
        assert_eq!(
            log.counts(),
            EntryCounts {
                foreign_hidden: 2,
                copies_shown: 1
            }
        );
    }
}
