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
    if let Err(e) = cli::logging::init(
        cli.verbose,
        cli::mount::is_daemon_child(),
        cli.log_file().as_deref(),
    ) {
        eprintln!("envfs: {e}");
        return ExitCode::from(exit::code_for(&e));
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
