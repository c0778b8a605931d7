//! Real programs on a real FUSE mount, compared byte for byte with a plain-directory
//! reference. After each workload the backing directory must hold no plaintext marker, and a
//! remount must show the same content.
//!
//! Every workload runs twice: on a local backing directory (`local::…`) and on a real
//! network filesystem, an sshfs share of an sshd on loopback (`sshfs::…`,
//! tests/support/nas.rs). Where sshfs cannot give what a local disk does (whole-second
//! times, hard links with their own inode numbers, no xattrs), the test expects exactly what
//! docs/OPERATIONS.md "Backing stores" says.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use support::nas::Nas;
use support::*;

/// Where a workload's backing directory lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Local,
    Sshfs,
}

impl Store {
    /// Timestamps to the nanosecond (sshfs: whole seconds, SFTP v3 has no more).
    fn keeps_nanoseconds(self) -> bool {
        self == Store::Local
    }

    /// Both names of a hard link are one inode with a link count of 2 (sshfs: each name
    /// its own inode number, link count 1).
    fn hard_links_share_inode(self) -> bool {
        self == Store::Local
    }

    /// User xattrs and POSIX ACLs (sshfs: EOPNOTSUPP).
    fn xattrs(self) -> bool {
        self == Store::Local
    }

    /// A symlink's times can be set (sshfs would set its target's: the mount accepts them
    /// and keeps the store's, OPERATIONS.md "Backing stores").
    fn symlink_times(self) -> bool {
        self == Store::Local
    }
}

/// A vault on one kind of store; the share (if any) outlives the vault's mounts.
struct Setup {
    v: TestVault,
    store: Store,
    _nas: Option<Nas>,
}

impl std::ops::Deref for Setup {
    type Target = TestVault;
    fn deref(&self) -> &TestVault {
        &self.v
    }
}

fn setup(store: Store) -> Setup {
    match store {
        Store::Local => Setup {
            v: TestVault::new(&[]),
            store,
            _nas: None,
        },
        Store::Sshfs => {
            let nas = Nas::start();
            Setup {
                v: TestVault::new_at(nas.share().join("vault"), &[]),
                store,
                _nas: Some(nas),
            }
        }
    }
}

/// One `#[test]` per workload and store: `local::name` and `sshfs::name`.
macro_rules! on_each_store {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test]
            fn $name() {
                super::$name(super::setup(super::Store::Local))
            })*
        }
        mod sshfs {
            $(#[test]
            fn $name() {
                super::$name(super::setup(super::Store::Sshfs))
            })*
        }
    };
}

on_each_store!(
    cp_a_and_diff_r_round_trip_and_survive_remount,
    tar_extract_of_a_source_tree_matches_reference,
    git_init_commit_clone_checkout_inside_the_mount,
    rsync_in_and_out_is_byte_identical,
    editor_save_pattern_temp_fsync_rename_over,
    sqlite_wal_ten_thousand_rows_reopen_integrity_check,
    shared_and_private_mmap_reads_and_writes,
    concurrent_writer_processes_disjoint_and_overlapping_ranges,
    posix_surface_through_the_mount,
    read_only_mount_refuses_writes,
);

const MARKER: &str = "ENVFS-PLAINTEXT-MARKER";

/// A small tree with a marker in every name and file, nested dirs, a symlink, an empty file,
/// a multi-chunk file and a long name.
fn make_tree(root: &Path) {
    let mut rng = Rng(42);
    fs::create_dir_all(root.join(format!("{MARKER}-dir/sub"))).unwrap();
    for i in 0..20 {
        let mut data = format!("{MARKER} file {i}\n").into_bytes();
        let n = rng.below(20_000) as usize;
        data.extend(rng.bytes(n));
        fs::write(root.join(format!("{MARKER}-dir/sub/f{i}.bin")), &data).unwrap();
    }
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join(format!("{}-long", "n".repeat(200))), MARKER).unwrap();
    std::os::unix::fs::symlink(format!("{MARKER}-dir/sub/f1.bin"), root.join("link")).unwrap();
    let big = pattern(1, 300_000);
    fs::write(root.join("big.bin"), big).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o640)).unwrap();
}

