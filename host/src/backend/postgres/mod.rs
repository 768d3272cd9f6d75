//! The PostgreSQL backend: several hosts share one database and split the
//! work. Selected by a `postgres://` URL; SQLite stays the default.
//!
//! Writes go through one writer per process, as with SQLite: every write
//! queued while the previous commit ran is applied in one transaction (a
//! group commit: many completions, one WAL flush). The writer runs on its
//! own thread and runtime, so a store being dropped can wait for what was
//! queued. A lost connection is not the end of a host: the writer
//! reconnects (for up to [`RECONNECT_FOR`] before it fails a write that
//! waits; deferred writes are kept until the database is back), runs an
//! uncommitted batch again, and asks the server whether a batch whose
//! commit it never heard back from committed (`txid_status`), so nothing is
//! applied twice or lost. A deadlock with another host retries the batch.
//!
//! Reads go to a small connection pool. A commit that added jobs is
//! followed by a `NOTIFY flowhost_work`; a listener turns that into the
//! store's work hint, so idle workers wait on it instead of polling the
//! database often.
//!
//! Time: the store's clock is this machine's boot clock anchored to the
//! server's clock when the store is opened (every host reads the server's
//! timeline, off by the round trip and drift, far below a lease).
//!
//! `conn` reaches the server, `writer` commits, `ops` holds every write as
//! data with its SQL; this module is the store itself: opening it, its
//! reads, and the store traits.
//!
//! Imports the backend's types and traits; nothing else of flowhost.

mod conn;
mod ops;
mod writer;

pub use conn::is_postgres_url;

