//! `envfs fsck`: a clean vault of a few thousand entries has no findings; a vault damaged in
//! every way the tamper matrix (tests/tamper.rs) lists, plus the name and sidecar cases, is
//! reported item by item — exactly the damaged items, with the right kind, backing path,
//! plaintext path and chunk — through the library, the text output and `--json`;
//! `--repair-names` removes only orphaned sidecars and leftover temporary files; operational
//! errors (wrong key, not a vault) keep their exit codes. And fsck agrees with a real mount
//! of the same damaged vault (plus the tamper matrix's remaining cases): every entry fsck
//! flags with a plaintext path fails through the mount with EIO, every entry fsck flags
//! without one is hidden from the mount's listing, and nothing else fails or is hidden.

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

    // Foreign files, sync clients' and file managers' own files (notices, named as what
    // they are), and envfs' leftover temporary files.
    let vdir = fx.backing("v");
    for (name, kind) in [
        ("notes.txt", UnknownFile),
        ("README", UnknownFile),
        (".DS_Store", SyncClientFile),
        (".envfs-tmp-0123456789abcdef", LeftoverTemp),
    ] {
        fs::write(vdir.join(name), b"x").unwrap();
        expect(kind, "", vdir.join(name), None, false);
    }
    fs::create_dir(vdir.join(".stfolder")).unwrap();
    fs::write(vdir.join(".stfolder/inside"), b"not walked").unwrap();
    expect(SyncClientFile, "", vdir.join(".stfolder"), None, false);
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
        // Notices (sync clients' files) are listed but are not problems.
        let problems = want.iter().filter(|i| !i.0.is_notice()).count();
        let notices = want.len() - problems;
        assert!(notices > 0 && problems > 0);

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
            summary.contains(&format!("{problems} problems")),
            "{summary}"
        );
        assert!(summary.contains(&format!("{notices} notices")), "{summary}");
        assert!(summary.contains("tampered-chunk "), "{summary}");
        assert!(
            stderr_text(&out).contains(&format!("fsck found {problems} problems")),
            "{}",
            stderr_text(&out)
        );

        let out = fx.run(&["--json"]);
        assert_eq!(exit_code(&out), FSCK_FOUND_PROBLEMS);
        let (set, doc) = json_items(&out.stdout);
        assert_same(&set, &want, &format!("{args:?}: --json"));
        assert_eq!(doc["summary"]["problems"], problems as u64);
        assert_eq!(doc["summary"]["notices"], notices as u64);
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

// ---- fsck and the mount agree -------------------------------------------------------------

