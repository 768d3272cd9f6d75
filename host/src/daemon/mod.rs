//! The daemon (`flowhost serve`): one long-lived process that serves the
//! HTTP API ([`api`]) over the same library services as the command line,
//! runs submitted executions and pool jobs on in-process workers that scale
//! with the work waiting ([`pool`]), reaps silent workers on a timer, watches
//! the plugins folder and swaps changed plugins in ([`catalog`]), and counts
//! what happens ([`metrics`]).
//! On shutdown it drains: no new requests or claims, work in hand finishes
//! or stops at a state boundary within a grace period, nothing is lost.
//!
//! Imports `engine`, `worker`, `plugin`, `duration` and the `backend` traits;
//! nothing imports it but the command line.

pub mod api;
mod auth;
pub mod catalog;
pub mod dashboard;
pub mod live;
pub mod metrics;
pub mod pool;

use crate::backend::{Backend, BackendError};
use crate::engine::{Engine, EngineError, Observer, Record, history::Event};
use crate::plugin::Runtime;
use crate::worker::{Processor, WorkerConfig, WorkerCounters};
use metrics::Metrics;
use pool::{ScaledPool, Sizing};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// A job pool the daemon runs workers for, and what runs its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    /// A processor plugin (name or `.wasm`) or a machine config (`.yml`).
    pub processor: String,
}

impl std::str::FromStr for PoolSpec {
    type Err = String;
    /// `NAME=PROCESSOR`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((name, processor)) if !name.is_empty() && !processor.is_empty() => Ok(PoolSpec {
                name: name.to_string(),
                processor: processor.to_string(),
            }),
            _ => Err(format!(
                "`{s}` is not NAME=PROCESSOR (e.g. `resize=thumbnail` or `orders=machines/order.yml`)"
            )),
        }
    }
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The bearer token every route but `/healthz` needs; required when
    /// `listen` is not a loopback address.
    pub token: Option<String>,
    pub plugins_dir: PathBuf,
    /// Machines known by name: `<dir>/<name>.yml` (or `.yaml`).
    pub machines_dir: Option<PathBuf>,
    /// Job pools served besides the run queue.
    pub pools: Vec<PoolSpec>,
    /// Workers per queue.
    pub sizing: Sizing,
    /// Jobs (executions) each worker runs at once.
    pub concurrency: u32,
    pub lease: Duration,
    pub heartbeat: Duration,
    /// How long a drain waits for work in hand.
    pub grace: Duration,
    /// Workers silent this long are reaped (their jobs released).
    pub stale_after: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Where the daemon writes the machines it makes (MapReduce).
    pub work_dir: PathBuf,
}

