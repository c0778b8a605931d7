//! Sync clients' copies in the filesystem core: a conflict copy that a sync client made of a
//! backing entry (its marker inserted into the encrypted name) is listed under the
//! plaintext name with the same marker, read, written, renamed and removed through that
//! name, and checked like any file; the clients' own files are hidden silently, any other
//! foreign entry is hidden and counted; fsck names both sides of every conflict. Each
//! client's marker is built here the way that client spells it (docs/OPERATIONS.md "Sync
//! folders"); the Syncthing tests in tests/sync_folders.rs make them for real.

mod support;

use envfs::fs::Fs;
use envfs::fsck::{self, FindingKind, Options, Progress};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use support::fs_core::{CoreVault, read_file, small, write_file};

fn names(fs: &Fs, dir: &str) -> BTreeSet<String> {
    fs.readdir(Path::new(dir))
        .expect("readdir")
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A backing name with `marker` where sync clients put it: before the extension (a long
/// name's `.envfs-ln`), or at the end of an encrypted name, which has no dot.
fn marked(backing: &Path, marker: &str) -> PathBuf {
    let name = backing.file_name().unwrap().to_str().unwrap();
    let spelled = match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}{marker}.{ext}"),
        None => format!("{name}{marker}"),
    };
    backing.with_file_name(spelled)
}

/// Make the backing store hold a copy of `path` marked `marker`, with `content`: what a
/// sync client does when the other host's version of `path` loses.
fn make_copy(v: &CoreVault, path: &str, marker: &str, content: &[u8]) -> PathBuf {
    let original = v.backing(path);
    let scratch = match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/scratch"),
        None => "scratch".to_string(),
    };
    write_file(&v.fs, &scratch, content);
    let copy = marked(&original, marker);
    fs::rename(v.backing(&scratch), &copy).unwrap();
    copy
}

fn check(v: &CoreVault) -> fsck::Report {
    fsck::check(v.fs.vault(), &Options::default(), &Progress::default()).expect("fsck")
}

const CLIENT_MARKERS: &[(&str, &str)] = &[
    ("Syncthing", ".sync-conflict-20261201-180306-TQ7MR7C"),
    ("Dropbox", " (Ada's conflicted copy 2026-12-01)"),
    ("Dropbox case", " (Case Conflict)"),
    ("Nextcloud", " (conflicted copy 2026-12-01 180306)"),
    ("ownCloud", "_conflict-20261201-180306"),
    ("OneDrive", "-DESKTOP-AB12CD3"),
    ("numbered", " (1)"),
    (
        "Seafile",
        " (SFConflict ada@example.com 2026-12-01-18-03-06)",
    ),
    ("Resilio", ".Conflict"),
];

#[test]
fn every_clients_conflict_copy_is_shown_under_its_convention_and_reads_back() {
    let v = CoreVault::new(&small());
    v.fs.mkdir(Path::new("docs"), 0o755, None).unwrap();
    write_file(&v.fs, "docs/report.docx", b"the winner");
    for &(client, marker) in CLIENT_MARKERS {
        let content = format!("{client}'s losing edit").into_bytes();
        make_copy(&v, "docs/report.docx", marker, &content);
        let shown = format!("report{marker}.docx");
        assert!(
            names(&v.fs, "docs").contains(&shown),
            "{client}: {:?}",
            names(&v.fs, "docs")
        );
        assert_eq!(
            read_file(&v.fs, &format!("docs/{shown}")).unwrap(),
            content,
            "{client}"
        );
    }
    assert_eq!(read_file(&v.fs, "docs/report.docx").unwrap(), b"the winner");
    assert_eq!(names(&v.fs, "docs").len(), 1 + CLIENT_MARKERS.len());
}

