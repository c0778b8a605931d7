//! Attacks on the vault config through the real binary (docs/SECURITY.md, "Dragon"): a config
//! forged from public data only, a rolled-back config, and the legacy recovery slots that
//! cannot prove who made them. Each attack is made here the way an attacker with write access
//! to the backing store would make it, from nothing but what the backing store holds.

mod support;

use envfs::crypto::Secret32;
use envfs::crypto::file_keys::hmac32;
use envfs::crypto::kdf::{derive32, label};
use envfs::format::config::CONFIG_FILE_NAME;
use envfs::format::{KeySlot, VaultConfig};
use envfs::keys::local::LocalKeyProvider;
use envfs::keys::x25519::X25519KeyProvider;
use envfs::keys::{KeyContext, KeyProvider};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use support::*;

// Exit codes (docs/CLI.md), spelled out so that renumbering one fails here.
const VAULT_MISMATCH: i32 = 17;
const CONFIG_ROLLBACK: i32 = 18;

fn expect_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr_text(out));
}

/// `envfs info BACKING --key-file KEY` on the vault's own host; must succeed.
fn info(v: &TestVault, key: &Path) -> String {
    ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg("--key-file")
        .arg(key)))
}

/// A vault with its local key and a recovery key added through `envfs key add`.
fn vault_with_recovery() -> (TestVault, std::path::PathBuf) {
    let v = TestVault::new(&[]);
    let recovery = v.dir.path().join("recovery.key");
    v.add_recovery_key(&recovery);
    (v, recovery)
}

/// A command run as a host that has never seen the vault (its own, empty config home).
fn fresh_host(v: &TestVault, name: &str) -> Command {
    let mut c = Command::new(envfs_bin());
    c.env("XDG_CONFIG_HOME", v.dir.path().join(name))
        .env("XDG_STATE_HOME", v.dir.path().join(name));
    c
}

fn read_config(backing: &Path) -> VaultConfig {
    let bytes = fs::read(backing.join(CONFIG_FILE_NAME)).unwrap();
    VaultConfig::parse(&bytes).unwrap().0
}

/// Write `config` authenticated under `secret`, the way envfs does (HMAC keyed from it).
fn write_config(backing: &Path, config: &VaultConfig, secret: &Secret32) {
    let body = config.encode_body();
    let mac_key = derive32(secret, &config.vault_id, label::CONFIG_MAC);
    let mac = hmac32(&mac_key, &[&body]);
    let mut bytes = body;
    bytes.extend_from_slice(&mac);
    fs::write(backing.join(CONFIG_FILE_NAME), bytes).unwrap();
}

/// Dragon's forgery from public data only: the real vault id and geometry, a vault secret
/// of his own wrapped for the victim's recovery public key (taken from the config) and for
/// a key of his own, and a valid MAC. `proof` is what he puts after the recovery slot's
/// wrapped secret: nothing (the pre-proof layout), or bytes of his choosing.
fn forge_config(backing: &Path, proof: Option<&[u8]>) {
    let real = read_config(backing);
    let recovery_id = real
        .slots
        .iter()
        .find(|s| s.key_id.starts_with("x25519:"))
        .expect("the vault has a recovery key")
        .key_id
        .clone();
    let secret = Secret32::random();
    let ctx = KeyContext::vault_secret(real.vault_id);
    let recipient = X25519KeyProvider::recipient(&recovery_id).unwrap();
    let mut recovery_slot = recipient.wrap(&secret, &ctx).unwrap();
    if let Some(proof) = proof {
        recovery_slot.wrapped.extend_from_slice(proof);
    }
    let dragon = LocalKeyProvider::from_kek(&Secret32::random());
    let dragon_slot = dragon.wrap(&secret, &ctx).unwrap();
    let forged = VaultConfig {
        slots: vec![recovery_slot, dragon_slot],
        generation: real.generation + 1,
        ..real
    };
    write_config(backing, &forged, &secret);
}

