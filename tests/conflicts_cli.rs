//! `envfs conflicts` through the real binary: the listing (text and JSON) names both sides
//! of each conflict with sizes and times; `--keep` is a dry run until `--apply`; a kept
//! version must read back whole, or nothing is changed; bad arguments are usage errors.

mod support;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use support::{TestVault, exit_code, run, stderr_text, stdout_text};

const MARK: &str = ".sync-conflict-20261201-180306-TQ7MR7C";

fn backing_names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "envfs.conf")
        .collect()
}

/// A vault holding `report.docx` ("mine, the original") and a Syncthing conflict copy of it
/// ("theirs, longer than mine"), made the way Syncthing makes one: the other host's file
/// under the original's backing name with the marker appended. Returns the vault and the
/// two backing paths (original, copy).
fn vault_with_conflict() -> (TestVault, PathBuf, PathBuf) {
    let v = TestVault::new(&[]);
    let mut m = v.mount("mnt", &[]);
    fs::write(m.p("report.docx"), b"mine, the original").unwrap();
    let before = backing_names(&v.backing);
    fs::write(m.p("scratch"), b"theirs, longer than mine").unwrap();
    m.unmount();
    let original = v.backing.join(before.iter().next().unwrap());
    let scratch = backing_names(&v.backing)
        .difference(&before)
        .next()
        .cloned()
        .unwrap();
    let mut copy_name = original.file_name().unwrap().to_os_string();
    copy_name.push(MARK);
    let copy = v.backing.join(copy_name);
    fs::rename(v.backing.join(scratch), &copy).unwrap();
    (v, original, copy)
}

fn conflicts(v: &TestVault, args: &[&str]) -> std::process::Output {
    run(v
        .cmd()
        .arg("conflicts")
        .arg(&v.backing)
        .args(args)
        .arg("--key-file")
        .arg(&v.key))
}

fn cat(v: &TestVault, path: &str) -> Vec<u8> {
    let out = run(v
        .cmd()
        .arg("cat")
        .arg(&v.backing)
        .arg(path)
        .arg("--key-file")
        .arg(&v.key));
    assert!(out.status.success(), "cat {path}: {}", stderr_text(&out));
    out.stdout
}

/// Set a backing file's mtime (seconds since the epoch).
fn set_mtime(path: &Path, secs: i64) {
    let out = run(std::process::Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(path));
    assert!(out.status.success());
}

