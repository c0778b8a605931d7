//! `envfs rewrap`: bring every file header in line with the vault's current key set —
//! add wrapped copies for added keys, drop copies for removed ones — without touching a
//! single content chunk.
//!
//! With the key hierarchy (vault/hierarchy.rs), "the vault's key set" means: the KMS keys
//! wrap the intermediate keys (whose files are brought in line first, one KMS call per key
//! rather than per file), and every header gets a slot of the current intermediate key in
//! their place; with it off, headers get the KMS keys' own slots back. Intermediate keys no
//! header uses any more are counted, never removed (vault/hierarchy.rs `unused`).
//!
//! Safe to interrupt and rerun: files already in line are skipped, and each header is
//! replaced through a journal (the new header is written and fsynced to
//! `.envfs-rewrap-<hash>` beside the file before it overwrites the old one in place), so a
//! crash mid-write leaves either header intact or a journal the next run restores from.
//! Safe while the vault is mounted elsewhere: the header keeps its file id and DEK, so open
//! files are unaffected, and the header lock keeps a mount creating a header and rewrap
//! replacing one from overlapping.

use crate::backing::sys::HeaderLock;
use crate::backing::{BackingRoot, Dir};
use crate::crypto::random;
use crate::error::{Error, IntegrityKind, Result};
use crate::format::config::CONFIG_FILE_NAME;
use crate::format::intermediate::{INTERMEDIATE_DIR, IntermediateKeyFile};
use crate::format::names::{BackingName, RESERVED_PREFIX, classify};
use crate::format::{FileHeader, KeySlot, ProviderKind};
use crate::keys::KeyContext;
use crate::vault::Vault;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const JOURNAL_PREFIX: &str = ".envfs-rewrap-";

#[derive(Debug, Default)]
pub struct RewrapReport {
    pub files: usize,
    pub rewrapped: usize,
    pub already_current: usize,
    /// Headers restored from a journal left by an interrupted run.
    pub recovered: usize,
    /// Files that could not be brought in line: backing path and why.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether the vault has intermediate keys (the hierarchy is on, or was).
    pub intermediate_keys: bool,
    /// Intermediate-key files whose slots were brought in line with the vault's KMS keys.
    pub intermediate_rewrapped: usize,
    /// Expired intermediate keys no header uses (kept; `None`: the walk was incomplete).
    pub intermediate_unused: Option<usize>,
    /// Intermediate keys the headers use after the rewrap (`None`: the walk was
    /// incomplete). `Some(0)` with the hierarchy off lets the config go back to version 2
    /// (`Vault::headers_left_intermediate_keys`).
    pub intermediate_in_use: Option<usize>,
}

/// Whether a backing file's name says it is not one of envfs' encrypted files (in an
/// encrypted-names vault every envfs file name is dot-free or a long-name entry).
fn classify_foreign(name: &OsStr) -> bool {
    classify(&name.to_string_lossy()) == BackingName::Foreign
}

/// One backing file: its directory below the root and its name. Directories are opened
/// again for each file (through `BackingRoot::dir`, never following a symlink), so a walk
/// of a large tree holds no descriptors.
#[derive(Debug, Clone)]
struct BackingFile {
    dir: PathBuf,
    name: OsString,
}

impl BackingFile {
    /// Its backing path, for messages.
    fn shown(&self, vault: &Vault) -> PathBuf {
        vault.root().join(&self.dir).join(&self.name)
    }
}

/// Every regular file with content, and every journal, in the vault.
/// In a plaintext-names vault user files may have any name, sidecar-like ones included.
fn walk(vault: &Vault, root: &BackingRoot) -> Result<(Vec<BackingFile>, Vec<BackingFile>)> {
    let plaintext_names = vault.config.plaintext_names;
    let mut files = Vec::new();
    let mut journals = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.dir(&rel)?;
        for entry in dir.entries()? {
            let text = entry.name.to_string_lossy();
            let file = BackingFile {
                dir: rel.clone(),
                name: entry.name.clone(),
            };
            if entry.kind == libc::S_IFDIR {
                // `envfs.keys/` holds intermediate keys, not files; no user directory
                // has the reserved prefix.
                let keys = rel.as_os_str().is_empty() && text == INTERMEDIATE_DIR;
                if !keys && !text.starts_with(RESERVED_PREFIX) {
                    stack.push(rel.join(&entry.name));
                }
            } else if text.starts_with(JOURNAL_PREFIX) {
                journals.push(file);
            } else if entry.kind == libc::S_IFREG
                && !(rel.as_os_str().is_empty() && text == CONFIG_FILE_NAME)
                && !text.starts_with(RESERVED_PREFIX)
                && (plaintext_names || classify(&text) != BackingName::Sidecar)
            {
                files.push(file);
            }
        }
    }
    Ok((files, journals))
}

