//! A vault: the backing directory's config, opened with the keys this host holds.
//!
//! Opening verifies the whole config: a slot one of our providers recognises must unwrap the
//! vault secret, and the config MAC (keyed from that secret) must match, so no field can be
//! edited on the backing store. From the vault secret come the name and xattr keys. The vault
//! also makes and opens file headers, because that needs the providers and the vault id.

use crate::backing::BackingRoot;
use crate::crypto::kdf::{derive32, derive64, label};
use crate::crypto::{FileKeys, Fingerprint, Secret32, SivCipher, file_keys::hmac32, random};
use crate::error::{Error, IntegrityKind, Result};
use crate::format::config::{CONFIG_FILE_NAME, ConfigParseError};
use crate::format::header::HeaderParseError;
use crate::format::{FileHeader, Geometry, KeySlot, NameEncoding, ProviderKind, VaultConfig};
use crate::keys::cache::{CacheLimits, DekCache};
use crate::keys::kms::KmsKeyProvider;
use crate::keys::prefetch::{Prefetcher, Prepared};
use crate::keys::x25519::X25519KeyProvider;
use crate::keys::{KeyContext, KeyProvider};
use crate::vault::hierarchy::Hierarchy;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

pub mod hierarchy;
pub mod host_state;
pub mod keysource;
pub mod known;
pub mod pin;

/// Choices made once, at `envfs init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunk_size: u32,
    pub header_size: u32,
    pub long_name_limit: u16,
    pub plaintext_names: bool,
    pub name_encoding: NameEncoding,
    /// The new vault's id; random when `None`. (The CLI picks it first because the default
    /// key file is named after it.)
    pub vault_id: Option<[u8; 16]>,
}

impl Default for InitOptions {
    fn default() -> Self {
        use crate::format::config::*;
        InitOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            header_size: DEFAULT_HEADER_SIZE,
            long_name_limit: DEFAULT_LONG_NAME_LIMIT,
            plaintext_names: false,
            name_encoding: NameEncoding::Base64Url,
            vault_id: None,
        }
    }
}

/// What `Vault::add_key` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAdded {
    /// A new key of the vault.
    New,
    /// A key already in the vault got a slot that proves the vault secret (an upgrade).
    Proven,
}

pub struct Vault {
    root: PathBuf,
    pub config: VaultConfig,
    pub geometry: Geometry,
    /// Deterministic cipher for names and symlink targets.
    pub names: SivCipher,
    /// Deterministic cipher for `user.*` xattr names and values.
    pub xattrs: SivCipher,
    /// The key providers this host holds that the vault lists, in the order given.
    providers: Vec<Arc<dyn KeyProvider>>,
    /// Unwrapped DEKs of files recently opened (only for key services: a local unwrap is
    /// cheaper than the cache).
    dek_cache: DekCache,
    /// New-file DEKs generated ahead of need (started by `enable_prefetch`).
    prefetch: OnceLock<Prefetcher>,
    /// One wrapper per config key that new DEKs can be wrapped for (built on first use:
    /// it may connect to a key service).
    wrappers: OnceLock<Vec<Arc<dyn KeyProvider>>>,
    /// The vault's intermediate keys (vault/hierarchy.rs), built when first needed: to wrap
    /// new DEKs with the key hierarchy on, or to open a header one of them wraps.
    hierarchy: OnceLock<Arc<Hierarchy>>,
    /// Kept for key management (adding a key wraps it; the config MAC is keyed from it).
    secret: Secret32,
    /// The public name of `secret`, which hosts remember (vault/known.rs).
    fingerprint: Fingerprint,
    /// Whether the slot that opened the vault could only have been made by a holder of its
    /// key (`KeyProvider::vouches_for`). When not, only a remembered or given fingerprint
    /// tells the real vault from a forged one.
    secret_vouched: bool,
    /// The key whose slot opened the vault, for messages.
    unlocked_by: String,
    /// A digest of the config's bytes as opened or last written (vault/known.rs).
    config_digest: [u8; 16],
    /// The next config change is numbered above this (the highest generation this host has
    /// seen: after an accepted rollback it is above the config's own).
    generation_floor: u64,
}

pub fn config_path(root: &Path) -> PathBuf {
    root.join(CONFIG_FILE_NAME)
}

/// The most bytes a config can have (a few hundred per key slot, at most 255 slots).
const MAX_CONFIG_LEN: u64 = 1 << 20;

/// The config's bytes, read through the backing root's descriptor: never through a
/// symlink put in its place (that would read a file of the mounting host's), never waiting
/// on a FIFO, never more than a config can hold.
fn read_config_bytes(root: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let dir = BackingRoot::open(root)?.root()?;
    let file = dir.open_file(
        std::ffi::OsStr::new(CONFIG_FILE_NAME),
        libc::O_RDONLY | libc::O_NONBLOCK,
        0,
    )?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than any envfs config",
        ));
    }
    Ok(bytes)
}

