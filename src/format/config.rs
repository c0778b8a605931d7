//! The vault config (`envfs.conf` at the backing root), byte by byte.
//!
//! Layout (all integers big-endian; docs/FORMAT.md is the normative description):
//!
//! ```text
//! 0   8  magic "ENVFSVLT"
//! 8   2  format version (2, or 3 while headers may hold intermediate-key slots; 1 is read)
//! 10  2  flags: bit 0 plaintext names, bit 1 base32 names; other bits must be 0
//! 12 16  vault id
//! 28  1  cipher suite (1)
//! 29  1  number of key slots N (1..=32)
//! 30  4  chunk size (plaintext bytes per chunk)
//! 34  4  header size (bytes of every file header)
//! 38  2  long-name limit (longest encrypted name stored as is)
//! 40  8  generation (version 2 only): raised by every change of the config
//! 48  4  (version 3 only) key hierarchy: lifetime of an intermediate key in seconds, or 0:
//!        off, but headers may still hold intermediate-key slots
//! …   …  N key slots (see slot.rs), each wrapping the 32-byte vault secret
//! …  32  HMAC-SHA256 over every byte before it
//! ```
//!
//! A version 1 config has no generation field (its slots start at 40) and reads as
//! generation 0; envfs writes version 2 whenever it writes a config, so the first change of
//! an old vault upgrades it. Version 3 is written while headers may hold intermediate-key
//! slots (vault/hierarchy.rs): from `envfs key hierarchy on` until, after it is turned off,
//! an `envfs rewrap` has moved every header back to the KMS keys' own slots. So an envfs that
//! cannot read such headers refuses the vault with "newer version" instead of failing file
//! by file. The generation lets each host refuse an older config than one it has seen (a
//! rollback: vault/known.rs).
//!
//! Parsing is strict: a newer version, an unknown flag or suite, or trailing bytes refuse to
//! open, because silently ignoring a field from the future could weaken the crypto.

use super::bytes::{Reader, Writer};
use super::slot::KeySlot;

pub const CONFIG_FILE_NAME: &str = "envfs.conf";
pub const CONFIG_MAGIC: &[u8; 8] = b"ENVFSVLT";
pub const CONFIG_VERSION: u16 = 3;
/// The version written while the key hierarchy is off.
pub const CONFIG_VERSION_2: u16 = 2;
/// The first version, without a generation field; still read.
pub const CONFIG_VERSION_1: u16 = 1;
pub const CONFIG_MAC_LEN: usize = 32;
pub const MAX_CONFIG_SLOTS: usize = 32;

/// AES-256-GCM chunks, HKDF-SHA256 subkeys, AES-SIV-CMAC-256 names, HMAC-SHA256 MACs.
pub const SUITE_AES256GCM_SIV: u8 = 1;

pub const FLAG_PLAINTEXT_NAMES: u16 = 1 << 0;
pub const FLAG_BASE32_NAMES: u16 = 1 << 1;
const KNOWN_FLAGS: u16 = FLAG_PLAINTEXT_NAMES | FLAG_BASE32_NAMES;

pub const MIN_CHUNK_SIZE: u32 = 1024;
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;
pub const MIN_HEADER_SIZE: u32 = 256;
pub const MAX_HEADER_SIZE: u32 = 65536;
pub const MIN_LONG_NAME_LIMIT: u16 = 64;
pub const MAX_LONG_NAME_LIMIT: u16 = 254;

pub const DEFAULT_CHUNK_SIZE: u32 = 4096;
pub const DEFAULT_HEADER_SIZE: u32 = 1024;
pub const DEFAULT_LONG_NAME_LIMIT: u16 = 220;

