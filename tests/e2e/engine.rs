//! The machine engine through the library: every state kind, template rule,
//! `on_error` kind, retries, fan-out modes, limits, launch, signals and hooks.

use flowhost::backend::{Backend, Checkpoints, MemoryBackend, Results, Signals};
use flowhost::engine::{Engine, Outcome, Status};
use flowhost_e2e::{plugins_dir, runtime, shared_cache};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

struct Fixture {
    dir: tempfile::TempDir,
    backend: Arc<MemoryBackend>,
    engine: Arc<Engine>,
}

/// Records the retries the engine schedules: (attempt, pause).
#[derive(Default)]
struct Retries(std::sync::Mutex<Vec<(u32, std::time::Duration)>>);

impl flowhost::engine::Observer for Retries {
    fn retry(&self, _id: &str, _state: &str, attempt: u32, pause: std::time::Duration) {
        self.0.lock().unwrap().push((attempt, pause));
    }
}

impl Fixture {
    fn new() -> Fixture {
        Self::observed(Arc::new(Retries::default()))
    }

    fn observed(observer: Arc<Retries>) -> Fixture {
        let backend = Arc::new(MemoryBackend::new());
        let engine = Engine::new(
            backend.clone() as Arc<dyn Backend>,
            Arc::new(runtime(Some(&shared_cache()))),
            plugins_dir(),
        )
        .with_observer(observer);
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            backend,
            engine: Arc::new(engine),
        }
    }

    fn file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    async fn run(&self, name: &str, yaml: &str, input: Value) -> Outcome {
        let path = self.file(name, yaml);
        self.engine.start(&path, input).await.unwrap()
    }
}

fn done(o: &Outcome) -> &Value {
    assert_eq!(o.status, Status::Done, "{o:#?}");
    o.output.as_ref().unwrap()
}

const ADVERSARY: &str = "  plugins:\n    adv: adversary\n    echo: echo\n";

#[tokio::test]
async fn plugin_states_templates_and_transitions() {
    let f = Fixture::new();
    let o = f
        .run(
            "m.yml",
            r#"spec: flatmachine
data:
  name: basics
  plugins:
    text: text
  context:
    words: "{{ input.words }}"
    count: 0
  states:
    start:
      type: initial
      plugin: text
      input:
        task: word count
        data: "{{ context.words }}"
      output_to_context:
        count: "{{ output.result }}"
        label: "{{ context.words | length }} items, {{ output.result }} words"
      transitions:
        - condition: "context.count > 3"
          to: many
        - to: few
    many:
      type: final
      output: {kind: many, count: context.count, label: "{{ context.label }}"}
    few:
      type: final
      output: {kind: few, count: "{{ context.count }}"}
"#,
            json!({"words": ["a b", "c d e"]}),
        )
        .await;
    // `{{ input.words }}` stayed a list; `{{ output.result }}` stayed a number;
    // a bare path resolves natively; mixed text is a string.
    assert_eq!(
        done(&o),
        &json!({"kind": "many", "count": 5, "label": "2 items, 5 words"})
    );
    let o = f
        .run(
            "m2.yml",
            &std::fs::read_to_string(f.dir.path().join("m.yml")).unwrap(),
            json!({"words": ["a"]}),
        )
        .await;
    assert_eq!(done(&o), &json!({"kind": "few", "count": 1}));
}

#[tokio::test]
async fn a_step_plugin_chooses_the_next_state() {
    let f = Fixture::new();
    let yaml = r#"spec: flatmachine
data:
  name: routed
  plugins:
    router: {plugin: router, config: {field: lane, routes: {fast: quick}}}
  states:
    pick:
      type: initial
      step: router
      input: {lane: "{{ input.lane }}"}
      output_to_context: {seen: "{{ output.lane }}"}
      transitions:
        - to: slow
    quick:
      type: final
      output: {path: quick, seen: "{{ context.seen }}"}
    slow:
      type: final
      output: {path: slow}
"#;
    let o = f.run("r.yml", yaml, json!({"lane": "fast"})).await;
    assert_eq!(done(&o), &json!({"path": "quick", "seen": "fast"}));
    let o = f.run("r.yml", yaml, json!({"lane": "other"})).await;
    assert_eq!(done(&o), &json!({"path": "slow"}));
}

