//! Calls on backing files already open (descriptors the fs core holds), and the few libc
//! calls std does not offer. Each returns `io::Result` with the backing store's errno
//! intact, because the FUSE layer passes it on. Nothing here takes a path to the backing
//! store except the `l*xattr` helpers, kept for tests and tools that inspect a backing
//! directory they own.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A timestamp to set: now, a given time, or leave it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(SystemTime),
}

/// The timespec utimensat takes for a time to set, `None` for one to leave alone.
pub fn timespec_of(t: Option<TimeSet>) -> Option<libc::timespec> {
    t.map(|t| timespec(Some(t)))
}

fn timespec(t: Option<TimeSet>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSet::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSet::At(t)) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    if d.subsec_nanos() == 0 {
                        (-(d.as_secs() as i64), 0)
                    } else {
                        (
                            -(d.as_secs() as i64) - 1,
                            1_000_000_000 - d.subsec_nanos() as i64,
                        )
                    }
                }
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

/// fstat of an open backing file (works after unlink: nlink is then 0).
pub fn fstat(file: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    check(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// What this host's kernel already knows of an open backing file: its length and its
/// modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Known {
    /// `Known` of an entry as an lstat of its name found it.
    pub fn of_stat(st: &super::Stat) -> Known {
        Known {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }
}

/// `Known` for `file`, from `statx(AT_STATX_DONT_SYNC)`: on a network filesystem, no round
/// trip to the server. The kernel keeps the length current with every write made through
/// it, this process's included, and takes the server's word on everything whenever it next
/// asks for attributes; on a local filesystem these are simply the file's. For the write
/// path, which on a network store would otherwise stop after every write to ask for the
/// length that write just set: with sshfs that request waits behind every write still in
/// flight, so each one drains the pipeline.
pub fn known(file: &impl AsRawFd) -> io::Result<Known> {
    statx_known(file, libc::AT_STATX_DONT_SYNC)
}

/// `Known` for `file` as the store has it now (a round trip on a network store).
pub fn known_fresh(file: &impl AsRawFd) -> io::Result<Known> {
    statx_known(file, libc::AT_STATX_SYNC_AS_STAT)
}

fn statx_known(file: &impl AsRawFd, sync: libc::c_int) -> io::Result<Known> {
    // SAFETY: statx is plain data filled by the kernel.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, a NUL-terminated empty path and an out pointer of the right type.
    check(unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | sync,
            libc::STATX_SIZE | libc::STATX_MTIME | libc::STATX_CTIME,
            &mut stx,
        )
    })?;
    Ok(Known {
        size: stx.stx_size,
        mtime: (stx.stx_mtime.tv_sec, stx.stx_mtime.tv_nsec),
        ctime: (stx.stx_ctime.tv_sec, stx.stx_ctime.tv_nsec),
    })
}

/// fchown of an open backing file; `None` leaves an id unchanged.
pub fn fchown(file: &std::fs::File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::fchown(file, uid, gid)
}

/// fchmod of an open backing file (permission bits only).
pub fn fchmod(file: &std::fs::File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
}

/// futimens: set times through an open file (works after unlink).
pub fn set_times_fd(
    file: &std::fs::File,
    atime: Option<TimeSet>,
    mtime: Option<TimeSet>,
) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: valid fd and a pointer to two timespecs.
    check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) })
}

