//! The AWS KMS provider against a real KMS-compatible server (moto) over HTTP, through a
//! proxy that counts requests and injects faults: init, mount, remount, pinning, request
//! counts with the DEK cache, retries, service errors and outages.

mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::kms::{Fault, Kms};
use support::*;

struct KmsVault {
    dir: tempfile::TempDir,
    backing: PathBuf,
}

impl KmsVault {
    fn new(kms: &Kms, key: &str) -> KmsVault {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        KmsVault::init(kms, key, dir, backing)
    }

    /// A vault whose backing directory is `backing` (on a share, say).
    fn new_at(kms: &Kms, key: &str, backing: PathBuf) -> KmsVault {
        KmsVault::init(kms, key, tempfile::tempdir().unwrap(), backing)
    }

    fn init(kms: &Kms, key: &str, dir: tempfile::TempDir, backing: PathBuf) -> KmsVault {
        fs::create_dir(&backing).unwrap();
        let v = KmsVault { dir, backing };
        let out = run(v
            .cmd(kms)
            .arg("init")
            .arg(&v.backing)
            .arg("--kms-key")
            .arg(key));
        assert!(out.status.success(), "init: {}", stderr_text(&out));
        v
    }

    fn cmd(&self, kms: &Kms) -> Command {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_STATE_HOME", self.dir.path().join("config"));
        kms.env(&mut c);
        c
    }

    fn try_mount(&self, kms: &Kms, name: &str, opts: &[&str]) -> (PathBuf, Output) {
        let mnt = self.dir.path().join(name);
        fs::create_dir_all(&mnt).unwrap();
        let out = run(self
            .cmd(kms)
            .arg("mount")
            .arg(&self.backing)
            .arg(&mnt)
            .args(opts));
        (mnt, out)
    }

    fn mount(&self, kms: &Kms, name: &str, opts: &[&str]) -> Mount {
        let (mnt, out) = self.try_mount(kms, name, opts);
        assert!(out.status.success(), "mount: {}", stderr_text(&out));
        Mount::adopt(mnt)
    }

    /// A foreground mount whose log goes to a file.
    fn mount_logged(
        &self,
        kms: &Kms,
        name: &str,
        opts: &[&str],
    ) -> (Mount, std::process::Child, PathBuf) {
        let mnt = self.dir.path().join(name);
        fs::create_dir_all(&mnt).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let child = self
            .cmd(kms)
            .arg("mount")
            .arg("-f")
            .arg(&self.backing)
            .arg(&mnt)
            .args(opts)
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || is_mounted(&mnt)),
            "foreground mount did not come up"
        );
        (Mount::adopt(mnt), child, log)
    }
}

const MARKER: &[u8] = b"ENVFS-KMS-PLAINTEXT-MARKER";

#[test]
fn kms_vault_init_mount_write_remount_read() {
    let kms = Kms::start();
    let arn = kms.create_key("alias/envfs-roundtrip");
    let v = KmsVault::new(&kms, "alias/envfs-roundtrip");
    let info = run(v.cmd(&kms).arg("info").arg(&v.backing));
    let info = stdout_text(&info);
    assert!(info.contains(&format!("aws-kms  {arn}")), "{info}");
    assert!(info.contains("authenticated:  yes"));
    let data: Vec<u8> = MARKER.iter().copied().cycle().take(100_000).collect();
    {
        let m = v.mount(&kms, "mnt", &[]);
        fs::create_dir(m.p("docs")).unwrap();
        fs::write(m.p("docs/report.bin"), &data).unwrap();
        fs::write(m.p("small"), b"tiny").unwrap();
    }
    assert_eq!(backing_contains(&v.backing, MARKER), None);
    {
        let m = v.mount(&kms, "mnt", &[]);
        assert_eq!(fs::read(m.p("docs/report.bin")).unwrap(), data);
        assert_eq!(fs::read(m.p("small")).unwrap(), b"tiny");
    }
    let out = run(v.cmd(&kms).arg("cat").arg(&v.backing).arg("small"));
    assert_eq!(out.stdout, b"tiny");
    // Every header names the KMS key.
    let info = run(v.cmd(&kms).arg("info").arg(&v.backing).arg("small"));
    assert!(stdout_text(&info).contains(&arn));
}

