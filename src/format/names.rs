//! How encrypted names are spelled in the backing directory (no cryptography here).
//!
//! An encrypted name is the AES-SIV output (16-byte synthetic IV + ciphertext) encoded with
//! the vault's alphabet. Neither alphabet contains `.`, so every backing name with a dot is
//! one of envfs' own: the config file, a long-name entry or its sidecar. When the encoded name
//! is longer than the vault's long-name limit, the entry is stored under
//! `<encoded SHA-256 of the encoded name>.envfs-ln`, and a sidecar file
//! `<same>.envfs-ln.name` in the same directory holds the full encoded name.

use super::config::NameEncoding;
use sha2::{Digest, Sha256};

pub const LONG_NAME_SUFFIX: &str = ".envfs-ln";
pub const SIDECAR_SUFFIX: &str = ".envfs-ln.name";
/// Prefix of envfs' own temporary files; reserved in plaintext-names vaults too.
pub const RESERVED_PREFIX: &str = ".envfs-";
/// Bytes the synthetic IV adds to every encrypted name, symlink target and xattr.
pub const SIV_OVERHEAD: usize = 16;

pub fn encode(encoding: NameEncoding, bytes: &[u8]) -> String {
    match encoding {
        NameEncoding::Base64Url => data_encoding::BASE64URL_NOPAD.encode(bytes),
        NameEncoding::Base32 => data_encoding::BASE32_NOPAD.encode(bytes),
    }
}

/// Decode an encoded name. Base32 is matched case-insensitively because the backends it
/// exists for may change the case of names.
pub fn decode(encoding: NameEncoding, text: &str) -> Option<Vec<u8>> {
    match encoding {
        NameEncoding::Base64Url => data_encoding::BASE64URL_NOPAD.decode(text.as_bytes()).ok(),
        NameEncoding::Base32 => data_encoding::BASE32_NOPAD
            .decode(text.to_ascii_uppercase().as_bytes())
            .ok(),
    }
}

/// Length of the bytes behind an encoded string of `encoded_len` characters. Lets `stat`
/// report a symlink's plaintext target length without reading the link.
pub fn decoded_len(encoding: NameEncoding, encoded_len: usize) -> usize {
    match encoding {
        NameEncoding::Base64Url => encoded_len * 6 / 8,
        NameEncoding::Base32 => encoded_len * 5 / 8,
    }
}

/// The backing name under which an over-long encoded name is stored.
pub fn long_name_entry(encoding: NameEncoding, encoded: &str) -> String {
    let digest = Sha256::digest(encoded.as_bytes());
    format!("{}{LONG_NAME_SUFFIX}", encode(encoding, &digest))
}

/// The sidecar that holds the full name of long-name entry `entry`.
pub fn sidecar_for(entry: &str) -> String {
    format!("{entry}.name")
}

/// What a backing directory entry is, judged by its name alone.
#[derive(Debug, PartialEq, Eq)]
pub enum BackingName<'a> {
    /// An encrypted name stored as is.
    Encrypted(&'a str),
    /// A long-name entry; the full name is in its sidecar.
    Long(&'a str),
    /// A long-name sidecar (not shown in listings).
    Sidecar,
    /// Anything else: not written by envfs.
    Foreign,
}

/// Whether a dot-less backing name has the shape of an encrypted name: only characters of
/// the vault's alphabet, and long enough to hold the synthetic IV and one byte. Anything
/// else was not written by envfs (a foreign file), rather than a damaged name. The mount and
/// fsck both judge names by this.
pub fn looks_encrypted(encoding: NameEncoding, name: &str) -> bool {
    let (alphabet_ok, min_len): (fn(u8) -> bool, usize) = match encoding {
        NameEncoding::Base64Url => (
            |c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_',
            ((SIV_OVERHEAD + 1) * 4).div_ceil(3),
        ),
        NameEncoding::Base32 => (
            |c| c.is_ascii_alphabetic() || (b'2'..=b'7').contains(&c),
            ((SIV_OVERHEAD + 1) * 8).div_ceil(5),
        ),
    };
    name.len() >= min_len && name.bytes().all(alphabet_ok)
}

/// The full encoded name a long-name sidecar holds, if its bytes belong to long-name entry
/// `entry` (they must hash to it, so sidecars cannot be swapped between entries). The one
/// rule for sidecars: the mount's listings and lookups and fsck all call it.
pub fn sidecar_name(encoding: NameEncoding, entry: &str, bytes: &[u8]) -> Option<String> {
    let encoded = std::str::from_utf8(bytes).ok()?;
    let expected = long_name_entry(encoding, encoded);
    let matches = match encoding {
        NameEncoding::Base64Url => expected == entry,
        NameEncoding::Base32 => expected.eq_ignore_ascii_case(entry),
    };
    matches.then(|| encoded.to_string())
}

pub fn classify(name: &str) -> BackingName<'_> {
    // Suffixes match in any case: base32 vaults live on backends that may change case.
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(SIDECAR_SUFFIX) {
        BackingName::Sidecar
    } else if lower.ends_with(LONG_NAME_SUFFIX) {
        BackingName::Long(name)
    } else if !name.contains('.') && !name.is_empty() {
        BackingName::Encrypted(name)
    } else {
        BackingName::Foreign
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip_and_never_contain_dots_or_slashes() {
        for enc in [NameEncoding::Base64Url, NameEncoding::Base32] {
            for len in 16..300 {
                let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
                let s = encode(enc, &bytes);
                assert!(!s.contains('.') && !s.contains('/'));
                assert_eq!(decode(enc, &s).unwrap(), bytes);
                assert_eq!(decoded_len(enc, s.len()), len);
            }
        }
        let upper = encode(NameEncoding::Base32, b"0123456789abcdef");
        assert!(decode(NameEncoding::Base32, &upper.to_lowercase()).is_some());
    }

    #[test]
    fn long_name_entries_are_classified() {
        let entry = long_name_entry(NameEncoding::Base64Url, "x");
        assert_eq!(classify(&entry), BackingName::Long(&entry));
        assert_eq!(classify(&sidecar_for(&entry)), BackingName::Sidecar);
        assert_eq!(classify("envfs.conf"), BackingName::Foreign);
        assert_eq!(classify("AbC-_"), BackingName::Encrypted("AbC-_"));
        assert!(sidecar_for(&entry).len() < 64);
    }
}
