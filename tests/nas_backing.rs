//! envfs on a network backing store (issue 16): an sshfs share of an sshd on loopback
//! (tests/support/nas.rs), against a local directory where the two differ.
//!
//! - The mount probes the store and says in one line what it lacks and what envfs does
//!   about it; `envfs info` and `envfs status` show the same answers.
//! - A network store mounts shared: attributes are not cached, `writeback_cache` is refused.
//! - A write the server refuses after acknowledging it fails the close(2), never silently.
//! - Symlinks made for another user on a store that cannot own them work, and leave nothing
//!   behind when refused.
//! - An ioctl envfs does not serve is ENOTTY, and nothing is logged.
//!
//! The workload suite over sshfs is in tests/mount_workloads.rs (`sshfs::…`).

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;
use support::nas::Nas;
use support::*;

/// A foreground mount of `v` with the daemon's log in a file (filter `ENVFS_LOG`, when
/// given), live when this returns.
fn mount_logged(
    v: &TestVault,
    name: &str,
    opts: &[&str],
    log_filter: Option<&str>,
) -> (Mount, Child, std::path::PathBuf) {
    let mnt = v.mountpoint(name);
    let log = v.dir.path().join(format!("{name}.log"));
    let mut cmd = v.foreground_command(&mnt);
    cmd.args(opts).stderr(fs::File::create(&log).unwrap());
    if let Some(filter) = log_filter {
        cmd.env("ENVFS_LOG", filter);
    }
    let child = cmd.spawn().unwrap();
    let mount = Mount::adopt(mnt.clone());
    assert!(
        wait_until(Duration::from_secs(15), || is_mounted(&mnt)),
        "mount did not come up: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    (mount, child, log)
}

fn status_json(v: &TestVault, m: &Mount) -> String {
    ok(run(v.cmd().arg("status").arg(&m.path).arg("--json")))
}

/// The lines of a log that say what the backing store is.
fn summary_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("backing store "))
        .collect()
}

/// `ioctl(TCGETS)` on a file of the mount, as isatty(3) does: the errno.
fn tcgets_errno(path: &Path) -> i32 {
    let f = fs::File::open(path).unwrap();
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a termios-sized out buffer.
    let ret = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut termios) };
    assert_eq!(ret, -1, "a file is no terminal");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

#[test]
fn over_sshfs_the_mount_says_what_the_share_lacks_and_runs_shared() {
    let nas = Nas::start();
    let v = TestVault::new_at(nas.share().join("vault"), &[]);
    let (mut m, mut daemon, log_path) = mount_logged(&v, "mnt", &[], None);
    fs::write(m.p("f"), b"on the share").unwrap();
    assert_eq!(tcgets_errno(&m.p("f")), libc::ENOTTY);

    let status = status_json(&v, &m);
    assert!(status.contains("\"shared\":true"), "{status}");
    assert!(status.contains("\"type\":\"fuse.sshfs\""), "{status}");
    assert!(status.contains("\"symlink_owner\":\"no\""), "{status}");
    assert!(status.contains("\"backing_down\":false"), "{status}");
    // Another host's change never reaches this host's inotify: short timeouts, said so.
    assert!(
        status
            .contains("\"watch\":{\"watched\":false,\"why\":\"fuse.sshfs is a network filesystem"),
        "{status}"
    );
    assert!(status.contains("\"attr_timeout_s\":0,"), "{status}");
    let text = ok(run(v.cmd().arg("status").arg(&m.path)));
    assert!(
        text.contains("  not watched (fuse.sshfs is a network"),
        "{text}"
    );
    assert!(
        text.contains("backing store fuse.sshfs (network), shared mode; lacks: "),
        "{text}"
    );
    // Every status answer counts what the kernel asked: the file written above was
    // looked up and created.
    assert!(status.contains("\"requests\":{\"lookup\":"), "{status}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("  requests served: ") && l.contains("create 1")),
        "{text}"
    );
    // A mount skips the long-path probe (about 200 round trips); `envfs info` runs it.
    assert!(status.contains("\"long_paths\":\"unknown\""), "{status}");
    // The probe leaves nothing on the share.
    let left: Vec<_> = fs::read_dir(nas.export.join("vault"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".envfs-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    m.unmount();
    let _ = daemon.wait();
    let log = fs::read_to_string(&log_path).unwrap();
    let lines = summary_lines(&log);
    assert_eq!(
        lines.len(),
        1,
        "one summary line, at the default filter:\n{log}"
    );
    let line = lines[0];
    assert!(
        line.contains(&format!(
            "{} (fuse.sshfs, network) lacks: ",
            v.backing.display()
        )),
        "{line}"
    );
    for lack in [
        "symlink owners (",
        "symlink times (",
        "hard links that share an inode (",
        "user xattrs (",
        "fallocate (",
        "locks shared between hosts (",
        "sub-second timestamps (",
        "shared mode",
    ] {
        assert!(line.contains(lack), "{lack} missing: {line}");
    }
    // Nothing but the summary: no warning for the ioctl, no plaintext.
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(!log.contains("on the share"));

    // `envfs info` probes too and lists every answer.
    let info = ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg("--key-file")
        .arg(&v.key)));
    for row in [
        "backing store:  (fuse.sshfs, network) lacks: ",
        "  symlink_owner           no",
        "  hard_links_share_inode  no",
        "  time_granularity        1s",
        "  case_sensitive          yes",
        "  long_paths              no",
    ] {
        assert!(info.contains(row), "{row} missing:\n{info}");
    }
}