#[test]
fn a_conflict_copy_is_writable_renamable_and_removable_by_its_shown_name() {
    let v = CoreVault::new(&small());
    write_file(&v.fs, "plan.txt", b"mine");
    let m = ".sync-conflict-20261201-180306-TQ7MR7C";
    let backing_copy = make_copy(&v, "plan.txt", m, b"theirs");
    let shown = format!("plan{m}.txt");

    // Written through the shown name: the backing conflict file changes, nothing else.
    write_file(&v.fs, &shown, b"theirs, amended");
    assert_eq!(read_file(&v.fs, &shown).unwrap(), b"theirs, amended");
    assert!(backing_copy.exists());
    assert_eq!(names(&v.fs, ""), set(&["plan.txt", &shown]));

    // Creating it exclusively fails: the name is taken.
    let excl = v.fs.create(
        Path::new(&shown),
        0o644,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        None,
    );
    assert_eq!(excl.err().map(|e| e.errno()), Some(libc::EEXIST));

    // Keeping the copy: rename it over the original.
    v.fs.rename(Path::new(&shown), Path::new("plan.txt"), 0)
        .unwrap();
    assert_eq!(names(&v.fs, ""), set(&["plan.txt"]));
    assert_eq!(read_file(&v.fs, "plan.txt").unwrap(), b"theirs, amended");
    assert!(!backing_copy.exists());

    // Dropping a copy: unlink by its shown name removes the backing copy only.
    let again = make_copy(&v, "plan.txt", m, b"stale");
    v.fs.unlink(Path::new(&shown)).unwrap();
    assert!(!again.exists());
    assert_eq!(read_file(&v.fs, "plan.txt").unwrap(), b"theirs, amended");
}

#[test]
fn a_name_shaped_like_a_copy_is_an_ordinary_name_when_no_copy_exists() {
    let v = CoreVault::new(&small());
    let name = "notes (1).txt";
    write_file(&v.fs, name, b"just a name");
    assert_eq!(names(&v.fs, ""), set(&[name]));
    assert_eq!(read_file(&v.fs, name).unwrap(), b"just a name");
    // Its backing name is its own encrypted name, not a marked one.
    let backing = v.backing(name);
    assert!(!backing.file_name().unwrap().as_bytes().contains(&b' '));
    // And a real entry with a copy's shown name wins over the copy.
    write_file(&v.fs, "notes.txt", b"original");
    make_copy(&v, "notes.txt", " (1)", b"the copy");
    assert_eq!(names(&v.fs, ""), set(&["notes.txt", name]));
    assert_eq!(read_file(&v.fs, name).unwrap(), b"just a name");
    // fsck still lists the shadowed copy.
    let report = check(&v);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ConflictCopy
                && f.copy_of.as_deref() == Some(Path::new("notes.txt")))
    );
}

#[test]
fn copies_of_long_names_share_the_originals_sidecar_which_outlives_the_original() {
    let v = CoreVault::new(&small());
    let long = format!("{}.txt", "a-very-long-name-".repeat(12));
    write_file(&v.fs, &long, b"original");
    let original = v.backing(&long);
    assert!(
        original.to_string_lossy().ends_with(".envfs-ln"),
        "a long name"
    );
    let sidecar = PathBuf::from(format!("{}.name", original.display()));
    assert!(sidecar.exists());
    let m = ".sync-conflict-20261201-180306-TQ7MR7C";
    let copy = make_copy(&v, &long, m, b"copy");
    let shown = String::from_utf8(envfs::format::sync_names::shown_name(
        long.as_bytes(),
        m.as_bytes(),
    ))
    .unwrap();
    assert_eq!(names(&v.fs, ""), set(&[&long, &shown]));
    assert_eq!(read_file(&v.fs, &shown).unwrap(), b"copy");

    // Removing the original keeps the sidecar: the copy's name is in it.
    v.fs.unlink(Path::new(&long)).unwrap();
    assert!(sidecar.exists());
    assert_eq!(names(&v.fs, ""), set(&[&shown]));
    assert_eq!(read_file(&v.fs, &shown).unwrap(), b"copy");
    assert!(check(&v).is_clean(), "{:?}", check(&v).findings);

    // Renaming the copy back to the original's name restores it.
    v.fs.rename(Path::new(&shown), Path::new(&long), 0).unwrap();
    assert!(!copy.exists());
    assert_eq!(names(&v.fs, ""), set(&[&long]));
    assert_eq!(read_file(&v.fs, &long).unwrap(), b"copy");

    // The marker after `.envfs-ln` (how a client that sees `.envfs-ln` as no extension
    // would put it) reads the same.
    let after = PathBuf::from(format!("{}{m}", original.display()));
    let scratch = "scratch";
    write_file(&v.fs, scratch, b"after");
    fs::rename(v.backing(scratch), &after).unwrap();
    assert_eq!(read_file(&v.fs, &shown).unwrap(), b"after");

    // With the last user of the sidecar gone, the sidecar goes too.
    v.fs.unlink(Path::new(&shown)).unwrap();
    v.fs.unlink(Path::new(&long)).unwrap();
    assert!(!sidecar.exists());
    assert!(names(&v.fs, "").is_empty());
}

