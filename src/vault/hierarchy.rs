//! The key hierarchy: an explicit vault option (`envfs key hierarchy on`) under which new
//! files' DEKs are wrapped locally, by an intermediate key, instead of by a KMS call each.
//!
//! In the style of the AWS Encryption SDK's hierarchical keyring: an intermediate key is a
//! random 32-byte key that KMS generates (GenerateDataKey, under its own encryption context
//! `envfs:purpose=intermediate-key`, `envfs:intermediate=<id>`) and that lives, wrapped by the
//! vault's KMS keys, in its own file under `envfs.keys/` (format/intermediate.rs). A mount
//! unwraps it once (one Decrypt), keeps it as long as a DEK is cached (`dek_cache_ttl`), and
//! wraps and unwraps DEKs with it in-process: creating or opening files costs no KMS call.
//!
//! Rotation: an intermediate key wraps new DEKs until it is older than the vault's lifetime;
//! the first new file after that makes the next key. `envfs key rotate-intermediate` makes one
//! at once; mounts notice it within `RESCAN`. Old keys keep opening the files they wrapped
//! until `envfs rewrap` moves those files to the current key; nothing deletes a key (a host
//! that has not synced yet may hold files only it wraps).
//!
//! What this gives up, and SECURITY.md says so: CloudTrail records one Decrypt per
//! intermediate key and mount, not one per file opened.

use crate::backing::{BackingRoot, Dir};
use crate::crypto::file_keys::hmac32;
use crate::crypto::kdf::{derive32, label};
use crate::crypto::{Secret32, random};
use crate::error::{Error, Result};
use crate::format::intermediate::{INTERMEDIATE_DIR, IntermediateKeyFile};
use crate::format::{KeySlot, ProviderKind};
use crate::keys::{KeyContext, KeyProvider};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// How often a mount looks for intermediate keys other processes made (a rotation on demand,
/// another host's key): the longest a mount keeps wrapping under a key another one replaced.
pub const RESCAN: Duration = Duration::from_secs(60);
/// nonce (12) + wrapped DEK (32) + tag (16).
const WRAPPED_LEN: usize = 60;

/// One unwrapped intermediate key, ready to wrap DEKs.
struct Unwrapped {
    cipher: Arc<Aes256Gcm>,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// Authentic intermediate-key files seen, by key id.
    files: HashMap<[u8; 16], IntermediateKeyFile>,
    /// Unwrapped keys, until `cache_ttl` after their unwrap.
    unwrapped: HashMap<[u8; 16], Unwrapped>,
    /// The key new DEKs are wrapped with, and when `envfs.keys/` was last listed.
    current: Option<[u8; 16]>,
    scanned: Option<Instant>,
    /// Files found not authentic, with the bytes read: reported once, not on every listing,
    /// and checked again once their bytes change (a sync client may have been half-way
    /// through writing one).
    rejected: HashMap<String, Vec<u8>>,
}

/// What `envfs status` shows of the hierarchy.
#[derive(Debug, Clone, Default)]
pub struct HierarchyReport {
    /// Lifetime of an intermediate key in seconds (`None`: the hierarchy is off and keys
    /// are only read).
    pub lifetime_s: Option<u64>,
    /// The key new DEKs are wrapped with (hex id) and its creation time (Unix seconds).
    pub current: Option<(String, u64)>,
    /// Intermediate keys this mount knows and holds unwrapped.
    pub known: usize,
    pub unwrapped: usize,
    /// Keys this process made, and DEKs it wrapped and unwrapped with them.
    pub made: u64,
    pub wrapped: u64,
    pub opened: u64,
}

pub struct Hierarchy {
    root: PathBuf,
    vault_id: [u8; 16],
    /// Keys the intermediate-key files' MACs (from the vault secret).
    mac_key: Secret32,
    /// `None` when the hierarchy is off: existing keys still open their files, none is made.
    lifetime: Option<Duration>,
    cache_ttl: Duration,
    /// The vault's KMS keys this host can reach, in config order: the first generates new
    /// intermediate keys, every one wraps them.
    services: Vec<Arc<dyn KeyProvider>>,
    name: String,
    /// What this mount knows of the keys. Held only to read or update it: never across a
    /// KMS call or backing-store I/O (a slow KMS must not stall opens of other files).
    state: Mutex<State>,
    /// Serialises listing `envfs.keys/` and making, retiring or rewriting keys.
    keys_gate: Mutex<()>,
    /// One gate per key being unwrapped (see `cipher`).
    unwrapping: Mutex<HashMap<[u8; 16], Arc<Mutex<()>>>>,
    made: AtomicU64,
    wrapped: AtomicU64,
    opened: AtomicU64,
}

/// Unix milliseconds: the unit of an intermediate key's times (a key made on demand must be
/// newer than one made in the same second).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The expiry of `file` retired now: not after its own, and not before its creation (the
/// format refuses that; another host's clock may be ahead of ours).
fn retired_at(file: &IntermediateKeyFile) -> u64 {
    now_ms().clamp(file.created, file.expires.max(file.created))
}

