//! The writes of the PostgreSQL store, as data: each [`Op`] is applied by
//! [`apply`] inside the writer's batch transaction, and may be applied again
//! (a deadlock with another host, a connection lost before the commit), so
//! an op holds everything it needs and decides its time when it runs.
//!
//! Several hosts write at once, so what SQLite gets from its single writer
//! is asked for here: a fenced write holds the owner row (`FOR SHARE`) until
//! it commits, a fan-in counter and a state key are changed under a
//! transaction-scoped advisory lock, a claim skips rows another host has
//! locked (`FOR UPDATE SKIP LOCKED`).
//!
//! Imports the backend's types and the row digests; nothing else of flowhost.

use super::super::clock::Clock;
use super::super::digest::{checkpoint_digest, result_digest};
use super::super::history::NewEvent;
use super::super::owners::{Lease, Owner};
use super::super::pools::{Backoff, FailOutcome, Job, NewJob, WorkerInfo};
use super::super::state::{StateConflict, StateOp};
use super::super::status::{ExecutionStatus, JobStatus, WorkerStatus};
use super::super::{BackendError, Checkpoint, Fence, StoreErrorKind, StoredResult};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio_postgres::{Row, Statement, Transaction};

/// Schema versions, applied in order; `flowhost_schema` says how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE executions (
    id         TEXT PRIMARY KEY,
    parent     TEXT,
    machine    TEXT NOT NULL,
    status     TEXT NOT NULL,
    state      TEXT NOT NULL,
    step       BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    record     TEXT NOT NULL,
    digest     TEXT
);
CREATE INDEX executions_created ON executions(created_ms, id);
CREATE INDEX executions_machine ON executions(machine, created_ms, id);
CREATE INDEX executions_status ON executions(status, created_ms, id);
CREATE INDEX executions_parent ON executions(parent, created_ms, id);
CREATE TABLE results (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    value      TEXT NOT NULL,
    written_ms BIGINT NOT NULL,
    digest     TEXT
);
CREATE TABLE signals (
    seq        BIGSERIAL PRIMARY KEY,
    execution  TEXT NOT NULL,
    channel    TEXT NOT NULL,
    data       TEXT NOT NULL,
    sent_ms    BIGINT NOT NULL
);
CREATE INDEX signals_target ON signals(execution, channel, seq);
CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    pool            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    run_at_ms       BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_retries     BIGINT NOT NULL,
    idempotency_key TEXT,
    worker          TEXT,
    lease_until_ms  BIGINT,
    fence           BIGINT NOT NULL DEFAULT 0,
    result          TEXT,
    error           TEXT,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(pool, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim's indexes hold only the work not done: however many finished
-- rows a pool has, a claim is a seek into these.
CREATE INDEX jobs_pending ON jobs(pool, priority DESC, run_at_ms, id) WHERE status = 'pending';
CREATE INDEX jobs_due ON jobs(pool, run_at_ms) WHERE status = 'pending';
CREATE INDEX jobs_claimed ON jobs(pool, lease_until_ms) WHERE status = 'claimed';
CREATE INDEX jobs_worker ON jobs(worker) WHERE status = 'claimed';
CREATE INDEX jobs_status ON jobs(pool, status, id);
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    pool         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    host         TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);
CREATE TABLE owners (
    execution  TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    pid        BIGINT NOT NULL,
    host       TEXT NOT NULL,
    started    BIGINT NOT NULL,
    token      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE definitions (
    digest     TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE history (
    execution  TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    event      TEXT NOT NULL,
    PRIMARY KEY (execution, seq)
);
CREATE TABLE fan_ins (
    key        TEXT PRIMARY KEY,
    remaining  BIGINT NOT NULL
);
CREATE TABLE state (
    execution  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (execution, key)
);
"#,
    // Counts by (root or child, machine, status), kept by a trigger in the
    // transaction that changes an execution: what the dashboard shows, read
    // without counting the table. Each server process adds to a shard of
    // its own (by its pid), so hosts writing at once do not queue on one
    // counter row; a read sums the shards.
    r#"
CREATE TABLE execution_counts (
    root     BOOLEAN NOT NULL,
    machine  TEXT NOT NULL,
    status   TEXT NOT NULL,
    shard    INTEGER NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (root, machine, status, shard)
);
INSERT INTO execution_counts (root, machine, status, shard, n)
    SELECT parent IS NULL, machine, status, 0, count(*) FROM executions GROUP BY 1, 2, 3;
CREATE FUNCTION flowhost_count_execution() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard INTEGER := pg_backend_pid() % 32;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO execution_counts (root, machine, status, shard, n)
            VALUES (OLD.parent IS NULL, OLD.machine, OLD.status, my_shard, -1)
            ON CONFLICT (root, machine, status, shard)
            DO UPDATE SET n = execution_counts.n - 1;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO execution_counts (root, machine, status, shard, n)
            VALUES (NEW.parent IS NULL, NEW.machine, NEW.status, my_shard, 1)
            ON CONFLICT (root, machine, status, shard)
            DO UPDATE SET n = execution_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER execution_counts_insert_delete AFTER INSERT OR DELETE ON executions
    FOR EACH ROW EXECUTE FUNCTION flowhost_count_execution();
CREATE TRIGGER execution_counts_update AFTER UPDATE OF status, machine, parent ON executions
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.machine IS DISTINCT FROM NEW.machine
          OR (OLD.parent IS NULL) IS DISTINCT FROM (NEW.parent IS NULL))
    EXECUTE FUNCTION flowhost_count_execution();
"#,
];

