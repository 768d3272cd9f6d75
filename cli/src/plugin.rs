//! `flowhost plugin call | test | inspect | list | bench` (and `new | build`
//! from `author`).

use super::{CliError, RuntimeArgs, author, loading, parse_duration};
use clap::{Args, Subcommand};
use flowhost::plugin::bench::{self, BenchReport};
use flowhost::plugin::golden::{self, Suite};
use flowhost::plugin::registry::{self, Located};
use flowhost::plugin::{
    CallContext, DirGrant, LoadSource, MemoryState, PluginSettings, Runtime, World, standalone_meta,
};
use flowhost_authoring::Project;
use flowhost_authoring::project::{BUILD_OUTPUT, files_below};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub(super) enum PluginCommand {
    /// Create a plugin project: a working example, golden cases, a machine
    /// that uses it, its manifest and the WIT it builds against.
    New(super::author::NewArgs),
    /// Build a plugin project into a component (installs the pinned
    /// toolchain once), check that it links, print size and digest.
    Build(super::author::BuildArgs),
    /// Call a plugin once and print its output as JSON.
    Call(CallArgs),
    /// Run a plugin's golden cases (input → expected output or error kind).
    Test(TestArgs),
    /// Show a component's world, imports, exports, size and info().
    Inspect(InspectArgs),
    /// List the plugins in the plugins folder.
    List(ListArgs),
    /// Measure compile time, cached load time and call latency.
    Bench(BenchArgs),
}

impl PluginCommand {
    pub(super) fn verbose(&self) -> bool {
        matches!(self, PluginCommand::Call(c) if c.verbose)
    }
}

