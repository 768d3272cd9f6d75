//! What a hostile or careless user tries on the CLI: one owner per
//! execution, interrupted runs that say how to continue, commands that only
//! take the flags that mean something for them, read commands that never
//! create databases, closed pipes, bad flag values.

use flowhost_e2e::{flowhost, plugins_dir, run, shared_cache, stderr, stdout};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// 100 states, each a plugin call that sleeps 20 ms: about 2 s of work.
const SLOW: &str = r#"spec: flatmachine
data:
  name: slow
  plugins: {adv: adversary}
  context: {n: 0}
  states:
    tick:
      type: initial
      plugin: adv
      input: {attack: sleep, ms: 20}
      output_to_context:
        n: "{{ context.n + 1 }}"
      transitions:
        - condition: "context.n < 100"
          to: tick
        - to: done
    done:
      type: final
      output: {n: "{{ context.n }}"}
"#;

fn status(cache: &Path, db: &str, id: &str) -> Value {
    let o = run(cache, &["status", id, "--db", db]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Polls (with a generous deadline) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready() {
        assert!(
            std::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn spawn(cache: &Path, args: &[&str]) -> Child {
    flowhost(cache)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The first execution in the store, once it has reached `step`.
fn execution_at(cache: &Path, db: &str, step: u64) -> Option<String> {
    let o = run(cache, &["executions", "--db", db, "--json"]);
    let line = stdout(&o).lines().next()?.to_string();
    let row: Value = serde_json::from_str(&line).ok()?;
    (row["step"].as_u64()? >= step).then(|| row["id"].as_str().map(str::to_string))?
}

#[test]
fn one_process_owns_an_execution_and_sigterm_leaves_it_resumable() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("slow.yml");
    std::fs::write(&machine, SLOW).unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let plugins = plugins_dir().display().to_string();
    let machine = machine.display().to_string();

    let runner = spawn(
        &cache,
        &["run", &machine, "--db", &db, "--plugins", &plugins],
    );
    let mut id = None;
    wait_until("the run reached step 3", || {
        id = execution_at(&cache, &db, 3);
        id.is_some()
    });
    let id = id.unwrap();

    // While the run is alive: status names it, resume is refused.
    let s = status(&cache, &db, &id);
    assert_eq!(s["owner"]["pid"], runner.id(), "{s}");
    assert_eq!(s["abandoned"], false);
    let o = run(&cache, &["resume", &id, "--db", &db, "--plugins", &plugins]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("is being run by pid {}", runner.id())),
        "{}",
        stderr(&o)
    );

    // SIGTERM: stops at a state boundary, says how to continue, exits 143.
    let ok = Command::new("kill")
        .args(["-TERM", &runner.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = runner.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains(&format!("flowhost resume {id} --db {db}")),
        "no resume hint: {err}"
    );
    let s = status(&cache, &db, &id);
    assert_eq!(
        (s["status"].as_str(), &s["owner"]),
        (Some("running"), &Value::Null),
        "{s}"
    );
    assert_eq!(s["abandoned"], true);
    let stopped_at = s["step"].as_u64().unwrap();
    assert!((3..100).contains(&stopped_at), "{s}");

    // Two resumes: the second is refused while the first runs.
    let first = spawn(&cache, &["resume", &id, "--db", &db, "--plugins", &plugins]);
    wait_until("the first resume owns the execution", || {
        status(&cache, &db, &id)["owner"]["pid"] == first.id()
    });
    let second = run(&cache, &["resume", &id, "--db", &db, "--plugins", &plugins]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(stderr(&second).contains("is being run by pid"));
    let done = first.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let output: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(output, serde_json::json!({"n": 100}));
    let s = status(&cache, &db, &id);
    assert_eq!(
        (s["status"].as_str(), s["abandoned"].as_bool()),
        (Some("done"), Some(false))
    );
}

#[test]
fn memory_is_only_for_runs_and_reads_never_create_databases() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A job pushed to memory would be gone when the process exits: no such flag.
    for args in [
        &["jobs", "push", "p", "--memory"][..],
        &["status", "x", "--memory"],
        &["executions", "--memory"],
        &["result", "x", "--memory"],
        &["signal", "x", "c", "--memory"],
        &["resume", "x", "--memory"],
        &["workers", "--memory"],
        &["reaper", "--stale-after", "1", "--memory"],
        &["worker", "--pool", "p", "--processor", "echo", "--memory"],
    ] {
        let o = run(cache.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let typo = dir.path().join("typo.db");
    let t = typo.display().to_string();
    for args in [
        &["executions", "--db", &t][..],
        &["status", "x", "--db", &t],
        &["result", "x", "--db", &t],
        &["workers", "--db", &t],
        &["jobs", "list", "p", "--db", &t],
        &["jobs", "stats", "p", "--db", &t],
        &["jobs", "requeue", "p", "--db", &t],
        &["resume", "x", "--db", &t],
        &["signal", "x", "c", "--db", &t],
        &["reaper", "--stale-after", "1", "--db", &t],
    ] {
        let o = run(cache.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no such database"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!typo.exists(), "{args:?} created {t}");
    }
    // Without --db, in a folder without .flowhost/, nothing is created either.
    let o = flowhost(cache.path())
        .current_dir(dir.path())
        .env_remove("FLOWHOST_DB")
        .arg("executions")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!dir.path().join(".flowhost").exists());
    // A directory is named as one.
    let o = run(
        cache.path(),
        &[
            "jobs",
            "push",
            "p",
            "--db",
            &dir.path().display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

#[test]
fn list_commands_print_json_lines_and_bad_values_are_usage_errors() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let o = run(
        cache.path(),
        &["jobs", "push", "p", "--count", "3", "--db", &db],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(cache.path(), &["jobs", "list", "p", "--json", "--db", &db]);
    let rows: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["payload"], serde_json::json!({"n": 0}));
    let o = run(cache.path(), &["workers", "--json", "--db", &db]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");

    for args in [
        &["executions", "--status", "bogus", "--db", &db][..],
        &["jobs", "list", "p", "--status", "bogus", "--db", &db],
        &["plugin", "call", "echo", "--memory", "0"],
        &["plugin", "call", "echo", "--max-instances", "0"],
        &["plugin", "call", "echo", "--dir", "/no/such/folder:/data"],
        &["plugin", "call", "echo", "--timeout", "1e308s"],
        &[
            "worker",
            "--pool",
            "p",
            "--processor",
            "echo",
            "--lease",
            "99999h",
        ],
    ] {
        let o = run(cache.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let o = run(
        cache.path(),
        &["jobs", "push", "p", "--count", "2000", "--db", &db],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Like `flowhost jobs list p | head -1`: the reader goes away at once.
    let mut child = flowhost(cache.path())
        .args(["jobs", "list", "p", "--limit", "2000", "--db", &db])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn a_signal_on_another_channel_warns_which_one_is_awaited() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("wait.yml");
    std::fs::write(
        &machine,
        "spec: flatmachine\ndata:\n  name: w\n  states:\n    start:\n      type: initial\n      wait_for: approval\n      transitions: [{to: done}]\n    done:\n      type: final\n",
    )
    .unwrap();
    let db = dir.path().join("f.db").display().to_string();
    let o = run(
        &cache,
        &["run", &machine.display().to_string(), "--db", &db],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let id = execution_at(&cache, &db, 0).unwrap();
    let o = run(
        &cache,
        &["signal", &id, "aproval", "--no-resume", "--db", &db],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("waits on `approval`, not `aproval`"),
        "{}",
        stderr(&o)
    );
}

/// A run that ends gives its lease up (the write is queued, and committed
/// before the store closes), and the next run of the same tree takes token 2.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_run_gives_its_lease_up() {
    use flowhost::backend::{Backend, Durability, Ownership, SqliteBackend};
    use flowhost::engine::{Engine, Status};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let machine = dir.path().join("m.yml");
    std::fs::write(
        &machine,
        "spec: flatmachine\ndata:\n  name: m\n  plugins: {e: echo}\n  states:\n    start: {type: initial, plugin: e, transitions: [{to: done}]}\n    done: {type: final}\n",
    )
    .unwrap();
    let id = {
        let backend: Arc<dyn Backend> =
            Arc::new(SqliteBackend::open(&db, Durability::Full).unwrap());
        let engine = Arc::new(Engine::new(
            backend,
            Arc::new(flowhost_e2e::runtime(Some(&shared_cache()))),
            plugins_dir(),
        ));
        let o = engine.start(&machine, serde_json::json!({})).await.unwrap();
        assert_eq!(o.status, Status::Done);
        o.id
    };
    let store = SqliteBackend::open(&db, Durability::Full).unwrap();
    let lease = store
        .lease(&id)
        .await
        .unwrap()
        .expect("the run held a lease");
    assert_eq!((lease.token, lease.expires_ms), (1, 0), "{lease:?}");
}
