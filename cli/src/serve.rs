//! `flowhost serve`: the daemon (HTTP API, in-process workers, reaper)
//! until SIGTERM or Ctrl-C, which drain it; a second one exits at once.

use super::run::StoreArgs;
use super::{CliError, RuntimeArgs};
use clap::Args;
use flowhost::daemon::{Config, Daemon, DaemonError, PoolSpec, pool::Sizing};
use flowhost::plugin::Runtime;
use flowhost::spawn::Spawner;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub(super) struct ServeArgs {
    /// Address to listen on; port 0 takes a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:7770")]
    listen: SocketAddr,
    /// Bearer token every route but /healthz requires (default:
    /// $FLOWHOST_TOKEN); the daemon refuses to listen off loopback without one.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Machines known by name: DIR/<name>.yml (`"machine": "<name>"` in POST /workflows).
    #[arg(long, value_name = "DIR")]
    machines: Option<PathBuf>,
    /// A job pool to run workers for, and what runs its jobs (a processor
    /// plugin or a machine config); repeatable.
    #[arg(long = "pool", value_name = "NAME=PROCESSOR")]
    pools: Vec<PoolSpec>,
    /// Most workers per queue: the pool grows with the jobs due up to this.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_workers: u32,
    /// Fewest workers per queue, kept when idle.
    #[arg(long, default_value_t = 1)]
    min_workers: u32,
    /// Executions (or jobs) each worker runs at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// More workers than wanted for this long: one stops (e.g. 30s; 0s at once).
    #[arg(long, default_value = "30s", value_parser = flowhost::duration::parse_or_zero)]
    idle_timeout: Duration,
    /// How long a claim lasts without renewal (a stopped daemon's work
    /// moves to other workers after this).
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    lease: Duration,
    /// How long a drain (SIGTERM) waits for work in hand.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    grace: Duration,
    /// How often the daemon's workers say they are alive.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    heartbeat: Duration,
    /// Workers of any process silent this long are reaped (their jobs released).
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    stale_after: Duration,
    /// Warm plugin pools: a TOML file of `[<plugin>]` tables with `min`,
    /// `max`, `idle_timeout`, `max_uses`, `warm_up` (they win over a
    /// plugin's own `[pool]`).
    #[arg(long, value_name = "FILE")]
    warm_pools: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Resolves at the first SIGTERM or SIGINT; a second one ends the process.
/// Both streams exist from the start, so a second signal that comes before
/// the first is handled is not missed.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("warning: cannot listen for SIGTERM/SIGINT; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("stopping: draining (again to exit at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("exiting at once: leases let other workers take over");
        std::process::exit(130);
    });
}

/// Reads and checks a warm-pools file.
fn warm_pools(
    file: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, flowhost::plugin::OperatorPool>, CliError> {
    let at = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("--warm-pools {at}: {e}")))?;
    let pools: std::collections::BTreeMap<String, flowhost::plugin::OperatorPool> =
        toml::from_str(&text).map_err(|e| CliError::Usage(format!("--warm-pools {at}: {e}")))?;
    for (name, pool) in &pools {
        pool.pool()
            .map_err(|e| CliError::Usage(format!("--warm-pools {at}: [{name}]: {e}")))?;
    }
    Ok(pools)
}

pub(super) async fn serve(a: ServeArgs) -> Result<ExitCode, CliError> {
    let token = a
        .token
        .clone()
        .or_else(|| std::env::var("FLOWHOST_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let mut config = Config::new(a.listen, a.runtime.plugins_dir());
    config.token = token;
    config.machines_dir = a.machines.clone();
    config.pools = a.pools.clone();
    config.sizing = Sizing {
        min: a.min_workers,
        max: a.max_workers,
        idle_timeout: a.idle_timeout,
    };
    config.concurrency = a.concurrency;
    config.lease = a.lease;
    config.grace = a.grace;
    config.stale_after = a.stale_after;
    config.heartbeat = a.heartbeat;
    config.body_limit = a.max_body;
    config.work_dir = a.store.generated();
    if let Some(dir) = &a.machines
        && !dir.is_dir()
    {
        return Err(CliError::Usage(format!(
            "--machines {}: no such folder",
            dir.display()
        )));
    }
    let mut runtime_config = a.runtime.runtime_config(false)?;
    if let Some(file) = &a.warm_pools {
        runtime_config.warm_pools = warm_pools(file)?;
    }
    let backend = a.store.open_or_create().await?;
    let runtime = Arc::new(
        Runtime::new(runtime_config)
            .map_err(|e| CliError::Other(format!("cannot start the plugin runtime: {e}")))?,
    );
    let spawner = Spawner::current(a.store.to_args(), &config.plugins_dir)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let daemon = Daemon::new(config, backend, runtime, Some(spawner)).map_err(|e| match e {
        DaemonError::Refused(m) => CliError::Usage(m),
        DaemonError::Pool {
            pool,
            error: flowhost::engine::EngineError::Plugin { error, .. },
        } => CliError::Plugin {
            context: format!("--pool {pool}"),
            error,
        },
        DaemonError::Pool { pool, error } => match super::run::engine_error(error) {
            CliError::Config(m) => CliError::Config(format!("--pool {pool}: {m}")),
            other => other,
        },
        other => CliError::Other(other.to_string()),
    })?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {}: {e}", a.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot read the listening address: {e}")))?;
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let left = daemon
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    if left > 0 {
        eprintln!(
            "stopped with {left} worker(s) still busy after the grace period: their leases let other workers take over"
        );
    } else {
        eprintln!("stopped: all work in hand finished or was put back on the queue");
    }
    Ok(ExitCode::SUCCESS)
}