/// The kinds of damage tests/tamper.rs reads through the filesystem core that
/// `damaged_vault` does not hold, in `x/`. No expected findings: the agreement test holds
/// fsck to the mount, not to a list.
fn tamper_extras(fx: &Fixture) {
    let g = fx.fs.vault().geometry;
    let (c, h) = (g.chunk_size as usize, g.header_size);
    let enc = fx.fs.vault().config.name_encoding;
    let five = 5 * c;
    fx.mkdir("x");

    // A header from another vault under the same key (bound to its vault id).
    let other_dir = tempfile::tempdir().unwrap();
    let key = Arc::new(LocalKeyProvider::load(&fx.tv.key).unwrap());
    let other = Fs::new(Arc::new(
        Vault::init(
            other_dir.path(),
            key,
            &support::fs_core::options(g.chunk_size as u32, h as u32),
        )
        .unwrap(),
    ));
    write_file(&other, "f", &pattern(30, five));
    let foreign = fs::read(other.backing_path(Path::new("f")).unwrap()).unwrap();
    fx.write("x/header-other-vault", five, 31);
    edit(&fx.backing("x/header-other-vault"), |b| {
        b[..h as usize].copy_from_slice(&foreign[..h as usize])
    });

    // A chunk copied over another position of the same file.
    fx.write("x/chunk-copied-within", five, 32);
    let (one, two) = (g.chunk_backing_offset(1), g.chunk_backing_offset(2));
    let slot = g.backing_chunk_size() as usize;
    edit(&fx.backing("x/chunk-copied-within"), |b| {
        b.copy_within(one as usize..one as usize + slot, two as usize)
    });

    // Lengths: the only chunk dropped (a bare header: looks empty, undetectable by design),
    // cut within the first chunk's overhead, cut to 1 and to h - 1 header bytes, and a
    // chunk overhead's worth appended to a one-chunk file.
    for (name, len, keep) in [
        ("x/only-chunk-dropped", c, h),
        ("x/cut-into-first-overhead", five, h + 10),
        ("x/cut-in-header-1", five, 1),
        ("x/cut-in-header-last", five, h - 1),
    ] {
        fx.write(name, len, 33);
        set_len(&fx.backing(name), keep);
    }
    fx.write("x/appended-overhead", c, 34);
    edit(&fx.backing("x/appended-overhead"), |b| {
        b.extend_from_slice(&[7; CHUNK_OVERHEAD as usize])
    });

    // Symlink targets: cut short, too short to hold a tag, not in the alphabet.
    for (name, damage) in [
        ("x/link-truncated", 0),
        ("x/link-too-short", 1),
        ("x/link-not-encoded", 2),
    ] {
        fx.symlink("some/target/path", name);
        let b = fx.backing(name);
        let stored = fs::read_link(&b)
            .unwrap()
            .into_os_string()
            .into_string()
            .unwrap();
        let target = match damage {
            0 => stored[..stored.len() - 4].to_string(),
            1 => stored[..8].to_string(),
            _ => format!("{stored}!"),
        };
        fs::remove_file(&b).unwrap();
        std::os::unix::fs::symlink(target, &b).unwrap();
    }

    // A long name whose sidecar has one character changed (still in the alphabet).
    let long = format!("x/{}", "sidecar-".repeat(25));
    fx.write(&long, 100, 35);
    let sidecar = sidecar_of(&fx.backing(&long));
    let text = fs::read_to_string(&sidecar).unwrap();
    fs::write(&sidecar, flip_name_char(&text, enc)).unwrap();

    // user.* xattr values that no longer decrypt, on a file and on a directory.
    fx.write("x/xattr-file", 10, 36);
    fx.mkdir("x/xattr-dir");
    for path in ["x/xattr-file", "x/xattr-dir"] {
        fx.fs
            .setxattr(Path::new(path), "user.color".as_ref(), b"blue", 0)
            .unwrap();
        let b = fx.backing(path);
        let names = user_xattr_names(&b);
        let [name] = &names[..] else {
            panic!("{path}: one backing xattr, got {names:?}")
        };
        let mut value = get_xattr(&b, name).unwrap();
        value[0] ^= 1;
        set_xattr(&b, name, &value);
    }
}

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// The `user.*` xattr names on `path` (not following a symlink).
fn user_xattr_names(path: &Path) -> Vec<std::ffi::CString> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: the buffer is as long as the size given.
    let n = unsafe { libc::llistxattr(cpath(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Vec::new(); // no xattrs here (e.g. on the backing filesystem of a FIFO)
    }
    buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| s.starts_with(b"user."))
        .map(|s| std::ffi::CString::new(s).unwrap())
        .collect()
}