#[test]
fn reads_while_cached_cost_one_decrypt_and_stat_ls_touch_cost_nothing() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-counts");
    let v = KmsVault::new(&kms, "alias/envfs-counts");
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        for d in 0..5 {
            fs::create_dir(m.p(&format!("d{d}"))).unwrap();
            for f in 0..10 {
                fs::write(m.p(&format!("d{d}/f{f}")), format!("file {d}/{f}")).unwrap();
            }
        }
    }
    let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
    kms.reset_counts();
    sh(
        &m.path,
        "ls -lR > /dev/null && stat d0/f0 > /dev/null && find . -type f | wc -l | grep -qx 50",
    );
    assert_eq!(kms.total(), 0, "ls -lR / stat called KMS");
    sh(
        &m.path,
        "touch new-empty-file && ls -l new-empty-file > /dev/null",
    );
    assert_eq!(kms.total(), 0, "touch called KMS");
    assert_eq!(fs::read(m.p("d1/f1")).unwrap(), b"file 1/1");
    assert_eq!(fs::read(m.p("d1/f1")).unwrap(), b"file 1/1");
    sh(&m.path, "cat d1/f1 > /dev/null");
    assert_eq!(
        kms.count("Decrypt"),
        1,
        "re-reading a cached file called KMS again"
    );
    assert_eq!(kms.total(), 1);
    // Writing to the empty file is its first DEK: one GenerateDataKey.
    fs::write(m.p("new-empty-file"), b"now with content").unwrap();
    assert_eq!(kms.count("GenerateDataKey"), 1);
    // The DEK this mount just made is cached: reading the new file back (cold, through a
    // fresh open) costs no Decrypt.
    sh(&m.path, "sync && echo 3 > /proc/sys/vm/drop_caches");
    assert_eq!(
        fs::read(m.p("new-empty-file")).unwrap(),
        b"now with content"
    );
    assert_eq!(
        kms.count("Decrypt"),
        1,
        "reading back a file this mount created called Decrypt"
    );
    // envfs status counts the same calls, plus the daemon's own Decrypt of the vault secret
    // when it opened the vault (before the counts above were reset), and the DEKs cached.
    let out = run(v.cmd(&kms).arg("status").arg(&m.path).arg("--json"));
    assert!(out.status.success(), "{}", stderr_text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = &doc["mounts"][0]["keys"][0];
    assert_eq!(key["kind"], "aws-kms", "{doc}");
    assert!(
        key["id"].as_str().unwrap().starts_with("arn:aws:kms:"),
        "{doc}"
    );
    assert_eq!(key["calls"]["Decrypt"], 2, "{doc}");
    assert_eq!(key["calls"]["GenerateDataKey"], 1, "{doc}");
    assert_eq!(key["calls"]["Encrypt"], 0, "{doc}");
    assert_eq!(key["call_errors"], 0, "{doc}");
    assert_eq!(doc["mounts"][0]["dek_cache"]["entries"], 2, "{doc}");
    let text = stdout_text(&run(v.cmd(&kms).arg("status").arg(&m.path)));
    assert!(
        text.contains(
            "(aws-kms); calls: GenerateDataKey 1, Encrypt 0, Decrypt 2, ReEncrypt 0, errors 0"
        ),
        "{text}"
    );
}

/// `mounts[0].dek_cache.unwrap_ahead` of `envfs status --json`, once every job queued so
/// far has been done or dropped (bounded wait).
fn unwrap_ahead_settled(v: &KmsVault, kms: &Kms, m: &Mount) -> serde_json::Value {
    let status = || {
        let out = run(v.cmd(kms).arg("status").arg(&m.path).arg("--json"));
        assert!(out.status.success(), "{}", stderr_text(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["mounts"][0]["dek_cache"]["unwrap_ahead"].clone()
    };
    let done = |a: &serde_json::Value| {
        let n = |k: &str| a[k].as_u64().unwrap_or_else(|| panic!("no {k} in {a}"));
        n("unwrapped") + n("skipped") + n("failed") == n("queued")
    };
    wait_until(Duration::from_secs(30), || done(&status()));
    let a = status();
    assert!(done(&a), "unwrap-ahead jobs still pending: {a}");
    a
}

/// After a remount the DEK cache is empty. Reading a directory's files one after another
/// unwraps the next ones' DEKs ahead, concurrently, and still costs exactly one Decrypt per
/// file (an open waits for a call under way rather than making a second). A file read alone
/// costs one call, and a reader that stops early has paid at most one call ahead per file
/// it opened after the first.
#[test]
fn reading_a_directory_unwraps_deks_ahead_and_once_per_file() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-ahead");
    let v = KmsVault::new(&kms, "alias/envfs-ahead");
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        for d in ["all", "few", "one"] {
            fs::create_dir(m.p(d)).unwrap();
            for f in 0..40 {
                fs::write(m.p(&format!("{d}/f{f:02}")), format!("{d} {f}")).unwrap();
            }
        }
    }
    let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
    kms.reset_counts();
    // A whole directory, in directory order (as grep -r, tar and cp -r read).
    let listed = sh(&m.path, "find all -type f");
    let files: Vec<&str> = listed.lines().collect();
    assert_eq!(files.len(), 40);
    for f in &files {
        let n = f.trim_start_matches("all/f");
        let n: u32 = n.parse().unwrap();
        assert_eq!(fs::read_to_string(m.p(f)).unwrap(), format!("all {n}"));
    }
    let ahead = unwrap_ahead_settled(&v, &kms, &m);
    assert_eq!(
        kms.count("Decrypt"),
        40,
        "one Decrypt per file read: {ahead}"
    );
    let unwrapped = ahead["unwrapped"].as_u64().unwrap();
    assert!(
        unwrapped >= 20,
        "most DEKs should be unwrapped ahead: {ahead}"
    );
    assert_eq!(ahead["used"].as_u64().unwrap(), unwrapped, "{ahead}");
    assert_eq!(ahead["failed"], 0, "{ahead}");

    // One file alone: one call.
    kms.reset_counts();
    assert_eq!(fs::read_to_string(m.p("one/f07")).unwrap(), "one 7");
    unwrap_ahead_settled(&v, &kms, &m);
    assert_eq!(kms.count("Decrypt"), 1, "a file read alone");

    // Three files, then the reader stops: at most two calls ahead.
    kms.reset_counts();
    let listed = sh(&m.path, "find few -type f | head -3");
    for f in listed.lines() {
        fs::read(m.p(f)).unwrap();
    }
    unwrap_ahead_settled(&v, &kms, &m);
    let calls = kms.count("Decrypt");
    assert!(
        (3..=5).contains(&calls),
        "{calls} Decrypts for 3 files read"
    );

    // Off: one call per open, none ahead.
    drop(m);
    let m = v.mount(&kms, "mnt", &["-o", "prefetch=0,unwrap_ahead=0"]);
    kms.reset_counts();
    for f in &files {
        fs::read(m.p(f)).unwrap();
    }
    assert_eq!(kms.count("Decrypt"), 40);
    let out = run(v.cmd(&kms).arg("status").arg(&m.path).arg("--json"));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["mounts"][0]["dek_cache"]["unwrap_ahead"].is_null(),
        "{doc}"
    );
}

