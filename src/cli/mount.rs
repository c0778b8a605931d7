//! `envfs mount` and `envfs umount`: option parsing (CLI flags and mount(8)'s `-o` list),
//! preflight checks with clear errors, daemonizing, readiness, and clean shutdown.
//!
//! Daemon mode re-executes this binary in the foreground as a new session with a pipe on
//! which the child reports "mounted" or the reason it failed. Re-exec rather than fork keeps
//! us clear of forking a process that has threads (the FUSE workers, a key service runtime).

use super::exit;
use super::{KeyArgs, open_vault};
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::fuse::session::{is_mount_point, mount_device, mount_fstype};
use crate::fuse::watch::{DEFAULT_WATCH_LIMIT, WatchState};
use crate::fuse::{Acls, AdapterOptions, WatchOptions};
use crate::keys::cache::CacheLimits;
use crate::keys::source::KeySource;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// New-file DEKs kept ready for key-service vaults, and the calls in flight to refill them.
const DEFAULT_PREFETCH: usize = 32;
/// Concurrent GenerateDataKey calls the prefetch pool makes. Sustained creation runs at up
/// to workers / round-trip files per second, so this is what hides a distant key service.
const DEFAULT_PREFETCH_WORKERS: usize = 16;
/// Concurrent unwrap calls for files about to be opened (fs/unwrap_ahead.rs): as many as
/// prefetching uses for new files, the same load on the key service.
const DEFAULT_UNWRAP_AHEAD: usize = 16;

/// Environment variable naming the fd on which a daemon child reports readiness.
const READY_FD_ENV: &str = "ENVFS_READY_FD";

/// Whether this process is a mount daemon started by `envfs mount` (it logs to syslog).
pub fn is_daemon_child() -> bool {
    std::env::var_os(READY_FD_ENV).is_some()
}

/// Everything `-o` can say, plus what the CLI flags say.
#[derive(Debug, Clone, Default)]
pub struct MountConfig {
    pub read_only: bool,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub nonempty: bool,
    pub attr_timeout: Option<Duration>,
    pub entry_timeout: Option<Duration>,
    pub negative_timeout: Option<Duration>,
    /// `key_file=`, `key_fd=`, `key_command=`, `key_credential=`: as the flags of the same
    /// names (keys/source.rs), and winning over them.
    pub key: Option<KeySource>,
    pub kms_key: Option<String>,
    /// `vault_fingerprint=` and `accept_rollback=`: as `--vault-fingerprint` and
    /// `--accept-rollback` (vault/known.rs), for fstab and units.
    pub vault_fingerprint: Option<crate::crypto::Fingerprint>,
    pub accept_rollback: Option<u64>,
    /// DEK cache bounds (entries, seconds) and how many new-file DEKs to keep ready.
    pub dek_cache_entries: Option<usize>,
    pub dek_cache_ttl: Option<Duration>,
    pub prefetch: Option<usize>,
    pub prefetch_workers: Option<usize>,
    /// `-o unwrap_ahead=N`: unwrap calls ahead of opens (0: none).
    pub unwrap_ahead: Option<usize>,
    /// `log_file=` (or `--log-file`): the daemon appends its log here instead of syslog.
    pub log_file: Option<PathBuf>,
    /// FUSE worker threads reading requests from the kernel.
    pub threads: Option<usize>,
    /// Let the kernel buffer writes in its page cache (`FUSE_WRITEBACK_CACHE`).
    pub writeback_cache: bool,
    /// `-o shared` / `-o noshared`: other hosts use the backing store too. Unset: shared
    /// when the probe finds a network filesystem.
    pub shared: Option<bool>,
    /// `-o nowatch`: do not watch the backing store; short timeouts as on a network store.
    pub nowatch: bool,
    /// `-o noacl`: the mount has no POSIX ACLs (fuse::Acls::None); `-o acl` undoes it.
    pub noacl: bool,
    /// `-o watch_limit=N`: watch at most N directories (fuse/watch.rs).
    pub watch_limit: Option<usize>,
    /// The mount's kernel readahead window in KiB (`/sys/class/bdi/<dev>/read_ahead_kb`).
    pub readahead_kb: Option<u32>,
    pub foreground: bool,
    /// Kernel mount flags passed through (nosuid, nodev, noexec, noatime, …).
    pub passthrough: Vec<String>,
}

fn thread_count(name: &str, value: &str, max: usize) -> Result<usize> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "-o {name}={value}: expected a number of threads in 1..={max}"
            ))
        })
}

fn seconds(name: &str, value: &str) -> Result<Duration> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| Error::Invalid(format!("-o {name}={value}: expected seconds")))
}