fn wrap_cipher(secret: &Secret32, key_id: &[u8; 16]) -> Aes256Gcm {
    let key = derive32(secret, key_id, label::INTERMEDIATE_WRAP);
    Aes256Gcm::new_from_slice(key.expose()).expect("32-byte key")
}

fn commitment(secret: &Secret32, key_id: &[u8; 16]) -> [u8; 32] {
    let c = derive32(secret, key_id, label::INTERMEDIATE_COMMIT);
    *c.expose()
}

/// Associated data of a DEK wrapped by intermediate key `key_id`: the file's context and
/// the key, so a slot moved to another file, vault or key does not open.
fn dek_aad(ctx: &KeyContext, file_id: &[u8; 16], key_id: &[u8; 16]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"envfs/v1/intermediate-dek");
    aad.extend_from_slice(&ctx.vault_id);
    aad.extend_from_slice(file_id);
    aad.extend_from_slice(key_id);
    aad
}

impl Hierarchy {
    /// The hierarchy of the vault at `root`. `lifetime`: the config's (`None`: off).
    pub fn new(
        root: &Path,
        vault_id: [u8; 16],
        vault_secret: &Secret32,
        lifetime: Option<Duration>,
        cache_ttl: Duration,
        services: Vec<Arc<dyn KeyProvider>>,
    ) -> Hierarchy {
        let name = match services.first() {
            Some(s) => format!("intermediate keys under {}", s.key_id()),
            None => "intermediate keys".to_string(),
        };
        Hierarchy {
            root: root.to_path_buf(),
            vault_id,
            mac_key: derive32(vault_secret, &vault_id, label::INTERMEDIATE_MAC),
            lifetime,
            cache_ttl,
            services,
            name,
            state: Mutex::new(State::default()),
            keys_gate: Mutex::new(()),
            unwrapping: Mutex::new(HashMap::new()),
            made: AtomicU64::new(0),
            wrapped: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// The KMS keys that wrap the intermediate keys.
    pub fn services(&self) -> &[Arc<dyn KeyProvider>] {
        &self.services
    }

    /// Whether this host can make intermediate keys (it reaches a KMS key of the vault).
    pub fn can_make(&self) -> bool {
        self.lifetime.is_some() && !self.services.is_empty()
    }

    fn dir(&self) -> std::io::Result<Dir> {
        BackingRoot::open(&self.root)?
            .root()?
            .subdir(OsStr::new(INTERMEDIATE_DIR))
    }

    fn shown(&self, name: &str) -> String {
        format!("{}", self.root.join(INTERMEDIATE_DIR).join(name).display())
    }

    /// Parse and authenticate one intermediate-key file named `name`.
    pub(crate) fn verify(&self, name: &str, bytes: &[u8]) -> Result<IntermediateKeyFile> {
        let bad = |why: String| {
            Error::CorruptConfig(format!("intermediate key {}: {why}", self.shown(name)))
        };
        let (file, body, mac) = IntermediateKeyFile::parse(bytes).map_err(bad)?;
        if !bool::from(hmac32(&self.mac_key, &[body]).ct_eq(&mac)) {
            return Err(bad("authentication failed: the file was modified".into()));
        }
        if file.vault_id != self.vault_id || IntermediateKeyFile::file_name(&file.key_id) != name {
            return Err(bad("it belongs to another vault or key".into()));
        }
        Ok(file)
    }

    fn read(&self, dir: &Dir, name: &str) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let file = dir.open_file(OsStr::new(name), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let mut bytes = Vec::new();
        file.take(1 << 16).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The authentic file of intermediate key `key_id`, read from the backing store unless
    /// already known (the read is made without `state` held).
    fn file_of(&self, key_id: &[u8; 16]) -> Result<IntermediateKeyFile> {
        if let Some(f) = self.state.lock().unwrap().files.get(key_id) {
            return Ok(f.clone());
        }
        let name = IntermediateKeyFile::file_name(key_id);
        let bytes = self.dir().and_then(|d| self.read(&d, &name)).map_err(|e| {
            // Not `WrongKey`: that would read as a damaged header.
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::KeyFile(format!(
                    "intermediate key {} is not on the backing store (not synced yet, or \
                         removed): files it wraps cannot be opened by it",
                    self.shown(&name)
                ))
            } else {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot read intermediate key {}: {e}", self.shown(&name)),
                ))
            }
        })?;
        let file = self.verify(&name, &bytes)?;
        let mut st = self.state.lock().unwrap();
        Ok(st.files.entry(*key_id).or_insert(file).clone())
    }

    /// Intermediate key `key_id` unwrapped, if this mount holds it and it is fresh.
    fn held(&self, key_id: &[u8; 16]) -> Option<Arc<Aes256Gcm>> {
        let st = self.state.lock().unwrap();
        st.unwrapped
            .get(key_id)
            .filter(|u| u.at.elapsed() < self.cache_ttl)
            .map(|u| u.cipher.clone())
    }

