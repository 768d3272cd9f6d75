//! FlatAgents agents through the provided `llm` plugin against the test
//! model server (`model-server`, OpenAI-compatible, deterministic, faults on
//! request): the SDK's own example machines run unmodified (only
//! `profiles.yml`'s endpoint changed) locally and on the run queue; every
//! provider failure gets its kind and is retried or routed; the sandbox
//! holds (manifest and operator must both allow a host, no redirects, no
//! name pointing at loopback); and no key leaks anywhere.

use flowhost_e2e::{flowhost, shared_cache, stderr};
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The test model server, on a free loopback port, stopped when dropped.
struct ModelServer {
    child: Child,
    addr: String,
}

impl ModelServer {
    fn start() -> ModelServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_model-server"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the model server starts");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout is piped");
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        ModelServer { child, addr }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request the server received (path, headers, body).
    fn requests(&self) -> Vec<Value> {
        let body = ureq::get(&format!("http://{}/_requests", self.addr))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flowhost` with the built plugins, allowed to reach `addr`.
fn fh(cache: &Path, addr: &str) -> Command {
    let mut cmd = flowhost(cache);
    cmd.env("FLOWHOST_ALLOW_HOSTS", addr);
    cmd
}

fn ok(o: &Output, what: &str) -> Value {
    assert!(o.status.success(), "{what}: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `flowhost run MACHINE --json` allowed to reach `addr`; its JSON answer.
fn run_json(cache: &Path, addr: &str, machine: &str, db: &str, what: &str) -> Value {
    let o = fh(cache, addr)
        .args(["run", machine, "--json", "--db", db])
        .output()
        .unwrap();
    ok(&o, what)
}

/// An execution's timeline (`flowhost history`).
fn history(cache: &Path, id: &str, db: &str) -> String {
    let h = flowhost(cache)
        .args(["history", id, "--db", db])
        .output()
        .unwrap();
    String::from_utf8_lossy(&h.stdout).into_owned()
}

/// Copies a folder of configs, changing only `profiles.yml`: every
/// profile's `base_url` points at `base`.
fn copy_pointed_at(src: &Path, dst: &Path, base: &str) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if name == "profiles.yml" {
            text = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("base_url:"))
                .map(|l| match l.trim_start().strip_prefix("provider:") {
                    Some(_) => {
                        let indent = &l[..l.len() - l.trim_start().len()];
                        format!("{l}\n{indent}base_url: {base}")
                    }
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::fs::write(dst.join(name), text).unwrap();
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/flatagents")
}

/// The FlatAgents SDK's own example machines, unmodified but for the
/// endpoint in `profiles.yml`, run with `flowhost run` and through the run
/// queue with two workers, with the same results.
#[test]
fn flatagents_sdk_examples_run_unmodified_locally_and_on_the_queue() {
    let server = ModelServer::start();
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        (
            "writer_critic",
            json!({"product": "a solar-powered kettle"}),
        ),
        (
            "research_paper_analysis",
            json!({"title": "Attention", "abstract": "We propose...", "sections": ["intro"]}),
        ),
        (
            "parallelism",
            json!({"type": "parallel_aggregation", "texts": ["a", "b"]}),
        ),
        (
            "parallelism",
            json!({"type": "foreach_sentiment", "texts": ["good", "bad", "ok"]}),
        ),
        (
            "mdap",
            json!({"initial_pegs": [[3, 2, 1], [], []], "goal_pegs": [[], [], [3, 2, 1]]}),
        ),
    ];
    let local = dir.path().join("local.db").display().to_string();
    let queue = dir.path().join("queue.db").display().to_string();
    let mut expected = Vec::new();
    for (i, (example, input)) in runs.iter().enumerate() {
        let copy = dir.path().join(format!("{example}-{i}"));
        copy_pointed_at(&fixtures().join(example), &copy, &server.base_url());
        let machine = copy.join("machine.yml").display().to_string();
        let input = input.to_string();
        let o = fh(&cache, &server.addr)
            .args(["run", &machine, "--json", "--input", &input, "--db", &local])
            .output()
            .unwrap();
        let out = ok(&o, example);
        assert_eq!(out["status"], "done", "{example}: {out}");
        // The model's tokens are in the execution's history (the root's,
        // unless its agents run in child machines).
        let id = out["id"].as_str().unwrap();
        let timeline = history(&cache, id, &local);
        assert!(
            *example == "parallelism"
                || (timeline.contains("asked agent") && timeline.contains("tokens")),
            "{example}: {timeline}"
        );
        expected.push(out["output"].clone());
        let o = fh(&cache, &server.addr)
            .args([
                "submit",
                &machine,
                "--id",
                &format!("q{i}"),
                "--input",
                &input,
                "--db",
                &queue,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{example}: {}", stderr(&o));
    }
    // The executions are pinned to the texts they were submitted with: the
    // workers never read the agent or profile files again.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let copy = entry.unwrap().path();
        if copy.is_dir() {
            for file in std::fs::read_dir(&copy).unwrap() {
                let file = file.unwrap().path();
                let text = std::fs::read_to_string(&file).unwrap();
                if text.contains("spec: flatagent") || text.contains("spec: flatprofiles") {
                    std::fs::write(&file, "spec: broken\n").unwrap();
                }
            }
        }
    }
    let workers: Vec<_> = (0..2)
        .map(|_| {
            fh(&cache, &server.addr)
                .args([
                    "worker",
                    "--executions",
                    "--exit-when-empty",
                    "--concurrency",
                    "4",
                ])
                .args(["--db", &queue])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for (i, ((example, _), expected)) in runs.iter().zip(&expected).enumerate() {
        let o = flowhost(&cache)
            .args(["result", &format!("q{i}"), "--db", &queue])
            .output()
            .unwrap();
        assert_eq!(&ok(&o, example), expected, "{example} on the queue");
    }
    // Structured agents asked for JSON through response_format.
    let asked_schema = server
        .requests()
        .iter()
        .any(|r| r["body"]["response_format"]["type"] == "json_schema");
    assert!(asked_schema);
}

/// A one-state machine whose agent calls `model` on the server, with the
/// state's `execution` and every failure kind routed to a final state
/// named after it.
fn fault_machine(dir: &Path, base: &str, model: &str, execution: &str, output: bool) -> String {
    let output = if output {
        "output: {score: {type: int}, note: {type: str}}"
    } else {
        ""
    };
    let yaml = format!(
        r#"
spec: flatmachine
data:
  name: faults
  agents:
    a:
      spec: flatagent
      data:
        model: {{provider: openai, base_url: "{base}", name: "{model}"}}
        user: "Say something about {{{{ input.topic }}}}"
        {output}
  states:
    start:
      type: initial
      agent: a
      input: {{topic: tea}}
      timeout: 2
      execution: {execution}
      output_to_context: {{answer: "{{{{ output }}}}"}}
      on_error:
        retryable: retryable
        timeout: timeout
        invalid_input: invalid_input
        fatal: fatal
        invalid_output: invalid_output
      transitions: [{{to: done}}]
    done: {{type: final, output: {{answer: "{{{{ context.answer }}}}"}}}}
    retryable: {{type: final, output: {{kind: retryable, message: "{{{{ context.last_error }}}}"}}}}
    timeout: {{type: final, output: {{kind: timeout, message: "{{{{ context.last_error }}}}"}}}}
    invalid_input: {{type: final, output: {{kind: invalid_input, message: "{{{{ context.last_error }}}}"}}}}
    fatal: {{type: final, output: {{kind: fatal, message: "{{{{ context.last_error }}}}"}}}}
    invalid_output: {{type: final, output: {{kind: invalid_output, message: "{{{{ context.last_error }}}}"}}}}
"#
    );
    let path = dir.join(format!("m{}.yml", fastrand_name(model, execution)));
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

fn fastrand_name(model: &str, execution: &str) -> String {
    format!("{model}{execution}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Each provider failure gets its kind and is routed by `on_error`; the
/// transient ones are retried under `execution: retry`, after at least the
/// provider's `Retry-After`.
#[test]
fn provider_failures_get_their_kinds_and_are_retried_or_routed() {
    let server = ModelServer::start();
    let other = ModelServer::start();
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let base = server.base_url();
    let redirect = format!("m+redirect=http://{}/v1/chat/completions", other.addr);
    let cases: [(&str, bool, &str); 8] = [
        ("m+429", false, "retryable"),
        ("m+500", false, "retryable"),
        ("m+malformed", false, "retryable"),
        ("m+400", false, "invalid_input"),
        ("m+401", false, "fatal"),
        ("m+slow=5000", false, "timeout"),
        ("m+badschema", true, "invalid_output"),
        (&redirect, false, "fatal"),
    ];
    let db = dir.path().join("f.db").display().to_string();
    for (model, output, kind) in cases {
        let machine = fault_machine(dir.path(), &base, model, "{type: default}", output);
        let out = run_json(&cache, &server.addr, &machine, &db, model);
        assert_eq!(out["output"]["kind"], kind, "{model}: {out}");
        assert!(
            !out["output"]["message"].as_str().unwrap_or("").is_empty(),
            "{model}: {out}"
        );
    }
    assert!(
        other.requests().is_empty(),
        "a redirect is returned to the plugin, never followed"
    );

    // Retried: the first call fails, the second succeeds; the pause is at
    // least the provider's Retry-After (1 s) although the backoff is 0.
    let machine = fault_machine(
        dir.path(),
        &base,
        "m+429*1",
        "{type: retry, backoffs: [0, 0]}",
        false,
    );
    let out = run_json(&cache, &server.addr, &machine, &db, "429 once");
    assert_eq!(out["status"], "done", "{out}");
    let timeline = history(&cache, out["id"].as_str().unwrap(), &db);
    assert!(
        timeline.contains("will try attempt 2 in 1000 ms"),
        "{timeline}"
    );

    // retry_on_empty: an empty answer is a failure worth retrying.
    let machine = fault_machine(
        dir.path(),
        &base,
        "m+empty*1",
        "{type: retry, backoffs: [0], retry_on_empty: true}",
        false,
    );
    let out = run_json(&cache, &server.addr, &machine, &db, "empty once");
    assert_eq!(out["status"], "done", "{out}");
    assert!(
        !out["output"]["answer"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "the second answer is not empty: {out}"
    );
}

/// `parallel` asks n samples at once; `mdap_voting` stops when one answer
/// leads by k; `settings.max_agent_calls` bounds the calls of an execution.
#[test]
fn agent_execution_types_and_the_call_budget() {
    let server = ModelServer::start();
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let base = server.base_url();
    let db = dir.path().join("x.db").display().to_string();
    let machine = fault_machine(
        dir.path(),
        &base,
        "p",
        "{type: parallel, n_samples: 4}",
        false,
    );
    let out = run_json(&cache, &server.addr, &machine, &db, "parallel");
    assert_eq!(out["output"]["answer"]["count"], 4, "{out}");
    assert_eq!(
        out["output"]["answer"]["results"].as_array().unwrap().len(),
        4
    );

    let before = server.requests().len();
    let machine = fault_machine(
        dir.path(),
        &base,
        "v",
        "{type: mdap_voting, k_margin: 2, max_candidates: 6}",
        false,
    );
    let out = run_json(&cache, &server.addr, &machine, &db, "mdap");
    assert!(out["output"]["answer"]["content"].is_string(), "{out}");
    assert_eq!(
        server.requests().len() - before,
        2,
        "identical answers lead by k=2 after two calls"
    );

    // A loop that would call forever stops at the budget.
    let yaml = format!(
        r#"
spec: flatmachine
data:
  name: budget
  settings: {{max_agent_calls: 3}}
  agents:
    a:
      spec: flatagent
      data:
        model: {{provider: openai, base_url: "{base}", name: m}}
        user: again
  states:
    start: {{type: initial, transitions: [{{to: ask}}]}}
    ask: {{agent: a, transitions: [{{to: ask}}]}}
    done: {{type: final}}
"#
    );
    let path = dir.path().join("budget.yml");
    std::fs::write(&path, yaml).unwrap();
    let o = fh(&cache, &server.addr)
        .args(["run", &path.display().to_string(), "--db", &db])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("max_agent_calls") && err.contains("made 3 agent calls"),
        "{err}"
    );
}

/// A plugin reaches a host only if its manifest lists it and the operator
/// allows it; a name that resolves to loopback is refused.
#[test]
fn the_sandbox_holds_for_outbound_http() {
    let server = ModelServer::start();
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "agent": {"user": "hi"},
        "model": {"name": "m", "base_url": server.base_url()},
    })
    .to_string();
    let call = |plugins: &Path, allow: Option<&str>, config: &str| {
        let mut cmd = flowhost(&cache);
        cmd.env("FLOWHOST_PLUGINS", plugins)
            .env("FLOWHOST_LOG", "warn")
            .args(["plugin", "call", "llm", "--config", config]);
        if let Some(a) = allow {
            cmd.args(["--allow-host", a]);
        }
        let o = cmd.output().unwrap();
        (ok(&o, "llm call"), stderr(&o))
    };
    let plugins = flowhost_e2e::plugins_dir();

    // `plugin inspect` shows who allows what.
    let o = flowhost(&cache)
        .args([
            "plugin",
            "inspect",
            "llm",
            "--json",
            "--allow-host",
            &server.addr,
        ])
        .output()
        .unwrap();
    let shown = ok(&o, "inspect");
    assert_eq!(
        shown["network"],
        json!({"http": true, "allowed_hosts": ["*"], "operator_allows": [server.addr]})
    );

    // Allowed by both: a real answer.
    let (out, _) = call(&plugins, Some(&server.addr), &config);
    assert!(out["output"]["content"].is_string(), "{out}");
    let seen = server.requests().len();

    // Not allowed by the operator: refused inside the guest, logged by the host.
    let (out, log) = call(&plugins, None, &config);
    assert_eq!(out["error"]["kind"], "fatal", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-host")
    );
    assert!(
        log.contains("refused") && log.contains("operator does not allow"),
        "{log}"
    );
    let (out, _) = call(&plugins, Some("127.0.0.1:1"), &config);
    assert_eq!(
        out["error"]["kind"], "fatal",
        "another port is another host: {out}"
    );

    // Allowed by the operator, but the plugin's manifest lists no hosts.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(plugins.join("llm.wasm"), bare.join("llm.wasm")).unwrap();
    let (out, log) = call(&bare, Some(&server.addr), &config);
    assert_eq!(out["error"]["kind"], "fatal", "{out}");
    assert!(log.contains("manifest lists no allowed_hosts"), "{log}");
    assert_eq!(server.requests().len(), seen, "no request arrived");

    // A name resolving to a loopback address is not let through, even when
    // allowed, unless it is `localhost` or the address itself is allowed.
    let Some(name) = loopback_name() else {
        // (The decision itself is unit-tested in plugin::net.)
        eprintln!(
            "no name other than localhost resolves to loopback here: DNS rebinding not tried end to end"
        );
        return;
    };
    let port = server.addr.rsplit(':').next().unwrap();
    let via_name = json!({
        "agent": {"user": "hi"},
        "model": {"name": "m", "base_url": format!("http://{name}:{port}/v1")},
    })
    .to_string();
    let (out, log) = call(&plugins, Some(&format!("{name}:{port}")), &via_name);
    assert_eq!(out["error"]["kind"], "fatal", "{name}: {out}");
    assert!(
        log.contains("resolves to") && log.contains("a name may not point at"),
        "{log}"
    );
    assert_eq!(server.requests().len(), seen, "no request arrived");
}

/// A name other than `localhost` that resolves to a loopback address here:
/// the machine's own hostname (Debian's /etc/hosts maps it to 127.0.1.1 or
/// 127.0.0.1), or Debian's `ip6-localhost` names.
fn loopback_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    [hostname.trim(), "ip6-localhost", "ip6-loopback"]
        .into_iter()
        .filter(|n| !n.is_empty() && *n != "localhost")
        .find(|n| {
            (*n, 80)
                .to_socket_addrs()
                .map(|mut a| a.all(|a| a.ip().is_loopback()))
                .unwrap_or(false)
        })
        .map(str::to_string)
}

/// The key the host adds reaches the provider, and nothing else: not the
/// output, the logs, the history, the store.
#[test]
fn keys_reach_the_provider_and_nowhere_else() {
    let server = ModelServer::start();
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let key = "sk-flowhost-e2e-7c1f0d9a";
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(
        &secrets,
        format!(
            "[[secret]]\nhost = \"{}\"\nvalue = \"{key}\"\n",
            server.addr
        ),
    )
    .unwrap();
    let copy = dir.path().join("wc");
    copy_pointed_at(&fixtures().join("writer_critic"), &copy, &server.base_url());
    let machine = copy.join("machine.yml").display().to_string();
    let db = dir.path().join("k.db").display().to_string();
    let secrets = secrets.display().to_string();
    let o = fh(&cache, &server.addr)
        .env("FLOWHOST_LOG", "debug")
        .args([
            "run",
            &machine,
            "--json",
            "--db",
            &db,
            "--secrets",
            &secrets,
        ])
        .args(["--input", r#"{"product": "tea"}"#])
        .output()
        .unwrap();
    let out = ok(&o, "writer critic with a key");
    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r["headers"]["authorization"], format!("Bearer {key}"));
    }
    // A failing call's error does not carry it either.
    let failing = fault_machine(
        dir.path(),
        &server.base_url(),
        "m+401",
        "{type: default}",
        false,
    );
    let f = fh(&cache, &server.addr)
        .env("FLOWHOST_LOG", "debug")
        .args([
            "run",
            &failing,
            "--json",
            "--db",
            &db,
            "--secrets",
            &secrets,
        ])
        .output()
        .unwrap();
    let h = flowhost(&cache)
        .args(["history", out["id"].as_str().unwrap(), "--db", &db])
        .output()
        .unwrap();
    let mut everything = vec![o.stdout, o.stderr, f.stdout, f.stderr, h.stdout, h.stderr];
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let path = file.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("k.db")
        {
            everything.push(std::fs::read(&path).unwrap());
        }
    }
    for bytes in everything {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(key), "the key leaked: {text}");
        assert!(!text.contains("7c1f0d9a"), "part of the key leaked");
    }
}

/// The daemon runs the agents example: `serve --allow-host`, a submitted
/// writer/critic loop finishes, `/machines` lists only the machine (not its
/// agent and profile files), and `/metrics` counts the agents' calls and
/// tokens.
#[test]
fn the_daemon_runs_agents_and_counts_their_tokens() {
    let server = ModelServer::start();
    let dir = tempfile::tempdir().unwrap();
    let machines = dir.path().join("machines");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents");
    copy_pointed_at(&example, &machines, &server.base_url());
    let db = dir.path().join("d.db").display().to_string();
    let mut child = fh(&shared_cache(), &server.addr)
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
        .args(["--machines", &machines.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut res = agent
        .post(format!("{base}/workflows?wait=60s"))
        .send_json(json!({"machine": "machine", "input": {"product": "tea"}}))
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.body_mut().read_json().unwrap();
    let listed: Value = agent
        .get(format!("{base}/machines"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let metrics = agent
        .get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "done", "{body}");
    assert!(body["result"]["tagline"].is_string(), "{body}");
    assert!(!listed.to_string().contains("critic"), "{listed}");
    assert!(listed.to_string().contains("machine"), "{listed}");
    let tokens: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("flowhost_agent_tokens_total{") && l.contains("kind=\"prompt\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(tokens > 0.0, "{metrics}");
    assert!(metrics.contains("flowhost_agent_calls_total{"), "{metrics}");
}

/// `flowhost bench llm` runs end to end at a small size (its figures are
/// printed, never asserted).
#[test]
fn the_llm_benchmark_runs_at_a_small_size() {
    let o = flowhost(&shared_cache())
        .args(["bench", "llm", "--calls", "5", "--json"])
        .output()
        .unwrap();
    let out = ok(&o, "bench llm");
    let rows = out["llm"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter()
            .all(|r| r["overhead"]["p50_us"].as_f64().unwrap() > 0.0)
    );
}

/// A plugin's `[http]` limits hold: a response over its size cap and an
/// answer slower than its request timeout end the request, each with its
/// own error, and the host says why.
#[test]
fn per_plugin_http_limits_hold() {
    let server = ModelServer::start();
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        flowhost_e2e::plugins_dir().join("llm.wasm"),
        plugins.join("llm.wasm"),
    )
    .unwrap();
    std::fs::write(
        plugins.join("llm.toml"),
        "allowed_hosts = [\"127.0.0.1\"]\n[http]\ntimeout_ms = 300\nmax_response_mb = 1\n",
    )
    .unwrap();
    let call = |model: &str| {
        let config = json!({
            "agent": {"user": "hi"},
            "model": {"name": model, "base_url": server.base_url()},
        })
        .to_string();
        let o = flowhost(&cache)
            .env("FLOWHOST_PLUGINS", &plugins)
            .env("FLOWHOST_LOG", "warn")
            .args(["plugin", "call", "llm", "--config", &config])
            .args(["--allow-host", &server.addr])
            .output()
            .unwrap();
        (ok(&o, model), stderr(&o))
    };
    let (out, _) = call("m+big=1000");
    assert!(out["output"]["content"].is_string(), "under the cap: {out}");
    let (out, log) = call("m+big=3000000");
    assert_eq!(out["error"]["kind"], "retryable", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BodySize"),
        "{out}"
    );
    assert!(log.contains("over the 1 MiB cap"), "{log}");
    let (out, _) = call("m+slow=3000");
    assert_eq!(out["error"]["kind"], "timeout", "{out}");
}
