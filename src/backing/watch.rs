//! Change notification from the backing store: an inotify instance watching directories.
//!
//! The mount lets the kernel cache names and attributes for a long time only because it is
//! told when the backing store changes behind its back (docs/SEMANTICS.md §5): a sync client
//! replacing a file, another program writing the directory. This module is the syscall side
//! of that — watches on directories this module is handed as descriptors, and the events
//! they report — and knows nothing of what a backing name means (src/fs/watch.rs) or of
//! node ids (src/fuse/watch.rs).
//!
//! A watch is added through `/proc/self/fd/N` of the directory's own `O_PATH` descriptor,
//! so it lands on exactly the inode envfs resolved beneath the backing root: no path string
//! of the backing store is handed to the kernel (the rule of src/backing/mod.rs).

use super::Dir;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

/// What each directory watch reports: entries appearing, disappearing and changing in it.
/// Not `IN_CLOSE_WRITE`: every write first reports `IN_MODIFY`, and a close changes
/// nothing the kernel caches.
const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

/// A watch descriptor: which watched directory an event is about.
pub type WatchId = i32;

/// One event, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub watch: WatchId,
    pub kind: EventKind,
    /// Whether the entry is a directory (`IN_ISDIR`).
    pub is_dir: bool,
    /// The backing name of the entry in the watched directory.
    pub name: OsString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An entry appeared (created, or moved in).
    Appeared,
    /// An entry went away (removed, or moved out).
    Gone,
    /// A file's contents changed (`IN_MODIFY`).
    Modified,
    /// An entry's metadata changed: mode, owner, times, link count, xattrs.
    Attrib,
    /// The watched directory itself went away, or its watch was removed: nothing more
    /// comes from this watch (`name` is empty).
    WatchEnded,
    /// The kernel's queue overflowed and events were lost: everything may have changed.
    Overflow,
}

/// An inotify instance.
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watch directory `dir`. Watching a directory already watched returns its existing
    /// id. `ENOSPC` means the per-user watch limit (`fs.inotify.max_user_watches`) is
    /// reached.
    pub fn add(&self, dir: &Dir) -> io::Result<WatchId> {
        let fd = dir.entry_fd_self()?;
        let path =
            std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
        // SAFETY: valid inotify descriptor and NUL-terminated path; `fd` stays open for
        // the duration of the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Stop watching (the kernel then reports `WatchEnded` for it).
    pub fn remove(&self, watch: WatchId) {
        // SAFETY: plain syscall; an id already gone fails with EINVAL, which is fine.
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), watch) };
    }

    /// Wait up to `timeout` for events, then return what is queued (possibly nothing).
    /// After the first event arrives, wait `settle` more: the kernel merges an event with
    /// the identical one queued before it, so a file written a thousand times in that
    /// interval is reported once.
    pub fn wait(&self, timeout: Duration, settle: Duration) -> io::Result<Vec<Event>> {
        if !self.poll(timeout)? {
            return Ok(Vec::new());
        }
        if !settle.is_zero() {
            std::thread::sleep(settle);
        }
        let mut events = Vec::new();
        // Aligned for `inotify_event`; room for many events per read.
        let mut buf = vec![0u64; 8192];
        // Bounded: the queue holds at most `max_queued_events`; stop after a few reads so
        // a writer that never pauses cannot keep us from handling what we have.
        for _ in 0..16 {
            // SAFETY: valid descriptor and buffer of the given length in bytes.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len() * std::mem::size_of::<u64>(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: the kernel wrote `n` bytes of whole `inotify_event` records.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            parse(bytes, &mut events);
        }
        Ok(events)
    }

    fn poll(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(n > 0)
    }
}

/// Decode a buffer of `inotify_event` records.
fn parse(bytes: &[u8], out: &mut Vec<Event>) {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        // SAFETY: in bounds; read_unaligned copes with any alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast()) };
        let name_len = ev.len as usize;
        let end = (at + HEADER + name_len).min(bytes.len());
        let raw = &bytes[at + HEADER..end];
        // The name is NUL-padded to an alignment boundary.
        let name = raw.split(|b| *b == 0).next().unwrap_or_default().to_vec();
        at = end;
        let kind = if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            EventKind::Overflow
        } else if ev.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF) != 0 {
            EventKind::WatchEnded
        } else if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            EventKind::Appeared
        } else if ev.mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
            EventKind::Gone
        } else if ev.mask & libc::IN_MODIFY != 0 {
            EventKind::Modified
        } else if ev.mask & libc::IN_ATTRIB != 0 {
            EventKind::Attrib
        } else {
            continue;
        };
        out.push(Event {
            watch: ev.wd,
            kind,
            is_dir: ev.mask & libc::IN_ISDIR != 0,
            name: OsString::from_vec(name),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::BackingRoot;
    use std::path::Path;

    fn events_until(ino: &Inotify, want: usize) -> Vec<Event> {
        let mut got = Vec::new();
        // Bounded: a few waits of at most a second each.
        for _ in 0..10 {
            got.extend(ino.wait(Duration::from_secs(1), Duration::ZERO).unwrap());
            if got.len() >= want {
                break;
            }
        }
        got
    }

    #[test]
    fn reports_what_happens_in_a_watched_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let root = BackingRoot::open(tmp.path()).unwrap();
        let dir = root.dir(Path::new("d")).unwrap();
        let ino = Inotify::new().unwrap();
        let wd = ino.add(&dir).unwrap();
        assert_eq!(ino.add(&dir).unwrap(), wd, "one watch per directory");
        let f = tmp.path().join("d/f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::rename(&f, tmp.path().join("d/g")).unwrap();
        std::fs::create_dir(tmp.path().join("d/sub")).unwrap();
        std::fs::remove_file(tmp.path().join("d/g")).unwrap();
        let got = events_until(&ino, 6);
        let seen: Vec<(EventKind, bool, &str)> = got
            .iter()
            .map(|e| (e.kind, e.is_dir, e.name.to_str().unwrap()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (EventKind::Appeared, false, "f"),
                (EventKind::Modified, false, "f"),
                (EventKind::Gone, false, "f"),
                (EventKind::Appeared, false, "g"),
                (EventKind::Appeared, true, "sub"),
                (EventKind::Gone, false, "g"),
            ]
        );
        assert!(got.iter().all(|e| e.watch == wd));
        ino.remove(wd);
        let ended = events_until(&ino, 1);
        assert_eq!(ended.last().map(|e| e.kind), Some(EventKind::WatchEnded));
    }

    #[test]
    fn nothing_queued_returns_empty_after_the_timeout() {
        let ino = Inotify::new().unwrap();
        assert!(
            ino.wait(Duration::from_millis(10), Duration::ZERO)
                .unwrap()
                .is_empty()
        );
    }
}
