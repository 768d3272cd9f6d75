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
//! The same rounds run through `flowhost serve` too: requests over HTTP,
//! the daemon's own workers; a killed daemon is started again and the
//! requests that got no answer are sent again.
//!
//! `FLOWHOST_CHAOS_ROUNDS` (default 100 each: well under a minute) sets
//! the number of rounds, `FLOWHOST_CHAOS_SEED` the first round's seed
//! (default: from the clock, printed); every round prints its seed, and
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
    (
        13000028,
        "through the daemon: a signal read the execution running, the execution parked on the channel before the signal was stored, and nobody woke it (now the signal is stored first, then the execution read)",
    ),
];

/// The pool the round's plain jobs go to, and how many.
const POOL: &str = "chaos";
const JOBS: usize = 5;
/// Executions a round ends with: 4 submitted, 5 fan-out children, 1 launched.
const EXECUTIONS: usize = 10;

/// The executions a round submits.
fn submissions() -> [(&'static str, Value); 4] {
    [
        ("line", json!({"kind": "line", "n": 3})),
        ("fan", json!({"kind": "fan", "items": [1, 2, 3, 4, 5]})),
        ("launch", json!({"kind": "launch", "n": 7})),
        ("sig", json!({"kind": "signal"})),
    ]
}

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
        for (id, input) in &submissions() {
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

/// Runs the round's requests against `flowhost serve` (the database is
/// `dir/q.db`); a daemon the crash killed is started again, unarmed.
struct Served<'a> {
    cache: &'a Path,
    dir: &'a Path,
    plan: &'a Plan,
    round: Round,
    /// Executions that end the round (from the uninterrupted run).
    expected: usize,
}

/// A running daemon.
struct Daemon {
    child: std::process::Child,
    base: String,
    agent: ureq::Agent,
}

impl Served<'_> {
    fn db(&self) -> String {
        self.dir.join("q.db").display().to_string()
    }

    fn start(&mut self) -> Result<Daemon, String> {
        let armed = self.round.crashed_in.is_none();
        let db = self.db();
        let machines = self.dir.join("machines").display().to_string();
        // Only the plugins the machine uses: a daemon loads its whole
        // plugins folder when it starts, and a round may start it twice.
        let plugins = self.dir.join("plugins");
        if !plugins.is_dir() {
            std::fs::create_dir_all(&plugins).map_err(|e| e.to_string())?;
            for name in ["echo", "adversary"] {
                let file = format!("{name}.wasm");
                std::fs::copy(flowhost_e2e::plugins_dir().join(&file), plugins.join(&file))
                    .map_err(|e| e.to_string())?;
            }
        }
        let plugins = plugins.display().to_string();
        let concurrency = self.plan.concurrency.to_string();
        let mut cmd = flowhost(self.cache);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
            "--machines",
            &machines,
            "--plugins",
            &plugins,
            "--pool",
            &format!("{POOL}=echo"),
            "--concurrency",
            &concurrency,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        if let (true, Some((point, pass))) = (armed, self.plan.crash) {
            cmd.env(flowhost::crash::VAR, format!("{point}:{pass}"));
        }
        self.round.processes += 1;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start serve: {e}"))?;
        let Some(base) = flowhost_e2e::listening(&mut child) else {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stderr);
            // Killed while it opened the store (a migration): start again.
            if armed && out.status.signal() == Some(SIGKILL) && text.contains("crash point") {
                self.round.crashed_in = Some("serve".into());
                return self.start();
            }
            return Err(format!("serve did not start: {text}"));
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Daemon { base, child, agent })
    }

    /// Sends a request; `None` when no answer came (the daemon died).
    fn post(daemon: &Daemon, path: &str, body: &Value) -> Option<(u16, Value)> {
        let mut res = daemon
            .agent
            .post(format!("{}{path}", daemon.base))
            .send_json(body)
            .ok()?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Whether the round's work is all done, read from the file.
    fn finished(&self) -> bool {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            self.dir.join("q.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return false;
        };
        conn.query_row(
            "SELECT (SELECT count(*) FROM results r JOIN executions e ON e.id = r.id WHERE e.status = 'done'),
                    (SELECT count(*) FROM jobs WHERE pool = ?1 AND status = 'done'),
                    (SELECT count(*) FROM jobs WHERE status != 'done')",
            [POOL],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
        )
        .is_ok_and(|(done, jobs, open)| {
            done as usize == self.expected && jobs as usize == JOBS && open == 0
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let machines = self.dir.join("machines");
        std::fs::create_dir_all(&machines).map_err(|e| e.to_string())?;
        std::fs::write(machines.join("chaos.yml"), MACHINE).map_err(|e| e.to_string())?;
        // Requests not answered yet: (path, body); an answered one is done.
        let mut requests: Vec<(String, Value)> = submissions()
            .into_iter()
            .map(|(id, input)| {
                (
                    "/workflows".to_string(),
                    json!({"machine": "chaos", "id": id, "input": input}),
                )
            })
            .collect();
        requests.extend((0..JOBS).map(|i| {
            (
                format!("/pools/{POOL}/jobs"),
                json!({"payload": {"n": i}, "idempotency_key": format!("job-{i}")}),
            )
        }));
        let signal = ("/workflows/sig/signal/go".to_string(), json!({"v": 1}));
        if self.plan.signal_first {
            requests.insert(4, signal);
        } else {
            requests.push(signal);
        }
        let mut daemon = self.start()?;
        loop {
            while let Some((path, body)) = requests.first() {
                match Self::post(&daemon, path, body) {
                    Some((status, _)) if status < 300 => {
                        requests.remove(0);
                    }
                    // A retried signal may find its execution done already.
                    Some((_, answer))
                        if path.contains("/signal/") && answer.to_string().contains("done") =>
                    {
                        requests.remove(0);
                    }
                    Some((status, answer)) => {
                        return Err(format!("POST {path}: {status} {answer}"));
                    }
                    None => break,
                }
            }
            // Until everything is done or the daemon dies (a round that
            // stays unfinished for a minute is stuck: a lost wake-up).
            let waited = std::time::Instant::now();
            let died = loop {
                if let Some(status) = daemon.child.try_wait().map_err(|e| e.to_string())? {
                    break Some(status);
                }
                if requests.is_empty() && self.finished() {
                    break None;
                }
                if waited.elapsed() > std::time::Duration::from_secs(60) {
                    let _ = daemon.child.kill();
                    let _ = daemon.child.wait();
                    let left = inspect(&self.dir.join("q.db")).err().unwrap_or_default();
                    return Err(format!("stuck: the work did not finish ({left})"));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            let Some(status) = died else {
                flowhost_e2e::signal(daemon.child.id(), "-TERM");
                let out = daemon.child.wait_with_output().map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "serve did not stop cleanly: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                return Ok(());
            };
            let out = daemon.child.wait_with_output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stderr);
            if self.round.crashed_in.is_some()
                || status.signal() != Some(SIGKILL)
                || !text.contains("crash point")
            {
                return Err(format!("serve ended ({status}): {text}"));
            }
            self.round.crashed_in = Some("serve".into());
            let reaper = flowhost(self.cache)
                .args(["reaper", "--stale-after", "0", "--db", &self.db()])
                .output()
                .map_err(|e| e.to_string())?;
            self.round.processes += 1;
            if !reaper.status.success() {
                return Err(format!(
                    "reaper: {}",
                    String::from_utf8_lossy(&reaper.stderr)
                ));
            }
            daemon = self.start()?;
        }
    }
}

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
    // The counts the store keeps agree with the table, crash or not.
    let drift: i64 = conn
        .query_row(
            "SELECT count(*) FROM (
                SELECT root, machine, status, sum(n) AS n FROM (
                    SELECT root, machine, status, n FROM execution_counts
                    UNION ALL
                    SELECT parent IS NULL, machine, status, -count(*) FROM executions GROUP BY 1, 2, 3)
                GROUP BY 1, 2, 3 HAVING sum(n) != 0)",
            [],
            |r| r.get(0),
        )
        .map_err(q)?;
    if drift != 0 {
        return Err(format!(
            "execution_counts disagrees with the executions table in {drift} rows"
        ));
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
    daemon: bool,
) -> Result<(Round, Snapshot, usize), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let round = if daemon {
        let mut workload = Served {
            cache,
            dir: dir.path(),
            plan,
            round: Round::default(),
            expected: reference.map_or(EXECUTIONS, |r| r.executions.len()),
        };
        workload.run()?;
        workload.round
    } else {
        let mut workload = Workload {
            cache,
            dir: dir.path(),
            plan,
            round: Round::default(),
        };
        workload.run()?;
        workload.round
    };
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
    Ok((round, snapshot, checked))
}

#[test]
fn chaos_rounds_keep_every_promise() {
    rounds_of(false);
}

/// The same rounds through `flowhost serve`: the HTTP API submits, pushes
/// and signals; the daemon's own workers run everything; a killed daemon
/// is started again (after `reaper --stale-after 0`) and the requests
/// that got no answer are sent again.
#[test]
fn chaos_rounds_through_the_daemon_keep_every_promise() {
    rounds_of(true);
}

fn rounds_of(daemon: bool) {
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
    let (_, reference, _) = round(&cache, &unarmed, None, daemon)
        .unwrap_or_else(|e| panic!("the uninterrupted run: {e}"));
    assert_eq!(
        reference.executions.len(),
        EXECUTIONS,
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
        match round(&cache, &plan, Some(&reference), daemon) {
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
