//! The sandbox, through the CLI: no files without a grant, read-only grants
//! refuse writes, no host environment.

use flowhost::plugin::ErrorKind;
use flowhost_e2e::{flowhost, run, stderr, stdout};
use serde_json::Value;

fn attack(cache: &std::path::Path, input: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["plugin", "call", "adversary", "--input", input];
    args.extend_from_slice(extra);
    run(cache, &args)
}

#[test]
fn files_need_a_grant_and_read_only_grants_refuse_writes() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), "granted content").unwrap();
    let ro = format!("{}:/data", data.path().display());
    let rw = format!("{}:/data:rw", data.path().display());
    let read = r#"{"attack": "read_file", "path": "/data/in.txt"}"#;
    let write = r#"{"attack": "write_file", "path": "/data/out.txt", "content": "written"}"#;

    let o = attack(cache.path(), read, &[]);
    assert_eq!(
        o.status.code(),
        Some(ErrorKind::Fatal.exit_code() as i32),
        "{}",
        stderr(&o)
    );

    let o = attack(cache.path(), read, &["--dir", &ro]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["content"], "granted content");

    let o = attack(cache.path(), write, &["--dir", &ro]);
    assert_eq!(
        o.status.code(),
        Some(ErrorKind::Fatal.exit_code() as i32),
        "{}",
        stderr(&o)
    );
    assert!(
        !data.path().join("out.txt").exists(),
        "a read-only grant let a write through"
    );

    let o = attack(cache.path(), write, &["--dir", &rw]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(data.path().join("out.txt")).unwrap(),
        "written"
    );
}

#[test]
fn a_grant_does_not_reach_outside_its_directory() {
    let cache = tempfile::tempdir().unwrap();
    // outer/secret.txt exists; only outer/data is granted.
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.txt"), "outside the grant").unwrap();
    std::fs::create_dir(outer.path().join("data")).unwrap();
    std::fs::write(outer.path().join("data").join("in.txt"), "inside").unwrap();
    let ro = format!("{}:/data", outer.path().join("data").display());

    let inside = attack(
        cache.path(),
        r#"{"attack": "read_file", "path": "/data/in.txt"}"#,
        &["--dir", &ro],
    );
    assert!(
        inside.status.success(),
        "the grant itself must work: {}",
        stderr(&inside)
    );

    let escape = attack(
        cache.path(),
        r#"{"attack": "read_file", "path": "/data/../secret.txt"}"#,
        &["--dir", &ro],
    );
    assert_eq!(
        escape.status.code(),
        Some(ErrorKind::Fatal.exit_code() as i32),
        "{}",
        stdout(&escape)
    );
    assert!(!stdout(&escape).contains("outside the grant"));
}

#[test]
fn the_plugin_sees_no_host_environment() {
    let cache = tempfile::tempdir().unwrap();
    let o = flowhost(cache.path())
        .env("FLOWHOST_TEST_SECRET", "hunter2")
        .args([
            "plugin",
            "call",
            "adversary",
            "--input",
            r#"{"attack": "env"}"#,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["vars"], serde_json::json!({}));
    assert_eq!(out["args"], serde_json::json!([]));
    assert!(!stdout(&o).contains("hunter2"));
}
