//! What the backing store can do, found out once by trying it.
//!
//! envfs runs on whatever the operator's backing directory is: a local disk, an NFS or SMB
//! share, sshfs, a sync folder. They differ in exactly the things envfs relies on (a
//! symlink's own owner, hard links that share one inode, user xattrs, fallocate, locks,
//! timestamp precision, path length, case), and a difference found only when an operation
//! fails reads as a bug in envfs. So the mount (and `envfs info`) probes the store once, in
//! a scratch directory of its own (`.envfs-probe-*`, a reserved name the mount never shows),
//! and says in one line what the store lacks and what envfs does about it
//! (docs/OPERATIONS.md "Backing stores").
//!
//! Nothing here decides policy beyond that line: the fs core asks [`Capabilities`] where it
//! adapts. The probe never fails: what it could not try is `Unknown`.

use super::{BackingRoot, Dir};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The answer to one question about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Yes,
    No,
    /// Not tried (a read-only store) or the attempt failed for another reason.
    Unknown,
}

impl Probe {
    fn of(b: bool) -> Probe {
        if b { Probe::Yes } else { Probe::No }
    }

    /// The answer an attempt gives: it worked (yes), the store refused it with one of the
    /// errnos that mean "not offered here" (no), or it failed some other way (unknown, so
    /// that a transient error never reads as a missing feature).
    fn answer<T>(attempt: io::Result<T>, not_offered: &[i32]) -> Probe {
        match attempt {
            Ok(_) => Probe::Yes,
            Err(e) if e.raw_os_error().is_some_and(|n| not_offered.contains(&n)) => Probe::No,
            Err(_) => Probe::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Yes => "yes",
            Probe::No => "no",
            Probe::Unknown => "unknown",
        }
    }

    pub fn is_no(self) -> bool {
        self == Probe::No
    }
}

/// What the backing store offers, as the probe found it.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The filesystem type of the mount holding the backing directory, from
    /// /proc/self/mountinfo (`ext4`, `nfs4`, `fuse.sshfs`, …).
    pub fs_type: String,
    /// Its mount options, from the same line (`nolock`, `nobrl` matter for locks).
    pub mount_options: String,
    /// A filesystem other hosts may write at the same time.
    pub network: bool,
    /// The write probes ran (false: a read-only store, or no room for a scratch directory).
    pub writable: bool,
    pub symlinks: Probe,
    /// A symlink's own owner can be changed (sshfs follows the link instead).
    pub symlink_owner: Probe,
    /// A symlink's own times can be set (sshfs follows the link instead).
    pub symlink_times: Probe,
    pub hard_links: Probe,
    /// Both names of a hard link report one inode number and a link count of 2 (sshfs
    /// reports its own number per name and a count of 1).
    pub hard_links_share_inode: Probe,
    pub user_xattrs: Probe,
    pub fallocate: Probe,
    /// Open-file-description locks are accepted.
    pub ofd_locks: Probe,
    /// Locks taken here are seen by other hosts using the same share. Yes on a local disk
    /// (there is one host); on a network store, from its type and mount options.
    pub locks_between_hosts: Probe,
    /// The finest timestamp step the store keeps (1 ns on ext4, 1 s on sshfs).
    pub time_granularity: Option<Duration>,
    /// Longest name (statvfs f_namemax).
    pub name_max: u64,
    /// A backing path longer than PATH_MAX (4096 bytes) can be made: envfs reaches
    /// entries relative to directory descriptors, but a store that sends whole paths to a
    /// server (sshfs, SMB) is limited by the server.
    pub long_paths: Probe,
    pub case_sensitive: Probe,
    pub rename_noreplace: Probe,
    pub rename_exchange: Probe,
    pub o_direct: Probe,
}

/// Filesystem types (mountinfo spelling) whose files other hosts may change.
const NETWORK_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "gfs2",
    "ocfs2",
    "lustre",
    "beegfs",
    "gpfs",
    "davfs",
    "fuse.sshfs",
    "fuse.rclone",
    "fuse.s3fs",
    "fuse.glusterfs",
    "fuse.ceph-fuse",
    "fuse.davfs",
    "fuse.gcsfuse",
    "fuse.mountpoint-s3",
    "fuse.juicefs",
    "fuse.seaweedfs",
    "fuse.goofys",
];

