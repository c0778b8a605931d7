//! One entry point per parser of bytes envfs does not control, for the fuzzers in `fuzz/`
//! and the property tests in `tests/parsers.rs`, which drive exactly these functions.
//!
//! Everything the backing store hands envfs is the attacker's (docs/SECURITY.md): the vault
//! config, file headers and their key slots, chunk bytes and lengths, encoded names,
//! long-name sidecars, symlink targets, xattr names and values. The host's own files (key
//! files, trust and path records) are parsed with the same care. Each entry point feeds its
//! input to the parser the mount uses and checks what must hold for any input: no panic, and
//! whatever parses re-encodes to the same bytes or refuses cleanly. Keys here are fixed
//! test keys: authentication must fail for input not made with them, never crash.

use crate::crypto::siv::domain;
use crate::crypto::{ChunkCipher, Secret32, SivCipher};
use crate::format::config::NameEncoding;
use crate::format::names as spelling;
use crate::format::{FileHeader, Geometry, KeySlot, VaultConfig};
use crate::keys::{KeyContext, KeyProvider};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fn siv() -> SivCipher {
    SivCipher::new(zeroize::Zeroizing::new([0x5a; 64]))
}

const SIDECAR_SEED: &str = "c2lkZWNhci1zZWVkLW5hbWUtdGhhdC1pcy1sb25n";
const XATTR_SEED_NAME: &[u8] = b"user.seed";
const RECOVERY_SEED: &str = "envfs-x25519-key-v1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// `envfs.conf`: parse; what parses must re-encode to the same authenticated bytes.
pub fn config(data: &[u8]) {
    if let Ok((config, body, _mac)) = VaultConfig::parse(data) {
        assert!(config.validate().is_ok());
        if config.version == config.written_version() {
            assert_eq!(
                config.encode_body(),
                body,
                "a parsed config re-encodes as read"
            );
        }
    }
}

/// A file header: parse; what parses must re-encode (with its padding) to the same bytes.
pub fn header(data: &[u8]) {
    if let Ok((header, mac)) = FileHeader::parse(data) {
        let body = header
            .encode_body(data.len())
            .expect("a parsed header fits its own size");
        assert_eq!(body, &data[..data.len() - 32]);
        assert_eq!(&mac[..], &data[data.len() - 32..]);
    }
}

/// An intermediate-key file (`envfs.keys/<id>`): parse; what parses re-encodes to the
/// authenticated bytes and MAC it was read from.
pub fn intermediate_key(data: &[u8]) {
    if let Ok((file, body, mac)) = crate::format::intermediate::IntermediateKeyFile::parse(data) {
        assert!(file.expires >= file.created);
        assert_eq!(file.encode_body().expect("a parsed file re-encodes"), body);
        assert_eq!(&mac[..], &data[data.len() - 32..]);
    }
}

/// One key slot, and the providers' unwrap of it: refused unless authentic, never a panic.
pub fn slot(data: &[u8]) {
    let mut r = crate::format::bytes::Reader::new(data);
    let Some(slot) = KeySlot::decode(&mut r) else {
        return;
    };
    let mut w = crate::format::bytes::Writer::default();
    slot.encode(&mut w);
    assert_eq!(w.buf, &data[..r.position()]);
    let local = crate::keys::local::LocalKeyProvider::from_kek(&Secret32::from_bytes([7; 32]));
    let recovery = crate::keys::x25519::parse_key_text(RECOVERY_SEED).expect("fixed test key");
    let recovery = crate::keys::x25519::X25519KeyProvider::from_secret(recovery);
    recovery.bind_to_vault(&Secret32::from_bytes([9; 32]));
    let forged = KeySlot {
        provider: local.kind(),
        key_id: local.key_id().to_string(),
        ..slot.clone()
    };
    // The only secret ever wrapped with these keys is the seeds' (`seeds("slot")`): a slot
    // that unwraps to anything else was forged without the key.
    let seed_secret = Secret32::from_bytes([8; 32]);
    for ctx in [
        KeyContext::vault_secret([1; 16]),
        KeyContext::file([1; 16], [2; 16]),
    ] {
        if let Ok(secret) = local.unwrap(&forged, &ctx) {
            assert_eq!(secret, seed_secret, "a forged local slot unwrapped");
        }
        let forged = KeySlot {
            provider: recovery.kind(),
            key_id: recovery.key_id().to_string(),
            ..slot.clone()
        };
        if let Ok(secret) = recovery.unwrap(&forged, &ctx) {
            assert_eq!(secret, seed_secret, "a forged x25519 slot unwrapped");
        }
    }
    // As a passphrase slot: the cost is bounded before any work; the seeds' seal is under
    // another passphrase, so nothing unseals. (Only small costs are run, to keep fuzzing
    // fast: the bounds themselves are what a large cost exercises.)
    let sealed = KeySlot {
        provider: crate::format::ProviderKind::Passphrase,
        ..slot.clone()
    };
    if let Ok(cost) = crate::keys::passphrase::cost_of(&sealed)
        && cost.m_kib <= 256
        && cost.t <= 2
    {
        let opened = crate::keys::passphrase::unseal(&sealed, b"fuzz", &[1; 16]);
        assert!(
            !matches!(opened, Ok(Some(_))),
            "a forged passphrase slot unsealed"
        );
    }
}