/// How encrypted names are spelled on the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameEncoding {
    /// RFC 4648 base64url without padding (case-sensitive backends).
    Base64Url,
    /// RFC 4648 base32 without padding (case-insensitive backends: SMB, macOS, Windows).
    Base32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// The format version the config was read in (`CONFIG_VERSION` for a new one); a config
    /// is always written in `CONFIG_VERSION`.
    pub version: u16,
    /// Raised by one on every change; 0 for a version 1 config.
    pub generation: u64,
    /// With the key hierarchy on (version 3): how long, in seconds, an intermediate key
    /// wraps new DEKs before a new one is made. `None`: every DEK is wrapped by the vault's
    /// keys themselves (one KMS call per file).
    pub key_hierarchy: Option<u32>,
    /// Whether file headers may hold intermediate-key slots: the hierarchy is on, or was
    /// and no complete rewrap has moved every header off them since. Keeps the config at
    /// version 3 (with lifetime 0 while off).
    pub intermediate_slots: bool,
    pub vault_id: [u8; 16],
    pub plaintext_names: bool,
    pub name_encoding: NameEncoding,
    pub chunk_size: u32,
    pub header_size: u32,
    pub long_name_limit: u16,
    /// Each slot wraps the vault secret; oldest first.
    pub slots: Vec<KeySlot>,
}

/// Why a config could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigParseError {
    /// Not an envfs config at all.
    BadMagic,
    /// A version or feature this build does not understand.
    Unsupported(String),
    /// Structurally invalid.
    Corrupt(String),
}

impl VaultConfig {
    /// The slots every file header should carry, one per key, in config order: all but the
    /// passphrase slots (`ProviderKind::in_headers`).
    pub fn header_slots(&self) -> impl Iterator<Item = &super::KeySlot> {
        self.slots.iter().filter(|s| s.provider.in_headers())
    }

    pub fn vault_id_hex(&self) -> String {
        hex::encode(self.vault_id)
    }

    fn flags(&self) -> u16 {
        let mut flags = 0;
        if self.plaintext_names {
            flags |= FLAG_PLAINTEXT_NAMES;
        }
        if self.name_encoding == NameEncoding::Base32 {
            flags |= FLAG_BASE32_NAMES;
        }
        flags
    }

