//! Mount paths up to `PATH_MAX`, through a real mount with encrypted names and default
//! options. What holds true:
//!
//! - Every path operation works on an entry whose mount-relative path is exactly 4095 bytes
//!   (`PATH_MAX` is 4096 with the NUL), at the end of a chain of directories, with the
//!   expected result (content, mode, owner, size, times, link target, xattr value), even
//!   though the backing path of that entry is far longer than `PATH_MAX`: each directory
//!   name of the chain is 149 bytes, the longest name still stored under its own encrypted
//!   name (149 + 16 bytes of SIV = 220 characters of base64url), so every component grows by
//!   71 bytes on the backing store.
//! - A relative path of 4096 bytes is `ENAMETOOLONG`; so is a single name of 256 bytes, while
//!   255 bytes work.
//! - After every operation, failed or not, the backing store holds exactly the entries it
//!   should: nothing half-done (no stray sidecar, no temporary file).
//!
//! Absolute paths of that length would exceed `PATH_MAX`, so every operation goes through
//! the `*at` syscalls relative to a descriptor of the mount root (or, for calls that only
//! take a path, through `/proc/self/fd/N`). Nothing calls `chdir`: the tests are threads of
//! one process.
//!
//! Each operation runs in two layouts: entries with long names (195 bytes: stored under a
//! hash with a sidecar) and with short ones (45 bytes: stored under their encrypted name).

mod support;

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use support::{Mount, TestVault, pattern};

/// The longest path a syscall accepts, without its NUL.
const LONGEST_PATH: usize = libc::PATH_MAX as usize - 1;
/// The longest name of a chain directory that is stored under its own encrypted name.
const CHAIN_NAME: usize = 149;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// 26 chain directories (3899 bytes), entries of 195 bytes: long names with sidecars.
    LongNames,
    /// 27 chain directories (4049 bytes), entries of 45 bytes: plain encrypted names.
    ShortNames,
}

impl Layout {
    fn depth(self) -> usize {
        match self {
            Layout::LongNames => 26,
            Layout::ShortNames => 27,
        }
    }

    /// Backing sidecars per entry at the end of the chain.
    fn sidecars(self) -> usize {
        match self {
            Layout::LongNames => 1,
            Layout::ShortNames => 0,
        }
    }
}

// ---- syscalls -----------------------------------------------------------------------------

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// The errno of a failed call, by name, so that failure messages say `ENAMETOOLONG`.
fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EINVAL => "EINVAL",
        libc::ELOOP => "ELOOP",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ERANGE => "ERANGE",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::EBADF => "EBADF",
        libc::ENOSPC => "ENOSPC",
        _ => "",
    };
    format!("{name} ({})", std::io::Error::from_raw_os_error(e))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// `ret` of a call that must succeed; panics naming `op` and the errno otherwise.
#[track_caller]
fn sys(op: &str, ret: libc::c_int) -> libc::c_int {
    if ret < 0 {
        panic!("{op}: failed with {}", errno_name(last_errno()));
    }
    ret
}

/// A call that must fail with `want`; panics naming `op` if it succeeds or fails otherwise.
#[track_caller]
fn fails(op: &str, ret: libc::c_int, want: i32) {
    assert!(ret < 0, "{op}: succeeded, expected {}", errno_name(want));
    let got = last_errno();
    assert_eq!(
        got,
        want,
        "{op}: failed with {}, expected {}",
        errno_name(got),
        errno_name(want)
    );
}

