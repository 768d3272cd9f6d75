//! The writer of one process: its own thread and runtime drain the write
//! queue, committing whatever arrived while the last commit ran in one
//! transaction. A lost connection is reconnected (for the reconnect window
//! before the writes that wait fail; deferred writes are kept until the
//! database is back); an uncommitted batch runs again; a batch whose
//! `COMMIT` went unanswered is looked up by its transaction id
//! (`txid_status`); a deadlock with another host retries the batch; a
//! statement refused for its data fails only its own write. Beside it, the
//! listener that turns `NOTIFY flowhost_work` into the work hint.
//!
//! Imports the backend's types, the write queue, `conn` and `ops`.

use super::super::clock::Clock;
use super::super::write_queue::{ErrorSlot, Receiver, Reply, deliver};
use super::super::{BackendError, BackendResult};
use super::conn::{connect, connection_lost, pg_error};
use super::ops::{Batch, Failure, Op, apply};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// How often deferred writes kept through an outage are tried again while
/// no other write comes.
const CARRY_RETRY: Duration = Duration::from_secs(2);
/// Deadlocks with other hosts a batch is retried through.
const DEADLOCK_RETRIES: u32 = 20;
const NOTIFY: &str = "NOTIFY flowhost_work";
const LISTEN: &str = "LISTEN flowhost_work";

/// A write and the clock of the store that made it (the writer reads the
/// time from it when it applies the write).
pub(super) type Timed = (Op, Arc<dyn Clock>);

/// The writer's thread: its own runtime, the writer and the listener.
pub(super) fn writer_thread(
    config: tokio_postgres::Config,
    target: String,
    reconnect_for: Duration,
    mut rx: Receiver<Timed, Value>,
    slot: ErrorSlot,
    wake: watch::Sender<u64>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = BackendError::new(format!("{target}: cannot start the writer: {e}"));
            while let Some((_, reply)) = rx.blocking_recv() {
                deliver(&slot, reply, Err(e.clone()));
            }
            return;
        }
    };
    runtime.block_on(async move {
        let listener = tokio::spawn(listen(config.clone(), wake));
        let mut writer = Writer {
            config,
            target,
            conn: None,
            statements: HashMap::new(),
            down_since: None,
            reconnect_for,
        };
        // Deferred writes the database could not be reached for: kept, in
        // order, ahead of the next batch (a caller that waits is told; one
        // that does not must not lose its write to an outage).
        let mut carried: Vec<Timed> = Vec::new();
        loop {
            let first = if carried.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(CARRY_RETRY, rx.recv()).await {
                    Ok(next) => next,
                    // Nothing new: try the carried writes alone.
                    Err(_) => {
                        match writer.commit(&carried).await {
                            Ok(results) => {
                                for result in results {
                                    deliver(&slot, None, result);
                                }
                                carried.clear();
                            }
                            Err(e) => tracing::warn!(
                                "{e}; keeping {} deferred write(s) for later",
                                carried.len()
                            ),
                        }
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let mut ops: Vec<Timed> = std::mem::take(&mut carried);
            let mut replies: Vec<Reply<Value>> = Vec::with_capacity(ops.len() + batch.len());
            replies.resize_with(ops.len(), || None);
            for (op, reply) in batch {
                ops.push(op);
                replies.push(reply);
            }
            match writer.commit(&ops).await {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        deliver(&slot, reply, result);
                    }
                }
                // The database could not be reached (or a commit's outcome
                // learnt): nothing of the batch is known stored.
                Err(e) => {
                    for (op, reply) in ops.into_iter().zip(replies) {
                        match reply {
                            Some(reply) => deliver(&slot, Some(reply), Err(e.clone())),
                            None => carried.push(op),
                        }
                    }
                }
            }
        }
        if !carried.is_empty() {
            match writer.commit(&carried).await {
                Ok(results) => {
                    for result in results {
                        deliver(&slot, None, result);
                    }
                }
                Err(e) => tracing::error!(
                    "{e}: {} deferred write(s) were not stored before the store closed",
                    carried.len()
                ),
            }
        }
        listener.abort();
    });
}

