//! Plugins written in Python, JavaScript and C behave like Rust ones: golden
//! cases pass, guest errors keep their kind, busy loops are interrupted, and
//! the runtime serves normal calls afterwards.

use flowhost::plugin::{CallContext, ErrorKind, LimitOverrides, PluginSettings, standalone_meta};
use flowhost_e2e::{plugin, plugin_source, run, runtime, shared_cache, stderr, stdout};
use serde_json::{Value, json};

/// (plugin, source folder, a good input)
const PLUGINS: [(&str, &str, &str); 3] = [
    ("sentiment", "python/sentiment", r#"{"text": "great"}"#),
    ("reshape", "js/reshape", r#"{"k": 1}"#),
    ("jsonstat", "c/jsonstat", r#"{"k": 1}"#),
];

#[test]
fn golden_cases_pass_in_every_language() {
    let mut args = vec!["plugin".to_string(), "test".to_string()];
    args.extend(
        PLUGINS
            .iter()
            .map(|(_, dir, _)| plugin_source(dir).display().to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&shared_cache(), &args);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.trim_end().ends_with("passed, 0 failed"), "{out}");
}

#[tokio::test]
async fn errors_and_timeouts_behave_the_same_in_every_language() {
    let rt = runtime(Some(&shared_cache()));
    let ctx = CallContext::default();
    let meta = standalone_meta("t");
    for (name, _, good) in PLUGINS {
        let limits = LimitOverrides {
            timeout_ms: Some(300),
            ..Default::default()
        };
        let p = rt
            .load_file(
                &plugin(name),
                PluginSettings {
                    limits,
                    ..PluginSettings::new(name)
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = p.info().await.unwrap();
        assert_eq!(
            (info.name.as_str(), info.kinds.clone()),
            (name, vec!["processor".to_string()])
        );

        for (kind, wanted) in [
            ("invalid_input", ErrorKind::InvalidInput),
            ("retryable", ErrorKind::Retryable),
            ("fatal", ErrorKind::Fatal),
        ] {
            let err = p
                .process(&meta, &json!({"_fail": kind}), &ctx)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), wanted, "{name}, _fail {kind}: {err}");
        }

        let err = p
            .process(&meta, &json!({"_spin": true}), &ctx)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Timeout,
            "{name}: a busy loop must be interrupted: {err}"
        );

        let good: Value = serde_json::from_str(good).unwrap();
        p.process(&meta, &good, &ctx)
            .await
            .unwrap_or_else(|e| panic!("{name} after a timeout: {e}"));
    }
}
