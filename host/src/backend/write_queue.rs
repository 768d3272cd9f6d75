//! The queue in front of a store's writer thread, shared by the SQL stores:
//! writes the caller waits for, deferred writes (not waited for: a failure
//! is reported by every later write, so nothing goes on as if a lost write
//! had been stored), lazy writes that need no commit of their own (they go
//! ahead of the next write, or when the store closes), and a drop that
//! waits until everything queued is committed. The thread that drains the
//! queue, and how it commits, are the store's.
//!
//! Imports the backend's error types; nothing else of flowhost.

use super::{BackendError, BackendResult};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Where a write's outcome goes: its waiting caller, or `None` (deferred).
pub(super) type Reply<T> = Option<oneshot::Sender<BackendResult<T>>>;
/// The first failure of a deferred write.
pub(super) type ErrorSlot = Arc<Mutex<Option<BackendError>>>;
/// What the writer thread drains, and its sending end.
pub(super) type Receiver<Op, T> = mpsc::UnboundedReceiver<(Op, Reply<T>)>;
type Sender<Op, T> = mpsc::UnboundedSender<(Op, Reply<T>)>;

pub(super) struct WriteQueue<Op, T> {
    /// Names the store in messages.
    target: String,
    /// `None` once the store is being dropped.
    sender: Mutex<Option<Sender<Op, T>>>,
    /// Joined on drop, so queued writes are committed before the process ends.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    lazy: Mutex<Vec<Op>>,
    failed: ErrorSlot,
}

impl<Op: Send + 'static, T: Send + 'static> WriteQueue<Op, T> {
    /// Starts `drain` on its own thread (`name`) with the queue's receiving
    /// end and the slot deferred failures go to ([`deliver`]).
    pub(super) fn start(
        name: &str,
        target: String,
        drain: impl FnOnce(Receiver<Op, T>, ErrorSlot) + Send + 'static,
    ) -> BackendResult<Self> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let failed = ErrorSlot::default();
        let slot = failed.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || drain(receiver, slot))
            .map_err(|e| BackendError::new(format!("cannot start the writer thread: {e}")))?;
        Ok(WriteQueue {
            target,
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            lazy: Mutex::new(Vec::new()),
            failed,
        })
    }

    fn stopped(&self) -> BackendError {
        BackendError::new(format!("{}: the database writer has stopped", self.target))
    }

    /// Queues a write (after any lazy ones); with no reply it is not waited for.
    pub(super) fn send(&self, op: Op, reply: Reply<T>) -> BackendResult<()> {
        if let Some(e) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(e);
        }
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let sender = sender.as_ref().ok_or_else(|| self.stopped())?;
        for lazy in self.take_lazy() {
            sender.send((lazy, None)).map_err(|_| self.stopped())?;
        }
        sender.send((op, reply)).map_err(|_| self.stopped())
    }

    /// Queues a write that needs no commit of its own: it is applied, in
    /// order, with the next write (or when the store closes).
    pub(super) fn send_lazy(&self, op: Op) {
        self.lazy.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    fn take_lazy(&self) -> Vec<Op> {
        std::mem::take(&mut *self.lazy.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues a write and waits for its outcome.
    pub(super) async fn write(&self, op: Op) -> BackendResult<T> {
        let (reply, wait) = oneshot::channel();
        self.send(op, Some(reply))?;
        wait.await.map_err(|_| self.stopped())?
    }
}

impl<Op, T> Drop for WriteQueue<Op, T> {
    /// Closes the queue (lazy writes go last) and waits until the writer
    /// has committed everything.
    fn drop(&mut self) {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sender) = sender {
            let lazy = std::mem::take(&mut *self.lazy.lock().unwrap_or_else(|p| p.into_inner()));
            for op in lazy {
                let _ = sender.send((op, None));
            }
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Hands a write's outcome to its caller; a deferred write's failure goes
/// to the slot every later write reports.
pub(super) fn deliver<T>(slot: &ErrorSlot, reply: Reply<T>, result: BackendResult<T>) {
    match reply {
        Some(reply) => {
            let _ = reply.send(result);
        }
        None => {
            if let Err(e) = result {
                tracing::error!(
                    "deferred write (checkpoint, definition, history or lease) failed: {e}"
                );
                slot.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        }
    }
}
