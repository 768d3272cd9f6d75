//! `flowhost validate <machine.yml>...`: check machine configs before running them.

use super::CliError;
use crate::config;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a config with problems.
pub(super) const INVALID_CONFIG: u8 = 3;

#[derive(Args)]
pub(super) struct ValidateArgs {
    /// Machine config files (spec: flatmachine).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(super) fn run(a: ValidateArgs) -> Result<ExitCode, CliError> {
    let mut bad = 0;
    for file in &a.files {
        match config::load(file) {
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