fn assert_refused_as_forged(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(VAULT_MISMATCH),
        "{what}: a forged config must be refused as such; stderr: {}",
        stderr_text(out)
    );
    let err = stderr_text(out);
    assert!(
        err.contains("fingerprint") || err.contains("proof"),
        "{what}: the refusal must say what differs: {err}"
    );
}

#[test]
fn a_config_forged_for_the_recovery_key_is_refused_on_a_fresh_host_and_on_a_known_one() {
    let (v, recovery) = vault_with_recovery();
    let real_config = fs::read(v.backing.join(CONFIG_FILE_NAME)).unwrap();
    // The host that made the vault has opened it: it knows its fingerprint.
    info(&v, &v.key);

    for (variant, proof) in [
        ("no proof", None),
        ("a proof of Dragon's choosing", Some(vec![0x5a; 32])),
    ] {
        forge_config(&v.backing, proof.as_deref());
        // A host that holds only the recovery key file and has never seen the vault (what
        // OPERATIONS.md's recovery runbook describes).
        let mnt = v.mountpoint("forged-mnt");
        let hosts = [
            (
                "fresh host",
                fresh_host(&v, &format!("fresh-{}", proof.is_some())),
            ),
            // The host that knows the vault refuses it with the recovery key too.
            ("known host", v.cmd()),
        ];
        for (host, mut cmd) in hosts {
            let out = run(cmd
                .arg("mount")
                .arg(&v.backing)
                .arg(&mnt)
                .arg("--key-file")
                .arg(&recovery));
            let mounted = is_mounted(&mnt);
            drop(Mount::adopt(mnt.clone()));
            assert!(!mounted, "{host}, {variant}: the forged vault was mounted");
            assert_refused_as_forged(&out, &format!("{host}, {variant}"));
        }
    }

    // The real config still opens with the recovery key alone on a fresh host, and nothing
    // of the forgery was remembered anywhere.
    fs::write(v.backing.join(CONFIG_FILE_NAME), &real_config).unwrap();
    let m = {
        let mnt = v.mountpoint("real-mnt");
        let out = run(fresh_host(&v, "fresh-true")
            .arg("mount")
            .arg(&v.backing)
            .arg(&mnt)
            .arg("--key-file")
            .arg(&recovery));
        let m = Mount::adopt(mnt);
        ok(out);
        m
    };
    fs::write(m.p("after"), b"written with the recovery key").unwrap();
    drop(m);
    info(&v, &v.key);
    // The fresh hosts that refused a forgery recorded nothing of it.
    for host in ["fresh-false", "fresh-true"] {
        let record = v
            .dir
            .path()
            .join(host)
            .join("envfs/trust")
            .join(read_config(&v.backing).vault_id_hex());
        let text = fs::read_to_string(&record).unwrap_or_default();
        let real = fresh_fingerprint(&v);
        assert!(
            text.is_empty() || text.contains(&real),
            "{host} remembered a forged vault: {text}"
        );
    }
    assert!(
        !v.dir
            .path()
            .join("fresh-false/envfs/trust")
            .join(read_config(&v.backing).vault_id_hex())
            .exists(),
        "a refused open wrote a record"
    );
}