/// One write.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Save(Box<Checkpoint>),
    WriteResult(String, Box<StoredResult>),
    /// Execution, channel, data, sent at (ms).
    SendSignal(String, String, String, u64),
    TakeSignal(String, String),
    DeleteResult(String),
    /// Digest, body, stored at (ms).
    PutDefinition(String, String, u64),
    /// Execution, its events in order, how many to keep.
    AppendHistory(String, Vec<NewEvent>, usize),
    OpenFanIn(String, Vec<String>, Option<Fence>),
    /// Pool, jobs; answers `[id, created]` for one job, the count created for several.
    Push(String, Vec<NewJob>, bool),
    Claim {
        pool: String,
        worker: String,
        n: u32,
        lease_ms: u64,
    },
    ExtendLease(i64, u64, u64),
    Complete(i64, u64, String),
    Fail(i64, u64, String, Option<Backoff>),
    ReleaseWorker(String),
    Requeue(String, Vec<i64>),
    /// Pool, finished before (ms), at most this many.
    Prune(String, u64, u32),
    Register(WorkerInfo),
    Heartbeat(String),
    SetWorkerStatus(String, WorkerStatus),
    Reap(u64),
    Acquire(String, Owner, u64, Option<u64>),
    AcquireNew(Lease),
    Renew(String, u64, u64),
    Release(String, u64),
    StateReplace(String, BTreeMap<String, Value>),
    StateApply(String, String, StateOp),
}

/// Why an op did not apply: the database refused a statement (the batch's
/// transaction is aborted), or what it read is not what was written (the
/// op's own answer; the transaction goes on).
#[derive(Debug)]
pub(super) enum Failure {
    Db(tokio_postgres::Error),
    Store(BackendError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Failure::Store(e)
    }
}

/// What a write refused by its fence answers.
pub(super) const REFUSED: &str = "refused: stale fence";

/// What one batch's ops share: the statements prepared on the writer's
/// connection, the clock of the op being applied (its store's), and the
/// pools that got new jobs (a wake-up hint follows the commit).
pub(super) struct Batch<'a> {
    pub tx: &'a Transaction<'a>,
    pub statements: &'a mut HashMap<&'static str, Statement>,
    pub clock: Arc<dyn Clock>,
    pub pushed: BTreeSet<String>,
}

impl Batch<'_> {
    async fn st(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).await?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    async fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let s = self.st(sql).await?;
        self.tx.execute(&s, params).await
    }

    async fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let s = self.st(sql).await?;
        self.tx.query(&s, params).await
    }

    async fn row(
        &mut self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let s = self.st(sql).await?;
        self.tx.query_opt(&s, params).await
    }

    fn now_ms(&self) -> i64 {
        clamp(self.clock.now_ms())
    }
}

