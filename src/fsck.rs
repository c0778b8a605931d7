//! `envfs fsck`: check a whole vault without mounting it.
//!
//! The walk covers every entry of the backing directory (symlinks are never followed):
//! every name is decrypted (long names through their sidecars), every symlink target is
//! decrypted, and for every regular file the length is checked against the size arithmetic,
//! the header is parsed, unwrapped and authenticated, and then every chunk is authenticated.
//! Each problem becomes a [`Finding`] with its kind, the backing path, the plaintext path when
//! the names leading to it decrypt, and the chunk index where one is meant.
//!
//! Directories and files are work items on one queue shared by a few worker threads; large
//! files are split into segments so that one big file does not leave the other workers idle.
//! Chunks are read in batches (one `pread` for up to [`BATCH_CHUNKS`] chunks).
//!
//! Nothing here logs: plaintext names appear only in the report, which the caller prints to
//! the user. Findings never carry key material or file contents.
//!
//! `repair_names` removes only what cannot hold user data: long-name sidecars whose entry is
//! gone, and envfs' own leftover temporary files (`.envfs-*`). Nothing else is ever changed.

use crate::crypto::FileKeys;
use crate::error::{Error, Result};
use crate::format::config::{CONFIG_FILE_NAME, NameEncoding};
use crate::format::geometry::BadLength;
use crate::format::names::{self as spelling, BackingName, RESERVED_PREFIX};
use crate::format::{FileHeader, Geometry};
use crate::vault::Vault;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Most chunks read with one `pread`.
pub const BATCH_CHUNKS: u64 = 256;
/// Most bytes read with one `pread` (bounds memory with large chunk sizes).
const BATCH_BYTES: u64 = 8 << 20;
/// Files with more batches than this are split into segments checked by several workers.
const SEGMENT_BATCHES: u64 = 16;

/// What is wrong with one backing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// A chunk failed authentication (bit flip, zeroed, swapped or moved chunk, or a header
    /// copied from another file).
    TamperedChunk,
    /// The length is valid, but the last chunk was written as an inner chunk: the chunks
    /// after it are missing (the file was cut at a chunk boundary).
    Truncated,
    /// The backing length is one no writer produces (cut mid-chunk, or bytes appended).
    InvalidLength,
    /// The header is malformed, not authentic, or of a newer version.
    BadHeader,
    /// No key this host holds is named by the header.
    KeyUnavailable,
    /// The key service failed or refused to unwrap the header's key.
    KeyServiceError,
    /// An encrypted name does not decrypt.
    UndecryptableName,
    /// An encrypted symlink target does not decrypt.
    UndecryptableSymlink,
    /// A long-name entry without its sidecar.
    MissingSidecar,
    /// A long-name entry whose sidecar does not hold the name the entry is named after.
    MismatchedSidecar,
    /// A long-name sidecar whose entry is gone.
    OrphanedSidecar,
    /// A backing entry envfs did not write.
    UnknownFile,
    /// One of envfs' temporary files (`.envfs-*`), left by an interrupted operation.
    LeftoverTemp,
    /// The backing store refused to list or read the entry.
    Unreadable,
}

impl FindingKind {
    pub const ALL: [FindingKind; 14] = [
        FindingKind::TamperedChunk,
        FindingKind::Truncated,
        FindingKind::InvalidLength,
        FindingKind::BadHeader,
        FindingKind::KeyUnavailable,
        FindingKind::KeyServiceError,
        FindingKind::UndecryptableName,
        FindingKind::UndecryptableSymlink,
        FindingKind::MissingSidecar,
        FindingKind::MismatchedSidecar,
        FindingKind::OrphanedSidecar,
        FindingKind::UnknownFile,
        FindingKind::LeftoverTemp,
        FindingKind::Unreadable,
    ];

