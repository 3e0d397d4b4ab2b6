//! What each CLI command does: parse and check its arguments, call the ledger or the vault, print.
//! Command glue only: errors are `anyhow` with context; the domain lives in `ledger` and `keys`.

mod catalog;
mod credits;
mod demo;
mod init;
mod keys;
pub mod output;
mod prices;
mod serve;
mod sync;
mod usage;
mod users;
mod verify;

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use tollgate_schema::money::Credits;

use crate::cli::{Cli, Command, ListOnly};
use crate::config::DataDir;
use crate::ledger::{Ledger, OpenMode, SystemClock};

/// What every command needs: where the data is and how to print.
#[derive(Debug)]
pub struct Ctx {
    pub data_dir: DataDir,
    pub json: bool,
}

impl Ctx {
    /// Opens the existing ledger (a missing database is an error that says to run `init`).
    pub fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::open(
            &self.data_dir.database(),
            OpenMode::MustExist,
            Arc::new(SystemClock),
        )?)
    }
}

/// Runs one parsed command line. `Ok(code)` is the exit code; errors are printed by `main`.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // These describe the binary, not a data dir: they need none.
    match &cli.command {
        Command::Completions { shell } => {
            return tollgate_cli_docs::completions(
                <crate::cli::Cli as clap::CommandFactory>::command(),
                "tollgate",
                *shell,
            );
        }
        Command::Man { out_dir } => {
            return tollgate_cli_docs::man(
                <crate::cli::Cli as clap::CommandFactory>::command(),
                out_dir.as_deref(),
            );
        }
        _ => {}
    }
    let ctx = Ctx {
        data_dir: DataDir::resolve(cli.data_dir)?,
        json: cli.json,
    };
    match cli.command {
        Command::Init => init::run(&ctx),
        Command::Demo => demo::run(ctx.json),
        Command::Users(cmd) => users::run(&ctx, cmd),
        Command::Credits(cmd) => credits::run(&ctx, cmd),
        Command::Packages(ListOnly::List) => catalog::packages(&ctx),
        Command::PowerLevels(ListOnly::List) => catalog::power_levels(&ctx),
        Command::Keys(cmd) => keys::run(&ctx, cmd),
        Command::Verify => verify::run(&ctx),
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Prices(cmd) => prices::run(&ctx, cmd),
        Command::Usage(cmd) => usage::run(&ctx, cmd),
        Command::Enroll(args) => sync::enroll(&ctx, args),
        Command::Sync(cmd) => sync::run(&ctx, cmd),
        // Answered above; the same answer here keeps the match whole.
        Command::Completions { shell } => tollgate_cli_docs::completions(
            <crate::cli::Cli as clap::CommandFactory>::command(),
            "tollgate",
            shell,
        ),
        Command::Man { out_dir } => tollgate_cli_docs::man(
            <crate::cli::Cli as clap::CommandFactory>::command(),
            out_dir.as_deref(),
        ),
    }
}

/// An amount of credit from an argument, or an error naming the argument.
pub fn parse_amount(text: &str, what: &str) -> anyhow::Result<Credits> {
    Credits::from_str(text).with_context(|| format!("invalid {what}"))
}

/// One of a text enum's values, or an error listing the accepted ones.
pub fn parse_choice<T: FromStr<Err = String>>(text: &str, flag: &str) -> anyhow::Result<T> {
    T::from_str(text).map_err(|e| anyhow!("invalid {flag}: {e}"))
}

/// Parses each `Some` text with `parse`.
pub fn parse_opt<T>(
    text: Option<&str>,
    parse: impl FnOnce(&str) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    text.map(parse).transpose()
}

/// `Ok(SUCCESS)` after printing.
pub fn done(printed: std::io::Result<()>) -> anyhow::Result<ExitCode> {
    printed?;
    Ok(ExitCode::SUCCESS)
}
