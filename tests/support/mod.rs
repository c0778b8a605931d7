//! The helpers every integration test shares (`mod support;`), in one tree:
//!
//! - here, binary-level helpers: the `envfs` binary under test, vaults it initialises
//!   ([`TestVault`]), real FUSE mounts ([`Mount`], undone when the guard drops, also when a
//!   test panics), the one command runner ([`run`], [`ok`], [`exit_code`], [`stderr_text`],
//!   [`stdout_text`], [`sh`]), backing-store walks, and the one source of test data
//!   ([`Rng`], [`pattern`]);
//! - [`fs_core`]: library-level helpers over the filesystem core (`envfs::fs::Fs`), with no
//!   binary and no mount ([`fs_core::CoreVault`]);
//! - [`golden_table`]: the frozen plaintext of the golden vaults (shared with
//!   examples/make_golden.rs);
//! - [`kms`]: a local KMS server with fault injection.
//!
//! Each test binary uses a different subset, hence `allow(dead_code)`; every item here has a
//! caller in some test.

#![allow(dead_code)]

pub mod fs_core;
pub mod golden_kms;
pub mod golden_table;
pub mod kms;
pub mod nas;
pub mod syncthing;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The binary under test: this build's, or the one `ENVFS_TEST_BIN` names (to show that a
/// test fails on an older envfs: build it elsewhere and point this at it).
pub fn envfs_bin() -> String {
    std::env::var("ENVFS_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_envfs").to_string())
}

/// A vault in a temp dir, with its own key file and config home.
pub struct TestVault {
    pub dir: TempDir,
    pub backing: PathBuf,
    pub key: PathBuf,
}

impl TestVault {
    pub fn new(init_args: &[&str]) -> TestVault {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        TestVault::init(dir, backing, init_args)
    }

    /// A vault whose backing directory is `backing` (made here: a NAS share's subdirectory,
    /// say), with its key file, config home and mountpoints in a temp dir of their own.
    pub fn new_at(backing: PathBuf, init_args: &[&str]) -> TestVault {
        TestVault::init(tempfile::tempdir().unwrap(), backing, init_args)
    }

    fn init(dir: TempDir, backing: PathBuf, init_args: &[&str]) -> TestVault {
        std::fs::create_dir(&backing).unwrap();
        let key = dir.path().join("vault.key");
        let out = run(Command::new(envfs_bin())
            .arg("init")
            .arg(&backing)
            .arg("--key-file")
            .arg(&key)
            .args(init_args)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_STATE_HOME", dir.path().join("config")));
        assert!(out.status.success(), "init failed: {}", stderr_text(&out));
        TestVault { dir, backing, key }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_STATE_HOME", self.dir.path().join("config"));
        c
    }

    /// `envfs key add` of a new recovery key file at `path`: a config change, so the vault
    /// moves to its next generation.
    pub fn add_recovery_key(&self, path: &Path) {
        ok(run(self
            .cmd()
            .args(["key", "add"])
            .arg(&self.backing)
            .arg("--key-file")
            .arg(&self.key)
            .arg("--new-key-file")
            .arg(path)));
    }

    /// `envfs key list` with the vault's key file: its output.
    pub fn key_list(&self) -> String {
        ok(run(self
            .cmd()
            .args(["key", "list"])
            .arg(&self.backing)
            .arg("--key-file")
            .arg(&self.key)))
    }

    /// A new empty directory to mount on.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn mount(&self, name: &str, opts: &[&str]) -> Mount {
        let mnt = self.mountpoint(name);
        let out = self.try_mount(&mnt, opts);
        assert!(out.status.success(), "mount failed: {}", stderr_text(&out));
        Mount::adopt(mnt)
    }