/// The journal's name for file `name`.
fn journal_for(name: &OsStr) -> OsString {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    format!("{JOURNAL_PREFIX}{}", hex::encode(&digest[..16])).into()
}

/// Journal: target file name (u16 length + bytes), then the new header.
fn write_journal(dir: &Dir, journal: &OsStr, target: &OsStr, header: &[u8]) -> std::io::Result<()> {
    let name = target.as_bytes();
    let mut f = dir.open_file(
        journal,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )?;
    f.write_all(&(name.len() as u16).to_be_bytes())?;
    f.write_all(name)?;
    f.write_all(header)?;
    f.sync_all()?;
    dir.sync()
}

/// The whole of a journal (a few hundred bytes; anything longer is not one).
fn read_journal(dir: &Dir, journal: &OsStr) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = dir.open_file(journal, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let mut bytes = Vec::new();
    file.take(1 << 20).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Finish what an interrupted run started: if the journal's target no longer has an
/// authentic header, put the journaled one (authentic on its own) in place. The journal is
/// deleted only once the target is known to have an authentic header; if that cannot be
/// checked (the key service is down, say), it stays for the next run.
fn recover(vault: &Vault, root: &BackingRoot, journal: &BackingFile) -> Result<bool> {
    let dir = root.dir(&journal.dir)?;
    let bytes = read_journal(&dir, &journal.name)?;
    let h = vault.geometry.header_size as usize;
    let malformed =
        bytes.len() < 2 || bytes.len() != 2 + u16::from_be_bytes([bytes[0], bytes[1]]) as usize + h;
    if malformed {
        // Torn while being written: the header it was for was never touched.
        dir.unlink(&journal.name)?;
        return Ok(false);
    }
    let name_len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    let name = OsStr::from_bytes(&bytes[2..2 + name_len]);
    // The journal is on the (attacker-writable) backing store: its target must be a plain
    // name in the journal's own directory.
    if Path::new(name).file_name() != Some(name) || name.as_bytes().contains(&b'/') {
        dir.unlink(&journal.name)?;
        return Ok(false);
    }
    let target = BackingFile {
        dir: journal.dir.clone(),
        name: name.to_os_string(),
    };
    let shown = target.shown(vault);
    let header = &bytes[2 + name_len..];
    let file = match dir.open_file(name, libc::O_RDWR | libc::O_NONBLOCK, 0) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            dir.unlink(&journal.name)?;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let _lock = HeaderLock::acquire(&file)?;
    let mut current = vec![0u8; h];
    let readable = file.read_exact_at(&mut current, 0).is_ok();
    let restored = match vault.open_header(&current, &shown) {
        Ok(_) if readable => false,
        // Not an integrity problem (a key service error): decide on a later run.
        Err(e) if !matches!(e, Error::Integrity { .. }) => return Err(e),
        _ => {
            // Only a header for this very file: same file id as on disk, and authentic.
            if current.get(8..24) != header.get(8..24) {
                return Err(Error::Integrity {
                    path: shown,
                    chunk: None,
                    kind: IntegrityKind::Header,
                });
            }
            vault.open_header(header, &shown)?;
            file.write_all_at(header, 0)?;
            file.sync_all()?;
            true
        }
    };
    dir.unlink(&journal.name)?;
    Ok(restored)
}

/// Identity of a slot: provider and key id.
fn same_key(a: &KeySlot, b: &KeySlot) -> bool {
    a.provider == b.provider && a.key_id == b.key_id
}

/// Bring one file's header in line with `wanted` (`Vault::wanted_header_keys`). Returns
/// whether it changed. Notes in `in_use` the intermediate keys its header ends up with.
fn rewrap_file(
    vault: &Vault,
    root: &BackingRoot,
    at: &BackingFile,
    wanted: &[KeySlot],
    in_use: &Mutex<HashSet<[u8; 16]>>,
) -> Result<bool> {
    let note = |slots: &[KeySlot]| {
        let ids = slots
            .iter()
            .filter(|s| s.provider == ProviderKind::Intermediate)
            .filter_map(|s| IntermediateKeyFile::id_of_slot_key(&s.key_id));
        in_use.lock().unwrap().extend(ids);
    };
    let h = vault.geometry.header_size as usize;
    let path = &at.shown(vault);
    let dir = root.dir(&at.dir)?;
    let file = dir.open_file(&at.name, libc::O_RDWR | libc::O_NONBLOCK, 0)?;
    let _lock = HeaderLock::acquire(&file)?;
    let len = crate::backing::sys::fstat(&file)?.st_size as u64;
    if len < h as u64 {
        // Empty (no header) or damaged: nothing to rewrap; fsck reports damage.
        if len == 0 {
            return Ok(false);
        }
        return Err(Error::Integrity {
            path: path.to_path_buf(),
            chunk: None,
            kind: IntegrityKind::Header,
        });
    }
    let mut bytes = vec![0u8; h];
    file.read_exact_at(&mut bytes, 0)?;
    if !bytes.starts_with(crate::format::header::HEADER_MAGIC)
        && (vault.config.plaintext_names || classify_foreign(&at.name))
    {
        // Not a file envfs wrote (a sync client's own file, say): nothing to rewrap.
        return Ok(false);
    }
    // (A file that fails below leaves the walk incomplete: no key is then called unused.)
    if let Ok((parsed, _)) = FileHeader::parse(&bytes)
        && parsed.slots.len() == wanted.len()
        && parsed.slots.iter().zip(wanted).all(|(a, b)| same_key(a, b))
    {
        note(&parsed.slots);
        return Ok(false);
    }
    let (header, dek, keys) = vault.open_header(&bytes, path)?;
    let ctx = KeyContext::file(*vault.vault_id(), header.file_id);
    let wrappers = vault.wrappers();
    let mut slots = Vec::with_capacity(wanted.len());
    for want in wanted {
        if let Some(existing) = header.slots.iter().find(|s| same_key(s, want)) {
            slots.push(existing.clone());
            continue;
        }
        let wrapper = wrappers.iter().find(|w| w.recognises(want)).ok_or_else(|| {
            Error::WrongKey(format!(
                "cannot wrap for {} key {}: this host does not hold it (give its key file with --key-file)",
                want.provider.name(),
                want.key_id
            ))
        })?;
        // Where the service can re-wrap from a copy it made (of a key still in the vault),
        // the DEK is not sent back to it; if that fails, wrap the DEK we hold.
        let rewrapped = header
            .slots
            .iter()
            .filter(|s| wanted.iter().any(|w| same_key(s, w)))
            .find_map(|s| wrapper.rewrap_from(s, &ctx))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!("ReEncrypt failed ({e}); using Encrypt"))
                    .ok()
            });
        slots.push(match rewrapped {
            Some(slot) => slot,
            None => wrapper.wrap(&dek, &ctx)?,
        });
    }
    note(&slots);
    let new_header = FileHeader { slots, ..header };
    let new_bytes = vault.seal_header(&new_header, &keys)?;
    let journal = journal_for(&at.name);
    write_journal(&dir, &journal, &at.name, &new_bytes)?;
    file.write_all_at(&new_bytes, 0)?;
    file.sync_all()?;
    dir.unlink(&journal)?;
    Ok(true)
}

