//! Folders synced by a real Syncthing (two instances on loopback, tests/support/syncthing.rs).
//!
//! The harness on its own, on plain directories (no envfs): what Syncthing 1.19 does with
//! creates, renames, deletes, concurrent edits and versions, so that the envfs tests built
//! on it (tests/sync_vaults.rs) start from a harness known to work. These tests need the `syncthing`
//! binary and fail without it (CI installs it; scripts/setup.sh does too).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};
use support::pattern;
use support::syncthing::{Node, Side, SyncPair, tree};

/// Generous: a sync of a few files takes about a second on loopback.
const SYNC: Duration = Duration::from_secs(60);

#[track_caller]
fn assert_in_sync(pair: &SyncPair, a: &Path, b: &Path) -> BTreeMap<String, Node> {
    assert!(pair.wait_in_sync(SYNC), "the two sides did not converge");
    let (ta, tb) = (tree(a), tree(b));
    assert_eq!(
        ta,
        tb,
        "in sync, yet the two directories differ\n{}",
        pair.log_tails()
    );
    ta
}

fn file(t: &BTreeMap<String, Node>, name: &str) -> Vec<u8> {
    match t.get(name) {
        Some(Node::File(_, bytes)) => bytes.clone(),
        other => panic!("{name}: expected a file, found {other:?}"),
    }
}

/// The names in `t` that are conflict copies of `stem` (`ext` being the extension after it,
/// with its dot, or "").
fn conflict_copies(t: &BTreeMap<String, Node>, stem: &str, ext: &str) -> Vec<String> {
    t.keys()
        .filter(|k| {
            k.strip_prefix(stem)
                .and_then(|rest| rest.strip_prefix(".sync-conflict-"))
                .is_some_and(|rest| rest.ends_with(ext) && !rest.contains('/'))
        })
        .cloned()
        .collect()
}

