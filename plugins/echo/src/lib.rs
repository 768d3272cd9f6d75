//! `echo`: returns its input unchanged.
//!
//! If the input is an object with a numeric `echo_delay` (seconds), the plugin
//! waits that long first, reporting progress, and stops early (with a
//! `retryable` error) when the host cancels the call. This stands in for the
//! seed's `echo_delay` action.

use flowhost_sdk::{Error, Meta, Value, host};
use std::time::{Duration, Instant};

pub fn echo(_meta: &Meta, input: Value) -> Result<Value, Error> {
    if let Some(secs) = input.get("echo_delay").and_then(Value::as_f64) {
        if !(0.0..=3600.0).contains(&secs) {
            return Err(Error::invalid_input(format!(
                "echo_delay must be between 0 and 3600 seconds, got {secs}"
            )));
        }
        wait(Duration::from_secs_f64(secs))?;
    }
    host::debug("echoing input");
    Ok(input)
}

fn wait(total: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let tick = Duration::from_millis(10).min(total);
    while start.elapsed() < total {
        if host::cancelled() {
            return Err(Error::retryable("cancelled while waiting"));
        }
        std::thread::sleep(tick);
        let done = start.elapsed().as_secs_f32() / total.as_secs_f32();
        host::progress(done, "waiting");
    }
    Ok(())
}

flowhost_sdk::processor!(
    echo,
    description = "Returns its input; waits `echo_delay` seconds first if given"
);

#[cfg(test)]
mod tests {
    use super::*;
    use flowhost_sdk::json;
    use flowhost_sdk::testing::FakeHost;

    #[test]
    fn returns_input() {
        let input = json!({"a": [1, 2, {"b": null}], "s": "ü"});
        assert_eq!(echo(&Meta::test(), input.clone()).unwrap(), input);
    }

    #[test]
    fn rejects_negative_delay() {
        let err = echo(&Meta::test(), json!({"echo_delay": -1})).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(m) if m.contains("echo_delay")));
    }

    #[test]
    fn cancelled_wait_is_retryable() {
        let _host = FakeHost::new().cancelled().install();
        let err = echo(&Meta::test(), json!({"echo_delay": 5})).unwrap_err();
        assert!(matches!(err, Error::Retryable(_)));
    }
}
