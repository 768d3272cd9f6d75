//! Job pools through the real binary: several worker processes share one
//! SQLite database.

use flowhost::backend::{Durability, SqliteBackend, WorkPools, job_status};
use flowhost_e2e::{flowhost, shared_cache, stderr};

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
        .map(|_| {
            flowhost(&cache)
                .args([
                    "worker",
                    "--pool",
                    "p",
                    "--processor",
                    "echo",
                    "--concurrency",
                    "4",
                    "--exit-when-empty",
                    "--db",
                    &db,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
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
        assert_eq!(j.status, job_status::DONE, "{j:?}");
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
    let o = run(&["jobs", "requeue", "bad"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("requeued 1"));
    let list =
        String::from_utf8(run(&["jobs", "list", "bad", "--status", "pending"]).stdout).unwrap();
    assert_eq!(list.lines().count(), 1, "{list}");
    // Bad input is refused without touching the pool.
    let o = run(&["jobs", "push", "bad", "--input", "{nope"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["worker", "--pool", "bad", "--processor", "no-such-plugin"]);
    assert_eq!(o.status.code(), Some(18), "{}", stderr(&o));
}
