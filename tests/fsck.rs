//! `envfs fsck`: a clean vault of a few thousand entries has no findings; a vault damaged in
//! every way the tamper matrix (tests/tamper.rs) lists, plus the name and sidecar cases, is
//! reported item by item — exactly the damaged items, with the right kind, backing path,
//! plaintext path and chunk — through the library, the text output and `--json`;
//! `--repair-names` removes only orphaned sidecars and leftover temporary files; operational
//! errors (wrong key, not a vault) keep their exit codes.

mod support;

use envfs::format::NameEncoding;
use envfs::format::geometry::CHUNK_OVERHEAD;
use envfs::fs::Fs;
use envfs::fsck::{self, FindingKind, Options, Progress, Report};
use envfs::keys::local::LocalKeyProvider;
use envfs::vault::Vault;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Instant;
use support::fs_core::{read_file, write_file};
use support::{exit_code, pattern, run, stderr_text, stdout_text};

// The exit codes are a documented contract: spelled out, not imported.
const OK: i32 = 0;
const NOT_A_VAULT: i32 = 3;
const WRONG_KEY: i32 = 7;
const KEY_SERVICE: i32 = 8;
const FSCK_FOUND_PROBLEMS: i32 = 15;

/// (kind, backing path, chunk, plaintext path)
type Item = (FindingKind, PathBuf, Option<u64>, Option<PathBuf>);

/// A vault made by the real binary (so it has a key file), filled through the library.
struct Fixture {
    tv: support::TestVault,
    fs: Fs,
}

impl Fixture {
    fn new(init_args: &[&str]) -> Fixture {
        let tv = support::TestVault::new(init_args);
        let fs = open(&tv.backing, &tv.key);
        Fixture { tv, fs }
    }

    fn small() -> Fixture {
        Fixture::new(&["--chunk-size", "1024", "--header-size", "256"])
    }

    fn backing(&self, path: &str) -> PathBuf {
        self.fs.backing_path(Path::new(path)).unwrap()
    }

    fn mkdir(&self, path: &str) {
        self.fs.mkdir(Path::new(path), 0o755, None).unwrap();
    }

    fn write(&self, path: &str, len: usize, seed: u64) {
        write_file(&self.fs, path, &pattern(seed, len));
    }

    fn symlink(&self, target: &str, path: &str) {
        self.fs
            .symlink(target.as_ref(), Path::new(path), None)
            .unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        run(self
            .tv
            .cmd()
            .arg("fsck")
            .arg(&self.tv.backing)
            .arg("--key-file")
            .arg(&self.tv.key)
            .args(args))
    }

    /// The library's report on a freshly opened vault.
    fn check(&self, repair: bool) -> Report {
        let vault = open_vault(&self.tv.backing, &self.tv.key);
        let opts = Options {
            repair_names: repair,
            ..Options::default()
        };
        fsck::check(&vault, &opts, &Progress::default()).unwrap()
    }
}

fn open_vault(backing: &Path, key: &Path) -> Vault {
    let provider = Arc::new(LocalKeyProvider::load(key).unwrap());
    Vault::open(backing, vec![provider]).unwrap()
}

fn open(backing: &Path, key: &Path) -> Fs {
    Fs::new(Arc::new(open_vault(backing, key)))
}

fn items(report: &Report) -> BTreeSet<Item> {
    report
        .findings
        .iter()
        .map(|f| (f.kind, f.backing_path.clone(), f.chunk, f.path.clone()))
        .collect()
}

/// The findings of `--json` output, checked to be one well-formed document.
fn json_items(stdout: &[u8]) -> (BTreeSet<Item>, serde_json::Value) {
    let doc: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "--json output does not parse ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    });
    let findings = doc["findings"].as_array().expect("findings array");
    let set = findings
        .iter()
        .map(|f| {
            (
                FindingKind::from_id(f["kind"].as_str().unwrap()).expect("known kind"),
                PathBuf::from(f["backing_path"].as_str().unwrap()),
                f["chunk"].as_u64(),
                f["path"].as_str().map(PathBuf::from),
            )
        })
        .collect::<BTreeSet<_>>();
    assert_eq!(set.len(), findings.len(), "no duplicate findings");
    (set, doc)
}

