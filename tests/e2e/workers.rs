//! Job pools through the real binary: several worker processes share one
//! SQLite database.

use flowhost::backend::{Durability, JobStatus, SqliteBackend, WorkPools, WorkerStatus};
use flowhost_e2e::{flowhost, shared_cache, signal, stderr};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn four_worker_processes_complete_2000_jobs_exactly_once() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db").display().to_string();
    let push = flowhost(&cache)
        .args(["jobs", "push", "p", "--count", "2000", "--db", &db])
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", stderr(&push));

    let workers: Vec<_> = (0..4)
        .map(|_| spawn_worker(&cache, &db, "echo", &["--concurrency", "4"]))
        .collect();
    let mut completed = 0;
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["rejected"], 0);
        completed += report["completed"].as_u64().unwrap();
    }
    assert_eq!(completed, 2000, "each job completed by exactly one worker");

    let store = SqliteBackend::open(std::path::Path::new(&db), Durability::Normal).unwrap();
    let jobs = store.jobs("p", None, 5000).await.unwrap();
    assert_eq!(jobs.len(), 2000);
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Done, "{j:?}");
        // Claimed once: no job was ever handed to two workers.
        assert_eq!((j.attempts, j.fence), (1, 1), "{j:?}");
        assert_eq!(
            j.result.as_ref(),
            Some(&j.payload),
            "echo returns the payload"
        );
    }
    let stats = flowhost(&cache)
        .args(["jobs", "stats", "p", "--db", &db])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (stats["done"].as_u64(), stats["depth"].as_u64()),
        (Some(2000), Some(0))
    );
}

