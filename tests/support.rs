//! Helpers for the end-to-end tests: where the built binary and plugins are,
//! and how to run the CLI.
//!
//! `cargo xtask test` builds the plugins into `<target>/plugins/` and the
//! `flowhost` binary into `<target>/debug/` before running the tests; both are
//! found relative to the running test executable, so a custom
//! `CARGO_TARGET_DIR` works too.

use flowhost::plugin::{Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `<target>/<profile>`: the test executable lives in `<target>/<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps")
        .to_path_buf()
}

/// The folder of built plugins (`cargo xtask plugins`).
pub fn plugins_dir() -> PathBuf {
    let dir = profile_dir()
        .parent()
        .expect("<target>/<profile> has a parent")
        .join("plugins");
    assert!(
        dir.join("echo.wasm").is_file(),
        "no built plugins in {}: run the tests with `cargo xtask test` (it builds the plugins first)",
        dir.display()
    );
    dir
}

/// The path of a built plugin.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugins_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "plugin {} is not built: run `cargo xtask test`",
        path.display()
    );
    path
}

/// The source folder of a plugin (where its golden.json lives).
pub fn plugin_source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("plugins")
        .join(rel)
}

/// The `flowhost` binary.
pub fn flowhost_bin() -> PathBuf {
    let bin = profile_dir().join("flowhost");
    assert!(
        bin.is_file(),
        "no flowhost binary at {}: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// A `flowhost` command with the built plugins folder and a private cache.
pub fn flowhost(cache: &Path) -> Command {
    let mut cmd = Command::new(flowhost_bin());
    cmd.env("FLOWHOST_PLUGINS", plugins_dir())
        .env("FLOWHOST_CACHE_DIR", cache)
        .env("FLOWHOST_LOG", "error")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `flowhost` with these arguments.
pub fn run(cache: &Path, args: &[&str]) -> Output {
    flowhost(cache).args(args).output().expect("flowhost runs")
}

/// Sends a signal (`-TERM`, `-STOP`, …) to a process the test started.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A runtime with its compile cache in `cache` (or none).
pub fn runtime(cache: Option<&Path>) -> Runtime {
    let config = RuntimeConfig {
        cache_dir: cache.map(Path::to_path_buf),
        max_instances: 32,
        ..Default::default()
    };
    Runtime::new(config).expect("runtime starts")
}

/// A compile cache shared by the tests (and kept between runs), for the large
/// Python and JavaScript components that take seconds to compile.
pub fn shared_cache() -> PathBuf {
    let dir = profile_dir().join("test-compile-cache");
    std::fs::create_dir_all(&dir).expect("create the shared test cache");
    // The runtime refuses a cache directory other users can write to.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .expect("make the shared test cache private");
    }
    dir
}

/// The address a `flowhost serve` started with `--listen 127.0.0.1:0` and
/// stdout piped says it listens on (its first line), or `None` if it ended
/// first or said something else.
pub fn listening(child: &mut std::process::Child) -> Option<String> {
    use std::io::BufRead;
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take()?)
        .read_line(&mut first)
        .ok()?;
    first
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_string)
}

/// A small deterministic generator (splitmix64): the fuzz and chaos
/// suites derive every case from one number with it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}