/// Parse mount options (comma-separated, possibly from several `-o`).
/// Every `-o` option `parse_options` takes, as `envfs mount --help` lists them: the
/// spelling, an example the parser accepts (tested), and one line on what it does. The
/// full story is docs/OPERATIONS.md "Mount options" (a test checks it names each one).
pub const MOUNT_OPTIONS: &[(&str, &str, &str)] = &[
    ("ro / rw", "ro", "read-only / read-write (default rw)"),
    (
        "allow_other",
        "allow_other",
        "let all users use the mount (turns on default_permissions)",
    ),
    (
        "default_permissions",
        "default_permissions",
        "the kernel checks mode bits",
    ),
    (
        "nonempty",
        "nonempty",
        "allow mounting over a non-empty directory",
    ),
    (
        "key_file=PATH",
        "key_file=/k",
        "the key file, - for stdin (wins over --key-file and ENVFS_KEY_FILE)",
    ),
    (
        "key_fd=FD",
        "key_fd=3",
        "read the key from this inherited descriptor (as --key-fd)",
    ),
    (
        "key_command=CMD",
        "key_command=cat /k",
        "read the key from the output of sh -c CMD (as --key-command; no commas)",
    ),
    (
        "key_credential=NAME",
        "key_credential=vault.key",
        "read the key from systemd credential NAME (as --key-credential)",
    ),
    (
        "log_file=PATH",
        "log_file=/var/log/envfs.log",
        "append the daemon's log to PATH instead of syslog (as --log-file)",
    ),
    (
        "kms_key=KEY",
        "kms_key=alias/x",
        "open with this AWS KMS key (as --kms-key)",
    ),
    (
        "vault_fingerprint=HEX",
        "vault_fingerprint=00112233445566778899aabbccddeeff",
        "as --vault-fingerprint",
    ),
    (
        "accept_rollback=GENERATION",
        "accept_rollback=3",
        "as --accept-rollback",
    ),
    (
        "attr_timeout=S",
        "attr_timeout=0.5",
        "kernel attribute cache, in seconds",
    ),
    (
        "entry_timeout=S",
        "entry_timeout=1",
        "kernel name cache, in seconds",
    ),
    (
        "negative_timeout=S",
        "negative_timeout=0",
        "how long a missing name is remembered, in seconds",
    ),
    (
        "shared / noshared",
        "shared",
        "other hosts write the backing store too (default: on for network filesystems)",
    ),
    (
        "nowatch",
        "nowatch",
        "do not watch the backing store for outside changes; short timeouts",
    ),
    (
        "watch_limit=N",
        "watch_limit=65536",
        "most directories watched; beyond, short timeouts",
    ),
    (
        "acl / noacl",
        "noacl",
        "noacl: no POSIX ACLs on the mount (faster ls -l); default acl",
    ),
    (
        "writeback_cache / no_writeback_cache",
        "writeback_cache",
        "kernel write buffering (default off)",
    ),
    ("threads=N", "threads=8", "FUSE worker threads, 1-64"),
    (
        "readahead_kb=N",
        "readahead_kb=1024",
        "the mount's readahead window in KiB (root only)",
    ),
    (
        "dek_cache_size=N",
        "dek_cache_size=100",
        "unwrapped DEKs kept in memory",
    ),
    (
        "dek_cache_ttl=S",
        "dek_cache_ttl=60",
        "how long a cached DEK is used, in seconds",
    ),
    ("prefetch=N", "prefetch=16", "new-file DEKs generated ahead"),
    (
        "prefetch_workers=N",
        "prefetch_workers=4",
        "threads generating them, 1-256",
    ),
    (
        "unwrap_ahead=N",
        "unwrap_ahead=0",
        "DEKs of files about to be read unwrapped ahead, 0-256 (0: off)",
    ),
    ("foreground", "foreground", "same as -f (not in fstab)"),
    (
        "nosuid / suid, nodev / dev",
        "nosuid",
        "kernel flags (`envfs mount` as root: nosuid,nodev)",
    ),
    ("noexec / exec, noatime / atime", "noexec", "kernel flags"),
    ("dirsync, sync / async", "sync", "kernel flags"),
    (
        "nofail, _netdev, auto, noauto, user, users, nouser, defaults, x-*, comment=",
        "nofail",
        "for mount(8), fstab and systemd: accepted and ignored",
    ),
];

/// The `-o` options for `envfs mount --help`.
pub fn options_help() -> String {
    let mut out = String::from("Mount options (-o a,b,c; the same names work in fstab):\n");
    for (spelling, _, what) in MOUNT_OPTIONS {
        out.push_str(&format!("  {spelling:<38} {what}\n"));
    }
    out.push_str(
        "An unknown option is an error (exit 2). Defaults and details: \"Mount options\" in \
         docs/OPERATIONS.md of the envfs sources.",
    );
    out
}

pub fn parse_options(lists: &[String], config: &mut MountConfig) -> Result<()> {
    for opt in lists
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            ("ro", None) => config.read_only = true,
            ("rw", None) => config.read_only = false,
            ("allow_other", None) => config.allow_other = true,
            ("default_permissions", None) => config.default_permissions = true,
            ("nonempty", None) => config.nonempty = true,
            ("key_file", Some(v)) => config.key = Some(KeySource::from_key_file(v.into())),
            ("key_fd", Some(v)) => {
                let fd = v.parse().map_err(|_| {
                    Error::Invalid(format!("-o key_fd={v}: expected a descriptor number"))
                })?;
                config.key = Some(KeySource::Fd(fd));
            }
            ("key_command", Some(v)) => config.key = Some(KeySource::Command(v.to_string())),
            ("key_credential", Some(v)) => config.key = Some(KeySource::Credential(v.into())),
            ("kms_key", Some(v)) => config.kms_key = Some(v.to_string()),
            ("log_file", Some(v)) => config.log_file = Some(PathBuf::from(v)),
            ("vault_fingerprint", Some(v)) => {
                config.vault_fingerprint = Some(
                    v.parse()
                        .map_err(|e| Error::Invalid(format!("-o vault_fingerprint={v}: {e}")))?,
                )
            }
            ("accept_rollback", Some(v)) => {
                config.accept_rollback = Some(v.parse().map_err(|_| {
                    Error::Invalid(format!(
                        "-o accept_rollback={v}: expected a config generation (a number)"
                    ))
                })?)
            }
            ("dek_cache_size", Some(v)) => {
                config.dek_cache_entries = Some(v.parse().map_err(|_| {
                    Error::Invalid(format!(
                        "-o dek_cache_size={v}: expected a number of entries"
                    ))
                })?)
            }
            ("dek_cache_ttl", Some(v)) => config.dek_cache_ttl = Some(seconds(name, v)?),
            ("threads", Some(v)) => config.threads = Some(thread_count(name, v, 64)?),
            ("unwrap_ahead", Some(v)) => {
                config.unwrap_ahead =
                    Some(v.parse().ok().filter(|n| *n <= 256).ok_or_else(|| {
                        Error::Invalid(format!(
                            "-o unwrap_ahead={v}: expected 0 (off) or a number of concurrent calls \
                         in 1..=256"
                        ))
                    })?)
            }
            ("prefetch_workers", Some(v)) => {
                config.prefetch_workers = Some(thread_count(name, v, 256)?)
            }
            ("prefetch", Some(v)) => {
                config.prefetch = Some(v.parse().map_err(|_| {
                    Error::Invalid(format!("-o prefetch={v}: expected a number of DEKs"))
                })?)
            }
            ("attr_timeout", Some(v)) => config.attr_timeout = Some(seconds(name, v)?),
            ("entry_timeout", Some(v)) => config.entry_timeout = Some(seconds(name, v)?),
            ("negative_timeout", Some(v)) => config.negative_timeout = Some(seconds(name, v)?),
            ("readahead_kb", Some(v)) => {
                config.readahead_kb = Some(
                    v.parse()
                        .ok()
                        .filter(|kb| *kb <= MAX_READAHEAD_KB)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "-o readahead_kb={v}: expected KiB in 0..={MAX_READAHEAD_KB}"
                            ))
                        })?,
                )
            }
            ("nowatch", None) => config.nowatch = true,
            ("watch_limit", Some(v)) => {
                config.watch_limit = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=MAX_WATCH_LIMIT).contains(n))
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "-o watch_limit={v}: expected a number of directories in \
                                 1..={MAX_WATCH_LIMIT} (-o nowatch watches none)"
                            ))
                        })?,
                )
            }
            ("shared", None) => config.shared = Some(true),
            ("noshared", None) => config.shared = Some(false),
            ("acl", None) => config.noacl = false,
            ("noacl", None) => config.noacl = true,
            ("writeback_cache", None) => config.writeback_cache = true,
            ("no_writeback_cache", None) => config.writeback_cache = false,
            ("foreground", None) => config.foreground = true,
            (
                "nosuid" | "suid" | "nodev" | "dev" | "noexec" | "exec" | "noatime" | "atime"
                | "dirsync" | "sync" | "async",
                None,
            ) => config.passthrough.push(name.to_string()),
            // Options for mount(8), fstab and systemd, not for us.
            (
                "nofail" | "_netdev" | "auto" | "noauto" | "user" | "users" | "nouser" | "defaults"
                | "relatime" | "norelatime" | "strictatime" | "lazytime" | "nolazytime" | "loop",
                _,
            ) => {}
            (n, _) if n.starts_with("x-") || n == "comment" => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown mount option '{opt}' (envfs mount --help lists them)"
                )));
            }
        }
    }
    Ok(())
}

