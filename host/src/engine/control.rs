//! What an operator does to a stored execution, under the lease that
//! covers it and with fenced writes:
//! - cancel it in any status: one no process runs (waiting for a signal,
//!   parked on its children, queued, abandoned) ends `cancelled` here with
//!   its unfinished children, the reason as their error and result; one a
//!   live process runs (this one or another, on any host sharing the store)
//!   gets a cancel request, stored as a signal on [`CANCEL_CHANNEL`], which
//!   its owner sees within a fraction of a second: its running plugins see
//!   `cancelled()`, and it ends `cancelled` at once. Launched (detached)
//!   children keep running unless [`CancelOptions::launched`] says so;
//! - retry a failed one: it goes on from the state that failed, as a new
//!   attempt (a fan-out state starts its children afresh), keeping its
//!   history — here, or on the run queue if it ran there.

use super::driver::to_checkpoint;
use super::history::{self, Event};
use super::owner::{CANCEL_CHANNEL, Held};
use super::record::{Failure, Record, Status};
use super::{Engine, EngineError};
use super::{Outcome, ResumeOptions};
use crate::backend::Fence;
use crate::failure::FailureKind;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// What to cancel, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelOptions {
    pub reason: String,
    /// Cancel the execution's launched (detached) children too.
    pub launched: bool,
}

/// How a cancel went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// Executions ended `cancelled` (the one named and its descendants).
    pub ended: usize,
    /// Executions live processes run: each has a cancel request, and ends
    /// when its owner sees it.
    pub requested: Vec<String>,
}

impl Engine {
    /// Cancels execution `id` and its children: ends those no process runs,
    /// and asks the owners of running ones to stop them (see the module
    /// doc). Returns at once; [`Engine::cancel_and_wait`] waits for the
    /// running ones to end.
    pub async fn cancel(
        self: &Arc<Self>,
        id: &str,
        options: &CancelOptions,
    ) -> Result<Cancelled, EngineError> {
        let rec = self.load_record(id).await?;
        if rec.status.is_terminal() {
            return Err(EngineError::Finished(format!(
                "execution {id} is {} already; there is nothing to cancel",
                rec.status
            )));
        }
        let owner = self.owner_of(id).await?;
        if let Some(running) = self.leases.cancel_of(&owner.id) {
            if owner.id != id {
                return Err(EngineError::Owned(format!(
                    "execution {id} runs inside the tree of {}, which this process runs: cancel that one",
                    owner.id
                )));
            }
            // This engine runs it: ask its tree here too.
            let done = self.request_cancel(id, &options.reason).await?;
            running.request(FailureKind::Cancelled, options.reason.clone());
            return Ok(done);
        }
        let held = match self.own(&owner.id).await {
            Ok(held) => held,
            Err(EngineError::Owned(_)) if owner.id == id => {
                return self.request_cancel(id, &options.reason).await;
            }
            Err(EngineError::Owned(m)) => {
                return Err(EngineError::Owned(format!(
                    "{m}\nexecution {id} runs inside the tree of {}: cancel that one",
                    owner.id
                )));
            }
            Err(e) => return Err(e),
        };
        let result = self.cancel_tree(rec, options, &held).await;
        self.disown(held).await;
        result
    }