pub fn fallocate(file: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fd is valid for the lifetime of `file`.
    check(unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// Close a duplicate of `file`'s descriptor and return what close(2) says: the backing
/// filesystem's flush of the file, without closing `file` itself.
pub fn close_dup(file: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: dup of a valid descriptor; the duplicate is ours to close.
    let dup = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a descriptor we own and close exactly once.
    check(unsafe { libc::close(dup) })
}

/// Free bytes available to unprivileged writers, and the rest of statvfs.
pub fn fstatvfs(file: &impl AsRawFd) -> io::Result<libc::statvfs> {
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    check(unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Whose extended attributes: a path whose final symlink is not followed (the `l*xattr`
/// calls), or an entry held by an `O_PATH` descriptor, reached through its
/// `/proc/self/fd/N` link, which the kernel resolves to exactly that entry (a symlink
/// itself, if it is one) however the backing store changed since.
#[derive(Clone, Copy)]
pub enum XattrOf<'a> {
    Path(&'a Path),
    Fd(std::os::fd::BorrowedFd<'a>),
}

impl XattrOf<'_> {
    /// The C path and whether the call must follow it.
    fn target(self) -> io::Result<(CString, bool)> {
        match self {
            XattrOf::Path(p) => Ok((cstr(p)?, false)),
            XattrOf::Fd(fd) => Ok((
                CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL"),
                true,
            )),
        }
    }
}

pub fn getxattr(of: XattrOf<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let ((p, follow), n) = (of.target()?, cstr(Path::new(name))?);
    read_sized(|buf, len| {
        // SAFETY: valid C strings; buf is NULL with len 0, or has len bytes.
        check_size(unsafe {
            if follow {
                libc::getxattr(p.as_ptr(), n.as_ptr(), buf.cast(), len)
            } else {
                libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.cast(), len)
            }
        })
    })
}

/// The bytes a size-then-fill call returns (`getxattr`, `listxattr`): a NULL buffer with
/// size 0 asks for the length; if the value grew before the second call, ask again.
fn read_sized(call: impl Fn(*mut u8, usize) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    loop {
        let len = call(std::ptr::null_mut(), 0)?;
        let mut buf = vec![0u8; len];
        match call(buf.as_mut_ptr(), len) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn setxattr(of: XattrOf<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let ((p, follow), n) = (of.target()?, cstr(Path::new(name))?);
    // SAFETY: valid C strings; value is a valid buffer of value.len() bytes.
    check(unsafe {
        if follow {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        } else {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        }
    })
}

pub fn listxattr(of: XattrOf<'_>) -> io::Result<Vec<Vec<u8>>> {
    let (p, follow) = of.target()?;
    let buf = read_sized(|buf, len| {
        // SAFETY: valid C string; buf is NULL with len 0, or has len bytes.
        check_size(unsafe {
            if follow {
                libc::listxattr(p.as_ptr(), buf.cast(), len)
            } else {
                libc::llistxattr(p.as_ptr(), buf.cast(), len)
            }
        })
    })?;
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect())
}

pub fn removexattr(of: XattrOf<'_>, name: &OsStr) -> io::Result<()> {
    let ((p, follow), n) = (of.target()?, cstr(Path::new(name))?);
    // SAFETY: valid C strings.
    check(unsafe {
        if follow {
            libc::removexattr(p.as_ptr(), n.as_ptr())
        } else {
            libc::lremovexattr(p.as_ptr(), n.as_ptr())
        }
    })
}

/// The `l*xattr` calls by path (final symlink not followed), for tests and tools that
/// look at a backing directory they own.
pub fn lgetxattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    getxattr(XattrOf::Path(path), name)
}

pub fn lsetxattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    setxattr(XattrOf::Path(path), name, value, flags)
}

pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    listxattr(XattrOf::Path(path))
}

/// An exclusive open-file-description lock on a backing file's first byte: held while a
/// header is created or replaced, so two mounts (or a mount and `envfs rewrap`) never write
/// a file's header at once. Released when dropped (or when the fd closes).
pub struct HeaderLock<'a> {
    file: &'a std::fs::File,
}

fn ofd_lock(file: &std::fs::File, kind: libc::c_short) -> io::Result<()> {
    // SAFETY: zeroed flock is valid; we set every field F_OFD_SETLKW reads.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    loop {
        // SAFETY: valid fd and flock pointer.
        let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

impl<'a> HeaderLock<'a> {
    pub fn acquire(file: &'a std::fs::File) -> io::Result<HeaderLock<'a>> {
        match ofd_lock(file, libc::F_WRLCK as libc::c_short) {
            Ok(()) => Ok(HeaderLock { file }),
            // Backing stores without lock support: carry on unlocked, as before.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOLCK) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                Ok(HeaderLock { file })
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for HeaderLock<'_> {
    fn drop(&mut self) {
        let _ = ofd_lock(self.file, libc::F_UNLCK as libc::c_short);
    }
}
