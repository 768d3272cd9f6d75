//! The daemon's metrics in Prometheus text: what the engine tells its
//! [`Observer`] (executions started and finished by machine, state and
//! plugin-call latency, plugin errors by kind), HTTP requests by route and
//! status, and what is read from the store at each scrape (queue depth and
//! the oldest due job's wait per queue, workers by status, leases lost).
//!
//! Imports `engine` (the observer), `backend` and `worker` (counters).

use crate::backend::{Backend, WorkerStatus};
use crate::engine::history::Event;
use crate::engine::{Observer, Record};
use crate::worker::WorkerCounters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabel {
    machine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    machine: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    machine: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginErrorLabels {
    plugin: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    machine: String,
    agent: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    machine: String,
    agent: String,
    model: String,
    /// `prompt` or `completion`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    plugin: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// Latency buckets from 50 µs to ~13 s (doubling).
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Calls and failures of one plugin, for `GET /plugins`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PluginCalls {
    pub calls: u64,
    /// Failed calls by error kind.
    pub errors: BTreeMap<String, u64>,
}

/// Everything the daemon counts.
pub struct Metrics {
    registry: Registry,
    started: Family<MachineLabel, Counter>,
    finished: Family<FinishedLabels, Counter>,
    resumed: Family<MachineLabel, Counter>,
    state_seconds: Family<StateLabels, Histogram>,
    plugin_seconds: Family<PluginLabel, Histogram>,
    plugin_errors: Family<PluginErrorLabels, Counter>,
    queue_depth: Family<QueueLabel, Gauge>,
    queue_due: Family<QueueLabel, Gauge>,
    queue_oldest: Family<QueueLabel, Seconds>,
    workers: Family<StatusLabel, Gauge>,
    pool_workers: Family<QueueLabel, Gauge>,
    leases_lost: Counter,
    store_refusing: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabel, Histogram>,
    reloads: Family<ReloadLabels, Counter>,
    warm_hits: Family<PluginLabel, Counter>,
    warm_misses: Family<PluginLabel, Counter>,
    warm_idle: Family<PluginLabel, Gauge>,
    agent_calls: Family<AgentLabels, Counter>,
    agent_tokens: Family<TokenLabels, Counter>,
    /// Warm-pool hits and misses per plugin counted already.
    warm_counted: Mutex<HashMap<String, (u64, u64)>>,
    /// The workers' own counters, and how much of them is counted already.
    worker_counters: Arc<WorkerCounters>,
    leases_counted: AtomicU64,
    /// The state each execution is in, and since when (to time states).
    states: Mutex<HashMap<String, (String, String, Instant)>>,
    calls: Mutex<BTreeMap<String, PluginCalls>>,
}

/// Executions whose state is being timed; past this, the oldest are
/// forgotten (an execution parked here and continued elsewhere never
/// reports back).
const TIMED_EXECUTIONS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one map operation: a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn new(worker_counters: Arc<WorkerCounters>) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            started: Family::default(),
            finished: Family::default(),
            resumed: Family::default(),
            state_seconds: Family::new_with_constructor(latency),
            plugin_seconds: Family::new_with_constructor(latency),
            plugin_errors: Family::default(),
            queue_depth: Family::default(),
            queue_due: Family::default(),
            queue_oldest: Family::default(),
            workers: Family::default(),
            pool_workers: Family::default(),
            leases_lost: Counter::default(),
            store_refusing: Gauge::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency),
            reloads: Family::default(),
            warm_hits: Family::default(),
            warm_misses: Family::default(),
            warm_idle: Family::default(),
            agent_calls: Family::default(),
            agent_tokens: Family::default(),
            warm_counted: Mutex::default(),
            worker_counters,
            leases_counted: AtomicU64::new(0),
            states: Mutex::default(),
            calls: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "flowhost_executions_started",
            "Executions that entered their first state, by machine",
            m.started.clone(),
        );
        registry.register(
            "flowhost_executions_finished",
            "Executions that ended, by machine and status (done, failed, cancelled)",
            m.finished.clone(),
        );
        registry.register(
            "flowhost_executions_resumed",
            "Executions continued by resume or retry, by machine",
            m.resumed.clone(),
        );
        registry.register(
            "flowhost_state_seconds",
            "Time spent in a state, by machine and state",
            m.state_seconds.clone(),
        );
        registry.register(
            "flowhost_plugin_call_seconds",
            "Plugin call latency, by plugin",
            m.plugin_seconds.clone(),
        );
        registry.register(
            "flowhost_plugin_errors",
            "Failed plugin calls, by plugin and error kind",
            m.plugin_errors.clone(),
        );
        registry.register(
            "flowhost_queue_depth",
            "Jobs pending or claimed, by queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "flowhost_queue_due",
            "Pending jobs that are due now, by queue",
            m.queue_due.clone(),
        );
        registry.register(
            "flowhost_queue_oldest_waiting_seconds",
            "How long the oldest due job has waited, by queue",
            m.queue_oldest.clone(),
        );
        registry.register(
            "flowhost_workers",
            "Registered workers of every process on the store, by status",
            m.workers.clone(),
        );
        registry.register(
            "flowhost_daemon_workers",
            "This daemon's own workers, by queue",
            m.pool_workers.clone(),
        );
        registry.register(
            "flowhost_leases_lost",
            "Jobs whose outcome was not written: their lease was lost to another worker",
            m.leases_lost.clone(),
        );
        registry.register(
            "flowhost_store_refusing_claims",
            "1 while the store refuses this daemon's claims (a full disk, a lock held elsewhere): see /healthz for why",
            m.store_refusing.clone(),
        );
        registry.register(
            "flowhost_http_requests",
            "HTTP requests, by method, route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "flowhost_http_request_seconds",
            "HTTP request latency, by route",
            m.http_seconds.clone(),
        );
        registry.register(
            "flowhost_plugin_reloads",
            "Plugins swapped in from the folder (result ok), or kept because the new file did not load (result error)",
            m.reloads.clone(),
        );
        registry.register(
            "flowhost_plugin_pool_hits",
            "Plugin calls that found a warm instance, by plugin",
            m.warm_hits.clone(),
        );
        registry.register(
            "flowhost_plugin_pool_misses",
            "Calls of reused plugins that had to make an instance, by plugin",
            m.warm_misses.clone(),
        );
        registry.register(
            "flowhost_plugin_pool_idle",
            "Warm instances waiting, by plugin",
            m.warm_idle.clone(),
        );
        registry.register(
            "flowhost_agent_calls",
            "Model calls of FlatAgents agents, by machine, agent and model",
            m.agent_calls.clone(),
        );
        registry.register(
            "flowhost_agent_tokens",
            "Tokens of FlatAgents agents' model calls, by machine, agent, model and kind (prompt, completion)",
            m.agent_tokens.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Brings the warm-pool figures up to `warm` (per plugin, summed over
    /// its loaded specs). A plugin reloaded starts counting again; what it
    /// counts from then on is added.
    fn warm(&self, warm: &[(String, crate::plugin::WarmStats)]) {
        let mut by_plugin: BTreeMap<&str, crate::plugin::WarmStats> = BTreeMap::new();
        for (name, w) in warm {
            let s = by_plugin.entry(name).or_default();
            s.hits += w.hits;
            s.misses += w.misses;
            s.idle += w.idle;
        }
        let mut counted = lock(&self.warm_counted);
        for (name, w) in by_plugin {
            if w.hits + w.misses == 0 {
                continue;
            }
            let label = PluginLabel {
                plugin: name.to_string(),
            };
            let (hits, misses) = counted.entry(name.to_string()).or_default();
            let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
            self.warm_hits
                .get_or_create(&label)
                .inc_by(delta(w.hits, *hits));
            self.warm_misses
                .get_or_create(&label)
                .inc_by(delta(w.misses, *misses));
            self.warm_idle.get_or_create(&label).set(w.idle as i64);
            (*hits, *misses) = (w.hits, w.misses);
        }
    }

    /// Counts a hot reload of `plugin`.
    pub fn reloaded(&self, plugin: &str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                plugin: plugin.to_string(),
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    /// Counts an HTTP request.
    pub fn http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts an execution continued by resume or retry.
    pub fn resumed(&self, machine: &str) {
        self.resumed
            .get_or_create(&MachineLabel {
                machine: machine.to_string(),
            })
            .inc();
    }

    /// Calls and errors of each plugin called so far.
    pub fn plugin_calls(&self) -> BTreeMap<String, PluginCalls> {
        lock(&self.calls).clone()
    }

    /// The text a scrape returns: reads the store's queues (`queues`) and
    /// workers first. `own` is this daemon's workers per queue.
    pub async fn render(
        &self,
        backend: &dyn Backend,
        queues: &[String],
        own: &[(String, usize)],
        warm: &[(String, crate::plugin::WarmStats)],
    ) -> Result<String, crate::backend::BackendError> {
        self.warm(warm);
        let now = backend.clock().now_ms();
        for queue in queues {
            let stats = backend.backlog(queue).await?;
            let label = QueueLabel {
                queue: queue.clone(),
            };
            self.queue_depth
                .get_or_create(&label)
                .set((stats.pending + stats.claimed) as i64);
            self.queue_due.get_or_create(&label).set(stats.due as i64);
            let waited = stats
                .oldest_due_ms
                .map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1e3);
            self.queue_oldest.get_or_create(&label).set(waited);
        }
        let mut by_status: BTreeMap<&str, i64> =
            WorkerStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for w in backend.workers(None).await? {
            *by_status.entry(w.status.as_str()).or_default() += 1;
        }
        for (status, n) in by_status {
            self.workers
                .get_or_create(&StatusLabel {
                    status: status.to_string(),
                })
                .set(n);
        }
        for (queue, n) in own {
            self.pool_workers
                .get_or_create(&QueueLabel {
                    queue: queue.clone(),
                })
                .set(*n as i64);
        }
        self.store_refusing
            .set(i64::from(self.worker_counters.refused().is_some()));
        let lost = self.worker_counters.leases_lost.load(Ordering::Relaxed);
        let counted = self.leases_counted.swap(lost, Ordering::Relaxed);
        self.leases_lost.inc_by(lost.saturating_sub(counted));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| crate::backend::BackendError::new(format!("metrics: {e}")))?;
        Ok(text)
    }

    /// Why the store refuses this daemon's claims now, if it does.
    pub fn store_refusing(&self) -> Option<String> {
        self.worker_counters.refused()
    }

    /// The state `id` was in ends now.
    fn state_ended(&self, id: &str) {
        if let Some((machine, state, since)) = lock(&self.states).remove(id) {
            self.state_seconds
                .get_or_create(&StateLabels { machine, state })
                .observe(since.elapsed().as_secs_f64());
        }
    }
}

