//! What each command does. Every command that touches the database runs on one tokio runtime
//! with one pool; output is a table, or JSON with `--json`.

mod admin;
mod agents;
mod serve;

use std::process::ExitCode;

use anyhow::Context;
use deadpool_postgres::Pool;

use crate::cli::{Cli, Command};
use crate::config::ServerConfig;

/// Connections a one-shot command needs.
const COMMAND_POOL_SIZE: usize = 2;

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // These describe the binary: no runtime, no database.
    match &cli.command {
        Command::Completions { shell } => {
            return tollgate_cli_docs::completions(
                <crate::cli::Cli as clap::CommandFactory>::command(),
                "tollgate-server",
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let env = |name: &str| std::env::var(name).ok();
        match cli.command {
            Command::Serve(args) => {
                let config = ServerConfig::load(cli.database_url, args.listen, &env)?
                    .with_admin_listen(args.admin_listen)?;
                serve::run(config).await
            }
            Command::Migrate => {
                let pool = command_pool(cli.database_url)?;
                let applied = crate::db::migrate(&pool).await?;
                println!(
                    "migrations applied: {}; schema at version {}",
                    if applied.is_empty() {
                        "none (already current)".to_owned()
                    } else {
                        format!("{applied:?}")
                    },
                    crate::db::check_schema(&pool).await?
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Agents(cmd) => {
                let pool = ready_pool(cli.database_url).await?;
                agents::run(&pool, cmd, cli.json).await
            }
            Command::AdminTokens(cmd) => {
                let pool = ready_pool(cli.database_url).await?;
                admin::admin_tokens(&pool, cmd, cli.json).await
            }
            Command::Users(cmd) => {
                let pool = ready_pool(cli.database_url).await?;
                admin::users(&pool, cmd, cli.json).await
            }
            Command::Credits(cmd) => {
                let pool = ready_pool(cli.database_url).await?;
                admin::credits(&pool, cmd, cli.json).await
            }
            Command::Packages(_) => {
                let pool = ready_pool(cli.database_url).await?;
                admin::packages(&pool, cli.json).await
            }
            Command::PowerLevels(_) => {
                let pool = ready_pool(cli.database_url).await?;
                admin::power_levels(&pool, cli.json).await
            }
            Command::Reconcile => {
                let pool = ready_pool(cli.database_url).await?;
                admin::reconcile(&pool, cli.json).await
            }
            // Answered above; the same answer here keeps the match whole.
            Command::Completions { shell } => tollgate_cli_docs::completions(
                <crate::cli::Cli as clap::CommandFactory>::command(),
                "tollgate-server",
                shell,
            ),
            Command::Man { out_dir } => tollgate_cli_docs::man(
                <crate::cli::Cli as clap::CommandFactory>::command(),
                out_dir.as_deref(),
            ),
        }
    })
}

fn command_pool(database_url: Option<String>) -> anyhow::Result<Pool> {
    let url = database_url
        .ok_or_else(|| anyhow::anyhow!("no database: set DATABASE_URL or pass --database-url"))?;
    crate::db::pool(&url, COMMAND_POOL_SIZE)
}

/// A pool on a database that is fully migrated (commands other than `migrate` refuse otherwise).
async fn ready_pool(database_url: Option<String>) -> anyhow::Result<Pool> {
    let pool = command_pool(database_url)?;
    let version = crate::db::check_schema(&pool).await?;
    if version < tollgate_schema::postgres::LATEST_VERSION {
        anyhow::bail!(
            "the database schema is at version {version}, this build needs {}: run \
             `tollgate-server migrate` first",
            tollgate_schema::postgres::LATEST_VERSION
        );
    }
    Ok(pool)
}