    /// The stable identifier used in both outputs (documented in docs/CLI.md).
    pub fn id(self) -> &'static str {
        match self {
            FindingKind::TamperedChunk => "tampered-chunk",
            FindingKind::Truncated => "truncated",
            FindingKind::InvalidLength => "invalid-length",
            FindingKind::BadHeader => "bad-header",
            FindingKind::KeyUnavailable => "key-unavailable",
            FindingKind::KeyServiceError => "key-service-error",
            FindingKind::UndecryptableName => "undecryptable-name",
            FindingKind::UndecryptableSymlink => "undecryptable-symlink",
            FindingKind::MissingSidecar => "missing-sidecar",
            FindingKind::MismatchedSidecar => "mismatched-sidecar",
            FindingKind::OrphanedSidecar => "orphaned-sidecar",
            FindingKind::UnknownFile => "unknown-file",
            FindingKind::LeftoverTemp => "leftover-temp",
            FindingKind::Unreadable => "unreadable",
        }
    }

    pub fn from_id(id: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// Whether `--repair-names` removes entries of this kind.
    pub fn repairable(self) -> bool {
        matches!(
            self,
            FindingKind::OrphanedSidecar | FindingKind::LeftoverTemp
        )
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// The backing entry (absolute when the vault root given was).
    pub backing_path: PathBuf,
    /// The plaintext path inside the vault, when every name leading to it decrypts.
    pub path: Option<PathBuf>,
    /// The chunk index, for chunk-level findings.
    pub chunk: Option<u64>,
    /// A short explanation (no key material, no file contents, no plaintext).
    pub detail: String,
    /// `--repair-names` removed the entry.
    pub repaired: bool,
}

/// What the walk covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Regular files (each hard-linked inode counted once per name).
    pub files: u64,
    /// Directories below the root.
    pub directories: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes.
    pub other: u64,
    /// Chunks authenticated (or found failing).
    pub chunks: u64,
    /// Backing bytes read from file bodies.
    pub bytes: u64,
    /// Findings so far.
    pub findings: u64,
}

/// Live counters, readable from another thread while the check runs (for a progress line).
#[derive(Debug, Default)]
pub struct Progress {
    files: AtomicU64,
    directories: AtomicU64,
    symlinks: AtomicU64,
    other: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
    findings: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            files: get(&self.files),
            directories: get(&self.directories),
            symlinks: get(&self.symlinks),
            other: get(&self.other),
            chunks: get(&self.chunks),
            bytes: get(&self.bytes),
            findings: get(&self.findings),
        }
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

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

/// The outcome of a check.
#[derive(Debug, Clone)]
pub struct Report {
    /// Sorted by backing path, then chunk.
    pub findings: Vec<Finding>,
    pub stats: Stats,
}

