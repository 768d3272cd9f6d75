//! Project tasks: `cargo xtask <task>`.
//!
//! - `plugins`: build every plugin crate under `plugins/` for wasm32-wasip2
//!   (profile `plugin`), and the Python, JavaScript and C plugins (see
//!   `polyglot`), into `<target>/plugins/<name>.wasm`, where the tests and the
//!   demo find them.
//! - `test`: `plugins`, build the `flowhost` binary once, install the pinned
//!   OpenAPI fuzzer (schemathesis, into `<target>/toolchains`), then run every
//!   test (`cargo test --workspace`). This is the README's test command and what CI runs.
//! - `demo`: `plugins`, then show the plugin runtime at work, run the peering
//!   example, and the agents example (below).
//! - `agents`: the FlatAgents writer/critic example (`examples/agents/`)
//!   against the test model server on 127.0.0.1:7781.
//! - `bench`: `plugins`, a release build of the host, then the plugin, engine,
//!   job, distributed-execution, daemon and LLM-call benchmarks.

mod polyglot;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "plugins" => plugins().map(|_| ()),
        "test" => test(),
        "demo" => demo(),
        "agents" => agents(),
        "bench" => bench(),
        _ => Err("usage: cargo xtask <plugins|test|demo|agents|bench>".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut cmd: Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// Every file named `name` under `plugins/` (not in `target` or `node_modules`), sorted.
fn plugin_files(name: &str) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let mut stack = vec![root().join("plugins")];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for path in entries.flatten().map(|e| e.path()) {
            let file_name = path.file_name().unwrap_or_default();
            if path.is_dir() && file_name != "target" && file_name != "node_modules" {
                stack.push(path);
            } else if file_name == name {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every plugin crate (a Cargo.toml under plugins/ with a cdylib): its
/// package name and its folder, sorted by name.
fn plugin_crates() -> Result<Vec<(String, PathBuf)>, String> {
    let mut crates = Vec::new();
    for path in plugin_files("Cargo.toml")? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !text.contains("cdylib") {
            continue;
        }
        let name = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("name = \"")
                    .and_then(|r| r.strip_suffix('"'))
            })
            .ok_or_else(|| format!("{}: no package name", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        crates.push((name.to_string(), dir));
    }
    crates.sort();
    Ok(crates)
}

/// Installs the wasm32-wasip2 target through rustup when it is missing.
fn ensure_wasm_target() -> Result<(), String> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(()); // no rustup: let cargo report a missing target itself
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", "wasm32-wasip2"]);
    run(add)
}

fn plugins() -> Result<PathBuf, String> {
    ensure_wasm_target()?;
    let crates = plugin_crates()?;
    let mut cmd = cargo();
    cmd.args(["build", "--target", "wasm32-wasip2", "--profile", "plugin"]);
    for (n, _) in &crates {
        cmd.args(["-p", n]);
    }
    run(cmd).map_err(|e| {
        format!("{e}\n(is the target installed? `rustup target add wasm32-wasip2`)")
    })?;
    let built = target_dir().join("wasm32-wasip2").join("plugin");
    let out = target_dir().join("plugins");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (n, dir) in &crates {
        let from = built.join(format!("{}.wasm", n.replace('-', "_")));
        let to = out.join(format!("{n}.wasm"));
        std::fs::copy(&from, &to)
            .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))?;
        let size = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
        eprintln!("xtask: plugin {n:<16} {size:>8} bytes  {}", to.display());
        // A crate's `manifest.toml` ships beside its component as `<name>.toml`.
        let manifest = dir.join("manifest.toml");
        if manifest.is_file() {
            let to = out.join(format!("{n}.toml"));
            std::fs::copy(&manifest, &to)
                .map_err(|e| format!("copy {} -> {}: {e}", manifest.display(), to.display()))?;
        }
    }
    polyglot::build(&out)?;
    Ok(out)
}

/// The OpenAPI fuzzer the daemon's API test runs (PyPI, pinned).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn test() -> Result<(), String> {
    plugins()?;
    build_host("debug")?;
    // The e2e test of the daemon's API finds it in <target>/toolchains.
    polyglot::pip_tool("schemathesis", SCHEMATHESIS, "schemathesis")?;
    let mut test = cargo();
    test.args(["test", "--workspace"]);
    run(test)
}

/// Builds the `flowhost` binary once (`debug` or `release`).
fn build_host(profile: &str) -> Result<(), String> {
    let mut build = cargo();
    build.args(["build", "-p", "flowhost-cli", "--bin", "flowhost"]);
    if profile == "release" {
        build.arg("--release");
    }
    run(build)
}

