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
//! The record is `trust/<vault-id>` in the host's state directory (vault/host_state.rs says
//! which), a text file of `key value` lines (mode 0600). Files written by envfs 0.1 hold only
//! the `aws-kms` line and read as a record with nothing else known yet.

use super::host_state;
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
    /// The generation of the config in force here (the newest opened, or the one the
    /// operator accepted with `--accept-rollback`).
    pub generation: Option<u64>,
    /// A digest of that config's bytes: another config with the same generation is a fork
    /// (two configs made from one), refused like a rollback.
    pub config: Option<[u8; 16]>,
    /// The highest generation ever opened here. After an accepted rollback it stays above
    /// `generation`: configs of the abandoned line (up to it) stay refused, and the next
    /// change is numbered above it.
    pub highest: Option<u64>,
}

/// How a config compares with what the host knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Nothing known yet, or newer than anything seen: accepted.
    New,
    /// The config in force: accepted.
    Current,
    /// Older than the config in force, or a different config of the same or an abandoned
    /// generation: refused unless the operator accepts this generation.
    Stale { current: u64 },
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
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("line {n}: {key} is not a number"))
            };
            let once = match key {
                "aws-kms" => record.kms_key.replace(value.to_string()).is_none(),
                "fingerprint" => {
                    let fp = Fingerprint::parse(value)
                        .ok_or_else(|| format!("line {n}: not a vault fingerprint"))?;
                    record.fingerprint.replace(fp).is_none()
                }
                "generation" => record.generation.replace(number(value)?).is_none(),
                "highest" => record.highest.replace(number(value)?).is_none(),
                "config" => {
                    let digest: [u8; 16] = hex::decode(value)
                        .ok()
                        .and_then(|d| d.try_into().ok())
                        .ok_or_else(|| format!("line {n}: not a config digest"))?;
                    record.config.replace(digest).is_none()
                }
                _ => return Err(format!("line {n}: unknown entry {key:?}")),
            };
            if !once {
                return Err(repeated());
            }
        }
        if let (Some(g), Some(h)) = (record.generation, record.highest)
            && h < g
        {
            return Err(format!("highest generation {h} is below generation {g}"));
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
        if let Some(d) = &self.config {
            text.push_str(&format!("config {}\n", hex::encode(d)));
        }
        if let Some(h) = self.highest {
            text.push_str(&format!("highest {h}\n"));
        }
        text
    }

    /// The highest generation this host has seen (0 if none).
    pub fn highest_seen(&self) -> u64 {
        self.highest.or(self.generation).unwrap_or(0)
    }

    fn standing(&self, generation: u64, digest: &[u8; 16]) -> Standing {
        let Some(current) = self.generation else {
            return Standing::New;
        };
        if generation > self.highest_seen() {
            return Standing::New;
        }
        // A record written before digests were kept knows only the number.
        if generation == current && self.config.is_none_or(|d| &d == digest) {
            return Standing::Current;
        }
        Standing::Stale { current }
    }
}

/// Where the record of a vault lives; `None` when the host has no state directory.
pub fn record_path(vault_id_hex: &str) -> Option<PathBuf> {
    Some(host_state::trust_dir()?.join(vault_id_hex))
}

/// This host's record of a vault (empty if it has none) and the file it is in (or would be).
pub fn load(vault_id_hex: &str) -> Result<(HostRecord, Option<PathBuf>)> {
    let Some(path) = record_path(vault_id_hex) else {
        return Ok((HostRecord::default(), None));
    };
    let path = host_state::readable(&path, legacy_path(vault_id_hex));
    Ok((read_record(&path)?, Some(path)))
}

fn legacy_path(vault_id_hex: &str) -> Option<PathBuf> {
    host_state::legacy_trust_dir().map(|d| d.join(vault_id_hex))
}

fn read_record(path: &std::path::Path) -> Result<HostRecord> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostRecord::default()),
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
    HostRecord::parse(&text).map_err(|why| {
        Error::KeyFile(format!(
            "trust file {} is not in the expected format ({why})",
            path.display()
        ))
    })
}

