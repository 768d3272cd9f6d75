//! Execution ownership: one process at a time runs an execution tree. The
//! process holds a lease on the tree's root (taken atomically, renewed while
//! it runs, released when it stops); every acquisition bumps a fencing token,
//! so a holder can tell it lost the lease. Memory and SQLite implementations
//! (PostgreSQL's are in `postgres`).

use super::memory::MemoryBackend;
use super::sqlite::{Op, SqliteBackend};
use super::sqlite_pools::fault;
use super::{BackendError, BackendResult};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A process that runs executions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Unique per process (a UUID).
    pub id: String,
    pub pid: u32,
    pub host: String,
    /// When the process started, in the kernel's clock ticks since boot
    /// (0 when unknown): tells a live holder from a new process with a reused pid.
    pub started: u64,
}

/// Who holds an execution, with which token, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub execution: String,
    pub owner: Owner,
    pub token: u64,
    /// Milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

impl Lease {
    /// Whether the lease is still in force at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires_ms > now
    }
}

/// What an acquisition found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the lease now.
    Acquired(Lease),
    /// Another owner holds it.
    Held(Lease),
}

#[async_trait::async_trait]
pub trait Ownership: Send + Sync {
    /// Takes the lease on `execution` for `lease_ms` if nobody holds it, it
    /// expired, the caller already holds it, or its holder's token is `evict`
    /// (a holder the caller knows is dead). Atomic across processes.
    async fn acquire(
        &self,
        execution: &str,
        owner: &Owner,
        lease_ms: u64,
        evict: Option<u64>,
    ) -> BackendResult<Claim>;
    /// Takes the lease on an execution nobody else can know of yet (a new
    /// id, before anything about it is stored), with token 1. Stores may
    /// queue the write without waiting: it is ordered before everything the
    /// caller writes next, so whoever sees the execution sees its lease. If a
    /// lease on that id existed after all, the caller's first renewal fails
    /// and it stops: never two owners.
    async fn acquire_new(
        &self,
        execution: &str,
        owner: &Owner,
        lease_ms: u64,
    ) -> BackendResult<Lease> {
        match self.acquire(execution, owner, lease_ms, None).await? {
            Claim::Acquired(lease) => Ok(lease),
            Claim::Held(lease) => Err(BackendError::new(format!(
                "execution `{}` is already owned by pid {} on {}",
                execution, lease.owner.pid, lease.owner.host
            ))),
        }
    }
    /// Extends the lease; `false` when `token` no longer holds it.
    async fn renew(&self, execution: &str, token: u64, lease_ms: u64) -> BackendResult<bool>;
    /// Gives the lease up (the token stays, so the next holder's is higher).
    /// Stores may apply it with their next write rather than at once (SQLite
    /// does, or when it closes); until then the lease looks held, and it
    /// expires by itself in any case.
    async fn release(&self, execution: &str, token: u64) -> BackendResult<()>;
    /// The latest lease on `execution` (live or expired), if any.
    async fn lease(&self, execution: &str) -> BackendResult<Option<Lease>>;
}

#[async_trait::async_trait]
impl Ownership for MemoryBackend {
    async fn acquire(
        &self,
        execution: &str,
        owner: &Owner,
        lease_ms: u64,
        evict: Option<u64>,
    ) -> BackendResult<Claim> {
        let now = self.clock.now_ms();
        let mut data = self.lock();
        let current = data.leases.get(execution);
        if let Some(l) = current
            && l.live(now)
            && l.owner.id != owner.id
            && evict != Some(l.token)
        {
            return Ok(Claim::Held(l.clone()));
        }
        let lease = Lease {
            execution: execution.to_string(),
            owner: owner.clone(),
            token: current.map_or(1, |l| l.token + 1),
            expires_ms: now.saturating_add(lease_ms),
        };
        data.leases.insert(execution.to_string(), lease.clone());
        Ok(Claim::Acquired(lease))
    }

    async fn renew(&self, execution: &str, token: u64, lease_ms: u64) -> BackendResult<bool> {
        let mut data = self.lock();
        match data.leases.get_mut(execution) {
            Some(l) if l.token == token => {
                l.expires_ms = self.clock.now_ms().saturating_add(lease_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, execution: &str, token: u64) -> BackendResult<()> {
        if let Some(l) = self.lock().leases.get_mut(execution)
            && l.token == token
        {
            l.expires_ms = 0;
        }
        Ok(())
    }

    async fn lease(&self, execution: &str) -> BackendResult<Option<Lease>> {
        Ok(self.lock().leases.get(execution).cloned())
    }
}

const LEASE_COLUMNS: &str = "execution, owner, pid, host, started, token, expires_ms";

fn row_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        execution: r.get(0)?,
        owner: Owner {
            id: r.get(1)?,
            pid: r.get::<_, i64>(2)? as u32,
            host: r.get(3)?,
            started: r.get::<_, i64>(4)? as u64,
        },
        token: r.get::<_, i64>(5)? as u64,
        expires_ms: r.get::<_, i64>(6)? as u64,
    })
}

