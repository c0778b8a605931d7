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
use std::sync::{Arc, Mutex};
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
    /// Names already reported as not authentic (reported once, not on every listing).
    rejected: HashSet<String>,
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
    state: Mutex<State>,
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
    /// already known.
    fn file_of(&self, st: &mut State, key_id: &[u8; 16]) -> Result<IntermediateKeyFile> {
        if let Some(f) = st.files.get(key_id) {
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
        st.files.insert(*key_id, file.clone());
        Ok(file)
    }

    /// Intermediate key `key_id`, unwrapped: from memory while fresh, else by one call to
    /// a KMS key of the vault.
    fn cipher(&self, st: &mut State, key_id: &[u8; 16]) -> Result<Arc<Aes256Gcm>> {
        if let Some(u) = st.unwrapped.get(key_id)
            && u.at.elapsed() < self.cache_ttl
        {
            return Ok(u.cipher.clone());
        }
        let file = self.file_of(st, key_id)?;
        let secret = self.unwrap_secret(&file)?;
        let cipher = Arc::new(wrap_cipher(&secret, key_id));
        st.unwrapped.insert(
            *key_id,
            Unwrapped {
                cipher: cipher.clone(),
                at: Instant::now(),
            },
        );
        Ok(cipher)
    }

    /// List `envfs.keys/` and learn the authentic keys not known yet. A file that is not
    /// authentic is reported once and never used.
    fn rescan(&self, st: &mut State) -> Result<()> {
        st.scanned = Some(Instant::now());
        let dir = match self.dir() {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for name in dir.list()? {
            let name = name.to_string_lossy().into_owned();
            let Some(key_id) = IntermediateKeyFile::id_of_name(&name) else {
                continue;
            };
            if st.files.contains_key(&key_id) || st.rejected.contains(&name) {
                continue;
            }
            match self
                .read(&dir, &name)
                .map_err(Error::from)
                .and_then(|b| self.verify(&name, &b))
            {
                Ok(file) => {
                    st.files.insert(key_id, file);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!("{e}; it is not used");
                    st.rejected.insert(name);
                }
            }
        }
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

    /// The key new DEKs are wrapped with: the newest one in its lifetime, or a new one.
    fn current(&self) -> Result<([u8; 16], Arc<Aes256Gcm>)> {
        if self.lifetime.is_none() {
            return Err(Error::Invalid(
                "the key hierarchy is off for this vault: no intermediate key wraps new files"
                    .into(),
            ));
        }
        let mut st = self.state.lock().unwrap();
        let now = now_ms();
        let fresh = st.scanned.is_some_and(|at| at.elapsed() < RESCAN);
        if let Some(id) = st.current
            && fresh
            && st
                .files
                .get(&id)
                .is_some_and(|f| self.in_lifetime(f, now) && self.opens(f))
        {
            let cipher = self.cipher(&mut st, &id)?;
            return Ok((id, cipher));
        }
        self.rescan(&mut st)?;
        // Only a key this host can open: another host's key wrapped by a KMS key we do not
        // reach must not stop this one from making files.
        let newest = st
            .files
            .values()
            .filter(|f| self.in_lifetime(f, now) && self.opens(f))
            .max_by_key(|f| (f.created, f.key_id))
            .map(|f| f.key_id);
        let id = match newest {
            Some(id) => id,
            None => self.make(&mut st)?,
        };
        st.current = Some(id);
        let cipher = self.cipher(&mut st, &id)?;
        Ok((id, cipher))
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
        let mut st = self.state.lock().unwrap();
        self.rescan(&mut st)?;
        let id = self.make(&mut st)?;
        st.current = Some(id);
        Ok(id)
    }

    /// Generate an intermediate key with the first KMS key, wrap it with the others, and
    /// write its file (never over an existing one).
    fn make(&self, st: &mut State) -> Result<[u8; 16]> {
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
    /// stops opening every key — one call per intermediate key, not per file. Returns how
    /// many files were rewritten; keys this host cannot unwrap are reported in `failed`.
    pub fn bring_in_line(
        &self,
        wanted: &[Arc<dyn KeyProvider>],
        failed: &mut Vec<(PathBuf, String)>,
    ) -> Result<usize> {
        let mut st = self.state.lock().unwrap();
        self.rescan(&mut st)?;
        let mut ids: Vec<[u8; 16]> = st.files.keys().copied().collect();
        ids.sort();
        let mut rewritten = 0;
        for id in ids {
            let file = st.files[&id].clone();
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
                let new = IntermediateKeyFile {
                    slots,
                    ..file.clone()
                };
                self.write(&new, true)?;
                st.files.insert(id, new);
                Ok(())
            })();
            match result {
                Ok(()) => rewritten += 1,
                Err(e) => failed.push((path, e.to_string())),
            }
        }
        Ok(rewritten)
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
        let mut st = self.state.lock().unwrap();
        self.rescan(&mut st)?;
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
        let cipher = {
            let mut st = self.state.lock().unwrap();
            self.cipher(&mut st, &key_id)?
        };
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
        // Unused means: expired, and in no header seen. Never removed.
        let id = IntermediateKeyFile::id_of_slot_key(&slot.key_id).unwrap();
        let later = now_ms() + 3600 * 1000 + 10;
        assert!(
            fresh.unused(&HashSet::new()).unwrap().is_empty(),
            "not expired"
        );
        let off = hierarchy(dir.path(), None, vec![service(8)]);
        assert!(
            off.unused_at(&HashSet::from([id]), later)
                .unwrap()
                .is_empty()
        );
        assert_eq!(off.unused_at(&HashSet::new(), later).unwrap(), vec![id]);
        assert_eq!(intermediate_files(dir.path()), 1, "still there");
        assert!(off.wrap(&dek, &ctx).is_err(), "off: no key wraps new files");
    }
}
