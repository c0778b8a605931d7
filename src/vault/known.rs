//! What this host knows of a vault, by vault id: the KMS key it pinned for new DEKs, the
//! fingerprint of the vault secret, and the highest config generation it has seen.
//!
//! The backing store is the attacker's (docs/SECURITY.md), so none of this can live there.
//! Like SSH's known_hosts, the first authenticated open records it and every later open is
//! held to it:
//!
//! - a config whose vault secret has another fingerprint is a forgery (or a vault replaced
//!   under the same id) and is refused, whichever key opened it;
//! - a config of a lower generation is an older copy put back (a rollback, which could
//!   bring back a removed key) and is refused unless the operator accepts it on purpose.
//!
//! The record is `$XDG_CONFIG_HOME/envfs/trust/<vault-id>`, a text file of `key value`
//! lines (mode 0600). Files written by envfs 0.1 hold only the `aws-kms` line and read as a
//! record with nothing else known yet.

use crate::crypto::Fingerprint;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::PathBuf;

/// Host records are a few lines; anything larger is not one.
const MAX_RECORD_LEN: u64 = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRecord {
    /// The KMS key that wraps new DEKs of this vault on this host (vault/pin.rs).
    pub kms_key: Option<String>,
    /// The vault secret's fingerprint, once the vault was opened here.
    pub fingerprint: Option<Fingerprint>,
    /// The highest config generation opened here.
    pub generation: Option<u64>,
}

impl HostRecord {
    /// Parse a record. Strict, like the config: an unknown or repeated line is refused,
    /// because a record this envfs half understands could drop a protection.
    pub fn parse(text: &str) -> std::result::Result<HostRecord, String> {
        let mut record = HostRecord::default();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .ok_or_else(|| format!("line {n}: expected `key value`"))?;
            if value.is_empty() {
                return Err(format!("line {n}: {key} has no value"));
            }
            let repeated = || format!("line {n}: {key} appears twice");
            match key {
                "aws-kms" => {
                    if record.kms_key.replace(value.to_string()).is_some() {
                        return Err(repeated());
                    }
                }
                "fingerprint" => {
                    let fp = Fingerprint::parse(value)
                        .ok_or_else(|| format!("line {n}: not a vault fingerprint"))?;
                    if record.fingerprint.replace(fp).is_some() {
                        return Err(repeated());
                    }
                }
                "generation" => {
                    let g = value
                        .parse::<u64>()
                        .map_err(|_| format!("line {n}: generation is not a number"))?;
                    if record.generation.replace(g).is_some() {
                        return Err(repeated());
                    }
                }
                _ => return Err(format!("line {n}: unknown entry {key:?}")),
            }
        }
        Ok(record)
    }

    pub fn encode(&self, vault_id_hex: &str) -> String {
        let mut text = format!(
            "# envfs: what this host knows of vault {vault_id_hex}. Written by envfs; a mismatch \
             with the backing store is refused.\n"
        );
        if let Some(arn) = &self.kms_key {
            text.push_str(&format!("aws-kms {arn}\n"));
        }
        if let Some(fp) = &self.fingerprint {
            text.push_str(&format!("fingerprint {fp}\n"));
        }
        if let Some(g) = self.generation {
            text.push_str(&format!("generation {g}\n"));
        }
        text
    }
}

/// Where the record of a vault lives; `None` when neither XDG_CONFIG_HOME nor HOME is set.
pub fn record_path(vault_id_hex: &str) -> Option<PathBuf> {
    Some(
        crate::keys::keyfile::config_dir()?
            .join("trust")
            .join(vault_id_hex),
    )
}

/// This host's record of a vault (empty if it has none) and where it lives.
pub fn load(vault_id_hex: &str) -> Result<(HostRecord, Option<PathBuf>)> {
    let Some(path) = record_path(vault_id_hex) else {
        return Ok((HostRecord::default(), None));
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((HostRecord::default(), Some(path)));
        }
        Err(e) => {
            return Err(Error::KeyFile(format!(
                "cannot read trust file {}: {e}",
                path.display()
            )));
        }
    };
    let mut text = String::new();
    file.take(MAX_RECORD_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::KeyFile(format!("cannot read trust file {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_RECORD_LEN {
        return Err(Error::KeyFile(format!(
            "trust file {} is too large to be an envfs trust file",
            path.display()
        )));
    }
    let record = HostRecord::parse(&text).map_err(|why| {
        Error::KeyFile(format!(
            "trust file {} is not in the expected format ({why})",
            path.display()
        ))
    })?;
    Ok((record, Some(path)))
}

/// Write the record (replacing the old one atomically).
pub fn store(vault_id_hex: &str, record: &HostRecord) -> Result<PathBuf> {
    let path = record_path(vault_id_hex).ok_or_else(|| {
        Error::KeyFile(
            "neither XDG_CONFIG_HOME nor HOME is set: cannot record what this host knows of the \
             vault"
                .into(),
        )
    })?;
    crate::keys::keyfile::replace_private_file(
        &path,
        &zeroize::Zeroizing::new(record.encode(vault_id_hex)),
    )?;
    Ok(path)
}

/// What the operator says about this open (command-line flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vouch {
    /// The fingerprint the operator expects (`--vault-fingerprint`).
    pub fingerprint: Option<Fingerprint>,
    /// Accept a config older than the one this host has seen (`--accept-rollback`).
    pub accept_rollback: bool,
}