#[test]
fn prefetch_keeps_new_file_deks_ready() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-prefetch");
    let v = KmsVault::new(&kms, "alias/envfs-prefetch");
    kms.reset_counts();
    let m = v.mount(&kms, "mnt", &["-o", "prefetch=8"]);
    assert!(wait_until(Duration::from_secs(20), || kms
        .count("GenerateDataKey")
        >= 8));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        kms.count("GenerateDataKey"),
        8,
        "the pool must stop at its target"
    );
    kms.reset_counts();
    // With KMS unreachable, five new files still get their keys: from the ready pool, not
    // from a round trip each (which would fail them with EIO). Counted, not timed.
    kms.set(Fault::Drop);
    for i in 0..5 {
        fs::write(m.p(&format!("f{i}")), b"content")
            .unwrap_or_else(|e| panic!("file {i} waited for KMS: {e}"));
    }
    kms.set(Fault::Pass);
    for i in 0..5 {
        assert_eq!(fs::read(m.p(&format!("f{i}"))).unwrap(), b"content");
    }
}

#[test]
fn a_config_naming_another_kms_key_is_refused() {
    let kms = Kms::start();
    let arn1 = kms.create_key("alias/envfs-owner");
    let arn2 = kms.create_key("alias/envfs-attacker");
    let v = KmsVault::new(&kms, "alias/envfs-owner");
    {
        let m = v.mount(&kms, "mnt", &[]);
        fs::write(m.p("f"), b"owner data").unwrap();
    }
    let original = fs::read(v.backing.join("envfs.conf")).unwrap();

    // An attacker replaces the config with one for their key, with a valid MAC.
    let attacker_dir = tempfile::tempdir().unwrap();
    let attacker = attacker_dir.path().join("b");
    fs::create_dir(&attacker).unwrap();
    let mut c = Command::new(envfs_bin());
    kms.env(&mut c);
    let out = run(c
        .env("XDG_CONFIG_HOME", attacker_dir.path().join("cfg"))
        .env("XDG_STATE_HOME", attacker_dir.path().join("cfg"))
        .arg("init")
        .arg(&attacker)
        .arg("--kms-key")
        .arg("alias/envfs-attacker"));
    assert!(out.status.success());
    // With its own vault id (so no pin of ours applies to it) it is refused too: this host
    // knows which vault lives at this path.
    fs::copy(attacker.join("envfs.conf"), v.backing.join("envfs.conf")).unwrap();
    let (mnt0, out) = v.try_mount(&kms, "mnt0", &[]);
    let msg = stderr_text(&out);
    assert_eq!(
        out.status.code(),
        Some(9),
        "a replaced vault must be refused: {msg}"
    );
    assert!(msg.contains("now names vault"), "{msg}");
    assert!(!is_mounted(&mnt0));
    let mut forged = fs::read(attacker.join("envfs.conf")).unwrap();
    forged[12..28].copy_from_slice(&original[12..28]); // keep our vault id, so our pin applies
    fs::write(v.backing.join("envfs.conf"), &forged).unwrap();
    let (mnt, out) = v.try_mount(&kms, "mnt2", &[]);
    let msg = stderr_text(&out);
    assert_eq!(out.status.code(), Some(9), "{msg}");
    assert!(
        msg.contains(&arn2) && msg.contains(&arn1),
        "the refusal must say what changed: {msg}"
    );
    assert!(!is_mounted(&mnt));

    // The same with a config whose MAC no longer verifies.
    let mut edited = original.clone();
    let pos = edited
        .windows(arn1.len())
        .position(|w| w == arn1.as_bytes())
        .unwrap();
    edited[pos + arn1.len() - 1] ^= 1;
    fs::write(v.backing.join("envfs.conf"), &edited).unwrap();
    let (_, out) = v.try_mount(&kms, "mnt3", &[]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_text(&out));

    // An explicit --kms-key that the vault does not name is refused too.
    fs::write(v.backing.join("envfs.conf"), &original).unwrap();
    let (_, out) = v.try_mount(&kms, "mnt4", &["--kms-key", "alias/envfs-attacker"]);
    assert_eq!(out.status.code(), Some(9));
    // And the untouched vault still mounts and reads.
    let m = v.mount(&kms, "mnt5", &[]);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"owner data");
}

