//! The seed's `DistributedWorkerHooks`, built into the host: work-pool and
//! worker-registry actions a machine with `hooks: {class:
//! DistributedWorkerHooks}` can name in `action:` states. They read their
//! arguments from the context (`pool_id`, `worker_id`, `job_id`, `result`,
//! `max_workers`, `stale_threshold_seconds`, ...) and the claim's fencing
//! token from the execution state.

use super::record::{Failure, Record};
use super::{Engine, MachineDef};
use crate::backend::{Backoff, FailOutcome, WorkerInfo, WorkerStatus};
use crate::plugin::{CallContext, World};
use serde_json::{Value, json};
use std::sync::Arc;

/// The actions of `DistributedWorkerHooks`.
pub const BUILTIN_ACTIONS: [&str; 12] = [
    "register_worker",
    "claim_job",
    "complete_job",
    "fail_job",
    "heartbeat",
    "deregister_worker",
    "get_pool_state",
    "calculate_spawn",
    "spawn_workers",
    "list_stale_workers",
    "reap_stale_workers",
    "echo_delay",
];

/// How long a job claimed by `claim_job` stays claimed without a heartbeat.
const LEASE_MS: u64 = 300_000;

fn arg<'a>(rec: &'a Record, key: &str) -> Option<&'a Value> {
    rec.context.get(key).filter(|v| !v.is_null())
}

fn text(rec: &Record, key: &str, default: &str) -> String {
    match arg(rec, key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => default.to_string(),
    }
}

fn number(rec: &Record, key: &str, default: f64) -> f64 {
    arg(rec, key)
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(default)
}

