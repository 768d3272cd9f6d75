//! The run queue: executions submitted by one process and run by whichever
//! worker process claims them. A submitted execution is stored `queued` (its
//! definition pinned, nothing run yet) and put on the job pool
//! [`EXECUTIONS_POOL`] as `{"execution": id}`, with the id as the job's
//! idempotency key; a worker claims the job (lease, fencing token, retries
//! and the reaper as for every pool), takes the execution tree's lease and
//! runs it with the local driver until it finishes, fails or parks.
//!
//! A queued execution's fan-out spreads over the workers: its children
//! become queued executions of their own (each under its own lease), the
//! parent opens a fan-in counter and parks (its job ends; it holds no
//! lease and no task). Each child's first result counts the counter down in
//! the same store write as the result; the write that reaches zero (or a
//! child that decides a `mode: any` fan-out) pushes the parent's wake-up
//! job, and whichever worker claims it gathers the children's results and
//! goes on. Launches of a queued execution go on the queue too.
//!
//! An execution with a deadline (`submit --deadline`, the machine's
//! `settings.timeout`) has a second job, due at the deadline: whichever
//! worker claims it takes the execution wherever it is (queued, waiting,
//! parked) and ends it cancelled with kind `timeout`. Its fan-out children
//! inherit the deadline; a worker running one ends it at the deadline too.

use super::advance::Frame;
use super::driver::to_checkpoint;
use super::history::Event;
use super::owner::Held;
use super::record::{Failure, FanInRef, Pending, Record, Status};
use super::step::{self, Outcomes, Save, Settled};
use super::{Engine, EngineError, Outcome};
use crate::backend::{FanIn, NewJob, StoredResult};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// The job pool executions wait in for a worker.
pub const EXECUTIONS_POOL: &str = "executions";

/// How to submit.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The execution's id, an idempotency key (default: a new id).
    pub id: Option<String>,
    /// Cancelled with kind `timeout` if not finished this long after the
    /// submit (the machine's `settings.timeout` applies too; the earlier
    /// wins).
    pub deadline: Option<std::time::Duration>,
}

/// What `submit` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    /// False: an execution with this id existed already (it was not
    /// submitted again).
    pub created: bool,
}

impl Engine {
    /// Stores a new execution of the machine in `file` as `queued` and puts
    /// it on the run queue. `id` is an idempotency key: an execution that
    /// exists already is left as it is (and put on the queue again if it is
    /// still queued, in case the first submit stopped between the two).
    pub async fn submit(
        self: &Arc<Self>,
        file: &Path,
        input: Value,
        id: Option<String>,
    ) -> Result<Submitted, EngineError> {
        let options = SubmitOptions {
            id,
            ..Default::default()
        };
        self.submit_with(file, input, options).await
    }

    /// [`Engine::submit`] with a deadline.
    pub async fn submit_with(
        self: &Arc<Self>,
        file: &Path,
        input: Value,
        options: SubmitOptions,
    ) -> Result<Submitted, EngineError> {
        let id = options.id.unwrap_or_else(Engine::new_execution_id);
        let jobs = |deadline_ms: Option<u64>| {
            let mut jobs = vec![run_job(&id, &id)];
            if let Some(at) = deadline_ms {
                jobs.push(self.run_job_at(&id, &format!("{id}/deadline"), at));
            }
            jobs
        };
        match self.backend.load(&id).await? {
            Some(cp) if cp.status != Status::Queued => Ok(Submitted { id, created: false }),
            Some(cp) => {
                // Stored by a submit that stopped before its jobs were (or
                // they are there: idempotency keys make this a no-op).
                let deadline_ms = super::services::parse_record(&cp)?.deadline_ms;
                self.backend
                    .push_many(EXECUTIONS_POOL, jobs(deadline_ms))
                    .await?;
                Ok(Submitted { id, created: false })
            }
            None => {
                let (def, definition) = self.pin_file(file).await?;
                let mut rec = self.new_record(&def, &definition, id.clone(), None, input);
                let asked = options.deadline.map(|d| self.deadline_in(d));
                rec.deadline_ms = earliest(rec.deadline_ms, asked);
                rec.queued = true;
                // (An initial context that did not render is an error the
                // worker's first step reports.)
                rec.status = Status::Queued;
                // Nobody owns it yet: nothing to fence. The execution and its
                // run-queue jobs are stored in one write.
                let mut checkpoint = to_checkpoint(&rec, self.now(), None, None)?;
                checkpoint.enqueue = jobs(rec.deadline_ms)
                    .into_iter()
                    .map(|j| (EXECUTIONS_POOL.to_string(), j))
                    .collect();
                self.backend.save(checkpoint).await?;
                Ok(Submitted { id, created: true })
            }
        }
    }

