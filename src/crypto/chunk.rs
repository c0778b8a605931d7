//! Sealing and opening one chunk with AES-256-GCM.
//!
//! A sealed chunk is `nonce (12) || ciphertext || tag (16)`. The nonce is fresh and random on
//! every write, never a counter, because chunks are rewritten in place and a counter would
//! have to be stored and could be rolled back. The associated data binds the chunk to its
//! file (file id), its position (index) and whether it ends the file (last flag), so moving,
//! reordering or truncating chunks is detected.

use super::secret::Secret32;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::format::geometry::{NONCE_LEN, TAG_LEN};

const NONCE: usize = NONCE_LEN as usize;
const TAG: usize = TAG_LEN as usize;

/// The chunk cipher of one file: AES-256-GCM under the file's content subkey.
///
/// The implementation is AWS-LC (through aws-lc-rs, which the AWS SDK already links): its
/// stitched AES-NI/PCLMUL assembly seals a 4 KiB chunk several times faster than the
/// portable `aes-gcm` crate on the same core (see `cargo bench --bench hot_path`, which
/// times both). The bytes are standard AES-256-GCM either way; a unit test below checks
/// them against `aes-gcm`, and the golden vault in `tests/golden` pins the format.
pub struct ChunkCipher {
    aead: LessSafeKey,
    file_id: [u8; 16],
}

/// A chunk failed authentication. Carries nothing: which chunk is the caller's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl ChunkCipher {
    pub fn new(content_key: &Secret32, file_id: [u8; 16]) -> ChunkCipher {
        let key = UnboundKey::new(&AES_256_GCM, content_key.expose()).expect("32-byte key");
        ChunkCipher {
            aead: LessSafeKey::new(key),
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
        // Encrypt straight from `plain` into `out` rather than copying and then sealing in
        // place: the copy cost as much as the cipher on this CPU (the ciphertext sits 12
        // bytes past the nonce, a misalignment `rep movsb` handles badly on AMD).
        let start = out.len();
        out.extend_from_slice(&nonce_bytes);
        out.resize(start + NONCE + plain.len() + TAG, 0);
        let (body, tag) = out[start + NONCE..].split_at_mut(plain.len());
        self.aead
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(self.aad(index, last)),
                plain,
                body,
                &[],
                tag,
            )
            .expect("chunk length is within AES-GCM limits");
    }

    /// Authenticate and decrypt a sealed chunk, appending the plaintext to `out` (the read
    /// path's way for whole chunks: it saves copying the plaintext out of the sealed
    /// buffer). On failure `out` is left as it was and nothing unauthenticated remains in
    /// it.
    pub fn open_into(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AuthError> {
        if sealed.len() <= NONCE + TAG {
            return Err(AuthError);
        }
        let (nonce, body_and_tag) = sealed.split_at(NONCE);
        let (body, tag) = body_and_tag.split_at(body_and_tag.len() - TAG);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthError)?;
        let start = out.len();
        out.resize(start + body.len(), 0);
        let opened = self.aead.open_separate_gather(
            nonce,
            Aad::from(self.aad(index, last)),
            body,
            tag,
            &mut out[start..],
        );
        if opened.is_err() {
            // Whatever was decrypted before the tag check failed must not linger.
            out[start..].fill(0);
            out.truncate(start);
            return Err(AuthError);
        }
        Ok(())
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
        let (nonce, body_and_tag) = sealed.split_at_mut(NONCE);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthError)?;
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(self.aad(index, last)), body_and_tag)
            .map_err(|_| AuthError)?;
        Ok(plain)
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
    fn open_into_appends_or_leaves_out_untouched() {
        let c = ChunkCipher::new(&Secret32::from_bytes([1; 32]), [2; 16]);
        let mut sealed = Vec::new();
        c.seal_into(3, true, b"whole chunk", &mut sealed);
        let mut out = b"prefix:".to_vec();
        c.open_into(3, true, &sealed, &mut out).unwrap();
        assert_eq!(out, b"prefix:whole chunk");
        let mut out = b"prefix:".to_vec();
        assert!(c.open_into(3, false, &sealed, &mut out).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(c.open_into(3, true, &sealed, &mut out).is_err());
        assert_eq!(out, b"prefix:");
        assert!(c.open_into(3, true, &[0; 28], &mut out).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let c = ChunkCipher::new(&Secret32::from_bytes([1; 32]), [2; 16]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.seal_into(0, true, b"same", &mut a);
        c.seal_into(0, true, b"same", &mut b);
        assert_ne!(a, b);
    }

    /// The bytes are plain AES-256-GCM: a chunk sealed here opens with the RustCrypto
    /// implementation under the same key, nonce and associated data, and the reverse.
    #[test]
    fn interoperates_with_rustcrypto_aes_gcm() {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let key = [4u8; 32];
        let c = ChunkCipher::new(&Secret32::from_bytes(key), [6; 16]);
        let other = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
        let plain = b"interoperable chunk bytes".to_vec();

        let mut sealed = Vec::new();
        c.seal_with_nonce(9, true, &plain, [8; 12], &mut sealed);
        let mut body = sealed[12..sealed.len() - 16].to_vec();
        let tag = aes_gcm::Tag::try_from(&sealed[sealed.len() - 16..]).unwrap();
        other
            .decrypt_inout_detached(
                &aes_gcm::Nonce::from([8; 12]),
                &c.aad(9, true),
                (&mut body[..]).into(),
                &tag,
            )
            .unwrap();
        assert_eq!(body, plain);

        let mut theirs = plain.clone();
        let tag = other
            .encrypt_inout_detached(
                &aes_gcm::Nonce::from([1; 12]),
                &c.aad(2, false),
                (&mut theirs[..]).into(),
            )
            .unwrap();
        let mut sealed = [1u8; 12].to_vec();
        sealed.extend_from_slice(&theirs);
        sealed.extend_from_slice(&tag);
        assert_eq!(c.open_in_place(2, false, &mut sealed).unwrap(), plain);
    }
}
