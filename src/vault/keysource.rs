//! Which key providers open a vault on this host: from the command line (a key source:
//! `--key-file`, `--key-fd`, `--key-command`, `--key-credential`; `--kms-key`), the default
//! key file, or the pinned KMS key.

use super::pin;
use super::read_config_unverified;
use crate::error::{Error, Result};
use crate::format::{ProviderKind, VaultConfig};
use crate::keys::KeyProvider;
use crate::keys::kms::KmsKeyProvider;
use crate::keys::local::{LocalKeyProvider, default_key_path};
use crate::keys::passphrase;
use crate::keys::source::KeySource;
use crate::keys::x25519::X25519KeyProvider;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// How the user asked to open a vault.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// Where the operator's key text comes from, if they gave one.
    pub key: Option<KeySource>,
    pub kms_key: Option<String>,
    /// What the operator vouches for (`--vault-fingerprint`, `--accept-rollback`).
    pub vouch: super::known::Vouch,
}

fn kms_keys_of(config: &VaultConfig) -> Vec<&str> {
    config
        .slots
        .iter()
        .filter(|s| s.provider == ProviderKind::AwsKms)
        .map(|s| s.key_id.as_str())
        .collect()
}

/// Refuse a config that does not name the pinned key: whoever can write the backing store
/// must not be able to point new DEKs at a key they control.
fn check_pin(config: &VaultConfig, arn: &str, source: &str) -> Result<()> {
    let named = kms_keys_of(config);
    if named.contains(&arn) {
        return Ok(());
    }
    Err(Error::KeyPinMismatch(format!(
        "refusing to open vault {}: its config names KMS key {}, but this host pins {arn} ({source}). \
         If the vault's key was changed on purpose, pass --kms-key with the new key",
        config.vault_id_hex(),
        if named.is_empty() {
            "none".to_string()
        } else {
            named.join(", ")
        }
    )))
}

/// A key of any kind, from any source: a symmetric vault key, an X25519 recovery key, or,
/// for a vault with passphrase keys, a passphrase (text that is no key file). Read once, so
/// a pipe or a command works as well as a file.
pub fn load_key(source: &KeySource, config: &VaultConfig) -> Result<Arc<dyn KeyProvider>> {
    let text = source.read()?;
    if let Some(path) = source.file() {
        crate::keys::local::warn_if_readable_by_others(&path);
    }
    let what = source.describe();
    if X25519KeyProvider::is_key_text(&text) {
        return Ok(Arc::new(X25519KeyProvider::from_text(&text, &what)?));
    }
    match LocalKeyProvider::from_text(&text, &what) {
        Err(_)
            if has_passphrase_keys(config) && !crate::keys::local::looks_like_key_file(&text) =>
        {
            unlock_with_passphrase(config, passphrase::trimmed(&text), &what)
        }
        local => Ok(Arc::new(local?)),
    }
}

fn has_passphrase_keys(config: &VaultConfig) -> bool {
    config
        .slots
        .iter()
        .any(|s| s.provider == ProviderKind::Passphrase)
}

/// The X25519 key a passphrase unseals (keys/passphrase.rs). Every passphrase slot is
/// tried, so a wrong passphrase costs as much as a right one; it is exit 7.
fn unlock_with_passphrase(
    config: &VaultConfig,
    passphrase: &str,
    what: &str,
) -> Result<Arc<dyn KeyProvider>> {
    let mut found = None;
    for slot in config
        .slots
        .iter()
        .filter(|s| s.provider == ProviderKind::Passphrase)
    {
        if let Some(private) = passphrase::unseal(slot, passphrase.as_bytes(), &config.vault_id)?
            && found.is_none()
        {
            let key = X25519KeyProvider::from_secret(private);
            if key.key_id() != slot.key_id {
                return Err(Error::CorruptConfig(format!(
                    "the passphrase slot for {} seals another key",
                    slot.key_id
                )));
            }
            found = Some(key);
        }
    }
    match found {
        Some(key) => Ok(Arc::new(key)),
        None => Err(Error::WrongKey(format!(
            "{what} is not the passphrase of any of vault {}'s passphrase keys",
            config.vault_id_hex()
        ))),
    }
}

/// Ask for the passphrase on the terminal, read once like any key source: a daemonized
/// mount is handed what its parent read instead of asking again.
fn prompted_passphrase(config: &VaultConfig) -> Result<Arc<dyn KeyProvider>> {
    let id = config.vault_id_hex();
    let text = crate::keys::keyfile::read_key_from(
        b"\0passphrase-prompt",
        ("the passphrase", "the passphrase"),
        || {
            let typed = passphrase::prompt(&id)?;
            let bytes = Zeroizing::new(typed.as_bytes().to_vec());
            Ok(Box::new(std::io::Cursor::new(bytes)) as Box<dyn std::io::Read>)
        },
    )
    .map_err(|_| {
        Error::KeyFile(format!(
            "no key given, and vault {id} opens with a passphrase: run this on a terminal to \
             be asked for it, or give it with --key-command, --key-fd or --key-file -"
        ))
    })?;
    unlock_with_passphrase(config, &text, "the passphrase typed")
}