    /// Runs a queued execution (or continues one a worker left behind):
    /// takes its tree's lease and drives it until it finishes, fails or
    /// parks.
    pub async fn run_queued(self: &Arc<Self>, id: &str) -> Result<Outcome, EngineError> {
        let owner = self.owner_of(id).await?;
        let held: Held = self.own(&owner.id).await?;
        let result = match self.load_record(id).await {
            Ok(mut rec) if rec.status == Status::Queued => {
                rec.status = match rec.error {
                    Some(_) => Status::Failed,
                    None => Status::Running,
                };
                match self.frame_of(&rec, &held, false).await {
                    Ok(frame) => self.drive(frame, rec, true).await,
                    Err(e) => Err(e),
                }
            }
            Ok(rec) => self.resume_owned(rec, &held, Default::default()).await,
            Err(e) => Err(e),
        };
        self.disown(held).await;
        result
    }
}

/// The earlier of two optional deadlines.
pub(super) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The run-queue job that runs execution `id`; `key` makes it exist once
/// (the id for a submit or a child, the fan-in's key for a wake-up).
pub(super) fn run_job(id: &str, key: &str) -> NewJob {
    NewJob {
        idempotency_key: Some(key.to_string()),
        max_retries: 10,
        ..NewJob::new(json!({ "execution": id }))
    }
}

/// What spreading a fan-out's children over the run queue came to.
pub(super) enum Spread {
    /// Enough children have ended: the fan-in goes on now.
    All(Outcomes),
    /// The parent is parked (stored); a child's result wakes it.
    Parked,
}

/// A stored result as the outcome [`step::settle`] reads. A child that was
/// cancelled because a deadline passed (kind `timeout`) failed, as a local
/// child stopped by its state's timeout does.
fn outcome_of(id: &str, r: StoredResult) -> Outcome {
    let error = (r.status != Status::Done)
        .then(|| serde_json::from_value::<Failure>(r.value.clone()).ok())
        .flatten();
    let timed_out = r.status == Status::Cancelled
        && error
            .as_ref()
            .is_some_and(|f| f.kind == crate::failure::FailureKind::Timeout);
    Outcome {
        id: id.to_string(),
        machine: String::new(),
        status: if timed_out { Status::Failed } else { r.status },
        output: (r.status == Status::Done).then_some(r.value),
        error,
        waiting: None,
    }
}

impl Engine {
    /// The store-clock instant `d` from now (`d` bounded like every
    /// duration from outside).
    pub(super) fn deadline_in(&self, d: std::time::Duration) -> u64 {
        let ms = d.min(crate::duration::MAX).as_millis() as u64;
        self.now().saturating_add(ms)
    }

    /// [`run_job`], due at `at_ms` (store clock).
    fn run_job_at(&self, id: &str, key: &str, at_ms: u64) -> NewJob {
        NewJob {
            delay_ms: at_ms.saturating_sub(self.now()),
            ..run_job(id, key)
        }
    }

    /// Puts a queued execution back on the run queue, once per `why` and
    /// attempt of the state it is in.
    pub(super) async fn requeue(&self, rec: &Record, why: &str) -> Result<(), EngineError> {
        let key = format!("{}/{}/{}/{why}", rec.id, rec.step, rec.attempt);
        self.backend
            .push(EXECUTIONS_POOL, run_job(&rec.id, &key))
            .await?;
        Ok(())
    }

    /// The execution whose lease covers `id`: itself when it runs on the
    /// run queue or has no parent, else its parent's owner (children run by
    /// the local driver run under their root's lease).
    pub async fn owner_of(&self, id: &str) -> Result<Record, EngineError> {
        let mut rec = self.load_record(id).await?;
        while !rec.queued
            && let Some(parent) = rec.parent.clone()
        {
            rec = self.load_record(&parent).await?;
        }
        Ok(rec)
    }