#[test]
fn the_listing_names_both_versions_with_sizes_and_times() {
    let (v, original, copy) = vault_with_conflict();
    set_mtime(&original, 1_796_148_186);
    let out = conflicts(&v, &[]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let text = stdout_text(&out);
    let shown = format!("report{MARK}.docx");
    assert!(
        text.contains("report.docx (original, 18 bytes, changed 2026-12-01 18:03:06Z)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  {shown} (Syncthing conflict copy, 24 bytes, changed "
        )),
        "{text}"
    );
    assert!(text.contains("1 copy of 1 entry"), "{text}");

    let out = conflicts(&v, &["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let c = &doc["conflicts"][0];
    assert_eq!(c["path"], "report.docx");
    assert_eq!(c["original"]["size"], 18);
    assert_eq!(c["original"]["kind"], "original");
    assert_eq!(c["original"]["changed"], "2026-12-01 18:03:06Z");
    assert_eq!(c["copies"][0]["path"], shown.as_str());
    assert_eq!(c["copies"][0]["client"], "Syncthing");
    assert_eq!(c["copies"][0]["kind"], "conflict");
    assert_eq!(c["copies"][0]["size"], 24);
    assert_eq!(
        c["copies"][0]["backing_path"],
        copy.to_string_lossy().as_ref()
    );
}

#[test]
fn keep_is_a_dry_run_until_apply_and_newest_keeps_the_later_version() {
    let (v, original, copy) = vault_with_conflict();
    set_mtime(&original, 1_796_000_000);
    set_mtime(&copy, 1_796_100_000);
    let before = backing_names(&v.backing);
    let out = conflicts(&v, &["--keep", "newest"]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let text = stdout_text(&out);
    assert!(text.contains("report.docx: would keep report"), "{text}");
    assert!(text.contains("(dry run: add --apply)"), "{text}");
    assert_eq!(
        backing_names(&v.backing),
        before,
        "a dry run changes nothing"
    );

    let out = conflicts(&v, &["--keep", "newest", "--apply"]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert!(stdout_text(&out).contains("resolved 1 of 1 conflict"));
    assert_eq!(cat(&v, "report.docx"), b"theirs, longer than mine");
    assert!(!copy.exists());
    assert!(
        original.exists(),
        "the copy took the original's backing name"
    );
    assert_eq!(backing_names(&v.backing).len(), 1);
    assert!(stdout_text(&conflicts(&v, &[])).contains("no conflicts"));
}

#[test]
fn keep_path_keeps_that_version_even_when_it_is_older() {
    let (v, original, copy) = vault_with_conflict();
    set_mtime(&original, 1_796_100_000);
    set_mtime(&copy, 1_796_000_000);
    let shown = format!("report{MARK}.docx");
    let out = conflicts(&v, &["--keep", &shown, "--apply", "--json"]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["applied"], true);
    assert_eq!(doc["resolutions"][0]["keep"]["path"], shown.as_str());
    assert_eq!(doc["resolutions"][0]["error"], serde_json::Value::Null);
    assert_eq!(cat(&v, "report.docx"), b"theirs, longer than mine");
    assert!(!copy.exists());

    // Keeping the original removes the copy and leaves the original alone.
    let (w, original, copy) = vault_with_conflict();
    let out = conflicts(&w, &["--keep", "report.docx", "--apply"]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert_eq!(cat(&w, "report.docx"), b"mine, the original");
    assert!(original.exists() && !copy.exists());
}

#[test]
fn a_damaged_version_is_never_kept_and_nothing_changes() {
    let (v, original, copy) = vault_with_conflict();
    let mut bytes = fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&copy, &bytes).unwrap();
    let shown = format!("report{MARK}.docx");
    let out = conflicts(&v, &["--keep", &shown, "--apply"]);
    assert_eq!(exit_code(&out), 16, "{}", stderr_text(&out));
    assert!(
        stdout_text(&out).contains("left as it is"),
        "{}",
        stdout_text(&out)
    );
    assert!(stderr_text(&out).contains("1 conflict left as they were"));
    assert!(original.exists() && copy.exists());
    assert_eq!(cat(&v, "report.docx"), b"mine, the original");
    assert_eq!(fs::read(&copy).unwrap(), bytes);
}

#[test]
fn bad_arguments_are_usage_errors_that_change_nothing() {
    let (v, _, _) = vault_with_conflict();
    let before = backing_names(&v.backing);
    let out = conflicts(&v, &["--keep", "no-such-file.txt", "--apply"]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("is not a version of any conflict"));
    let out = conflicts(&v, &["--apply"]);
    assert_eq!(
        exit_code(&out),
        2,
        "--apply needs --keep: {}",
        stderr_text(&out)
    );
    let out = conflicts(&v, &["--keep", "../outside", "--apply"]);
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    assert_eq!(backing_names(&v.backing), before);
}

#[test]
fn the_mount_shows_copies_hides_foreign_entries_once_and_status_counts_both() {
    let (v, _, copy) = vault_with_conflict();
    fs::write(v.backing.join("dropped here.txt"), b"not envfs").unwrap();
    fs::write(v.backing.join(".stfolder"), b"").unwrap();
    let log_path = v.dir.path().join("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let (mut m, mut daemon) = v.mount_foreground("mnt2", Some(log));
    let listed = || -> BTreeSet<String> {
        fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let shown = format!("report{MARK}.docx");
    let want: BTreeSet<String> = ["report.docx".to_string(), shown.clone()].into();
    assert_eq!(listed(), want);
    assert_eq!(listed(), want);
    assert_eq!(fs::read(m.p(&shown)).unwrap(), b"theirs, longer than mine");

    let out = run(v.cmd().arg("status").arg(&m.path).arg("--json"));
    assert!(out.status.success(), "{}", stderr_text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mount = &doc["mounts"][0];
    assert_eq!(mount["hidden_foreign_entries"], 1, "{doc}");
    assert_eq!(mount["conflict_copies_shown"], 1, "{doc}");
    assert_eq!(mount["pid"], daemon.id());
    assert_eq!(
        mount["mountpoint"],
        m.path.canonicalize().unwrap().to_string_lossy().as_ref()
    );
    let text = stdout_text(&run(v.cmd().arg("status")));
    assert!(
        text.contains("hidden foreign entries 1; conflict copies shown 1"),
        "{text}"
    );

    m.unmount();
    let _ = daemon.wait();
    let log = fs::read_to_string(&log_path).unwrap();
    let hidden: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hidden from the mount"))
        .collect();
    assert_eq!(hidden.len(), 1, "logged once per entry per mount:\n{log}");
    assert!(
        hidden[0].contains("dropped here.txt"),
        "with its backing path: {log}"
    );
    let copies: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("conflict copy shown"))
        .collect();
    assert_eq!(copies.len(), 1, "{log}");
    assert!(copies[0].contains(copy.to_str().unwrap()), "{log}");
    assert!(
        !log.contains("report"),
        "no plaintext name in the log:\n{log}"
    );
    assert!(
        !log.contains(".stfolder"),
        "sync clients' files are hidden silently:\n{log}"
    );
}

#[test]
fn status_without_mounts_and_of_a_directory_that_is_no_mount() {
    let v = TestVault::new(&[]);
    let out = run(v.cmd().arg("status").arg(&v.backing));
    assert_eq!(exit_code(&out), 13, "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("is not an envfs mount"));
}
