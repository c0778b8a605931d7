//! The names sync clients give entries of a folder they keep in step: the copies they make
//! when two hosts changed one file (conflict copies), the old versions they keep, and their
//! own bookkeeping files. Pure spelling, no I/O and no cryptography.
//!
//! A sync client knows nothing of envfs: it makes a conflict copy of backing entry
//! `<encrypted name>` by inserting a marker into that name (`<encrypted
//! name>.sync-conflict-20261201-180306-TQ7MR7C`, `<hash> (conflicted copy 2026-12-01
//! 180306).envfs-ln`, …). [`readings`] finds every marker a name may carry and what the name
//! would be without it; the caller keeps a reading only if what remains is a valid envfs
//! name (an authentic encrypted name, or a long name with its sidecar), so a marker-shaped
//! run of characters inside an encrypted name can never be mistaken for one. [`shown_name`]
//! applies the same client's convention to the plaintext name, which is what the mount
//! shows (`report.sync-conflict-20261201-180306-TQ7MR7C.docx`).

use regex_lite::Regex;
use std::sync::LazyLock;

/// The longest name a directory entry can have (Linux NAME_MAX); a shown name is cut to it.
pub const NAME_MAX: usize = 255;

/// The sync client whose convention a name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    Syncthing,
    Dropbox,
    /// Nextcloud and ownCloud (their desktop clients share the naming).
    Nextcloud,
    OneDrive,
    /// `name (1).ext` copies: Google Drive, OneDrive and others number duplicates.
    Numbered,
    Seafile,
    Resilio,
    /// Finder, Windows Explorer and other file managers (`.DS_Store`, `desktop.ini`).
    Desktop,
}

impl Client {
    /// How messages and `envfs conflicts` name the client.
    pub fn label(self) -> &'static str {
        match self {
            Client::Syncthing => "Syncthing",
            Client::Dropbox => "Dropbox",
            Client::Nextcloud => "Nextcloud/ownCloud",
            Client::OneDrive => "OneDrive",
            Client::Numbered => "numbered copy (Google Drive, OneDrive)",
            Client::Seafile => "Seafile",
            Client::Resilio => "Resilio Sync",
            Client::Desktop => "file manager",
        }
    }
}

/// What a marked copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CopyKind {
    /// The losing side of two changes to one file (or of two entries whose names clash).
    Conflict,
    /// An old version the client keeps (Syncthing's `.stversions`).
    Version,
}

/// One way to read a name as a sync client's copy of another name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The name without the marker.
    pub original: Vec<u8>,
    /// The marker exactly as it appears in the name (`.sync-conflict-…`, ` (1)`, …).
    pub marker: Vec<u8>,
    pub client: Client,
    pub kind: CopyKind,
}

struct Pattern {
    client: Client,
    kind: CopyKind,
    regex: Regex,
}

/// The markers, most specific first. Each is matched anywhere in a name; the reading is kept
/// only if the rest of the name is a valid envfs name, so loose patterns cost lookups, never
/// false copies.
static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let p = |client, kind, re: &str| Pattern {
        client,
        kind,
        regex: Regex::new(re).expect("a valid pattern"),
    };
    use {Client::*, CopyKind::*};
    vec![
        // Syncthing: `.sync-conflict-<date>-<time>-<first 7 characters of the device id>`.
        p(
            Syncthing,
            Conflict,
            r"\.sync-conflict-[0-9]{8}-[0-9]{6}-[A-Za-z0-9]{7}",
        ),
        // Syncthing's simple and staggered versioning: `~<date>-<time>`.
        p(Syncthing, Version, r"~[0-9]{8}-[0-9]{6}"),
        // Dropbox: ` (Ada's conflicted copy 2026-12-01)`, optionally numbered.
        p(
            Dropbox,
            Conflict,
            r" \([^()]*conflicted copy [0-9]{4}-[0-9]{2}-[0-9]{2}(?: \([0-9]+\))?\)",
        ),
        // Dropbox: names that clash only in case, encoding or selective sync.
        p(
            Dropbox,
            Conflict,
            r" \((?:Case|Selective Sync|Unicode Encoding|Encoding) Conflict(?: [0-9]+)?\)",
        ),
        // Nextcloud and ownCloud: ` (conflicted copy 2026-12-01 180306)`, in newer clients
        // with the user's name before the date.
        p(
            Nextcloud,
            Conflict,
            r" \(conflicted copy (?:[^()]* )?[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{6}\)",
        ),
        // ownCloud before 2.5: `_conflict-<date>-<time>`.
        p(Nextcloud, Conflict, r"_conflict-[0-9]{8}-[0-9]{6}"),
        // Seafile: ` (SFConflict ada@example.com 2026-12-01-18-03-06)`.
        p(Seafile, Conflict, r" \(SFConflict [^()]+\)"),
        // Resilio Sync: `.Conflict`, `.Conflict1`, `.Conflict 3`.
        p(Resilio, Conflict, r"\.Conflict(?: ?[0-9]+)?"),
        // Google Drive, OneDrive and others: ` (1)`.
        p(Numbered, Conflict, r" \([0-9]{1,3}\)"),
    ]
});

