//! Sealing and opening one chunk with AES-256-GCM.
//!
//! A sealed chunk is `nonce (12) || ciphertext || tag (16)`. The nonce is fresh and random on
//! every write, never a counter, because chunks are rewritten in place and a counter would
//! have to be stored and could be rolled back. The associated data binds the chunk to its
//! file (file id), its position (index) and whether it ends the file (last flag), so moving,
//! reordering or truncating chunks is detected.

use super::secret::Secret32;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use crate::format::geometry::{NONCE_LEN, TAG_LEN};

const NONCE: usize = NONCE_LEN as usize;
const TAG: usize = TAG_LEN as usize;

/// The chunk cipher of one file: AES-256-GCM under the file's content subkey.
pub struct ChunkCipher {
    aead: Aes256Gcm,
    file_id: [u8; 16],
}

/// A chunk failed authentication. Carries nothing: which chunk is the caller's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl ChunkCipher {
    pub fn new(content_key: &Secret32, file_id: [u8; 16]) -> ChunkCipher {
        ChunkCipher {
            aead: Aes256Gcm::new_from_slice(content_key.expose()).expect("32-byte key"),
            file_id,
        }
    }

    pub fn file_id(&self) -> &[u8; 16] {
        &self.file_id
    }

    fn aad(&self, index: u64, last: bool) -> [u8; 25] {
        let mut aad = [0u8; 25];
        aad[..16].copy_from_slice(&self.file_id);
        aad[16..24].copy_from_slice(&index.to_be_bytes());
        aad[24] = last as u8;
        aad
    }

    /// Append the sealed form of `plain` (chunk `index`) to `out`, under a fresh random
    /// nonce.
    pub fn seal_into(&self, index: u64, last: bool, plain: &[u8], out: &mut Vec<u8>) {
        self.seal_with_nonce(index, last, plain, super::random::array(), out);
    }

    /// The same with a nonce the caller drew from the OS CSPRNG: a write of many chunks
    /// draws all its nonces in one `getrandom` call instead of one syscall per chunk.
    /// Never pass a nonce that was used before.
    pub fn seal_with_nonce(
        &self,
        index: u64,
        last: bool,
        plain: &[u8],
        nonce_bytes: [u8; NONCE],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plain);
        let nonce = Nonce::from(nonce_bytes);
        let tag = self
            .aead
            .encrypt_inout_detached(
                &nonce,
                &self.aad(index, last),
                (&mut out[start + NONCE..]).into(),
            )
            .expect("chunk length is within AES-GCM limits");
        out.extend_from_slice(&tag);
    }

    /// Authenticate and decrypt a sealed chunk in place; returns the plaintext, which lives
    /// inside `sealed`. On failure `sealed` holds garbage and nothing may be returned to a
    /// reader.
    pub fn open_in_place<'a>(
        &self,
        index: u64,
        last: bool,
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8], AuthError> {
        if sealed.len() <= NONCE + TAG {
            return Err(AuthError);
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG);
        let nonce = Nonce::try_from(&*nonce).map_err(|_| AuthError)?;
        let tag = Tag::try_from(&*tag).map_err(|_| AuthError)?;
        self.aead
            .decrypt_inout_detached(&nonce, &self.aad(index, last), (&mut *body).into(), &tag)
            .map_err(|_| AuthError)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_every_binding() {
        let key = Secret32::from_bytes([1; 32]);
        let c = ChunkCipher::new(&key, [2; 16]);
        let mut sealed = Vec::new();
        c.seal_into(5, false, b"hello chunk", &mut sealed);
        assert_eq!(sealed.len(), 11 + 28);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));

        let mut copy = sealed.clone();
        assert_eq!(
            c.open_in_place(5, false, &mut copy).unwrap(),
            b"hello chunk"
        );
        // Wrong index, wrong last flag, wrong file, wrong key, any flipped bit: all fail.
        assert!(c.open_in_place(6, false, &mut sealed.clone()).is_err());
        assert!(c.open_in_place(5, true, &mut sealed.clone()).is_err());
        let other_file = ChunkCipher::new(&key, [3; 16]);
        assert!(
            other_file
                .open_in_place(5, false, &mut sealed.clone())
                .is_err()
        );
        let other_key = ChunkCipher::new(&Secret32::from_bytes([9; 32]), [2; 16]);
        assert!(
            other_key
                .open_in_place(5, false, &mut sealed.clone())
                .is_err()
        );
        for bit in 0..sealed.len() * 8 {
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                c.open_in_place(5, false, &mut flipped).is_err(),
                "bit {bit}"
            );
        }
        assert!(c.open_in_place(5, false, &mut [0u8; 39]).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let c = ChunkCipher::new(&Secret32::from_bytes([1; 32]), [2; 16]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.seal_into(0, true, b"same", &mut a);
        c.seal_into(0, true, b"same", &mut b);
        assert_ne!(a, b);
    }
}
