//! Plugin authoring with nothing but flowhost: `plugin new` makes a project
//! of every language and world in a folder outside the repository, `plugin
//! build` turns it into a component (and does no work the second time),
//! `plugin test` passes its golden cases (also found from a parent folder),
//! and `flowhost run` uses it from the project's own machine. A syntax error
//! gives the compiler's message and leaves no component behind; `--watch`
//! re-runs after a change.
//!
//! The toolchains are the ones `cargo xtask` installed into
//! `<target>/toolchains`; Rust projects share one cargo target folder so
//! their dependencies build once.

use flowhost_e2e::{flowhost, plugins_dir, shared_cache, stderr, stdout};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

const WORLDS: [&str; 3] = ["processor", "hook", "step"];

fn target_dir() -> PathBuf {
    plugins_dir()
        .parent()
        .expect("<target>/plugins has a parent")
        .to_path_buf()
}

/// `flowhost` for authoring: the repository's toolchains, a shared cargo
/// target folder, the shared compile cache; run in `dir`.
fn author(dir: &Path) -> Command {
    let mut cmd = flowhost(&shared_cache());
    cmd.current_dir(dir)
        .env("FLOWHOST_TOOLCHAINS", target_dir().join("toolchains"))
        .env("CARGO_TARGET_DIR", target_dir().join("plugin-projects"));
    cmd
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// The input of each world's example machine, and the output it gives.
fn machine_case(world: &str) -> (Value, Value) {
    match world {
        "processor" => (json!({"name": "Ada"}), json!({"greeting": "Hello, Ada!"})),
        "hook" => (json!({}), json!({"reviewed": true})),
        _ => (json!({"urgent": true}), json!({"lane": "fast"})),
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every world of one language, end to end.
fn every_world_of(lang: &str) {
    let root = tempfile::tempdir().unwrap();
    for world in WORLDS {
        let name = format!("{lang}-{world}");
        let o = author(root.path())
            .args(["plugin", "new", &name, "--lang", lang, "--world", world])
            .output()
            .unwrap();
        ok(&o, &format!("plugin new {name}"));
        let project = root.path().join(&name);
        let o = author(&project).args(["plugin", "build"]).output().unwrap();
        let out = ok(&o, &format!("plugin build {name}"));
        assert!(out.contains("next: flowhost plugin test"), "{out}");
        let wasm = project.join("dist").join(format!("{name}.wasm"));
        let (bytes, when) = (std::fs::read(&wasm).unwrap(), modified(&wasm));

        // A second build changes nothing.
        let o = author(&project).args(["plugin", "build"]).output().unwrap();
        let out = ok(&o, &format!("second plugin build {name}"));
        assert!(out.starts_with("up to date:"), "{out}");
        assert_eq!(modified(&wasm), when, "{name}: the component was rewritten");
        assert_eq!(std::fs::read(&wasm).unwrap(), bytes);

        let o = author(&project)
            .args(["plugin", "test", "."])
            .output()
            .unwrap();
        let out = ok(&o, &format!("plugin test {name}"));
        assert!(out.trim_end().ends_with("passed, 0 failed"), "{out}");

        let (input, want) = machine_case(world);
        let o = author(&project)
            .args(["run", "machine.yml", "--plugins", "dist", "--db"])
            .arg(project.join("runs.db"))
            .args(["--input", &input.to_string()])
            .output()
            .unwrap();
        let out = ok(&o, &format!("flowhost run with {name}"));
        let got: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(got, want, "{name}");
    }
    // From the parent folder, every project's cases: 2 + 3 + 3.
    let o = author(root.path())
        .args(["plugin", "test", "."])
        .output()
        .unwrap();
    let out = ok(&o, "plugin test over the tree");
    assert!(out.trim_end().ends_with("8 passed, 0 failed"), "{out}");

    broken_source(lang, root.path());
}

/// What a syntax error looks like in each language, and the line the
/// compiler's message must contain.
fn broken_source(lang: &str, root: &Path) {
    let name = format!("broken-{lang}");
    let o = author(root)
        .args(["plugin", "new", &name, "--lang", lang])
        .output()
        .unwrap();
    ok(&o, "plugin new (broken)");
    let project = root.join(&name);
    let (file, junk, says) = match lang {
        "rust" => ("src/lib.rs".to_string(), "fn {", "unclosed delimiter"),
        "python" => ("app.py".to_string(), "def (:", "SyntaxError"),
        "js" => (format!("{name}.js"), "export function (", "SyntaxError"),
        _ => (format!("{name}.c"), "int x = ;", "expected expression"),
    };
    let path = project.join(&file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n{junk}\n"));
    std::fs::write(&path, text).unwrap();
    let o = author(&project).args(["plugin", "build"]).output().unwrap();
    assert!(!o.status.success(), "a broken {lang} source built");
    let err = stderr(&o);
    assert!(err.contains(says), "{lang}: no compiler message in:\n{err}");
    assert!(err.contains(&format!("building `{name}`")), "{err}");
    // Nothing a host would load (no component, no manifest, no leftovers).
    let left: Vec<String> = std::fs::read_dir(project.join("dist"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|f| !f.ends_with(".wasm") && !f.ends_with(".toml") && !f.ends_with(".partial")),
        "{lang}: left in dist/: {left:?}"
    );
}

#[test]
fn rust_projects_build_test_and_run() {
    every_world_of("rust");
}

#[test]
fn python_projects_build_test_and_run() {
    every_world_of("python");
}

#[test]
fn js_projects_build_test_and_run() {
    every_world_of("js");
}

#[test]
fn c_projects_build_test_and_run() {
    every_world_of("c");
}

#[test]
fn watch_rebuilds_and_reruns_after_a_change() {
    let root = tempfile::tempdir().unwrap();
    let o = author(root.path())
        .args(["plugin", "new", "hello", "--lang", "c"])
        .output()
        .unwrap();
    ok(&o, "plugin new");
    let project = root.path().join("hello");
    ok(
        &author(&project).args(["plugin", "build"]).output().unwrap(),
        "plugin build",
    );
    let mut child = author(&project)
        .args(["plugin", "test", ".", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if line.ends_with(" failed") && tx.send(line).is_err() {
                break;
            }
        }
    });
    // A guard against a hang, not a timing assertion.
    let summary = |rx: &std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(300))
            .expect("--watch printed a summary")
    };
    let first = summary(&rx);
    // The greeting changes: the golden case for it fails after the rebuild.
    let source = project.join("hello.c");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, text.replace("Hello, %s!", "Hi, %s!")).unwrap();
    let second = summary(&rx);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first, "2 passed, 0 failed");
    assert_eq!(second, "1 passed, 1 failed");
}