/// Write the record (replacing the old one atomically).
pub fn store(vault_id_hex: &str, record: &HostRecord) -> Result<PathBuf> {
    let path = record_path(vault_id_hex).ok_or_else(|| {
        Error::KeyFile(format!(
            "this host has no state directory for what it knows of the vault ({})",
            host_state::WHERE
        ))
    })?;
    crate::keys::keyfile::replace_private_file(
        &path,
        &zeroize::Zeroizing::new(record.encode(vault_id_hex)),
    )?;
    host_state::retire_legacy(&path, legacy_path(vault_id_hex));
    Ok(path)
}

/// Holds the host's lock on a vault's record while it is read, checked and rewritten, so
/// that two envfs processes on one host cannot interleave and lower what it remembers.
struct RecordLock(#[allow(dead_code)] std::fs::File);

/// The lock, or why none could be taken (the record cannot be written either then).
fn lock_record(vault_id_hex: &str) -> std::result::Result<RecordLock, String> {
    use std::os::fd::AsRawFd;
    let Some(path) = record_path(vault_id_hex) else {
        return Err(format!("no state directory: {}", host_state::WHERE));
    };
    let lock_path = path.with_file_name(format!(".{vault_id_hex}.lock"));
    if let Some(dir) = lock_path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?
    };
    // SAFETY: flock on a descriptor we own; it is released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("cannot lock {}: {e}", lock_path.display()));
    }
    Ok(RecordLock(file))
}

/// What the operator says about this open (command-line flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vouch {
    /// The fingerprint the operator expects (`--vault-fingerprint`).
    pub fingerprint: Option<Fingerprint>,
    /// Accept this generation although the host has seen a newer or another config
    /// (`--accept-rollback GEN`): only this one, so a flag left in a script accepts nothing
    /// else.
    pub accept_rollback: Option<u64>,
}

/// What an opened, authenticated config is, for the host's checks.
pub struct OpenedConfig<'a> {
    pub vault_id_hex: &'a str,
    pub fingerprint: Fingerprint,
    pub generation: u64,
    /// Digest of the config's bytes.
    pub digest: [u8; 16],
    /// Whether the slot that opened it proves the vault secret by itself.
    pub vouched_by_key: bool,
    /// The key that opened it, for messages.
    pub opened_by: &'a str,
}