/// A u64 (ms, ids, tokens) as PostgreSQL's BIGINT.
pub(super) fn clamp(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Whether a fenced write's token is stale. The owner row stays locked
/// (`FOR SHARE`) until the batch commits, so no other host can take the
/// lease over between this check and the write.
async fn stale(b: &mut Batch<'_>, fence: Option<&Fence>) -> Result<bool, Failure> {
    let Some(fence) = fence else {
        return Ok(false);
    };
    let token: Option<i64> = b
        .row(
            "SELECT token FROM owners WHERE execution = $1 FOR SHARE",
            &[&fence.root],
        )
        .await?
        .map(|r| r.get(0));
    Ok(token != Some(clamp(fence.token)))
}

/// Serialises changes of one fan-in counter or one state key across hosts
/// until the batch commits.
async fn lock_key(b: &mut Batch<'_>, space: &str, key: &str) -> Result<(), Failure> {
    b.rows(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("{space}\u{1f}{key}")],
    )
    .await?;
    Ok(())
}

/// Applies one op; its answer travels back as JSON.
pub(super) async fn apply(b: &mut Batch<'_>, op: &Op) -> Result<Value, Failure> {
    match op {
        Op::Save(c) => save(b, c).await,
        Op::WriteResult(id, r) => {
            if stale(b, r.fence.as_ref()).await? {
                return Ok(Value::from(REFUSED));
            }
            put_result(b, id, r).await?;
            Ok(Value::Null)
        }
        Op::OpenFanIn(key, children, fence) => {
            if stale(b, fence.as_ref()).await? {
                return Ok(Value::from(REFUSED));
            }
            lock_key(b, "fan_in", key).await?;
            let open: Option<i64> = b
                .row("SELECT remaining FROM fan_ins WHERE key = $1", &[key])
                .await?
                .map(|r| r.get(0));
            let remaining = match open {
                Some(n) => n,
                None => {
                    let finished: i64 = b
                        .row(
                            "SELECT count(*) FROM results WHERE id = ANY($1)",
                            &[children],
                        )
                        .await?
                        .map_or(0, |r| r.get(0));
                    let n = children.len() as i64 - finished;
                    b.exec(
                        "INSERT INTO fan_ins (key, remaining) VALUES ($1, $2)",
                        &[key, &n],
                    )
                    .await?;
                    n
                }
            };
            Ok(Value::from(remaining.max(0)))
        }
        Op::DeleteResult(id) => {
            b.exec("DELETE FROM results WHERE id = $1", &[id]).await?;
            Ok(Value::Null)
        }
        Op::SendSignal(id, channel, data, sent) => {
            b.exec(
                "INSERT INTO signals (execution, channel, data, sent_ms) VALUES ($1, $2, $3, $4)",
                &[id, channel, data, &clamp(*sent)],
            )
            .await?;
            Ok(Value::Null)
        }
        Op::TakeSignal(id, channel) => {
            let row = b
                .row(
                    "DELETE FROM signals WHERE seq = (
                        SELECT seq FROM signals WHERE execution = $1 AND channel = $2
                        ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING seq, data",
                    &[id, channel],
                )
                .await?;
            // `[data]`, or null when none waits (the data may be null itself).
            match row {
                None => Ok(Value::Null),
                Some(r) => Ok(json!([signal_data(r.get(0), r.get(1))?])),
            }
        }
        Op::PutDefinition(digest, body, at) => {
            b.exec(
                "INSERT INTO definitions (digest, body, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO NOTHING",
                &[digest, body, &clamp(*at)],
            )
            .await?;
            Ok(Value::Null)
        }
        Op::AppendHistory(execution, events, keep) => {
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(Value::Null);
            };
            for e in events {
                b.exec(
                    "INSERT INTO history (execution, seq, at_ms, event) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (execution, seq) DO UPDATE SET at_ms = excluded.at_ms, event = excluded.event",
                    &[execution, &clamp(e.seq), &clamp(e.at_ms), &e.json],
                )
                .await?;
            }
            let oldest = last.saturating_sub(*keep as u64) + 1;
            if oldest > 1 {
                b.exec(
                    "DELETE FROM history WHERE execution = $1 AND seq < $2",
                    &[execution, &clamp(oldest)],
                )
                .await?;
            }
            Ok(Value::Null)
        }
        Op::Push(pool, jobs, one) => {
            let now = b.now_ms();
            let mut created = 0u64;
            let mut first = None;
            for job in jobs {
                let (id, new) = insert_job(b, now, pool, job).await?;
                first.get_or_insert((id, new));
                created += u64::from(new);
            }
            Ok(match (one, first) {
                (true, Some((id, new))) => json!([id, new]),
                _ => json!(created),
            })
        }
        Op::Claim {
            pool,
            worker,
            n,
            lease_ms,
        } => {
            let now = b.now_ms();
            let until = now.saturating_add(clamp(*lease_ms));
            let rows = b
                .rows(
                    "WITH due AS (
                        SELECT id, priority, run_at_ms FROM jobs
                        WHERE pool = $1 AND status = 'pending' AND run_at_ms <= $2
                        ORDER BY priority DESC, run_at_ms, id LIMIT $3
                        FOR UPDATE SKIP LOCKED),
                     expired AS (
                        SELECT id, priority, run_at_ms FROM jobs
                        WHERE pool = $1 AND status = 'claimed' AND lease_until_ms <= $2
                        ORDER BY priority DESC, run_at_ms, id LIMIT $3
                        FOR UPDATE SKIP LOCKED),
                     picked AS (
                        SELECT id FROM (SELECT * FROM due UNION ALL SELECT * FROM expired) c
                        ORDER BY priority DESC, run_at_ms, id LIMIT $3)
                     UPDATE jobs SET status = 'claimed', worker = $4, lease_until_ms = $5,
                        attempts = attempts + 1, fence = fence + 1, updated_ms = $2
                     FROM picked WHERE jobs.id = picked.id
                     RETURNING jobs.id, pool, payload, status, priority, run_at_ms, attempts, max_retries,
                        idempotency_key, worker, lease_until_ms, fence, result, error, created_ms, updated_ms",
                    &[pool, &now, &i64::from(*n), worker, &until],
                )
                .await?;
            let mut jobs = rows.iter().map(row_job).collect::<Result<Vec<_>, _>>()?;
            jobs.sort_by_key(|j| (-j.priority, j.run_at_ms, j.id));
            to_json(jobs)
        }
        Op::ExtendLease(id, fence, lease_ms) => {
            let until = b.now_ms().saturating_add(clamp(*lease_ms));
            let n = b
                .exec(
                    "UPDATE jobs SET lease_until_ms = $1 WHERE id = $2 AND fence = $3 AND status = 'claimed'",
                    &[&until, id, &clamp(*fence)],
                )
                .await?;
            Ok(json!(n == 1))
        }
        Op::Complete(id, fence, result) => {
            let now = b.now_ms();
            let n = b
                .exec(
                    "UPDATE jobs SET status = 'done', result = $1, lease_until_ms = NULL, updated_ms = $2
                     WHERE id = $3 AND fence = $4 AND status = 'claimed'",
                    &[result, &now, id, &clamp(*fence)],
                )
                .await?;
            Ok(json!(n == 1))
        }
        Op::Fail(id, fence, error, retry) => {
            // A failure's text is whatever a plugin said; PostgreSQL stores
            // no NUL in text, and a refused outcome would never poison the job.
            let error = &error.replace('\0', "\u{fffd}");
            let row = b
                .row(
                    "SELECT attempts, max_retries FROM jobs WHERE id = $1 AND fence = $2 AND status = 'claimed' FOR UPDATE",
                    &[id, &clamp(*fence)],
                )
                .await?;
            let Some(row) = row else {
                return to_json(FailOutcome::Rejected);
            };
            let (attempts, max_retries): (i64, i64) = (row.get(0), row.get(1));
            let now = b.now_ms();
            let outcome = if let Some(backoff) = retry.filter(|_| attempts <= max_retries) {
                let run_at = now.saturating_add(clamp(backoff.delay_ms(attempts as u32)));
                b.exec(
                    "UPDATE jobs SET status = 'pending', error = $1, worker = NULL, lease_until_ms = NULL,
                        run_at_ms = $2, updated_ms = $3 WHERE id = $4",
                    &[error, &run_at, &now, id],
                )
                .await?;
                FailOutcome::Retried
            } else {
                b.exec(
                    "UPDATE jobs SET status = 'poisoned', error = $1, lease_until_ms = NULL, updated_ms = $2 WHERE id = $3",
                    &[error, &now, id],
                )
                .await?;
                FailOutcome::Poisoned
            };
            to_json(outcome)
        }
        Op::ReleaseWorker(worker) => {
            let now = b.now_ms();
            let n = release(b, now, worker).await?;
            Ok(json!(n))
        }
        Op::Requeue(pool, ids) => {
            let now = b.now_ms();
            let n = b
                .exec(
                    "UPDATE jobs SET status = 'pending', attempts = 0, worker = NULL, lease_until_ms = NULL,
                        run_at_ms = $1, updated_ms = $1
                     WHERE pool = $2 AND status = 'poisoned' AND (cardinality($3::BIGINT[]) = 0 OR id = ANY($3))",
                    &[&now, pool, ids],
                )
                .await?;
            if n > 0 {
                b.pushed.insert(pool.clone());
            }
            Ok(json!(n))
        }
        Op::Prune(pool, before, limit) => {
            let n = b
                .exec(
                    "DELETE FROM jobs WHERE id IN (
                        SELECT id FROM jobs WHERE pool = $1 AND status = 'done' AND updated_ms < $2
                        ORDER BY id LIMIT $3)",
                    &[pool, &clamp(*before), &i64::from(*limit)],
                )
                .await?;
            Ok(json!(n))
        }
        Op::Register(w) => {
            b.exec(
                "INSERT INTO workers (id, pool, pid, host, status, started_ms, heartbeat_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET pool = excluded.pool, pid = excluded.pid, host = excluded.host,
                   status = excluded.status, started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms",
                &[
                    &w.id,
                    &w.pool,
                    &i64::from(w.pid),
                    &w.host,
                    &w.status.as_str(),
                    &clamp(w.started_ms),
                    &clamp(w.heartbeat_ms),
                ],
            )
            .await?;
            Ok(Value::Null)
        }
        Op::Heartbeat(id) => {
            let now = b.now_ms();
            let n = b
                .exec(
                    "UPDATE workers SET heartbeat_ms = $1 WHERE id = $2 AND status = 'active'",
                    &[&now, id],
                )
                .await?;
            Ok(json!(n == 1))
        }
        Op::SetWorkerStatus(id, status) => {
            b.exec(
                "UPDATE workers SET status = $1 WHERE id = $2",
                &[&status.as_str(), id],
            )
            .await?;
            Ok(Value::Null)
        }
        Op::Reap(stale_after) => {
            let now = b.now_ms();
            let cutoff = now.saturating_sub(clamp(*stale_after));
            let ids: Vec<String> = b
                .rows(
                    "UPDATE workers SET status = 'lost' WHERE status = 'active' AND heartbeat_ms < $1 RETURNING id",
                    &[&cutoff],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for id in &ids {
                release(b, now, id).await?;
            }
            Ok(json!(ids))
        }
        Op::Acquire(execution, owner, lease_ms, evict) => {
            let now = b.now_ms();
            let expires = now.saturating_add(clamp(*lease_ms));
            let evict = evict.map_or(-1, clamp);
            let got = b
                .row(
                    "INSERT INTO owners (execution, owner, pid, host, started, token, expires_ms)
                     VALUES ($1, $2, $3, $4, $5, 1, $6)
                     ON CONFLICT (execution) DO UPDATE SET owner = excluded.owner, pid = excluded.pid,
                       host = excluded.host, started = excluded.started, token = owners.token + 1,
                       expires_ms = excluded.expires_ms
                     WHERE owners.expires_ms <= $7 OR owners.owner = excluded.owner OR owners.token = $8
                     RETURNING execution, owner, pid, host, started, token, expires_ms",
                    &[
                        execution,
                        &owner.id,
                        &i64::from(owner.pid),
                        &owner.host,
                        &clamp(owner.started),
                        &expires,
                        &now,
                        &evict,
                    ],
                )
                .await?;
            match got {
                Some(r) => to_json((true, row_lease(&r))),
                None => {
                    let held = b
                        .row(
                            "SELECT execution, owner, pid, host, started, token, expires_ms FROM owners WHERE execution = $1",
                            &[execution],
                        )
                        .await?
                        .ok_or_else(|| {
                            BackendError::new(format!("the lease on `{execution}` vanished while it was being taken"))
                        })?;
                    to_json((false, row_lease(&held)))
                }
            }
        }
        Op::AcquireNew(l) => {
            b.exec(
                "INSERT INTO owners (execution, owner, pid, host, started, token, expires_ms)
                 VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (execution) DO NOTHING",
                &[
                    &l.execution,
                    &l.owner.id,
                    &i64::from(l.owner.pid),
                    &l.owner.host,
                    &clamp(l.owner.started),
                    &clamp(l.expires_ms),
                ],
            )
            .await?;
            Ok(Value::Null)
        }
        Op::Renew(execution, token, lease_ms) => {
            let expires = b.now_ms().saturating_add(clamp(*lease_ms));
            let n = b
                .exec(
                    "UPDATE owners SET expires_ms = $1 WHERE execution = $2 AND token = $3",
                    &[&expires, execution, &clamp(*token)],
                )
                .await?;
            Ok(json!(n == 1))
        }
        Op::Release(execution, token) => {
            b.exec(
                "UPDATE owners SET expires_ms = 0 WHERE execution = $1 AND token = $2",
                &[execution, &clamp(*token)],
            )
            .await?;
            Ok(Value::Null)
        }
        Op::StateReplace(execution, values) => {
            b.exec("DELETE FROM state WHERE execution = $1", &[execution])
                .await?;
            for (k, v) in values {
                b.exec(
                    "INSERT INTO state (execution, key, value) VALUES ($1, $2, $3)",
                    &[execution, k, &v.to_string()],
                )
                .await?;
            }
            Ok(Value::Null)
        }
        Op::StateApply(execution, key, op) => {
            lock_key(b, execution, key).await?;
            let text: Option<String> = b
                .row(
                    "SELECT value FROM state WHERE execution = $1 AND key = $2",
                    &[execution, key],
                )
                .await?
                .map(|r| r.get(0));
            let current = text.map(|t| state_value(execution, key, &t)).transpose()?;
            let unchanged = current.clone();
            let (value, answer) = match super::super::state::apply(key, current, op.clone()) {
                Ok(done) => done,
                Err(StateConflict(m)) => return Ok(json!({ "Err": m })),
            };
            if value != unchanged {
                match &value {
                    Some(v) => {
                        b.exec(
                            "INSERT INTO state (execution, key, value) VALUES ($1, $2, $3)
                             ON CONFLICT (execution, key) DO UPDATE SET value = excluded.value",
                            &[execution, key, &v.to_string()],
                        )
                        .await?
                    }
                    None => {
                        b.exec(
                            "DELETE FROM state WHERE execution = $1 AND key = $2",
                            &[execution, key],
                        )
                        .await?
                    }
                };
            }
            to_json(Ok::<_, String>(answer))
        }
    }
}

