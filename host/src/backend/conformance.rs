//! One behaviour suite, run against every backend.

use super::*;
use serde_json::json;
use std::sync::Arc;

fn checkpoint(id: &str, parent: Option<&str>, status: &str, created: u64) -> Checkpoint {
    Checkpoint {
        id: id.into(),
        parent: parent.map(str::to_string),
        machine: "m".into(),
        status: ExecutionStatus::parse(status).expect("a status"),
        state: "s".into(),
        step: 1,
        created_ms: created,
        updated_ms: created,
        record: format!("{{\"id\":\"{id}\"}}"),
        consumes_signal: None,
        enqueue: Vec::new(),
        fence: None,
        result: None,
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
    let wanted: Vec<String> = ["a", "b", "missing"].map(String::from).to_vec();
    let statuses = b.statuses(&wanted).await.unwrap();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses["a"], ExecutionStatus::Done);
    assert_eq!(statuses["b"], ExecutionStatus::Running);
    // More ids than one statement takes.
    let many: Vec<String> = (0..1200)
        .map(|i| format!("x{i}"))
        .chain(["c".into()])
        .collect();
    assert_eq!(b.statuses(&many).await.unwrap().len(), 1);
    let roots = b
        .list(&ListFilter {
            roots_only: true,
            status: Some(ExecutionStatus::Done),
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
    // Pages: each starts after the last one of the page before.
    let page = |after: Option<(u64, String)>| ListFilter {
        limit: Some(2),
        after,
        ..Default::default()
    };
    let first = b.list(&page(None)).await.unwrap();
    let last = first.last().unwrap();
    let second = b
        .list(&page(Some((last.created_ms, last.id.clone()))))
        .await
        .unwrap();
    let ids: Vec<&str> = first.iter().chain(&second).map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"]);
    let children = b
        .list(&ListFilter {
            parent: Some("a".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        children.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    // A checkpoint can carry jobs: stored in the same write.
    let mut with_job = checkpoint("j", None, "queued", 40);
    with_job.enqueue = vec![("runq".into(), NewJob::new(json!({"execution": "j"})))];
    b.save(with_job).await.unwrap();
    assert_eq!(b.stats("runq").await.unwrap().pending, 1);
    b.save(checkpoint("j", None, "done", 41)).await.unwrap();
    assert_eq!(
        b.stats("runq").await.unwrap().pending,
        1,
        "a later save pushes nothing"
    );

    assert_eq!(b.read_result("a").await.unwrap(), None);
    let result = StoredResult {
        fence: None,
        status: ExecutionStatus::Done,
        value: json!({"n": [1, 2]}),
        written_ms: 5,
        counts_toward: None,
    };
    b.write_result("a", result.clone()).await.unwrap();
    assert_eq!(b.read_result("a").await.unwrap(), Some(result.clone()));
    b.write_result("gone", result).await.unwrap();
    b.delete_result("gone").await.unwrap();
    assert_eq!(b.read_result("gone").await.unwrap(), None);

    // A deferred save is stored by the time a later waited-for write returns.
    b.save_deferred(checkpoint("d", None, "running", 40))
        .await
        .unwrap();
    b.send_signal("d", "flush", json!(null)).await.unwrap();
    assert_eq!(
        b.load("d").await.unwrap().unwrap().status,
        ExecutionStatus::Running
    );

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
    assert_eq!(
        b.load("d").await.unwrap().unwrap().status,
        ExecutionStatus::Running
    );

    assert_eq!(b.take_signal("a", "go").await.unwrap(), None);
    assert_eq!(b.take_signal("b", "other").await.unwrap(), None);
}

/// Lists filtered by time range and id prefix; counts kept as executions
/// are stored and change status.
async fn list_and_count_suite(b: &dyn Backend) {
    let of =
        |id: &str, parent: Option<&str>, machine: &str, status: &str, created: u64| Checkpoint {
            machine: machine.into(),
            ..checkpoint(id, parent, status, created)
        };
    b.save(of("x1", None, "m1", "running", 100)).await.unwrap();
    b.save(of("x2", None, "m1", "done", 200)).await.unwrap();
    b.save(of("y1", Some("x1"), "m2", "running", 150))
        .await
        .unwrap();
    b.save(of("ab12", None, "m2", "failed", 300)).await.unwrap();
    // A save that changes nothing counted counts nothing.
    b.save(of("x2", None, "m1", "done", 200)).await.unwrap();
    let counted = |counts: Vec<ExecutionCount>| {
        let mut rows: Vec<(bool, String, &'static str, u64)> = counts
            .into_iter()
            .map(|c| (c.root, c.machine, c.status.as_str(), c.count))
            .collect();
        rows.sort();
        rows
    };
    let row = |root: bool, m: &str, s: &'static str, n: u64| (root, m.to_string(), s, n);
    assert_eq!(
        counted(b.counts().await.unwrap()),
        [
            row(false, "m2", "running", 1),
            row(true, "m1", "done", 1),
            row(true, "m1", "running", 1),
            row(true, "m2", "failed", 1),
        ]
    );
    b.save(of("x1", None, "m1", "done", 100)).await.unwrap();
    assert_eq!(
        counted(b.counts().await.unwrap()),
        [
            row(false, "m2", "running", 1),
            row(true, "m1", "done", 2),
            row(true, "m2", "failed", 1),
        ],
        "a status change moves the count"
    );

    let ids = |filter: ListFilter| async move {
        b.list(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let range = ListFilter {
        created_from: Some(150),
        created_before: Some(300),
        ..Default::default()
    };
    assert_eq!(ids(range).await, ["x2", "y1"]);
    let prefix = |p: &str| ListFilter {
        id_prefix: Some(p.into()),
        ..Default::default()
    };
    assert_eq!(ids(prefix("x")).await, ["x2", "x1"]);
    assert_eq!(ids(prefix("ab")).await, ["ab12"]);
    assert!(ids(prefix("x3")).await.is_empty());
    let combined = ListFilter {
        id_prefix: Some("x".into()),
        status: Some(ExecutionStatus::Done),
        created_from: Some(150),
        roots_only: true,
        ..Default::default()
    };
    assert_eq!(ids(combined).await, ["x2"]);
}

fn owner(id: &str) -> Owner {
    Owner {
        id: id.into(),
        pid: 1,
        host: "h".into(),
        started: 0,
    }
}

/// Writes made under a lease another owner took since are refused, and
/// leave what is stored as it was.
async fn fence_suite(b: &dyn Backend) {
    let Claim::Acquired(first) = b.acquire("f", &owner("me"), 60_000, None).await.unwrap() else {
        panic!("a free lease is acquired");
    };
    let mine = Fence {
        root: "f".into(),
        token: first.token,
    };
    let fenced = |id: &str, step: u64, fence: &Fence| Checkpoint {
        step,
        fence: Some(fence.clone()),
        ..checkpoint(id, Some("f"), "running", 1)
    };
    b.save(fenced("f:1:0", 1, &mine)).await.unwrap();
    // Another owner takes over (it knows the holder is dead).
    let Claim::Acquired(second) = b
        .acquire("f", &owner("new"), 60_000, Some(first.token))
        .await
        .unwrap()
    else {
        panic!("a known-dead holder is evicted");
    };
    let theirs = Fence {
        root: "f".into(),
        token: second.token,
    };
    let refused = b.save(fenced("f:1:0", 2, &mine)).await.unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Conflict, "{refused}");
    assert!(
        refused.message.contains("lost ownership of `f`"),
        "{refused}"
    );
    // Queued, it is dropped (or refused at once): either way not stored.
    let _ = b.save_deferred(fenced("f:1:0", 3, &mine)).await;
    let stale_result = StoredResult {
        fence: Some(mine.clone()),
        status: ExecutionStatus::Done,
        value: json!("late"),
        written_ms: 1,
        counts_toward: None,
    };
    let refused = b
        .write_result("f:1:0", stale_result.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Conflict);
    // A final checkpoint carries its result: refused, neither is stored.
    let refused = b
        .save(Checkpoint {
            result: Some(stale_result.clone()),
            ..fenced("f:1:0", 5, &mine)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Conflict);
    b.save(checkpoint("unfenced", None, "running", 1))
        .await
        .unwrap();
    assert_eq!(b.load("f:1:0").await.unwrap().unwrap().step, 1);
    assert_eq!(b.read_result("f:1:0").await.unwrap(), None);
    // The new owner writes; its final checkpoint stores its result too.
    b.save(fenced("f:1:0", 4, &theirs)).await.unwrap();
    assert_eq!(b.load("f:1:0").await.unwrap().unwrap().step, 4);
    b.save(Checkpoint {
        status: ExecutionStatus::Done,
        result: Some(StoredResult {
            fence: None,
            value: json!("ended"),
            ..stale_result
        }),
        ..fenced("f:1:0", 6, &theirs)
    })
    .await
    .unwrap();
    let cp = b.load("f:1:0").await.unwrap().unwrap();
    assert_eq!((cp.step, cp.status), (6, ExecutionStatus::Done));
    assert_eq!(cp.result, None, "write-only");
    assert_eq!(
        b.read_result("f:1:0").await.unwrap().map(|r| r.value),
        Some(json!("ended"))
    );
    // A fence on a lease nobody ever took is refused too.
    let nobody = Fence {
        root: "ghost".into(),
        token: 1,
    };
    assert!(b.save(fenced("ghost", 1, &nobody)).await.is_err());
}

/// One owner at a time; an expired lease or a known-dead holder can be taken
/// over; every acquisition raises the token; a stale token renews nothing.
async fn ownership_suite(b: &dyn Backend) {
    let (a, other) = (owner("a"), owner("b"));
    assert_eq!(b.lease("x").await.unwrap(), None);
    let Claim::Acquired(first) = b.acquire("x", &a, 60_000, None).await.unwrap() else {
        panic!("a free execution is acquired");
    };
    assert_eq!((first.token, first.owner.id.as_str()), (1, "a"));
    let Claim::Held(held) = b.acquire("x", &other, 60_000, None).await.unwrap() else {
        panic!("a live lease is not taken");
    };
    assert_eq!(held, first);
    // The same owner again keeps it (with a new token).
    let Claim::Acquired(again) = b.acquire("x", &a, 60_000, None).await.unwrap() else {
        panic!("the holder re-acquires");
    };
    assert_eq!(again.token, 2);
    assert!(
        !b.renew("x", 1, 60_000).await.unwrap(),
        "a stale token renews nothing"
    );
    assert!(b.renew("x", 2, 60_000).await.unwrap());
    // A holder known dead is evicted by its token only.
    assert!(matches!(
        b.acquire("x", &other, 60_000, Some(1)).await.unwrap(),
        Claim::Held(_)
    ));
    let Claim::Acquired(taken) = b.acquire("x", &other, 60_000, Some(2)).await.unwrap() else {
        panic!("a dead holder is evicted");
    };
    assert_eq!((taken.token, taken.owner.id.as_str()), (3, "b"));
    assert!(
        !b.renew("x", 2, 60_000).await.unwrap(),
        "the evicted holder lost it"
    );
    // Released (maybe queued; ordered before the next write): free for
    // anyone although b's lease had 60 s to go, and the token keeps rising.
    b.release("x", 3).await.unwrap();
    let Claim::Acquired(next) = b.acquire("x", &a, 0, None).await.unwrap() else {
        panic!("a released execution is acquired");
    };
    assert_eq!(next.token, 4);
    // A lease of zero has expired by the next look: anyone may take it.
    let Claim::Acquired(expired) = b.acquire("x", &other, 60_000, None).await.unwrap() else {
        panic!("an expired lease is taken over");
    };
    assert_eq!(expired.token, 5);
    // A new execution's lease: token 1, and it holds against others.
    let fresh = b.acquire_new("y", &a, 60_000).await.unwrap();
    assert_eq!(fresh.token, 1);
    assert!(matches!(
        b.acquire("y", &other, 60_000, None).await.unwrap(),
        Claim::Held(l) if l.owner.id == "a"
    ));
    assert!(b.renew("y", 1, 60_000).await.unwrap());
}

async fn definitions_suite(b: &dyn Backend) {
    assert_eq!(b.get_definition("d1").await.unwrap(), None);
    b.put_definition("d1", "first").await.unwrap();
    // A digest names one text: a second put under it changes nothing.
    b.put_definition("d1", "second").await.unwrap();
    b.put_definition("d2", "other").await.unwrap();
    // A waited-for write covers the deferred puts before it.
    b.save(checkpoint("after-put", None, "running", 1))
        .await
        .unwrap();
    assert_eq!(
        b.get_definition("d1").await.unwrap().as_deref(),
        Some("first")
    );
    assert_eq!(
        b.get_definition("d2").await.unwrap().as_deref(),
        Some("other")
    );
}

/// History: stored in order, read after a point, bounded per execution; an
/// event stored again under its number replaces it.
async fn history_suite(b: &dyn Backend) {
    assert_eq!(b.history("h", 0, 10).await.unwrap(), vec![]);
    let events = |from: u64, n: u64| -> Vec<NewEvent> {
        (from..from + n)
            .map(|seq| NewEvent {
                seq,
                at_ms: seq * 10,
                json: json!({"n": seq}).to_string(),
            })
            .collect()
    };
    b.append_history("h", events(1, 3), 10).await.unwrap();
    b.append_history("other", events(1, 2), 10).await.unwrap();
    b.append_history("h", events(4, 2), 10).await.unwrap();
    // Queued like a deferred checkpoint: a waited-for write covers it.
    b.save(checkpoint("flush-h", None, "running", 1))
        .await
        .unwrap();
    let all = b.history("h", 0, 100).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "in order, this execution only");
    assert_eq!((all[2].at_ms, &all[2].event), (30, &json!({"n": 3})));
    let after = b.history("h", 2, 2).await.unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    // A re-run stores its events again under the same numbers.
    let mut again = events(5, 1);
    again[0].json = json!({"n": "again"}).to_string();
    b.append_history("h", again, 10).await.unwrap();
    // Bounded: the oldest go first.
    b.append_history("h", events(6, 2), 4).await.unwrap();
    b.save(checkpoint("flush-h", None, "running", 1))
        .await
        .unwrap();
    let kept = b.history("h", 0, 100).await.unwrap();
    assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    assert_eq!(kept[1].event, json!({"n": "again"}));
    assert_eq!(b.history("other", 0, 100).await.unwrap().len(), 2);
}

/// A delivered signal is deleted by the checkpoint that records it, in the
/// same write; peeking leaves it in place.
async fn signal_consumption_suite(b: &dyn Backend) {
    assert_eq!(b.peek_signal("s", "go").await.unwrap(), None);
    b.send_signal("s", "go", json!(1)).await.unwrap();
    b.send_signal("s", "go", json!(2)).await.unwrap();
    b.send_signal("t", "go", json!(9)).await.unwrap();
    let first = b.peek_signal("s", "go").await.unwrap().unwrap();
    assert_eq!(first.data, json!(1));
    assert_eq!(b.peek_signal("s", "go").await.unwrap(), Some(first.clone()));
    // A checkpoint of another execution cannot consume it.
    b.save(Checkpoint {
        consumes_signal: Some(first.seq),
        ..checkpoint("t", None, "running", 1)
    })
    .await
    .unwrap();
    assert_eq!(b.peek_signal("s", "go").await.unwrap(), Some(first.clone()));
    // A deferred checkpoint consumes it when it is stored.
    b.save_deferred(Checkpoint {
        consumes_signal: Some(first.seq),
        ..checkpoint("s", None, "running", 1)
    })
    .await
    .unwrap();
    b.save(checkpoint("flush", None, "running", 1))
        .await
        .unwrap();
    let next = b.peek_signal("s", "go").await.unwrap().unwrap();
    assert_eq!(next.data, json!(2));
    assert!(next.seq > first.seq);
    assert_eq!(b.load("s").await.unwrap().unwrap().consumes_signal, None);
    assert_eq!(b.take_signal("t", "go").await.unwrap(), Some(json!(9)));
}

/// Time-driven behaviour, with the store's clock moved by hand: leases
/// expire, delayed jobs come due, expired claims are claimable again, and
/// silent workers are reaped, exactly when the clock says so.
async fn clock_suite(b: &dyn Backend, clock: &ManualClock) {
    let (a, other) = (owner("a"), owner("b"));
    assert!(matches!(
        b.acquire("t", &a, 1_000, None).await.unwrap(),
        Claim::Acquired(_)
    ));
    clock.advance(999);
    assert!(matches!(
        b.acquire("t", &other, 1_000, None).await.unwrap(),
        Claim::Held(_)
    ));
    clock.advance(1);
    assert!(matches!(
        b.acquire("t", &other, 1_000, None).await.unwrap(),
        Claim::Acquired(l) if l.owner.id == "b"
    ));

    let mut delayed = NewJob::new(json!({"n": 1}));
    delayed.delay_ms = 5_000;
    let (id, _) = b.push("timed", delayed).await.unwrap();
    clock.advance(4_999);
    assert!(b.claim("timed", "w1", 1, 100).await.unwrap().is_empty());
    clock.advance(1);
    let first = b.claim("timed", "w1", 1, 100).await.unwrap();
    assert_eq!(first.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    clock.advance(99);
    assert!(b.claim("timed", "w2", 1, 100).await.unwrap().is_empty());
    clock.advance(1);
    let second = b.claim("timed", "w2", 1, 100).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(second[0].fence > first[0].fence);
    assert!(!b.complete(id, first[0].fence, json!(1)).await.unwrap());

    let now = clock.now_ms();
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        pool: "timed".into(),
        pid: 1,
        host: "h".into(),
        status: WorkerStatus::Active,
        started_ms: now,
        heartbeat_ms: now,
    };
    b.register(info("quiet")).await.unwrap();
    b.register(info("alive")).await.unwrap();
    clock.advance(10_000);
    assert!(b.heartbeat("alive").await.unwrap());
    clock.advance(1);
    assert_eq!(b.reap(10_000).await.unwrap(), ["quiet"]);

    // Pruning: done jobs finished before the cutoff go, `limit` at a time;
    // pending and poisoned ones stay.
    b.push_many("prune", (0..3).map(|n| NewJob::new(json!(n))).collect())
        .await
        .unwrap();
    let held = b.claim("prune", "w", 3, 60_000).await.unwrap();
    assert!(
        b.complete(held[0].id, held[0].fence, json!(0))
            .await
            .unwrap()
    );
    assert!(
        b.complete(held[1].id, held[1].fence, json!(1))
            .await
            .unwrap()
    );
    b.fail(held[2].id, held[2].fence, "no", None).await.unwrap();
    let finished = clock.now_ms();
    clock.advance(1_000);
    b.push("prune", NewJob::new(json!(3))).await.unwrap();
    assert_eq!(
        b.prune("prune", finished, 10).await.unwrap(),
        0,
        "not before it"
    );
    assert_eq!(b.prune("prune", finished + 1, 1).await.unwrap(), 1);
    assert_eq!(b.prune("prune", finished + 1, 10).await.unwrap(), 1);
    let left: Vec<JobStatus> = b
        .jobs("prune", None, 10)
        .await
        .unwrap()
        .iter()
        .map(|j| j.status)
        .collect();
    assert_eq!(left, [JobStatus::Poisoned, JobStatus::Pending]);
}

#[tokio::test]
async fn backends_decide_time_by_their_clock() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    clock_suite(&MemoryBackend::new().with_clock(clock.clone()), &clock).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let b = SqliteBackend::open(&dir.path().join("clock.db"), Durability::Normal)
        .unwrap()
        .with_clock(clock.clone());
    clock_suite(&b, &clock).await;
}

/// A retry storm: 1,000 jobs fail at the same instant. Full jitter spreads
/// their retries over the whole backoff window (a histogram of ten slices:
/// none empty, none holding more than twice its share), and the jobs come
/// due as the store's clock passes their time — none before, all by the
/// window's end.
async fn retry_storm_suite(b: &dyn Backend, clock: &ManualClock) {
    const JOBS: u64 = 1000;
    let backoff = Backoff {
        base_ms: 10_000,
        max_ms: 60_000,
    };
    b.push_many(
        "storm",
        (0..JOBS).map(|n| NewJob::new(json!({ "n": n }))).collect(),
    )
    .await
    .unwrap();
    let held = b.claim("storm", "w", JOBS as u32, 60_000).await.unwrap();
    assert_eq!(held.len() as u64, JOBS);
    let failed_at = clock.now_ms();
    for job in &held {
        let outcome = b
            .fail(job.id, job.fence, "down", Some(backoff))
            .await
            .unwrap();
        assert_eq!(outcome, FailOutcome::Retried);
    }
    let jobs = b.jobs("storm", None, JOBS as usize).await.unwrap();
    let mut slices = [0u64; 10];
    for j in &jobs {
        let after = j.run_at_ms - failed_at;
        assert!(after <= backoff.base_ms, "job {}: {after} ms", j.id);
        slices[((after * 10 / (backoff.base_ms + 1)) as usize).min(9)] += 1;
    }
    eprintln!(
        "retry storm, {JOBS} jobs over {} ms, per tenth: {slices:?}",
        backoff.base_ms
    );
    for (i, n) in slices.iter().enumerate() {
        assert!(*n > 0 && *n <= 2 * JOBS / 10, "slice {i}: {slices:?}");
    }
    // Nothing comes due early; everything has by the window's end.
    let first_due = jobs.iter().map(|j| j.run_at_ms).min().unwrap();
    clock.set(first_due - 1);
    assert!(
        b.claim("storm", "w", JOBS as u32, 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    clock.set(failed_at + backoff.base_ms);
    let again = b.claim("storm", "w", JOBS as u32, 60_000).await.unwrap();
    assert_eq!(again.len() as u64, JOBS);
}

#[tokio::test]
async fn a_retry_storm_spreads_out_by_jitter() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    retry_storm_suite(&MemoryBackend::new().with_clock(clock.clone()), &clock).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let b = SqliteBackend::open(&dir.path().join("storm.db"), Durability::Normal)
        .unwrap()
        .with_clock(clock.clone());
    retry_storm_suite(&b, &clock).await;
}

/// A machine moved by hand: its wall clock, its boot clock (shared by the
/// processes of one boot) and its boot id.
struct FakeHost {
    wall: std::sync::atomic::AtomicU64,
    boot: Arc<std::sync::atomic::AtomicU64>,
    id: String,
}

impl FakeHost {
    fn new(wall: u64, boot: Arc<std::sync::atomic::AtomicU64>, id: &str) -> Arc<FakeHost> {
        Arc::new(FakeHost {
            wall: wall.into(),
            boot,
            id: id.into(),
        })
    }

    fn step_wall(&self, ms: i64) {
        let now = self.wall.load(std::sync::atomic::Ordering::SeqCst) as i64;
        self.wall
            .store((now + ms) as u64, std::sync::atomic::Ordering::SeqCst);
    }

    fn pass(&self, ms: u64) {
        self.boot.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl TimeSource for FakeHost {
    fn wall_ms(&self) -> u64 {
        self.wall.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn boot_ms(&self) -> u64 {
        self.boot.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn boot_id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

/// The SQLite store's time is one timeline for every process of a boot:
/// a worker whose wall clock is 5 minutes off reads the same time; steps of
/// the wall clock (an hour forward, a day back) move no lease and no
/// heartbeat — no live worker looks dead, none is reaped en masse; leases
/// and heartbeats age with the boot clock only; and after a reboot with
/// the clock set back, time starts no earlier than what the store saw, so
/// a worker dead since before the reboot is reaped at its limit, not hours
/// later.
#[tokio::test]
async fn the_store_clock_ignores_wall_clock_steps_and_survives_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("clock.db");
    let boot = Arc::new(std::sync::atomic::AtomicU64::new(50_000));
    let host = FakeHost::new(1_700_000_000_000, boot.clone(), "boot-1");
    let a = SqliteBackend::open_with_time(&db, Durability::Normal, host.clone()).unwrap();
    let skewed = FakeHost::new(1_700_000_000_000 + 300_000, boot.clone(), "boot-1");
    let b = SqliteBackend::open_with_time(&db, Durability::Normal, skewed).unwrap();
    let start = a.clock().now_ms();
    assert_eq!(start, 1_700_000_000_000);
    assert_eq!(
        b.clock().now_ms(),
        start,
        "a skewed process reads the store's time"
    );

    let worker = |id: &str, at: u64| WorkerInfo {
        id: id.into(),
        pool: "p".into(),
        pid: 1,
        host: "h".into(),
        status: WorkerStatus::Active,
        started_ms: at,
        heartbeat_ms: at,
    };
    a.register(worker("live", start)).await.unwrap();
    b.register(worker("other", start)).await.unwrap();
    assert!(matches!(
        a.acquire("t", &owner("a"), 30_000, None).await.unwrap(),
        Claim::Acquired(_)
    ));
    for step in [3_600_000, -86_400_000 - 3_600_000] {
        host.step_wall(step);
        assert_eq!(
            a.clock().now_ms(),
            start,
            "the wall clock stepped {step} ms"
        );
        assert!(a.reap(60_000).await.unwrap().is_empty(), "nobody reaped");
        assert!(matches!(
            b.acquire("t", &owner("b"), 30_000, None).await.unwrap(),
            Claim::Held(_)
        ));
    }
    host.pass(29_999);
    assert!(matches!(
        b.acquire("t", &owner("b"), 30_000, None).await.unwrap(),
        Claim::Held(_)
    ));
    host.pass(1);
    assert!(matches!(
        b.acquire("t", &owner("b"), 30_000, None).await.unwrap(),
        Claim::Acquired(l) if l.owner.id == "b"
    ));
    assert!(a.heartbeat("live").await.unwrap());
    host.pass(30_001);
    assert_eq!(a.reap(60_000).await.unwrap(), ["other"]);
    let last = a.clock().now_ms();
    a.register(worker("dies", last)).await.unwrap();
    drop((a, b));

    // A reboot; the wall clock is ten minutes behind what the store saw.
    let boot2 = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let rebooted = FakeHost::new(last - 600_000, boot2, "boot-2");
    let c = SqliteBackend::open_with_time(&db, Durability::Normal, rebooted.clone()).unwrap();
    assert!(
        c.clock().now_ms() >= last,
        "time went back across the reboot"
    );
    rebooted.pass(60_000);
    let reaped = c.reap(60_000).await.unwrap();
    assert!(!reaped.contains(&"dies".to_string()), "{reaped:?}");
    rebooted.pass(1);
    let reaped = c.reap(60_000).await.unwrap();
    assert!(reaped.contains(&"dies".to_string()), "{reaped:?}");
}

/// A fan-in counts each child's first result once, in the result's write;
/// the write reaching zero pushes the wake-up job once; opening counts the
/// children that ended before it.
async fn fan_in_suite(b: &dyn Backend) {
    use super::{FanIn, JobStatus, NewJob};
    let counting = |key: &str, now: bool| FanIn {
        key: key.into(),
        wake_pool: "wake".into(),
        wake: NewJob {
            idempotency_key: Some(key.into()),
            ..NewJob::new(json!({"execution": "parent"}))
        },
        wake_now: now,
        next: None,
    };
    let result = |fan_in: Option<FanIn>| StoredResult {
        counts_toward: fan_in.map(Box::new),
        fence: None,
        status: ExecutionStatus::Done,
        value: json!(1),
        written_ms: 1,
    };
    async fn wakes(b: &dyn Backend) -> Vec<super::Job> {
        b.jobs("wake", None, 10).await.unwrap()
    }
    let kids = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
    // k0 ends before the counter opens: it is counted by the opening.
    b.write_result("k0", result(Some(counting("p/1", false))))
        .await
        .unwrap();
    assert!(wakes(b).await.is_empty(), "no counter yet: nothing to wake");
    assert_eq!(b.open_fan_in("p/1", kids(3), None).await.unwrap(), 2);
    // Opening again changes nothing (a parent that parks a second time).
    assert_eq!(b.open_fan_in("p/1", kids(3), None).await.unwrap(), 2);
    b.write_result("k1", result(Some(counting("p/1", false))))
        .await
        .unwrap();
    // A result written again (a child run twice) counts nothing.
    b.write_result("k1", result(Some(counting("p/1", false))))
        .await
        .unwrap();
    assert_eq!(b.open_fan_in("p/1", kids(3), None).await.unwrap(), 1);
    assert!(wakes(b).await.is_empty());
    b.write_result("k2", result(Some(counting("p/1", false))))
        .await
        .unwrap();
    let woken = wakes(b).await;
    assert_eq!(woken.len(), 1, "{woken:?}");
    assert_eq!(
        (woken[0].status, &woken[0].payload),
        (JobStatus::Pending, &json!({"execution": "parent"}))
    );
    assert_eq!(b.open_fan_in("p/1", kids(3), None).await.unwrap(), 0);
    // A child that decides (mode: any) wakes at once, once per key.
    assert_eq!(
        b.open_fan_in("p/2", vec!["a0".into(), "a1".into()], None)
            .await
            .unwrap(),
        2
    );
    b.write_result("a0", result(Some(counting("p/2", true))))
        .await
        .unwrap();
    b.write_result("a1", result(Some(counting("p/2", true))))
        .await
        .unwrap();
    assert_eq!(wakes(b).await.len(), 2, "one wake-up per fan-in key");
    // A child's first result pushes the next child's job (max_concurrency),
    // counter or not; written again, it pushes nothing more.
    let chained = || FanIn {
        next: Some(NewJob {
            idempotency_key: Some("n1".into()),
            ..NewJob::new(json!({"execution": "n1"}))
        }),
        ..counting("p/3", false)
    };
    b.write_result("n0", result(Some(chained()))).await.unwrap();
    b.write_result("n0", result(Some(chained()))).await.unwrap();
    let next: Vec<_> = wakes(b)
        .await
        .into_iter()
        .filter(|j| j.payload == json!({"execution": "n1"}))
        .collect();
    assert_eq!(next.len(), 1, "{next:?}");
    // Opening is fenced like a checkpoint.
    let stale = super::Fence {
        root: "nobody".into(),
        token: 1,
    };
    let refused = b
        .open_fan_in("p/3", kids(1), Some(stale))
        .await
        .unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Conflict, "{refused}");
}

async fn state_suite(b: Arc<dyn Backend>) {
    use std::collections::BTreeMap;
    assert!(b.state("e").await.unwrap().is_empty());
    let ok = |r: BackendResult<Result<StateAnswer, StateConflict>>| r.unwrap().unwrap();
    // Concurrent increments: none is lost.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                b.state_apply("e", "n", StateOp::Increment(1))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.state_get("e", "n").await.unwrap(), Some(json!(200)));
    assert_eq!(
        ok(b.state_apply("e", "n", StateOp::Increment(-201)).await),
        StateAnswer::Count(-1)
    );
    // A value that does not allow the operation: refused, unchanged.
    ok(b.state_apply("e", "t", StateOp::Set(json!("text"))).await);
    let refused = b
        .state_apply("e", "t", StateOp::Increment(1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.0.contains("not an integer"), "{refused}");
    assert!(
        b.state_apply("e", "t", StateOp::Append(json!(1)))
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(b.state_get("e", "t").await.unwrap(), Some(json!("text")));
    // Lists and sets.
    assert_eq!(
        ok(b.state_apply("e", "l", StateOp::Append(json!(1))).await),
        StateAnswer::Length(1)
    );
    assert_eq!(
        ok(b.state_apply("e", "l", StateOp::Append(json!(1))).await),
        StateAnswer::Length(2)
    );
    assert_eq!(
        ok(b.state_apply("e", "s", StateOp::Add(json!("a"))).await),
        StateAnswer::Added(true)
    );
    assert_eq!(
        ok(b.state_apply("e", "s", StateOp::Add(json!("a"))).await),
        StateAnswer::Added(false)
    );
    assert_eq!(b.state_get("e", "s").await.unwrap(), Some(json!(["a"])));
    // Compare-and-swap creates, refuses with the value found, deletes.
    let cas =
        |expected: Option<Value>, new: Option<Value>| StateOp::CompareAndSwap { expected, new };
    assert_eq!(
        ok(b.state_apply("e", "k", cas(None, Some(json!(1)))).await),
        StateAnswer::Swapped {
            swapped: true,
            current: None
        }
    );
    assert_eq!(
        ok(b.state_apply("e", "k", cas(None, Some(json!(2)))).await),
        StateAnswer::Swapped {
            swapped: false,
            current: Some(json!(1))
        }
    );
    ok(b.state_apply("e", "k", cas(Some(json!(1)), None)).await);
    assert_eq!(b.state_get("e", "k").await.unwrap(), None);
    // Other executions are separate; replace swaps the whole state.
    assert!(b.state("other").await.unwrap().is_empty());
    let all = b.state("e").await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["l", "n", "s", "t"]);
    b.state_replace("e", BTreeMap::from([("only".to_string(), json!({"a": 1}))]))
        .await
        .unwrap();
    assert_eq!(b.state("e").await.unwrap().len(), 1);
    ok(b.state_apply("e", "only", StateOp::Delete).await);
    assert!(b.state("e").await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_backend_conforms() {
    suite(&MemoryBackend::new()).await;
    list_and_count_suite(&MemoryBackend::new()).await;
    ownership_suite(&MemoryBackend::new()).await;
    definitions_suite(&MemoryBackend::new()).await;
    signal_consumption_suite(&MemoryBackend::new()).await;
    history_suite(&MemoryBackend::new()).await;
    fence_suite(&MemoryBackend::new()).await;
    fan_in_suite(&MemoryBackend::new()).await;
    state_suite(Arc::new(MemoryBackend::new())).await;
}

#[tokio::test]
async fn sqlite_backend_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowhost.db");
    {
        let b = SqliteBackend::open(&path, Durability::Full).unwrap();
        suite(&b).await;
        ownership_suite(&b).await;
        definitions_suite(&b).await;
        signal_consumption_suite(&b).await;
        history_suite(&b).await;
        fence_suite(&b).await;
        fan_in_suite(&b).await;
    }
    list_and_count_suite(
        &SqliteBackend::open(&dir.path().join("counts.db"), Durability::Normal).unwrap(),
    )
    .await;
    state_suite(Arc::new(
        SqliteBackend::open(&dir.path().join("state.db"), Durability::Normal).unwrap(),
    ))
    .await;
    // A second open sees the same data and does not re-run migrations.
    let b = SqliteBackend::open(&path, Durability::Normal).unwrap();
    assert_eq!(b.load("a").await.unwrap().unwrap().step, 7);
    assert!(b.read_result("a").await.unwrap().is_some());
    assert_eq!(
        b.get_definition("d1").await.unwrap().as_deref(),
        Some("first")
    );
}

/// An id prefix matching few executions is read by the primary key; one
/// matching many, newest first on the creation index: the same rows either way.
#[tokio::test]
async fn sqlite_lists_by_id_prefix_on_the_plan_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let b = &SqliteBackend::open(&dir.path().join("f.db"), Durability::Normal).unwrap();
    for n in 0..2100u64 {
        let status = if n % 2 == 0 { "done" } else { "failed" };
        b.save_deferred(checkpoint(&format!("p{n:05}"), None, status, 1000 + n))
            .await
            .unwrap();
    }
    b.save(checkpoint("q1", None, "done", 5000)).await.unwrap();
    let filter = |prefix: &str| ListFilter {
        id_prefix: Some(prefix.into()),
        status: Some(ExecutionStatus::Failed),
        roots_only: true,
        limit: Some(3),
        ..Default::default()
    };
    let ids = |f: ListFilter| async move {
        b.list(&f)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    // Many match "p": the creation index, newest first.
    assert_eq!(ids(filter("p")).await, ["p02099", "p02097", "p02095"]);
    let plan = b.explain_list(&filter("p")).unwrap().join("; ");
    assert!(!plan.contains("autoindex"), "{plan}");
    // Few match "p001": the key's range, then sorted.
    assert_eq!(ids(filter("p001")).await, ["p00199", "p00197", "p00195"]);
    let plan = b.explain_list(&filter("p001")).unwrap().join("; ");
    assert!(plan.contains("autoindex"), "{plan}");
}

/// A store from before execution counts were kept gets them counted once
/// when it is opened by this version.
#[tokio::test]
async fn sqlite_counts_the_executions_of_an_older_store_when_it_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowhost.db");
    {
        let b = SqliteBackend::open(&path, Durability::Normal).unwrap();
        b.save(checkpoint("a", None, "done", 1)).await.unwrap();
        b.save(checkpoint("b", None, "done", 2)).await.unwrap();
        b.save(checkpoint("c", Some("a"), "failed", 3))
            .await
            .unwrap();
    }
    // Back to the schema before the counts (their migration is the last).
    let conn = rusqlite::Connection::open(&path).unwrap();
    let before: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(&format!(
        "DROP TABLE execution_counts; DROP TRIGGER execution_counts_insert;
         DROP TRIGGER execution_counts_delete; DROP TRIGGER execution_counts_update;
         PRAGMA user_version = {}",
        before - 1
    ))
    .unwrap();
    drop(conn);
    let b = SqliteBackend::open(&path, Durability::Normal).unwrap();
    let mut counts: Vec<_> = b
        .counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.root, c.status.as_str(), c.count))
        .collect();
    counts.sort();
    assert_eq!(counts, [(false, "failed", 1), (true, "done", 2)]);
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
    assert_eq!(e.kind, StoreErrorKind::Incompatible);

    // Reading commands never create a database; a directory is named as one.
    let typo = dir.path().join("typo.db");
    let e = SqliteBackend::open_existing(&typo, Durability::Full)
        .err()
        .unwrap();
    assert!(e.to_string().contains("no such database"), "{e}");
    assert_eq!(e.kind, StoreErrorKind::NotFound);
    assert!(!typo.exists(), "a read created a database");
    let e = SqliteBackend::open(dir.path(), Durability::Full)
        .err()
        .unwrap();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[tokio::test]
async fn sqlite_errors_say_what_kind_they_are() {
    let dir = tempfile::tempdir().unwrap();
    // Not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let e = SqliteBackend::open(&junk, Durability::Full).err().unwrap();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");

    // A full database (its page limit stands in for a full disk): the write
    // fails as `Full`, what was stored before stays, and writing works again
    // once there is room.
    let path = dir.path().join("full.db");
    let b = SqliteBackend::open(&path, Durability::Full).unwrap();
    b.save(checkpoint("kept", None, "running", 1))
        .await
        .unwrap();
    let pages: i64 = b
        .exec(|c| {
            let n: i64 = c
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(super::sqlite_pools::fault)?;
            c.execute_batch(&format!("PRAGMA max_page_count = {n}"))
                .map_err(super::sqlite_pools::fault)?;
            Ok(json!(n))
        })
        .await
        .unwrap();
    let mut big = checkpoint("big", None, "running", 2);
    big.record = "x".repeat(1 << 20);
    let e = b.save(big.clone()).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Full, "{e}");
    assert!(e.to_string().contains("free space"), "{e}");
    assert_eq!(b.load("kept").await.unwrap().unwrap().id, "kept");
    assert_eq!(b.load("big").await.unwrap(), None);
    let _: Value = b
        .exec(move |c| {
            c.execute_batch(&format!("PRAGMA max_page_count = {}", pages * 1000))
                .map_err(super::sqlite_pools::fault)?;
            Ok(Value::Null)
        })
        .await
        .unwrap();
    b.save(big).await.unwrap();
    assert_eq!(b.load("big").await.unwrap().unwrap().record.len(), 1 << 20);
}

/// A stored checkpoint or result changed on disk after it was written (a
/// flipped bit that still reads as text) is refused as `corrupt`, naming
/// the execution — never read as another value. Rows without a digest
/// (written before digests were kept) still read.
#[tokio::test]
async fn sqlite_refuses_rows_that_changed_since_they_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBackend::open(&dir.path().join("d.db"), Durability::Normal).unwrap();
    let mut c = checkpoint("x", None, "running", 1);
    c.record = r#"{"id":"x","context":{"n":13}}"#.into();
    b.save(c).await.unwrap();
    b.save(Checkpoint {
        status: ExecutionStatus::Done,
        result: Some(StoredResult {
            fence: None,
            status: ExecutionStatus::Done,
            value: json!({"n": 13}),
            written_ms: 5,
            counts_toward: None,
        }),
        ..checkpoint("y", None, "running", 1)
    })
    .await
    .unwrap();
    assert!(b.load("x").await.unwrap().is_some());
    assert_eq!(
        b.read_result("y").await.unwrap().unwrap().value,
        json!({"n": 13})
    );
    let tamper = |sql: &'static str| {
        b.exec::<Value>(move |c| {
            c.execute_batch(sql).map_err(super::sqlite_pools::fault)?;
            Ok(Value::Null)
        })
    };
    tamper(
        r#"UPDATE executions SET record = replace(record, '13', '93') WHERE id = 'x';
               UPDATE results SET value = replace(value, '13', '93') WHERE id = 'y';"#,
    )
    .await
    .unwrap();
    let e = b.load("x").await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(
        e.message.contains("execution x") && e.message.contains("checksum"),
        "{e}"
    );
    let e = b.list(&ListFilter::default()).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    let e = b.read_result("y").await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(e.message.contains("execution y"), "{e}");
    // A row from before digests: read as it is.
    tamper("UPDATE executions SET digest = NULL WHERE id = 'x'")
        .await
        .unwrap();
    assert!(b.load("x").await.unwrap().unwrap().record.contains("93"));
}

#[test]
fn result_uris() {
    assert_eq!(parse_result_uri("flowhost://abc/result").unwrap(), "abc");
    assert_eq!(parse_result_uri("flatagents://abc/result").unwrap(), "abc");
    assert_eq!(parse_result_uri("abc").unwrap(), "abc");
    assert!(parse_result_uri("http://abc/result").is_err());
    assert!(parse_result_uri("flowhost://a/b/result").is_err());
    // Bare ids and ids in addresses are checked like ids anywhere else.
    for bad in [
        "",
        "a/b",
        "a b",
        "a\nb",
        "flowhost://a%20b/result",
        &"x".repeat(201),
    ] {
        let err = parse_result_uri(bad).unwrap_err();
        assert!(!err.contains('\n'), "{err}");
    }
    assert_eq!(parse_result_uri("p:3:L1").unwrap(), "p:3:L1");
}

async fn pools_suite(b: &dyn Backend) {
    use JobStatus::{Done as DONE, Pending as PENDING, Poisoned as POISONED};
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
    // Three pending, one of them delayed: two are due.
    let s = b.stats("p").await.unwrap();
    assert_eq!((s.pending, s.due), (3, 2));
    assert!(s.oldest_due_ms.is_some());
    let backlog = b.backlog("p").await.unwrap();
    assert_eq!(
        (
            backlog.pending,
            backlog.claimed,
            backlog.due,
            backlog.oldest_due_ms
        ),
        (3, 0, 2, s.oldest_due_ms)
    );

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
    assert_eq!(
        (s.due, s.oldest_due_ms),
        (0, None),
        "the delayed job is not due"
    );

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
        (stored.status, stored.result),
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
        b.fail(f, c1[0].fence, "boom 1", Some(no_wait))
            .await
            .unwrap(),
        FailOutcome::Retried
    );
    assert_eq!(
        b.fail(f, c1[0].fence, "late", Some(no_wait)).await.unwrap(),
        FailOutcome::Rejected
    );
    let c2 = b.claim("p", "w3", 1, 60_000).await.unwrap();
    assert_eq!((c2[0].id, c2[0].error.as_deref()), (f, Some("boom 1")));
    assert_eq!(
        b.fail(f, c2[0].fence, "boom 2", Some(no_wait))
            .await
            .unwrap(),
        FailOutcome::Poisoned
    );
    let poisoned = b.job(f).await.unwrap().unwrap();
    // A failure not worth retrying poisons at once, retries left or not.
    let (g, _) = b.push("p", NewJob::new(json!({"n": 5}))).await.unwrap();
    let c3 = b.claim("p", "w3", 1, 60_000).await.unwrap();
    assert_eq!(c3[0].id, g);
    assert_eq!(
        b.fail(g, c3[0].fence, "bad input\0 from a plugin", None)
            .await
            .unwrap(),
        FailOutcome::Poisoned
    );
    let error = b.job(g).await.unwrap().unwrap().error.unwrap_or_default();
    assert!(error.starts_with("bad input"), "{error:?}");
    assert_eq!(b.requeue("p", &[g]).await.unwrap(), 1);
    let c4 = b.claim("p", "w3", 1, 60_000).await.unwrap();
    assert!(b.complete(g, c4[0].fence, json!(1)).await.unwrap());
    assert_eq!(
        (poisoned.status, poisoned.error.as_deref()),
        (POISONED, Some("boom 2"))
    );
    assert_eq!(b.jobs("p", Some(POISONED), 10).await.unwrap().len(), 1);
    assert_eq!(b.requeue("p", &[]).await.unwrap(), 1);
    let back = b.job(f).await.unwrap().unwrap();
    assert_eq!((back.status, back.attempts), (PENDING, 0));

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
        status: WorkerStatus::Active,
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

/// The PostgreSQL store: every suite, each on a fresh database of one
/// throwaway cluster (fsync off: these test behaviour, not power loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_conforms() {
    let Some(cluster) = pgcluster::for_test("postgres_backend_conforms", &["fsync=off"]) else {
        return;
    };
    let open = |name: &str| {
        let url = cluster.database(name).unwrap();
        async move { PostgresBackend::open(&url).await.unwrap() }
    };
    {
        let b = open("suite").await;
        suite(&b).await;
        ownership_suite(&b).await;
        definitions_suite(&b).await;
        signal_consumption_suite(&b).await;
        history_suite(&b).await;
        fence_suite(&b).await;
        fan_in_suite(&b).await;
    }
    state_suite(Arc::new(open("state").await)).await;
    list_and_count_suite(&open("counts").await).await;
    pools_suite(&open("pools").await).await;
    let clock = Arc::new(ManualClock::new(1_000_000));
    clock_suite(&open("clock").await.with_clock(clock.clone()), &clock).await;
    let clock = Arc::new(ManualClock::new(1_000_000));
    retry_storm_suite(&open("storm").await.with_clock(clock.clone()), &clock).await;
    // Another process (host) opening the same database sees the same data
    // and does not migrate again.
    let b = PostgresBackend::open_existing(&cluster.url("suite"))
        .await
        .unwrap();
    assert_eq!(b.load("a").await.unwrap().unwrap().step, 7);
    assert!(b.read_result("a").await.unwrap().is_some());
    assert_eq!(
        b.get_definition("d1").await.unwrap().as_deref(),
        Some("first")
    );
    assert_eq!(
        cluster
            .sql(
                "suite",
                "SELECT count(*) = count(DISTINCT version) FROM flowhost_schema"
            )
            .unwrap(),
        "t"
    );
}

/// Bad URLs, credentials and databases are refused with an error that says
/// which, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_bad_urls_credentials_and_a_newer_schema() {
    let Some(cluster) = pgcluster::for_test(
        "postgres_refuses_bad_urls_credentials_and_a_newer_schema",
        &["fsync=off"],
    ) else {
        return;
    };
    let refused = |url: String| async move {
        match PostgresBackend::open(&url).await {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e,
        }
    };
    let e = refused("postgres://".into()).await;
    assert_eq!(e.kind, StoreErrorKind::Incompatible, "{e}");
    assert!(e.message.contains("names no host"), "{e}");
    let e = refused("postgres://u@h:notaport/db".into()).await;
    assert!(e.message.contains("not a usable PostgreSQL URL"), "{e}");
    // Nobody listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = refused(format!("postgres://u:p@127.0.0.1:{closed}/db")).await;
    assert!(e.message.contains("cannot reach the database"), "{e}");
    let port = cluster.port();
    let e = refused(format!(
        "postgres://{}:wrong-secret@127.0.0.1:{port}/postgres",
        pgcluster::USER
    ))
    .await;
    assert!(e.message.contains("password authentication failed"), "{e}");
    assert!(
        !e.message.contains("wrong-secret"),
        "the password is not shown: {e}"
    );
    let e = refused(cluster.url("nosuchdb")).await;
    assert_eq!(e.kind, StoreErrorKind::NotFound, "{e}");
    assert!(
        e.message.contains("nosuchdb") && e.message.contains("createdb"),
        "{e}"
    );

    // A database with no flowhost tables is not created by a reader.
    let empty = cluster.database("empty").unwrap();
    let e = PostgresBackend::open_existing(&empty).await.err().unwrap();
    assert_eq!(e.kind, StoreErrorKind::NotFound, "{e}");
    assert_eq!(
        cluster
            .sql(
                "empty",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .unwrap(),
        "0"
    );

    // A key PostgreSQL cannot store is refused, saying why.
    let b = PostgresBackend::open(&cluster.database("nul").unwrap())
        .await
        .unwrap();
    let e = b
        .state_apply("e", "k\0", StateOp::Set(json!(1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Incompatible, "{e}");
    assert!(e.message.contains("NUL"), "{e}");
    assert!(b.state("e").await.unwrap().is_empty());

    // A schema from a newer flowhost.
    let url = cluster.database("future").unwrap();
    drop(PostgresBackend::open(&url).await.unwrap());
    cluster
        .sql(
            "future",
            "INSERT INTO flowhost_schema (version) VALUES (99)",
        )
        .unwrap();
    let e = refused(url.clone()).await;
    assert_eq!(e.kind, StoreErrorKind::Incompatible, "{e}");
    assert!(e.message.contains("schema version 99"), "{e}");
    assert_eq!(
        cluster
            .sql("future", "SELECT max(version) FROM flowhost_schema")
            .unwrap(),
        "99"
    );
}

/// A database that goes away: a write that waits fails once the writer has
/// tried to reconnect for its while, with an error that says so; a deferred
/// write made meanwhile is kept and stored, in order, when the database is
/// back; and the same store goes on (no restart of the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_deferred_writes_through_an_outage_and_fails_waiting_ones() {
    let Some(cluster) = pgcluster::for_test(
        "postgres_keeps_deferred_writes_through_an_outage_and_fails_waiting_ones",
        &["fsync=off"],
    ) else {
        return;
    };
    let url = cluster.database("outage").unwrap();
    let b = PostgresBackend::open_with(&url, true, std::time::Duration::from_millis(300))
        .await
        .unwrap();
    b.save(checkpoint("before", None, "running", 1))
        .await
        .unwrap();
    cluster.crash().unwrap();
    b.save_deferred(checkpoint("deferred", None, "running", 2))
        .await
        .unwrap();
    let e = b
        .save(checkpoint("waited", None, "running", 3))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Io, "{e}");
    assert!(e.message.contains("cannot reach the database"), "{e}");
    cluster.start_again().unwrap();
    b.save(checkpoint("after", None, "running", 4))
        .await
        .unwrap();
    for id in ["before", "deferred", "after"] {
        assert!(b.load(id).await.unwrap().is_some(), "{id} is stored");
    }
    assert!(b.load("waited").await.unwrap().is_none());
}
