//! Pinned definitions through the CLI: an execution runs the machine files
//! and plugins it started with, whatever happens to them on disk, unless
//! `resume --upgrade` says otherwise.

use flowhost_e2e::{plugins_dir, shared_cache, stderr};
use serde_json::{Value, json};
use std::path::Path;

const MAIN: &str = r#"spec: flatmachine
data:
  name: pinned
  plugins:
    tool: tool
  machines:
    sub: sub.yml
  states:
    start:
      type: initial
      plugin: tool
      input: {say: "{{ input.word }}"}
      output_to_context: {said: "{{ output.say }}"}
      transitions: [{to: ask}]
    ask:
      wait_for: go
      transitions: [{to: inner}]
    inner:
      machine: sub
      output_to_context: {sub: "{{ output.from }}"}
      transitions: [{to: done}]
    done:
      type: final
      output: {version: 1, said: "{{ context.said }}", sub: "{{ context.sub }}"}
"#;

const SUB: &str = r#"spec: flatmachine
data:
  name: sub
  states:
    only: {type: initial, transitions: [{to: end}]}
    end: {type: final, output: {from: "sub v1"}}
"#;

struct Setup {
    dir: tempfile::TempDir,
    cache: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        install(dir.path(), "echo");
        std::fs::write(dir.path().join("main.yml"), MAIN).unwrap();
        std::fs::write(dir.path().join("sub.yml"), SUB).unwrap();
        Setup {
            dir,
            cache: shared_cache(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--db".into(), self.path("f.db")]);
        if !matches!(args.first(), Some(&"status")) {
            all.extend(["--plugins".into(), self.path("plugins")]);
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        flowhost_e2e::run(&self.cache, &all)
    }

    /// Starts `main.yml`; it stops at `ask`, waiting for `go`.
    fn start(&self, word: &str) -> String {
        let input = json!({ "word": word }).to_string();
        let o = self.cli(&["run", &self.path("main.yml"), "--input", &input, "--json"]);
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        let waiting: Value = serde_json::from_slice(&o.stdout).unwrap();
        waiting["id"].as_str().unwrap().to_string()
    }
}

/// Puts the test plugin `from` into the folder as `tool.wasm`.
fn install(dir: &Path, from: &str) {
    std::fs::copy(
        plugins_dir().join(format!("{from}.wasm")),
        dir.join("plugins/tool.wasm"),
    )
    .unwrap();
}

#[test]
fn an_execution_runs_the_definition_it_started_with() {
    let s = Setup::new();
    let first = s.start("one");

    // Edited files change nothing for the execution that is under way...
    std::fs::write(
        s.dir.path().join("main.yml"),
        MAIN.replace("version: 1", "version: 2"),
    )
    .unwrap();
    std::fs::write(
        s.dir.path().join("sub.yml"),
        SUB.replace("sub v1", "sub v2"),
    )
    .unwrap();
    let status = s.cli(&["status", &first]);
    let view: Value = serde_json::from_slice(&status.stdout).unwrap();
    let pinned = view["definition"].as_str().unwrap().to_string();
    assert_eq!(pinned.len(), 64, "{view}");

    // ...while a new run pins the files as they are now.
    let second = s.start("two");
    let view: Value = serde_json::from_slice(&s.cli(&["status", &second]).stdout).unwrap();
    assert_ne!(view["definition"].as_str(), Some(pinned.as_str()));

    let o = s.cli(&["signal", &first, "go"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out, json!({"version": 1, "said": "one", "sub": "sub v1"}));

    // Deleting the files does not stop a resume either.
    std::fs::remove_file(s.dir.path().join("main.yml")).unwrap();
    std::fs::remove_file(s.dir.path().join("sub.yml")).unwrap();
    let o = s.cli(&["signal", &second, "go"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out, json!({"version": 2, "said": "two", "sub": "sub v2"}));
}

#[test]
fn a_changed_plugin_is_refused_unless_the_resume_upgrades() {
    let s = Setup::new();
    let id = s.start("one");
    // Another component under the same name.
    install(s.dir.path(), "reshape");
    let o = s.cli(&["signal", &id, "go"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("plugin `tool` changed since the execution started")
            && err.contains("resume --upgrade"),
        "{err}"
    );
    // The refusal left the execution as it was, and the signal stored.
    let view: Value = serde_json::from_slice(&s.cli(&["status", &id]).stdout).unwrap();
    assert_eq!(
        (view["status"].as_str(), view["state"].as_str()),
        (Some("waiting"), Some("ask"))
    );
    let before = view["definition"].clone();

    // --upgrade continues on the files and plugins as they are now.
    std::fs::write(
        s.dir.path().join("sub.yml"),
        SUB.replace("sub v1", "sub v2"),
    )
    .unwrap();
    let o = s.cli(&["resume", &id, "--upgrade"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out, json!({"version": 1, "said": "one", "sub": "sub v2"}));
    let view: Value = serde_json::from_slice(&s.cli(&["status", &id]).stdout).unwrap();
    assert_ne!(
        view["definition"], before,
        "the upgrade pins the new definition"
    );
}

#[test]
fn an_upgrade_needs_the_current_state_to_exist() {
    let s = Setup::new();
    let id = s.start("one");
    std::fs::write(
        s.dir.path().join("main.yml"),
        MAIN.replace("ask:", "asked:")
            .replace("to: ask}", "to: asked}"),
    )
    .unwrap();
    let o = s.cli(&["resume", &id, "--upgrade"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("as it is now has no state `ask`"),
        "{}",
        stderr(&o)
    );
    // Without --upgrade the pinned definition still runs it.
    let o = s.cli(&["signal", &id, "go"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
