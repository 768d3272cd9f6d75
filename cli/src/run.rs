//! `flowhost run / resume / status / executions / signal / result`: machines
//! on a store (embedded SQLite by default, or `--memory`).

use super::{CliError, RuntimeArgs};
use clap::{Args, ValueEnum};
use flowhost::backend::{
    self, Backend, Durability, ListFilter, Location, MemoryBackend, SqliteBackend, parse_result_uri,
};
use flowhost::engine::history::Event;
use flowhost::engine::services::{self, Delivery};
use flowhost::engine::{Engine, EngineError, Observer, Outcome, ResumeOptions, Status};
use flowhost::plugin::{Runtime, registry};
use flowhost::spawn::Spawner;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Exit code of a run whose machine ended `failed`.
const EXECUTION_FAILED: u8 = 4;
/// Exit code of a run that is parked waiting for a signal.
const EXECUTION_WAITING: u8 = 5;
/// Exit code of `wait` when its `--timeout` passed first.
const STILL_RUNNING: u8 = 6;

/// The store of a command that writes: an SQLite database file or a
/// PostgreSQL database.
#[derive(Args, Clone)]
pub(super) struct StoreArgs {
    /// SQLite database file, or a postgres://user:password@host:port/database URL
    /// (default: $FLOWHOST_DB, else .flowhost/flowhost.db).
    #[arg(long, value_name = "PATH|URL")]
    db: Option<PathBuf>,
    /// How hard SQLite commits wait for the disk (PostgreSQL: the server's
    /// synchronous_commit decides).
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    sync: SyncMode,
}

/// The store of a command that only reads: an existing database.
#[derive(Args, Clone)]
pub(super) struct ReadStoreArgs {
    /// SQLite database file, or a postgres:// URL (default: $FLOWHOST_DB, else
    /// .flowhost/flowhost.db); it must exist.
    #[arg(long, value_name = "PATH|URL")]
    db: Option<PathBuf>,
}

/// The store of `run`: a database, or memory for a run that ends with the process.
#[derive(Args, Clone)]
pub(super) struct RunStoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep everything in memory: nothing survives the process (no resume, no result later).
    #[arg(long, conflicts_with = "db")]
    memory: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum SyncMode {
    /// Survives power loss (fsync on every commit).
    Full,
    /// Survives a crash of the process.
    Normal,
}

/// The store the flags or the environment name, and whether it is the
/// default one.
fn location(flag: &Option<PathBuf>) -> (Location, bool) {
    match (flag, std::env::var_os("FLOWHOST_DB")) {
        (Some(p), _) => (Location::parse(p.as_os_str()), false),
        (None, Some(p)) => (Location::parse(&p), false),
        (None, None) => (
            Location::Sqlite(PathBuf::from(".flowhost").join("flowhost.db")),
            true,
        ),
    }
}

fn store_error(e: flowhost::backend::BackendError) -> CliError {
    CliError::Other(e.to_string())
}

impl StoreArgs {
    /// The flags that open this same store from another process.
    pub(super) fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(db) = &self.db {
            args.push("--db".to_string());
            args.push(db.display().to_string());
        }
        if let SyncMode::Normal = self.sync {
            args.extend(["--sync".to_string(), "normal".to_string()]);
        }
        args
    }

    /// Where flowhost keeps the machines it writes itself (MapReduce): a
    /// `generated` folder beside an SQLite database, `.flowhost/generated`
    /// with a server's.
    pub(super) fn generated(&self) -> PathBuf {
        let (location, _) = location(&self.db);
        location
            .folder()
            .map_or_else(|| PathBuf::from(".flowhost"), std::path::Path::to_path_buf)
            .join("generated")
    }

    fn durability(&self) -> Durability {
        match self.sync {
            SyncMode::Full => Durability::Full,
            SyncMode::Normal => Durability::Normal,
        }
    }

    /// Opens the store, creating it (and the default `.flowhost/` folder)
    /// when it does not exist: for commands that add work.
    pub(super) async fn open_or_create(&self) -> Result<Arc<dyn Backend>, CliError> {
        let (location, default) = location(&self.db);
        if default && let Some(dir) = location.folder() {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        backend::open(&location, self.durability(), true)
            .await
            .map_err(store_error)
    }

    /// Opens an existing store: for commands that act on stored work.
    pub(super) async fn open_existing(&self) -> Result<Arc<dyn Backend>, CliError> {
        let (location, _) = location(&self.db);
        backend::open(&location, self.durability(), false)
            .await
            .map_err(store_error)
    }
}

