//! What fsck found, and how it is shown: the findings, the walk's counters, and the text
//! and JSON reports (both formats are contracts, docs/CLI.md). Nothing here touches the
//! backing store.

use crate::text::{escape_path, human_bytes, json_str};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// A `user.*` extended attribute whose name decrypts but whose value does not.
    UndecryptableXattr,
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
    /// A sync client's conflict copy of a user entry (a notice: shown in the mount).
    ConflictCopy,
    /// A version a sync client kept of a user entry, outside its versions folder (a notice).
    KeptVersion,
    /// One of a sync client's own files (a notice: hidden from the mount, not damage).
    SyncClientFile,
}

impl FindingKind {
    pub const ALL: [FindingKind; 18] = [
        FindingKind::TamperedChunk,
        FindingKind::Truncated,
        FindingKind::InvalidLength,
        FindingKind::BadHeader,
        FindingKind::KeyUnavailable,
        FindingKind::KeyServiceError,
        FindingKind::UndecryptableName,
        FindingKind::UndecryptableSymlink,
        FindingKind::UndecryptableXattr,
        FindingKind::MissingSidecar,
        FindingKind::MismatchedSidecar,
        FindingKind::OrphanedSidecar,
        FindingKind::UnknownFile,
        FindingKind::LeftoverTemp,
        FindingKind::Unreadable,
        FindingKind::ConflictCopy,
        FindingKind::KeptVersion,
        FindingKind::SyncClientFile,
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
            FindingKind::UndecryptableXattr => "undecryptable-xattr",
            FindingKind::MissingSidecar => "missing-sidecar",
            FindingKind::MismatchedSidecar => "mismatched-sidecar",
            FindingKind::OrphanedSidecar => "orphaned-sidecar",
            FindingKind::UnknownFile => "unknown-file",
            FindingKind::LeftoverTemp => "leftover-temp",
            FindingKind::Unreadable => "unreadable",
            FindingKind::ConflictCopy => "conflict-copy",
            FindingKind::KeptVersion => "kept-version",
            FindingKind::SyncClientFile => "sync-client-file",
        }
    }

    pub fn from_id(id: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// Whether this kind is a notice: something to know (a sync client's copy or file), not
    /// a problem. Notices are listed but do not make fsck fail.
    pub fn is_notice(self) -> bool {
        matches!(
            self,
            FindingKind::ConflictCopy | FindingKind::KeptVersion | FindingKind::SyncClientFile
        )
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
    /// For a sync client's copy: the plaintext path of the entry it is a copy of.
    pub copy_of: Option<PathBuf>,
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
    pub(super) files: AtomicU64,
    pub(super) directories: AtomicU64,
    pub(super) symlinks: AtomicU64,
    pub(super) other: AtomicU64,
    pub(super) chunks: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) findings: AtomicU64,
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

pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The outcome of a check.
#[derive(Debug, Clone)]
pub struct Report {
    /// Sorted by backing path, then chunk.
    pub findings: Vec<Finding>,
    pub stats: Stats,
}

impl Report {
    /// Findings still present (not removed by `--repair-names`), notices aside.
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| !f.repaired && !f.kind.is_notice())
            .count()
    }

    pub fn notices(&self) -> usize {
        self.findings.iter().filter(|f| f.kind.is_notice()).count()
    }

    /// Number of notices per kind.
    pub fn notice_counts(&self) -> BTreeMap<FindingKind, usize> {
        let mut counts = BTreeMap::new();
        for f in self.findings.iter().filter(|f| f.kind.is_notice()) {
            *counts.entry(f.kind).or_insert(0) += 1;
        }
        counts
    }

    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired).count()
    }

    pub fn is_clean(&self) -> bool {
        self.problems() == 0
    }

    /// Number of problems per kind; `repaired` selects removed or remaining ones.
    pub fn counts(&self, repaired: bool) -> BTreeMap<FindingKind, usize> {
        let mut counts = BTreeMap::new();
        for f in self
            .findings
            .iter()
            .filter(|f| f.repaired == repaired && !f.kind.is_notice())
        {
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
            if let Some(of) = &f.copy_of {
                let _ = write!(line, "copy of {}: ", escape_path(of));
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
        match self.notices() {
            0 => {}
            1 => line.push_str(&format!("; 1 notice ({})", list(self.notice_counts()))),
            n => line.push_str(&format!("; {n} notices ({})", list(self.notice_counts()))),
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
            j.push_str(",\"copy_of\":");
            match &f.copy_of {
                Some(p) => json_str(&mut j, &p.to_string_lossy()),
                None => j.push_str("null"),
            }
            let _ = write!(j, ",\"notice\":{}", f.kind.is_notice());
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
        let _ = write!(
            j,
            "}},\"notices\":{},\"notices_by_kind\":{{",
            self.notices()
        );
        for (i, (kind, n)) in self.notice_counts().iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let finding = |kind, path: Option<&str>, chunk, repaired| Finding {
            kind,
            backing_path: PathBuf::from("/raw/Ab\"c\\d"),
            path: path.map(PathBuf::from),
            chunk,
            copy_of: None,
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
                Finding {
                    copy_of: Some("docs/a.txt".into()),
                    ..finding(
                        FindingKind::ConflictCopy,
                        Some("docs/a (1).txt"),
                        None,
                        false,
                    )
                },
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
        // A notice names both paths and does not count as a problem.
        let copy = &doc["findings"][2];
        assert_eq!(copy["copy_of"], "docs/a.txt");
        assert_eq!(copy["notice"], true);
        assert_eq!(doc["findings"][0]["notice"], false);
        assert_eq!(doc["summary"]["notices"], 1);
        assert_eq!(doc["summary"]["notices_by_kind"]["conflict-copy"], 1);
        assert!(doc["summary"]["by_kind"].get("conflict-copy").is_none());
    }

    #[test]
    fn text_has_one_line_per_finding_and_a_summary() {
        let mut out = Vec::new();
        report().write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("tampered-chunk: odd \"name\"\\nwith\\u{1}controls, chunk 7: ")
        );
        assert!(lines[1].ends_with("(removed)"));
        assert!(lines[2].starts_with("conflict-copy: docs/a (1).txt: copy of docs/a.txt: "));
        assert_eq!(
            lines[3],
            "checked 3 files, 0 directories, 0 symlinks, 9 chunks (5.0 MiB): 1 problem \
             (tampered-chunk 1); removed 1 (orphaned-sidecar 1); 1 notice (conflict-copy 1)"
        );
    }

    #[test]
    fn kind_ids_round_trip() {
        for kind in FindingKind::ALL {
            assert_eq!(FindingKind::from_id(kind.id()), Some(kind));
        }
    }
}