/// Every folder under `plugins/` that has golden cases, sorted.
fn golden_dirs() -> Result<Vec<PathBuf>, String> {
    Ok(plugin_files("golden.json")?
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect())
}

fn flowhost(profile: &str) -> Command {
    let mut c = Command::new(target_dir().join(profile).join("flowhost"));
    c.current_dir(root());
    c.env("FLOWHOST_PLUGINS", target_dir().join("plugins"));
    c
}

fn demo() -> Result<(), String> {
    plugins()?;
    build_host("debug")?;
    let mut list = flowhost("debug");
    list.args(["plugin", "list"]);
    run(list)?;
    let mut call = flowhost("debug");
    call.args([
        "plugin",
        "call",
        "text",
        "--input",
        r#"{"task": "Summarize the data", "text": "WebAssembly plugins run sandboxed. Each call gets a fresh instance."}"#,
        "-v",
    ]);
    run(call)?;
    let mut test = flowhost("debug");
    test.args(["plugin", "test"]).args(golden_dirs()?);
    run(test)?;
    // The seed's peering demo on the embedded SQLite store.
    let db = target_dir().join("demo").join("flowhost.db");
    std::fs::create_dir_all(target_dir().join("demo")).map_err(|e| format!("demo dir: {e}"))?;
    let db = db.display().to_string();
    let mut peering = flowhost("debug");
    peering.args(["run", "examples/peering/peering_demo.yml", "--db", &db]);
    run(peering)?;
    let mut executions = flowhost("debug");
    executions.args(["executions", "--db", &db, "--limit", "5"]);
    run(executions)?;
    // FlatAgents agents against the test model server.
    run_agents_example()
}

/// Where the agents example's profile expects the test model server.
const MODEL_SERVER: &str = "127.0.0.1:7781";

/// The agents example (writer/critic) against the test model server.
fn agents() -> Result<(), String> {
    plugins()?;
    build_host("debug")?;
    run_agents_example()
}

fn run_agents_example() -> Result<(), String> {
    let mut build = cargo();
    build.args(["build", "-p", "flowhost-e2e", "--bin", "model-server"]);
    run(build)?;
    let mut server = Command::new(target_dir().join("debug").join("model-server"))
        .args(["--listen", MODEL_SERVER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the test model server: {e}"))?;
    // Its first line says it listens (or it exits, e.g. the port is taken).
    let mut line = String::new();
    if let Some(out) = server.stdout.take() {
        use std::io::BufRead;
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    if !line.starts_with("listening on") {
        let _ = server.kill();
        let _ = server.wait();
        return Err(format!(
            "the test model server did not start on {MODEL_SERVER} (is the port taken?)"
        ));
    }
    eprintln!("xtask: test model server {}", line.trim());
    let db = target_dir().join("demo").join("agents.db");
    std::fs::create_dir_all(target_dir().join("demo")).map_err(|e| format!("demo dir: {e}"))?;
    let _ = std::fs::remove_file(&db);
    let db = db.display().to_string();
    let mut example = flowhost("debug");
    example.args([
        "run",
        "examples/agents/machine.yml",
        "--allow-host",
        MODEL_SERVER,
        "--db",
        &db,
        "--input",
        r#"{"product": "a solar-powered kettle"}"#,
    ]);
    let result = run(example).and_then(|()| {
        let mut executions = flowhost("debug");
        executions.args(["executions", "--db", &db, "--limit", "1"]);
        run(executions)
    });
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn bench() -> Result<(), String> {
    plugins()?;
    build_host("release")?;
    let mut echo = flowhost("release");
    echo.args(["plugin", "bench", "echo", "--input-bytes", "1024"]);
    run(echo)?;
    let mut limits = flowhost("release");
    limits.args([
        "plugin",
        "bench",
        "adversary",
        "--input",
        r#"{"attack": "loop"}"#,
        "--timeout",
        "50ms",
        "--iterations",
        "20",
    ]);
    run(limits)?;
    let mut engine = flowhost("release");
    engine.args(["bench", "engine"]);
    run(engine)?;
    let mut jobs = flowhost("release");
    jobs.args(["bench", "jobs"]);
    run(jobs)?;
    let mut executions = flowhost("release");
    executions.args(["bench", "executions"]);
    run(executions)?;
    let mut daemon = flowhost("release");
    daemon.args(["bench", "daemon"]);
    run(daemon)?;
    let mut llm = flowhost("release");
    llm.args(["bench", "llm"]);
    run(llm)
}