#[tokio::test]
async fn action_states_run_hook_actions_and_map_their_output() {
    let f = Fixture::new();
    let o = f
        .run(
            "a.yml",
            r#"spec: flatmachine
data:
  name: acting
  hooks: audit
  states:
    start:
      type: initial
      action: tally
      output_to_context:
        entries: "{{ output.audit | length }}"
      transitions:
        - to: done
    done:
      type: final
      output: {audit: "{{ context.audit }}", entries: "{{ context.entries }}"}
"#,
            json!({}),
        )
        .await;
    let out = done(&o);
    let audit: Vec<&str> = out["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        audit,
        [
            "start",
            "enter:start",
            "action:tally",
            "exit:start",
            "transition:start->done",
            "enter:done",
        ]
    );
    // ("end" comes after the output is rendered.) output_to_context applied
    // to the action state (FlatMachines ignores it).
    assert_eq!(out["entries"], 3);
}

#[tokio::test]
async fn hooks_reach_sub_machines_and_foreach_items() {
    // The list form and the seed's legacy `{file, class}` form.
    for hooks in ["[audit]", "{file: ./hooks.py, class: audit}"] {
        hooks_reach_children(hooks).await;
    }
}

async fn hooks_reach_children(hooks: &str) {
    let f = Fixture::new();
    f.file(
        "child.yml",
        r#"spec: flatmachine
data:
  name: child
  context: {n: "{{ input.n }}"}
  states:
    work:
      type: initial
      transitions: [{to: end}]
    end:
      type: final
      output: {n: "{{ context.n }}", audit: "{{ context.audit }}"}
"#,
    );
    let o = f
        .run(
            "parent.yml",
            r#"spec: flatmachine
data:
  name: parent
  hooks: HOOKS
  machines: {child: ./child.yml}
  states:
    fan:
      type: initial
      foreach: "{{ input.items }}"
      as: it
      machine: child
      input: {n: "{{ it }}"}
      output_to_context: {results: "{{ output }}"}
      transitions: [{to: done}]
    done:
      type: final
      output: "{{ context.results }}"
"#
            .replace("HOOKS", hooks)
            .as_str(),
            json!({"items": [1, 2]}),
        )
        .await;
    let out = done(&o).as_array().unwrap().clone();
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["n"], 2);
    assert_eq!(
        out[0]["audit"],
        json!([
            "start",
            "enter:work",
            "exit:work",
            "transition:work->end",
            "enter:end"
        ])
    );
}

fn fanout_yaml(mode: &str, max: u32) -> String {
    format!(
        r#"spec: flatmachine
data:
  name: fan
  machines:
    ok:
      spec: flatmachine
      data:
        name: ok
        plugins: {{echo: echo}}
        states:
          s: {{type: initial, plugin: echo, input: {{v: "{{{{ input.v }}}}"}}, output_to_context: {{v: "{{{{ output.v }}}}"}}, transitions: [{{to: e}}]}}
          e: {{type: final, output: {{v: "{{{{ context.v }}}}"}}}}
    bad:
      spec: flatmachine
      data:
        name: bad
        plugins: {{adv: adversary}}
        states:
          s: {{type: initial, plugin: adv, input: {{attack: guest_error, kind: fatal, message: broken}}, transitions: [{{to: e}}]}}
          e: {{type: final}}
  context:
    base: 10
  states:
    parallel:
      type: initial
      machine: [bad, ok]
      input: {{v: 1}}
      mode: {mode}
      output_to_context: {{both: "{{{{ output }}}}"}}
      on_error: failed
      transitions: [{{to: items}}]
    items:
      foreach: "{{{{ input.items }}}}"
      as: item
      key: "k{{{{ item }}}}"
      machine: ok
      max_concurrency: {max}
      mode: {mode}
      input: {{v: "{{{{ item + context.base }}}}"}}
      output_to_context: {{items: "{{{{ output }}}}"}}
      transitions: [{{to: done}}]
    failed:
      type: final
      output: {{error: "{{{{ context.last_error_type }}}}", message: "{{{{ context.last_error }}}}"}}
    done:
      type: final
      output: {{both: "{{{{ context.both }}}}", items: "{{{{ context.items }}}}"}}
"#
    )
}

