//! `completions SHELL` and `man` for both tollgate binaries: shell completion scripts and man
//! pages generated from a binary's clap definition (clap's own `clap_complete` and
//! `clap_mangen`), so they always describe the binary that prints them.
//!
//! Guarantees: no data dir or database needed; completions go to stdout (a packager redirects
//! them to the shell's completion directory), and a closed pipe is not a panic; `man` prints the
//! binary's top page (`<bin>.1`) to stdout, or with an output directory writes it and one page
//! per visible subcommand (`<bin>-users.1`, `<bin>-users-api-key.1`, …) there and prints each
//! path written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// The shells completions are written for (a `clap::ValueEnum`).
pub use clap_complete::Shell;

/// Prints `shell`'s completion script for `command`, installed as `bin`.
pub fn completions(
    mut command: clap::Command,
    bin: &str,
    shell: Shell,
) -> anyhow::Result<ExitCode> {
    // Rendered first, then written: clap_complete panics on a write error, and a closed pipe
    // (`| head`) is not an error here.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, bin, &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `command`'s top man page, or writes every page into `out_dir`.
pub fn man(command: clap::Command, out_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut out = std::io::stdout().lock();
    match out_dir {
        None => clap_mangen::Man::new(command)
            .render(&mut out)
            .context("writing the man page")?,
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for path in write_pages(command, dir)? {
                writeln!(out, "{}", path.display())?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `command`'s page and its subcommands' (hidden ones left out); the paths written.
fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.extend(write_pages(sub.clone(), dir)?);
    }
    let page = clap_mangen::Man::new(command);
    let path = page
        .generate_to(dir)
        .with_context(|| format!("writing a man page into {}", dir.display()))?;
    written.push(path);
    Ok(written)
}
