//! Key lifecycle end to end with the real binary: adding and removing keys, rewrap (also
//! interrupted by SIGKILL and rerun), recovery keys opening a KMS vault with KMS down, and
//! rekey. Content chunks must never change under rewrap: only headers do.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::kms::{Fault, Kms};
use support::*;

const HEADER: usize = 1024;

/// Every regular backing file with content: (header, chunks) bytes by path.
fn backing_files(backing: &Path) -> BTreeMap<PathBuf, (Vec<u8>, Vec<u8>)> {
    walk(backing)
        .into_iter()
        .filter(|p| {
            let m = fs::symlink_metadata(p).unwrap();
            m.is_file()
                && m.len() >= HEADER as u64
                && p.file_name().unwrap() != "envfs.conf"
                && !p.to_string_lossy().ends_with(".name")
        })
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            let (h, c) = bytes.split_at(HEADER);
            (p, (h.to_vec(), c.to_vec()))
        })
        .collect()
}

/// Plaintext of every file, through `envfs cat` with `key_args`.
fn contents(v: &TestVault, names: &[String], key_args: &[&str]) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|n| {
            let out = run(v.cmd().arg("cat").arg(&v.backing).arg(n).args(key_args));
            assert!(out.status.success(), "cat {n}: {}", stderr_text(&out));
            out.stdout
        })
        .collect()
}

fn populate(m: &Mount, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    fs::create_dir(m.p("dir")).unwrap();
    for i in 0..n {
        let name = if i % 3 == 0 {
            format!("dir/file{i}")
        } else {
            format!("file{i}")
        };
        let len = (i * 1777) % 20_000 + 1;
        fs::write(m.p(&name), pattern(i as u64, len)).unwrap();
        names.push(name);
    }
    fs::write(m.p("empty"), b"").unwrap();
    names
}

fn key_ids(v: &TestVault, key_args: &[&str]) -> Vec<String> {
    ok(run(v
        .cmd()
        .args(["key", "list"])
        .arg(&v.backing)
        .args(key_args)))
    .lines()
    .map(|l| l.split_whitespace().next().unwrap().to_string())
    .collect()
}

#[test]
fn add_rewrap_remove_rewrap_and_the_old_key_is_no_longer_needed() {
    let v = TestVault::new(&[]);
    let key_a = v.key.to_str().unwrap().to_string();
    let names = {
        let m = v.mount("mnt", &[]);
        populate(&m, 30)
    };
    let original = contents(&v, &names, &["--key-file", &key_a]);
    let before = backing_files(&v.backing);
    let recovery = v.dir.path().join("recovery.key");

    let out = ok(run(v
        .cmd()
        .args(["key", "add"])
        .arg(&v.backing)
        .args(["--key-file", &key_a, "--new-key-file"])
        .arg(&recovery)));
    assert!(out.contains("Added x25519 key"), "{out}");
    let listed = ok(run(v
        .cmd()
        .args(["key", "list"])
        .arg(&v.backing)
        .args(["--key-file", &key_a])));
    let lines: Vec<_> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].contains("local") && lines[1].contains("x25519"),
        "oldest first: {listed}"
    );

    // A file created after the key was added is wrapped by both keys, without a rewrap.
    {
        let m = v.mount("mnt", &[]);
        fs::write(m.p("after-add"), b"new file").unwrap();
    }
    let info = ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg("after-add")
        .args(["--key-file", recovery.to_str().unwrap()])));
    assert!(info.contains("local ") && info.contains("x25519"), "{info}");

    let out = ok(run(v
        .cmd()
        .arg("rewrap")
        .arg(&v.backing)
        .args(["--key-file", &key_a])));
    assert!(out.contains("30 rewrapped"), "{out}");
    let out = ok(run(v
        .cmd()
        .arg("rewrap")
        .arg(&v.backing)
        .args(["--key-file", &key_a])));
    assert!(
        out.contains("0 rewrapped"),
        "a second rewrap must find nothing to do: {out}"
    );

    let ids = key_ids(&v, &["--key-file", &key_a]);
    ok(run(v
        .cmd()
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg(&ids[0])
        .args(["--key-file", recovery.to_str().unwrap()])));
    ok(run(v
        .cmd()
        .arg("rewrap")
        .arg(&v.backing)
        .args(["--key-file", recovery.to_str().unwrap()])));
    fs::remove_file(&v.key).unwrap();

    let rec = ["--key-file", recovery.to_str().unwrap()];
    assert_eq!(contents(&v, &names, &rec), original);
    let after = backing_files(&v.backing);
    for (path, (header, chunks)) in &before {
        let (new_header, new_chunks) = &after[path];
        assert_eq!(
            chunks,
            new_chunks,
            "rewrap touched content of {}",
            path.display()
        );
        assert_ne!(
            header,
            new_header,
            "header of {} not rewrapped",
            path.display()
        );
        assert_eq!(header[8..24], new_header[8..24], "file id must not change");
    }
    // The vault mounts and writes with the recovery key alone.
    let m = v.mount("mnt2", &["-o", &format!("key_file={}", recovery.display())]);
    assert_eq!(fs::read(m.p("after-add")).unwrap(), b"new file");
    fs::write(m.p("with-recovery"), b"still writable").unwrap();
    drop(m);
    // No header keeps a copy wrapped by the removed key.
    let info = ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg(&names[0])
        .args(rec)));
    let wrapped: Vec<_> = info
        .lines()
        .skip_while(|l| !l.starts_with("wrapped keys:"))
        .skip(1)
        .collect();
    assert_eq!(wrapped.len(), 1, "{info}");
    assert!(wrapped[0].contains("x25519"), "{info}");
}

