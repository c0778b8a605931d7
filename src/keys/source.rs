//! Where the operator's key text comes from: a file, stdin, an inherited descriptor, a
//! command's output, or a systemd credential. Every kind is read exactly once, bounded in
//! size, through `keyfile::read_key_from`, so a daemonized mount is handed what its parent
//! read instead of reading (or running) the source a second time.
//!
//! Errors name the source, never what it produced: a key command's output or a passphrase
//! piped on stdin must not reach a log.

use crate::error::{Error, Result};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// One way of giving a key (`--key-file`, `--key-fd`, `--key-command`, `--key-credential`,
/// and their `-o` forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file (a pipe such as `<(…)` too).
    File(PathBuf),
    /// Standard input (`--key-file -`).
    Stdin,
    /// A descriptor the caller left open for us (`--key-fd N`, `-o key_fd=N`); closed once
    /// read.
    Fd(i32),
    /// The standard output of `sh -c CMD` (`--key-command`, `-o key_command=`), like
    /// gocryptfs's `-extpass` or rclone's `--password-command`. Its stdin and stderr are
    /// ours, so it can prompt on the terminal.
    Command(String),
    /// `$CREDENTIALS_DIRECTORY/NAME`, where systemd puts what a unit's `LoadCredential=` or
    /// `LoadCredentialEncrypted=` gave it (`--key-credential NAME`).
    Credential(String),
}

impl KeySource {
    /// `--key-file PATH`: `-` is stdin, as for most Unix tools (`./-` is a file named `-`).
    pub fn from_key_file(path: PathBuf) -> KeySource {
        if path.as_os_str() == "-" {
            KeySource::Stdin
        } else {
            KeySource::File(path)
        }
    }

    /// What the source is, for messages and for naming the key it gave.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Stdin => "the key on stdin".into(),
            KeySource::Fd(n) => format!("the key on descriptor {n}"),
            KeySource::Command(_) => "the key command's output".into(),
            KeySource::Credential(name) => format!("credential {name}"),
        }
    }

    /// The key file behind this source, if it is one (for the permission check).
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            KeySource::File(p) => Some(p.clone()),
            KeySource::Credential(name) => credential_path(name).ok(),
            _ => None,
        }
    }

    /// What names this source when a parent hands its text to the daemon. Paths cannot
    /// hold a NUL byte, so the other kinds cannot be mistaken for a file.
    fn tag(&self) -> Vec<u8> {
        match self {
            KeySource::File(p) => p.as_os_str().as_bytes().to_vec(),
            KeySource::Stdin => b"\0stdin".to_vec(),
            KeySource::Fd(n) => format!("\0fd:{n}").into_bytes(),
            KeySource::Command(c) => [b"\0command:".as_slice(), c.as_bytes()].concat(),
            KeySource::Credential(n) => [b"\0credential:".as_slice(), n.as_bytes()].concat(),
        }
    }

    /// The key text, read once.
    pub fn read(&self) -> Result<Zeroizing<String>> {
        let what = self.describe();
        let tag = self.tag();
        match self {
            KeySource::File(path) => super::keyfile::read_key_text(path),
            KeySource::Credential(name) => {
                let path = credential_path(name)?;
                super::keyfile::read_key_from(&tag, (&what, &what), || {
                    std::fs::File::open(&path).map(|f| Box::new(f) as Box<dyn Read>)
                })
            }
            KeySource::Stdin => super::keyfile::read_key_from(&tag, (&what, &what), || {
                Ok(Box::new(owned_fd(libc::STDIN_FILENO, true)?) as Box<dyn Read>)
            }),
            KeySource::Fd(n) => super::keyfile::read_key_from(&tag, (&what, &what), || {
                Ok(Box::new(owned_fd(*n, false)?) as Box<dyn Read>)
            }),
            KeySource::Command(cmd) => {
                super::keyfile::read_key_from(&tag, (&what, &what), || run_key_command(cmd))
            }
        }
    }
}

/// `fd` as a file we read once. Stdin is duplicated (it stays ours for prompts and the
/// terminal); a descriptor given for the key is taken and closed after the read, so the
/// daemon does not keep it.
fn owned_fd(fd: i32, duplicate: bool) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on an integer the caller named; F_GETFD only asks whether it is open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is not open"
        )));
    }
    // Taking stdout or stderr would close them under envfs; stdin stays open, like `-`.
    if !duplicate && (fd == libc::STDOUT_FILENO || fd == libc::STDERR_FILENO) {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is standard {}, not a key",
            if fd == libc::STDOUT_FILENO {
                "output"
            } else {
                "error"
            }
        )));
    }
    let duplicate = duplicate || fd == libc::STDIN_FILENO;
    let fd = if duplicate {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own (or -1).
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        dup
    } else {
        fd
    };
    // SAFETY: the descriptor is open and, from here, owned by this File alone.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Run `sh -c CMD` and hand back its standard output. It fails (naming the exit status,
/// never the output) unless the command exits 0.
fn run_key_command(cmd: &str) -> std::io::Result<Box<dyn Read>> {
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run /bin/sh: {e}")))?;
    let stdout = child.stdout.take().expect("piped above");
    Ok(Box::new(CommandOutput {
        stdout,
        child: Some(child),
    }))
}

/// A key command's stdout that, at its end, also waits for the command and turns a
/// failure into a read error: a command that printed half a key and then failed must not
/// count as having given one.
struct CommandOutput {
    stdout: std::process::ChildStdout,
    child: Option<std::process::Child>,
}

impl Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0
            && let Some(mut child) = self.child.take()
        {
            let status = child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "the key command failed ({status})"
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for CommandOutput {
    /// Stopped before the end (the output was too long to be a key): do not leave the
    /// command running or a zombie behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `$CREDENTIALS_DIRECTORY/NAME`; a name is a single path component, as systemd's are.
fn credential_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Invalid(format!(
            "--key-credential {name:?}: a credential name is a file name, without '/'"
        )));
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| Path::new(d).is_absolute())
        .ok_or_else(|| {
            Error::KeyFile(format!(
                "--key-credential {name}: $CREDENTIALS_DIRECTORY is not set (systemd sets it \
                 for a unit with LoadCredential={name}:PATH or LoadCredentialEncrypted=)"
            ))
        })?;
    Ok(Path::new(&dir).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_is_stdin_and_tags_cannot_collide_with_paths() {
        assert_eq!(KeySource::from_key_file("-".into()), KeySource::Stdin);
        assert_eq!(
            KeySource::from_key_file("./-".into()),
            KeySource::File("./-".into())
        );
        let tags = [
            KeySource::Stdin.tag(),
            KeySource::Fd(3).tag(),
            KeySource::Command("x".into()).tag(),
            KeySource::Credential("x".into()).tag(),
        ];
        for t in &tags {
            assert_eq!(t[0], 0);
        }
    }

    #[test]
    fn a_failing_key_command_gives_no_key_and_says_only_its_status() {
        let err = KeySource::Command("echo envfs-local-key-v1:secretish; exit 3".into())
            .read()
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(!err.contains("secretish"), "{err}");
        let ok = KeySource::Command("printf 'abc\\n'".into()).read().unwrap();
        assert_eq!(ok.as_str(), "abc\n");
    }

    #[test]
    fn credential_names_are_file_names() {
        for bad in ["", "a/b", "..", "."] {
            assert!(credential_path(bad).is_err(), "{bad:?}");
        }
    }
}