/// Rewrap every file of the vault with `workers` threads; `progress(done, total)` is called
/// as files finish.
pub fn rewrap(
    vault: &Vault,
    workers: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<RewrapReport> {
    let root = BackingRoot::open(vault.root())?;
    let (files, journals) = walk(vault, &root)?;
    let mut report = RewrapReport {
        files: files.len(),
        ..Default::default()
    };
    for j in &journals {
        match recover(vault, &root, j) {
            Ok(true) => report.recovered += 1,
            Ok(false) => {}
            Err(e) => report
                .failed
                .push((j.shown(vault), format!("journal kept: {e}"))),
        }
    }
    // Build the wrappers (which may connect to KMS) once, before the workers start, and
    // bring the intermediate keys' own slots in line before any header is moved to one.
    vault.wrappers();
    let hierarchy_used = vault.config.key_hierarchy.is_some()
        || root
            .root()
            .and_then(|r| r.stat(OsStr::new(INTERMEDIATE_DIR)))
            .is_ok();
    report.intermediate_keys = hierarchy_used;
    if hierarchy_used {
        let kms: Vec<_> = vault.hierarchy().services().to_vec();
        let wanted_kms = vault
            .config
            .header_slots()
            .filter(|s| s.provider == ProviderKind::AwsKms)
            .count();
        if kms.len() != wanted_kms {
            // Moving a header to an intermediate key that lacks a KMS key's slot would lock
            // out every host that has only that key.
            return Err(Error::KeyService(format!(
                "rewrap of a vault with intermediate keys needs every KMS key of the vault, \
                 and this host reaches {} of {wanted_kms} (see the warnings above); nothing \
                 was changed",
                kms.len()
            )));
        }
        report.intermediate_rewrapped =
            vault.hierarchy().bring_in_line(&kms, &mut report.failed)?;
    }
    let wanted = vault.wanted_header_keys()?;
    let in_use = Mutex::new(HashSet::new());
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let rewrapped = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = files.get(i) else { break };
                    match rewrap_file(vault, &root, file, &wanted, &in_use) {
                        Ok(true) => {
                            rewrapped.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => failed
                            .lock()
                            .unwrap()
                            .push((file.shown(vault), e.to_string())),
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, files.len());
                }
            });
        }
    });
    report.rewrapped = rewrapped.into_inner();
    let failed = failed.into_inner().unwrap();
    report.already_current = report.files - report.rewrapped - failed.len();
    let complete = failed.is_empty() && report.failed.is_empty();
    report.failed.extend(failed);
    // Only a walk that read every header knows which intermediate keys are unused.
    if hierarchy_used && complete {
        let in_use = in_use.into_inner().unwrap();
        report.intermediate_unused = Some(vault.hierarchy().unused(&in_use)?.len());
        report.intermediate_in_use = Some(in_use.len());
    }
    Ok(report)
}

