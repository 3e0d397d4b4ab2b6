//! `tollgate serve`: load the layered config, open the ledger and (if BYOK keys exist or a master
//! key is set) the vault's master key, bind the API and admin listeners, and run the gateway
//! until Ctrl-C or SIGTERM. It logs one line once both are bound (`fields.listen`, the API's
//! address, and `fields.admin_listen`: scripts and tests wait for it), one when the signal
//! arrives and one when it has stopped. With
//! `<data dir>/sync.toml` (written by `tollgate enroll`), the sync task runs beside it on the same
//! runtime, with a ledger connection of its own, and stops on the same signal.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use zeroize::Zeroizing;

use super::Ctx;
use crate::cli::ServeArgs;
use crate::gateway::config::{GatewayConfig, Overrides};
use crate::gateway::{self, ServeParts, access};
use crate::keys::{MASTER_KEY_ENV, vault};
use crate::ledger::clock::{self, CLOCK_SKEW_ENV};
use crate::ledger::{Clock, Ledger, OpenMode};
use crate::sync::{SyncConfig, Syncer};

/// How long serve waits for the sync task to stop after the gateway has.
const SYNC_STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(ctx: &Ctx, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        admin_listen: args.admin_listen,
        upstream: args.upstream,
    };
    let config = GatewayConfig::load(&overrides, &|name| std::env::var(name).ok())?;
    init_logging(&config)?;
    let skew = std::env::var(CLOCK_SKEW_ENV).ok();
    let clock = clock::serve_clock(skew.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(skew) = skew {
        tracing::warn!(skew_secs = %skew, "the clock is skewed ({CLOCK_SKEW_ENV}): for fault-injection tests only");
    }
    let ledger = Ledger::open(&ctx.data_dir.database(), OpenMode::MustExist, clock.clone())?;
    let master = load_master(ctx, &ledger)?;
    // What users ask for, noted by the gateway for the escrow loop of the sync task.
    let demand = Arc::new(crate::sync::escrow::Demand::default());
    let syncer = start_sync(ctx, clock)?.map(|s| s.with_demand(demand.clone()));
    let addr = config.listen_addr()?;
    let admin_addr = config.admin_listen_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Listen for the signals before anything else, so one sent while the gateway starts
        // (loading its tokenizers, reading the upstream's catalogue) stops it cleanly.
        let signal = shutdown_signal();
        let api = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding listen {addr}"))?;
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("binding admin_listen {admin_addr}"))?;
        tracing::info!(
            listen = %api.local_addr()?,
            admin_listen = %admin.local_addr()?,
            upstream = %access::Upstream::configured(&config.upstream.url).text(),
            "tollgate gateway serving"
        );
        // The signal stops both; if the gateway ends first (an error), dropping the sender
        // stops the sync task too.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sync_task = syncer.map(|s| tokio::spawn(s.run(stopped)));
        let shutdown = async move {
            signal.await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            let _ = stop.send(true);
        };
        let served = gateway::serve(
            config,
            ServeParts {
                ledger,
                master,
                demand,
            },
            gateway::Listeners { api, admin },
            shutdown,
        )
        .await;
        if let Some(task) = sync_task
            && tokio::time::timeout(SYNC_STOP_TIMEOUT, task).await.is_err()
        {
            tracing::warn!("the sync task did not stop in time");
        }
        match &served {
            Ok(()) => tracing::info!("tollgate gateway stopped"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "tollgate gateway stopped on an error")
            }
        }
        served
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The sync task, when this agent is enrolled; `None` runs standalone.
fn start_sync(ctx: &Ctx, clock: Arc<dyn Clock>) -> anyhow::Result<Option<Syncer>> {
    let Some(config) = SyncConfig::load(&ctx.data_dir.sync_config())? else {
        tracing::info!("no sync.toml: running standalone (`tollgate enroll` to sync)");
        return Ok(None);
    };
    let ledger = Ledger::open(&ctx.data_dir.database(), OpenMode::MustExist, clock)?;
    tracing::info!(server = %config.server, agent_id = %config.agent_id, "sync enabled");
    Ok(Some(Syncer::new(ledger, &config)?))
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

/// Resolves on Ctrl-C or SIGTERM. SIGTERM is listened for from this call on (not from the
/// first poll), so a signal that arrives before the future is awaited is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
