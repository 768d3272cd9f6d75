//! The driver-free step. [`Engine::begin`] starts a new execution and
//! [`Engine::step`] moves one on by a state; [`Engine::fan_in`] ends a
//! fan-out state with its children's outcomes and [`Engine::deliver`] a
//! `wait_for` state with a signal. Each returns a [`Step`] that says, as
//! data, what must happen next: what to save (and whether the save must be
//! awaited), whether launches wait in the outbox, and whether to step again,
//! pause for a retry, run children, park, or end. None of them reads or
//! writes the store.
//!
//! Every rule about an execution's course lives here or in `advance.rs`
//! (the work of one state): the initial context, the start hooks, the
//! checkpoint policy, retries and routing, how child outcomes settle a
//! fan-out, the launch outbox. A driver — the local one in `driver.rs`, a
//! distributed one later — only carries the effects out: it saves, creates
//! launched executions, runs children, sleeps, honours stop requests.

use super::advance::{Advance, Frame};
use super::history;
use super::record::{ChildOutcome, Failure, Pending, Record, Status};
use super::{Engine, MachineDef, Outcome};
use crate::failure::FailureKind;
use crate::plugin::HookEvent;
use serde_json::{Value, json};
use std::time::Duration;

/// What to store after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// Nothing (the machine does not checkpoint at this event).
    Nothing,
    /// The checkpoint, queued: the writer applies writes in order and
    /// group-commits them; losing the newest ones in a crash only means
    /// running those states again (steps are at-least-once).
    Queued,
    /// The checkpoint, stored before the driver goes on (a parked execution,
    /// an outbox about to be acted on, a stop).
    Awaited,
    /// The final checkpoint (queued) and the result (awaited, so it covers
    /// everything queued before it).
    Final,
}

/// What the driver does after saving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Step again.
    Continue,
    /// Step again after this pause (a retry), unless asked to stop.
    Retry(Duration),
    /// Run the current state's pending children, settle each outcome with
    /// [`settle`] into [`Outcomes`], then hand them to [`Engine::fan_in`].
    Children,
    /// Parked on `record.waiting_for` (or on a waiting child) until a
    /// signal. The driver looks in the store for a signal on that channel
    /// first, and hands one it finds to [`Engine::deliver`].
    Park,
    /// Finished: done, failed or cancelled.
    End,
}

/// The effects of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub save: Save,
    /// `record.launches` has launches not started yet: store the record
    /// (awaited), create their executions, mark them started, store again.
    pub outbox: bool,
    pub next: Next,
}

/// Checkpoint events (`persistence.checkpoint_on`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    MachineStart,
    Execute,
    Waiting,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::MachineStart => "machine_start",
            Event::Execute => "execute",
            Event::Waiting => "waiting",
        }
    }
}

/// The checkpoint policy: whether the machine stores its record at `event`
/// (`persistence.enabled`, `persistence.checkpoint_on`; every event by
/// default; `state_exit` is an alias of `execute`).
fn save_at(def: &MachineDef, event: Event) -> Save {
    let persistence = def.config.data().persistence.as_ref();
    let enabled = persistence.and_then(|p| p.enabled).unwrap_or(true);
    let wanted = persistence
        .and_then(|p| p.checkpoint_on.as_ref())
        .is_none_or(|on| {
            on.iter()
                .any(|e| e == event.name() || (event == Event::Execute && e == "state_exit"))
        });
    match (enabled && wanted, event) {
        (false, _) => Save::Nothing,
        (true, Event::Waiting) => Save::Awaited,
        (true, _) => Save::Queued,
    }
}

/// How one finished child changes its parent's pending fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Recorded; the fan-out goes on.
    Recorded,
    /// `mode: any` and this child finished well: the rest are to be cancelled.
    Decided,
    /// The child waits for a signal; so will its parent.
    Waiting,
}

/// The outcomes of a fan-out's children, by index, as the driver gathers
/// them (from the children it ran, or from the stored records of children
/// that had finished before a resume). The parent's record does not hold
/// them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes(pub Vec<Option<ChildOutcome>>);

impl Outcomes {
    pub fn new(n: usize) -> Outcomes {
        Outcomes(vec![None; n])
    }
    pub fn get(&self, index: usize) -> Option<&ChildOutcome> {
        self.0.get(index).and_then(Option::as_ref)
    }

    /// The history event of a gathered fan-out of `state`.
    pub fn summary(&self, state: &str) -> history::Event {
        let count = |f: fn(&ChildOutcome) -> bool| self.0.iter().flatten().filter(|o| f(o)).count();
        history::Event::ChildrenFinished {
            state: state.to_string(),
            done: count(|o| matches!(o, ChildOutcome::Done(_))),
            failed: count(|o| matches!(o, ChildOutcome::Failed(_))),
            cancelled: count(|o| matches!(o, ChildOutcome::Cancelled)),
        }
    }
}