fn openat(op: &str, dir: RawFd, path: &CString, flags: i32, mode: u32) -> OwnedFd {
    // SAFETY: plain syscall on a NUL-terminated path; the fd is owned from here on.
    let fd = sys(op, unsafe {
        libc::openat(dir, path.as_ptr(), flags | libc::O_CLOEXEC, mode)
    });
    // SAFETY: `fd` was just returned by openat and is not owned elsewhere.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn lstat_at(dir: RawFd, path: &CString) -> Result<libc::stat, i32> {
    // SAFETY: all-zero is a valid `stat`, which fstatat overwrites.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer, `path` NUL-terminated.
    let ret = unsafe { libc::fstatat(dir, path.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if ret < 0 { Err(last_errno()) } else { Ok(st) }
}

#[track_caller]
fn lstat_ok(op: &str, dir: RawFd, path: &CString) -> libc::stat {
    lstat_at(dir, path).unwrap_or_else(|e| panic!("{op}: fstatat failed with {}", errno_name(e)))
}

#[track_caller]
fn assert_gone(op: &str, dir: RawFd, path: &CString) {
    match lstat_at(dir, path) {
        Err(libc::ENOENT) => {}
        Err(e) => panic!(
            "{op}: fstatat after it failed with {}, not ENOENT",
            errno_name(e)
        ),
        Ok(_) => panic!("{op}: the old name still exists"),
    }
}

fn file_type(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// Create `path` (`O_EXCL`, mode 0600) holding `data`.
#[track_caller]
fn create_file(op: &str, dir: RawFd, path: &CString, data: &[u8]) {
    let fd = openat(
        &format!("{op}: openat(O_CREAT)"),
        dir,
        path,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    );
    File::from(fd)
        .write_all(data)
        .unwrap_or_else(|e| panic!("{op}: write: {e}"));
}

#[track_caller]
/// The file at `path` holds exactly `want`, and its size says so.
fn assert_holds(op: &str, dir: RawFd, path: &CString, want: &[u8]) {
    assert!(
        read_file(op, dir, path) == want,
        "{op}: content is not the {} bytes expected",
        want.len()
    );
    assert_eq!(
        lstat_ok(op, dir, path).st_size as usize,
        want.len(),
        "{op}: size"
    );
}

fn read_file(op: &str, dir: RawFd, path: &CString) -> Vec<u8> {
    let fd = openat(
        &format!("{op}: openat(O_RDONLY)"),
        dir,
        path,
        libc::O_RDONLY,
        0,
    );
    let mut data = Vec::new();
    File::from(fd)
        .read_to_end(&mut data)
        .unwrap_or_else(|e| panic!("{op}: read: {e}"));
    data
}

/// The names in the directory open as `fd`, read through `/proc/self/fd` (a short path).
fn list_fd(op: &str, fd: RawFd) -> BTreeSet<OsString> {
    std::fs::read_dir(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|e| panic!("{op}: opendir: {e}"))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{op}: readdir: {e}"))
                .file_name()
        })
        .collect()
}

// ---- the backing store --------------------------------------------------------------------

/// What the backing store holds, by kind, envfs.conf aside.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Census {
    dirs: usize,
    files: usize,
    sidecars: usize,
    temps: usize,
    symlinks: usize,
    fifos: usize,
    devices: usize,
    other: usize,
}

/// Count the backing store below the directory open as `dir`, by descriptor (its paths are
/// longer than `PATH_MAX`).
fn census_below(dir: &OwnedFd, c: &mut Census, top: bool) {
    for entry in list_fd("backing census", dir.as_raw_fd()) {
        let name = entry.to_str().expect("backing names are ASCII").to_string();
        if top && name == "envfs.conf" {
            continue;
        }
        let st = lstat_ok("backing census", dir.as_raw_fd(), &cstr(&name));
        match file_type(&st) {
            libc::S_IFDIR => {
                c.dirs += 1;
                let sub = openat(
                    "backing census: open directory",
                    dir.as_raw_fd(),
                    &cstr(&name),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                );
                census_below(&sub, c, false);
            }
            libc::S_IFREG if name.starts_with(".envfs-tmp-") => c.temps += 1,
            libc::S_IFREG if name.ends_with(".envfs-ln.name") => c.sidecars += 1,
            libc::S_IFREG => c.files += 1,
            libc::S_IFLNK => c.symlinks += 1,
            libc::S_IFIFO => c.fifos += 1,
            libc::S_IFCHR | libc::S_IFBLK => c.devices += 1,
            _ => c.other += 1,
        }
    }
}