#[test]
fn on_a_local_directory_nothing_is_lacking_and_the_mount_is_not_shared() {
    let v = TestVault::new(&[]);
    let (mut m, mut daemon, log_path) = mount_logged(&v, "mnt", &[], Some("info"));
    assert_eq!(tcgets_errno(&v.backing.join("envfs.conf")), libc::ENOTTY);
    fs::write(m.p("f"), b"local").unwrap();
    assert_eq!(tcgets_errno(&m.p("f")), libc::ENOTTY);
    let status = status_json(&v, &m);
    assert!(status.contains("\"shared\":false"), "{status}");
    assert!(status.contains("\"backing_store_lacks\":[]"), "{status}");
    assert!(
        status.contains("\"watch\":{\"watched\":true,") && status.contains("\"degraded\":null"),
        "{status}"
    );
    m.unmount();
    let _ = daemon.wait();
    let log = fs::read_to_string(&log_path).unwrap();
    let lines = summary_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("local): has everything envfs uses"),
        "{log}"
    );
    assert!(!log.contains("Not Implemented"), "{log}");
    // -o shared on a local store: chosen by the operator, it holds.
    let (m, _daemon, _) = mount_logged(&v, "shared", &["-o", "shared"], None);
    assert!(status_json(&v, &m).contains("\"shared\":true"));
}

