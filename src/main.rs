//! The `envfs` binary: parse arguments, set up logging, run, and turn the outcome into one
//! line on stderr and a documented exit code.

use clap::Parser;
use envfs::cli::{self, Cli, exit};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::mount::rewrite_mount_helper_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENVFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
        // fuser's own debug lines carry plaintext names and symlink targets: never let a
        // verbose filter turn them on.
        .add_directive("fuser=warn".parse().expect("valid directive"));
    if cli::mount::is_daemon_child() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(cli::syslog::Syslog::open())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .init();
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init();
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if !cli::mount::outcome_reported() {
                eprintln!("envfs: {e}");
            }
            ExitCode::from(exit::code_for(&e))
        }
    }
}
