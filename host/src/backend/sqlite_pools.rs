//! Job pools and workers in SQLite. Every change is one statement (or a few)
//! in the writer's transaction; a claim is a single guarded
//! `UPDATE … WHERE status = 'pending' … RETURNING`, so two processes can never
//! claim the same job.

use super::pools::{
    Backlog, Backoff, FailOutcome, Job, NewJob, PoolStats, WorkPools, WorkerInfo, Workers,
};
use super::sqlite::{Op, SqliteBackend};
use super::status::{JobStatus, WorkerStatus};
use super::{BackendError, BackendResult, StoreErrorKind};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

const JOB_COLUMNS: &str = "id, pool, payload, status, priority, run_at_ms, attempts, max_retries, \
     idempotency_key, worker, lease_until_ms, fence, result, error, created_ms, updated_ms";

fn parse(text: Option<String>, what: &str) -> rusqlite::Result<Option<Value>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("{what}: {e}").into(),
            )
        })
    })
    .transpose()
}

fn row_job(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        pool: r.get(1)?,
        payload: parse(Some(r.get(2)?), "payload")?.unwrap_or(Value::Null),
        status: r.get(3)?,
        priority: r.get(4)?,
        run_at_ms: r.get::<_, i64>(5)? as u64,
        attempts: r.get::<_, i64>(6)? as u32,
        max_retries: r.get::<_, i64>(7)? as u32,
        idempotency_key: r.get(8)?,
        worker: r.get(9)?,
        lease_until_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        fence: r.get::<_, i64>(11)? as u64,
        result: parse(r.get(12)?, "result")?,
        error: r.get(13)?,
        created_ms: r.get::<_, i64>(14)? as u64,
        updated_ms: r.get::<_, i64>(15)? as u64,
    })
}

fn row_worker(r: &Row<'_>) -> rusqlite::Result<WorkerInfo> {
    Ok(WorkerInfo {
        id: r.get(0)?,
        pool: r.get(1)?,
        pid: r.get::<_, i64>(2)? as u32,
        host: r.get(3)?,
        status: r.get(4)?,
        started_ms: r.get::<_, i64>(5)? as u64,
        heartbeat_ms: r.get::<_, i64>(6)? as u64,
    })
}

/// A failure inside a job or worker write, as a store error of its kind.
pub(super) trait Fault {
    fn fault(self) -> BackendError;
}

impl Fault for rusqlite::Error {
    fn fault(self) -> BackendError {
        super::sqlite::sql_error(self)
    }
}

impl Fault for serde_json::Error {
    fn fault(self) -> BackendError {
        BackendError::of(StoreErrorKind::Corrupt, format!("stored JSON: {self}"))
    }
}

pub(super) fn fault(e: impl Fault) -> BackendError {
    e.fault()
}

impl SqliteBackend {
    /// Runs `f` in the writer's transaction and converts its JSON result.
    pub(super) async fn exec<T: serde::de::DeserializeOwned>(
        &self,
        f: impl FnOnce(&Connection) -> BackendResult<Value> + Send + 'static,
    ) -> BackendResult<T> {
        let value = self
            .write(Op::Custom(Box::new(f)))
            .await?
            .unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| BackendError::new(format!("internal: {e}")))
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> BackendResult<T> {
        f(&self.reader()).map_err(|e| fault(e).at(self.path().display()))
    }
}

/// Adds a job in the caller's transaction (unless one with its idempotency
/// key exists): its id and whether it was created.
pub(super) fn insert_job(
    c: &Connection,
    now_ms: u64,
    pool: &str,
    job: &NewJob,
) -> rusqlite::Result<(i64, bool)> {
    if let Some(key) = &job.idempotency_key {
        let existing: Option<i64> = c
            .prepare_cached("SELECT id FROM jobs WHERE pool = ?1 AND idempotency_key = ?2")?
            .query_row(params![pool, key], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok((id, false));
        }
    }
    let now = now_ms as i64;
    c.prepare_cached(
        "INSERT INTO jobs (pool, payload, status, priority, run_at_ms, max_retries, idempotency_key, created_ms, updated_ms)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![
        pool,
        job.payload.to_string(),
        job.priority,
        now + job.delay_ms as i64,
        job.max_retries,
        job.idempotency_key,
        now
    ])?;
    Ok((c.last_insert_rowid(), true))
}