#[test]
fn removing_the_last_key_or_an_unknown_key_is_refused() {
    let v = TestVault::new(&[]);
    let k = ["--key-file", v.key.to_str().unwrap()];
    let ids = key_ids(&v, &k);
    assert_eq!(ids.len(), 1);
    let remove_only_key = || {
        run(v
            .cmd()
            .args(["key", "remove"])
            .arg(&v.backing)
            .arg(&ids[0])
            .args(k))
    };
    let out = remove_only_key();
    assert!(!out.status.success());
    assert!(stderr_text(&out).contains("last key"));
    // With files in the vault too: the refusal is about the last key, and it does not
    // advise `rewrap`, which cannot help when there is no other key to wrap for.
    let m = v.mount("m", &[]);
    fs::write(m.p("file"), b"content").unwrap();
    drop(m);
    let out = remove_only_key();
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("last key") && err.contains("key add"), "{err}");
    assert!(!err.contains("rewrap"), "{err}");
    let out = run(v
        .cmd()
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg("deadbeef")
        .args(k));
    assert!(!out.status.success());
    assert!(stderr_text(&out).contains("not a key of this vault"));
    assert_eq!(key_ids(&v, &k), ids, "a refused removal changed the config");
}

#[test]
fn rewrap_killed_at_random_points_finishes_on_rerun() {
    let v = TestVault::new(&[]);
    let key_a = v.key.to_str().unwrap().to_string();
    let names = {
        let m = v.mount("mnt", &[]);
        populate(&m, 200)
    };
    let original = contents(&v, &names, &["--key-file", &key_a]);
    let recovery = v.dir.path().join("recovery.key");
    ok(run(v
        .cmd()
        .args(["key", "add"])
        .arg(&v.backing)
        .args(["--key-file", &key_a, "--new-key-file"])
        .arg(&recovery)));
    let mut rng = Rng(20261129);
    for round in 0..6 {
        let mut child = v
            .cmd()
            .arg("rewrap")
            .arg(&v.backing)
            .args(["--key-file", &key_a, "--jobs", "2"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        // SAFETY: killing our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        // Whatever state the kill left, every file still opens with the old key.
        if round % 2 == 0 {
            assert_eq!(
                contents(&v, &names, &["--key-file", &key_a]),
                original,
                "round {round}"
            );
        }
    }
    ok(run(v
        .cmd()
        .arg("rewrap")
        .arg(&v.backing)
        .args(["--key-file", &key_a])));
    assert!(
        walk(&v.backing).iter().all(|p| !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".envfs-rewrap-")),
        "a journal was left behind"
    );
    // Every file now opens with the new key alone.
    assert_eq!(
        contents(&v, &names, &["--key-file", recovery.to_str().unwrap()]),
        original
    );
}

#[test]
fn a_recovery_key_opens_a_kms_vault_with_kms_down_and_kms_keys_rewrap_with_reencrypt() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-primary");
    let second = kms.create_key("alias/envfs-second-region");
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    let cmd = || {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_STATE_HOME", dir.path().join("config"));
        kms.env(&mut c);
        c
    };
    ok(run(cmd()
        .arg("init")
        .arg(&backing)
        .args(["--kms-key", "alias/envfs-primary"])));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    ok(run(cmd().arg("mount").arg(&backing).arg(&mnt)));
    let m = Mount::adopt(mnt.clone());
    for i in 0..10 {
        fs::write(m.p(&format!("f{i}")), format!("kms file {i}")).unwrap();
    }
    drop(m);

    let recovery = dir.path().join("recovery.key");
    ok(run(cmd()
        .args(["key", "add"])
        .arg(&backing)
        .arg("--new-key-file")
        .arg(&recovery)));
    ok(run(cmd()
        .args(["key", "add"])
        .arg(&backing)
        .args(["--new-kms-key", "alias/envfs-second-region"])));
    kms.reset_counts();
    let out = ok(run(cmd().arg("rewrap").arg(&backing)));
    assert!(out.contains("10 rewrapped"), "{out}");
    assert_eq!(
        kms.count("ReEncrypt"),
        10,
        "KMS keys must be added with ReEncrypt"
    );
    assert_eq!(kms.count("Encrypt"), 0);
    let info = ok(run(cmd().arg("info").arg(&backing).arg("f3")));
    assert!(info.contains(&second) && info.contains("x25519"), "{info}");

    // The KMS endpoint goes away: the recovery key alone still opens everything.
    kms.set(Fault::Drop);
    for i in 0..10 {
        let out = run(cmd()
            .arg("cat")
            .arg(&backing)
            .arg(format!("f{i}"))
            .arg("--key-file")
            .arg(&recovery));
        assert!(out.status.success(), "{}", stderr_text(&out));
        assert_eq!(out.stdout, format!("kms file {i}").as_bytes());
    }
    let mnt2 = dir.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    ok(run(cmd()
        .arg("mount")
        .arg(&backing)
        .arg(&mnt2)
        .arg("--key-file")
        .arg(&recovery)));
    let m = Mount::adopt(mnt2);
    assert_eq!(fs::read(m.p("f7")).unwrap(), b"kms file 7");
}

