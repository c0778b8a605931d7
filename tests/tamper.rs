//! The tamper matrix: for a vault written by the filesystem core, modify the backing store
//! directly (as Dragon, design.md §2, may) and check that every affected read fails with an
//! integrity error (EIO) naming the right chunk, that no unauthenticated byte is ever
//! returned, and that untouched chunks of the same file still read correctly. Then the same
//! for the vault config, encrypted names, long-name sidecars, symlink targets and xattrs, and
//! a scan of the whole backing directory for plaintext.
//!
//! Every case starts from a freshly written vault and reads through a freshly opened vault,
//! so no key or size cached from before the tampering can hide it.
//!
//! Not tested for detection, because the format documents it as undetectable: replacing a
//! whole file with another file's backing bytes (or an older version of itself).

mod support;

use envfs::Error;
use envfs::error::IntegrityKind;
use envfs::format::geometry::{CHUNK_OVERHEAD, NONCE_LEN, TAG_LEN};
use envfs::format::{FileHeader, Geometry, NameEncoding};
use envfs::fs::Fs;
use envfs::vault::{InitOptions, Vault};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::fs_core::{self, CoreVault};
use support::pattern;

// ---- fixture ----------------------------------------------------------------------------

/// The files every fixture holds, by size in chunks (`(whole, extra bytes)`): empty, 1 byte,
/// exactly one chunk, three and a half chunks, five chunks. Each has a donor twin `<name>-b`
/// of the same size and different content, to move chunks and headers from.
const FILES: &[(&str, u64, u64)] = &[
    ("empty", 0, 0),
    ("one", 0, 1),
    ("chunk", 1, 0),
    ("three-half", 3, 2), // 3 chunks + chunk_size / 2, see `file_len`
    ("five", 5, 0),
];

fn file_len(g: Geometry, name: &str) -> usize {
    let (_, whole, extra) = FILES.iter().find(|f| f.0 == name).unwrap();
    let extra = if *extra == 2 {
        g.chunk_size / 2
    } else {
        *extra
    };
    (whole * g.chunk_size + extra) as usize
}

fn donor(name: &str) -> String {
    format!("{name}-b")
}

struct Fixture {
    tv: CoreVault,
    g: Geometry,
}

impl Fixture {
    fn new(opts: &InitOptions) -> Fixture {
        let tv = CoreVault::new(opts);
        let g = tv.fs.vault().geometry;
        for (i, (name, _, _)) in FILES.iter().enumerate() {
            let len = file_len(g, name);
            fs_core::write_file(&tv.fs, name, &pattern(i as u64, len));
            fs_core::write_file(&tv.fs, &donor(name), &pattern(1000 + i as u64, len));
        }
        assert_eq!(tv.fs.open_file_count(), 0);
        Fixture { tv, g }
    }

    fn content(&self, name: &str) -> Vec<u8> {
        let i = FILES.iter().position(|f| f.0 == name).unwrap();
        pattern(i as u64, file_len(self.g, name))
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.tv.backing(name)
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        fs::read(self.backing(name)).unwrap()
    }

    /// Rewrite a backing file in place (same inode).
    fn edit(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = self.bytes(name);
        f(&mut bytes);
        fs::write(self.backing(name), bytes).unwrap();
    }

    fn flip(&self, name: &str, offset: u64, bit: u8) {
        self.edit(name, |b| b[offset as usize] ^= 1 << bit);
    }

    fn set_len(&self, name: &str, len: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(self.backing(name))
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    /// Backing byte range of chunk `i` of `name` as written (before tampering).
    fn chunk_range(&self, name: &str, i: u64) -> std::ops::Range<usize> {
        let len = file_len(self.g, name) as u64;
        let start = self.g.chunk_backing_offset(i);
        let end = start + self.g.chunk_plain_len(i, len) + CHUNK_OVERHEAD;
        start as usize..end as usize
    }

    fn chunks(&self, name: &str) -> u64 {
        self.g.chunk_count(file_len(self.g, name) as u64)
    }

    /// Open the tampered vault from disk and check every chunk of `name` against `expect`.
    fn verify(&mut self, name: &str, expect: &[Expect], case: &str) {
        self.tv.reopen();
        verify(&self.tv.fs, self.g, name, &self.content(name), expect, case);
    }
}

fn geometries() -> Vec<(&'static str, InitOptions)> {
    vec![
        ("1024/256", fs_core::small()),
        ("4096/1024", InitOptions::default()),
    ]
}

fn non_empty() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|f| f.0).filter(|&n| n != "empty")
}

// ---- expectations -----------------------------------------------------------------------

/// What reading one chunk-sized range (chunk `i`, counted as in the original file) must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly the bytes originally written there.
    Ok,
    /// Nothing: the range is past the end of the file as it now appears.
    Empty,
    /// No byte at all: an error or an empty read. Only for files that now look empty,
    /// which is what truncating them to 0 bytes (undetectable by design) would also give.
    NoBytes,
    /// `Error::Integrity { kind: Chunk, chunk: Some(i) }`.
    Chunk(u64),
    /// `Error::Integrity { kind: Length, chunk: Some(i) }`.
    Length(u64),
    /// `Error::Integrity { kind: Header, chunk: None }`.
    Header,
    /// `Error::UnsupportedVersion`: a header version from the future.
    Unsupported,
    /// `Error::WrongKey`: no slot names a key this host holds.
    WrongKey,
}

impl Expect {
    fn is_error(self) -> bool {
        !matches!(self, Expect::Ok | Expect::Empty | Expect::NoBytes)
    }
}