fn backing_file_of(v: &KmsVault, mnt: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(mnt.join(name)).unwrap().ino();
    walk(&v.backing)
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().ino() == ino)
        .unwrap()
}

#[test]
fn a_wrapped_dek_moved_to_another_file_is_refused() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-context");
    let v = KmsVault::new(&kms, "alias/envfs-context");
    let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
    fs::write(m.p("a"), b"file a").unwrap();
    fs::write(m.p("b"), b"file b").unwrap();
    let a = backing_file_of(&v, &m.path, "a");
    let b = backing_file_of(&v, &m.path, "b");
    drop(m);
    // Splice a's key slot (wrapped under a's encryption context) into b's header, keeping
    // b's file id: KMS must refuse to decrypt it under b's context.
    let header_a = fs::read(&a).unwrap()[..1024].to_vec();
    let mut bytes_b = fs::read(&b).unwrap();
    bytes_b[56..1024 - 32].copy_from_slice(&header_a[56..1024 - 32]);
    fs::write(&b, &bytes_b).unwrap();
    let m = v.mount(&kms, "mnt", &[]);
    kms.reset_counts();
    let err = fs::read(m.p("b")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        kms.count("Decrypt") >= 1,
        "the refusal must come from KMS itself"
    );
    assert_eq!(fs::read(m.p("a")).unwrap(), b"file a");
}

/// The read requests the mount's daemon has served (`envfs status --json`).
fn reads_served(v: &KmsVault, kms: &Kms, m: &Mount) -> u64 {
    let out = run(v.cmd(kms).arg("status").arg(&m.path).arg("--json"));
    assert!(out.status.success(), "{}", stderr_text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["mounts"][0]["requests"]["read"].as_u64().unwrap()
}

#[test]
fn throttling_is_retried_and_service_errors_fail_only_the_affected_open() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-faults");
    let v = KmsVault::new(&kms, "alias/envfs-faults");
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        for name in ["one", "two", "three", "four"] {
            fs::write(m.p(name), name.repeat(1000)).unwrap();
        }
    }
    let (m, mut child, log) = v.mount_logged(&kms, "mnt", &["-o", "prefetch=0,dek_cache_size=0"]);

    // Throttled twice, then fine: the read succeeds after the SDK's retries.
    kms.reset_counts();
    kms.set(Fault::Error {
        op: Some("Decrypt".into()),
        status: 400,
        code: "ThrottlingException".into(),
        times: Some(2),
    });
    assert_eq!(fs::read(m.p("one")).unwrap(), "one".repeat(1000).as_bytes());
    assert_eq!(
        kms.count("Decrypt"),
        3,
        "expected two throttled attempts and one success"
    );

    // A file opened before the outage keeps working through it.
    let open = fs::File::open(m.p("two")).unwrap();
    let mut buf = [0u8; 3];
    open.read_exact_at(&mut buf, 0).unwrap();

    for code in [
        "DisabledException",
        "KMSInvalidStateException",
        "AccessDeniedException",
    ] {
        kms.set(Fault::Error {
            op: Some("Decrypt".into()),
            status: 400,
            code: code.into(),
            times: None,
        });
        let err = fs::read(m.p("three")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{code}");
        open.read_exact_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"two");
    }

    // KMS unreachable: EIO within the retry budget, the mount survives, then recovers.
    let reads_before = reads_served(&v, &kms, &m);
    kms.set(Fault::Drop);
    kms.reset_counts();
    let err = fs::read(m.p("four")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // The outage surfaces after bounded attempts, not endless retries: the SDK's 5 for each
    // read request that tried to load the file's keys (the kernel sends two for one read(2)
    // that fails: its readahead, then the read itself).
    let attempts = kms.count("Decrypt") as u64;
    let reads = reads_served(&v, &kms, &m) - reads_before;
    assert!(
        attempts >= 1 && attempts <= 5 * reads,
        "{attempts} Decrypt attempts for {reads} read requests"
    );
    open.read_exact_at(&mut buf, 6).unwrap();
    kms.set(Fault::Pass);
    assert_eq!(
        fs::read(m.p("four")).unwrap(),
        "four".repeat(1000).as_bytes()
    );
    assert_eq!(
        fs::read(m.p("three")).unwrap(),
        "three".repeat(1000).as_bytes()
    );
    drop(open);
    drop(m);
    let _ = child.wait();
    let log = fs::read_to_string(&log).unwrap();
    for code in [
        "DisabledException",
        "KMSInvalidStateException",
        "AccessDeniedException",
    ] {
        assert!(log.contains(code), "no log line for {code}: {log}");
    }
    assert!(
        !log.contains("/three") && !log.contains("threethree"),
        "plaintext in log: {log}"
    );
}

#[test]
fn missing_region_or_credentials_fail_fast_with_a_clear_message() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-creds");
    let v = KmsVault::new(&kms, "alias/envfs-creds");
    let mnt = v.dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let _guard = Mount::adopt(mnt.clone());
    // The pinned key is an ARN, which names its region; an alias does not.
    let out = run(v
        .cmd(&kms)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .arg("mount")
        .arg(&v.backing)
        .arg(&mnt)
        .args(["--kms-key", "alias/envfs-creds"]));
    assert_eq!(out.status.code(), Some(8));
    assert!(stderr_text(&out).contains("region"));
    let out = run(v
        .cmd(&kms)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .arg("mount")
        .arg(&v.backing)
        .arg(&mnt));
    assert_eq!(out.status.code(), Some(8), "{}", stderr_text(&out));
    assert!(stderr_text(&out).contains("credentials"));
    assert!(!is_mounted(&mnt));
}

