//! Recovery keys: an X25519 key pair in a key file, for a KEK that stays offline.
//!
//! A symmetric key file can only wrap a DEK on a host that holds it, but every new DEK must
//! be wrapped by every key of the vault — including a recovery key kept in a safe. With a
//! key pair, the public half is enough to wrap: it *is* the key id stored in the vault
//! config (`x25519:<base64url public key>`), so any host that opens the vault can wrap new
//! DEKs for the recovery key, and only the holder of the key file can unwrap them.
//!
//! Wrapping (like age's X25519 recipient stanza): a fresh ephemeral key pair per wrap, the
//! shared secret through HKDF-SHA256 (salt: ephemeral public || recipient public), then
//! AES-256-GCM of the 32-byte secret with the key context as associated data.
//! Wrapped form: ephemeral public (32) || nonce (12) || ciphertext (32) || tag (16).
//!
//! A vault-secret slot made by the key's holder (`envfs key add`) carries a 32-byte proof
//! after that: HMAC-SHA256 keyed from X25519(private, own public) — a value only the holder
//! of the private key can compute — over the vault id and the vault secret's fingerprint.
//! Anyone can wrap a secret of their choosing for the public key, so without the proof a
//! host holding only the recovery key could not tell a forged config from the real one.
//! Slots written before the proof existed (92 bytes) still unwrap, but do not vouch for the
//! secret (see `vouches_for`).
//!
//! Key file (text, mode 0600):
//! ```text
//! # comment lines
//! envfs-x25519-key-v1:<base64 of the 32-byte private key>
//! ```

use super::{KeyContext, KeyProvider};
use crate::crypto::Fingerprint;
use crate::crypto::file_keys::hmac32;
use crate::crypto::kdf::label;
use crate::crypto::{Secret32, random};
use crate::error::{Error, Result};
use crate::format::{KeySlot, ProviderKind};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

use std::path::Path;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

const KEY_LINE_PREFIX: &str = "envfs-x25519-key-v1:";
const KEY_ID_PREFIX: &str = "x25519:";
const WRAP_LABEL: &[u8] = b"envfs/v1/x25519-wrap";
const WRAPPED_LEN: usize = 32 + 12 + 32 + 16;
const PROOF_LEN: usize = 32;
/// A vault-secret slot with its holder's proof.
const PROVEN_LEN: usize = WRAPPED_LEN + PROOF_LEN;

pub struct X25519KeyProvider {
    /// HKDF(vault secret, vault id, "envfs/v1/x25519-binding"), set when the vault opens.
    /// File-key wraps mix it in: with the public key alone anyone could wrap a DEK of their
    /// choosing for the recovery key and forge a whole file that it would accept.
    binding: std::sync::OnceLock<Secret32>,
    public: PublicKey,
    /// `None` for a recipient known only by its public key (it can wrap, not unwrap).
    secret: Option<StaticSecret>,
    /// X25519(private, own public), with the private key: the proof's key material, made
    /// once rather than on every unwrap.
    own: Option<Secret32>,
    key_id: String,
}

fn key_id_of(public: &PublicKey) -> String {
    format!(
        "{KEY_ID_PREFIX}{}",
        data_encoding::BASE64URL_NOPAD.encode(public.as_bytes())
    )
}

fn wrap_key(
    shared: &[u8; 32],
    binding: Option<&Secret32>,
    ephemeral: &PublicKey,
    recipient: &PublicKey,
) -> Aes256Gcm {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(shared);
    let ikm_len = match binding {
        Some(b) => {
            ikm[32..].copy_from_slice(b.expose());
            64
        }
        None => 32,
    };
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), &ikm[..ikm_len])
        .expand(WRAP_LABEL, key.as_mut())
        .expect("32 bytes is a valid HKDF length");
    Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key")
}