/// The real vault's fingerprint, as `envfs info` shows it with the real key.
fn fresh_fingerprint(v: &TestVault) -> String {
    let info = info(v, &v.key);
    info.lines()
        .find_map(|l| l.strip_prefix("fingerprint:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_rolled_back_config_is_refused_and_can_be_accepted_on_purpose() {
    let (v, recovery) = vault_with_recovery();
    let key = ["--key-file", v.key.to_str().unwrap()];
    // Dragon keeps a copy of the config while it still lists the recovery key.
    let old = fs::read(v.backing.join(CONFIG_FILE_NAME)).unwrap();
    let old_generation = VaultConfig::parse(&old).unwrap().0.generation.to_string();
    let ids: Vec<String> = ok(run(v.cmd().args(["key", "list"]).arg(&v.backing).args(key)))
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    ok(run(v
        .cmd()
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg(&ids[1])
        .args(key)));
    let current = fs::read(v.backing.join(CONFIG_FILE_NAME)).unwrap();
    assert!(
        read_config(&v.backing).generation > VaultConfig::parse(&old).unwrap().0.generation,
        "key remove must raise the generation"
    );

    // The old, authentic config comes back: new files would be wrapped for the removed key.
    fs::write(v.backing.join(CONFIG_FILE_NAME), &old).unwrap();
    for args in [vec!["info"], vec!["key", "list"], vec!["fsck"]] {
        let out = run(v.cmd().args(&args).arg(&v.backing).args(key));
        assert_eq!(
            out.status.code(),
            Some(CONFIG_ROLLBACK),
            "{args:?}: a rolled-back config must be refused: {}",
            stderr_text(&out)
        );
        let err = stderr_text(&out);
        assert!(
            err.contains("generation")
                && err.contains(&format!("--accept-rollback {old_generation}")),
            "{args:?}: {err}"
        );
    }
    let mnt = v.mountpoint("mnt");
    let out = v.try_mount(&mnt, &[]);
    let mounted = is_mounted(&mnt);
    drop(Mount::adopt(mnt.clone()));
    assert!(!mounted, "a rolled-back config was mounted");
    expect_exit(&out, CONFIG_ROLLBACK);
    assert_eq!(
        fs::read(v.backing.join(CONFIG_FILE_NAME)).unwrap(),
        old,
        "a refused open must not touch the config"
    );

    // Accepting another generation than the one in place accepts nothing.
    let out = run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .args(key)
        .args(["--accept-rollback", "99"]));
    expect_exit(&out, CONFIG_ROLLBACK);
    // The operator restored it on purpose: accepted once, then remembered.
    let out = ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .args(key)
        .args(["--accept-rollback", &old_generation])));
    assert!(out.contains("generation:"), "{out}");
    ok(run(v.cmd().arg("info").arg(&v.backing).args(key)));
    let m = v.mount("mnt", &[]);
    fs::write(m.p("f"), b"x").unwrap();
    drop(m);
    // The recovery key is a key of the restored config again, by the operator's choice.
    info(&v, &recovery);

    // The line the operator abandoned stays out: its newer generation is not "newer".
    let put = |bytes: &[u8]| fs::write(v.backing.join(CONFIG_FILE_NAME), bytes).unwrap();
    let refused = |what: &str| {
        let out = run(v.cmd().arg("info").arg(&v.backing).args(key));
        assert_eq!(
            out.status.code(),
            Some(CONFIG_ROLLBACK),
            "{what}: {}",
            stderr_text(&out)
        );
    };
    let restored = fs::read(v.backing.join(CONFIG_FILE_NAME)).unwrap();
    put(&current);
    refused("a config of the abandoned line");
    // The next change is numbered above everything this host has seen, so no config of
    // the abandoned line can pass for it.
    put(&restored);
    let abandoned = VaultConfig::parse(&current).unwrap().0.generation;
    ok(run(v
        .cmd()
        .args(["key", "add"])
        .arg(&v.backing)
        .args(key)
        .arg("--new-key-file")
        .arg(v.dir.path().join("second-recovery.key"))));
    assert!(read_config(&v.backing).generation > abandoned);
    let next = fs::read(v.backing.join(CONFIG_FILE_NAME)).unwrap();
    put(&current);
    refused("the abandoned line after the next change");
    put(&next);
    ok(run(v.cmd().arg("info").arg(&v.backing).args(key)));
}