/// Every header's slots as (provider, key id), by backing path: what `envfs rewrap` and the
/// key hierarchy decide, read straight from the backing store.
fn header_keys(backing: &Path) -> Vec<(PathBuf, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for p in walk(backing) {
        let rel = p.strip_prefix(backing).unwrap();
        if !p.is_file() || rel.starts_with("envfs.keys") || rel == Path::new("envfs.conf") {
            continue;
        }
        let bytes = fs::read(&p).unwrap();
        if bytes.is_empty() {
            continue;
        }
        let (h, _) = envfs::format::FileHeader::parse(&bytes[..1024]).unwrap();
        let slots = h
            .slots
            .iter()
            .map(|s| (s.provider.name(), s.key_id.clone()))
            .collect();
        out.push((p, slots));
    }
    out
}

fn hierarchy_status(v: &KmsVault, kms: &Kms, m: &Mount) -> serde_json::Value {
    let out = run(v.cmd(kms).arg("status").arg(&m.path).arg("--json"));
    assert!(out.status.success(), "{}", stderr_text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["mounts"][0]["key_hierarchy"].clone()
}

/// With the key hierarchy on, one GenerateDataKey makes the intermediate key; creating
/// files then costs no KMS call, and reading them back after a remount costs one Decrypt
/// (the intermediate key's), not one per file. Files from before keep their KMS slots.
#[test]
fn the_key_hierarchy_creates_and_reopens_files_without_a_kms_call_per_file() {
    let kms = Kms::start();
    let arn = kms.create_key("alias/envfs-hierarchy");
    let v = KmsVault::new(&kms, "alias/envfs-hierarchy");
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        fs::create_dir(m.p("old")).unwrap();
        for f in 0..3 {
            fs::write(m.p(&format!("old/f{f}")), format!("old {f}")).unwrap();
        }
    }
    kms.reset_counts();
    let out = ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .args(["on", "--lifetime", "1h"])));
    assert!(out.contains("on (intermediate keys live 1h)"), "{out}");
    assert_eq!(
        kms.count("GenerateDataKey"),
        1,
        "the first intermediate key"
    );
    let keys = intermediate_keys(&v.backing);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let info = ok(run(v.cmd(&kms).arg("info").arg(&v.backing)));
    assert!(
        info.contains("key hierarchy:  on (intermediate keys live 1h)"),
        "{info}"
    );

    let data: Vec<u8> = MARKER.iter().copied().cycle().take(10_000).collect();
    {
        let m = v.mount(&kms, "mnt", &[]);
        kms.reset_counts();
        fs::create_dir(m.p("new")).unwrap();
        for f in 0..60 {
            fs::write(m.p(&format!("new/f{f:02}")), &data).unwrap();
        }
        for f in 0..60 {
            assert_eq!(fs::read(m.p(&format!("new/f{f:02}"))).unwrap(), data);
        }
        assert_eq!(kms.count("GenerateDataKey"), 0, "no KMS call per new file");
        assert_eq!(kms.count("Decrypt"), 1, "the intermediate key, once");
        let h = hierarchy_status(&v, &kms, &m);
        assert_eq!(h["current"], keys[0].as_str(), "{h}");
        assert_eq!(h["made"], 0, "{h}");
        assert!(h["wrapped"].as_u64().unwrap() >= 60, "{h}");
    }
    assert_eq!(backing_contains(&v.backing, MARKER), None);
    let ik_slot = format!("ik:{}", keys[0]);
    for (path, slots) in header_keys(&v.backing) {
        let old = path.to_string_lossy().contains("old") || slots.iter().any(|s| s.1 == arn);
        if old {
            continue;
        }
        assert_eq!(
            slots,
            vec![("intermediate".to_string(), ik_slot.clone())],
            "{path:?}"
        );
    }
    {
        let m = v.mount(&kms, "mnt", &["-o", "unwrap_ahead=4"]);
        kms.reset_counts();
        for f in 0..60 {
            assert_eq!(fs::read(m.p(&format!("new/f{f:02}"))).unwrap(), data);
        }
        assert_eq!(
            kms.count("Decrypt"),
            1,
            "after a remount: one call for 60 files"
        );
        // Unwrap ahead learns that these files need no call and stops reading their
        // headers: at most what was queued before the first answer (the window's 4).
        let ahead = unwrap_ahead_settled(&v, &kms, &m);
        assert!(ahead["queued"].as_u64().unwrap() <= 2 * 4, "{ahead}");
        assert_eq!(ahead["unwrapped"], 0, "{ahead}");
        for f in 0..3 {
            assert_eq!(
                fs::read_to_string(m.p(&format!("old/f{f}"))).unwrap(),
                format!("old {f}")
            );
        }
        // While the intermediate key is held, KMS going away does not stop new files.
        kms.set(Fault::Drop);
        fs::write(m.p("new/while-kms-is-down"), b"still written").unwrap();
        assert_eq!(
            fs::read(m.p("new/while-kms-is-down")).unwrap(),
            b"still written"
        );
        kms.set(Fault::Pass);
    }
    let info = ok(run(v.cmd(&kms).arg("info").arg(&v.backing).arg("new/f00")));
    assert!(info.contains(&ik_slot), "{info}");
}

