//! Engine unit tests with fake runners: no `.wasm` file, no plugin runtime.
//! Each decision the engine takes about an execution is covered here: the
//! initial context and start hooks, the checkpoint policy, retries with
//! backoff (on tokio's paused clock), routing by failure kind, fan-in of
//! child outcomes, cancellation of the losers of `mode: any`, the launch
//! outbox, parking on a channel, and pinned definitions.

use super::*;
use crate::backend::{Checkpoints, MemoryBackend, Results, Signals};
use crate::config::PluginSpec;
use crate::failure::FailureKind;
use crate::plugin::{CallContext, CallMeta, HookEvent, HookResult, PluginError, StepOutput, World};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

type Behaviour =
    dyn Fn(&CallMeta, &Value, &CallContext) -> Result<Value, PluginError> + Send + Sync + 'static;

/// A processor or hook whose behaviour is a closure; it records its calls.
struct Fake {
    name: String,
    behaviour: Box<Behaviour>,
    calls: Mutex<Vec<(CallMeta, Value)>>,
    /// For hooks: the events seen, and the context to set on `machine_start`.
    events: Mutex<Vec<String>>,
    start_context: Option<Value>,
    /// A call answered with [`WAIT_FOR_CANCEL`] saw its cancellation.
    cancel_seen: std::sync::atomic::AtomicBool,
}

/// Returned by a behaviour: the call runs until it is cancelled.
const WAIT_FOR_CANCEL: &str = "wait for cancel";

impl Fake {
    fn new(
        name: &str,
        f: impl Fn(&CallMeta, &Value, &CallContext) -> Result<Value, PluginError>
        + Send
        + Sync
        + 'static,
    ) -> Arc<Fake> {
        Arc::new(Fake {
            name: name.into(),
            behaviour: Box::new(f),
            calls: Mutex::default(),
            events: Mutex::default(),
            start_context: None,
            cancel_seen: Default::default(),
        })
    }

    fn hook(name: &str, start_context: Value) -> Arc<Fake> {
        Arc::new(Fake {
            name: name.into(),
            behaviour: Box::new(|_, v, _| Ok(v.clone())),
            calls: Mutex::default(),
            events: Mutex::default(),
            start_context: Some(start_context),
            cancel_seen: Default::default(),
        })
    }

