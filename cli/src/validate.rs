//! `flowhost validate <machine.yml>...`: check machine configs before running them.

use super::CliError;
use clap::Args;
use flowhost::config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a config with problems.
pub(super) const INVALID_CONFIG: u8 = 3;

#[derive(Args)]
pub(super) struct ValidateArgs {
    /// Machine config files (spec: flatmachine).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also check that every plugin the configs name is in this folder
    /// (default: $FLOWHOST_PLUGINS when set; without either, plugins are not looked up).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
}

pub(super) fn run(a: ValidateArgs) -> Result<ExitCode, CliError> {
    let options = config::Options {
        plugins_dir: a
            .plugins
            .clone()
            .or_else(|| std::env::var_os("FLOWHOST_PLUGINS").map(PathBuf::from)),
        pinned: false,
        files: Default::default(),
    };
    let mut bad = 0;
    for file in &a.files {
        match config::load_with(file, &options) {
            Ok(m) => println!(
                "ok: {} (machine `{}`, {} states, starts at `{}`)",
                file.display(),
                m.name(),
                m.data().states.len(),
                m.initial
            ),
            Err(errors) => {
                bad += 1;
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID_CONFIG)
    })
}
