//! Golden vectors: small vaults written once by `examples/make_golden.rs` and frozen in
//! `tests/golden/v1/` (format version 1: backing directory `vault/`, key file `golden.key`)
//! and `tests/golden/v2/` (format version 2: the same files, plus `recovery.key`, an X25519
//! key added as the second key, so the config is at generation 2).
//!
//! These tests must keep passing forever. A change to the on-disk format must either keep
//! reading this vault byte for byte, or (for a new format version) refuse it with a clear
//! message — never silently return different bytes. Never regenerate `tests/golden/v1/`; a new
//! format version gets its own `tests/golden/vN/` next to it.

mod support;

use envfs::Error;
use envfs::crypto::Secret32;
use envfs::format::config::{CONFIG_FILE_NAME, CONFIG_MAGIC};
use envfs::format::{FileHeader, NameEncoding, ProviderKind, VaultConfig};
use envfs::fs::{FileKind, Fs};
use envfs::keys::KeyProvider;
use envfs::keys::local::LocalKeyProvider;
use envfs::vault::Vault;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::copy_tree;
use support::golden_table::{DIR, LINK, LINK_TARGET, content, golden_plain_files, long_name};

const VAULT_ID: &str = "6f3dc55c835b73de43e7175ea0909acd";
const KEY_ID: &str = "local:7d2f316c5d0dda9a";
const CONFIG_LEN: u64 = 158;

/// A golden file: its plaintext (tests/support/golden_table.rs) and how it is frozen on
/// the backing store.
struct GoldenFile {
    path: String,
    seed: u64,
    len: usize,
    /// The frozen backing path, relative to the backing root.
    backing: &'static str,
    /// The frozen backing size (header 1024 + plaintext + 28 per chunk).
    backing_len: u64,
}

/// The frozen backing path and size of the golden file `path` (tests/golden/v1/).
fn frozen_backing(path: &str) -> (&'static str, u64) {
    match path {
        "empty.txt" => ("jpUkM6edqzq7xtGCu4LDCmypsg_-5AVx3w", 0),
        "one-byte.bin" => ("TQD-okHYv0z99mC2iSHJrFvytId8DyXe5DWp8A", 1053),
        "one-chunk.bin" => ("-pV86Kb7C6w1Owx_yQom5t_WiVDSyOv4asKCvCc", 5148),
        "several-chunks.bin" => ("FTJeSbTgch1OGREBTaA_-cp2mmqtwwpOinekuloRFAg1VQ", 13524),
        "docs/nested.txt" => (
            "PwcNynwh09H-SCQyxl4g_1YpeuY/_R175s3Mddyjna_qdS2TCKky7BogBxZhnJA",
            6080,
        ),
        p if p == long_name() => ("vOWw_5XPEmAZdhRT7f4fBlfxSOFKc6Rs7FAyxT1DXdk.envfs-ln", 1352),
        other => panic!("no frozen backing entry for golden file {other:?}"),
    }
}

fn golden_files() -> Vec<GoldenFile> {
    golden_plain_files()
        .into_iter()
        .map(|f| {
            let (backing, backing_len) = frozen_backing(&f.path);
            GoldenFile {
                path: f.path,
                seed: f.seed,
                len: f.len,
                backing,
                backing_len,
            }
        })
        .collect()
}

const LINK_BACKING: &str = "c6jG0zCnu-4ose97dU5U3Roitd4";
const DIR_BACKING: &str = "PwcNynwh09H-SCQyxl4g_1YpeuY";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

fn golden_root() -> PathBuf {
    golden_dir().join("vault")
}

fn golden_key() -> Arc<dyn KeyProvider> {
    Arc::new(LocalKeyProvider::load(&golden_dir().join("golden.key")).expect("fixture key"))
}

fn open_golden(root: &Path) -> Fs {
    Fs::new(Arc::new(
        Vault::open(root, vec![golden_key()]).expect("golden vault opens"),
    ))
}

/// Every byte, name and link target under `root`, to prove reading changes nothing.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, target.into_os_string().into_encoded_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn read_all(fs: &Fs, path: &Path, step: usize) -> Vec<u8> {
    let handle = fs.open(path, libc::O_RDONLY).unwrap();
    let mut out = Vec::new();
    loop {
        let data = fs.read(&handle, out.len() as u64, step).unwrap();
        if data.is_empty() {
            return out;
        }
        out.extend_from_slice(&data);
    }
}

