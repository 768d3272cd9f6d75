//! The chaos harness: rounds of a real workload in child processes, each
//! round killing one process at a seeded crash point (`flowhost::crash`),
//! then recovering as an operator would and checking the promises.
//!
//! A round, on a fresh SQLite database: `submit` four executions (a linear
//! machine with a retried flaky state, a foreach of five children with
//! fan-in and `max_concurrency: 2`, a fire-and-forget launch, a `wait_for`
//! woken by `flowhost signal`), push five pool jobs with idempotency keys,
//! and run `worker --executions` and a pool worker until their queues are
//! empty. The seed picks the crash point, on which pass it fires, the
//! order of the signal and the workers, and the worker's concurrency. The
//! first command the crash kills is run again as a client would (a submit
//! or push whose answer never came is sent again; the same id or key makes
//! it one) after `reaper --stale-after 0` has released what the killed
//! process held, as an operator's or the daemon's reaper would; every later
//! command runs unarmed.
//!
//! After each round: every execution (children and launched ones too) is
//! done with the result an uninterrupted run gives, and none is missing or
//! extra; each finished exactly once (one `finished` event); every fan-in
//! counter is at zero; every job is done, the pool's exactly once per
//! key with the uninterrupted output; `PRAGMA integrity_check` is ok.
//!
//! `FLOWHOST_CHAOS_ROUNDS` (default 100: well under a minute) sets the number of
//! rounds, `FLOWHOST_CHAOS_SEED` the first round's seed (default: from the
//! clock, printed); every round prints its seed, and
//! `FLOWHOST_CHAOS_SEED=<seed> FLOWHOST_CHAOS_ROUNDS=1` replays it exactly.
//! `cargo xtask chaos --rounds N` runs a long series.

use flowhost::crash::POINTS;
use flowhost_e2e::{Rng, flowhost, shared_cache};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Output;

const MACHINE: &str = r#"spec: flatmachine
data:
  name: chaos
  plugins: {echo: echo, adv: adversary}
  machines:
    triple:
      spec: flatmachine
      data:
        name: triple
        plugins: {echo: echo}
        states:
          call: {type: initial, plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n * 3 }}"}, transitions: [{to: done}]}
          done: {type: final, output: {n: "{{ context.n }}"}}
    note:
      spec: flatmachine
      data:
        name: note
        plugins: {echo: echo}
        states:
          call: {type: initial, plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n + 100 }}"}, transitions: [{to: done}]}
          done: {type: final, output: {noted: "{{ context.n }}"}}
  states:
    start:
      type: initial
      transitions:
        - {condition: "input.kind == 'fan'", to: fan}
        - {condition: "input.kind == 'launch'", to: launch}
        - {condition: "input.kind == 'signal'", to: wait}
        - {to: one}
    one: {plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n + 1 }}"}, transitions: [{to: two}]}
    two: {plugin: echo, input: {n: "{{ context.n }}"}, output_to_context: {n: "{{ output.n * 2 }}"}, transitions: [{to: flaky}]}
    flaky:
      plugin: adv
      input: {attack: flaky, fail_times: 1}
      execution: {type: retry, backoffs: [0.01, 0.01]}
      output_to_context: {attempt: "{{ output.attempt }}"}
      transitions: [{to: three}]
    three: {plugin: echo, input: {n: "{{ context.n }}"}, output_to_context: {n: "{{ output.n + 5 }}"}, transitions: [{to: done}]}
    fan:
      foreach: "{{ input.items }}"
      as: n
      machine: triple
      input: {n: "{{ n }}"}
      max_concurrency: 2
      output_to_context: {all: "{{ output }}"}
      transitions: [{to: done}]
    launch:
      launch: note
      launch_input: {n: "{{ input.n }}"}
      transitions: [{to: after}]
    after: {plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n }}"}, transitions: [{to: done}]}
    wait: {wait_for: go, output_to_context: {got: "{{ output }}"}, transitions: [{to: done}]}
    done: {type: final, output: {n: "{{ context.n }}", all: "{{ context.all }}", attempt: "{{ context.attempt }}", got: "{{ context.got }}"}}
"#;

