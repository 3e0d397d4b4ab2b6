//! `tollgate-server`: the central server's command line. Everything it does lives in the library;
//! this file only parses the command line and maps an error to a one-line message and exit code.

use std::process::ExitCode;

use clap::Parser;
use tollgate_server::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tollgate_server::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}
