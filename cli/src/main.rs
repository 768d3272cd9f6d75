//! The `flowhost` binary: the command line. Thin: parse flags, call the
//! `flowhost` library (its services do the work), print. Errors print as `error[<kind>]: <message>` and exit with the kind's code
//! (see `ErrorKind::exit_code`; 1 = other failure, 2 = bad usage, 3 = invalid
//! machine config).

mod author;
mod bench;
mod bench_daemon;
mod bench_dashboard;
mod bench_llm;
mod graph;
mod jobs;
mod plugin;
mod run;
mod serve;
mod validate;

use clap::{Args, Parser, Subcommand};
use flowhost::plugin::{PluginError, RuntimeConfig, registry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flowhost",
    version,
    about = "A workflow host whose steps are sandboxed WebAssembly plugins"
)]
struct Cli {
    /// Log filter, e.g. `info` or `warn,plugin=debug` (default: `warn,plugin=info`; env FLOWHOST_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Call, test, inspect, list and benchmark plugins.
    #[command(subcommand)]
    Plugin(Box<plugin::PluginCommand>),
    /// Check machine configs (file, line and state for every problem); exit 3 if any is invalid.
    Validate(validate::ValidateArgs),
    /// Run a machine: prints its output (stdout) and execution id (stderr).
    Run(run::RunArgs),
    /// Continue an execution from its latest checkpoint.
    Resume(run::ResumeArgs),
    /// Put an execution on the run queue for `flowhost worker --executions`; prints its id (or, with --wait, its result).
    Submit(run::SubmitArgs),
    /// Map items through one plugin and reduce the outputs with another, on the run queue.
    Mapreduce(run::MapReduceArgs),
    /// Show one execution: status, state, context, result.
    Status(run::StatusArgs),
    /// List executions, newest first.
    Executions(run::ExecutionsArgs),
    /// Send a signal to an execution waiting in a `wait_for` state, then continue it.
    Signal(run::SignalArgs),
    /// Print a durable result: flowhost://<id>/result (or flatagents://, or an id).
    Result(run::ResultArgs),
    /// Show what happened to an execution, as a timeline.
    History(run::HistoryArgs),
    /// Wait for an execution's result (exit 6 if --timeout passes first).
    Wait(run::WaitArgs),
    /// Cancel an execution in any status (queued, waiting, backing off, running, parked) and its children.
    Cancel(run::CancelArgs),
    /// Re-run a failed execution from the state that failed, keeping its history.
    Retry(run::RetryArgs),
    /// Draw a machine's state diagram (with its child machines).
    Graph(graph::GraphArgs),
    /// Job pools: push, list, stats, requeue.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Registered workers and their heartbeats.
    Workers(jobs::WorkersArgs),
    /// Take jobs from a pool and run them (until SIGTERM, or --exit-when-empty).
    Worker(jobs::WorkerArgs),
    /// Spawn worker processes for a pool: min(depth, max) − active.
    Checker(jobs::CheckerArgs),
    /// Mark workers without a recent heartbeat lost and release their jobs.
    Reaper(jobs::ReaperArgs),
    /// Run the daemon: the HTTP API, workers that scale with the queues, the reaper.
    Serve(Box<serve::ServeArgs>),
    /// Benchmarks of the engine.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Linear machine (states/s) and foreach (items/s) on memory and SQLite stores.
    Engine(run::BenchArgs),
    /// Jobs through worker processes: jobs/s, and latency of a paced stream.
    Jobs(jobs::BenchJobsArgs),
    /// Submitted executions through worker processes: states/s, per-state
    /// overhead, foreach items/s, and submit→result latency of a paced stream.
    Executions(bench::BenchExecutionsArgs),
    /// The daemon over HTTP: submit→result latency, submissions and state
    /// increments per second, warm-pool vs fresh plugin calls per language.
    Daemon(bench_daemon::BenchDaemonArgs),
    /// The dashboard's reads at scale: seeds an SQLite store (a million
    /// executions by default), prints its size and query plans, and times
    /// the page's requests (server time by `Server-Timing`, p50/p95).
    Dashboard(bench_dashboard::BenchDashboardArgs),
    /// The host's overhead per LLM call: the llm plugin and the HTTP round
    /// trip to a loopback endpoint, without the endpoint's own time.
    Llm(bench_llm::BenchLlmArgs),
}

/// Where plugins live and how the runtime is sized.
#[derive(Args, Clone)]
struct RuntimeArgs {
    /// The plugins folder (default: $FLOWHOST_PLUGINS, else ./plugins).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Where compiled plugins are cached (default: $FLOWHOST_CACHE_DIR, else ~/.cache/flowhost/compiled).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the compile cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Plugin instances that may be alive at once.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: u32,
    /// Let plugins send HTTP requests to HOST[:PORT] (repeatable; `*.domain`
    /// and `*` work). A plugin's manifest must list the host too. Also
    /// $FLOWHOST_ALLOW_HOSTS (comma separated).
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    allow_hosts: Vec<String>,
    /// A TOML file of secrets the host adds to requests for their hosts
    /// (default: $FLOWHOST_SECRETS). Provider keys such as OPENAI_API_KEY
    /// are taken from the environment as well.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
}

impl RuntimeArgs {
    fn plugins_dir(&self) -> PathBuf {
        registry::plugins_dir(self.plugins.as_deref())
    }