    fn calls(&self) -> Vec<(CallMeta, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Runner for Fake {
    fn name(&self) -> &str {
        &self.name
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn with_timeout(&self, _limit: Duration) -> Arc<dyn Runner> {
        unimplemented!("no test sets a state timeout on a fake")
    }
    async fn process(
        &self,
        meta: &CallMeta,
        input: &Value,
        ctx: &CallContext,
    ) -> Result<Value, PluginError> {
        self.calls
            .lock()
            .unwrap()
            .push((meta.clone(), input.clone()));
        let result = (self.behaviour)(meta, input, ctx);
        if matches!(&result, Ok(v) if v == WAIT_FOR_CANCEL) {
            while !ctx.cancel.is_cancelled() {
                tokio::task::yield_now().await;
            }
            self.cancel_seen
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(PluginError::Retryable("cancelled".into()));
        }
        result
    }
    async fn run(
        &self,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<StepOutput, PluginError> {
        let output = self.process(meta, context, ctx).await?;
        let next = output
            .get("next")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(StepOutput { output, next })
    }
    async fn on_event(
        &self,
        event: &HookEvent,
        _meta: &CallMeta,
        _context: &Value,
        _ctx: &CallContext,
    ) -> Result<HookResult, PluginError> {
        let name = match event {
            HookEvent::MachineStart => "machine_start".to_string(),
            HookEvent::MachineEnd => "machine_end".to_string(),
            HookEvent::StateEnter(s) => format!("enter {s}"),
            HookEvent::StateExit(s) => format!("exit {s}"),
            HookEvent::Action(a) => format!("action {a}"),
            HookEvent::Transition(t) => format!("transition {}->{}", t.from, t.to),
            HookEvent::Error(e) => format!("error {}", e.kind),
        };
        self.events.lock().unwrap().push(name);
        let context = match event {
            HookEvent::MachineStart => self.start_context.clone(),
            _ => None,
        };
        Ok(HookResult {
            context,
            redirect: None,
        })
    }
}

/// Fakes by plugin name; a name may be changed to another digest to stand
/// for a replaced plugin.
#[derive(Default)]
struct Fakes {
    runners: Mutex<HashMap<String, (Arc<Fake>, String)>>,
}

impl Fakes {
    fn add(&self, fake: Arc<Fake>) -> Arc<Fake> {
        let digest = format!("{:0>64}", fake.name.len());
        self.runners
            .lock()
            .unwrap()
            .insert(fake.name.clone(), (fake.clone(), digest));
        fake
    }

    fn set_digest(&self, name: &str, digest: &str) {
        if let Some(entry) = self.runners.lock().unwrap().get_mut(name) {
            entry.1 = digest.to_string();
        }
    }
}

impl Runners for Fakes {
    fn load(&self, spec: &PluginSpec, _world: World) -> Result<Loaded, EngineError> {
        let name = spec.plugin.clone();
        let runners = self.runners.lock().unwrap();
        let (fake, digest) = runners
            .get(&name)
            .ok_or_else(|| EngineError::Invalid(format!("no fake `{name}`")))?;
        Ok(Loaded {
            name,
            digest: digest.clone(),
            runner: fake.clone(),
        })
    }
    fn plugins_dir(&self) -> Option<&Path> {
        None
    }
}

#[derive(Default)]
struct Retries(Mutex<Vec<(u32, Duration)>>);

impl Observer for Retries {
    fn retry(&self, _id: &str, _state: &str, attempt: u32, pause: Duration) {
        self.0.lock().unwrap().push((attempt, pause));
    }
}

struct World_ {
    dir: tempfile::TempDir,
    backend: Arc<MemoryBackend>,
    fakes: Arc<Fakes>,
    retries: Arc<Retries>,
    engine: Arc<Engine>,
    runs: std::sync::atomic::AtomicUsize,
}

fn world() -> World_ {
    world_with(MemoryBackend::new())
}

/// A world whose store (and engine) read time from `clock`.
fn world_at(clock: Arc<crate::backend::ManualClock>) -> World_ {
    world_with(MemoryBackend::new().with_clock(clock))
}

fn world_with(backend: MemoryBackend) -> World_ {
    let backend = Arc::new(backend);
    let fakes = Arc::new(Fakes::default());
    let retries = Arc::new(Retries::default());
    let engine =
        Engine::with_runners(backend.clone(), fakes.clone()).with_observer(retries.clone());
    World_ {
        dir: tempfile::tempdir().unwrap(),
        backend,
        fakes,
        retries,
        engine: Arc::new(engine),
        runs: Default::default(),
    }
}

impl World_ {
    fn file(&self, name: &str, yaml: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// Starts `yaml` (each run from a file of its own: an engine loads a
    /// root file once).
    async fn run(&self, yaml: &str, input: Value) -> Outcome {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self.file(&format!("m{n}.yml"), yaml);
        self.engine.start(&path, input).await.unwrap()
    }
}

fn echo(name: &str) -> Arc<Fake> {
    Fake::new(name, |_, v, _| Ok(v.clone()))
}

fn output(o: &Outcome) -> &Value {
    assert_eq!(o.status, Status::Done, "{o:#?}");
    o.output.as_ref().unwrap()
}

#[tokio::test]
async fn the_initial_context_comes_from_the_input_and_start_hooks_may_replace_it() {
    let w = world();
    w.fakes.add(echo("p"));
    let hook = w
        .fakes
        .add(Fake::hook("h", json!({"from_hook": true, "x": "hooked"})));
    let yaml = r#"spec: flatmachine
data:
  plugins: {p: p, h: h}
  context: {x: "{{ input.a }}-ctx"}
  STATES_HOOKS
  states:
    s: {type: initial, plugin: p, input: {x: "{{ context.x }}"}, output_to_context: {seen: "{{ output.x }}"}, transitions: [{to: end}]}
    end: {type: final, output: {seen: "{{ context.seen }}", hooked: "{{ context.from_hook }}"}}
"#;
    let o = w
        .run(&yaml.replace("STATES_HOOKS", ""), json!({"a": 1}))
        .await;
    assert_eq!(output(&o), &json!({"seen": "1-ctx", "hooked": null}));

    let o = w
        .run(&yaml.replace("STATES_HOOKS", "hooks: h"), json!({"a": 1}))
        .await;
    assert_eq!(output(&o), &json!({"seen": "hooked", "hooked": true}));
    let events = hook.events.lock().unwrap().clone();
    assert_eq!(events.first().map(String::as_str), Some("machine_start"));
    assert_eq!(events.last().map(String::as_str), Some("machine_end"));
    assert!(
        events.contains(&"transition s->end".to_string()),
        "{events:?}"
    );

    // A context template that cannot render fails the execution at its start.
    let o = w
        .run(
            "spec: flatmachine\ndata:\n  context: {x: \"{{ input.a | fromjson }}\"}\n  states:\n    s: {type: initial, transitions: [{to: end}]}\n    end: {type: final}\n",
            json!({"a": "not json"}),
        )
        .await;
    assert_eq!(o.status, Status::Failed);
    assert_eq!(o.error.unwrap().kind, FailureKind::Template);
}

#[tokio::test]
async fn checkpoints_follow_the_machines_policy() {
    // The processor of the second state looks at what is stored right then.
    let w = world();
    let backend = w.backend.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    w.fakes.add(Fake::new("look", move |meta, _, _| {
        let id = meta.execution_id.clone();
        let stored = futures_lite_block(backend.load(&id)).ok().flatten();
        record
            .lock()
            .unwrap()
            .push(stored.map(|c| (c.state, c.step)));
        Ok(json!({}))
    }));
    let yaml = |policy: &str| {
        format!(
            "spec: flatmachine\ndata:\n  plugins: {{look: look}}\n{policy}  states:\n    a: {{type: initial, transitions: [{{to: b}}]}}\n    b: {{plugin: look, transitions: [{{to: end}}]}}\n    end: {{type: final}}\n"
        )
    };
    // Default: a checkpoint after every state, so `b` is stored when it runs.
    let o = w.run(&yaml(""), json!({})).await;
    output(&o);
    // Only at the end: nothing is stored while the machine runs.
    let o2 = w
        .run(
            &yaml("  persistence: {enabled: true, checkpoint_on: [machine_end]}\n"),
            json!({}),
        )
        .await;
    output(&o2);
    assert_eq!(
        *seen.lock().unwrap(),
        [Some(("b".to_string(), 2)), None],
        "stored while `b` ran"
    );
    // The end is always stored, with the result.
    let end = w.backend.load(&o2.id).await.unwrap().unwrap();
    assert_eq!((end.status.as_str(), end.state.as_str()), ("done", "end"));
    assert!(w.backend.read_result(&o2.id).await.unwrap().is_some());
}

/// Runs a future that completes without waiting (the memory backend's).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the memory backend does not wait"),
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_after_each_backoff_others_are_not() {
    let w = world();
    let flaky = w.fakes.add(Fake::new("flaky", |meta, _, _| {
        if meta.attempt < 3 {
            Err(PluginError::Retryable(format!("attempt {}", meta.attempt)))
        } else {
            Ok(json!({"attempt": meta.attempt}))
        }
    }));
    let started = tokio::time::Instant::now();
    let o = w
        .run(
            r#"spec: flatmachine
data:
  plugins: {flaky: flaky}
  states:
    s:
      type: initial
      plugin: flaky
      execution: {type: retry, backoffs: [5, 10, 20]}
      output_to_context: {attempt: "{{ output.attempt }}"}
      transitions: [{to: end}]
    end: {type: final, output: {attempt: "{{ context.attempt }}"}}
"#,
            json!({}),
        )
        .await;
    assert_eq!(output(&o), &json!({"attempt": 3}));
    // Two pauses, as the backoffs say, measured on tokio's clock.
    assert_eq!(
        *w.retries.0.lock().unwrap(),
        [(2, Duration::from_secs(5)), (3, Duration::from_secs(10))]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    // Every attempt had its own idempotency key.
    let keys: Vec<String> = flaky
        .calls()
        .iter()
        .map(|(m, _)| m.idempotency_key.clone())
        .collect();
    assert_eq!(keys, [1, 2, 3].map(|a| format!("{}/1/{a}", o.id)).to_vec());

    // invalid_input would fail the same way again: no retry.
    w.fakes.add(Fake::new("strict", |_, _, _| {
        Err(PluginError::InvalidInput("no".into()))
    }));
    let o = w
        .run(
            "spec: flatmachine\ndata:\n  plugins: {strict: strict}\n  states:\n    s: {type: initial, plugin: strict, execution: {type: retry, backoffs: [5]}, transitions: [{to: end}]}\n    end: {type: final}\n",
            json!({}),
        )
        .await;
    assert_eq!(o.status, Status::Failed);
    assert_eq!(o.error.unwrap().kind, FailureKind::InvalidInput);
    assert_eq!(w.retries.0.lock().unwrap().len(), 2, "no new retry");
}

#[tokio::test]
async fn failures_route_by_kind_and_unrouted_ones_end_the_execution() {
    let w = world();
    w.fakes.add(Fake::new("boom", |_, _, _| {
        Err(PluginError::Fatal("boom".into()))
    }));
    let yaml = r#"spec: flatmachine
data:
  plugins: {boom: boom}
  settings: {max_steps: 10}
  states:
    s:
      type: initial
      plugin: boom
      on_error: {fatal: caught, default: other}
      transitions: [{to: end}]
    caught:
      transitions: [{condition: "context.never == true", to: end}]
      on_error: {no_transition: stuck}
    stuck: {type: final, output: {kinds: "{{ context.last_error_type }}"}}
    other: {type: final}
    end: {type: final}
"#;
    let o = w.run(yaml, json!({})).await;
    assert_eq!(output(&o), &json!({"kinds": "no_transition"}));

    // A loop is ended by max_steps, which no on_error can route.
    let o = w
        .run(
            "spec: flatmachine\ndata:\n  settings: {max_steps: 5}\n  states:\n    a: {type: initial, transitions: [{to: b}]}\n    b: {transitions: [{to: a}]}\n    end: {type: final}\n",
            json!({}),
        )
        .await;
    assert_eq!(o.status, Status::Failed);
    let e = o.error.unwrap();
    assert_eq!(e.kind, FailureKind::MaxSteps);
}

const FANOUT: &str = r#"spec: flatmachine
data:
  machines:
    child:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, input: {v: "{{ input.v }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
          end: {type: final, output: {v: "{{ context.v }}"}}
  states:
    fan:
      type: initial
      foreach: "{{ input.items }}"
      as: x
      machine: child
      input: {v: "{{ x }}"}
      MODE
      output_to_context: {all: "{{ output }}"}
      on_error: failed
      transitions: [{to: end}]
    failed: {type: final, output: {failed: "{{ context.last_error }}"}}
    end: {type: final, output: {all: "{{ context.all }}"}}
"#;

/// A fan-out whose children fan out in turn (on the run queue: queued
/// children that spread children of their own).
const NESTED: &str = r#"spec: flatmachine
data:
  machines:
    mid:
      spec: flatmachine
      data:
        machines:
          leaf:
            spec: flatmachine
            data:
              plugins: {item: item}
              states:
                work: {type: initial, plugin: item, input: {v: "{{ input.v }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
                end: {type: final, output: "{{ context.v }}"}
        states:
          fan: {type: initial, foreach: "{{ [input.v, input.v * 10] }}", as: x, machine: leaf, input: {v: "{{ x }}"}, output_to_context: {all: "{{ output }}"}, transitions: [{to: end}]}
          end: {type: final, output: {sum: "{{ context.all | sum }}"}}
  states:
    fan:
      type: initial
      foreach: "{{ input.items }}"
      as: x
      machine: mid
      input: {v: "{{ x }}"}
      output_to_context: {all: "{{ output }}"}
      on_error: failed
      transitions: [{to: end}]
    failed: {type: final, output: {failed: "{{ context.last_error_type }}"}}
    end: {type: final, output: {all: "{{ context.all }}"}}
"#;

/// Parallel machines (`machine: [a, b]`), a failure routed by `on_error`.
const PARALLEL: &str = r#"spec: flatmachine
data:
  machines:
    a:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, input: {v: "{{ input.v }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
          end: {type: final, output: {v: "{{ context.v }}"}}
    b:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, input: {v: "{{ input.v + 1 }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
          end: {type: final, output: {v: "{{ context.v }}"}}
  states:
    both:
      type: initial
      machine: [a, b]
      input: {v: "{{ input.v }}"}
      output_to_context: {both: "{{ output }}"}
      on_error: recover
      transitions:
        - {condition: "context.both.a.v > 35", to: big}
        - {to: end}
    recover: {type: final, output: {recovered: "{{ context.last_error_type }}"}}
    big: {type: final, output: {big: "{{ context.both }}"}}
    end: {type: final, output: {small: "{{ context.both }}"}}
"#;

#[tokio::test]
async fn fan_in_collects_child_outcomes_in_item_order() {
    let w = world();
    w.fakes
        .add(Fake::new("item", |_, input, _| match input["v"].as_i64() {
            Some(3) => Err(PluginError::Fatal("three".into())),
            Some(v) => Ok(json!({"v": v * 10})),
            None => Err(PluginError::InvalidInput("no v".into())),
        }));
    let o = w
        .run(&FANOUT.replace("MODE", ""), json!({"items": [1, 2, 4]}))
        .await;
    assert_eq!(
        output(&o),
        &json!({"all": [{"v": 10}, {"v": 20}, {"v": 40}]})
    );
    // Each child is an execution of its own, stored with its parent.
    let child = w
        .backend
        .load(&format!("{}:1:2", o.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child.parent.as_deref(), Some(o.id.as_str()));

    // One failed child fails the state (routed by on_error here)...
    let o = w
        .run(&FANOUT.replace("MODE", ""), json!({"items": [1, 3]}))
        .await;
    let failed = output(&o)["failed"].as_str().unwrap().to_string();
    assert!(
        failed.contains("1 of 2 child executions failed"),
        "{failed}"
    );
    // ...unless the state keeps partial results.
    let o = w
        .run(
            &FANOUT.replace("MODE", "continue_on_partial: true"),
            json!({"items": [1, 3]}),
        )
        .await;
    let all = &output(&o)["all"];
    assert_eq!(all[0], json!({"ok": true, "output": {"v": 10}}));
    assert_eq!(all[1]["ok"], false);
    assert_eq!(all[1]["error"]["kind"], "fatal");
}

#[tokio::test]
async fn mode_any_takes_the_first_success_and_cancels_the_others() {
    let w = world();
    let item = w.fakes.add(Fake::new("item", move |_, input, _| {
        if input["v"] == 1 {
            Ok(json!({"v": "fast"}))
        } else {
            // The slow one runs until it is cancelled.
            Ok(json!(WAIT_FOR_CANCEL))
        }
    }));
    let yaml = r#"spec: flatmachine
data:
  machines:
    child:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, input: {v: "{{ input.v }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
          end: {type: final, output: {v: "{{ context.v }}"}}
  states:
    race:
      type: initial
      machine: [child, child]
      MACHINE_INPUTS
      mode: any
      output_to_context: {winner: "{{ output.v }}"}
      transitions: [{to: end}]
    end: {type: final, output: {winner: "{{ context.winner }}"}}
"#;
    // Two children of the same machine with different inputs: as a foreach.
    let yaml = yaml
        .replace("machine: [child, child]\n      MACHINE_INPUTS\n", "foreach: \"{{ input.items }}\"\n      as: x\n      machine: child\n      input: {v: \"{{ x }}\"}\n");
    let o = w.run(&yaml, json!({"items": [2, 1]})).await;
    assert_eq!(output(&o), &json!({"winner": "fast"}));
    assert!(
        item.cancel_seen.load(std::sync::atomic::Ordering::SeqCst),
        "the slower child saw its cancellation"
    );
}

#[tokio::test]
async fn launches_go_through_the_outbox_and_run_on_their_own() {
    let w = world();
    w.fakes.add(echo("p"));
    let o = w
        .run(
            r#"spec: flatmachine
data:
  machines:
    side:
      spec: flatmachine
      data:
        plugins: {p: p}
        states:
          s: {type: initial, plugin: p, input: {got: "{{ input.n }}"}, output_to_context: {got: "{{ output.got }}"}, transitions: [{to: end}]}
          end: {type: final, output: {got: "{{ context.got }}"}}
  states:
    start:
      type: initial
      launch: side
      launch_input: {n: 7}
      transitions: [{to: end}]
    end: {type: final, output: {done: true}}
"#,
            json!({}),
        )
        .await;
    assert_eq!(output(&o), &json!({"done": true}));
    // The parent's record lists the launch as started (the outbox).
    let parent: Record =
        serde_json::from_str(&w.backend.load(&o.id).await.unwrap().unwrap().record).unwrap();
    assert_eq!(parent.launches.len(), 1);
    assert!(parent.launches[0].started);
    w.engine.wait_detached().await;
    let launched = &parent.launches[0].id;
    let result = w.backend.read_result(launched).await.unwrap().unwrap();
    assert_eq!(result.value, json!({"got": 7}));
}

#[tokio::test]
async fn a_waiting_execution_parks_on_its_channel_and_a_signal_continues_it() {
    let w = world();
    let yaml = r#"spec: flatmachine
data:
  states:
    ask: {type: initial, wait_for: "answer-{{ input.n }}", output_to_context: {by: "{{ output.by }}"}, transitions: [{to: end}]}
    end: {type: final, output: {by: "{{ context.by }}"}}
"#;
    let o = w.run(yaml, json!({"n": 4})).await;
    assert_eq!(o.status, Status::Waiting);
    assert_eq!(o.waiting.unwrap().channel, "answer-4");
    // Resuming without a signal parks it again.
    let again = w.engine.resume(&o.id).await.unwrap();
    assert_eq!(again.status, Status::Waiting);
    w.backend
        .send_signal(&o.id, "answer-4", json!({"by": "ada"}))
        .await
        .unwrap();
    let done = w.engine.resume(&o.id).await.unwrap();
    assert_eq!(output(&done), &json!({"by": "ada"}));
}

#[tokio::test]
async fn resume_runs_the_pinned_definition_and_refuses_a_changed_runner() {
    let w = world();
    w.fakes.add(echo("p"));
    let yaml = r#"spec: flatmachine
data:
  plugins: {p: p}
  states:
    ask: {type: initial, wait_for: go, transitions: [{to: work}]}
    work: {plugin: p, input: {v: 1}, transitions: [{to: end}]}
    end: {type: final, output: {version: 1}}
"#;
    let o = w.run(yaml, json!({})).await;
    assert_eq!(o.status, Status::Waiting);
    // The file changes and then disappears: the execution keeps its own.
    let path = w.file("m0.yml", &yaml.replace("version: 1", "version: 2"));
    std::fs::remove_file(&path).unwrap();
    // A fresh engine (another process) on the same store.
    let fresh = Arc::new(Engine::with_runners(w.backend.clone(), w.fakes.clone()));
    w.fakes.set_digest("p", &"f".repeat(64));
    w.backend.send_signal(&o.id, "go", json!({})).await.unwrap();
    let e = fresh.resume(&o.id).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Changed(m) if m.contains("plugin `p` changed")),
        "{e}"
    );
    w.fakes.set_digest("p", &format!("{:0>64}", 1));
    let done = fresh.resume(&o.id).await.unwrap();
    assert_eq!(output(&done), &json!({"version": 1}));
}

#[tokio::test]
async fn describe_shows_children_progress_and_signal_says_where_it_lands() {
    let w = world();
    w.fakes.add(echo("item"));
    let yaml = r#"spec: flatmachine
data:
  machines:
    child:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, transitions: [{condition: "input.v == 2", to: ask}, {to: end}]}
          ask: {wait_for: go, transitions: [{to: end}]}
          end: {type: final, output: {v: "{{ input.v }}"}}
  states:
    fan: {type: initial, foreach: "{{ input.items }}", as: x, machine: child, input: {v: "{{ x }}"}, output_to_context: {all: "{{ output }}"}, transitions: [{to: end}]}
    end: {type: final, output: "{{ context.all }}"}
"#;
    let o = w.run(yaml, json!({"items": [1, 2, 3]})).await;
    assert_eq!(o.status, Status::Waiting);
    let waiting = o.waiting.clone().unwrap().execution;
    assert_ne!(waiting, o.id, "a child waits, not the parent");

    let parent = services::describe(w.backend.as_ref(), &o.id).await.unwrap();
    assert_eq!(
        parent.children,
        Some(services::Progress {
            total: 3,
            done: 2,
            failed: 0,
            cancelled: 0,
            waiting: 1
        })
    );
    // The parent's checkpoint names its children; their outcomes stay in
    // their own records (read again at the fan-in after the resume below).
    let stored = w.backend.load(&o.id).await.unwrap().unwrap();
    assert!(stored.record.contains(&waiting), "{}", stored.record);
    assert!(!stored.record.contains("outcome"), "{}", stored.record);
    let child = services::describe(w.backend.as_ref(), &waiting)
        .await
        .unwrap();
    assert_eq!(child.root, o.id);
    assert_eq!(child.waiting_for.as_deref(), Some("go"));
    assert!(matches!(
        services::describe(w.backend.as_ref(), "nope").await,
        Err(EngineError::NotFound(_))
    ));

    let other = w.engine.signal(&waiting, "later", json!(0)).await.unwrap();
    assert_eq!(
        other.delivery,
        services::Delivery::OtherChannel("go".into())
    );
    let sent = w.engine.signal(&waiting, "go", json!(1)).await.unwrap();
    assert_eq!(
        sent,
        services::Signalled {
            delivery: services::Delivery::Awaited,
            root: o.id.clone(),
            queued: false,
        }
    );
    let done = w.engine.resume(&sent.root).await.unwrap();
    assert_eq!(output(&done), &json!([{"v": 1}, {"v": 2}, {"v": 3}]));
    assert!(matches!(
        w.engine.signal(&o.id, "go", json!(1)).await,
        Err(EngineError::Finished(_))
    ));
}

#[tokio::test]
async fn signals_sent_before_the_waits_are_each_delivered_once() {
    let w = world();
    // Two waits on one channel, checkpoints off: each delivered signal is
    // still consumed by a stored checkpoint, and none is delivered twice.
    let yaml = r#"spec: flatmachine
data:
  persistence: {enabled: false}
  states:
    first: {type: initial, wait_for: go, output_to_context: {a: "{{ output }}"}, transitions: [{to: second}]}
    second: {wait_for: go, output_to_context: {b: "{{ output }}"}, transitions: [{to: end}]}
    end: {type: final, output: "{{ context }}"}
"#;
    let id = "early".to_string();
    for n in [1, 2] {
        w.backend.send_signal(&id, "go", json!(n)).await.unwrap();
    }
    let path = w.file("early.yml", yaml);
    let o = w.engine.start_with_id(&path, json!({}), id).await.unwrap();
    assert_eq!(output(&o), &json!({"a": 1, "b": 2}));
    assert_eq!(w.backend.peek_signal("early", "go").await.unwrap(), None);
}

/// The `event` names of an execution's stored history.
async fn history_kinds(w: &World_, id: &str) -> Vec<String> {
    use crate::backend::History;
    w.backend
        .history(id, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn history_records_calls_retries_routes_and_fan_outs_within_its_limit() {
    let w = world();
    w.fakes.add(Fake::new("flaky", |meta, _, _| {
        if meta.attempt < 2 {
            Err(PluginError::Retryable("once".into()))
        } else {
            Err(PluginError::InvalidInput("then no".into()))
        }
    }));
    w.fakes.add(echo("item"));
    let yaml = r#"spec: flatmachine
data:
  plugins: {flaky: flaky}
  machines:
    child:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, transitions: [{to: end}]}
          end: {type: final}
  states:
    s: {type: initial, plugin: flaky, execution: {type: retry, backoffs: [1]}, on_error: {invalid_input: fan}, transitions: [{to: end}]}
    fan: {foreach: "{{ [1, 2] }}", machine: child, transitions: [{to: end}]}
    end: {type: final}
"#;
    let o = w.run(yaml, json!({})).await;
    assert_eq!(o.status, Status::Done, "{o:#?}");
    assert_eq!(
        history_kinds(&w, &o.id).await,
        [
            "plugin_called",
            "retry_scheduled",
            "plugin_called",
            "routed",
            "state_entered",
            "children_started",
            "children_finished",
            "state_entered",
            "finished"
        ]
    );
    use crate::backend::History;
    let events = w.backend.history(&o.id, 0, 100).await.unwrap();
    assert_eq!(events[0].event["error"], "retryable");
    assert_eq!(events[1].event["pause_ms"], 1000);
    assert_eq!(events[2].event["attempt"], 2);
    assert_eq!(events[3].event["to"], "fan");
    assert_eq!(events[6].event["done"], 2);
    // Each child keeps its own story.
    let child = format!("{}:2:0", o.id);
    assert_eq!(
        history_kinds(&w, &child).await,
        ["plugin_called", "state_entered", "finished"]
    );
    // A call that succeeded says how much it returned; a failed one does not.
    // (`item` echoes the state's input, the child's empty context: `{}`.)
    let called = &w.backend.history(&child, 0, 1).await.unwrap()[0].event;
    assert_eq!(called["output_bytes"], 2, "{called}");
    assert_eq!(events[0].event.get("output_bytes"), None);

    // A machine's limit keeps the newest events only; 0 keeps none.
    let limited = yaml.replace(
        "  states:\n    s:",
        "  settings: {history_limit: 2}\n  states:\n    s:",
    );
    let o = w.run(&limited, json!({})).await;
    assert_eq!(
        history_kinds(&w, &o.id).await,
        ["state_entered", "finished"]
    );
    let off = yaml.replace(
        "  states:\n    s:",
        "  settings: {history_limit: 0}\n  states:\n    s:",
    );
    let o = w.run(&off, json!({})).await;
    assert_eq!(history_kinds(&w, &o.id).await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn wait_returns_the_result_once_written_or_gives_up_at_its_timeout() {
    use crate::backend::{Checkpoint, StoredResult};
    let backend = Arc::new(MemoryBackend::new());
    assert!(matches!(
        services::wait(backend.as_ref(), "nope", None).await,
        Err(EngineError::NotFound(_))
    ));
    backend
        .save(Checkpoint {
            id: "x".into(),
            parent: None,
            machine: "m".into(),
            status: Status::Running,
            state: "s".into(),
            step: 1,
            created_ms: 0,
            updated_ms: 0,
            record: "{}".into(),
            consumes_signal: None,
            enqueue: Vec::new(),
            fence: None,
            result: None,
        })
        .await
        .unwrap();
    let gave_up = services::wait(backend.as_ref(), "x", Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(gave_up, services::Waited::TimedOut(Status::Running));

    // Written by someone else while it waits (tokio's clock is paused and
    // moves when every task waits).
    let writer = backend.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let done = StoredResult {
            fence: None,
            status: Status::Done,
            value: json!({"ok": true}),
            written_ms: 1,
            counts_toward: None,
        };
        writer.write_result("x", done).await.unwrap();
    });
    let started = tokio::time::Instant::now();
    match services::wait(backend.as_ref(), "x", None).await.unwrap() {
        services::Waited::Finished(r) => assert_eq!(r.value, json!({"ok": true})),
        other => panic!("{other:?}"),
    }
    // Polling stays sparse: it noticed within one long pause.
    assert!(started.elapsed() <= Duration::from_millis(30_250));
}

#[tokio::test]
async fn a_run_whose_lease_was_taken_over_cannot_write_and_stops() {
    use crate::backend::{Claim, Owner, Ownership};
    let w = world();
    let backend = w.backend.clone();
    // While the first state runs, another process takes the execution over
    // (as `resume` does once it knows the holder is dead).
    w.fakes.add(Fake::new("usurp", move |_, _, _| {
        let lease = futures_lite_block(backend.lease("taken")).unwrap().unwrap();
        let intruder = Owner {
            id: "intruder".into(),
            pid: 1,
            host: "elsewhere".into(),
            started: 0,
        };
        let claim =
            futures_lite_block(backend.acquire("taken", &intruder, 60_000, Some(lease.token)));
        assert!(matches!(claim, Ok(Claim::Acquired(_))));
        Ok(json!({}))
    }));
    w.fakes.add(echo("item"));
    let yaml = r#"spec: flatmachine
data:
  plugins: {usurp: usurp, item: item}
  states:
    first: {type: initial, plugin: usurp, transitions: [{to: second}]}
    second: {plugin: item, transitions: [{to: end}]}
    end: {type: final}
"#;
    let path = w.file("taken.yml", yaml);
    let err = w
        .engine
        .start_with_id(&path, json!({}), "taken".into())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("lost ownership of `taken`"),
        "{err}"
    );
    // What the usurped run would have written after the takeover is not there.
    let stored = w.backend.load("taken").await.unwrap().unwrap();
    assert_eq!((stored.state.as_str(), stored.step), ("first", 1));
    assert_eq!(w.backend.read_result("taken").await.unwrap(), None);
}

#[tokio::test]
async fn cancel_ends_a_parked_tree_and_refuses_one_a_live_process_runs() {
    use crate::backend::{Claim, Owner, Ownership};
    let w = world();
    w.fakes.add(echo("item"));
    let yaml = r#"spec: flatmachine
data:
  machines:
    child:
      spec: flatmachine
      data:
        plugins: {item: item}
        states:
          work: {type: initial, plugin: item, transitions: [{condition: "input.v == 2", to: ask}, {to: end}]}
          ask: {wait_for: go, transitions: [{to: end}]}
          end: {type: final}
  states:
    fan: {type: initial, foreach: "{{ input.items }}", as: x, machine: child, input: {v: "{{ x }}"}, transitions: [{to: end}]}
    end: {type: final}
"#;
    let o = w.run(yaml, json!({"items": [1, 2]})).await;
    assert_eq!(o.status, Status::Waiting);
    let child = o.waiting.clone().unwrap().execution;

    let because = |reason: &str| CancelOptions {
        reason: reason.into(),
        launched: false,
    };
    assert_eq!(
        w.engine
            .cancel(&o.id, &because("no longer needed"))
            .await
            .unwrap(),
        Cancelled {
            ended: 2,
            requested: vec![]
        }
    );
    for id in [&o.id, &child] {
        let r = w.backend.read_result(id).await.unwrap().unwrap();
        assert_eq!(r.status, Status::Cancelled, "{id}");
        assert_eq!(r.value["message"], "no longer needed");
        assert_eq!(r.value["kind"], "cancelled");
    }
    assert_eq!(
        history_kinds(&w, &o.id).await.last().map(String::as_str),
        Some("finished")
    );
    assert!(
        history_kinds(&w, &child)
            .await
            .contains(&"cancelled".to_string())
    );
    // Finished now: no second cancel, no signal, resume changes nothing.
    assert!(matches!(
        w.engine.cancel(&o.id, &because("again")).await,
        Err(EngineError::Finished(_))
    ));
    assert!(matches!(
        w.engine.signal(&child, "go", json!(1)).await,
        Err(EngineError::Finished(_))
    ));
    assert_eq!(
        w.engine.resume(&o.id).await.unwrap().status,
        Status::Cancelled
    );

    // An execution another live process runs is not ended here: its owner
    // is asked (a request on the cancel channel), and ends it when it sees it.
    let o = w.run(yaml, json!({"items": [2]})).await;
    let elsewhere = Owner {
        id: "other".into(),
        pid: 1,
        host: "another-host".into(),
        started: 0,
    };
    let lease = w.backend.lease(&o.id).await.unwrap().unwrap();
    let claim = w
        .backend
        .acquire(&o.id, &elsewhere, 60_000, Some(lease.token))
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Acquired(_)));
    assert_eq!(
        w.engine.cancel(&o.id, &because("mine")).await.unwrap(),
        Cancelled {
            ended: 0,
            requested: vec![o.id.clone()]
        }
    );
    assert_eq!(
        w.backend.load(&o.id).await.unwrap().unwrap().status,
        Status::Waiting
    );
    let request = w
        .backend
        .peek_signal(&o.id, owner::CANCEL_CHANNEL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.data, json!({"reason": "mine"}));
}

/// A running execution is cancelled by request: its owner sees the request
/// at its next look, the running plugin sees `cancelled()`, and the
/// execution ends `cancelled` with the reason (no retry, no `on_error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_execution_is_cancelled_by_request_through_its_owner() {
    let w = world();
    let slow = w
        .fakes
        .add(Fake::new("slow", |_, _, _| Ok(json!(WAIT_FOR_CANCEL))));
    let path = w.file(
        "slow.yml",
        r#"spec: flatmachine
data:
  plugins: {slow: slow}
  states:
    work:
      type: initial
      plugin: slow
      execution: {type: retry, backoffs: [0.01, 0.01]}
      on_error: recover
      transitions: [{to: end}]
    recover: {type: final, output: {recovered: true}}
    end: {type: final}
"#,
    );
    let runner = {
        let engine = w.engine.clone();
        tokio::spawn(async move {
            engine
                .start_with_id(&path, json!({}), "busy".into())
                .await
                .unwrap()
        })
    };
    while slow.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    let options = CancelOptions {
        reason: "operator says stop".into(),
        launched: false,
    };
    let done = w
        .engine
        .cancel_and_wait("busy", &options, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        done,
        Cancelled {
            ended: 1,
            requested: vec![]
        }
    );
    let o = runner.await.unwrap();
    assert_eq!(o.status, Status::Cancelled);
    assert!(slow.cancel_seen.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(slow.calls().len(), 1, "a cancelled state is not retried");
    let r = w.backend.read_result("busy").await.unwrap().unwrap();
    assert_eq!(r.status, Status::Cancelled);
    assert_eq!(r.value["message"], "operator says stop");
    assert!(
        history_kinds(&w, "busy")
            .await
            .contains(&"cancelled".to_string())
    );
}

/// Cancelling a running root reaches the plugins running in its local
/// fan-out children: each sees `cancelled()`, and the tree ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_fan_out_is_cancelled_down_to_its_childrens_plugins() {
    let w = world();
    let item = w
        .fakes
        .add(Fake::new("item", |_, _, _| Ok(json!(WAIT_FOR_CANCEL))));
    let path = w.file("fan.yml", &FANOUT.replace("MODE", ""));
    let runner = {
        let engine = w.engine.clone();
        tokio::spawn(async move {
            engine
                .start_with_id(&path, json!({"items": [1, 2]}), "tree".into())
                .await
                .unwrap()
        })
    };
    while item.calls().len() < 2 {
        tokio::task::yield_now().await;
    }
    let options = CancelOptions {
        reason: "enough".into(),
        launched: false,
    };
    w.engine
        .cancel_and_wait("tree", &options, Duration::from_secs(60))
        .await
        .unwrap();
    let o = runner.await.unwrap();
    assert_eq!(o.status, Status::Cancelled);
    assert!(item.cancel_seen.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(item.calls().len(), 2, "nothing started after the cancel");
}

#[tokio::test]
async fn a_submitted_execution_waits_queued_until_a_worker_runs_it_once() {
    use crate::backend::{JobStatus, WorkPools};
    let w = world();
    let calls = w.fakes.add(echo("item"));
    let yaml = "spec: flatmachine\ndata:\n  plugins: {item: item}\n  states:\n    s: {type: initial, plugin: item, input: {v: \"{{ input.v }}\"}, output_to_context: {v: \"{{ output.v }}\"}, transitions: [{to: end}]}\n    end: {type: final, output: {v: \"{{ context.v }}\"}}\n";
    let path = w.file("queued.yml", yaml);
    let sent = w
        .engine
        .submit(&path, json!({"v": 7}), Some("q1".into()))
        .await
        .unwrap();
    assert_eq!(
        sent,
        queue::Submitted {
            id: "q1".into(),
            created: true
        }
    );
    assert_eq!(
        w.backend.load("q1").await.unwrap().unwrap().status,
        Status::Queued
    );
    assert!(calls.calls().is_empty(), "nothing runs at submit");
    // The same id again: the same execution, one job.
    let again = w
        .engine
        .submit(&path, json!({"v": 8}), Some("q1".into()))
        .await
        .unwrap();
    assert!(!again.created);
    let jobs = w
        .backend
        .jobs(queue::EXECUTIONS_POOL, Some(JobStatus::Pending), 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload, json!({"execution": "q1"}));

    let o = w.engine.run_queued("q1").await.unwrap();
    assert_eq!(output(&o), &json!({"v": 7}));
    // Run again (a job retried after its result was stored): nothing re-runs.
    let o = w.engine.run_queued("q1").await.unwrap();
    assert_eq!(o.status, Status::Done);
    assert_eq!(calls.calls().len(), 1);
    // A finished execution is not submitted again.
    assert!(
        !w.engine
            .submit(&path, json!({}), Some("q1".into()))
            .await
            .unwrap()
            .created
    );
}

#[tokio::test]
async fn retry_runs_a_failed_execution_again_from_the_state_that_failed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = world();
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    w.fakes.add(Fake::new("fragile", move |_, input, _| {
        if flag.load(Ordering::SeqCst) && input["v"] == 2 {
            Err(PluginError::Fatal("broken".into()))
        } else {
            Ok(input.clone())
        }
    }));
    let first = w.fakes.add(echo("first"));
    let yaml = r#"spec: flatmachine
data:
  plugins: {first: first}
  machines:
    child:
      spec: flatmachine
      data:
        plugins: {fragile: fragile}
        states:
          work: {type: initial, plugin: fragile, input: {v: "{{ input.v }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
          end: {type: final, output: "{{ context.v }}"}
  states:
    start: {type: initial, plugin: first, transitions: [{to: fan}]}
    fan: {foreach: "{{ [1, 2, 3] }}", as: x, machine: child, input: {v: "{{ x }}"}, output_to_context: {all: "{{ output }}"}, transitions: [{to: end}]}
    end: {type: final, output: "{{ context.all }}"}
"#;
    let o = w.run(yaml, json!({})).await;
    assert_eq!(o.status, Status::Failed);
    assert!(matches!(
        w.engine.retry(&format!("{}:2:0", o.id)).await,
        Err(EngineError::Invalid(_))
    ));
    broken.store(false, Ordering::SeqCst);
    let done = w.engine.retry(&o.id).await.unwrap();
    assert_eq!(output(&done), &json!([1, 2, 3]));
    // From the failed state: the first state did not run again.
    assert_eq!(first.calls().len(), 1);
    let result = w.backend.read_result(&o.id).await.unwrap().unwrap();
    assert_eq!(result.status, Status::Done);
    let kinds = history_kinds(&w, &o.id).await;
    assert!(kinds.contains(&"retried".to_string()), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("finished"));
    // Only a failed execution is retried.
    assert!(matches!(
        w.engine.retry(&o.id).await,
        Err(EngineError::Finished(_))
    ));
}

/// Runs the run queue's jobs as a worker would, newest first (so children
/// finish in the reverse of their order), until none is left; returns the
/// executions run, in order.
async fn drain_queue(w: &World_) -> Vec<String> {
    let mut ran = Vec::new();
    while let Some(id) = run_one(w, |_| true).await {
        ran.push(id);
    }
    ran
}

/// Runs the newest due job of the run queue that `pick` accepts, as a
/// worker would; returns the execution it ran.
async fn run_one(w: &World_, pick: impl Fn(&crate::backend::Job) -> bool) -> Option<String> {
    use crate::backend::WorkPools;
    let pending = w
        .backend
        .jobs(
            queue::EXECUTIONS_POOL,
            Some(crate::backend::JobStatus::Pending),
            100_000,
        )
        .await
        .unwrap();
    // (Jobs not yet due, such as a deadline's, wait.)
    let now = crate::backend::Backend::clock(&*w.backend).now_ms();
    let job = pending
        .iter()
        .rev()
        .find(|j| j.run_at_ms <= now && pick(j))?;
    let id = job.payload["execution"].as_str().unwrap().to_string();
    let claimed = w
        .backend
        .claim(queue::EXECUTIONS_POOL, "w", 100_000, 60_000)
        .await
        .unwrap();
    let mine = claimed.iter().find(|j| j.id == job.id).unwrap();
    let o = w.engine.run_queued(&id).await.unwrap();
    w.backend
        .complete(mine.id, mine.fence, json!(o.status))
        .await
        .unwrap();
    // The others go back, as a worker that did not get to them.
    w.backend.release_worker("w").await.unwrap();
    Some(id)
}

/// The executions whose run-queue jobs are pending.
async fn queued_jobs(w: &World_) -> Vec<String> {
    use crate::backend::WorkPools;
    w.backend
        .jobs(
            queue::EXECUTIONS_POOL,
            Some(crate::backend::JobStatus::Pending),
            100_000,
        )
        .await
        .unwrap()
        .iter()
        .map(|j| j.payload["execution"].as_str().unwrap().to_string())
        .collect()
}

/// Submits `yaml` with `input` and runs the run queue dry: the outcome of
/// the distributed driver, to compare with the local one.
async fn run_distributed(w: &World_, yaml: &str, input: Value) -> (Outcome, Vec<String>) {
    let n = w.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = w.file(&format!("q{n}.yml"), yaml);
    let id = w.engine.submit(&path, input, None).await.unwrap().id;
    let ran = drain_queue(w).await;
    let rec = w.engine.load_record(&id).await.unwrap();
    let o = Outcome {
        id: rec.id.clone(),
        machine: rec.machine.clone(),
        status: rec.status,
        output: rec.output.clone(),
        error: rec.error.clone(),
        waiting: None,
    };
    (o, ran)
}

#[tokio::test]
async fn a_queued_fan_out_parks_its_parent_and_the_last_child_wakes_it() {
    use crate::backend::{JobStatus, WorkPools};
    let w = world();
    w.fakes
        .add(Fake::new("item", |_, input, _| match input["v"].as_i64() {
            Some(3) => Err(PluginError::Fatal("three".into())),
            Some(v) => Ok(json!({"v": v * 10})),
            None => Err(PluginError::InvalidInput("no v".into())),
        }));
    let yaml = FANOUT.replace("MODE", "");
    let path = w.file("spread.yml", &yaml);
    let id = w
        .engine
        .submit(&path, json!({"items": [1, 2, 4]}), None)
        .await
        .unwrap()
        .id;
    // The parent's run stores its children as queued executions and parks.
    let o = w.engine.run_queued(&id).await.unwrap();
    assert_eq!(o.status, Status::Running, "{o:?}");
    let parent = w.engine.load_record(&id).await.unwrap();
    let children: Vec<String> = parent
        .pending
        .as_ref()
        .unwrap()
        .children
        .iter()
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(children.len(), 3);
    for c in &children {
        let rec = w.engine.load_record(c).await.unwrap();
        assert_eq!(
            (rec.status, rec.queued, rec.parent.as_deref()),
            (Status::Queued, true, Some(id.as_str()))
        );
    }
    let queued = |w: &World_| {
        let b = w.backend.clone();
        async move {
            b.jobs(queue::EXECUTIONS_POOL, Some(JobStatus::Pending), 100)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.payload["execution"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // (The parent's own job is still pending: this test runs it by hand.)
    let waiting: Vec<String> = queued(&w).await.into_iter().filter(|e| *e != id).collect();
    assert_eq!(waiting, children, "the children wait on the run queue");
    // Each child runs on its own (any worker; here in reverse order). The
    // parent is woken only by the last one, and a child run twice counts once.
    w.engine.run_queued(&children[2]).await.unwrap();
    w.engine.run_queued(&children[1]).await.unwrap();
    w.engine.run_queued(&children[1]).await.unwrap();
    let jobs_of = |ids: Vec<String>| ids.into_iter().filter(|e| *e == id).count();
    assert_eq!(
        jobs_of(queued(&w).await),
        1,
        "not woken before the last child"
    );
    let last = w.engine.run_queued(&children[0]).await.unwrap();
    assert_eq!(last.status, Status::Done);
    assert_eq!(
        jobs_of(queued(&w).await),
        2,
        "the last child wakes the parent once"
    );
    let o = w.engine.run_queued(&id).await.unwrap();
    assert_eq!(
        output(&o),
        &json!({"all": [{"v": 10}, {"v": 20}, {"v": 40}]})
    );
}

/// The local driver (`run`) and the distributed one (`submit` + workers)
/// give the same outcome for the engine's machines: linear, fan-out with a
/// failed child routed, partial results, launches.
#[tokio::test]
async fn local_and_distributed_drivers_give_the_same_outcomes() {
    let w = world();
    w.fakes
        .add(Fake::new("item", |_, input, _| match input["v"].as_i64() {
            Some(3) => Err(PluginError::Fatal("three".into())),
            Some(v) => Ok(json!({"v": v * 10})),
            None => Err(PluginError::InvalidInput("no v".into())),
        }));
    w.fakes.add(echo("p"));
    let launches = r#"spec: flatmachine
data:
  machines:
    side:
      spec: flatmachine
      data:
        plugins: {p: p}
        states:
          s: {type: initial, plugin: p, input: {v: "{{ input.v }}"}, transitions: [{to: end}]}
          end: {type: final, output: {v: 1}}
  plugins: {p: p}
  states:
    go: {type: initial, launch: side, launch_input: {v: 5}, transitions: [{to: work}]}
    work: {plugin: p, input: {v: "{{ input.v }}"}, output_to_context: {v: "{{ output.v }}"}, transitions: [{to: end}]}
    end: {type: final, output: {v: "{{ context.v }}"}}
"#;
    let cases = [
        (FANOUT.replace("MODE", ""), json!({"items": [1, 2, 4]})),
        (FANOUT.replace("MODE", ""), json!({"items": [1, 3]})),
        (
            FANOUT.replace("MODE", "continue_on_partial: true"),
            json!({"items": [1, 3]}),
        ),
        (FANOUT.replace("MODE", ""), json!({"items": []})),
        (
            FANOUT.replace("MODE", "max_concurrency: 2"),
            json!({"items": [1, 2, 4, 5, 6]}),
        ),
        (launches.to_string(), json!({"v": 9})),
        (NESTED.to_string(), json!({"items": [1, 2]})),
        (NESTED.to_string(), json!({"items": [1, 3]})),
        (PARALLEL.to_string(), json!({"v": 4})),
        (PARALLEL.to_string(), json!({"v": 3})),
    ];
    for (yaml, input) in cases {
        let local = w.run(&yaml, input.clone()).await;
        w.engine.wait_detached().await;
        let (distributed, ran) = run_distributed(&w, &yaml, input.clone()).await;
        // Outputs may name the execution (a failed child's id).
        let shown = |o: &Outcome| {
            let text = serde_json::to_string(&(&o.output, o.error.as_ref().map(|e| e.kind)));
            (o.status, text.unwrap().replace(&o.id, "ID"))
        };
        assert_eq!(
            shown(&local),
            shown(&distributed),
            "{input}: local {local:?} distributed {distributed:?} (ran {ran:?})"
        );
        // Launched children end alike too.
        let mut launched = Vec::new();
        for id in [&local.id, &distributed.id] {
            let rec = w.engine.load_record(id).await.unwrap();
            let mut results = Vec::new();
            for l in &rec.launches {
                results.push(w.backend.read_result(&l.id).await.unwrap().map(|r| r.value));
            }
            launched.push(results);
        }
        assert_eq!(launched[0], launched[1], "{input}");
    }
}

/// A queued child that waits for a signal leaves its parent parked; the
/// signal puts the child back on the run queue, and its end wakes the
/// parent.
#[tokio::test]
async fn a_signal_to_a_queued_child_puts_it_back_on_the_queue() {
    let w = world();
    let yaml = r#"spec: flatmachine
data:
  machines:
    ask:
      spec: flatmachine
      data:
        states:
          ask: {type: initial, wait_for: "answer-{{ input.n }}", output_to_context: {by: "{{ output.by }}"}, transitions: [{to: end}]}
          end: {type: final, output: {by: "{{ context.by }}"}}
  states:
    fan: {type: initial, foreach: "{{ input.items }}", as: n, machine: ask, input: {n: "{{ n }}"}, output_to_context: {all: "{{ output }}"}, transitions: [{to: end}]}
    end: {type: final, output: {all: "{{ context.all }}"}}
"#;
    let (o, _) = run_distributed(&w, yaml, json!({"items": [1, 2]})).await;
    assert_eq!(o.status, Status::Running, "parked on its children");
    let parent = w.engine.load_record(&o.id).await.unwrap();
    let kids: Vec<String> = parent
        .pending
        .unwrap()
        .children
        .into_iter()
        .map(|c| c.id)
        .collect();
    for (i, kid) in kids.iter().enumerate() {
        assert_eq!(
            w.engine.load_record(kid).await.unwrap().status,
            Status::Waiting
        );
        let sent = w
            .engine
            .signal(kid, &format!("answer-{}", i + 1), json!({"by": i}))
            .await
            .unwrap();
        assert!(sent.queued, "{sent:?}");
    }
    drain_queue(&w).await;
    let rec = w.engine.load_record(&o.id).await.unwrap();
    assert_eq!(rec.status, Status::Done, "{rec:?}");
    assert_eq!(rec.output, Some(json!({"all": [{"by": 0}, {"by": 1}]})));
}

/// A submitted execution with a deadline, parked waiting for a signal on
/// the run queue, is ended by its deadline job once the deadline passes:
/// cancelled, with kind `timeout`. Time is the store's manual clock.
#[tokio::test]
async fn a_deadline_cancels_a_waiting_queued_execution_with_kind_timeout() {
    let clock = Arc::new(crate::backend::ManualClock::new(1_000_000));
    let w = world_at(clock.clone());
    let path = w.file(
        "ask.yml",
        "spec: flatmachine\ndata:\n  states:\n    ask: {type: initial, wait_for: answer, transitions: [{to: done}]}\n    done: {type: final}\n",
    );
    let options = queue::SubmitOptions {
        id: Some("ask".into()),
        deadline: Some(Duration::from_secs(60)),
    };
    w.engine
        .submit_with(&path, json!({}), options)
        .await
        .unwrap();
    assert_eq!(drain_queue(&w).await, ["ask"]);
    assert_eq!(
        w.backend.load("ask").await.unwrap().unwrap().status,
        Status::Waiting
    );
    clock.advance(59_000);
    assert!(
        drain_queue(&w).await.is_empty(),
        "not due before the deadline"
    );
    clock.advance(1_000);
    assert_eq!(drain_queue(&w).await, ["ask"]);
    let r = w.backend.read_result("ask").await.unwrap().unwrap();
    assert_eq!(r.status, Status::Cancelled);
    assert_eq!(r.value["kind"], "timeout");
    assert!(r.value["message"].as_str().unwrap().contains("deadline"));
}

/// `settings.timeout` bounds a running execution: once the store clock
/// passes it, the lease holder cancels the tree; the running plugin sees
/// `cancelled()` and the execution ends cancelled with kind `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_timeout_cancels_a_running_execution_with_kind_timeout() {
    let clock = Arc::new(crate::backend::ManualClock::new(1_000_000));
    let w = world_at(clock.clone());
    let slow = w
        .fakes
        .add(Fake::new("slow", |_, _, _| Ok(json!(WAIT_FOR_CANCEL))));
    let path = w.file(
        "slow.yml",
        "spec: flatmachine\ndata:\n  plugins: {slow: slow}\n  settings: {timeout: 30}\n  states:\n    work: {type: initial, plugin: slow, on_error: recover, transitions: [{to: end}]}\n    recover: {type: final}\n    end: {type: final}\n",
    );
    let runner = {
        let engine = w.engine.clone();
        tokio::spawn(async move { engine.start(&path, json!({})).await.unwrap() })
    };
    while slow.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    clock.advance(30_000);
    let o = runner.await.unwrap();
    assert_eq!(o.status, Status::Cancelled);
    assert_eq!(o.error.as_ref().map(|e| e.kind), Some(FailureKind::Timeout));
    assert!(slow.cancel_seen.load(std::sync::atomic::Ordering::SeqCst));
}

/// A queued fan-out with `max_concurrency: 2` has at most two children on
/// the run queue at once: each child's result pushes the next one's job.
#[tokio::test]
async fn a_queued_fan_out_keeps_to_its_max_concurrency() {
    let w = world();
    let calls = w.fakes.add(echo("item"));
    let yaml = FANOUT.replace("MODE", "max_concurrency: 2");
    let path = w.file("bounded.yml", &yaml);
    let id = w
        .engine
        .submit(&path, json!({"items": [1, 2, 3, 4, 5]}), None)
        .await
        .unwrap()
        .id;
    assert_eq!(run_one(&w, |_| true).await.as_deref(), Some(id.as_str()));
    let mut most = 0;
    loop {
        let children = queued_jobs(&w)
            .await
            .into_iter()
            .filter(|e| e != &id)
            .count();
        most = most.max(children);
        if run_one(&w, |_| true).await.is_none() {
            break;
        }
    }
    assert_eq!(most, 2, "children on the queue at once");
    assert_eq!(calls.calls().len(), 5);
    let rec = w.engine.load_record(&id).await.unwrap();
    assert_eq!(rec.status, Status::Done);
    let values: Vec<Value> = (1..=5).map(|v| json!({"v": v})).collect();
    assert_eq!(rec.output, Some(json!({"all": values})));
}

/// A queued `mode: any` fan-out decided by its first successful child
/// cancels the others: they never run.
#[tokio::test]
async fn a_decided_queued_any_fan_out_cancels_the_other_children() {
    let w = world();
    let calls = w.fakes.add(echo("item"));
    let path = w.file("any.yml", &FANOUT.replace("MODE", "mode: any"));
    let id = w
        .engine
        .submit(&path, json!({"items": [1, 2, 3, 4]}), None)
        .await
        .unwrap()
        .id;
    run_one(&w, |_| true).await.unwrap();
    let first = format!("{id}:1:0");
    let winner = |j: &crate::backend::Job| j.payload["execution"] == first.as_str();
    assert_eq!(run_one(&w, winner).await, Some(first.clone()));
    // The winner woke the parent, which decides and cancels the rest.
    let woken = |j: &crate::backend::Job| j.payload["execution"] == id.as_str();
    assert_eq!(run_one(&w, woken).await, Some(id.clone()));
    let rec = w.engine.load_record(&id).await.unwrap();
    assert_eq!(rec.status, Status::Done, "{rec:?}");
    for i in 1..4 {
        let child = w.engine.load_record(&format!("{id}:1:{i}")).await.unwrap();
        assert_eq!(child.status, Status::Cancelled, "child {i}");
    }
    drain_queue(&w).await;
    assert_eq!(calls.calls().len(), 1, "the cancelled children never ran");
}

/// A queued fan-out's state `timeout`: when it passes, the parent's timeout
/// job wakes it, the children still out are cancelled, and the state fails
/// with kind `timeout` (routed by `on_error`), as with the local driver.
#[tokio::test]
async fn a_queued_fan_out_past_its_state_timeout_fails_with_kind_timeout() {
    let clock = Arc::new(crate::backend::ManualClock::new(1_000_000));
    let w = world_at(clock.clone());
    let calls = w.fakes.add(echo("item"));
    let path = w.file("slow.yml", &FANOUT.replace("MODE", "timeout: 30"));
    let id = w
        .engine
        .submit(&path, json!({"items": [1, 2]}), None)
        .await
        .unwrap()
        .id;
    run_one(&w, |_| true).await.unwrap();
    let parent = |j: &crate::backend::Job| j.payload["execution"] == id.as_str();
    assert_eq!(run_one(&w, parent).await, None, "not before the timeout");
    clock.advance(30_000);
    assert_eq!(run_one(&w, parent).await, Some(id.clone()));
    let rec = w.engine.load_record(&id).await.unwrap();
    assert_eq!((rec.status, rec.state.as_str()), (Status::Done, "failed"));
    assert_eq!(rec.error, None, "{:?}", rec.output);
    let text = rec.output.as_ref().unwrap().to_string();
    assert!(text.contains("timeout"), "{text}");
    for i in 0..2 {
        let child = w.engine.load_record(&format!("{id}:1:{i}")).await.unwrap();
        assert_eq!(child.status, Status::Cancelled, "child {i}");
    }
    drain_queue(&w).await;
    assert!(calls.calls().is_empty(), "the children never ran");
}

/// Retrying a failed execution of the run queue puts it back on the queue
/// (a worker continues it from the state that failed); a queued child of a
/// fan-out is retried through its root.
#[tokio::test]
async fn retry_of_a_queued_execution_puts_it_back_on_the_queue() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = world();
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    w.fakes.add(Fake::new("item", move |_, input, _| {
        if flag.load(Ordering::SeqCst) && input["v"] == 2 {
            Err(PluginError::Fatal("broken".into()))
        } else {
            Ok(input.clone())
        }
    }));
    let (failed, _) = run_distributed(
        &w,
        &FANOUT.replace("MODE", "").replace("on_error: failed", ""),
        json!({"items": [1, 2, 3]}),
    )
    .await;
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    let child = format!("{}:1:1", failed.id);
    assert!(matches!(
        w.engine.retry(&child).await,
        Err(EngineError::Invalid(m)) if m.contains(&failed.id)
    ));
    broken.store(false, Ordering::SeqCst);
    let queued = w.engine.retry(&failed.id).await.unwrap();
    assert_eq!(queued.status, Status::Queued);
    assert_eq!(drain_queue(&w).await.first(), Some(&failed.id));
    let rec = w.engine.load_record(&failed.id).await.unwrap();
    assert_eq!(rec.status, Status::Done, "{rec:?}");
    let values: Vec<Value> = (1..=3).map(|v| json!({"v": v})).collect();
    assert_eq!(rec.output, Some(json!({"all": values})));
}
