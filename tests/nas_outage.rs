//! A NAS share that drops under a mount, and comes back: envfs over a real network
//! filesystem (sshfs to an sshd on loopback, tests/support/nas.rs). While the share is
//! gone every call fails with EIO, never ENOENT (programs must not act on "the file does
//! not exist"), one line is logged; when the share is mounted again the mount recovers by
//! itself and says so once.

mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;
use support::nas::Nas;
use support::{Mount, envfs_bin, is_mounted, ok, run, wait_until};

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_vanished_share_is_eio_logged_once_and_the_mount_recovers_when_it_returns() {
    let mut nas = Nas::start();
    let top = tempfile::tempdir().unwrap();
    let key = top.path().join("vault.key");
    let config = top.path().join("config");
    let envfs = || {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", &config)
            .env("XDG_STATE_HOME", &config);
        c
    };
    ok(run(envfs()
        .arg("init")
        .arg(nas.share())
        .arg("--key-file")
        .arg(&key)));
    let mnt = top.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log_path = top.path().join("daemon.log");
    let mut daemon = envfs()
        .arg("mount")
        .arg("-f")
        .arg(nas.share())
        .arg(&mnt)
        .arg("--key-file")
        .arg(&key)
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut mount = Mount::adopt(mnt.clone());
    assert!(wait_until(Duration::from_secs(10), || is_mounted(&mnt)));
    fs::create_dir(mnt.join("docs")).unwrap();
    fs::write(mnt.join("docs/report.txt"), b"on the NAS").unwrap();

    // The share drops: its client dies, every call on it fails with ENOTCONN.
    nas.kill_client();
    let p = |rel: &str| mnt.join(rel);
    let check_all_eio = |when: &str| {
        assert_eq!(
            errno_of(fs::metadata(&mnt)),
            Some(libc::EIO),
            "{when}: stat of the root"
        );
        assert_eq!(
            errno_of(fs::read(p("docs/report.txt"))),
            Some(libc::EIO),
            "{when}: read"
        );
        assert_eq!(
            errno_of(fs::read_dir(p("docs"))),
            Some(libc::EIO),
            "{when}: list"
        );
        assert_eq!(
            errno_of(fs::write(p("new.txt"), b"x")),
            Some(libc::EIO),
            "{when}: create"
        );
        assert_eq!(
            errno_of(fs::metadata(p("no-such"))),
            Some(libc::EIO),
            "{when}: lookup"
        );
    };
    check_all_eio("share dead");
    // Its mount detached, the mountpoint is an empty local directory: still no ENOENT.
    nas.detach_share();
    std::thread::sleep(Duration::from_millis(1100)); // past one retry
    check_all_eio("share detached");
    assert!(fs::read_dir(nas.share()).unwrap().next().is_none());
    assert!(fs::read_dir(nas.share()).is_ok());

    // The share returns: the mount finds the vault there again by itself.
    nas.mount_share();
    let back = wait_until(Duration::from_secs(10), || {
        fs::read(p("docs/report.txt")).is_ok_and(|b| b == b"on the NAS")
    });
    assert!(
        back,
        "the mount did not recover: {:?}",
        fs::read(p("docs/report.txt"))
    );
    fs::write(p("after.txt"), b"written after the outage").unwrap();
    assert!(nas.export.join("envfs.conf").exists());

    mount.unmount();
    let _ = daemon.wait();
    let log = fs::read_to_string(&log_path).unwrap();
    let share = nas.share().display().to_string();
    let down: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("backing store unreachable"))
        .collect();
    assert_eq!(down.len(), 1, "one line when it went:\n{log}");
    assert!(down[0].contains(&share), "{log}");
    let up: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("backing store reachable again"))
        .collect();
    assert_eq!(up.len(), 1, "one line when it came back:\n{log}");
    assert!(!log.contains("report"), "no plaintext in the log:\n{log}");
}
