//! The local key provider: a 256-bit KEK in a key file on the mounting host.
//!
//! The key file is the embedded default and the offline recovery key. Its KEK never wraps
//! anything directly: a wrapping key and a public fingerprint (the key id) are derived from
//! it, so the id stored in every header reveals nothing about the key.
//!
//! Key file (text, mode 0600):
//! ```text
//! # comment lines
//! envfs-local-key-v1:<base64 of 32 bytes>
//! ```

use super::{KeyContext, KeyProvider};
use crate::crypto::kdf::{derive32, label};
use crate::crypto::{Secret32, random};
use crate::error::{Error, Result};
use crate::format::{KeySlot, ProviderKind};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use std::fs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const KEY_LINE_PREFIX: &str = "envfs-local-key-v1:";
/// nonce (12) + wrapped secret (32) + tag (16).
const WRAPPED_LEN: usize = 60;

pub struct LocalKeyProvider {
    wrap_key: Aes256Gcm,
    key_id: String,
}

impl LocalKeyProvider {
    pub fn from_kek(kek: &Secret32) -> LocalKeyProvider {
        let wrap = derive32(kek, b"", label::LOCAL_WRAP);
        let id = derive32(kek, b"", label::LOCAL_KEY_ID);
        LocalKeyProvider {
            wrap_key: Aes256Gcm::new_from_slice(wrap.expose()).expect("32-byte key"),
            key_id: format!("local:{}", hex::encode(&id.expose()[..8])),
        }
    }

    /// Load a key file. Errors name the path, never the contents.
    pub fn load(path: &Path) -> Result<LocalKeyProvider> {
        let text = super::keyfile::read_key_text(path)?;
        warn_if_readable_by_others(path);
        LocalKeyProvider::from_text(&text, &path.display().to_string())
    }

    /// A key's text already read from `what` (a path or another source, named in errors
    /// only).
    pub fn from_text(text: &str, what: &str) -> Result<LocalKeyProvider> {
        let kek = parse_key_file(text)
            .ok_or_else(|| Error::KeyFile(format!("{what} is not an envfs key file")))?;
        Ok(LocalKeyProvider::from_kek(&kek))
    }

    /// Create a new key file with a fresh random KEK (mode 0600, parent directories 0700).
    /// Refuses to overwrite an existing file: that would destroy the only copy of a key.
    pub fn create(path: &Path, vault_id_hex: &str) -> Result<LocalKeyProvider> {
        let kek = Secret32::random();
        let encoded = Zeroizing::new(data_encoding::BASE64.encode(kek.expose()));
        let text = Zeroizing::new(format!(
            "# envfs local key-encryption key for vault {vault_id_hex}.\n\
             # Keep it secret and keep a backup: without a key of the vault its files cannot be read.\n\
             {KEY_LINE_PREFIX}{}\n",
            encoded.as_str()
        ));
        super::keyfile::create_private_file(path, &text)?;
        Ok(LocalKeyProvider::from_kek(&kek))
    }
}

/// Whether `text` is meant as a local key file (it has the key line's prefix), valid or not.
pub fn looks_like_key_file(text: &str) -> bool {
    text.contains(KEY_LINE_PREFIX)
}

/// Key files must be private; say so when one is not (like ssh does), but still use it.
pub fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "key file {} is readable by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

/// The KEK in a local key file's text: exactly one non-comment line, the prefix and the
/// base64 of 32 bytes.
pub fn parse_key_file(text: &str) -> Option<Secret32> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let encoded = line.strip_prefix(KEY_LINE_PREFIX)?;
    let bytes = Zeroizing::new(data_encoding::BASE64.decode(encoded.as_bytes()).ok()?);
    Secret32::from_slice(&bytes)
}

/// Where `init` puts a vault's key file and where commands look for it by default:
/// `$XDG_CONFIG_HOME/envfs/keys/<vault-id>.key`, falling back to `~/.config`.
pub fn default_key_path(vault_id_hex: &str) -> Option<PathBuf> {
    Some(
        super::keyfile::config_dir()?
            .join("keys")
            .join(format!("{vault_id_hex}.key")),
    )
}

impl KeyProvider for LocalKeyProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> Result<KeySlot> {
        let nonce_bytes: [u8; 12] = random::array();
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(&nonce_bytes);
        wrapped.extend_from_slice(secret.expose());
        let tag = self
            .wrap_key
            .encrypt_inout_detached(
                &Nonce::from(nonce_bytes),
                &ctx.aad(),
                (&mut wrapped[12..]).into(),
            )
            .expect("32-byte message");
        wrapped.extend_from_slice(&tag);
        Ok(KeySlot {
            provider: ProviderKind::Local,
            key_id: self.key_id.clone(),
            wrapped,
        })
    }

    fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> Result<Secret32> {
        let not_authentic =
            || Error::WrongKey(format!("{} did not unwrap the key slot", self.describe()));
        if slot.wrapped.len() != WRAPPED_LEN {
            return Err(not_authentic());
        }
        let mut body = Zeroizing::new([0u8; 32]);
        body.copy_from_slice(&slot.wrapped[12..44]);
        let nonce = Nonce::try_from(&slot.wrapped[..12]).map_err(|_| not_authentic())?;
        let tag = Tag::try_from(&slot.wrapped[44..]).map_err(|_| not_authentic())?;
        self.wrap_key
            .decrypt_inout_detached(&nonce, &ctx.aad(), (&mut body[..]).into(), &tag)
            .map_err(|_| not_authentic())?;
        Ok(Secret32::from_bytes(*body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_is_bound_to_context() {
        let p = LocalKeyProvider::from_kek(&Secret32::from_bytes([8; 32]));
        let ctx = KeyContext::file([1; 16], [2; 16]);
        let (secret, slot) = p.generate(&ctx).unwrap();
        assert!(p.recognises(&slot));
        assert_eq!(p.unwrap(&slot, &ctx).unwrap(), secret);
        assert!(
            p.unwrap(&slot, &KeyContext::file([1; 16], [3; 16]))
                .is_err()
        );
        assert!(p.unwrap(&slot, &KeyContext::vault_secret([1; 16])).is_err());
        let other = LocalKeyProvider::from_kek(&Secret32::from_bytes([9; 32]));
        assert_ne!(other.key_id(), p.key_id());
        assert!(!other.recognises(&slot));
        assert!(other.unwrap(&slot, &ctx).is_err());
    }

    #[test]
    fn key_file_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/v.key");
        let created = LocalKeyProvider::create(&path, "00").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = LocalKeyProvider::load(&path).unwrap();
        assert_eq!(created.key_id(), loaded.key_id());
        assert!(
            LocalKeyProvider::create(&path, "00").is_err(),
            "must not overwrite"
        );
        fs::write(dir.path().join("bad"), "envfs-local-key-v1:AAAA\n").unwrap();
        let err = LocalKeyProvider::load(&dir.path().join("bad"))
            .err()
            .unwrap();
        assert!(matches!(err, Error::KeyFile(_)));
        assert!(LocalKeyProvider::load(&dir.path().join("missing")).is_err());
    }
}
