//! Job pools and the worker registry: the types and traits every store
//! implements (memory, SQLite, PostgreSQL).
//!
//! A job is claimed with a lease and a fencing token: claiming increments
//! `fence`, and `complete`/`fail`/`extend_lease` only apply with the token of
//! the current claim, so a worker whose lease ran out (and whose job was
//! claimed again) cannot overwrite the newer outcome.

use super::BackendResult;
use super::status::{JobStatus, WorkerStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job to push.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub payload: Value,
    /// Higher runs first.
    pub priority: i64,
    /// Not claimable before this many milliseconds from now.
    pub delay_ms: u64,
    /// Failures retried before the job is poisoned.
    pub max_retries: u32,
    /// A second push with the same key (in the same pool) returns the first job.
    pub idempotency_key: Option<String>,
}

impl NewJob {
    pub fn new(payload: Value) -> NewJob {
        NewJob {
            payload,
            priority: 0,
            delay_ms: 0,
            max_retries: 3,
            idempotency_key: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    pub pool: String,
    pub payload: Value,
    pub status: JobStatus,
    pub priority: i64,
    pub run_at_ms: u64,
    /// Claims so far (the current one included).
    pub attempts: u32,
    pub max_retries: u32,
    pub idempotency_key: Option<String>,
    pub worker: Option<String>,
    pub lease_until_ms: Option<u64>,
    /// The fencing token of the latest claim.
    pub fence: u64,
    pub result: Option<Value>,
    /// The last failure, kept when the job is retried or poisoned.
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// A pool's work not yet done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    pub pending: u64,
    pub claimed: u64,
    /// Pending jobs due now (not delayed into the future).
    pub due: u64,
    /// When the oldest due job became due (ms since the epoch, store clock).
    pub oldest_due_ms: Option<u64>,
}

/// Counts by status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolStats {
    pub pending: u64,
    pub claimed: u64,
    pub done: u64,
    pub poisoned: u64,
    /// Pending jobs that are due now (not delayed into the future).
    #[serde(default)]
    pub due: u64,
    /// When the oldest due job became due (ms since the epoch, store clock).
    #[serde(default)]
    pub oldest_due_ms: Option<u64>,
}

impl From<Backlog> for PoolStats {
    /// The counts of work not done; done and poisoned are added by the store.
    fn from(b: Backlog) -> PoolStats {
        PoolStats {
            pending: b.pending,
            claimed: b.claimed,
            due: b.due,
            oldest_due_ms: b.oldest_due_ms,
            ..PoolStats::default()
        }
    }
}

impl PoolStats {
    /// Jobs waiting for a worker or being worked on.
    pub fn depth(&self) -> u64 {
        self.pending + self.claimed
    }
}

/// Exponential backoff with full jitter for failed jobs:
/// `random(0, min(max, base · 2^(attempts−1)))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 1000,
            max_ms: 60_000,
        }
    }
}

impl Backoff {
    pub fn delay_ms(&self, attempts: u32) -> u64 {
        let exp = attempts.saturating_sub(1).min(32);
        let cap = self.base_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        if cap == 0 { 0 } else { fastrand::u64(0..=cap) }
    }
}

/// What `fail` did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailOutcome {
    /// Pending again, claimable after its backoff.
    Retried,
    /// Out of retries; kept with its last error.
    Poisoned,
    /// The fencing token is stale: a newer claim owns the job.
    Rejected,
}

#[async_trait::async_trait]
pub trait WorkPools: Send + Sync {
    /// Adds a job; returns its id and whether it was created (false: an
    /// existing job had the same idempotency key).
    async fn push(&self, pool: &str, job: NewJob) -> BackendResult<(i64, bool)>;
    /// Adds jobs in one write (each skipped if its idempotency key exists);
    /// returns how many were created.
    async fn push_many(&self, pool: &str, jobs: Vec<NewJob>) -> BackendResult<u64> {
        let mut created = 0;
        for job in jobs {
            created += u64::from(self.push(pool, job).await?.1);
        }
        Ok(created)
    }
    /// Claims up to `n` claimable jobs (pending and due, or claimed with an
    /// expired lease: one whose end is now or past, as with execution
    /// leases), highest priority first, in one atomic step.
    async fn claim(
        &self,
        pool: &str,
        worker: &str,
        n: u32,
        lease_ms: u64,
    ) -> BackendResult<Vec<Job>>;
    /// Extends the lease of the current claim; false if the fence is stale.
    async fn extend_lease(&self, id: i64, fence: u64, lease_ms: u64) -> BackendResult<bool>;
    /// Marks the job done and keeps its result; false if the fence is stale.
    async fn complete(&self, id: i64, fence: u64, result: Value) -> BackendResult<bool>;
    /// Retries the job after a backoff, or poisons it after `max_retries`;
    /// with no backoff (a failure not worth retrying) poisons it at once.
    async fn fail(
        &self,
        id: i64,
        fence: u64,
        error: &str,
        retry: Option<Backoff>,
    ) -> BackendResult<FailOutcome>;
    /// Makes every job the worker holds claimable again; returns how many.
    async fn release_worker(&self, worker: &str) -> BackendResult<u64>;
    /// Poisoned jobs (all, or these ids) back to pending with fresh retries.
    async fn requeue(&self, pool: &str, ids: &[i64]) -> BackendResult<u64>;
    /// Deletes up to `limit` of the pool's done jobs that finished before
    /// `done_before_ms` (poisoned jobs stay: they wait for someone); returns
    /// how many. Keeps the jobs table — what claims and counts read — small.
    /// Their idempotency keys go with them: prune only what nobody pushes again.
    async fn prune(&self, pool: &str, done_before_ms: u64, limit: u32) -> BackendResult<u64>;
    async fn stats(&self, pool: &str) -> BackendResult<PoolStats>;
    /// The work waiting and in hand, without counting finished jobs (cheap
    /// however many a pool has done: what scaling and metrics read often).
    async fn backlog(&self, pool: &str) -> BackendResult<Backlog>;
    async fn job(&self, id: i64) -> BackendResult<Option<Job>>;
    /// Jobs of a pool, oldest first.
    async fn jobs(
        &self,
        pool: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> BackendResult<Vec<Job>>;
    /// A hint that jobs were added (by any process sharing the store): its
    /// value changes when they were. Idle workers wait on it between
    /// polls, so they can poll seldom. `None`: the store gives no hint
    /// (polling is cheap there: SQLite reads a local file).
    fn work_hint(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub pool: String,
    pub pid: u32,
    pub host: String,
    pub status: WorkerStatus,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
}

#[async_trait::async_trait]
pub trait Workers: Send + Sync {
    async fn register(&self, worker: WorkerInfo) -> BackendResult<()>;
    /// Records a heartbeat now; false if the worker is unknown or not active.
    async fn heartbeat(&self, id: &str) -> BackendResult<bool>;
    async fn set_worker_status(&self, id: &str, status: WorkerStatus) -> BackendResult<()>;
    async fn workers(&self, pool: Option<&str>) -> BackendResult<Vec<WorkerInfo>>;
    /// Active workers whose last heartbeat is older than `stale_after_ms`
    /// become `lost`, and their jobs claimable again. Returns their ids.
    async fn reap(&self, stale_after_ms: u64) -> BackendResult<Vec<String>>;
}
