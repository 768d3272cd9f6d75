//! Fuzzing the parsers of outside input: machine YAML (with agents and
//! profiles) through validation, templates and conditions, plugin
//! manifests, golden-case files, what a plugin returns (through a real
//! plugin call), result addresses and duration flags.
//!
//! Each target starts from real inputs (the repository's examples and
//! fixtures) and the regression corpus in `tests/fuzz/<target>/`, replays the
//! corpus as it is, then mutates the seeds — inserting tokens each format
//! cares about, deleting, duplicating and swapping ranges, at byte or
//! character boundaries — and checks that the parser answers (a value or an
//! error that says something) without panicking. Every case derives from
//! one number: a failure prints it, and `FLOWHOST_FUZZ_SEED=<n>
//! FLOWHOST_FUZZ_ITERATIONS=1` replays exactly that input; the input is also
//! written to `<target>/tmp/fuzz-failures/` to be added to the corpus.
//!
//! `FLOWHOST_FUZZ_ITERATIONS` (default 5000 per target: a few seconds each)
//! sets the length of a run; `cargo xtask fuzz N` runs longer.

use flowhost::plugin::golden::Suite;
use flowhost::plugin::registry::Manifest;
use flowhost_e2e::Rng;
use serde_json::{Value, json};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn iterations() -> u64 {
    std::env::var("FLOWHOST_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

fn base_seed() -> u64 {
    std::env::var("FLOWHOST_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d)
}

/// Text files with one of `exts` under `dir` (recursively), sorted.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                files(&path, exts, out);
            }
        } else if path
            .extension()
            .is_some_and(|x| exts.iter().any(|e| x == *e))
        {
            out.push(path);
        }
    }
    out.sort();
}

fn read_all(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Tokens that matter to YAML, JSON, TOML and Jinja, and text that trips
/// byte/char arithmetic.
const TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\t",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    ",",
    "&a ",
    "*a",
    "!!binary ",
    "? ",
    "|",
    ">",
    "#",
    "\\",
    "\\u0000",
    "\u{feff}",
    "é",
    "𝄞",
    "\u{0}",
    "\r\n",
    "1e999",
    "-0",
    "99999999999999999999",
    "null",
    "~",
    "true",
    "states:",
    "type: final",
    "transitions:",
    "to: ",
    "foreach: ",
    "machine: ",
    "agent: ",
    "input.",
    "context.",
    "| length",
    "| truncate(",
    "()",
    ".items()",
    "=",
    "[[",
    "]]",
    "ms",
    "s",
    "flowhost://",
    "/result",
    "../",
    "*",
    "%",
];

/// The nearest char boundary at or before `i`.
fn boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The input of case `seed`: a seed input with 1–8 mutations.
fn mutate(seeds: &[String], seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut s = seeds[rng.below(seeds.len())].clone();
    // Half the cases change little (deep into the parser), half a lot.
    let changes = 1 + if rng.below(2) == 0 {
        rng.below(2)
    } else {
        rng.below(8)
    };
    for _ in 0..changes {
        let len = s.len();
        let at = boundary(&s, rng.below(len + 1));
        match rng.below(6) {
            0 | 1 => s.insert_str(at, TOKENS[rng.below(TOKENS.len())]),
            2 => {
                let end = boundary(&s, at + rng.below(32));
                s.replace_range(at..end, "");
            }
            3 => {
                let end = boundary(&s, at + rng.below(64));
                let piece = s[at..end].to_string();
                s.insert_str(end, &piece);
            }
            4 => {
                // Another seed's piece in here.
                let other = &seeds[rng.below(seeds.len())];
                let from = boundary(other, rng.below(other.len() + 1));
                let to = boundary(other, from + rng.below(80));
                s.insert_str(at, &other[from..to]);
            }
            _ => {
                let c = char::from_u32(rng.below(0x3000) as u32).unwrap_or('?');
                s.insert(at, c);
            }
        }
        if s.len() > 64 * 1024 {
            s.truncate(boundary(&s, 64 * 1024));
        }
    }
    s
}

