//! The local driver: carries out what each [`Step`] asks — saves the record
//! (awaited or queued, as the step says), creates launched executions from
//! the outbox and starts them detached, runs children as tokio tasks
//! (bounded by `max_concurrency`), sleeps before retries, parks. It decides
//! nothing about an execution's course; that is `step.rs`.

use super::advance::Frame;
use super::advance::history_limit;
use super::history::Event;
use super::queue::Spread;
use super::record::{Child, Failure, Pending, Record, Status};
use super::services::parse_record;
use super::step::{self, Next, Outcomes, Save, Settled, Step};
use super::{Definition, Engine, EngineError, MachineDef, Tree, Trees, definition, machines};
use crate::backend::{Checkpoint, Fence, StoredResult};
use crate::plugin::CancelToken;
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// What running a fan-out's children gave.
enum Gathered {
    /// Every child has an outcome: the fan-in can go on.
    All(Outcomes),
    /// A child waits for a signal (so the parent parks).
    Waiting(Waiting),
}

/// How a run or resume ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub id: String,
    pub machine: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// For a waiting execution: which execution waits, on which channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Waiting {
    pub execution: String,
    pub channel: String,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// How [`Engine::resume_with`] treats the execution's pinned definition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeOptions {
    /// Continue on the machine files and plugins as they are now (pinning
    /// them anew) instead of the definition the execution started with. The
    /// state the execution is in must still exist.
    pub upgrade: bool,
}

impl Engine {
    /// Loads (once) the machine tree of a root file.
    pub fn load(&self, file: &Path) -> Result<Arc<MachineDef>, EngineError> {
        Ok(self.load_root(file)?.1.def)
    }

    /// The warm pools of the plugins this engine has loaded, by name.
    pub fn warm_stats(&self) -> Vec<(String, crate::plugin::WarmStats)> {
        self.runners.warm_stats()
    }

    /// Plugin `name` changed on disk (a hot reload): machines loaded from
    /// files are loaded again on their next use, with the new version; trees
    /// pinned by running executions keep the version they were pinned to.
    pub fn plugin_changed(&self, name: &str) {
        self.runners.forget(name);
        self.lock_trees().by_file.clear();
    }

    fn load_root(&self, file: &Path) -> Result<(PathBuf, Tree), EngineError> {
        let key = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        if let Some(tree) = self.lock_trees().by_file.get(&key) {
            return Ok((key, tree.clone()));
        }
        let (def, definition) = machines::load_tree(file, &*self.runners)?;
        let (digest, body) = definition.encode()?;
        let tree = Tree {
            def,
            digest: digest.clone().into(),
            unstored: Some(body.into()),
        };
        let mut trees = self.lock_trees();
        trees.by_digest.entry(digest).or_insert(tree.def.clone());
        trees.by_file.insert(key.clone(), tree.clone());
        Ok((key, tree))
    }

    /// Loads a root file's tree and stores its definition (once per engine),
    /// so executions can be pinned to it.
    pub(super) async fn pin_file(
        &self,
        file: &Path,
    ) -> Result<(Arc<MachineDef>, Arc<str>), EngineError> {
        let (key, tree) = self.load_root(file)?;
        if let Some(body) = &tree.unstored {
            // Queued ahead of the first checkpoint that names it.
            self.backend.put_definition(&tree.digest, body).await?;
            if let Some(t) = self.lock_trees().by_file.get_mut(&key) {
                t.unstored = None;
            }
        }
        Ok((tree.def, tree.digest))
    }

    /// The tree a stored definition pins.
    async fn pinned(&self, digest: &str) -> Result<Arc<MachineDef>, EngineError> {
        if let Some(def) = self.lock_trees().by_digest.get(digest) {
            return Ok(def.clone());
        }
        let body = self.backend.get_definition(digest).await?.ok_or_else(|| {
            EngineError::Invalid(format!(
                "the machine definition {} this execution runs is not in {}",
                definition::short(digest),
                self.backend.describe()
            ))
        })?;
        let pinned = Definition::decode(digest, &body)?;
        let def = machines::load_pinned(&pinned, &*self.runners)?;
        self.lock_trees()
            .by_digest
            .insert(digest.to_string(), def.clone());
        Ok(def)
    }