/// On a NAS (sshfs to an sshd on loopback) the key hierarchy works as on a local disk:
/// intermediate-key files are written (temporary file, fsync, link) and read over the
/// network, files cost no KMS call, and rotation and rewrap go through.
#[test]
fn the_key_hierarchy_works_on_an_sshfs_share() {
    let nas = support::nas::Nas::start();
    let kms = Kms::start();
    kms.create_key("alias/envfs-nas");
    let v = KmsVault::new_at(&kms, "alias/envfs-nas", nas.share().join("vault"));
    ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .arg("on")));
    assert_eq!(intermediate_keys(&v.backing).len(), 1);
    {
        let m = v.mount(&kms, "mnt", &[]);
        kms.reset_counts();
        for f in 0..20 {
            fs::write(m.p(&format!("f{f}")), format!("on the share {f}")).unwrap();
        }
        assert_eq!(kms.count("GenerateDataKey"), 0, "no KMS call per new file");
    }
    {
        let m = v.mount(&kms, "mnt", &[]);
        kms.reset_counts();
        for f in 0..20 {
            assert_eq!(
                fs::read_to_string(m.p(&format!("f{f}"))).unwrap(),
                format!("on the share {f}")
            );
        }
        assert_eq!(kms.count("Decrypt"), 1, "the intermediate key, once");
    }
    ok(run(v
        .cmd(&kms)
        .args(["key", "rotate-intermediate"])
        .arg(&v.backing)));
    let out = ok(run(v.cmd(&kms).arg("rewrap").arg(&v.backing)));
    assert!(out.contains("20 files: 20 rewrapped"), "{out}");
    assert_eq!(intermediate_keys(&v.backing).len(), 2);
    let out = run(v.cmd(&kms).arg("cat").arg(&v.backing).arg("f7"));
    assert_eq!(stdout_text(&out), "on the share 7", "{}", stderr_text(&out));
    assert_eq!(backing_contains(&v.backing, b"on the share"), None);
}

