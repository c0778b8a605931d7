//! Where each host keeps what it knows of vaults (src/vault/host_state.rs), through the real
//! binary: the state directory conventions, a user who cannot write any of them, the records
//! envfs 0.2 left under the config directory, and an `init` that fails after writing the
//! config.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

const KEY_FILE: i32 = 6;
const CONFIG_ROLLBACK: i32 = 18;

fn vault_id(backing: &Path) -> String {
    let bytes = fs::read(backing.join("envfs.conf")).unwrap();
    envfs::format::VaultConfig::parse(&bytes)
        .unwrap()
        .0
        .vault_id_hex()
}

/// Files in `dir` (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `envfs ARGS` as user nobody with exactly the environment given (plus PATH).
fn as_nobody(env: &[(&str, &Path)], args: &[&std::ffi::OsStr]) -> Output {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        "-i",
    ]);
    c.arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin");
    for (name, value) in env {
        c.arg(format!("{name}={}", value.display()));
    }
    run(c.arg(envfs_bin()).args(args))
}

/// A scratch directory nobody may enter, with `backing/` owned by nobody.
fn nobody_scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    std::os::unix::fs::chown(&backing, Some(65534), Some(65534)).unwrap();
    (dir, backing)
}

/// A directory owned by nobody (a key directory, a state home).
fn nobody_dir(parent: &Path, name: &str) -> PathBuf {
    let p = parent.join(name);
    fs::create_dir(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    p
}

#[test]
fn a_user_whose_home_is_read_only_inits_and_opens_with_a_key_file_and_is_told_what_is_lost() {
    // envfs 0.2 wrote its host records under ~/.config: with a home it cannot write, `init`
    // failed with exit 6 after creating the vault, and the retry said "already holds".
    let (dir, backing) = nobody_scratch();
    let keys = nobody_dir(dir.path(), "keys");
    let key = keys.join("vault.key");
    let home = dir.path().join("home"); // root's, so nobody cannot write it
    fs::create_dir(&home).unwrap();
    let env = [("HOME", home.as_path())];
    let out = as_nobody(
        &env,
        &[
            "init".as_ref(),
            backing.as_os_str(),
            "--key-file".as_ref(),
            key.as_os_str(),
        ],
    );
    let err = stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cannot record what it knows of the vault")
            && err.contains("XDG_STATE_HOME")
            && err.contains(&format!("{}/.local/state/envfs", home.display())),
        "{err}"
    );
    let id = vault_id(&backing);
    // Opening works too, and says so again (once per process).
    let info = [
        "info".as_ref(),
        backing.as_os_str(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ];
    let out = as_nobody(&env, &info);
    let err = stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("cannot record").count(), 1, "{err}");
    assert!(names_in(&home).is_empty(), "{:?}", names_in(&home));
    // A writable XDG_STATE_HOME takes the records, and the warning goes.
    let state = nobody_dir(dir.path(), "state");
    let out = as_nobody(&[("HOME", &home), ("XDG_STATE_HOME", &state)], &info);
    let err = stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("cannot record"), "{err}");
    let trust = state.join("envfs/trust");
    assert!(names_in(&trust).contains(&id), "{:?}", names_in(&trust));
    assert_eq!(names_in(&trust.join("paths")).len(), 1);
}

#[test]
fn a_user_with_no_home_at_all_still_opens_and_still_refuses_a_wrong_fingerprint() {
    let (dir, backing) = nobody_scratch();
    let keys = nobody_dir(dir.path(), "keys");
    let key = keys.join("vault.key");
    let state = nobody_dir(dir.path(), "state");
    let out = as_nobody(
        &[("XDG_STATE_HOME", &state)],
        &[
            "init".as_ref(),
            backing.as_os_str(),
            "--key-file".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(out.status.success(), "{}", stderr_text(&out));
    let homeless = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "info".as_ref(),
            backing.as_os_str(),
            "--key-file".as_ref(),
            key.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        as_nobody(&[], &args)
    };
    let out = homeless(&[]);
    let err = stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cannot record") && err.contains("--vault-fingerprint"),
        "{err}"
    );
    let out = homeless(&["--vault-fingerprint", "00112233445566778899aabbccddeeff"]);
    assert_eq!(out.status.code(), Some(17), "{}", stderr_text(&out));
}

/// Run `script` as root in a mount namespace of its own where `/var/lib` is an empty tmpfs,
/// so that root's default state directory can be looked at without touching the host's.
fn in_private_var_lib(script: &str) -> Output {
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc"])
        .arg(format!("mount -t tmpfs envfs-test /var/lib\n{script}")))
}

