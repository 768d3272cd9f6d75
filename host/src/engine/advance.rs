//! The work of one state: given a record, run the current state's action
//! and move the record on (routing, retries, fan-out, waits). Everything it
//! decides is written into the record, so any process can continue from
//! there; `step.rs` wraps it with what must be saved and what comes next.

use super::history::{self, Event};
use super::record::{Child, ChildOutcome, Failure, Launch, Pending, Record, Shape, Status};
use super::runner::Runner;
use super::step::Outcomes;
use super::{Engine, MachineDef};
use crate::config::schema::{ExecutionType, Mode};
use crate::config::{Children, State, StateType};
use crate::failure::FailureKind;
use crate::plugin::{CallContext, CallMeta, CancelToken, HookEvent};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Children run at once by one state unless it or the machine says otherwise.
pub(super) const DEFAULT_MAX_CONCURRENCY: usize = 32;

/// What the driver does next.
#[derive(Debug)]
pub(super) enum Advance {
    /// The record moved on (or was routed by `on_error`); call again.
    Continue,
    /// The state failed and will be tried again after this pause.
    Retry(Duration),
    /// Run `record.pending`'s children, gather their outcomes, then the
    /// fan-in (`Engine::gather`).
    Children,
    /// Parked until a signal arrives on this channel.
    Wait,
    Done,
    Failed,
}

/// Events of history kept per execution of this machine.
pub(super) fn history_limit(def: &MachineDef) -> usize {
    def.config
        .data()
        .settings
        .history_limit
        .map_or(history::DEFAULT_LIMIT, |n| n as usize)
}

/// The machine an execution runs, and how to stop it.
#[derive(Clone)]
pub(super) struct Frame {
    pub def: Arc<MachineDef>,
    /// Digest of the definition the execution's tree is pinned to.
    pub definition: Arc<str>,
    /// This execution's token (a child of its parent's: cancelling an
    /// ancestor cancels it too).
    pub cancel: CancelToken,
    /// The stop request of the tree this execution belongs to (its lease).
    pub stop: super::owner::Stop,
    /// The lease every write of the tree is made under.
    pub fence: crate::backend::Fence,
}

impl Frame {
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

pub(super) fn failure(kind: FailureKind, message: impl Into<String>, state: &str) -> Failure {
    Failure {
        kind,
        message: message.into(),
        state: state.to_string(),
        retry_after_ms: None,
    }
}

/// Runs `f` with `{context, input, output}` built from the record without
/// copying them, then puts them back.
fn with_vars<R>(rec: &mut Record, output: &mut Value, f: impl FnOnce(&mut Value) -> R) -> R {
    let mut map = Map::new();
    map.insert("context".into(), std::mem::take(&mut rec.context));
    map.insert("input".into(), std::mem::take(&mut rec.input));
    map.insert("output".into(), std::mem::take(output));
    let mut vars = Value::Object(map);
    let result = f(&mut vars);
    if let Value::Object(mut map) = vars {
        rec.context = map.remove("context").unwrap_or(Value::Null);
        rec.input = map.remove("input").unwrap_or(Value::Null);
        *output = map.remove("output").unwrap_or(Value::Null);
    }
    result
}

enum Work {
    Output(Value, Option<String>),
    Children(Pending),
    Wait(String),
}

impl Engine {
    /// A signal for the `wait_for` state the record is parked in: its data
    /// is the state's output, and the record moves on.
    pub(super) async fn receive(&self, frame: &Frame, rec: &mut Record, data: Value) -> Advance {
        let def = frame.def.clone();
        let state = match self.current_state(&def, rec) {
            Ok(s) => s,
            Err(ended) => return ended,
        };
        rec.status = Status::Running;
        rec.waiting_for = None;
        self.complete(frame, rec, state, data, None).await
    }