/// Whether a filesystem type is one other hosts may write.
pub fn is_network_type(fs_type: &str) -> bool {
    NETWORK_TYPES.contains(&fs_type)
}

/// Whether locks on a store of this type (with these mount options) reach other hosts.
/// NFS and SMB carry byte-range locks to the server unless mounted `nolock`/`local_lock`
/// or `nobrl`; a FUSE network filesystem that does not implement locks (sshfs: SFTP has
/// none) leaves them in this host's kernel.
fn locks_reach_other_hosts(fs_type: &str, options: &str) -> Probe {
    let has = |o: &str| {
        options
            .split(',')
            .any(|x| x == o || x.starts_with(&format!("{o}=")))
    };
    match fs_type {
        _ if !is_network_type(fs_type) => Probe::Yes,
        "nfs" | "nfs4" => Probe::of(
            !has("nolock")
                && !options
                    .split(',')
                    .any(|o| o == "local_lock=all" || o == "local_lock=posix"),
        ),
        "cifs" | "smb3" => Probe::of(!has("nobrl")),
        "ceph" | "glusterfs" | "gfs2" | "ocfs2" | "lustre" | "gpfs" | "beegfs" => Probe::Yes,
        _ if fs_type.starts_with("fuse.") => Probe::No,
        _ => Probe::Unknown,
    }
}

/// The mountinfo line of the mount whose device is `dev`: (fs type, mount options).
fn mount_of(dev: u64) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    // Several mounts may share a device (bind mounts): the last one mounted is the one a
    // path resolves to, and they share the type anyway.
    text.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != want {
            return None;
        }
        let options = fields.nth(2)?.to_string();
        let mut rest = fields.skip_while(|f| *f != "-");
        rest.next()?;
        Some((rest.next()?.to_string(), options))
    })
}

/// The name of the scratch directory; `.envfs-` makes it reserved (never shown).
const PREFIX: &str = ".envfs-probe-";

/// Scratch directories older than this are another probe's, interrupted: removed.
const STALE: Duration = Duration::from_secs(3600);

/// One component name long enough that a few reach past PATH_MAX quickly.
const LONG_COMPONENT: usize = 200;

/// How much a probe may do to find out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only look: type, options, name length (a read-only mount).
    Look,
    /// Every probe but paths past PATH_MAX: about 50 backing operations, each a round trip
    /// on a network store. What each mount does.
    Mount,
    /// Everything, long paths too (about 200 more operations): `envfs info`.
    Full,
}

/// Probe the store at `root`, as deep as `depth` allows; leaves nothing behind unless
/// interrupted (then the next probe removes it).
pub fn probe(root: &BackingRoot, depth: Depth) -> Capabilities {
    let top = root.root();
    let dev = top
        .as_ref()
        .ok()
        .and_then(|d| d.stat_self().ok())
        .map(|st| st.st_dev);
    let (fs_type, mount_options) = dev.and_then(mount_of).unwrap_or_default();
    let network = is_network_type(&fs_type);
    let name_max = top
        .as_ref()
        .ok()
        .and_then(|d| d.statvfs().ok())
        .map_or(255, |st| st.f_namemax);
    let mut caps = Capabilities {
        locks_between_hosts: locks_reach_other_hosts(&fs_type, &mount_options),
        fs_type,
        mount_options,
        network,
        writable: false,
        symlinks: Probe::Unknown,
        symlink_owner: Probe::Unknown,
        symlink_times: Probe::Unknown,
        hard_links: Probe::Unknown,
        hard_links_share_inode: Probe::Unknown,
        user_xattrs: Probe::Unknown,
        fallocate: Probe::Unknown,
        ofd_locks: Probe::Unknown,
        time_granularity: None,
        name_max,
        long_paths: Probe::Unknown,
        case_sensitive: Probe::Unknown,
        rename_noreplace: Probe::Unknown,
        rename_exchange: Probe::Unknown,
        o_direct: Probe::Unknown,
    };
    let Ok(top) = top else { return caps };
    if depth == Depth::Look {
        return caps;
    }
    remove_stale(&top);
    let scratch = OsString::from(format!("{PREFIX}{:016x}", scratch_id()));
    if top.mkdir(&scratch, 0o700).is_err() {
        return caps;
    }
    if let Ok(dir) = top.subdir(&scratch) {
        caps.writable = true;
        probe_in(&dir, &mut caps);
        if depth == Depth::Full {
            caps.long_paths = long_paths(&dir);
        }
    }
    remove_tree(&top, &scratch);
    caps
}

