//! Key providers: whoever holds a key-encryption key (KEK) and can wrap and unwrap secrets
//! with it — a local key file today, AWS KMS next.
//!
//! Modelled on age's Recipient/Identity: each provider recognises its own slots (by provider
//! kind and key id), so a header or config with several slots is opened by whichever
//! provider is present, and `info` can describe slots without any key material.

pub mod cache;
pub mod keyfile;
pub mod kms;
pub mod local;
pub mod passphrase;
pub mod prefetch;
pub mod source;
pub mod x25519;

use crate::crypto::Secret32;
use crate::error::Result;
use crate::format::{KeySlot, ProviderKind};

/// What a wrapped secret belongs to. Providers bind it to the ciphertext (as AES-GCM
/// associated data locally, as the KMS EncryptionContext), so a slot copied to another file
/// or vault does not unwrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyContext {
    pub vault_id: [u8; 16],
    /// `None` for the vault secret and intermediate keys, `Some` for a file's DEK.
    pub file_id: Option<[u8; 16]>,
    /// `Some` for one of the vault's intermediate keys (vault/hierarchy.rs), by its id.
    pub intermediate: Option<[u8; 16]>,
}

impl KeyContext {
    pub fn vault_secret(vault_id: [u8; 16]) -> KeyContext {
        KeyContext {
            vault_id,
            file_id: None,
            intermediate: None,
        }
    }

    pub fn intermediate_key(vault_id: [u8; 16], key_id: [u8; 16]) -> KeyContext {
        KeyContext {
            vault_id,
            file_id: None,
            intermediate: Some(key_id),
        }
    }

    pub fn file(vault_id: [u8; 16], file_id: [u8; 16]) -> KeyContext {
        KeyContext {
            vault_id,
            file_id: Some(file_id),
            intermediate: None,
        }
    }

    /// Associated data for providers that wrap with an AEAD.
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(48);
        if let Some(key_id) = self.intermediate {
            aad.extend_from_slice(b"envfs/v1/intermediate-key");
            aad.extend_from_slice(&self.vault_id);
            aad.extend_from_slice(&key_id);
            return aad;
        }
        match self.file_id {
            None => {
                aad.extend_from_slice(b"envfs/v1/vault-secret");
                aad.extend_from_slice(&self.vault_id);
            }
            Some(file_id) => {
                aad.extend_from_slice(b"envfs/v1/dek");
                aad.extend_from_slice(&self.vault_id);
                aad.extend_from_slice(&file_id);
            }
        }
        aad
    }

    /// Key/value pairs for key services with an encryption context (AWS KMS): they are
    /// logged by the service (CloudTrail), so they carry ids only.
    pub fn encryption_context(&self) -> Vec<(&'static str, String)> {
        let mut ctx = vec![("envfs:vault", hex::encode(self.vault_id))];
        if let Some(key_id) = self.intermediate {
            ctx.push(("envfs:purpose", "intermediate-key".into()));
            ctx.push(("envfs:intermediate", hex::encode(key_id)));
            return ctx;
        }
        match self.file_id {
            None => ctx.push(("envfs:purpose", "vault-secret".into())),
            Some(id) => ctx.push(("envfs:file", hex::encode(id))),
        }
        ctx
    }
}

/// A holder of one key-encryption key.
///
/// Errors: a slot that is this provider's but does not unwrap (tampered, or bound to another
/// context) is `Error::WrongKey`; a service that refuses or cannot be reached is
/// `Error::KeyService`. Callers turn the first into "corrupt" where that is what it means.
/// Calls a key service answered, by operation, and how many failed: what `envfs status`
/// shows of a KMS key (each call is billed and, in CloudTrail, recorded).
#[derive(Debug, Default)]
pub struct CallCounts {
    counts: [std::sync::atomic::AtomicU64; CallCounts::OPS.len()],
    errors: std::sync::atomic::AtomicU64,
}

impl CallCounts {
    /// The operations counted, as the service names them.
    pub const OPS: [&'static str; 4] = ["GenerateDataKey", "Encrypt", "Decrypt", "ReEncrypt"];

    /// Count one call of `op` (one of `OPS`) and whether it failed.
    pub fn record<T>(&self, op: &str, result: &Result<T>) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(i) = Self::OPS.iter().position(|o| *o == op) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        if result.is_err() {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// `(operation, calls)` for every operation, then the failures.
    pub fn snapshot(&self) -> (Vec<(&'static str, u64)>, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let calls = Self::OPS
            .iter()
            .zip(&self.counts)
            .map(|(op, n)| (*op, n.load(Relaxed)))
            .collect();
        (calls, self.errors.load(Relaxed))
    }
}

pub trait KeyProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The calls this provider made to a key service (`None`: it calls none).
    fn calls(&self) -> Option<&CallCounts> {
        None
    }

    /// The identifier stored in slots this provider writes.
    fn key_id(&self) -> &str;

    /// Wrap an existing secret.
    fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> Result<KeySlot>;

    /// Unwrap a slot this provider recognises.
    fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> Result<Secret32>;

    /// A fresh random secret and its wrapped form. Key services that generate data keys
    /// themselves (KMS GenerateDataKey) override this.
    fn generate(&self, ctx: &KeyContext) -> Result<(Secret32, KeySlot)> {
        let secret = Secret32::random();
        let slot = self.wrap(&secret, ctx)?;
        Ok((secret, slot))
    }

    /// Whether a vault-secret slot of this provider, once unwrapped, proves that the secret
    /// is the vault's real one: only a holder of the key could have made it. True for a
    /// symmetric key (wrapping needs the key) and a key service (wrapping needs the right
    /// to call it). A recovery key's slot made from its public key alone does not vouch.
    fn vouches_for(&self, _slot: &KeySlot) -> bool {
        true
    }

    /// Whether `slot` was written by this provider's key.
    fn recognises(&self, slot: &KeySlot) -> bool {
        slot.provider == self.kind() && slot.key_id == self.key_id()
    }

    /// Wrap for this key a secret that `source` (another key's slot) already wraps, without
    /// the secret passing through this process, where the service can (KMS `ReEncrypt`).
    /// `None` when this provider cannot do that for `source`.
    fn rewrap_from(&self, _source: &KeySlot, _ctx: &KeyContext) -> Option<Result<KeySlot>> {
        None
    }

    /// Receive the opened vault's binding key. Providers whose wrapping needs no secret (a
    /// recovery key's public half) mix it into file-key wraps, so that only holders of the
    /// vault secret can make a slot the recovery key accepts.
    fn bind_to_vault(&self, _binding: &Secret32) {}

    /// Whether this provider can unwrap (a recovery key known only by its public key can
    /// wrap new DEKs for its holder, but not unwrap).
    fn can_unwrap(&self) -> bool {
        true
    }

    /// Whether each call is a network round trip (a key service), which makes caching and
    /// prefetching DEKs worthwhile.
    fn remote(&self) -> bool {
        false
    }

    /// How this key is described to people (`envfs info`, error messages).
    fn describe(&self) -> String {
        format!("{} key {}", self.kind().name(), self.key_id())
    }
}