use super::clock::Clock;
use super::history::{History, HistoryEntry, NewEvent};
use super::owners::{Claim, Lease, Owner, Ownership};
use super::pools::{
    Backlog, Backoff, FailOutcome, Job, NewJob, PoolStats, WorkPools, WorkerInfo, Workers,
};
use super::state::{State, StateAnswer, StateConflict, StateOp};
use super::status::{ExecutionStatus, JobStatus, WorkerStatus};
use super::write_queue::{Reply, WriteQueue};
use super::{
    Backend, BackendError, BackendResult, Checkpoint, Checkpoints, Definitions, Fence, ListFilter,
    Results, Signal, Signals, StoreErrorKind, StoredResult,
};
use conn::{anchor, connect, describe, migrate, parse, pg_error};
use ops::{
    CHECKPOINT_COLUMNS, JOB_COLUMNS, Op, REFUSED, clamp, row_checkpoint, row_job, row_lease,
    row_result, row_worker, signal_data, state_value, status,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use writer::{Timed, writer_thread};

/// How long the writer keeps reconnecting before it fails a write, unless
/// [`PostgresBackend::open_with`] says otherwise.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// Read connections per process.
const POOL_SIZE: usize = 8;

/// A [`Backend`] in a PostgreSQL database.
pub struct PostgresBackend {
    /// The URL without its password, for messages.
    target: String,
    /// In front of the writer thread.
    queue: WriteQueue<Timed, Value>,
    pool: deadpool_postgres::Pool,
    clock: Arc<dyn Clock>,
    /// Bumped whenever some host added jobs.
    work: watch::Receiver<u64>,
}

impl PostgresBackend {
    /// Opens the database the URL names, creating flowhost's tables in it
    /// when they are not there (the database itself must exist).
    pub async fn open(url: &str) -> BackendResult<PostgresBackend> {
        Self::open_with(url, true, RECONNECT_FOR).await
    }

    /// Opens a database that holds flowhost's tables already (commands that
    /// only read or act on stored work): nothing is created.
    pub async fn open_existing(url: &str) -> BackendResult<PostgresBackend> {
        Self::open_with(url, false, RECONNECT_FOR).await
    }

    /// [`Self::open`] (`create`) or [`Self::open_existing`], with the time
    /// the writer keeps reconnecting to a lost database before it fails the
    /// writes that wait (deferred ones are kept until it is back).
    pub async fn open_with(
        url: &str,
        create: bool,
        reconnect_for: Duration,
    ) -> BackendResult<PostgresBackend> {
        let config = parse(url)?;
        let target = describe(&config);
        let mut client = connect(&config, &target).await?;
        migrate(&mut client, &target, create).await?;
        let clock = anchor(&client, &target).await?;
        drop(client);
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| BackendError::new(format!("{target}: connection pool: {e}")))?;
        let (wake, work) = watch::channel(0u64);
        let writer_target = target.clone();
        let queue = WriteQueue::start(
            "flowhost-postgres-writer",
            target.clone(),
            move |rx, slot| writer_thread(config, writer_target, reconnect_for, rx, slot, wake),
        )?;
        Ok(PostgresBackend {
            target,
            queue,
            pool,
            clock: Arc::new(clock),
            work,
        })
    }

    /// A server setting as the server shows it (`SHOW name`), e.g.
    /// `synchronous_commit`.
    pub async fn setting(&self, name: &str) -> BackendResult<String> {
        let row = self
            .query_opt("SELECT current_setting($1)", &[&name])
            .await?;
        Ok(row.map(|r| r.get(0)).unwrap_or_default())
    }

    /// Decides time by `clock` instead of the server-anchored one.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Queues a write; with no reply it is not waited for (a failure is
    /// reported by every later write).
    fn send(&self, op: Op, reply: Reply<Value>) -> BackendResult<()> {
        self.queue.send((op, self.clock.clone()), reply)
    }

    fn send_lazy(&self, op: Op) {
        self.queue.send_lazy((op, self.clock.clone()))
    }

    async fn write(&self, op: Op) -> BackendResult<Value> {
        self.queue.write((op, self.clock.clone())).await
    }

    async fn write_as<T: serde::de::DeserializeOwned>(&self, op: Op) -> BackendResult<T> {
        let value = self.write(op).await?;
        serde_json::from_value(value).map_err(|e| BackendError::new(format!("internal: {e}")))
    }

    /// A fenced write's answer as the caller sees it.
    async fn fenced(&self, op: Op, fence: Option<&Fence>) -> BackendResult<()> {
        match (self.write(op).await?, fence) {
            (Value::String(s), Some(f)) if s == REFUSED => Err(f.refused()),
            _ => Ok(()),
        }
    }

    async fn client(&self) -> BackendResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => pg_error(&self.target, &e),
            e => BackendError::new(format!("{}: cannot reach the database: {e}", self.target)),
        })
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> BackendResult<Vec<Row>> {
        let client = self.client().await?;
        let err = |e: tokio_postgres::Error| pg_error(&self.target, &e);
        let st = client.prepare_cached(sql).await.map_err(err)?;
        client.query(&st, params).await.map_err(err)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> BackendResult<Option<Row>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    fn at(&self, e: BackendError) -> BackendError {
        e.at(&self.target)
    }
}

#[async_trait::async_trait]
impl Checkpoints for PostgresBackend {
    async fn save(&self, checkpoint: Checkpoint) -> BackendResult<()> {
        let fence = checkpoint.fence.clone();
        self.fenced(Op::Save(Box::new(checkpoint)), fence.as_ref())
            .await
    }

    async fn save_deferred(&self, checkpoint: Checkpoint) -> BackendResult<()> {
        self.send(Op::Save(Box::new(checkpoint)), None)
    }

    async fn load(&self, id: &str) -> BackendResult<Option<Checkpoint>> {
        let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM executions WHERE id = $1");
        self.query_opt(&sql, &[&id])
            .await?
            .map(|r| row_checkpoint(&r).map_err(|e| self.at(e)))
            .transpose()
    }