/// The longest host name OneDrive appends (`-<computer name>`; Windows allows 15 characters).
const ONEDRIVE_HOST_MAX: usize = 15;

/// Every way `name` can be read as a copy of another name, most specific first. Each marker
/// occurrence gives one reading; OneDrive's `-<host>` gives one per hyphen near the end.
pub fn readings(name: &[u8]) -> Vec<Reading> {
    let mut onedrive = onedrive_readings(name);
    // Every pattern holds one of these; most names hold none, and skip the patterns (this
    // runs for every component of every path the mount resolves), with no allocation.
    let holds = |needle: &[u8]| name.windows(needle.len()).any(|w| w == needle);
    let any_marker = name.contains(&b'~')
        || holds(b" (")
        || holds(b".sync-conflict-")
        || holds(b"_conflict-")
        || holds(b".Conflict");
    if !any_marker {
        return onedrive;
    }
    // The patterns are ASCII; other bytes stand in as one character each so that offsets
    // in the text are offsets in the name.
    let text: String = name
        .iter()
        .map(|&b| if b.is_ascii() { b as char } else { '\u{1}' })
        .collect();
    let mut specific = Vec::new();
    for pattern in PATTERNS.iter() {
        for m in pattern.regex.find_iter(&text) {
            let mut original = name[..m.start()].to_vec();
            original.extend_from_slice(&name[m.end()..]);
            if !original.is_empty() {
                specific.push(Reading {
                    original,
                    marker: name[m.range()].to_vec(),
                    client: pattern.client,
                    kind: pattern.kind,
                });
            }
        }
    }
    specific.append(&mut onedrive);
    specific
}

/// OneDrive keeps both sides of a clash as `<stem>-<host><ext>` (or `<name>-<host>` when
/// the name has no extension): every hyphen that leaves a host-name-shaped tail of at most
/// [`ONEDRIVE_HOST_MAX`] characters before the extension or the end.
fn onedrive_readings(name: &[u8]) -> Vec<Reading> {
    let mut out = Vec::new();
    for end in [split_ext(name).0.len(), name.len()] {
        let stem = &name[..end];
        let host_ok = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
        for (i, _) in stem.iter().enumerate().rev().filter(|&(_, &c)| c == b'-') {
            let host = &stem[i + 1..];
            if host.len() > ONEDRIVE_HOST_MAX || !host.iter().copied().all(host_ok) {
                break;
            }
            if host.is_empty() || i == 0 {
                continue;
            }
            let mut original = name[..i].to_vec();
            original.extend_from_slice(&name[end..]);
            let reading = Reading {
                original,
                marker: stem[i..].to_vec(),
                client: Client::OneDrive,
                kind: CopyKind::Conflict,
            };
            if !out.contains(&reading) {
                out.push(reading);
            }
        }
    }
    out
}

/// A name split before its extension: the last dot that is not the first byte. `.bashrc`
/// and `README` have none.
pub fn split_ext(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&c| c == b'.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, &[]),
    }
}

/// The name the mount shows for a copy, marked `marker`, of the entry whose plaintext name
/// is `original`: the client's own convention (the marker before the extension), cut to
/// [`NAME_MAX`] by shortening the stem, so people recognise it.
pub fn shown_name(original: &[u8], marker: &[u8]) -> Vec<u8> {
    let (stem, mut ext) = split_ext(original);
    if marker.len() + ext.len() >= NAME_MAX {
        ext = &[];
    }
    let room = NAME_MAX.saturating_sub(marker.len() + ext.len());
    let mut stem = &stem[..stem.len().min(room)];
    // Never cut inside a UTF-8 character of a UTF-8 name.
    while !stem.is_empty()
        && std::str::from_utf8(original).is_ok()
        && std::str::from_utf8(stem).is_err()
    {
        stem = &stem[..stem.len() - 1];
    }
    let mut out = Vec::with_capacity(stem.len() + marker.len() + ext.len());
    out.extend_from_slice(stem);
    out.extend_from_slice(marker);
    out.extend_from_slice(ext);
    out
}

