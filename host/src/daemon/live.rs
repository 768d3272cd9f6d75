//! What changes while a client watches: the feed of execution changes this
//! daemon sees (its engine's events, its API's submissions) served as
//! server-sent events (`GET /events`), with the executions a client names
//! read from the store every second (so changes other processes make reach
//! it too), and each queue's throughput sampled over the last minutes. The dashboard follows both instead of polling
//! pages.
//!
//! Imports `engine` (the record an event comes with) and the `backend`
//! traits; the API mounts the route.

use crate::backend::{Backend, Checkpoint, ExecutionStatus};
use crate::engine::Record;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// Changes a slow client may fall behind by before it is told to reload.
const BACKLOG: usize = 4096;

/// One execution as lists show it and the feed tells of it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct Summary {
    pub id: String,
    pub parent: Option<String>,
    pub machine: String,
    pub status: ExecutionStatus,
    pub state: String,
    pub step: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<Checkpoint> for Summary {
    fn from(c: Checkpoint) -> Summary {
        Summary {
            id: c.id,
            parent: c.parent,
            machine: c.machine,
            status: c.status,
            state: c.state,
            step: c.step,
            created_ms: c.created_ms,
            updated_ms: c.updated_ms,
        }
    }
}

impl Summary {
    /// An execution the engine just changed, at `now_ms`.
    pub fn of(rec: &Record, now_ms: u64) -> Summary {
        Summary {
            id: rec.id.clone(),
            parent: rec.parent.clone(),
            machine: rec.machine.clone(),
            status: rec.status,
            state: rec.state.clone(),
            step: rec.step,
            created_ms: rec.created_ms,
            updated_ms: now_ms,
        }
    }
}

/// The feed: every subscriber gets every change published after it
/// subscribed.
pub struct Feed {
    tx: broadcast::Sender<Summary>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Feed {
    pub fn publish(&self, change: Summary) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Whether anyone is watching (a change nobody reads need not be made).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

/// What a subscriber reads next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// The latest change of each execution that changed since the last
    /// read, in the order they first changed.
    Changes(Vec<Summary>),
    /// Changes were missed (the subscriber fell too far behind): whatever
    /// it shows must be read again.
    Reload,
    /// The daemon is stopping.
    Closed,
}

pub struct Subscription {
    rx: broadcast::Receiver<Summary>,
}

impl Subscription {
    /// Waits for a change, then takes every change already waiting with it,
    /// one per execution: a busy daemon sends fewer, larger messages instead
    /// of one per state.
    pub async fn next(&mut self) -> Next {
        let first = match self.rx.recv().await {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(_)) => return Next::Reload,
            Err(broadcast::error::RecvError::Closed) => return Next::Closed,
        };
        let mut order = vec![first.id.clone()];
        let mut latest: HashMap<String, Summary> = HashMap::from([(first.id.clone(), first)]);
        loop {
            match self.rx.try_recv() {
                Ok(c) => {
                    if !latest.contains_key(&c.id) {
                        order.push(c.id.clone());
                    }
                    latest.insert(c.id.clone(), c);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => return Next::Reload,
                Err(_) => break,
            }
        }
        Next::Changes(order.iter().filter_map(|id| latest.remove(id)).collect())
    }
}

/// Most executions one subscriber may watch in the store.
pub const MAX_WATCHED: usize = 200;

/// Executions a subscriber shows, read from the store now and then: their
/// changes reach it even when another process (a worker, another host)
/// made them, which this daemon's engine never sees.
pub struct Watch {
    ids: Vec<String>,
    known: HashMap<String, ExecutionStatus>,
}

impl Watch {
    pub fn new(ids: Vec<String>) -> Watch {
        Watch {
            ids,
            known: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The watched executions whose status changed since the last look;
    /// the first look gives every one as it is now (so a subscriber misses
    /// nothing that changed before it subscribed).
    pub async fn changed(
        &mut self,
        backend: &dyn Backend,
    ) -> crate::backend::BackendResult<Vec<Summary>> {
        let now = backend.statuses(&self.ids).await?;
        let mut changes = Vec::new();
        for id in &self.ids {
            let Some(status) = now.get(id) else { continue };
            if self.known.get(id) != Some(status)
                && let Some(c) = backend.load(id).await?
            {
                changes.push(Summary::from(c));
            }
            self.known.insert(id.clone(), *status);
        }
        Ok(changes)
    }
}

/// How often each queue's finished jobs are counted.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: ten minutes.
const SAMPLES: usize = 60;

/// Jobs finished (done or poisoned) per queue, counted every
/// [`SAMPLE_EVERY`]: the throughput the dashboard charts.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<HashMap<String, VecDeque<(u64, u64)>>>,
}

/// A queue's throughput: jobs finished per second in each interval, oldest
/// first, with the interval's end.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Throughput {
    pub interval_seconds: u64,
    pub points: Vec<RatePoint>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RatePoint {
    /// End of the interval (ms since the epoch, store clock).
    pub at_ms: u64,
    pub per_second: f64,
}

impl Rates {
    /// Counts each queue once now.
    pub async fn sample(&self, backend: &dyn Backend, queues: &[String]) {
        let now = backend.clock().now_ms();
        for queue in queues {
            match backend.stats(queue).await {
                Ok(s) => self.add(queue, now, s.done + s.poisoned),
                Err(e) => tracing::debug!(queue, "throughput sample: {e}"),
            }
        }
    }