/// The count of expired intermediate keys no header uses, from rewrap's second line.
fn unused_keys(out: &str) -> usize {
    let line = out
        .lines()
        .find(|l| l.starts_with("rewrap: intermediate keys:"))
        .unwrap_or_else(|| panic!("no intermediate-key line: {out}"));
    assert!(
        line.ends_with("expired and used by no header here (kept)"),
        "{line}"
    );
    line.rsplit(", ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// An intermediate key replaces itself once past its lifetime, and on demand; rewrap moves
/// every header to the current one, follows a change of the vault's KMS keys in the
/// intermediate keys' own files only, and with the hierarchy off puts per-file KMS slots
/// back; intermediate keys nothing uses are counted and never removed.
#[test]
fn intermediate_keys_rotate_and_rewrap_works_in_both_modes() {
    let kms = Kms::start();
    let first = kms.create_key("alias/envfs-rotate-a");
    let second = kms.create_key("alias/envfs-rotate-b");
    let v = KmsVault::new(&kms, "alias/envfs-rotate-a");
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        fs::write(m.p("before"), b"from before").unwrap();
    }
    ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .args(["on", "--lifetime", "2s"])));
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        fs::write(m.p("early"), b"early").unwrap();
        let early = hierarchy_status(&v, &kms, &m)["current"].clone();
        std::thread::sleep(Duration::from_millis(2500));
        fs::write(m.p("late"), b"late").unwrap();
        let late = hierarchy_status(&v, &kms, &m)["current"].clone();
        assert_ne!(early, late, "a key past its lifetime is replaced");
        assert_eq!(hierarchy_status(&v, &kms, &m)["made"], 1);
    }
    // Longer-lived from now on, and one more key on demand.
    ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .args(["on", "--lifetime", "1h"])));
    let out = ok(run(v
        .cmd(&kms)
        .args(["key", "rotate-intermediate"])
        .arg(&v.backing)));
    // Two from the mount, maybe one from `on` (if the second had expired by then), and
    // the one made on demand.
    let current = intermediate_keys(&v.backing);
    assert!((3..=4).contains(&current.len()), "{current:?}");
    let ik_count = current.len();
    let made = out
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    assert!(current.contains(&made), "{out}");
    let out = ok(run(v.cmd(&kms).arg("rewrap").arg(&v.backing)));
    assert!(out.contains("3 files: 3 rewrapped"), "{out}");
    let wanted = vec![("intermediate".to_string(), format!("ik:{made}"))];
    for (path, slots) in header_keys(&v.backing) {
        assert_eq!(slots, wanted, "{path:?}");
    }
    // The two 2-second keys are expired and unused (the second one, at least, by now: it
    // expired 2 s after the mount made it); counted, and kept.
    assert!((1..=2).contains(&unused_keys(&out)), "{out}");
    assert_eq!(intermediate_keys(&v.backing).len(), ik_count);

    // A second KMS key, then the first removed: only the intermediate keys are rewrapped.
    ok(run(v
        .cmd(&kms)
        .args(["key", "add"])
        .arg(&v.backing)
        .args(["--new-kms-key", "alias/envfs-rotate-b"])));
    kms.reset_counts();
    let out = ok(run(v.cmd(&kms).arg("rewrap").arg(&v.backing)));
    assert!(
        out.contains("3 files: 0 rewrapped, 3 already current"),
        "{out}"
    );
    assert!(
        out.contains(&format!("intermediate keys: {ik_count} rewrapped")),
        "{out}"
    );
    let list = ok(run(v.cmd(&kms).args(["key", "list"]).arg(&v.backing)));
    let first_short = list
        .lines()
        .find(|l| l.contains(&first))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    // Removing a KMS key retires the intermediate keys it wraps (whoever holds it can
    // unwrap them from any old copy of their files): new files, and rewrapped ones, get an
    // intermediate key it never wrapped.
    let out = ok(run(v
        .cmd(&kms)
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg(&first_short)));
    assert!(out.contains("Retired "), "{out}");
    // The vault's key changed on purpose: say so (this host pinned the first).
    let out = ok(run(v
        .cmd(&kms)
        .arg("rewrap")
        .arg(&v.backing)
        .args(["--kms-key", "alias/envfs-rotate-b"])));
    assert!(
        out.contains(&format!("intermediate keys: {ik_count} rewrapped")),
        "{out}"
    );
    assert!(out.contains("3 files: 3 rewrapped"), "{out}");
    let after_removal = intermediate_keys(&v.backing);
    assert_eq!(after_removal.len(), ik_count + 1, "{after_removal:?}");
    let newest = after_removal
        .iter()
        .find(|k| !current.contains(k))
        .unwrap()
        .clone();
    let wanted = vec![("intermediate".to_string(), format!("ik:{newest}"))];
    for (path, slots) in header_keys(&v.backing) {
        assert_eq!(slots, wanted, "{path:?}");
    }
    let ik_count = ik_count + 1;
    for name in intermediate_keys(&v.backing) {
        let bytes = fs::read(v.backing.join("envfs.keys").join(&name)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&first), "{name}");
    }
    for (file, want) in [
        ("before", "from before"),
        ("early", "early"),
        ("late", "late"),
    ] {
        let out = run(v
            .cmd(&kms)
            .arg("cat")
            .arg(&v.backing)
            .arg(file)
            .arg("--kms-key")
            .arg("alias/envfs-rotate-b"));
        assert_eq!(stdout_text(&out), want, "{}", stderr_text(&out));
    }

    // Off: per-file KMS slots again. The intermediate keys stay (a host that has not synced
    // yet may hold files only they wrap).
    ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .arg("off")
        .args(["--kms-key", "alias/envfs-rotate-b"])));
    let config = fs::read(v.backing.join("envfs.conf")).unwrap();
    assert_eq!(&config[8..10], &[0, 3], "version 3 while headers need it");
    let out = ok(run(v
        .cmd(&kms)
        .arg("rewrap")
        .arg(&v.backing)
        .args(["--kms-key", "alias/envfs-rotate-b"])));
    assert!(out.contains("3 files: 3 rewrapped"), "{out}");
    // Every key but the newest is expired by now (lifetime 2 s, or retired).
    assert_eq!(unused_keys(&out), ik_count - 1, "{out}");
    assert_eq!(intermediate_keys(&v.backing).len(), ik_count);
    for (path, slots) in header_keys(&v.backing) {
        assert_eq!(
            slots,
            vec![("aws-kms".to_string(), second.clone())],
            "{path:?}"
        );
    }
    let config = fs::read(v.backing.join("envfs.conf")).unwrap();
    assert_eq!(
        &config[8..10],
        &[0, 2],
        "rewrapped off: config version 2 again"
    );
    assert!(out.contains("version 2 again"), "{out}");
    let out = run(v
        .cmd(&kms)
        .arg("cat")
        .arg(&v.backing)
        .arg("late")
        .args(["--kms-key", "alias/envfs-rotate-b"]));
    assert_eq!(stdout_text(&out), "late", "{}", stderr_text(&out));
}