    /// `envfs mount -f BACKING MNT --key-file KEY`, ready to spawn.
    pub fn foreground_command(&self, mnt: &Path) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("mount")
            .arg("-f")
            .arg(&self.backing)
            .arg(mnt)
            .arg("--key-file")
            .arg(&self.key);
        cmd
    }

    /// A foreground mount on a new mountpoint `name`, live when this returns, with the
    /// daemon's stderr going to `log` when given.
    pub fn mount_foreground(
        &self,
        name: &str,
        log: Option<std::fs::File>,
    ) -> (Mount, std::process::Child) {
        let mnt = self.mountpoint(name);
        let mut cmd = self.foreground_command(&mnt);
        if let Some(log) = log {
            cmd.stderr(log);
        }
        let child = cmd.spawn().unwrap();
        let mount = Mount::adopt(mnt.clone());
        assert!(
            wait_until(Duration::from_secs(10), || is_mounted(&mnt)),
            "foreground mount did not come up"
        );
        (mount, child)
    }

    pub fn try_mount(&self, mnt: &Path, opts: &[&str]) -> Output {
        run(self
            .cmd()
            .arg("mount")
            .arg(&self.backing)
            .arg(mnt)
            .arg("--key-file")
            .arg(&self.key)
            .args(opts))
    }
}

/// A live mount; unmounted on drop (unless already unmounted through this guard).
pub struct Mount {
    pub path: PathBuf,
    done: bool,
}

impl Mount {
    /// Take responsibility for unmounting whatever gets mounted at `path`.
    pub fn adopt(path: PathBuf) -> Mount {
        Mount { path, done: false }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Unmount now and wait until the kernel no longer lists the mount.
    pub fn unmount(&mut self) {
        if std::mem::replace(&mut self.done, true) || !is_mounted(&self.path) {
            return;
        }
        let status = Command::new(envfs_bin())
            .arg("umount")
            .arg(&self.path)
            .status()
            .unwrap();
        if !status.success() {
            // Something still holds a file open: detach so the test run never leaks a mount.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        wait_until(Duration::from_secs(10), || !is_mounted(&self.path));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Run a command to completion, capturing stdout and stderr (panics only if it cannot be
/// started).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

/// The stdout of a command that must have succeeded (else panic with both outputs).
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        stderr_text(&out),
        stdout_text(&out)
    );
    stdout_text(&out)
}

/// The exit code of a command that exited (a command killed by a signal has none: panic).
#[track_caller]
pub fn exit_code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal, no exit code: {:?}", out.status))
}

pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run a shell command, panicking with its output if it fails.
pub fn sh(cwd: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "command failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every byte of every file and every name under `dir`, for plaintext searches.
pub fn backing_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    for entry in walk(dir) {
        if entry
            .to_string_lossy()
            .as_bytes()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return Some(entry);
        }
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let bytes = if meta.file_type().is_symlink() {
            std::fs::read_link(&entry)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_file() {
            std::fs::read(&entry).unwrap()
        } else {
            Vec::new()
        };
        if bytes.windows(needle.len()).any(|w| w == needle) {
            return Some(entry);
        }
        if let Ok(names) = xattr_names(&entry)
            && names.windows(needle.len()).any(|w| w == needle)
        {
            return Some(entry);
        }
    }
    None
}

fn xattr_names(path: &Path) -> std::io::Result<Vec<u8>> {
    let out = Command::new("getfattr")
        .arg("-h")
        .arg("-d")
        .arg("-m")
        .arg("-")
        .arg(path)
        .output()?;
    Ok(out.stdout)
}

/// Copy a backing directory (files, directories, symlinks as symlinks), e.g. a golden vault
/// into a writable place.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src).unwrap();
        if meta.is_dir() {
            copy_tree(&src, &dst);
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Every path below `dir` (not `dir` itself), in no particular order.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The tests' one pseudo-random generator (xorshift64), deterministic so that a failure
/// reproduces from its seed. A state of 0 stays 0: seed it with anything else.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Deterministic, non-repeating test content: a different stream per `seed`. The test data
/// of every test that does not need particular bytes; built on [`Rng`] (the seed is mixed
/// first, so seeds 0, 1, 2, … give unrelated streams and never the all-zero state in
/// practice). Not the golden vectors' content: that is frozen in `golden_table`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
    (0..len).map(|_| (rng.next() >> 24) as u8).collect()
}

/// The intermediate-key files of a vault's key hierarchy (`envfs.keys/`), by name (their
/// ids), sorted; none when the vault has none.
pub fn intermediate_keys(backing: &Path) -> Vec<String> {
    let dir = backing.join(envfs::format::intermediate::INTERMEDIATE_DIR);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