    /// Check every field against the limits the format allows.
    pub fn validate(&self) -> Result<(), String> {
        let cs = self.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) || !cs.is_power_of_two() {
            return Err(format!(
                "chunk size {cs} must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}"
            ));
        }
        let hs = self.header_size;
        if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&hs) {
            return Err(format!(
                "header size {hs} must be from {MIN_HEADER_SIZE} to {MAX_HEADER_SIZE}"
            ));
        }
        let ll = self.long_name_limit;
        if !(MIN_LONG_NAME_LIMIT..=MAX_LONG_NAME_LIMIT).contains(&ll) {
            return Err(format!(
                "long-name limit {ll} must be from {MIN_LONG_NAME_LIMIT} to {MAX_LONG_NAME_LIMIT}"
            ));
        }
        if self.slots.is_empty() || self.slots.len() > MAX_CONFIG_SLOTS {
            return Err(format!(
                "a vault needs 1 to {MAX_CONFIG_SLOTS} keys, has {}",
                self.slots.len()
            ));
        }
        if self.key_hierarchy == Some(0) {
            return Err("an intermediate key's lifetime must be at least one second".into());
        }
        for slot in &self.slots {
            slot.check()?;
            if slot.provider == crate::format::slot::ProviderKind::Intermediate {
                return Err("an intermediate key cannot be a key of the vault config".into());
            }
            // A key of a kind this envfs does not know could not be wrapped for: new files
            // would silently lack it. (File headers stay lenient: another slot may open them.)
            if let crate::format::slot::ProviderKind::Unknown(code) = slot.provider {
                return Err(format!("key slot of unknown provider kind {code}"));
            }
        }
        Ok(())
    }

    /// The version this config is written in: the oldest that can say everything in it.
    pub fn written_version(&self) -> u16 {
        if self.key_hierarchy.is_some() || self.intermediate_slots {
            CONFIG_VERSION
        } else {
            CONFIG_VERSION_2
        }
    }

    /// The authenticated bytes of the config in the version it is written in
    /// (`written_version`, whatever version it was read in): everything but the MAC.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(CONFIG_MAGIC)
            .u16(self.written_version())
            .u16(self.flags())
            .bytes(&self.vault_id)
            .u8(SUITE_AES256GCM_SIV)
            .u8(self.slots.len() as u8)
            .u32(self.chunk_size)
            .u32(self.header_size)
            .u16(self.long_name_limit)
            .u64(self.generation);
        if self.written_version() == CONFIG_VERSION {
            w.u32(self.key_hierarchy.unwrap_or(0));
        }
        for slot in &self.slots {
            slot.encode(&mut w);
        }
        w.buf
    }

    /// Parse a config file. Returns the config, the authenticated body and the stored MAC;
    /// the caller verifies the MAC once it has unwrapped the vault secret.
    pub fn parse(bytes: &[u8]) -> Result<(VaultConfig, &[u8], [u8; 32]), ConfigParseError> {
        use ConfigParseError::*;
        let short = || Corrupt("config is truncated".into());
        let mut r = Reader::new(bytes);
        if r.take(8) != Some(CONFIG_MAGIC.as_slice()) {
            return Err(BadMagic);
        }
        let version = r.u16().ok_or_else(short)?;
        if version == 0 {
            return Err(Corrupt("format version 0".into()));
        }
        if version > CONFIG_VERSION {
            return Err(Unsupported(format!(
                "vault format version {version} is newer than this envfs supports \
                 (up to {CONFIG_VERSION}); upgrade envfs to open it"
            )));
        }
        let flags = r.u16().ok_or_else(short)?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Unsupported(format!(
                "vault uses features this envfs does not know (flags {flags:#06x}); upgrade envfs"
            )));
        }
        let vault_id = r.array::<16>().ok_or_else(short)?;
        let suite = r.u8().ok_or_else(short)?;
        if suite != SUITE_AES256GCM_SIV {
            return Err(Unsupported(format!(
                "vault uses cipher suite {suite}, which this envfs does not know; upgrade envfs"
            )));
        }
        let slot_count = r.u8().ok_or_else(short)? as usize;
        let chunk_size = r.u32().ok_or_else(short)?;
        let header_size = r.u32().ok_or_else(short)?;
        let long_name_limit = r.u16().ok_or_else(short)?;
        let generation = match version {
            CONFIG_VERSION_1 => 0,
            _ => r.u64().ok_or_else(short)?,
        };
        let key_hierarchy = match version {
            CONFIG_VERSION => Some(r.u32().ok_or_else(short)?).filter(|&l| l != 0),
            _ => None,
        };
        let mut slots = Vec::with_capacity(slot_count);
        for _ in 0..slot_count {
            slots.push(KeySlot::decode(&mut r).ok_or_else(|| Corrupt("bad key slot".into()))?);
        }
        let body_len = r.position();
        let mac: [u8; 32] = r.array().ok_or_else(short)?;
        if !r.remaining().is_empty() {
            return Err(Corrupt("trailing bytes after the MAC".into()));
        }
        let config = VaultConfig {
            version,
            generation,
            key_hierarchy,
            intermediate_slots: version == CONFIG_VERSION,
            vault_id,
            plaintext_names: flags & FLAG_PLAINTEXT_NAMES != 0,
            name_encoding: if flags & FLAG_BASE32_NAMES != 0 {
                NameEncoding::Base32
            } else {
                NameEncoding::Base64Url
            },
            chunk_size,
            header_size,
            long_name_limit,
            slots,
        };
        config.validate().map_err(Corrupt)?;
        Ok((config, &bytes[..body_len], mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::slot::ProviderKind;

    fn sample() -> VaultConfig {
        VaultConfig {
            version: CONFIG_VERSION_2,
            generation: 3,
            key_hierarchy: None,
            intermediate_slots: false,
            vault_id: [7; 16],
            plaintext_names: false,
            name_encoding: NameEncoding::Base32,
            chunk_size: 4096,
            header_size: 1024,
            long_name_limit: 220,
            slots: vec![KeySlot {
                provider: ProviderKind::Local,
                key_id: "local:abcd".into(),
                wrapped: vec![1; 60],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let mut bytes = c.encode_body();
        let body_len = bytes.len();
        bytes.extend_from_slice(&[9; 32]);
        let (parsed, body, mac) = VaultConfig::parse(&bytes).unwrap();
        assert_eq!(parsed, c);
        assert_eq!(body.len(), body_len);
        assert_eq!(mac, [9; 32]);
    }

    #[test]
    fn newer_version_and_unknown_flags_refuse() {
        let mut bytes = sample().encode_body();
        bytes.extend_from_slice(&[0; 32]);
        let mut newer = bytes.clone();
        newer[9] = CONFIG_VERSION as u8 + 1;
        const { assert!(CONFIG_VERSION_2 < CONFIG_VERSION) };
        assert!(matches!(
            VaultConfig::parse(&newer),
            Err(ConfigParseError::Unsupported(_))
        ));
        let mut flag = bytes.clone();
        flag[10] = 0x80;
        assert!(matches!(
            VaultConfig::parse(&flag),
            Err(ConfigParseError::Unsupported(_))
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(VaultConfig::parse(&magic), Err(ConfigParseError::BadMagic));
        for cut in 0..bytes.len() {
            assert!(VaultConfig::parse(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(VaultConfig::parse(&longer).is_err());
    }

    #[test]
    fn version_1_reads_as_generation_0_and_is_written_as_version_2() {
        let c = sample();
        let v2 = c.encode_body();
        // The same config as version 1 wrote it: no generation field.
        let mut v1 = v2[..40].to_vec();
        v1[9] = 1;
        v1.extend_from_slice(&v2[48..]);
        v1.extend_from_slice(&[0; 32]);
        let (parsed, body, _) = VaultConfig::parse(&v1).unwrap();
        assert_eq!(parsed.version, 1);
        assert_eq!(parsed.generation, 0);
        assert_eq!(body, &v1[..v1.len() - 32]);
        assert_eq!(parsed.slots, c.slots);
        let rewritten = parsed.encode_body();
        assert_eq!(u16::from_be_bytes([rewritten[8], rewritten[9]]), 2);
        assert_eq!(&rewritten[40..48], &[0; 8]);
    }

    #[test]
    fn the_key_hierarchy_is_version_3_until_no_header_needs_it() {
        let mut c = sample();
        c.key_hierarchy = Some(86_400);
        let mut bytes = c.encode_body();
        assert_eq!(u16::from_be_bytes([bytes[8], bytes[9]]), 3);
        assert_eq!(&bytes[48..52], &86_400u32.to_be_bytes());
        bytes.extend_from_slice(&[0; 32]);
        let (parsed, _, _) = VaultConfig::parse(&bytes).unwrap();
        assert_eq!(parsed.key_hierarchy, Some(86_400));
        assert_eq!(parsed.slots, c.slots);
        assert!(parsed.intermediate_slots);
        // Off, while headers may still hold intermediate-key slots: version 3, lifetime 0.
        let mut off = parsed.clone();
        off.key_hierarchy = None;
        let mut off_bytes = off.encode_body();
        assert_eq!(u16::from_be_bytes([off_bytes[8], off_bytes[9]]), 3);
        assert_eq!(&off_bytes[48..52], &[0; 4]);
        off_bytes.extend_from_slice(&[0; 32]);
        let (reread, _, _) = VaultConfig::parse(&off_bytes).unwrap();
        assert_eq!(
            (reread.key_hierarchy, reread.intermediate_slots),
            (None, true)
        );
        // Once no header does: version 2 again.
        off.intermediate_slots = false;
        assert_eq!(
            u16::from_be_bytes([off.encode_body()[8], off.encode_body()[9]]),
            2
        );
        // A zero lifetime while on is not a config envfs writes.
        let mut zero = c.clone();
        zero.key_hierarchy = Some(0);
        assert!(zero.validate().is_err());
        // Nor is an intermediate key among the vault's keys.
        let mut slotted = c.clone();
        slotted.slots[0].provider = ProviderKind::Intermediate;
        assert!(slotted.validate().is_err());
    }
}
