//! Bad machine configs as golden files (`tests/ui/<case>.yml` and the
//! `<case>.err` that `flowhost validate` prints for it), in the style of
//! Spin's `tests/ui`. `flowhost run` must refuse each one with the same
//! errors before anything runs, so validation and running cannot drift apart.
//! `FLOWHOST_BLESS=1 cargo xtask test` rewrites the `.err` files.

use flowhost_e2e::{flowhost, plugins_dir, stderr};
use std::path::{Path, PathBuf};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(ui_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the ui cases are missing");
    cases
}

/// What a command printed, with machine-specific paths replaced.
fn normalized(text: &str) -> String {
    let ui = ui_dir().canonicalize().unwrap();
    text.replace(&format!("{}/", ui.display()), "")
        .replace(&plugins_dir().display().to_string(), "$PLUGINS")
}

#[test]
fn bad_configs_are_refused_by_validate_and_run_alike() {
    let cache = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("FLOWHOST_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let validate = flowhost(cache.path())
            .current_dir(ui_dir())
            .args(["validate", &name])
            .output()
            .unwrap();
        let got = normalized(&stderr(&validate));
        let expected_file = case.with_extension("err");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if validate.status.code() != Some(3) || got != expected {
            failures.push(format!(
                "{name}: validate exited {:?}\n--- expected\n{expected}--- got\n{got}",
                validate.status.code()
            ));
        }
        let run = flowhost(cache.path())
            .current_dir(ui_dir())
            .args(["run", &name, "--memory"])
            .output()
            .unwrap();
        let ran = normalized(&stderr(&run));
        if run.status.code() != Some(3) || ran != expected {
            failures.push(format!(
                "{name}: run exited {:?} (expected 3, refused like validate)\n--- validate\n{expected}--- run\n{ran}",
                run.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