#[tokio::test]
async fn parallel_machines_settled_fail_and_any_takes_the_first_success() {
    let f = Fixture::new();
    let o = f
        .run(
            "settled.yml",
            &fanout_yaml("settled", 8),
            json!({"items": [1, 2]}),
        )
        .await;
    let out = done(&o);
    assert_eq!(out["error"], "fatal", "{out}");
    assert!(out["message"].as_str().unwrap().contains("broken"), "{out}");

    let o = f
        .run("any.yml", &fanout_yaml("any", 8), json!({"items": [1]}))
        .await;
    let out = done(&o);
    assert_eq!(out["both"], json!({"v": 1}), "{out}");
    // Items see the parent context (`context.base`).
    assert_eq!(out["items"], json!({"v": 11}));
}

/// `continue_on_partial`: a failed child is data in the output, not a failed
/// state (Agentainer's continue_on_partial).
#[tokio::test]
async fn continue_on_partial_keeps_every_childs_output_or_error() {
    let f = Fixture::new();
    let yaml = fanout_yaml("settled", 8).replace(
        "      mode: settled\n      output_to_context: {both:",
        "      mode: settled\n      continue_on_partial: true\n      output_to_context: {both:",
    );
    assert!(yaml.contains("continue_on_partial"), "{yaml}");
    let o = f.run("partial.yml", &yaml, json!({"items": [1]})).await;
    let out = done(&o);
    assert_eq!(
        out["both"]["ok"],
        json!({"ok": true, "output": {"v": 1}}),
        "{out}"
    );
    let bad = &out["both"]["bad"];
    assert_eq!(
        (&bad["ok"], &bad["error"]["kind"]),
        (&json!(false), &json!("fatal")),
        "{out}"
    );
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("broken"),
        "{out}"
    );
    // A fan-out without the option keeps its plain outputs.
    assert_eq!(out["items"], json!({"k1": {"v": 11}}));
}

#[tokio::test]
async fn foreach_keys_outputs_and_max_concurrency_bounds_started_children() {
    let f = Fixture::new();
    // settled: every item runs; `key` makes the output a map.
    let yaml = fanout_yaml("settled", 2).replace("machine: [bad, ok]", "machine: [ok]");
    let o = f.run("keys.yml", &yaml, json!({"items": [1, 2, 3]})).await;
    assert_eq!(
        done(&o)["items"],
        json!({"k1": {"v": 11}, "k2": {"v": 12}, "k3": {"v": 13}})
    );

    // any + max_concurrency 1: the first item decides before a second starts,
    // so no other item's execution was ever created.
    let yaml = fanout_yaml("any", 1).replace("machine: [bad, ok]", "machine: [ok]");
    let o = f
        .run("one.yml", &yaml, json!({"items": [1, 2, 3, 4]}))
        .await;
    assert_eq!(done(&o)["items"], json!({"v": 11}));
    // The `items` state is the machine's second step.
    let mut started = Vec::new();
    for i in 0..4 {
        let id = format!("{}:2:{i}", o.id);
        started.push(f.backend.load(&id).await.unwrap().is_some());
    }
    assert_eq!(started, [true, false, false, false]);
}

fn on_error_yaml(input: &str, extra: &str) -> String {
    format!(
        r#"spec: flatmachine
data:
  name: errors
{ADVERSARY}  states:
    call:
      type: initial
      plugin: adv
      input: {input}
{extra}      on_error:
        timeout: on_timeout
        invalid_input: on_invalid
        trap: on_trap
        default: on_other
      transitions: [{{to: ok}}]
    ok: {{type: final, output: {{route: ok}}}}
    on_timeout: {{type: final, output: {{route: timeout, type: "{{{{ context.last_error_type }}}}"}}}}
    on_invalid: {{type: final, output: {{route: invalid_input, message: "{{{{ context.last_error }}}}"}}}}
    on_trap: {{type: final, output: {{route: trap}}}}
    on_other: {{type: final, output: {{route: other, type: "{{{{ context.last_error_type }}}}"}}}}
"#
    )
}