fn census(backing: &Path) -> Census {
    let root = openat(
        "backing census: open root",
        libc::AT_FDCWD,
        &cstr(backing.to_str().unwrap()),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    );
    let mut c = Census::default();
    census_below(&root, &mut c, true);
    c
}

// ---- the deep chain -----------------------------------------------------------------------

/// A mount with a chain of `layout.depth()` directories, and the mount root open.
/// Fields drop in order: the descriptor before the unmount, the unmount before the vault.
struct Deep {
    root: OwnedFd,
    layout: Layout,
    /// The chain, relative to the mount root (no trailing slash).
    chain: String,
    _mount: Mount,
    vault: TestVault,
}

impl Deep {
    fn new(layout: Layout) -> Deep {
        let vault = TestVault::new(&[]);
        let mount = vault.mount("mnt", &[]);
        let root = openat(
            "setup: open the mount root",
            libc::AT_FDCWD,
            &cstr(mount.path.to_str().unwrap()),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        );
        let mut chain = String::new();
        for i in 0..layout.depth() {
            if !chain.is_empty() {
                chain.push('/');
            }
            chain.push_str(&padded(&format!("d{i:02}-"), CHAIN_NAME));
            // SAFETY: plain syscall on a NUL-terminated path.
            let ret = unsafe { libc::mkdirat(root.as_raw_fd(), cstr(&chain).as_ptr(), 0o700) };
            sys(
                &format!(
                    "setup: mkdirat of chain directory {} of {} (mount path {} bytes)",
                    i + 1,
                    layout.depth(),
                    chain.len()
                ),
                ret,
            );
        }
        let deep = Deep {
            root,
            layout,
            chain,
            _mount: mount,
            vault,
        };
        assert_eq!(
            deep.census(),
            deep.expected(Census::default()),
            "setup: the chain on the backing store (one plain encrypted name per directory)"
        );
        deep
    }

    fn fd(&self) -> RawFd {
        self.root.as_raw_fd()
    }

    /// The length of an entry name at the end of the chain that makes its path 4095 bytes.
    fn name_len(&self) -> usize {
        LONGEST_PATH - self.chain.len() - 1
    }

    /// The name of entry `tag` at the end of the chain (padded to `name_len`).
    fn name(&self, tag: &str) -> String {
        padded(tag, self.name_len())
    }

    /// The 4095-byte mount-relative path of entry `tag`.
    fn path(&self, tag: &str) -> CString {
        let p = format!("{}/{}", self.chain, self.name(tag));
        assert_eq!(p.len(), LONGEST_PATH);
        cstr(&p)
    }

    fn census(&self) -> Census {
        census(&self.vault.backing)
    }

    /// The census of the chain plus `entries` at its end: each of those has a sidecar in
    /// the long-name layout.
    fn expected(&self, entries: Census) -> Census {
        let names = entries.dirs
            + entries.files
            + entries.symlinks
            + entries.fifos
            + entries.devices
            + entries.other;
        Census {
            dirs: self.layout.depth() + entries.dirs,
            sidecars: names * self.layout.sidecars(),
            ..entries
        }
    }

    /// The backing store must hold the chain plus exactly `entries`.
    #[track_caller]
    fn assert_backing(&self, op: &str, entries: Census) {
        assert_eq!(
            self.census(),
            self.expected(entries),
            "{op}: the backing store does not hold exactly the expected entries"
        );
    }