/// Whether a shown name may have been cut to fit [`NAME_MAX`] (then its original cannot be
/// read back from it, and a lookup has to search the directory).
pub fn may_be_cut(shown: &[u8]) -> bool {
    shown.len() >= NAME_MAX - 4
}

/// The backing names a copy marked `marker` of backing entry `original` can have: the
/// marker before the extension (what the clients do; for an encrypted name, which has no
/// dot, that is the end) or after it.
pub fn backing_spellings(original: &[u8], marker: &[u8]) -> Vec<Vec<u8>> {
    let (stem, ext) = split_ext(original);
    let before = [stem, marker, ext].concat();
    let after = [original, marker].concat();
    if before == after {
        vec![before]
    } else {
        vec![before, after]
    }
}

/// What one of a sync client's own files is for, if `name` is one. These are hidden from
/// the mount without a log line: they are the client's, not the user's, and not damage.
pub fn client_file(name: &[u8]) -> Option<Client> {
    let starts = |p: &[u8]| name.starts_with(p);
    let ends = |s: &[u8]| name.ends_with(s);
    let is = |n: &[u8]| name == n;
    let client = if is(b".stfolder")
        || is(b".stignore")
        || is(b".stversions")
        || starts(b".stfolder.removed-")
        || (starts(b".syncthing.") && ends(b".tmp"))
        || (starts(b"~syncthing~") && ends(b".tmp"))
    {
        Client::Syncthing
    } else if is(b".dropbox") || is(b".dropbox.cache") || is(b".dropbox.attr") {
        Client::Dropbox
    } else if is(b".nextcloudsync.log")
        || is(b".owncloudsync.log")
        || ((starts(b"._sync_") || starts(b".sync_"))
            && (ends(b".db") || ends(b".db-wal") || ends(b".db-shm") || ends(b".db.ctmp")))
        || is(b".sync-exclude.lst")
    {
        Client::Nextcloud
    } else if is(b".sync") || ends(b".!sync") || is(b".SyncID") || is(b".SyncIgnore") {
        Client::Resilio
    } else if is(b".seafile-data") || ends(b".sf-tmp") {
        Client::Seafile
    } else if is(b".tmp.drivedownload") || is(b".tmp.driveupload") {
        Client::Numbered
    } else if is(b".DS_Store")
        || is(b"desktop.ini")
        || is(b"Desktop.ini")
        || is(b"Thumbs.db")
        || is(b"Icon\r")
        || is(b".localized")
        || starts(b"._")
    {
        Client::Desktop
    } else {
        return None;
    };
    Some(client)
}