/// A random name for a temporary file (hidden from listings, reported by fsck if left).
pub(crate) fn temp_name(what: &str) -> std::ffi::OsString {
    format!(
        "{RESERVED_PREFIX}{what}-{}",
        hex::encode(random::array::<8>())
    )
    .into()
}

/// Files whose headers carry no wrapped copy for any key of the vault but `removed`: after
/// removing that key nothing could open them. Reads headers only (no key is used).
pub fn files_only_wrapped_by(vault: &Vault, removed: &KeySlot) -> Result<Vec<PathBuf>> {
    let h = vault.geometry.header_size as usize;
    let remaining: Vec<&KeySlot> = vault
        .config
        .header_slots()
        .filter(|s| !crate::vault::goes_with(removed, s))
        .collect();
    let root = BackingRoot::open(vault.root())?;
    let openable = intermediate_keys_opened_by(vault, &root, &remaining);
    let (files, _) = walk(vault, &root)?;
    let mut stranded = Vec::new();
    for at in files {
        let Ok(file) = root
            .dir(&at.dir)
            .and_then(|d| d.open_file(&at.name, libc::O_RDONLY | libc::O_NONBLOCK, 0))
        else {
            continue;
        };
        let mut bytes = vec![0u8; h];
        if file.read_exact_at(&mut bytes, 0).is_err() {
            continue;
        }
        // An intermediate key's slot opens the file while a remaining key opens the
        // intermediate key.
        if let Ok((header, _)) = FileHeader::parse(&bytes)
            && !header.slots.iter().any(|s| {
                remaining.iter().any(|r| same_key(s, r))
                    || IntermediateKeyFile::id_of_slot_key(&s.key_id).is_some_and(|id| {
                        s.provider == ProviderKind::Intermediate && openable.contains(&id)
                    })
            })
        {
            stranded.push(at.shown(vault));
        }
    }
    Ok(stranded)
}

/// The intermediate keys whose files are authentic (MAC, name) and carry a slot of one of
/// `keys`: a planted file must not make a removal look safe.
fn intermediate_keys_opened_by(
    vault: &Vault,
    root: &BackingRoot,
    keys: &[&KeySlot],
) -> HashSet<[u8; 16]> {
    use std::io::Read;
    let Ok(dir) = root
        .root()
        .and_then(|r| r.subdir(OsStr::new(INTERMEDIATE_DIR)))
    else {
        return HashSet::new();
    };
    let mut out = HashSet::new();
    for name in dir.list().unwrap_or_default() {
        let mut bytes = Vec::new();
        let read = dir
            .open_file(&name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .and_then(|f| f.take(1 << 16).read_to_end(&mut bytes));
        if read.is_err() {
            continue;
        }
        if let Ok(file) = vault.hierarchy().verify(&name.to_string_lossy(), &bytes)
            && file
                .slots
                .iter()
                .any(|s| keys.iter().any(|k| same_key(s, k)))
        {
            out.insert(file.key_id);
        }
    }
    out
}
