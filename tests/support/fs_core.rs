//! Library-level helpers: a vault built in a temporary directory through `envfs::vault`,
//! the filesystem core (`envfs::fs::Fs`) over it, reopening it from disk, and whole-file
//! reads and writes through the core. No binary, no mount.

use envfs::crypto::Secret32;
use envfs::format::NameEncoding;
use envfs::fs::Fs;
use envfs::keys::KeyProvider;
use envfs::keys::local::LocalKeyProvider;
use envfs::vault::{InitOptions, Vault};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The KEK every core vault is created with.
const KEK: [u8; 32] = [0x42; 32];

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

/// A vault in a fresh temporary directory and the filesystem core over it, opened with
/// [`provider`] (unlike `support::TestVault`, which `envfs init` makes with a key file).
pub struct CoreVault {
    pub dir: tempfile::TempDir,
    pub fs: Fs,
}

impl CoreVault {
    pub fn new(opts: &InitOptions) -> CoreVault {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = Vault::init(dir.path(), provider(), opts).expect("init");
        CoreVault {
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

/// Read a whole file through a fresh handle, asking for more than its size.
pub fn read_file(fs: &Fs, path: &str) -> envfs::Result<Vec<u8>> {
    let h = fs.open(Path::new(path), libc::O_RDONLY)?;
    let size = fs.size(&h)?;
    fs.read(&h, 0, size as usize + 4096)
}