/// Read and parse the config without authenticating it: enough to learn the vault id (to
/// find the default key file) and to describe the vault. Nothing from an unverified config
/// is used to encrypt.
pub fn read_config_unverified(root: &Path) -> Result<(VaultConfig, Vec<u8>)> {
    let path = config_path(root);
    let bytes = match read_config_bytes(root) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotAVault(root.to_path_buf()));
        }
        Err(e) => {
            return Err(Error::Io(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            )));
        }
    };
    let config = match VaultConfig::parse(&bytes) {
        Ok((config, _, _)) => config,
        Err(ConfigParseError::BadMagic) => {
            return Err(Error::CorruptConfig(format!(
                "{} is not an envfs vault config",
                path.display()
            )));
        }
        Err(ConfigParseError::Unsupported(msg)) => return Err(Error::UnsupportedVersion(msg)),
        Err(ConfigParseError::Corrupt(msg)) => return Err(Error::CorruptConfig(msg)),
    };
    Ok((config, bytes))
}

impl Vault {
    /// Create a new vault in `root`, an existing empty directory.
    pub fn init(root: &Path, provider: Arc<dyn KeyProvider>, opts: &InitOptions) -> Result<Vault> {
        Vault::init_with(root, provider, opts, Vec::new())
    }

    /// `init`, with `extra` slots in the config after the provider's (a passphrase key's
    /// seal, which needs no vault secret: keys/passphrase.rs).
    pub fn init_with(
        root: &Path,
        provider: Arc<dyn KeyProvider>,
        opts: &InitOptions,
        extra: Vec<KeySlot>,
    ) -> Result<Vault> {
        let entries = BackingRoot::open(root)
            .and_then(|r| r.root()?.entries())
            .map_err(|e| {
                Error::Invalid(format!("cannot use {} as a vault: {e}", root.display()))
            })?;
        if entries.iter().any(|e| e.name == CONFIG_FILE_NAME) {
            return Err(Error::AlreadyExists(format!(
                "{} already holds an envfs vault",
                root.display()
            )));
        }
        if !entries.is_empty() {
            return Err(Error::AlreadyExists(format!(
                "{} is not empty; envfs init needs an empty directory",
                root.display()
            )));
        }
        let vault_id: [u8; 16] = opts.vault_id.unwrap_or_else(random::array);
        let secret = Secret32::random();
        let slot = provider.wrap(&secret, &KeyContext::vault_secret(vault_id))?;
        let config = VaultConfig {
            version: crate::format::config::CONFIG_VERSION_2,
            generation: 1,
            key_hierarchy: None,
            intermediate_slots: false,
            vault_id,
            plaintext_names: opts.plaintext_names,
            name_encoding: opts.name_encoding,
            chunk_size: opts.chunk_size,
            header_size: opts.header_size,
            long_name_limit: opts.long_name_limit,
            slots: std::iter::once(slot).chain(extra).collect(),
        };
        config.validate().map_err(Error::Invalid)?;
        let mut vault = Vault::from_secret(root, config, &secret, vec![provider])?;
        // Every header must be able to hold this key's slot, or the first write would fail.
        vault.new_file()?;
        vault.config_digest = vault.write_config(&vault.config, false)?;
        Ok(vault)
    }

    /// Remove the config of a vault `init` has just created (and nothing else: no file can
    /// have been written through it yet), when a later step of `init` failed.
    pub fn abandon_new(self) -> Result<()> {
        let dir = BackingRoot::open(&self.root)?.root()?;
        dir.unlink(std::ffi::OsStr::new(CONFIG_FILE_NAME))?;
        // And the first intermediate key, when the step that failed came after it.
        let keys = std::ffi::OsStr::new(crate::format::intermediate::INTERMEDIATE_DIR);
        if let Ok(keys_dir) = dir.subdir(keys) {
            for name in keys_dir.list()? {
                keys_dir.unlink(&name)?;
            }
            dir.rmdir(keys)?;
        }
        dir.sync()?;
        Ok(())
    }

