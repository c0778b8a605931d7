//! Logging setup: the operator's filter (`-v`, `ENVFS_LOG`) and a guard no filter can lift.
//!
//! envfs' own log lines name backing paths, key ids and chunk indices, never plaintext. Other
//! crates do not make that promise: fuser's request logs and "not implemented" warnings
//! print plaintext names, symlink targets and xattr names; the AWS SDK's and HTTP stack's
//! debug and trace lines print requests and responses, key material included. An
//! `EnvFilter` directive can always be made more specific than a cap written as another
//! directive (`fuser::request=debug` beats `fuser=warn`), so the guard is a second filter
//! on the same layer that the operator's filter cannot override: an event is written only
//! if both allow it. (Events bridged from the `log` crate, as fuser's are, are filtered by
//! their real target: tracing-log asks the filter with it before dispatching.)

use std::path::Path;
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether an event may be written at all, whatever the operator's filter says:
/// envfs' own events at any level; fuser's never (even its errors can print a whole
/// request, names included; envfs reports the failures that matter itself); every other
/// crate's at `warn` and `error`.
pub fn guard_allows(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let crate_name = target.split("::").next().unwrap_or(target);
    match crate_name {
        "envfs" => true,
        "fuser" => false,
        _ => *meta.level() <= Level::WARN,
    }
}

/// The operator's filter: `ENVFS_LOG` if set, else the level `-v` chose.
fn operator_filter(verbose: u8) -> EnvFilter {
    let default_level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    EnvFilter::try_from_env("ENVFS_LOG").unwrap_or_else(|_| EnvFilter::new(default_level))
}

/// Install the global subscriber: the log file if one is given (`--log-file`,
/// `-o log_file=`), else syslog for a mount daemon and stderr otherwise.
pub fn init(verbose: u8, daemon: bool, log_file: Option<&Path>) -> crate::error::Result<()> {
    let filter = operator_filter(verbose).and(filter_fn(guard_allows));
    if let Some(path) = log_file {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(open_log_file(path)?))
            .with_ansi(false)
            .with_target(false)
            .with_filter(filter);
        tracing_subscriber::registry().with(layer).init();
        return Ok(());
    }
    if daemon {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(super::syslog::Syslog::open())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_filter(filter);
        tracing_subscriber::registry().with(layer).init();
    } else {
        use std::io::IsTerminal;
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .with_filter(filter);
        tracing_subscriber::registry().with(layer).init();
    }
    Ok(())
}

/// A log file, appended to (so a daemon's lines and its parent's interleave whole), created
/// private: log lines name backing paths and key ids.
fn open_log_file(path: &Path) -> crate::error::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            let why = format!("cannot open log file {}: {e}", path.display());
            crate::error::Error::Io(std::io::Error::new(e.kind(), why))
        })
}

/// Whether a mount daemon's syslog lines would reach anyone: `/dev/log` accepts datagrams.
/// (Many containers have none, and then the daemon's log is lost.)
pub fn syslog_reachable() -> std::result::Result<(), std::io::Error> {
    std::os::unix::net::UnixDatagram::unbound()?.connect("/dev/log")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::metadata::Kind;

    struct Site;
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn the_guard_caps_other_crates_whatever_the_target_spelling() {
        for level in [
            Level::TRACE,
            Level::DEBUG,
            Level::INFO,
            Level::WARN,
            Level::ERROR,
        ] {
            assert!(guard_allows(&meta("envfs", level)));
            assert!(guard_allows(&meta("envfs::fs::file", level)));
            for fuser in [
                "fuser",
                "fuser::request",
                "fuser::session",
                "fuser::ll::request",
            ] {
                assert!(!guard_allows(&meta(fuser, level)), "{fuser} {level}");
            }
            for other in [
                "aws_smithy_runtime::client",
                "hyper",
                "h2::codec",
                "rustls",
                "log",
            ] {
                assert_eq!(
                    guard_allows(&meta(other, level)),
                    level <= Level::WARN,
                    "{other} {level}"
                );
            }
        }
        // A crate whose name merely starts like ours is not ours.
        assert!(!guard_allows(&meta("envfs_evil", Level::DEBUG)));
        assert!(!guard_allows(&meta("fuserx", Level::DEBUG)));
    }
}