impl Engine {
    /// Runs a built-in action; `None` if `action` is not one.
    pub(super) async fn builtin_action(
        &self,
        def: &Arc<MachineDef>,
        rec: &mut Record,
        action: &str,
    ) -> Option<Result<Value, Failure>> {
        if !def.builtin_actions || !BUILTIN_ACTIONS.contains(&action) {
            return None;
        }
        let state = rec.state.clone();
        let fail = |m: String| Failure {
            kind: crate::failure::FailureKind::Fatal,
            message: format!("action `{action}`: {m}"),
            state: state.clone(),
            retry_after_ms: None,
        };
        let b = self.backend.clone();
        let pool = text(rec, "pool_id", "default");
        let result: Result<Value, String> = async {
            match action {
                "register_worker" => {
                    let mut id = text(rec, "worker_id", "unknown");
                    if id == "unknown" {
                        id = format!("worker-{}", uuid::Uuid::now_v7());
                        if let Value::Object(ctx) = &mut rec.context {
                            ctx.insert("worker_id".into(), json!(id));
                        }
                    }
                    let now = self.now();
                    b.register(WorkerInfo {
                        id: id.clone(),
                        pool: pool.clone(),
                        pid: std::process::id(),
                        host: "local".into(),
                        status: WorkerStatus::Active,
                        started_ms: now,
                        heartbeat_ms: now,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(json!({"worker_id": id, "registered_at": now}))
                }
                "heartbeat" => {
                    let ok = b.heartbeat(&text(rec, "worker_id", "")).await.map_err(|e| e.to_string())?;
                    Ok(json!({"alive": ok}))
                }
                "claim_job" => {
                    let worker = text(rec, "worker_id", "unknown");
                    let jobs = b.claim(&pool, &worker, 1, LEASE_MS).await.map_err(|e| e.to_string())?;
                    Ok(match jobs.into_iter().next() {
                        None => json!({"job": null, "job_id": null}),
                        Some(job) => {
                            rec.kv.insert("job_id".into(), json!(job.id));
                            rec.kv.insert("job_fence".into(), json!(job.fence));
                            json!({"job": job.payload, "job_id": job.id, "attempts": job.attempts})
                        }
                    })
                }
                "complete_job" | "fail_job" => {
                    let (Some(id), Some(fence)) = (
                        rec.kv.get("job_id").and_then(Value::as_i64),
                        rec.kv.get("job_fence").and_then(Value::as_u64),
                    ) else {
                        return Err("no job was claimed by this execution (claim_job first)".to_string());
                    };
                    if action == "complete_job" {
                        let result = arg(rec, "result").cloned().unwrap_or(Value::Null);
                        let ok = b.complete(id, fence, result).await.map_err(|e| e.to_string())?;
                        Ok(json!({"job_id": id, "completed": ok}))
                    } else {
                        let error = text(rec, "last_error", "failed");
                        let outcome = b.fail(id, fence, &error, Some(Backoff::default())).await.map_err(|e| e.to_string())?;
                        Ok(json!({"job_id": id, "outcome": outcome, "poisoned": outcome == FailOutcome::Poisoned}))
                    }
                }
                "deregister_worker" => {
                    let id = text(rec, "worker_id", "");
                    let released = b.release_worker(&id).await.map_err(|e| e.to_string())?;
                    b.set_worker_status(&id, WorkerStatus::Stopped).await.map_err(|e| e.to_string())?;
                    Ok(json!({"worker_id": id, "released_jobs": released}))
                }
                "get_pool_state" => {
                    let stats = b.stats(&pool).await.map_err(|e| e.to_string())?;
                    let active = b.workers(Some(&pool)).await.map_err(|e| e.to_string())?
                        .iter()
                        .filter(|w| w.status == WorkerStatus::Active)
                        .count();
                    Ok(json!({"queue_depth": stats.pending, "claimed": stats.claimed, "active_workers": active}))
                }
                "calculate_spawn" => {
                    let depth = number(rec, "queue_depth", 0.0).max(0.0) as u64;
                    let active = number(rec, "active_workers", 0.0).max(0.0) as u64;
                    let max = number(rec, "max_workers", 3.0).max(0.0) as u64;
                    let needed = depth.min(max);
                    Ok(json!({"workers_needed": needed, "workers_to_spawn": needed.saturating_sub(active)}))
                }
                "spawn_workers" => self.spawn_workers(def, rec, &pool),
                "list_stale_workers" => {
                    let threshold = (number(rec, "stale_threshold_seconds", 60.0) * 1000.0) as u64;
                    let now = self.now();
                    let stale: Vec<String> = b.workers(Some(&pool)).await.map_err(|e| e.to_string())?
                        .into_iter()
                        .filter(|w| w.status == WorkerStatus::Active && now.saturating_sub(w.heartbeat_ms) > threshold)
                        .map(|w| w.id)
                        .collect();
                    Ok(json!({"workers": stale, "stale_count": stale.len()}))
                }
                "reap_stale_workers" => {
                    let threshold = (number(rec, "stale_threshold_seconds", 60.0) * 1000.0) as u64;
                    let reaped = b.reap(threshold).await.map_err(|e| e.to_string())?;
                    Ok(json!({"reaped_count": reaped.len(), "reaped_workers": reaped}))
                }
                "echo_delay" => {
                    let delay = number(rec, "delay_seconds", 0.0).clamp(0.0, 3600.0);
                    tokio::time::sleep(crate::duration::clamp_secs(delay)).await;
                    let payload = rec.input.get("job").cloned().unwrap_or_else(|| rec.input.clone());
                    let echo = self
                        .runners
                        .load(&crate::config::PluginSpec::named("echo"), World::Processor)
                        .map_err(|e| e.to_string())?
                        .runner;
                    let meta = crate::plugin::standalone_meta(&rec.state);
                    let out = echo.process(&meta, &payload, &CallContext::default()).await.map_err(|e| e.to_string())?;
                    Ok(json!({"processed": out}))
                }
                other => Err(format!("unknown built-in action `{other}`")),
            }
        }
        .await;
        Some(result.map_err(fail))
    }

    /// `spawn_workers`: starts `workers_to_spawn` processes running the
    /// machine's `job_worker` child (`flowhost run <job_worker.yml>`), detached.
    fn spawn_workers(
        &self,
        def: &Arc<MachineDef>,
        rec: &Record,
        pool: &str,
    ) -> Result<Value, String> {
        let count = number(rec, "workers_to_spawn", 0.0).max(0.0) as u64;
        let worker = def
            .children
            .get("job_worker")
            .ok_or("the machine declares no `job_worker` under data.machines")?;
        let spawner = self.spawner.as_ref().ok_or(
            "spawned workers need a store another process can open (a database file, not --memory)",
        )?;
        let mut spawned = Vec::new();
        for _ in 0..count {
            let worker_id = format!("worker-{}", uuid::Uuid::now_v7());
            let input = json!({"pool_id": pool, "worker_id": worker_id});
            let child = spawner
                .run(&worker.config.path, &input)
                .map_err(|e| e.to_string())?;
            tracing::info!(pid = child.id(), worker = %worker_id, "spawned worker");
            spawned.push(worker_id);
        }
        Ok(json!({"spawned_ids": spawned, "spawned": spawned.len()}))
    }
}
