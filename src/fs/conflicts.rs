//! `envfs conflicts`: every sync client's copy in a vault, grouped with the entry it is a
//! copy of, and resolving a group by keeping one version under the original's name.
//!
//! The copies are found by the rule listings use (`names::judge`), and resolved through
//! the core's own rename and unlink, so long-name sidecars are kept exactly as long as
//! something needs them. envfs never renames a backing entry on its own (docs/SEMANTICS.md
//! §16): resolution happens when a person asks for it, here or with `mv` in the mount.

use super::names::{self, Judged};
use super::{Attr, FileKind, Fs, is_root};
use crate::error::{Error, Result};
use crate::format::sync_names::{Client, CopyKind};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One version of a file in conflict: the original or one copy.
#[derive(Debug, Clone)]
pub struct Version {
    /// Mount-relative plaintext path (what `--keep` takes).
    pub path: PathBuf,
    /// Where it lives in the backing store.
    pub backing_path: PathBuf,
    /// For a copy: the client that made it and what it is.
    pub copy: Option<(Client, CopyKind)>,
    pub kind: FileKind,
    /// Plaintext size.
    pub size: u64,
    pub mtime: SystemTime,
}

/// An entry and its sync clients' copies.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// The original's plaintext path.
    pub path: PathBuf,
    /// The original as it is now (`None`: it was removed; only copies remain).
    pub original: Option<Version>,
    /// Oldest first.
    pub copies: Vec<Version>,
}

impl Conflict {
    /// Every version, the original first.
    pub fn versions(&self) -> impl Iterator<Item = &Version> {
        self.original.iter().chain(&self.copies)
    }
}

/// Which version of each conflict to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The one changed last (the original on a tie): the backing store's mtimes decide.
    Newest,
    /// The version at this plaintext path (one conflict).
    Path(PathBuf),
}

/// What resolving one conflict does: the kept version ends up at the original's path,
/// every other version is removed.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub conflict: Conflict,
    pub keep: Version,
    pub remove: Vec<Version>,
    /// Why it cannot be resolved this way (nothing is done to it).
    pub refused: Option<String>,
}

impl Fs {
    /// Every copy in the vault, grouped by the entry it is a copy of; sorted by path.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        let mut found = Vec::new();
        let mut queue = VecDeque::from([PathBuf::new()]);
        while let Some(dir_path) = queue.pop_front() {
            let dir = self.dir_of(&dir_path)?;
            let at_root = is_root(&dir_path);
            let mut groups: BTreeMap<OsString, Conflict> = BTreeMap::new();
            for entry in dir.entries()? {
                let shown = match names::judge(&self.vault, &dir, &entry.name, at_root) {
                    Judged::Named(plain) => plain,
                    Judged::Copy(copy) => {
                        let Ok(st) = dir.stat(&entry.name) else {
                            continue;
                        };
                        let version = Version {
                            path: dir_path.join(&copy.shown),
                            backing_path: self.shown(&dir, &entry.name),
                            copy: Some((copy.client, copy.kind)),
                            ..self.version_of(&self.sizes.attr(&st))
                        };
                        let group =
                            groups
                                .entry(copy.original.clone())
                                .or_insert_with(|| Conflict {
                                    path: dir_path.join(&copy.original_plain),
                                    original: None,
                                    copies: Vec::new(),
                                });
                        group.copies.push(version);
                        copy.shown
                    }
                    _ => continue,
                };
                if entry.kind == libc::S_IFDIR {
                    queue.push_back(dir_path.join(shown));
                }
            }
            for (original, mut group) in groups {
                if let Ok(st) = dir.stat(&original) {
                    group.original = Some(Version {
                        path: group.path.clone(),
                        backing_path: self.shown(&dir, &original),
                        copy: None,
                        ..self.version_of(&self.sizes.attr(&st))
                    });
                }
                group.copies.sort_by_key(|v| (v.mtime, v.path.clone()));
                found.push(group);
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    fn version_of(&self, attr: &Attr) -> Version {
        Version {
            path: PathBuf::new(),
            backing_path: PathBuf::new(),
            copy: None,
            kind: attr.kind,
            size: attr.size,
            mtime: attr.mtime,
        }
    }

    /// What `keep` does to each conflict it selects (nothing is changed here). `Keep::Path`
    /// must name a version of some conflict.
    pub fn plan_resolution(&self, conflicts: &[Conflict], keep: &Keep) -> Result<Vec<Resolution>> {
        let mut out = Vec::new();
        for conflict in conflicts {
            let chosen = match keep {
                Keep::Newest => conflict
                    .versions()
                    .max_by_key(|v| (v.mtime, v.copy.is_none()))
                    .cloned(),
                Keep::Path(p) => match conflict.versions().find(|v| &v.path == p) {
                    Some(v) => Some(v.clone()),
                    None => continue,
                },
            };
            let Some(keep) = chosen else { continue };
            let remove: Vec<Version> = conflict
                .versions()
                .filter(|v| v.path != keep.path)
                .cloned()
                .collect();
            let refused = conflict
                .versions()
                .any(|v| v.kind == FileKind::Dir)
                .then(|| {
                    "a directory: merge its contents through the mount, then remove the copy"
                        .to_string()
                });
            out.push(Resolution {
                conflict: conflict.clone(),
                keep,
                remove,
                refused,
            });
        }
        if out.is_empty()
            && let Keep::Path(p) = keep
        {
            return Err(Error::Invalid(format!(
                "{} is not a version of any conflict (`envfs conflicts` lists them)",
                p.display()
            )));
        }
        Ok(out)
    }

    /// Carry out one resolution: make sure the kept version reads back whole (every chunk
    /// authenticates), move it to the original's path if it is a copy (one atomic rename
    /// that replaces the original), then remove the other copies. Every copy is acted on
    /// only if its shown name still leads to it, so a change since the plan was made, or a
    /// copy whose name another entry has taken, is refused rather than touching the wrong
    /// entry.
    pub fn resolve_conflict(&self, resolution: &Resolution) -> Result<()> {
        if let Some(why) = &resolution.refused {
            return Err(Error::Invalid(format!(
                "{}: {why}",
                resolution.conflict.path.display()
            )));
        }
        let keep = &resolution.keep;
        self.still_at(keep)?;
        for version in &resolution.remove {
            self.still_at(version)?;
        }
        if keep.kind == FileKind::File {
            self.read_whole(&keep.path)?;
        }
        let original = &resolution.conflict.path;
        if keep.copy.is_some() {
            // To the original's own name, even where another copy now shows under it.
            self.rename_to_own_name(&keep.path, original)?;
        }
        for version in &resolution.remove {
            if version.copy.is_some() {
                self.still_at(version)?;
                self.unlink(&version.path)?;
            }
        }
        Ok(())
    }

    /// The version's plaintext path must still lead to its backing entry.
    fn still_at(&self, version: &Version) -> Result<()> {
        let now = self.backing_path(&version.path).ok();
        if now.as_deref() == Some(version.backing_path.as_path()) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{} no longer leads to the version listed (changed since, or its name is taken \
             by another entry): nothing done to it",
            version.path.display()
        )))
    }

    /// Read a whole file, so a damaged version is never kept over a sound one.
    fn read_whole(&self, path: &Path) -> Result<()> {
        let handle = self.open(path, libc::O_RDONLY)?;
        let size = self.size(&handle)?;
        let step = 1 << 20;
        let mut at = 0;
        while at < size {
            let got = self.read(&handle, at, step)?;
            if got.is_empty() {
                break;
            }
            at += got.len() as u64;
        }
        Ok(())
    }
}
