//! A network backing store for tests: an OpenSSH server on loopback with throwaway keys,
//! and an sshfs client mounting one of its directories, each a child process of the test
//! held by its own PID, so that a test can kill the client (the share vanishes), mount it
//! again (the share returns), and never leaves either behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub struct Nas {
    /// A tmpfs mounted on the export (`start_with_export_size`), unmounted on drop.
    export_tmpfs: bool,
    dir: TempDir,
    sshd: Child,
    port: u16,
    client: Option<Child>,
    /// The server's directory (what the share holds).
    pub export: PathBuf,
    /// Where the share is mounted: the backing directory envfs is given.
    pub share: PathBuf,
}

impl Nas {
    /// Start sshd on a free loopback port and mount its export at `share` with sshfs.
    /// Panics (with sshd's log) if either does not come up within 10 s.
    pub fn start() -> Nas {
        Nas::start_with(None)
    }

    /// As `start`, with the server's directory on a tmpfs of `bytes`: a server whose disk
    /// fills up.
    pub fn start_with_export_size(bytes: u64) -> Nas {
        Nas::start_with(Some(bytes))
    }

    fn start_with(export_size: Option<u64>) -> Nas {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        let (export, share) = (dir.path().join("export"), dir.path().join("share"));
        for d in [&etc, &export, &share] {
            std::fs::create_dir_all(d).unwrap();
        }
        if let Some(bytes) = export_size {
            super::ok(super::run(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={bytes}"))
                    .arg("envfs-test-export")
                    .arg(&export),
            ));
        }
        // sshd's privilege separation wants this directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        for key in ["host_key", "user_key"] {
            super::ok(super::run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", ""])
                    .arg("-f")
                    .arg(etc.join(key)),
            ));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {etc}/host_key\n\
             AuthorizedKeysFile {etc}/user_key.pub\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nSubsystem sftp internal-sftp\nPidFile none\n",
            etc = etc.display()
        );
        std::fs::write(etc.join("sshd_config"), config).unwrap();
        let sshd = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(etc.join("sshd_config"))
            .arg("-E")
            .arg(etc.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("sshd (Debian: openssh-server, which scripts/setup.sh installs)");
        let mut nas = Nas {
            export_tmpfs: export_size.is_some(),
            dir,
            sshd,
            port,
            client: None,
            export,
            share,
        };
        let up = super::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "sshd did not listen: {}", nas.sshd_log());
        nas.mount_share();
        nas
    }

    fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etc/sshd.log")).unwrap_or_default()
    }

    /// Mount the share (again), with sshfs in the foreground as this test's child.
    pub fn mount_share(&mut self) {
        let etc = self.dir.path().join("etc");
        let child = Command::new("sshfs")
            .arg("-f")
            .arg(format!("root@127.0.0.1:{}", self.export.display()))
            .arg(&self.share)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-o")
            .arg(format!(
                "IdentityFile={}/user_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
                 BatchMode=yes",
                etc.display()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshfs (Debian: sshfs, which scripts/setup.sh installs)");
        self.client = Some(child);
        let share = self.share.clone();
        let up = super::wait_until(Duration::from_secs(10), || super::is_mounted(&share));
        assert!(up, "sshfs did not mount: {}", self.sshd_log());
    }

    /// The client dies without unmounting: the share's mount stays, and every call on it
    /// fails with ENOTCONN, as when a NAS share drops.
    pub fn kill_client(&mut self) {
        if let Some(mut c) = self.client.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Detach the share's (dead) mount, leaving the empty mountpoint directory.
    pub fn detach_share(&self) {
        let _ = Command::new("umount").arg("-l").arg(&self.share).status();
        let share = self.share.clone();
        super::wait_until(Duration::from_secs(10), || !super::is_mounted(&share));
    }

    pub fn share(&self) -> &Path {
        &self.share
    }
}

impl Drop for Nas {
    fn drop(&mut self) {
        self.kill_client();
        self.detach_share();
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        if self.export_tmpfs {
            let _ = Command::new("umount").arg(&self.export).status();
        }
    }
}
