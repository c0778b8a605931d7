//! KEK pinning: which key-service key wraps new DEKs is decided on the mounting host, never
//! by the (attacker-writable) backing store.
//!
//! Like SSH's known_hosts: the key is given explicitly (`--kms-key`) or recorded in a trust
//! file on first use, `$XDG_CONFIG_HOME/envfs/trust/<vault-id>`. A config that later names a
//! different key is refused with a message saying what changed. (A local key file needs no
//! pin: the file on this host *is* the key.)

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

fn trust_path(vault_id_hex: &str) -> Option<PathBuf> {
    Some(
        crate::keys::keyfile::config_dir()?
            .join("trust")
            .join(vault_id_hex),
    )
}

/// The KMS key pinned for this vault on this host, if any.
pub fn pinned_kms_key(vault_id_hex: &str) -> Result<Option<(String, PathBuf)>> {
    let Some(path) = trust_path(vault_id_hex) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::KeyFile(format!(
                "cannot read trust file {}: {e}",
                path.display()
            )));
        }
    };
    for line in text.lines().map(str::trim) {
        if let Some(arn) = line.strip_prefix("aws-kms ") {
            return Ok(Some((arn.trim().to_string(), path)));
        }
    }
    Err(Error::KeyFile(format!(
        "trust file {} is not in the expected format",
        path.display()
    )))
}

/// Record `arn` as the pinned KMS key of the vault (first use). Never overwrites a pin.
pub fn pin_kms_key(vault_id_hex: &str, arn: &str) -> Result<PathBuf> {
    let path = trust_path(vault_id_hex).ok_or_else(|| {
        Error::KeyFile(
            "neither XDG_CONFIG_HOME nor HOME is set: cannot record the KMS key pin".into(),
        )
    })?;
    let text = zeroize::Zeroizing::new(format!(
        "# envfs: the KMS key that wraps new DEKs of vault {vault_id_hex}\naws-kms {arn}\n"
    ));
    if path.exists() {
        return Ok(path);
    }
    crate::keys::keyfile::create_private_file(&path, &text)?;
    Ok(path)
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
    let known = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("vault "))
        .unwrap_or("")
        .trim();
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