    /// The deepest directory of the chain, open.
    fn open_chain(&self, op: &str) -> OwnedFd {
        openat(
            &format!("{op}: open the deepest directory"),
            self.fd(),
            &cstr(&self.chain),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
    }
}

/// `tag` padded with `x` to exactly `len` bytes.
fn padded(tag: &str, len: usize) -> String {
    assert!(tag.len() <= len, "{tag:?} to {len}");
    format!("{tag}{}", "x".repeat(len - tag.len()))
}

fn files(n: usize) -> Census {
    Census {
        files: n,
        ..Census::default()
    }
}

// ---- every operation at 4095 bytes --------------------------------------------------------

/// Each operation below runs once per layout, each time on its own vault and mount.
macro_rules! in_both_layouts {
    ($($op:ident),* $(,)?) => {$(
        mod $op {
            #[test]
            fn long_names() {
                super::$op(super::Layout::LongNames)
            }
            #[test]
            fn short_names() {
                super::$op(super::Layout::ShortNames)
            }
        }
    )*};
}

in_both_layouts!(
    mkdirat_and_unlinkat_removedir,
    openat_create_write_read,
    renameat2_plain,
    renameat2_exchange,
    linkat_hard_link,
    symlinkat_and_readlinkat,
    unlinkat_file,
    fchmodat_mode,
    fchownat_owner,
    utimensat_times,
    mknodat_fifo,
    mknodat_char_device,
    ftruncate_through_openat,
    truncate_by_proc_path,
    xattrs_through_o_path,
    readdir_of_the_deepest_directory,
    path_of_4096_bytes_is_enametoolong,
);

fn mkdirat_and_unlinkat_removedir(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("dir");
    // SAFETY (here and below): plain syscalls on NUL-terminated paths.
    sys("mkdirat", unsafe {
        libc::mkdirat(d.fd(), p.as_ptr(), 0o700)
    });
    let st = lstat_ok("mkdirat", d.fd(), &p);
    assert_eq!(st.st_mode, libc::S_IFDIR | 0o700, "mkdirat: mode");
    let dirs = Census {
        dirs: 1,
        ..Census::default()
    };
    d.assert_backing("mkdirat", dirs);

    sys("unlinkat(AT_REMOVEDIR)", unsafe {
        libc::unlinkat(d.fd(), p.as_ptr(), libc::AT_REMOVEDIR)
    });
    assert_gone("unlinkat(AT_REMOVEDIR)", d.fd(), &p);
    d.assert_backing("unlinkat(AT_REMOVEDIR)", Census::default());
}

fn openat_create_write_read(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    let data = pattern(1, 10_000);
    create_file("openat(O_CREAT) + write", d.fd(), &p, &data);
    assert!(
        read_file("openat(O_RDONLY) + read", d.fd(), &p) == data,
        "openat + read: content differs from what was written"
    );
    let st = lstat_ok("openat(O_CREAT)", d.fd(), &p);
    assert_eq!(st.st_mode, libc::S_IFREG | 0o600, "openat(O_CREAT): mode");
    assert_eq!(st.st_size, data.len() as i64, "openat(O_CREAT): size");
    d.assert_backing("openat(O_CREAT)", files(1));
}

fn renameat2_plain(layout: Layout) {
    let d = Deep::new(layout);
    let (a, b, c) = (d.path("a"), d.path("b"), d.path("c"));
    create_file("renameat2: setup", d.fd(), &a, &pattern(2, 5000));
    create_file("renameat2: setup", d.fd(), &b, &pattern(3, 3000));

    // To a new name, then over an existing one.
    sys("renameat2(a -> new c)", unsafe {
        libc::renameat2(d.fd(), a.as_ptr(), d.fd(), c.as_ptr(), 0)
    });
    assert_gone("renameat2(a -> new c)", d.fd(), &a);
    sys("renameat2(c -> over b)", unsafe {
        libc::renameat2(d.fd(), c.as_ptr(), d.fd(), b.as_ptr(), 0)
    });
    assert_gone("renameat2(c -> over b)", d.fd(), &c);
    assert!(
        read_file("renameat2(c -> over b)", d.fd(), &b) == pattern(2, 5000),
        "renameat2(c -> over b): b does not hold a's content"
    );
    d.assert_backing("renameat2", files(1));
}

fn renameat2_exchange(layout: Layout) {
    let d = Deep::new(layout);
    let (a, b) = (d.path("a"), d.path("b"));
    create_file(
        "renameat2(RENAME_EXCHANGE): setup",
        d.fd(),
        &a,
        &pattern(4, 5000),
    );
    create_file(
        "renameat2(RENAME_EXCHANGE): setup",
        d.fd(),
        &b,
        &pattern(5, 7000),
    );
    sys("renameat2(RENAME_EXCHANGE)", unsafe {
        libc::renameat2(
            d.fd(),
            a.as_ptr(),
            d.fd(),
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    });
    assert!(
        read_file("renameat2(RENAME_EXCHANGE)", d.fd(), &a) == pattern(5, 7000),
        "renameat2(RENAME_EXCHANGE): a does not hold b's old content"
    );
    assert!(
        read_file("renameat2(RENAME_EXCHANGE)", d.fd(), &b) == pattern(4, 5000),
        "renameat2(RENAME_EXCHANGE): b does not hold a's old content"
    );
    d.assert_backing("renameat2(RENAME_EXCHANGE)", files(2));
}

fn linkat_hard_link(layout: Layout) {
    let d = Deep::new(layout);
    let (a, b) = (d.path("a"), d.path("b"));
    create_file("linkat: setup", d.fd(), &a, &pattern(6, 5000));
    sys("linkat", unsafe {
        libc::linkat(d.fd(), a.as_ptr(), d.fd(), b.as_ptr(), 0)
    });
    assert!(
        read_file("linkat", d.fd(), &b) == pattern(6, 5000),
        "linkat: the new name does not read the file's content"
    );
    let (sa, sb) = (
        lstat_ok("linkat", d.fd(), &a),
        lstat_ok("linkat", d.fd(), &b),
    );
    assert_eq!((sa.st_nlink, sb.st_nlink), (2, 2), "linkat: link counts");
    assert_eq!(sa.st_ino, sb.st_ino, "linkat: both names are one inode");
    d.assert_backing("linkat", files(2));
}

fn symlinkat_and_readlinkat(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("link");
    let target = format!("../{}/target", "t".repeat(200));
    sys("symlinkat", unsafe {
        libc::symlinkat(cstr(&target).as_ptr(), d.fd(), p.as_ptr())
    });
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::readlinkat(d.fd(), p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    sys("readlinkat", n as i32);
    assert_eq!(
        &buf[..n as usize],
        target.as_bytes(),
        "readlinkat: the target read back"
    );
    let st = lstat_ok("symlinkat", d.fd(), &p);
    assert_eq!(file_type(&st), libc::S_IFLNK, "symlinkat: type");
    assert_eq!(st.st_size, target.len() as i64, "symlinkat: size");
    let symlinks = Census {
        symlinks: 1,
        ..Census::default()
    };
    d.assert_backing("symlinkat", symlinks);
}

fn unlinkat_file(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    create_file("unlinkat: setup", d.fd(), &p, &pattern(7, 100));
    sys("unlinkat", unsafe { libc::unlinkat(d.fd(), p.as_ptr(), 0) });
    assert_gone("unlinkat", d.fd(), &p);
    d.assert_backing("unlinkat", Census::default());
}

fn fchmodat_mode(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    create_file("fchmodat: setup", d.fd(), &p, b"mode");
    sys("fchmodat", unsafe {
        libc::fchmodat(d.fd(), p.as_ptr(), 0o640, 0)
    });
    let st = lstat_ok("fchmodat", d.fd(), &p);
    assert_eq!(st.st_mode, libc::S_IFREG | 0o640, "fchmodat: mode");
    d.assert_backing("fchmodat", files(1));
}

fn fchownat_owner(layout: Layout) {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("fchownat: needs root, skipped");
        return;
    }
    let d = Deep::new(layout);
    let p = d.path("file");
    create_file("fchownat: setup", d.fd(), &p, b"owner");
    sys("fchownat", unsafe {
        libc::fchownat(d.fd(), p.as_ptr(), 4321, 8765, 0)
    });
    let st = lstat_ok("fchownat", d.fd(), &p);
    assert_eq!((st.st_uid, st.st_gid), (4321, 8765), "fchownat: owner");
    d.assert_backing("fchownat", files(1));
}

fn utimensat_times(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    create_file("utimensat: setup", d.fd(), &p, b"times");
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_100_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    sys("utimensat", unsafe {
        libc::utimensat(d.fd(), p.as_ptr(), times.as_ptr(), 0)
    });
    let st = lstat_ok("utimensat", d.fd(), &p);
    assert_eq!(
        (st.st_atime, st.st_atime_nsec),
        (1_000_000_000, 123_456_789),
        "utimensat: atime"
    );
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (1_100_000_000, 987_654_321),
        "utimensat: mtime"
    );
    d.assert_backing("utimensat", files(1));
}

fn mknodat_fifo(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("fifo");
    sys("mknodat(S_IFIFO)", unsafe {
        libc::mknodat(d.fd(), p.as_ptr(), libc::S_IFIFO | 0o600, 0)
    });
    let st = lstat_ok("mknodat(S_IFIFO)", d.fd(), &p);
    assert_eq!(st.st_mode, libc::S_IFIFO | 0o600, "mknodat(S_IFIFO): mode");
    let fifos = Census {
        fifos: 1,
        ..Census::default()
    };
    d.assert_backing("mknodat(S_IFIFO)", fifos);
}

fn mknodat_char_device(layout: Layout) {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("mknodat(S_IFCHR): needs root, skipped");
        return;
    }
    let d = Deep::new(layout);
    let p = d.path("null");
    let dev = libc::makedev(1, 3);
    sys("mknodat(S_IFCHR)", unsafe {
        libc::mknodat(d.fd(), p.as_ptr(), libc::S_IFCHR | 0o600, dev)
    });
    let st = lstat_ok("mknodat(S_IFCHR)", d.fd(), &p);
    assert_eq!(st.st_mode, libc::S_IFCHR | 0o600, "mknodat(S_IFCHR): mode");
    assert_eq!(st.st_rdev, dev, "mknodat(S_IFCHR): device number");
    let devices = Census {
        devices: 1,
        ..Census::default()
    };
    d.assert_backing("mknodat(S_IFCHR)", devices);
}

