//! A fixed-size secret that is wiped when dropped and never printed.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes: a DEK, a KEK, the vault secret or a derived subkey.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    pub fn from_bytes(bytes: [u8; 32]) -> Secret32 {
        Secret32(bytes)
    }

    /// Copy from a slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Secret32> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Secret32(arr))
    }

    /// 32 bytes from the operating system's CSPRNG.
    pub fn random() -> Secret32 {
        let mut s = Secret32([0; 32]);
        super::random::fill(&mut s.0);
        s
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}
