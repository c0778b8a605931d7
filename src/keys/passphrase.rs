//! Passphrase keys: a vault key unlocked by something a person remembers, as in gocryptfs.
//!
//! A passphrase key is an X25519 key pair (keys/x25519.rs) whose private key is kept in the
//! vault config, sealed under the passphrase. Its public key wraps the vault secret and every
//! DEK like any recovery key's, so every host that opens the vault (by any key) wraps new
//! files for it, and `key add` works for it as for any key pair; only the passphrase turns
//! the sealed private key back into one that unwraps.
//!
//! The seal is its own config slot (provider 4, `passphrase`), naming the X25519 key it
//! unlocks by that key's id, with the wrapped bytes (docs/FORMAT.md §5.5):
//!
//! ```text
//! m_cost (u32 LE, KiB) | t_cost (u32 LE) | p_cost (u32 LE) | salt (16) | nonce (12)
//!   | AES-256-GCM(private key (32)) | tag (16)                       = 88 bytes
//! ```
//!
//! The AES key is HKDF-SHA256(Argon2id(passphrase, salt, m, t, p), salt = empty,
//! `"envfs/v1/passphrase-seal"`); the associated data is that label, the vault id and the
//! X25519 key id, so a seal moved to another vault or key does not open. The Argon2id cost
//! is stored per slot and calibrated when the slot is made, so a slot made on a fast host
//! costs a guesser as much as it cost the holder; a config's cost is bounded when read, so
//! a forged one cannot make a host allocate without limit.

use crate::crypto::kdf::{derive32, label};
use crate::crypto::{Secret32, random};
use crate::error::{Error, Result};
use crate::format::{KeySlot, ProviderKind};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use std::time::{Duration, Instant};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

const COST_LEN: usize = 12;
const SALT_LEN: usize = 16;
/// The wrapped length of a passphrase slot.
pub const SEALED_LEN: usize = COST_LEN + SALT_LEN + 12 + 32 + 16;