/// Seeds that found a bug, and what it was. (A seed replays the crash
/// point, its pass and the plan; how writes group into commits may differ
/// from run to run, so each fix also has a test of its own.)
const REGRESSIONS: &[(u64, &str)] = &[
    (
        424472,
        "store.result.write: a crash between the final checkpoint and the result left an execution done without a result (now one write: Checkpoint::result)",
    ),
    (
        120,
        "store.commit.before in `signal`: the retried signal found the execution done (delivered before the crash), which the client is told",
    ),
];

/// The pool the round's plain jobs go to, and how many.
const POOL: &str = "chaos";
const JOBS: usize = 5;

/// What a round decided from its seed.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    /// `None`: the reference run, unarmed.
    crash: Option<(&'static str, u64)>,
    signal_first: bool,
    concurrency: u32,
}

impl Plan {
    fn of(seed: u64) -> Plan {
        let mut rng = Rng(seed);
        let (point, _) = POINTS[rng.below(POINTS.len())];
        // How often a process passes the point in a round, about.
        let passes = match point {
            "store.commit.before" | "store.commit.after" => 24,
            "store.result.write" | "worker.claimed" | "worker.complete.before" => 8,
            "fanout.child.stored" => 5,
            "store.migration" => 3,
            "fanout.jobs.before" | "fanin.gathered" => 2,
            // One launch a round.
            _ => 1,
        };
        Plan {
            seed,
            crash: Some((point, 1 + rng.below(passes) as u64)),
            signal_first: rng.below(2) == 0,
            concurrency: [1, 2, 4][rng.below(3)],
        }
    }
}

/// How a round went.
#[derive(Debug, Default)]
struct Round {
    /// The command the crash killed, if it fired.
    crashed_in: Option<String>,
    /// Commands run (each a process).
    processes: usize,
}

/// Runs the round's commands in `dir` (the database is `dir/q.db`).
struct Workload<'a> {
    cache: &'a Path,
    dir: &'a Path,
    plan: &'a Plan,
    round: Round,
}

impl Workload<'_> {
    fn db(&self) -> String {
        self.dir.join("q.db").display().to_string()
    }

    /// Runs one command, armed until the crash has fired once; a command the
    /// crash killed runs again, unarmed, as a client retries.
    fn command(&mut self, args: &[&str]) -> Result<Output, String> {
        let armed = self.round.crashed_in.is_none();
        let mut cmd = flowhost(self.cache);
        cmd.args(args).args(["--db", &self.db()]);
        if let (true, Some((point, pass))) = (armed, self.plan.crash) {
            cmd.env(flowhost::crash::VAR, format!("{point}:{pass}"));
        }
        self.round.processes += 1;
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run flowhost: {e}"))?;
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        if armed && out.status.signal() == Some(SIGKILL) {
            if !text.contains("crash point") {
                return Err(format!(
                    "`flowhost {}` was killed without reaching a crash point: {text}",
                    args.join(" ")
                ));
            }
            self.round.crashed_in = Some(args[0].to_string());
            // The killed process may have held claims: the reaper (an
            // operator's, or the daemon's) releases them, then the client
            // (or the supervisor restarting a worker) tries again.
            self.command(&["reaper", "--stale-after", "0"])?;
            let again = self.command(args);
            // A signal whose answer never came may have been delivered and
            // its execution finished: the retry is told so, which is right.
            return match again {
                Err(e)
                    if args[0] == "signal" && e.contains("is done; it takes no more signals") =>
                {
                    Ok(out)
                }
                again => again,
            };
        }
        if !out.status.success() {
            return Err(format!(
                "`flowhost {}` failed ({}): {text}",
                args.join(" "),
                out.status
            ));
        }
        Ok(out)
    }

    fn run(&mut self) -> Result<(), String> {
        let machine = self.dir.join("chaos.yml");
        std::fs::write(&machine, MACHINE).map_err(|e| e.to_string())?;
        let machine = machine.display().to_string();
        let inputs = [
            ("line", json!({"kind": "line", "n": 3})),
            ("fan", json!({"kind": "fan", "items": [1, 2, 3, 4, 5]})),
            ("launch", json!({"kind": "launch", "n": 7})),
            ("sig", json!({"kind": "signal"})),
        ];
        for (id, input) in &inputs {
            let input = input.to_string();
            self.command(&["submit", &machine, "--id", id, "--input", &input])?;
        }
        for i in 0..JOBS {
            let (key, input) = (format!("job-{i}"), json!({ "n": i }).to_string());
            self.command(&["jobs", "push", POOL, "--key", &key, "--input", &input])?;
        }
        let concurrency = self.plan.concurrency.to_string();
        let executions = [
            "worker",
            "--executions",
            "--exit-when-empty",
            "--concurrency",
            &concurrency,
        ];
        let signal = ["signal", "sig", "go", "--data", r#"{"v": 1}"#];
        if self.plan.signal_first {
            self.command(&signal)?;
            self.command(&executions)?;
        } else {
            // The signal wakes a parked execution through the run queue.
            self.command(&executions)?;
            self.command(&signal)?;
            self.command(&executions)?;
        }
        let pool = [
            "worker",
            "--pool",
            POOL,
            "--processor",
            "echo",
            "--exit-when-empty",
        ];
        self.command(&pool)?;
        Ok(())
    }
}

