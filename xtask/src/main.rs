//! Project tasks: `cargo xtask <task>`.
//!
//! - `plugins`: build every plugin under `plugins/` into
//!   `<target>/plugins/<name>.wasm`, where the tests and the demo find them:
//!   the Rust crates (profile `plugin`, one cargo run) and the Python
//!   (`plugins/python/<name>/`), JavaScript (`plugins/js/<name>/`) and C
//!   (`plugins/c/<name>/`) projects — with `flowhost_authoring`, the code
//!   behind `flowhost plugin build`, and its pinned toolchains installed
//!   into `<target>/toolchains`.
//! - `test`: `plugins`, build the `flowhost` binary once, install
//!   PostgreSQL's programs when missing (Debian's package, without its
//!   cluster: the tests start throwaway servers of their own) and the pinned
//!   OpenAPI fuzzer (schemathesis, into `<target>/toolchains`), then run every
//!   test (`cargo test --workspace`, PostgreSQL tests required, never
//!   skipped). This is the README's test command and what CI runs.
//! - `demo`: `plugins` (skipping, with one line each, the languages whose
//!   toolchain this machine lacks and cannot install), then show the plugin
//!   runtime at work, run the peering example, and the agents example
//!   (below). `test` needs every language.
//! - `agents`: the FlatAgents writer/critic example (`examples/agents/`)
//!   against the test model server on 127.0.0.1:7781.
//! - `bench`: `plugins`, a release build of the host, then the plugin, engine,
//!   job, distributed-execution, daemon and LLM-call benchmarks; the job and
//!   distributed-execution ones on SQLite and on a throwaway PostgreSQL
//!   server (started on a free loopback port, stopped at the end).
//! - `fuzz [N]`: the fuzz tests of the parsers of outside input with N
//!   inputs per target (default 200000; `cargo xtask test` runs 5000).
//! - `chaos [--rounds N] [--seed S]`: `plugins`, the host, then N rounds of
//!   the crash-point harness (default 1000; `cargo xtask test` runs 100),
//!   starting at seed S (default: from the clock).

use flowhost_authoring::project::{BUILD_OUTPUT, files_below};
use flowhost_authoring::{BuildOptions, Built, Lang, Project, Toolchains};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "plugins" => plugins(Need::Every).map(|_| ()),
        "test" => test(),
        "demo" => demo(),
        "agents" => agents(),
        "bench" => bench(),
        "fuzz" => fuzz(std::env::args().nth(2)),
        "chaos" => chaos(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => Err(
            "usage: cargo xtask <plugins|test|demo|agents|bench|fuzz [N]|chaos [--rounds N] [--seed S]>"
                .to_string(),
        ),
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

/// Every file named `name` under `plugins/` (not in build output), sorted.
fn plugin_files(name: &str) -> Result<Vec<PathBuf>, String> {
    Ok(files_below(&root().join("plugins"), &BUILD_OUTPUT)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect())
}

/// Every plugin crate (a Cargo.toml under plugins/ with a cdylib).
fn plugin_crates() -> Result<Vec<Project>, String> {
    let mut crates = Vec::new();
    for path in plugin_files("Cargo.toml")? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !text.contains("cdylib") {
            continue;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        crates.push(Project::open(dir).map_err(|e| e.to_string())?);
    }
    crates.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(crates)
}

/// The projects in `plugins/<lang>/<name>/` for the other languages.
fn polyglot_projects() -> Result<Vec<Project>, String> {
    let mut projects = Vec::new();
    for lang in ["python", "js", "c"] {
        let Ok(entries) = std::fs::read_dir(root().join("plugins").join(lang)) else {
            continue;
        };
        for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            projects.push(Project::open(&dir).map_err(|e| e.to_string())?);
        }
    }
    projects.sort_by(|a, b| (a.lang, &a.name).cmp(&(b.lang, &b.name)));
    Ok(projects)
}

/// The toolchains of this checkout: `<target>/toolchains`.
fn toolchains() -> Toolchains {
    Toolchains::at(target_dir().join("toolchains"), |note| {
        eprintln!("xtask: {note}")
    })
}

/// Whether every language must build (`test`), or the demo may go on
/// without the languages this machine has no toolchain for.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Every,
    WhatThisMachineCan,
}

