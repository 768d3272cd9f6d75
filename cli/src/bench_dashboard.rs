//! `flowhost bench dashboard`: the dashboard's reads at scale. Seeds an
//! SQLite store with executions (a million by default: roots and children
//! of five machines, every status, a month of creation times, kept between
//! runs so it seeds once), prints its size and the query plan of each list
//! the dashboard asks for, then serves it with `flowhost serve` and times
//! each of the page's requests by the daemon's own `Server-Timing` (server
//! time) and by the client (round trip): p50 and p95.
//! May import: the `flowhost` library, `bench_daemon` (starting a daemon),
//! `main` (errors).

use super::CliError;
use super::bench_daemon::{Daemon, agent, other};
use clap::Args;
use flowhost::backend::{
    Backend, Checkpoint, Checkpoints, Durability, ExecutionStatus, ListFilter, SqliteBackend,
};
use flowhost::plugin::bench::Latency;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub(super) struct BenchDashboardArgs {
    /// The SQLite store to seed and serve (kept, so later runs seed nothing).
    #[arg(long, default_value = ".flowhost/bench-dashboard.db")]
    db: PathBuf,
    /// Executions the store holds (it is seeded up to this many).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    executions: u64,
    /// Times each request is made.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
}

const MACHINES: [&str; 5] = ["orders", "invoices", "enrich", "triage", "report"];
const DAY_MS: u64 = 86_400_000;

/// The status of the `n`th seeded execution: mostly done, some of each other.
fn status_of(n: u64) -> ExecutionStatus {
    match n % 100 {
        0..=79 => ExecutionStatus::Done,
        80..=87 => ExecutionStatus::Failed,
        88..=92 => ExecutionStatus::Cancelled,
        93..=96 => ExecutionStatus::Running,
        97..=98 => ExecutionStatus::Waiting,
        _ => ExecutionStatus::Queued,
    }
}

