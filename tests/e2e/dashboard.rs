//! The web dashboard in a real browser: a daemon (with a token) runs real
//! workflows and holds a poisoned job; Debian's Chromium, driven by
//! `playwright-core` (`tests/browser/dashboard.cjs`), signs in, watches the
//! list update live, filters it, opens an execution (diagram, timeline),
//! cancels it, signals another (a bad JSON payload refused first), retries
//! a failed one,
//! requeues the job, and fails on any error in the browser's
//! console. What the page did is checked again here through the API.
//! Screenshots land in `<target>/<profile>/test-output/dashboard/`.
//!
//! `cargo xtask test` installs Chromium and playwright-core when missing and
//! sets `FLOWHOST_REQUIRE_BROWSER=1`; a plain `cargo test` without them
//! says SKIPPED and how to get them.

use crate::daemon::{Site, until};
use flowhost_e2e::{flowhost, shared_cache, stderr};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Three states before it waits for an approval; a failure of its plugin
/// would be routed to `rejected`.
const TRIAGE: &str = r#"spec: flatmachine
data:
  name: triage
  plugins: {echo: echo}
  states:
    start: {type: initial, transitions: [{to: check}]}
    check:
      plugin: echo
      input: {n: "{{ input.n }}"}
      output_to_context: {n: "{{ output.n }}"}
      on_error: rejected
      transitions: [{to: decide}]
    decide:
      wait_for: approval
      transitions:
        - condition: "context.n > 100"
          to: rejected
        - to: approved
    approved: {type: final, output: {n: "{{ context.n }}"}}
    rejected: {type: final, output: {rejected: true}}
"#;

/// Fails for good in `call`.
const REFUSE: &str = r#"spec: flatmachine
data:
  name: refuse
  plugins: {adversary: adversary}
  states:
    start: {type: initial, transitions: [{to: call}]}
    call: {plugin: adversary, input: {attack: guest_error, kind: fatal, message: "refused on purpose"}, transitions: [{to: done}]}
    done: {type: final}
"#;

const TOKEN: &str = "dashboard-test-token-0123456789";

/// Where the browser and its driver are, or why the test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("FLOWHOST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let driver = flowhost_e2e::profile_dir()
        .parent()
        .unwrap()
        .join("browser/node_modules/playwright-core");
    let node = std::process::Command::new("node").arg("--version").output();
    if !chromium.is_file() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    if !driver.join("package.json").is_file() {
        return Err(format!("no playwright-core in {}", driver.display()));
    }
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("no node on PATH".into());
    }
    Ok((chromium, driver))
}

fn shots_dir() -> PathBuf {
    let dir = flowhost_e2e::profile_dir().join("test-output/dashboard");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_dashboard_shows_and_acts_on_real_workflows_in_a_browser() {
    let (chromium, driver) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var_os("FLOWHOST_REQUIRE_BROWSER").is_none() => {
            eprintln!(
                "SKIPPED the dashboard browser test: {why}. `cargo xtask test` installs Debian's chromium and playwright-core (into <target>/browser)"
            );
            return;
        }
        Err(why) => panic!("the dashboard browser test cannot run: {why}"),
    };
    let site = Site::new();
    std::fs::write(site.machines().join("triage.yml"), TRIAGE).unwrap();
    std::fs::write(site.machines().join("refuse.yml"), REFUSE).unwrap();
    let d = site.serve(&["--token", TOKEN]);

    // Finished ones, one waiting for its signal (to finish while the page
    // watches), one waiting to be cancelled from the page, a fan-out.
    let finished: Vec<String> = (0..3)
        .map(|n| {
            d.run("double", json!({"n": n}))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let submit = |machine: &str, input: Value| {
        let (status, body) = d.post("/workflows", &json!({"machine": machine, "input": input}));
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    };
    let waiting = submit("ask", json!({}));
    let signalled = submit("ask", json!({}));
    let cancel = submit("triage", json!({"n": 7}));
    let fanout = d.run("fanout", json!({"items": [1, 2, 3, 4]}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = d.run("refuse", json!({}));
    assert_eq!(refused["status"], "failed", "{refused}");
    let refused = refused["id"].as_str().unwrap().to_string();
    for id in [&waiting, &signalled, &cancel] {
        until("it waits for its signal", || {
            d.get(&format!("/workflows/{id}")).1["status"] == "waiting"
        });
    }

    // A poisoned job in a pool a separate worker served and left.
    let (status, pushed) = d.post(
        "/pools/later/jobs",
        &json!({"payload": {"attack": "guest_error", "kind": "fatal", "message": "this input is refused"}, "max_retries": 0}),
    );
    assert_eq!(status, 201, "{pushed}");
    let job = pushed["id"].as_i64().unwrap();
    let out = flowhost(&shared_cache())
        .args([
            "worker",
            "--pool",
            "later",
            "--processor",
            "adversary",
            "--exit-when-empty",
            "--db",
            &site.db(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.get("/pools/later").1["stats"]["poisoned"], 1);

    let shots = shots_dir();
    let case = json!({
        "finished": finished,
        "waiting": waiting,
        "cancel": cancel,
        "cancel_state": "decide",
        "cancel_visited": ["start", "check", "decide"],
        "fanout": fanout,
        "signal": signalled,
        "failed": refused,
        "roots": 8,
        "pool": "later",
        "job": job,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.cjs");
    let out = std::process::Command::new("node")
        .arg(&script)
        .env("FLOWHOST_URL", d.base())
        .env("FLOWHOST_TOKEN", TOKEN)
        .env("FLOWHOST_SHOTS", &shots)
        .env("FLOWHOST_CASE", case.to_string())
        .env("PLAYWRIGHT_CORE", &driver)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser steps failed (screenshots in {}):\n{said}\n{}",
        shots.display(),
        stderr(&out)
    );
    assert!(said.contains("every step held"), "{said}");

    // What the page did, read back through the API.
    assert_eq!(
        d.get(&format!("/workflows/{cancel}")).1["status"],
        "cancelled"
    );
    assert_eq!(d.get(&format!("/workflows/{waiting}")).1["status"], "done");
    assert_eq!(
        d.get(&format!("/workflows/{signalled}")).1["status"],
        "done"
    );
    let (_, history) = d.get(&format!("/workflows/{refused}/history"));
    assert!(
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["event"] == "retried"),
        "the retry from the page is in its history: {history}"
    );
    let (_, pending) = d.get("/pools/later/jobs?status=pending");
    assert!(
        pending["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == job),
        "{pending}"
    );
    for name in [
        "login",
        "executions",
        "execution",
        "pools",
        "execution-dark",
    ] {
        assert!(
            shots.join(format!("{name}.png")).is_file(),
            "no screenshot {name}.png in {}",
            shots.display()
        );
    }
    let (status, _) = d.stop();
    assert!(status.success());
}