    /// Intermediate key `key_id`, unwrapped: from memory while fresh, else by one call to
    /// a KMS key of the vault. The call is made under that key's own gate, not `state`:
    /// concurrent opens of its files wait for the one call, opens under other keys and new
    /// files under the current key do not wait at all.
    fn cipher(&self, key_id: &[u8; 16]) -> Result<Arc<Aes256Gcm>> {
        if let Some(cipher) = self.held(key_id) {
            return Ok(cipher);
        }
        let gate = self
            .unwrapping
            .lock()
            .unwrap()
            .entry(*key_id)
            .or_default()
            .clone();
        let _one_call = gate.lock().unwrap();
        if let Some(cipher) = self.held(key_id) {
            return Ok(cipher);
        }
        let file = self.file_of(key_id)?;
        let secret = self.unwrap_secret(&file)?;
        let cipher = Arc::new(wrap_cipher(&secret, key_id));
        self.state.lock().unwrap().unwrapped.insert(
            *key_id,
            Unwrapped {
                cipher: cipher.clone(),
                at: Instant::now(),
            },
        );
        Ok(cipher)
    }

    /// List `envfs.keys/` and learn the authentic keys not known yet, and read again the
    /// known ones that may still wrap new DEKs (a key retired elsewhere, by `envfs key
    /// remove`, must stop wrapping here too). A file that is not authentic is reported once
    /// and never used. Called with `keys_gate` held; `state` is not held while reading.
    fn rescan(&self) -> Result<()> {
        let now = now_ms();
        let (settled, rejected): (HashSet<[u8; 16]>, HashMap<String, Vec<u8>>) = {
            let st = self.state.lock().unwrap();
            (
                st.files
                    .values()
                    .filter(|f| !self.in_lifetime(f, now))
                    .map(|f| f.key_id)
                    .collect(),
                st.rejected.clone(),
            )
        };
        let mut found = Vec::new();
        let mut bad = Vec::new();
        match self.dir() {
            Ok(dir) => {
                for name in dir.list()? {
                    let name = name.to_string_lossy().into_owned();
                    let Some(key_id) = IntermediateKeyFile::id_of_name(&name) else {
                        continue;
                    };
                    if settled.contains(&key_id) {
                        continue;
                    }
                    let bytes = match self.read(&dir, &name) {
                        Ok(b) => b,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            tracing::warn!(
                                "cannot read intermediate key {}: {e}; it is not used",
                                self.shown(&name)
                            );
                            continue;
                        }
                    };
                    if rejected.get(&name) == Some(&bytes) {
                        continue;
                    }
                    match self.verify(&name, &bytes) {
                        Ok(file) => found.push(file),
                        Err(e) => {
                            tracing::warn!("{e}; it is not used");
                            bad.push((name, bytes));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let mut st = self.state.lock().unwrap();
        for file in found {
            st.rejected
                .remove(&IntermediateKeyFile::file_name(&file.key_id));
            st.files.insert(file.key_id, file);
        }
        st.rejected.extend(bad);
        st.scanned = Some(Instant::now());
        Ok(())
    }

    /// Whether one of this host's KMS keys has a slot in `file`.
    fn opens(&self, file: &IntermediateKeyFile) -> bool {
        file.slots
            .iter()
            .any(|s| self.services.iter().any(|v| v.recognises(s)))
    }

    /// Whether `file` may still wrap new DEKs: before its own expiry and within the
    /// lifetime the config says now (a shortened lifetime takes effect at once).
    fn in_lifetime(&self, file: &IntermediateKeyFile, now: u64) -> bool {
        self.lifetime.is_some_and(|l| {
            now < file.expires && now < file.created.saturating_add(l.as_millis() as u64)
        })
    }

    /// The current key if it may still wrap new DEKs, and whether `envfs.keys/` was listed
    /// within `RESCAN`.
    fn current_if_usable(&self, now: u64) -> (Option<[u8; 16]>, bool) {
        let st = self.state.lock().unwrap();
        let usable = st.current.filter(|id| {
            st.files
                .get(id)
                .is_some_and(|f| self.in_lifetime(f, now) && self.opens(f))
        });
        (usable, st.scanned.is_some_and(|at| at.elapsed() < RESCAN))
    }

    /// The key new DEKs are wrapped with: the newest one in its lifetime, or a new one.
    fn current(&self) -> Result<([u8; 16], Arc<Aes256Gcm>)> {
        if self.lifetime.is_none() {
            return Err(Error::Invalid(
                "the key hierarchy is off for this vault: no intermediate key wraps new files"
                    .into(),
            ));
        }
        let (usable, fresh) = self.current_if_usable(now_ms());
        let gate = match usable {
            Some(id) if fresh => return Ok((id, self.cipher(&id)?)),
            // Due for a listing: one thread makes it while the others go on with the
            // current key.
            Some(id) => match self.keys_gate.try_lock() {
                Ok(gate) => gate,
                Err(_) => return Ok((id, self.cipher(&id)?)),
            },
            None => self.keys_gate.lock().unwrap(),
        };
        // Another thread may have chosen while this one waited for the gate.
        let id = match self.current_if_usable(now_ms()) {
            (Some(id), true) => id,
            _ => self.choose(&gate)?,
        };
        drop(gate);
        Ok((id, self.cipher(&id)?))
    }

    /// List the keys and make the newest usable one current, or a new one if none is.
    fn choose(&self, gate: &MutexGuard<'_, ()>) -> Result<[u8; 16]> {
        self.rescan()?;
        let now = now_ms();
        // Only a key this host can open: another host's key wrapped by a KMS key we do not
        // reach must not stop this one from making files.
        let newest = {
            let st = self.state.lock().unwrap();
            st.files
                .values()
                .filter(|f| self.in_lifetime(f, now) && self.opens(f))
                .max_by_key(|f| (f.created, f.key_id))
                .map(|f| f.key_id)
        };
        let id = match newest {
            Some(id) => id,
            None => self.make(gate)?,
        };
        self.state.lock().unwrap().current = Some(id);
        Ok(id)
    }

    /// Make a new intermediate key now and wrap new DEKs with it (`envfs key
    /// rotate-intermediate`). Returns its id.
    pub fn rotate(&self) -> Result<[u8; 16]> {
        if !self.can_make() {
            return Err(Error::Invalid(if self.lifetime.is_none() {
                "the key hierarchy is off for this vault (envfs key hierarchy on)".into()
            } else {
                "no KMS key of the vault is reachable to make an intermediate key".into()
            }));
        }
        let gate = self.keys_gate.lock().unwrap();
        self.rescan()?;
        let id = self.make(&gate)?;
        self.state.lock().unwrap().current = Some(id);
        Ok(id)
    }

    /// Generate an intermediate key with the first KMS key, wrap it with the others, and
    /// write its file (never over an existing one). The KMS calls and the write are made
    /// under `keys_gate` (one key made at a time), not `state`.
    fn make(&self, _gate: &MutexGuard<'_, ()>) -> Result<[u8; 16]> {
        let first = self.services.first().ok_or_else(|| {
            Error::KeyService(
                "no KMS key of the vault is reachable to make an intermediate key".into(),
            )
        })?;
        let key_id: [u8; 16] = random::array();
        let ctx = KeyContext::intermediate_key(self.vault_id, key_id);
        let (secret, slot) = first.generate(&ctx)?;
        let mut slots = vec![slot];
        for other in &self.services[1..] {
            slots.push(other.wrap(&secret, &ctx)?);
        }
        let created = now_ms();
        let lifetime = self.lifetime.map_or(0, |l| l.as_millis() as u64);
        let file = IntermediateKeyFile {
            vault_id: self.vault_id,
            key_id,
            created,
            expires: created.saturating_add(lifetime),
            commitment: commitment(&secret, &key_id),
            slots,
        };
        self.write(&file, false)?;
        self.made.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap();
        st.unwrapped.insert(
            key_id,
            Unwrapped {
                cipher: Arc::new(wrap_cipher(&secret, &key_id)),
                at: Instant::now(),
            },
        );
        st.files.insert(key_id, file);
        tracing::info!(
            "made intermediate key {} (wraps new files' keys)",
            IntermediateKeyFile::file_name(&key_id)
        );
        Ok(key_id)
    }

    /// Write `file` with its MAC: to a temporary file, fsynced, then linked into place (a new
    /// key: never over another) or renamed over the old one (its slots brought in line).
    fn write(&self, file: &IntermediateKeyFile, replace: bool) -> Result<()> {
        let mut bytes = file.encode_body().map_err(Error::Invalid)?;
        let mac = hmac32(&self.mac_key, &[&bytes]);
        bytes.extend_from_slice(&mac);
        let name = IntermediateKeyFile::file_name(&file.key_id);
        let root = BackingRoot::open(&self.root)?.root()?;
        match root.mkdir(OsStr::new(INTERMEDIATE_DIR), 0o700) {
            Ok(()) => root.sync()?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let dir = root.subdir(OsStr::new(INTERMEDIATE_DIR))?;
        let tmp = format!(
            "{}{}",
            crate::format::intermediate::INTERMEDIATE_TMP_PREFIX,
            hex::encode(random::array::<8>())
        );
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = dir.open_file(
                OsStr::new(&tmp),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            if replace {
                dir.rename(OsStr::new(&tmp), &dir, OsStr::new(&name), 0)?;
            } else {
                dir.link(OsStr::new(&tmp), &dir, OsStr::new(&name))?;
            }
            dir.sync()
        })();
        let _ = dir.unlink(OsStr::new(&tmp));
        result.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot write intermediate key {}: {e}", self.shown(&name)),
            ))
        })
    }