async fn save(b: &mut Batch<'_>, c: &Checkpoint) -> Result<Value, Failure> {
    if stale(b, c.fence.as_ref()).await? {
        return Ok(Value::from(REFUSED));
    }
    let digest = checkpoint_digest(
        &c.id,
        c.status.as_str(),
        &c.state,
        clamp(c.step),
        clamp(c.updated_ms),
        &c.record,
    );
    b.exec(
        "INSERT INTO executions (id, parent, machine, status, state, step, created_ms, updated_ms, record, digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state,
           step = excluded.step, updated_ms = excluded.updated_ms, record = excluded.record,
           digest = excluded.digest",
        &[
            &c.id,
            &c.parent,
            &c.machine,
            &c.status.as_str(),
            &c.state,
            &clamp(c.step),
            &clamp(c.created_ms),
            &clamp(c.updated_ms),
            &c.record,
            &digest,
        ],
    )
    .await?;
    if let Some(seq) = c.consumes_signal {
        b.exec(
            "DELETE FROM signals WHERE seq = $1 AND execution = $2",
            &[&clamp(seq), &c.id],
        )
        .await?;
    }
    for (pool, job) in &c.enqueue {
        insert_job(b, clamp(c.updated_ms), pool, job).await?;
    }
    if let Some(r) = &c.result {
        put_result(b, &c.id, r).await?;
    }
    Ok(Value::Null)
}