/// A sealed chunk of any length at any index: authentication fails, nothing is returned.
pub fn chunk(data: &[u8]) {
    let cipher = ChunkCipher::new(&Secret32::from_bytes([3; 32]), [4; 16]);
    let index = data.first().copied().unwrap_or(0) as u64;
    for last in [false, true] {
        let mut out = vec![1, 2, 3];
        assert!(cipher.open_into(index, last, data, &mut out).is_err());
        assert_eq!(out, [1, 2, 3], "a failed open leaves the output as it was");
        let mut copy = data.to_vec();
        assert!(cipher.open_in_place(index, last, &mut copy).is_err());
    }
}

/// Size arithmetic on any backing length (the first 8 bytes) in every geometry.
pub fn geometry(data: &[u8]) {
    let mut len = [0u8; 8];
    let n = data.len().min(8);
    len[..n].copy_from_slice(&data[..n]);
    let backing = u64::from_le_bytes(len);
    for (chunk, header) in [(1024, 256), (4096, 1024), (1 << 20, 65536)] {
        let g = Geometry::new(chunk, header);
        match g.plain_size(backing) {
            Ok(plain) => {
                // A header with no chunks is the one other spelling of an empty file.
                if !(plain == 0 && backing == g.header_size) {
                    assert_eq!(g.backing_size(plain), backing);
                }
                assert_eq!(g.plain_size_lossy(backing), plain);
            }
            Err(_) => assert!(g.plain_size_lossy(backing) <= backing),
        }
    }
}

/// A backing directory entry's name, in both alphabets: classified and, if it looks
/// encrypted, opened by the mount's rule. Whatever opens must be exactly what the name key
/// makes of its plaintext (AES-SIV is deterministic): no second spelling of a name opens.
pub fn name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names = siv();
    for enc in [NameEncoding::Base64Url, NameEncoding::Base32] {
        if let Some(bytes) = spelling::decode(enc, text) {
            assert!(spelling::encode(enc, &bytes).eq_ignore_ascii_case(text));
        }
        let spelling::BackingName::Encrypted(e) = spelling::classify(text) else {
            continue;
        };
        if !spelling::looks_encrypted(enc, e) {
            continue;
        }
        if let Some(plain) = crate::fs::names::open_name(&names, enc, e) {
            let sealed = names.encrypt(&[domain::NAME], plain.as_bytes());
            assert!(spelling::encode(enc, &sealed).eq_ignore_ascii_case(e));
        }
    }
}

/// A long-name sidecar's bytes, for the entries of two fixed names: only the exact encoded
/// name an entry was made from matches it.
pub fn sidecar(data: &[u8]) {
    for enc in [NameEncoding::Base64Url, NameEncoding::Base32] {
        let entry = spelling::long_name_entry(enc, SIDECAR_SEED);
        if let Some(name) = spelling::sidecar_name(enc, &entry, data) {
            assert_eq!(name.as_bytes(), data);
            assert_eq!(name, SIDECAR_SEED);
        }
        assert!(
            spelling::sidecar_name(enc, "x.envfs-ln", data).is_none(),
            "a sidecar matched an entry no hash can produce"
        );
    }
}

