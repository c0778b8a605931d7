//! The FUSE session: the kernel side of a mount. Mounting (our own mount(2) as root, so the
//! mount has the type `fuse.envfs`; fuser and fusermount3 otherwise), serving requests
//! until the filesystem is unmounted, unmounting on a shutdown signal, and `envfs umount`'s
//! unmount. The CLI says what it wants with a `MountSpec` and gets a `Session` back: no
//! fuser type crosses this module's API, so fuser stays inside `fuse/`.

use super::{AdapterOptions, EnvFs};
use crate::error::{Error, Result};
use crate::fs::Fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// What the kernel mount should look like.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// The mount's source as `findmnt` shows it: the backing directory.
    pub fs_name: String,
    pub read_only: bool,
    pub allow_other: bool,
    pub default_permissions: bool,
    /// Kernel mount flags to pass on (`nosuid`, `dev`, `noexec`, `noatime`, …).
    pub kernel_flags: Vec<String>,
    /// FUSE worker threads; `None` for the default (4 per core, 8 to 32).
    pub threads: Option<usize>,
    pub adapter: AdapterOptions,
}

fn mount_error(msg: String) -> Error {
    Error::Mount(msg)
}

// ---- the kernel's mount table ---------------------------------------------------------

/// Is `path` currently a mount point (per /proc/self/mountinfo)?
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        line.split(' ').nth(4).map(unescape_mount_path).as_deref()
            == Some(canon.as_os_str().to_string_lossy().as_ref())
    })
}

/// The filesystem type of the mount at `path`, if it is one.
pub fn mount_fstype(path: &Path) -> Option<String> {
    let canon = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let mount_point = unescape_mount_path(line.split(' ').nth(4)?);
        if mount_point != canon.to_string_lossy() {
            return None;
        }
        let after = line.split(" - ").nth(1)?;
        after.split(' ').next().map(str::to_string)
    })
}

fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The `major:minor` device of the mount at `path`, from mountinfo: a stat of the mountpoint
/// would ask the filesystem, which is not serving yet.
pub fn mount_device(path: &Path) -> Option<String> {
    let canon = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let device = fields.nth(2)?;
        let mount_point = unescape_mount_path(fields.nth(1)?);
        (mount_point == canon.to_string_lossy()).then(|| device.to_string())
    })
}

/// A mounted filesystem, ready to serve, and the watcher keeping its caches true (when the
/// backing store is watched).
pub struct Session(fuser::Session<EnvFs>, Option<super::watch::Watcher>);

/// Mount `fs` on `mountpoint` and return the session, ready to serve: as root with our
/// own mount(2) (type `fuse.envfs`, which mount(8), fstab and `envfs umount` know), otherwise
/// through fusermount3.
pub fn mount(fs: std::sync::Arc<Fs>, mountpoint: &Path, spec: &MountSpec) -> Result<Session> {
    use fuser::MountOption as M;
    let config = spec;
    let core = fs;
    let fs = EnvFs::new(core.clone(), spec.adapter.clone())?;
    let inodes = fs.inodes.clone();
    // The watcher needs the session's notifier, so it starts once the session exists:
    // before any request is served, so nothing is cached before the root is watched.
    let with_watcher = |session: fuser::Session<EnvFs>| {
        let watcher =
            spec.adapter.watch.as_ref().and_then(|w| {
                super::watch::start(session.notifier(), core, inodes, w.state.clone())
            });
        Session(session, watcher)
    };
    let mut opts = vec![M::FSName(spec.fs_name.clone()), M::Subtype("envfs".into())];
    if config.read_only {
        opts.push(M::RO);
    }
    // allow_other lets other users in; only the kernel's permission checks keep them to
    // what the mode bits allow.
    if config.allow_other || config.default_permissions {
        opts.push(M::DefaultPermissions);
    }
    for p in &config.kernel_flags {
        opts.push(match p.as_str() {
            "nosuid" => M::NoSuid,
            "suid" => M::Suid,
            "nodev" => M::NoDev,
            "dev" => M::Dev,
            "noexec" => M::NoExec,
            "exec" => M::Exec,
            "noatime" => M::NoAtime,
            "atime" => M::Atime,
            "dirsync" => M::DirSync,
            "sync" => M::Sync,
            _ => M::Async,
        });
    }
    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = if config.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // More workers than cores: a request finds a worker already waiting in read(2) while
    // others are descheduled, answer asynchronous FORGET/RELEASE requests, or sit in a
    // backing syscall. One worker halves random-read IOPS and 4 vs 8 costs ~10% on small-file
    // creation on 2 cores (docs/BENCHMARKS.md); beyond 8 the gain is lost in the noise.
    fuse_config.n_threads = Some(spec.threads.unwrap_or((cores * 4).clamp(8, 32)));
    fuse_config.clone_fd = true;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // As root we mount(2) ourselves: fuser would mount as plain "fuse", but mount(8),
        // fstab and `envfs umount` know us by the type "fuse.envfs".
        let fd = kernel_mount(&spec.fs_name, mountpoint, config)?;
        return fuser::Session::from_fd(fs, fd, fuse_config.acl, fuse_config.clone())
            .map(with_watcher)
            .map_err(|e| {
                let _ = kernel_unmount(mountpoint);
                mount_error(format!(
                    "FUSE handshake on {} failed: {e}",
                    mountpoint.display()
                ))
            });
    }
    fuse_config.mount_options = opts;
    fuser::Session::new(fs, mountpoint, &fuse_config)
        .map(with_watcher)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::FuseUnavailable(format!(
                    "cannot mount: {e} (is fuse3 installed? fusermount3 must be on PATH)"
                ))
            } else {
                mount_error(format!("cannot mount on {}: {e}", mountpoint.display()))
            }
        })
}