/// The signal a crash point kills its process with.
const SIGKILL: i32 = 9;

/// What the store holds at the end of a round, as compared with the
/// uninterrupted run.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Every execution: its status and result.
    executions: BTreeMap<String, (String, Option<Value>)>,
    /// The pool's jobs by key: status and result.
    jobs: BTreeMap<String, (String, Option<Value>)>,
}

/// Checks the invariants that hold whatever the reference says, and reads
/// the snapshot.
fn inspect(db: &Path) -> Result<(Snapshot, usize), String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let q = |e: rusqlite::Error| e.to_string();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(q)?;
    if integrity != "ok" {
        return Err(format!("integrity_check: {integrity}"));
    }
    let mut executions = BTreeMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT e.id, e.status, r.value FROM executions e LEFT JOIN results r ON r.id = e.id",
        )
        .map_err(q)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(q)?;
    for row in rows {
        let (id, status, value) = row.map_err(q)?;
        let value = value
            .map(|v| serde_json::from_str(&v).map_err(|e| format!("result of {id}: {e}")))
            .transpose()?;
        executions.insert(id, (status, value));
    }
    // Each execution finished exactly once.
    let mut stmt = conn
        .prepare(
            "SELECT e.id, (SELECT count(*) FROM history h WHERE h.execution = e.id
                 AND json_extract(h.event, '$.event') = 'finished') FROM executions e",
        )
        .map_err(q)?;
    let finished = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(q)?;
    for row in finished {
        let (id, n) = row.map_err(q)?;
        if n != 1 {
            return Err(format!("execution {id} finished {n} times (history)"));
        }
    }
    let open: i64 = conn
        .query_row(
            "SELECT count(*) FROM fan_ins WHERE remaining != 0",
            [],
            |r| r.get(0),
        )
        .map_err(q)?;
    if open != 0 {
        return Err(format!("{open} fan-in counters are not at zero"));
    }
    let unfinished: Vec<String> = conn
        .prepare("SELECT pool || ' ' || id || ' ' || status FROM jobs WHERE status != 'done'")
        .map_err(q)?
        .query_map([], |r| r.get(0))
        .map_err(q)?
        .collect::<Result<_, _>>()
        .map_err(q)?;
    if !unfinished.is_empty() {
        return Err(format!("jobs not completed: {unfinished:?}"));
    }
    let mut jobs = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT idempotency_key, status, result FROM jobs WHERE pool = ?1")
        .map_err(q)?;
    let rows = stmt
        .query_map([POOL], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(q)?;
    let mut count = 0;
    for row in rows {
        let (key, status, result) = row.map_err(q)?;
        count += 1;
        let key = key.ok_or("a pool job without its key")?;
        let result = result
            .map(|v| serde_json::from_str(&v).map_err(|e| format!("job {key}: {e}")))
            .transpose()?;
        jobs.insert(key, (status, result));
    }
    if count != JOBS {
        return Err(format!("{count} jobs in pool {POOL}, {JOBS} pushed"));
    }
    let checked = executions.len();
    Ok((Snapshot { executions, jobs }, checked))
}