fn check_error(err: &Error, expect: Expect, backing: &Path, what: &str) {
    assert_eq!(err.errno(), libc::EIO, "{what}: errno of {err}");
    match (expect, err) {
        (Expect::Chunk(i), Error::Integrity { path, chunk, kind }) => {
            assert_eq!((*kind, *chunk), (IntegrityKind::Chunk, Some(i)), "{what}");
            assert_eq!(path, backing, "{what}: error names the backing file");
        }
        (Expect::Length(i), Error::Integrity { path, chunk, kind }) => {
            assert_eq!((*kind, *chunk), (IntegrityKind::Length, Some(i)), "{what}");
            assert_eq!(path, backing, "{what}: error names the backing file");
        }
        (Expect::Header, Error::Integrity { path, chunk, kind }) => {
            assert_eq!((*kind, *chunk), (IntegrityKind::Header, None), "{what}");
            assert_eq!(path, backing, "{what}: error names the backing file");
        }
        (Expect::Unsupported, Error::UnsupportedVersion(msg))
        | (Expect::WrongKey, Error::WrongKey(msg)) => {
            assert!(
                msg.contains(&backing.display().to_string()),
                "{what}: message names the backing file: {msg}"
            );
        }
        _ => panic!("{what}: expected {expect:?}, got {err:?}"),
    }
}

/// Read every chunk of `name` on its own, then the whole file, and hold each result to its
/// expectation. `expect` must cover every chunk of the file as it now appears.
fn verify(fs: &Fs, g: Geometry, name: &str, original: &[u8], expect: &[Expect], case: &str) {
    let path = Path::new(name);
    let backing = fs.backing_path(path).unwrap();
    // stat and readdir never read a header, so tampering never breaks them.
    let attr = fs.getattr(path).unwrap();
    assert!(
        fs.readdir(Path::new(""))
            .unwrap()
            .iter()
            .any(|e| e.name == name),
        "{case}: still listed"
    );
    assert!(
        g.chunk_count(attr.size) <= expect.len() as u64,
        "{case}: expectations cover the apparent size {}",
        attr.size
    );
    let backing_len = fs::metadata(&backing).unwrap().len();
    if backing_len > 0 && backing_len < g.header_size {
        // Cut into the header: refused at open (stat shows 0 bytes, so a reader would
        // otherwise never ask for any and see an empty file).
        let err = fs
            .open(path, libc::O_RDONLY)
            .err()
            .unwrap_or_else(|| panic!("{case}: a file cut into its header opened"));
        check_error(&err, Expect::Header, &backing, &format!("{case}: open"));
        assert!(
            expect.iter().all(|e| matches!(e, Expect::Header)),
            "{case}: a file without a whole header can only fail as a header"
        );
        return;
    }
    if g.plain_size(backing_len).is_err() && g.plain_size_lossy(backing_len) == 0 {
        // A header and less than a chunk's overhead: listed with size 0 as well, and for
        // the same reason refused at open rather than read as an empty file.
        let err = fs
            .open(path, libc::O_RDONLY)
            .err()
            .unwrap_or_else(|| panic!("{case}: a file cut into its first chunk opened"));
        check_error(&err, Expect::Length(0), &backing, &format!("{case}: open"));
        assert!(
            expect.first() == Some(&Expect::Length(0))
                && expect[1..].iter().all(|e| *e == Expect::Empty),
            "{case}: a file cut into its first chunk can only fail on its length"
        );
        return;
    }
    let h = fs.open(path, libc::O_RDONLY).unwrap();
    let cs = g.chunk_size as usize;
    for (i, &e) in expect.iter().enumerate() {
        let what = format!("{case}: read of chunk {i}");
        let got = fs.read(&h, (i * cs) as u64, cs);
        match (e, got) {
            (Expect::Ok, Ok(bytes)) => {
                let end = ((i + 1) * cs).min(original.len());
                assert!(bytes == original[i * cs..end], "{what}: wrong bytes");
            }
            (Expect::Empty, Ok(bytes)) => assert!(bytes.is_empty(), "{what}: expected EOF"),
            (Expect::NoBytes, Ok(bytes)) => assert!(bytes.is_empty(), "{what}: returned bytes"),
            (Expect::NoBytes, Err(err)) => assert_eq!(err.errno(), libc::EIO, "{what}: {err}"),
            (e, Err(err)) if e.is_error() => check_error(&err, e, &backing, &what),
            (e, got) => panic!("{what}: expected {e:?}, got {:?}", got.map(|b| b.len())),
        }
    }
    // A read of the whole file fails with the first failure a chunk-by-chunk reader meets.
    let whole = fs.read(&h, 0, original.len() + 2 * cs);
    let what = format!("{case}: read of the whole file");
    match expect
        .iter()
        .find(|e| e.is_error() || **e == Expect::NoBytes)
    {
        Some(Expect::NoBytes) => match whole {
            Ok(bytes) => assert!(bytes.is_empty(), "{what}: returned bytes"),
            Err(err) => assert_eq!(err.errno(), libc::EIO),
        },
        Some(&first) => check_error(&whole.unwrap_err(), first, &backing, &what),
        None => panic!("{case}: a tamper case must expect a failure"),
    }
}

/// Every chunk of an `n`-chunk file fails the same way.
fn all(n: u64, e: Expect) -> Vec<Expect> {
    vec![e; n as usize]
}

/// Chunks `0..n` read back, except the listed ones.
fn ok_except(n: u64, bad: &[(u64, Expect)]) -> Vec<Expect> {
    let mut v = vec![Expect::Ok; n as usize];
    for &(i, e) in bad {
        if i as usize >= v.len() {
            v.resize(i as usize + 1, Expect::Empty);
        }
        v[i as usize] = e;
    }
    v
}

// ---- file headers -----------------------------------------------------------------------