#[derive(Args)]
pub(super) struct CallArgs {
    /// A plugin name in the plugins folder, or a path to a .wasm component.
    plugin: String,
    /// The input: JSON text, @file, or - for stdin.
    #[arg(long, default_value = "{}", value_name = "JSON|@FILE|-")]
    input: String,
    /// The plugin's config (replaces the manifest's): JSON text or @file.
    #[arg(long, value_name = "JSON|@FILE")]
    config: Option<String>,
    /// The execution state before the call, as a JSON object or @file.
    #[arg(long, value_name = "JSON|@FILE")]
    state: Option<String>,
    /// Hook plugins: the event, e.g. '{"state_enter": "a"}' or '"machine_start"'.
    #[arg(long, value_name = "JSON")]
    event: Option<String>,
    /// Time limit for the call, e.g. 250ms or 2s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Memory cap in MiB.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    memory: Option<u64>,
    /// Fuel budget (deterministic CPU limit; switches the engine to fuel metering).
    #[arg(long, value_name = "UNITS", value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,
    /// Lend a directory: HOST[:GUEST][:ro|:rw] (read-only unless :rw). Repeatable.
    #[arg(long = "dir", value_name = "HOST:GUEST[:rw]", value_parser = parse_grant)]
    dirs: Vec<DirGrant>,
    /// Print timings and the state after the call to stderr.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(super) struct TestArgs {
    /// Folders (every golden.json in or below them), golden .json files, or
    /// plugin names. A plugin project built with `plugin build` is tested
    /// with its own dist/ component.
    #[arg(required = true)]
    targets: Vec<String>,
    /// The golden cases file (for a single target given by name or .wasm path).
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Keep going: whenever a file under the targets changes, rebuild the
    /// projects that have a dist/ build and run the cases again (Ctrl-C stops).
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(super) struct InspectArgs {
    /// A plugin name in the plugins folder, or a path to a .wasm component.
    plugin: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(super) struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(super) struct BenchArgs {
    /// A plugin name in the plugins folder, or a path to a .wasm component.
    plugin: String,
    /// The input (default: a JSON object of --input-bytes bytes).
    #[arg(long, value_name = "JSON|@FILE")]
    input: Option<String>,
    /// Size of the generated input.
    #[arg(long, default_value_t = 1024)]
    input_bytes: usize,
    /// Calls per measurement.
    #[arg(long, default_value_t = 5000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    iterations: usize,
    /// Measure timeout enforcement instead: give an input that never finishes
    /// and a limit, and see how far past the limit each call is stopped.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub(super) async fn run(command: PluginCommand) -> Result<ExitCode, CliError> {
    match command {
        PluginCommand::New(a) => super::author::new(a),
        PluginCommand::Build(a) => super::author::build(a).await,
        PluginCommand::Call(a) => call(a).await,
        PluginCommand::Test(a) => test(a).await,
        PluginCommand::Inspect(a) => inspect(a).await,
        PluginCommand::List(a) => list(a).await,
        PluginCommand::Bench(a) => bench_cmd(a).await,
    }
}

/// A `--dir` grant whose host folder exists.
fn parse_grant(spec: &str) -> Result<DirGrant, String> {
    let grant = DirGrant::parse(spec)?;
    if !grant.host.is_dir() {
        return Err(format!(
            "`{}` does not exist or is not a directory",
            grant.host.display()
        ));
    }
    Ok(grant)
}

fn runtime(args: &RuntimeArgs, fuel: bool) -> Result<Runtime, CliError> {
    Runtime::new(args.runtime_config(fuel)?).map_err(|e| CliError::Other(e.to_string()))
}

fn locate(spec: &str, args: &RuntimeArgs) -> Result<Located, CliError> {
    registry::locate(spec, &args.plugins_dir())
        .map_err(CliError::plugin(format!("plugin `{spec}`")))
}

fn json_arg(what: &str, arg: &str) -> Result<Value, CliError> {
    registry::read_json_arg(what, arg).map_err(CliError::Usage)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}

async fn call(a: CallArgs) -> Result<ExitCode, CliError> {
    let input = json_arg("--input", &a.input)?;
    let located = locate(&a.plugin, &a.runtime)?;
    let context = format!("plugin `{}`", located.name);
    let mut settings = located.settings().map_err(CliError::plugin(&context))?;
    if let Some(config) = &a.config {
        settings.config = json_arg("--config", config)?;
    }
    if let Some(t) = a.timeout {
        settings.limits.timeout_ms = Some(t.as_millis().max(1) as u64);
    }
    settings.limits.memory_mb = a.memory.or(settings.limits.memory_mb);
    settings.limits.fuel = a.fuel.or(settings.limits.fuel);
    settings.grants.extend(a.dirs.iter().cloned());
    let initial = match &a.state {
        None => Default::default(),
        Some(s) => match json_arg("--state", s)? {
            Value::Object(map) => map.into_iter().collect(),
            other => {
                return Err(CliError::Usage(format!(
                    "--state must be a JSON object, not {other}"
                )));
            }
        },
    };
    let event = a
        .event
        .as_deref()
        .map(|e| json_arg("--event", e))
        .transpose()?;

    let rt = runtime(&a.runtime, settings.limits.fuel.is_some())?;
    let plugin = loading(&located.name, || rt.load_file(&located.wasm, settings))
        .map_err(CliError::plugin(&context))?;
    let state = Arc::new(MemoryState::new(initial));
    let ctx = CallContext {
        state: state.clone(),
        ..CallContext::default()
    };
    let meta = standalone_meta("call");
    let started = Instant::now();
    let output = match plugin.world() {
        World::Processor => {
            let (output, stats) = plugin
                .process_timed(&meta, &input, &ctx)
                .await
                .map_err(CliError::plugin(&context))?;
            if a.verbose {
                eprintln!(
                    "instantiate: {:.1} µs, call: {:.1} µs",
                    stats.instantiate.as_secs_f64() * 1e6,
                    stats.call.as_secs_f64() * 1e6
                );
            }
            output
        }
        World::Step => {
            let out = plugin
                .run(&meta, &input, &ctx)
                .await
                .map_err(CliError::plugin(&context))?;
            json!({"output": out.output, "next": out.next})
        }
        World::Hook => {
            let event = golden::parse_event(event.as_ref())
                .map_err(|e| CliError::Usage(format!("--event: {e}")))?;
            let out = plugin
                .on_event(&event, &meta, &input, &ctx)
                .await
                .map_err(CliError::plugin(&context))?;
            json!({"context": out.context, "redirect": out.redirect})
        }
    };
    if a.verbose {
        let report = plugin.load_report();
        eprintln!(
            "load: {:.2} ms ({}), total call: {:.2} ms, world: {}",
            report.duration.as_secs_f64() * 1e3,
            source_name(report.source),
            started.elapsed().as_secs_f64() * 1e3,
            plugin.world()
        );
        eprintln!("state after: {}", json!(state.snapshot()));
    }
    print_json(&output)?;
    Ok(ExitCode::SUCCESS)
}

fn source_name(source: LoadSource) -> &'static str {
    match source {
        LoadSource::Compiled => "compiled",
        LoadSource::DiskCache => "from cache",
        LoadSource::Memory => "already loaded",
    }
}

/// Every file under `dir`, leaving out hidden entries and build output
/// (`dist/`, `target/`, `node_modules/`, `__pycache__/`).
fn tree_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    files_below(dir, &BUILD_OUTPUT).map_err(|e| CliError::Usage(e.to_string()))
}