    /// The slot key id of the key new DEKs are wrapped with now (making one if needed).
    pub fn current_slot_key(&self) -> Result<String> {
        self.current()
            .map(|(id, _)| IntermediateKeyFile::slot_key(&id))
    }

    /// Bring every intermediate-key file's slots in line with `wanted` (the vault's KMS
    /// keys, in config order), so that a KMS key added to or removed from the vault opens or
    /// stops opening every key — one call per intermediate key, not per file. A key that
    /// loses a slot is retired as well (`retire`). Returns how many files were rewritten;
    /// keys this host cannot unwrap are reported in `failed`.
    pub fn bring_in_line(
        &self,
        wanted: &[Arc<dyn KeyProvider>],
        failed: &mut Vec<(PathBuf, String)>,
    ) -> Result<usize> {
        let _gate = self.keys_gate.lock().unwrap();
        self.rescan()?;
        let mut files: Vec<IntermediateKeyFile> =
            self.state.lock().unwrap().files.values().cloned().collect();
        files.sort_by_key(|f| f.key_id);
        let mut rewritten = 0;
        for file in files {
            let id = file.key_id;
            let same = file.slots.len() == wanted.len()
                && file.slots.iter().zip(wanted).all(|(s, w)| w.recognises(s));
            if same {
                continue;
            }
            let path = self
                .root
                .join(INTERMEDIATE_DIR)
                .join(IntermediateKeyFile::file_name(&id));
            let result = (|| -> Result<()> {
                let secret = self.unwrap_secret(&file)?;
                let ctx = KeyContext::intermediate_key(self.vault_id, id);
                let mut slots = Vec::with_capacity(wanted.len());
                for w in wanted {
                    match file.slots.iter().find(|s| w.recognises(s)) {
                        Some(s) => slots.push(s.clone()),
                        None => slots.push(w.wrap(&secret, &ctx)?),
                    }
                }
                let dropped = file
                    .slots
                    .iter()
                    .any(|s| !wanted.iter().any(|w| w.recognises(s)));
                let new = IntermediateKeyFile {
                    slots,
                    expires: if dropped {
                        retired_at(&file)
                    } else {
                        file.expires
                    },
                    ..file.clone()
                };
                self.write(&new, true)?;
                self.state.lock().unwrap().files.insert(id, new);
                Ok(())
            })();
            match result {
                Ok(()) => rewritten += 1,
                Err(e) => failed.push((path, e.to_string())),
            }
        }
        Ok(rewritten)
    }

