//! `tollgate prices`: list the active price table, import LiteLLM's price map (being written).

use std::process::ExitCode;

use super::Ctx;
use crate::cli::PricesCommand;

pub fn run(_ctx: &Ctx, _cmd: PricesCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tollgate prices is not built yet")
}
