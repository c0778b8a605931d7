//! The man pages and shell completions, generated from the clap definition of the CLI
//! (clap_mangen, clap_complete), so they can never drift from what the binary accepts.
//! `envfs completions SHELL` prints a completion script; `envfs manpages DIR` (hidden: a
//! packaging step, scripts/package.sh) writes `envfs.1` and one page per command.

use crate::error::Result;
use clap::CommandFactory;
use std::path::Path;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Print the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "envfs", &mut out);
    Ok(())
}

/// Write `envfs.1` and `envfs-COMMAND.1` (`envfs-key-list.1`, …) into `dir`, which must
/// exist.
pub fn manpages(dir: &Path) -> Result<()> {
    let cmd = super::Cli::command().after_long_help(
        "The full documentation is the docs/ directory of the envfs sources, installed by \
         the Debian package in /usr/share/doc/envfs/: CLI.md (every command, option, output \
         and exit code), OPERATIONS.md (mounting at boot, keys, logs, backing stores), \
         SECURITY.md (what is and is not protected).",
    );
    clap_mangen::generate_to(cmd, dir)?;
    Ok(())
}