    /// The fan-in a queued child's result counts toward, if it has one.
    pub(super) fn counts_toward(rec: &Record) -> Option<Box<FanIn>> {
        let (fan_in, parent) = (rec.fan_in.as_ref()?, rec.parent.as_ref()?);
        Some(Box::new(FanIn {
            key: fan_in.key.clone(),
            wake_pool: EXECUTIONS_POOL.to_string(),
            wake: run_job(parent, &fan_in.key),
            wake_now: fan_in.any && rec.status == Status::Done,
            next: fan_in.next.as_ref().map(|n| run_job(n, n)),
        }))
    }

    /// A queued execution's fan-out: gathers the children that have ended;
    /// unless that decides the state, stores the others as queued
    /// executions, opens the fan-in counter, puts them on the run queue and
    /// parks the parent. Each step is idempotent, so a worker that dies
    /// midway leaves nothing the next one cannot finish.
    pub(super) async fn spread_children(
        self: &Arc<Self>,
        frame: &Frame,
        rec: &mut Record,
    ) -> Result<Spread, EngineError> {
        let Some(pending) = rec.pending.clone() else {
            return Ok(Spread::All(Outcomes::default()));
        };
        let key = format!("{}/{}/{}", rec.id, rec.step, rec.attempt);
        let ids: Vec<String> = pending.children.iter().map(|c| c.id.clone()).collect();
        // At most twice: a counter that opens at zero means every child
        // ended before it opened.
        for _ in 0..2 {
            let (mut outcomes, missing, decided) = self.gathered(&pending).await?;
            let timed_out = !missing.is_empty()
                && !decided
                && pending.deadline_ms.is_some_and(|at| self.now() >= at);
            if missing.is_empty() || decided || timed_out {
                // The children still out no longer count: a decided
                // `mode: any`, or the state's timeout passed (they fail the
                // state, as with the local driver).
                let (reason, failure) = if timed_out {
                    let state = frame.def.state(&rec.state)?;
                    let limit = state.timeout.map(crate::duration::clamp_secs);
                    let failure = step::children_timed_out(&rec.state, limit.unwrap_or_default());
                    (
                        "children did not finish within the state's timeout",
                        Some(failure),
                    )
                } else {
                    (
                        "another child of the `mode: any` fan-out finished first",
                        None,
                    )
                };
                let late: Vec<&String> = missing.iter().map(|&i| &ids[i]).collect();
                self.cancel_children(&late, reason).await?;
                step::give_up(&mut outcomes, failure.as_ref());
                crate::crash::point("fanin.gathered");
                return Ok(Spread::All(outcomes));
            }
            let missing: Vec<String> = missing.into_iter().map(|i| ids[i].clone()).collect();
            let created = self
                .store_children(frame, rec, &pending, &key, &missing)
                .await?;
            if created == pending.children.len() {
                let started = Event::ChildrenStarted {
                    state: rec.state.clone(),
                    children: created,
                };
                self.note(frame, rec, started);
            }
            let remaining = self
                .backend
                .open_fan_in(&key, ids.clone(), Some(frame.fence.clone()))
                .await?;
            if remaining == 0 {
                continue;
            }
            // At most `max_concurrency` at once: each child's result pushes
            // the job of the one that many places after it.
            let mut jobs: Vec<NewJob> = missing
                .iter()
                .take(pending.max_concurrency.max(1))
                .map(|id| run_job(id, id))
                .collect();
            // With a state timeout, the parent wakes then whatever happens.
            if let Some(at) = pending.deadline_ms {
                jobs.push(self.run_job_at(&rec.id, &format!("{key}/timeout"), at));
            }
            crate::crash::point("fanout.jobs.before");
            self.backend.push_many(EXECUTIONS_POOL, jobs).await?;
            if let Some(o) = &self.observer {
                o.fanout(&rec.id, &rec.state, missing.len());
            }
            // Awaited: the lease is released next, and a wake-up may come at once.
            self.save(frame, rec, Save::Awaited).await?;
            return Ok(Spread::Parked);
        }
        Err(EngineError::Invalid(format!(
            "execution {}: the fan-in {key} counts no children left, yet some have no result",
            rec.id
        )))
    }

