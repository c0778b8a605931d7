//! One error type for every layer below the CLI.
//!
//! Each variant says *what kind* of thing went wrong, because two callers need that: the FUSE
//! adapter maps it to an errno, and the CLI maps it to a documented exit code. Messages name
//! backing paths, key ids and chunk indices, never key material or plaintext content.

use std::io;
use std::path::PathBuf;

/// What was found wrong with authenticated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegrityKind {
    /// A chunk failed AES-GCM authentication (bit flip, moved, zeroed, reordered chunk).
    Chunk,
    /// The backing file's length is not one a writer could have produced (truncated or
    /// appended bytes).
    Length,
    /// The file header is malformed or fails its MAC or key commitment.
    Header,
    /// An encrypted name (or its long-name sidecar) failed to decrypt or verify.
    Name,
    /// A symlink's encrypted target failed to decrypt.
    LinkTarget,
    /// A `user.*` xattr value failed to decrypt (its name is never logged: it is plaintext).
    XattrValue,
}

impl std::fmt::Display for IntegrityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntegrityKind::Chunk => "chunk failed authentication",
            IntegrityKind::Length => "file length is invalid (truncated or appended data)",
            IntegrityKind::Header => "file header is corrupt or not authentic",
            IntegrityKind::Name => "encrypted name is corrupt or not authentic",
            IntegrityKind::LinkTarget => "encrypted symlink target is corrupt or not authentic",
            IntegrityKind::XattrValue => "encrypted xattr value is corrupt or not authentic",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the backing store, passed through with its errno.
    #[error("{0}")]
    Io(#[from] io::Error),

    /// Ciphertext on the backing store is not authentic.
    #[error("integrity error in {path}{}: {kind}", chunk.map(|c| format!(" (chunk {c})")).unwrap_or_default())]
    Integrity {
        path: PathBuf,
        chunk: Option<u64>,
        kind: IntegrityKind,
    },

    /// The directory has no vault config.
    #[error("{0} is not an envfs vault (no envfs.conf)")]
    NotAVault(PathBuf),

    /// The vault config is malformed or fails authentication.
    #[error("vault config is corrupt: {0}")]
    CorruptConfig(String),

    /// The vault (or a file) was written by a newer envfs.
    #[error("{0}")]
    UnsupportedVersion(String),

    /// A key file is missing, unreadable or malformed.
    #[error("{0}")]
    KeyFile(String),

    /// None of the keys offered can open this vault.
    #[error("{0}")]
    WrongKey(String),

    /// A key service refused or failed (access denied, unreachable, disabled key).
    #[error("key service error: {0}")]
    KeyService(String),

    /// The pinned key-encryption key differs from the one the vault config names.
    #[error("{0}")]
    KeyPinMismatch(String),

    /// The vault secret is not the one this host (or the operator, or the recovery key's own
    /// proof) knows for this vault id: the config was forged or replaced.
    #[error("{0}")]
    VaultMismatch(String),

    /// The config is authentic but older than one this host has already seen (restored from
    /// a backup, or rolled back by whoever can write the backing store).
    #[error("{0}")]
    ConfigRollback(String),

    /// `init` was pointed at a directory that is not empty or already holds a vault.
    #[error("{0}")]
    AlreadyExists(String),

    /// A bad argument or option value.
    #[error("{0}")]
    Invalid(String),

    /// A plaintext name is longer than NAME_MAX or reserved by envfs.
    #[error("file name too long")]
    NameTooLong,

    /// The name is reserved for envfs' own files in the backing directory.
    #[error("name is reserved by envfs")]
    ReservedName,

    /// Growing a file needs more space than the backing store has free.
    #[error("not enough free space on the backing store")]
    NoSpace,

    /// The mountpoint is missing, not a directory, busy or not empty, or mounting failed.
    #[error("{0}")]
    Mount(String),

    /// FUSE is not available on this machine (/dev/fuse or fusermount3 missing).
    #[error("{0}")]
    FuseUnavailable(String),

    /// A failure already reported by a child process (the mount daemon), with its exit code.
    #[error("{1}")]
    Reported(u8, String),

    /// The requested size is beyond the format's maximum file size.
    #[error("file too large for the envfs format")]
    FileTooBig,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The errno a filesystem call should return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            // A store that cannot be reached is EIO, not ENOTCONN: from a FUSE mount,
            // "Transport endpoint is not connected" reads as "the envfs daemon died".
            Error::Io(e) => match e.raw_os_error() {
                Some(n) if is_transport_errno(n) => libc::EIO,
                Some(n) => n,
                None => libc::EIO,
            },
            Error::Integrity { .. } => libc::EIO,
            Error::NotAVault(_) | Error::CorruptConfig(_) | Error::UnsupportedVersion(_) => {
                libc::EIO
            }
            Error::KeyFile(_)
            | Error::WrongKey(_)
            | Error::KeyService(_)
            | Error::KeyPinMismatch(_)
            | Error::VaultMismatch(_)
            | Error::ConfigRollback(_) => libc::EIO,
            Error::AlreadyExists(_) => libc::EEXIST,
            Error::Mount(_) | Error::FuseUnavailable(_) | Error::Reported(..) => libc::EIO,
            Error::Invalid(_) => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::ReservedName => libc::EPERM,
            Error::NoSpace => libc::ENOSPC,
            Error::FileTooBig => libc::EFBIG,
        }
    }

    /// Build an `Error::Io` from a raw errno.
    pub fn from_errno(errno: i32) -> Error {
        Error::Io(io::Error::from_raw_os_error(errno))
    }

    /// Whether this is the backing store's "no such file or directory".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// Errnos that say a (network) backing store cannot be reached, rather than anything
/// about one file. `Error::errno` answers them as `EIO`; the fs core's outage check
/// (src/fs/outage.rs) watches for them.
pub fn is_transport_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOTCONN
            | libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::ECONNREFUSED
            | libc::ETIMEDOUT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ESHUTDOWN
    )
}
