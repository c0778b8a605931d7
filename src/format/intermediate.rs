//! An intermediate-key file: one key of the vault's key hierarchy (vault/hierarchy.rs),
//! wrapped by the vault's KMS keys, in `envfs.keys/<32 hex digits of its id>` at the
//! backing root.
//!
//! Layout (big-endian; docs/FORMAT.md is normative):
//!
//! ```text
//! 0   8  magic "ENVFSIKY"
//! 8   2  version (1)
//! 10  2  reserved, 0
//! 12 16  vault id
//! 28 16  intermediate key id (random; also the file's name and part of every KMS context)
//! 44  8  created, Unix milliseconds
//! 52  8  expires, Unix milliseconds: created + the vault's lifetime when it was made, or
//!        earlier once retired (a KMS key that wraps it was removed from the vault); no mount
//!        wraps a new DEK with it from then on (nor after created + the current lifetime)
//! 60 32  key commitment: HKDF(key, key id, "envfs/v1/intermediate-commit")
//! 92  1  number of key slots N (1..=32)
//! 93  …  N key slots (slot.rs), each wrapping the 32-byte intermediate key
//! …  32  HMAC-SHA256(HKDF(vault secret, vault id, "envfs/v1/intermediate-mac"), bytes before)
//! ```
//!
//! One file per key, written once (a KMS key change rewrites its slots and a removal its
//! expiry, never its key), so
//! hosts sharing a synced folder each add their own files and never edit the same one. The
//! MAC means only a holder of the vault secret can add a key that mounts will use.

use super::bytes::{Reader, Writer};
use super::slot::KeySlot;

pub const INTERMEDIATE_MAGIC: &[u8; 8] = b"ENVFSIKY";
pub const INTERMEDIATE_VERSION: u16 = 1;
/// The directory at the backing root that holds the intermediate-key files. Like
/// `envfs.conf`, a name no encrypted name can take (those have no dot), reserved in
/// plaintext-names vaults, never shown by the mount, and synced: not `.envfs-*`, which sync
/// clients are told to ignore (docs/stignore).
pub const INTERMEDIATE_DIR: &str = "envfs.keys";
/// The prefix of a key file being written inside it (ignored by sync clients, like every
/// `.envfs-*` name).
pub const INTERMEDIATE_TMP_PREFIX: &str = ".envfs-tmp-";
const MAX_SLOTS: usize = 32;
const MAC_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateKeyFile {
    pub vault_id: [u8; 16],
    pub key_id: [u8; 16],
    /// Unix milliseconds.
    pub created: u64,
    /// Unix milliseconds: the last moment any mount may wrap a new DEK with it, whatever
    /// lifetime its config says (so a key no header uses can be removed safely after it).
    pub expires: u64,
    pub commitment: [u8; 32],
    pub slots: Vec<KeySlot>,
}

impl IntermediateKeyFile {
    /// The name of this key's file in `INTERMEDIATE_DIR`.
    pub fn file_name(key_id: &[u8; 16]) -> String {
        hex::encode(key_id)
    }

    /// The key id a file name stands for (`None`: not an intermediate-key file's name).
    pub fn id_of_name(name: &str) -> Option<[u8; 16]> {
        if name.len() != 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        hex::decode(name).ok()?.try_into().ok()
    }

    /// The key id a header slot names (`ik:<32 hex>`).
    pub fn id_of_slot_key(key_id: &str) -> Option<[u8; 16]> {
        Self::id_of_name(key_id.strip_prefix("ik:")?)
    }

    /// The key id header slots carry for intermediate key `key_id`.
    pub fn slot_key(key_id: &[u8; 16]) -> String {
        format!("ik:{}", hex::encode(key_id))
    }

