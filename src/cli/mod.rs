//! The `envfs` command line: argument parsing, key discovery, and one function per
//! subcommand. Every failure ends as one line on stderr and a distinct exit code (exit.rs).

mod conflicts;
pub mod exit;
mod info;
pub mod logging;
mod manual;
pub mod mount;
mod status;
pub mod syslog;

use crate::error::{Error, Result};
use crate::format::NameEncoding;
use crate::format::config::*;
use crate::fs::Fs;
use crate::keys::kms::KmsKeyProvider;
use crate::keys::local::{LocalKeyProvider, default_key_path};
use crate::keys::source::KeySource;
use crate::vault::keysource::{KeyOptions, providers_for};
use crate::vault::pin::pin_kms_key;
use crate::vault::{InitOptions, Vault, read_config_unverified};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Cli {
    /// Where this process logs to, if not the default: `--log-file`, or for `mount`
    /// `-o log_file=` (which wins). Read before the command runs, since logging is set up
    /// first; a bad `-o` list is reported by `mount` itself.
    pub fn log_file(&self) -> Option<PathBuf> {
        if let Command::Mount { options, .. } = &self.command {
            let mut config = mount::MountConfig::default();
            if mount::parse_options(options, &mut config).is_ok()
                && let Some(path) = config.log_file
            {
                return Some(path);
            }
        }
        self.log_file.clone()
    }
}

/// `envfs --version`: what was built, from which commit, which formats it writes and reads,
/// and the crates doing the filesystem, key-service and cipher work (build.rs reads their
/// locked versions), like gocryptfs's `-version`.
pub fn long_version() -> &'static str {
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{version}\ncommit {commit}\nformat: vault config version {v2} ({config} with the key hierarchy; opens {oldest}-{config}), \
             file header version {header}\nciphers: AES-256-GCM for content (aws-lc-rs) and for local key slots (aes-gcm), \
             AES-SIV for names (aes-siv)\n\
             built with: {deps}",
            version = env!("CARGO_PKG_VERSION"),
            commit = env!("ENVFS_GIT_COMMIT"),
            v2 = crate::format::config::CONFIG_VERSION_2,
            config = crate::format::config::CONFIG_VERSION,
            oldest = crate::format::config::CONFIG_VERSION_1,
            header = crate::format::header::HEADER_VERSION,
            deps = env!("ENVFS_DEPENDENCIES"),
        )
    });
    TEXT.as_str()
}

#[derive(Parser, Debug)]
#[command(
    name = "envfs",
    version,
    long_version = long_version(),
    about = "Envelope-encrypted FUSE filesystem over a backing directory"
)]
pub struct Cli {
    /// More log output on stderr (repeat for more). ENVFS_LOG=debug works too.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Append the log to PATH (created 0600) instead of stderr, or syslog for a mount
    /// daemon; `mount -o log_file=PATH` says the same
    #[arg(long, value_name = "PATH", global = true)]
    pub log_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// An intermediate key's lifetime: seconds, or a number with `s`, `m`, `h` or `d`.
fn parse_lifetime(text: &str) -> std::result::Result<u32, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: a lifetime is a number with s, m, h or d (24h)"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: a lifetime is a number with s, m, h or d (24h)"))?;
    match n.checked_mul(scale).and_then(|s| u32::try_from(s).ok()) {
        Some(0) => Err("a lifetime must be at least one second".into()),
        Some(s) => Ok(s),
        None => Err(format!("{text:?} is longer than a lifetime can be")),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EncodingArg {
    Base64,
    Base32,
}

/// Options every command that opens a vault takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Key file; `-` reads the key from stdin [env: ENVFS_KEY_FILE] (default:
    /// $XDG_CONFIG_HOME/envfs/keys/<vault-id>.key)
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Read the key from this inherited file descriptor (closed once read)
    #[arg(long, value_name = "FD", conflicts_with_all = ["key_file", "key_command", "key_credential"])]
    pub key_fd: Option<i32>,
    /// Read the key from the standard output of `sh -c CMD` (it may prompt on the terminal)
    #[arg(long, value_name = "CMD", conflicts_with_all = ["key_file", "key_credential"])]
    pub key_command: Option<String>,
    /// Read the key from systemd credential NAME ($CREDENTIALS_DIRECTORY/NAME)
    #[arg(long, value_name = "NAME", conflicts_with = "key_file")]
    pub key_credential: Option<String>,
    /// AWS KMS key (id, ARN or alias/NAME) to open the vault with; pins it on this host
    #[arg(long, value_name = "KEY", env = "ENVFS_KMS_KEY")]
    pub kms_key: Option<String>,
    /// Refuse the vault unless its secret has this fingerprint (from `envfs info`)
    #[arg(long, value_name = "HEX", env = "ENVFS_VAULT_FINGERPRINT")]
    pub vault_fingerprint: Option<crate::crypto::Fingerprint>,
    /// Accept this config generation although this host has seen a newer one (a backup
    /// restored on purpose)
    #[arg(long, value_name = "GENERATION")]
    pub accept_rollback: Option<u64>,
}

