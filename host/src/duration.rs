//! Durations that come from outside (configs, manifests, flags): one bound
//! for all of them, and conversions that cannot overflow or panic.
//!
//! `Duration::from_secs_f64(1e308)` panics and `Instant::now() + huge`
//! overflows; every duration a user can write is checked against [`MAX`] where
//! it is read (validation, flag parsing) and converted with [`from_secs`] or
//! [`clamp_secs`] where it is used, so an old stored value cannot panic either.
//! Imports nothing else in flowhost.

use std::time::Duration;

/// The longest duration flowhost accepts anywhere: 30 days.
pub const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Seconds as a duration, if they are a finite number in `0..=MAX`.
pub fn from_secs(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..=MAX.as_secs_f64()).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

/// Seconds as a duration, clamped into `0..=MAX` (not-a-number is zero).
pub fn clamp_secs(seconds: f64) -> Duration {
    if seconds.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(seconds.clamp(0.0, MAX.as_secs_f64()))
}

/// Milliseconds as a duration, clamped to [`MAX`].
pub fn clamp_millis(millis: u64) -> Duration {
    Duration::from_millis(millis).min(MAX)
}

/// What the bound says in messages.
pub fn max_text() -> String {
    format!("{} s (30 days)", MAX.as_secs())
}

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `2h` or a bare number of milliseconds;
/// greater than zero and at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1e-3)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 250ms, 2s, 1m)"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("`{text}`: a duration must be greater than zero"));
    }
    from_secs(value * scale)
        .ok_or_else(|| format!("`{text}`: a duration may be at most {}", max_text()))
}

/// [`parse`], also taking zero (`0`, `0s`): for settings where "at once"
/// makes sense.
pub fn parse_or_zero(text: &str) -> Result<Duration, String> {
    let number = text.trim().trim_end_matches(['m', 's', 'h']);
    match number.trim().parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_or_zero("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_or_zero("-1s").is_err());
        assert_eq!(parse("40"), Ok(Duration::from_millis(40)));
        assert!(parse("0s").is_err());
        assert!(parse("soon").unwrap_err().contains("not a duration"));
        assert!(parse("1e308s").unwrap_err().contains("at most"));
        assert!(parse("inf").is_err());
    }

    #[test]
    fn conversions_never_panic() {
        assert_eq!(from_secs(1e308), None);
        assert_eq!(from_secs(-1.0), None);
        assert_eq!(from_secs(f64::NAN), None);
        assert_eq!(from_secs(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(clamp_secs(1e308), MAX);
        assert_eq!(clamp_secs(f64::INFINITY), MAX);
        assert_eq!(clamp_secs(-5.0), Duration::ZERO);
        assert_eq!(clamp_secs(f64::NAN), Duration::ZERO);
        assert_eq!(clamp_millis(u64::MAX), MAX);
    }
}