#[test]
fn rekey_gives_a_file_a_new_dek_and_keeps_its_content_and_metadata() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let v = TestVault::new(&[]);
    let data = pattern(1, 50_000);
    {
        let m = v.mount("mnt", &[]);
        fs::write(m.p("secret.bin"), &data).unwrap();
        fs::set_permissions(m.p("secret.bin"), fs::Permissions::from_mode(0o640)).unwrap();
        sh(&m.path, "setfattr -n user.tag -v kept secret.bin");
        fs::write(m.p("linked"), b"x").unwrap();
        fs::hard_link(m.p("linked"), m.p("linked2")).unwrap();
    }
    let before = backing_files(&v.backing);
    let k = ["--key-file", v.key.to_str().unwrap()];
    ok(run(v
        .cmd()
        .arg("rekey")
        .arg(&v.backing)
        .arg("secret.bin")
        .args(k)));
    let after = backing_files(&v.backing);
    let old_ids: Vec<_> = before.values().map(|(h, _)| h[8..24].to_vec()).collect();
    let new_ids: Vec<_> = after.values().map(|(h, _)| h[8..24].to_vec()).collect();
    assert_eq!(
        new_ids.iter().filter(|id| !old_ids.contains(id)).count(),
        1,
        "exactly one file gets a new file id"
    );
    let m = v.mount("mnt", &[]);
    assert_eq!(fs::read(m.p("secret.bin")).unwrap(), data);
    assert_eq!(
        fs::metadata(m.p("secret.bin")).unwrap().mode() & 0o777,
        0o640
    );
    let tag = sh(&m.path, "getfattr --only-values -n user.tag secret.bin");
    assert_eq!(tag, "kept");
    assert!(
        walk(&v.backing).iter().all(|p| !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".envfs-")),
        "a temporary file was left behind"
    );
    drop(m);
    let out = run(v.cmd().arg("rekey").arg(&v.backing).arg("linked").args(k));
    assert_eq!(out.status.code(), Some(16));
    assert!(stderr_text(&out).contains("hard links"));
}

