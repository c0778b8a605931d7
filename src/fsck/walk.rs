//! The walk: every entry of the backing directory, reached through directory descriptors
//! (src/backing, so no symlink is ever followed and no path is too long), judged by the
//! same rules the mount applies (`fs::names::judge` for names, `open_link_target` for
//! symlinks, the geometry's length arithmetic, `Vault::open_file` for headers, the chunk
//! cipher for chunks), each problem recorded as a finding.
//!
//! Directories and files are work items on one queue shared by a few worker threads; large
//! files are split into segments so that one big file does not leave the other workers idle.
//! Chunks are read in batches (one `pread` for up to `BATCH_CHUNKS` chunks).

use super::report::{Finding, FindingKind, Progress, bump};
use crate::backing::Dir;
use crate::backing::sys::{self, XattrOf};
use crate::crypto::FileKeys;
use crate::error::Error;
use crate::format::config::NameEncoding;
use crate::format::geometry::BadLength;
use crate::format::sync_names::CopyKind;
use crate::format::{FileHeader, Geometry};
use crate::fs::names::{Judged, MarkedCopy, NameDamage, is_copy_of, judge, open_link_target};
use crate::fs::{xattr_name_plaintext, xattr_value_plaintext};
use crate::vault::Vault;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Most chunks read with one `pread`.
pub const BATCH_CHUNKS: u64 = 256;
/// Most bytes read with one `pread` (bounds memory with large chunk sizes).
const BATCH_BYTES: u64 = 8 << 20;
/// Files with more batches than this are split into segments checked by several workers.
const SEGMENT_BATCHES: u64 = 16;

/// Walk the vault from its root directory `root` with `workers` threads; the findings,
/// unsorted.
pub(super) fn walk(vault: &Vault, root: Dir, workers: usize, progress: &Progress) -> Vec<Finding> {
    let g = vault.geometry;
    let batch = (BATCH_BYTES / g.backing_chunk_size()).clamp(1, BATCH_CHUNKS);
    let checker = Checker {
        vault,
        g,
        batch,
        progress,
        findings: Mutex::new(Vec::new()),
        seen_inodes: Mutex::new(HashSet::new()),
        queue: Queue::default(),
    };
    if let Ok(fd) = root.entry_fd_self() {
        checker.check_xattrs(fd.as_fd(), vault.root(), Some(Path::new("")));
    }
    checker.queue.push(Job::Dir {
        parent: Arc::new(root),
        name: None,
        plain: Some(PathBuf::new()),
        at_root: true,
    });
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| checker.work());
        }
    });
    checker.findings.into_inner().unwrap()
}

// ---- the work queue ---------------------------------------------------------------------

/// Entries are queued by their parent's descriptor and their name, not opened: a
/// directory of many subdirectories must not hold a descriptor for each until its turn.
enum Job {
    Dir {
        parent: Arc<Dir>,
        /// `None`: `parent` itself (the root).
        name: Option<OsString>,
        /// `None` once a name on the way failed to decrypt.
        plain: Option<PathBuf>,
        at_root: bool,
    },
    File {
        dir: Arc<Dir>,
        name: OsString,
        plain: Option<PathBuf>,
    },
    Segment {
        file: Arc<OpenChecked>,
        first: u64,
        end: u64,
    },
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers holding a job (which may push more).
    busy: usize,
}

impl Queue {
    fn push(&self, job: Job) {
        self.state.lock().unwrap().jobs.push_back(job);
        self.ready.notify_one();
    }

    /// The next job, or `None` once the queue is empty and no worker can add to it.
    /// Last in, first out: the walk goes depth first and a split file's segments are taken
    /// at once, which keeps the queue and the open files few.
    fn next(&self) -> Option<Job> {
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(job) = state.jobs.pop_back() {
                state.busy += 1;
                return Some(job);
            }
            if state.busy == 0 {
                self.ready.notify_all();
                return None;
            }
            state = self.ready.wait(state).unwrap();
        }
    }

    fn done(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.busy -= 1;
        if state.busy == 0 && state.jobs.is_empty() {
            self.ready.notify_all();
        }
    }
}

/// A job being worked on; dropping it marks the job done.
struct Busy<'q>(&'q Queue);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

// ---- the checker ------------------------------------------------------------------------

/// A regular file whose header authenticated, shared by the workers checking its chunks.
struct OpenChecked {
    fd: File,
    keys: FileKeys,
    backing: PathBuf,
    plain: Option<PathBuf>,
    /// Chunks to authenticate.
    chunk_count: u64,
    /// Backing offset where the last whole chunk ends.
    data_end: u64,
    /// The length is invalid, so whether the last whole chunk was written as the file's
    /// last chunk is unknown: both flags are accepted (the length itself is the finding).
    either_last: bool,
}

