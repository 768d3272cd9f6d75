//! The job pool worker: registers itself, heartbeats in the background
//! (extending the leases of the jobs it holds), claims jobs, runs the pool's
//! processor (a plugin or a machine) on each, and completes or fails them
//! with the claim's fencing token. On shutdown it stops claiming, finishes
//! what it holds, releases anything left and deregisters. A store that
//! refuses claims (a full disk, a lock held elsewhere) stops its claims,
//! not the worker: it says so once, backs off, and goes on when it can.
//!
//! Imports `engine`, `plugin`, `failure`, `crash` and the `backend` traits.

use crate::backend::{
    Backend, BackendError, Backoff, FailOutcome, Job, StoreErrorKind, WorkerInfo, WorkerStatus,
};
use crate::engine::{Engine, Status};
use crate::failure::FailureKind;
use crate::plugin::{CallContext, CallMeta, Plugin};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The first and the longest pause between claims a store refused.
const CLAIM_RETRY_MIN: Duration = Duration::from_millis(50);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(2);
/// The longest idle poll when the store hints at new work
/// ([`crate::backend::WorkPools::work_hint`]): the hint wakes the worker for
/// new jobs; the poll finds what only time makes due (a delay, a backoff,
/// an expired lease) — so an idle host asks a shared database a few times
/// a second, not hundreds.
const HINTED_POLL: Duration = Duration::from_millis(200);

/// What a pool's jobs are run by.
#[derive(Clone)]
pub enum Processor {
    /// A processor plugin: the payload is its input, its output the result.
    Plugin(Plugin),
    /// A machine: the payload is its input, its final output the result.
    Machine(Arc<Engine>, PathBuf),
    /// Submitted executions (the run queue): the payload names one
    /// (`{"execution": id}`); the result is how its run ended.
    Executions(Arc<Engine>),
}

impl Processor {
    /// The processor a pool's jobs run through, named as on the command
    /// line: a machine config (`.yml`/`.yaml`, loaded and checked now) or a
    /// processor plugin (a name in `plugins_dir`, or a `.wasm` path).
    pub fn named(
        spec: &str,
        engine: Arc<Engine>,
        runtime: &crate::plugin::Runtime,
        plugins_dir: &std::path::Path,
    ) -> Result<Processor, crate::engine::EngineError> {
        if spec.ends_with(".yml") || spec.ends_with(".yaml") {
            let file = PathBuf::from(spec);
            engine.load(&file)?;
            return Ok(Processor::Machine(engine, file));
        }
        runtime
            .load_named(spec, plugins_dir, crate::plugin::World::Processor, |_| {})
            .map(Processor::Plugin)
            .map_err(|error| crate::engine::EngineError::Plugin {
                context: format!("processor `{spec}`"),
                error,
            })
    }
}

#[derive(Clone)]
pub struct WorkerConfig {
    pub pool: String,
    pub concurrency: u32,
    /// How long a claim lasts without a heartbeat extending it.
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Longest pause between claims when the pool had nothing claimable
    /// (idle polling starts at 1 ms and doubles up to this). An idle poll is
    /// a read, not a write.
    pub poll: Duration,
    /// Stop when the pool has no pending or claimed jobs left.
    pub exit_when_empty: bool,
    pub backoff: Backoff,
    /// Retry every failure, also kinds that would fail again
    /// (`invalid_input`, `fatal`, ...); by default only transient kinds are.
    pub retry_all: bool,
    /// Counted as the worker goes (shared by whoever watches it: the
    /// daemon's metrics).
    pub counters: Arc<WorkerCounters>,
    /// Notified by whoever adds work in this process (the daemon's API): an
    /// idle worker claims at once instead of at its next poll.
    pub wake: Option<Arc<tokio::sync::Notify>>,
}

/// What workers did so far, counted as it happens.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Jobs whose outcome was not written because their lease was lost
    /// (another worker claimed the job).
    pub leases_lost: AtomicU64,
    /// Why the store refuses claims (a full disk, a lock held elsewhere),
    /// while it does; `None` once a claim goes through again.
    pub refused: Mutex<Option<String>>,
}

