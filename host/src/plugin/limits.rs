//! Per-call resource limits: memory cap, time budget, optional fuel, output size.
//!
//! A plugin's limits start from the runtime defaults, are replaced by its
//! manifest or by an operator's explicit flags ([`Limits::with`]), and can be
//! tightened, never widened, by a machine config ([`Limits::tightened_by`]).

use serde::Deserialize;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// The limits one call runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock budget for one call (instantiation included).
    pub timeout: Duration,
    /// Fuel for one call; only used when the runtime was built with fuel.
    pub fuel: Option<u64>,
    /// Cap on the JSON a call may return, in bytes.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 * MIB,
            timeout: Duration::from_secs(30),
            fuel: None,
            output_bytes: 8 * MIB,
        }
    }
}

/// Limit settings as written in a manifest, machine config or on the command line.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub output_mb: Option<u64>,
}

impl LimitOverrides {
    fn memory(&self) -> Option<u64> {
        self.memory_mb.map(|m| m.saturating_mul(MIB))
    }
    fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(crate::duration::clamp_millis)
    }
    fn output(&self) -> Option<u64> {
        self.output_mb.map(|m| m.saturating_mul(MIB))
    }
}

impl Limits {
    /// These limits with every field the overrides set replaced.
    pub fn with(&self, o: &LimitOverrides) -> Limits {
        Limits {
            memory_bytes: o.memory().unwrap_or(self.memory_bytes),
            timeout: o.timeout().unwrap_or(self.timeout),
            fuel: o.fuel.or(self.fuel),
            output_bytes: o.output().unwrap_or(self.output_bytes),
        }
    }

    /// These limits, tightened (never widened) by the overrides.
    pub fn tightened_by(&self, o: &LimitOverrides) -> Limits {
        let min = |a: u64, b: Option<u64>| b.map_or(a, |b| a.min(b));
        Limits {
            memory_bytes: min(self.memory_bytes, o.memory()),
            timeout: o.timeout().map_or(self.timeout, |t| self.timeout.min(t)),
            fuel: match (self.fuel, o.fuel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            output_bytes: min(self.output_bytes, o.output()),
        }
    }

    /// Checks the limits make sense and fit under the runtime's memory ceiling.
    pub fn validate(&self, memory_ceiling: u64) -> Result<(), String> {
        if self.memory_bytes == 0 || self.timeout.is_zero() || self.output_bytes == 0 {
            return Err("memory, timeout and output limits must be greater than zero".into());
        }
        if self.memory_bytes > memory_ceiling {
            return Err(format!(
                "memory limit {} MiB is above the runtime's ceiling of {} MiB",
                self.memory_bytes / MIB,
                memory_ceiling / MIB
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_replaces_and_tightened_by_only_lowers() {
        let base = Limits::default();
        let o = LimitOverrides {
            memory_mb: Some(256),
            timeout_ms: Some(10),
            ..Default::default()
        };
        let replaced = base.with(&o);
        assert_eq!(replaced.memory_bytes, 256 * MIB);
        assert_eq!(replaced.timeout, Duration::from_millis(10));
        let tightened = base.tightened_by(&o);
        assert_eq!(
            tightened.memory_bytes, base.memory_bytes,
            "a machine config cannot widen memory"
        );
        assert_eq!(tightened.timeout, Duration::from_millis(10));
    }

    #[test]
    fn validate_rejects_zero_and_over_ceiling() {
        assert!(Limits::default().validate(64 * MIB).is_ok());
        assert!(
            Limits::default()
                .validate(32 * MIB)
                .unwrap_err()
                .contains("ceiling")
        );
        let zero = Limits {
            timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(zero.validate(u64::MAX).is_err());
    }
}
