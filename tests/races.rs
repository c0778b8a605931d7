//! Two mounts of one backing store (two `Fs` instances over the same directory) racing to
//! give an empty file its header: there must be exactly one header, and every chunk both
//! wrote must authenticate under it.

mod support;

use std::path::Path;
use std::sync::{Arc, Barrier};
use support::fs_core::*;

#[test]
fn two_mounts_racing_to_create_a_header_produce_one() {
    let tv = CoreVault::new(&options(4096, 1024));
    let first = Arc::new(open_fs(tv.root()));
    let second = Arc::new(open_fs(tv.root()));
    for round in 0..200 {
        let name = format!("race{round}");
        let (h, _) = first
            .create(Path::new(&name), 0o644, libc::O_RDWR, None)
            .unwrap();
        drop(h);
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = [
            (first.clone(), 0u64, b'a'),
            (second.clone(), 3 * 4096, b'b'),
        ]
        .into_iter()
        .map(|(fs, offset, byte)| {
            let (barrier, name) = (barrier.clone(), name.clone());
            std::thread::spawn(move || {
                let h = fs.open(Path::new(&name), libc::O_RDWR).unwrap();
                barrier.wait();
                fs.write(&h, offset, &[byte; 100]).unwrap();
            })
        })
        .collect();
        for w in writers {
            w.join().unwrap();
        }
        let fresh = open_fs(tv.root());
        let data = read_file(&fresh, &name).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(data.len(), 3 * 4096 + 100, "round {round}");
        assert!(
            data[..100].iter().all(|&b| b == b'a'),
            "round {round}: first writer's bytes lost"
        );
        assert!(
            data[3 * 4096..].iter().all(|&b| b == b'b'),
            "round {round}: second writer's bytes lost"
        );
        assert!(data[100..3 * 4096].iter().all(|&b| b == 0), "round {round}");
    }
}

/// A mount keeps the last chunk it wrote (and skips the file-id check) only while the file
/// still shows the length and times its own last write left: a write by another mount in
/// between, of the same length or longer, is read back and kept, never overwritten with the
/// remembered chunk. Sequential, not racing: SEMANTICS.md §14 makes no promise for writes
/// at the same instant.
#[test]
fn an_append_after_another_mounts_write_keeps_that_write() {
    let tv = CoreVault::new(&small());
    let first = open_fs(tv.root());
    let second = open_fs(tv.root());
    let f = Path::new("f");
    let (a, _) = first.create(f, 0o644, libc::O_RDWR, None).unwrap();
    first.write(&a, 0, b"aaaa").unwrap();
    let b = second.open(f, libc::O_RDWR).unwrap();
    // Same length: only the times tell.
    second.write(&b, 0, b"xxxx").unwrap();
    first.write(&a, 4, b"cccc").unwrap();
    // Longer, and then across a chunk boundary (chunks are 1024 bytes here).
    second.write(&b, 8, b"dd").unwrap();
    first.write(&a, 10, b"ee").unwrap();
    second.write(&b, 12, &[b'y'; 1100]).unwrap();
    first.write(&a, 1112, b"zz").unwrap();
    let mut want = b"xxxxccccddee".to_vec();
    want.extend_from_slice(&[b'y'; 1100]);
    want.extend_from_slice(b"zz");
    for fs in [&first, &second, &open_fs(tv.root())] {
        let got = read_file(fs, "f").unwrap();
        assert!(
            got == want,
            "read {} bytes starting {:?}",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(16)])
        );
    }
}

/// Appends through one mount in steps smaller than a chunk (git writes objects 4 KiB at a
/// time) reseal the growing last chunk from memory; the file reads back whole and
/// authenticates through another mount.
#[test]
fn small_appends_read_back_whole_elsewhere() {
    let tv = CoreVault::new(&small());
    let fs = open_fs(tv.root());
    let (h, _) = fs
        .create(Path::new("f"), 0o644, libc::O_RDWR, None)
        .unwrap();
    let mut want = Vec::new();
    for i in 0..40u8 {
        let piece = vec![i; 1 + (i as usize * 37) % 300];
        fs.write(&h, want.len() as u64, &piece).unwrap();
        want.extend_from_slice(&piece);
    }
    fs.truncate(&h, 2000).unwrap();
    want.truncate(2000);
    fs.write(&h, 2000, b"end").unwrap();
    want.extend_from_slice(b"end");
    assert_eq!(read_file(&open_fs(tv.root()), "f").unwrap(), want);
    assert_eq!(read_file(&fs, "f").unwrap(), want);
}
