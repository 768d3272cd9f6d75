//! Measures one plugin: compile time, cached load time, and call latency with
//! a fresh instance per call and with a warm (reused) instance
//! (`flowhost plugin bench`). Figures, not assertions: nothing here fails on
//! a slow machine.

use super::call::CallContext;
use super::error::PluginError;
use super::loaded::standalone_meta;
use super::runtime::{LoadSource, PluginSettings, Runtime, RuntimeConfig};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub calls_per_sec: f64,
}

impl Latency {
    /// The percentiles of `samples` (calls_per_sec: one after another).
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let total: Duration = samples.iter().sum();
        let n = samples.len().max(1) as f64;
        Latency {
            p50_us: at(0.50),
            p95_us: at(0.95),
            p99_us: at(0.99),
            max_us: at(1.0),
            mean_us: total.as_secs_f64() * 1e6 / n,
            calls_per_sec: n / total.as_secs_f64().max(1e-9),
        }
    }
}

/// What `bench` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub plugin: String,
    pub wasm_bytes: u64,
    pub input_bytes: usize,
    pub compile_ms: f64,
    /// Median of several loads from the disk cache, each into a new runtime.
    pub cached_load_ms: f64,
    pub fresh: Latency,
    pub warm: Latency,
    pub iterations: usize,
}

/// A JSON object of about `bytes` bytes.
pub fn sample_input(bytes: usize) -> Value {
    let filler = "x".repeat(bytes.saturating_sub(40));
    serde_json::json!({"id": 42, "kind": "bench", "payload": filler})
}

/// Runs the benchmark. `base` supplies the runtime sizing; the compile cache
/// goes to a temporary directory so the first load really compiles.
pub async fn bench(
    base: &RuntimeConfig,
    wasm: &Path,
    settings: &PluginSettings,
    input: &Value,
    iterations: usize,
) -> Result<BenchReport, PluginError> {
    let cache =
        tempfile::tempdir().map_err(|e| PluginError::load(format!("temporary cache: {e}")))?;
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..base.clone()
    };
    let runtime = || Runtime::new(config.clone()).map_err(|e| PluginError::load(e.to_string()));

    let first = runtime()?;
    let started = Instant::now();
    first.load_file(wasm, settings.clone())?;
    let compile = started.elapsed();

    let mut loads = Vec::new();
    for _ in 0..9 {
        let rt = runtime()?;
        let started = Instant::now();
        let plugin = rt.load_file(wasm, settings.clone())?;
        loads.push(started.elapsed());
        if plugin.load_report().source != LoadSource::DiskCache {
            return Err(PluginError::load(
                "the second load did not come from the compile cache",
            ));
        }
    }
    loads.sort();

    let fresh_plugin = first.load_file(
        wasm,
        PluginSettings {
            reuse: 0,
            ..settings.clone()
        },
    )?;
    let warm_plugin = first.load_file(
        wasm,
        PluginSettings {
            reuse: u32::MAX,
            ..settings.clone()
        },
    )?;
    let ctx = CallContext::default();
    let meta = standalone_meta("bench");
    let mut fresh = Vec::with_capacity(iterations);
    let mut warm = Vec::with_capacity(iterations);
    // Warm-up: fault in code pages and the warm instance.
    for _ in 0..20 {
        fresh_plugin.process(&meta, input, &ctx).await?;
        warm_plugin.process(&meta, input, &ctx).await?;
    }
    for _ in 0..iterations {
        let started = Instant::now();
        fresh_plugin.process(&meta, input, &ctx).await?;
        fresh.push(started.elapsed());
        let started = Instant::now();
        warm_plugin.process(&meta, input, &ctx).await?;
        warm.push(started.elapsed());
    }
    Ok(BenchReport {
        plugin: settings.name.clone(),
        wasm_bytes: std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0),
        input_bytes: input.to_string().len(),
        compile_ms: compile.as_secs_f64() * 1e3,
        cached_load_ms: loads[loads.len() / 2].as_secs_f64() * 1e3,
        fresh: Latency::of(fresh),
        warm: Latency::of(warm),
        iterations,
    })
}

/// How far past its time limit a runaway call runs before it is stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OvershootReport {
    pub plugin: String,
    pub limit_ms: f64,
    /// Time from the deadline to the call returning its timeout error.
    pub overshoot: Latency,
    pub runs: usize,
}

/// Calls a plugin that never finishes (`settings` must set a timeout) `runs`
/// times and measures how long after the deadline each call returns.
pub async fn timeout_overshoot(
    base: &RuntimeConfig,
    wasm: &Path,
    settings: &PluginSettings,
    input: &Value,
    runs: usize,
) -> Result<OvershootReport, PluginError> {
    let runtime = Runtime::new(base.clone()).map_err(|e| PluginError::load(e.to_string()))?;
    let plugin = runtime.load_file(wasm, settings.clone())?;
    let limit = plugin.limits().timeout;
    let ctx = CallContext::default();
    let meta = standalone_meta("bench");
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        match plugin.process(&meta, input, &ctx).await {
            Err(PluginError::Timeout { .. }) => {
                samples.push(started.elapsed().saturating_sub(limit))
            }
            Err(e) => return Err(e),
            Ok(_) => {
                return Err(PluginError::load(
                    "the call finished within its time limit; give a longer-running input",
                ));
            }
        }
    }
    Ok(OvershootReport {
        plugin: settings.name.clone(),
        limit_ms: limit.as_secs_f64() * 1e3,
        overshoot: Latency::of(samples),
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = Latency::of(samples);
        assert_eq!(
            (l.p50_us.round(), l.p95_us.round(), l.p99_us.round()),
            (51.0, 95.0, 99.0)
        );
        assert!((l.mean_us - 50.5).abs() < 1e-9);
    }

    #[test]
    fn sample_input_is_about_the_requested_size() {
        let n = sample_input(1024).to_string().len();
        assert!((1000..=1100).contains(&n), "{n}");
    }
}
