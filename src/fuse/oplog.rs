//! The debug log of FUSE requests (`-vv`, `ENVFS_LOG=debug`): one line per request with its
//! kind, node, names, result and latency, for an operator who needs to see what a program
//! does to the mount.
//!
//! Names are plaintext, and plaintext never reaches a log (docs/SECURITY.md). So a name is
//! shown as a tag, `#` and 12 hex digits of HMAC-SHA256 under a key derived from the vault
//! secret: the same name has the same tag in every line and every mount of the vault, so two
//! lines about one file can be matched, but the tag tells nothing about the name to whoever
//! reads the log without the vault's key (and a guess cannot be checked without it).
//!
//! The result is the errno the request failed with, as the adapter's `fail` noted it on this
//! thread (each FUSE worker serves one request at a time), or `ok`. When debug is off for
//! this target, a request costs one check of the filter and nothing else.

use crate::crypto::Secret32;
use crate::crypto::file_keys::hmac32;
use std::cell::Cell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

thread_local! {
    /// The errno the request being served on this thread failed with, if it did.
    static FAILED: Cell<Option<i32>> = const { Cell::new(None) };
}

/// Note that the request being served on this thread fails with `errno`.
pub fn note_failure(errno: i32) {
    FAILED.with(|f| f.set(Some(errno)));
}

/// Forget a failure noted earlier in this request: a fallback answered it.
pub fn clear_failure() {
    FAILED.with(|f| f.set(None));
}

/// The key that tags names, derived from the vault secret (vault/mod.rs).
pub struct NameTags {
    key: Secret32,
}

impl NameTags {
    pub fn new(key: Secret32) -> NameTags {
        NameTags { key }
    }

    /// `#` and 12 hex digits: the same for the same name in every mount of the vault.
    pub fn tag(&self, name: &OsStr) -> String {
        let mac = hmac32(&self.key, &[name.as_bytes()]);
        format!("#{}", hex::encode(&mac[..6]))
    }
}

/// One request being served; logs its line when dropped (after the reply was sent).
pub struct Op {
    live: Option<Live>,
}

struct Live {
    kind: &'static str,
    ino: u64,
    names: Vec<String>,
    started: Instant,
}

impl Op {
    /// Start the line of a `kind` request on node `ino` naming `names`, if debug lines
    /// are wanted.
    pub fn begin(kind: &'static str, ino: u64, names: &[&OsStr], tags: &NameTags) -> Op {
        if !tracing::enabled!(target: "envfs::fuse::op", tracing::Level::DEBUG) {
            return Op { live: None };
        }
        clear_failure();
        Op {
            live: Some(Live {
                kind,
                ino,
                names: names.iter().map(|n| tags.tag(n)).collect(),
                started: Instant::now(),
            }),
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let micros = live.started.elapsed().as_micros();
        let result = match FAILED.with(|f| f.take()) {
            Some(errno) => errno_name(errno),
            None => "ok".to_string(),
        };
        let names = if live.names.is_empty() {
            String::new()
        } else {
            format!(" {}", live.names.join(" -> "))
        };
        tracing::debug!(
            target: "envfs::fuse::op",
            "{} ino={}{names}: {result} in {micros} µs",
            live.kind,
            live.ino
        );
    }
}

/// `ENOENT`, `EIO`, …: the symbolic name of an errno (its number when unknown).
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::ENOTSUP => "ENOTSUP",
        libc::ESTALE => "ESTALE",
        libc::ENOTTY => "ENOTTY",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EINTR => "EINTR",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_per_key_and_show_nothing_of_the_name() {
        let a = NameTags::new(Secret32::from_bytes([1; 32]));
        let b = NameTags::new(Secret32::from_bytes([2; 32]));
        let name = OsStr::new("quarterly-report.pdf");
        assert_eq!(a.tag(name), a.tag(name));
        assert_ne!(a.tag(name), b.tag(name));
        assert_ne!(a.tag(name), a.tag(OsStr::new("quarterly-report.pdf~")));
        assert_eq!(a.tag(name).len(), 13);
        assert!(!a.tag(name).contains("report"));
    }
}
