//! The `flowhost plugin` commands as a user runs them: output, messages,
//! exit codes, golden tests, inspect, list, manifests.

use flowhost::plugin::ErrorKind;
use flowhost_e2e::{plugin, plugin_source, plugins_dir, run, shared_cache, stderr, stdout};
use serde_json::{Value, json};
use std::path::Path;

fn code(kind: ErrorKind) -> Option<i32> {
    Some(kind.exit_code() as i32)
}

#[test]
fn call_prints_the_output_as_json() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &[
            "plugin",
            "call",
            "text",
            "--input",
            r#"{"task": "uppercase", "text": "hi"}"#,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        out,
        json!({"task": "uppercase", "result": "HI", "content": "HI"})
    );
}

#[test]
fn every_error_kind_has_its_message_and_exit_code() {
    let cache = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], ErrorKind)] = &[
        (
            &[
                "adversary",
                "--input",
                r#"{"attack": "loop"}"#,
                "--timeout",
                "100ms",
            ],
            ErrorKind::Timeout,
        ),
        (
            &[
                "adversary",
                "--input",
                r#"{"attack": "memory"}"#,
                "--memory",
                "16",
            ],
            ErrorKind::OutOfMemory,
        ),
        (
            &["adversary", "--input", r#"{"attack": "panic"}"#],
            ErrorKind::Trap,
        ),
        (
            &["adversary", "--input", r#"{"attack": "invalid_json"}"#],
            ErrorKind::InvalidOutput,
        ),
        (
            &[
                "adversary",
                "--input",
                r#"{"attack": "guest_error", "kind": "invalid_input"}"#,
            ],
            ErrorKind::InvalidInput,
        ),
        (
            &[
                "adversary",
                "--input",
                r#"{"attack": "guest_error", "kind": "retryable"}"#,
            ],
            ErrorKind::Retryable,
        ),
        (
            &[
                "adversary",
                "--input",
                r#"{"attack": "guest_error", "kind": "fatal"}"#,
            ],
            ErrorKind::Fatal,
        ),
        (&["future-contract"], ErrorKind::Link),
        (&["missing-import"], ErrorKind::Link),
        (&["no-such-plugin"], ErrorKind::Load),
    ];
    for (args, kind) in cases {
        let mut full = vec!["plugin", "call"];
        full.extend_from_slice(args);
        let o = run(cache.path(), &full);
        assert_eq!(o.status.code(), code(*kind), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("error[{kind}]")),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty(), "{args:?} printed output on failure");
    }
}

