//! `tollgate serve`: the metering gateway (being written).

use std::process::ExitCode;

use super::Ctx;
use crate::cli::ServeArgs;

pub fn run(_ctx: &Ctx, _args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tollgate serve is not built yet")
}
