//! The layering check (scripts/check-layering.sh, run by CI) passes on this tree and fails,
//! naming file and line, on copies of it that break each rule.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{copy_tree, run, stderr_text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(src: &Path) -> (bool, String) {
    let out = run(Command::new("bash")
        .arg(repo().join("scripts/check-layering.sh"))
        .arg(src));
    (out.status.success(), stderr_text(&out))
}

#[test]
fn this_tree_keeps_its_layers() {
    let (ok, err) = check(&repo().join("src"));
    assert!(ok, "{err}");
}

#[test]
fn each_rule_fails_when_broken() {
    let cases = [
        (
            "fs/mod.rs",
            "use fuser::Request;\n",
            "fs/mod.rs:1: fuser outside src/fuse/",
        ),
        (
            "vault/mod.rs",
            "fn x() { let _ = aws_sdk_kms::Client::new; }\n",
            "vault/mod.rs:1: the AWS SDK outside src/keys/",
        ),
        (
            "format/config.rs",
            "use crate::cli::exit;\n",
            "format/config.rs:1: 'format' uses crate::cli, a layer above it",
        ),
        (
            "keys/local.rs",
            "use crate::{crypto::Secret32, vault::Vault};\n",
            "keys/local.rs:1: 'keys' uses crate::vault, a layer above it",
        ),
        (
            "fsck/walk.rs",
            "fn x(p: &std::path::Path) { let _ = std::fs::symlink_metadata(p); }\n",
            "fsck/walk.rs:1: a backing-store call outside src/backing/",
        ),
        (
            "fuse/mod.rs",
            "fn x() { unsafe { libc::syncfs(3) }; }\n",
            "fuse/mod.rs:1: a backing-store call outside src/backing/",
        ),
        (
            "fs/mod.rs",
            "fn x(p: &std::path::Path) { let _ = std::fs::OpenOptions::new().open(p); }\n",
            "fs/mod.rs:1: a backing-store call outside src/backing/",
        ),
    ];
    for (file, line, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        copy_tree(&repo().join("src"), &src);
        let path = src.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{line}{text}")).unwrap();
        let (ok, err) = check(&src);
        assert!(!ok, "{file}: a broken rule passed");
        assert!(
            err.contains(expected),
            "{file}: expected {expected:?} in:\n{err}"
        );
    }
    // Names in comments and strings are not uses.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    copy_tree(&repo().join("src"), &src);
    let path = src.join("format/config.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("// fuser::Request and crate::cli are only named here\nconst _S: &str = \"aws_sdk_kms::x\";\n{text}"),
    )
    .unwrap();
    let (ok, err) = check(&src);
    assert!(ok, "{err}");
}
