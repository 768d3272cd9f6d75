//! Job pools and workers in memory.

use super::BackendResult;
use super::memory::{Data, MemoryBackend};
use super::pools::{
    Backlog, Backoff, FailOutcome, Job, NewJob, PoolStats, WorkPools, WorkerInfo, Workers,
};
use super::status::{JobStatus, WorkerStatus};
use serde_json::Value;

fn claimable(j: &Job, pool: &str, now: u64) -> bool {
    j.pool == pool
        && ((j.status == JobStatus::Pending && j.run_at_ms <= now)
            || (j.status == JobStatus::Claimed && j.lease_until_ms.is_some_and(|l| l <= now)))
}

fn release(j: &mut Job, now: u64) {
    j.status = JobStatus::Pending;
    j.worker = None;
    j.lease_until_ms = None;
    j.updated_ms = now;
}

impl Data {
    /// Adds a job (unless one with its idempotency key exists): its id and
    /// whether it was created.
    pub(super) fn insert_job(&mut self, now: u64, pool: &str, job: NewJob) -> (i64, bool) {
        if let Some(key) = &job.idempotency_key
            && let Some(existing) = self
                .jobs
                .iter()
                .find(|j| j.pool == pool && j.idempotency_key.as_ref() == Some(key))
        {
            return (existing.id, false);
        }
        self.last_job += 1;
        let id = self.last_job;
        self.jobs.push(Job {
            id,
            pool: pool.into(),
            payload: job.payload,
            status: JobStatus::Pending,
            priority: job.priority,
            run_at_ms: now + job.delay_ms,
            attempts: 0,
            max_retries: job.max_retries,
            idempotency_key: job.idempotency_key,
            worker: None,
            lease_until_ms: None,
            fence: 0,
            result: None,
            error: None,
            created_ms: now,
            updated_ms: now,
        });
        (id, true)
    }
}

#[async_trait::async_trait]
impl WorkPools for MemoryBackend {
    async fn push(&self, pool: &str, job: NewJob) -> BackendResult<(i64, bool)> {
        let now = self.clock.now_ms();
        Ok(self.lock().insert_job(now, pool, job))
    }

    async fn claim(
        &self,
        pool: &str,
        worker: &str,
        n: u32,
        lease_ms: u64,
    ) -> BackendResult<Vec<Job>> {
        let mut d = self.lock();
        let now = self.clock.now_ms();
        let mut order: Vec<usize> = (0..d.jobs.len())
            .filter(|&i| claimable(&d.jobs[i], pool, now))
            .collect();
        order.sort_by_key(|&i| (-d.jobs[i].priority, d.jobs[i].run_at_ms, d.jobs[i].id));
        let mut claimed = Vec::new();
        for i in order.into_iter().take(n as usize) {
            let j = &mut d.jobs[i];
            j.status = JobStatus::Claimed;
            j.worker = Some(worker.into());
            j.lease_until_ms = Some(now + lease_ms);
            j.attempts += 1;
            j.fence += 1;
            j.updated_ms = now;
            claimed.push(j.clone());
        }
        Ok(claimed)
    }

    async fn extend_lease(&self, id: i64, fence: u64, lease_ms: u64) -> BackendResult<bool> {
        let mut d = self.lock();
        Ok(match d.current(id, fence) {
            Some(j) => {
                j.lease_until_ms = Some(self.clock.now_ms() + lease_ms);
                true
            }
            None => false,
        })
    }

    async fn complete(&self, id: i64, fence: u64, result: Value) -> BackendResult<bool> {
        let mut d = self.lock();
        Ok(match d.current(id, fence) {
            Some(j) => {
                j.status = JobStatus::Done;
                j.result = Some(result);
                j.lease_until_ms = None;
                j.updated_ms = self.clock.now_ms();
                true
            }
            None => false,
        })
    }

    async fn fail(
        &self,
        id: i64,
        fence: u64,
        error: &str,
        retry: Option<Backoff>,
    ) -> BackendResult<FailOutcome> {
        let mut d = self.lock();
        let Some(j) = d.current(id, fence) else {
            return Ok(FailOutcome::Rejected);
        };
        let now = self.clock.now_ms();
        j.error = Some(error.to_string());
        j.lease_until_ms = None;
        j.updated_ms = now;
        match retry.filter(|_| j.attempts <= j.max_retries) {
            Some(backoff) => {
                j.status = JobStatus::Pending;
                j.worker = None;
                j.run_at_ms = now + backoff.delay_ms(j.attempts);
                Ok(FailOutcome::Retried)
            }
            None => {
                j.status = JobStatus::Poisoned;
                Ok(FailOutcome::Poisoned)
            }
        }
    }

