//! What one plugin call carries: the per-call context the caller supplies
//! ([`CallContext`]), and the store data the guest runs against
//! ([`StoreState`]): the deny-by-default WASI context, the memory limiter, the
//! deadline, captured stdout/stderr, and the `flowhost:plugin/host` imports.

use super::bindings::{host_api, wit};
use super::state::{ExecutionState, MemoryState};
use crate::text::escape_control;
use serde_json::Value;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// A directory the host lends a plugin (a cap-std preopen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

impl DirGrant {
    /// Parses `host:guest[:rw|:ro]` (the guest path defaults to the host path).
    pub fn parse(spec: &str) -> Result<DirGrant, String> {
        let mut parts: Vec<&str> = spec.split(':').collect();
        let writable = match parts.last() {
            Some(&"rw") if parts.len() > 1 => {
                parts.pop();
                true
            }
            Some(&"ro") if parts.len() > 1 => {
                parts.pop();
                false
            }
            _ => false,
        };
        let (host, guest) = match parts.as_slice() {
            [host] => (*host, *host),
            [host, guest] => (*host, *guest),
            _ => return Err(format!("`{spec}`: expected HOST[:GUEST][:ro|:rw]")),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("`{spec}`: empty path"));
        }
        Ok(DirGrant {
            host: PathBuf::from(host),
            guest: guest.to_string(),
            writable,
        })
    }
}

/// Receives what a guest reports while it runs (besides `tracing`).
pub trait CallEvents: Send + Sync {
    fn log(&self, _plugin: &str, _level: wit::LogLevel, _message: &str) {}
    fn progress(&self, _plugin: &str, _fraction: f32, _note: &str) {}
}

/// A flag a caller sets to ask a running call to stop. The guest sees it
/// through `cancelled()`; the host interrupts the guest at the first epoch
/// tick after the interruption time: at once for [`CancelToken::cancel`],
/// after a grace period (to let it stop cleanly) for
/// [`CancelToken::cancel_after`]. A token made with [`CancelToken::child`]
/// is cancelled with its parent, too.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    interrupt_at: Mutex<Option<Instant>>,
    parent: Option<CancelToken>,
}

impl CancelToken {
    /// A token cancelled when this one is (and on its own).
    pub fn child(&self) -> CancelToken {
        CancelToken(Arc::new(CancelInner {
            parent: Some(self.clone()),
            ..Default::default()
        }))
    }

    /// Cancels, interrupting a running guest at once.
    pub fn cancel(&self) {
        self.cancel_after(std::time::Duration::ZERO)
    }

    /// Cancels; a running guest sees `cancelled()` now and is interrupted
    /// once `grace` has passed (or sooner if asked again with less).
    pub fn cancel_after(&self, grace: std::time::Duration) {
        let at = Instant::now() + grace;
        let mut slot = self
            .0
            .interrupt_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(slot.map_or(at, |t| t.min(at)));
        self.0.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
            || self
                .0
                .parent
                .as_ref()
                .is_some_and(CancelToken::is_cancelled)
    }

    /// Whether a running guest is to be interrupted by `now`.
    pub fn interrupt_due(&self, now: Instant) -> bool {
        if !self.is_cancelled() {
            return false;
        }
        let own = *self
            .0
            .interrupt_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        own.is_some_and(|t| now >= t)
            || self.0.parent.as_ref().is_some_and(|p| p.interrupt_due(now))
    }
}

/// What the caller hands to one call.
#[derive(Clone)]
pub struct CallContext {
    pub state: Arc<dyn ExecutionState>,
    pub cancel: CancelToken,
    pub events: Option<Arc<dyn CallEvents>>,
}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            state: Arc::new(MemoryState::default()),
            cancel: CancelToken::default(),
            events: None,
        }
    }
}

/// Log lines a single call may write before the host drops the rest.
const MAX_LOG_LINES: u32 = 10_000;
/// Longest log message kept; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 8 * 1024;
/// How much of the guest's stderr is kept to explain a trap.
const STDERR_TAIL: usize = 4 * 1024;

/// The data of a `Store`: everything the guest can reach, and what the host
/// learns about the call while it runs.
pub struct StoreState {
    pub(crate) plugin: Arc<str>,
    pub(crate) config: Arc<str>,
    pub(crate) context: CallContext,
    pub(crate) deadline: Option<Instant>,
    pub(crate) timed_out: bool,
    pub(crate) memory: MemoryLimiter,
    pub(crate) stderr: GuestOutput,
    log_lines: u32,
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hooks: super::net::Hooks,
}

