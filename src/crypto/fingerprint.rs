//! The vault fingerprint: a public name for one vault secret.
//!
//! A host must be able to tell the real vault secret from one an attacker put in a forged
//! config (docs/SECURITY.md). The fingerprint is an HKDF output of the secret and the vault
//! id, so it reveals nothing about the secret, yet no one can make a different secret with
//! the same fingerprint. Hosts remember it, operators write it down next to a recovery key,
//! and `--vault-fingerprint` checks it, like an SSH host key fingerprint.

use super::kdf::{derive32, label};
use super::secret::Secret32;

/// 128 bits of HKDF-SHA256(vault secret, vault id, "envfs/v1/vault-fingerprint").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    pub fn of(secret: &Secret32, vault_id: &[u8; 16]) -> Fingerprint {
        let full = derive32(secret, vault_id, label::VAULT_FINGERPRINT);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full.expose()[..16]);
        Fingerprint(out)
    }

    /// 32 hex digits; upper case, spaces, colons and dashes are accepted and ignored, so
    /// a fingerprint copied from any display parses.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let digits: String = text
            .chars()
            .filter(|c| !matches!(c, ' ' | ':' | '-'))
            .collect();
        if digits.len() != 32 {
            return None;
        }
        let bytes = hex::decode(digits.to_ascii_lowercase()).ok()?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fingerprint::parse(s)
            .ok_or_else(|| format!("{s:?} is not a vault fingerprint (32 hex digits)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_secret_and_vault_and_round_trips() {
        let a = Fingerprint::of(&Secret32::from_bytes([1; 32]), &[2; 16]);
        assert_ne!(a, Fingerprint::of(&Secret32::from_bytes([3; 32]), &[2; 16]));
        assert_ne!(a, Fingerprint::of(&Secret32::from_bytes([1; 32]), &[4; 16]));
        assert_eq!(Fingerprint::parse(&a.to_string()), Some(a));
        let spaced: String = a.to_string().to_uppercase().chars().enumerate().fold(
            String::new(),
            |mut s, (i, c)| {
                if i > 0 && i % 4 == 0 {
                    s.push(':');
                }
                s.push(c);
                s
            },
        );
        assert_eq!(Fingerprint::parse(&spaced), Some(a));
        for bad in ["", "00", &"0".repeat(33), &"g".repeat(32)] {
            assert_eq!(Fingerprint::parse(bad), None, "{bad}");
        }
    }
}
