//! File attributes as the mount shows them: the backing file's metadata with the size
//! translated to plaintext. Pure arithmetic, so `stat` never reads a header or calls a key
//! service.

use crate::backing::Stat;
use crate::format::Geometry;
use crate::format::config::NameEncoding;
use crate::format::names::{SIV_OVERHEAD, decoded_len};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => FileKind::File,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Backing device and inode: stable across remounts, shared by hard links.
    pub dev: u64,
    pub ino: u64,
    /// Plaintext size.
    pub size: u64,
    /// 512-byte blocks the backing file occupies.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileKind,
    /// Permission bits (incl. setuid/setgid/sticky).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub blksize: u32,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// How the mount reports sizes: the geometry for regular files, the name encoding for
/// symlinks (a symlink's size is its plaintext target's length).
#[derive(Debug, Clone, Copy)]
pub struct SizeMap {
    pub geometry: Geometry,
    /// `None` when symlink targets are stored in plaintext.
    pub link_encoding: Option<NameEncoding>,
}

impl SizeMap {
    /// The mount's attributes of a backing entry, from its (l)stat.
    pub fn attr(&self, st: &Stat) -> Attr {
        let mode = st.st_mode;
        let kind = FileKind::from_mode(mode);
        let backing_size = st.st_size as u64;
        let size = match kind {
            FileKind::File => self.geometry.plain_size_lossy(backing_size),
            FileKind::Symlink => match self.link_encoding {
                Some(enc) => {
                    decoded_len(enc, backing_size as usize).saturating_sub(SIV_OVERHEAD) as u64
                }
                None => backing_size,
            },
            _ => backing_size,
        };
        Attr {
            dev: st.st_dev,
            ino: st.st_ino,
            size,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            kind,
            perm: (mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            blksize: st.st_blksize as u32,
        }
    }
}
