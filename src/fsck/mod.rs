//! `envfs fsck`: check a whole vault without mounting it.
//!
//! The walk covers every entry of the backing directory (symlinks are never followed, on
//! the way or in place: every entry is reached through its directory's descriptor):
//! every name is decrypted (long names through their sidecars), every symlink target is
//! decrypted, and for every regular file the length is checked against the size arithmetic,
//! the header is parsed, unwrapped and authenticated, and then every chunk is authenticated.
//! Each problem becomes a [`Finding`] with its kind, the backing path, the plaintext path when
//! the names leading to it decrypt, and the chunk index where one is meant.
//!
//! Nothing here logs: plaintext names appear only in the report, which the caller prints to
//! the user. Findings never carry key material or file contents.
//!
//! `repair_names` removes only what cannot hold user data: long-name sidecars whose entry is
//! gone, and envfs' own leftover temporary files (`.envfs-*`). Nothing else is ever changed.
//!
//! `walk` does the walking and judging, `report` holds the findings and prints them; this
//! module starts the walk and does the repairs.

mod report;
mod walk;

pub use report::{Finding, FindingKind, Progress, Report, Stats};
pub use walk::BATCH_CHUNKS;

use crate::backing::BackingRoot;
use crate::error::{Error, Result};
use crate::vault::Vault;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;

#[derive(Debug, Clone)]
pub struct Options {
    /// Remove orphaned sidecars and leftover temporary files.
    pub repair_names: bool,
    /// Worker threads.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Options {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Options {
            repair_names: false,
            workers: cores.clamp(4, 8),
        }
    }
}

/// Check the whole vault. Fails only when the walk cannot start (the root cannot be
/// listed); everything found below the root is a finding.
pub fn check(vault: &Vault, opts: &Options, progress: &Progress) -> Result<Report> {
    // An unlistable root is an operational error, not a finding.
    let cannot_list = |e: io::Error| {
        Error::Io(io::Error::new(
            e.kind(),
            format!("cannot list {}: {e}", vault.root().display()),
        ))
    };
    let backing = BackingRoot::open(vault.root()).map_err(cannot_list)?;
    let root = backing.root().map_err(cannot_list)?;
    root.entries().map_err(cannot_list)?;
    let mut findings = walk::walk(vault, root, opts.workers, progress);
    findings.sort_by(|a, b| {
        (&a.backing_path, a.chunk, a.kind).cmp(&(&b.backing_path, b.chunk, b.kind))
    });
    if opts.repair_names {
        for f in findings.iter_mut().filter(|f| f.kind.repairable()) {
            repair(&backing, f);
        }
    }
    let stats = progress.snapshot();
    Ok(Report { findings, stats })
}

/// Remove a repairable entry, re-checking first that it is still what the walk saw, all
/// relative to its directory's descriptor.
fn repair(backing: &BackingRoot, f: &mut Finding) {
    let Ok(rel) = f.backing_path.strip_prefix(backing.path()) else {
        return;
    };
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return;
    };
    let Ok(dir) = backing.dir(parent) else {
        return;
    };
    match dir.stat(name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
        _ => return,
    }
    // A rewrap journal may hold the only good copy of a header: `envfs rewrap` finishes it.
    if name.as_bytes().starts_with(b".envfs-rewrap-") {
        f.detail
            .push_str(" (a pending rewrap journal: run envfs rewrap to finish it; not removed)");
        return;
    }
    if f.kind == FindingKind::OrphanedSidecar {
        // The entry may have been created since the walk (a mount at work): keep it then.
        let bytes = name.as_bytes();
        let entry = OsStr::from_bytes(&bytes[..bytes.len() - ".name".len()]);
        if dir.stat(entry).is_ok() {
            return;
        }
    }
    match dir.unlink(name) {
        Ok(()) => f.repaired = true,
        Err(e) => {
            let _ = write!(f.detail, " (could not remove it: {e})");
        }
    }
}
