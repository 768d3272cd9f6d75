//! One owner per running execution tree: this process's identity, taking the
//! lease on a tree's root (atomically, through the store's `Ownership`), taking
//! over from a holder on this host whose process is gone, renewing the lease
//! while the tree runs, and asking the tree to stop when the lease is lost.
//! Also the stop request a driver checks at every state boundary, and the
//! cancel requests (an operator's, or a passed deadline) the renewer looks
//! for while it holds a tree.

use super::{Engine, EngineError};
use crate::backend::{Backend, Claim, Lease, Owner};
use crate::failure::FailureKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How long a lease lasts without renewal, unless the engine says otherwise
/// ([`Engine::with_lease`]).
pub const LEASE: Duration = Duration::from_secs(30);
/// The holder renews a lease this many times per lease.
const RENEWALS_PER_LEASE: u32 = 3;
#[cfg(test)]
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A request to stop at the next state boundary, with its reason.
#[derive(Clone, Default)]
pub struct Stop(Arc<(Mutex<Option<String>>, tokio::sync::Notify)>);

impl Stop {
    /// Asks to stop (the first reason wins).
    pub fn request(&self, reason: impl Into<String>) {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| reason.into());
        self.0.1.notify_waiters();
    }

    pub fn reason(&self) -> Option<String> {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Returns once a stop is requested.
    pub async fn requested(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.reason().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// This process, as an owner of executions.
pub fn this_process() -> &'static Owner {
    static ME: OnceLock<Owner> = OnceLock::new();
    ME.get_or_init(|| Owner {
        id: uuid::Uuid::now_v7().to_string(),
        pid: std::process::id(),
        host: hostname(),
        started: process_started(std::process::id()).unwrap_or(0),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// When a process started (clock ticks after boot, `/proc/<pid>/stat` field 22).
fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a holder is known to be gone: it ran on this host and its process
/// no longer exists (or its pid now belongs to a process started later).
pub fn holder_gone(owner: &Owner) -> bool {
    let me = this_process();
    if owner.host != me.host || owner.id == me.id {
        return false;
    }
    match process_started(owner.pid) {
        Some(started) => owner.started != 0 && started != owner.started,
        None => {
            // SAFETY: signal 0 only checks that the process exists.
            let exists = unsafe { libc::kill(owner.pid as libc::pid_t, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            !exists
        }
    }
}

/// Whether an execution tree is being run right now, by whom.
pub fn live_holder(lease: Option<&Lease>, now_ms: u64) -> Option<&Lease> {
    lease.filter(|l| l.live(now_ms) && !holder_gone(&l.owner))
}

/// The signal channel a cancel request for a running execution is stored
/// on (addressed to the execution whose lease covers it); the process
/// holding that lease looks for one every [`CANCEL_POLL`].
pub const CANCEL_CHANNEL: &str = "flowhost:cancel";
/// How often a lease holder looks for cancel requests.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// A lease this process holds, renewed in the background until released.
pub(super) struct Held {
    pub execution: String,
    pub token: u64,
    pub stop: Stop,
    /// Set (with the request's reason) when someone cancels the tree; its
    /// running plugins see it at once, the driver at the next boundary.
    pub cancel: Cancel,
}

/// A cancel request for a tree this process runs: the plugins' token, the
/// reason, and whether its deadline passed (kind `timeout`) or someone
/// cancelled it (kind `cancelled`).
#[derive(Clone, Default)]
pub struct Cancel {
    pub token: crate::plugin::CancelToken,
    pub reason: Stop,
    /// Set by the first request, like the reason.
    kind: Arc<OnceLock<FailureKind>>,
}

/// How long a running plugin has, once it sees `cancelled()`, to stop by
/// itself before the host interrupts it.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

impl Cancel {
    /// Asks the tree to end with `kind` (`cancelled`, or `timeout` for a
    /// passed deadline) and `reason`; the first request wins.
    pub fn request(&self, kind: FailureKind, reason: impl Into<String>) {
        let _ = self.kind.set(kind);
        self.reason.request(reason);
        self.token.cancel_after(CANCEL_GRACE);
    }

    /// The kind and reason of the request, once there is one.
    pub fn requested(&self) -> Option<(FailureKind, String)> {
        let reason = self.reason.reason()?;
        Some((
            self.kind.get().copied().unwrap_or(FailureKind::Cancelled),
            reason,
        ))
    }
}

/// What the engine keeps per held lease.
#[derive(Clone)]
struct Holding {
    token: u64,
    stop: Stop,
    cancel: Cancel,
    /// The tree's deadline (store clock, ms; 0: none), once its driver
    /// knows it.
    deadline_ms: Arc<AtomicU64>,
}

impl Held {
    /// What the tree's writes carry, so a store refuses them once another
    /// process took the lease.
    pub fn fence(&self) -> crate::backend::Fence {
        crate::backend::Fence {
            root: self.execution.clone(),
            token: self.token,
        }
    }
}

/// The leases an engine holds (root → token and the tree's stop request),
/// all renewed by one background task, started with the first lease. (One
/// task per lease cost a spawn and an abort per run.)
pub(super) struct Leases {
    held: Arc<Mutex<HashMap<String, Holding>>>,
    renewer: OnceLock<tokio::task::JoinHandle<()>>,
    /// How long each lease lasts without renewal.
    pub(super) lease: Duration,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            held: Arc::default(),
            renewer: OnceLock::new(),
            lease: LEASE,
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.get() {
            task.abort();
        }
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holding>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cancel request of the tree held under `root`'s lease, if this
    /// engine holds it.
    pub(super) fn cancel_of(&self, root: &str) -> Option<Cancel> {
        self.lock().get(root).map(|h| h.cancel.clone())
    }

    /// Tells the renewer the deadline of the tree held under `root`'s
    /// lease: past it, the tree is cancelled with kind `timeout`.
    pub(super) fn set_deadline(&self, root: &str, deadline_ms: Option<u64>) {
        if let (Some(h), Some(ms)) = (self.lock().get(root), deadline_ms) {
            h.deadline_ms.store(ms.max(1), Ordering::SeqCst);
        }
    }
}

/// [`RENEWALS_PER_LEASE`] times per `lease`, renews each held lease (a
/// lease another process took stops its tree), and every [`CANCEL_POLL`]
/// looks for cancel requests for them. Ends when the engine (its map or
/// store) is gone.
async fn renew_all(
    held: Weak<Mutex<HashMap<String, Holding>>>,
    backend: Weak<dyn Backend>,
    lease: Duration,
) {
    let lease_ms = lease.as_millis() as u64;
    let renew_every = lease / RENEWALS_PER_LEASE;
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(CANCEL_POLL.min(renew_every)).await;
        let (Some(held), Some(backend)) = (held.upgrade(), backend.upgrade()) else {
            return;
        };
        let leases: Vec<(String, Holding)> = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        for (execution, holding) in &leases {
            if holding.cancel.reason.reason().is_some() {
                continue;
            }
            let deadline = holding.deadline_ms.load(Ordering::SeqCst);
            if deadline != 0 && backend.clock().now_ms() >= deadline {
                tracing::info!(execution, "deadline passed: cancelling");
                holding
                    .cancel
                    .request(FailureKind::Timeout, DEADLINE_PASSED);
                continue;
            }
            match backend.peek_signal(execution, CANCEL_CHANNEL).await {
                Ok(Some(request)) => {
                    let reason = request.data["reason"]
                        .as_str()
                        .unwrap_or("cancelled")
                        .to_string();
                    tracing::info!(execution, "cancel requested: {reason}");
                    holding.cancel.request(FailureKind::Cancelled, reason);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(execution, "cannot look for cancel requests: {e}"),
            }
        }
        if renewed_at.elapsed() < renew_every {
            continue;
        }
        renewed_at = tokio::time::Instant::now();
        for (execution, Holding { token, .. }) in leases {
            let renewed = backend.renew(&execution, token, lease_ms).await;
            let released_meanwhile = {
                let mut map = held.lock().unwrap_or_else(|p| p.into_inner());
                let current = map.get(&execution).filter(|h| h.token == token).cloned();
                match (renewed, current) {
                    (Ok(true), Some(_)) | (Ok(false), None) => false,
                    (Ok(true), None) => true,
                    (Ok(false), Some(h)) => {
                        map.remove(&execution);
                        tracing::error!(
                            execution,
                            "lost ownership: another process took this execution over"
                        );
                        h.stop.request(format!(
                            "lost ownership of `{execution}`: another process took it over"
                        ));
                        false
                    }
                    (Err(e), _) => {
                        tracing::warn!(execution, "cannot renew the lease: {e}");
                        false
                    }
                }
            };
            // Released while it was being renewed: give it up again.
            if released_meanwhile {
                let _ = backend.release(&execution, token).await;
            }
        }
    }
}

/// The reason an execution whose deadline passed is cancelled with.
pub(super) const DEADLINE_PASSED: &str =
    "its deadline passed (submit --deadline, or the machine's settings.timeout)";

fn owned_message(lease: &Lease, now_ms: u64) -> String {
    let left = lease.expires_ms.saturating_sub(now_ms).div_ceil(1000);
    format!(
        "execution `{}` is being run by pid {} on {}; its lease expires in {left}s unless that process renews it (stop that process, or wait for it to finish)",
        lease.execution, lease.owner.pid, lease.owner.host
    )
}

impl Engine {
    /// Takes the lease on a new execution (an id nobody else knows yet).
    pub(super) async fn own_new(&self, root: &str) -> Result<Held, EngineError> {
        let lease_ms = self.leases.lease.as_millis() as u64;
        let lease = self
            .backend
            .acquire_new(root, this_process(), lease_ms)
            .await?;
        Ok(self.hold(lease))
    }

    /// Takes the lease on an execution tree's root for this process, taking
    /// over from a holder on this host whose process is gone.
    pub(super) async fn own(&self, root: &str) -> Result<Held, EngineError> {
        let me = this_process();
        let lease_ms = self.leases.lease.as_millis() as u64;
        let mut evict = None;
        let lease = loop {
            match self.backend.acquire(root, me, lease_ms, evict).await? {
                Claim::Acquired(lease) => break lease,
                Claim::Held(lease) if evict.is_none() && holder_gone(&lease.owner) => {
                    tracing::info!(
                        execution = root,
                        pid = lease.owner.pid,
                        "taking over from a process that is gone"
                    );
                    evict = Some(lease.token);
                }
                Claim::Held(lease) => {
                    return Err(EngineError::Owned(owned_message(&lease, self.now())));
                }
            }
        };
        Ok(self.hold(lease))
    }

    /// Keeps a lease renewed in the background; a lost one stops the tree.
    fn hold(&self, lease: Lease) -> Held {
        let stop = Stop::default();
        let cancel = Cancel::default();
        self.leases.lock().insert(
            lease.execution.clone(),
            Holding {
                token: lease.token,
                stop: stop.clone(),
                cancel: cancel.clone(),
                deadline_ms: Arc::default(),
            },
        );
        self.leases.renewer.get_or_init(|| {
            let held = Arc::downgrade(&self.leases.held);
            let lease = self.leases.lease;
            tokio::spawn(renew_all(held, Arc::downgrade(&self.backend), lease))
        });
        Held {
            execution: lease.execution,
            token: lease.token,
            stop,
            cancel,
        }
    }

    /// Gives a lease up now, or once this engine's launched executions have
    /// finished (they run under it).
    pub(super) async fn disown(&self, held: Held) {
        if self.detached_running() > 0 {
            self.lock_held().push(held);
            return;
        }
        self.release(held).await;
    }

    pub(super) async fn release(&self, held: Held) {
        {
            let mut map = self.leases.lock();
            if map
                .get(&held.execution)
                .is_some_and(|h| h.token == held.token)
            {
                map.remove(&held.execution);
            }
        }
        if let Err(e) = self.backend.release(&held.execution, held.token).await {
            tracing::warn!(execution = %held.execution, "cannot release the lease (it expires by itself): {e}");
        }
    }

    pub(super) fn lock_held(&self) -> std::sync::MutexGuard<'_, Vec<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_gone() {
        let me = this_process();
        assert!(!holder_gone(me));
        let mut dead = me.clone();
        dead.id = "another".into();
        // A process that started at another time under our pid: the pid was reused.
        dead.started = me.started + 1;
        assert!(holder_gone(&dead));
        let mut elsewhere = dead.clone();
        elsewhere.host = format!("{}-elsewhere", me.host);
        assert!(
            !holder_gone(&elsewhere),
            "a holder on another host cannot be judged"
        );
    }

    fn engine(backend: Arc<dyn Backend>) -> Arc<Engine> {
        let runtime = crate::plugin::Runtime::new(crate::plugin::RuntimeConfig {
            cache_dir: None,
            max_instances: 1,
            ..Default::default()
        })
        .unwrap();
        Arc::new(Engine::new(backend, Arc::new(runtime), "plugins".into()))
    }

    /// The renewer keeps a lease alive, and a lease another process took
    /// stops the tree that held it. Time is tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_over_stops_the_tree_at_the_next_renewal() {
        let backend: Arc<dyn Backend> = Arc::new(crate::backend::MemoryBackend::new());
        let e = engine(backend.clone());
        let held = e.own_new("root").await.unwrap();
        tokio::time::sleep(RENEW_EVERY * 3).await;
        assert_eq!(held.stop.reason(), None, "renewed, not lost");
        let thief = Owner {
            id: "thief".into(),
            ..this_process().clone()
        };
        let claim = backend
            .acquire("root", &thief, 60_000, Some(held.token))
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Acquired(_)));
        held.stop.requested().await;
        let reason = held.stop.reason().unwrap();
        assert!(reason.contains("lost ownership of `root`"), "{reason}");
        // Released leases are no longer renewed.
        let other = e.own_new("other").await.unwrap();
        e.release(other).await;
        tokio::time::sleep(RENEW_EVERY * 2).await;
        let lease = backend.lease("other").await.unwrap().unwrap();
        assert_eq!(
            lease.expires_ms, 0,
            "a released lease was renewed: {lease:?}"
        );
    }

    #[tokio::test]
    async fn stop_wakes_waiters() {
        let stop = Stop::default();
        let waiter = tokio::spawn({
            let stop = stop.clone();
            async move { stop.requested().await }
        });
        stop.request("first");
        stop.request("second");
        waiter.await.unwrap();
        assert_eq!(stop.reason().as_deref(), Some("first"));
    }
}