#[test]
fn directory_copies_are_shown_with_their_contents() {
    let v = CoreVault::new(&small());
    v.fs.mkdir(Path::new("Photos"), 0o755, None).unwrap();
    write_file(&v.fs, "Photos/a.jpg", b"a");
    // Dropbox keeps a directory whose name clashes in case as `<name> (Case Conflict)`.
    v.fs.mkdir(Path::new("scratch"), 0o755, None).unwrap();
    write_file(&v.fs, "scratch/b.jpg", b"b");
    let copy = marked(&v.backing("Photos"), " (Case Conflict)");
    fs::rename(v.backing("scratch"), &copy).unwrap();
    assert_eq!(names(&v.fs, ""), set(&["Photos", "Photos (Case Conflict)"]));
    assert_eq!(names(&v.fs, "Photos (Case Conflict)"), set(&["b.jpg"]));
    assert_eq!(
        read_file(&v.fs, "Photos (Case Conflict)/b.jpg").unwrap(),
        b"b"
    );
    write_file(&v.fs, "Photos (Case Conflict)/c.jpg", b"c");
    assert_eq!(
        names(&v.fs, "Photos (Case Conflict)"),
        set(&["b.jpg", "c.jpg"])
    );
}

#[test]
fn a_forged_conflict_copy_is_authenticated_like_any_file() {
    let v = CoreVault::new(&small());
    write_file(&v.fs, "pay.csv", &vec![7u8; 5000]);
    let m = " (conflicted copy 2026-12-01 180306)";
    let copy = make_copy(&v, "pay.csv", m, &vec![8u8; 5000]);
    // Dragon flips one bit of the copy's header.
    let mut bytes = fs::read(&copy).unwrap();
    bytes[40] ^= 1;
    fs::write(&copy, &bytes).unwrap();
    let shown = format!("pay{m}.csv");
    assert!(names(&v.fs, "").contains(&shown));
    let err = read_file(&v.fs, &shown).expect_err("a forged header must not open");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // The original is untouched; fsck names the copy's damage under its shown name.
    assert_eq!(read_file(&v.fs, "pay.csv").unwrap(), vec![7u8; 5000]);
    let report = check(&v);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::BadHeader
                && f.path.as_deref() == Some(Path::new(&shown))),
        "{:?}",
        report.findings
    );
    assert!(!report.is_clean());
}

