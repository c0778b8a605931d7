//! The filesystem core against an in-memory model: random sequences of writes (at random
//! offsets, across chunk boundaries, far past the end), truncates (grow and shrink), reads,
//! O_APPEND writes, handle and whole-vault reopens, and two handles interleaving writes, with
//! the file's content, its reported size and its backing size checked after every step.
//! Plus a concurrency test: threads writing disjoint and overlapping ranges of one file.

mod support;

use envfs::format::Geometry;
use envfs::fs::{Fs, Handle, SetAttr};
use envfs::vault::InitOptions;
use proptest::prelude::*;
use std::path::Path;
use support::fs_core::{self, CoreVault};
use support::pattern;

const FILE: &str = "model-file";
/// Offsets are kept below this many chunks so files stay small.
const MAX_CHUNKS: u64 = 16;

/// A plaintext offset, resolved against the model's current length and the chunk size.
#[derive(Debug, Clone)]
enum Pos {
    /// `chunks` whole chunks plus `rest % chunk_size` bytes.
    Abs { chunks: u64, rest: u64 },
    /// The current end of file moved by `delta` bytes (scaled by chunk_size / 1024).
    End(i64),
    /// Exactly on a chunk boundary, or a byte or two either side of it.
    Boundary { chunks: u64, delta: i64 },
}

impl Pos {
    fn resolve(&self, len: u64, cs: u64) -> u64 {
        let raw = match *self {
            Pos::Abs { chunks, rest } => (chunks * cs + rest % cs) as i64,
            Pos::End(delta) => len as i64 + delta * cs as i64 / 1024,
            Pos::Boundary { chunks, delta } => (chunks * cs) as i64 + delta,
        };
        (raw.max(0) as u64) % (MAX_CHUNKS * cs + 1)
    }
}

/// A length in bytes: `chunks` whole chunks plus `rest % chunk_size` bytes (may be 0).
#[derive(Debug, Clone)]
struct Len {
    chunks: u64,
    rest: u64,
}

impl Len {
    fn resolve(&self, cs: u64) -> usize {
        (self.chunks * cs + self.rest % cs) as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    A,
    B,
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        which: Which,
        pos: Pos,
        len: Len,
        seed: u64,
    },
    /// A write through the O_APPEND handle; its offset argument must be ignored.
    Append {
        pos: Pos,
        len: Len,
        seed: u64,
    },
    /// ftruncate through a handle.
    Truncate {
        which: Which,
        size: Pos,
    },
    /// truncate(2) by path (setattr without a handle).
    TruncatePath {
        size: Pos,
    },
    Read {
        which: Which,
        pos: Pos,
        len: Len,
    },
    /// Close every handle and open them again.
    ReopenHandles,
    /// Close everything, drop the vault and open it again from the backing directory.
    ReopenVault,
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        3 => (0..12u64, any::<u64>()).prop_map(|(chunks, rest)| Pos::Abs { chunks, rest }),
        3 => (-3000..3000i64).prop_map(Pos::End),
        2 => (0..10u64, -2..=2i64).prop_map(|(chunks, delta)| Pos::Boundary { chunks, delta }),
        1 => Just(Pos::Abs { chunks: 0, rest: 0 }),
    ]
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        3 => (0..80u64).prop_map(|rest| Len { chunks: 0, rest }),
        3 => (0..3u64, any::<u64>()).prop_map(|(chunks, rest)| Len { chunks, rest }),
        1 => (1..3u64).prop_map(|chunks| Len { chunks, rest: 0 }),
    ]
}