impl KeyArgs {
    /// The key source the operator gave: a flag, else `ENVFS_KEY_FILE`. (Read here rather
    /// than by clap, which would count the variable as a `--key-file` conflicting with
    /// `--key-fd` and the others.)
    pub fn source(&self) -> Option<KeySource> {
        if let Some(fd) = self.key_fd {
            return Some(KeySource::Fd(fd));
        }
        if let Some(cmd) = &self.key_command {
            return Some(KeySource::Command(cmd.clone()));
        }
        if let Some(name) = &self.key_credential {
            return Some(KeySource::Credential(name.clone()));
        }
        self.key_file
            .clone()
            .or_else(|| {
                std::env::var_os("ENVFS_KEY_FILE")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .map(KeySource::from_key_file)
    }

    /// The key flags that say `source` (for `-o key_…=`, which wins over the flags).
    pub fn given(source: &KeySource) -> KeyArgs {
        let mut args = KeyArgs::default();
        match source {
            KeySource::File(path) => args.key_file = Some(path.clone()),
            KeySource::Stdin => args.key_file = Some(PathBuf::from("-")),
            KeySource::Fd(fd) => args.key_fd = Some(*fd),
            KeySource::Command(cmd) => args.key_command = Some(cmd.clone()),
            KeySource::Credential(name) => args.key_credential = Some(name.clone()),
        }
        args
    }

    fn options(&self) -> KeyOptions {
        KeyOptions {
            key: self.source(),
            kms_key: self.kms_key.clone(),
            vouch: crate::vault::known::Vouch {
                fingerprint: self.vault_fingerprint,
                accept_rollback: self.accept_rollback,
            },
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// One line per key, oldest first: KEY-ID, provider, key id.
    List {
        /// The vault's backing directory.
        backing: PathBuf,
        /// Print `{"keys":[{"short_id":…,"kind":…,"id":…},…]}`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Add a key: a recovery key file (created if PATH does not exist) or an AWS KMS key.
    Add {
        /// The vault's backing directory.
        backing: PathBuf,
        /// A recovery key file (X25519); created when it does not exist.
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with_all = ["new_kms_key", "new_passphrase"],
            required_unless_present_any = ["new_kms_key", "new_passphrase"]
        )]
        new_key_file: Option<PathBuf>,
        /// An AWS KMS key (id, ARN or alias/NAME).
        #[arg(long, value_name = "KEY", conflicts_with = "new_passphrase")]
        new_kms_key: Option<String>,
        /// A passphrase key (asked twice on the terminal, or the first line of stdin).
        #[arg(long)]
        new_passphrase: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Turn the key hierarchy on or off. On: new files' DEKs are wrapped in-process by an
    /// intermediate key that the vault's KMS key wraps, so creating and opening files costs
    /// no KMS call (and CloudTrail no longer records each file). Existing files move with
    /// `envfs rewrap`.
    Hierarchy {
        /// The vault's backing directory.
        backing: PathBuf,
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
        /// How long an intermediate key wraps new files before the next is made (90s, 15m,
        /// 24h, 7d).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_lifetime)]
        lifetime: u32,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Make a new intermediate key now (mounts wrap new files with it within a minute);
    /// `envfs rewrap` then moves existing files to it.
    RotateIntermediate {
        /// The vault's backing directory.
        backing: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Remove a key (refuses the last one). Run `envfs rewrap` afterwards.
    Remove {
        /// The vault's backing directory.
        backing: PathBuf,
        /// The KEY-ID from `envfs key list` (or the full key id).
        key_id: String,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new vault in an empty backing directory.
    Init {
        /// The backing directory (must exist and be empty).
        backing: PathBuf,
        /// Where to create the key file (or an existing key file to reuse).
        #[arg(long, value_name = "PATH", conflicts_with = "kms_key")]
        key_file: Option<PathBuf>,
        /// Open the vault with a passphrase instead of a key file (asked twice on the
        /// terminal, or the first line of stdin).
        #[arg(long, conflicts_with_all = ["key_file", "kms_key"])]
        passphrase: bool,
        /// Create a KMS vault: DEKs come from this AWS KMS key (id, ARN or alias/NAME).
        #[arg(long, value_name = "KEY")]
        kms_key: Option<String>,
        /// Plaintext bytes per chunk: a power of two from 1024 to 1048576.
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Fixed size of every file header; room for the wrapped keys (256..65536).
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_HEADER_SIZE)]
        header_size: u32,
        /// Encrypted names longer than this are stored as hash + sidecar (64..254).
        #[arg(long, value_name = "CHARS", default_value_t = DEFAULT_LONG_NAME_LIMIT)]
        long_name_limit: u16,
        /// Do not encrypt file names and symlink targets.
        #[arg(long)]
        plaintext_names: bool,
        /// Alphabet of encrypted names: base32 for case-insensitive backends.
        #[arg(long, value_enum, default_value = "base64")]
        name_encoding: EncodingArg,
        /// With --kms-key: turn the key hierarchy on (`envfs key hierarchy`);
        /// `--key-hierarchy=7d` sets how long an intermediate key lives (default 24h).
        #[arg(
            long,
            value_name = "LIFETIME",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "24h",
            value_parser = parse_lifetime
        )]
        key_hierarchy: Option<u32>,
    },
    /// Describe a vault, or one file's header.
    Info {
        /// The vault's backing directory.
        backing: PathBuf,
        /// A plaintext path inside the vault.
        path: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Mount a vault (as a daemon; returns once the mount is live).
    #[command(after_help = mount::options_help())]
    Mount {
        /// The vault's backing directory.
        backing: PathBuf,
        /// Where to show the decrypted tree (an empty directory).
        mountpoint: PathBuf,
        /// Stay in the foreground (logs go to stderr).
        #[arg(short, long)]
        foreground: bool,
        /// Mount options, comma-separated (listed below).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions {
        /// The shell to complete for.
        shell: manual::Shell,
    },
    /// Write the man pages (envfs.1 and one per command) into DIR (for packaging).
    #[command(hide = true)]
    Manpages {
        /// An existing directory.
        dir: PathBuf,
    },
    /// List, add or remove the vault's keys (KEKs).
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Bring every file header in line with the vault's keys (no content is re-encrypted).
    Rewrap {
        /// The vault's backing directory.
        backing: PathBuf,
        /// Files processed in parallel.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Re-encrypt files under fresh DEKs (for a suspected DEK compromise).
    Rekey {
        /// The vault's backing directory.
        backing: PathBuf,
        /// Plaintext paths inside the vault.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Unmount an envfs mount, flushing everything to the backing store.
    Umount {
        /// The mountpoint of an envfs mount.
        mountpoint: PathBuf,
    },
    /// Decrypt one file to stdout without mounting.
    Cat {
        /// The vault's backing directory.
        backing: PathBuf,
        /// A plaintext path inside the vault.
        path: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Show every envfs mount on this host: its backing directory, daemon and counters.
    Status {
        /// Only this mount.
        mountpoint: Option<PathBuf>,
        /// Print as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// List sync clients' conflict copies with both sides' sizes and times, or resolve them.
    #[command(
        after_help = "--keep newest keeps, in every conflict, the version changed last \
        (the original on a tie); --keep PATH keeps that version (a plaintext path that \
        `envfs conflicts` lists) in its conflict. The kept version takes the original's name \
        and the other versions are removed. Without --apply nothing changes: the plan is printed."
    )]
    Conflicts {
        /// The vault's backing directory.
        backing: PathBuf,
        /// Resolve: `newest`, or the plaintext path of the version to keep.
        #[arg(long, value_name = "newest|PATH")]
        keep: Option<String>,
        /// Carry out what --keep plans (without it, only print the plan).
        #[arg(long, requires = "keep")]
        apply: bool,
        /// Print as one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Check a vault without mounting it: every name, header and chunk.
    Fsck {
        /// The vault's backing directory.
        backing: PathBuf,
        /// Remove orphaned long-name sidecars and leftover temporary files (nothing else).
        #[arg(long)]
        repair_names: bool,
        /// Print the findings and the summary as one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

pub fn open_vault(backing: &Path, keys: &KeyArgs) -> Result<Vault> {
    // Not a vault is a clearer answer than "no key file" when both are true.
    read_config_unverified(backing)?;
    let opts = keys.options();
    let mut vault = Vault::open(backing, providers_for(backing, &opts)?)?;
    crate::vault::keysource::remember(backing, &mut vault, &opts)?;
    Ok(vault)
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            backing,
            key_file,
            kms_key,
            passphrase,
            chunk_size,
            header_size,
            long_name_limit,
            plaintext_names,
            name_encoding,
            key_hierarchy,
        } => {
            let opts = InitOptions {
                chunk_size,
                header_size,
                long_name_limit,
                plaintext_names,
                name_encoding: match name_encoding {
                    EncodingArg::Base64 => NameEncoding::Base64Url,
                    EncodingArg::Base32 => NameEncoding::Base32,
                },
                vault_id: None,
            };
            // Checked here: clap's `requires` does not hold for an optional-value flag.
            if key_hierarchy.is_some() && kms_key.is_none() {
                return Err(Error::Invalid(
                    "--key-hierarchy needs --kms-key: the hierarchy's intermediate keys are \
                     wrapped by a KMS key"
                        .into(),
                ));
            }
            let kms_key = kms_key.map(|k| (k, key_hierarchy));
            init(&backing, key_file, kms_key, passphrase, &opts)
        }
        Command::Info {
            backing,
            path,
            json,
            keys,
        } => info::info(&backing, path.as_deref(), json, &keys),
        Command::Completions { shell } => manual::completions(shell),
        Command::Manpages { dir } => manual::manpages(&dir),
        Command::Cat {
            backing,
            path,
            keys,
        } => cat(&backing, &path, &keys),
        Command::Mount {
            backing,
            mountpoint,
            foreground,
            options,
            keys,
        } => {
            let mut config = mount::MountConfig {
                foreground,
                ..Default::default()
            };
            mount::parse_options(&options, &mut config)?;
            config.log_file = config.log_file.or(cli.log_file);
            mount::mount(&backing, &mountpoint, &config, &keys)
        }
        Command::Umount { mountpoint } => mount::umount(&mountpoint),
        Command::Key { action } => key_command(action),
        Command::Rewrap {
            backing,
            jobs,
            keys,
        } => rewrap(&backing, jobs, &keys),
        Command::Rekey {
            backing,
            paths,
            keys,
        } => rekey(&backing, &paths, &keys),
        Command::Fsck {
            backing,
            repair_names,
            json,
            keys,
        } => fsck(&backing, repair_names, json, &keys),
        Command::Status { mountpoint, json } => status::run(mountpoint.as_deref(), json),
        Command::Conflicts {
            backing,
            keep,
            apply,
            json,
            keys,
        } => {
            let keep = keep.as_deref().map(conflicts::parse_keep).transpose()?;
            let fs = Fs::new(Arc::new(open_vault(&backing, &keys)?));
            conflicts::run(&fs, keep, apply, json)
        }
    }
}

/// `kms_key`: the KMS key, and the key hierarchy's lifetime when it is to be on.
fn init(
    backing: &Path,
    key_file: Option<PathBuf>,
    kms_key: Option<(String, Option<u32>)>,
    passphrase: bool,
    opts: &InitOptions,
) -> Result<()> {
    // Validate everything before creating a key file, so a bad flag leaves nothing behind.
    let probe = VaultConfig {
        version: CONFIG_VERSION,
        generation: 1,
        key_hierarchy: None,
        intermediate_slots: false,
        vault_id: [0; 16],
        plaintext_names: opts.plaintext_names,
        name_encoding: opts.name_encoding,
        chunk_size: opts.chunk_size,
        header_size: opts.header_size,
        long_name_limit: opts.long_name_limit,
        slots: vec![crate::format::KeySlot {
            provider: crate::format::ProviderKind::Local,
            key_id: "probe".into(),
            wrapped: vec![0],
        }],
    };
    probe.validate().map_err(Error::Invalid)?;
    if !backing.is_dir() {
        return Err(not_found(backing, "no such directory"));
    }
    if crate::vault::config_path(backing).exists() {
        return Err(Error::AlreadyExists(format!(
            "{} already holds an envfs vault",
            backing.display()
        )));
    }
    if std::fs::read_dir(backing)?.next().is_some() {
        return Err(Error::AlreadyExists(format!(
            "{} is not empty; envfs init needs an empty directory",
            backing.display()
        )));
    }
    // The vault id names the default key file, so it is chosen first.
    let vault_id: [u8; 16] = crate::crypto::random::array();
    let id = hex::encode(vault_id);
    let opts = InitOptions {
        vault_id: Some(vault_id),
        ..opts.clone()
    };
    if passphrase {
        let passphrase = crate::keys::passphrase::ask_new(&format!("vault {id}"))?;
        let (key, seal) = crate::keys::passphrase::new_key(&passphrase, &vault_id)?;
        let vault = Vault::init_with(backing, Arc::new(key), &opts, vec![seal])?;
        if let Err(e) = remember_new_vault(backing, &vault) {
            return Err(abandon_init(vault, None, e));
        }
        println!("Created envfs vault {id} in {}", backing.display());
        print_fingerprint(&vault);
        println!(
            "It opens with the passphrase: without it, or another key added later, its files \
             cannot be read."
        );
        return Ok(());
    }
    if let Some((key, hierarchy)) = kms_key {
        let kms = Arc::new(KmsKeyProvider::connect(&key)?);
        let mut vault = Vault::init(backing, kms.clone(), &opts)?;
        let pin = match pin_kms_key(&id, kms.arn()).and_then(|pin| {
            if hierarchy.is_some() {
                vault.set_key_hierarchy(hierarchy)?;
            }
            remember_new_vault(backing, &vault)?;
            Ok(pin)
        }) {
            Ok(pin) => pin,
            Err(e) => return Err(abandon_init(vault, None, e)),
        };
        println!("Created envfs vault {id} in {}", backing.display());
        print_fingerprint(&vault);
        match pin {
            Some(pin) => println!(
                "DEKs come from AWS KMS key {}; pinned for this host in {}.",
                kms.arn(),
                pin.display()
            ),
            None => println!(
                "DEKs come from AWS KMS key {}; not pinned on this host (see the warning).",
                kms.arn()
            ),
        }
        if hierarchy.is_some() {
            println!(
                "The key hierarchy is {}: new files' keys are wrapped by an intermediate key \
                 that KMS wraps.",
                describe_hierarchy(hierarchy)
            );
        }
        return Ok(());
    }
    let (provider, key_path, created) = match key_file {
        Some(path) if path.exists() => (LocalKeyProvider::load(&path)?, path, false),
        Some(path) => (LocalKeyProvider::create(&path, &id)?, path, true),
        None => {
            let path = default_key_path(&id).ok_or_else(|| {
                Error::KeyFile("neither XDG_CONFIG_HOME nor HOME is set; use --key-file".into())
            })?;
            (LocalKeyProvider::create(&path, &id)?, path, true)
        }
    };
    let created_key = created.then_some(key_path.as_path());
    let vault = match Vault::init(backing, Arc::new(provider), &opts) {
        Ok(v) => v,
        Err(e) => {
            if let Some(key) = created_key {
                let _ = std::fs::remove_file(key);
            }
            return Err(e);
        }
    };
    if let Err(e) = remember_new_vault(backing, &vault) {
        return Err(abandon_init(vault, created_key, e));
    }
    println!("Created envfs vault {id} in {}", backing.display());
    print_fingerprint(&vault);
    println!(
        "Key file: {} ({}). Back it up: without a key of the vault its files cannot be read.",
        key_path.display(),
        if created { "new" } else { "existing" }
    );
    Ok(())
}

/// A step after the vault was written failed: take back the config and the key file this
/// `init` created, so the directory is as `init` found it and running it again works.
fn abandon_init(vault: Vault, created_key: Option<&Path>, error: Error) -> Error {
    let config = crate::vault::config_path(vault.root());
    if let Err(e) = vault.abandon_new() {
        tracing::warn!(
            "cannot remove the config of the vault just created: {e}; remove {} by hand",
            config.display()
        );
    }
    if let Some(key) = created_key {
        let _ = std::fs::remove_file(key);
    }
    error
}

/// This host made the vault: it knows its fingerprint and generation from the start.
fn remember_new_vault(backing: &Path, vault: &Vault) -> Result<()> {
    let id = vault.config.vault_id_hex();
    crate::vault::known::check_and_update(
        &crate::vault::known::OpenedConfig {
            vault_id_hex: &id,
            fingerprint: vault.fingerprint(),
            generation: vault.config.generation,
            digest: vault.config_digest(),
            vouched_by_key: true,
            opened_by: vault.unlocked_by(),
        },
        &Default::default(),
    )?;
    crate::vault::pin::record_vault_at_path(backing, &id);
    Ok(())
}

fn print_fingerprint(vault: &Vault) {
    println!(
        "Vault fingerprint: {} (write it down with your key backups).",
        vault.fingerprint()
    );
}

/// A path inside the vault as the user typed it: "/docs/a" and "docs/a" are the same file.
fn vault_path(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: paths inside the vault cannot contain '..'",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

fn cat(backing: &Path, path: &Path, keys: &KeyArgs) -> Result<()> {
    let path = &vault_path(path)?;
    let fs = Fs::new(Arc::new(open_vault(backing, keys)?));
    let handle = fs.open(path, libc::O_RDONLY).map_err(|e| match e {
        // The core opens with O_NOFOLLOW: ELOOP here means the path is a symlink, not a loop.
        Error::Io(io) if io.raw_os_error() == Some(libc::ELOOP) => {
            let target = fs
                .readlink(path)
                .map(|t| format!(" to {}", t.to_string_lossy()))
                .unwrap_or_default();
            Error::Io(std::io::Error::new(
                io.kind(),
                format!(
                    "{}: is a symbolic link{target}; envfs cat reads regular files",
                    path.display()
                ),
            ))
        }
        e => with_path(e, path),
    })?;
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    const STEP: usize = 1 << 20;
    loop {
        let data = fs.read(&handle, offset, STEP)?;
        if data.is_empty() {
            break;
        }
        match out.write_all(&data) {
            Ok(()) => {}
            // `envfs cat … | head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        offset += data.len() as u64;
    }
    out.flush().or_else(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

fn fsck(backing: &Path, repair_names: bool, json: bool, keys: &KeyArgs) -> Result<()> {
    use crate::fsck::{Options, Progress};
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    let vault = open_vault(backing, keys)?;
    let opts = Options {
        repair_names,
        ..Options::default()
    };
    let progress = Progress::default();
    let finished = AtomicBool::new(false);
    let show_progress = std::io::stderr().is_terminal();
    let report = std::thread::scope(|s| {
        let line = show_progress.then(|| s.spawn(|| progress_line(&progress, &finished)));
        let report = crate::fsck::check(&vault, &opts, &progress);
        finished.store(true, Ordering::Relaxed);
        if let Some(line) = line {
            line.thread().unpark();
        }
        report
    })?;
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", report.to_json())
    } else {
        report.write_text(&mut out)
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if report.is_clean() {
        return Ok(());
    }
    let n = report.problems();
    Err(Error::Reported(
        exit::FSCK_FOUND_PROBLEMS,
        format!(
            "fsck found {n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            backing.display()
        ),
    ))
}

/// A progress line on stderr (a terminal), drawn after a tenth of a second and then redrawn
/// at most ten times a second; erased at the end. Counters only: no names.
fn progress_line(progress: &crate::fsck::Progress, finished: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut err = std::io::stderr();
    let mut drawn = false;
    loop {
        std::thread::park_timeout(std::time::Duration::from_millis(100));
        if finished.load(Ordering::Relaxed) {
            break;
        }
        let s = progress.snapshot();
        let _ = write!(
            err,
            "\r\x1b[Kfsck: {} files, {} directories, {} chunks, {} MiB, {} problems",
            s.files,
            s.directories,
            s.chunks,
            s.bytes >> 20,
            s.findings
        );
        let _ = err.flush();
        drawn = true;
    }
    if drawn {
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}

fn not_found(path: &Path, what: &str) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{}: {what}", path.display()),
    ))
}

/// Name the plaintext path the user gave in an I/O error (it is their own input).
fn with_path(err: Error, path: &Path) -> Error {
    match err {
        Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            not_found(path, "no such file in the vault")
        }
        Error::Io(e) => Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
        other => other,
    }
}

fn key_command(action: KeyCommand) -> Result<()> {
    match action {
        KeyCommand::List {
            backing,
            json,
            keys,
        } => info::key_list(&backing, json, &keys),
        KeyCommand::Add {
            backing,
            new_key_file,
            new_kms_key,
            new_passphrase,
            keys,
        } => {
            let mut vault = open_vault(&backing, &keys)?;
            if new_passphrase {
                let passphrase = crate::keys::passphrase::ask_new(&format!(
                    "vault {}",
                    vault.config.vault_id_hex()
                ))?;
                let (key, seal) =
                    crate::keys::passphrase::new_key(&passphrase, &vault.config.vault_id)?;
                vault.add_key_with(&key, Some(seal))?;
                remember_change(&backing, &mut vault, &keys);
                let slot = vault.config.header_slots().last().expect("just added");
                println!(
                    "Added passphrase key {} as {}. New files are wrapped by it; run `envfs rewrap {}` for existing files.",
                    slot.key_id,
                    crate::vault::short_key_id(slot),
                    backing.display()
                );
                return Ok(());
            }
            let mut created = None;
            let provider: Arc<dyn crate::keys::KeyProvider> = match (new_key_file, new_kms_key) {
                (Some(path), _) if path.exists() => {
                    use crate::keys::x25519::X25519KeyProvider;
                    let text = crate::keys::keyfile::read_key_text(&path)?;
                    // A symmetric key can wrap only where its file is, so it could never
                    // reach files created on other hosts: only key pairs are added.
                    if !X25519KeyProvider::is_key_text(&text) {
                        return Err(Error::Invalid(format!(
                            "{} is a symmetric key file; add a recovery key (a new --new-key-file path) or a KMS key",
                            path.display()
                        )));
                    }
                    crate::keys::local::warn_if_readable_by_others(&path);
                    Arc::new(X25519KeyProvider::from_text(
                        &text,
                        &path.display().to_string(),
                    )?)
                }
                (Some(path), _) => {
                    let key = crate::keys::x25519::X25519KeyProvider::create(&path)?;
                    created = Some(path);
                    Arc::new(key)
                }
                (None, Some(kms)) => Arc::new(KmsKeyProvider::connect(&kms)?),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let added = match vault.add_key(provider.as_ref()) {
                Ok(added) => added,
                Err(e) => {
                    if let Some(path) = created {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            };
            remember_change(&backing, &mut vault, &keys);
            if added == crate::vault::KeyAdded::Proven {
                println!(
                    "{} was already a key of the vault; its slot now carries the key holder's proof, \
                     so a host holding only this key can tell the real vault from a forged one.",
                    provider.describe()
                );
                return Ok(());
            }
            if let Some(path) = &created {
                println!(
                    "Created recovery key file {} (keep it offline).",
                    path.display()
                );
            }
            let slot = vault.config.slots.last().expect("just added");
            println!(
                "Added {} key {} as {}. New files are wrapped by it; run `envfs rewrap {}` for existing files.",
                slot.provider.name(),
                slot.key_id,
                crate::vault::short_key_id(slot),
                backing.display()
            );
            Ok(())
        }
        KeyCommand::Hierarchy {
            backing,
            state,
            lifetime,
            keys,
        } => {
            let mut vault = open_vault(&backing, &keys)?;
            let lifetime = (state == OnOff::On).then_some(lifetime);
            if vault.config.key_hierarchy == lifetime {
                println!(
                    "The key hierarchy is already {}.",
                    describe_hierarchy(lifetime)
                );
                return Ok(());
            }
            vault.set_key_hierarchy(lifetime)?;
            remember_change(&backing, &mut vault, &keys);
            println!(
                "The key hierarchy is {}. Run `envfs rewrap {}` to move existing files; mounts \
                 follow when remounted.",
                describe_hierarchy(lifetime),
                backing.display()
            );
            Ok(())
        }
        KeyCommand::RotateIntermediate { backing, keys } => {
            let vault = open_vault(&backing, &keys)?;
            let id = vault.rotate_intermediate()?;
            println!(
                "Made intermediate key {}: mounts wrap new files with it within {} s. Run \
                 `envfs rewrap {}` to move existing files to it.",
                hex::encode(id),
                crate::vault::hierarchy::RESCAN.as_secs(),
                backing.display()
            );
            Ok(())
        }
        KeyCommand::Remove {
            backing,
            key_id,
            keys,
        } => {
            let mut vault = open_vault(&backing, &keys)?;
            // The last key is refused by `remove_key` whatever the files: no rewrap helps.
            if vault.config.header_slots().count() > 1
                && let Some(slot) = vault
                    .config
                    .slots
                    .iter()
                    .find(|s| crate::vault::short_key_id(s) == key_id || s.key_id == key_id)
            {
                let stranded = crate::fs::rewrap::files_only_wrapped_by(&vault, slot)?;
                if !stranded.is_empty() {
                    return Err(Error::Invalid(format!(
                        "refusing to remove {key_id}: {} files (e.g. {}) are wrapped by no other key; \
                         run `envfs rewrap {}` first",
                        stranded.len(),
                        stranded[0].display(),
                        backing.display()
                    )));
                }
            }
            let (removed, retired) = vault.remove_key(&key_id)?;
            remember_change(&backing, &mut vault, &keys);
            println!(
                "Removed {} key {}. Run `envfs rewrap {}` to drop its wrapped copies from every file.",
                removed.provider.name(),
                removed.key_id,
                backing.display()
            );
            if retired > 0 {
                println!(
                    "Retired {retired} intermediate key(s) it wrapped: new files get a new one \
                     (running mounts follow within {} s).",
                    crate::vault::hierarchy::RESCAN.as_secs()
                );
            }
            Ok(())
        }
    }
}

/// "on (intermediate keys live 24h)" or "off", for messages.
pub fn describe_hierarchy(lifetime: Option<u32>) -> String {
    match lifetime {
        None => "off".into(),
        Some(s) if s % 86_400 == 0 => format!("on (intermediate keys live {}d)", s / 86_400),
        Some(s) if s % 3600 == 0 => format!("on (intermediate keys live {}h)", s / 3600),
        Some(s) if s % 60 == 0 => format!("on (intermediate keys live {}m)", s / 60),
        Some(s) => format!("on (intermediate keys live {s}s)"),
    }
}

/// After this host changed the config: remember the new generation at once, so that the old
/// config put back is refused here from now on.
///
/// The change is made by then, so a failure to record it is a warning, not the command's
/// failure: the next open records it.
fn remember_change(backing: &Path, vault: &mut Vault, keys: &KeyArgs) {
    if let Err(e) = crate::vault::keysource::remember(backing, vault, &keys.options()) {
        eprintln!("envfs: warning: the change was made, but this host could not record it: {e}");
    }
}

/// A progress line on stderr when it is a terminal, at most ~10 updates a second.
fn progress_reporter(what: &'static str) -> impl Fn(usize, usize) + Sync {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let last = std::sync::Mutex::new(std::time::Instant::now() - std::time::Duration::from_secs(1));
    move |done, total| {
        if !terminal {
            return;
        }
        let mut last = last.lock().unwrap();
        if done == total || last.elapsed() >= std::time::Duration::from_millis(100) {
            *last = std::time::Instant::now();
            eprint!("\r{what}: {done}/{total} files");
            if done == total {
                eprintln!();
            }
        }
    }
}

fn rewrap(backing: &Path, jobs: usize, keys: &KeyArgs) -> Result<()> {
    let mut vault = open_vault(backing, keys)?;
    let report = crate::fs::rewrap::rewrap(&vault, jobs, &progress_reporter("rewrap"))?;
    println!(
        "rewrap: {} files: {} rewrapped, {} already current, {} restored from an interrupted run, {} failed",
        report.files,
        report.rewrapped,
        report.already_current,
        report.recovered,
        report.failed.len()
    );
    if report.intermediate_keys {
        println!(
            "rewrap: intermediate keys: {} rewrapped for the vault's KMS keys, {} expired and used by no header here (kept)",
            report.intermediate_rewrapped,
            report
                .intermediate_unused
                .map_or("?".to_string(), |n| n.to_string())
        );
    }
    if report.intermediate_in_use == Some(0) && vault.headers_left_intermediate_keys()? {
        remember_change(backing, &mut vault, keys);
        println!(
            "rewrap: no header is wrapped by an intermediate key any more: the vault config is \
             version 2 again"
        );
    }
    for (path, why) in &report.failed {
        eprintln!("envfs: {}: {why}", path.display());
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Reported(
            exit::INCOMPLETE,
            format!(
                "{} files could not be rewrapped; fix the cause and run rewrap again",
                report.failed.len()
            ),
        ))
    }
}

fn rekey(backing: &Path, paths: &[PathBuf], keys: &KeyArgs) -> Result<()> {
    let fs = Fs::new(Arc::new(open_vault(backing, keys)?));
    let mut failed = 0;
    for path in paths {
        match vault_path(path).and_then(|p| fs.rekey(&p).map(|()| p)) {
            Ok(p) => println!("rekeyed {}", p.display()),
            Err(e) => {
                failed += 1;
                eprintln!("envfs: {}", with_path(e, path));
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::Reported(
            exit::INCOMPLETE,
            format!("{failed} of {} files were not rekeyed", paths.len()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` describes every positional argument of every command.
    #[test]
    fn every_argument_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "envfs", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