/// (region, byte offset, bit, expected failure) for one bit flip in each header region.
fn header_flips(g: Geometry, header: &[u8]) -> Vec<(String, u64, u8, Expect)> {
    let (parsed, _) = FileHeader::parse(header).unwrap();
    assert_eq!(parsed.slots.len(), 1);
    let id_len = parsed.slots[0].key_id.len() as u64;
    assert_eq!(parsed.slots[0].wrapped.len(), 60);
    let slot = 56;
    let wrapped_len_at = slot + 2 + id_len;
    let wrapped = wrapped_len_at + 2;
    let padding = wrapped + 60;
    let mac = g.header_size - 32;
    use Expect::*;
    let mut cases = vec![
        ("magic", 0, 0, Header),
        ("magic", 3, 7, Header),
        // 1 -> 0: no such version.
        ("version low byte", 5, 0, Header),
        // 1 -> 257: a version from the future.
        ("version high byte", 4, 0, Unsupported),
        ("version low byte", 5, 1, Unsupported),
        // 1 -> 0 and 1 -> 3 slots.
        ("slot count", 6, 0, Header),
        ("slot count", 6, 1, Header),
        ("reserved", 7, 0, Header),
        ("file id", 8, 0, Header),
        ("file id", 23, 7, Header),
        ("key commitment", 24, 0, Header),
        ("key commitment", 55, 7, Header),
        // The slot then names a provider or key this host does not hold: without the DEK
        // nothing can tell that from a file wrapped by someone else's key.
        ("slot provider", slot, 0, WrongKey),
        ("slot provider", slot, 1, WrongKey),
        ("slot key id", slot + 2 + id_len - 1, 0, WrongKey),
        // 22 -> 23: the slot no longer parses.
        ("slot key id length", slot + 1, 0, Header),
        ("wrapped key length", wrapped_len_at + 1, 0, Header),
        ("wrapped key length", wrapped_len_at, 0, Header),
        ("wrapped key nonce", wrapped, 0, Header),
        ("wrapped key body", wrapped + 12, 3, Header),
        ("wrapped key body", wrapped + 43, 5, Header),
        ("wrapped key tag", wrapped + 44, 0, Header),
        ("wrapped key tag", wrapped + 59, 7, Header),
        ("padding", padding, 0, Header),
        ("padding", mac - 1, 7, Header),
        ("MAC", mac, 0, Header),
        ("MAC", g.header_size - 1, 7, Header),
    ];
    // 'l' -> 0xEC: the key id is no longer UTF-8, so the slot does not parse.
    cases.push(("slot key id", slot + 2, 7, Header));
    cases
        .into_iter()
        .map(|(r, o, b, e)| (r.to_string(), o, b, e))
        .collect()
}

#[test]
fn header_bit_flips() {
    for (geo, opts) in geometries() {
        let probe = Fixture::new(&opts);
        let header = probe.bytes("five")[..probe.g.header_size as usize].to_vec();
        let flips = header_flips(probe.g, &header);
        for name in non_empty() {
            for (region, offset, bit, expect) in &flips {
                let mut fx = Fixture::new(&opts);
                fx.flip(name, *offset, *bit);
                let n = fx.chunks(name);
                let case = format!("{geo} {name}: {region} byte {offset} bit {bit}");
                fx.verify(name, &all(n, *expect), &case);
            }
        }
    }
}

#[test]
fn header_copied_from_another_file() {
    for (geo, opts) in geometries() {
        for name in non_empty() {
            let mut fx = Fixture::new(&opts);
            let h = fx.g.header_size as usize;
            let other = fx.bytes(&donor(name));
            fx.edit(name, |b| b[..h].copy_from_slice(&other[..h]));
            // The header is authentic, but for another file id and DEK: every chunk fails.
            let n = fx.chunks(name);
            let expect: Vec<Expect> = (0..n).map(Expect::Chunk).collect();
            fx.verify(name, &expect, &format!("{geo} {name}: donor header"));
        }
    }
}

#[test]
fn header_from_another_vault_with_the_same_key() {
    // Same KEK, different vault id: the wrapped DEK is bound to the vault id.
    let mut fx = Fixture::new(&fs_core::small());
    let other = Fixture::new(&fs_core::small());
    let h = fx.g.header_size as usize;
    let foreign = other.bytes("five");
    fx.edit("five", |b| b[..h].copy_from_slice(&foreign[..h]));
    fx.verify("five", &all(5, Expect::Header), "header from another vault");
}

// ---- chunks -----------------------------------------------------------------------------

#[test]
fn chunk_bit_flips_and_zeroed_chunks() {
    for (geo, opts) in geometries() {
        for name in non_empty() {
            let n = Fixture::new(&opts).chunks(name);
            for i in 0..n {
                for part in [
                    "nonce first byte",
                    "nonce last byte",
                    "ciphertext first byte",
                    "ciphertext last byte",
                    "tag first byte",
                    "tag last byte",
                    "zeroed",
                ] {
                    let mut fx = Fixture::new(&opts);
                    let range = fx.chunk_range(name, i);
                    let slot = range.len() as u64;
                    let flip = match part {
                        "nonce first byte" => Some((0, 0)),
                        "nonce last byte" => Some((NONCE_LEN - 1, 7)),
                        "ciphertext first byte" => Some((NONCE_LEN, 0)),
                        "ciphertext last byte" => Some((slot - TAG_LEN - 1, 4)),
                        "tag first byte" => Some((slot - TAG_LEN, 0)),
                        "tag last byte" => Some((slot - 1, 7)),
                        _ => None,
                    };
                    match flip {
                        Some((at, bit)) => fx.flip(name, range.start as u64 + at, bit),
                        None => fx.edit(name, |b| b[range].fill(0)),
                    }
                    let case = format!("{geo} {name}: chunk {i} {part}");
                    fx.verify(name, &ok_except(n, &[(i, Expect::Chunk(i))]), &case);
                }
            }
        }
    }
}

#[test]
fn swapped_chunks() {
    for (geo, opts) in geometries() {
        // Only chunks of equal backing length can be swapped without changing the size.
        for (name, pairs) in [
            ("three-half", vec![(0, 1), (0, 2), (1, 2)]),
            ("five", vec![(0, 1), (1, 3), (0, 4), (3, 4)]),
        ] {
            for (i, j) in pairs {
                let mut fx = Fixture::new(&opts);
                let (a, b) = (fx.chunk_range(name, i), fx.chunk_range(name, j));
                fx.edit(name, |bytes| {
                    let first = bytes[a.clone()].to_vec();
                    bytes.copy_within(b.clone(), a.start);
                    bytes[b].copy_from_slice(&first);
                });
                let n = fx.chunks(name);
                let expect = ok_except(n, &[(i, Expect::Chunk(i)), (j, Expect::Chunk(j))]);
                fx.verify(name, &expect, &format!("{geo} {name}: swap {i} and {j}"));
            }
        }
    }
}