#[test]
fn roots_records_go_to_state_directory_else_xdg_state_home_else_var_lib_envfs() {
    let v = TestVault::new(&[]);
    let id = vault_id(&v.backing);
    let dir = v.dir.path();
    let info = format!(
        "{} info {} --key-file {}",
        envfs_bin(),
        v.backing.display(),
        v.key.display()
    );
    // No HOME, no XDG_*: a system service. envfs 0.2 kept no record at all then.
    let out = in_private_var_lib(&format!(
        "env -u HOME -u XDG_CONFIG_HOME -u XDG_STATE_HOME -u STATE_DIRECTORY {info} >/dev/null\n\
         ls /var/lib/envfs/trust; stat -c %a /var/lib/envfs/trust/{id}"
    ));
    let listing = ok(out);
    assert!(
        listing.contains(&id) && listing.contains("paths"),
        "{listing}"
    );
    assert!(listing.trim_end().ends_with("600"), "{listing}");
    // systemd's StateDirectory= wins over everything.
    let service = dir.join("service-state");
    fs::create_dir(&service).unwrap();
    ok(run(Command::new("sh").arg("-c").arg(format!(
        "STATE_DIRECTORY={}:/elsewhere XDG_STATE_HOME={}/xdg {info}",
        service.display(),
        dir.display()
    ))));
    assert!(names_in(&service.join("trust")).contains(&id));
    assert!(!dir.join("xdg").exists());
    // A relative XDG_STATE_HOME is ignored, as the XDG specification says.
    let out = in_private_var_lib(&format!(
        "cd {d}; XDG_STATE_HOME=relative {info} >/dev/null; ls /var/lib/envfs/trust; \
         test ! -e {d}/relative",
        d = dir.display()
    ));
    assert!(ok(out).contains(&id));
}

#[test]
fn a_record_left_by_envfs_0_2_is_still_held_and_moves_to_the_state_directory() {
    let v = TestVault::new(&[]);
    let id = vault_id(&v.backing);
    let config_home = v.dir.path().join("config");
    let legacy = config_home.join("envfs/trust");
    assert!(names_in(&legacy).contains(&id), "{:?}", names_in(&legacy));
    let first = fs::read(v.backing.join("envfs.conf")).unwrap();
    // A change the host records: generation 2.
    v.add_recovery_key(&v.dir.path().join("second.key"));
    let second = fs::read(v.backing.join("envfs.conf")).unwrap();
    // The upgraded envfs looks in a new state directory, which holds nothing yet.
    let state = v.dir.path().join("state");
    let upgraded = || {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", &config_home)
            .env("XDG_STATE_HOME", &state)
            .arg("info")
            .arg(&v.backing)
            .arg("--key-file")
            .arg(&v.key);
        run(&mut c)
    };
    // The rollback is still refused: the old record is read.
    fs::write(v.backing.join("envfs.conf"), &first).unwrap();
    let out = upgraded();
    assert_eq!(
        out.status.code(),
        Some(CONFIG_ROLLBACK),
        "{}",
        stderr_text(&out)
    );
    assert!(!state.join("envfs/trust").join(&id).exists());
    // The real config opens, and the records move.
    fs::write(v.backing.join("envfs.conf"), &second).unwrap();
    ok(upgraded());
    let moved = state.join("envfs/trust");
    assert!(names_in(&moved).contains(&id), "{:?}", names_in(&moved));
    assert_eq!(names_in(&moved.join("paths")).len(), 1);
    assert!(!legacy.join(&id).exists(), "the 0.2 record is left behind");
    assert!(names_in(&legacy.join("paths")).is_empty());
    // And the moved record holds the generation: the rollback stays refused.
    fs::write(v.backing.join("envfs.conf"), &first).unwrap();
    assert_eq!(upgraded().status.code(), Some(CONFIG_ROLLBACK));
}

#[test]
fn an_init_that_fails_after_writing_the_config_leaves_the_directory_as_it_found_it() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    // The host's record cannot be read: where the trust directory should be is a file.
    let home = dir.path().join("home");
    fs::create_dir_all(home.join("envfs")).unwrap();
    fs::write(home.join("envfs/trust"), b"not a directory").unwrap();
    let key = dir.path().join("new.key");
    let init = || {
        run(Command::new(envfs_bin())
            .env("XDG_CONFIG_HOME", &home)
            .env("XDG_STATE_HOME", &home)
            .arg("init")
            .arg(&backing)
            .arg("--key-file")
            .arg(&key))
    };
    let out = init();
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(KEY_FILE), "{err}");
    assert!(err.contains("trust"), "{err}");
    assert!(names_in(&backing).is_empty(), "{:?}", names_in(&backing));
    assert!(!key.exists(), "the key file init created is left");
    // Once the cause is gone, the same command works.
    fs::remove_file(home.join("envfs/trust")).unwrap();
    let out = init();
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert!(backing.join("envfs.conf").exists());
}
