//! Build facts for `envfs --version`: the git commit the binary was built from and the
//! versions of the crates that do its security-relevant work, read from Cargo.lock (the
//! versions actually linked, not the ranges Cargo.toml allows).

use std::process::Command;

/// The crates `--version` names, in the order it names them.
const REPORTED: &[&str] = &["fuser", "aws-sdk-kms", "aws-lc-rs", "aes-gcm", "aes-siv"];

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .map(|c| {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-modified") } else { c }
        })
        .unwrap_or_else(|| "unknown (not built from a git checkout)".into());
    println!("cargo:rustc-env=ENVFS_GIT_COMMIT={commit}");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let versions: Vec<String> = REPORTED
        .iter()
        .map(|name| format!("{name} {}", locked_version(&lock, name).unwrap_or("?")))
        .collect();
    println!("cargo:rustc-env=ENVFS_DEPENDENCIES={}", versions.join(", "));
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of `name` in Cargo.lock (the first, if several are locked).
fn locked_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            return lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"');
        }
    }
    None
}