    /// The machine an execution runs and the digest of its tree's definition:
    /// the pinned one, or with `upgrade` (and for records from before
    /// definitions were pinned) the root file as it is now.
    async fn def_of(
        &self,
        rec: &Record,
        upgrade: bool,
    ) -> Result<(Arc<MachineDef>, Arc<str>), EngineError> {
        let (root, digest) = match &rec.definition {
            Some(d) if !upgrade => (self.pinned(d).await?, Arc::from(d.as_str())),
            _ => self.pin_file(&rec.source.file).await?,
        };
        Ok((root.find(&rec.source.path)?, digest))
    }

    /// Now, by the store's clock.
    pub(super) fn now(&self) -> u64 {
        self.backend.clock().now_ms()
    }

    fn lock_trees(&self) -> std::sync::MutexGuard<'_, Trees> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new execution id (time-ordered).
    pub fn new_execution_id() -> String {
        new_id()
    }

    /// Starts a new execution of the machine in `file` and runs it until it
    /// finishes, fails or waits for a signal.
    pub async fn start(
        self: &Arc<Self>,
        file: &Path,
        input: Value,
    ) -> Result<Outcome, EngineError> {
        self.start_with_id(file, input, new_id()).await
    }

    /// [`Engine::start`] with an id chosen by the caller, so the caller can
    /// name the execution even when the run ends in an error.
    pub async fn start_with_id(
        self: &Arc<Self>,
        file: &Path,
        input: Value,
        id: String,
    ) -> Result<Outcome, EngineError> {
        let (def, definition) = self.pin_file(file).await?;
        if self.backend.load(&id).await?.is_some() {
            return Err(EngineError::Invalid(format!(
                "execution `{id}` exists already; `flowhost resume {id}` continues it"
            )));
        }
        let held = self.own_new(&id).await?;
        let rec = self.new_record(&def, &definition, id, None, input);
        self.leases.set_deadline(&held.execution, rec.deadline_ms);
        let frame = Frame {
            def,
            definition,
            cancel: held.cancel.token.clone(),
            stop: held.stop.clone(),
            fence: held.fence(),
        };
        let result = self.drive(frame, rec, true).await;
        self.disown(held).await;
        result
    }

    /// Continues an execution from its latest checkpoint (also one that is
    /// waiting and has received its signal). The process must own the
    /// execution's tree: resuming one that a live process runs is refused.
    /// It runs the definition it started with: machine files edited or
    /// deleted since change nothing, and a plugin replaced since is refused
    /// ([`EngineError::Changed`]).
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<Outcome, EngineError> {
        self.resume_with(id, ResumeOptions::default()).await
    }

    /// [`Engine::resume`] with [`ResumeOptions`].
    pub async fn resume_with(
        self: &Arc<Self>,
        id: &str,
        options: ResumeOptions,
    ) -> Result<Outcome, EngineError> {
        let owner = self.owner_of(id).await?;
        let held = self.own(&owner.id).await?;
        // Read again under the lease: the previous owner may have moved it on.
        let result = match self.load_record(id).await {
            Ok(rec) => self.resume_owned(rec, &held, options).await,
            Err(e) => Err(e),
        };
        self.disown(held).await;
        result
    }

    pub(super) async fn resume_owned(
        self: &Arc<Self>,
        rec: Record,
        held: &super::owner::Held,
        options: ResumeOptions,
    ) -> Result<Outcome, EngineError> {
        let frame = self.frame_of(&rec, held, options.upgrade).await?;
        if rec.status.is_terminal() {
            // Launched children that did not finish are continued too.
            let mut rec = rec;
            self.start_launches(&frame, &mut rec, true).await?;
            return Ok(outcome(&rec));
        }
        self.drive(frame, rec, false).await
    }

    /// What a stored execution runs under: its pinned definition (or, with
    /// `upgrade`, the one on disk now) and the tree's lease.
    pub(super) async fn frame_of(
        &self,
        rec: &Record,
        held: &super::owner::Held,
        upgrade: bool,
    ) -> Result<Frame, EngineError> {
        let (def, definition) = self.def_of(rec, upgrade).await?;
        if upgrade && !rec.status.is_terminal() && def.state(&rec.state).is_err() {
            return Err(EngineError::Invalid(format!(
                "cannot upgrade execution `{}`: machine `{}` as it is now has no state `{}`, where the execution is",
                rec.id,
                def.config.name(),
                rec.state
            )));
        }
        if rec.id == held.execution {
            self.leases.set_deadline(&held.execution, rec.deadline_ms);
        }
        Ok(Frame {
            def,
            definition,
            cancel: held.cancel.token.clone(),
            stop: held.stop.clone(),
            fence: held.fence(),
        })
    }