    /// Retire, now, every intermediate key that `kms_key` (a KMS key being removed from the
    /// vault) wraps: whoever holds that KMS key can unwrap these keys from any copy of
    /// their files (a sync client's history, a NAS snapshot), so no new DEK may be wrapped
    /// by them. Their files get `expires` = now (their slots stay until `envfs rewrap`, as
    /// a removed key's header slots do); the next new file makes a key the removed one
    /// never wrapped, and running mounts follow within `RESCAN`. No KMS call. Returns how
    /// many keys were retired.
    pub fn retire(&self, kms_key: &KeySlot) -> Result<usize> {
        let _gate = self.keys_gate.lock().unwrap();
        self.rescan()?;
        let now = now_ms();
        let mut files: Vec<IntermediateKeyFile> = self
            .state
            .lock()
            .unwrap()
            .files
            .values()
            .filter(|f| f.expires > now)
            .filter(|f| {
                f.slots
                    .iter()
                    .any(|s| s.provider == kms_key.provider && s.key_id == kms_key.key_id)
            })
            .cloned()
            .collect();
        files.sort_by_key(|f| f.key_id);
        for file in &files {
            let retired = IntermediateKeyFile {
                expires: retired_at(file),
                ..file.clone()
            };
            self.write(&retired, true)?;
            let mut st = self.state.lock().unwrap();
            if st.current == Some(file.key_id) {
                st.current = None;
            }
            st.files.insert(file.key_id, retired);
        }
        Ok(files.len())
    }

