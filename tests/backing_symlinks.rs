//! Dragon replaces backing directories with symlinks into the mounting host's own
//! filesystem. Nothing envfs does through the mount may then create, write, truncate,
//! chmod, chown, set times or xattrs on, rename or delete anything outside the backing
//! directory (issue 14). The
//! mount reports errors for the entries below the planted symlink instead.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use support::*;

/// One operation through the mount, given the round number (for fresh names).
type Attempt<'a> = Box<dyn Fn(usize) -> std::io::Result<()> + 'a>;

/// What one entry outside the vault looks like: path, mode, owner, size, mtime, content,
/// and every extended attribute.
type Observed = (String, u32, u32, u64, i64, Vec<u8>, Vec<u8>);

/// Everything observable about a directory tree outside the vault.
fn snapshot(dir: &Path) -> Vec<Observed> {
    let mut out = Vec::new();
    for p in walk(dir) {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        let xattrs = run(Command::new("getfattr")
            .args(["--absolute-names", "-h", "-d", "-m", "-"])
            .arg(&p))
        .stdout;
        out.push((
            p.display().to_string(),
            m.mode(),
            m.uid(),
            m.len(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            content,
            xattrs,
        ));
    }
    out.sort();
    out
}

fn xattr_cmd(args: &[&str], path: &Path) -> std::io::Result<()> {
    let out = Command::new("setfattr").args(args).arg(path).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("setfattr failed"))
    }
}

fn backing_of(v: &TestVault, rel: &str) -> std::path::PathBuf {
    let out = run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg(rel)
        .arg("--key-file")
        .arg(&v.key));
    stdout_text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("backing path:"))
        .map(|p| p.trim().into())
        .expect("info names the backing path")
}

#[test]
fn a_directory_replaced_by_a_symlink_never_leads_outside_the_backing_directory() {
    let v = TestVault::new(&[]);
    let outside = v.dir.path().join("host-files");
    fs::create_dir(&outside).unwrap();
    {
        let m = v.mount("setup", &[]);
        fs::create_dir(m.p("d")).unwrap();
        fs::write(m.p("d/victim"), b"vault data").unwrap();
        fs::create_dir(m.p("d/sub")).unwrap();
    }
    let d = backing_of(&v, "d");
    let victim_name = backing_of(&v, "d/victim").file_name().unwrap().to_owned();
    let sub_name = backing_of(&v, "d/sub").file_name().unwrap().to_owned();
    // Dragon prepares the host directory with entries under the names envfs will use, then
    // swaps the backing directory with a symlink to it, back and forth, while the mount works
    // in `d` (no kernel caching, so every operation looks `d` up again: each lookup that
    // sees the real directory opens a window before the operation itself).
    let m = v.mount(
        "mnt",
        &["-o", "attr_timeout=0,entry_timeout=0,negative_timeout=0"],
    );
    assert!(fs::metadata(m.p("d")).unwrap().is_dir());
    assert_eq!(fs::read(m.p("d/victim")).unwrap(), b"vault data");
    assert!(fs::metadata(m.p("d/sub")).unwrap().is_dir());
    fs::write(outside.join(&victim_name), b"host file").unwrap();
    fs::set_permissions(
        outside.join(&victim_name),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    sh(
        &outside,
        &format!(
            // "./": an encrypted name may start with '-', which setfattr would take
            // for an option.
            "setfattr -n user.host -v kept ./{}",
            victim_name.to_string_lossy()
        ),
    );
    fs::create_dir(outside.join(&sub_name)).unwrap();
    fs::rename(&d, v.dir.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&outside, &d).unwrap();
    let before = snapshot(&outside);

    let attempts: Vec<(&str, Attempt)> = vec![
        (
            "write",
            Box::new(|_| fs::write(m.p("d/victim"), b"overwritten")),
        ),
        (
            "append",
            Box::new(|_| {
                use std::io::Write;
                fs::OpenOptions::new()
                    .append(true)
                    .open(m.p("d/victim"))?
                    .write_all(b"x")
            }),
        ),
        (
            "create",
            Box::new(|i| fs::write(m.p(&format!("d/new-{i}")), b"planted")),
        ),
        (
            "truncate",
            Box::new(|_| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(m.p("d/victim"))?
                    .set_len(0)
            }),
        ),
        (
            "chmod",
            Box::new(|_| fs::set_permissions(m.p("d/victim"), fs::Permissions::from_mode(0o777))),
        ),
        (
            "mkdir",
            Box::new(|i| fs::create_dir(m.p(&format!("d/dir-{i}")))),
        ),
        (
            "symlink",
            Box::new(|i| std::os::unix::fs::symlink("t", m.p(&format!("d/link-{i}")))),
        ),
        (
            "rename in",
            Box::new(|i| {
                fs::write(m.p(&format!("top-{i}")), b"t")?;
                fs::rename(m.p(&format!("top-{i}")), m.p(&format!("d/renamed-{i}")))
            }),
        ),
        (
            "link",
            Box::new(|i| {
                fs::write(m.p(&format!("top2-{i}")), b"t")?;
                fs::hard_link(m.p(&format!("top2-{i}")), m.p(&format!("d/hard-{i}")))
            }),
        ),
        (
            "setxattr",
            Box::new(|_| xattr_cmd(&["-n", "user.planted", "-v", "x"], &m.p("d/victim"))),
        ),
        (
            "removexattr",
            Box::new(|_| xattr_cmd(&["-x", "user.host"], &m.p("d/victim"))),
        ),
        ("unlink", Box::new(|_| fs::remove_file(m.p("d/victim")))),
        ("rmdir", Box::new(|_| fs::remove_dir(m.p("d/sub")))),
        (
            "touch",
            Box::new(|_| {
                let st = Command::new("touch").arg(m.p("d/victim")).status()?;
                if st.success() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("touch failed"))
                }
            }),
        ),
    ];

    // Dragon swaps the backing directory and the symlink back and forth as fast as he can
    // (renameat2 RENAME_EXCHANGE: each swap is atomic) while the mount works in `d`.
    let real = v.dir.path().join("moved-away");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, real, d) = (stop.clone(), real.clone(), d.clone());
        std::thread::spawn(move || {
            use std::os::unix::ffi::OsStrExt;
            let a = std::ffi::CString::new(real.as_os_str().as_bytes()).unwrap();
            let b = std::ffi::CString::new(d.as_os_str().as_bytes()).unwrap();
            let mut swaps = 0u64;
            // Bounded: at most a million swaps, and the main thread stops it sooner.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && swaps < 1_000_000 {
                // SAFETY: valid C strings; exchanging two existing names.
                unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                swaps += 1;
            }
            swaps
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut rounds = 0;
    while std::time::Instant::now() < deadline && rounds < 400 {
        for (_, attempt) in &attempts {
            // Each may fail (the mount reports errors for entries below the symlink) or,
            // while the real directory is in place, succeed there.
            let _ = attempt(rounds);
        }
        rounds += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && rounds > 0);
    assert_eq!(
        snapshot(&outside),
        before,
        "the mount changed files outside the backing directory ({rounds} rounds of every \
         operation, {swaps} swaps)"
    );
    // Dragon stops: with the real directory back in place, the vault works again.
    if fs::symlink_metadata(&d).unwrap().file_type().is_symlink() {
        fs::remove_file(&d).unwrap();
        fs::rename(&real, &d).unwrap();
    }
    fs::write(m.p("still-fine"), b"ok").unwrap();
    assert_eq!(fs::read(m.p("still-fine")).unwrap(), b"ok");
}