fn assert_clean_backing(v: &TestVault) {
    assert_eq!(
        backing_contains(&v.backing, MARKER.as_bytes()),
        None,
        "plaintext marker in backing store"
    );
}

fn cp_a_and_diff_r_round_trip_and_survive_remount(v: Setup) {
    let src = v.dir.path().join("src");
    make_tree(&src);
    let mut m = v.mount("mnt", &[]);
    sh(
        v.dir.path(),
        &format!("cp -a {} {}", src.display(), m.p("copy").display()),
    );
    sh(
        v.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}",
            src.display(),
            m.p("copy").display()
        ),
    );
    // Modes and mtimes survive too (cp -a preserves them).
    let a = fs::metadata(src.join("empty")).unwrap();
    let b = fs::metadata(m.p("copy/empty")).unwrap();
    assert_eq!(a.mode(), b.mode());
    assert_eq!(a.mtime(), b.mtime());
    if v.store.keeps_nanoseconds() {
        assert_eq!(a.mtime_nsec(), b.mtime_nsec());
    } else {
        assert_eq!(b.mtime_nsec(), 0, "whole seconds, as the store keeps them");
    }
    m.unmount();
    assert_clean_backing(&v);
    let m2 = v.mount("mnt2", &[]);
    sh(
        v.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}",
            src.display(),
            m2.p("copy").display()
        ),
    );
}

/// A real source archive: the vendored sources of a crate this project builds with.
fn source_archive(dir: &Path) -> std::path::PathBuf {
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
    let out = sh(
        dir,
        &format!("ls -d {cargo_home}/registry/src/*/libc-0.2.* | head -1"),
    );
    let crate_dir = Path::new(out.trim());
    assert!(
        crate_dir.is_dir(),
        "no vendored libc sources found under {cargo_home}"
    );
    let archive = dir.join("src.tar");
    sh(
        dir,
        &format!(
            "tar -C {} -cf {} {}",
            crate_dir.parent().unwrap().display(),
            archive.display(),
            crate_dir.file_name().unwrap().to_string_lossy()
        ),
    );
    archive
}

fn tar_extract_of_a_source_tree_matches_reference(v: Setup) {
    let archive = source_archive(v.dir.path());
    let reference = v.dir.path().join("ref");
    fs::create_dir(&reference).unwrap();
    let m = v.mount("mnt", &[]);
    sh(
        v.dir.path(),
        &format!("tar -C {} -xf {}", reference.display(), archive.display()),
    );
    sh(
        v.dir.path(),
        &format!("tar -C {} -xf {}", m.path.display(), archive.display()),
    );
    sh(
        v.dir.path(),
        &format!("diff -r {} {}", reference.display(), m.path.display()),
    );
    let count = sh(&m.path, "find . -type f | wc -l");
    assert!(
        count.trim().parse::<u32>().unwrap() > 100,
        "archive too small to mean anything: {count}"
    );
}