#[test]
fn a_legacy_recovery_slot_is_refused_on_a_fresh_host_until_proven_or_upgraded() {
    let v = TestVault::new(&[]);
    let recovery = v.dir.path().join("recovery.key");
    let rec = X25519KeyProvider::create(&recovery).unwrap();
    // A vault as envfs 0.1 wrote it: format version 1 (no generation) and a recovery slot
    // without a proof, made here from its secret as that envfs did.
    let backing = v.dir.path().join("legacy");
    fs::create_dir(&backing).unwrap();
    let kek = Secret32::random();
    let local_key = v.dir.path().join("legacy-local.key");
    fs::write(
        &local_key,
        format!(
            "envfs-local-key-v1:{}\n",
            data_encoding::BASE64.encode(kek.expose())
        ),
    )
    .unwrap();
    let secret = Secret32::random();
    let vault_id: [u8; 16] = envfs::crypto::random::array();
    let ctx = KeyContext::vault_secret(vault_id);
    let local = LocalKeyProvider::from_kek(&kek);
    let recipient = X25519KeyProvider::recipient(rec.key_id()).unwrap();
    let slots: Vec<KeySlot> = vec![
        local.wrap(&secret, &ctx).unwrap(),
        recipient.wrap(&secret, &ctx).unwrap(),
    ];
    let mut body = Vec::new();
    body.extend_from_slice(b"ENVFSVLT");
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&vault_id);
    body.push(1);
    body.push(slots.len() as u8);
    body.extend_from_slice(&4096u32.to_be_bytes());
    body.extend_from_slice(&1024u32.to_be_bytes());
    body.extend_from_slice(&220u16.to_be_bytes());
    for s in &slots {
        body.push(s.provider.code());
        body.push(s.key_id.len() as u8);
        body.extend_from_slice(s.key_id.as_bytes());
        body.extend_from_slice(&(s.wrapped.len() as u16).to_be_bytes());
        body.extend_from_slice(&s.wrapped);
    }
    let mac = hmac32(&derive32(&secret, &vault_id, label::CONFIG_MAC), &[&body]);
    body.extend_from_slice(&mac);
    fs::write(backing.join(CONFIG_FILE_NAME), &body).unwrap();

    // Old vaults keep opening with their normal key.
    let info = ok(run(fresh_host(&v, "h1")
        .arg("info")
        .arg(&backing)
        .arg("--key-file")
        .arg(&local_key)));
    let fingerprint = info
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint:"))
        .expect("info shows the vault fingerprint")
        .trim()
        .to_string();
    assert!(info.contains("format version: 1"), "{info}");

    // A fresh host with only the recovery key cannot tell this slot from a forged one.
    let out = run(fresh_host(&v, "h2")
        .arg("info")
        .arg(&backing)
        .arg("--key-file")
        .arg(&recovery));
    expect_exit(&out, VAULT_MISMATCH);
    assert!(
        stderr_text(&out).contains("--vault-fingerprint"),
        "the refusal says how to proceed: {}",
        stderr_text(&out)
    );
    // ... unless the operator vouches with the fingerprint written down beforehand,
    ok(run(fresh_host(&v, "h2")
        .arg("info")
        .arg(&backing)
        .arg("--key-file")
        .arg(&recovery)
        .arg("--vault-fingerprint")
        .arg(&fingerprint)));
    // ... and a wrong fingerprint is refused.
    let out = run(fresh_host(&v, "h3")
        .arg("info")
        .arg(&backing)
        .arg("--key-file")
        .arg(&recovery)
        .arg("--vault-fingerprint")
        .arg("00112233445566778899aabbccddeeff"));
    expect_exit(&out, VAULT_MISMATCH);

    // Upgrading the slot: `key add` of the same recovery key file, with the normal key.
    let out = ok(run(fresh_host(&v, "h1")
        .args(["key", "add"])
        .arg(&backing)
        .arg("--key-file")
        .arg(&local_key)
        .arg("--new-key-file")
        .arg(&recovery)));
    assert!(out.contains("proof"), "{out}");
    let upgraded = read_config(&backing);
    assert_eq!(
        upgraded.slots.len(),
        2,
        "upgraded in place, not added twice"
    );
    // Now any fresh host with only the recovery key opens it.
    let info = ok(run(fresh_host(&v, "h4")
        .arg("info")
        .arg(&backing)
        .arg("--key-file")
        .arg(&recovery)));
    assert!(info.contains(&fingerprint), "{info}");
}

