//! What every key file and host-side envfs file has in common: where they live, and how a
//! new one is written (mode 0600 in 0700 directories, never over an existing file, synced).

use crate::error::{Error, Result};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Key files are a few lines; anything larger is not one (and is not read into memory).
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Key texts as read (after `keep_read_keys`), by the tag of their source (keys/source.rs;
/// for a key file, its path as given), so that a daemonized mount, which starts envfs
/// again, can be handed them (`take_read_keys`) rather than read its sources a second time:
/// a pipe (`--key-file /dev/stdin`, `<(…)`, `--key-fd`) would be drained by then, stdin
/// would be the daemon's own (empty) one, a key command would prompt again, and a file
/// could have changed.
static READ_KEYS: std::sync::Mutex<Vec<(Vec<u8>, Zeroizing<String>)>> =
    std::sync::Mutex::new(Vec::new());

/// The environment variable through which a daemon child learns which key texts its parent
/// hands it: `FD:TAG-IN-HEX` pairs, comma-separated. The descriptors are pipes the parent
/// wrote the texts into.
pub const HANDED_KEYS_ENV: &str = "ENVFS_KEY_FDS";

/// Whether `read_key_from` keeps a copy of what it reads: only in a `mount` about to
/// daemonize, the one process that hands key texts on. Everything else keeps none.
static KEEP_READ_KEYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keep the key texts read from now on, for `take_read_keys`.
pub fn keep_read_keys() {
    KEEP_READ_KEYS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The key texts read since `keep_read_keys`, by source tag (taken: each is handed on
/// once).
pub fn take_read_keys() -> Vec<(Vec<u8>, Zeroizing<String>)> {
    std::mem::take(&mut *READ_KEYS.lock().unwrap())
}

/// The descriptor a parent handed this process for the source tagged `tag`, if any.
fn handed_fd(tag: &[u8]) -> Option<i32> {
    let wanted = hex::encode(tag);
    std::env::var(HANDED_KEYS_ENV)
        .ok()?
        .split(',')
        .filter_map(|pair| pair.split_once(':'))
        .find(|(_, p)| *p == wanted)
        .and_then(|(fd, _)| fd.parse().ok())
}

/// Read a key file's text exactly once (it may be a pipe: `--key-file /dev/stdin` or
/// `<(…)`), bounded in size. Errors name the path, never the contents.
pub fn read_key_text(path: &Path) -> Result<Zeroizing<String>> {
    use std::os::unix::ffi::OsStrExt;
    let name = path.display().to_string();
    read_key_from(
        path.as_os_str().as_bytes(),
        (&format!("key file {name}"), &name),
        || std::fs::File::open(path).map(|f| Box::new(f) as Box<dyn std::io::Read>),
    )
}

/// Read the key text of the source tagged `tag` exactly once, bounded in size: from the
/// descriptor a parent handed this process for it if there is one (a daemonized mount),
/// else from what `open` gives. Errors say "cannot read NOUN" and "NAME is not an envfs
/// key file" (`(noun, name)`, e.g. "key file /k" and "/k").
pub fn read_key_from(
    tag: &[u8],
    (noun, what): (&str, &str),
    open: impl FnOnce() -> std::io::Result<Box<dyn std::io::Read>>,
) -> Result<Zeroizing<String>> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let cannot = |e: std::io::Error| Error::KeyFile(format!("cannot read {noun}: {e}"));
    let source: Box<dyn Read> = match handed_fd(tag) {
        // SAFETY: the parent passed this descriptor for exactly this source; it is ours
        // and read once.
        Some(fd) => Box::new(unsafe { std::fs::File::from_raw_fd(fd) }),
        None => open().map_err(cannot)?,
    };
    // Room for the whole bounded read up front: a growing buffer would leave copies of the
    // key text in freed memory.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
    source
        .take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(Error::KeyFile(format!(
            "{what} is not an envfs key file (larger than {MAX_KEY_FILE_LEN} bytes)"
        )));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => {
            let text = Zeroizing::new(text.to_string());
            if KEEP_READ_KEYS.load(std::sync::atomic::Ordering::Relaxed) {
                let kept = Zeroizing::new(text.to_string());
                READ_KEYS.lock().unwrap().push((tag.to_vec(), kept));
            }
            Ok(text)
        }
        Err(_) => Err(Error::KeyFile(format!("{what} is not an envfs key file"))),
    }
}

/// `$XDG_CONFIG_HOME/envfs`, falling back to `~/.config/envfs`.
pub fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("envfs"))
}

/// Create `path` with `text` (which may hold key material: it is wiped by the caller's
/// `Zeroizing`). Refuses to overwrite: that could destroy the only copy of a key.
pub fn create_private_file(path: &Path, text: &Zeroizing<String>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::KeyFile(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::KeyFile(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::KeyFile(format!("cannot write {}: {e}", path.display())))
}

/// Replace `path` with `text` atomically (a private temporary file, synced, renamed over
/// it), for host-side records that change; never for key files.
pub fn replace_private_file(path: &Path, text: &Zeroizing<String>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.tmp",
        hex::encode(crate::crypto::random::array::<6>())
    ));
    create_private_file(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::KeyFile(format!("cannot write {}: {e}", path.display()))
    })?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
