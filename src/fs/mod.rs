//! The filesystem core: every POSIX operation the mount offers, on mount-relative plaintext
//! paths, over the backing directory. It knows nothing of FUSE, so it is tested directly
//! (property tests against an in-memory model, the tamper matrix) and reused by `envfs cat`.
//!
//! Paths given to `Fs` are relative to the mount root ("" is the root) and plaintext; the
//! backing paths they map to are computed by `NameMap`.

pub mod attr;
pub mod conflicts;
mod copy_misses;
pub mod entry_log;
pub mod file;
mod name_cache;
pub mod names;
mod outage;
pub mod rewrap;
pub mod unwrap_ahead;
pub mod watch;

pub use crate::backing::probe::Capabilities;
pub use crate::backing::sys::TimeSet;
use crate::backing::sys::{self, XattrOf};
use crate::backing::{BackingRoot, Dir, Stat};
use crate::crypto::siv::domain;
use crate::error::{Error, IntegrityKind, Result};
use crate::format::FileHeader;
use crate::vault::Vault;
use attr::SizeMap;
pub use attr::{Attr, FileKind};
use entry_log::{EntryCounts, EntryLog};
use file::{Engine, IntegrityLog, OpenFile, OpenFiles};
use name_cache::NameCache;
use names::{BackingEntry, Judged, NameMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open file as a caller holds it. Dropping it closes it.
pub struct Handle {
    file: Arc<OpenFile>,
    append: bool,
}

impl Handle {
    /// Backing (device, inode) of the open file.
    pub fn backing_id(&self) -> (u64, u64) {
        self.file.backing_id()
    }
}

/// One directory entry as `readdir` returns it (no stat: kind and inode come from the
/// backing directory entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
}

/// Attribute changes for `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// Drop setuid (and setgid with group-execute) unless `mode` is set: the kernel left
    /// that to us (FUSE_HANDLE_KILLPRIV_V2) for a truncate or a write by an unprivileged
    /// caller.
    pub kill_suidgid: bool,
}

/// The permission bits left once a regular file is modified by an unprivileged process, or
/// `None` when nothing changes: setuid goes; setgid goes only with group-execute (without
/// it, setgid marks mandatory locking, which a write does not revoke). Linux's rule.
fn without_suidgid(st: &Stat) -> Option<u32> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    suidgid_kept(st.st_mode & 0o7777)
}

/// The permission bits `perm` of a regular file keep when it is modified (see above).
fn suidgid_kept(perm: u32) -> Option<u32> {
    let mut kept = perm & !libc::S_ISUID;
    if kept & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kept &= !libc::S_ISGID;
    }
    (kept != perm).then_some(kept)
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub frsize: u32,
    pub namelen: u32,
}

/// rename(2) flags.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// An entry as `envfs info` describes it (`Fs::entry_info`).
#[derive(Debug)]
pub struct EntryInfo {
    /// Where it lives (for display).
    pub backing_path: PathBuf,
    pub attr: Attr,
    /// The backing entry's own length.
    pub backing_len: u64,
    /// The authenticated header of a regular file with content.
    pub header: Option<FileHeader>,
}

/// Who creates a new node, when the caller (a FUSE request as root) says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub struct Fs {
    vault: Arc<Vault>,
    /// The backing directory held open: entries are created, changed and removed relative
    /// to directory descriptors opened beneath it, never through a symlink (src/backing).
    /// The errno when it could not be opened.
    backing: std::result::Result<BackingRoot, i32>,
    names: NameCache,
    /// Names found not to be a sync client's copy (`NameMap::resolve`).
    copy_misses: copy_misses::CopyMisses,
    open: OpenFiles,
    log: IntegrityLog,
    /// Hidden foreign entries and shown conflict copies, logged once each.
    entries: EntryLog,
    /// Whether the backing store has gone away (a dropped NAS share).
    outage: outage::Outage,
    /// What the backing store can do, once probed (`probe_backing`).
    capabilities: std::sync::OnceLock<Capabilities>,
    sizes: SizeMap,
    /// Change notification from the backing store, once the mount asks for it (watch.rs).
    watcher: std::sync::OnceLock<crate::backing::watch::Inotify>,
    /// DEKs unwrapped ahead of the opens that need them, once the mount asks for it.
    ahead: std::sync::OnceLock<unwrap_ahead::UnwrapAhead>,
}

/// A directory's entries as `Fs::list` returns them: each decrypted entry with its backing
/// name, and the directory's descriptor.
type Listing = (Vec<(DirEntry, OsString)>, Arc<Dir>);

/// Split a mount-relative path into its parent and final name.
fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(Error::from_errno(libc::EINVAL)),
    }
}

/// Whether a chown asks for the owner and group `st` already has.
fn owner_unchanged(st: &Stat, set: &SetAttr) -> bool {
    set.uid.is_none_or(|u| u == st.st_uid) && set.gid.is_none_or(|g| g == st.st_gid)
}

fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new(".")
}

impl Fs {
    pub fn new(vault: Arc<Vault>) -> Fs {
        let link_encoding = (!vault.config.plaintext_names).then_some(vault.config.name_encoding);
        Fs {
            sizes: SizeMap {
                geometry: vault.geometry,
                link_encoding,
            },
            backing: BackingRoot::open(vault.root())
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            vault,
            names: NameCache::default(),
            copy_misses: Default::default(),
            open: OpenFiles::default(),
            log: IntegrityLog::default(),
            entries: EntryLog::default(),
            outage: Default::default(),
            capabilities: Default::default(),
            watcher: Default::default(),
            ahead: Default::default(),
        }
    }

