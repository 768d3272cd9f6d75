//! `flowhost bench llm`: what the host adds to one LLM call — the `llm`
//! plugin (instantiation, prompt rendering, request building, schema check)
//! and the HTTP round trip through the host's checked client — measured
//! against a canned chat-completions endpoint served in this process on
//! loopback. The endpoint's own handling time is timed inside it and taken
//! out of every sample. Figures, not assertions.
//! May import: the `flowhost` library, `main` (errors, runtime flags).

use super::CliError;
use clap::Args;
use flowhost::plugin::bench::Latency;
use flowhost::plugin::{
    CallContext, HostRule, NetConfig, PluginSettings, Runtime, registry, standalone_meta,
};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args)]
pub(super) struct BenchLlmArgs {
    /// Calls measured (after a warm-up).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    calls: u32,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: super::RuntimeArgs,
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

const ANSWER: &str = r#"{"id":"b","object":"chat.completion","model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"{\"score\": 7, \"feedback\": \"Short and clear.\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":9,"total_tokens":51}}"#;

pub(super) async fn llm(a: BenchLlmArgs) -> Result<ExitCode, CliError> {
    // The endpoint: answers at once, timing its own handling.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(other)?;
    let addr = listener.local_addr().map_err(other)?;
    let served: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let log = served.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let started = Instant::now();
            let ok = serde_json::from_slice::<Value>(&body).is_ok();
            let response = (
                if ok {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::BAD_REQUEST
                },
                [("content-type", "application/json")],
                ANSWER,
            );
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(started.elapsed());
            response
        }
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = a.runtime.runtime_config(false)?;
    let mut net = NetConfig::clone(&config.net);
    net.allow
        .push(HostRule::parse(&addr.to_string()).map_err(CliError::Usage)?);
    config.net = Arc::new(net);
    let runtime = Runtime::new(config).map_err(other)?;
    let plugins = a.runtime.plugins_dir();
    let located = registry::locate("llm", &plugins).map_err(|e| {
        CliError::Other(format!(
            "{e} (the provided llm plugin: `cargo xtask plugins` builds it)"
        ))
    })?;
    let mut settings = located
        .settings()
        .unwrap_or_else(|_| PluginSettings::new("llm"));
    settings.config = json!({
        "agent": {
            "name": "critic",
            "system": "You critique marketing copy for {{ input.product }}.",
            "user": "Tagline: \"{{ input.tagline }}\"\nScore it from 1 to 10.",
            "output": {"score": {"type": "int"}, "feedback": {"type": "str"}},
        },
        "model": {"name": "bench", "base_url": format!("http://{addr}/v1"), "structured": "json_schema", "temperature": 0.2},
    });
    let input = json!({"product": "a solar kettle", "tagline": "Sunshine, steeped."});
    let meta = standalone_meta("bench");
    let ctx = CallContext::default();

    let mut rows = Vec::new();
    for (label, reuse) in [("fresh instance per call", 0), ("warm instance", u32::MAX)] {
        let plugin = runtime
            .load_file(
                &located.wasm,
                PluginSettings {
                    reuse,
                    ..settings.clone()
                },
            )
            .map_err(CliError::plugin("llm"))?;
        for _ in 0..20 {
            check(plugin.process(&meta, &input, &ctx).await)?;
        }
        served.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut total = Vec::with_capacity(a.calls as usize);
        for _ in 0..a.calls {
            let started = Instant::now();
            check(plugin.process(&meta, &input, &ctx).await)?;
            total.push(started.elapsed());
        }
        let server_times = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let overhead: Vec<Duration> = total
            .iter()
            .zip(
                server_times
                    .iter()
                    .chain(std::iter::repeat(&Duration::ZERO)),
            )
            .map(|(t, s)| t.saturating_sub(*s))
            .collect();
        let server = Latency::of(server_times);
        let overhead = Latency::of(overhead);
        eprintln!(
            "llm call, {label:<24} host overhead p50 {:>7.3} ms   p99 {:>7.3} ms   (endpoint's own time p50 {:.3} ms)",
            overhead.p50_us / 1e3,
            overhead.p99_us / 1e3,
            server.p50_us / 1e3
        );
        rows.push(
            json!({"instance": label, "overhead": overhead, "endpoint": server, "calls": a.calls}),
        );
    }
    server.abort();
    if a.json {
        println!("{}", json!({ "llm": rows }));
    }
    Ok(ExitCode::SUCCESS)
}

/// A call must succeed with an output (not an error envelope) to count.
fn check(r: Result<Value, flowhost::plugin::PluginError>) -> Result<(), CliError> {
    let out = r.map_err(CliError::plugin("llm"))?;
    match out.get("error") {
        Some(e) => Err(CliError::Other(format!("the benchmark call failed: {e}"))),
        None => Ok(()),
    }
}
