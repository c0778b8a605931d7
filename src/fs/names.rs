//! Mapping between plaintext names (what the mount shows) and backing names (what the
//! backing directory holds), including long names and their sidecars.
//!
//! Names are encrypted per path component with AES-SIV, with no per-directory IV file, so
//! that sync services see no extra metadata files to conflict on and a directory rename is
//! one backing rename. See format/names.rs for the spelling.

use super::copy_misses::CopyMisses;
use super::name_cache::NameCache;
use crate::backing::{BackingRoot, Dir};
use crate::crypto::SivCipher;
use crate::crypto::siv::domain;
use crate::error::{Error, IntegrityKind, Result};
use crate::format::config::{CONFIG_FILE_NAME, NameEncoding};
use crate::format::names::{self as spelling, BackingName, RESERVED_PREFIX};
use crate::format::sync_names::{self, Client, CopyKind, SYNCTHING_VERSIONS};
use crate::vault::Vault;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// The longest plaintext name (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Where one plaintext name lives in its backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingEntry {
    /// The directory entry's name in the backing directory.
    pub name: OsString,
    /// For a long name: the full encoded name, which its sidecar must hold.
    pub long: Option<String>,
    /// For a sync client's copy of another entry (`Judged::Copy`): that entry's backing
    /// name. A copy of a long name has no sidecar of its own; it shares the original's.
    pub copy_of: Option<OsString>,
}

impl BackingEntry {
    /// An entry under its own (encrypted or plaintext) name.
    pub fn plain(name: OsString, long: Option<String>) -> BackingEntry {
        BackingEntry {
            name,
            long,
            copy_of: None,
        }
    }

    pub fn sidecar_name(&self) -> Option<OsString> {
        let owner = self.copy_of.as_ref().unwrap_or(&self.name);
        self.long
            .as_ref()
            .map(|_| OsString::from(spelling::sidecar_for(&owner.to_string_lossy())))
    }
}

pub struct NameMap<'v> {
    vault: &'v Vault,
    cache: &'v NameCache,
    misses: &'v CopyMisses,
}