pub fn providers_for(backing: &Path, opts: &KeyOptions) -> Result<Vec<Arc<dyn KeyProvider>>> {
    let (config, _) = read_config_unverified(backing)?;
    let id = config.vault_id_hex();
    // A config with another vault id where this host has seen a vault before is a
    // replaced vault: the pin below is per vault id and would not apply to it.
    pin::check_vault_at_path(backing, &id)?;
    let mut providers: Vec<Arc<dyn KeyProvider>> = Vec::new();
    if let Some(source) = &opts.key {
        providers.push(load_key(source, &config)?);
    }
    if let Some(key) = &opts.kms_key {
        let kms = KmsKeyProvider::connect(key)?;
        check_pin(&config, kms.arn(), "given with --kms-key")?;
        providers.push(Arc::new(kms));
    }
    if !providers.is_empty() {
        return Ok(providers);
    }
    let has_local = config
        .slots
        .iter()
        .any(|s| s.provider == ProviderKind::Local);
    let default_local = default_key_path(&id);
    if has_local && let Some(path) = default_local.as_ref().filter(|p| p.exists()) {
        return Ok(vec![Arc::new(LocalKeyProvider::load(path)?)]);
    }
    let kms_keys = kms_keys_of(&config);
    if !kms_keys.is_empty() {
        let (arn, source) = match pin::pinned_kms_key(&id)? {
            Some((arn, path)) => (arn, format!("pinned in {}", path.display())),
            None => {
                // First use on this host: trust the key the vault names; `remember` pins it
                // once the config has been authenticated with it.
                let arn = kms_keys[0].to_string();
                (arn, "first use on this host".to_string())
            }
        };
        check_pin(&config, &arn, &source)?;
        return Ok(vec![Arc::new(KmsKeyProvider::connect(&arn)?)]);
    }
    if has_passphrase_keys(&config) {
        return Ok(vec![prompted_passphrase(&config)?]);
    }
    // A default key file that the vault no longer lists (its local key was removed): use it
    // anyway, so that opening fails as a wrong key, naming the file's key and the vault's,
    // rather than claiming the file is missing.
    if let Some(path) = default_local.as_ref().filter(|p| p.exists()) {
        return Ok(vec![Arc::new(LocalKeyProvider::load(path)?)]);
    }
    Err(Error::KeyFile(match default_local {
        Some(path) if has_local => format!(
            "no key file given and none at {} (the default for vault {id}); use --key-file",
            path.display()
        ),
        Some(_) => format!(
            "no key file given, and vault {id} has no local key to look for by default; \
             give one of its keys with --key-file (`envfs info` lists them)"
        ),
        None => {
            "no key file given and neither XDG_CONFIG_HOME nor HOME is set; use --key-file".into()
        }
    }))
}

/// After a vault opened (its config authenticated): hold it to what this host knows of it
/// (fingerprint, generation: vault/known.rs), then remember which vault lives at this path
/// and, for a KMS vault, pin the key it was opened with if nothing is pinned yet. Every
/// command that opens a vault comes through here, so no command can skip the checks.
pub fn remember(backing: &Path, vault: &mut crate::vault::Vault, opts: &KeyOptions) -> Result<()> {
    let id = vault.config.vault_id_hex();
    let record = super::known::check_and_update(
        &super::known::OpenedConfig {
            vault_id_hex: &id,
            fingerprint: vault.fingerprint(),
            generation: vault.config.generation,
            digest: vault.config_digest(),
            vouched_by_key: vault.secret_vouched(),
            opened_by: vault.unlocked_by(),
        },
        &opts.vouch,
    )?;
    vault.raise_generation_floor(record.highest_seen());
    pin::record_vault_at_path(backing, &id);
    if let Some(kms) = vault
        .held_providers()
        .iter()
        .find(|p| p.kind() == ProviderKind::AwsKms)
        && pin::pinned_kms_key(&id)?.is_none()
    {
        let pinned = match pin::pin_kms_key(&id, kms.key_id())? {
            Some(path) => format!("pinned KMS key {} in {}", kms.key_id(), path.display()),
            None => format!("KMS key {} could not be pinned (see above)", kms.key_id()),
        };
        tracing::warn!(
            "first use of vault {id} on this host: {pinned}; the vault secret's fingerprint is \
             {} (compare it with the one `envfs init` printed, or pass --vault-fingerprint)",
            vault.fingerprint()
        );
    }
    Ok(())
}