/// How a batch's attempt ended when it did not commit.
enum Attempt {
    /// A statement was refused; the transaction rolled back.
    Refused(tokio_postgres::Error),
    /// The connection went away. `committing`: the batch's transaction id
    /// and answers, when the commit was sent and its outcome is unknown.
    Lost(
        tokio_postgres::Error,
        Option<(i64, Vec<BackendResult<Value>>)>,
    ),
}

impl Attempt {
    fn of(e: tokio_postgres::Error) -> Attempt {
        if connection_lost(&e) {
            Attempt::Lost(e, None)
        } else {
            Attempt::Refused(e)
        }
    }
}

struct Writer {
    config: tokio_postgres::Config,
    target: String,
    conn: Option<Client>,
    /// Prepared on `conn`; emptied with it.
    statements: HashMap<&'static str, Statement>,
    /// Since when the database could not be reached.
    down_since: Option<Instant>,
    reconnect_for: Duration,
}

impl Writer {
    /// Whether to keep trying to reach the database for the batch at hand:
    /// until it has been gone for `reconnect_for`; after that each batch
    /// tries once and fails at once.
    fn keep_trying(&mut self) -> bool {
        self.down_since.get_or_insert_with(Instant::now).elapsed() < self.reconnect_for
    }

    async fn connected(&mut self) -> BackendResult<&mut Client> {
        if self.conn.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.conn = None;
            let client = connect(&self.config, &self.target).await?;
            if self.down_since.take().is_some() {
                tracing::warn!("{}: connected to the database again", self.target);
            }
            self.conn = Some(client);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| BackendError::new("internal: no connection"))
    }

    /// Commits the batch, or says why not. A lost connection and a deadlock
    /// are retried here; a statement refused for its data fails only its
    /// own write (the batch is applied again write by write).
    async fn commit(
        &mut self,
        ops: &[(Op, Arc<dyn Clock>)],
    ) -> BackendResult<Vec<BackendResult<Value>>> {
        let mut deadlocks = 0;
        let mut pause = Duration::from_millis(50);
        loop {
            let outcome = match self.connected().await {
                Ok(_) => {
                    let Writer {
                        conn: Some(client),
                        statements,
                        target,
                        ..
                    } = self
                    else {
                        continue;
                    };
                    attempt(client, statements, target, ops).await
                }
                Err(e) => {
                    let first = self.down_since.is_none();
                    if !self.keep_trying() {
                        return Err(e);
                    }
                    if first {
                        tracing::warn!(
                            "{e}; reconnecting (for up to {} s before the writes that wait fail)",
                            self.reconnect_for.as_secs_f64()
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            match outcome {
                Ok(results) => return Ok(results),
                Err(Attempt::Refused(e))
                    if deadlocks < DEADLOCK_RETRIES
                        && [
                            SqlState::T_R_DEADLOCK_DETECTED,
                            SqlState::T_R_SERIALIZATION_FAILURE,
                        ]
                        .iter()
                        .any(|c| e.code() == Some(c)) =>
                {
                    deadlocks += 1;
                }
                Err(Attempt::Refused(e)) if ops.len() == 1 => {
                    return Ok(vec![Err(pg_error(&self.target, &e))]);
                }
                Err(Attempt::Refused(_)) => return Ok(self.one_by_one(ops).await),
                Err(Attempt::Lost(e, committing)) => {
                    self.conn = None;
                    tracing::warn!("{}; reconnecting", pg_error(&self.target, &e).message);
                    if let Some((xid, results)) = committing {
                        match self.committed(xid).await {
                            Ok(true) => return Ok(results),
                            Ok(false) => {}
                            Err(e) => return Err(e),
                        }
                    } else if !self.keep_trying() {
                        return Err(pg_error(&self.target, &e));
                    }
                }
            }
        }
    }

    /// Whether transaction `xid`, whose commit went unanswered, committed:
    /// asked of the server once it can be reached again.
    async fn committed(&mut self, xid: i64) -> BackendResult<bool> {
        let mut pause = Duration::from_millis(50);
        loop {
            let asked = match self.connected().await {
                Ok(c) => c
                    .query_one("SELECT txid_status($1)", &[&xid])
                    .await
                    .map_err(|e| pg_error(&self.target, &e))
                    .map(|r| r.get::<_, Option<String>>(0)),
                Err(e) => Err(e),
            };
            match asked.as_ref().map(|s| s.as_deref()) {
                Ok(Some("committed")) => {
                    self.down_since = None;
                    return Ok(true);
                }
                Ok(Some("aborted") | None) => return Ok(false),
                // Still in progress, or the server is not back yet.
                _ if self.keep_trying() => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                _ => {
                    return Err(BackendError::new(format!(
                        "{}: lost the connection while committing, and could not learn whether the commit happened: {}",
                        self.target,
                        asked
                            .err()
                            .map_or_else(|| "still in progress".to_string(), |e| e.message)
                    )));
                }
            }
        }
    }

    /// Applies the ops one transaction each: only a write the database
    /// refuses fails.
    async fn one_by_one(&mut self, ops: &[(Op, Arc<dyn Clock>)]) -> Vec<BackendResult<Value>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let one = std::slice::from_ref(op);
            out.push(match Box::pin(self.commit(one)).await {
                Ok(mut r) => r
                    .pop()
                    .unwrap_or_else(|| Err(BackendError::new("internal: no answer"))),
                Err(e) => Err(e),
            });
        }
        out
    }
}

/// One try at committing the batch in one transaction.
async fn attempt(
    client: &mut Client,
    statements: &mut HashMap<&'static str, Statement>,
    target: &str,
    ops: &[(Op, Arc<dyn Clock>)],
) -> Result<Vec<BackendResult<Value>>, Attempt> {
    let tx = client.transaction().await.map_err(Attempt::of)?;
    let xid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .map_err(Attempt::of)?
        .get(0);
    let mut results = Vec::with_capacity(ops.len());
    let pushed = {
        let mut batch = Batch {
            tx: &tx,
            statements,
            clock: Arc::new(super::super::SystemClock),
            pushed: BTreeSet::new(),
        };
        for (op, clock) in ops {
            batch.clock = clock.clone();
            match apply(&mut batch, op).await {
                Ok(v) => results.push(Ok(v)),
                Err(Failure::Store(e)) => results.push(Err(e.at(target))),
                Err(Failure::Db(e)) => return Err(Attempt::of(e)),
            }
        }
        !batch.pushed.is_empty()
    };
    crate::crash::point("store.commit.before");
    if let Err(e) = tx.commit().await {
        return Err(if connection_lost(&e) {
            Attempt::Lost(e, Some((xid, results)))
        } else {
            Attempt::Refused(e)
        });
    }
    crate::crash::point("store.commit.after");
    // The wake-up hint, payload-free and after the commit: a NOTIFY inside
    // the batch would take the server's notification lock while the batch
    // flushes, serialising every host's commits. A lost hint costs only a
    // poll interval.
    if pushed {
        let _ = client.batch_execute(NOTIFY).await;
    }
    Ok(results)
}

/// Listens on `flowhost_work` and bumps `wake` at each notification (and
/// on every reconnection, for what was missed meanwhile). Runs until aborted.
async fn listen(config: tokio_postgres::Config, wake: watch::Sender<u64>) {
    let mut pause = Duration::from_millis(50);
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            pause = Duration::from_millis(50);
            let subscribe = client.batch_execute(LISTEN);
            tokio::pin!(subscribe);
            let mut subscribed = false;
            loop {
                tokio::select! {
                    r = &mut subscribe, if !subscribed => {
                        if r.is_err() {
                            break;
                        }
                        subscribed = true;
                        wake.send_modify(|n| *n += 1);
                    }
                    m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            wake.send_modify(|n| *n += 1);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