#[test]
fn chunk_moved_from_another_file() {
    for (geo, opts) in geometries() {
        for name in non_empty() {
            let n = Fixture::new(&opts).chunks(name);
            for i in 0..n {
                let mut fx = Fixture::new(&opts);
                let range = fx.chunk_range(name, i);
                let other = fx.bytes(&donor(name));
                fx.edit(name, |b| b[range.clone()].copy_from_slice(&other[range]));
                let case = format!("{geo} {name}: chunk {i} from {}", donor(name));
                fx.verify(name, &ok_except(n, &[(i, Expect::Chunk(i))]), &case);
            }
        }
    }
}

#[test]
fn chunk_replaced_by_an_older_version_of_another_position() {
    // A chunk of the same file, same length, from a different index (a "move" within the
    // file, as opposed to the swap above which exchanges two).
    let mut fx = Fixture::new(&fs_core::small());
    let (a, b) = (fx.chunk_range("five", 1), fx.chunk_range("five", 2));
    fx.edit("five", |bytes| bytes.copy_within(a, b.start));
    fx.verify(
        "five",
        &ok_except(5, &[(2, Expect::Chunk(2))]),
        "chunk 1 copied over chunk 2",
    );
}

// ---- lengths ----------------------------------------------------------------------------

#[test]
fn truncated_at_a_chunk_boundary() {
    for (geo, opts) in geometries() {
        for name in ["three-half", "five"] {
            let n = Fixture::new(&opts).chunks(name);
            for dropped in 1..n {
                let mut fx = Fixture::new(&opts);
                let kept = n - dropped;
                fx.set_len(name, fx.g.chunk_backing_offset(kept));
                // The new last chunk was sealed as an inner chunk: its last flag is wrong.
                let mut expect = ok_except(kept, &[(kept - 1, Expect::Chunk(kept - 1))]);
                expect.resize(n as usize, Expect::Empty);
                let case = format!("{geo} {name}: last {dropped} chunk(s) dropped");
                fx.verify(name, &expect, &case);
            }
        }
        // Dropping the only chunk leaves a bare header: a file that looks empty, exactly
        // what truncating it to 0 bytes would give (an empty file has no header), which no
        // format without outside state can detect. No byte of it may be returned.
        for name in ["one", "chunk"] {
            let mut fx = Fixture::new(&opts);
            fx.set_len(name, fx.g.header_size);
            fx.tv.reopen();
            assert_eq!(fx.tv.fs.getattr(Path::new(name)).unwrap().size, 0);
            verify(
                &fx.tv.fs,
                fx.g,
                name,
                &fx.content(name),
                &[Expect::NoBytes],
                &format!("{geo} {name}: only chunk dropped"),
            );
        }
    }
}

#[test]
fn truncated_mid_chunk() {
    for (geo, opts) in geometries() {
        for name in non_empty() {
            let n = Fixture::new(&opts).chunks(name);
            for i in 0..n {
                let slot_len = Fixture::new(&opts).chunk_range(name, i).len() as u64;
                for cut in [
                    1,
                    NONCE_LEN,
                    CHUNK_OVERHEAD,
                    CHUNK_OVERHEAD + 1,
                    100,
                    slot_len - 1,
                ] {
                    if cut >= slot_len {
                        continue;
                    }
                    let mut fx = Fixture::new(&opts);
                    fx.set_len(name, fx.g.chunk_backing_offset(i) + cut);
                    let mut expect = if cut > CHUNK_OVERHEAD {
                        // A length a writer could produce: chunk i is now a short last
                        // chunk, and its tag no longer matches.
                        ok_except(i + 1, &[(i, Expect::Chunk(i))])
                    } else if i > 0 {
                        // A length no writer produces: the whole chunks before the cut
                        // read, except the one that now looks last.
                        ok_except(i, &[(i - 1, Expect::Length(i - 1))])
                    } else {
                        // No whole chunk is left: stat shows an empty file, so the open
                        // is refused (see `verify`).
                        vec![Expect::Length(0)]
                    };
                    expect.resize(n.max(1) as usize, Expect::Empty);
                    let case = format!("{geo} {name}: cut {cut} bytes into chunk {i}");
                    fx.verify(name, &expect, &case);
                }
            }
        }
    }
}

#[test]
fn truncated_within_the_header() {
    for (geo, opts) in geometries() {
        for name in non_empty() {
            let h = Fixture::new(&opts).g.header_size;
            for len in [1, 8, 24, h / 2, h - 32, h - 1] {
                let mut fx = Fixture::new(&opts);
                fx.set_len(name, len);
                let n = fx.chunks(name);
                let case = format!("{geo} {name}: cut to {len} header bytes");
                fx.verify(name, &all(n, Expect::Header), &case);
            }
        }
    }
}

#[test]
fn appended_bytes() {
    for (geo, opts) in geometries() {
        let g = Fixture::new(&opts).g;
        for extra in [1, CHUNK_OVERHEAD, g.backing_chunk_size()] {
            for (name, _, _) in FILES {
                let mut fx = Fixture::new(&opts);
                let junk = pattern(77, extra as usize);
                fx.edit(name, |b| b.extend_from_slice(&junk));
                let expect = if *name == "empty" {
                    // A header-less file with bytes: the "header" cannot parse.
                    vec![Expect::Header]
                } else {
                    let len = file_len(g, name) as u64;
                    let n = g.chunk_count(len);
                    let last = n - 1;
                    let last_len = g.chunk_plain_len(last, len);
                    if last_len + extra <= g.chunk_size {
                        // The last chunk just looks longer; its tag is in the wrong place.
                        ok_except(n, &[(last, Expect::Chunk(last))])
                    } else if last_len + extra - g.chunk_size <= CHUNK_OVERHEAD {
                        // The junk spills into a new chunk too short to be one.
                        ok_except(n, &[(last, Expect::Length(last))])
                    } else {
                        // A new chunk appears; the old last one is now read as inner.
                        ok_except(n + 1, &[(last, Expect::Chunk(last)), (n, Expect::Chunk(n))])
                    }
                };
                let case = format!("{geo} {name}: {extra} bytes appended");
                fx.verify(name, &expect, &case);
            }
        }
    }
}

// ---- vault config -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Corrupt,
    Unsupported,
    NotAVault,
    WrongKey,
}