fn ftruncate_through_openat(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    let data = pattern(8, 10_000);
    create_file("ftruncate: setup", d.fd(), &p, &data);
    let fd = openat("ftruncate: openat(O_RDWR)", d.fd(), &p, libc::O_RDWR, 0);
    sys("ftruncate(3000)", unsafe {
        libc::ftruncate(fd.as_raw_fd(), 3000)
    });
    assert!(
        read_file("ftruncate(3000)", d.fd(), &p) == data[..3000],
        "ftruncate(3000): content is not the first 3000 bytes"
    );
    sys("ftruncate(6000)", unsafe {
        libc::ftruncate(fd.as_raw_fd(), 6000)
    });
    let mut want = data[..3000].to_vec();
    want.resize(6000, 0);
    assert_holds(
        "ftruncate(6000): 3000 bytes kept, then zeros",
        d.fd(),
        &p,
        &want,
    );
    d.assert_backing("ftruncate", files(1));
}

fn truncate_by_proc_path(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    let data = pattern(9, 10_000);
    create_file("truncate: setup", d.fd(), &p, &data);
    // `/proc/self/fd/<root>/<4095 bytes>` is over PATH_MAX, so that variant cannot run
    // here; `truncate(2)` goes through a descriptor of the deepest directory instead, so
    // the kernel still resolves the entry by name (a path, not a descriptor).
    let via_root = format!("/proc/self/fd/{}/{}/{}", d.fd(), d.chain, d.name("file"));
    assert!(via_root.len() > LONGEST_PATH);
    let chain = d.open_chain("truncate");
    let via_chain = cstr(&format!(
        "/proc/self/fd/{}/{}",
        chain.as_raw_fd(),
        d.name("file")
    ));
    sys("truncate(2)", unsafe {
        libc::truncate(via_chain.as_ptr(), 1234)
    });
    assert_holds("truncate(2)", d.fd(), &p, &data[..1234]);
    d.assert_backing("truncate(2)", files(1));
}