#[test]
fn a_kms_key_in_a_second_region_is_reached_in_its_own_region() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-home");
    let west = kms.create_key_in("alias/envfs-west", "us-west-2");
    assert!(west.contains(":us-west-2:"), "{west}");
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    let cmd = || {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_STATE_HOME", dir.path().join("config"));
        kms.env(&mut c); // AWS_REGION=us-east-1
        c
    };
    ok(run(cmd()
        .arg("init")
        .arg(&backing)
        .args(["--kms-key", "alias/envfs-home"])));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    ok(run(cmd().arg("mount").arg(&backing).arg(&mnt)));
    let m = Mount::adopt(mnt.clone());
    fs::write(m.p("f"), b"both regions").unwrap();
    drop(m);
    ok(run(cmd()
        .args(["key", "add"])
        .arg(&backing)
        .args(["--new-kms-key", &west])));
    kms.reset_counts();
    let out = ok(run(cmd().arg("rewrap").arg(&backing)));
    assert!(out.contains("1 rewrapped"), "{out}");
    // ReEncrypt works within one region only: the second-region copy is made with Encrypt.
    assert_eq!(kms.count("ReEncrypt"), 0);
    assert_eq!(kms.count("Encrypt"), 1);
    let info = ok(run(cmd().arg("info").arg(&backing).arg("f")));
    assert!(info.contains(&west), "{info}");
    // The second-region key alone opens the file.
    let out = run(cmd()
        .arg("cat")
        .arg(&backing)
        .arg("f")
        .args(["--kms-key", &west]));
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert_eq!(out.stdout, b"both regions");
}

/// A key given as a pipe or as stdin unlocks a daemonized mount, not only a foreground one.
/// The daemon is envfs started again, so it must be handed the key text its parent read:
/// before, it found `/dev/stdin` empty (its stdin is /dev/null) and a `<(…)` pipe drained,
/// and `mount` failed with "not an envfs key file" (exit 6).
#[test]
fn a_key_from_stdin_or_a_pipe_unlocks_a_daemonized_mount() {
    let v = TestVault::new(&[]);
    let key_text = fs::read(&v.key).unwrap();
    for (how, redirect) in [
        ("stdin redirected from the key file", true),
        ("stdin a pipe", false),
    ] {
        let mnt = v.mountpoint(&format!("mnt-{}", how.len()));
        let mut cmd = v.cmd();
        cmd.arg("mount")
            .arg(&v.backing)
            .arg(&mnt)
            .args(["--key-file", "/dev/stdin"]);
        if redirect {
            cmd.stdin(fs::File::open(&v.key).unwrap());
        } else {
            cmd.stdin(std::process::Stdio::piped());
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(&key_text).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{how}: {}", stderr_text(&out));
        let m = Mount::adopt(mnt);
        fs::write(m.p("secret.txt"), how).unwrap();
        assert_eq!(fs::read_to_string(m.p("secret.txt")).unwrap(), how);
    }
    // A process substitution, as a shell gives it.
    let mnt = v.mountpoint("mnt-procsub");
    let out = run(Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} mount {} {} --key-file <(cat {})",
            envfs_bin(),
            v.backing.display(),
            mnt.display(),
            v.key.display()
        ))
        .env("XDG_CONFIG_HOME", v.dir.path().join("config"))
        .env("XDG_STATE_HOME", v.dir.path().join("config")));
    assert!(out.status.success(), "<(…): {}", stderr_text(&out));
    let m = Mount::adopt(mnt);
    assert_eq!(
        fs::read_to_string(m.p("secret.txt")).unwrap(),
        "stdin a pipe",
        "the daemon opened the vault with the key it was handed"
    );
    drop(m);
    // Not a key: refused by the command the user ran, with its exit code, nothing mounted.
    let mnt = v.mountpoint("mnt-bad");
    let mut child = v
        .cmd()
        .arg("mount")
        .arg(&v.backing)
        .arg(&mnt)
        .args(["--key-file", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"garbage\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("not an envfs key file"));
    assert!(!is_mounted(&mnt));
}

/// Every way of giving a key without a key file on disk, through the real binary, in a
/// command that opens the vault (`info`) and in a daemonized mount, which must be handed
/// what its parent read: `--key-file -`, `--key-fd N` (and `-o key_fd=`), `--key-command`
/// (and `-o key_command=`), run once however the mount starts, and `--key-credential` from
/// `$CREDENTIALS_DIRECTORY`, as systemd's `LoadCredential=` gives it.
#[test]
fn a_key_from_stdin_a_descriptor_a_command_or_a_credential_unlocks_the_vault() {
    let v = TestVault::new(&[]);
    let dir = v.dir.path();
    let key = v.key.display().to_string();
    let creds = dir.join("credentials");
    fs::create_dir(&creds).unwrap();
    fs::copy(&v.key, creds.join("vault.key")).unwrap();
    let count = dir.join("command-runs");
    let command = format!("echo run >> {}; cat {key}", count.display());
    let sh = |script: &str| {
        run(Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_STATE_HOME", dir.join("config"))
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env_remove("ENVFS_KEY_FILE"))
    };
    let bin = envfs_bin();
    let backing = v.backing.display().to_string();
    let ways = [
        ("stdin", format!("--key-file - < {key}")),
        ("fd", format!("--key-fd 7 7< {key}")),
        ("fd-pipe", format!("--key-fd 5 5< <(cat {key})")),
        ("command", format!("--key-command '{command}'")),
        ("credential", "--key-credential vault.key".to_string()),
        ("o-fd", format!("-o key_fd=8 8< {key}")),
        ("o-command", format!("-o 'key_command=cat {key}'")),
        ("o-credential", "-o key_credential=vault.key".to_string()),
    ];
    for (name, how) in &ways {
        if !name.starts_with("o-") {
            let out = sh(&format!("{bin} info {backing} {how}"));
            let text = stdout_text(&out);
            assert!(
                out.status.success() && text.contains("authenticated:  yes"),
                "info {name}: {}{text}",
                stderr_text(&out)
            );
        }
        let mnt = v.mountpoint(&format!("mnt-{name}"));
        let out = sh(&format!("{bin} mount {backing} {} {how}", mnt.display()));
        assert!(out.status.success(), "mount {name}: {}", stderr_text(&out));
        let m = Mount::adopt(mnt);
        fs::write(m.p(name), name).unwrap();
        assert_eq!(fs::read_to_string(m.p(name)).unwrap(), *name);
    }
    // The key command ran once for info and once for the mount: the daemon was handed its
    // output rather than running it again.
    assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 2);
}

