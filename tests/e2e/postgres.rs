//! Several hosts on one PostgreSQL database, as they would run: worker
//! processes of two "hosts" share a throwaway cluster (started on a free
//! loopback port by the test, stopped when it ends). Jobs complete exactly
//! once (the fences prove it) through a server restart and an outage the
//! workers live through; a 1,000-item foreach splits between the hosts and
//! outlives one of them killed; bad URLs and credentials are refused by
//! every command with a clear error.

use flowhost::backend::{JobStatus, NewJob, PostgresBackend, WorkPools, Workers};
use flowhost_e2e::{flowhost, run, shared_cache, stderr};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A worker process whose stderr is kept, line by line.
struct Worker {
    child: Child,
    said: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(net: &Net, host: usize, db: &str) -> Worker {
        let mut child = net
            .flowhost(host)
            .args([
                "worker",
                "--pool",
                "p",
                "--processor",
                "echo",
                "--concurrency",
                "8",
                "--db",
                db,
            ])
            .env("FLOWHOST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let said = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap());
        let keep = said.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Worker { child, said }
    }

    fn said(&self, what: &str) -> bool {
        self.said.lock().unwrap().iter().any(|l| l.contains(what))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        self.said.lock().unwrap().join("\n")
    }
}

impl Drop for Worker {
    /// A test that fails leaves no worker behind (one that ended is left be).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How the two hosts reach the database server: each from its own network
/// namespace, joined to this one by a veth pair (as root, with iproute2), so
/// their traffic crosses a network interface as between two machines; else
/// both over loopback (said on stderr).
struct Net {
    /// Per host: its namespace (`None`: this one) and the server's address
    /// as the host reaches it.
    hosts: Vec<(Option<String>, String)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

impl Net {
    fn new() -> Net {
        Net::isolated().unwrap_or_else(|e| {
            eprintln!("no network namespaces ({e}): both hosts reach the server over loopback");
            Net {
                hosts: vec![(None, "127.0.0.1".into()); 2],
            }
        })
    }

