//! `flowhost jobs push|list|stats|requeue|prune` and `flowhost workers`: job pools
//! and the worker registry in the store.

use super::CliError;
use super::run::{ReadStoreArgs, StoreArgs};
use clap::{Args, Subcommand};
use flowhost::backend::{JobStatus, NewJob, WorkerStatus};
use flowhost::plugin::registry;
use flowhost::spawn::{Spawner, WorkerProcess, workers_wanted};
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum JobsCommand {
    /// Add jobs to a pool.
    Push(PushArgs),
    /// List a pool's jobs, oldest first.
    List(ListArgs),
    /// Counts by status.
    Stats(PoolArgs),
    /// Put poisoned jobs (all, or --id) back to pending with fresh retries.
    Requeue(RequeueArgs),
    /// Delete done jobs finished longer ago than --older-than (poisoned jobs stay).
    Prune(PruneArgs),
}

#[derive(Args)]
pub(super) struct PruneArgs {
    /// The pool.
    pool: String,
    /// Done jobs that finished longer ago than this go, e.g. 7d, 12h, 30m.
    #[arg(long, value_parser = super::parse_duration)]
    older_than: std::time::Duration,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(super) struct PushArgs {
    /// The pool (created on first use).
    pool: String,
    /// The payload as JSON, or @file.json (default: {}; with --count, `{"n": i}`).
    #[arg(long, value_name = "JSON|@FILE")]
    input: Option<String>,
    /// Push this many jobs (payload `{"n": i}` unless --input is given).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Higher priorities are claimed first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i64,
    /// Not claimable before this many milliseconds from now.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    delay: u64,
    /// Failed attempts retried before the job is poisoned.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// A second push with the same key returns the first job.
    #[arg(long, conflicts_with = "count")]
    key: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(super) struct ListArgs {
    /// The pool.
    pool: String,
    /// Only jobs with this status.
    #[arg(long, value_parser = super::status_arg!(JobStatus))]
    status: Option<JobStatus>,
    /// Most jobs listed.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct PoolArgs {
    /// The pool.
    pool: String,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct RequeueArgs {
    /// The pool.
    pool: String,
    /// Only these jobs (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(super) struct WorkersArgs {
    /// Only workers of this pool.
    #[arg(long)]
    pool: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: ReadStoreArgs,
}

pub(super) fn store_error(e: flowhost::backend::BackendError) -> CliError {
    CliError::Other(e.to_string())
}

pub(super) async fn run(c: JobsCommand) -> Result<ExitCode, CliError> {
    match c {
        JobsCommand::Push(a) => {
            let payload = match &a.input {
                Some(arg) => {
                    Some(registry::read_json_arg("--input", arg).map_err(CliError::Usage)?)
                }
                None => None,
            };
            let backend = a.store.open_or_create().await?;
            let (mut created, mut first) = (0, None);
            for i in 0..a.count {
                let job = NewJob {
                    payload: payload.clone().unwrap_or_else(|| {
                        if a.count > 1 {
                            serde_json::json!({"n": i})
                        } else {
                            serde_json::json!({})
                        }
                    }),
                    priority: a.priority,
                    delay_ms: a.delay,
                    max_retries: a.max_retries,
                    idempotency_key: a.key.clone(),
                };
                let (id, new) = backend.push(&a.pool, job).await.map_err(store_error)?;
                first.get_or_insert(id);
                created += u32::from(new);
            }
            match (a.count, first) {
                (1, Some(id)) if created == 0 => println!("job {id} already exists (same --key)"),
                (1, Some(id)) => println!("pushed job {id} to `{}`", a.pool),
                _ => println!("pushed {created} jobs to `{}`", a.pool),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::List(a) => {
            let backend = a.store.open().await?;
            let jobs = backend
                .jobs(&a.pool, a.status, a.limit)
                .await
                .map_err(store_error)?;
            for j in jobs {
                if a.json {
                    println!("{}", serde_json::to_string(&j).unwrap_or_default());
                    continue;
                }
                let tail = match (&j.result, &j.error) {
                    (Some(r), _) => format!("result {r}"),
                    // One line per job: the error's first line.
                    (None, Some(e)) => match e.split_once('\n') {
                        Some((first, _)) => format!("error: {first} …"),
                        None => format!("error: {e}"),
                    },
                    _ => format!("payload {}", j.payload),
                };
                println!(
                    "{:>6}  {:<8}  attempts {}/{}  {:<12}  {tail}",
                    j.id,
                    j.status,
                    j.attempts,
                    j.max_retries + 1,
                    j.worker.as_deref().unwrap_or("-"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Stats(a) => {
            let backend = a.store.open().await?;
            let s = backend.stats(&a.pool).await.map_err(store_error)?;
            println!(
                "{}",
                serde_json::json!({"pool": a.pool, "pending": s.pending, "claimed": s.claimed, "done": s.done, "poisoned": s.poisoned, "depth": s.depth()})
            );
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Requeue(a) => {
            let backend = a.store.open_existing().await?;
            let n = backend
                .requeue(&a.pool, &a.ids)
                .await
                .map_err(store_error)?;
            println!("requeued {n} poisoned job(s) in `{}`", a.pool);
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Prune(a) => {
            // In slices, so other hosts' writes go on between them.
            const SLICE: u32 = 10_000;
            let backend = a.store.open_existing().await?;
            let before = backend
                .clock()
                .now_ms()
                .saturating_sub(a.older_than.as_millis() as u64);
            let mut total = 0;
            loop {
                let n = backend
                    .prune(&a.pool, before, SLICE)
                    .await
                    .map_err(store_error)?;
                total += n;
                if n < u64::from(SLICE) {
                    break;
                }
            }
            println!("pruned {total} done job(s) from `{}`", a.pool);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(super) async fn workers(a: WorkersArgs) -> Result<ExitCode, CliError> {
    let backend = a.store.open().await?;
    let now = backend.clock().now_ms();
    let list = backend
        .workers(a.pool.as_deref())
        .await
        .map_err(store_error)?;
    if list.is_empty() {
        eprintln!("no workers registered in {}", backend.describe());
    }
    for w in list {
        if a.json {
            println!("{}", serde_json::to_string(&w).unwrap_or_default());
            continue;
        }
        println!(
            "{}  {:<7}  pool {:<12} pid {:<7} last heartbeat {:.1}s ago",
            w.id,
            w.status,
            w.pool,
            w.pid,
            now.saturating_sub(w.heartbeat_ms) as f64 / 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(super) struct WorkerArgs {
    /// The pool to take jobs from.
    #[arg(
        long,
        required_unless_present = "executions",
        conflicts_with = "executions"
    )]
    pool: Option<String>,
    /// A processor plugin (name or .wasm) or a machine config (.yml).
    #[arg(
        long,
        required_unless_present = "executions",
        conflicts_with = "executions"
    )]
    processor: Option<String>,
    /// Run submitted executions (`flowhost submit`) instead of a pool's jobs.
    #[arg(long)]
    executions: bool,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// How long a claim (and the lease on an execution it runs) lasts
    /// without renewal, e.g. 30s: a worker that stops (killed, paused, cut
    /// off) loses its work to another after this long.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    lease: std::time::Duration,
    /// Heartbeat interval, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    heartbeat: std::time::Duration,
    /// Exit once the pool has no pending or claimed jobs.
    #[arg(long)]
    exit_when_empty: bool,
    /// Retry every failed job; by default failures that would fail again
    /// (invalid_input, fatal, link, load) poison the job at once.
    #[arg(long)]
    retry_all: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: super::RuntimeArgs,
}

/// `flowhost worker`: runs until SIGTERM / Ctrl-C (finishing the jobs it
/// holds), or until the pool is empty with --exit-when-empty.
pub(super) async fn worker(a: WorkerArgs) -> Result<ExitCode, CliError> {
    use flowhost::plugin::Runtime;
    use flowhost::worker::{Processor, WorkerConfig};
    use std::sync::Arc;
    if a.concurrency == 0 {
        return Err(CliError::Usage("--concurrency must be at least 1".into()));
    }
    let backend = a.store.open_or_create().await?;
    let runtime = Arc::new(
        Runtime::new(a.runtime.runtime_config(false)?)
            .map_err(|e| CliError::Other(format!("cannot start the plugin runtime: {e}")))?,
    );
    let dir = a.runtime.plugins_dir();
    let spawner = Spawner::current(a.store.to_args(), &dir).map_err(spawn_error)?;
    let engine = || {
        Arc::new(
            flowhost::engine::Engine::new(backend.clone(), runtime.clone(), dir.clone())
                .with_spawner(spawner.clone())
                .with_lease(a.lease),
        )
    };
    let pool = pool_or_run_queue(&a.pool);
    // Clap requires it unless --executions, whose branch does not read it.
    let processor = a.processor.clone().unwrap_or_default();
    // Queued executions run by this worker are asked to stop (at a state
    // boundary, checkpointed) when it stops; their jobs go back to the
    // queue and another worker continues them. (A pool's machine jobs
    // finish in hand: each starts a new execution.)
    let mut engines = Vec::new();
    let processor = if a.executions {
        let engine = engine();
        engines.push(engine.clone());
        Processor::Executions(engine)
    } else {
        Processor::named(&processor, engine(), &runtime, &dir).map_err(|e| match e {
            flowhost::engine::EngineError::Plugin { error, .. } => CliError::Plugin {
                context: format!("--processor {processor}"),
                error,
            },
            other => super::run::engine_error(other),
        })?
    };
    let config = WorkerConfig {
        concurrency: a.concurrency,
        lease: a.lease,
        heartbeat: a.heartbeat,
        exit_when_empty: a.exit_when_empty,
        retry_all: a.retry_all,
        ..WorkerConfig::new(pool)
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!(
            "stopping: finishing the jobs in hand (executions stop at their next state boundary)"
        );
        for engine in &engines {
            engine.stop("the worker is stopping");
        }
        let _ = stop.send(true);
    });
    let report = flowhost::worker::run(backend, processor, config, stopped)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(super) struct ReaperArgs {
    /// Workers silent for longer than this many seconds are lost.
    #[arg(long, value_name = "SECONDS")]
    stale_after: f64,
    #[command(flatten)]
    store: StoreArgs,
}

/// `flowhost reaper`: marks silent workers lost and releases their jobs.
pub(super) async fn reaper(a: ReaperArgs) -> Result<ExitCode, CliError> {
    let stale_after = flowhost::duration::from_secs(a.stale_after).ok_or_else(|| {
        CliError::Usage(format!(
            "--stale-after must be seconds from 0 to {}",
            flowhost::duration::max_text()
        ))
    })?;
    let backend = a.store.open_existing().await?;
    let lost = backend
        .reap(stale_after.as_millis() as u64)
        .await
        .map_err(store_error)?;
    if lost.is_empty() {
        println!("no stale workers");
    }
    for id in lost {
        println!("reaped {id}: marked lost, its jobs released");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(super) struct CheckerArgs {
    /// The pool to scale workers for.
    #[arg(
        long,
        required_unless_present = "executions",
        conflicts_with = "executions"
    )]
    pool: Option<String>,
    /// Most workers the pool may have at once.
    #[arg(long)]
    max_workers: u32,
    /// What the spawned workers run (a plugin or a machine config).
    #[arg(
        long,
        required_unless_present = "executions",
        conflicts_with = "executions"
    )]
    processor: Option<String>,
    /// Scale `worker --executions` processes on the run queue's depth.
    #[arg(long)]
    executions: bool,
    /// Jobs each spawned worker runs at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: super::RuntimeArgs,
}

/// `flowhost checker`: spawns `min(depth, max) − active` worker processes,
/// each exiting when the pool is empty.
pub(super) async fn checker(a: CheckerArgs) -> Result<ExitCode, CliError> {
    let backend = a.store.open_existing().await?;
    let pool = pool_or_run_queue(&a.pool);
    let depth = backend.stats(pool).await.map_err(store_error)?.depth();
    let active = backend
        .workers(Some(pool))
        .await
        .map_err(store_error)?
        .iter()
        .filter(|w| w.status == WorkerStatus::Active)
        .count() as u64;
    let spawn = workers_wanted(depth, active, a.max_workers);
    println!(
        "pool `{pool}`: depth {depth}, active workers {active}, max {}: spawning {spawn}",
        a.max_workers
    );
    let spawner =
        Spawner::current(a.store.to_args(), &a.runtime.plugins_dir()).map_err(spawn_error)?;
    let worker = WorkerProcess {
        pool,
        processor: a.processor.as_deref(),
        concurrency: a.concurrency,
        exit_when_empty: true,
        quiet: false,
    };
    for _ in 0..spawn {
        let child = spawner.worker(&worker).map_err(spawn_error)?;
        println!("spawned worker process {}", child.id());
    }
    Ok(ExitCode::SUCCESS)
}

/// The pool named by `--pool`, else (with `--executions`) the run queue.
fn pool_or_run_queue(pool: &Option<String>) -> &str {
    pool.as_deref()
        .unwrap_or(flowhost::engine::queue::EXECUTIONS_POOL)
}

/// Asks processes this command started to stop (SIGTERM) and waits for
/// them.
pub(super) fn stop_processes(children: Vec<std::process::Child>) {
    for c in &children {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for mut c in children {
        let _ = c.wait();
    }
}

pub(super) fn spawn_error(e: flowhost::spawn::SpawnError) -> CliError {
    CliError::Other(e.to_string())
}

#[derive(Args)]
pub(super) struct BenchJobsArgs {
    /// Jobs for the throughput run.
    #[arg(long, default_value_t = 20_000)]
    jobs: u32,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Jobs per second in the latency run.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 4)]
    seconds: u32,
    /// After SQLite, run the same on this PostgreSQL database (an empty one:
    /// the benchmark fills it), e.g. postgres://user:password@127.0.0.1:5432/bench.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    #[command(flatten)]
    runtime: super::RuntimeArgs,
}

fn spawn_bench_worker(
    db: &str,
    plugins: &std::path::Path,
    concurrency: u32,
    exit_when_empty: bool,
) -> Result<std::process::Child, CliError> {
    Spawner::current(["--db", db], plugins)
        .and_then(|s| {
            s.worker(&WorkerProcess {
                pool: "bench",
                processor: Some("echo"),
                concurrency,
                exit_when_empty,
                quiet: true,
            })
        })
        .map_err(spawn_error)
}

/// `flowhost bench jobs`: trivial jobs through worker processes on a durable
/// store (SQLite synchronous=FULL; with `--postgres`, then the same on
/// PostgreSQL): throughput, then enqueue→complete latency of a paced stream.
pub(super) async fn bench(a: BenchJobsArgs) -> Result<ExitCode, CliError> {
    let dir = tempfile::tempdir().map_err(|e| CliError::Other(format!("temp dir: {e}")))?;
    for s in super::bench::stores(dir.path(), a.postgres.as_deref()).await? {
        super::bench::fresh(&s, &["bench"]).await?;
        bench_on(&s, &a).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_on(s: &super::bench::BenchStore, a: &BenchJobsArgs) -> Result<(), CliError> {
    use std::time::{Duration, Instant};
    let (store, db) = (&s.store, s.location.as_str());
    let plugins = a.runtime.plugins_dir();
    println!(
        "job benchmark: echo plugin, {} worker processes x concurrency {}, {}",
        a.workers, a.concurrency, s.label
    );

    // Throughput: push everything, then let the workers drain the pool.
    let mut pushes = tokio::task::JoinSet::new();
    for i in 0..a.jobs {
        let store = store.clone();
        pushes.spawn(async move {
            store
                .push("bench", NewJob::new(serde_json::json!({"n": i})))
                .await
        });
    }
    while let Some(r) = pushes.join_next().await {
        r.map_err(|e| CliError::Other(e.to_string()))?
            .map_err(store_error)?;
    }
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..a.workers {
        children.push(spawn_bench_worker(db, &plugins, a.concurrency, true)?);
    }
    for mut c in children {
        c.wait().map_err(|e| CliError::Other(e.to_string()))?;
    }
    let elapsed = started.elapsed();
    let stats = store.stats("bench").await.map_err(store_error)?;
    let jobs = store
        .jobs("bench", None, a.jobs as usize)
        .await
        .map_err(store_error)?;
    let twice = jobs.iter().filter(|j| j.attempts != 1).count();
    println!(
        "  throughput: {} jobs in {:.2?} = {:.0} jobs/s end to end (worker start-up included); done {}, claimed more than once {twice}",
        a.jobs,
        elapsed,
        f64::from(a.jobs) / elapsed.as_secs_f64(),
        stats.done
    );

    // Latency: a paced stream into a pool with idle workers.
    let mut children = Vec::new();
    for _ in 0..a.workers {
        children.push(spawn_bench_worker(db, &plugins, a.concurrency, false)?);
    }
    // Let the workers start and go idle before the stream begins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = a.rate * a.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    let mut first_id = None;
    for i in 0..total {
        tick.tick().await;
        let (id, _) = store
            .push("bench", NewJob::new(serde_json::json!({"stream": i})))
            .await
            .map_err(store_error)?;
        first_id.get_or_insert(id);
    }
    let waited = Instant::now();
    loop {
        let s = store.stats("bench").await.map_err(store_error)?;
        if s.depth() == 0 || waited.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_processes(children);
    let first = first_id.unwrap_or(0);
    let mut latencies: Vec<u64> = store
        .jobs("bench", Some(JobStatus::Done), (a.jobs + total) as usize)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|j| j.id >= first)
        .map(|j| j.updated_ms.saturating_sub(j.created_ms))
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "  latency: {} jobs at {}/s, enqueue→complete p50 {} ms, p99 {} ms, max {} ms (millisecond clock)",
        latencies.len(),
        a.rate,
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(())
}