#[test]
fn client_files_are_hidden_silently_and_foreign_entries_are_hidden_and_counted() {
    let v = CoreVault::new(&small());
    write_file(&v.fs, "a.txt", b"a");
    let root = v.root().to_path_buf();
    for name in [
        ".stfolder",
        ".stignore",
        ".DS_Store",
        "desktop.ini",
        ".dropbox.cache",
    ] {
        fs::write(root.join(name), b"client").unwrap();
    }
    fs::create_dir(root.join(".stversions")).unwrap();
    fs::write(root.join("stray file.txt"), b"not envfs").unwrap();
    fs::write(
        root.join("QUJDREVGR0hJSktMTU5PUFFSU1RV"),
        b"looks encrypted",
    )
    .unwrap();
    assert_eq!(names(&v.fs, ""), set(&["a.txt"]));
    let counts = v.fs.entry_counts();
    assert_eq!(
        counts.foreign_hidden, 1,
        "only the stray file is foreign: {counts:?}"
    );
    names(&v.fs, "");
    assert_eq!(
        v.fs.entry_counts().foreign_hidden,
        1,
        "counted once per entry"
    );

    let report = check(&v);
    let kinds: Vec<(FindingKind, String)> = report
        .findings
        .iter()
        .map(|f| {
            (
                f.kind,
                f.backing_path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect();
    for name in [
        ".stfolder",
        ".stignore",
        ".DS_Store",
        "desktop.ini",
        ".dropbox.cache",
        ".stversions",
    ] {
        assert!(
            kinds.contains(&(FindingKind::SyncClientFile, name.into())),
            "{name}: {kinds:?}"
        );
    }
    assert!(kinds.contains(&(FindingKind::UnknownFile, "stray file.txt".into())));
    assert!(kinds.contains(&(
        FindingKind::UndecryptableName,
        "QUJDREVGR0hJSktMTU5PUFFSU1RV".into()
    )));
}

#[test]
fn fsck_names_both_sides_of_a_conflict_and_a_vault_with_only_copies_is_clean() {
    let v = CoreVault::new(&small());
    v.fs.mkdir(Path::new("docs"), 0o755, None).unwrap();
    write_file(&v.fs, "docs/report.docx", b"winner");
    let m = ".sync-conflict-20261201-180306-TQ7MR7C";
    make_copy(&v, "docs/report.docx", m, b"loser");
    fs::write(v.root().join(".stfolder"), b"").unwrap();
    let report = check(&v);
    assert!(
        report.is_clean(),
        "copies are notices: {:?}",
        report.findings
    );
    let copy = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::ConflictCopy)
        .expect("a conflict-copy finding");
    assert_eq!(
        copy.path.as_deref(),
        Some(Path::new(&format!("docs/report{m}.docx")))
    );
    assert_eq!(copy.copy_of.as_deref(), Some(Path::new("docs/report.docx")));
    assert!(copy.detail.contains("Syncthing"), "{}", copy.detail);
    assert_eq!(report.notices(), 2);
    // The copy's chunks were checked: two files.
    assert_eq!(report.stats.files, 2);
}

#[test]
fn syncthing_versions_are_reachable_by_name_and_never_listed() {
    let v = CoreVault::new(&small());
    v.fs.mkdir(Path::new("docs"), 0o755, None).unwrap();
    write_file(&v.fs, "docs/report.docx", b"current");
    // Syncthing's simple versioning moved the previous version to
    // .stversions/<backing dir>/<backing name>~<date>-<time>.
    let docs = v.backing("docs");
    let versions = v.root().join(".stversions").join(docs.file_name().unwrap());
    fs::create_dir_all(&versions).unwrap();
    write_file(&v.fs, "docs/old", b"previous");
    let name = v.backing("docs/report.docx");
    let mut kept = name.file_name().unwrap().to_os_string();
    kept.push("~20261201-180306");
    fs::rename(v.backing("docs/old"), versions.join(&kept)).unwrap();

    assert_eq!(names(&v.fs, ""), set(&["docs"]));
    assert_eq!(names(&v.fs, ".stversions"), set(&["docs"]));
    assert_eq!(
        names(&v.fs, ".stversions/docs"),
        set(&["report~20261201-180306.docx"])
    );
    assert_eq!(
        read_file(&v.fs, ".stversions/docs/report~20261201-180306.docx").unwrap(),
        b"previous"
    );
    // A user's own `.stversions` where Syncthing has none is an ordinary (encrypted) name.
    let w = CoreVault::new(&small());
    w.fs.mkdir(Path::new(".stversions"), 0o755, None).unwrap();
    assert_eq!(names(&w.fs, ""), set(&[".stversions"]));
    assert!(!w.root().join(".stversions").exists());
}

#[test]
fn non_utf8_names_keep_their_bytes_in_a_copys_shown_name() {
    let v = CoreVault::new(&small());
    let raw = OsString::from_vec(b"caf\xe9.txt".to_vec());
    let raw_str = raw.to_string_lossy().into_owned();
    let (h, _) =
        v.fs.create(Path::new(&raw), 0o644, libc::O_RDWR, None)
            .unwrap();
    v.fs.write(&h, 0, b"x").unwrap();
    drop(h);
    let original = v.fs.backing_path(Path::new(&raw)).unwrap();
    write_file(&v.fs, "s", b"y");
    fs::rename(v.backing("s"), marked(&original, " (1)")).unwrap();
    let listed: Vec<Vec<u8>> =
        v.fs.readdir(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|e| e.name.into_vec())
            .collect();
    assert!(
        listed.contains(&b"caf\xe9 (1).txt".to_vec()),
        "{raw_str}: {listed:?}"
    );
    let shown = OsString::from_vec(b"caf\xe9 (1).txt".to_vec());
    let h = v.fs.open(Path::new(&shown), libc::O_RDONLY).unwrap();
    assert_eq!(v.fs.read(&h, 0, 10).unwrap(), b"y");
}

#[test]
fn a_conflict_copy_of_the_vault_config_is_reported_as_a_lost_key_change() {
    let v = CoreVault::new(&small());
    write_file(&v.fs, "a.txt", b"a");
    let copy = v
        .root()
        .join("envfs.sync-conflict-20261201-180306-TQ7MR7C.conf");
    fs::copy(v.root().join("envfs.conf"), &copy).unwrap();
    assert_eq!(names(&v.fs, ""), set(&["a.txt"]));
    assert_eq!(v.fs.entry_counts().foreign_hidden, 1);
    let report = check(&v);
    let finding = report
        .findings
        .iter()
        .find(|f| f.backing_path == copy)
        .expect("reported");
    assert_eq!(finding.kind, FindingKind::UnknownFile);
    assert!(
        finding.detail.contains("conflict copy of the vault config"),
        "{}",
        finding.detail
    );
    assert!(!report.is_clean(), "a lost key change needs attention");
}

#[test]
fn a_copy_made_under_a_name_just_looked_up_is_found_by_the_next_listing() {
    // A mount remembers for its entry timeout that a name is no copy (so creating
    // hyphenated names costs no extra stats); a listing shows new copies at once and
    // makes them reachable by name.
    let v = CoreVault::new(&small());
    v.fs.set_dir_cache_ttl(std::time::Duration::from_secs(600));
    write_file(&v.fs, "notes.txt", b"mine");
    let shown = "notes (1).txt";
    assert!(read_file(&v.fs, shown).is_err(), "no copy yet");
    make_copy(&v, "notes.txt", " (1)", b"theirs");
    assert!(names(&v.fs, "").contains(shown));
    assert_eq!(read_file(&v.fs, shown).unwrap(), b"theirs");
}

#[test]
fn a_copy_of_a_copy_of_a_long_name_keeps_the_sidecar_alive() {
    let v = CoreVault::new(&small());
    let long = format!("{}.txt", "nested-copies-".repeat(14));
    write_file(&v.fs, &long, b"original");
    let sidecar = PathBuf::from(format!("{}.name", v.backing(&long).display()));
    let (m1, m2) = (
        ".sync-conflict-20261201-180306-AAAAAAA",
        ".sync-conflict-20261202-101010-BBBBBBB",
    );
    let c1 = make_copy(&v, &long, m1, b"first copy");
    // The copy of the copy, as Syncthing spells it: the second marker before `.envfs-ln`.
    write_file(&v.fs, "scratch", b"copy of the copy");
    let c2 = marked(&c1, m2);
    fs::rename(v.backing("scratch"), &c2).unwrap();
    let shown1 = String::from_utf8(envfs::format::sync_names::shown_name(
        long.as_bytes(),
        m1.as_bytes(),
    ))
    .unwrap();
    // The copy of the copy shows with both markers (cut to 255 bytes); whatever its name,
    // it must open by it.
    let listed = names(&v.fs, "");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let shown2 = listed
        .iter()
        .find(|n| **n != long && **n != shown1)
        .unwrap()
        .clone();
    assert!(shown2.len() <= 255, "{shown2}");
    assert_eq!(read_file(&v.fs, &shown2).unwrap(), b"copy of the copy");
    v.fs.unlink(Path::new(&long)).unwrap();
    v.fs.unlink(Path::new(&shown1)).unwrap();
    assert!(sidecar.exists(), "the copy of the copy still needs it");
    assert_eq!(read_file(&v.fs, &shown2).unwrap(), b"copy of the copy");
    let report = check(&v);
    assert!(report.is_clean(), "no orphan: {:?}", report.findings);
    let repair = Options {
        repair_names: true,
        ..Options::default()
    };
    fsck::check(v.fs.vault(), &repair, &Progress::default()).unwrap();
    assert!(sidecar.exists(), "--repair-names keeps it too");
}

#[test]
fn a_copy_whose_shown_name_dropped_the_extension_still_opens() {
    let v = CoreVault::new(&small());
    // An extension so long that marker and extension do not fit in 255 bytes together.
    let name = format!("D.{}", "x".repeat(230));
    write_file(&v.fs, &name, b"original");
    let m = ".sync-conflict-20261201-180306-TQ7MR7C";
    make_copy(&v, &name, m, b"the copy");
    let shown = format!("D{m}");
    assert_eq!(names(&v.fs, ""), set(&[&name, &shown]));
    assert_eq!(read_file(&v.fs, &shown).unwrap(), b"the copy");
}

#[test]
fn keeping_a_copy_never_lands_on_another_copy_shown_under_the_originals_name() {
    let v = CoreVault::new(&small());
    write_file(&v.fs, "notes.txt", b"notes");
    write_file(&v.fs, "notes (1).txt", b"M");
    let m = ".sync-conflict-20261201-180306-TQ7MR7C";
    make_copy(&v, "notes (1).txt", m, b"M's copy");
    // `notes (1).txt` itself goes; a numbered copy of notes.txt now shows under its name.
    fs::remove_file(v.backing("notes (1).txt")).unwrap();
    let numbered = make_copy(&v, "notes.txt", " (1)", b"N's numbered copy");
    let conflicts = v.fs.conflicts().unwrap();
    let plan =
        v.fs.plan_resolution(&conflicts, &envfs::fs::conflicts::Keep::Newest)
            .unwrap();
    let results: Vec<_> = plan.iter().map(|r| v.fs.resolve_conflict(r)).collect();
    // M's copy took M's own name; N's numbered copy is untouched (its group is refused:
    // its shown name is now a real entry's).
    assert!(!fs::read(&numbered).unwrap().is_empty());
    assert_eq!(read_file(&v.fs, "notes (1).txt").unwrap(), b"M's copy");
    assert!(results.iter().any(|r| r.is_err()), "{results:?}");
    assert_eq!(read_file(&v.fs, "notes.txt").unwrap(), b"notes");
}

#[test]
fn a_name_crafted_with_dozens_of_markers_is_judged_in_bounded_work() {
    let v = CoreVault::new(&small());
    write_file(&v.fs, "a", b"a");
    let own = v.backing("a");
    let crafted = format!(
        "{}{}",
        own.file_name().unwrap().to_str().unwrap(),
        " (1)".repeat(50)
    );
    write_file(&v.fs, "s", b"s");
    fs::rename(v.backing("s"), v.root().join(&crafted)).unwrap();
    // Listed or not, the listing finishes; fsck too.
    let listed = names(&v.fs, "");
    assert!(listed.contains("a"));
    check(&v);
}