fn open_refusal(root: &Path) -> Refusal {
    match Vault::open(root, vec![fs_core::provider()]) {
        Ok(_) => panic!("a tampered vault opened"),
        Err(Error::CorruptConfig(_)) => Refusal::Corrupt,
        Err(Error::UnsupportedVersion(_)) => Refusal::Unsupported,
        Err(Error::NotAVault(_)) => Refusal::NotAVault,
        Err(Error::WrongKey(_)) => Refusal::WrongKey,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn config_file(root: &Path) -> PathBuf {
    root.join("envfs.conf")
}

/// A fresh small vault holding one file, and its config bytes.
fn config_fixture() -> (CoreVault, Vec<u8>) {
    let tv = CoreVault::new(&fs_core::small());
    fs_core::write_file(&tv.fs, "f", b"hello");
    let bytes = fs::read(config_file(tv.root())).unwrap();
    (tv, bytes)
}

#[test]
fn config_edits_refuse_to_open() {
    let (_, pristine) = config_fixture();
    // Format version 2: the generation is at 40..48, the first slot at 48.
    let slot = 48;
    let id_len = pristine[slot + 1] as usize;
    let wrapped_len_at = slot + 2 + id_len;
    let wrapped = wrapped_len_at + 2;
    let mac = pristine.len() - 32;
    assert_eq!(wrapped + 60, mac, "one local slot");
    use Refusal::*;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let flip = |at: usize, bit: u8| -> Edit { Box::new(move |b: &mut Vec<u8>| b[at] ^= 1 << bit) };
    let set = |at: usize, value: Vec<u8>| -> Edit {
        Box::new(move |b: &mut Vec<u8>| b[at..at + value.len()].copy_from_slice(&value))
    };
    let cases: Vec<(&str, Edit, Refusal)> = vec![
        ("magic", flip(0, 0), Corrupt),
        ("magic", flip(7, 7), Corrupt),
        (
            "version 4",
            set(8, 4u16.to_be_bytes().to_vec()),
            Unsupported,
        ),
        // Read as version 3 (a lifetime field before the slots), the bytes do not parse or
        // authenticate: the key hierarchy cannot be switched on by an edit.
        ("version 3", set(8, 3u16.to_be_bytes().to_vec()), Corrupt),
        ("version 258", flip(8, 0), Unsupported),
        ("version 0", flip(9, 1), Corrupt),
        // Read as version 1 (no generation field), the bytes no longer authenticate: the
        // version cannot be downgraded to drop the generation.
        ("version 1", set(8, 1u16.to_be_bytes().to_vec()), Corrupt),
        ("flag: plaintext names", flip(11, 0), Corrupt),
        ("flag: base32 names", flip(11, 1), Corrupt),
        ("unknown flag", flip(10, 7), Unsupported),
        ("unknown flag", flip(11, 2), Unsupported),
        ("vault id", flip(12, 0), Corrupt),
        ("vault id", flip(27, 7), Corrupt),
        ("suite", flip(28, 0), Unsupported),
        ("suite", flip(28, 1), Unsupported),
        ("slot count 0", flip(29, 0), Corrupt),
        ("slot count 3", flip(29, 1), Corrupt),
        ("chunk size 1025", flip(33, 0), Corrupt),
        (
            "chunk size 2048",
            set(30, 2048u32.to_be_bytes().to_vec()),
            Corrupt,
        ),
        (
            "chunk size 512",
            set(30, 512u32.to_be_bytes().to_vec()),
            Corrupt,
        ),
        ("header size 257", flip(37, 0), Corrupt),
        (
            "header size 1024",
            set(34, 1024u32.to_be_bytes().to_vec()),
            Corrupt,
        ),
        ("long-name limit", flip(39, 0), Corrupt),
        ("generation", flip(47, 0), Corrupt),
        ("generation", flip(40, 7), Corrupt),
        (
            "long-name limit 254",
            set(38, 254u16.to_be_bytes().to_vec()),
            Corrupt,
        ),
        // Our key id under another provider kind can only be an edit of our slot.
        ("slot provider", flip(slot, 0), Corrupt),
        // A changed key id names a key this host does not hold: without the vault secret
        // nothing tells that apart from a vault opened by someone else's key.
        ("slot key id", flip(slot + 2 + id_len - 1, 0), WrongKey),
        ("slot key id length", flip(slot + 1, 0), Corrupt),
        ("wrapped length", flip(wrapped_len_at + 1, 0), Corrupt),
        ("wrapped nonce", flip(wrapped, 0), Corrupt),
        ("wrapped secret", flip(wrapped + 20, 3), Corrupt),
        ("wrapped tag", flip(wrapped + 59, 7), Corrupt),
        ("MAC", flip(mac, 0), Corrupt),
        ("MAC", flip(mac + 31, 7), Corrupt),
        (
            "one byte appended",
            Box::new(|b: &mut Vec<u8>| b.push(0)),
            Corrupt,
        ),
        (
            "MAC-sized junk appended",
            Box::new(|b: &mut Vec<u8>| b.extend_from_slice(&[0xAB; 32])),
            Corrupt,
        ),
        ("emptied", Box::new(|b: &mut Vec<u8>| b.clear()), Corrupt),
    ];
    for (what, edit, expected) in cases {
        let (tv, mut bytes) = config_fixture();
        edit(&mut bytes);
        fs::write(config_file(tv.root()), &bytes).unwrap();
        assert_eq!(open_refusal(tv.root()), expected, "config {what}");
    }
    // Every truncation of the config.
    let (tv, bytes) = config_fixture();
    for cut in 0..bytes.len() {
        fs::write(config_file(tv.root()), &bytes[..cut]).unwrap();
        assert_eq!(
            open_refusal(tv.root()),
            Corrupt,
            "config cut to {cut} bytes"
        );
    }
    // And every single bit of it: whatever the flip, never Ok.
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        fs::write(config_file(tv.root()), &flipped).unwrap();
        assert!(
            Vault::open(tv.root(), vec![fs_core::provider()]).is_err(),
            "config bit {bit}"
        );
    }
}

#[test]
fn missing_config_is_not_a_vault() {
    let (tv, _) = config_fixture();
    fs::remove_file(config_file(tv.root())).unwrap();
    assert_eq!(open_refusal(tv.root()), Refusal::NotAVault);
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(open_refusal(empty.path()), Refusal::NotAVault);
}

#[test]
fn config_from_another_vault_does_not_open_its_files() {
    // Another vault's config, authentic and opened by the same key: the vault opens (it is
    // a valid vault), but none of the old files' headers authenticate under its vault id.
    let (tv, _) = config_fixture();
    let (other, other_config) = config_fixture();
    fs::write(config_file(tv.root()), other_config).unwrap();
    drop(other);
    let fs = fs_core::open_fs(tv.root());
    // The names were encrypted under the other vault's name key: nothing decrypts.
    assert!(fs.readdir(Path::new("")).unwrap().is_empty());
}

#[test]
fn wrong_key_is_refused() {
    let (tv, _) = config_fixture();
    let wrong: Arc<dyn envfs::keys::KeyProvider> =
        Arc::new(envfs::keys::local::LocalKeyProvider::from_kek(
            &envfs::crypto::Secret32::from_bytes([0x43; 32]),
        ));
    assert!(matches!(
        Vault::open(tv.root(), vec![wrong]),
        Err(Error::WrongKey(_))
    ));
    assert!(matches!(
        Vault::open(tv.root(), vec![]),
        Err(Error::WrongKey(_))
    ));
}

// ---- names, sidecars, symlinks, xattrs --------------------------------------------------

/// Flip one bit of an encoded name so that it stays in the vault's alphabet (so the entry
/// is still classified as an encrypted name, not ignored as foreign, and base32's
/// case-insensitivity does not undo the flip).
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

fn listed(fs: &Fs, dir: &str) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs
        .readdir(Path::new(dir))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

fn os(names: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = names.iter().map(OsString::from).collect();
    v.sort();
    v
}

#[test]
fn tampered_names_are_hidden() {
    for opts in [fs_core::small(), fs_core::base32(fs_core::small())] {
        let mut tv = CoreVault::new(&opts);
        tv.fs.mkdir(Path::new("d"), 0o755, None).unwrap();
        for name in ["a", "b", "c", "d/x", "d/y"] {
            fs_core::write_file(&tv.fs, name, name.as_bytes());
        }
        for (victim, dir, rest) in [("b", "", vec!["a", "c", "d"]), ("d/x", "d", vec!["y"])] {
            let backing = tv.backing(victim);
            let name = backing.file_name().unwrap().to_str().unwrap().to_string();
            let tampered = flip_name_char(&name, opts.name_encoding);
            fs::rename(&backing, backing.with_file_name(&tampered)).unwrap();
            tv.reopen();
            assert_eq!(
                listed(&tv.fs, dir),
                os(&rest),
                "{victim} hidden, others listed"
            );
            assert!(
                tv.fs.getattr(Path::new(victim)).unwrap_err().is_not_found(),
                "lookup of {victim}"
            );
            assert!(tv.fs.readdir_plus(Path::new(dir)).unwrap().len() == rest.len());
        }
    }
}

#[test]
fn long_names_use_a_sidecar_and_tampering_hides_them() {
    let mut tv = CoreVault::new(&fs_core::small());
    let long_a = "A".repeat(200);
    let long_b = "B".repeat(200);
    fs_core::write_file(&tv.fs, &long_a, b"content a");
    fs_core::write_file(&tv.fs, &long_b, b"content b");
    fs_core::write_file(&tv.fs, "short", b"s");
    let entry = tv.backing(&long_a);
    let entry_name = entry.file_name().unwrap().to_str().unwrap().to_string();
    assert!(entry_name.ends_with(".envfs-ln"), "{entry_name}");
    assert!(entry_name.len() < 100);
    let sidecar = entry.with_file_name(format!("{entry_name}.name"));
    let encoded = fs::read_to_string(&sidecar).unwrap();
    assert!(
        encoded.len() > 220,
        "the full encoded name is over the limit"
    );
    assert_eq!(
        envfs::format::names::long_name_entry(NameEncoding::Base64Url, &encoded),
        entry_name,
        "the entry is named after the hash of the full name"
    );
    assert_eq!(
        listed(&tv.fs, ""),
        os(&[&long_a, &long_b, "short"]),
        "long names listed"
    );
    assert_eq!(fs_core::read_file(&tv.fs, &long_a).unwrap(), b"content a");

    // Flip a bit of the sidecar's content: the name no longer matches the entry's hash.
    let mut bytes = encoded.clone().into_bytes();
    bytes[10] ^= 1;
    fs::write(&sidecar, &bytes).unwrap();
    tv.reopen();
    assert_eq!(listed(&tv.fs, ""), os(&[&long_b, "short"]));

    // Swap in the other long name's (authentic) sidecar: still no wrong name.
    let entry_b = tv.backing(&long_b);
    let sidecar_b = entry_b.with_file_name(format!(
        "{}.name",
        entry_b.file_name().unwrap().to_str().unwrap()
    ));
    fs::copy(&sidecar_b, &sidecar).unwrap();
    tv.reopen();
    assert_eq!(listed(&tv.fs, ""), os(&[&long_b, "short"]));

    // A missing sidecar hides the entry too.
    fs::remove_file(&sidecar).unwrap();
    tv.reopen();
    assert_eq!(listed(&tv.fs, ""), os(&[&long_b, "short"]));

    // Restoring it restores the entry: nothing else was damaged.
    fs::write(&sidecar, encoded).unwrap();
    tv.reopen();
    assert_eq!(listed(&tv.fs, ""), os(&[&long_a, &long_b, "short"]));
}

#[test]
fn tampered_symlink_targets_fail_to_read() {
    let mut tv = CoreVault::new(&fs_core::small());
    tv.fs
        .symlink("some/target/path".as_ref(), Path::new("link"), None)
        .unwrap();
    tv.fs
        .symlink("other".as_ref(), Path::new("link2"), None)
        .unwrap();
    let backing = tv.backing("link");
    let stored = fs::read_link(&backing).unwrap();
    let stored = stored.to_str().unwrap();
    for (what, target) in [
        ("bit flip", flip_name_char(stored, NameEncoding::Base64Url)),
        ("truncated", stored[..stored.len() - 4].to_string()),
        ("too short", stored[..8].to_string()),
        ("not base64", format!("{stored}!")),
    ] {
        fs::remove_file(&backing).unwrap();
        std::os::unix::fs::symlink(&target, &backing).unwrap();
        tv.reopen();
        match tv.fs.readlink(Path::new("link")) {
            Err(Error::Integrity { path, chunk, kind }) => {
                assert_eq!((kind, chunk), (IntegrityKind::LinkTarget, None), "{what}");
                assert_eq!(path, backing);
            }
            other => panic!("{what}: expected an integrity error, got {other:?}"),
        }
        assert_eq!(tv.fs.readlink(Path::new("link2")).unwrap(), "other");
    }
}

#[test]
fn tampered_xattr_values_fail_to_read() {
    let mut tv = CoreVault::new(&fs_core::small());
    fs_core::write_file(&tv.fs, "f", b"x");
    let path = Path::new("f");
    tv.fs
        .setxattr(path, "user.color".as_ref(), b"blue", 0)
        .unwrap();
    let backing = tv.backing("f");
    let stored = envfs::backing::sys::llistxattr(&backing).unwrap();
    let user: Vec<_> = stored.iter().filter(|n| n.starts_with(b"user.")).collect();
    assert_eq!(user.len(), 1);
    let name = std::ffi::OsStr::from_bytes(user[0]).to_os_string();
    let mut value = envfs::backing::sys::lgetxattr(&backing, &name).unwrap();
    value[0] ^= 1;
    envfs::backing::sys::lsetxattr(&backing, &name, &value, 0).unwrap();
    tv.reopen();
    match tv.fs.getxattr(path, "user.color".as_ref()) {
        Err(e @ Error::Integrity { .. }) => assert_eq!(e.errno(), libc::EIO),
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

// ---- no plaintext on the backing store ---------------------------------------------------

const MARKER: &[u8] = b"MARKER";

fn contains_marker(bytes: &[u8]) -> bool {
    bytes.windows(MARKER.len()).any(|w| w == MARKER)
}

/// Every name, file content, symlink target and xattr under `dir`, checked for the marker.
fn scan(dir: &Path, seen: &mut usize) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        *seen += 1;
        assert!(
            !contains_marker(entry.file_name().as_bytes()),
            "plaintext name: {}",
            path.display()
        );
        for xname in envfs::backing::sys::llistxattr(&path).unwrap() {
            assert!(!contains_marker(&xname), "plaintext xattr name on {path:?}");
            let value = envfs::backing::sys::lgetxattr(&path, std::ffi::OsStr::from_bytes(&xname));
            assert!(
                !contains_marker(&value.unwrap()),
                "plaintext xattr value on {path:?}"
            );
        }
        let ft = entry.file_type().unwrap();
        if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            assert!(
                !contains_marker(target.as_os_str().as_bytes()),
                "plaintext link target: {path:?}"
            );
        } else if ft.is_dir() {
            scan(&path, seen);
        } else {
            assert!(
                !contains_marker(&fs::read(&path).unwrap()),
                "plaintext content in {path:?}"
            );
        }
    }
}

