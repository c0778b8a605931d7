//! One vault in a folder that a real Syncthing keeps in step between two "hosts" (two
//! instances on loopback, tests/support/syncthing.rs), envfs mounted on both: what one
//! host writes reads back identical on the other; concurrent edits leave both versions
//! readable in both mounts under recognisable names, fsck lists them, and the resolver's
//! choice reaches both hosts; a file in transit is never read partially; a directory
//! renamed on one side while the other deletes it converges without envfs errors; long
//! names and symlinks sync. The folders use the shipped ignore lines (docs/stignore).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};
use support::syncthing::{Node, SyncPair, tree};
use support::{Mount, TestVault, is_mounted, pattern, run, stderr_text, stdout_text, wait_until};

/// Generous bounds: a sync of a few files takes about a second on loopback.
const SYNC: Duration = Duration::from_secs(60);
/// How long a mount may take to show what reached its backing store (its caches live 1 s).
const SETTLE: Duration = Duration::from_secs(10);

/// One host: a backing directory kept in step by Syncthing, and envfs mounted on it in the
/// foreground with its log in a file.
struct Host {
    backing: PathBuf,
    mount: Mount,
    daemon: Child,
    log: PathBuf,
    /// The host's own records (`XDG_CONFIG_HOME`).
    config: PathBuf,
    /// How its commands are given the key, and their environment (a KMS endpoint).
    key_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Host {
    fn mount(v: &TestVault, backing: &Path, name: &str) -> Host {
        let key_args = vec!["--key-file".to_string(), v.key.display().to_string()];
        Host::mount_with(v, backing, name, key_args, Vec::new())
    }

    fn mount_with(
        v: &TestVault,
        backing: &Path,
        name: &str,
        key_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Host {
        let mnt = v.mountpoint(&format!("mnt-{name}"));
        let log = v.dir.path().join(format!("{name}.log"));
        let config = v.dir.path().join(format!("config-{name}"));
        let daemon = Command::new(support::envfs_bin())
            .env("XDG_CONFIG_HOME", &config)
            .env("XDG_STATE_HOME", &config)
            .envs(env.iter().cloned())
            .arg("mount")
            .arg("-f")
            .arg(backing)
            .arg(&mnt)
            .args(&key_args)
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mount = Mount::adopt(mnt.clone());
        assert!(
            wait_until(Duration::from_secs(10), || is_mounted(&mnt)),
            "mount {name} did not come up: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Host {
            backing: backing.to_path_buf(),
            mount,
            daemon,
            log,
            config,
            key_args,
            env,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mount.p(rel)
    }

    /// `envfs COMMAND BACKING ARGS… KEY-ARGS` (`key` commands take two words).
    fn envfs(&self, _v: &TestVault, args: &[&str]) -> std::process::Output {
        let words = if args[0] == "key" { 2 } else { 1 };
        run(Command::new(support::envfs_bin())
            .env("XDG_CONFIG_HOME", &self.config)
            .env("XDG_STATE_HOME", &self.config)
            .envs(self.env.iter().cloned())
            .args(&args[..words])
            .arg(&self.backing)
            .args(&args[words..])
            .args(&self.key_args))
    }

    /// Unmount, and the daemon's log: it must hold no integrity failure.
    fn finish(mut self) -> String {
        self.mount.unmount();
        let _ = self.daemon.wait();
        let log = fs::read_to_string(&self.log).unwrap();
        assert!(
            !log.contains("integrity failure") && !log.contains("ERROR"),
            "{}: envfs logged errors:\n{log}",
            self.backing.display()
        );
        log
    }
}

/// A vault created on host A, synced to host B's empty directory, envfs mounted on both,
/// with the shipped ignore lines in both folders.
fn two_hosts() -> (TestVault, SyncPair, Host, Host) {
    two_hosts_versioned("")
}

/// The same, with Syncthing's file versioning of this type on both sides.
fn two_hosts_versioned(versioning: &str) -> (TestVault, SyncPair, Host, Host) {
    let v = TestVault::new(&[]);
    let b = v.dir.path().join("backing-b");
    fs::create_dir(&b).unwrap();
    let ignore = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/stignore")).unwrap();
    for dir in [&v.backing, &b] {
        fs::write(dir.join(".stignore"), &ignore).unwrap();
    }
    let pair = SyncPair::start_with_versioning(&v.backing, &b, versioning);
    assert!(pair.wait_in_sync(SYNC), "the vault did not reach B");
    assert!(b.join("envfs.conf").exists());
    let host_a = Host::mount(&v, &v.backing.clone(), "a");
    let host_b = Host::mount(&v, &b, "b");
    (v, pair, host_a, host_b)
}

/// Wait until both mounts show the same tree, and return it.
#[track_caller]
fn converged(pair: &SyncPair, a: &Host, b: &Host) -> BTreeMap<String, Node> {
    assert!(
        pair.wait_in_sync(SYNC),
        "the backing stores did not converge"
    );
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let same = wait_until(SETTLE, || {
        last = (tree(&a.mount.path), tree(&b.mount.path));
        last.0 == last.1
    });
    assert!(
        same,
        "the mounts differ:\nA {:?}\nB {:?}",
        last.0.keys(),
        last.1.keys()
    );
    last.0
}

fn bytes(t: &BTreeMap<String, Node>, name: &str) -> Vec<u8> {
    match t.get(name) {
        Some(Node::File(_, b)) => b.clone(),
        other => panic!("{name}: expected a file, found {other:?} in {:?}", t.keys()),
    }
}

/// Set a file's mtime through the mount (the older side loses a conflict).
fn age(path: &Path, by: Duration) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

fn fsck_json(host: &Host, v: &TestVault) -> serde_json::Value {
    let out = host.envfs(v, &["fsck", "--json"]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        stdout_text(&out),
        stderr_text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both vault copies pass fsck; then both mounts end with no envfs error logged.
fn finish_clean(v: &TestVault, a: Host, b: Host) {
    for host in [&a, &b] {
        let doc = fsck_json(host, v);
        assert_eq!(doc["summary"]["problems"], 0, "{doc}");
    }
    a.finish();
    b.finish();
}

const LONG: &str = "a name long enough to be stored under a hash with a sidecar, \
                    because its encrypted form is longer than the vault's limit of two \
                    hundred and twenty characters.txt";

#[test]
fn what_one_host_writes_reads_back_identical_on_the_other() {
    let (v, pair, a, b) = two_hosts();
    let big = pattern(1, 3 << 20);
    fs::create_dir_all(a.p("docs/deep")).unwrap();
    fs::write(a.p("docs/report.docx"), b"quarterly numbers").unwrap();
    fs::write(a.p("docs/deep/big.bin"), &big).unwrap();
    fs::write(a.p("empty"), b"").unwrap();
    fs::write(a.p(LONG), b"long-named").unwrap();
    std::os::unix::fs::symlink("docs/report.docx", a.p("link")).unwrap();
    // One of envfs' temporary names in A's backing store: ignored, never sent.
    fs::write(a.backing.join(".envfs-tmp-0123456789abcdef"), b"x").unwrap();
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "docs/report.docx"), b"quarterly numbers");
    assert_eq!(bytes(&t, "docs/deep/big.bin"), big);
    assert_eq!(bytes(&t, "empty"), b"");
    assert_eq!(bytes(&t, LONG), b"long-named");
    assert_eq!(t["link"], Node::Symlink("docs/report.docx".into()));
    assert!(
        !b.backing.join(".envfs-tmp-0123456789abcdef").exists(),
        "ignored"
    );
    fs::remove_file(a.backing.join(".envfs-tmp-0123456789abcdef")).unwrap();
    assert!(
        fs::read_dir(&b.backing).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".envfs-ln.name")),
        "the sidecar travels with its entry"
    );

    // Back the other way: renames and deletes made on B reach A.
    fs::rename(b.p("docs/report.docx"), b.p("docs/final.docx")).unwrap();
    fs::rename(b.p(LONG), b.p("short.txt")).unwrap();
    fs::remove_file(b.p("empty")).unwrap();
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "docs/final.docx"), b"quarterly numbers");
    assert_eq!(bytes(&t, "short.txt"), b"long-named");
    for gone in ["docs/report.docx", LONG, "empty"] {
        assert!(!t.contains_key(gone), "{gone} still there");
    }
    finish_clean(&v, a, b);
}

