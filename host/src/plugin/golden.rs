//! Golden tests for one plugin: JSON cases with an input and the expected
//! output or error kind, run against the real component in the real sandbox
//! (`flowhost plugin test`).
//!
//! ```json
//! {
//!   "plugin": "text",
//!   "config": {"max_sentences": 1},
//!   "cases": [
//!     {"name": "summarize", "input": {"task": "summarize", "text": "A. B."},
//!      "expect": {"output": {"task": "summarize", "result": "A."}}},
//!     {"name": "unknown task", "input": {"task": "dance"},
//!      "expect": {"error": "invalid_input", "message_contains": "dance"}}
//!   ]
//! }
//! ```
//!
//! A case may also set `config` (replacing the suite's), `state` (the
//! execution state before the call), `limits` (as in a manifest), and for
//! hooks an `event`; `expect` may also check `next` (steps), `redirect`
//! (hooks) and `state` (keys that must hold these values afterwards).

use super::call::CallContext;
use super::error::{ErrorKind, PluginError};
use super::limits::LimitOverrides;
use super::loaded::{ErrorInfo, HookEvent, TransitionInfo, standalone_meta};
use super::runtime::{PluginSettings, Runtime, World};
use super::state::MemoryState;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A file of golden cases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The plugin's name in the plugins folder (default: the folder or file name).
    pub plugin: Option<String>,
    /// Config for every case that does not set its own.
    pub config: Option<Value>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub input: Value,
    pub config: Option<Value>,
    #[serde(default)]
    pub state: BTreeMap<String, Value>,
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Hook plugins: the event, e.g. `{"state_enter": "a"}`, `"machine_start"`,
    /// `{"transition": {"from": "a", "to": "b"}}`.
    pub event: Option<Value>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `null` is an expectation too (a hook that leaves the context alone).
    #[serde(default, deserialize_with = "present")]
    pub output: Option<Value>,
    pub error: Option<String>,
    pub message_contains: Option<String>,
    pub next: Option<String>,
    pub redirect: Option<String>,
    #[serde(default)]
    pub state: BTreeMap<String, Value>,
}

/// A field that is there, even as `null`, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    /// `None` if the case passed, else what was wrong.
    pub failure: Option<String>,
    pub duration: Duration,
}

impl Suite {
    /// Reads a suite; errors name the file, line and column.
    pub fn read(path: &Path) -> Result<Suite, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let suite: Suite =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, case) in suite.cases.iter().enumerate() {
            if case.expect.output.is_some() == case.expect.error.is_some() {
                return Err(format!(
                    "{}: case {} (`{}`): `expect` needs exactly one of `output` or `error`",
                    path.display(),
                    i + 1,
                    case.name
                ));
            }
            if let Some(kind) = &case.expect.error
                && ErrorKind::parse(kind).is_none()
            {
                let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "{}: case `{}`: unknown error kind `{kind}` (expected one of {})",
                    path.display(),
                    case.name,
                    kinds.join(", ")
                ));
            }
        }
        Ok(suite)
    }
}

/// Runs every case against the component at `wasm`, each with a fresh instance.
pub async fn run_suite(
    runtime: &Runtime,
    wasm: &Path,
    base: &PluginSettings,
    suite: &Suite,
) -> Vec<CaseResult> {
    let mut results = Vec::with_capacity(suite.cases.len());
    for case in &suite.cases {
        let started = Instant::now();
        let failure = run_case(runtime, wasm, base, suite, case).await.err();
        results.push(CaseResult {
            name: case.name.clone(),
            failure,
            duration: started.elapsed(),
        });
    }
    results
}

/// What a call produced, whatever the world.
struct Produced {
    output: Value,
    next: Option<String>,
    redirect: Option<String>,
}

async fn run_case(
    runtime: &Runtime,
    wasm: &Path,
    base: &PluginSettings,
    suite: &Suite,
    case: &Case,
) -> Result<(), String> {
    let mut settings = base.clone();
    if let Some(config) = case.config.as_ref().or(suite.config.as_ref()) {
        settings.config = config.clone();
    }
    settings.limits = merge(&base.limits, &case.limits);
    let plugin = runtime
        .load_file(wasm, settings)
        .map_err(|e| format!("cannot load: {e}"))?;
    let state = Arc::new(MemoryState::new(case.state.clone()));
    let ctx = CallContext {
        state: state.clone(),
        ..CallContext::default()
    };
    let meta = standalone_meta(&case.name);
    let result = match plugin.world() {
        World::Processor => plugin
            .process(&meta, &case.input, &ctx)
            .await
            .map(|output| Produced {
                output,
                next: None,
                redirect: None,
            }),
        World::Step => plugin
            .run(&meta, &case.input, &ctx)
            .await
            .map(|s| Produced {
                output: s.output,
                next: s.next,
                redirect: None,
            }),
        World::Hook => {
            let event = parse_event(case.event.as_ref())?;
            plugin
                .on_event(&event, &meta, &case.input, &ctx)
                .await
                .map(|h| Produced {
                    output: h.context.unwrap_or(Value::Null),
                    next: None,
                    redirect: h.redirect,
                })
        }
    };
    check(&case.expect, result)?;
    let after = state.snapshot();
    for (key, want) in &case.expect.state {
        let got = after.get(key);
        if got != Some(want) {
            return Err(format!("state `{key}`: expected {want}, got {}", show(got)));
        }
    }
    Ok(())
}