    /// The fan-in of the current state's children: their combined output
    /// ends the state (or fails it).
    pub(super) async fn gather(
        &self,
        frame: &Frame,
        rec: &mut Record,
        outcomes: &Outcomes,
    ) -> Advance {
        let def = frame.def.clone();
        let state = match self.current_state(&def, rec) {
            Ok(s) => s,
            Err(ended) => return ended,
        };
        let Some(pending) = rec.pending.take() else {
            let f = failure(
                FailureKind::Fatal,
                "no children to gather (the record has no pending fan-out)",
                &rec.state,
            );
            return self.fail(frame, rec, state, f).await;
        };
        match combine(&pending, outcomes, &rec.state) {
            Ok(output) => self.complete(frame, rec, state, output, None).await,
            Err(f) => self.fail(frame, rec, state, f).await,
        }
    }

    /// The state the record is in; a state the machine does not have ends
    /// the execution (`invalid_config`).
    fn current_state<'d>(
        &self,
        def: &'d MachineDef,
        rec: &mut Record,
    ) -> Result<&'d State, Advance> {
        def.state(&rec.state).map_err(|e| {
            let f = failure(FailureKind::InvalidConfig, e.to_string(), &rec.state);
            self.terminal(rec, f)
        })
    }

    pub(super) async fn advance(&self, frame: &Frame, rec: &mut Record) -> Advance {
        let def = frame.def.clone();
        let name = rec.state.clone();
        let state = match self.current_state(&def, rec) {
            Ok(s) => s,
            Err(ended) => return ended,
        };
        if frame.cancelled() || self.past_deadline(rec) {
            return self.cancelled(frame, rec);
        }
        if let Some(max) = def.config.data().settings.max_steps
            && rec.step > max
        {
            let f = failure(
                FailureKind::MaxSteps,
                format!("more than settings.max_steps = {max} states were entered"),
                &name,
            );
            return self.terminal(rec, f);
        }

        if state.kind == Some(StateType::Final) {
            return self.finish(frame, rec, state).await;
        }

        let work = match rec.pending {
            // Children first; the driver gathers their outcomes.
            Some(_) => return Advance::Children,
            None => {
                if let Some(o) = &self.observer {
                    o.state(&rec.id, &rec.machine, &name, rec.step);
                }
                // A state that calls a plugin is told by its `plugin_called`.
                if state.runs.is_none() {
                    self.note_entered(frame, rec);
                }
                if rec.attempt <= 1
                    && let Err(f) = self
                        .fire(frame, rec, HookEvent::StateEnter(name.clone()))
                        .await
                {
                    return self.fail(frame, rec, state, f).await;
                }
                self.work(frame, rec, state).await
            }
        };
        match work {
            Ok(Work::Output(output, next)) => self.complete(frame, rec, state, output, next).await,
            Ok(Work::Children(p)) => {
                rec.pending = Some(p);
                Advance::Children
            }
            Ok(Work::Wait(channel)) => {
                rec.status = Status::Waiting;
                rec.waiting_for = Some(channel.clone());
                Advance::Wait
            }
            Err(f) => self.fail(frame, rec, state, f).await,
        }
    }

    /// The state's own work: launches first, then its plugin, action,
    /// children or wait.
    async fn work(&self, frame: &Frame, rec: &mut Record, state: &State) -> Result<Work, Failure> {
        let name = rec.state.clone();
        let render = |rec: &mut Record, template: &Value| {
            with_vars(rec, &mut Value::Null, |vars| {
                self.exprs.render(template, vars)
            })
            .map_err(|e| failure(FailureKind::Template, e.to_string(), &name))
        };
        if !state.launch.is_empty() {
            let shared = match &state.launch_input {
                Some(t) => render(rec, t)?,
                None => json!({}),
            };
            for (i, child) in state.launch.iter().enumerate() {
                let id = format!("{}:{}:L{i}", rec.id, rec.step);
                if rec.launches.iter().any(|l| l.id == id) {
                    continue;
                }
                let input = match &child.input {
                    Some(t) => render(rec, t)?,
                    None => shared.clone(),
                };
                rec.launches.push(Launch {
                    id,
                    machine: child.machine.clone(),
                    input,
                    started: false,
                });
            }
        }

        // A foreach state renders its `input` once per item, below.
        let input = match &state.input {
            Some(t) if state.foreach.is_none() => Some(render(rec, t)?),
            _ => None,
        };

        if let (Some(plugin), Some(runs)) = (frame.def.runners.get(&name), &state.runs)
            && runs.llm
        {
            let arg = input.unwrap_or_else(|| rec.context.clone());
            return self
                .agent(frame, rec, state, &runs.name, plugin, arg)
                .await
                .map(|o| Work::Output(o, None));
        }
        if let Some(plugin) = frame.def.runners.get(&name) {
            let meta = self.meta(rec, plugin.as_ref());
            let ctx = self.call_context(frame, rec);
            let started = std::time::Instant::now();
            let result = if state.is_step() {
                let arg = input.unwrap_or_else(|| rec.context.clone());
                plugin
                    .run(&meta, &arg, &ctx)
                    .await
                    .map(|s| (s.output, s.next))
            } else {
                let arg = input.unwrap_or_else(|| rec.context.clone());
                plugin.process(&meta, &arg, &ctx).await.map(|o| (o, None))
            };
            let called = Event::plugin_called(
                rec,
                plugin.name(),
                started.elapsed(),
                result.as_ref().err().map(|e| e.kind().into()),
                result.as_ref().ok().map(|(o, _)| o),
            );
            self.note(frame, rec, called);
            return result
                .map(|(o, n)| Work::Output(o, n))
                .map_err(|e| failure(e.kind().into(), e.to_string(), &name));
        }

        if let Some(action) = &state.action {
            return self
                .action(frame, rec, action, input)
                .await
                .map(|o| Work::Output(o, None));
        }

        if let Some(foreach) = &state.foreach {
            let items = render(rec, foreach)?;
            let Value::Array(items) = items else {
                return Err(failure(
                    FailureKind::InvalidInput,
                    format!("`foreach` must give a list, got {}", kind_of(&items)),
                    &name,
                ));
            };
            let machine = state
                .machine
                .as_ref()
                .and_then(|m| m.list().first())
                .map(|c| c.machine.clone())
                .unwrap_or_default();
            let as_name = state.as_name.clone().unwrap_or_else(|| "item".to_string());
            let mut children = Vec::with_capacity(items.len());
            let mut output = Value::Null;
            let rendered: Result<Vec<(Value, Option<String>)>, Failure> =
                with_vars(rec, &mut output, |vars| {
                    let Some(map) = vars.as_object_mut() else {
                        return Err(failure(
                            FailureKind::Fatal,
                            "template variables are not a map",
                            &name,
                        ));
                    };
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.into_iter().enumerate() {
                        map.insert(as_name.clone(), item);
                        map.insert("index".into(), json!(i));
                        let vars_now = Value::Object(std::mem::take(map));
                        let input = match &state.input {
                            Some(t) => self.exprs.render(t, &vars_now),
                            None => Ok(vars_now.get(&as_name).cloned().unwrap_or(Value::Null)),
                        };
                        let key = state.key.as_ref().map(|k| {
                            self.exprs
                                .render(&Value::String(k.clone()), &vars_now)
                                .map(|v| match v {
                                    Value::String(s) => s,
                                    other => other.to_string(),
                                })
                        });
                        let Value::Object(back) = vars_now else {
                            unreachable!()
                        };
                        *map = back;
                        let input = input
                            .map_err(|e| failure(FailureKind::Template, e.to_string(), &name))?;
                        let key = key
                            .transpose()
                            .map_err(|e| failure(FailureKind::Template, e.to_string(), &name))?;
                        out.push((input, key));
                    }
                    map.remove(&as_name);
                    map.remove("index");
                    Ok(out)
                });
            for (i, (input, key)) in rendered?.into_iter().enumerate() {
                children.push(Child {
                    id: self.child_id(rec, i),
                    machine: machine.clone(),
                    input,
                    key,
                });
            }
            let shape = if state.key.is_some() {
                Shape::ByKey
            } else {
                Shape::List
            };
            return Ok(Work::Children(self.pending(frame, state, shape, children)));
        }

        if let Some(machine) = &state.machine {
            let shape = match machine {
                Children::One(_) => Shape::Single,
                Children::Parallel(_) => Shape::ByName,
            };
            let list = machine.list();
            let mut children = Vec::with_capacity(list.len());
            for (i, child) in list.iter().enumerate() {
                let input = match &child.input {
                    Some(t) => render(rec, t)?,
                    None => input.clone().unwrap_or_else(|| json!({})),
                };
                children.push(Child {
                    id: self.child_id(rec, i),
                    machine: child.machine.clone(),
                    input,
                    key: None,
                });
            }
            return Ok(Work::Children(self.pending(frame, state, shape, children)));
        }

        if let Some(wait) = &state.wait_for {
            let channel = match render(rec, &Value::String(wait.clone()))? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            // The driver looks for a signal and delivers it (`receive`).
            return Ok(Work::Wait(channel));
        }

        Ok(Work::Output(input.unwrap_or(Value::Null), None))
    }

    fn child_id(&self, rec: &Record, i: usize) -> String {
        if rec.attempt <= 1 {
            format!("{}:{}:{i}", rec.id, rec.step)
        } else {
            format!("{}:{}r{}:{i}", rec.id, rec.step, rec.attempt)
        }
    }

    fn pending(&self, frame: &Frame, state: &State, shape: Shape, children: Vec<Child>) -> Pending {
        let max = state
            .max_concurrency
            .or(frame.def.config.data().settings.max_concurrency)
            .map(|m| m as usize)
            .unwrap_or(DEFAULT_MAX_CONCURRENCY)
            .max(1);
        Pending {
            shape,
            any: state.mode == Some(Mode::Any),
            partial: state.continue_on_partial,
            max_concurrency: max,
            children,
            deadline_ms: state
                .timeout
                .map(|t| self.deadline_in(crate::duration::clamp_secs(t))),
        }
    }

    /// An `action:` state: the machine's hook plugins handle it (each gets the
    /// context, with the state's rendered `input` under `input`, and may
    /// return a new context); the output is the resulting context.
    async fn action(
        &self,
        frame: &Frame,
        rec: &mut Record,
        action: &str,
        input: Option<Value>,
    ) -> Result<Value, Failure> {
        let name = rec.state.clone();
        if let Some(result) = self.builtin_action(&frame.def, rec, action).await {
            return result;
        }
        let hooks = self.hooks_of(frame, &name);
        if hooks.is_empty() {
            return Err(failure(
                FailureKind::InvalidInput,
                format!(
                    "action `{action}`: no hook plugin handles actions in this machine (add one under data.hooks)"
                ),
                &name,
            ));
        }
        if let (Some(input), Value::Object(ctx)) = (&input, &mut rec.context) {
            ctx.insert("input".into(), input.clone());
        }
        self.fire(frame, rec, HookEvent::Action(action.to_string()))
            .await?;
        if input.is_some()
            && let Value::Object(ctx) = &mut rec.context
        {
            ctx.remove("input");
        }
        Ok(rec.context.clone())
    }

    /// After the state's work: `output_to_context`, exit hooks, transitions.
    async fn complete(
        &self,
        frame: &Frame,
        rec: &mut Record,
        state: &State,
        mut output: Value,
        next: Option<String>,
    ) -> Advance {
        let name = rec.state.clone();
        if let Some(map) = &state.output_to_context {
            let rendered: Result<Vec<(String, Value)>, Failure> =
                with_vars(rec, &mut output, |vars| {
                    map.iter()
                        .map(|(k, t)| {
                            self.exprs
                                .render(t, vars)
                                .map(|v| (k.clone(), v))
                                .map_err(|e| failure(FailureKind::Template, e.to_string(), &name))
                        })
                        .collect()
                });
            match rendered {
                Ok(pairs) => {
                    if !rec.context.is_object() {
                        rec.context = json!({});
                    }
                    if let Value::Object(ctx) = &mut rec.context {
                        for (k, v) in pairs {
                            ctx.insert(k, v);
                        }
                    }
                }
                Err(f) => return self.fail(frame, rec, state, f).await,
            }
        }
        if let Err(f) = self
            .fire(frame, rec, HookEvent::StateExit(name.clone()))
            .await
        {
            return self.fail(frame, rec, state, f).await;
        }
        let target = match next {
            Some(n) => Ok(n),
            None => with_vars(rec, &mut output, |vars| {
                for t in &state.transitions {
                    match t.condition.as_deref() {
                        None => return Ok(Some(t.to.clone())),
                        Some(c) => match self.exprs.condition(c, vars) {
                            Ok(true) => return Ok(Some(t.to.clone())),
                            Ok(false) => {}
                            Err(e) => {
                                return Err(failure(FailureKind::Template, e.to_string(), &name));
                            }
                        },
                    }
                }
                Ok(None)
            })
            .and_then(|t| {
                t.ok_or_else(|| {
                    failure(
                        FailureKind::NoTransition,
                        "no transition matched and none is unconditional",
                        &name,
                    )
                })
            }),
        };
        let target = match target {
            Ok(t) => t,
            Err(f) => return self.fail(frame, rec, state, f).await,
        };
        if !frame.def.config.data().states.contains_key(&target) {
            let f = failure(
                FailureKind::InvalidOutput,
                format!("the step chose unknown state `{target}`"),
                &name,
            );
            return self.fail(frame, rec, state, f).await;
        }
        let event = HookEvent::Transition(crate::plugin::TransitionInfo {
            from: name.clone(),
            to: target.clone(),
        });
        let target = match self.fire(frame, rec, event).await {
            Ok(Some(redirect)) if frame.def.config.data().states.contains_key(&redirect) => {
                redirect
            }
            Ok(_) => target,
            Err(f) => return self.fail(frame, rec, state, f).await,
        };
        self.goto(rec, target);
        Advance::Continue
    }

    /// Tells the observer of an event, and notes it in the record's journal
    /// (unless the machine keeps no history).
    pub(super) fn note(&self, frame: &Frame, rec: &mut Record, event: Event) {
        if let Some(o) = &self.observer {
            o.event(rec, &event);
        }
        if history_limit(&frame.def) > 0 {
            history::note(rec, self.now(), &event);
        }
    }

    fn note_entered(&self, frame: &Frame, rec: &mut Record) {
        let entered = Event::StateEntered {
            state: rec.state.clone(),
            step: rec.step,
            attempt: rec.attempt,
        };
        self.note(frame, rec, entered);
    }

    fn goto(&self, rec: &mut Record, target: String) {
        rec.state = target;
        rec.step += 1;
        rec.attempt = 1;
        rec.pending = None;
        rec.waiting_for = None;
        rec.status = Status::Running;
    }

    /// Ends an execution whose tree was cancelled: by a cancel request or a
    /// passed deadline (the reason is the error, of kind `cancelled` or
    /// `timeout`), or as a loser of a `mode: any` fan-out.
    fn cancelled(&self, frame: &Frame, rec: &mut Record) -> Advance {
        rec.status = Status::Cancelled;
        rec.pending = None;
        rec.waiting_for = None;
        let requested = self.leases.cancel_of(&frame.fence.root);
        let why = requested.and_then(|c| c.requested()).or_else(|| {
            self.past_deadline(rec).then(|| {
                (
                    FailureKind::Timeout,
                    super::owner::DEADLINE_PASSED.to_string(),
                )
            })
        });
        if let Some((kind, reason)) = why {
            rec.error = Some(failure(kind, reason.clone(), &rec.state));
            let event = Event::Cancelled {
                state: rec.state.clone(),
                reason,
            };
            self.note(frame, rec, event);
        }
        Advance::Failed
    }

    /// Whether `rec`'s deadline has passed.
    pub(super) fn past_deadline(&self, rec: &Record) -> bool {
        rec.deadline_ms.is_some_and(|d| self.now() >= d)
    }

    /// A state failed: retry it, route it (hooks, then `on_error`), or end the execution.
    async fn fail(&self, frame: &Frame, rec: &mut Record, state: &State, f: Failure) -> Advance {
        if frame.cancelled() {
            // (The state failed because it was cancelled: no retry, no route.)
            return self.cancelled(frame, rec);
        }
        rec.pending = None;
        if let Some(ex) = &state.execution
            && ex.kind == ExecutionType::Retry
            && f.kind.is_retried()
        {
            let backoffs = ex.backoffs.clone().unwrap_or_else(|| vec![1.0, 2.0, 4.0]);
            if let Some(base) = backoffs.get(rec.attempt.saturating_sub(1) as usize) {
                let jitter = ex.jitter.unwrap_or(0.0);
                let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
                tracing::info!(execution = %rec.id, state = %rec.state, attempt = rec.attempt, kind = %f.kind, "retrying: {}", f.message);
                rec.attempt += 1;
                let pause = crate::duration::clamp_secs(base * factor).max(
                    std::time::Duration::from_millis(f.retry_after_ms.unwrap_or(0)),
                );
                let retry = Event::RetryScheduled {
                    state: rec.state.clone(),
                    attempt: rec.attempt,
                    pause_ms: pause.as_millis().min(u64::MAX as u128) as u64,
                };
                self.note(frame, rec, retry);
                return Advance::Retry(pause);
            }
        }
        if let Value::Object(ctx) = &mut rec.context {
            ctx.insert("last_error".into(), Value::String(f.message.clone()));
            ctx.insert(
                "last_error_type".into(),
                Value::String(f.kind.as_str().into()),
            );
        }
        let event = HookEvent::Error(crate::plugin::ErrorInfo {
            state: f.state.clone(),
            kind: f.kind.as_str().to_string(),
            message: f.message.clone(),
        });
        let states = &frame.def.config.data().states;
        let redirect = match self.fire(frame, rec, event).await {
            Ok(r) => r.filter(|r| states.contains_key(r)),
            Err(hook_failure) => return self.terminal(rec, hook_failure),
        };
        let routed = redirect.or_else(|| state.on_error.target(f.kind).map(str::to_string));
        match routed {
            Some(target) if states.contains_key(&target) => {
                tracing::info!(execution = %rec.id, state = %rec.state, kind = %f.kind, to = %target, "error routed by on_error: {}", f.message);
                let routed = Event::Routed {
                    state: rec.state.clone(),
                    kind: f.kind,
                    to: target.clone(),
                };
                self.note(frame, rec, routed);
                self.goto(rec, target);
                Advance::Continue
            }
            _ => self.terminal(rec, f),
        }
    }

    fn terminal(&self, rec: &mut Record, f: Failure) -> Advance {
        rec.status = Status::Failed;
        rec.error = Some(f);
        Advance::Failed
    }

    async fn finish(&self, frame: &Frame, rec: &mut Record, state: &State) -> Advance {
        let name = rec.state.clone();
        if let Some(o) = &self.observer {
            o.state(&rec.id, &rec.machine, &name, rec.step);
        }
        self.note_entered(frame, rec);
        if let Err(f) = self
            .fire(frame, rec, HookEvent::StateEnter(name.clone()))
            .await
        {
            return self.terminal(rec, f);
        }
        let output = match &state.output {
            Some(t) => with_vars(rec, &mut Value::Null, |vars| self.exprs.render(t, vars))
                .map_err(|e| failure(FailureKind::Template, e.to_string(), &name)),
            None => Ok(rec.context.clone()),
        };
        let output = match output {
            Ok(o) => o,
            Err(f) => return self.terminal(rec, f),
        };
        if let Err(f) = self.fire(frame, rec, HookEvent::MachineEnd).await {
            return self.terminal(rec, f);
        }
        rec.status = Status::Done;
        rec.output = Some(output);
        Advance::Done
    }

    /// Hook plugins in effect in the current state: the machine's (with its
    /// ancestors'), then the state's own.
    fn hooks_of(&self, frame: &Frame, state: &str) -> Vec<Arc<dyn Runner>> {
        let mut hooks = frame.def.hooks.clone();
        if let Some(own) = frame.def.state_hooks.get(state) {
            hooks.extend(own.iter().cloned());
        }
        hooks
    }

    /// Delivers an event to every hook in order; each may replace the context.
    /// Returns the last redirect any hook asked for.
    pub(super) async fn fire(
        &self,
        frame: &Frame,
        rec: &mut Record,
        event: HookEvent,
    ) -> Result<Option<String>, Failure> {
        let hooks = self.hooks_of(frame, &rec.state);
        let mut redirect = None;
        for hook in hooks {
            let meta = self.meta(rec, hook.as_ref());
            let ctx = self.call_context(frame, rec);
            let result = hook.on_event(&event, &meta, &rec.context, &ctx).await;
            let result = result.map_err(|e| {
                failure(
                    e.kind().into(),
                    format!("hook `{}`: {e}", hook.name()),
                    &rec.state,
                )
            })?;
            if let Some(context) = result.context {
                rec.context = context;
            }
            if result.redirect.is_some() {
                redirect = result.redirect;
            }
        }
        Ok(redirect)
    }

    pub(super) fn meta(&self, rec: &Record, runner: &dyn Runner) -> CallMeta {
        let deadline = self.now() + runner.timeout().as_millis() as u64;
        CallMeta {
            idempotency_key: format!("{}/{}/{}", rec.id, rec.step, rec.attempt),
            execution_id: rec.id.clone(),
            machine: rec.machine.clone(),
            state: rec.state.clone(),
            step: rec.step,
            attempt: rec.attempt,
            deadline_ms: deadline,
        }
    }

    /// The call context of one plugin call: the execution's state in the
    /// store, and the execution's cancel token.
    pub(super) fn call_context(&self, frame: &Frame, rec: &Record) -> CallContext {
        CallContext {
            state: Arc::new(super::state::StoreState::new(
                self.backend.clone(),
                rec.id.clone(),
            )),
            cancel: frame.cancel.clone(),
            events: None,
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The fan-in's output from the children's outcomes: `any` takes the first
/// success; `continue_on_partial` keeps every outcome as data; otherwise a
/// failed or cancelled child fails the state.
fn combine(p: &Pending, outcomes: &Outcomes, state: &str) -> Result<Value, Failure> {
    let done = |i: usize| match outcomes.get(i) {
        Some(ChildOutcome::Done(v)) => Some(v.clone()),
        _ => None,
    };
    if p.any
        && let Some(v) = (0..p.children.len()).find_map(done)
    {
        return Ok(v);
    }
    if p.partial {
        // Every child's outcome as data: `{ok: true, output}` or `{ok: false, error}`.
        let slot = |i: usize| match outcomes.get(i) {
            Some(ChildOutcome::Done(v)) => json!({"ok": true, "output": v}),
            Some(ChildOutcome::Failed(f)) => json!({"ok": false, "error": f}),
            Some(ChildOutcome::Cancelled) | None => json!({
                "ok": false,
                "error": {"kind": "cancelled", "message": "the child execution was cancelled", "state": ""}
            }),
        };
        return Ok(shaped(p, slot));
    }
    let failures: Vec<(usize, &Failure)> = (0..p.children.len())
        .filter_map(|i| match outcomes.get(i) {
            Some(ChildOutcome::Failed(f)) => Some((i, f)),
            _ => None,
        })
        .collect();
    if let Some((i, first)) = failures.first() {
        let which = p
            .children
            .get(*i)
            .map(|c| c.id.as_str())
            .unwrap_or_default();
        return Err(failure(
            first.kind,
            format!(
                "{} of {} child executions failed; first: {which} in state `{}`: {}",
                failures.len(),
                p.children.len(),
                first.state,
                first.message
            ),
            state,
        ));
    }
    if !p.any
        && outcomes
            .0
            .iter()
            .any(|o| matches!(o, Some(ChildOutcome::Cancelled)))
    {
        return Err(failure(
            FailureKind::Cancelled,
            "a child execution was cancelled",
            state,
        ));
    }
    Ok(shaped(p, |i| done(i).unwrap_or(Value::Null)))
}

/// The children's values (by index) in the state's output shape: the first
/// one, a list, a map by machine name, or a map by `key`.
fn shaped(p: &Pending, value: impl Fn(usize) -> Value) -> Value {
    let children = p.children.iter().enumerate();
    match p.shape {
        Shape::Single => p.children.first().map(|_| value(0)).unwrap_or(Value::Null),
        Shape::List => Value::Array(children.map(|(i, _)| value(i)).collect()),
        Shape::ByName => Value::Object(
            children
                .map(|(i, c)| (c.machine.clone(), value(i)))
                .collect(),
        ),
        Shape::ByKey => Value::Object(
            children
                .map(|(i, c)| (c.key.clone().unwrap_or_default(), value(i)))
                .collect(),
        ),
    }
}