#[test]
fn bad_flags_are_usage_errors_that_name_the_flag() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &["plugin", "call", "echo", "--input", "{not json"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--input from the command line is not valid JSON"),
        "{}",
        stderr(&o)
    );

    let o = run(
        cache.path(),
        &["plugin", "call", "echo", "--dir", "a:b:c:d"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let o = run(
        cache.path(),
        &["plugin", "call", "echo", "--timeout", "soon"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a duration"), "{}", stderr(&o));

    let o = run(cache.path(), &["plugin", "call", "ecoh"]);
    assert_eq!(o.status.code(), code(ErrorKind::Load));
    assert!(stderr(&o).contains("did you mean `echo`"), "{}", stderr(&o));
}

#[test]
fn golden_cases_pass_for_every_example_plugin() {
    let cache = tempfile::tempdir().unwrap();
    let dirs = ["echo", "text", "audit", "router", "testing/adversary"].map(plugin_source);
    let mut args = vec!["plugin".to_string(), "test".to_string()];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(cache.path(), &args);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with("passed, 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn golden_failures_are_reported_per_case_with_a_failing_exit() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("echo.json");
    std::fs::write(
        &cases,
        r#"{"plugin": "echo", "cases": [
            {"name": "right", "input": [1], "expect": {"output": [1]}},
            {"name": "wrong", "input": [1], "expect": {"output": [2]}},
            {"name": "wrong kind", "input": {"echo_delay": -1}, "expect": {"error": "timeout"}}
        ]}"#,
    )
    .unwrap();
    let o = run(cache.path(), &["plugin", "test", cases.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("ok    right"), "{out}");
    assert!(
        out.contains("FAIL  wrong") && out.contains("expected: [2]"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  wrong kind") && out.contains("invalid_input"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("1 passed, 2 failed"), "{out}");
}

#[test]
fn inspect_shows_world_imports_exports_and_info() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(cache.path(), &["plugin", "inspect", "echo", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["world"], "processor");
    assert_eq!(out["info"]["name"], "echo");
    assert_eq!(
        out["size"],
        std::fs::metadata(plugin("echo")).unwrap().len()
    );
    let imports = out["imports"].as_array().unwrap();
    assert!(
        imports.iter().any(|i| i == "flowhost:plugin/host@0.1.0"),
        "{imports:?}"
    );
    assert_eq!(out["exports"], json!(["info", "process"]));

    let o = run(cache.path(), &["plugin", "inspect", "missing-import"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("links:    NO") && stdout(&o).contains("secret-service"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn list_shows_every_plugin_and_why_one_is_broken() {
    // Lists the Python and JavaScript plugins too: share their compiled code.
    let o = run(&shared_cache(), &["plugin", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let row = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} not listed"))
    };
    assert_eq!(
        (row("echo")["world"].clone(), row("echo")["status"].clone()),
        (json!("processor"), json!("ok"))
    );
    assert_eq!(row("audit")["world"], "hook");
    assert_eq!(row("router")["world"], "step");
    assert!(
        row("future-contract")["status"]
            .as_str()
            .unwrap()
            .contains("[link]")
    );
    for polyglot in ["sentiment", "reshape", "jsonstat"] {
        assert_eq!(row(polyglot)["status"], "ok", "{polyglot}");
    }
}

/// A private plugins folder holding copies of built plugins and manifests.
fn folder_with(plugins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in plugins {
        std::fs::copy(
            plugins_dir().join(format!("{p}.wasm")),
            dir.path().join(format!("{p}.wasm")),
        )
        .unwrap();
    }
    dir
}

fn call_in(cache: &Path, folder: &Path, name: &str, input: &str) -> std::process::Output {
    let folder = folder.to_str().unwrap();
    run(
        cache,
        &[
            "plugin",
            "call",
            name,
            "--plugins",
            folder,
            "--input",
            input,
        ],
    )
}

#[test]
fn manifests_set_config_and_limits_and_pin_the_file() {
    let cache = tempfile::tempdir().unwrap();
    let folder = folder_with(&["text", "adversary", "echo"]);
    std::fs::write(
        folder.path().join("text.toml"),
        "[config]\nmax_sentences = 2\n",
    )
    .unwrap();
    let o = call_in(
        cache.path(),
        folder.path(),
        "text",
        r#"{"task": "summarize", "text": "A. B. C."}"#,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()["result"],
        "A. B."
    );

    std::fs::write(
        folder.path().join("adversary.toml"),
        "[limits]\ntimeout_ms = 50\n",
    )
    .unwrap();
    let o = call_in(
        cache.path(),
        folder.path(),
        "adversary",
        r#"{"attack": "loop"}"#,
    );
    assert_eq!(o.status.code(), code(ErrorKind::Timeout), "{}", stderr(&o));
    assert!(stderr(&o).contains("50 ms"), "{}", stderr(&o));

    std::fs::write(
        folder.path().join("echo.toml"),
        format!("sha256 = \"{}\"\n", "ab".repeat(32)),
    )
    .unwrap();
    let o = call_in(cache.path(), folder.path(), "echo", "{}");
    assert_eq!(o.status.code(), code(ErrorKind::Load));
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));

    std::fs::write(
        folder.path().join("echo.toml"),
        "reuse = 1\n[limits]\nmemroy_mb = 3\n",
    )
    .unwrap();
    let o = call_in(cache.path(), folder.path(), "echo", "{}");
    assert_eq!(o.status.code(), code(ErrorKind::Load));
    assert!(
        stderr(&o).contains("echo.toml") && stderr(&o).contains("memroy_mb"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn hooks_and_steps_can_be_called_from_the_cli() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &[
            "plugin",
            "call",
            "audit",
            "--event",
            r#"{"state_enter": "a"}"#,
            "--input",
            "{}",
            "--config",
            r#"{}"#,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        out,
        json!({"context": {"audit": ["enter:a"]}, "redirect": null})
    );

    let o = run(
        cache.path(),
        &["plugin", "call", "router", "--input", r#"{"next": "b"}"#],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["next"], "b");
}