impl X25519KeyProvider {
    /// A wrap-only provider for the recipient named by a config slot's key id.
    pub fn recipient(key_id: &str) -> Option<X25519KeyProvider> {
        let encoded = key_id.strip_prefix(KEY_ID_PREFIX)?;
        let bytes: [u8; 32] = data_encoding::BASE64URL_NOPAD
            .decode(encoded.as_bytes())
            .ok()?
            .try_into()
            .ok()?;
        let public = PublicKey::from(bytes);
        Some(X25519KeyProvider {
            binding: std::sync::OnceLock::new(),
            key_id: key_id_of(&public),
            public,
            secret: None,
            own: None,
        })
    }

    /// Whether a key file's text is an X25519 key file (rather than a symmetric one).
    pub fn is_key_text(text: &str) -> bool {
        text.lines().any(|l| l.trim().starts_with(KEY_LINE_PREFIX))
    }

    pub fn load(path: &Path) -> Result<X25519KeyProvider> {
        let text = super::keyfile::read_key_text(path)?;
        super::local::warn_if_readable_by_others(path);
        X25519KeyProvider::from_text(&text, &path.display().to_string())
    }

    /// A key file's text already read from `path` (named in errors only).
    pub fn from_text(text: &str, what: &str) -> Result<X25519KeyProvider> {
        let secret = parse_key_text(text)
            .ok_or_else(|| Error::KeyFile(format!("{what} is not an envfs recovery key file")))?;
        Ok(X25519KeyProvider::from_secret(secret))
    }

    /// The key pair of a private key (already read from its key file).
    pub fn from_secret(secret: StaticSecret) -> X25519KeyProvider {
        let public = PublicKey::from(&secret);
        let own = Secret32::from_bytes(*secret.diffie_hellman(&public).as_bytes());
        X25519KeyProvider {
            binding: std::sync::OnceLock::new(),
            key_id: key_id_of(&public),
            public,
            secret: Some(secret),
            own: Some(own),
        }
    }

    /// Create a new key file (mode 0600); refuses to overwrite one.
    pub fn create(path: &Path) -> Result<X25519KeyProvider> {
        let secret = StaticSecret::from(random::array::<32>());
        let public = PublicKey::from(&secret);
        let text = Zeroizing::new(format!(
            "# envfs recovery key ({}).\n\
             # Keep it offline and secret: it opens every file of the vaults it was added to.\n\
             {KEY_LINE_PREFIX}{}\n",
            key_id_of(&public),
            Zeroizing::new(data_encoding::BASE64.encode(secret.as_bytes())).as_str()
        ));
        super::keyfile::create_private_file(path, &text)?;
        Ok(X25519KeyProvider::from_secret(secret))
    }
}

/// The private key in an X25519 key file's text: the first key line (comments and other
/// lines are ignored), the prefix and the base64 of 32 bytes.
pub fn parse_key_text(text: &str) -> Option<StaticSecret> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(KEY_LINE_PREFIX))?;
    let bytes = Zeroizing::new(
        data_encoding::BASE64
            .decode(&line.as_bytes()[KEY_LINE_PREFIX.len()..])
            .ok()?,
    );
    let arr: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.as_slice().try_into().ok()?);
    Some(StaticSecret::from(*arr))
}

/// The holder's proof that `fingerprint` is the vault secret of `vault_id` (module doc).
/// `own` is X25519(private, public).
fn holder_proof(
    own: &Secret32,
    public: &PublicKey,
    vault_id: &[u8; 16],
    fingerprint: &Fingerprint,
) -> [u8; 32] {
    let key = crate::crypto::kdf::derive32(own, public.as_bytes(), label::X25519_PROOF);
    hmac32(&key, &[label::X25519_PROOF, vault_id, &fingerprint.0])
}

impl X25519KeyProvider {
    /// The vault binding for a file-key context (none for the vault secret itself, which
    /// the recovery key must unwrap before any binding exists).
    fn binding_for(&self, ctx: &KeyContext) -> Result<Option<&Secret32>> {
        match ctx.file_id {
            None => Ok(None),
            Some(_) => self.binding.get().map(Some).ok_or_else(|| {
                Error::WrongKey(format!("{} is not bound to an opened vault", self.key_id))
            }),
        }
    }
}

