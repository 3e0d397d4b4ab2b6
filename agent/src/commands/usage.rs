//! `tollgate usage report`: requests, tokens, credits and latency from the request log (being written).

use std::process::ExitCode;

use super::Ctx;
use crate::cli::UsageCommand;

pub fn run(_ctx: &Ctx, _cmd: UsageCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tollgate usage is not built yet")
}