fn check(expect: &Expect, result: Result<Produced, PluginError>) -> Result<(), String> {
    match (result, &expect.error) {
        (Ok(p), None) => {
            if let Some(want) = &expect.output
                && &p.output != want
            {
                return Err(format!(
                    "output differs:\n  expected: {want}\n  got:      {}",
                    p.output
                ));
            }
            if expect.next.is_some() && p.next != expect.next {
                return Err(format!(
                    "next: expected {:?}, got {:?}",
                    expect.next, p.next
                ));
            }
            if expect.redirect.is_some() && p.redirect != expect.redirect {
                return Err(format!(
                    "redirect: expected {:?}, got {:?}",
                    expect.redirect, p.redirect
                ));
            }
            Ok(())
        }
        (Ok(p), Some(kind)) => Err(format!(
            "expected a `{kind}` error, got output {}",
            p.output
        )),
        (Err(e), None) => Err(format!("expected output, got error [{}] {e}", e.kind())),
        (Err(e), Some(kind)) => {
            if ErrorKind::parse(kind) != Some(e.kind()) {
                return Err(format!("expected a `{kind}` error, got [{}] {e}", e.kind()));
            }
            match &expect.message_contains {
                Some(part) if !e.to_string().contains(part.as_str()) => {
                    Err(format!("error message does not contain {part:?}: {e}"))
                }
                _ => Ok(()),
            }
        }
    }
}

/// Case limits replace the plugin's own, field by field.
fn merge(base: &LimitOverrides, case: &LimitOverrides) -> LimitOverrides {
    LimitOverrides {
        memory_mb: case.memory_mb.or(base.memory_mb),
        timeout_ms: case.timeout_ms.or(base.timeout_ms),
        fuel: case.fuel.or(base.fuel),
        output_mb: case.output_mb.or(base.output_mb),
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or("nothing".to_string(), Value::to_string)
}

/// Parses a hook event written as JSON: `"machine_start"`, `{"state_enter": "a"}`, ...
pub fn parse_event(event: Option<&Value>) -> Result<HookEvent, String> {
    let Some(event) = event else {
        return Err("hook cases need an `event`".into());
    };
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("bad event {event}"))
    };
    let field = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match event {
        Value::String(s) if s == "machine_start" => Ok(HookEvent::MachineStart),
        Value::String(s) if s == "machine_end" => Ok(HookEvent::MachineEnd),
        Value::Object(map) if map.len() == 1 => {
            let (key, value) = map.iter().next().ok_or("empty event")?;
            match key.as_str() {
                "state_enter" => Ok(HookEvent::StateEnter(text(value)?)),
                "state_exit" => Ok(HookEvent::StateExit(text(value)?)),
                "action" => Ok(HookEvent::Action(text(value)?)),
                "transition" => Ok(HookEvent::Transition(TransitionInfo {
                    from: field(value, "from"),
                    to: field(value, "to"),
                })),
                "error" => Ok(HookEvent::Error(ErrorInfo {
                    state: field(value, "state"),
                    kind: field(value, "kind"),
                    message: field(value, "message"),
                })),
                other => Err(format!("unknown event `{other}`")),
            }
        }
        _ => Err(format!(
            "bad event {event}: expected \"machine_start\", \"machine_end\" or an object like {{\"state_enter\": \"a\"}}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_expected_null_output_is_an_expectation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        std::fs::write(
            &path,
            r#"{"cases": [{"name": "a", "expect": {"output": null}}]}"#,
        )
        .unwrap();
        let suite = Suite::read(&path).unwrap();
        let expect = &suite.cases[0].expect;
        assert_eq!(expect.output, Some(Value::Null));
        let produced = |output| {
            Ok(Produced {
                output,
                next: None,
                redirect: None,
            })
        };
        assert!(check(expect, produced(Value::Null)).is_ok());
        assert!(check(expect, produced(json!({"x": 1}))).is_err());
    }

    #[test]
    fn suites_need_one_expectation_and_known_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        std::fs::write(&path, r#"{"cases": [{"name": "a", "expect": {}}]}"#).unwrap();
        assert!(Suite::read(&path).unwrap_err().contains("exactly one"));
        std::fs::write(
            &path,
            r#"{"cases": [{"name": "a", "expect": {"error": "boom"}}]}"#,
        )
        .unwrap();
        assert!(
            Suite::read(&path)
                .unwrap_err()
                .contains("unknown error kind `boom`")
        );
        std::fs::write(&path, "{\"cases\": [\n{\"name\": \"a\", \"expct\": {}}]}").unwrap();
        let err = Suite::read(&path).unwrap_err();
        assert!(err.contains("line 2") && err.contains("expct"), "{err}");
    }

    #[test]
    fn events_parse() {
        assert_eq!(
            parse_event(Some(&json!("machine_start"))),
            Ok(HookEvent::MachineStart)
        );
        assert_eq!(
            parse_event(Some(&json!({"state_enter": "a"}))),
            Ok(HookEvent::StateEnter("a".into()))
        );
        assert!(parse_event(Some(&json!({"dance": 1}))).is_err());
        assert!(parse_event(None).is_err());
    }

    #[test]
    fn check_compares_kind_and_message() {
        let err = || {
            Err(PluginError::Timeout {
                limit: Duration::from_millis(5),
                detail: "slow".into(),
            })
        };
        let expect = Expect {
            error: Some("timeout".into()),
            ..Default::default()
        };
        assert!(check(&expect, err()).is_ok());
        let expect = Expect {
            error: Some("trap".into()),
            ..Default::default()
        };
        assert!(check(&expect, err()).is_err());
        let expect = Expect {
            error: Some("timeout".into()),
            message_contains: Some("fast".into()),
            ..Default::default()
        };
        assert!(check(&expect, err()).is_err());
    }
}