impl ReadStoreArgs {
    /// Opens an existing store; never creates one.
    pub(super) async fn open(&self) -> Result<Arc<dyn Backend>, CliError> {
        let (location, _) = location(&self.db);
        backend::open(&location, Durability::Full, false)
            .await
            .map_err(store_error)
    }
}

impl RunStoreArgs {
    async fn open(&self) -> Result<Arc<dyn Backend>, CliError> {
        if self.memory {
            return Ok(Arc::new(MemoryBackend::new()));
        }
        self.store.open_or_create().await
    }

    /// How to name this store in a `flowhost resume` hint.
    fn resume_flags(&self) -> String {
        self.store
            .to_args()
            .iter()
            .map(|a| format!(" {a}"))
            .collect()
    }
}

#[derive(Args)]
pub(super) struct RunArgs {
    /// The machine config (spec: flatmachine).
    machine: PathBuf,
    /// Input as JSON, or @file.json.
    #[arg(long, value_name = "JSON|@FILE")]
    input: Option<String>,
    #[command(flatten)]
    store: RunStoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Print the whole outcome (id, status, output) instead of just the output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct ResumeArgs {
    /// The execution id.
    id: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Print the whole outcome (id, status, output) instead of just the output.
    #[arg(long)]
    json: bool,
    /// Continue on the machine files and plugins as they are now instead of
    /// the definition the execution started with (its current state must
    /// still exist). Without it, a changed plugin is refused.
    #[arg(long)]
    upgrade: bool,
}

#[derive(Args)]
pub(super) struct RetryArgs {
    /// The failed execution (a root).
    id: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Print the whole outcome (id, status, output) instead of just the output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct StatusArgs {
    /// The execution id.
    id: String,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct ExecutionsArgs {
    /// Only executions with this status.
    #[arg(long, value_parser = super::status_arg!(Status))]
    status: Option<Status>,
    /// Include child executions.
    #[arg(long)]
    all: bool,
    /// Most executions listed.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct SignalArgs {
    /// The waiting execution.
    id: String,
    /// The channel its `wait_for` names.
    channel: String,
    /// Data for the signal as JSON, or @file.json (default: null).
    #[arg(long, value_name = "JSON|@FILE")]
    data: Option<String>,
    /// Only store the signal; do not continue the execution here.
    #[arg(long)]
    no_resume: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(super) struct ResultArgs {
    /// flowhost://<id>/result, flatagents://<id>/result or an execution id.
    uri: String,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct HistoryArgs {
    /// The execution.
    id: String,
    /// Most events shown (the oldest first).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// One JSON object per line (seq, at_ms, event, …) instead of a timeline.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct WaitArgs {
    /// The execution.
    id: String,
    /// Give up after this long (e.g. `30s`, `500ms`); exit 6, the execution
    /// goes on. Without it, wait until it finishes.
    #[arg(long, value_parser = super::parse_duration)]
    timeout: Option<std::time::Duration>,
    #[command(flatten)]
    store: ReadStoreArgs,
}

#[derive(Args)]
pub(super) struct SubmitArgs {
    /// The machine config.
    machine: PathBuf,
    /// The input: JSON text, @file, or - for stdin.
    #[arg(long)]
    input: Option<String>,
    #[command(flatten)]
    queued: QueuedArgs,
    /// The execution's own deadline, e.g. 10m: not finished by then, it is
    /// cancelled with kind `timeout` wherever it is (the machine's
    /// `settings.timeout` applies too; the earlier wins).
    #[arg(long, value_parser = super::parse_duration)]
    deadline: Option<std::time::Duration>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// A `--id` flag: an execution id as the store and the API accept it.
fn parse_execution_id(id: &str) -> Result<String, String> {
    flowhost::backend::check_execution_id(id).map(|()| id.to_string())
}

/// What `submit` and `mapreduce` share: the execution's id, and whether
/// to wait for its result.
#[derive(Args)]
pub(super) struct QueuedArgs {
    /// The execution's id: submitting the same id again changes nothing
    /// (1–200 letters, digits and - _ . :).
    #[arg(long, value_parser = parse_execution_id)]
    id: Option<String>,
    /// Wait for the result and print it (as `flowhost wait`).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (exit 6; the execution goes on).
    #[arg(long, requires = "wait", value_parser = super::parse_duration)]
    timeout: Option<std::time::Duration>,
}

impl QueuedArgs {
    /// After a submit: says what happened (on stderr), then prints the id,
    /// or waits for the result and prints it.
    async fn report(
        &self,
        backend: &dyn Backend,
        sent: &flowhost::engine::queue::Submitted,
        created: String,
    ) -> Result<ExitCode, CliError> {
        if sent.created {
            eprintln!("{created}");
        } else {
            eprintln!("execution {} exists already: not submitted again", sent.id);
        }
        if !self.wait {
            println!("{}", sent.id);
            return Ok(ExitCode::SUCCESS);
        }
        await_result(backend, &sent.id, self.timeout).await
    }
}

#[derive(Args)]
pub(super) struct MapReduceArgs {
    /// The processor plugin that maps one item.
    #[arg(long)]
    mapper: String,
    /// The processor plugin that gets the list of the mapper's outputs.
    #[arg(long)]
    reducer: String,
    /// The items: a JSON list, @file.json, or - for stdin.
    #[arg(long, value_name = "JSON|@FILE")]
    items: String,
    /// Items mapped at once.
    #[arg(long, default_value_t = 16)]
    parallel: u32,
    /// Keep this many mapper instances warm (made ahead, reused across
    /// items) instead of a fresh instance per item.
    #[arg(long, value_name = "N")]
    warm: Option<u32>,
    #[command(flatten)]
    queued: QueuedArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(super) struct CancelArgs {
    /// The execution.
    id: String,
    /// Why: kept as the execution's error and result.
    #[arg(long, default_value = "cancelled by flowhost cancel")]
    reason: String,
    /// Also cancel children it launched (fire-and-forget), which otherwise
    /// keep running: `--children launched`.
    #[arg(long, value_enum)]
    children: Option<CancelChildren>,
    /// How long to wait for a running execution's worker to stop it, e.g.
    /// 30s (it is asked at once; exit 6 if it has not ended by then).
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum CancelChildren {
    /// Launched (detached) children too.
    Launched,
}

/// An engine for one command, and its progress display (on a terminal).
struct Session {
    engine: Arc<Engine>,
    bars: Option<Arc<Bars>>,
}

/// `store` are the flags that open the same store from another process
/// (none for `--memory`): the engine's `spawn_workers` passes them on.
fn engine(
    backend: Arc<dyn Backend>,
    store: Option<Vec<String>>,
    runtime: &RuntimeArgs,
) -> Result<Session, CliError> {
    let rt = Runtime::new(runtime.runtime_config(false)?)
        .map_err(|e| CliError::Other(format!("cannot start the plugin runtime: {e}")))?;
    let dir = registry::plugins_dir(runtime.plugins.as_deref());
    let mut engine = Engine::new(backend, Arc::new(rt), dir.clone());
    if let Some(flags) = store {
        engine = engine.with_spawner(
            Spawner::current(flags, &dir).map_err(|e| CliError::Other(e.to_string()))?,
        );
    }
    if std::io::stderr().is_terminal() {
        let bars = Arc::new(Bars::default());
        Ok(Session {
            engine: Arc::new(engine.with_observer(bars.clone())),
            bars: Some(bars),
        })
    } else {
        Ok(Session {
            engine: Arc::new(engine.with_observer(Arc::new(Logs))),
            bars: None,
        })
    }
}

pub(super) fn engine_error(e: EngineError) -> CliError {
    match e {
        EngineError::Config(errors) => CliError::Config(errors.to_string()),
        EngineError::Plugin { context, error } => CliError::Plugin { context, error },
        EngineError::NotFound(_) | EngineError::Finished(_) => CliError::Usage(e.to_string()),
        EngineError::Changed(m) => CliError::Other(format!(
            "{m}\nthe execution runs the definition it started with; `flowhost resume --upgrade` continues it on what is installed now"
        )),
        other => CliError::Other(other.to_string()),
    }
}

/// Prints an outcome: the output (or the whole outcome with --json) on
/// stdout, the id and status on stderr.
async fn report(session: &Session, o: &Outcome, json: bool) -> Result<ExitCode, CliError> {
    let engine = &session.engine;
    if json {
        println!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
    } else if let Some(output) = &o.output {
        println!(
            "{}",
            serde_json::to_string_pretty(output).unwrap_or_default()
        );
    }
    eprintln!("execution {} ({}): {}", o.id, o.machine, o.status.as_str());
    let detached = engine.detached_running();
    if detached > 0 {
        eprintln!(
            "waiting for {detached} launched execution(s) to finish (their results stay readable with `flowhost result`)"
        );
        engine.wait_detached().await;
    }
    Ok(match o.status {
        Status::Done => ExitCode::SUCCESS,
        Status::Queued => {
            eprintln!(
                "it is on the run queue: a worker continues it (flowhost worker --executions)"
            );
            ExitCode::SUCCESS
        }
        Status::Waiting => {
            if let Some(w) = &o.waiting {
                eprintln!(
                    "waiting for a signal on `{}`; send it with: flowhost signal {} {} --data '<json>'",
                    w.channel, w.execution, w.channel
                );
            }
            ExitCode::from(EXECUTION_WAITING)
        }
        _ => {
            if let Some(e) = &o.error {
                eprintln!("error[{}]: state `{}`: {}", e.kind, e.state, e.message);
            }
            ExitCode::from(EXECUTION_FAILED)
        }
    })
}

/// Exit codes of a run stopped by SIGINT / SIGTERM after saving its checkpoint.
const STOPPED_BY_SIGINT: u8 = 130;
const STOPPED_BY_SIGTERM: u8 = 143;

/// Listens for SIGINT and SIGTERM while executions run: the first asks the
/// engine to stop at the next state boundary (the checkpoint is saved), the
/// second exits at once. Returns the exit code of the signal received, if any.
fn stop_on_signals(engine: &Arc<Engine>) -> Arc<AtomicU8> {
    let received = Arc::new(AtomicU8::new(0));
    let (engine, seen) = (engine.clone(), received.clone());
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            let code = tokio::select! {
                _ = sigterm => STOPPED_BY_SIGTERM,
                _ = tokio::signal::ctrl_c() => STOPPED_BY_SIGINT,
            };
            let name = if code == STOPPED_BY_SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if seen.swap(code, Ordering::SeqCst) != 0 {
                eprintln!("{name} again: exiting now (the last checkpoint stays resumable)");
                std::process::exit(i32::from(code));
            }
            eprintln!("{name}: stopping after the current state (send it again to exit at once)");
            engine.stop(format!("interrupted by {name}"));
        }
    });
    received
}

/// Runs an execution for a command and reports how it ended. When it did
/// not end (interrupted, or a store failure after it was stored), says how
/// to continue it.
async fn drive(
    session: &Session,
    root: &str,
    resume_flags: Option<String>,
    json: bool,
    run: impl Future<Output = Result<Outcome, EngineError>>,
) -> Result<ExitCode, CliError> {
    let signal = stop_on_signals(&session.engine);
    let result = run.await;
    if let Some(bars) = &session.bars {
        bars.clear();
    }
    let hint = |what: &str| match &resume_flags {
        Some(flags) => eprintln!("{what}; continue it with: flowhost resume {root}{flags}"),
        None => eprintln!("{what}; it was kept in memory (--memory), so it cannot be resumed"),
    };
    match result {
        Ok(o) => report(session, &o, json).await,
        Err(EngineError::Interrupted {
            id,
            state,
            step,
            reason,
        }) => {
            hint(&format!(
                "execution {root} stopped ({reason}); {id} was at state `{state}`, step {step}, and its checkpoint is saved"
            ));
            let code = signal.load(Ordering::SeqCst);
            Ok(ExitCode::from(if code == 0 { 1 } else { code }))
        }
        Err(e) => {
            let stored = matches!(e, EngineError::Store(_))
                && session
                    .engine
                    .backend()
                    .load(root)
                    .await
                    .ok()
                    .flatten()
                    .is_some();
            if stored {
                hint(&format!("execution {root} is stored but did not finish"));
            }
            Err(engine_error(e))
        }
    }
}

pub(super) async fn run(a: RunArgs) -> Result<ExitCode, CliError> {
    let input = match &a.input {
        Some(arg) => registry::read_json_arg("--input", arg).map_err(CliError::Usage)?,
        None => serde_json::json!({}),
    };
    let flags = (!a.store.memory).then(|| a.store.store.to_args());
    let session = engine(a.store.open().await?, flags, &a.runtime)?;
    let engine = session.engine.clone();
    let id = Engine::new_execution_id();
    let flags = (!a.store.memory).then(|| a.store.resume_flags());
    let run = engine.start_with_id(&a.machine, input, id.clone());
    drive(&session, &id, flags, a.json, run).await
}

pub(super) async fn resume(a: ResumeArgs) -> Result<ExitCode, CliError> {
    let session = engine(
        a.store.open_existing().await?,
        Some(a.store.to_args()),
        &a.runtime,
    )?;
    let engine = session.engine.clone();
    let flags = a.store.to_args().iter().map(|f| format!(" {f}")).collect();
    let options = ResumeOptions { upgrade: a.upgrade };
    let run = engine.resume_with(&a.id, options);
    drive(&session, &a.id, Some(flags), a.json, run).await
}

/// `flowhost retry`: a failed execution goes on from the state that failed,
/// in this process, as `resume` does.
pub(super) async fn retry(a: RetryArgs) -> Result<ExitCode, CliError> {
    let session = engine(
        a.store.open_existing().await?,
        Some(a.store.to_args()),
        &a.runtime,
    )?;
    let engine = session.engine.clone();
    let flags = a.store.to_args().iter().map(|f| format!(" {f}")).collect();
    let run = engine.retry(&a.id);
    drive(&session, &a.id, Some(flags), a.json, run).await
}

pub(super) async fn signal(a: SignalArgs) -> Result<ExitCode, CliError> {
    let data = match &a.data {
        Some(arg) => registry::read_json_arg("--data", arg).map_err(CliError::Usage)?,
        None => serde_json::Value::Null,
    };
    let session = engine(
        a.store.open_existing().await?,
        Some(a.store.to_args()),
        &a.runtime,
    )?;
    let engine = session.engine.clone();
    let sent = engine
        .signal(&a.id, &a.channel, data)
        .await
        .map_err(engine_error)?;
    match &sent.delivery {
        Delivery::OtherChannel(channel) => eprintln!(
            "warning: execution {} waits on `{channel}`, not `{}`; the signal is stored and read only if a later state waits on `{}`",
            a.id, a.channel, a.channel
        ),
        Delivery::NotWaiting(status) => eprintln!(
            "warning: execution {} is not waiting for a signal (it is {status}); the signal is stored for a later `wait_for: {}`",
            a.id, a.channel
        ),
        Delivery::Awaited => {}
    }
    eprintln!("signal `{}` sent to {}", a.channel, a.id);
    if sent.queued {
        eprintln!("it runs on the run queue: a worker continues it");
        return Ok(ExitCode::SUCCESS);
    }
    if a.no_resume {
        return Ok(ExitCode::SUCCESS);
    }
    // Continue from the root, so parents waiting on this execution continue too.
    let flags = a.store.to_args().iter().map(|f| format!(" {f}")).collect();
    drive(
        &session,
        &sent.root,
        Some(flags),
        false,
        engine.resume(&sent.root),
    )
    .await
}

pub(super) async fn status(a: StatusArgs) -> Result<ExitCode, CliError> {
    let backend = a.store.open().await?;
    let view = services::describe(backend.as_ref(), &a.id)
        .await
        .map_err(|e| match e {
            EngineError::NotFound(id) => {
                CliError::Usage(format!("no execution `{id}` in {}", backend.describe()))
            }
            other => engine_error(other),
        })?;
    // Keys in alphabetical order, as a JSON map prints them.
    let json = serde_json::to_value(&view).map_err(|e| CliError::Other(e.to_string()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    if let Some(p) = &view.children
        && p.total > 0
    {
        eprintln!(
            "execution {}: {}/{} children done",
            view.id,
            p.done + p.failed + p.cancelled,
            p.total
        );
    }
    if let Some(o) = &view.owner {
        eprintln!(
            "execution {} is run by pid {} on {}",
            view.id, o.pid, o.host
        );
    } else if view.parked {
        eprintln!(
            "execution {} is parked on its children (on the run queue); the last one to finish puts it back",
            view.id
        );
    } else if view.abandoned {
        eprintln!(
            "execution {} is not being run by any process; `flowhost resume {}` continues it",
            view.id, view.root
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn executions(a: ExecutionsArgs) -> Result<ExitCode, CliError> {
    let backend = a.store.open().await?;
    let list = backend
        .list(&ListFilter {
            status: a.status,
            machine: None,
            roots_only: !a.all,
            limit: Some(a.limit),
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    if list.is_empty() {
        eprintln!("no executions in {}", backend.describe());
    }
    for cp in list {
        if a.json {
            let row = serde_json::json!({
                "id": cp.id, "parent": cp.parent, "machine": cp.machine, "status": cp.status,
                "state": cp.state, "step": cp.step, "created_ms": cp.created_ms, "updated_ms": cp.updated_ms,
            });
            println!("{row}");
        } else {
            println!(
                "{}  {:<9}  {:<20}  step {:<5} state {}",
                cp.id, cp.status, cp.machine, cp.step, cp.state
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flowhost history`: the execution's events with the time since the first
/// and since the one before.
pub(super) async fn history(a: HistoryArgs) -> Result<ExitCode, CliError> {
    if a.limit == 0 {
        return Err(CliError::Usage("--limit must be at least 1".into()));
    }
    let backend = a.store.open().await?;
    let events = services::history(backend.as_ref(), &a.id, 0, a.limit)
        .await
        .map_err(|e| match e {
            EngineError::NotFound(id) => {
                CliError::Usage(format!("no execution `{id}` in {}", backend.describe()))
            }
            other => engine_error(other),
        })?;
    if events.is_empty() && !a.json {
        eprintln!(
            "execution {} has no history (its machine keeps none: settings.history_limit: 0)",
            a.id
        );
    }
    let first = events.first().map_or(0, |e| e.at_ms);
    let mut previous = first;
    for entry in &events {
        if a.json {
            println!("{}", serde_json::to_string(entry).unwrap_or_default());
            continue;
        }
        let line = match serde_json::from_value::<Event>(entry.event.clone()) {
            Ok(event) => event.line(),
            // Written by another flowhost version: shown as stored.
            Err(_) => entry.event.to_string(),
        };
        println!(
            "{:>5}  +{:>9.3}s  (+{:>8.3}s)  {line}",
            entry.seq,
            entry.at_ms.saturating_sub(first) as f64 / 1e3,
            entry.at_ms.saturating_sub(previous) as f64 / 1e3,
        );
        previous = entry.at_ms;
    }
    Ok(ExitCode::SUCCESS)
}

/// `flowhost submit`: stores the execution as queued and puts it on the run
/// queue; a worker runs it.
pub(super) async fn submit(a: SubmitArgs) -> Result<ExitCode, CliError> {
    let input = match &a.input {
        Some(arg) => registry::read_json_arg("--input", arg).map_err(CliError::Usage)?,
        None => serde_json::json!({}),
    };
    let backend = a.store.open_or_create().await?;
    let session = engine(backend.clone(), None, &a.runtime)?;
    let sent = session
        .engine
        .submit_with(
            &a.machine,
            input,
            flowhost::engine::queue::SubmitOptions {
                id: a.queued.id.clone(),
                deadline: a.deadline,
            },
        )
        .await
        .map_err(engine_error)?;
    let created = format!(
        "submitted {}; a worker runs it (flowhost worker --executions{})",
        sent.id,
        a.store
            .to_args()
            .iter()
            .map(|f| format!(" {f}"))
            .collect::<String>()
    );
    a.queued.report(backend.as_ref(), &sent, created).await
}

/// `flowhost mapreduce`: submits a MapReduce execution to the run queue
/// (workers or a daemon on the same store run it).
pub(super) async fn mapreduce(a: MapReduceArgs) -> Result<ExitCode, CliError> {
    let items = registry::read_json_arg("--items", &a.items).map_err(CliError::Usage)?;
    if !items.is_array() {
        return Err(CliError::Usage("--items must be a JSON list".into()));
    }
    let dir = registry::plugins_dir(a.runtime.plugins.as_deref());
    for (flag, name) in [("--mapper", &a.mapper), ("--reducer", &a.reducer)] {
        registry::locate(name, &dir).map_err(CliError::plugin(format!("{flag} {name}")))?;
    }
    let backend = a.store.open_or_create().await?;
    let session = engine(backend.clone(), None, &a.runtime)?;
    let job = flowhost::engine::mapreduce::MapReduce {
        mapper: a.mapper.clone(),
        reducer: a.reducer.clone(),
        parallelism: a.parallel,
        pool: a.warm.map(|n| flowhost::warm::OperatorPool {
            min: Some(n),
            max: Some(n.max(1)),
            warm_up: Some(true),
            ..Default::default()
        }),
    };
    let options = flowhost::engine::queue::SubmitOptions {
        id: a.queued.id.clone(),
        deadline: None,
    };
    let sent = session
        .engine
        .submit_mapreduce(&job, items, &a.store.generated(), options)
        .await
        .map_err(engine_error)?;
    let created = format!(
        "submitted MapReduce {} ({} → {}); a worker or a daemon on this store runs it",
        sent.id, a.mapper, a.reducer
    );
    a.queued.report(backend.as_ref(), &sent, created).await
}

/// `flowhost wait`: the result as `result` prints it, once there is one.
pub(super) async fn wait(a: WaitArgs) -> Result<ExitCode, CliError> {
    let backend = a.store.open().await?;
    let not_found = |e| match e {
        EngineError::NotFound(id) => {
            CliError::Usage(format!("no execution `{id}` in {}", backend.describe()))
        }
        other => engine_error(other),
    };
    let view = services::describe(backend.as_ref(), &a.id)
        .await
        .map_err(not_found)?;
    if let Some(channel) = &view.waiting_for {
        eprintln!(
            "execution {} waits for a signal on `{channel}` (flowhost signal {} {channel})",
            a.id, a.id
        );
    }
    await_result(backend.as_ref(), &a.id, a.timeout).await
}

/// Waits for a result and prints it; exit 0 done, 4 failed or cancelled, 6
/// when `timeout` passed first.
async fn await_result(
    backend: &dyn Backend,
    id: &str,
    timeout: Option<std::time::Duration>,
) -> Result<ExitCode, CliError> {
    match services::wait(backend, id, timeout)
        .await
        .map_err(engine_error)?
    {
        services::Waited::Finished(r) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r.value).unwrap_or_default()
            );
            eprintln!("execution {id}: {}", r.status);
            Ok(if r.status == Status::Done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXECUTION_FAILED)
            })
        }
        services::Waited::TimedOut(status) => {
            eprintln!(
                "execution {id} is still {status} after {:?}; it goes on (wait again, or see flowhost status {id})",
                timeout.unwrap_or_default(),
            );
            Ok(ExitCode::from(STILL_RUNNING))
        }
    }
}

/// `flowhost cancel`: ends an execution and its children as `cancelled`,
/// in any status; a running one is stopped by the process that runs it.
pub(super) async fn cancel(a: CancelArgs) -> Result<ExitCode, CliError> {
    let session = engine(a.store.open_existing().await?, None, &a.runtime)?;
    let options = flowhost::engine::CancelOptions {
        reason: a.reason.clone(),
        launched: a.children.is_some(),
    };
    let done = session
        .engine
        .cancel_and_wait(&a.id, &options, a.timeout)
        .await
        .map_err(engine_error)?;
    let children = match done.ended {
        0 | 1 => String::new(),
        n => format!(" and {} of its descendants", n - 1),
    };
    if done.requested.is_empty() {
        eprintln!("execution {}{children} cancelled: {}", a.id, a.reason);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "cancel requested: {} execution(s) still running after {}s ({}); their workers stop them at the next check",
        done.requested.len(),
        a.timeout.as_secs_f64(),
        done.requested.join(", ")
    );
    Ok(ExitCode::from(STILL_RUNNING))
}

pub(super) async fn result(a: ResultArgs) -> Result<ExitCode, CliError> {
    let id = parse_result_uri(&a.uri).map_err(CliError::Usage)?;
    let backend = a.store.open().await?;
    match backend.read_result(&id).await.map_err(store_error)? {
        Some(r) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r.value).unwrap_or_default()
            );
            Ok(if r.status == Status::Done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXECUTION_FAILED)
            })
        }
        None => {
            let known = backend.load(&id).await.ok().flatten();
            Err(CliError::Usage(match known {
                Some(cp) => format!("execution {id} has no result yet (it is {})", cp.status),
                None => format!("no execution `{id}` in {}", backend.describe()),
            }))
        }
    }
}

/// A spinner for the run (states entered, current state of the first
/// execution) and a progress bar per fan-out state (on a terminal).
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, String), ProgressBar>>,
    run: Mutex<Option<(String, ProgressBar)>>,
}

impl Bars {
    /// Clears every bar (before the output is printed).
    fn clear(&self) {
        if let Some((_, spinner)) = self.run.lock().unwrap_or_else(|p| p.into_inner()).take() {
            spinner.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl Observer for Bars {
    fn state(&self, id: &str, machine: &str, state: &str, step: u64) {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        let (root, spinner) = run.get_or_insert_with(|| {
            let spinner = self.multi.add(ProgressBar::new_spinner());
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {msg} ({pos} states, {per_sec})")
            {
                spinner.set_style(style);
            }
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            (id.to_string(), spinner)
        });
        spinner.inc(1);
        if root == id {
            spinner.set_message(format!("{machine}: state {state}, step {step}"));
        }
    }

    fn fanout(&self, id: &str, state: &str, total: usize) {
        let bar = self.multi.add(ProgressBar::new(total as u64));
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(state.to_string());
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.insert((id.to_string(), state.to_string()), bar);
    }
    fn child_finished(&self, id: &str, state: &str) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = bars.get(&(id.to_string(), state.to_string())) {
            bar.inc(1);
        }
    }
    fn fanout_done(&self, id: &str, state: &str) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = bars.remove(&(id.to_string(), state.to_string())) {
            bar.finish_and_clear();
        }
    }
}

/// Plain log lines (not a terminal): states at debug, fan-out at info.
struct Logs;

impl Observer for Logs {
    fn state(&self, id: &str, machine: &str, state: &str, step: u64) {
        tracing::debug!(execution = %id, machine, state, step, "state");
    }
    fn fanout(&self, id: &str, state: &str, total: usize) {
        tracing::info!(execution = %id, state, "running {total} child executions");
    }
    fn fanout_done(&self, id: &str, state: &str) {
        tracing::info!(execution = %id, state, "child executions finished");
    }
}

#[derive(Args)]
pub(super) struct BenchArgs {
    /// States of the linear machine.
    #[arg(long, default_value_t = 100)]
    states: usize,
    /// Runs of the linear machine per store.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Items of the foreach machine; several sizes (comma-separated) show
    /// whether the time per item grows with the fan-out.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    items: Vec<usize>,
    /// The processor every state calls.
    #[arg(long, default_value = "echo")]
    plugin: String,
    /// Calls one warm instance serves in the "warm" rows ("fresh" rows use a
    /// new instance per call).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    reuse: u32,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// `flowhost bench engine`: states/s and items/s on memory and SQLite
/// stores, with a warm (reused) and a fresh plugin instance per call.
pub(super) async fn bench(a: BenchArgs) -> Result<ExitCode, CliError> {
    use flowhost::engine::bench;
    if a.items.contains(&0) || a.states == 0 || a.runs == 0 {
        return Err(CliError::Usage(
            "--states, --runs and every --items size must be at least 1".into(),
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| CliError::Other(format!("temp dir: {e}")))?;
    let mut machines = Vec::new();
    for (label, reuse) in [("warm", a.reuse), ("fresh", 0)] {
        let sub = dir.path().join(label);
        let written = std::fs::create_dir(&sub)
            .and_then(|()| bench::write_machines(&sub, a.states, &a.plugin, reuse))
            .map_err(|e| CliError::Other(format!("cannot write the benchmark machines: {e}")))?;
        machines.push((label, written));
    }
    let rt = Arc::new(
        Runtime::new(a.runtime.runtime_config(false)?)
            .map_err(|e| CliError::Other(format!("cannot start the plugin runtime: {e}")))?,
    );
    let plugins = registry::plugins_dir(a.runtime.plugins.as_deref());
    println!(
        "engine benchmark: plugin `{}`, linear {} states x {} runs; warm = one instance serves {} calls, fresh = a new instance per call",
        a.plugin, a.states, a.runs, a.reuse
    );
    let mut header = format!(
        "  {:<20} {:<9} {:>16}",
        "store", "instance", "linear states/s"
    );
    for n in &a.items {
        header.push_str(&format!(" {:>22}", format!("foreach {n} items/s")));
    }
    println!("{header}");
    let stores: [(&str, Option<Durability>); 3] = [
        ("memory", None),
        ("sqlite sync=normal", Some(Durability::Normal)),
        ("sqlite sync=full", Some(Durability::Full)),
    ];
    for (label, durability) in stores {
        for (instance, (linear, foreach)) in &machines {
            let backend: Arc<dyn Backend> = match durability {
                None => Arc::new(MemoryBackend::new()),
                Some(d) => Arc::new(
                    SqliteBackend::open(
                        &dir.path()
                            .join(format!("{label}-{instance}.db").replace([' ', '='], "-")),
                        d,
                    )
                    .map_err(|e| CliError::Other(e.to_string()))?,
                ),
            };
            let engine = Arc::new(Engine::new(backend, rt.clone(), plugins.clone()));
            let l = bench::linear(&engine, linear, a.states, a.runs)
                .await
                .map_err(engine_error)?;
            let mut row = format!("  {label:<20} {instance:<9} {:>16.0}", l.per_second());
            for &n in &a.items {
                let f = bench::foreach(&engine, foreach, n)
                    .await
                    .map_err(engine_error)?;
                row.push_str(&format!(" {:>22.0}", f.per_second()));
            }
            println!("{row}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