/// A stored symlink target: whatever opens is exactly what the key makes of its plaintext.
pub fn link_target(data: &[u8]) {
    let names = siv();
    for enc in [NameEncoding::Base64Url, NameEncoding::Base32] {
        if let Some(plain) =
            crate::fs::names::open_link_target(&names, enc, OsStr::from_bytes(data))
        {
            let sealed = names.encrypt(&[domain::SYMLINK], plain.as_bytes());
            let stored = std::str::from_utf8(data).expect("opened, so text");
            assert!(spelling::encode(enc, &sealed).eq_ignore_ascii_case(stored));
        }
    }
}

/// A stored `user.*` xattr name (after the prefix, up to the first NUL) and value (after
/// it): whatever opens is exactly what the key makes of its plaintext.
pub fn xattr(data: &[u8]) {
    let x = siv();
    let (name, value) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    for enc in [NameEncoding::Base64Url, NameEncoding::Base32] {
        if let Some(plain) = crate::fs::xattr_name_plaintext(&x, enc, name) {
            let sealed = x.encrypt(&[domain::XATTR_NAME], &plain);
            let stored = std::str::from_utf8(name).expect("opened, so text");
            assert!(spelling::encode(enc, &sealed).eq_ignore_ascii_case(stored));
        }
    }
    if let Some(plain) = crate::fs::xattr_value_plaintext(&x, XATTR_SEED_NAME, value) {
        assert_eq!(
            x.encrypt(&[domain::XATTR_VALUE, XATTR_SEED_NAME], &plain),
            value
        );
    }
}

/// A key file's text, of either kind.
pub fn key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::keys::local::parse_key_file(text);
    let _ = crate::keys::x25519::parse_key_text(text);
    let _ = crate::keys::x25519::X25519KeyProvider::is_key_text(text);
}

/// The host's trust record of a vault and its path record.
pub fn host_record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(record) = crate::vault::known::HostRecord::parse(text) {
        let again = crate::vault::known::HostRecord::parse(&record.encode("00"));
        assert_eq!(again.as_ref(), Ok(&record), "a parsed record round-trips");
    }
    let _ = crate::vault::pin::parse_path_record(text);
}

/// A parser's entry point: any bytes in, a panic only for a bug.
pub type EntryPoint = fn(&[u8]);

/// Every entry point, by name (the fuzz targets and the property tests list them from here).
pub const ENTRY_POINTS: &[(&str, EntryPoint)] = &[
    ("config", config),
    ("header", header),
    ("intermediate_key", intermediate_key),
    ("slot", slot),
    ("chunk", chunk),
    ("geometry", geometry),
    ("name", name),
    ("sidecar", sidecar),
    ("link_target", link_target),
    ("xattr", xattr),
    ("key_file", key_file),
    ("host_record", host_record),
];