    /// Unwrap the DEKs of files about to be opened with up to `workers` concurrent calls
    /// (fs/unwrap_ahead.rs), when a key service holds this vault's DEKs. Does nothing for
    /// local keys, for `workers` 0, without a DEK cache (`dek_cache_size=0`: a DEK
    /// unwrapped ahead would be thrown away), or when called twice.
    pub fn enable_unwrap_ahead(&self, workers: usize) {
        let caching = self.vault.dek_cache_fill().1.max_entries > 0;
        if workers > 0 && caching && self.vault.has_remote_key() {
            let _ = self
                .ahead
                .get_or_init(|| unwrap_ahead::UnwrapAhead::start(self.vault.clone(), workers));
        }
    }

    /// What unwrap-ahead has done (`None`: off).
    pub fn unwrap_ahead_report(&self) -> Option<unwrap_ahead::AheadReport> {
        self.ahead.get().map(unwrap_ahead::UnwrapAhead::report)
    }

    /// Probe the backing store (`backing::probe`) and keep the answer; `write_probes`
    /// false (a read-only mount) only looks. Later calls return the first answer.
    pub fn probe_backing(&self, depth: crate::backing::probe::Depth) -> Result<&Capabilities> {
        let root = self.backing_root()?;
        Ok(self
            .capabilities
            .get_or_init(|| crate::backing::probe::probe(root, depth)))
    }