/// The targets with every folder that has no golden.json of its own
/// replaced by the folders below it that have one.
fn expand_targets(targets: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::new();
    for target in targets {
        let path = Path::new(target);
        if !path.is_dir() || path.join("golden.json").is_file() {
            out.push(target.clone());
            continue;
        }
        let found: Vec<String> = tree_files(path)?
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n == "golden.json"))
            .filter_map(|f| f.parent().map(|d| d.display().to_string()))
            .collect();
        if found.is_empty() {
            return Err(CliError::Usage(format!(
                "no golden.json in or below {target}"
            )));
        }
        out.extend(found); // in path order: files_below sorts
    }
    Ok(out)
}

/// A project folder's own build (`plugin build` → dist/<name>.wasm), if any.
fn project_build(dir: &Path) -> Option<(Project, PathBuf)> {
    let project = Project::open(dir).ok()?;
    let wasm = author::dist(dir).join(format!("{}.wasm", project.name));
    wasm.is_file().then_some((project, wasm))
}

/// Resolves a `plugin test` target to (plugin, cases file).
fn test_target(
    target: &str,
    cases: Option<&Path>,
    args: &RuntimeArgs,
) -> Result<(Located, PathBuf), CliError> {
    let path = Path::new(target);
    let cases_file = if path.is_dir() {
        Some(path.join("golden.json"))
    } else if target.ends_with(".json") {
        Some(path.to_path_buf())
    } else {
        None
    };
    let Some(cases_file) = cases.map(Path::to_path_buf).or(cases_file) else {
        let located = locate(target, args)?;
        let guess = located.wasm.with_extension("golden.json");
        if !guess.is_file() {
            return Err(CliError::Usage(format!(
                "no golden cases for `{target}`: pass a folder with golden.json, a .json file, or --cases FILE"
            )));
        }
        return Ok((located, guess));
    };
    if !cases_file.is_file() {
        return Err(CliError::Usage(format!(
            "{}: no such file",
            cases_file.display()
        )));
    }
    if path.is_dir()
        && let Some((_, wasm)) = project_build(path)
    {
        return Ok((locate(&wasm.display().to_string(), args)?, cases_file));
    }
    let suite = Suite::read(&cases_file).map_err(CliError::Usage)?;
    let default_name = if path.is_dir() {
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(target)
            .to_string()
    } else {
        cases_file
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or(target)
            .to_string()
    };
    let name = suite.plugin.unwrap_or(default_name);
    match locate(&name, args) {
        Err(_) if path.is_dir() && Project::open(path).is_ok() => Err(CliError::Usage(format!(
            "{target} is a plugin project without a build: run `flowhost plugin build {target}` first \
             (or pass --plugins DIR with its component)"
        ))),
        found => Ok((found?, cases_file)),
    }
}

async fn test(a: TestArgs) -> Result<ExitCode, CliError> {
    let targets = expand_targets(&a.targets)?;
    if a.cases.is_some() && targets.len() > 1 {
        return Err(CliError::Usage("--cases goes with a single target".into()));
    }
    let rt = runtime(&a.runtime, false)?;
    if !a.watch {
        let failed = run_golden(&rt, &targets, &a).await?;
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let tc = author::toolchains(None);
    loop {
        let before = look(&targets, &a.runtime);
        for target in &targets {
            if let Some((project, _)) = project_build(Path::new(target)) {
                let out = author::dist(Path::new(target));
                if let Err(e) = author::build_and_check(&project, &out, &tc).await {
                    e.report();
                }
            }
        }
        if let Err(e) = run_golden(&rt, &targets, &a).await {
            e.report();
        }
        println!("watching {} for changes (Ctrl-C stops)", targets.join(", "));
        wait_for_change(before, || look(&targets, &a.runtime)).await;
    }
}

/// What `--watch` compares: every file under the targets and the plugins
/// folder's components and manifests, with size and modification time.
type Look = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

fn look(targets: &[String], args: &RuntimeArgs) -> Look {
    let mut files = Vec::new();
    for target in targets {
        let path = Path::new(target);
        if path.is_dir() {
            // A folder that cannot be read now is looked at again next time.
            files.extend(tree_files(path).unwrap_or_default());
        } else {
            files.push(path.to_path_buf());
        }
    }
    files.extend(
        registry::list(&args.plugins_dir())
            .into_iter()
            .flat_map(|l| std::iter::once(l.wasm).chain(l.manifest)),
    );
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (f, len, modified)
        })
        .collect()
}

