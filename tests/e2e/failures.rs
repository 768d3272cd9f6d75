//! Every failure mode, through the library: its own error kind, and the same
//! runtime still serves a normal call afterwards.

use flowhost::plugin::{
    CallContext, ErrorKind, LimitOverrides, PluginError, PluginSettings, Runtime, RuntimeConfig,
    standalone_meta,
};
use flowhost_e2e::{plugin, runtime};
use serde_json::{Value, json};

fn settings(name: &str, limits: LimitOverrides) -> PluginSettings {
    PluginSettings {
        limits,
        ..PluginSettings::new(name)
    }
}

async fn call(
    rt: &Runtime,
    name: &str,
    input: Value,
    limits: LimitOverrides,
) -> Result<Value, PluginError> {
    let plugin = rt.load_file(&plugin(name), settings(name, limits))?;
    plugin
        .process(&standalone_meta("t"), &input, &CallContext::default())
        .await
}

async fn echo_still_works(rt: &Runtime, after: &str) {
    let input = json!({"after": after, "n": [1, 2, 3]});
    let out = call(rt, "echo", input.clone(), LimitOverrides::default()).await;
    assert_eq!(out, Ok(input), "a normal call after `{after}` failed");
}

#[tokio::test]
async fn each_failure_has_its_kind_and_the_runtime_survives() {
    let rt = runtime(None);
    let ms = |t| LimitOverrides {
        timeout_ms: Some(t),
        ..Default::default()
    };
    let mb = |m| LimitOverrides {
        memory_mb: Some(m),
        ..Default::default()
    };
    let cases: Vec<(&str, Value, LimitOverrides, ErrorKind)> = vec![
        (
            "loop",
            json!({"attack": "loop"}),
            ms(100),
            ErrorKind::Timeout,
        ),
        (
            "memory",
            json!({"attack": "memory"}),
            mb(32),
            ErrorKind::OutOfMemory,
        ),
        (
            "recursion",
            json!({"attack": "recursion"}),
            ms(5_000),
            ErrorKind::Trap,
        ),
        (
            "shadow_stack",
            json!({"attack": "shadow_stack"}),
            ms(5_000),
            ErrorKind::Trap,
        ),
        (
            "panic",
            json!({"attack": "panic"}),
            ms(5_000),
            ErrorKind::Trap,
        ),
        (
            "invalid_json",
            json!({"attack": "invalid_json"}),
            ms(5_000),
            ErrorKind::InvalidOutput,
        ),
        (
            "huge_output",
            json!({"attack": "huge_output", "mb": 100}),
            LimitOverrides {
                memory_mb: Some(512),
                ..Default::default()
            },
            ErrorKind::InvalidOutput,
        ),
        (
            "invalid_input",
            json!({"attack": "guest_error", "kind": "invalid_input"}),
            ms(5_000),
            ErrorKind::InvalidInput,
        ),
        (
            "retryable",
            json!({"attack": "guest_error", "kind": "retryable"}),
            ms(5_000),
            ErrorKind::Retryable,
        ),
        (
            "fatal",
            json!({"attack": "guest_error", "kind": "fatal"}),
            ms(5_000),
            ErrorKind::Fatal,
        ),
    ];
    for (label, input, limits, kind) in cases {
        let err = call(&rt, "adversary", input, limits)
            .await
            .expect_err(label);
        assert_eq!(err.kind(), kind, "{label}: {err}");
        echo_still_works(&rt, label).await;
    }
}