impl Report {
    /// Findings still present (not removed by `--repair-names`).
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }

    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired).count()
    }

    pub fn is_clean(&self) -> bool {
        self.problems() == 0
    }

    /// Number of findings per kind; `repaired` selects removed or remaining ones.
    pub fn counts(&self, repaired: bool) -> BTreeMap<FindingKind, usize> {
        let mut counts = BTreeMap::new();
        for f in self.findings.iter().filter(|f| f.repaired == repaired) {
            *counts.entry(f.kind).or_insert(0) += 1;
        }
        counts
    }

    /// One line per finding, then a summary line.
    pub fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for f in &self.findings {
            let mut line = format!("{}: ", f.kind.id());
            if let Some(p) = &f.path {
                line.push_str(&escape_path(p));
                if let Some(c) = f.chunk {
                    let _ = write!(line, ", chunk {c}");
                }
                line.push_str(": ");
            } else if let Some(c) = f.chunk {
                let _ = write!(line, "chunk {c}: ");
            }
            let _ = write!(
                line,
                "{} [backing {}]",
                f.detail,
                escape_path(&f.backing_path)
            );
            if f.repaired {
                line.push_str(" (removed)");
            }
            writeln!(out, "{line}")?;
        }
        writeln!(out, "{}", self.summary_line())
    }

    pub fn summary_line(&self) -> String {
        let s = &self.stats;
        let mut line = format!(
            "checked {} files, {} directories, {} symlinks, {} chunks ({}): ",
            s.files,
            s.directories,
            s.symlinks,
            s.chunks,
            human_bytes(s.bytes)
        );
        let list = |counts: BTreeMap<FindingKind, usize>| {
            counts
                .iter()
                .map(|(k, n)| format!("{} {n}", k.id()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.problems() {
            0 => line.push_str("no problems found"),
            1 => line.push_str(&format!("1 problem ({})", list(self.counts(false)))),
            n => line.push_str(&format!("{n} problems ({})", list(self.counts(false)))),
        }
        if self.repaired() > 0 {
            let _ = write!(
                line,
                "; removed {} ({})",
                self.repaired(),
                list(self.counts(true))
            );
        }
        line
    }

    /// The whole report as one JSON document.
    pub fn to_json(&self) -> String {
        let mut j = String::from("{\"findings\":[");
        for (i, f) in self.findings.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            j.push_str("{\"kind\":");
            json_str(&mut j, f.kind.id());
            j.push_str(",\"path\":");
            match &f.path {
                Some(p) => json_str(&mut j, &p.to_string_lossy()),
                None => j.push_str("null"),
            }
            j.push_str(",\"backing_path\":");
            json_str(&mut j, &f.backing_path.to_string_lossy());
            j.push_str(",\"chunk\":");
            match f.chunk {
                Some(c) => {
                    let _ = write!(j, "{c}");
                }
                None => j.push_str("null"),
            }
            j.push_str(",\"detail\":");
            json_str(&mut j, &f.detail);
            let _ = write!(j, ",\"repaired\":{}}}", f.repaired);
        }
        let s = &self.stats;
        let _ = write!(
            j,
            "],\"summary\":{{\"files\":{},\"directories\":{},\"symlinks\":{},\"other\":{},\
             \"chunks\":{},\"bytes\":{},\"problems\":{},\"repaired\":{},\"by_kind\":{{",
            s.files,
            s.directories,
            s.symlinks,
            s.other,
            s.chunks,
            s.bytes,
            self.problems(),
            self.repaired()
        );
        for (i, (kind, n)) in self.counts(false).iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            json_str(&mut j, kind.id());
            let _ = write!(j, ":{n}");
        }
        j.push_str("}}}");
        j
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A path on one line: control characters escaped, invalid UTF-8 replaced.
fn escape_path(p: &Path) -> String {
    let lossy = p.to_string_lossy();
    let mut out = String::with_capacity(lossy.len());
    for c in lossy.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1024.0;
        unit = u;
        if v < 1024.0 {
            break;
        }
    }
    format!("{v:.1} {unit}")
}

/// Check the whole vault. Fails only when the walk cannot start (the root cannot be
/// listed); everything found below the root is a finding.
pub fn check(vault: &Vault, opts: &Options, progress: &Progress) -> Result<Report> {
    let root = vault.root().to_path_buf();
    // An unlistable root is an operational error, not a finding.
    fs::read_dir(&root).map_err(|e| {
        Error::Io(io::Error::new(
            e.kind(),
            format!("cannot list {}: {e}", root.display()),
        ))
    })?;
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
    checker.queue.push(Job::Dir {
        backing: root,
        plain: Some(PathBuf::new()),
        at_root: true,
    });
    std::thread::scope(|s| {
        for _ in 0..opts.workers.max(1) {
            s.spawn(|| checker.work());
        }
    });
    let mut findings = checker.findings.into_inner().unwrap();
    findings.sort_by(|a, b| {
        (&a.backing_path, a.chunk, a.kind).cmp(&(&b.backing_path, b.chunk, b.kind))
    });
    if opts.repair_names {
        for f in findings.iter_mut().filter(|f| f.kind.repairable()) {
            repair(f);
        }
    }
    let stats = progress.snapshot();
    Ok(Report { findings, stats })
}

/// Remove a repairable entry, re-checking first that it is still what the walk saw.
fn repair(f: &mut Finding) {
    match fs::symlink_metadata(&f.backing_path) {
        Ok(meta) if meta.file_type().is_file() => {}
        _ => return,
    }
    // A rewrap journal may hold the only good copy of a header: `envfs rewrap` finishes it.
    if f.backing_path
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b".envfs-rewrap-"))
    {
        f.detail
            .push_str(" (a pending rewrap journal: run envfs rewrap to finish it; not removed)");
        return;
    }
    if f.kind == FindingKind::OrphanedSidecar {
        // The entry may have been created since the walk (a mount at work): keep it then.
        let name = f.backing_path.as_os_str().as_bytes();
        let entry = Path::new(OsStr::from_bytes(&name[..name.len() - ".name".len()]));
        if fs::symlink_metadata(entry).is_ok() {
            return;
        }
    }
    match fs::remove_file(&f.backing_path) {
        Ok(()) => f.repaired = true,
        Err(e) => {
            let _ = write!(f.detail, " (could not remove it: {e})");
        }
    }
}

