//! `tollgate-server completions SHELL` and `tollgate-server man`: shell completion scripts and
//! man pages, generated from the clap definitions in `cli.rs` (clap's own `clap_complete` and
//! `clap_mangen`), so they always describe the binary that prints them.
//!
//! Guarantees: neither command needs a database; completions go to stdout (a packager
//! redirects them to the shell's completion directory); `man` prints `tollgate-server.1` to
//! stdout, or with `--out-dir` writes `tollgate-server.1` and one page per subcommand
//! (`tollgate-server-users.1`, `tollgate-server-users-api-key.1`, …) into that directory and
//! prints each path written.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// Prints `shell`'s completion script for `tollgate-server`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    // Rendered first, then written: clap_complete panics on a write error, and a closed pipe
    // (`| head`) is not an error here.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tollgate-server", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `tollgate-server.1`, or writes every page into `out_dir`.
pub fn man(out_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command().disable_help_subcommand(true);
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
pub fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
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
