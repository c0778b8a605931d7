//! Everything derived from one file's DEK: the chunk cipher, the key commitment and the
//! header MAC key.
//!
//! AES-GCM is not key-committing: a crafted ciphertext can decrypt under two different keys.
//! The commitment stored in the header pins the one DEK this file's chunks were written
//! under, and the header MAC (also keyed from the DEK) binds the header's fields and the
//! vault id to it, so a header cannot be moved to another file or vault undetected.

use super::chunk::ChunkCipher;
use super::kdf::{derive32, label};
use super::secret::Secret32;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub struct FileKeys {
    pub chunks: ChunkCipher,
    mac_key: Secret32,
    commitment: [u8; 32],
}

impl FileKeys {
    pub fn derive(dek: &Secret32, file_id: [u8; 16]) -> FileKeys {
        let content = derive32(dek, &file_id, label::CONTENT);
        let commitment = *derive32(dek, &file_id, label::COMMIT).expose();
        FileKeys {
            chunks: ChunkCipher::new(&content, file_id),
            mac_key: derive32(dek, &file_id, label::HEADER_MAC),
            commitment,
        }
    }

    pub fn file_id(&self) -> &[u8; 16] {
        self.chunks.file_id()
    }

    pub fn commitment(&self) -> [u8; 32] {
        self.commitment
    }

    /// MAC over the vault id and the header body (all header bytes but the MAC).
    pub fn header_mac(&self, vault_id: &[u8; 16], header_body: &[u8]) -> [u8; 32] {
        hmac32(&self.mac_key, &[vault_id, header_body])
    }

    /// Whether a parsed header belongs to this DEK: commitment and MAC, in constant time.
    pub fn verify_header(
        &self,
        vault_id: &[u8; 16],
        commitment: &[u8; 32],
        header_body: &[u8],
        mac: &[u8; 32],
    ) -> bool {
        let commit_ok = self.commitment.ct_eq(commitment);
        let mac_ok = self.header_mac(vault_id, header_body).ct_eq(mac);
        bool::from(commit_ok & mac_ok)
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac32(key: &Secret32, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}