fn mount_error(msg: String) -> Error {
    Error::Mount(msg)
}

/// The readahead window envfs asks for: one full 1 MiB request. The kernel starts every FUSE
/// mount at 128 KiB whatever the filesystem offers at INIT, so a cold sequential read would
/// cost eight requests per MiB; with 1 MiB it reads ~1.5x faster (docs/BENCHMARKS.md).
pub const DEFAULT_READAHEAD_KB: u32 = 1024;
const MAX_READAHEAD_KB: u32 = 65536;
/// The most directories `-o watch_limit` may ask to watch (about 1 GiB of kernel memory).
const MAX_WATCH_LIMIT: usize = 1 << 20;

/// Set the mount's readahead window. Only root may write sysfs; anyone else keeps the
/// kernel's 128 KiB (an administrator can raise it, docs/OPERATIONS.md). Never fatal.
fn apply_readahead(mountpoint: &Path, config: &MountConfig) {
    let kb = config.readahead_kb.unwrap_or(DEFAULT_READAHEAD_KB);
    let result = mount_device(mountpoint)
        .ok_or_else(|| std::io::Error::other("mount not found in /proc/self/mountinfo"))
        .and_then(|dev| {
            std::fs::write(
                format!("/sys/class/bdi/{dev}/read_ahead_kb"),
                kb.to_string(),
            )
        });
    match result {
        Ok(()) => tracing::debug!(kb, "readahead window set"),
        Err(e) if config.readahead_kb.is_some() => {
            tracing::warn!("-o readahead_kb={kb} not applied: {e}")
        }
        Err(e) => tracing::debug!("readahead left at the kernel default: {e}"),
    }
}

/// Checks that give a clear message instead of a FUSE error deep inside the mount.
fn preflight(mountpoint: &Path, config: &MountConfig) -> Result<()> {
    let meta = std::fs::metadata(mountpoint).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            mount_error(format!(
                "mountpoint {} does not exist",
                mountpoint.display()
            ))
        } else {
            mount_error(format!("mountpoint {}: {e}", mountpoint.display()))
        }
    })?;
    if !meta.is_dir() {
        return Err(mount_error(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        )));
    }
    if is_mount_point(mountpoint) {
        return Err(mount_error(format!(
            "mountpoint {} is busy: something is already mounted there",
            mountpoint.display()
        )));
    }
    if !config.nonempty && std::fs::read_dir(mountpoint)?.next().is_some() {
        return Err(mount_error(format!(
            "mountpoint {} is not empty (use -o nonempty to mount over it anyway)",
            mountpoint.display()
        )));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::FuseUnavailable(
            "/dev/fuse does not exist: load the fuse kernel module".into(),
        ));
    }
    // fusermount3 opens it for a user who is not root, and its refusal would read as a
    // failed mount (exit 13); say what is wrong instead (exit 14).
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(Error::FuseUnavailable(format!(
            "cannot open /dev/fuse: {e}"
        )));
    }
    Ok(())
}

/// Refuse to use the backing directory as (or inside) its own mountpoint, which would
/// recurse forever.
fn check_not_nested(backing: &Path, mountpoint: &Path) -> Result<()> {
    let (Ok(b), Ok(m)) = (backing.canonicalize(), mountpoint.canonicalize()) else {
        return Ok(());
    };
    if m.starts_with(&b) || b.starts_with(&m) {
        return Err(mount_error(
            "the mountpoint and the backing directory must not contain each other".into(),
        ));
    }
    Ok(())
}

/// Refuse to mount a backing directory that an envfs mount on this host already serves,
/// unless this mount is in shared mode by the operator's word (`-o shared`). Two mounts of
/// one directory each keep kernel caches of attributes, names and data, and outside shared
/// mode each believes it is the only writer: what is written through one shows in the other
/// only after its timeouts, and a refusal is heard where a warning in a daemon's log is not.
fn check_not_mounted_twice(backing: &Path, config: &MountConfig) -> Result<()> {
    let others = super::status::mounts_of(backing);
    let Some((first, _, _)) = others.first() else {
        return Ok(());
    };
    if config.shared != Some(true) {
        return Err(mount_error(format!(
            "{} is already mounted on {} by envfs; mounting it a second time on this host \
             needs -o shared (and the other mount in shared mode too), or unmount it first",
            backing.display(),
            first.display()
        )));
    }
    for (other, shared, watched) in &others {
        match shared {
            Some(true) => {}
            // It hears of this mount's changes from the kernel, not from its timeouts.
            Some(false) if *watched => tracing::warn!(
                "{} is also mounted on {} outside shared mode: that mount watches the backing \
                 store and shows what this one writes once the kernel reports it, but \
                 believes it is the only writer (remount it with -o shared)",
                backing.display(),
                other.display()
            ),
            Some(false) => tracing::warn!(
                "{} is also mounted on {} outside shared mode: that mount may show what this \
                 one writes only after its attribute and entry timeouts (remount it with -o \
                 shared)",
                backing.display(),
                other.display()
            ),
            None => tracing::warn!(
                "{} is also mounted on {}, whose daemon does not say whether it runs in shared \
                 mode; if not, it may show what this one writes only after its timeouts",
                backing.display(),
                other.display()
            ),
        }
    }
    Ok(())
}

