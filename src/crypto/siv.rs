//! Deterministic encryption (AES-SIV-CMAC-256) for names, symlink targets and xattrs.
//!
//! Names must encrypt to the same ciphertext every time so that a path can be looked up
//! without a directory listing, and so that two hosts syncing one folder agree on names.
//! Deterministic encryption leaks only equality. Each use passes its own domain string as
//! associated data, so a ciphertext of one kind (a name) cannot be replayed as another (a
//! symlink target).

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use zeroize::Zeroizing;

pub mod domain {
    pub const NAME: &[u8] = b"envfs/v1/name";
    pub const SYMLINK: &[u8] = b"envfs/v1/symlink";
    pub const XATTR_NAME: &[u8] = b"envfs/v1/xattr-name";
    pub const XATTR_VALUE: &[u8] = b"envfs/v1/xattr-value";
}

pub struct SivCipher {
    key: Zeroizing<[u8; 64]>,
}

impl SivCipher {
    pub fn new(key: Zeroizing<[u8; 64]>) -> SivCipher {
        SivCipher { key }
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new_from_slice(self.key.as_ref()).expect("64-byte key")
    }

    /// Encrypt under `domain` plus any further associated data (e.g. the xattr's name).
    pub fn encrypt(&self, ad: &[&[u8]], plain: &[u8]) -> Vec<u8> {
        self.cipher()
            .encrypt(ad.iter(), plain)
            .expect("AES-SIV accepts these lengths")
    }

    pub fn decrypt(&self, ad: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
        self.cipher().decrypt(ad.iter(), sealed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_domain_separated() {
        let c = SivCipher::new(Zeroizing::new([4; 64]));
        let a = c.encrypt(&[domain::NAME], b"report.pdf");
        assert_eq!(a, c.encrypt(&[domain::NAME], b"report.pdf"));
        assert_eq!(a.len(), 16 + 10);
        assert_eq!(c.decrypt(&[domain::NAME], &a).unwrap(), b"report.pdf");
        assert!(c.decrypt(&[domain::SYMLINK], &a).is_none());
        let mut bad = a.clone();
        bad[20] ^= 1;
        assert!(c.decrypt(&[domain::NAME], &bad).is_none());
    }
}