    async fn release_worker(&self, worker: &str) -> BackendResult<u64> {
        let mut d = self.lock();
        let now = self.clock.now_ms();
        let mut n = 0;
        for j in d
            .jobs
            .iter_mut()
            .filter(|j| j.status == JobStatus::Claimed && j.worker.as_deref() == Some(worker))
        {
            release(j, now);
            n += 1;
        }
        Ok(n)
    }

    async fn requeue(&self, pool: &str, ids: &[i64]) -> BackendResult<u64> {
        let mut d = self.lock();
        let now = self.clock.now_ms();
        let mut n = 0;
        for j in d.jobs.iter_mut().filter(|j| {
            j.pool == pool
                && j.status == JobStatus::Poisoned
                && (ids.is_empty() || ids.contains(&j.id))
        }) {
            release(j, now);
            j.attempts = 0;
            j.run_at_ms = now;
            n += 1;
        }
        Ok(n)
    }

    async fn prune(&self, pool: &str, done_before_ms: u64, limit: u32) -> BackendResult<u64> {
        let mut d = self.lock();
        let mut n = 0u64;
        d.jobs.retain(|j| {
            let gone = n < u64::from(limit)
                && j.pool == pool
                && j.status == JobStatus::Done
                && j.updated_ms < done_before_ms;
            n += u64::from(gone);
            !gone
        });
        Ok(n)
    }

    async fn stats(&self, pool: &str) -> BackendResult<PoolStats> {
        let b = self.backlog(pool).await?;
        let mut s = PoolStats::from(b);
        for j in self.lock().jobs.iter().filter(|j| j.pool == pool) {
            match j.status {
                JobStatus::Done => s.done += 1,
                JobStatus::Poisoned => s.poisoned += 1,
                _ => {}
            }
        }
        Ok(s)
    }

    async fn backlog(&self, pool: &str) -> BackendResult<Backlog> {
        let now = self.clock.now_ms();
        let mut b = Backlog::default();
        for j in self.lock().jobs.iter().filter(|j| j.pool == pool) {
            match j.status {
                JobStatus::Pending => {
                    b.pending += 1;
                    if j.run_at_ms <= now {
                        b.due += 1;
                        b.oldest_due_ms =
                            Some(b.oldest_due_ms.map_or(j.run_at_ms, |o| o.min(j.run_at_ms)));
                    }
                }
                JobStatus::Claimed => b.claimed += 1,
                _ => {}
            }
        }
        Ok(b)
    }

    async fn job(&self, id: i64) -> BackendResult<Option<Job>> {
        Ok(self.lock().jobs.iter().find(|j| j.id == id).cloned())
    }

    async fn jobs(
        &self,
        pool: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> BackendResult<Vec<Job>> {
        Ok(self
            .lock()
            .jobs
            .iter()
            .filter(|j| j.pool == pool && status.is_none_or(|s| j.status == s))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait::async_trait]
impl Workers for MemoryBackend {
    async fn register(&self, worker: WorkerInfo) -> BackendResult<()> {
        self.lock().workers.insert(worker.id.clone(), worker);
        Ok(())
    }

    async fn heartbeat(&self, id: &str) -> BackendResult<bool> {
        let mut d = self.lock();
        Ok(match d.workers.get_mut(id) {
            Some(w) if w.status == WorkerStatus::Active => {
                w.heartbeat_ms = self.clock.now_ms();
                true
            }
            _ => false,
        })
    }

    async fn set_worker_status(&self, id: &str, status: WorkerStatus) -> BackendResult<()> {
        if let Some(w) = self.lock().workers.get_mut(id) {
            w.status = status;
        }
        Ok(())
    }

    async fn workers(&self, pool: Option<&str>) -> BackendResult<Vec<WorkerInfo>> {
        let mut list: Vec<WorkerInfo> = self
            .lock()
            .workers
            .values()
            .filter(|w| pool.is_none_or(|p| w.pool == p))
            .cloned()
            .collect();
        list.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    async fn reap(&self, stale_after_ms: u64) -> BackendResult<Vec<String>> {
        let now = self.clock.now_ms();
        let lost: Vec<String> = {
            let mut d = self.lock();
            let ids: Vec<String> = d
                .workers
                .values()
                .filter(|w| {
                    w.status == WorkerStatus::Active
                        && now.saturating_sub(w.heartbeat_ms) > stale_after_ms
                })
                .map(|w| w.id.clone())
                .collect();
            for id in &ids {
                if let Some(w) = d.workers.get_mut(id) {
                    w.status = WorkerStatus::Lost;
                }
            }
            ids
        };
        for id in &lost {
            self.release_worker(id).await?;
        }
        Ok(lost)
    }
}