    /// The intermediate key of `file`, unwrapped by the first KMS key of the vault that
    /// opens one of its slots (one call), and checked against its commitment.
    fn unwrap_secret(&self, file: &IntermediateKeyFile) -> Result<Secret32> {
        let shown = || self.shown(&IntermediateKeyFile::file_name(&file.key_id));
        let ctx = KeyContext::intermediate_key(self.vault_id, file.key_id);
        let mut failure = None;
        for service in &self.services {
            for slot in file.slots.iter().filter(|s| service.recognises(s)) {
                match service.unwrap(slot, &ctx) {
                    Ok(s) if bool::from(commitment(&s, &file.key_id).ct_eq(&file.commitment)) => {
                        return Ok(s);
                    }
                    Ok(_) => {
                        return Err(Error::CorruptConfig(format!(
                            "intermediate key {}: a key slot does not match its commitment",
                            shown()
                        )));
                    }
                    Err(e) => failure = Some(e),
                }
            }
        }
        // Not `WrongKey` when no slot is ours: that would read as a damaged header.
        Err(failure.unwrap_or_else(|| {
            Error::KeyService(format!(
                "intermediate key {} is wrapped only by {}, none of which this host reaches",
                shown(),
                file.slots
                    .iter()
                    .map(|s| format!("{} {}", s.provider.name(), s.key_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }))
    }

    /// The expired intermediate keys that no header uses (`in_use`, from a complete walk of
    /// the vault) and that are not the current one. Nothing removes them: in a synced
    /// folder a host that has not synced yet may hold files wrapped by one, and this host
    /// cannot see those headers (rewrap reports the count; OPERATIONS.md says when removing
    /// one by hand is safe).
    pub fn unused(&self, in_use: &HashSet<[u8; 16]>) -> Result<Vec<[u8; 16]>> {
        self.unused_at(in_use, now_ms())
    }

    fn unused_at(&self, in_use: &HashSet<[u8; 16]>, now: u64) -> Result<Vec<[u8; 16]>> {
        let _gate = self.keys_gate.lock().unwrap();
        self.rescan()?;
        let st = self.state.lock().unwrap();
        let current = st.current;
        let mut unused: Vec<[u8; 16]> = st
            .files
            .values()
            .filter(|f| !in_use.contains(&f.key_id) && Some(f.key_id) != current)
            .filter(|f| now > f.expires)
            .map(|f| f.key_id)
            .collect();
        unused.sort();
        Ok(unused)
    }

    pub fn report(&self) -> HierarchyReport {
        let st = self.state.lock().unwrap();
        HierarchyReport {
            lifetime_s: self.lifetime.map(|l| l.as_secs()),
            current: st.current.and_then(|id| {
                st.files
                    .get(&id)
                    .map(|f| (IntermediateKeyFile::file_name(&id), f.created / 1000))
            }),
            known: st.files.len(),
            unwrapped: st
                .unwrapped
                .values()
                .filter(|u| u.at.elapsed() < self.cache_ttl)
                .count(),
            made: self.made.load(Ordering::Relaxed),
            wrapped: self.wrapped.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }
}

impl KeyProvider for Hierarchy {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Intermediate
    }

    fn key_id(&self) -> &str {
        &self.name
    }

    fn recognises(&self, slot: &KeySlot) -> bool {
        slot.provider == ProviderKind::Intermediate
            && IntermediateKeyFile::id_of_slot_key(&slot.key_id).is_some()
    }

    fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> Result<KeySlot> {
        let file_id = ctx
            .file_id
            .ok_or_else(|| Error::Invalid("an intermediate key wraps file keys only".into()))?;
        let (key_id, cipher) = self.current()?;
        let nonce: [u8; 12] = random::array();
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(secret.expose());
        let tag = cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &dek_aad(ctx, &file_id, &key_id),
                (&mut wrapped[12..]).into(),
            )
            .expect("32-byte message");
        wrapped.extend_from_slice(&tag);
        self.wrapped.fetch_add(1, Ordering::Relaxed);
        Ok(KeySlot {
            provider: ProviderKind::Intermediate,
            key_id: IntermediateKeyFile::slot_key(&key_id),
            wrapped,
        })
    }

    fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> Result<Secret32> {
        let not_authentic = || Error::WrongKey("the intermediate-key slot does not unwrap".into());
        let (Some(key_id), Some(file_id)) = (
            IntermediateKeyFile::id_of_slot_key(&slot.key_id),
            ctx.file_id,
        ) else {
            return Err(not_authentic());
        };
        if slot.wrapped.len() != WRAPPED_LEN {
            return Err(not_authentic());
        }
        let cipher = self.cipher(&key_id)?;
        let mut body = Zeroizing::new([0u8; 32]);
        body.copy_from_slice(&slot.wrapped[12..44]);
        let nonce = Nonce::try_from(&slot.wrapped[..12]).map_err(|_| not_authentic())?;
        let tag = Tag::try_from(&slot.wrapped[44..]).map_err(|_| not_authentic())?;
        cipher
            .decrypt_inout_detached(
                &nonce,
                &dek_aad(ctx, &file_id, &key_id),
                (&mut body[..]).into(),
                &tag,
            )
            .map_err(|_| not_authentic())?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Secret32::from_bytes(*body))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local::LocalKeyProvider;

    /// A stand-in for a KMS key (a local key): the hierarchy only needs wrap and unwrap.
    fn service(byte: u8) -> Arc<dyn KeyProvider> {
        Arc::new(LocalKeyProvider::from_kek(&Secret32::from_bytes(
            [byte; 32],
        )))
    }

    fn hierarchy(
        root: &Path,
        lifetime: Option<u64>,
        services: Vec<Arc<dyn KeyProvider>>,
    ) -> Hierarchy {
        Hierarchy::new(
            root,
            [1; 16],
            &Secret32::from_bytes([2; 32]),
            lifetime.map(Duration::from_secs),
            Duration::from_secs(300),
            services,
        )
    }

    fn intermediate_files(root: &Path) -> usize {
        std::fs::read_dir(root.join(INTERMEDIATE_DIR))
            .unwrap()
            .count()
    }

    #[test]
    fn deks_wrap_under_the_current_key_and_open_from_a_fresh_process() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        let ctx = KeyContext::file([1; 16], [3; 16]);
        let dek = Secret32::from_bytes([4; 32]);
        let slot = h.wrap(&dek, &ctx).unwrap();
        let again = h.wrap(&dek, &ctx).unwrap();
        assert_eq!(slot.key_id, again.key_id, "one key while in its lifetime");
        assert_eq!(h.report().made, 1);
        // Another mount: reads the key's file, unwraps it once.
        let other = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        assert_eq!(other.unwrap(&slot, &ctx).unwrap(), dek);
        // Bound to the file, and to the key.
        assert!(
            other
                .unwrap(&slot, &KeyContext::file([1; 16], [5; 16]))
                .is_err()
        );
        let mut moved = slot.clone();
        moved.key_id = IntermediateKeyFile::slot_key(&[9; 16]);
        assert!(other.unwrap(&moved, &ctx).is_err());
        // Without the KMS key, nothing opens.
        let stranger = hierarchy(dir.path(), Some(3600), vec![service(8)]);
        assert!(stranger.unwrap(&slot, &ctx).is_err());
        // A rotation makes a second key; the first still opens its files.
        let new = h.rotate().unwrap();
        let after = h.wrap(&dek, &ctx).unwrap();
        assert_eq!(after.key_id, IntermediateKeyFile::slot_key(&new));
        assert_ne!(after.key_id, slot.key_id);
        assert_eq!(h.unwrap(&slot, &ctx).unwrap(), dek);
    }

    #[test]
    fn a_modified_or_foreign_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        let ctx = KeyContext::file([1; 16], [3; 16]);
        let slot = h.wrap(&Secret32::from_bytes([4; 32]), &ctx).unwrap();
        let id = IntermediateKeyFile::id_of_slot_key(&slot.key_id).unwrap();
        let path = dir
            .path()
            .join(INTERMEDIATE_DIR)
            .join(IntermediateKeyFile::file_name(&id));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[50] ^= 1; // the creation time
        std::fs::write(&path, &bytes).unwrap();
        let err = hierarchy(dir.path(), Some(3600), vec![service(7)])
            .unwrap(&slot, &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("authentication failed"), "{err}");
        // Another vault's secret does not accept it either (restored, then checked).
        bytes[50] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let foreign = Hierarchy::new(
            dir.path(),
            [1; 16],
            &Secret32::from_bytes([3; 32]),
            Some(Duration::from_secs(3600)),
            Duration::from_secs(300),
            vec![service(7)],
        );
        assert!(foreign.unwrap(&slot, &ctx).is_err());
        // Gone: says so.
        std::fs::remove_file(&path).unwrap();
        let err = hierarchy(dir.path(), Some(3600), vec![service(7)])
            .unwrap(&slot, &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not on the backing store"), "{err}");
    }

    #[test]
    fn slots_follow_the_kms_keys_and_unused_keys_are_counted_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        let ctx = KeyContext::file([1; 16], [3; 16]);
        let dek = Secret32::from_bytes([4; 32]);
        let slot = h.wrap(&dek, &ctx).unwrap();
        // A second KMS key, then the first removed: the key file follows, headers do not.
        let both = [service(7), service(8)];
        let mut failed = Vec::new();
        assert_eq!(h.bring_in_line(&both, &mut failed).unwrap(), 1);
        assert_eq!(h.bring_in_line(&both, &mut failed).unwrap(), 0);
        let only_new = hierarchy(dir.path(), Some(3600), vec![service(8)]);
        assert_eq!(
            only_new.bring_in_line(&[service(8)], &mut failed).unwrap(),
            1
        );
        assert!(failed.is_empty(), "{failed:?}");
        let fresh = hierarchy(dir.path(), Some(3600), vec![service(8)]);
        assert_eq!(fresh.unwrap(&slot, &ctx).unwrap(), dek);
        assert!(
            hierarchy(dir.path(), Some(3600), vec![service(7)])
                .unwrap(&slot, &ctx)
                .is_err()
        );
        // Unused means: expired (here: retired when it lost KMS key 7's slot), and in no
        // header seen. Never removed.
        let id = IntermediateKeyFile::id_of_slot_key(&slot.key_id).unwrap();
        let later = now_ms() + 3600 * 1000 + 10;
        assert!(fresh.unused(&HashSet::from([id])).unwrap().is_empty());
        assert_eq!(fresh.unused(&HashSet::new()).unwrap(), vec![id]);
        let kept = hierarchy(dir.path(), Some(3600), vec![service(8)]);
        let next = kept.wrap(&dek, &ctx).unwrap();
        let next_id = IntermediateKeyFile::id_of_slot_key(&next.key_id).unwrap();
        assert!(
            kept.unused(&HashSet::new()).unwrap() == vec![id],
            "the new key is not expired"
        );
        let off = hierarchy(dir.path(), None, vec![service(8)]);
        assert!(
            off.unused_at(&HashSet::from([id, next_id]), later)
                .unwrap()
                .is_empty()
        );
        let mut both_unused = vec![id, next_id];
        both_unused.sort();
        assert_eq!(off.unused_at(&HashSet::new(), later).unwrap(), both_unused);
        assert_eq!(intermediate_files(dir.path()), 2, "still there");
        assert!(off.wrap(&dek, &ctx).is_err(), "off: no key wraps new files");
    }

    #[test]
    fn a_key_file_rejected_half_written_is_taken_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        let ctx = KeyContext::file([1; 16], [3; 16]);
        h.wrap(&Secret32::from_bytes([4; 32]), &ctx).unwrap();
        let mount = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        mount.wrap(&Secret32::from_bytes([4; 32]), &ctx).unwrap();
        // Another host's new key, arriving half-written.
        let id = h.rotate().unwrap();
        let path = dir
            .path()
            .join(INTERMEDIATE_DIR)
            .join(IntermediateKeyFile::file_name(&id));
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let rescan = |m: &Hierarchy| {
            let _gate = m.keys_gate.lock().unwrap();
            m.rescan().unwrap();
            m.report().known
        };
        assert_eq!(rescan(&mount), 1, "not authentic: not used");
        assert_eq!(rescan(&mount), 1, "the same bytes: not read as new");
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(rescan(&mount), 2, "complete now");
        assert!(mount.state.lock().unwrap().rejected.is_empty());
    }