    /// [`Engine::cancel`], then waits up to `timeout` for the running
    /// executions it asked to stop to end; returns what is still running
    /// then. (An owner that parked one before it saw the request has left
    /// it to no one: it is cancelled here.)
    pub async fn cancel_and_wait(
        self: &Arc<Self>,
        id: &str,
        options: &CancelOptions,
        timeout: Duration,
    ) -> Result<Cancelled, EngineError> {
        let mut done = self.cancel(id, options).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        while !done.requested.is_empty() {
            let statuses = self.backend.statuses(&done.requested).await?;
            let mut still = Vec::new();
            for running in std::mem::take(&mut done.requested) {
                match statuses.get(&running) {
                    Some(s) if s.is_terminal() => done.ended += 1,
                    _ => still.push(running),
                }
            }
            done.requested = still;
            if done.requested.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
            for running in std::mem::take(&mut done.requested) {
                let lease = self.backend.lease(&running).await?;
                if super::owner::live_holder(lease.as_ref(), self.now()).is_some() {
                    done.requested.push(running);
                    continue;
                }
                match self.cancel(&running, options).await {
                    Ok(more) => {
                        done.ended += more.ended;
                        done.requested.extend(more.requested);
                    }
                    // It ended meanwhile (cancelled by its owner, or not).
                    Err(EngineError::Finished(_)) => done.ended += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(done)
    }

    /// Stores a cancel request for `id`, which a live process runs (stored
    /// even when this process runs it, so it is seen if the tree parks
    /// before it looks).
    async fn request_cancel(&self, id: &str, reason: &str) -> Result<Cancelled, EngineError> {
        self.backend
            .send_signal(id, CANCEL_CHANNEL, json!({ "reason": reason }))
            .await?;
        Ok(Cancelled {
            ended: 0,
            requested: vec![id.to_string()],
        })
    }

    /// Re-runs a failed root execution from the state that failed, as a new
    /// attempt; its failed result is removed until the new one is written.
    pub async fn retry(self: &Arc<Self>, id: &str) -> Result<Outcome, EngineError> {
        let root = self.owner_of(id).await?;
        // A child is retried through the execution whose state ran it: its
        // tree's root, or (on the run queue) the parent of its fan-out.
        let through = match (&root.fan_in, &root.parent) {
            (Some(_), Some(parent)) => Some(parent.as_str()),
            _ => (root.id != id).then_some(root.id.as_str()),
        };
        if let Some(through) = through {
            return Err(EngineError::Invalid(format!(
                "execution {id} is a child of {through}: retry the root, which re-runs the state that ran it"
            )));
        }
        let held = self.own(id).await?;
        let result = self.retry_owned(id, &held).await;
        self.disown(held).await;
        result
    }

    async fn retry_owned(
        self: &Arc<Self>,
        id: &str,
        held: &super::owner::Held,
    ) -> Result<Outcome, EngineError> {
        let mut rec = self.load_record(id).await?;
        if rec.status != Status::Failed {
            return Err(EngineError::Finished(format!(
                "execution {id} is {}; only a failed execution can be retried",
                rec.status
            )));
        }
        let failed = rec.error.take();
        rec.status = Status::Running;
        rec.attempt += 1;
        rec.pending = None;
        rec.output = None;
        let retried = Event::Retried {
            state: rec.state.clone(),
            attempt: rec.attempt,
            after: failed.map(|f| f.kind),
        };
        history::note(&mut rec, self.now(), &retried);
        if let Some(o) = &self.observer {
            o.event(&rec, &retried);
        }
        self.backend.delete_result(id).await?;
        // Stored before it runs: a crash now leaves a running execution to
        // resume, not a failed one without its result.
        let events = std::mem::take(&mut rec.journal);
        self.backend
            .append_history(id, events, history::DEFAULT_LIMIT)
            .await?;
        self.backend
            .save(to_checkpoint(&rec, self.now(), None, Some(&held.fence()))?)
            .await?;
        if rec.queued {
            // It runs where it ran: a worker continues it.
            self.requeue(&rec, "retry").await?;
            return Ok(Outcome {
                status: Status::Queued,
                ..super::driver::outcome(&rec)
            });
        }
        self.resume_owned(rec, held, ResumeOptions::default()).await
    }

    /// Cancels `rec` (not finished) and its unfinished descendants, under
    /// `held`, the lease that covers it.
    async fn cancel_tree(
        &self,
        rec: Record,
        options: &CancelOptions,
        held: &Held,
    ) -> Result<Cancelled, EngineError> {
        // Every unfinished descendant, parents first.
        let mut tree = Vec::new();
        let mut todo = vec![rec];
        while let Some(rec) = todo.pop() {
            let launched = rec.launches.iter().filter(|_| options.launched);
            let children: Vec<String> = rec
                .pending
                .iter()
                .flat_map(|p| &p.children)
                .map(|c| c.id.clone())
                .chain(launched.map(|l| l.id.clone()))
                .collect();
            for (child, status) in self.backend.statuses(&children).await? {
                if !status.is_terminal() {
                    todo.push(self.load_record(&child).await?);
                }
            }
            tree.push(rec);
        }
        // Children on the run queue hold leases of their own: take them
        // first; one a live process runs gets a cancel request instead.
        let mut leases = Vec::new();
        let mut requested = Vec::new();
        let mut refused = None;
        for rec in tree.iter().filter(|r| r.queued && r.id != held.execution) {
            match self.own(&rec.id).await {
                Ok(h) => leases.push(h),
                Err(EngineError::Owned(_)) => requested.push(rec.id.clone()),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        // (A launched child of a tree not on the run queue runs under the
        // tree's lease, taken already.)
        tree.retain(|r| !requested.contains(&r.id));
        let result = match refused {
            Some(e) => Err(e),
            None => {
                async {
                    for id in &requested {
                        self.request_cancel(id, &options.reason).await?;
                    }
                    self.end_all(&mut tree, &options.reason, held, &leases)
                        .await
                }
                .await
            }
        };
        for h in leases {
            self.release(h).await;
        }
        Ok(Cancelled {
            ended: result?,
            requested,
        })
    }

    /// Ends every record of `tree` cancelled, each under the lease that
    /// covers it (its own, or the tree's).
    async fn end_all(
        &self,
        tree: &mut [Record],
        reason: &str,
        held: &Held,
        leases: &[Held],
    ) -> Result<usize, EngineError> {
        // Children first, so no child is left running under a cancelled parent.
        for rec in tree.iter_mut().rev() {
            let lease = leases
                .iter()
                .find(|h| h.execution == rec.id)
                .unwrap_or(held);
            self.end_cancelled(rec, reason, &lease.fence()).await?;
        }
        Ok(tree.len())
    }

    async fn end_cancelled(
        &self,
        rec: &mut Record,
        reason: &str,
        fence: &Fence,
    ) -> Result<(), EngineError> {
        rec.status = Status::Cancelled;
        rec.waiting_for = None;
        rec.error = Some(Failure {
            kind: FailureKind::Cancelled,
            message: reason.to_string(),
            state: rec.state.clone(),
            retry_after_ms: None,
        });
        let now = self.now();
        let cancelled = Event::Cancelled {
            state: rec.state.clone(),
            reason: reason.to_string(),
        };
        let finished = history::finished(rec);
        for event in [&cancelled, &finished] {
            history::note(rec, now, event);
            if let Some(o) = &self.observer {
                o.event(rec, event);
            }
        }
        // (The machine is not loaded to cancel: its history is kept under
        // the default bound.)
        let events = std::mem::take(&mut rec.journal);
        self.backend
            .append_history(&rec.id, events, history::DEFAULT_LIMIT)
            .await?;
        self.save_final(rec, None, fence).await
    }
}
