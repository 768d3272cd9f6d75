//! The daemon (`flowhost serve`) driven over HTTP on a free loopback port:
//! workflows submitted, waited for, listed, signalled and cancelled;
//! execution state under concurrent clients; scaling; bad requests; the
//! token; metrics; a drain with work in flight; a daemon and a separate
//! worker process sharing one store.

use flowhost_e2e::{flowhost, shared_cache, signal, stderr};
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Stdio};

/// Three plugin calls that count themselves in the execution's state.
const COUNTER: &str = r#"spec: flatmachine
data:
  name: counter
  plugins: {adversary: adversary}
  states:
    a: {type: initial, plugin: adversary, input: {attack: state, key: seen}, transitions: [{to: b}]}
    b: {plugin: adversary, input: {attack: state, key: seen}, transitions: [{to: c}]}
    c: {plugin: adversary, input: {attack: state, key: seen}, output_to_context: {seen: "{{ output.count }}"}, transitions: [{to: done}]}
    done: {type: final, output: {seen: "{{ context.seen }}"}}
"#;

/// Sleeps `input.ms` in its middle state.
const SLOW: &str = r#"spec: flatmachine
data:
  name: slow
  plugins: {adversary: adversary}
  states:
    start: {type: initial, transitions: [{to: nap}]}
    nap: {plugin: adversary, input: {attack: sleep, ms: "{{ input.ms }}"}, transitions: [{to: done}]}
    done: {type: final, output: {n: "{{ input.n }}"}}
"#;

const FANOUT: &str = r#"spec: flatmachine
data:
  name: fanout
  machines:
    one: ./double.yml
  states:
    each: {type: initial, foreach: "{{ input.items }}", as: item, machine: one, input: {n: "{{ item }}"}, output_to_context: {all: "{{ output }}"}, transitions: [{to: done}]}
    done: {type: final, output: {all: "{{ context.all }}"}}
"#;

/// A running `flowhost serve`, killed (by its PID) if a test ends early.
pub(crate) struct Served {
    child: Option<Child>,
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A folder with the test machines, a database (an SQLite file in it, or
/// the one `db` names) and a compile cache.
pub(crate) struct Site {
    dir: tempfile::TempDir,
    db: Option<String>,
}

impl Site {
    /// The site with its store at `db` (a PostgreSQL URL) instead.
    pub(crate) fn on(db: &str) -> Site {
        Site {
            db: Some(db.to_string()),
            ..Site::new()
        }
    }

    pub(crate) fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let machines = dir.path().join("machines");
        std::fs::create_dir(&machines).unwrap();
        for (name, text) in [
            ("double", crate::queue::MACHINE),
            ("counter", COUNTER),
            ("slow", SLOW),
            ("fanout", FANOUT),
            ("ask", crate::engine::ASK),
        ] {
            std::fs::write(machines.join(format!("{name}.yml")), text).unwrap();
        }
        Site { dir, db: None }
    }

    pub(crate) fn machines(&self) -> PathBuf {
        self.dir.path().join("machines")
    }

    pub(crate) fn db(&self) -> String {
        match &self.db {
            Some(db) => db.clone(),
            None => self.dir.path().join("flowhost.db").display().to_string(),
        }
    }

    /// Starts `flowhost serve` on a free port with these extra flags.
    pub(crate) fn serve(&self, extra: &[&str]) -> Served {
        let machines = self.machines().display().to_string();
        let db = self.db();
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
            "--machines",
            &machines,
        ];
        args.extend_from_slice(extra);
        let mut child = flowhost(&shared_cache())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let Some(base) = flowhost_e2e::listening(&mut child) else {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("serve did not start: {}", stderr(&out));
        };
        let token = extra
            .iter()
            .position(|a| *a == "--token")
            .map(|i| extra[i + 1].to_string());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Served {
            child: Some(child),
            base,
            token,
            agent,
        }
    }
}

impl Served {
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a request; returns the status and the body as JSON (or as a
    /// JSON string when it is not JSON).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut res = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            (m, body) => {
                let mut r = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(body))
    }

    /// A request with a raw body and content type.
    fn raw(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type);
        if let Some(t) = &self.token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        let mut res = r.send(body).unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Submits and waits for the result.
    pub(crate) fn run(&self, machine: &str, input: Value) -> Value {
        let (status, body) = self.post(
            "/workflows?wait=60s",
            &json!({"machine": machine, "input": input}),
        );
        assert_eq!(status, 201, "{body}");
        body
    }

    /// SIGTERM, then the exit status and stderr.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        signal(child.id(), "-TERM");
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn error_kind(body: &Value) -> &str {
    body["error"]["kind"].as_str().unwrap_or_default()
}

/// Polls `check` (a read of the daemon) until it holds; the bound only
/// stops a broken daemon from hanging the test.
pub(crate) fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never happened: {what}");
}