fn which() -> impl Strategy<Value = Which> {
    prop_oneof![Just(Which::A), Just(Which::B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (which(), pos(), len(), any::<u64>())
            .prop_map(|(which, pos, len, seed)| Op::Write { which, pos, len, seed }),
        2 => (pos(), len(), any::<u64>()).prop_map(|(pos, len, seed)| Op::Append { pos, len, seed }),
        2 => (which(), pos()).prop_map(|(which, size)| Op::Truncate { which, size }),
        1 => pos().prop_map(|size| Op::TruncatePath { size }),
        3 => (which(), pos(), len()).prop_map(|(which, pos, len)| Op::Read { which, pos, len }),
        1 => Just(Op::ReopenHandles),
        1 => Just(Op::ReopenVault),
    ]
}

struct Handles {
    a: Handle,
    b: Handle,
    append: Handle,
}

impl Handles {
    fn open(fs: &Fs) -> Handles {
        let path = Path::new(FILE);
        Handles {
            a: fs.open(path, libc::O_RDWR).unwrap(),
            b: fs.open(path, libc::O_RDWR).unwrap(),
            append: fs.open(path, libc::O_WRONLY | libc::O_APPEND).unwrap(),
        }
    }

    fn get(&self, which: Which) -> &Handle {
        match which {
            Which::A => &self.a,
            Which::B => &self.b,
        }
    }
}

/// Everything that must hold between steps: content, `stat` size, backing size.
fn check(tv: &CoreVault, h: &Handles, model: &[u8], g: Geometry, step: usize) {
    let path = Path::new(FILE);
    let attr = tv.fs.getattr(path).unwrap();
    assert_eq!(
        attr.size,
        model.len() as u64,
        "getattr size after step {step}"
    );
    assert_eq!(tv.fs.size(&h.a).unwrap(), model.len() as u64, "step {step}");
    let backing = std::fs::metadata(tv.backing(FILE)).unwrap().len();
    assert_eq!(
        backing,
        g.backing_size(model.len() as u64),
        "backing size after step {step}"
    );
    let content = tv.fs.read(&h.a, 0, model.len() + 100).unwrap();
    assert!(content == model, "content differs after step {step}");
}

fn run_model(opts: &InitOptions, ops: &[Op]) {
    let mut tv = CoreVault::new(opts);
    let g = tv.fs.vault().geometry;
    let cs = g.chunk_size;
    let path = Path::new(FILE);
    drop(
        tv.fs
            .create(path, 0o644, libc::O_RDWR | libc::O_EXCL, None)
            .unwrap(),
    );
    let mut model: Vec<u8> = Vec::new();
    let mut h = Some(Handles::open(&tv.fs));
    check(&tv, h.as_ref().unwrap(), &model, g, 0);
    for (step, op) in ops.iter().enumerate() {
        let step = step + 1;
        match op {
            Op::Write {
                which,
                pos,
                len,
                seed,
            } => {
                let handles = h.as_ref().unwrap();
                let off = pos.resolve(model.len() as u64, cs);
                let data = pattern(*seed, len.resolve(cs));
                let n = tv.fs.write(handles.get(*which), off, &data).unwrap();
                assert_eq!(n, data.len());
                if !data.is_empty() {
                    let end = off as usize + data.len();
                    if end > model.len() {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&data);
                }
            }
            Op::Append { pos, len, seed } => {
                let handles = h.as_ref().unwrap();
                let off = pos.resolve(model.len() as u64, cs);
                let data = pattern(*seed, len.resolve(cs));
                let n = tv.fs.write(&handles.append, off, &data).unwrap();
                assert_eq!(n, data.len());
                model.extend_from_slice(&data);
            }
            Op::Truncate { which, size } => {
                let handles = h.as_ref().unwrap();
                let size = size.resolve(model.len() as u64, cs);
                tv.fs.truncate(handles.get(*which), size).unwrap();
                model.resize(size as usize, 0);
            }
            Op::TruncatePath { size } => {
                let size = size.resolve(model.len() as u64, cs);
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                let attr = tv.fs.setattr(path, None, &set).unwrap();
                assert_eq!(attr.size, size);
                model.resize(size as usize, 0);
            }
            Op::Read { which, pos, len } => {
                let handles = h.as_ref().unwrap();
                let off = pos.resolve(model.len() as u64, cs) as usize;
                let n = len.resolve(cs);
                let got = tv.fs.read(handles.get(*which), off as u64, n).unwrap();
                let from = off.min(model.len());
                let to = (off + n).min(model.len());
                assert!(got == model[from..to], "read({off}, {n}) at step {step}");
            }
            Op::ReopenHandles => {
                drop(h.take());
                assert_eq!(tv.fs.open_file_count(), 0, "closing all handles");
                h = Some(Handles::open(&tv.fs));
            }
            Op::ReopenVault => {
                drop(h.take());
                tv.reopen();
                h = Some(Handles::open(&tv.fs));
            }
        }
        check(&tv, h.as_ref().unwrap(), &model, g, step);
    }
    // Finally, what a fresh mount sees.
    drop(h);
    tv.reopen();
    assert_eq!(fs_core::read_file(&tv.fs, FILE).unwrap(), model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn small_chunks_match_model(ops in prop::collection::vec(op(), 1..40)) {
        run_model(&fs_core::small(), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn default_geometry_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run_model(&InitOptions::default(), &ops);
    }
}

/// Hand-picked sequences that the random ones might take long to hit.
#[test]
fn fixed_sequences() {
    use Op::*;
    let b = |chunks, delta| Pos::Boundary { chunks, delta };
    let l = |chunks, rest| Len { chunks, rest };
    let sequences = vec![
        // Grow a new file far past its end, then write at the exact end.
        vec![
            Write {
                which: Which::A,
                pos: b(5, 3),
                len: l(0, 10),
                seed: 1,
            },
            Write {
                which: Which::B,
                pos: Pos::End(0),
                len: l(1, 0),
                seed: 2,
            },
        ],
        // Fill exactly two chunks, shrink to one boundary, grow to another, empty, rewrite.
        vec![
            Write {
                which: Which::A,
                pos: b(0, 0),
                len: l(2, 0),
                seed: 3,
            },
            Truncate {
                which: Which::A,
                size: b(1, 0),
            },
            Truncate {
                which: Which::B,
                size: b(3, 0),
            },
            ReopenVault,
            Truncate {
                which: Which::A,
                size: b(0, 0),
            },
            Append {
                pos: b(4, 0),
                len: l(0, 1),
                seed: 4,
            },
            TruncatePath { size: b(2, 1) },
            Append {
                pos: b(0, 0),
                len: l(1, 5),
                seed: 5,
            },
        ],
    ];
    for ops in sequences {
        run_model(&fs_core::small(), &ops);
        run_model(&InitOptions::default(), &ops);
    }
}

/// Several threads, each with its own handle to one file, write disjoint ranges (sharing
/// chunks at their edges) and one range they all overlap on, while reading the file. No
/// chunk may ever fail authentication, and every disjoint range ends up exactly as its
/// writer left it.
#[test]
fn concurrent_writers_never_tear_a_chunk() {
    const THREADS: usize = 4;
    // Not a multiple of the chunk size, so neighbours share a chunk at every edge.
    const SPAN: usize = 1500;
    const PIECE: usize = 97;
    const OVERLAP_START: usize = THREADS * SPAN + 500;
    const OVERLAP_LEN: usize = 3000;
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let path = Path::new(FILE);
    drop(fs.create(path, 0o644, libc::O_RDWR, None).unwrap());
    let mine: Vec<Vec<u8>> = (0..THREADS)
        .map(|i| pattern(100 + i as u64, SPAN))
        .collect();
    let fill = |i: usize| 0x11 * (i as u8 + 1);

    std::thread::scope(|s| {
        for (i, my_bytes) in mine.iter().enumerate() {
            s.spawn(move || {
                let h = fs.open(path, libc::O_RDWR).unwrap();
                let start = i * SPAN;
                // The last thread begins far past the end, so a zero fill races the others.
                let mut pieces: Vec<usize> = (0..SPAN.div_ceil(PIECE)).collect();
                if i != THREADS - 1 {
                    // A different, deterministic order per thread.
                    let n = pieces.len();
                    for k in 0..n {
                        pieces.swap(k, (k * 7 + i * 3 + 1) % n);
                    }
                }
                let overlap = vec![fill(i); OVERLAP_LEN];
                for (round, &p) in pieces.iter().enumerate() {
                    let from = p * PIECE;
                    let to = (from + PIECE).min(SPAN);
                    fs.write(&h, (start + from) as u64, &my_bytes[from..to])
                        .unwrap();
                    if round % 3 == i % 3 {
                        let o = (round * 131 + i * 17) % (OVERLAP_LEN - 200);
                        fs.write(&h, (OVERLAP_START + o) as u64, &overlap[o..o + 200])
                            .unwrap();
                    }
                    // Whatever is on disk now must authenticate, chunk by chunk.
                    let size = fs.size(&h).unwrap();
                    let got = fs.read(&h, 0, size as usize).unwrap();
                    assert_eq!(got.len() as u64, size);
                }
                // Cover the whole overlap once, so its final length is known.
                fs.write(&h, OVERLAP_START as u64, &overlap).unwrap();
            });
        }
    });

    let content = fs_core::read_file(fs, FILE).unwrap();
    assert_eq!(content.len(), OVERLAP_START + OVERLAP_LEN);
    for (i, expected) in mine.iter().enumerate() {
        assert!(
            &content[i * SPAN..(i + 1) * SPAN] == expected.as_slice(),
            "range of thread {i}"
        );
    }
    assert!(
        content[THREADS * SPAN..OVERLAP_START]
            .iter()
            .all(|&b| b == 0),
        "never-written gap must read as zeros"
    );
    let fills: Vec<u8> = (0..THREADS).map(fill).collect();
    assert!(
        content[OVERLAP_START..].iter().all(|b| fills.contains(b)),
        "overlap holds only bytes some writer wrote"
    );
    let g = fs.vault().geometry;
    let backing = std::fs::metadata(tv.backing(FILE)).unwrap().len();
    assert_eq!(backing, g.backing_size(content.len() as u64));
}

/// Two mounts of one vault (two `Fs` over the same backing directory, as two hosts syncing
/// one folder would have): a handle that cached a file's keys must notice when the other
/// mount emptied and rewrote the file under a new header, both to read and to write.
#[test]
fn a_second_mount_rewriting_a_file_is_seen_by_open_handles() {
    let tv = CoreVault::new(&fs_core::small());
    let other = fs_core::open_fs(tv.root());
    let path = Path::new(FILE);
    fs_core::write_file(&tv.fs, FILE, &pattern(1, 3000));
    let h = tv.fs.open(path, libc::O_RDWR).unwrap();
    assert_eq!(tv.fs.read(&h, 0, 5000).unwrap(), pattern(1, 3000));

    // The other mount truncates (new file id and DEK at the next write) and rewrites.
    fs_core::write_file(&other, FILE, &pattern(2, 2500));
    assert_eq!(tv.fs.read(&h, 0, 5000).unwrap(), pattern(2, 2500));

    fs_core::write_file(&other, FILE, &pattern(3, 2000));
    tv.fs.write(&h, 100, b"patched").unwrap();
    let mut expected = pattern(3, 2000);
    expected[100..107].copy_from_slice(b"patched");
    assert_eq!(fs_core::read_file(&other, FILE).unwrap(), expected);
    assert_eq!(tv.fs.read(&h, 0, 5000).unwrap(), expected);

    // Emptied by the other mount, then grown through the stale handle.
    let o = other.open(path, libc::O_RDWR | libc::O_TRUNC).unwrap();
    tv.fs.write(&h, 10, b"x").unwrap();
    assert_eq!(other.read(&o, 0, 100).unwrap(), b"\0\0\0\0\0\0\0\0\0\0x");
}

/// A read racing a truncate, an append or a rewrite of the same file through the same
/// mount sees the file as it was before or after, never a false integrity error (which
/// would be a spurious EIO and a false tamper alarm in the log).
#[test]
fn reads_racing_writes_see_whole_states() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let path = Path::new(FILE);
    fs_core::write_file(fs, FILE, &[2; 1500]);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let h = fs.open(path, libc::O_RDWR).unwrap();
            let a = fs.open(path, libc::O_WRONLY | libc::O_APPEND).unwrap();
            for _ in 0..800 {
                // Empty it (no crypto: quick, so it lands between a reader's fstat and
                // pread), rewrite it under a new header, cut it mid-chunk, append.
                fs.truncate(&h, 0).unwrap();
                fs.write(&h, 0, &[2; 2000]).unwrap();
                fs.truncate(&h, 1500).unwrap();
                fs.write(&a, 0, &[2; 30]).unwrap();
                fs.truncate(&h, 1500).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        s.spawn(|| {
            let h = fs.open(path, libc::O_RDONLY).unwrap();
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                // Mostly short reads of the tail: a short read cycle opens more windows.
                let from = if reads % 8 == 0 { 0 } else { 1400 };
                let got = fs.read(&h, from, 1 << 20).unwrap();
                let len = from as usize + got.len();
                assert!(
                    (got.is_empty() || [1500, 1530, 2000].contains(&len))
                        && got.iter().all(|&b| b == 2),
                    "read a state no writer left: {len} bytes"
                );
                reads += 1;
            }
            assert!(reads > 10, "the reader ran alongside the writer");
        });
    });
}