impl<'v> NameMap<'v> {
    pub fn new(vault: &'v Vault, cache: &'v NameCache, misses: &'v CopyMisses) -> NameMap<'v> {
        NameMap {
            vault,
            cache,
            misses,
        }
    }

    fn plaintext(&self) -> bool {
        self.vault.config.plaintext_names
    }

    /// Check a plaintext name a user gave. `at_root` matters only in plaintext-names vaults,
    /// where the config file shares the root directory with user files.
    pub fn check_name(&self, name: &OsStr, at_root: bool) -> Result<()> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
            return Err(Error::from_errno(libc::EINVAL));
        }
        if bytes.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        if self.plaintext() && is_reserved_plain(bytes, at_root) {
            return Err(Error::ReservedName);
        }
        Ok(())
    }

    /// The backing entry for a plaintext name.
    pub fn encrypt(&self, name: &OsStr, at_root: bool) -> Result<BackingEntry> {
        self.check_name(name, at_root)?;
        if self.plaintext() {
            return Ok(BackingEntry::plain(name.to_os_string(), None));
        }
        Ok(self.cache.get_or_insert(name, || self.seal(name)))
    }

    /// Encrypt and spell one (already checked) name.
    fn seal(&self, name: &OsStr) -> BackingEntry {
        let sealed = self.vault.names.encrypt(&[domain::NAME], name.as_bytes());
        let encoded = spelling::encode(self.vault.config.name_encoding, &sealed);
        if encoded.len() > self.vault.config.long_name_limit as usize {
            let entry = spelling::long_name_entry(self.vault.config.name_encoding, &encoded);
            BackingEntry::plain(entry.into(), Some(encoded))
        } else {
            BackingEntry::plain(encoded.into(), None)
        }
    }

    /// The backing entry that plaintext name `name` of backing directory `dir` stands for:
    /// its own encrypted name, unless that does not exist and the name is what the listing
    /// shows for a sync client's copy of another entry (`Judged::Copy`), in which case it
    /// is that copy. The entry need not exist (a name about to be created resolves to its
    /// own encrypted name). Only names that carry a sync client's marker cost anything
    /// more than `encrypt`: a stat per candidate spelling of the copy, and none while the
    /// name is a remembered miss (`copy_misses`).
    pub fn resolve(&self, dir: &Dir, name: &OsStr, at_root: bool) -> Result<BackingEntry> {
        if at_root && !self.plaintext() && name == SYNCTHING_VERSIONS {
            // Syncthing's old versions, reachable by name where Syncthing keeps them.
            if dir
                .stat(name)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            {
                return Ok(BackingEntry::plain(name.to_os_string(), None));
            }
        }
        let own = self.encrypt(name, at_root)?;
        if self.plaintext() {
            return Ok(own);
        }
        let readings = sync_names::readings(name.as_bytes());
        if readings.is_empty() || self.misses.known(dir.rel(), name) {
            return Ok(own);
        }
        let Some(copy) = self.find_copy(dir, name, at_root, &readings)? else {
            self.misses.remember(dir.rel(), name);
            return Ok(own);
        };
        // The real name wins over a copy shown under it.
        match dir.stat(&own.name) {
            Ok(_) => Ok(own),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(copy),
            Err(e) => Err(e.into()),
        }
    }

    /// The sync client's copy that the listing of `dir` shows as `shown`, if there is one.
    /// Each reading of `shown` names an original and a marker; the copy's backing name is
    /// the original's with the marker where the client puts it. Shown names that cannot be
    /// read back that way (cut to NAME_MAX, an extension dropped to fit, more than one
    /// marker) are found by judging the directory's marked entries instead, whenever the
    /// name holds a marker more specific than OneDrive's loose `-<host>`.
    fn find_copy(
        &self,
        dir: &Dir,
        shown: &OsStr,
        at_root: bool,
        readings: &[sync_names::Reading],
    ) -> Result<Option<BackingEntry>> {
        let is_it = |candidate: &OsStr| match judge(self.vault, dir, candidate, at_root) {
            Judged::Copy(copy) if copy.shown == shown => Some(copy),
            _ => None,
        };
        let search = sync_names::may_be_cut(shown.as_bytes())
            || readings.iter().any(|r| r.client != Client::OneDrive);
        for reading in readings {
            let original = OsStr::from_bytes(&reading.original);
            if sync_names::shown_name(&reading.original, &reading.marker) != shown.as_bytes()
                || self.check_name(original, at_root).is_err()
            {
                continue;
            }
            let original = self.encrypt(original, at_root)?;
            for spelling in sync_names::backing_spellings(original.name.as_bytes(), &reading.marker)
            {
                let candidate = OsString::from_vec(spelling);
                if dir.stat(&candidate).is_ok() && is_it(&candidate).is_some() {
                    return Ok(Some(BackingEntry {
                        name: candidate,
                        long: original.long,
                        copy_of: Some(original.name),
                    }));
                }
            }
        }
        if !search {
            return Ok(None);
        }
        for name in dir.list()? {
            if sync_names::readings(name.as_bytes()).is_empty() {
                continue;
            }
            if let Some(copy) = is_it(&name) {
                let long = copy.original_long;
                return Ok(Some(BackingEntry {
                    name,
                    long,
                    copy_of: Some(copy.original),
                }));
            }
        }
        Ok(None)
    }

    /// The backing path, relative to the backing root, of a mount-relative plaintext path
    /// ("" is the root), whose components are meant to exist. A long name is held to its
    /// sidecar here exactly as a listing holds it (`judge`): an entry whose sidecar is
    /// missing or wrong is left out of listings, so it must not open by name either
    /// (docs/SEMANTICS.md §8).
    pub fn backing_rel(&self, root: &BackingRoot, path: &Path) -> Result<PathBuf> {
        let mut out = PathBuf::new();
        let mut at_root = true;
        for component in path.components() {
            match component {
                Component::Normal(name) => {
                    let marked = !self.plaintext()
                        && ((at_root && name == SYNCTHING_VERSIONS)
                            || !sync_names::readings(name.as_bytes()).is_empty());
                    let entry = if marked {
                        // `resolve` judges a copy (its original's sidecar included).
                        self.resolve(&*root.dir_cached(&out)?, name, at_root)?
                    } else {
                        self.encrypt(name, at_root)?
                    };
                    if entry.long.is_some() && entry.copy_of.is_none() {
                        self.verify_long_entry(root, &out, &entry)?;
                    }
                    out.push(entry.name);
                    at_root = false;
                }
                Component::CurDir => {}
                _ => return Err(Error::from_errno(libc::EINVAL)),
            }
        }
        Ok(out)
    }

    /// Whether the long-name entry `entry` of backing directory `dir` (relative to `root`)
    /// may be used by name: its sidecar must be the one `judge` accepts. A name with neither
    /// entry nor sidecar is simply not there (ENOENT); an entry without a valid sidecar is
    /// an integrity failure.
    fn verify_long_entry(
        &self,
        root: &BackingRoot,
        dir: &Path,
        entry: &BackingEntry,
    ) -> Result<()> {
        let name = entry.name.to_string_lossy();
        let sidecar = dir.join(spelling::sidecar_for(&name));
        let bad = || Error::Integrity {
            path: self.vault.root().join(&sidecar),
            chunk: None,
            kind: IntegrityKind::Name,
        };
        let opened = root.dir_cached(dir).and_then(|d| {
            d.open_file(
                sidecar.file_name().expect("a name"),
                libc::O_RDONLY | libc::O_NONBLOCK,
                0,
            )
        });
        match read_sidecar_bytes(opened) {
            Ok(bytes) if Some(bytes.as_slice()) == entry.long.as_ref().map(|l| l.as_bytes()) => {
                Ok(())
            }
            Ok(_) => Err(bad()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match root.dir_cached(dir).and_then(|d| d.stat(&entry.name)) {
                    Err(missing) if missing.kind() == io::ErrorKind::NotFound => {
                        Err(missing.into())
                    }
                    _ => Err(bad()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(bad()),
            Err(e) => Err(e.into()),
        }
    }

    /// Make sure the sidecar of a long-name entry of `dir` exists with the right content.
    /// Written to a temporary file and renamed into place, so a crash never leaves a half
    /// sidecar; all of it relative to `dir`'s descriptor, never through a symlink.
    pub fn ensure_sidecar(&self, dir: &Dir, entry: &BackingEntry) -> Result<()> {
        let (Some(sidecar), Some(encoded)) = (entry.sidecar_name(), entry.long.as_ref()) else {
            return Ok(());
        };
        if read_sidecar_in(dir, &sidecar).is_ok_and(|b| b == encoded.as_bytes()) {
            return Ok(());
        }
        let tmp = super::rewrap::temp_name("tmp");
        let result = (|| -> io::Result<()> {
            let mut f =
                dir.open_file(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666)?;
            f.write_all(encoded.as_bytes())?;
            dir.rename(&tmp, dir, &sidecar, 0)
        })();
        if result.is_err() {
            let _ = dir.unlink(&tmp);
        }
        Ok(result?)
    }

    /// Remove the sidecar of a long-name entry of `dir` whose entry is gone, unless another
    /// entry still needs it: the original a copy shares it with, or a sync client's copy of
    /// the entry (whose name is lost without it). Best effort: a leftover sidecar is
    /// harmless (hidden from listings, reported by fsck).
    pub fn remove_sidecar(&self, dir: &Dir, entry: &BackingEntry) {
        let Some(sidecar) = entry.sidecar_name() else {
            return;
        };
        let owner = entry.copy_of.as_ref().unwrap_or(&entry.name);
        if dir.stat(owner).is_ok() {
            return;
        }
        match dir.list() {
            Ok(names) if !names.iter().any(|n| is_copy_of(self.vault, dir, n, owner)) => {
                let _ = dir.unlink(&sidecar);
            }
            _ => {}
        }
    }
}

/// What one entry of a backing directory is. The mount (listings, and lookups through
/// `backing_rel`) and fsck both decide by [`judge`], so they cannot disagree about a name.
#[derive(Debug)]
pub enum Judged {
    /// A user entry the mount shows under this plaintext name.
    Named(OsString),
    /// The vault config (at the root).
    Config,
    /// A name reserved for envfs' temporary files (`.envfs-*`).
    Reserved,
    /// A long-name sidecar (or a sync client's copy of one); the name of the entry it
    /// belongs to.
    Sidecar(OsString),
    /// A sync client's copy of a user entry: a conflict copy or a kept version. Shown, and
    /// used by name, like any user entry.
    Copy(MarkedCopy),
    /// One of a sync client's own files (`.stfolder`, `.dropbox.cache`, `desktop.ini`, …).
    ClientFile(Client),
    /// Not written by envfs, and why.
    Foreign(&'static str),
    /// A user entry whose name is lost.
    Damaged(NameDamage),
}

/// A sync client's copy of a user entry, as `judge` reads it.
#[derive(Debug, Clone)]
pub struct MarkedCopy {
    /// The name the mount shows: the original's plaintext name with the client's marker
    /// (format/sync_names.rs `shown_name`).
    pub shown: OsString,
    /// The backing name of the entry it is a copy of (the first one, for a copy of a copy),
    /// which need not exist any more.
    pub original: OsString,
    /// For a copy of a long name, the original's full encoded name (its sidecar's).
    pub original_long: Option<String>,
    /// The original's plaintext name.
    pub original_plain: OsString,
    pub client: Client,
    pub kind: CopyKind,
}

/// Why a user entry's name cannot be known.
#[derive(Debug)]
pub enum NameDamage {
    /// A long-name entry without its sidecar.
    MissingSidecar,
    /// A long-name sidecar that does not hold this entry's name (or is not a sidecar-sized
    /// regular file).
    MismatchedSidecar,
    /// The sidecar exists but cannot be read (the backing store's error).
    UnreadableSidecar(io::Error),
    /// The encrypted name is corrupt or not authentic.
    Undecryptable,
}

impl NameDamage {
    /// The backing path the damage is at, for messages: the sidecar when it is the one
    /// that cannot be read, the entry otherwise.
    pub fn path(&self, vault: &Vault, dir: &Dir, entry: &OsStr) -> PathBuf {
        let at = vault.root().join(dir.rel());
        match self {
            NameDamage::UnreadableSidecar(_) => {
                at.join(spelling::sidecar_for(&entry.to_string_lossy()))
            }
            _ => at.join(entry),
        }
    }
}

/// Judge entry `name` of backing directory `dir` (`at_root`: `dir` is the vault root):
/// envfs' own file, a foreign one, a user entry and its plaintext name, or a user entry
/// whose name is lost. Reads the sidecar of a long name; nothing else touches the disk.
pub fn judge(vault: &Vault, dir: &Dir, name: &OsStr, at_root: bool) -> Judged {
    if at_root
        && (name == CONFIG_FILE_NAME || name == crate::format::intermediate::INTERMEDIATE_DIR)
    {
        return Judged::Config;
    }
    // Before any spelling: no encrypted name starts with a dot.
    if name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes()) {
        return Judged::Reserved;
    }
    if vault.config.plaintext_names {
        return Judged::Named(name.to_os_string());
    }
    if let Some(client) = sync_names::client_file(name.as_bytes()) {
        return Judged::ClientFile(client);
    }
    if at_root
        && name.as_bytes().starts_with(b"envfs")
        && sync_names::readings(name.as_bytes())
            .iter()
            .any(|r| r.original == CONFIG_FILE_NAME.as_bytes())
    {
        // Not shown and not used: the config in force is `envfs.conf`. But a change of
        // keys made on another host at the same time was lost with it.
        return Judged::Foreign(
            "a sync client's conflict copy of the vault config: a key change made on two \
             hosts at once; the one in this copy is not in force, redo it",
        );
    }
    judge_marked(vault, dir, name, 0, &mut JUDGE_BUDGET.clone())
}

/// Whether entry `name` of `dir` is a sync client's copy (at any depth) of backing entry
/// `owner`: the one rule for "a copy still needs this sidecar", for the mount and fsck.
pub fn is_copy_of(vault: &Vault, dir: &Dir, name: &OsStr, owner: &OsStr) -> bool {
    if name == owner || sync_names::readings(name.as_bytes()).is_empty() {
        return false;
    }
    matches!(judge_marked(vault, dir, name, 0, &mut JUDGE_BUDGET.clone()),
        Judged::Copy(copy) if copy.original == owner)
}

/// How many markers deep a copy of a copy is still read (`x (1) (1)`, …).
const MAX_NESTED_COPIES: usize = 3;

/// How many spellings one entry may be judged by, markers removed: a name crafted with
/// dozens of markers must not cost thousands of sidecar reads.
const JUDGE_BUDGET: usize = 24;

/// Judge an entry by its spelling; what is not an envfs name may be a sync client's copy of
/// one, if removing a marker leaves an authentic name (the SIV tag makes a chance match
/// impossible in practice).
fn judge_marked(
    vault: &Vault,
    dir: &Dir,
    name: &OsStr,
    depth: usize,
    budget: &mut usize,
) -> Judged {
    *budget = budget.saturating_sub(1);
    let direct = judge_spelling(vault, dir, name);
    if matches!(direct, Judged::Named(_) | Judged::Sidecar(_)) || depth >= MAX_NESTED_COPIES {
        return direct;
    }
    let mut tried = std::collections::HashSet::new();
    for reading in sync_names::readings(name.as_bytes()) {
        if *budget == 0 {
            break;
        }
        if !tried.insert(reading.original.clone()) {
            continue;
        }
        let original = OsStr::from_bytes(&reading.original);
        let copy = |plain: &OsStr, first: OsString, long: Option<String>, of: OsString| {
            Judged::Copy(MarkedCopy {
                shown: OsString::from_vec(sync_names::shown_name(
                    plain.as_bytes(),
                    &reading.marker,
                )),
                original: first,
                original_long: long,
                original_plain: of,
                client: reading.client,
                kind: reading.kind,
            })
        };
        match judge_marked(vault, dir, original, depth + 1, budget) {
            Judged::Named(plain) => {
                let long = long_name_of(vault, dir, original);
                return copy(&plain, original.to_os_string(), long, plain.clone());
            }
            Judged::Copy(inner) => {
                return copy(
                    &inner.shown,
                    inner.original,
                    inner.original_long,
                    inner.original_plain,
                );
            }
            Judged::Sidecar(of) => return Judged::Sidecar(of),
            _ => {}
        }
    }
    direct
}

/// The full encoded name of long-name entry `name` of `dir` (its sidecar's), if it is one.
fn long_name_of(vault: &Vault, dir: &Dir, name: &OsStr) -> Option<String> {
    let text = name.to_str()?;
    let BackingName::Long(entry) = spelling::classify(text) else {
        return None;
    };
    let bytes = read_sidecar_in(dir, &OsString::from(spelling::sidecar_for(entry))).ok()?;
    spelling::sidecar_name(vault.config.name_encoding, entry, &bytes)
}

/// Judge an entry by its spelling alone: an encrypted name, a long name and its sidecar.
fn judge_spelling(vault: &Vault, dir: &Dir, name: &OsStr) -> Judged {
    let Some(text) = name.to_str() else {
        return Judged::Foreign("the name is not UTF-8");
    };
    let encoding = vault.config.name_encoding;
    let encoded = match spelling::classify(text) {
        BackingName::Encrypted(e) if spelling::looks_encrypted(encoding, e) => e.to_string(),
        BackingName::Long(entry) => {
            let sidecar = OsString::from(spelling::sidecar_for(entry));
            match read_sidecar_in(dir, &sidecar) {
                Ok(bytes) => match spelling::sidecar_name(encoding, entry, &bytes) {
                    Some(encoded) => encoded,
                    None => return Judged::Damaged(NameDamage::MismatchedSidecar),
                },
                // Not a regular sidecar-sized file: as wrong as wrong content.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Judged::Damaged(NameDamage::MismatchedSidecar);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Judged::Damaged(NameDamage::MissingSidecar);
                }
                Err(e) => return Judged::Damaged(NameDamage::UnreadableSidecar(e)),
            }
        }
        BackingName::Sidecar => {
            let entry = &text[..text.len() - ".name".len()];
            return Judged::Sidecar(entry.into());
        }
        BackingName::Encrypted(_) | BackingName::Foreign => {
            return Judged::Foreign("not an encrypted name");
        }
    };
    match open_name(&vault.names, encoding, &encoded) {
        Some(plain) => Judged::Named(plain),
        None => Judged::Damaged(NameDamage::Undecryptable),
    }
}

/// The most bytes a sidecar can need: an encoded 255-byte name is under 450 characters.
const MAX_SIDECAR_LEN: u64 = 1024;

/// Read sidecar `name` of directory `dir`, as the backing store hands it: never through a
/// symlink, never waiting on a FIFO or device, never more than a sidecar can hold. What is
/// not a regular file of that size is `InvalidData` (damage, like wrong content).
pub fn read_sidecar_in(dir: &Dir, name: &OsStr) -> io::Result<Vec<u8>> {
    read_sidecar_bytes(dir.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK, 0))
}

