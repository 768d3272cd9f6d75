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

#[test]
fn guest_paths_with_dotdot_or_granted_twice_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let read = r#"{"attack": "read_file", "path": "/data/in.txt"}"#;
    let dotdot = format!("{}:/data/../etc", a.path().display());
    let o = attack(cache.path(), read, &["--dir", &dotdot]);
    assert_eq!(o.status.code(), Some(ErrorKind::Load.exit_code() as i32));
    assert!(stderr(&o).contains("contains `..`"), "{}", stderr(&o));

    let one = format!("{}:/data", a.path().display());
    let two = format!("{}:/data/", b.path().display());
    let o = attack(cache.path(), read, &["--dir", &one, "--dir", &two]);
    assert_eq!(o.status.code(), Some(ErrorKind::Load.exit_code() as i32));
    assert!(stderr(&o).contains("granted twice"), "{}", stderr(&o));
}

/// A manifest next to a copy of the plugin may not lend `/etc` or a folder
/// outside the plugins folder (the repro of the escape).
#[test]
fn manifest_grants_cannot_leave_the_plugins_folder() {
    let cache = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("plugins");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::create_dir_all(root.path().join("outside")).unwrap();
    std::fs::write(root.path().join("outside").join("in.txt"), "secret").unwrap();
    std::fs::copy(
        flowhost_e2e::plugin("adversary"),
        folder.join("adversary.wasm"),
    )
    .unwrap();
    let read = r#"{"attack": "read_file", "path": "/data/in.txt"}"#;
    for host in ["../outside", "/etc"] {
        std::fs::write(
            folder.join("adversary.toml"),
            format!("[[dirs]]\nhost = \"{host}\"\nguest = \"/data\"\n"),
        )
        .unwrap();
        let o = flowhost(cache.path())
            .args(["plugin", "call", "adversary", "--input", read])
            .env("FLOWHOST_PLUGINS", &folder)
            .env_remove("FLOWHOST_ALLOW_DIRS")
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(ErrorKind::Load.exit_code() as i32),
            "{host}: {}",
            stderr(&o)
        );
        assert!(!stdout(&o).contains("secret"));
    }
    // The operator may allow an absolute directory explicitly.
    let outside = root.path().join("outside");
    std::fs::write(
        folder.join("adversary.toml"),
        format!(
            "[[dirs]]\nhost = \"{}\"\nguest = \"/data\"\n",
            outside.display()
        ),
    )
    .unwrap();
    let o = flowhost(cache.path())
        .args(["plugin", "call", "adversary", "--input", read])
        .env("FLOWHOST_PLUGINS", &folder)
        .env("FLOWHOST_ALLOW_DIRS", &outside)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("secret"));
}

/// Escape sequences and line breaks in a guest's error message reach the
/// terminal escaped (the repro: a plugin clearing the screen and forging an
/// `error:` line).
#[test]
fn plugin_text_cannot_steer_the_terminal() {
    let cache = tempfile::tempdir().unwrap();
    let input = r#"{"attack":"guest_error","kind":"fatal","message":"x\u001b[2J\r\nerror: fake"}"#;
    let o = run(
        cache.path(),
        &["plugin", "call", "adversary", "--input", input],
    );
    assert_eq!(o.status.code(), Some(ErrorKind::Fatal.exit_code() as i32));
    let err = stderr(&o);
    assert!(
        !err.contains('\u{1b}'),
        "raw ESC reached the terminal: {err:?}"
    );
    assert!(!err.contains('\r'), "{err:?}");
    assert_eq!(err.lines().count(), 1, "a plugin forged a line: {err:?}");
    assert!(err.contains(r"x\u{1b}[2J\r\nerror: fake"), "{err:?}");
}