/// Argon2id's cost parameters, as a slot stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory, in KiB.
    pub m_kib: u32,
    /// Passes over that memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Cost {
    /// The memory a new slot uses: 64 MiB, RFC 9106's second recommended option.
    pub const MEMORY_KIB: u32 = 64 * 1024;
    /// How long deriving a new slot's key should take on the host that makes it.
    pub const TARGET: Duration = Duration::from_millis(500);
    /// The fewest passes a new slot gets, whatever the host's speed (RFC 9106: 3).
    const MIN_T: u32 = 3;
    /// Bounds on what a config may ask of a host: 1 GiB, 64 passes, 16 lanes.
    const MAX_M_KIB: u32 = 1 << 20;
    const MAX_T: u32 = 64;
    const MAX_P: u32 = 16;

    /// A cost this envfs agrees to compute (Argon2id's own minimums, and the bounds above).
    fn checked(self) -> Option<Cost> {
        let ok = (1..=Self::MAX_P).contains(&self.p)
            && (8 * self.p..=Self::MAX_M_KIB).contains(&self.m_kib)
            && (1..=Self::MAX_T).contains(&self.t);
        ok.then_some(self)
    }

    /// The cost for a new slot on this host: 64 MiB, one lane, and as many passes (at
    /// least 3, at most 64) as fit in `TARGET`, measured with one pass.
    pub fn calibrate() -> Cost {
        let one = Cost {
            m_kib: Self::MEMORY_KIB,
            t: 1,
            p: 1,
        };
        let started = Instant::now();
        let _ = derive(b"calibration", &[0; SALT_LEN], one);
        let per_pass = started.elapsed().max(Duration::from_millis(1));
        let passes = (Self::TARGET.as_nanos() / per_pass.as_nanos()) as u32;
        Cost {
            t: passes.clamp(Self::MIN_T, Self::MAX_T),
            ..one
        }
    }

    fn encode(self) -> [u8; COST_LEN] {
        let mut out = [0u8; COST_LEN];
        out[..4].copy_from_slice(&self.m_kib.to_le_bytes());
        out[4..8].copy_from_slice(&self.t.to_le_bytes());
        out[8..].copy_from_slice(&self.p.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Cost {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Cost {
            m_kib: word(0),
            t: word(4),
            p: word(8),
        }
    }
}

/// Argon2id(passphrase, salt, cost) → 32 bytes.
fn derive(passphrase: &[u8], salt: &[u8], cost: Cost) -> Result<Secret32> {
    let params = argon2::Params::new(cost.m_kib, cost.t, cost.p, Some(32))
        .map_err(|e| Error::Invalid(format!("Argon2id parameters {cost:?}: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| Error::Invalid(format!("Argon2id: {e}")))?;
    Ok(Secret32::from_bytes(*out))
}

fn seal_cipher(passphrase: &[u8], salt: &[u8], cost: Cost) -> Result<Aes256Gcm> {
    let stretched = derive(passphrase, salt, cost)?;
    let key = derive32(&stretched, b"", label::PASSPHRASE_SEAL);
    Ok(Aes256Gcm::new_from_slice(key.expose()).expect("32-byte key"))
}

fn aad(vault_id: &[u8; 16], key_id: &str) -> Vec<u8> {
    [label::PASSPHRASE_SEAL, vault_id, key_id.as_bytes()].concat()
}

/// The passphrase slot sealing `private` (the X25519 key `key_id`) of vault `vault_id`.
pub fn seal(
    passphrase: &[u8],
    private: &StaticSecret,
    key_id: &str,
    vault_id: &[u8; 16],
    cost: Cost,
) -> Result<KeySlot> {
    let cost = cost
        .checked()
        .ok_or_else(|| Error::Invalid(format!("Argon2id cost out of bounds: {cost:?}")))?;
    let salt: [u8; SALT_LEN] = random::array();
    let nonce: [u8; 12] = random::array();
    let cipher = seal_cipher(passphrase, &salt, cost)?;
    let mut wrapped = Vec::with_capacity(SEALED_LEN);
    wrapped.extend_from_slice(&cost.encode());
    wrapped.extend_from_slice(&salt);
    wrapped.extend_from_slice(&nonce);
    let body = wrapped.len();
    wrapped.extend_from_slice(private.as_bytes());
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &aad(vault_id, key_id),
            (&mut wrapped[body..]).into(),
        )
        .expect("32-byte message");
    wrapped.extend_from_slice(&tag);
    Ok(KeySlot {
        provider: ProviderKind::Passphrase,
        key_id: key_id.to_string(),
        wrapped,
    })
}

/// The X25519 private key a passphrase slot seals, if `passphrase` is its passphrase
/// (`None` when it is not, or the slot was altered: the two cannot be told apart). The
/// whole derivation runs either way. A slot whose cost is out of bounds or whose length is
/// wrong is an error: envfs never wrote it.
pub fn unseal(
    slot: &KeySlot,
    passphrase: &[u8],
    vault_id: &[u8; 16],
) -> Result<Option<StaticSecret>> {
    let w = &slot.wrapped;
    let malformed = || {
        Error::CorruptConfig(format!(
            "the passphrase slot for {} is malformed",
            slot.key_id
        ))
    };
    let cost = cost_of(slot)?;
    let salt = &w[COST_LEN..COST_LEN + SALT_LEN];
    let nonce_at = COST_LEN + SALT_LEN;
    let cipher = seal_cipher(passphrase, salt, cost)?;
    let nonce = Nonce::try_from(&w[nonce_at..nonce_at + 12]).map_err(|_| malformed())?;
    let tag = Tag::try_from(&w[nonce_at + 44..]).map_err(|_| malformed())?;
    let mut body = Zeroizing::new([0u8; 32]);
    body.copy_from_slice(&w[nonce_at + 12..nonce_at + 44]);
    let opened = cipher.decrypt_inout_detached(
        &nonce,
        &aad(vault_id, &slot.key_id),
        (&mut body[..]).into(),
        &tag,
    );
    Ok(opened.ok().map(|()| StaticSecret::from(*body)))
}

/// A new passphrase key for vault `vault_id`: a fresh X25519 key pair, and its passphrase
/// slot under `passphrase` at the cost calibrated on this host.
pub fn new_key(
    passphrase: &str,
    vault_id: &[u8; 16],
) -> Result<(super::x25519::X25519KeyProvider, KeySlot)> {
    let private = StaticSecret::from(random::array::<32>());
    let key = super::x25519::X25519KeyProvider::from_secret(private.clone());
    let slot = seal(
        passphrase.as_bytes(),
        &private,
        super::KeyProvider::key_id(&key),
        vault_id,
        Cost::calibrate(),
    )?;
    Ok((key, slot))
}

/// The Argon2id cost a passphrase slot asks for, if it is a well-formed slot whose cost this
/// envfs agrees to compute (checked before any work).
pub fn cost_of(slot: &KeySlot) -> Result<Cost> {
    let malformed = || {
        Error::CorruptConfig(format!(
            "the passphrase slot for {} is malformed",
            slot.key_id
        ))
    };
    if slot.provider != ProviderKind::Passphrase || slot.wrapped.len() != SEALED_LEN {
        return Err(malformed());
    }
    Cost::decode(&slot.wrapped[..COST_LEN])
        .checked()
        .ok_or_else(malformed)
}

/// The passphrase as it came from a key source: without the one line ending a command's
/// output or a pipe adds.
pub fn trimmed(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

/// A new passphrase: asked twice on the terminal without echo, or, when stdin is not a
/// terminal, its first line. Empty ones are refused.
pub fn ask_new(what: &str) -> Result<Zeroizing<String>> {
    use std::io::IsTerminal;
    let passphrase = if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(
            rpassword::prompt_password(format!("New passphrase for {what}: "))
                .map_err(|e| Error::KeyFile(format!("cannot read the passphrase: {e}")))?,
        );
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat it: ")
                .map_err(|e| Error::KeyFile(format!("cannot read the passphrase: {e}")))?,
        );
        if first != again {
            return Err(Error::Invalid("the two passphrases differ".into()));
        }
        first
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Error::KeyFile(format!("cannot read the passphrase from stdin: {e}")))?;
        Zeroizing::new(trimmed(&line).to_string())
    };
    if passphrase.is_empty() {
        return Err(Error::Invalid(
            "an empty passphrase protects nothing".into(),
        ));
    }
    Ok(passphrase)
}

/// A passphrase asked for on the terminal (`/dev/tty`), without echo.
pub fn prompt(vault_id_hex: &str) -> std::io::Result<Zeroizing<String>> {
    rpassword::prompt_password(format!("Passphrase for envfs vault {vault_id_hex}: "))
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Cost = Cost {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn only_the_passphrase_unseals_and_only_for_its_vault_and_key() {
        let private = StaticSecret::from([7u8; 32]);
        let slot = seal(b"correct horse", &private, "x25519:abc", &[1; 16], FAST).unwrap();
        assert_eq!(slot.wrapped.len(), SEALED_LEN);
        let opened = unseal(&slot, b"correct horse", &[1; 16]).unwrap().unwrap();
        assert_eq!(opened.as_bytes(), private.as_bytes());
        assert!(unseal(&slot, b"correct horsE", &[1; 16]).unwrap().is_none());
        assert!(unseal(&slot, b"correct horse", &[2; 16]).unwrap().is_none());
        let mut moved = slot.clone();
        moved.key_id = "x25519:abd".into();
        assert!(
            unseal(&moved, b"correct horse", &[1; 16])
                .unwrap()
                .is_none()
        );
        let mut flipped = slot.clone();
        flipped.wrapped[40] ^= 1;
        assert!(
            unseal(&flipped, b"correct horse", &[1; 16])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_cost_out_of_bounds_is_refused_before_any_work() {
        let private = StaticSecret::from([7u8; 32]);
        let mut slot = seal(b"pw", &private, "x25519:abc", &[1; 16], FAST).unwrap();
        for (at, value) in [(0usize, 1u32 << 30), (4, 1000), (8, 0), (0, 4)] {
            let mut bad = slot.clone();
            bad.wrapped[at..at + 4].copy_from_slice(&value.to_le_bytes());
            assert!(unseal(&bad, b"pw", &[1; 16]).is_err(), "{at}: {value}");
        }
        slot.wrapped.pop();
        assert!(unseal(&slot, b"pw", &[1; 16]).is_err());
    }

    #[test]
    fn calibration_stays_within_its_bounds() {
        let cost = Cost::calibrate();
        assert_eq!(cost.m_kib, Cost::MEMORY_KIB);
        assert!((Cost::MIN_T..=Cost::MAX_T).contains(&cost.t), "{cost:?}");
        assert_eq!(cost.checked(), Some(cost));
    }

    #[test]
    fn one_line_ending_is_dropped() {
        assert_eq!(trimmed("pw\n"), "pw");
        assert_eq!(trimmed("pw\r\n"), "pw");
        assert_eq!(trimmed("pw\n\n"), "pw\n");
        assert_eq!(trimmed(" pw "), " pw ");
    }
}
