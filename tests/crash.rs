//! Crash safety: SIGKILL the mount daemon in the middle of heavy writes from several
//! writers (seeded, repeated), remount, and check that every file is exactly as of its last
//! fsync — except, at most, the chunks of the one write each writer had in flight.

mod support;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const CHUNK: u64 = 4096;

/// What the test knows about one file.
#[derive(Clone, Default)]
struct Known {
    /// Content as of the last completed fsync.
    synced: Vec<u8>,
    /// A write started after it: (offset, len). Those chunks may hold old, new or
    /// unauthentic bytes after a crash; all others must be as synced.
    in_flight: Option<(u64, usize)>,
}

fn writer(
    mnt: PathBuf,
    id: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<HashMap<PathBuf, Known>>>,
) {
    let mut rng = Rng(seed);
    let mut mine: Vec<PathBuf> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let overwrite = !mine.is_empty() && rng.below(2) == 0;
        let (path, offset, data) = if overwrite {
            let path = mine[rng.below(mine.len() as u64) as usize].clone();
            let len = state.lock().unwrap()[&path].synced.len() as u64;
            let offset = rng.below(len);
            let len = rng.below(3 * CHUNK) as usize + 1;
            (path, offset, rng.bytes(len))
        } else {
            n += 1;
            let path = mnt.join(format!("w{id}-{n}"));
            let len = rng.below(40_000) as usize + 1;
            (path, 0, rng.bytes(len))
        };
        state
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_default()
            .in_flight = Some((offset, data.len()));
        let result = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| {
                f.write_all_at(&data, offset)?;
                f.sync_all()
            });
        if result.is_err() {
            return; // the daemon is gone
        }
        let mut st = state.lock().unwrap();
        let known = st.get_mut(&path).unwrap();
        let end = offset as usize + data.len();
        if known.synced.len() < end {
            known.synced.resize(end, 0);
        }
        known.synced[offset as usize..end].copy_from_slice(&data);
        known.in_flight = None;
        if !overwrite {
            mine.push(path);
        }
    }
}

fn chunks_of(offset: u64, len: usize) -> std::ops::RangeInclusive<u64> {
    offset / CHUNK..=(offset + len as u64 - 1) / CHUNK
}

fn check_round(seed: u64) {
    let v = TestVault::new(&[]);
    let (mut guard, mut daemon) = v.mount_foreground("mnt", None);
    let mnt = guard.path.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let state: Arc<Mutex<HashMap<PathBuf, Known>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (m, s, st) = (mnt.clone(), stop.clone(), state.clone());
            std::thread::spawn(move || writer(m, i, seed * 10 + i as u64, s, st))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300 + Rng(seed).below(700)));
    // SAFETY: killing our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGKILL) };
    let _ = daemon.wait();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    guard.unmount();
    drop(guard);

    let m = v.mount("mnt", &[]);
    let known = state.lock().unwrap().clone();
    assert!(known.len() >= 4, "seed {seed}: the writers barely started");
    let mut damaged_chunks = 0;
    for (path, k) in &known {
        let path = m.path.join(path.strip_prefix(&mnt).unwrap());
        let Ok(file) = fs::File::open(&path) else {
            // A file whose create was in flight may not exist.
            assert!(
                k.synced.is_empty() && k.in_flight.is_some(),
                "seed {seed}: {} lost",
                path.display()
            );
            continue;
        };
        let size = file.metadata().unwrap().len();
        let allowed: Vec<u64> = k
            .in_flight
            // An extension in flight also reseals the old last chunk, just before its range.
            .map(|(o, l)| {
                (chunks_of(o, l).start().saturating_sub(1)..=*chunks_of(o, l).end()).collect()
            })
            .unwrap_or_default();
        let max_len = k
            .in_flight
            .map(|(o, l)| o as usize + l)
            .unwrap_or(0)
            .max(k.synced.len());
        assert!(
            size as usize >= k.synced.len().min(size as usize)
                && size as usize <= max_len.max(k.synced.len()),
            "seed {seed}: {} has size {size}, synced {}",
            path.display(),
            k.synced.len()
        );
        for chunk in 0..k.synced.len().div_ceil(CHUNK as usize) as u64 {
            let start = chunk * CHUNK;
            let len = (k.synced.len() as u64 - start).min(CHUNK) as usize;
            let mut buf = vec![0u8; len];
            match file.read_exact_at(&mut buf, start) {
                Ok(()) if allowed.contains(&chunk) => {}
                Ok(()) => assert_eq!(
                    buf,
                    k.synced[start as usize..start as usize + len],
                    "seed {seed}: {} chunk {chunk} changed",
                    path.display()
                ),
                Err(e) => {
                    assert!(
                        allowed.contains(&chunk),
                        "seed {seed}: {} chunk {chunk} unreadable ({e}) but not in flight",
                        path.display()
                    );
                    damaged_chunks += 1;
                }
            }
        }
    }
    assert!(
        damaged_chunks <= 4 * 4,
        "seed {seed}: more damaged chunks than writes in flight"
    );
    drop(m);

    // fsck agrees: at most the in-flight chunks of in-flight files, nothing else.
    let out = run(v
        .cmd()
        .arg("fsck")
        .arg(&v.backing)
        .arg("--json")
        .arg("--key-file")
        .arg(&v.key));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for finding in report["findings"].as_array().unwrap() {
        let path = mnt.join(finding["path"].as_str().unwrap_or("?"));
        let k = known
            .get(&path)
            .unwrap_or_else(|| panic!("seed {seed}: fsck finding for an unknown file: {finding}"));
        let (o, l) = k
            .in_flight
            .unwrap_or_else(|| panic!("seed {seed}: fsck finding for a settled file: {finding}"));
        let kind = finding["kind"].as_str().unwrap();
        assert!(
            matches!(kind, "tampered-chunk" | "invalid-length" | "truncated"),
            "seed {seed}: {finding}"
        );
        if let Some(chunk) = finding["chunk"].as_u64() {
            // An extension in flight can also leave the chunk before it resealed.
            let first = chunks_of(o, l).start().saturating_sub(1);
            assert!(
                (first..=*chunks_of(o, l).end()).contains(&chunk),
                "seed {seed}: {finding}"
            );
        }
    }
}

#[test]
fn sigkill_during_heavy_writes_loses_nothing_that_was_fsynced() {
    for seed in [1u64, 2, 3, 4] {
        check_round(seed);
    }
}