/// Stores a result (its fence checked); the first result of a fan-out
/// child counts its fan-in down.
async fn put_result(b: &mut Batch<'_>, id: &str, r: &StoredResult) -> Result<(), Failure> {
    let value = r.value.to_string();
    let written = clamp(r.written_ms);
    let digest = result_digest(id, r.status.as_str(), &value, written);
    // `xmax = 0`: the row was inserted, not updated — this is the first result.
    let first: bool = b
        .row(
            "INSERT INTO results (id, status, value, written_ms, digest) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, value = excluded.value,
               written_ms = excluded.written_ms, digest = excluded.digest
             RETURNING (xmax = 0)",
            &[&id, &r.status.as_str(), &value, &written, &digest],
        )
        .await?
        .is_some_and(|row| row.get(0));
    crate::crash::point("store.result.write");
    if let Some(fan_in) = r.counts_toward.as_deref().filter(|_| first) {
        lock_key(b, "fan_in", &fan_in.key).await?;
        let remaining: Option<i64> = b
            .row(
                "UPDATE fan_ins SET remaining = remaining - 1 WHERE key = $1 AND remaining > 0 RETURNING remaining",
                &[&fan_in.key],
            )
            .await?
            .map(|r| r.get(0));
        if fan_in.wake_now || remaining == Some(0) {
            insert_job(b, written, &fan_in.wake_pool, &fan_in.wake).await?;
        }
        if let Some(next) = &fan_in.next {
            insert_job(b, written, &fan_in.wake_pool, next).await?;
        }
    }
    Ok(())
}