// ---- damage the mount must report, and logs that must never carry plaintext -------------

/// `envfs info BACKING PATH`'s backing path of a plaintext path.
fn backing_of(v: &TestVault, rel: &str) -> std::path::PathBuf {
    let info = ok(run(v
        .cmd()
        .arg("info")
        .arg(&v.backing)
        .arg(rel)
        .arg("--key-file")
        .arg(&v.key)));
    info.lines()
        .find_map(|l| l.strip_prefix("backing path:"))
        .map(|p| std::path::PathBuf::from(p.trim()))
        .expect("info names the backing path")
}

/// Mount in the foreground with the daemon's stderr in a file, run `f` against the mount,
/// unmount, and return what the daemon logged.
fn logged_while(v: &TestVault, env: &[(&str, &str)], f: impl FnOnce(&Mount)) -> String {
    let log_path = v.dir.path().join(format!("daemon-{}.log", rand_suffix()));
    let log = fs::File::create(&log_path).unwrap();
    let mnt = v.mountpoint(&format!("fg-{}", rand_suffix()));
    let mut cmd = v.foreground_command(&mnt);
    cmd.stderr(log);
    for (k, val) in env {
        cmd.env(k, val);
    }
    let mut child = cmd.spawn().unwrap();
    let mut m = Mount::adopt(mnt.clone());
    assert!(
        wait_until(std::time::Duration::from_secs(10), || is_mounted(&mnt)),
        "foreground mount did not come up"
    );
    f(&m);
    m.unmount();
    let _ = child.wait();
    fs::read_to_string(&log_path).unwrap()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        envfs::crypto::random::array::<4>()
            .iter()
            .fold(0u32, |a, b| a << 8 | *b as u32)
    )
}

fn eio(result: std::io::Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
        Ok(v) => panic!("{what}: expected EIO, got {v:?}"),
    }
}

fn error_lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("ERROR") && l.contains(needle))
        .collect()
}

#[test]
fn a_file_cut_into_its_header_is_eio_with_one_log_line_not_an_empty_file() {
    let v = TestVault::new(&[]);
    {
        let m = v.mount("mnt", &[]);
        fs::write(m.p("cut-file"), vec![7u8; 5000]).unwrap();
        fs::write(m.p("header-only"), b"").unwrap();
    }
    let backing = backing_of(&v, "cut-file");
    let f = fs::OpenOptions::new().write(true).open(&backing).unwrap();
    f.set_len(500).unwrap();
    drop(f);
    let log = logged_while(&v, &[], |m| {
        // stat and listings keep working (size by arithmetic); reads fail.
        assert_eq!(fs::metadata(m.p("cut-file")).unwrap().len(), 0);
        assert!(fs::read_dir(&m.path).unwrap().count() >= 2);
        eio(
            fs::read(m.p("cut-file")),
            "read of a file cut into its header",
        );
        eio(fs::read(m.p("cut-file")), "second read");
        // 0 bytes is the documented empty file.
        assert_eq!(fs::read(m.p("header-only")).unwrap(), b"");
        // Overwriting it whole (O_TRUNC) is allowed: no unauthenticated byte is returned.
        fs::write(m.p("cut-file"), b"fresh").unwrap();
        assert_eq!(fs::read(m.p("cut-file")).unwrap(), b"fresh");
    });
    let lines = error_lines(&log, &backing.display().to_string());
    assert_eq!(
        lines.len(),
        1,
        "one error line naming the backing path:\n{log}"
    );
    assert!(lines[0].contains("header"), "{}", lines[0]);
}

