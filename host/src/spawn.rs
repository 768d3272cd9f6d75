//! Starting other flowhost processes: worker processes for a pool, and
//! `flowhost run` of a machine (the seed's `spawn_workers`). Whoever opened
//! the store says how another process opens the same one (the store flags),
//! so no store has to know its own location. The checker, the
//! `spawn_workers` action and `bench jobs` all spawn through a [`Spawner`].
//!
//! Imports nothing from the crate.

use serde_json::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot find the flowhost binary: {0}")]
    NoBinary(std::io::Error),
    #[error("cannot spawn a worker: {0}")]
    Spawn(std::io::Error),
}

/// How to start flowhost processes on the same store and plugins folder.
#[derive(Debug, Clone)]
pub struct Spawner {
    exe: PathBuf,
    /// The flags that open the store (`--db <file>`, `--sync normal`).
    store: Vec<OsString>,
    plugins: PathBuf,
}

/// A worker process for a pool.
#[derive(Debug, Clone)]
pub struct WorkerProcess<'a> {
    pub pool: &'a str,
    /// A plugin name or a machine file; `None`: the worker runs submitted
    /// executions (`worker --executions`, whose pool is the run queue).
    pub processor: Option<&'a str>,
    pub concurrency: u32,
    /// Exit once the pool has no due job.
    pub exit_when_empty: bool,
    /// Keep the worker's own output (else it goes nowhere).
    pub quiet: bool,
}

impl Spawner {
    /// Processes of this very binary.
    pub fn current(
        store: impl IntoIterator<Item = impl Into<OsString>>,
        plugins: &Path,
    ) -> Result<Spawner, SpawnError> {
        let exe = std::env::current_exe().map_err(SpawnError::NoBinary)?;
        Ok(Spawner::new(exe, store, plugins))
    }

    pub fn new(
        exe: PathBuf,
        store: impl IntoIterator<Item = impl Into<OsString>>,
        plugins: &Path,
    ) -> Spawner {
        Spawner {
            exe,
            store: store.into_iter().map(Into::into).collect(),
            plugins: plugins.to_path_buf(),
        }
    }

    /// `flowhost worker --pool … --processor …`, detached from this
    /// process's stdin.
    pub fn worker(&self, w: &WorkerProcess<'_>) -> Result<Child, SpawnError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("worker");
        match w.processor {
            Some(processor) => cmd.args(["--pool", w.pool, "--processor", processor]),
            None => cmd.arg("--executions"),
        };
        cmd.args(["--concurrency", &w.concurrency.to_string()]);
        if w.exit_when_empty {
            cmd.arg("--exit-when-empty");
        }
        if w.quiet {
            cmd.stdout(Stdio::null());
        }
        self.spawn(cmd)
    }

    /// `flowhost run <machine> --input <json>`, its output discarded.
    pub fn run(&self, machine: &Path, input: &Value) -> Result<Child, SpawnError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run")
            .arg(machine)
            .args(["--input", &input.to_string()])
            .stdout(Stdio::null());
        self.spawn(cmd)
    }

    fn spawn(&self, mut cmd: Command) -> Result<Child, SpawnError> {
        cmd.args(&self.store)
            .arg("--plugins")
            .arg(&self.plugins)
            .stdin(Stdio::null())
            .spawn()
            .map_err(SpawnError::Spawn)
    }
}

/// Workers to start for a pool: enough for its due jobs, at most `max` in
/// all, counting the `active` ones.
pub fn workers_wanted(depth: u64, active: u64, max: u32) -> u64 {
    depth.min(u64::from(max)).saturating_sub(active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_wanted_fills_up_to_the_depth_and_the_maximum() {
        assert_eq!(workers_wanted(10, 0, 4), 4);
        assert_eq!(workers_wanted(10, 3, 4), 1);
        assert_eq!(workers_wanted(2, 0, 4), 2);
        assert_eq!(workers_wanted(2, 5, 4), 0);
        assert_eq!(workers_wanted(0, 0, 4), 0);
    }

    #[test]
    fn a_spawned_process_gets_the_store_flags_and_plugins_folder() {
        // `echo` stands in for the binary: it prints the arguments it got.
        let Ok(echo) = which_echo() else {
            panic!("the test needs /bin/echo");
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spawner = Spawner::new(
            echo,
            ["--db", "x.db", "--sync", "normal"],
            Path::new("plugs"),
        );
        let mut cmd = Command::new(&spawner.exe);
        cmd.args(["worker"]);
        cmd.stdout(std::fs::File::create(&out).unwrap());
        spawner.spawn(cmd).unwrap().wait().unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "worker --db x.db --sync normal --plugins plugs"
        );
    }

    fn which_echo() -> Result<PathBuf, ()> {
        ["/bin/echo", "/usr/bin/echo"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(())
    }
}
