//! Storage behind the engine and the workers: execution checkpoints, durable
//! results, signals, pinned machine definitions, execution state (atomic
//! key/value operations), execution ownership (leases), job pools and the worker
//! registry, as async traits with an in-memory implementation (tests,
//! `run --memory`), an embedded SQLite one (the default) and a PostgreSQL
//! one (several hosts sharing one database).
//!
//! The backend stores what the engine hands it without reading it: a
//! checkpoint is a few indexed columns plus the engine's serialised record,
//! a pinned machine definition is text under its digest.
//! Imports nothing else from flowhost.

pub mod clock;
mod digest;
pub mod history;
mod memory;
mod memory_pools;
pub mod owners;
pub mod pools;
mod postgres;
mod sqlite;
mod sqlite_pools;
pub mod state;
pub mod status;
mod write_queue;

pub use clock::{Clock, HostClock, ManualClock, SystemClock, SystemTimeSource, TimeSource};
pub use history::{History, HistoryEntry, NewEvent};
pub use memory::MemoryBackend;
pub use owners::{Claim, Lease, Owner, Ownership};
pub use pools::{
    Backlog, Backoff, FailOutcome, Job, NewJob, PoolStats, WorkPools, WorkerInfo, Workers,
};
pub use postgres::{PostgresBackend, RECONNECT_FOR, is_postgres_url};
pub use sqlite::{Durability, SqliteBackend};
pub use state::{State, StateAnswer, StateConflict, StateOp};
pub use status::{ExecutionStatus, JobStatus, WorkerStatus};

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// A failure of the store itself. Callers decide by its [`StoreErrorKind`];
/// a stale fence or a lost lease is not an error but an answer (`false`,
/// [`FailOutcome::Rejected`], [`Claim::Held`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {message}")]
pub struct BackendError {
    pub kind: StoreErrorKind,
    pub message: String,
}

/// What kind of store failure it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The database named does not exist (commands that read never create one).
    NotFound,
    /// Another process held the database's lock for longer than the store waits.
    Busy,
    /// The disk (or the database's size limit) is full: nothing was written.
    Full,
    /// The database file is damaged or not a database; stored text is not
    /// what was written.
    Corrupt,
    /// The database is newer than this flowhost, or a file is not usable as
    /// one (a directory, a missing folder, no WAL).
    Incompatible,
    /// The database or its folder cannot be written.
    ReadOnly,
    /// Anything else: an I/O error, a stopped writer.
    Io,
    /// The write's fencing token is stale: another process owns the
    /// execution now, and this write was refused.
    Conflict,
}

impl StoreErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::NotFound => "not_found",
            StoreErrorKind::Busy => "busy",
            StoreErrorKind::Full => "full",
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Incompatible => "incompatible",
            StoreErrorKind::ReadOnly => "read_only",
            StoreErrorKind::Io => "io",
            StoreErrorKind::Conflict => "conflict",
        }
    }
}

impl BackendError {
    /// An [`StoreErrorKind::Io`] error.
    pub fn new(message: impl Into<String>) -> Self {
        Self::of(StoreErrorKind::Io, message)
    }

    pub fn of(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
        }
    }

    /// The same error with where it happened in front of its message.
    pub fn at(self, place: impl std::fmt::Display) -> Self {
        BackendError {
            kind: self.kind,
            message: format!("{place}: {}", self.message),
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// One execution's latest checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checkpoint {
    pub id: String,
    pub parent: Option<String>,
    pub machine: String,
    pub status: ExecutionStatus,
    pub state: String,
    pub step: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The engine's record, serialised.
    pub record: String,
    /// A signal (by [`Signal::seq`]) this checkpoint consumes: it is deleted
    /// in the same transaction that stores the checkpoint, so a crash keeps
    /// either both the signal and the older checkpoint or neither. Only for
    /// writing; always `None` when read.
    #[serde(skip)]
    pub consumes_signal: Option<u64>,
    /// The lease the write is made under: refused unless `fence.token` is
    /// still the lease's token. Only for writing; `None` when read.
    #[serde(skip)]
    pub fence: Option<Fence>,
    /// Jobs pushed (pool, job) in the same transaction as the checkpoint:
    /// an execution and the job that runs it exist together or not at all.
    /// Only for writing; empty when read.
    #[serde(skip)]
    pub enqueue: Vec<(String, NewJob)>,
    /// The execution's result, written in the same transaction (an ended
    /// execution and its result exist together or not at all), as
    /// [`Results::write_result`] would, under the checkpoint's fence. Only
    /// for writing; `None` when read.
    #[serde(skip)]
    pub result: Option<StoredResult>,
}

/// A write's claim to ownership: the tree's root and the lease token the
/// writer holds on it ([`Ownership`]). A store refuses a fenced write once
/// another owner took the lease (its token is higher): a paused process
/// that lost its lease cannot overwrite what the new owner wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub root: String,
    pub token: u64,
}