/// Hold an opened (authenticated) config to what this host knows of the vault, then
/// remember what it now knows. Returns the record in force; nothing is written when the
/// config is refused. Where records cannot be written (no state directory, or not a
/// writable one) the checks still run against what is recorded, and a warning says what
/// is lost (vault/host_state.rs).
pub fn check_and_update(opened: &OpenedConfig<'_>, vouch: &Vouch) -> Result<HostRecord> {
    let id = opened.vault_id_hex;
    let fingerprint = opened.fingerprint;
    let generation = opened.generation;
    let lock = lock_record(id);
    let (mut record, path) = load(id)?;
    let before = record.clone();
    let where_known = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "this host's trust file".into());
    if let Some(expected) = vouch.fingerprint
        && expected != fingerprint
    {
        return Err(Error::VaultMismatch(format!(
            "refusing to open vault {id}: its vault secret has fingerprint {fingerprint}, \
             not {expected} as given with --vault-fingerprint. envfs.conf is forged or belongs \
             to another vault"
        )));
    }
    if let Some(known) = record.fingerprint
        && known != fingerprint
    {
        return Err(Error::VaultMismatch(format!(
            "refusing to open vault {id}: this host knows its vault secret by fingerprint \
             {known}, but envfs.conf now holds one with fingerprint {fingerprint}. Whoever can \
             write the backing store replaced the config (a forgery: files written now would \
             be readable by them). If the vault was re-created on purpose, remove {where_known}"
        )));
    }
    if record.fingerprint.is_none() && vouch.fingerprint.is_none() && !opened.vouched_by_key {
        return Err(Error::VaultMismatch(format!(
            "refusing to open vault {id}: it was opened by {}, whose slot in envfs.conf \
             carries no proof from the key's holder (written by envfs 0.1), and this host has \
             never opened the vault, so a forged config cannot be told from the real one. Its \
             vault secret has fingerprint {fingerprint}: if that is the fingerprint you \
             recorded, pass --vault-fingerprint {fingerprint}. To make the slot carry a proof, \
             run `envfs key add BACKING --new-key-file RECOVERY-KEY` with the vault's normal key",
            opened.opened_by
        )));
    }
    match record.standing(generation, &opened.digest) {
        Standing::New | Standing::Current => {}
        Standing::Stale { current } if vouch.accept_rollback == Some(generation) => {
            tracing::warn!(
                "vault {id}: accepting config generation {generation} in place of generation \
                 {current} (--accept-rollback {generation})"
            );
        }
        Standing::Stale { current } => {
            let what = if generation < current {
                format!(
                    "envfs.conf is generation {generation}, but this host has seen generation {current}"
                )
            } else if generation == current {
                format!(
                    "envfs.conf is generation {generation}, as is the config this host knows, \
                     but it is a different config"
                )
            } else {
                format!(
                    "envfs.conf is generation {generation}, a config this host abandoned when \
                     generation {current} was accepted in its place"
                )
            };
            return Err(Error::ConfigRollback(format!(
                "refusing to open vault {id}: {what}. An older copy of the config was put back \
                 (it may list keys that were removed since). If you restored it on purpose, run \
                 the command again with --accept-rollback {generation}"
            )));
        }
    }
    let highest = record.highest_seen().max(generation);
    record.fingerprint = Some(fingerprint);
    record.generation = Some(generation);
    record.config = Some(opened.digest);
    record.highest = Some(highest);
    // A record read from where envfs 0.2 kept it is written in its new place even when
    // nothing in it changed.
    let moved = path != record_path(id);
    if record == before && !moved {
        return Ok(record);
    }
    let stored = match &lock {
        Err(why) => Err(why.clone()),
        Ok(_) => store(id, &record).map(drop).map_err(|e| e.to_string()),
    };
    if let Err(why) = stored {
        host_state::warn_unrecorded(id, &why, Some(&fingerprint));
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
            config: Some([3; 16]),
            highest: Some(9),
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
            "config 00",
            "generation 5\nhighest 4",
        ] {
            assert!(HostRecord::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn standing_after_an_accepted_rollback_keeps_the_abandoned_line_out() {
        let a = [1; 16];
        let b = [2; 16];
        let fresh = HostRecord::default();
        assert_eq!(fresh.standing(0, &a), Standing::New);
        let at5 = HostRecord {
            generation: Some(5),
            config: Some(a),
            highest: Some(5),
            ..HostRecord::default()
        };
        assert_eq!(at5.standing(5, &a), Standing::Current);
        assert_eq!(at5.standing(6, &b), Standing::New);
        assert_eq!(at5.standing(4, &b), Standing::Stale { current: 5 });
        assert_eq!(
            at5.standing(5, &b),
            Standing::Stale { current: 5 },
            "a fork"
        );
        // Rolled back to 3 on purpose; 4 and 5 of the old line stay out, 6 is new.
        let accepted = HostRecord {
            generation: Some(3),
            config: Some(b),
            highest: Some(5),
            ..HostRecord::default()
        };
        assert_eq!(accepted.standing(3, &b), Standing::Current);
        assert_eq!(accepted.standing(4, &a), Standing::Stale { current: 3 });
        assert_eq!(accepted.standing(5, &a), Standing::Stale { current: 3 });
        assert_eq!(accepted.standing(6, &a), Standing::New);
        // A record from before digests: the number alone.
        let legacy = HostRecord {
            generation: Some(2),
            ..HostRecord::default()
        };
        assert_eq!(legacy.standing(2, &a), Standing::Current);
    }
}
