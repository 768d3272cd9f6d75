//! `flowhost bench executions`: the distributed driver measured end to end —
//! executions submitted through the engine to a durable store (SQLite
//! synchronous=FULL; with `--postgres`, then the same on PostgreSQL), run by
//! `flowhost worker --executions` processes of this binary. Times come from
//! the store's own timestamps (submitted → result written), so the polling
//! that waits for the end does not count. Also the stores every store
//! benchmark runs on ([`stores`]).
//! May import: the `flowhost` library, `jobs` (worker spawning, errors), `run`.

use super::CliError;
use super::jobs::{spawn_error, stop_processes, store_error};
use super::run::engine_error;
use clap::Args;
use flowhost::backend::{self, Backend, Durability, ExecutionStatus, Location};
use flowhost::engine::{Engine, bench, queue::EXECUTIONS_POOL};
use flowhost::plugin::Runtime;
use flowhost::spawn::{Spawner, WorkerProcess};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub(super) struct BenchExecutionsArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// Executions each worker runs at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Concurrent runs of the throughput machine.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// States of the throughput machine (the final state included).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..))]
    states: u32,
    /// States of the sequential machine, run one execution at a time.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(2..))]
    sequential: u32,
    /// Items of the foreach machine.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    items: u32,
    /// Submissions per second in the latency run (a 3-state machine).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rate: u32,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// After SQLite, run the same on this PostgreSQL database (an empty one:
    /// the benchmark fills it), e.g. postgres://user:password@127.0.0.1:5432/bench.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    #[command(flatten)]
    runtime: super::RuntimeArgs,
}

/// A store a benchmark runs on: what the rows say, and how worker
/// processes open it.
pub(super) struct BenchStore {
    pub label: String,
    pub store: Arc<dyn Backend>,
    pub location: String,
}

/// The stores a benchmark runs on, in order: a fresh SQLite file in `dir`
/// (synchronous=FULL), then the PostgreSQL database `postgres` names, which
/// must hold no jobs yet (its server's `synchronous_commit` is shown).
pub(super) async fn stores(
    dir: &Path,
    postgres: Option<&str>,
) -> Result<Vec<BenchStore>, CliError> {
    let db = dir.join("bench.db");
    let mut out = vec![BenchStore {
        label: "SQLite synchronous=FULL".into(),
        store: backend::open(&Location::Sqlite(db.clone()), Durability::Full, true)
            .await
            .map_err(store_error)?,
        location: db.display().to_string(),
    }];
    if let Some(url) = postgres {
        let pg = backend::PostgresBackend::open(url)
            .await
            .map_err(store_error)?;
        let sync = pg
            .setting("synchronous_commit")
            .await
            .map_err(store_error)?;
        let store: Arc<dyn Backend> = Arc::new(pg);
        out.push(BenchStore {
            label: format!("PostgreSQL synchronous_commit={sync}"),
            store,
            location: url.to_string(),
        });
    }
    Ok(out)
}

/// Refuses a store that has run jobs already (the figures count its rows).
pub(super) async fn fresh(s: &BenchStore, pools: &[&str]) -> Result<(), CliError> {
    for pool in pools {
        let stats = s.store.stats(pool).await.map_err(store_error)?;
        if stats.depth() + stats.done + stats.poisoned > 0 {
            return Err(CliError::Other(format!(
                "{}: pool `{pool}` has jobs already; give the benchmark an empty database",
                s.store.describe()
            )));
        }
    }
    Ok(())
}

/// Calls one warm plugin instance serves (as in `bench engine`'s warm rows).
const REUSE: u32 = 1000;
/// Runs of the sequential machine (the per-state figure is their mean).
const SEQUENTIAL_RUNS: usize = 5;

/// What the benchmark runs against.
struct Bench {
    store: Arc<dyn Backend>,
    engine: Arc<Engine>,
}

