//! One behaviour suite, run against every backend.

use super::*;
use serde_json::json;

fn checkpoint(id: &str, parent: Option<&str>, status: &str, created: u64) -> Checkpoint {
    Checkpoint {
        id: id.into(),
        parent: parent.map(str::to_string),
        machine: "m".into(),
        status: status.into(),
        state: "s".into(),
        step: 1,
        created_ms: created,
        updated_ms: created,
        record: format!("{{\"id\":\"{id}\"}}"),
    }
}

async fn suite(b: &dyn Backend) {
    assert_eq!(b.load("nope").await.unwrap(), None);
    b.save(checkpoint("a", None, "running", 10)).await.unwrap();
    b.save(checkpoint("b", Some("a"), "running", 20))
        .await
        .unwrap();
    b.save(checkpoint("c", None, "done", 30)).await.unwrap();
    // A later save replaces the row but keeps its creation time.
    let mut later = checkpoint("a", None, "done", 99);
    later.step = 7;
    b.save(later).await.unwrap();
    let a = b.load("a").await.unwrap().unwrap();
    assert_eq!((a.status.as_str(), a.step, a.created_ms), ("done", 7, 10));

    let all = b.list(&ListFilter::default()).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"], "newest first");
    let roots = b
        .list(&ListFilter {
            roots_only: true,
            status: Some("done".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = roots.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c", "a"]);
    let limited = b
        .list(&ListFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);

    assert_eq!(b.read_result("a").await.unwrap(), None);
    let result = StoredResult {
        status: "done".into(),
        value: json!({"n": [1, 2]}),
        written_ms: 5,
    };
    b.write_result("a", result.clone()).await.unwrap();
    assert_eq!(b.read_result("a").await.unwrap(), Some(result));

    // A deferred save is stored by the time a later waited-for write returns.
    b.save_deferred(checkpoint("d", None, "running", 40))
        .await
        .unwrap();
    b.send_signal("d", "flush", json!(null)).await.unwrap();
    assert_eq!(b.load("d").await.unwrap().unwrap().status, "running");

    assert_eq!(b.take_signal("a", "go").await.unwrap(), None);
    b.send_signal("a", "go", json!(1)).await.unwrap();
    b.send_signal("a", "go", json!(2)).await.unwrap();
    b.send_signal("a", "other", json!(3)).await.unwrap();
    assert_eq!(b.take_signal("a", "go").await.unwrap(), Some(json!(1)));
    assert_eq!(b.take_signal("a", "go").await.unwrap(), Some(json!(2)));
    // A deferred save is stored by the time a later waited-for write returns.
    b.save_deferred(checkpoint("d", None, "running", 40))
        .await
        .unwrap();
    b.send_signal("d", "flush", json!(null)).await.unwrap();
    assert_eq!(b.load("d").await.unwrap().unwrap().status, "running");

    assert_eq!(b.take_signal("a", "go").await.unwrap(), None);
    assert_eq!(b.take_signal("b", "other").await.unwrap(), None);
}

#[tokio::test]
async fn memory_backend_conforms() {
    suite(&MemoryBackend::new()).await;
}

#[tokio::test]
async fn sqlite_backend_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowhost.db");
    {
        let b = SqliteBackend::open(&path, Durability::Full).unwrap();
        suite(&b).await;
    }
    // A second open sees the same data and does not re-run migrations.
    let b = SqliteBackend::open(&path, Durability::Normal).unwrap();
    assert_eq!(b.load("a").await.unwrap().unwrap().step, 7);
    assert!(b.read_result("a").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_refuses_a_missing_folder_and_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/flowhost.db");
    let e = SqliteBackend::open(&missing, Durability::Full)
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");

    let path = dir.path().join("future.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 999").unwrap();
    drop(conn);
    let e = SqliteBackend::open(&path, Durability::Full).err().unwrap();
    assert!(e.to_string().contains("newer than this flowhost"), "{e}");
}

#[test]
fn result_uris() {
    assert_eq!(parse_result_uri("flowhost://abc/result").unwrap(), "abc");
    assert_eq!(parse_result_uri("flatagents://abc/result").unwrap(), "abc");
    assert_eq!(parse_result_uri("abc").unwrap(), "abc");
    assert!(parse_result_uri("http://abc/result").is_err());
    assert!(parse_result_uri("flowhost://a/b/result").is_err());
}

async fn pools_suite(b: &dyn Backend) {
    use super::pools::job_status::*;
    let no_wait = Backoff {
        base_ms: 0,
        max_ms: 0,
    };
    // Idempotent push.
    let mut keyed = NewJob::new(json!({"n": 1}));
    keyed.idempotency_key = Some("k1".into());
    let (a, created) = b.push("p", keyed.clone()).await.unwrap();
    assert!(created);
    assert_eq!(b.push("p", keyed).await.unwrap(), (a, false));
    let mut urgent = NewJob::new(json!({"n": 2}));
    urgent.priority = 5;
    let (u, _) = b.push("p", urgent).await.unwrap();
    let mut later = NewJob::new(json!({"n": 3}));
    later.delay_ms = 3_600_000;
    b.push("p", later).await.unwrap();
    b.push("other", NewJob::new(json!({}))).await.unwrap();

    // Claims: priority first, delayed and other pools untouched, never twice.
    let got = b.claim("p", "w1", 10, 60_000).await.unwrap();
    let ids: Vec<i64> = got.iter().map(|j| j.id).collect();
    assert_eq!(ids, [u, a]);
    assert!(
        got.iter()
            .all(|j| j.attempts == 1 && j.worker.as_deref() == Some("w1"))
    );
    assert!(b.claim("p", "w2", 10, 60_000).await.unwrap().is_empty());
    let s = b.stats("p").await.unwrap();
    assert_eq!((s.pending, s.claimed, s.depth()), (1, 2, 3));

    // Complete with the current fence; a stale fence is rejected.
    let job_a = got.iter().find(|j| j.id == a).unwrap().clone();
    assert!(!b.complete(a, job_a.fence + 1, json!("late")).await.unwrap());
    assert!(
        b.complete(a, job_a.fence, json!({"ok": true}))
            .await
            .unwrap()
    );
    let stored = b.job(a).await.unwrap().unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.result),
        (DONE, Some(json!({"ok": true})))
    );

    // Release by worker: the job is claimable again with a new fence.
    assert_eq!(b.release_worker("w1").await.unwrap(), 1);
    let again = b.claim("p", "w2", 1, 60_000).await.unwrap();
    assert_eq!((again[0].id, again[0].attempts), (u, 2));
    let old_fence = got.iter().find(|j| j.id == u).unwrap().fence;
    assert!(!b.complete(u, old_fence, json!("zombie")).await.unwrap());

    // Fail: retried (error kept), then poisoned after max_retries; requeue.
    let mut flaky = NewJob::new(json!({"n": 4}));
    flaky.max_retries = 1;
    flaky.priority = 9;
    let (f, _) = b.push("p", flaky).await.unwrap();
    let c1 = b.claim("p", "w3", 1, 60_000).await.unwrap();
    assert_eq!(c1[0].id, f);
    assert_eq!(
        b.fail(f, c1[0].fence, "boom 1", no_wait).await.unwrap(),
        FailOutcome::Retried
    );
    assert_eq!(
        b.fail(f, c1[0].fence, "late", no_wait).await.unwrap(),
        FailOutcome::Rejected
    );
    let c2 = b.claim("p", "w3", 1, 60_000).await.unwrap();
    assert_eq!((c2[0].id, c2[0].error.as_deref()), (f, Some("boom 1")));
    assert_eq!(
        b.fail(f, c2[0].fence, "boom 2", no_wait).await.unwrap(),
        FailOutcome::Poisoned
    );
    let poisoned = b.job(f).await.unwrap().unwrap();
    assert_eq!(
        (poisoned.status.as_str(), poisoned.error.as_deref()),
        (POISONED, Some("boom 2"))
    );
    assert_eq!(b.jobs("p", Some(POISONED), 10).await.unwrap().len(), 1);
    assert_eq!(b.requeue("p", &[]).await.unwrap(), 1);
    let back = b.job(f).await.unwrap().unwrap();
    assert_eq!((back.status.as_str(), back.attempts), (PENDING, 0));

    // An expired lease makes a job claimable by someone else.
    let (e, _) = b.push("lease", NewJob::new(json!(null))).await.unwrap();
    let first = b.claim("lease", "slow", 1, 0).await.unwrap();
    let second = loop {
        let c = b.claim("lease", "fast", 1, 60_000).await.unwrap();
        if !c.is_empty() {
            break c;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((second[0].id, second[0].attempts), (e, 2));
    assert!(!b.complete(e, first[0].fence, json!("slow")).await.unwrap());
    assert!(b.complete(e, second[0].fence, json!("fast")).await.unwrap());

    // Workers: heartbeat, then a stale one is reaped and its jobs released.
    let now = now_ms();
    let worker = |id: &str, beat: u64| WorkerInfo {
        id: id.into(),
        pool: "p".into(),
        pid: 1,
        host: "h".into(),
        status: "active".into(),
        started_ms: now - 20_000,
        heartbeat_ms: beat,
    };
    b.register(worker("alive", now)).await.unwrap();
    b.register(worker("silent", now - 10_000)).await.unwrap();
    assert!(b.heartbeat("alive").await.unwrap());
    assert!(!b.heartbeat("nobody").await.unwrap());
    b.push("p", NewJob::new(json!({"n": 5}))).await.unwrap();
    let held = b.claim("p", "silent", 5, 60_000).await.unwrap();
    assert!(!held.is_empty());
    assert_eq!(b.reap(5_000).await.unwrap(), ["silent"]);
    let ws = b.workers(Some("p")).await.unwrap();
    let status: Vec<(&str, &str)> = ws
        .iter()
        .map(|w| (w.id.as_str(), w.status.as_str()))
        .collect();
    assert_eq!(status, [("alive", "active"), ("silent", "lost")]);
    assert!(!b.heartbeat("silent").await.unwrap());
    assert_eq!(
        b.stats("p").await.unwrap().claimed,
        1,
        "only w2's job is still claimed"
    );
}

#[tokio::test]
async fn memory_pools_conform() {
    pools_suite(&MemoryBackend::new()).await;
}

#[tokio::test]
async fn sqlite_pools_conform() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBackend::open(&dir.path().join("p.db"), Durability::Normal).unwrap();
    pools_suite(&b).await;
}
