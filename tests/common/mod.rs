//! Helpers shared by the integration tests: build a vault in a temporary directory, reopen
//! it from disk, and read whole files through the filesystem core.

#![allow(dead_code)]

use envfs::crypto::Secret32;
use envfs::format::NameEncoding;
use envfs::fs::{Fs, Handle};
use envfs::keys::KeyProvider;
use envfs::keys::local::LocalKeyProvider;
use envfs::vault::{InitOptions, Vault};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The KEK every test vault is created with.
pub const KEK: [u8; 32] = [0x42; 32];

pub fn provider() -> Arc<dyn KeyProvider> {
    Arc::new(LocalKeyProvider::from_kek(&Secret32::from_bytes(KEK)))
}

pub fn options(chunk_size: u32, header_size: u32) -> InitOptions {
    InitOptions {
        chunk_size,
        header_size,
        ..InitOptions::default()
    }
}

/// The smallest geometry the format allows: keeps tests fast and chunk boundaries close.
pub fn small() -> InitOptions {
    options(1024, 256)
}

pub fn base32(mut opts: InitOptions) -> InitOptions {
    opts.name_encoding = NameEncoding::Base32;
    opts
}

/// A vault in a fresh temporary directory, and the filesystem core over it.
pub struct TestVault {
    pub dir: tempfile::TempDir,
    pub fs: Fs,
}

impl TestVault {
    pub fn new(opts: &InitOptions) -> TestVault {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = Vault::init(dir.path(), provider(), opts).expect("init");
        TestVault {
            dir,
            fs: Fs::new(Arc::new(vault)),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Drop the filesystem and vault and open both again from the backing directory.
    pub fn reopen(&mut self) {
        self.fs = open_fs(self.dir.path());
    }

    pub fn backing(&self, path: &str) -> PathBuf {
        self.fs.backing_path(Path::new(path)).expect("backing path")
    }
}

pub fn open_fs(root: &Path) -> Fs {
    let vault = Vault::open(root, vec![provider()]).expect("open vault");
    Fs::new(Arc::new(vault))
}

/// Create (or truncate) `path` and fill it with `data` in one write.
pub fn write_file(fs: &Fs, path: &str, data: &[u8]) {
    let (h, _) = fs
        .create(Path::new(path), 0o644, libc::O_RDWR | libc::O_TRUNC, None)
        .expect("create");
    if !data.is_empty() {
        assert_eq!(fs.write(&h, 0, data).expect("write"), data.len());
    }
}

/// Read a whole file through a fresh handle.
pub fn read_file(fs: &Fs, path: &str) -> envfs::Result<Vec<u8>> {
    let h = fs.open(Path::new(path), libc::O_RDONLY)?;
    read_all(fs, &h)
}

/// Read a whole file through `h`, asking for more than its size.
pub fn read_all(fs: &Fs, h: &Handle) -> envfs::Result<Vec<u8>> {
    let size = fs.size(h)?;
    fs.read(h, 0, size as usize + 4096)
}

/// Deterministic, non-repeating test content (a different stream per `seed`).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