    /// The root of an execution's tree (itself when it has no parent).
    pub async fn root_of(&self, id: &str) -> Result<Record, EngineError> {
        let mut root = self.load_record(id).await?;
        while let Some(parent) = root.parent.clone() {
            root = self.load_record(&parent).await?;
        }
        Ok(root)
    }

    /// The record of an execution.
    pub async fn load_record(&self, id: &str) -> Result<Record, EngineError> {
        let cp = self
            .backend
            .load(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
        parse_record(&cp)
    }

    /// Waits until every launched (detached) execution started by this
    /// engine has finished, then gives up the leases they ran under.
    pub async fn wait_detached(&self) {
        loop {
            let handles: Vec<_> = std::mem::take(&mut *self.lock_detached());
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.await;
            }
        }
        let held: Vec<_> = std::mem::take(&mut *self.lock_held());
        for h in held {
            self.release(h).await;
        }
    }

    /// Launched executions still running in this process.
    pub fn detached_running(&self) -> usize {
        self.lock_detached()
            .iter()
            .filter(|h| !h.is_finished())
            .count()
    }

    fn lock_detached(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.detached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries out a step's save: the history noted since the last save
    /// (queued), the checkpoint (queued or awaited), and for a finished
    /// execution the result.
    pub(super) async fn save(
        &self,
        frame: &Frame,
        rec: &mut Record,
        save: Save,
    ) -> Result<(), EngineError> {
        self.save_consuming(&frame.def, &frame.fence, rec, save, None)
            .await
    }

    /// [`Self::save`], deleting the delivered signal `consumes` in the same
    /// write (which is then made even when the policy saves nothing).
    async fn save_consuming(
        &self,
        def: &MachineDef,
        fence: &Fence,
        rec: &mut Record,
        save: Save,
        consumes: Option<u64>,
    ) -> Result<(), EngineError> {
        if !rec.journal.is_empty() {
            let events = std::mem::take(&mut rec.journal);
            self.backend
                .append_history(&rec.id, events, history_limit(def))
                .await?;
        }
        let rec = &*rec;
        let save = match (save, consumes) {
            (Save::Nothing, Some(_)) => Save::Queued,
            (s, _) => s,
        };
        match save {
            Save::Nothing => {}
            Save::Queued => {
                self.backend
                    .save_deferred(to_checkpoint(rec, self.now(), consumes, Some(fence))?)
                    .await?
            }
            Save::Awaited => {
                self.backend
                    .save(to_checkpoint(rec, self.now(), consumes, Some(fence))?)
                    .await?
            }
            Save::Final => self.save_final(rec, consumes, fence).await?,
        }
        Ok(())
    }

    /// Runs an execution until it finishes, fails or waits: steps it and
    /// carries out what each step says.
    pub(super) fn drive(
        self: &Arc<Self>,
        frame: Frame,
        mut rec: Record,
        fresh: bool,
    ) -> Boxed<'_, Result<Outcome, EngineError>> {
        Box::pin(async move {
            if rec.definition.as_deref() != Some(&*frame.definition) {
                // Pinned anew (an upgrade, or a record from before pinning).
                rec.definition = Some(frame.definition.to_string());
            }
            let mut step = if fresh {
                self.begin(&frame, &mut rec).await
            } else {
                Step {
                    save: Save::Nothing,
                    outbox: false,
                    next: Next::Continue,
                }
            };
            // A signal delivered by the last step, consumed by the next save.
            let mut consumed = None;
            loop {
                if step.outbox {
                    self.start_launches(&frame, &mut rec, false).await?;
                }
                self.save_consuming(
                    &frame.def,
                    &frame.fence,
                    &mut rec,
                    step.save,
                    consumed.take(),
                )
                .await?;
                match step.next {
                    Next::Continue => {}
                    Next::Retry(pause) => {
                        if let Some(o) = &self.observer {
                            o.retry(&rec.id, &rec.state, rec.attempt, pause);
                        }
                        // A stop or cancel request cuts the pause short
                        // (checked below, and by the next step).
                        let cancel = self.leases.cancel_of(&frame.fence.root).unwrap_or_default();
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = self.stop.requested() => {}
                            _ = frame.stop.requested() => {}
                            _ = cancel.reason.requested() => {}
                        }
                    }
                    Next::Children if rec.queued => {
                        match self.spread_children(&frame, &mut rec).await? {
                            Spread::Parked => return Ok(outcome(&rec)),
                            Spread::All(outcomes) => {
                                let finished = outcomes.summary(&rec.state);
                                self.note(&frame, &mut rec, finished);
                                step = self.fan_in(&frame, &mut rec, &outcomes).await;
                                continue;
                            }
                        }
                    }
                    Next::Children => match self.run_children(&frame, &mut rec).await? {
                        Gathered::Waiting(waiting) => {
                            let park = self.park_on_child(&frame, &mut rec);
                            self.save(&frame, &mut rec, park.save).await?;
                            let mut o = outcome(&rec);
                            o.waiting = Some(waiting);
                            return Ok(o);
                        }
                        Gathered::All(outcomes) => {
                            let finished = outcomes.summary(&rec.state);
                            self.note(&frame, &mut rec, finished);
                            step = self.fan_in(&frame, &mut rec, &outcomes).await;
                            continue;
                        }
                    },
                    Next::Park => {
                        // Parked on a channel (its waiting checkpoint stored):
                        // a signal already there is delivered at once.
                        if let Some(channel) = rec.waiting_for.clone()
                            && let Some(signal) =
                                self.backend.peek_signal(&rec.id, &channel).await?
                        {
                            let received = Event::SignalReceived {
                                state: rec.state.clone(),
                                channel,
                            };
                            self.note(&frame, &mut rec, received);
                            step = self.deliver(&frame, &mut rec, signal.data).await;
                            consumed = Some(signal.seq);
                            continue;
                        }
                        return Ok(outcome(&rec));
                    }
                    Next::End => return Ok(outcome(&rec)),
                }
                if let Some(reason) = self.stop_reason(&frame) {
                    let stopped = Event::Interrupted {
                        state: rec.state.clone(),
                        reason: reason.clone(),
                    };
                    self.note(&frame, &mut rec, stopped);
                    // Stored (and waited for) before anyone is told to resume.
                    self.save(&frame, &mut rec, Save::Awaited).await?;
                    return Err(EngineError::Interrupted {
                        id: rec.id.clone(),
                        state: rec.state.clone(),
                        step: rec.step,
                        reason,
                    });
                }
                step = self.step(&frame, &mut rec).await;
            }
        })
    }

    fn stop_reason(&self, frame: &Frame) -> Option<String> {
        self.stop.reason().or_else(|| frame.stop.reason())
    }

    /// Runs the pending children of the current state (a child that had
    /// finished before a resume only has its stored outcome read) and
    /// gathers their outcomes, unless one waits for a signal.
    async fn run_children(
        self: &Arc<Self>,
        frame: &Frame,
        rec: &mut Record,
    ) -> Result<Gathered, EngineError> {
        let Some(count) = rec.pending.as_ref().map(|p| p.children.len()) else {
            return Ok(Gathered::All(Outcomes::default()));
        };
        let started = Event::ChildrenStarted {
            state: rec.state.clone(),
            children: count,
        };
        self.note(frame, rec, started);
        let Some(pending) = &rec.pending else {
            return Ok(Gathered::All(Outcomes::default()));
        };
        let state = frame.def.state(&rec.state)?;
        let timeout = state.timeout.map(crate::duration::clamp_secs);
        let todo: VecDeque<usize> = (0..pending.children.len()).collect();
        let mut outcomes = Outcomes::new(pending.children.len());
        if let Some(o) = &self.observer {
            o.fanout(&rec.id, &rec.state, todo.len());
        }
        let tokens: Vec<CancelToken> = pending
            .children
            .iter()
            .map(|_| frame.cancel.child())
            .collect();
        let run = self.run_set(
            frame,
            pending,
            &mut outcomes,
            &tokens,
            todo,
            &rec.id,
            &rec.state,
        );
        let result = match timeout {
            None => run.await,
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r,
                Err(_) => {
                    // Stop the children; their outcomes say they timed out.
                    for t in &tokens {
                        t.cancel();
                    }
                    step::give_up(
                        &mut outcomes,
                        Some(&step::children_timed_out(&rec.state, limit)),
                    );
                    Ok(None)
                }
            },
        };
        if let Some(o) = &self.observer {
            o.fanout_done(&rec.id, &rec.state);
        }
        Ok(match result? {
            Some(waiting) => Gathered::Waiting(waiting),
            None => Gathered::All(outcomes),
        })
    }

    /// Runs the children in `todo`, at most `max_concurrency` at once.
    #[allow(clippy::too_many_arguments)]
    async fn run_set(
        self: &Arc<Self>,
        frame: &Frame,
        pending: &Pending,
        outcomes: &mut Outcomes,
        tokens: &[CancelToken],
        mut todo: VecDeque<usize>,
        parent: &str,
        state: &str,
    ) -> Result<Option<Waiting>, EngineError> {
        let mut running = tokio::task::JoinSet::new();
        let mut waiting = None;
        let mut error = None;
        let mut decided = false;
        loop {
            while running.len() < pending.max_concurrency && !decided {
                let Some(i) = todo.pop_front() else { break };
                let child = pending.children[i].clone();
                let def = frame
                    .def
                    .children
                    .get(&child.machine)
                    .cloned()
                    .ok_or_else(|| {
                        EngineError::Invalid(format!("no child machine `{}`", child.machine))
                    })?;
                let child_frame = Frame {
                    def,
                    definition: frame.definition.clone(),
                    cancel: tokens[i].clone(),
                    stop: frame.stop.clone(),
                    fence: frame.fence.clone(),
                };
                let engine = self.clone();
                let parent = parent.to_string();
                running.spawn(async move {
                    let result = engine.run_child(child_frame, child, parent).await;
                    (i, result)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (i, result) = match joined {
                Ok(r) => r,
                Err(e) => {
                    error
                        .get_or_insert(EngineError::Invalid(format!("a child task panicked: {e}")));
                    continue;
                }
            };
            if let Some(o) = &self.observer {
                o.child_finished(parent, state);
            }
            match result {
                Ok(o) => match step::settle(pending, outcomes, i, &o) {
                    Settled::Recorded => {}
                    Settled::Decided => {
                        decided = true;
                        for t in tokens {
                            t.cancel();
                        }
                    }
                    Settled::Waiting => {
                        waiting.get_or_insert(o.waiting.unwrap_or(Waiting {
                            execution: o.id,
                            channel: String::new(),
                        }));
                    }
                },
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if decided {
            step::give_up(outcomes, None);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(waiting),
        }
    }

    /// Runs (or continues, or reads the result of) one child execution.
    async fn run_child(
        self: Arc<Self>,
        frame: Frame,
        child: Child,
        parent: String,
    ) -> Result<Outcome, EngineError> {
        let def = frame.def.clone();
        match self.backend.load(&child.id).await? {
            Some(cp) => {
                let rec = parse_record(&cp)?;
                if rec.status.is_terminal() {
                    return Ok(outcome(&rec));
                }
                self.drive(frame, rec, false).await
            }
            None => {
                let rec =
                    self.new_record(&def, &frame.definition, child.id, Some(parent), child.input);
                self.drive(frame, rec, true).await
            }
        }
    }

    /// The launch outbox: stores the record with its launches before any
    /// launched execution exists, creates their records, marks them started
    /// and stores that. They run detached: nobody waits for them but
    /// [`Engine::wait_detached`]. With `unfinished`, launched executions that
    /// started but have not finished are continued too (a resume).
    async fn start_launches(
        self: &Arc<Self>,
        frame: &Frame,
        rec: &mut Record,
        unfinished: bool,
    ) -> Result<(), EngineError> {
        if rec.launches.iter().all(|l| l.started) && !unfinished {
            return Ok(());
        }
        if rec.launches.iter().any(|l| !l.started) {
            // Whatever the checkpoint policy: the outbox is the record of
            // which launches exist.
            self.save(frame, rec, Save::Awaited).await?;
        }
        let mut changed = false;
        for i in 0..rec.launches.len() {
            let launch = rec.launches[i].clone();
            if launch.started && !unfinished {
                continue;
            }
            let def = frame
                .def
                .children
                .get(&launch.machine)
                .cloned()
                .ok_or_else(|| {
                    EngineError::Invalid(format!("no child machine `{}`", launch.machine))
                })?;
            if rec.queued {
                if !launch.started {
                    self.queue_launch(frame, &def, rec, &launch).await?;
                    rec.launches[i].started = true;
                    changed = true;
                    let launched = Event::Launched {
                        state: rec.state.clone(),
                        child: launch.id.clone(),
                    };
                    self.note(frame, rec, launched);
                }
                continue;
            }
            let existing = self.backend.load(&launch.id).await?;
            let fresh = existing.is_none();
            let child_rec = match existing {
                Some(cp)
                    if cp.status == Status::Running
                        || (unfinished && cp.status == Status::Waiting) =>
                {
                    Some(parse_record(&cp)?)
                }
                Some(_) => None,
                None => {
                    let mut r = self.new_record(
                        &def,
                        &frame.definition,
                        launch.id.clone(),
                        Some(rec.id.clone()),
                        launch.input.clone(),
                    );
                    // The child's own record exists before the parent says it started.
                    self.save_consuming(&def, &frame.fence, &mut r, Save::Queued, None)
                        .await?;
                    Some(r)
                }
            };
            if !launch.started {
                rec.launches[i].started = true;
                changed = true;
                let launched = Event::Launched {
                    state: rec.state.clone(),
                    child: launch.id.clone(),
                };
                self.note(frame, rec, launched);
            }
            let Some(child_rec) = child_rec else { continue };
            let engine = self.clone();
            // Launched executions run under the lease of the tree that launched them.
            let frame = Frame {
                def,
                definition: frame.definition.clone(),
                cancel: CancelToken::default(),
                stop: frame.stop.clone(),
                fence: frame.fence.clone(),
            };
            let handle = tokio::spawn(async move {
                let id = child_rec.id.clone();
                if let Err(e) = engine.drive(frame, child_rec, fresh).await {
                    tracing::error!(execution = %id, "launched execution stopped: {e}");
                }
            });
            self.lock_detached().push(handle);
        }
        if changed {
            self.save(frame, rec, Save::Awaited).await?;
        }
        Ok(())
    }
}

impl Engine {
    /// Stores a finished record's checkpoint with its result, in one write
    /// (awaited: it covers every write queued before it), so a crash leaves
    /// both or neither.
    pub(super) async fn save_final(
        &self,
        rec: &Record,
        consumes: Option<u64>,
        fence: &Fence,
    ) -> Result<(), EngineError> {
        let (status, value) = result_of(rec);
        let now = self.now();
        let mut checkpoint = to_checkpoint(rec, now, consumes, Some(fence))?;
        checkpoint.result = Some(StoredResult {
            fence: None,
            status,
            value,
            written_ms: now,
            counts_toward: Engine::counts_toward(rec),
        });
        self.backend.save(checkpoint).await?;
        if let Some(o) = &self.observer {
            o.result_written(&rec.id);
        }
        Ok(())
    }
}

/// The durable result of a finished record: its output when done, else
/// its error, under the status it ended with (`failed` or `cancelled`).
fn result_of(rec: &Record) -> (Status, Value) {
    match (rec.status, &rec.output, &rec.error) {
        (Status::Done, Some(o), _) => (Status::Done, o.clone()),
        (s, _, Some(e)) => (
            if s == Status::Cancelled {
                Status::Cancelled
            } else {
                Status::Failed
            },
            serde_json::to_value(e).unwrap_or(Value::Null),
        ),
        (s, _, _) => (s, Value::Null),
    }
}

/// The checkpoint of a record; `consumes_signal` is a delivered signal to
/// delete in the same write.
pub(super) fn to_checkpoint(
    rec: &Record,
    now_ms: u64,
    consumes_signal: Option<u64>,
    fence: Option<&Fence>,
) -> Result<Checkpoint, EngineError> {
    let record = serde_json::to_string(rec)
        .map_err(|e| EngineError::Invalid(format!("cannot serialise execution {}: {e}", rec.id)))?;
    Ok(Checkpoint {
        id: rec.id.clone(),
        parent: rec.parent.clone(),
        machine: rec.machine.clone(),
        status: rec.status,
        state: rec.state.clone(),
        step: rec.step,
        created_ms: rec.created_ms,
        updated_ms: now_ms,
        record,
        consumes_signal,
        fence: fence.cloned(),
        enqueue: Vec::new(),
        result: None,
    })
}

/// The engine's record inside a stored checkpoint.
pub(super) fn outcome(rec: &Record) -> Outcome {
    Outcome {
        id: rec.id.clone(),
        machine: rec.machine.clone(),
        status: rec.status,
        output: rec.output.clone(),
        error: rec.error.clone(),
        waiting: rec.waiting_for.as_ref().map(|c| Waiting {
            execution: rec.id.clone(),
            channel: c.clone(),
        }),
    }
}