    /// Open an existing vault with the key providers this host holds.
    pub fn open(root: &Path, providers: Vec<Arc<dyn KeyProvider>>) -> Result<Vault> {
        let (config, bytes) = read_config_unverified(root)?;
        let (_, body, mac) = VaultConfig::parse(&bytes).expect("parsed above");
        let ctx = KeyContext::vault_secret(config.vault_id);
        let digest = config_digest(&bytes);
        let mut failure: Option<Error> = None;
        // A slot that unwraps but does not vouch for the secret is kept in reserve: another
        // key given may open it with a slot that does.
        let mut unvouched: Option<(Secret32, String)> = None;
        for provider in &providers {
            for slot in config.slots.iter().filter(|s| provider.recognises(s)) {
                match provider.unwrap(slot, &ctx) {
                    Ok(secret) => {
                        let mac_key = derive32(&secret, &config.vault_id, label::CONFIG_MAC);
                        if !bool::from(hmac32(&mac_key, &[body]).ct_eq(&mac)) {
                            return Err(Error::CorruptConfig(
                                "authentication failed: envfs.conf was modified".into(),
                            ));
                        }
                        if !provider.vouches_for(slot) {
                            unvouched.get_or_insert((secret, provider.describe()));
                            continue;
                        }
                        let unlocked_by = provider.describe();
                        let mut vault =
                            Vault::from_secret(root, config.clone(), &secret, providers)?;
                        vault.unlocked_by = unlocked_by;
                        vault.config_digest = digest;
                        return Ok(vault);
                    }
                    // A recovery slot whose holder's proof is false: a forgery, whatever
                    // other slots say.
                    Err(e @ Error::VaultMismatch(_)) => return Err(e),
                    Err(Error::WrongKey(_)) => {
                        failure = Some(Error::CorruptConfig(format!(
                            "the key slot of {} does not unwrap: envfs.conf was modified",
                            provider.describe()
                        )));
                    }
                    Err(e) => failure = Some(e),
                }
            }
        }
        if let Some((secret, unlocked_by)) = unvouched {
            let mut vault = Vault::from_secret(root, config.clone(), &secret, providers)?;
            vault.secret_vouched = false;
            vault.unlocked_by = unlocked_by;
            vault.config_digest = digest;
            return Ok(vault);
        }
        // A slot that carries one of our key ids under another provider kind was edited.
        if failure.is_none()
            && providers
                .iter()
                .any(|p| config.slots.iter().any(|s| s.key_id == p.key_id()))
        {
            failure = Some(Error::CorruptConfig(
                "a key slot was modified: envfs.conf is not authentic".into(),
            ));
        }
        Err(failure.unwrap_or_else(|| {
            let listed: Vec<String> = config
                .slots
                .iter()
                .map(|s| format!("{} {}", s.provider.name(), s.key_id))
                .collect();
            let offered: Vec<String> = providers.iter().map(|p| p.describe()).collect();
            Error::WrongKey(format!(
                "wrong key: the vault is opened by {}, but the key given is {}",
                listed.join(", "),
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            ))
        }))
    }

    fn from_secret(
        root: &Path,
        config: VaultConfig,
        secret: &Secret32,
        providers: Vec<Arc<dyn KeyProvider>>,
    ) -> Result<Vault> {
        let providers: Vec<_> = providers
            .into_iter()
            .filter(|p| config.slots.iter().any(|s| p.recognises(s)))
            .collect();
        let config_vault_id = config.vault_id;
        let binding = derive32(secret, &config.vault_id, label::X25519_BINDING);
        for p in &providers {
            p.bind_to_vault(&binding);
        }
        Ok(Vault {
            root: root.to_path_buf(),
            geometry: Geometry::new(config.chunk_size, config.header_size),
            names: SivCipher::new(derive64(secret, &config.vault_id, label::NAMES)),
            xattrs: SivCipher::new(derive64(secret, &config.vault_id, label::XATTR)),
            config,
            providers,
            dek_cache: DekCache::new(CacheLimits::default()),
            prefetch: OnceLock::new(),
            wrappers: OnceLock::new(),
            hierarchy: OnceLock::new(),
            fingerprint: Fingerprint::of(secret, &config_vault_id),
            secret: secret.clone(),
            secret_vouched: true,
            unlocked_by: String::from("the key that created it"),
            config_digest: [0; 16],
            generation_floor: 0,
        })
    }

    /// A digest of the config's bytes (opened or last written), which hosts remember to
    /// tell two configs of one generation apart.
    pub fn config_digest(&self) -> [u8; 16] {
        self.config_digest
    }

    /// Number the next config change above `highest` (the highest generation this host has
    /// seen), so that it never reuses a generation of a line abandoned by a rollback.
    pub fn raise_generation_floor(&mut self, highest: u64) {
        self.generation_floor = self.generation_floor.max(highest);
    }

    /// The key whose slot opened the vault (described for people).
    pub fn unlocked_by(&self) -> &str {
        &self.unlocked_by
    }

    /// The vault secret's fingerprint (public; crypto/fingerprint.rs).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether the key that opened the vault vouches for its secret by itself (see the
    /// field). `false` means: check the fingerprint against what the host knows.
    pub fn secret_vouched(&self) -> bool {
        self.secret_vouched
    }

    /// Replace the DEK cache limits (from mount options).
    pub fn set_cache_limits(&mut self, limits: CacheLimits) {
        self.dek_cache = DekCache::new(limits);
        // Intermediate keys are kept as long as DEKs are.
        self.hierarchy = OnceLock::new();
        self.wrappers = OnceLock::new();
    }

