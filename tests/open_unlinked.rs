//! Open files that lose their name, through a real mount: a file unlinked while open, or
//! replaced by another file renamed over its name, reports a link count of 0 through the
//! open descriptor, and reading and writing through that descriptor keep working on the
//! file's own content (not the new file's). A hard-linked file that loses one of its names
//! reports a link count of 1. After the last close nothing of a nameless file is left on the
//! backing store (no entry, no long-name sidecar).
//!
//! Each case runs with a short name and with a long one (stored under a hash with a
//! sidecar). Content is checked before link counts, and read by `pread` up to end of file
//! rather than by `fstat`'s size, so that a failing `fstat` cannot hide whether the data is
//! right.

mod support;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{TestVault, pattern, wait_until, walk};

const SHORT: &str = "short.bin";

/// Over the long-name limit: stored as a hash entry plus a sidecar.
fn long() -> String {
    format!("{}.bin", "long-".repeat(40))
}

/// Backing entries of one file: its entry, plus the sidecar of a long name.
fn backing_names(name: &str) -> usize {
    if name.len() > 149 { 2 } else { 1 }
}

fn label(name: &str) -> &str {
    if name.len() > 149 { "long name" } else { name }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The whole content through `f`, by `pread` until end of file (at most 1 MiB: the tests'
/// files are smaller).
#[track_caller]
fn read_fd(what: &str, f: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < 1 << 20 {
        let n = f
            .read_at(&mut buf, out.len() as u64)
            .unwrap_or_else(|e| panic!("{what}: pread at {}: {e}", out.len()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[track_caller]
fn fstat(what: &str, f: &File) -> fs::Metadata {
    f.metadata()
        .unwrap_or_else(|e| panic!("{what}: fstat on the open fd: {e}"))
}

/// Overwrite the middle and append past the end through `f`, and the same on `model`.
#[track_caller]
fn write_through(what: &str, f: &File, model: &mut Vec<u8>, seed: u64) {
    let middle = pattern(seed, 3000);
    f.write_all_at(&middle, 2000)
        .unwrap_or_else(|e| panic!("{what}: pwrite in the middle: {e}"));
    model[2000..5000].copy_from_slice(&middle);
    let tail = pattern(seed + 1, 5000);
    let end = model.len() as u64;
    f.write_all_at(&tail, end)
        .unwrap_or_else(|e| panic!("{what}: pwrite past the end: {e}"));
    model.extend_from_slice(&tail);
}

/// The backing entries other than envfs.conf, once there are `want` of them or 10 s have
/// passed: the kernel sends RELEASE after the last close asynchronously.
fn backing_entries_settle(v: &TestVault, want: usize) -> Vec<PathBuf> {
    let entries = || -> Vec<PathBuf> {
        walk(&v.backing)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n != "envfs.conf"))
            .collect()
    };
    wait_until(Duration::from_secs(10), || entries().len() == want);
    entries()
}

// ---- unlinked while open ------------------------------------------------------------------

#[test]
fn an_unlinked_open_file_has_nlink_0_and_keeps_reading_and_writing() {
    unlinked_while_open(SHORT);
}

#[test]
fn an_unlinked_open_long_named_file_has_nlink_0_and_keeps_reading_and_writing() {
    unlinked_while_open(&long());
}

fn unlinked_while_open(name: &str) {
    // Messages name the case, not the 204-byte name.
    let what = label(name);
    let v = TestVault::new(&[]);
    let m = v.mount("mnt", &[]);
    let path = m.p(name);
    let mut model = pattern(1, 10_000);
    let f = open_rw(&path);
    f.write_all_at(&model, 0).unwrap();
    fs::remove_file(&path).unwrap_or_else(|e| panic!("{what}: unlink: {e}"));
    assert!(
        !path.exists(),
        "{what}: the name still resolves after unlink"
    );

    assert!(
        read_fd(what, &f) == model,
        "{what}: content read through the fd after unlink differs"
    );
    write_through(what, &f, &mut model, 2);
    assert!(
        read_fd(what, &f) == model,
        "{what}: content after writing through the unlinked fd differs"
    );
    let st = fstat(what, &f);
    assert_eq!(st.nlink(), 0, "{what}: fstat nlink after unlink");
    assert_eq!(
        st.len(),
        model.len() as u64,
        "{what}: fstat size after writing through the unlinked fd"
    );

    drop(f);
    let left = backing_entries_settle(&v, 0);
    assert!(
        left.is_empty(),
        "{what}: the backing store keeps {left:?} after the last close"
    );
}

// ---- renamed over while open --------------------------------------------------------------

#[test]
fn a_file_renamed_over_while_open_has_nlink_0_and_keeps_its_own_content() {
    renamed_over_while_open(SHORT);
}

#[test]
fn a_long_named_file_renamed_over_while_open_has_nlink_0_and_keeps_its_own_content() {
    renamed_over_while_open(&long());
}

fn renamed_over_while_open(name: &str) {
    // Messages name the case, not the 204-byte name.
    let what = label(name);
    let v = TestVault::new(&[]);
    let m = v.mount("mnt", &[]);
    let (path, other) = (m.p(name), m.p("replacement"));
    let mut model = pattern(3, 10_000);
    let f = open_rw(&path);
    f.write_all_at(&model, 0).unwrap();
    let replacement = pattern(4, 7000);
    fs::write(&other, &replacement).unwrap();
    fs::rename(&other, &path).unwrap_or_else(|e| panic!("{what}: rename over: {e}"));

    assert!(
        read_fd(what, &f) == model,
        "{what}: the replaced file's content, read through its fd, differs"
    );
    write_through(what, &f, &mut model, 5);
    assert!(
        read_fd(what, &f) == model,
        "{what}: content after writing through the replaced file's fd differs"
    );
    assert!(
        fs::read(&path).unwrap() == replacement,
        "{what}: the name does not hold the file renamed over it"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().nlink(),
        1,
        "{what}: nlink of the new file"
    );
    let st = fstat(what, &f);
    assert_eq!(st.nlink(), 0, "{what}: fstat nlink of the replaced file");
    assert_eq!(
        st.len(),
        model.len() as u64,
        "{what}: fstat size of the replaced file"
    );

    drop(f);
    // The new file is all that is left.
    let want = backing_names(name);
    let left = backing_entries_settle(&v, want);
    assert_eq!(
        left.len(),
        want,
        "{what}: backing entries after the last close: {left:?}"
    );
}

// ---- hard links ---------------------------------------------------------------------------

#[test]
fn a_hard_linked_file_that_loses_one_name_has_nlink_1() {
    for name in [SHORT.to_string(), long()] {
        // Remove the other name, then (in a fresh vault) the name the fd was opened by.
        for remove_own_name in [false, true] {
            let case = format!(
                "{}, removing the name it was opened by: {remove_own_name}",
                label(&name)
            );
            let v = TestVault::new(&[]);
            let m = v.mount("mnt", &[]);
            let (path, link) = (m.p(&name), m.p("second-name"));
            let mut model = pattern(6, 10_000);
            let f = open_rw(&path);
            f.write_all_at(&model, 0).unwrap();
            fs::hard_link(&path, &link).unwrap_or_else(|e| panic!("{case}: link: {e}"));
            assert_eq!(
                fstat(&case, &f).nlink(),
                2,
                "{case}: fstat nlink with two names"
            );

            let (gone, kept) = if remove_own_name {
                (&path, &link)
            } else {
                (&link, &path)
            };
            fs::remove_file(gone).unwrap_or_else(|e| panic!("{case}: unlink: {e}"));
            write_through(&case, &f, &mut model, 7);
            assert!(
                read_fd(&case, &f) == model,
                "{case}: content through the fd differs"
            );
            assert!(
                fs::read(kept).unwrap() == model,
                "{case}: the remaining name does not show the writes made through the fd"
            );
            assert_eq!(
                fstat(&case, &f).nlink(),
                1,
                "{case}: fstat nlink after one unlink"
            );
            assert_eq!(
                fs::metadata(kept).unwrap().nlink(),
                1,
                "{case}: stat nlink of the remaining name"
            );
            drop(f);
        }
    }
}