impl Bench {
    async fn submit(&self, machine: &Path, input: Value) -> Result<String, CliError> {
        let sent = self
            .engine
            .submit(machine, input, None)
            .await
            .map_err(engine_error)?;
        Ok(sent.id)
    }

    /// Waits for every execution of `ids` to end (it must end `done`), and
    /// returns each one's (submitted, result written) times in ms.
    async fn finished(&self, ids: &[String]) -> Result<Vec<(u64, u64)>, CliError> {
        let mut pause = Duration::from_millis(2);
        loop {
            let statuses = self.store.statuses(ids).await.map_err(store_error)?;
            if ids
                .iter()
                .all(|id| statuses.get(id).is_some_and(|s| s.is_terminal()))
            {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        let mut times = Vec::with_capacity(ids.len());
        for id in ids {
            let cp = self.store.load(id).await.map_err(store_error)?;
            let result = self.store.read_result(id).await.map_err(store_error)?;
            match (cp, result) {
                (Some(cp), Some(r)) if r.status == ExecutionStatus::Done => {
                    times.push((cp.created_ms, r.written_ms))
                }
                (_, r) => {
                    return Err(CliError::Other(format!(
                        "benchmark execution {id} did not end done: {r:?}"
                    )));
                }
            }
        }
        Ok(times)
    }
}

/// `flowhost bench executions`.
pub(super) async fn executions(a: BenchExecutionsArgs) -> Result<ExitCode, CliError> {
    let dir = tempfile::tempdir().map_err(|e| CliError::Other(format!("temp dir: {e}")))?;
    let plugins = a.runtime.plugins_dir();
    let rt = Arc::new(
        Runtime::new(a.runtime.runtime_config(false)?)
            .map_err(|e| CliError::Other(format!("cannot start the plugin runtime: {e}")))?,
    );
    let machines = |name: &str, states: u32| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub)
            .and_then(|()| bench::write_machines(&sub, (states - 1) as usize, "echo", REUSE))
            .map_err(|e| CliError::Other(format!("cannot write the benchmark machines: {e}")))
    };
    let (throughput, foreach) = machines("throughput", a.states)?;
    let (sequential, _) = machines("sequential", a.sequential)?;
    let (short, _) = machines("latency", 3)?;
    for s in stores(dir.path(), a.postgres.as_deref()).await? {
        fresh(&s, &[EXECUTIONS_POOL]).await?;
        println!(
            "distributed benchmark: echo plugin in every state, {} worker processes x concurrency {}, {}",
            a.workers, a.concurrency, s.label
        );
        let engine = Arc::new(Engine::new(s.store.clone(), rt.clone(), plugins.clone()));
        let b = Bench {
            store: s.store.clone(),
            engine,
        };
        let spawner =
            Spawner::current(["--db", s.location.as_str()], &plugins).map_err(spawn_error)?;
        let mut workers = Vec::new();
        for _ in 0..a.workers {
            let w = spawner.worker(&WorkerProcess {
                pool: EXECUTIONS_POOL,
                processor: None,
                concurrency: a.concurrency,
                exit_when_empty: false,
                quiet: true,
            });
            workers.push(w.map_err(spawn_error)?);
        }
        let result = measure(&b, &a, [&throughput, &sequential, &foreach, &short]).await;
        stop_processes(workers);
        result?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(b: &Bench, a: &BenchExecutionsArgs, machines: [&Path; 4]) -> Result<(), CliError> {
    let [throughput, sequential, foreach, short] = machines;
    // Warm-up: each machine once, so the workers have loaded the plugin.
    let mut warm = Vec::new();
    for m in [throughput, sequential, short] {
        warm.push(b.submit(m, json!({})).await?);
    }
    warm.push(b.submit(foreach, json!({"items": [1, 2, 3]})).await?);
    b.finished(&warm).await?;

    // Throughput: `runs` executions submitted at once.
    let started = flowhost::backend::now_ms();
    let mut submits = tokio::task::JoinSet::new();
    for _ in 0..a.runs {
        let engine = b.engine.clone();
        let machine = throughput.to_path_buf();
        submits.spawn(async move { engine.submit(&machine, json!({}), None).await });
    }
    let mut ids = Vec::new();
    while let Some(sent) = submits.join_next().await {
        let sent = sent.map_err(|e| CliError::Other(e.to_string()))?;
        ids.push(sent.map_err(engine_error)?.id);
    }
    let times = b.finished(&ids).await?;
    let end = times.iter().map(|t| t.1).max().unwrap_or(started);
    let secs = (end.saturating_sub(started)).max(1) as f64 / 1000.0;
    println!(
        "  throughput: {} runs x {} states in {:.3} s = {:.0} executions/s, {:.0} states/s (target >= 6000 states/s)",
        a.runs,
        a.states,
        secs,
        f64::from(a.runs) / secs,
        f64::from(a.runs * a.states) / secs
    );

    // Sequential: one execution at a time; the time per state.
    let mut total_ms = 0;
    for _ in 0..SEQUENTIAL_RUNS {
        let id = b.submit(sequential, json!({})).await?;
        let (submitted, written) = b.finished(std::slice::from_ref(&id)).await?[0];
        total_ms += written.saturating_sub(submitted);
    }
    let per_state = total_ms as f64 / (SEQUENTIAL_RUNS as f64 * f64::from(a.sequential));
    println!(
        "  sequential: {} states, submitted -> result {:.1} ms on average over {SEQUENTIAL_RUNS} runs = {per_state:.2} ms per state (target <= 1 ms)",
        a.sequential,
        total_ms as f64 / SEQUENTIAL_RUNS as f64
    );

    // Foreach: one fan-out whose children spread over the workers.
    let items: Vec<u32> = (0..a.items).collect();
    let id = b.submit(foreach, json!({ "items": items })).await?;
    let (submitted, written) = b.finished(std::slice::from_ref(&id)).await?[0];
    let secs = written.saturating_sub(submitted).max(1) as f64 / 1000.0;
    let spread = children_per_worker(b, &id).await?;
    println!(
        "  foreach: {} items in {:.3} s = {:.0} items/s (target >= 5000); children per worker: {}",
        a.items,
        secs,
        f64::from(a.items) / secs,
        spread
    );

    // Latency: a paced stream of a 3-state machine into idle workers.
    let total = a.rate * a.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ids = Vec::new();
    for _ in 0..total {
        tick.tick().await;
        ids.push(b.submit(short, json!({})).await?);
    }
    let mut latencies: Vec<u64> = b
        .finished(&ids)
        .await?
        .into_iter()
        .map(|(submitted, written)| written.saturating_sub(submitted))
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "  latency: {} submissions at {}/s of a 3-state machine, submit -> result p50 {} ms, p99 {} ms, max {} ms (target p99 <= 10 ms; millisecond clock)",
        latencies.len(),
        a.rate,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// How many of `parent`'s children each worker ran, e.g. `512 / 488`.
async fn children_per_worker(b: &Bench, parent: &str) -> Result<String, CliError> {
    let prefix = format!("{parent}:");
    let stats = b.store.stats(EXECUTIONS_POOL).await.map_err(store_error)?;
    let all = stats.depth() + stats.done + stats.poisoned;
    let jobs = b
        .store
        .jobs(EXECUTIONS_POOL, None, all as usize)
        .await
        .map_err(store_error)?;
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for job in jobs {
        let child = job.payload["execution"]
            .as_str()
            .is_some_and(|e| e.starts_with(&prefix));
        if let (true, Some(worker)) = (child, job.worker) {
            *per.entry(worker).or_default() += 1;
        }
    }
    let counts: Vec<String> = per.values().map(u64::to_string).collect();
    Ok(counts.join(" / "))
}