    /// The vault's intermediate keys. Their KMS keys are the config's: held ones as given,
    /// the others reached with the standard AWS chain (as `wrappers` does).
    pub fn hierarchy(&self) -> &Arc<Hierarchy> {
        self.hierarchy.get_or_init(|| {
            let mut services: Vec<Arc<dyn KeyProvider>> = Vec::new();
            for slot in self
                .config
                .header_slots()
                .filter(|s| s.provider == ProviderKind::AwsKms)
            {
                if let Some(p) = self.providers.iter().find(|p| p.recognises(slot)) {
                    services.push(p.clone());
                    continue;
                }
                match KmsKeyProvider::connect(&slot.key_id) {
                    Ok(k) => services.push(Arc::new(k)),
                    Err(e) => tracing::warn!(
                        "intermediate keys cannot be made or opened with KMS key {}: {e}",
                        slot.key_id
                    ),
                }
            }
            Arc::new(Hierarchy::new(
                &self.root,
                self.config.vault_id,
                &self.secret,
                self.config
                    .key_hierarchy
                    .map(|s| std::time::Duration::from_secs(s.into())),
                self.dek_cache.limits().ttl,
                services,
            ))
        })
    }

    /// Whether new DEKs are wrapped by an intermediate key (the hierarchy is on and this
    /// host reaches a KMS key of the vault to make and open one).
    fn hierarchy_wraps(&self) -> bool {
        self.config.key_hierarchy.is_some() && self.hierarchy().can_make()
    }

    /// Who makes new files' DEKs: the hierarchy while it wraps them, else the first key.
    fn primary(&self) -> Option<Arc<dyn KeyProvider>> {
        if self.hierarchy_wraps() {
            return Some(self.hierarchy().clone());
        }
        self.providers.first().cloned()
    }

    /// Turn the key hierarchy on (with this intermediate-key lifetime, seconds) or off.
    /// On needs a KMS key in the vault, and makes the first intermediate key right away, so
    /// that a KMS key this host cannot use is found now rather than at the first new file.
    /// Existing files keep their wrapped keys until `envfs rewrap`.
    pub fn set_key_hierarchy(&mut self, lifetime: Option<u32>) -> Result<()> {
        if let Some(l) = lifetime {
            if l == 0 {
                return Err(Error::Invalid(
                    "an intermediate key's lifetime must be at least one second".into(),
                ));
            }
            if !self
                .config
                .header_slots()
                .any(|s| s.provider == ProviderKind::AwsKms)
            {
                return Err(Error::Invalid(
                    "the key hierarchy wraps intermediate keys with the vault's KMS key, and \
                     this vault has none (envfs key add --new-kms-key KEY)"
                        .into(),
                ));
            }
        }
        let mut config = self.config.clone();
        config.key_hierarchy = lifetime;
        // Off keeps the config at version 3 until a rewrap has moved every header back
        // (`headers_left_intermediate_keys`).
        config.intermediate_slots |= lifetime.is_some();
        config.validate().map_err(Error::Invalid)?;
        if lifetime.is_some() {
            let probe = Hierarchy::new(
                &self.root,
                self.config.vault_id,
                &self.secret,
                lifetime.map(|s| std::time::Duration::from_secs(s.into())),
                self.dek_cache.limits().ttl,
                self.hierarchy().services().to_vec(),
            );
            probe.current_slot_key()?;
        }
        self.commit_config(config)?;
        self.hierarchy = OnceLock::new();
        Ok(())
    }

    /// After a complete `envfs rewrap` found no header under an intermediate key while the
    /// hierarchy is off: write the config as version 2 again, so that an envfs without the
    /// hierarchy can open the vault. Returns whether the config changed. (Intermediate-key
    /// files stay: a host that has not synced yet may hold files they wrap, and this envfs
    /// opens those whatever the config's version.)
    pub fn headers_left_intermediate_keys(&mut self) -> Result<bool> {
        if self.config.key_hierarchy.is_some() || !self.config.intermediate_slots {
            return Ok(false);
        }
        let mut config = self.config.clone();
        config.intermediate_slots = false;
        self.commit_config(config)?;
        Ok(true)
    }

    /// Make a new intermediate key now (`envfs key rotate-intermediate`); returns its id.
    pub fn rotate_intermediate(&self) -> Result<[u8; 16]> {
        if self.config.key_hierarchy.is_none() {
            return Err(Error::Invalid(
                "the key hierarchy is off for this vault (envfs key hierarchy on)".into(),
            ));
        }
        self.hierarchy().rotate()
    }

    /// The keys every file header should be wrapped by now, as slots without wrapped bytes
    /// (`envfs rewrap` compares headers with them): the config's header keys, with the
    /// vault's KMS keys standing, while the hierarchy wraps, for the current intermediate
    /// key.
    pub fn wanted_header_keys(&self) -> Result<Vec<KeySlot>> {
        self.header_keys()
            .into_iter()
            .map(|key| match key {
                Some(slot) => Ok(KeySlot {
                    wrapped: Vec::new(),
                    ..slot.clone()
                }),
                None => Ok(KeySlot {
                    provider: ProviderKind::Intermediate,
                    key_id: self.hierarchy().current_slot_key()?,
                    wrapped: Vec::new(),
                }),
            })
            .collect()
    }

