//! What the command line (and later the daemon) asks of stored executions,
//! as library calls: describe one (status, state, progress of its children,
//! who runs it, error, result), read its history, wait for its result, and
//! signal one. The edges only print or
//! serialise what these return.

use super::record::{Failure, Launch, Record, Status};
use super::{Engine, EngineError, owner};
use crate::backend::{Backend, Checkpoint, HistoryEntry, StoredResult};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// One execution as `flowhost status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Description {
    pub id: String,
    pub machine: String,
    pub status: Status,
    pub state: String,
    pub step: u64,
    pub parent: Option<String>,
    /// Digest of the pinned definition it runs.
    pub definition: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The process running its tree now, if one is.
    pub owner: Option<Holder>,
    /// Running, yet no live process runs it: `resume` continues it. (One
    /// on the run queue is never abandoned: the queue gives it to a worker
    /// again.)
    pub abandoned: bool,
    /// On the run queue and parked on its children, which run on workers:
    /// the last one to finish puts it back on the queue.
    pub parked: bool,
    /// The execution whose lease covers it (itself on the run queue, else
    /// its tree's root, where `resume` starts).
    #[serde(skip)]
    pub root: String,
    pub input: Value,
    pub context: Value,
    pub waiting_for: Option<String>,
    /// The children of the state it is in (foreach, parallel machines).
    pub children: Option<Progress>,
    pub launches: Vec<Launch>,
    pub error: Option<Failure>,
    pub result: Option<Value>,
    pub result_uri: String,
}

/// The process that runs an execution tree.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub lease_expires_in_ms: u64,
}

/// How far the children of a fan-out state are (read from the children's
/// own records: the parent's record does not keep their outcomes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Parked on a signal.
    pub waiting: usize,
}

impl Progress {
    async fn of(backend: &dyn Backend, rec: &Record) -> Result<Option<Progress>, EngineError> {
        let Some(pending) = rec.pending.as_ref() else {
            return Ok(None);
        };
        let ids: Vec<String> = pending.children.iter().map(|c| c.id.clone()).collect();
        let mut p = Progress {
            total: ids.len(),
            ..Progress::default()
        };
        for status in backend.statuses(&ids).await?.values() {
            match status {
                Status::Done => p.done += 1,
                Status::Failed => p.failed += 1,
                Status::Cancelled => p.cancelled += 1,
                Status::Waiting => p.waiting += 1,
                Status::Queued | Status::Running => {}
            }
        }
        Ok(Some(p))
    }
}

/// The stored record of a checkpoint.
pub(super) fn parse_record(cp: &Checkpoint) -> Result<Record, EngineError> {
    serde_json::from_str(&cp.record).map_err(|e| {
        EngineError::Invalid(format!("the checkpoint of `{}` cannot be read: {e}", cp.id))
    })
}

async fn checkpoint(backend: &dyn Backend, id: &str) -> Result<Checkpoint, EngineError> {
    backend
        .load(id)
        .await?
        .ok_or_else(|| EngineError::NotFound(id.to_string()))
}

/// Describes the execution `id` of a store.
pub async fn describe(backend: &dyn Backend, id: &str) -> Result<Description, EngineError> {
    let cp = checkpoint(backend, id).await?;
    let rec = parse_record(&cp)?;
    let result = backend.read_result(id).await?;
    // The lease is held on the tree's root, or on an execution of the run
    // queue itself.
    let mut root = rec.clone();
    while !root.queued
        && let Some(parent) = root.parent.clone()
    {
        match backend.load(&parent).await? {
            Some(p) => root = parse_record(&p)?,
            None => break,
        }
    }
    let lease = backend.lease(&root.id).await?;
    let now = backend.clock().now_ms();
    let holder = owner::live_holder(lease.as_ref(), now);
    let active = cp.status == Status::Running;
    let parked = active && holder.is_none() && rec.queued && rec.pending.is_some();
    Ok(Description {
        children: Progress::of(backend, &rec).await?,
        id: cp.id.clone(),
        machine: cp.machine,
        status: cp.status,
        state: cp.state,
        step: cp.step,
        parent: cp.parent,
        definition: rec.definition,
        created_ms: cp.created_ms,
        updated_ms: cp.updated_ms,
        owner: holder.map(|l| Holder {
            pid: l.owner.pid,
            host: l.owner.host.clone(),
            lease_expires_in_ms: l.expires_ms.saturating_sub(now),
        }),
        abandoned: active && holder.is_none() && !root.queued,
        parked,
        root: root.id,
        input: rec.input,
        context: rec.context,
        waiting_for: rec.waiting_for,
        launches: rec.launches,
        error: rec.error,
        result: result.map(|r| r.value),
        result_uri: format!("flowhost://{}/result", cp.id),
    })
}