    fn isolated() -> Result<Net, String> {
        let tag = std::process::id() % 100_000;
        let mut net = Net { hosts: Vec::new() };
        for h in 1..=2 {
            let ns = format!("fh{tag}h{h}");
            let (outer, inner) = (format!("fh{tag}o{h}"), format!("fh{tag}i{h}"));
            ip(&["netns", "add", &ns])?;
            // Kept from here on, so a failure below still removes it.
            net.hosts.push((Some(ns.clone()), format!("10.213.{h}.1")));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["addr", "add", &format!("10.213.{h}.1/30"), "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.{h}.2/30"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn isolated_hosts(&self) -> bool {
        self.hosts.iter().all(|(ns, _)| ns.is_some())
    }

    /// `listen_addresses` for the server: loopback and each host's link.
    fn listen_addresses(&self) -> String {
        let mut all: BTreeSet<&str> = self.hosts.iter().map(|(_, a)| a.as_str()).collect();
        all.insert("127.0.0.1");
        format!(
            "listen_addresses = '{}'",
            all.into_iter().collect::<Vec<_>>().join(",")
        )
    }

    /// The URL of database `db` as host `host` reaches it.
    fn url(&self, cluster: &pgcluster::PgCluster, host: usize, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{db}",
            pgcluster::USER,
            pgcluster::PASSWORD,
            self.hosts[host].1,
            cluster.port()
        )
    }

    /// `flowhost`, run on host `host` (in its namespace).
    fn flowhost(&self, host: usize) -> std::process::Command {
        let here = flowhost(&shared_cache());
        let Some(ns) = &self.hosts[host].0 else {
            return here;
        };
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns]).arg(here.get_program());
        for (k, v) in here.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for Net {
    /// Deleting a namespace deletes its end of the veth pair, and so the pair.
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            if let Some(ns) = ns {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

/// Polls `done` until it holds; a stuck run fails after `cap` rather than
/// hanging (the cap is a guard, not what the test measures).
async fn until<F: AsyncFnMut() -> bool>(what: &str, cap: Duration, mut done: F) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < cap, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn done_count(store: &PostgresBackend) -> u64 {
    store.stats("p").await.map(|s| s.done).unwrap_or(0)
}

/// Two hosts (two worker processes each, concurrency 8; each host in its
/// own network namespace where this machine allows) take 2,000 jobs from
/// one pool; PostgreSQL is restarted mid-run (`pg_ctl restart`). Every job
/// completes exactly once — claimed once (fence 1, one attempt), its own
/// output — and both hosts did some. Then the server is stopped: every
/// worker says it cannot claim and keeps running; when the server is back
/// they take the next 200 jobs, and stop cleanly when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_jobs_exactly_once_through_a_restart_and_an_outage() {
    let net = Net::new();
    let listen = net.listen_addresses();
    let Some(cluster) = pgcluster::for_test(
        "two_hosts_share_the_jobs_exactly_once_through_a_restart_and_an_outage",
        &[&listen],
    ) else {
        return;
    };
    cluster.allow_clients_from("10.213.0.0/16").unwrap();
    let url = cluster.database("hosts").unwrap();
    let (url_a, url_b) = (net.url(&cluster, 0, "hosts"), net.url(&cluster, 1, "hosts"));
    eprintln!(
        "hosts {}: A at {url_a}, B at {url_b}",
        if net.isolated_hosts() {
            "in their own network namespaces"
        } else {
            "on loopback"
        }
    );
    let store = PostgresBackend::open(&url).await.unwrap();
    let jobs = |from: u64, n: u64| {
        (from..from + n)
            .map(|i| NewJob::new(json!({ "n": i })))
            .collect()
    };
    assert_eq!(store.push_many("p", jobs(0, 2000)).await.unwrap(), 2000);

    let mut host_a = [
        Worker::start(&net, 0, &url_a),
        Worker::start(&net, 0, &url_a),
    ];
    let mut host_b = [
        Worker::start(&net, 1, &url_b),
        Worker::start(&net, 1, &url_b),
    ];
    until(
        "a quarter of the jobs done",
        Duration::from_secs(120),
        async || done_count(&store).await >= 500,
    )
    .await;
    cluster.restart().unwrap();
    let restarted_at = done_count(&store).await;
    until("every job done", Duration::from_secs(180), async || {
        done_count(&store).await >= 2000
    })
    .await;
    assert!(restarted_at < 2000, "the restart came after the last job");

    let all = store.jobs("p", None, 10_000).await.unwrap();
    assert_eq!(all.len(), 2000);
    for j in &all {
        assert_eq!(j.status, JobStatus::Done, "job {}", j.id);
        assert_eq!(
            (j.fence, j.attempts),
            (1, 1),
            "job {} claimed more than once",
            j.id
        );
        assert_eq!(j.result.as_ref(), Some(&j.payload), "job {}", j.id);
    }
    let pids: BTreeMap<String, u32> = store
        .workers(Some("p"))
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.pid))
        .collect();
    let by_host = |host: &[Worker; 2]| -> usize {
        let mine: BTreeSet<u32> = host.iter().map(|w| w.child.id()).collect();
        all.iter()
            .filter(|j| {
                j.worker
                    .as_ref()
                    .and_then(|w| pids.get(w))
                    .is_some_and(|p| mine.contains(p))
            })
            .count()
    };
    let (a, b) = (by_host(&host_a), by_host(&host_b));
    eprintln!("2,000 jobs through a restart at {restarted_at} done: host A {a}, host B {b}");
    assert!(a > 0 && b > 0, "both hosts took jobs: A {a}, B {b}");
    assert_eq!(a + b, 2000);

    // An outage: the server stops; nobody exits.
    cluster.stop().unwrap();
    let workers = || host_a.iter().chain(host_b.iter());
    let start = Instant::now();
    while !workers().all(|w| w.said("cannot claim")) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not every worker noticed the outage:\n{}",
            workers()
                .map(Worker::log)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in host_a.iter_mut().chain(host_b.iter_mut()) {
        assert!(w.alive(), "a worker exited in the outage:\n{}", w.log());
    }
    cluster.start_again().unwrap();
    let store = PostgresBackend::open(&url).await.unwrap();
    assert_eq!(store.push_many("p", jobs(2000, 200)).await.unwrap(), 200);
    until(
        "the jobs pushed after the outage done",
        Duration::from_secs(120),
        async || done_count(&store).await >= 2200,
    )
    .await;
    for w in host_a.iter_mut().chain(host_b.iter_mut()) {
        assert!(w.alive(), "{}", w.log());
        assert!(w.said("the store takes claims again"), "{}", w.log());
        flowhost_e2e::signal(w.child.id(), "-TERM");
    }
    for w in host_a.iter_mut().chain(host_b.iter_mut()) {
        let status = w.child.wait().unwrap();
        assert!(status.success(), "{status}: {}", w.log());
    }
    let after = store.jobs("p", None, 10_000).await.unwrap();
    assert!(
        after
            .iter()
            .all(|j| j.status == JobStatus::Done && j.fence == 1)
    );
}

/// A 1,000-item foreach on the run queue splits between two hosts on one
/// PostgreSQL database; one host is killed (SIGKILL) mid-fan-out and the
/// other finishes with the right result — the same run as on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_item_foreach_splits_between_two_hosts_and_outlives_a_killed_one() {
    let Some(cluster) = pgcluster::for_test(
        "a_thousand_item_foreach_splits_between_two_hosts_and_outlives_a_killed_one",
        &[],
    ) else {
        return;
    };
    let url = cluster.database("fan").unwrap();
    let dir = tempfile::tempdir().unwrap();
    crate::queue::submit_thousand_triples(dir.path(), &url);
    let store = PostgresBackend::open_existing(&url).await.unwrap();
    crate::queue::foreach_outlives_a_killed_worker(&url, &store).await;
}

/// A worker killed (SIGKILL) at each crash point on the write path of a
/// fan-out run on PostgreSQL — inside the writer's commit, between a
/// result and its fan-in, after claiming, before completing — and a new
/// worker started after the reaper: the fan-out ends with the complete
/// result, every execution finished once, every fan-in counter at zero,
/// every job done.
#[test]
fn a_worker_killed_at_each_crash_point_loses_and_repeats_nothing_on_postgres() {
    use std::os::unix::process::ExitStatusExt;
    let Some(cluster) = pgcluster::for_test(
        "a_worker_killed_at_each_crash_point_loses_and_repeats_nothing_on_postgres",
        &["fsync=off"],
    ) else {
        return;
    };
    let cache = shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("triples.yml");
    std::fs::write(&machine, crate::queue::TRIPLES).unwrap();
    let machine = machine.display().to_string();
    let items: Vec<u64> = (0..30).collect();
    let input = json!({ "items": items }).to_string();
    let expected: Vec<serde_json::Value> = (0..30u64).map(|i| json!({ "n": 3 * i })).collect();
    // Each point on a pass the run reaches (a fan-out gathers once).
    for (point, pass) in [
        ("store.commit.before", 3),
        ("store.commit.after", 3),
        ("store.result.write", 3),
        ("worker.claimed", 3),
        ("worker.complete.before", 3),
        ("fanout.child.stored", 3),
        ("fanout.jobs.before", 1),
        ("fanin.gathered", 1),
    ] {
        let name = point.replace('.', "_");
        let url = cluster.database(&name).unwrap();
        let o = run(
            &cache,
            &[
                "submit", &machine, "--id", "fan", "--input", &input, "--db", &url,
            ],
        );
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        let worker = |armed: bool| {
            let mut c = flowhost(&cache);
            c.args([
                "worker",
                "--executions",
                "--exit-when-empty",
                "--concurrency",
                "4",
                "--db",
                &url,
            ]);
            if armed {
                c.env(flowhost::crash::VAR, format!("{point}:{pass}"));
            }
            c.output().unwrap()
        };
        let killed = worker(true);
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{point}: not reached: {}",
            stderr(&killed)
        );
        let o = run(&cache, &["reaper", "--stale-after", "0", "--db", &url]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        let again = worker(false);
        assert!(again.status.success(), "{point}: {}", stderr(&again));
        let w = run(&cache, &["wait", "fan", "--timeout", "60s", "--db", &url]);
        assert!(w.status.success(), "{point}: {}", stderr(&w));
        let result: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
        assert_eq!(result, json!({ "all": expected }), "{point}");
        let sql = |q: &str| cluster.sql(&name, q).unwrap();
        assert_eq!(
            sql("SELECT count(*) FROM executions WHERE status = 'done'"),
            "31",
            "{point}"
        );
        assert_eq!(
            sql(
                "SELECT count(*) FROM (SELECT e.id FROM executions e LEFT JOIN history h
                 ON h.execution = e.id AND h.event::json->>'event' = 'finished'
                 GROUP BY e.id HAVING count(h.seq) != 1) x"
            ),
            "0",
            "{point}: an execution that did not finish exactly once"
        );
        assert_eq!(
            sql("SELECT count(*) FROM fan_ins WHERE remaining != 0"),
            "0",
            "{point}"
        );
        assert_eq!(
            sql("SELECT count(*) FROM jobs WHERE status != 'done'"),
            "0",
            "{point}"
        );
        eprintln!("{point}: killed, recovered, result complete");
    }
}

/// Two daemons (`flowhost serve`) on one PostgreSQL database, as two hosts
/// run them: a 500-item fan-out submitted to one is split between both
/// daemons' workers; the other reports it done with the same result; both
/// stop cleanly.
#[test]
fn two_daemons_on_one_database_split_a_fan_out() {
    let Some(cluster) = pgcluster::for_test(
        "two_daemons_on_one_database_split_a_fan_out",
        &["fsync=off"],
    ) else {
        return;
    };
    let url = cluster.database("daemons").unwrap();
    let site = crate::daemon::Site::on(&url);
    // A worker each from the start, so neither waits for its scaler.
    let a = site.serve(&["--min-workers", "1"]);
    let b = site.serve(&["--min-workers", "1"]);
    let items: Vec<u64> = (0..500).collect();
    let body = a.run("fanout", json!({ "items": items }));
    let expected: Vec<serde_json::Value> =
        items.iter().map(|n| json!({ "twice": 2 * n })).collect();
    assert_eq!(body["result"], json!({ "all": expected }), "{body}");
    let id = body["id"].as_str().unwrap();
    let (status, seen) = b.get(&format!("/workflows/{id}"));
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["status"], "done", "{seen}");
    assert_eq!(seen["result"], body["result"]);
    let per_daemon = cluster
        .sql(
            "daemons",
            "SELECT count(*) FROM jobs j JOIN workers w ON w.id = j.worker
             WHERE j.pool = 'executions' GROUP BY w.pid ORDER BY w.pid",
        )
        .unwrap();
    eprintln!(
        "children's jobs per daemon: {}",
        per_daemon.replace('\n', " / ")
    );
    assert_eq!(
        per_daemon.lines().count(),
        2,
        "both daemons ran children: {per_daemon}"
    );
    for served in [a, b] {
        let (status, err) = served.stop();
        assert!(status.success(), "{status}: {err}");
    }
}

/// Every command that opens a store refuses a bad PostgreSQL URL, a wrong
/// password, a missing database and a server nobody runs with exit 1 and a
/// message that says which — and never shows the password.
#[test]
fn commands_refuse_bad_postgres_urls_with_a_clear_error() {
    let Some(cluster) = pgcluster::for_test(
        "commands_refuse_bad_postgres_urls_with_a_clear_error",
        &["fsync=off"],
    ) else {
        return;
    };
    let cache = shared_cache();
    let port = cluster.port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        ("postgres://", "names no host".to_string()),
        (
            &*format!(
                "postgres://{}:hunter2@127.0.0.1:{port}/postgres",
                pgcluster::USER
            ),
            "password authentication failed".to_string(),
        ),
        (
            &*cluster.url("nosuchdb"),
            "database \"nosuchdb\" does not exist".to_string(),
        ),
        (
            &*format!("postgres://u:hunter2@127.0.0.1:{closed}/db"),
            "cannot reach the database".to_string(),
        ),
    ]
    .map(|(u, m)| (u.to_string(), m));
    for (url, expected) in &cases {
        for args in [
            vec!["executions", "--db", url],
            vec!["jobs", "push", "p", "--db", url],
            vec!["worker", "--pool", "p", "--processor", "echo", "--db", url],
        ] {
            let o = run(&cache, &args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains(expected),
                "{args:?}: expected `{expected}` in: {err}"
            );
            assert!(
                !err.contains("hunter2"),
                "{args:?} shows the password: {err}"
            );
        }
    }
    // Nothing was written: no flowhost tables in the server's database.
    assert_eq!(
        cluster
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .unwrap(),
        "0"
    );
    // A schema a newer flowhost made is refused, and left as it is.
    let url = cluster.database("newer").unwrap();
    let o = run(&cache, &["jobs", "push", "p", "--db", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    cluster
        .sql("newer", "INSERT INTO flowhost_schema (version) VALUES (99)")
        .unwrap();
    for args in [
        vec!["executions", "--db", &url],
        vec!["jobs", "push", "p", "--db", &url],
    ] {
        let o = run(&cache, &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("schema version 99") && err.contains("upgrade flowhost"),
            "{err}"
        );
    }
    assert_eq!(
        cluster.sql("newer", "SELECT count(*) FROM jobs").unwrap(),
        "1"
    );
}