/// Key sources that fail say which source and why, never what it produced, with exit 6
/// (usage errors exit 2), and mount nothing.
#[test]
fn a_failing_key_source_is_a_clear_error_and_mounts_nothing() {
    let v = TestVault::new(&[]);
    let dir = v.dir.path();
    let mnt = v.mountpoint("mnt");
    let sh = |script: &str, creds: bool| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(script)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_STATE_HOME", dir.join("config"))
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("ENVFS_KEY_FILE");
        if creds {
            c.env("CREDENTIALS_DIRECTORY", dir);
        }
        run(&mut c)
    };
    let mount = format!(
        "{} mount {} {}",
        envfs_bin(),
        v.backing.display(),
        mnt.display()
    );
    for (how, creds, code, says) in [
        (
            "--key-command 'echo top-secret-output; exit 3'".to_string(),
            false,
            6,
            "the key command failed (exit status: 3)",
        ),
        ("--key-fd 9".into(), false, 6, "descriptor 9 is not open"),
        (
            "--key-fd 1".into(),
            false,
            6,
            "descriptor 1 is standard output",
        ),
        (
            "--key-credential vault.key".into(),
            false,
            6,
            "$CREDENTIALS_DIRECTORY is not set",
        ),
        (
            "--key-credential absent.key".into(),
            true,
            6,
            "cannot read credential absent.key",
        ),
        (
            "--key-credential ../vault.key".into(),
            true,
            2,
            "a credential name is a file name",
        ),
        (
            format!("--key-fd 3 --key-file {} 3</dev/null", v.key.display()),
            false,
            2,
            "cannot be used with",
        ),
        (
            "-o key_fd=x".into(),
            false,
            2,
            "-o key_fd=x: expected a descriptor number",
        ),
        (
            "--key-command 'echo not-a-key'".into(),
            false,
            6,
            "the key command's output is not an envfs key file",
        ),
    ] {
        let out = sh(&format!("{mount} {how}"), creds);
        let err = stderr_text(&out);
        assert_eq!(out.status.code(), Some(code), "{how}: {err}");
        assert!(err.contains(says), "{how}: {err}");
        assert!(
            !err.contains("top-secret-output") && !err.contains("not-a-key"),
            "{err}"
        );
        assert!(!is_mounted(&mnt), "{how}");
    }
}