/// Hold an opened (authenticated) vault to what this host knows of it, then remember what
/// it now knows: the fingerprint and the generation. Returns the updated record; nothing is
/// written when the vault is refused.
pub fn check_and_update(
    vault_id_hex: &str,
    fingerprint: Fingerprint,
    generation: u64,
    vouched_by_key: bool,
    opened_by: &str,
    vouch: &Vouch,
) -> Result<HostRecord> {
    let (mut record, path) = load(vault_id_hex)?;
    let before = record.clone();
    let where_known = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "this host's trust file".into());
    if let Some(expected) = vouch.fingerprint
        && expected != fingerprint
    {
        return Err(Error::VaultMismatch(format!(
            "refusing to open vault {vault_id_hex}: its vault secret has fingerprint {fingerprint}, \
             not {expected} as given with --vault-fingerprint. envfs.conf is forged or belongs \
             to another vault"
        )));
    }
    if let Some(known) = record.fingerprint
        && known != fingerprint
    {
        return Err(Error::VaultMismatch(format!(
            "refusing to open vault {vault_id_hex}: this host knows its vault secret by \
             fingerprint {known}, but envfs.conf now holds one with fingerprint {fingerprint}. \
             Whoever can write the backing store replaced the config (a forgery: files written \
             now would be readable by them). If the vault was re-created on purpose, remove \
             {where_known}"
        )));
    }
    if record.fingerprint.is_none() && vouch.fingerprint.is_none() && !vouched_by_key {
        return Err(Error::VaultMismatch(format!(
            "refusing to open vault {vault_id_hex}: it was opened by {opened_by}, whose slot in \
             envfs.conf carries no proof from the key's holder (written by envfs 0.1), and this \
             host has never opened the vault, so a forged config cannot be told from the real \
             one. Its vault secret has fingerprint {fingerprint}: if that is the fingerprint you \
             recorded, pass --vault-fingerprint {fingerprint}. To make the slot carry a proof, \
             run `envfs key add BACKING --new-key-file RECOVERY-KEY` with the vault's normal key"
        )));
    }
    if let Some(seen) = record.generation
        && generation < seen
    {
        if !vouch.accept_rollback {
            return Err(Error::ConfigRollback(format!(
                "refusing to open vault {vault_id_hex}: envfs.conf is generation {generation}, but \
                 this host has seen generation {seen}. An older copy of the config was put back \
                 (it may list keys that were removed since). If you restored it on purpose, run \
                 the command again with --accept-rollback; this host then remembers generation \
                 {generation}"
            )));
        }
        tracing::warn!(
            "vault {vault_id_hex}: accepting config generation {generation}, older than \
             generation {seen} seen before (--accept-rollback)"
        );
    }
    record.fingerprint = Some(fingerprint);
    // Accepting a rollback lowers what this host remembers to the accepted generation;
    // otherwise it only ever rises.
    record.generation = Some(if vouch.accept_rollback {
        generation
    } else {
        record.generation.unwrap_or(0).max(generation)
    });
    if record != before {
        store(vault_id_hex, &record)?;
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_legacy_pin_file() {
        let r = HostRecord {
            kms_key: Some("arn:aws:kms:eu-west-1:111122223333:key/abc".into()),
            fingerprint: Some(Fingerprint([9; 16])),
            generation: Some(7),
        };
        assert_eq!(HostRecord::parse(&r.encode("00")).unwrap(), r);
        // What envfs 0.1 wrote: only the pin.
        let legacy = "# envfs: the KMS key that wraps new DEKs of vault 00\naws-kms arn:x\n";
        assert_eq!(
            HostRecord::parse(legacy).unwrap(),
            HostRecord {
                kms_key: Some("arn:x".into()),
                ..HostRecord::default()
            }
        );
        assert_eq!(HostRecord::parse("").unwrap(), HostRecord::default());
    }

    #[test]
    fn strict_parse() {
        for bad in [
            "aws-kms",
            "generation x",
            "generation -1",
            "fingerprint 00",
            "something else",
            "generation 1\ngeneration 2",
            "aws-kms a\naws-kms b",
        ] {
            assert!(HostRecord::parse(bad).is_err(), "{bad:?}");
        }
    }
}