// ---- the work queue ---------------------------------------------------------------------

enum Job {
    Dir {
        backing: PathBuf,
        /// `None` once a name on the way failed to decrypt.
        plain: Option<PathBuf>,
        at_root: bool,
    },
    File {
        backing: PathBuf,
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
                    backing,
                    plain,
                    at_root,
                } => self.check_dir(&backing, plain.as_deref(), at_root),
                Job::File { backing, plain } => self.check_file(backing, plain, &mut buf),
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
            detail: detail.into(),
            repaired: false,
        });
    }

    fn encoding(&self) -> NameEncoding {
        self.vault.config.name_encoding
    }

    // ---- directories and names ----------------------------------------------------------

    fn check_dir(&self, dir: &Path, plain: Option<&Path>, at_root: bool) {
        let listing = fs::read_dir(dir).and_then(|entries| {
            entries
                .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
                .collect::<io::Result<Vec<_>>>()
        });
        let entries = match listing {
            Ok(entries) => entries,
            Err(e) => {
                let detail = format!("cannot list the directory: {e}");
                self.report(FindingKind::Unreadable, dir, plain, None, detail);
                return;
            }
        };
        let plaintext_names = self.vault.config.plaintext_names;
        // For telling orphaned sidecars from those of present entries.
        let present: HashSet<Vec<u8>> = if plaintext_names {
            HashSet::new()
        } else {
            entries
                .iter()
                .map(|(n, _)| self.name_key(n.as_bytes()))
                .collect()
        };
        for (name, kind) in entries {
            let backing = dir.join(&name);
            if at_root && name == CONFIG_FILE_NAME {
                continue; // verified by Vault::open
            }
            if name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes()) {
                if kind.is_file() {
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
            let child_plain = if plaintext_names {
                plain.map(|p| p.join(&name))
            } else {
                match self.decrypt_entry(dir, &name, &backing, &kind, &present) {
                    NameCheck::Named(plain_name) => plain.map(|p| p.join(plain_name)),
                    NameCheck::Damaged => None,
                    NameCheck::Skip => continue,
                }
            };
            self.dispatch(backing, child_plain, kind);
        }
    }

    /// The key under which a name is looked up in a directory listing: base32 vaults live
    /// on backends that may change the case of names.
    fn name_key(&self, name: &[u8]) -> Vec<u8> {
        match self.encoding() {
            NameEncoding::Base64Url => name.to_vec(),
            NameEncoding::Base32 => name.to_ascii_lowercase(),
        }
    }

    /// Classify and decrypt one entry of an encrypted-names directory, reporting what is
    /// wrong with its name.
    fn decrypt_entry(
        &self,
        dir: &Path,
        name: &OsStr,
        backing: &Path,
        kind: &fs::FileType,
        present: &HashSet<Vec<u8>>,
    ) -> NameCheck {
        let Some(text) = name.to_str() else {
            self.report(
                FindingKind::UnknownFile,
                backing,
                None,
                None,
                "not written by envfs (the name is not UTF-8)",
            );
            return NameCheck::Skip;
        };
        let encoded = match spelling::classify(text) {
            BackingName::Foreign => {
                self.report(
                    FindingKind::UnknownFile,
                    backing,
                    None,
                    None,
                    "not written by envfs (not an encrypted name)",
                );
                return NameCheck::Skip;
            }
            BackingName::Sidecar => {
                if !kind.is_file() {
                    self.report(
                        FindingKind::UnknownFile,
                        backing,
                        None,
                        None,
                        "not written by envfs (named like a long-name sidecar, but not a file)",
                    );
                    return NameCheck::Skip;
                }
                let entry = &text.as_bytes()[..text.len() - ".name".len()];
                if !present.contains(&self.name_key(entry)) {
                    self.report(
                        FindingKind::OrphanedSidecar,
                        backing,
                        None,
                        None,
                        "long-name sidecar whose entry is gone",
                    );
                }
                return NameCheck::Skip;
            }
            BackingName::Long(entry) => match self.read_sidecar(dir, entry, backing) {
                Some(encoded) => encoded,
                None => return NameCheck::Damaged,
            },
            BackingName::Encrypted(e) => {
                if !spelling::looks_encrypted(self.encoding(), e) {
                    self.report(
                        FindingKind::UnknownFile,
                        backing,
                        None,
                        None,
                        "not written by envfs (not an encrypted name)",
                    );
                    return NameCheck::Skip;
                }
                e.to_string()
            }
        };
        match crate::fs::names::open_name(&self.vault.names, self.encoding(), &encoded) {
            Some(p) => NameCheck::Named(p),
            None => {
                self.report(
                    FindingKind::UndecryptableName,
                    backing,
                    None,
                    None,
                    "encrypted name is corrupt or not authentic",
                );
                NameCheck::Damaged
            }
        }
    }

    /// The full encoded name behind long-name entry `entry`, or `None` (reported) when its
    /// sidecar is missing or does not match.
    fn read_sidecar(&self, dir: &Path, entry: &str, backing: &Path) -> Option<String> {
        let sidecar = dir.join(spelling::sidecar_for(entry));
        let bytes = match crate::fs::names::read_sidecar_file(&sidecar) {
            Ok(b) => b,
            // Not a regular sidecar-sized file: as wrong as wrong content.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Vec::new(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.report(
                    FindingKind::MissingSidecar,
                    backing,
                    None,
                    None,
                    "long-name entry without its sidecar (the name is lost)",
                );
                return None;
            }
            Err(e) => {
                let detail = format!("cannot read the long-name sidecar: {e}");
                self.report(FindingKind::Unreadable, &sidecar, None, None, detail);
                return None;
            }
        };
        let matches = spelling::sidecar_name(self.encoding(), entry, &bytes);
        if matches.is_none() {
            self.report(
                FindingKind::MismatchedSidecar,
                backing,
                None,
                None,
                "the long-name sidecar does not hold this entry's name",
            );
        }
        matches
    }

    /// Queue or check one named entry by its type.
    fn dispatch(&self, backing: PathBuf, plain: Option<PathBuf>, kind: fs::FileType) {
        if kind.is_dir() {
            bump(&self.progress.directories, 1);
            self.queue.push(Job::Dir {
                backing,
                plain,
                at_root: false,
            });
        } else if kind.is_file() {
            self.queue.push(Job::File { backing, plain });
        } else if kind.is_symlink() {
            bump(&self.progress.symlinks, 1);
            self.check_symlink(&backing, plain.as_deref());
        } else {
            bump(&self.progress.other, 1);
        }
    }

    fn check_symlink(&self, backing: &Path, plain: Option<&Path>) {
        let target = match fs::read_link(backing) {
            Ok(t) => t,
            Err(e) => {
                let detail = format!("cannot read the symlink: {e}");
                self.report(FindingKind::Unreadable, backing, plain, None, detail);
                return;
            }
        };
        if self.vault.config.plaintext_names {
            return;
        }
        let ok = crate::fs::names::open_link_target(
            &self.vault.names,
            self.encoding(),
            target.as_os_str(),
        )
        .is_some();
        if !ok {
            self.report(
                FindingKind::UndecryptableSymlink,
                backing,
                plain,
                None,
                "encrypted symlink target is corrupt or not authentic",
            );
        }
    }

    // ---- files --------------------------------------------------------------------------

    fn check_file(&self, backing: PathBuf, plain: Option<PathBuf>, buf: &mut Vec<u8>) {
        bump(&self.progress.files, 1);
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
        let fd = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&backing)
        {
            Ok(fd) => fd,
            Err(e) => return unreadable("open the file", &e),
        };
        let meta = match fd.metadata() {
            Ok(m) => m,
            Err(e) => return unreadable("stat the file", &e),
        };
        if !meta.is_file() {
            return; // replaced since the listing
        }
        if meta.nlink() > 1
            && !self
                .seen_inodes
                .lock()
                .unwrap()
                .insert((meta.dev(), meta.ino()))
        {
            return; // another name of an inode already checked
        }
        let g = self.g;
        let len = meta.len();
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