#[tokio::test]
async fn on_error_routes_by_kind_with_last_error_in_context() {
    let f = Fixture::new();
    let cases = [
        (
            "{attack: loop}",
            "      timeout: 0.2\n",
            "timeout",
            "timeout",
        ),
        (
            "{attack: guest_error, kind: invalid_input, message: nope}",
            "",
            "invalid_input",
            "",
        ),
        ("{attack: panic}", "", "trap", ""),
        (
            "{attack: guest_error, kind: fatal, message: x}",
            "",
            "other",
            "fatal",
        ),
        (
            "{attack: guest_error, kind: retryable, message: x}",
            "",
            "other",
            "retryable",
        ),
        ("{attack: memory}", "", "other", "out_of_memory"),
        ("{attack: invalid_json}", "", "other", "invalid_output"),
    ];
    for (i, (input, extra, route, kind)) in cases.into_iter().enumerate() {
        let o = f
            .run(
                &format!("e{i}.yml"),
                &on_error_yaml(input, extra),
                json!({}),
            )
            .await;
        let out = done(&o);
        assert_eq!(out["route"], route, "{input}: {out}");
        if !kind.is_empty() {
            assert_eq!(out["type"], kind, "{input}: {out}");
        }
        if route == "invalid_input" {
            assert!(out["message"].as_str().unwrap().contains("nope"), "{out}");
        }
    }
    // Without on_error the execution fails, naming kind and state.
    let yaml = on_error_yaml("{attack: panic}", "").replace("      on_error:\n        timeout: on_timeout\n        invalid_input: on_invalid\n        trap: on_trap\n        default: on_other\n", "");
    let o = f.run("unrouted.yml", &yaml, json!({})).await;
    assert_eq!(o.status, Status::Failed);
    let e = o.error.unwrap();
    assert_eq!((e.kind.as_str(), e.state.as_str()), ("trap", "call"));

    // The engine's own kinds route too: no transition matched.
    let o = f
        .run(
            "no_transition.yml",
            r#"spec: flatmachine
data:
  name: stuck
  states:
    start:
      type: initial
      on_error: {no_transition: nowhere}
      transitions: [{condition: "input.go == true", to: end}]
    nowhere: {type: final, output: {route: "{{ context.last_error_type }}"}}
    end: {type: final}
"#,
            json!({"go": false}),
        )
        .await;
    assert_eq!(done(&o)["route"], "no_transition");
}

#[tokio::test]
async fn retries_follow_backoffs_and_only_for_transient_kinds() {
    let retries = Arc::new(Retries::default());
    let f = Fixture::observed(retries.clone());
    let yaml = |fail: u32, kind: &str, backoffs: &str| {
        format!(
            r#"spec: flatmachine
data:
  name: retry
{ADVERSARY}  states:
    call:
      type: initial
      plugin: adv
      input: {{attack: flaky, fail_times: {fail}, kind: {kind}}}
      execution: {{type: retry, backoffs: {backoffs}, jitter: 0.5}}
      output_to_context: {{attempt: "{{{{ output.attempt }}}}", key: "{{{{ output.idempotency_key }}}}"}}
      transitions: [{{to: ok}}]
    ok: {{type: final, output: {{attempt: "{{{{ context.attempt }}}}", key: "{{{{ context.key }}}}"}}}}
"#
        )
    };
    let o = f
        .run("r1.yml", &yaml(2, "retryable", "[0.05, 0.1]"), json!({}))
        .await;
    let out = done(&o);
    assert_eq!(out["attempt"], 3);
    assert_eq!(out["key"], format!("{}/1/3", o.id));
    // One pause per backoff, each the backoff ± 50 % jitter.
    let pauses = std::mem::take(&mut *retries.0.lock().unwrap());
    let ms: Vec<(u32, u128)> = pauses.iter().map(|(a, p)| (*a, p.as_millis())).collect();
    assert_eq!(ms.len(), 2, "{ms:?}");
    assert!(ms[0].0 == 2 && (25..=75).contains(&ms[0].1), "{ms:?}");
    assert!(ms[1].0 == 3 && (50..=150).contains(&ms[1].1), "{ms:?}");

    // Fewer backoffs than failures: the last error ends the execution.
    let o = f
        .run("r2.yml", &yaml(3, "retryable", "[0.01, 0.01]"), json!({}))
        .await;
    assert_eq!(o.status, Status::Failed);
    assert!(o.error.unwrap().message.contains("attempt 3"));

    // A fatal error is not retried.
    let o = f
        .run("r3.yml", &yaml(1, "fatal", "[0.01, 0.01]"), json!({}))
        .await;
    let e = o.error.unwrap();
    assert_eq!(e.kind.as_str(), "fatal");
    assert!(e.message.contains("attempt 1"), "{e:?}");
}