/// Runs `check` on the corpus of `target` as it is, then on mutated
/// inputs; a panic or a failed check fails the test with the case's seed.
fn fuzz(target: &str, mut seeds: Vec<String>, check: impl Fn(&str) -> Result<bool, String>) {
    let corpus_dir = repo().join("tests").join("fuzz").join(target);
    let mut corpus = Vec::new();
    files(&corpus_dir, &["txt", "yml", "json", "toml"], &mut corpus);
    let corpus = read_all(&corpus);
    assert!(!seeds.is_empty(), "{target}: no seed inputs");
    let run = |input: &str| -> Result<bool, String> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(input))) {
            Ok(result) => result,
            Err(panic) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    };
    for (i, input) in corpus.iter().enumerate() {
        if let Err(why) = run(input) {
            panic!(
                "{target}: corpus input {i} in {}: {why}",
                corpus_dir.display()
            );
        }
    }
    seeds.extend(corpus);
    let base = base_seed();
    let n = iterations();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for i in 0..n {
        let seed = base.wrapping_add(i);
        let input = mutate(&seeds, seed);
        let result = run(&input);
        accepted += u64::from(result == Ok(true));
        if let Err(why) = result {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{target}-{seed}.txt"));
            let _ = std::fs::write(&file, &input);
            failures.push(format!(
                "seed {seed} (FLOWHOST_FUZZ_SEED={seed} FLOWHOST_FUZZ_ITERATIONS=1; input in {}): {why}",
                file.display()
            ));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {n} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "fuzz {target}: {n} inputs from seed {base} ({accepted} accepted, {} refused with an error), {} corpus and seed inputs, 0 failures",
        n - accepted,
        seeds.len()
    );
}

/// A refusal (`Ok(false)`), unless the error says nothing.
fn says_something(message: &str) -> Result<bool, String> {
    if message.trim().is_empty() {
        Err("an empty error message".into())
    } else {
        Ok(false)
    }
}

/// Lines as YAML counts them: it breaks lines at \n, \r\n and \r, and
/// also at NEL, LS and PS (U+0085, U+2028, U+2029) — which most editors
/// do not show as line breaks.
fn yaml_lines(text: &str) -> usize {
    let text = text.replace("\r\n", "\n");
    1 + text
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
}

#[test]
fn machine_yaml_validation() {
    let dir = repo().join("examples").join("agents");
    let here = dir.join("fuzzed.yml");
    // Machines that validate from here (their child files resolve), so that
    // small changes reach deep; and the UI cases, which are wrong on purpose.
    let mut paths = Vec::new();
    files(&repo().join("examples"), &["yml", "yaml"], &mut paths);
    files(
        &repo().join("tests").join("fixtures"),
        &["yml", "yaml"],
        &mut paths,
    );
    let mut seeds: Vec<String> = read_all(&paths)
        .into_iter()
        .filter(|t| flowhost::config::parse(&here, t).is_ok())
        .collect();
    let valid = seeds.len();
    let mut ui = Vec::new();
    files(&repo().join("tests").join("ui"), &["yml", "yaml"], &mut ui);
    seeds.extend(read_all(&ui));
    eprintln!(
        "fuzz machine: {valid} valid seeds, {} wrong on purpose",
        seeds.len() - valid
    );
    fuzz("machine", seeds, |text| {
        // Beside the agents example, so `./writer.yml` and profiles.yml resolve.
        match flowhost::config::parse(&here, text) {
            Ok(_) => Ok(true),
            Err(errors) => {
                let lines = yaml_lines(text) + 1;
                for e in &errors.0 {
                    says_something(&e.message)?;
                    if let Some(line) = e.line
                        && line > lines
                    {
                        return Err(format!(
                            "error at line {line} of a {lines}-line text: {}",
                            e.message
                        ));
                    }
                }
                Ok(false)
            }
        }
    });
}

#[test]
fn templates_and_conditions() {
    let mut paths = Vec::new();
    files(&repo().join("examples"), &["yml"], &mut paths);
    files(&repo().join("tests").join("fixtures"), &["yml"], &mut paths);
    // The templates and conditions of the seeds, one per line.
    let mut seeds: Vec<String> = read_all(&paths)
        .iter()
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.contains("{{") || l.contains("condition"))
        .map(|l| {
            l.split_once(": ")
                .map_or(l.clone(), |(_, v)| v.trim_matches('"').to_string())
        })
        .collect();
    seeds.push("{{ context.items | length > 2 and input.name | upper }}".into());
    seeds.push("{% for k, v in context.items() %}{{ k }}={{ v | truncate(3) }}{% endfor %}".into());
    let expr = flowhost::expr::Expressions::new();
    let vars = json!({
        "context": {"items": {"a": 1, "b": [1, 2, 3]}, "name": "Ada", "n": 3},
        "input": {"name": "Ada", "text": "x".repeat(100)},
        "output": null,
    });
    fuzz("template", seeds, |text| {
        let rendered = expr.render(&Value::String(text.to_string()), &vars);
        let _ = expr.check_template(&Value::String(text.to_string()));
        if let Err(e) = expr.condition(text, &vars) {
            says_something(&e.to_string())?;
        }
        let _ = expr.check_condition(text);
        let _ = expr.unknown_names(text);
        match rendered {
            Ok(_) => Ok(true),
            Err(e) => says_something(&e.to_string()),
        }
    });
}

