//! `tollgate-server admin-tokens|users|credits|packages|power-levels|reconcile`. (stub)

use std::process::ExitCode;

use deadpool_postgres::Pool;

use crate::cli::{AdminTokensCommand, CreditsCommand, UsersCommand};

pub async fn admin_tokens(
    _pool: &Pool,
    _cmd: AdminTokensCommand,
    _json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub async fn users(_pool: &Pool, _cmd: UsersCommand, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub async fn credits(_pool: &Pool, _cmd: CreditsCommand, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub async fn packages(_pool: &Pool, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub async fn power_levels(_pool: &Pool, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub async fn reconcile(_pool: &Pool, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