#[test]
fn workflows_are_submitted_waited_for_listed_and_described_over_http() {
    let site = Site::new();
    let d = site.serve(&[]);
    let (status, health) = d.get("/healthz");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    // ?wait returns the result; the same id again returns the same execution.
    let first = d.run("double", json!({"n": 4}));
    assert_eq!(first["result"], json!({"twice": 8}));
    assert_eq!(first["status"], "done");
    let again = d.post(
        "/workflows?wait=10s",
        &json!({"machine": "double", "id": "fixed", "input": {"n": 1}}),
    );
    assert_eq!(again.0, 201, "{}", again.1);
    let same = d.post(
        "/workflows?wait=10s",
        &json!({"machine": "double", "id": "fixed", "input": {"n": 100}}),
    );
    assert_eq!(same.0, 200, "{}", same.1);
    assert_eq!(
        (same.1["created"].as_bool(), &same.1["result"]),
        (Some(false), &json!({"twice": 2}))
    );

    // Without ?wait: 202 and a status, never an empty result.
    let (status, queued) = d.post(
        "/workflows",
        &json!({"machine": "double", "input": {"n": 5}}),
    );
    assert_eq!(status, 202, "{queued}");
    assert!(queued.get("result").is_none(), "{queued}");
    let id = queued["id"].as_str().unwrap().to_string();
    until("the queued execution finishes", || {
        d.get(&format!("/workflows/{id}")).1["status"] == "done"
    });
    let (_, view) = d.get(&format!("/workflows/{id}"));
    assert_eq!(view["result"], json!({"twice": 10}));
    let (_, history) = d.get(&format!("/workflows/{id}/history"));
    let events: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"]["event"].as_str())
        .collect();
    assert!(
        events.contains(&"plugin_called") && events.contains(&"finished"),
        "{events:?}"
    );

    // `flowhost submit --wait` on the daemon's store: the daemon runs it.
    let machine = site.machines().join("double.yml").display().to_string();
    let db = site.db();
    let o = flowhost(&shared_cache())
        .args([
            "submit",
            &machine,
            "--input",
            r#"{"n": 21}"#,
            "--wait",
            "--timeout",
            "60s",
            "--db",
            &db,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        json!({"twice": 42})
    );

    // Pages: every root execution once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/workflows?limit=2&cursor={c}"),
            None => "/workflows?limit=2".to_string(),
        };
        let (status, page) = d.get(&path);
        assert_eq!(status, 200, "{page}");
        for w in page["workflows"].as_array().unwrap() {
            seen.push(w["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.contains(&id) && seen.contains(&"fixed".to_string()));
    let (_, done) = d.get("/workflows?status=done&machine=double&limit=100");
    assert_eq!(done["workflows"].as_array().unwrap().len(), 4);

    // A fan-out's children, with their status.
    let fan = d.run("fanout", json!({"items": [1, 2, 3]}));
    assert_eq!(
        fan["result"],
        json!({"all": [{"twice": 2}, {"twice": 4}, {"twice": 6}]})
    );
    let fan_id = fan["id"].as_str().unwrap();
    let (_, children) = d.get(&format!("/workflows/{fan_id}/jobs"));
    let children = children["workflows"].as_array().unwrap();
    assert_eq!(children.len(), 3);
    assert!(
        children
            .iter()
            .all(|c| c["status"] == "done" && c["parent"] == fan_id)
    );

    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn signals_cancel_and_state_reach_executions() {
    let site = Site::new();
    let d = site.serve(&[]);
    // A waiting execution goes on when signalled.
    let (status, ask) = d.post("/workflows", &json!({"machine": "ask"}));
    assert_eq!(status, 202, "{ask}");
    let id = ask["id"].as_str().unwrap().to_string();
    until("it waits", || {
        d.get(&format!("/workflows/{id}")).1["status"] == "waiting"
    });
    let (status, sent) = d.post(
        &format!("/workflows/{id}/signal/answer"),
        &json!({"yes": 1}),
    );
    assert_eq!(
        (status, sent["delivery"].as_str()),
        (202, Some("awaited")),
        "{sent}"
    );
    until("it finishes", || {
        d.get(&format!("/workflows/{id}")).1["status"] == "done"
    });
    let (status, body) = d.post(
        &format!("/workflows/{id}/signal/flowhost:cancel"),
        &json!(null),
    );
    assert_eq!((status, error_kind(&body)), (400, "invalid_request"));
    // Names with a control character are refused on every store alike.
    for path in [
        format!("/workflows/{id}/signal/an%00swer"),
        format!("/workflows/{id}/state/k%0Aey/increment"),
    ] {
        let (status, body) = d.post(&path, &json!({}));
        assert_eq!(
            (status, error_kind(&body)),
            (400, "invalid_request"),
            "{path}: {body}"
        );
        assert!(body.to_string().contains("control character"), "{body}");
    }

    // Cancel a waiting one; a second cancel is a conflict.
    let (_, ask) = d.post("/workflows", &json!({"machine": "ask"}));
    let id = ask["id"].as_str().unwrap().to_string();
    until("it waits", || {
        d.get(&format!("/workflows/{id}")).1["status"] == "waiting"
    });
    let (status, cancelled) = d.post(
        &format!("/workflows/{id}/cancel"),
        &json!({"reason": "not needed", "wait": "30s"}),
    );
    assert_eq!(status, 200, "{cancelled}");
    let (_, view) = d.get(&format!("/workflows/{id}"));
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["error"]["message"], "not needed");
    let (status, again) = d.call("POST", &format!("/workflows/{id}/cancel"), None);
    assert_eq!((status, error_kind(&again)), (409, "finished"));

    // Plugins and the API change the same state.
    let counted = d.run("counter", json!({}));
    assert_eq!(counted["result"], json!({"seen": 3}));
    let cid = counted["id"].as_str().unwrap().to_string();
    let (status, state) = d.get(&format!("/workflows/{cid}/state"));
    assert_eq!((status, &state), (200, &json!({"seen": 3})));
    let (_, inc) = d.post(
        &format!("/workflows/{cid}/state/seen/increment"),
        &json!({"by": 10}),
    );
    assert_eq!(inc["value"], 13);
    let (_, inc) = d.call(
        "POST",
        &format!("/workflows/{cid}/state/seen/increment"),
        None,
    );
    assert_eq!(inc["value"], 14, "no body increments by 1");
    let (_, len) = d.post(
        &format!("/workflows/{cid}/state/log/append"),
        &json!({"value": "x"}),
    );
    assert_eq!(len["length"], 1);
    let (_, added) = d.post(
        &format!("/workflows/{cid}/state/tags/add"),
        &json!({"value": "a"}),
    );
    let (_, twice) = d.post(
        &format!("/workflows/{cid}/state/tags/add"),
        &json!({"value": "a"}),
    );
    assert_eq!(
        (added["added"].as_bool(), twice["added"].as_bool()),
        (Some(true), Some(false))
    );
    let (status, conflict) = d.post(&format!("/workflows/{cid}/state/log/increment"), &json!({}));
    assert_eq!(
        (status, error_kind(&conflict)),
        (409, "state_conflict"),
        "{conflict}"
    );
    let (status, _) = d.call(
        "PUT",
        &format!("/workflows/{cid}/state"),
        Some(&json!({"only": 1})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        d.get(&format!("/workflows/{cid}/state")).1,
        json!({"only": 1})
    );
    let (status, missing) = d.get("/workflows/nope/state");
    assert_eq!((status, error_kind(&missing)), (404, "unknown_execution"));

    // 8 clients × 1,000 increments: exactly 8,000.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..1000 {
                    let (status, body) =
                        d.call("POST", &format!("/workflows/{cid}/state/n/increment"), None);
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    assert_eq!(d.get(&format!("/workflows/{cid}/state")).1["n"], 8000);

    // Compare-and-swap: a conflict is reported with the value found, and
    // 8 clients retrying on conflicts lose no update.
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..50 {
                    loop {
                        let current = d.get(&format!("/workflows/{cid}/state")).1["c"].clone();
                        let next = current.as_i64().unwrap_or(0) + 1;
                        let (status, body) = d.post(
                            &format!("/workflows/{cid}/state/c/cas"),
                            &json!({"expected": current, "new": next}),
                        );
                        if status == 200 {
                            break;
                        }
                        assert_eq!((status, error_kind(&body)), (409, "cas_mismatch"), "{body}");
                        assert!(body["error"]["current"].is_i64(), "{body}");
                        conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(d.get(&format!("/workflows/{cid}/state")).1["c"], 400);
    eprintln!("cas conflicts reported: {}", conflicts.into_inner());
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn bad_requests_get_4xx_with_a_kind_and_create_nothing() {
    let site = Site::new();
    let d = site.serve(&["--max-body", "2048"]);
    let cases: Vec<(u16, &str, (u16, Value))> = vec![
        (
            400,
            "invalid_json",
            d.raw("/workflows", "application/json", b"{\"machine\": "),
        ),
        (
            415,
            "unsupported_media_type",
            d.raw("/workflows", "text/plain", b"{}"),
        ),
        (
            413,
            "payload_too_large",
            d.raw("/workflows", "application/json", &vec![b' '; 4096]),
        ),
        (
            400,
            "unknown_machine",
            d.post("/workflows", &json!({"machine": "nope"})),
        ),
        (
            400,
            "unknown_machine",
            d.post("/workflows", &json!({"machine": "/no/such.yml"})),
        ),
        (
            400,
            "invalid_request",
            d.post("/workflows", &json!({"machin": "double"})),
        ),
        (
            400,
            "invalid_request",
            d.post("/workflows", &json!({"machine": "double", "id": "bad id!"})),
        ),
        (
            400,
            "invalid_request",
            d.post("/workflows?wait=forever", &json!({"machine": "double"})),
        ),
        (400, "invalid_request", d.get("/workflows?limit=0")),
        (400, "invalid_request", d.get("/workflows?cursor=zzz")),
        (400, "invalid_request", d.get("/workflows?status=sleeping")),
        (404, "unknown_execution", d.get("/workflows/nope")),
        (
            404,
            "unknown_execution",
            d.call("POST", "/workflows/nope/cancel", None),
        ),
        (404, "not_found", d.get("/no/such/route")),
        (
            405,
            "method_not_allowed",
            d.call("PUT", "/workflows", Some(&json!({}))),
        ),
        (
            400,
            "invalid_request",
            d.post("/pools/executions/jobs", &json!({"payload": 1})),
        ),
        (
            400,
            "invalid_request",
            d.post("/workers/scale", &json!({"workers": 100000})),
        ),
        (
            404,
            "unknown_queue",
            d.post("/workers/scale", &json!({"workers": 1, "queue": "nope"})),
        ),
    ];
    for (status, kind, (got, body)) in &cases {
        assert_eq!((got, error_kind(body)), (status, *kind), "{body}");
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{body}"
        );
    }
    // Nothing was created by any of them.
    let (_, page) = d.get("/workflows?all=true");
    assert_eq!(page["workflows"], json!([]));
    // A machine that does not validate: its errors, nothing stored.
    std::fs::write(
        site.machines().join("broken.yml"),
        "spec: flatmachine\ndata:\n  states: {}\n",
    )
    .unwrap();
    let (status, body) = d.post("/workflows", &json!({"machine": "broken"}));
    assert_eq!(
        (status, error_kind(&body)),
        (400, "invalid_config"),
        "{body}"
    );
    assert_eq!(d.get("/workflows?all=true").1["workflows"], json!([]));
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn a_token_guards_every_route_but_healthz_and_off_loopback_one_is_required() {
    let site = Site::new();
    // Off loopback without a token: refused before listening.
    let db = site.db();
    let o = flowhost(&shared_cache())
        .args(["serve", "--listen", "0.0.0.0:0", "--db", &db])
        .env_remove("FLOWHOST_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("token is required"), "{}", stderr(&o));

    let token = "correct-horse-battery-staple";
    let d = site.serve(&["--token", token]);
    assert_eq!(d.get("/workflows").0, 200);
    let url = format!("{}/workflows", d.base);
    for auth in [None, Some("Bearer wrong-token-wrong-token"), Some(token)] {
        let mut r = d.agent.get(&url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let mut res = r.call().unwrap();
        assert_eq!(res.status().as_u16(), 401);
        let body: Value = res.body_mut().read_json().unwrap();
        assert_eq!(error_kind(&body), "unauthorized");
    }
    let health = d.agent.get(format!("{}/healthz", d.base)).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Every route with data needs it, the dashboard's own among them.
    for path in [
        "/counts",
        "/events",
        "/pools",
        "/pools/x/jobs",
        "/workers",
        "/workflows/x/graph",
    ] {
        let res = d.agent.get(format!("{}{path}", d.base)).call().unwrap();
        assert_eq!(res.status().as_u16(), 401, "{path}");
    }
    // The dashboard's files (no data) and whether a token opens the API do not.
    let get = |path: &str, auth: Option<&str>| {
        let mut r = d.agent.get(format!("{}{path}", d.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let mut res = r.call().unwrap();
        let kind = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (
            res.status().as_u16(),
            kind,
            res.body_mut().read_to_string().unwrap(),
        )
    };
    let (status, kind, page) = get("/", None);
    assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.contains("/ui/app.js"), "{page}");
    let (status, kind, _) = get("/ui/app.js", None);
    assert_eq!(
        (status, kind.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert_eq!(get("/ui/nope.js", None).0, 404);
    let session = |auth| serde_json::from_str::<Value>(&get("/session", auth).2).unwrap();
    assert_eq!(
        session(None),
        json!({"token_required": true, "authorized": false})
    );
    assert_eq!(
        session(Some("Bearer wrong-token-wrong-token")),
        json!({"token_required": true, "authorized": false})
    );
    let right = format!("Bearer {token}");
    assert_eq!(
        session(Some(&right)),
        json!({"token_required": true, "authorized": true})
    );
    let (status, log) = d.stop();
    assert!(status.success());
    assert!(!log.contains(token), "the token is never logged: {log}");
}

/// What the dashboard reads: counts kept by the store, lists by time range
/// and id prefix, the live feed of changes, an execution's diagram, pools.
#[test]
fn counts_filters_the_live_feed_and_diagrams_over_http() {
    let site = Site::new();
    let d = site.serve(&[]);
    for n in 0..2 {
        d.run("double", json!({"n": n}));
    }
    let (status, asked) = d.post("/workflows", &json!({"machine": "ask"}));
    assert_eq!(status, 202, "{asked}");
    let ask = asked["id"].as_str().unwrap().to_string();
    until("it waits", || {
        d.get(&format!("/workflows/{ask}")).1["status"] == "waiting"
    });
    let (_, counts) = d.get("/counts");
    assert_eq!(counts["roots"]["done"], 2, "{counts}");
    assert_eq!(counts["roots"]["waiting"], 1, "{counts}");
    assert_eq!(counts["roots"]["failed"], 0, "{counts}");
    let machines = counts["machines"].as_array().unwrap();
    assert!(
        machines
            .iter()
            .any(|m| m["machine"] == "double" && m["status"] == "done" && m["count"] == 2),
        "{counts}"
    );

    // Filters: an id prefix, a time range; bad ones are 400s.
    let ids = |path: &str| -> Vec<String> {
        let (status, page) = d.get(path);
        assert_eq!(status, 200, "{path}: {page}");
        page["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&format!("/workflows?prefix={}", &ask[..30])),
        [ask.as_str()]
    );
    let (_, described) = d.get(&format!("/workflows/{ask}"));
    let created = described["created_ms"].as_u64().unwrap();
    // The range holds exactly the executions created in it.
    let (_, all) = d.get("/workflows");
    let created_then: Vec<String> = all["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["created_ms"] == created)
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    assert!(created_then.contains(&ask), "{all}");
    assert_eq!(
        ids(&format!("/workflows?since={created}&until={}", created + 1)),
        created_then
    );
    assert!(ids(&format!("/workflows?since={created}")).contains(&ask));
    assert!(!ids(&format!("/workflows?until={created}")).contains(&ask));
    for bad in [
        "/workflows?since=5&until=5",
        "/workflows?prefix=a%01",
        "/workflows?since=x",
    ] {
        let (status, body) = d.get(bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // The live feed: the change of an execution that finishes arrives.
    let mut feed = d.agent.get(format!("{}/events", d.base)).call().unwrap();
    assert_eq!(
        feed.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let (status, _) = d.post(
        &format!("/workflows/{ask}/signal/answer"),
        &json!({"ok": true}),
    );
    assert_eq!(status, 202);
    let mut lines = std::io::BufReader::new(feed.body_mut().as_reader()).lines();
    let mut event = String::new();
    let finished = loop {
        let line = lines
            .next()
            .expect("the feed ends only with the daemon")
            .unwrap();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(data) = line.strip_prefix("data: ")
            && event == "changes"
        {
            let changes: Vec<Value> = serde_json::from_str(data).unwrap();
            if let Some(c) = changes
                .iter()
                .find(|c| c["id"] == ask && c["status"] == "done")
            {
                break c.clone();
            }
        }
    };
    assert_eq!(finished["machine"], "ask");
    assert_eq!(finished["state"], "done");
    drop(lines);

    // An execution another process changes reaches a subscriber that
    // watches it (this daemon's engine never sees that change).
    let (_, other) = d.post("/workflows", &json!({"machine": "ask"}));
    let other = other["id"].as_str().unwrap().to_string();
    until("it waits", || {
        d.get(&format!("/workflows/{other}")).1["status"] == "waiting"
    });
    let mut feed = d
        .agent
        .get(format!("{}/events?watch={ask},{other}", d.base))
        .call()
        .unwrap();
    assert_eq!(feed.status().as_u16(), 200);
    let mut lines = std::io::BufReader::new(feed.body_mut().as_reader()).lines();
    let mut next_changes = || -> Vec<Value> {
        loop {
            let line = lines
                .next()
                .expect("the feed ends only with the daemon")
                .unwrap();
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(changes) = serde_json::from_str::<Vec<Value>>(data)
            {
                return changes;
            }
        }
    };
    let status_of = |changes: &[Value], id: &str| {
        changes
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["status"].clone())
    };
    // First, the watched executions as they are.
    let now = next_changes();
    assert_eq!(status_of(&now, &ask), Some(json!("done")), "{now:?}");
    assert_eq!(status_of(&now, &other), Some(json!("waiting")), "{now:?}");
    let out = flowhost(&shared_cache())
        .args(["cancel", &other, "--db", &site.db()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cancelled = loop {
        if let Some(status) = status_of(&next_changes(), &other) {
            break status;
        }
    };
    assert_eq!(cancelled, "cancelled");
    let many = vec![ask.as_str(); 201].join(",");
    for bad in [
        format!("/events?watch={many}"),
        "/events?watch=a%01".to_string(),
    ] {
        let (status, body) = d.get(&bad);
        assert_eq!(status, 400, "{body}");
    }

    // Its diagram, from the definition it runs.
    let (status, graph) = d.get(&format!("/workflows/{ask}/graph"));
    assert_eq!(status, 200, "{graph}");
    assert_eq!(graph["initial"], "ask");
    let states: Vec<&str> = graph["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ask", "done"]);
    assert_eq!(graph["states"][0]["label"], "waits for answer");
    assert_eq!(
        graph["edges"],
        json!([{"from": "ask", "to": "done", "kind": "transition"}])
    );
    assert_eq!(d.get("/workflows/nope/graph").0, 404);

    let (_, pools) = d.get("/pools");
    assert_eq!(pools["pools"][0]["name"], "executions", "{pools}");
    assert_eq!(pools["pools"][0]["throughput"]["interval_seconds"], 10);
    let (status, jobs) = d.get("/pools/executions/jobs?status=done&limit=2");
    assert_eq!(
        (status, jobs["jobs"].as_array().unwrap().len()),
        (200, 2),
        "{jobs}"
    );
    assert_eq!(d.get("/pools/executions/jobs?limit=0").0, 400);
    drop(lines);
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn workers_scale_on_request_and_back_to_the_queue_when_idle() {
    let site = Site::new();
    let d = site.serve(&["--max-workers", "4", "--idle-timeout", "0s"]);
    let running = |d: &Served| -> u64 {
        let (_, w) = d.get("/workers");
        w["pools"][0]["running"].as_u64().unwrap()
    };
    let (status, view) = d.post("/workers/scale", &json!({"workers": 3}));
    assert_eq!((status, view["running"].as_u64()), (200, Some(3)), "{view}");
    until("three daemon workers are registered", || {
        let (_, w) = d.get("/workers");
        w["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["status"] == "active" && w["pool"] == "executions")
            .count()
            == 3
    });
    let (status, view) = d.post("/workers/scale", &json!({"workers": null}));
    assert_eq!((status, view["fixed"].clone()), (200, Value::Null));
    until("idle workers stop down to --min-workers", || {
        running(&d) == 1
    });
    let (status, _) = d.stop();
    assert!(status.success());
}

/// Parses Prometheus text: every sample line is `name{labels} value`; the
/// value of a sample by its name and labels.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let value: f64 = value.parse().expect("a sample's value is a number");
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        assert!(rest.ends_with('}'), "bad labels in {line}");
        if metric == name && rest.trim_end_matches('}') == labels {
            return Some(value);
        }
    }
    None
}

#[test]
fn metrics_parse_and_move_with_the_work() {
    let site = Site::new();
    let d = site.serve(&[]);
    let text = |d: &Served| d.get("/metrics").1.as_str().unwrap().to_string();
    let before = text(&d);
    assert_eq!(
        sample(
            &before,
            "flowhost_executions_finished_total",
            r#"machine="double",status="done""#
        ),
        None
    );
    for n in 0..5 {
        d.run("double", json!({"n": n}));
    }
    let after = text(&d);
    for line in after.lines().filter(|l| l.starts_with("# TYPE")) {
        let kind = line.split_whitespace().nth(3).unwrap();
        assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
    }
    assert_eq!(
        sample(
            &after,
            "flowhost_executions_finished_total",
            r#"machine="double",status="done""#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            "flowhost_executions_started_total",
            r#"machine="double""#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            "flowhost_plugin_call_seconds_count",
            r#"plugin="echo""#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            "flowhost_http_requests_total",
            r#"method="POST",route="/workflows",status="201""#
        ),
        Some(5.0)
    );
    // (The last run-queue jobs may still be completing.)
    assert!(sample(&after, "flowhost_queue_depth", r#"queue="executions""#).is_some());
    assert!(sample(&after, "flowhost_workers", r#"status="active""#).unwrap() >= 1.0);
    // The plugins view counts the same calls.
    until("the plugins folder is scanned", || {
        d.get("/plugins").1["plugins"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == "echo" && p["loaded_ms"].is_u64())
        })
    });
    let (_, plugins) = d.get("/plugins");
    let echo = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "echo")
        .unwrap();
    assert_eq!(
        (echo["calls"].as_u64(), echo["world"].as_str()),
        (Some(5), Some("processor"))
    );
    assert!(
        echo["digest"].as_str().is_some_and(|d| d.len() == 64),
        "{echo}"
    );
    // The OpenAPI description lists the routes.
    let (status, doc) = d.get("/openapi.json");
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/workflows",
        "/workflows/{id}/state/{key}/increment",
        "/workers/scale",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} not in the description"
        );
    }
    let (status, _) = d.stop();
    assert!(status.success());
}

/// Each plugin call's worker (`host:pid`) in the executions' histories.
fn pids_that_ran(d: &Served, ids: &[String]) -> std::collections::BTreeSet<String> {
    let mut pids = std::collections::BTreeSet::new();
    for id in ids {
        let (_, h) = d.get(&format!("/workflows/{id}/history"));
        for e in h["events"].as_array().unwrap() {
            if let Some(w) = e["event"]["worker"].as_str() {
                pids.insert(w.rsplit(':').next().unwrap_or(w).to_string());
            }
        }
    }
    pids
}

#[test]
fn a_drain_loses_nothing_and_a_worker_process_shares_the_work() {
    let site = Site::new();
    let db = site.db();
    let d = site.serve(&["--concurrency", "4", "--max-workers", "2", "--grace", "30s"]);
    // Work in flight: 40 executions that nap 50 ms each.
    let mut ids = Vec::new();
    for n in 0..40 {
        let (status, body) = d.post(
            "/workflows",
            &json!({"machine": "slow", "input": {"n": n, "ms": 50}}),
        );
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    until("some are running", || {
        d.get("/workflows?status=running&limit=1").1["workflows"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
    });
    let daemon_pid = d.pid().to_string();
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");

    // A worker process and a new daemon on the same store finish them all.
    let worker = flowhost(&shared_cache())
        .args(["worker", "--executions", "--concurrency", "4", "--db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let worker = Served {
        child: Some(worker),
        base: String::new(),
        token: None,
        agent: ureq::Agent::new_with_defaults(),
    };
    let d = site.serve(&["--concurrency", "4"]);
    for (n, id) in ids.iter().enumerate() {
        let (status, body) = d.post(
            "/workflows?wait=60s",
            &json!({"machine": "slow", "id": id, "input": {}}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"], json!({"n": n}), "{id}");
    }
    // More work, shared by the daemon and the worker process.
    let mut more = Vec::new();
    for n in 0..60 {
        let (_, body) = d.post(
            "/workflows",
            &json!({"machine": "slow", "input": {"n": n, "ms": 20}}),
        );
        more.push(body["id"].as_str().unwrap().to_string());
    }
    for id in &more {
        let (status, body) = d.post("/workflows?wait=60s", &json!({"machine": "slow", "id": id}));
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("done")),
            "{body}"
        );
    }
    let pids = pids_that_ran(&d, &more);
    let second = d.pid().to_string();
    let worker_pid = worker.pid().to_string();
    assert!(
        pids.contains(&second) && pids.contains(&worker_pid),
        "ran on {pids:?}; daemon {second}, worker {worker_pid}"
    );
    assert!(
        !pids.contains(&daemon_pid),
        "the stopped daemon ran none of the new work"
    );
    let (status, _) = d.stop();
    assert!(status.success());
    let (status, _) = worker.stop();
    assert!(status.success());
}

/// The pinned OpenAPI fuzzer `cargo xtask test` installs.
fn schemathesis() -> PathBuf {
    let bin = flowhost_e2e::plugins_dir()
        .parent()
        .expect("<target>/plugins has a parent")
        .join("toolchains/schemathesis/bin/schemathesis");
    assert!(
        bin.is_file(),
        "no schemathesis at {}: run the tests with `cargo xtask test` (it installs the pinned version)",
        bin.display()
    );
    bin
}

/// A schema-driven fuzzer (schemathesis) against `/openapi.json`: no 5xx,
/// every response fits the description (status, content type, body).
#[test]
fn the_api_holds_under_a_schema_driven_fuzzer() {
    let site = Site::new();
    let token = "fuzzing-token-0123456789";
    let d = site.serve(&["--token", token, "--max-workers", "2"]);
    let out = std::process::Command::new(schemathesis())
        .current_dir(site.dir.path())
        .arg("run")
        .arg(format!("{}/openapi.json", d.base))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            // (The coverage phase trips over a recursion bug of hypothesis
            // on this Python when it draws from any-JSON schemas.)
            "--phases",
            "examples,fuzzing,stateful",
            "--max-time",
            "30",
            "--workers",
            "2",
            "--suppress-health-check",
            "all",
            "--no-color",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = report
        .lines()
        .filter(|l| l.contains(" generated, ") || l.starts_with("Seed:"))
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!("schemathesis: {summary}");
    let (status, _) = d.stop();
    assert!(status.success());
}

/// The documents of `examples/mapreduce`.
fn documents() -> Vec<Value> {
    let path = flowhost_e2e::plugin_source("../examples/mapreduce/documents.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Word counts as the example's mapper and reducer define them.
fn count_words(docs: &[Value]) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for doc in docs {
        for word in doc
            .as_str()
            .unwrap()
            .split(|c: char| !(c.is_alphanumeric() || c == '\''))
            .map(|w| w.trim_matches('\''))
            .filter(|w| !w.is_empty())
        {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn mapreduce_counts_words_over_http_and_from_the_command_line() {
    let site = Site::new();
    let d = site.serve(&[]);
    let docs = documents();
    let expected = count_words(&docs);
    let (status, body) = d.post(
        "/workflows/mapreduce?wait=60s",
        &json!({"mapper": "count-words", "reducer": "sum-counts", "items": docs, "parallelism": 3}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["result"]["words"], json!(expected));
    assert_eq!(
        body["result"]["total"],
        json!(expected.values().sum::<u64>())
    );
    // An ordinary execution: its children are the mapped items.
    let id = body["id"].as_str().unwrap();
    let (_, children) = d.get(&format!("/workflows/{id}/jobs?limit=100"));
    assert_eq!(children["workflows"].as_array().unwrap().len(), docs.len());
    let (_, view) = d.get(&format!("/workflows/{id}"));
    assert_eq!(
        (view["machine"].as_str(), view["status"].as_str()),
        (Some("mapreduce"), Some("done"))
    );

    // With a warm pool for the mapper: the same counts, from reused instances.
    let (status, pooled) = d.post(
        "/workflows/mapreduce?wait=60s",
        &json!({"mapper": "count-words", "reducer": "sum-counts", "items": docs,
                "parallelism": 1, "pool": {"min": 1, "max": 2, "warm_up": true}}),
    );
    assert_eq!(status, 201, "{pooled}");
    assert_eq!(pooled["result"]["words"], json!(expected));
    let (_, plugins) = d.get("/plugins");
    let mapper = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "count-words")
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        mapper["warm"]["hits"].as_u64().unwrap_or(0) >= 1,
        "{mapper}"
    );

    // Bad ones: nothing is created.
    let bad = [
        json!({"mapper": "nope", "reducer": "sum-counts", "items": []}),
        json!({"mapper": "count-words", "reducer": "sum-counts"}),
        json!({"mapper": "count-words", "reducer": "sum-counts", "items_from": id}),
        json!({"mapper": "count-words", "reducer": "sum-counts", "items": [], "parallelism": 0}),
        json!({"mapper": "count-words", "reducer": "sum-counts", "items": [], "pool": {"min": 3, "max": 1}}),
    ];
    for (body, kind) in bad.iter().zip([
        "unknown_plugin",
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "invalid_request",
    ]) {
        let (status, answer) = d.post("/workflows/mapreduce", body);
        assert_eq!(
            (status, error_kind(&answer)),
            (400, kind),
            "{body}: {answer}"
        );
    }
    assert_eq!(
        d.get("/workflows").1["workflows"].as_array().unwrap().len(),
        2
    );

    // `flowhost mapreduce --wait` on the daemon's store gives the same.
    let items = site.dir.path().join("docs.json");
    std::fs::write(&items, serde_json::to_string(&docs).unwrap()).unwrap();
    let db = site.db();
    let o = flowhost(&shared_cache())
        .args([
            "mapreduce",
            "--mapper",
            "count-words",
            "--reducer",
            "sum-counts",
        ])
        .arg("--items")
        .arg(format!("@{}", items.display()))
        .args([
            "--parallel",
            "2",
            "--warm",
            "2",
            "--wait",
            "--timeout",
            "60s",
            "--db",
            &db,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["words"], json!(expected));
    let (status, _) = d.stop();
    assert!(status.success());
}

const HOT: &str = r#"spec: flatmachine
data:
  name: hot
  plugins: {p: p}
  states:
    call: {type: initial, plugin: p, input: "{{ input.text }}", output_to_context: {out: "{{ output }}"}, transitions: [{to: done}]}
    done: {type: final, output: {out: "{{ context.out }}"}}
"#;

const PARKED: &str = r#"spec: flatmachine
data:
  name: parked
  plugins: {p: p}
  states:
    ask: {type: initial, wait_for: go, transitions: [{to: call}]}
    call: {plugin: p, input: "a a", output_to_context: {out: "{{ output }}"}, transitions: [{to: done}]}
    done: {type: final, output: {out: "{{ context.out }}"}}
"#;

/// Replaces a file the way a deploy does: written beside it, then renamed.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let part = path.with_extension("part");
    std::fs::write(&part, bytes).unwrap();
    std::fs::rename(&part, path).unwrap();
}

#[test]
fn plugins_reload_while_calls_stream_and_a_broken_file_keeps_the_old_version() {
    let site = Site::new();
    let plugins = site.dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(site.machines().join("hot.yml"), HOT).unwrap();
    std::fs::write(site.machines().join("parked.yml"), PARKED).unwrap();
    let p = plugins.join("p.wasm");
    std::fs::copy(flowhost_e2e::plugin("echo"), &p).unwrap();
    let dir = plugins.display().to_string();
    let d = site.serve(&["--plugins", &dir]);
    let entry = |d: &Served| -> Value {
        let (_, list) = d.get("/plugins");
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "p")
            .cloned()
            .unwrap_or(Value::Null)
    };
    until("p is loaded", || entry(&d)["loaded_ms"].is_u64());
    let first = entry(&d)["digest"].as_str().unwrap().to_string();
    let echo = json!({"out": "a a"});
    let counted = json!({"out": {"a": 2}});
    assert_eq!(d.run("hot", json!({"text": "a a"}))["result"], echo);
    // An execution pinned to the first version, parked before its call.
    let (_, parked) = d.post("/workflows", &json!({"machine": "parked"}));
    let parked = parked["id"].as_str().unwrap().to_string();
    until("it waits", || {
        d.get(&format!("/workflows/{parked}")).1["status"] == "waiting"
    });

    // Calls stream from four clients while the plugin is replaced.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outputs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = d.run("hot", json!({"text": "a a"}));
                    assert_eq!(r["status"], "done", "a call failed during the reload: {r}");
                    outputs.lock().unwrap().push(r["result"].clone());
                }
            });
        }
        // A new version: count-words instead of echo (same world).
        replace(
            &p,
            &std::fs::read(flowhost_e2e::plugin("count-words")).unwrap(),
        );
        until("the new version is swapped in", || {
            let e = entry(&d);
            e["reloads"] == 1 && e["digest"].as_str() != Some(&first)
        });
        // Every call submitted from now on runs the new version.
        let after = outputs.lock().unwrap().len();
        until("calls use the new version", || {
            outputs.lock().unwrap().len() > after + 8
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = outputs.lock().unwrap();
        assert!(seen.iter().all(|o| *o == echo || *o == counted), "{seen:?}");
    });
    for _ in 0..3 {
        assert_eq!(d.run("hot", json!({"text": "a a"}))["result"], counted);
    }

    // A broken file: the version before stays, and /plugins says why.
    let second = entry(&d)["digest"].clone();
    replace(&p, b"not a component");
    until("the broken file is reported", || {
        entry(&d)["error"].is_string()
    });
    assert_eq!(entry(&d)["digest"], second);
    assert_eq!(d.run("hot", json!({"text": "a a"}))["result"], counted);
    let metrics = d.get("/metrics").1.as_str().unwrap().to_string();
    assert_eq!(
        sample(
            &metrics,
            "flowhost_plugin_reloads_total",
            r#"plugin="p",result="ok""#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "flowhost_plugin_reloads_total",
            r#"plugin="p",result="error""#
        ),
        Some(1.0)
    );

    // The file removed: the parked execution still runs the version it was
    // pinned to (the first).
    std::fs::remove_file(&p).unwrap();
    until("p is gone from the catalog", || entry(&d).is_null());
    let (status, _) = d.post(&format!("/workflows/{parked}/signal/go"), &json!(null));
    assert_eq!(status, 202);
    let (status, done) = d.post(
        "/workflows?wait=30s",
        &json!({"machine": "parked", "id": parked}),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["result"], echo, "{done}");
    let (status, _) = d.stop();
    assert!(status.success());
}

const ATTACK: &str = r#"spec: flatmachine
data:
  name: attack
  plugins: {adversary: adversary}
  states:
    call: {type: initial, plugin: adversary, input: {attack: "{{ input.attack }}"}, output_to_context: {out: "{{ output }}"}, transitions: [{to: done}]}
    done: {type: final, output: {out: "{{ context.out }}"}}
"#;

#[test]
fn warm_pools_serve_calls_from_warm_instances_and_drop_one_after_a_trap() {
    let site = Site::new();
    std::fs::write(site.machines().join("attack.yml"), ATTACK).unwrap();
    let pools = site.dir.path().join("pools.toml");
    std::fs::write(
        &pools,
        "[echo]\nmin = 2\nwarm_up = true\nmax_uses = 100\n\n[adversary]\nmax = 1\nidle_timeout = \"10m\"\n",
    )
    .unwrap();
    let file = pools.display().to_string();
    // One worker running one execution at a time: calls come one by one.
    let d = site.serve(&[
        "--warm-pools",
        &file,
        "--max-workers",
        "1",
        "--concurrency",
        "1",
    ]);
    for n in 0..10 {
        assert_eq!(
            d.run("double", json!({"n": n}))["result"],
            json!({"twice": n * 2})
        );
    }
    let echo = |d: &Served| {
        let (_, list) = d.get("/plugins");
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "echo")
            .cloned()
            .unwrap()
    };
    until("the catalog has echo", || echo(&d)["warm"].is_object());
    let warm = echo(&d)["warm"].clone();
    // Warmed up at load: at most the first call can miss (if it came
    // before the warm-up finished).
    let (hits, misses) = (
        warm["hits"].as_u64().unwrap(),
        warm["misses"].as_u64().unwrap(),
    );
    assert!(hits + misses == 10 && hits >= 9, "{warm}");
    let metrics = d.get("/metrics").1.as_str().unwrap().to_string();
    assert_eq!(
        sample(
            &metrics,
            "flowhost_plugin_pool_hits_total",
            r#"plugin="echo""#
        ),
        Some(hits as f64)
    );

    // An instance lives on between calls, and a trap discards it.
    let calls = |attack: &str| d.run("attack", json!({"attack": attack}));
    assert_eq!(calls("count")["result"]["out"]["calls_in_this_instance"], 1);
    assert_eq!(calls("count")["result"]["out"]["calls_in_this_instance"], 2);
    assert_eq!(calls("panic")["status"], "failed");
    assert_eq!(
        calls("count")["result"]["out"]["calls_in_this_instance"],
        1,
        "a fresh instance after the trap"
    );

    // A bad pools file is refused at start.
    std::fs::write(&pools, "[echo]\nmin = 5\nmax = 2\n").unwrap();
    let db = site.db();
    let o = flowhost(&shared_cache())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
            "--warm-pools",
            &file,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("[echo]") && stderr(&o).contains("min"),
        "{}",
        stderr(&o)
    );
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn a_second_signal_exits_at_once_and_the_lease_hands_the_work_on() {
    let site = Site::new();
    let db = site.db();
    let d = site.serve(&["--lease", "1s"]);
    let (_, body) = d.post(
        "/workflows",
        &json!({"machine": "slow", "input": {"n": 7, "ms": 3000}}),
    );
    let id = body["id"].as_str().unwrap().to_string();
    until("it is running", || {
        d.get(&format!("/workflows/{id}")).1["status"] == "running"
    });
    let mut d = d;
    let child = d.child.take().unwrap();
    signal(child.id(), "-TERM");
    // The first signal drains: the nap in flight would hold it for seconds.
    signal(child.id(), "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another worker takes it over once the lease runs out, and finishes it.
    let o = flowhost(&shared_cache())
        .args([
            "worker",
            "--executions",
            "--exit-when-empty",
            "--lease",
            "1s",
            "--db",
            &db,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = flowhost(&shared_cache())
        .args(["result", &id, "--db", &db])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        serde_json::from_slice::<Value>(&r.stdout).unwrap(),
        json!({"n": 7})
    );
}

/// While the store refuses the workers' claims (here another process holds
/// the write lock past the store's wait), `/healthz` still answers 200 but
/// says `degraded`, with the store's reason; once the lock is let go it is
/// `ok` again and the waiting job runs.
#[test]
fn healthz_says_degraded_while_the_store_refuses_claims() {
    let site = Site::new();
    let d = site.serve(&["--pool", "resize=echo"]);
    let (status, health) = d.get("/healthz");
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let (status, body) = d.post(
        "/pools/resize/jobs",
        &json!({"payload": {"n": 1}, "delay": "1s"}),
    );
    assert_eq!(status, 201, "{body}");
    let holder = rusqlite::Connection::open(site.db()).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The job comes due, its claim waits out the lock (about 15 s) and fails.
    let mut degraded = Value::Null;
    for _ in 0..9000 {
        let (status, health) = d.get("/healthz");
        assert_eq!(status, 200, "{health}");
        if health["status"] == "degraded" {
            degraded = health;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let reason = degraded["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("locked"), "{degraded}");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    until("ok again, the job done", || {
        d.get("/healthz").1 == json!({"status": "ok"})
            && d.get("/pools/resize").1["stats"]["done"] == 1
    });
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn pool_jobs_pushed_over_http_run_on_the_daemons_pool_workers() {
    let site = Site::new();
    let d = site.serve(&["--pool", "resize=echo", "--pool", "bad=adversary"]);
    for n in 0..20 {
        let (status, body) = d.post(
            "/pools/resize/jobs",
            &json!({"payload": {"n": n}, "idempotency_key": format!("k{n}")}),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, again) = d.post(
        "/pools/resize/jobs",
        &json!({"payload": {}, "idempotency_key": "k3"}),
    );
    assert_eq!((status, again["created"].as_bool()), (200, Some(false)));
    until("the pool's workers ran them all", || {
        d.get("/pools/resize").1["stats"]["done"] == 20
    });
    let (_, pool) = d.get("/pools/resize");
    assert!(pool["workers"]["running"].as_u64().unwrap() >= 1, "{pool}");

    // A job that fails for good is poisoned, shown, and can be requeued.
    let (status, _) = d.post(
        "/pools/bad/jobs",
        &json!({"payload": {"attack": "guest_error", "kind": "fatal"}, "max_retries": 0}),
    );
    assert_eq!(status, 201);
    until("it is poisoned", || {
        d.get("/pools/bad").1["stats"]["poisoned"] == 1
    });
    let (_, bad) = d.get("/pools/bad");
    assert!(
        bad["poisoned"][0]["error"]
            .as_str()
            .unwrap()
            .contains("fatal"),
        "{bad}"
    );
    let (status, requeued) = d.call("POST", "/pools/bad/requeue", None);
    assert_eq!((status, requeued["requeued"].as_u64()), (200, Some(1)));
    until("it is poisoned again", || {
        d.get("/pools/bad").1["stats"]["poisoned"] == 1
    });
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn the_daemons_reaper_marks_a_killed_worker_lost() {
    let site = Site::new();
    let db = site.db();
    let d = site.serve(&["--stale-after", "1s", "--heartbeat", "200ms"]);
    // The daemon's own workers beat faster than its reaper's bound.
    let mut worker = flowhost(&shared_cache())
        .args([
            "worker",
            "--executions",
            "--heartbeat",
            "200ms",
            "--db",
            &db,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = worker.id();
    let status_of = |d: &Served| {
        d.get("/workers").1["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["pid"] == pid)
            .map(|w| w["status"].as_str().unwrap_or_default().to_string())
    };
    until("the worker registers", || {
        status_of(&d).as_deref() == Some("active")
    });
    worker.kill().unwrap();
    worker.wait().unwrap();
    until("the reaper marks it lost", || {
        status_of(&d).as_deref() == Some("lost")
    });
    let (status, _) = d.stop();
    assert!(status.success());
}
