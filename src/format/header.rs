//! The file header: the first `header_size` bytes of every non-empty backing file.
//!
//! Layout (big-endian; docs/FORMAT.md is normative):
//!
//! ```text
//! 0    4  magic "ENVF"
//! 4    2  header version (1)
//! 6    1  number of key slots N (1..)
//! 7    1  reserved, 0
//! 8   16  file id (random; bound into every chunk's AAD and the key service context)
//! 24  32  key commitment: HKDF(DEK, file id, "envfs/v1/commit")
//! 56   …  N key slots, each wrapping this file's DEK
//! …    …  zero padding
//! H-32 32 HMAC-SHA256(HKDF(DEK, file id, "envfs/v1/header-mac"), vault id || bytes 0..H-32)
//! ```
//!
//! The header has the same size in every file of a vault so that plaintext sizes are
//! arithmetic on backing sizes (see geometry.rs).

use super::bytes::{Reader, Writer};
use super::slot::KeySlot;

pub const HEADER_MAGIC: &[u8; 4] = b"ENVF";
pub const HEADER_VERSION: u16 = 1;
pub const HEADER_MAC_LEN: usize = 32;
/// Offset of the file id, read on its own to notice a header replaced behind our back.
pub const FILE_ID_OFFSET: usize = 8;
/// Bytes before the key slots.
pub const HEADER_FIXED_LEN: usize = 56;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    pub file_id: [u8; 16],
    pub commitment: [u8; 32],
    pub slots: Vec<KeySlot>,
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderParseError {
    Unsupported(String),
    Corrupt(String),
}

impl FileHeader {
    /// Encode everything but the MAC into exactly `header_size - 32` bytes, or say why the
    /// slots do not fit.
    pub fn encode_body(&self, header_size: usize) -> Result<Vec<u8>, String> {
        if self.slots.is_empty() || self.slots.len() > 255 {
            return Err("a header needs 1 to 255 key slots".into());
        }
        let mut w = Writer::default();
        w.bytes(HEADER_MAGIC)
            .u16(HEADER_VERSION)
            .u8(self.slots.len() as u8)
            .u8(0)
            .bytes(&self.file_id)
            .bytes(&self.commitment);
        for slot in &self.slots {
            slot.check()?;
            slot.encode(&mut w);
        }
        let body_len = header_size - HEADER_MAC_LEN;
        if w.buf.len() > body_len {
            return Err(format!(
                "the wrapped keys need {} header bytes but the vault's header size is {header_size}",
                w.buf.len() + HEADER_MAC_LEN
            ));
        }
        w.buf.resize(body_len, 0);
        Ok(w.buf)
    }

    /// Parse a whole header (exactly `header_size` bytes). Returns the header and the stored
    /// MAC; verifying the MAC needs the DEK, so it is the caller's job.
    pub fn parse(bytes: &[u8]) -> Result<(FileHeader, [u8; 32]), HeaderParseError> {
        use HeaderParseError::*;
        if bytes.len() < HEADER_FIXED_LEN + HEADER_MAC_LEN {
            return Err(Corrupt("header is truncated".into()));
        }
        let (body, mac) = bytes.split_at(bytes.len() - HEADER_MAC_LEN);
        let mut r = Reader::new(body);
        if r.take(4) != Some(HEADER_MAGIC.as_slice()) {
            return Err(Corrupt("bad header magic".into()));
        }
        let version = r.u16().ok_or_else(|| Corrupt("short".into()))?;
        if version == 0 {
            return Err(Corrupt("header version 0".into()));
        }
        if version > HEADER_VERSION {
            return Err(Unsupported(format!(
                "file header version {version} is newer than this envfs supports"
            )));
        }
        let slot_count = r.u8().ok_or_else(|| Corrupt("short".into()))?;
        let reserved = r.u8().ok_or_else(|| Corrupt("short".into()))?;
        if slot_count == 0 || reserved != 0 {
            return Err(Corrupt("bad slot count or reserved byte".into()));
        }
        let file_id = r.array::<16>().ok_or_else(|| Corrupt("short".into()))?;
        let commitment = r.array::<32>().ok_or_else(|| Corrupt("short".into()))?;
        let mut slots = Vec::with_capacity(slot_count as usize);
        for _ in 0..slot_count {
            slots.push(KeySlot::decode(&mut r).ok_or_else(|| Corrupt("bad key slot".into()))?);
        }
        // The padding is authenticated by the MAC anyway; insisting on zeros keeps the format
        // free of places to hide data.
        if r.remaining().iter().any(|&b| b != 0) {
            return Err(Corrupt("non-zero header padding".into()));
        }
        Ok((
            FileHeader {
                file_id,
                commitment,
                slots,
            },
            mac.try_into().expect("32 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::slot::ProviderKind;

    #[test]
    fn round_trip_and_fit() {
        let h = FileHeader {
            file_id: [3; 16],
            commitment: [4; 32],
            slots: vec![KeySlot {
                provider: ProviderKind::Local,
                key_id: "local:00".into(),
                wrapped: vec![5; 60],
            }],
        };
        let mut bytes = h.encode_body(256).unwrap();
        assert_eq!(bytes.len(), 224);
        bytes.extend_from_slice(&[6; 32]);
        let (parsed, mac) = FileHeader::parse(&bytes).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(mac, [6; 32]);

        let mut big = h.clone();
        big.slots[0].wrapped = vec![5; 400];
        assert!(big.encode_body(256).is_err());

        let mut padded = bytes.clone();
        padded[200] = 1;
        assert!(FileHeader::parse(&padded).is_err());
        let mut newer = bytes.clone();
        newer[5] = 9;
        assert!(matches!(
            FileHeader::parse(&newer),
            Err(HeaderParseError::Unsupported(_))
        ));
    }
}
