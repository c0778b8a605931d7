//! Exit codes: one per kind of failure, so scripts can tell a wrong key from a corrupt vault.
//! The table is documented in docs/CLI.md; the numbers are a contract.

use crate::error::Error;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_A_VAULT: u8 = 3;
pub const CORRUPT_CONFIG: u8 = 4;
pub const UNSUPPORTED_VERSION: u8 = 5;
pub const KEY_FILE: u8 = 6;
pub const WRONG_KEY: u8 = 7;
pub const KEY_SERVICE: u8 = 8;
pub const KEY_PIN_MISMATCH: u8 = 9;
pub const ALREADY_EXISTS: u8 = 10;
pub const NOT_FOUND: u8 = 11;
pub const INTEGRITY: u8 = 12;
pub const MOUNT: u8 = 13;
pub const FUSE_UNAVAILABLE: u8 = 14;
/// `fsck` ran to the end and found problems (the findings are on stdout).
pub const FSCK_FOUND_PROBLEMS: u8 = 15;
/// `rewrap` or `rekey` could not process every file; rerunning finishes the job.
pub const INCOMPLETE: u8 = 16;
/// The vault secret's fingerprint is not the one this host, `--vault-fingerprint` or the
/// recovery key's proof vouches for: a forged or replaced config.
pub const VAULT_MISMATCH: u8 = 17;
/// The config is older (a lower generation) than one this host has seen.
pub const CONFIG_ROLLBACK: u8 = 18;

pub fn code_for(err: &Error) -> u8 {
    match err {
        Error::NotAVault(_) => NOT_A_VAULT,
        Error::CorruptConfig(_) => CORRUPT_CONFIG,
        Error::UnsupportedVersion(_) => UNSUPPORTED_VERSION,
        Error::KeyFile(_) => KEY_FILE,
        Error::WrongKey(_) => WRONG_KEY,
        Error::KeyService(_) => KEY_SERVICE,
        Error::KeyPinMismatch(_) => KEY_PIN_MISMATCH,
        Error::VaultMismatch(_) => VAULT_MISMATCH,
        Error::ConfigRollback(_) => CONFIG_ROLLBACK,
        Error::AlreadyExists(_) => ALREADY_EXISTS,
        Error::Integrity { .. } => INTEGRITY,
        Error::Mount(_) => MOUNT,
        Error::FuseUnavailable(_) => FUSE_UNAVAILABLE,
        Error::Reported(code, _) => *code,
        Error::Invalid(_) => USAGE,
        e if e.is_not_found() => NOT_FOUND,
        _ => FAILURE,
    }
}