impl KeyProvider for X25519KeyProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::X25519
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> Result<KeySlot> {
        let ephemeral_secret = StaticSecret::from(random::array::<32>());
        let ephemeral = PublicKey::from(&ephemeral_secret);
        let shared = ephemeral_secret.diffie_hellman(&self.public);
        let aead = wrap_key(
            shared.as_bytes(),
            self.binding_for(ctx)?,
            &ephemeral,
            &self.public,
        );
        let nonce: [u8; 12] = random::array();
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(ephemeral.as_bytes());
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(secret.expose());
        let tag = aead
            .encrypt_inout_detached(&Nonce::from(nonce), &ctx.aad(), (&mut wrapped[44..]).into())
            .expect("32-byte message");
        wrapped.extend_from_slice(&tag);
        if let (None, Some(own)) = (ctx.file_id, &self.own) {
            let fingerprint = Fingerprint::of(secret, &ctx.vault_id);
            wrapped.extend_from_slice(&holder_proof(
                own,
                &self.public,
                &ctx.vault_id,
                &fingerprint,
            ));
        }
        Ok(KeySlot {
            provider: ProviderKind::X25519,
            key_id: self.key_id.clone(),
            wrapped,
        })
    }

    fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> Result<Secret32> {
        let secret = self.secret.as_ref().ok_or_else(|| {
            Error::WrongKey(format!(
                "{} is a recipient only: its key file is needed to unwrap",
                self.key_id
            ))
        })?;
        let not_authentic =
            || Error::WrongKey(format!("{} did not unwrap the key slot", self.describe()));
        let proven = match (slot.wrapped.len(), ctx.file_id) {
            (WRAPPED_LEN, _) => false,
            (PROVEN_LEN, None) => true,
            _ => return Err(not_authentic()),
        };
        let ephemeral_bytes: [u8; 32] = slot.wrapped[..32].try_into().expect("length checked");
        let ephemeral = PublicKey::from(ephemeral_bytes);
        let shared = secret.diffie_hellman(&ephemeral);
        // X25519(private, own public) keys the holder's proof: a slot whose "ephemeral" key
        // is ours (in any encoding of the point) would make us use it as a wrap key too.
        let own = self.own.as_ref().expect("held with the private key");
        if !shared.was_contributory() || bool::from(shared.as_bytes().ct_eq(own.expose())) {
            return Err(not_authentic());
        }
        let aead = wrap_key(
            shared.as_bytes(),
            self.binding_for(ctx)?,
            &ephemeral,
            &self.public,
        );
        let mut body = Zeroizing::new([0u8; 32]);
        body.copy_from_slice(&slot.wrapped[44..76]);
        let nonce = Nonce::try_from(&slot.wrapped[32..44]).map_err(|_| not_authentic())?;
        let tag = Tag::try_from(&slot.wrapped[76..WRAPPED_LEN]).map_err(|_| not_authentic())?;
        aead.decrypt_inout_detached(&nonce, &ctx.aad(), (&mut body[..]).into(), &tag)
            .map_err(|_| not_authentic())?;
        let unwrapped = Secret32::from_bytes(*body);
        if proven {
            let fingerprint = Fingerprint::of(&unwrapped, &ctx.vault_id);
            let expected = holder_proof(own, &self.public, &ctx.vault_id, &fingerprint);
            if !bool::from(expected.ct_eq(&slot.wrapped[WRAPPED_LEN..])) {
                return Err(Error::VaultMismatch(format!(
                    "the slot of {} in envfs.conf carries a proof its holder did not make: \
                     the vault secret it wraps (fingerprint {fingerprint}) is not the one this \
                     key was added to; envfs.conf was forged",
                    self.describe()
                )));
            }
        }
        Ok(unwrapped)
    }

    fn vouches_for(&self, slot: &KeySlot) -> bool {
        slot.wrapped.len() == PROVEN_LEN
    }

    fn can_unwrap(&self) -> bool {
        self.secret.is_some()
    }

    fn bind_to_vault(&self, binding: &Secret32) {
        let _ = self.binding.set(binding.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_wraps_and_only_the_key_file_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let full = X25519KeyProvider::create(&dir.path().join("r.key")).unwrap();
        let loaded = X25519KeyProvider::load(&dir.path().join("r.key")).unwrap();
        assert_eq!(full.key_id(), loaded.key_id());
        let recipient = X25519KeyProvider::recipient(full.key_id()).unwrap();
        assert!(!recipient.can_unwrap());
        let ctx = KeyContext::file([1; 16], [2; 16]);
        // File keys need the vault binding: without it nothing is wrapped.
        assert!(recipient.wrap(&Secret32::random(), &ctx).is_err());
        let binding = Secret32::from_bytes([5; 32]);
        recipient.bind_to_vault(&binding);
        loaded.bind_to_vault(&binding);
        let secret = Secret32::random();
        let slot = recipient.wrap(&secret, &ctx).unwrap();
        assert_eq!(slot.wrapped.len(), WRAPPED_LEN);
        assert!(loaded.recognises(&slot));
        assert_eq!(loaded.unwrap(&slot, &ctx).unwrap(), secret);
        assert!(
            loaded
                .unwrap(&slot, &KeyContext::file([1; 16], [3; 16]))
                .is_err()
        );
        assert!(recipient.unwrap(&slot, &ctx).is_err());
        let mut bad = slot.clone();
        bad.wrapped[50] ^= 1;
        assert!(loaded.unwrap(&bad, &ctx).is_err());
        assert!(X25519KeyProvider::recipient("x25519:short").is_none());
        // A slot wrapped by someone without the vault secret (another binding) is refused.
        let forger = X25519KeyProvider::recipient(full.key_id()).unwrap();
        forger.bind_to_vault(&Secret32::from_bytes([6; 32]));
        let forged = forger.wrap(&secret, &ctx).unwrap();
        assert!(loaded.unwrap(&forged, &ctx).is_err());
    }

    #[test]
    fn vault_secret_slots_made_by_the_holder_carry_a_proof_nobody_else_can_make() {
        let dir = tempfile::tempdir().unwrap();
        let holder = X25519KeyProvider::create(&dir.path().join("r.key")).unwrap();
        let ctx = KeyContext::vault_secret([7; 16]);
        let secret = Secret32::random();
        let proven = holder.wrap(&secret, &ctx).unwrap();
        assert_eq!(proven.wrapped.len(), PROVEN_LEN);
        assert!(holder.vouches_for(&proven));
        assert_eq!(holder.unwrap(&proven, &ctx).unwrap(), secret);
        // Bound to the vault id.
        assert!(
            holder
                .unwrap(&proven, &KeyContext::vault_secret([8; 16]))
                .is_err()
        );

        // From the public key alone: a slot without a proof unwraps but does not vouch.
        let anyone = X25519KeyProvider::recipient(holder.key_id()).unwrap();
        let public_only = anyone.wrap(&secret, &ctx).unwrap();
        assert_eq!(public_only.wrapped.len(), WRAPPED_LEN);
        assert!(!holder.vouches_for(&public_only));
        assert_eq!(holder.unwrap(&public_only, &ctx).unwrap(), secret);

        // A proof copied from the real slot onto a slot wrapping another secret, or any
        // bytes of the forger's choosing, is refused as a forgery.
        let other = anyone.wrap(&Secret32::random(), &ctx).unwrap();
        for proof in [proven.wrapped[WRAPPED_LEN..].to_vec(), vec![0; PROOF_LEN]] {
            let mut forged = other.clone();
            forged.wrapped.extend_from_slice(&proof);
            assert!(matches!(
                holder.unwrap(&forged, &ctx),
                Err(Error::VaultMismatch(_))
            ));
        }
        // File keys never carry a proof.
        let mut file_slot = proven.clone();
        assert!(
            holder
                .unwrap(&file_slot, &KeyContext::file([7; 16], [1; 16]))
                .is_err()
        );
        file_slot.wrapped.truncate(WRAPPED_LEN + 5);
        assert!(holder.unwrap(&file_slot, &ctx).is_err());
    }
}