/// The state diagram of the machine execution `id` runs: from its pinned
/// definition (what it runs even if the file changed since), else from its
/// config file.
pub async fn graph(
    backend: &dyn Backend,
    id: &str,
) -> Result<crate::config::graph::Graph, EngineError> {
    let rec = parse_record(&checkpoint(backend, id).await?)?;
    let pinned = match &rec.definition {
        Some(digest) => match backend.get_definition(digest).await? {
            Some(body) => {
                let definition = super::Definition::decode(digest, &body)?;
                definition
                    .file(&rec.source.path)
                    .map(|f| (f.file.clone(), f.text.clone()))
            }
            None => None,
        },
        None => None,
    };
    let machine = match pinned {
        Some((file, text)) => crate::config::parse(&file, &text),
        None => crate::config::load(&rec.source.file),
    }
    .map_err(EngineError::Config)?;
    Ok(crate::config::graph::Graph::of(&machine))
}

/// The history of execution `id`: events after `after` (a `seq`), oldest
/// first, at most `limit`.
pub async fn history(
    backend: &dyn Backend,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, EngineError> {
    checkpoint(backend, id).await?;
    Ok(backend.history(id, after, limit).await?)
}

/// How [`wait`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    /// The execution finished; its durable result.
    Finished(StoredResult),
    /// The time ran out; the execution is still in this status.
    TimedOut(Status),
}

/// Waits until execution `id` has a result, or `timeout` passes. The store
/// is read again after pauses that grow from 5 ms to 250 ms (SQLite tells
/// no other process when a result is written), so an idle wait costs a few
/// reads a second.
pub async fn wait(
    backend: &dyn Backend,
    id: &str,
    timeout: Option<Duration>,
) -> Result<Waited, EngineError> {
    wait_woken(backend, id, timeout, None).await
}

/// [`wait`], also reading the store again as soon as `wake` is notified
/// (by whoever writes results in this process: the daemon's own workers),
/// so a result written here is seen at once.
pub async fn wait_woken(
    backend: &dyn Backend,
    id: &str,
    timeout: Option<Duration>,
    wake: Option<&tokio::sync::Notify>,
) -> Result<Waited, EngineError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut pause = Duration::from_millis(5);
    loop {
        // Listening before the read, so a result written between the read
        // and the pause still wakes it.
        let woken = wake.map(|n| n.notified());
        tokio::pin!(woken);
        if let Some(w) = woken.as_mut().as_pin_mut() {
            w.enable();
        }
        if let Some(result) = backend.read_result(id).await? {
            return Ok(Waited::Finished(result));
        }
        let cp = checkpoint(backend, id).await?;
        let now = tokio::time::Instant::now();
        let next = match deadline {
            Some(d) if now >= d => return Ok(Waited::TimedOut(cp.status)),
            Some(d) => (now + pause).min(d),
            None => now + pause,
        };
        match woken.as_mut().as_pin_mut() {
            Some(w) => {
                tokio::select! {
                    _ = w => {}
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
            None => tokio::time::sleep_until(next).await,
        }
        pause = (pause * 3 / 2).min(Duration::from_millis(250));
    }
}

/// What a signal found when it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The execution waits on this channel: it continues when resumed.
    Awaited,
    /// It waits on another channel; the signal is kept for a later state.
    OtherChannel(String),
    /// It does not wait (it is running); the signal is kept for a later
    /// `wait_for` on the channel.
    NotWaiting(Status),
}

/// A stored signal, and where to resume so the execution (and every
/// parent waiting on it) continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signalled {
    pub delivery: Delivery,
    pub root: String,
    /// The execution runs on the run queue and waited on this channel: it
    /// was put back on the queue, and a worker continues it.
    pub queued: bool,
}

impl Engine {
    /// Stores a signal for execution `id` on `channel`. A finished
    /// execution takes no more signals ([`EngineError::Finished`]).
    pub async fn signal(
        &self,
        id: &str,
        channel: &str,
        data: Value,
    ) -> Result<Signalled, EngineError> {
        let rec = self.load_record(id).await?;
        if rec.status.is_terminal() {
            return Err(EngineError::Finished(format!(
                "execution {id} is {}; it takes no more signals",
                rec.status
            )));
        }
        self.backend.send_signal(id, channel, data).await?;
        // Read again once the signal is stored: an execution that parked on
        // the channel meanwhile looked for signals before this one existed,
        // and is woken here; one that parks after this read finds the
        // signal itself (it looks after its waiting checkpoint is stored).
        let rec = self.load_record(id).await?;
        let delivery = match &rec.waiting_for {
            Some(c) if c == channel => Delivery::Awaited,
            Some(c) => Delivery::OtherChannel(c.clone()),
            None => Delivery::NotWaiting(rec.status),
        };
        let queued = rec.queued && delivery == Delivery::Awaited;
        if queued {
            // Once per wait: the key names the state it waits in.
            self.requeue(&rec, "signal").await?;
        }
        let root = self.owner_of(id).await?;
        Ok(Signalled {
            delivery,
            root: root.id,
            queued,
        })
    }
}
