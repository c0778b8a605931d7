//! KEK pinning: which key-service key wraps new DEKs is decided on the mounting host, never
//! by the (attacker-writable) backing store.
//!
//! Like SSH's known_hosts: the key is given explicitly (`--kms-key`) or recorded in the
//! host's record of the vault on first use (vault/known.rs). A config that later names a
//! different key is refused with a message saying what changed. (A local key file needs no
//! pin: the file on this host *is* the key.)

use super::host_state;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The KMS key pinned for this vault on this host, if any, and the file that pins it.
pub fn pinned_kms_key(vault_id_hex: &str) -> Result<Option<(String, PathBuf)>> {
    let (record, path) = super::known::load(vault_id_hex)?;
    Ok(record.kms_key.zip(path))
}

/// Record `arn` as the pinned KMS key of the vault (first use). Never replaces a pin.
/// Returns the file that pins it; `None` when the host cannot write its records (then a
/// warning has said so, and the next open pins again).
pub fn pin_kms_key(vault_id_hex: &str, arn: &str) -> Result<Option<PathBuf>> {
    let (mut record, path) = super::known::load(vault_id_hex)?;
    if let (Some(_), Some(path)) = (&record.kms_key, path) {
        return Ok(Some(path));
    }
    record.kms_key = Some(arn.to_string());
    match super::known::store(vault_id_hex, &record) {
        Ok(path) => Ok(Some(path)),
        Err(e) => {
            host_state::warn_unrecorded(vault_id_hex, &e.to_string(), None);
            Ok(None)
        }
    }
}

/// Where this host remembers which vault lives at a backing path:
/// `trust/paths/<sha256 of the canonical path>` in the host's state directory, and where
/// envfs 0.2 did.
fn path_record(backing: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let canonical = backing.canonicalize().ok()?;
    let digest = Sha256::digest(canonical.as_os_str().as_bytes());
    let name = Path::new("paths").join(hex::encode(&digest[..16]));
    Some((
        host_state::trust_dir()?.join(&name),
        host_state::legacy_trust_dir().map(|d| d.join(&name)),
    ))
}

/// Refuse a backing directory whose config now names another vault than the one this host
/// opened there before: an attacker who replaces the whole config (new vault id, own key,
/// valid MAC) would otherwise get a first-use pin for a key they control.
pub fn check_vault_at_path(backing: &Path, vault_id_hex: &str) -> Result<()> {
    let Some((current, legacy)) = path_record(backing) else {
        return Ok(());
    };
    let record = host_state::readable(&current, legacy);
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

/// Remember that `vault_id_hex` lives at `backing` (first open only). A host that cannot
/// write it is warned (vault/host_state.rs) and goes on.
pub fn record_vault_at_path(backing: &Path, vault_id_hex: &str) {
    let Some((record, legacy)) = path_record(backing) else {
        return;
    };
    if record.exists() {
        return;
    }
    let text = zeroize::Zeroizing::new(format!(
        "# envfs: the vault this host opened at {}\nvault {vault_id_hex}\n",
        backing
            .canonicalize()
            .unwrap_or_else(|_| backing.to_path_buf())
            .display()
    ));
    match crate::keys::keyfile::create_private_file(&record, &text) {
        Ok(()) => host_state::retire_legacy(&record, legacy),
        Err(e) => host_state::warn_unrecorded(vault_id_hex, &e.to_string(), None),
    }
}
