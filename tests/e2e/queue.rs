//! The run queue with real processes: `submit` stores executions, two
//! `worker --executions` processes run them, `submit --wait` returns the
//! result, and an id submitted twice is one execution.

use flowhost_e2e::{flowhost, run, shared_cache, stderr};
use serde_json::{Value, json};
use std::process::Stdio;

/// Doubles `input.n` through the echo plugin (the daemon tests use it too).
pub(crate) const MACHINE: &str = r#"spec: flatmachine
data:
  name: double
  plugins: {echo: echo}
  states:
    call: {type: initial, plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n }}"}, transitions: [{to: done}]}
    done: {type: final, output: {twice: "{{ context.n * 2 }}"}}
"#;

#[test]
fn submitted_executions_run_on_any_worker_and_submit_wait_returns_the_result() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("double.yml");
    std::fs::write(&machine, MACHINE).unwrap();
    let machine = machine.display().to_string();
    let db = dir.path().join("q.db").display().to_string();

    let mut ids = Vec::new();
    for n in 0..6 {
        let input = json!({ "n": n }).to_string();
        let o = run(
            &cache,
            &["submit", &machine, "--input", &input, "--db", &db],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        ids.push(String::from_utf8(o.stdout).unwrap().trim().to_string());
    }
    // An id is an idempotency key.
    let once = |n: u32| {
        let input = json!({ "n": n }).to_string();
        run(
            &cache,
            &[
                "submit", &machine, "--id", "mine", "--input", &input, "--db", &db,
            ],
        )
    };
    let (first, second) = (once(5), once(6));
    assert!(first.status.success() && second.status.success());
    assert!(
        stderr(&second).contains("exists already"),
        "{}",
        stderr(&second)
    );
    let status = run(&cache, &["status", "mine", "--db", &db]);
    assert_eq!(
        serde_json::from_slice::<Value>(&status.stdout).unwrap()["status"],
        "queued"
    );

    // `--wait` with a timeout that passes before any worker runs it: exit 6,
    // nothing on stdout, a note that it goes on; it completes later.
    let late = run(
        &cache,
        &[
            "submit",
            &machine,
            "--id",
            "late",
            "--input",
            r#"{"n": 8}"#,
            "--wait",
            "--timeout",
            "100ms",
            "--db",
            &db,
        ],
    );
    assert_eq!(late.status.code(), Some(6), "{}", stderr(&late));
    assert!(late.stdout.is_empty(), "never an empty result");
    assert!(stderr(&late).contains("still"), "{}", stderr(&late));

    // Two workers share the queue and exit once it is empty.
    drain_with_two_workers(&cache, &db);
    for (n, id) in ids.iter().enumerate() {
        let r = run(&cache, &["result", id, "--db", &db]);
        assert!(r.status.success(), "{}", stderr(&r));
        let result: Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(result, json!({ "twice": 2 * n }), "{id}");
    }
    let late = run(&cache, &["result", "late", "--db", &db]);
    assert!(late.status.success(), "{}", stderr(&late));
    assert_eq!(
        serde_json::from_slice::<Value>(&late.stdout).unwrap(),
        json!({"twice": 16})
    );
    let mine = run(&cache, &["result", "mine", "--db", &db]);
    assert!(mine.status.success(), "{}", stderr(&mine));
    assert_eq!(
        serde_json::from_slice::<Value>(&mine.stdout).unwrap(),
        json!({"twice": 10}),
        "the first submit's input"
    );

    // With a worker running, `submit --wait` prints the result.
    let mut worker = flowhost(&cache)
        .args(["worker", "--executions", "--db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = run(
        &cache,
        &[
            "submit",
            &machine,
            "--input",
            r#"{"n": 21}"#,
            "--wait",
            "--db",
            &db,
        ],
    );
    // SIGTERM: the worker finishes what it holds and exits.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopped = worker.wait().unwrap();
    assert!(waited.status.success(), "{}", stderr(&waited));
    assert_eq!(
        serde_json::from_slice::<Value>(&waited.stdout).unwrap(),
        json!({"twice": 42})
    );
    assert!(stopped.success());

    // The checker scales `worker --executions` on the run queue's depth.
    let queued: Vec<String> = (0..3)
        .map(|n| {
            let input = json!({ "n": 100 + n }).to_string();
            let o = run(
                &cache,
                &["submit", &machine, "--input", &input, "--db", &db],
            );
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        })
        .collect();
    let c = run(
        &cache,
        &["checker", "--executions", "--max-workers", "2", "--db", &db],
    );
    assert!(c.status.success(), "{}", stderr(&c));
    let said = String::from_utf8(c.stdout).unwrap();
    assert!(
        said.contains("pool `executions`: depth 3, active workers 0, max 2: spawning 2"),
        "{said}"
    );
    let spawned: Vec<String> = said
        .lines()
        .filter_map(|l| l.strip_prefix("spawned worker process "))
        .map(str::to_string)
        .collect();
    assert_eq!(spawned.len(), 2);
    for (n, id) in queued.iter().enumerate() {
        let w = run(&cache, &["wait", id, "--timeout", "60s", "--db", &db]);
        assert!(w.status.success(), "{}", stderr(&w));
        let result: Value = serde_json::from_slice(&w.stdout).unwrap();
        assert_eq!(result, json!({ "twice": 2 * (100 + n) }));
    }
    // They exit once the queue is empty; stop any that has not yet (only if
    // the pid is still that worker, not a process that reused it).
    for pid in spawned {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&db);
        if ours {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test]
async fn a_killed_worker_leaves_its_execution_to_another_that_finishes_it() {
    use flowhost::backend::{Checkpoints, Durability, SqliteBackend};
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("long.yml");
    std::fs::write(&machine, crate::engine::LONG).unwrap();
    let db_path = dir.path().join("q.db");
    let db = db_path.display().to_string();
    let machine = machine.display().to_string();
    let o = run(&cache, &["submit", &machine, "--id", "long", "--db", &db]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A worker with a short claim lease, killed (SIGKILL) mid-run, as seen
    // in the database.
    let mut first = flowhost(&cache)
        .args([
            "worker",
            "--executions",
            "--lease",
            "1s",
            "--heartbeat",
            "200ms",
        ])
        .args(["--db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let store = SqliteBackend::open(&db_path, Durability::Normal).unwrap();
    let killed_at = loop {
        if let Ok(Some(status)) = first.try_wait() {
            panic!("the worker ended ({status}) before the run was half done");
        }
        if let Ok(Some(cp)) = store.load("long").await
            && cp.step >= 20
        {
            break cp.step;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    first.kill().unwrap();
    first.wait().unwrap();
    let cp = store.load("long").await.unwrap().unwrap();
    assert!(!cp.status.is_terminal(), "killed at step {killed_at}");

    // Another worker claims the job once its claim expires, takes over the
    // dead worker's lease and finishes from the checkpoint.
    let second = flowhost(&cache)
        .args(["worker", "--executions", "--exit-when-empty", "--db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    let r = run(&cache, &["result", "long", "--db", &db]);
    assert!(r.status.success(), "{}", stderr(&r));
    let result: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(result["n"], 150, "killed at step {killed_at}");
    assert_eq!(result["acc"], (0..150).map(|n| 3 * n + 1).sum::<u64>());
}

pub(crate) const TRIPLES: &str = r#"spec: flatmachine
data:
  name: triples
  machines:
    triple:
      spec: flatmachine
      data:
        name: triple
        plugins: {echo: echo}
        states:
          call: {type: initial, plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n * 3 }}"}, transitions: [{to: done}]}
          done: {type: final, output: {n: "{{ context.n }}"}}
  states:
    fan:
      type: initial
      foreach: "{{ input.items }}"
      as: n
      machine: triple
      input: {n: "{{ n }}"}
      output_to_context: {all: "{{ output }}"}
      transitions: [{to: done}]
    done: {type: final, output: {all: "{{ context.all }}"}}
"#;

fn spawn_worker(cache: &std::path::Path, db: &str, extra: &[&str]) -> std::process::Child {
    flowhost(cache)
        .args(["worker", "--executions", "--concurrency", "4", "--db", db])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs two `worker --executions` processes until the run queue is empty;
/// both must exit cleanly.
fn drain_with_two_workers(cache: &std::path::Path, db: &str) {
    let workers: Vec<_> = (0..2)
        .map(|_| spawn_worker(cache, db, &["--exit-when-empty"]))
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// The workers (by id) that completed run-queue jobs for these executions.
fn workers_of(
    jobs: &[flowhost::backend::Job],
    ids: &[String],
) -> std::collections::BTreeSet<String> {
    jobs.iter()
        .filter(|j| {
            j.payload["execution"]
                .as_str()
                .is_some_and(|e| ids.iter().any(|i| i == e))
        })
        .filter_map(|j| j.worker.clone())
        .collect()
}

/// A 1,000-item foreach on the run queue spreads its children over two
/// workers (both run some); one of them is killed (SIGKILL) mid-fan-out and
/// the other finishes every child it held; the fan-in counts each child
/// once (the parent is woken once) and the result is complete and in order.
#[tokio::test]
async fn a_thousand_item_foreach_spreads_over_two_workers_and_outlives_a_killed_one() {
    use flowhost::backend::{Durability, SqliteBackend};
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("q.db");
    let db = db_path.display().to_string();
    // Created by `submit`, then opened here to watch.
    submit_thousand_triples(dir.path(), &db);
    let store = SqliteBackend::open(&db_path, Durability::Normal).unwrap();
    foreach_outlives_a_killed_worker(&db, &store).await;
}

/// Submits `fan`: a foreach of 1,000 children on the run queue.
pub(crate) fn submit_thousand_triples(dir: &std::path::Path, db: &str) {
    let machine = dir.join("triples.yml");
    std::fs::write(&machine, TRIPLES).unwrap();
    let machine = machine.display().to_string();
    let items: Vec<u64> = (0..1000).collect();
    let input = json!({ "items": items }).to_string();
    let o = run(
        &shared_cache(),
        &[
            "submit", &machine, "--id", "fan", "--input", &input, "--db", db,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Runs submitted `fan` on two worker processes (two hosts, on a shared
/// store) and kills one once a fifth of the children have ended: the other
/// finishes with the complete result, both ran children, and the parent
/// was woken once. Prints how long the survivor took after the kill.
pub(crate) async fn foreach_outlives_a_killed_worker(
    db: &str,
    store: &dyn flowhost::backend::Backend,
) {
    use flowhost::backend::JobStatus;
    let cache = shared_cache();
    let lease = ["--lease", "1s", "--heartbeat", "200ms"];
    let mut doomed = spawn_worker(&cache, db, &lease);
    let mut survivor = spawn_worker(&cache, db, &lease);
    let children: Vec<String> = (0..1000).map(|i| format!("fan:1:{i}")).collect();
    // Kill one worker once a fifth of the children have ended.
    loop {
        if let Ok(Some(status)) = doomed.try_wait() {
            panic!("a worker ended ({status}) before the fan-out was under way");
        }
        let ended = store
            .statuses(&children)
            .await
            .unwrap()
            .values()
            .filter(|s| s.is_terminal())
            .count();
        if ended >= 200 {
            assert!(ended < 1000, "the fan-out ended before the kill");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let killed = std::time::Instant::now();

    let w = run(&cache, &["wait", "fan", "--timeout", "120s", "--db", db]);
    assert!(w.status.success(), "{}", stderr(&w));
    eprintln!(
        "{}: the survivor finished the fan-out {:.1} s after the kill (lease 1 s)",
        store.describe(),
        killed.elapsed().as_secs_f64()
    );
    let result: Value = serde_json::from_slice(&w.stdout).unwrap();
    let expected: Vec<Value> = (0..1000u64).map(|i| json!({ "n": 3 * i })).collect();
    assert_eq!(result, json!({ "all": expected }));

    let jobs = store.jobs("executions", None, 10_000).await.unwrap();
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Done),
        "every run-queue job done"
    );
    assert!(
        workers_of(&jobs, &children).len() >= 2,
        "both workers ran children"
    );
    let parent_jobs = jobs
        .iter()
        .filter(|j| j.payload == json!({"execution": "fan"}))
        .count();
    assert_eq!(parent_jobs, 2, "submitted once, woken once by its fan-in");

    survivor.kill().unwrap();
    survivor.wait().unwrap();
}

/// 200 submitted executions of a 10-state machine complete across two
/// worker processes, each with its own correct result.
#[test]
fn two_hundred_submitted_executions_complete_across_two_workers() {
    use flowhost::backend::{Durability, Results, SqliteBackend, WorkPools};
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from(
        "spec: flatmachine\ndata:\n  name: ten\n  plugins: {echo: echo}\n  context: {n: \"{{ input.n }}\"}\n  states:\n",
    );
    for i in 0..9 {
        let kind = if i == 0 { "type: initial, " } else { "" };
        yaml.push_str(&format!(
            "    s{i}: {{{kind}plugin: echo, input: {{n: \"{{{{ context.n }}}}\"}}, output_to_context: {{n: \"{{{{ output.n + 1 }}}}\"}}, transitions: [{{to: s{}}}]}}\n",
            i + 1
        ));
    }
    yaml = yaml.replace("to: s9", "to: end");
    yaml.push_str("    end: {type: final, output: {n: \"{{ context.n }}\"}}\n");
    let machine = dir.path().join("ten.yml");
    std::fs::write(&machine, yaml).unwrap();
    let machine = machine.display().to_string();
    let db = dir.path().join("q.db").display().to_string();
    // Submitted from four shells at once.
    std::thread::scope(|s| {
        for shell in 0..4 {
            let (cache, machine, db) = (&cache, &machine, &db);
            s.spawn(move || {
                for k in 0..50 {
                    let n = shell * 50 + k;
                    let input = json!({ "n": n }).to_string();
                    let id = format!("e{n}");
                    let o = run(
                        cache,
                        &[
                            "submit", machine, "--id", &id, "--input", &input, "--db", db,
                        ],
                    );
                    assert!(o.status.success(), "{}", stderr(&o));
                }
            });
        }
    });
    drain_with_two_workers(&cache, &db);
    let store = SqliteBackend::open(std::path::Path::new(&db), Durability::Normal).unwrap();
    let jobs = futures_block(store.jobs("executions", None, 1000)).unwrap();
    let ids: Vec<String> = (0..200).map(|n| format!("e{n}")).collect();
    assert!(workers_of(&jobs, &ids).len() >= 2, "both workers ran some");
    for (n, id) in ids.iter().enumerate() {
        let r = futures_block(store.read_result(id)).unwrap();
        let r = r.unwrap_or_else(|| panic!("{id} has no result"));
        assert_eq!(r.value, json!({ "n": n + 9 }), "{id}");
    }
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// A zombie worker — paused (SIGSTOP) past its leases while it runs an
/// execution, then continued (SIGCONT) after another worker finished it —
/// writes nothing: its late saves are refused by the fence, it learns it
/// lost the execution, and the result, checkpoint and job stay the other
/// worker's.
#[tokio::test]
async fn a_zombie_worker_paused_past_its_lease_cannot_overwrite_anything() {
    use flowhost::backend::{
        Checkpoints, Durability, JobStatus, Results, SqliteBackend, WorkPools,
    };
    use std::io::BufRead;
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("long.yml");
    std::fs::write(&machine, crate::engine::LONG.replace("ms: 2", "ms: 10")).unwrap();
    let db_path = dir.path().join("q.db");
    let db = db_path.display().to_string();
    let machine = machine.display().to_string();
    let o = run(&cache, &["submit", &machine, "--id", "long", "--db", &db]);
    assert!(o.status.success(), "{}", stderr(&o));

    let lease = ["--lease", "1s", "--heartbeat", "200ms"];
    let mut zombie = spawn_worker(&cache, &db, &lease);
    let said = zombie.stderr.take().unwrap();
    let (lines, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(said).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let store = SqliteBackend::open(&db_path, Durability::Normal).unwrap();
    let paused_at = loop {
        if let Ok(Some(cp)) = store.load("long").await
            && cp.step >= 20
        {
            break cp.step;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &zombie.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");

    // Another worker takes the job and the execution once the paused one's
    // leases run out, and finishes it.
    let other = flowhost(&cache)
        .args(["worker", "--executions", "--exit-when-empty", "--db", &db])
        .args(lease)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", stderr(&other));
    let result = store.read_result("long").await.unwrap().unwrap();
    assert_eq!(result.value["n"], 150, "paused at step {paused_at}");
    let finished = store.load("long").await.unwrap().unwrap();
    let job = store.jobs("executions", None, 10).await.unwrap().remove(0);
    assert_eq!(job.status, JobStatus::Done);

    // The zombie wakes up: it finds out it lost the execution...
    signal("-CONT");
    let lost = loop {
        match heard.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) if line.contains("lost ownership") => break line,
            Ok(_) => continue,
            Err(e) => panic!("the zombie never noticed it lost its lease: {e}"),
        }
    };
    signal("-TERM");
    zombie.wait().unwrap();
    // ...and nothing it did after its lease ran out is stored.
    assert_eq!(
        store.read_result("long").await.unwrap(),
        Some(result),
        "{lost}"
    );
    let after = store.load("long").await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.step, &after.record),
        (finished.status, finished.step, &finished.record)
    );
    assert_eq!(
        store.jobs("executions", None, 10).await.unwrap().remove(0),
        job
    );
}

/// Machines that stay in one status until they are cancelled: a plugin
/// running (sleeping, looking at `cancelled()` every millisecond), a
/// failure backing off before its retry, a `wait_for`, and a fan-out parked
/// on children that each run the sleeping plugin.
const NAPS: &str = r#"spec: flatmachine
data:
  name: naps
  plugins: {adv: adversary}
  machines:
    nap:
      spec: flatmachine
      data:
        name: nap
        plugins: {adv: adversary}
        states:
          nap: {type: initial, plugin: adv, input: {attack: sleep, ms: 600000}, transitions: [{to: done}]}
          done: {type: final, output: {woke: true}}
  states:
    start:
      type: initial
      transitions:
        - {condition: "input.how == 'running'", to: nap}
        - {condition: "input.how == 'backoff'", to: fail}
        - {condition: "input.how == 'waiting'", to: wait}
        - {to: fan}
    nap: {plugin: adv, input: {attack: sleep, ms: 600000}, transitions: [{to: done}]}
    fail:
      plugin: adv
      input: {attack: guest_error, kind: retryable, message: not yet}
      execution: {type: retry, backoffs: [600]}
      transitions: [{to: done}]
    wait: {wait_for: go, transitions: [{to: done}]}
    fan:
      foreach: "{{ input.items }}"
      as: n
      machine: nap
      input: {n: "{{ n }}"}
      transitions: [{to: done}]
    done: {type: final, output: {woke: true}}
"#;

/// `flowhost cancel` ends an execution in every status — queued, running a
/// plugin on a worker, backing off before a retry, waiting for a signal,
/// parked on children that run on a worker — with the reason as its
/// result; a cancelled parent's children end cancelled; afterwards no job
/// is left running and the worker stops at once when asked.
#[tokio::test]
async fn cancel_ends_an_execution_in_every_status_and_nothing_keeps_running() {
    use flowhost::backend::{
        Checkpoints, Durability, ExecutionStatus, History, JobStatus, Ownership, Results,
        SqliteBackend, WorkPools,
    };
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("naps.yml");
    std::fs::write(&machine, NAPS).unwrap();
    let db_path = dir.path().join("q.db");
    let db = db_path.display().to_string();
    let machine = machine.display().to_string();
    let submit = |how: &str| {
        let input = json!({ "how": how, "items": [1, 2, 3] }).to_string();
        let o = run(
            &cache,
            &[
                "submit", &machine, "--id", how, "--input", &input, "--db", &db,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let cancel = |id: &str| {
        let reason = format!("{id}: stop");
        let o = run(&cache, &["cancel", id, "--reason", &reason, "--db", &db]);
        assert!(o.status.success(), "cancel {id}: {}", stderr(&o));
    };

    // Queued: no worker has it yet.
    submit("queued");
    cancel("queued");

    let mut worker = flowhost(&cache)
        .args(["worker", "--executions", "--concurrency", "8", "--db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for how in ["running", "backoff", "waiting", "parked"] {
        submit(how);
    }
    let store = SqliteBackend::open(&db_path, Durability::Normal).unwrap();
    let children: Vec<String> = (0..3).map(|i| format!("parked:2:{i}")).collect();
    let held = |id: &str| {
        let store = &store;
        let id = id.to_string();
        async move {
            store
                .lease(&id)
                .await
                .unwrap()
                .is_some_and(|l| l.expires_ms > 0)
        }
    };
    // Each is where it should be before it is cancelled.
    loop {
        let statuses = store
            .statuses(&["running", "waiting", "parked"].map(String::from))
            .await
            .unwrap();
        let retrying = store
            .history("backoff", 0, 100)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event["event"] == "retry_scheduled");
        let mut naps = 0;
        for child in &children {
            naps += held(child).await as usize;
        }
        if statuses.get("running") == Some(&ExecutionStatus::Running)
            && held("running").await
            && statuses.get("waiting") == Some(&ExecutionStatus::Waiting)
            && retrying
            && naps == 3
        {
            break;
        }
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker ended ({status})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // `status` shows the fan-out's progress, that the parent is parked, and
    // which worker runs a child.
    let status = |id: &str| {
        let o = run(&cache, &["status", id, "--db", &db]);
        assert!(o.status.success(), "{}", stderr(&o));
        (
            serde_json::from_slice::<Value>(&o.stdout).unwrap(),
            stderr(&o),
        )
    };
    let (parent, said) = status("parked");
    assert_eq!(parent["parked"], true, "{parent}");
    assert_eq!(parent["abandoned"], false, "{parent}");
    assert_eq!(parent["children"]["total"], 3, "{parent}");
    assert!(said.contains("0/3 children done"), "{said}");
    let (child, said) = status(&children[0]);
    assert_eq!(child["owner"]["pid"], worker.id(), "{child}");
    assert!(
        said.contains(&format!("run by pid {}", worker.id())),
        "{said}"
    );

    for id in ["running", "backoff", "waiting", "parked"] {
        cancel(id);
    }

    for id in ["queued", "running", "backoff", "waiting", "parked"] {
        let cp = store.load(id).await.unwrap().unwrap();
        assert_eq!(cp.status, ExecutionStatus::Cancelled, "{id}");
        let r = store.read_result(id).await.unwrap().unwrap();
        assert_eq!(r.status, ExecutionStatus::Cancelled, "{id}");
        assert_eq!(r.value["message"], format!("{id}: stop"), "{id}");
    }
    for child in &children {
        let cp = store.load(child).await.unwrap().unwrap();
        assert_eq!(cp.status, ExecutionStatus::Cancelled, "{child}");
    }
    // The worker lets go of every job it held for them and drains the queue
    // (a parent's wake-up job, pushed by its last cancelled child, finds it
    // ended and runs nothing); asked to stop, it has nothing left to finish.
    loop {
        let mut open = store
            .jobs("executions", Some(JobStatus::Claimed), 100)
            .await
            .unwrap();
        open.extend(
            store
                .jobs("executions", Some(JobStatus::Pending), 100)
                .await
                .unwrap(),
        );
        if open.is_empty() {
            break;
        }
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker ended ({status}) with jobs open: {open:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let poisoned = store
        .jobs("executions", Some(JobStatus::Poisoned), 100)
        .await
        .unwrap();
    assert!(poisoned.is_empty(), "{poisoned:?}");
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = worker.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Every example machine gives the same output run by `flowhost run` (the
/// local driver, children as tasks of one process) and submitted to the
/// run queue for two workers (the distributed driver, children as queued
/// executions of their own).
#[test]
fn every_example_gives_the_same_output_run_locally_and_on_the_queue() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let local_db = dir.path().join("local.db").display().to_string();
    let queue_db = dir.path().join("queue.db").display().to_string();
    let example = |f: &str| {
        flowhost_e2e::plugin_source(&format!("../examples/{f}"))
            .display()
            .to_string()
    };
    let texts = [
        "Great product, love it.",
        "Call me at +44 20 7946 0958, thanks!",
        "You are all idiots, stupid and pathetic.",
        "WINNER!!! Click here for FREE MONEY https://x.example",
    ];
    let mut runs: Vec<(&str, Value)> = texts
        .iter()
        .map(|t| ("content_moderation/moderation.yml", json!({ "text": t })))
        .collect();
    runs.extend([
        (
            "polyglot/review.yml",
            json!({"review": "Slow and buggy. Bad docs."}),
        ),
        (
            "polyglot/review.yml",
            json!({"review": "Fast, clean and pleasant. Great docs."}),
        ),
        ("peering/peering_demo.yml", json!({})),
        ("distributed_worker/stale_worker_reaper.yml", json!({})),
        (
            "distributed_worker/parallelization_checker.yml",
            json!({"pool_id": "empty"}),
        ),
        // Its own pool: the two workers may run it while the checker
        // counts the workers of `empty`.
        (
            "distributed_worker/job_worker.yml",
            json!({"pool_id": "empty-too", "worker_id": "w"}),
        ),
    ]);
    let mut expected = Vec::new();
    for (i, (file, input)) in runs.iter().enumerate() {
        let input = input.to_string();
        let o = run(
            &cache,
            &["run", &example(file), "--input", &input, "--db", &local_db],
        );
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        expected.push(serde_json::from_slice::<Value>(&o.stdout).unwrap());
        let o = run(
            &cache,
            &[
                "submit",
                &example(file),
                "--id",
                &format!("queued-{i}"),
                "--input",
                &input,
                "--db",
                &queue_db,
            ],
        );
        assert!(o.status.success(), "{file}: {}", stderr(&o));
    }
    drain_with_two_workers(&cache, &queue_db);
    for (i, ((file, input), expected)) in runs.iter().zip(&expected).enumerate() {
        let r = run(
            &cache,
            &["result", &format!("queued-{i}"), "--db", &queue_db],
        );
        assert!(r.status.success(), "{file} {input}: {}", stderr(&r));
        let got: Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(&got, expected, "{file} {input}");
    }
}

/// `flowhost bench executions` runs end to end at a small size (figures
/// are reported by the command, never asserted).
#[test]
fn the_distributed_benchmark_runs_at_a_small_size() {
    let cache = shared_cache();
    let o = run(
        &cache,
        &[
            "bench",
            "executions",
            "--workers",
            "1",
            "--concurrency",
            "2",
            "--runs",
            "4",
            "--states",
            "3",
            "--sequential",
            "3",
            "--items",
            "5",
            "--rate",
            "50",
            "--seconds",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for line in [
        "throughput: 4 runs x 3 states",
        "sequential: 3 states",
        "foreach: 5 items",
        "latency: 50 submissions",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
}

/// `submit --deadline`: an execution still waiting for its signal when the
/// deadline passes is cancelled by a worker, with kind `timeout`, and
/// `wait` reports it; a bad duration is a usage error.
#[test]
fn a_submitted_deadline_cancels_a_waiting_execution_with_kind_timeout() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("ask.yml");
    std::fs::write(&machine, crate::engine::ASK).unwrap();
    let machine = machine.display().to_string();
    let db = dir.path().join("q.db").display().to_string();
    let bad = run(
        &cache,
        &["submit", &machine, "--deadline", "soon", "--db", &db],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("--deadline"), "{}", stderr(&bad));
    let o = run(
        &cache,
        &[
            "submit",
            &machine,
            "--id",
            "ask",
            "--deadline",
            "300ms",
            "--db",
            &db,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut worker = spawn_worker(&cache, &db, &[]);
    let waited = run(&cache, &["wait", "ask", "--timeout", "60s", "--db", &db]);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    worker.wait().unwrap();
    assert!(!waited.status.success());
    let error: Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(error["kind"], "timeout", "{error}");
    assert!(stderr(&waited).contains("cancelled"), "{}", stderr(&waited));
}