/// A random id for the scratch directory, so that hosts probing one share at once never
/// share one (from getrandom; the crypto layer sits above this one).
fn scratch_id() -> u64 {
    let mut id = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `id`.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != 8 {
        // No randomness: the time and pid still tell this probe from another.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.as_nanos() as u64) ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(id)
}

fn probe_in(dir: &Dir, caps: &mut Capabilities) {
    let name = |s: &str| OsString::from(s);
    let Ok(file) = dir.open_file(
        &name("f"),
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        0o600,
    ) else {
        caps.writable = false;
        return;
    };
    let _ = file.set_len(0);
    caps.fallocate = Probe::answer(
        super::sys::fallocate(&file, libc::FALLOC_FL_KEEP_SIZE, 0, 4096),
        &[libc::EOPNOTSUPP, libc::ENOSYS],
    );
    caps.ofd_locks = Probe::answer(
        ofd_try_lock(&file),
        &[libc::ENOLCK, libc::EINVAL, libc::EOPNOTSUPP],
    );
    caps.user_xattrs = Probe::answer(
        super::sys::setxattr(
            super::sys::XattrOf::Fd(std::os::fd::AsFd::as_fd(&file)),
            OsStr::new("user.envfs-probe"),
            b"1",
            0,
        ),
        &[libc::EOPNOTSUPP, libc::ENOSYS, libc::EPERM],
    );
    caps.time_granularity = time_granularity(&file);
    drop(file);

    caps.case_sensitive = match dir.stat(&name("F")) {
        Ok(_) => Probe::No,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Probe::Yes,
        Err(_) => Probe::Unknown,
    };
    caps.o_direct = Probe::answer(
        dir.open_file(&name("f"), libc::O_RDONLY | libc::O_DIRECT, 0),
        &[libc::EINVAL],
    );

    match dir.link(&name("f"), dir, &name("h")) {
        Ok(()) => {
            caps.hard_links = Probe::Yes;
            caps.hard_links_share_inode = match (dir.stat(&name("f")), dir.stat(&name("h"))) {
                (Ok(a), Ok(b)) => {
                    Probe::of(a.st_ino == b.st_ino && a.st_nlink == 2 && b.st_nlink == 2)
                }
                _ => Probe::Unknown,
            };
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK)
            ) =>
        {
            caps.hard_links = Probe::No;
            caps.hard_links_share_inode = Probe::No;
        }
        Err(_) => {}
    }

    // Rename flags: NOREPLACE onto a free name, EXCHANGE of two files that exist.
    let _ = dir.open_file(&name("g"), libc::O_CREAT | libc::O_WRONLY, 0o600);
    caps.rename_noreplace = rename_flag(dir, "g", "n", libc::RENAME_NOREPLACE);
    let g = if caps.rename_noreplace == Probe::Yes {
        "n"
    } else {
        "g"
    };
    caps.rename_exchange = rename_flag(dir, g, "f", libc::RENAME_EXCHANGE);

    match dir.symlink(OsStr::new("no-such-target"), &name("s")) {
        Ok(()) => {
            caps.symlinks = Probe::Yes;
            // The daemon's own ids: a change to what the link already has still asks the
            // store to do it, and a store that follows the link fails on the missing target.
            let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
            // ENOENT: the store followed the link to its (missing) target.
            let followed = [libc::ENOENT, libc::EOPNOTSUPP, libc::EPERM];
            caps.symlink_owner =
                Probe::answer(dir.chown(&name("s"), Some(uid), Some(gid)), &followed);
            let now = super::sys::timespec_of(Some(super::sys::TimeSet::Now));
            caps.symlink_times = Probe::answer(dir.set_times(&name("s"), now, now), &followed);
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)
            ) =>
        {
            caps.symlinks = Probe::No;
            caps.symlink_owner = Probe::No;
            caps.symlink_times = Probe::No;
        }
        Err(_) => {}
    }
}