#[test]
fn concurrent_edits_leave_both_versions_readable_resolvable_and_in_step() {
    let (v, pair, a, b) = two_hosts();
    fs::create_dir(a.p("docs")).unwrap();
    fs::write(a.p("docs/report.docx"), b"the common base").unwrap();
    fs::write(a.p(LONG), b"long base").unwrap();
    converged(&pair, &a, &b);

    pair.pause();
    fs::write(a.p("docs/report.docx"), b"A's edit, made first").unwrap();
    age(&a.p("docs/report.docx"), Duration::from_secs(600));
    fs::write(a.p(LONG), b"A's long edit").unwrap();
    age(&a.p(LONG), Duration::from_secs(600));
    fs::write(b.p("docs/report.docx"), b"B's edit, made later").unwrap();
    fs::write(b.p(LONG), b"B's long edit").unwrap();
    pair.resume();
    let t = converged(&pair, &a, &b);

    // Both versions, in both mounts, under recognisable names.
    assert_eq!(bytes(&t, "docs/report.docx"), b"B's edit, made later");
    assert_eq!(bytes(&t, LONG), b"B's long edit");
    let copies: Vec<&String> = t
        .keys()
        .filter(|k| k.starts_with("docs/report.sync-conflict-") && k.ends_with(".docx"))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "one conflict copy of report.docx: {:?}",
        t.keys()
    );
    let copy = copies[0].clone();
    assert_eq!(bytes(&t, &copy), b"A's edit, made first");
    let (stem, ext) = LONG.rsplit_once('.').unwrap();
    let long_copy = t
        .keys()
        .find(|k| k.starts_with(&format!("{stem}.sync-conflict-")) && k.ends_with(ext))
        .unwrap_or_else(|| panic!("no copy of the long name: {:?}", t.keys()))
        .clone();
    assert_eq!(bytes(&t, &long_copy), b"A's long edit");

    // fsck on each host names both sides.
    for host in [&a, &b] {
        let doc = fsck_json(host, &v);
        assert_eq!(doc["summary"]["problems"], 0, "{doc}");
        let findings = doc["findings"].as_array().unwrap();
        let found = findings
            .iter()
            .find(|f| f["path"] == copy.as_str())
            .expect("listed");
        assert_eq!(found["kind"], "conflict-copy");
        assert_eq!(found["copy_of"], "docs/report.docx");
        assert!(
            findings
                .iter()
                .any(|f| f["path"] == long_copy.as_str() && f["copy_of"] == LONG)
        );
    }

    // Resolve on A, keeping A's (older) edit; the result reaches B.
    let out = a.envfs(&v, &["conflicts", "--keep", &copy, "--apply"]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_text(&out),
        stderr_text(&out)
    );
    let out = a.envfs(&v, &["conflicts", "--keep", "newest", "--apply"]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_text(&out),
        stderr_text(&out)
    );
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "docs/report.docx"), b"A's edit, made first");
    assert_eq!(bytes(&t, LONG), b"B's long edit");
    let left: Vec<&String> = t.keys().filter(|k| k.contains("sync-conflict")).collect();
    assert!(left.is_empty(), "resolved everywhere: {left:?}");
    assert!(stdout_text(&b.envfs(&v, &["conflicts"])).contains("no conflicts"));

    let log = a.finish();
    assert!(
        log.contains("conflict copy shown"),
        "A's log says the edits met:\n{log}"
    );
    b.finish();
}