fn to_value<T: Serialize>(v: T) -> BackendResult<Value> {
    serde_json::to_value(v).map_err(fault)
}

#[async_trait::async_trait]
impl Ownership for SqliteBackend {
    async fn acquire(
        &self,
        execution: &str,
        owner: &Owner,
        lease_ms: u64,
        evict: Option<u64>,
    ) -> BackendResult<Claim> {
        let clock = self.clock.clone();
        let (execution, owner) = (execution.to_string(), owner.clone());
        let (acquired, lease): (bool, Lease) = self
            .exec(move |tx| {
                let now = clock.now_ms() as i64;
                let expires = (now as u64).saturating_add(lease_ms).min(i64::MAX as u64) as i64;
                let evict = evict.map_or(-1, |t| t as i64);
                let sql = format!(
                    "INSERT INTO owners ({LEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)
                     ON CONFLICT(execution) DO UPDATE SET owner = excluded.owner, pid = excluded.pid,
                       host = excluded.host, started = excluded.started, token = owners.token + 1,
                       expires_ms = excluded.expires_ms
                     WHERE owners.expires_ms <= ?7 OR owners.owner = excluded.owner OR owners.token = ?8
                     RETURNING {LEASE_COLUMNS}"
                );
                let got = tx
                    .prepare_cached(&sql)
                    .and_then(|mut s| {
                        s.query_row(
                            params![
                                execution,
                                owner.id,
                                owner.pid as i64,
                                owner.host,
                                owner.started as i64,
                                expires,
                                now,
                                evict
                            ],
                            row_lease,
                        )
                        .optional()
                    })
                    .map_err(fault)?;
                match got {
                    Some(lease) => to_value((true, lease)),
                    None => {
                        let held = tx
                            .query_row(
                                &format!("SELECT {LEASE_COLUMNS} FROM owners WHERE execution = ?1"),
                                params![execution],
                                row_lease,
                            )
                            .map_err(fault)?;
                        to_value((false, held))
                    }
                }
            })
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
        let clock = self.clock.clone();
        let lease = Lease {
            execution: execution.to_string(),
            owner: owner.clone(),
            token: 1,
            expires_ms: clock.now_ms().saturating_add(lease_ms),
        };
        let l = lease.clone();
        // Goes to the writer with the caller's next write (its first checkpoint).
        self.send_lazy(Op::Custom(Box::new(move |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO owners ({LEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)
                         ON CONFLICT(execution) DO NOTHING"
                ),
                params![
                    l.execution,
                    l.owner.id,
                    l.owner.pid as i64,
                    l.owner.host,
                    l.owner.started as i64,
                    l.expires_ms.min(i64::MAX as u64) as i64
                ],
            )
            .map_err(fault)?;
            Ok(Value::Null)
        })));
        Ok(lease)
    }

    async fn renew(&self, execution: &str, token: u64, lease_ms: u64) -> BackendResult<bool> {
        let clock = self.clock.clone();
        let execution = execution.to_string();
        self.exec(move |tx| {
            let expires = clock.now_ms().saturating_add(lease_ms).min(i64::MAX as u64) as i64;
            let n = tx
                .execute(
                    "UPDATE owners SET expires_ms = ?1 WHERE execution = ?2 AND token = ?3",
                    params![expires, execution, token as i64],
                )
                .map_err(fault)?;
            Ok(Value::Bool(n == 1))
        })
        .await
    }

    async fn release(&self, execution: &str, token: u64) -> BackendResult<()> {
        let execution = execution.to_string();
        // Needs no commit of its own: it goes with the next write, or when
        // the store closes (a lease not given up expires by itself).
        self.send_lazy(Op::Custom(Box::new(move |tx| {
            tx.execute(
                "UPDATE owners SET expires_ms = 0 WHERE execution = ?1 AND token = ?2",
                params![execution, token as i64],
            )
            .map_err(fault)?;
            Ok(Value::Null)
        })));
        Ok(())
    }

    async fn lease(&self, execution: &str) -> BackendResult<Option<Lease>> {
        let execution = execution.to_string();
        let conn = self.reader();
        conn.query_row(
            &format!("SELECT {LEASE_COLUMNS} FROM owners WHERE execution = ?1"),
            params![execution],
            row_lease,
        )
        .optional()
        .map_err(|e| fault(e).at(self.path().display()))
    }
}