#[test]
fn damaged_symlink_targets_and_xattr_values_are_logged_as_errors() {
    let v = TestVault::new(&[]);
    {
        let m = v.mount("mnt", &[]);
        std::os::unix::fs::symlink("octopus-harbor-target", m.p("link-one")).unwrap();
        fs::write(m.p("xattr-file"), b"x").unwrap();
        sh(
            &m.path,
            "setfattr -n user.mango-attr -v papaya-value xattr-file",
        );
    }
    let link = backing_of(&v, "link-one");
    let target = fs::read_link(&link)
        .unwrap()
        .into_os_string()
        .into_string()
        .unwrap();
    // Another valid-looking target: one character changed within the alphabet.
    let mut forged = target.into_bytes();
    let mid = forged.len() / 2;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(String::from_utf8(forged).unwrap(), &link).unwrap();
    let file = backing_of(&v, "xattr-file");
    let names = sh(
        &v.backing,
        &format!(
            "getfattr --absolute-names -d -m '^user\\.' {} | grep '^user\\.' | cut -d= -f1",
            file.display()
        ),
    );
    let backing_attr = names
        .lines()
        .next()
        .expect("the file has its encrypted xattr")
        .to_string();
    sh(
        &v.backing,
        &format!(
            "setfattr -n '{backing_attr}' -v 0sAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA== {}",
            file.display()
        ),
    );
    let log = logged_while(&v, &[], |m| {
        eio(
            fs::read_link(m.p("link-one")),
            "readlink of a forged target",
        );
        let out = run(Command::new("getfattr")
            .args(["--only-values", "-n", "user.mango-attr"])
            .arg(m.p("xattr-file")));
        assert!(
            !out.status.success(),
            "getfattr of a forged value succeeded"
        );
        assert!(
            stderr_text(&out).contains("Input/output error"),
            "{}",
            stderr_text(&out)
        );
    });
    let link_lines = error_lines(&log, &link.display().to_string());
    assert_eq!(link_lines.len(), 1, "{log}");
    assert!(
        link_lines[0].contains("symlink target"),
        "{}",
        link_lines[0]
    );
    let xattr_lines = error_lines(&log, &file.display().to_string());
    assert_eq!(xattr_lines.len(), 1, "{log}");
    assert!(xattr_lines[0].contains("xattr value"), "{}", xattr_lines[0]);
    for plaintext in ["octopus", "mango", "papaya"] {
        assert!(
            !log.contains(plaintext),
            "plaintext {plaintext} in the log:\n{log}"
        );
    }
}

