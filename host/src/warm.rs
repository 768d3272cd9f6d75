//! The settings of a warm plugin pool: how many reused instances a plugin
//! keeps, for how long, and how many calls each serves. Plain data, read
//! from a manifest's `[pool]`, the daemon's `--warm-pools` file or a machine
//! config's plugin spec, and applied by the plugin runtime.
//!
//! Imports `duration`.

/// The warm instances of a plugin whose instances are reused: kept between
/// calls, discarded after any failed call or `reuse` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmPool {
    /// Instances kept warm even when idle (and made ahead with `warm_up`).
    pub min: u32,
    /// Most idle instances kept.
    pub max: u32,
    /// An idle instance beyond `min` is dropped after this long.
    pub idle_timeout: std::time::Duration,
    /// Make `min` instances when the plugin loads, before any call needs one.
    pub warm_up: bool,
}

impl Default for WarmPool {
    fn default() -> Self {
        WarmPool {
            min: 0,
            max: 16,
            idle_timeout: std::time::Duration::from_secs(300),
            warm_up: false,
        }
    }
}

/// A warm pool as a manifest's `[pool]` table or the daemon's pools file
/// (`[<plugin>]` tables) gives it; what it leaves out keeps its default.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct OperatorPool {
    /// Calls one instance serves before it is discarded (default 1000).
    pub max_uses: Option<u32>,
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// A duration (`60s`, `5m`).
    pub idle_timeout: Option<String>,
    pub warm_up: Option<bool>,
}

impl OperatorPool {
    /// The pool it describes, or why it is not one.
    pub fn pool(&self) -> Result<(u32, WarmPool), String> {
        let d = WarmPool::default();
        let idle_timeout = match &self.idle_timeout {
            Some(t) => crate::duration::parse(t).map_err(|e| format!("idle_timeout: {e}"))?,
            None => d.idle_timeout,
        };
        let pool = WarmPool {
            min: self.min.unwrap_or(d.min),
            max: self.max.unwrap_or(d.max.max(self.min.unwrap_or(0))),
            idle_timeout,
            warm_up: self.warm_up.unwrap_or(d.warm_up),
        };
        if pool.min > pool.max || pool.max > 1024 {
            return Err(format!(
                "min ({}) must be at most max ({}), and max at most 1024",
                pool.min, pool.max
            ));
        }
        let uses = self.max_uses.unwrap_or(1000);
        if uses == 0 {
            return Err(
                "max_uses must be at least 1 (leave the pool out for a fresh instance per call)"
                    .into(),
            );
        }
        Ok((uses, pool))
    }
}
