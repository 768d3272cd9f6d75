//! The in-memory backend: everything in one process, gone when it exits.

use super::clock::{Clock, HostClock};
use super::pools::{Job, WorkerInfo};
use super::status::JobStatus;
use super::{
    Backend, BackendResult, Checkpoint, Checkpoints, Definitions, ListFilter, Results, Signal,
    Signals, StoredResult,
};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
pub(super) struct Data {
    checkpoints: HashMap<String, Checkpoint>,
    results: HashMap<String, StoredResult>,
    signals: HashMap<(String, String), VecDeque<Signal>>,
    /// The last signal's `seq`.
    signal_seq: u64,
    definitions: HashMap<String, String>,
    /// Fan-in counters: key → children without a result.
    fan_ins: HashMap<String, u64>,
    /// In id order (pruned ones gone).
    pub(super) jobs: Vec<Job>,
    /// The last job id given (never given again).
    pub(super) last_job: i64,
    pub(super) workers: HashMap<String, WorkerInfo>,
    pub(super) leases: HashMap<String, super::owners::Lease>,
    pub(super) history: HashMap<String, std::collections::BTreeMap<u64, super::history::NewEvent>>,
    /// Execution state: execution → key → value.
    pub(super) state: HashMap<String, std::collections::BTreeMap<String, Value>>,
}

impl Data {
    /// Refuses a write whose fence is no longer the lease's token.
    fn check_fence(&self, fence: Option<&super::Fence>) -> BackendResult<()> {
        match fence {
            Some(f) if self.leases.get(&f.root).map(|l| l.token) != Some(f.token) => {
                Err(f.refused())
            }
            _ => Ok(()),
        }
    }

    /// Stores a result (its fence already checked); the first result of a
    /// fan-out child counts its fan-in down.
    fn put_result(&mut self, now: u64, id: &str, result: StoredResult) {
        let first = !self.results.contains_key(id);
        let counts_toward = result.counts_toward.clone();
        self.results.insert(
            id.to_string(),
            StoredResult {
                fence: None,
                counts_toward: None,
                ..result
            },
        );
        if let Some(fan_in) = counts_toward.filter(|_| first) {
            let remaining = self
                .fan_ins
                .get_mut(&fan_in.key)
                .filter(|n| **n > 0)
                .map(|n| {
                    *n -= 1;
                    *n
                });
            if fan_in.wake_now || remaining == Some(0) {
                self.insert_job(now, &fan_in.wake_pool, fan_in.wake);
            }
            if let Some(next) = fan_in.next {
                self.insert_job(now, &fan_in.wake_pool, next);
            }
        }
    }

    /// The job, if `fence` is its current claim's token.
    pub(super) fn current(&mut self, id: i64, fence: u64) -> Option<&mut Job> {
        self.jobs
            .iter_mut()
            .find(|j| j.id == id)
            .filter(|j| j.fence == fence && j.status == JobStatus::Claimed)
    }
}

