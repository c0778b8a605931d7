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
