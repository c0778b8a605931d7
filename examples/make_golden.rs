//! Generates a golden-vector vault in the current format, as checked into `tests/golden/v2/`
//! (`tests/golden/v1/` was made by the same program at format version 1).
//!
//! ```text
//! cargo run --example make_golden -- OUTDIR
//! ```
//!
//! writes `OUTDIR/golden.key` (a fresh local key file), `OUTDIR/recovery.key` (an X25519
//! recovery key, added as the vault's second key: config generation 2, its slot with the
//! holder's proof) and `OUTDIR/vault/` (the backing directory). The output is random (keys,
//! file ids, nonces), so it is generated once and frozen; tests/golden.rs checks the frozen
//! copies. Never regenerate a `tests/golden/vN/`: a format change must keep reading it. A
//! new format version gets a new `tests/golden/vN/`.
//!
//! The plaintext is deterministic: the table in tests/support/golden_table.rs, which
//! tests/golden.rs checks against.

use envfs::fs::Fs;
use envfs::keys::local::LocalKeyProvider;
use envfs::keys::x25519::X25519KeyProvider;
use envfs::vault::{InitOptions, Vault};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[path = "../tests/support/golden_table.rs"]
mod golden_table;
use golden_table::{DIR, LINK, LINK_TARGET, content, golden_plain_files};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: make_golden OUTDIR")?,
    );
    let root = out.join("vault");
    let key_path = out.join("golden.key");
    std::fs::create_dir_all(&root)?;
    if std::fs::read_dir(&root)?.next().is_some()
        || key_path.exists()
        || out.join("recovery.key").exists()
    {
        return Err(format!("{} already holds a golden vault", out.display()).into());
    }

    let vault_id: [u8; 16] = envfs::crypto::random::array();
    let provider = LocalKeyProvider::create(&key_path, &hex::encode(vault_id))?;
    let opts = InitOptions {
        vault_id: Some(vault_id),
        ..InitOptions::default()
    };
    assert_eq!((opts.chunk_size, opts.header_size), (4096, 1024));
    let mut vault = Vault::init(&root, Arc::new(provider), &opts)?;
    let recovery = X25519KeyProvider::create(&out.join("recovery.key"))?;
    vault.add_key(&recovery)?;
    let fs = Fs::new(Arc::new(vault));

    // Root files first, then the directory and the files in it, then the symlink.
    let (root_files, dir_files): (Vec<_>, Vec<_>) = golden_plain_files()
        .into_iter()
        .partition(|f| !f.path.contains('/'));
    for f in &root_files {
        write_file(&fs, Path::new(&f.path), &content(f.seed, f.len))?;
    }
    fs.mkdir(Path::new(DIR), 0o755, None)?;
    for f in &dir_files {
        assert!(
            Path::new(&f.path).parent() == Some(Path::new(DIR)),
            "{}",
            f.path
        );
        write_file(&fs, Path::new(&f.path), &content(f.seed, f.len))?;
    }
    fs.symlink(OsStr::new(LINK_TARGET), Path::new(LINK), None)?;

    println!(
        "golden vault {} (fingerprint {}) written to {}",
        hex::encode(vault_id),
        fs.vault().fingerprint(),
        out.display()
    );
    Ok(())
}

/// Create `path` and write `data` in uneven pieces (so the frozen files also went through
/// the read-modify-write path).
fn write_file(fs: &Fs, path: &Path, data: &[u8]) -> envfs::Result<()> {
    let (handle, _) = fs.create(
        path,
        0o644,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        None,
    )?;
    let mut offset = 0;
    for piece in data.chunks(1000) {
        fs.write(&handle, offset as u64, piece)?;
        offset += piece.len();
    }
    fs.fsync(&handle, false)?;
    Ok(())
}