#[test]
fn a_file_in_transit_is_never_read_partially() {
    let (_v, pair, a, b) = two_hosts();
    let old = pattern(7, 1 << 20);
    fs::write(a.p("big.bin"), &old).unwrap();
    converged(&pair, &a, &b);

    // Replaced the way editors save: a new file, renamed over the old one. B reads it over
    // and over while Syncthing carries the new one across.
    let new = pattern(8, 24 << 20);
    let fresh = pattern(9, 12 << 20);
    let target = b.p("big.bin");
    let appears = b.p("fresh.bin");
    let reader = std::thread::spawn({
        let (old, new, fresh) = (old.clone(), new.clone(), fresh.clone());
        move || {
            let deadline = Instant::now() + SYNC;
            let (mut saw_new, mut saw_fresh, mut reads) = (false, false, 0);
            while !(saw_new && saw_fresh) && Instant::now() < deadline {
                match fs::read(&target) {
                    Ok(got) if got == new => saw_new = true,
                    Ok(got) => assert!(got == old, "big.bin read as {} mixed bytes", got.len()),
                    Err(e) => panic!("big.bin: {e}"),
                }
                match fs::read(&appears) {
                    Ok(got) => {
                        assert!(
                            got == fresh,
                            "fresh.bin read as {} partial bytes",
                            got.len()
                        );
                        saw_fresh = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("fresh.bin: {e}"),
                }
                reads += 1;
            }
            (saw_new, saw_fresh, reads)
        }
    });
    fs::write(a.p("big.tmp"), &new).unwrap();
    fs::rename(a.p("big.tmp"), a.p("big.bin")).unwrap();
    fs::write(a.p("fresh.bin"), &fresh).unwrap();
    let (saw_new, saw_fresh, reads) = reader.join().expect("the reader saw bad bytes");
    assert!(
        saw_new && saw_fresh,
        "B never read the new files ({reads} reads)"
    );
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "big.bin"), new);
    a.finish();
    b.finish();
}