impl Observer for Metrics {
    fn state(&self, id: &str, machine: &str, state: &str, step: u64) {
        self.state_ended(id);
        if step == 1 {
            self.started
                .get_or_create(&MachineLabel {
                    machine: machine.to_string(),
                })
                .inc();
        }
        let mut states = lock(&self.states);
        if states.len() >= TIMED_EXECUTIONS {
            states.clear();
        }
        states.insert(
            id.to_string(),
            (machine.to_string(), state.to_string(), Instant::now()),
        );
    }

    fn event(&self, rec: &Record, event: &Event) {
        match event {
            Event::PluginCalled {
                plugin, ms, error, ..
            } => {
                let label = PluginLabel {
                    plugin: plugin.clone(),
                };
                self.plugin_seconds.get_or_create(&label).observe(ms / 1e3);
                let mut calls = lock(&self.calls);
                let entry = calls.entry(plugin.clone()).or_default();
                entry.calls += 1;
                if let Some(kind) = error {
                    *entry.errors.entry(kind.as_str().to_string()).or_default() += 1;
                    self.plugin_errors
                        .get_or_create(&PluginErrorLabels {
                            plugin: plugin.clone(),
                            kind: kind.as_str().to_string(),
                        })
                        .inc();
                }
            }
            Event::Finished { status, .. } => {
                self.state_ended(&rec.id);
                self.finished
                    .get_or_create(&FinishedLabels {
                        machine: rec.machine.clone(),
                        status: status.as_str().to_string(),
                    })
                    .inc();
            }
            Event::AgentCalled {
                agent,
                model,
                calls,
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                let (machine, agent, model) = (rec.machine.clone(), agent.clone(), model.clone());
                self.agent_calls
                    .get_or_create(&AgentLabels {
                        machine: machine.clone(),
                        agent: agent.clone(),
                        model: model.clone(),
                    })
                    .inc_by(u64::from(*calls));
                for (kind, n) in [("prompt", prompt_tokens), ("completion", completion_tokens)] {
                    self.agent_tokens
                        .get_or_create(&TokenLabels {
                            machine: machine.clone(),
                            agent: agent.clone(),
                            model: model.clone(),
                            kind: kind.to_string(),
                        })
                        .inc_by(*n);
                }
            }
            Event::Interrupted { .. } => self.state_ended(&rec.id),
            Event::Retried { .. } => self.resumed(&rec.machine),
            _ => {}
        }
    }
}
