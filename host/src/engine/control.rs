//! What an operator does to a stored execution that no process is running,
//! under its tree's lease (so a live owner is refused, named — stop it
//! first) and with fenced writes:
//! - cancel one waiting for a signal, parked on its children, queued or
//!   abandoned: it and its unfinished children end `cancelled`, with the
//!   reason as their error and result; launched (detached) children keep
//!   running;
//! - retry a failed one: it goes on from the state that failed, as a new
//!   attempt (a fan-out state starts its children afresh), keeping its
//!   history.

use super::driver::to_checkpoint;
use super::history::{self, Event};
use super::record::{Failure, Record, Status};
use super::{Engine, EngineError};
use super::{Outcome, ResumeOptions};
use crate::backend::Fence;
use crate::failure::FailureKind;
use std::sync::Arc;

impl Engine {
    /// Cancels execution `id` and its children; returns how many executions
    /// ended (it and its descendants that had not finished).
    pub async fn cancel(self: &Arc<Self>, id: &str, reason: &str) -> Result<usize, EngineError> {
        let owner = self.owner_of(id).await?;
        let held = self.own(&owner.id).await?;
        let result = self.cancel_tree(id, reason, &held).await;
        self.disown(held).await;
        result
    }

    /// Re-runs a failed root execution from the state that failed, as a new
    /// attempt; its failed result is removed until the new one is written.
    pub async fn retry(self: &Arc<Self>, id: &str) -> Result<Outcome, EngineError> {
        let root = self.owner_of(id).await?;
        if root.id != id {
            return Err(EngineError::Invalid(format!(
                "execution {id} is a child of {}: retry the root, which re-runs the state that ran it",
                root.id
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
        self.resume_owned(rec, held, ResumeOptions::default()).await
    }

    async fn cancel_tree(
        &self,
        id: &str,
        reason: &str,
        held: &super::owner::Held,
    ) -> Result<usize, EngineError> {
        let rec = self.load_record(id).await?;
        if rec.status.is_terminal() {
            return Err(EngineError::Finished(format!(
                "execution {id} is {} already; there is nothing to cancel",
                rec.status
            )));
        }
        // Every unfinished descendant, parents first.
        let mut tree = Vec::new();
        let mut todo = vec![rec];
        while let Some(rec) = todo.pop() {
            let children: Vec<String> = rec
                .pending
                .iter()
                .flat_map(|p| &p.children)
                .map(|c| c.id.clone())
                .collect();
            for (child, status) in self.backend.statuses(&children).await? {
                if !status.is_terminal() {
                    todo.push(self.load_record(&child).await?);
                }
            }
            tree.push(rec);
        }
        // Children on the run queue hold leases of their own: take them all
        // first, so nothing is cancelled while one still runs somewhere.
        let mut leases = Vec::new();
        let mut refused = None;
        for rec in tree.iter().filter(|r| r.queued && r.id != held.execution) {
            match self.own(&rec.id).await {
                Ok(h) => leases.push(h),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let result = match refused {
            Some(e) => Err(e),
            None => self.end_all(&mut tree, reason, held, &leases).await,
        };
        for h in leases {
            self.release(h).await;
        }
        result
    }

    /// Ends every record of `tree` cancelled, each under the lease that
    /// covers it (its own, or the tree's).
    async fn end_all(
        &self,
        tree: &mut [Record],
        reason: &str,
        held: &super::owner::Held,
        leases: &[super::owner::Held],
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
        });
        let now = self.now();
        let cancelled = Event::Cancelled {
            state: rec.state.clone(),
            reason: reason.to_string(),
        };
        history::note(rec, now, &cancelled);
        history::note(rec, now, &history::finished(rec));
        // (The machine is not loaded to cancel: its history is kept under
        // the default bound.)
        let events = std::mem::take(&mut rec.journal);
        self.backend
            .append_history(&rec.id, events, history::DEFAULT_LIMIT)
            .await?;
        self.backend
            .save(to_checkpoint(rec, now, None, Some(fence))?)
            .await?;
        self.write_result(rec, fence).await
    }
}