/// Write `bytes` at `path` with a modification time `age` in the past (the side with the
/// older time loses a conflict: that makes the winner deterministic, with no sleep).
fn write_aged(path: &Path, bytes: &[u8], age: Duration) {
    fs::write(path, bytes).unwrap();
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn syncthing_pair_syncs_plain_directories() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    let (a, b) = (top.path().join("a"), top.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let pair = SyncPair::start(&a, &b);

    // Creates in A: files with and without an extension, an empty one, one of several
    // Syncthing blocks (128 KiB each), an executable, a symlink, nested and empty dirs.
    let big = pattern(1, 300_000);
    fs::write(a.join("plain"), b"no extension").unwrap();
    fs::write(a.join("doc.txt"), b"a text").unwrap();
    fs::write(a.join("empty"), b"").unwrap();
    fs::create_dir_all(a.join("sub/deeper")).unwrap();
    fs::create_dir(a.join("emptydir")).unwrap();
    fs::write(a.join("sub/deeper/data.bin"), &big).unwrap();
    fs::write(a.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(a.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("doc.txt", a.join("link")).unwrap();
    let t = assert_in_sync(&pair, &a, &b);
    for name in [
        "plain",
        "doc.txt",
        "empty",
        "sub",
        "sub/deeper",
        "emptydir",
        "sub/deeper/data.bin",
        "sub/run.sh",
        "link",
    ] {
        assert!(t.contains_key(name), "{name} did not reach B: {t:?}");
    }
    assert_eq!(file(&t, "sub/deeper/data.bin"), big);
    assert_eq!(t["sub/run.sh"], Node::File(0o755, b"#!/bin/sh\n".to_vec()));
    assert_eq!(t["link"], Node::Symlink("doc.txt".into()));

    // Renames and deletes in A, an edit in B: both directions converge.
    fs::rename(a.join("doc.txt"), a.join("sub/renamed.txt")).unwrap();
    fs::rename(a.join("sub/deeper"), a.join("moved")).unwrap();
    fs::remove_file(a.join("plain")).unwrap();
    fs::remove_dir(a.join("emptydir")).unwrap();
    let edited = pattern(2, 200_000);
    fs::write(b.join("sub/run.sh"), b"#!/bin/sh\nexit 0\n").unwrap();
    fs::write(b.join("empty"), &edited).unwrap();
    let t = assert_in_sync(&pair, &a, &b);
    for gone in [
        "doc.txt",
        "sub/deeper",
        "sub/deeper/data.bin",
        "plain",
        "emptydir",
    ] {
        assert!(!t.contains_key(gone), "{gone} is still there: {t:?}");
    }
    assert_eq!(file(&t, "sub/renamed.txt"), b"a text");
    assert_eq!(file(&t, "moved/data.bin"), big);
    assert_eq!(file(&t, "sub/run.sh"), b"#!/bin/sh\nexit 0\n");
    assert_eq!(file(&t, "empty"), edited);

    // Concurrent edits while the two are apart: B's edit is the newer, so A's loses and
    // is kept as a conflict copy, on both sides. Identical concurrent creates are no
    // conflict.
    pair.pause();
    write_aged(
        &a.join("sub/renamed.txt"),
        b"edited in a",
        Duration::from_secs(20),
    );
    write_aged(
        &b.join("sub/renamed.txt"),
        b"edited in b",
        Duration::from_secs(10),
    );
    write_aged(&a.join("empty"), b"a wrote this", Duration::from_secs(20));
    write_aged(&b.join("empty"), b"b wrote this", Duration::from_secs(10));
    for side in [&a, &b] {
        fs::write(side.join("same.txt"), b"identical bytes").unwrap();
        fs::write(side.join("same"), b"identical bytes").unwrap();
    }
    pair.resume();
    let t = assert_in_sync(&pair, &a, &b);
    assert_eq!(file(&t, "sub/renamed.txt"), b"edited in b");
    assert_eq!(file(&t, "empty"), b"b wrote this");
    let copies = conflict_copies(&t, "sub/renamed", ".txt");
    assert_eq!(copies.len(), 1, "one conflict copy of renamed.txt: {t:?}");
    assert_eq!(file(&t, &copies[0]), b"edited in a");
    let copies = conflict_copies(&t, "empty", "");
    assert_eq!(copies.len(), 1, "one conflict copy of empty: {t:?}");
    assert_eq!(file(&t, &copies[0]), b"a wrote this");
    // The name is NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE: Syncthing 1.19 names the
    // device of the winning change (the one that made A move its own copy aside).
    let short_b = &pair.device_id(Side::B)[..7];
    assert!(copies[0].ends_with(&format!("-{short_b}")), "{copies:?}");
    assert!(
        conflict_copies(&t, "same", "").is_empty()
            && conflict_copies(&t, "same", ".txt").is_empty(),
        "identical concurrent creates made a conflict copy: {t:?}"
    );
    assert_eq!(file(&t, "same.txt"), b"identical bytes");
}

#[test]
fn syncthing_simple_versioning_keeps_replaced_files() {
    let top = tempfile::tempdir().unwrap();
    let (a, b) = (top.path().join("a"), top.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let pair = SyncPair::start_with_versioning(&a, &b, "simple");
    fs::create_dir(a.join("sub")).unwrap();
    fs::write(a.join("sub/x.ext"), b"old x").unwrap();
    fs::write(a.join("noext"), b"old noext").unwrap();
    fs::write(a.join("gone.ext"), b"deleted").unwrap();
    assert_in_sync(&pair, &a, &b);

    fs::write(a.join("sub/x.ext"), b"new x").unwrap();
    fs::write(a.join("noext"), b"new noext").unwrap();
    fs::remove_file(a.join("gone.ext")).unwrap();
    let t = assert_in_sync(&pair, &a, &b);
    assert_eq!(file(&t, "sub/x.ext"), b"new x");
    assert!(!t.contains_key("gone.ext"));

    // B, which had its files replaced (and one deleted) by A's changes, keeps the old ones
    // under .stversions/, at the same relative path, as STEM~YYYYMMDD-HHMMSS.EXT; A, where
    // the changes were made, keeps nothing; .stversions does not sync.
    let versions = tree(&b.join(".stversions"));
    let find = |stem: &str, ext: &str| -> Vec<(String, Vec<u8>)> {
        versions
            .iter()
            .filter_map(|(k, n)| {
                let rest = k.strip_prefix(stem)?.strip_prefix('~')?.strip_suffix(ext)?;
                let ok = rest.len() == 15
                    && rest.as_bytes()[8] == b'-'
                    && rest.bytes().filter(u8::is_ascii_digit).count() == 14;
                match n {
                    Node::File(_, bytes) if ok => Some((k.clone(), bytes.clone())),
                    _ => None,
                }
            })
            .collect()
    };
    let x = find("sub/x", ".ext");
    assert!(
        x.len() == 1 && x[0].1 == b"old x",
        "old sub/x.ext: {versions:?}"
    );
    let noext = find("noext", "");
    assert!(
        noext.len() == 1 && noext[0].1 == b"old noext",
        "old noext: {versions:?}"
    );
    let gone = find("gone", ".ext");
    assert!(
        gone.len() == 1 && gone[0].1 == b"deleted",
        "deleted gone.ext: {versions:?}"
    );
    assert!(!a.join(".stversions").exists() || tree(&a.join(".stversions")).is_empty());
}
