//! The backing store, reached only through directory file descriptors.
//!
//! The backing directory is the attacker's (docs/SECURITY.md): while envfs works in it,
//! whoever can write the backing store may replace any directory with a symlink to the
//! mounting host's own files, and a path-based syscall would follow it. So nothing here
//! takes a path string to the kernel. A `BackingRoot` holds an `O_PATH` descriptor of the
//! backing directory; a relative backing path is resolved beneath it with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`) where the kernel has it,
//! and one `O_NOFOLLOW | O_DIRECTORY` component at a time where it does not. Every
//! operation is then an `*at` call on the final name relative to its parent's descriptor,
//! never following a symlink in the final component either. Because no whole path is ever
//! handed to the kernel, a backing path may be longer than `PATH_MAX`.
//!
//! Names here are backing names (what the backing directory holds), never mount paths.
//! The fs core, fsck, rewrap and `envfs info` reach the backing store only through this
//! module (scripts/check-layering.sh holds that true); `sys` has the calls on descriptors
//! already open.

pub mod probe;
pub mod sys;
pub mod watch;

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A single backing name: not empty, not `.` or `..`, no `/` or NUL.
fn name_arg(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    cstr(name)
}

/// Whether the kernel has openat2 (unknown until first tried).
const UNKNOWN: u8 = 0;
const HAS_OPENAT2: u8 = 1;
const NO_OPENAT2: u8 = 2;

/// The backing directory, held open.
pub struct BackingRoot {
    /// Replaced by `reopen` when the store it was opened on went away (a NAS share
    /// remounted); everything resolved from the old one keeps failing.
    root: std::sync::RwLock<Arc<OwnedFd>>,
    /// For messages only.
    path: PathBuf,
    openat2: AtomicU8,
    cache: DirCache,
}

/// How many directory descriptors `dir_cached` keeps, at most.
pub const DIR_CACHE_CAPACITY: usize = 256;

/// How long `dir_cached` reuses a descriptor before resolving its path again, unless
/// `set_dir_cache_ttl` says otherwise: the kernel's default entry timeout. The mount sets
/// its own `entry_timeout` (docs/SEMANTICS.md §5), so a directory that the backing store
/// moves behind the mount's back (a sync client, another host) is found where it now is no
/// later than the kernel itself notices.
pub const DIR_CACHE_TTL: Duration = Duration::from_secs(1);

/// Directory descriptors by backing path, so that the operations of one directory (a
/// listing's lookups, `cp -r`, `rm -rf`) resolve its path once rather than once each.
/// Bounded and short-lived (above); `forget` drops a path and everything below it, and the
/// epoch keeps a descriptor resolved before a `forget` from being cached after it.
struct DirCache {
    dirs: Mutex<HashMap<PathBuf, (Arc<Dir>, Instant)>>,
    epoch: AtomicU64,
    /// The TTL in nanoseconds; 0 caches nothing.
    ttl_nanos: AtomicU64,
}

impl Default for DirCache {
    fn default() -> DirCache {
        DirCache {
            dirs: Mutex::default(),
            epoch: AtomicU64::new(0),
            ttl_nanos: AtomicU64::new(DIR_CACHE_TTL.as_nanos() as u64),
        }
    }
}

/// One open backing directory (an `O_PATH` descriptor) and its path below the root, for
/// messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    rel: PathBuf,
}