#[test]
fn shared_mode_refuses_writeback_cache_unless_told_noshared() {
    let nas = Nas::start();
    let v = TestVault::new_at(nas.share().join("vault"), &[]);
    let mnt = v.mountpoint("mnt");
    let out = v.try_mount(&mnt, &["-o", "writeback_cache"]);
    // Unmounted however the assertions go (an envfs that accepts it must not leave a mount).
    let wrongly_mounted = is_mounted(&mnt).then(|| Mount::adopt(mnt.clone()));
    assert_eq!(exit_code(&out), 2, "{}", stderr_text(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains("-o writeback_cache cannot be used with shared mode"),
        "{err}"
    );
    assert!(err.contains("-o noshared"), "{err}");
    assert!(wrongly_mounted.is_none());
    let out = v.try_mount(&mnt, &["-o", "noshared,writeback_cache"]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let m = Mount::adopt(mnt);
    assert!(status_json(&v, &m).contains("\"shared\":false"));
}

/// sshfs acknowledges a write at once and sends it on; a server whose disk is full refuses
/// it later. The program must hear of it at close (or fsync), never keep a short file in
/// the belief that it was written.
#[test]
fn a_write_the_server_refuses_fails_the_close_and_the_fsync() {
    let nas = Nas::start_with_export_size(4 << 20);
    let v = TestVault::new_at(nas.share().join("vault"), &[]);
    let (m, _daemon, _log) = mount_logged(&v, "mnt", &[], None);
    // Fill the server's disk to within 64 KiB.
    let st = {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(nas.export.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path and out pointer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st
    };
    let free = st.f_bavail * st.f_frsize;
    fs::write(
        nas.export.join("filler"),
        vec![0u8; (free - (64 << 10)) as usize],
    )
    .unwrap();

    // One write(2) of 100 KiB, then close: the write is acknowledged, the close is not.
    let mut f = fs::File::create(m.p("big")).unwrap();
    let wrote = std::io::Write::write_all(&mut f, &vec![7u8; 100 << 10]);
    let fd = f.as_raw_fd();
    std::mem::forget(f);
    // SAFETY: closing the descriptor the forgotten File owned, once.
    let closed = unsafe { libc::close(fd) };
    let close_errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        wrote.is_err() || closed == -1,
        "the server refused the write and neither write nor close said so"
    );
    if closed == -1 {
        assert!(
            matches!(close_errno, Some(libc::EIO) | Some(libc::ENOSPC)),
            "{close_errno:?}"
        );
    }

    // fsync reports it too.
    let mut g = fs::File::create(m.p("big2")).unwrap();
    let wrote = std::io::Write::write_all(&mut g, &vec![7u8; 100 << 10]);
    let synced = g.sync_all();
    assert!(wrote.is_err() || synced.is_err(), "fsync hid the refusal");
    drop(g);
    assert!(is_mounted(&m.path), "the mount stays up");
}

/// As root with allow_other, a new node belongs to its creator; on a store where a
/// symlink's owner cannot be changed (sshfs follows the link) a symlink keeps the daemon's
/// owner, and `ln -s` works. A later change to another owner is refused, one to the owner
/// it has is a no-op: `cp -a` as root works.
#[test]
fn symlinks_for_another_user_over_sshfs_keep_the_stores_owner() {
    let nas = Nas::start();
    let v = TestVault::new_at(nas.share().join("vault"), &[]);
    let (m, _daemon, _log) = mount_logged(&v, "mnt", &["-o", "allow_other"], None);
    fs::create_dir(m.p("pub")).unwrap();
    fs::set_permissions(
        m.p("pub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ln",
            "-s",
            "target",
        ])
        .arg(m.p("pub/link")));
    assert!(
        out.status.success(),
        "ln -s as nobody: {}",
        stderr_text(&out)
    );
    assert_eq!(fs::read_link(m.p("pub/link")).unwrap(), Path::new("target"));
    let meta = fs::symlink_metadata(m.p("pub/link")).unwrap();
    assert_eq!(meta.uid(), 0, "the store's owner (the daemon's)");
    // A file made by nobody is nobody's: only symlinks are the exception.
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "touch"])
        .arg(m.p("pub/file")));
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert_eq!(fs::metadata(m.p("pub/file")).unwrap().uid(), 65534);
    // The kernel weighs ACLs on an allow_other mount (it asks the daemon for the ACL of a
    // file whose group bits could matter); sshfs stores none, and that must read as "no
    // ACL", not fail the permission check.
    fs::write(m.p("pub/roots"), b"readable").unwrap();
    fs::set_permissions(
        m.p("pub/roots"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m.p("pub/roots")));
    assert_eq!(stdout_text(&out), "readable", "{}", stderr_text(&out));

    let lchown = |uid: u32| {
        let c =
            std::ffi::CString::new(m.p("pub/link").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid path; -1 leaves the group.
        let r = unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) };
        (r == 0)
            .then_some(())
            .ok_or(std::io::Error::last_os_error().raw_os_error())
    };
    assert_eq!(lchown(0), Ok(()), "to the owner it has");
    assert_eq!(lchown(65534), Err(Some(libc::EPERM)), "to another");
    assert_eq!(fs::read_link(m.p("pub/link")).unwrap(), Path::new("target"));
    // Its times: accepted, not kept (the store would set the target's).
    sh(&m.path, "touch -h -d @1000000000 pub/link");
    assert_ne!(
        fs::symlink_metadata(m.p("pub/link")).unwrap().mtime(),
        1_000_000_000
    );
}