pub fn mount(
    backing: &Path,
    mountpoint: &Path,
    config: &MountConfig,
    keys: &KeyArgs,
) -> Result<()> {
    let result = mount_or_serve(backing, mountpoint, config, keys);
    // A daemon that fails before it could report (a key file the parent read but the
    // daemon cannot, say) still owes the waiting parent its verdict and exit code.
    if is_daemon_child()
        && !outcome_reported()
        && let Err(e) = &result
    {
        notify_ready(Err(e));
    }
    result
}

fn mount_or_serve(
    backing: &Path,
    mountpoint: &Path,
    config: &MountConfig,
    keys: &KeyArgs,
) -> Result<()> {
    preflight(mountpoint, config)?;
    // Absolute paths from here on: the daemon leaves the caller's working directory (so it
    // does not keep it busy), and log lines name backing paths in full.
    let backing = &backing
        .canonicalize()
        .map_err(|_| Error::NotAVault(backing.to_path_buf()))?;
    let mountpoint = &mountpoint.canonicalize()?;
    let serving = config.foreground || is_daemon_child();
    if serving {
        // Before any thread exists (the KMS client's, the DEK prefetchers', the FUSE
        // workers'): blocked here, shutdown signals reach only our signal thread.
        crate::fuse::session::block_shutdown_signals();
    }
    let keys = KeyArgs {
        kms_key: config.kms_key.clone().or_else(|| keys.kms_key.clone()),
        vault_fingerprint: config.vault_fingerprint.or(keys.vault_fingerprint),
        accept_rollback: config.accept_rollback.or(keys.accept_rollback),
        ..match &config.key {
            Some(source) => KeyArgs::given(source),
            None => keys.clone(),
        }
    };
    // Open the vault before daemonizing, so a wrong key or a corrupt config is reported by
    // the command the user ran, with its exit code.
    if !serving {
        // About to daemonize: the daemon is handed the key texts read here.
        crate::keys::keyfile::keep_read_keys();
        if config.log_file.is_none()
            && let Err(e) = super::logging::syslog_reachable()
        {
            tracing::warn!(
                "the mount daemon logs to syslog, but /dev/log cannot be reached ({e}): its \
                 log (integrity failures included) will be lost. Use -o log_file=PATH, or \
                 mount with -f"
            );
        }
    }
    let mut vault = open_vault(backing, &keys)?;
    // From here the config says which key source and KMS key the mount runs with, whether
    // `-o` or a flag gave them (for `envfs status`).
    let config = &MountConfig {
        key: keys.source(),
        kms_key: keys.kms_key.clone(),
        ..config.clone()
    };
    check_not_nested(backing, mountpoint)?;
    if !is_daemon_child() {
        check_not_mounted_twice(backing, config)?;
    }
    if is_daemon_child() {
        // Key files are read by now (relative paths resolved against the caller's cwd).
        std::env::set_current_dir("/")?;
    }
    if !serving {
        drop(vault);
        return daemonize();
    }
    let defaults = CacheLimits::default();
    vault.set_cache_limits(CacheLimits {
        max_entries: config.dek_cache_entries.unwrap_or(defaults.max_entries),
        ttl: config.dek_cache_ttl.unwrap_or(defaults.ttl),
    });
    vault.enable_prefetch(
        config.prefetch.unwrap_or(DEFAULT_PREFETCH),
        config.prefetch_workers.unwrap_or(DEFAULT_PREFETCH_WORKERS),
    );
    serve(std::sync::Arc::new(vault), mountpoint, backing, config)
}

/// Start ourselves again in the foreground, detached, and wait for its verdict.
fn daemonize() -> Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a two-int array; O_CLOEXEC keeps the read end out of the child.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write_end.as_raw_fd();
    let (key_pipes, handed) = hand_on_read_keys()?;
    let key_fds: Vec<i32> = key_pipes.iter().map(|fd| fd.as_raw_fd()).collect();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    // The daemon gets the arguments as this process read them (the helper form rewritten,
    // mount.fuse3's additions dropped): its own parent is this process, not mount(8).
    let args = rewrite_mount_helper_args(std::env::args_os().collect());
    cmd.args(&args[1..])
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if !handed.is_empty() {
        cmd.env(crate::keys::keyfile::HANDED_KEYS_ENV, handed);
    }
    // stderr stays the caller's until the mount is live, so a daemon that dies early
    // (before it can report through the pipe) is still heard; then it goes to /dev/null.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Let the write end, and the key pipes' read ends, survive exec.
            for fd in std::iter::once(write_fd).chain(key_fds.iter().copied()) {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(write_end);
    drop(key_pipes);
    let mut verdict = String::new();
    std::fs::File::from(read_end).read_to_string(&mut verdict)?;
    if verdict.starts_with("ok") {
        return Ok(());
    }
    let _ = child.wait();
    match verdict.split_once(' ') {
        Some((code, msg)) => Err(Error::Reported(
            code.parse().unwrap_or(exit::FAILURE),
            msg.trim().to_string(),
        )),
        None => Err(mount_error(
            "the mount daemon exited before the mount was ready (see its log: the system log, \
             or the log file if one was given; or mount with -f)"
                .into(),
        )),
    }
}