/// Builds every plugin; returns the source folders of those skipped.
fn plugins(need: Need) -> Result<Vec<PathBuf>, String> {
    let tc = toolchains();
    let out = target_dir().join("plugins");
    let show = |b: &Built| {
        let state = if b.rebuilt { "built" } else { "up to date" };
        eprintln!(
            "xtask: plugin {:<16} {:>8} bytes  {} ({}, {state})",
            b.name,
            b.size,
            b.wasm.display(),
            b.lang
        );
    };
    let rust = BuildOptions {
        out: out.clone(),
        wit: None,
        cargo_profile: Some("plugin".into()),
    };
    for built in flowhost_authoring::build::build_rust(&plugin_crates()?, &rust, &tc)
        .map_err(|e| e.to_string())?
    {
        show(&built);
    }
    // The repository's plugins build against its own wit/.
    let others = BuildOptions {
        wit: Some(root().join("wit")),
        ..rust
    };
    let mut skipped = Vec::new();
    let mut missing: Option<Lang> = None;
    for project in polyglot_projects()? {
        if missing == Some(project.lang) {
            skipped.push(project.dir);
            continue;
        }
        match flowhost_authoring::build(&project, &others, &tc) {
            Ok(built) => show(&built),
            Err(e @ flowhost_authoring::Error::ToolchainMissing { .. })
                if need == Need::WhatThisMachineCan =>
            {
                eprintln!("xtask: skipped: {e}");
                missing = Some(project.lang);
                skipped.push(project.dir);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(skipped)
}

/// The OpenAPI fuzzer the daemon's API test runs (PyPI, pinned).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn test() -> Result<(), String> {
    plugins(Need::Every)?;
    build_host("debug")?;
    postgres()?;
    // The e2e test of the daemon's API finds it in <target>/toolchains.
    toolchains()
        .pip_tool(Lang::Python, "schemathesis", SCHEMATHESIS, "schemathesis")
        .map_err(|e| e.to_string())?;
    browser()?;
    let mut test = cargo();
    // The PostgreSQL tests start their own servers and the dashboard test
    // its browser; here they never skip.
    test.env("FLOWHOST_REQUIRE_PG", "1")
        .env("FLOWHOST_REQUIRE_BROWSER", "1")
        .args(["test", "--workspace"]);
    run(test)
}

/// The version of playwright-core the dashboard's browser test drives
/// Chromium with.
const PLAYWRIGHT_CORE: &str = "1.65.1";

/// The dashboard's browser test needs Debian's Chromium, node, and
/// playwright-core (installed into `<target>/browser`, pinned): installed
/// when missing.
fn browser() -> Result<(), String> {
    let have = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").is_file() {
        missing.push("chromium");
    }
    if !have("node", "--version") {
        missing.push("nodejs");
    }
    if !have("npm", "--version") {
        missing.push("npm");
    }
    if !missing.is_empty() {
        if !flowhost_authoring::toolchain::can_apt_install() {
            return Err(format!(
                "the dashboard's browser test needs Debian's {} (sudo apt-get install {})",
                missing.join(", "),
                missing.join(" ")
            ));
        }
        eprintln!(
            "xtask: installing {} (Debian) for the dashboard's browser test",
            missing.join(", ")
        );
        if !flowhost_authoring::toolchain::apt_install(&missing) {
            return Err(format!("apt-get could not install {}", missing.join(" ")));
        }
    }
    let dir = target_dir().join("browser");
    let installed = std::fs::read_to_string(dir.join("node_modules/playwright-core/package.json"))
        .is_ok_and(|t| t.contains(&format!("\"version\": \"{PLAYWRIGHT_CORE}\"")));
    if installed {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("package.json"), "{\"private\": true}\n")
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!(
        "xtask: installing playwright-core {PLAYWRIGHT_CORE} into {}",
        dir.display()
    );
    let mut npm = Command::new("npm");
    npm.current_dir(&dir).args([
        "install",
        "--no-audit",
        "--no-fund",
        "--save-exact",
        &format!("playwright-core@{PLAYWRIGHT_CORE}"),
    ]);
    run(npm)
}

/// PostgreSQL's programs, for the tests that start throwaway servers:
/// installed from Debian's packages when missing (as root with apt-get),
/// without the package's own cluster (the tests start and stop their own).
fn postgres() -> Result<(), String> {
    if pgcluster::bin_dir().is_some() {
        return Ok(());
    }
    if flowhost_authoring::toolchain::can_apt_install() {
        eprintln!("xtask: installing PostgreSQL (Debian's postgresql package) for the tests");
        // No cluster of the package's own (a server left running on 5432):
        // postgresql-common first, told so in its settings, then the server
        // (the way PostgreSQL's own container images do it).
        if !flowhost_authoring::toolchain::apt_install(&["postgresql-common"]) {
            return Err(format!(
                "apt-get could not install postgresql-common; {}",
                pgcluster::HOW_TO_INSTALL
            ));
        }
        let conf = Path::new("/etc/postgresql-common/createcluster.conf");
        let text = std::fs::read_to_string(conf).unwrap_or_default();
        if !text
            .lines()
            .any(|l| l.trim_start().starts_with("create_main_cluster"))
        {
            std::fs::write(conf, format!("{text}\ncreate_main_cluster = false\n"))
                .map_err(|e| format!("{}: {e}", conf.display()))?;
        }
        if flowhost_authoring::toolchain::apt_install(&["postgresql"])
            && pgcluster::bin_dir().is_some()
        {
            return Ok(());
        }
    }
    Err(pgcluster::HOW_TO_INSTALL.to_string())
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

/// Every folder under `plugins/` that has golden cases, sorted, but those
/// of `skipped` plugins.
fn golden_dirs(skipped: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    Ok(plugin_files("golden.json")?
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| !skipped.contains(d))
        .collect())
}

fn flowhost(profile: &str) -> Command {
    let mut c = Command::new(target_dir().join(profile).join("flowhost"));
    c.current_dir(root());
    c.env("FLOWHOST_PLUGINS", target_dir().join("plugins"));
    c
}

fn demo() -> Result<(), String> {
    let skipped = plugins(Need::WhatThisMachineCan)?;
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
    test.args(["plugin", "test"]).args(golden_dirs(&skipped)?);
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
    plugins(Need::WhatThisMachineCan)?;
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

fn fuzz(iterations: Option<String>) -> Result<(), String> {
    let n = iterations.unwrap_or_else(|| "200000".into());
    if n.parse::<u64>().map_or(true, |n| n == 0) {
        return Err(format!(
            "fuzz: `{n}` is not a number of inputs (e.g. cargo xtask fuzz 200000)"
        ));
    }
    e2e_module("fuzz::", &[("FLOWHOST_FUZZ_ITERATIONS", n)])
}

/// Runs one module of the e2e tests with its output shown and `env` set.
fn e2e_module(module: &str, env: &[(&str, String)]) -> Result<(), String> {
    let mut test = cargo();
    test.envs(env.iter().map(|(k, v)| (k, v))).args([
        "test",
        "-p",
        "flowhost-e2e",
        "--test",
        "e2e",
        "--",
        module,
        "--nocapture",
    ]);
    run(test)
}

fn chaos(args: &[String]) -> Result<(), String> {
    let usage = "usage: cargo xtask chaos [--rounds N] [--seed S]";
    let (mut rounds, mut seed) = ("1000".to_string(), None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag != "--rounds" && flag != "--seed" {
            return Err(format!("chaos: unknown argument `{flag}`; {usage}"));
        }
        let value = args
            .next()
            .filter(|v| v.parse::<u64>().is_ok_and(|n| n > 0 || flag == "--seed"))
            .ok_or_else(|| format!("chaos: {flag} needs a number (rounds: 1 or more); {usage}"))?;
        match flag.as_str() {
            "--rounds" => rounds = value.clone(),
            _ => seed = Some(value.clone()),
        }
    }
    plugins(Need::Every)?;
    build_host("debug")?;
    let mut env = vec![("FLOWHOST_CHAOS_ROUNDS", rounds)];
    env.extend(seed.map(|s| ("FLOWHOST_CHAOS_SEED", s)));
    e2e_module("chaos::", &env)
}

fn bench() -> Result<(), String> {
    plugins(Need::Every)?;
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
    // The store benchmarks run on SQLite, then on a throwaway PostgreSQL
    // server on this machine (its defaults: fsync and synchronous_commit on).
    postgres()?;
    let cluster = pgcluster::PgCluster::start(&[])
        .map_err(|e| format!("cannot start a PostgreSQL server for the benchmarks: {e}"))?;
    for bench in ["jobs", "executions"] {
        let db = cluster.database(&format!("bench_{bench}"))?;
        let mut cmd = flowhost("release");
        cmd.args(["bench", bench, "--postgres", &db]);
        run(cmd)?;
    }
    drop(cluster);
    let mut daemon = flowhost("release");
    daemon.args(["bench", "daemon"]);
    run(daemon)?;
    // A million executions, seeded once into <target>/bench (about 730 MB).
    let db = target_dir().join("bench").join("dashboard.db");
    let mut dashboard = flowhost("release");
    dashboard.args(["bench", "dashboard", "--db"]).arg(&db);
    run(dashboard)?;
    let mut llm = flowhost("release");
    llm.args(["bench", "llm"]);
    run(llm)
}
