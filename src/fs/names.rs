//! Mapping between plaintext names (what the mount shows) and backing names (what the
//! backing directory holds), including long names and their sidecars.
//!
//! Names are encrypted per path component with AES-SIV, with no per-directory IV file, so
//! that sync services see no extra metadata files to conflict on and a directory rename is
//! one backing rename. See format/names.rs for the spelling.

use super::name_cache::NameCache;
use crate::backing::{BackingRoot, Dir};
use crate::crypto::SivCipher;
use crate::crypto::siv::domain;
use crate::error::{Error, IntegrityKind, Result};
use crate::format::config::{CONFIG_FILE_NAME, NameEncoding};
use crate::format::names::{self as spelling, BackingName, RESERVED_PREFIX};
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
}

impl BackingEntry {
    pub fn sidecar_name(&self) -> Option<OsString> {
        self.long
            .as_ref()
            .map(|_| OsString::from(spelling::sidecar_for(&self.name.to_string_lossy())))
    }
}

pub struct NameMap<'v> {
    vault: &'v Vault,
    cache: &'v NameCache,
}

impl<'v> NameMap<'v> {
    pub fn new(vault: &'v Vault, cache: &'v NameCache) -> NameMap<'v> {
        NameMap { vault, cache }
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
            return Ok(BackingEntry {
                name: name.to_os_string(),
                long: None,
            });
        }
        Ok(self.cache.get_or_insert(name, || self.seal(name)))
    }

    /// Encrypt and spell one (already checked) name.
    fn seal(&self, name: &OsStr) -> BackingEntry {
        let sealed = self.vault.names.encrypt(&[domain::NAME], name.as_bytes());
        let encoded = spelling::encode(self.vault.config.name_encoding, &sealed);
        if encoded.len() > self.vault.config.long_name_limit as usize {
            let entry = spelling::long_name_entry(self.vault.config.name_encoding, &encoded);
            BackingEntry {
                name: entry.into(),
                long: Some(encoded),
            }
        } else {
            BackingEntry {
                name: encoded.into(),
                long: None,
            }
        }
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
                    let entry = self.encrypt(name, at_root)?;
                    if entry.long.is_some() {
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

    /// The plaintext name of a backing directory entry, `Ok(None)` for entries that are not
    /// shown (envfs' own files, or foreign files in an encrypted-names vault); an integrity
    /// error for a user entry whose name is lost. `dir` holds the entry (long-name sidecars
    /// are read from it).
    pub fn decrypt(&self, dir: &Dir, backing: &OsStr, at_root: bool) -> Result<Option<OsString>> {
        match judge(self.vault, dir, backing, at_root) {
            Judged::Named(plain) => Ok(Some(plain)),
            Judged::Damaged(damage) => Err(Error::Integrity {
                path: damage.path(self.vault, dir, backing),
                chunk: None,
                kind: IntegrityKind::Name,
            }),
            Judged::Config | Judged::Reserved | Judged::Sidecar(_) | Judged::Foreign(_) => Ok(None),
        }
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
        let tmp = OsString::from(format!(
            "{RESERVED_PREFIX}tmp-{}",
            hex::encode(crate::crypto::random::array::<8>())
        ));
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

    /// Remove the sidecar of a long-name entry of `dir` whose entry is gone. Best effort: a
    /// leftover sidecar is harmless (hidden from listings, reported by fsck).
    pub fn remove_sidecar(&self, dir: &Dir, entry: &BackingEntry) {
        if let Some(sidecar) = entry.sidecar_name() {
            let _ = dir.unlink(&sidecar);
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
    /// A long-name sidecar; the name of the entry it belongs to.
    Sidecar(OsString),
    /// Not written by envfs, and why.
    Foreign(&'static str),
    /// A user entry whose name is lost.
    Damaged(NameDamage),
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
    if at_root && name == CONFIG_FILE_NAME {
        return Judged::Config;
    }
    // Before any spelling: no encrypted name starts with a dot.
    if name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes()) {
        return Judged::Reserved;
    }
    if vault.config.plaintext_names {
        return Judged::Named(name.to_os_string());
    }
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

/// Names a plaintext-names vault keeps for itself: the config at the root, and envfs'
/// temporary files anywhere.
fn is_reserved_plain(name: &[u8], at_root: bool) -> bool {
    (at_root && name == CONFIG_FILE_NAME.as_bytes()) || name.starts_with(RESERVED_PREFIX.as_bytes())
}