    /// The keys a header is wrapped by, in config order: the config's header keys, except
    /// that while the hierarchy wraps, the KMS keys wrap intermediate keys and stand here as
    /// one entry, `None`, for the current intermediate key. (New files' wrappers and
    /// rewrap's wanted set both follow it.)
    fn header_keys(&self) -> Vec<Option<&KeySlot>> {
        let hierarchy = self.hierarchy_wraps();
        let mut keys = Vec::new();
        for slot in self.config.header_slots() {
            if !(hierarchy && slot.provider == ProviderKind::AwsKms) {
                keys.push(Some(slot));
            } else if !keys.contains(&None) {
                keys.push(None);
            }
        }
        keys
    }

    /// Keep `target` new-file DEKs ready with `concurrency` workers, when the primary key
    /// is a key service. Does nothing for local keys (generation is free) or when called
    /// twice.
    pub fn enable_prefetch(&self, target: usize, concurrency: usize) {
        let Some(primary) = self.primary() else {
            return;
        };
        if !primary.remote() || target == 0 || concurrency == 0 {
            return;
        }
        let wrappers = self.wrappers().to_vec();
        let vault_id = self.config.vault_id;
        let _ = self.prefetch.set(Prefetcher::start(
            target,
            concurrency,
            Arc::new(move || prepare_file_keys(&primary, &wrappers, vault_id)),
        ));
    }