    async fn statuses(&self, ids: &[String]) -> BackendResult<HashMap<String, ExecutionStatus>> {
        let rows = self
            .query(
                "SELECT id, status FROM executions WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let s = status(r.get(1), ExecutionStatus::parse, ExecutionStatus::spellings)
                    .map_err(|e| self.at(e))?;
                Ok((r.get(0), s))
            })
            .collect()
    }

    async fn list(&self, filter: &ListFilter) -> BackendResult<Vec<Checkpoint>> {
        // Only the filters given are in the statement, so each is planned
        // on its index (by status, machine or parent).
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut param = |v: Box<dyn ToSql + Sync + Send>| {
            values.push(v);
            format!("${}", values.len())
        };
        if let Some(status) = filter.status {
            conditions.push(format!("status = {}", param(Box::new(status.as_str()))));
        }
        if let Some(machine) = &filter.machine {
            conditions.push(format!("machine = {}", param(Box::new(machine.clone()))));
        }
        if let Some(parent) = &filter.parent {
            conditions.push(format!("parent = {}", param(Box::new(parent.clone()))));
        }
        if let Some((ms, id)) = &filter.after {
            let (ms, id) = (param(Box::new(clamp(*ms))), param(Box::new(id.clone())));
            conditions.push(format!("(created_ms, id) < ({ms}, {id})"));
        }
        if let Some(from) = filter.created_from {
            conditions.push(format!("created_ms >= {}", param(Box::new(clamp(from)))));
        }
        if let Some(before) = filter.created_before {
            conditions.push(format!("created_ms < {}", param(Box::new(clamp(before)))));
        }
        if let Some(prefix) = filter.id_prefix.as_ref().filter(|p| !p.is_empty()) {
            conditions.push(format!(
                "starts_with(id, {})",
                param(Box::new(prefix.clone()))
            ));
        }
        if filter.roots_only {
            conditions.push("parent IS NULL".to_string());
        }
        let filters = match conditions.is_empty() {
            true => String::new(),
            false => format!("WHERE {}", conditions.join(" AND ")),
        };
        let limit = filter.limit.map_or(String::new(), |l| format!("LIMIT {l}"));
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM executions {filters}
             ORDER BY created_ms DESC, id DESC {limit}"
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        self.query(&sql, &params)
            .await?
            .iter()
            .map(|r| row_checkpoint(r).map_err(|e| self.at(e)))
            .collect()
    }

    async fn counts(&self) -> BackendResult<Vec<super::ExecutionCount>> {
        let rows = self
            .query(
                "SELECT root, machine, status, sum(n)::BIGINT FROM execution_counts
                 GROUP BY root, machine, status HAVING sum(n) <> 0
                 ORDER BY root DESC, machine, status",
                &[],
            )
            .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for r in &rows {
            counts.push(super::ExecutionCount {
                root: r.get(0),
                machine: r.get(1),
                status: ops::status(
                    r.get(2),
                    super::ExecutionStatus::parse,
                    super::ExecutionStatus::spellings,
                )?,
                count: r.get::<_, i64>(3).max(0) as u64,
            });
        }
        Ok(counts)
    }
}

#[async_trait::async_trait]
impl Results for PostgresBackend {
    async fn write_result(&self, id: &str, result: StoredResult) -> BackendResult<()> {
        let fence = result.fence.clone();
        self.fenced(
            Op::WriteResult(id.to_string(), Box::new(result)),
            fence.as_ref(),
        )
        .await
    }