/// Adds a job (unless one with its idempotency key exists): its id and
/// whether it was created.
async fn insert_job(
    b: &mut Batch<'_>,
    now: i64,
    pool: &str,
    job: &NewJob,
) -> Result<(i64, bool), Failure> {
    let inserted = b
        .row(
            "INSERT INTO jobs (pool, payload, status, priority, run_at_ms, max_retries, idempotency_key, created_ms, updated_ms)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $7)
             ON CONFLICT (pool, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
            &[
                &pool,
                &job.payload.to_string(),
                &job.priority,
                &now.saturating_add(clamp(job.delay_ms)),
                &i64::from(job.max_retries),
                &job.idempotency_key,
                &now,
            ],
        )
        .await?;
    if let Some(r) = inserted {
        b.pushed.insert(pool.to_string());
        return Ok((r.get(0), true));
    }
    let existing = b
        .row(
            "SELECT id FROM jobs WHERE pool = $1 AND idempotency_key = $2",
            &[&pool, &job.idempotency_key],
        )
        .await?
        .ok_or_else(|| {
            BackendError::new(format!(
                "job of pool `{pool}`: neither inserted nor found by its idempotency key"
            ))
        })?;
    Ok((existing.get(0), false))
}

/// Makes the jobs a worker holds claimable again.
async fn release(b: &mut Batch<'_>, now: i64, worker: &str) -> Result<u64, Failure> {
    let rows = b
        .rows(
            "UPDATE jobs SET status = 'pending', worker = NULL, lease_until_ms = NULL, updated_ms = $1
             WHERE status = 'claimed' AND worker = $2 RETURNING pool",
            &[&now, &worker],
        )
        .await?;
    for r in &rows {
        b.pushed.insert(r.get(0));
    }
    Ok(rows.len() as u64)
}

fn to_json<T: serde::Serialize>(v: T) -> Result<Value, Failure> {
    serde_json::to_value(v).map_err(|e| Failure::Store(BackendError::new(format!("internal: {e}"))))
}

/// A status read back; an unknown spelling is corruption.
pub(super) fn status<T>(
    text: &str,
    parse: fn(&str) -> Option<T>,
    spellings: fn() -> String,
) -> Result<T, BackendError> {
    parse(text).ok_or_else(|| {
        BackendError::of(
            StoreErrorKind::Corrupt,
            format!("unknown status `{text}` (expected one of {})", spellings()),
        )
    })
}

fn json_column(text: Option<String>, what: &str) -> Result<Option<Value>, BackendError> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            BackendError::of(
                StoreErrorKind::Corrupt,
                format!("stored {what} is not JSON: {e}"),
            )
        })
    })
    .transpose()
}

