//! KEK pinning: which key-service key wraps new DEKs is decided on the mounting host, never
//! by the (attacker-writable) backing store.
//!
//! Like SSH's known_hosts: the key is given explicitly (`--kms-key`) or recorded in the
//! host's record of the vault on first use (vault/known.rs). A config that later names a
//! different key is refused with a message saying what changed. (A local key file needs no
//! pin: the file on this host *is* the key.)

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The KMS key pinned for this vault on this host, if any, and the file that pins it.
pub fn pinned_kms_key(vault_id_hex: &str) -> Result<Option<(String, PathBuf)>> {
    let (record, path) = super::known::load(vault_id_hex)?;
    Ok(record.kms_key.zip(path))
}

/// Record `arn` as the pinned KMS key of the vault (first use). Never replaces a pin.
pub fn pin_kms_key(vault_id_hex: &str, arn: &str) -> Result<PathBuf> {
    let (mut record, path) = super::known::load(vault_id_hex)?;
    if let (Some(_), Some(path)) = (&record.kms_key, path) {
        return Ok(path);
    }
    record.kms_key = Some(arn.to_string());
    super::known::store(vault_id_hex, &record)
}

/// Where this host remembers which vault lives at a backing path:
/// `$XDG_CONFIG_HOME/envfs/trust/paths/<sha256 of the canonical path>`.
fn path_record(backing: &Path) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let canonical = backing.canonicalize().ok()?;
    let digest = Sha256::digest(canonical.as_os_str().as_bytes());
    Some(
        crate::keys::keyfile::config_dir()?
            .join("trust")
            .join("paths")
            .join(hex::encode(&digest[..16])),
    )
}

/// Refuse a backing directory whose config now names another vault than the one this host
/// opened there before: an attacker who replaces the whole config (new vault id, own key,
/// valid MAC) would otherwise get a first-use pin for a key they control.
pub fn check_vault_at_path(backing: &Path, vault_id_hex: &str) -> Result<()> {
    let Some(record) = path_record(backing) else {
        return Ok(());
    };
    let Ok(text) = std::fs::read_to_string(&record) else {
        return Ok(());
    };
    let known = parse_path_record(&text).unwrap_or("");
    if known.is_empty() || known == vault_id_hex {
        return Ok(());
    }
    Err(Error::KeyPinMismatch(format!(
        "refusing to open {}: this host knows it as vault {known}, but its config now names vault \
         {vault_id_hex}. If the vault was replaced on purpose, remove {}",
        backing.display(),
        record.display()
    )))
}

/// The vault id a path record names (its `vault <id>` line), if any.
pub fn parse_path_record(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("vault "))
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

/// Remember that `vault_id_hex` lives at `backing` (first open only).
pub fn record_vault_at_path(backing: &Path, vault_id_hex: &str) -> Result<()> {
    let Some(record) = path_record(backing) else {
        return Ok(());
    };
    if record.exists() {
        return Ok(());
    }
    let text = zeroize::Zeroizing::new(format!(
        "# envfs: the vault this host opened at {}\nvault {vault_id_hex}\n",
        backing
            .canonicalize()
            .unwrap_or_else(|_| backing.to_path_buf())
            .display()
    ));
    crate::keys::keyfile::create_private_file(&record, &text)
}
