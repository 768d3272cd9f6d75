//! __NAME__: a flowhost processor in Rust. It gets the input as JSON text
//! and returns its output as JSON text, or an error the engine understands.
//!
//! Input:  {"name": "Ada"}
//! Output: {"greeting": "Hello, Ada!"}

wit_bindgen::generate!({ world: "processor", path: "wit" });

use flowhost::plugin::host::{self, LogLevel};
use serde_json::{Value, json};

struct Plugin;

impl Guest for Plugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "__NAME__".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kinds: vec!["processor".into()],
            description: "Greets by name".into(),
            config_schema: None,
        }
    }

    fn process(_meta: CallMeta, input: String) -> Result<String, PluginError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| PluginError::InvalidInput(format!("input is not JSON: {e}")))?;
        let Some(name) = input.get("name").and_then(Value::as_str) else {
            // invalid-input: the engine does not retry; retryable would.
            return Err(PluginError::InvalidInput("`name` must be a string".into()));
        };
        host::log(LogLevel::Debug, &format!("greeting {name}"));
        Ok(json!({ "greeting": format!("Hello, {name}!") }).to_string())
    }
}

export!(Plugin);