struct Checker<'a> {
    vault: &'a Vault,
    g: Geometry,
    batch: u64,
    progress: &'a Progress,
    findings: Mutex<Vec<Finding>>,
    /// Hard-linked inodes already checked.
    seen_inodes: Mutex<HashSet<(u64, u64)>>,
    queue: Queue,
}

impl Checker<'_> {
    fn work(&self) {
        let mut buf = Vec::new();
        while let Some(job) = self.queue.next() {
            // Marks the job done even if checking it panics, so the other workers finish
            // (and the scope re-raises the panic) instead of waiting for it forever.
            let _busy = Busy(&self.queue);
            match job {
                Job::Dir {
                    parent,
                    name,
                    plain,
                    at_root,
                } => self.check_dir(parent, name.as_deref(), plain.as_deref(), at_root),
                Job::File { dir, name, plain } => self.check_file(&dir, &name, plain, &mut buf),
                Job::Segment { file, first, end } => self.check_chunks(&file, first, end, &mut buf),
            }
        }
    }

    fn report(
        &self,
        kind: FindingKind,
        backing: &Path,
        plain: Option<&Path>,
        chunk: Option<u64>,
        detail: impl Into<String>,
    ) {
        bump(&self.progress.findings, 1);
        self.findings.lock().unwrap().push(Finding {
            kind,
            backing_path: backing.to_path_buf(),
            path: plain.map(Path::to_path_buf),
            chunk,
            copy_of: None,
            detail: detail.into(),
            repaired: false,
        });
    }

    /// A sync client's copy of a user entry: a notice naming both plaintext paths (its
    /// contents are then checked like any entry's).
    fn report_copy(
        &self,
        backing: &Path,
        plain: Option<&Path>,
        of: Option<PathBuf>,
        copy: &MarkedCopy,
    ) {
        let (kind, what) = match copy.kind {
            CopyKind::Conflict => (FindingKind::ConflictCopy, "conflict copy"),
            CopyKind::Version => (FindingKind::KeptVersion, "kept version"),
        };
        bump(&self.progress.findings, 1);
        self.findings.lock().unwrap().push(Finding {
            kind,
            backing_path: backing.to_path_buf(),
            path: plain.map(Path::to_path_buf),
            chunk: None,
            copy_of: of,
            detail: format!(
                "{} {what}; `envfs conflicts` lists and resolves it",
                copy.client.label()
            ),
            repaired: false,
        });
    }

    /// The backing path of entry `name` of `dir`, as findings show it.
    fn shown(&self, dir: &Dir, name: &OsStr) -> PathBuf {
        self.vault.root().join(dir.rel()).join(name)
    }

    fn encoding(&self) -> NameEncoding {
        self.vault.config.name_encoding
    }

    // ---- directories and names ----------------------------------------------------------

    fn check_dir(
        &self,
        parent: Arc<Dir>,
        name: Option<&OsStr>,
        plain: Option<&Path>,
        at_root: bool,
    ) {
        let dir = match name {
            None => parent,
            Some(name) => match parent.subdir(name) {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    let detail = format!("cannot open the directory: {e}");
                    let shown = self.shown(&parent, name);
                    return self.report(FindingKind::Unreadable, &shown, plain, None, detail);
                }
            },
        };
        let entries = match dir.entries() {
            Ok(entries) => entries,
            Err(e) => {
                let detail = format!("cannot list the directory: {e}");
                let shown = self.vault.root().join(dir.rel());
                return self.report(FindingKind::Unreadable, &shown, plain, None, detail);
            }
        };
        // For telling orphaned sidecars from those of present entries.
        let present: HashSet<Vec<u8>> = entries
            .iter()
            .map(|e| self.name_key(e.name.as_bytes()))
            .collect();
        // A sidecar whose entry is gone still names the entry's sync-client copies (the
        // mount's rule, `is_copy_of`).
        let names: Vec<OsString> = entries.iter().map(|e| e.name.clone()).collect();
        let copied = |of: &OsStr| names.iter().any(|n| is_copy_of(self.vault, &dir, n, of));
        for entry in entries {
            let backing = self.shown(&dir, &entry.name);
            let is_file = entry.kind == libc::S_IFREG;
            let child_plain = match judge(self.vault, &dir, &entry.name, at_root) {
                Judged::Named(name) => plain.map(|p| p.join(name)),
                Judged::Copy(copy) => {
                    let shown = plain.map(|p| p.join(&copy.shown));
                    let of = plain.map(|p| p.join(&copy.original_plain));
                    self.report_copy(&backing, shown.as_deref(), of, &copy);
                    shown
                }
                Judged::ClientFile(client) => {
                    let detail = format!("a {} file, hidden from the mount", client.label());
                    self.report(FindingKind::SyncClientFile, &backing, None, None, detail);
                    continue;
                }
                Judged::Damaged(damage) => {
                    self.name_damage(damage, &dir, &entry.name, &backing);
                    None
                }
                Judged::Config => continue, // verified by Vault::open
                Judged::Reserved => {
                    if is_file {
                        self.report(
                            FindingKind::LeftoverTemp,
                            &backing,
                            None,
                            None,
                            "temporary file left by an interrupted envfs operation",
                        );
                    } else {
                        self.report(
                            FindingKind::UnknownFile,
                            &backing,
                            None,
                            None,
                            "not written by envfs (a name reserved for envfs' temporary files)",
                        );
                    }
                    continue;
                }
                Judged::Sidecar(of) => {
                    if !is_file {
                        self.report(
                            FindingKind::UnknownFile,
                            &backing,
                            None,
                            None,
                            "not written by envfs (named like a long-name sidecar, but not a file)",
                        );
                    } else if !present.contains(&self.name_key(of.as_bytes())) && !copied(&of) {
                        self.report(
                            FindingKind::OrphanedSidecar,
                            &backing,
                            None,
                            None,
                            "long-name sidecar whose entry is gone",
                        );
                    }
                    continue;
                }
                Judged::Foreign(why) => {
                    let detail = format!("not written by envfs ({why})");
                    self.report(FindingKind::UnknownFile, &backing, None, None, detail);
                    continue;
                }
            };
            self.dispatch(&dir, entry.name, child_plain, entry.kind);
        }
    }

    /// Report a user entry whose name is lost; its contents are still checked.
    fn name_damage(&self, damage: NameDamage, dir: &Dir, name: &OsStr, backing: &Path) {
        let (kind, detail) = match &damage {
            NameDamage::MissingSidecar => (
                FindingKind::MissingSidecar,
                "long-name entry without its sidecar (the name is lost)".to_string(),
            ),
            NameDamage::MismatchedSidecar => (
                FindingKind::MismatchedSidecar,
                "the long-name sidecar does not hold this entry's name".to_string(),
            ),
            NameDamage::UnreadableSidecar(e) => (
                FindingKind::Unreadable,
                format!("cannot read the long-name sidecar: {e}"),
            ),
            NameDamage::Undecryptable => (
                FindingKind::UndecryptableName,
                "encrypted name is corrupt or not authentic".to_string(),
            ),
        };
        let at = match damage {
            NameDamage::UnreadableSidecar(_) => damage.path(self.vault, dir, name),
            _ => backing.to_path_buf(),
        };
        self.report(kind, &at, None, None, detail);
    }

    /// The key under which a name is looked up in a directory listing: base32 vaults live
    /// on backends that may change the case of names.
    fn name_key(&self, name: &[u8]) -> Vec<u8> {
        match self.encoding() {
            NameEncoding::Base64Url => name.to_vec(),
            NameEncoding::Base32 => name.to_ascii_lowercase(),
        }
    }

    /// Every `user.*` extended attribute of an entry whose name the mount shows (one that
    /// decrypts, `fs::xattr_name_plaintext`) must have a value that opens for it
    /// (`fs::xattr_value_plaintext`): the mount's getxattr fails with EIO otherwise.
    fn check_xattrs(&self, fd: BorrowedFd<'_>, backing: &Path, plain: Option<&Path>) {
        let names = match sys::listxattr(XattrOf::Fd(fd)) {
            Ok(names) => names,
            // Stores without xattrs have none to damage.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return,
            Err(e) => {
                let detail = format!("cannot list extended attributes: {e}");
                return self.report(FindingKind::Unreadable, backing, plain, None, detail);
            }
        };
        for stored in names {
            let Some(encoded) = stored.strip_prefix(b"user.") else {
                continue; // ACLs and other system attributes are stored as they are
            };
            let Some(name) = xattr_name_plaintext(&self.vault.xattrs, self.encoding(), encoded)
            else {
                continue; // not ours: the mount does not list it either
            };
            let full = [b"user.".as_slice(), &name].concat();
            let opens = sys::getxattr(XattrOf::Fd(fd), OsStr::from_bytes(&stored))
                .map(|value| xattr_value_plaintext(&self.vault.xattrs, &full, &value).is_some());
            match opens {
                Ok(true) => {}
                // The attribute's name is plaintext: it never appears in a finding.
                Ok(false) => self.report(
                    FindingKind::UndecryptableXattr,
                    backing,
                    plain,
                    None,
                    "a user.* extended attribute value is corrupt or not authentic",
                ),
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {} // removed meanwhile
                Err(e) => {
                    let detail = format!("cannot read an extended attribute: {e}");
                    self.report(FindingKind::Unreadable, backing, plain, None, detail);
                }
            }
        }
    }

    /// Queue or check one named entry by its type (`S_IFMT` bits).
    fn dispatch(&self, dir: &Arc<Dir>, name: OsString, plain: Option<PathBuf>, kind: u32) {
        // A regular file's attributes are checked through the descriptor check_file opens.
        if kind != libc::S_IFREG
            && let Ok(fd) = dir.entry_fd(&name)
        {
            self.check_xattrs(fd.as_fd(), &self.shown(dir, &name), plain.as_deref());
        }
        match kind {
            libc::S_IFDIR => {
                bump(&self.progress.directories, 1);
                self.queue.push(Job::Dir {
                    parent: dir.clone(),
                    name: Some(name),
                    plain,
                    at_root: false,
                });
            }
            libc::S_IFREG => self.queue.push(Job::File {
                dir: dir.clone(),
                name,
                plain,
            }),
            libc::S_IFLNK => {
                bump(&self.progress.symlinks, 1);
                self.check_symlink(dir, &name, plain.as_deref());
            }
            _ => bump(&self.progress.other, 1),
        }
    }

    fn check_symlink(&self, dir: &Dir, name: &OsStr, plain: Option<&Path>) {
        let target = match dir.readlink(name) {
            Ok(t) => t,
            Err(e) => {
                let detail = format!("cannot read the symlink: {e}");
                let shown = self.shown(dir, name);
                return self.report(FindingKind::Unreadable, &shown, plain, None, detail);
            }
        };
        if self.vault.config.plaintext_names {
            return;
        }
        if open_link_target(&self.vault.names, self.encoding(), &target).is_none() {
            self.report(
                FindingKind::UndecryptableSymlink,
                &self.shown(dir, name),
                plain,
                None,
                "encrypted symlink target is corrupt or not authentic",
            );
        }
    }

    // ---- files --------------------------------------------------------------------------

    fn check_file(&self, dir: &Dir, name: &OsStr, plain: Option<PathBuf>, buf: &mut Vec<u8>) {
        bump(&self.progress.files, 1);
        let backing = self.shown(dir, name);
        let unreadable = |what: &str, e: &dyn std::fmt::Display| {
            let detail = format!("cannot {what}: {e}");
            self.report(
                FindingKind::Unreadable,
                &backing,
                plain.as_deref(),
                None,
                detail,
            );
        };
        // Never through a symlink put in its place since the listing, never waiting on a
        // FIFO put there.
        let fd = match dir.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) => return unreadable("open the file", &e),
        };
        let st = match sys::fstat(&fd) {
            Ok(st) => st,
            Err(e) => return unreadable("stat the file", &e),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return; // replaced since the listing
        }
        self.check_xattrs(fd.as_fd(), &backing, plain.as_deref());
        if st.st_nlink > 1
            && !self
                .seen_inodes
                .lock()
                .unwrap()
                .insert((st.st_dev, st.st_ino))
        {
            return; // another name of an inode already checked
        }
        let g = self.g;
        let len = st.st_size as u64;
        if len == 0 {
            return; // an empty file has no header
        }
        let (chunk_count, data_end, either_last) = match g.plain_size(len) {
            Ok(size) => (g.chunk_count(size), len, false),
            Err(BadLength::ShortHeader) => {
                let detail = format!(
                    "{len} bytes: shorter than the {}-byte header (truncated, or bytes \
                     written to an empty file)",
                    g.header_size
                );
                self.report(
                    FindingKind::InvalidLength,
                    &backing,
                    plain.as_deref(),
                    None,
                    detail,
                );
                return;
            }
            Err(BadLength::ShortChunk) => {
                let whole = (len - g.header_size) / g.backing_chunk_size();
                let detail = format!(
                    "{len} bytes: {} bytes after the last whole chunk are too short to be a \
                     chunk (cut mid-chunk, or bytes appended)",
                    len - g.chunk_backing_offset(whole)
                );
                self.report(
                    FindingKind::InvalidLength,
                    &backing,
                    plain.as_deref(),
                    Some(whole),
                    detail,
                );
                (whole, g.chunk_backing_offset(whole), true)
            }
        };
        let mut header = vec![0u8; g.header_size as usize];
        if let Err(e) = fd.read_exact_at(&mut header, 0) {
            return unreadable("read the header", &e);
        }
        let keys = match self.vault.open_file(&header, &backing) {
            Ok(keys) => keys,
            Err(e) => return self.header_failure(e, &header, &backing, plain.as_deref()),
        };
        if chunk_count == 0 {
            return; // a header and no chunks: an empty file
        }
        let file = OpenChecked {
            fd,
            keys,
            backing,
            plain,
            chunk_count,
            data_end,
            either_last,
        };
        let segment = self.batch * SEGMENT_BATCHES;
        if chunk_count <= segment {
            return self.check_chunks(&file, 0, chunk_count, buf);
        }
        let file = Arc::new(file);
        let mut first = segment;
        while first < chunk_count {
            let end = (first + segment).min(chunk_count);
            self.queue.push(Job::Segment {
                file: file.clone(),
                first,
                end,
            });
            first = end;
        }
        self.check_chunks(&file, 0, segment, buf);
    }

    fn header_failure(&self, err: Error, header: &[u8], backing: &Path, plain: Option<&Path>) {
        let (kind, detail) = match err {
            Error::Integrity { .. } => (
                FindingKind::BadHeader,
                "file header is corrupt or not authentic".to_string(),
            ),
            Error::UnsupportedVersion(_) => (
                FindingKind::BadHeader,
                "file header version is newer than this envfs supports".to_string(),
            ),
            Error::WrongKey(_) => {
                let keys = FileHeader::parse(header)
                    .map(|(h, _)| {
                        h.slots
                            .iter()
                            .map(|s| format!("{} {}", s.provider.name(), s.key_id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                (
                    FindingKind::KeyUnavailable,
                    format!(
                        "the file key is wrapped only by {keys}, none of which this host holds"
                    ),
                )
            }
            Error::KeyService(msg) => (FindingKind::KeyServiceError, msg),
            other => (
                FindingKind::Unreadable,
                format!("cannot open the file header: {other}"),
            ),
        };
        self.report(kind, backing, plain, None, detail);
    }

    /// Authenticate chunks `first..end` of an opened file, a batch per read.
    fn check_chunks(&self, f: &OpenChecked, first: u64, end: u64, buf: &mut Vec<u8>) {
        let g = self.g;
        let bcs = g.backing_chunk_size() as usize;
        let mut index = first;
        while index < end {
            let n = self.batch.min(end - index);
            let start = g.chunk_backing_offset(index);
            let stop = g.chunk_backing_offset(index + n).min(f.data_end);
            buf.resize((stop - start) as usize, 0);
            if let Err(e) = f.fd.read_exact_at(buf, start) {
                // The file changed under us (or the store failed): stop with this file.
                let detail = format!("cannot read chunks: {e}");
                self.report(
                    FindingKind::Unreadable,
                    &f.backing,
                    f.plain.as_deref(),
                    Some(index),
                    detail,
                );
                return;
            }
            for (j, sealed) in buf.chunks_mut(bcs).enumerate() {
                let i = index + j as u64;
                if let Some((kind, detail)) = self.open_chunk(f, i, sealed) {
                    self.report(kind, &f.backing, f.plain.as_deref(), Some(i), detail);
                }
            }
            bump(&self.progress.chunks, n);
            bump(&self.progress.bytes, stop - start);
            index += n;
        }
    }

    /// Authenticate one chunk; what is wrong with it, if anything.
    fn open_chunk(
        &self,
        f: &OpenChecked,
        i: u64,
        sealed: &mut [u8],
    ) -> Option<(FindingKind, &'static str)> {
        let cipher = &f.keys.chunks;
        let tampered = (FindingKind::TamperedChunk, "chunk failed authentication");
        if i + 1 < f.chunk_count {
            return cipher
                .open_in_place(i, false, sealed)
                .err()
                .map(|_| tampered);
        }
        // The last chunk: the only one whose last flag is in question. Opening decrypts in
        // place, so a second attempt needs the original bytes.
        let mut copy = sealed.to_vec();
        if cipher.open_in_place(i, true, sealed).is_ok() {
            return None;
        }
        if cipher.open_in_place(i, false, &mut copy).is_err() {
            return Some(tampered);
        }
        if f.either_last {
            // The invalid length is already reported.
            return None;
        }
        Some((
            FindingKind::Truncated,
            "the file ends with a chunk written as an inner chunk: the chunks after it are \
             missing",
        ))
    }
}