/// A little PRNG (xorshift), so a seeded store is the same every time.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An id of the shape flowhost gives (a UUIDv7: the time first).
fn id_at(ms: u64, r: &mut Rand) -> String {
    let (a, b) = (r.next(), r.next());
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        a & 0xfff,
        0x8000 | ((a >> 12) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The `n`th execution of a store seeded to `total`, created in the month
/// before `now`; every fifth is a child of the root before it.
fn execution(n: u64, total: u64, now: u64, last_root: &mut String, r: &mut Rand) -> Checkpoint {
    let created = now - 30 * DAY_MS + n * (30 * DAY_MS) / total;
    let id = id_at(created, r);
    let child = n % 5 == 4 && !last_root.is_empty();
    let parent = child.then(|| last_root.clone());
    if !child {
        last_root.clone_from(&id);
    }
    let machine = MACHINES[(r.next() % MACHINES.len() as u64) as usize];
    let status = status_of(r.next());
    let (state, step) = match status {
        ExecutionStatus::Done => ("done", 4),
        ExecutionStatus::Failed => ("charge", 3),
        ExecutionStatus::Cancelled => ("review", 2),
        ExecutionStatus::Waiting => ("review", 2),
        ExecutionStatus::Running => ("charge", 3),
        ExecutionStatus::Queued => ("start", 0),
    };
    let record = json!({
        "id": id,
        "parent": parent,
        "machine": machine,
        "source": {"file": format!("/srv/flowhost/machines/{machine}.yml"), "path": []},
        "status": status,
        "state": state,
        "step": step,
        "attempt": 1,
        "input": {"order": n, "customer": format!("c{}", n % 997)},
        "context": {"order": n, "total": (n % 1000) as f64 * 1.25, "items": n % 7},
        "created_ms": created,
    });
    Checkpoint {
        id,
        parent,
        machine: machine.to_string(),
        status,
        state: state.to_string(),
        step,
        created_ms: created,
        updated_ms: created + 1500,
        record: record.to_string(),
        consumes_signal: None,
        fence: None,
        enqueue: Vec::new(),
        result: None,
    }
}

/// Seeds the store up to `total` executions; how many it holds.
async fn seed(store: &SqliteBackend, total: u64) -> Result<u64, CliError> {
    let have: u64 = store
        .counts()
        .await
        .map_err(other)?
        .iter()
        .map(|c| c.count)
        .sum();
    if have >= total {
        eprintln!("the store holds {have} executions already: nothing to seed");
        return Ok(have);
    }
    let bar = indicatif::ProgressBar::new(total - have).with_style(
        indicatif::ProgressStyle::with_template(
            "seeding {bar:40} {pos}/{len} executions ({per_sec}, {eta} left)",
        )
        .map_err(other)?,
    );
    let now = store.clock().now_ms();
    let mut r = Rand(0x9e37_79b9_7f4a_7c15 ^ have);
    let mut last_root = String::new();
    for n in have..total {
        let cp = execution(n, total, now, &mut last_root, &mut r);
        // Deferred writes group-commit; every 10,000 one is awaited so the
        // queue stays bounded.
        if n % 10_000 == 9_999 || n + 1 == total {
            store.save(cp).await.map_err(other)?;
            bar.set_position(n + 1 - have);
        } else {
            store.save_deferred(cp).await.map_err(other)?;
        }
    }
    bar.finish();
    Ok(total)
}

/// The API request for a list: the filter as the query of `GET /workflows`
/// (the page's 50, without the one more the store is asked for).
fn list_path(f: &ListFilter) -> String {
    let mut q = vec![format!("limit={}", f.limit.unwrap_or(51) - 1)];
    if let Some(s) = f.status {
        q.push(format!("status={s}"));
    }
    if let Some(m) = &f.machine {
        q.push(format!("machine={m}"));
    }
    if let Some(ms) = f.created_from {
        q.push(format!("since={ms}"));
    }
    if let Some(ms) = f.created_before {
        q.push(format!("until={ms}"));
    }
    if let Some(p) = &f.id_prefix {
        q.push(format!("prefix={p}"));
    }
    if let Some((ms, id)) = &f.after {
        q.push(format!("cursor={ms}-{id}"));
    }
    format!("/workflows?{}", q.join("&"))
}

/// GETs `path` `times` times; server times (from `Server-Timing`) and
/// round trips, and the last answer.
fn measure(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    path: &str,
    times: u32,
) -> Result<(Vec<Duration>, Vec<Duration>, Value), CliError> {
    let (mut server, mut client) = (Vec::new(), Vec::new());
    let mut last = Value::Null;
    for _ in 0..times {
        let started = Instant::now();
        let mut res = agent
            .get(format!("{base}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .call()
            .map_err(|e| CliError::Other(format!("GET {path}: {e}")))?;
        let timing = res
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("dur=").nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1e3).ok());
        let status = res.status().as_u16();
        last = res.body_mut().read_json().unwrap_or(Value::Null);
        client.push(started.elapsed());
        if status != 200 {
            return Err(CliError::Other(format!("GET {path}: {status} {last}")));
        }
        server
            .push(timing.ok_or_else(|| {
                CliError::Other(format!("GET {path}: no Server-Timing duration"))
            })?);
    }
    Ok((server, client, last))
}

pub(super) async fn dashboard(a: BenchDashboardArgs) -> Result<ExitCode, CliError> {
    if let Some(dir) = a.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
    }
    let store = SqliteBackend::open(&a.db, Durability::Normal)
        .map_err(|e| CliError::Other(format!("{}: {e}", a.db.display())))?;
    let started = Instant::now();
    let total = seed(&store, a.executions).await?;
    eprintln!("store ready in {:.1} s", started.elapsed().as_secs_f64());

    // What the page asks for: the first page, then filters.
    let newest = store
        .list(&ListFilter {
            limit: Some(1),
            roots_only: true,
            ..Default::default()
        })
        .await
        .map_err(other)?;
    let sample_id = newest.first().map(|c| c.id.clone()).unwrap_or_default();
    let now = newest.first().map_or(0, |c| c.created_ms);
    let day = (
        now.saturating_sub(7 * DAY_MS),
        now.saturating_sub(6 * DAY_MS),
    );
    let deep = store
        .list(&ListFilter {
            roots_only: true,
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .map_err(other)?;
    let prefix: String = sample_id.chars().take(11).collect();
    // The oldest execution's first 6 characters: thousands match, all far
    // down the creation index (the slowest list there is).
    let oldest = store
        .list(&ListFilter {
            created_before: Some(now.saturating_sub(29 * DAY_MS)),
            roots_only: true,
            limit: Some(1),
            ..Default::default()
        })
        .await
        .map_err(other)?;
    let old_prefix: String = oldest
        .first()
        .map_or(String::new(), |c| c.id.chars().take(6).collect());
    // Each list as the page asks for it: roots, newest first, 50 a page.
    let list = |f: ListFilter| ListFilter {
        roots_only: true,
        limit: Some(51),
        ..f
    };
    let day_range = ListFilter {
        created_from: Some(day.0),
        created_before: Some(day.1),
        ..Default::default()
    };
    let cases: Vec<(&str, ListFilter)> = vec![
        ("first page", list(ListFilter::default())),
        (
            "status=failed",
            list(ListFilter {
                status: Some(ExecutionStatus::Failed),
                ..Default::default()
            }),
        ),
        (
            "status=queued",
            list(ListFilter {
                status: Some(ExecutionStatus::Queued),
                ..Default::default()
            }),
        ),
        (
            "machine=triage",
            list(ListFilter {
                machine: Some("triage".into()),
                ..Default::default()
            }),
        ),
        ("one day, a week ago", list(day_range.clone())),
        (
            "id prefix (11 characters)",
            list(ListFilter {
                id_prefix: Some(prefix),
                ..Default::default()
            }),
        ),
        (
            "id prefix (6, a month old)",
            list(ListFilter {
                id_prefix: Some(old_prefix),
                ..Default::default()
            }),
        ),
        (
            "failed+triage, one day",
            list(ListFilter {
                status: Some(ExecutionStatus::Failed),
                machine: Some("triage".into()),
                ..day_range
            }),
        ),
        (
            "page 21 (cursor)",
            list(ListFilter {
                after: deep.last().map(|c| (c.created_ms, c.id.clone())),
                ..Default::default()
            }),
        ),
    ];
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = PathBuf::from(format!("{}-wal", a.db.display()));
    println!(
        "store: {} ({total} executions): {:.0} MiB (+ {:.0} MiB WAL)",
        a.db.display(),
        size(&a.db) as f64 / 1048576.0,
        size(&wal) as f64 / 1048576.0
    );
    println!("query plans:");
    for (name, filter) in &cases {
        println!(
            "  {name}: {}",
            store.explain_list(filter).map_err(other)?.join("; ")
        );
    }
    drop(store);

    let token = "bench-dashboard-token";
    let plugins = tempfile::tempdir().map_err(other)?;
    let daemon = Daemon::start(&[
        "--db".as_ref(),
        a.db.as_os_str(),
        "--plugins".as_ref(),
        plugins.path().as_os_str(),
        "--token".as_ref(),
        token.as_ref(),
        "--max-workers".as_ref(),
        "1".as_ref(),
    ])?;
    let agent = agent();
    let mut rows = vec![
        ("counts", "/counts".to_string()),
        ("machines", "/machines".to_string()),
    ];
    rows.extend(cases.iter().map(|(n, f)| (*n, list_path(f))));
    rows.push(("one execution", format!("/workflows/{sample_id}")));
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>12}   (ms, {} requests each)",
        "request", "server p50", "server p95", "round p50", "round p95", a.requests
    );
    let mut page_total = (0.0, 0.0);
    for (name, path) in &rows {
        // One warm-up request, not counted.
        measure(&agent, daemon.base(), token, path, 1)?;
        let (server, client, last) = measure(&agent, daemon.base(), token, path, a.requests)?;
        let (server, client) = (Latency::of(server), Latency::of(client));
        let (s50, s95) = (server.p50_us / 1e3, server.p95_us / 1e3);
        let (c50, c95) = (client.p50_us / 1e3, client.p95_us / 1e3);
        if ["counts", "machines", "first page"].contains(name) {
            page_total.0 += s50;
            page_total.1 += s95;
        }
        let listed = last["workflows"].as_array().map(Vec::len);
        println!(
            "{:<28} {s50:>10.2} {s95:>10.2} {c50:>12.2} {c95:>12.2}{}",
            name,
            listed.map_or(String::new(), |n| format!("   {n} listed"))
        );
    }
    println!(
        "the executions page (counts + machines + first page): server p50 {:.2} ms, p95 {:.2} ms",
        page_total.0, page_total.1
    );
    drop(daemon);
    Ok(ExitCode::SUCCESS)
}