#[tokio::test]
async fn max_steps_stops_a_machine_that_never_ends() {
    let f = Fixture::new();
    let o = f
        .run(
            "loop.yml",
            r#"spec: flatmachine
data:
  name: loop
  settings: {max_steps: 5}
  states:
    a: {type: initial, transitions: [{to: b}]}
    b: {transitions: [{condition: "false", to: end}, {to: a}]}
    end: {type: final}
"#,
            json!({}),
        )
        .await;
    assert_eq!(o.status, Status::Failed);
    assert_eq!(o.error.unwrap().kind.as_str(), "max_steps");
}

#[tokio::test]
async fn launch_detaches_and_signals_wake_a_waiting_execution() {
    let f = Fixture::new();
    f.file(
        "waiter.yml",
        r#"spec: flatmachine
data:
  name: waiter
  context: {who: "{{ input.who }}"}
  states:
    wait:
      type: initial
      wait_for: "go-{{ context.who }}"
      output_to_context: {got: "{{ output }}"}
      transitions: [{to: end}]
    end:
      type: final
      output: {who: "{{ context.who }}", got: "{{ context.got }}"}
"#,
    );
    let o = f
        .run(
            "launcher.yml",
            r#"spec: flatmachine
data:
  name: launcher
  machines: {waiter: ./waiter.yml}
  states:
    start:
      type: initial
      launch: waiter
      launch_input: {who: bob}
      transitions: [{to: end}]
    end: {type: final, output: {launched: true}}
"#,
            json!({}),
        )
        .await;
    // The parent is done while its launched child still waits.
    assert_eq!(done(&o), &json!({"launched": true}));
    f.engine.wait_detached().await;
    let child = format!("{}:1:L0", o.id);
    let cp = f.backend.load(&child).await.unwrap().unwrap();
    assert_eq!(cp.status, Status::Waiting);
    assert_eq!(f.backend.read_result(&child).await.unwrap(), None);

    f.backend
        .send_signal(&child, "go-bob", json!({"ok": 1}))
        .await
        .unwrap();
    let o = f.engine.resume(&child).await.unwrap();
    assert_eq!(done(&o), &json!({"who": "bob", "got": {"ok": 1}}));
    let uri = format!("flowhost://{child}/result");
    let id = flowhost::backend::parse_result_uri(&uri).unwrap();
    let r = f.backend.read_result(&id).await.unwrap().unwrap();
    assert_eq!(r.value, json!({"who": "bob", "got": {"ok": 1}}));
}

#[tokio::test]
async fn the_seed_peering_demo_runs_with_only_its_agents_changed() {
    let f = Fixture::new();
    let demo = flowhost_e2e::plugin_source("../examples/peering/peering_demo.yml");
    let o = f.engine.start(&demo, json!({})).await.unwrap();
    let out = done(&o).clone();
    assert_eq!(
        out["orchestrator_result"],
        json!({"message": "Tasks launched to worker nodes"})
    );
    let tasks = out["worker_node_result"]["processed_tasks"]
        .as_array()
        .unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks[1]["result"].as_str().unwrap().contains("limerick"));
    // The orchestrator's launched worker node finishes on its own.
    f.engine.wait_detached().await;
    let launched = format!("{}:1:0:1:L0", o.id);
    let r = f.backend.read_result(&launched).await.unwrap().unwrap();
    assert_eq!(r.value["processed_tasks"].as_array().unwrap().len(), 3);
}