fn rounds() -> u64 {
    std::env::var("FLOWHOST_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn first_seed() -> u64 {
    std::env::var("FLOWHOST_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        })
}

/// Runs one round in a fresh folder: the workload, then the checks against
/// the reference.
fn round(
    cache: &Path,
    plan: &Plan,
    reference: Option<&Snapshot>,
) -> Result<(Round, Snapshot, usize), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut workload = Workload {
        cache,
        dir: dir.path(),
        plan,
        round: Round::default(),
    };
    workload.run()?;
    let (snapshot, checked) = inspect(&dir.path().join("q.db"))?;
    if let Some(reference) = reference {
        for (id, want) in &reference.executions {
            match snapshot.executions.get(id) {
                None => return Err(format!("execution {id} is lost")),
                Some(got) if got != want => {
                    return Err(format!("execution {id}: {got:?}, uninterrupted: {want:?}"));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = snapshot
            .executions
            .keys()
            .find(|id| !reference.executions.contains_key(*id))
        {
            return Err(format!("execution {extra} exists only in this round"));
        }
        if snapshot.jobs != reference.jobs {
            return Err(format!(
                "pool jobs: {:?}, uninterrupted: {:?}",
                snapshot.jobs, reference.jobs
            ));
        }
    }
    Ok((workload.round, snapshot, checked))
}

#[test]
fn chaos_rounds_keep_every_promise() {
    let cache = shared_cache();
    // The binary must read crash points (a debug build, or --features chaos).
    let probe = flowhost(&cache)
        .args(["executions", "--db", "/nonexistent/flowhost.db"])
        .env(flowhost::crash::VAR, "no.such.point:1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("no crash point"),
        "the flowhost binary ignores {}: build it as `cargo xtask test` does (a debug build, or --features chaos)",
        flowhost::crash::VAR
    );

    let unarmed = Plan {
        seed: 0,
        crash: None,
        signal_first: false,
        concurrency: 1,
    };
    let (_, reference, _) =
        round(&cache, &unarmed, None).unwrap_or_else(|e| panic!("the uninterrupted run: {e}"));
    assert_eq!(
        reference.executions.len(),
        10,
        "4 submitted, 5 fan-out children, 1 launched: {:?}",
        reference.executions.keys()
    );

    let first = first_seed();
    let n = rounds();
    // Seeds that found something, run first each time (unless one seed is
    // being replayed).
    let seeds: Vec<u64> = if std::env::var("FLOWHOST_CHAOS_SEED").is_ok() {
        (0..n).map(|i| first.wrapping_add(i)).collect()
    } else {
        REGRESSIONS
            .iter()
            .map(|(seed, _)| *seed)
            .chain((0..n).map(|i| first.wrapping_add(i)))
            .collect()
    };
    let n = seeds.len() as u64;
    let mut hits: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut crashed, mut processes, mut checked) = (0u64, 0usize, 0usize);
    for (i, seed) in seeds.into_iter().enumerate() {
        let plan = Plan::of(seed);
        let (point, pass) = plan.crash.unwrap_or_default();
        match round(&cache, &plan, Some(&reference)) {
            Ok((r, _, c)) => {
                processes += r.processes;
                checked += c;
                let how = match &r.crashed_in {
                    Some(cmd) => {
                        crashed += 1;
                        *hits.entry(point).or_default() += 1;
                        format!("crashed in `{cmd}`")
                    }
                    None => "not reached".to_string(),
                };
                eprintln!(
                    "chaos round {i}: seed {} {point}:{pass}: {how}; ok",
                    plan.seed
                );
            }
            Err(e) => panic!(
                "chaos round {i}: seed {} {point}:{pass}: {e}\nreplay: FLOWHOST_CHAOS_SEED={} FLOWHOST_CHAOS_ROUNDS=1 cargo test -p flowhost-e2e --test e2e -- chaos:: --nocapture",
                plan.seed, plan.seed
            ),
        }
    }
    eprintln!(
        "chaos: {n} rounds from seed {first}: {crashed} crashed, {} not reached; {processes} processes; {checked} executions checked; lost 0, duplicated 0",
        n - crashed
    );
    for (point, _) in POINTS {
        eprintln!(
            "chaos:   {point}: {}",
            hits.get(point).copied().unwrap_or(0)
        );
    }
}