fn show(set: &BTreeSet<Item>) -> String {
    set.iter()
        .map(|(k, b, c, p)| format!("  {} {} chunk {c:?} path {p:?}\n", k.id(), b.display()))
        .collect()
}

#[track_caller]
fn assert_same(got: &BTreeSet<Item>, want: &BTreeSet<Item>, what: &str) {
    if got != want {
        panic!(
            "{what}:\nunexpected:\n{}missing:\n{}",
            show(&got.difference(want).cloned().collect()),
            show(&want.difference(got).cloned().collect())
        );
    }
}

/// Flip one bit of an encoded name so that it stays in the vault's alphabet (as in
/// tests/tamper.rs).
fn flip_name_char(name: &str, encoding: NameEncoding) -> String {
    let alphabet = |c: u8| match encoding {
        NameEncoding::Base64Url => c.is_ascii_alphanumeric() || c == b'-' || c == b'_',
        NameEncoding::Base32 => c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c),
    };
    let mut bytes = name.as_bytes().to_vec();
    let mid = bytes.len() / 2;
    for at in (mid..bytes.len()).chain(0..mid) {
        for bit in 0..6 {
            let c = bytes[at] ^ (1 << bit);
            if alphabet(c) {
                bytes[at] = c;
                return String::from_utf8(bytes).unwrap();
            }
        }
    }
    unreachable!()
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::write(path, bytes).unwrap();
}

fn set_len(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn sidecar_of(entry: &Path) -> PathBuf {
    let name = entry.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with(".envfs-ln"), "{name} is a long-name entry");
    entry.with_file_name(format!("{name}.name"))
}

/// Fill a vault with `dirs` × 4 subdirectories × `per_dir` files of every interesting size,
/// plus long names, symlinks, a hard link, a FIFO and a file large enough to be checked in
/// several segments (if `big`). Returns the number of regular files written.
fn populate(fx: &Fixture, dirs: usize, per_dir: usize, chunk: usize, big: bool) -> usize {
    let mut files = 0;
    for d in 0..dirs {
        fx.mkdir(&format!("d{d}"));
        for s in 0..4 {
            let dir = format!("d{d}/s{s}");
            fx.mkdir(&dir);
            for i in 0..per_dir {
                let len = match i % 8 {
                    0 => 0,
                    1 => 1,
                    2 => chunk,
                    3 => 2 * chunk + 1,
                    4 => 3 * chunk,
                    5 => chunk - 1,
                    _ => (i * 37) % 700 + 2,
                };
                fx.write(
                    &format!("{dir}/f{i}.txt"),
                    len,
                    (d * 10_000 + s * 1000 + i) as u64,
                );
                files += 1;
            }
        }
    }
    let long_dir = "L".repeat(180);
    fx.mkdir(&long_dir);
    for i in 0..20 {
        let name = format!("{long_dir}/{}{i}", "n".repeat(200));
        fx.write(&name, i * 97, 90 + i as u64);
        files += 1;
    }
    fx.mkdir("links");
    fx.symlink("../d0/s0/f1.txt", "links/short");
    fx.symlink(&"t/".repeat(400), "links/long-target");
    fx.symlink("x", &format!("links/{}", "s".repeat(220)));
    fx.fs
        .link(Path::new("d0/s0/f2.txt"), Path::new("links/hard"))
        .unwrap();
    fx.fs
        .mknod(Path::new("links/fifo"), libc::S_IFIFO | 0o644, 0, None)
        .unwrap();
    if big {
        // More chunks than one segment (16 batches of 256 chunks).
        fx.write("big", BIG, 7);
        files += 1;
    }
    files
}