fn ofd_try_lock(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: zeroed flock is valid; every field F_OFD_SETLK reads is set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_len = 1;
    // SAFETY: valid fd and flock pointer.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    fl.l_type = libc::F_UNLCK as libc::c_short;
    // SAFETY: as above.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    Ok(())
}

/// Set a modification time with every nanosecond digit used and see which survive: the
/// store keeps times to the step of the first digit it dropped.
fn time_granularity(file: &std::fs::File) -> Option<Duration> {
    const NANOS: u32 = 123_456_789;
    let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, NANOS);
    super::sys::set_times_fd(
        file,
        Some(super::sys::TimeSet::At(at)),
        Some(super::sys::TimeSet::At(at)),
    )
    .ok()?;
    let st = super::sys::fstat(file).ok()?;
    if st.st_mtime != 1_700_000_000 {
        return None;
    }
    let kept = st.st_mtime_nsec as u32;
    let mut step = 1u32;
    while step < 1_000_000_000 && NANOS / step * step != kept {
        step *= 10;
    }
    (NANOS / step * step == kept || kept == 0).then(|| Duration::from_nanos(step.into()))
}

fn rename_flag(dir: &Dir, from: &str, to: &str, flag: u32) -> Probe {
    Probe::answer(
        dir.rename(OsStr::new(from), dir, OsStr::new(to), flag),
        &[libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP],
    )
}

/// Whether directories nested past PATH_MAX (relative to the scratch directory) can hold a
/// file. Each level is one mkdir: about 22 round trips on a network store, only when the
/// store accepts long names at all.
fn long_paths(scratch: &Dir) -> Probe {
    let component = OsString::from("d".repeat(LONG_COMPONENT.min(255)));
    let levels = libc::PATH_MAX as usize / (LONG_COMPONENT + 1) + 1;
    let mut deepest: Option<Dir> = None;
    for _ in 0..levels {
        let parent = deepest.as_ref().unwrap_or(scratch);
        if let Err(e) = parent.mkdir(&component, 0o700) {
            return if too_long(&e) {
                Probe::No
            } else {
                Probe::Unknown
            };
        }
        let next = match parent.subdir(&component) {
            Ok(d) => d,
            Err(e) if too_long(&e) => return Probe::No,
            Err(_) => return Probe::Unknown,
        };
        deepest = Some(next);
    }
    match deepest.as_ref().unwrap_or(scratch).open_file(
        OsStr::new("f"),
        libc::O_CREAT | libc::O_WRONLY,
        0o600,
    ) {
        Ok(_) => Probe::Yes,
        Err(e) if too_long(&e) => Probe::No,
        Err(_) => Probe::Unknown,
    }
}

/// How a store says a path is too long: ENAMETOOLONG, or (sshfs, whose server cannot take
/// the path) EBADMSG.
fn too_long(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG | libc::EBADMSG))
}

/// Remove `name` (a directory of `parent`) and everything under it, depth first. Bounded:
/// the probe makes at most a few dozen entries; a tree far larger is not ours to delete.
fn remove_tree(parent: &Dir, name: &OsStr) {
    fn remove(parent: &Dir, name: &OsStr, budget: &mut u32) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        if parent.unlink(name).is_ok() {
            return;
        }
        if let Ok(dir) = parent.subdir(name) {
            for child in dir.list().unwrap_or_default() {
                remove(&dir, &child, budget);
            }
        }
        let _ = parent.rmdir(name);
    }
    let mut budget = 200;
    remove(parent, name, &mut budget);
}