/// Every golden plaintext, and the symlink target, through `fs` (opened with `described`).
fn assert_every_golden_file_reads(fs: &Fs, described: &str) {
    for f in golden_files() {
        assert!(
            read_all(fs, Path::new(&f.path), 4096) == content(f.seed, f.len),
            "{described}: {}",
            f.path
        );
    }
    assert_eq!(fs.readlink(Path::new(LINK)).unwrap(), LINK_TARGET);
}

#[test]
fn every_plaintext_reads_back_byte_for_byte() {
    let root = golden_root();
    let before = snapshot(&root);
    let fs = open_golden(&root);
    for f in golden_files() {
        let path = Path::new(&f.path);
        let want = content(f.seed, f.len);
        let attr = fs.getattr(path).unwrap();
        assert_eq!(attr.kind, FileKind::File, "{}", f.path);
        assert_eq!(attr.size, f.len as u64, "size of {}", f.path);
        for step in [1 << 20, 4096, 1000, 777, 1] {
            if step == 1 && f.len > 300 {
                continue;
            }
            assert!(
                read_all(&fs, path, step) == want,
                "{} read in steps of {step} differs from the golden plaintext",
                f.path
            );
        }
        // Reads that start and end inside chunks, across chunk boundaries, and past EOF.
        let handle = fs.open(path, libc::O_RDONLY).unwrap();
        for (offset, len) in [(0, 10), (4090, 12), (4096, 4096), (8000, 5000), (12380, 50)] {
            let start = offset.min(f.len);
            let end = (offset + len).min(f.len);
            assert_eq!(
                fs.read(&handle, offset as u64, len).unwrap(),
                want[start..end],
                "{} at {offset}+{len}",
                f.path
            );
        }
        assert!(
            fs.read(&handle, f.len as u64 + 1, 10).unwrap().is_empty(),
            "{} past EOF",
            f.path
        );
    }
    drop(fs);
    assert!(
        before == snapshot(&root),
        "reading the golden vault modified its backing directory"
    );
}

#[test]
fn backing_layout_is_frozen() {
    let root = golden_root();
    let fs = open_golden(&root);
    for f in golden_files() {
        let backing = fs.backing_path(Path::new(&f.path)).unwrap();
        assert_eq!(backing, root.join(f.backing), "backing name of {}", f.path);
        assert_eq!(
            std::fs::metadata(&backing).unwrap().len(),
            f.backing_len,
            "backing size of {}",
            f.path
        );
        assert_eq!(
            fs.vault().geometry.backing_size(f.len as u64),
            f.backing_len,
            "size arithmetic for {}",
            f.path
        );
    }
    assert_eq!(
        fs.backing_path(Path::new(DIR)).unwrap(),
        root.join(DIR_BACKING)
    );
    assert_eq!(
        fs.backing_path(Path::new(LINK)).unwrap(),
        root.join(LINK_BACKING)
    );
    assert_eq!(
        std::fs::metadata(root.join(CONFIG_FILE_NAME))
            .unwrap()
            .len(),
        CONFIG_LEN
    );
}

#[test]
fn directory_listings_match() {
    let fs = open_golden(&golden_root());
    let list = |dir: &str| -> BTreeMap<OsString, FileKind> {
        let entries = fs.readdir(Path::new(dir)).unwrap();
        let map: BTreeMap<_, _> = entries.iter().map(|e| (e.name.clone(), e.kind)).collect();
        assert_eq!(map.len(), entries.len(), "duplicate names in {dir:?}");
        map
    };
    let mut want_root: BTreeMap<OsString, FileKind> = golden_files()
        .iter()
        .filter(|f| !f.path.contains('/'))
        .map(|f| (OsString::from(&f.path), FileKind::File))
        .collect();
    want_root.insert(DIR.into(), FileKind::Dir);
    want_root.insert(LINK.into(), FileKind::Symlink);
    // envfs.conf and the long name's sidecar are not shown.
    assert_eq!(list(""), want_root);
    assert_eq!(
        list(DIR),
        BTreeMap::from([(OsString::from("nested.txt"), FileKind::File)])
    );

    // readdir_plus reports plaintext sizes without opening anything.
    let plus: BTreeMap<_, _> = fs
        .readdir_plus(Path::new(""))
        .unwrap()
        .into_iter()
        .collect();
    for f in golden_files().iter().filter(|f| !f.path.contains('/')) {
        assert_eq!(
            plus[&OsString::from(&f.path)].size,
            f.len as u64,
            "{}",
            f.path
        );
    }
    assert_eq!(plus[&OsString::from(LINK)].size, LINK_TARGET.len() as u64);
    assert_eq!(fs.getattr(Path::new(DIR)).unwrap().kind, FileKind::Dir);
}