/// A modified or missing intermediate key fails the files it wraps with a message that
/// says so, and nothing else; put back, they open again. The hierarchy is refused for a
/// vault without a KMS key, leaving its config as it was.
#[test]
fn a_modified_or_missing_intermediate_key_is_reported_and_nothing_is_lost() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-ik-damage");
    let v = KmsVault::new(&kms, "alias/envfs-ik-damage");
    ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .arg("on")));
    {
        let m = v.mount(&kms, "mnt", &[]);
        fs::write(m.p("kept"), b"kept safe").unwrap();
    }
    let name = intermediate_keys(&v.backing).remove(0);
    let path = v.backing.join("envfs.keys").join(&name);
    let good = fs::read(&path).unwrap();
    let cat = || run(v.cmd(&kms).arg("cat").arg(&v.backing).arg("kept"));
    let mut bad = good.clone();
    bad[60] ^= 1;
    fs::write(&path, &bad).unwrap();
    let out = cat();
    assert!(!out.status.success());
    assert!(
        stderr_text(&out).contains("authentication failed: the file was modified"),
        "{}",
        stderr_text(&out)
    );
    fs::remove_file(&path).unwrap();
    let out = cat();
    assert!(!out.status.success());
    assert!(
        stderr_text(&out).contains("is not on the backing store"),
        "{}",
        stderr_text(&out)
    );
    fs::write(&path, &good).unwrap();
    assert_eq!(cat().stdout, b"kept safe");
    // fsck and a mount do not show the key directory as a file or a problem.
    {
        let m = v.mount(&kms, "mnt", &[]);
        let listed: Vec<_> = fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(listed, vec![std::ffi::OsString::from("kept")]);
    }
    let out = run(v.cmd(&kms).arg("fsck").arg(&v.backing));
    assert!(
        out.status.success(),
        "{}{}",
        stdout_text(&out),
        stderr_text(&out)
    );

    // No KMS key in the vault: refused, config untouched.
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("b");
    fs::create_dir(&backing).unwrap();
    let local = |c: &mut Command| {
        c.env("XDG_CONFIG_HOME", dir.path().join("cfg"))
            .env("XDG_STATE_HOME", dir.path().join("cfg"));
    };
    let mut init = Command::new(envfs_bin());
    local(&mut init);
    ok(run(init.arg("init").arg(&backing)));
    let before = fs::read(backing.join("envfs.conf")).unwrap();
    let mut on = Command::new(envfs_bin());
    local(&mut on);
    let out = run(on.args(["key", "hierarchy"]).arg(&backing).arg("on"));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr_text(&out).contains("this vault has none"),
        "{}",
        stderr_text(&out)
    );
    assert_eq!(fs::read(backing.join("envfs.conf")).unwrap(), before);
    assert!(!backing.join("envfs.keys").exists());
}

/// `init --kms-key K --key-hierarchy[=LIFETIME]` makes a vault with the hierarchy on and its
/// first intermediate key; without a KMS key the flag is a usage error that creates nothing.
#[test]
fn init_can_turn_the_key_hierarchy_on() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-init-hierarchy");
    let dir = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = Command::new(envfs_bin());
        c.env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_STATE_HOME", dir.path().join("config"));
        kms.env(&mut c);
        c
    };
    let backing = dir.path().join("b");
    fs::create_dir(&backing).unwrap();
    let out = ok(run(cmd().arg("init").arg(&backing).args([
        "--kms-key",
        "alias/envfs-init-hierarchy",
        "--key-hierarchy=2h",
    ])));
    assert!(
        out.contains("The key hierarchy is on (intermediate keys live 2h)"),
        "{out}"
    );
    assert_eq!(intermediate_keys(&backing).len(), 1);
    let info = ok(run(cmd().arg("info").arg(&backing)));
    assert!(
        info.contains("key hierarchy:  on (intermediate keys live 2h)"),
        "{info}"
    );
    assert!(info.contains("format version: 3"), "{info}");

    let plain = dir.path().join("p");
    fs::create_dir(&plain).unwrap();
    let out = run(cmd()
        .arg("init")
        .arg(&plain)
        .args(["--key-file"])
        .arg(dir.path().join("p.key"))
        .arg("--key-hierarchy"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("--kms-key"),
        "{}",
        stderr_text(&out)
    );
    assert_eq!(fs::read_dir(&plain).unwrap().count(), 0);
    assert!(!dir.path().join("p.key").exists());
}

/// With intermediate keys in the vault, rewrap on a host that cannot reach one of the
/// vault's KMS keys changes nothing and says why: moving headers to an intermediate key that
/// key does not wrap would lock out the hosts that have only it.
#[test]
fn rewrap_with_a_kms_key_out_of_reach_changes_nothing() {
    let kms = Kms::start();
    kms.create_key("alias/envfs-reach-a");
    kms.create_key("alias/envfs-reach-b");
    let v = KmsVault::new(&kms, "alias/envfs-reach-a");
    {
        let m = v.mount(&kms, "mnt", &["-o", "prefetch=0"]);
        fs::write(m.p("f"), b"per-file KMS slot").unwrap();
    }
    ok(run(v
        .cmd(&kms)
        .args(["key", "add"])
        .arg(&v.backing)
        .args(["--new-kms-key", "alias/envfs-reach-b"])));
    ok(run(v
        .cmd(&kms)
        .args(["key", "hierarchy"])
        .arg(&v.backing)
        .arg("on")));
    let before = header_keys(&v.backing);
    let keys_before = intermediate_keys(&v.backing);
    // The held key (A) is described when the vault opens; the second DescribeKey (B, which
    // the hierarchy connects to) fails.
    kms.set(Fault::ErrorAfter {
        op: "DescribeKey".into(),
        pass: 1,
        status: 400,
        code: "NotFoundException".into(),
    });
    let out = run(v.cmd(&kms).arg("rewrap").arg(&v.backing));
    kms.set(Fault::Pass);
    assert_eq!(out.status.code(), Some(8), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("needs every KMS key of the vault"),
        "{}",
        stderr_text(&out)
    );
    assert_eq!(header_keys(&v.backing), before, "no header moved");
    assert_eq!(intermediate_keys(&v.backing), keys_before);
    // Both reachable: the header moves.
    let out = ok(run(v.cmd(&kms).arg("rewrap").arg(&v.backing)));
    assert!(out.contains("1 files: 1 rewrapped"), "{out}");
    let out = run(v.cmd(&kms).arg("cat").arg(&v.backing).arg("f"));
    assert_eq!(out.stdout, b"per-file KMS slot");
}