/// mount(2) a FUSE filesystem of type fuse.envfs and return the /dev/fuse connection.
fn kernel_mount(fs_name: &str, mountpoint: &Path, config: &MountSpec) -> Result<OwnedFd> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| Error::FuseUnavailable(format!("cannot open /dev/fuse: {e}")))?;
    let fd = OwnedFd::from(dev);
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid}",
        fd.as_raw_fd()
    );
    if config.allow_other {
        data.push_str(",allow_other");
    }
    if config.allow_other || config.default_permissions {
        data.push_str(",default_permissions");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if config.read_only {
        flags |= libc::MS_RDONLY;
    }
    for p in &config.kernel_flags {
        match p.as_str() {
            "suid" => flags &= !libc::MS_NOSUID,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            _ => {}
        }
    }
    let source = CString::new(fs_name.as_bytes())
        .map_err(|_| Error::Invalid("backing path contains a NUL byte".into()))?;
    let target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("mountpoint contains a NUL byte".into()))?;
    let fstype = CString::new("fuse.envfs").expect("no NUL");
    let data = CString::new(data).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(mount_error(format!(
            "cannot mount on {}: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// Detach the mount now; it goes away for good once the last open file closes.
fn lazy_unmount(mountpoint: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmount; if files are still open, detach lazily so the mount goes away once they close.
fn kernel_unmount(mountpoint: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // SAFETY: valid C string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block the shutdown signals in this thread and every thread it starts later, so they
/// reach only the session's signal thread. Call before any thread exists.
pub fn block_shutdown_signals() {
    let set = shutdown_signals();
    // SAFETY: valid set; blocking signals in this thread (inherited by threads it spawns).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

impl Session {
    /// Serve until the filesystem is unmounted (by `envfs umount`, `fusermount3 -u`, or a
    /// SIGTERM/SIGINT/SIGHUP, which unmount first so no request is cut off).
    pub fn serve_until_unmounted(self, mountpoint: &Path) -> Result<()> {
        let served = serve(self.0, mountpoint);
        if let Some(watcher) = self.1 {
            watcher.stop();
        }
        served
    }
}

fn serve(mut session: fuser::Session<EnvFs>, mountpoint: &Path) -> Result<()> {
    let mut unmounter = session.unmount_callable();
    let mountpoint = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("envfs-signals".into())
        .spawn(move || {
            let set = shutdown_signals();
            let mut attempts = 0;
            loop {
                let mut sig = 0;
                // SAFETY: valid set and out pointer.
                unsafe { libc::sigwait(&set, &mut sig) };
                attempts += 1;
                tracing::info!("signal {sig}: unmounting");
                // fuser unmounts what it mounted; our own mount(2) we undo ourselves (lazily
                // from the second signal on, when files are still open).
                let result = unmounter.unmount().and_then(|_| {
                    if !is_mount_point(&mountpoint) {
                        Ok(())
                    } else if attempts == 1 {
                        kernel_unmount(&mountpoint)
                    } else {
                        lazy_unmount(&mountpoint)
                    }
                });
                match result {
                    Ok(()) => return,
                    Err(e) => tracing::error!(
                        "unmount on signal failed: {e}; send it again to detach lazily"
                    ),
                }
            }
        })?;
    session.run()?;
    Ok(())
}

/// Unmount an envfs mount for `envfs umount` (the caller checked that it is one): umount(2)
/// as root, fusermount3 otherwise.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid("mountpoint contains a NUL byte".into()))?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(mount_error(format!(
                "cannot unmount {}: {e}",
                mountpoint.display()
            )));
        }
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status()
        .map_err(|e| Error::FuseUnavailable(format!("cannot run fusermount3: {e}")))?;
    if !status.success() {
        return Err(mount_error(format!(
            "fusermount3 -u {} failed (is it busy?)",
            mountpoint.display()
        )));
    }
    Ok(())
}