#[test]
fn symlink_target_decrypts() {
    let fs = open_golden(&golden_root());
    assert_eq!(fs.readlink(Path::new(LINK)).unwrap(), LINK_TARGET);
    let attr = fs.getattr(Path::new(LINK)).unwrap();
    assert_eq!(attr.kind, FileKind::Symlink);
    assert_eq!(attr.size, LINK_TARGET.len() as u64);
    // The stored target is encrypted, not the plaintext.
    let stored = std::fs::read_link(golden_root().join(LINK_BACKING)).unwrap();
    assert_ne!(stored, Path::new(LINK_TARGET));
    assert!(!stored.to_string_lossy().contains("nested"));
}

#[test]
fn long_name_uses_hash_entry_and_sidecar() {
    let root = golden_root();
    let fs = open_golden(&root);
    let name = long_name();
    assert_eq!(name.len(), 200);
    let backing = fs.backing_path(Path::new(&name)).unwrap();
    let entry = backing.file_name().unwrap().to_str().unwrap();
    assert!(entry.ends_with(".envfs-ln"), "{entry}");
    let sidecar = std::fs::read_to_string(root.join(format!("{entry}.name"))).unwrap();
    // The sidecar holds the full encrypted name: SIV (16 + 200 bytes) in base64url.
    assert_eq!(sidecar.len(), (16 + 200usize).div_ceil(3) * 4);
    assert!(!sidecar.contains("long-name"));
    let names: Vec<OsString> = fs
        .readdir(Path::new(""))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&OsString::from(&name)));
    assert_eq!(read_all(&fs, Path::new(&name), 4096), content(4, 300));
}

#[test]
fn frozen_config_bytes_parse() {
    let bytes = std::fs::read(golden_root().join(CONFIG_FILE_NAME)).unwrap();
    assert_eq!(bytes.len() as u64, CONFIG_LEN);
    assert_eq!(&bytes[..8], CONFIG_MAGIC);
    assert_eq!(&bytes[8..10], &[0, 1], "format version 1");
    assert_eq!(&bytes[10..12], &[0, 0], "no flags");
    assert_eq!(hex::encode(&bytes[12..28]), VAULT_ID);
    let (config, body, _mac) = VaultConfig::parse(&bytes).unwrap();
    assert_eq!(body.len(), bytes.len() - 32);
    assert_eq!(config.vault_id_hex(), VAULT_ID);
    assert_eq!(config.chunk_size, 4096);
    assert_eq!(config.header_size, 1024);
    assert_eq!(config.long_name_limit, 220);
    assert!(!config.plaintext_names);
    assert_eq!(config.name_encoding, NameEncoding::Base64Url);
    assert_eq!(config.slots.len(), 1);
    assert_eq!(config.slots[0].provider, ProviderKind::Local);
    assert_eq!(config.slots[0].key_id, KEY_ID);
    assert_eq!(config.slots[0].wrapped.len(), 60);
    assert_eq!(golden_key().key_id(), KEY_ID);

    let vault = Vault::open(&golden_root(), vec![golden_key()]).unwrap();
    assert_eq!(hex::encode(vault.vault_id()), VAULT_ID);
    assert_eq!(vault.config, config);
}

#[test]
fn frozen_file_headers_parse_and_authenticate() {
    let root = golden_root();
    let fs = open_golden(&root);
    let mut file_ids = Vec::new();
    for f in golden_files().iter().filter(|f| f.len > 0) {
        let backing = root.join(f.backing);
        let bytes = std::fs::read(&backing).unwrap();
        let header = &bytes[..1024];
        assert_eq!(&header[..4], b"ENVF", "{}", f.path);
        assert_eq!(&header[4..6], &[0, 1], "header version 1 in {}", f.path);
        let (parsed, _) = FileHeader::parse(header).unwrap();
        assert_eq!(parsed.slots.len(), 1);
        assert_eq!(parsed.slots[0].provider, ProviderKind::Local);
        assert_eq!(parsed.slots[0].key_id, KEY_ID);
        fs.vault().open_file(header, &backing).unwrap();
        file_ids.push(parsed.file_id);
    }
    file_ids.sort();
    file_ids.dedup();
    assert_eq!(file_ids.len(), 5, "every file has its own id");
}