/// Polls until the look differs from `before` and then holds still for one
/// more look (an editor's save is often several writes).
async fn wait_for_change(before: Look, look: impl Fn() -> Look) {
    const EVERY: Duration = Duration::from_millis(250);
    let mut seen = before;
    let mut changed = false;
    loop {
        tokio::time::sleep(EVERY).await;
        let now = look();
        if now != seen {
            changed = true;
            seen = now;
        } else if changed {
            return;
        }
    }
}

/// Runs the golden cases of every target; prints one line per case and a
/// summary; returns how many failed.
async fn run_golden(rt: &Runtime, targets: &[String], a: &TestArgs) -> Result<usize, CliError> {
    let (mut passed, mut failed) = (0, 0);
    for target in targets {
        let (located, cases_file) = test_target(target, a.cases.as_deref(), &a.runtime)?;
        let suite = Suite::read(&cases_file).map_err(CliError::Usage)?;
        let settings = located
            .settings()
            .map_err(CliError::plugin(format!("plugin `{}`", located.name)))?;
        // Compile once up front, behind the spinner; a load error is reported
        // by each case below.
        let _ = loading(&located.name, || {
            rt.load_file(&located.wasm, settings.clone())
        });
        println!(
            "{} ({} cases from {})",
            located.name,
            suite.cases.len(),
            cases_file.display()
        );
        for result in golden::run_suite(rt, &located.wasm, &settings, &suite).await {
            let ms = result.duration.as_secs_f64() * 1e3;
            match result.failure {
                None => {
                    passed += 1;
                    println!("  ok    {} ({ms:.1} ms)", result.name);
                }
                Some(why) => {
                    failed += 1;
                    println!("  FAIL  {} ({ms:.1} ms): {why}", result.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed)
}

async fn inspect(a: InspectArgs) -> Result<ExitCode, CliError> {
    let located = locate(&a.plugin, &a.runtime)?;
    let context = format!("plugin `{}`", located.name);
    let bytes = std::fs::read(&located.wasm)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", located.wasm.display())))?;
    let rt = runtime(&a.runtime, false)?;
    let summary =
        loading(&located.name, || rt.inspect(&bytes)).map_err(CliError::plugin(&context))?;
    // Outbound HTTP: what the component asks for, and who allows what.
    let http = summary
        .imports
        .iter()
        .any(|i| i.starts_with("wasi:http/outgoing-handler"));
    let settings = located.settings();
    let manifest_hosts: Vec<String> = settings
        .as_ref()
        .map(|s| {
            s.http
                .allowed_hosts
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let operator_hosts: Vec<String> = rt
        .config()
        .net
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    let info = match summary.link_error {
        None => {
            let settings = settings.map_err(CliError::plugin(&context))?;
            let plugin = rt
                .load_bytes(&bytes, settings)
                .map_err(CliError::plugin(&context))?;
            Some(plugin.info().await.map_err(CliError::plugin(&context))?)
        }
        Some(_) => None,
    };
    if a.json {
        print_json(&json!({
            "file": located.wasm,
            "world": summary.world.map(|w| w.as_str()),
            "size": summary.size,
            "sha256": summary.sha256,
            "imports": summary.imports,
            "exports": summary.exports,
            "info": info,
            "link_error": summary.link_error,
            "network": {"http": http, "allowed_hosts": manifest_hosts, "operator_allows": operator_hosts},
        }))?;
    } else {
        println!("file:     {}", located.wasm.display());
        println!(
            "world:    {}",
            summary
                .world
                .map_or("none (not a flowhost plugin)", |w| w.as_str())
        );
        if let Some(info) = &info {
            println!("name:     {} {}", info.name, info.version);
            if !info.description.is_empty() {
                println!("about:    {}", info.description);
            }
        }
        println!("size:     {} bytes", summary.size);
        println!("sha256:   {}", summary.sha256);
        println!("imports:  {}", summary.imports.join("\n          "));
        println!("exports:  {}", summary.exports.join(", "));
        let list = |l: &[String]| {
            if l.is_empty() {
                "none".to_string()
            } else {
                l.join(", ")
            }
        };
        if http {
            println!(
                "network:  outbound HTTP; the manifest allows {}; the operator allows {}",
                list(&manifest_hosts),
                list(&operator_hosts)
            );
        } else {
            println!("network:  none");
        }
        if let Some(e) = &summary.link_error {
            println!("links:    NO: {e}");
        } else {
            println!("links:    yes");
        }
    }
    Ok(if summary.link_error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn list(a: ListArgs) -> Result<ExitCode, CliError> {
    let dir = a.runtime.plugins_dir();
    let rt = runtime(&a.runtime, false)?;
    let mut rows = Vec::new();
    for located in registry::list(&dir) {
        let size = std::fs::metadata(&located.wasm)
            .map(|m| m.len())
            .unwrap_or(0);
        let loaded = match located.settings() {
            Ok(settings) => loading(&located.name, || rt.load_file(&located.wasm, settings)),
            Err(e) => Err(e),
        };
        let (world, version, status) = match loaded {
            Ok(plugin) => match plugin.info().await {
                Ok(info) => (plugin.world().to_string(), info.version, "ok".to_string()),
                Err(e) => (
                    plugin.world().to_string(),
                    String::new(),
                    format!("info() failed: {e}"),
                ),
            },
            Err(e) => (String::new(), String::new(), format!("[{}] {e}", e.kind())),
        };
        rows.push(json!({
            "name": located.name, "world": world, "version": version, "size": size,
            "manifest": located.manifest.is_some(), "status": status,
        }));
    }
    if a.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no plugins in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<10} {:<10} {:>10}  {:<8} status",
        "name", "world", "version", "bytes", "manifest"
    );
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let manifest = if r["manifest"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        println!(
            "{:<20} {:<10} {:<10} {:>10}  {:<8} {}",
            s("name"),
            s("world"),
            s("version"),
            r["size"],
            manifest,
            s("status")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_cmd(a: BenchArgs) -> Result<ExitCode, CliError> {
    if a.iterations == 0 {
        return Err(CliError::Usage("--iterations must be at least 1".into()));
    }
    let located = locate(&a.plugin, &a.runtime)?;
    let context = format!("plugin `{}`", located.name);
    let mut settings: PluginSettings = located.settings().map_err(CliError::plugin(&context))?;
    let input = match &a.input {
        Some(i) => json_arg("--input", i)?,
        None => bench::sample_input(a.input_bytes),
    };
    let config = a.runtime.runtime_config(false)?;
    if let Some(limit) = a.timeout {
        settings.limits.timeout_ms = Some(limit.as_millis().max(1) as u64);
        let report =
            bench::timeout_overshoot(&config, &located.wasm, &settings, &input, a.iterations)
                .await
                .map_err(CliError::plugin(&context))?;
        if a.json {
            print_json(&report)?;
        } else {
            let o = &report.overshoot;
            println!(
                "plugin {}: {} runaway calls with a {:.0} ms limit, stopped after the deadline by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                report.plugin,
                report.runs,
                report.limit_ms,
                o.p50_us / 1e3,
                o.p99_us / 1e3,
                o.max_us / 1e3
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = bench::bench(&config, &located.wasm, &settings, &input, a.iterations)
        .await
        .map_err(CliError::plugin(&context))?;
    if a.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &BenchReport) {
    println!(
        "plugin {} ({} bytes), input {} bytes, {} calls each",
        r.plugin, r.wasm_bytes, r.input_bytes, r.iterations
    );
    println!("  compile (cranelift)        {:>10.2} ms", r.compile_ms);
    println!(
        "  load from compile cache    {:>10.2} ms (median of 9)",
        r.cached_load_ms
    );
    for (label, l) in [
        ("fresh instance + call", &r.fresh),
        ("warm instance call", &r.warm),
    ] {
        println!(
            "  {label:<26} p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs   {:>9.0} calls/s",
            l.p50_us, l.p99_us, l.mean_us, l.calls_per_sec
        );
    }
}