#[test]
fn a_directory_renamed_on_one_side_while_the_other_deletes_it_converges() {
    let (v, pair, a, b) = two_hosts();
    fs::create_dir_all(a.p("proj/src")).unwrap();
    fs::write(a.p("proj/src/main.rs"), b"fn main() {}").unwrap();
    fs::write(a.p("proj/README"), b"readme").unwrap();
    converged(&pair, &a, &b);

    pair.pause();
    fs::rename(a.p("proj"), a.p("project")).unwrap();
    fs::remove_dir_all(b.p("proj")).unwrap();
    pair.resume();
    let t = converged(&pair, &a, &b);
    assert!(!t.contains_key("proj"), "{:?}", t.keys());
    // Whatever Syncthing decides for the moved files, both hosts agree and every file that
    // is there reads back whole.
    for (name, node) in &t {
        if let Node::File(_, got) = node {
            assert!(
                [&b"fn main() {}"[..], b"readme"].contains(&got.as_slice()),
                "{name}: {got:?}"
            );
        }
    }
    finish_clean(&v, a, b);
}

#[test]
fn versions_syncthing_keeps_are_reachable_through_the_mount_and_envfs_cat() {
    let (v, pair, a, b) = two_hosts_versioned("simple");
    fs::create_dir(a.p("docs")).unwrap();
    fs::write(a.p("docs/report.docx"), b"version one").unwrap();
    converged(&pair, &a, &b);
    fs::write(a.p("docs/report.docx"), b"version two").unwrap();
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "docs/report.docx"), b"version two");

    // B's old copy went to B's .stversions: never listed, reachable by name, decrypted.
    let root: Vec<String> = fs::read_dir(&b.mount.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root.contains(&".stversions".to_string()), "{root:?}");
    let kept: Vec<String> = fs::read_dir(b.p(".stversions/docs"))
        .expect("the versions folder, by name")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let name = &kept[0];
    assert!(
        name.starts_with("report~") && name.ends_with(".docx"),
        "{name}"
    );
    let rel = format!(".stversions/docs/{name}");
    assert_eq!(fs::read(b.p(&rel)).unwrap(), b"version one");
    let out = b.envfs(&v, &["cat", &rel]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert_eq!(out.stdout, b"version one");
    let out = b.envfs(&v, &["info", &rel]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    // Restoring it is a copy through the mount.
    fs::copy(b.p(&rel), b.p("docs/report.docx")).unwrap();
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "docs/report.docx"), b"version one");
    a.finish();
    b.finish();
}