/// Once the local key is removed, the default key file still on disk is the wrong key, not
/// a missing one: commands say so (exit 7, naming its key and the vault's), and without it
/// they say the vault has no local key to look for. Before, both said the default key file
/// was missing (exit 6), although it was right there.
#[test]
fn the_default_key_file_after_its_key_was_removed_is_a_wrong_key() {
    let v = TestVault::new(&[]);
    // The key file where commands look for it by default.
    let info = ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg("--key-file")
        .arg(&v.key)));
    let vault_id = info
        .lines()
        .find_map(|l| l.strip_prefix("vault id:"))
        .unwrap()
        .trim()
        .to_string();
    let default_key = v
        .dir
        .path()
        .join(format!("config/envfs/keys/{vault_id}.key"));
    fs::create_dir_all(default_key.parent().unwrap()).unwrap();
    fs::rename(&v.key, &default_key).unwrap();
    let recovery = v.dir.path().join("recovery.key");
    ok(run(v
        .cmd()
        .args(["key", "add"])
        .arg(&v.backing)
        .arg("--new-key-file")
        .arg(&recovery)));
    let listed = ok(run(v.cmd().args(["key", "list"]).arg(&v.backing)));
    let local_line = listed.lines().find(|l| l.contains(" local ")).unwrap();
    let (short_id, local_id) = {
        let cols: Vec<&str> = local_line.split_whitespace().collect();
        (cols[0].to_string(), cols[2].to_string())
    };
    ok(run(v
        .cmd()
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg(&short_id)
        .arg("--key-file")
        .arg(&recovery)));
    let out = run(v.cmd().args(["key", "list"]).arg(&v.backing));
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("wrong key") && err.contains(&local_id),
        "{err}"
    );
    assert!(err.contains("x25519:"), "names the vault's key: {err}");
    // Without the stale file: no local key to look for, and how to proceed.
    fs::remove_file(&default_key).unwrap();
    let out = run(v.cmd().args(["key", "list"]).arg(&v.backing));
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("has no local key") && err.contains("--key-file"),
        "{err}"
    );
    // The key it does have still opens it.
    ok(run(v
        .cmd()
        .args(["key", "list"])
        .arg(&v.backing)
        .arg("--key-file")
        .arg(&recovery)));
}