    /// Write `config` with its MAC: to a temporary file, fsynced, then moved into place —
    /// hard-linked when creating (never overwriting an existing vault), renamed over the old
    /// one when replacing — so a crash never leaves half a config.
    fn write_config(&self, config: &VaultConfig, replace: bool) -> Result<[u8; 16]> {
        let body = config.encode_body();
        let mac_key = derive32(&self.secret, &config.vault_id, label::CONFIG_MAC);
        let mac = hmac32(&mac_key, &[&body]);
        let digest = config_digest(&[body.as_slice(), &mac].concat());
        let tmp = std::ffi::OsString::from(format!(
            ".envfs-config-{}.tmp",
            hex::encode(random::array::<8>())
        ));
        let config_name = std::ffi::OsStr::new(CONFIG_FILE_NAME);
        let dir = BackingRoot::open(&self.root)?.root()?;
        let result = (|| -> io::Result<()> {
            let mut f =
                dir.open_file(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666)?;
            f.write_all(&body)?;
            f.write_all(&mac)?;
            f.sync_all()?;
            if replace {
                dir.rename(&tmp, &dir, config_name, 0)?;
            } else {
                dir.link(&tmp, &dir, config_name)?;
            }
            dir.sync()
        })();
        let _ = dir.unlink(&tmp);
        result.map(|()| digest).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::AlreadyExists(format!(
                    "{} already holds an envfs vault",
                    self.root.display()
                ))
            } else {
                Error::Io(io::Error::new(
                    e.kind(),
                    format!("cannot write the vault config: {e}"),
                ))
            }
        })
    }

    /// Who new DEKs are wrapped for: every key in the config that this host can wrap for —
    /// keys it holds, recovery keys (public), and KMS keys it can reach. A local key file this
    /// host does not hold is skipped (logged once); `envfs rewrap` with that key file adds it.
    pub fn wrappers(&self) -> &[Arc<dyn KeyProvider>] {
        self.wrappers.get_or_init(|| {
            let mut out: Vec<Arc<dyn KeyProvider>> = Vec::new();
            for key in self.header_keys() {
                let Some(slot) = key else {
                    out.push(self.hierarchy().clone());
                    continue;
                };
                if let Some(p) = self.providers.iter().find(|p| p.recognises(slot)) {
                    out.push(p.clone());
                    continue;
                }
                match slot.provider {
                    ProviderKind::X25519 => match X25519KeyProvider::recipient(&slot.key_id) {
                        Some(r) => {
                            r.bind_to_vault(&derive32(
                                &self.secret,
                                &self.config.vault_id,
                                label::X25519_BINDING,
                            ));
                            out.push(Arc::new(r))
                        }
                        None => tracing::warn!("recovery key id {} is malformed", slot.key_id),
                    },
                    ProviderKind::AwsKms => match KmsKeyProvider::connect(&slot.key_id) {
                        Ok(k) => out.push(Arc::new(k)),
                        Err(e) => tracing::warn!(
                            "new files will not be wrapped by KMS key {}: {e}; run envfs rewrap later",
                            slot.key_id
                        ),
                    },
                    _ => tracing::warn!(
                        "new files will not be wrapped by {} key {} (not held by this host); \
                         run envfs rewrap with its key file later",
                        slot.provider.name(),
                        slot.key_id
                    ),
                }
            }
            out
        })
    }

    /// Replace the config with `config` as the next generation: every change goes through
    /// here, so every change raises the generation hosts compare (vault/known.rs).
    fn commit_config(&mut self, mut config: VaultConfig) -> Result<()> {
        config.version = config.written_version();
        config.generation = self.config.generation.max(self.generation_floor) + 1;
        self.config_digest = self.write_config(&config, true)?;
        self.config = config;
        self.wrappers = OnceLock::new();
        self.hierarchy = OnceLock::new();
        Ok(())
    }

    /// Add a key to the vault: it wraps the vault secret (so it opens the vault) and, from
    /// now on, every new DEK. Existing files get it with `envfs rewrap`.
    ///
    /// Adding a key that is already there is refused, except to upgrade a slot that does not
    /// vouch for the secret (a recovery slot from before holder proofs) to one that does.
    pub fn add_key(&mut self, provider: &dyn KeyProvider) -> Result<KeyAdded> {
        self.add_key_with(provider, None)
    }

    /// `add_key`, with `seal` (the passphrase slot of a new passphrase key, whose X25519
    /// key `provider` is) in the same config change.
    pub fn add_key_with(
        &mut self,
        provider: &dyn KeyProvider,
        seal: Option<KeySlot>,
    ) -> Result<KeyAdded> {
        let existing = self
            .config
            .slots
            .iter()
            .position(|s| provider.recognises(s));
        let already = || {
            Error::AlreadyExists(format!(
                "{} is already a key of this vault",
                provider.describe()
            ))
        };
        if existing.is_some_and(|i| provider.vouches_for(&self.config.slots[i])) {
            return Err(already());
        }
        let slot = provider.wrap(
            &self.secret,
            &KeyContext::vault_secret(self.config.vault_id),
        )?;
        if let Some(i) = existing {
            if !provider.vouches_for(&slot) {
                return Err(already());
            }
            let mut config = self.config.clone();
            config.slots[i] = slot;
            config.validate().map_err(Error::Invalid)?;
            self.commit_config(config)?;
            return Ok(KeyAdded::Proven);
        }
        let mut config = self.config.clone();
        config.slots.push(slot);
        config.slots.extend(seal);
        config.validate().map_err(Error::Invalid)?;
        // Every header must still fit all the wrapped keys.
        let probe: usize = config
            .header_slots()
            .map(|s| s.encoded_len())
            .sum::<usize>()
            + crate::format::header::HEADER_FIXED_LEN
            + crate::format::header::HEADER_MAC_LEN;
        if probe > config.header_size as usize {
            return Err(Error::Invalid(format!(
                "the vault's {}-byte file headers cannot hold another wrapped key",
                config.header_size
            )));
        }
        self.commit_config(config)?;
        Ok(KeyAdded::New)
    }

    /// Remove a key (by the short id `envfs key list` prints, or its full key id). Refuses to
    /// remove the last key. Files keep its wrapped copies until `envfs rewrap`. A passphrase
    /// key is its X25519 slot and its passphrase slot (keys/passphrase.rs): removing either
    /// removes both, since the key pair's private half exists nowhere else. A KMS key's
    /// intermediate keys are retired first (`Hierarchy::retire`): new files must not be
    /// wrapped by a key the removed one can unwrap. Returns the removed slot and how many
    /// intermediate keys were retired.
    pub fn remove_key(&mut self, key_ref: &str) -> Result<(KeySlot, usize)> {
        let index = self
            .config
            .slots
            .iter()
            .position(|s| short_key_id(s) == key_ref || s.key_id == key_ref)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{key_ref} is not a key of this vault (see envfs key list)"
                ))
            })?;
        let removed = self.config.slots[index].clone();
        let mut config = self.config.clone();
        config.slots.retain(|s| !goes_with(&removed, s));
        if config.header_slots().next().is_none() {
            return Err(Error::Invalid(
                "refusing to remove the vault's last key: nothing could open it (add another \
                 first: envfs key add)"
                    .into(),
            ));
        }
        let retired = if removed.provider == ProviderKind::AwsKms {
            self.hierarchy().retire(&removed)?
        } else {
            0
        };
        self.commit_config(config)?;
        self.hierarchy = OnceLock::new();
        Ok((removed, retired))
    }

    /// The key the debug log tags plaintext names with (fuse/oplog.rs): one per vault, so
    /// tags match across mounts, and worthless without the vault secret.
    pub fn log_tag_key(&self) -> Secret32 {
        derive32(&self.secret, &self.config.vault_id, label::LOG_TAGS)
    }

    /// The DEKs the cache holds now and its bounds, and how many new-file DEKs are ready
    /// (`None` without prefetching), for `envfs status`.
    pub fn dek_cache_fill(&self) -> (usize, CacheLimits, Option<usize>) {
        (
            self.dek_cache.len(),
            self.dek_cache.limits(),
            self.prefetch.get().map(Prefetcher::ready),
        )
    }

    /// What `envfs status` shows of the key hierarchy: `None` unless it is on or this
    /// process has opened a file one of its keys wraps.
    pub fn hierarchy_report(&self) -> Option<crate::vault::hierarchy::HierarchyReport> {
        if self.config.key_hierarchy.is_none() && self.hierarchy.get().is_none() {
            return None;
        }
        Some(self.hierarchy().report())
    }

    /// Whether a DEK of this vault can need a key-service call to unwrap.
    pub fn has_remote_key(&self) -> bool {
        self.providers.iter().any(|p| p.remote())
    }

    /// How many DEKs unwrapped ahead an open has used (`envfs status`).
    pub fn dek_ahead_used(&self) -> u64 {
        self.dek_cache.ahead_used()
    }

    /// Unwrap and cache the DEK of a file header before anything opens the file, when a key
    /// service holds it (fs/unwrap_ahead.rs). The header is not authenticated here: its MAC
    /// needs the DEK, and the open that uses the DEK checks it. What gets cached is still
    /// only ever the key the service unwrapped for this file id (the id is bound into the
    /// wrap), under the cache key of that exact slot.
    pub fn unwrap_ahead(&self, header_bytes: &[u8]) -> Ahead {
        let Ok((header, _)) = FileHeader::parse(header_bytes) else {
            return Ahead::NotAFile;
        };
        let Some((provider, slot)) = self.providers.iter().find_map(|p| {
            header
                .slots
                .iter()
                .find(|s| p.recognises(s))
                .map(|s| (p, s))
        }) else {
            return Ahead::NotHeld;
        };
        if !provider.remote() {
            return Ahead::NotHeld;
        }
        if self.dek_cache.contains(&header.file_id, &slot.wrapped) {
            return Ahead::Cached;
        }
        let Some(_claim) = self.dek_cache.claim(&header.file_id) else {
            return Ahead::Cached;
        };
        // Opened since we looked: nothing to do.
        if self.dek_cache.contains(&header.file_id, &slot.wrapped) {
            return Ahead::Cached;
        }
        let ctx = KeyContext::file(self.config.vault_id, header.file_id);
        match provider.unwrap(slot, &ctx) {
            Ok(dek) => {
                self.dek_cache
                    .insert_ahead(&header.file_id, &slot.wrapped, &dek);
                Ahead::Unwrapped
            }
            Err(_) => Ahead::Failed,
        }
    }

    /// The providers this host holds (that can unwrap).
    pub fn held_providers(&self) -> &[Arc<dyn KeyProvider>] {
        &self.providers
    }

    /// Build a header for an existing file (same file id and DEK) with the given slots.
    pub fn seal_header(&self, header: &FileHeader, keys: &FileKeys) -> Result<Vec<u8>> {
        let mut bytes = header
            .encode_body(self.config.header_size as usize)
            .map_err(Error::Invalid)?;
        let mac = keys.header_mac(&self.config.vault_id, &bytes);
        bytes.extend_from_slice(&mac);
        Ok(bytes)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn vault_id(&self) -> &[u8; 16] {
        &self.config.vault_id
    }

    /// A new file's header bytes (exactly `header_size`) and its keys. The DEK comes from
    /// the first provider and is wrapped by every other provider this host holds.
    pub fn new_file(&self) -> Result<(Vec<u8>, FileKeys)> {
        let prepared = match self.prefetch.get().and_then(Prefetcher::take) {
            Some(p) => p,
            None => {
                let primary = self
                    .primary()
                    .ok_or_else(|| Error::WrongKey("no key of this vault is available".into()))?;
                prepare_file_keys(&primary, self.wrappers(), self.config.vault_id)?
            }
        };
        let Prepared {
            file_id,
            dek,
            slots,
        } = prepared;
        // The file is about to be written and, usually, read back: cache its DEK now so
        // the first reopen does not cost a Decrypt call for a key this process just made.
        for slot in &slots {
            if self
                .providers
                .iter()
                .any(|p| p.remote() && p.recognises(slot))
            {
                self.dek_cache.insert(&file_id, &slot.wrapped, &dek);
            }
        }
        let keys = FileKeys::derive(&dek, file_id);
        let header = FileHeader {
            file_id,
            commitment: keys.commitment(),
            slots,
        };
        let mut bytes = header
            .encode_body(self.config.header_size as usize)
            .map_err(Error::Invalid)?;
        let mac = keys.header_mac(&self.config.vault_id, &bytes);
        bytes.extend_from_slice(&mac);
        Ok((bytes, keys))
    }

    /// Parse, unwrap and authenticate a file header. `backing_path` is for messages only.
    pub fn open_file(&self, header_bytes: &[u8], backing_path: &Path) -> Result<FileKeys> {
        self.open_header(header_bytes, backing_path)
            .map(|(_, _, keys)| keys)
    }

    /// Decrypt a header's DEK with any held key (using the DEK cache), authenticating the
    /// header. Returns the parsed header, the DEK and the keys derived from it.
    pub fn open_header(
        &self,
        header_bytes: &[u8],
        backing_path: &Path,
    ) -> Result<(FileHeader, Secret32, FileKeys)> {
        let corrupt = || Error::Integrity {
            path: backing_path.to_path_buf(),
            chunk: None,
            kind: IntegrityKind::Header,
        };
        let (header, mac) = match FileHeader::parse(header_bytes) {
            Ok(parsed) => parsed,
            Err(HeaderParseError::Unsupported(msg)) => {
                return Err(Error::UnsupportedVersion(format!(
                    "{}: {msg}",
                    backing_path.display()
                )));
            }
            Err(HeaderParseError::Corrupt(_)) => return Err(corrupt()),
        };
        let body = &header_bytes[..header_bytes.len() - 32];
        let ctx = KeyContext::file(self.config.vault_id, header.file_id);
        let mut failure = None;
        // A header an intermediate key wraps is opened by the hierarchy too, after the keys
        // this host holds (a local key needs no key file read).
        let hierarchy: Option<Arc<dyn KeyProvider>> = header
            .slots
            .iter()
            .any(|s| s.provider == ProviderKind::Intermediate)
            .then(|| self.hierarchy().clone() as Arc<dyn KeyProvider>);
        for provider in self.providers.iter().chain(hierarchy.iter()) {
            for slot in header.slots.iter().filter(|s| provider.recognises(s)) {
                // Claimed while this open unwraps it, so unwrap-ahead does not call too;
                // claimed by unwrap-ahead, waited for rather than called a second time.
                let (cached, _claim) = if provider.remote() {
                    match self.dek_cache.get(&header.file_id, &slot.wrapped) {
                        Some(dek) => (Some(dek), None),
                        None => {
                            let claim = self.dek_cache.claim(&header.file_id);
                            if claim.is_none() {
                                self.dek_cache.wait_unclaimed(&header.file_id, AHEAD_WAIT);
                            }
                            (self.dek_cache.get(&header.file_id, &slot.wrapped), claim)
                        }
                    }
                } else {
                    (None, None)
                };
                let unwrapped = match cached {
                    Some(dek) => Ok(dek),
                    None => provider.unwrap(slot, &ctx).inspect(|dek| {
                        if provider.remote() {
                            self.dek_cache.insert(&header.file_id, &slot.wrapped, dek);
                        }
                    }),
                };
                match unwrapped {
                    Ok(dek) => {
                        let keys = FileKeys::derive(&dek, header.file_id);
                        if !keys.verify_header(
                            &self.config.vault_id,
                            &header.commitment,
                            body,
                            &mac,
                        ) {
                            return Err(corrupt());
                        }
                        return Ok((header, dek, keys));
                    }
                    Err(Error::WrongKey(_)) => failure = Some(corrupt()),
                    Err(e) => failure = Some(e),
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            let listed: Vec<String> = header
                .slots
                .iter()
                .map(|s| format!("{} {}", s.provider.name(), s.key_id))
                .collect();
            Error::WrongKey(format!(
                "{} is wrapped only by {}, none of which this host holds",
                backing_path.display(),
                listed.join(", ")
            ))
        }))
    }
}