/// The bounds of `read_sidecar_in`, applied to a file as opened (with `O_NOFOLLOW`).
fn read_sidecar_bytes(file: io::Result<fs::File>) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let invalid = || io::Error::from(io::ErrorKind::InvalidData);
    let file = file.map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            invalid()
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_SIDECAR_LEN {
        return Err(invalid());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SIDECAR_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIDECAR_LEN {
        return Err(invalid());
    }
    Ok(bytes)
}

/// The plaintext of an encrypted name (the encoded text, for a long name the sidecar's), if
/// it is authentic and a name a directory can hold. The mount and fsck both decide by it.
pub fn open_name(names: &SivCipher, encoding: NameEncoding, encoded: &str) -> Option<OsString> {
    let sealed = spelling::decode(encoding, encoded)?;
    let plain = names.decrypt(&[domain::NAME], &sealed)?;
    let valid = !plain.is_empty()
        && plain != b"."
        && plain != b".."
        && !plain.contains(&b'/')
        && !plain.contains(&0);
    valid.then(|| OsString::from_vec(plain))
}

/// The plaintext target of a symlink whose stored target is `stored`, if it is authentic
/// (and a target a symlink can have: not empty, no NUL). Mount and fsck both decide by it.
pub fn open_link_target(
    names: &SivCipher,
    encoding: NameEncoding,
    stored: &OsStr,
) -> Option<OsString> {
    let sealed = spelling::decode(encoding, stored.to_str()?)?;
    if sealed.len() <= spelling::SIV_OVERHEAD {
        return None;
    }
    let plain = names.decrypt(&[domain::SYMLINK], &sealed)?;
    (!plain.is_empty() && !plain.contains(&0)).then(|| OsString::from_vec(plain))
}

/// Names a plaintext-names vault keeps for itself: the config and the intermediate keys at
/// the root, and envfs' temporary files anywhere.
fn is_reserved_plain(name: &[u8], at_root: bool) -> bool {
    (at_root
        && (name == CONFIG_FILE_NAME.as_bytes()
            || name == crate::format::intermediate::INTERMEDIATE_DIR.as_bytes()))
        || name.starts_with(RESERVED_PREFIX.as_bytes())
}