impl StoreState {
    pub(crate) fn new(
        plugin: Arc<str>,
        config: Arc<str>,
        grants: &[DirGrant],
        memory_limit: u64,
        http: Arc<super::net::HttpPolicy>,
    ) -> Result<Self, String> {
        let stderr = GuestOutput::new(plugin.clone(), "stderr");
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput::new(plugin.clone(), "stdout"))
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for grant in grants {
            let perms = if grant.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&grant.host, &grant.guest, perms)
                .map_err(|e| format!("cannot grant directory {}: {e}", grant.host.display()))?;
        }
        Ok(StoreState {
            plugin,
            config,
            context: CallContext::default(),
            deadline: None,
            timed_out: false,
            memory: MemoryLimiter::new(memory_limit),
            stderr,
            log_lines: 0,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: super::net::Hooks(http),
        })
    }

    /// Prepares (possibly reused) store data for the next call.
    pub(crate) fn reset_for_call(&mut self, context: CallContext, deadline: Instant) {
        self.context = context;
        self.deadline = Some(deadline);
        self.timed_out = false;
        self.memory.exceeded = None;
        self.log_lines = 0;
        self.stderr.clear_tail();
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `wasi:http`: every request goes through the plugin's [`super::net`] policy.
impl wasmtime_wasi_http::WasiHttpView for StoreState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// Caps linear memory growth and remembers the attempt that broke the cap,
/// so a resulting trap is reported as `out_of_memory`.
pub(crate) struct MemoryLimiter {
    pub(crate) limit: u64,
    pub(crate) exceeded: Option<u64>,
}

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.exceeded = Some(desired as u64);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl wit::Host for StoreState {}

impl host_api::Host for StoreState {
    async fn log(&mut self, level: wit::LogLevel, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin wrote over {MAX_LOG_LINES} log lines in one call; dropping the rest");
            }
            return;
        }
        let message = escape_control(truncate(&message, MAX_LOG_MESSAGE));
        let message = &*message;
        let plugin = &*self.plugin;
        match level {
            wit::LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            wit::LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            wit::LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
        if let Some(events) = &self.context.events {
            events.log(plugin, level, message);
        }
    }

    async fn progress(&mut self, fraction: f32, note: String) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let note = escape_control(truncate(&note, MAX_LOG_MESSAGE));
        let note = &*note;
        tracing::debug!(target: "plugin", plugin = %self.plugin, fraction, "progress: {note}");
        if let Some(events) = &self.context.events {
            events.progress(&self.plugin, fraction, note);
        }
    }

    async fn config(&mut self) -> String {
        self.config.to_string()
    }

    async fn cancelled(&mut self) -> bool {
        self.context.cancel.is_cancelled()
    }

    async fn state_get(&mut self, key: String) -> Option<String> {
        match self.context.state.get(&key).await {
            Ok(value) => value.map(|v| v.to_string()),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, key, "state-get failed: {e}");
                None
            }
        }
    }

    async fn state_set(&mut self, key: String, value: String) -> Result<(), String> {
        let value = parse_json("value", &value)?;
        self.context.state.set(&key, value).await
    }

    async fn state_increment(&mut self, key: String, delta: i64) -> Result<i64, String> {
        self.context.state.increment(&key, delta).await
    }

    async fn state_append(&mut self, key: String, value: String) -> Result<u64, String> {
        let value = parse_json("value", &value)?;
        self.context.state.append(&key, value).await
    }

    async fn state_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        new: Option<String>,
    ) -> Result<bool, String> {
        let expected = expected.map(|e| parse_json("expected", &e)).transpose()?;
        let new = new.map(|n| parse_json("new", &n)).transpose()?;
        self.context
            .state
            .compare_and_swap(&key, expected, new)
            .await
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A guest's stdout or stderr: complete lines go to `tracing` (target
/// `plugin`, with the plugin's name and the stream; stdout at info, stderr at
/// debug), and the last few KiB are kept to explain a trap (a Rust panic
/// message arrives on stderr).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    inner: Arc<Mutex<OutputBuffer>>,
}

#[derive(Default)]
struct OutputBuffer {
    line: Vec<u8>,
    tail: VecDeque<u8>,
}

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        GuestOutput {
            plugin,
            stream,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputBuffer> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last few KiB the guest wrote to this stream in the current call.
    pub(crate) fn tail(&self) -> String {
        let buf = self.lock();
        let bytes: Vec<u8> = buf.tail.iter().chain(buf.line.iter()).copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    fn clear_tail(&self) {
        self.lock().tail.clear();
    }

    fn write(&self, data: &[u8]) {
        let mut buf = self.lock();
        for &b in data {
            if b == b'\n' || buf.line.len() >= MAX_LOG_MESSAGE {
                let line = std::mem::take(&mut buf.line);
                let lossy = String::from_utf8_lossy(&line);
                let text = escape_control(&lossy);
                // stdout is the plugin talking; stderr is mostly what also ends
                // up in a trap message (a panic), so it is quieter.
                if self.stream == "stderr" {
                    tracing::debug!(target: "plugin", plugin = %self.plugin, stream = self.stream, "{text}");
                } else {
                    tracing::info!(target: "plugin", plugin = %self.plugin, stream = self.stream, "{text}");
                }
                buf.tail
                    .extend(line.iter().copied().chain(std::iter::once(b'\n')));
                if b != b'\n' {
                    buf.line.push(b);
                }
            } else {
                buf.line.push(b);
            }
        }
        let excess = buf.tail.len().saturating_sub(STDERR_TAIL);
        buf.tail.drain(..excess);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_grants_parse() {
        let g = DirGrant::parse("/data:/in:rw").unwrap();
        assert_eq!(
            (g.host.to_str(), g.guest.as_str(), g.writable),
            (Some("/data"), "/in", true)
        );
        let g = DirGrant::parse("/data").unwrap();
        assert_eq!((g.guest.as_str(), g.writable), ("/data", false));
        assert!(!DirGrant::parse("/a:/b:ro").unwrap().writable);
        assert!(DirGrant::parse("/a:/b:/c").is_err());
        assert!(DirGrant::parse(":/b").is_err());
    }

    #[test]
    fn guest_output_keeps_a_bounded_tail() {
        let out = GuestOutput::new("p".into(), "stderr");
        out.write(b"first line\nsecond");
        assert_eq!(out.tail(), "first line\nsecond");
        out.write(&vec![b'x'; 3 * STDERR_TAIL]);
        out.write(b"\n");
        assert!(out.tail().len() <= STDERR_TAIL + MAX_LOG_MESSAGE);
        assert!(!out.tail().contains("first line"));
    }
}
