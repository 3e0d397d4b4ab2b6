//! `tollgate-server agents …`. (stub: to be written)

use std::process::ExitCode;

use deadpool_postgres::Pool;

use crate::cli::AgentsCommand;

pub async fn run(_pool: &Pool, _cmd: AgentsCommand, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
