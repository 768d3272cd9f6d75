//! The daemon's in-process workers: for each queue it serves (the run queue
//! of submitted executions, and the job pools it was given a processor
//! for), a set of worker loops ([`crate::worker::run`]) that grows with the
//! work waiting and shrinks when idle, or is held at a fixed size
//! (`POST /workers/scale`, the seed's `Scale(n)`). Each loop registers as a
//! worker in the store like a `flowhost worker` process, so both share the
//! work by the same claims.
//!
//! Imports `worker` and the `backend` traits.

use crate::backend::Backend;
use crate::worker::{Processor, WorkerConfig, WorkerError, WorkerReport};
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How one queue's workers are sized.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    pub min: u32,
    pub max: u32,
    /// Below what is wanted for this long, one worker stops (then the next
    /// after as long again).
    pub idle_timeout: Duration,
}

/// One running worker loop.
struct Slot {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<WorkerReport, WorkerError>>,
}

struct Scale {
    slots: Vec<Slot>,
    /// Workers told to stop by a scale-down, still finishing what they hold
    /// (a drain waits for them too).
    stopping: Vec<JoinHandle<Result<WorkerReport, WorkerError>>>,
    /// Set by `scale`: the size to hold, instead of following the queue.
    fixed: Option<u32>,
    /// Since when fewer workers were wanted than run.
    surplus_since: Option<Instant>,
    draining: bool,
}

/// What `GET /workers` shows of a queue's in-process workers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    pub queue: String,
    pub running: usize,
    /// The size held by `POST /workers/scale`; absent when it follows the queue.
    pub fixed: Option<u32>,
    pub min: u32,
    pub max: u32,
    /// Jobs each worker runs at once.
    pub concurrency: u32,
}

/// The worker loops of one queue.
pub struct ScaledPool {
    backend: Arc<dyn Backend>,
    processor: Processor,
    config: WorkerConfig,
    sizing: Sizing,
    scale: Mutex<Scale>,
}

impl ScaledPool {
    pub fn new(
        backend: Arc<dyn Backend>,
        processor: Processor,
        config: WorkerConfig,
        sizing: Sizing,
    ) -> Arc<ScaledPool> {
        Arc::new(ScaledPool {
            backend,
            processor,
            config,
            sizing,
            scale: Mutex::new(Scale {
                slots: Vec::new(),
                stopping: Vec::new(),
                fixed: None,
                surplus_since: None,
                draining: false,
            }),
        })
    }

    pub fn queue(&self) -> &str {
        &self.config.pool
    }

    fn lock(&self) -> MutexGuard<'_, Scale> {
        // Each change is a few field updates made together.
        self.scale.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> PoolView {
        let s = self.lock();
        PoolView {
            queue: self.config.pool.clone(),
            running: s.slots.len(),
            fixed: s.fixed,
            min: self.sizing.min,
            max: self.sizing.max,
            concurrency: self.config.concurrency,
        }
    }

    /// Holds the pool at `workers` (`None`: follow the queue again). More
    /// than `max` is refused.
    pub fn set_fixed(&self, workers: Option<u32>) -> Result<(), String> {
        if let Some(n) = workers
            && n > self.sizing.max
        {
            return Err(format!(
                "{n} workers for `{}` is more than --max-workers ({})",
                self.config.pool, self.sizing.max
            ));
        }
        let mut s = self.lock();
        s.fixed = workers;
        s.surplus_since = None;
        Ok(())
    }

    /// How many workers the work waiting wants: one per `concurrency` jobs
    /// due or running, within min and max.
    async fn wanted(&self) -> u32 {
        let work = match self.backend.backlog(&self.config.pool).await {
            Ok(s) => s.due + s.claimed,
            Err(e) => {
                tracing::warn!(queue = %self.config.pool, "cannot read the queue to scale: {e}");
                return self.lock().slots.len() as u32;
            }
        };
        let per = u64::from(self.config.concurrency.max(1));
        let n = work.div_ceil(per).min(u64::from(self.sizing.max)) as u32;
        n.clamp(self.sizing.min.min(self.sizing.max), self.sizing.max)
    }

    /// One scaling decision: start the workers wanted, stop the surplus
    /// (at once when the size is fixed, one per idle timeout otherwise).
    pub async fn tick(&self) {
        let fixed = self.lock().fixed;
        let wanted = match fixed {
            Some(n) => n,
            None => self.wanted().await,
        };
        let mut s = self.lock();
        if s.draining {
            return;
        }
        let (ended, live): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut s.slots)
            .into_iter()
            .partition(|slot| slot.task.is_finished());
        s.slots = live;
        s.stopping.retain(|t| !t.is_finished());
        for slot in ended {
            // A worker loop ends on its own only when the store failed it.
            tokio::spawn(async move {
                if let Ok(Err(e)) = slot.task.await {
                    tracing::error!("a worker stopped: {e}");
                }
            });
        }
        let running = s.slots.len() as u32;
        if running < wanted {
            s.surplus_since = None;
            for _ in running..wanted {
                let slot = self.start();
                s.slots.push(slot);
            }
            tracing::info!(queue = %self.config.pool, workers = wanted, "scaled up");
        } else if running > wanted {
            let now = Instant::now();
            let stop = match (fixed, s.surplus_since) {
                (Some(_), _) => (running - wanted) as usize,
                (None, Some(since)) if now.duration_since(since) >= self.sizing.idle_timeout => 1,
                (None, Some(_)) => 0,
                (None, None) => {
                    s.surplus_since = Some(now);
                    usize::from(self.sizing.idle_timeout.is_zero())
                }
            };
            if stop > 0 {
                s.surplus_since = Some(now);
                let keep = s.slots.len() - stop;
                let stopped: Vec<Slot> = s.slots.drain(keep..).collect();
                for slot in stopped {
                    // It finishes what it holds, then deregisters.
                    let _ = slot.stop.send(true);
                    s.stopping.push(slot.task);
                }
                tracing::info!(queue = %self.config.pool, workers = running as usize - stop, "scaled down");
            }
        } else {
            s.surplus_since = None;
        }
    }

    fn start(&self) -> Slot {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(crate::worker::run(
            self.backend.clone(),
            self.processor.clone(),
            self.config.clone(),
            stopped,
        ));
        Slot { stop, task }
    }

    /// Stops scaling and tells every worker to stop claiming (each
    /// finishes what it holds, then deregisters); returns them to wait for.
    pub fn stop_claiming(&self) -> Vec<Stopping> {
        let (slots, stopping) = {
            let mut s = self.lock();
            s.draining = true;
            (
                std::mem::take(&mut s.slots),
                std::mem::take(&mut s.stopping),
            )
        };
        for slot in &slots {
            let _ = slot.stop.send(true);
        }
        slots
            .into_iter()
            .map(|s| s.task)
            .chain(stopping)
            .map(Stopping)
            .collect()
    }
}

/// A worker told to stop.
pub struct Stopping(JoinHandle<Result<WorkerReport, WorkerError>>);

/// Waits until `deadline` for stopping workers; returns how many had not
/// stopped by then (their leases let other workers take over).
pub async fn wait_for(workers: Vec<Stopping>, deadline: Instant) -> usize {
    let mut left = 0;
    for Stopping(task) in workers {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(report))) => {
                tracing::info!(worker = %report.id, completed = report.completed, "worker stopped")
            }
            Ok(Ok(Err(e))) => tracing::error!("a worker stopped: {e}"),
            Ok(Err(e)) => tracing::error!("a worker task failed: {e}"),
            Err(_) => left += 1,
        }
    }
    left
}
