//! Where this host keeps what it knows of vaults (vault/known.rs, vault/pin.rs), and what
//! happens when it cannot.
//!
//! These records are state, not configuration: envfs writes them, nobody edits them, and
//! losing one only costs the first-use checks again. So they go where the conventions put
//! state, first match wins:
//!
//! 1. `$STATE_DIRECTORY` — systemd's `StateDirectory=` for the service running envfs;
//! 2. `$XDG_STATE_HOME/envfs` — the XDG base directory for state (absolute paths only, as
//!    the specification says);
//! 3. `/var/lib/envfs` — for root;
//! 4. `~/.local/state/envfs` — everyone else.
//!
//! envfs 0.2 kept them under `$XDG_CONFIG_HOME/envfs/trust/` (`~/.config/envfs/trust/`).
//! A record found only there is still read, and the next write puts it in the new place,
//! so upgrading forgets nothing.
//!
//! A host that cannot write its records (a read-only home, a service without a state
//! directory) still opens vaults, as SSH still connects when it cannot add to known_hosts:
//! the checks against what is already recorded run, and one warning per process says that
//! what this open taught the host is lost, and what to set.

use crate::crypto::Fingerprint;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The directory that holds the records (`<state>/trust`), or `None` when no convention
/// applies (no `$STATE_DIRECTORY`, `$XDG_STATE_HOME` or `$HOME`, and not root).
pub fn trust_dir() -> Option<PathBuf> {
    state_dir().map(|d| d.join("trust"))
}

fn state_dir() -> Option<PathBuf> {
    // systemd passes a colon-separated list when a unit names several state directories;
    // envfs's own is the first.
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY") {
        let dirs = dirs.to_string_lossy().into_owned();
        if let Some(first) = dirs.split(':').find(|d| Path::new(d).is_absolute()) {
            return Some(PathBuf::from(first));
        }
    }
    if let Some(xdg) = absolute_env("XDG_STATE_HOME") {
        return Some(xdg.join("envfs"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/lib/envfs"));
    }
    absolute_env("HOME").map(|h| h.join(".local/state/envfs"))
}

fn absolute_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// Where envfs 0.2 kept the records: read when the new place has none.
pub fn legacy_trust_dir() -> Option<PathBuf> {
    crate::keys::keyfile::config_dir().map(|d| d.join("trust"))
}

/// Which record to read: the one in `current` if it exists, else the envfs 0.2 one at the
/// same place under `legacy`.
pub fn readable(current: &Path, legacy: Option<PathBuf>) -> PathBuf {
    match legacy {
        Some(old) if !current.exists() && old.exists() => old,
        _ => current.to_path_buf(),
    }
}

/// Once a record is written in its new place, the envfs 0.2 copy goes: left behind, it
/// would come back into force if the new one were removed (as the messages that refuse a
/// replaced vault tell the operator to do).
pub fn retire_legacy(current: &Path, legacy: Option<PathBuf>) {
    if let Some(old) = legacy.filter(|old| old != current)
        && let Err(e) = std::fs::remove_file(&old)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(
            "cannot remove {} after moving it to {}: {e}",
            old.display(),
            current.display()
        );
    }
}

/// The sentence that says where records go, for messages.
pub const WHERE: &str = "host records go in $STATE_DIRECTORY (systemd's StateDirectory=), \
     else $XDG_STATE_HOME/envfs, else /var/lib/envfs for root, else ~/.local/state/envfs";

static WARNED: AtomicBool = AtomicBool::new(false);

/// Say, once per process, that this host could not record what it learnt of a vault. `why`
/// names the path and the error (never anything secret: records hold ids and digests).
pub fn warn_unrecorded(vault_id_hex: &str, why: &str, fingerprint: Option<&Fingerprint>) {
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let fingerprint = fingerprint.map_or("FINGERPRINT".to_string(), |f| f.to_string());
    tracing::warn!(
        "vault {vault_id_hex}: this host cannot record what it knows of the vault ({why}), so \
         a forged or rolled-back config met later will not be detected by what this open \
         learnt. {WHERE}: set XDG_STATE_HOME to a writable directory (or, for a systemd \
         service, StateDirectory=envfs), or pass --vault-fingerprint {fingerprint} on every \
         open"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_only_in_the_old_place_is_read_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("new/trust/ab");
        let old = dir.path().join("old/trust/ab");
        assert_eq!(readable(&current, Some(old.clone())), current);
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, "").unwrap();
        assert_eq!(readable(&current, Some(old.clone())), old);
        std::fs::create_dir_all(current.parent().unwrap()).unwrap();
        std::fs::write(&current, "").unwrap();
        assert_eq!(readable(&current, Some(old)), current);
    }
}