/// Records child `index`'s outcome in the fan-out.
pub fn settle(
    pending: &Pending,
    outcomes: &mut Outcomes,
    index: usize,
    outcome: &Outcome,
) -> Settled {
    let out = match outcome.status {
        Status::Waiting => return Settled::Waiting,
        Status::Done => ChildOutcome::Done(outcome.output.clone().unwrap_or(Value::Null)),
        Status::Cancelled => ChildOutcome::Cancelled,
        Status::Queued | Status::Running | Status::Failed => {
            ChildOutcome::Failed(outcome.error.clone().unwrap_or(Failure {
                kind: FailureKind::Fatal,
                message: "failed without an error".into(),
                state: String::new(),
                retry_after_ms: None,
            }))
        }
    };
    let decided = pending.any
        && matches!(out, ChildOutcome::Done(_))
        && !outcomes
            .0
            .iter()
            .any(|c| matches!(c, Some(ChildOutcome::Done(_))));
    if let Some(slot) = outcomes.0.get_mut(index) {
        *slot = Some(out);
    }
    if decided {
        Settled::Decided
    } else {
        Settled::Recorded
    }
}

/// Children that will not finish: cancelled after `mode: any` was decided
/// (`failure` is `None`), or failed with `failure` (a state timeout).
pub fn give_up(outcomes: &mut Outcomes, failure: Option<&Failure>) {
    for c in outcomes.0.iter_mut().filter(|c| c.is_none()) {
        *c = Some(match failure {
            None => ChildOutcome::Cancelled,
            Some(f) => ChildOutcome::Failed(f.clone()),
        });
    }
}

/// The failure of children that ran past their state's timeout.
pub fn children_timed_out(state: &str, limit: Duration) -> Failure {
    Failure {
        kind: FailureKind::Timeout,
        message: format!(
            "children did not finish within the state's timeout of {}s",
            limit.as_secs_f64()
        ),
        state: state.to_string(),
        retry_after_ms: None,
    }
}

impl Engine {
    /// A new execution's record: the machine's initial state, and its
    /// initial context rendered against the input (a template that cannot
    /// render fails the execution before its first state).
    pub(super) fn new_record(
        &self,
        def: &MachineDef,
        definition: &str,
        id: String,
        parent: Option<String>,
        input: Value,
    ) -> Record {
        let data = def.config.data();
        let mut rec = Record {
            id,
            parent,
            machine: def.config.name().to_string(),
            source: def.source.clone(),
            definition: Some(definition.to_string()),
            status: Status::Running,
            state: def.config.initial.clone(),
            step: 1,
            attempt: 1,
            input,
            context: json!({}),
            kv: Default::default(),
            queued: false,
            fan_in: None,
            pending: None,
            launches: vec![],
            waiting_for: None,
            deadline_ms: data
                .settings
                .timeout
                .map(|t| self.deadline_in(crate::duration::clamp_secs(t))),
            output: None,
            error: None,
            created_ms: self.now(),
            history_seq: 0,
            agent_calls: 0,
            journal: Vec::new(),
        };
        let vars = json!({"input": rec.input, "context": {}});
        let mut context = serde_json::Map::new();
        for (key, template) in &data.context {
            match self.exprs.render(template, &vars) {
                Ok(v) => {
                    context.insert(key.clone(), v);
                }
                Err(e) => {
                    rec.status = Status::Failed;
                    rec.error = Some(Failure {
                        kind: FailureKind::Template,
                        message: format!("context.{key}: {e}"),
                        state: rec.state.clone(),
                        retry_after_ms: None,
                    });
                }
            }
        }
        rec.context = Value::Object(context);
        rec
    }

    /// Starts a new execution: the `machine_start` hooks (which may replace
    /// the context or fail it), then the first checkpoint.
    pub(super) async fn begin(&self, frame: &Frame, rec: &mut Record) -> Step {
        if rec.status == Status::Running
            && let Err(f) = self.fire(frame, rec, HookEvent::MachineStart).await
        {
            rec.status = Status::Failed;
            rec.error = Some(f);
        }
        if rec.status.is_terminal() {
            self.note(frame, rec, history::finished(rec));
            return end();
        }
        Step {
            save: save_at(&frame.def, Event::MachineStart),
            outbox: false,
            next: Next::Continue,
        }
    }

    /// Moves an execution on by one state (or re-enters its state when it
    /// was parked, retried or waiting for children).
    pub(super) async fn step(&self, frame: &Frame, rec: &mut Record) -> Step {
        rec.status = Status::Running;
        let advance = self.advance(frame, rec).await;
        self.after(frame, rec, advance)
    }