    async fn read_result(&self, id: &str) -> BackendResult<Option<StoredResult>> {
        self.query_opt(
            "SELECT status, value, written_ms, digest FROM results WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| row_result(id, &r).map_err(|e| self.at(e)))
        .transpose()
    }

    async fn delete_result(&self, id: &str) -> BackendResult<()> {
        self.write(Op::DeleteResult(id.to_string()))
            .await
            .map(|_| ())
    }

    async fn open_fan_in(
        &self,
        key: &str,
        children: Vec<String>,
        fence: Option<Fence>,
    ) -> BackendResult<u64> {
        let answer = self
            .write(Op::OpenFanIn(key.to_string(), children, fence.clone()))
            .await?;
        if let Some(n) = answer.as_u64() {
            return Ok(n);
        }
        match (&answer, fence) {
            (Value::String(s), Some(f)) if s == REFUSED => Err(f.refused()),
            _ => Err(BackendError::new(format!(
                "internal: opening fan-in {key} answered {answer}"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Signals for PostgresBackend {
    async fn send_signal(&self, id: &str, channel: &str, data: Value) -> BackendResult<()> {
        self.write(Op::SendSignal(
            id.to_string(),
            channel.to_string(),
            data.to_string(),
            self.clock.now_ms(),
        ))
        .await
        .map(|_| ())
    }

    async fn take_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Value>> {
        match self
            .write(Op::TakeSignal(id.to_string(), channel.to_string()))
            .await?
        {
            Value::Array(mut one) => Ok(one.pop()),
            _ => Ok(None),
        }
    }

    async fn peek_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Signal>> {
        self.query_opt(
            "SELECT seq, data FROM signals WHERE execution = $1 AND channel = $2 ORDER BY seq LIMIT 1",
            &[&id, &channel],
        )
        .await?
        .map(|r| {
            let seq: i64 = r.get(0);
            Ok(Signal {
                seq: seq as u64,
                data: signal_data(seq, r.get(1)).map_err(|e| self.at(e))?,
            })
        })
        .transpose()
    }
}

#[async_trait::async_trait]
impl Definitions for PostgresBackend {
    async fn put_definition(&self, digest: &str, body: &str) -> BackendResult<()> {
        let at = self.clock.now_ms();
        self.send(
            Op::PutDefinition(digest.to_string(), body.to_string(), at),
            None,
        )
    }

    async fn get_definition(&self, digest: &str) -> BackendResult<Option<String>> {
        Ok(self
            .query_opt("SELECT body FROM definitions WHERE digest = $1", &[&digest])
            .await?
            .map(|r| r.get(0)))
    }
}

#[async_trait::async_trait]
impl History for PostgresBackend {
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<NewEvent>,
        keep: usize,
    ) -> BackendResult<()> {
        if !events.is_empty() {
            self.send_lazy(Op::AppendHistory(execution.to_string(), events, keep));
        }
        Ok(())
    }

    async fn history(
        &self,
        execution: &str,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<HistoryEntry>> {
        let rows = self
            .query(
                "SELECT seq, at_ms, event FROM history WHERE execution = $1 AND seq > $2
                 ORDER BY seq LIMIT $3",
                &[&execution, &clamp(after), &clamp(limit as u64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let text: String = r.get(2);
                let event = serde_json::from_str(&text).map_err(|e| {
                    self.at(BackendError::of(
                        StoreErrorKind::Corrupt,
                        format!("history event {seq} of {execution} is not JSON: {e}"),
                    ))
                })?;
                Ok(HistoryEntry {
                    seq: seq as u64,
                    at_ms: r.get::<_, i64>(1) as u64,
                    event,
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl State for PostgresBackend {
    async fn state(&self, execution: &str) -> BackendResult<BTreeMap<String, Value>> {
        let rows = self
            .query(
                "SELECT key, value FROM state WHERE execution = $1 ORDER BY key",
                &[&execution],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let value = state_value(execution, &key, r.get(1)).map_err(|e| self.at(e))?;
                Ok((key, value))
            })
            .collect()
    }

    async fn state_get(&self, execution: &str, key: &str) -> BackendResult<Option<Value>> {
        self.query_opt(
            "SELECT value FROM state WHERE execution = $1 AND key = $2",
            &[&execution, &key],
        )
        .await?
        .map(|r| state_value(execution, key, r.get(0)).map_err(|e| self.at(e)))
        .transpose()
    }

    async fn state_replace(
        &self,
        execution: &str,
        values: BTreeMap<String, Value>,
    ) -> BackendResult<()> {
        self.write(Op::StateReplace(execution.to_string(), values))
            .await
            .map(|_| ())
    }

    async fn state_apply(
        &self,
        execution: &str,
        key: &str,
        op: StateOp,
    ) -> BackendResult<Result<StateAnswer, StateConflict>> {
        let answer: Result<StateAnswer, String> = self
            .write_as(Op::StateApply(execution.to_string(), key.to_string(), op))
            .await?;
        Ok(answer.map_err(StateConflict))
    }
}

#[async_trait::async_trait]
impl WorkPools for PostgresBackend {
    async fn push(&self, pool: &str, job: NewJob) -> BackendResult<(i64, bool)> {
        self.write_as(Op::Push(pool.to_string(), vec![job], true))
            .await
    }

    async fn push_many(&self, pool: &str, jobs: Vec<NewJob>) -> BackendResult<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        self.write_as(Op::Push(pool.to_string(), jobs, false)).await
    }

    async fn claim(
        &self,
        pool: &str,
        worker: &str,
        n: u32,
        lease_ms: u64,
    ) -> BackendResult<Vec<Job>> {
        // An idle pool is seen by a read (no write, no lock), so idle
        // workers cost the database a seek into the claim indexes.
        let now = clamp(self.clock.now_ms());
        let any: bool = self
            .query_opt(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE pool = $1 AND status = 'pending' AND run_at_ms <= $2)
                     OR EXISTS (SELECT 1 FROM jobs WHERE pool = $1 AND status = 'claimed' AND lease_until_ms <= $2)",
                &[&pool, &now],
            )
            .await?
            .is_some_and(|r| r.get(0));
        if !any {
            return Ok(vec![]);
        }
        self.write_as(Op::Claim {
            pool: pool.to_string(),
            worker: worker.to_string(),
            n,
            lease_ms,
        })
        .await
    }

    async fn extend_lease(&self, id: i64, fence: u64, lease_ms: u64) -> BackendResult<bool> {
        self.write_as(Op::ExtendLease(id, fence, lease_ms)).await
    }

    async fn complete(&self, id: i64, fence: u64, result: Value) -> BackendResult<bool> {
        self.write_as(Op::Complete(id, fence, result.to_string()))
            .await
    }

    async fn fail(
        &self,
        id: i64,
        fence: u64,
        error: &str,
        retry: Option<Backoff>,
    ) -> BackendResult<FailOutcome> {
        self.write_as(Op::Fail(id, fence, error.to_string(), retry))
            .await
    }

    async fn release_worker(&self, worker: &str) -> BackendResult<u64> {
        self.write_as(Op::ReleaseWorker(worker.to_string())).await
    }

    async fn requeue(&self, pool: &str, ids: &[i64]) -> BackendResult<u64> {
        self.write_as(Op::Requeue(pool.to_string(), ids.to_vec()))
            .await
    }

    async fn prune(&self, pool: &str, done_before_ms: u64, limit: u32) -> BackendResult<u64> {
        self.write_as(Op::Prune(pool.to_string(), done_before_ms, limit))
            .await
    }

    async fn stats(&self, pool: &str) -> BackendResult<PoolStats> {
        let backlog = self.backlog(pool).await?;
        let mut s = PoolStats::from(backlog);
        for r in self
            .query(
                "SELECT status, count(*) FROM jobs WHERE pool = $1 AND status IN ('done', 'poisoned') GROUP BY status",
                &[&pool],
            )
            .await?
        {
            let n = r.get::<_, i64>(1) as u64;
            match r.get::<_, &str>(0) {
                "done" => s.done = n,
                _ => s.poisoned = n,
            }
        }
        Ok(s)
    }

    async fn backlog(&self, pool: &str) -> BackendResult<Backlog> {
        let now = clamp(self.clock.now_ms());
        let mut b = Backlog::default();
        for r in self
            .query(
                "SELECT status, count(*) FROM jobs WHERE pool = $1 AND status IN ('pending', 'claimed') GROUP BY status",
                &[&pool],
            )
            .await?
        {
            let n = r.get::<_, i64>(1) as u64;
            match r.get::<_, &str>(0) {
                "pending" => b.pending = n,
                _ => b.claimed = n,
            }
        }
        if let Some(r) = self
            .query_opt(
                "SELECT count(*), min(run_at_ms) FROM jobs WHERE pool = $1 AND status = 'pending' AND run_at_ms <= $2",
                &[&pool, &now],
            )
            .await?
        {
            b.due = r.get::<_, i64>(0) as u64;
            b.oldest_due_ms = r.get::<_, Option<i64>>(1).map(|v| v as u64);
        }
        Ok(b)
    }

    async fn job(&self, id: i64) -> BackendResult<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        self.query_opt(&sql, &[&id])
            .await?
            .map(|r| row_job(&r).map_err(|e| self.at(e)))
            .transpose()
    }

    async fn jobs(
        &self,
        pool: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> BackendResult<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE pool = $1 AND ($2::TEXT IS NULL OR status = $2) ORDER BY id LIMIT $3"
        );
        self.query(
            &sql,
            &[&pool, &status.map(|s| s.as_str()), &clamp(limit as u64)],
        )
        .await?
        .iter()
        .map(|r| row_job(r).map_err(|e| self.at(e)))
        .collect()
    }

    fn work_hint(&self) -> Option<watch::Receiver<u64>> {
        Some(self.work.clone())
    }
}

#[async_trait::async_trait]
impl Workers for PostgresBackend {
    async fn register(&self, worker: WorkerInfo) -> BackendResult<()> {
        self.write(Op::Register(worker)).await.map(|_| ())
    }

    async fn heartbeat(&self, id: &str) -> BackendResult<bool> {
        self.write_as(Op::Heartbeat(id.to_string())).await
    }

    async fn set_worker_status(&self, id: &str, status: WorkerStatus) -> BackendResult<()> {
        self.write(Op::SetWorkerStatus(id.to_string(), status))
            .await
            .map(|_| ())
    }

    async fn workers(&self, pool: Option<&str>) -> BackendResult<Vec<WorkerInfo>> {
        self.query(
            "SELECT id, pool, pid, host, status, started_ms, heartbeat_ms FROM workers
             WHERE ($1::TEXT IS NULL OR pool = $1) ORDER BY started_ms, id",
            &[&pool],
        )
        .await?
        .iter()
        .map(|r| row_worker(r).map_err(|e| self.at(e)))
        .collect()
    }

    async fn reap(&self, stale_after_ms: u64) -> BackendResult<Vec<String>> {
        self.write_as(Op::Reap(stale_after_ms)).await
    }
}

#[async_trait::async_trait]
impl Ownership for PostgresBackend {
    async fn acquire(
        &self,
        execution: &str,
        owner: &Owner,
        lease_ms: u64,
        evict: Option<u64>,
    ) -> BackendResult<Claim> {
        let (acquired, lease): (bool, Lease) = self
            .write_as(Op::Acquire(
                execution.to_string(),
                owner.clone(),
                lease_ms,
                evict,
            ))
            .await?;
        Ok(if acquired {
            Claim::Acquired(lease)
        } else {
            Claim::Held(lease)
        })
    }

    async fn acquire_new(
        &self,
        execution: &str,
        owner: &Owner,
        lease_ms: u64,
    ) -> BackendResult<Lease> {
        let lease = Lease {
            execution: execution.to_string(),
            owner: owner.clone(),
            token: 1,
            expires_ms: self.clock.now_ms().saturating_add(lease_ms),
        };
        // Goes to the writer with the caller's next write (its first checkpoint).
        self.send_lazy(Op::AcquireNew(lease.clone()));
        Ok(lease)
    }

    async fn renew(&self, execution: &str, token: u64, lease_ms: u64) -> BackendResult<bool> {
        self.write_as(Op::Renew(execution.to_string(), token, lease_ms))
            .await
    }

    async fn release(&self, execution: &str, token: u64) -> BackendResult<()> {
        self.send_lazy(Op::Release(execution.to_string(), token));
        Ok(())
    }

    async fn lease(&self, execution: &str) -> BackendResult<Option<Lease>> {
        Ok(self
            .query_opt(
                "SELECT execution, owner, pid, host, started, token, expires_ms FROM owners WHERE execution = $1",
                &[&execution],
            )
            .await?
            .map(|r| row_lease(&r)))
    }
}

impl Backend for PostgresBackend {
    fn describe(&self) -> String {
        self.target.clone()
    }
    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}