fn xattrs_through_o_path(layout: Layout) {
    let d = Deep::new(layout);
    let p = d.path("file");
    create_file("xattr: setup", d.fd(), &p, b"xattrs");
    let fd = openat(
        "xattr: openat(O_PATH)",
        d.fd(),
        &p,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    );
    let proc_path = cstr(&format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let name = cstr("user.envfs-path-max");
    let value = pattern(10, 300);

    sys("setxattr", unsafe {
        libc::setxattr(
            proc_path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    });
    let mut buf = vec![0u8; 4096];
    let n = unsafe {
        libc::getxattr(
            proc_path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    sys("getxattr", n as i32);
    assert!(
        buf[..n as usize] == value,
        "getxattr: value differs from what was set"
    );
    assert!(
        list_xattrs(&proc_path).contains("user.envfs-path-max"),
        "listxattr: the attribute is not listed"
    );

    sys("removexattr", unsafe {
        libc::removexattr(proc_path.as_ptr(), name.as_ptr())
    });
    let n = unsafe {
        libc::getxattr(
            proc_path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    fails("getxattr after removexattr", n as i32, libc::ENODATA);
    assert!(
        !list_xattrs(&proc_path).contains("user.envfs-path-max"),
        "listxattr after removexattr: still listed"
    );
    d.assert_backing("xattrs", files(1));
}

fn list_xattrs(path: &CString) -> BTreeSet<String> {
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    sys("listxattr", n as i32);
    buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn readdir_of_the_deepest_directory(layout: Layout) {
    let d = Deep::new(layout);
    create_file("readdir: setup", d.fd(), &d.path("a"), b"a");
    create_file("readdir: setup", d.fd(), &d.path("b"), b"b");
    sys("readdir: setup mkdirat", unsafe {
        libc::mkdirat(d.fd(), d.path("c").as_ptr(), 0o700)
    });
    let chain = d.open_chain("readdir");
    let want: BTreeSet<OsString> = ["a", "b", "c"]
        .iter()
        .map(|t| OsString::from_vec(d.name(t).into_bytes()))
        .collect();
    assert_eq!(
        list_fd("readdir", chain.as_raw_fd()),
        want,
        "readdir: names"
    );
    let entries = Census {
        dirs: 1,
        files: 2,
        ..Census::default()
    };
    d.assert_backing("readdir", entries);
}

fn path_of_4096_bytes_is_enametoolong(layout: Layout) {
    let d = Deep::new(layout);
    let a = d.path("a");
    create_file("4096-byte path: setup", d.fd(), &a, b"a");
    // One byte more than the longest path: a name that is itself well under 255 bytes.
    let long = cstr(&format!("{}/{}", d.chain, padded("z", d.name_len() + 1)));
    assert_eq!(long.as_bytes().len(), LONGEST_PATH + 1);
    let too_long = libc::ENAMETOOLONG;
    unsafe {
        let fd = libc::openat(d.fd(), long.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
        fails("openat(O_CREAT) of 4096 bytes", fd, too_long);
        fails(
            "mkdirat of 4096 bytes",
            libc::mkdirat(d.fd(), long.as_ptr(), 0o700),
            too_long,
        );
        fails(
            "symlinkat of 4096 bytes",
            libc::symlinkat(c"t".as_ptr(), d.fd(), long.as_ptr()),
            too_long,
        );
        fails(
            "mknodat of 4096 bytes",
            libc::mknodat(d.fd(), long.as_ptr(), libc::S_IFIFO | 0o600, 0),
            too_long,
        );
        fails(
            "renameat2 to 4096 bytes",
            libc::renameat2(d.fd(), a.as_ptr(), d.fd(), long.as_ptr(), 0),
            too_long,
        );
        fails(
            "linkat to 4096 bytes",
            libc::linkat(d.fd(), a.as_ptr(), d.fd(), long.as_ptr(), 0),
            too_long,
        );
    }
    assert_eq!(
        lstat_at(d.fd(), &long).err(),
        Some(too_long),
        "fstatat of 4096 bytes"
    );
    d.assert_backing("4096-byte paths", files(1));
}

// ---- name length ----------------------------------------------------------------------------

#[test]
fn a_name_of_256_bytes_is_enametoolong_and_255_works() {
    let vault = TestVault::new(&[]);
    let mount = vault.mount("mnt", &[]);
    let root = openat(
        "open the mount root",
        libc::AT_FDCWD,
        &cstr(mount.path.to_str().unwrap()),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    );
    let fd = root.as_raw_fd();
    let before = census(&vault.backing);
    let too_long = libc::ENAMETOOLONG;
    for dir in ["", "sub/"] {
        if !dir.is_empty() {
            sys("mkdirat sub", unsafe {
                libc::mkdirat(fd, c"sub".as_ptr(), 0o700)
            });
        }
        let n256 = cstr(&format!("{dir}{}", padded("n256-", 256)));
        let existing = cstr(&format!("{dir}{}", padded("n255-file-", 255)));
        create_file("openat(O_CREAT) of a 255-byte name", fd, &existing, b"255");
        assert_eq!(
            read_file("read of a 255-byte name", fd, &existing),
            b"255",
            "read of a 255-byte name"
        );
        unsafe {
            let ret = libc::openat(fd, n256.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
            fails(
                &format!("openat(O_CREAT) of 256 bytes in {dir:?}"),
                ret,
                too_long,
            );
            fails(
                &format!("mkdirat of 256 bytes in {dir:?}"),
                libc::mkdirat(fd, n256.as_ptr(), 0o700),
                too_long,
            );
            fails(
                &format!("symlinkat of 256 bytes in {dir:?}"),
                libc::symlinkat(c"t".as_ptr(), fd, n256.as_ptr()),
                too_long,
            );
            fails(
                &format!("mknodat of 256 bytes in {dir:?}"),
                libc::mknodat(fd, n256.as_ptr(), libc::S_IFIFO | 0o600, 0),
                too_long,
            );
            fails(
                &format!("renameat2 to 256 bytes in {dir:?}"),
                libc::renameat2(fd, existing.as_ptr(), fd, n256.as_ptr(), 0),
                too_long,
            );
            fails(
                &format!("linkat to 256 bytes in {dir:?}"),
                libc::linkat(fd, existing.as_ptr(), fd, n256.as_ptr(), 0),
                too_long,
            );
        }
        assert_eq!(
            lstat_at(fd, &n256).err(),
            Some(too_long),
            "fstatat of 256 bytes in {dir:?}"
        );

        // 255 bytes work for every kind of entry.
        let n255 = |tag: &str| cstr(&format!("{dir}{}", padded(tag, 255)));
        sys("mkdirat of 255 bytes", unsafe {
            libc::mkdirat(fd, n255("n255-dir-").as_ptr(), 0o700)
        });
        sys("symlinkat of 255 bytes", unsafe {
            libc::symlinkat(c"t".as_ptr(), fd, n255("n255-link-").as_ptr())
        });
        sys("renameat2 to 255 bytes", unsafe {
            libc::renameat2(fd, existing.as_ptr(), fd, n255("n255-moved-").as_ptr(), 0)
        });
        assert_eq!(
            read_file("renameat2 to 255 bytes", fd, &n255("n255-moved-")),
            b"255",
            "renameat2 to 255 bytes: content"
        );
    }
    // Per directory: a file, a directory and a symlink, each a long name with a sidecar.
    let want = Census {
        dirs: before.dirs + 3,
        files: before.files + 2,
        symlinks: before.symlinks + 2,
        sidecars: before.sidecars + 6,
        ..before
    };
    assert_eq!(
        census(&vault.backing),
        want,
        "the backing store after the refused 256-byte names"
    );
}