/// The directory Syncthing keeps old versions in, at the root of the synced folder. Below
/// it the tree mirrors the folder's (backing names, each version marked `~<date>-<time>`),
/// so envfs decrypts it like the vault itself: it is reachable by name, never listed.
pub const SYNCTHING_VERSIONS: &str = ".stversions";

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str) -> Vec<(String, String, Client, CopyKind)> {
        readings(name.as_bytes())
            .into_iter()
            .map(|r| {
                (
                    String::from_utf8(r.original).unwrap(),
                    String::from_utf8(r.marker).unwrap(),
                    r.client,
                    r.kind,
                )
            })
            .collect()
    }

    /// The first reading whose original is `original` (what a caller keeps when `original`
    /// is the valid envfs name).
    fn reading_to(name: &str, original: &str) -> (String, Client, CopyKind) {
        read(name)
            .into_iter()
            .find(|(o, ..)| o == original)
            .map(|(_, m, c, k)| (m, c, k))
            .unwrap_or_else(|| panic!("{name:?} has no reading as a copy of {original:?}"))
    }

    const ENC: &str = "Qm9vdHN0cmFwLWV4YW1wbGUtbmFtZQ-x_y";
    const LONG: &str = "K2xhbXBvLW5hbWUtaGFzaA.envfs-ln";

    #[test]
    fn syncthing_conflicts_and_versions_of_backing_names() {
        let m = ".sync-conflict-20261201-180306-TQ7MR7C";
        for (copy, original) in [
            (format!("{ENC}{m}"), ENC.to_string()),
            (
                format!("K2xhbXBvLW5hbWUtaGFzaA{m}.envfs-ln"),
                LONG.to_string(),
            ),
            (format!("{LONG}{m}"), LONG.to_string()),
            (format!("{LONG}{m}.name"), format!("{LONG}.name")),
        ] {
            assert_eq!(
                reading_to(&copy, &original),
                (m.to_string(), Client::Syncthing, CopyKind::Conflict)
            );
        }
        assert_eq!(
            reading_to(&format!("{ENC}~20261201-180306"), ENC),
            (
                "~20261201-180306".into(),
                Client::Syncthing,
                CopyKind::Version
            )
        );
    }

    #[test]
    fn every_clients_conflict_marker_is_read() {
        let cases: &[(&str, Client)] = &[
            (
                " (Ada Lovelace's conflicted copy 2026-12-01)",
                Client::Dropbox,
            ),
            (" (Ada's conflicted copy 2026-12-01 (2))", Client::Dropbox),
            (" (Case Conflict)", Client::Dropbox),
            (" (Case Conflict 1)", Client::Dropbox),
            (" (Selective Sync Conflict)", Client::Dropbox),
            (" (conflicted copy 2026-12-01 180306)", Client::Nextcloud),
            (
                " (conflicted copy ada 2026-12-01 180306)",
                Client::Nextcloud,
            ),
            ("_conflict-20261201-180306", Client::Nextcloud),
            (
                " (SFConflict ada@example.com 2026-12-01-18-03-06)",
                Client::Seafile,
            ),
            (".Conflict", Client::Resilio),
            (".Conflict2", Client::Resilio),
            (".Conflict 3", Client::Resilio),
            (" (1)", Client::Numbered),
            (" (12)", Client::Numbered),
            ("-LAPTOP", Client::OneDrive),
            ("-DESKTOP-AB12CD3", Client::OneDrive),
        ];
        for &(marker, client) in cases {
            for (copy, original) in [
                (format!("{ENC}{marker}"), ENC.to_string()),
                (
                    format!("K2xhbXBvLW5hbWUtaGFzaA{marker}.envfs-ln"),
                    LONG.to_string(),
                ),
            ] {
                assert_eq!(
                    reading_to(&copy, &original),
                    (marker.to_string(), client, CopyKind::Conflict),
                    "{copy}"
                );
            }
        }
    }

    #[test]
    fn plain_names_carry_no_markers_and_near_misses_are_not_read() {
        for name in [
            ENC,
            LONG,
            "report.docx",
            "x.sync-conflict-2026121-180306-TQ7MR7C",
            "x (conflicted copy)",
            "x (1234)",
            "x.Conflicts",
        ] {
            let found: Vec<_> = read(name)
                .into_iter()
                .filter(|r| r.2 != Client::OneDrive && r.2 != Client::Resilio)
                .collect();
            assert!(found.is_empty(), "{name}: {found:?}");
        }
        // A host tail longer than Windows allows is no OneDrive copy.
        assert!(read("x-ABCDEFGHIJKLMNOPQ").is_empty());
        // No reading leaves an empty name.
        let bare = ".sync-conflict-20261201-180306-TQ7MR7C";
        assert!(
            read(bare)
                .iter()
                .all(|r| !r.0.is_empty() && r.2 != Client::Syncthing)
        );
    }

    #[test]
    fn onedrive_offers_every_hyphen_near_the_end() {
        let originals: Vec<_> = read("my-report-DESKTOP-AB12.docx")
            .into_iter()
            .filter(|r| r.2 == Client::OneDrive)
            .map(|r| r.0)
            .collect();
        assert!(originals.contains(&"my-report-DESKTOP.docx".to_string()));
        assert!(originals.contains(&"my-report.docx".to_string()));
    }

    #[test]
    fn shown_names_follow_the_clients_convention_and_read_back() {
        for (original, marker, shown) in [
            (
                "report.docx",
                ".sync-conflict-20261201-180306-TQ7MR7C",
                "report.sync-conflict-20261201-180306-TQ7MR7C.docx",
            ),
            ("notes", " (1)", "notes (1)"),
            (
                "archive.tar.gz",
                "~20261201-180306",
                "archive.tar~20261201-180306.gz",
            ),
            (".bashrc", "-LAPTOP", ".bashrc-LAPTOP"),
            (
                "plan.txt",
                " (Ada's conflicted copy 2026-12-01)",
                "plan (Ada's conflicted copy 2026-12-01).txt",
            ),
        ] {
            let got = shown_name(original.as_bytes(), marker.as_bytes());
            assert_eq!(String::from_utf8_lossy(&got), shown);
            assert!(
                readings(&got)
                    .iter()
                    .any(|r| r.original == original.as_bytes() && r.marker == marker.as_bytes()),
                "{shown} does not read back"
            );
        }
    }

    #[test]
    fn shown_names_are_cut_to_name_max_without_splitting_characters() {
        let original = format!("{}.txt", "é".repeat(125));
        let marker = ".sync-conflict-20261201-180306-TQ7MR7C";
        let shown = shown_name(original.as_bytes(), marker.as_bytes());
        assert!(shown.len() <= NAME_MAX);
        let text = String::from_utf8(shown.clone()).expect("still UTF-8");
        assert!(text.ends_with(&format!("{marker}.txt")));
        assert!(may_be_cut(&shown));
        // Non-UTF-8 names keep their bytes.
        let raw = b"caf\xe9.txt";
        assert_eq!(shown_name(raw, b" (1)"), b"caf\xe9 (1).txt".to_vec());
        assert!(
            readings(b"caf\xe9 (1).txt")
                .iter()
                .any(|r| r.original == raw)
        );
    }

    #[test]
    fn backing_spellings_cover_before_and_after_the_extension() {
        assert_eq!(
            backing_spellings(ENC.as_bytes(), b" (1)"),
            vec![format!("{ENC} (1)").into_bytes()]
        );
        assert_eq!(
            backing_spellings(LONG.as_bytes(), b" (1)"),
            vec![
                b"K2xhbXBvLW5hbWUtaGFzaA (1).envfs-ln".to_vec(),
                format!("{LONG} (1)").into_bytes()
            ]
        );
    }

    #[test]
    fn the_quick_check_lets_every_pattern_through() {
        // Each client's marker must pass the pre-check in `readings`, or it is never read;
        // one marker per pattern.
        let markers = [
            ".sync-conflict-20261201-180306-TQ7MR7C",
            "~20261201-180306",
            " (Ada's conflicted copy 2026-12-01)",
            " (Case Conflict)",
            " (conflicted copy 2026-12-01 180306)",
            "_conflict-20261201-180306",
            " (SFConflict ada 2026-12-01-18-03-06)",
            ".Conflict",
            " (1)",
        ];
        assert_eq!(markers.len(), PATTERNS.len());
        for m in markers {
            let name = format!("QUJDREVG{m}");
            assert!(
                readings(name.as_bytes())
                    .iter()
                    .any(|r| r.marker == m.as_bytes()),
                "{m}"
            );
        }
    }

    #[test]
    fn client_files_are_recognised() {
        for (name, client) in [
            (&b".stfolder"[..], Client::Syncthing),
            (b".stignore", Client::Syncthing),
            (b".stversions", Client::Syncthing),
            (b".syncthing.QUJD.tmp", Client::Syncthing),
            (b"~syncthing~QUJD.tmp", Client::Syncthing),
            (b".dropbox", Client::Dropbox),
            (b".dropbox.cache", Client::Dropbox),
            (b".nextcloudsync.log", Client::Nextcloud),
            (b"._sync_3f2a.db", Client::Nextcloud),
            (b"._sync_3f2a.db-wal", Client::Nextcloud),
            (b".sync_3f2a.db", Client::Nextcloud),
            (b".sync", Client::Resilio),
            (b"QUJD.!sync", Client::Resilio),
            (b"desktop.ini", Client::Desktop),
            (b".DS_Store", Client::Desktop),
            (b"Icon\r", Client::Desktop),
            (b"Thumbs.db", Client::Desktop),
        ] {
            assert_eq!(
                client_file(name),
                Some(client),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        for name in [
            &b"QUJD"[..],
            b"envfs.conf",
            b".envfs-tmp-1",
            b"Icon",
            b"stfolder",
        ] {
            assert_eq!(client_file(name), None);
        }
    }
}
