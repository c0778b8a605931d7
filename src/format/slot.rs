//! Key slots: one wrapped copy of a secret (a file's DEK, or the vault secret), tagged with
//! the provider and key id that can unwrap it.
//!
//! The same slot layout is used in the vault config and in every file header, so that
//! rotation is a re-wrap of slots and `envfs info` can say which keys open a file without
//! touching any key material.

use super::bytes::{Reader, Writer};

/// Which key provider produced a slot. The numbers are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// A 256-bit key-encryption key in a local key file.
    Local,
    /// An AWS KMS key.
    AwsKms,
    /// An X25519 key pair in a key file (a recovery key): wrappable with the public key
    /// alone, which is the slot's key id.
    X25519,
    /// A passphrase key: the private key of the X25519 key pair named by the key id, sealed
    /// under a passphrase (keys/passphrase.rs). Only in the vault config: headers carry the
    /// X25519 key's own slots.
    Passphrase,
    /// A file's DEK wrapped locally under one of the vault's intermediate keys (the key
    /// hierarchy: vault/hierarchy.rs); the key id is `ik:<32 hex digits of its id>`. Only in
    /// file headers: the intermediate keys themselves are wrapped by the vault's KMS keys in
    /// their own files (format/intermediate.rs).
    Intermediate,
    /// A provider this version does not know; kept so that such a slot is not an error when
    /// another slot can open the file.
    Unknown(u8),
}

impl ProviderKind {
    pub fn code(self) -> u8 {
        match self {
            ProviderKind::Local => 1,
            ProviderKind::AwsKms => 2,
            ProviderKind::X25519 => 3,
            ProviderKind::Passphrase => 4,
            ProviderKind::Intermediate => 5,
            ProviderKind::Unknown(c) => c,
        }
    }

    pub fn from_code(code: u8) -> ProviderKind {
        match code {
            1 => ProviderKind::Local,
            2 => ProviderKind::AwsKms,
            3 => ProviderKind::X25519,
            4 => ProviderKind::Passphrase,
            5 => ProviderKind::Intermediate,
            c => ProviderKind::Unknown(c),
        }
    }

    pub fn name(self) -> String {
        match self {
            ProviderKind::Local => "local".into(),
            ProviderKind::AwsKms => "aws-kms".into(),
            ProviderKind::X25519 => "x25519".into(),
            ProviderKind::Passphrase => "passphrase".into(),
            ProviderKind::Intermediate => "intermediate".into(),
            ProviderKind::Unknown(c) => format!("unknown-{c}"),
        }
    }

    /// Whether file headers carry slots of this kind. A passphrase slot is not a key of its
    /// own but what unlocks the X25519 key it names, whose slots the headers carry.
    pub fn in_headers(self) -> bool {
        self != ProviderKind::Passphrase
    }
}

/// One wrapped secret and who can unwrap it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub provider: ProviderKind,
    /// The provider's identifier of the wrapping key (a local key's fingerprint, a KMS ARN).
    pub key_id: String,
    /// Opaque to everyone but the provider.
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for KeySlot {
    // The wrapped bytes are not secret, but they are noise in logs and test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySlot")
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

impl KeySlot {
    /// Bytes this slot takes when encoded.
    pub fn encoded_len(&self) -> usize {
        1 + 1 + self.key_id.len() + 2 + self.wrapped.len()
    }

    /// Whether the slot can be encoded (length fields are one and two bytes).
    pub fn check(&self) -> Result<(), String> {
        if self.key_id.is_empty() || self.key_id.len() > 255 {
            return Err(format!(
                "key id must be 1..=255 bytes, got {}",
                self.key_id.len()
            ));
        }
        if self.wrapped.is_empty() || self.wrapped.len() > u16::MAX as usize {
            return Err("wrapped key length out of range".into());
        }
        Ok(())
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.provider.code())
            .u8(self.key_id.len() as u8)
            .bytes(self.key_id.as_bytes())
            .u16(self.wrapped.len() as u16)
            .bytes(&self.wrapped);
    }

    pub fn decode(r: &mut Reader<'_>) -> Option<KeySlot> {
        let provider = ProviderKind::from_code(r.u8()?);
        let id_len = r.u8()? as usize;
        if id_len == 0 {
            return None;
        }
        let key_id = String::from_utf8(r.take(id_len)?.to_vec()).ok()?;
        let wrapped_len = r.u16()? as usize;
        if wrapped_len == 0 {
            return None;
        }
        let wrapped = r.take(wrapped_len)?.to_vec();
        Some(KeySlot {
            provider,
            key_id,
            wrapped,
        })
    }
}