    /// Everything the MAC covers.
    pub fn encode_body(&self) -> Result<Vec<u8>, String> {
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return Err(format!(
                "an intermediate key needs 1 to {MAX_SLOTS} key slots"
            ));
        }
        let mut w = Writer::default();
        w.bytes(INTERMEDIATE_MAGIC)
            .u16(INTERMEDIATE_VERSION)
            .u16(0)
            .bytes(&self.vault_id)
            .bytes(&self.key_id)
            .u64(self.created)
            .u64(self.expires)
            .bytes(&self.commitment)
            .u8(self.slots.len() as u8);
        for slot in &self.slots {
            slot.check()?;
            slot.encode(&mut w);
        }
        Ok(w.buf)
    }

    /// Parse a whole file. Returns the key, the authenticated body and the stored MAC; the
    /// caller checks the MAC (it needs the vault secret).
    pub fn parse(bytes: &[u8]) -> Result<(IntermediateKeyFile, &[u8], [u8; 32]), String> {
        let short = || "intermediate-key file is truncated".to_string();
        let mut r = Reader::new(bytes);
        if r.take(8) != Some(INTERMEDIATE_MAGIC.as_slice()) {
            return Err("not an intermediate-key file".into());
        }
        let version = r.u16().ok_or_else(short)?;
        if version != INTERMEDIATE_VERSION {
            return Err(format!(
                "intermediate-key file version {version} is not one this envfs reads"
            ));
        }
        if r.u16().ok_or_else(short)? != 0 {
            return Err("non-zero reserved field".into());
        }
        let vault_id = r.array::<16>().ok_or_else(short)?;
        let key_id = r.array::<16>().ok_or_else(short)?;
        let created = r.u64().ok_or_else(short)?;
        let expires = r.u64().ok_or_else(short)?;
        if expires < created {
            return Err("expires before it was created".into());
        }
        let commitment = r.array::<32>().ok_or_else(short)?;
        let count = r.u8().ok_or_else(short)? as usize;
        if count == 0 || count > MAX_SLOTS {
            return Err("bad key slot count".into());
        }
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            slots.push(KeySlot::decode(&mut r).ok_or("bad key slot")?);
        }
        let body_len = r.position();
        let mac: [u8; MAC_LEN] = r.array().ok_or_else(short)?;
        if !r.remaining().is_empty() {
            return Err("trailing bytes after the MAC".into());
        }
        Ok((
            IntermediateKeyFile {
                vault_id,
                key_id,
                created,
                expires,
                commitment,
                slots,
            },
            &bytes[..body_len],
            mac,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ProviderKind;

    fn sample() -> IntermediateKeyFile {
        IntermediateKeyFile {
            vault_id: [1; 16],
            key_id: [0xab; 16],
            created: 1_700_000_000_000,
            expires: 1_700_086_400_000,
            commitment: [3; 32],
            slots: vec![KeySlot {
                provider: ProviderKind::AwsKms,
                key_id: "arn:aws:kms:us-east-1:000000000000:key/k".into(),
                wrapped: vec![4; 150],
            }],
        }
    }

    #[test]
    fn round_trip_and_strict_parsing() {
        let k = sample();
        let mut bytes = k.encode_body().unwrap();
        let body_len = bytes.len();
        bytes.extend_from_slice(&[9; 32]);
        let (parsed, body, mac) = IntermediateKeyFile::parse(&bytes).unwrap();
        assert_eq!(parsed, k);
        assert_eq!(body.len(), body_len);
        assert_eq!(mac, [9; 32]);
        for cut in 0..bytes.len() {
            assert!(
                IntermediateKeyFile::parse(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(IntermediateKeyFile::parse(&longer).is_err());
        let mut newer = bytes.clone();
        newer[9] = 2;
        assert!(
            IntermediateKeyFile::parse(&newer)
                .unwrap_err()
                .contains("version 2")
        );
        let mut none = k.clone();
        none.slots.clear();
        assert!(none.encode_body().is_err());
    }

    #[test]
    fn names_and_slot_key_ids_are_exactly_32_lowercase_hex_digits() {
        let id = [0xab; 16];
        let name = IntermediateKeyFile::file_name(&id);
        assert_eq!(IntermediateKeyFile::id_of_name(&name), Some(id));
        assert_eq!(
            IntermediateKeyFile::id_of_slot_key(&IntermediateKeyFile::slot_key(&id)),
            Some(id)
        );
        for bad in [
            "",
            "ab",
            &name.to_uppercase(),
            &format!("{name}0"),
            ".tmp-0011",
        ] {
            assert_eq!(IntermediateKeyFile::id_of_name(bad), None, "{bad:?}");
        }
        assert_eq!(IntermediateKeyFile::id_of_slot_key(&name), None);
    }
}
