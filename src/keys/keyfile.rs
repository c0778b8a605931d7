//! What every key file and host-side envfs file has in common: where they live, and how a
//! new one is written (mode 0600 in 0700 directories, never over an existing file, synced).

use crate::error::{Error, Result};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Key files are a few lines; anything larger is not one (and is not read into memory).
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Read a key file's text exactly once (it may be a pipe: `--key-file /dev/stdin` or
/// `<(…)`), bounded in size. Errors name the path, never the contents.
pub fn read_key_text(path: &Path) -> Result<Zeroizing<String>> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| Error::KeyFile(format!("cannot read key file {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    // Room for the whole bounded read up front: a growing buffer would leave copies of the
    // key text in freed memory.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(Error::KeyFile(format!(
            "{} is not an envfs key file (larger than {MAX_KEY_FILE_LEN} bytes)",
            path.display()
        )));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_string())),
        Err(_) => Err(Error::KeyFile(format!(
            "{} is not an envfs key file",
            path.display()
        ))),
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