#[tokio::test]
async fn trap_messages_say_what_happened() {
    let rt = runtime(None);
    let err = call(
        &rt,
        "adversary",
        json!({"attack": "panic"}),
        LimitOverrides::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("adversary panicked on purpose"),
        "{err}"
    );
    let err = call(
        &rt,
        "adversary",
        json!({"attack": "recursion"}),
        LimitOverrides::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("stack overflow"), "{err}");
    let err = call(
        &rt,
        "adversary",
        json!({"attack": "memory"}),
        LimitOverrides {
            memory_mb: Some(16),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    match err {
        PluginError::OutOfMemory { limit, requested } => {
            assert_eq!(limit, 16 << 20);
            assert!(requested > limit);
        }
        other => panic!("expected out_of_memory, got {other}"),
    }
}

#[tokio::test]
async fn link_errors_name_the_problem() {
    let rt = runtime(None);
    let err = rt
        .load_file(
            &plugin("future-contract"),
            PluginSettings::new("future-contract"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Link);
    assert!(
        err.to_string().contains("flowhost:plugin@0.2.0") && err.to_string().contains("0.1.0"),
        "{err}"
    );

    let err = rt
        .load_file(
            &plugin("missing-import"),
            PluginSettings::new("missing-import"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Link);
    assert!(
        err.to_string().contains("flowhost:plugin/secret-service"),
        "{err}"
    );

    let audit = rt
        .load_file(&plugin("audit"), PluginSettings::new("audit"))
        .unwrap();
    let err = audit
        .process(&standalone_meta("t"), &json!({}), &CallContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Link);
    assert!(err.to_string().contains("hook plugin"), "{err}");
    let err = audit
        .run(&standalone_meta("t"), &json!({}), &CallContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Link);
    let echo = rt
        .load_file(&plugin("echo"), PluginSettings::new("echo"))
        .unwrap();
    let event = flowhost::plugin::HookEvent::MachineStart;
    let err = echo
        .on_event(
            &event,
            &standalone_meta("t"),
            &json!({}),
            &CallContext::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Link);
    assert!(err.to_string().contains("processor plugin"), "{err}");
    echo_still_works(&rt, "link errors").await;
}

#[tokio::test]
async fn load_errors_for_bad_files_and_pins() {
    let rt = runtime(None);
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("x.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let err = rt
        .load_file(&not_wasm, PluginSettings::new("x"))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Load);

    let pinned = PluginSettings {
        sha256: Some("00".repeat(32)),
        ..PluginSettings::new("echo")
    };
    let err = rt.load_file(&plugin("echo"), pinned).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Load);
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");

    let too_big = settings(
        "echo",
        LimitOverrides {
            memory_mb: Some(100_000),
            ..Default::default()
        },
    );
    let err = rt.load_file(&plugin("echo"), too_big).err().unwrap();
    assert!(err.to_string().contains("ceiling"), "{err}");
}

#[tokio::test]
async fn timeouts_interrupt_loops_and_never_end_early() {
    let rt = runtime(None);
    let limit = std::time::Duration::from_millis(150);
    let started = std::time::Instant::now();
    let err = call(
        &rt,
        "adversary",
        json!({"attack": "loop"}),
        LimitOverrides {
            timeout_ms: Some(150),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() >= limit,
        "the call was stopped before its limit"
    );
}

#[tokio::test]
async fn fuel_limits_are_reported_as_timeouts() {
    let rt = Runtime::new(RuntimeConfig {
        fuel: true,
        cache_dir: None,
        max_instances: 8,
        ..Default::default()
    })
    .unwrap();
    let limits = LimitOverrides {
        fuel: Some(1_000_000),
        ..Default::default()
    };
    let err = call(&rt, "adversary", json!({"attack": "loop"}), limits.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("fuel"), "{err}");
    assert!(
        !err.to_string().contains("ms limit"),
        "a fuel budget is not a time limit: {err}"
    );
    assert_eq!(call(&rt, "echo", json!([1]), limits).await, Ok(json!([1])));
}

#[tokio::test]
async fn a_cancelled_call_is_interrupted() {
    let rt = runtime(None);
    let plugin = rt
        .load_file(&plugin("adversary"), PluginSettings::new("adversary"))
        .unwrap();
    let ctx = CallContext::default();
    ctx.cancel.cancel();
    let err = plugin
        .process(&standalone_meta("t"), &json!({"attack": "loop"}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Trap);
    assert!(err.to_string().contains("cancelled"), "{err}");
}

/// Cancelled with a grace period, a plugin that looks at `cancelled()`
/// stops by itself (its own error, not a trap); one that does not is
/// interrupted once the grace has passed.
#[tokio::test]
async fn a_cancelled_call_has_a_grace_period_to_stop_by_itself() {
    let rt = runtime(None);
    let plugin = rt
        .load_file(&plugin("adversary"), PluginSettings::new("adversary"))
        .unwrap();
    let polite = CallContext::default();
    polite
        .cancel
        .cancel_after(std::time::Duration::from_secs(3600));
    let err = plugin
        .process(
            &standalone_meta("t"),
            &json!({"attack": "sleep", "ms": 600_000}),
            &polite,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Retryable, "{err}");
    assert!(err.to_string().contains("cancelled"), "{err}");

    let parent = flowhost::plugin::CancelToken::default();
    let deaf = CallContext {
        cancel: parent.child(),
        ..Default::default()
    };
    parent.cancel_after(std::time::Duration::from_millis(20));
    let err = plugin
        .process(&standalone_meta("t"), &json!({"attack": "loop"}), &deaf)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Trap, "{err}");
    assert!(err.to_string().contains("cancelled"), "{err}");
}

#[tokio::test]
async fn instances_are_fresh_unless_reuse_is_asked_for() {
    let rt = runtime(None);
    let count = json!({"attack": "count"});
    let ctx = CallContext::default();
    let meta = standalone_meta("t");
    let fresh = rt
        .load_file(&plugin("adversary"), PluginSettings::new("adversary"))
        .unwrap();
    for _ in 0..3 {
        let out = fresh.process(&meta, &count, &ctx).await.unwrap();
        assert_eq!(out["calls_in_this_instance"], 1);
    }
    let warm = rt
        .load_file(
            &plugin("adversary"),
            PluginSettings {
                reuse: 3,
                ..PluginSettings::new("adversary")
            },
        )
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            warm.process(&meta, &count, &ctx).await.unwrap()["calls_in_this_instance"].clone(),
        );
    }
    assert_eq!(
        seen,
        vec![json!(1), json!(2), json!(3), json!(1)],
        "an instance serves `reuse` calls, then is replaced"
    );

    // A trap discards the warm instance: the next call gets a fresh one.
    assert_eq!(
        warm.process(&meta, &count, &ctx).await.unwrap()["calls_in_this_instance"],
        2
    );
    warm.process(&meta, &json!({"attack": "panic"}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(
        warm.process(&meta, &count, &ctx).await.unwrap()["calls_in_this_instance"],
        1
    );
}

#[tokio::test]
async fn host_state_and_config_reach_the_guest() {
    use flowhost::plugin::{HookEvent, MemoryState};
    use std::sync::Arc;
    let rt = runtime(None);
    let audit = rt
        .load_file(
            &plugin("audit"),
            PluginSettings {
                config: json!({"redirect": {"b": "c"}}),
                ..PluginSettings::new("audit")
            },
        )
        .unwrap();
    let state = Arc::new(MemoryState::default());
    let ctx = CallContext {
        state: state.clone(),
        ..CallContext::default()
    };
    let event = HookEvent::Transition(flowhost::plugin::TransitionInfo {
        from: "a".into(),
        to: "b".into(),
    });
    let out = audit
        .on_event(&event, &standalone_meta("t"), &json!({}), &ctx)
        .await
        .unwrap();
    assert_eq!(out.redirect.as_deref(), Some("c"));
    assert_eq!(out.context, Some(json!({"audit": ["transition:a->b"]})));
    audit
        .on_event(
            &HookEvent::MachineEnd,
            &standalone_meta("t"),
            &json!({}),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(state.snapshot()["audit_events"], 2);

    let router = rt
        .load_file(&plugin("router"), PluginSettings::new("router"))
        .unwrap();
    let out = router
        .run(&standalone_meta("t"), &json!({"next": "done"}), &ctx)
        .await
        .unwrap();
    assert_eq!(
        (out.next.as_deref(), out.output),
        (Some("done"), json!({"next": "done"}))
    );
}

/// Runs in a child process (see `memory_bomb_keeps_host_rss_bounded`), so
/// that other tests' memory does not count.
#[tokio::test]
#[ignore = "run by memory_bomb_keeps_host_rss_bounded in its own process"]
async fn memory_bomb_child() {
    let rt = runtime(None);
    let limits = LimitOverrides {
        memory_mb: Some(64),
        ..Default::default()
    };
    let before = peak_rss_kib();
    for _ in 0..20 {
        let err = call(
            &rt,
            "adversary",
            json!({"attack": "memory"}),
            limits.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfMemory);
    }
    println!("\nRSS_GROWTH_KIB={}", peak_rss_kib() - before);
}

/// Peak resident memory; fails loudly where it cannot be measured (a test
/// that measured nothing must not pass).
fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("peak RSS is read from /proc/self/status (Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/self/status has a VmHWM line in kB")
}

#[test]
fn memory_bomb_keeps_host_rss_bounded() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "failures::memory_bomb_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let growth: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("RSS_GROWTH_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS figure in: {text}"));
    // 20 bombs of 64 MiB each: the peak must stay near one cap, not grow with the count.
    assert!(
        growth < 192 * 1024,
        "peak RSS grew by {growth} KiB over 20 capped memory bombs"
    );
}
