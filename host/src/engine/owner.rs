//! One owner per running execution tree: this process's identity, taking the
//! lease on a tree's root (atomically, through the store's `Ownership`), taking
//! over from a holder on this host whose process is gone, renewing the lease
//! while the tree runs, and asking the tree to stop when the lease is lost.
//! Also the stop request a driver checks at every state boundary.

use super::{Engine, EngineError};
use crate::backend::{Claim, Lease, Owner, now_ms};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the holder renews it.
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
pub fn live_holder(lease: Option<&Lease>) -> Option<&Lease> {
    lease.filter(|l| l.live(now_ms()) && !holder_gone(&l.owner))
}

/// A lease this process holds, renewed in the background until released.
pub(super) struct Held {
    pub execution: String,
    pub token: u64,
    pub stop: Stop,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn owned_message(lease: &Lease) -> String {
    let left = lease.expires_ms.saturating_sub(now_ms()).div_ceil(1000);
    format!(
        "execution `{}` is being run by pid {} on {}; its lease expires in {left}s unless that process renews it (stop that process, or wait for it to finish)",
        lease.execution, lease.owner.pid, lease.owner.host
    )
}

impl Engine {
    /// Takes the lease on a new execution (an id nobody else knows yet).
    pub(super) async fn own_new(&self, root: &str) -> Result<Held, EngineError> {
        let lease_ms = LEASE.as_millis() as u64;
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
        let lease_ms = LEASE.as_millis() as u64;
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
                Claim::Held(lease) => return Err(EngineError::Owned(owned_message(&lease))),
            }
        };
        Ok(self.hold(lease))
    }

    /// Renews a lease in the background; a lost one stops the tree.
    fn hold(&self, lease: Lease) -> Held {
        let lease_ms = LEASE.as_millis() as u64;
        let root = lease.execution.as_str();
        let stop = Stop::default();
        let renewer = {
            let (backend, stop) = (self.backend.clone(), stop.clone());
            let (execution, token) = (root.to_string(), lease.token);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    match backend.renew(&execution, token, lease_ms).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(
                                execution,
                                "lost ownership: another process took this execution over"
                            );
                            stop.request(format!(
                                "lost ownership of `{execution}`: another process took it over"
                            ));
                            return;
                        }
                        Err(e) => tracing::warn!(execution, "cannot renew the lease: {e}"),
                    }
                }
            })
        };
        Held {
            execution: root.to_string(),
            token: lease.token,
            stop,
            renewer,
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

    pub(super) async fn release(&self, mut held: Held) {
        held.renewer.abort();
        // Wait until the renewal task is gone: no renewal after the release.
        let _ = (&mut held.renewer).await;
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