    /// The fan-in: every child of the current state has an outcome; the
    /// state ends with their combined output (or fails, or is retried).
    pub(super) async fn fan_in(
        &self,
        frame: &Frame,
        rec: &mut Record,
        outcomes: &Outcomes,
    ) -> Step {
        let advance = self.gather(frame, rec, outcomes).await;
        self.after(frame, rec, advance)
    }

    /// Delivers a signal to an execution parked on its channel (the step
    /// said [`Next::Park`] with `record.waiting_for` set, and the driver
    /// found a signal there): the state ends with the signal's data.
    pub(super) async fn deliver(&self, frame: &Frame, rec: &mut Record, data: Value) -> Step {
        let advance = self.receive(frame, rec, data).await;
        self.after(frame, rec, advance)
    }

    fn after(&self, frame: &Frame, rec: &mut Record, advance: Advance) -> Step {
        let outbox = rec.launches.iter().any(|l| !l.started);
        let execute = save_at(&frame.def, Event::Execute);
        let (save, next) = match advance {
            Advance::Continue => (execute, Next::Continue),
            Advance::Retry(pause) => (execute, Next::Retry(pause)),
            Advance::Children => (execute, Next::Children),
            Advance::Wait => (save_at(&frame.def, Event::Waiting), Next::Park),
            Advance::Done | Advance::Failed => {
                self.note(frame, rec, history::finished(rec));
                return Step { outbox, ..end() };
            }
        };
        Step { save, outbox, next }
    }

    /// A child of the current fan-out waits for a signal: the parent parks
    /// too (it goes on when the child is signalled and the tree resumed).
    pub(super) fn park_on_child(&self, frame: &Frame, rec: &mut Record) -> Step {
        rec.status = Status::Waiting;
        Step {
            save: save_at(&frame.def, Event::Waiting),
            outbox: false,
            next: Next::Park,
        }
    }
}

fn end() -> Step {
    Step {
        save: Save::Final,
        outbox: false,
        next: Next::End,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::{Child, Shape};

    fn pending(any: bool, n: usize) -> Pending {
        Pending {
            shape: Shape::List,
            any,
            partial: false,
            max_concurrency: 2,
            deadline_ms: None,
            children: (0..n)
                .map(|i| Child {
                    id: format!("c{i}"),
                    machine: "m".into(),
                    input: json!(i),
                    key: None,
                })
                .collect(),
        }
    }

    fn ended(status: Status, output: Option<Value>) -> Outcome {
        Outcome {
            id: "c".into(),
            machine: "m".into(),
            status,
            output,
            error: None,
            waiting: None,
        }
    }

    #[test]
    fn the_first_success_decides_a_mode_any_fan_out_and_the_rest_are_cancelled() {
        let p = pending(true, 4);
        let mut o = Outcomes::new(4);
        assert_eq!(
            settle(&p, &mut o, 0, &ended(Status::Failed, None)),
            Settled::Recorded
        );
        assert_eq!(
            settle(&p, &mut o, 1, &ended(Status::Done, Some(json!(1)))),
            Settled::Decided
        );
        assert_eq!(
            settle(&p, &mut o, 2, &ended(Status::Done, Some(json!(2)))),
            Settled::Recorded,
            "decided once"
        );
        give_up(&mut o, None);
        assert!(matches!(o.get(0), Some(ChildOutcome::Failed(f)) if f.kind == FailureKind::Fatal));
        assert_eq!(o.get(1), Some(&ChildOutcome::Done(json!(1))));
        assert_eq!(o.get(2), Some(&ChildOutcome::Done(json!(2))));
        assert_eq!(o.get(3), Some(&ChildOutcome::Cancelled));
    }

    #[test]
    fn a_waiting_child_leaves_no_outcome_and_timed_out_ones_fail() {
        let p = pending(false, 2);
        let mut o = Outcomes::new(2);
        assert_eq!(
            settle(&p, &mut o, 0, &ended(Status::Waiting, None)),
            Settled::Waiting
        );
        assert_eq!(o.get(0), None);
        assert_eq!(
            settle(&p, &mut o, 1, &ended(Status::Done, Some(json!("ok")))),
            Settled::Recorded,
            "without mode any nothing is decided"
        );
        let f = children_timed_out("fan", Duration::from_millis(1500));
        give_up(&mut o, Some(&f));
        assert!(matches!(
            o.get(0),
            Some(ChildOutcome::Failed(f)) if f.kind == FailureKind::Timeout && f.message.contains("1.5s")
        ));
        assert_eq!(o.get(1), Some(&ChildOutcome::Done(json!("ok"))));
    }
}
