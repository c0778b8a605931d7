//! Key derivation: every subkey comes from one root secret through HKDF-SHA256 with a
//! distinct label, so no key is ever used for two purposes.

use super::secret::Secret32;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The labels (HKDF `info`) of every derived key. Part of the format: never change one.
pub mod label {
    pub const CONTENT: &[u8] = b"envfs/v1/content";
    pub const COMMIT: &[u8] = b"envfs/v1/commit";
    pub const HEADER_MAC: &[u8] = b"envfs/v1/header-mac";
    pub const CONFIG_MAC: &[u8] = b"envfs/v1/config-mac";
    pub const NAMES: &[u8] = b"envfs/v1/names";
    pub const XATTR: &[u8] = b"envfs/v1/xattr";
    pub const LOCAL_WRAP: &[u8] = b"envfs/v1/local-wrap";
    pub const LOCAL_KEY_ID: &[u8] = b"envfs/v1/local-key-id";
    pub const X25519_BINDING: &[u8] = b"envfs/v1/x25519-binding";
    pub const VAULT_FINGERPRINT: &[u8] = b"envfs/v1/vault-fingerprint";
    pub const X25519_PROOF: &[u8] = b"envfs/v1/x25519-proof";
    /// Tags names in the debug log (fuse/oplog.rs); never stored, so not part of the
    /// format, but kept stable so that logs of different mounts can be compared.
    pub const LOG_TAGS: &[u8] = b"envfs/v1/log-tags";
    /// The AES-256-GCM key that seals a passphrase key's X25519 private key, from the
    /// Argon2id output (keys/passphrase.rs); also the start of that seal's associated data.
    pub const PASSPHRASE_SEAL: &[u8] = b"envfs/v1/passphrase-seal";
    /// Key hierarchy (vault/hierarchy.rs, format/intermediate.rs): the MAC of an
    /// intermediate-key file (from the vault secret), the AES-256-GCM key that wraps DEKs
    /// and the commitment (both from the intermediate key).
    pub const INTERMEDIATE_MAC: &[u8] = b"envfs/v1/intermediate-mac";
    pub const INTERMEDIATE_WRAP: &[u8] = b"envfs/v1/intermediate-wrap";
    pub const INTERMEDIATE_COMMIT: &[u8] = b"envfs/v1/intermediate-commit";
}

/// HKDF-SHA256(ikm, salt, info) → 32 bytes.
pub fn derive32(ikm: &Secret32, salt: &[u8], info: &[u8]) -> Secret32 {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ikm.expose())
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    let s = Secret32::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    s
}

/// HKDF-SHA256 → 64 bytes (the AES-SIV-CMAC-256 key size).
pub fn derive64(ikm: &Secret32, salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 64]> {
    let mut out = Zeroizing::new([0u8; 64]);
    Hkdf::<Sha256>::new(Some(salt), ikm.expose())
        .expand(info, out.as_mut())
        .expect("64 bytes is a valid HKDF-SHA256 length");
    out
}
