//! `tollgate-server serve`: check the schema, bind, and serve until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::ServerConfig;

pub async fn run(config: ServerConfig) -> anyhow::Result<ExitCode> {
    init_logging()?;
    let addr = config.listen;
    let state = crate::http::state(config).await?;
    let version = crate::db::check_schema(&state.pool).await?;
    if version < tollgate_schema::postgres::LATEST_VERSION {
        anyhow::bail!(
            "the database schema is at version {version}: run `tollgate-server migrate` first"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "tollgate-server serving");
    // One plain line on stdout with the bound address (port 0 picks one): scripts and tests wait
    // for it instead of guessing when the server is up.
    println!("tollgate-server listening on {bound}");
    crate::http::serve(state, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_SERVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = ctrl_c.await;
}