    fn add(&self, queue: &str, at_ms: u64, finished: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let series = samples.entry(queue.to_string()).or_default();
        series.push_back((at_ms, finished));
        while series.len() > SAMPLES + 1 {
            series.pop_front();
        }
    }

    pub fn of(&self, queue: &str) -> Throughput {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let points = samples.get(queue).map_or_else(Vec::new, |series| {
            series
                .iter()
                .zip(series.iter().skip(1))
                .map(|((t0, n0), (t1, n1))| RatePoint {
                    at_ms: *t1,
                    per_second: n1.saturating_sub(*n0) as f64 * 1e3
                        / (t1.saturating_sub(*t0).max(1)) as f64,
                })
                .collect()
        });
        Throughput {
            interval_seconds: SAMPLE_EVERY.as_secs(),
            points,
        }
    }

    /// Samples every queue every [`SAMPLE_EVERY`] until aborted.
    pub fn run(
        self: Arc<Self>,
        backend: Arc<dyn Backend>,
        queues: Vec<String>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.sample(backend.as_ref(), &queues).await;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, step: u64) -> Summary {
        Summary {
            id: id.into(),
            parent: None,
            machine: "m".into(),
            status: ExecutionStatus::Running,
            state: format!("s{step}"),
            step,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_the_latest_change_of_each_execution_in_order() {
        let feed = Feed::default();
        let mut sub = feed.subscribe();
        for (id, step) in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)] {
            feed.publish(change(id, step));
        }
        let Next::Changes(got) = sub.next().await else {
            panic!("changes expected")
        };
        let got: Vec<(&str, u64)> = got.iter().map(|c| (c.id.as_str(), c.step)).collect();
        assert_eq!(got, [("a", 3), ("b", 1), ("c", 1)]);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_reload() {
        let feed = Feed::default();
        let mut sub = feed.subscribe();
        for i in 0..(BACKLOG as u64 + 10) {
            feed.publish(change("a", i));
        }
        assert_eq!(sub.next().await, Next::Reload);
        drop(feed);
        // After the reload it reads on; a closed feed says so.
        assert!(matches!(sub.next().await, Next::Changes(_)));
        assert_eq!(sub.next().await, Next::Closed);
    }

    #[tokio::test]
    async fn a_watch_sees_status_changes_made_by_anyone() {
        use crate::backend::{Checkpoints, MemoryBackend};
        let store = MemoryBackend::new();
        let save = |id: &str, status: ExecutionStatus, state: &str| Checkpoint {
            id: id.into(),
            parent: None,
            machine: "m".into(),
            status,
            state: state.into(),
            step: 1,
            created_ms: 1,
            updated_ms: 1,
            record: "{}".into(),
            consumes_signal: None,
            fence: None,
            enqueue: Vec::new(),
            result: None,
        };
        store
            .save(save("a", ExecutionStatus::Running, "s"))
            .await
            .unwrap();
        store
            .save(save("b", ExecutionStatus::Waiting, "w"))
            .await
            .unwrap();
        let mut watch = Watch::new(vec!["a".into(), "b".into(), "missing".into()]);
        let now: Vec<_> = watch
            .changed(&store)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.status))
            .collect();
        assert_eq!(
            now,
            [
                ("a".to_string(), ExecutionStatus::Running),
                ("b".to_string(), ExecutionStatus::Waiting)
            ],
            "the first look gives them as they are"
        );
        assert!(
            watch.changed(&store).await.unwrap().is_empty(),
            "then only changes"
        );
        store
            .save(save("b", ExecutionStatus::Done, "end"))
            .await
            .unwrap();
        let changed = watch.changed(&store).await.unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (
                changed[0].id.as_str(),
                changed[0].status,
                changed[0].state.as_str()
            ),
            ("b", ExecutionStatus::Done, "end")
        );
        assert!(watch.changed(&store).await.unwrap().is_empty(), "told once");
    }

    #[test]
    fn throughput_is_finished_jobs_per_second_between_samples() {
        let rates = Rates::default();
        rates.add("q", 10_000, 100);
        rates.add("q", 20_000, 600);
        rates.add("q", 30_000, 600);
        let t = rates.of("q");
        let points: Vec<(u64, f64)> = t.points.iter().map(|p| (p.at_ms, p.per_second)).collect();
        assert_eq!(points, [(20_000, 50.0), (30_000, 0.0)]);
        for i in 0..100 {
            rates.add("q", 40_000 + i * 10_000, 600);
        }
        assert_eq!(rates.of("q").points.len(), SAMPLES);
        assert!(rates.of("other").points.is_empty());
    }
}
