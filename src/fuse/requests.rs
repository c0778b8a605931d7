//! How many requests of each kind the kernel sent this mount, for `envfs status`. Every
//! request is a round trip between the kernel and the daemon, and on a network store most
//! of them are a round trip to the server as well: these counts are how an operator (and a
//! test) sees what a workload costs, and whether the kernel's caches do their job. Counts
//! only: never a name, a path or a size.

use std::sync::atomic::{AtomicU64, Ordering};

/// The request kinds counted, in the order `envfs status` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    /// ioctl, lseek, copy_file_range and poll: answered without the backing store.
    Other,
}

/// Each kind's name as `envfs status` shows it, indexed by `Kind as usize`.
const NAMES: [&str; 31] = [
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
    "other",
];

/// The counters, shared between the FUSE adapter (which adds) and the status socket
/// (which reads). Relaxed atomics: each count is exact, the set is not a snapshot.
#[derive(Debug)]
pub struct RequestCounts([AtomicU64; NAMES.len()]);

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Kind {
    /// The kind's name, as `envfs status` and the debug log show it.
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

impl RequestCounts {
    pub fn add(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind with its count so far, zeros included, in `Kind` order.
    pub fn all(&self) -> Vec<(&'static str, u64)> {
        NAMES
            .iter()
            .zip(&self.0)
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_counts_under_its_own_name() {
        let counts = RequestCounts::default();
        counts.add(Kind::Lookup);
        counts.add(Kind::Lookup);
        counts.add(Kind::Other);
        let all = counts.all();
        assert_eq!(all.len(), Kind::Other as usize + 1);
        assert_eq!(all[Kind::Lookup as usize], ("lookup", 2));
        assert_eq!(all[Kind::Fallocate as usize], ("fallocate", 0));
        assert_eq!(all[Kind::Other as usize], ("other", 1));
        assert_eq!(all.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