/// The key files were read when the vault was opened here; the daemon starts envfs again,
/// and must not read them a second time (a pipe such as `--key-file /dev/stdin` or `<(…)`
/// is drained, and `/dev/stdin` would be its own). Each text goes into a fresh pipe whose
/// read end the daemon inherits, named in `keyfile::HANDED_KEYS_ENV` by its source's tag
/// (keys/source.rs). Returns the read ends (to close once the daemon has them) and the
/// variable's value.
fn hand_on_read_keys() -> Result<(Vec<OwnedFd>, String)> {
    let mut read_ends = Vec::new();
    let mut handed = Vec::new();
    for (tag, text) in crate::keys::keyfile::take_read_keys() {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a two-int array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: pipe2 returned two fresh fds that we now own.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A key file is at most 64 KiB, which a pipe holds without a reader.
        std::fs::File::from(write_end).write_all(text.as_bytes())?;
        handed.push(format!("{}:{}", read_end.as_raw_fd(), hex::encode(tag)));
        read_ends.push(read_end);
    }
    Ok((read_ends, handed.join(",")))
}

static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this daemon already reported its outcome to the waiting parent (which prints
/// the error itself, so the daemon must not print it twice).
pub fn outcome_reported() -> bool {
    REPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Point stderr at /dev/null: the daemon's caller has gone; logs go to syslog.
fn detach_stderr() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 2 with a valid fd.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
}

/// Where a mount daemon records its pid, so `envfs umount` can wait for it to finish.
fn pid_file(mountpoint: &Path) -> PathBuf {
    runtime_dir().join(format!("{}.pid", mount_key(mountpoint)))
}

/// Where a daemon keeps its pid file and status socket: `/run/envfs` for root, the user's
/// runtime directory otherwise.
fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        PathBuf::from("/run/envfs")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("envfs"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("envfs-{euid}")))
    }
}

/// The name a mount's runtime files share: a hash of its (canonical) mountpoint.
fn mount_key(mountpoint: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(mountpoint.as_os_str().as_bytes());
    hex::encode(&digest[..8])
}

/// The status socket a daemon serving `mountpoint` opens.
fn status_socket(mountpoint: &Path) -> PathBuf {
    runtime_dir().join(format!("{}.sock", mount_key(mountpoint)))
}

/// Where `envfs status` looks for the socket of `mountpoint`: this user's runtime
/// directory, then root's (a root mount queried by root is the first).
pub fn status_sockets(mountpoint: &Path) -> Vec<PathBuf> {
    let mut out = vec![status_socket(mountpoint)];
    let root = Path::new("/run/envfs").join(format!("{}.sock", mount_key(mountpoint)));
    if !out.contains(&root) {
        out.push(root);
    }
    out
}

/// Tell whoever waits (the `envfs mount` parent, systemd) how the mount went.
fn notify_ready(result: std::result::Result<(), &Error>) {
    if let Some(fd) = std::env::var_os(READY_FD_ENV).and_then(|v| v.to_str()?.parse::<i32>().ok()) {
        // SAFETY: the parent passed us this fd for exactly this purpose; we own it now.
        let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let msg = match result {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("{} {e}\n", exit::code_for(e)),
        };
        let _ = pipe.write_all(msg.as_bytes());
        REPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        if result.is_ok() {
            detach_stderr();
        }
    }
    if result.is_ok()
        && let Some(socket) = std::env::var_os("NOTIFY_SOCKET")
    {
        sd_notify(&socket, "READY=1");
    }
}

fn sd_notify(socket: &std::ffi::OsStr, msg: &str) {
    use std::os::unix::net::UnixDatagram;
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket);
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            let _ = sock.send_to_addr(msg.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(msg.as_bytes(), Path::new(socket));
    }
}

/// The options the mount runs with, as `-o` would say them, defaults included (for
/// `envfs status`). Key sources are named, never their values: a key command's text can
/// hold a secret.
fn effective_options(
    spec: &crate::fuse::session::MountSpec,
    config: &MountConfig,
    shared: bool,
) -> Vec<String> {
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    let a = &spec.adapter;
    // The watched mount's timeouts; `envfs status` says which are in force.
    let (attr, entry, negative) = a
        .watch
        .as_ref()
        .map_or((a.attr_timeout, a.entry_timeout, a.negative_timeout), |w| {
            (w.attr_timeout, w.entry_timeout, w.negative_timeout)
        });
    let mut out = vec![
        if spec.read_only { "ro" } else { "rw" }.to_string(),
        if shared { "shared" } else { "noshared" }.to_string(),
        format!("attr_timeout={}", secs(attr)),
        format!("entry_timeout={}", secs(entry)),
        format!("negative_timeout={}", secs(negative)),
        match &a.watch {
            Some(w) => format!("watch_limit={}", w.state.report().limit),
            None => "nowatch".to_string(),
        },
    ];
    for (on, name) in [
        (spec.allow_other, "allow_other"),
        // allow_other turns the kernel's permission checks on (fuse/session.rs).
        (
            spec.default_permissions || spec.allow_other,
            "default_permissions",
        ),
        (spec.adapter.writeback_cache, "writeback_cache"),
        (spec.adapter.acls == Acls::None, "noacl"),
    ] {
        if on {
            out.push(name.to_string());
        }
    }
    if let Some(n) = spec.threads {
        out.push(format!("threads={n}"));
    }
    if let Some(kb) = config.readahead_kb {
        out.push(format!("readahead_kb={kb}"));
    }
    match &config.key {
        Some(KeySource::File(p)) => out.push(format!("key_file={}", p.display())),
        Some(KeySource::Stdin) => out.push("key_file=-".into()),
        Some(KeySource::Fd(n)) => out.push(format!("key_fd={n}")),
        Some(KeySource::Command(_)) => out.push("key_command=…".into()),
        Some(KeySource::Credential(name)) => out.push(format!("key_credential={name}")),
        None => {}
    }
    if let Some(k) = &config.kms_key {
        out.push(format!("kms_key={k}"));
    }
    out.extend(spec.kernel_flags.iter().cloned());
    out
}

/// The watched mount's timeouts: long when only this host writes the store; in shared
/// mode the short ones `short` (the watch adds invalidations but cannot see other hosts).
/// A timeout set with `-o` holds watched or not.
fn watch_options(
    config: &MountConfig,
    mode: &BackingMode,
    short: &AdapterOptions,
) -> Option<WatchOptions> {
    if mode.unwatched.is_some() {
        return None;
    }
    let long = (!mode.shared).then_some(WatchOptions::DEFAULT_TIMEOUT);
    let pick = |set: Option<Duration>, short: Duration| set.or(long).unwrap_or(short);
    Some(WatchOptions {
        attr_timeout: pick(config.attr_timeout, short.attr_timeout),
        entry_timeout: pick(config.entry_timeout, short.entry_timeout),
        negative_timeout: pick(config.negative_timeout, short.negative_timeout),
        state: WatchState::new(config.watch_limit.unwrap_or(DEFAULT_WATCH_LIMIT)),
    })
}