/// Scratch directories left by an interrupted probe (a daemon killed while mounting).
/// Another host's probe running right now is recent, so left alone.
fn remove_stale(top: &Dir) {
    let Ok(names) = top.list() else { return };
    for name in names {
        if !name.as_bytes().starts_with(PREFIX.as_bytes()) {
            continue;
        }
        let old = top.stat(&name).ok().and_then(|st| {
            let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
            SystemTime::now().duration_since(mtime).ok()
        });
        if old.is_some_and(|age| age > STALE) {
            remove_tree(top, &name);
        }
    }
}

impl Capabilities {
    /// What the store lacks that envfs relies on, each with what envfs does about it, for
    /// the mount's one summary line and `envfs info`.
    pub fn lacks(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if !self.writable {
            out.push((
                "a probe that writes (a read-only mount or store)",
                "what it would have found is unknown",
            ));
        }
        if self.symlinks.is_no() {
            out.push(("symlinks", "creating one fails with the store's error"));
        } else {
            if self.symlink_owner.is_no() {
                out.push((
                    "symlink owners",
                    "a symlink keeps the owner the store gives it; changing it to another fails with EPERM",
                ));
            }
            if self.symlink_times.is_no() {
                out.push((
                    "symlink times",
                    "a symlink's times are the store's: setting them is accepted and not kept",
                ));
            }
        }
        if self.hard_links.is_no() {
            out.push(("hard links", "creating one fails with the store's error"));
        } else if self.hard_links_share_inode.is_no() {
            out.push((
                "hard links that share an inode",
                "each name of a hard link shows as its own file (link count 1)",
            ));
        }
        if self.user_xattrs.is_no() {
            out.push(("user xattrs", "setting one fails with EOPNOTSUPP"));
        }
        if self.fallocate.is_no() {
            out.push((
                "fallocate",
                "a write that grows a file is undone on ENOSPC instead of reserved first",
            ));
        }
        if self.ofd_locks.is_no() {
            out.push((
                "OFD locks",
                "file headers are created unlocked: two mounts must not create one file at once",
            ));
        } else if self.locks_between_hosts.is_no() {
            out.push((
                "locks shared between hosts",
                "locks are this host's only: two hosts must not write one file at once",
            ));
        }
        if self
            .time_granularity
            .is_some_and(|g| g >= Duration::from_secs(1))
        {
            out.push((
                "sub-second timestamps",
                "times are kept to the second (rsync: --modify-window=1)",
            ));
        }
        if self.long_paths.is_no() {
            out.push((
                "paths over 4096 bytes",
                "deeper paths fail with the store's error (sshfs: EBADMSG)",
            ));
        }
        if self.case_sensitive.is_no() {
            out.push((
                "case-sensitive names",
                "only a vault with base32 names can be mounted",
            ));
        }
        if self.rename_noreplace.is_no() || self.rename_exchange.is_no() {
            out.push((
                "renameat2 flags",
                "rename with NOREPLACE or EXCHANGE fails with EINVAL",
            ));
        }
        out
    }

    /// The one line the mount logs.
    pub fn summary(&self, path: &Path) -> String {
        format!("backing store {} {}", path.display(), self.verdict())
    }

    /// "(type, local|network) lacks: what (what envfs does); …", or that it lacks nothing.
    pub fn verdict(&self) -> String {
        let kind = if self.network { "network" } else { "local" };
        let lacks = self.lacks();
        if lacks.is_empty() {
            return format!(
                "({}, {kind}): has everything envfs uses",
                self.fs_type_shown()
            );
        }
        let list: Vec<String> = lacks
            .iter()
            .map(|(what, does)| format!("{what} ({does})"))
            .collect();
        format!(
            "({}, {kind}) lacks: {}",
            self.fs_type_shown(),
            list.join("; ")
        )
    }

    /// Why the kernel cannot report every change to this store (docs/SEMANTICS.md §5), or
    /// `None` when it can. inotify sees what passes through this host's VFS: on a network
    /// filesystem other hosts write without it, and beneath a FUSE filesystem (`fuse.*`;
    /// `fuseblk` is a local device) whatever its daemon serves can change unseen.
    pub fn why_unwatchable(&self) -> Option<String> {
        if self.network {
            Some(format!(
                "{} is a network filesystem: other hosts' changes never reach this host's inotify",
                self.fs_type_shown()
            ))
        } else if self.fs_type.starts_with("fuse.")
            || self.fs_type == "fuse"
            || self.fs_type.is_empty()
        {
            Some(format!(
                "{} hides changes made beneath its daemon from inotify",
                self.fs_type_shown()
            ))
        } else {
            None
        }
    }