#[test]
fn bumped_config_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vault");
    copy_tree(&golden_root(), &root);
    // The untouched copy opens (so the refusal below is the version's doing).
    Vault::open(&root, vec![golden_key()]).unwrap();

    let conf = root.join(CONFIG_FILE_NAME);
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[8..10].copy_from_slice(&4u16.to_be_bytes());
    std::fs::write(&conf, &bytes).unwrap();
    match Vault::open(&root, vec![golden_key()]) {
        Err(Error::UnsupportedVersion(msg)) => {
            assert!(msg.contains("version 4"), "{msg}");
            assert!(msg.contains("upgrade"), "{msg}");
        }
        Err(other) => panic!("expected UnsupportedVersion, got {other:?}"),
        Ok(_) => panic!("a version 4 vault must not open"),
    }
}

#[test]
fn golden_vault_refuses_another_key() {
    let other = Arc::new(LocalKeyProvider::from_kek(&Secret32::from_bytes(
        [0x42; 32],
    )));
    match Vault::open(&golden_root(), vec![other]) {
        Err(Error::WrongKey(msg)) => assert!(msg.contains(KEY_ID), "{msg}"),
        Err(other) => panic!("expected WrongKey, got {other:?}"),
        Ok(_) => panic!("the golden vault opened with a wrong key"),
    }
}

// ---- format version 2 (tests/golden/v2/): config generation, recovery slot with proof ----

const V2_VAULT_ID: &str = "524469105b85dcadde875f290aff8b20";
const V2_FINGERPRINT: &str = "26c71b172f4b65d8ddd5c3631677a73e";

fn golden_v2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2")
}

fn v2_keys() -> [Arc<dyn KeyProvider>; 2] {
    let dir = golden_v2_dir();
    [
        Arc::new(LocalKeyProvider::load(&dir.join("golden.key")).expect("fixture key")),
        Arc::new(
            envfs::keys::x25519::X25519KeyProvider::load(&dir.join("recovery.key"))
                .expect("fixture recovery key"),
        ),
    ]
}

#[test]
fn v2_config_bytes_are_frozen() {
    let bytes = std::fs::read(golden_v2_dir().join("vault").join(CONFIG_FILE_NAME)).unwrap();
    assert_eq!(&bytes[..8], CONFIG_MAGIC);
    assert_eq!(&bytes[8..10], &[0, 2], "format version 2");
    assert_eq!(hex::encode(&bytes[12..28]), V2_VAULT_ID);
    assert_eq!(
        &bytes[40..48],
        &2u64.to_be_bytes(),
        "generation 2: init, then key add"
    );
    let (config, _, _) = VaultConfig::parse(&bytes).unwrap();
    assert_eq!((config.version, config.generation), (2, 2));
    assert_eq!(config.slots.len(), 2);
    assert_eq!(config.slots[0].provider, ProviderKind::Local);
    assert_eq!(config.slots[1].provider, ProviderKind::X25519);
    // The recovery slot: ephemeral key, nonce, secret, tag, and the holder's 32-byte proof.
    assert_eq!(config.slots[1].wrapped.len(), 32 + 12 + 32 + 16 + 32);
}

#[test]
fn v2_opens_with_either_key_to_the_same_vault_and_reads_every_file() {
    let root = golden_v2_dir().join("vault");
    let before = snapshot(&root);
    for key in v2_keys() {
        let described = key.describe();
        let vault = Vault::open(&root, vec![key]).expect("golden v2 opens");
        assert_eq!(
            vault.fingerprint().to_string(),
            V2_FINGERPRINT,
            "{described}"
        );
        assert!(
            vault.secret_vouched(),
            "{described}: the slot that opened it proves the secret"
        );
        let fs = Fs::new(Arc::new(vault));
        assert_every_golden_file_reads(&fs, &described);
    }
    assert!(
        before == snapshot(&root),
        "reading modified the golden vault"
    );
}

#[test]
fn v1_still_opens_as_generation_0_and_its_first_change_writes_v2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vault");
    copy_tree(&golden_root(), &root);
    let mut vault = Vault::open(&root, vec![golden_key()]).unwrap();
    assert_eq!((vault.config.version, vault.config.generation), (1, 0));
    let fingerprint = vault.fingerprint();
    let recovery =
        envfs::keys::x25519::X25519KeyProvider::create(&dir.path().join("r.key")).unwrap();
    vault.add_key(&recovery).unwrap();
    drop(vault);
    let bytes = std::fs::read(root.join(CONFIG_FILE_NAME)).unwrap();
    assert_eq!(&bytes[8..10], &[0, 2]);
    let vault = Vault::open(&root, vec![golden_key()]).unwrap();
    assert_eq!((vault.config.version, vault.config.generation), (2, 1));
    assert_eq!(
        vault.fingerprint(),
        fingerprint,
        "the vault secret never changes"
    );
    let fs = Fs::new(Arc::new(vault));
    assert_eq!(
        read_all(&fs, Path::new("one-byte.bin"), 4096),
        content(1, 1)
    );
}

