//! Placeholder while the vault lands.
use std::process::ExitCode;

use super::Ctx;
use crate::cli::KeysCommand;

pub const MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";

pub fn run(_ctx: &Ctx, _cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("keys: not built yet"))
}
