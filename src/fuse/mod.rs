//! The thin fuser adapter: FUSE requests in, `fs::Fs` calls, replies out.
//!
//! Only this module imports fuser. It owns what is FUSE-specific — node ids, file and
//! directory handles, TTLs, errno replies — and nothing else: every decision about data,
//! names or keys is the filesystem core's.

pub mod inodes;
mod oplog;
mod requests;
pub mod session;
pub mod watch;

use crate::error::Error;
use crate::fs::{Attr, FileKind, Fs, Handle, Owner, SetAttr, TimeSet};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use inodes::Inodes;
use requests::Kind;
pub use requests::RequestCounts;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest write the kernel may send in one request (it caps this at its own maximum).
const MAX_WRITE: u32 = 1 << 20;

/// How every regular file is opened. FOPEN_NOFLUSH: close(2) need not wait for a FLUSH
/// round trip, because a write reaches the backing store before it is acknowledged and
/// there is nothing left to flush (the kernel ignores the flag under the writeback cache,
/// where FLUSH is what writes dirty pages back). POSIX locks stay in the kernel
/// (FUSE_POSIX_LOCKS is not negotiated), so FLUSH has no locks to release either.
const FILE_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// Mount-time behaviour of the adapter.
#[derive(Debug, Clone)]
pub struct AdapterOptions {
    /// How long the kernel may cache attributes and entries. Short, because the backing
    /// directory is shared: changes made behind the mount's back must show up quickly.
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// How long the kernel may remember that a name does not exist. Creating a file
    /// looks its name up first, often twice (`cp` stats the target, then open(O_CREAT)
    /// looks again): remembering the miss saves a round trip per new file. Names made
    /// through this mount replace the cached miss at once; a name made behind the mount's
    /// back is found within this time, as a deletion is within `entry_timeout`.
    pub negative_timeout: Duration,
    /// Ask for `FUSE_WRITEBACK_CACHE`: the kernel keeps written pages in its page cache
    /// and sends them later, in page-sized or larger requests, instead of one synchronous
    /// request per write(2). In return the kernel owns each open file's size and mtime
    /// (it no longer takes them from us), so changes made to the backing file behind the
    /// mount's back may not show until the kernel forgets the inode: opt-in, for backing
    /// directories only this mount writes.
    pub writeback_cache: bool,
    /// Send every close of a file opened for writing to the backing store as a flush, and
    /// fail the close(2) with what it says (no `FOPEN_NOFLUSH` for such files). For network
    /// stores (`-o shared`), which may acknowledge a write and fail it later: the caller
    /// must hear of it, at close if it does not fsync.
    pub flush_on_close: bool,
    /// Where each request the kernel sends is counted (read by `envfs status`).
    pub requests: Arc<RequestCounts>,
    /// Watch the backing store and turn its changes into invalidations (fuse/watch.rs),
    /// with these longer timeouts while every directory the kernel knows is watched.
    /// `None`: the store cannot report changes (a network filesystem) or `-o nowatch`.
    pub watch: Option<WatchOptions>,
    /// What POSIX ACLs are on this mount.
    pub acls: Acls,
}

/// What a mount does with POSIX ACLs (`system.posix_acl_access` and `_default`). They are
/// stored on the backing entry unchanged either way (SEMANTICS.md §10); the question is who
/// weighs them when a permission is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acls {
    /// The kernel checks every user's permissions (`default_permissions`, `allow_other`):
    /// it must weigh ACLs too (`FUSE_POSIX_ACL`), or an entry `getfacl` shows, granting or
    /// denying a user, would not count on the mount.
    Enforced,
    /// Only the mounting user reaches the mount, and every backing call runs as that user:
    /// the backing filesystem weighs the ACLs it stores for them.
    Stored,
    /// `-o noacl`: the mount has none. ACL calls fail with `EOPNOTSUPP`, which programs such
    /// as `ls -l` remember for the whole filesystem, where a "no ACL" answer costs a round
    /// trip per file every time (the kernel caches no ACL for a FUSE filesystem that does
    /// not ask it to enforce them). ACLs already on backing entries stay there, unseen.
    None,
}