impl Fence {
    pub(crate) fn refused(&self) -> BackendError {
        BackendError::of(
            StoreErrorKind::Conflict,
            format!(
                "lost ownership of `{}`: another process took it over (this write's lease token {} is stale); the write was refused",
                self.root, self.token
            ),
        )
    }
}

/// A signal waiting for an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Its place in the store's order of signals; names it for
    /// [`Checkpoint::consumes_signal`].
    pub seq: u64,
    pub data: Value,
}

/// Which executions to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<ExecutionStatus>,
    pub machine: Option<String>,
    /// Only executions without a parent.
    pub roots_only: bool,
    /// Only the children of this execution.
    pub parent: Option<String>,
    /// Only executions listed after this one (newest first): the
    /// `(created_ms, id)` of the last one of the previous page.
    pub after: Option<(u64, String)>,
    /// Only executions created at or after this time (ms since the epoch).
    pub created_from: Option<u64>,
    /// Only executions created before this time (ms since the epoch).
    pub created_before: Option<u64>,
    /// Only executions whose id starts with this.
    pub id_prefix: Option<String>,
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Whether a created time falls in the filter's range.
    pub fn in_range(&self, created_ms: u64) -> bool {
        self.created_from.is_none_or(|f| created_ms >= f)
            && self.created_before.is_none_or(|b| created_ms < b)
    }
}

/// How many executions there are of one machine in one status, root
/// executions and children apart: kept as executions change (a trigger in
/// the SQL stores), so reading them costs nothing however many there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionCount {
    pub root: bool,
    pub machine: String,
    pub status: ExecutionStatus,
    pub count: u64,
}

/// The final outcome of an execution, addressable as `flowhost://<id>/result`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredResult {
    /// As [`Checkpoint::fence`].
    #[serde(skip)]
    pub fence: Option<Fence>,
    /// `done` or `failed`.
    pub status: ExecutionStatus,
    /// The output (done) or `{kind, message, state}` (failed).
    pub value: Value,
    pub written_ms: u64,
    /// The fan-in this result counts toward (a child of a fan-out on the
    /// run queue); write-only, like the fence.
    #[serde(skip)]
    pub counts_toward: Option<Box<FanIn>>,
}

/// A fan-in counter a child's result counts down, in the same write as the
/// result: the first result of each child counts once (a result written
/// again counts nothing), and the count reaching zero pushes `wake` (a job
/// with an idempotency key, so it exists once).
#[derive(Debug, Clone, PartialEq)]
pub struct FanIn {
    /// Names the counter ([`Results::open_fan_in`]).
    pub key: String,
    pub wake_pool: String,
    pub wake: NewJob,
    /// Push `wake` even before the count reaches zero (a child that decides
    /// a `mode: any` fan-out).
    pub wake_now: bool,
    /// Pushed (to `wake_pool`) with the first result, whatever the count:
    /// the next child's job, when a `max_concurrency` lets only so many run
    /// at once.
    pub next: Option<NewJob>,
}

/// Latest checkpoint per execution.
#[async_trait::async_trait]
pub trait Checkpoints: Send + Sync {
    /// Saves (replaces) the execution's checkpoint; returns once it is stored.
    async fn save(&self, checkpoint: Checkpoint) -> BackendResult<()>;
    /// Queues a save without waiting for it to be stored. Writes are applied
    /// in the order they were made, so a later [`Checkpoints::save`] (or any
    /// waited-for write) returning means this one is stored too. A failure
    /// is reported by a later write.
    async fn save_deferred(&self, checkpoint: Checkpoint) -> BackendResult<()> {
        self.save(checkpoint).await
    }
    async fn load(&self, id: &str) -> BackendResult<Option<Checkpoint>>;
    /// Newest first.
    async fn list(&self, filter: &ListFilter) -> BackendResult<Vec<Checkpoint>>;
    /// The statuses of these executions (those the store has), read at
    /// once: how far a fan-out's children are.
    async fn statuses(&self, ids: &[String]) -> BackendResult<HashMap<String, ExecutionStatus>>;
    /// Executions by root or child, machine and status (those not zero).
    async fn counts(&self) -> BackendResult<Vec<ExecutionCount>>;
}

/// Durable results of finished executions.
#[async_trait::async_trait]
pub trait Results: Send + Sync {
    async fn write_result(&self, id: &str, result: StoredResult) -> BackendResult<()>;
    async fn read_result(&self, id: &str) -> BackendResult<Option<StoredResult>>;
    /// Removes a result (an execution retried after it failed); awaited.
    async fn delete_result(&self, id: &str) -> BackendResult<()>;
    /// Opens fan-in counter `key` for `children` unless it is open already:
    /// it starts at the number of them that have no result yet, counted in
    /// the same write, so a child finishing meanwhile is counted exactly once
    /// (here or by its own result). Returns the count as it now is. Fenced
    /// like a checkpoint. Awaited: it covers every write queued before it.
    async fn open_fan_in(
        &self,
        key: &str,
        children: Vec<String>,
        fence: Option<Fence>,
    ) -> BackendResult<u64>;
}