impl BackingRoot {
    /// Open the backing directory `path` (which may itself be reached through symlinks:
    /// the operator chose it; only what lies beneath it is the attacker's).
    pub fn open(path: &Path) -> io::Result<BackingRoot> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: c is a valid NUL-terminated string.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(BackingRoot {
            // SAFETY: open returned a fresh descriptor that we now own.
            root: std::sync::RwLock::new(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })),
            path: path.to_path_buf(),
            openat2: AtomicU8::new(UNKNOWN),
            cache: DirCache::default(),
        })
    }

    /// `dir(rel)`, reusing a descriptor resolved less than `DIR_CACHE_TTL` ago. For the
    /// mount, which must `forget` every directory it renames or removes. A cached
    /// descriptor still refers to a directory that was at `rel`: whatever the backing store
    /// did since, it leads nowhere a symlink points.
    pub fn dir_cached(&self, rel: &Path) -> io::Result<Arc<Dir>> {
        let ttl = Duration::from_nanos(self.cache.ttl_nanos.load(Ordering::Relaxed));
        if ttl.is_zero() {
            return Ok(Arc::new(self.dir(rel)?));
        }
        let now = Instant::now();
        if let Some((dir, at)) = self.cache.dirs.lock().unwrap().get(rel)
            && now.duration_since(*at) < ttl
        {
            return Ok(dir.clone());
        }
        let epoch = self.cache.epoch.load(Ordering::Acquire);
        let dir = Arc::new(self.dir(rel)?);
        let mut dirs = self.cache.dirs.lock().unwrap();
        if self.cache.epoch.load(Ordering::Acquire) == epoch {
            if dirs.len() >= DIR_CACHE_CAPACITY {
                dirs.retain(|_, (_, at)| now.duration_since(*at) < ttl);
                if dirs.len() >= DIR_CACHE_CAPACITY {
                    dirs.clear();
                }
            }
            dirs.insert(dir.rel.clone(), (dir.clone(), now));
        }
        Ok(dir)
    }

    /// How long `dir_cached` may reuse a descriptor (zero: never).
    pub fn set_dir_cache_ttl(&self, ttl: Duration) {
        let nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        self.cache.ttl_nanos.store(nanos, Ordering::Relaxed);
        self.forget(Path::new(""));
    }

    /// Drop the cached descriptors of `rel` and of every directory below it (after a
    /// rename or rmdir of `rel`).
    pub fn forget(&self, rel: &Path) {
        let mut dirs = self.cache.dirs.lock().unwrap();
        self.cache.epoch.fetch_add(1, Ordering::AcqRel);
        dirs.retain(|path, _| !path.starts_with(rel));
    }

    /// Number of directory descriptors cached (for tests).
    pub fn cached_dirs(&self) -> usize {
        self.cache.dirs.lock().unwrap().len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory itself.
    pub fn root(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.root_fd().try_clone()?,
            rel: PathBuf::new(),
        })
    }

    fn root_fd(&self) -> Arc<OwnedFd> {
        self.root.read().unwrap().clone()
    }

    /// Whether the root still answers (an `fstat` of its descriptor): a network store that
    /// went away fails it with its transport error.
    pub fn root_alive(&self) -> io::Result<()> {
        sys::fstat(&*self.root_fd()).map(|_| ())
    }

    /// Open the root again by its path, for a store that went away and came back (a share
    /// remounted there), and drop every cached descriptor of the old one.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = BackingRoot::open(&self.path)?;
        let fd = fresh.root_fd();
        *self.root.write().unwrap() = fd;
        self.forget(Path::new(""));
        Ok(())
    }

    /// The directory at `rel` (backing names, relative to the root). A symlink anywhere on
    /// the way is refused with `ELOOP`, a component that is not a directory with `ENOTDIR`,
    /// and `..` with `EINVAL`.
    pub fn dir(&self, rel: &Path) -> io::Result<Dir> {
        let names = components(rel)?;
        if names.is_empty() {
            return self.root();
        }
        let fd = match self.openat2.load(Ordering::Relaxed) {
            NO_OPENAT2 => self.walk(&names)?,
            _ => match self.resolve_openat2(&names) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.openat2.store(NO_OPENAT2, Ordering::Relaxed);
                    self.walk(&names)?
                }
                // openat2 takes one path string, which PATH_MAX bounds: walk longer ones.
                Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => self.walk(&names)?,
                other => {
                    self.openat2.store(HAS_OPENAT2, Ordering::Relaxed);
                    other?
                }
            },
        };
        Ok(Dir {
            fd,
            rel: names.iter().collect(),
        })
    }

    /// Open the regular file at `rel` (backing names, relative to the root) with open(2)
    /// `flags`, a symlink anywhere refused with `ELOOP`: one `openat2` where the kernel has
    /// it, the parent's walk and an `openat` where it does not (or the path is too long).
    pub fn open_file(&self, rel: &Path, flags: i32) -> io::Result<std::fs::File> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let names = components(rel)?;
        if self.openat2.load(Ordering::Relaxed) == HAS_OPENAT2 {
            match self.resolve_openat2_with(&names, flags | libc::O_CLOEXEC) {
                Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {}
                other => return other.map(std::fs::File::from),
            }
        }
        self.dir(parent)?.open_file(name, flags, 0)
    }

    fn resolve_openat2(&self, names: &[&OsStr]) -> io::Result<OwnedFd> {
        self.resolve_openat2_with(names, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
    }

    fn resolve_openat2_with(&self, names: &[&OsStr], flags: i32) -> io::Result<OwnedFd> {
        let mut joined = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                joined.push(b'/');
            }
            joined.extend_from_slice(n.as_bytes());
        }
        let c = CString::new(joined).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: open_how is plain data; zeroed is its documented "no options" value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid dirfd, NUL-terminated path, and a pointer to an open_how of the
        // size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root_fd().as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat2 returned a fresh descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// One component at a time, each opened `O_NOFOLLOW | O_DIRECTORY` relative to the last.
    fn walk(&self, names: &[&OsStr]) -> io::Result<OwnedFd> {
        let mut cur = self.root_fd().try_clone()?;
        for n in names {
            cur = open_dir_at(&cur, n)?;
        }
        Ok(cur)
    }
}