fn git_init_commit_clone_checkout_inside_the_mount(v: Setup) {
    let m = v.mount("mnt", &[]);
    let repo = m.p("repo");
    fs::create_dir(&repo).unwrap();
    sh(
        &repo,
        "git init -q -b main && git config user.email t@e && git config user.name t",
    );
    for i in 0..30 {
        fs::write(
            repo.join(format!("file{i}.txt")),
            format!("{MARKER} {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("file1.txt", repo.join("link.txt")).unwrap();
    sh(&repo, "git add -A && git commit -qm first");
    // git found that symlinks work here (it falls back to plain files where they fail).
    assert_eq!(
        sh(&repo, "git config core.symlinks || echo unset").trim(),
        "unset"
    );
    fs::write(repo.join("file3.txt"), "changed\n").unwrap();
    sh(
        &repo,
        "git commit -qam second && git checkout -q -b topic HEAD~1 && git checkout -q main",
    );
    // A local clone hard-links objects and checks that each link is the same inode as its
    // source: on a store whose hard links are not (sshfs, docs/OPERATIONS.md "Backing
    // stores") git refuses, exactly as on the plain share, and --no-hardlinks is the way.
    let clone = if v.store.hard_links_share_inode() {
        "git clone -q repo clone"
    } else {
        "git clone -q --no-hardlinks repo clone"
    };
    sh(
        &m.path,
        &format!(
            "{clone} && cd clone && git fsck --strict && git log --oneline | wc -l | grep -qx 2"
        ),
    );
    assert_eq!(
        fs::read_link(m.p("clone/link.txt")).unwrap(),
        Path::new("file1.txt")
    );
    assert_eq!(
        sh(&m.path, "cd clone && git status --porcelain | wc -l").trim(),
        "0"
    );
    sh(
        &m.path,
        "cd clone && git checkout -q HEAD~1 && grep -q ENVFS-PLAINTEXT-MARKER file3.txt",
    );
    sh(
        &m.path,
        "cd repo && git status --porcelain | wc -l | grep -qx 0",
    );
    drop(m);
    assert_clean_backing(&v);
}

fn rsync_in_and_out_is_byte_identical(v: Setup) {
    let src = v.dir.path().join("src");
    make_tree(&src);
    let m = v.mount("mnt", &[]);
    sh(
        v.dir.path(),
        &format!("rsync -a {}/ {}/", src.display(), m.p("in").display()),
    );
    sh(
        v.dir.path(),
        &format!(
            "rsync -a {}/ {}/",
            m.p("in").display(),
            v.dir.path().join("out").display()
        ),
    );
    sh(
        v.dir.path(),
        &format!(
            "diff -r --no-dereference {} {}",
            src.display(),
            v.dir.path().join("out").display()
        ),
    );
    // A second rsync finds nothing to transfer: sizes and mtimes are exact. (Where the store
    // keeps no symlink times, a link's time is when the first rsync made it, which differs
    // from the source's whenever a second boundary fell between them: links' times only
    // are left out there.)
    let omit_link_times = if v.store.symlink_times() {
        ""
    } else {
        " --omit-link-times"
    };
    let out = sh(
        v.dir.path(),
        &format!(
            "rsync -ai{omit_link_times} {}/ {}/",
            src.display(),
            m.p("in").display()
        ),
    );
    assert!(out.trim().is_empty(), "rsync saw differences: {out}");
    drop(m);
    assert_clean_backing(&v);
}

fn editor_save_pattern_temp_fsync_rename_over(v: Setup) {
    let mut m = v.mount("mnt", &[]);
    let target = m.p("notes.txt");
    fs::write(&target, "version 1\n").unwrap();
    for round in 2..6 {
        // What vim does with 'backupcopy=no': write a new file, fsync it, rename it over.
        let tmp = m.p(".notes.txt.swp");
        let mut f = File::create(&tmp).unwrap();
        f.write_all(format!("{MARKER} version {round}\n").as_bytes())
            .unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::rename(&tmp, &target).unwrap();
        File::open(&m.path).unwrap().sync_all().unwrap();
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            format!("{MARKER} version {round}\n")
        );
    }
    assert_eq!(fs::read_dir(&m.path).unwrap().count(), 1);
    m.unmount();
    let m2 = v.mount("mnt2", &[]);
    assert_eq!(
        fs::read_to_string(m2.p("notes.txt")).unwrap(),
        format!("{MARKER} version 5\n")
    );
}

fn sqlite_wal_ten_thousand_rows_reopen_integrity_check(v: Setup) {
    let mut m = v.mount("mnt", &[]);
    let db = m.p("test.db");
    let script = format!(
        "PRAGMA journal_mode=WAL;\nCREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT);\nBEGIN;\n{}COMMIT;\n",
        (0..10_000)
            .map(|i| format!("INSERT INTO t(body) VALUES('{MARKER} row {i}');\n"))
            .collect::<String>()
    );
    fs::write(v.dir.path().join("load.sql"), script).unwrap();
    let out = sh(
        v.dir.path(),
        &format!("sqlite3 {} < load.sql", db.display()),
    );
    assert_eq!(out.trim(), "wal");
    let count = sh(
        v.dir.path(),
        &format!(
            "sqlite3 {} 'SELECT count(*) FROM t; PRAGMA integrity_check;'",
            db.display()
        ),
    );
    assert_eq!(count.trim(), "10000\nok");
    sh(
        v.dir.path(),
        &format!(
            "sqlite3 {} \"UPDATE t SET body='x' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0;\"",
            db.display()
        ),
    );
    m.unmount();
    let m2 = v.mount("mnt2", &[]);
    let out = sh(
        v.dir.path(),
        &format!(
            "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t; SELECT count(*) FROM t WHERE body=\"x\";'",
            m2.p("test.db").display()
        ),
    );
    assert_eq!(out.trim(), "ok\n9091\n1299");
    drop(m2);
    assert_clean_backing(&v);
}

fn mmap(file: &File, len: usize, shared: bool) -> &'static mut [u8] {
    use std::os::fd::AsRawFd;
    let flags = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    // SAFETY: a fresh mapping of `len` bytes of an open file; the test unmaps it below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is valid for len bytes.
    unsafe { std::slice::from_raw_parts_mut(ptr.cast(), len) }
}

fn munmap(map: &mut [u8]) {
    // SAFETY: unmapping a mapping created by mmap() above.
    unsafe {
        libc::msync(map.as_mut_ptr().cast(), map.len(), libc::MS_SYNC);
        libc::munmap(map.as_mut_ptr().cast(), map.len());
    }
}

fn shared_and_private_mmap_reads_and_writes(v: Setup) {
    let mut m = v.mount("mnt", &[]);
    let path = m.p("mapped.bin");
    let len = 3 * 4096 + 123;
    let original = pattern(2, len);
    fs::write(&path, &original).unwrap();

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let shared = mmap(&f, len, true);
    assert_eq!(&shared[..], &original[..]);
    shared[5000..5010].copy_from_slice(b"SHAREDxxxx");
    munmap(shared);

    let private = mmap(&f, len, false);
    private[0..7].copy_from_slice(b"PRIVATE");
    assert_eq!(&private[5000..5010], b"SHAREDxxxx");
    munmap(private);
    drop(f);

    let mut expected = original.clone();
    expected[5000..5010].copy_from_slice(b"SHAREDxxxx");
    assert_eq!(
        fs::read(&path).unwrap(),
        expected,
        "shared write must persist, private must not"
    );
    m.unmount();
    let m2 = v.mount("mnt2", &[]);
    assert_eq!(fs::read(m2.p("mapped.bin")).unwrap(), expected);
}

fn concurrent_writer_processes_disjoint_and_overlapping_ranges(v: Setup) {
    let m = v.mount("mnt", &[]);
    let target = m.p("shared.bin");
    let block = 10_000usize; // deliberately not a multiple of the chunk size
    let writers = 6;
    fs::write(&target, vec![0u8; block * writers]).unwrap();
    for w in 0..writers {
        fs::write(
            v.dir.path().join(format!("pattern{w}")),
            vec![b'a' + w as u8; block],
        )
        .unwrap();
    }
    // Disjoint: each process writes its own block, many times, all at once.
    let script = (0..writers)
        .map(|w| format!("(for i in 1 2 3 4 5; do dd if=pattern{w} of={} bs={block} seek={w} count=1 conv=notrunc status=none; done) &", target.display()))
        .collect::<Vec<_>>()
        .join("\n");
    sh(v.dir.path(), &format!("{script}\nwait"));
    let data = fs::read(&target).unwrap();
    for w in 0..writers {
        assert!(
            data[w * block..(w + 1) * block]
                .iter()
                .all(|&b| b == b'a' + w as u8),
            "block {w} torn"
        );
    }
    // Overlapping: every process writes the same range; the result must be exactly one
    // writer's block (whole 1-byte writes of dd are atomic per request), and every chunk
    // must still authenticate.
    let script = (0..writers)
        .map(|w| format!("dd if=pattern{w} of={} bs={block} seek=0 count=1 oflag=seek_bytes conv=notrunc status=none &", target.display()))
        .collect::<Vec<_>>()
        .join("\n");
    sh(v.dir.path(), &format!("{script}\nwait"));
    let data = fs::read(&target).unwrap();
    let first = data[0];
    assert!((b'a'..b'a' + writers as u8).contains(&first));
    assert!(
        data[..block].iter().all(|&b| b == first),
        "overlapping writes interleaved within one request"
    );
    assert_eq!(data.len(), block * writers);
}

fn posix_surface_through_the_mount(v: Setup) {
    let m = v.mount("mnt", &[]);
    // O_APPEND from two handles.
    let mut a = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.p("log"))
        .unwrap();
    let mut b = OpenOptions::new().append(true).open(m.p("log")).unwrap();
    a.write_all(b"one\n").unwrap();
    b.write_all(b"two\n").unwrap();
    a.write_all(b"three\n").unwrap();
    assert_eq!(fs::read_to_string(m.p("log")).unwrap(), "one\ntwo\nthree\n");
    // Truncate grow/shrink, pwrite past EOF (zero-filled), O_TRUNC.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("t"))
        .unwrap();
    f.write_all_at(b"end", 10_000).unwrap();
    let data = fs::read(m.p("t")).unwrap();
    assert_eq!(data.len(), 10_003);
    assert!(data[..10_000].iter().all(|&b| b == 0));
    f.set_len(5).unwrap();
    assert_eq!(fs::read(m.p("t")).unwrap(), vec![0; 5]);
    f.set_len(9000).unwrap();
    assert_eq!(fs::metadata(m.p("t")).unwrap().len(), 9000);
    drop(f);
    let mut t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.p("t"))
        .unwrap();
    assert_eq!(fs::metadata(m.p("t")).unwrap().len(), 0);
    t.write_all(b"fresh").unwrap();
    drop(t);
    assert_eq!(fs::read(m.p("t")).unwrap(), b"fresh");
    // Rename over an existing file and across directories; hard links; symlinks.
    fs::create_dir_all(m.p("d1/d2")).unwrap();
    fs::write(m.p("d1/x"), "x").unwrap();
    fs::write(m.p("d1/d2/y"), "y").unwrap();
    fs::rename(m.p("d1/x"), m.p("d1/d2/y")).unwrap();
    assert_eq!(fs::read_to_string(m.p("d1/d2/y")).unwrap(), "x");
    assert!(!m.p("d1/x").exists());
    fs::rename(m.p("d1"), m.p("renamed")).unwrap();
    assert_eq!(fs::read_to_string(m.p("renamed/d2/y")).unwrap(), "x");
    fs::hard_link(m.p("renamed/d2/y"), m.p("hard")).unwrap();
    fs::write(m.p("hard"), "through the link").unwrap();
    if v.store.hard_links_share_inode() {
        assert_eq!(
            fs::read_to_string(m.p("renamed/d2/y")).unwrap(),
            "through the link"
        );
    } else {
        // Each name is its own inode to the store's client, which caches its attributes:
        // the other name shows the new size once that cache lets go (sshfs: 1 s, or
        // dcache_timeout), never anything but a prefix of the content before then.
        assert_eq!(fs::read_to_string(m.p("hard")).unwrap(), "through the link");
        let mut seen = String::new();
        let fresh = wait_until(std::time::Duration::from_secs(30), || {
            seen = fs::read_to_string(m.p("renamed/d2/y")).unwrap();
            assert!("through the link".starts_with(&seen), "{seen:?}");
            seen == "through the link"
        });
        assert!(fresh, "the other name still shows {seen:?}");
    }
    let (one, other) = (
        fs::metadata(m.p("hard")).unwrap(),
        fs::metadata(m.p("renamed/d2/y")).unwrap(),
    );
    if v.store.hard_links_share_inode() {
        assert_eq!(one.nlink(), 2);
        assert_eq!(one.ino(), other.ino());
    } else {
        // What the store reports, said in docs/OPERATIONS.md: each name its own file.
        assert_eq!((one.nlink(), other.nlink()), (1, 1));
        assert_ne!(one.ino(), other.ino());
    }
    std::os::unix::fs::symlink("renamed/d2/y", m.p("sym")).unwrap();
    assert_eq!(
        fs::read_link(m.p("sym")).unwrap(),
        Path::new("renamed/d2/y")
    );
    assert_eq!(
        fs::symlink_metadata(m.p("sym")).unwrap().len(),
        "renamed/d2/y".len() as u64
    );
    assert_eq!(fs::read_to_string(m.p("sym")).unwrap(), "through the link");
    // chmod, utimens with nanoseconds.
    fs::set_permissions(m.p("hard"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(m.p("hard")).unwrap().mode() & 0o7777, 0o600);
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(m.p("hard"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let kept = if v.store.keeps_nanoseconds() {
        t
    } else {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000)
    };
    assert_eq!(fs::metadata(m.p("hard")).unwrap().modified().unwrap(), kept);
    if v.store.xattrs() {
        // xattrs.
        sh(
            &m.path,
            "setfattr -n user.color -v blue hard && getfattr --only-values -n user.color hard | grep -qx blue",
        );
        let listed = sh(&m.path, "getfattr -d hard");
        assert!(listed.contains("user.color=\"blue\""), "{listed}");
        // POSIX ACLs pass through to the backing store.
        sh(
            &m.path,
            "setfacl -m u:nobody:r hard && getfacl -p hard | grep -qx user:nobody:r--",
        );
    } else {
        // The store's own answer, passed on: not supported (and nothing half-set).
        let out = sh(
            &m.path,
            "setfattr -n user.color -v blue hard 2>&1 || true; \
             setfacl -m u:nobody:r hard 2>&1 || true; getfattr -d hard 2>&1 || true",
        );
        for refused in ["setfattr: hard: Operation not supported", "setfacl: hard"] {
            assert!(out.contains(refused), "{refused}: {out}");
        }
        assert!(!out.contains("user.color"), "{out}");
    }
    // statfs, unlink, rmdir, fsync.
    sh(&m.path, "df . >/dev/null && sync");
    File::open(m.p("hard")).unwrap().sync_all().unwrap();
    fs::remove_file(m.p("hard")).unwrap();
    fs::remove_file(m.p("renamed/d2/y")).unwrap();
    fs::remove_dir(m.p("renamed/d2")).unwrap();
    assert_eq!(fs::read_dir(m.p("renamed")).unwrap().count(), 0);
    // fallocate grows with zeros.
    sh(
        &m.path,
        "fallocate -l 20000 alloc && cmp -n 20000 alloc /dev/zero",
    );
    assert_eq!(fs::metadata(m.p("alloc")).unwrap().len(), 20000);
    // Seek+read across chunk boundaries.
    let mut f = File::open(m.p("log")).unwrap();
    f.seek(SeekFrom::Start(4)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "two\nthree\n");
}

fn read_only_mount_refuses_writes(v: Setup) {
    {
        let m = v.mount("rw", &[]);
        fs::write(m.p("f"), "data").unwrap();
    }
    let m = v.mount("ro", &["-o", "ro"]);
    assert_eq!(fs::read_to_string(m.p("f")).unwrap(), "data");
    let err = fs::write(m.p("g"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

/// A daemonized mount started with relative paths finds them where its caller meant, and
/// then works from `/`, so it never keeps the directory it was started from busy
/// (docs/OPERATIONS.md, "Mounting").
#[test]
fn the_daemon_resolves_relative_paths_and_then_works_from_the_root() {
    let v = TestVault::new(&[]);
    let started_in = v.dir.path();
    fs::create_dir(started_in.join("rel-mnt")).unwrap();
    let out = run(v.cmd().current_dir(started_in).args([
        "mount",
        "backing",
        "rel-mnt",
        "--key-file",
        "vault.key",
    ]));
    assert!(out.status.success(), "{}", stderr_text(&out));
    let m = Mount::adopt(started_in.join("rel-mnt"));
    fs::write(m.p("f"), b"relative").unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"relative");
    // The daemon: the process whose command line is this mount's.
    let daemon = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .find(|e| {
            fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.contains(&b"rel-mnt".as_slice()) && args.contains(&b"mount".as_slice())
            }) && fs::read_link(e.path().join("cwd")).is_ok()
        })
        .expect("the mount daemon is running");
    assert_eq!(
        fs::read_link(daemon.path().join("cwd")).unwrap(),
        Path::new("/"),
        "the daemon keeps its caller's directory busy"
    );
}