/// Data sent to a waiting execution on a named channel.
#[async_trait::async_trait]
pub trait Signals: Send + Sync {
    async fn send_signal(&self, id: &str, channel: &str, data: Value) -> BackendResult<()>;
    /// Takes the oldest signal on the channel, if any.
    async fn take_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Value>>;
    /// The oldest signal on the channel, left in place: a checkpoint that
    /// records its effect consumes it ([`Checkpoint::consumes_signal`]).
    async fn peek_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Signal>>;
}

/// Machine definitions that executions are pinned to, stored once under
/// their content digest (the engine computes it; the store keeps the text).
#[async_trait::async_trait]
pub trait Definitions: Send + Sync {
    /// Stores `body` under `digest` unless something is stored there already.
    /// Like [`Checkpoints::save_deferred`] it is not waited for: it is stored
    /// before any write made after it, and a failure is reported by a later
    /// write.
    async fn put_definition(&self, digest: &str, body: &str) -> BackendResult<()>;
    async fn get_definition(&self, digest: &str) -> BackendResult<Option<String>>;
}

/// Everything the engine and the workers need from a store.
pub trait Backend:
    Checkpoints + Results + Signals + Definitions + History + State + WorkPools + Workers + Ownership
{
    /// A short description for messages (`sqlite:/path/flowhost.db`, `memory`).
    fn describe(&self) -> String;
    /// The clock the store decides time by; the engine and workers use it too.
    fn clock(&self) -> &dyn Clock {
        &SystemClock
    }
}

/// Where a store lives, as `--db` and `FLOWHOST_DB` name it: a
/// `postgres://` (or `postgresql://`) URL, else an SQLite file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    pub fn parse(text: &std::ffi::OsStr) -> Location {
        match text.to_str() {
            Some(url) if is_postgres_url(url) => Location::Postgres(url.to_string()),
            _ => Location::Sqlite(std::path::PathBuf::from(text)),
        }
    }

    /// The SQLite file's folder; `None` for a server's database.
    pub fn folder(&self) -> Option<&std::path::Path> {
        match self {
            Location::Sqlite(path) => Some(
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new(".")),
            ),
            Location::Postgres(_) => None,
        }
    }
}

/// Opens the store at `location`. `create`: make what is missing (the
/// SQLite file, flowhost's tables); otherwise a store with nothing in it
/// yet is an error and nothing is written. `durability` is SQLite's
/// (PostgreSQL commits as the server is set: `synchronous_commit`).
pub async fn open(
    location: &Location,
    durability: Durability,
    create: bool,
) -> BackendResult<std::sync::Arc<dyn Backend>> {
    Ok(match (location, create) {
        (Location::Sqlite(path), true) => {
            std::sync::Arc::new(SqliteBackend::open(path, durability)?)
        }
        (Location::Sqlite(path), false) => {
            std::sync::Arc::new(SqliteBackend::open_existing(path, durability)?)
        }
        (Location::Postgres(url), true) => std::sync::Arc::new(PostgresBackend::open(url).await?),
        (Location::Postgres(url), false) => {
            std::sync::Arc::new(PostgresBackend::open_existing(url).await?)
        }
    })
}

/// Milliseconds since the Unix epoch, by the system clock (for what no
/// store decides: messages, benchmarks).
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// An execution id given from outside (`submit --id`, the API, a result
/// address): 1–200 characters of letters, digits and `- _ . :` — what the
/// engine's own ids (`<uuid>`, `<parent>:<step>:<index>`) are made of.
pub fn check_execution_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id `{}` must be 1–200 characters of letters, digits and - _ . :",
            crate::text::escape_control(id)
        ))
    }
}

/// The execution id named by `flowhost://<id>/result`, `flatagents://<id>/result`
/// or a bare id.
pub fn parse_result_uri(uri: &str) -> Result<String, String> {
    let rest = match uri.split_once("://") {
        None => {
            check_execution_id(uri)?;
            return Ok(uri.to_string());
        }
        Some(("flowhost" | "flatagents", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "`{}`: unknown scheme `{}` (expected flowhost:// or flatagents://)",
                crate::text::escape_control(uri),
                crate::text::escape_control(scheme)
            ));
        }
    };
    let id = rest.strip_suffix("/result").unwrap_or(rest);
    if id.is_empty() || id.contains('/') {
        return Err(format!(
            "`{}` is not a result address (expected flowhost://<execution-id>/result)",
            crate::text::escape_control(uri)
        ));
    }
    check_execution_id(id)?;
    Ok(id.to_string())
}

#[cfg(test)]
mod conformance;