pub(super) const JOB_COLUMNS: &str = "id, pool, payload, status, priority, run_at_ms, attempts, max_retries, \
     idempotency_key, worker, lease_until_ms, fence, result, error, created_ms, updated_ms";

pub(super) fn row_job(r: &Row) -> Result<Job, BackendError> {
    let id: i64 = r.get(0);
    let what = |c: &str| format!("{c} of job {id}");
    Ok(Job {
        id,
        pool: r.get(1),
        payload: json_column(Some(r.get(2)), &what("payload"))?.unwrap_or(Value::Null),
        status: status(r.get(3), JobStatus::parse, JobStatus::spellings)?,
        priority: r.get(4),
        run_at_ms: r.get::<_, i64>(5) as u64,
        attempts: r.get::<_, i64>(6) as u32,
        max_retries: r.get::<_, i64>(7) as u32,
        idempotency_key: r.get(8),
        worker: r.get(9),
        lease_until_ms: r.get::<_, Option<i64>>(10).map(|v| v as u64),
        fence: r.get::<_, i64>(11) as u64,
        result: json_column(r.get(12), &what("result"))?,
        error: r.get(13),
        created_ms: r.get::<_, i64>(14) as u64,
        updated_ms: r.get::<_, i64>(15) as u64,
    })
}