    pub fn fs_type_shown(&self) -> &str {
        if self.fs_type.is_empty() {
            "unknown type"
        } else {
            &self.fs_type
        }
    }

    /// Every answer, as (name, value) pairs, for `envfs info` and `envfs status`.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let p = |x: Probe| x.as_str().to_string();
        vec![
            ("type", self.fs_type_shown().to_string()),
            ("network", Probe::of(self.network).as_str().to_string()),
            ("writable", Probe::of(self.writable).as_str().to_string()),
            ("symlinks", p(self.symlinks)),
            ("symlink_owner", p(self.symlink_owner)),
            ("symlink_times", p(self.symlink_times)),
            ("hard_links", p(self.hard_links)),
            ("hard_links_share_inode", p(self.hard_links_share_inode)),
            ("user_xattrs", p(self.user_xattrs)),
            ("fallocate", p(self.fallocate)),
            ("ofd_locks", p(self.ofd_locks)),
            ("locks_between_hosts", p(self.locks_between_hosts)),
            (
                "time_granularity",
                self.time_granularity
                    .map_or("unknown".to_string(), |g| format!("{g:?}")),
            ),
            ("name_max", self.name_max.to_string()),
            ("long_paths", p(self.long_paths)),
            ("case_sensitive", p(self.case_sensitive)),
            ("rename_noreplace", p(self.rename_noreplace)),
            ("rename_exchange", p(self.rename_exchange)),
            ("o_direct", p(self.o_direct)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_has_what_ext4_or_tmpfs_has() {
        let dir = tempfile::tempdir().unwrap();
        let root = BackingRoot::open(dir.path()).unwrap();
        let caps = probe(&root, Depth::Full);
        assert!(caps.writable);
        assert!(!caps.network, "{caps:?}");
        assert_eq!(caps.symlinks, Probe::Yes);
        assert_eq!(caps.symlink_owner, Probe::Yes);
        assert_eq!(caps.symlink_times, Probe::Yes);
        assert_eq!(caps.hard_links_share_inode, Probe::Yes);
        assert_eq!(caps.case_sensitive, Probe::Yes);
        assert_eq!(caps.rename_noreplace, Probe::Yes);
        assert_eq!(caps.rename_exchange, Probe::Yes);
        assert_eq!(caps.long_paths, Probe::Yes);
        assert!(caps.time_granularity.unwrap() < Duration::from_secs(1));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe leaves nothing behind"
        );
    }

    #[test]
    fn a_stale_scratch_directory_is_removed_and_a_fresh_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".envfs-probe-00000000000000aa");
        let fresh = dir.path().join(".envfs-probe-00000000000000bb");
        std::fs::create_dir_all(stale.join("x")).unwrap();
        std::fs::write(stale.join("x/f"), b"").unwrap();
        std::fs::create_dir(&fresh).unwrap();
        let old = std::fs::File::open(&stale).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        probe(&BackingRoot::open(dir.path()).unwrap(), Depth::Full);
        assert!(!stale.exists());
        assert!(fresh.exists(), "another host's probe may be running");
    }

    #[test]
    fn locks_reach_other_hosts_by_type_and_options() {
        assert_eq!(locks_reach_other_hosts("ext4", "rw"), Probe::Yes);
        assert_eq!(locks_reach_other_hosts("nfs4", "rw,hard"), Probe::Yes);
        assert_eq!(locks_reach_other_hosts("nfs", "rw,nolock"), Probe::No);
        assert_eq!(
            locks_reach_other_hosts("nfs4", "rw,local_lock=all"),
            Probe::No
        );
        assert_eq!(locks_reach_other_hosts("cifs", "rw,nobrl"), Probe::No);
        assert_eq!(locks_reach_other_hosts("fuse.sshfs", "rw"), Probe::No);
    }
}