/// The names of a relative backing path; `..` or an absolute path is `EINVAL`.
fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    Ok(names)
}

/// The `/proc/self/fd/N` link of a descriptor: a path the kernel resolves to exactly the
/// inode the descriptor holds, for calls that take no `O_PATH` descriptor.
fn proc_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// chmod of the inode an `O_PATH` descriptor holds, through its /proc link: fchmod does not
/// take `O_PATH` descriptors, and the link names exactly that inode.
fn chmod_fd(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    let proc = proc_path(fd);
    // SAFETY: valid NUL-terminated string.
    check(unsafe { libc::chmod(proc.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Open directory `name` of `dir` as an `O_PATH` descriptor, never through a symlink. A
/// symlink in its place is `ELOOP`, as openat2's `RESOLVE_NO_SYMLINKS` says it (the kernel
/// itself answers `ENOTDIR` for `O_NOFOLLOW | O_DIRECTORY` on a symlink).
fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = name_arg(name)?;
    // SAFETY: valid dirfd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: openat returned a fresh descriptor that we now own.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOTDIR) {
        // SAFETY: stat is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dirfd, NUL-terminated name and out pointer.
        let is_link = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if is_link {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    Err(err)
}

/// What `Dir::stat` returns: the entry's own attributes (a symlink's, never its target's).
pub type Stat = libc::stat;

impl Dir {
    /// This directory's path below the backing root (for messages).
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// A subdirectory, refusing a symlink or non-directory in its place.
    pub fn subdir(&self, name: &OsStr) -> io::Result<Dir> {
        Ok(Dir {
            fd: open_dir_at(&self.fd, name)?,
            rel: self.rel.join(name),
        })
    }

    /// An `O_PATH` descriptor of entry `name` itself (a symlink is not followed), for calls
    /// that act on an entry through its descriptor (xattrs via `/proc/self/fd`).
    pub fn entry_fd(&self, name: &OsStr) -> io::Result<OwnedFd> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fresh descriptor from openat.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// An `O_PATH` descriptor of this directory itself.
    pub fn entry_fd_self(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// This directory's own descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// lstat of an entry.
    pub fn stat(&self, name: &OsStr) -> io::Result<Stat> {
        let c = name_arg(name)?;
        // SAFETY: stat is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dirfd, NUL-terminated name and out pointer.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// Open a regular file (`flags` as for open(2); `O_NOFOLLOW` is always added, so a
    /// symlink in its place fails with `ELOOP`). `mode` applies when creating.
    pub fn open_file(&self, name: &OsStr, flags: i32, mode: u32) -> io::Result<std::fs::File> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: fresh descriptor from openat.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
            .map(drop)
    }

    /// Remove a non-directory entry (a symlink itself, never its target).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    pub fn rmdir(&self, name: &OsStr) -> io::Result<()> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
    }

    /// renameat2 (`flags`: 0, `RENAME_NOREPLACE` or `RENAME_EXCHANGE`).
    pub fn rename(&self, name: &OsStr, to: &Dir, to_name: &OsStr, flags: u32) -> io::Result<()> {
        let (a, b) = (name_arg(name)?, name_arg(to_name)?);
        // SAFETY: valid dirfds and NUL-terminated names.
        check(unsafe {
            libc::renameat2(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                to.fd.as_raw_fd(),
                b.as_ptr(),
                flags,
            )
        })
        .map(drop)
    }

    /// A hard link `to/to_name` of this directory's `name` (the entry itself: a symlink is
    /// linked as a symlink).
    pub fn link(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (a, b) = (name_arg(name)?, name_arg(to_name)?);
        // SAFETY: valid dirfds and NUL-terminated names.
        check(unsafe {
            libc::linkat(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                to.fd.as_raw_fd(),
                b.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let (t, n) = (cstr(target)?, name_arg(name)?);
        // SAFETY: valid dirfd and NUL-terminated strings.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), n.as_ptr()) }).map(drop)
    }

    /// The stored target of a symlink (`EINVAL` if the entry is not one).
    pub fn readlink(&self, name: &OsStr) -> io::Result<OsString> {
        let c = name_arg(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: valid dirfd, NUL-terminated name, and a buffer of the length given.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(OsString::from_vec(buf))
    }

    pub fn mknod(&self, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe {
            libc::mknodat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                mode as libc::mode_t,
                rdev as libc::dev_t,
            )
        })
        .map(drop)
    }

    /// Change an entry's owner without following a symlink (a symlink's own owner).
    pub fn chown(&self, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let c = name_arg(name)?;
        // SAFETY: valid dirfd and NUL-terminated name; -1 leaves an id unchanged.
        check(unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Change an entry's mode without following a symlink: through a descriptor of the entry
    /// itself (a symlink has no mode of its own on Linux: `EOPNOTSUPP`).
    pub fn chmod(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let fd = self.entry_fd(name)?;
        if sys::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        chmod_fd(&fd, mode)
    }

    /// utimensat without following a symlink; `None` leaves a time unchanged.
    pub fn set_times(
        &self,
        name: &OsStr,
        atime: Option<libc::timespec>,
        mtime: Option<libc::timespec>,
    ) -> io::Result<()> {
        let c = name_arg(name)?;
        let times = [atime.unwrap_or(OMIT), mtime.unwrap_or(OMIT)];
        // SAFETY: valid dirfd, NUL-terminated name and two timespecs.
        check(unsafe {
            libc::utimensat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// The names in this directory (without `.` and `..`).
    pub fn list(&self) -> io::Result<Vec<OsString>> {
        Ok(self.entries()?.into_iter().map(|e| e.name).collect())
    }

    /// The entries of this directory (without `.` and `..`) with their inode numbers and
    /// types, as the directory itself records them. Where it records no type (`DT_UNKNOWN`,
    /// some network filesystems), the entry is looked at with `fstatat`.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let dot = CString::new(".").expect("no NUL");
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                dot.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fdopendir takes ownership of the fresh descriptor.
        let dir = unsafe { libc::fdopendir(fd) };
        if dir.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the descriptor is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut out = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; cleared to tell end-of-directory from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: dir is a valid DIR stream until closedir below.
            let entry = unsafe { libc::readdir64(dir) };
            if entry.is_null() {
                let errno = io::Error::last_os_error();
                break match errno.raw_os_error() {
                    Some(0) | None => Ok(()),
                    _ => Err(errno),
                };
            }
            // SAFETY: readdir returned a valid entry with a NUL-terminated name.
            let (name, ino, d_type) = unsafe {
                (
                    std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()),
                    (*entry).d_ino,
                    (*entry).d_type,
                )
            };
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                out.push(Entry {
                    name: OsString::from_vec(bytes.to_vec()),
                    ino,
                    kind: kind_of_dtype(d_type),
                });
            }
        };
        // SAFETY: dir is valid and closed once.
        unsafe { libc::closedir(dir) };
        result?;
        for e in out.iter_mut().filter(|e| e.kind == 0) {
            // Gone since the listing: left as a regular file, which any use will find gone.
            e.kind = self
                .stat(&e.name)
                .map_or(libc::S_IFREG, |st| st.st_mode & libc::S_IFMT);
        }
        Ok(out)
    }

    /// lstat of this directory itself.
    pub fn stat_self(&self) -> io::Result<Stat> {
        sys::fstat(&self.fd)
    }

    /// chmod of this directory itself.
    pub fn chmod_self(&self, mode: u32) -> io::Result<()> {
        chmod_fd(&self.fd, mode)
    }

    /// chown of this directory itself; `None` leaves an id unchanged.
    pub fn chown_self(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        // SAFETY: valid descriptor and an empty NUL-terminated name with AT_EMPTY_PATH.
        check(unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
                libc::AT_EMPTY_PATH,
            )
        })
        .map(drop)
    }

    /// utimensat of this directory itself; `None` leaves a time unchanged.
    pub fn set_times_self(
        &self,
        atime: Option<libc::timespec>,
        mtime: Option<libc::timespec>,
    ) -> io::Result<()> {
        let times = [atime.unwrap_or(OMIT), mtime.unwrap_or(OMIT)];
        let proc = proc_path(&self.fd);
        // SAFETY: valid NUL-terminated string and two timespecs.
        check(unsafe { libc::utimensat(libc::AT_FDCWD, proc.as_ptr(), times.as_ptr(), 0) })
            .map(drop)
    }

    /// access(2) of entry `name`, or of this directory itself with `None`, as the daemon's
    /// real user, never following a symlink in place of the entry.
    pub fn access(&self, name: Option<&OsStr>, mask: i32) -> io::Result<()> {
        let (c, flags) = match name {
            Some(n) => (name_arg(n)?, libc::AT_SYMLINK_NOFOLLOW),
            None => (CString::new(".").expect("no NUL"), 0),
        };
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::faccessat(self.fd.as_raw_fd(), c.as_ptr(), mask, flags) }).map(drop)
    }

    /// fsync of this directory (its entries made durable).
    pub fn sync(&self) -> io::Result<()> {
        self.open_self()?.sync_all()
    }

    /// syncfs of the filesystem holding this directory.
    pub fn syncfs(&self) -> io::Result<()> {
        let dir = self.open_self()?;
        // SAFETY: valid descriptor.
        check(unsafe { libc::syncfs(dir.as_raw_fd()) }).map(drop)
    }

    /// statvfs of the filesystem holding this directory.
    pub fn statvfs(&self) -> io::Result<libc::statvfs> {
        sys::fstatvfs(&self.open_self()?)
    }

    /// This directory opened for reading (`O_PATH` descriptors take no fsync).
    fn open_self(&self) -> io::Result<std::fs::File> {
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fresh descriptor from openat.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// One entry of a backing directory as `Dir::entries` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub ino: u64,
    /// The `S_IFMT` bits of its type.
    pub kind: u32,
}

/// A `d_type` as `S_IFMT` bits, 0 when the directory did not say.
fn kind_of_dtype(d_type: u8) -> u32 {
    match d_type {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_REG => libc::S_IFREG,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => 0,
    }
}

const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let backing = t.path().join("backing");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(backing.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host file").unwrap();
        std::fs::set_permissions(
            outside.join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        (t, backing, outside)
    }

    fn b_of(root: &BackingRoot) -> Dir {
        root.dir(Path::new("a/b")).unwrap()
    }

    #[test]
    fn symlinks_on_the_way_or_in_place_are_never_followed() {
        let (_t, backing, outside) = setup();
        // A directory replaced by a symlink to a host directory.
        std::os::unix::fs::symlink(&outside, backing.join("a/evil")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), backing.join("a/b/link")).unwrap();
        let root = BackingRoot::open(&backing).unwrap();
        for force_walk in [false, true] {
            if force_walk {
                root.openat2.store(NO_OPENAT2, Ordering::Relaxed);
            }
            let err = root
                .dir(Path::new("a/evil"))
                .expect_err("followed a symlink");
            assert_eq!(
                err.raw_os_error(),
                Some(libc::ELOOP),
                "walk={force_walk}: {err}"
            );
            assert_eq!(
                b_of(&root)
                    .subdir(OsStr::new("link"))
                    .err()
                    .unwrap()
                    .raw_os_error(),
                Some(libc::ELOOP)
            );
            assert!(root.dir(Path::new("a/../..")).is_err());
            let b = root.dir(Path::new("a/b")).unwrap();
            assert_eq!(b.rel(), Path::new("a/b"));
            // The final component: every operation acts on the symlink, never its target.
            assert_eq!(
                b.open_file(OsStr::new("link"), libc::O_RDONLY, 0)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::ELOOP)
            );
            assert_eq!(
                b.open_file(OsStr::new("link"), libc::O_WRONLY | libc::O_TRUNC, 0)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::ELOOP)
            );
            assert_eq!(
                b.chmod(OsStr::new("link"), 0o777)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::EOPNOTSUPP)
            );
            b.chown(OsStr::new("link"), None, None).unwrap();
            b.set_times(OsStr::new("link"), None, None).unwrap();
            assert!(b.subdir(OsStr::new("link")).is_err());
            let st = b.stat(OsStr::new("link")).unwrap();
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
            assert_eq!(
                b.readlink(OsStr::new("link")).unwrap(),
                outside.join("secret").into_os_string()
            );
            // Files by their path below the root: refused at or below a symlink.
            for rel in ["a/b/link", "a/evil/secret"] {
                let err = root.open_file(Path::new(rel), libc::O_RDONLY).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{rel}: {err}");
            }
            assert_eq!(
                b.access(Some(OsStr::new("link")), libc::R_OK)
                    .map_err(|e| e.raw_os_error()),
                Ok(()),
                "access looks at the symlink itself"
            );
        }
        // Nothing outside was touched.
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"host file");
        let mode = std::fs::metadata(outside.join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn entries_are_made_changed_and_removed_relative_to_their_directory() {
        let (_t, backing, _) = setup();
        let root = BackingRoot::open(&backing).unwrap();
        let a = root.dir(Path::new("a")).unwrap();
        a.mkdir(OsStr::new("d"), 0o750).unwrap();
        let d = a.subdir(OsStr::new("d")).unwrap();
        let mut f = d
            .open_file(
                OsStr::new("f"),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o640,
            )
            .unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        d.chmod(OsStr::new("f"), 0o604).unwrap();
        assert_eq!(d.stat(OsStr::new("f")).unwrap().st_mode & 0o777, 0o604);
        d.symlink(OsStr::new("target"), OsStr::new("s")).unwrap();
        d.link(OsStr::new("f"), &a, OsStr::new("hard")).unwrap();
        assert_eq!(d.stat(OsStr::new("f")).unwrap().st_nlink, 2);
        d.rename(OsStr::new("f"), &a, OsStr::new("moved"), 0)
            .unwrap();
        let mut names = a.list().unwrap();
        names.sort();
        assert_eq!(names, ["b", "d", "hard", "moved"].map(OsString::from));
        assert_eq!(
            d.rename(
                OsStr::new("s"),
                &a,
                OsStr::new("moved"),
                libc::RENAME_NOREPLACE
            )
            .unwrap_err()
            .raw_os_error(),
            Some(libc::EEXIST)
        );
        let mut kinds: Vec<(OsString, u32)> = d
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        kinds.sort();
        assert_eq!(kinds, [(OsString::from("s"), libc::S_IFLNK)]);
        d.unlink(OsStr::new("s")).unwrap();
        a.rmdir(OsStr::new("d")).unwrap();
        // The directory itself, through its descriptor.
        a.chmod_self(0o711).unwrap();
        a.set_times_self(
            Some(libc::timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 5,
            }),
            None,
        )
        .unwrap();
        a.chown_self(None, None).unwrap();
        let st = a.stat_self().unwrap();
        assert_eq!(
            (st.st_mode & 0o7777, st.st_atime, st.st_atime_nsec),
            (0o711, 1_000_000_000, 5)
        );
        a.sync().unwrap();
        a.syncfs().unwrap();
        assert!(a.statvfs().unwrap().f_bsize > 0);
        for bad in ["", ".", "..", "x/y"] {
            assert!(a.stat(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cached_directories_are_reused_until_forgotten_or_stale() {
        let (_t, backing, _) = setup();
        let root = BackingRoot::open(&backing).unwrap();
        let b = root.dir_cached(Path::new("a/b")).unwrap();
        assert!(Arc::ptr_eq(&b, &root.dir_cached(Path::new("a/b")).unwrap()));
        let a = root.dir_cached(Path::new("a")).unwrap();
        assert_eq!(root.cached_dirs(), 2);
        // Forgetting a directory forgets what lies below it, and nothing else.
        root.forget(Path::new("a/b"));
        assert_eq!(root.cached_dirs(), 1);
        assert!(Arc::ptr_eq(&a, &root.dir_cached(Path::new("a")).unwrap()));
        root.forget(Path::new("a"));
        assert_eq!(root.cached_dirs(), 0);
        // After a rename and forget, the path leads to what is there now.
        root.dir_cached(Path::new("a/b")).unwrap();
        std::fs::rename(backing.join("a/b"), backing.join("a/c")).unwrap();
        std::fs::create_dir(backing.join("a/b")).unwrap();
        std::fs::write(backing.join("a/b/new"), b"").unwrap();
        root.forget(Path::new("a"));
        let now_b = root.dir_cached(Path::new("a/b")).unwrap();
        assert!(now_b.stat(OsStr::new("new")).is_ok());
        // Bounded: never more than the capacity, however many directories are visited.
        for i in 0..DIR_CACHE_CAPACITY + 10 {
            let name = format!("d{i}");
            std::fs::create_dir(backing.join(&name)).unwrap();
            root.dir_cached(Path::new(&name)).unwrap();
            assert!(root.cached_dirs() <= DIR_CACHE_CAPACITY);
        }
        // Stale entries are resolved again: a symlink put in place of a cached directory
        // is refused once the entry has expired.
        root.set_dir_cache_ttl(Duration::ZERO);
        root.dir_cached(Path::new("d1")).unwrap();
        assert_eq!(root.cached_dirs(), 0, "a zero TTL caches nothing");
        root.set_dir_cache_ttl(DIR_CACHE_TTL);
        root.dir_cached(Path::new("d0")).unwrap();
        std::fs::remove_dir(backing.join("d0")).unwrap();
        std::os::unix::fs::symlink(backing.join("a"), backing.join("d0")).unwrap();
        std::thread::sleep(DIR_CACHE_TTL + Duration::from_millis(50));
        assert_eq!(
            root.dir_cached(Path::new("d0")).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn backing_paths_beyond_path_max_work() {
        let (_t, backing, _) = setup();
        let root = BackingRoot::open(&backing).unwrap();
        // 40 levels of 200-byte names: about 8 KiB of path, twice PATH_MAX.
        let name = OsString::from("n".repeat(200));
        let mut rel = PathBuf::new();
        let mut dir = root.root().unwrap();
        for _ in 0..40 {
            dir.mkdir(&name, 0o700).unwrap();
            dir = dir.subdir(&name).unwrap();
            rel.push(&name);
        }
        assert!(rel.as_os_str().len() > libc::PATH_MAX as usize);
        dir.open_file(OsStr::new("deep"), libc::O_CREAT | libc::O_WRONLY, 0o600)
            .unwrap();
        let again = root.dir(&rel).unwrap();
        assert!(again.stat(OsStr::new("deep")).is_ok());
        for force_walk in [false, true] {
            if force_walk {
                root.openat2.store(NO_OPENAT2, Ordering::Relaxed);
            }
            root.open_file(&rel.join("deep"), libc::O_RDONLY).unwrap();
        }
    }
}
