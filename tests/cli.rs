//! The `envfs` binary end to end: `init`, `info` and `cat`, their output, the files they
//! create and their documented exit codes (src/cli/exit.rs). Every run gets its own
//! XDG_CONFIG_HOME and HOME in a temporary directory, so the default key path is
//! `$tmp/xdg/envfs/keys/<vault-id>.key` and nothing touches the real home directory.

mod support;

use envfs::format::VaultConfig;
use envfs::fs::Fs;
use envfs::keys::local::LocalKeyProvider;
use envfs::vault::Vault;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use support::fs_core::write_file;
use support::golden_table::{content, golden_plain_files};
use support::{copy_tree, envfs_bin, exit_code, pattern, run, stderr_text};

// The exit codes are a documented contract, so they are spelled out here as numbers rather
// than imported: renumbering one in src/cli/exit.rs must fail these tests.
const OK: i32 = 0;
const FAILURE: i32 = 1;
const USAGE: i32 = 2;
const NOT_A_VAULT: i32 = 3;
const CORRUPT_CONFIG: i32 = 4;
const UNSUPPORTED_VERSION: i32 = 5;
const KEY_FILE: i32 = 6;
const WRONG_KEY: i32 = 7;
const ALREADY_EXISTS: i32 = 10;
const NOT_FOUND: i32 = 11;
const INTEGRITY: i32 = 12;

/// A scratch home for one test: `xdg` is XDG_CONFIG_HOME.
struct Env {
    tmp: tempfile::TempDir,
}

/// One finished run of the binary.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "exit code (stdout: {}, stderr: {})",
            self.out(),
            self.stderr
        );
        self
    }
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn xdg(&self) -> PathBuf {
        self.path("xdg")
    }

    fn keys_dir(&self) -> PathBuf {
        self.xdg().join("envfs/keys")
    }

    /// A new empty directory under the scratch home.
    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = run(Command::new(envfs_bin())
            .args(args)
            .env("XDG_CONFIG_HOME", self.xdg())
            .env("XDG_STATE_HOME", self.xdg())
            .env("HOME", self.path("home"))
            .env_remove("ENVFS_KEY_FILE")
            .env_remove("ENVFS_LOG"));
        Run {
            code: exit_code(&out),
            stderr: stderr_text(&out),
            stdout: out.stdout,
        }
    }

    /// `envfs init DIR` with extra flags; returns the new vault's id.
    fn init(&self, dir: &Path, flags: &[&str]) -> String {
        let mut args: Vec<OsString> = vec!["init".into(), dir.into()];
        args.extend(flags.iter().map(OsString::from));
        self.run(&args).expect(OK);
        vault_id(dir)
    }

    fn default_key(&self, id: &str) -> PathBuf {
        self.keys_dir().join(format!("{id}.key"))
    }

    /// Open a vault through the library with its default key file.
    fn fs(&self, dir: &Path) -> Fs {
        let key = LocalKeyProvider::load(&self.default_key(&vault_id(dir))).unwrap();
        Fs::new(Arc::new(Vault::open(dir, vec![Arc::new(key)]).unwrap()))
    }
}

fn vault_id(dir: &Path) -> String {
    let bytes = std::fs::read(dir.join("envfs.conf")).unwrap();
    VaultConfig::parse(&bytes).unwrap().0.vault_id_hex()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn entries(dir: &Path) -> Vec<OsString> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name()).collect(),
        Err(_) => Vec::new(),
    }
}

// ---- the golden vault ---------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

fn golden_key() -> PathBuf {
    golden_dir().join("golden.key")
}

const GOLDEN_ID: &str = "6f3dc55c835b73de43e7175ea0909acd";

/// A writable copy of the golden vault (files, directories, symlinks).
fn golden_copy(env: &Env) -> PathBuf {
    let dst = env.path("golden-copy");
    copy_tree(&golden_dir().join("vault"), &dst);
    dst
}

fn cat_golden(env: &Env, vault: &Path, path: &str) -> Run {
    env.run([
        OsStr::new("cat"),
        vault.as_os_str(),
        OsStr::new(path),
        OsStr::new("--key-file"),
        golden_key().as_os_str(),
    ])
}

// ---- init -----------------------------------------------------------------------------------