    /// Cancels children of a fan-out that no longer count (a decided
    /// `mode: any`, a passed state timeout); those a worker runs get a
    /// cancel request.
    async fn cancel_children(
        self: &Arc<Self>,
        children: &[&String],
        reason: &str,
    ) -> Result<(), EngineError> {
        let options = super::CancelOptions {
            reason: reason.into(),
            launched: false,
        };
        for id in children {
            match self.cancel(id, &options).await {
                // (It ended meanwhile, or was never stored.)
                Ok(_) | Err(EngineError::Finished(_)) | Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The outcomes of the children that have a result, the indexes of
    /// those that have none, and whether the ended ones decide the state.
    async fn gathered(
        &self,
        pending: &Pending,
    ) -> Result<(Outcomes, Vec<usize>, bool), EngineError> {
        let mut outcomes = Outcomes::new(pending.children.len());
        let mut missing = Vec::new();
        let mut decided = false;
        for (i, child) in pending.children.iter().enumerate() {
            match self.backend.read_result(&child.id).await? {
                Some(r) => {
                    let o = outcome_of(&child.id, r);
                    decided |= step::settle(pending, &mut outcomes, i, &o) == Settled::Decided;
                }
                None => missing.push(i),
            }
        }
        Ok((outcomes, missing, decided))
    }

    /// Stores the children in `missing` that have no record yet as queued
    /// executions counting toward fan-in `key`; returns how many.
    async fn store_children(
        &self,
        frame: &Frame,
        rec: &Record,
        pending: &Pending,
        key: &str,
        missing: &[String],
    ) -> Result<usize, EngineError> {
        let known = self.backend.statuses(missing).await?;
        let window = pending.max_concurrency.max(1);
        let next_of: std::collections::HashMap<&String, String> = pending
            .children
            .iter()
            .zip(pending.children.iter().skip(window))
            .map(|(c, next)| (&c.id, next.id.clone()))
            .collect();
        let mut created = 0;
        for child in pending
            .children
            .iter()
            .filter(|c| !known.contains_key(&c.id))
        {
            if !missing.contains(&child.id) {
                continue;
            }
            let def = frame.def.children.get(&child.machine).ok_or_else(|| {
                EngineError::Invalid(format!("no child machine `{}`", child.machine))
            })?;
            let mut c = self.new_record(
                def,
                &frame.definition,
                child.id.clone(),
                Some(rec.id.clone()),
                child.input.clone(),
            );
            c.queued = true;
            c.status = Status::Queued;
            // A child ends by its parent's deadline or its state's timeout,
            // if not its own earlier.
            c.deadline_ms = earliest(
                c.deadline_ms,
                earliest(rec.deadline_ms, pending.deadline_ms),
            );
            c.fan_in = Some(FanInRef {
                key: key.to_string(),
                any: pending.any,
                next: next_of.get(&child.id).cloned(),
            });
            // Under the parent's fence: a parent that lost its lease
            // creates nothing.
            let checkpoint = to_checkpoint(&c, self.now(), None, Some(&frame.fence))?;
            self.backend.save_deferred(checkpoint).await?;
            crate::crash::point("fanout.child.stored");
            created += 1;
        }
        Ok(created)
    }

    /// Puts launched children of a queued execution on the run queue: each
    /// is stored queued (under its own lease from then on) and its job
    /// pushed before the parent marks it started.
    pub(super) async fn queue_launch(
        &self,
        frame: &Frame,
        def: &super::MachineDef,
        rec: &Record,
        launch: &super::record::Launch,
    ) -> Result<(), EngineError> {
        if self.backend.load(&launch.id).await?.is_none() {
            let mut c = self.new_record(
                def,
                &frame.definition,
                launch.id.clone(),
                Some(rec.id.clone()),
                launch.input.clone(),
            );
            c.queued = true;
            c.status = Status::Queued;
            let checkpoint = to_checkpoint(&c, self.now(), None, Some(&frame.fence))?;
            self.backend.save_deferred(checkpoint).await?;
            crate::crash::point("launch.stored");
        }
        self.backend
            .push(EXECUTIONS_POOL, run_job(&launch.id, &launch.id))
            .await?;
        crate::crash::point("launch.pushed");
        Ok(())
    }
}
