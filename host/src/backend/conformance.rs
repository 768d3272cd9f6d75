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