#[test]
fn a_long_name_with_a_tampered_sidecar_is_refused_by_name_as_it_is_hidden_from_listings() {
    let v = TestVault::new(&[]);
    let long = format!("long-{}", "n".repeat(200));
    {
        let m = v.mount("mnt", &[]);
        fs::create_dir(m.p(&long)).unwrap();
        fs::write(m.p(&format!("{long}/inside")), b"data").unwrap();
        fs::write(m.p("plain"), b"p").unwrap();
    }
    let entry = backing_of(&v, &long);
    let sidecar = entry.with_file_name(envfs::format::names::sidecar_for(
        &entry.file_name().unwrap().to_string_lossy(),
    ));
    let mut text = fs::read_to_string(&sidecar).expect("a long name has a sidecar");
    // Another valid-looking encoded name.
    let mid = text.len() / 2;
    let c = if text.as_bytes()[mid] == b'A' {
        "B"
    } else {
        "A"
    };
    text.replace_range(mid..mid + 1, c);
    fs::write(&sidecar, text).unwrap();
    let log = logged_while(&v, &[], |m| {
        let listed: Vec<String> = fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(listed, vec!["plain".to_string()], "hidden from the listing");
        eio(fs::metadata(m.p(&long)), "stat by name");
        eio(
            fs::read(m.p(&format!("{long}/inside"))),
            "open below it by name",
        );
        // A name that does not exist is still just missing.
        let missing = format!("other-{}", "m".repeat(200));
        assert_eq!(
            fs::metadata(m.p(&missing)).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
    });
    let lines = error_lines(&log, &sidecar.display().to_string());
    assert_eq!(lines.len(), 1, "one error line naming the sidecar:\n{log}");
    assert!(lines[0].contains("name"), "{}", lines[0]);
    // A sidecar that is a FIFO (a read would wait forever) or a symlink to an endless file
    // (a read would fill memory) is damage like any other, answered at once.
    for (what, make) in [
        ("fifo", "mkfifo"),
        ("symlink to /dev/zero", "ln -s /dev/zero"),
    ] {
        fs::remove_file(&sidecar).unwrap();
        sh(
            &v.backing,
            &format!("{make} {}", shell_quote(&sidecar.display().to_string())),
        );
        let out = run(Command::new("timeout")
            .arg("20")
            .arg(envfs_bin())
            .env("XDG_CONFIG_HOME", v.dir.path().join("config"))
            .env("XDG_STATE_HOME", v.dir.path().join("config"))
            .arg("info")
            .arg(&v.backing)
            .arg(format!("{long}/inside"))
            .arg("--key-file")
            .arg(&v.key));
        assert_ne!(
            out.status.code(),
            Some(124),
            "{what}: envfs hung on the sidecar"
        );
        assert_eq!(out.status.code(), Some(12), "{what}: {}", stderr_text(&out));
    }
    // fsck agrees that the entry is damaged.
    let out = run(v
        .cmd()
        .arg("fsck")
        .arg(&v.backing)
        .arg("--key-file")
        .arg(&v.key));
    assert_eq!(out.status.code(), Some(15), "{}", stdout_text(&out));
}

#[test]
fn no_log_filter_lets_plaintext_names_targets_or_xattr_names_into_the_log() {
    let v = TestVault::new(&[]);
    let filters = [
        "trace",
        "trace,fuser=trace",
        "debug,fuser::request=debug",
        "fuser::request=trace,fuser::session=trace,fuser::reply=trace,fuser::ll=trace",
        "fuser[{name}]=trace,trace",
        "[{name}]=trace",
        "aws_smithy_runtime=trace,aws_sdk_kms=trace,hyper=trace,trace",
        "off,fuser::request=trace",
    ];
    for filter in filters {
        let log = logged_while(&v, &[("ENVFS_LOG", filter)], |m| {
            fs::create_dir(m.p("walrus-directory")).unwrap();
            fs::write(m.p("walrus-directory/narwhal-file"), b"kelp-content").unwrap();
            std::os::unix::fs::symlink("lobster-target", m.p("walrus-directory/link")).unwrap();
            sh(
                &m.path,
                "setfattr -n user.squid-attr -v v walrus-directory/narwhal-file",
            );
            let _ = fs::metadata(m.p("no-such-manatee"));
            let _ = fs::read_dir(m.p("walrus-directory")).unwrap().count();
            fs::rename(
                m.p("walrus-directory/narwhal-file"),
                m.p("walrus-directory/beluga-file"),
            )
            .unwrap();
            fs::remove_file(m.p("walrus-directory/beluga-file")).unwrap();
            fs::remove_file(m.p("walrus-directory/link")).unwrap();
            fs::remove_dir(m.p("walrus-directory")).unwrap();
        });
        for plaintext in [
            "walrus", "narwhal", "kelp", "lobster", "squid", "manatee", "beluga",
        ] {
            assert!(
                !log.contains(plaintext),
                "ENVFS_LOG={filter}: plaintext {plaintext:?} reached the log:\n{}",
                log.lines()
                    .filter(|l| l.contains(plaintext))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