#[test]
fn no_plaintext_reaches_the_backing_store() {
    for opts in [
        fs_core::small(),
        InitOptions::default(),
        fs_core::base32(fs_core::small()),
    ] {
        let tv = CoreVault::new(&opts);
        let fs = &tv.fs;
        let content: Vec<u8> = b"MARKER-secret-content "
            .iter()
            .copied()
            .cycle()
            .take(20_000)
            .collect();
        let long = format!("MARKER-secret-long-name-{}", "x".repeat(180));
        fs.mkdir(Path::new("MARKER-secret-dir"), 0o755, None)
            .unwrap();
        for name in [
            "MARKER-secret-name",
            "MARKER-secret-dir/MARKER-secret-inner",
            &format!("MARKER-secret-dir/{long}"),
            &long,
        ] {
            fs_core::write_file(fs, name, &content);
        }
        // Partial writes, grows and shrinks, appends, O_TRUNC and renames too.
        let (h, _) = fs
            .create(Path::new("MARKER-secret-edited"), 0o600, libc::O_RDWR, None)
            .unwrap();
        fs.write(&h, 0, &content[..5000]).unwrap();
        fs.write(&h, 3000, b"MARKER-secret-patch").unwrap();
        fs.truncate(&h, 9000).unwrap();
        fs.truncate(&h, 2500).unwrap();
        drop(h);
        let h = fs
            .open(
                Path::new("MARKER-secret-edited"),
                libc::O_WRONLY | libc::O_APPEND,
            )
            .unwrap();
        fs.write(&h, 0, b"MARKER-secret-appended").unwrap();
        drop(h);
        drop(
            fs.open(
                Path::new("MARKER-secret-name"),
                libc::O_RDWR | libc::O_TRUNC,
            )
            .unwrap(),
        );
        fs_core::write_file(fs, "MARKER-secret-name", b"MARKER-secret-rewritten");
        fs.rename(
            Path::new("MARKER-secret-edited"),
            Path::new("MARKER-secret-dir/MARKER-secret-renamed"),
            0,
        )
        .unwrap();
        fs.symlink(
            "MARKER-secret-target/MARKER".as_ref(),
            Path::new("MARKER-secret-link"),
            None,
        )
        .unwrap();
        fs.link(
            Path::new("MARKER-secret-name"),
            Path::new("MARKER-secret-dir/MARKER-secret-hardlink"),
        )
        .unwrap();
        for target in ["MARKER-secret-name", "MARKER-secret-dir"] {
            fs.setxattr(
                Path::new(target),
                "user.MARKER-secret-xattr".as_ref(),
                b"MARKER-secret-xattr-value",
                0,
            )
            .unwrap();
        }
        // The plaintext is really there through the core...
        assert_eq!(
            fs.readlink(Path::new("MARKER-secret-link")).unwrap(),
            "MARKER-secret-target/MARKER"
        );
        assert!(contains_marker(
            &fs_core::read_file(fs, "MARKER-secret-dir/MARKER-secret-renamed").unwrap()
        ));
        // ...and nowhere in the backing directory.
        let mut seen = 0;
        scan(tv.root(), &mut seen);
        assert!(seen >= 10, "scanned {seen} entries");
    }
}