/// Job statuses after a claim whose lease ran out.
fn release_sql(filter: &str) -> String {
    format!(
        "UPDATE jobs SET status = 'pending', worker = NULL, lease_until_ms = NULL, updated_ms = ?1 WHERE status = 'claimed' AND {filter}"
    )
}

#[async_trait::async_trait]
impl WorkPools for SqliteBackend {
    async fn push(&self, pool: &str, job: NewJob) -> BackendResult<(i64, bool)> {
        let now = self.clock.now_ms();
        let pool = pool.to_string();
        self.exec(move |c| {
            let (id, created) = insert_job(c, now, &pool, &job).map_err(fault)?;
            Ok(json!([id, created]))
        })
        .await
    }

    async fn push_many(&self, pool: &str, jobs: Vec<NewJob>) -> BackendResult<u64> {
        let now = self.clock.now_ms();
        let pool = pool.to_string();
        self.exec(move |c| {
            let mut created = 0u64;
            for job in &jobs {
                created += u64::from(insert_job(c, now, &pool, job).map_err(fault)?.1);
            }
            Ok(json!(created))
        })
        .await
    }

    async fn claim(
        &self,
        pool: &str,
        worker: &str,
        n: u32,
        lease_ms: u64,
    ) -> BackendResult<Vec<Job>> {
        let clock = self.clock.clone();
        // An idle pool is seen by the reader (no write lock, no transaction
        // for the writer), so idle workers can poll often; `jobs_due` makes
        // it a seek however many jobs wait on a backoff (a retry storm).
        let now = clock.now_ms() as i64;
        let any = self.read(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE pool = ?1 AND status = 'pending' AND run_at_ms <= ?2)
                     OR EXISTS (SELECT 1 FROM jobs WHERE pool = ?1 AND status = 'claimed' AND lease_until_ms <= ?2)",
            )?
            .query_row(params![pool, now], |r| r.get::<_, bool>(0))
        })?;
        if !any {
            return Ok(vec![]);
        }
        let (pool, worker) = (pool.to_string(), worker.to_string());
        self.exec(move |c| {
            let now = clock.now_ms() as i64;
            let sql = format!(
                "UPDATE jobs SET status = 'claimed', worker = ?1, lease_until_ms = ?2 + ?3,
                    attempts = attempts + 1, fence = fence + 1, updated_ms = ?2
                 WHERE id IN (
                    SELECT id FROM (
                        SELECT id, priority, run_at_ms FROM (
                            SELECT id, priority, run_at_ms FROM jobs
                            WHERE pool = ?4 AND status = 'pending' AND run_at_ms <= ?2
                            ORDER BY priority DESC, run_at_ms, id LIMIT ?5)
                        UNION ALL
                        SELECT id, priority, run_at_ms FROM (
                            SELECT id, priority, run_at_ms FROM jobs
                            WHERE pool = ?4 AND status = 'claimed' AND lease_until_ms <= ?2
                            ORDER BY priority DESC, run_at_ms, id LIMIT ?5))
                    ORDER BY priority DESC, run_at_ms, id LIMIT ?5)
                 RETURNING {JOB_COLUMNS}"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(fault)?;
            let rows = stmt
                .query_map(params![worker, now, lease_ms as i64, pool, n], row_job)
                .map_err(fault)?;
            let mut jobs: Vec<Job> = rows.collect::<Result<_, _>>().map_err(fault)?;
            jobs.sort_by_key(|j| (-j.priority, j.run_at_ms, j.id));
            serde_json::to_value(jobs).map_err(fault)
        })
        .await
    }

    async fn extend_lease(&self, id: i64, fence: u64, lease_ms: u64) -> BackendResult<bool> {
        let clock = self.clock.clone();
        self.exec(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET lease_until_ms = ?1 WHERE id = ?2 AND fence = ?3 AND status = 'claimed'",
                    params![(clock.now_ms() + lease_ms) as i64, id, fence as i64],
                )
                .map_err(fault)?;
            Ok(json!(n == 1))
        })
        .await
    }

    async fn complete(&self, id: i64, fence: u64, result: Value) -> BackendResult<bool> {
        let clock = self.clock.clone();
        self.exec(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE jobs SET status = 'done', result = ?1, lease_until_ms = NULL, updated_ms = ?2
                     WHERE id = ?3 AND fence = ?4 AND status = 'claimed'",
                )
                .and_then(|mut s| s.execute(params![result.to_string(), clock.now_ms() as i64, id, fence as i64]))
                .map_err(fault)?;
            Ok(json!(n == 1))
        })
        .await
    }

    async fn fail(
        &self,
        id: i64,
        fence: u64,
        error: &str,
        retry: Option<Backoff>,
    ) -> BackendResult<FailOutcome> {
        let clock = self.clock.clone();
        let error = error.to_string();
        self.exec(move |c| {
            let row: Option<(i64, i64)> = c
                .query_row(
                    "SELECT attempts, max_retries FROM jobs WHERE id = ?1 AND fence = ?2 AND status = 'claimed'",
                    params![id, fence as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(fault)?;
            let Some((attempts, max_retries)) = row else {
                return serde_json::to_value(FailOutcome::Rejected).map_err(fault);
            };
            let now = clock.now_ms() as i64;
            let outcome = if let Some(backoff) = retry.filter(|_| attempts <= max_retries) {
                let run_at = now + backoff.delay_ms(attempts as u32) as i64;
                c.execute(
                    "UPDATE jobs SET status = 'pending', error = ?1, worker = NULL, lease_until_ms = NULL,
                        run_at_ms = ?2, updated_ms = ?3 WHERE id = ?4",
                    params![error, run_at, now, id],
                )
                .map_err(fault)?;
                FailOutcome::Retried
            } else {
                c.execute(
                    "UPDATE jobs SET status = 'poisoned', error = ?1, lease_until_ms = NULL, updated_ms = ?2 WHERE id = ?3",
                    params![error, now, id],
                )
                .map_err(fault)?;
                FailOutcome::Poisoned
            };
            serde_json::to_value(outcome).map_err(fault)
        })
        .await
    }

    async fn release_worker(&self, worker: &str) -> BackendResult<u64> {
        let clock = self.clock.clone();
        let worker = worker.to_string();
        self.exec(move |c| {
            let n = c
                .execute(
                    &release_sql("worker = ?2"),
                    params![clock.now_ms() as i64, worker],
                )
                .map_err(fault)?;
            Ok(json!(n))
        })
        .await
    }

    async fn requeue(&self, pool: &str, ids: &[i64]) -> BackendResult<u64> {
        let clock = self.clock.clone();
        let pool = pool.to_string();
        let ids = ids.to_vec();
        self.exec(move |c| {
            let now = clock.now_ms() as i64;
            let sql = "UPDATE jobs SET status = 'pending', attempts = 0, worker = NULL, lease_until_ms = NULL,
                         run_at_ms = ?1, updated_ms = ?1 WHERE pool = ?2 AND status = 'poisoned'";
            let n = if ids.is_empty() {
                c.execute(sql, params![now, pool]).map_err(fault)?
            } else {
                let mut n = 0;
                for id in &ids {
                    n += c
                        .execute(&format!("{sql} AND id = ?3"), params![now, pool, id])
                        .map_err(fault)?;
                }
                n
            };
            Ok(json!(n))
        })
        .await
    }

    async fn prune(&self, pool: &str, done_before_ms: u64, limit: u32) -> BackendResult<u64> {
        let pool = pool.to_string();
        self.exec(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM jobs WHERE id IN (
                        SELECT id FROM jobs WHERE pool = ?1 AND status = 'done' AND updated_ms < ?2
                        ORDER BY id LIMIT ?3)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        pool,
                        done_before_ms.min(i64::MAX as u64) as i64,
                        limit
                    ])
                })
                .map_err(fault)?;
            Ok(json!(n))
        })
        .await
    }

    async fn stats(&self, pool: &str) -> BackendResult<PoolStats> {
        let backlog = self.backlog(pool).await?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT status, COUNT(*) FROM jobs
                 WHERE pool = ?1 AND status IN ('done', 'poisoned') GROUP BY status",
            )?;
            let mut s = PoolStats::from(backlog);
            let rows = stmt.query_map(params![pool], |r| {
                Ok((r.get::<_, JobStatus>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            for row in rows {
                match row? {
                    (JobStatus::Done, n) => s.done = n,
                    (JobStatus::Poisoned, n) => s.poisoned = n,
                    _ => {}
                }
            }
            Ok(s)
        })
    }

    async fn backlog(&self, pool: &str) -> BackendResult<Backlog> {
        let now = self.clock.now_ms() as i64;
        self.read(|c| {
            // Both use the claim index's (pool, status) prefix: only the
            // pending and claimed rows are counted.
            let mut stmt = c.prepare_cached(
                "SELECT status, COUNT(*) FROM jobs
                 WHERE pool = ?1 AND status IN ('pending', 'claimed') GROUP BY status",
            )?;
            let mut b = Backlog::default();
            let rows = stmt.query_map(params![pool], |r| {
                Ok((r.get::<_, JobStatus>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            for row in rows {
                match row? {
                    (JobStatus::Pending, n) => b.pending = n,
                    (JobStatus::Claimed, n) => b.claimed = n,
                    _ => {}
                }
            }
            let (due, oldest): (i64, Option<i64>) = c
                .prepare_cached(
                    "SELECT COUNT(*), MIN(run_at_ms) FROM jobs
                     WHERE pool = ?1 AND status = 'pending' AND run_at_ms <= ?2",
                )?
                .query_row(params![pool, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            b.due = due as u64;
            b.oldest_due_ms = oldest.map(|ms| ms as u64);
            Ok(b)
        })
    }

    async fn job(&self, id: i64) -> BackendResult<Option<Job>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                row_job,
            )
            .optional()
        })
    }

    async fn jobs(
        &self,
        pool: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> BackendResult<Vec<Job>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE pool = ?1 AND (?2 IS NULL OR status = ?2) ORDER BY id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![pool, status, limit as i64], row_job)?;
            rows.collect()
        })
    }
}

