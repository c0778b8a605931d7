//! KEK pinning: which key-service key wraps new DEKs is decided on the mounting host, never
//! by the (attacker-writable) backing store.
//!
//! Like SSH's known_hosts: the key is given explicitly (`--kms-key`) or recorded in a trust
//! file on first use, `$XDG_CONFIG_HOME/envfs/trust/<vault-id>`. A config that later names a
//! different key is refused with a message saying what changed. (A local key file needs no
//! pin: the file on this host *is* the key.)

use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

fn trust_path(vault_id_hex: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("envfs").join("trust").join(vault_id_hex))
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
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.parent().expect("has parent"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(
            f,
            "# envfs: the KMS key that wraps new DEKs of vault {vault_id_hex}"
        )?;
        writeln!(f, "aws-kms {arn}")?;
        f.sync_all()
    };
    match write() {
        Ok(()) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
        Err(e) => Err(Error::KeyFile(format!(
            "cannot record the KMS key pin in {}: {e}",
            path.display()
        ))),
    }
}
