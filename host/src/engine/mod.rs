//! The state machine over a serialisable [`Record`]: the driver-free step
//! (`step.rs`: `Engine::begin` / `Engine::step` return what to save, what
//! to launch and what comes next, as data), the work of one state
//! (`advance.rs`), and the local driver (`driver.rs`) that only carries a
//! step's effects out: it saves, runs child executions as tokio tasks in
//! this process, sleeps for retries, honours stop requests. Every execution is pinned to the
//! [`Definition`] it started with (`definition.rs`; loaded by `machines.rs`).
//! States, hooks and steps run through the [`Runner`] trait (`runner.rs`):
//! loaded plugins in production, fakes in the engine's unit tests
//! (`tests.rs`), which need no `.wasm` file. `owner.rs` gives every running execution tree
//! one owner (a lease on its root) and carries stop requests, which the
//! driver honours at state boundaries.
//!
//! Steps are at-least-once: a resumed execution re-enters the state it was
//! in, and every plugin call carries the idempotency key
//! `<execution-id>/<step>/<attempt>`.
//!
//! Imports `config`, `expr`, `plugin`, `duration`, `failure`, `spawn` and
//! the `backend` traits.

mod actions;
mod advance;
mod agent;
pub mod bench;
mod control;
pub mod definition;
mod driver;
pub mod history;
pub mod machines;
pub mod mapreduce;
pub mod owner;
pub mod queue;
pub mod record;
pub mod runner;
pub mod services;
pub mod state;
mod step;

pub use control::{CancelOptions, Cancelled};
pub use definition::Definition;
pub use driver::{Outcome, ResumeOptions};
pub use machines::{Library, MachineDef};
pub use record::{Failure, MachineRef, Record, Status};
pub use runner::{Loaded, Runner, Runners};

use crate::backend::{Backend, BackendError};
use crate::config::ConfigErrors;
use crate::expr::Expressions;
use crate::plugin::{PluginError, Runtime};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why the engine could not start or continue an execution. (A state that
/// fails is not an engine error: it is routed by `on_error` or ends the
/// execution as `failed`.)
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{context}: {error}")]
    Plugin { context: String, error: PluginError },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] BackendError),
    #[error("no execution `{0}` in this store")]
    NotFound(String),
    /// Another live process runs this execution (its lease is in force).
    #[error("{0}")]
    Owned(String),
    /// A plugin of the execution's pinned definition is no longer the one
    /// installed (`resume --upgrade` continues on what is installed now).
    #[error("{0}")]
    Changed(String),
    /// The execution has finished; what was asked needs one that has not.
    #[error("{0}")]
    Finished(String),
    /// Stopped at a state boundary (a signal, a lost lease); the checkpoint is
    /// stored and `resume` continues from it.
    #[error("execution `{id}` stopped at state `{state}` (step {step}): {reason}")]
    Interrupted {
        id: String,
        state: String,
        step: u64,
        reason: String,
    },
}

impl EngineError {
    pub(crate) fn plugin(name: &str) -> impl FnOnce(PluginError) -> EngineError + '_ {
        move |error| EngineError::Plugin {
            context: format!("plugin `{name}`"),
            error,
        }
    }

    /// Prefixes the message with where it happened.
    pub(crate) fn context(self, at: &str) -> EngineError {
        match self {
            EngineError::Plugin { context, error } => EngineError::Plugin {
                context: format!("{at}: {context}"),
                error,
            },
            EngineError::Invalid(m) => EngineError::Invalid(format!("{at}: {m}")),
            other => other,
        }
    }
}

/// Progress of running executions, for progress bars and logs.
pub trait Observer: Send + Sync {
    /// An execution entered a state.
    fn state(&self, _id: &str, _machine: &str, _state: &str, _step: u64) {}
    /// A failed state will be tried again (as `attempt`) after `pause`.
    fn retry(&self, _id: &str, _state: &str, _attempt: u32, _pause: std::time::Duration) {}
    /// A state started `total` children (foreach or parallel machines).
    fn fanout(&self, _id: &str, _state: &str, _total: usize) {}
    /// One of them finished.
    fn child_finished(&self, _id: &str, _state: &str) {}
    /// All of them finished.
    fn fanout_done(&self, _id: &str, _state: &str) {}
    /// An event of an execution's history happened (told whether or not
    /// the machine keeps history): what metrics count.
    fn event(&self, _rec: &Record, _event: &history::Event) {}
    /// The durable result of execution `id` was written (whoever waits for
    /// it can read it now).
    fn result_written(&self, _id: &str) {}
}

/// Machine trees this engine has loaded, by root file and by the digest of
/// their pinned definition.
#[derive(Default)]
struct Trees {
    by_file: HashMap<PathBuf, Tree>,
    by_digest: HashMap<String, Arc<MachineDef>>,
}

/// A loaded root and its pinned definition.
#[derive(Clone)]
struct Tree {
    def: Arc<MachineDef>,
    digest: Arc<str>,
    /// The encoded definition, until this engine has stored it.
    unstored: Option<Arc<str>>,
}

/// Runs machines against one store with one plugin runtime.
pub struct Engine {
    backend: Arc<dyn Backend>,
    runners: Arc<dyn Runners>,
    exprs: Expressions,
    observer: Option<Arc<dyn Observer>>,
    trees: Mutex<Trees>,
    detached: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Leases kept until launched executions finish.
    held: Mutex<Vec<owner::Held>>,
    /// Every lease this engine holds, renewed by one task.
    leases: owner::Leases,
    /// Asks every execution of this engine to stop at its next state boundary.
    stop: owner::Stop,
    /// Starts worker processes on this engine's store (`spawn_workers`);
    /// none when the store cannot be opened by another process.
    spawner: Option<crate::spawn::Spawner>,
}

impl Engine {
    /// An engine whose machines run the plugins of `plugins_dir`.
    pub fn new(backend: Arc<dyn Backend>, runtime: Arc<Runtime>, plugins_dir: PathBuf) -> Engine {
        Engine::with_runners(backend, Arc::new(Library::new(runtime, plugins_dir)))
    }

    /// An engine whose machines run what `runners` gives (fakes in tests).
    pub fn with_runners(backend: Arc<dyn Backend>, runners: Arc<dyn Runners>) -> Engine {
        Engine {
            backend,
            runners,
            exprs: Expressions::new(),
            observer: None,
            trees: Mutex::new(Trees::default()),
            detached: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            leases: owner::Leases::default(),
            stop: owner::Stop::default(),
            spawner: None,
        }
    }

    /// Lets the `spawn_workers` action start processes through `spawner`.
    pub fn with_spawner(mut self, spawner: crate::spawn::Spawner) -> Engine {
        self.spawner = Some(spawner);
        self
    }

    /// How long an execution lease this engine takes lasts without renewal
    /// (renewed three times per lease while it runs); a holder that stops
    /// renewing (a paused or cut-off process) loses it after this long.
    pub fn with_lease(mut self, lease: std::time::Duration) -> Engine {
        self.leases.lease = lease.max(std::time::Duration::from_millis(300));
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Engine {
        self.observer = Some(observer);
        self
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Asks every running execution to stop at its next state boundary
    /// (after saving its checkpoint); they end with [`EngineError::Interrupted`].
    pub fn stop(&self, reason: impl Into<String>) {
        self.stop.request(reason);
    }
}

#[cfg(test)]
mod tests;
