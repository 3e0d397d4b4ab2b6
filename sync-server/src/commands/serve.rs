//! `tollgate-server serve`: check the schema, bind the API and admin listeners, and serve both
//! until Ctrl-C or SIGTERM. Two plain lines on stdout name the bound addresses, the API's first
//! (`tollgate-server listening on ADDR`, then `tollgate-server admin listening on ADDR`).

use std::process::ExitCode;

use anyhow::Context;

use crate::config::ServerConfig;

pub async fn run(config: ServerConfig) -> anyhow::Result<ExitCode> {
    init_logging()?;
    let addr = config.listen;
    let admin_addr = config.admin_listen;
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
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding --admin-listen {admin_addr}"))?;
    let bound = listener.local_addr()?;
    let admin_bound = admin.local_addr()?;
    tracing::info!(listen = %bound, admin_listen = %admin_bound, "tollgate-server serving");
    // Plain lines on stdout with the bound addresses (port 0 picks one): scripts and tests wait
    // for them instead of guessing when the server is up.
    println!("tollgate-server listening on {bound}");
    println!("tollgate-server admin listening on {admin_bound}");
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin_task = tokio::spawn(crate::http::serve_admin(
        state.clone(),
        admin,
        until_stopped(stopped.clone()),
    ));
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stop.send(true);
    });
    let served = crate::http::serve(state, listener, until_stopped(stopped)).await;
    // Dropping the sender (if the API's loop ended on an error) stops the admin listener too.
    signal.abort();
    if let Ok(Err(e)) = admin_task.await {
        tracing::warn!(error = %format!("{e:#}"), "the admin listener failed");
    }
    served?;
    tracing::info!("tollgate-server stopped");
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