#[test]
fn plugin_manifests() {
    let mut seeds = vec![
        "version = \"1\"\nreuse = 4\n[limits]\ntimeout_ms = 5\nmemory_mb = 8\n[[dirs]]\nhost = \"data\"\nguest = \"/data\"\nwritable = true\n[config]\nk = [1, {a = 2}]\n[pool]\nmin = 1\nmax = 4\nidle_timeout = \"30s\"\n".to_string(),
        "allowed_hosts = [\"api.example.com:443\", \"*.example.org\"]\n[http]\ntimeout_ms = 100\nmax_response_mb = 1\nmax_concurrent = 2\n".to_string(),
    ];
    let mut paths = Vec::new();
    files(&repo().join("plugins"), &["toml"], &mut paths);
    // A project file's [manifest] table, as a manifest.
    seeds.extend(read_all(&paths).into_iter().filter_map(|t| {
        let table: toml::Table = toml::from_str(&t).ok()?;
        toml::to_string(table.get("manifest")?).ok()
    }));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let wasm = dir.path().join("p.wasm");
    std::fs::write(&wasm, b"\0asm").unwrap();
    fuzz("manifest", seeds, |text| {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        if let Err(e) = Manifest::read(&path) {
            return says_something(&e.to_string());
        }
        let located = flowhost::plugin::registry::locate(&wasm.display().to_string(), dir.path())
            .map_err(|e| e.to_string())?;
        match located.settings() {
            Ok(_) => Ok(true),
            Err(e) => says_something(&e.to_string()),
        }
    });
}

#[test]
fn golden_case_files() {
    let mut paths = Vec::new();
    files(&repo().join("plugins"), &["json"], &mut paths);
    let seeds: Vec<String> = read_all(&paths)
        .into_iter()
        .filter(|t| t.contains("\"cases\""))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    fuzz("golden", seeds, |text| {
        let path = dir.path().join("golden.json");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        match Suite::read(&path) {
            Ok(_) => Ok(true),
            Err(e) => says_something(&e),
        }
    });
}

/// What a hostile plugin returns: the adversary plugin hands back each
/// input byte for byte as its output; the host takes it as a value exactly
/// when it is JSON (the same value), and otherwise refuses it as
/// `invalid_output` with a reason — never a panic, never a guess.
#[test]
fn plugin_outputs() {
    use flowhost::plugin::{CallContext, ErrorKind, PluginSettings, standalone_meta};
    let mut paths = Vec::new();
    files(&repo().join("plugins"), &["json"], &mut paths);
    let mut seeds: Vec<String> = Vec::new();
    for text in read_all(&paths) {
        let Ok(suite) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        for case in suite["cases"].as_array().into_iter().flatten() {
            for key in ["input", "output"] {
                if let Some(v) = case.get(key).filter(|v| !v.is_null()) {
                    seeds.push(v.to_string());
                }
            }
        }
    }
    seeds.push(r#"{"output": {"text": "hi"}, "usage": {"total_tokens": 3}, "model": "m"}"#.into());
    seeds.push(
        r#"{"error": {"kind": "retryable", "message": "rate", "retry_after_ms": 20}}"#.into(),
    );
    let rt = flowhost_e2e::runtime(Some(&flowhost_e2e::shared_cache()));
    let adversary = rt
        .load_file(
            &flowhost_e2e::plugin("adversary"),
            PluginSettings::new("adversary"),
        )
        .unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    fuzz("plugin-output", seeds, |text| {
        let input = json!({"attack": "raw", "text": text});
        let out = tokio.block_on(adversary.process(
            &standalone_meta("fuzz"),
            &input,
            &CallContext::default(),
        ));
        match (out, serde_json::from_str::<Value>(text)) {
            (Ok(got), Ok(want)) if got == want => Ok(true),
            (Err(e), Err(_)) if e.kind() == ErrorKind::InvalidOutput => {
                says_something(&e.to_string())
            }
            (got, want) => Err(format!(
                "plugin output {text:?}: host gave {got:?}, JSON says {want:?}"
            )),
        }
    });
}

#[test]
fn result_addresses_and_durations() {
    let seeds = vec![
        "flowhost://0193-abc/result".to_string(),
        "flatagents://x:1:L2/result".to_string(),
        "0193-abc".to_string(),
        "250ms".to_string(),
        "1.5s".to_string(),
        "2h".to_string(),
    ];
    fuzz("address", seeds, |text| {
        let address = match flowhost::backend::parse_result_uri(text) {
            Ok(id) if flowhost::backend::check_execution_id(&id).is_err() => {
                return Err(format!("`{text}` gave the id `{id}`"));
            }
            Ok(_) => true,
            Err(e) => says_something(&e)?,
        };
        let duration = match flowhost::duration::parse(text) {
            Ok(_) => true,
            Err(e) => says_something(&e)?,
        };
        Ok(address || duration)
    });
}
