//! Where a store's time comes from. Lease expiry, claim eligibility, retry
//! backoffs and heartbeats are all decided against one [`Clock`] per store,
//! so tests move time by hand ([`ManualClock`]) instead of sleeping.
//!
//! The stores' own clock is a [`HostClock`]: the kernel's boot clock
//! (monotonic, one for every process on the machine) plus an offset fixed
//! once per boot, so no step of the wall clock can make a live worker look
//! dead or a dead one live forever. Its [`TimeSource`] is the seam tests
//! move by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the store sees them.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start_ms))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a [`HostClock`] reads: the wall clock, the kernel's boot clock and
/// which boot this is.
pub trait TimeSource: Send + Sync {
    /// Milliseconds since the Unix epoch (steps when the clock is set).
    fn wall_ms(&self) -> u64;
    /// Milliseconds since boot, counting suspend; never steps, and the same
    /// for every process on the machine (`CLOCK_BOOTTIME`).
    fn boot_ms(&self) -> u64;
    /// Names this boot (Linux: `/proc/sys/kernel/random/boot_id`); `None`
    /// where the system does not say.
    fn boot_id(&self) -> Option<String>;
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTimeSource;

impl TimeSource for SystemTimeSource {
    fn wall_ms(&self) -> u64 {
        SystemClock.now_ms()
    }

    fn boot_ms(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        #[cfg(target_os = "linux")]
        let id = libc::CLOCK_BOOTTIME;
        #[cfg(not(target_os = "linux"))]
        let id = libc::CLOCK_MONOTONIC;
        // SAFETY: a valid clock id and a timespec to fill in.
        if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
            return 0;
        }
        (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000
    }

    fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// Milliseconds since the Unix epoch on a timeline that never steps: the
/// boot clock plus an offset fixed when the timeline was anchored (by the
/// SQLite store once per boot, for every process that opens it; by the
/// memory store when it is made).
#[derive(Clone)]
pub struct HostClock {
    source: std::sync::Arc<dyn TimeSource>,
    offset_ms: i64,
}

impl HostClock {
    /// A timeline that reads `at_ms` now.
    pub fn anchored_at(source: std::sync::Arc<dyn TimeSource>, at_ms: u64) -> HostClock {
        let offset_ms = at_ms as i64 - source.boot_ms() as i64;
        HostClock { source, offset_ms }
    }

    /// A timeline with this offset from the boot clock.
    pub fn with_offset(source: std::sync::Arc<dyn TimeSource>, offset_ms: i64) -> HostClock {
        HostClock { source, offset_ms }
    }

    /// The system's timeline, anchored at the wall clock now.
    pub fn system() -> HostClock {
        let source = std::sync::Arc::new(SystemTimeSource);
        let now = source.wall_ms();
        HostClock::anchored_at(source, now)
    }
}

impl Clock for HostClock {
    fn now_ms(&self) -> u64 {
        (self.source.boot_ms() as i64)
            .saturating_add(self.offset_ms)
            .max(0) as u64
    }
}

impl std::fmt::Debug for HostClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostClock(offset {} ms)", self.offset_ms)
    }
}