    /// The runtime's settings; bad `--allow-host` rules or secrets are a
    /// usage error.
    fn runtime_config(&self, fuel: bool) -> Result<RuntimeConfig, CliError> {
        let net =
            flowhost::plugin::NetConfig::from_flags(&self.allow_hosts, self.secrets.as_deref())
                .map_err(CliError::Usage)?;
        let defaults = RuntimeConfig::default();
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or(defaults.cache_dir.clone())
        };
        Ok(RuntimeConfig {
            max_instances: self.max_instances,
            fuel,
            cache_dir,
            net: std::sync::Arc::new(net),
            ..defaults
        })
    }
}

/// A failure of a command.
#[derive(Debug)]
enum CliError {
    /// A plugin failed to load or a call failed: exit code by kind.
    Plugin { context: String, error: PluginError },
    /// Bad flags or arguments.
    Usage(String),
    /// A machine config with problems (exit 3).
    Config(String),
    /// Anything else (I/O, runtime setup, failed golden cases).
    Other(String),
}

impl CliError {
    fn plugin(context: impl Into<String>) -> impl FnOnce(PluginError) -> CliError {
        let context = context.into();
        move |error| CliError::Plugin { context, error }
    }

    fn report(&self) -> ExitCode {
        match self {
            CliError::Plugin { context, error } => {
                eprintln!("error[{}]: {context}: {error}", error.kind());
                ExitCode::from(error.kind().exit_code())
            }
            CliError::Usage(m) => {
                eprintln!("error[usage]: {m}");
                ExitCode::from(2)
            }
            CliError::Config(m) => {
                for line in m.lines() {
                    eprintln!("error: {line}");
                }
                ExitCode::from(validate::INVALID_CONFIG)
            }
            CliError::Other(m) => {
                eprintln!("error: {m}");
                ExitCode::from(1)
            }
        }
    }
}

/// Runs a plugin load behind a spinner (on a terminal only): the first load
/// of a large plugin compiles it, which takes seconds for Python or JavaScript.
fn loading<T>(name: &str, load: impl FnOnce() -> T) -> T {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "loading {name} (compiled on first use, then cached)"
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = load();
    spinner.finish_and_clear();
    out
}

/// Parses a duration flag (see [`flowhost::duration::parse`]).
/// A clap parser for a status enum: its spellings are the possible values.
macro_rules! status_arg {
    ($t:ty) => {
        clap::builder::TypedValueParser::try_map(
            clap::builder::PossibleValuesParser::new(<$t>::ALL.iter().map(|s| s.as_str())),
            |s: String| <$t>::parse(&s).ok_or(format!("unknown status `{s}`")),
        )
    };
}
pub(crate) use status_arg;

fn parse_duration(text: &str) -> Result<Duration, String> {
    flowhost::duration::parse(text)
}

fn init_tracing(filter: Option<&str>, verbose: bool) {
    // The PostgreSQL pool's own warnings repeat what the store says of a
    // lost connection, once per connection: errors only.
    let default = if verbose {
        "info,plugin=debug,deadpool=error"
    } else {
        "warn,plugin=info,deadpool=error"
    };
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("FLOWHOST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter `{filter}` ({e}); using `{default}`");
        tracing_subscriber::EnvFilter::new(default)
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`flowhost executions | head -1`) instead of failing to print.
    // SAFETY: called before any thread starts; SIG_DFL is always valid.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = flowhost::crash::check_env() {
        return CliError::Usage(e).report();
    }
    let verbose = match &cli.command {
        Command::Plugin(c) => c.verbose(),
        _ => false,
    };
    init_tracing(cli.log.as_deref(), verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return CliError::Other(format!("cannot start the async runtime: {e}")).report(),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Plugin(c) => plugin::run(*c).await,
            Command::Validate(a) => validate::run(a),
            Command::Run(a) => run::run(a).await,
            Command::Resume(a) => run::resume(a).await,
            Command::Submit(a) => run::submit(a).await,
            Command::Mapreduce(a) => run::mapreduce(a).await,
            Command::Status(a) => run::status(a).await,
            Command::Executions(a) => run::executions(a).await,
            Command::Signal(a) => run::signal(a).await,
            Command::Result(a) => run::result(a).await,
            Command::History(a) => run::history(a).await,
            Command::Wait(a) => run::wait(a).await,
            Command::Cancel(a) => run::cancel(a).await,
            Command::Retry(a) => run::retry(a).await,
            Command::Graph(a) => graph::run(a),
            Command::Bench(BenchCommand::Engine(a)) => run::bench(a).await,
            Command::Bench(BenchCommand::Jobs(a)) => jobs::bench(a).await,
            Command::Bench(BenchCommand::Executions(a)) => bench::executions(a).await,
            Command::Bench(BenchCommand::Daemon(a)) => bench_daemon::daemon(a).await,
            Command::Bench(BenchCommand::Dashboard(a)) => bench_dashboard::dashboard(a).await,
            Command::Bench(BenchCommand::Llm(a)) => bench_llm::llm(a).await,
            Command::Jobs(c) => jobs::run(c).await,
            Command::Workers(a) => jobs::workers(a).await,
            Command::Worker(a) => jobs::worker(a).await,
            Command::Checker(a) => jobs::checker(a).await,
            Command::Reaper(a) => jobs::reaper(a).await,
            Command::Serve(a) => serve::serve(*a).await,
        }
    });
    // Blocking tasks still running (a plugin compiling for the daemon's
    // catalog) are not waited for: their results have no reader any more.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Every command, flag and argument says what it is for.
    #[test]
    fn every_flag_and_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "flowhost", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