/// A long machine: 150 states, each a plugin call that sleeps 2 ms.
pub(crate) const LONG: &str = r#"spec: flatmachine
data:
  name: long
  plugins: {adv: adversary}
  context: {n: 0, acc: 0}
  states:
    tick:
      type: initial
      plugin: adv
      input: {attack: sleep, ms: 2}
      output_to_context:
        n: "{{ context.n + 1 }}"
        acc: "{{ context.acc + context.n * 3 + 1 }}"
      transitions:
        - condition: "context.n < 150"
          to: tick
        - to: done
    done:
      type: final
      output: {n: "{{ context.n }}", acc: "{{ context.acc }}"}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_resumes_to_the_same_output() {
    use flowhost::backend::{Durability, ListFilter, SqliteBackend};
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("long.yml");
    std::fs::write(&machine, LONG).unwrap();
    let cache = shared_cache();
    let plugins = plugins_dir();
    let args = |db: &str| {
        vec![
            "run".to_string(),
            machine.display().to_string(),
            "--db".into(),
            dir.path().join(db).display().to_string(),
            "--plugins".into(),
            plugins.display().to_string(),
        ]
    };

    let clean = flowhost_e2e::flowhost(&cache)
        .args(args("clean.db"))
        .output()
        .unwrap();
    assert!(clean.status.success(), "{}", flowhost_e2e::stderr(&clean));
    let expected: Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(expected["n"], 150);

    // Kill at a seeded random step between 5 and 140, seen in the database
    // itself. FLOWHOST_CRASH_SEED=<seed> replays a failure.
    let seed: u64 = std::env::var("FLOWHOST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    let kill_at = 5 + seed % 136;
    eprintln!(
        "crash test: seed {seed}, kill at step {kill_at} (replay: FLOWHOST_CRASH_SEED={seed})"
    );
    let db = dir.path().join("crash.db");
    let mut child = flowhost_e2e::flowhost(&cache)
        .args(args("crash.db"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before step {kill_at}");
        }
        if db.exists()
            && let Ok(store) = SqliteBackend::open(&db, Durability::Normal)
            && let Ok(list) = store.list(&ListFilter::default()).await
            && let Some(cp) = list.first()
            && cp.step >= kill_at
        {
            break cp.id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = SqliteBackend::open(&db, Durability::Normal).unwrap();
    let cp = store.load(&id).await.unwrap().unwrap();
    assert_eq!(
        cp.status,
        Status::Running,
        "killed mid-run at step {}",
        cp.step
    );
    drop(store);
    // The execution is pinned to the definition it started with: a machine
    // file edited since changes nothing.
    let edited = LONG.replace(
        r#"output: {n: "{{ context.n }}", acc: "{{ context.acc }}"}"#,
        "output: {edited: true}",
    );
    assert_ne!(edited, LONG);
    std::fs::write(&machine, edited).unwrap();
    // States entered are logged at debug with their step: the resumed run
    // must start at the checkpointed step, not at the machine's first state.
    let resumed = flowhost_e2e::flowhost(&cache)
        .args([
            "resume",
            &id,
            "--db",
            &db.display().to_string(),
            "--plugins",
            &plugins.display().to_string(),
        ])
        .env("FLOWHOST_LOG", "error,flowhost::run=debug")
        .output()
        .unwrap();
    let log = flowhost_e2e::stderr(&resumed);
    assert!(resumed.status.success(), "seed {seed}: {log}");
    let first_step: u64 = log
        .lines()
        .find(|l| l.contains(" state") && l.contains("step="))
        .and_then(|l| l.split("step=").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("seed {seed}: no state line in the resume's log: {log}"));
    assert_eq!(
        first_step, cp.step,
        "seed {seed}: the resume started at step {first_step}, the checkpoint says {}",
        cp.step
    );
    let output: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(output, expected, "seed {seed}: killed at step {}", cp.step);
}

#[tokio::test]
async fn the_polyglot_example_calls_four_languages() {
    let f = Fixture::new();
    let machine = flowhost_e2e::plugin_source("../examples/polyglot/review.yml");
    let o = f
        .engine
        .start(&machine, json!({"review": "Slow and buggy. Bad docs."}))
        .await
        .unwrap();
    let out = done(&o);
    assert_eq!(out["action"], "escalate", "{out}");
    assert_eq!(out["report"]["mood"], "negative");
    assert_eq!(out["report"]["summary"], "Slow and buggy.");
    assert!(out["report_bytes"].as_u64().unwrap() > 20);
}

#[test]
fn graph_draws_child_machines_in_mermaid_and_dot() {
    let cache = shared_cache();
    let demo = flowhost_e2e::plugin_source("../examples/peering/peering_demo.yml");
    let demo = demo.display().to_string();
    let mermaid = flowhost_e2e::run(&cache, &["graph", &demo]);
    let text = flowhost_e2e::stdout(&mermaid);
    assert!(text.starts_with("stateDiagram-v2"), "{text}");
    // worker_task's states appear inside worker_node's foreach state.
    assert!(text.contains("foreach worker_task"), "{text}");
    assert!(text.contains("extract_result"), "{text}");
    let dot = flowhost_e2e::run(&cache, &["graph", &demo, "--format", "dot"]);
    let text = flowhost_e2e::stdout(&dot);
    assert!(text.starts_with("digraph"), "{text}");
    assert!(text.contains("label=\"launch\""), "{text}");
}

#[test]
fn cli_run_waits_then_signal_continues_and_result_reads_the_uri() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("approve.yml");
    std::fs::write(
        &machine,
        r#"spec: flatmachine
data:
  name: approve
  states:
    ask:
      type: initial
      wait_for: approval
      output_to_context: {by: "{{ output.by }}"}
      transitions:
        - condition: "context.by == 'nobody'"
          to: rejected
        - to: approved
    approved: {type: final, output: {approved_by: "{{ context.by }}"}}
    rejected: {type: final, output: {error: rejected}}
"#,
    )
    .unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let machine = machine.display().to_string();
    let o = flowhost_e2e::run(&cache, &["run", &machine, "--db", &db, "--json"]);
    assert_eq!(o.status.code(), Some(5), "{}", flowhost_e2e::stderr(&o));
    let waiting: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(waiting["status"], "waiting");
    let id = waiting["id"].as_str().unwrap().to_string();
    assert!(flowhost_e2e::stderr(&o).contains(&format!("flowhost signal {id} approval")));

    let s = flowhost_e2e::run(&cache, &["status", &id, "--db", &db]);
    let status: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(
        (status["status"].as_str(), status["state"].as_str()),
        (Some("waiting"), Some("ask"))
    );

    // `wait` gives up after its timeout with its own exit code...
    let w = flowhost_e2e::run(&cache, &["wait", &id, "--timeout", "50ms", "--db", &db]);
    assert_eq!(w.status.code(), Some(6), "{}", flowhost_e2e::stderr(&w));
    assert!(
        flowhost_e2e::stderr(&w).contains("is still waiting")
            && flowhost_e2e::stderr(&w).contains(&format!("flowhost signal {id} approval")),
        "{}",
        flowhost_e2e::stderr(&w)
    );
    assert!(w.stdout.is_empty(), "never an empty result");
    // ...and without one returns the result once another process finishes it.
    let waiter = flowhost_e2e::flowhost(&cache)
        .args(["wait", &id, "--db", &db])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let o = flowhost_e2e::run(
        &cache,
        &[
            "signal",
            &id,
            "approval",
            "--data",
            r#"{"by": "ada"}"#,
            "--db",
            &db,
        ],
    );
    assert!(o.status.success(), "{}", flowhost_e2e::stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out, json!({"approved_by": "ada"}));
    let waited = waiter.wait_with_output().unwrap();
    assert!(waited.status.success(), "{}", flowhost_e2e::stderr(&waited));
    assert_eq!(
        serde_json::from_slice::<Value>(&waited.stdout).unwrap(),
        out
    );

    let uri = format!("flatagents://{id}/result");
    let r = flowhost_e2e::run(&cache, &["result", &uri, "--db", &db]);
    let stored: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(stored, out);
    // A finished execution takes no more signals.
    let again = flowhost_e2e::run(&cache, &["signal", &id, "approval", "--db", &db]);
    assert_eq!(again.status.code(), Some(2));

    // Its history, across both processes: as JSON lines and as a timeline.
    let h = flowhost_e2e::run(&cache, &["history", &id, "--db", &db, "--json"]);
    assert!(h.status.success(), "{}", flowhost_e2e::stderr(&h));
    let events: Vec<Value> = String::from_utf8(h.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "state_entered",
            "state_entered",
            "signal_received",
            "state_entered",
            "finished"
        ],
        "{events:#?}"
    );
    assert_eq!(events[2]["event"]["channel"], "approval");
    assert_eq!(events[3]["event"]["state"], "approved");
    let timeline = flowhost_e2e::run(&cache, &["history", &id, "--db", &db]);
    let text = String::from_utf8(timeline.stdout).unwrap();
    assert!(
        text.contains("received a signal on `approval`") && text.contains("done at `approved`"),
        "{text}"
    );
    let none = flowhost_e2e::run(&cache, &["history", "no-such-id", "--db", &db]);
    assert_eq!(none.status.code(), Some(2));
}

/// A machine that waits for a signal on `answer`.
pub(crate) const ASK: &str = "spec: flatmachine\ndata:\n  name: ask\n  states:\n    ask: {type: initial, wait_for: answer, transitions: [{to: done}]}\n    done: {type: final}\n";

#[test]
fn cli_cancel_ends_a_waiting_execution_with_its_reason() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("ask.yml");
    std::fs::write(&machine, ASK).unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let o = flowhost_e2e::run(
        &cache,
        &["run", &machine.display().to_string(), "--db", &db, "--json"],
    );
    assert_eq!(o.status.code(), Some(5), "{}", flowhost_e2e::stderr(&o));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let c = flowhost_e2e::run(
        &cache,
        &["cancel", &id, "--reason", "nobody answered", "--db", &db],
    );
    assert!(c.status.success(), "{}", flowhost_e2e::stderr(&c));
    assert!(flowhost_e2e::stderr(&c).contains("cancelled: nobody answered"));
    let r = flowhost_e2e::run(&cache, &["result", &id, "--db", &db]);
    assert_eq!(r.status.code(), Some(4));
    let result: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (result["kind"].as_str(), result["message"].as_str()),
        (Some("cancelled"), Some("nobody answered"))
    );
    let s = flowhost_e2e::run(&cache, &["status", &id, "--db", &db]);
    let status: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(status["status"], "cancelled");
    let again = flowhost_e2e::run(&cache, &["cancel", &id, "--db", &db]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        flowhost_e2e::stderr(&again)
    );
    let unknown = flowhost_e2e::run(&cache, &["cancel", "no-such-id", "--db", &db]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn cli_retry_runs_a_failed_execution_from_its_failed_state() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("flaky.yml");
    std::fs::write(
        &machine,
        "spec: flatmachine\ndata:\n  name: flaky\n  plugins: {adv: adversary}\n  states:\n    s: {type: initial, plugin: adv, input: {attack: flaky, fail_times: 1, kind: fatal}, output_to_context: {ok: true}, transitions: [{to: e}]}\n    e: {type: final, output: {ok: \"{{ context.ok }}\"}}\n",
    )
    .unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let o = flowhost_e2e::run(
        &cache,
        &["run", &machine.display().to_string(), "--db", &db, "--json"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", flowhost_e2e::stderr(&o));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The second attempt of the failed state succeeds.
    let r = flowhost_e2e::run(&cache, &["retry", &id, "--db", &db]);
    assert!(r.status.success(), "{}", flowhost_e2e::stderr(&r));
    assert_eq!(
        serde_json::from_slice::<Value>(&r.stdout).unwrap(),
        json!({"ok": true})
    );
    let again = flowhost_e2e::run(&cache, &["retry", &id, "--db", &db]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        flowhost_e2e::stderr(&again)
    );
}

#[test]
fn cli_bad_input_and_unknown_ids_are_clear_errors() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let demo = flowhost_e2e::plugin_source("../examples/peering/peering_demo.yml")
        .display()
        .to_string();
    let o = flowhost_e2e::run(&cache, &["run", &demo, "--db", &db, "--input", "{oops"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        flowhost_e2e::stderr(&o).contains("--input"),
        "{}",
        flowhost_e2e::stderr(&o)
    );
    // Commands on stored work never create a database.
    let o = flowhost_e2e::run(&cache, &["resume", "no-such-id", "--db", &db]);
    assert_eq!(o.status.code(), Some(1));
    assert!(flowhost_e2e::stderr(&o).contains("no such database"));
    assert!(!std::path::Path::new(&db).exists());
    drop(
        flowhost::backend::SqliteBackend::open(
            std::path::Path::new(&db),
            flowhost::backend::Durability::Full,
        )
        .unwrap(),
    );
    let o = flowhost_e2e::run(&cache, &["resume", "no-such-id", "--db", &db]);
    assert_eq!(o.status.code(), Some(2));
    assert!(flowhost_e2e::stderr(&o).contains("no execution `no-such-id`"));
    let missing = dir.path().join("nope/f.db").display().to_string();
    let o = flowhost_e2e::run(&cache, &["run", &demo, "--db", &missing]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        flowhost_e2e::stderr(&o).contains("does not exist"),
        "{}",
        flowhost_e2e::stderr(&o)
    );
    // A machine that ends failed exits 4 and names kind and state.
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "spec: flatmachine\ndata:\n  name: bad\n  plugins: {adv: adversary}\n  states:\n    s: {type: initial, plugin: adv, input: {attack: panic}, transitions: [{to: e}]}\n    e: {type: final}\n",
    )
    .unwrap();
    let o = flowhost_e2e::run(&cache, &["run", &bad.display().to_string(), "--db", &db]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        flowhost_e2e::stderr(&o).contains("error[trap]: state `s`"),
        "{}",
        flowhost_e2e::stderr(&o)
    );
}
