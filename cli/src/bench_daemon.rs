//! `flowhost bench daemon`: the daemon measured over HTTP on loopback — a
//! `flowhost serve` of this binary on a durable (synchronous=FULL) SQLite
//! store in a temporary folder, driven by blocking HTTP clients on threads:
//! submit→result latency of a 3-state machine (one client, then 16 at
//! once), submissions accepted per second, state increments per second, and
//! warm-pool vs fresh call latency of a plugin of each language.
//! May import: the `flowhost` library, `run` (store flags), `main` (errors).

use super::CliError;
use clap::Args;
use flowhost::plugin::bench::{Latency, bench as plugin_bench, sample_input};
use flowhost::plugin::{PluginSettings, registry};
use serde_json::{Value, json};
use std::io::BufRead;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub(super) struct BenchDaemonArgs {
    /// Submit→result round trips of the sequential client.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    sequential: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// Requests each concurrent client makes (in each concurrent run).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    per_client: u32,
    /// Calls per plugin in the warm-vs-fresh rows (0 leaves them out).
    #[arg(long, default_value_t = 200)]
    plugin_calls: u32,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: super::RuntimeArgs,
}

const MACHINE: &str = r#"spec: flatmachine
data:
  name: three
  plugins: {echo: echo}
  states:
    a: {type: initial, plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n }}"}, transitions: [{to: b}]}
    b: {plugin: echo, input: {n: "{{ context.n }}"}, output_to_context: {n: "{{ output.n }}"}, transitions: [{to: done}]}
    done: {type: final, output: {n: "{{ context.n }}"}}
"#;

/// A daemon this command started, stopped (SIGTERM, by its PID) when dropped.
pub(super) struct Daemon {
    child: Option<std::process::Child>,
    base: String,
}

impl Daemon {
    /// `flowhost serve` of this binary on a free loopback port, with these
    /// flags; returns once it listens.
    pub(super) fn start(flags: &[&std::ffi::OsStr]) -> Result<Daemon, CliError> {
        let exe = std::env::current_exe().map_err(other)?;
        let mut child = std::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("FLOWHOST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError::Other(format!("cannot start flowhost serve: {e}")))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(other)?;
        }
        // Stopped by its drop if it did not start.
        let mut daemon = Daemon {
            child: Some(child),
            base: String::new(),
        };
        daemon.base = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| CliError::Other(format!("flowhost serve did not start ({line:?})")))?
            .to_string();
        Ok(daemon)
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        super::jobs::stop_processes(self.child.take().into_iter().collect());
    }
}

pub(super) fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// One request; the status and the body.
fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<(u16, Value), String> {
    let mut res = agent
        .post(url)
        .send_json(body)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = res.status().as_u16();
    let value = res.body_mut().read_json().unwrap_or(Value::Null);
    Ok((status, value))
}