impl Config {
    pub fn new(listen: SocketAddr, plugins_dir: PathBuf) -> Config {
        Config {
            listen,
            token: None,
            plugins_dir,
            machines_dir: None,
            pools: Vec::new(),
            sizing: Sizing {
                min: 1,
                max: 8,
                idle_timeout: Duration::from_secs(30),
            },
            concurrency: 16,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            stale_after: Duration::from_secs(60),
            body_limit: 1 << 20,
            work_dir: PathBuf::from(".flowhost").join("generated"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting the daemon refuses to start with.
    #[error("{0}")]
    Refused(String),
    /// A pool's processor could not be loaded.
    #[error("pool `{pool}`: {error}")]
    Pool { pool: String, error: EngineError },
    #[error("{0}")]
    Store(#[from] BackendError),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// What the engine tells the daemon: counted by the metrics, published on
/// the live feed, and a result written wakes whoever waits for one.
struct Observe {
    metrics: Arc<Metrics>,
    results: Arc<Notify>,
    feed: Arc<live::Feed>,
}

impl Observer for Observe {
    fn state(&self, id: &str, machine: &str, state: &str, step: u64) {
        self.metrics.state(id, machine, state, step);
    }
    fn event(&self, rec: &Record, event: &Event) {
        self.metrics.event(rec, event);
        if self.feed.watched() {
            self.feed
                .publish(live::Summary::of(rec, crate::backend::now_ms()));
        }
    }
    fn result_written(&self, _id: &str) {
        self.results.notify_waiters();
    }
}

/// A running daemon's parts, shared by the API handlers.
pub struct Daemon {
    pub(crate) config: Config,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pools: Vec<Arc<ScaledPool>>,
    pub(crate) catalog: catalog::Catalog,
    /// Notified when this process writes a result.
    pub(crate) results: Arc<Notify>,
    /// Notified when work was added here: scale now, not at the next tick.
    pub(crate) added: Notify,
    /// Notified (all waiters) when work was added here: idle workers claim now.
    pub(crate) work: Arc<Notify>,
    /// Turns true when the drain begins (waiting requests answer at once).
    pub(crate) draining: watch::Sender<bool>,
    /// Executions changing, for `GET /events`.
    pub(crate) feed: Arc<live::Feed>,
    /// Each queue's throughput over the last minutes.
    pub(crate) rates: Arc<live::Rates>,
    token: Option<auth::Token>,
}

/// How often the pools are resized (and sooner when work is added here).
const SCALE_EVERY: Duration = Duration::from_millis(200);

impl Daemon {
    /// Checks the config and loads the pools' processors; starts nothing.
    pub fn new(
        config: Config,
        backend: Arc<dyn Backend>,
        runtime: Arc<Runtime>,
        spawner: Option<crate::spawn::Spawner>,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let token = match (&config.token, config.listen.ip().is_loopback()) {
            (Some(t), _) => Some(auth::Token::new(t).map_err(DaemonError::Refused)?),
            (None, true) => None,
            (None, false) => {
                return Err(DaemonError::Refused(format!(
                    "{} is not a loopback address: a token is required (--token or FLOWHOST_TOKEN), or listen on 127.0.0.1",
                    config.listen
                )));
            }
        };
        if config.stale_after <= config.heartbeat * 2 {
            return Err(DaemonError::Refused(format!(
                "--stale-after ({:?}) must be more than twice the heartbeat ({:?}), or the reaper takes live workers for dead",
                config.stale_after, config.heartbeat
            )));
        }
        if config.sizing.min > config.sizing.max || config.sizing.max == 0 {
            return Err(DaemonError::Refused(format!(
                "--max-workers must be at least 1 and at least --min-workers ({})",
                config.sizing.min
            )));
        }
        let counters = Arc::new(WorkerCounters::default());
        let work = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new(counters.clone()));
        let results = Arc::new(Notify::new());
        let feed = Arc::new(live::Feed::default());
        let observe = Arc::new(Observe {
            metrics: metrics.clone(),
            results: results.clone(),
            feed: feed.clone(),
        });
        let mut engine = Engine::new(backend.clone(), runtime.clone(), config.plugins_dir.clone())
            .with_lease(config.lease)
            .with_observer(observe);
        if let Some(s) = spawner {
            engine = engine.with_spawner(s);
        }
        let engine = Arc::new(engine);
        let worker = |queue: &str| WorkerConfig {
            concurrency: config.concurrency,
            lease: config.lease,
            heartbeat: config.heartbeat,
            counters: counters.clone(),
            wake: Some(work.clone()),
            ..WorkerConfig::new(queue)
        };
        let mut pools = vec![ScaledPool::new(
            backend.clone(),
            Processor::Executions(engine.clone()),
            worker(crate::engine::queue::EXECUTIONS_POOL),
            config.sizing,
        )];
        for spec in &config.pools {
            if spec.name == crate::engine::queue::EXECUTIONS_POOL
                || pools.iter().any(|p| p.queue() == spec.name)
            {
                return Err(DaemonError::Refused(format!(
                    "pool `{}` is named twice (or is the run queue `{}`)",
                    spec.name,
                    crate::engine::queue::EXECUTIONS_POOL
                )));
            }
            let processor = Processor::named(
                &spec.processor,
                engine.clone(),
                &runtime,
                &config.plugins_dir,
            )
            .map_err(|error| DaemonError::Pool {
                pool: spec.name.clone(),
                error,
            })?;
            pools.push(ScaledPool::new(
                backend.clone(),
                processor,
                worker(&spec.name),
                config.sizing,
            ));
        }
        let catalog = catalog::Catalog::new(runtime, config.plugins_dir.clone());
        Ok(Arc::new(Daemon {
            config,
            backend,
            engine,
            metrics,
            pools,
            catalog,
            results,
            added: Notify::new(),
            work,
            draining: watch::channel(false).0,
            feed,
            rates: Arc::default(),
            token,
        }))
    }

    /// Work was added through this daemon: scale and claim now.
    pub(crate) fn added_work(&self) {
        self.added.notify_one();
        self.work.notify_waiters();
    }

    pub fn pool(&self, queue: &str) -> Option<&Arc<ScaledPool>> {
        self.pools.iter().find(|p| p.queue() == queue)
    }

    /// Serves until `shutdown` completes, then drains; returns how many
    /// workers had not finished within the grace period.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<usize, DaemonError> {
        let scaler = tokio::spawn({
            let d = self.clone();
            async move {
                loop {
                    for pool in &d.pools {
                        pool.tick().await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(SCALE_EVERY) => {}
                        _ = d.added.notified() => {}
                    }
                }
            }
        });
        let reaper = tokio::spawn({
            let d = self.clone();
            async move {
                let every = (d.config.stale_after / 2).max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(every).await;
                    match d
                        .backend
                        .reap(d.config.stale_after.as_millis() as u64)
                        .await
                    {
                        Ok(lost) => {
                            for id in lost {
                                tracing::warn!(worker = %id, "reaped: no heartbeat for {:?}; its jobs were released", d.config.stale_after);
                            }
                        }
                        Err(e) => tracing::warn!("reaper: {e}"),
                    }
                }
            }
        });
        let watcher = self
            .catalog
            .watch(self.engine.clone(), self.metrics.clone());
        let sampler = self.rates.clone().run(
            self.backend.clone(),
            self.pools.iter().map(|p| p.queue().to_string()).collect(),
        );
        let router = api::router(self.clone());
        let d = self.clone();
        let (drain_started, mut drain_wait) = watch::channel(false);
        let stop = async move {
            shutdown.await;
            tracing::info!("draining: no new requests or claims");
            let _ = d.draining.send(true);
            let _ = drain_started.send(true);
        };
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop);
        // Workers drain while the HTTP server finishes the requests in hand.
        let drain = {
            let d = self.clone();
            async move {
                let _ = drain_wait.wait_for(|s| *s).await;
                scaler.abort();
                reaper.abort();
                watcher.abort();
                sampler.abort();
                d.engine.stop("the daemon is stopping");
                // Every queue stops claiming at once; then one grace period
                // for all of them.
                let stopping: Vec<_> = d.pools.iter().map(|p| p.stop_claiming()).collect();
                let deadline = tokio::time::Instant::now() + d.config.grace;
                let mut left = 0;
                for workers in stopping {
                    left += pool::wait_for(workers, deadline).await;
                }
                left
            }
        };
        let (served, left) = tokio::join!(server.into_future(), drain);
        served?;
        Ok(left)
    }

    /// The machine file a submission names: a path to a config, or a name
    /// in the machines folder.
    pub(crate) fn machine_file(&self, machine: &str) -> Result<PathBuf, String> {
        let as_path = std::path::Path::new(machine);
        if machine.ends_with(".yml") || machine.ends_with(".yaml") || machine.contains('/') {
            return if as_path.is_file() {
                Ok(as_path.to_path_buf())
            } else {
                Err(format!(
                    "no machine config `{machine}` on the daemon's host"
                ))
            };
        }
        let Some(dir) = &self.config.machines_dir else {
            return Err(format!(
                "no machine named `{machine}`: the daemon has no machines folder (--machines DIR); name a config file instead"
            ));
        };
        for ext in ["yml", "yaml"] {
            let file = dir.join(format!("{machine}.{ext}"));
            if file.is_file() {
                return Ok(file);
            }
        }
        let names = self.machine_names();
        let hint = match crate::text::closest(machine, &names) {
            Some(near) => format!("; did you mean `{near}`?"),
            None if names.is_empty() => format!("; {} has no machines", dir.display()),
            None => format!("; known: {}", names.join(", ")),
        };
        Err(format!(
            "no machine named `{machine}` in {}{hint}",
            dir.display()
        ))
    }

    /// Names of the machines in the machines folder, sorted.
    /// The machines in the machines folder (files with `spec: flatmachine`).
    pub(crate) fn machine_names(&self) -> Vec<String> {
        let Some(dir) = &self.config.machines_dir else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            // Agent and profile files live beside the machines that name them.
            .filter(|p| is_machine_file(p))
            .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Whether a YAML file says `spec: flatmachine` (not an agent or profiles file).
fn is_machine_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines().any(|l| {
            l.strip_prefix("spec:")
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == "flatmachine")
        })
    })
}
