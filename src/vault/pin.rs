//! KEK pinning: which key-service key wraps new DEKs is decided on the mounting host, never
//! by the (attacker-writable) backing store.
//!
//! Like SSH's known_hosts: the key is given explicitly (`--kms-key`) or recorded in a trust
//! file on first use, `$XDG_CONFIG_HOME/envfs/trust/<vault-id>`. A config that later names a
//! different key is refused with a message saying what changed. (A local key file needs no
//! pin: the file on this host *is* the key.)

use crate::error::{Error, Result};
use std::path::PathBuf;

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