pub(super) fn row_worker(r: &Row) -> Result<WorkerInfo, BackendError> {
    Ok(WorkerInfo {
        id: r.get(0),
        pool: r.get(1),
        pid: r.get::<_, i64>(2) as u32,
        host: r.get(3),
        status: status(r.get(4), WorkerStatus::parse, WorkerStatus::spellings)?,
        started_ms: r.get::<_, i64>(5) as u64,
        heartbeat_ms: r.get::<_, i64>(6) as u64,
    })
}

pub(super) fn row_lease(r: &Row) -> Lease {
    Lease {
        execution: r.get(0),
        owner: Owner {
            id: r.get(1),
            pid: r.get::<_, i64>(2) as u32,
            host: r.get(3),
            started: r.get::<_, i64>(4) as u64,
        },
        token: r.get::<_, i64>(5) as u64,
        expires_ms: r.get::<_, i64>(6) as u64,
    }
}

pub(super) const CHECKPOINT_COLUMNS: &str =
    "id, parent, machine, status, state, step, created_ms, updated_ms, record, digest";

/// A checkpoint read back, refused when it does not match its digest.
pub(super) fn row_checkpoint(r: &Row) -> Result<Checkpoint, BackendError> {
    let c = Checkpoint {
        id: r.get(0),
        parent: r.get(1),
        machine: r.get(2),
        status: status(r.get(3), ExecutionStatus::parse, ExecutionStatus::spellings)?,
        state: r.get(4),
        step: r.get::<_, i64>(5) as u64,
        created_ms: r.get::<_, i64>(6) as u64,
        updated_ms: r.get::<_, i64>(7) as u64,
        record: r.get(8),
        consumes_signal: None,
        fence: None,
        enqueue: Vec::new(),
        result: None,
    };
    let expected = checkpoint_digest(
        &c.id,
        c.status.as_str(),
        &c.state,
        r.get(5),
        r.get(7),
        &c.record,
    );
    verify(r.get(9), &expected, || {
        format!("the checkpoint of execution {}", c.id)
    })?;
    Ok(c)
}

/// A result read back (status, value, written at), checked against its digest.
pub(super) fn row_result(id: &str, r: &Row) -> Result<StoredResult, BackendError> {
    let (status_text, value, written): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
    let expected = result_digest(id, &status_text, &value, written);
    verify(r.get(3), &expected, || {
        format!("the result of execution {id}")
    })?;
    Ok(StoredResult {
        fence: None,
        status: status(
            &status_text,
            ExecutionStatus::parse,
            ExecutionStatus::spellings,
        )?,
        value: json_column(Some(value), &format!("result of {id}"))?.unwrap_or(Value::Null),
        written_ms: written as u64,
        counts_toward: None,
    })
}

fn verify(
    stored: Option<String>,
    expected: &str,
    what: impl FnOnce() -> String,
) -> Result<(), BackendError> {
    match stored {
        Some(s) if s != expected => Err(BackendError::of(
            StoreErrorKind::Corrupt,
            format!(
                "{} does not match its checksum: it changed since it was written",
                what()
            ),
        )),
        _ => Ok(()),
    }
}

pub(super) fn signal_data(seq: i64, text: String) -> Result<Value, BackendError> {
    serde_json::from_str(&text).map_err(|e| {
        BackendError::of(
            StoreErrorKind::Corrupt,
            format!("signal {seq} is not JSON: {e}"),
        )
    })
}

pub(super) fn state_value(execution: &str, key: &str, text: &str) -> Result<Value, BackendError> {
    serde_json::from_str(text).map_err(|e| {
        BackendError::of(
            StoreErrorKind::Corrupt,
            format!("state `{key}` of {execution} is not JSON: {e}"),
        )
    })
}