/// Valid inputs for each entry point (made with the same fixed keys), so that fuzzers and
/// property tests start from bytes that pass the first checks and mutate from there.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::format::config::CONFIG_VERSION;
    let local = crate::keys::local::LocalKeyProvider::from_kek(&Secret32::from_bytes([7; 32]));
    let recovery = crate::keys::x25519::X25519KeyProvider::from_secret(
        crate::keys::x25519::parse_key_text(RECOVERY_SEED).expect("fixed test key"),
    );
    let secret = Secret32::from_bytes([8; 32]);
    let vault_ctx = KeyContext::vault_secret([1; 16]);
    let slots = vec![
        local.wrap(&secret, &vault_ctx).expect("local wrap"),
        recovery.wrap(&secret, &vault_ctx).expect("x25519 wrap"),
        crate::keys::passphrase::seal(
            b"seed",
            &crate::keys::x25519::parse_key_text(RECOVERY_SEED).expect("fixed test key"),
            recovery.key_id(),
            &[1; 16],
            crate::keys::passphrase::Cost {
                m_kib: 64,
                t: 1,
                p: 1,
            },
        )
        .expect("passphrase seal"),
    ];
    let names = siv();
    match target {
        "config" => {
            let config = VaultConfig {
                version: CONFIG_VERSION,
                generation: 5,
                key_hierarchy: Some(3600),
                intermediate_slots: true,
                vault_id: [1; 16],
                plaintext_names: false,
                name_encoding: NameEncoding::Base64Url,
                chunk_size: 4096,
                header_size: 1024,
                long_name_limit: 220,
                slots,
            };
            let mut v3 = config.encode_body();
            v3.extend_from_slice(&[0xcc; 32]);
            let mut v2 = VaultConfig {
                key_hierarchy: None,
                intermediate_slots: false,
                ..config
            }
            .encode_body();
            v2.extend_from_slice(&[0xcc; 32]);
            let mut v1 = v2[..40].to_vec();
            v1[9] = 1;
            v1.extend_from_slice(&v2[48..]);
            vec![v3, v2, v1]
        }
        "header" => {
            let header = FileHeader {
                file_id: [2; 16],
                commitment: [3; 32],
                slots,
            };
            [512usize, 1024]
                .iter()
                .map(|&size| {
                    let mut bytes = header.encode_body(size).expect("fits");
                    bytes.extend_from_slice(&[0xdd; 32]);
                    bytes
                })
                .collect()
        }
        "intermediate_key" => {
            let file = crate::format::intermediate::IntermediateKeyFile {
                vault_id: [1; 16],
                key_id: [6; 16],
                created: 1_700_000_000_000,
                expires: 1_700_086_400_000,
                commitment: [7; 32],
                slots: slots[..2].to_vec(),
            };
            let mut bytes = file.encode_body().expect("encodes");
            bytes.extend_from_slice(&[0xee; 32]);
            vec![bytes]
        }
        "slot" => slots
            .iter()
            .map(|s| {
                let mut w = crate::format::bytes::Writer::default();
                s.encode(&mut w);
                w.buf
            })
            .collect(),
        "chunk" => {
            let cipher = ChunkCipher::new(&Secret32::from_bytes([3; 32]), [4; 16]);
            let mut sealed = Vec::new();
            cipher.seal_into(0, true, b"a chunk of plaintext", &mut sealed);
            vec![sealed]
        }
        "geometry" => [0u64, 1, 1024, 1053, 5148, 13524, u64::MAX]
            .iter()
            .map(|n| n.to_le_bytes().to_vec())
            .collect(),
        "name" => ["report.docx", "a", "\u{e9}t\u{e9} 2026"]
            .iter()
            .map(|n| {
                let sealed = names.encrypt(&[domain::NAME], n.as_bytes());
                spelling::encode(NameEncoding::Base64Url, &sealed).into_bytes()
            })
            .collect(),
        "sidecar" => vec![SIDECAR_SEED.as_bytes().to_vec()],
        "link_target" => {
            let sealed = names.encrypt(&[domain::SYMLINK], b"../docs/target");
            vec![
                spelling::encode(NameEncoding::Base64Url, &sealed).into_bytes(),
                spelling::encode(NameEncoding::Base32, &sealed).into_bytes(),
            ]
        }
        "xattr" => {
            let sealed_name = names.encrypt(&[domain::XATTR_NAME], b"seed");
            let mut seed = spelling::encode(NameEncoding::Base64Url, &sealed_name).into_bytes();
            seed.push(0);
            seed.extend_from_slice(&names.encrypt(&[domain::XATTR_VALUE, XATTR_SEED_NAME], b"v"));
            vec![seed]
        }
        "key_file" => vec![
            b"# envfs local key\nenvfs-local-key-v1:QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\n"
                .to_vec(),
            format!("# recovery\n{RECOVERY_SEED}\n").into_bytes(),
        ],
        "host_record" => vec![
            crate::vault::known::HostRecord {
                kms_key: Some("arn:aws:kms:eu-west-1:111122223333:key/1".into()),
                fingerprint: Some(crate::crypto::Fingerprint([4; 16])),
                generation: Some(9),
                config: Some([5; 16]),
                highest: Some(11),
            }
            .encode("00")
            .into_bytes(),
            b"# envfs: the vault this host opened at /x\nvault 00112233\n".to_vec(),
        ],
        _ => Vec::new(),
    }
}