/// What an encrypted-names directory entry turned out to be.
enum NameCheck {
    /// A user entry with this plaintext name.
    Named(OsString),
    /// A user entry whose name is lost (reported); its contents are still checked.
    Damaged,
    /// Not a user entry (envfs' own file or a foreign one; reported if need be).
    Skip,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let finding = |kind, path: Option<&str>, chunk, repaired| Finding {
            kind,
            backing_path: PathBuf::from("/raw/Ab\"c\\d"),
            path: path.map(PathBuf::from),
            chunk,
            detail: "what\tis wrong".into(),
            repaired,
        };
        Report {
            findings: vec![
                finding(
                    FindingKind::TamperedChunk,
                    Some("odd \"name\"\nwith\u{1}controls"),
                    Some(7),
                    false,
                ),
                finding(FindingKind::OrphanedSidecar, None, None, true),
            ],
            stats: Stats {
                files: 3,
                chunks: 9,
                bytes: 5 << 20,
                ..Stats::default()
            },
        }
    }

    #[test]
    fn json_is_well_formed_whatever_the_names() {
        let r = report();
        let doc: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let f = &doc["findings"][0];
        assert_eq!(f["kind"], "tampered-chunk");
        assert_eq!(f["path"], "odd \"name\"\nwith\u{1}controls");
        assert_eq!(f["backing_path"], "/raw/Ab\"c\\d");
        assert_eq!(f["chunk"], 7);
        assert_eq!(doc["findings"][1]["path"], serde_json::Value::Null);
        assert_eq!(doc["findings"][1]["repaired"], true);
        assert_eq!(doc["summary"]["problems"], 1);
        assert_eq!(doc["summary"]["repaired"], 1);
        assert_eq!(doc["summary"]["by_kind"]["tampered-chunk"], 1);
        assert!(doc["summary"]["by_kind"].get("orphaned-sidecar").is_none());
    }

    #[test]
    fn text_has_one_line_per_finding_and_a_summary() {
        let mut out = Vec::new();
        report().write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("tampered-chunk: odd \"name\"\\nwith\\u{1}controls, chunk 7: ")
        );
        assert!(lines[1].ends_with("(removed)"));
        assert_eq!(
            lines[2],
            "checked 3 files, 0 directories, 0 symlinks, 9 chunks (5.0 MiB): 1 problem \
             (tampered-chunk 1); removed 1 (orphaned-sidecar 1)"
        );
    }

    #[test]
    fn kind_ids_round_trip() {
        for kind in FindingKind::ALL {
            assert_eq!(FindingKind::from_id(kind.id()), Some(kind));
        }
    }
}
