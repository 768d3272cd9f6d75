//! Hostile plugins under load: while a worker runs 1,000 ordinary
//! executions, executions of the adversary plugin — an endless loop, a
//! memory bomb, runaway recursion, a 20 MB output, a panic — run beside
//! them on the same worker. Every ordinary execution ends with its right
//! output, each hostile one fails with its own kind, and the worker's
//! memory stays bounded.

use flowhost::backend::{Backend, Durability, SqliteBackend};
use flowhost::engine::Engine;
use flowhost_e2e::{flowhost, plugins_dir, runtime, shared_cache};
use serde_json::{Value, json};
use std::sync::Arc;

const MIXED: &str = r#"spec: flatmachine
data:
  name: mixed
  plugins: {echo: echo, adv: adversary}
  states:
    start:
      type: initial
      transitions:
        - {condition: "input.attack", to: attack}
        - {to: call}
    call: {plugin: echo, input: {n: "{{ input.n }}"}, output_to_context: {n: "{{ output.n }}"}, transitions: [{to: done}]}
    attack: {plugin: adv, input: {attack: "{{ input.attack }}", mb: 20}, timeout: 1, transitions: [{to: done}]}
    done: {type: final, output: {twice: "{{ context.n * 2 }}"}}
"#;

/// The attacks, and the kind each must fail with.
const ATTACKS: &[(&str, &str)] = &[
    ("loop", "timeout"),
    ("memory", "out_of_memory"),
    ("recursion", "trap"),
    ("huge_output", "invalid_output"),
    ("panic", "trap"),
];
const ORDINARY: u64 = 1000;
const EACH_ATTACK: usize = 8;

/// The worker's peak resident memory (kB), from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn ordinary_executions_finish_beside_hostile_plugins_and_memory_stays_bounded() {
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("mixed.yml");
    std::fs::write(&machine, MIXED).unwrap();
    let db_path = dir.path().join("q.db");
    let backend = Arc::new(SqliteBackend::open(&db_path, Durability::Normal).unwrap());
    let engine = Arc::new(Engine::new(
        backend.clone() as Arc<dyn Backend>,
        Arc::new(runtime(Some(&cache))),
        plugins_dir(),
    ));
    // Hostile ones spread among the ordinary ones.
    let mut hostile = Vec::new();
    for n in 0..ORDINARY {
        engine
            .submit(&machine, json!({ "n": n }), Some(format!("n{n}")))
            .await
            .unwrap();
        if n % (ORDINARY / (ATTACKS.len() * EACH_ATTACK) as u64) == 0
            && hostile.len() < ATTACKS.len() * EACH_ATTACK
        {
            let (attack, kind) = ATTACKS[hostile.len() % ATTACKS.len()];
            let id = format!("{attack}{}", hostile.len());
            engine
                .submit(&machine, json!({ "attack": attack }), Some(id.clone()))
                .await
                .unwrap();
            hostile.push((id, kind));
        }
    }
    drop(engine);
    drop(backend);

    let mut worker = flowhost(&cache)
        .args([
            "worker",
            "--executions",
            "--concurrency",
            "8",
            "--exit-when-empty",
            "--db",
            &db_path.display().to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = worker.id();
    // Peak memory is read while the worker lives: until every job is done.
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss_kb(pid));
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "the worker survived: {status}");

    let conn = rusqlite::Connection::open(&db_path).unwrap();
    let result = |id: &str| -> (String, Value) {
        conn.query_row(
            "SELECT status, value FROM results WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .map(|(s, v)| (s, serde_json::from_str(&v).unwrap()))
        .unwrap_or_else(|e| panic!("no result for {id}: {e}"))
    };
    for n in 0..ORDINARY {
        assert_eq!(
            result(&format!("n{n}")),
            ("done".to_string(), json!({ "twice": 2 * n })),
            "ordinary execution n{n}"
        );
    }
    for (id, kind) in &hostile {
        let (status, error) = result(id);
        assert_eq!(status, "failed", "{id}: {error}");
        assert_eq!(error["kind"], *kind, "{id}: {error}");
    }
    eprintln!(
        "hostile under load: {ORDINARY} ordinary executions done, {} hostile failed with their kinds, worker peak RSS {} MB",
        hostile.len(),
        peak / 1024
    );
    // Eight instances at once, each with its own memory limit: bounded far
    // below what the attacks ask for (a 20 MB output, an unbounded bomb).
    assert!(peak > 0, "peak memory was read");
    assert!(peak < 1536 * 1024, "worker peak RSS {} MB", peak / 1024);
}
