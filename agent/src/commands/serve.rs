//! `tollgate serve`: load the layered config, open the ledger and (if BYOK keys exist or a master
//! key is set) the vault's master key, bind, and run the gateway until Ctrl-C or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use zeroize::Zeroizing;

use super::Ctx;
use crate::cli::ServeArgs;
use crate::gateway::config::{GatewayConfig, Overrides};
use crate::gateway::{self, ServeParts};
use crate::keys::{MASTER_KEY_ENV, vault};
use crate::ledger::{Ledger, OpenMode, SystemClock};

pub fn run(ctx: &Ctx, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        upstream: args.upstream,
    };
    let config = GatewayConfig::load(&overrides, &|name| std::env::var(name).ok())?;
    init_logging(&config)?;
    let ledger = Ledger::open(
        &ctx.data_dir.database(),
        OpenMode::MustExist,
        Arc::new(SystemClock),
    )?;
    let master = load_master(ctx, &ledger)?;
    let addr = config.listen_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            upstream = %config.upstream.url,
            "tollgate gateway serving"
        );
        gateway::serve(
            config,
            ServeParts { ledger, master },
            listener,
            shutdown_signal(),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The master key when BYOK keys may be used: required if the vault holds keys, optional (used
/// if set) otherwise.
fn load_master(ctx: &Ctx, ledger: &Ledger) -> anyhow::Result<Option<crate::keys::MasterKey>> {
    let env = std::env::var(MASTER_KEY_ENV).ok().map(Zeroizing::new);
    let has_keys = ledger.vault_key_id()?.is_some();
    match vault::load_master(ledger, ctx.data_dir.root(), env) {
        Ok((key, _)) => Ok(Some(key)),
        Err(e) if has_keys => {
            Err(e).context("the vault holds BYOK keys, so serve needs the master key")
        }
        Err(_) => Ok(None),
    }
}

fn init_logging(config: &GatewayConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log.level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