/// A file checked in two segments with the smallest chunk size.
const BIG: usize = 4200 * 1024 + 5;

// ---- clean vaults -------------------------------------------------------------------------

#[test]
fn a_clean_vault_of_thousands_of_files_has_no_findings() {
    let fx = Fixture::small();
    let files = populate(&fx, 10, 50, 1024, true);
    assert!(files >= 2000);

    let start = Instant::now();
    let out = fx.run(&[]);
    eprintln!("fsck of {files} files took {:?}", start.elapsed());
    assert_eq!(
        exit_code(&out),
        OK,
        "stdout: {}\nstderr: {}",
        stdout_text(&out),
        stderr_text(&out)
    );
    // No progress line when stderr is not a terminal, and nothing else either.
    assert_eq!(stderr_text(&out), "");
    let stdout = stdout_text(&out);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("no problems found"), "{stdout}");
    // A hard link is one more name of a file (each name counts), the root is not counted.
    assert!(
        stdout.starts_with(&format!(
            "checked {} files, 52 directories, 3 symlinks",
            files + 1
        )),
        "{stdout}"
    );

    let out = fx.run(&["--json"]);
    assert_eq!(exit_code(&out), OK);
    let (set, doc) = json_items(&out.stdout);
    assert!(set.is_empty());
    assert_eq!(doc["summary"]["problems"], 0);
    assert_eq!(doc["summary"]["files"], files as u64 + 1);
    assert_eq!(doc["summary"]["other"], 1);
    let chunks = doc["summary"]["chunks"].as_u64().unwrap();
    assert!(
        chunks > 4200 + 2000,
        "every chunk of every file is counted: {chunks}"
    );

    let report = fx.check(false);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.stats.chunks, chunks);
}

#[test]
fn clean_base32_and_plaintext_names_vaults_have_no_findings() {
    for args in [
        vec![
            "--chunk-size",
            "1024",
            "--header-size",
            "256",
            "--name-encoding",
            "base32",
        ],
        vec![
            "--chunk-size",
            "1024",
            "--header-size",
            "256",
            "--plaintext-names",
        ],
        vec![],
    ] {
        let fx = Fixture::new(&args);
        populate(
            &fx,
            1,
            20,
            fx.fs.vault().geometry.chunk_size as usize,
            false,
        );
        let out = fx.run(&[]);
        assert_eq!(
            exit_code(&out),
            OK,
            "{args:?}: {}{}",
            stdout_text(&out),
            stderr_text(&out)
        );
    }
}

// ---- the damage matrix --------------------------------------------------------------------

