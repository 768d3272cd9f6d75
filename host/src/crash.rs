//! Named crash points: places in the code paths that write where the
//! fault-injection suite (`cargo xtask chaos`) kills the process, to prove
//! that nothing acknowledged is lost and everything resumes.
//!
//! `FLOWHOST_CRASH_AT=<point>:<n>` makes the process kill itself (SIGKILL,
//! like `kill -9` or the OOM killer: no destructor runs, no buffered write
//! is flushed) the `n`-th time it passes `<point>`. Only debug builds (what
//! the tests run) and builds with the `chaos` feature read the variable; a
//! release binary ignores it and [`point`] compiles to nothing.
//!
//! Owns the list of points and the arming; may import `text` (escaping).

/// Every crash point, with where it sits.
pub const POINTS: &[(&str, &str)] = &[
    (
        "store.migration",
        "between two schema migrations, inside their transaction",
    ),
    (
        "store.commit.before",
        "a batch of writes applied, its transaction not committed",
    ),
    (
        "store.commit.after",
        "a batch committed, no writer told yet",
    ),
    (
        "store.result.write",
        "a result written, its fan-in not counted down yet (same transaction)",
    ),
    ("worker.claimed", "a job claimed, nothing of it run yet"),
    (
        "worker.complete.before",
        "a job's work done, the job not completed yet",
    ),
    (
        "fanout.child.stored",
        "a fan-out child stored, its siblings and the fan-in counter not yet",
    ),
    (
        "fanout.jobs.before",
        "a fan-in counter opened, the children's jobs not pushed yet",
    ),
    (
        "fanin.gathered",
        "every child's result read, the parent not moved on yet",
    ),
    (
        "launch.stored",
        "a launched execution stored, its job not pushed yet",
    ),
    (
        "launch.pushed",
        "a launched execution's job pushed, the launch not marked done yet",
    ),
];

/// The environment variable that arms a crash point.
pub const VAR: &str = "FLOWHOST_CRASH_AT";

/// Whether this build reads [`VAR`].
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "chaos"));

#[cfg(any(debug_assertions, feature = "chaos"))]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(super) struct Armed {
        pub(super) point: String,
        pub(super) at: u64,
        hits: AtomicU64,
    }

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

    pub(super) fn get() -> Option<&'static Armed> {
        ARMED
            .get_or_init(|| {
                let value = std::env::var(super::VAR).ok()?;
                let (point, at) = super::parse(&value).ok()?;
                Some(Armed {
                    point,
                    at,
                    hits: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(name: &str) {
        let Some(armed) = get() else { return };
        if armed.point != name || armed.hits.fetch_add(1, Ordering::SeqCst) + 1 != armed.at {
            return;
        }
        eprintln!(
            "flowhost: crash point {name} reached (pass {}): killing this process",
            armed.at
        );
        // SAFETY: sending a signal to our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}

/// Passes crash point `name`: kills the process if it is armed and this is
/// the chosen pass.
#[inline]
pub fn point(name: &'static str) {
    debug_assert!(
        POINTS.iter().any(|(p, _)| *p == name),
        "unknown crash point {name}"
    );
    #[cfg(any(debug_assertions, feature = "chaos"))]
    armed::hit(name);
}

/// Reads `<point>:<n>`.
pub fn parse(value: &str) -> Result<(String, u64), String> {
    let known = || {
        POINTS
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (point, n) = value.rsplit_once(':').ok_or_else(|| {
        format!(
            "{VAR}={}: expected <point>:<pass>, e.g. store.commit.before:3",
            crate::text::escape_control(value)
        )
    })?;
    if !POINTS.iter().any(|(p, _)| *p == point) {
        return Err(format!(
            "{VAR}: no crash point `{}` (known: {})",
            crate::text::escape_control(point),
            known()
        ));
    }
    match n.parse::<u64>() {
        Ok(n) if n > 0 => Ok((point.to_string(), n)),
        _ => Err(format!(
            "{VAR}: `{}` is not a pass number (1, 2, …)",
            crate::text::escape_control(n)
        )),
    }
}

/// Checks [`VAR`] at start-up, so a mistyped point is an error instead of a
/// run that never crashes. `Ok(None)`: not set, or a build that ignores it.
pub fn check_env() -> Result<Option<(String, u64)>, String> {
    if !ENABLED {
        return Ok(None);
    }
    match std::env::var(VAR) {
        Ok(v) => parse(&v).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{VAR} is not UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_points_and_refuses_the_rest() {
        assert_eq!(
            parse("store.commit.before:3"),
            Ok(("store.commit.before".to_string(), 3))
        );
        let e = parse("store.comit.before:3").unwrap_err();
        assert!(
            e.contains("no crash point") && e.contains("store.commit.before"),
            "{e}"
        );
        assert!(
            parse("store.commit.before:0")
                .unwrap_err()
                .contains("pass number")
        );
        assert!(
            parse("store.commit.before")
                .unwrap_err()
                .contains("<point>:<pass>")
        );
        assert!(
            parse("worker.claimed:x")
                .unwrap_err()
                .contains("pass number")
        );
    }
}