impl WorkerCounters {
    /// Why the store refuses claims now, if it does.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}

impl WorkerConfig {
    pub fn new(pool: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            pool: pool.into(),
            concurrency: 1,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_millis(2),
            exit_when_empty: false,
            backoff: Backoff::default(),
            retry_all: false,
            counters: Arc::default(),
            wake: None,
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorkerReport {
    pub id: String,
    pub completed: u64,
    pub failed: u64,
    /// Completions refused because a newer claim owned the job.
    pub rejected: u64,
    pub released: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Store(#[from] BackendError),
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs a worker until `shutdown` turns true (or the pool is empty, with
/// `exit_when_empty`).
pub async fn run(
    backend: Arc<dyn Backend>,
    processor: Processor,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerReport, WorkerError> {
    let id = format!("worker-{}", uuid::Uuid::now_v7());
    let now = backend.clock().now_ms();
    backend
        .register(WorkerInfo {
            id: id.clone(),
            pool: config.pool.clone(),
            pid: std::process::id(),
            host: host_name(),
            status: WorkerStatus::Active,
            started_ms: now,
            heartbeat_ms: now,
        })
        .await?;
    tracing::info!(worker = %id, pool = %config.pool, "worker registered");

    // Jobs held now: id → fence. The heartbeat extends their leases.
    let held: Arc<Mutex<HashMap<i64, u64>>> = Arc::default();
    let beat = {
        let (backend, id, held, config) =
            (backend.clone(), id.clone(), held.clone(), config.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.heartbeat);
            loop {
                tick.tick().await;
                if let Err(e) = backend.heartbeat(&id).await {
                    tracing::warn!(worker = %id, "heartbeat failed: {e}");
                }
                let jobs: Vec<(i64, u64)> = held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .collect();
                for (job, fence) in jobs {
                    match backend
                        .extend_lease(job, fence, config.lease.as_millis() as u64)
                        .await
                    {
                        Ok(true) => {}
                        // Another worker claimed it (this one was paused past
                        // the lease): stop extending, and its outcome is not written.
                        // (Or the job ended by this worker's own hand since
                        // the list was read: its fence is still this claim's.)
                        Ok(false) => {
                            let ended_here =
                                matches!(backend.job(job).await, Ok(Some(j)) if j.fence == fence);
                            if !ended_here {
                                tracing::warn!(worker = %id, job, "lost the lease on the job: another worker claimed it; this worker's outcome will not be written");
                                held.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
                            }
                        }
                        Err(e) => tracing::warn!(worker = %id, job, "cannot extend the lease: {e}"),
                    }
                }
            }
        })
    };

    let mut report = WorkerReport {
        id: id.clone(),
        ..Default::default()
    };
    let mut running = tokio::task::JoinSet::new();
    // Idle polling backs off from 1 ms to `config.poll`, and starts again at
    // 1 ms after a claim found work.
    let mut idle = Duration::from_millis(1);
    let mut hint = backend.work_hint();
    let poll = match hint {
        Some(_) => config.poll.max(HINTED_POLL),
        None => config.poll,
    };
    // A store that refuses claims (a full disk, a lock held elsewhere, a
    // read-only file): the pause before the next try, doubling; said once
    // when it starts and once when it ends, not at every try.
    let mut refused: Option<Duration> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let free = config.concurrency.saturating_sub(running.len() as u32);
        // Claim in batches: when idle, or once half the slots are free (one
        // claim per finished job would cost a transaction per job).
        let claim_now = running.is_empty() || free >= config.concurrency.div_ceil(2);
        let claimed = if free > 0 && claim_now {
            match backend
                .claim(&config.pool, &id, free, config.lease.as_millis() as u64)
                .await
            {
                Ok(jobs) => {
                    if refused.take().is_some() {
                        tracing::warn!(worker = %id, "the store takes claims again: claiming");
                        config.counters.set_refused(None);
                    }
                    jobs
                }
                Err(e) => {
                    // Not fatal: the worker stops claiming until the store
                    // takes writes again (space freed, the lock let go).
                    refused = Some(match refused {
                        None => {
                            tracing::warn!(worker = %id, "cannot claim: {e}; not claiming until the store takes writes again (trying every {}s at most)", CLAIM_RETRY_MAX.as_secs());
                            config.counters.set_refused(Some(e.to_string()));
                            CLAIM_RETRY_MIN
                        }
                        Some(pause) => (pause * 2).min(CLAIM_RETRY_MAX),
                    });
                    vec![]
                }
            }
        } else {
            vec![]
        };
        let got = !claimed.is_empty();
        idle = match refused {
            _ if got => Duration::from_millis(1),
            Some(pause) => pause,
            None => (idle * 2).min(poll),
        };
        for job in claimed {
            crate::crash::point("worker.claimed");
            held.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.id, job.fence);
            let (backend, processor, config, held) = (
                backend.clone(),
                processor.clone(),
                config.clone(),
                held.clone(),
            );
            running.spawn(async move {
                let outcome = process(&backend, &processor, &config, &job, &held).await;
                held.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&job.id);
                outcome
            });
        }
        if got && running.len() < config.concurrency as usize {
            continue;
        }
        if !got
            && running.is_empty()
            && config.exit_when_empty
            && backend
                .backlog(&config.pool)
                .await
                .is_ok_and(|b| b.pending + b.claimed == 0)
        {
            break;
        }
        // Wait for a job to finish, the poll interval, new work, or shutdown.
        let woken = async {
            match &config.wake {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        let hinted = async {
            let changed = match hint.as_mut() {
                Some(h) => h.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => tally(&mut report, &config.counters, done),
            _ = tokio::time::sleep(idle), if !got => {}
            _ = woken, if !got && free > 0 => idle = Duration::from_millis(1),
            _ = hinted, if !got && free > 0 => idle = Duration::from_millis(1),
            _ = shutdown.changed() => {}
        }
    }
    // Finish what is held, then release anything left and deregister.
    while let Some(done) = running.join_next().await {
        tally(&mut report, &config.counters, done);
    }
    beat.abort();
    report.released = backend.release_worker(&id).await?;
    backend
        .set_worker_status(&id, WorkerStatus::Stopped)
        .await?;
    tracing::info!(worker = %id, completed = report.completed, failed = report.failed, "worker stopped");
    Ok(report)
}

enum JobOutcome {
    Completed,
    Failed,
    Rejected,
}

fn tally(
    report: &mut WorkerReport,
    counters: &WorkerCounters,
    done: Result<Result<JobOutcome, BackendError>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(JobOutcome::Completed)) => {
            report.completed += 1;
            counters.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(JobOutcome::Failed)) => {
            report.failed += 1;
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(JobOutcome::Rejected)) => {
            report.rejected += 1;
            counters.leases_lost.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => tracing::error!("job bookkeeping failed: {e}"),
        Err(e) => tracing::error!("job task stopped: {e}"),
    }
}

async fn process(
    backend: &Arc<dyn Backend>,
    processor: &Processor,
    config: &WorkerConfig,
    job: &Job,
    held: &Mutex<HashMap<i64, u64>>,
) -> Result<JobOutcome, BackendError> {
    // A failure is its kind (to decide on a retry) and its message.
    let result: Result<Value, (FailureKind, String)> = match processor {
        Processor::Plugin(plugin) => {
            let meta = CallMeta {
                execution_id: format!("job-{}", job.id),
                machine: String::new(),
                state: config.pool.clone(),
                step: 1,
                attempt: job.attempts,
                idempotency_key: format!("job-{}/{}", job.id, job.attempts),
                deadline_ms: backend.clock().now_ms() + plugin.limits().timeout.as_millis() as u64,
            };
            plugin
                .process(&meta, &job.payload, &CallContext::default())
                .await
                .map_err(|e| {
                    let (kind, message) = (FailureKind::from(e.kind()), e.to_string());
                    if message.starts_with(kind.as_str()) {
                        (kind, message)
                    } else {
                        let text = format!("{kind}: {message}");
                        (kind, text)
                    }
                })
        }
        Processor::Machine(engine, file) => match engine.start(file, job.payload.clone()).await {
            Ok(o) if o.status == Status::Done => Ok(o.output.unwrap_or(Value::Null)),
            Ok(o) => Err(match o.error {
                Some(f) => {
                    let text = format!("{}: state `{}`: {}", f.kind, f.state, f.message);
                    (f.kind, text)
                }
                None => (
                    FailureKind::Fatal,
                    format!("the machine ended {}", o.status.as_str()),
                ),
            }),
            // A store hiccup may pass; a machine that cannot load will not.
            Err(e @ crate::engine::EngineError::Store(_)) => {
                Err((FailureKind::Retryable, e.to_string()))
            }
            Err(e) => Err((FailureKind::Fatal, e.to_string())),
        },
        Processor::Executions(engine) => run_submitted(engine, &job.payload).await,
    };
    // A lease the heartbeat found lost: another worker owns the job now.
    // (Taken out of the held set now: the outcome is written next, and a
    // heartbeat extending a job that is done would report a lost lease.)
    let still_held = held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&job.id)
        == Some(job.fence);
    if !still_held {
        tracing::warn!(
            job = job.id,
            "outcome not written: the lease was lost to another worker"
        );
        return Ok(JobOutcome::Rejected);
    }
    // The outcome is written with retries: a few for most store errors, and
    // for a store that refuses writes for now (a full disk, a lock held
    // elsewhere) as long as the claim lasts — the work is done, and writing
    // its outcome later is better than running it again. If it still cannot
    // be written, the lease runs out and the job runs again elsewhere.
    let mut pause = Duration::from_millis(10);
    let mut tries = 0;
    let give_up = tokio::time::Instant::now() + config.lease;
    crate::crash::point("worker.complete.before");
    loop {
        let written = match &result {
            Ok(output) => backend
                .complete(job.id, job.fence, output.clone())
                .await
                .map(|ok| {
                    if ok {
                        JobOutcome::Completed
                    } else {
                        tracing::warn!(
                            job = job.id,
                            "completion rejected: a newer claim owns the job"
                        );
                        JobOutcome::Rejected
                    }
                }),
            Err((kind, error)) => backend
                .fail(
                    job.id,
                    job.fence,
                    error,
                    (config.retry_all || kind.is_retried()).then_some(config.backoff),
                )
                .await
                .map(|outcome| match outcome {
                    FailOutcome::Rejected => JobOutcome::Rejected,
                    _ => JobOutcome::Failed,
                }),
        };
        tries += 1;
        match written {
            Err(e)
                if tries < 5
                    || (matches!(e.kind, StoreErrorKind::Full | StoreErrorKind::Busy)
                        && tokio::time::Instant::now() + pause < give_up) =>
            {
                if tries < 5 {
                    tracing::warn!(job = job.id, "cannot record the outcome, retrying: {e}");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 4).min(CLAIM_RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// Runs the execution a run-queue job names. Its own end (done, failed,
/// cancelled, parked on a signal) is the job's result: the execution's
/// failure is in the execution, not a reason to run the job again. Only
/// what may pass (a busy store, another process still holding the tree) is
/// retried.
async fn run_submitted(
    engine: &Arc<Engine>,
    payload: &Value,
) -> Result<Value, (FailureKind, String)> {
    use crate::engine::EngineError;
    let Some(id) = payload.get("execution").and_then(Value::as_str) else {
        return Err((
            FailureKind::InvalidInput,
            format!("a run-queue job names an execution: {{\"execution\": id}}, not {payload}"),
        ));
    };
    match engine.run_queued(id).await {
        Ok(o) => Ok(serde_json::json!({
            "execution": o.id,
            "status": o.status,
            "waiting_for": o.waiting.map(|w| w.channel),
        })),
        Err(
            e @ (EngineError::Store(_) | EngineError::Owned(_) | EngineError::Interrupted { .. }),
        ) => Err((FailureKind::Retryable, e.to_string())),
        Err(e) => Err((FailureKind::Fatal, e.to_string())),
    }
}