/// A vault with undamaged neighbours around every damaged item, damaged in every way the
/// tamper matrix lists plus the name and sidecar cases. Returns the expected findings.
fn damaged_vault(fx: &Fixture) -> BTreeSet<Item> {
    let g = fx.fs.vault().geometry;
    let (c, h) = (g.chunk_size as usize, g.header_size);
    let enc = fx.fs.vault().config.name_encoding;
    let mut want = BTreeSet::new();
    let mut expect = |kind, path: &str, backing: PathBuf, chunk: Option<u64>, plain: bool| {
        want.insert((kind, backing, chunk, plain.then(|| PathBuf::from(path))));
    };
    use FindingKind::*;

    // Neighbours that must not be reported.
    populate(fx, 1, 16, c, false);
    fx.mkdir("v");
    let five = 5 * c;
    let three_half = 3 * c + c / 2;

    // ---- file headers: one bit flip in each region (offsets as in tests/tamper.rs).
    let slot = 56u64;
    let id_len = 22u64; // "local:" + 16 hex digits
    let wrapped = slot + 2 + id_len + 2;
    for (name, offset, bit, kind) in [
        ("magic", 0, 0, BadHeader),
        ("version-high", 4, 0, BadHeader), // a version from the future
        ("version-low", 5, 0, BadHeader),
        ("slot-count", 6, 1, BadHeader),
        ("reserved", 7, 0, BadHeader),
        ("file-id", 8, 0, BadHeader),
        ("commitment", 24, 0, BadHeader),
        ("slot-provider", slot, 1, KeyUnavailable),
        ("slot-key-id", slot + 2 + id_len - 1, 0, KeyUnavailable),
        ("slot-key-id-length", slot + 1, 0, BadHeader),
        ("wrapped-key", wrapped + 12, 3, BadHeader),
        ("wrapped-key-tag", wrapped + 59, 7, BadHeader),
        ("padding", h - 33, 0, BadHeader),
        ("mac", h - 1, 7, BadHeader),
    ] {
        let path = format!("v/header-{name}");
        fx.write(&path, five, offset);
        let b = fx.backing(&path);
        edit(&b, |bytes| bytes[offset as usize] ^= 1 << bit);
        expect(kind, &path, b, None, true);
    }

    // ---- chunks.
    let chunk_range = |i: u64, len: usize| {
        let start = g.chunk_backing_offset(i) as usize;
        start..start + g.chunk_plain_len(i, len as u64) as usize + CHUNK_OVERHEAD as usize
    };
    fx.write("v/bit-flip", five, 1);
    let b = fx.backing("v/bit-flip");
    edit(&b, |bytes| bytes[chunk_range(2, five).start + 20] ^= 4);
    expect(TamperedChunk, "v/bit-flip", b, Some(2), true);

    fx.write("v/tag-flip-last", three_half, 2);
    let b = fx.backing("v/tag-flip-last");
    edit(&b, |bytes| *bytes.last_mut().unwrap() ^= 0x80);
    expect(TamperedChunk, "v/tag-flip-last", b, Some(3), true);

    fx.write("v/zeroed", five, 3);
    let b = fx.backing("v/zeroed");
    edit(&b, |bytes| bytes[chunk_range(1, five)].fill(0));
    expect(TamperedChunk, "v/zeroed", b, Some(1), true);

    fx.write("v/swapped", five, 4);
    let b = fx.backing("v/swapped");
    edit(&b, |bytes| {
        let (a, z) = (chunk_range(1, five), chunk_range(3, five));
        let first = bytes[a.clone()].to_vec();
        bytes.copy_within(z.clone(), a.start);
        bytes[z].copy_from_slice(&first);
    });
    expect(TamperedChunk, "v/swapped", b.clone(), Some(1), true);
    expect(TamperedChunk, "v/swapped", b, Some(3), true);

    fx.write("v/donor", five, 5);
    let donor = fs::read(fx.backing("v/donor")).unwrap();
    fx.write("v/chunk-moved", five, 6);
    let b = fx.backing("v/chunk-moved");
    edit(&b, |bytes| {
        let r = chunk_range(0, five);
        bytes[r.clone()].copy_from_slice(&donor[r]);
    });
    expect(TamperedChunk, "v/chunk-moved", b, Some(0), true);

    fx.write("v/header-copied", 3 * c, 7);
    let b = fx.backing("v/header-copied");
    edit(&b, |bytes| {
        bytes[..h as usize].copy_from_slice(&donor[..h as usize])
    });
    for i in 0..3 {
        // The header is authentic, but for another file id and key: every chunk fails.
        expect(TamperedChunk, "v/header-copied", b.clone(), Some(i), true);
    }

    // ---- lengths.
    fx.write("v/cut-at-boundary", five, 8);
    let b = fx.backing("v/cut-at-boundary");
    set_len(&b, g.chunk_backing_offset(3));
    expect(Truncated, "v/cut-at-boundary", b, Some(2), true);

    fx.write("v/cut-mid-chunk", five, 9);
    let b = fx.backing("v/cut-mid-chunk");
    set_len(&b, g.chunk_backing_offset(3) + 100);
    expect(TamperedChunk, "v/cut-mid-chunk", b, Some(3), true);

    fx.write("v/cut-into-overhead", five, 10);
    let b = fx.backing("v/cut-into-overhead");
    set_len(&b, g.chunk_backing_offset(3) + 10);
    expect(InvalidLength, "v/cut-into-overhead", b, Some(3), true);

    fx.write("v/cut-in-header", five, 11);
    let b = fx.backing("v/cut-in-header");
    set_len(&b, h / 2);
    expect(InvalidLength, "v/cut-in-header", b, None, true);

    fx.write("v/appended-1", three_half, 12);
    let b = fx.backing("v/appended-1");
    edit(&b, |bytes| bytes.push(0x55));
    expect(TamperedChunk, "v/appended-1", b, Some(3), true);

    fx.write("v/appended-short", 2 * c, 13);
    let b = fx.backing("v/appended-short");
    edit(&b, |bytes| bytes.extend_from_slice(&[1; 10]));
    expect(InvalidLength, "v/appended-short", b, Some(2), true);

    fx.write("v/appended-chunk", 2 * c, 14);
    let b = fx.backing("v/appended-chunk");
    edit(&b, |bytes| {
        bytes.extend_from_slice(&pattern(77, g.backing_chunk_size() as usize))
    });
    expect(TamperedChunk, "v/appended-chunk", b.clone(), Some(1), true);
    expect(TamperedChunk, "v/appended-chunk", b, Some(2), true);

    fx.write("v/appended-to-empty", 0, 0);
    let b = fx.backing("v/appended-to-empty");
    fs::write(&b, [9u8; 5]).unwrap();
    expect(InvalidLength, "v/appended-to-empty", b, None, true);

    // A chunk deep in a file checked in several segments.
    fx.write("v/big", BIG, 15);
    let b = fx.backing("v/big");
    edit(&b, |bytes| bytes[chunk_range(4150, BIG).start + 50] ^= 1);
    expect(TamperedChunk, "v/big", b, Some(4150), true);

    // ---- names and sidecars.
    fx.write("v/renamed", 10, 16);
    let b = fx.backing("v/renamed");
    let flipped = b.with_file_name(flip_name_char(
        b.file_name().unwrap().to_str().unwrap(),
        enc,
    ));
    fs::rename(&b, &flipped).unwrap();
    expect(UndecryptableName, "", flipped, None, false);

    // A directory whose name no longer decrypts: its damaged content is still found, by
    // backing path only.
    fx.mkdir("v/dir");
    fx.write("v/dir/inner", 3 * c, 17);
    fx.write("v/dir/fine", 3 * c, 18);
    let inner = fx.backing("v/dir/inner");
    edit(&inner, |bytes| bytes[chunk_range(1, 3 * c).start + 30] ^= 1);
    let dir = fx.backing("v/dir");
    let flipped = dir.with_file_name(flip_name_char(
        dir.file_name().unwrap().to_str().unwrap(),
        enc,
    ));
    fs::rename(&dir, &flipped).unwrap();
    expect(UndecryptableName, "", flipped.clone(), None, false);
    expect(
        TamperedChunk,
        "",
        flipped.join(inner.file_name().unwrap()),
        Some(1),
        false,
    );

    let long = |i: u32| format!("v/{}{i}", "long-name-".repeat(20));
    for i in 0..4 {
        fx.write(&long(i), 100, 20 + i as u64);
    }
    // Orphaned sidecar: the entry is gone.
    let entry = fx.backing(&long(0));
    fs::remove_file(&entry).unwrap();
    expect(OrphanedSidecar, "", sidecar_of(&entry), None, false);
    // Missing sidecar.
    let entry = fx.backing(&long(1));
    fs::remove_file(sidecar_of(&entry)).unwrap();
    expect(MissingSidecar, "", entry, None, false);
    // Mismatched sidecar: another entry's (authentic) sidecar content.
    let entry = fx.backing(&long(2));
    fs::copy(sidecar_of(&fx.backing(&long(3))), sidecar_of(&entry)).unwrap();
    expect(MismatchedSidecar, "", entry, None, false);

    // Foreign files and envfs' leftover temporary files.
    let vdir = fx.backing("v");
    for (name, kind) in [
        ("notes.txt", UnknownFile),
        ("README", UnknownFile),
        (".DS_Store", UnknownFile),
        (".envfs-tmp-0123456789abcdef", LeftoverTemp),
    ] {
        fs::write(vdir.join(name), b"x").unwrap();
        expect(kind, "", vdir.join(name), None, false);
    }
    fs::create_dir(vdir.join(".stfolder")).unwrap();
    fs::write(vdir.join(".stfolder/inside"), b"not walked").unwrap();
    expect(UnknownFile, "", vdir.join(".stfolder"), None, false);
    let root_tmp = fx.tv.backing.join(".envfs-config-0123456789abcdef.tmp");
    fs::write(&root_tmp, b"half a config").unwrap();
    expect(LeftoverTemp, "", root_tmp, None, false);

    // A tampered symlink target.
    fx.symlink("some/target", "v/link");
    let b = fx.backing("v/link");
    let stored = fs::read_link(&b).unwrap();
    let tampered = flip_name_char(stored.to_str().unwrap(), enc);
    fs::remove_file(&b).unwrap();
    std::os::unix::fs::symlink(tampered, &b).unwrap();
    expect(UndecryptableSymlink, "v/link", b, None, true);

    want
}