// ---- passphrase slots (provider 4, docs/FORMAT.md §5.5) ----------------------------------

/// A passphrase slot as envfs writes it (made once with the values below; Argon2id at
/// m = 64 KiB, t = 2, p = 1 to keep the test fast): it must go on decoding and unsealing to
/// the same private key, whose X25519 key id it names.
#[test]
fn a_frozen_passphrase_slot_unseals_to_its_x25519_key() {
    use envfs::format::KeySlot;
    use envfs::format::bytes::Reader;
    use envfs::keys::KeyProvider;
    const SLOT: &str = "04327832353531393a457978454b2d41512d39562d636d417a4b4b703235785f4d77\
        564136726947544a39464e6e4a6d543948490058400000000200000001000000f80ccd573bf792a75e39\
        3074f5fe2b26186d7836cf0a3e909d615944545dcd1f59342452b7c38cda10b926f232cc32ff559f81ba\
        592971355297ab78b677d6e9d1adc8c44d4599c3c67e7bc9";
    const KEY_ID: &str = "x25519:EyxEK-AQ-9V-cmAzKKp25x_MwVA6riGTJ9FNnJmT9HI";
    let bytes = hex::decode(SLOT).unwrap();
    let slot = KeySlot::decode(&mut Reader::new(&bytes)).unwrap();
    assert_eq!(slot.provider.code(), 4);
    assert_eq!(slot.provider.name(), "passphrase");
    assert_eq!(slot.key_id, KEY_ID);
    assert_eq!(slot.wrapped.len(), 88);
    // The cost fields: m = 64 KiB, t = 2, p = 1, little-endian.
    assert_eq!(&slot.wrapped[..12], &[64, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
    let vault_id = [0x11; 16];
    let private = envfs::keys::passphrase::unseal(&slot, b"envfs golden passphrase", &vault_id)
        .unwrap()
        .expect("the passphrase unseals it");
    assert_eq!(private.as_bytes(), &[0x42; 32]);
    let key = envfs::keys::x25519::X25519KeyProvider::from_secret(private);
    assert_eq!(key.key_id(), KEY_ID);
    assert!(
        envfs::keys::passphrase::unseal(&slot, b"envfs golden passphrasE", &vault_id)
            .unwrap()
            .is_none()
    );
}

// Format version 3: the key hierarchy (FORMAT.md §6.2), written by
// `cargo run --example make_golden -- --hierarchy`: a local key, a stand-in for a KMS key
// (tests/support/golden_kms.rs) that wraps the one intermediate key, and the same files,
// each header with a local slot and an intermediate-key slot.

const V3_VAULT_ID: &str = "44cd255dc8bac06d046b2c11330c6820";
const V3_FINGERPRINT: &str = "c0d89c55a359b34e3fcd263d9df30a00";
const V3_INTERMEDIATE: &str = "03226beb863e4d764495308253b64689";

fn golden_v3_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v3")
}

fn v3_local() -> Arc<dyn KeyProvider> {
    Arc::new(LocalKeyProvider::load(&golden_v3_dir().join("golden.key")).expect("fixture key"))
}

fn v3_kms() -> Arc<dyn KeyProvider> {
    Arc::new(support::golden_kms::GoldenKms::load(
        &golden_v3_dir().join("golden-kms.key"),
    ))
}

#[test]
fn v3_config_and_intermediate_key_bytes_are_frozen() {
    let root = golden_v3_dir().join("vault");
    let bytes = std::fs::read(root.join(CONFIG_FILE_NAME)).unwrap();
    assert_eq!(&bytes[8..10], &[0, 3], "format version 3");
    assert_eq!(hex::encode(&bytes[12..28]), V3_VAULT_ID);
    assert_eq!(&bytes[48..52], &86_400u32.to_be_bytes(), "lifetime");
    let (config, _, _) = VaultConfig::parse(&bytes).unwrap();
    assert_eq!((config.version, config.key_hierarchy), (3, Some(86_400)));
    assert_eq!(
        config.slots.iter().map(|s| s.provider).collect::<Vec<_>>(),
        [ProviderKind::Local, ProviderKind::AwsKms]
    );
    let ik = std::fs::read(root.join("envfs.keys").join(V3_INTERMEDIATE)).unwrap();
    let (file, _, _) = envfs::format::intermediate::IntermediateKeyFile::parse(&ik).unwrap();
    assert_eq!(hex::encode(file.key_id), V3_INTERMEDIATE);
    assert_eq!(hex::encode(file.vault_id), V3_VAULT_ID);
    assert_eq!(file.expires - file.created, 86_400_000, "milliseconds");
    assert_eq!(file.slots.len(), 1);
    assert_eq!(file.slots[0].key_id, support::golden_kms::GOLDEN_KMS_ARN);
    // Every non-empty file: its local slot, then the intermediate key's (config order).
    for f in golden_files() {
        let fs = Fs::new(Arc::new(Vault::open(&root, vec![v3_local()]).unwrap()));
        let info = fs.entry_info(Path::new(&f.path)).unwrap();
        let Some(header) = info.header else {
            assert_eq!(f.len, 0, "{}", f.path);
            continue;
        };
        let kinds: Vec<_> = header
            .slots
            .iter()
            .map(|s| (s.provider, s.key_id.clone()))
            .collect();
        assert_eq!(kinds.len(), 2, "{}", f.path);
        assert_eq!(kinds[0].0, ProviderKind::Local);
        assert_eq!(
            kinds[1],
            (ProviderKind::Intermediate, format!("ik:{V3_INTERMEDIATE}")),
            "{}",
            f.path
        );
    }
}

/// Through the intermediate key alone (the KMS stand-in opens the config and the
/// intermediate key; no local slot is used) and through the local key alone: same vault,
/// same bytes.
#[test]
fn v3_reads_every_file_through_the_intermediate_key_and_through_the_local_key() {
    let root = golden_v3_dir().join("vault");
    let before = snapshot(&root);
    for key in [v3_kms(), v3_local()] {
        let described = key.describe();
        let vault = Vault::open(&root, vec![key]).expect("golden v3 opens");
        assert_eq!(
            vault.fingerprint().to_string(),
            V3_FINGERPRINT,
            "{described}"
        );
        let fs = Fs::new(Arc::new(vault));
        assert_every_golden_file_reads(&fs, &described);
        let report = fs.vault().hierarchy_report();
        if described.contains("golden-vector") {
            let report = report.expect("the hierarchy opened the files");
            assert!(report.opened >= 4, "{report:?}");
            assert_eq!(report.made, 0, "reading makes no key");
        }
    }
    assert!(
        before == snapshot(&root),
        "reading modified the golden vault"
    );
}

/// A v3 vault turned off and rewrapped becomes a version 2 vault whose headers carry the
/// KMS key's own slots (the upgrade path back).
#[test]
fn v3_turned_off_and_rewrapped_is_version_2_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vault");
    copy_tree(&golden_v3_dir().join("vault"), &root);
    let mut vault = Vault::open(&root, vec![v3_local(), v3_kms()]).unwrap();
    vault.set_key_hierarchy(None).unwrap();
    // Off, with headers still under intermediate keys: version 3 (lifetime 0), so an envfs
    // without the hierarchy still refuses the vault rather than fail file by file.
    let bytes = std::fs::read(root.join(CONFIG_FILE_NAME)).unwrap();
    assert_eq!((&bytes[8..10], &bytes[48..52]), (&[0, 3][..], &[0; 4][..]));
    let report = envfs::fs::rewrap::rewrap(&vault, 2, &|_, _| {}).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.rewrapped, 5, "{report:?}");
    assert_eq!(report.intermediate_in_use, Some(0), "{report:?}");
    assert!(vault.headers_left_intermediate_keys().unwrap());
    let bytes = std::fs::read(root.join(CONFIG_FILE_NAME)).unwrap();
    assert_eq!(&bytes[8..10], &[0, 2]);
    let fs = Fs::new(Arc::new(Vault::open(&root, vec![v3_kms()]).unwrap()));
    for f in golden_files() {
        if let Some(header) = fs.entry_info(Path::new(&f.path)).unwrap().header {
            assert!(
                header
                    .slots
                    .iter()
                    .all(|s| s.provider != ProviderKind::Intermediate),
                "{}",
                f.path
            );
        }
        assert!(read_all(&fs, Path::new(&f.path), 4096) == content(f.seed, f.len));
    }
    assert!(
        fs.vault().hierarchy_report().is_none(),
        "no intermediate key was needed"
    );
}
