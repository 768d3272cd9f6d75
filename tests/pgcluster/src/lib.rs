//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a
//! temporary folder, started with `pg_ctl` on a free port of 127.0.0.1
//! (and a socket inside that folder), stopped when dropped. Every command
//! acts on this cluster's own data folder, so only its own server is ever
//! stopped. As root the server runs as `nobody` (PostgreSQL refuses root).
//!
//! The binaries come from `FLOWHOST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package), else
//! `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser every cluster has, and its password.
pub const USER: &str = "flowhost";
pub const PASSWORD: &str = "flowhost";

/// How to get PostgreSQL when it is missing.
pub const HOW_TO_INSTALL: &str = "PostgreSQL is not installed here (no `initdb`): install Debian's package (`sudo apt-get install postgresql`) or set FLOWHOST_PG_BIN to the folder that holds initdb and pg_ctl; `cargo xtask test` (the README's test command) installs it when it can";

/// Why a cluster did not start.
#[derive(Debug)]
pub enum StartError {
    /// No PostgreSQL binaries on this machine.
    NotInstalled,
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::NotInstalled => f.write_str(HOW_TO_INSTALL),
            StartError::Failed(m) => f.write_str(m),
        }
    }
}

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Runs the server's commands as `nobody` (when this process is root).
    as_nobody: bool,
}

/// The folder of PostgreSQL's programs, if this machine has them.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOWHOST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn output(mut cmd: Command, what: &str) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

impl PgCluster {
    /// A new cluster with `settings` (`name=value`, e.g. `fsync=off`) on top
    /// of PostgreSQL's defaults, started and ready for connections.
    pub fn start(settings: &[&str]) -> Result<PgCluster, StartError> {
        let bin = bin_dir().ok_or(StartError::NotInstalled)?;
        if !bin.join("initdb").exists() {
            return Err(StartError::NotInstalled);
        }
        let failed = StartError::Failed;
        let dir = tempfile::Builder::new()
            .prefix("flowhost-pg-")
            .tempdir()
            .map_err(|e| failed(format!("temp dir: {e}")))?;
        // SAFETY: no arguments; reads the process's effective uid.
        let as_nobody = unsafe { libc::geteuid() } == 0;
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| failed(format!("password file: {e}")))?;
        if as_nobody {
            for p in [dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(65534), Some(65534))
                    .map_err(|e| failed(format!("chown {}: {e}", p.display())))?;
            }
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            as_nobody,
        };
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", USER, "-E", "UTF8", "--no-sync", "--auth-local=trust"])
            .arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()));
        output(initdb, "initdb").map_err(failed)?;
        let mut conf = String::from("\n# flowhost test cluster\nlisten_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            cluster.dir.path().display()
        ));
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let auto = cluster.data().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&auto, text).map_err(|e| failed(format!("{}: {e}", auto.display())))?;
        // A port free now may be taken by the time the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port().map_err(failed)?;
            match cluster.pg_ctl(&["start", "-w", "-t", "60"]) {
                Ok(()) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(failed(last))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .args(args);
        output(c, &format!("pg_ctl {}", args.join(" "))).map(|_| ())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as the superuser in database `db` (through `psql`).
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = Command::new(self.bin.join("psql"));
        c.env("PGPASSWORD", PASSWORD)
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", USER, "-d", db, "-c", sql]);
        output(c, "psql").map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> Result<String, String> {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn crash(&self) -> Result<(), String> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
    }

    /// Starts it again (after [`Self::crash`] or [`Self::stop`]) on the same port.
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl(&["start", "-w", "-t", "60"])
    }

    /// `pg_ctl restart -m fast`: connections are closed, the server comes back.
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"])
    }

    pub fn stop(&self) -> Result<(), String> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Lets clients from `cidr` (e.g. `10.213.1.0/30`) log in with the
    /// password, and reloads the server's configuration.
    pub fn allow_clients_from(&self, cidr: &str) -> Result<(), String> {
        let hba = self.data().join("pg_hba.conf");
        let mut text =
            std::fs::read_to_string(&hba).map_err(|e| format!("{}: {e}", hba.display()))?;
        text.push_str(&format!("host all all {cidr} scram-sha-256\n"));
        std::fs::write(&hba, text).map_err(|e| format!("{}: {e}", hba.display()))?;
        self.pg_ctl(&["reload"])
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Only a running server has a postmaster.pid; this stops ours.
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}

/// A cluster for a test, or — when PostgreSQL is not installed and
/// `FLOWHOST_REQUIRE_PG` is not set — `None` after saying how to install it
/// (the README's test command sets it, so CI never skips).
pub fn for_test(test: &str, settings: &[&str]) -> Option<PgCluster> {
    match PgCluster::start(settings) {
        Ok(c) => Some(c),
        Err(StartError::NotInstalled) if std::env::var_os("FLOWHOST_REQUIRE_PG").is_none() => {
            eprintln!("SKIPPED {test}: {HOW_TO_INSTALL}");
            None
        }
        Err(e) => panic!("{test}: cannot start a PostgreSQL cluster: {e}"),
    }
}