#[test]
fn fsck_reports_exactly_the_damaged_items() {
    for args in [
        vec!["--chunk-size", "1024", "--header-size", "256"],
        vec![
            "--chunk-size",
            "1024",
            "--header-size",
            "256",
            "--name-encoding",
            "base32",
        ],
    ] {
        let fx = Fixture::new(&args);
        let want = damaged_vault(&fx);

        let report = fx.check(false);
        assert_same(&items(&report), &want, &format!("{args:?}: library report"));
        assert_eq!(report.findings.len(), want.len(), "one finding per item");

        let out = fx.run(&[]);
        assert_eq!(
            exit_code(&out),
            FSCK_FOUND_PROBLEMS,
            "{}",
            stderr_text(&out)
        );
        let stdout = stdout_text(&out);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), want.len() + 1, "{stdout}");
        for (line, finding) in lines.iter().zip(&report.findings) {
            assert!(
                line.starts_with(&format!("{}: ", finding.kind.id())),
                "{line}"
            );
            assert!(
                line.contains(&format!("[backing {}]", finding.backing_path.display())),
                "{line}"
            );
            if let Some(c) = finding.chunk {
                assert!(line.contains(&format!("chunk {c}")), "{line}");
            }
        }
        let summary = lines.last().unwrap();
        assert!(
            summary.contains(&format!("{} problems", want.len())),
            "{summary}"
        );
        assert!(summary.contains("tampered-chunk "), "{summary}");
        assert!(
            stderr_text(&out).contains(&format!("fsck found {} problems", want.len())),
            "{}",
            stderr_text(&out)
        );

        let out = fx.run(&["--json"]);
        assert_eq!(exit_code(&out), FSCK_FOUND_PROBLEMS);
        let (set, doc) = json_items(&out.stdout);
        assert_same(&set, &want, &format!("{args:?}: --json"));
        assert_eq!(doc["summary"]["problems"], want.len() as u64);
        let by_kind = doc["summary"]["by_kind"].as_object().unwrap();
        let tampered = want
            .iter()
            .filter(|i| i.0 == FindingKind::TamperedChunk)
            .count();
        assert_eq!(by_kind["tampered-chunk"], tampered as u64);

        // Plaintext names reach only fsck's own output: not the log, not stderr.
        assert!(!stderr_text(&out).contains("bit-flip"));
    }
}