/// How long an open waits for an unwrap-ahead call of the same DEK before making its own:
/// longer than a key-service call takes (the SDK gives up on one well before this).
const AHEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What `Vault::unwrap_ahead` did with one header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// One key-service call; the DEK is cached.
    Unwrapped,
    /// Already cached, or being unwrapped by another call: no call.
    Cached,
    /// No key service holds it (a local key unwraps faster than a cache lookup pays off).
    NotHeld,
    /// Not an envfs file header (a client's own file, a damaged header): no call.
    NotAFile,
    /// The call failed; the open will make its own and report what it says.
    Failed,
}

/// Whether removing the key of `removed` removes `slot` too: the slot itself, and the two
/// halves of a passphrase key (its X25519 slot and its passphrase slot share the key id).
pub fn goes_with(removed: &KeySlot, slot: &KeySlot) -> bool {
    use ProviderKind::{Passphrase, X25519};
    let halves = matches!(
        (removed.provider, slot.provider),
        (Passphrase, X25519 | Passphrase) | (X25519, Passphrase)
    );
    slot == removed
        || (slot.provider == removed.provider && slot.key_id == removed.key_id)
        || (halves && slot.key_id == removed.key_id)
}

/// A digest of a config's bytes: 16 bytes of SHA-256.
fn config_digest(bytes: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A fresh DEK for a new file: generated by `primary`, wrapped by every other key of the
/// vault that can be wrapped for, in config order.
fn prepare_file_keys(
    primary: &Arc<dyn KeyProvider>,
    wrappers: &[Arc<dyn KeyProvider>],
    vault_id: [u8; 16],
) -> Result<Prepared> {
    let file_id: [u8; 16] = random::array();
    let ctx = KeyContext::file(vault_id, file_id);
    let (dek, first_slot) = primary.generate(&ctx)?;
    let mut slots = Vec::with_capacity(wrappers.len().max(1));
    let mut first_slot = Some(first_slot);
    for w in wrappers {
        if w.kind() == primary.kind() && w.key_id() == primary.key_id() {
            slots.extend(first_slot.take());
        } else {
            slots.push(w.wrap(&dek, &ctx)?);
        }
    }
    slots.extend(first_slot);
    Ok(Prepared {
        file_id,
        dek,
        slots,
    })
}

/// The short id `envfs key list` prints for a config key: 8 hex digits of
/// SHA-256(provider code || key id), stable for as long as the key is in the vault.
pub fn short_key_id(slot: &KeySlot) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update([slot.provider.code()]);
    h.update(slot.key_id.as_bytes());
    hex::encode(&h.finalize()[..4])
}