/// The key hierarchy in a synced folder, the vault's only key a KMS key: each host's files
/// open on the other through intermediate keys that travel as files of their own
/// (`envfs.keys/`, not ignored by the shipped lines); a key one host makes on demand reaches
/// the other, and both hosts' headers and key directories end up the same.
#[test]
fn the_key_hierarchy_syncs_its_intermediate_keys_and_each_host_reads_the_others_files() {
    let kms = support::kms::Kms::start();
    kms.create_key("alias/envfs-sync");
    let v = TestVault::new(&[]);
    let admin = |words: &[&str], rest: &[&str]| {
        let mut c = Command::new(support::envfs_bin());
        c.env("XDG_CONFIG_HOME", v.dir.path().join("config"))
            .env("XDG_STATE_HOME", v.dir.path().join("config"));
        kms.env(&mut c);
        let out = run(c
            .args(words)
            .arg(&v.backing)
            .args(rest)
            .arg("--key-file")
            .arg(&v.key));
        assert!(out.status.success(), "{words:?}: {}", stderr_text(&out));
        stdout_text(&out)
    };
    // A KMS key, the hierarchy on, then the local key removed: every header of this vault
    // is wrapped by an intermediate key only.
    admin(&["key", "add"], &["--new-kms-key", "alias/envfs-sync"]);
    admin(&["key", "hierarchy"], &["on"]);
    let list = admin(&["key", "list"], &[]);
    let local = list
        .lines()
        .find(|l| l.contains("local:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let mut c = Command::new(support::envfs_bin());
    c.env("XDG_CONFIG_HOME", v.dir.path().join("config"))
        .env("XDG_STATE_HOME", v.dir.path().join("config"));
    kms.env(&mut c);
    let out = run(c
        .args(["key", "remove"])
        .arg(&v.backing)
        .arg(&local)
        .args(["--kms-key", "alias/envfs-sync"]));
    assert!(out.status.success(), "{}", stderr_text(&out));

    let b_dir = v.dir.path().join("backing-b");
    fs::create_dir(&b_dir).unwrap();
    let ignore = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/stignore")).unwrap();
    for dir in [&v.backing, &b_dir] {
        fs::write(dir.join(".stignore"), &ignore).unwrap();
    }
    let pair = SyncPair::start(&v.backing, &b_dir);
    assert!(pair.wait_in_sync(SYNC), "the vault did not reach B");
    assert_eq!(
        support::intermediate_keys(&b_dir).len(),
        1,
        "the intermediate key travels with the vault"
    );
    let kms_args = vec!["--kms-key".to_string(), "alias/envfs-sync".to_string()];
    let a = Host::mount_with(&v, &v.backing.clone(), "a", kms_args.clone(), kms.vars());
    let b = Host::mount_with(&v, &b_dir, "b", kms_args, kms.vars());
    fs::write(a.p("from-a"), b"written on A").unwrap();
    fs::write(b.p("from-b"), b"written on B").unwrap();
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "from-a"), b"written on A");
    assert_eq!(bytes(&t, "from-b"), b"written on B");

    // A new key made on B's side: A's mount opens B's next file with it.
    let out = b.envfs(&v, &["key", "rotate-intermediate"]);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let made = stdout_text(&out)
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    // A fresh mount on B wraps with the newest key at once (a running one within a minute).
    let b = {
        b.finish();
        Host::mount_with(
            &v,
            &b_dir,
            "b2",
            vec!["--kms-key".into(), "alias/envfs-sync".into()],
            kms.vars(),
        )
    };
    fs::write(b.p("after-rotation"), b"under the new key").unwrap();
    let t = converged(&pair, &a, &b);
    assert_eq!(bytes(&t, "after-rotation"), b"under the new key");
    assert_eq!(
        support::intermediate_keys(&v.backing),
        support::intermediate_keys(&b_dir)
    );
    assert!(support::intermediate_keys(&v.backing).contains(&made));
    let info = b.envfs(&v, &["info", "after-rotation"]);
    assert!(
        stdout_text(&info).contains(&format!("ik:{made}")),
        "{}",
        stdout_text(&info)
    );
    finish_clean(&v, a, b);
}