#[test]
fn repair_names_removes_only_orphans_and_temporary_files() {
    let fx = Fixture::small();
    populate(&fx, 1, 8, 1024, false);
    let long = |i: u32| format!("d0/{}{i}", "x".repeat(200));
    fx.write(&long(0), 10, 1);
    fx.write(&long(1), 10, 2);
    let orphan_entry = fx.backing(&long(0));
    fs::remove_file(&orphan_entry).unwrap();
    let orphan = sidecar_of(&orphan_entry);
    let kept_sidecar = sidecar_of(&fx.backing(&long(1)));
    let temps = [
        fx.backing("d0").join(".envfs-tmp-00112233445566ff"),
        fx.tv.backing.join(".envfs-config-0011223344556677.tmp"),
    ];
    for t in &temps {
        fs::write(t, b"tmp").unwrap();
    }

    let out = fx.run(&[]);
    assert_eq!(exit_code(&out), FSCK_FOUND_PROBLEMS);
    assert!(
        orphan.exists() && temps.iter().all(|t| t.exists()),
        "plain fsck changes nothing"
    );

    let out = fx.run(&["--repair-names"]);
    assert_eq!(
        exit_code(&out),
        OK,
        "all problems repaired: {}",
        stdout_text(&out)
    );
    let stdout = stdout_text(&out);
    assert_eq!(stdout.matches("(removed)").count(), 3, "{stdout}");
    assert!(stdout.contains("removed 3"), "{stdout}");
    assert!(!orphan.exists());
    assert!(temps.iter().all(|t| !t.exists()));
    assert!(kept_sidecar.exists(), "a sidecar in use is kept");
    assert_eq!(
        read_file(&open(&fx.tv.backing, &fx.tv.key), &long(1))
            .unwrap()
            .len(),
        10
    );

    let out = fx.run(&[]);
    assert_eq!(exit_code(&out), OK, "{}", stdout_text(&out));

    // Anything that could hold user data is reported but never removed.
    fs::write(fx.backing("d0").join("foreign.txt"), b"user data?").unwrap();
    fs::write(fx.backing("d0").join(".envfs-tmp-aaaaaaaaaaaaaaaa"), b"tmp").unwrap();
    edit(&fx.backing("d0/s0/f3.txt"), |b| b[300] ^= 1);
    let report = fx.check(true);
    let kinds: BTreeSet<(FindingKind, bool)> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.repaired))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            (FindingKind::UnknownFile, false),
            (FindingKind::LeftoverTemp, true),
            (FindingKind::TamperedChunk, false),
        ])
    );
    assert!(fx.backing("d0").join("foreign.txt").exists());
    let out = fx.run(&["--repair-names", "--json"]);
    assert_eq!(exit_code(&out), FSCK_FOUND_PROBLEMS);
    let (set, doc) = json_items(&out.stdout);
    assert_eq!(set.len(), 2);
    assert_eq!(doc["summary"]["repaired"], 0);
}