// ---- writes never launder tampered data -------------------------------------------------

/// A write, truncate or grow that would have to decrypt a tampered chunk (to merge into it,
/// trim it or reseal it without its last flag) fails and leaves the backing file as it was:
/// it must never re-encrypt unauthenticated bytes into authentic ones.
#[test]
fn writes_never_launder_tampered_data() {
    type Op = Box<dyn Fn(&Fs, &envfs::fs::Handle, u64) -> envfs::Result<()>>;
    let write = |at: fn(u64) -> u64, len: usize| -> Op {
        Box::new(move |fs, h, cs| fs.write(h, at(cs), &vec![7u8; len]).map(|_| ()))
    };
    let truncate = |to: fn(u64) -> u64| -> Op { Box::new(move |fs, h, cs| fs.truncate(h, to(cs))) };
    // (file, tampered chunk, what, operation, expected failure)
    let cases: Vec<(&str, u64, &str, Op, Expect)> = vec![
        (
            "five",
            2,
            "write inside",
            write(|cs| 2 * cs + 5, 10),
            Expect::Chunk(2),
        ),
        (
            "five",
            2,
            "write across into it",
            write(|cs| 2 * cs - 5, 10),
            Expect::Chunk(2),
        ),
        (
            "five",
            2,
            "shrink into it",
            truncate(|cs| 2 * cs + 100),
            Expect::Chunk(2),
        ),
        ("five", 4, "append", write(|cs| 5 * cs, 1), Expect::Chunk(4)),
        ("five", 4, "grow", truncate(|cs| 6 * cs), Expect::Chunk(4)),
        (
            "five",
            4,
            "write far past the end",
            write(|cs| 8 * cs, 3),
            Expect::Chunk(4),
        ),
        (
            "three-half",
            3,
            "write inside",
            write(|cs| 3 * cs + 1, 1),
            Expect::Chunk(3),
        ),
        (
            "three-half",
            3,
            "extend it",
            write(|cs| 3 * cs + cs / 2, 1),
            Expect::Chunk(3),
        ),
        // "one" holds 1 byte: writing at 1 extends (so reseals) the tampered last chunk.
        ("one", 0, "append to it", write(|_| 1, 1), Expect::Chunk(0)),
    ];
    for (name, chunk, what, op, expect) in cases {
        let mut fx = Fixture::new(&fs_core::small());
        let range = fx.chunk_range(name, chunk);
        fx.flip(name, range.start as u64 + NONCE_LEN + 1, 2);
        fx.tv.reopen();
        let before = fx.bytes(name);
        let h = fx.tv.fs.open(Path::new(name), libc::O_RDWR).unwrap();
        let cs = fx.g.chunk_size;
        let result = op(&fx.tv.fs, &h, cs);
        let case = format!("{name}: chunk {chunk} tampered, {what}");
        match result {
            Ok(()) => panic!("{case}: succeeded"),
            Err(err) => check_error(&err, expect, &fx.backing(name), &case),
        }
        assert!(fx.bytes(name) == before, "{case}: backing file changed");
    }

    // A tampered header refuses every write that needs the file's keys.
    let mut fx = Fixture::new(&fs_core::small());
    fx.flip("five", fx.g.header_size - 1, 0);
    fx.tv.reopen();
    let before = fx.bytes("five");
    let h = fx.tv.fs.open(Path::new("five"), libc::O_RDWR).unwrap();
    let cs = fx.g.chunk_size;
    let attempts = [
        fx.tv.fs.write(&h, 0, &vec![1; cs as usize]).map(|_| ()),
        fx.tv.fs.write(&h, 5 * cs, b"x").map(|_| ()),
        fx.tv.fs.truncate(&h, cs),
        fx.tv.fs.truncate(&h, 6 * cs),
    ];
    for result in attempts {
        check_error(
            &result.unwrap_err(),
            Expect::Header,
            &fx.backing("five"),
            "tampered header, write",
        );
    }
    assert!(fx.bytes("five") == before);

    // What needs no tampered byte still works: replacing a whole chunk, or cutting the
    // file back to before the damage.
    let mut fx = Fixture::new(&fs_core::small());
    let range = fx.chunk_range("five", 2);
    fx.flip("five", range.start as u64 + NONCE_LEN + 1, 2);
    fx.tv.reopen();
    let fs = &fx.tv.fs;
    let h = fs.open(Path::new("five"), libc::O_RDWR).unwrap();
    let fresh = pattern(99, cs as usize);
    fs.write(&h, 2 * cs, &fresh).unwrap();
    let mut expected = fx.content("five");
    expected[2 * cs as usize..3 * cs as usize].copy_from_slice(&fresh);
    assert!(fs.read(&h, 0, expected.len()).unwrap() == expected);
    fs.truncate(&h, cs + 1).unwrap();
    assert!(fs.read(&h, 0, expected.len()).unwrap() == expected[..cs as usize + 1]);
}

// ---- logging ----------------------------------------------------------------------------

/// A log sink for one test thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn integrity_failures_are_logged_once_with_path_and_chunk() {
    let mut fx = Fixture::new(&fs_core::small());
    let range = fx.chunk_range("five", 2);
    fx.flip("five", range.start as u64 + NONCE_LEN, 0);
    fx.tv.reopen();
    let sink = Captured::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let fs = &fx.tv.fs;
    let h = fs.open(Path::new("five"), libc::O_RDONLY).unwrap();
    let cs = fx.g.chunk_size;
    fs.read(&h, 3 * cs, cs as usize).unwrap();
    for _ in 0..3 {
        fs.read(&h, 2 * cs, cs as usize).unwrap_err();
        fs.read(&h, 0, 5 * cs as usize).unwrap_err();
    }
    let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("integrity")).collect();
    assert_eq!(lines.len(), 1, "logged once, not on every read: {log}");
    let backing = fx.backing("five").display().to_string();
    assert!(lines[0].contains(&backing), "names the backing path: {log}");
    assert!(lines[0].contains("chunk=2"), "names the chunk: {log}");
    assert!(lines[0].contains("ERROR"), "{log}");
}
