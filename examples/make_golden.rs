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
//! ```text
//! cargo run --example make_golden -- --hierarchy OUTDIR
//! ```
//!
//! writes the key-hierarchy vault of `tests/golden/v3/` (config version 3) instead:
//! `golden.key` (a local key, the first), `golden-kms.key` (the local key behind a stand-in
//! for a KMS key, tests/support/golden_kms.rs, the second), the hierarchy on, and the same
//! files, whose headers carry a local slot and an intermediate-key slot.
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
#[path = "../tests/support/golden_kms.rs"]
mod golden_kms;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    let hierarchy = args.first().is_some_and(|a| a == "--hierarchy");
    if hierarchy {
        args.remove(0);
    }
    let out = PathBuf::from(
        args.into_iter()
            .next()
            .ok_or("usage: make_golden [--hierarchy] OUTDIR")?,
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
    if hierarchy {
        let kms_path = out.join("golden-kms.key");
        LocalKeyProvider::create(&kms_path, &hex::encode(vault_id))?;
        vault.add_key(&golden_kms::GoldenKms::load(&kms_path))?;
        let local: Arc<dyn envfs::keys::KeyProvider> = Arc::new(LocalKeyProvider::load(&key_path)?);
        let kms: Arc<dyn envfs::keys::KeyProvider> =
            Arc::new(golden_kms::GoldenKms::load(&kms_path));
        vault = Vault::open(&root, vec![local, kms])?;
        vault.set_key_hierarchy(Some(86_400))?;
    } else {
        let recovery = X25519KeyProvider::create(&out.join("recovery.key"))?;
        vault.add_key(&recovery)?;
    }
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