// ---- operational errors -------------------------------------------------------------------

#[test]
fn a_wrong_key_is_an_error_not_a_report() {
    let fx = Fixture::small();
    fx.write("a", 10, 1);
    let other = support::TestVault::new(&[]);
    let out = run(fx
        .tv
        .cmd()
        .arg("fsck")
        .arg(&fx.tv.backing)
        .arg("--key-file")
        .arg(&other.key));
    assert_eq!(exit_code(&out), WRONG_KEY, "{}", stderr_text(&out));
    assert!(out.stdout.is_empty(), "no report: {}", stdout_text(&out));
    assert!(
        stderr_text(&out).starts_with("envfs: wrong key"),
        "{}",
        stderr_text(&out)
    );

    let out = run(fx
        .tv
        .cmd()
        .arg("fsck")
        .arg(fx.tv.dir.path())
        .arg("--key-file")
        .arg(&fx.tv.key));
    assert_eq!(exit_code(&out), NOT_A_VAULT, "{}", stderr_text(&out));
    assert!(out.stdout.is_empty());
}

// ---- key services -------------------------------------------------------------------------

#[test]
fn key_service_errors_are_reported_apart_from_corruption() {
    use support::kms::{Fault, Kms};
    let kms = Kms::start();
    kms.create_key("alias/envfs-fsck");
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    let cmd = || {
        let mut c = std::process::Command::new(support::envfs_bin());
        c.env("XDG_CONFIG_HOME", dir.path().join("config"));
        kms.env(&mut c);
        c
    };
    let out = run(cmd()
        .arg("init")
        .arg(&backing)
        .arg("--kms-key")
        .arg("alias/envfs-fsck"));
    assert_eq!(exit_code(&out), OK, "init: {}", stderr_text(&out));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    {
        let out = run(cmd()
            .arg("mount")
            .arg(&backing)
            .arg(&mnt)
            .args(["-o", "prefetch=0"]));
        assert_eq!(exit_code(&out), OK, "mount: {}", stderr_text(&out));
        let _m = support::Mount::adopt(mnt.clone());
        fs::create_dir(mnt.join("d")).unwrap();
        for name in ["a", "d/b", "d/c"] {
            fs::write(mnt.join(name), name.repeat(3000)).unwrap();
        }
    }
    let fsck = || run(cmd().arg("fsck").arg(&backing).arg("--json"));
    let findings = |out: &Output| -> BTreeSet<(FindingKind, Option<PathBuf>)> {
        json_items(&out.stdout)
            .0
            .into_iter()
            .map(|(kind, _, _, path)| (kind, path))
            .collect()
    };

    let out = fsck();
    assert_eq!(
        exit_code(&out),
        OK,
        "{}{}",
        stdout_text(&out),
        stderr_text(&out)
    );

    // The vault opens (one Decrypt for its secret), then KMS refuses every file key: each
    // file is reported as a key-service error, not as corruption.
    kms.set(Fault::ErrorAfter {
        op: "Decrypt".into(),
        pass: 1,
        status: 400,
        code: "AccessDeniedException".into(),
    });
    let out = fsck();
    assert_eq!(
        exit_code(&out),
        FSCK_FOUND_PROBLEMS,
        "{}",
        stderr_text(&out)
    );
    let kse = |p: &str| (FindingKind::KeyServiceError, Some(PathBuf::from(p)));
    assert_eq!(
        findings(&out),
        BTreeSet::from([kse("a"), kse("d/b"), kse("d/c")])
    );
    assert!(
        stdout_text(&out).contains("AccessDenied"),
        "{}",
        stdout_text(&out)
    );

    // KMS refusing the vault secret itself is an operational error: exit 8, no report.
    kms.set(Fault::Error {
        op: Some("Decrypt".into()),
        status: 400,
        code: "AccessDeniedException".into(),
        times: None,
    });
    let out = fsck();
    assert_eq!(exit_code(&out), KEY_SERVICE, "{}", stderr_text(&out));
    assert!(out.stdout.is_empty());

    // With KMS back, real damage is reported as such.
    kms.set(Fault::Pass);
    let b = a_backing_file(&backing, 1);
    edit(&b, |bytes| bytes[2000] ^= 1);
    let out = fsck();
    assert_eq!(exit_code(&out), FSCK_FOUND_PROBLEMS);
    let set = findings(&out);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(set.iter().next().unwrap().0, FindingKind::TamperedChunk);
}

/// A regular file `depth` directories below the backing root (names are encrypted), found
/// by walking directories in a stable order.
fn a_backing_file(backing: &Path, depth: usize) -> PathBuf {
    let mut dir = backing.to_path_buf();
    for _ in 0..depth {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| fs::symlink_metadata(p).unwrap().is_dir())
            .collect();
        dirs.sort();
        dir = dirs.remove(0);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .collect();
    files.sort();
    files.remove(0)
}