fn serve(
    vault: std::sync::Arc<crate::vault::Vault>,
    mountpoint: &Path,
    backing: &Path,
    config: &MountConfig,
) -> Result<()> {
    let fs = std::sync::Arc::new(Fs::new(vault));
    fs.enable_unwrap_ahead(config.unwrap_ahead.unwrap_or(DEFAULT_UNWRAP_AHEAD));
    let mode = adapt_to_backing_store(&fs, backing, config)?;
    let shared = mode.shared;
    let defaults = AdapterOptions::default();
    let mut spec = crate::fuse::session::MountSpec {
        fs_name: backing
            .canonicalize()
            .unwrap_or_else(|_| backing.to_path_buf())
            .to_string_lossy()
            .into_owned(),
        read_only: config.read_only,
        allow_other: config.allow_other,
        default_permissions: config.default_permissions,
        kernel_flags: config.passthrough.clone(),
        threads: config.threads,
        adapter: AdapterOptions {
            // Shared: no attribute is remembered, so a file another host (or another name
            // of a hard link, on a store where each name is its own inode) changed never
            // shows its old size.
            attr_timeout: config.attr_timeout.unwrap_or(if shared {
                Duration::ZERO
            } else {
                defaults.attr_timeout
            }),
            entry_timeout: config.entry_timeout.unwrap_or(defaults.entry_timeout),
            // Shared: a name another host creates is found at once, not after a
            // remembered miss runs out.
            negative_timeout: config.negative_timeout.unwrap_or(if shared {
                Duration::ZERO
            } else {
                defaults.negative_timeout
            }),
            writeback_cache: config.writeback_cache,
            flush_on_close: shared,
            requests: defaults.requests.clone(),
            watch: None,
            acls: if config.noacl {
                Acls::None
            } else if config.allow_other || config.default_permissions {
                Acls::Enforced
            } else {
                Acls::Stored
            },
        },
    };
    spec.adapter.watch = watch_options(config, &mode, &spec.adapter);
    let info = super::status::DaemonInfo {
        mountpoint: mountpoint.to_path_buf(),
        backing: PathBuf::from(&spec.fs_name),
        vault_id: fs.vault().config.vault_id_hex(),
        shared,
        requests: defaults.requests.clone(),
        options: effective_options(&spec, config, shared),
        watch: spec.adapter.watch.clone().ok_or_else(|| {
            mode.unwatched
                .clone()
                .unwrap_or_else(|| "not watched".to_string())
        }),
        short_timeouts: [
            spec.adapter.attr_timeout,
            spec.adapter.entry_timeout,
            spec.adapter.negative_timeout,
        ],
    };
    let result = crate::fuse::session::mount(fs.clone(), mountpoint, &spec);
    match result {
        Err(e) => {
            notify_ready(Err(&e));
            Err(e)
        }
        Ok(session) => {
            apply_readahead(mountpoint, config);
            let socket = status_socket(mountpoint);
            let bound = super::status::serve(&socket, fs, info);
            notify_ready(Ok(()));
            let served = run_until_unmounted(session, mountpoint);
            if let Some(b) = bound {
                b.remove_if_ours();
            }
            served
        }
    }
}

/// A store that does not tell upper from lower case cannot hold base64url names, where
/// case matters: two encrypted names could be one entry.
fn names_collide(
    caps: &crate::fs::Capabilities,
    vault: &crate::format::config::VaultConfig,
    backing: &Path,
) -> Option<Error> {
    (caps.case_sensitive.is_no()
        && !vault.plaintext_names
        && vault.name_encoding == crate::format::config::NameEncoding::Base64Url)
        .then(|| {
            mount_error(format!(
                "the backing store {} ({}) does not tell upper from lower case, and this \
                 vault's names are base64url, where case matters: two names could collide. \
                 Create vaults for this store with `envfs init --name-encoding base32`",
                backing.display(),
                caps.fs_type_shown()
            ))
        })
}

/// How the mount treats its backing store, from the probe and the options.
struct BackingMode {
    /// Other hosts write it too (`-o shared`, or a network store).
    shared: bool,
    /// Why its changes are not watched, or `None` when they are.
    unwatched: Option<String>,
}

/// Probe the backing store (docs/OPERATIONS.md "Backing stores"), refuse what cannot work
/// on it, log the one summary line, and say whether the mount runs shared and watched.
fn adapt_to_backing_store(fs: &Fs, backing: &Path, config: &MountConfig) -> Result<BackingMode> {
    use crate::backing::probe::Depth;
    let caps = fs.probe_backing(if config.read_only {
        Depth::Look
    } else {
        Depth::Mount
    })?;
    if let Some(refusal) = names_collide(caps, &fs.vault().config, backing) {
        return Err(refusal);
    }
    let shared = config.shared.unwrap_or(caps.network);
    if shared && config.writeback_cache {
        return Err(Error::Invalid(format!(
            "-o writeback_cache cannot be used with shared mode (the kernel would keep sizes \
             and times that other hosts change){}",
            if config.shared.is_none() {
                format!(
                    "; shared mode is on because {} is a network filesystem ({}): -o noshared \
                     if no other host writes it",
                    backing.display(),
                    caps.fs_type_shown()
                )
            } else {
                String::new()
            }
        )));
    }
    let unwatched = if config.nowatch {
        Some("-o nowatch".to_string())
    } else {
        caps.why_unwatchable()
    };
    let mut mode = match &unwatched {
        None => "; watched for outside changes".to_string(),
        Some(why) => format!("; not watched ({why}): outside changes show within the timeouts"),
    };
    if shared {
        mode.push_str(
            "; shared mode: other hosts' changes show within the attribute and entry timeouts",
        );
    }
    if caps.lacks().is_empty() {
        tracing::info!("{}{mode}", caps.summary(backing));
    } else {
        tracing::warn!("{}{mode}", caps.summary(backing));
    }
    Ok(BackingMode { shared, unwatched })
}