#[async_trait::async_trait]
impl Workers for SqliteBackend {
    async fn register(&self, w: WorkerInfo) -> BackendResult<()> {
        self.exec::<Value>(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO workers (id, pool, pid, host, status, started_ms, heartbeat_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![w.id, w.pool, w.pid, w.host, w.status, w.started_ms as i64, w.heartbeat_ms as i64],
            )
            .map_err(fault)?;
            Ok(Value::Null)
        })
        .await
        .map(|_| ())
    }

    async fn heartbeat(&self, id: &str) -> BackendResult<bool> {
        let clock = self.clock.clone();
        let id = id.to_string();
        self.exec(move |c| {
            let n = c
                .execute(
                    "UPDATE workers SET heartbeat_ms = ?1 WHERE id = ?2 AND status = 'active'",
                    params![clock.now_ms() as i64, id],
                )
                .map_err(fault)?;
            Ok(json!(n == 1))
        })
        .await
    }

    async fn set_worker_status(&self, id: &str, status: WorkerStatus) -> BackendResult<()> {
        let id = id.to_string();
        self.exec::<Value>(move |c| {
            c.execute(
                "UPDATE workers SET status = ?1 WHERE id = ?2",
                params![status, id],
            )
            .map_err(fault)?;
            Ok(Value::Null)
        })
        .await
        .map(|_| ())
    }

    async fn workers(&self, pool: Option<&str>) -> BackendResult<Vec<WorkerInfo>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, pool, pid, host, status, started_ms, heartbeat_ms FROM workers
                 WHERE (?1 IS NULL OR pool = ?1) ORDER BY started_ms, id",
            )?;
            let rows = stmt.query_map(params![pool], row_worker)?;
            rows.collect()
        })
    }

    async fn reap(&self, stale_after_ms: u64) -> BackendResult<Vec<String>> {
        let clock = self.clock.clone();
        self.exec(move |c| {
            let now = clock.now_ms() as i64;
            let cutoff = now - stale_after_ms as i64;
            let mut stmt = c
                .prepare("UPDATE workers SET status = 'lost' WHERE status = 'active' AND heartbeat_ms < ?1 RETURNING id")
                .map_err(fault)?;
            let ids: Vec<String> = stmt
                .query_map(params![cutoff], |r| r.get(0))
                .map_err(fault)?
                .collect::<Result<_, _>>()
                .map_err(fault)?;
            for id in &ids {
                c.execute(&release_sql("worker = ?2"), params![now, id]).map_err(fault)?;
            }
            Ok(json!(ids))
        })
        .await
    }
}