#[test]
fn a_poisoned_job_keeps_its_error_and_requeue_brings_it_back() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db").display().to_string();
    let run = |args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--db", &db]);
        flowhost(&cache).args(&full).output().unwrap()
    };
    let o = run(&[
        "jobs",
        "push",
        "bad",
        "--input",
        r#"{"attack": "panic"}"#,
        "--max-retries",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    run(&["jobs", "push", "bad", "--input", r#"{"attack": "count"}"#]);
    // Bad input would fail the same way again: poisoned at once, retries left or not.
    run(&[
        "jobs",
        "push",
        "bad",
        "--input",
        r#"{"attack": "guest_error", "kind": "invalid_input"}"#,
    ]);
    // The retry waits a random 0–1 s backoff (full jitter) before attempt 2.
    let o = run(&[
        "worker",
        "--pool",
        "bad",
        "--processor",
        "adversary",
        "--exit-when-empty",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = String::from_utf8(run(&["jobs", "list", "bad"]).stdout).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].contains("poisoned")
            && lines[0].contains("attempts 2/2")
            && lines[0].contains("trap"),
        "{list}"
    );
    assert!(lines[1].contains("done"), "{list}");
    assert!(
        lines[2].contains("poisoned") && lines[2].contains("attempts 1/4"),
        "invalid_input must not be retried: {list}"
    );
    // --json: one JSON object per job and line.
    let json = String::from_utf8(run(&["jobs", "list", "bad", "--json"]).stdout).unwrap();
    let jobs: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 3, "{json}");
    assert_eq!(jobs[2]["status"], "poisoned");
    assert_eq!(jobs[2]["attempts"], 1);
    // Pruning takes done jobs only, and only those older than asked.
    let o = run(&["jobs", "prune", "bad", "--older-than", "1h"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pruned 0 done job(s)"),
        "{}",
        stderr(&o)
    );
    let o = run(&["jobs", "prune", "bad", "--older-than", "1ms"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pruned 1 done job(s)"),
        "{}",
        stderr(&o)
    );
    let o = run(&["jobs", "prune", "bad", "--older-than", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let left = String::from_utf8(run(&["jobs", "list", "bad"]).stdout).unwrap();
    assert_eq!(
        left.lines().filter(|l| l.contains("poisoned")).count(),
        2,
        "{left}"
    );
    assert!(!left.contains("done"), "{left}");
    let o = run(&["jobs", "requeue", "bad"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("requeued 2"));
    let list =
        String::from_utf8(run(&["jobs", "list", "bad", "--status", "pending"]).stdout).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    // Bad input is refused without touching the pool.
    let o = run(&["jobs", "push", "bad", "--input", "{nope"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["worker", "--pool", "bad", "--processor", "no-such-plugin"]);
    assert_eq!(o.status.code(), Some(18), "{}", stderr(&o));
}

/// How long a test waits for something another process does.
fn deadline() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(120)
}

/// A `flowhost worker` on pool `p` that exits when the pool is empty.
fn spawn_worker(
    cache: &std::path::Path,
    db: &str,
    processor: &str,
    extra: &[&str],
) -> std::process::Child {
    flowhost(cache)
        .args(["worker", "--pool", "p", "--processor", processor])
        .args(extra)
        .args(["--exit-when-empty", "--db", db])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A worker running `adversary` jobs with a 1 s lease.
fn worker(cache: &std::path::Path, db: &str) -> std::process::Child {
    spawn_worker(
        cache,
        db,
        "adversary",
        &["--lease", "1s", "--heartbeat", "200ms"],
    )
}

/// Polls the store until the job is claimed; returns the claiming worker.
async fn claimed_by(store: &SqliteBackend, id: i64) -> String {
    let give_up = deadline();
    loop {
        assert!(
            std::time::Instant::now() < give_up,
            "job {id} was never claimed"
        );
        if let Some(j) = store.job(id).await.unwrap()
            && j.status == JobStatus::Claimed
            && let Some(w) = j.worker
        {
            return w;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn one_slow_job(cache: &std::path::Path, db: &str) -> (SqliteBackend, i64) {
    let o = flowhost(cache)
        .args([
            "jobs",
            "push",
            "p",
            "--input",
            r#"{"attack": "sleep", "ms": 2000}"#,
            "--db",
            db,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let store = SqliteBackend::open(std::path::Path::new(db), Durability::Normal).unwrap();
    let id = store.jobs("p", None, 1).await.unwrap()[0].id;
    (store, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_job_completes_on_another_worker() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db").display().to_string();
    let (store, id) = one_slow_job(&cache, &db).await;
    let mut first = worker(&cache, &db);
    claimed_by(&store, id).await;
    first.kill().unwrap(); // SIGKILL mid-job
    first.wait().unwrap();

    // The reaper sees the silent worker once its heartbeat is 0.5 s old; the
    // lease (1 s) would release the job anyway.
    let give_up = deadline();
    let reaped = loop {
        assert!(
            std::time::Instant::now() < give_up,
            "the reaper never reaped"
        );
        let o = flowhost(&cache)
            .args(["reaper", "--stale-after", "0.5", "--db", &db])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if text.contains("reaped") {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(reaped.contains("marked lost"), "{reaped}");
    let second = worker(&cache, &db).wait_with_output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Done, 2));
    assert_eq!(job.result.unwrap()["attempt"], 2);
    let workers = String::from_utf8(
        flowhost(&cache)
            .args(["workers", "--db", &db])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        workers.contains("lost") && workers.contains("stopped"),
        "{workers}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_worker_cannot_overwrite_the_newer_result() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db").display().to_string();
    let (store, id) = one_slow_job(&cache, &db).await;
    let zombie = worker(&cache, &db);
    claimed_by(&store, id).await;
    signal(zombie.id(), "-STOP"); // frozen past its 1 s lease
    let second = worker(&cache, &db).wait_with_output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    let done = store.job(id).await.unwrap().unwrap();
    assert_eq!((done.status, done.attempts), (JobStatus::Done, 2));
    signal(zombie.id(), "-CONT");
    let out = zombie.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["completed"].as_u64(), report["rejected"].as_u64()),
        (Some(0), Some(1))
    );
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        job.result.unwrap()["attempt"],
        2,
        "the zombie's attempt-1 result was refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checker_spawns_workers_up_to_the_max() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db").display().to_string();
    let o = flowhost(&cache)
        .args(["jobs", "push", "p", "--count", "10", "--db", &db])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = flowhost(&cache)
        .args([
            "checker",
            "--pool",
            "p",
            "--max-workers",
            "3",
            "--processor",
            "echo",
            "--db",
            &db,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("spawning 3"), "{text}");
    assert_eq!(text.matches("spawned worker process").count(), 3);
    let store = SqliteBackend::open(std::path::Path::new(&db), Durability::Normal).unwrap();
    // The spawned workers finish every job and stop.
    let give_up = deadline();
    loop {
        assert!(
            std::time::Instant::now() < give_up,
            "the spawned workers did not finish"
        );
        let stats = store.stats("p").await.unwrap();
        let workers = flowhost::backend::Workers::workers(&store, Some("p"))
            .await
            .unwrap();
        if stats.done == 10
            && workers.len() == 3
            && workers.iter().all(|w| w.status == WorkerStatus::Stopped)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let o = flowhost(&cache)
        .args([
            "checker",
            "--pool",
            "p",
            "--max-workers",
            "3",
            "--processor",
            "echo",
            "--db",
            &db,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("spawning 0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_distributed_worker_machines_run_with_builtin_hooks() {
    use flowhost::backend::{WorkerInfo, Workers, now_ms};
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dw.db").display().to_string();
    let example = |f: &str| {
        flowhost_e2e::plugin_source(&format!("../examples/distributed_worker/{f}"))
            .display()
            .to_string()
    };
    let o = flowhost(&cache)
        .args(["jobs", "push", "default", "--count", "4", "--db", &db])
        .output()
        .unwrap();
    assert!(o.status.success());
    let store = SqliteBackend::open(std::path::Path::new(&db), Durability::Normal).unwrap();
    // Each checker run spawns min(pending, 2) − active job_worker processes;
    // each of those claims one job, runs echo_processor, completes it.
    for round in 1..=2u64 {
        let o = flowhost(&cache)
            .args([
                "run",
                &example("parallelization_checker.yml"),
                "--input",
                r#"{"max_workers": 2}"#,
                "--db",
                &db,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(out["spawned"], 2, "{out}");
        let give_up = deadline();
        loop {
            let done = store.stats("default").await.unwrap().done;
            let workers = store.workers(Some("default")).await.unwrap();
            if done == 2 * round && workers.iter().all(|w| w.status == WorkerStatus::Stopped) {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "round {round} did not finish"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    for j in store.jobs("default", None, 10).await.unwrap() {
        assert_eq!(j.attempts, 1);
        assert_eq!(
            j.result.unwrap(),
            serde_json::json!({"status": "completed", "processed": j.payload})
        );
    }
    // The reaper machine finds a silent worker and releases it.
    let now = now_ms();
    store
        .register(WorkerInfo {
            id: "silent".into(),
            pool: "default".into(),
            pid: 1,
            host: "h".into(),
            status: WorkerStatus::Active,
            started_ms: now - 60_000,
            heartbeat_ms: now - 30_000,
        })
        .await
        .unwrap();
    let o = flowhost(&cache)
        .args([
            "run",
            &example("stale_worker_reaper.yml"),
            "--input",
            r#"{"stale_threshold_seconds": 10}"#,
            "--db",
            &db,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        out,
        serde_json::json!({"reaped_count": 1, "stale_workers": ["silent"]})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_holding_the_write_lock_stalls_workers_without_harm() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("pool.db");
    let db = db_path.display().to_string();
    let o = flowhost(&cache)
        .args(["jobs", "push", "p", "--count", "300", "--db", &db])
        .output()
        .unwrap();
    assert!(o.status.success());
    // Another process's write transaction, held for 3 seconds.
    let locker = rusqlite::Connection::open(&db_path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| spawn_worker(&cache, &db, "echo", &["--concurrency", "4"]))
        .collect();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let store = SqliteBackend::open(&db_path, Durability::Normal).unwrap();
    let jobs = store.jobs("p", None, 1000).await.unwrap();
    assert_eq!(jobs.len(), 300);
    assert!(
        jobs.iter()
            .all(|j| j.status == JobStatus::Done && j.attempts == 1),
        "no job lost or claimed twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_job_in_hand_and_deregisters() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db").display().to_string();
    let (store, id) = one_slow_job(&cache, &db).await;
    let w = worker(&cache, &db);
    let worker_id = claimed_by(&store, id).await;
    signal(w.id(), "-TERM");
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("finishing the jobs in hand"));
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Done, 1));
    let workers = flowhost::backend::Workers::workers(&store, Some("p"))
        .await
        .unwrap();
    let me = workers.iter().find(|w| w.id == worker_id).unwrap();
    assert_eq!(me.status, WorkerStatus::Stopped);
}