/// Serve until the filesystem is unmounted, with the daemon's pid recorded for
/// `envfs umount` to wait on.
fn run_until_unmounted(session: crate::fuse::session::Session, mountpoint: &Path) -> Result<()> {
    let pid_path = pid_file(mountpoint);
    let _ = std::fs::create_dir_all(pid_path.parent().expect("has parent"));
    let _ = std::fs::write(&pid_path, format!("{}\n", std::process::id()));
    tracing::info!(
        "serving {} (pid {})",
        mountpoint.display(),
        std::process::id()
    );
    let result = session.serve_until_unmounted(mountpoint);
    // Only our own: a new mount on the same mountpoint may have written its pid meanwhile.
    let ours = format!("{}\n", std::process::id());
    if std::fs::read_to_string(&pid_path).is_ok_and(|p| p == ours) {
        let _ = std::fs::remove_file(&pid_path);
    }
    tracing::info!("unmounted {}", mountpoint.display());
    result
}

/// `envfs umount MOUNTPOINT`: unmount an envfs mount and wait until its daemon has
/// finished, so that when this returns everything has reached the backing store.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let canonical = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let daemon = std::fs::read_to_string(pid_file(&canonical))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    unmount_now(mountpoint)?;
    // The daemon syncs the backing store and exits once the kernel lets go of the mount.
    if let Some(pid) = daemon {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie has finished; its parent (not us) reaps it.
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn unmount_now(mountpoint: &Path) -> Result<()> {
    match mount_fstype(mountpoint) {
        None => {
            return Err(mount_error(format!(
                "{} is not mounted",
                mountpoint.display()
            )));
        }
        Some(t) if t != "fuse.envfs" => {
            return Err(mount_error(format!(
                "{} is not an envfs mount (it is {t})",
                mountpoint.display()
            )));
        }
        Some(_) => {}
    }
    crate::fuse::session::unmount(mountpoint)
}

/// mount(8) runs `envfs BACKING MOUNTPOINT -o OPTS` (via mount.fuse3). Rewrite that into
/// `envfs mount …` so both spellings share one parser.
pub fn rewrite_mount_helper_args(args: Vec<OsString>) -> Vec<OsString> {
    // The subcommands come from the clap definition, so a new one is never taken for a
    // backing directory.
    use clap::CommandFactory;
    let is_subcommand = |name: &str| {
        name == "help"
            || super::Cli::command()
                .get_subcommands()
                .any(|c| c.get_name() == name || c.get_all_aliases().any(|a| a == name))
    };
    match args.get(1).and_then(|a| a.to_str()) {
        Some(first) if !first.starts_with('-') && args.len() >= 3 && !is_subcommand(first) => {
            let mut out = vec![args[0].clone(), OsString::from("mount")];
            out.extend(args[1..].iter().cloned());
            // mount(8) runs a `mount.fuse.envfs` helper itself, without mount.fuse3.
            let direct = Path::new(&args[0])
                .file_name()
                .is_some_and(|n| n == "mount.fuse.envfs");
            if !direct && parent_is_mount_fuse() {
                drop_appended_dev_suid(&mut out);
            }
            out
        }
        _ => args,
    }
}

/// Whether this process was started by mount.fuse3, as mount(8), fstab and systemd mount
/// units start it: mount(8) runs mount.fuse3, which `exec`s `/bin/sh -c "envfs …"`, so the
/// parent is that shell and the grandparent mount(8). Either of them being mount(8) or
/// mount.fuse3 counts.
fn parent_is_mount_fuse() -> bool {
    let parent_of = |pid: &str| -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The parent pid is the second field after the ")" that ends the command name.
        Some(
            stat.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .to_string(),
        )
    };
    let mut pid = "self".to_string();
    for _ in 0..2 {
        let Some(parent) = parent_of(&pid) else {
            return false;
        };
        let exe = std::fs::read_link(format!("/proc/{parent}/exe")).unwrap_or_default();
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "mount" || name.starts_with("mount.fuse") {
            return true;
        }
        pid = parent;
    }
    false
}