    /// The probe's answer, if the store was probed.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.get()
    }

    /// The probe found that a symlink's own owner cannot be changed on this store (sshfs
    /// changes its target's instead).
    fn lacks_symlink_owners(&self) -> bool {
        self.capabilities().is_some_and(|c| c.symlink_owner.is_no())
    }

    /// The probe found that a symlink's own times cannot be set on this store.
    fn lacks_symlink_times(&self) -> bool {
        self.capabilities().is_some_and(|c| c.symlink_times.is_no())
    }

    /// Whether the store is down right now (`outage.rs`), for `envfs status`.
    pub fn backing_down(&self) -> bool {
        self.outage.is_down()
    }

    /// Flush a file's writes to the store and report what the store says (a network
    /// filesystem may send writes in the background and fail them only here).
    pub fn flush(&self, handle: &Handle) -> Result<()> {
        self.engine().flush(&handle.file).inspect_err(|e| {
            tracing::error!(
                backing_path = %handle.file.backing_path().display(),
                "the backing store failed this file's writes at close: {e}"
            )
        })
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    fn names(&self) -> NameMap<'_> {
        NameMap::new(&self.vault, &self.names, &self.copy_misses)
    }

    fn engine(&self) -> Engine<'_> {
        Engine {
            vault: &self.vault,
            log: &self.log,
        }
    }

    /// The backing path, below the backing root, of a plaintext path whose components
    /// exist (long names verified against their sidecars, as listings do; a failure is
    /// logged once).
    fn rel(&self, path: &Path) -> Result<PathBuf> {
        self.names()
            .backing_rel(self.backing_root()?, path)
            .inspect_err(|e| self.log.report_at_path(e))
    }

    /// The absolute backing path of a plaintext path, for messages and tools that show
    /// where an entry lives; nothing here opens a path.
    pub fn backing_path(&self, path: &Path) -> Result<PathBuf> {
        Ok(self.vault.root().join(self.rel(path)?))
    }

    /// The absolute backing path of entry `name` of `dir`, for messages.
    fn shown(&self, dir: &Dir, name: &OsStr) -> PathBuf {
        self.vault.root().join(dir.rel()).join(name)
    }

    /// The backing root, unless the store is down (`outage.rs`): then `EIO` at once, or
    /// the store reached again, at most one try a second.
    fn backing_root(&self) -> Result<&BackingRoot> {
        let root = self.backing.as_ref().map_err(|&e| Error::from_errno(e))?;
        if self.outage.is_down() && !(self.outage.may_retry() && self.reconnect(root)) {
            return Err(Error::from_errno(libc::EIO));
        }
        Ok(root)
    }

    /// Try to reach a store that went away: its path must hold this vault again.
    fn reconnect(&self, root: &BackingRoot) -> bool {
        let same_vault = crate::vault::read_config_unverified(self.vault.root())
            .is_ok_and(|(config, _)| config.vault_id == self.vault.config.vault_id);
        if !same_vault || root.reopen().is_err() || root.root_alive().is_err() {
            return false;
        }
        if self.outage.came_back() {
            tracing::warn!(backing_path = %root.path().display(), "backing store reachable again");
        }
        true
    }

    /// Look at an error a request is about to return: a transport error while the backing
    /// root no longer answers means the store is gone (logged once, `outage.rs`). Every
    /// caller that answers requests (the FUSE adapter) passes its errors through here.
    pub fn observe(&self, err: &Error) {
        let Error::Io(e) = err else { return };
        if !e.raw_os_error().is_some_and(outage::is_transport) || self.outage.is_down() {
            return;
        }
        let Ok(root) = self.backing.as_ref() else {
            return;
        };
        if e.raw_os_error() == Some(libc::ESTALE) && root.root_alive().is_ok() {
            // Another host removed or replaced a directory we hold a descriptor of (an
            // NFS handle gone stale): resolve every path afresh from now on.
            tracing::debug!("stale backing handle: cached directories dropped");
            root.forget(Path::new(""));
            return;
        }
        if let Err(gone) = root.root_alive()
            && self.outage.went_down()
        {
            tracing::error!(
                backing_path = %root.path().display(),
                "backing store unreachable ({gone}): requests fail with EIO until it is back"
            );
        }
    }

    /// Drop the cached descriptors of entry `name` of `dir` and below (it was renamed or
    /// removed).
    fn forget(&self, dir: &Dir, name: &OsStr) {
        if let Ok(root) = self.backing_root() {
            root.forget(&dir.rel().join(name));
        }
    }

    /// The backing root directory itself.
    fn root_dir(&self) -> Result<Arc<Dir>> {
        Ok(self.backing_root()?.dir_cached(Path::new(""))?)
    }

    /// The backing directory of plaintext directory `path`, opened beneath the root
    /// without following any symlink.
    fn dir_of(&self, path: &Path) -> Result<Arc<Dir>> {
        let rel = self.rel(path)?;
        Ok(self.backing_root()?.dir_cached(&rel)?)
    }

    /// An existing entry: its parent directory's descriptor and its backing name (the
    /// mount's root has none: callers treat it apart).
    fn locate(&self, path: &Path) -> Result<(Arc<Dir>, OsString)> {
        let rel = self.rel(path)?;
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(Error::from_errno(libc::EINVAL));
        };
        Ok((
            self.backing_root()?.dir_cached(parent)?,
            name.to_os_string(),
        ))
    }

    /// An `O_PATH` descriptor of an existing entry (the mount's root included), opened
    /// without following a symlink anywhere: what xattr calls go through. With it, the
    /// entry's backing path for messages.
    fn entry_fd(&self, path: &Path) -> Result<(OwnedFd, PathBuf)> {
        if is_root(path) {
            let root = self.backing_root()?;
            return Ok((root.root()?.into_fd(), root.path().to_path_buf()));
        }
        let (dir, name) = self.locate(path)?;
        Ok((dir.entry_fd(&name)?, self.shown(&dir, &name)))
    }

    /// The backing directory that is to hold plaintext path `path`, and its entry there.
    fn entry(&self, path: &Path) -> Result<(Arc<Dir>, BackingEntry)> {
        let (parent, name) = split(path)?;
        let dir = self.dir_of(parent)?;
        let entry = self.names().resolve(&dir, name, is_root(parent))?;
        Ok((dir, entry))
    }

    /// How long directory descriptors are reused (`backing::BackingRoot::dir_cached`): the
    /// mount passes its entry timeout, so a directory moved behind its back is found where
    /// it is now no later than the kernel notices.
    pub fn set_dir_cache_ttl(&self, ttl: std::time::Duration) {
        if let Ok(root) = self.backing_root() {
            root.set_dir_cache_ttl(ttl);
        }
        self.copy_misses.set_ttl(ttl);
    }

    /// The backing device and inode of the mount's root.
    pub fn root_id(&self) -> Result<(u64, u64)> {
        let st = self.root_dir()?.stat_self()?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Number of files currently open (for tests and diagnostics).
    pub fn open_file_count(&self) -> usize {
        self.open.len()
    }

    // ---- attributes -------------------------------------------------------------------

    pub fn getattr(&self, path: &Path) -> Result<Attr> {
        if is_root(path) {
            return Ok(self.sizes.attr(&self.root_dir()?.stat_self()?));
        }
        let (dir, name) = match self.locate(path) {
            // envfs' own files in a plaintext-names vault do not exist for the mount.
            Err(Error::ReservedName) => return Err(Error::from_errno(libc::ENOENT)),
            other => other?,
        };
        Ok(self.sizes.attr(&dir.stat(&name)?))
    }

    /// Attributes of an open file through its descriptor (works after unlink).
    pub fn getattr_handle(&self, handle: &Handle) -> Result<Attr> {
        Ok(self.sizes.attr(&handle.file.metadata()?))
    }

    /// setattr through an open file: works for files already unlinked or renamed over
    /// (ftruncate, fchmod, fchown, futimens on a temp file, say).
    pub fn setattr_handle(&self, handle: &Handle, set: &SetAttr) -> Result<Attr> {
        if let Some(size) = set.size {
            self.engine().set_size(&handle.file, size)?;
        }
        let fd = handle.file.fd();
        if let Some(mode) = set.mode {
            sys::fchmod(&fd, mode)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchown(&fd, set.uid, set.gid)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::set_times_fd(&fd, set.atime, set.mtime)?;
        }
        if set.kill_suidgid && set.mode.is_none() {
            self.kill_suidgid(handle)?;
        }
        let st = handle.file.metadata()?;
        self.open.note_ours(&st);
        Ok(self.sizes.attr(&st))
    }

    /// Drop setuid/setgid from an open regular file, as a write by an unprivileged
    /// process does on Linux. Costs one fstat; a chmod only when a bit is set.
    pub fn kill_suidgid(&self, handle: &Handle) -> Result<()> {
        let fd = handle.file.fd();
        if let Some(perm) = without_suidgid(&sys::fstat(&*fd)?) {
            sys::fchmod(&fd, perm)?;
        }
        Ok(())
    }

    pub fn setattr(&self, path: &Path, handle: Option<&Handle>, set: &SetAttr) -> Result<Attr> {
        self.setattr_verified(path, handle, set, |_| true)
    }

    /// `setattr`, after checking with `same_node` that the entry at `path` is still the node
    /// the caller means (the mount's inode table): ESTALE, and nothing changed, if a file
    /// replaced it. The check and the symlink decisions share one stat: on a network store
    /// every stat of an entry whose attributes the store's client dropped is a round trip.
    pub fn setattr_verified(
        &self,
        path: &Path,
        handle: Option<&Handle>,
        set: &SetAttr,
        same_node: impl FnOnce(&Attr) -> bool,
    ) -> Result<Attr> {
        if is_root(path) {
            return self.setattr_root(set);
        }
        let (dir, name) = self.locate(path)?;
        let st = dir.stat(&name)?;
        if !same_node(&self.sizes.attr(&st)) {
            return Err(Error::from_errno(libc::ESTALE));
        }
        if let Some(size) = set.size {
            match handle {
                Some(h) => self.engine().set_size(&h.file, size)?,
                None => {
                    let h = self.open(path, libc::O_WRONLY)?;
                    self.engine().set_size(&h.file, size)?;
                }
            }
        }
        let chown = set.uid.is_some() || set.gid.is_some();
        let is_symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if let Some(mode) = set.mode {
            // Linux has no chmod for symlinks; their mode is always 0777.
            if !is_symlink {
                dir.chmod(&name, mode & 0o7777)?;
            }
        }
        if chown && !(is_symlink && owner_unchanged(&st, set)) {
            if is_symlink && self.lacks_symlink_owners() {
                // The store would follow the link to its (encrypted, so missing) target.
                return Err(Error::from_errno(libc::EPERM));
            }
            dir.chown(&name, set.uid, set.gid)?;
        }
        // A symlink's times on a store that would set its target's instead: accepted and
        // not kept (its times are the store's), so that cp -a, rsync and tar work; said
        // in the mount's summary line (backing::probe) and docs/OPERATIONS.md.
        if (set.atime.is_some() || set.mtime.is_some())
            && !(is_symlink && self.lacks_symlink_times())
        {
            dir.set_times(
                &name,
                sys::timespec_of(set.atime),
                sys::timespec_of(set.mtime),
            )?;
        }
        if set.kill_suidgid && set.mode.is_none() {
            let st = dir.stat(&name)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG
                && let Some(perm) = suidgid_kept(st.st_mode & 0o7777)
            {
                dir.chmod(&name, perm)?;
            }
        }
        let st = dir.stat(&name)?;
        self.open.note_ours(&st);
        Ok(self.sizes.attr(&st))
    }

    /// setattr of the mount's root: the backing directory itself, through its descriptor.
    fn setattr_root(&self, set: &SetAttr) -> Result<Attr> {
        if set.size.is_some() {
            return Err(Error::from_errno(libc::EISDIR));
        }
        let root = self.root_dir()?;
        if let Some(mode) = set.mode {
            root.chmod_self(mode & 0o7777)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            root.chown_self(set.uid, set.gid)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            root.set_times_self(sys::timespec_of(set.atime), sys::timespec_of(set.mtime))?;
        }
        // kill_suidgid concerns regular files only: nothing to do for a directory.
        Ok(self.sizes.attr(&root.stat_self()?))
    }

    // ---- directories ------------------------------------------------------------------

    /// List a directory. Entries that cannot be decrypted are skipped and logged (fsck
    /// reports them); envfs' own files are never shown.
    pub fn readdir(&self, path: &Path) -> Result<Vec<DirEntry>> {
        Ok(self
            .list(path)?
            .0
            .into_iter()
            .map(|(entry, _)| entry)
            .collect())
    }

    /// The decrypted entries of a directory with their backing names, and the directory.
    /// Every entry is judged by `names::judge`, the rule fsck uses too. Sync clients'
    /// copies are listed after the user's own entries, under the name `judge` gives them,
    /// unless an entry of the directory already has that name.
    fn list(&self, path: &Path) -> Result<Listing> {
        let dir = self.dir_of(path)?;
        let at_root = is_root(path);
        let mut out = Vec::new();
        let mut copies = Vec::new();
        for entry in dir.entries()? {
            let listed = |name| DirEntry {
                name,
                ino: entry.ino,
                kind: FileKind::from_mode(entry.kind),
            };
            match names::judge(&self.vault, &dir, &entry.name, at_root) {
                Judged::Named(plain) => out.push((listed(plain), entry.name)),
                Judged::Copy(copy) => {
                    self.entries.copy_shown(
                        &self.shown(&dir, &entry.name),
                        &self.shown(&dir, &copy.original),
                        copy.client,
                        copy.kind,
                    );
                    self.copy_misses.forget(dir.rel(), &copy.shown);
                    copies.push((listed(copy.shown), entry.name));
                }
                // Left out of the listing, logged once (fsck reports it too).
                Judged::Damaged(damage) => self.log.report_at_path(&Error::Integrity {
                    path: damage.path(&self.vault, &dir, &entry.name),
                    chunk: None,
                    kind: IntegrityKind::Name,
                }),
                Judged::Foreign(why) => self.entries.foreign(&self.shown(&dir, &entry.name), why),
                Judged::Config | Judged::Reserved | Judged::Sidecar(_) | Judged::ClientFile(_) => {}
            }
        }
        if !copies.is_empty() {
            let mut taken: std::collections::HashSet<OsString> =
                out.iter().map(|(e, _)| e.name.clone()).collect();
            for (listed, backing) in copies {
                if taken.insert(listed.name.clone()) {
                    out.push((listed, backing));
                } else {
                    self.entries.copy_shadowed(&self.shown(&dir, &backing));
                }
            }
        }
        Ok((out, dir))
    }

    /// What listings have hidden and added so far (`envfs status`).
    pub fn entry_counts(&self) -> EntryCounts {
        self.entries.counts()
    }

    /// List a directory with every entry's attributes (for readdirplus and `ls -l`): one
    /// lstat per entry by its backing name, no name encrypted twice.
    pub fn readdir_plus(&self, path: &Path) -> Result<Vec<(OsString, Attr)>> {
        let (entries, dir) = self.list(path)?;
        let mut out = Vec::with_capacity(entries.len());
        for (entry, backing) in entries {
            match dir.stat(&backing) {
                Ok(st) => out.push((entry.name, self.sizes.attr(&st))),
                // Removed since the listing: skip, as a local filesystem would.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    pub fn mkdir(&self, path: &Path, mode: u32, owner: Option<Owner>) -> Result<Attr> {
        let (dir, entry) = self.entry(path)?;
        self.names().ensure_sidecar(&dir, &entry)?;
        if let Err(e) = dir.mkdir(&entry.name, mode & 0o7777) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                self.names().remove_sidecar(&dir, &entry);
            }
            return Err(e.into());
        }
        self.finish_create(&dir, &entry.name, mode, owner)?;
        self.getattr(path)
    }

    /// Apply the exact mode (the daemon's umask must not apply twice) and owner to the new
    /// entry `name` of `dir` (never through a symlink).
    fn finish_create(
        &self,
        dir: &Dir,
        name: &OsStr,
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<()> {
        let mut st = dir.stat(name)?;
        let is_symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let mut changed = false;
        // Owner first: a chown clears setuid/setgid, which the mode may ask for. A symlink
        // on a store that cannot own one keeps the owner the store gave it (lacks()).
        if let Some(o) = owner
            && (st.st_uid != o.uid || st.st_gid != o.gid)
            && !(is_symlink && self.lacks_symlink_owners())
        {
            dir.chown(name, Some(o.uid), Some(o.gid))?;
            st = dir.stat(name)?;
            changed = true;
        }
        if st.st_mode & 0o7777 != mode & 0o7777 && st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            dir.chmod(name, mode & 0o7777)?;
            changed = true;
        }
        // Each change is reported back by the watch: say it was ours.
        if changed {
            self.open.note_ours(&dir.stat(name)?);
        }
        Ok(())
    }

    pub fn rmdir(&self, path: &Path) -> Result<()> {
        let (dir, entry) = self.entry(path)?;
        match dir.rmdir(&entry.name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                // Empty as the mount sees it may still hold orphaned long-name sidecars,
                // left by a crash between removing an entry and its sidecar.
                if !self.readdir(path)?.is_empty() {
                    return Err(e.into());
                }
                self.remove_orphan_sidecars(&dir.subdir(&entry.name)?)?;
                dir.rmdir(&entry.name)?;
            }
            Err(e) => return Err(e.into()),
        }
        self.forget(&dir, &entry.name);
        self.names().remove_sidecar(&dir, &entry);
        Ok(())
    }

    fn remove_orphan_sidecars(&self, dir: &Dir) -> Result<()> {
        for name in dir.list()? {
            if crate::format::names::classify(&name.to_string_lossy())
                == crate::format::names::BackingName::Sidecar
            {
                dir.unlink(&name)?;
            }
        }
        Ok(())
    }

    // ---- names ------------------------------------------------------------------------

    pub fn unlink(&self, path: &Path) -> Result<()> {
        let (dir, entry) = self.entry(path)?;
        dir.unlink(&entry.name)?;
        self.names().remove_sidecar(&dir, &entry);
        Ok(())
    }

    pub fn rename(&self, from: &Path, to: &Path, flags: u32) -> Result<()> {
        let (from_fd, from_entry) = self.entry(from)?;
        let (to_fd, to_entry) = self.entry(to)?;
        self.rename_entries(&from_fd, from_entry, &to_fd, to_entry, flags)
    }

    /// Rename `from` to the entry of `to`'s own name, never to a sync client's copy that
    /// shows under that name (`envfs conflicts` giving a kept copy its original's name
    /// back, when the original is gone and another copy shows as it).
    pub(crate) fn rename_to_own_name(&self, from: &Path, to: &Path) -> Result<()> {
        let (from_fd, from_entry) = self.entry(from)?;
        let (parent, name) = split(to)?;
        let to_fd = self.dir_of(parent)?;
        let to_entry = self.names().encrypt(name, is_root(parent))?;
        self.rename_entries(&from_fd, from_entry, &to_fd, to_entry, 0)
    }

    fn rename_entries(
        &self,
        from_fd: &Dir,
        from_entry: BackingEntry,
        to_fd: &Dir,
        to_entry: BackingEntry,
        flags: u32,
    ) -> Result<()> {
        if from_fd.rel() == to_fd.rel() && from_entry.name == to_entry.name {
            // rename(2) of a name onto itself succeeds and does nothing.
            from_fd.stat(&from_entry.name)?;
            return Ok(());
        }
        let to_existed = to_fd.stat(&to_entry.name).is_ok();
        self.names().ensure_sidecar(to_fd, &to_entry)?;
        if let Err(e) = from_fd.rename(&from_entry.name, to_fd, &to_entry.name, flags) {
            if !to_existed {
                self.names().remove_sidecar(to_fd, &to_entry);
            }
            return Err(e.into());
        }
        // A directory moved (or replaced): its cached descriptors, and those below it, no
        // longer belong to their paths.
        self.forget(from_fd, &from_entry.name);
        self.forget(to_fd, &to_entry.name);
        // After an exchange both names still exist, each with its own sidecar; so do both
        // after a rename between two hard links of one file, which rename(2) leaves alone.
        if flags & RENAME_EXCHANGE == 0 && from_fd.stat(&from_entry.name).is_err() {
            self.names().remove_sidecar(from_fd, &from_entry);
        }
        Ok(())
    }

    pub fn link(&self, existing: &Path, new: &Path) -> Result<Attr> {
        let (source_dir, source_name) = self.locate(existing)?;
        let (dir, entry) = self.entry(new)?;
        self.names().ensure_sidecar(&dir, &entry)?;
        if let Err(e) = source_dir.link(&source_name, &dir, &entry.name) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                self.names().remove_sidecar(&dir, &entry);
            }
            return Err(e.into());
        }
        self.getattr(new)
    }

    pub fn symlink(&self, target: &OsStr, link: &Path, owner: Option<Owner>) -> Result<Attr> {
        let stored = self.encrypt_link_target(target)?;
        let (dir, entry) = self.entry(link)?;
        self.names().ensure_sidecar(&dir, &entry)?;
        if let Err(e) = dir.symlink(&stored, &entry.name) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                self.names().remove_sidecar(&dir, &entry);
            }
            return Err(e.into());
        }
        // The link's own owner (never its encrypted, so meaningless, target's), changed only
        // when it differs: sshfs follows a symlink on chown, and its target does not exist.
        if let Err(e) = self.finish_create(&dir, &entry.name, 0o777, owner) {
            // A failed symlink(2) leaves nothing behind; neither may this.
            let _ = dir.unlink(&entry.name);
            self.names().remove_sidecar(&dir, &entry);
            return Err(e);
        }
        self.getattr(link)
    }

    fn encrypt_link_target(&self, target: &OsStr) -> Result<OsString> {
        if target.is_empty() || target.as_bytes().contains(&0) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        if self.vault.config.plaintext_names {
            return Ok(target.to_os_string());
        }
        let sealed = self
            .vault
            .names
            .encrypt(&[domain::SYMLINK], target.as_bytes());
        let encoded = crate::format::names::encode(self.vault.config.name_encoding, &sealed);
        if encoded.len() >= libc::PATH_MAX as usize {
            return Err(Error::NameTooLong);
        }
        Ok(encoded.into())
    }

    pub fn readlink(&self, path: &Path) -> Result<OsString> {
        if is_root(path) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let (dir, name) = self.locate(path)?;
        let stored = dir.readlink(&name)?;
        if self.vault.config.plaintext_names {
            return Ok(stored);
        }
        let bad = || {
            let err = Error::Integrity {
                path: self.shown(&dir, &name),
                chunk: None,
                kind: IntegrityKind::LinkTarget,
            };
            self.log.report_at_path(&err);
            err
        };
        names::open_link_target(&self.vault.names, self.vault.config.name_encoding, &stored)
            .ok_or_else(bad)
    }

    pub fn mknod(&self, path: &Path, mode: u32, rdev: u64, owner: Option<Owner>) -> Result<Attr> {
        if mode & libc::S_IFMT == libc::S_IFREG {
            self.create(path, mode & 0o7777, libc::O_EXCL | libc::O_WRONLY, owner)?;
            return self.getattr(path);
        }
        let (dir, entry) = self.entry(path)?;
        self.names().ensure_sidecar(&dir, &entry)?;
        dir.mknod(&entry.name, mode, rdev)?;
        self.finish_create(&dir, &entry.name, mode, owner)?;
        self.getattr(path)
    }

    // ---- files ------------------------------------------------------------------------

    /// Open an existing file. `flags` are open(2) flags; O_TRUNC empties the file, O_APPEND
    /// makes every write go to the end.
    pub fn open(&self, path: &Path, flags: i32) -> Result<Handle> {
        if is_root(path) {
            return Err(Error::from_errno(libc::EISDIR));
        }
        let (dir, name) = self.locate(path)?;
        self.open_backing(&dir, &name, flags, false, 0)
    }

    /// Create (or, without O_EXCL, open) a file.
    pub fn create(
        &self,
        path: &Path,
        mode: u32,
        flags: i32,
        owner: Option<Owner>,
    ) -> Result<(Handle, Attr)> {
        let (dir, entry) = self.entry(path)?;
        self.names().ensure_sidecar(&dir, &entry)?;
        // With O_EXCL (cp, tar, editors) success means this call made the file, so the
        // extra lookup is needed only without it.
        let exclusive = flags & libc::O_EXCL != 0;
        let existed = !exclusive && dir.stat(&entry.name).is_ok();
        let handle = match self.open_backing(&dir, &entry.name, flags, true, mode) {
            Ok(h) => h,
            Err(e) => {
                if !existed && e.errno() != libc::EEXIST {
                    self.names().remove_sidecar(&dir, &entry);
                }
                return Err(e);
            }
        };
        let attr = if existed {
            self.getattr_handle(&handle)?
        } else {
            self.finish_create_file(&handle, mode, owner)?
        };
        Ok((handle, attr))
    }

    /// finish_create for a regular file, through its descriptor: no path walk, and the
    /// attributes come from the same fstat.
    fn finish_create_file(&self, handle: &Handle, mode: u32, owner: Option<Owner>) -> Result<Attr> {
        let fd = handle.file.fd();
        let mut st = sys::fstat(&*fd)?;
        // Owner first: a chown clears setuid/setgid, which the mode may ask for.
        if let Some(o) = owner
            && (st.st_uid != o.uid || st.st_gid != o.gid)
        {
            sys::fchown(&fd, Some(o.uid), Some(o.gid))?;
            st = sys::fstat(&*fd)?;
        }
        if st.st_mode & 0o7777 != mode & 0o7777 {
            sys::fchmod(&fd, mode)?;
            st = sys::fstat(&*fd)?;
        }
        self.open.note_ours(&st);
        Ok(self.sizes.attr(&st))
    }

    /// Open (or create) the file `name` of backing directory `dir`, relative to its
    /// descriptor: no symlink is followed, on the way or in place.
    fn open_backing(
        &self,
        dir: &Arc<Dir>,
        name: &OsStr,
        flags: i32,
        create: bool,
        mode: u32,
    ) -> Result<Handle> {
        let accmode = flags & libc::O_ACCMODE;
        let wants_write = accmode != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        // Reads of a chunk someone writes through another handle need the same fd, and
        // writes need to read (read-modify-write): open read-write whenever allowed.
        let mut oflags = libc::O_RDWR;
        if create {
            oflags |= libc::O_CREAT;
            if flags & libc::O_EXCL != 0 {
                oflags |= libc::O_EXCL;
            }
        }
        let (fd, writable) = match dir.open_file(name, oflags, mode & 0o7777) {
            Ok(fd) => (fd, true),
            // Read-only access to a file we may not (EACCES) or cannot (EROFS: a snapshot,
            // a read-only backup) write.
            Err(e)
                if !wants_write
                    && !create
                    && matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS)) =>
            {
                (dir.open_file(name, libc::O_RDONLY, 0)?, false)
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::from_errno(libc::ELOOP));
            }
            Err(e) => return Err(e.into()),
        };
        let st = sys::fstat(&fd)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Error::from_errno(libc::EISDIR));
        }
        let file = self
            .open
            .get_or_insert(fd, writable, &self.shown(dir, name))?;
        let handle = Handle {
            file,
            append: flags & libc::O_APPEND != 0,
        };
        if flags & libc::O_TRUNC != 0 && wants_write {
            // Truncation discards every byte, authenticated or not: a damaged file can be
            // overwritten.
            self.engine().set_size(&handle.file, 0)?;
        } else {
            self.engine()
                .check_openable(&handle.file, st.st_size as u64)?;
        }
        if !create && let Some(ahead) = self.ahead.get() {
            ahead.opened(dir, &name.to_os_string());
        }
        Ok(handle)
    }

    /// Read up to `size` bytes at plaintext offset `offset`.
    pub fn read(&self, handle: &Handle, offset: u64, size: usize) -> Result<Vec<u8>> {
        self.engine().read(&handle.file, offset, size)
    }

    /// Write `data` at `offset` (at the end of file for O_APPEND handles). Returns the
    /// number of bytes written.
    pub fn write(&self, handle: &Handle, offset: u64, data: &[u8]) -> Result<usize> {
        self.engine()
            .write(&handle.file, offset, data, handle.append)?;
        Ok(data.len())
    }

    pub fn truncate(&self, handle: &Handle, size: u64) -> Result<()> {
        self.engine().set_size(&handle.file, size)
    }

    pub fn fsync(&self, handle: &Handle, datasync: bool) -> Result<()> {
        self.engine().fsync(&handle.file, datasync)
    }

    /// fallocate(2): mode 0 grows the file to cover the range with encrypted zeros;
    /// FALLOC_FL_KEEP_SIZE reserves backing space. Punching holes is not supported: envfs
    /// has no unauthenticated holes.
    pub fn fallocate(&self, handle: &Handle, offset: u64, len: u64, mode: i32) -> Result<()> {
        match mode {
            0 => self.engine().allocate(&handle.file, offset, len, false),
            libc::FALLOC_FL_KEEP_SIZE => self.engine().allocate(&handle.file, offset, len, true),
            _ => Err(Error::from_errno(libc::EOPNOTSUPP)),
        }
    }

    pub fn size(&self, handle: &Handle) -> Result<u64> {
        self.engine().size(&handle.file)
    }

    // ---- extended attributes -----------------------------------------------------------

    /// The backing xattr name for a plaintext one: `user.*` names are encrypted, ACLs and
    /// other system namespaces pass through (they are permissions, not content).
    fn xattr_backing_name(&self, name: &OsStr) -> Result<OsString> {
        let bytes = name.as_bytes();
        match bytes.strip_prefix(b"user.") {
            Some(rest) if !rest.is_empty() => {
                let sealed = self.vault.xattrs.encrypt(&[domain::XATTR_NAME], rest);
                let encoded =
                    crate::format::names::encode(self.vault.config.name_encoding, &sealed);
                let full = format!("user.{encoded}");
                if full.len() > 255 {
                    return Err(Error::from_errno(libc::ERANGE));
                }
                Ok(full.into())
            }
            Some(_) => Err(Error::from_errno(libc::EINVAL)),
            // SELinux labels a FUSE mount from its policy (genfscon) and never asks the
            // filesystem; without SELinux a label on the backing file means nothing. Refusing
            // it (rather than answering ENODATA) lets `ls -l` remember that the mount has no
            // labels and stop asking: one FUSE round trip less per file listed.
            None if bytes == b"security.selinux" => Err(Error::from_errno(libc::EOPNOTSUPP)),
            None if bytes.starts_with(b"system.")
                || bytes.starts_with(b"security.")
                || bytes.starts_with(b"trusted.") =>
            {
                Ok(name.to_os_string())
            }
            None => Err(Error::from_errno(libc::EOPNOTSUPP)),
        }
    }

    pub fn setxattr(&self, path: &Path, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let stored = self.xattr_backing_name(name)?;
        let value = if name.as_bytes().starts_with(b"user.") {
            self.vault
                .xattrs
                .encrypt(&[domain::XATTR_VALUE, name.as_bytes()], value)
        } else {
            value.to_vec()
        };
        let (fd, _) = self.entry_fd(path)?;
        Ok(sys::setxattr(
            XattrOf::Fd(fd.as_fd()),
            &stored,
            &value,
            flags,
        )?)
    }

    pub fn getxattr(&self, path: &Path, name: &OsStr) -> Result<Vec<u8>> {
        let stored = self.xattr_backing_name(name)?;
        let (fd, backing) = self.entry_fd(path)?;
        let value = sys::getxattr(XattrOf::Fd(fd.as_fd()), &stored)?;
        if !name.as_bytes().starts_with(b"user.") {
            return Ok(value);
        }
        xattr_value_plaintext(&self.vault.xattrs, name.as_bytes(), &value).ok_or_else(|| {
            let err = Error::Integrity {
                path: backing,
                chunk: None,
                kind: IntegrityKind::XattrValue,
            };
            self.log.report_at_path(&err);
            err
        })
    }

    pub fn listxattr(&self, path: &Path) -> Result<Vec<OsString>> {
        let (fd, _) = self.entry_fd(path)?;
        let mut out = Vec::new();
        for stored in sys::listxattr(XattrOf::Fd(fd.as_fd()))? {
            if let Some(encoded) = stored.strip_prefix(b"user.") {
                let plain = xattr_name_plaintext(
                    &self.vault.xattrs,
                    self.vault.config.name_encoding,
                    encoded,
                );
                match plain {
                    Some(p) => {
                        let mut name = b"user.".to_vec();
                        name.extend_from_slice(&p);
                        out.push(OsString::from_vec(name));
                    }
                    // Not ours (written to the backing store directly): not shown.
                    None => continue,
                }
            } else {
                out.push(OsString::from_vec(stored));
            }
        }
        Ok(out)
    }

    pub fn removexattr(&self, path: &Path, name: &OsStr) -> Result<()> {
        let stored = self.xattr_backing_name(name)?;
        let (fd, _) = self.entry_fd(path)?;
        Ok(sys::removexattr(XattrOf::Fd(fd.as_fd()), &stored)?)
    }

    /// Re-encrypt a file under a fresh DEK and file id (for a suspected DEK compromise):
    /// the content is copied into a new backing file beside it, which then replaces the old
    /// one with a rename, keeping mode, owner, times and xattrs. Refuses hard-linked files,
    /// whose other names the rename would leave behind on the old DEK.
    pub fn rekey(&self, path: &Path) -> Result<()> {
        let not_a_file =
            || Error::Invalid(format!("{}: only regular files have a DEK", path.display()));
        if is_root(path) {
            return Err(not_a_file());
        }
        let (dir, name) = self.locate(path)?;
        let st = dir.stat(&name)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(not_a_file());
        }
        if st.st_nlink > 1 {
            return Err(Error::Invalid(format!(
                "{}: has {} hard links; rekey would leave the other names on the old key",
                path.display(),
                st.st_nlink
            )));
        }
        if st.st_size == 0 {
            return Ok(()); // no content, no DEK
        }
        let tmp = rewrap::temp_name("rekey");
        let result = (|| -> Result<()> {
            let source = self.open_backing(&dir, &name, libc::O_RDONLY, false, 0)?;
            let target = self.open_backing(
                &dir,
                &tmp,
                libc::O_RDWR | libc::O_EXCL,
                true,
                st.st_mode & 0o7777,
            )?;
            let mut offset = 0u64;
            loop {
                let data = self.read(&source, offset, 1 << 20)?;
                if data.is_empty() {
                    break;
                }
                self.write(&target, offset, &data)?;
                offset += data.len() as u64;
            }
            self.fsync(&target, false)?;
            let (from, to) = (dir.entry_fd(&name)?, dir.entry_fd(&tmp)?);
            for xattr in sys::listxattr(XattrOf::Fd(from.as_fd()))? {
                let xattr = OsString::from_vec(xattr);
                let value = sys::getxattr(XattrOf::Fd(from.as_fd()), &xattr)?;
                sys::setxattr(XattrOf::Fd(to.as_fd()), &xattr, &value, 0)?;
            }
            let fd = target.file.fd();
            sys::fchown(&fd, Some(st.st_uid), Some(st.st_gid))?;
            sys::fchmod(&fd, st.st_mode & 0o7777)?;
            let times = self.sizes.attr(&st);
            sys::set_times_fd(
                &fd,
                Some(TimeSet::At(times.atime)),
                Some(TimeSet::At(times.mtime)),
            )?;
            dir.rename(&tmp, &dir, &name, 0)?;
            dir.sync()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = dir.unlink(&tmp);
        }
        result
    }

    /// What `envfs info PATH` shows of an entry: where it lives, its attributes, its
    /// backing length and, for a regular file with content, its header, authenticated
    /// first (a forged header must not be described as real).
    pub fn entry_info(&self, path: &Path) -> Result<EntryInfo> {
        let (st, shown, dir) = if is_root(path) {
            let root = self.root_dir()?;
            (root.stat_self()?, self.vault.root().to_path_buf(), None)
        } else {
            let (dir, name) = self.locate(path)?;
            (dir.stat(&name)?, self.shown(&dir, &name), Some((dir, name)))
        };
        let attr = self.sizes.attr(&st);
        let backing_len = st.st_size as u64;
        let header = match dir {
            Some((dir, name)) if attr.kind == FileKind::File && backing_len > 0 => {
                let mut bytes = vec![0u8; self.vault.geometry.header_size as usize];
                let bad = || Error::Integrity {
                    path: shown.clone(),
                    chunk: None,
                    kind: IntegrityKind::Header,
                };
                dir.open_file(&name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?
                    .read_exact_at(&mut bytes, 0)
                    .map_err(|_| bad())?;
                self.vault.open_file(&bytes, &shown)?;
                Some(FileHeader::parse(&bytes).map_err(|_| bad())?.0)
            }
            _ => None,
        };
        Ok(EntryInfo {
            backing_path: shown,
            attr,
            backing_len,
            header,
        })
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let st = self.root_dir()?.statvfs()?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            frsize: st.f_frsize as u32,
            namelen: names::NAME_MAX as u32,
        })
    }

    /// fsync of a directory: its entries made durable.
    pub fn fsyncdir(&self, path: &Path) -> Result<()> {
        Ok(self.dir_of(path)?.sync()?)
    }

    /// syncfs of the backing store: every write made durable (at unmount).
    pub fn sync_backing(&self) -> Result<()> {
        Ok(self.root_dir()?.syncfs()?)
    }

    /// access(2) of an entry, answered by the backing store as the daemon's user (for
    /// mounts without `default_permissions`, which only the mounting user can reach).
    pub fn access(&self, path: &Path, mask: i32) -> Result<()> {
        if is_root(path) {
            return Ok(self.root_dir()?.access(None, mask)?);
        }
        let (dir, name) = self.locate(path)?;
        Ok(dir.access(Some(&name), mask)?)
    }
}

/// The plaintext of a stored `user.*` xattr name (the part after `user.`), if authentic.
pub fn xattr_name_plaintext(
    xattrs: &crate::crypto::SivCipher,
    encoding: crate::format::NameEncoding,
    stored: &[u8],
) -> Option<Vec<u8>> {
    let sealed = crate::format::names::decode(encoding, std::str::from_utf8(stored).ok()?)?;
    xattrs.decrypt(&[domain::XATTR_NAME], &sealed)
}

/// The plaintext of a stored `user.*` xattr value, if authentic for attribute `name` (the
/// full plaintext name: a value copied to another attribute does not open).
pub fn xattr_value_plaintext(
    xattrs: &crate::crypto::SivCipher,
    name: &[u8],
    stored: &[u8],
) -> Option<Vec<u8>> {
    xattrs.decrypt(&[domain::XATTR_VALUE, name], stored)
}