#[test]
fn init_creates_config_and_private_key_file() {
    let env = Env::new();
    let dir = env.dir("vault");
    let run = env.run([OsStr::new("init"), dir.as_os_str()]).expect(OK);
    let id = vault_id(&dir);
    assert_eq!(id.len(), 32);
    assert_eq!(entries(&dir), vec![OsString::from("envfs.conf")]);
    let key = env.default_key(&id);
    assert_eq!(
        entries(&env.keys_dir()),
        vec![OsString::from(format!("{id}.key"))]
    );
    assert_eq!(mode(&key), 0o600, "key file mode");
    assert_eq!(mode(&env.keys_dir()), 0o700, "key directory mode");
    let out = run.out();
    assert!(out.contains(&id), "{out}");
    assert!(out.contains(&key.display().to_string()), "{out}");
    // The key it made opens the vault.
    env.fs(&dir);
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let env = Env::new();
    let dir = env.dir("vault");
    std::fs::write(dir.join("existing.txt"), b"hello").unwrap();
    let run = env
        .run([OsStr::new("init"), dir.as_os_str()])
        .expect(ALREADY_EXISTS);
    assert!(run.stderr.contains("not empty"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert_eq!(entries(&dir), vec![OsString::from("existing.txt")]);
    assert!(
        entries(&env.keys_dir()).is_empty(),
        "no key file left behind"
    );
}

#[test]
fn init_refuses_an_existing_vault() {
    let env = Env::new();
    let dir = env.dir("vault");
    let id = env.init(&dir, &[]);
    let config = std::fs::read(dir.join("envfs.conf")).unwrap();
    let run = env
        .run([OsStr::new("init"), dir.as_os_str()])
        .expect(ALREADY_EXISTS);
    assert!(run.stderr.contains("already holds"), "{}", run.stderr);
    assert_eq!(std::fs::read(dir.join("envfs.conf")).unwrap(), config);
    assert_eq!(
        entries(&env.keys_dir()),
        vec![OsString::from(format!("{id}.key"))],
        "the refused init left no second key file"
    );
}

#[test]
fn init_rejects_bad_sizes_and_creates_nothing() {
    let env = Env::new();
    let dir = env.dir("vault");
    for flags in [
        ["--chunk-size", "1000"],
        ["--chunk-size", "3000"],
        ["--chunk-size", "512"],
        ["--chunk-size", "2097152"],
        ["--chunk-size", "0"],
        ["--chunk-size", "lots"],
        ["--header-size", "100"],
        ["--long-name-limit", "255"],
        ["--name-encoding", "hex"],
    ] {
        let mut args = vec![OsStr::new("init"), dir.as_os_str()];
        args.extend(flags.iter().map(OsStr::new));
        let run = env.run(&args).expect(USAGE);
        assert!(!run.stderr.is_empty(), "{flags:?}: no message");
        assert!(
            entries(&dir).is_empty(),
            "{flags:?} created {:?}",
            entries(&dir)
        );
        assert!(!env.xdg().exists(), "{flags:?} left a key directory");
    }
    // The message for a bad chunk size says what is allowed.
    let run = env
        .run([
            OsStr::new("init"),
            dir.as_os_str(),
            OsStr::new("--chunk-size"),
            OsStr::new("3000"),
        ])
        .expect(USAGE);
    assert!(run.stderr.contains("power of two"), "{}", run.stderr);
    // A good non-default size works and is shown by info.
    env.init(&dir, &["--chunk-size", "65536"]);
    let out = env
        .run([OsStr::new("info"), dir.as_os_str()])
        .expect(OK)
        .out();
    assert!(out.contains("chunk size:     65536 bytes"), "{out}");
}

#[test]
fn init_with_a_new_key_file_path_creates_it_there() {
    let env = Env::new();
    let dir = env.dir("vault");
    let key = env.path("elsewhere/my.key");
    let run = env
        .run([
            OsStr::new("init"),
            dir.as_os_str(),
            OsStr::new("--key-file"),
            key.as_os_str(),
        ])
        .expect(OK);
    assert!(run.out().contains("(new)"), "{}", run.out());
    assert_eq!(mode(&key), 0o600);
    assert!(
        entries(&env.keys_dir()).is_empty(),
        "nothing at the default path"
    );
    // Without --key-file the vault's default key is missing; with it, it opens.
    let run = env.run([OsStr::new("info"), dir.as_os_str()]).expect(OK);
    assert!(run.out().contains("authenticated:  no"), "{}", run.out());
    let out = env
        .run([
            OsStr::new("info"),
            dir.as_os_str(),
            OsStr::new("--key-file"),
            key.as_os_str(),
        ])
        .expect(OK)
        .out();
    assert!(out.contains("authenticated:  yes"), "{out}");
}

#[test]
fn init_with_an_existing_key_file_reuses_it() {
    let env = Env::new();
    let (a, b) = (env.dir("a"), env.dir("b"));
    let key = env.path("shared.key");
    let key_arg = ["--key-file", key.to_str().unwrap()];
    env.init(&a, &key_arg);
    let key_text = std::fs::read(&key).unwrap();
    let run = env
        .run([
            OsStr::new("init"),
            b.as_os_str(),
            OsStr::new("--key-file"),
            key.as_os_str(),
        ])
        .expect(OK);
    assert!(run.out().contains("(existing)"), "{}", run.out());
    assert_eq!(std::fs::read(&key).unwrap(), key_text, "key file unchanged");
    assert!(entries(&env.keys_dir()).is_empty());
    let slots = |dir: &Path| {
        let bytes = std::fs::read(dir.join("envfs.conf")).unwrap();
        let config = VaultConfig::parse(&bytes).unwrap().0;
        (config.vault_id, config.slots[0].key_id.clone())
    };
    let ((id_a, key_a), (id_b, key_b)) = (slots(&a), slots(&b));
    assert_ne!(id_a, id_b, "two vaults, two ids");
    assert_eq!(key_a, key_b, "one key");
    for dir in [&a, &b] {
        let out = env
            .run([
                OsStr::new("info"),
                dir.as_os_str(),
                OsStr::new("--key-file"),
                key.as_os_str(),
            ])
            .expect(OK)
            .out();
        assert!(out.contains("authenticated:  yes"), "{out}");
    }
}

#[test]
fn init_with_an_unusable_key_file_creates_no_vault() {
    let env = Env::new();
    let dir = env.dir("vault");
    // An existing file that is not a key file is not overwritten, and no vault is made.
    let bad = env.path("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let run = env
        .run([
            OsStr::new("init"),
            dir.as_os_str(),
            OsStr::new("--key-file"),
            bad.as_os_str(),
        ])
        .expect(KEY_FILE);
    assert!(run.stderr.contains("bad.key"), "{}", run.stderr);
    assert_eq!(std::fs::read(&bad).unwrap(), b"not a key\n");
    assert!(entries(&dir).is_empty());
    // The default key directory cannot be created.
    std::fs::write(env.xdg(), b"a file, not a directory").unwrap();
    env.run([OsStr::new("init"), dir.as_os_str()])
        .expect(KEY_FILE);
    assert!(entries(&dir).is_empty());
}

#[test]
fn init_plaintext_names_and_base32_are_honoured() {
    let env = Env::new();
    let plain = env.dir("plain");
    let b32 = env.dir("b32");
    env.init(&plain, &["--plaintext-names"]);
    env.init(&b32, &["--name-encoding", "base32"]);

    let info = |dir: &Path| {
        env.run([OsStr::new("info"), dir.as_os_str()])
            .expect(OK)
            .out()
    };
    let out = info(&plain);
    assert!(out.contains("names:          plaintext"), "{out}");
    let out = info(&b32);
    assert!(out.contains("names:          encrypted, base32"), "{out}");

    let data = b"some content".to_vec();
    write_file(&env.fs(&plain), "Readme.txt", &data);
    write_file(&env.fs(&b32), "Readme.txt", &data);
    // Plaintext names are stored as is; base32 names use only A-Z and 2-7.
    assert!(plain.join("Readme.txt").exists());
    let names: Vec<String> = entries(&b32)
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .filter(|n| n != "envfs.conf")
        .collect();
    assert_eq!(names.len(), 1);
    assert!(
        names[0]
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)),
        "{names:?}"
    );
    for dir in [&plain, &b32] {
        let run = env
            .run([OsStr::new("cat"), dir.as_os_str(), OsStr::new("Readme.txt")])
            .expect(OK);
        assert_eq!(run.stdout, data);
    }
}

// ---- info -----------------------------------------------------------------------------------

#[test]
fn info_describes_the_vault() {
    let env = Env::new();
    let dir = env.dir("vault");
    let id = env.init(&dir, &[]);
    let key_id = {
        let bytes = std::fs::read(dir.join("envfs.conf")).unwrap();
        VaultConfig::parse(&bytes).unwrap().0.slots[0]
            .key_id
            .clone()
    };
    let out = env
        .run([OsStr::new("info"), dir.as_os_str()])
        .expect(OK)
        .out();
    for want in [
        format!("vault id:       {id}"),
        "format version: 2".into(),
        "chunk size:     4096 bytes".into(),
        "header size:    1024 bytes".into(),
        "names:          encrypted, base64url".into(),
        "keys:".into(),
        format!("local    {key_id}"),
        "authenticated:  yes".into(),
        "generation:     1".into(),
        "fingerprint:    ".into(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn info_without_a_key_still_describes_the_vault() {
    let env = Env::new();
    let dir = env.dir("vault");
    let id = env.init(&dir, &[]);
    std::fs::remove_file(env.default_key(&id)).unwrap();
    let run = env.run([OsStr::new("info"), dir.as_os_str()]).expect(OK);
    let out = run.out();
    assert!(out.contains(&format!("vault id:       {id}")), "{out}");
    assert!(out.contains("authenticated:  no"), "{out}");
    assert!(run.stderr.contains("--key-file"), "{}", run.stderr);
    // A file's header needs the key: that is an error, not a partial answer.
    let golden = golden_dir().join("vault");
    let run = env
        .run([
            OsStr::new("info"),
            golden.as_os_str(),
            OsStr::new("one-byte.bin"),
        ])
        .expect(KEY_FILE);
    assert!(run.stdout.is_empty(), "{}", run.out());
}

#[test]
fn info_of_a_file_shows_its_header_but_no_key_material() {
    let env = Env::new();
    let dir = env.dir("vault");
    let id = env.init(&dir, &[]);
    let key_path = env.default_key(&id);
    let fs = env.fs(&dir);
    write_file(&fs, "notes.txt", &vec![b'n'; 5000]);
    write_file(&fs, "empty", b"");
    fs.mkdir(Path::new("sub"), 0o755, None).unwrap();
    let key_id = fs.vault().config.slots[0].key_id.clone();

    let mut outputs: Vec<String> = Vec::new();
    let mut record = |run: Run| {
        outputs.push(run.out());
        outputs.push(run.stderr.clone());
        run
    };

    let run = record(
        env.run([OsStr::new("info"), dir.as_os_str(), OsStr::new("notes.txt")])
            .expect(OK),
    );
    let out = run.out();
    for want in [
        "path:           notes.txt".to_string(),
        "type:           File".into(),
        "size:           5000 bytes (backing file 6080 bytes)".into(),
        "header:         version 1, file id ".into(),
        "chunks:         2".into(),
        "wrapped keys:".into(),
        format!("local    {key_id}"),
        "authenticated:  yes".into(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    let backing = fs.backing_path(Path::new("notes.txt")).unwrap();
    assert!(out.contains(&backing.display().to_string()), "{out}");

    let out = record(
        env.run([OsStr::new("info"), dir.as_os_str(), OsStr::new("empty")])
            .expect(OK),
    )
    .out();
    assert!(out.contains("header:         none (empty file)"), "{out}");
    let out = record(
        env.run([OsStr::new("info"), dir.as_os_str(), OsStr::new("sub")])
            .expect(OK),
    )
    .out();
    assert!(out.contains("type:           Dir"), "{out}");
    let run = record(
        env.run([
            OsStr::new("info"),
            dir.as_os_str(),
            OsStr::new("missing.txt"),
        ])
        .expect(NOT_FOUND),
    );
    assert!(run.stderr.contains("missing.txt"), "{}", run.stderr);
    record(env.run([OsStr::new("info"), dir.as_os_str()]).expect(OK));
    record(
        env.run([OsStr::new("cat"), dir.as_os_str(), OsStr::new("notes.txt")])
            .expect(OK),
    );
    record(
        env.run([
            OsStr::new("-vv"),
            OsStr::new("info"),
            dir.as_os_str(),
            OsStr::new("notes.txt"),
        ])
        .expect(OK),
    );

    // The key material, in every spelling it could leak in.
    let text = std::fs::read_to_string(&key_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("envfs-local-key-v1:"))
        .unwrap();
    let b64 = line.trim_start_matches("envfs-local-key-v1:");
    let raw = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
    let hex_key = hex::encode(&raw);
    assert_eq!(raw.len(), 32);
    for output in &outputs {
        assert!(!output.contains(line), "key line printed:\n{output}");
        assert!(!output.contains(b64), "key base64 printed:\n{output}");
        assert!(
            !output.contains(&b64[..16]),
            "part of the key printed:\n{output}"
        );
        assert!(
            !output.to_lowercase().contains(&hex_key),
            "key hex printed:\n{output}"
        );
    }
}

// ---- cat ------------------------------------------------------------------------------------

#[test]
fn cat_reproduces_every_golden_plaintext() {
    let env = Env::new();
    let vault = golden_dir().join("vault");
    for f in golden_plain_files() {
        let run = cat_golden(&env, &vault, &f.path).expect(OK);
        assert!(
            run.stdout == content(f.seed, f.len),
            "envfs cat {}: {} bytes differ from the golden plaintext",
            f.path,
            run.stdout.len()
        );
    }
}

#[test]
fn cat_finds_the_default_key_file_by_vault_id() {
    let env = Env::new();
    std::fs::create_dir_all(env.keys_dir()).unwrap();
    std::fs::copy(golden_key(), env.default_key(GOLDEN_ID)).unwrap();
    let vault = golden_dir().join("vault");
    let nested = env
        .run([
            OsStr::new("cat"),
            vault.as_os_str(),
            OsStr::new("docs/nested.txt"),
        ])
        .expect(OK);
    assert_eq!(nested.stdout, content(5, 5000));
    // And ENVFS_KEY_FILE stands in for --key-file.
    let out = run(Command::new(envfs_bin())
        .args([
            OsStr::new("cat"),
            vault.as_os_str(),
            OsStr::new("one-byte.bin"),
        ])
        .env("XDG_CONFIG_HOME", env.path("nowhere"))
        .env("XDG_STATE_HOME", env.path("nowhere"))
        .env("HOME", env.path("nowhere"))
        .env("ENVFS_KEY_FILE", golden_key()));
    assert_eq!(out.status.code(), Some(OK));
    assert_eq!(out.stdout, content(1, 1));
}

#[test]
fn cat_streams_a_file_larger_than_one_read() {
    let env = Env::new();
    let dir = env.dir("vault");
    env.init(&dir, &[]);
    // cat reads 1 MiB at a time: cross that boundary mid-chunk.
    let data = pattern(9, (1 << 20) + 4097);
    write_file(&env.fs(&dir), "big.bin", &data);
    let run = env
        .run([OsStr::new("cat"), dir.as_os_str(), OsStr::new("big.bin")])
        .expect(OK);
    assert!(run.stdout == data, "{} bytes differ", run.stdout.len());
}

#[test]
fn version_names_the_commit_the_formats_and_the_crates_doing_the_work() {
    let env = Env::new();
    let long = env.run(["--version"]).expect(OK).out();
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines[0], format!("envfs {}", env!("CARGO_PKG_VERSION")));
    assert!(
        lines[1].starts_with("commit ") && lines[1].len() > "commit ".len(),
        "{long}"
    );
    assert!(
        long.contains(
            "vault config version 2 (3 with the key hierarchy; opens 1-3), file header version 1"
        ),
        "{long}"
    );
    for krate in [
        "fuser 0.",
        "aws-sdk-kms 1.",
        "aws-lc-rs 1.",
        "aes-gcm 0.",
        "aes-siv 0.",
    ] {
        assert!(long.contains(krate), "{krate}: {long}");
    }
    // -V stays one line, for scripts.
    let short = env.run(["-V"]).expect(OK).out();
    assert_eq!(
        short.trim_end(),
        format!("envfs {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_log_file_goes_where_it_is_told_and_one_that_cannot_be_opened_stops_the_command() {
    let env = Env::new();
    let dir = env.dir("vault");
    let log = env.path("envfs.log");
    // A global option: before the subcommand as well as after. The file is made private
    // whether or not anything is logged.
    env.run([
        OsStr::new("-v"),
        OsStr::new("--log-file"),
        log.as_os_str(),
        OsStr::new("init"),
        dir.as_os_str(),
    ])
    .expect(OK);
    assert_eq!(mode(&log), 0o600);
    let missing = env.path("no-such-dir/envfs.log");
    let run = env
        .run([
            OsStr::new("info"),
            dir.as_os_str(),
            OsStr::new("--log-file"),
            missing.as_os_str(),
        ])
        .expect(NOT_FOUND);
    assert!(
        run.stderr
            .contains(&format!("cannot open log file {}", missing.display())),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "the command ran");
}

#[test]
fn info_and_key_list_print_json_that_says_what_the_text_says() {
    let env = Env::new();
    let dir = env.dir("vault");
    let id = env.init(&dir, &[]);
    let fs = env.fs(&dir);
    fs.mkdir(Path::new("docs"), 0o755, None).unwrap();
    write_file(&fs, "docs/a.txt", b"some content");
    drop(fs);
    let json = |args: &[&OsStr]| -> serde_json::Value {
        let run = env.run(args).expect(OK);
        serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.out()))
    };
    let text = env
        .run([OsStr::new("info"), dir.as_os_str()])
        .expect(OK)
        .out();
    let doc = json(&[OsStr::new("info"), dir.as_os_str(), OsStr::new("--json")]);
    assert_eq!(doc["vault_id"], id.as_str());
    assert_eq!(doc["format_version"], 2);
    assert_eq!(doc["authenticated"], true);
    assert_eq!(doc["names"]["encrypted"], true);
    assert_eq!(doc["names"]["encoding"], "base64url");
    assert!(doc["entry"].is_null());
    let fingerprint = doc["fingerprint"].as_str().unwrap();
    assert!(
        text.contains(&format!("fingerprint:    {fingerprint}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("generation:     {}\n", doc["generation"])),
        "{text}"
    );
    assert!(
        text.contains(&format!("chunk size:     {} bytes", doc["chunk_size"])),
        "{text}"
    );
    let key = &doc["keys"][0];
    assert_eq!(key["kind"], "local");
    assert!(text.contains(key["id"].as_str().unwrap()), "{text}");
    // The store's type as the text's `type` row shows it (ext4 here, tmpfs in a clean root).
    let shown = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("type").map(str::trim))
        .unwrap();
    assert_eq!(doc["backing_store"]["type"], shown, "{text}");
    // One entry, with its header.
    let doc = json(&[
        OsStr::new("info"),
        dir.as_os_str(),
        OsStr::new("docs/a.txt"),
        OsStr::new("--json"),
    ]);
    let entry = &doc["entry"];
    assert_eq!(entry["path"], "docs/a.txt");
    assert_eq!(entry["type"], "File");
    assert_eq!(entry["size"], 12);
    assert_eq!(entry["header"]["chunks"], 1);
    assert_eq!(entry["header"]["wrapped_keys"][0]["id"], key["id"]);
    // key list: the same keys, with the short ids the text shows.
    let list = json(&[
        OsStr::new("key"),
        OsStr::new("list"),
        dir.as_os_str(),
        OsStr::new("--json"),
    ]);
    let listed = env
        .run([OsStr::new("key"), OsStr::new("list"), dir.as_os_str()])
        .expect(OK)
        .out();
    let short = list["keys"][0]["short_id"].as_str().unwrap();
    assert!(listed.starts_with(&format!("{short}  local")), "{listed}");
    assert_eq!(list["keys"][0]["id"], key["id"]);
    // Without a key, info still describes the vault: not authenticated, no fingerprint.
    std::fs::remove_file(env.default_key(&id)).unwrap();
    let doc = json(&[OsStr::new("info"), dir.as_os_str(), OsStr::new("--json")]);
    assert_eq!(doc["authenticated"], false);
    assert!(doc["fingerprint"].is_null() && doc["generation"].is_null());
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    let env = Env::new();
    let bash = env.run(["completions", "bash"]).expect(OK).out();
    let check = run(Command::new("bash").arg("-n").arg("-c").arg(&bash));
    assert!(check.status.success(), "{}", stderr_text(&check));
    for shell in ["bash", "zsh", "fish"] {
        let script = env.run(["completions", shell]).expect(OK).out();
        for word in ["mount", "umount", "status", "key-command", "log-file"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    env.run(["completions", "tcsh"]).expect(USAGE);
    let dir = env.dir("man");
    env.run([OsStr::new("manpages"), dir.as_os_str()])
        .expect(OK);
    let page = std::fs::read_to_string(dir.join("envfs-mount.1")).unwrap();
    assert!(
        page.contains("key_credential"),
        "the -o list is in the page"
    );
    for name in [
        "envfs.1",
        "envfs-key-list.1",
        "envfs-status.1",
        "envfs-completions.1",
    ] {
        assert!(dir.join(name).exists(), "{name}");
    }
    // A packaging step, not a user command: not in --help.
    let help = env.run(["--help"]).expect(OK).out();
    assert!(
        help.contains("completions") && !help.contains("manpages"),
        "{help}"
    );
}

#[test]
fn default_key_path_falls_back_to_home_config() {
    let env = Env::new();
    let dir = env.dir("vault");
    let home = env.dir("home");
    let envfs = |args: &[&OsStr]| {
        run(Command::new(envfs_bin())
            .args(args)
            .env("XDG_CONFIG_HOME", "")
            .env("XDG_STATE_HOME", env.path("state"))
            .env("HOME", &home)
            .env_remove("ENVFS_KEY_FILE"))
    };
    let out = envfs(&[OsStr::new("init"), dir.as_os_str()]);
    assert_eq!(out.status.code(), Some(OK));
    let key = home.join(format!(".config/envfs/keys/{}.key", vault_id(&dir)));
    assert_eq!(mode(&key), 0o600);
    let out = envfs(&[OsStr::new("info"), dir.as_os_str()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("authenticated:  yes"));
}

#[test]
fn cat_of_a_missing_path_names_it() {
    let env = Env::new();
    let vault = golden_dir().join("vault");
    for path in ["no-such-file.txt", "docs/absent.bin", "no-dir/x"] {
        let run = cat_golden(&env, &vault, path).expect(NOT_FOUND);
        assert!(run.stderr.contains(path), "{path}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn cat_of_a_directory_or_symlink_says_what_it_is() {
    let env = Env::new();
    let vault = golden_dir().join("vault");
    let run = cat_golden(&env, &vault, "docs").expect(FAILURE);
    assert!(
        run.stderr.contains("docs: Is a directory"),
        "{}",
        run.stderr
    );
    let run = cat_golden(&env, &vault, "link").expect(FAILURE);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("link: is a symbolic link to docs/nested.txt"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Too many levels"), "{}", run.stderr);
}

#[test]
fn cat_with_a_wrong_key_file_exits_7() {
    let env = Env::new();
    let other = env.path("other.key");
    LocalKeyProvider::create(&other, "00").unwrap();
    let vault = golden_dir().join("vault");
    let run = env
        .run([
            OsStr::new("cat"),
            vault.as_os_str(),
            OsStr::new("one-byte.bin"),
            OsStr::new("--key-file"),
            other.as_os_str(),
        ])
        .expect(WRONG_KEY);
    assert!(run.stderr.contains("wrong key"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn cat_with_a_missing_or_malformed_key_file_exits_6() {
    let env = Env::new();
    let vault = golden_dir().join("vault");
    let missing = env.path("missing.key");
    let run = env
        .run([
            OsStr::new("cat"),
            vault.as_os_str(),
            OsStr::new("one-byte.bin"),
            OsStr::new("--key-file"),
            missing.as_os_str(),
        ])
        .expect(KEY_FILE);
    assert!(run.stderr.contains("missing.key"), "{}", run.stderr);
    // No --key-file and nothing at the default path.
    let run = env
        .run([
            OsStr::new("cat"),
            vault.as_os_str(),
            OsStr::new("one-byte.bin"),
        ])
        .expect(KEY_FILE);
    assert!(run.stderr.contains(GOLDEN_ID), "{}", run.stderr);
    let garbage = env.path("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    env.run([
        OsStr::new("cat"),
        vault.as_os_str(),
        OsStr::new("one-byte.bin"),
        OsStr::new("--key-file"),
        garbage.as_os_str(),
    ])
    .expect(KEY_FILE);
}

#[test]
fn cat_on_a_directory_that_is_not_a_vault_exits_3() {
    let env = Env::new();
    let dir = env.dir("plain-dir");
    std::fs::write(dir.join("file.txt"), b"x").unwrap();
    for target in [dir.clone(), env.path("does-not-exist")] {
        let run = env
            .run([
                OsStr::new("cat"),
                target.as_os_str(),
                OsStr::new("file.txt"),
            ])
            .expect(NOT_A_VAULT);
        assert!(run.stderr.contains("not an envfs vault"), "{}", run.stderr);
        // Even with a key file given, "not a vault" is the answer.
        cat_golden(&env, &target, "file.txt").expect(NOT_A_VAULT);
        env.run([OsStr::new("info"), target.as_os_str()])
            .expect(NOT_A_VAULT);
    }
}

#[test]
fn cat_on_a_corrupt_config_exits_4() {
    let env = Env::new();
    let vault = golden_copy(&env);
    let conf = vault.join("envfs.conf");
    let original = std::fs::read(&conf).unwrap();
    let len = original.len();
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("MAC bit", Box::new(move |b| b[len - 1] ^= 1)),
        // long-name limit 220 -> 221: still valid, so only the MAC catches it
        ("long-name limit", Box::new(|b| b[39] ^= 1)),
        ("chunk size", Box::new(|b| b[32] ^= 0x80)),
        ("wrapped vault secret", Box::new(move |b| b[len - 40] ^= 1)),
        ("magic", Box::new(|b| b[0] = b'X')),
        ("truncated", Box::new(|b| b.truncate(60))),
        ("trailing byte", Box::new(|b| b.push(0))),
        ("empty", Box::new(|b| b.clear())),
    ];
    for (what, edit) in edits {
        let mut bytes = original.clone();
        edit(&mut bytes);
        std::fs::write(&conf, &bytes).unwrap();
        let run = cat_golden(&env, &vault, "one-byte.bin");
        assert_eq!(run.code, CORRUPT_CONFIG, "{what}: {}", run.stderr);
        assert!(run.stderr.contains("corrupt"), "{what}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{what}");
    }
    std::fs::write(&conf, &original).unwrap();
    cat_golden(&env, &vault, "one-byte.bin").expect(OK);
}

#[test]
fn cat_on_a_newer_vault_version_exits_5() {
    let env = Env::new();
    let vault = golden_copy(&env);
    let conf = vault.join("envfs.conf");
    let original = std::fs::read(&conf).unwrap();
    for (what, offset, value) in [("version", 9, 4u8), ("unknown flag", 11, 0x80)] {
        let mut bytes = original.clone();
        bytes[offset] = value;
        std::fs::write(&conf, &bytes).unwrap();
        let run = cat_golden(&env, &vault, "one-byte.bin").expect(UNSUPPORTED_VERSION);
        assert!(run.stderr.contains("upgrade"), "{what}: {}", run.stderr);
        env.run([OsStr::new("info"), vault.as_os_str()])
            .expect(UNSUPPORTED_VERSION);
    }
}

#[test]
fn cat_of_a_tampered_chunk_exits_12_naming_path_and_chunk() {
    let env = Env::new();
    let vault = golden_copy(&env);
    let backing = vault.join("FTJeSbTgch1OGREBTaA_-cp2mmqtwwpOinekuloRFAg1VQ");
    let mut bytes = std::fs::read(&backing).unwrap();
    // Chunk 2 of several-chunks.bin: header, two full chunks, then nonce and some ciphertext.
    bytes[1024 + 2 * (4096 + 28) + 12 + 100] ^= 0x04;
    std::fs::write(&backing, &bytes).unwrap();
    let run = cat_golden(&env, &vault, "several-chunks.bin").expect(INTEGRITY);
    assert!(
        run.stderr.contains(&backing.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("chunk 2"), "{}", run.stderr);
    // No wrong bytes: whatever was written before the error is a correct prefix.
    let want = content(3, 3 * 4096 + 100);
    assert!(run.stdout.len() <= 2 * 4096 && want.starts_with(&run.stdout));
    // The other files of the vault are unaffected.
    cat_golden(&env, &vault, "one-chunk.bin").expect(OK);
}

#[test]
fn info_of_a_tampered_header_exits_12_and_shows_no_header() {
    let env = Env::new();
    let vault = golden_copy(&env);
    let backing = vault.join("TQD-okHYv0z99mC2iSHJrFvytId8DyXe5DWp8A");
    let mut bytes = std::fs::read(&backing).unwrap();
    bytes[10] ^= 1; // inside the file id
    std::fs::write(&backing, &bytes).unwrap();
    let run = env
        .run([
            OsStr::new("info"),
            vault.as_os_str(),
            OsStr::new("one-byte.bin"),
            OsStr::new("--key-file"),
            golden_key().as_os_str(),
        ])
        .expect(INTEGRITY);
    assert!(!run.out().contains("wrapped keys:"), "{}", run.out());
    assert!(
        run.stderr.contains(&backing.display().to_string()) && run.stderr.contains("header"),
        "{}",
        run.stderr
    );
    cat_golden(&env, &vault, "one-byte.bin").expect(INTEGRITY);
}

#[test]
fn info_with_a_wrong_key_exits_7() {
    let env = Env::new();
    let other = env.path("other.key");
    LocalKeyProvider::create(&other, "00").unwrap();
    let vault = golden_dir().join("vault");
    let run = env
        .run([
            OsStr::new("info"),
            vault.as_os_str(),
            OsStr::new("--key-file"),
            other.as_os_str(),
        ])
        .expect(WRONG_KEY);
    assert!(
        run.stderr.contains("local:7d2f316c5d0dda9a"),
        "{}",
        run.stderr
    );
}

// ---- nothing in plaintext on the backing store ----------------------------------------------

#[test]
fn no_plaintext_marker_anywhere_in_the_backing_directory() {
    const MARKER: &str = "ENVFS-PLAINTEXT-MARKER";
    let env = Env::new();
    let dir = env.dir("vault");
    env.init(&dir, &[]);
    let fs = env.fs(&dir);
    let body: Vec<u8> = MARKER.repeat(1000).into_bytes(); // 22 000 bytes, 6 chunks
    fs.mkdir(Path::new(&format!("dir-{MARKER}")), 0o755, None)
        .unwrap();
    let files = [
        format!("{MARKER}.txt"),
        format!("dir-{MARKER}/{MARKER}-inner"),
        format!("{MARKER}-{}", "L".repeat(200)),
        "small".to_string(),
    ];
    for f in &files {
        write_file(&fs, f, &body);
    }
    write_file(&fs, "tiny", MARKER.as_bytes());
    fs.symlink(
        OsStr::new(&format!("dir-{MARKER}/{MARKER}-inner")),
        Path::new(&format!("link-{MARKER}")),
        None,
    )
    .unwrap();
    // user.* xattrs are encrypted too, where the backing filesystem has them.
    let xattr = OsString::from(format!("user.{MARKER}"));
    let xattrs = match fs.setxattr(Path::new("small"), &xattr, MARKER.as_bytes(), 0) {
        Ok(()) => true,
        Err(e) if e.errno() == libc::EOPNOTSUPP => false,
        Err(e) => panic!("setxattr: {e}"),
    };
    drop(fs);

    // The marker really is in the plaintext.
    let run = env
        .run([OsStr::new("cat"), dir.as_os_str(), OsStr::new(&files[1])])
        .expect(OK);
    assert_eq!(run.stdout, body);

    let needle = MARKER.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut checked = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().as_encoded_bytes();
            assert!(
                !contains(name),
                "marker in a backing name: {}",
                path.display()
            );
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                assert!(
                    !contains(target.as_os_str().as_encoded_bytes()),
                    "marker in a symlink target: {}",
                    path.display()
                );
            } else {
                let data = std::fs::read(&path).unwrap();
                assert!(!contains(&data), "marker in {}", path.display());
            }
            if xattrs && !meta.file_type().is_symlink() {
                for name in envfs::backing::sys::llistxattr(&path).unwrap() {
                    assert!(!contains(&name), "marker in an xattr name");
                    let value =
                        envfs::backing::sys::lgetxattr(&path, OsStr::from_bytes(&name)).unwrap();
                    assert!(!contains(&value), "marker in an xattr value");
                }
            }
            checked += 1;
        }
    }
    // envfs.conf, 4 files and the long name's sidecar at the root, 1 directory with 1 file,
    // 1 symlink.
    assert_eq!(checked, 9, "backing entries checked");
}

#[test]
fn exit_code_table_matches_the_library() {
    use envfs::cli::exit;
    let table = [
        (OK, exit::OK),
        (FAILURE, exit::FAILURE),
        (USAGE, exit::USAGE),
        (NOT_A_VAULT, exit::NOT_A_VAULT),
        (CORRUPT_CONFIG, exit::CORRUPT_CONFIG),
        (UNSUPPORTED_VERSION, exit::UNSUPPORTED_VERSION),
        (KEY_FILE, exit::KEY_FILE),
        (WRONG_KEY, exit::WRONG_KEY),
        (ALREADY_EXISTS, exit::ALREADY_EXISTS),
        (NOT_FOUND, exit::NOT_FOUND),
        (INTEGRITY, exit::INTEGRITY),
    ];
    for (ours, theirs) in table {
        assert_eq!(ours, i32::from(theirs));
    }
}

// ---- usage ----------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let env = Env::new();
    env.run(["init"]).expect(USAGE);
    env.run(["frobnicate"]).expect(USAGE);
    env.run(["cat", "only-one-arg"]).expect(USAGE);
    let run = env.run(["--help"]).expect(OK);
    assert!(run.out().contains("init"));
}