impl Acls {
    /// Whether `name` is one of the two xattrs the kernel exposes POSIX ACLs as.
    pub fn is_acl(name: &OsStr) -> bool {
        matches!(
            name.as_bytes(),
            b"system.posix_acl_access" | b"system.posix_acl_default"
        )
    }

    /// `EOPNOTSUPP` for an ACL xattr on a mount that has none.
    fn refuse(self, name: &OsStr) -> Result<(), Errno> {
        if self == Acls::None && Acls::is_acl(name) {
            Err(Errno::EOPNOTSUPP)
        } else {
            Ok(())
        }
    }
}

/// The timeouts of a watched mount, and the watch's shared state.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    pub negative_timeout: Duration,
    pub state: Arc<watch::WatchState>,
}

impl WatchOptions {
    /// Long enough that a tree read once stays cached while it is worked on (`ls -lR`
    /// after a build, a second `grep -r`): a change is reported, not waited out.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            negative_timeout: Duration::from_secs(1),
            writeback_cache: false,
            flush_on_close: false,
            requests: Arc::default(),
            watch: None,
            acls: Acls::Stored,
        }
    }
}

/// A directory listing taken at opendir, with attributes (the kernel asks for them with
/// readdirplus, and `ls -l` would stat every entry anyway).
type DirSnapshot = Arc<Vec<(OsString, Attr)>>;

pub struct EnvFs {
    /// Shared with the daemon's status socket (`envfs status`), which reads its counters.
    fs: Arc<Fs>,
    /// Shared with the watcher thread (fuse/watch.rs), which maps changes to node ids.
    inodes: Arc<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, DirSnapshot>>,
    next_handle: AtomicU64,
    opts: AdapterOptions,
    /// When the daemon runs as root (allow_other), new nodes belong to the caller.
    chown_new_nodes: bool,
    /// How the debug log shows names (fuse/oplog.rs).
    name_tags: oplog::NameTags,
}

/// The attributes sent with a negative entry: the kernel looks only at the zero node id.
fn no_such_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl EnvFs {
    /// The watched mount's timeouts while every directory the kernel knows is watched,
    /// the short ones otherwise.
    fn watched(&self) -> Option<&WatchOptions> {
        self.opts.watch.as_ref().filter(|w| !w.state.is_degraded())
    }

    fn attr_ttl(&self) -> Duration {
        self.watched()
            .map_or(self.opts.attr_timeout, |w| w.attr_timeout)
    }

    fn entry_ttl(&self) -> Duration {
        self.watched()
            .map_or(self.opts.entry_timeout, |w| w.entry_timeout)
    }

    fn negative_ttl(&self) -> Duration {
        self.watched()
            .map_or(self.opts.negative_timeout, |w| w.negative_timeout)
    }

    /// Watch directory `attr` (node `node`, at `path`) before its entry reaches the
    /// kernel, when the mount watches.
    fn watch_if_dir(&self, node: u64, attr: &Attr, path: impl FnOnce() -> Option<PathBuf>) {
        if attr.kind == FileKind::Dir
            && let Some(w) = &self.opts.watch
            && w.state.wants(node)
            && let Some(path) = path()
        {
            w.state.watch(&self.fs, node, &path);
        }
    }

    /// The flags an open or create replies with: `FOPEN_NOFLUSH` unless the file is open
    /// for writing and closes must reach the store (`flush_on_close`).
    fn open_reply_flags(&self, open_flags: i32) -> FopenFlags {
        if self.opts.flush_on_close && open_flags & libc::O_ACCMODE != libc::O_RDONLY {
            FILE_OPEN_FLAGS - FopenFlags::FOPEN_NOFLUSH
        } else {
            FILE_OPEN_FLAGS
        }
    }

    /// The errno a failed step replies with. The core's errors pass by `Fs::observe`
    /// first, which notices a backing store that went away.
    fn fail(&self, e: impl IntoErrno) -> Errno {
        let errno = e.into_errno(&self.fs);
        oplog::note_failure(errno.code());
        errno
    }

    /// Count a request of `kind` and start its debug line (fuse/oplog.rs), which is
    /// written when the returned guard drops, after the reply.
    fn begin(&self, kind: Kind, ino: INodeNo, names: &[&OsStr]) -> oplog::Op {
        self.opts.requests.add(kind);
        oplog::Op::begin(kind.name(), ino.0, names, &self.name_tags)
    }
}