    /// A KMS stand-in whose unwraps can be held up: the first held call reports on
    /// `entered` and waits for `release`.
    struct Held {
        inner: Arc<dyn KeyProvider>,
        hold: std::sync::atomic::AtomicBool,
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl KeyProvider for Held {
        fn kind(&self) -> ProviderKind {
            self.inner.kind()
        }
        fn key_id(&self) -> &str {
            self.inner.key_id()
        }
        fn wrap(&self, secret: &Secret32, ctx: &KeyContext) -> Result<KeySlot> {
            self.inner.wrap(secret, ctx)
        }
        fn unwrap(&self, slot: &KeySlot, ctx: &KeyContext) -> Result<Secret32> {
            if self.hold.swap(false, Ordering::SeqCst) {
                self.entered.send(()).unwrap();
                let _ = self.release.lock().unwrap().recv();
            }
            self.inner.unwrap(slot, ctx)
        }
    }

    #[test]
    fn a_slow_kms_call_does_not_stall_files_under_a_key_already_held() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path(), Some(3600), vec![service(7)]);
        let ctx = KeyContext::file([1; 16], [3; 16]);
        let dek = Secret32::from_bytes([4; 32]);
        let old_slot = h.wrap(&dek, &ctx).unwrap();
        h.rotate().unwrap();
        // Another mount, with the current key unwrapped.
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        let (release, release_rx) = std::sync::mpsc::channel();
        let kms = Arc::new(Held {
            inner: service(7),
            hold: false.into(),
            entered: entered_tx,
            release: Mutex::new(release_rx),
        });
        let other = Arc::new(hierarchy(dir.path(), Some(3600), vec![kms.clone()]));
        let new_slot = other.wrap(&dek, &ctx).unwrap();
        assert_ne!(new_slot.key_id, old_slot.key_id);
        // An open under the old key waits for KMS...
        kms.hold.store(true, Ordering::SeqCst);
        let opener = {
            let (other, old_slot, ctx) = (other.clone(), old_slot.clone(), ctx);
            std::thread::spawn(move || other.unwrap(&old_slot, &ctx).map(|_| ()))
        };
        entered.recv().unwrap();
        // ...while new files and opens under the current key go on. (Bounded, so that a
        // stall fails the test instead of hanging it.)
        let (done_tx, done) = std::sync::mpsc::channel();
        {
            let (other, new_slot, ctx) = (other.clone(), new_slot.clone(), ctx);
            std::thread::spawn(move || {
                let dek = Secret32::from_bytes([4; 32]);
                let made = other.wrap(&dek, &ctx).is_ok();
                let opened = other.unwrap(&new_slot, &ctx).is_ok_and(|d| d == dek);
                let _ = done_tx.send(made && opened && other.report().known == 2);
            });
        }
        let went_on = done.recv_timeout(Duration::from_secs(60));
        release.send(()).unwrap();
        assert_eq!(went_on, Ok(true), "stalled behind the KMS call");
        opener.join().unwrap().unwrap();
    }

    #[test]
    fn removing_a_kms_key_retires_the_keys_it_wraps_here_and_in_running_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let both = vec![service(7), service(8)];
        let h = hierarchy(dir.path(), Some(3600), both.clone());
        let ctx = KeyContext::file([1; 16], [3; 16]);
        let dek = Secret32::from_bytes([4; 32]);
        let slot = h.wrap(&dek, &ctx).unwrap();
        let mount = hierarchy(dir.path(), Some(3600), both.clone());
        assert_eq!(mount.wrap(&dek, &ctx).unwrap().key_id, slot.key_id);
        let id = IntermediateKeyFile::id_of_slot_key(&slot.key_id).unwrap();
        let removed = h.state.lock().unwrap().files[&id].slots[0].clone();
        assert!(both[0].recognises(&removed));
        // The other KMS key wraps nothing retired.
        let kept = h.state.lock().unwrap().files[&id].slots[1].clone();
        let mut unrelated = kept.clone();
        unrelated.key_id.push('x');
        assert_eq!(h.retire(&unrelated).unwrap(), 0);

        assert_eq!(h.retire(&removed).unwrap(), 1);
        assert_eq!(h.retire(&removed).unwrap(), 0, "already retired");
        let after = h.wrap(&dek, &ctx).unwrap();
        assert_ne!(after.key_id, slot.key_id, "a new key wraps new files");
        // Old files still open; the retired key's slots stay until rewrap.
        assert_eq!(h.unwrap(&slot, &ctx).unwrap(), dek);
        assert_eq!(intermediate_files(dir.path()), 2);
        // A running mount follows at its next listing.
        mount.state.lock().unwrap().scanned = None;
        assert_eq!(mount.wrap(&dek, &ctx).unwrap().key_id, after.key_id);
        // Rewrap drops the slot, and a key that loses one is retired there too.
        let fresh = hierarchy(dir.path(), Some(3600), both.clone());
        let current = fresh.wrap(&dek, &ctx).unwrap();
        let mut failed = Vec::new();
        assert_eq!(
            fresh
                .bring_in_line(&[both[1].clone()], &mut failed)
                .unwrap(),
            2
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert_ne!(fresh.wrap(&dek, &ctx).unwrap().key_id, current.key_id);
    }
}