fn get_xattr(path: &Path, name: &std::ffi::CStr) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: the buffer is as long as the size given.
    let n = unsafe {
        libc::lgetxattr(
            cpath(path).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn set_xattr(path: &Path, name: &std::ffi::CStr, value: &[u8]) {
    // SAFETY: plain syscall with valid pointers and lengths.
    let ret = unsafe {
        libc::lsetxattr(
            cpath(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        ret,
        0,
        "lsetxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// What the mount shows of one listed entry.
#[derive(Debug)]
struct Seen {
    /// The first operation that failed on it, and its errno.
    failure: Option<(&'static str, i32)>,
    /// The size `lstat` reports.
    size: u64,
}

impl Seen {
    fn describe(&self) -> String {
        match self.failure {
            Some((op, errno)) => format!("{op}: {}", std::io::Error::from_raw_os_error(errno)),
            None => format!("listed, reads cleanly, size {}", self.size),
        }
    }
}

type Listing = std::collections::BTreeMap<PathBuf, Seen>;

/// Walk the mount: list every directory, lstat every entry, read every regular file whole,
/// readlink every symlink, list every other entry's xattrs and read each `user.*` one.
/// Returns every listed mount-relative path with what the mount showed of it.
fn walk_mount(mnt: &Path) -> Listing {
    let mut seen = Listing::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(mnt.join(&dir))
            .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
            .unwrap_or_else(|e| panic!("readdir of {}: {e}", dir.display()));
        for entry in entries {
            let rel = dir.join(entry.file_name());
            let seen_here = observe(&mnt.join(&rel));
            if seen_here.failure.is_none() && entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(rel.clone());
            }
            seen.insert(rel, seen_here);
        }
    }
    seen
}

fn observe(path: &Path) -> Seen {
    let fail = |op, e: std::io::Error, size| Seen {
        failure: Some((op, e.raw_os_error().unwrap_or(0))),
        size,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return fail("lstat", e, 0),
    };
    let size = meta.len();
    if meta.is_dir() {
        let listing = fs::read_dir(path).and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>());
        if let Err(e) = listing {
            return fail("readdir", e, size);
        }
    } else if meta.is_file() {
        if let Err(e) = fs::read(path) {
            return fail("read", e, size);
        }
    } else if meta.file_type().is_symlink() {
        if let Err(e) = fs::read_link(path) {
            return fail("readlink", e, size);
        }
        // Linux has no user.* xattrs on symlinks.
        return Seen {
            failure: None,
            size,
        };
    }
    for name in user_xattr_names(path) {
        if let Err(e) = get_xattr(path, &name) {
            return fail("getxattr", e, size);
        }
    }
    Seen {
        failure: None,
        size,
    }
}

/// The backing entries hidden from the mount: in a directory the mount shows, neither the
/// backing entry of a listed name nor its sidecar nor envfs.conf. A long-name entry and its
/// sidecar count as one (the entry). Hidden directories are not entered: what they hold is
/// hidden with them.
fn hidden_entries(fx: &Fixture, listed: &Listing) -> BTreeSet<PathBuf> {
    let root = &fx.tv.backing;
    let shown: BTreeSet<PathBuf> = listed
        .keys()
        .map(|p| fx.fs.backing_path(p).unwrap())
        .collect();
    let mut visible_dirs: Vec<PathBuf> = shown
        .iter()
        .filter(|b| fs::symlink_metadata(b).is_ok_and(|m| m.is_dir()))
        .cloned()
        .collect();
    visible_dirs.push(root.clone());
    let mut hidden = BTreeSet::new();
    for dir in visible_dirs {
        for entry in fs::read_dir(&dir).unwrap() {
            let b = entry.unwrap().path();
            let name = b.file_name().unwrap().to_str().unwrap().to_string();
            if shown.contains(&b) || (dir == *root && name == "envfs.conf") {
                continue;
            }
            let sidecar_of = name
                .strip_suffix(".name")
                .filter(|e| e.ends_with(".envfs-ln"))
                .map(|e| dir.join(e));
            match sidecar_of {
                Some(e) if shown.contains(&e) => {}
                Some(e) if fs::symlink_metadata(&e).is_ok() => {
                    hidden.insert(e);
                }
                _ => {
                    hidden.insert(b);
                }
            }
        }
    }
    hidden
}

/// `backing` (a finding's path), or its ancestor that sits in a directory the mount shows.
fn topmost_hidden(backing: &Path, visible: &BTreeSet<PathBuf>) -> PathBuf {
    let mut p = backing.to_path_buf();
    for _ in 0..64 {
        match p.parent() {
            Some(parent) if !visible.contains(parent) => p = parent.to_path_buf(),
            _ => break,
        }
    }
    p
}

/// One line per damaged thing, spelled the same for both sides: `fails: <mount path>` for a
/// listed entry that fails (or, for fsck, a finding with a plaintext path), `hidden:
/// <backing path>` for a backing entry the mount does not list (or a finding without one,
/// at its topmost hidden ancestor). Values: the detail, for messages.
type Damage = std::collections::BTreeMap<String, String>;

fn damage_through_mount(listed: &Listing, hidden: &BTreeSet<PathBuf>, root: &Path) -> Damage {
    let mut out = Damage::new();
    for (path, seen) in listed.iter().filter(|(_, s)| s.failure.is_some()) {
        out.insert(format!("fails:  {}", path.display()), seen.describe());
    }
    for b in hidden {
        let rel = b.strip_prefix(root).unwrap().display();
        out.insert(format!("hidden: {rel}"), "not listed".to_string());
    }
    out
}

fn damage_by_fsck(findings: &BTreeSet<Item>, visible: &BTreeSet<PathBuf>, root: &Path) -> Damage {
    let mut out = Damage::new();
    for (kind, backing, chunk, path) in findings {
        let key = match path {
            Some(p) => format!("fails:  {}", p.display()),
            None => {
                let top = topmost_hidden(backing, visible);
                format!("hidden: {}", top.strip_prefix(root).unwrap().display())
            }
        };
        let rel = backing.strip_prefix(root).unwrap().display();
        let detail = out.entry(key).or_default();
        detail.push_str(&format!("{} at {rel} chunk {chunk:?}; ", kind.id()));
    }
    out
}

/// The entries of `a` that `b` lacks, with `a`'s detail and what `other` says of them.
fn missing_from(a: &Damage, b: &Damage, other: impl Fn(&str) -> String) -> Vec<String> {
    a.iter()
        .filter(|(k, _)| !b.contains_key(*k))
        .map(|(k, v)| format!("{k}  [{v}]  other side: {}", other(k)))
        .collect()
}

#[test]
fn fsck_and_the_mount_agree_on_every_damaged_entry() {
    let mut only_mount = Vec::new();
    let mut only_fsck = Vec::new();
    let mut not_eio = Vec::new();
    let mut unshown = Vec::new();
    for (label, encoding) in [("base64url", "base64"), ("base32", "base32")] {
        let fx = Fixture::new(&[
            "--chunk-size",
            "1024",
            "--header-size",
            "256",
            "--name-encoding",
            encoding,
        ]);
        let want = damaged_vault(&fx);
        tamper_extras(&fx);
        let root = fx.tv.backing.clone();

        let out = fx.run(&["--json"]);
        assert_eq!(
            exit_code(&out),
            FSCK_FOUND_PROBLEMS,
            "{}",
            stderr_text(&out)
        );
        let (findings, _) = json_items(&out.stdout);

        let listed = {
            let m = fx.tv.mount("mnt", &["-o", "ro"]);
            walk_mount(&m.path)
        };
        let hidden = hidden_entries(&fx, &listed);
        let mut visible: BTreeSet<PathBuf> = listed
            .keys()
            .map(|p| fx.fs.backing_path(p).unwrap())
            .collect();
        visible.insert(root.clone());

        let mount = damage_through_mount(&listed, &hidden, &root);
        let fsck = damage_by_fsck(&findings, &visible, &root);
        let what_mount_shows = |key: &str| match key.strip_prefix("fails:  ") {
            Some(p) => listed
                .get(Path::new(p))
                .map_or("not listed".to_string(), Seen::describe),
            None => "listed or not on the backing store".to_string(),
        };
        let tag = |line: String| format!("{label}: {line}");
        only_mount.extend(
            missing_from(&mount, &fsck, |_| "no finding".to_string())
                .into_iter()
                .map(tag),
        );
        only_fsck.extend(
            missing_from(&fsck, &mount, what_mount_shows)
                .into_iter()
                .map(tag),
        );
        // Not vacuous: every item of the damage matrix is among what the mount shows.
        let matrix = damage_by_fsck(&want, &visible, &root);
        unshown.extend(
            missing_from(&matrix, &mount, what_mount_shows)
                .into_iter()
                .map(tag),
        );
        // What fails through the mount fails as damage: EIO, never another error.
        not_eio.extend(
            listed
                .iter()
                .filter(|(_, s)| s.failure.is_some_and(|(_, errno)| errno != libc::EIO))
                .map(|(p, s)| format!("{label}: {}: {}", p.display(), s.describe())),
        );
    }
    let lines = |v: &[String]| v.iter().map(|l| format!("  {l}\n")).collect::<String>();
    let readable = format!(
        "fsck and the mount disagree\ndamage only the mount shows:\n{}\
         damage only fsck reports:\n{}",
        lines(&only_mount),
        lines(&only_fsck)
    );
    assert_eq!(
        (only_mount, only_fsck),
        (Vec::<String>::new(), Vec::<String>::new()),
        "{readable}"
    );
    assert_eq!(
        not_eio,
        Vec::<String>::new(),
        "damaged entries fail through the mount with another errno than EIO"
    );
    assert_eq!(
        unshown,
        Vec::<String>::new(),
        "items of the damage matrix the mount does not show"
    );
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
        c.env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_STATE_HOME", dir.path().join("config"));
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