/// Runs `clients` threads of `per_client` calls of `call(client, i)`;
/// returns every call's latency and the wall time.
fn concurrently(
    clients: u32,
    per_client: u32,
    call: impl Fn(&ureq::Agent, u32, u32) -> Result<(), String> + Sync,
) -> Result<(Vec<Duration>, Duration), CliError> {
    let started = Instant::now();
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let call = &call;
                s.spawn(move || {
                    let agent = agent();
                    let mut times = Vec::with_capacity(per_client as usize);
                    for i in 0..per_client {
                        let t = Instant::now();
                        call(&agent, c, i)?;
                        times.push(t.elapsed());
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let wall = started.elapsed();
    let mut all = Vec::new();
    for r in results {
        all.extend(r.map_err(CliError::Other)?);
    }
    Ok((all, wall))
}

fn row(name: &str, l: &Latency) -> String {
    format!(
        "{name:<54} p50 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        l.p50_us / 1e3,
        l.p99_us / 1e3,
        l.max_us / 1e3
    )
}

pub(super) async fn daemon(a: BenchDaemonArgs) -> Result<ExitCode, CliError> {
    let dir = tempfile::tempdir().map_err(other)?;
    let machines = dir.path().join("machines");
    std::fs::create_dir(&machines).map_err(other)?;
    std::fs::write(machines.join("three.yml"), MACHINE).map_err(other)?;
    let plugins = a.runtime.plugins_dir();
    let daemon = Daemon::start(&[
        "--max-workers".as_ref(),
        "4".as_ref(),
        "--db".as_ref(),
        dir.path().join("bench.db").as_os_str(),
        "--machines".as_ref(),
        machines.as_os_str(),
        "--plugins".as_ref(),
        plugins.as_os_str(),
    ])?;
    let submit_url = format!("{}/workflows?wait=30s", daemon.base);
    let run_one = |agent: &ureq::Agent, n: u32| -> Result<String, String> {
        let (status, body) = post(
            agent,
            &submit_url,
            &json!({"machine": "three", "input": {"n": n}}),
        )?;
        if status != 201 || body["result"]["n"] != json!(n) {
            return Err(format!("a run answered {status}: {body}"));
        }
        Ok(body["id"].as_str().unwrap_or_default().to_string())
    };

    let submit_only = format!("{}/workflows", daemon.base);
    let base = daemon.base.clone();

    // Warm-up, then one client.
    let agent = agent();
    let mut last = String::new();
    for n in 0..50 {
        last = run_one(&agent, n).map_err(CliError::Other)?;
    }
    let mut sequential = Vec::new();
    for n in 0..a.sequential {
        let t = Instant::now();
        run_one(&agent, n).map_err(CliError::Other)?;
        sequential.push(t.elapsed());
    }
    let sequential = Latency::of(sequential);
    eprintln!("{}", row("submit→result, 1 client (3 states)", &sequential));

    let (times, wall) = concurrently(a.clients, a.per_client, |agent, c, i| {
        run_one(agent, c * 100_000 + i).map(|_| ())
    })?;
    let runs = times.len();
    let concurrent = Latency::of(times);
    let concurrent_rate = runs as f64 / wall.as_secs_f64();
    eprintln!(
        "{}   {:.0} runs/s",
        row(
            &format!("submit→result, {} clients", a.clients),
            &concurrent
        ),
        concurrent_rate
    );

    let inc_url = format!("{base}/workflows/{last}/state/n/increment");
    let (times, wall) = concurrently(a.clients, a.per_client, |agent, _, _| {
        let (status, body) = post(agent, &inc_url, &json!({}))?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("an increment answered {status}: {body}"))
        }
    })?;
    let increments = times.len() as f64 / wall.as_secs_f64();
    let inc_latency = Latency::of(times);
    eprintln!(
        "{}   {increments:.0} increments/s",
        row(
            &format!("state increment, {} clients", a.clients),
            &inc_latency
        )
    );
    // Submissions accepted: with the daemon's workers running them, and
    // with its workers held at 0 (what the API and the store take in a
    // burst; the queue keeps them for later).
    let scale_url = format!("{base}/workers/scale");
    let submit = |agent: &ureq::Agent, c: u32, i: u32| {
        let input = json!({"machine": "three", "input": {"n": c * 100_000 + i}});
        let (status, body) = post(agent, &submit_only, &input)?;
        if status == 202 || status == 201 {
            Ok(())
        } else {
            Err(format!("a submit answered {status}: {body}"))
        }
    };
    let mut accepted = Vec::new();
    for (label, workers) in [
        ("workers running", Value::Null),
        ("workers held at 0", json!(0)),
    ] {
        post(&agent, &scale_url, &json!({"workers": workers})).map_err(CliError::Other)?;
        let (times, wall) = concurrently(a.clients, a.per_client, submit)?;
        let rate = times.len() as f64 / wall.as_secs_f64();
        let latency = Latency::of(times);
        let name = format!("submit (no wait), {} clients, {label}", a.clients);
        eprintln!(
            "{}   {rate:.0} submissions/s accepted",
            row(&name, &latency)
        );
        accepted.push(json!({"workers": label, "submissions_per_sec": rate, "latency": latency}));
    }
    post(&agent, &scale_url, &json!({"workers": null})).map_err(CliError::Other)?;

    drop(daemon);

    // Warm pool vs a fresh instance per call, one plugin per language.
    let mut languages = Vec::new();
    if a.plugin_calls > 0 {
        let config = a.runtime.runtime_config(false)?;
        for (language, name, input) in [
            ("rust", "echo", sample_input(256)),
            (
                "python",
                "sentiment",
                json!({"text": "Fast, safe and pleasant."}),
            ),
            (
                "javascript",
                "reshape",
                json!({"name": "Ada", "contact": {"email": "ada@example.org"}, "meta": {"tags": ["a", "b"]}}),
            ),
            ("c", "jsonstat", json!({"a": [1, {"b": "x"}], "c": "d"})),
        ] {
            let Ok(located) = registry::locate(name, &plugins) else {
                eprintln!("{language:<10} ({name}): not built, left out");
                continue;
            };
            let settings = located
                .settings()
                .unwrap_or_else(|_| PluginSettings::new(name));
            match plugin_bench(
                &config,
                &located.wasm,
                &settings,
                &input,
                a.plugin_calls as usize,
            )
            .await
            {
                Ok(r) => {
                    eprintln!(
                        "{}",
                        row(
                            &format!("{language} ({name}) fresh instance per call"),
                            &r.fresh
                        )
                    );
                    eprintln!(
                        "{}",
                        row(&format!("{language} ({name}) warm pool"), &r.warm)
                    );
                    languages.push(json!({"language": language, "plugin": name, "fresh": r.fresh, "warm": r.warm}));
                }
                Err(e) => eprintln!("{language} ({name}): {e}"),
            }
        }
    }
    let report = json!({
        "sequential": sequential,
        "concurrent": {"clients": a.clients, "latency": concurrent, "runs_per_sec": concurrent_rate},
        "accepted": accepted,
        "increments": {"clients": a.clients, "per_sec": increments, "latency": inc_latency},
        "plugins": languages,
    });
    if a.json {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