fn errno(e: &Error) -> Errno {
    if !matches!(e, Error::Io(_)) {
        tracing::debug!("request failed: {e}");
    }
    Errno::from_i32(e.errno())
}

/// What a failed step of a request replies with: the core's errors map through their
/// explicit errno, the adapter's own are errnos already.
trait IntoErrno {
    fn into_errno(self, fs: &Fs) -> Errno;
}

impl IntoErrno for Errno {
    fn into_errno(self, _fs: &Fs) -> Errno {
        self
    }
}

impl IntoErrno for Error {
    fn into_errno(self, fs: &Fs) -> Errno {
        fs.observe(&self);
        errno(&self)
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    })
}

impl EnvFs {
    pub fn new(fs: Arc<Fs>, opts: AdapterOptions) -> std::io::Result<EnvFs> {
        let (dev, ino) = fs
            .root_id()
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        fs.set_dir_cache_ttl(opts.entry_timeout);
        Ok(EnvFs {
            name_tags: oplog::NameTags::new(fs.vault().log_tag_key()),
            fs,
            inodes: Arc::new(Inodes::new(dev, ino)),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            opts,
            // SAFETY: geteuid has no preconditions.
            chown_new_nodes: unsafe { libc::geteuid() } == 0,
        })
    }

    fn fuse_attr(&self, attr: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.inodes.id_for(attr.dev, attr.ino)),
            size: attr.size,
            blocks: attr.blocks,
            atime: attr.atime,
            mtime: attr.mtime,
            ctime: attr.ctime,
            crtime: SystemTime::UNIX_EPOCH,
            kind: file_type(attr.kind),
            perm: attr.perm,
            nlink: attr.nlink,
            uid: attr.uid,
            gid: attr.gid,
            rdev: attr.rdev as u32,
            blksize: attr.blksize,
            flags: 0,
        }
    }

    fn owner(&self, req: &Request) -> Option<Owner> {
        self.chown_new_nodes.then(|| Owner {
            uid: req.uid(),
            gid: req.gid(),
        })
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes.path(ino.0).ok_or(Errno::ESTALE)
    }

    /// The node's path, checked to still lead to the node's own backing inode, for
    /// operations that change or open it: never act on a file that replaced it.
    fn verified_path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let path = self.path(ino)?;
        if ino.0 != inodes::ROOT {
            let attr = self.fs.getattr(&path).map_err(|e| self.fail(e))?;
            if self.inodes.id_for(attr.dev, attr.ino) != ino.0 {
                return Err(Errno::ESTALE);
            }
        }
        Ok(path)
    }

    /// Any open handle of node `ino` (for operations on files that lost their last name).
    fn open_handle_of(&self, ino: INodeNo) -> Option<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap()
            .values()
            .find(|h| {
                let (dev, backing_ino) = h.backing_id();
                self.inodes.id_for(dev, backing_ino) == ino.0
            })
            .cloned()
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        self.inodes.child_path(parent.0, name).ok_or(Errno::ESTALE)
    }

    /// Reply with a new entry and count the lookup the kernel now holds.
    fn reply_entry(&self, parent: INodeNo, name: &OsStr, attr: &Attr, reply: ReplyEntry) {
        let fattr = self.fuse_attr(attr);
        self.watch_if_dir(fattr.ino.0, attr, || self.inodes.child_path(parent.0, name));
        self.inodes.remember(fattr.ino.0, parent.0, name);
        // fuser's order: the attributes' timeout first, then the entry's.
        reply.entry_with_ttls(&self.attr_ttl(), &self.entry_ttl(), &fattr, Generation(0));
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(handle));
        fh
    }

    /// The open(2) flags the core sees. With the writeback cache the kernel places
    /// O_APPEND writes itself (at its own idea of the end of file) and sends them with
    /// explicit offsets, so the core must not move them again.
    fn open_flags(&self, flags: i32) -> i32 {
        if self.opts.writeback_cache {
            flags & !libc::O_APPEND
        } else {
            flags
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }
}

/// Helper: run a fallible body and reply with its errno on failure.
macro_rules! try_reply {
    ($adapter:expr, $reply:expr, $body:expr) => {
        match $body {
            Ok(v) => v,
            Err(e) => {
                $reply.error($adapter.fail(e));
                return;
            }
        }
    };
}