/// mount.fuse3 appends `dev` (unless `nodev` was given) and then `suid` (unless `nosuid`
/// was) to every helper's options, so mounts from fstab and systemd would come up
/// `dev,suid` whatever the user wrote. Remove exactly what it appended; a `suid` or `dev`
/// the user wrote stays (mount.fuse3 keeps it, earlier in the list), and root mounts are
/// otherwise `nosuid,nodev` (docs/SEMANTICS.md §15).
fn drop_appended_dev_suid(args: &mut [OsString]) {
    let Some(i) = args.iter().position(|a| a == "-o") else {
        return;
    };
    let Some(value) = args.get(i + 1).and_then(|v| v.to_str()) else {
        return;
    };
    let mut opts: Vec<&str> = value.split(',').collect();
    if !opts.contains(&"nosuid") && opts.last() == Some(&"suid") {
        opts.pop();
    }
    if !opts.contains(&"nodev") && opts.last() == Some(&"dev") {
        opts.pop();
    }
    args[i + 1] = OsString::from(opts.join(","));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_insensitive_store_refuses_base64_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::backing::BackingRoot::open(dir.path()).unwrap();
        let mut caps = crate::backing::probe::probe(&root, crate::backing::probe::Depth::Look);
        let mut vault = crate::format::config::VaultConfig {
            version: 2,
            generation: 1,
            key_hierarchy: None,
            intermediate_slots: false,
            vault_id: [0; 16],
            plaintext_names: false,
            name_encoding: crate::format::config::NameEncoding::Base64Url,
            chunk_size: 4096,
            header_size: 64,
            long_name_limit: 176,
            slots: Vec::new(),
        };
        assert!(
            names_collide(&caps, &vault, dir.path()).is_none(),
            "case unknown"
        );
        caps.case_sensitive = crate::backing::probe::Probe::No;
        let refusal = names_collide(&caps, &vault, dir.path()).expect("refused");
        assert_eq!(exit::code_for(&refusal), exit::MOUNT);
        assert!(
            refusal.to_string().contains("--name-encoding base32"),
            "{refusal}"
        );
        vault.name_encoding = crate::format::config::NameEncoding::Base32;
        assert!(names_collide(&caps, &vault, dir.path()).is_none());
        vault.name_encoding = crate::format::config::NameEncoding::Base64Url;
        vault.plaintext_names = true;
        assert!(names_collide(&caps, &vault, dir.path()).is_none());
    }

    #[test]
    fn what_mount_fuse3_appends_is_dropped_and_what_the_user_wrote_stays() {
        // Pairs of (options as mount.fuse3 passes them, what envfs keeps), as measured
        // with fuse3 3.14's mount.fuse3.
        for (given, kept) in [
            ("rw,noatime,dev,suid", "rw,noatime"),
            ("rw,nosuid,dev", "rw,nosuid"),
            ("rw,nodev,nosuid", "rw,nodev,nosuid"),
            ("rw,suid,dev,suid", "rw,suid"),
            ("rw,dev,dev,suid", "rw,dev"),
        ] {
            let mut args: Vec<OsString> = ["envfs", "mount", "/b", "/m", "-o", given]
                .iter()
                .map(OsString::from)
                .collect();
            drop_appended_dev_suid(&mut args);
            assert_eq!(args[5], kept, "{given}");
        }
    }

    #[test]
    fn every_listed_option_parses_and_is_documented() {
        let operations = include_str!("../../docs/OPERATIONS.md");
        for (spelling, example, _) in MOUNT_OPTIONS {
            let mut c = MountConfig::default();
            parse_options(&[example.to_string()], &mut c)
                .unwrap_or_else(|e| panic!("{spelling}: example {example} refused: {e}"));
            let name = example.split('=').next().unwrap();
            assert!(
                operations.contains(&format!("`{name}")),
                "{spelling}: docs/OPERATIONS.md does not name `{name}`"
            );
        }
        let help = options_help();
        for (spelling, _, _) in MOUNT_OPTIONS {
            assert!(help.contains(spelling), "{spelling} missing from --help");
        }
    }

    #[test]
    fn options_parse_and_reject_unknown() {
        let mut c = MountConfig::default();
        parse_options(
            &[
                "ro,allow_other,key_file=/k,attr_timeout=0.5,nofail,_netdev,x-systemd.automount"
                    .into(),
            ],
            &mut c,
        )
        .unwrap();
        assert!(c.read_only && c.allow_other);
        assert_eq!(c.key, Some(KeySource::File("/k".into())));
        assert_eq!(c.attr_timeout, Some(Duration::from_millis(500)));
        assert!(!c.writeback_cache);
        parse_options(&["writeback_cache".into()], &mut c).unwrap();
        assert!(c.writeback_cache);
        parse_options(&["no_writeback_cache".into()], &mut c).unwrap();
        assert!(!c.writeback_cache);
        assert!(parse_options(&["writeback_cache=1".into()], &mut c).is_err());
        assert!(!c.noacl);
        parse_options(&["noacl".into()], &mut c).unwrap();
        assert!(c.noacl);
        parse_options(&["acl".into()], &mut c).unwrap();
        assert!(!c.noacl);
        assert!(parse_options(&["noacl=1".into()], &mut c).is_err());
        parse_options(&["prefetch=64,prefetch_workers=32".into()], &mut c).unwrap();
        assert_eq!((c.prefetch, c.prefetch_workers), (Some(64), Some(32)));
        assert!(parse_options(&["prefetch_workers=0".into()], &mut c).is_err());
        parse_options(&["unwrap_ahead=0".into()], &mut c).unwrap();
        assert_eq!(c.unwrap_ahead, Some(0));
        parse_options(&["unwrap_ahead=64".into()], &mut c).unwrap();
        assert_eq!(c.unwrap_ahead, Some(64));
        for bad in ["unwrap_ahead=257", "unwrap_ahead=x", "unwrap_ahead"] {
            assert!(parse_options(&[bad.into()], &mut c).is_err(), "{bad}");
        }
        parse_options(&["threads=1".into()], &mut c).unwrap();
        assert_eq!(c.threads, Some(1));
        assert!(parse_options(&["threads=0".into()], &mut c).is_err());
        assert!(parse_options(&["threads=65".into()], &mut c).is_err());
        parse_options(&["negative_timeout=0".into()], &mut c).unwrap();
        assert_eq!(c.negative_timeout, Some(Duration::ZERO));
        assert!(parse_options(&["negative_timeout=-1".into()], &mut c).is_err());
        parse_options(&["readahead_kb=0".into()], &mut c).unwrap();
        assert_eq!(c.readahead_kb, Some(0));
        for bad in ["readahead_kb=65537", "readahead_kb=-1", "readahead_kb=1M"] {
            let err = parse_options(&[bad.into()], &mut c)
                .unwrap_err()
                .to_string();
            assert!(err.contains("expected KiB in 0..=65536"), "{bad}: {err}");
        }
        assert!(parse_options(&["bogus".into()], &mut c).is_err());
        assert!(parse_options(&["attr_timeout=x".into()], &mut c).is_err());
        parse_options(
            &["vault_fingerprint=00112233445566778899aabbccddeeff,accept_rollback=4".into()],
            &mut c,
        )
        .unwrap();
        assert_eq!(
            c.vault_fingerprint.map(|f| f.to_string()).as_deref(),
            Some("00112233445566778899aabbccddeeff")
        );
        assert_eq!(c.accept_rollback, Some(4));
        assert!(parse_options(&["vault_fingerprint=00".into()], &mut c).is_err());
        assert!(parse_options(&["accept_rollback=yes".into()], &mut c).is_err());
    }

    #[test]
    fn mount_helper_form_is_rewritten() {
        let args: Vec<OsString> = ["envfs", "/b", "/m", "-o", "rw"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = rewrite_mount_helper_args(args);
        assert_eq!(out[1], "mount");
        assert_eq!(out[2], "/b");
        // Every subcommand is left alone (this listed them by hand and missed new ones).
        use clap::CommandFactory;
        for sub in super::super::Cli::command().get_subcommands() {
            let args: Vec<OsString> = ["envfs", sub.get_name(), "/b", "x"]
                .iter()
                .map(OsString::from)
                .collect();
            assert_eq!(
                rewrite_mount_helper_args(args.clone()),
                args,
                "{}",
                sub.get_name()
            );
        }
    }
}