/// `python3 tests/support/pty_answer.py ANSWERS envfs ARGS…`: the binary on a terminal of
/// its own, its passphrase prompts answered in turn.
fn on_a_terminal(answers: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pty_answer.py");
    run(Command::new("python3")
        .arg(script)
        .arg(answers)
        .arg(envfs_bin())
        .args(args)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_STATE_HOME", dir.join("config")))
}

/// A passphrase vault (`init --passphrase`) opens with its passphrase from every source: the
/// terminal prompt (no echo: what is typed is not in the terminal's output), a key command,
/// a descriptor, stdin, and in a daemonized mount, which is handed what its parent was
/// told. A wrong passphrase is exit 7 and opens nothing.
#[test]
fn a_passphrase_vault_opens_from_the_prompt_and_every_key_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backing = d.join("backing");
    fs::create_dir(&backing).unwrap();
    let b = backing.to_str().unwrap();
    // Created on a terminal: asked twice, and two different answers are refused.
    let out = on_a_terminal("first,second", d, &["init", b, "--passphrase"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout_text(&out));
    assert!(stdout_text(&out).contains("the two passphrases differ"));
    assert!(!backing.join("envfs.conf").exists());
    let out = on_a_terminal("tr0ub4dor,tr0ub4dor", d, &["init", b, "--passphrase"]);
    let typed = stdout_text(&out);
    assert!(out.status.success(), "{typed}");
    assert!(
        !typed.contains("tr0ub4dor"),
        "the passphrase was echoed: {typed}"
    );
    let envfs = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(format!("{} {}", envfs_bin(), args.join(" ")))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_STATE_HOME", d.join("config"));
        match stdin {
            Some(text) => {
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
            None => run(c.stdin(std::process::Stdio::null())),
        }
    };
    // A daemonized mount, unlocked at the prompt.
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m_str = mnt.to_str().unwrap();
    let out = on_a_terminal("tr0ub4dor", d, &["mount", b, m_str]);
    assert!(out.status.success(), "{}", stdout_text(&out));
    let m = Mount::adopt(mnt.clone());
    fs::write(m.p("notes.txt"), b"behind a passphrase").unwrap();
    drop(m);
    for how in [
        "--key-command 'printf tr0ub4dor'",
        "--key-fd 4 4< <(echo tr0ub4dor)",
        "--key-file -",
    ] {
        let out = envfs(&["cat", b, "notes.txt", how], Some("tr0ub4dor\n"));
        assert!(out.status.success(), "{how}: {}", stderr_text(&out));
        assert_eq!(out.stdout, b"behind a passphrase", "{how}");
    }
    let out = on_a_terminal("tr0ub4dor", d, &["cat", b, "notes.txt"]);
    assert!(
        stdout_text(&out).contains("behind a passphrase"),
        "{}",
        stdout_text(&out)
    );
    // Wrong: exit 7, from a command and at the prompt.
    let out = envfs(
        &["cat", b, "notes.txt", "--key-command 'echo Tr0ub4dor'"],
        None,
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("is not the passphrase"));
    assert!(out.stdout.is_empty());
    let out = on_a_terminal("nope", d, &["cat", b, "notes.txt"]);
    assert_eq!(out.status.code(), Some(7), "{}", stdout_text(&out));
    // No terminal and no key: exit 6, saying how to give it.
    let out = envfs(&["cat", b, "notes.txt"], None);
    assert_eq!(out.status.code(), Some(6), "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("opens with a passphrase"));
}

/// A passphrase added to a key-file vault is a key like any other: it opens the vault and
/// (after rewrap) the old files alone, new files are wrapped for it by every host, fsck
/// runs with it, and removing it (by either of its two slots) removes both.
#[test]
fn a_passphrase_key_added_to_a_vault_opens_it_alone_and_is_removed_as_one() {
    let v = TestVault::new(&[]);
    {
        let m = v.mount("mnt", &[]);
        fs::write(m.p("old.txt"), b"from before").unwrap();
    }
    let add = run(v
        .cmd()
        .args(["key", "add"])
        .arg(&v.backing)
        .arg("--key-file")
        .arg(&v.key)
        .arg("--new-passphrase")
        .stdin(
            fs::File::open({
                let p = v.dir.path().join("pw");
                fs::write(&p, "hunter2 but longer\n").unwrap();
                p
            })
            .unwrap(),
        ));
    assert!(add.status.success(), "{}", stderr_text(&add));
    ok(run(v
        .cmd()
        .arg("rewrap")
        .arg(&v.backing)
        .arg("--key-file")
        .arg(&v.key)));
    let by_passphrase = |args: &[&str]| {
        run(v
            .cmd()
            .args(args)
            .args(["--key-command", "echo hunter2 but longer"]))
    };
    let b = v.backing.to_str().unwrap();
    let out = by_passphrase(&["cat", b, "old.txt"]);
    assert_eq!(out.stdout, b"from before", "{}", stderr_text(&out));
    // A file made by a host that opened the vault with the key file is wrapped for it too.
    {
        let m = v.mount("mnt2", &[]);
        fs::write(m.p("new.txt"), b"made after").unwrap();
    }
    assert_eq!(by_passphrase(&["cat", b, "new.txt"]).stdout, b"made after");
    let fsck = by_passphrase(&["fsck", b]);
    assert!(fsck.status.success(), "{}", stderr_text(&fsck));
    let listed = ok(by_passphrase(&["key", "list", b]));
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(rows.len(), 3, "{listed}");
    let passphrase_row = rows.iter().find(|r| r.contains(" passphrase ")).unwrap();
    let short = passphrase_row.split_whitespace().next().unwrap();
    ok(run(v
        .cmd()
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg(short)
        .arg("--key-file")
        .arg(&v.key)));
    let listed = v.key_list();
    assert_eq!(listed.lines().count(), 1, "both halves go: {listed}");
    assert_eq!(by_passphrase(&["cat", b, "old.txt"]).status.code(), Some(6));
}