/// An in-memory [`Backend`].
pub struct MemoryBackend {
    data: Mutex<Data>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend {
            data: Mutex::default(),
            clock: Arc::new(HostClock::system()),
        }
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides time by `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Data> {
        // Every operation is one map update, so a poisoned lock holds consistent data.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Checkpoints for MemoryBackend {
    async fn save(&self, mut checkpoint: Checkpoint) -> BackendResult<()> {
        let now = self.clock.now_ms();
        let mut data = self.lock();
        data.check_fence(checkpoint.fence.as_ref())?;
        for (pool, job) in std::mem::take(&mut checkpoint.enqueue) {
            data.insert_job(now, &pool, job);
        }
        if let Some(seq) = checkpoint.consumes_signal {
            for (_, queue) in data
                .signals
                .iter_mut()
                .filter(|((id, _), _)| *id == checkpoint.id)
            {
                queue.retain(|s| s.seq != seq);
            }
        }
        let created = data
            .checkpoints
            .get(&checkpoint.id)
            .map(|c| c.created_ms)
            .unwrap_or(checkpoint.created_ms);
        let result = checkpoint.result.take();
        let id = checkpoint.id.clone();
        data.checkpoints.insert(
            id.clone(),
            Checkpoint {
                created_ms: created,
                consumes_signal: None,
                fence: None,
                enqueue: Vec::new(),
                ..checkpoint
            },
        );
        if let Some(result) = result {
            data.put_result(now, &id, result);
        }
        Ok(())
    }

    async fn load(&self, id: &str) -> BackendResult<Option<Checkpoint>> {
        Ok(self.lock().checkpoints.get(id).cloned())
    }

    async fn statuses(
        &self,
        ids: &[String],
    ) -> BackendResult<HashMap<String, super::ExecutionStatus>> {
        let data = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| Some((id.clone(), data.checkpoints.get(id)?.status)))
            .collect())
    }

    async fn list(&self, filter: &ListFilter) -> BackendResult<Vec<Checkpoint>> {
        let data = self.lock();
        let mut found: Vec<Checkpoint> = data
            .checkpoints
            .values()
            .filter(|c| filter.status.as_ref().is_none_or(|s| &c.status == s))
            .filter(|c| filter.machine.as_ref().is_none_or(|m| &c.machine == m))
            .filter(|c| !filter.roots_only || c.parent.is_none())
            .filter(|c| filter.parent.is_none() || c.parent == filter.parent)
            .filter(|c| filter.in_range(c.created_ms))
            .filter(|c| {
                filter
                    .id_prefix
                    .as_ref()
                    .is_none_or(|p| c.id.starts_with(p.as_str()))
            })
            .filter(|c| {
                filter.after.as_ref().is_none_or(|(ms, id)| {
                    c.created_ms < *ms || (c.created_ms == *ms && c.id < *id)
                })
            })
            .cloned()
            .collect();
        found.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        if let Some(limit) = filter.limit {
            found.truncate(limit);
        }
        Ok(found)
    }

    /// Counted when asked: the memory store holds what one process made.
    async fn counts(&self) -> BackendResult<Vec<super::ExecutionCount>> {
        let data = self.lock();
        let mut counts: std::collections::BTreeMap<(bool, &str, &str), super::ExecutionCount> =
            Default::default();
        for c in data.checkpoints.values() {
            counts
                .entry((c.parent.is_none(), &c.machine, c.status.as_str()))
                .or_insert_with(|| super::ExecutionCount {
                    root: c.parent.is_none(),
                    machine: c.machine.clone(),
                    status: c.status,
                    count: 0,
                })
                .count += 1;
        }
        Ok(counts.into_values().collect())
    }
}

#[async_trait::async_trait]
impl Results for MemoryBackend {
    async fn write_result(&self, id: &str, result: StoredResult) -> BackendResult<()> {
        let now = self.clock.now_ms();
        let mut data = self.lock();
        data.check_fence(result.fence.as_ref())?;
        data.put_result(now, id, result);
        Ok(())
    }

    async fn open_fan_in(
        &self,
        key: &str,
        children: Vec<String>,
        fence: Option<super::Fence>,
    ) -> BackendResult<u64> {
        let mut data = self.lock();
        data.check_fence(fence.as_ref())?;
        if let Some(n) = data.fan_ins.get(key) {
            return Ok(*n);
        }
        let n = children
            .iter()
            .filter(|c| !data.results.contains_key(*c))
            .count() as u64;
        data.fan_ins.insert(key.to_string(), n);
        Ok(n)
    }

    async fn read_result(&self, id: &str) -> BackendResult<Option<StoredResult>> {
        Ok(self.lock().results.get(id).cloned())
    }

    async fn delete_result(&self, id: &str) -> BackendResult<()> {
        self.lock().results.remove(id);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Signals for MemoryBackend {
    async fn send_signal(&self, id: &str, channel: &str, data: Value) -> BackendResult<()> {
        let mut d = self.lock();
        d.signal_seq += 1;
        let seq = d.signal_seq;
        d.signals
            .entry((id.to_string(), channel.to_string()))
            .or_default()
            .push_back(Signal { seq, data });
        Ok(())
    }

    async fn take_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Value>> {
        Ok(self
            .lock()
            .signals
            .get_mut(&(id.to_string(), channel.to_string()))
            .and_then(VecDeque::pop_front)
            .map(|s| s.data))
    }

    async fn peek_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Signal>> {
        Ok(self
            .lock()
            .signals
            .get(&(id.to_string(), channel.to_string()))
            .and_then(VecDeque::front)
            .cloned())
    }
}

#[async_trait::async_trait]
impl Definitions for MemoryBackend {
    async fn put_definition(&self, digest: &str, body: &str) -> BackendResult<()> {
        self.lock()
            .definitions
            .entry(digest.to_string())
            .or_insert_with(|| body.to_string());
        Ok(())
    }

    async fn get_definition(&self, digest: &str) -> BackendResult<Option<String>> {
        Ok(self.lock().definitions.get(digest).cloned())
    }
}

impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}