impl fuser::Filesystem for EnvFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_BIG_WRITES
            // We drop setuid/setgid ourselves (see `write` and `setattr`). In exchange the
            // kernel marks the superblock SB_NOSEC and stops asking for
            // `security.capability` before every write: one round trip less per write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let wanted = if self.opts.writeback_cache {
            wanted | InitFlags::FUSE_WRITEBACK_CACHE
        } else {
            wanted
        };
        let wanted = if self.opts.acls == Acls::Enforced {
            wanted | InitFlags::FUSE_POSIX_ACL
        } else {
            wanted
        };
        let supported = wanted & config.capabilities();
        let _ = config.add_capabilities(supported);
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        // Writes go straight to the backing store; make them durable before we exit.
        let _ = self.fs.sync_backing();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = self.begin(Kind::Lookup, parent, &[name]);
        let path = try_reply!(self, reply, self.child(parent, name));
        match self.fs.getattr(&path) {
            Ok(attr) => self.reply_entry(parent, name, &attr, reply),
            // Node id 0 with a timeout: "no such name" that the kernel may cache.
            // (attribute timeout, entry timeout): only the entry's is kept for a miss.
            Err(e) if e.errno() == libc::ENOENT && !self.negative_ttl().is_zero() => {
                oplog::note_failure(libc::ENOENT);
                reply.entry_with_ttls(
                    &Duration::ZERO,
                    &self.negative_ttl(),
                    &no_such_entry(),
                    Generation(0),
                )
            }
            Err(e) => reply.error(self.fail(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.inodes.forget(ino.0, nlookup)
            && let Some(w) = &self.opts.watch
        {
            w.state.forgotten(&self.fs, ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = self.begin(Kind::Getattr, ino, &[]);
        if let Some(h) = fh.and_then(|fh| self.handle(fh).ok()) {
            let attr = try_reply!(self, reply, self.fs.getattr_handle(&h));
            return reply.attr(&self.attr_ttl(), &self.fuse_attr(&attr));
        }
        let by_name = self
            .path(ino)
            .and_then(|path| self.fs.getattr(&path).map_err(|e| self.fail(e)))
            .map(|attr| self.fuse_attr(&attr));
        match by_name {
            Ok(fattr) if fattr.ino == ino || ino.0 == inodes::ROOT => {
                reply.attr(&self.attr_ttl(), &fattr)
            }
            // The node lost its name (unlinked, or renamed over) or the name now holds
            // another file. The kernel's fstat of a file still open comes here without its
            // handle: answer from an open handle of the node, which reports nlink 0.
            failed => match self.open_handle_of(ino) {
                Some(h) => {
                    let attr = try_reply!(self, reply, self.fs.getattr_handle(&h));
                    // Answered after all: the failed lookup by name is not the result.
                    oplog::clear_failure();
                    reply.attr(&self.attr_ttl(), &self.fuse_attr(&attr));
                }
                // Replaced behind our back: the kernel drops its stale entry and looks the
                // name up again.
                None => reply.error(self.fail(failed.err().unwrap_or(Errno::ESTALE))),
            },
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = self.begin(Kind::Setattr, ino, &[]);
        // Under FUSE_HANDLE_KILLPRIV_V2 the kernel no longer sends the mode without
        // setuid/setgid on a truncate by an unprivileged caller; it sets FATTR_KILL_SUIDGID,
        // which fuser does not pass on. Root stands in for CAP_FSETID. An empty setattr is
        // the kernel's own "remove privileges" request (fallocate, or a write to a setuid
        // file): nothing else sends one.
        let unprivileged = req.uid() != 0;
        let nothing_set = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none();
        let kill_suidgid = unprivileged && (size.is_some() || nothing_set);
        // With a handle (ftruncate), act on the open file itself: the file may have no name
        // any more. fchmod/fchown/futimens arrive without one; while the node is open
        // anywhere, act through that descriptor too. It is the node by construction, so no
        // stat is needed to check that the name still leads to it (on a network store
        // that stat is a round trip for every `cp -a`'d file), and a file whose every name
        // is gone is still reachable. A truncate by name keeps the path route, which opens
        // the file for writing.
        let handle = fh.and_then(|fh| self.handle(fh).ok()).or_else(|| {
            (size.is_none() || self.path(ino).is_err())
                .then(|| self.open_handle_of(ino))
                .flatten()
        });
        if let Some(handle) = handle {
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: time_set(atime),
                mtime: time_set(mtime),
                kill_suidgid,
            };
            let attr = try_reply!(self, reply, self.fs.setattr_handle(&handle, &set));
            reply.attr(&self.attr_ttl(), &self.fuse_attr(&attr));
            return;
        }
        let path = try_reply!(self, reply, self.path(ino));
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
            kill_suidgid,
        };
        // Never change a file that replaced the node: the check shares the setattr's stat.
        let same_node =
            |attr: &Attr| ino.0 == inodes::ROOT || self.inodes.id_for(attr.dev, attr.ino) == ino.0;
        let attr = try_reply!(
            self,
            reply,
            self.fs
                .setattr_verified(&path, handle.as_deref(), &set, same_node)
        );
        reply.attr(&self.attr_ttl(), &self.fuse_attr(&attr));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = self.begin(Kind::Readlink, ino, &[]);
        let path = try_reply!(self, reply, self.path(ino));
        let target = try_reply!(self, reply, self.fs.readlink(&path));
        reply.data(target.as_bytes());
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.begin(Kind::Mknod, parent, &[name]);
        let _changing = self.inodes.changing(&[(parent.0, name)]);
        let path = try_reply!(self, reply, self.child(parent, name));
        let mode = (mode & libc::S_IFMT) | (mode & !umask & 0o7777);
        let attr = try_reply!(
            self,
            reply,
            self.fs.mknod(&path, mode, rdev as u64, self.owner(req))
        );
        self.reply_entry(parent, name, &attr, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.begin(Kind::Mkdir, parent, &[name]);
        let _changing = self.inodes.changing(&[(parent.0, name)]);
        let path = try_reply!(self, reply, self.child(parent, name));
        let attr = try_reply!(
            self,
            reply,
            self.fs
                .mkdir(&path, mode & !umask & 0o7777, self.owner(req))
        );
        self.reply_entry(parent, name, &attr, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.begin(Kind::Unlink, parent, &[name]);
        let _changing = self.inodes.changing(&[(parent.0, name)]);
        let path = try_reply!(self, reply, self.child(parent, name));
        try_reply!(self, reply, self.fs.unlink(&path));
        self.inodes.unlinked(parent.0, name);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.begin(Kind::Rmdir, parent, &[name]);
        let _changing = self.inodes.changing(&[(parent.0, name)]);
        let path = try_reply!(self, reply, self.child(parent, name));
        try_reply!(self, reply, self.fs.rmdir(&path));
        self.inodes.unlinked(parent.0, name);
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _op = self.begin(Kind::Symlink, parent, &[link_name]);
        let _changing = self.inodes.changing(&[(parent.0, link_name)]);
        let path = try_reply!(self, reply, self.child(parent, link_name));
        let attr = try_reply!(
            self,
            reply,
            self.fs.symlink(target.as_os_str(), &path, self.owner(req))
        );
        self.reply_entry(parent, link_name, &attr, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Rename, parent, &[name, newname]);
        let _changing = self
            .inodes
            .changing(&[(parent.0, name), (newparent.0, newname)]);
        let from = try_reply!(self, reply, self.child(parent, name));
        let to = try_reply!(self, reply, self.child(newparent, newname));
        try_reply!(self, reply, self.fs.rename(&from, &to, flags.bits()));
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            self.inodes
                .exchanged((parent.0, name), (newparent.0, newname));
        } else {
            self.inodes.renamed(parent.0, name, newparent.0, newname);
        }
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = self.begin(Kind::Link, ino, &[newname]);
        let _changing = self.inodes.changing(&[(newparent.0, newname)]);
        let existing = try_reply!(self, reply, self.path(ino));
        let new = try_reply!(self, reply, self.child(newparent, newname));
        let attr = try_reply!(self, reply, self.fs.link(&existing, &new));
        self.reply_entry(newparent, newname, &attr, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.begin(Kind::Open, ino, &[]);
        let path = try_reply!(self, reply, self.verified_path(ino));
        let handle = try_reply!(self, reply, self.fs.open(&path, self.open_flags(flags.0)));
        // open(O_TRUNC) truncates here (FUSE_ATOMIC_O_TRUNC), so dropping setuid/setgid for
        // an unprivileged caller is ours too (the kernel's FUSE_OPEN_KILL_SUIDGID, which
        // fuser does not pass on; root stands in for CAP_FSETID as in `setattr`).
        if flags.0 & libc::O_TRUNC != 0 && req.uid() != 0 {
            try_reply!(self, reply, self.fs.kill_suidgid(&handle));
        }
        // No FOPEN_KEEP_CACHE: each open drops cached pages, so a file changed on the
        // backing store behind our back is never served stale after a reopen.
        let open_flags = self.open_reply_flags(flags.0);
        reply.opened(FileHandle(self.add_handle(handle)), open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let _op = self.begin(Kind::Read, _ino, &[]);
        let handle = try_reply!(self, reply, self.handle(fh));
        let data = try_reply!(self, reply, self.fs.read(&handle, offset, size as usize));
        reply.data(&data);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = self.begin(Kind::Write, _ino, &[]);
        let handle = try_reply!(self, reply, self.handle(fh));
        // Set by the kernel when the writer lacks CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2).
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            try_reply!(self, reply, self.fs.kill_suidgid(&handle));
        }
        let n = try_reply!(self, reply, self.fs.write(&handle, offset, data));
        reply.written(n as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Flush, _ino, &[]);
        // Every write reached the backing store before it was acknowledged; only a store
        // that may still refuse it (flush_on_close) is asked again.
        if self.opts.flush_on_close {
            let handle = try_reply!(self, reply, self.handle(fh));
            try_reply!(self, reply, self.fs.flush(&handle));
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Release, _ino, &[]);
        self.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Fsync, _ino, &[]);
        let handle = try_reply!(self, reply, self.handle(fh));
        try_reply!(self, reply, self.fs.fsync(&handle, datasync));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.begin(Kind::Opendir, ino, &[]);
        let path = try_reply!(self, reply, self.path(ino));
        let entries = try_reply!(self, reply, self.fs.readdir_plus(&path));
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, Arc::new(entries));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = self.begin(Kind::Readdir, ino, &[]);
        let snapshot = try_reply!(
            self,
            reply,
            self.dirs
                .lock()
                .unwrap()
                .get(&fh.0)
                .cloned()
                .ok_or(Errno::EBADF)
        );
        // Offsets: 1 is ".", 2 is "..", 3.. are the snapshot's entries.
        for i in offset as usize..2 + snapshot.len() {
            let full = match i {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(ino, 2, FileType::Directory, ".."),
                _ => {
                    let (name, attr) = &snapshot[i - 2];
                    let id = self.inodes.id_for(attr.dev, attr.ino);
                    reply.add(INodeNo(id), i as u64 + 1, file_type(attr.kind), name)
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = self.begin(Kind::Readdirplus, ino, &[]);
        let snapshot = try_reply!(
            self,
            reply,
            self.dirs
                .lock()
                .unwrap()
                .get(&fh.0)
                .cloned()
                .ok_or(Errno::EBADF)
        );
        let dir_attr = if offset < 2 {
            let path = try_reply!(self, reply, self.path(ino));
            Some(try_reply!(self, reply, self.fs.getattr(&path)))
        } else {
            None
        };
        for i in offset as usize..2 + snapshot.len() {
            // "." and ".." carry the directory's own attributes; the kernel does not count
            // them as lookups.
            let (name, attr) = match i {
                0 => (OsStr::new("."), dir_attr.as_ref().expect("offset < 2")),
                1 => (OsStr::new(".."), dir_attr.as_ref().expect("offset < 2")),
                _ => (snapshot[i - 2].0.as_os_str(), &snapshot[i - 2].1),
            };
            let fattr = self.fuse_attr(attr);
            if i >= 2 {
                self.watch_if_dir(fattr.ino.0, attr, || self.inodes.child_path(ino.0, name));
            }
            if reply.add(
                fattr.ino,
                i as u64 + 1,
                name,
                &self.entry_ttl(),
                &fattr,
                Generation(0),
            ) {
                break;
            }
            if i >= 2 {
                self.inodes.remember(fattr.ino.0, ino.0, name);
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Releasedir, _ino, &[]);
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Fsyncdir, ino, &[]);
        let path = try_reply!(self, reply, self.path(ino));
        try_reply!(self, reply, self.fs.fsyncdir(&path));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = self.begin(Kind::Statfs, _ino, &[]);
        let st = try_reply!(self, reply, self.fs.statfs());
        reply.statfs(
            st.blocks, st.bfree, st.bavail, st.files, st.ffree, st.bsize, st.namelen, st.frsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Setxattr, ino, &[name]);
        try_reply!(self, reply, self.opts.acls.refuse(name));
        let path = try_reply!(self, reply, self.path(ino));
        try_reply!(self, reply, self.fs.setxattr(&path, name, value, flags));
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = self.begin(Kind::Getxattr, ino, &[name]);
        try_reply!(self, reply, self.opts.acls.refuse(name));
        let path = try_reply!(self, reply, self.path(ino));
        let value = try_reply!(self, reply, self.fs.getxattr(&path, name));
        xattr_reply(reply, &value, size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = self.begin(Kind::Listxattr, ino, &[]);
        let path = try_reply!(self, reply, self.path(ino));
        let names = try_reply!(self, reply, self.fs.listxattr(&path));
        let mut buf = Vec::new();
        for n in names {
            if self.opts.acls.refuse(&n).is_err() {
                continue;
            }
            buf.extend_from_slice(n.as_bytes());
            buf.push(0);
        }
        xattr_reply(reply, &buf, size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.begin(Kind::Removexattr, ino, &[name]);
        try_reply!(self, reply, self.opts.acls.refuse(name));
        let path = try_reply!(self, reply, self.path(ino));
        try_reply!(self, reply, self.fs.removexattr(&path, name));
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _op = self.begin(Kind::Access, ino, &[]);
        // Only called without default_permissions, i.e. when only the mounting user can
        // reach the mount: the backing store's own check, as that user, is the right one.
        let path = try_reply!(self, reply, self.path(ino));
        try_reply!(self, reply, self.fs.access(&path, mask.bits()));
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = self.begin(Kind::Create, parent, &[name]);
        let _changing = self.inodes.changing(&[(parent.0, name)]);
        let path = try_reply!(self, reply, self.child(parent, name));
        let (handle, attr) = try_reply!(
            self,
            reply,
            self.fs.create(
                &path,
                mode & !umask & 0o7777,
                self.open_flags(flags),
                self.owner(req)
            )
        );
        let fattr = self.fuse_attr(&attr);
        self.inodes.remember(fattr.ino.0, parent.0, name);
        let fh = self.add_handle(handle);
        // fuser's create reply takes one timeout for the entry and its attributes: the
        // entry's, so that the new name is not looked up again at once. A file just created
        // through this mount keeps its attributes that long even in shared mode.
        reply.created(
            &self.entry_ttl(),
            &fattr,
            Generation(0),
            FileHandle(fh),
            self.open_reply_flags(flags),
        );
    }

    /// No ioctl is served: a program asking (isatty's TCGETS on a file, say) hears "not a
    /// terminal or such device", as from a plain file, and nothing is logged.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _op = self.begin(Kind::Other, _ino, &[]);
        reply.error(self.fail(Errno::ENOTTY));
    }

    // The kernel takes ENOSYS for these as "not offered" and serves them itself from then
    // on (generic lseek, copy_file_range falling back to read and write, poll always
    // ready): replied quietly, where fuser's defaults would log a warning each.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let _op = self.begin(Kind::Other, _ino, &[]);
        reply.error(self.fail(Errno::ENOSYS));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _op = self.begin(Kind::Other, _ino_in, &[]);
        reply.error(self.fail(Errno::ENOSYS));
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        let _op = self.begin(Kind::Other, _ino, &[]);
        reply.error(self.fail(Errno::ENOSYS));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin(Kind::Fallocate, _ino, &[]);
        let handle = try_reply!(self, reply, self.handle(fh));
        try_reply!(
            self,
            reply,
            self.fs.fallocate(&handle, offset, length, mode)
        );
        reply.ok();
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; too small a buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        oplog::note_failure(libc::ERANGE);
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
